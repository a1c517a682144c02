-- Scoped client tokens: a read-only token may call only the RPCs that change nothing; a token
-- limited to one environment may name or touch only that environment's apps and objects.
-- `last_used_at` is when the gateway last verified the token (at most every few seconds).
ALTER TABLE tokens ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN environment_id TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at REAL;
