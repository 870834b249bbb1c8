//! SIGINT, SIGTERM and SIGHUP for a command that must put things back
//! before it ends (`bisect` leaves the tree on the branch it was on): the
//! signal is noted, the child `qemu::run_watched` is watching (a kernel
//! build, a guest) is stopped at its next look, and the command unwinds.
//! Commands that do not ask keep the default: the signal ends them.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static NOTED: AtomicI32 = AtomicI32::new(0);
static CATCHING: AtomicBool = AtomicBool::new(false);

extern "C" fn note(sig: libc::c_int) {
    NOTED.store(sig, Ordering::SeqCst);
}

/// From now on the three signals are noted, not fatal.
pub fn catch() -> Result<(), String> {
    let act = SigAction::new(SigHandler::Handler(note), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &act) }.map_err(|e| format!("cannot catch {sig}: {e}"))?;
    }
    CATCHING.store(true, Ordering::SeqCst);
    Ok(())
}

/// The signals are caught: children then run in process groups of their
/// own (the terminal's Ctrl-C reaches only us), and are stopped group and
/// all (a make's sub-makes and compilers, not only the make).
pub fn catching() -> bool {
    CATCHING.load(Ordering::SeqCst)
}

/// The signal noted, if one came.
pub fn requested() -> Option<Signal> {
    match NOTED.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}
