//! The trial's process group after the trial process is gone: who is still
//! in it, and stopping them (SIGTERM, a short grace, then SIGKILL).
//!
//! A process that is already a zombie or already exiting (PF_EXITING: its
//! memory may take a while to free, a 1 GiB hugetlb page for one) is on its
//! way out and is not counted as left behind.

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

/// Members of the group that are alive and not exiting, from /proc/*/stat.
pub fn live_members(pgid: Pid) -> Vec<Member> {
    if !exists(pgid) {
        return Vec::new();
    }
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.pgrp == pgid.as_raw())
        .filter(|s| s.state != 'Z' && s.state != 'X' && s.flags & PF_EXITING == 0)
        .map(|s| Member {
            pid: s.pid,
            comm: s.comm,
            state: s.state,
        })
        .collect()
}

/// Poll until no live member is left or `limit` passes; returns who is left.
pub fn wait_empty(pgid: Pid, limit: Duration) -> Vec<Member> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        let left = live_members(pgid);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
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
