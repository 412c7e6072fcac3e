//! Data: records on disk → text examples → token ids.
//!
//! - [`formats`]: the file formats, by name: `.jsonl` / `.jsonl.gz` (JSON Lines), `.json` /
//!   `.json.gz` (a JSON list of objects), `.parquet`; every record keeps an [`Origin`] (file and
//!   line, or record number) that errors name;
//! - [`layouts`]: what a record holds, recognised per record:
//!   - explicit pairs `{"prompt", "chosen", "rejected"}` (strings), with optional
//!     `score_chosen`/`score_rejected`;
//!   - prompt-completion `{"prompt", "completion"}` (SFT);
//!   - Anthropic HH transcripts `{"chosen", "rejected"}` (strings; the prompt is the text up to the
//!     last `"\n\nAssistant:"`);
//!   - conversational: the same fields as lists of `{"role", "content"}` messages, the prompt
//!     possibly implicit (the common prefix of `chosen` and `rejected`, TRL's `extract_prompt`);
//!   - UltraFeedback binarized: a string `prompt`, message lists `chosen`/`rejected` repeating it,
//!     `score_chosen`/`score_rejected`;
//!   - ShareGPT / LLaMA-Factory: `conversations` (or `messages`) of `{"from", "value"}` or
//!     `{"role", "content"}` messages with `chosen`/`rejected` (DPO), or with a `kto_tag`/`label`
//!     boolean on the final assistant turn (KTO), or alone (SFT);
//!   - unpaired `{"prompt", "completion", "label": bool}` (KTO);
//!   - rankings `{"prompt", "completions", "ranking" | "scores"}`, stored best first;
//! - [`chat`]: chat templates rendered as `transformers`' `apply_chat_template` does
//!   (conversational records need the model's template: [`read_with`] and
//!   [`ReadOptions::for_tokenizer`]; [`read`] reads plain-text layouts only);
//! - [`convert`]: [`to_unpaired`], [`rankings_to_pairs`], [`to_completions`], [`require`];
//! - [`prepare`]: [`load_examples`]: a file read, converted for a task's loss and tokenized (what
//!   every command that reads training or evaluation data calls);
//! - [`tokenize`]: TRL's tokenization rule (plain text: EOS appended, special tokens added;
//!   conversational: the rendered text as is) and our truncation rules.

pub mod batch;
pub mod chat;
pub mod convert;
pub mod example;
pub mod formats;
pub mod hub;
pub mod layouts;
pub mod prepare;
pub mod records;
pub mod samples;
pub mod tokenize;

pub use chat::{ChatTemplate, GenerationPrompt, Message};
pub use convert::{rankings_to_pairs, require, to_completions, to_unpaired, Layout};
pub use example::{Example, ExampleKind, Origin, Position, Record};
pub use formats::read_objects;
pub use formats::Format;
pub use prepare::{load_examples, load_pairs, View};
pub use records::{read, read_with, ReadOptions, ReadReport};
pub use tokenize::{tokenize_all, TokenizeSettings, Tokenized, TokenizedSet};
