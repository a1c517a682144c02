-- A function asking for a list of GPU types (`gpu=["H100", "A100"]`) keeps the whole list,
-- most preferred first, as opaque text the GPU pool parses; its definition holds the first.
CREATE TABLE function_gpu_choices (
    function_id TEXT PRIMARY KEY,
    choices TEXT NOT NULL
);
