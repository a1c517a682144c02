-- GPUs on worker hosts: the type of each card a worker reported (a JSON list; "" for a card of
-- unknown model), and the cards each task placed there asked for.
ALTER TABLE workers ADD COLUMN gpu_types TEXT NOT NULL DEFAULT '[]';
ALTER TABLE worker_tasks ADD COLUMN gpus BIGINT NOT NULL DEFAULT 0;
