//! The tiny model and examples the gradient tests share.
#![allow(dead_code)]

use dpo_data::{ExampleKind, Tokenized};
use dpo_model::{Family, Features, LlamaConfig};

/// A tiny Llama: vocabulary 23, hidden 8, 2 layers of 4 heads over 2 key/value heads.
pub fn config(tied: bool, bias: bool) -> LlamaConfig {
    LlamaConfig {
        family: if bias { Family::Qwen2 } else { Family::Llama },
        vocab_size: 23,
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        features: Features { qkv_bias: bias, ..Features::default() },
        bos_token_id: None,
        eos_token_id: Some(1),
        pad_token_id: None,
        ..LlamaConfig::default()
    }
}

pub fn examples() -> Vec<Tokenized> {
    vec![
        Tokenized {
            index: 0,
            prompt: vec![3, 4, 5],
            completions: vec![vec![6, 7, 1], vec![8, 1]],
            kind: ExampleKind::Pair { scores: None },
        },
        Tokenized {
            index: 1,
            prompt: vec![9, 10, 11, 12, 2],
            completions: vec![vec![13, 14, 15, 1], vec![16, 17, 18, 19, 1]],
            kind: ExampleKind::Pair { scores: None },
        },
        Tokenized {
            index: 2,
            prompt: vec![20],
            completions: vec![vec![21, 1], vec![22, 3, 4, 1]],
            kind: ExampleKind::Pair { scores: None },
        },
    ]
}

/// Reference log-probs chosen so that the margins are far from 0 (both signs).
pub const REFERENCE: [[f64; 2]; 3] = [[-9.0, -4.0], [-11.0, -16.0], [-5.0, -9.5]];
