//! `POST /v1/embeddings`: `input` as a string, a list of strings, a token array or a list of
//! token arrays (token ids of the embedding model's own vocabulary); `dimensions` (the vector
//! cut to its first N components and scaled back to unit length, as OpenAI's v3 models allow);
//! `encoding_format` `float` or `base64` (little-endian f32, as the SDK decodes it).

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{parse_json, SharedState};
use crate::embed::normalize;
use crate::error::{ApiError, ApiResult};

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

pub async fn create(State(state): State<SharedState>, body: Bytes) -> ApiResult<Json<Value>> {
    let v: Value = parse_json(&body)?;
    let model = v.get("model").and_then(|m| m.as_str()).ok_or_else(|| ApiError::bad_request("Missing required parameter: 'model'.").param("model"))?;
    let Some(emb) = state.embedder.as_ref().filter(|e| e.info.id == model) else {
        if model == state.engine.info.id {
            return Err(ApiError::bad_request(format!(
                "The model `{model}` is a chat model and does not produce embeddings; start the server with --embedding-model FILE.gguf and use that model."
            ))
            .param("model"));
        }
        return Err(ApiError::not_found(format!("The model `{model}` does not exist or you do not have access to it.")).code("model_not_found"));
    };
    let info = &emb.info;
    let dims = match v.get("dimensions") {
        None | Some(Value::Null) => info.dims,
        Some(d) => match d.as_u64() {
            Some(d) if d >= 1 && d as usize <= info.dims => d as usize,
            _ => {
                return Err(ApiError::bad_request(format!("Invalid 'dimensions': expected an integer from 1 to {} for this model.", info.dims)).param("dimensions"))
            }
        },
    };
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        _ => return Err(ApiError::bad_request("Invalid 'encoding_format': expected 'float' or 'base64'.").param("encoding_format")),
    };
    let inputs = tokenized_inputs(&state, v.get("input"))?;
    for (i, t) in inputs.iter().enumerate() {
        if t.is_empty() {
            return Err(ApiError::bad_request(format!("Invalid 'input[{i}]': an input must not be empty.")).param("input"));
        }
        if t.len() > info.max_tokens {
            return Err(ApiError::bad_request(format!(
                "This model's maximum context length is {} tokens, however you requested {} tokens in input {i}. Please reduce your input.",
                info.max_tokens,
                t.len()
            ))
            .param("input")
            .code("context_length_exceeded"));
        }
        if let Some(bad) = t.iter().find(|&&x| x as usize >= info.n_vocab) {
            return Err(ApiError::bad_request(format!("Invalid token id {bad} in input {i}: this model's vocabulary has {} tokens.", info.n_vocab)).param("input"));
        }
    }
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = emb.embed(inputs).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let v = if dims < v.len() { normalize(v[..dims].to_vec()) } else { v };
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": info.id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}

fn tokenized_inputs(state: &SharedState, input: Option<&Value>) -> ApiResult<Vec<Vec<u32>>> {
    let emb = state.embedder.as_ref().expect("checked by the caller");
    let bad = || ApiError::bad_request("Invalid 'input': expected a string, an array of strings, an array of token ids, or an array of token-id arrays.").param("input");
    let tokens = |v: &Value| -> Option<Vec<u32>> { v.as_array()?.iter().map(|t| t.as_u64().filter(|&t| t <= u32::MAX as u64).map(|t| t as u32)).collect() };
    let text = |i: usize, s: &str| -> ApiResult<Vec<u32>> {
        if s.is_empty() {
            return Err(ApiError::bad_request(format!("Invalid 'input[{i}]': an input must not be an empty string.")).param("input"));
        }
        Ok(emb.tokenize(s))
    };
    let out = match input {
        Some(Value::String(s)) => vec![text(0, s)?],
        Some(Value::Array(items)) if items.is_empty() => return Err(ApiError::bad_request("Invalid 'input': the array must not be empty.").param("input")),
        Some(Value::Array(items)) if items.iter().all(|i| i.is_string()) => {
            items.iter().enumerate().map(|(k, i)| text(k, i.as_str().unwrap_or_default())).collect::<ApiResult<_>>()?
        }
        Some(Value::Array(items)) if items.iter().all(|i| i.is_number()) => vec![tokens(&Value::Array(items.clone())).ok_or_else(bad)?],
        Some(Value::Array(items)) if items.iter().all(|i| i.is_array()) => items.iter().map(|i| tokens(i).ok_or_else(bad)).collect::<ApiResult<_>>()?,
        _ => return Err(bad()),
    };
    if out.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(format!("Invalid 'input': at most {MAX_INPUTS} inputs per request.")).param("input"));
    }
    Ok(out)
}
