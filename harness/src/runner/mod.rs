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
//! waited for (bounded); then the `Watch`es (pin balance, ...) are judged,
//! and `verdict::decide` forms the outcome from all of it. See verdict.rs for
//! the rules.
//!
//! The parts: `single` runs one trial, `batch` runs trials side by side,
//! `child` is the trial process's side (its report channel and its end),
//! `waiter` the runner's side of one trial process (fork, collect, reap,
//! stop what is left), `watch` the checks made around trials.

mod batch;
mod child;
mod single;
mod waiter;
mod watch;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::outcome::{Evidence, OutcomeKind};

pub use batch::run_batch;
pub use child::{diag, evidence, send_record, MAX_RECORD};
pub use single::run_trial;
pub use watch::Watch;

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

/// One message from a trial's processes to the runner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Diag(String),
    Evidence(Evidence),
    Outcome { kind: OutcomeKind, reason: String },
}
