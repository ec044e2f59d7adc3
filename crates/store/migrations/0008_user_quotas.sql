-- Per-user quotas: every count a submit makes before it creates anything reads one of
-- these indexes, so it costs what the user has in flight, not the size of the tables.
--
-- When a task group's result queue was last declared (ms): the queue expires once
-- unused for the service's result-queue expiry, so a group counts as live while its
-- queue may still exist. NULL for groups from before this column (their queues were
-- never counted; the expiry policy removes them once unused).
ALTER TABLE task_groups ADD COLUMN queue_declared_at BIGINT;
CREATE INDEX task_groups_by_owner_queue ON task_groups (owner_identity_id, queue_declared_at);
-- A user's unfinished tasks and their groups: only unfinished rows are in it, so it
-- stays as small as what is in flight.
CREATE INDEX tasks_in_flight_by_owner ON tasks (owner_identity_id, task_group_id)
    WHERE status IN ('waiting-for-ep', 'running');
-- A user's user endpoints under one MEP (one per distinct user_endpoint_config).
CREATE INDEX endpoints_by_parent_user ON endpoints (parent_endpoint_id, user_identity_id);
