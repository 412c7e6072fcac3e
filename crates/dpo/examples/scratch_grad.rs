use dpo::data::{tokenize_all, TokenizeSettings};
use std::path::Path;
fn main() -> anyhow::Result<()> {
    let loaded = dpo::model::load(&dpo::fetch::default_model_path())?;
    let policy = dpo::policy::Policy::new(loaded.config.clone(), &loaded.tensors)?;
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("/work/shared/tools/oracle/golden/golden_smollm2_135m.json")?)?;
    let max_tokens: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1024);
    for (ds, file) in [(0, "pairs8.jsonl"), (1, "hh_harmless32.jsonl")] {
        let (recs, _) = dpo::data::read(&Path::new("/work/shared/tools/oracle/golden").join(file))?;
        let set = tokenize_all(&loaded.tokenizer, &recs, TokenizeSettings::default())?;
        let ex: Vec<_> = set.examples.iter().collect();
        let gd = &g["datasets"][ds];
        let refs: Vec<Vec<f64>> = gd["records"].as_array().unwrap().iter().map(|r| vec![r["ref_perturbed_chosen_logp"].as_f64().unwrap(), r["ref_perturbed_rejected_logp"].as_f64().unwrap()]).collect();
        let rr: Vec<&[f64]> = refs.iter().map(|r| r.as_slice()).collect();
        let t0 = std::time::Instant::now();
        let res = dpo::step::loss_and_gradients(&policy, &ex, &rr, &dpo::loss::Loss::Sigmoid { beta: 0.1, label_smoothing: 0.0 }, max_tokens)?;
        let el = t0.elapsed();
        let mean_loss: f64 = res.stats.iter().map(|s| s.loss).sum::<f64>() / res.stats.len() as f64;
        let gold = &gd["grad_ref_perturbed"];
        let mut worst = (0f64, String::new());
        let mut tot = 0.0;
        for ((name, _), gr) in policy.params.iter().zip(&res.grads) {
            let n = dpo::optim::tensor_sq_norm(gr)?; tot += n;
            let want = gold["per_tensor"][name].as_f64().unwrap();
            let rel = (n.sqrt() - want).abs() / want;
            if rel > worst.0 { worst = (rel, name.clone()); }
        }
        println!("{file}: {el:?} loss {mean_loss:.6} (gold {}), total norm {:.5} (gold {:.5}), worst rel {:.2e} at {}", gold["loss"], tot.sqrt(), gold["total_grad_norm"].as_f64().unwrap(), worst.0, worst.1);
        println!("peak rss {:?} MB", dpo::io::peak_rss_bytes().map(|b| b / 1 << 20));
    }
    Ok(())
}
