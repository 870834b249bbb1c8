//! One trial, one process. The runner forks rather than re-executing itself:
//! a trial is a closure over plain values (a case, a backing) that the child
//! already holds after fork, so nothing has to be serialised, and a fork costs
//! a fraction of an exec (which matters when a plan holds hundreds of trials).
//! fork() is only sound from a single-threaded process, which the front ends
//! guarantee (libtest-mimic with one test thread runs on the main thread).
//!
//! The child reports over a pipe, line by line, as it goes: diagnostics first,
//! the outcome last. A child that crashes or hangs therefore still leaves its
//! diagnostics behind, and costs exactly one result.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setpgid, ForkResult, Pid};

use crate::guard::{read_knob, HostGuard};
use crate::outcome::{Outcome, OutcomeKind, TrialReport};
use crate::signals;
use crate::trial::Trial;

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

static DIAG_FD: AtomicI32 = AtomicI32::new(-1);
/// Longest record written in one write(2), so records from several processes
/// sharing the pipe never interleave (PIPE_BUF is 4096).
const MAX_RECORD: usize = 4000;

/// Print a diagnostic line for the current trial. Inside a trial process it
/// goes to the runner (and from there to every report); elsewhere to stderr.
pub fn diag(msg: impl std::fmt::Display) {
    let text = msg.to_string();
    for line in text.lines() {
        emit('D', line);
    }
}

/// Send a typed observation for the current trial (see `Evidence`). Outside
/// a trial process it is printed to stderr as JSON.
pub fn evidence(kind: &str, data: impl serde::Serialize) {
    let data =
        serde_json::to_value(data).unwrap_or_else(|e| serde_json::Value::String(e.to_string()));
    let record = crate::outcome::Evidence {
        kind: kind.to_string(),
        data,
    };
    let json = serde_json::to_string(&record).expect("evidence serialises");
    emit('E', &json);
}

fn emit(tag: char, text: &str) {
    let fd = DIAG_FD.load(Ordering::SeqCst);
    if fd < 0 {
        match tag {
            'D' => eprintln!("# {text}"),
            'E' => eprintln!("# evidence {text}"),
            _ => {}
        }
        return;
    }
    let mut record = String::with_capacity(text.len() + 3);
    record.push(tag);
    record.push(' ');
    let mut end = text.len().min(MAX_RECORD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    record.push_str(&text[..end].replace('\n', " "));
    record.push('\n');
    // SAFETY: fd is the pipe's write end, open for the child's lifetime.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(borrowed, record.as_bytes());
}

/// Run one trial. Never panics on behalf of the trial: a crash, a hang or a
/// panic inside it becomes that trial's outcome.
pub fn run_trial(
    trial: &Trial,
    guard: Option<&mut HostGuard>,
    opts: &RunOptions,
) -> Result<TrialReport, Stop> {
    let start = Instant::now();
    let report = |outcome, (diagnostics, evidence)| TrialReport {
        name: trial.name.clone(),
        outcome,
        diagnostics,
        evidence,
        checks: Vec::new(),
        duration: start.elapsed(),
    };
    if let Some(sig) = signals::pending() {
        return Err(Stop::Interrupted(sig));
    }
    if let Some(reason) = &trial.skip {
        return Ok(report(Outcome::Skip(reason.clone()), Default::default()));
    }
    if let Some(outcome) = establish_knobs(trial, guard) {
        return Ok(report(outcome, Default::default()));
    }
    let (outcome, diagnostics) = match fork_and_wait(trial, opts) {
        Ok(Waited::Done(o, d)) => (o, d),
        Ok(Waited::Interrupted(sig)) => return Err(Stop::Interrupted(sig)),
        Err(e) => (
            Outcome::Error(format!("runner could not run the trial: {e}")),
            Default::default(),
        ),
    };
    Ok(report(outcome, diagnostics))
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

type Records = (Vec<String>, Vec<crate::outcome::Evidence>);

enum Waited {
    Done(Outcome, Records),
    Interrupted(Signal),
}

fn fork_and_wait(trial: &Trial, opts: &RunOptions) -> io::Result<Waited> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the runner is single-threaded (see the module comment); the child
    // only runs the trial body and leaves with _exit.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rd);
            child_main(trial, wr)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            // Also done by the child; doing it here too closes the race in
            // which we would signal a group that does not exist yet.
            let _ = setpgid(child, child);
            let mut waiter = ChildWaiter::new(child, rd, opts.timeout);
            waiter.wait()
        }
    }
}

fn child_main(trial: &Trial, wr: OwnedFd) -> ! {
    signals::reset_to_default();
    crate::guard::release_inherited_lock();
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    DIAG_FD.store(wr.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(wr);
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
    emit(
        'O',
        &format!("{}\t{}", outcome.kind().as_str(), outcome.reason()),
    );
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

struct ChildWaiter {
    child: Pid,
    pipe: OwnedFd,
    pidfd: Option<OwnedFd>,
    deadline: Instant,
    timeout: Duration,
    buf: Vec<u8>,
    diagnostics: Vec<String>,
    evidence: Vec<crate::outcome::Evidence>,
    outcome: Option<Outcome>,
}

fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: plain syscall; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl ChildWaiter {
    fn new(child: Pid, pipe: OwnedFd, timeout: Duration) -> Self {
        ChildWaiter {
            child,
            pidfd: pidfd_open(child),
            pipe,
            deadline: Instant::now() + timeout,
            timeout,
            buf: Vec::new(),
            diagnostics: Vec::new(),
            evidence: Vec::new(),
            outcome: None,
        }
    }

    fn wait(&mut self) -> io::Result<Waited> {
        let mut pipe_open = true;
        loop {
            if let Some(sig) = signals::pending() {
                self.kill_group();
                return Ok(Waited::Interrupted(sig));
            }
            if let Some(status) = self.try_reap()? {
                self.drain_nonblocking();
                self.kill_group();
                return Ok(Waited::Done(self.judge(status), self.take_records()));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill_group();
                let _ = waitpid(self.child, None);
                self.drain_nonblocking();
                let outcome = Outcome::Error(format!(
                    "timed out after {} s (time limit; see --timeout); killed its process group",
                    self.timeout.as_secs_f64()
                ));
                return Ok(Waited::Done(outcome, self.take_records()));
            }
            // Without a pidfd nothing wakes us when the child exits while a
            // grandchild holds the pipe open, so poll in short slices.
            let slice = if self.pidfd.is_some() {
                left.min(Duration::from_millis(500))
            } else {
                left.min(Duration::from_millis(5))
            };
            let pipe = self.pipe.as_fd();
            let mut fds = Vec::with_capacity(2);
            if pipe_open {
                fds.push(PollFd::new(pipe, PollFlags::POLLIN));
            }
            if let Some(p) = &self.pidfd {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            let ms =
                PollTimeout::try_from(slice.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let readable = pipe_open
                && fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
            if readable && !self.read_some()? {
                pipe_open = false;
            }
        }
    }

    fn take_records(&mut self) -> Records {
        (
            std::mem::take(&mut self.diagnostics),
            std::mem::take(&mut self.evidence),
        )
    }

    fn try_reap(&mut self) -> io::Result<Option<WaitStatus>> {
        match waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(s) => Ok(Some(s)),
            Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Returns false at end of file.
    fn read_some(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        match nix::unistd::read(&self.pipe, &mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.parse_lines();
                Ok(true)
            }
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    fn drain_nonblocking(&mut self) {
        let fd = self.pipe.as_raw_fd();
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        let mut chunk = [0u8; 8192];
        while let Ok(n) = nix::unistd::read(&self.pipe, &mut chunk) {
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.parse_lines();
    }

    fn parse_lines(&mut self) {
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match line.split_at_checked(2) {
                Some(("D ", text)) => self.diagnostics.push(text.to_string()),
                Some(("E ", json)) => match serde_json::from_str(json) {
                    Ok(e) => self.evidence.push(e),
                    Err(e) => self
                        .diagnostics
                        .push(format!("unreadable evidence record ({e}): {json}")),
                },
                Some(("O ", rest)) => {
                    let (kind, reason) = rest.split_once('\t').unwrap_or((rest, ""));
                    self.outcome = Some(match OutcomeKind::parse(kind) {
                        Some(k) => Outcome::from_parts(k, reason.to_string()),
                        None => {
                            Outcome::Error(format!("trial reported an unknown outcome {kind:?}"))
                        }
                    });
                }
                _ => self.diagnostics.push(line),
            }
        }
    }

    fn kill_group(&self) {
        let _ = killpg(self.child, Signal::SIGKILL);
    }

    fn judge(&mut self, status: WaitStatus) -> Outcome {
        match (self.outcome.take(), status) {
            (Some(o), WaitStatus::Exited(_, 0)) => o,
            (Some(o), other) => {
                self.diagnostics.push(format!(
                    "trial process ended abnormally after reporting: {other:?}"
                ));
                o
            }
            (None, WaitStatus::Signaled(_, sig, core)) => Outcome::Fail(format!(
                "trial process killed by signal {} ({sig}){}",
                sig as i32,
                if core { ", core dumped" } else { "" }
            )),
            (None, WaitStatus::Exited(_, code)) => Outcome::Fail(format!(
                "trial process exited with status {code} before reporting an outcome"
            )),
            (None, other) => Outcome::Error(format!("trial process ended oddly: {other:?}")),
        }
    }
}
