//! dpo-rs: Direct Preference Optimization and its family for Llama-family language models.
//!
//! The data path, one module per arrow:
//! records ([`data`]) → token ids ([`data::tokenize`]) → packed batch ([`batch`]) → model forward
//! ([`model`]) → completion log-probs ([`logps`]) → loss and metrics ([`task`], [`loss`],
//! [`metrics`]) → backward ([`step`]) → clipping and AdamW ([`optim`]) → the loop, metrics file and
//! checkpoints ([`train`], complete and resumable: [`checkpoint`]; data-parallel over MPI ranks:
//! [`dist`]) → plots and an HTML page of the run ([`report`]).
//!
//! Around it: the run's settings and their defaults ([`config`]), reference log-probs computed
//! once and cached ([`reference`]), evaluation ([`eval`]), sampling ([`sample`]), judges
//! ([`judge`]), labelling ([`label`]), the pipeline demo ([`demo`]) and the benchmark ([`bench`]).

pub mod ops;
pub mod io;
pub mod model;
pub mod tokenizer;
pub mod fetch;
pub mod hub;
pub mod config;
pub mod observer;
pub mod data;
pub mod batch;
pub mod logps;
pub mod loss;
pub mod metrics;
pub mod tensorboard;
pub mod optim;
pub mod policy;
pub mod task;
pub mod step;
pub mod reference;
pub mod checkpoint;
pub mod dist;
pub mod train;
pub mod online;
pub mod eval;
pub mod sample;
pub mod judge;
pub mod label;
pub mod demo;
pub mod iterate;
pub mod bench;
pub mod report;

/// The tensor library dpo-rs is built on (re-exported for callers that build tensors).
pub use candle_core;
