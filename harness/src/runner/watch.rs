//! The checks made around trials (`Watch`: the session's pin balance, its
//! kernel log), and how the runner asks them: whether an earlier fault
//! forbids running at all, what they see while trials run, and which
//! descriptors wake the runner for them.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags};

use crate::outcome::CheckResult;

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

/// How often the watches look while trials run, at least (they are also
/// woken by their descriptor).
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Why no trial may run any more: a watch saw the kernel fault.
pub(super) fn earlier_fault(watches: &[&mut dyn Watch]) -> Option<String> {
    watches.iter().find_map(|w| w.fault()).map(|why| {
        format!("the kernel faulted in an earlier trial and is not trusted any more: {why}")
    })
}

/// Let every watch look; the first fault any of them reports.
pub(super) fn look(watches: &mut [&mut dyn Watch]) -> Option<String> {
    watches.iter_mut().find_map(|w| w.during())
}

/// The watches' descriptors, to be polled with the trials'.
pub(super) fn watch_fds<'a>(watches: &[&mut dyn Watch]) -> Vec<PollFd<'a>> {
    watches
        .iter()
        .filter_map(|w| w.wake_fd())
        // SAFETY: a watch keeps its descriptor open for the whole session,
        // longer than this poll.
        .map(|fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
        .collect()
}
