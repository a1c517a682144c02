-- Forgetting a call (its caller read its answers, or it expired) is one statement: deleting the
-- call deletes its inputs with their answers and its generator items.
CREATE TRIGGER function_calls_forget AFTER DELETE ON function_calls
BEGIN
    DELETE FROM function_inputs WHERE call_id = OLD.id;
    DELETE FROM function_call_data_out WHERE call_id = OLD.id;
END;
