-- Volumes: the identity lives in `objects` (kind 'volume'); these tables hold the tree.

-- One row per volume: the filesystem version it speaks and a counter bumped by every change.
CREATE TABLE volume_state (
    volume_id  TEXT PRIMARY KEY,
    fs_version BIGINT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 0
);

-- Paths compare byte by byte (COLLATE "C"), as on SQLite, whatever the database's locale:
-- listings and subtree bounds depend on that order.
-- The committed tree: one row per file, directory or symlink. `path` is relative to the
-- volume's root ("a/b.txt"); a file's content is the concatenation of its blocks, each named
-- by the SHA-256 of its bytes (32 bytes per block in `blocks`).
CREATE TABLE volume_entries (
    volume_id TEXT NOT NULL,
    path      TEXT COLLATE "C" NOT NULL,
    kind      BIGINT NOT NULL,
    mode      BIGINT NOT NULL,
    size      BIGINT NOT NULL,
    mtime     BIGINT NOT NULL,
    blocks    BYTEA NOT NULL,
    target    TEXT,
    PRIMARY KEY (volume_id, path)
);
