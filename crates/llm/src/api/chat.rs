//! `POST /v1/chat/completions`: request validation, prompt building, constrained decoding setup,
//! and the response in both shapes (one JSON object, or SSE chunks).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use llguidance::api::TopLevelGrammar;
use llguidance::Matcher;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::sync::mpsc::UnboundedReceiver;

use llama_cpp_2::mtmd::MtmdInputChunks;

use super::{check_fields, from_value, images, new_id, now, parse_json, AppState, SharedState, Ty};
use crate::engine::{self, Finish, GenEvent, GenRequest, MediaError, Priority, Timings};
use crate::error::{ApiError, ApiResult};
use crate::grammar::{self, ToolMode, ToolSpec};
use crate::sampling::{SamplingParams, TokenLogprob};
use crate::template::TemplateMessage;
use crate::text::TextStream;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub n: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
    pub functions: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Top-level fields of a chat request and their JSON types (checked before deserialising).
const FIELDS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("messages", Ty::Arr),
    ("temperature", Ty::Num),
    ("top_p", Ty::Num),
    ("top_k", Ty::Int),
    ("seed", Ty::Int),
    ("stop", Ty::StrOrArr),
    ("max_tokens", Ty::Int),
    ("max_completion_tokens", Ty::Int),
    ("n", Ty::Int),
    ("logprobs", Ty::Bool),
    ("top_logprobs", Ty::Int),
    ("presence_penalty", Ty::Num),
    ("frequency_penalty", Ty::Num),
    ("logit_bias", Ty::Obj),
    ("stream", Ty::Bool),
    ("stream_options", Ty::Obj),
    ("tools", Ty::Arr),
    ("tool_choice", Ty::StrOrObj),
    ("parallel_tool_calls", Ty::Bool),
    ("response_format", Ty::Obj),
    ("user", Ty::Str),
    ("metadata", Ty::Obj),
    ("store", Ty::Bool),
    ("service_tier", Ty::Str),
];

/// A chat request body (JSON) → [`ChatRequest`], with OpenAI-shaped errors that name the
/// parameter. Shared by the endpoint, batches and the Responses API.
pub fn parse_request(mut v: Value) -> ApiResult<ChatRequest> {
    check_fields(&mut v, &["model", "messages"], FIELDS)?;
    if let Some(m) = v.get("metadata").and_then(|m| m.as_object()) {
        if m.len() > 16 || m.iter().any(|(k, x)| k.len() > 64 || !x.as_str().is_some_and(|s| s.len() <= 512)) {
            return Err(ApiError::bad_request("Invalid 'metadata': expected an object of at most 16 string values (keys up to 64, values up to 512 characters).")
                .param("metadata")
                .code("invalid_value"));
        }
    }
    if v.get("stream_options").is_some() && v.get("stream") != Some(&Value::Bool(true)) {
        return Err(ApiError::bad_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
            .param("stream_options")
            .code("invalid_value"));
    }
    from_value(v)
}

/// A validated request, ready for the engine.
pub struct Prepared {
    pub model: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub n: usize,
    pub stops: Vec<String>,
    pub grammar: Option<TopLevelGrammar>,
    /// Set when the output may contain tool calls to parse.
    pub tools: Option<ToolMode>,
    pub stream: bool,
    pub include_usage: bool,
    /// With image parts: llama.cpp's text and image chunks (`prompt` marks image positions).
    pub media: Option<Arc<MtmdInputChunks>>,
}

/// Bounds check with OpenAI's wording and codes (`integer_above_max_value`,
/// `decimal_below_min_value`, ...).
#[allow(clippy::eq_op)]
fn range<T: PartialOrd + std::fmt::Display + Copy>(v: Option<T>, lo: T, hi: T, name: &str) -> ApiResult<Option<T>> {
    let kind = if std::any::type_name::<T>().starts_with('f') { "decimal" } else { "integer" };
    let Some(x) = v else { return Ok(v) };
    let (side, cmp, bound) = if x > hi {
        ("above_max", "<=", hi)
    } else if x >= lo {
        return Ok(v);
    } else {
        // Below the minimum, or NaN.
        ("below_min", ">=", lo)
    };
    let words = if side == "below_min" { "below minimum" } else { "above maximum" };
    Err(ApiError::bad_request(format!("Invalid '{name}': {kind} {words} value. Expected a value {cmp} {bound}, but got {x} instead."))
        .param(name)
        .code(format!("{kind}_{side}_value")))
}

/// The text of a message's content; each image part becomes an [`engine::MEDIA_MARKER`] in the
/// text and its decoded bytes are appended to `images`.
fn content_text(content: Option<&Value>, i: usize, has_vision: bool, model: &str, images: &mut Vec<Vec<u8>>) -> ApiResult<String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let param = format!("messages.[{i}].content.[{j}]");
                match p.get("type").and_then(|t| t.as_str()) {
                    Some("text") => out.push(p.get("text").and_then(|t| t.as_str()).unwrap_or("").to_string()),
                    Some("refusal") => out.push(p.get("refusal").and_then(|t| t.as_str()).unwrap_or("").to_string()),
                    Some("image_url") => {
                        // `{"url": ...}` as OpenAI sends it; a bare string is accepted too.
                        let url = p.get("image_url").and_then(|u| u.get("url").or(Some(u))).and_then(|u| u.as_str());
                        images.push(check_image(url, false, &param, has_vision, model)?);
                        out.push(engine::MEDIA_MARKER.to_string());
                    }
                    Some("input_audio") => {
                        return Err(ApiError::bad_request(format!("The model `{model}` does not accept audio input.")).param(param).code("unsupported_content"))
                    }
                    Some("file") => {
                        return Err(ApiError::bad_request(format!("The model `{model}` does not accept file content parts.")).param(param).code("unsupported_content"))
                    }
                    other => {
                        return Err(ApiError::bad_request(format!("Invalid content part type: {other:?}.")).param(format!("{param}.type")).code("invalid_value"))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(ApiError::bad_request("Invalid type for message content: expected a string or an array of content parts.").param(format!("messages.[{i}].content")).code("invalid_type")),
    }
}

/// Largest decoded image accepted in a data URL (OpenAI's limit per image).
const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;

/// Checks an image input (chat `image_url` part or Responses `input_image`) and returns its bytes:
/// a `data:` URL must be base64 PNG, JPEG, WebP or GIF whose bytes are that format; an `http(s)`
/// URL reaching this point was not fetched (its host is not allowed: see `api::images`);
/// anything else is a 400. A model without a vision projector answers 400
/// `image_input_not_supported` for any well-formed image.
pub(crate) fn check_image(url: Option<&str>, has_file_id: bool, param: &str, has_vision: bool, model: &str) -> ApiResult<Vec<u8>> {
    let bad = |msg: String, code: &str| ApiError::bad_request(msg).param(param).code(code);
    let Some(url) = url else {
        if has_file_id {
            return Err(bad("Images by file_id are not supported; send the image as a data URL.".into(), "unsupported_value"));
        }
        return Err(bad(format!("Missing required parameter: '{param}.image_url'."), "missing_required_parameter"));
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest.split_once(',').ok_or_else(|| bad("Invalid image URL: a data URL needs a ',' before its data.".into(), "invalid_image_url"))?;
        let mime = header.strip_suffix(";base64").ok_or_else(|| bad("Invalid image URL: only base64 data URLs (data:image/png;base64,...) are supported.".into(), "invalid_image_url"))?;
        let want: &[&[u8]] = match mime {
            "image/png" => &[b"\x89PNG\r\n\x1a\n"],
            "image/jpeg" | "image/jpg" => &[b"\xff\xd8\xff"],
            "image/gif" => &[b"GIF87a", b"GIF89a"],
            "image/webp" => &[b"RIFF"],
            other => {
                return Err(bad(format!("Invalid image format '{other}'. Supported formats are: 'png', 'jpeg', 'gif' and 'webp'."), "invalid_image_format"))
            }
        };
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("Invalid image URL: the base64 data does not decode ({e})."), "invalid_image_url"))?;
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(bad(format!("The image is {} bytes; the limit is {MAX_IMAGE_BYTES}.", bytes.len()), "image_too_large"));
        }
        if !want.iter().any(|m| bytes.starts_with(m)) {
            return Err(bad(format!("The image data is not a valid {mime} image."), "invalid_image_format"));
        }
        if !has_vision {
            return Err(no_vision(param, model));
        }
        Ok(bytes)
    } else if url.starts_with("https://") || url.starts_with("http://") {
        if !has_vision {
            return Err(no_vision(param, model));
        }
        Err(bad(
            format!(
                "Image URLs from the host '{}' are not fetched by this server; send the image as a data URL (data:image/png;base64,...), or ask the operator to allow the host with --allow-image-host.",
                images::url_host(url).unwrap_or_default()
            ),
            "invalid_image_url",
        ))
    } else {
        Err(bad("Invalid image URL: expected a data: URL or an http(s) URL.".into(), "invalid_image_url"))
    }
}

fn no_vision(param: &str, model: &str) -> ApiError {
    ApiError::bad_request(format!(
        "The model `{model}` has no vision encoder, so image inputs are not supported. Send text only, or start the server with --mmproj (the model's projector file)."
    ))
    .param(param)
    .code("image_input_not_supported")
}

/// OpenAI messages → template messages (system first; tool traffic written inline).
/// `images` receives the images' bytes in the order their markers appear in the rendered prompt
/// (system turn first, then the conversation).
fn normalise(messages: &[Value], tools_block: Option<String>, has_vision: bool, model: &str, images: &mut Vec<Vec<u8>>) -> ApiResult<Vec<TemplateMessage>> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("Invalid 'messages': empty array. Expected an array with minimum length 1.").param("messages").code("empty_array"));
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<TemplateMessage> = Vec::new();
    let mut system_images: Vec<Vec<u8>> = Vec::new();
    let mut turn_images: Vec<Vec<u8>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(|r| r.as_str()).ok_or_else(|| {
            ApiError::bad_request(format!("Missing required parameter: 'messages.[{i}].role'.")).param(format!("messages.[{i}].role")).code("missing_required_parameter")
        })?;
        let target = if matches!(role, "system" | "developer") { &mut system_images } else { &mut turn_images };
        let text = content_text(m.get("content"), i, has_vision, model, target)?;
        let (role, text) = match role {
            "system" | "developer" => {
                system.push(text);
                continue;
            }
            "user" => ("user", text),
            "assistant" => {
                let mut t = text;
                if let Some(calls) = m.get("tool_calls").and_then(|c| c.as_array()) {
                    for c in calls {
                        let f = c.get("function").cloned().unwrap_or(json!({}));
                        let name = f.get("name").and_then(|n| n.as_str()).unwrap_or("");
                        let args = f.get("arguments").and_then(|a| a.as_str()).unwrap_or("{}");
                        let args: Value = serde_json::from_str(args).unwrap_or(Value::String(args.to_string()));
                        if !t.is_empty() {
                            t.push('\n');
                        }
                        t.push_str(&format!(
                            "{}{{\"name\": {}, \"arguments\": {}}}{}",
                            grammar::TOOL_OPEN,
                            Value::String(name.into()),
                            args,
                            grammar::TOOL_CLOSE
                        ));
                    }
                }
                ("assistant", t)
            }
            "tool" | "function" => ("user", format!("<tool_response>\n{text}\n</tool_response>")),
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value: '{other}'. Supported values are: 'system', 'developer', 'user', 'assistant', and 'tool'."
                ))
                .param(format!("messages.[{i}].role"))
                .code("invalid_value"))
            }
        };
        match turns.last_mut() {
            Some(last) if last.role == role => {
                last.content.push('\n');
                last.content.push_str(&text);
            }
            _ => turns.push(TemplateMessage { role: role.into(), content: text }),
        }
    }
    if let Some(b) = tools_block {
        system.push(b);
    }
    let mut out = Vec::new();
    if !system.is_empty() {
        out.push(TemplateMessage { role: "system".into(), content: system.join("\n\n") });
    }
    out.extend(turns);
    images.extend(system_images);
    images.extend(turn_images);
    Ok(out)
}

fn parse_tools(tools: &[Value]) -> ApiResult<Vec<ToolSpec>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").and_then(|x| x.as_str()) != Some("function") {
                return Err(ApiError::bad_request("Only tools of type 'function' are supported.").param(format!("tools[{i}].type")).code("invalid_value"));
            }
            let f = t.get("function").ok_or_else(|| ApiError::bad_request(format!("Missing required parameter: 'tools[{i}].function'.")).param(format!("tools[{i}].function")).code("missing_required_parameter"))?;
            let name = f.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).ok_or_else(|| {
                ApiError::bad_request(format!("Missing required parameter: 'tools[{i}].function.name'.")).param(format!("tools[{i}].function.name")).code("missing_required_parameter")
            })?;
            let parameters = f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}));
            if f.get("strict").and_then(|s| s.as_bool()) == Some(true) {
                grammar::check_strict(&parameters, &format!("tools[{i}].function.parameters"))
                    .map_err(|e| ApiError::bad_request(e).param(format!("tools[{i}].function.parameters")))?;
            }
            Ok(ToolSpec { name: name.to_string(), description: f.get("description").and_then(|d| d.as_str()).map(String::from), parameters })
        })
        .collect()
}

fn mentions_json(messages: &[Value]) -> bool {
    messages.iter().any(|m| m.to_string().to_lowercase().contains("json"))
}

/// Validates `req` and builds everything the engine needs. Shared by the endpoint and batches.
pub fn prepare(state: &AppState, req: ChatRequest) -> ApiResult<Prepared> {
    let info = &state.engine.info;
    if req.model != info.id {
        return Err(ApiError::not_found(format!("The model `{}` does not exist or you do not have access to it.", req.model))
            .code("model_not_found")
            .param("model"));
    }
    if req.functions.is_some() {
        return Err(ApiError::bad_request("The legacy 'functions' parameter is not supported; use 'tools'.").param("functions").code("unsupported_parameter"));
    }
    let temperature = range(req.temperature, 0.0, 2.0, "temperature")?.unwrap_or(1.0);
    let top_p = range(req.top_p, 0.0, 1.0, "top_p")?.unwrap_or(1.0);
    let top_k = range(req.top_k, 0, info.n_vocab as i64, "top_k")?.unwrap_or(0) as usize;
    let presence = range(req.presence_penalty, -2.0, 2.0, "presence_penalty")?.unwrap_or(0.0);
    let frequency = range(req.frequency_penalty, -2.0, 2.0, "frequency_penalty")?.unwrap_or(0.0);
    let n = range(req.n, 1, 16, "n")?.unwrap_or(1) as usize;
    let top_logprobs = range(req.top_logprobs, 0, 20, "top_logprobs")?;
    let logprobs = req.logprobs.unwrap_or(false);
    if top_logprobs.is_some() && !logprobs {
        return Err(ApiError::bad_request("Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.").param("top_logprobs").code("invalid_value"));
    }
    let mut logit_bias = HashMap::new();
    for (k, v) in req.logit_bias.unwrap_or_default() {
        let tok: u32 = k.parse().ok().filter(|&t: &u32| (t as usize) < info.n_vocab).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid key in 'logit_bias': {k}. Keys must be token ids of this model.")).param("logit_bias").code("invalid_value")
        })?;
        range(Some(v), -100.0, 100.0, "logit_bias")?;
        logit_bias.insert(tok, v);
    }
    let stops: Vec<String> = match req.stop {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(|s| s.is_string()) => a.into_iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        Some(_) => return Err(ApiError::bad_request("Invalid 'stop': expected a string or an array of up to 4 strings.").param("stop").code("invalid_value")),
    };
    let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) | (None, Some(m)) => {
            let name = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            if m < 1 {
                return Err(ApiError::bad_request(format!("Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {m} instead."))
                    .param(name)
                    .code("integer_below_min_value"));
            }
            Some(m as usize)
        }
        _ => None,
    };

    // Tools and response_format decide the grammar.
    let tools = match req.tools.as_deref() {
        Some(t) if !t.is_empty() => parse_tools(t)?,
        _ => vec![],
    };
    let mode = match &req.tool_choice {
        None => (!tools.is_empty()).then_some(ToolMode::Auto),
        Some(Value::String(s)) if s == "none" => None,
        Some(Value::String(s)) if s == "auto" => (!tools.is_empty()).then_some(ToolMode::Auto),
        Some(Value::String(s)) if s == "required" => Some(ToolMode::Required),
        Some(v) if v.get("type").and_then(|t| t.as_str()) == Some("function") => {
            let name = v.pointer("/function/name").and_then(|n| n.as_str()).unwrap_or("");
            Some(ToolMode::Named(name.to_string()))
        }
        Some(_) => return Err(ApiError::bad_request("Invalid 'tool_choice': expected 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.").param("tool_choice").code("invalid_value")),
    };
    if let Some(m) = &mode {
        if tools.is_empty() {
            return Err(ApiError::bad_request("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.").param("tool_choice").code("invalid_value"));
        }
        if let ToolMode::Named(n) = m {
            if !tools.iter().any(|t| &t.name == n) {
                return Err(ApiError::bad_request(format!("Invalid 'tool_choice': no tool named '{n}' in 'tools'.")).param("tool_choice").code("invalid_value"));
            }
        }
    }
    let mut grammar = None;
    if let Some(rf) = &req.response_format {
        match rf.get("type").and_then(|t| t.as_str()) {
            Some("text") => {}
            Some("json_object") => {
                if !mentions_json(&req.messages) {
                    return Err(ApiError::bad_request("'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.").param("messages"));
                }
                grammar = Some(grammar::json_object());
            }
            Some("json_schema") => {
                let js = rf.get("json_schema").ok_or_else(|| ApiError::bad_request("Missing required parameter: 'response_format.json_schema'.").param("response_format.json_schema").code("missing_required_parameter"))?;
                let schema = js.get("schema").cloned().unwrap_or(json!({"type": "object"}));
                if js.get("strict").and_then(|s| s.as_bool()) == Some(true) {
                    grammar::check_strict(&schema, "(root)").map_err(|e| ApiError::bad_request(e).param("response_format"))?;
                }
                grammar = Some(grammar::json_schema(&schema));
            }
            other => return Err(ApiError::bad_request(format!("Invalid 'response_format.type': {other:?}. Supported: 'text', 'json_object', 'json_schema'.")).param("response_format.type").code("invalid_value")),
        }
    }
    if grammar.is_some() && mode.is_some() {
        // With both, a tool call must be requested explicitly; plain answers follow response_format.
        if mode != Some(ToolMode::Auto) {
            grammar = None;
        }
    }
    let tool_mode = if grammar.is_some() { None } else { mode };
    if let Some(m) = &tool_mode {
        grammar = Some(grammar::tool_calls(&tools, m, req.parallel_tool_calls.unwrap_or(true)));
    }
    let tools_block = tool_mode.as_ref().map(|m| grammar::tools_prompt(&tools, m));

    let mut images = Vec::new();
    let messages = normalise(&req.messages, tools_block, info.has_vision, &info.id, &mut images)?;
    let text = state
        .template
        .render(&messages, &info.bos_text, &info.eos_text)
        .map_err(|e| ApiError::bad_request(format!("The chat template rejected these messages: {e}")).param("messages"))?;
    let (prompt, media) = if images.is_empty() {
        (state.engine.tokenize(&text), None)
    } else {
        let (prompt, chunks) = state.engine.tokenize_media(&text, &images).map_err(|e| match e {
            MediaError::NoVision => no_vision("messages", &info.id),
            MediaError::Decode(k) => ApiError::bad_request(format!("Image {} of this request could not be decoded (PNG, JPEG, GIF and BMP are supported).", k + 1))
                .param("messages")
                .code("invalid_image_format"),
            MediaError::Tokenize(e) => ApiError::bad_request(format!("The images could not be placed in the prompt: {e}.")).param("messages").code("invalid_image_url"),
        })?;
        (prompt, Some(chunks))
    };
    let room = info.ctx_per_seq.saturating_sub(prompt.len());
    let max_tokens = max_tokens.unwrap_or(room);
    if prompt.len() + max_tokens > info.ctx_per_seq || room == 0 {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the messages, {} in the completion). Please reduce the length of the messages or completion.",
            info.ctx_per_seq,
            prompt.len() + max_tokens,
            prompt.len(),
            max_tokens
        ))
        .param("messages")
        .code("context_length_exceeded"));
    }
    Ok(Prepared {
        model: info.id.clone(),
        prompt,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: req.seed.map(|s| s as u64),
            presence_penalty: presence,
            frequency_penalty: frequency,
            logit_bias,
            logprobs: logprobs.then_some(top_logprobs.unwrap_or(0) as usize),
        },
        max_tokens,
        n,
        stops,
        grammar,
        tools: tool_mode,
        stream: req.stream,
        include_usage: req.stream_options.map(|o| o.include_usage).unwrap_or(false),
        media,
    })
}

/// Compiles the grammar once per choice (off the async runtime: big schemas take a while).
pub(crate) async fn matchers(state: &SharedState, p: &Prepared) -> ApiResult<Vec<Option<Matcher>>> {
    let Some(g) = p.grammar.clone() else { return Ok((0..p.n).map(|_| None).collect()) };
    let factory = state.engine.parser_factory.clone();
    let n = p.n;
    tokio::task::spawn_blocking(move || {
        let parser = factory.create_parser(g).map_err(|e| ApiError::bad_request(format!("Invalid schema or grammar: {e}")).param("response_format"))?;
        let first = Matcher::new(Ok(parser));
        if let Some(e) = first.get_error() {
            return Err(ApiError::bad_request(format!("Invalid schema or grammar: {e}")).param("response_format"));
        }
        let mut out: Vec<Option<Matcher>> = (1..n).map(|_| Some(first.deep_clone())).collect();
        out.insert(0, Some(first));
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("grammar compilation panicked: {e}")))?
}

pub(crate) fn gen_request(p: &Prepared, index: usize, constraint: Option<Matcher>, priority: Priority) -> GenRequest {
    let mut sampling = p.sampling.clone();
    sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
    GenRequest { prompt: p.prompt.clone(), sampling, max_tokens: p.max_tokens, constraint, priority, media: p.media.clone() }
}

fn logprob_entry(state: &AppState, tok: u32, lp: f32) -> Value {
    let bytes = &state.engine.token_bytes[tok as usize];
    json!({"token": String::from_utf8_lossy(bytes), "logprob": lp, "bytes": bytes})
}

pub(crate) fn logprob_json(state: &AppState, tok: u32, lp: &TokenLogprob) -> Value {
    let mut e = logprob_entry(state, tok, lp.logprob);
    e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(t, l)| logprob_entry(state, t, l)).collect());
    e
}

/// One finished choice.
struct ChoiceResult {
    text: String,
    finish: Finish,
    stopped_by_sequence: bool,
    logprobs: Vec<Value>,
    completion_tokens: usize,
    /// Prompt tokens the engine reused from its KV cache.
    cached_tokens: usize,
    timings: Timings,
}

async fn run_choice(state: SharedState, mut rx: UnboundedReceiver<GenEvent>, stops: Vec<String>, want_logprobs: bool) -> ApiResult<ChoiceResult> {
    let mut text = TextStream::new(stops);
    let mut logprobs = Vec::new();
    let mut completion_tokens = 0;
    let mut cached_tokens = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Admitted { cached_tokens: c } => cached_tokens = c,
            GenEvent::Token { id, logprob } => {
                completion_tokens += 1;
                text.push(&state.engine.token_bytes[id as usize]);
                if let (true, Some(lp)) = (want_logprobs, logprob) {
                    logprobs.push(logprob_json(&state, id, &lp));
                }
                if text.stopped() {
                    // Returning drops `rx`, which cancels the sequence in the engine.
                    return Ok(ChoiceResult {
                        text: text.text().to_string(),
                        finish: Finish::Stop,
                        stopped_by_sequence: true,
                        logprobs,
                        completion_tokens,
                        cached_tokens,
                        timings: Timings::default(),
                    });
                }
            }
            GenEvent::Done { finish, completion_tokens, cached_tokens, timings, .. } => {
                text.finish();
                return Ok(ChoiceResult { text: text.text().to_string(), finish, stopped_by_sequence: false, logprobs, completion_tokens, cached_tokens, timings });
            }
            GenEvent::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    Err(ApiError::internal("inference engine stopped"))
}

pub(crate) fn overloaded() -> ApiError {
    ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "The server is at capacity; retry shortly.").code("server_overloaded")
}

pub(crate) fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

pub(crate) fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn tool_calls_json(calls: &[grammar::ParsedCall]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| json!({"id": new_id("call_"), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// Runs a prepared request to completion and returns the `chat.completion` object.
pub async fn complete(state: &SharedState, p: Prepared, priority: Priority) -> ApiResult<Value> {
    let ms = matchers(state, &p).await?;
    let want_lp = p.sampling.logprobs.is_some();
    let reqs = ms.into_iter().enumerate().map(|(i, m)| gen_request(&p, i, m, priority)).collect();
    let rxs = state.engine.submit_all(reqs).ok_or_else(overloaded)?;
    let futs = rxs.into_iter().map(|rx| run_choice(state.clone(), rx, p.stops.clone(), want_lp));
    let results = join_all(futs).await;
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    let mut cached_tokens = 0;
    let mut timings = Timings::default();
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        completion_tokens += r.completion_tokens;
        if i == 0 {
            timings = r.timings.clone();
            cached_tokens = r.cached_tokens;
        }
        let calls = p.tools.as_ref().and_then(|_| grammar::parse_tool_calls(&r.text));
        let (message, finish) = match calls {
            Some(calls) if r.finish == Finish::Stop || r.stopped_by_sequence => (
                json!({"role": "assistant", "content": null, "refusal": null, "annotations": [], "tool_calls": tool_calls_json(&calls)}),
                "tool_calls",
            ),
            _ => (json!({"role": "assistant", "content": r.text, "refusal": null, "annotations": []}), finish_str(r.finish)),
        };
        choices.push(json!({
            "index": i,
            "message": message,
            "logprobs": if want_lp { json!({"content": r.logprobs, "refusal": null}) } else { Value::Null },
            "finish_reason": finish,
        }));
    }
    Ok(json!({
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now(),
        "model": p.model,
        "system_fingerprint": "fp_ferry",
        "service_tier": "default",
        "choices": choices,
        "usage": usage(p.prompt.len(), cached_tokens, completion_tokens),
        "timings": {"queued_ms": timings.queued_ms, "prompt_ms": timings.prompt_ms, "generation_ms": timings.generation_ms, "grammar_ms": timings.grammar_ms},
    }))
}

pub async fn create(State(state): State<SharedState>, body: Bytes) -> Response {
    let mut body = match parse_json::<Value>(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = images::inline_remote_images(&state, &mut body).await {
        return e.into_response();
    }
    let req: ChatRequest = match parse_request(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let p = match prepare(&state, req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if p.stream {
        return match stream(state, p).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    match complete(&state, p, Priority::Interactive).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The SSE response: role chunk, content (or tool-call) deltas, a finish chunk per choice,
/// the usage chunk when asked, then `[DONE]`. All chunks share `id` and `created`.
async fn stream(state: SharedState, p: Prepared) -> ApiResult<Response> {
    let ms = matchers(&state, &p).await?;
    let (tx, rx) = mpsc::channel::<Value>(64);
    let id = new_id("chatcmpl-");
    let created = now();
    let include_usage = p.include_usage;
    let chunk = {
        let id = id.clone();
        let model = p.model.clone();
        move |choices: Value, usage: Option<Value>| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": "fp_ferry", "service_tier": "default", "choices": choices});
            if include_usage {
                c["usage"] = usage.unwrap_or(Value::Null);
            }
            c
        }
    };
    let prompt_tokens = p.prompt.len();
    let want_lp = p.sampling.logprobs.is_some();
    let tools_mode = p.tools.clone();
    let reqs = ms.into_iter().enumerate().map(|(i, m)| gen_request(&p, i, m, Priority::Interactive)).collect();
    let rxs = state.engine.submit_all(reqs).ok_or_else(overloaded)?;
    for (i, req) in rxs.into_iter().enumerate() {
        let (stops, tx, chunk, state, tools_mode) = (p.stops.clone(), tx.clone(), chunk.clone(), state.clone(), tools_mode.clone());
        tokio::spawn(async move { stream_choice(state, i, req, stops, want_lp, tools_mode, tx, chunk).await });
    }
    drop(tx);
    // Forwarder: counts completion tokens, then sends usage (when asked) and [DONE]. If the client
    // goes away, dropping `rx` makes every choice task stop, which cancels its engine sequence.
    let (out_tx, out_rx) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let mut rx = rx;
        let mut completion = 0usize;
        let mut cached: Option<usize> = None;
        while let Some(v) = rx.recv().await {
            if let Some(c) = v.get("_completion_tokens").and_then(|c| c.as_u64()) {
                completion += c as usize;
                // The prompt is shared by every choice; report choice 0's (or the first) reuse.
                let k = v.get("_cached_tokens").and_then(|c| c.as_u64()).unwrap_or(0) as usize;
                if v.get("_index").and_then(|i| i.as_u64()) == Some(0) || cached.is_none() {
                    cached = Some(k);
                }
                continue;
            }
            if out_tx.send(v.to_string()).await.is_err() {
                return;
            }
        }
        if include_usage {
            let _ = out_tx.send(chunk(json!([]), Some(usage(prompt_tokens, cached.unwrap_or(0), completion))).to_string()).await;
        }
        let _ = out_tx.send("[DONE]".to_string()).await;
    });
    use futures::StreamExt;
    let events = tokio_stream::wrappers::ReceiverStream::new(out_rx).map(|s| Ok::<_, Infallible>(Event::default().data(s)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[allow(clippy::too_many_arguments)]
async fn stream_choice(
    state: SharedState,
    index: usize,
    mut rx: UnboundedReceiver<GenEvent>,
    stops: Vec<String>,
    want_lp: bool,
    tools_mode: Option<ToolMode>,
    tx: mpsc::Sender<Value>,
    chunk: impl Fn(Value, Option<Value>) -> Value,
) {
    let _ = tx.send(chunk(json!([{"index": index, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}]), None)).await;
    let mut text = TextStream::new(stops);
    // With tools, text that starts like a tool call is held until the call is complete.
    let mut holding = tools_mode.is_some();
    let mut completion_tokens = 0usize;
    let mut cached_tokens = 0usize;
    let mut finish = Finish::Stop;
    let mut pending_lp: Vec<Value> = Vec::new();
    let send_text = |s: String, lps: Vec<Value>| {
        let lp = if want_lp { json!({"content": lps, "refusal": null}) } else { Value::Null };
        chunk(json!([{"index": index, "delta": {"content": s}, "logprobs": lp, "finish_reason": null}]), None)
    };
    loop {
        let Some(ev) = rx.recv().await else {
            let _ = tx.send(json!({"error": {"message": "inference engine stopped", "type": "server_error", "param": null, "code": null}})).await;
            return;
        };
        match ev {
            GenEvent::Admitted { cached_tokens: c } => cached_tokens = c,
            GenEvent::Token { id, logprob } => {
                completion_tokens += 1;
                if let (true, Some(lp)) = (want_lp, logprob) {
                    pending_lp.push(logprob_json(&state, id, &lp));
                }
                let out = text.push(&state.engine.token_bytes[id as usize]);
                if holding {
                    let t = text.text().trim_start();
                    if !t.is_empty() && !t.starts_with('<') && !grammar::TOOL_OPEN.starts_with(t) {
                        holding = false;
                        let all = text.text().to_string();
                        if tx.send(send_text(all, std::mem::take(&mut pending_lp))).await.is_err() {
                            return;
                        }
                    }
                    if text.stopped() {
                        break;
                    }
                    continue;
                }
                if !out.is_empty() || (want_lp && !pending_lp.is_empty()) {
                    if tx.send(send_text(out, std::mem::take(&mut pending_lp))).await.is_err() {
                        return;
                    }
                }
                if text.stopped() {
                    break;
                }
            }
            GenEvent::Done { finish: f, completion_tokens: c, cached_tokens: k, .. } => {
                finish = f;
                completion_tokens = c;
                cached_tokens = k;
                let rest = text.finish();
                if !holding && (!rest.is_empty() || !pending_lp.is_empty()) {
                    let _ = tx.send(send_text(rest, std::mem::take(&mut pending_lp))).await;
                }
                break;
            }
            GenEvent::Error(e) => {
                let _ = tx.send(json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}})).await;
                return;
            }
        }
    }
    drop(rx);
    let mut reason = finish_str(finish);
    if holding {
        match grammar::parse_tool_calls(text.text()).filter(|_| finish == Finish::Stop) {
            Some(calls) => {
                for (k, c) in tool_calls_json(&calls).into_iter().enumerate() {
                    let head = json!({"index": k, "id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": ""}});
                    let body = json!({"index": k, "function": {"arguments": c["function"]["arguments"]}});
                    for d in [head, body] {
                        let _ = tx.send(chunk(json!([{"index": index, "delta": {"tool_calls": [d]}, "logprobs": null, "finish_reason": null}]), None)).await;
                    }
                }
                reason = "tool_calls";
            }
            None => {
                let _ = tx.send(send_text(text.text().to_string(), std::mem::take(&mut pending_lp))).await;
            }
        }
    }
    let _ = tx.send(chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]), None)).await;
    let _ = tx.send(json!({"_completion_tokens": completion_tokens, "_cached_tokens": cached_tokens, "_index": index})).await;
}
