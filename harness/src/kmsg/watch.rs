//! The kernel-log watch of a session (`KernelLog`): one descriptor kept open
//! for all its trials, so that what is logged between trials is read too.
//! - the first `before` opens the log at the next record to be logged, so
//!   older lines are never judged;
//! - every `before` reads what was logged since the previous trial: error
//!   lines there belong to no trial and are kept for `between_trials`;
//! - `during` reads while trials run, and reports a `Fault` (a fault the
//!   kernel may not get over, or its taint flag) at once;
//! - `after` (run after the trial's processes are gone and the other watches
//!   are done) reads what was logged during the trial and judges it.

use std::os::fd::RawFd;

use serde::Serialize;

use super::check::judge;
use super::classify::{describe_taints, error_taints, is_fatal, FATAL_TAINTS};
use super::log::{open, read_taint, scan, Scan, Source};
use super::QUOTED;
use crate::outcome::CheckResult;
use crate::runner::Watch;

/// A kernel fault: why the run stops trusting the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// The lines of fault shapes, as logged (at most MAX_FINDINGS).
    pub lines: Vec<String>,
    /// The taint flags of a fault that appeared, if any.
    pub taint: Option<String>,
}

impl Fault {
    fn of(scan: &Scan, new_taint: u64) -> Option<Fault> {
        let lines: Vec<String> = scan
            .findings
            .iter()
            .filter(|f| is_fatal(f))
            .map(|f| f.to_string())
            .collect();
        let taint = new_taint & FATAL_TAINTS;
        (!lines.is_empty() || taint != 0).then(|| Fault {
            lines,
            taint: (taint != 0).then(|| describe_taints(taint)),
        })
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.lines.iter().take(QUOTED).cloned().collect();
        if self.lines.len() > QUOTED {
            parts.push(format!("and {} more", self.lines.len() - QUOTED));
        }
        if let Some(t) = &self.taint {
            parts.push(format!("tainted {t}"));
        }
        write!(f, "{}", parts.join(" | "))
    }
}

/// The kernel-log watch of a session: one descriptor for all its trials, so
/// that what is logged between trials is read too (see `between_trials`).
pub struct KernelLog {
    opener: Box<Opener>,
    taint: Box<TaintReader>,
    /// None before the first `before`; Err once opening failed.
    source: Option<Result<Box<dyn Source>, String>>,
    next_seq: Option<u64>,
    taint_before: Option<u64>,
    /// The taint when the last trial ended (for changes between trials).
    taint_last: Option<u64>,
    between: Vec<String>,
    /// What was read while the current trial (or batch) ran.
    during: Scan,
    /// The first kernel fault seen: from then on the kernel is not trusted.
    fault: Option<Fault>,
    /// When `during` last read the taint flags.
    taint_looked: Option<std::time::Instant>,
}

type Opener = dyn FnMut() -> Result<Box<dyn Source>, String> + Send;
type TaintReader = dyn FnMut() -> Option<u64> + Send;

impl Default for KernelLog {
    fn default() -> Self {
        KernelLog {
            opener: Box::new(open),
            taint: Box::new(read_taint),
            source: None,
            next_seq: None,
            taint_before: None,
            taint_last: None,
            between: Vec::new(),
            during: Scan::default(),
            fault: None,
            taint_looked: None,
        }
    }
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog")
            .field("next_seq", &self.next_seq)
            .field("between", &self.between)
            .finish_non_exhaustive()
    }
}

impl KernelLog {
    pub fn new() -> Self {
        KernelLog::default()
    }

    /// Read records from `opener` and the taint from `taint` instead of the
    /// host's (tests).
    pub fn with_sources(
        mut self,
        opener: impl FnMut() -> Result<Box<dyn Source>, String> + Send + 'static,
        taint: impl FnMut() -> Option<u64> + Send + 'static,
    ) -> Self {
        self.opener = Box::new(opener);
        self.taint = Box::new(taint);
        self
    }

    /// Read what is pending outside any trial; keep the error lines.
    fn read_between(&mut self) {
        let Some(Ok(src)) = self.source.as_mut() else {
            return;
        };
        let s = scan(src.as_mut(), &mut self.next_seq);
        self.between.extend(
            s.findings
                .iter()
                .map(|f| format!("{f} (logged between trials)")),
        );
        if s.more_findings > 0 {
            self.between.push(format!(
                "and {} more error lines between trials",
                s.more_findings
            ));
        }
        if s.overwritten || s.lost > 0 {
            self.between.push(
                "kernel log records logged between trials were overwritten before they \
                 could be read"
                    .into(),
            );
        }
        let now = (self.taint)();
        self.note_fault(&s, now);
        if let (Some(last), Some(now)) = (self.taint_last, now) {
            let new = now & !last & error_taints();
            if new != 0 {
                self.between.push(format!(
                    "the kernel became tainted between trials: {}",
                    describe_taints(new)
                ));
            }
        }
        self.taint_last = now;
    }

    /// The first kernel fault seen in or between trials, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    fn note_fault(&mut self, scan: &Scan, taint_now: Option<u64>) {
        if self.fault.is_some() {
            return;
        }
        let new_taint = match (self.taint_before.or(self.taint_last), taint_now) {
            (Some(b), Some(a)) => a & !b,
            _ => 0,
        };
        self.fault = Fault::of(scan, new_taint);
    }

    /// Error lines (and error taint flags) the kernel logged outside any
    /// trial since the first one started, each once: reading them takes
    /// them. Reads what is pending first, so at the end of a run it covers
    /// the time since the last trial.
    pub fn between_trials(&mut self) -> Vec<String> {
        self.read_between();
        std::mem::take(&mut self.between)
    }
}

impl Watch for KernelLog {
    fn before(&mut self) {
        if self.source.is_none() {
            self.source = Some((self.opener)());
            self.taint_last = (self.taint)();
        }
        self.read_between();
        self.taint_before = self.taint_last;
        self.during = Scan::default();
    }

    fn wake_fd(&self) -> Option<RawFd> {
        match &self.source {
            Some(Ok(src)) => src.fd(),
            _ => None,
        }
    }

    /// Read what was logged so far while the trial runs: an Oops, BUG,
    /// #GP, RCU stall or a fault's taint flag is reported at once.
    fn during(&mut self) -> Option<String> {
        if self.fault.is_none() {
            let mut read = 0;
            if let Some(Ok(src)) = self.source.as_mut() {
                let now = scan(src.as_mut(), &mut self.next_seq);
                read = now.records;
                self.during.merge(now);
            }
            // The runner asks on every wake-up (each record a trial sends):
            // the taint flags are read when the log moved, or twice a second.
            let due = self
                .taint_looked
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(500));
            if read > 0 || due {
                self.taint_looked = Some(std::time::Instant::now());
                let taint_now = (self.taint)();
                let during = std::mem::take(&mut self.during);
                self.note_fault(&during, taint_now);
                self.during = during;
            }
        }
        self.fault.as_ref().map(|f| f.to_string())
    }

    fn fault(&self) -> Option<String> {
        self.fault.as_ref().map(|f| f.to_string())
    }

    fn after(&mut self) -> CheckResult {
        let taint_after = (self.taint)();
        let scanned = match self.source.as_mut() {
            Some(Ok(src)) => {
                let mut all = std::mem::take(&mut self.during);
                all.merge(scan(src.as_mut(), &mut self.next_seq));
                Ok(all)
            }
            Some(Err(why)) => Err(why.clone()),
            None => Err("the watch was not started".to_string()),
        };
        if let Ok(s) = &scanned {
            self.note_fault(s, taint_after);
        } else {
            self.note_fault(&Scan::default(), taint_after);
        }
        self.taint_last = taint_after;
        judge(
            scanned.as_ref().map_err(String::as_str),
            self.taint_before.take(),
            taint_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_log::{Fake, WARN};
    use super::*;
    use crate::outcome::CheckStatus;
    use std::sync::{Arc, Mutex};

    #[test]
    fn through_the_watch_with_lines_between_trials() {
        let log = Fake::default();
        let taint = Arc::new(Mutex::new(0u64));
        let (l, t) = (log.clone(), taint.clone());
        let mut w = KernelLog::new().with_sources(
            move || Ok(Box::new(l.clone()) as Box<dyn Source>),
            move || Some(*t.lock().unwrap()),
        );
        // A quiet trial.
        w.before();
        log.log("6,1,1,-;zram0: detected capacity change\n");
        let c = w.after();
        assert_eq!(c.status, CheckStatus::Held, "{c:?}");
        // Between trials: a bad page and its taint; not this trial's.
        log.log("1,2,2,-;BUG: Bad page state in process kswapd0  pfn:12345\n");
        *taint.lock().unwrap() = 1 << 5;
        w.before();
        log.log("6,3,3,-;swap on\n");
        let c = w.after();
        assert_eq!(c.status, CheckStatus::Held, "{c:?}");
        // A warning during the next trial fails it.
        w.before();
        log.log(&WARN.replace("1234", "4"));
        *taint.lock().unwrap() |= 1 << 9;
        let c = w.after();
        assert_eq!(c.status, CheckStatus::Violated, "{c:?}");
        assert!(c.detail.contains("mm/gup.c:123"));
        assert!(c.detail.contains("W (warning)") && !c.detail.contains("bad page"));
        // After the last trial.
        log.log("4,5,5,-;rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n");
        assert_eq!(
            w.between_trials(),
            vec![
                "[0.000002] BUG: Bad page state in process kswapd0  pfn:12345 (logged between trials)",
                "the kernel became tainted between trials: B (bad page)",
                "[0.000005] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks: (logged between trials)",
            ]
        );
        assert!(w.between_trials().is_empty());
    }

    #[test]
    fn a_log_that_cannot_be_opened_is_not_checked() {
        let mut w = KernelLog::new().with_sources(|| Err("no /dev/kmsg".into()), || Some(0));
        w.before();
        let c = w.after();
        assert_eq!(c.status, CheckStatus::NotChecked);
        assert!(c.detail.starts_with("kernel log not checked: no /dev/kmsg"));
        assert!(w.between_trials().is_empty());
    }
}
