-- A task's unsent message keeps only its payload (packed args and kwargs): the function
-- code is in `functions` once, not copied into every task. 1 for such rows; rows from
-- before this column hold the whole buffer (code and payload) and keep 0.
ALTER TABLE tasks ADD COLUMN buffer_is_payload BIGINT NOT NULL DEFAULT 0;
