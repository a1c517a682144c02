-- Function calls and their inputs, durable across restarts (crates/scheduler owns the state
-- machine; see ARCHITECTURE.md). Payloads and results are opaque bytes.

CREATE TABLE function_calls (
    id              TEXT PRIMARY KEY,
    function_id     TEXT NOT NULL,
    invocation_type INTEGER NOT NULL,
    created_at      REAL NOT NULL,
    -- Set when the call was cancelled (FunctionCallCancel, its app stopped), with why.
    cancelled_at    REAL,
    cancel_reason   TEXT
);
CREATE INDEX function_calls_by_age ON function_calls(created_at);

-- One row per input: the input while it waits, then its answer. `state` is the durable part of
-- the input's state machine: 'queued' (also while a container runs it: a restart runs it
-- again), then 'done', 'failed' or 'cancelled'. `seq` orders answers for the caller's cursor.
CREATE TABLE function_inputs (
    id          TEXT PRIMARY KEY,
    call_id     TEXT NOT NULL,
    function_id TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    payload     BLOB,
    state       TEXT NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    task_id     TEXT,
    result      BLOB,
    data_format INTEGER,
    finished_at REAL,
    duration    REAL,
    seq         BIGINT
);
CREATE UNIQUE INDEX function_inputs_by_call ON function_inputs(call_id, idx);
CREATE INDEX function_inputs_answers ON function_inputs(call_id, seq);
CREATE INDEX function_inputs_queued ON function_inputs(created_at) WHERE state = 'queued';

-- Items a generator call yielded, by index.
CREATE TABLE function_call_data_out (
    call_id TEXT NOT NULL,
    idx     BIGINT NOT NULL,
    chunk   BLOB NOT NULL,
    PRIMARY KEY (call_id, idx)
);
