//! A corpus of malformed and hostile inputs, one per failure mode of every reader (records in
//! JSONL / JSON / gzip / Parquet, reference log-prob files, TOML configs, GGUF headers,
//! safetensors headers, config.json, tokenizer files, chat templates, adapters, checkpoints):
//! each must make `dpo` exit non-zero with the expected message naming the file (and the line
//! or field where it has one), never panic, and write nothing.

mod common;

use common::{dpo, s, tiny_model};
use std::path::{Path, PathBuf};

/// One malformed input: what to write, the command's arguments (with `{dir}` for the case's
/// directory), and a part of the expected message.
struct Case {
    name: &'static str,
    args: Vec<String>,
    expect: String,
}

fn gguf(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn gguf_str(x: &str) -> Vec<u8> {
    [&(x.len() as u64).to_le_bytes()[..], x.as_bytes()].concat()
}

fn safetensors(header: &str, data: usize) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), &vec![0u8; data]].concat()
}

/// A copy of the model directory `model` under `dir/name`, then changed by `edit`.
fn model_copy(model: &Path, dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    edit(&to);
    to
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn every_reader_refuses_bad_input_by_name_without_panic_or_output() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let model = tiny_model(dir);
    let ok = dir.join("ok.jsonl");
    std::fs::write(&ok, "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n").unwrap();
    let conv = dir.join("conv.jsonl");
    std::fs::write(&conv, r#"{"chosen":[{"role":"user","content":"hi"},{"role":"assistant","content":"a"}],"rejected":[{"role":"user","content":"hi"},{"role":"assistant","content":"b"}]}"#).unwrap();
    let mut cases: Vec<Case> = Vec::new();
    let file = |name: &str, bytes: &[u8]| -> String {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        s(&p).to_string()
    };
    let train = |data: &str, name: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            s(&model),
            "--data",
            data,
            "--output-dir",
            s(&dir.join(format!("out-{name}"))),
            "--max-steps",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let logps = |model: &str, name: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["logps", "--model", model, "--data", s(&ok), "--out", s(&dir.join(format!("out-{name}.jsonl")))]
                .iter()
                .map(|x| x.to_string())
                .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let mut add = |name: &'static str, args: Vec<String>, expect: String| cases.push(Case { name, args, expect });

    // Records.
    let f = file(
        "bad_json.jsonl",
        b"{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\": \"a\", \"chosen\": \n",
    );
    add("invalid JSON line", train(&f, "1", &[]), format!("{f}:2: not valid JSON"));
    let f = file("missing.jsonl", b"{\"prompt\":\"a\",\"chosen\":\"b\"}\n");
    add("missing field", train(&f, "2", &[]), format!("{f}:1: missing field `rejected`"));
    let f = file("wrong_type.jsonl", b"{\"prompt\":\"a\",\"chosen\":5,\"rejected\":\"c\"}\n");
    add(
        "wrong field type",
        train(&f, "3", &[]),
        format!("{f}:1: field `chosen` must be a string or a list of messages, found a number"),
    );
    let f = file("bad.jsonl.gz", b"not gzip at all");
    add("not gzip", train(&f, "4", &[]), format!("{f}:1: reading: invalid gzip header"));
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&b"{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n".repeat(200)).unwrap();
        e.finish().unwrap()
    };
    let f = file("truncated.jsonl.gz", &gz[..gz.len() / 2]);
    add("truncated gzip", train(&f, "5", &[]), format!("{f}:1: reading: incomplete deflate stream"));
    let bomb = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..80 {
            e.write_all(&chunk).unwrap();
        }
        e.finish().unwrap()
    };
    let f = file("bomb.jsonl.gz", &bomb);
    add("gzip bomb: an 80 MiB line", train(&f, "bomb", &[]), format!("{f}:1: reading: a line longer than 64 MiB"));
    let f = file("bad.parquet", b"PAR1garbage");
    add("not Parquet", train(&f, "6", &[]), format!("{f}: not a Parquet file"));
    let f = file("empty.jsonl", b"");
    add("empty file", train(&f, "7", &[]), format!("{f}: no records"));
    let f = file("list.jsonl", b"[1, 2]\n");
    add("a line that is a list", train(&f, "8", &[]), format!("{f}:1: expected a JSON object, found a list"));
    let f = file("latin1.jsonl", b"{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\xff\xfe\n");
    add("not UTF-8", train(&f, "9", &[]), format!("{f}:2: reading: stream did not contain valid UTF-8"));
    let f = file("no_layout.jsonl", b"{\"foo\":\"a\"}\n");
    add("no layout fits", train(&f, "10", &[]), format!("{f}:1: the record fits no layout (its fields: foo)"));
    let f = file(
        "score.jsonl",
        b"{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\",\"score_chosen\":\"hi\",\"score_rejected\":1}\n",
    );
    add(
        "ODPO score not a number",
        train(&f, "11", &["--loss", "odpo"]),
        format!("{f}:1: `score_chosen` must be a number, found a string"),
    );
    let f = file("truncated.json", b"{\"a\": 1");
    add("truncated JSON file", train(&f, "12", &[]), format!("{f}:1: not valid JSON"));
    let f = s(&dir.join("absent.jsonl")).to_string();
    add("missing data file", train(&f, "13", &[]), format!("opening {f}: No such file or directory"));
    add("unknown loss", train(s(&ok), "14", &["--loss", "nope"]), "unknown loss `nope`".into());

    // Reference log-prob files.
    let f = file("ref_missing.jsonl", b"{\"index\": 0, \"chosen_logps\": -1.0}\n");
    add(
        "log-prob field missing",
        train(s(&ok), "15", &["--ref-logps", &f]),
        format!("{f}:1: missing number field `rejected_logps`"),
    );
    let line = "{\"index\": 0, \"chosen_logps\": -1.0, \"rejected_logps\": -2.0, \"chosen_tokens\": 1, \"rejected_tokens\": 1}\n";
    let f = file("ref_dup.jsonl", line.repeat(2).as_bytes());
    add(
        "log-prob record twice",
        train(s(&ok), "16", &["--ref-logps", &f]),
        format!("{f}:2: record index 0 appears twice"),
    );
    let f = file("ref_tokens.jsonl", line.replace("\"chosen_tokens\": 1", "\"chosen_tokens\": 99").as_bytes());
    add(
        "log-prob token counts",
        train(s(&ok), "17", &["--ref-logps", &f]),
        format!("{f}: record 0: token counts [99, 1] in the file"),
    );
    let f = file("ref_bad.jsonl", b"nope\n");
    add("log-prob line not JSON", train(s(&ok), "18", &["--ref-logps", &f]), format!("{f}:1: not valid JSON"));

    // TOML configurations.
    let f = file("unknown.toml", b"beta = 0.1\nbogus_key = 3\n");
    add(
        "unknown TOML key",
        train(s(&ok), "19", &["--config", &f]),
        format!("{f}: `bogus_key` is not an option of `dpo train`"),
    );
    let f = file("broken.toml", b"garbage = [");
    add("invalid TOML", train(s(&ok), "20", &["--config", &f]), format!("{f}: invalid TOML"));

    // GGUF headers.
    let v3 = 3u32.to_le_bytes();
    let f = file("magic.gguf", b"XXXX");
    add("GGUF magic", logps(&f, "21", &[]), format!("{f}: not a GGUF file: unknown magic"));
    let f = file("tensors.gguf", &gguf(&[b"GGUF", &v3, &u64::MAX.to_le_bytes(), &0u64.to_le_bytes()]));
    add("GGUF tensor count", logps(&f, "22", &[]), format!("{f}: not a GGUF file: gguf: tensor_count"));
    let f = file("kvs.gguf", &gguf(&[b"GGUF", &v3, &0u64.to_le_bytes(), &(1u64 << 40).to_le_bytes()]));
    add("GGUF metadata count", logps(&f, "23", &[]), format!("{f}: not a GGUF file: gguf: metadata_kv_count"));
    let f = file(
        "string.gguf",
        &gguf(&[
            b"GGUF",
            &v3,
            &0u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &gguf_str("general.architecture"),
            &8u32.to_le_bytes(),
            &(1u64 << 60).to_le_bytes(),
        ]),
    );
    add("GGUF string length", logps(&f, "24", &[]), format!("{f}: not a GGUF file: gguf: string length"));
    let f = file(
        "array.gguf",
        &gguf(&[
            b"GGUF",
            &v3,
            &0u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &gguf_str("tokenizer.ggml.tokens"),
            &9u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &(1u64 << 50).to_le_bytes(),
        ]),
    );
    add("GGUF array length", logps(&f, "25", &[]), format!("{f}: not a GGUF file: gguf: array length"));
    let f = file("short.gguf", &gguf(&[b"GGUF", &v3, b"\x01"]));
    add("GGUF cut short", logps(&f, "26", &[]), format!("{f}: not a GGUF file"));
    let f = file("model.bin", b"");
    add(
        "not a model",
        logps(&f, "27", &[]),
        format!("model {f}: expected a .gguf file or a Hugging Face model directory"),
    );

    // Safetensors headers.
    let st = |name: &str, bytes: Vec<u8>| {
        model_copy(&model, dir, name, |m| std::fs::write(m.join("model.safetensors"), bytes).unwrap())
    };
    let m = st("st_size", [&(1u64 << 40).to_le_bytes()[..], b"{}"].concat());
    add(
        "safetensors header size",
        logps(s(&m), "28", &[]),
        format!("{}/model.safetensors: header size 1099511627776 does not fit the file", s(&m)),
    );
    let m = st("st_json", safetensors("notjson!", 0));
    add(
        "safetensors header not JSON",
        logps(s(&m), "29", &[]),
        format!("{}/model.safetensors: the header is not a JSON object", s(&m)),
    );
    let m = st(
        "st_offsets",
        safetensors(
            r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[49152,16],"data_offsets":[0,3145728]}}"#,
            100,
        ),
    );
    add(
        "safetensors offsets outside",
        logps(s(&m), "30", &[]),
        format!("{}/model.safetensors: tensor `model.embed_tokens.weight`: offsets 0..3145728", s(&m)),
    );
    let m = st(
        "st_dtype",
        safetensors(r#"{"model.embed_tokens.weight":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, 8),
    );
    add(
        "safetensors dtype",
        logps(s(&m), "31", &[]),
        format!("{}/model.safetensors: tensor `model.embed_tokens.weight` has dtype I64", s(&m)),
    );
    let m = st("st_shape", safetensors(r#"{"x":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,8]}}"#, 8));
    add(
        "safetensors shape vs size",
        logps(s(&m), "32", &[]),
        format!("{}/model.safetensors: tensor `x`: offsets 0..8 and shape [1000000, 1000000] do not fit", s(&m)),
    );
    let m = st(
        "st_missing",
        safetensors(r#"{"model.norm.weight":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}"#, 64),
    );
    add(
        "missing tensor",
        logps(s(&m), "33", &[]),
        format!("{} (with {}/config.json): missing tensor `model.embed_tokens.weight`", s(&m), s(&m)),
    );

    // config.json and tokenizer files.
    let m =
        model_copy(&model, dir, "cfg_json", |m| std::fs::write(m.join("config.json"), "{\"hidden_size\": ").unwrap());
    add("config.json not JSON", logps(s(&m), "34", &[]), format!("{}/config.json: invalid JSON", s(&m)));
    let m = model_copy(&model, dir, "cfg_field", |m| {
        edit_json(&m.join("config.json"), |v| drop(v.as_object_mut().unwrap().remove("hidden_size")))
    });
    add(
        "config.json field missing",
        logps(s(&m), "35", &[]),
        format!("{}/config.json: config.json: missing or non-integer field `hidden_size`", s(&m)),
    );
    let m = model_copy(&model, dir, "cfg_heads", |m| {
        edit_json(&m.join("config.json"), |v| v["num_attention_heads"] = 0.into())
    });
    add(
        "config.json zero heads",
        logps(s(&m), "36", &[]),
        format!("{}/config.json: `num_attention_heads` is 0", s(&m)),
    );
    let m = model_copy(&model, dir, "cfg_vocab", |m| {
        edit_json(&m.join("config.json"), |v| v["vocab_size"] = 1_000_000_000_000_000u64.into())
    });
    add("config.json absurd vocabulary", logps(s(&m), "37", &[]), format!("{} (with {}/config.json): tensor `model.embed_tokens.weight` has shape [49152, 16], the config needs [1000000000000000, 16]", s(&m), s(&m)));
    let m =
        model_copy(&model, dir, "tok_json", |m| std::fs::write(m.join("tokenizer.json"), "{\"model\": 1}").unwrap());
    add("tokenizer.json invalid", logps(s(&m), "38", &[]), format!("{}/tokenizer.json: ", s(&m)));
    let m = model_copy(&model, dir, "tok_missing", |m| std::fs::remove_file(m.join("tokenizer.json")).unwrap());
    add("tokenizer.json missing", logps(s(&m), "39", &[]), format!("{}/tokenizer.json: No such file", s(&m)));

    // Chat templates.
    let template = |name: &str, t: &str| {
        model_copy(&model, dir, name, |m| {
            edit_json(&m.join("tokenizer_config.json"), |v| v["chat_template"] = t.into())
        })
    };
    let m = template(
        "tpl_fuel",
        "{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    );
    add(
        "template without end",
        train_with(&m, &conv, dir, "40"),
        format!("{}:1: chat template: engine ran out of fuel", s(&conv)),
    );
    let m = template("tpl_recursion", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}");
    add(
        "template recursion",
        train_with(&m, &conv, dir, "41"),
        format!("{}:1: chat template: invalid operation: recursion limit exceeded", s(&conv)),
    );
    let m = template("tpl_syntax", "{% for %}");
    add("template syntax", train_with(&m, &conv, dir, "42"), "chat template: syntax error".into());

    // Adapters.
    let adapter = dir.join("adapter");
    assert!(dpo(
        dir,
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&ok),
            "--output-dir",
            s(&adapter),
            "--max-steps",
            "1",
            "--use-peft",
            "--lora-r",
            "2"
        ]
    )
    .status
    .success());
    let a = model_copy(&adapter.join("final"), dir, "dora", |a| {
        edit_json(&a.join("adapter_config.json"), |v| v["use_dora"] = true.into())
    });
    add(
        "DoRA adapter",
        logps(s(&model), "43", &["--adapter", s(&a)]),
        format!("{}/adapter_config.json: field `use_dora`: true is not supported", s(&a)),
    );
    let a = model_copy(&adapter.join("final"), dir, "adapter_json", |a| {
        std::fs::write(a.join("adapter_config.json"), "{").unwrap()
    });
    add(
        "adapter config not JSON",
        logps(s(&model), "44", &["--adapter", s(&a)]),
        format!("{}/adapter_config.json: not valid JSON", s(&a)),
    );

    // Checkpoints.
    let run = dir.join("run");
    let base: Vec<&str> = vec![
        "train",
        "--model",
        s(&model),
        "--data",
        s(&ok),
        "--output-dir",
        s(&run),
        "--max-steps",
        "3",
        "--save-steps",
        "1",
        "--per-device-train-batch-size",
        "1",
    ];
    assert!(dpo(dir, &base).status.success());
    std::fs::write(run.join("checkpoint-2/trainer_state.json"), "{\"global_step\": \"x\"").unwrap();
    std::fs::write(run.join("checkpoint-1/optimizer.safetensors"), "zz").unwrap();
    let resume = |ck: &str| -> Vec<String> {
        base.iter().map(|x| x.to_string()).chain(["--resume-from-checkpoint".into(), s(&run.join(ck)).into()]).collect()
    };
    add(
        "trainer state corrupt",
        resume("checkpoint-2"),
        format!("{}/checkpoint-2/trainer_state.json: not a trainer state", s(&run)),
    );
    add(
        "optimizer state corrupt",
        resume("checkpoint-1"),
        format!("{}/checkpoint-1/optimizer.safetensors: not a safetensors file", s(&run)),
    );
    let metrics_before = std::fs::read(run.join("metrics.jsonl")).unwrap();

    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let o = dpo(dir, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        let out = args.iter().position(|a| *a == "--output-dir" || *a == "--out").map(|i| PathBuf::from(args[i + 1]));
        let wrote = out.filter(|o| o != &run).is_some_and(|o| o.exists());
        if o.status.success() || !err.contains(&c.expect) || err.contains("panicked") || wrote {
            failures.push(format!(
                "{}: exit {:?}, wrote output: {wrote}, expected {:?}, got:\n{err}",
                c.name,
                o.status.code(),
                c.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics_before, "a refused resume touched the run");
    eprintln!("{} malformed inputs refused", cases.len());
}

/// `dpo train` of conversational `data` on `model` (its chat template applies).
fn train_with(model: &Path, data: &Path, dir: &Path, name: &str) -> Vec<String> {
    [
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--output-dir",
        s(&dir.join(format!("out-{name}"))),
        "--max-steps",
        "1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}
