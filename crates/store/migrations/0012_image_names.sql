-- Named images (`Image.publish`, `Image.from_name`, `modal image names ...`): a name:tag in an
-- environment points at one image; every publish is a revision kept for `history`.
CREATE TABLE image_names (
    environment_id  TEXT NOT NULL,
    name            TEXT NOT NULL,
    image_id        TEXT NOT NULL,
    revision_id     TEXT NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    published_by    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (environment_id, name)
);

CREATE TABLE image_name_revisions (
    revision_id     TEXT PRIMARY KEY,
    environment_id  TEXT NOT NULL,
    name            TEXT NOT NULL,
    image_id        TEXT NOT NULL,
    published_at    REAL NOT NULL,
    published_by    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX image_name_revisions_by_name ON image_name_revisions (environment_id, name, published_at);

-- When each image's last build started and ended (`Image.logs`, `modal image logs`).
ALTER TABLE images ADD COLUMN build_started_at REAL;
ALTER TABLE images ADD COLUMN build_finished_at REAL;
