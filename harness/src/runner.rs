//! One trial, one process. The runner forks rather than re-executing itself:
//! a trial is a closure over plain values (a case, a backing) that the child
//! already holds after fork, so nothing has to be serialised, and a fork costs
//! a fraction of an exec (which matters when a plan holds hundreds of trials).
//! fork() is only sound from a single-threaded process, which the front ends
//! guarantee (libtest-mimic with one test thread runs on the main thread).
//!
//! The child reports over a `SOCK_SEQPACKET` Unix socket, one JSON `Record`
//! per message, as it goes: diagnostics and evidence first, the outcome last.
//! A child that crashes or hangs therefore still leaves its diagnostics
//! behind, and costs exactly one result.
//!
//! Processes the trial forks inherit the socket, so their diagnostics arrive
//! too; but the runner's end has SO_PASSCRED, so every message carries its
//! sender's pid as the kernel saw it (SCM_CREDENTIALS), and only the trial
//! process itself can report an outcome. A child that returns from a function
//! and falls through into the trial's end cannot turn a crash into a pass.
//! (A root process could forge its credentials; this guards against
//! accidents in the scenarios, not against a hostile trial.)
//!
//! After the trial process is reaped, whatever is still alive in its process
//! group is reported as left behind and stopped, and whatever is exiting is
//! waited for (bounded); then the `Watch`es (pin balance, ...) are judged, and `verdict::decide` forms the outcome from all
//! of it. See verdict.rs for the rules.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, send, setsockopt, socketpair, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixCredentials,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setpgid, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::group;
use crate::guard::{read_knob, HostGuard};
use crate::outcome::{CheckResult, CheckStatus, Evidence, Outcome, OutcomeKind, TrialReport};
use crate::signals;
use crate::trial::Trial;
use crate::verdict::{self, Ended, Observations};

#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(60),
        }
    }
}

/// Why a run stopped before its plan was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupted(Signal),
}

/// A check made around each trial: sampled just before the trial process is
/// forked, judged once the trial's process group is gone (the session's pin
/// balance and its kernel log). Both run only for trials that are forked.
pub trait Watch {
    fn before(&mut self);
    fn after(&mut self) -> CheckResult;
    /// A descriptor that poll() reports readable when `during` has
    /// something to look at while trials run.
    fn wake_fd(&self) -> Option<RawFd> {
        None
    }
    /// Look while trials run (when `wake_fd` is readable, and at least every
    /// `LOOK_EVERY`). Some(why): the kernel cannot be trusted any more; the
    /// running trials are stopped at once and no other trial runs.
    fn during(&mut self) -> Option<String> {
        None
    }
    /// The fault `during` or `after` saw, if any: sticky for the session.
    fn fault(&self) -> Option<String> {
        None
    }
}

/// One message from a trial's processes to the runner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Diag(String),
    Evidence(Evidence),
    Outcome { kind: OutcomeKind, reason: String },
}

/// Largest record sent; longer diagnostics and reasons are cut, larger
/// evidence is replaced by a diagnostic saying so. Well under the socket's
/// send buffer (net.core.wmem_default, 208 KiB by default).
pub const MAX_RECORD: usize = 64 << 10;
/// What the runner reads per message: more than MAX_RECORD, so a record cut
/// by the kernel (MSG_TRUNC) can only come from a sender not using `emit`.
const RECV_BUF: usize = 2 * MAX_RECORD;
/// How long processes left in the trial's group get to end by themselves
/// before they count as left behind (a child told to exit a moment ago).
const LEAK_GRACE: Duration = Duration::from_millis(50);
/// How long leftovers get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(100);
/// After a kernel fault: how long the trial's processes get to die of
/// SIGKILL, and to be reaped. One stuck in the kernel (spinning on a lock
/// the dead task held) never will; it is named and left.
const FAULT_GRACE: Duration = Duration::from_secs(1);
/// How often the watches look while trials run, at least (they are also
/// woken by their descriptor).
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How long processes of the trial that are exiting get to finish (free
/// their memory, drop their pins) before the checks and the next trial.
const EXIT_LIMIT: Duration = Duration::from_secs(5);

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Print a diagnostic for the current trial. Inside a trial process (or a
/// process it forked) it goes to the runner, and from there to every report;
/// elsewhere to stderr.
pub fn diag(msg: impl std::fmt::Display) {
    let text = msg.to_string();
    if !emit(&Record::Diag(text.clone())) {
        for line in text.lines() {
            eprintln!("# {line}");
        }
    }
}

/// Send a typed observation for the current trial (see `Evidence`). Outside
/// a trial process it is printed to stderr as JSON.
pub fn evidence(kind: &str, data: impl serde::Serialize) {
    let data =
        serde_json::to_value(data).unwrap_or_else(|e| serde_json::Value::String(e.to_string()));
    let record = Evidence {
        kind: kind.to_string(),
        data,
    };
    let json = serde_json::to_string(&record).expect("evidence serialises");
    if !emit(&Record::Evidence(record)) {
        eprintln!("# evidence {json}");
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... cut: {} bytes in all]", &text[..end], text.len())
}

/// The record as it goes on the wire, within MAX_RECORD.
fn encode(record: &Record) -> Vec<u8> {
    let bytes = serde_json::to_vec(record).expect("records serialise");
    if bytes.len() <= MAX_RECORD {
        return bytes;
    }
    // JSON escaping can grow text up to 6x; leave room for it.
    let room = MAX_RECORD / 8;
    let smaller = match record {
        Record::Diag(t) => Record::Diag(cut(t, room)),
        Record::Outcome { kind, reason } => Record::Outcome {
            kind: *kind,
            reason: cut(reason, room),
        },
        Record::Evidence(e) => Record::Diag(format!(
            "evidence {:?} dropped: {} bytes is over the {MAX_RECORD}-byte record limit",
            cut(&e.kind, 100),
            bytes.len()
        )),
    };
    serde_json::to_vec(&smaller).expect("records serialise")
}

/// Send a raw record to the runner as the current process (tests of the
/// runner use it to report and then misbehave). Trials report by returning
/// their outcome; an outcome sent from any process but the trial process is
/// ignored. False outside a trial.
#[doc(hidden)]
pub fn send_record(record: &Record) -> bool {
    emit(record)
}

/// Send a record to the runner; false outside a trial process.
fn emit(record: &Record) -> bool {
    let fd = REPORT_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return false;
    }
    let bytes = encode(record);
    loop {
        // MSG_NOSIGNAL: a runner that is gone must not kill us with SIGPIPE.
        match send(fd, &bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            _ => return true,
        }
    }
}

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
    let unrun = |outcome| TrialReport {
        name: trial.name.clone(),
        outcome,
        diagnostics: Vec::new(),
        evidence: Vec::new(),
        checks: Vec::new(),
        duration: start.elapsed(),
    };
    if let Some(sig) = signals::pending() {
        return Err(Stop::Interrupted(sig));
    }
    if let Some(why) = earlier_fault(watches) {
        return Ok(unrun(Outcome::Error(format!("not run: {why}"))));
    }
    // Not run at all: nothing was observed, so there is nothing to decide.
    if let Some(reason) = &trial.skip {
        return Ok(unrun(Outcome::Skip(reason.clone())));
    }
    if let Some(outcome) = establish_knobs(trial, guard.as_deref_mut()) {
        return Ok(unrun(outcome));
    }
    for w in watches.iter_mut() {
        w.before();
    }
    // A fault logged since the last trial (read by `before`) is no fault of this one.
    if let Some(why) = earlier_fault(watches) {
        return Ok(unrun(Outcome::Error(format!("not run: {why}"))));
    }
    let spawned = spawn(trial, opts).inspect(|w| track(guard, w));
    let mut ran = match spawned.and_then(|mut w| w.wait(watches)) {
        Ok(Waited::Done(ran)) => *ran,
        Ok(Waited::Interrupted(sig)) => return Err(Stop::Interrupted(sig)),
        Err(e) => {
            return Ok(unrun(Outcome::Error(format!(
                "runner could not run the trial: {e}"
            ))))
        }
    };
    let mut checks: Vec<CheckResult> = ran.leftovers.take().into_iter().collect();
    checks.extend(watches.iter_mut().map(|w| w.after()));
    // A fault the checks found after the trial ended (its process died of
    // the Oops before the log was looked at) is this trial's too.
    if !matches!(ran.ended, Ended::KernelFault(_)) {
        if let Some(why) = watches.iter().find_map(|w| w.fault()) {
            ran.diagnostics
                .push(format!("the trial process ended: {:?}", ran.ended));
            ran.ended = Ended::KernelFault(why);
        }
    }
    let observations = Observations {
        reported: ran.reported,
        ended: ran.ended,
        checks,
    };
    let verdict = verdict::decide(&observations);
    ran.diagnostics.extend(verdict.notes);
    Ok(TrialReport {
        name: trial.name.clone(),
        outcome: verdict.outcome,
        diagnostics: ran.diagnostics,
        evidence: ran.evidence,
        checks: observations.checks,
        duration: start.elapsed(),
    })
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

/// What the runner saw of one trial process.
struct Ran {
    reported: Option<Outcome>,
    ended: Ended,
    diagnostics: Vec<String>,
    evidence: Vec<Evidence>,
    leftovers: Option<CheckResult>,
}

enum Waited {
    Done(Box<Ran>),
    Interrupted(Signal),
}

/// Why no trial may run any more: a watch saw the kernel fault.
fn earlier_fault(watches: &[&mut dyn Watch]) -> Option<String> {
    watches.iter().find_map(|w| w.fault()).map(|why| {
        format!("the kernel faulted in an earlier trial and is not trusted any more: {why}")
    })
}

/// Let every watch look; the first fault any of them reports.
fn look(watches: &mut [&mut dyn Watch]) -> Option<String> {
    watches.iter_mut().find_map(|w| w.during())
}

/// The watches' descriptors, to be polled with the trials'.
fn watch_fds<'a>(watches: &[&mut dyn Watch]) -> Vec<PollFd<'a>> {
    watches
        .iter()
        .filter_map(|w| w.wake_fd())
        // SAFETY: a watch keeps its descriptor open for the whole session,
        // longer than this poll.
        .map(|fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
        .collect()
}

/// Journal the trial's process group, so that a restore stops what is left
/// of it first, even after the runner was killed.
fn track(guard: Option<&mut HostGuard>, w: &ChildWaiter) {
    if let Some(g) = guard {
        g.track_group(w.child.as_raw());
    }
}

/// Fork the trial process; the returned waiter collects what it reports.
fn spawn(trial: &Trial, opts: &RunOptions) -> std::io::Result<ChildWaiter> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Before the fork: every message the child sends must carry credentials.
    setsockopt(&ours, sockopt::PassCred, &true)?;
    let runner = nix::unistd::getpid();
    // SAFETY: the runner is single-threaded (see the module comment); the child
    // only runs the trial body and leaves with _exit.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ours);
            child_main(trial, theirs, runner)
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            // Also done by the child; doing it here too closes the race in
            // which we would signal a group that does not exist yet.
            let _ = setpgid(child, child);
            Ok(ChildWaiter::new(child, ours, opts.timeout))
        }
    }
}

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

fn child_main(trial: &Trial, socket: OwnedFd, runner: Pid) -> ! {
    // A runner killed outright takes its trials with it, instead of leaving
    // them to run on against a host that is being restored (the restore also
    // stops what they forked, by process group).
    // SAFETY: plain prctl with a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != runner {
        // SAFETY: leave at once; the runner died before the prctl.
        unsafe { libc::_exit(1) }
    }
    signals::reset_to_default();
    crate::guard::release_inherited_lock();
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // Stays close-on-exec: a program a trial executes gets no report channel.
    REPORT_FD.store(socket.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(socket);
    panic::set_hook(Box::new(|info| diag(format!("panic: {info}"))));
    let outcome =
        panic::catch_unwind(AssertUnwindSafe(|| (trial.body)())).unwrap_or_else(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Outcome::Fail(format!("trial panicked: {msg}"))
        });
    // Sent from whichever process gets here; the runner only takes it from
    // the trial process.
    emit(&Record::Outcome {
        kind: outcome.kind(),
        reason: outcome.reason().to_string(),
    });
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

struct ChildWaiter {
    child: Pid,
    socket: OwnedFd,
    pidfd: Option<OwnedFd>,
    deadline: Instant,
    timeout: Duration,
    buf: Vec<u8>,
    diagnostics: Vec<String>,
    evidence: Vec<Evidence>,
    reported: Option<Outcome>,
    socket_open: bool,
}

fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl ChildWaiter {
    fn new(child: Pid, socket: OwnedFd, timeout: Duration) -> Self {
        ChildWaiter {
            child,
            pidfd: pidfd_open(child),
            socket,
            deadline: Instant::now() + timeout,
            timeout,
            buf: vec![0; RECV_BUF],
            diagnostics: Vec::new(),
            evidence: Vec::new(),
            reported: None,
            socket_open: true,
        }
    }

    fn wait(&mut self, watches: &mut [&mut dyn Watch]) -> std::io::Result<Waited> {
        loop {
            if let Some(done) = self.step()? {
                return Ok(done);
            }
            let mut fds = self.poll_fds();
            fds.extend(watch_fds(watches));
            poll_slice(&mut fds, self.slice().min(LOOK_EVERY))?;
            let readable = self.socket_readable(&fds);
            drop(fds);
            self.after_poll(readable);
            if let Some(why) = look(watches) {
                return Ok(Waited::Done(self.stop_for_fault(why)));
            }
        }
    }

    /// The kernel faulted while this trial ran: kill its group and reap it,
    /// each within a bound, since a process stuck in the kernel never ends;
    /// name whoever could not be stopped.
    fn stop_for_fault(&mut self, why: String) -> Box<Ran> {
        let _ = nix::sys::signal::killpg(self.child, Signal::SIGKILL);
        let stuck = group::wait_empty(self.child, FAULT_GRACE);
        let deadline = Instant::now() + FAULT_GRACE;
        let mut reaped = false;
        while !reaped && Instant::now() < deadline {
            reaped = matches!(self.try_reap(), Ok(Some(_)) | Err(_));
            if !reaped {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.drain();
        if !stuck.is_empty() {
            self.diagnostics.push(format!(
                "could not be stopped after the kernel fault (left behind): {}",
                list(&stuck)
            ));
        } else if !reaped {
            self.diagnostics.push(format!(
                "the trial process {} could not be reaped after the kernel fault",
                self.child
            ));
        }
        Box::new(self.ran(Ended::KernelFault(why), None))
    }

    /// Everything that can be decided without blocking: a pending signal
    /// (the group is killed), the trial process gone, the time limit.
    fn step(&mut self) -> std::io::Result<Option<Waited>> {
        if let Some(sig) = signals::pending() {
            group::kill(self.child);
            self.reap_blocking();
            return Ok(Some(Waited::Interrupted(sig)));
        }
        if let Some(status) = self.try_reap()? {
            // The trial process is gone: all it sent is queued.
            self.drain();
            let leftovers = self.leftovers();
            self.wait_gone();
            return Ok(Some(Waited::Done(Box::new(
                self.ran(ended(status), leftovers),
            ))));
        }
        if Instant::now() >= self.deadline {
            let survivors = group::kill(self.child);
            self.reap_blocking();
            self.drain();
            if !survivors.is_empty() {
                self.diagnostics.push(format!(
                    "still in the process group after SIGKILL: {}",
                    list(&survivors)
                ));
            }
            self.wait_gone();
            return Ok(Some(Waited::Done(Box::new(
                self.ran(Ended::TimedOut(self.timeout), None),
            ))));
        }
        Ok(None)
    }

    /// How long to sleep in poll(): without a pidfd nothing wakes us when
    /// the child exits while a grandchild holds the socket open, so poll in
    /// short slices.
    fn slice(&self) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if self.pidfd.is_some() {
            left.min(Duration::from_millis(500))
        } else {
            left.min(Duration::from_millis(5))
        }
    }

    /// The socket (while any sender holds it open) and the pidfd.
    fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let mut fds = Vec::with_capacity(2);
        if self.socket_open {
            fds.push(PollFd::new(self.socket.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &self.pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        fds
    }

    fn socket_readable(&self, fds: &[PollFd<'_>]) -> bool {
        self.socket_open
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
    }

    fn after_poll(&mut self, readable: bool) {
        if readable && !self.drain() {
            self.socket_open = false;
        }
    }

    fn ran(&mut self, ended: Ended, leftovers: Option<CheckResult>) -> Ran {
        Ran {
            reported: self.reported.take(),
            ended,
            diagnostics: std::mem::take(&mut self.diagnostics),
            evidence: std::mem::take(&mut self.evidence),
            leftovers,
        }
    }

    fn try_reap(&mut self) -> std::io::Result<Option<WaitStatus>> {
        match waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(s) => Ok(Some(s)),
            Err(Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn reap_blocking(&mut self) {
        while let Err(Errno::EINTR) = waitpid(self.child, None) {}
    }

    /// Read every queued message without blocking. False once every sender
    /// has closed its end.
    fn drain(&mut self) -> bool {
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        loop {
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            let (bytes, pid, truncated) = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let pid = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                            _ => None,
                        })
                    });
                    (
                        msg.bytes,
                        pid.unwrap_or(0),
                        msg.flags.contains(MsgFlags::MSG_TRUNC),
                    )
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return true,
            };
            if bytes == 0 {
                return false;
            }
            let record = self.buf[..bytes].to_vec();
            self.take(pid, &record, truncated);
        }
    }

    fn take(&mut self, pid: i32, bytes: &[u8], truncated: bool) {
        let from_trial = pid == self.child.as_raw();
        let label = |text: &str| {
            if from_trial {
                text.to_string()
            } else {
                format!("[pid {pid}] {text}")
            }
        };
        if truncated {
            self.diagnostics.push(label(&format!(
                "a record over {RECV_BUF} bytes was cut and dropped"
            )));
            return;
        }
        match serde_json::from_slice::<Record>(bytes) {
            Ok(Record::Diag(text)) => {
                self.diagnostics.extend(text.lines().map(label));
            }
            Ok(Record::Evidence(e)) => self.evidence.push(e),
            Ok(Record::Outcome { kind, reason }) => {
                let o = Outcome::from_parts(kind, reason);
                if !from_trial {
                    self.diagnostics.push(format!(
                        "outcome record from pid {pid} (not the trial process {}) ignored: {o}",
                        self.child
                    ));
                } else if self.reported.is_some() {
                    self.diagnostics
                        .push(format!("a second outcome record ignored: {o}"));
                } else {
                    self.reported = Some(o);
                }
            }
            Err(e) => {
                let text = String::from_utf8_lossy(bytes);
                self.diagnostics.push(label(&format!(
                    "unreadable record ({e}): {}",
                    cut(&text, 200)
                )));
            }
        }
    }

    /// Wait for the trial's processes that are exiting to be done with it.
    fn wait_gone(&mut self) {
        let exiting = group::wait_gone(self.child, EXIT_LIMIT);
        if !exiting.is_empty() {
            self.diagnostics.push(format!(
                "still exiting {} s after the trial ended: {}",
                EXIT_LIMIT.as_secs(),
                list(&exiting)
            ));
        }
    }

    /// Who is still alive in the trial's process group, stopped and reported.
    fn leftovers(&mut self) -> Option<CheckResult> {
        let left = group::wait_empty(self.child, LEAK_GRACE);
        if left.is_empty() {
            return None;
        }
        let stopped = group::stop(self.child, TERM_GRACE);
        let mut detail = format!(
            "{} process(es) still running in the trial's process group after it ended: {}; \
             sent SIGTERM",
            left.len(),
            list(&left)
        );
        if !stopped.killed.is_empty() {
            detail.push_str(&format!(
                ", then SIGKILL after {} ms to {}",
                TERM_GRACE.as_millis(),
                list(&stopped.killed)
            ));
        }
        if !stopped.survivors.is_empty() {
            detail.push_str(&format!(
                "; still there after SIGKILL: {}",
                list(&stopped.survivors)
            ));
        }
        self.diagnostics.push(format!("LEAK: {detail}"));
        Some(CheckResult {
            check: "leftover processes".into(),
            status: CheckStatus::Violated,
            detail,
            data: serde_json::json!({
                "left": left,
                "killed": stopped.killed,
                "survivors": stopped.survivors,
            }),
        })
    }
}

fn poll_slice(fds: &mut [PollFd<'_>], slice: Duration) -> std::io::Result<()> {
    let ms = PollTimeout::try_from(slice.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
    match poll(fds, ms) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn list(members: &[group::Member]) -> String {
    members
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ended(status: WaitStatus) -> Ended {
    match status {
        WaitStatus::Exited(_, code) => Ended::Exited(code),
        WaitStatus::Signaled(_, sig, core) => Ended::Signaled {
            signal: sig as i32,
            core,
        },
        other => Ended::Other(format!("{other:?}")),
    }
}
