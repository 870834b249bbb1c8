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
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::{seeded, Step, TrialOptions};
use cowgup_harness::{diag, Outcome};
use nix::errno::Errno;

use super::targets::{prepare, Prepared};
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
    let plan = RacePlan::new(&p);
    let started = Instant::now();
    let (res, zaps) = match forcer {
        Forcer::ProcMem => race_proc_mem(&plan, started)?,
        Forcer::Poke => race_poke(&plan)?,
    };
    let record = serde_json::json!({
        "writer": forcer.name(),
        "seed": format!("0x{RACE_SEED:x}"),
        "iterations": res.iterations,
        "madv_dontneed_calls": zaps,
        "seconds": started.elapsed().as_secs_f64(),
        "errno": res.errno.map(|e| Errno::from_raw(e).to_string()),
        "page_cache_changed": res.changed,
    });
    cowgup_harness::evidence("race", &record);
    diag(format!("evidence: race: {record}"));
    judge_race(p, forcer, res)
}

/// The race's writes: which pages, in which order, and the file they must
/// never reach.
struct RacePlan<'a> {
    target: Region,
    page: usize,
    order: Vec<usize>,
    file: &'a std::fs::File,
}

impl RacePlan<'_> {
    fn new(p: &Prepared) -> RacePlan<'_> {
        let page = p.pattern.page;
        RacePlan {
            target: p.target,
            page,
            order: seeded::picks(RACE_SEED, 1 << 20, RACE_PAGES.min(p.target.len / page)),
            file: &p.file.as_ref().expect("a file target").file,
        }
    }

    /// Forced writes by `write` (address, word) until `since` is `RACE_FOR`
    /// old, a write fails or the page cache shows one of them. The same
    /// loop for both writers, so that they race the same way.
    fn run(
        &self,
        since: Instant,
        mut write: impl FnMut(usize, u64) -> nix::Result<()>,
    ) -> RaceResult {
        let mut res = RaceResult::default();
        while since.elapsed() < RACE_FOR && res.iterations < self.order.len() {
            let addr = self.target.addr + self.order[res.iterations] * self.page;
            let page_no = addr / self.page;
            if let Err(e) = write(addr, Writer::Parent.word(page_no, 0)) {
                res.errno = Some(e as i32);
                break;
            }
            res.iterations += 1;
            let off = (addr - self.target.addr) as u64;
            if let Some(c) = self.file_changed(off, Writer::Setup.word(page_no, 0)) {
                res.changed = Some(c);
                break;
            }
        }
        res
    }

    /// The file's word at `off` read back through the page cache, if it is
    /// not `want` (the original).
    fn file_changed(&self, off: u64, want: u64) -> Option<String> {
        let mut w = [0u8; 8];
        match self.file.read_exact_at(&mut w, off) {
            Ok(()) if u64::from_ne_bytes(w) == want => None,
            Ok(()) => Some(format!(
                "the file's page cache at +0x{off:x} holds 0x{:016x}, expected 0x{want:016x} (the original)",
                u64::from_ne_bytes(w)
            )),
            Err(e) => Some(format!("pread() failed: {e}")),
        }
    }
}

/// A thread zapping the target with MADV_DONTNEED until stopped.
struct Zapper {
    stop: Arc<AtomicBool>,
    zaps: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Zapper {
    fn start(region: Region) -> Zapper {
        let stop = Arc::new(AtomicBool::new(false));
        let zaps = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, zaps) = (stop.clone(), zaps.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: zapping our own private file mapping; it refaults from the file.
                    unsafe { libc::madvise(region.ptr().cast(), region.len, libc::MADV_DONTNEED) };
                    zaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Zapper { stop, zaps, thread }
    }

    /// Stop and join the thread: how many MADV_DONTNEED calls it made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.zaps.load(Ordering::Relaxed)
    }
}

/// The race with pwrite() to /proc/self/mem from this process.
fn race_proc_mem(plan: &RacePlan, started: Instant) -> Step<(RaceResult, u64)> {
    let mem = proc_mem()?;
    let zapper = Zapper::start(plan.target);
    let res = plan.run(started, |addr, w| {
        nix::sys::uio::pwrite(&mem, &w.to_ne_bytes(), addr as i64).map(drop)
    });
    Ok((res, zapper.stop()))
}

/// The race with PTRACE_POKEDATA from a tracer child.
fn race_poke(plan: &RacePlan) -> Step<(RaceResult, u64)> {
    // The tracer is forked before the zapper thread exists.
    let me = nix::unistd::getpid();
    let (go, report) = (Pipe::new()?, Pipe::new()?);
    let child = spawn(|| {
        child_body(&report, || {
            go.wait()?;
            let _tracing = Tracing::seize(me)?;
            Ok(plan.run(Instant::now(), |addr, w| {
                nix::sys::ptrace::write(me, addr as _, w as libc::c_long)
            }))
        })
    })?;
    let zapper = Zapper::start(plan.target);
    let sent = go
        .notify()
        .and_then(|()| collect::<RaceResult>(&report, child));
    let zaps = zapper.stop();
    Ok((sent?, zaps))
}

/// A page cache that changed is Dirty COW; a refused write fails (or skips
/// where /proc/self/mem does not force); otherwise the file must hold the
/// original everywhere.
fn judge_race(mut p: Prepared, forcer: Forcer, res: RaceResult) -> Step<Outcome> {
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
    p.views.clear();
    untouched(&p, forcer.name())
}
