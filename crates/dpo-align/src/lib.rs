//! The alignment layer of dpo-rs: the recipes that compose runs of the training loop
//! ([`recipes`]: offline and online DPO, SFT, iterative DPO, the pipeline demo, the benchmark),
//! and what they need beyond training: judges that score completions ([`judge`]), labelling
//! samples into preference data ([`label`]), evaluation on prompts ([`eval`]), the summaries they
//! write ([`summary`]) and reports of every kind of run ([`report`]).

pub mod eval;
pub mod judge;
pub mod label;
pub mod recipes;
pub mod report;
pub mod summary;
