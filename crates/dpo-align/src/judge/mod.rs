//! Judges: score completions so that samples can be turned into preference data.
//!
//! `sentiment` (VADER), `score` (numbers already in the data), `reward-model:DIR` (a
//! sequence-classification reward model, [`reward_model`]), `llm:MODEL` (a language model
//! comparing pairs from its next-token probabilities, [`llm`]) and `implicit:POLICY[,REFERENCE]`
//! (DPO's implicit reward, [`implicit`]); [`JudgeSettings`] are the flags that choose one.

pub mod implicit;
pub mod llm;
pub mod reward_model;

pub use implicit::ImplicitReward;
pub use llm::LlmJudge;
pub use reward_model::RewardModel;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A record to judge: a prompt, its completions, and the rest of its fields.
pub struct JudgeInput<'a> {
    pub prompt: &'a str,
    pub completions: &'a [String],
    pub fields: &'a Map<String, Value>,
    /// `FILE:LINE`, for error messages.
    pub origin: &'a str,
}

/// Scores each completion of a record; higher is better. Implement it to add a judge.
pub trait Judge: Send + Sync {
    fn name(&self) -> &str;
    /// One score per completion, in order.
    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>>;
    /// Whether the scores only compare the completions of one call with each other (a pairwise
    /// judge: two completions score `P(a > b)` and `P(b > a)`). Evaluation then judges each
    /// policy sample against the reference's sample instead of scoring each model alone.
    fn is_pairwise(&self) -> bool {
        false
    }
}

/// The positive-sentiment reward of the DPO paper's controlled-sentiment task (§6.1), computed
/// by VADER (Hutto & Gilbert 2014, the `vader_sentiment` crate) instead of a trained classifier:
/// the compound polarity of the completion text, in [-1, 1] (the prompt is not scored).
pub struct Sentiment {
    analyzer: vader_sentiment::SentimentIntensityAnalyzer<'static>,
}

impl Sentiment {
    pub fn new() -> Self {
        Self { analyzer: vader_sentiment::SentimentIntensityAnalyzer::new() }
    }

    /// The compound polarity of `text`.
    pub fn polarity(&self, text: &str) -> f64 {
        self.analyzer.polarity_scores(text).get("compound").copied().unwrap_or(0.0)
    }
}

impl Default for Sentiment {
    fn default() -> Self {
        Self::new()
    }
}

impl Judge for Sentiment {
    fn name(&self) -> &str {
        "sentiment"
    }
    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>> {
        Ok(input.completions.iter().map(|c| self.polarity(c)).collect())
    }
}

/// Scores already in the data: the record's field `field`, a list of numbers, one per completion.
pub struct ScoreField {
    pub field: String,
}

impl Judge for ScoreField {
    fn name(&self) -> &str {
        "score"
    }
    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>> {
        let (f, at) = (&self.field, input.origin);
        let list =
            input.fields.get(f).with_context(|| format!("{at}: missing field `{f}` (the score judge reads it)"))?;
        let list = list.as_array().with_context(|| format!("{at}: field `{f}` must be a list of numbers"))?;
        if list.len() != input.completions.len() {
            bail!("{at}: field `{f}` has {} scores for {} completions", list.len(), input.completions.len());
        }
        list.iter()
            .map(|v| v.as_f64().with_context(|| format!("{at}: field `{f}` must be a list of numbers")))
            .collect()
    }
}

/// The judges `--judge` accepts (the last three take a model after the colon).
pub const JUDGES: [&str; 5] = ["sentiment", "score", "reward-model:DIR", "llm:MODEL", "implicit:POLICY[,REFERENCE]"];
/// The judge of `dpo label` and `dpo eval` when none is named.
pub const DEFAULT: &str = "sentiment";
/// The field the `score` judge reads when none is named.
pub const DEFAULT_SCORE_FIELD: &str = "scores";

/// The flags that choose a judge (`dpo label`, `dpo eval`, `dpo train --online`, `dpo iterate`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct JudgeSettings {
    /// The judge: sentiment (VADER), score (numbers in the data), reward-model:DIR (a *ForSequenceClassification model), llm:MODEL (pairwise, from the next-token probabilities of A and B), implicit:POLICY[,REFERENCE] (DPO's beta * log pi/pi_ref; POLICY may be a `dpo train` output directory).
    #[cfg_attr(feature = "cli", arg(long, default_value = DEFAULT))]
    pub judge: String,
    /// The field the `score` judge reads: one number per completion.
    #[cfg_attr(feature = "cli", arg(long, default_value = DEFAULT_SCORE_FIELD))]
    pub score_field: String,
    /// The llm: judge's pairwise template, a text file with {prompt}, {response_a} and {response_b} [default: which response is more helpful, correct and clear].
    #[cfg_attr(feature = "cli", arg(long))]
    pub judge_template: Option<PathBuf>,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        Self { judge: DEFAULT.into(), score_field: DEFAULT_SCORE_FIELD.into(), judge_template: None }
    }
}

impl JudgeSettings {
    /// The judge these flags name; model judges run forward passes of at most `max_tokens`
    /// packed tokens. Errors: an unknown judge, a template file that cannot be read or lacks a
    /// placeholder, what loading the judge's model refuses.
    pub fn build(&self, max_tokens: usize) -> Result<Box<dyn Judge>> {
        let (kind, arg) = match self.judge.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (self.judge.as_str(), None),
        };
        let need = |what: &str| -> Result<&str> {
            arg.filter(|a| !a.is_empty())
                .with_context(|| format!("--judge {kind} needs {what} after a colon: {kind}:{what}"))
        };
        if self.judge_template.is_some() && kind != "llm" {
            bail!("--judge-template is for the llm: judge, not `{}`", self.judge);
        }
        Ok(match kind {
            "sentiment" | "score" if arg.is_some() => bail!("--judge {kind} takes no argument (got `{}`)", self.judge),
            "sentiment" => Box::new(Sentiment::new()),
            "score" => Box::new(ScoreField { field: self.score_field.clone() }),
            "reward-model" => Box::new(RewardModel::load(Path::new(need("DIR")?), max_tokens)?),
            "llm" => {
                let text = match &self.judge_template {
                    Some(p) => Some((
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading the judge template {}", p.display()))?,
                        p.display().to_string(),
                    )),
                    None => None,
                };
                let template = text.as_ref().map(|(t, o)| (t.as_str(), o.as_str()));
                Box::new(LlmJudge::load(Path::new(need("MODEL")?), &Default::default(), template, max_tokens)?)
            }
            "implicit" => Box::new(ImplicitReward::load(need("POLICY")?, &Default::default(), max_tokens)?),
            _ => bail!("unknown judge `{}` (available: {})", self.judge, JUDGES.join(", ")),
        })
    }
}

/// The judge called `name` (`score_field`: the field the `score` judge reads), with the default
/// template and forward-pass size ([`JudgeSettings::build`]).
pub fn by_name(name: &str, score_field: &str) -> Result<Box<dyn Judge>> {
    JudgeSettings { judge: name.into(), score_field: score_field.into(), judge_template: None }
        .build(dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_orders_positive_above_negative_and_unknown_judges_are_refused() {
        let s = Sentiment::new();
        let c = vec![
            "a wonderful, moving film that I loved".to_string(),
            "dull and painfully bad".to_string(),
            "it is a film".to_string(),
        ];
        let f = Map::new();
        let v = s.score(&JudgeInput { prompt: "", completions: &c, fields: &f, origin: "x:1" }).unwrap();
        assert!(v[0] > 0.5 && v[1] < -0.5 && v[2].abs() < 0.1, "{v:?}");
        let e = by_name("gpt4", "scores").err().unwrap().to_string();
        assert!(e.contains("unknown judge `gpt4`") && e.contains("sentiment, score, reward-model:DIR"), "{e}");
        let e = by_name("llm:", "scores").err().unwrap().to_string();
        assert!(e.contains("--judge llm needs MODEL after a colon"), "{e}");
        let e = by_name("implicit:/nonexistent/model", "scores").err().unwrap().to_string();
        assert!(e.contains("name the reference"), "{e}");
        let e = JudgeSettings { judge_template: Some("t.txt".into()), ..Default::default() }
            .build(64)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--judge-template is for the llm: judge"), "{e}");
        let mut f = Map::new();
        f.insert("scores".into(), serde_json::json!([1.0, 2.0]));
        let e = ScoreField { field: "scores".into() }.score(&JudgeInput {
            prompt: "",
            completions: &c,
            fields: &f,
            origin: "x:3",
        });
        assert!(e.unwrap_err().to_string().contains("x:3: field `scores` has 2 scores for 3 completions"));
    }
}
