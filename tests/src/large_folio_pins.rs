//! Partial and repeated long-term pins of large folios (PMD THPs, mTHPs,
//! hugetlb pages) through io_uring fixed buffers, whose registration
//! (io_uring/rsrc.c io_sqe_buffer_register) coalesces the pages of one folio
//! into one bvec and keeps one pin per folio, and whose pins decide whether
//! fork() shares a folio or copies it for the child (folio_maybe_dma_pinned()
//! in fork's copy path). Four shapes, each a case crossed with the folio
//! sizes the host has:
//! - two buffers over the halves of one folio, one unregistered, then fork():
//!   the remaining pin must still see the parent's write;
//! - 64 rings pinning the same folio, released in a fixed pseudo-random
//!   order: every registration granted, the last pin still effective, pins
//!   balanced (the runner's pin-balance check);
//! - fork() with a live pin while a thread keeps writing a generation
//!   counter: the child must see the memory as it was at one moment;
//! - buffers over several folios, partial folios, mixed folio sizes and one
//!   page mapped twice (the CVE-2023-2598 shape): `WRITE_FIXED` must write
//!   exactly the bytes the mapping holds.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cowgup_fixtures::anon::{self, prove_thp, AnonBacking, AnonMemory, ThpShape};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin::FixedBuffer;
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::seeded;
use cowgup_fixtures::stamp::{identify, Pattern, Writer};
use cowgup_fixtures::{env, fail, kb, skip, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Knob, Outcome};
use nix::sys::mman::{MapFlags, MmapAdvise};

use crate::common::{child_body, collect, Checker, ORIGINAL};
use crate::expectations::{self, judge, Mapping, Mechanism, MemoryClass, Observed, Subject};
use crate::scenario::{Body, Family, Scenario};

/// One large folio kind the cases run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folio {
    /// Anonymous THP of this size (the PMD size, or an mTHP size).
    Thp(usize),
    /// Private anonymous hugetlb page of this size.
    Hugetlb(usize),
}

impl Folio {
    fn suffix(self) -> String {
        match self {
            Folio::Thp(s) => format!("THP ({})", kb(s)),
            Folio::Hugetlb(s) => format!("hugetlb ({})", kb(s)),
        }
    }

    fn size(self) -> usize {
        match self {
            Folio::Thp(s) | Folio::Hugetlb(s) => s,
        }
    }

    fn group(self) -> String {
        match self {
            Folio::Thp(s) => format!("anon THP {}", kb(s)),
            Folio::Hugetlb(s) => format!("anon hugetlb {}", kb(s)),
        }
    }

    /// The one-folio backing (THP only at the PMD size).
    fn backing(self) -> AnonBacking {
        match self {
            Folio::Thp(size) => AnonBacking::Thp {
                shape: ThpShape::Pmd,
                size,
            },
            Folio::Hugetlb(size) => AnonBacking::Hugetlb { size },
        }
    }

    fn subject(self, kernel: Option<expectations::Version>) -> Subject {
        Subject {
            mechanism: Mechanism::Fork,
            memory: match self {
                Folio::Thp(_) => MemoryClass::Anon,
                Folio::Hugetlb(_) => MemoryClass::AnonHugetlb,
            },
            size: Some(self.size()),
            mapping: Mapping::Private,
            kernel,
        }
    }

    fn knobs(self, pmd: Option<usize>) -> Vec<Knob> {
        self.backing().knobs(pmd)
    }
}

/// The large folios of this host that one-folio cases run on: the PMD THP
/// and every hugetlb size.
fn one_folio_kinds(caps: &Capabilities) -> Vec<Folio> {
    caps.pmd_size
        .map(Folio::Thp)
        .into_iter()
        .chain(caps.hugetlb.iter().map(|p| Folio::Hugetlb(p.size)))
        .collect()
}

/// How many rings pin the same folio in the repeated-pin case.
pub const RINGS: usize = 64;
/// The seed of the release order (xorshift64*), fixed so runs repeat.
pub const RELEASE_SEED: u64 = 0x00c0_ffee_5eed_0001;

/// The shapes of (d): what a fixed buffer spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// `n` folios of one kind, from the middle of the first to the middle
    /// of the last (at most 1 MiB of each partial folio).
    Folios { folio: Folio, n: usize },
    /// A PMD THP, then base pages of a NOHUGEPAGE mapping right after it.
    ThpThenBasePages(usize),
    /// Base pages, then a PMD THP right after them.
    BasePagesThenThp(usize),
    /// One memfd page mapped at two adjacent addresses, then another page.
    PageTwice,
    /// One hugetlb memfd page mapped at two adjacent addresses; the buffer
    /// is the end of the first view and the start of the second.
    HugePageTwice(usize),
}

impl Span {
    fn name(self) -> String {
        match self {
            Span::Folios { folio, n } => format!(
                "WRITE_FIXED of a fixed buffer over {n} folios, from mid-folio to mid-folio ... with {}",
                folio.suffix()
            ),
            Span::ThpThenBasePages(s) => format!(
                "WRITE_FIXED of a fixed buffer over a THP and the base pages after it ... with THP ({})",
                kb(s)
            ),
            Span::BasePagesThenThp(s) => format!(
                "WRITE_FIXED of a fixed buffer over base pages and the THP after them ... with THP ({})",
                kb(s)
            ),
            Span::PageTwice => "WRITE_FIXED of a fixed buffer with one page mapped twice \
                                (CVE-2023-2598 shape) ... with memfd"
                .into(),
            Span::HugePageTwice(s) => format!(
                "WRITE_FIXED of a fixed buffer with one page mapped twice (CVE-2023-2598 shape) \
                 ... with memfd hugetlb ({})",
                kb(s)
            ),
        }
    }

    fn needs(self) -> Vec<Need> {
        let mut v = vec![Need::IoUring];
        match self {
            Span::Folios {
                folio: Folio::Hugetlb(size),
                n,
            } => v.push(Need::HugetlbPages {
                size,
                count: n as u64,
            }),
            Span::HugePageTwice(size) => v.push(Need::HugetlbPages { size, count: 1 }),
            _ => {}
        }
        v
    }

    fn knobs(self, pmd: Option<usize>) -> Vec<Knob> {
        match self {
            Span::Folios { folio, .. } => folio.knobs(pmd),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).knobs(pmd),
            Span::PageTwice | Span::HugePageTwice(_) => vec![],
        }
    }

    fn group(self) -> String {
        match self {
            Span::Folios { folio, .. } => folio.group(),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).group(),
            Span::PageTwice => "memfd".into(),
            Span::HugePageTwice(s) => format!("memfd hugetlb {}", kb(s)),
        }
    }
}

/// Every shape of (d) on this host.
pub fn spans(caps: &Capabilities) -> Vec<Span> {
    let mut v: Vec<Span> = caps
        .thp_sizes
        .iter()
        .map(|&s| Span::Folios {
            folio: Folio::Thp(s),
            n: 4,
        })
        .collect();
    v.extend(caps.hugetlb.iter().map(|p| Span::Folios {
        folio: Folio::Hugetlb(p.size),
        n: 2,
    }));
    if let Some(pmd) = caps.pmd_size {
        v.push(Span::ThpThenBasePages(pmd));
        v.push(Span::BasePagesThenThp(pmd));
    }
    v.push(Span::PageTwice);
    v.extend(caps.hugetlb.iter().map(|p| Span::HugePageTwice(p.size)));
    v
}

/// What the writer-thread case forks with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornBacking {
    /// 512 base pages (2 MiB, MADV_NOHUGEPAGE): fork copies them one by one.
    BasePages,
    Folio(Folio),
}

impl TornBacking {
    fn suffix(self) -> String {
        match self {
            TornBacking::BasePages => format!("base pages ({})", kb(TORN_BASE_LEN)),
            TornBacking::Folio(f) => f.suffix(),
        }
    }
}

const TORN_BASE_LEN: usize = 2 << 20;

/// The family's trials on this host.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let pmd = caps.pmd_size;
    let scenario =
        |name: String, group: String, needs: Vec<Need>, knobs: Vec<Knob>, body: Body| Scenario {
            name,
            family: Family::LARGE_FOLIO_PINS,
            group,
            needs,
            knobs,
            pins: true,
            body,
        };
    let with_io_uring = |f: Folio| -> Vec<Need> {
        f.backing()
            .needs()
            .into_iter()
            .chain([Need::IoUring])
            .collect()
    };
    let mut v = Vec::new();
    // One folio, two ways of leaving it pinned before fork().
    let one_folio_cases: [(String, OneFolioCase); 2] = [
        (
            "fork() after unregistering one of two fixed buffers over the halves of one folio"
                .into(),
            halves,
        ),
        (
            format!("{RINGS} fixed buffers over one folio released in random order, then fork()"),
            many_rings,
        ),
    ];
    for (desc, run) in one_folio_cases {
        for f in one_folio_kinds(caps) {
            let subject = f.subject(kernel);
            v.push(scenario(
                format!("{desc} ... with {}", f.suffix()),
                f.group(),
                with_io_uring(f),
                f.knobs(pmd),
                Arc::new(move |opts| Ok(judge(&subject, run(&f.backing().setup(opts)?)?))),
            ));
        }
    }
    let torn: Vec<TornBacking> = std::iter::once(TornBacking::BasePages)
        .chain(one_folio_kinds(caps).into_iter().map(TornBacking::Folio))
        .collect();
    for t in torn {
        let (group, needs, knobs, subject) = match t {
            TornBacking::BasePages => (
                "anon base page".to_string(),
                vec![Need::IoUring],
                vec![],
                Subject {
                    mechanism: Mechanism::Fork,
                    memory: MemoryClass::Anon,
                    size: None,
                    mapping: Mapping::Private,
                    kernel,
                },
            ),
            TornBacking::Folio(f) => (f.group(), with_io_uring(f), f.knobs(pmd), f.subject(kernel)),
        };
        v.push(scenario(
            format!(
                "fork() with a fixed buffer while a thread writes: the child sees one moment ... with {}",
                t.suffix()
            ),
            group,
            needs,
            knobs,
            Arc::new(move |opts| {
                // A page lost at fork() is fork()'s own behaviour; anything
                // else the child saw is judged as a torn copy.
                Ok(match torn_fork(opts, t)? {
                    o @ Observed::LostAtFork(_) => judge(&subject, o),
                    o => judge(
                        &Subject {
                            mechanism: Mechanism::ThreadedFork,
                            ..subject
                        },
                        o,
                    ),
                })
            }),
        ));
    }
    for s in spans(caps) {
        v.push(scenario(
            s.name(),
            s.group(),
            s.needs(),
            s.knobs(pmd),
            Arc::new(move |_| write_fixed_span(s)),
        ));
    }
    v
}

/// A case run on one folio pinned before fork().
type OneFolioCase = fn(&AnonMemory) -> Step<Observed>;

/// An io_uring fixed buffer the case needs granted; a refusal says why.
fn register(region: Region, which: &str) -> Step<Held> {
    match PinSource::IoUringFixed.take(region)? {
        Ok(h) => Ok(h),
        Err(nix::errno::Errno::ENOMEM) => skip(format!(
            "io_uring_register_buffers() of {which} ({} bytes) refused with ENOMEM: {}",
            region.len,
            memlock()
        )),
        Err(e) => fail(format!(
            "io_uring_register_buffers() of {which} ({} bytes) failed with {e}",
            region.len
        )),
    }
}

/// RLIMIT_MEMLOCK as set, and whether io_uring accounts against it (it
/// does not for CAP_IPC_LOCK).
fn memlock() -> String {
    let lim = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK);
    // CAP_IPC_LOCK is capability 14 of CapEff in /proc/self/status.
    let ipc_lock = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .map_or("unknown".to_string(), |caps| {
            (caps >> 14 & 1 == 1).to_string()
        });
    match lim {
        Ok((cur, max)) => format!(
            "RLIMIT_MEMLOCK cur {cur} max {max} bytes (io_uring accounts pinned pages against it \
             unless the process has CAP_IPC_LOCK; CAP_IPC_LOCK here: {ipc_lock})"
        ),
        Err(e) => format!("RLIMIT_MEMLOCK unreadable: {e}"),
    }
}

/// (a) Two buffers over the two halves of one folio; the lower one is
/// unregistered; fork(); the parent writes. The upper buffer's pin keeps the
/// folio maybe-pinned, so fork() must have copied it for the child: the pin
/// sees the parent's write, and the child keeps the original.
fn halves(m: &AnonMemory) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let half = region.len / 2;
    let (lower, upper) = (region.sub(0, half), region.sub(half, half));
    let lower_pin = register(lower, "the lower half")?;
    let mut upper_pin = register(upper, "the upper half")?;
    drop(lower_pin);
    let before = View::capture(upper, pattern.unit)?;
    let checker = match Checker::fork(region, pattern)? {
        Ok(c) => c,
        Err(observed) => return Ok(observed),
    };
    pattern.write(region, Writer::Parent);
    let child = checker.judge_parents_write(region)?;
    let after = View::capture(upper, pattern.unit)?;
    let data = upper_pin.check(upper, pattern, ORIGINAL.written_by(Writer::Parent))?;
    evidence::compare_and_agree(
        "upper half before fork() vs after the parent's write",
        ("before", &before),
        ("after", &after),
        &data,
        false,
        "the parent's write went to a new page, away from the remaining pin",
    )?;
    Ok(match (data, child) {
        (Err(m), _) => Observed::Leak(format!(
            "Longterm R/W pin is not reliable: the fixed buffer left over the upper half does not see \
             the parent's write after the lower half's buffer was unregistered and fork() ran: {m}"
        )),
        (Ok(()), child) => child,
    })
}

/// (b) `RINGS` rings each register the whole folio; one sees the original
/// data through its pin; all but the last in the release order are
/// released; fork(); the parent writes: the last pin must see the write.
fn many_rings(m: &AnonMemory) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let started = std::time::Instant::now();
    let mut rings: Vec<Option<Held>> = Vec::with_capacity(RINGS);
    for i in 0..RINGS {
        rings.push(Some(register(region, &format!("ring {i} of {RINGS}"))?));
    }
    let registered_ms = started.elapsed().as_millis();
    let order = seeded::shuffle(RINGS, RELEASE_SEED);
    let last = order[RINGS - 1];
    let first = order[0];
    let probe = rings[first].as_mut().expect("registered");
    if let Err(m) = probe.check(region, pattern, ORIGINAL)? {
        return fail(format!(
            "ring {first} of {RINGS} does not see the original data through its pin: {m}"
        ));
    }
    for &i in &order[..RINGS - 1] {
        drop(rings[i].take());
    }
    cowgup_harness::evidence(
        "rings",
        serde_json::json!({
            "rings": RINGS,
            "bytes_each": region.len,
            "registered_ms": registered_ms,
            "seed": format!("0x{RELEASE_SEED:x}"),
            "release_order_head": &order[..8.min(RINGS)],
            "left": last,
        }),
    );
    let before = View::capture(region, pattern.unit)?;
    let checker = match Checker::fork(region, pattern)? {
        Ok(c) => c,
        Err(observed) => return Ok(observed),
    };
    pattern.write(region, Writer::Parent);
    let child = checker.judge_parents_write(region)?;
    let after = View::capture(region, pattern.unit)?;
    let held = rings[last].as_mut().expect("kept");
    let data = held.check(region, pattern, ORIGINAL.written_by(Writer::Parent))?;
    evidence::compare_and_agree(
        "the folio before fork() vs after the parent's write",
        ("before", &before),
        ("after", &after),
        &data,
        false,
        "the parent's write went to a new page, away from the last pin",
    )?;
    drop(rings);
    Ok(match (data, child) {
        (Err(m), _) => Observed::Leak(format!(
            "Longterm R/W pin is not reliable: ring {last}, the last of {RINGS} pins of the folio, does \
             not see the parent's write after the other {} were released and fork() ran: {m}",
            RINGS - 1
        )),
        (Ok(()), child) => child,
    })
}

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
fn torn_fork(opts: &TrialOptions, t: TornBacking) -> Step<Observed> {
    let (region, unit) = torn_region(opts, t)?;
    for off in gen_offsets(region) {
        // SAFETY: inside the mapped region, 8-byte aligned.
        unsafe { std::ptr::write_volatile(region.ptr().add(off).cast::<u64>(), gen_word(0)) };
    }
    let mut pin = register(region, "the region")?;
    let generation = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Words written so far, published every 128: shows the writer runs
    // even when one sweep takes longer than the wait (1 GiB).
    let progress = Arc::new(AtomicU64::new(0));
    let writer = {
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
    let result = (|| -> Step<(usize, usize, usize, Option<Observed>)> {
        let deadline = std::time::Instant::now() + TORN_BUDGET;
        let (mut forks, mut raced, mut running_at_fork) = (0, 0, 0);
        // Let the writer get going.
        while generation.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        while forks < TORN_FORKS && std::time::Instant::now() < deadline {
            let report = Pipe::new()?;
            // Fork only while the writer is seen running: its generation
            // moves within a short wait. (A kernel that write-protects the
            // pages before copying stalls the writer during fork(), so
            // "it advanced during fork()" cannot be the precondition.)
            let seen = progress.load(Ordering::Relaxed);
            let wait = std::time::Instant::now();
            let mut running = false;
            while !running && wait.elapsed() < WRITER_SEEN_WITHIN {
                std::hint::spin_loop();
                running = progress.load(Ordering::Relaxed) != seen;
            }
            let start = generation.load(Ordering::SeqCst);
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
            let end = generation.load(Ordering::SeqCst);
            forks += 1;
            if running {
                running_at_fork += 1;
            }
            if end > start {
                raced += 1;
            }
            let Some(snap) = collect::<Option<Snapshot>>(&report, child)? else {
                return Ok((
                    forks,
                    raced,
                    running_at_fork,
                    Some(crate::common::lost_at_fork()),
                ));
            };
            if let Err(why) = snap.verdict((start, end)) {
                cowgup_harness::evidence("snapshot", &snap);
                return Ok((
                    forks,
                    raced,
                    running_at_fork,
                    Some(Observed::Leak(format!(
                        "Torn fork: the child of fork #{forks} sees no single moment of the parent's memory: {why}"
                    ))),
                ));
            }
        }
        Ok((forks, raced, running_at_fork, None))
    })();
    stop.store(true, Ordering::Relaxed);
    let sweeps = generation.load(Ordering::SeqCst);
    if writer.join().is_err() {
        return fail("the writer thread panicked");
    }
    let (forks, raced, running_at_fork, bad) = result?;
    cowgup_harness::evidence(
        "torn_fork",
        serde_json::json!({
            "forks": forks,
            "forks_with_the_writer_running": running_at_fork,
            "forks_the_writer_advanced_during": raced,
            "writer_sweeps": sweeps,
            "words": 2 * region.len / env().page_size,
        }),
    );
    if let Some(observed) = bad {
        return Ok(observed);
    }
    if running_at_fork == 0 {
        return skip(format!(
            "the writer thread was never seen running right before fork() ({forks} forks, {sweeps} \
             sweeps in all, waiting up to {} ms each): nothing raced, so nothing was tested",
            WRITER_SEEN_WITHIN.as_millis()
        ));
    }
    // The pin must still see the parent's memory after all those copies.
    let pattern = opts.pattern(unit);
    pattern.fill(region, Writer::Setup);
    pattern.write(region, Writer::Parent);
    let data = pin.check(region, pattern, ORIGINAL.written_by(Writer::Parent))?;
    diag(format!(
        "evidence: {forks} forks with a live pin, the writer running at {running_at_fork} of them and \
         advancing during {raced}; every child saw one moment"
    ));
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(m) => Observed::Leak(format!(
            "Longterm R/W pin is not reliable after fork() copied the pinned pages: {m}"
        )),
    })
}

/// A mapping to register, and how to clean nothing up (trial processes exit).
struct SpanMemory {
    /// The registered range.
    buffer: Region,
    /// Two addresses that must map one physical page (the setup is proven
    /// by their PFNs, as root).
    twice: Option<(usize, usize)>,
}

/// Spans are checked word by word whatever the run's options: what
/// `WRITE_FIXED` wrote must equal the mapping byte for byte.
fn thorough(unit: usize) -> Pattern {
    Pattern::with_unit(unit, true)
}

/// `at` mapped MAP_SHARED, read-write, from `fd` at `off`.
fn shared_fixed(at: Region, fd: i32, off: i64) -> Step<()> {
    mem::map_fixed(at, RW, MapFlags::MAP_SHARED, Some(fd), off)
}

fn span_setup(s: Span) -> Step<SpanMemory> {
    let page = env().page_size;
    Ok(match s {
        Span::Folios {
            folio: Folio::Thp(size),
            n,
        } => {
            let r = anon::map_thps(size, n)?;
            let part = (size / 2).min(1 << 20);
            thorough(page).fill(r, Writer::Setup);
            SpanMemory {
                buffer: Region::new(r.addr + size - part, (n - 2) * size + 2 * part),
                twice: None,
            }
        }
        Span::Folios {
            folio: Folio::Hugetlb(size),
            n,
        } => {
            let flags = MapFlags::MAP_PRIVATE | mem::hugetlb_flags(size);
            let r = mem::map_anon(n * size, RW, flags)
                .or_else(|e| skip(format!("need more free huge pages: {e}")))?;
            let part = (size / 2).min(1 << 20);
            thorough(size).fill(r, Writer::Setup);
            SpanMemory {
                buffer: Region::new(r.addr + size - part, (n - 2) * size + 2 * part),
                twice: None,
            }
        }
        Span::ThpThenBasePages(size) | Span::BasePagesThenThp(size) => {
            let r = mem::map_aligned(2 * size, RW)?;
            let (lo, hi) = (r.sub(0, size), r.sub(size, size));
            let thp_first = matches!(s, Span::ThpThenBasePages(_));
            let (thp, base) = if thp_first { (lo, hi) } else { (hi, lo) };
            base.no_thp()?;
            thp.madvise(MmapAdvise::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
            thp.sub(0, page).touch_write(page);
            prove_thp(thp, size)?;
            thorough(page).fill(r, Writer::Setup);
            let tail = 4 * page;
            SpanMemory {
                buffer: if thp_first {
                    Region::new(thp.addr, size + tail)
                } else {
                    Region::new(thp.addr - tail, size + tail)
                },
                twice: None,
            }
        }
        Span::PageTwice => {
            let fd =
                nix::sys::memfd::memfd_create("cowgup-twice", nix::sys::memfd::MFdFlags::empty())
                    .or_else(|e| fail(format!("memfd_create() failed: {e}")))?;
            nix::unistd::ftruncate(&fd, 2 * page as i64)
                .or_else(|e| fail(format!("ftruncate() failed: {e}")))?;
            let at = mem::reserve(3 * page, page)?.addr;
            let raw = fd.as_raw_fd();
            shared_fixed(Region::new(at, page), raw, 0)?;
            shared_fixed(Region::new(at + page, page), raw, 0)?;
            shared_fixed(Region::new(at + 2 * page, page), raw, page as i64)?;
            let p = thorough(page);
            p.fill(Region::new(at, page), Writer::Setup);
            p.fill(Region::new(at + 2 * page, page), Writer::Setup);
            SpanMemory {
                buffer: Region::new(at, 3 * page),
                twice: Some((at, at + page)),
            }
        }
        Span::HugePageTwice(size) => {
            let flags = nix::sys::memfd::MFdFlags::from_bits_retain(
                libc::MFD_HUGETLB | ((size.trailing_zeros()) << libc::MFD_HUGE_SHIFT),
            );
            let fd = nix::sys::memfd::memfd_create("cowgup-twice-huge", flags).or_else(|e| {
                skip(format!(
                    "memfd_create(MFD_HUGETLB, {}) failed: {e}",
                    kb(size)
                ))
            })?;
            nix::unistd::ftruncate(&fd, size as i64)
                .or_else(|e| skip(format!("ftruncate() of a hugetlb memfd failed: {e}")))?;
            let at = mem::reserve(2 * size, size)?.addr;
            let raw = fd.as_raw_fd();
            shared_fixed(Region::new(at, size), raw, 0)?;
            shared_fixed(Region::new(at + size, size), raw, 0)?;
            let first = Region::new(at, size);
            // Fault the page in (a SIGBUS here would be an empty pool).
            thorough(size).fill(first, Writer::Setup);
            let part = (size / 2).min(1 << 20);
            SpanMemory {
                buffer: Region::new(at + size - part, 2 * part),
                twice: Some((at + size - page, at + 2 * size - page)),
            }
        }
    })
}

/// (d) Register a buffer over the span; `WRITE_FIXED` it whole into a
/// memfd; the memfd must hold exactly the bytes the mapping holds.
fn write_fixed_span(s: Span) -> Step<Outcome> {
    let page = env().page_size;
    let m = span_setup(s)?;
    let buf = m.buffer;
    if let Some((a, b)) = m.twice {
        // Both views are faulted in (read) before their PFNs are compared.
        for at in [a, b] {
            Region::new(at, page).touch_read(page);
        }
        let (pa, pb) = (
            pagemap::entry(a).or_else(fail)?,
            pagemap::entry(b).or_else(fail)?,
        );
        if let (Some(x), Some(y)) = (pa.pfn(), pb.pfn()) {
            if x != y {
                return skip(format!(
                    "the two views of one memfd page got different frames (pfn 0x{x:x} and 0x{y:x})"
                ));
            }
        }
        cowgup_harness::evidence(
            "mapped_twice",
            serde_json::json!({
                "addresses": [format!("0x{a:x}"), format!("0x{b:x}")],
                "pfns": [pa.pfn(), pb.pfn()],
            }),
        );
    } else {
        // Every word was stamped: the mapping must hold its own stamps.
        if let Err(mm) = thorough(page).check(buf, Writer::Setup) {
            return fail(format!("the mapping does not hold what was stamped: {mm}"));
        }
    }
    let out = match write_fixed(buf)? {
        Ok(bytes) => bytes,
        Err(e) => {
            return Ok(Outcome::Fail(format!(
                "registering or writing the fixed buffer ({} bytes at 0x{:x}) failed: {e}",
                buf.len, buf.addr
            )))
        }
    };
    // SAFETY: the buffer is mapped and readable.
    let mapped = unsafe { std::slice::from_raw_parts(buf.ptr(), buf.len) };
    Ok(compare_bytes(mapped, &out, buf))
}

/// Byte-for-byte comparison, naming the first differing word and whose
/// stamp it holds.
fn compare_bytes(mapped: &[u8], out: &[u8], buf: Region) -> Outcome {
    let page = env().page_size;
    if out.len() != mapped.len() {
        return Outcome::Fail(format!(
            "WRITE_FIXED wrote {} bytes for a {}-byte buffer",
            out.len(),
            mapped.len()
        ));
    }
    let words = |b: &[u8]| -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let (want, got) = (words(mapped), words(out));
    let bad: Vec<usize> = (0..want.len()).filter(|&i| want[i] != got[i]).collect();
    let Some(&first) = bad.first() else {
        diag(format!(
            "evidence: WRITE_FIXED of {} bytes equals the mapping byte for byte",
            buf.len
        ));
        return Outcome::Pass;
    };
    let off = first * 8;
    let found = got[first];
    let story = match identify(found) {
        Some(o) if o.writer == Writer::Nobody => "zeroes".to_string(),
        Some(o) => {
            let buf_first = buf.addr / page;
            match o.page.checked_sub(buf_first) {
                Some(p) if p < buf.len / page => {
                    format!(
                        "{} of buffer page {p}, word {}",
                        o.writer.describe(),
                        o.word
                    )
                }
                _ => format!("{} of a page outside the buffer", o.writer.describe()),
            }
        }
        None => "data that is no stamp (memory outside what was stamped)".into(),
    };
    let mut pages: Vec<usize> = bad.iter().map(|w| w * 8 / page).collect();
    pages.dedup();
    cowgup_harness::evidence(
        "write_fixed",
        serde_json::json!({
            "bytes": buf.len,
            "bad_words": bad.len(),
            "bad_pages": pages.len(),
            "first_offset": off,
            "expected": format!("0x{:016x}", want[first]),
            "found": format!("0x{found:016x}"),
        }),
    );
    Outcome::Fail(format!(
        "WRITE_FIXED output differs from the mapping: {} of {} pages differ; first at +0x{off:x} (buffer \
         page {}): 0x{found:016x} ({story}), the mapping holds 0x{:016x}",
        pages.len(),
        buf.len / page,
        off / page,
        want[first]
    ))
}

/// Register `buf` as fixed buffer 0 of a new ring and return what the kernel
/// reads through the pin, byte for byte. `Ok(Err)`: the kernel refused (with
/// the errno and which step).
fn write_fixed(buf: Region) -> Step<Result<Vec<u8>, String>> {
    match FixedBuffer::try_register(buf)? {
        Ok(mut fixed) => fixed.copy_through_pin(),
        Err(e) => Ok(Err(format!("io_uring_register_buffers(): {e}"))),
    }
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

    #[test]
    fn the_catalogue_covers_every_size() {
        let caps = crate::tests::reference_host();
        let all = scenarios(&caps);
        // (a), (b): PMD THP + 2 hugetlb; (c): + base pages; (d): 8 THP sizes,
        // 2 hugetlb, 2 mixed, 1 memfd, 2 memfd hugetlb.
        assert_eq!(all.len(), 3 + 3 + 4 + (8 + 2 + 2 + 1 + 2));
        let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are unique");
        assert!(all.iter().all(|s| s.needs.contains(&Need::IoUring)));
    }
}
