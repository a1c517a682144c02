//! The Dockerfile subset the Modal client emits, one command string per instruction.
//!
//! The client sends each instruction as its own string (`"RUN python -m pip install x"`,
//! `"ENV KEY='quoted value'"` with shlex quoting, `"CMD [\"sleep\", \"172800\"]"`), so there
//! is no line continuation or heredoc handling here: a multi-line string is one instruction.

use crate::error::{Error, Result};

/// Shell form (run through the image's SHELL) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

impl CommandForm {
    fn parse(rest: &str) -> CommandForm {
        if rest.starts_with('[') {
            if let Ok(argv) = serde_json::from_str::<Vec<String>>(rest) {
                return CommandForm::Exec(argv);
            }
        }
        CommandForm::Shell(rest.to_string())
    }

    /// The argv to execute with `shell` as the image's SHELL.
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            CommandForm::Exec(argv) => argv.clone(),
            CommandForm::Shell(s) => {
                let mut argv = shell.to_vec();
                argv.push(s.clone());
                argv
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(String),
    Run(CommandForm),
    /// Raw `KEY=value` text; values are expanded against the environment when applied.
    Env(String),
    Workdir(String),
    Copy { from: Option<String>, sources: Vec<String>, dest: String },
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Arg { name: String, default: Option<String> },
    User(String),
    Shell(Vec<String>),
    /// Instructions with no effect on a Ferry image (LABEL, EXPOSE, ...).
    Ignored(String),
}

impl Instruction {
    pub fn parse(line: &str) -> Result<Instruction> {
        let line = line.trim();
        let bad = |reason: &str| Error::BadCommand { command: line.to_string(), reason: reason.to_string() };
        let (keyword, rest) = match line.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (line, ""),
        };
        Ok(match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let reference = rest.split_whitespace().next().ok_or_else(|| bad("FROM needs an image"))?;
                Instruction::From(reference.to_string())
            }
            "RUN" => {
                if rest.is_empty() {
                    return Err(bad("RUN needs a command"));
                }
                Instruction::Run(CommandForm::parse(rest))
            }
            "ENV" => Instruction::Env(rest.to_string()),
            "WORKDIR" => Instruction::Workdir(rest.to_string()),
            "COPY" | "ADD" => {
                let words = split_words(rest, &|_| None)?;
                let mut from = None;
                let mut paths = Vec::new();
                for w in words {
                    if let Some(v) = w.strip_prefix("--from=") {
                        from = Some(v.to_string());
                    } else if w.starts_with("--") {
                        // --chown/--chmod/--link: Ferry builds as root and keeps file modes.
                        continue;
                    } else {
                        paths.push(w);
                    }
                }
                if paths.len() < 2 {
                    return Err(bad("COPY needs a source and a destination"));
                }
                let dest = paths.pop().expect("len >= 2");
                Instruction::Copy { from, sources: paths, dest }
            }
            "CMD" => Instruction::Cmd(CommandForm::parse(rest)),
            "ENTRYPOINT" => Instruction::Entrypoint(CommandForm::parse(rest)),
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.trim(), Some(split_words(d, &|_| None)?.concat())),
                    None => (rest, None),
                };
                if name.is_empty() {
                    return Err(bad("ARG needs a name"));
                }
                Instruction::Arg { name: name.to_string(), default }
            }
            "USER" => Instruction::User(rest.to_string()),
            "SHELL" => match serde_json::from_str::<Vec<String>>(rest) {
                Ok(argv) if !argv.is_empty() => Instruction::Shell(argv),
                _ => return Err(bad("SHELL takes a JSON array, e.g. SHELL [\"/bin/bash\", \"-c\"]")),
            },
            "LABEL" | "EXPOSE" | "STOPSIGNAL" | "HEALTHCHECK" | "MAINTAINER" | "VOLUME" => Instruction::Ignored(line.to_string()),
            "" => return Err(bad("empty command")),
            _ => {
                return Err(Error::UnsupportedCommand {
                    command: line.to_string(),
                    reason: format!("`{keyword}` is not an instruction Ferry's builder knows"),
                })
            }
        })
    }
}

/// Parses `ENV` text into pairs: `K=V K2="v 2"` or the legacy `K value with spaces`.
pub fn parse_env(rest: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err(Error::BadCommand { command: format!("ENV {rest}"), reason: "ENV needs KEY=value".into() });
    }
    if !first.contains('=') {
        let value = rest[first.len()..].trim();
        return Ok(vec![(first.to_string(), split_words(value, lookup)?.join(" "))]);
    }
    split_words(rest, lookup)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::BadCommand { command: format!("ENV {rest}"), reason: format!("`{w}` is not KEY=value") }),
        })
        .collect()
}

/// POSIX-shell-like word splitting with quote removal and `$VAR`/`${VAR}` expansion
/// (not inside single quotes), which is how Docker reads ENV, WORKDIR, USER and COPY.
pub fn split_words(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    let unterminated = || Error::BadCommand { command: s.to_string(), reason: "unterminated quote".into() };
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err(unterminated()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err(unterminated()),
                        },
                        Some('$') => expand(&mut chars, &mut cur, lookup),
                        Some(ch) => cur.push(ch),
                        None => return Err(unterminated()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    cur.push(ch);
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, &mut cur, lookup);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn expand(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String, lookup: &dyn Fn(&str) -> Option<String>) {
    let mut name = String::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        let mut default: Option<String> = None;
        while let Some(c) = chars.next() {
            if c == '}' {
                break;
            }
            if c == ':' && chars.peek() == Some(&'-') && default.is_none() {
                chars.next();
                default = Some(String::new());
                continue;
            }
            match &mut default {
                Some(d) => d.push(c),
                None => name.push(c),
            }
        }
        match (lookup(&name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(&d),
            (None, None) => {}
        }
        return;
    }
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if name.is_empty() {
        out.push('$');
    } else if let Some(v) = lookup(&name) {
        out.push_str(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "PATH").then(|| "/usr/bin:/bin".to_string())
    }

    #[test]
    fn instructions_the_client_sends() {
        assert_eq!(Instruction::parse("FROM base").unwrap(), Instruction::From("base".into()));
        assert_eq!(
            Instruction::parse("RUN python -m pip install requests").unwrap(),
            Instruction::Run(CommandForm::Shell("python -m pip install requests".into()))
        );
        assert_eq!(
            Instruction::parse(r#"CMD ["sleep", "172800"]"#).unwrap(),
            Instruction::Cmd(CommandForm::Exec(vec!["sleep".into(), "172800".into()]))
        );
        assert_eq!(
            Instruction::parse("COPY --from=registry.example/astral-sh/uv:latest /uv /.uv/uv").unwrap(),
            Instruction::Copy { from: Some("registry.example/astral-sh/uv:latest".into()), sources: vec!["/uv".into()], dest: "/.uv/uv".into() }
        );
        assert_eq!(
            Instruction::parse("COPY /.requirements.txt /.requirements.txt").unwrap(),
            Instruction::Copy { from: None, sources: vec!["/.requirements.txt".into()], dest: "/.requirements.txt".into() }
        );
        assert!(matches!(Instruction::parse("ONBUILD RUN x"), Err(Error::UnsupportedCommand { .. })));
    }

    #[test]
    fn env_quoting_and_expansion() {
        assert_eq!(
            parse_env("A='hello world' B=\"x $PATH\" C=$PATH:/extra", &env).unwrap(),
            vec![
                ("A".into(), "hello world".into()),
                ("B".into(), "x /usr/bin:/bin".into()),
                ("C".into(), "/usr/bin:/bin:/extra".into())
            ]
        );
        assert_eq!(parse_env("Q='it'\"'\"'s'", &env).unwrap(), vec![("Q".into(), "it's".into())]);
        assert_eq!(parse_env("OLD some value", &env).unwrap(), vec![("OLD".into(), "some value".into())]);
        assert_eq!(split_words("'$PATH' ${NOPE:-dflt}", &env).unwrap(), vec!["$PATH", "dflt"]);
    }
}
