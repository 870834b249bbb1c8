//! A trial's process group: who is still in it (after the trial process is
//! gone, or when a restore finds a journaled group), and stopping them
//! (SIGTERM, a short grace, then SIGKILL; or SIGKILL at once at a time
//! limit, a signal or a kernel fault).
//!
//! A process that is already exiting (PF_EXITING) is on its way out and is
//! not counted as left behind, but the group is only gone once it has become
//! a zombie: until then it may still hold memory (a 1 GiB hugetlb page the
//! next trial needs) and pins (which the pin balance must see released).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;

/// include/linux/sched.h: getting shut down.
const PF_EXITING: u32 = 0x0000_0004;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exiting: bool,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, state {})", self.pid, self.comm, self.state)
    }
}

/// Whether any process, zombies included, still has this process group.
/// Cheap (one kill(2)); the common case after a tidy trial is ESRCH.
pub fn exists(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Members of the group that are not zombies yet, from /proc/*/stat.
pub fn members(pgid: Pid) -> Vec<Member> {
    if !exists(pgid) {
        return Vec::new();
    }
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.pgrp == pgid.as_raw() && s.state != 'Z' && s.state != 'X')
        .map(|s| Member {
            pid: s.pid,
            comm: s.comm,
            state: s.state,
            exiting: s.flags & PF_EXITING != 0,
        })
        .collect()
}

/// Members that are alive and not on their way out.
pub fn live_members(pgid: Pid) -> Vec<Member> {
    let mut m = members(pgid);
    m.retain(|m| !m.exiting);
    m
}

fn poll_until_empty(limit: Duration, list: impl Fn() -> Vec<Member>) -> Vec<Member> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        let left = list();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Poll until no live member is left or `limit` passes; returns who is left.
pub fn wait_empty(pgid: Pid, limit: Duration) -> Vec<Member> {
    poll_until_empty(limit, || live_members(pgid))
}

/// Poll until every member has finished exiting (only zombies, or nothing,
/// left) or `limit` passes; returns who is still there.
pub fn wait_gone(pgid: Pid, limit: Duration) -> Vec<Member> {
    poll_until_empty(limit, || members(pgid))
}

/// How the leftovers were stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Still alive after SIGTERM and the grace period: sent SIGKILL.
    pub killed: Vec<Member>,
    /// Still there after SIGKILL (in D state, say): nothing more can be done.
    pub survivors: Vec<Member>,
}

/// SIGTERM the group, give it `grace`, then SIGKILL whoever is left and wait
/// (bounded) for them to go.
pub fn stop(pgid: Pid, grace: Duration) -> Stopped {
    let _ = killpg(pgid, Signal::SIGTERM);
    let killed = wait_empty(pgid, grace);
    let survivors = if killed.is_empty() {
        Vec::new()
    } else {
        kill(pgid)
    };
    Stopped { killed, survivors }
}

/// SIGKILL the group and wait (bounded) until no live member is left.
pub fn kill(pgid: Pid) -> Vec<Member> {
    let _ = killpg(pgid, Signal::SIGKILL);
    wait_empty(pgid, Duration::from_secs(2))
}
