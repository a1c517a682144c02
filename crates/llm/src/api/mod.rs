//! HTTP surface: the OpenAI routes, bearer-key auth and the shared [`AppState`].
//!
//! Architecture invariant: only this module knows the OpenAI wire format; it turns requests into
//! engine work (`GenRequest`) and engine events back into OpenAI objects.

pub mod batches;
pub mod chat;
pub mod embeddings;
pub mod files;
pub mod moderations;
pub mod responses;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::embed::Embedder;
use crate::engine::Engine;
use crate::error::{ApiError, ApiResult};
use crate::moderation::Moderator;
use crate::store::Store;
use crate::template::ChatTemplate;

pub struct AppState {
    pub engine: Arc<Engine>,
    /// The `--embedding-model`, when one is loaded.
    pub embedder: Option<Arc<Embedder>>,
    pub template: ChatTemplate,
    pub api_key: String,
    pub store: Arc<Store>,
    pub moderator: Arc<Moderator>,
    /// Wakes the batch runner when a batch is created or cancelled.
    pub batch_wakeup: tokio::sync::Notify,
    /// Serialises read-modify-write of batch objects between the runner and `cancel`.
    pub batch_lock: tokio::sync::Mutex<()>,
}

pub type SharedState = Arc<AppState>;

pub fn router(state: SharedState) -> Router {
    let v1 = Router::new()
        .route("/models", get(list_models))
        .route("/models/{model}", get(get_model))
        .route("/chat/completions", post(chat::create))
        .route("/responses", post(responses::create))
        .route("/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/responses/{id}/cancel", post(responses::cancel))
        .route("/responses/{id}/input_items", get(responses::input_items))
        .route("/moderations", post(moderations::create))
        .route("/embeddings", post(embeddings::create))
        .route("/files", post(files::upload).get(files::list))
        .route("/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/files/{id}/content", get(files::content))
        .route("/batches", post(batches::create).get(batches::list))
        .route("/batches/{id}", get(batches::retrieve))
        .route("/batches/{id}/cancel", post(batches::cancel))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(DefaultBodyLimit::max(files::MAX_UPLOAD_BYTES + 1024 * 1024));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .with_state(state)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn require_key(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| constant_time_eq(k.trim().as_bytes(), state.api_key.as_bytes()));
    if !ok {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("Invalid URL ({} {})", req.method(), req.uri().path())).code("unknown_url")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", format!("Method {} is not allowed for {}", req.method(), req.uri().path()))
}

fn model_object(state: &AppState) -> Value {
    json!({"id": state.engine.info.id, "object": "model", "created": state.engine.info.created, "owned_by": "ferry"})
}

/// The chat model first, then the embedding model when one is loaded.
fn model_objects(state: &AppState) -> Vec<Value> {
    let mut v = vec![model_object(state)];
    if let Some(e) = &state.embedder {
        v.push(json!({"id": e.info.id, "object": "model", "created": e.info.created, "owned_by": "ferry"}));
    }
    v
}

async fn list_models(State(state): State<SharedState>) -> Json<Value> {
    Json(json!({"object": "list", "data": model_objects(&state)}))
}

async fn get_model(State(state): State<SharedState>, Path(model): Path<String>) -> ApiResult<Json<Value>> {
    match model_objects(&state).into_iter().find(|m| m["id"] == model.as_str()) {
        Some(m) => Ok(Json(m)),
        None => Err(ApiError::not_found(format!("The model `{model}` does not exist or you do not have access to it.")).code("model_not_found")),
    }
}

/// Parses a JSON body with OpenAI-style errors instead of axum's plain-text rejections.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("We could not parse the JSON body of your request: {e}"))
    })?;
    from_value(v)
}

/// JSON type a top-level request field must have.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Num,
    Int,
    Bool,
    Arr,
    Obj,
    StrOrArr,
    StrOrObj,
}

impl Ty {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Ty::Str => v.is_string(),
            Ty::Num => v.is_number(),
            Ty::Int => v.is_i64() || v.is_u64(),
            Ty::Bool => v.is_boolean(),
            Ty::Arr => v.is_array(),
            Ty::Obj => v.is_object(),
            Ty::StrOrArr => v.is_string() || v.is_array(),
            Ty::StrOrObj => v.is_string() || v.is_object(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Num => "a decimal",
            Ty::Int => "an integer",
            Ty::Bool => "a boolean",
            Ty::Arr => "an array",
            Ty::Obj => "an object",
            Ty::StrOrArr => "a string or an array",
            Ty::StrOrObj => "a string or an object",
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a request body's shape before it is deserialised, so a wrong type names its parameter
/// (`param`, code `invalid_type`) as OpenAI does; `null` fields count as absent and are dropped.
pub fn check_fields(v: &mut Value, required: &[&str], fields: &[(&str, Ty)]) -> ApiResult<()> {
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::bad_request(format!("The request body must be a JSON object, not {}.", json_kind(v))).code("invalid_type"));
    };
    obj.retain(|_, x| !x.is_null());
    for r in required {
        if !obj.contains_key(*r) {
            return Err(ApiError::bad_request(format!("Missing required parameter: '{r}'.")).param(*r).code("missing_required_parameter"));
        }
    }
    for (name, ty) in fields {
        if let Some(x) = obj.get(*name) {
            if !ty.accepts(x) {
                return Err(ApiError::bad_request(format!("Invalid type for '{name}': expected {}, but got {} instead.", ty.name(), json_kind(x)))
                    .param(*name)
                    .code("invalid_type"));
            }
        }
    }
    Ok(())
}

pub fn from_value<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("Invalid request: {e}")))
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
