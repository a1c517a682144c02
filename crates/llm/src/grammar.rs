//! Constrained decoding: `response_format` and tool calls compiled to llguidance grammars, so the
//! model can only produce text that parses (and validates against the schema).
//!
//! Tool calls use Ferry's text format, one call per line:
//! `<tool_call>{"name": "get_weather", "arguments": {...}}</tool_call>`
//! The name is a literal in the grammar and the arguments are the tool's JSON schema.

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

pub const TOOL_OPEN: &str = "<tool_call>";
pub const TOOL_CLOSE: &str = "</tool_call>";
/// Upper bound on calls in one parallel turn; keeps a rambling model from looping.
pub const MAX_PARALLEL_CALLS: usize = 4;

#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolMode {
    /// Text or calls, the model decides.
    Auto,
    /// At least one call to any tool.
    Required,
    /// Exactly this tool.
    Named(String),
}

/// Compact JSON, like OpenAI's output: no free whitespace for a small model to get lost in.
fn with_options(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("x-guidance".into(), json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// Objects that list `properties` but say nothing about extra keys get `additionalProperties:
/// false`. Output then still validates against the caller's schema, and the model cannot wander
/// into inventing keys.
pub fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(obj) => {
            if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
                obj.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (k, v) in obj.iter_mut() {
                if k != "const" && k != "enum" && k != "default" && k != "examples" {
                    close_objects(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// OpenAI's strict-mode rules: every object sets `additionalProperties: false` and requires all
/// of its properties. Returns the JSON path of the first offending object.
pub fn check_strict(schema: &Value, path: &str) -> Result<(), String> {
    if let Value::Object(obj) = schema {
        let is_object = obj.get("type").is_some_and(|t| t == "object" || t.as_array().is_some_and(|a| a.iter().any(|x| x == "object")));
        if is_object || obj.contains_key("properties") {
            if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Err(format!(
                    "Invalid schema for response_format: In context={path}, 'additionalProperties' is required to be supplied and to be false."
                ));
            }
            let props: Vec<&String> = obj.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().collect()).unwrap_or_default();
            let required: Vec<&str> = obj.get("required").and_then(|r| r.as_array()).map(|r| r.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            if let Some(missing) = props.iter().find(|p| !required.contains(&p.as_str())) {
                return Err(format!(
                    "Invalid schema for response_format: In context={path}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'."
                ));
            }
        }
        for (k, v) in obj {
            if k == "const" || k == "enum" || k == "default" {
                continue;
            }
            match v {
                Value::Object(map) if k == "properties" || k == "$defs" || k == "definitions" => {
                    for (name, sub) in map {
                        check_strict(sub, &format!("{path}, '{k}', '{name}'"))?;
                    }
                }
                Value::Array(items) => {
                    for (i, sub) in items.iter().enumerate() {
                        check_strict(sub, &format!("{path}, '{k}', {i}"))?;
                    }
                }
                Value::Object(_) => check_strict(v, &format!("{path}, '{k}'"))?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Any JSON object (`response_format: json_object`).
pub fn json_object() -> TopLevelGrammar {
    TopLevelGrammar::from_json_schema(with_options(json!({"type": "object"})))
}

/// A JSON schema (`response_format: json_schema`).
pub fn json_schema(schema: &Value) -> TopLevelGrammar {
    let mut schema = schema.clone();
    close_objects(&mut schema);
    TopLevelGrammar::from_json_schema(with_options(schema))
}

fn lark_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

/// Lark grammar for tool calls in `mode`.
pub fn tool_calls_lark(tools: &[ToolSpec], mode: &ToolMode, parallel: bool) -> String {
    let chosen: Vec<&ToolSpec> = match mode {
        ToolMode::Named(n) => tools.iter().filter(|t| &t.name == n).collect(),
        _ => tools.iter().collect(),
    };
    let mut g = String::new();
    let max = if parallel && !matches!(mode, ToolMode::Named(_)) { MAX_PARALLEL_CALLS } else { 1 };
    // calls: call ("\n" call)? ... bounded, written out.
    let mut calls = "call".to_string();
    for _ in 1..max {
        calls = format!("call (\"\\n\" {calls})?");
    }
    match mode {
        ToolMode::Auto => {
            g.push_str(&format!("start: TEXT | calls\ncalls: {calls}\n"));
            // Free text must not begin like a tool call; a call begins with '<'.
            g.push_str("TEXT: /[^<][\\s\\S]*/\n");
        }
        _ => g.push_str(&format!("start: calls\ncalls: {calls}\n")),
    }
    let alts: Vec<String> = (0..chosen.len()).map(|i| format!("fn{i}")).collect();
    g.push_str(&format!("call: {} ({}) {}\n", lark_str(TOOL_OPEN), alts.join(" | "), lark_str(TOOL_CLOSE)));
    for (i, t) in chosen.iter().enumerate() {
        let mut params = t.parameters.clone();
        close_objects(&mut params);
        let params = with_options(params);
        let head = format!("{{\"name\": {}, \"arguments\": ", serde_json::to_string(&t.name).unwrap());
        g.push_str(&format!("fn{i}: {} args{i} \"}}\"\nargs{i}: %json {}\n", lark_str(&head), params));
    }
    g
}

pub fn tool_calls(tools: &[ToolSpec], mode: &ToolMode, parallel: bool) -> TopLevelGrammar {
    TopLevelGrammar::from_lark(tool_calls_lark(tools, mode, parallel))
}

/// One parsed call: the tool's name and its arguments as a JSON string.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// Parses generated text in the tool-call format. `None` when the text is not a tool call.
pub fn parse_tool_calls(text: &str) -> Option<Vec<ParsedCall>> {
    let mut rest = text.trim_start();
    if !rest.starts_with(TOOL_OPEN) {
        return None;
    }
    let mut calls = Vec::new();
    while let Some(start) = rest.find(TOOL_OPEN) {
        let body_start = start + TOOL_OPEN.len();
        let Some(end) = rest[body_start..].find(TOOL_CLOSE) else { break };
        let body = &rest[body_start..body_start + end];
        let v: Value = serde_json::from_str(body).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let args = v.get("arguments").cloned().unwrap_or(json!({}));
        calls.push(ParsedCall { name, arguments: serde_json::to_string(&args).ok()? });
        rest = &rest[body_start + end + TOOL_CLOSE.len()..];
    }
    if calls.is_empty() {
        None
    } else {
        Some(calls)
    }
}

/// The system-prompt block that tells the model which tools exist and how to call them.
pub fn tools_prompt(tools: &[ToolSpec], mode: &ToolMode) -> String {
    let mut s = String::from("You can call these tools:\n");
    for t in tools {
        let desc = t.description.as_deref().unwrap_or("");
        s.push_str(&format!("- {}: {} Parameters (JSON schema): {}\n", t.name, desc, t.parameters));
    }
    s.push_str(&format!(
        "To call a tool, reply with exactly one line per call:\n{TOOL_OPEN}{{\"name\": \"tool_name\", \"arguments\": {{...}}}}{TOOL_CLOSE}\n"
    ));
    match mode {
        ToolMode::Auto => s.push_str("Call a tool only when it helps; otherwise answer normally."),
        ToolMode::Required => s.push_str("You must call at least one tool."),
        ToolMode::Named(n) => s.push_str(&format!("You must call the tool {n}.")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use llguidance::{Matcher, ParserFactory};
    use toktrie::{ApproximateTokEnv, TokEnv};

    /// A byte-level tokenizer: every byte is a token, so a grammar can be walked byte by byte.
    fn factory() -> (ParserFactory, TokEnv) {
        let env: TokEnv = ApproximateTokEnv::single_byte_env();
        let mut f = ParserFactory::new_simple(&env).unwrap();
        f.quiet();
        (f, env)
    }

    /// Does `grammar` accept exactly `text` (every byte allowed, and the end allowed after it)?
    fn accepts(grammar: TopLevelGrammar, text: &str) -> bool {
        let (f, env) = factory();
        let mut m = Matcher::new(f.create_parser(grammar));
        assert!(!m.is_error(), "grammar failed to compile: {:?}", m.get_error());
        let trie = env.tok_trie();
        for &byte in text.as_bytes() {
            let b = byte as u32;
            assert_eq!(trie.token(b), &[byte]);
            if m.is_stopped() {
                return false;
            }
            let mask = m.compute_mask().unwrap();
            if !mask.is_allowed(b) {
                return false;
            }
            m.consume_token(b).unwrap();
        }
        m.is_accepting().unwrap()
    }

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    #[test]
    fn json_schema_grammar_accepts_only_valid_documents() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n", "ok"]});
        assert!(accepts(json_schema(&schema), r#"{"n": 3, "ok": true}"#));
        assert!(!accepts(json_schema(&schema), r#"{"n": "3", "ok": true}"#));
        assert!(!accepts(json_schema(&schema), r#"{"n": 3}"#));
        assert!(!accepts(json_schema(&schema), r#"{"n": 3, "ok": true, "x": 1}"#));
        assert!(accepts(json_object(), r#"{"anything": [1, "two"]}"#));
        assert!(!accepts(json_object(), r#"[1]"#));
    }

    #[test]
    fn tool_grammar_forces_name_and_schema() {
        let tools = vec![weather(), ToolSpec { name: "now".into(), description: None, parameters: json!({"type": "object", "properties": {}}) }];
        let call = r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>"#;
        let two = format!("{call}\n<tool_call>{{\"name\": \"now\", \"arguments\": {{}}}}</tool_call>");
        assert!(accepts(tool_calls(&tools, &ToolMode::Required, true), call));
        assert!(accepts(tool_calls(&tools, &ToolMode::Required, true), &two));
        assert!(!accepts(tool_calls(&tools, &ToolMode::Required, false), &two));
        assert!(!accepts(tool_calls(&tools, &ToolMode::Required, true), r#"<tool_call>{"name": "nope", "arguments": {}}</tool_call>"#));
        assert!(!accepts(tool_calls(&tools, &ToolMode::Named("now".into()), true), call));
        assert!(!accepts(tool_calls(&tools, &ToolMode::Required, true), "Just text."));
        assert!(accepts(tool_calls(&tools, &ToolMode::Auto, true), "Just text."));
        assert!(accepts(tool_calls(&tools, &ToolMode::Auto, true), call));
        assert!(!accepts(tool_calls(&tools, &ToolMode::Auto, true), r#"<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>"#));
    }

    #[test]
    fn parses_generated_calls() {
        let text = "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": 1}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        let calls = parse_tool_calls(text).unwrap();
        assert_eq!(calls, vec![ParsedCall { name: "a".into(), arguments: "{\"x\":1}".into() }, ParsedCall { name: "b".into(), arguments: "{}".into() }]);
        assert_eq!(parse_tool_calls("hello"), None);
    }

    #[test]
    fn strict_mode_rules_match_openai() {
        let ok = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false});
        assert!(check_strict(&ok, "root").is_ok());
        let open = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        assert!(check_strict(&open, "root").unwrap_err().contains("additionalProperties"));
        let partial = json!({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"], "additionalProperties": false});
        assert!(check_strict(&partial, "root").unwrap_err().contains("Missing 'b'"));
    }
}
