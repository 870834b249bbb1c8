//! The terminal report (also `--output` with `--format human`): a Markdown
//! table (kernels as columns, families as rows), every unexpected result,
//! what the kernel logged outside trials, how each topology was set up, and
//! per cell what could not run and why.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::super::collect::Cell;
use super::{all_counts, counts, families, skip_reasons};

/// The lines of the unexpected-results section for a cell that faulted or
/// ended without its report (none otherwise).
fn ending_lines(c: &Cell) -> Vec<String> {
    let mut v = Vec::new();
    let streamed = if c.broken.is_none() || (c.trials.is_empty() && c.stream.events == 0) {
        String::new()
    } else {
        let mut s = format!(
            "; {}{} result(s) streamed before the end",
            c.trials.len(),
            c.planned
                .map(|p| format!(" of {p} planned"))
                .unwrap_or_default()
        );
        if c.stream.garbled + c.stream.lost > 0 {
            s.push_str(&format!(
                " ({} garbled line(s) ignored, {} event(s) lost)",
                c.stream.garbled, c.stream.lost
            ));
        }
        if let Some(t) = &c.unfinished {
            s.push_str(&format!("; unfinished: {t}"));
        }
        s
    };
    if let Some(f) = &c.fault {
        v.push(format!(
            "- {}: KERNEL FAULT {}: {}",
            c.label(),
            f.place(),
            f.headline()
        ));
        v.push(format!(
            "  {}seen {:.0} s into the cell; the cell ended {:.0} s later, {}{streamed}",
            f.named_by()
                .map(|n| format!("the trial: {n}; "))
                .unwrap_or_default(),
            f.seen_s,
            f.ended_after_s,
            match &c.broken {
                None => "with the suite's report".to_string(),
                Some(why) => format!("without the suite's report ({why})"),
            }
        ));
        v.push(format!("  kernel fault ({} lines):", f.lines.len()));
        v.extend(f.lines.iter().map(|l| format!("  > {l}")));
        if f.later_count > 0 {
            v.push(format!(
                "  then {} more fault line(s){}:",
                f.later_count,
                if f.later.len() < f.later_count {
                    format!(", the first {}", f.later.len())
                } else {
                    String::new()
                }
            ));
            v.extend(f.later.iter().map(|l| format!("  > {l}")));
        }
    } else if let Some(why) = &c.broken {
        v.push(format!("- {}: {}: {why}{streamed}", c.label(), c.outcome()));
        if !c.console_tail.is_empty() {
            v.push(format!("  console tail ({} lines):", c.console_tail.len()));
            v.extend(c.console_tail.iter().map(|l| format!("  > {l}")));
        }
    }
    v
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// The whole terminal report.
pub fn render(cells: &[Cell]) -> String {
    let mut out = String::new();
    table(&mut out, cells);
    unexpected(&mut out, cells);
    kernel_log(&mut out, cells);
    topology_setup(&mut out, cells);
    skips(&mut out, cells);
    out
}

/// Kernels as columns, families as rows: each cell's counts.
fn table(out: &mut String, cells: &[Cell]) {
    let _ = writeln!(out, "cells: pass / fail / xfail / skip\n");
    let mut head = vec!["family".to_string()];
    head.extend(cells.iter().map(Cell::label));
    row(out, &head);
    row(out, &vec!["---".to_string(); head.len()]);
    let mut line = vec!["release".to_string()];
    line.extend(
        cells
            .iter()
            .map(|c| c.release.clone().unwrap_or_else(|| "?".into())),
    );
    row(out, &line);
    let mut line = vec!["machine".to_string()];
    line.extend(cells.iter().map(Cell::machine));
    row(out, &line);
    for f in &families(cells) {
        let mut line = vec![f.to_string()];
        line.extend(cells.iter().map(|c| counts(c, Some(f))));
        row(out, &line);
    }
    let mut line = vec!["**all**".to_string()];
    line.extend(cells.iter().map(|c| format!("**{}**", all_counts(c))));
    row(out, &line);
    let mut line = vec!["wall".to_string()];
    line.extend(
        cells
            .iter()
            .map(|c| format!("{:.0} s", c.wall.as_secs_f64())),
    );
    row(out, &line);
}

fn unexpected(out: &mut String, cells: &[Cell]) {
    let unexpected: Vec<&Cell> = cells.iter().filter(|c| !c.ok()).collect();
    if unexpected.is_empty() {
        let _ = writeln!(out, "\nUnexpected results: none");
        return;
    }
    let _ = writeln!(out, "\nUnexpected results:");
    for c in unexpected {
        for f in c.setup_failures() {
            let _ = writeln!(
                out,
                "- {}: TOPOLOGY NOT SET UP: {}: {}",
                c.label(),
                f.feature,
                f.detail
            );
        }
        for l in ending_lines(c) {
            let _ = writeln!(out, "{l}");
        }
        // Trials never started after a kernel fault share one reason:
        // one line with their count, not one line each.
        let mut not_run: BTreeMap<&str, usize> = Default::default();
        for t in c.trials.iter().filter(|t| t.unexpected()) {
            let reason = t.reason.as_deref().unwrap_or("(no reason given)");
            if t.outcome == "error" && reason.starts_with("not run: ") {
                *not_run.entry(reason).or_default() += 1;
                continue;
            }
            let _ = writeln!(
                out,
                "- {}: {} {} -- {}",
                c.label(),
                t.outcome.to_uppercase(),
                t.name,
                reason
            );
        }
        for (reason, n) in not_run {
            let _ = writeln!(out, "- {}: ERROR x{n} {reason}", c.label());
        }
    }
}

fn kernel_log(out: &mut String, cells: &[Cell]) {
    let logged: Vec<&Cell> = cells.iter().filter(|c| !c.kernel_log.is_empty()).collect();
    if logged.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nKernel logged outside trials (no trial failed for it):"
    );
    for c in logged {
        let _ = writeln!(out, "- {}: {} line(s)", c.label(), c.kernel_log.len());
        for l in &c.kernel_log {
            let _ = writeln!(out, "  > {l}");
        }
    }
}

fn topology_setup(out: &mut String, cells: &[Cell]) {
    let set_up: Vec<&Cell> = cells.iter().filter(|c| !c.setup.is_empty()).collect();
    if set_up.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nTopology set up:");
    for c in set_up {
        for s in &c.setup {
            let _ = writeln!(
                out,
                "- {}: {} {}: {}",
                c.label(),
                s.feature,
                if s.ok { "ok" } else { "FAILED" },
                s.detail
            );
        }
    }
}

/// Per cell: its skip reasons, whether it was cut short, or that it has no result.
fn skips(out: &mut String, cells: &[Cell]) {
    let _ = writeln!(out, "\nCould not run (skip reasons per cell):");
    for c in cells {
        let reasons = skip_reasons(c);
        let cut = if c.broken.is_some() && !c.trials.is_empty() {
            format!(
                " (cut short: {}{} trial(s) reported)",
                c.trials.len(),
                c.planned.map(|p| format!(" of {p}")).unwrap_or_default()
            )
        } else {
            String::new()
        };
        if c.broken.is_some() && c.trials.is_empty() {
            let _ = writeln!(out, "- {}: nothing (no result)", c.label());
        } else if reasons.is_empty() && cut.is_empty() {
            let _ = writeln!(out, "- {}: everything ran", c.label());
        } else if reasons.is_empty() {
            let _ = writeln!(out, "- {}: no skips{cut}", c.label());
        } else {
            let _ = writeln!(out, "- {}:{cut}", c.label());
            for (why, n) in reasons {
                let _ = writeln!(out, "  x{n} {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cells, cut_short, faulted, set_up};
    use super::*;

    #[test]
    fn the_table_has_kernels_as_columns_and_families_as_rows() {
        let r = render(&cells());
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[2], "| family | bzImage-6.12 | debian:6.1 |");
        assert_eq!(lines[4], "| release | 6.12.117 | ? |");
        assert_eq!(lines[5], "| machine | x86_64, 4 KiB pages | ?, ? pages |");
        assert_eq!(lines[6], "| cow_anon | 1 / 0 / 1 / 0 | no result |");
        assert_eq!(lines[7], "| gup_test | 0 / 1 / 0 / 2 | no result |");
        assert_eq!(lines[8], "| **all** | **1 / 1 / 1 / 2** | **no result** |");
        assert_eq!(lines[9], "| wall | 300 s | 20 s |");
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
    fn topology_setup_and_kernel_log_outside_trials_are_reported() {
        let r = render(&set_up());
        assert!(
            r.contains("| family | bzImage-6.12 [zram+fsdax] | debian:6.1 |"),
            "{r}"
        );
        assert!(r.contains(
            "- bzImage-6.12 [zram+fsdax]: TOPOLOGY NOT SET UP: fsdax: no /dev/pmem0 <memmap>\n"
        ));
        assert!(r.contains(
            "Kernel logged outside trials (no trial failed for it):\n\
             - bzImage-6.12 [zram+fsdax]: 1 line(s)\n  > [5.2] WARNING: CPU: 1 PID: 9 at mm/gup.c:123\n"
        ));
        assert!(r.contains("- bzImage-6.12 [zram+fsdax]: zram ok: /dev/zram0 (1 GiB) is swap\n"));
    }

    #[test]
    fn a_kernel_fault_cell_keeps_its_streamed_results_and_quotes_the_fault() {
        let mut cells = cells();
        cells.push(faulted());
        let r = render(&cells);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(
            lines[2],
            "| family | bzImage-6.12 | debian:6.1 | bzImage-fault |"
        );
        assert_eq!(
            lines[7],
            "| gup_test | 0 / 1 / 0 / 2 | no result | 1 / 1 / 0 / 0 |"
        );
        assert_eq!(
            lines[8],
            "| **all** | **1 / 1 / 1 / 2** | **no result** | **KERNEL FAULT: 1 / 1 / 0 / 0** |"
        );
        assert!(
            r.contains(
                "- bzImage-fault: KERNEL FAULT in trial #3 c: kernel BUG at mm/gup_test.c:42!\n\
                 \x20 the trial: started and not finished when the host saw the fault; seen 52 s into \
                 the cell; the cell ended 15 s later, without the suite's report \
                 (stopped 15 s after a kernel fault showed on the console); 2 of 245 planned result(s)"
            ),
            "{r}"
        );
        assert!(r.contains(
            "; 2 of 245 planned result(s) streamed before the end (1 garbled line(s) ignored, 0 event(s) lost); \
             unfinished: #3 c\n  kernel fault (3 lines):\n  > [   52.1] kernel BUG at mm/gup_test.c:42!\n"
        ));
        assert!(r.contains(
            "  then 1 more fault line(s):\n  > [  115.0] rcu: INFO: rcu_sched self-detected stall on CPU\n"
        ));
        assert!(r.contains("- bzImage-fault: FAIL b -- pin balance: violated\n"));
        assert!(!r.contains("- bzImage-fault: NO RESULT"));
        assert!(r.contains("- bzImage-fault: no skips (cut short: 2 of 245 trial(s) reported)\n"));
        assert!(!cells[2].ok());

        // The suite reported after all (its own watch stopped it): the
        // cell has its report and is still a kernel fault.
        let mut c = faulted();
        c.broken = None;
        c.unfinished = None;
        assert_eq!(c.outcome(), "KERNEL FAULT");
        assert!(!c.ok());
        let r = render(&[c]);
        assert!(
            r.contains("the cell ended 15 s later, with the suite's report\n"),
            "{r}"
        );
    }

    #[test]
    fn a_cell_cut_short_keeps_what_it_streamed() {
        let c = cut_short();
        assert_eq!(c.outcome(), "INCOMPLETE");
        let r = render(&[c]);
        assert!(
            r.contains("| **all** | **INCOMPLETE: 1 / 1 / 0 / 0** |"),
            "{r}"
        );
        assert!(
            r.contains(
                "- bzImage-fault: INCOMPLETE: no result within 600 s (the cell's time limit): the \
             guest was stopped; 2 of 245 planned result(s) streamed before the end (1 garbled line(s) ignored, \
             0 event(s) lost); unfinished: #3 c\n  console tail (1 lines):\n"
            ),
            "{r}"
        );
    }
}
