//! One run as one stream of events, and every reporter as a consumer of it.
//!
//! [`drive`] runs the selected scenarios through a [`Session`] and sends each
//! [`Event`] to every [`Reporter`] in order: `RunStarted` (what the kernel
//! offers, what the session changed on the host), then per trial
//! `TrialStarted` and `TrialFinished` (the harness's [`TrialReport`]: outcome,
//! diagnostics, typed evidence, checks), then `RunFinished` (totals and what
//! the restore did). Every report (`crate::report`: TAP, KTAP, human, JSON,
//! JUnit, events), and so the drop-in kselftest programs, is a reporter;
//! none runs trials itself.
//!
//! Evidence and checks stay data until a reporter renders them; the text
//! forms every line-based reporter shares are [`evidence_line`],
//! [`check_line`] and [`trial_lines`].

use std::io;
use std::time::{Duration, Instant};

use cowgup_harness::guard::RestoreReport;
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{CheckResult, CheckStatus, Evidence, Stop, Totals, TrialReport};
use cowgup_tests::session::{Progress, Session};
use cowgup_tests::{Family, Scenario};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The session is set up: what the kernel offers and what was done to the host.
#[derive(Clone, Debug)]
pub struct RunStart {
    /// The probe after provisioning.
    pub caps: Capabilities,
    /// What the session changed on the host, or why it changed nothing.
    pub host_changes: Vec<String>,
    /// How many trials will run.
    pub planned: usize,
}

/// Which trial, where it sits in the catalogue.
#[derive(Clone, Debug)]
pub struct TrialInfo {
    /// 1-based position in the run.
    pub number: usize,
    pub name: String,
    pub family: Family,
    /// The backing group, e.g. "THP (2048 kB)".
    pub group: String,
}

#[derive(Clone, Debug)]
pub struct TrialEnd {
    pub trial: TrialInfo,
    pub report: TrialReport,
}

#[derive(Debug)]
pub struct RunEnd {
    pub totals: Totals,
    pub elapsed: Duration,
    /// What putting the host back did; None when the session held no guard.
    pub restore: Option<RestoreReport>,
    /// Kernel error lines logged outside any trial (they failed none).
    pub kernel_log: Vec<String>,
}

impl RunEnd {
    /// Every result a success (ksft_finished()'s rule) and the host restored cleanly.
    pub fn succeeded(&self) -> bool {
        self.totals.all_succeeded() && self.restore.as_ref().is_none_or(|r| r.is_clean())
    }
}

#[derive(Debug)]
pub enum Event {
    RunStarted(RunStart),
    TrialStarted(TrialInfo),
    TrialFinished(TrialEnd),
    /// A terminating signal arrived; the host is restored and the process
    /// dies of the signal right after this event.
    Interrupted {
        signal: Signal,
        done: usize,
        planned: usize,
    },
    RunFinished(RunEnd),
}

/// A consumer of the stream. An error stops the run (the host is restored).
pub trait Reporter {
    fn on(&mut self, event: &Event) -> io::Result<()>;
}

fn emit(reporters: &mut [&mut (dyn Reporter + '_)], event: &Event) -> io::Result<()> {
    reporters.iter_mut().try_for_each(|r| r.on(event))
}

/// Run `scenarios` in order through `session`, feeding every reporter, and
/// restore the host. A reporter's write error stops the run: the host is
/// restored and the error returned. A terminating signal restores the host
/// and kills the process with it, after `Event::Interrupted`.
pub fn drive(
    session: &mut Session,
    scenarios: &[Scenario],
    reporters: &mut [&mut (dyn Reporter + '_)],
) -> io::Result<RunEnd> {
    let started = Instant::now();
    let result = (|| {
        emit(
            reporters,
            &Event::RunStarted(RunStart {
                caps: session.caps.clone(),
                host_changes: session.log.clone(),
                planned: scenarios.len(),
            }),
        )?;
        let mut totals = Totals::default();
        let refs: Vec<&Scenario> = scenarios.iter().collect();
        // Results come in run order; with --jobs a batch's trials start
        // together, so each is announced when its result is handed over.
        let info = |i: usize| {
            let s = &scenarios[i];
            TrialInfo {
                number: i + 1,
                name: s.name.clone(),
                family: s.family,
                group: s.group.clone(),
            }
        };
        let ran = session.run_all(&refs, |p| match p {
            Progress::Started(i) => emit(reporters, &Event::TrialStarted(info(i))),
            Progress::Finished(i, report) => {
                totals.add(report.outcome.kind());
                let trial = info(i);
                emit(reporters, &Event::TrialFinished(TrialEnd { trial, report }))
            }
        });
        match ran {
            Ok(result) => result?,
            Err((stop @ Stop::Interrupted(signal), done)) => {
                let _ = emit(
                    reporters,
                    &Event::Interrupted {
                        signal,
                        done,
                        planned: scenarios.len(),
                    },
                );
                session.abort(stop)
            }
        }
        Ok(totals)
    })();
    let kernel_log = session.kernel_log_between_trials();
    let restore = session.finish();
    let totals = match result {
        Ok(t) => t,
        Err(e) => {
            for p in restore.iter().flat_map(|r| &r.problems) {
                eprintln!("cowgup: could not restore: {p}");
            }
            return Err(e);
        }
    };
    let end = Event::RunFinished(RunEnd {
        totals,
        elapsed: started.elapsed(),
        restore,
        kernel_log,
    });
    emit(reporters, &end)?;
    match end {
        Event::RunFinished(end) => Ok(end),
        _ => unreachable!("built as RunFinished above"),
    }
}

/// How a check's status reads in a sentence.
pub fn status_words(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Held => "held",
        CheckStatus::Violated => "violated",
        CheckStatus::NotChecked => "not checked",
        CheckStatus::Unreliable => "unreliable",
    }
}

/// `pin balance: not checked (no nr_foll_pin_* in /proc/vmstat)`.
pub fn check_line(c: &CheckResult) -> String {
    let mut s = format!("{}: {}", c.check, status_words(c.status));
    if !c.detail.is_empty() {
        s.push_str(&format!(" ({})", c.detail));
    }
    s
}

/// `evidence sharing: what="parent vs child" compared=512 same=0 a={label=parent pfn=4660}`:
/// the record's data as key=value pairs, whatever its kind.
pub fn evidence_line(e: &Evidence) -> String {
    let mut s = format!("evidence {}:", e.kind);
    // A record that carries its own one-line summary is shown by it (its
    // fields are in JSON).
    if let Some(Value::String(summary)) = e.data.get("summary") {
        s.push(' ');
        s.push_str(summary);
        return s;
    }
    match &e.data {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                s.push(' ');
                s.push_str(k);
                s.push('=');
                value(v, &mut s);
            }
        }
        Value::Null => {}
        v => {
            s.push(' ');
            value(v, &mut s);
        }
    }
    s
}

/// Longest array printed in full on one line; JSON carries every element.
const ARRAY_SHOWN: usize = 8;

fn value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            let bare = !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "=\"{}[],".contains(c));
            if bare {
                out.push_str(s);
            } else {
                out.push_str(&Value::String(s.clone()).to_string());
            }
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().take(ARRAY_SHOWN).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value(x, out);
            }
            if a.len() > ARRAY_SHOWN {
                out.push_str(&format!(", ... {} more", a.len() - ARRAY_SHOWN));
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push('=');
                value(x, out);
            }
            out.push('}');
        }
    }
}

/// What a line-based report prints for a trial besides its result: the
/// diagnostics as the trial printed them, then one line per evidence record,
/// then one per check.
pub fn trial_lines(r: &TrialReport) -> impl Iterator<Item = String> + '_ {
    r.diagnostics
        .iter()
        .cloned()
        .chain(r.evidence.iter().map(evidence_line))
        .chain(r.checks.iter().map(check_line))
}

/// Checks that could not vouch for a trial, grouped over a run: (check,
/// status) with how many trials, the detail (the first one seen) and how
/// many different details there were. So a run where pins were never
/// counted says so once, instead of never.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caveat {
    pub check: String,
    pub status: CheckStatus,
    pub trials: usize,
    pub detail: String,
    pub distinct_details: usize,
}

/// Collects [`Caveat`]s from finished trials (NotChecked and Unreliable only).
#[derive(Clone, Debug, Default)]
pub struct Caveats {
    groups: Vec<(Caveat, Vec<String>)>,
}

impl Caveats {
    pub fn add(&mut self, r: &TrialReport) {
        for c in &r.checks {
            if !matches!(c.status, CheckStatus::NotChecked | CheckStatus::Unreliable) {
                continue;
            }
            match self
                .groups
                .iter_mut()
                .find(|(g, _)| g.check == c.check && g.status == c.status)
            {
                Some((g, details)) => {
                    g.trials += 1;
                    if !details.contains(&c.detail) {
                        details.push(c.detail.clone());
                        g.distinct_details += 1;
                    }
                }
                None => self.groups.push((
                    Caveat {
                        check: c.check.clone(),
                        status: c.status,
                        trials: 1,
                        detail: c.detail.clone(),
                        distinct_details: 1,
                    },
                    vec![c.detail.clone()],
                )),
            }
        }
    }

    pub fn list(&self) -> impl Iterator<Item = &Caveat> {
        self.groups.iter().map(|(g, _)| g)
    }
}

impl Caveat {
    /// `pin balance not checked: no nr_foll_pin_* in /proc/vmstat`.
    pub fn sentence(&self) -> String {
        let head = format!("{} {}", self.check, status_words(self.status));
        // Details often start with that very phrase: don't say it twice.
        let detail = self
            .detail
            .strip_prefix(&head)
            .map_or(self.detail.as_str(), |d| d.trim_start_matches([':', ' ']));
        let mut s = head;
        if !detail.is_empty() {
            s.push_str(": ");
            if self.distinct_details > 1 {
                s.push_str("e.g. ");
            }
            s.push_str(detail);
        }
        if self.distinct_details > 1 {
            s.push_str(&format!(
                " ({} different details; -v shows each trial's)",
                self.distinct_details
            ));
        }
        s
    }
}

/// A made-up run for reporters' tests, so that they see evidence and checks
/// of every kind without depending on what the catalogue produces today.
pub mod examples {
    use super::*;
    use cowgup_harness::Outcome;
    use serde_json::json;

    /// A finished trial with evidence and checks of every kind, for the
    /// reporters' unit tests: nothing in the catalogue has to produce them.
    pub fn sample_report() -> TrialReport {
        TrialReport {
            name: "Basic COW after fork() ... with base page".into(),
            outcome: Outcome::Fail("parent's data leaked into the child".into()),
            diagnostics: vec!["child saw 0x5a at page 3".into()],
            evidence: vec![
                Evidence {
                    kind: "sharing".into(),
                    data: json!({
                        "what": "parent vs child",
                        "compared": 512,
                        "same": 0,
                        "a": {"label": "parent", "pfn": 4660, "exclusive": true},
                        "bad_pages": (0..20).collect::<Vec<u32>>(),
                    }),
                },
                Evidence {
                    kind: "refusal".into(),
                    data: json!({"source": "io_uring", "errno": "EFAULT"}),
                },
            ],
            checks: vec![
                CheckResult {
                    check: "pin balance".into(),
                    status: CheckStatus::NotChecked,
                    detail: "no nr_foll_pin_acquired in /proc/vmstat".into(),
                    data: Value::Null,
                },
                CheckResult {
                    check: "leftover processes".into(),
                    status: CheckStatus::Held,
                    detail: String::new(),
                    data: json!({"pids": []}),
                },
            ],
            duration: Duration::from_micros(2100),
        }
    }

    /// Two trials of one family (the first fails with evidence, the second
    /// passes), as `drive` would send them.
    pub fn sample_run() -> Vec<Event> {
        let info = |number, name: &str| TrialInfo {
            number,
            name: name.into(),
            family: Family::COW_ANON,
            group: "base page".into(),
        };
        let failing = sample_report();
        let mut passing = sample_report();
        passing.name = "Basic COW after fork() ... with swapped-out base page".into();
        passing.outcome = Outcome::Pass;
        let totals: Totals = [&failing, &passing].into_iter().collect();
        vec![
            Event::RunStarted(RunStart {
                caps: Capabilities::probe(),
                host_changes: vec!["swap: enabled a 64 MiB swap file".into()],
                planned: 2,
            }),
            Event::TrialStarted(info(1, &failing.name)),
            Event::TrialFinished(TrialEnd {
                trial: info(1, &failing.name),
                report: failing,
            }),
            Event::TrialStarted(info(2, &passing.name)),
            Event::TrialFinished(TrialEnd {
                trial: info(2, &passing.name),
                report: passing,
            }),
            Event::RunFinished(RunEnd {
                totals,
                elapsed: Duration::from_millis(5),
                restore: None,
                kernel_log: Vec::new(),
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::examples::sample_report;
    use super::*;
    use serde_json::json;

    #[test]
    fn evidence_renders_as_key_value_pairs_whatever_its_kind() {
        let r = sample_report();
        assert_eq!(
            evidence_line(&r.evidence[0]),
            "evidence sharing: what=\"parent vs child\" compared=512 same=0 \
             a={label=parent pfn=4660 exclusive=true} \
             bad_pages=[0, 1, 2, 3, 4, 5, 6, 7, ... 12 more]"
        );
        assert_eq!(
            evidence_line(&r.evidence[1]),
            "evidence refusal: source=io_uring errno=EFAULT"
        );
        let scalar = Evidence {
            kind: "vmsplice".into(),
            data: json!(4096),
        };
        assert_eq!(evidence_line(&scalar), "evidence vmsplice: 4096");
    }

    #[test]
    fn checks_say_when_they_could_not_check() {
        let r = sample_report();
        assert_eq!(
            check_line(&r.checks[0]),
            "pin balance: not checked (no nr_foll_pin_acquired in /proc/vmstat)"
        );
        assert_eq!(check_line(&r.checks[1]), "leftover processes: held");
        let lines: Vec<String> = trial_lines(&r).collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "child saw 0x5a at page 3");
    }

    #[test]
    fn caveats_group_unverified_checks_over_a_run() {
        let mut c = Caveats::default();
        let r = sample_report();
        for _ in 0..3 {
            c.add(&r);
        }
        let mut other = r.clone();
        other.checks[0].detail = "counters disturbed".into();
        other.checks[0].status = CheckStatus::Unreliable;
        c.add(&other);
        let mut third = other.clone();
        third.checks[0].detail = "counters disturbed twice".into();
        c.add(&third);
        let list: Vec<String> = c.list().map(|g| g.sentence()).collect();
        assert_eq!(
            list,
            [
                "pin balance not checked: no nr_foll_pin_acquired in /proc/vmstat",
                "pin balance unreliable: e.g. counters disturbed (2 different details; -v shows each trial's)"
            ]
        );
        assert_eq!(c.list().map(|g| g.trials).collect::<Vec<_>>(), [3, 2]);
    }
}
