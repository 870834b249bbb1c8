//! Machine-readable reports of `cowgup run --format ...`, all consumers of
//! the event stream: kselftest TAP and KTAP (`cowgup_tap::TapReporter`,
//! written as the run goes), and JSON and JUnit XML (`Document`, written
//! once the run finished). JSON carries each trial's evidence and checks as
//! structured fields; JUnit has one testsuite per family. `Events` (`run
//! --events FILE`) writes each event as one JSON line the moment it is
//! formed, so a run that dies keeps every result before it.

use std::io::{self, Write};
use std::time::Duration;

use cowgup_harness::probe::Presence;
use cowgup_harness::{CheckResult, Evidence, OutcomeKind, Totals};
use cowgup_tap::stream::{trial_lines, Event, Reporter, RunEnd, RunStart, TrialEnd};
use cowgup_tests::Family;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// progress and a summary for people
    Human,
    /// kselftest TAP 13, as tools/testing/selftests/kselftest.h writes it
    Tap,
    /// KTAP version 1 (Documentation/dev-tools/ktap.rst)
    Ktap,
    /// one JSON document: probe, host changes, every trial with its evidence and checks
    Json,
    /// JUnit XML, one testsuite per family
    Junit,
}

/// JSON or JUnit: collects the stream, writes one document at the end.
pub struct Document<W: Write> {
    out: W,
    format: Format,
    start: Option<RunStart>,
    trials: Vec<TrialEnd>,
}

impl<W: Write> Document<W> {
    pub fn new(out: W, format: Format) -> Self {
        assert!(matches!(format, Format::Json | Format::Junit));
        Document {
            out,
            format,
            start: None,
            trials: Vec::new(),
        }
    }
}

impl<W: Write> Reporter for Document<W> {
    fn on(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted(s) => self.start = Some(s.clone()),
            Event::TrialFinished(t) => self.trials.push(t.clone()),
            Event::RunFinished(end) => {
                let start = self
                    .start
                    .as_ref()
                    .ok_or_else(|| io::Error::other("RunFinished without RunStarted"))?;
                let text = match self.format {
                    Format::Junit => junit(start, &self.trials, end)?,
                    _ => json(start, &self.trials, end),
                };
                self.out.write_all(text.as_bytes())?;
                self.out.flush()?;
            }
            Event::TrialStarted(_) | Event::Interrupted { .. } => {}
        }
        Ok(())
    }
}

fn presence(p: &Presence) -> serde_json::Value {
    match p {
        Presence::Yes => json!({"available": true}),
        Presence::No(why) => json!({"available": false, "reason": why}),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One trial in the JSON document. The outcome is flat (`"outcome": "skip",
/// "reason": "..."`); evidence and checks are the harness's records as they are.
#[derive(Serialize)]
struct JsonTrial<'a> {
    name: &'a str,
    family: &'static str,
    backing: &'a str,
    outcome: &'static str,
    reason: &'a str,
    duration_ms: f64,
    diagnostics: &'a [String],
    evidence: &'a [Evidence],
    checks: &'a [CheckResult],
}

fn totals_json(t: &Totals) -> serde_json::Value {
    json!({"pass": t.pass, "fail": t.fail, "xfail": t.xfail, "xpass": t.xpass, "skip": t.skip, "error": t.error})
}

fn json_trial(t: &TrialEnd) -> JsonTrial<'_> {
    JsonTrial {
        name: &t.trial.name,
        family: t.trial.family.id(),
        backing: &t.trial.group,
        outcome: t.report.outcome.kind().as_str(),
        reason: t.report.outcome.reason(),
        duration_ms: ms(t.report.duration),
        diagnostics: &t.report.diagnostics,
        evidence: &t.report.evidence,
        checks: &t.report.checks,
    }
}

fn restore_json(end: &RunEnd) -> serde_json::Value {
    json!(end
        .restore
        .as_ref()
        .map(|r| json!({"changed": r.changed, "problems": r.problems})))
}

pub fn json(start: &RunStart, trials: &[TrialEnd], end: &RunEnd) -> String {
    let c = &start.caps;
    let doc = json!({
        "tool": "cowgup",
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": c.kernel_release,
        "probe": {
            "page_size": c.page_size,
            "pmd_size": c.pmd_size,
            "thp_sizes": c.thp_sizes,
            "hugetlb": c.hugetlb.iter().map(|p| json!({"size": p.size, "total": p.total, "free": p.free})).collect::<Vec<_>>(),
            "huge_zeropage": c.huge_zeropage,
            "swap_kb": c.swap_kb,
            "io_uring": presence(&c.io_uring),
            "io_uring_disabled": c.io_uring_disabled,
            "gup_test": presence(&c.gup_test),
            "euid": c.euid,
            "cap_sys_admin": c.cap_sys_admin,
            "memlock": c.memlock,
            "scratch_fs": c.scratch_fs.iter().map(|(d, fs)| json!({"dir": d, "fs": fs})).collect::<Vec<_>>(),
        },
        "host_changes": start.host_changes,
        "totals": totals_json(&end.totals),
        "duration_s": end.elapsed.as_secs_f64(),
        "trials": trials.iter().map(json_trial).collect::<Vec<_>>(),
        "restore": restore_json(end),
        "kernel_log_outside_trials": end.kernel_log,
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("JSON values always serialise");
    text.push('\n');
    text
}

/// `run --events FILE`: every event as one line of JSON, written and
/// flushed when it is formed (a line never waits for the next event):
///
/// ```text
/// {"event":"run_started","seq":1,"tool":"cowgup","version":..,"kernel":..,"planned":N,"host_changes":[..]}
/// {"event":"trial_started","seq":2,"number":1,"name":..,"family":..,"backing":..}
/// {"event":"trial_finished","seq":3,"number":1,"trial":{..the JSON report's trial object..}}
/// {"event":"interrupted","seq":..,"signal":"SIGTERM","done":N,"planned":N}
/// {"event":"run_finished","seq":..,"totals":{..},"duration_s":..,"restore":..,"kernel_log_outside_trials":[..]}
/// ```
///
/// `event` and `seq` (1, 2, ...: a gap is a lost line) come first in every
/// line, so a reader can find `{"event":"` in a line a noisy port prefixed
/// with something else. On a terminal (a serial port) each `trial_started`
/// line is drained (tcdrain) before the trial runs: the reader knows which
/// trial was running when the machine dies.
pub struct Events<W: Write> {
    out: W,
    seq: u64,
    /// Drain the line to the device after `trial_started` (a tty's fd).
    drain: Option<std::os::fd::RawFd>,
}

#[derive(Serialize)]
struct EventLine<'a, T: Serialize> {
    event: &'a str,
    seq: u64,
    #[serde(flatten)]
    body: T,
}

impl<W: Write> Events<W> {
    pub fn new(out: W) -> Self {
        Events {
            out,
            seq: 0,
            drain: None,
        }
    }

    /// After each `trial_started`, wait until the device sent it (`fd` is a terminal's).
    pub fn draining(mut self, fd: std::os::fd::RawFd) -> Self {
        self.drain = Some(fd);
        self
    }

    fn line<T: Serialize>(&mut self, event: &str, body: T) -> io::Result<()> {
        self.seq += 1;
        let mut text = serde_json::to_string(&EventLine {
            event,
            seq: self.seq,
            body,
        })
        .map_err(io::Error::other)?;
        text.push('\n');
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Reporter for Events<W> {
    fn on(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted(s) => self.line(
                "run_started",
                json!({
                    "tool": "cowgup",
                    "version": env!("CARGO_PKG_VERSION"),
                    "kernel": s.caps.kernel_release,
                    "planned": s.planned,
                    "host_changes": s.host_changes,
                }),
            ),
            Event::TrialStarted(t) => {
                self.line(
                    "trial_started",
                    json!({
                        "number": t.number,
                        "name": t.name,
                        "family": t.family.id(),
                        "backing": t.group,
                    }),
                )?;
                if let Some(fd) = self.drain {
                    // SAFETY: tcdrain only reads the fd, owned by our writer.
                    if unsafe { libc::tcdrain(fd) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            }
            Event::TrialFinished(t) => self.line(
                "trial_finished",
                json!({"number": t.trial.number, "trial": json_trial(t)}),
            ),
            Event::Interrupted {
                signal,
                done,
                planned,
            } => self.line(
                "interrupted",
                json!({"signal": signal.as_str(), "done": done, "planned": planned}),
            ),
            Event::RunFinished(end) => self.line(
                "run_finished",
                json!({
                    "totals": totals_json(&end.totals),
                    "duration_s": end.elapsed.as_secs_f64(),
                    "restore": restore_json(end),
                    "kernel_log_outside_trials": end.kernel_log,
                }),
            ),
        }
    }
}

fn testcase(t: &TrialEnd) -> TestCase {
    let r = &t.report;
    let kind = r.outcome.kind();
    let reason = r.outcome.reason();
    let lines: Vec<String> = trial_lines(r).collect();
    let status = match kind {
        OutcomeKind::Pass | OutcomeKind::Xfail => TestCaseStatus::success(),
        OutcomeKind::Skip => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(reason);
            s
        }
        OutcomeKind::Fail | OutcomeKind::Xpass | OutcomeKind::Error => {
            let mut s = TestCaseStatus::non_success(if kind == OutcomeKind::Error {
                NonSuccessKind::Error
            } else {
                NonSuccessKind::Failure
            });
            s.set_message(reason).set_type(kind.as_str());
            if !lines.is_empty() {
                s.set_description(lines.join("\n"));
            }
            s
        }
    };
    let mut tc = TestCase::new(t.trial.name.as_str(), status);
    tc.set_classname(format!("cowgup.{}", t.trial.family.id()))
        .set_time(r.duration);
    // Everything the trial said, evidence and checks included, for every
    // outcome (a failure also has it as the failure's text).
    let mut out = Vec::new();
    if kind == OutcomeKind::Xfail {
        out.push(format!("xfail: {reason}"));
    }
    out.extend(lines);
    if !out.is_empty() {
        tc.set_system_out(out.join("\n"));
    }
    tc
}

pub fn junit(start: &RunStart, trials: &[TrialEnd], end: &RunEnd) -> io::Result<String> {
    let mut report = Report::new("cowgup");
    report.set_time(trials.iter().map(|t| t.report.duration).sum());
    let mut families: Vec<Family> = Vec::new();
    for t in trials {
        if !families.contains(&t.trial.family) {
            families.push(t.trial.family);
        }
    }
    for fam in families {
        let mut suite = TestSuite::new(fam.title());
        suite
            .add_property(Property::new("kernel", &start.caps.kernel_release))
            .add_property(Property::new("family", fam.id()));
        let mine: Vec<&TrialEnd> = trials.iter().filter(|t| t.trial.family == fam).collect();
        suite.set_time(mine.iter().map(|t| t.report.duration).sum());
        suite.add_test_cases(mine.into_iter().map(testcase));
        report.add_test_suite(suite);
    }
    if let Some(r) = end.restore.as_ref().filter(|r| !r.problems.is_empty()) {
        // Not a trial's failure, but the run's: say so where CI viewers look.
        let mut suite = TestSuite::new("host settings");
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_message("could not restore host settings")
            .set_description(r.problems.join("\n"));
        suite.add_test_case(TestCase::new("restore", s));
        report.add_test_suite(suite);
    }
    report.to_string().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowgup_harness::CheckStatus;
    use cowgup_tap::stream::examples::sample_run;

    fn document(format: Format) -> String {
        let mut buf = Vec::new();
        let mut d = Document::new(&mut buf, format);
        for e in &sample_run() {
            d.on(e).unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn json_carries_evidence_and_checks_as_fields() {
        let doc: serde_json::Value = serde_json::from_str(&document(Format::Json)).unwrap();
        let t = &doc["trials"][0];
        assert_eq!(t["outcome"], "fail");
        assert_eq!(t["family"], "cow_anon");
        assert_eq!(t["evidence"][0]["kind"], "sharing");
        assert_eq!(t["evidence"][0]["data"]["compared"], 512);
        assert_eq!(t["evidence"][0]["data"]["a"]["pfn"], 4660);
        assert_eq!(
            t["evidence"][0]["data"]["bad_pages"]
                .as_array()
                .unwrap()
                .len(),
            20
        );
        assert_eq!(t["checks"][0]["status"], "not_checked");
        assert_eq!(t["diagnostics"][0], "child saw 0x5a at page 3");
        // And back into the harness's own types.
        let evidence: Vec<Evidence> = serde_json::from_value(t["evidence"].clone()).unwrap();
        assert_eq!(evidence.len(), 2);
        let checks: Vec<CheckResult> = serde_json::from_value(t["checks"].clone()).unwrap();
        assert_eq!(checks[0].status, CheckStatus::NotChecked);
        assert_eq!(doc["totals"]["fail"], 1);
        assert_eq!(doc["totals"]["pass"], 1);
    }

    #[test]
    fn events_are_one_json_line_each_and_read_back_as_the_report_has_them() {
        let mut buf = Vec::new();
        let mut e = Events::new(&mut buf);
        for ev in &sample_run() {
            e.on(ev).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "run_started",
                "trial_started",
                "trial_finished",
                "trial_started",
                "trial_finished",
                "run_finished"
            ]
        );
        for (i, l) in text.lines().enumerate() {
            assert!(
                l.starts_with(&format!("{{\"event\":\"{}\",\"seq\":{},", names[i], i + 1)),
                "{l}"
            );
        }
        assert_eq!(lines[0]["planned"], 2);
        assert_eq!(lines[1]["number"], 1);
        assert_eq!(lines[1]["family"], "cow_anon");
        assert_eq!(lines[5]["totals"]["fail"], 1);
        // The trial object is the JSON report's, field for field.
        let doc: serde_json::Value = serde_json::from_str(&document(Format::Json)).unwrap();
        assert_eq!(lines[2]["trial"], doc["trials"][0]);
        assert_eq!(lines[4]["trial"], doc["trials"][1]);
        // And the matrix's reader of the port takes them back.
        let mut s = crate::matrix::watch::EventStream::default();
        s.feed(text.as_bytes());
        s.end();
        assert_eq!((s.events, s.garbled, s.lost), (6, 0, 0));
        assert_eq!(
            s.raw_trials,
            [doc["trials"][0].clone(), doc["trials"][1].clone()]
        );
        assert_eq!(s.trials[0].outcome, "fail");
        assert!(s.run_finished && s.running.is_none());
    }

    #[test]
    fn junit_reads_back_with_quick_junit() {
        let xml = document(Format::Junit);
        let report = Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!((report.tests, report.failures, report.errors), (2, 1, 0));
        let suite = &report.test_suites[0];
        assert_eq!(suite.name.as_str(), Family::COW_ANON.title());
        let failed = &suite.test_cases[0];
        let TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Failure,
            message,
            description,
            ..
        } = &failed.status
        else {
            panic!("{:?}", failed.status)
        };
        assert_eq!(
            message.as_deref(),
            Some("parent's data leaked into the child")
        );
        assert!(description
            .as_deref()
            .is_some_and(|d| d.contains("evidence refusal: source=io_uring errno=EFAULT")));
        let out = suite.test_cases[1].system_out.as_deref().unwrap_or("");
        assert!(out.contains("pin balance: not checked"), "{xml}");
    }

    /// The same check the reports test applies to a real run's JUnit, here
    /// on a document whose trials carry evidence and checks.
    #[test]
    fn junit_with_evidence_loads_in_python_elementtree() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junit.xml");
        std::fs::write(&file, document(Format::Junit)).unwrap();
        let Ok(out) = std::process::Command::new("python3")
            .args(["-c", include_str!("../tests/junit_check.py")])
            .arg(&file)
            .output()
        else {
            eprintln!("python3 not installed: JUnit not checked by ElementTree");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{} 2\n", Family::COW_ANON.title())
        );
    }
}
