//! Trials run side by side as one batch, a few at a time, under one sample
//! of the watches; a batch whose watches do not hold is run again one trial
//! at a time.

use std::time::{Duration, Instant};

use super::single::{establish_knobs, run_trial, track};
use super::waiter::{poll_slice, spawn, ChildWaiter, Ran, Waited};
use super::watch::{earlier_fault, look, watch_fds, Watch, LOOK_EVERY};
use super::{RunOptions, Stop};
use crate::group;
use crate::guard::HostGuard;
use crate::outcome::{CheckResult, CheckStatus, Outcome, TrialReport};
use crate::signals;
use crate::trial::Trial;
use crate::verdict::{self, Ended, Observations};

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
    // The batch's host settings: those of its members that have any (a
    // member without any runs under them: the caller knows it may).
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
    if let Some(sig) = signals::pending() {
        return Err(Stop::Interrupted(sig));
    }
    let unrun = |t: &Trial, outcome: Outcome, start: Instant| TrialReport {
        name: t.name.clone(),
        outcome,
        diagnostics: Vec::new(),
        evidence: Vec::new(),
        checks: Vec::new(),
        duration: start.elapsed(),
    };
    let start = Instant::now();
    let none_run = |outcome: Outcome| -> Vec<TrialReport> {
        trials
            .iter()
            .map(|t| unrun(t, outcome.clone(), start))
            .collect()
    };
    let not_run = |why: String| Outcome::Error(format!("not run: {why}"));
    if let Some(why) = earlier_fault(watches) {
        return Ok(none_run(not_run(why)));
    }
    if let Some(outcome) = establish_knobs(setter, guard.as_deref_mut()) {
        return Ok(none_run(outcome));
    }
    for w in watches.iter_mut() {
        w.before();
    }
    if let Some(why) = earlier_fault(watches) {
        return Ok(none_run(not_run(why)));
    }
    let mut running: Vec<Option<(ChildWaiter, Instant)>> = trials.iter().map(|_| None).collect();
    let mut done: Vec<Option<(Ran, Duration)>> = trials.iter().map(|_| None).collect();
    let mut next = 0;
    let mut fault = None;
    loop {
        while fault.is_none()
            && next < trials.len()
            && running.iter().flatten().count() < parallel.max(1)
        {
            let at = Instant::now();
            match spawn(trials[next], opts) {
                Ok(w) => {
                    track(guard.as_deref_mut(), &w);
                    running[next] = Some((w, at))
                }
                Err(e) => {
                    done[next] = Some((
                        Ran {
                            reported: None,
                            ended: Ended::Other(format!("runner could not run the trial: {e}")),
                            diagnostics: Vec::new(),
                            evidence: Vec::new(),
                            leftovers: None,
                        },
                        at.elapsed(),
                    ))
                }
            }
            next += 1;
        }
        // Nothing running means nothing left to start either.
        if running.iter().all(Option::is_none) {
            break;
        }
        if let Some(why) = wait_some(&mut running, &mut done, watches)? {
            fault = Some(why);
        }
    }
    // Members never started once the kernel faulted.
    if let Some(why) = &fault {
        for d in done.iter_mut().skip(next) {
            *d = Some((
                Ran {
                    reported: None,
                    ended: Ended::NotRun(format!(
                        "the kernel faulted in a trial run beside it and is not trusted any \
                         more: {why}"
                    )),
                    diagnostics: Vec::new(),
                    evidence: Vec::new(),
                    leftovers: None,
                },
                Duration::ZERO,
            ));
        }
    }
    let checks: Vec<CheckResult> = watches.iter_mut().map(|w| w.after()).collect();
    let doubtful: Vec<String> = checks
        .iter()
        .filter(|c| matches!(c.status, CheckStatus::Violated | CheckStatus::Unreliable))
        .map(|c| format!("{}: {}", c.check, c.detail))
        .collect();
    // After a kernel fault nothing runs again: each member keeps what it saw.
    if !doubtful.is_empty() && fault.is_none() && earlier_fault(watches).is_none() {
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
        return Ok(out);
    }
    let n = trials.len();
    Ok(trials
        .iter()
        .zip(done)
        .map(|(t, d)| {
            let (mut ran, duration) = d.expect("every trial of the batch ended");
            let mut own: Vec<CheckResult> = ran.leftovers.take().into_iter().collect();
            own.extend(checks.iter().map(|c| CheckResult {
                detail: format!("{} (over a batch of {n} trials run side by side)", c.detail),
                ..c.clone()
            }));
            let observations = Observations {
                reported: ran.reported,
                ended: ran.ended,
                checks: own,
            };
            let verdict = verdict::decide(&observations);
            ran.diagnostics.extend(verdict.notes);
            TrialReport {
                name: t.name.clone(),
                outcome: verdict.outcome,
                diagnostics: ran.diagnostics,
                evidence: ran.evidence,
                checks: observations.checks,
                duration,
            }
        })
        .collect())
}

/// Collect the running trials that have ended, each under its own time
/// limit; if none has, wait (poll) until one of them has something to say or
/// its time slice is over. A terminating signal kills every trial's group
/// before it is returned.
fn wait_some(
    running: &mut [Option<(ChildWaiter, Instant)>],
    done: &mut [Option<(Ran, Duration)>],
    watches: &mut [&mut dyn Watch],
) -> Result<Option<String>, Stop> {
    let fail = |e: std::io::Error| Ran {
        reported: None,
        ended: Ended::Other(format!("runner lost the trial: {e}")),
        diagnostics: Vec::new(),
        evidence: Vec::new(),
        leftovers: None,
    };
    let mut ended = false;
    for i in 0..running.len() {
        let Some((w, at)) = &mut running[i] else {
            continue;
        };
        let result = match w.step() {
            Ok(None) => continue,
            Ok(Some(Waited::Done(ran))) => (*ran, at.elapsed()),
            Ok(Some(Waited::Interrupted(sig))) => {
                for (other, _) in running.iter_mut().flatten() {
                    group::kill(other.child);
                    other.reap_blocking();
                }
                return Err(Stop::Interrupted(sig));
            }
            Err(e) => {
                group::kill(w.child);
                w.reap_blocking();
                (fail(e), at.elapsed())
            }
        };
        done[i] = Some(result);
        running[i] = None;
        ended = true;
    }
    let live: Vec<&ChildWaiter> = running.iter().flatten().map(|(w, _)| w).collect();
    if ended || live.is_empty() {
        return Ok(None);
    }
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
    for ((w, _), r) in running.iter_mut().flatten().zip(readable) {
        w.after_poll(r);
    }
    let Some(why) = look(watches) else {
        return Ok(None);
    };
    for (i, slot) in running.iter_mut().enumerate() {
        if let Some((mut w, at)) = slot.take() {
            done[i] = Some((*w.stop_for_fault(why.clone()), at.elapsed()));
        }
    }
    Ok(Some(why))
}
