-- Worker hosts (`ferry worker`) that run containers for the control plane, the tokens they
-- present, and the tasks placed on them. Any control-plane replica reads and writes these rows.
CREATE TABLE worker_tokens (
    token_id      TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    created_at    DOUBLE PRECISION NOT NULL,
    revoked_at    DOUBLE PRECISION
);
CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    address       TEXT NOT NULL DEFAULT '',
    -- A JSON object of labels (`region`, `cloud`, anything the operator sets).
    labels        TEXT NOT NULL DEFAULT '{}',
    cpu           DOUBLE PRECISION NOT NULL,
    memory_mib    BIGINT NOT NULL,
    gpus          BIGINT NOT NULL,
    disk_mib      BIGINT NOT NULL,
    -- ready | draining | lost | removed
    state         TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    last_seen     DOUBLE PRECISION NOT NULL
);
CREATE INDEX workers_by_state ON workers(state);
CREATE TABLE worker_tasks (
    task_id     TEXT PRIMARY KEY,
    worker_id   TEXT NOT NULL,
    app_id      TEXT NOT NULL,
    function_id TEXT NOT NULL,
    cpu         DOUBLE PRECISION NOT NULL,
    memory_mib  BIGINT NOT NULL,
    -- The assignment (with the task's credential and secrets), sealed like Secret values.
    assignment  BYTEA NOT NULL,
    -- assigned | running | exited | lost
    state       TEXT NOT NULL,
    -- A signal the control plane asks the worker to send (`interrupt`, `kill`), once.
    kill_signal TEXT,
    -- The exit as the worker reported it (JSON).
    exit        TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX worker_tasks_by_worker ON worker_tasks(worker_id, state);
