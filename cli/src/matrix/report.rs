//! The matrix report: a Markdown table (kernels as columns, families as
//! rows), every unexpected result, and per cell what could not run and why;
//! and the JSON document of `--format json`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

use super::collect::Cell;

fn counts(cell: &Cell, family: Option<&str>) -> String {
    if cell.broken.is_some() {
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

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// The whole terminal report.
pub fn render(cells: &[Cell]) -> String {
    let mut out = String::new();
    let mut families: Vec<&str> = Vec::new();
    for t in cells.iter().flat_map(|c| &c.trials) {
        if !families.contains(&t.family.as_str()) {
            families.push(&t.family);
        }
    }
    let _ = writeln!(out, "cells: pass / fail / xfail / skip\n");
    let mut head = vec!["family".to_string()];
    head.extend(cells.iter().map(|c| c.kernel.clone()));
    row(&mut out, &head);
    row(&mut out, &vec!["---".to_string(); head.len()]);
    let mut line = vec!["release".to_string()];
    line.extend(
        cells
            .iter()
            .map(|c| c.release.clone().unwrap_or_else(|| "?".into())),
    );
    row(&mut out, &line);
    for f in &families {
        let mut line = vec![f.to_string()];
        line.extend(cells.iter().map(|c| counts(c, Some(f))));
        row(&mut out, &line);
    }
    let mut line = vec!["**all**".to_string()];
    line.extend(cells.iter().map(|c| format!("**{}**", counts(c, None))));
    row(&mut out, &line);
    let mut line = vec!["wall".to_string()];
    line.extend(
        cells
            .iter()
            .map(|c| format!("{:.0} s", c.wall.as_secs_f64())),
    );
    row(&mut out, &line);

    let unexpected: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.broken.is_some() || c.trials.iter().any(|t| t.unexpected()))
        .collect();
    if unexpected.is_empty() {
        let _ = writeln!(out, "\nUnexpected results: none");
    } else {
        let _ = writeln!(out, "\nUnexpected results:");
        for c in unexpected {
            if let Some(why) = &c.broken {
                let _ = writeln!(out, "- {}: NO RESULT: {why}", c.kernel);
                if !c.console_tail.is_empty() {
                    let _ = writeln!(out, "  console tail ({} lines):", c.console_tail.len());
                    for l in &c.console_tail {
                        let _ = writeln!(out, "  > {l}");
                    }
                }
            }
            for t in c.trials.iter().filter(|t| t.unexpected()) {
                let _ = writeln!(
                    out,
                    "- {}: {} {} -- {}",
                    c.kernel,
                    t.outcome.to_uppercase(),
                    t.name,
                    t.reason.as_deref().unwrap_or("(no reason given)")
                );
            }
        }
    }

    let _ = writeln!(out, "\nCould not run (skip reasons per cell):");
    for c in cells {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for t in c.trials.iter().filter(|t| t.outcome == "skip") {
            *reasons
                .entry(t.reason.as_deref().unwrap_or("(no reason given)"))
                .or_default() += 1;
        }
        if c.broken.is_some() {
            let _ = writeln!(out, "- {}: nothing (no result)", c.kernel);
        } else if reasons.is_empty() {
            let _ = writeln!(out, "- {}: everything ran", c.kernel);
        } else {
            let _ = writeln!(out, "- {}:", c.kernel);
            let mut by_count: Vec<_> = reasons.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (why, n) in by_count {
                let _ = writeln!(out, "  x{n} {why}");
            }
        }
    }
    out
}

/// `{"cells": [{"kernel", "release", "wall_s", "totals", "unexpected", "trials", ...}]}`
pub fn json(cells: &[Cell]) -> serde_json::Value {
    json!({
        "cells": cells.iter().map(|c| json!({
            "kernel": c.kernel,
            "release": c.release,
            "wall_s": c.wall.as_secs_f64(),
            "totals": c.totals(),
            "unexpected": c.trials.iter().filter(|t| t.unexpected()).map(|t| json!({
                "name": t.name, "family": t.family, "outcome": t.outcome, "reason": t.reason,
            })).collect::<Vec<_>>(),
            "no_result": c.broken,
            "console_tail": c.console_tail,
            "trials": c.raw_trials,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::collect::Trial;
    use super::*;
    use std::time::Duration;

    fn trial(name: &str, family: &str, outcome: &str, reason: Option<&str>) -> Trial {
        Trial {
            name: name.into(),
            family: family.into(),
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
        }
    }

    fn cells() -> Vec<Cell> {
        let ran = Cell {
            kernel: "bzImage-6.12".into(),
            release: Some("6.12.117".into()),
            wall: Duration::from_secs(300),
            trials: vec![
                trial("a", "cow_anon", "pass", None),
                trial("b", "cow_anon", "xfail", Some("known")),
                trial("c", "gup_test", "skip", Some("no gup_test")),
                trial("d", "gup_test", "skip", Some("no gup_test")),
                trial("e", "gup_test", "fail", Some("pin went stale at page 3")),
            ],
            raw_trials: vec![json!({"name": "a"})],
            broken: None,
            console_tail: vec![],
        };
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

    #[test]
    fn the_table_has_kernels_as_columns_and_families_as_rows() {
        let r = render(&cells());
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[2], "| family | bzImage-6.12 | debian:6.1 |");
        assert_eq!(lines[4], "| release | 6.12.117 | ? |");
        assert_eq!(lines[5], "| cow_anon | 1 / 0 / 1 / 0 | no result |");
        assert_eq!(lines[6], "| gup_test | 0 / 1 / 0 / 2 | no result |");
        assert_eq!(lines[7], "| **all** | **1 / 1 / 1 / 2** | **no result** |");
        assert_eq!(lines[8], "| wall | 300 s | 20 s |");
    }

    #[test]
    fn a_timed_out_cell_shows_its_console_tail() {
        let r = render(&cells());
        assert!(r.contains("- bzImage-6.12: FAIL e -- pin went stale at page 3\n"));
        assert!(r.contains("- debian:6.1: NO RESULT: no result within 20 s"));
        assert!(r.contains(
            "  console tail (2 lines):\n  > === GUEST-START 6.1.0-56-cloud-amd64\n  > looping\n"
        ));
        assert!(r.contains("- bzImage-6.12:\n  x2 no gup_test\n"));
        assert!(r.contains("- debian:6.1: nothing (no result)\n"));
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
}
