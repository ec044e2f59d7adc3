-- 1 when the task's group has a result queue (a submit into it asked for one with
-- `create_queue`): only then is its result forwarded over the broker. A group without
-- one is read over REST, and a result sent to a queue that does not exist only comes
-- back from the broker. Rows from before this column default to forwarding.
ALTER TABLE tasks ADD COLUMN result_queue BIGINT NOT NULL DEFAULT 1;
