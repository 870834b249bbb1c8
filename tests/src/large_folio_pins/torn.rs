//! (c) fork() with a live pin while a thread keeps writing a generation
//! counter: the writer thread, the forks, and `Snapshot`, what the child saw
//! and whether it is one moment of the writer's sweep. Its own file because
//! the writer's word order and the verdict on a snapshot must agree.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin_source::Held;
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::{env, fail, skip, Step, TrialOptions};
use cowgup_harness::diag;
use nix::sys::mman::MapFlags;

use super::{register, TornBacking, TORN_BASE_LEN};
use crate::common::{child_body, collect, ORIGINAL};
use crate::expectations::Observed;

/// The writer thread's word for generation `g`: marked, so zeroes and
/// other data are told apart from every generation.
const GEN_MARK: u64 = 0x6e6e_0000_0000_0000;

fn gen_word(g: u64) -> u64 {
    GEN_MARK | (g & 0xffff_ffff_ffff)
}

/// What the child saw, judged in the order the writer writes: page by page,
/// the head then the last word of each.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub words: usize,
    pub min: u64,
    pub max: u64,
    /// First word (index in writer order) newer than a word written before it.
    pub newer_after_older: Option<(usize, u64, u64)>,
    /// First word that is no generation word at all.
    pub unmarked: Option<(usize, u64)>,
}

impl Snapshot {
    /// Judge words in the writer's order.
    pub fn of(words: impl Iterator<Item = u64>) -> Snapshot {
        let mut s = Snapshot {
            min: u64::MAX,
            ..Snapshot::default()
        };
        let mut prev: Option<u64> = None;
        for (i, w) in words.enumerate() {
            s.words += 1;
            if w & !0xffff_ffff_ffff != GEN_MARK {
                s.unmarked.get_or_insert((i, w));
                continue;
            }
            let g = w & 0xffff_ffff_ffff;
            s.min = s.min.min(g);
            s.max = s.max.max(g);
            if let Some(p) = prev {
                if g > p && s.newer_after_older.is_none() {
                    s.newer_after_older = Some((i, p, g));
                }
            }
            prev = Some(g);
        }
        s
    }

    /// One moment of a writer that sweeps the words in order, generation
    /// after generation, holds generation g+1 in a prefix and g in the rest:
    /// never a word newer than one before it, and at most one generation
    /// apart. `during`: the generations the writer was in from just before
    /// fork() to just after it returned.
    pub fn verdict(&self, during: (u64, u64)) -> Result<(), String> {
        if let Some((i, w)) = self.unmarked {
            return Err(format!(
                "word {i} (page {}) holds 0x{w:016x}, which the writer never wrote",
                i / 2
            ));
        }
        if let Some((i, older, newer)) = self.newer_after_older {
            return Err(format!(
                "word {i} (page {}) holds generation {newer}, newer than generation {older} in the word \
                 written just before it: the pages were copied at different moments",
                i / 2
            ));
        }
        if self.max > self.min + 1 {
            return Err(format!(
                "generations {}..={} seen together: at any moment at most two adjacent ones exist",
                self.min, self.max
            ));
        }
        let (start, end) = during;
        if self.min + 1 < start || self.max > end {
            return Err(format!(
                "generations {}..={} seen, but fork() ran while the writer was in {start}..={end}",
                self.min, self.max
            ));
        }
        Ok(())
    }
}

/// The words the writer writes, in its order: head and last word per page.
fn gen_offsets(region: Region) -> impl Iterator<Item = usize> {
    let page = env().page_size;
    (0..region.len / page).flat_map(move |i| [i * page, (i + 1) * page - 8])
}

fn torn_region(opts: &TrialOptions, t: TornBacking) -> Step<(Region, usize)> {
    let page = env().page_size;
    match t {
        TornBacking::BasePages => {
            let r = mem::map_anon(TORN_BASE_LEN, RW, MapFlags::MAP_PRIVATE)
                .or_else(|e| fail(format!("mmap() failed: {e}")))?;
            r.no_thp()?;
            r.touch_write(page);
            Ok((r, page))
        }
        TornBacking::Folio(f) => {
            let m = f.backing().setup(opts)?;
            Ok((m.region, m.pattern.unit))
        }
    }
}

/// How many forks the writer-thread case makes at most, and for how long.
const TORN_FORKS: usize = 16;
const TORN_BUDGET: std::time::Duration = std::time::Duration::from_secs(4);
/// How long to wait, before each fork(), for the writer to show it runs.
const WRITER_SEEN_WITHIN: std::time::Duration = std::time::Duration::from_millis(50);

/// (c) A live pin makes fork() copy the pages for the child at once instead
/// of sharing them; another thread keeps writing. The child must still see
/// the memory as it was at one moment (the "fork tearing" shape: Jann Horn,
/// 20250603-fork-tearing-v1-0-a7f64b7cfc96@google.com).
pub(super) fn torn_fork(opts: &TrialOptions, t: TornBacking) -> Step<Observed> {
    let (region, unit) = torn_region(opts, t)?;
    for off in gen_offsets(region) {
        // SAFETY: inside the mapped region, 8-byte aligned.
        unsafe { std::ptr::write_volatile(region.ptr().add(off).cast::<u64>(), gen_word(0)) };
    }
    let mut pin = register(region, "the region")?;
    let writer = GenWriter::start(region);
    let result = fork_until_torn(region, unit, &writer);
    let sweeps = writer.stop()?;
    let (tally, bad) = result?;
    cowgup_harness::evidence(
        "torn_fork",
        serde_json::json!({
            "forks": tally.forks,
            "forks_with_the_writer_running": tally.running_at_fork,
            "forks_the_writer_advanced_during": tally.raced,
            "writer_sweeps": sweeps,
            "words": 2 * region.len / env().page_size,
        }),
    );
    if let Some(observed) = bad {
        return Ok(observed);
    }
    if tally.running_at_fork == 0 {
        return skip(format!(
            "the writer thread was never seen running right before fork() ({} forks, {sweeps} \
             sweeps in all, waiting up to {} ms each): nothing raced, so nothing was tested",
            tally.forks,
            WRITER_SEEN_WITHIN.as_millis()
        ));
    }
    pin_after_copies(opts, region, unit, &mut pin, &tally)
}

/// The writer thread: sweeps the words in `gen_offsets` order, generation
/// after generation, until stopped.
struct GenWriter {
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Words written so far, published every 128: shows the writer runs
    /// even when one sweep takes longer than the wait (1 GiB).
    progress: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl GenWriter {
    fn start(region: Region) -> GenWriter {
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let thread = {
            let (generation, stop, progress) = (generation.clone(), stop.clone(), progress.clone());
            let addr = region.addr;
            let offs: Vec<usize> = gen_offsets(region).collect();
            std::thread::spawn(move || {
                let (mut g, mut n) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    g += 1;
                    generation.store(g, Ordering::SeqCst);
                    for &off in &offs {
                        // SAFETY: the region stays mapped until the thread is joined.
                        unsafe { std::ptr::write_volatile((addr + off) as *mut u64, gen_word(g)) };
                        n += 1;
                        if n % 128 == 0 {
                            progress.store(n, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        GenWriter {
            generation,
            stop,
            progress,
            thread,
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether the writer's progress moves within `WRITER_SEEN_WITHIN`.
    fn seen_running(&self) -> bool {
        let seen = self.progress.load(Ordering::Relaxed);
        let wait = std::time::Instant::now();
        let mut running = false;
        while !running && wait.elapsed() < WRITER_SEEN_WITHIN {
            std::hint::spin_loop();
            running = self.progress.load(Ordering::Relaxed) != seen;
        }
        running
    }

    /// Stop the writer and join it: how many sweeps it began.
    fn stop(self) -> Step<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let sweeps = self.generation();
        if self.thread.join().is_err() {
            return fail("the writer thread panicked");
        }
        Ok(sweeps)
    }
}

/// How the forks went.
#[derive(Default)]
struct Tally {
    forks: usize,
    /// Forks during which the writer's generation advanced.
    raced: usize,
    /// Forks made right after the writer was seen running.
    running_at_fork: usize,
}

/// Fork up to `TORN_FORKS` times within `TORN_BUDGET` while the writer
/// runs, until a child sees no single moment (or lost a page at fork()).
fn fork_until_torn(
    region: Region,
    unit: usize,
    writer: &GenWriter,
) -> Step<(Tally, Option<Observed>)> {
    let deadline = std::time::Instant::now() + TORN_BUDGET;
    let mut tally = Tally::default();
    // Let the writer get going.
    while writer.generation() < 2 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    while tally.forks < TORN_FORKS && std::time::Instant::now() < deadline {
        let report = Pipe::new()?;
        // Fork only while the writer is seen running: its generation
        // moves within a short wait. (A kernel that write-protects the
        // pages before copying stalls the writer during fork(), so
        // "it advanced during fork()" cannot be the precondition.)
        let running = writer.seen_running();
        let start = writer.generation();
        let child = spawn(|| {
            child_body(&report, || {
                let ptes = pagemap::read(region, unit).or_else(fail)?;
                if ptes.iter().any(|p| !p.populated()) {
                    return Ok(None);
                }
                Ok(Some(Snapshot::of(gen_offsets(region).map(|off| {
                    // SAFETY: inside the child's copy of the region.
                    unsafe { std::ptr::read_volatile(region.ptr().add(off).cast::<u64>()) }
                }))))
            })
        })?;
        let end = writer.generation();
        tally.forks += 1;
        if running {
            tally.running_at_fork += 1;
        }
        if end > start {
            tally.raced += 1;
        }
        let Some(snap) = collect::<Option<Snapshot>>(&report, child)? else {
            return Ok((tally, Some(crate::common::lost_at_fork())));
        };
        if let Err(why) = snap.verdict((start, end)) {
            cowgup_harness::evidence("snapshot", &snap);
            let forks = tally.forks;
            return Ok((
                tally,
                Some(Observed::Leak(format!(
                    "Torn fork: the child of fork #{forks} sees no single moment of the parent's memory: {why}"
                ))),
            ));
        }
    }
    Ok((tally, None))
}

/// The pin must still see the parent's memory after all those copies.
fn pin_after_copies(
    opts: &TrialOptions,
    region: Region,
    unit: usize,
    pin: &mut Held,
    tally: &Tally,
) -> Step<Observed> {
    let pattern = opts.pattern(unit);
    pattern.fill(region, Writer::Setup);
    pattern.write(region, Writer::Parent);
    let data = pin.check(region, pattern, ORIGINAL.written_by(Writer::Parent))?;
    diag(format!(
        "evidence: {} forks with a live pin, the writer running at {} of them and \
         advancing during {}; every child saw one moment",
        tally.forks, tally.running_at_fork, tally.raced
    ));
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(m) => Observed::Leak(format!(
            "Longterm R/W pin is not reliable after fork() copied the pinned pages: {m}"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_moment_is_a_newer_prefix_and_nothing_else() {
        let w = |gs: &[u64]| Snapshot::of(gs.iter().map(|&g| gen_word(g)));
        assert_eq!(w(&[5, 5, 4, 4]).verdict((5, 5)), Ok(()));
        assert_eq!(w(&[4, 4, 4, 4]).verdict((5, 6)), Ok(()));
        assert!(w(&[4, 5, 5, 5])
            .verdict((5, 5))
            .unwrap_err()
            .contains("newer than"));
        assert!(w(&[6, 5, 4])
            .verdict((5, 6))
            .unwrap_err()
            .contains("adjacent"));
        assert!(w(&[9, 9])
            .verdict((5, 6))
            .unwrap_err()
            .contains("while the writer"));
        let zero = Snapshot::of([gen_word(3), 0].into_iter());
        assert!(zero.verdict((3, 3)).unwrap_err().contains("never wrote"));
    }
}
