//! Chat templates: a model's Jinja template rendered as `transformers`' `apply_chat_template` does.
//!
//! The environment mirrors `transformers`' (`_compile_jinja_template`): `trim_blocks` and
//! `lstrip_blocks` on, no auto-escaping, the trailing newline of the template dropped, loop controls
//! (`break`, `continue`); the globals `raise_exception(msg)` and `strftime_now(fmt)` (local time);
//! a `tojson` filter that writes like Python's `json.dumps(x, ensure_ascii=False)` (`", "` and `": "`
//! separators, `indent`, `separators`, `sort_keys` and `ensure_ascii` arguments); and Python's
//! string, list and dict methods (`.strip()`, `.startswith()`, `.items()`, `.get()`, …) through
//! `minijinja-contrib`'s pycompat. The context is `messages`, `add_generation_prompt`,
//! `tools = none`, `documents = none` and the special tokens the tokenizer has (`bos_token`,
//! `eos_token`, `pad_token`). `{% generation %}` blocks (the assistant-mask extension) are kept
//! for their content only.

use anyhow::{anyhow, Result};
use dpo_model::tokenizer::Tokenizer;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Whether a rendering ends with the template's generation prompt (the assistant's turn
/// opened: `add_generation_prompt=True`) or with the last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationPrompt {
    Add,
    Omit,
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

/// Removes the `{% generation %}` / `{% endgeneration %}` tags of `transformers`' assistant-mask
/// extension (their whitespace-control dashes included), keeping what is between them.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(k) = rest.find("{%") {
        let Some(end) = rest[k..].find("%}") else { break };
        let inner = rest[k + 2..k + end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..k]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(&rest[k..k + end + 2]);
        }
        rest = &rest[k + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Instructions one rendering of a chat template may run (minijinja's fuel): real templates
/// take thousands for a long conversation; a hostile one that loops or renders megabytes stops
/// with an error instead of running without bound.
pub const CHAT_TEMPLATE_FUEL: u64 = 5_000_000;

impl ChatTemplate {
    /// Compiles `source` (a Hugging Face chat template). Fails on a syntax error. Each rendering
    /// may run [`CHAT_TEMPLATE_FUEL`] instructions.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(false).build();
        env.set_syntax(syntax.map_err(|e| anyhow!("chat template syntax: {e}"))?);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> std::result::Result<String, Error> {
            use std::fmt::Write;
            let mut s = String::new();
            write!(s, "{}", chrono::Local::now().format(&fmt))
                .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: bad format {fmt:?}")))?;
            Ok(s)
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, strip_generation_tags(source)).map_err(|e| anyhow!("chat template: {e}"))?;
        Ok(Self {
            env,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
            pad_token: pad_token.map(str::to_string),
        })
    }

    /// The tokenizer's chat template, if it has one (`tokenizer_config.json`, `chat_template.jinja`
    /// or the GGUF metadata `tokenizer.chat_template`).
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Option<Self>> {
        tok.chat_template
            .as_deref()
            .map(|t| Self::new(t, tok.bos_token.as_deref(), Some(&tok.eos_token), tok.pad_token.as_deref()))
            .transpose()
    }

    /// Renders `messages`, as `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does (`prompt` says which).
    pub fn render(&self, messages: &[Message], prompt: GenerationPrompt) -> Result<String> {
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), serde_json::to_value(messages)?);
        ctx.insert("add_generation_prompt".into(), (prompt == GenerationPrompt::Add).into());
        ctx.insert("tools".into(), serde_json::Value::Null);
        ctx.insert("documents".into(), serde_json::Value::Null);
        for (k, v) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token), ("pad_token", &self.pad_token)] {
            if let Some(v) = v {
                ctx.insert(k.into(), v.clone().into());
            }
        }
        let tmpl = self.env.get_template(NAME).map_err(|e| anyhow!("chat template: {e}"))?;
        tmpl.render(Value::from(Serde(&ctx))).map_err(|e| anyhow!("chat template: {e}"))
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents in
/// `[-4, 16)`, otherwise `1e-05` / `1.5e+16`.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let e = format!("{x:e}");
    let (mant, exp) = e.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else if exp + 1 >= n {
            format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
        } else {
            format!("{}.{}", &digits[..(exp + 1) as usize], &digits[(exp + 1) as usize..])
        };
        format!("{sign}{s}")
    } else {
        format!("{sign}{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn value(&self, v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => out.push_str(&i.to_string()),
                (_, Some(u), _) => out.push_str(&u.to_string()),
                (_, _, Some(f)) => out.push_str(&py_float(f)),
                _ => out.push_str(&n.to_string()),
            },
            J::String(s) => self.string(s, out),
            J::Array(a) if a.is_empty() => out.push_str("[]"),
            J::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.value(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            J::Object(m) if m.is_empty() => out.push_str("{}"),
            J::Object(m) => {
                let mut items: Vec<(&String, &serde_json::Value)> = m.iter().collect();
                if self.sort_keys {
                    items.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in items.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key_sep);
                    self.value(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
        }
    }
}

/// `transformers`' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.as_str().is_some() => Some(v.as_str().unwrap().to_string()),
        Some(v) => Some(" ".repeat(usize::try_from(v)?)),
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
        // Python's defaults: ", " without indent, "," with it
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, "tojson: cannot serialize").with_source(e))?;
    let mut out = String::new();
    PyJson { indent, item_sep, key_sep, sort_keys, ensure_ascii }.value(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// SmolLM2-Instruct's chat template (the GGUF metadata of the default model).
    pub(crate) const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    pub(crate) fn smol() -> ChatTemplate {
        ChatTemplate::new(SMOL, None, Some("<|im_end|>"), None).unwrap()
    }

    fn msgs(v: &[(&str, &str)]) -> Vec<Message> {
        v.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    /// A template that would loop 10^8 times stops on its fuel; a long real conversation does not.
    #[test]
    fn hostile_templates_run_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
            None,
            None,
            None,
        )
        .unwrap();
        let err = format!("{:#}", t.render(&msgs(&[("user", "Hi")]), GenerationPrompt::Omit).unwrap_err());
        assert!(err.contains("fuel"), "{err}");
        let long: Vec<(&str, &str)> =
            (0..2000).map(|i| if i % 2 == 0 { ("user", "a question") } else { ("assistant", "an answer") }).collect();
        assert!(smol().render(&msgs(&long), GenerationPrompt::Add).is_ok());
    }

    #[test]
    fn renders_smollm2_template_like_transformers() {
        let t = smol();
        let m = msgs(&[("user", "Hi")]);
        assert_eq!(
            t.render(&m, GenerationPrompt::Add).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let m = msgs(&[("system", "S"), ("user", "Hi"), ("assistant", "Yo")]);
        assert_eq!(
            t.render(&m, GenerationPrompt::Omit).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
        );
    }

    #[test]
    fn hf_environment_features() {
        // trim_blocks / lstrip_blocks, pycompat methods, bos_token, raise_exception, loop controls
        let src = "{{ bos_token }}\n  {% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n{{ m.role.upper() }}: {{ m.content.strip() }}|{% if m.content.startswith(' ') %}sp{% endif %}\n  {% endfor %}\n{% if add_generation_prompt %}A:{% endif %}\n";
        let t = ChatTemplate::new(src, Some("<s>"), Some("</s>"), None).unwrap();
        let m = msgs(&[("system", "x"), ("user", " hi ")]);
        assert_eq!(t.render(&m, GenerationPrompt::Add).unwrap(), "<s>\nUSER: hi|spA:");
        let t = ChatTemplate::new("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok", None, None, None).unwrap();
        let e = t.render(&msgs(&[("assistant", "a")]), GenerationPrompt::Omit).unwrap_err().to_string();
        assert!(e.contains("Conversation must start with user"), "{e}");
        assert!(ChatTemplate::new("{% if %}", None, None, None).is_err());
        // undefined bos_token renders empty, tools is none
        let t = ChatTemplate::new("[{{ bos_token }}]{% if tools is not none %}T{% endif %}{% generation %}{{ messages|length }}{% endgeneration %}", None, None, None).unwrap();
        assert_eq!(t.render(&[], GenerationPrompt::Omit).unwrap(), "[]0");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None, None).unwrap();
        assert_eq!(t.render(&[], GenerationPrompt::Omit).unwrap().len(), 4);
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages|tojson }}|{{ messages[0]|tojson(indent=2) }}|{{ {'b': 1.5, 'a': 1e-05, 'c': 'é<'}|tojson(sort_keys=true) }}", None, None, None).unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "a\"b\n")]), GenerationPrompt::Omit).unwrap(),
            "[{\"role\": \"user\", \"content\": \"a\\\"b\\n\"}]|{\n  \"role\": \"user\",\n  \"content\": \"a\\\"b\\n\"\n}|{\"a\": 1e-05, \"b\": 1.5, \"c\": \"é<\"}"
        );
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(123.25), "123.25");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(-2.5e-7), "-2.5e-07");
        assert_eq!(py_float(0.0001), "0.0001");
    }

    /// A template using what real ones use (`namespace`, slicing, `|trim`, `~`, `loop.index0`,
    /// `raise_exception`, `.endswith()`, `tojson(indent=4)`); the expected text is Jinja2 3.1.6's
    /// with `transformers`' settings.
    #[test]
    fn matches_jinja2_with_transformers_settings() {
        const SRC: &str = "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system = 'default' %}\n{%- endif %}\n{%- set ns = namespace(n=0) %}\n[{{ system }}]\n{% for m in messages %}\n    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}\n    {%- set ns.n = ns.n + 1 %}\n{{ loop.index }}:{{ m.role|upper }} {{ m.content|trim }}{% if m.content.endswith('?') %}?{% endif %}\n{% endfor %}\n{%- if add_generation_prompt %}{{ '>' ~ ns.n }}{% endif %}\n{{ {'n': ns.n, 'list': [1, 'a', none, true], 'm': messages[-1]}|tojson(indent=4) }}\n";
        let t = ChatTemplate::new(SRC, Some("<s>"), Some("</s>"), None).unwrap();
        let a = t
            .render(&msgs(&[("system", " S "), ("user", "Why?"), ("assistant", "So.")]), GenerationPrompt::Add)
            .unwrap();
        assert_eq!(a, "<s>[S]\n1:USER Why??2:ASSISTANT So.>2{\n    \"n\": 2,\n    \"list\": [\n        1,\n        \"a\",\n        null,\n        true\n    ],\n    \"m\": {\n        \"role\": \"assistant\",\n        \"content\": \"So.\"\n    }\n}");
        let b = t.render(&msgs(&[("user", "x")]), GenerationPrompt::Omit).unwrap();
        assert_eq!(b, "<s>[default]\n1:USER x{\n    \"n\": 1,\n    \"list\": [\n        1,\n        \"a\",\n        null,\n        true\n    ],\n    \"m\": {\n        \"role\": \"user\",\n        \"content\": \"x\"\n    }\n}");
        let e = t.render(&msgs(&[("assistant", "x")]), GenerationPrompt::Omit).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }
}
