//! The runner's side of one trial process: fork it (`spawn`), then collect
//! what its processes report, reap it, enforce its time limit, and stop
//! whatever it left in its process group (`ChildWaiter`).

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixCredentials,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setpgid, ForkResult, Pid};

use super::child::{child_main, cut, MAX_RECORD};
use super::watch::{look, watch_fds, Watch, LOOK_EVERY};
use super::{Record, RunOptions};
use crate::group;
use crate::outcome::{CheckResult, CheckStatus, Evidence, Outcome};
use crate::signals;
use crate::trial::Trial;
use crate::verdict::Ended;

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
/// How long processes of the trial that are exiting get to finish (free
/// their memory, drop their pins) before the checks and the next trial.
const EXIT_LIMIT: Duration = Duration::from_secs(5);

/// What the runner saw of one trial process.
pub(super) struct Ran {
    pub(super) reported: Option<Outcome>,
    pub(super) ended: Ended,
    pub(super) diagnostics: Vec<String>,
    pub(super) evidence: Vec<Evidence>,
    pub(super) leftovers: Option<CheckResult>,
}

impl Ran {
    /// A trial process of which only how it ended is known (it could not be
    /// forked, or was lost, or never started).
    pub(super) fn ended_only(ended: Ended) -> Ran {
        Ran {
            reported: None,
            ended,
            diagnostics: Vec::new(),
            evidence: Vec::new(),
            leftovers: None,
        }
    }
}

pub(super) enum Waited {
    Done(Box<Ran>),
    Interrupted(Signal),
}

/// Fork the trial process; the returned waiter collects what it reports.
pub(super) fn spawn(trial: &Trial, opts: &RunOptions) -> std::io::Result<ChildWaiter> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Before the fork: every message the child sends must carry credentials.
    setsockopt(&ours, sockopt::PassCred, &true)?;
    let runner = nix::unistd::getpid();
    // SAFETY: the runner is single-threaded (see runner/mod.rs); the child
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

pub(super) struct ChildWaiter {
    pub(super) child: Pid,
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

    pub(super) fn wait(&mut self, watches: &mut [&mut dyn Watch]) -> std::io::Result<Waited> {
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
    pub(super) fn stop_for_fault(&mut self, why: String) -> Box<Ran> {
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
    pub(super) fn step(&mut self) -> std::io::Result<Option<Waited>> {
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
    pub(super) fn slice(&self) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if self.pidfd.is_some() {
            left.min(Duration::from_millis(500))
        } else {
            left.min(Duration::from_millis(5))
        }
    }

    /// The socket (while any sender holds it open) and the pidfd.
    pub(super) fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let mut fds = Vec::with_capacity(2);
        if self.socket_open {
            fds.push(PollFd::new(self.socket.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &self.pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        fds
    }

    pub(super) fn socket_readable(&self, fds: &[PollFd<'_>]) -> bool {
        self.socket_open
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
    }

    pub(super) fn after_poll(&mut self, readable: bool) {
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

    pub(super) fn reap_blocking(&mut self) {
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

pub(super) fn poll_slice(fds: &mut [PollFd<'_>], slice: Duration) -> std::io::Result<()> {
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
