//! The matrix report: a Markdown table (kernels as columns, families as
//! rows), every unexpected result, and per cell what could not run and why;
//! the JSON document of `--format json`; and the HTML page of `--html`.

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

/// The whole terminal report.
pub fn render(cells: &[Cell]) -> String {
    let mut out = String::new();
    let families = families(cells);
    let _ = writeln!(out, "cells: pass / fail / xfail / skip\n");
    let mut head = vec!["family".to_string()];
    head.extend(cells.iter().map(Cell::label));
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
    line.extend(cells.iter().map(|c| format!("**{}**", all_counts(c))));
    row(&mut out, &line);
    let mut line = vec!["wall".to_string()];
    line.extend(
        cells
            .iter()
            .map(|c| format!("{:.0} s", c.wall.as_secs_f64())),
    );
    row(&mut out, &line);

    let unexpected: Vec<&Cell> = cells.iter().filter(|c| !c.ok()).collect();
    if unexpected.is_empty() {
        let _ = writeln!(out, "\nUnexpected results: none");
    } else {
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
            let mut not_run: std::collections::BTreeMap<&str, usize> = Default::default();
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

    let logged: Vec<&Cell> = cells.iter().filter(|c| !c.kernel_log.is_empty()).collect();
    if !logged.is_empty() {
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
    let set_up: Vec<&Cell> = cells.iter().filter(|c| !c.setup.is_empty()).collect();
    if !set_up.is_empty() {
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

    let _ = writeln!(out, "\nCould not run (skip reasons per cell):");
    for c in cells {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for t in c.trials.iter().filter(|t| t.outcome == "skip") {
            *reasons
                .entry(t.reason.as_deref().unwrap_or("(no reason given)"))
                .or_default() += 1;
        }
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
            let mut by_count: Vec<_> = reasons.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (why, n) in by_count {
                let _ = writeln!(out, "  x{n} {why}");
            }
        }
    }
    out
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

/// Text made safe for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A heat-map cell's colour class: `bad` for any fail/error/xpass (or no
/// result at all), `ok` when everything passed, xfailed or skipped, `none`
/// when the cell has no trial of the family.
fn class(cell: &Cell, family: Option<&str>) -> &'static str {
    if family.is_none() && cell.fault.is_some() {
        return "fault";
    }
    if cell.broken.is_some() && cell.trials.is_empty() {
        return "none";
    }
    // A cell cut short is red in its all row, whatever it streamed.
    if family.is_none() && cell.broken.is_some() {
        return "bad";
    }
    // The whole cell is red when its topology could not be set up.
    if family.is_none() && cell.setup_failures().next().is_some() {
        return "bad";
    }
    let mut trials = cell
        .trials
        .iter()
        .filter(|t| family.is_none() || family == Some(t.family.as_str()))
        .peekable();
    if trials.peek().is_none() {
        "none"
    } else if trials.any(|t| t.unexpected()) {
        "bad"
    } else {
        "ok"
    }
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}
#matrix td{text-align:center;font-variant-numeric:tabular-nums;white-space:nowrap}
#matrix thead th{background:#eee}
td.ok{background:#b7e4b0}
td.bad{background:#f2a7a0;font-weight:bold}
td.none{background:#ddd;color:#555}
td.fault{background:#7a1010;color:#fff;font-weight:bold}
li.bad{color:#a00}
tr.unexpected td.outcome{color:#a00;font-weight:bold}
pre{background:#f5f5f5;border:1px solid #ccc;padding:.5em;overflow-x:auto}
small{color:#555;font-weight:normal}
";

/// A self-contained HTML page: the heat map (kernels as columns, families as
/// rows, each cell coloured by its worst result) and, per kernel, a section
/// with its unexpected results, skip reasons, or why it has no result.
pub fn html(cells: &[Cell]) -> String {
    let mut out = String::new();
    let families = families(cells);
    let verdict = if cells.iter().all(Cell::ok) {
        "every cell has a result and no unexpected one"
    } else {
        "unexpected results or cells without a result"
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>cowgup matrix</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <h1>cowgup matrix</h1>\n<p>{} cell(s): {verdict}. Cells: pass / fail / xfail / skip; \
         green: all pass, xfail or skip; red: any fail, xpass or error, or cut short; dark red: \
         a kernel fault; grey: no result.</p>\n",
        cells.len()
    );
    let _ = writeln!(out, "<table id=\"matrix\">\n<thead><tr><th>family</th>");
    for (i, c) in cells.iter().enumerate() {
        let _ = writeln!(
            out,
            "<th><a href=\"#cell-{i}\">{}</a><br><small>{}</small></th>",
            esc(&c.label()),
            esc(c.release.as_deref().unwrap_or("?"))
        );
    }
    let _ = writeln!(out, "</tr></thead>\n<tbody>");
    for f in &families {
        let _ = writeln!(out, "<tr><th>{}</th>", esc(f));
        for c in cells {
            let _ = writeln!(
                out,
                "<td class=\"{}\">{}</td>",
                class(c, Some(f)),
                esc(&counts(c, Some(f)))
            );
        }
        let _ = writeln!(out, "</tr>");
    }
    let _ = writeln!(out, "<tr class=\"all\"><th>all</th>");
    for c in cells {
        let _ = writeln!(
            out,
            "<td class=\"{}\">{}<br><small>{:.0} s</small></td>",
            class(c, None),
            esc(&all_counts(c)),
            c.wall.as_secs_f64()
        );
    }
    let _ = writeln!(out, "</tr>\n</tbody>\n</table>");

    for (i, c) in cells.iter().enumerate() {
        let _ = writeln!(
            out,
            "<section id=\"cell-{i}\">\n<h2>{} <small>{} &middot; {:.0} s</small></h2>",
            esc(&c.label()),
            esc(c.release.as_deref().unwrap_or("release unknown")),
            c.wall.as_secs_f64()
        );
        if let Some(f) = &c.fault {
            let _ = writeln!(
                out,
                "<h3>Kernel fault</h3>\n<p class=\"fault\">{} {}: <code>{}</code>{}; seen {:.0} s \
                 into the cell, which ended {:.0} s later {}.</p>\n<pre class=\"oops\">{}</pre>",
                esc(c.outcome()),
                esc(&f.place()),
                esc(f.headline()),
                f.named_by()
                    .map(|n| format!(" (the trial: {n})"))
                    .unwrap_or_default(),
                f.seen_s,
                f.ended_after_s,
                if c.broken.is_none() {
                    "with the suite's report"
                } else {
                    "without the suite's report"
                },
                esc(&f.lines.join("\n"))
            );
            if f.later_count > 0 {
                let _ = writeln!(
                    out,
                    "<p>Then {} more fault line(s):</p>\n<pre class=\"later\">{}</pre>",
                    f.later_count,
                    esc(&f.later.join("\n"))
                );
            }
        }
        if let Some(why) = &c.broken {
            let what = if c.trials.is_empty() {
                "No result".to_string()
            } else {
                format!("Cut short ({} result(s) streamed)", c.trials.len())
            };
            let _ = writeln!(out, "<p class=\"no-result\">{what}: {}</p>", esc(why));
            if let Some(t) = &c.unfinished {
                let _ = writeln!(out, "<p class=\"unfinished\">Unfinished: {}</p>", esc(t));
            }
            if c.console_tail.is_empty() {
                let _ = writeln!(out, "<p>No console output.</p>");
            } else {
                let _ = writeln!(
                    out,
                    "<p>Console tail ({} lines):</p>\n<pre class=\"console\">{}</pre>",
                    c.console_tail.len(),
                    esc(&c.console_tail.join("\n"))
                );
            }
        }
        if !c.setup.is_empty() {
            let _ = writeln!(out, "<h3>Topology</h3>\n<ul class=\"setup\">");
            for s in &c.setup {
                let _ = writeln!(
                    out,
                    "<li class=\"{}\">{} {}: {}</li>",
                    if s.ok { "ok" } else { "bad" },
                    esc(&s.feature),
                    if s.ok {
                        "ok"
                    } else {
                        "<strong>FAILED</strong>"
                    },
                    esc(&s.detail)
                );
            }
            let _ = writeln!(out, "</ul>");
        }
        if !c.kernel_log.is_empty() {
            let _ = writeln!(
                out,
                "<h3>Kernel logged outside trials ({} lines)</h3>\n<pre class=\"kernel-log\">{}</pre>",
                c.kernel_log.len(),
                esc(&c.kernel_log.join("\n"))
            );
        }
        let unexpected: Vec<_> = c.trials.iter().filter(|t| t.unexpected()).collect();
        if c.broken.is_none() || !c.trials.is_empty() {
            if unexpected.is_empty() {
                let _ = writeln!(out, "<p>Unexpected results: none.</p>");
            } else {
                let _ = writeln!(
                    out,
                    "<h3>Unexpected results ({})</h3>\n<table class=\"unexpected\">\n\
                     <tr><th>trial</th><th>outcome</th><th>reason</th></tr>",
                    unexpected.len()
                );
                for t in unexpected {
                    let _ = writeln!(
                        out,
                        "<tr class=\"unexpected\"><td>{}</td><td class=\"outcome\">{}</td><td>{}</td></tr>",
                        esc(&t.name),
                        esc(&t.outcome),
                        esc(t.reason.as_deref().unwrap_or("(no reason given)"))
                    );
                }
                let _ = writeln!(out, "</table>");
            }
        }
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for t in c.trials.iter().filter(|t| t.outcome == "skip") {
            *reasons
                .entry(t.reason.as_deref().unwrap_or("(no reason given)"))
                .or_default() += 1;
        }
        if !reasons.is_empty() {
            let mut by_count: Vec<_> = reasons.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(out, "<h3>Skipped</h3>\n<ul class=\"skips\">");
            for (why, n) in by_count {
                let _ = writeln!(out, "<li>&times;{n} {}</li>", esc(why));
            }
            let _ = writeln!(out, "</ul>");
        } else if c.broken.is_none() && c.fault.is_none() {
            let _ = writeln!(out, "<p>Everything ran.</p>");
        }
        let _ = writeln!(out, "</section>");
    }
    let _ = writeln!(out, "</body>\n</html>");
    out
}

/// `pub(crate)`: tests/matrix_html.rs reuses the fake cells.
#[cfg(test)]
pub(crate) mod tests {
    use super::super::collect::Trial;
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

    pub(crate) fn cells() -> Vec<Cell> {
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
            topology: "base".into(),
            setup: vec![],
            kernel_log: vec![],
            fault: None,
            unfinished: None,
            planned: None,
            stream: Default::default(),
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

    #[test]
    fn html_escapes_every_text() {
        let mut c = cells();
        c[0].kernel = "k<1>&\"q\"".into();
        c[0].trials.push(trial(
            "<script>alert('x')</script> & co",
            "fam<ily>",
            "error",
            Some("a \"quoted\" <reason> & more"),
        ));
        c[1].console_tail.push("<b>panic</b> & 'oops'".into());
        let h = html(&c);
        assert!(h.contains("k&lt;1&gt;&amp;&quot;q&quot;"));
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"));
        assert!(h.contains("<th>fam&lt;ily&gt;</th>"));
        assert!(h.contains("a &quot;quoted&quot; &lt;reason&gt; &amp; more"));
        assert!(h.contains("&lt;b&gt;panic&lt;/b&gt; &amp; &#39;oops&#39;"));
        assert!(!h.contains("<script"), "no script, and nothing unescaped");
        assert!(!h.contains("<b>"));
    }

    #[test]
    fn html_colours_each_cell_by_its_worst_result() {
        let mut c = cells();
        c.push(Cell {
            kernel: "clean".into(),
            release: Some("6.18".into()),
            wall: Duration::from_secs(37),
            trials: vec![
                trial("a", "cow_anon", "pass", None),
                trial("c", "gup_test", "skip", Some("no gup_test")),
            ],
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
        });
        c[0].trials
            .push(trial("z", "only_here", "xfail", Some("known")));
        assert_eq!(class(&c[0], Some("cow_anon")), "ok", "pass + xfail");
        assert_eq!(class(&c[0], Some("gup_test")), "bad", "a fail");
        assert_eq!(class(&c[0], None), "bad");
        assert_eq!(class(&c[1], Some("cow_anon")), "none", "no result");
        assert_eq!(class(&c[2], Some("gup_test")), "ok", "skip only");
        assert_eq!(class(&c[2], Some("only_here")), "none", "no trial");
        let h = html(&c);
        assert!(h.contains("<td class=\"ok\">1 / 0 / 1 / 0</td>"));
        assert!(h.contains("<td class=\"bad\">0 / 1 / 0 / 2</td>"));
        assert!(h.contains("<td class=\"none\">no result</td>"));
        assert!(h.contains("<td class=\"ok\">0 / 0 / 0 / 1</td>"));
        assert!(h.contains("<td class=\"none\">-</td>"));
        assert!(h.contains("<td class=\"bad\">1 / 1 / 2 / 2<br><small>300 s</small></td>"));
        assert!(h.contains("<td class=\"ok\">1 / 0 / 0 / 1<br><small>37 s</small></td>"));
    }

    #[test]
    fn html_links_each_column_to_its_section() {
        let h = html(&cells());
        for (i, k) in ["bzImage-6.12", "debian:6.1"].iter().enumerate() {
            assert!(h.contains(&format!("<th><a href=\"#cell-{i}\">{k}</a>")));
            assert!(h.contains(&format!("<section id=\"cell-{i}\">\n<h2>{k} ")));
        }
        assert!(h.contains(
            "<tr class=\"unexpected\"><td>e</td><td class=\"outcome\">fail</td>\
             <td>pin went stale at page 3</td></tr>"
        ));
        assert!(h.contains("<li>&times;2 no gup_test</li>"));
        assert!(
            !h.contains("src=") && !h.contains("<link"),
            "self-contained"
        );
    }

    #[test]
    fn topology_setup_and_kernel_log_outside_trials_are_reported() {
        use super::super::collect::Setup;
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
        let r = render(&c);
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
        let doc = json(&c);
        assert_eq!(doc["cells"][0]["topology"], "zram+fsdax");
        assert_eq!(doc["cells"][0]["setup"][1]["ok"], false);
        assert_eq!(doc["cells"][1]["topology"], "base");
        assert_eq!(
            doc["cells"][0]["kernel_log_outside_trials"][0],
            "[5.2] WARNING: CPU: 1 PID: 9 at mm/gup.c:123"
        );
        let h = html(&c);
        assert!(h.contains(
            "<li class=\"bad\">fsdax <strong>FAILED</strong>: no /dev/pmem0 &lt;memmap&gt;</li>"
        ));
        assert!(h.contains(
            "<pre class=\"kernel-log\">[5.2] WARNING: CPU: 1 PID: 9 at mm/gup.c:123</pre>"
        ));
        c[0].trials.retain(|t| !t.unexpected());
        assert_eq!(class(&c[0], None), "bad", "the all row");
        assert_eq!(class(&c[0], Some("cow_anon")), "ok");
        assert!(!c[0].ok(), "a feature not set up makes the cell not ok");
        c[0].setup.pop();
        assert!(c[0].ok(), "kernel log lines outside trials fail nothing");
        assert_eq!(class(&c[0], None), "ok");
    }

    /// A guest whose kernel hit a BUG in its third trial: two results
    /// streamed, the fault quoted, no report.
    pub(crate) fn faulted() -> Cell {
        use super::super::collect::{KernelFault, StreamStats};
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
            lines[6],
            "| gup_test | 0 / 1 / 0 / 2 | no result | 1 / 1 / 0 / 0 |"
        );
        assert_eq!(
            lines[7],
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

        let h = html(&cells);
        assert!(h.contains(
            "<td class=\"fault\">KERNEL FAULT: 1 / 1 / 0 / 0<br><small>75 s</small></td>"
        ));
        assert!(
            h.contains("<td class=\"bad\">1 / 1 / 0 / 0</td>"),
            "the family row"
        );
        let s = &h[h.find("<section id=\"cell-2\">").unwrap()..];
        assert!(s.contains("<h3>Kernel fault</h3>"));
        assert!(
            s.contains("KERNEL FAULT in trial #3 c: <code>kernel BUG at mm/gup_test.c:42!</code>")
        );
        assert!(s.contains("[   52.1] &lt;script&gt;</pre>"));
        assert!(s.contains("Cut short (2 result(s) streamed)"));
        assert!(s.contains("<p class=\"unfinished\">Unfinished: #3 c</p>"));
        assert!(s.contains("<td>b</td><td class=\"outcome\">fail</td>"));

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
        let mut c = faulted();
        c.fault = None;
        c.broken =
            Some("no result within 600 s (the cell's time limit): the guest was stopped".into());
        assert_eq!(c.outcome(), "INCOMPLETE");
        let r = render(&[c.clone()]);
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
        assert_eq!(json(&[c.clone()])["cells"][0]["outcome"], "incomplete");
        assert_eq!(class(&c, None), "bad");
        assert_eq!(class(&c, Some("gup_test")), "bad");
    }

    #[test]
    fn html_shows_a_broken_cells_reason_and_console_tail() {
        let h = html(&cells());
        let s = &h[h.find("<section id=\"cell-1\">").unwrap()..];
        assert!(s.contains("No result: no result within 20 s (the cell&#39;s time limit)"));
        assert!(s.contains(
            "<pre class=\"console\">=== GUEST-START 6.1.0-56-cloud-amd64\nlooping</pre>"
        ));
    }
}
