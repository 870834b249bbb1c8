//! The one place where what was observed about a trial becomes its outcome.
//!
//! The runner gathers `Observations` — the outcome the trial process itself
//! reported (records from any other process never get here), how that process
//! ended, and the checks made around it (processes left behind, pin balance,
//! the kernel log) — and `decide` turns them into the verdict. Nothing
//! after it changes `TrialReport::outcome`.
//!
//! The rules, in order:
//! 1. How the trial process ended comes first. Timed out: Error. Killed by a
//!    signal or a non-zero exit *after* reporting: Error naming the signal or
//!    status (the report cannot be trusted, yet nothing says the kernel is at
//!    fault). The same without a report: Fail (a crash is a result). A clean
//!    exit with a report: the report. A clean exit without one: Fail.
//! 2. A `Violated` check turns a Pass, Xfail, Xpass or Skip into a Fail that
//!    names the check and what it measured; the trial's own outcome is kept in
//!    the notes. A Fail or an Error stands (its own reason is the first thing
//!    to read), and the violated check is noted next to it.
//! 3. `NotChecked` and `Unreliable` never change the outcome; they are in the
//!    report's checks, and in the notes so that a plain-text report shows them.
//!
//! Processes left behind (the "leftover processes" check) follow rule 2: a
//! trial whose process tree had not ended when its process did has not been
//! fully judged (cow.c waits for every child it forks; a child still running
//! may be one whose check was never collected), so its pass is not trusted.
//! This differs from nextest's default (a leaky test's result stands, marked
//! LEAK) on purpose: the runner kills the leftovers, so the cost is this one
//! result, and what it buys is that no pass hides an unfinished child.

use std::time::Duration;

use crate::outcome::{CheckResult, CheckStatus, Outcome};

/// How the trial process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled {
        signal: i32,
        core: bool,
    },
    /// The time limit passed; the runner killed the process group.
    TimedOut(Duration),
    /// Anything else waitpid reported (never expected).
    Other(String),
    /// The kernel faulted (Oops, BUG, ...) while the trial ran; the runner
    /// stopped its processes as far as they could be stopped.
    KernelFault(String),
    /// Never started: the kernel had faulted in an earlier trial.
    NotRun(String),
}

/// Everything the verdict is formed from.
#[derive(Clone, Debug)]
pub struct Observations {
    /// What the trial process itself reported, if it did.
    pub reported: Option<Outcome>,
    pub ended: Ended,
    /// Checks made around the trial, in the order they were made.
    pub checks: Vec<CheckResult>,
}

/// The outcome, and lines for the diagnostics that explain how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub notes: Vec<String>,
}

/// "signal 11 (SIGSEGV)"
pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => format!("signal {signal} ({})", s.as_str()),
        Err(_) => format!("signal {signal}"),
    }
}

fn what_was_reported(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        other => format!("{} ({})", other.kind().as_str(), other.reason()),
    }
}

fn from_process(obs: &Observations, notes: &mut Vec<String>) -> Outcome {
    match (&obs.reported, &obs.ended) {
        (reported, Ended::TimedOut(after)) => {
            if let Some(o) = reported {
                notes.push(format!(
                    "the trial had reported {} before its time ran out",
                    what_was_reported(o)
                ));
            }
            Outcome::Error(format!(
                "timed out after {} s (time limit; see --timeout); killed its process group",
                after.as_secs_f64()
            ))
        }
        (Some(o), Ended::Exited(0)) => o.clone(),
        (Some(o), Ended::Exited(code)) => Outcome::Error(format!(
            "trial process exited with status {code} after reporting {}",
            o.kind().as_str()
        )),
        (Some(o), Ended::Signaled { signal, core }) => {
            notes.push(format!("the trial had reported: {o}"));
            Outcome::Error(format!(
                "trial process killed by {}{} after reporting {}",
                signal_name(*signal),
                if *core { ", core dumped" } else { "" },
                o.kind().as_str()
            ))
        }
        (None, Ended::Signaled { signal, core }) => Outcome::Fail(format!(
            "trial process killed by {}{}",
            signal_name(*signal),
            if *core { ", core dumped" } else { "" }
        )),
        (None, Ended::Exited(code)) => Outcome::Fail(format!(
            "trial process exited with status {code} before reporting an outcome"
        )),
        (reported, Ended::KernelFault(why)) => {
            if let Some(o) = reported {
                notes.push(format!("the trial had reported: {o}"));
            }
            Outcome::Fail(format!(
                "the kernel faulted while this trial ran (its processes were stopped; no \
                 further trial runs on this kernel): {why}"
            ))
        }
        (_, Ended::NotRun(why)) => Outcome::Error(format!("not run: {why}")),
        (reported, Ended::Other(what)) => {
            if let Some(o) = reported {
                notes.push(format!("the trial had reported: {o}"));
            }
            Outcome::Error(format!("trial process ended oddly: {what}"))
        }
    }
}

fn line(c: &CheckResult) -> String {
    format!("{}: {}", c.check, c.detail)
}

/// Form the verdict. Pure: the same observations always give the same verdict.
pub fn decide(obs: &Observations) -> Verdict {
    let mut notes = Vec::new();
    let own = from_process(obs, &mut notes);
    let violated: Vec<&CheckResult> = obs
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Violated)
        .collect();
    for c in &obs.checks {
        match c.status {
            CheckStatus::NotChecked | CheckStatus::Unreliable => notes.push(line(c)),
            CheckStatus::Held | CheckStatus::Violated => {}
        }
    }
    let outcome = match own {
        Outcome::Fail(_) | Outcome::Error(_) => {
            for c in &violated {
                notes.push(format!("also violated: {}", line(c)));
            }
            own
        }
        own if violated.is_empty() => own,
        own => {
            notes.push(format!("outcome before the checks: {own}"));
            Outcome::Fail(
                violated
                    .iter()
                    .map(|c| line(c))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    };
    Verdict { outcome, notes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::OutcomeKind;

    fn check(status: CheckStatus) -> CheckResult {
        CheckResult {
            check: "pin balance".into(),
            status,
            detail: format!("{status:?} detail"),
            data: serde_json::Value::Null,
        }
    }

    fn obs(reported: Option<Outcome>, ended: Ended, checks: Vec<CheckResult>) -> Observations {
        Observations {
            reported,
            ended,
            checks,
        }
    }

    const SEGV: Ended = Ended::Signaled {
        signal: 11,
        core: false,
    };

    fn every_report() -> Vec<Option<Outcome>> {
        vec![
            None,
            Some(Outcome::Pass),
            Some(Outcome::Fail("f".into())),
            Some(Outcome::Skip("s".into())),
            Some(Outcome::Xfail("x".into())),
            Some(Outcome::Xpass("xp".into())),
            Some(Outcome::Error("e".into())),
        ]
    }

    fn every_end() -> Vec<Ended> {
        vec![
            Ended::Exited(0),
            Ended::Exited(3),
            SEGV,
            Ended::Signaled {
                signal: 6,
                core: true,
            },
            Ended::TimedOut(Duration::from_secs(2)),
            Ended::Other("stopped".into()),
        ]
    }

    fn every_status() -> [CheckStatus; 4] {
        [
            CheckStatus::Held,
            CheckStatus::Violated,
            CheckStatus::NotChecked,
            CheckStatus::Unreliable,
        ]
    }

    #[test]
    fn a_clean_exit_keeps_the_report() {
        for r in every_report().into_iter().flatten() {
            let v = decide(&obs(Some(r.clone()), Ended::Exited(0), vec![]));
            assert_eq!(v.outcome, r);
            assert!(v.notes.is_empty());
        }
    }

    #[test]
    fn report_then_crash_is_an_error_naming_the_signal() {
        let v = decide(&obs(Some(Outcome::Pass), SEGV, vec![]));
        assert_eq!(
            v.outcome,
            Outcome::Error(
                "trial process killed by signal 11 (SIGSEGV) after reporting pass".into()
            )
        );
        let v = decide(&obs(
            Some(Outcome::Xfail("known".into())),
            Ended::Signaled {
                signal: 6,
                core: true,
            },
            vec![],
        ));
        assert_eq!(
            v.outcome.reason(),
            "trial process killed by signal 6 (SIGABRT), core dumped after reporting xfail"
        );
        assert!(v.notes.iter().any(|n| n.contains("known")));
    }

    #[test]
    fn report_then_bad_exit_is_an_error() {
        let v = decide(&obs(Some(Outcome::Pass), Ended::Exited(1), vec![]));
        assert_eq!(
            v.outcome,
            Outcome::Error("trial process exited with status 1 after reporting pass".into())
        );
    }

    #[test]
    fn no_report_is_a_fail_naming_how_it_ended() {
        assert_eq!(
            decide(&obs(None, SEGV, vec![])).outcome,
            Outcome::Fail("trial process killed by signal 11 (SIGSEGV)".into())
        );
        assert_eq!(
            decide(&obs(None, Ended::Exited(0), vec![])).outcome,
            Outcome::Fail("trial process exited with status 0 before reporting an outcome".into())
        );
        assert_eq!(
            decide(&obs(None, Ended::Exited(3), vec![])).outcome,
            Outcome::Fail("trial process exited with status 3 before reporting an outcome".into())
        );
        assert_eq!(
            decide(&obs(None, Ended::Other("x".into()), vec![]))
                .outcome
                .kind(),
            OutcomeKind::Error
        );
    }

    #[test]
    fn a_timeout_is_an_error_whatever_was_reported() {
        for r in every_report() {
            let v = decide(&obs(
                r.clone(),
                Ended::TimedOut(Duration::from_millis(1500)),
                vec![check(CheckStatus::Violated)],
            ));
            assert_eq!(
                v.outcome,
                Outcome::Error(
                    "timed out after 1.5 s (time limit; see --timeout); killed its process group"
                        .into()
                )
            );
            assert_eq!(r.is_some(), v.notes.iter().any(|n| n.contains("reported")));
        }
    }

    #[test]
    fn a_violated_check_fails_every_success() {
        for r in [
            Outcome::Pass,
            Outcome::Skip("s".into()),
            Outcome::Xfail("x".into()),
            Outcome::Xpass("xp".into()),
        ] {
            let v = decide(&obs(
                Some(r.clone()),
                Ended::Exited(0),
                vec![check(CheckStatus::Held), check(CheckStatus::Violated)],
            ));
            assert_eq!(
                v.outcome,
                Outcome::Fail("pin balance: Violated detail".into())
            );
            assert_eq!(v.notes, vec![format!("outcome before the checks: {r}")]);
        }
    }

    #[test]
    fn every_violated_check_is_named() {
        let mut leftover = check(CheckStatus::Violated);
        leftover.check = "leftover processes".into();
        let v = decide(&obs(
            Some(Outcome::Pass),
            Ended::Exited(0),
            vec![leftover, check(CheckStatus::Violated)],
        ));
        assert_eq!(
            v.outcome.reason(),
            "leftover processes: Violated detail; pin balance: Violated detail"
        );
    }

    #[test]
    fn a_fail_or_error_keeps_its_own_reason() {
        for r in [Outcome::Fail("f".into()), Outcome::Error("e".into())] {
            let v = decide(&obs(
                Some(r.clone()),
                Ended::Exited(0),
                vec![check(CheckStatus::Violated)],
            ));
            assert_eq!(v.outcome, r);
            assert_eq!(v.notes, vec!["also violated: pin balance: Violated detail"]);
        }
        let v = decide(&obs(None, SEGV, vec![check(CheckStatus::Violated)]));
        assert_eq!(
            v.outcome.reason(),
            "trial process killed by signal 11 (SIGSEGV)"
        );
    }

    #[test]
    fn unknowing_checks_never_change_the_outcome_but_are_noted() {
        for status in [
            CheckStatus::NotChecked,
            CheckStatus::Unreliable,
            CheckStatus::Held,
        ] {
            for r in every_report() {
                for end in every_end() {
                    let alone = decide(&obs(r.clone(), end.clone(), vec![]));
                    let with = decide(&obs(r.clone(), end.clone(), vec![check(status)]));
                    assert_eq!(alone.outcome, with.outcome, "{status:?} {r:?} {end:?}");
                    let noted = with.notes.iter().any(|n| n.contains("detail"));
                    assert_eq!(noted, status != CheckStatus::Held, "{status:?}");
                }
            }
        }
    }

    #[test]
    fn nothing_but_a_clean_reported_success_with_no_violation_is_a_success() {
        // Exhaustive over reports x endings x check statuses.
        for r in every_report() {
            for end in every_end() {
                for status in every_status() {
                    let v = decide(&obs(r.clone(), end.clone(), vec![check(status)]));
                    let clean = end == Ended::Exited(0)
                        && r.as_ref().is_some_and(|o| o.is_success())
                        && status != CheckStatus::Violated;
                    assert_eq!(
                        v.outcome.is_success(),
                        clean,
                        "{r:?} {end:?} {status:?} -> {}",
                        v.outcome
                    );
                    if v.outcome == Outcome::Pass {
                        assert_eq!(r, Some(Outcome::Pass));
                    }
                }
            }
        }
    }
}
