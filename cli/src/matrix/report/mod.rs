//! The matrix report in its three forms: the terminal's table and lists
//! (`text`), the JSON document of `--format json` (here) and the HTML page
//! of `--html` (`html`). What they share is here too: how a cell's results
//! are counted, in what order families come, how skips are grouped.

pub mod html;
pub mod text;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

use super::collect::Cell;

fn counts(cell: &Cell, family: Option<&str>) -> String {
    if cell.broken.is_some() && cell.trials.is_empty() {
        return "no result".into();
    }
    let mut c: BTreeMap<&str, usize> = BTreeMap::new();
    let mut any = false;
    for t in cell
        .trials
        .iter()
        .filter(|t| family.is_none() || family == Some(t.family.as_str()))
    {
        *c.entry(t.outcome.as_str()).or_default() += 1;
        any = true;
    }
    if !any {
        return "-".into();
    }
    let n = |o: &str| c.get(o).copied().unwrap_or(0);
    let mut s = format!(
        "{} / {} / {} / {}",
        n("pass"),
        n("fail"),
        n("xfail"),
        n("skip")
    );
    for extra in ["xpass", "error"] {
        if n(extra) > 0 {
            let _ = write!(s, " +{} {extra}", n(extra));
        }
    }
    s
}

/// The `all` row: the counts, after the cell's outcome when it ended
/// abnormally with results (`KERNEL FAULT: 19 / 0 / 0 / 0`).
fn all_counts(cell: &Cell) -> String {
    match cell.outcome() {
        "complete" | "NO RESULT" => counts(cell, None),
        o => format!("{o}: {}", counts(cell, None)),
    }
}

/// The families in the order the cells ran them (the catalogue's order).
fn families(cells: &[Cell]) -> Vec<&str> {
    let mut families: Vec<&str> = Vec::new();
    for t in cells.iter().flat_map(|c| &c.trials) {
        if !families.contains(&t.family.as_str()) {
            families.push(&t.family);
        }
    }
    families
}

/// A cell's skip reasons with how many trials gave each, most first.
fn skip_reasons(c: &Cell) -> Vec<(&str, usize)> {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for t in c.trials.iter().filter(|t| t.outcome == "skip") {
        *reasons
            .entry(t.reason.as_deref().unwrap_or("(no reason given)"))
            .or_default() += 1;
    }
    let mut by_count: Vec<_> = reasons.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_count
}

/// `{"cells": [{"kernel", "topology", "release", "wall_s", "totals", "unexpected",
/// "outcome", "no_result", "unfinished_trial", "kernel_fault", "stream", "trials", ...}]}`
pub fn json(cells: &[Cell]) -> serde_json::Value {
    json!({
        "cells": cells.iter().map(|c| json!({
            "kernel": c.kernel,
            "topology": c.topology,
            "setup": c.setup.iter().map(|s| json!({
                "feature": s.feature, "ok": s.ok, "detail": s.detail,
            })).collect::<Vec<_>>(),
            "kernel_log_outside_trials": c.kernel_log,
            "release": c.release,
            "arch": c.arch,
            "page_size": c.page_size,
            "wall_s": c.wall.as_secs_f64(),
            "totals": c.totals(),
            "unexpected": c.trials.iter().filter(|t| t.unexpected()).map(|t| json!({
                "name": t.name, "family": t.family, "outcome": t.outcome, "reason": t.reason,
            })).collect::<Vec<_>>(),
            "outcome": match c.outcome() {
                "KERNEL FAULT" => "kernel_fault",
                "NO RESULT" => "no_result",
                "INCOMPLETE" => "incomplete",
                _ => "complete",
            },
            "no_result": c.broken,
            "unfinished_trial": c.unfinished,
            "kernel_fault": c.fault.as_ref().map(|f| json!({
                "headline": f.headline(),
                "trial": f.trial,
                "after_trial": f.after,
                "seen_s": f.seen_s,
                "ended_after_s": f.ended_after_s,
                "lines": f.lines,
                "later": f.later,
                "later_count": f.later_count,
            })),
            "stream": {
                "events": c.stream.events,
                "garbled": c.stream.garbled,
                "lost": c.stream.lost,
            },
            "console_tail": c.console_tail,
            "trials": c.raw_trials,
        })).collect::<Vec<_>>(),
    })
}

/// Fake cells for the reports' tests; `pub(crate)`: tests/matrix_html.rs
/// reuses them.
#[cfg(test)]
pub(crate) mod tests {
    use super::super::collect::{KernelFault, Setup, StreamStats, Trial};
    use super::*;
    use std::time::Duration;

    pub(crate) fn trial(name: &str, family: &str, outcome: &str, reason: Option<&str>) -> Trial {
        Trial {
            name: name.into(),
            family: family.into(),
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
        }
    }

    /// A cell with the suite's report, its trials `trials`.
    pub(crate) fn reported(kernel: &str, release: &str, wall_s: u64, trials: Vec<Trial>) -> Cell {
        Cell {
            kernel: kernel.into(),
            release: Some(release.into()),
            arch: "x86_64".into(),
            page_size: Some(4096),
            wall: Duration::from_secs(wall_s),
            trials,
            raw_trials: vec![],
            broken: None,
            console_tail: vec![],
            topology: "base".into(),
            setup: vec![],
            kernel_log: vec![],
            fault: None,
            unfinished: None,
            planned: None,
            stream: Default::default(),
        }
    }

    /// A cell with a failure and skips, and one that timed out.
    pub(crate) fn cells() -> Vec<Cell> {
        let mut ran = reported(
            "bzImage-6.12",
            "6.12.117",
            300,
            vec![
                trial("a", "cow_anon", "pass", None),
                trial("b", "cow_anon", "xfail", Some("known")),
                trial("c", "gup_test", "skip", Some("no gup_test")),
                trial("d", "gup_test", "skip", Some("no gup_test")),
                trial("e", "gup_test", "fail", Some("pin went stale at page 3")),
            ],
        );
        ran.raw_trials = vec![json!({"name": "a"})];
        let hung = Cell::broken(
            "debian:6.1",
            Duration::from_secs(20),
            "no result within 20 s (the cell's time limit): the guest was stopped".into(),
            vec![
                "=== GUEST-START 6.1.0-56-cloud-amd64".into(),
                "looping".into(),
            ],
        );
        vec![ran, hung]
    }

    /// `cells()` with the first's topology half set up and a kernel log line
    /// outside trials.
    pub(crate) fn set_up() -> Vec<Cell> {
        let mut c = cells();
        c[0].topology = "zram+fsdax".into();
        c[0].setup = vec![
            Setup {
                feature: "zram".into(),
                ok: true,
                detail: "/dev/zram0 (1 GiB) is swap".into(),
            },
            Setup {
                feature: "fsdax".into(),
                ok: false,
                detail: "no /dev/pmem0 <memmap>".into(),
            },
        ];
        c[0].kernel_log = vec!["[5.2] WARNING: CPU: 1 PID: 9 at mm/gup.c:123".into()];
        c
    }

    /// A guest whose kernel hit a BUG in its third trial: two results
    /// streamed, the fault quoted, no report.
    pub(crate) fn faulted() -> Cell {
        let mut c = Cell::broken(
            "bzImage-fault",
            Duration::from_secs(75),
            "stopped 15 s after a kernel fault showed on the console".into(),
            vec!["[   52.1] kernel BUG at mm/gup_test.c:42!".into()],
        );
        c.release = Some("6.12.118".into());
        c.trials = vec![
            trial("a", "gup_test", "pass", None),
            trial("b", "gup_test", "fail", Some("pin balance: violated")),
        ];
        c.raw_trials = vec![json!({"name": "a"}), json!({"name": "b"})];
        c.unfinished = Some("#3 c".into());
        c.planned = Some(245);
        c.stream = StreamStats {
            events: 6,
            garbled: 1,
            lost: 0,
        };
        c.fault = Some(KernelFault {
            lines: vec![
                "[   52.1] kernel BUG at mm/gup_test.c:42!".into(),
                "[   52.1] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI".into(),
                "[   52.1] <script>".into(),
            ],
            later: vec!["[  115.0] rcu: INFO: rcu_sched self-detected stall on CPU".into()],
            later_count: 1,
            trial: Some("#3 c".into()),
            by_check: false,
            after: Some("#2 b".into()),
            seen_s: 52.4,
            ended_after_s: 15.2,
        });
        c
    }

    /// `faulted()` without the fault: a cell that ran out of time.
    pub(crate) fn cut_short() -> Cell {
        let mut c = faulted();
        c.fault = None;
        c.broken =
            Some("no result within 600 s (the cell's time limit): the guest was stopped".into());
        c
    }

    #[test]
    fn json_has_one_entry_per_cell() {
        let doc = json(&cells());
        let c = &doc["cells"];
        assert_eq!(c[0]["kernel"], "bzImage-6.12");
        assert_eq!(c[0]["totals"]["skip"], 2);
        assert_eq!(c[0]["unexpected"][0]["name"], "e");
        assert_eq!(c[0]["trials"][0]["name"], "a");
        assert_eq!(c[1]["wall_s"], 20.0);
        assert!(c[1]["no_result"].as_str().unwrap().contains("time limit"));
        assert_eq!(c[1]["console_tail"][1], "looping");
    }

    #[test]
    fn json_has_each_cells_topology_and_kernel_log_outside_trials() {
        let doc = json(&set_up());
        assert_eq!(doc["cells"][0]["topology"], "zram+fsdax");
        assert_eq!(doc["cells"][0]["setup"][1]["ok"], false);
        assert_eq!(doc["cells"][1]["topology"], "base");
        assert_eq!(
            doc["cells"][0]["kernel_log_outside_trials"][0],
            "[5.2] WARNING: CPU: 1 PID: 9 at mm/gup.c:123"
        );
    }

    #[test]
    fn json_says_how_each_cell_ended_and_quotes_a_fault() {
        let mut cells = cells();
        cells.push(faulted());
        let doc = json(&cells);
        let c = &doc["cells"][2];
        assert_eq!(c["outcome"], "kernel_fault");
        assert_eq!(doc["cells"][0]["outcome"], "complete");
        assert_eq!(doc["cells"][1]["outcome"], "no_result");
        assert_eq!(c["kernel_fault"]["trial"], "#3 c");
        assert_eq!(
            c["kernel_fault"]["headline"],
            "kernel BUG at mm/gup_test.c:42!"
        );
        assert_eq!(c["kernel_fault"]["lines"].as_array().unwrap().len(), 3);
        assert_eq!(c["kernel_fault"]["ended_after_s"], 15.2);
        assert_eq!(c["unfinished_trial"], "#3 c");
        assert_eq!(c["stream"]["garbled"], 1);
        assert_eq!(c["totals"]["fail"], 1);
        assert_eq!(c["trials"][1]["name"], "b");
        assert!(doc["cells"][0]["kernel_fault"].is_null());
        assert_eq!(json(&[cut_short()])["cells"][0]["outcome"], "incomplete");
    }
}
