-- Key-value tags of an app (App(tags=...), App.set_tags), as a JSON object.
ALTER TABLE apps ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
