//! dpo-rs: Direct Preference Optimization and its family for Llama-family language models.
//!
//! The data path, one module per arrow:
//! records ([`data`]) → token ids ([`data::tokenize`]) → packed batch ([`batch`]) → model forward
//! ([`model`]) → completion log-probs ([`logps`]) → loss and metrics ([`loss`]) → backward →
//! clipping and AdamW ([`optim`]) → metrics file, checkpoints ([`train`], [`checkpoint`]) → plots and
//! an HTML page of the run ([`report`]).

pub mod ops;
pub mod io;
pub mod model;
pub mod tokenizer;
pub mod fetch;
pub mod data;
pub mod batch;
pub mod logps;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod policy;
pub mod step;
pub mod reference;
pub mod train;
pub mod report;

/// The tensor library dpo-rs is built on (re-exported for callers that build tensors).
pub use candle_core;
pub mod bench;
pub mod task;
pub mod sample;
pub mod judge;
pub mod label;
pub mod demo;
pub mod eval;
