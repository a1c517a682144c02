-- Schedules (modal.Period, modal.Cron) and the versions of deployed apps.

-- One row per scheduled function of a published app. `spec` is the schedule as the
-- ferry-schedule crate writes it; `anchor` is when it was published (a period counts from
-- there); `last_tick` is the last tick fired: a tick at or before it never fires again.
CREATE TABLE schedules (
    function_id TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL,
    spec        TEXT NOT NULL,
    anchor      DOUBLE PRECISION NOT NULL,
    last_tick   DOUBLE PRECISION
);
CREATE INDEX schedules_by_app ON schedules(app_id);

-- Each `modal deploy` (and each rollback) of an app is a new version.
CREATE TABLE app_deployments (
    app_id           TEXT NOT NULL,
    version          BIGINT NOT NULL,
    deployed_at      DOUBLE PRECISION NOT NULL,
    deployed_by      TEXT NOT NULL DEFAULT '',
    client_version   TEXT NOT NULL DEFAULT '',
    tag              TEXT NOT NULL DEFAULT '',
    commit_info      BYTEA,
    rollback_version BIGINT,
    PRIMARY KEY (app_id, version)
);

-- The functions (with their definitions as of that version) and classes of a version.
CREATE TABLE app_deployment_objects (
    app_id     TEXT NOT NULL,
    version    BIGINT NOT NULL,
    object_id  TEXT NOT NULL,
    tag        TEXT NOT NULL,
    definition BYTEA,
    PRIMARY KEY (app_id, version, object_id)
);
