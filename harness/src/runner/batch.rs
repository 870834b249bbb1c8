//! Trials run side by side as one batch, a few at a time, under one sample
//! of the watches; a batch whose watches do not hold is run again one trial
//! at a time.

use std::time::{Duration, Instant};

use super::single::{decided, get_ready, run_trial, track, unrun};
use super::waiter::{poll_slice, spawn, ChildWaiter, Ran, Waited};
use super::watch::{earlier_fault, look, watch_fds, Watch, LOOK_EVERY};
use super::{RunOptions, Stop};
use crate::group;
use crate::guard::HostGuard;
use crate::outcome::{CheckResult, CheckStatus, TrialReport};
use crate::trial::Trial;
use crate::verdict::Ended;

/// Run trials side by side as one batch, at most `parallel` at a time (the
/// next starts when one ends): the watches are sampled once, before the
/// first process is forked and after the last one's group is gone, so
/// system-wide counters (pin balance) stay exact. A batch whose
/// watches do not all hold (or cannot tell) is run again one trial at a
/// time, so that a failure names its trial; each such result says so.
///
/// The caller forms batches of trials that may share the host: none is
/// skipped, all need the same host settings (`knobs`), and none competes
/// with another for a resource (a hugetlb pool, a debugfs interface).
pub fn run_batch(
    trials: &[&Trial],
    mut guard: Option<&mut HostGuard>,
    opts: &RunOptions,
    watches: &mut [&mut dyn Watch],
    parallel: usize,
) -> Result<Vec<TrialReport>, Stop> {
    if trials.len() <= 1 {
        return trials
            .iter()
            .map(|t| run_trial(t, guard.as_deref_mut(), opts, watches))
            .collect();
    }
    let start = Instant::now();
    if let Some(outcome) = get_ready(settings_of(trials), guard.as_deref_mut(), watches)? {
        return Ok(trials
            .iter()
            .map(|t| unrun(t, outcome.clone(), start.elapsed()))
            .collect());
    }
    let mut batch = Batch::new(trials.len());
    batch.run(trials, guard.as_deref_mut(), opts, watches, parallel)?;
    let checks: Vec<CheckResult> = watches.iter_mut().map(|w| w.after()).collect();
    let doubtful = doubtful(&checks);
    // After a kernel fault nothing runs again: each member keeps what it saw.
    if !doubtful.is_empty() && batch.fault.is_none() && earlier_fault(watches).is_none() {
        return run_alone(trials, guard, opts, watches, &doubtful);
    }
    Ok(batch.reports(trials, &checks))
}

/// The member whose host settings the batch holds: the first that has any
/// (a member without any runs under them: the caller knows it may).
fn settings_of<'a>(trials: &[&'a Trial]) -> &'a Trial {
    let setter = trials
        .iter()
        .find(|t| !t.knobs.is_empty())
        .unwrap_or(&trials[0]);
    assert!(
        trials
            .iter()
            .all(|t| t.skip.is_none() && (t.knobs.is_empty() || t.knobs == setter.knobs)),
        "a batch holds runnable trials with one set of host settings"
    );
    setter
}

/// The batch's checks that did not hold or cannot tell, as "check: detail".
fn doubtful(checks: &[CheckResult]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| matches!(c.status, CheckStatus::Violated | CheckStatus::Unreliable))
        .map(|c| format!("{}: {}", c.check, c.detail))
        .collect()
}

/// The batch again, one trial at a time, so that a failure names its trial;
/// each result says why it was run alone.
fn run_alone(
    trials: &[&Trial],
    mut guard: Option<&mut HostGuard>,
    opts: &RunOptions,
    watches: &mut [&mut dyn Watch],
    doubtful: &[String],
) -> Result<Vec<TrialReport>, Stop> {
    let why = format!(
        "run again alone: in a batch of {} trials run side by side, {}",
        trials.len(),
        doubtful.join("; ")
    );
    let mut out = Vec::with_capacity(trials.len());
    for t in trials {
        let mut r = run_trial(t, guard.as_deref_mut(), opts, watches)?;
        r.diagnostics.insert(0, why.clone());
        out.push(r);
    }
    Ok(out)
}

/// The members of a batch, by index: running, or ended with what was seen
/// of them and how long they took.
struct Batch {
    running: Vec<Option<(ChildWaiter, Instant)>>,
    done: Vec<Option<(Ran, Duration)>>,
    /// The first member not started yet.
    next: usize,
    /// A kernel fault seen while the batch ran: nothing more is started.
    fault: Option<String>,
}

impl Batch {
    fn new(members: usize) -> Self {
        Batch {
            running: (0..members).map(|_| None).collect(),
            done: (0..members).map(|_| None).collect(),
            next: 0,
            fault: None,
        }
    }

    /// Start members as others end until every one has ended (or the kernel
    /// faulted, and those never started are marked so).
    fn run(
        &mut self,
        trials: &[&Trial],
        mut guard: Option<&mut HostGuard>,
        opts: &RunOptions,
        watches: &mut [&mut dyn Watch],
        parallel: usize,
    ) -> Result<(), Stop> {
        loop {
            self.start_more(trials, guard.as_deref_mut(), opts, parallel);
            // Nothing running means nothing left to start either.
            if self.running.iter().all(Option::is_none) {
                break;
            }
            if let Some(why) = self.wait_some(watches)? {
                self.fault = Some(why);
            }
        }
        self.mark_never_started();
        Ok(())
    }

    /// Fork members until `parallel` are running or none is left.
    fn start_more(
        &mut self,
        trials: &[&Trial],
        mut guard: Option<&mut HostGuard>,
        opts: &RunOptions,
        parallel: usize,
    ) {
        while self.fault.is_none()
            && self.next < trials.len()
            && self.running.iter().flatten().count() < parallel.max(1)
        {
            let at = Instant::now();
            match spawn(trials[self.next], opts) {
                Ok(w) => {
                    track(guard.as_deref_mut(), &w);
                    self.running[self.next] = Some((w, at))
                }
                Err(e) => {
                    let ended = Ended::Other(format!("runner could not run the trial: {e}"));
                    self.done[self.next] = Some((Ran::ended_only(ended), at.elapsed()))
                }
            }
            self.next += 1;
        }
    }

    /// Members never started once the kernel faulted.
    fn mark_never_started(&mut self) {
        let Some(why) = &self.fault else {
            return;
        };
        for d in self.done.iter_mut().skip(self.next) {
            let ended = Ended::NotRun(format!(
                "the kernel faulted in a trial run beside it and is not trusted any more: {why}"
            ));
            *d = Some((Ran::ended_only(ended), Duration::ZERO));
        }
    }

    /// Collect the running members that have ended, each under its own time
    /// limit; if none has, wait (poll) until one of them has something to say
    /// or its time slice is over. A terminating signal kills every member's
    /// group before it is returned; a fault a watch saw meanwhile stops every
    /// running member and is returned.
    fn wait_some(&mut self, watches: &mut [&mut dyn Watch]) -> Result<Option<String>, Stop> {
        if self.collect_ended()? || self.running.iter().all(Option::is_none) {
            return Ok(None);
        }
        self.poll_running(watches);
        let Some(why) = look(watches) else {
            return Ok(None);
        };
        self.stop_for_fault(&why);
        Ok(Some(why))
    }

    /// Whether any running member ended (without blocking).
    fn collect_ended(&mut self) -> Result<bool, Stop> {
        let mut ended = false;
        for i in 0..self.running.len() {
            let Some((w, at)) = &mut self.running[i] else {
                continue;
            };
            let result = match w.step() {
                Ok(None) => continue,
                Ok(Some(Waited::Done(ran))) => (*ran, at.elapsed()),
                Ok(Some(Waited::Interrupted(sig))) => {
                    for (other, _) in self.running.iter_mut().flatten() {
                        group::kill(other.child);
                        other.reap_blocking();
                    }
                    return Err(Stop::Interrupted(sig));
                }
                Err(e) => {
                    group::kill(w.child);
                    w.reap_blocking();
                    let ended = Ended::Other(format!("runner lost the trial: {e}"));
                    (Ran::ended_only(ended), at.elapsed())
                }
            };
            self.done[i] = Some(result);
            self.running[i] = None;
            ended = true;
        }
        Ok(ended)
    }

    /// Sleep in poll() on every running member's descriptors and the
    /// watches', at most the shortest time slice; then read what the members
    /// sent.
    fn poll_running(&mut self, watches: &[&mut dyn Watch]) {
        let live: Vec<&ChildWaiter> = self.running.iter().flatten().map(|(w, _)| w).collect();
        let slice = live
            .iter()
            .map(|w| w.slice())
            .min()
            .unwrap_or_default()
            .min(LOOK_EVERY);
        let mut fds = Vec::new();
        let mut spans = Vec::with_capacity(live.len());
        for w in &live {
            let own = w.poll_fds();
            spans.push((fds.len(), own.len()));
            fds.extend(own);
        }
        fds.extend(watch_fds(watches));
        if poll_slice(&mut fds, slice).is_err() {
            // Nothing to wait on that poll() accepts: step() again shortly.
            std::thread::sleep(Duration::from_millis(1));
        }
        let readable: Vec<bool> = live
            .iter()
            .zip(&spans)
            .map(|(w, &(at, len))| w.socket_readable(&fds[at..at + len]))
            .collect();
        drop(fds);
        for ((w, _), r) in self.running.iter_mut().flatten().zip(readable) {
            w.after_poll(r);
        }
    }

    /// The kernel faulted: stop every running member (see
    /// `ChildWaiter::stop_for_fault`).
    fn stop_for_fault(&mut self, why: &str) {
        for (i, slot) in self.running.iter_mut().enumerate() {
            if let Some((mut w, at)) = slot.take() {
                self.done[i] = Some((*w.stop_for_fault(why.to_string()), at.elapsed()));
            }
        }
    }

    /// One report per member: the batch's checks, said to be over the whole
    /// batch, take part in each member's verdict.
    fn reports(self, trials: &[&Trial], checks: &[CheckResult]) -> Vec<TrialReport> {
        let n = trials.len();
        trials
            .iter()
            .zip(self.done)
            .map(|(t, d)| {
                let (ran, duration) = d.expect("every trial of the batch ended");
                let shared = checks
                    .iter()
                    .map(|c| CheckResult {
                        detail: format!(
                            "{} (over a batch of {n} trials run side by side)",
                            c.detail
                        ),
                        ..c.clone()
                    })
                    .collect();
                decided(t, ran, shared, duration)
            })
            .collect()
    }
}
