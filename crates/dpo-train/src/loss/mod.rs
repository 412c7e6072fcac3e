//! Preference losses: pure functions of policy and reference log-probs.
//!
//! Each [`Loss`] maps a [`LossBatch`] (one value per completion, `k` completions per example) to
//! one loss per example `[examples]`; an [`Objective`] is a weighted sum of losses, and the step's
//! loss is its mean over the step's examples. Formulas and sources are in each function's
//! docstring (see also `LOSSES.md` and `dpo train --loss-help`).
//!
//! - [`pairwise`]: the DPO family on `(chosen, rejected)` with a reference;
//! - [`reference_free`]: SimPO, ORPO and the NLL (SFT/RPO) term, from the policy alone;
//! - [`kto`]: KTO on unpaired examples;
//! - [`listwise`]: Plackett–Luce on rankings.

pub mod beta_dpo;
pub mod kto;
pub mod listwise;
pub mod pairwise;
pub mod reference_free;

pub use reference_free::CpoKind;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

/// The defaults of the losses' hyper-parameters (TRL 1.16's `DPOConfig`, `CPOConfig`,
/// `KTOConfig` defaults where TRL has the setting).
pub mod defaults {
    use super::FDivergenceType;

    /// The loss (`--loss`).
    pub const LOSS: &str = "sigmoid";
    pub const BETA: f64 = 0.1;
    pub const LABEL_SMOOTHING: f64 = 0.0;
    /// `exo_pair`'s label smoothing when `--label-smoothing` is 0 (TRL's value).
    pub const EXO_LABEL_SMOOTHING: f64 = 1e-3;
    pub const SIMPO_GAMMA: f64 = 0.5;
    pub const ODPO_ALPHA: f64 = 1.0;
    pub const DESIRABLE_WEIGHT: f64 = 1.0;
    pub const UNDESIRABLE_WEIGHT: f64 = 1.0;
    /// DiscoPOP's modulation temperature (TRL `discopop_tau`).
    pub const DISCOPOP_TAU: f64 = 0.05;
    /// f-DPO's divergence (TRL `f_divergence_type`): reverse KL is DPO.
    pub const F_DIVERGENCE_TYPE: FDivergenceType = FDivergenceType::ReverseKl;
    /// The alpha of the alpha-divergence (TRL `f_alpha_divergence_coef`).
    pub const F_ALPHA_DIVERGENCE_COEF: f64 = 0.5;
    /// The weight of RPO's NLL term (TRL `rpo_alpha`): none.
    pub const RPO_ALPHA: f64 = 0.0;
    /// DPOP's penalty weight lambda (Pal et al. 2024 train with 50, §5).
    pub const DPOP_LAMBDA: f64 = 50.0;
    /// The weight of CPO's NLL term on the chosen completion (TRL `CPOConfig.cpo_alpha`).
    pub const CPO_ALPHA: f64 = 1.0;
    /// AlphaPO's reward shape alpha (TRL `CPOConfig.alpha`): 0 is the log-prob itself.
    pub const ALPHAPO_ALPHA: f64 = 0.0;
}

/// The inputs of a loss for `examples` examples with `k` completions each. For a pair:
/// `[chosen, rejected]`; for KTO: `[completion, mismatched completion]` (the second only
/// estimates the KL reference point); for a ranking: best first.
pub struct LossBatch {
    /// Summed policy log-probs `[examples * k]`, nats, differentiable.
    pub policy: Tensor,
    /// Summed reference log-probs `[examples * k]`, nats (constants; zeros when no loss needs them).
    pub reference: Tensor,
    /// Completion tokens `[examples * k]` (as floats, for length-normalised losses).
    pub tokens: Tensor,
    pub k: usize,
    /// Per completion score from the data (ODPO), `[examples * k]`.
    pub scores: Option<Vec<f64>>,
    /// Per example: whether its completion is desirable (KTO).
    pub desirable: Option<Vec<bool>>,
    /// KTO's reference point `z0` when the batch is a rank's share of a larger one (its value over
    /// the whole batch, `Task::coupling_sum`); `None`: computed over this batch.
    pub kto_z0: Option<f64>,
    /// The f-divergence whose scores replace the log-ratios in the losses that take it (f-DPO).
    pub f_divergence: FDivergence,
    /// WPO's weight of each completion `[examples * k]` (constants; `Some` with `--use-weighting`).
    pub wpo_weights: Option<Vec<f64>>,
    /// Per example: the chosen-completion tokens its NLL term is divided by, the mean over the
    /// example's batch, so that the batch's mean NLL is TRL's token mean over the micro-batch
    /// ([`reference_free::nll`]); `None`: each example's own length.
    pub nll_tokens: Option<Vec<f64>>,
    /// β-DPO's filtering and β for this batch ([`beta_dpo::plan`]); `None`: every pair, with
    /// `beta` (evaluation).
    pub beta_dpo: Option<beta_dpo::BetaDpoPlan>,
}

impl LossBatch {
    /// Builds a batch from the policy tensor and plain values (`reference` may be empty: zeros).
    pub fn new(policy: Tensor, reference: &[f64], tokens: &[usize], k: usize) -> Result<Self> {
        let n = policy.dim(0)?;
        if (!reference.is_empty() && reference.len() != n) || tokens.len() != n || k == 0 || n % k != 0 {
            bail!(
                "loss batch: {n} policy values, {} reference, {} token counts, k = {k}",
                reference.len(),
                tokens.len()
            );
        }
        let dt = policy.dtype();
        let reference = if reference.is_empty() { vec![0.0; n] } else { reference.to_vec() };
        let reference = Tensor::new(reference, &Device::Cpu)?.to_dtype(dt)?;
        let tokens = Tensor::new(tokens.iter().map(|&t| t as f64).collect::<Vec<_>>(), &Device::Cpu)?.to_dtype(dt)?;
        Ok(Self {
            policy,
            reference,
            tokens,
            k,
            scores: None,
            desirable: None,
            kto_z0: None,
            f_divergence: FDivergence::ReverseKl,
            wpo_weights: None,
            nll_tokens: None,
            beta_dpo: None,
        })
    }

    pub fn examples(&self) -> Result<usize> {
        Ok(self.policy.dim(0)? / self.k)
    }

    /// Column `j` (the `j`-th completion of every example) of a `[examples * k]` tensor.
    pub fn column(&self, t: &Tensor, j: usize) -> Result<Tensor> {
        let n = t.dim(0)? / self.k;
        Ok(t.reshape((n, self.k))?.narrow(1, j, 1)?.squeeze(1)?)
    }

    /// Log-ratios `rho = log pi(y) - log pi_ref(y)` `[examples * k]`.
    pub fn log_ratios(&self) -> Result<Tensor> {
        Ok((&self.policy - &self.reference)?)
    }

    /// The f-divergence scores `s = f'(pi/pi_ref)` of the log-ratios `[examples * k]`
    /// ([`FDivergence::score`]): the log-ratios themselves for DPO's reverse KL.
    pub fn scores_f(&self) -> Result<Tensor> {
        self.f_divergence.score(&self.log_ratios()?)
    }

    /// Per-token average policy log-probs `log pi(y) / |y|` `[examples * k]`.
    pub fn avg_logps(&self) -> Result<Tensor> {
        Ok((&self.policy / self.tokens.clamp(1.0, f64::INFINITY)?)?)
    }
}

/// The divergence that regularises the policy toward the reference (f-DPO, Wang et al. 2023,
/// "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence
/// Constraints", eq. 10 and Table 1): the implicit reward is `beta * f'(u)`, `u = pi/pi_ref`, in
/// place of `beta * log u`. TRL's `f_divergence_type`; with it, TRL's `sigmoid`, `sigmoid_norm`,
/// `hinge`, `ipo`, `robust` and `discopop` use the scores, the metrics keep the log-ratios.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(tag = "f_divergence", rename_all = "snake_case")]
pub enum FDivergence {
    /// `f'(u) = log u`: DPO.
    #[default]
    ReverseKl,
    /// `f'(u) = 1 - 1/u`.
    ForwardKl,
    /// Jensen–Shannon: `f'(u) = log(2u / (1 + u)) = log 2 + log sigma(log u)`.
    JsDivergence,
    /// `f'(u) = (u^(alpha-1) - 1) / (alpha - 1)` (the exponent clamped at 80, as TRL in f32);
    /// `alpha` within 1e-6 of 1 is the reverse KL.
    AlphaDivergence { alpha: f64 },
}

/// The `--f-divergence-type` names (TRL's `f_divergence_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "cli", clap(rename_all = "snake_case"))]
pub enum FDivergenceType {
    ReverseKl,
    ForwardKl,
    JsDivergence,
    AlphaDivergence,
}

impl FDivergenceType {
    /// The name `--f-divergence-type` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            FDivergenceType::ReverseKl => "reverse_kl",
            FDivergenceType::ForwardKl => "forward_kl",
            FDivergenceType::JsDivergence => "js_divergence",
            FDivergenceType::AlphaDivergence => "alpha_divergence",
        }
    }
}

impl FDivergence {
    /// The divergence named `kind`; `alpha` is the alpha-divergence's coefficient.
    pub fn new(kind: FDivergenceType, alpha: f64) -> Self {
        match kind {
            FDivergenceType::ReverseKl => Self::ReverseKl,
            FDivergenceType::ForwardKl => Self::ForwardKl,
            FDivergenceType::JsDivergence => Self::JsDivergence,
            FDivergenceType::AlphaDivergence => Self::AlphaDivergence { alpha },
        }
    }

    /// `f'(exp(rho))` of log-ratios `rho` `[n]` (nats), differentiable.
    pub fn score(&self, rho: &Tensor) -> Result<Tensor> {
        Ok(match *self {
            FDivergence::ReverseKl => rho.clone(),
            FDivergence::ForwardKl => (1.0 - rho.neg()?.exp()?)?,
            FDivergence::JsDivergence => (dpo_kernels::log_sigmoid(rho)? + std::f64::consts::LN_2)?,
            FDivergence::AlphaDivergence { alpha } if (alpha - 1.0).abs() < 1e-6 => rho.clone(),
            FDivergence::AlphaDivergence { alpha } => {
                let t = (rho * (alpha - 1.0))?.minimum(80.0)?;
                ((t.exp()? - 1.0)? / (alpha - 1.0))?
            }
        })
    }
}

/// A loss of the DPO family with its hyper-parameters. Defaults are TRL's (`DPOConfig`,
/// `CPOConfig`, `ORPOConfig`, `KTOConfig`) unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "loss", rename_all = "snake_case")]
pub enum Loss {
    /// DPO; conservative DPO when `label_smoothing > 0` ([`pairwise::sigmoid`]).
    Sigmoid { beta: f64, label_smoothing: f64 },
    /// Robust DPO ([`pairwise::robust`]).
    Robust { beta: f64, label_smoothing: f64 },
    /// SLiC hinge ([`pairwise::hinge`]).
    Hinge { beta: f64 },
    /// IPO ([`pairwise::ipo`]).
    Ipo { beta: f64 },
    /// DPO with an offset from the data's scores ([`pairwise::odpo`]).
    Odpo { beta: f64, alpha: f64 },
    /// TRL's `bco_pair` ([`pairwise::bco_pair`]).
    BcoPair { beta: f64 },
    /// TRL's `nca_pair` ([`pairwise::nca_pair`]).
    NcaPair { beta: f64 },
    /// APO-zero ([`pairwise::apo_zero`]).
    ApoZero { beta: f64 },
    /// APO-down ([`pairwise::apo_down`]).
    ApoDown { beta: f64 },
    /// SPPO with hard labels ([`pairwise::sppo_hard`]).
    SppoHard { beta: f64 },
    /// EXO ([`pairwise::exo_pair`]).
    ExoPair { beta: f64, label_smoothing: f64 },
    /// SimPO, no reference ([`reference_free::simpo`]).
    Simpo { beta: f64, gamma: f64 },
    /// ORPO, no reference ([`reference_free::orpo`]); `beta` is the paper's lambda.
    Orpo { beta: f64 },
    /// The NLL of the chosen completion per token of the batch ([`reference_free::nll`]): TRL's
    /// `sft` loss type, the RPO term, CPO's NLL term.
    Sft,
    /// KTO on unpaired examples ([`kto::kto`]).
    Kto { beta: f64, desirable_weight: f64, undesirable_weight: f64 },
    /// Plackett–Luce on rankings ([`listwise::plackett_luce`]).
    PlackettLuce { beta: f64 },
    /// AOT on paired margins ([`pairwise::aot`]); couples a batch.
    Aot { beta: f64, label_smoothing: f64 },
    /// AOT on unpaired log-ratios ([`pairwise::aot_unpaired`]); couples a batch.
    AotUnpaired { beta: f64, label_smoothing: f64 },
    /// DiscoPOP ([`pairwise::discopop`]).
    Discopop { beta: f64, tau: f64 },
    /// DPO on per-token log-ratios ([`pairwise::sigmoid_norm`]).
    SigmoidNorm { beta: f64 },
    /// DPO-Positive ([`pairwise::dpop`]).
    Dpop { beta: f64, lambda: f64 },
    /// SimPER, no reference, no beta ([`reference_free::simper`]).
    Simper,
    /// The preference term of TRL's CPO trainer and AlphaPO, no reference ([`reference_free::cpo`]);
    /// `gamma` is SimPO's margin (for [`CpoKind::Simpo`]), `alpha` AlphaPO's.
    Cpo { kind: CpoKind, beta: f64, label_smoothing: f64, gamma: f64, alpha: f64 },
    /// β-DPO: a batch's β from its margins, on the pairs filtering keeps ([`beta_dpo`]); couples
    /// a batch.
    BetaDpo { beta: f64, alpha: f64, filter_ratio: f64 },
}

/// The data a loss needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// `(chosen, rejected)` pairs (rankings become pairs).
    Pairs,
    /// Pairs with a score for each side.
    ScoredPairs,
    /// Unpaired completions with a desirable/undesirable label (pairs become two of them).
    Unpaired,
    /// Rankings of K completions (a pair is a ranking of 2).
    Rankings,
    /// Anything with a first completion to imitate.
    Any,
}

/// The loss names `--loss` accepts, in the order of `--loss-help`.
pub const NAMES: [&str; 28] = [
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "simpo",
    "orpo",
    "odpo",
    "kto",
    "plackett_luce",
    "bco_pair",
    "nca_pair",
    "apo_zero",
    "apo_down",
    "sppo_hard",
    "exo_pair",
    "sft",
    "aot",
    "aot_unpaired",
    "discopop",
    "sigmoid_norm",
    "dpop",
    "simper",
    "cpo",
    "cpo_hinge",
    "cpo_ipo",
    "cpo_simpo",
    "alphapo",
    "beta_dpo",
];

/// Hyper-parameters given on the command line, from which named losses are built (defaults in
/// [`defaults`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct LossParams {
    /// beta: the scale of the implicit reward beta*log(pi/pi_ref) (ORPO: lambda).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::BETA))]
    pub beta: f64,
    /// Label smoothing eps: cDPO (sigmoid), robust (< 0.5), exo_pair.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::LABEL_SMOOTHING))]
    pub label_smoothing: f64,
    /// SimPO's target margin gamma.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::SIMPO_GAMMA))]
    pub simpo_gamma: f64,
    /// ODPO's offset scale alpha.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::ODPO_ALPHA))]
    pub odpo_alpha: f64,
    /// KTO's weight of desirable examples.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::DESIRABLE_WEIGHT))]
    pub desirable_weight: f64,
    /// KTO's weight of undesirable examples.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::UNDESIRABLE_WEIGHT))]
    pub undesirable_weight: f64,
    /// DiscoPOP's temperature tau of the log-ratio modulation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::DISCOPOP_TAU))]
    pub discopop_tau: f64,
    /// f-DPO: the divergence to the reference (sigmoid, sigmoid_norm, hinge, ipo, robust, discopop use it).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = defaults::F_DIVERGENCE_TYPE))]
    pub f_divergence_type: FDivergenceType,
    /// The alpha of --f-divergence-type alpha_divergence.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::F_ALPHA_DIVERGENCE_COEF))]
    pub f_alpha_divergence_coef: f64,
    /// WPO: weigh each pair's loss by the policy's (aligned) probability of both completions.
    #[cfg_attr(feature = "cli", arg(long))]
    pub use_weighting: bool,
    /// LD-DPO: the weight of the tokens of the longer completion past the shorter one's length (policy and reference log-probs); 1 is DPO.
    #[cfg_attr(feature = "cli", arg(long))]
    pub ld_alpha: Option<f64>,
    /// DPOP's lambda: the weight of the penalty max(0, -rho_w) on a chosen completion whose log-ratio falls below 0.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::DPOP_LAMBDA))]
    pub dpop_lambda: f64,
    /// CPO (cpo, cpo_hinge, cpo_ipo, cpo_simpo): the weight of the NLL term on the chosen completion (TRL cpo_alpha; alphapo: 0).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::CPO_ALPHA))]
    pub cpo_alpha: f64,
    /// AlphaPO's alpha (TRL CPOConfig alpha): the CPO losses' reward becomes (1 - p^-alpha)/alpha, p = exp(log pi(y)); 0: log pi(y).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::ALPHAPO_ALPHA))]
    pub alphapo_alpha: f64,
    /// β-DPO's a: beta_batch = beta * (1 + a * (mean kept margin - running mean margin)).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = beta_dpo::defaults::ALPHA))]
    pub beta_dpo_alpha: f64,
    /// β-DPO's filtering: the share of each batch's pairs dropped (those far from the running mean margin are likelier to go).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = beta_dpo::defaults::FILTER_RATIO))]
    pub beta_dpo_filter_ratio: f64,
}

impl Default for LossParams {
    fn default() -> Self {
        Self {
            beta: defaults::BETA,
            label_smoothing: defaults::LABEL_SMOOTHING,
            simpo_gamma: defaults::SIMPO_GAMMA,
            odpo_alpha: defaults::ODPO_ALPHA,
            desirable_weight: defaults::DESIRABLE_WEIGHT,
            undesirable_weight: defaults::UNDESIRABLE_WEIGHT,
            discopop_tau: defaults::DISCOPOP_TAU,
            f_divergence_type: defaults::F_DIVERGENCE_TYPE,
            f_alpha_divergence_coef: defaults::F_ALPHA_DIVERGENCE_COEF,
            use_weighting: false,
            ld_alpha: None,
            dpop_lambda: defaults::DPOP_LAMBDA,
            cpo_alpha: defaults::CPO_ALPHA,
            alphapo_alpha: defaults::ALPHAPO_ALPHA,
            beta_dpo_alpha: beta_dpo::defaults::ALPHA,
            beta_dpo_filter_ratio: beta_dpo::defaults::FILTER_RATIO,
        }
    }
}

impl Loss {
    /// The loss called `name` with the hyper-parameters `p`.
    pub fn from_name(name: &str, p: &LossParams) -> Result<Self> {
        let beta = p.beta;
        Ok(match name {
            "sigmoid" | "dpo" => Loss::Sigmoid { beta, label_smoothing: p.label_smoothing },
            "robust" => Loss::Robust { beta, label_smoothing: p.label_smoothing },
            "hinge" => Loss::Hinge { beta },
            "ipo" => Loss::Ipo { beta },
            "odpo" => Loss::Odpo { beta, alpha: p.odpo_alpha },
            "bco_pair" => Loss::BcoPair { beta },
            "nca_pair" => Loss::NcaPair { beta },
            "apo_zero" => Loss::ApoZero { beta },
            "apo_down" => Loss::ApoDown { beta },
            "sppo_hard" => Loss::SppoHard { beta },
            "exo_pair" => Loss::ExoPair {
                beta,
                label_smoothing: if p.label_smoothing > 0.0 {
                    p.label_smoothing
                } else {
                    defaults::EXO_LABEL_SMOOTHING
                },
            },
            "simpo" => Loss::Simpo { beta, gamma: p.simpo_gamma },
            "orpo" => Loss::Orpo { beta },
            "sft" | "nll" | "rpo" => Loss::Sft,
            "kto" => Loss::Kto { beta, desirable_weight: p.desirable_weight, undesirable_weight: p.undesirable_weight },
            "plackett_luce" => Loss::PlackettLuce { beta },
            "aot" => Loss::Aot { beta, label_smoothing: p.label_smoothing },
            "aot_unpaired" => Loss::AotUnpaired { beta, label_smoothing: p.label_smoothing },
            "discopop" => Loss::Discopop { beta, tau: p.discopop_tau },
            "sigmoid_norm" => Loss::SigmoidNorm { beta },
            "dpop" => Loss::Dpop { beta, lambda: p.dpop_lambda },
            "simper" => Loss::Simper,
            "beta_dpo" => {
                let r = p.beta_dpo_filter_ratio;
                ensure!((0.0..1.0).contains(&r), "--beta-dpo-filter-ratio must be in [0, 1), got {r}");
                Loss::BetaDpo { beta, alpha: p.beta_dpo_alpha, filter_ratio: r }
            }
            "cpo" | "cpo_hinge" | "cpo_ipo" | "cpo_simpo" | "alphapo" => Loss::Cpo {
                kind: match name {
                    "cpo" => CpoKind::Sigmoid,
                    "cpo_hinge" => CpoKind::Hinge,
                    "cpo_ipo" => CpoKind::Ipo,
                    _ => CpoKind::Simpo,
                },
                beta,
                label_smoothing: p.label_smoothing,
                gamma: p.simpo_gamma,
                alpha: p.alphapo_alpha,
            },
            _ => bail!("unknown loss `{name}` (available: {})", NAMES.join(", ")),
        })
    }

    /// The scale of the implicit reward in the metrics (`beta`; ORPO's lambda; 1 for `sft`).
    pub fn beta(&self) -> f64 {
        match *self {
            Loss::Sigmoid { beta, .. }
            | Loss::Robust { beta, .. }
            | Loss::Hinge { beta }
            | Loss::Ipo { beta }
            | Loss::Odpo { beta, .. }
            | Loss::BcoPair { beta }
            | Loss::NcaPair { beta }
            | Loss::ApoZero { beta }
            | Loss::ApoDown { beta }
            | Loss::SppoHard { beta }
            | Loss::ExoPair { beta, .. }
            | Loss::Simpo { beta, .. }
            | Loss::Orpo { beta }
            | Loss::Kto { beta, .. }
            | Loss::PlackettLuce { beta }
            | Loss::Aot { beta, .. }
            | Loss::AotUnpaired { beta, .. }
            | Loss::Discopop { beta, .. }
            | Loss::SigmoidNorm { beta }
            | Loss::Dpop { beta, .. }
            | Loss::Cpo { beta, .. }
            | Loss::BetaDpo { beta, .. } => beta,
            Loss::Sft | Loss::Simper => 1.0,
        }
    }

    /// Whether the loss uses reference log-probs (SimPO, ORPO and the NLL do not).
    pub fn needs_reference(&self) -> bool {
        !matches!(self, Loss::Simpo { .. } | Loss::Orpo { .. } | Loss::Sft | Loss::Simper | Loss::Cpo { .. })
    }

    pub fn needs(&self) -> Needs {
        match self {
            Loss::Odpo { .. } => Needs::ScoredPairs,
            Loss::Kto { .. } => Needs::Unpaired,
            Loss::PlackettLuce { .. } => Needs::Rankings,
            Loss::Sft => Needs::Any,
            _ => Needs::Pairs,
        }
    }

    /// One loss per example `[examples]`.
    pub fn per_example(&self, b: &LossBatch) -> Result<Tensor> {
        use pairwise as p;
        match *self {
            Loss::Sigmoid { beta, label_smoothing } => p::sigmoid(b, beta, label_smoothing),
            Loss::Robust { beta, label_smoothing } => p::robust(b, beta, label_smoothing),
            Loss::Hinge { beta } => p::hinge(b, beta),
            Loss::Ipo { beta } => p::ipo(b, beta),
            Loss::Odpo { beta, alpha } => p::odpo(b, beta, alpha),
            Loss::BcoPair { beta } => p::bco_pair(b, beta),
            Loss::NcaPair { beta } => p::nca_pair(b, beta),
            Loss::ApoZero { beta } => p::apo_zero(b, beta),
            Loss::ApoDown { beta } => p::apo_down(b, beta),
            Loss::SppoHard { beta } => p::sppo_hard(b, beta),
            Loss::ExoPair { beta, label_smoothing } => p::exo_pair(b, beta, label_smoothing),
            Loss::Simpo { beta, gamma } => reference_free::simpo(b, beta, gamma),
            Loss::Orpo { beta } => reference_free::orpo(b, beta),
            Loss::Sft => reference_free::nll(b),
            Loss::Kto { beta, desirable_weight, undesirable_weight } => {
                Ok(kto::kto(b, beta, desirable_weight, undesirable_weight)?.0)
            }
            Loss::PlackettLuce { beta } => listwise::plackett_luce(b, beta),
            Loss::Aot { beta, label_smoothing } => p::aot(b, beta, label_smoothing),
            Loss::AotUnpaired { beta, label_smoothing } => p::aot_unpaired(b, beta, label_smoothing),
            Loss::Discopop { beta, tau } => p::discopop(b, beta, tau),
            Loss::SigmoidNorm { beta } => p::sigmoid_norm(b, beta),
            Loss::Dpop { beta, lambda } => p::dpop(b, beta, lambda),
            Loss::Simper => reference_free::simper(b),
            Loss::Cpo { kind, beta, label_smoothing, gamma, alpha } => {
                reference_free::cpo(b, kind, beta, label_smoothing, gamma, alpha)
            }
            Loss::BetaDpo { beta, .. } => beta_dpo::beta_dpo(b, beta),
        }
    }

    /// Whether the loss ranks the pairs of a batch against each other (AOT sorts them, β-DPO
    /// draws from them), so that its value is the batch's, not a sum of the pairs'.
    pub fn sorts_batch(&self) -> bool {
        matches!(self, Loss::Aot { .. } | Loss::AotUnpaired { .. } | Loss::BetaDpo { .. })
    }

    /// Whether the loss uses f-DPO's scores, or ignores them, as TRL 1.16 allows
    /// `f_divergence_type` with it (`sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust,
    /// discopop, sft`; `exo_pair` and `sft` ignore it).
    fn takes_f_divergence(&self) -> bool {
        matches!(
            self,
            Loss::Sigmoid { .. }
                | Loss::SigmoidNorm { .. }
                | Loss::Hinge { .. }
                | Loss::Ipo { .. }
                | Loss::ExoPair { .. }
                | Loss::Robust { .. }
                | Loss::Discopop { .. }
                | Loss::Sft
        )
    }

    /// The name `--loss` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Sigmoid { .. } => "sigmoid",
            Loss::Robust { .. } => "robust",
            Loss::Hinge { .. } => "hinge",
            Loss::Ipo { .. } => "ipo",
            Loss::Odpo { .. } => "odpo",
            Loss::BcoPair { .. } => "bco_pair",
            Loss::NcaPair { .. } => "nca_pair",
            Loss::ApoZero { .. } => "apo_zero",
            Loss::ApoDown { .. } => "apo_down",
            Loss::SppoHard { .. } => "sppo_hard",
            Loss::ExoPair { .. } => "exo_pair",
            Loss::Simpo { .. } => "simpo",
            Loss::Orpo { .. } => "orpo",
            Loss::Sft => "sft",
            Loss::Kto { .. } => "kto",
            Loss::PlackettLuce { .. } => "plackett_luce",
            Loss::Aot { .. } => "aot",
            Loss::AotUnpaired { .. } => "aot_unpaired",
            Loss::Discopop { .. } => "discopop",
            Loss::SigmoidNorm { .. } => "sigmoid_norm",
            Loss::Dpop { .. } => "dpop",
            Loss::Simper => "simper",
            Loss::Cpo { kind: CpoKind::Sigmoid, .. } => "cpo",
            Loss::Cpo { kind: CpoKind::Hinge, .. } => "cpo_hinge",
            Loss::Cpo { kind: CpoKind::Ipo, .. } => "cpo_ipo",
            Loss::Cpo { kind: CpoKind::Simpo, .. } => "cpo_simpo",
            Loss::BetaDpo { .. } => "beta_dpo",
        }
    }
}

/// A weighted sum of losses, `sum_i w_i * loss_i` (TRL's `loss_type` list with `loss_weights`);
/// `--rpo-alpha a` adds `(sft, a)`, the NLL term of RPO (Pang et al. 2024); with the options TRL
/// applies to every term: the f-divergence, WPO's weights and LD-DPO's log-probs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Objective {
    pub terms: Vec<(Loss, f64)>,
    /// f-DPO's divergence (TRL `f_divergence_type`, `f_alpha_divergence_coef`).
    pub f_divergence: FDivergence,
    /// WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", eq. 2
    /// with TRL's aligned weights; TRL `use_weighting`): each pair's loss times `w(y_w) w(y_l)`,
    /// `w(y) = exp(mean_t [log p(y_t) - log sum_v p(v)^2])` under the current policy, constant in
    /// the backward pass; the step's loss stays the plain mean.
    pub use_weighting: bool,
    /// LD-DPO (Liu et al. 2024, "Length Desensitization in Directed Preference Optimization",
    /// eq. 9; TRL `ld_alpha`): every completion's log-prob, policy and reference, is the sum over
    /// its first `min(|y_w|, |y_l|)` tokens plus `alpha` times the sum over the rest.
    pub ld_alpha: Option<f64>,
}

impl Objective {
    pub fn single(loss: Loss) -> Self {
        Self { terms: vec![(loss, 1.0)], f_divergence: FDivergence::ReverseKl, use_weighting: false, ld_alpha: None }
    }

    /// Builds an objective from names and weights (one weight per name, or none: all 1), plus an
    /// optional RPO alpha. All losses must agree on the data they need.
    pub fn from_names(names: &[String], weights: &[f64], rpo_alpha: f64, p: &LossParams) -> Result<Self> {
        ensure!(!names.is_empty(), "no loss given");
        ensure!(
            weights.is_empty() || weights.len() == names.len(),
            "{} losses but {} --loss-weights",
            names.len(),
            weights.len()
        );
        let mut terms = Vec::new();
        for (i, n) in names.iter().enumerate() {
            terms.push((Loss::from_name(n.trim(), p)?, weights.get(i).copied().unwrap_or(1.0)));
        }
        if rpo_alpha != 0.0 {
            terms.push((Loss::Sft, rpo_alpha));
        }
        // CPO's NLL term (TRL `CPOTrainer`: `losses.mean() + cpo_alpha * nll_loss`); AlphaPO has none
        let cpo_nll = names.iter().any(|n| matches!(n.trim(), "cpo" | "cpo_hinge" | "cpo_ipo" | "cpo_simpo"));
        if cpo_nll && p.cpo_alpha != 0.0 {
            terms.push((Loss::Sft, p.cpo_alpha));
        }
        let o = Self {
            terms,
            f_divergence: FDivergence::new(p.f_divergence_type, p.f_alpha_divergence_coef),
            use_weighting: p.use_weighting,
            ld_alpha: p.ld_alpha,
        };
        let need = o.needs()?;
        let paired = matches!(need, Needs::Pairs | Needs::ScoredPairs);
        let names = |pick: &dyn Fn(&Loss) -> bool| {
            o.terms.iter().map(|t| t.0).filter(|l| pick(l)).map(|l| l.name()).collect::<Vec<_>>().join(", ")
        };
        if o.f_divergence != FDivergence::ReverseKl {
            let refused = names(&|l| !l.takes_f_divergence());
            let name = p.f_divergence_type.name();
            ensure!(refused.is_empty(), "--f-divergence-type {name} applies to sigmoid, sigmoid_norm, hinge, ipo, robust, discopop (exo_pair and sft ignore it), as in TRL; not to {refused}");
        }
        if o.use_weighting {
            let refused = names(&|l| l.sorts_batch());
            ensure!(
                refused.is_empty() && paired,
                "--use-weighting (WPO) weighs pairs of independent losses: not {}",
                if refused.is_empty() { "losses on unpaired examples or rankings".to_string() } else { refused }
            );
        }
        if let Some(a) = o.ld_alpha {
            ensure!(a.is_finite(), "--ld-alpha must be a number, got {a}");
            ensure!(paired, "--ld-alpha (LD-DPO) splits each pair at the shorter completion: it needs pairs, not unpaired examples or rankings");
        }
        Ok(o)
    }

    /// The loss the metrics are reported for (the first that is not the NLL term).
    pub fn main(&self) -> Loss {
        self.terms.iter().map(|t| t.0).find(|l| *l != Loss::Sft).unwrap_or(Loss::Sft)
    }

    pub fn needs_reference(&self) -> bool {
        self.terms.iter().any(|(l, _)| l.needs_reference())
    }

    /// The data every term can use; an error if two terms need different layouts.
    pub fn needs(&self) -> Result<Needs> {
        let mut need = Needs::Any;
        for (l, _) in &self.terms {
            need = match (need, l.needs()) {
                (a, Needs::Any) => a,
                (Needs::Any, b) => b,
                (a, b) if a == b => a,
                (Needs::Pairs, Needs::ScoredPairs) | (Needs::ScoredPairs, Needs::Pairs) => Needs::ScoredPairs,
                (a, b) => bail!("these losses need different data: {a:?} and {b:?}"),
            };
        }
        Ok(if need == Needs::Any { Needs::Pairs } else { need })
    }

    /// Completions per example.
    pub fn k(&self, ranking_len: usize) -> usize {
        match self.needs() {
            Ok(Needs::Rankings) => ranking_len,
            _ => 2,
        }
    }

    /// Whether the loss couples the examples of a batch (KTO's KL estimate, AOT's sorts), so that
    /// a batch must go through one forward pass.
    pub fn couples_batch(&self) -> bool {
        self.terms.iter().any(|(l, _)| matches!(l, Loss::Kto { .. }) || l.sorts_batch())
    }

    /// Whether a term sorts the pairs of a batch (AOT): a batch cannot be divided among ranks.
    pub fn sorts_batch(&self) -> bool {
        self.terms.iter().any(|(l, _)| l.sorts_batch())
    }

    /// `sum_i w_i * loss_i` per example `[examples]`, times WPO's pair weights with
    /// `use_weighting` (from `b.wpo_weights`).
    pub fn per_example(&self, b: &LossBatch) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (l, w) in &self.terms {
            let t = (l.per_example(b)? * *w)?;
            total = Some(match total {
                None => t,
                Some(a) => (a + t)?,
            });
        }
        let total = total.expect("an objective has a term");
        if !self.use_weighting {
            return Ok(total);
        }
        let w = b.wpo_weights.as_ref().context("--use-weighting needs the policy's aligned log-probs")?;
        ensure!(
            b.k == 2 && w.len() == 2 * total.dim(0)?,
            "WPO weighs pairs: {} weights for {} examples of {}",
            w.len(),
            total.dim(0)?,
            b.k
        );
        let pair: Vec<f64> = w.chunks(2).map(|c| c[0] * c[1]).collect();
        Ok((total * Tensor::new(pair, &Device::Cpu)?.to_dtype(b.policy.dtype())?)?)
    }
}

/// One row of `dpo train --loss-help`: name, formula, source, data, hyper-parameters.
pub struct LossDoc {
    pub name: &'static str,
    pub formula: &'static str,
    pub source: &'static str,
    pub data: &'static str,
    /// The flags the loss reads, with their defaults ([`defaults`]).
    pub params: &'static [(&'static str, f64)],
    /// A note on the flags (a range, a loss-specific default).
    pub note: &'static str,
}

/// The losses with their formulas (`rho = log pi(y) - log pi_ref(y)`, `delta = rho_w - rho_l`,
/// `avg = log pi(y)/|y|`, `s` = sigma), sources, data and hyper-parameters.
pub const DOCS: [LossDoc; 28] = [
    LossDoc { name: "sigmoid", formula: "-(1-eps) log s(beta*delta) - eps log s(-beta*delta)", source: "DPO, Rafailov et al. 2023 eq. 7; cDPO (eps>0), Mitchell 2023", data: "pairs", params: &[("--beta", defaults::BETA), ("--label-smoothing", defaults::LABEL_SMOOTHING)], note: "" },
    LossDoc { name: "robust", formula: "[-(1-eps) log s(beta*delta) + eps log s(-beta*delta)] / (1-2eps)", source: "Chowdhury et al. 2024 §3", data: "pairs", params: &[("--beta", defaults::BETA), ("--label-smoothing", defaults::LABEL_SMOOTHING)], note: "label smoothing < 0.5" },
    LossDoc { name: "hinge", formula: "max(0, 1 - beta*delta)", source: "SLiC, Zhao et al. 2023", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "ipo", formula: "(rho_w/|y_w| - rho_l/|y_l| - 1/(2 beta))^2", source: "Azar et al. 2023 eq. 17 (per-token averages as TRL)", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "simpo", formula: "-log s(beta*avg_w - beta*avg_l - gamma)", source: "Meng et al. 2024 eq. 6; no reference", data: "pairs", params: &[("--beta", defaults::BETA), ("--simpo-gamma", defaults::SIMPO_GAMMA)], note: "" },
    LossDoc { name: "orpo", formula: "-avg_w - beta * log s(log odds_w - log odds_l), odds = p/(1-p), p = exp(avg)", source: "Hong et al. 2024 eqs. 4-7; no reference; beta = lambda", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "odpo", formula: "-log s(beta*delta - alpha*log(score_w - score_l))", source: "Amini et al. 2024 (authors' code); seed 002", data: "pairs with scores (score_chosen, score_rejected), score_w > score_l", params: &[("--beta", defaults::BETA), ("--odpo-alpha", defaults::ODPO_ALPHA)], note: "" },
    LossDoc { name: "kto", formula: "desirable: wD(1 - s(beta(rho - z0))); undesirable: wU(1 - s(beta(z0 - rho))); z0 = max(0, mean KL over mismatched pairs), no gradient", source: "Ethayarajh et al. 2024 eqs. 7-8; TRL KTOTrainer", data: "unpaired {prompt, completion, label} or KTO layouts; pairs are split into two", params: &[("--beta", defaults::BETA), ("--desirable-weight", defaults::DESIRABLE_WEIGHT), ("--undesirable-weight", defaults::UNDESIRABLE_WEIGHT)], note: "" },
    LossDoc { name: "plackett_luce", formula: "-sum_k [beta*rho_(k) - logsumexp_{j>=k} beta*rho_(j)]; K = 2 is sigmoid", source: "DPO paper appendix A.3 (eq. 18 model); seed 003", data: "rankings {prompt, completions, ranking|scores} (all of one length); a pair is a ranking of 2", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "bco_pair", formula: "-log s(beta*rho_w) - log s(-beta*rho_l)", source: "TRL 1.16 bco_pair (BCO, Jung et al. 2024)", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "nca_pair", formula: "-log s(beta*rho_w) - 0.5 log s(-beta*rho_w) - 0.5 log s(-beta*rho_l)", source: "Chen et al. 2024 eq. 10; TRL nca_pair", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "apo_zero", formula: "1 - s(beta*rho_w) + s(beta*rho_l)", source: "D'Oosterlinck et al. 2024 eq. 7; TRL apo_zero", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "apo_down", formula: "s(beta*rho_w) + 1 - s(beta*(rho_w - rho_l))", source: "D'Oosterlinck et al. 2024 eq. 8; TRL apo_down", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "sppo_hard", formula: "(rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2", source: "Wu et al. 2024 eq. 4.7 (hard labels); TRL sppo_hard", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "exo_pair", formula: "s(z)(log s(z) - log(1-eps)) + s(-z)(log s(-z) - log eps), z = beta*delta", source: "Ji et al. 2024 eq. 16; TRL exo_pair", data: "pairs", params: &[("--beta", defaults::BETA), ("--label-smoothing", defaults::EXO_LABEL_SMOOTHING)], note: "" },
    LossDoc { name: "sft", formula: "-avg_w (NLL per token of the chosen completion); as a term: RPO", source: "Pang et al. 2024 (RPO) eq. 4; TRL sft loss type", data: "any (the chosen/best completion)", params: &[], note: "weight via --loss-weights or --rpo-alpha" },
    LossDoc { name: "aot", formula: "-(1-eps) log s(beta*d_k) - eps log s(-beta*d_k), d_k = sort(lp_w - lp_l)_k - sort(ref_w - ref_l)_k over the batch", source: "Melnyk et al. 2024 (AOT) §3, paired; TRL 1.16 aot", data: "pairs", params: &[("--beta", defaults::BETA), ("--label-smoothing", defaults::LABEL_SMOOTHING)], note: "couples the pairs of a batch (--per-device-train-batch-size); one rank" },
    LossDoc { name: "aot_unpaired", formula: "-(1-eps) log s(beta*d_k) - eps log s(-beta*d_k), d_k = sort(rho_w)_k - sort(rho_l)_k over the batch", source: "Melnyk et al. 2024 (AOT) §3, unpaired; TRL 1.16 aot_unpaired", data: "pairs", params: &[("--beta", defaults::BETA), ("--label-smoothing", defaults::LABEL_SMOOTHING)], note: "couples the pairs of a batch; one rank" },
    LossDoc { name: "discopop", formula: "(1-m)(-log s(z)) + m exp(-z), m = s(z/tau), z = beta*delta", source: "Chris Lu et al. 2024 (DiscoPOP) eq. 5; TRL discopop", data: "pairs", params: &[("--beta", defaults::BETA), ("--discopop-tau", defaults::DISCOPOP_TAU)], note: "" },
    LossDoc { name: "sigmoid_norm", formula: "-log s(beta*(rho_w/|y_w| - rho_l/|y_l|))", source: "TRL 1.16 sigmoid_norm (DPO on per-token log-ratios)", data: "pairs", params: &[("--beta", defaults::BETA)], note: "" },
    LossDoc { name: "dpop", formula: "-log s(beta*(delta - lambda*max(0, -rho_w)))", source: "DPO-Positive, Pal et al. 2024 (Smaug, arXiv 2402.13228) eq. 3", data: "pairs", params: &[("--beta", defaults::BETA), ("--dpop-lambda", defaults::DPOP_LAMBDA)], note: "lambda 0 is sigmoid" },
    LossDoc { name: "simper", formula: "-exp(avg_w) + exp(avg_l) (inverse perplexities)", source: "SimPER, Xiao et al. 2025 (arXiv 2502.00883) §3; no reference, no beta", data: "pairs", params: &[], note: "no hyper-parameters" },
    LossDoc { name: "cpo", formula: "-(1-eps) log s(beta*m) - eps log s(-beta*m) + cpo_alpha * NLL_w, m = log pi(y_w) - log pi(y_l)", source: "CPO, Xu et al. 2024 eq. 3; TRL 1.16 experimental CPOTrainer (sigmoid)", data: "pairs", params: &[("--beta", defaults::BETA), ("--label-smoothing", defaults::LABEL_SMOOTHING), ("--cpo-alpha", defaults::CPO_ALPHA), ("--alphapo-alpha", defaults::ALPHAPO_ALPHA)], note: "no reference; alphapo-alpha a: log pi -> (1 - pi^-a)/a" },
    LossDoc { name: "cpo_hinge", formula: "max(0, 1 - beta*m) + cpo_alpha * NLL_w", source: "TRL 1.16 CPOTrainer loss_type hinge", data: "pairs", params: &[("--beta", defaults::BETA), ("--cpo-alpha", defaults::CPO_ALPHA), ("--alphapo-alpha", defaults::ALPHAPO_ALPHA)], note: "no reference" },
    LossDoc { name: "cpo_ipo", formula: "(avg_w - avg_l - 1/(2 beta))^2 + cpo_alpha * NLL_w", source: "TRL 1.16 CPOTrainer loss_type ipo", data: "pairs", params: &[("--beta", defaults::BETA), ("--cpo-alpha", defaults::CPO_ALPHA), ("--alphapo-alpha", defaults::ALPHAPO_ALPHA)], note: "no reference" },
    LossDoc { name: "cpo_simpo", formula: "-(1-eps) log s(beta*(avg_w - avg_l) - gamma) - eps log s(-(...)) + cpo_alpha * NLL_w", source: "TRL 1.16 CPOTrainer loss_type simpo (SimPO + CPO's NLL)", data: "pairs", params: &[("--beta", defaults::BETA), ("--simpo-gamma", defaults::SIMPO_GAMMA), ("--label-smoothing", defaults::LABEL_SMOOTHING), ("--cpo-alpha", defaults::CPO_ALPHA), ("--alphapo-alpha", defaults::ALPHAPO_ALPHA)], note: "no reference" },
    LossDoc { name: "alphapo", formula: "cpo_simpo without the NLL term, reward (1 - exp(-a*avg))/a", source: "AlphaPO, Gupta et al. 2025 (arXiv 2501.03884) eq. 6; TRL 1.16 CPOConfig loss_type alphapo", data: "pairs", params: &[("--beta", defaults::BETA), ("--simpo-gamma", defaults::SIMPO_GAMMA), ("--alphapo-alpha", defaults::ALPHAPO_ALPHA)], note: "no reference; set --alphapo-alpha (0 is SimPO)" },
    LossDoc { name: "beta_dpo", formula: "-log s(beta_b*delta) over the kept pairs; beta_b = beta(1 + a(mean_kept(delta) - M)); pairs kept by a draw weighted exp(-(delta - M)^2 / 2S^2); M, S running mean/std of delta", source: "β-DPO, Wu et al. 2024 (arXiv 2407.08639) §4 eqs. 6-7 and the authors' code", data: "pairs", params: &[("--beta", defaults::BETA), ("--beta-dpo-alpha", beta_dpo::defaults::ALPHA), ("--beta-dpo-filter-ratio", beta_dpo::defaults::FILTER_RATIO)], note: "couples the pairs of a batch; one rank; the running statistics are checkpointed" },
];

/// The text of `dpo train --loss-help`.
pub fn help_text() -> String {
    let mut s = String::from(
        "Losses (--loss NAME, or several: --loss sigmoid,sft --loss-weights 1.0,0.2; --rpo-alpha A adds A * sft).\n\
         rho = log pi(y|x) - log pi_ref(y|x) (summed over completion tokens, nats), delta = rho_w - rho_l,\n\
         avg = log pi(y|x)/|y|, s = logistic sigmoid. Losses without a reference (simpo, orpo, sft) neither load\n\
         nor compute reference log-probs. --sync-ref-model (TR-DPO) moves the reference during training.\n\
         Options of every term, as TRL's: --f-divergence-type reverse_kl|forward_kl|js_divergence|alpha_divergence\n\
         (f-DPO, Wang et al. 2023 eq. 10: rho becomes f'(pi/pi_ref): 1 - exp(-rho), log 2 + log s(rho),\n\
         (exp((a-1) rho) - 1)/(a-1) with --f-alpha-divergence-coef a; sigmoid, sigmoid_norm, hinge, ipo, robust,\n\
         discopop); --use-weighting (WPO, Zhou et al. 2024 eq. 2: loss * w_w * w_l, w = exp(mean_t log p_t - log sum_v p_v^2));\n\
         --ld-alpha a (LD-DPO, Liu et al. 2024 eq. 9: tokens of the longer completion past the shorter one's length\n\
         count a times in log pi and log pi_ref).\n\n",
    );
    for d in &DOCS {
        let mut params: Vec<String> = d.params.iter().map(|(flag, default)| format!("{flag} {default}")).collect();
        params.extend((!d.note.is_empty()).then(|| d.note.to_string()));
        s += &format!(
            "{}\n  loss:   {}\n  source: {}\n  data:   {}\n  params: {}\n",
            d.name,
            d.formula,
            d.source,
            d.data,
            params.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    #[test]
    fn every_loss_is_documented_and_named() {
        let names: Vec<&str> = DOCS.iter().map(|d| d.name).collect();
        assert_eq!(names, NAMES.to_vec());
        for n in NAMES {
            Loss::from_name(n, &LossParams::default()).unwrap();
        }
        assert!(Loss::from_name("dpo_positive", &LossParams::default())
            .unwrap_err()
            .to_string()
            .contains("unknown loss `dpo_positive`"));
        // CPO adds its NLL term with weight cpo_alpha, AlphaPO does not
        let cpo = Objective::from_names(&["cpo".into()], &[], 0.0, &LossParams::default()).unwrap();
        assert_eq!(cpo.terms[1], (Loss::Sft, defaults::CPO_ALPHA));
        assert!(!cpo.needs_reference());
        let alphapo = Objective::from_names(&["alphapo".into()], &[], 0.0, &LossParams::default()).unwrap();
        assert_eq!(alphapo.terms.len(), 1);
        let mix =
            Objective::from_names(&["sigmoid".into(), "sft".into()], &[1.0, 0.2], 0.0, &LossParams::default()).unwrap();
        assert_eq!(mix.terms.len(), 2);
        assert!(Objective::from_names(&["kto".into(), "sigmoid".into()], &[], 0.0, &LossParams::default()).is_err());
        assert!(!Objective::single(Loss::Simpo { beta: 2.0, gamma: 0.5 }).needs_reference());
    }
}
