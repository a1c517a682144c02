-- Ferry's embedded schema (SQLite). Timestamps are UNIX seconds as REAL.

CREATE TABLE tokens (
    token_id      TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL,
    revoked_at    REAL
);

-- Per-task credentials: a container authenticates as exactly one task.
CREATE TABLE task_credentials (
    task_id       TEXT PRIMARY KEY,
    app_id        TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at    REAL NOT NULL,
    revoked_at    REAL
);

CREATE TABLE environments (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    is_default     INTEGER NOT NULL DEFAULT 0,
    webhook_suffix TEXT NOT NULL DEFAULT '',
    created_at     REAL NOT NULL
);

CREATE TABLE apps (
    id             TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    name           TEXT,
    description    TEXT NOT NULL DEFAULT '',
    state          INTEGER NOT NULL,
    client_id      TEXT NOT NULL DEFAULT '',
    created_by     TEXT NOT NULL DEFAULT '',
    created_at     REAL NOT NULL,
    stopped_at     REAL,
    last_heartbeat REAL NOT NULL
);
CREATE INDEX apps_by_env ON apps(environment_id, created_at);
CREATE INDEX apps_by_name ON apps(environment_id, name);

-- Named or anonymous Dicts, Queues and Secrets share one table of identities.
CREATE TABLE objects (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    name           TEXT,
    created_by     TEXT NOT NULL DEFAULT '',
    created_at     REAL NOT NULL,
    ephemeral      INTEGER NOT NULL DEFAULT 0,
    app_id         TEXT,
    last_heartbeat REAL NOT NULL
);
CREATE UNIQUE INDEX objects_by_name ON objects(kind, environment_id, name) WHERE name IS NOT NULL;
CREATE INDEX objects_ephemeral ON objects(ephemeral, last_heartbeat);
CREATE INDEX objects_by_app ON objects(app_id);

CREATE TABLE dict_entries (
    dict_id TEXT NOT NULL,
    key     BLOB NOT NULL,
    value   BLOB NOT NULL,
    PRIMARY KEY (dict_id, key)
) WITHOUT ROWID;

CREATE TABLE queue_partitions (
    queue_id      TEXT NOT NULL,
    partition_key BLOB NOT NULL,
    ttl_seconds   INTEGER NOT NULL,
    last_put_at   REAL NOT NULL,
    item_count    INTEGER NOT NULL DEFAULT 0,
    byte_size     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, partition_key)
);

CREATE TABLE queue_items (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id      TEXT NOT NULL,
    partition_key BLOB NOT NULL,
    value         BLOB NOT NULL
);
CREATE INDEX queue_items_by_partition ON queue_items(queue_id, partition_key, id);

-- env_dict sealed with the data dir's key (nonce || ciphertext); key names kept in clear for listing.
CREATE TABLE secrets (
    secret_id    TEXT PRIMARY KEY,
    sealed       BLOB NOT NULL,
    keys         TEXT NOT NULL,
    last_used_at REAL
);

CREATE TABLE app_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL DEFAULT '',
    function_id TEXT NOT NULL DEFAULT '',
    fd          INTEGER NOT NULL,
    data        TEXT NOT NULL,
    timestamp   REAL NOT NULL
);
CREATE INDEX app_logs_by_app ON app_logs(app_id, id);
