//! The policy/reference model: architecture, loading (GGUF, Hugging Face) and saving.

mod config;
mod llama;
mod load;

pub use config::LlamaConfig;
pub use llama::{tensor_names, Block, Linear, Llama};
pub use load::{load, save_hf_dir, Loaded};
