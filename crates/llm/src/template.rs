//! Chat templates: the model's own Jinja template from GGUF metadata (`tokenizer.chat_template`),
//! rendered with minijinja, or Ferry's default Gemma turn format for models that ship none.
//!
//! Messages reach the template already normalised (see `api::chat`): roles are
//! system/user/assistant, content is plain text, tool calls and results are written inline in
//! Ferry's `<tool_call>` / `<tool_response>` format. That keeps any template working with tools.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// Gemma's turn format. System text is folded into the first user turn, as Gemma's own template
/// does; `assistant` becomes `model`.
pub const DEFAULT_TEMPLATE: &str = r#"{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
  {%- set system = messages[0].content ~ '\n\n' -%}
  {%- set rest = messages[1:] -%}
{%- else -%}
  {%- set system = '' -%}
  {%- set rest = messages -%}
{%- endif -%}
{%- if system and (not rest or rest[0].role != 'user') -%}
<start_of_turn>user
{{ system | trim }}<end_of_turn>
{% endif -%}
{%- for message in rest -%}
<start_of_turn>{{ 'model' if message.role == 'assistant' else message.role }}
{{ (system if loop.first and message.role == 'user' else '') ~ (message.content | trim) }}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}"#;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    pub from_model: bool,
}

impl ChatTemplate {
    /// Compiles the model's template, or the default one when `source` is `None`.
    pub fn new(source: Option<&str>) -> Result<Self, Error> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        let from_model = source.is_some();
        env.add_template_owned("chat", source.unwrap_or(DEFAULT_TEMPLATE).to_string())?;
        Ok(ChatTemplate { env, from_model })
    }

    /// Renders the prompt, ending with the opening of the assistant turn.
    pub fn render(&self, messages: &[TemplateMessage], bos: &str, eos: &str) -> Result<String, Error> {
        let tmpl = self.env.get_template("chat")?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
            tools => (),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage { role: role.into(), content: content.into() }
    }

    fn check(messages: &[TemplateMessage], expect: &str) {
        let t = ChatTemplate::new(None).unwrap();
        assert_eq!(t.render(messages, "<bos>", "<eos>").unwrap(), expect);
    }

    #[test]
    fn default_template_is_gemma_turn_format() {
        check(&[m("user", "Hi")], "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    }

    #[test]
    fn system_is_folded_into_first_user_turn_and_assistant_is_model() {
        check(
            &[m("system", "Be brief."), m("user", "Hi"), m("assistant", "Hello."), m("user", "Bye ")],
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
        );
    }

    #[test]
    fn lone_system_message_becomes_a_user_turn() {
        check(&[m("system", "Rules")], "<bos><start_of_turn>user\nRules<end_of_turn>\n<start_of_turn>model\n");
    }

    #[test]
    fn model_templates_render_with_python_style_methods() {
        let src = "{{ bos_token }}{% for m in messages %}[{{ m.role.upper() }}]{{ m.content.strip() }}{% endfor %}\
                   {% if add_generation_prompt %}[A]{% endif %}";
        let t = ChatTemplate::new(Some(src)).unwrap();
        assert_eq!(t.render(&[m("user", " x ")], "<s>", "</s>").unwrap(), "<s>[USER]x[A]");
        let bad = ChatTemplate::new(Some("{{ raise_exception('roles must alternate') }}")).unwrap();
        assert!(bad.render(&[], "", "").unwrap_err().to_string().contains("roles must alternate"));
    }
}
