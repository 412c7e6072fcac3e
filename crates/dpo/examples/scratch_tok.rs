use dpo::data::{tokenize_all, TokenizeSettings};
use std::path::Path;
fn main() -> anyhow::Result<()> {
    let loaded = dpo::model::load(&dpo::fetch::default_model_path())?;
    let model = loaded.model()?;
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("/work/shared/tools/oracle/golden/golden_smollm2_135m.json")?)?;
    let path = Path::new("/work/shared/tools/oracle/golden/hh_harmless32.jsonl");
    let (recs, _) = dpo::data::read(path)?;
    let set = tokenize_all(&loaded.tokenizer, &recs, TokenizeSettings::default())?;
    let i: usize = std::env::args().nth(1).unwrap().parse()?;
    let ex = &set.examples[i];
    let b = dpo::batch::pack(&[ex]);
    let h = model.hidden_states(&b.ids, &b.layout)?;
    let (lp, _) = model.token_logps(&h, &b.pred_rows, b.targets.clone())?;
    let lp = lp.to_vec1::<f32>()?;
    let r = &g["datasets"][1]["records"][i];
    let gold: Vec<f64> = r["chosen_token_logps"].as_array().unwrap().iter().chain(r["rejected_token_logps"].as_array().unwrap()).map(|x| x.as_f64().unwrap()).collect();
    let mut cum = 0.0;
    for (j, (a, b)) in lp.iter().zip(&gold).enumerate() {
        let d = *a as f64 - b; cum += d;
        if d.abs() > 1e-3 { println!("tok {j}: ours {a} gold {b} diff {d:.2e}"); }
    }
    println!("prompt {} tokens; completions {:?}; sum diff {cum:.3e}", ex.prompt.len(), ex.completions.iter().map(|c| c.len()).collect::<Vec<_>>());
    Ok(())
}
