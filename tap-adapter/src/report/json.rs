//! The JSON report (`cowgup run --format json`): one document with the
//! probe, the host changes, every trial with its evidence and checks as
//! structured fields, the totals and the restore. Its trial object is also
//! what each `trial_finished` line of the events stream carries.

use std::time::Duration;

use cowgup_harness::probe::Presence;
use cowgup_harness::{CheckResult, Evidence, Totals};
use serde::Serialize;
use serde_json::json;

use crate::stream::{RunEnd, RunStart, TrialEnd};

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
pub(crate) struct JsonTrial<'a> {
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

pub(crate) fn totals_json(t: &Totals) -> serde_json::Value {
    json!({"pass": t.pass, "fail": t.fail, "xfail": t.xfail, "xpass": t.xpass, "skip": t.skip, "error": t.error})
}

pub(crate) fn json_trial(t: &TrialEnd) -> JsonTrial<'_> {
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

pub(crate) fn restore_json(end: &RunEnd) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::super::{sample_output, Document};
    use cowgup_harness::{CheckResult, CheckStatus, Evidence};

    #[test]
    fn json_carries_evidence_and_checks_as_fields() {
        let text = sample_output(|b| Box::new(Document::json(b)));
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
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
}
