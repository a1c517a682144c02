//! `/v1/files`: multipart upload, list, retrieve, content, delete. Batch input files are checked
//! to be JSONL at upload, as OpenAI does.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{new_id, now, SharedState};
use crate::error::{ApiError, ApiResult};

pub const MAX_UPLOAD_BYTES: usize = 200 * 1024 * 1024;
const PURPOSES: &[&str] = &["batch", "assistants", "fine-tune", "vision", "user_data", "evals"];

pub async fn upload(State(state): State<SharedState>, mut mp: Multipart) -> ApiResult<Json<Value>> {
    let mut purpose = None;
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Some(field) = mp.next_field().await.map_err(|e| ApiError::bad_request(format!("Invalid multipart body: {e}")))? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(|e| ApiError::bad_request(e.to_string()))?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                let bytes = field.bytes().await.map_err(|e| ApiError::bad_request(format!("Could not read the uploaded file: {e}")))?;
                file = Some((name, bytes.to_vec()));
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::bad_request("Missing required parameter: 'purpose'.").param("purpose"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::bad_request(format!("Invalid value for 'purpose': '{purpose}'. Supported: {}.", PURPOSES.join(", "))).param("purpose"));
    }
    let (filename, bytes) = file.ok_or_else(|| ApiError::bad_request("Missing required parameter: 'file'.").param("file"))?;
    if purpose == "batch" {
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("Batch input files must be UTF-8 JSONL.").param("file"))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            if serde_json::from_str::<Value>(line).map(|v| !v.is_object()).unwrap_or(true) {
                return Err(ApiError::bad_request(format!("Invalid batch file: line {} is not a JSON object.", i + 1)).param("file"));
            }
        }
    }
    let meta = json!({
        "id": new_id("file-"), "object": "file", "bytes": bytes.len(), "created_at": now(), "expires_at": null,
        "filename": filename, "purpose": purpose, "status": "processed", "status_details": null,
    });
    state.store.put_file(&meta, &bytes)?;
    Ok(Json(meta))
}

#[derive(Deserialize)]
pub struct ListQuery {
    purpose: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

pub async fn list(State(state): State<SharedState>, Query(q): Query<ListQuery>) -> Json<Value> {
    let files: Vec<Value> = state.store.files().into_iter().filter(|f| q.purpose.as_ref().is_none_or(|p| f["purpose"] == p.as_str())).collect();
    let desc = q.order.as_deref() != Some("asc");
    Json(crate::store::paginate(files, q.after.as_deref(), q.limit.unwrap_or(10000).clamp(1, 10000), desc))
}

fn missing(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}")).param("id")
}

pub async fn retrieve(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    state.store.file(&id).map(Json).ok_or_else(|| missing(&id))
}

pub async fn content(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Response> {
    let bytes = state.store.file_content(&id).ok_or_else(|| missing(&id))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

pub async fn delete(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !state.store.delete_file(&id) {
        return Err(missing(&id));
    }
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}
