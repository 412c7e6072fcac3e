//! Judges: score completions so that samples can be turned into preference data.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

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
        let list = input.fields.get(f).with_context(|| format!("{at}: missing field `{f}` (the score judge reads it)"))?;
        let list = list.as_array().with_context(|| format!("{at}: field `{f}` must be a list of numbers"))?;
        if list.len() != input.completions.len() {
            bail!("{at}: field `{f}` has {} scores for {} completions", list.len(), input.completions.len());
        }
        list.iter().map(|v| v.as_f64().with_context(|| format!("{at}: field `{f}` must be a list of numbers"))).collect()
    }
}

/// The judges `--judge` accepts.
pub const JUDGES: [&str; 2] = ["sentiment", "score"];
/// The judge of `dpo label` and `dpo eval` when none is named.
pub const DEFAULT: &str = "sentiment";
/// The field the `score` judge reads when none is named.
pub const DEFAULT_SCORE_FIELD: &str = "scores";

/// The judge called `name` (`score_field`: the field the `score` judge reads).
pub fn by_name(name: &str, score_field: &str) -> Result<Box<dyn Judge>> {
    match name {
        "sentiment" => Ok(Box::new(Sentiment::new())),
        "score" => Ok(Box::new(ScoreField { field: score_field.to_string() })),
        _ => bail!("unknown judge `{name}` (available: {})", JUDGES.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_orders_positive_above_negative_and_unknown_judges_are_refused() {
        let s = Sentiment::new();
        let c = vec!["a wonderful, moving film that I loved".to_string(), "dull and painfully bad".to_string(), "it is a film".to_string()];
        let f = Map::new();
        let v = s.score(&JudgeInput { prompt: "", completions: &c, fields: &f, origin: "x:1" }).unwrap();
        assert!(v[0] > 0.5 && v[1] < -0.5 && v[2].abs() < 0.1, "{v:?}");
        let e = by_name("gpt4", "scores").err().unwrap().to_string();
        assert!(e.contains("unknown judge `gpt4`") && e.contains("sentiment, score"), "{e}");
        let mut f = Map::new();
        f.insert("scores".into(), serde_json::json!([1.0, 2.0]));
        let e = ScoreField { field: "scores".into() }.score(&JudgeInput { prompt: "", completions: &c, fields: &f, origin: "x:3" });
        assert!(e.unwrap_err().to_string().contains("x:3: field `scores` has 2 scores for 3 completions"));
    }
}
