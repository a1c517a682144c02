//! The Responses API: `POST /v1/responses` (plain or streamed as OpenAI's typed events),
//! `GET`/`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`,
//! `POST /v1/responses/{id}/cancel`.
//!
//! A request is turned into a chat request (instructions → system turn, input items → messages,
//! function tools → chat tools, `text.format` → `response_format`) and runs through the same
//! preparation, grammars and engine as chat completions. Stored responses (`store`, the default)
//! keep their input items and the whole conversation, so `previous_response_id` continues it, also
//! after a restart.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::chat::{self, ChatRequest, Prepared};
use super::{check_fields, from_value, new_id, now, parse_json, SharedState, Ty};
use crate::engine::{Finish, GenEvent, Priority};
use crate::error::{ApiError, ApiResult};
use crate::grammar::{self, ToolMode};
use crate::text::TextStream;

/// The `include` value that asks for token logprobs on output text.
const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_logprobs: Option<i64>,
    pub include: Option<Vec<String>>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<Value>,
    pub previous_response_id: Option<String>,
    pub store: Option<bool>,
    #[serde(default)]
    pub stream: bool,
    pub metadata: Option<Value>,
    pub user: Option<String>,
    pub background: Option<bool>,
    pub conversation: Option<Value>,
    pub prompt: Option<Value>,
    pub truncation: Option<String>,
    pub max_tool_calls: Option<i64>,
    /// Not in OpenAI's Responses API; accepted as in chat completions (`extra_body`).
    pub seed: Option<i64>,
    pub top_k: Option<i64>,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message).param(param)
}

fn unsupported(param: &str, what: &str) -> ApiError {
    bad(format!("'{param}' is not supported by this server: {what}."), param).code("unsupported_parameter")
}

/// Text of a message's content: a string or a list of text parts (input_text, output_text,
/// refusal). Images and files were checked before.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").or_else(|| p.get("refusal")).and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Validates the request's `input` and returns it as stored items (each with an `id`), in
/// OpenAI's item shapes.
fn parse_input(state: &SharedState, input: Option<Value>) -> ApiResult<Vec<Value>> {
    let list = match input {
        None | Some(Value::Null) => return Err(bad("Missing required parameter: 'input'.", "input").code("missing_required_parameter")),
        Some(Value::String(s)) => {
            return Ok(vec![json!({"type": "message", "id": new_id("msg_"), "role": "user", "status": "completed", "content": [{"type": "input_text", "text": s}]})])
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("Invalid type for 'input': expected a string or an array of input items.", "input").code("invalid_type")),
    };
    let info = &state.engine.info;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let p = format!("input[{i}]");
        let Value::Object(mut obj) = item else {
            return Err(bad(format!("Invalid type for '{p}': expected an object."), &p).code("invalid_type"));
        };
        let kind = obj.get("type").and_then(|t| t.as_str()).map(String::from).unwrap_or_else(|| if obj.contains_key("role") { "message".into() } else { String::new() });
        let id = obj.get("id").and_then(|v| v.as_str()).map(String::from);
        let str_field = |obj: &serde_json::Map<String, Value>, k: &str| -> ApiResult<String> {
            obj.get(k).and_then(|v| v.as_str()).map(String::from).ok_or_else(|| {
                bad(format!("Missing required parameter: '{p}.{k}'."), &format!("{p}.{k}")).code("missing_required_parameter")
            })
        };
        match kind.as_str() {
            "message" => {
                let role = str_field(&obj, "role")?;
                if !matches!(role.as_str(), "user" | "assistant" | "system" | "developer") {
                    return Err(bad(
                        format!("Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."),
                        &format!("{p}.role"),
                    )
                    .code("invalid_value"));
                }
                let text_type = if role == "assistant" { "output_text" } else { "input_text" };
                let content = match obj.remove("content") {
                    Some(Value::String(s)) => vec![json!({"type": text_type, "text": s})],
                    Some(Value::Array(parts)) => {
                        for (j, part) in parts.iter().enumerate() {
                            let pp = format!("{p}.content[{j}]");
                            match part.get("type").and_then(|t| t.as_str()) {
                                Some("input_text" | "output_text") if part.get("text").is_some_and(|t| t.is_string()) => {}
                                Some("refusal") => {}
                                Some("input_text" | "output_text") => {
                                    return Err(bad(format!("Missing required parameter: '{pp}.text'."), &format!("{pp}.text")).code("missing_required_parameter"))
                                }
                                Some("input_image") => {
                                    let url = part.get("image_url").and_then(|u| u.as_str());
                                    chat::check_image(url, part.get("file_id").is_some(), &pp, info.has_vision, &info.id)?;
                                }
                                Some("input_file") => {
                                    return Err(bad(format!("The model `{}` does not accept file inputs.", info.id), &pp).code("unsupported_content"))
                                }
                                Some("input_audio") => {
                                    return Err(bad(format!("The model `{}` does not accept audio input.", info.id), &pp).code("unsupported_content"))
                                }
                                other => return Err(bad(format!("Invalid content part type: {other:?}."), &format!("{pp}.type")).code("invalid_value")),
                            }
                        }
                        parts
                    }
                    _ => return Err(bad(format!("Missing required parameter: '{p}.content'."), &format!("{p}.content")).code("missing_required_parameter")),
                };
                out.push(json!({"type": "message", "id": id.unwrap_or_else(|| new_id("msg_")), "role": role, "status": "completed", "content": content}));
            }
            "function_call" => {
                let call_id = str_field(&obj, "call_id")?;
                let name = str_field(&obj, "name")?;
                let arguments = str_field(&obj, "arguments")?;
                out.push(json!({"type": "function_call", "id": id.unwrap_or_else(|| new_id("fc_")), "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}));
            }
            "function_call_output" => {
                let call_id = str_field(&obj, "call_id")?;
                let output = match obj.remove("output") {
                    Some(Value::String(s)) => Value::String(s),
                    Some(Value::Array(parts)) => {
                        if parts.iter().any(|x| x.get("type").and_then(|t| t.as_str()) != Some("input_text")) {
                            return Err(bad("Only input_text parts are supported in a function call output.", &format!("{p}.output")).code("unsupported_content"));
                        }
                        Value::Array(parts)
                    }
                    _ => return Err(bad(format!("Missing required parameter: '{p}.output'."), &format!("{p}.output")).code("missing_required_parameter")),
                };
                out.push(json!({"type": "function_call_output", "id": id.unwrap_or_else(|| new_id("fco_")), "call_id": call_id, "output": output, "status": "completed"}));
            }
            // The model keeps no reasoning; such items are accepted and carry nothing.
            "reasoning" => {}
            "item_reference" => return Err(unsupported(&p, "item references; send the item itself, or continue with previous_response_id")),
            "" => return Err(bad(format!("Missing required parameter: '{p}.type'."), &format!("{p}.type")).code("missing_required_parameter")),
            other => {
                return Err(bad(
                    format!("Invalid input item type '{other}'. Supported: 'message', 'function_call', 'function_call_output'."),
                    &format!("{p}.type"),
                )
                .code("invalid_value"))
            }
        }
    }
    if out.is_empty() {
        return Err(bad("Invalid 'input': empty array. Expected an array with minimum length 1.", "input").code("empty_array"));
    }
    Ok(out)
}

/// Conversation items → chat messages (the chat path renders them with the model's template).
fn to_messages(instructions: Option<&str>, items: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        out.push(json!({"role": "system", "content": i}));
    }
    for it in items {
        match it["type"].as_str() {
            Some("message") => out.push(json!({"role": it["role"], "content": content_text(&it["content"])})),
            Some("function_call") => {
                let call = json!({"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}});
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        if let Some(a) = last["tool_calls"].as_array_mut() {
                            a.push(call);
                        }
                    }
                    _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => out.push(json!({"role": "tool", "tool_call_id": it["call_id"], "content": content_text(&it["output"])})),
            _ => {}
        }
    }
    out
}

/// Responses tools (flat) → chat tools (nested under `function`).
fn to_chat_tools(tools: &[Value]) -> ApiResult<Vec<Value>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| match t.get("type").and_then(|x| x.as_str()) {
            Some("function") => {
                let name = t.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).ok_or_else(|| {
                    bad(format!("Missing required parameter: 'tools[{i}].name'."), &format!("tools[{i}].name")).code("missing_required_parameter")
                })?;
                let mut f = json!({"name": name});
                for k in ["description", "parameters", "strict"] {
                    if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                        f[k] = v.clone();
                    }
                }
                Ok(json!({"type": "function", "function": f}))
            }
            other => Err(bad(
                format!("Tool type {other:?} is not supported by this server; only 'function' tools are (the model runs locally, with no hosted tools)."),
                &format!("tools[{i}].type"),
            )
            .code("unsupported_value")),
        })
        .collect()
}

fn to_chat_tool_choice(tc: &Value) -> ApiResult<Value> {
    match tc {
        Value::String(_) => Ok(tc.clone()),
        Value::Object(o) if o.get("type").and_then(|t| t.as_str()) == Some("function") => {
            let name = o.get("name").and_then(|n| n.as_str()).ok_or_else(|| {
                bad("Missing required parameter: 'tool_choice.name'.", "tool_choice.name").code("missing_required_parameter")
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad("Invalid 'tool_choice': expected 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}.", "tool_choice").code("invalid_value")),
    }
}

fn to_response_format(text: Option<&Value>) -> ApiResult<Option<Value>> {
    let Some(f) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else { return Ok(None) };
    match f.get("type").and_then(|t| t.as_str()) {
        Some("text") => Ok(Some(json!({"type": "text"}))),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let name = f.get("name").and_then(|n| n.as_str()).ok_or_else(|| {
                bad("Missing required parameter: 'text.format.name'.", "text.format.name").code("missing_required_parameter")
            })?;
            let schema = f.get("schema").cloned().ok_or_else(|| {
                bad("Missing required parameter: 'text.format.schema'.", "text.format.schema").code("missing_required_parameter")
            })?;
            Ok(Some(json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": f.get("strict").cloned().unwrap_or(Value::Null)}})))
        }
        other => Err(bad(format!("Invalid 'text.format.type': {other:?}. Supported: 'text', 'json_object', 'json_schema'."), "text.format.type").code("invalid_value")),
    }
}

/// Chat's parameter names in an error → the Responses names the caller used.
fn rename_param(mut e: ApiError) -> ApiError {
    if let Some(p) = e.param.take() {
        let p = if p.starts_with("messages") {
            "input".to_string()
        } else if let Some(rest) = p.strip_prefix("response_format") {
            format!("text.format{}", rest.strip_prefix(".json_schema").unwrap_or(rest))
        } else if p == "max_tokens" {
            "max_output_tokens".to_string()
        } else if p.starts_with("tools[") {
            p.replace(".function.", ".").replace(".function", "")
        } else {
            p
        };
        e.param = Some(p);
    }
    e.message = e.message.replace("'max_tokens'", "'max_output_tokens'").replace("'messages'", "'input'");
    e
}

/// Everything a response object repeats from its request.
#[derive(Clone)]
struct Echo {
    id: String,
    created_at: i64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    metadata: Value,
    previous_response_id: Option<String>,
    temperature: f32,
    top_p: f32,
    tools: Vec<Value>,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    store: bool,
    user: Option<String>,
    top_logprobs: i64,
    truncation: String,
    want_logprobs: bool,
}

impl Echo {
    fn response(&self, status: &str, output: Vec<Value>, usage: Option<Value>, incomplete: bool) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": (status == "completed").then(now),
            "background": false,
            "error": null,
            "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_logprobs": self.top_logprobs,
            "top_p": self.top_p,
            "truncation": self.truncation,
            "usage": usage,
            "user": self.user,
            "metadata": self.metadata,
        })
    }
}

fn usage(input: usize, cached: usize, output: usize) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

fn message_item(id: &str, status: &str, text: &str, logprobs: &[Value]) -> Value {
    json!({"type": "message", "id": id, "role": "assistant", "status": status,
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}]})
}

fn call_item(call: &grammar::ParsedCall, status: &str) -> Value {
    json!({"type": "function_call", "id": new_id("fc_"), "call_id": new_id("call_"), "name": call.name, "arguments": call.arguments, "status": status})
}

/// A request, validated and turned into engine work, with what the response echoes back and the
/// conversation so far (earlier turns via `previous_response_id`, then this request's input).
struct Plan {
    prepared: Prepared,
    echo: Echo,
    /// This request's input items.
    input: Vec<Value>,
    /// Items of earlier turns (inputs and outputs), oldest first.
    history: Vec<Value>,
    priority: Priority,
}

fn plan(state: &SharedState, req: ResponsesRequest) -> ApiResult<Plan> {
    let info = &state.engine.info;
    let model = req.model.clone().ok_or_else(|| bad("Missing required parameter: 'model'.", "model").code("missing_required_parameter"))?;
    if req.background == Some(true) {
        return Err(unsupported("background", "responses run while the request is open; use stream=true for incremental output"));
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(unsupported("conversation", "continue a conversation with previous_response_id"));
    }
    if req.prompt.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(unsupported("prompt", "there are no stored prompt templates; send instructions and input"));
    }
    if let Some(t) = req.truncation.as_deref() {
        if t != "auto" && t != "disabled" {
            return Err(bad(format!("Invalid value: '{t}'. Supported values are: 'auto' and 'disabled'."), "truncation").code("invalid_value"));
        }
    }
    if let Some(m) = &req.metadata {
        let ok = m.is_null()
            || m.as_object().is_some_and(|o| o.len() <= 16 && o.iter().all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512)));
        if !ok {
            return Err(bad("Invalid 'metadata': expected an object of at most 16 string values (keys up to 64, values up to 512 characters).", "metadata").code("invalid_value"));
        }
    }
    if let Some(m) = req.max_output_tokens {
        if m < 1 {
            return Err(bad(format!("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, but got {m} instead."), "max_output_tokens")
                .code("integer_below_min_value"));
        }
    }
    let want_logprobs = req.include.as_ref().is_some_and(|i| i.iter().any(|s| s == INCLUDE_LOGPROBS)) || req.top_logprobs.is_some_and(|n| n > 0);
    let history = match req.previous_response_id.as_deref() {
        Some(prev) => {
            let doc = state.store.response(prev).ok_or_else(|| {
                ApiError::not_found(format!("Previous response with id '{prev}' not found."))
                    .param("previous_response_id")
                    .code("previous_response_not_found")
            })?;
            doc["context"].as_array().cloned().unwrap_or_default()
        }
        None => vec![],
    };
    let input = parse_input(state, req.input)?;
    let mut all = history.clone();
    all.extend(input.iter().cloned());
    let messages = to_messages(req.instructions.as_deref(), &all);
    let tools = req.tools.clone().unwrap_or_default();
    let chat_tools = to_chat_tools(&tools)?;
    let tool_choice = req.tool_choice.as_ref().filter(|v| !v.is_null()).map(to_chat_tool_choice).transpose()?;
    let response_format = to_response_format(req.text.as_ref())?;
    let mut chat_req = json!({
        "model": model,
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "seed": req.seed,
        "logprobs": want_logprobs,
        "top_logprobs": if want_logprobs { req.top_logprobs } else { None },
        "parallel_tool_calls": req.parallel_tool_calls,
    });
    if !chat_tools.is_empty() {
        chat_req["tools"] = Value::Array(chat_tools);
    }
    if let Some(tc) = tool_choice {
        chat_req["tool_choice"] = tc;
    }
    if let Some(rf) = response_format {
        chat_req["response_format"] = rf;
    }
    let chat_req: ChatRequest = chat::parse_request(chat_req).map_err(rename_param)?;
    let prepared = chat::prepare(state, chat_req).map_err(rename_param)?;
    let text = match req.text.as_ref().and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
        Some(f) => json!({"format": f}),
        None => json!({"format": {"type": "text"}}),
    };
    let echo = Echo {
        id: new_id("resp_"),
        created_at: now(),
        model: info.id.clone(),
        instructions: req.instructions,
        max_output_tokens: req.max_output_tokens,
        metadata: req.metadata.filter(|m| !m.is_null()).unwrap_or_else(|| json!({})),
        previous_response_id: req.previous_response_id,
        temperature: prepared.sampling.temperature,
        top_p: prepared.sampling.top_p,
        tools,
        tool_choice: req.tool_choice.filter(|v| !v.is_null()).unwrap_or_else(|| json!("auto")),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        text,
        store: req.store.unwrap_or(true),
        user: req.user,
        top_logprobs: req.top_logprobs.unwrap_or(0),
        truncation: req.truncation.unwrap_or_else(|| "disabled".into()),
        want_logprobs,
    };
    Ok(Plan { prepared, echo, input, history, priority: Priority::Interactive })
}

/// Keeps a finished response (when `store`), with its inputs and the conversation for the next turn.
fn persist(state: &SharedState, plan_input: &[Value], history: Vec<Value>, response: &Value) -> ApiResult<()> {
    if response["store"] != true {
        return Ok(());
    }
    let mut context = history;
    context.extend(plan_input.iter().cloned());
    let input_len = context.len();
    context.extend(response["output"].as_array().cloned().unwrap_or_default());
    let doc = json!({"response": response, "input_items": context[..input_len].to_vec(), "context": context});
    state.store.put_response(&doc)?;
    Ok(())
}

/// Top-level fields of a Responses request and their JSON types (checked before deserialising).
const FIELDS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("input", Ty::StrOrArr),
    ("instructions", Ty::Str),
    ("max_output_tokens", Ty::Int),
    ("temperature", Ty::Num),
    ("top_p", Ty::Num),
    ("top_logprobs", Ty::Int),
    ("include", Ty::Arr),
    ("tools", Ty::Arr),
    ("tool_choice", Ty::StrOrObj),
    ("parallel_tool_calls", Ty::Bool),
    ("text", Ty::Obj),
    ("previous_response_id", Ty::Str),
    ("store", Ty::Bool),
    ("stream", Ty::Bool),
    ("stream_options", Ty::Obj),
    ("metadata", Ty::Obj),
    ("user", Ty::Str),
    ("background", Ty::Bool),
    ("truncation", Ty::Str),
    ("max_tool_calls", Ty::Int),
    ("seed", Ty::Int),
    ("top_k", Ty::Int),
];

fn parse_request(mut v: Value) -> ApiResult<ResponsesRequest> {
    check_fields(&mut v, &["model"], FIELDS)?;
    from_value(v)
}

/// One `/v1/responses` line of a batch: runs like a plain request, at batch priority.
pub async fn run_batch(state: &SharedState, body: Value) -> ApiResult<Value> {
    let req = parse_request(body)?;
    if req.stream {
        return Err(bad("Streaming is not supported in batches.", "stream"));
    }
    let mut p = plan(state, req)?;
    p.priority = Priority::Batch;
    complete(state, p).await
}

pub async fn create(State(state): State<SharedState>, body: Bytes) -> Response {
    let req: ResponsesRequest = match parse_json::<Value>(&body).and_then(parse_request) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let stream = req.stream;
    let plan = match plan(&state, req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if stream {
        return match stream_response(state, plan).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    match complete(&state, plan).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn complete(state: &SharedState, plan: Plan) -> ApiResult<Value> {
    let Plan { prepared, echo, input, history, priority } = plan;
    let c = chat::complete(state, prepared, priority).await?;
    let choice = &c["choices"][0];
    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
    let incomplete = finish == "length";
    let status = if incomplete { "incomplete" } else { "completed" };
    let output = match choice["message"]["tool_calls"].as_array() {
        Some(calls) => calls
            .iter()
            .map(|tc| json!({"type": "function_call", "id": new_id("fc_"), "call_id": tc["id"], "name": tc["function"]["name"], "arguments": tc["function"]["arguments"], "status": "completed"}))
            .collect(),
        None => {
            let lps: Vec<Value> = choice["logprobs"]["content"].as_array().cloned().unwrap_or_default();
            vec![message_item(&new_id("msg_"), status, choice["message"]["content"].as_str().unwrap_or(""), &lps)]
        }
    };
    let u = &c["usage"];
    let usage = usage(
        u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize,
        u["completion_tokens"].as_u64().unwrap_or(0) as usize,
    );
    let response = echo.response(status, output, Some(usage), incomplete);
    persist(state, &input, history, &response)?;
    Ok(response)
}

/// Numbers events and frames them as SSE (`event:` is the type, as OpenAI sends them).
struct Emitter {
    tx: mpsc::Sender<Event>,
    seq: u64,
}

impl Emitter {
    async fn send(&mut self, kind: &str, mut body: Value) -> bool {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.tx.send(Event::default().event(kind).data(body.to_string())).await.is_ok()
    }
}

async fn stream_response(state: SharedState, plan: Plan) -> ApiResult<Response> {
    let Plan { prepared, echo, input, history, .. } = plan;
    let mut ms = chat::matchers(&state, &prepared).await?;
    let req = chat::gen_request(&prepared, 0, ms.pop().flatten(), Priority::Interactive);
    let rx_engine = state.engine.submit(req).ok_or_else(chat::overloaded)?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let tools_mode = prepared.tools.clone();
    let prompt_tokens = prepared.prompt.len();
    let stops = prepared.stops.clone();
    tokio::spawn(async move {
        let mut em = Emitter { tx, seq: 0 };
        let _ = run_stream(&state, &mut em, rx_engine, echo, tools_mode, stops, prompt_tokens, input, history).await;
    });
    use futures::StreamExt;
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// The streamed message item: opened (item + part added) before its first delta.
struct OpenMessage {
    id: String,
    text: String,
    logprobs: Vec<Value>,
}

impl OpenMessage {
    async fn open(em: &mut Emitter, index: usize) -> Option<OpenMessage> {
        let id = new_id("msg_");
        let item = json!({"type": "message", "id": id, "role": "assistant", "status": "in_progress", "content": []});
        if !em.send("response.output_item.added", json!({"output_index": index, "item": item})).await {
            return None;
        }
        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        if !em.send("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": part})).await {
            return None;
        }
        Some(OpenMessage { id, text: String::new(), logprobs: Vec::new() })
    }

    async fn delta(&mut self, em: &mut Emitter, index: usize, text: String, lps: Vec<Value>) -> bool {
        if text.is_empty() && lps.is_empty() {
            return true;
        }
        self.text.push_str(&text);
        self.logprobs.extend(lps.iter().cloned());
        em.send("response.output_text.delta", json!({"item_id": self.id, "output_index": index, "content_index": 0, "delta": text, "logprobs": lps})).await
    }

    async fn close(self, em: &mut Emitter, index: usize, status: &str) -> Option<Value> {
        let OpenMessage { id, text, logprobs } = self;
        em.send("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": logprobs}))
            .await
            .then_some(())?;
        let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs});
        em.send("response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0, "part": part})).await.then_some(())?;
        let item = message_item(&id, status, &text, &logprobs);
        em.send("response.output_item.done", json!({"output_index": index, "item": item})).await.then_some(())?;
        Some(item)
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    state: &SharedState,
    em: &mut Emitter,
    mut rx: mpsc::UnboundedReceiver<GenEvent>,
    echo: Echo,
    tools_mode: Option<ToolMode>,
    stops: Vec<String>,
    prompt_tokens: usize,
    input: Vec<Value>,
    history: Vec<Value>,
) -> Option<()> {
    em.send("response.created", json!({"response": echo.response("in_progress", vec![], None, false)})).await.then_some(())?;
    em.send("response.in_progress", json!({"response": echo.response("in_progress", vec![], None, false)})).await.then_some(())?;
    let mut text = TextStream::new(stops);
    // With tools, text that starts like a tool call is held until the call is complete.
    let mut holding = tools_mode.is_some();
    let mut msg: Option<OpenMessage> = None;
    let mut pending_lp: Vec<Value> = Vec::new();
    let (mut finish, mut completion_tokens, mut cached_tokens) = (Finish::Stop, 0usize, 0usize);
    loop {
        let Some(ev) = rx.recv().await else {
            fail(em, "inference engine stopped").await;
            return None;
        };
        match ev {
            GenEvent::Admitted { cached_tokens: k } => cached_tokens = k,
            GenEvent::Token { id, logprob } => {
                completion_tokens += 1;
                if let (true, Some(lp)) = (echo.want_logprobs, logprob) {
                    pending_lp.push(chat::logprob_json(state, id, &lp));
                }
                let out = text.push(&state.engine.token_bytes[id as usize]);
                if holding {
                    let t = text.text().trim_start();
                    if !t.is_empty() && !t.starts_with('<') && !grammar::TOOL_OPEN.starts_with(t) {
                        holding = false;
                        let mut m = OpenMessage::open(em, 0).await?;
                        m.delta(em, 0, text.text().to_string(), std::mem::take(&mut pending_lp)).await.then_some(())?;
                        msg = Some(m);
                    }
                } else {
                    if msg.is_none() {
                        msg = Some(OpenMessage::open(em, 0).await?);
                    }
                    msg.as_mut()?.delta(em, 0, out, std::mem::take(&mut pending_lp)).await.then_some(())?;
                }
                if text.stopped() {
                    break;
                }
            }
            GenEvent::Done { finish: f, completion_tokens: c, cached_tokens: k, .. } => {
                (finish, completion_tokens, cached_tokens) = (f, c, k);
                let rest = text.finish();
                if !holding {
                    if msg.is_none() {
                        msg = Some(OpenMessage::open(em, 0).await?);
                    }
                    msg.as_mut()?.delta(em, 0, rest, std::mem::take(&mut pending_lp)).await.then_some(())?;
                }
                break;
            }
            GenEvent::Error(e) => {
                fail(em, &e).await;
                return None;
            }
        }
    }
    drop(rx);
    let incomplete = finish == Finish::Length;
    let status = if incomplete { "incomplete" } else { "completed" };
    let mut output = Vec::new();
    if holding {
        match grammar::parse_tool_calls(text.text()).filter(|_| finish == Finish::Stop) {
            Some(calls) => {
                for (k, c) in calls.iter().enumerate() {
                    let mut item = call_item(c, "in_progress");
                    item["arguments"] = json!("");
                    let item_id = item["id"].clone();
                    em.send("response.output_item.added", json!({"output_index": k, "item": item})).await.then_some(())?;
                    em.send("response.function_call_arguments.delta", json!({"item_id": item_id, "output_index": k, "delta": c.arguments})).await.then_some(())?;
                    em.send("response.function_call_arguments.done", json!({"item_id": item_id, "output_index": k, "name": c.name, "arguments": c.arguments})).await.then_some(())?;
                    item["arguments"] = json!(c.arguments);
                    item["status"] = json!("completed");
                    em.send("response.output_item.done", json!({"output_index": k, "item": item})).await.then_some(())?;
                    output.push(item);
                }
            }
            None => {
                let mut m = OpenMessage::open(em, 0).await?;
                m.delta(em, 0, text.text().to_string(), std::mem::take(&mut pending_lp)).await.then_some(())?;
                msg = Some(m);
            }
        }
    }
    if let Some(m) = msg {
        output.push(m.close(em, 0, status).await?);
    }
    let response = echo.response(status, output, Some(usage(prompt_tokens, cached_tokens, completion_tokens)), incomplete);
    if let Err(e) = persist(state, &input, history, &response) {
        fail(em, &e.message).await;
        return None;
    }
    let kind = if incomplete { "response.incomplete" } else { "response.completed" };
    em.send(kind, json!({"response": response})).await.then_some(())
}

async fn fail(em: &mut Emitter, message: &str) {
    let _ = em.send("error", json!({"code": "server_error", "message": message, "param": null})).await;
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Response with id '{id}' not found.")).code("response_not_found")
}

pub async fn retrieve(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let doc = state.store.response(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(doc["response"].clone()))
}

pub async fn delete(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !state.store.delete_response(&id) {
        return Err(not_found(&id));
    }
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})))
}

pub async fn cancel(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    state.store.response(&id).ok_or_else(|| not_found(&id))?;
    Err(ApiError::bad_request("Only responses created with background=true can be cancelled; this server runs every response in the foreground.")
        .code("invalid_request"))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

/// The items the response was generated from: earlier turns (`previous_response_id`), then its own
/// input; newest first unless `order=asc`.
pub async fn input_items(State(state): State<SharedState>, Path(id): Path<String>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let doc = state.store.response(&id).ok_or_else(|| not_found(&id))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad(format!("Invalid 'limit': {limit}; expected a value between 1 and 100."), "limit").code("invalid_value"));
    }
    let mut items = doc["input_items"].as_array().cloned().unwrap_or_default();
    match q.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(o) => return Err(bad(format!("Invalid 'order': '{o}'. Supported values are: 'asc' and 'desc'."), "order").code("invalid_value")),
    }
    if let Some(after) = q.after.as_deref() {
        if let Some(pos) = items.iter().position(|v| v["id"] == after) {
            items.drain(..=pos);
        }
    }
    if let Some(before) = q.before.as_deref() {
        if let Some(pos) = items.iter().position(|v| v["id"] == before) {
            items.truncate(pos);
        }
    }
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Json(json!({
        "object": "list",
        "data": items,
        "first_id": items.first().map(|v| v["id"].clone()),
        "last_id": items.last().map(|v| v["id"].clone()),
        "has_more": has_more,
    })))
}
