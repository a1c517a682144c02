//! Durable state of the Files, Batch and Responses APIs: one JSON document per object plus the
//! file bytes, under `DATA_DIR/llm/`. Writes go through a temp file and a rename, so a crash never leaves a
//! half-written object behind.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub struct Store {
    files: PathBuf,
    batches: PathBuf,
    responses: PathBuf,
}

/// Ids come from clients; only our own id alphabet may reach the filesystem.
fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() < 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn list_dir(dir: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| read_json(&e.path()))
        .collect();
    out.sort_by_key(|v| (v["created_at"].as_i64().unwrap_or(0), v["id"].as_str().unwrap_or("").to_string()));
    out
}

impl Store {
    pub fn open(root: &Path) -> std::io::Result<Store> {
        let files = root.join("llm").join("files");
        let batches = root.join("llm").join("batches");
        std::fs::create_dir_all(&files)?;
        let responses = root.join("llm").join("responses");
        std::fs::create_dir_all(&batches)?;
        std::fs::create_dir_all(&responses)?;
        Ok(Store { files, batches, responses })
    }

    pub fn put_file(&self, meta: &Value, content: &[u8]) -> std::io::Result<()> {
        let id = meta["id"].as_str().unwrap_or_default();
        write_atomic(&self.files.join(format!("{id}.data")), content)?;
        write_atomic(&self.files.join(format!("{id}.json")), meta.to_string().as_bytes())
    }

    pub fn file(&self, id: &str) -> Option<Value> {
        safe_id(id).then(|| read_json(&self.files.join(format!("{id}.json")))).flatten()
    }

    pub fn file_content(&self, id: &str) -> Option<Vec<u8>> {
        safe_id(id).then(|| std::fs::read(self.files.join(format!("{id}.data"))).ok()).flatten()
    }

    pub fn delete_file(&self, id: &str) -> bool {
        if !safe_id(id) || self.file(id).is_none() {
            return false;
        }
        let _ = std::fs::remove_file(self.files.join(format!("{id}.data")));
        std::fs::remove_file(self.files.join(format!("{id}.json"))).is_ok()
    }

    pub fn files(&self) -> Vec<Value> {
        list_dir(&self.files)
    }

    pub fn put_batch(&self, batch: &Value) -> std::io::Result<()> {
        let id = batch["id"].as_str().unwrap_or_default();
        write_atomic(&self.batches.join(format!("{id}.json")), batch.to_string().as_bytes())
    }

    pub fn batch(&self, id: &str) -> Option<Value> {
        safe_id(id).then(|| read_json(&self.batches.join(format!("{id}.json")))).flatten()
    }

    pub fn batches(&self) -> Vec<Value> {
        list_dir(&self.batches)
    }

    /// A stored response (`store: true`): the response object, its input items and the whole
    /// conversation it continues, so `previous_response_id` works across restarts.
    pub fn put_response(&self, doc: &Value) -> std::io::Result<()> {
        let id = doc["response"]["id"].as_str().unwrap_or_default();
        write_atomic(&self.responses.join(format!("{id}.json")), doc.to_string().as_bytes())
    }

    pub fn response(&self, id: &str) -> Option<Value> {
        safe_id(id).then(|| read_json(&self.responses.join(format!("{id}.json")))).flatten()
    }

    pub fn delete_response(&self, id: &str) -> bool {
        safe_id(id) && std::fs::remove_file(self.responses.join(format!("{id}.json"))).is_ok()
    }

    /// Results of a running batch, one JSON line per finished request, kept so a restart resumes
    /// where it stopped instead of redoing work.
    pub fn progress_path(&self, batch_id: &str) -> PathBuf {
        self.batches.join(format!("{batch_id}.progress.jsonl"))
    }
}

/// Cursor pagination as OpenAI lists do it: `after` an id, `limit` items, newest first by default.
pub fn paginate(mut items: Vec<Value>, after: Option<&str>, limit: usize, desc: bool) -> Value {
    if desc {
        items.reverse();
    }
    if let Some(after) = after {
        if let Some(pos) = items.iter().position(|v| v["id"] == after) {
            items.drain(..=pos);
        }
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    serde_json::json!({
        "object": "list",
        "first_id": items.first().map(|v| v["id"].clone()),
        "last_id": items.last().map(|v| v["id"].clone()),
        "has_more": has_more,
        "data": items,
    })
}
