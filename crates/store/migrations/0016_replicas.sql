-- Replicas of `ferry serve` on one database and the calls each one runs (docs/cluster.md).
-- A replica holds a lease it renews by heartbeat; when the lease runs out, another replica
-- adopts it (sets `adopted_by`, a conditional update only one replica wins) together with
-- the calls it owned, and queues their unanswered inputs again.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    -- The host and data dir it runs on: a replica started again there adopts its predecessor
    -- at once (one process per data dir).
    name         TEXT NOT NULL,
    -- Where its containers reach it (informational, for operators).
    address      TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    expires_at   REAL NOT NULL,
    adopted_by   TEXT,
    adopted_at   REAL
);

-- The replica whose scheduler queues and runs a call's inputs; NULL for calls made before
-- replicas were recorded (the next replica to start adopts them).
ALTER TABLE function_calls ADD COLUMN owner TEXT;
CREATE INDEX function_calls_by_owner ON function_calls(owner);
-- Cancellations, which the owner of a call looks for when another replica recorded one.
CREATE INDEX function_calls_cancelled ON function_calls(cancelled_at) WHERE cancelled_at IS NOT NULL;

-- Inputs one replica added to a call another replica owns, for the owner to queue them. A
-- row stays a while after the owner took it (`taken_at`), so that a retried request handing
-- the same input over again does not queue it twice.
CREATE TABLE call_handoffs (
    input_id TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    taken_at REAL
);
CREATE INDEX call_handoffs_by_owner ON call_handoffs(owner);
