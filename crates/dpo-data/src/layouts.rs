//! Record layouts: what a record's fields mean, recognised per record.
//!
//! A field is plain text (a string) or a conversation (a list of `{"role", "content"}` messages).
//! Checked in this order:
//!
//! 1. **ShareGPT / LLaMA-Factory** (`conversations`, or `messages` without `chosen`, `rejected`,
//!    `completion(s)`; a `prompt` beside `messages`, as in UltraChat, is ignored): a list of `{"from", "value"}` (`human` → `user`, `gpt` →
//!    `assistant`, `system`, `observation` → `tool`, `function_call` → `assistant`) or
//!    `{"role", "content"}` messages, with an optional top-level `system` string put first; then
//!    - `chosen` and `rejected` messages (an object or a list): a pair (LLaMA-Factory DPO);
//!    - `kto_tag` or `label` (a boolean): the last message, an assistant's, is the completion,
//!      desirable or not (LLaMA-Factory KTO);
//!    - neither: the last message, an assistant's, is a completion to imitate (SFT).
//! 2. **Rankings**: `{"prompt", "completions": [...], "ranking": [indices, best first]}` or
//!    `{"prompt", "completions", "scores"}` (ranked by score, descending, ties in the given order);
//!    the completions are stored best first, with their scores; `ranking` must be a permutation,
//!    and there must be at least 2 completions.
//! 3. **Unpaired**: `{"prompt", "completion", "label": bool}` (KTO).
//! 4. **Prompt-completion**: `{"prompt", "completion"}` (SFT).
//! 5. **Pairs** `{"prompt", "chosen", "rejected"}`, with `score_chosen` and `score_rejected` when
//!    present:
//!    - all three strings: explicit plain text;
//!    - all three conversations: conversational;
//!    - a string `prompt` and conversations `chosen`, `rejected` that repeat it (UltraFeedback
//!      binarized): the prompt messages are the common prefix of `chosen` and `rejected`.
//! 6. **Implicit prompt** `{"chosen", "rejected"}`:
//!    - strings: Anthropic HH transcripts; the prompt is each side's text up to and including its
//!      last `"\n\nAssistant:"`, and a pair whose sides disagree on it is kept as skipped;
//!    - conversations: the prompt is their longest common prefix of messages (TRL's `extract_prompt`).
//!
//! A conversational example is rendered with the chat template as TRL does: `prompt` is the prompt
//! messages rendered with the generation prompt, `rendered` each prompt + completion conversation
//! rendered without it, and `completions` the completions' message text.

use super::chat::{ChatTemplate, GenerationPrompt, Message};
use super::example::{kind, Example, ExampleKind, Origin};
use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Where the chat template comes from, or why there is none.
pub(crate) enum Chat<'a> {
    Template(&'a ChatTemplate),
    Missing(&'a str),
}

/// A record's example and what reading it found.
pub(crate) struct Parsed {
    pub example: std::result::Result<Example, String>,
    pub conversational: bool,
    /// The rendered prompt is not a prefix of some rendered conversation.
    pub prompt_not_prefix: bool,
}

/// A prompt or completion: plain text or messages.
#[derive(Debug, Clone, PartialEq)]
enum Side {
    Text(String),
    Chat(Vec<Message>),
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a Origin,
}

impl<'a> Fields<'a> {
    fn has(&self, key: &str) -> bool {
        self.obj.contains_key(key)
    }

    fn get(&self, key: &str) -> Result<&'a Value> {
        match self.obj.get(key) {
            Some(v) => Ok(v),
            None => bail!("{}: missing field `{key}`", self.origin),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            v => bail!("{}: field `{key}` must be a string, found {}", self.origin, kind(v)),
        }
    }

    fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            Value::Bool(b) => Ok(*b),
            v => bail!("{}: field `{key}` must be a boolean, found {}", self.origin, kind(v)),
        }
    }

    fn number(&self, v: &Value, what: &str) -> Result<f64> {
        v.as_f64().ok_or_else(|| anyhow::anyhow!("{}: {what} must be a number, found {}", self.origin, kind(v)))
    }

    /// A string, or a list of messages.
    fn side(&self, key: &str) -> Result<Side> {
        match self.get(key)? {
            Value::String(s) => Ok(Side::Text(s.clone())),
            Value::Array(a) => Ok(Side::Chat(self.messages(a, &format!("`{key}`"))?)),
            v => bail!("{}: field `{key}` must be a string or a list of messages, found {}", self.origin, kind(v)),
        }
    }

    /// A message `{"role", "content"}` or, ShareGPT's, `{"from", "value"}`.
    fn message(&self, v: &Value, what: &str) -> Result<Message> {
        let Value::Object(m) = v else {
            bail!("{}: {what} must be a message {{\"role\", \"content\"}}, found {}", self.origin, kind(v));
        };
        let text = |key: &str| -> Result<String> {
            match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => bail!("{}: {what}: `{key}` must be a string, found {}", self.origin, kind(v)),
                None => bail!("{}: {what}: missing field `{key}`", self.origin),
            }
        };
        let sharegpt = m.contains_key("from") || m.contains_key("value");
        let known: [&str; 2] = if sharegpt { ["from", "value"] } else { ["role", "content"] };
        if let Some(key) = m.keys().find(|k| !known.contains(&k.as_str())) {
            bail!(
                "{}: {what}: field `{key}` is not read by dpo-rs (a message is {{\"{}\", \"{}\"}} only; `tool_calls`, \
                 `reasoning_content` and other message fields change what the chat template renders, so a record \
                 carrying one is refused rather than trained as other text)",
                self.origin,
                known[0],
                known[1]
            );
        }
        if sharegpt {
            let from = text("from")?;
            let role = match from.as_str() {
                "human" | "user" => "user",
                "gpt" | "assistant" => "assistant",
                "system" => "system",
                "observation" | "tool" => "tool",
                "function_call" => "assistant",
                r => bail!(
                    "{}: {what}: unknown `from` {r:?} (human, gpt, system, observation, function_call)",
                    self.origin
                ),
            };
            return Ok(Message::new(role, text("value")?));
        }
        Ok(Message::new(text("role")?, text("content")?))
    }

    fn messages(&self, items: &[Value], what: &str) -> Result<Vec<Message>> {
        items.iter().enumerate().map(|(i, v)| self.message(v, &format!("{what}[{i}]"))).collect()
    }

    /// A list of messages, or a single message object.
    fn chat(&self, key: &str) -> Result<Vec<Message>> {
        match self.get(key)? {
            Value::Array(a) => self.messages(a, &format!("`{key}`")),
            v @ Value::Object(_) => Ok(vec![self.message(v, &format!("`{key}`"))?]),
            v => bail!("{}: field `{key}` must be a list of messages, found {}", self.origin, kind(v)),
        }
    }

    /// `score_chosen` and `score_rejected`, when present.
    fn pair_scores(&self) -> Result<Option<[f64; 2]>> {
        match (self.obj.get("score_chosen"), self.obj.get("score_rejected")) {
            (None, None) => Ok(None),
            (Some(c), Some(r)) => Ok(Some([self.number(c, "`score_chosen`")?, self.number(r, "`score_rejected`")?])),
            (Some(_), None) => bail!("{}: missing field `score_rejected` (there is a `score_chosen`)", self.origin),
            (None, Some(_)) => bail!("{}: missing field `score_chosen` (there is a `score_rejected`)", self.origin),
        }
    }
}

/// TRL's `extract_prompt` on message lists: the prompt is `chosen[..idx]` where `idx` is the first
/// message on which the two sides differ (when none does, the last message of the shorter side
/// still goes to the completions, as the Python loop leaves `idx = len - 1`).
fn extract_prompt(chosen: Vec<Message>, rejected: Vec<Message>) -> Option<(Vec<Message>, Vec<Message>, Vec<Message>)> {
    let n = chosen.len().min(rejected.len());
    if n == 0 {
        return None;
    }
    let idx = (0..n).find(|&i| chosen[i] != rejected[i]).unwrap_or(n - 1);
    let prompt = chosen[..idx].to_vec();
    Some((prompt, chosen[idx..].to_vec(), rejected[idx..].to_vec()))
}

/// An example before rendering.
enum Draft {
    Ready(std::result::Result<Example, String>),
    Chat { prompt: Vec<Message>, completions: Vec<Vec<Message>>, kind: ExampleKind },
}

/// A plain-text example, or a conversational one to render; the prompt and the completions must
/// be of the same sort (`names`: the prompt's field and the completions').
fn draft(f: &Fields, prompt: Side, completions: Vec<Side>, kind: ExampleKind, names: [&str; 2]) -> Result<Draft> {
    let mixed = |p: &str, c: &str| {
        anyhow::anyhow!(
            "{}: `{}` is {p} but `{}` is {c}; both must be strings or both message lists",
            f.origin,
            names[0],
            names[1]
        )
    };
    match prompt {
        Side::Text(prompt) => {
            let completions = completions
                .into_iter()
                .map(|c| match c {
                    Side::Text(t) => Ok(t),
                    Side::Chat(_) => Err(mixed("a string", "a list of messages")),
                })
                .collect::<Result<_>>()?;
            Ok(Draft::Ready(Ok(Example { prompt, completions, kind, rendered: None })))
        }
        Side::Chat(prompt) => {
            let completions = completions
                .into_iter()
                .map(|c| match c {
                    Side::Chat(m) => Ok(m),
                    Side::Text(_) => Err(mixed("a list of messages", "a string")),
                })
                .collect::<Result<_>>()?;
            Ok(Draft::Chat { prompt, completions, kind })
        }
    }
}

/// ShareGPT / LLaMA-Factory layouts.
fn sharegpt(f: &Fields) -> Result<Draft> {
    let key = if f.has("conversations") { "conversations" } else { "messages" };
    let Value::Array(items) = f.get(key)? else {
        bail!("{}: field `{key}` must be a list of messages, found {}", f.origin, kind(f.get(key)?));
    };
    let mut msgs = f.messages(items, &format!("`{key}`"))?;
    if f.has("system") {
        let system = f.string("system")?;
        if !system.is_empty() && msgs.first().is_none_or(|m| m.role != "system") {
            msgs.insert(0, Message::new("system", system));
        }
    }
    if f.has("chosen") || f.has("rejected") {
        let chosen = f.chat("chosen")?;
        let rejected = f.chat("rejected")?;
        let scores = f.pair_scores()?;
        return Ok(Draft::Chat {
            prompt: msgs,
            completions: vec![chosen, rejected],
            kind: ExampleKind::Pair { scores },
        });
    }
    let label = ["kto_tag", "label"].into_iter().find(|k| f.has(k));
    let kind = match label {
        Some(k) => ExampleKind::Unpaired { desirable: f.bool(k)? },
        None => ExampleKind::Completion,
    };
    match msgs.last() {
        Some(m) if m.role == "assistant" => {}
        Some(m) => bail!(
            "{}: the last message of `{key}` is the completion and must be the assistant's, found role `{}`",
            f.origin,
            m.role
        ),
        None => bail!("{}: field `{key}` is empty", f.origin),
    }
    let completion = msgs.split_off(msgs.len() - 1);
    Ok(Draft::Chat { prompt: msgs, completions: vec![completion], kind })
}

/// `{"prompt", "completions", "ranking" | "scores"}`.
fn ranking(f: &Fields) -> Result<Draft> {
    let prompt = f.side("prompt")?;
    let Value::Array(items) = f.get("completions")? else {
        bail!("{}: field `completions` must be a list, found {}", f.origin, kind(f.get("completions")?));
    };
    let completions: Vec<Side> = items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(Side::Text(s.clone())),
            Value::Array(a) => Ok(Side::Chat(f.messages(a, &format!("`completions`[{i}]"))?)),
            v @ Value::Object(_) => Ok(Side::Chat(vec![f.message(v, &format!("`completions`[{i}]"))?])),
            v => bail!("{}: `completions`[{i}] must be a string or messages, found {}", f.origin, kind(v)),
        })
        .collect::<Result<_>>()?;
    let k = completions.len();
    if k < 2 {
        bail!("{}: a ranking needs at least 2 completions, `completions` has {k}", f.origin);
    }
    let scores: Option<Vec<f64>> = match f.obj.get("scores") {
        None => None,
        Some(Value::Array(a)) if a.len() == k => {
            Some(a.iter().enumerate().map(|(i, v)| f.number(v, &format!("`scores`[{i}]"))).collect::<Result<_>>()?)
        }
        Some(Value::Array(a)) => bail!("{}: `scores` has {} entries for {k} completions", f.origin, a.len()),
        Some(v) => bail!("{}: field `scores` must be a list of numbers, found {}", f.origin, kind(v)),
    };
    let order: Vec<usize> = match (f.obj.get("ranking"), &scores) {
        (Some(Value::Array(a)), _) => {
            let order: Vec<usize> =
                a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect::<Option<_>>().ok_or_else(|| {
                    anyhow::anyhow!("{}: field `ranking` must be a list of completion indices (0-based)", f.origin)
                })?;
            let mut seen = vec![false; k];
            let ok = order.len() == k && order.iter().all(|&i| i < k && !std::mem::replace(&mut seen[i], true));
            if !ok {
                bail!("{}: `ranking` {order:?} is not a permutation of the {k} completions' indices 0..{k}", f.origin);
            }
            order
        }
        (Some(v), _) => bail!("{}: field `ranking` must be a list of completion indices, found {}", f.origin, kind(v)),
        (None, Some(s)) => {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            order
        }
        (None, None) => bail!("{}: missing field `ranking` (or `scores`) for `completions`", f.origin),
    };
    let completions = order.iter().map(|&i| completions[i].clone()).collect();
    let scores = scores.map(|s| order.iter().map(|&i| s[i]).collect());
    draft(f, prompt, completions, ExampleKind::Ranking { scores }, ["prompt", "completions"])
}

/// The example of one record, before rendering.
fn layout(f: &Fields) -> Result<Draft> {
    let explicit = ["chosen", "rejected", "completion", "completions"].iter().any(|k| f.has(k));
    if f.has("conversations") || (f.has("messages") && !explicit) {
        return sharegpt(f);
    }
    if f.has("completions") {
        return ranking(f);
    }
    if f.has("label") {
        let desirable = f.bool("label")?;
        let (prompt, completion) = (f.side("prompt")?, f.side("completion")?);
        return draft(f, prompt, vec![completion], ExampleKind::Unpaired { desirable }, ["prompt", "completion"]);
    }
    if f.has("completion") {
        let (prompt, completion) = (f.side("prompt")?, f.side("completion")?);
        return draft(f, prompt, vec![completion], ExampleKind::Completion, ["prompt", "completion"]);
    }
    if f.has("chosen") || f.has("rejected") {
        let prompt = if f.has("prompt") { Some(f.side("prompt")?) } else { None };
        let (chosen, rejected) = (f.side("chosen")?, f.side("rejected")?);
        let scores = f.pair_scores()?;
        let kind = ExampleKind::Pair { scores };
        return match (prompt, chosen, rejected) {
            // Anthropic HH transcripts
            (None, Side::Text(c), Side::Text(r)) => Ok(Draft::Ready(split_hh(&c, &r).map(|mut ex| {
                ex.kind = kind;
                ex
            }))),
            // implicit prompt (TRL's extract_prompt), or UltraFeedback's string prompt repeated in the messages
            (None | Some(Side::Text(_)), Side::Chat(c), Side::Chat(r)) => match extract_prompt(c, r) {
                Some((prompt, c, r)) => Ok(Draft::Chat { prompt, completions: vec![c, r], kind }),
                None => bail!("{}: `chosen` and `rejected` must not be empty", f.origin),
            },
            (None, _, _) => bail!(
                "{}: `chosen` and `rejected` must both be strings (HH transcripts) or both message lists",
                f.origin
            ),
            (Some(p), c, r) => draft(f, p, vec![c, r], kind, ["prompt", "chosen"]),
        };
    }
    if f.has("prompt") {
        bail!(
            "{}: missing field `chosen` (a `prompt` needs `chosen` and `rejected`, a `completion`, or `completions`)",
            f.origin
        );
    }
    let keys: Vec<&str> = f.obj.keys().map(String::as_str).collect();
    bail!(
        "{}: the record fits no layout (its fields: {}); expected `prompt` with `chosen`/`rejected`, `completion` or `completions`, \
         HH transcripts `chosen`/`rejected`, or `conversations`/`messages`",
        f.origin,
        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
    )
}

/// Record fields that change what transformers' `apply_chat_template(messages, tools=…,
/// documents=…, **chat_template_kwargs)` renders, or that carry inputs other than text: dpo-rs
/// does not render them, so a record with one is refused by name instead of trained as other text.
const UNREAD_RECORD_FIELDS: [&str; 8] =
    ["tools", "chat_template_kwargs", "documents", "images", "image", "videos", "audios", "audio"];

/// Reads one record: its layout, and for a conversational one its rendering by the chat template.
/// Errors: a field of [`UNREAD_RECORD_FIELDS`], a message field other than its role and content,
/// a record that fits no layout, a template that fails.
pub(crate) fn parse_record(obj: &Map<String, Value>, origin: &Origin, chat: &Chat) -> Result<Parsed> {
    if let Some(key) = UNREAD_RECORD_FIELDS.iter().find(|k| obj.contains_key(**k)) {
        bail!(
            "{origin}: field `{key}` is not read by dpo-rs: it would change the text TRL trains on (the chat \
             template's rendering, or a non-text input), so the record is refused rather than trained without it"
        );
    }
    let f = Fields { obj, origin };
    match layout(&f)? {
        Draft::Ready(example) => Ok(Parsed { example, conversational: false, prompt_not_prefix: false }),
        Draft::Chat { prompt, completions, kind } => {
            let tmpl = match chat {
                Chat::Template(t) => t,
                Chat::Missing(why) => bail!(
                    "{origin}: a conversational record (message lists) is rendered with a chat template, but {why}"
                ),
            };
            let prompt_text =
                tmpl.render(&prompt, GenerationPrompt::Add).map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?;
            let mut rendered = Vec::with_capacity(completions.len());
            let mut texts = Vec::with_capacity(completions.len());
            for c in &completions {
                let conv: Vec<Message> = prompt.iter().chain(c).cloned().collect();
                rendered
                    .push(tmpl.render(&conv, GenerationPrompt::Omit).map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?);
                texts.push(c.iter().map(|m| m.content.as_str()).collect::<String>());
            }
            let prompt_not_prefix = rendered.iter().any(|r| !r.starts_with(&prompt_text));
            let example = Example { prompt: prompt_text, completions: texts, kind, rendered: Some(rendered) };
            Ok(Parsed { example: Ok(example), conversational: true, prompt_not_prefix })
        }
    }
}

const HH_MARK: &str = "\n\nAssistant:";

/// Splits an HH transcript pair into prompt and completions, or says why it cannot.
pub fn split_hh(chosen: &str, rejected: &str) -> std::result::Result<Example, String> {
    let cut = |s: &str| s.rfind(HH_MARK).map(|k| k + HH_MARK.len());
    match (cut(chosen), cut(rejected)) {
        (Some(a), Some(b)) if chosen[..a] == rejected[..b] => {
            Ok(Example::pair(&chosen[..a], &chosen[a..], &rejected[b..]))
        }
        (Some(_), Some(_)) => Err("chosen and rejected disagree before their last \"\\n\\nAssistant:\"".into()),
        _ => Err("no \"\\n\\nAssistant:\" in the transcript".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tests::smol;
    use crate::example::Position;
    use serde_json::json;

    const SYS: &str =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

    fn origin() -> Origin {
        Origin::new(std::path::Path::new("d.jsonl"), 7, 6, Position::Line)
    }

    fn parse(v: Value) -> Result<Parsed> {
        let t = smol();
        let Value::Object(o) = v else { panic!() };
        parse_record(&o, &origin(), &Chat::Template(&t))
    }

    fn ok(v: Value) -> Example {
        parse(v).unwrap().example.unwrap()
    }

    fn err(v: Value) -> String {
        format!("{:#}", parse(v).err().expect("an error"))
    }

    fn turn(role: &str, content: &str) -> String {
        format!("<|im_start|>{role}\n{content}<|im_end|>\n")
    }

    #[test]
    fn plain_layouts() {
        assert_eq!(ok(json!({"prompt": "P", "chosen": " a", "rejected": " b"})), Example::pair("P", " a", " b"));
        let ex = ok(json!({"prompt": "P", "chosen": " a", "rejected": " b", "score_chosen": 8, "score_rejected": 2.5}));
        assert_eq!(ex.kind, ExampleKind::Pair { scores: Some([8.0, 2.5]) });
        assert_eq!(ok(json!({"prompt": "P", "completion": " c"})), Example::completion("P", " c"));
        assert_eq!(ok(json!({"prompt": "P", "completion": " c", "label": false})), Example::unpaired("P", " c", false));
        let hh = parse(json!({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}))
            .unwrap();
        assert_eq!(hh.example.unwrap(), Example::pair("\n\nHuman: hi\n\nAssistant:", " a", " b"));
        assert!(!hh.conversational);
    }

    #[test]
    fn conversational_explicit_and_implicit_prompt() {
        let u = json!({"role": "user", "content": "Hi"});
        let p = parse(json!({"prompt": [u], "chosen": [{"role": "assistant", "content": "Yo"}], "rejected": [{"role": "assistant", "content": "No"}]})).unwrap();
        assert!(p.conversational && !p.prompt_not_prefix);
        let ex = p.example.unwrap();
        let prompt = format!("{SYS}{}<|im_start|>assistant\n", turn("user", "Hi"));
        assert_eq!(ex.prompt, prompt);
        assert_eq!(ex.completions, ["Yo", "No"]);
        assert_eq!(
            ex.rendered.as_ref().unwrap(),
            &[
                format!("{SYS}{}{}", turn("user", "Hi"), turn("assistant", "Yo")),
                format!("{SYS}{}{}", turn("user", "Hi"), turn("assistant", "No"))
            ]
        );
        assert_eq!(ex.kind, ExampleKind::Pair { scores: None });
        // implicit prompt: the common prefix of messages, multi-turn
        let a1 = json!({"role": "assistant", "content": "A1"});
        let u2 = json!({"role": "user", "content": "U2"});
        let ex2 = ok(
            json!({"chosen": [u, a1, u2, {"role": "assistant", "content": "Yes"}], "rejected": [u, a1, u2, {"role": "assistant", "content": "Nope"}]}),
        );
        assert_eq!(
            ex2.prompt,
            format!(
                "{SYS}{}{}{}<|im_start|>assistant\n",
                turn("user", "Hi"),
                turn("assistant", "A1"),
                turn("user", "U2")
            )
        );
        assert_eq!(ex2.completions, ["Yes", "Nope"]);
        // the same record with an explicit prompt gives the same example
        let ex3 = ok(
            json!({"prompt": [u, a1, u2], "chosen": [{"role": "assistant", "content": "Yes"}], "rejected": [{"role": "assistant", "content": "Nope"}]}),
        );
        assert_eq!(ex2, ex3);
        // prompt-completion and unpaired, conversational
        let ex = ok(json!({"prompt": [u], "completion": [{"role": "assistant", "content": "Yo"}], "label": true}));
        assert_eq!((ex.kind, ex.completions[0].as_str()), (ExampleKind::Unpaired { desirable: true }, "Yo"));
        assert_eq!(
            ok(json!({"prompt": [u], "completion": [{"role": "assistant", "content": "Yo"}]})).kind,
            ExampleKind::Completion
        );
        // mixed kinds
        assert!(err(json!({"prompt": [u], "chosen": "a", "rejected": "b"}))
            .contains("d.jsonl:7: `prompt` is a list of messages but `chosen` is a string"));
        assert!(err(json!({"chosen": [u], "rejected": "b"}))
            .contains("both be strings (HH transcripts) or both message lists"));
    }

    #[test]
    fn ultrafeedback_binarized() {
        let ex = ok(json!({
            "prompt": "What is 2+2?", "prompt_id": "x",
            "chosen": [{"content": "What is 2+2?", "role": "user"}, {"content": "4", "role": "assistant"}],
            "rejected": [{"content": "What is 2+2?", "role": "user"}, {"content": "5", "role": "assistant"}],
            "messages": [{"content": "What is 2+2?", "role": "user"}, {"content": "4", "role": "assistant"}],
            "score_chosen": 9.0, "score_rejected": 3.5
        }));
        assert_eq!(ex.prompt, format!("{SYS}{}<|im_start|>assistant\n", turn("user", "What is 2+2?")));
        assert_eq!(ex.completions, ["4", "5"]);
        assert_eq!(ex.kind, ExampleKind::Pair { scores: Some([9.0, 3.5]) });
        let e = err(
            json!({"prompt": "p", "chosen": [{"content": "p", "role": "user"}], "rejected": [{"content": "p", "role": "user"}], "score_chosen": 1}),
        );
        assert!(e.contains("d.jsonl:7: missing field `score_rejected`"), "{e}");
    }

    #[test]
    fn sharegpt_and_llama_factory() {
        let ex = ok(json!({
            "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}],
            "chosen": {"from": "gpt", "value": "Good"}, "rejected": {"from": "gpt", "value": "Bad"}
        }));
        let prompt = format!(
            "{}{}{}{}",
            turn("system", "Be brief."),
            turn("user", "Q1"),
            turn("assistant", "A1"),
            turn("user", "Q2")
        );
        assert_eq!(ex.prompt, format!("{prompt}<|im_start|>assistant\n"));
        assert_eq!(ex.rendered.as_ref().unwrap()[1], format!("{prompt}{}", turn("assistant", "Bad")));
        assert_eq!(ex.completions, ["Good", "Bad"]);
        // a top-level system prompt goes first
        let ex = ok(
            json!({"conversations": [{"from": "human", "value": "Q"}], "system": "S", "chosen": {"from": "gpt", "value": "G"}, "rejected": {"from": "gpt", "value": "B"}}),
        );
        assert!(ex.prompt.starts_with(&turn("system", "S")));
        // KTO: conversations + kto_tag, or messages + label
        let ex = ok(
            json!({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "kto_tag": false}),
        );
        assert_eq!((ex.kind, ex.completions[0].as_str()), (ExampleKind::Unpaired { desirable: false }, "A"));
        let ex = ok(
            json!({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "label": true}),
        );
        assert_eq!(ex.kind, ExampleKind::Unpaired { desirable: true });
        assert_eq!(ex.rendered.unwrap()[0], format!("{SYS}{}{}", turn("user", "Q"), turn("assistant", "A")));
        // messages alone (UltraChat has a `prompt` beside them): SFT on the last assistant turn
        let ex = ok(
            json!({"prompt": "Q", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}),
        );
        assert_eq!((ex.kind, ex.completions[0].as_str()), (ExampleKind::Completion, "A"));
        // errors
        let e =
            err(json!({"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "G"}}));
        assert!(e.contains("d.jsonl:7: missing field `rejected`"), "{e}");
        let e = err(json!({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt"}], "kto_tag": true}));
        assert!(e.contains("d.jsonl:7: `conversations`[1]: missing field `value`"), "{e}");
        let e = err(json!({"conversations": [{"from": "robot", "value": "Q"}], "kto_tag": true}));
        assert!(e.contains("unknown `from` \"robot\""), "{e}");
        let e = err(
            json!({"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}], "kto_tag": true}),
        );
        assert!(e.contains("must be the assistant's, found role `user`"), "{e}");
        let e = err(
            json!({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "label": "yes"}),
        );
        assert!(e.contains("d.jsonl:7: field `label` must be a boolean, found a string"), "{e}");
    }

    #[test]
    fn rankings() {
        let ex = ok(json!({"prompt": "P", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}));
        assert_eq!(ex, Example::ranking("P", vec!["c".into(), "a".into(), "b".into()], None));
        // by scores, descending, ties in the given order; scores reordered with the completions
        let ex = ok(json!({"prompt": "P", "completions": ["a", "b", "c", "d"], "scores": [1, 3, 1, 2.5]}));
        assert_eq!(
            ex,
            Example::ranking("P", vec!["b".into(), "d".into(), "a".into(), "c".into()], Some(vec![3.0, 2.5, 1.0, 1.0]))
        );
        // both: the ranking decides, the scores follow it
        let ex = ok(json!({"prompt": "P", "completions": ["a", "b"], "ranking": [1, 0], "scores": [0.2, 0.7]}));
        assert_eq!(ex.kind, ExampleKind::Ranking { scores: Some(vec![0.7, 0.2]) });
        // conversational
        let ex = ok(
            json!({"prompt": [{"role": "user", "content": "Q"}], "completions": [[{"role": "assistant", "content": "x"}], {"role": "assistant", "content": "y"}], "ranking": [1, 0]}),
        );
        assert_eq!(ex.completions, ["y", "x"]);
        assert!(ex.rendered.unwrap()[0].ends_with(&turn("assistant", "y")));
        for (ranking, why) in [
            (json!([0, 0, 1]), "not a permutation"),
            (json!([0, 1]), "not a permutation"),
            (json!([0, 1, 3]), "not a permutation"),
            (json!([0, -1, 2]), "indices"),
        ] {
            let e = err(json!({"prompt": "P", "completions": ["a", "b", "c"], "ranking": ranking}));
            assert!(e.contains("d.jsonl:7:") && e.contains(why), "{e}");
        }
        assert!(err(json!({"prompt": "P", "completions": ["a"], "ranking": [0]})).contains("at least 2 completions"));
        assert!(err(json!({"prompt": "P", "completions": ["a", "b"]}))
            .contains("d.jsonl:7: missing field `ranking` (or `scores`)"));
        assert!(err(json!({"prompt": "P", "completions": ["a", "b"], "scores": [1]}))
            .contains("`scores` has 1 entries for 2 completions"));
        assert!(err(json!({"completions": ["a", "b"], "scores": [1, 2]})).contains("d.jsonl:7: missing field `prompt`"));
    }

    #[test]
    fn missing_fields_and_unknown_layouts() {
        assert!(err(json!({"prompt": "P", "chosen": "a"})).contains("d.jsonl:7: missing field `rejected`"));
        assert!(err(json!({"prompt": "P", "rejected": "a"})).contains("d.jsonl:7: missing field `chosen`"));
        assert!(err(json!({"completion": "c", "label": true})).contains("d.jsonl:7: missing field `prompt`"));
        assert!(err(json!({"prompt": "P", "label": true})).contains("d.jsonl:7: missing field `completion`"));
        assert!(err(json!({"prompt": "P"})).contains("d.jsonl:7: missing field `chosen`"));
        let e = err(json!({"text": "x", "id": 3}));
        assert!(e.contains("d.jsonl:7: the record fits no layout (its fields: text, id)"), "{e}");
        let e = err(json!({"prompt": [{"role": "user"}], "completion": [{"role": "assistant", "content": "A"}]}));
        assert!(e.contains("d.jsonl:7: `prompt`[0]: missing field `content`"), "{e}");
    }

    #[test]
    fn fields_that_change_the_rendering_are_refused_by_name() {
        // TRL renders these through the chat template; dropping them would train other text.
        let msgs = json!([{"role": "user", "content": "Q"}]);
        for key in ["tools", "chat_template_kwargs", "documents", "images"] {
            let e = err(json!({"prompt": msgs, "chosen": "a", "rejected": "b", key: []}));
            assert!(e.starts_with(&format!("d.jsonl:7: field `{key}` is not read by dpo-rs")), "{e}");
        }
        let call = json!({"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]});
        let e = err(json!({"prompt": msgs, "chosen": [call], "rejected": [{"role": "assistant", "content": "b"}]}));
        assert!(e.starts_with("d.jsonl:7: `chosen`[0]: field `tool_calls` is not read by dpo-rs"), "{e}");
        let think = json!({"role": "assistant", "content": "a", "reasoning_content": "hmm"});
        let e = err(json!({"messages": [{"role": "user", "content": "Q"}, think]}));
        assert!(e.starts_with("d.jsonl:7: `messages`[1]: field `reasoning_content` is not read"), "{e}");
        let e = err(
            json!({"conversations": [{"from": "human", "value": "Q", "weight": 0}, {"from": "gpt", "value": "A"}]}),
        );
        assert!(
            e.contains(
                "`conversations`[0]: field `weight` is not read by dpo-rs (a message is {\"from\", \"value\"} only"
            ),
            "{e}"
        );
    }

    #[test]
    fn conversational_records_need_a_template() {
        let Value::Object(o) = json!({"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]})
        else {
            panic!()
        };
        let e = parse_record(&o, &origin(), &Chat::Missing("the model's tokenizer has no chat template"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("d.jsonl:7: a conversational record") && e.contains("no chat template"), "{e}");
        // a template whose generation prompt is not a prefix of the conversation is flagged
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<gen>{% endif %}",
            None,
            None,
            None,
        )
        .unwrap();
        let p = parse_record(&o, &origin(), &Chat::Template(&t)).unwrap();
        assert!(p.prompt_not_prefix);
        let ex = p.example.unwrap();
        assert_eq!((ex.prompt.as_str(), ex.rendered.unwrap()[0].as_str()), ("Q<gen>", "QA"));
    }
}
