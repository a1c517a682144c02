-- Which input made which function call (`FunctionCall.get_call_graph()`). A row is written
-- when a call is made from inside a running input; it keeps what the graph needs of the
-- parent input after the parent's own call is read and forgotten.
CREATE TABLE function_call_edges (
    call_id            TEXT PRIMARY KEY,
    function_id        TEXT NOT NULL,
    parent_input_id    TEXT NOT NULL,
    parent_call_id     TEXT NOT NULL,
    parent_function_id TEXT NOT NULL,
    parent_task_id     TEXT,
    -- The parent input's final status (a GenericResult status) once it has one.
    parent_status      BIGINT,
    created_at         DOUBLE PRECISION NOT NULL
);
CREATE INDEX function_call_edges_by_parent_call ON function_call_edges(parent_call_id);
CREATE INDEX function_call_edges_by_parent_input ON function_call_edges(parent_input_id);
CREATE INDEX function_call_edges_by_age ON function_call_edges(created_at);
