//! The Dirty COW race (CVE-2016-5195): forced writes into a MAP_PRIVATE
//! ext4 file mapping while another thread zaps it with MADV_DONTNEED. Apart
//! from the one-shot cases because it is a loop against a thread (and, for
//! PTRACE_POKEDATA, a tracer child), bounded by `RACE_FOR`; its judgement at
//! the end is the family's (`untouched`).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowgup_fixtures::force::{proc_mem, proc_mem_without_force, Tracing};
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::{seeded, Step, TrialOptions};
use cowgup_harness::{diag, Outcome};
use nix::errno::Errno;

use super::targets::prepare;
use super::{untouched, Forcer, Target};
use crate::common::{child_body, collect};

/// Iterations are bounded by this much time.
pub const RACE_FOR: Duration = Duration::from_secs(1);
/// The race's pages, chosen in this order from a fixed seed.
pub const RACE_SEED: u64 = 0x00c0_ffee_d1e7_c0de;
const RACE_PAGES: usize = 16;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct RaceResult {
    iterations: usize,
    errno: Option<i32>,
    /// The first time the file's page cache showed anything but the original.
    changed: Option<String>,
}

/// Forced writes into a MAP_PRIVATE ext4 file mapping while a second thread
/// zaps it with MADV_DONTNEED in a loop (Dirty COW's race): after every
/// write the file must read the original (pread), and at the end also on
/// disk (O_DIRECT) and through a fresh MAP_SHARED mapping.
pub fn race(opts: &TrialOptions, forcer: Forcer) -> Step<Outcome> {
    let p = prepare(Target::PrivateFile, opts)?;
    let file = p.file.as_ref().expect("a file target");
    let pattern = p.pattern;
    let order = seeded::picks(
        RACE_SEED,
        1 << 20,
        RACE_PAGES.min(p.target.len / pattern.page),
    );
    let one = |i: usize| -> (usize, u64, u64, u64) {
        let addr = p.target.addr + order[i] * pattern.page;
        let off = (addr - p.target.addr) as u64;
        (
            addr,
            Writer::Parent.word(addr / pattern.page, 0),
            off,
            Writer::Setup.word(addr / pattern.page, 0),
        )
    };
    // One step: write, then read the file's word back (page cache).
    let check_file = |off: u64, want: u64| -> Option<String> {
        let mut w = [0u8; 8];
        match file.file.read_exact_at(&mut w, off) {
            Ok(()) if u64::from_ne_bytes(w) == want => None,
            Ok(()) => Some(format!(
                "the file's page cache at +0x{off:x} holds 0x{:016x}, expected 0x{want:016x} (the original)",
                u64::from_ne_bytes(w)
            )),
            Err(e) => Some(format!("pread() failed: {e}")),
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let zaps = Arc::new(AtomicU64::new(0));
    let region = p.target;
    let start_zapper = {
        let (stop, zaps) = (stop.clone(), zaps.clone());
        move || {
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: zapping our own private file mapping; it refaults from the file.
                    unsafe { libc::madvise(region.ptr().cast(), region.len, libc::MADV_DONTNEED) };
                    zaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        }
    };
    let started = Instant::now();
    let res = match forcer {
        Forcer::ProcMem => {
            let mem = proc_mem()?;
            let zapper = start_zapper();
            let mut res = RaceResult::default();
            while started.elapsed() < RACE_FOR && res.iterations < order.len() {
                let (addr, w, off, want) = one(res.iterations);
                if let Err(e) = nix::sys::uio::pwrite(&mem, &w.to_ne_bytes(), addr as i64) {
                    res.errno = Some(e as i32);
                    break;
                }
                res.iterations += 1;
                if let Some(c) = check_file(off, want) {
                    res.changed = Some(c);
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = zapper.join();
            res
        }
        Forcer::Poke => {
            // The tracer is forked before the zapper thread exists.
            let me = nix::unistd::getpid();
            let (go, report) = (Pipe::new()?, Pipe::new()?);
            let child = spawn(|| {
                child_body(&report, || {
                    go.wait()?;
                    let _tracing = Tracing::seize(me)?;
                    let mut res = RaceResult::default();
                    let t0 = Instant::now();
                    while t0.elapsed() < RACE_FOR && res.iterations < order.len() {
                        let (addr, w, off, want) = one(res.iterations);
                        if let Err(e) = nix::sys::ptrace::write(me, addr as _, w as libc::c_long) {
                            res.errno = Some(e as i32);
                            break;
                        }
                        res.iterations += 1;
                        if let Some(c) = check_file(off, want) {
                            res.changed = Some(c);
                            break;
                        }
                    }
                    Ok(res)
                })
            })?;
            let zapper = start_zapper();
            let sent = go
                .notify()
                .and_then(|()| collect::<RaceResult>(&report, child));
            stop.store(true, Ordering::Relaxed);
            let _ = zapper.join();
            sent?
        }
    };
    let record = serde_json::json!({
        "writer": forcer.name(),
        "seed": format!("0x{RACE_SEED:x}"),
        "iterations": res.iterations,
        "madv_dontneed_calls": zaps.load(Ordering::Relaxed),
        "seconds": started.elapsed().as_secs_f64(),
        "errno": res.errno.map(|e| Errno::from_raw(e).to_string()),
        "page_cache_changed": res.changed,
    });
    cowgup_harness::evidence("race", &record);
    diag(format!("evidence: race: {record}"));
    if let Some(c) = res.changed {
        return Ok(Outcome::Fail(format!(
            "Dirty COW: after forced write #{} via {} racing MADV_DONTNEED, {c}",
            res.iterations,
            forcer.name()
        )));
    }
    if let Some(e) = res.errno {
        if forcer == Forcer::ProcMem {
            if let Some(why) = proc_mem_without_force() {
                return Ok(Outcome::Skip(why));
            }
        }
        return Ok(Outcome::Fail(format!(
            "forced write #{} via {} failed with {} while racing MADV_DONTNEED",
            res.iterations + 1,
            forcer.name(),
            Errno::from_raw(e)
        )));
    }
    if res.iterations == 0 {
        return Ok(Outcome::Fail(
            "no forced write happened within the time bound".into(),
        ));
    }
    // The private mapping may hold the writes or (zapped) the original;
    // the file, on disk and in the page cache, only the original.
    let mut p = p;
    p.views.clear();
    untouched(&p, forcer.name())
}
