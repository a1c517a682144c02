//! The Batch API: `/v1/batches` objects and the runner that works through them.
//!
//! Status transitions follow OpenAI: validating → in_progress → finalizing → completed, or
//! validating → failed (bad input), or … → cancelling → cancelled. Every transition is persisted,
//! and each finished request is appended to a progress file, so a restarted server resumes a batch
//! where it stopped. Requests run at `Priority::Batch`: the engine serves interactive work first.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{chat, moderations, new_id, now, parse_json, responses, SharedState};
use crate::engine::Priority;
use crate::error::{ApiError, ApiResult};

const ENDPOINTS: &[&str] = &["/v1/chat/completions", "/v1/responses", "/v1/moderations"];
/// Requests of one batch in flight at once; the engine interleaves them with interactive traffic.
const BATCH_CONCURRENCY: usize = 2;

#[derive(Deserialize)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<Value>,
}

pub async fn create(State(state): State<SharedState>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: CreateBatch = parse_json(&body)?;
    if !ENDPOINTS.contains(&req.endpoint.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Endpoint '{}' is not supported for batches by this server. Supported: {}.",
            req.endpoint,
            ENDPOINTS.join(", ")
        ))
        .param("endpoint"));
    }
    if req.completion_window != "24h" {
        return Err(ApiError::bad_request("Invalid 'completion_window': only '24h' is supported.").param("completion_window"));
    }
    let file = state.store.file(&req.input_file_id).ok_or_else(|| ApiError::not_found(format!("No such File object: {}", req.input_file_id)).param("input_file_id"))?;
    if file["purpose"] != "batch" {
        return Err(ApiError::bad_request("The input file must have purpose 'batch'.").param("input_file_id"));
    }
    let created = now();
    let batch = json!({
        "id": new_id("batch_"), "object": "batch", "endpoint": req.endpoint, "errors": null,
        "input_file_id": req.input_file_id, "completion_window": "24h", "status": "validating",
        "output_file_id": null, "error_file_id": null, "created_at": created,
        "in_progress_at": null, "expires_at": created + 24 * 3600, "finalizing_at": null, "completed_at": null,
        "failed_at": null, "expired_at": null, "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": req.metadata, "model": state.engine.info.id,
    });
    state.store.put_batch(&batch)?;
    state.batch_wakeup.notify_one();
    Ok(Json(batch))
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(state): State<SharedState>, Query(q): Query<ListQuery>) -> Json<Value> {
    Json(crate::store::paginate(state.store.batches(), q.after.as_deref(), q.limit.unwrap_or(20).clamp(1, 100), true))
}

pub async fn retrieve(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    state.store.batch(&id).map(Json).ok_or_else(|| ApiError::not_found(format!("No such Batch object: {id}")).param("batch_id"))
}

pub async fn cancel(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let _guard = state.batch_lock.lock().await;
    let mut b = state.store.batch(&id).ok_or_else(|| ApiError::not_found(format!("No such Batch object: {id}")).param("batch_id"))?;
    match b["status"].as_str() {
        Some("validating") | Some("in_progress") => {
            b["status"] = json!("cancelling");
            b["cancelling_at"] = json!(now());
            state.store.put_batch(&b)?;
            state.batch_wakeup.notify_one();
            Ok(Json(b))
        }
        Some("cancelling") | Some("cancelled") => Ok(Json(b)),
        other => Err(ApiError::new(axum::http::StatusCode::CONFLICT, "invalid_request_error", format!("Cannot cancel a batch with status '{}'.", other.unwrap_or("?")))),
    }
}

/// One parsed input line.
#[derive(Clone)]
struct Line {
    custom_id: String,
    body: Value,
}

fn parse_input(text: &str, endpoint: &str) -> Result<Vec<Line>, Vec<Value>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |code: &str, msg: String| json!({"code": code, "line": i + 1, "message": msg, "param": null});
        let v: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err("invalid_json_line", format!("Line is not valid JSON: {e}")));
                continue;
            }
        };
        let Some(custom_id) = v["custom_id"].as_str() else {
            errors.push(err("missing_required_parameter", "Missing 'custom_id'.".into()));
            continue;
        };
        if !seen.insert(custom_id.to_string()) {
            errors.push(err("duplicate_custom_id", format!("The custom_id '{custom_id}' is used more than once.")));
        }
        if v["method"] != "POST" {
            errors.push(err("invalid_method", "Only POST is supported.".into()));
        }
        if v["url"] != endpoint {
            errors.push(err("mismatched_endpoint", format!("The url of every request must be the batch endpoint {endpoint}.")));
        }
        if !v["body"].is_object() {
            errors.push(err("missing_required_parameter", "Missing 'body'.".into()));
            continue;
        }
        lines.push(Line { custom_id: custom_id.to_string(), body: v["body"].clone() });
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "line": null, "message": "The input file has no requests.", "param": null}));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

async fn run_one(state: &SharedState, endpoint: &str, body: Value) -> ApiResult<Value> {
    match endpoint {
        "/v1/chat/completions" => {
            let req = chat::parse_request(body)?;
            if req.stream {
                return Err(ApiError::bad_request("Streaming is not supported in batches.").param("stream"));
            }
            let p = chat::prepare(state, req)?;
            chat::complete(state, p, Priority::Batch).await
        }
        "/v1/responses" => responses::run_batch(state, body).await,
        "/v1/moderations" => moderations::moderate(state, body).await,
        other => Err(ApiError::bad_request(format!("Unsupported endpoint {other}"))),
    }
}

/// Background task: picks up batches that are not final, oldest first, forever.
pub async fn runner(state: SharedState) {
    loop {
        let todo = state
            .store
            .batches()
            .into_iter()
            .find(|b| matches!(b["status"].as_str(), Some("validating" | "in_progress" | "finalizing" | "cancelling")));
        match todo {
            Some(b) => {
                if let Err(e) = process(&state, b).await {
                    tracing::error!("batch runner: {}", e.message);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
            None => state.batch_wakeup.notified().await,
        }
    }
}

/// Re-reads the stored batch, applies `f`, writes it back (serialised with `cancel`).
async fn update(state: &SharedState, id: &str, f: impl FnOnce(&mut Value)) -> ApiResult<Value> {
    let _guard = state.batch_lock.lock().await;
    let mut b = state.store.batch(id).ok_or_else(|| ApiError::internal(format!("batch {id} vanished")))?;
    f(&mut b);
    state.store.put_batch(&b)?;
    Ok(b)
}

fn status_of(state: &SharedState, id: &str) -> String {
    state.store.batch(id).and_then(|b| b["status"].as_str().map(String::from)).unwrap_or_default()
}

async fn process(state: &SharedState, b: Value) -> ApiResult<()> {
    let id = b["id"].as_str().unwrap_or_default().to_string();
    let endpoint = b["endpoint"].as_str().unwrap_or_default().to_string();
    let input = state.store.file_content(b["input_file_id"].as_str().unwrap_or_default()).unwrap_or_default();
    let lines = match parse_input(&String::from_utf8_lossy(&input), &endpoint) {
        Ok(l) => l,
        Err(errors) => {
            update(state, &id, |b| {
                b["status"] = json!("failed");
                b["failed_at"] = json!(now());
                b["errors"] = json!({"object": "list", "data": errors});
            })
            .await?;
            return Ok(());
        }
    };
    if b["status"] == "validating" {
        let total = lines.len();
        update(state, &id, |b| {
            if b["status"] == "validating" {
                b["status"] = json!("in_progress");
                b["in_progress_at"] = json!(now());
            }
            b["request_counts"]["total"] = json!(total);
        })
        .await?;
    }

    // Results already on disk from before a restart.
    let progress_path = state.store.progress_path(&id);
    let mut done: HashMap<String, Value> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(&progress_path) {
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                if let Some(c) = v["custom_id"].as_str() {
                    done.insert(c.to_string(), v);
                }
            }
        }
    }
    let pending: Vec<Line> = lines.iter().filter(|l| !done.contains_key(&l.custom_id)).cloned().collect();
    let mut progress = std::fs::OpenOptions::new().create(true).append(true).open(&progress_path)?;
    let counts = |done: &HashMap<String, Value>| {
        let failed = done.values().filter(|v| !v["error"].is_null()).count();
        (done.len() - failed, failed)
    };
    let mut results = futures::stream::iter(pending.into_iter().map(|line| {
        let state = state.clone();
        let endpoint = endpoint.clone();
        let id = id.clone();
        async move {
            if matches!(status_of(&state, &id).as_str(), "cancelling" | "cancelled") {
                return None;
            }
            let res = run_one(&state, &endpoint, line.body).await;
            let rid = new_id("batch_req_");
            Some(match res {
                Ok(body) => json!({"id": rid, "custom_id": line.custom_id, "response": {"status_code": 200, "request_id": new_id("req_"), "body": body}, "error": null}),
                Err(e) => json!({"id": rid, "custom_id": line.custom_id, "response": {"status_code": e.status.as_u16(), "request_id": new_id("req_"), "body": e.body()}, "error": {"code": e.code.clone().unwrap_or_else(|| e.kind.to_string()), "message": e.message}}),
            })
        }
    }))
    .buffer_unordered(BATCH_CONCURRENCY);
    while let Some(r) = results.next().await {
        let Some(r) = r else { continue };
        writeln!(progress, "{r}")?;
        progress.flush()?;
        done.insert(r["custom_id"].as_str().unwrap_or_default().to_string(), r);
        let (ok, failed) = counts(&done);
        update(state, &id, |b| {
            b["request_counts"]["completed"] = json!(ok);
            b["request_counts"]["failed"] = json!(failed);
        })
        .await?;
    }
    drop(results);

    // Output and error files, in input order.
    let cancelled = matches!(status_of(state, &id).as_str(), "cancelling" | "cancelled");
    if !cancelled {
        update(state, &id, |b| {
            b["status"] = json!("finalizing");
            b["finalizing_at"] = json!(now());
        })
        .await?;
    }
    let mut out = String::new();
    let mut err = String::new();
    for l in &lines {
        if let Some(r) = done.get(&l.custom_id) {
            let target = if r["error"].is_null() { &mut out } else { &mut err };
            target.push_str(&r.to_string());
            target.push('\n');
        }
    }
    let mut output_file_id = Value::Null;
    let mut error_file_id = Value::Null;
    for (text, slot, name) in [(&out, &mut output_file_id, "output"), (&err, &mut error_file_id, "error")] {
        if text.is_empty() {
            continue;
        }
        let fid = new_id("file-");
        let meta = json!({"id": fid, "object": "file", "bytes": text.len(), "created_at": now(), "expires_at": null,
            "filename": format!("{id}_{name}.jsonl"), "purpose": "batch_output", "status": "processed", "status_details": null});
        state.store.put_file(&meta, text.as_bytes())?;
        *slot = json!(fid);
    }
    let (ok, failed) = counts(&done);
    update(state, &id, |b| {
        b["output_file_id"] = output_file_id;
        b["error_file_id"] = error_file_id;
        b["request_counts"]["completed"] = json!(ok);
        b["request_counts"]["failed"] = json!(failed);
        if cancelled {
            b["status"] = json!("cancelled");
            b["cancelled_at"] = json!(now());
        } else {
            b["status"] = json!("completed");
            b["completed_at"] = json!(now());
        }
    })
    .await?;
    let _ = std::fs::remove_file(&progress_path);
    Ok(())
}
