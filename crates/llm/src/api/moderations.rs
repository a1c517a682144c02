//! `POST /v1/moderations`: the 13 OpenAI categories for text inputs (see `crate::moderation`).

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use super::{new_id, parse_json, SharedState};
use crate::error::{ApiError, ApiResult};
use crate::moderation::{CATEGORIES, FLAG_THRESHOLD};

pub async fn create(State(state): State<SharedState>, body: Bytes) -> ApiResult<Json<Value>> {
    let v: Value = parse_json(&body)?;
    moderate(&state, v).await.map(Json)
}

fn inputs(v: &Value) -> ApiResult<Vec<String>> {
    match v.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(|i| i.is_string()) {
                return Ok(items.iter().map(|i| i.as_str().unwrap().to_string()).collect());
            }
            // Multi-modal form: one result for all the parts together.
            let mut text = Vec::new();
            for (j, p) in items.iter().enumerate() {
                match p.get("type").and_then(|t| t.as_str()) {
                    Some("text") => text.push(p.get("text").and_then(|t| t.as_str()).unwrap_or("").to_string()),
                    Some("image_url") => {
                        return Err(ApiError::bad_request("Image moderation is not supported by this server; send text inputs.").param(format!("input[{j}]")))
                    }
                    _ => return Err(ApiError::bad_request("Invalid input part: expected {\"type\": \"text\", \"text\": ...}.").param(format!("input[{j}]"))),
                }
            }
            Ok(vec![text.join("\n")])
        }
        _ => Err(ApiError::bad_request("Invalid 'input': expected a string, an array of strings, or an array of input parts.").param("input")),
    }
}

pub async fn moderate(state: &SharedState, v: Value) -> ApiResult<Value> {
    let texts = inputs(&v)?;
    let model = v.get("model").and_then(|m| m.as_str()).unwrap_or("omni-moderation-latest").to_string();
    let moderator = state.moderator.clone();
    if let Some(p) = &moderator.problem {
        return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "server_error", format!("Moderation is unavailable: {p}.")));
    }
    let results = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|t| {
                let scores = moderator.score(t).expect("classifier loaded");
                let mut categories = Map::new();
                let mut category_scores = Map::new();
                let mut applied = Map::new();
                for (name, s) in &scores.0 {
                    categories.insert(name.to_string(), json!(*s >= FLAG_THRESHOLD));
                    category_scores.insert(name.to_string(), json!(s));
                    applied.insert(name.to_string(), json!(["text"]));
                }
                debug_assert_eq!(categories.len(), CATEGORIES.len());
                json!({"flagged": scores.flagged(), "categories": categories, "category_scores": category_scores, "category_applied_input_types": applied})
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json!({"id": new_id("modr-"), "model": model, "results": results}))
}
