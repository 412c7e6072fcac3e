fn main() -> anyhow::Result<()> {
    let loaded = dpo::model::load(&dpo::fetch::default_model_path())?;
    let model = loaded.model()?;
    let prompts: Vec<String> = std::fs::read_to_string("crates/dpo/assets/demo_prompts.txt")?.lines().take(16).map(String::from).collect();
    let cfg = dpo::sample::SampleConfig { n: 4, max_new_tokens: 32, seed: 1, ..Default::default() };
    let (recs, st) = dpo::sample::sample_texts(&model, &loaded.tokenizer, &prompts, &cfg, |_, _| {})?;
    println!("{} tokens in {:.1}s = {:.0} tok/s", st.tokens, st.seconds, st.tokens_per_second());
    for r in recs.iter().take(3) { println!("{:?} -> {:?} {:?}", r.prompt, r.completions[0], r.logps[0]); }
    Ok(())
}
