use dpo::data::{tokenize_all, TokenizeSettings};
use std::path::Path;
fn main() -> anyhow::Result<()> {
    let loaded = dpo::model::load(&dpo::fetch::default_model_path())?;
    let model = loaded.model()?;
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("/work/shared/tools/oracle/golden/golden_smollm2_135m.json")?)?;
    for (ds, file) in [(0, "pairs8.jsonl"), (1, "hh_harmless32.jsonl")] {
        let path = Path::new("/work/shared/tools/oracle/golden").join(file);
        let (recs, _) = dpo::data::read(&path)?;
        let set = tokenize_all(&loaded.tokenizer, &recs, TokenizeSettings::default())?;
        let ex: Vec<_> = set.examples.iter().collect();
        let t0 = std::time::Instant::now();
        let lp = dpo::logps::dataset_logps(&model, &ex, 4096, |_| {})?;
        println!("{file}: {:?}", t0.elapsed());
        let mut worst = 0f64; let mut idm = 0;
        for (i, r) in g["datasets"][ds]["records"].as_array().unwrap().iter().enumerate() {
            let ids = |k: &str| r[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
            if ids("prompt_ids") != ex[i].prompt || ids("chosen_ids") != ex[i].completions[0] || ids("rejected_ids") != ex[i].completions[1] { idm += 1; }
            let dc = (lp[i][0] - r["chosen_logp"].as_f64().unwrap()).abs();
            let dr = (lp[i][1] - r["rejected_logp"].as_f64().unwrap()).abs();
            worst = worst.max(dc).max(dr);
        }
        println!("  id mismatches {idm}, worst logp diff {worst:.2e}");
    }
    Ok(())
}
