//! The JUnit XML report (`cowgup run --format junit`): one testsuite per
//! family, each trial a testcase carrying everything it said (evidence and
//! checks included), and a `host settings` suite when the restore failed.

use std::io;

use cowgup_harness::OutcomeKind;
use cowgup_tests::Family;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::stream::{trial_lines, RunEnd, RunStart, TrialEnd};

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
    use super::super::{sample_output, Document};
    use super::*;

    fn sample_junit() -> String {
        sample_output(|b| Box::new(Document::junit(b)))
    }

    #[test]
    fn junit_reads_back_with_quick_junit() {
        let xml = sample_junit();
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

    /// The same check `cowgup`'s reports test applies to a real run's JUnit,
    /// here on a document whose trials carry evidence and checks.
    #[test]
    fn junit_with_evidence_loads_in_python_elementtree() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junit.xml");
        std::fs::write(&file, sample_junit()).unwrap();
        let Ok(out) = std::process::Command::new("python3")
            .args(["-c", include_str!("../../tests/junit_check.py")])
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
