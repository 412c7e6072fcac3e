//! Preference data: records on disk → text examples → token ids.
//!
//! - [`read`]: `.jsonl` / `.jsonl.gz` files in the layouts of [`records`], each record kept with
//!   its file and line so that errors can name them;
//! - [`tokenize`]: TRL's tokenization rule and our truncation rules.

pub mod records;
pub mod tokenize;

pub use records::{read, Example, ExampleKind, Origin, ReadReport, Record};
pub use tokenize::{tokenize_all, TokenizeSettings, Tokenized, TokenizedSet};
