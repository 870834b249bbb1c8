//! The HTML page of `--html`: self-contained (its style inline, no script),
//! a heat map (kernels as columns, families as rows, each cell coloured by
//! its worst result) and, per cell, a section with its kernel fault, why it
//! has no result, its topology, what the kernel logged outside trials, its
//! unexpected results and skip reasons.

use std::fmt::Write;

use super::super::collect::Cell;
use super::{all_counts, counts, families, skip_reasons};

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
    head(&mut out, cells);
    heat_map(&mut out, cells);
    for (i, c) in cells.iter().enumerate() {
        section(&mut out, i, c);
    }
    let _ = writeln!(out, "</body>\n</html>");
    out
}

/// The document's head, the title and the verdict with the colours' key.
fn head(out: &mut String, cells: &[Cell]) {
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
}

/// Kernels as columns (each linked to its section), families as rows.
fn heat_map(out: &mut String, cells: &[Cell]) {
    let _ = writeln!(out, "<table id=\"matrix\">\n<thead><tr><th>family</th>");
    for (i, c) in cells.iter().enumerate() {
        let _ = writeln!(
            out,
            "<th><a href=\"#cell-{i}\">{}</a><br><small>{}<br>{}</small></th>",
            esc(&c.label()),
            esc(c.release.as_deref().unwrap_or("?")),
            esc(&c.machine())
        );
    }
    let _ = writeln!(out, "</tr></thead>\n<tbody>");
    for f in &families(cells) {
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
}

/// The `i`th cell's section, which its heat-map column links to.
fn section(out: &mut String, i: usize, c: &Cell) {
    let _ = writeln!(
        out,
        "<section id=\"cell-{i}\">\n<h2>{} <small>{} &middot; {} &middot; {:.0} s</small></h2>",
        esc(&c.label()),
        esc(c.release.as_deref().unwrap_or("release unknown")),
        esc(&c.machine()),
        c.wall.as_secs_f64()
    );
    fault(out, c);
    no_result(out, c);
    topology_setup(out, c);
    if !c.kernel_log.is_empty() {
        let _ = writeln!(
            out,
            "<h3>Kernel logged outside trials ({} lines)</h3>\n<pre class=\"kernel-log\">{}</pre>",
            c.kernel_log.len(),
            esc(&c.kernel_log.join("\n"))
        );
    }
    unexpected(out, c);
    skips(out, c);
    let _ = writeln!(out, "</section>");
}

fn fault(out: &mut String, c: &Cell) {
    let Some(f) = &c.fault else {
        return;
    };
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

/// Why the cell has no result (or was cut short), and its console's tail.
fn no_result(out: &mut String, c: &Cell) {
    let Some(why) = &c.broken else {
        return;
    };
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

fn topology_setup(out: &mut String, c: &Cell) {
    if c.setup.is_empty() {
        return;
    }
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

fn unexpected(out: &mut String, c: &Cell) {
    if c.broken.is_some() && c.trials.is_empty() {
        return;
    }
    let unexpected: Vec<_> = c.trials.iter().filter(|t| t.unexpected()).collect();
    if unexpected.is_empty() {
        let _ = writeln!(out, "<p>Unexpected results: none.</p>");
        return;
    }
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

fn skips(out: &mut String, c: &Cell) {
    let reasons = skip_reasons(c);
    if !reasons.is_empty() {
        let _ = writeln!(out, "<h3>Skipped</h3>\n<ul class=\"skips\">");
        for (why, n) in reasons {
            let _ = writeln!(out, "<li>&times;{n} {}</li>", esc(why));
        }
        let _ = writeln!(out, "</ul>");
    } else if c.broken.is_none() && c.fault.is_none() {
        let _ = writeln!(out, "<p>Everything ran.</p>");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cells, cut_short, faulted, reported, set_up, trial};
    use super::*;

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
        c.push(reported(
            "clean",
            "6.18",
            37,
            vec![
                trial("a", "cow_anon", "pass", None),
                trial("c", "gup_test", "skip", Some("no gup_test")),
            ],
        ));
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
    fn topology_setup_and_kernel_log_outside_trials_are_shown() {
        let mut c = set_up();
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

    #[test]
    fn a_kernel_fault_cell_is_dark_red_and_its_section_quotes_the_fault() {
        let mut cells = cells();
        cells.push(faulted());
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
    }

    #[test]
    fn a_cell_cut_short_is_red() {
        let c = cut_short();
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
