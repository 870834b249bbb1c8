//! What a trial ended as (`Outcome`), what was observed around it
//! (`Evidence`, `CheckResult`), the report of one trial (`TrialReport`) and
//! the counts of a run (`Totals`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a trial ended as. The reason strings are what a kernel developer reads
/// first, so they say what was observed, not just that something went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// Could not set up what the trial needs; never counts as a pass.
    Skip(String),
    /// Failed in a way the expectation table accepts; names the kernel behaviour.
    Xfail(String),
    /// Passed where a failure was expected and a pass is news.
    Xpass(String),
    /// The trial could not be judged: it timed out or the runner itself failed.
    Error(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    Pass,
    Fail,
    Xfail,
    Xpass,
    Skip,
    Error,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 6] = [
        OutcomeKind::Pass,
        OutcomeKind::Fail,
        OutcomeKind::Xfail,
        OutcomeKind::Xpass,
        OutcomeKind::Skip,
        OutcomeKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Pass => "pass",
            OutcomeKind::Fail => "fail",
            OutcomeKind::Xfail => "xfail",
            OutcomeKind::Xpass => "xpass",
            OutcomeKind::Skip => "skip",
            OutcomeKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Pass => OutcomeKind::Pass,
            Outcome::Fail(_) => OutcomeKind::Fail,
            Outcome::Skip(_) => OutcomeKind::Skip,
            Outcome::Xfail(_) => OutcomeKind::Xfail,
            Outcome::Xpass(_) => OutcomeKind::Xpass,
            Outcome::Error(_) => OutcomeKind::Error,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Fail(r)
            | Outcome::Skip(r)
            | Outcome::Xfail(r)
            | Outcome::Xpass(r)
            | Outcome::Error(r) => r,
        }
    }

    pub fn from_parts(kind: OutcomeKind, reason: String) -> Self {
        match kind {
            OutcomeKind::Pass => Outcome::Pass,
            OutcomeKind::Fail => Outcome::Fail(reason),
            OutcomeKind::Xfail => Outcome::Xfail(reason),
            OutcomeKind::Xpass => Outcome::Xpass(reason),
            OutcomeKind::Skip => Outcome::Skip(reason),
            OutcomeKind::Error => Outcome::Error(reason),
        }
    }

    /// Counts as a success for exit codes: what `ksft_finished()` accepts.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Xfail(_) | Outcome::Skip(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("pass"),
            other => write!(f, "{}: {}", other.kind().as_str(), other.reason()),
        }
    }
}

/// One typed observation a trial sent (PFNs, exclusive bits, counts, errno,
/// pin numbers ...), kept as data so that JSON carries it as fields and the
/// human and TAP reporters render it from the same record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// What was observed, e.g. "sharing" or "refusal"; stable for consumers.
    pub kind: String,
    pub data: serde_json::Value,
}

/// What a check made around the trial (pin balance, processes left behind,
/// the kernel log) knows. It says so when it could not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Held,
    Violated,
    /// The check could not be made here (e.g. no counters on this kernel).
    NotChecked,
    /// The check was made but something else on the machine disturbed it.
    Unreliable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// e.g. "pin balance", "leftover processes".
    pub check: String,
    pub status: CheckStatus,
    /// What was measured, with the numbers.
    pub detail: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// One finished trial: what a reporter needs and nothing more.
#[derive(Clone, Debug)]
pub struct TrialReport {
    pub name: String,
    pub outcome: Outcome,
    /// Diagnostic lines in the order the trial printed them.
    pub diagnostics: Vec<String>,
    /// Typed observations, in the order the trial sent them.
    pub evidence: Vec<Evidence>,
    /// Checks made around the trial by the runner and the session.
    pub checks: Vec<CheckResult>,
    pub duration: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub pass: usize,
    pub fail: usize,
    pub xfail: usize,
    pub xpass: usize,
    pub skip: usize,
    pub error: usize,
}

impl Totals {
    pub fn add(&mut self, kind: OutcomeKind) {
        *self.slot(kind) += 1;
    }

    fn slot(&mut self, kind: OutcomeKind) -> &mut usize {
        match kind {
            OutcomeKind::Pass => &mut self.pass,
            OutcomeKind::Fail => &mut self.fail,
            OutcomeKind::Xfail => &mut self.xfail,
            OutcomeKind::Xpass => &mut self.xpass,
            OutcomeKind::Skip => &mut self.skip,
            OutcomeKind::Error => &mut self.error,
        }
    }

    pub fn count(&self) -> usize {
        self.pass + self.fail + self.xfail + self.xpass + self.skip + self.error
    }

    pub fn all_succeeded(&self) -> bool {
        self.fail == 0 && self.xpass == 0 && self.error == 0
    }
}

impl<'a> FromIterator<&'a TrialReport> for Totals {
    fn from_iter<I: IntoIterator<Item = &'a TrialReport>>(iter: I) -> Self {
        let mut t = Totals::default();
        for r in iter {
            t.add(r.outcome.kind());
        }
        t
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pass:{} fail:{} xfail:{} xpass:{} skip:{} error:{}",
            self.pass, self.fail, self.xfail, self.xpass, self.skip, self.error
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in OutcomeKind::ALL {
            assert_eq!(OutcomeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(OutcomeKind::parse("ok"), None);
    }

    #[test]
    fn totals_follow_ksft_finished() {
        let mut t = Totals::default();
        t.add(OutcomeKind::Pass);
        t.add(OutcomeKind::Skip);
        t.add(OutcomeKind::Xfail);
        assert!(t.all_succeeded());
        t.add(OutcomeKind::Xpass);
        assert!(!t.all_succeeded());
        assert_eq!(t.count(), 4);
        assert_eq!(
            t.to_string(),
            "pass:1 fail:0 xfail:1 xpass:1 skip:1 error:0"
        );
    }
}
