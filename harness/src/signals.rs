//! Termination signals become a flag that the run loop polls, so that a SIGINT,
//! SIGTERM or SIGHUP in the middle of a run still ends with the host restored.
//! The handlers are signal-hook's (they only store to atomics). A second
//! SIGINT while the first is still being handled (an impatient ^C^C at a
//! restore that hangs) takes the default action at once; the journal then
//! still lets `cowgup restore` or the next run put the host back. A second
//! SIGTERM or SIGHUP does not: kselftest's runner.sh nests two `timeout`s,
//! which send SIGTERM twice at the time limit, and the restore must finish.
//!
//! signal-hook installs its handlers with SA_RESTART; we clear that flag
//! afterwards, so that a blocking call (waitpid, read) returns EINTR and the
//! loop sees the flag at once instead of sleeping on until the call ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static PENDING: AtomicUsize = AtomicUsize::new(0);
static SEEN: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

pub const TERMINATING: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Route SIGINT/SIGTERM/SIGHUP to the pending flag. Idempotent.
pub fn install() {
    INSTALL.call_once(|| {
        for sig in TERMINATING {
            let n = sig as i32;
            // Order matters: signal-hook runs a signal's actions in the order
            // they were registered, so the default action is only taken when
            // SEEN was already set by an earlier signal.
            let impatient = if sig == Signal::SIGINT {
                signal_hook::flag::register_conditional_default(n, &SEEN).map(drop)
            } else {
                Ok(())
            };
            impatient
                .and_then(|_| signal_hook::flag::register(n, &SEEN))
                .and_then(|_| signal_hook::flag::register_usize(n, &PENDING, n as usize))
                .expect("installing a signal handler cannot fail");
            clear_sa_restart(sig);
        }
    });
}

fn current_action(sig: Signal) -> Option<libc::sigaction> {
    // SAFETY: a null new action only reads the disposition.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig as i32, std::ptr::null(), &mut old) == 0).then_some(old)
    }
}

fn clear_sa_restart(sig: Signal) {
    // Put signal-hook's own action back without SA_RESTART.
    if let Some(mut action) = current_action(sig) {
        action.sa_flags &= !libc::SA_RESTART;
        // SAFETY: the same handler, mask and flags signal-hook chose, less one flag.
        unsafe { libc::sigaction(sig as i32, &action, std::ptr::null_mut()) };
    }
}

/// Back to the default actions; used in trial processes, which must die when
/// told to rather than report a flag nobody reads.
pub fn reset_to_default() {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in TERMINATING {
        // SAFETY: restoring the default disposition (in a fresh child, or in
        // a process about to die of the signal).
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// The terminating signal received so far, if any.
pub fn pending() -> Option<Signal> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n as i32).ok(),
    }
}

/// End the process the way the signal would have, now that cleanup is done:
/// the parent shell then sees "killed by SIGTERM", not a made-up exit code.
pub fn die_of(sig: Signal) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(sig as i32);
    std::process::exit(128 + sig as i32)
}

/// Whether SA_RESTART is set for `sig` now (for tests).
pub fn restarts(sig: Signal) -> bool {
    current_action(sig).is_some_and(|a| a.sa_flags & libc::SA_RESTART != 0)
}
