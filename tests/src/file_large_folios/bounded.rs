//! Calls that may never return: the 2025 livelock makes a R/O long-term
//! pin of a PMD-mapped file folio retry forever, so every pin and forced
//! write of this family runs on a thread of its own, given `CALL_LIMIT`
//! (less when its thread is seen in a fault storm). A call that did not
//! return is reported with its thread's minor faults and kernel stack.

use cowgup_fixtures::mem::Region;
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::{fail, Step};

/// How long a pin or a forced write may take. Under qemu TCG one takes
/// milliseconds; a livelocked one never returns.
pub const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A pin of a 2 MiB folio faults at most a few hundred times (once per base
/// page if the PMD is split); the livelock faults tens of thousands of times
/// a second, even under TCG (130k-280k in 10 s were seen on 6.12.117).
const STORM_FAULTS: u64 = 5000;
const STORM_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
const STORM_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Run `call` on a thread of its own and wait at most `CALL_LIMIT` for it.
/// `Ok(Err(why))`: it did not return (`why` says what its thread did).
pub(super) fn bounded<T: Send + 'static>(
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Step<Result<T, String>> {
    bounded_for(CALL_LIMIT, what, call)
}

/// A call that did not return, where only a clean return is acceptable.
pub(super) fn returned<T>(r: Result<T, String>) -> Step<T> {
    r.or_else(fail)
}

fn bounded_for<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Step<Result<T, String>> {
    use std::sync::mpsc;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("cowgup-pin".into())
        .spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            let _ = done_tx.send(call());
        })
        .or_else(|e| fail(format!("cannot start a thread for {what}: {e}")))?;
    let tid = tid_rx
        .recv()
        .or_else(|_| fail(format!("the thread for {what} died before it started")))?;
    let faults_before = minor_faults(tid);
    let start = std::time::Instant::now();
    // A fault storm is decided early: a call that has not returned after
    // STORM_AFTER while its thread took STORM_FAULTS minor faults is the
    // livelock (GUP faulting the same range again and again), whatever the
    // rest of `limit` would bring. Anything else gets the whole `limit`.
    let waited = loop {
        let left = limit.saturating_sub(start.elapsed());
        match done_rx.recv_timeout(left.min(STORM_POLL)) {
            Ok(v) => return Ok(Ok(v)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return fail(format!("the thread for {what} died (panicked?)"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let storm = start.elapsed() >= STORM_AFTER
            && match (faults_before, minor_faults(tid)) {
                (Some(a), Some(b)) => b.saturating_sub(a) >= STORM_FAULTS,
                _ => false,
            };
        if storm || start.elapsed() >= limit {
            break start.elapsed();
        }
    };
    let faults = match (faults_before, minor_faults(tid)) {
        (Some(a), Some(b)) => format!("{} minor faults", b.saturating_sub(a)),
        _ => "an unknown number of minor faults".into(),
    };
    let stack = kernel_stack(tid);
    cowgup_harness::evidence(
        "livelock",
        serde_json::json!({
            "call": what,
            "limit_s": limit.as_secs_f64(),
            "waited_s": waited.as_secs_f64(),
            "minor_faults": faults,
            "kernel_stack": stack,
        }),
    );
    Ok(Err(format!(
        "{what} did not return within {:.1} s (livelock): meanwhile its thread took {faults}; \
         kernel stack: {stack}",
        waited.as_secs_f64()
    )))
}

/// A thread's kernel stack, innermost first. The kernel shows none while
/// the thread is on a CPU, so this looks up to 50 times, 20 ms apart.
fn kernel_stack(tid: i32) -> String {
    let path = format!("/proc/self/task/{tid}/stack");
    let last = String::from("empty each time it was read (the thread was running)");
    for _ in 0..50 {
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => {
                return s
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .take(12)
                    .collect::<Vec<_>>()
                    .join(" < ")
            }
            Ok(_) => {}
            Err(e) => return format!("unreadable ({e})"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    last
}

/// A thread's minor-fault count (field 10 of /proc/self/task/TID/stat).
fn minor_faults(tid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(7)?.parse().ok()
}

/// `source.take()` on its own thread, bounded by `CALL_LIMIT`.
type Taken = Result<cowgup_fixtures::pin_source::Held, nix::errno::Errno>;

pub(super) fn take_bounded(source: PinSource, region: Region) -> Step<Result<Taken, String>> {
    Ok(match bounded(source.name(), move || source.take(region))? {
        Ok(taken) => Ok(taken?),
        Err(why) => Err(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_does_not_return_fails_with_its_faults_and_stack() {
        let quick = bounded_for(std::time::Duration::from_secs(5), "a quick call", || 7);
        assert!(matches!(quick, Ok(Ok(7))));
        let stuck = bounded_for(
            std::time::Duration::from_millis(200),
            "a stuck call",
            || std::thread::sleep(std::time::Duration::from_secs(3)),
        );
        match stuck {
            Ok(Err(r)) => {
                assert!(
                    r.starts_with("a stuck call did not return within 0.2 s"),
                    "{r}"
                );
                assert!(
                    r.contains("minor faults") && r.contains("kernel stack"),
                    "{r}"
                );
            }
            other => panic!("expected a livelock report, got {other:?}"),
        }
        assert!(minor_faults(nix::unistd::gettid().as_raw()).is_some());
    }
}
