//! Model families against transformers 5.23: for each fixture of `tests/fixtures/families/`
//! (made by `scripts/oracle/family_goldens.py`: a tiny random model built by transformers from
//! `AutoConfig.for_model(model_type, ...)`, its weights filled by a hash we reproduce here bit
//! for bit), `dpo logps` gives transformers' log-probs within 1e-4 nats per sequence on the
//! golden pairs, the DPO loss gradient's norm per tensor is within 1e-3 relative, and a
//! checkpoint written by dpo-rs has transformers' tensor names and loads back to the same model.

use candle_core::DType;
use dpo_data::{tokenize_all, TokenizeSettings, Tokenized};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;
use common::{dpo, lines, model_dir, pairs8, s};

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str::<Value>(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            )
        })
        .filter(|(_, v)| v.get("tensors").is_some()) // chat_templates.json is the other test's
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 10, "model fixtures in {}", dir.display());
    out
}

/// `d_c`, `d_r`: the reference offsets of record position `i` (golden.py's formula).
fn offsets(i: usize) -> (f64, f64) {
    (0.5 * (((i * 7) % 9) as f64 - 4.0), 0.75 * (((i * 5) % 11) as f64 - 5.0))
}

#[test]
fn every_family_matches_transformers() {
    let smol = dpo_model::load_tokenizer(&dpo_runtime::fetch::ensure_default_model().unwrap()).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut summary = vec![];
    for (case, fx) in fixtures() {
        let dir = model_dir(&fx, &smol, &home.path().join(&case));
        let records = fx["records"].as_array().unwrap();

        // 1. log-probs through `dpo logps`
        let out = home.path().join(format!("{case}.logps.jsonl"));
        let o = dpo(home.path(), &["logps", "--model", s(&dir), "--data", s(&pairs8()), "--out", s(&out)]);
        assert!(o.status.success(), "{case}: dpo logps failed");
        let got = lines(&out);
        assert_eq!(got.len(), records.len(), "{case}");
        let mut worst_logp = 0f64;
        for (l, r) in got.iter().zip(records) {
            assert_eq!(l["index"], r["index"]);
            assert_eq!(l["chosen_tokens"], r["n_chosen_tokens"], "{case}");
            assert_eq!(l["rejected_tokens"], r["n_rejected_tokens"], "{case}");
            for (a, b) in [("chosen_logps", "chosen_logp"), ("rejected_logps", "rejected_logp")] {
                let d = (l[a].as_f64().unwrap() - r[b].as_f64().unwrap()).abs();
                assert!(d < 1e-4, "{case} record {}: {a} {} vs transformers {} ({d:.2e} nats)", r["index"], l[a], r[b]);
                worst_logp = worst_logp.max(d);
            }
        }

        // 2. gradient norms of the DPO loss per tensor
        let loaded = dpo_model::load(&dir).unwrap();
        let policy = dpo_model::policy::Policy::new(loaded.config.clone(), &loaded.tensors).unwrap();
        let (recs, _) = dpo_data::read(&pairs8()).unwrap();
        let set = tokenize_all(&loaded.tokenizer, &recs, TokenizeSettings::default()).unwrap();
        for (ex, r) in set.examples.iter().zip(records) {
            let ids =
                |k: &str| -> Vec<u32> { r[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
            assert_eq!(
                (&ex.prompt, &ex.completions[0], &ex.completions[1]),
                (&ids("prompt_ids"), &ids("chosen_ids"), &ids("rejected_ids")),
                "{case}"
            );
        }
        let refs: Vec<Vec<f64>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (dc, dr) = offsets(i);
                vec![r["chosen_logp"].as_f64().unwrap() + dc, r["rejected_logp"].as_f64().unwrap() + dr]
            })
            .collect();
        let refs: Vec<&[f64]> = refs.iter().map(Vec::as_slice).collect();
        let examples: Vec<&Tokenized> = set.examples.iter().collect();
        let loss = dpo_train::loss::Loss::Sigmoid { beta: fx["beta"].as_f64().unwrap(), label_smoothing: 0.0 };
        let task = dpo_train::task::Task::Preference(dpo_train::loss::Objective::single(loss));
        let res = dpo_train::step::loss_and_gradients(&policy, &examples, &refs, &task, 1024, 64).unwrap();
        let mean_loss = res.stats.iter().map(|s| s.loss).sum::<f64>() / res.stats.len() as f64;
        assert!((mean_loss - fx["loss"].as_f64().unwrap()).abs() < 1e-6, "{case}: loss {mean_loss} vs {}", fx["loss"]);
        let mut sq: HashMap<String, f64> = HashMap::new();
        for ((name, _), g) in policy.params.iter().zip(&res.grads) {
            let n2 = dpo_train::optim::tensor_sq_norm(g).unwrap();
            assert!(n2 > 0.0, "{case}: {name} has no gradient");
            // Phi-3's fused tensors: the norm over their parts
            let hf = name
                .replace("self_attn.q_proj", "self_attn.qkv_proj")
                .replace("self_attn.k_proj", "self_attn.qkv_proj")
                .replace("self_attn.v_proj", "self_attn.qkv_proj")
                .replace("mlp.gate_proj", "mlp.gate_up_proj")
                .replace("mlp.up_proj", "mlp.gate_up_proj");
            let key = if fx["grad_norms"].get(name).is_some() { name.clone() } else { hf };
            *sq.entry(key).or_default() += n2;
        }
        let want = fx["grad_norms"].as_object().unwrap();
        assert_eq!(
            sq.len(),
            want.len(),
            "{case}: tensors {:?} vs transformers' {:?}",
            sq.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        let mut worst_grad = (0f64, String::new());
        for (name, n2) in &sq {
            let w = want
                .get(name)
                .unwrap_or_else(|| panic!("{case}: transformers has no parameter `{name}`"))
                .as_f64()
                .unwrap();
            let rel = (n2.sqrt() - w).abs() / w;
            assert!(
                rel < 1e-3,
                "{case}: `{name}` gradient norm {} vs transformers {w} ({rel:.2e} relative)",
                n2.sqrt()
            );
            if rel > worst_grad.0 {
                worst_grad = (rel, name.clone());
            }
        }

        // 3. a checkpoint written by dpo-rs: transformers' tensor names and config, the same model back
        let ckpt = home.path().join(format!("{case}-ckpt"));
        dpo_model::save_hf_dir(&loaded.model().unwrap(), &loaded.tokenizer, &ckpt).unwrap();
        let mut names: Vec<String> =
            dpo_model::read_safetensors(&ckpt.join("model.safetensors")).unwrap().into_keys().collect();
        let mut want_names: Vec<String> =
            fx["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
        names.sort();
        want_names.sort();
        assert_eq!(names, want_names, "{case}: checkpoint tensor names");
        let back = dpo_model::load(&ckpt).unwrap();
        assert_eq!(back.config, loaded.config, "{case}: config.json round trip");
        for (name, w) in &loaded.tensors {
            let a = w.to_tensor().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = back.tensors[name].to_tensor().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a == b, "{case}: {name} changed through a checkpoint");
        }
        summary.push(format!(
            "{case}: logps within {worst_logp:.1e} nats, gradient norms within {:.1e} ({})",
            worst_grad.0, worst_grad.1
        ));
    }
    println!("{}", summary.join("\n"));
    let _ = DType::F32;
}

/// Each family's real chat template (as TRL 1.16 ships them: Llama 3.1/3.2, Qwen2.5, Qwen3, Gemma,
/// Gemma 3, Phi-3/3.5) renders exactly as transformers' `apply_chat_template(tokenize=False)` on
/// conversations of one to four turns, with and without the generation prompt; a template's own
/// error (Gemma refuses a system turn) is an error here too
/// (`scripts/oracle/chat_template_goldens.py`).
#[test]
fn every_family_chat_template_renders_like_transformers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/chat_templates.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut n = 0;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tok = |k: &str| case[k].as_str();
        let t = dpo_data::ChatTemplate::new(
            case["template"].as_str().unwrap(),
            tok("bos_token"),
            tok("eos_token"),
            tok("pad_token"),
        )
        .unwrap();
        // Templates that print today's date (`strftime_now`): the fixture was rendered on a fixed one.
        let today = case["strftime_format"].as_str().map(|f| {
            let out = std::process::Command::new("date").arg(format!("+{f}")).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        });
        for r in case["renders"].as_array().unwrap() {
            let messages: Vec<dpo_data::Message> = r["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| dpo_data::Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let gen = match r["add_generation_prompt"].as_bool().unwrap() {
                true => dpo_data::GenerationPrompt::Add,
                false => dpo_data::GenerationPrompt::Omit,
            };
            let got = t.render(&messages, gen);
            match (r["text"].as_str(), r["error"].as_str()) {
                (Some(want), _) => {
                    let want = match (&today, case["date"].as_str()) {
                        (Some(today), Some(fixed)) => want.replace(fixed, today),
                        _ => want.to_string(),
                    };
                    assert_eq!(got.unwrap(), want, "{name}: {} (generation prompt {gen:?})", r["conversation"]);
                }
                (None, Some(err)) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(err), "{name}: {} should fail with `{err}`, got `{e}`", r["conversation"]);
                }
                _ => panic!("{name}: a render with neither text nor error"),
            }
            n += 1;
        }
    }
    assert!(n >= 60, "{n} renders");
    println!("{n} renders of {} templates equal transformers'", fx["cases"].as_array().unwrap().len());
}

/// GGUF files of each family written by llama.cpp's `convert_hf_to_gguf.py` from tiny models
/// built by transformers (`scripts/oracle/gguf_family_fixtures.py`; a 352-token byte-level BPE):
/// the tokenizer rebuilt from the metadata gives TRL's token ids, and `dpo logps` gives
/// transformers' log-probs of the original model within 1e-4 nats (llama.cpp's q/k permutation,
/// Gemma's `1 + w` norms, Phi-3's fused tensors and LongRoPE factors, Llama 3's `rope_freqs`,
/// YaRN keys, soft-capping and sliding-window keys all read back).
#[test]
fn every_family_gguf_matches_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/gguf");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let home = tempfile::tempdir().unwrap();
    let (recs, _) = dpo_data::read(&pairs8()).unwrap();
    let cases = fx["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 8);
    for (case, c) in cases {
        let gguf = dir.join(c["gguf"].as_str().unwrap());
        let records = c["records"].as_array().unwrap();
        let tok = dpo_model::load_tokenizer(&gguf).unwrap();
        let set = tokenize_all(&tok, &recs, TokenizeSettings::default()).unwrap();
        assert_eq!(set.examples.len(), records.len(), "{case}");
        for (ex, r) in set.examples.iter().zip(records) {
            let ids =
                |k: &str| -> Vec<u32> { r[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
            assert_eq!(
                (&ex.prompt, &ex.completions[0], &ex.completions[1]),
                (&ids("prompt_ids"), &ids("chosen_ids"), &ids("rejected_ids")),
                "{case}: token ids"
            );
        }
        let out = home.path().join(format!("{case}.jsonl"));
        let o = dpo(home.path(), &["logps", "--model", s(&gguf), "--data", s(&pairs8()), "--out", s(&out)]);
        assert!(o.status.success(), "{case}: dpo logps on the GGUF failed");
        let mut worst = 0f64;
        for (l, r) in lines(&out).iter().zip(records) {
            for (a, b) in [("chosen_logps", "chosen_logp"), ("rejected_logps", "rejected_logp")] {
                let d = (l[a].as_f64().unwrap() - r[b].as_f64().unwrap()).abs();
                assert!(d < 1e-4, "{case} record {}: {a} {} vs transformers {} ({d:.2e} nats)", r["index"], l[a], r[b]);
                worst = worst.max(d);
            }
        }
        println!("{case}.gguf: token ids equal, logps within {worst:.1e} nats");
    }
}

/// LoRA on Phi-3 targets its fused modules as PEFT does: one `A` and one `B` for `qkv_proj`
/// (B's rows: q, k, v) and for `gate_up_proj`; the adapter written by `dpo train --use-peft`
/// has PEFT's names and shapes, reads back to the same tensors, and merged by `dpo logps
/// --adapter` gives the trained log-probs, which differ from the base's. (PEFT itself loads it
/// with the same log-probs: scripts/oracle/families_checkpoints.sh.)
#[test]
fn phi3_lora_adapts_the_fused_modules() {
    let smol = dpo_model::load_tokenizer(&dpo_runtime::fetch::ensure_default_model().unwrap()).unwrap();
    let home = tempfile::tempdir().unwrap();
    let fx = fixtures().into_iter().find(|(c, _)| c == "phi3").unwrap().1;
    let model = model_dir(&fx, &smol, &home.path().join("phi3"));
    let out = home.path().join("run");
    let o = dpo(
        home.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&out),
            "--use-peft",
            "--lora-r",
            "4",
            "--lora-dropout",
            "0.1",
            "--max-steps",
            "3",
            "--per-device-train-batch-size",
            "4",
            "--learning-rate",
            "1e-2",
        ],
    );
    assert!(o.status.success());
    let adapter = out.join("final");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_modules"], serde_json::json!(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]));
    let tensors = dpo_model::read_safetensors(&adapter.join("adapter_model.safetensors")).unwrap();
    let c = dpo_model::load(&model).unwrap().config;
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let p = "base_model.model.model.layers.1";
    for (name, shape) in [
        (format!("{p}.self_attn.qkv_proj.lora_A.weight"), vec![4, c.hidden_size]),
        (format!("{p}.self_attn.qkv_proj.lora_B.weight"), vec![q + 2 * kv, 4]),
        (format!("{p}.mlp.gate_up_proj.lora_B.weight"), vec![2 * c.intermediate_size, 4]),
        (format!("{p}.mlp.down_proj.lora_A.weight"), vec![4, c.intermediate_size]),
    ] {
        assert_eq!(tensors.get(&name).unwrap_or_else(|| panic!("no {name}")).dims(), shape.as_slice(), "{name}");
    }
    assert_eq!(tensors.len(), 4 * 2 * c.num_hidden_layers, "one A and one B per module and layer");
    // read back and written again: the same tensors
    let read = dpo_model::adapter::Adapter::load(&adapter, &c).unwrap();
    let again = home.path().join("again");
    read.save(&again).unwrap();
    let back = dpo_model::read_safetensors(&again.join("adapter_model.safetensors")).unwrap();
    for (k, t) in &tensors {
        let (a, b) = (
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            back[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(a == b, "{k} changed through a read and write");
    }
    // merged: the trained log-probs, not the base's
    let (base_out, tuned_out) = (home.path().join("base.jsonl"), home.path().join("tuned.jsonl"));
    assert!(dpo(home.path(), &["logps", "--model", s(&model), "--data", s(&pairs8()), "--out", s(&base_out)])
        .status
        .success());
    assert!(dpo(
        home.path(),
        &["logps", "--model", s(&model), "--adapter", s(&adapter), "--data", s(&pairs8()), "--out", s(&tuned_out)]
    )
    .status
    .success());
    let moved = lines(&base_out)
        .iter()
        .zip(lines(&tuned_out))
        .map(|(a, b)| (a["chosen_logps"].as_f64().unwrap() - b["chosen_logps"].as_f64().unwrap()).abs())
        .fold(0f64, f64::max);
    assert!(moved > 1e-2, "the adapter changes nothing: {moved}");
    // a split projection is not a module of Phi-3
    let o = dpo(
        home.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&home.path().join("bad")),
            "--use-peft",
            "--lora-target-modules",
            "q_proj,v_proj",
            "--max-steps",
            "1",
        ],
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("`q_proj` is not a module of Phi-3"));
}
