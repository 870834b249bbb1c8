//! The trial process's side: its report channel to the runner (one JSON
//! `Record` per message on the socket `child_main` was handed, cut to
//! `MAX_RECORD`), and its life after fork: run the trial body, catch a
//! panic, send the outcome, leave with _exit.

use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use nix::unistd::{setpgid, Pid};

use super::Record;
use crate::outcome::{Evidence, Outcome};
use crate::signals;
use crate::trial::Trial;

/// Largest record sent; longer diagnostics and reasons are cut, larger
/// evidence is replaced by a diagnostic saying so. Well under the socket's
/// send buffer (net.core.wmem_default, 208 KiB by default).
pub const MAX_RECORD: usize = 64 << 10;

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Print a diagnostic for the current trial. Inside a trial process (or a
/// process it forked) it goes to the runner, and from there to every report;
/// elsewhere to stderr.
pub fn diag(msg: impl std::fmt::Display) {
    let text = msg.to_string();
    if !emit(&Record::Diag(text.clone())) {
        for line in text.lines() {
            eprintln!("# {line}");
        }
    }
}

/// Send a typed observation for the current trial (see `Evidence`). Outside
/// a trial process it is printed to stderr as JSON.
pub fn evidence(kind: &str, data: impl serde::Serialize) {
    let data =
        serde_json::to_value(data).unwrap_or_else(|e| serde_json::Value::String(e.to_string()));
    let record = Evidence {
        kind: kind.to_string(),
        data,
    };
    let json = serde_json::to_string(&record).expect("evidence serialises");
    if !emit(&Record::Evidence(record)) {
        eprintln!("# evidence {json}");
    }
}

pub(super) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... cut: {} bytes in all]", &text[..end], text.len())
}

/// The record as it goes on the wire, within MAX_RECORD.
fn encode(record: &Record) -> Vec<u8> {
    let bytes = serde_json::to_vec(record).expect("records serialise");
    if bytes.len() <= MAX_RECORD {
        return bytes;
    }
    // JSON escaping can grow text up to 6x; leave room for it.
    let room = MAX_RECORD / 8;
    let smaller = match record {
        Record::Diag(t) => Record::Diag(cut(t, room)),
        Record::Outcome { kind, reason } => Record::Outcome {
            kind: *kind,
            reason: cut(reason, room),
        },
        Record::Evidence(e) => Record::Diag(format!(
            "evidence {:?} dropped: {} bytes is over the {MAX_RECORD}-byte record limit",
            cut(&e.kind, 100),
            bytes.len()
        )),
    };
    serde_json::to_vec(&smaller).expect("records serialise")
}

/// Send a raw record to the runner as the current process (tests of the
/// runner use it to report and then misbehave). Trials report by returning
/// their outcome; an outcome sent from any process but the trial process is
/// ignored. False outside a trial.
#[doc(hidden)]
pub fn send_record(record: &Record) -> bool {
    emit(record)
}

/// Send a record to the runner; false outside a trial process.
fn emit(record: &Record) -> bool {
    let fd = REPORT_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return false;
    }
    let bytes = encode(record);
    loop {
        // MSG_NOSIGNAL: a runner that is gone must not kill us with SIGPIPE.
        match send(fd, &bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            _ => return true,
        }
    }
}

pub(super) fn child_main(trial: &Trial, socket: OwnedFd, runner: Pid) -> ! {
    // A runner killed outright takes its trials with it, instead of leaving
    // them to run on against a host that is being restored (the restore also
    // stops what they forked, by process group).
    // SAFETY: plain prctl with a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != runner {
        // SAFETY: leave at once; the runner died before the prctl.
        unsafe { libc::_exit(1) }
    }
    signals::reset_to_default();
    crate::guard::release_inherited_lock();
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // Stays close-on-exec: a program a trial executes gets no report channel.
    REPORT_FD.store(socket.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(socket);
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
    // Sent from whichever process gets here; the runner only takes it from
    // the trial process.
    emit(&Record::Outcome {
        kind: outcome.kind(),
        reason: outcome.reason().to_string(),
    });
    // SAFETY: leave without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}
