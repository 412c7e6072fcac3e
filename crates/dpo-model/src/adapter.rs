//! LoRA adapters (Hu et al. 2021, arXiv:2106.09685, eq. 3): a frozen linear layer
//! `y = x W^T` becomes `y = x W^T + s * (dropout(x) A^T) B^T` with `A` `[r, in]`, `B` `[out, r]`
//! trained and `s = alpha / r` (rsLoRA, Kalajdzievski 2023: `alpha / sqrt(r)`).
//!
//! Initialisation is PEFT's default (`init_lora_weights=True`): `A` Kaiming-uniform with
//! `a = sqrt(5)` (uniform in `[-1/sqrt(in), 1/sqrt(in)]`), `B` zero, so the adapted model starts
//! as the base. Adapters are written and read in PEFT's layout (`adapter_config.json` and
//! `adapter_model.safetensors` with names such as
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), which
//! `peft.PeftModel.from_pretrained` loads.

use super::safetensors::write_safetensors;
use super::{hf_module, Family, LlamaConfig, Proj, Weight};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use dpo_kernels::{apply_dropout, mix_seed};
use dpo_runtime::io::write_dir_atomic;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

/// The LoRA defaults (TRL's `ModelConfig`: r 16, alpha 32, dropout 0.05, all linear layers).
pub mod defaults {
    pub const R: usize = 16;
    pub const ALPHA: f64 = 32.0;
    pub const DROPOUT: f64 = 0.05;
    pub const TARGET_MODULES: &str = "all-linear";
}

/// `--use-peft` and the `--lora-*` flags (TRL `ModelConfig`'s names).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct LoraConfig {
    /// Train a LoRA adapter on the frozen base instead of every weight (checkpoints are PEFT adapter directories).
    #[cfg_attr(feature = "cli", arg(long))]
    pub use_peft: bool,
    /// LoRA rank r.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::R))]
    pub lora_r: usize,
    /// LoRA alpha: the adapter's output is scaled by alpha / r (alpha / sqrt(r) with --use-rslora).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::ALPHA))]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input in training (off in evaluation and reference passes).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::DROPOUT))]
    pub lora_dropout: f64,
    /// `all-linear` (q,k,v,o,gate,up,down) or PEFT module names, comma-separated (`q_proj,v_proj`).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ',', default_value = defaults::TARGET_MODULES))]
    pub lora_target_modules: Vec<String>,
    /// Scale by alpha / sqrt(r) (rank-stabilised LoRA).
    #[cfg_attr(feature = "cli", arg(long))]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            use_peft: false,
            lora_r: defaults::R,
            lora_alpha: defaults::ALPHA,
            lora_dropout: defaults::DROPOUT,
            lora_target_modules: vec![defaults::TARGET_MODULES.into()],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// `s`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.lora_r as f64).sqrt()
        } else {
            self.lora_alpha / self.lora_r as f64
        }
    }

    /// The adapted projections (Phi-3's fused `qkv_proj` and `gate_up_proj` name their parts).
    /// Errors: an unknown module name (listing the valid ones).
    pub fn targets(&self) -> Result<Vec<Proj>> {
        let mut out = Vec::new();
        for name in &self.lora_target_modules {
            let name = name.trim();
            match name {
                "all-linear" => out.extend(Proj::ALL),
                "qkv_proj" => out.extend([Proj::Q, Proj::K, Proj::V]),
                "gate_up_proj" => out.extend([Proj::Gate, Proj::Up]),
                _ => out.push(Proj::ALL.into_iter().find(|p| p.name() == name).with_context(|| {
                    format!(
                        "--lora-target-modules: `{name}` is not a module of the model (all-linear, {}; Phi-3: qkv_proj, gate_up_proj)",
                        Proj::ALL.map(Proj::name).join(", ")
                    )
                })?),
            }
        }
        out.sort();
        out.dedup();
        ensure!(!out.is_empty(), "--lora-target-modules names no module");
        Ok(out)
    }

    /// Refuses settings no adapter can have: rank 0, dropout outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        ensure!(self.lora_r > 0, "--lora-r must be at least 1");
        ensure!((0.0..1.0).contains(&self.lora_dropout), "--lora-dropout must be in [0, 1), got {}", self.lora_dropout);
        self.targets().map(|_| ())
    }
}

/// The adapter of one linear layer: `s * (dropout(x) A^T) B^T`.
#[derive(Clone)]
pub struct Lora {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scale: f64,
    /// Dropout probability on the input in training.
    pub dropout: f64,
}

impl Lora {
    /// `s * (dropout(x) A^T) B^T` for `x` `[rows, in]` from candle ops; `mask_seed` (training)
    /// draws the dropout mask, `None` applies none. (A frozen layer uses the fused
    /// [`dpo_kernels::lora_linear`] instead, which stores no intermediate.)
    pub fn forward(&self, x: &Tensor, mask_seed: Option<u64>) -> Result<Tensor> {
        let x = match mask_seed {
            Some(seed) if self.dropout > 0.0 => (x * dropout_mask(x.dims(), self.dropout, seed, x.dtype())?)?,
            _ => x.clone(),
        };
        Ok((x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale)?)
    }

    pub fn detach(&self) -> Self {
        Self { a: self.a.detach(), b: self.b.detach(), ..self.clone() }
    }
}

/// Inverted dropout's mask as a tensor: `1 / (1 - p)` or `0` per entry, drawn as
/// [`dpo_kernels::apply_dropout`] draws it from `seed` (the mask the fused op applies).
pub fn dropout_mask(dims: &[usize], p: f64, seed: u64, dtype: DType) -> Result<Tensor> {
    let mut mask = vec![1f32; dims.iter().product()];
    apply_dropout(&mut mask, p, seed);
    Ok(Tensor::from_vec(mask, dims, &Device::Cpu)?.to_dtype(dtype)?)
}

/// The adapter of one projection of one layer.
#[derive(Clone)]
pub struct AdapterModule {
    pub layer: usize,
    pub proj: Proj,
    /// `[r, in]`, `[out, r]`.
    pub a: Tensor,
    pub b: Tensor,
}

/// A set of LoRA adapters over a model: what a PEFT adapter directory holds.
#[derive(Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    /// The family of the model it adapts (decides the PEFT module names: Phi-3's fused ones).
    pub family: Family,
    /// `base_model_name_or_path` of `adapter_config.json`.
    pub base_model: String,
    /// Layer by layer, projections in [`Proj`] order.
    pub modules: Vec<AdapterModule>,
}

/// PEFT's name of the LoRA tensor of the module holding `proj` in a model of `family`:
/// `base_model.model.model.layers.{layer}.{self_attn|mlp}.{module}.lora_{A|B}.weight`
/// ([`hf_module`]: Phi-3's `qkv_proj`, `gate_up_proj`).
pub fn peft_name(family: Family, layer: usize, proj: Proj, which: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{which}.weight", hf_module(family, proj).0)
}

/// The names of `config`'s target modules exist in `model`: Phi-3 has `qkv_proj` and
/// `gate_up_proj` instead of their parts, other families the parts only.
fn check_family(config: &LoraConfig, model: &LlamaConfig) -> Result<()> {
    let fused = ["qkv_proj", "gate_up_proj"];
    let phi3 = model.family == Family::Phi3;
    for name in config.lora_target_modules.iter().map(|n| n.trim()) {
        let part =
            Proj::ALL.into_iter().find(|p| p.name() == name).is_some_and(|p| hf_module(Family::Phi3, p).1.len() > 1);
        ensure!(
            !(phi3 && part),
            "`{name}` is not a module of Phi-3 (it fuses q/k/v into qkv_proj and gate/up into gate_up_proj)"
        );
        ensure!(
            phi3 || !fused.contains(&name),
            "`{name}` is not a module of {} (only Phi-3 fuses its projections)",
            model.family.model_type()
        );
    }
    Ok(())
}

impl Adapter {
    /// A fresh adapter for `model` with PEFT's initialisation (`A` Kaiming-uniform, `B` zero)
    /// from a seeded generator; f32, or f64 for tests.
    pub fn init(config: &LoraConfig, model: &LlamaConfig, base_model: &str, seed: u64, dtype: DType) -> Result<Self> {
        config.validate()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(seed, 0x10_4A));
        let r = config.lora_r;
        let targets = config.targets()?;
        check_family(config, model)?;
        let mut modules: Vec<AdapterModule> = Vec::new();
        for layer in 0..model.num_hidden_layers {
            for &proj in &targets {
                let [out, inp] = proj.shape(model);
                // the parts of a fused module share its A (drawn for the first part)
                let leader = hf_module(model.family, proj).1[0];
                let a = match modules.iter().find(|m| m.layer == layer && m.proj == leader && leader != proj) {
                    Some(m) => m.a.clone(),
                    None => {
                        let bound = 1.0 / (inp as f64).sqrt();
                        let a: Vec<f64> = (0..r * inp).map(|_| rng.random_range(-bound..bound)).collect();
                        Tensor::from_vec(a, (r, inp), &Device::Cpu)?.to_dtype(dtype)?
                    }
                };
                let b = Tensor::zeros((out, r), dtype, &Device::Cpu)?;
                modules.push(AdapterModule { layer, proj, a, b });
            }
        }
        Ok(Self { config: config.clone(), family: model.family, base_model: base_model.to_string(), modules })
    }

    /// The module's weight change `s * B A` `[out, in]` (what merging adds to `W`).
    pub fn delta(&self, m: &AdapterModule) -> Result<Tensor> {
        Ok((m.b.matmul(&m.a)? * self.config.scale())?)
    }

    /// The adapter of `layer`'s `proj`, if it has one.
    pub fn module(&self, layer: usize, proj: Proj) -> Option<&AdapterModule> {
        self.modules.iter().find(|m| m.layer == layer && m.proj == proj)
    }

    /// Writes `dir` as a PEFT adapter directory (`adapter_config.json`, and
    /// `adapter_model.safetensors` in f32), filled under a temporary name and renamed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_dir_atomic(dir, |tmp| self.write_files(tmp))
    }

    /// Writes the files of [`Adapter::save`] into the existing directory `tmp`.
    pub fn write_files(&self, tmp: &Path) -> Result<()> {
        let c = &self.config;
        let mut targets: Vec<String> = c
            .targets()?
            .into_iter()
            .map(|p| hf_module(self.family, p).0.rsplit('.').next().unwrap_or("").to_string())
            .collect();
        targets.dedup();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": c.lora_r,
            "lora_alpha": c.lora_alpha,
            "lora_dropout": c.lora_dropout,
            "target_modules": targets,
            "use_rslora": c.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
        });
        let mut tensors = Vec::with_capacity(2 * self.modules.len());
        for m in &self.modules {
            // a fused module (Phi-3): written once, at its first part, B the parts' rows in order
            let parts = hf_module(self.family, m.proj).1;
            if parts[0] != m.proj {
                continue;
            }
            let bs = parts
                .iter()
                .map(|&p| {
                    self.module(m.layer, p)
                        .map(|x| x.b.clone())
                        .with_context(|| format!("layer {}: LoRA on {} without {}", m.layer, m.proj.name(), p.name()))
                })
                .collect::<Result<Vec<_>>>()?;
            tensors.push((peft_name(self.family, m.layer, m.proj, 'A'), Weight::Tensor(m.a.clone())));
            tensors.push((peft_name(self.family, m.layer, m.proj, 'B'), Weight::Tensor(Tensor::cat(&bs, 0)?)));
        }
        std::fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&config)?)?;
        write_safetensors(&tmp.join("adapter_model.safetensors"), &tensors, ::safetensors::Dtype::F32)
    }

    /// Reads a PEFT LoRA adapter directory (ours or PEFT's) for a model with config `model`.
    /// Errors name the file and field: not LoRA, a feature we do not implement (DoRA, biases,
    /// `modules_to_save`, per-module ranks), a target module the model does not have, a missing
    /// tensor or one whose shape does not fit.
    pub fn load(dir: &Path, model: &LlamaConfig) -> Result<Self> {
        let (config, base_model) = read_config(dir, model)?;
        let modules = read_modules(dir, &config, model)?;
        Ok(Self { config, family: model.family, base_model, modules })
    }
}

/// An adapter directory's `adapter_config.json`: the LoRA settings (each PEFT feature we do not
/// implement refused by name) and the base model it names.
fn read_config(dir: &Path, model: &LlamaConfig) -> Result<(LoraConfig, String)> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let at = |field: &str| format!("{}: field `{field}`", cfg_path.display());
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    let peft_type = field("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    ensure!(peft_type == "LORA", "{}: `{peft_type}`; only LORA adapters are supported", at("peft_type"));
    // Every feature PEFT applies and we do not is refused by name (a silent drop would give
    // other numbers than PEFT's).
    let empty = |x: &Value| x.as_array().is_some_and(|a| a.is_empty()) || x.as_object().is_some_and(|o| o.is_empty());
    for (k, ok) in [
        ("use_dora", field("use_dora").is_none_or(|x| x == &Value::Bool(false))),
        ("lora_bias", field("lora_bias").is_none_or(|x| x == &Value::Bool(false))),
        ("use_qalora", field("use_qalora").is_none_or(|x| x == &Value::Bool(false))),
        ("bias", field("bias").is_none_or(|x| x == "none")),
        ("fan_in_fan_out", field("fan_in_fan_out").is_none_or(|x| x == &Value::Bool(false))),
        ("modules_to_save", field("modules_to_save").is_none_or(empty)),
        ("rank_pattern", field("rank_pattern").is_none_or(empty)),
        ("alpha_pattern", field("alpha_pattern").is_none_or(empty)),
        ("layers_to_transform", field("layers_to_transform").is_none()),
        ("layer_replication", field("layer_replication").is_none()),
        ("exclude_modules", field("exclude_modules").is_none_or(empty)),
        ("target_parameters", field("target_parameters").is_none_or(empty)),
        ("trainable_token_indices", field("trainable_token_indices").is_none_or(empty)),
        ("alora_invocation_tokens", field("alora_invocation_tokens").is_none_or(empty)),
    ] {
        ensure!(ok, "{}: {} is not supported", at(k), v[k]);
    }
    let r =
        field("r").and_then(Value::as_u64).with_context(|| format!("{}: missing or not an integer", at("r")))? as usize;
    let alpha = field("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let targets: Vec<String> = match field("target_modules") {
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).with_context(|| format!("{}: not a list of names", at("target_modules")))).collect::<Result<_>>()?,
        Some(Value::String(s)) if s == "all-linear" => vec![s.clone()],
        Some(x) => bail!("{}: {x} is not supported (a list of module names, or \"all-linear\"; PEFT reads another string as a regular expression)", at("target_modules")),
        None => bail!("{}: missing", at("target_modules")),
    };
    let config = LoraConfig {
        use_peft: true,
        lora_r: r,
        lora_alpha: alpha,
        lora_dropout: field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        lora_target_modules: targets,
        use_rslora: field("use_rslora").and_then(Value::as_bool).unwrap_or(false),
    };
    config.targets().with_context(|| at("target_modules"))?;
    check_family(&config, model).with_context(|| at("target_modules"))?;
    let base_model = field("base_model_name_or_path").and_then(Value::as_str).unwrap_or("").to_string();
    Ok((config, base_model))
}

/// An adapter directory's `adapter_model.safetensors`: `A` and `B` of every target module of
/// `config` in every layer of `model` (a fused module's parts read their rows of its `B`).
/// Errors: a missing tensor, one of another shape, or one that is not an `A` or `B` read.
fn read_modules(dir: &Path, config: &LoraConfig, model: &LlamaConfig) -> Result<Vec<AdapterModule>> {
    let r = config.lora_r;
    let st_path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&st_path, &Device::Cpu)
        .with_context(|| format!("reading {}", st_path.display()))?;
    let mut modules = Vec::new();
    let mut used = std::collections::HashSet::new();
    for layer in 0..model.num_hidden_layers {
        for proj in config.targets()? {
            used.insert(peft_name(model.family, layer, proj, 'A'));
            used.insert(peft_name(model.family, layer, proj, 'B'));
            // a fused module's B holds its parts' rows in order
            let parts = hf_module(model.family, proj).1;
            let offset: usize = parts.iter().take_while(|&&p| p != proj).map(|p| p.shape(model)[0]).sum();
            let fused_out: usize = parts.iter().map(|p| p.shape(model)[0]).sum();
            let [out, inp] = proj.shape(model);
            let get = |which: char, shape: [usize; 2]| -> Result<Tensor> {
                let name = peft_name(model.family, layer, proj, which);
                let t = tensors.get(&name).with_context(|| format!("{}: no tensor `{name}`", st_path.display()))?;
                ensure!(
                    t.dims() == shape,
                    "{}: `{name}` has shape {:?}, the model and r = {r} need {shape:?}",
                    st_path.display(),
                    t.dims()
                );
                Ok(t.to_dtype(DType::F32)?)
            };
            let b = get('B', [fused_out, r])?.narrow(0, offset, out)?.contiguous()?;
            modules.push(AdapterModule { layer, proj, a: get('A', [r, inp])?, b });
        }
    }
    if let Some(extra) = tensors.keys().filter(|k| !used.contains(*k)).min() {
        bail!("{}: tensor `{extra}` is not a LoRA A or B of the target modules (only those are read; PEFT would apply it)", st_path.display());
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_are_reproducible_and_have_the_right_rate() {
        let a = dropout_mask(&[300, 200], 0.1, 7, DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = dropout_mask(&[300, 200], 0.1, 7, DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let c = dropout_mask(&[300, 200], 0.1, 8, DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let dropped = a.iter().filter(|&&x| x == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        assert!(a.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.9).abs() < 1e-6));
    }

    fn tiny() -> LlamaConfig {
        LlamaConfig::from_hf_json(
            &json!({"vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1}),
        )
        .unwrap()
    }

    #[test]
    fn saved_adapters_load_back_and_unsupported_features_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let cfg = tiny();
        let lora = LoraConfig {
            use_peft: true,
            lora_r: 2,
            lora_target_modules: vec!["q_proj".into(), "v_proj".into()],
            ..Default::default()
        };
        let a = Adapter::init(&lora, &cfg, "base", 1, DType::F32).unwrap();
        let dir = d.path().join("ad");
        a.save(&dir).unwrap();
        let back = Adapter::load(&dir, &cfg).unwrap();
        assert_eq!(back.modules.len(), 4);
        assert_eq!(back.modules[0].a.to_vec2::<f32>().unwrap(), a.modules[0].a.to_vec2::<f32>().unwrap());
        let cfg_path = dir.join("adapter_config.json");
        let original: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        for (key, value, says) in [
            ("lora_bias", json!(true), "field `lora_bias`: true is not supported"),
            ("use_dora", json!(true), "field `use_dora`: true is not supported"),
            ("target_modules", json!(".*q_proj"), "PEFT reads another string as a regular expression"),
            ("target_modules", json!(["qkv_proj"]), "`qkv_proj` is not a module"),
        ] {
            let mut v = original.clone();
            v[key] = value;
            std::fs::write(&cfg_path, v.to_string()).unwrap();
            let e = format!("{:#}", Adapter::load(&dir, &cfg).err().unwrap());
            assert!(e.contains("adapter_config.json") && e.contains(says), "{e}");
        }
        std::fs::write(&cfg_path, original.to_string()).unwrap();
        let mut tensors = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
        tensors.insert(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias".into(),
            Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
        let e = format!("{:#}", Adapter::load(&dir, &cfg).err().unwrap());
        assert!(e.contains("lora_B.bias` is not a LoRA A or B"), "{e}");
    }

    #[test]
    fn targets_and_scale() {
        let mut c = LoraConfig::default();
        assert_eq!(c.targets().unwrap(), Proj::ALL.to_vec());
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 8.0);
        c.lora_target_modules = vec!["v_proj".into(), "q_proj".into()];
        assert_eq!(c.targets().unwrap(), vec![Proj::Q, Proj::V]);
        c.lora_target_modules = vec!["qkv".into()];
        assert!(c.targets().unwrap_err().to_string().contains("`qkv` is not a module"));
    }
}
