//! Termination signals become a flag that the run loop polls, so that a SIGINT,
//! SIGTERM or SIGHUP in the middle of a run still ends with the host restored.
//! Handlers are installed without SA_RESTART: a blocking wait returns EINTR and
//! the loop sees the flag at once.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static PENDING: AtomicI32 = AtomicI32::new(0);

pub const TERMINATING: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn note(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
}

/// Route SIGINT/SIGTERM/SIGHUP to the pending flag.
pub fn install() {
    let action = SigAction::new(SigHandler::Handler(note), SaFlags::empty(), SigSet::empty());
    for sig in TERMINATING {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.expect("installing a signal handler cannot fail");
    }
}

/// Back to the default actions; used in trial processes, which must die when
/// told to rather than report a flag nobody reads.
pub fn reset_to_default() {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in TERMINATING {
        // SAFETY: restoring the default disposition.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// The terminating signal received so far, if any.
pub fn pending() -> Option<Signal> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// End the process the way the signal would have, now that cleanup is done:
/// the parent shell then sees "killed by SIGTERM", not a made-up exit code.
pub fn die_of(sig: Signal) -> ! {
    reset_to_default();
    let _ = nix::sys::signal::raise(sig);
    std::process::exit(128 + sig as i32)
}
