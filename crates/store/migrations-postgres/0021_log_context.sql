-- The function call and input a log line was written under, when the container ran exactly one
-- input at the time (empty otherwise): what `FunctionCall.logs` and the input filters read.
ALTER TABLE app_logs ADD COLUMN function_call_id TEXT NOT NULL DEFAULT '';
ALTER TABLE app_logs ADD COLUMN input_id TEXT NOT NULL DEFAULT '';
CREATE INDEX app_logs_by_call ON app_logs(function_call_id) WHERE function_call_id <> '';
