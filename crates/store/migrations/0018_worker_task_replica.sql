-- The replica that placed a task on a worker: when another replica adopts it (it died), the
-- adopter declares its placed tasks lost, so their workers kill the containers (which talked
-- to the dead replica only) and their credentials stop working.
ALTER TABLE worker_tasks ADD COLUMN replica TEXT;
