-- Mounts, images and functions: what `modal run` and `modal deploy` create.

-- A mount lists files by content hash; the bytes live under DATA_DIR/files/.
CREATE TABLE mounts (
    id             TEXT PRIMARY KEY,
    name           TEXT,
    namespace      BIGINT NOT NULL DEFAULT 0,
    environment_id TEXT,
    app_id         TEXT,
    files          TEXT NOT NULL,
    created_at     DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX mounts_by_name ON mounts(namespace, environment_id, name) WHERE name IS NOT NULL;

-- An image is identified by the hash of its definition, so the same definition is the same image.
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    definition  BYTEA NOT NULL,
    layer_id    TEXT,
    status      BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE functions (
    id         TEXT PRIMARY KEY,
    app_id     TEXT NOT NULL,
    tag        TEXT NOT NULL,
    definition BYTEA,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX functions_by_app ON functions(app_id, tag);

CREATE TABLE classes (
    id         TEXT PRIMARY KEY,
    app_id     TEXT NOT NULL,
    tag        TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX classes_by_app ON classes(app_id, tag);
