//! The TAP / KTAP consumer of the event stream: what the drop-in programs
//! print and what `cowgup run --format tap|ktap` writes. Written as the run
//! goes, so a killed run still leaves a readable prefix.
//!
//! Per trial, as kselftest programs do: `# [RUN] <name>`, then its
//! diagnostics, evidence and checks as `# ` lines, the reason of anything but
//! a pass, and the result line. Diagnostic lines come before the result they
//! belong to, where kselftest and KTAP parsers attribute them.

use std::io::{self, Write};

use cowgup_tests::Family;

use crate::stream::{trial_lines, Event, Reporter};
use crate::write::{Dialect, TapWriter};

pub struct TapReporter<W: Write> {
    w: TapWriter<W>,
    /// KSFT_TAP_LEVEL set: an outer runner already printed the version line.
    nested: bool,
    preamble: Vec<String>,
    section: fn(Family) -> Option<&'static str>,
    family: Option<Family>,
    started: bool,
}

impl<W: Write> TapReporter<W> {
    pub fn new(out: W, dialect: Dialect) -> Self {
        TapReporter {
            w: TapWriter::new(out, dialect),
            nested: std::env::var_os("KSFT_TAP_LEVEL").is_some(),
            preamble: Vec::new(),
            section: |_| None,
            family: None,
            started: false,
        }
    }

    /// Diagnostic lines printed before the plan (cow.c's `[INFO] detected ...`).
    pub fn with_preamble(mut self, lines: Vec<String>) -> Self {
        self.preamble = lines;
        self
    }

    /// A line printed when a family's trials start (cow.c's section headings).
    pub fn with_sections(mut self, section: fn(Family) -> Option<&'static str>) -> Self {
        self.section = section;
        self
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            self.w.header(self.nested)?;
            for l in &self.preamble {
                self.w.diag(l)?;
            }
        }
        Ok(())
    }

    /// Refuse to run, the kselftest way (`Bail out!`; the exit code is KSFT_FAIL).
    pub fn bail_out(&mut self, msg: &str) -> io::Result<()> {
        self.start()?;
        self.w.bail_out(msg)?;
        self.w.finish()
    }

    /// The exit code `ksft_finished()` would give for what was written.
    pub fn exit_code(&self) -> i32 {
        self.w.exit_code()
    }
}

impl<W: Write> Reporter for TapReporter<W> {
    fn on(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted(s) => {
                self.start()?;
                self.w.plan(s.planned)?;
                for l in &s.host_changes {
                    self.w.diag(&format!("[INFO] cowgup: {l}"))?;
                }
            }
            Event::TrialStarted(t) => {
                if self.family != Some(t.family) {
                    self.family = Some(t.family);
                    if let Some(line) = (self.section)(t.family) {
                        self.w.diag(line)?;
                    }
                }
                self.w.diag(&format!("[RUN] {}", t.name))?;
            }
            Event::TrialFinished(t) => {
                let r = &t.report;
                for l in trial_lines(r) {
                    self.w.diag(&l)?;
                }
                if r.outcome.kind() != cowgup_harness::OutcomeKind::Pass {
                    self.w.diag(r.outcome.reason())?;
                }
                self.w
                    .result(r.outcome.kind(), &t.trial.name, r.outcome.reason())?;
            }
            Event::Interrupted {
                signal,
                done,
                planned,
            } => {
                self.w.diag(&format!(
                    "interrupted by {signal} after {done} of {planned} trial(s); restoring host settings"
                ))?;
            }
            Event::RunFinished(end) => {
                for line in &end.kernel_log {
                    self.w
                        .diag(&format!("cowgup: kernel log outside trials: {line}"))?;
                }
                for p in end.restore.iter().flat_map(|r| &r.problems) {
                    self.w.diag(&format!("cowgup: could not restore: {p}"))?;
                }
                self.w.finish()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::examples::sample_run;

    #[test]
    fn evidence_and_checks_are_diagnostics_of_their_trial_and_parse_strictly() {
        for dialect in [Dialect::Kselftest, Dialect::Ktap] {
            let mut buf = Vec::new();
            let mut tap = TapReporter::new(&mut buf, dialect)
                .with_sections(|_| Some("[INFO] Anonymous memory tests in private mappings"));
            tap.nested = false;
            for e in &sample_run() {
                tap.on(e).unwrap();
            }
            assert_eq!(tap.exit_code(), crate::KSFT_FAIL);
            let text = String::from_utf8(buf).unwrap();
            let p = crate::parse(&text).unwrap_or_else(|e| panic!("{dialect:?}: {e:?}\n{text}"));
            assert_eq!(p.results.len(), 2);
            let lines: Vec<&str> = text.lines().collect();
            let run = lines
                .iter()
                .position(|l| l.starts_with("# [RUN] Basic COW after fork() ... with base page"))
                .expect("[RUN] line");
            let result = lines
                .iter()
                .position(|l| l.starts_with("not ok 1"))
                .unwrap();
            let block = &lines[run..result];
            for want in [
                "# evidence sharing: what=\"parent vs child\"",
                "# evidence refusal: source=io_uring errno=EFAULT",
                "# pin balance: not checked (no nr_foll_pin_acquired in /proc/vmstat)",
                "# parent's data leaked into the child",
            ] {
                assert!(
                    block.iter().any(|l| l.starts_with(want)),
                    "{dialect:?}: {want:?} not between [RUN] and the result:\n{text}"
                );
            }
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.contains("Anonymous memory tests"))
                    .count(),
                1,
                "one section line per family"
            );
        }
    }
}
