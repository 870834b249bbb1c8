//! The kernel-log check: a kernel warning, BUG, Oops or bad-page report
//! logged while a trial ran fails that trial, with the lines; so does an
//! error taint flag (W, B, D, L, M in /proc/sys/kernel/tainted) that appeared
//! meanwhile. A fault the kernel may not get over (an Oops, a stuck CPU, a
//! panic) also stops the run: no trial after it is trusted.
//!
//! Only lines of a known error shape count (see `PATTERNS`); everything else
//! the kernel logs (swap on and off, drop_caches, ...) is counted and
//! ignored. A record overwritten before it was read (EPIPE: the ring buffer
//! wrapped) makes the check `Unreliable` unless what was read already
//! violates it. No /dev/kmsg, or not allowed to read it (dmesg_restrict=1
//! without CAP_SYSLOG), is `NotChecked`, saying why; the taint flags, which
//! anyone can read, are still checked then.
//!
//! Records written to /dev/kmsg by userspace carry a non-kernel facility
//! (the kernel forces LOG_USER when none is given and never lets userspace
//! log as facility 0); they are matched like the kernel's and reported with
//! their facility, so an injected line is visibly one.
//!
//! The parts: `log` reads /dev/kmsg, `classify` says what a line or a taint
//! flag means, `check` judges one trial, `watch` follows the log through a
//! session (`KernelLog`, one descriptor for all its trials).

mod check;
mod classify;
mod log;
mod watch;

pub use check::{judge, CHECK};
pub use classify::{
    describe_taints, error_taints, fatal_shape, findings, is_fatal, matches, Finding, Pattern,
    PATTERNS, TAINTS,
};
pub use log::{open, parse_record, read_taint, scan, Read1, Record, Scan, Source};
pub use watch::{Fault, KernelLog};

/// Matching lines quoted in a check's detail or a fault's message; all kept
/// ones are in the check's data.
const QUOTED: usize = 5;

#[cfg(test)]
mod test_log {
    use super::{Read1, Source};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A log the tests append to, read like /dev/kmsg.
    #[derive(Clone, Default)]
    pub(super) struct Fake(Arc<Mutex<VecDeque<Read1>>>);

    impl Fake {
        pub(super) fn log(&self, raw: &str) {
            self.0.lock().unwrap().push_back(Read1::Record(raw.into()));
        }
        pub(super) fn push(&self, r: Read1) {
            self.0.lock().unwrap().push_back(r);
        }
    }

    impl Source for Fake {
        fn read1(&mut self) -> Read1 {
            self.0.lock().unwrap().pop_front().unwrap_or(Read1::End)
        }
    }

    pub(super) const WARN: &str = "4,1234,5678901,-;WARNING: CPU: 0 PID: 1 at mm/gup.c:123 \
                                   try_grab_folio+0x3a/0x1f0\n SUBSYSTEM=test\n DEVICE=+x:y\n";
}
