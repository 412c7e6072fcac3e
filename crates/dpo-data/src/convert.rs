//! Conversions between example kinds, for losses and tasks that need another one than the data
//! has, and [`require`] for those that need one kind.
//!
//! Each conversion keeps every record's [`Origin`](crate::Origin) file and line (errors and skipped records still
//! name the source record) and renumbers `index` to the position in the returned list, so that
//! indices stay unique (reference log-prob files are keyed by them). Records kept as skipped
//! (`Err` examples) pass through unchanged.

use super::{Example, ExampleKind, Record};
use anyhow::{bail, Result};

/// The kind of example a loss or task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Preference pairs: `[chosen, rejected]`.
    Pair,
    /// Completions ranked best first.
    Ranking,
    /// One completion labelled desirable or undesirable.
    Unpaired,
    /// One completion to imitate.
    Completion,
}

impl Layout {
    /// The layout of an example kind.
    pub fn of(kind: &ExampleKind) -> Layout {
        match kind {
            ExampleKind::Pair { .. } => Layout::Pair,
            ExampleKind::Ranking { .. } => Layout::Ranking,
            ExampleKind::Unpaired { .. } => Layout::Unpaired,
            ExampleKind::Completion => Layout::Completion,
        }
    }

    /// Whether an example of `kind` can be used where this layout is needed: its own layout, and
    /// for rankings also a pair (a ranking of two).
    pub fn accepts(self, kind: &ExampleKind) -> bool {
        let of = Layout::of(kind);
        of == self || (self == Layout::Ranking && of == Layout::Pair)
    }

    fn needs(self) -> &'static str {
        match self {
            Layout::Pair => "preference pairs (`chosen`, `rejected`)",
            Layout::Ranking => "rankings (`completions` with `ranking` or `scores`)",
            Layout::Unpaired => "completions labelled desirable or not (`completion`, `label`)",
            Layout::Completion => "completions to imitate (`completion`)",
        }
    }
}

/// What an example is, in words, for errors.
fn describe(ex: &Example) -> String {
    match &ex.kind {
        ExampleKind::Pair { .. } => "a preference pair (`chosen`, `rejected`)".into(),
        ExampleKind::Ranking { .. } => format!("a ranking of {} completions (`completions`)", ex.completions.len()),
        ExampleKind::Unpaired { desirable } => {
            format!("one {} completion (`completion`, `label`)", if *desirable { "desirable" } else { "undesirable" })
        }
        ExampleKind::Completion => "one completion without preference (`completion`)".into(),
    }
}

/// Checks that every usable record fits `layout` (see [`Layout::accepts`]); the first that does not is an error
/// `FILE:LINE: this loss needs preference pairs (`chosen`, `rejected`); the record has ...`.
pub fn require(records: &[Record], layout: Layout) -> Result<()> {
    for r in records {
        if let Ok(ex) = &r.example {
            if !layout.accepts(&ex.kind) {
                bail!("{}: this loss needs {}; the record has {}", r.origin, layout.needs(), describe(ex));
            }
        }
    }
    Ok(())
}

fn renumber(mut out: Vec<Record>) -> Vec<Record> {
    for (i, r) in out.iter_mut().enumerate() {
        r.origin.index = i;
    }
    out
}

/// The completions `picked` of `ex` (in that order) as an example of `kind`, with their rendered
/// conversations.
fn subset(ex: &Example, picked: &[usize], kind: ExampleKind) -> Example {
    Example {
        prompt: ex.prompt.clone(),
        completions: picked.iter().map(|&i| ex.completions[i].clone()).collect(),
        kind,
        rendered: ex.rendered.as_ref().map(|r| picked.iter().map(|&i| r[i].clone()).collect()),
    }
}

/// How many records TRL's `unpair_preference_dataset` handles at once (`datasets`' `map` batch).
pub const UNPAIR_BATCH: usize = 1000;

/// Pairs → unpaired examples, as TRL's `unpair_preference_dataset` (KTO on paired data): each pair
/// becomes its chosen completion, desirable, and its rejected one, undesirable, with the same
/// prompt. The order is TRL's: a batched `map` over blocks of [`UNPAIR_BATCH`] records, each block
/// giving all its chosen completions, then all its rejected ones (which matters to KTO's KL
/// estimate, built from neighbouring examples). Unpaired records pass through (in the first half
/// of their block); rankings and plain completions are an error.
pub fn to_unpaired(records: Vec<Record>) -> Result<Vec<Record>> {
    let mut out = Vec::with_capacity(records.len() * 2);
    for block in records.chunks(UNPAIR_BATCH) {
        let mut rejected = Vec::new();
        for r in block {
            match &r.example {
                Ok(ex) if matches!(ex.kind, ExampleKind::Pair { .. }) => {
                    out.push(Record {
                        origin: r.origin.clone(),
                        example: Ok(subset(ex, &[0], ExampleKind::Unpaired { desirable: true })),
                    });
                    rejected.push(Record {
                        origin: r.origin.clone(),
                        example: Ok(subset(ex, &[1], ExampleKind::Unpaired { desirable: false })),
                    });
                }
                Ok(ex) if matches!(ex.kind, ExampleKind::Unpaired { .. }) => out.push(r.clone()),
                Ok(ex) => bail!(
                    "{}: unpaired completions are made from preference pairs; the record has {}",
                    r.origin,
                    describe(ex)
                ),
                Err(_) => out.push(r.clone()),
            }
        }
        out.extend(rejected);
    }
    Ok(renumber(out))
}

/// Rankings → preference pairs: a ranking of K completions (best first) becomes its K(K-1)/2
/// pairs `(i, j)`, `i` ranked above `j`, in the order (0,1), (0,2), …, (1,2), …, with the two
/// scores when the ranking has scores. Pairs pass through; other kinds are an error.
pub fn rankings_to_pairs(records: Vec<Record>) -> Result<Vec<Record>> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let Ok(ex) = &r.example else {
            out.push(r);
            continue;
        };
        match &ex.kind {
            ExampleKind::Pair { .. } => out.push(r.clone()),
            ExampleKind::Ranking { scores } => {
                let k = ex.completions.len();
                for i in 0..k {
                    for j in i + 1..k {
                        let pair =
                            subset(ex, &[i, j], ExampleKind::Pair { scores: scores.as_ref().map(|s| [s[i], s[j]]) });
                        out.push(Record { origin: r.origin.clone(), example: Ok(pair) });
                    }
                }
            }
            _ => bail!("{}: preference pairs are made from rankings; the record has {}", r.origin, describe(ex)),
        }
    }
    Ok(renumber(out))
}

/// Examples → completions to imitate (SFT): a pair gives its chosen completion, a ranking its
/// best, a desirable unpaired completion itself; undesirable ones are dropped; completions stay.
pub fn to_completions(records: Vec<Record>) -> Vec<Record> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let Ok(ex) = &r.example else {
            out.push(r);
            continue;
        };
        match ex.kind {
            ExampleKind::Completion => out.push(r),
            ExampleKind::Unpaired { desirable: false } => {}
            ExampleKind::Pair { .. } | ExampleKind::Ranking { .. } | ExampleKind::Unpaired { desirable: true } => {
                out.push(Record { origin: r.origin.clone(), example: Ok(subset(ex, &[0], ExampleKind::Completion)) })
            }
        }
    }
    renumber(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Origin, Position};
    use std::path::Path;

    fn rec(line: usize, ex: Example) -> Record {
        Record { origin: Origin::new(Path::new("d.jsonl"), line, line - 1, Position::Line), example: Ok(ex) }
    }

    fn kinds(rs: &[Record]) -> Vec<(usize, usize, String, ExampleKind)> {
        rs.iter()
            .map(|r| {
                let ex = r.example.as_ref().unwrap();
                (r.origin.line, r.origin.index, ex.completions.join("|"), ex.kind.clone())
            })
            .collect()
    }

    #[test]
    fn unpairing_follows_trl_order() {
        let recs = vec![
            rec(1, Example::pair("P", "a", "b")),
            rec(2, Example::pair("Q", "c", "d")),
            rec(3, Example::unpaired("R", "e", false)),
        ];
        let out = to_unpaired(recs).unwrap();
        let (t, f) = (ExampleKind::Unpaired { desirable: true }, ExampleKind::Unpaired { desirable: false });
        assert_eq!(
            kinds(&out),
            [
                (1, 0, "a".into(), t.clone()),
                (2, 1, "c".into(), t.clone()),
                (3, 2, "e".into(), f.clone()),
                (1, 3, "b".into(), f.clone()),
                (2, 4, "d".into(), f.clone())
            ]
        );
        assert_eq!(out[3].example.as_ref().unwrap().prompt, "P");
        // blocks of 1000: record 1001's sides come after the first block's rejected ones
        let recs: Vec<Record> =
            (1..=1001).map(|i| rec(i, Example::pair("P", format!("c{i}"), format!("r{i}")))).collect();
        let out = to_unpaired(recs).unwrap();
        let names: Vec<String> = out.iter().map(|r| r.example.as_ref().unwrap().completions[0].clone()).collect();
        assert_eq!(
            (
                names[999].as_str(),
                names[1000].as_str(),
                names[1999].as_str(),
                names[2000].as_str(),
                names[2001].as_str()
            ),
            ("c1000", "r1", "r1000", "c1001", "r1001")
        );
        // conversational: the rendered conversation goes along
        let mut ex = Example::pair("<p>", "a", "b");
        ex.rendered = Some(vec!["<p>a".into(), "<p>b".into()]);
        let out = to_unpaired(vec![rec(1, ex)]).unwrap();
        assert_eq!(out[1].example.as_ref().unwrap().rendered.as_deref(), Some(&["<p>b".to_string()][..]));
        let e = to_unpaired(vec![rec(4, Example::completion("P", "c"))]).unwrap_err().to_string();
        assert_eq!(e, "d.jsonl:4: unpaired completions are made from preference pairs; the record has one completion without preference (`completion`)");
    }

    #[test]
    fn rankings_become_all_ordered_pairs() {
        let recs = vec![
            rec(1, Example::ranking("P", vec!["a".into(), "b".into(), "c".into()], Some(vec![3.0, 2.0, 1.0]))),
            rec(2, Example::pair("Q", "x", "y")),
            rec(3, Example::ranking("R", vec!["d".into(), "e".into()], None)),
        ];
        let out = rankings_to_pairs(recs).unwrap();
        let p = |s: Option<[f64; 2]>| ExampleKind::Pair { scores: s };
        assert_eq!(
            kinds(&out),
            [
                (1, 0, "a|b".into(), p(Some([3.0, 2.0]))),
                (1, 1, "a|c".into(), p(Some([3.0, 1.0]))),
                (1, 2, "b|c".into(), p(Some([2.0, 1.0]))),
                (2, 3, "x|y".into(), p(None)),
                (3, 4, "d|e".into(), p(None)),
            ]
        );
        assert!(rankings_to_pairs(vec![rec(5, Example::unpaired("P", "c", true))])
            .unwrap_err()
            .to_string()
            .starts_with("d.jsonl:5: preference pairs are made from rankings"));
    }

    #[test]
    fn completions_for_sft() {
        let skipped =
            Record { origin: Origin::new(Path::new("d.jsonl"), 6, 5, Position::Line), example: Err("why".into()) };
        let recs = vec![
            rec(1, Example::pair("P", "a", "b")),
            rec(2, Example::completion("Q", "c")),
            rec(3, Example::unpaired("R", "d", true)),
            rec(4, Example::unpaired("S", "e", false)),
            rec(5, Example::ranking("T", vec!["f".into(), "g".into()], None)),
            skipped,
        ];
        let out = to_completions(recs);
        assert_eq!(out.len(), 5);
        assert!(out[4].example.is_err() && out[4].origin.index == 4 && out[4].origin.line == 6);
        let c = ExampleKind::Completion;
        assert_eq!(
            kinds(&out[..4]),
            [
                (1, 0, "a".into(), c.clone()),
                (2, 1, "c".into(), c.clone()),
                (3, 2, "d".into(), c.clone()),
                (5, 3, "f".into(), c.clone())
            ]
        );
    }

    #[test]
    fn require_names_the_record_and_what_it_has() {
        let recs = vec![
            rec(1, Example::pair("P", "a", "b")),
            rec(2, Example::ranking("Q", vec!["a".into(), "b".into(), "c".into()], None)),
        ];
        require(&recs[..1], Layout::Pair).unwrap();
        let e = require(&recs, Layout::Pair).unwrap_err().to_string();
        assert_eq!(e, "d.jsonl:2: this loss needs preference pairs (`chosen`, `rejected`); the record has a ranking of 3 completions (`completions`)");
        let e = require(&recs, Layout::Unpaired).unwrap_err().to_string();
        assert!(e.starts_with("d.jsonl:1: this loss needs completions labelled desirable or not"), "{e}");
        require(&rankings_to_pairs(recs.clone()).unwrap(), Layout::Pair).unwrap();
        // a pair is a ranking of two
        require(&recs[..1], Layout::Ranking).unwrap();
        let e = require(&[rec(3, Example::unpaired("R", "e", true))], Layout::Ranking).unwrap_err().to_string();
        assert!(e.starts_with("d.jsonl:3: this loss needs rankings"), "{e}");
    }
}
