-- A function bound to class parameters (`Model(x=1)`) is a variant of its class's service
-- function: it keeps a pointer to the base and the serialized parameters.
ALTER TABLE functions ADD COLUMN base_id TEXT;
ALTER TABLE functions ADD COLUMN params BYTEA;
