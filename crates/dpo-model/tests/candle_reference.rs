//! Our trainable Llama gives the logits of candle-transformers' (inference-only) Llama on the
//! same weights: SmolLM2-135M-Instruct, dequantized from its GGUF.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as reference;
use dpo_kernels::{AttentionLayout, Group};
use std::sync::Arc;

#[test]
fn logits_equal_candle_transformers_llama() {
    let loaded = dpo_model::load(&dpo_runtime::fetch::ensure_default_model().unwrap()).unwrap();
    let c = &loaded.config;
    let ours = loaded.model().unwrap();
    let cfg = reference::Config {
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        vocab_size: c.vocab_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope.theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: c.max_position_embeddings,
        tie_word_embeddings: c.tie_word_embeddings,
    };
    let tensors = loaded.tensors.iter().map(|(k, w)| (k.clone(), w.to_tensor().unwrap())).collect();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let theirs = reference::Llama::load(vb, &cfg).unwrap();
    let ids = loaded
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog, and then it rests in the warm afternoon sun.")
        .unwrap();
    let mut worst = 0f32;
    for len in [1, 7, ids.len()] {
        let ids = &ids[..len];
        let mut cache = reference::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
        let want =
            theirs.forward(&Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap(), 0, &mut cache).unwrap();
        let layout = Arc::new(AttentionLayout { groups: vec![Group { prompt: 0..len, branches: vec![] }], rows: len });
        let hidden = ours.hidden_states(ids, &layout).unwrap();
        let got = ours.logits(&hidden.narrow(0, len - 1, 1).unwrap()).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{len} tokens: max |logit difference| {d}");
        worst = worst.max(d);
    }
    println!("max |logit difference| over 3 sequence lengths: {worst:.2e}");
}
