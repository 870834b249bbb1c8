//! The human-readable report of `cowgup run`: a progress line on a terminal,
//! one line per result otherwise (or with -v), every failure in full, and a
//! summary that groups skip and xfail reasons so nothing skips silently.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use cowgup_harness::guard::RestoreReport;
use cowgup_harness::{Outcome, OutcomeKind, Totals, TrialReport};
use cowgup_tests::session::Session;

pub struct Human {
    verbose: bool,
    progress: bool,
    planned: usize,
    done: usize,
    started: Instant,
    reports: Vec<TrialReport>,
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

impl Human {
    pub fn new(verbose: bool, planned: usize) -> Self {
        Human {
            verbose,
            progress: std::io::stderr().is_terminal() && !verbose,
            planned,
            done: 0,
            started: Instant::now(),
            reports: Vec::new(),
        }
    }

    pub fn header(&self, session: &Session) {
        let c = &session.caps;
        println!(
            "cowgup: kernel {}, {} trial(s) planned; THP sizes {}, hugetlb {}",
            c.kernel_release,
            self.planned,
            c.thp_sizes.len(),
            c.hugetlb
                .iter()
                .map(|p| format!("{} kB ({} free)", p.size / 1024, p.free))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for line in &session.log {
            println!("cowgup: {line}");
        }
    }

    pub fn starting(&self, name: &str) {
        if self.progress {
            let mut line = format!("[{:>4}/{}] {name}", self.done + 1, self.planned);
            line.truncate(118);
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        }
    }

    fn clear_progress(&self) {
        if self.progress {
            eprint!("\r\x1b[2K");
        }
    }

    pub fn finished(&mut self, r: &TrialReport) {
        self.done += 1;
        let notable = !r.outcome.is_success() || self.verbose || !self.progress;
        if notable {
            self.clear_progress();
            let reason = match &r.outcome {
                Outcome::Pass => String::new(),
                o => format!(" -- {}", o.reason()),
            };
            println!(
                "{} {} ({}){reason}",
                label(r.outcome.kind()),
                r.name,
                ms(r.duration)
            );
            if self.verbose || !r.outcome.is_success() {
                for d in &r.diagnostics {
                    println!("        # {d}");
                }
            }
        }
        self.reports.push(r.clone());
    }

    pub fn interrupted(&self) {
        self.clear_progress();
        println!(
            "cowgup: interrupted after {} of {} trial(s)",
            self.done, self.planned
        );
    }

    /// Print the summary; true when every result counts as a success.
    pub fn summary(&self, restored: Option<&RestoreReport>) -> bool {
        self.clear_progress();
        let totals: Totals = self.reports.iter().collect();
        let mut grouped: BTreeMap<(OutcomeKind, &str), usize> = BTreeMap::new();
        for r in &self.reports {
            if matches!(r.outcome.kind(), OutcomeKind::Skip | OutcomeKind::Xfail) {
                *grouped
                    .entry((r.outcome.kind(), r.outcome.reason()))
                    .or_default() += 1;
            }
        }
        if !grouped.is_empty() {
            println!();
        }
        for ((kind, reason), n) in &grouped {
            println!("{} x{n:<4} {reason}", label(*kind));
        }
        println!();
        println!(
            "cowgup: {totals} in {:.2} s ({} trial(s))",
            self.started.elapsed().as_secs_f64(),
            totals.count()
        );
        if let Some(r) = restored {
            if r.changed.is_empty() && r.problems.is_empty() {
                println!("cowgup: host settings: nothing was changed");
            } else if r.is_clean() {
                println!(
                    "cowgup: host settings restored ({} change(s) undone)",
                    r.changed.len()
                );
            }
            for p in &r.problems {
                println!("cowgup: could not restore: {p}");
            }
        }
        let failed: Vec<&TrialReport> = self
            .reports
            .iter()
            .filter(|r| !r.outcome.is_success())
            .collect();
        if !failed.is_empty() {
            println!("cowgup: {} trial(s) did not succeed:", failed.len());
            for r in failed {
                println!("    {} {}", label(r.outcome.kind()), r.name);
            }
        }
        totals.all_succeeded()
    }
}
