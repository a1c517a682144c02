-- `modal container logs` of a container that has finished: its app and time span come from
-- its log lines.
CREATE INDEX app_logs_by_task ON app_logs(task_id) WHERE task_id <> '';
