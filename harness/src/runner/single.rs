//! One trial, run on its own: get the host and the watches ready, fork the
//! trial process, wait for it, and decide its outcome from what was seen.

use std::time::{Duration, Instant};

use super::waiter::{spawn, ChildWaiter, Ran, Waited};
use super::watch::{earlier_fault, Watch};
use super::{RunOptions, Stop};
use crate::guard::{read_knob, HostGuard};
use crate::outcome::{CheckResult, Outcome, TrialReport};
use crate::signals;
use crate::trial::Trial;
use crate::verdict::{self, Ended, Observations};

/// Run one trial. Never panics on behalf of the trial: a crash, a hang or a
/// panic inside it becomes that trial's outcome. `watches` are sampled around
/// the trial process and become checks that take part in the verdict.
pub fn run_trial(
    trial: &Trial,
    mut guard: Option<&mut HostGuard>,
    opts: &RunOptions,
    watches: &mut [&mut dyn Watch],
) -> Result<TrialReport, Stop> {
    let start = Instant::now();
    if let Some(outcome) = get_ready(trial, guard.as_deref_mut(), watches)? {
        return Ok(unrun(trial, outcome, start.elapsed()));
    }
    let spawned = spawn(trial, opts).inspect(|w| track(guard, w));
    let mut ran = match spawned.and_then(|mut w| w.wait(watches)) {
        Ok(Waited::Done(ran)) => *ran,
        Ok(Waited::Interrupted(sig)) => return Err(Stop::Interrupted(sig)),
        Err(e) => {
            let outcome = Outcome::Error(format!("runner could not run the trial: {e}"));
            return Ok(unrun(trial, outcome, start.elapsed()));
        }
    };
    let checks = watches.iter_mut().map(|w| w.after()).collect();
    blame_late_fault(&mut ran, watches);
    Ok(decided(trial, ran, checks, start.elapsed()))
}

/// Everything before a trial (or a batch, through the trial whose settings
/// it holds) is forked: a pending signal stops the run; otherwise Some is the
/// outcome of a trial that is not run, None means go on, with the host
/// settings held and the watches sampled.
pub(super) fn get_ready(
    trial: &Trial,
    guard: Option<&mut HostGuard>,
    watches: &mut [&mut dyn Watch],
) -> Result<Option<Outcome>, Stop> {
    let not_run = |why: String| Outcome::Error(format!("not run: {why}"));
    if let Some(sig) = signals::pending() {
        return Err(Stop::Interrupted(sig));
    }
    if let Some(why) = earlier_fault(watches) {
        return Ok(Some(not_run(why)));
    }
    // Not run at all: nothing was observed, so there is nothing to decide.
    if let Some(reason) = &trial.skip {
        return Ok(Some(Outcome::Skip(reason.clone())));
    }
    if let Some(outcome) = establish_knobs(trial, guard) {
        return Ok(Some(outcome));
    }
    for w in watches.iter_mut() {
        w.before();
    }
    // A fault logged since the last trial (read by `before`) is no fault of this one.
    Ok(earlier_fault(watches).map(not_run))
}

/// A fault the checks found after the trial ended (its process died of the
/// Oops before the log was looked at) is this trial's too.
fn blame_late_fault(ran: &mut Ran, watches: &[&mut dyn Watch]) {
    if matches!(ran.ended, Ended::KernelFault(_)) {
        return;
    }
    if let Some(why) = watches.iter().find_map(|w| w.fault()) {
        ran.diagnostics
            .push(format!("the trial process ended: {:?}", ran.ended));
        ran.ended = Ended::KernelFault(why);
    }
}

/// The report of a trial that was not forked: nothing was observed.
pub(super) fn unrun(trial: &Trial, outcome: Outcome, duration: Duration) -> TrialReport {
    TrialReport {
        name: trial.name.clone(),
        outcome,
        diagnostics: Vec::new(),
        evidence: Vec::new(),
        checks: Vec::new(),
        duration,
    }
}

/// The report of a trial that ran: its leftovers and the watches' checks
/// go to the verdict with what it reported and how it ended.
pub(super) fn decided(
    trial: &Trial,
    mut ran: Ran,
    watch_checks: Vec<CheckResult>,
    duration: Duration,
) -> TrialReport {
    let mut checks: Vec<CheckResult> = ran.leftovers.take().into_iter().collect();
    checks.extend(watch_checks);
    let observations = Observations {
        reported: ran.reported,
        ended: ran.ended,
        checks,
    };
    let verdict = verdict::decide(&observations);
    ran.diagnostics.extend(verdict.notes);
    TrialReport {
        name: trial.name.clone(),
        outcome: verdict.outcome,
        diagnostics: ran.diagnostics,
        evidence: ran.evidence,
        checks: observations.checks,
        duration,
    }
}

fn establish_knobs(trial: &Trial, guard: Option<&mut HostGuard>) -> Option<Outcome> {
    match guard {
        Some(g) => g
            .hold(&trial.knobs)
            .err()
            .map(|e| Outcome::Error(format!("could not apply host settings: {e}"))),
        None => trial.knobs.iter().find(|k| !k.holds()).map(|k| {
            let now = read_knob(&k.path).unwrap_or_else(|e| format!("unreadable: {e}"));
            Outcome::Skip(format!(
                "needs {} = {} (host has {now}) and changing host settings is off \
                 (not root, or --no-provision)",
                k.path.display(),
                k.value
            ))
        }),
    }
}

/// Journal the trial's process group, so that a restore stops what is left
/// of it first, even after the runner was killed.
pub(super) fn track(guard: Option<&mut HostGuard>, w: &ChildWaiter) {
    if let Some(g) = guard {
        g.track_group(w.child.as_raw());
    }
}
