-- Whether a task group has a result queue, so that a submit into a group that already
-- has one does not touch the group's tasks (see `tasks.result_queue`). Groups from before
-- this column count as having one, as their tasks do.
ALTER TABLE task_groups ADD COLUMN result_queue BIGINT NOT NULL DEFAULT 1;
