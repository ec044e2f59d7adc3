-- Per-user quotas: every count a submit makes before it creates anything reads one of
-- these indexes, so it costs what the user has in flight, not the size of the tables.
--
-- When a task group's result queue was last declared (ms): the queue expires once
-- unused for the service's result-queue expiry, so a group counts as live while its
-- queue may still exist. NULL for groups from before this column (their queues were
-- never counted; the expiry policy removes them once unused).
ALTER TABLE task_groups ADD COLUMN queue_declared_at BIGINT;
CREATE INDEX task_groups_by_owner_queue ON task_groups (owner_identity_id, queue_declared_at);
-- A user's tasks by state, and their groups: the counts seek to (user, unfinished
-- state) and read what is in flight. Not a partial index over unfinished rows: with
-- one, PostgreSQL also scanned that whole index for every query that names a task's
-- state and a list of ids (publishing, heartbeats), where the primary key alone serves.
CREATE INDEX tasks_by_owner_status ON tasks (owner_identity_id, status, task_group_id);
-- A user's user endpoints under one MEP (one per distinct user_endpoint_config).
CREATE INDEX endpoints_by_parent_user ON endpoints (parent_endpoint_id, user_identity_id);
