-- A deleted function: its owner asked for it to go. The row stays (tasks name it), but
-- nobody can read it or submit it again.
ALTER TABLE functions ADD COLUMN deleted_at BIGINT;
