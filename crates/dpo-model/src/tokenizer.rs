//! Text ↔ token ids: a Hugging Face `tokenizer.json`, or a byte-level BPE rebuilt from GGUF metadata.

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::quantized::gguf_file;
use serde_json::{json, Value};
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;
use tokenizers::SplitDelimiterBehavior;

/// A tokenizer with the special tokens preference training needs.
/// Whether decoding writes the special tokens of the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialTokens {
    Keep,
    Skip,
}

#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    /// End-of-sequence text, appended to completions (TRL appends `eos_token` as text).
    pub eos_token: String,
    pub eos_id: u32,
    /// The ids that end a generated completion: the EOS first, then `generation_config.json`'s
    /// `eos_token_id`(s) (transformers' `generate` stops at any of them: Llama 3's `<|eot_id|>`
    /// and `<|eom_id|>`, Qwen's `<|endoftext|>`), or a GGUF's end-of-turn tokens.
    pub stop_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub pad_token: Option<String>,
    /// Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
}

fn token_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The split regex of a GGUF `tokenizer.ggml.pre` (transformers' `GGUF_PRE_TOKENIZER_SPLITS`,
/// llama.cpp's `llama-vocab.cpp`): Llama 3's (numbers in runs of up to 3 digits) or Qwen2's (one digit each).
fn gguf_split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

impl Tokenizer {
    fn with_specials(
        inner: tokenizers::Tokenizer,
        eos_token: String,
        bos_token: Option<String>,
        pad_token: Option<String>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let eos_id = inner
            .token_to_id(&eos_token)
            .with_context(|| format!("the EOS token `{eos_token}` is not in the vocabulary"))?;
        Ok(Self { inner, eos_token, eos_id, stop_ids: vec![eos_id], bos_token, pad_token, chat_template })
    }

    /// Adds `ids` to [`Tokenizer::stop_ids`] (once each). Errors: an id outside the vocabulary.
    fn add_stop_ids(&mut self, ids: impl IntoIterator<Item = u32>) -> Result<()> {
        for id in ids {
            ensure!(self.inner.id_to_token(id).is_some(), "end-of-sequence id {id} is not in the vocabulary");
            if !self.stop_ids.contains(&id) {
                self.stop_ids.push(id);
            }
        }
        Ok(())
    }

    /// Loads `dir/tokenizer.json`, taking the special tokens and chat template from
    /// `tokenizer_config.json` (and `chat_template.jinja`) and, failing that, `config.json`'s ids.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let read_json = |name: &str| -> Result<Value> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(Value::Null);
            }
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))
        };
        let tc = read_json("tokenizer_config.json")?;
        let cfg = read_json("config.json")?;
        let id_token = |key: &str| {
            let id = match cfg.get(key)? {
                Value::Array(a) => a.first()?.as_u64()?,
                v => v.as_u64()?,
            };
            inner.id_to_token(id as u32)
        };
        let eos = token_field(&tc, "eos_token").or_else(|| id_token("eos_token_id")).with_context(|| {
            format!("{}: no eos_token in tokenizer_config.json nor eos_token_id in config.json", dir.display())
        })?;
        let bos = token_field(&tc, "bos_token").or_else(|| id_token("bos_token_id"));
        let pad = token_field(&tc, "pad_token").or_else(|| id_token("pad_token_id"));
        let template = match tc.get("chat_template").and_then(Value::as_str) {
            Some(t) => Some(t.to_string()),
            None => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let mut tok = Self::with_specials(inner, eos, bos, pad, template)?;
        let gen = read_json("generation_config.json")?;
        let ids = match gen.get("eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
            Some(v) => v.as_u64().map(|x| x as u32).into_iter().collect(),
            None => vec![],
        };
        tok.add_stop_ids(ids)
            .with_context(|| format!("{}: eos_token_id", dir.join("generation_config.json").display()))?;
        Ok(tok)
    }

    /// Rebuilds the tokenizer of a GGUF file from its `tokenizer.ggml.*` metadata: a byte-level
    /// BPE over the stored vocabulary and merges, GPT-2 byte-level pre-tokenization (for
    /// `tokenizer.ggml.pre` = `smollm`, `gpt2` or `default`), the
    /// control tokens (`token_type` 3) as special tokens, and a BOS when `add_bos_token` is set.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let Vocabulary { tokens, merges, types } = gguf_vocabulary(md)?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| anyhow!("GGUF BPE: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = md.get("tokenizer.ggml.pre").map(|v| v.to_string().cloned()).transpose()?.unwrap_or_default();
        set_gguf_pre_tokenizer(&mut inner, &pre)?;
        inner.with_decoder(Some(ByteLevel::default()));
        add_gguf_tokens(&mut inner, &tokens, &types)?;
        let id = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let tok = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize).cloned());
        let bos = tok(id("tokenizer.ggml.bos_token_id"));
        if md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()) == Some(true) {
            let b = bos.clone().context("add_bos_token is set but there is no bos_token_id")?;
            let bid = id("tokenizer.ggml.bos_token_id").unwrap();
            let post = TemplateProcessing::builder()
                .try_single(format!("{b} $A"))
                .map_err(|e| anyhow!("{e}"))?
                .special_tokens(vec![(b.clone(), bid)])
                .build()
                .map_err(|e| anyhow!("{e}"))?;
            inner.with_post_processor(Some(post));
        }
        let eos = tok(id("tokenizer.ggml.eos_token_id")).context("GGUF metadata has no usable eos_token_id")?;
        let template = md.get("tokenizer.chat_template").map(|v| v.to_string().cloned()).transpose()?;
        let mut out = Self::with_specials(inner, eos, bos, tok(id("tokenizer.ggml.padding_token_id")), template)?;
        // llama.cpp's end-of-generation tokens
        out.add_stop_ids(["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"].into_iter().filter_map(id))
            .context("GGUF metadata: end-of-turn token id")?;
        Ok(out)
    }

    /// Token ids of `text`, with the special tokens the tokenizer's post-processor adds (a BOS for
    /// Llama-style tokenizers, none for SmolLM2), as `tokenizer(text)` does in `transformers`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, true).map_err(|e| anyhow!("tokenizing: {e}"))?.get_ids().to_vec())
    }

    /// Token ids of `text` without added special tokens (`tokenizer(text, add_special_tokens=False)`,
    /// what `apply_chat_template(..., tokenize=True)` does with the rendered text); special tokens
    /// written in the text are still recognised.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?.get_ids().to_vec())
    }

    /// Text of `ids`, its special tokens (EOS, chat markers) kept or dropped.
    pub fn decode(&self, ids: &[u32], special: SpecialTokens) -> Result<String> {
        self.inner.decode(ids, special == SpecialTokens::Skip).map_err(|e| anyhow!("decoding: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (loadable by `transformers`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.inner.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow!("writing tokenizer.json: {e}"))?;
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos_token,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000u64,
        });
        for (k, v) in
            [("bos_token", &self.bos_token), ("pad_token", &self.pad_token), ("chat_template", &self.chat_template)]
        {
            if let Some(v) = v {
                tc[k] = json!(v);
            }
        }
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?)?;
        Ok(())
    }
}

/// The GGUF metadata of a tokenizer.
type Metadata = std::collections::HashMap<String, gguf_file::Value>;

/// A GGUF byte-level BPE vocabulary.
struct Vocabulary {
    tokens: Vec<String>,
    merges: Vec<(String, String)>,
    /// Per token: 1 normal, 3 control, 4 user-defined.
    types: Vec<i64>,
}

/// A GGUF byte-level BPE vocabulary: its tokens, merges and token types (3 control, 4
/// user-defined; all normal when absent). Errors: another tokenizer model, a missing or
/// malformed field.
fn gguf_vocabulary(md: &Metadata) -> Result<Vocabulary> {
    let get = |k: &str| md.get(k).with_context(|| format!("GGUF metadata has no `{k}`"));
    let model = get("tokenizer.ggml.model")?.to_string()?.clone();
    if model != "gpt2" {
        bail!("GGUF tokenizer model `{model}` is not supported (byte-level BPE `gpt2` only); use a Hugging Face directory with tokenizer.json");
    }
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()?;
    let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .map(|v| {
            let s = v.to_string()?;
            let (a, b) = s.split_once(' ').ok_or_else(|| candle_core::Error::Msg(format!("bad merge `{s}`")))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect::<candle_core::Result<_>>()?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec()?.iter().map(|t| t.to_i32().map(i64::from)).collect::<candle_core::Result<_>>()?,
        None => vec![1; tokens.len()],
    };
    Ok(Vocabulary { tokens, merges, types })
}

/// The pre-tokenizer of GGUF's `tokenizer.ggml.pre`. Errors: one we do not know.
fn set_gguf_pre_tokenizer(inner: &mut tokenizers::Tokenizer, pre: &str) -> Result<()> {
    match gguf_split_regex(pre) {
        // transformers' GGUF loader (the oracle's tokenizer, hence TRL's ids on this file)
        // builds plain GPT-2 byte-level pre-tokenization for `smollm`; SmolLM2's original
        // tokenizer.json splits digits first, which differs on whitespace before a digit
        // ("\n\n1"). We follow the reference: ids then equal TRL's for the same GGUF.
        None if matches!(pre, "smollm" | "" | "default" | "gpt2" | "gpt-2") => {
            inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        // Llama 3's and Qwen2's split, then byte-level without its own regex (transformers'
        // `set_split_regex` for GGUF files).
        Some(re) => {
            let split = Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| anyhow!("GGUF pre-tokenizer `{pre}`: {e}"))?;
            inner.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()])));
        }
        None => bail!(
            "GGUF pre-tokenizer `{pre}` is not supported (smollm, gpt-2, llama-bpe / llama3, qwen2); use a Hugging Face directory with tokenizer.json"
        ),
    }
    Ok(())
}

/// GGUF's control tokens as special tokens, and its USER_DEFINED tokens (`<think>`,
/// `<tool_call>`) matched whole in the text but not special.
fn add_gguf_tokens(inner: &mut tokenizers::Tokenizer, tokens: &[String], types: &[i64]) -> Result<()> {
    let of = |kind: i64| tokens.iter().zip(types).filter(move |(_, &t)| t == kind).map(|(s, _)| s.clone());
    let special: Vec<AddedToken> = of(3).map(|s| AddedToken::from(s, true)).collect();
    inner.add_special_tokens(special).map_err(|e| anyhow!("GGUF special tokens: {e}"))?;
    let user: Vec<AddedToken> = of(4).map(|s| AddedToken::from(s, false).normalized(false)).collect();
    inner.add_tokens(user).map_err(|e| anyhow!("GGUF user-defined tokens: {e}"))?;
    Ok(())
}
