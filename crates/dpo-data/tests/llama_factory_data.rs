//! LLaMA-Factory's demo data (`../shared/data/llama-factory/`): ShareGPT-style DPO pairs and KTO
//! examples, read as conversations, rendered with the default model's chat template and tokenized.

use dpo_data::{read, read_with, to_completions, tokenize_all, ExampleKind, ReadOptions, TokenizeSettings};
use std::path::PathBuf;

fn shared() -> PathBuf {
    std::env::var_os("DPO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn tokenizer() -> dpo_model::tokenizer::Tokenizer {
    let path = dpo_runtime::fetch::ensure_default_model().unwrap();
    let mut f = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    dpo_model::tokenizer::Tokenizer::from_gguf(&content).unwrap()
}

const DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn dpo_en_demo_reads_300_conversational_pairs() {
    let path = shared().join("data/llama-factory/dpo_en_demo.json");
    let e = read(&path).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: record 1: a conversational record", path.display())), "{e}");

    let tok = tokenizer();
    let (recs, report) = read_with(&path, &ReadOptions::for_tokenizer(&tok).unwrap()).unwrap();
    assert_eq!(
        (report.records, report.conversational, report.prompt_not_prefix, report.skipped_disagreeing),
        (300, 300, 0, 0)
    );
    let examples: Vec<_> = recs.iter().map(|r| r.example.as_ref().unwrap()).collect();
    assert!(examples.iter().all(|ex| ex.kind == ExampleKind::Pair { scores: None } && ex.completions.len() == 2));
    // the file's own system prompts replace the template's default one (80 records)
    let own_system = examples.iter().filter(|ex| !ex.prompt.starts_with(DEFAULT_SYSTEM)).count();
    assert_eq!(own_system, 80);
    // multi-turn: earlier assistant turns are part of the prompt (106 records)
    let multi_turn = examples.iter().filter(|ex| ex.prompt.matches("<|im_start|>assistant\n").count() > 1).count();
    assert_eq!(multi_turn, 106);
    for ex in &examples {
        assert!(ex.prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
        for (c, full) in ex.completions.iter().zip(ex.rendered.as_ref().unwrap()) {
            assert_eq!(full, &format!("{}{c}<|im_end|>\n", ex.prompt));
        }
    }
    assert_eq!(recs[299].origin.to_string(), format!("{}: record 300", path.display()));

    // tokenized as TRL does: the prompt's ids are a prefix of each conversation's, which ends the turn
    let set = tokenize_all(&tok, &recs, TokenizeSettings::default()).unwrap();
    assert_eq!(set.examples.len(), 300);
    let nl = tok.encode_raw("\n").unwrap();
    for ex in &set.examples {
        let prompt_ids = tok.encode_raw(&examples[ex.index].prompt).unwrap();
        assert_eq!(ex.prompt, prompt_ids, "record {}: the rendered prompt tokenizes as a prefix", ex.index);
        for c in &ex.completions {
            assert_eq!(
                &c[c.len() - 2..],
                &[tok.eos_id, nl[0]],
                "record {}: `<|im_end|>\\n` ends the completion",
                ex.index
            );
        }
    }
}

#[test]
fn kto_en_demo_reads_300_unpaired_examples() {
    let path = shared().join("data/llama-factory/kto_en_demo.json");
    let tok = tokenizer();
    let (recs, report) = read_with(&path, &ReadOptions::for_tokenizer(&tok).unwrap()).unwrap();
    assert_eq!((report.records, report.conversational, report.prompt_not_prefix), (300, 300, 0));
    let desirable: Vec<bool> = recs
        .iter()
        .map(|r| match r.example.as_ref().unwrap().kind {
            ExampleKind::Unpaired { desirable } => desirable,
            ref k => panic!("{}: {k:?}", r.origin),
        })
        .collect();
    assert_eq!(desirable.iter().filter(|&&d| d).count(), 150);
    // multi-turn conversations: the last assistant message is the completion, earlier ones the prompt
    let multi_turn = recs
        .iter()
        .filter(|r| r.example.as_ref().unwrap().prompt.matches("<|im_start|>assistant\n").count() > 1)
        .count();
    assert_eq!(multi_turn, 77);
    // SFT keeps the desirable ones
    assert_eq!(to_completions(recs).len(), 150);
}
