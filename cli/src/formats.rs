//! Machine-readable reports of `cowgup run --format ...`: kselftest TAP,
//! KTAP, JSON (per-trial outcome, reason, duration, evidence, kernel and
//! probe) and JUnit XML (a testsuite per family, for CI viewers).

use std::io::{self, Write};
use std::time::Duration;

use cowgup_harness::guard::RestoreReport;
use cowgup_harness::probe::{Capabilities, Presence};
use cowgup_harness::{Outcome, OutcomeKind, Totals, TrialReport};
use cowgup_tap::write::{Dialect, TapWriter};
use cowgup_tests::session::Session;
use cowgup_tests::{Family, Scenario};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// progress and a summary for people
    Human,
    /// kselftest TAP 13, as tools/testing/selftests/kselftest.h writes it
    Tap,
    /// KTAP version 1 (Documentation/dev-tools/ktap.rst)
    Ktap,
    /// one JSON document: probe, host changes, every trial with its evidence
    Json,
    /// JUnit XML, one testsuite per family
    Junit,
}

/// Everything a report needs, collected as the run goes.
pub struct Record {
    pub caps: Capabilities,
    pub log: Vec<String>,
    pub trials: Vec<(Family, String, TrialReport)>,
}

impl Record {
    pub fn new(session: &Session) -> Self {
        Record {
            caps: session.caps.clone(),
            log: session.log.clone(),
            trials: Vec::new(),
        }
    }

    pub fn add(&mut self, s: &Scenario, r: &TrialReport) {
        self.trials.push((s.family, s.group.clone(), r.clone()));
    }

    fn totals(&self) -> Totals {
        self.trials.iter().map(|(_, _, r)| r).collect()
    }
}

/// TAP and KTAP are written as the run goes (a killed run still leaves a
/// readable prefix); JSON and JUnit at the end.
pub struct Streaming<W: Write> {
    pub tap: TapWriter<W>,
}

impl<W: Write> Streaming<W> {
    pub fn new(out: W, format: Format, planned: usize, session: &Session) -> io::Result<Self> {
        let dialect = if format == Format::Ktap {
            Dialect::Ktap
        } else {
            Dialect::Kselftest
        };
        let mut tap = TapWriter::new(out, dialect);
        tap.header(dialect == Dialect::Kselftest && std::env::var_os("KSFT_TAP_LEVEL").is_some())?;
        tap.diag(&format!(
            "cowgup {} on {}",
            env!("CARGO_PKG_VERSION"),
            session.caps.kernel_release
        ))?;
        for l in &session.log {
            tap.diag(l)?;
        }
        tap.plan(planned)?;
        Ok(Streaming { tap })
    }

    pub fn trial(&mut self, r: &TrialReport) -> io::Result<()> {
        self.tap.diag(&format!("[RUN] {}", r.name))?;
        for d in &r.diagnostics {
            self.tap.diag(d)?;
        }
        if !matches!(r.outcome, Outcome::Pass) {
            self.tap.diag(r.outcome.reason())?;
        }
        self.tap
            .result(r.outcome.kind(), &r.name, r.outcome.reason())
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

pub fn json(rec: &Record, restored: Option<&RestoreReport>) -> String {
    let c = &rec.caps;
    let t = rec.totals();
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
        "host_changes": rec.log,
        "totals": {"pass": t.pass, "fail": t.fail, "xfail": t.xfail, "xpass": t.xpass, "skip": t.skip, "error": t.error},
        "trials": rec.trials.iter().map(|(family, group, r)| json!({
            "name": r.name,
            "family": family.id(),
            "backing": group,
            "outcome": r.outcome.kind().as_str(),
            "reason": r.outcome.reason(),
            "duration_ms": ms(r.duration),
            "evidence": r.diagnostics,
        })).collect::<Vec<_>>(),
        "restore": restored.map(|r| json!({"changed": r.changed, "problems": r.problems})),
    });
    serde_json::to_string_pretty(&doc).expect("JSON values always serialise")
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

pub fn junit(rec: &Record) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let t = rec.totals();
    let total_time: Duration = rec.trials.iter().map(|(_, _, r)| r.duration).sum();
    x.push_str(&format!(
        "<testsuites name=\"cowgup\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        t.count(),
        t.fail + t.xpass,
        t.error,
        t.skip,
        total_time.as_secs_f64()
    ));
    let mut families: Vec<Family> = rec.trials.iter().map(|(f, _, _)| *f).collect();
    families.dedup();
    for fam in families {
        let trials: Vec<&TrialReport> = rec
            .trials
            .iter()
            .filter(|(f, _, _)| *f == fam)
            .map(|(_, _, r)| r)
            .collect();
        let ft: Totals = trials.iter().copied().collect();
        let time: Duration = trials.iter().map(|r| r.duration).sum();
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            xml_escape(fam.name()),
            ft.count(),
            ft.fail + ft.xpass,
            ft.error,
            ft.skip,
            time.as_secs_f64()
        ));
        x.push_str(&format!(
            "    <properties><property name=\"kernel\" value=\"{}\"/></properties>\n",
            xml_escape(&rec.caps.kernel_release)
        ));
        for r in trials {
            x.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"cowgup.{}\" time=\"{:.6}\">\n",
                xml_escape(&r.name),
                fam.id(),
                r.duration.as_secs_f64()
            ));
            let reason = xml_escape(r.outcome.reason());
            let diags = xml_escape(&r.diagnostics.join("\n"));
            match r.outcome.kind() {
                OutcomeKind::Pass => {}
                OutcomeKind::Skip => {
                    x.push_str(&format!("      <skipped message=\"{reason}\"/>\n"))
                }
                OutcomeKind::Fail | OutcomeKind::Xpass => x.push_str(&format!(
                    "      <failure message=\"{reason}\" type=\"{}\">{diags}</failure>\n",
                    r.outcome.kind().as_str()
                )),
                OutcomeKind::Error => x.push_str(&format!(
                    "      <error message=\"{reason}\" type=\"error\">{diags}</error>\n"
                )),
                OutcomeKind::Xfail => {
                    x.push_str(&format!("      <system-out>xfail: {reason}</system-out>\n"))
                }
            }
            if !r.diagnostics.is_empty()
                && matches!(r.outcome.kind(), OutcomeKind::Pass | OutcomeKind::Skip)
            {
                x.push_str(&format!("      <system-out>{diags}</system-out>\n"));
            }
            x.push_str("    </testcase>\n");
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(xml_escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos;?");
    }
}
