//! From the cells of one commit to what bisect is told: each trial's
//! outcome in each run, the trial's verdict across the runs, the commit's.

use std::collections::BTreeMap;

use crate::matrix::collect::Cell;

/// One trial in one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Passed, or failed as expected (an XFAIL is the kernel as known).
    Pass,
    /// An unexpected result (fail, xpass, error, a kernel fault in it): why.
    Fail(String),
    /// It did not say: skipped, not run, or the run broke first. Why.
    Unknown(String),
}

/// How trial `name` ended in `cell`.
pub fn seen(cell: &Cell, name: &str) -> Seen {
    if let Some(f) = &cell.fault {
        if f.trial.as_deref() == Some(name) {
            return Seen::Fail(format!("kernel fault: {}", f.headline()));
        }
    }
    match cell.trials.iter().find(|t| t.name == name) {
        Some(t) if t.unexpected() => Seen::Fail(
            t.reason
                .clone()
                .map(|r| format!("{}: {r}", t.outcome))
                .unwrap_or_else(|| t.outcome.clone()),
        ),
        Some(t) if matches!(t.outcome.as_str(), "pass" | "xfail") => Seen::Pass,
        Some(t) => Seen::Unknown(format!(
            "{}{}",
            t.outcome,
            t.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
        None => Seen::Unknown(
            cell.broken
                .clone()
                .map(|b| format!("not run: {b}"))
                .unwrap_or_else(|| "not run".into()),
        ),
    }
}

/// A trial across the runs of one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// Passed in some runs, failed in others.
    Flaky {
        passed: usize,
        failed: usize,
    },
    Unknown(String),
}

pub fn verdict(runs: &[Seen]) -> Verdict {
    let failed: Vec<&String> = runs
        .iter()
        .filter_map(|s| match s {
            Seen::Fail(r) => Some(r),
            _ => None,
        })
        .collect();
    let passed = runs.iter().filter(|s| **s == Seen::Pass).count();
    match (passed, failed.first()) {
        (0, Some(why)) => Verdict::Fail((*why).clone()),
        (p, Some(_)) => Verdict::Flaky {
            passed: p,
            failed: failed.len(),
        },
        (p, None) if p > 0 => Verdict::Pass,
        _ => Verdict::Unknown(
            runs.iter()
                .find_map(|s| match s {
                    Seen::Unknown(w) => Some(w.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "no run".into()),
        ),
    }
}

/// Every trial named in `cells` (or `only`), with its verdict across them.
pub fn verdicts(cells: &[Cell], only: Option<&[String]>) -> BTreeMap<String, Verdict> {
    let names: Vec<String> = match only {
        Some(n) => n.to_vec(),
        None => {
            let mut v: Vec<String> = cells
                .iter()
                .flat_map(|c| c.trials.iter().map(|t| t.name.clone()))
                .collect();
            v.sort();
            v.dedup();
            v
        }
    };
    names
        .into_iter()
        .map(|n| {
            let runs: Vec<Seen> = cells.iter().map(|c| seen(c, &n)).collect();
            let v = verdict(&runs);
            (n, v)
        })
        .collect()
}

/// What a commit is, for `git bisect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// At least one of the trials fails in every run: these, with why.
    Bad(Vec<(String, String)>),
    /// Every trial passes.
    Good,
    /// Some trial flips between runs (and none fails throughout).
    Flaky(Vec<String>),
    /// It cannot be told (a trial skipped or not run, the boot broke): why.
    Skip(String),
}

pub fn mark(v: &BTreeMap<String, Verdict>) -> Mark {
    let failing: Vec<(String, String)> = v
        .iter()
        .filter_map(|(n, v)| match v {
            Verdict::Fail(why) => Some((n.clone(), why.clone())),
            _ => None,
        })
        .collect();
    if !failing.is_empty() {
        return Mark::Bad(failing);
    }
    let flaky: Vec<String> = v
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Flaky { .. }))
        .map(|(n, _)| n.clone())
        .collect();
    if !flaky.is_empty() {
        return Mark::Flaky(flaky);
    }
    if let Some((n, Verdict::Unknown(why))) =
        v.iter().find(|(_, v)| matches!(v, Verdict::Unknown(_)))
    {
        return Mark::Skip(format!("{n}: {why}"));
    }
    if v.is_empty() {
        return Mark::Skip("no trial ran".into());
    }
    Mark::Good
}

impl Mark {
    /// What `git bisect` is told.
    pub fn git(&self) -> &'static str {
        match self {
            Mark::Bad(_) => "bad",
            Mark::Good => "good",
            Mark::Flaky(_) | Mark::Skip(_) => "skip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::collect::Trial;
    use std::time::Duration;

    fn cell(trials: &[(&str, &str)]) -> Cell {
        let mut c = Cell::broken("tree:x", Duration::ZERO, "unused".into(), vec![]);
        c.broken = None;
        c.trials = trials
            .iter()
            .map(|(name, outcome)| Trial {
                name: name.to_string(),
                family: "cow_anon".into(),
                outcome: outcome.to_string(),
                reason: (*outcome != "pass").then(|| format!("why {name}")),
            })
            .collect();
        c
    }

    #[test]
    fn each_outcome_is_seen_as_pass_fail_or_unknown() {
        let c = cell(&[
            ("a", "pass"),
            ("b", "fail"),
            ("c", "xfail"),
            ("d", "skip"),
            ("e", "xpass"),
        ]);
        assert_eq!(seen(&c, "a"), Seen::Pass);
        assert_eq!(seen(&c, "b"), Seen::Fail("fail: why b".into()));
        assert_eq!(seen(&c, "c"), Seen::Pass, "the kernel as known");
        assert_eq!(seen(&c, "d"), Seen::Unknown("skip: why d".into()));
        assert_eq!(seen(&c, "e"), Seen::Fail("xpass: why e".into()));
        assert_eq!(seen(&c, "z"), Seen::Unknown("not run".into()));
        let broken = Cell::broken(
            "tree:x",
            Duration::ZERO,
            "no result within 900 s".into(),
            vec![],
        );
        assert_eq!(
            seen(&broken, "a"),
            Seen::Unknown("not run: no result within 900 s".into())
        );
    }

    #[test]
    fn a_trial_that_flips_between_runs_is_flaky() {
        let f = || Seen::Fail("leaked".into());
        let u = || Seen::Unknown("skip".into());
        assert_eq!(verdict(&[f(), f()]), Verdict::Fail("leaked".into()));
        assert_eq!(verdict(&[Seen::Pass, Seen::Pass]), Verdict::Pass);
        assert_eq!(
            verdict(&[Seen::Pass, f()]),
            Verdict::Flaky {
                passed: 1,
                failed: 1
            }
        );
        // One run broke: the other still tells.
        assert_eq!(verdict(&[f(), u()]), Verdict::Fail("leaked".into()));
        assert_eq!(verdict(&[u(), Seen::Pass]), Verdict::Pass);
        assert_eq!(verdict(&[u(), u()]), Verdict::Unknown("skip".into()));
        assert_eq!(verdict(&[]), Verdict::Unknown("no run".into()));
    }

    #[test]
    fn a_commit_is_bad_when_a_trial_fails_throughout() {
        let two = |a: &[(&str, &str)], b: &[(&str, &str)]| {
            mark(&verdicts(
                &[cell(a), cell(b)],
                Some(&["x".into(), "y".into()]),
            ))
        };
        assert_eq!(
            two(
                &[("x", "fail"), ("y", "pass")],
                &[("x", "fail"), ("y", "fail")]
            ),
            Mark::Bad(vec![("x".into(), "fail: why x".into())])
        );
        assert_eq!(
            two(
                &[("x", "pass"), ("y", "pass")],
                &[("x", "pass"), ("y", "pass")]
            ),
            Mark::Good
        );
        assert_eq!(
            two(
                &[("x", "pass"), ("y", "pass")],
                &[("x", "fail"), ("y", "pass")]
            ),
            Mark::Flaky(vec!["x".into()])
        );
        assert_eq!(
            two(
                &[("x", "skip"), ("y", "pass")],
                &[("x", "skip"), ("y", "pass")]
            ),
            Mark::Skip("x: skip: why x".into())
        );
        assert_eq!(mark(&BTreeMap::new()), Mark::Skip("no trial ran".into()));
        assert_eq!(Mark::Flaky(vec![]).git(), "skip");
        // Every trial named in the runs, when none are given.
        let v = verdicts(&[cell(&[("b", "pass"), ("a", "fail")])], None);
        assert_eq!(v.keys().collect::<Vec<_>>(), ["a", "b"]);
    }
}
