//! The human-readable report of `cowgup run`, a consumer of the event stream:
//! a progress line on a terminal, one line per result otherwise (or with -v),
//! every failure in full with its evidence and checks, and a summary that
//! groups skip and xfail reasons, and checks that could not vouch for a
//! trial, so nothing skips or goes unchecked silently.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use crate::stream::{trial_lines, Caveats, Event, Reporter, RunEnd, RunStart};
use cowgup_harness::{Outcome, OutcomeKind};

pub struct Human<W: Write> {
    out: W,
    verbose: bool,
    /// A progress line on stderr instead of a line per success.
    progress: bool,
    planned: usize,
    grouped: BTreeMap<(OutcomeKind, String), usize>,
    caveats: Caveats,
    unsuccessful: Vec<(OutcomeKind, String)>,
}

/// A trial the run never started (the kernel faulted before it).
pub fn is_not_run(o: &Outcome) -> bool {
    matches!(o, Outcome::Error(r) if r.starts_with("not run: "))
}

fn label(kind: OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Pass => "PASS ",
        OutcomeKind::Fail => "FAIL ",
        OutcomeKind::Xfail => "XFAIL",
        OutcomeKind::Xpass => "XPASS",
        OutcomeKind::Skip => "SKIP ",
        OutcomeKind::Error => "ERROR",
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl<W: Write> Human<W> {
    /// `terminal`: `out` is what the user watches, so a progress line may
    /// stand in for successes (when stderr is a terminal and not -v).
    pub fn new(out: W, verbose: bool, terminal: bool) -> Self {
        Human {
            out,
            verbose,
            progress: terminal && std::io::stderr().is_terminal() && !verbose,
            planned: 0,
            grouped: BTreeMap::new(),
            caveats: Caveats::default(),
            unsuccessful: Vec::new(),
        }
    }

    fn header(&mut self, s: &RunStart) -> io::Result<()> {
        let c = &s.caps;
        writeln!(
            self.out,
            "cowgup: kernel {}, {} trial(s) planned; THP sizes {}, hugetlb {}",
            c.kernel_release,
            s.planned,
            c.thp_sizes.len(),
            c.hugetlb
                .iter()
                .map(|p| format!("{} kB ({} free)", p.size / 1024, p.free))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for line in &s.host_changes {
            writeln!(self.out, "cowgup: {line}")?;
        }
        Ok(())
    }

    fn clear_progress(&self) {
        if self.progress {
            eprint!("\r\x1b[2K");
        }
    }

    fn summary(&mut self, end: &RunEnd) -> io::Result<()> {
        self.clear_progress();
        let caveats: Vec<(usize, String)> = self
            .caveats
            .list()
            .map(|c| (c.trials, c.sentence()))
            .collect();
        if !self.grouped.is_empty() || !caveats.is_empty() {
            writeln!(self.out)?;
        }
        for ((kind, reason), n) in &self.grouped {
            writeln!(self.out, "{} x{n:<4} {reason}", label(*kind))?;
        }
        for (n, sentence) in caveats {
            writeln!(self.out, "NOTE  x{n:<4} {sentence}")?;
        }
        writeln!(self.out)?;
        writeln!(
            self.out,
            "cowgup: {} in {:.2} s ({} trial(s))",
            end.totals,
            end.elapsed.as_secs_f64(),
            end.totals.count()
        )?;
        if let Some(r) = &end.restore {
            if r.changed.is_empty() && r.problems.is_empty() {
                writeln!(self.out, "cowgup: host settings: nothing was changed")?;
            } else if r.is_clean() {
                writeln!(
                    self.out,
                    "cowgup: host settings restored and read back ({} change(s) undone)",
                    r.changed.len()
                )?;
            } else {
                writeln!(
                    self.out,
                    "cowgup: host settings NOT all restored: the journal is kept; run `cowgup \
                     restore` once the problems below are resolved"
                )?;
            }
            for p in &r.problems {
                writeln!(self.out, "cowgup: could not restore: {p}")?;
            }
        }
        for line in &end.kernel_log {
            writeln!(self.out, "cowgup: kernel log outside trials: {line}")?;
        }
        if !self.unsuccessful.is_empty() {
            writeln!(
                self.out,
                "cowgup: {} trial(s) did not succeed:",
                self.unsuccessful.len()
            )?;
            for (kind, name) in &self.unsuccessful {
                writeln!(self.out, "    {} {name}", label(*kind))?;
            }
        }
        self.out.flush()
    }
}

impl<W: Write> Reporter for Human<W> {
    fn on(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted(s) => {
                self.planned = s.planned;
                self.header(s)?;
            }
            Event::TrialStarted(t) => {
                if self.progress {
                    let mut line = format!("[{:>4}/{}] {}", t.number, self.planned, t.name);
                    let mut end = line.len().min(118);
                    while !line.is_char_boundary(end) {
                        end -= 1;
                    }
                    line.truncate(end);
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                }
            }
            Event::TrialFinished(t) => {
                let r = &t.report;
                let kind = r.outcome.kind();
                // After a kernel fault every later trial is "not run" for one
                // reason: said once, grouped, not line by line.
                let not_run = is_not_run(&r.outcome);
                if (!r.outcome.is_success() && !not_run) || self.verbose || !self.progress {
                    self.clear_progress();
                    let reason = match &r.outcome {
                        Outcome::Pass => String::new(),
                        o => format!(" -- {}", o.reason()),
                    };
                    writeln!(
                        self.out,
                        "{} {} ({}){reason}",
                        label(kind),
                        t.trial.name,
                        ms(r.duration)
                    )?;
                    if self.verbose || !r.outcome.is_success() {
                        for l in trial_lines(r) {
                            writeln!(self.out, "        # {l}")?;
                        }
                    }
                }
                if matches!(kind, OutcomeKind::Skip | OutcomeKind::Xfail) || not_run {
                    *self
                        .grouped
                        .entry((kind, r.outcome.reason().to_string()))
                        .or_default() += 1;
                }
                if !r.outcome.is_success() && !not_run {
                    self.unsuccessful.push((kind, t.trial.name.clone()));
                }
                self.caveats.add(r);
            }
            Event::Interrupted {
                signal,
                done,
                planned,
            } => {
                self.clear_progress();
                writeln!(
                    self.out,
                    "cowgup: interrupted by {signal} after {done} of {planned} trial(s); restoring host settings"
                )?;
                self.out.flush()?;
            }
            Event::RunFinished(end) => self.summary(end)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::examples::sample_run;

    fn render(verbose: bool) -> String {
        let mut buf = Vec::new();
        let mut h = Human::new(&mut buf, verbose, false);
        for e in &sample_run() {
            h.on(e).unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn kernel_log_lines_outside_trials_end_the_summary() {
        let mut events = sample_run();
        if let Some(Event::RunFinished(end)) = events.last_mut() {
            end.kernel_log = vec![
                "[12.000001] BUG: Bad page state in process x  pfn:1 (logged between trials)"
                    .into(),
            ];
        }
        let mut buf = Vec::new();
        let mut h = Human::new(&mut buf, false, false);
        for e in &events {
            h.on(e).unwrap();
        }
        let out = String::from_utf8(buf).unwrap();
        assert!(
            out.contains(
                "\ncowgup: kernel log outside trials: [12.000001] BUG: Bad page state in \
                 process x  pfn:1 (logged between trials)\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn unverified_checks_are_summarised_once_without_v() {
        let out = render(false);
        assert!(
            out.contains(
                "\nNOTE  x2    pin balance not checked: no nr_foll_pin_acquired in /proc/vmstat\n"
            ),
            "{out}"
        );
        // The failure is shown in full, evidence and checks included; the pass is one line.
        assert!(out.contains("        # evidence sharing: what=\"parent vs child\""));
        assert!(out.contains(
            "        # pin balance: not checked (no nr_foll_pin_acquired in /proc/vmstat)"
        ));
        assert_eq!(out.matches("# evidence refusal").count(), 1, "{out}");
        assert!(out.contains("PASS  Basic COW after fork() ... with swapped-out base page"));
        assert!(out.contains("cowgup: 1 trial(s) did not succeed:"));
    }

    #[test]
    fn v_renders_every_trials_evidence_and_checks() {
        let out = render(true);
        assert_eq!(
            out.matches("# evidence refusal: source=io_uring errno=EFAULT")
                .count(),
            2,
            "{out}"
        );
        assert_eq!(out.matches("# leftover processes: held").count(), 2);
        assert_eq!(out.matches("NOTE ").count(), 1);
    }
}
