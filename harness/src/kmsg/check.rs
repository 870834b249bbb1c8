//! The kernel-log check of one trial: what was read of the log while it
//! ran, and the taint flags before and after, become its `CheckResult`.

use serde::Serialize;

use super::classify::{describe_taints, error_taints, Finding};
use super::log::{Scan, MAX_RECORDS};
use super::QUOTED;
use crate::outcome::{CheckResult, CheckStatus};

pub const CHECK: &str = "kernel log";

#[derive(Serialize)]
struct Data<'a> {
    records_read: u64,
    lost: u64,
    overwritten: bool,
    findings: &'a [Finding],
    more_findings: usize,
    taint_before: Option<u64>,
    taint_after: Option<u64>,
    /// Bits set after the trial that were clear before it.
    new_taint: u64,
    new_taint_flags: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_read: Option<&'a str>,
}

/// Judge one trial: `scan` is what was read of the log during it (Err: why
/// the log could not be read), the taints are /proc/sys/kernel/tainted before
/// and after. Pure.
pub fn judge(
    scan: Result<&Scan, &str>,
    taint_before: Option<u64>,
    taint_after: Option<u64>,
) -> CheckResult {
    let empty = Scan::default();
    let s = scan.unwrap_or(&empty);
    let new_taint = match (taint_before, taint_after) {
        (Some(b), Some(a)) => a & !b,
        _ => 0,
    };
    let data = serde_json::to_value(Data {
        records_read: s.records,
        lost: s.lost,
        overwritten: s.overwritten,
        findings: &s.findings,
        more_findings: s.more_findings,
        taint_before,
        taint_after,
        new_taint,
        new_taint_flags: describe_taints(new_taint),
        not_read: scan.err(),
    })
    .unwrap_or_default();
    let violations = violations(s, new_taint & error_taints(), taint_before, taint_after);
    let (status, detail) = if violations.is_empty() {
        not_violated(scan, &taint_note(taint_before, taint_after, new_taint))
    } else {
        (CheckStatus::Violated, violations.join("; "))
    };
    CheckResult {
        check: CHECK.into(),
        status,
        detail,
        data,
    }
}

/// The error lines read, and the error taint flags that appeared.
fn violations(
    s: &Scan,
    bad_taint: u64,
    taint_before: Option<u64>,
    taint_after: Option<u64>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let n = s.findings.len() + s.more_findings;
    if n > 0 {
        let quoted: Vec<String> = s
            .findings
            .iter()
            .take(QUOTED)
            .map(|f| f.to_string())
            .collect();
        let rest = n - quoted.len();
        violations.push(format!(
            "the kernel logged {n} error line{} during the trial: {}{}",
            if n == 1 { "" } else { "s" },
            quoted.join(" | "),
            if rest > 0 {
                format!(" | and {rest} more")
            } else {
                String::new()
            }
        ));
    }
    if bad_taint != 0 {
        violations.push(format!(
            "the kernel became tainted during the trial: {} (/proc/sys/kernel/tainted {} -> {})",
            describe_taints(bad_taint),
            taint_before.unwrap_or(0),
            taint_after.unwrap_or(0)
        ));
    }
    violations
}

/// What the taint flags say when none of them is an error: whether they
/// could be read, and which other flags appeared.
fn taint_note(taint_before: Option<u64>, taint_after: Option<u64>, new_taint: u64) -> String {
    let note = match (taint_before, taint_after) {
        (Some(_), Some(_)) => "no error taint flag appeared",
        _ => "/proc/sys/kernel/tainted unreadable",
    };
    if new_taint != 0 {
        format!(
            "{note}; taint flags that are not kernel errors appeared: {}",
            describe_taints(new_taint)
        )
    } else {
        note.to_string()
    }
}

/// Nothing wrong was read: Held if all that was logged was read, otherwise
/// NotChecked or Unreliable, saying what was not.
fn not_violated(scan: Result<&Scan, &str>, taint_note: &str) -> (CheckStatus, String) {
    let s = match scan {
        Err(why) => {
            return (
                CheckStatus::NotChecked,
                format!("kernel log not checked: {why} ({taint_note})"),
            )
        }
        Ok(s) => s,
    };
    if let Some(e) = &s.error {
        return (
            CheckStatus::Unreliable,
            format!(
                "kernel log unreliable: reading /dev/kmsg failed after {} records: {e} \
                 ({taint_note})",
                s.records
            ),
        );
    }
    if s.overwritten || s.lost > 0 || s.cut_short {
        return (
            CheckStatus::Unreliable,
            format!(
                "kernel log unreliable: {}; no error lines in the {} that were read \
                 ({taint_note})",
                unread(s),
                s.records
            ),
        );
    }
    (
        CheckStatus::Held,
        format!(
            "no error lines in {} records logged during the trial ({taint_note})",
            s.records
        ),
    )
}

/// What of the log a scan did not read.
fn unread(s: &Scan) -> String {
    if s.cut_short {
        return format!("reading stopped after {MAX_RECORDS} records");
    }
    let n = match (s.overwritten, s.lost) {
        (true, 0) => "some".to_string(),
        (true, n) => format!("at least {n}"),
        (false, n) => n.to_string(),
    };
    format!(
        "{n} records were overwritten before they could be read (the kernel log \
         ring buffer wrapped)"
    )
}

#[cfg(test)]
mod tests {
    use super::super::log::{scan, Read1};
    use super::super::test_log::Fake;
    use super::*;
    use crate::outcome::Outcome;
    use crate::verdict::{decide, Ended, Observations};

    fn scanned(lines: &[&str]) -> Scan {
        let log = Fake::default();
        for (i, l) in lines.iter().enumerate() {
            log.log(&format!("6,{},{},-;{l}\n", 100 + i, 1000 * i));
        }
        scan(&mut log.clone(), &mut Some(100))
    }

    #[test]
    fn a_warning_violates_and_benign_lines_hold() {
        let s = scanned(&[
            "zram0: detected capacity change",
            "bash (1): drop_caches: 3",
        ]);
        let c = judge(Ok(&s), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::Held, "{c:?}");
        assert_eq!(
            c.detail,
            "no error lines in 2 records logged during the trial (no error taint flag appeared)"
        );

        let s = scanned(&[
            "swap on",
            "WARNING: CPU: 0 PID: 1 at mm/gup.c:123 x+0x1/0x2",
        ]);
        let c = judge(Ok(&s), Some(0), Some(1 << 9));
        assert_eq!(c.status, CheckStatus::Violated, "{c:?}");
        assert_eq!(
            c.detail,
            "the kernel logged 1 error line during the trial: [0.001000] WARNING: CPU: 0 \
             PID: 1 at mm/gup.c:123 x+0x1/0x2; the kernel became tainted during the trial: \
             W (warning) (/proc/sys/kernel/tainted 0 -> 512)"
        );
        assert_eq!(c.data["findings"][0]["seq"], 101);
        assert_eq!(c.data["findings"][0]["pattern"], "WARNING: CPU: ");
        assert_eq!(c.data["new_taint_flags"], "W (warning)");

        // Through the verdict: a pass becomes a fail naming the line.
        let v = decide(&Observations {
            reported: Some(Outcome::Pass),
            ended: Ended::Exited(0),
            checks: vec![c],
        });
        assert!(
            matches!(&v.outcome, Outcome::Fail(r) if r.starts_with("kernel log: the kernel logged 1 error line")
                && r.contains("mm/gup.c:123")),
            "{:?}",
            v.outcome
        );
    }

    #[test]
    fn many_lines_are_quoted_in_part_and_kept_as_data() {
        let lines: Vec<String> = (0..8).map(|i| format!("BUG: Bad page state {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let c = judge(Ok(&scanned(&refs)), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::Violated);
        assert!(c.detail.starts_with("the kernel logged 8 error lines"));
        assert!(c.detail.ends_with("| and 3 more"), "{}", c.detail);
        assert_eq!(c.data["findings"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn taint_alone_decides_by_its_kind() {
        let quiet = scanned(&[]);
        let c = judge(Ok(&quiet), Some(1 << 9), Some(1 << 9 | 1 << 5));
        assert_eq!(c.status, CheckStatus::Violated);
        assert!(c.detail.contains("B (bad page)"), "{}", c.detail);
        // A module loaded meanwhile is not a kernel error: said, not failed.
        let c = judge(Ok(&quiet), Some(0), Some(1 << 12));
        assert_eq!(c.status, CheckStatus::Held);
        assert!(
            c.detail.ends_with(
                "taint flags that are not kernel errors appeared: O (out-of-tree module))"
            ),
            "{}",
            c.detail
        );
    }

    #[test]
    fn lost_records_make_it_unreliable_unless_it_is_violated_anyway() {
        let log = Fake::default();
        log.push(Read1::Overwritten);
        log.log("6,120,1,-;ordinary\n");
        let s = scan(&mut log.clone(), &mut Some(100));
        let c = judge(Ok(&s), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::Unreliable, "{c:?}");
        assert!(
            c.detail.starts_with(
                "kernel log unreliable: at least 20 records were overwritten before they \
                 could be read"
            ),
            "{}",
            c.detail
        );
        // The very first read overwritten: how many is not known.
        let first = Fake::default();
        first.push(Read1::Overwritten);
        let s = scan(&mut first.clone(), &mut None);
        let c = judge(Ok(&s), Some(0), Some(0));
        assert!(
            c.detail
                .starts_with("kernel log unreliable: some records were overwritten"),
            "{}",
            c.detail
        );
        log.push(Read1::Overwritten);
        log.log("4,200,1,-;kernel BUG at mm/gup.c:1!\n");
        let s = scan(&mut log.clone(), &mut Some(121));
        assert_eq!(
            judge(Ok(&s), Some(0), Some(0)).status,
            CheckStatus::Violated
        );
    }

    #[test]
    fn no_log_is_not_checked_but_taint_still_counts() {
        let why = "cannot read /dev/kmsg: Operation not permitted (os error 1) \
                   (kernel.dmesg_restrict = 1: reading needs CAP_SYSLOG)";
        let c = judge(Err(why), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::NotChecked);
        assert_eq!(
            c.detail,
            format!("kernel log not checked: {why} (no error taint flag appeared)")
        );
        let c = judge(Err(why), Some(0), Some(1 << 7));
        assert_eq!(c.status, CheckStatus::Violated);
        assert!(c.detail.contains("D (kernel died (oops))"), "{}", c.detail);
    }
}
