-- Gantry service schema. Portable SQL: the same text runs on SQLite and PostgreSQL.
-- Ids are canonical lowercase UUID strings, times are milliseconds since the epoch,
-- flags are 0/1 integers, documents are JSON text.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- A person (kind 'user') or an endpoint client (kind 'client'); both have an identity id.
CREATE TABLE identities (
    identity_id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE endpoint_clients (
    client_id TEXT PRIMARY KEY REFERENCES identities (identity_id),
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Bearer tokens, stored only as SHA-256 hashes.
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities (identity_id),
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX tokens_by_identity ON tokens (identity_id);

CREATE TABLE endpoints (
    endpoint_id TEXT PRIMARY KEY,
    owner_identity_id TEXT NOT NULL REFERENCES identities (identity_id),
    name TEXT NOT NULL,
    display_name TEXT,
    multi_user BIGINT NOT NULL,
    public BIGINT NOT NULL,
    high_assurance BIGINT NOT NULL,
    allowed_functions TEXT,
    metadata TEXT NOT NULL,
    -- For a user endpoint: its MEP, whose tasks it runs, and what it was derived from.
    parent_endpoint_id TEXT REFERENCES endpoints (endpoint_id) ON DELETE CASCADE,
    user_identity_id TEXT,
    user_config TEXT,
    user_runtime TEXT,
    locked BIGINT NOT NULL,
    heartbeat_period DOUBLE PRECISION,
    last_heartbeat_at BIGINT,
    global_state TEXT,
    start_requested_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX endpoints_by_parent ON endpoints (parent_endpoint_id);

CREATE TABLE functions (
    function_id TEXT PRIMARY KEY,
    owner_identity_id TEXT NOT NULL REFERENCES identities (identity_id),
    function_name TEXT NOT NULL,
    function_code TEXT NOT NULL,
    description TEXT,
    public BIGINT NOT NULL,
    group_id TEXT,
    meta TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE task_groups (
    task_group_id TEXT PRIMARY KEY,
    owner_identity_id TEXT NOT NULL REFERENCES identities (identity_id),
    created_at BIGINT NOT NULL
);

CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    task_group_id TEXT NOT NULL REFERENCES task_groups (task_group_id),
    request_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    owner_identity_id TEXT NOT NULL REFERENCES identities (identity_id),
    -- Where the task runs (a UEP or a plain endpoint), and what the user named.
    endpoint_id TEXT NOT NULL,
    submitted_endpoint_id TEXT NOT NULL,
    status TEXT NOT NULL,
    -- The task message, kept until the broker confirmed it (the outbox).
    task_buffer TEXT,
    resource_specification TEXT,
    result_serializers TEXT,
    result TEXT,
    exception TEXT,
    error_code TEXT,
    details TEXT,
    task_statuses TEXT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    -- 1 while a failure the service itself decided (a UEP that could not start, an
    -- endpoint that was deleted) still has to reach the submitter's result queue:
    -- unlike an endpoint's result, no broker delivery stands behind it.
    forward_pending BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_group ON tasks (task_group_id, seq);
CREATE INDEX tasks_by_endpoint_status ON tasks (endpoint_id, status);
-- The outbox sweep: only rows still holding their message, oldest first. (Not an index
-- over task_buffer itself: PostgreSQL caps an index entry at 2704 bytes.)
CREATE INDEX tasks_unsent ON tasks (created_at) WHERE task_buffer IS NOT NULL;
CREATE INDEX tasks_unforwarded ON tasks (completed_at) WHERE forward_pending = 1;
