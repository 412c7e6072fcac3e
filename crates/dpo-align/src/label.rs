//! Turning judged samples into preference data: pairs or rankings.

use crate::judge::{Judge, JudgeInput};
use anyhow::{bail, ensure, Context, Result};
use dpo_data::example::kind;
use dpo_data::read_objects;
use dpo_data::samples::SampleRecord;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::Path;

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelMode {
    /// One pair per prompt: the best-scored completion against the worst.
    BestWorst,
    /// Every ordered pair `(i, j)` with `score_i > score_j`.
    AllPairs,
    /// Disjoint pairs from the ranking's two ends: best vs worst, second best vs second worst, …
    /// (`n/2` pairs per prompt, each completion used once).
    RankPairs,
    /// The completions ranked best first (for the Plackett–Luce loss).
    Ranking,
}

impl std::str::FromStr for LabelMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "best-worst" | "best_worst" => Ok(Self::BestWorst),
            "all-pairs" | "all_pairs" => Ok(Self::AllPairs),
            "rank-pairs" | "rank_pairs" => Ok(Self::RankPairs),
            "ranking" | "rankings" => Ok(Self::Ranking),
            _ => Err(format!("unknown mode `{s}` (best-worst, rank-pairs, all-pairs, ranking)")),
        }
    }
}

/// A record of samples: `{"prompt": str, "completions": [str, ...], ...}`.
#[derive(Debug, Clone)]
pub struct SampleLine {
    pub origin: String,
    pub prompt: String,
    pub completions: Vec<String>,
    pub fields: Map<String, Value>,
}

/// The records of samples as lines to label, the `i`-th named `{what} {i + 1}` in errors.
pub fn sample_lines(records: &[SampleRecord], what: &str) -> Vec<SampleLine> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| SampleLine {
            origin: format!("{what} {}", i + 1),
            prompt: r.prompt.clone(),
            completions: r.completions.clone(),
            fields: Map::new(),
        })
        .collect()
}

/// Reads sample records (the output of `dpo sample`, or any records with `prompt` and
/// `completions`, in any data file format); errors name the file, line and field; an empty file
/// is an error.
pub fn read_samples(path: &Path) -> Result<Vec<SampleLine>> {
    let mut out = Vec::new();
    for (origin, fields) in read_objects(path)? {
        let prompt = match fields.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => bail!("{origin}: field `prompt` must be a string, found {}", kind(v)),
            None => bail!("{origin}: missing field `prompt`"),
        };
        let completions = match fields.get("completions") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|c| {
                    c.as_str()
                        .map(str::to_string)
                        .with_context(|| format!("{origin}: field `completions` must be a list of strings"))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => bail!("{origin}: field `completions` must be a list of strings, found {}", kind(v)),
            None => bail!("{origin}: missing field `completions`"),
        };
        out.push(SampleLine { origin: origin.to_string(), prompt, completions, fields });
    }
    ensure!(!out.is_empty(), "{}: no records", path.display());
    Ok(out)
}

/// What labelling did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelReport {
    pub prompts: usize,
    /// Records written (pairs or rankings).
    pub written: usize,
    /// Pairs not written because both completions scored the same (for rankings: prompts with a tie).
    pub ties_dropped: usize,
    pub mean_score: f64,
}

/// Judges every record and builds the preference data of `mode`. Pairs are
/// `{"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}`; rankings are
/// `{"prompt", "completions", "scores", "ranking"}` with `ranking` the completion indices, best
/// first (a tie keeps the sample order). Every record needs at least 2 completions.
pub fn label(records: &[SampleLine], judge: &dyn Judge, mode: LabelMode) -> Result<(Vec<Value>, LabelReport)> {
    let mut out = Vec::new();
    let mut report = LabelReport { prompts: records.len(), ..Default::default() };
    let mut total = (0.0, 0usize);
    for r in records {
        if r.completions.len() < 2 {
            bail!(
                "{}: {} completion(s); labelling needs at least 2 per prompt (sample with n >= 2)",
                r.origin,
                r.completions.len()
            );
        }
        let s = judge.score(&JudgeInput {
            prompt: &r.prompt,
            completions: &r.completions,
            fields: &r.fields,
            origin: &r.origin,
        })?;
        if let Some(x) = s.iter().find(|x| !x.is_finite()) {
            bail!("{}: the {} judge gave a non-finite score {x}", r.origin, judge.name());
        }
        total = (total.0 + s.iter().sum::<f64>(), total.1 + s.len());
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        let pair = |i: usize, j: usize| {
            json!({"prompt": r.prompt, "chosen": r.completions[i], "rejected": r.completions[j],
                   "score_chosen": s[i], "score_rejected": s[j]})
        };
        match mode {
            LabelMode::BestWorst => {
                let (best, worst) = (order[0], order[order.len() - 1]);
                if s[best] > s[worst] {
                    out.push(pair(best, worst));
                } else {
                    report.ties_dropped += 1;
                }
            }
            LabelMode::RankPairs => {
                for i in 0..order.len() / 2 {
                    let (hi, lo) = (order[i], order[order.len() - 1 - i]);
                    if s[hi] > s[lo] {
                        out.push(pair(hi, lo));
                    } else {
                        report.ties_dropped += 1;
                    }
                }
            }
            LabelMode::AllPairs => {
                for i in 0..s.len() {
                    for j in 0..s.len() {
                        if s[i] > s[j] {
                            out.push(pair(i, j));
                        } else if i < j && s[i] == s[j] {
                            report.ties_dropped += 1;
                        }
                    }
                }
            }
            LabelMode::Ranking => {
                if order.windows(2).any(|w| s[w[0]] == s[w[1]]) {
                    report.ties_dropped += 1;
                }
                out.push(json!({"prompt": r.prompt, "completions": r.completions, "scores": s, "ranking": order}));
            }
        }
    }
    report.written = out.len();
    report.mean_score = total.0 / total.1.max(1) as f64;
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::ScoreField;

    fn line(scores: &[f64]) -> SampleLine {
        let mut fields = Map::new();
        fields.insert("scores".into(), json!(scores));
        SampleLine {
            origin: "s.jsonl:1".into(),
            prompt: "P".into(),
            completions: (0..scores.len()).map(|i| format!("c{i}")).collect(),
            fields,
        }
    }

    #[test]
    fn pairs_rankings_and_ties() {
        let j = ScoreField { field: "scores".into() };
        let recs = [line(&[0.1, 0.9, 0.5, 0.9]), line(&[0.3, 0.3])];
        let (bw, rep) = label(&recs, &j, LabelMode::BestWorst).unwrap();
        assert_eq!(
            bw,
            vec![json!({"prompt":"P","chosen":"c1","rejected":"c0","score_chosen":0.9,"score_rejected":0.1})]
        );
        assert_eq!((rep.written, rep.ties_dropped), (1, 1));
        let (rp, rep) = label(&recs, &j, LabelMode::RankPairs).unwrap();
        assert_eq!((rp.len(), rep.ties_dropped), (2, 1), "c1>c0, c3>c2; the tied second prompt");
        assert_eq!((rp[1]["chosen"].as_str(), rp[1]["rejected"].as_str()), (Some("c3"), Some("c2")));
        let (all, rep) = label(&recs, &j, LabelMode::AllPairs).unwrap();
        assert_eq!(
            (all.len(), rep.ties_dropped),
            (5, 2),
            "c1>c0,c1>c2,c3>c0,c3>c2,c2>c0; ties c1=c3 and the second prompt"
        );
        let (rk, _) = label(&recs[..1], &j, LabelMode::Ranking).unwrap();
        assert_eq!(rk[0]["ranking"], json!([1, 3, 2, 0]));
        let e = label(&[line(&[0.5])], &j, LabelMode::BestWorst).unwrap_err().to_string();
        assert!(e.contains("s.jsonl:1") && e.contains("at least 2"), "{e}");
    }
}
