-- Sandboxes: long-lived containers driven from outside. A name is unique per app among the
-- sandboxes still running; a finished sandbox keeps its record (and result) for lookups.
-- `status` holds the protocol's GenericResult status numbers (0 while running).
CREATE TABLE sandboxes (
    id                TEXT PRIMARY KEY,
    app_id            TEXT NOT NULL,
    environment_id    TEXT NOT NULL,
    name              TEXT,
    tags              TEXT NOT NULL DEFAULT '{}',
    image_id          TEXT NOT NULL DEFAULT '',
    task_id           TEXT NOT NULL,
    timeout_secs      BIGINT NOT NULL,
    idle_timeout_secs BIGINT,
    status            BIGINT NOT NULL DEFAULT 0,
    exit_code         BIGINT,
    exception         TEXT NOT NULL DEFAULT '',
    created_by        TEXT NOT NULL DEFAULT '',
    created_at        DOUBLE PRECISION NOT NULL,
    started_at        DOUBLE PRECISION,
    finished_at       DOUBLE PRECISION
);
CREATE UNIQUE INDEX sandboxes_running_name ON sandboxes(app_id, name) WHERE name IS NOT NULL AND finished_at IS NULL;
CREATE INDEX sandboxes_by_app ON sandboxes(app_id, created_at);
CREATE INDEX sandboxes_by_env ON sandboxes(environment_id, created_at);
CREATE INDEX sandboxes_by_task ON sandboxes(task_id);
