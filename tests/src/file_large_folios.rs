//! COW and pins on a large folio of a file in a private mapping.
//!
//! A `MAP_PRIVATE`, `PROT_READ` mapping of a file whose page cache holds one
//! large folio as big as the mapping and aligned like it: PMD-sized (2 MiB on
//! x86) on a huge=always tmpfs, in a memfd and in the shmem file of shared
//! anonymous memory, and every smaller size a per-size shmem knob gives the
//! latter. Proved: the mapping's first page is a THP head, its last page the
//! last tail of the same folio, and (PMD size) smaps counts the whole VMA as
//! PMD-mapped; otherwise the trial skips with what it measured. Every base page of the file carries its own stamp, written
//! through write(2) before the mapping exists.
//!
//! Each case takes a reference (or writes) and then checks three things:
//! the call returned, what it sees is the right page's stamp, and the file's
//! page cache still holds the original stamps after any COW.
//!
//! The R/O long-term pins here are what livelocked in 2025 ("mm: do not
//! install PMD mappings when handling a COW fault"): GUP needs an anonymous
//! page for a R/O FOLL_LONGTERM pin in a COW mapping, so `follow_huge_pmd()`
//! returns -EMLINK and GUP faults with FAULT_FLAG_UNSHARE; `wp_huge_pmd()`
//! zaps the PMD, `do_fault()` treats the unshare as a read fault, and
//! `finish_fault()` -> `do_set_pmd()` maps the same folio with a PMD again.
//! GUP retries forever (it only stops for a fatal signal). So every pin and
//! forced write here runs on a thread of its own and is given `CALL_LIMIT`:
//! a call that has not returned by then fails the trial, with what the
//! calling thread did meanwhile (its minor faults: GUP faulting the same
//! range in again and again) and its kernel stack. The stuck thread dies
//! with the trial process (exit's SIGKILL makes GUP give up). Behind that,
//! the runner's time limit (`--timeout`) still bounds the whole trial.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::gup_bench::{self, GupCmd};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::{scratch_dir, Need, ScratchFs};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin::{FixedBuffer, GupTest};
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::stamp::{Pattern, Writer};
use cowgup_fixtures::{env, fail, kb, skip, Step, TrialOptions};
use cowgup_harness::probe::{Capabilities, THP_DIR};
use cowgup_harness::{diag, Knob, Outcome};
use nix::sys::mman::{MapFlags, ProtFlags};
use procfs::PhysicalPageFlags;

use crate::common::{check_own_write, write_and_check_own, ORIGINAL};
use crate::expectations::{judge, Mapping, Mechanism, MemoryClass, Observed, Subject, Version};
use crate::scenario::{Family, Scenario};

/// Where the PMD-sized folio comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolioBacking {
    /// A file on a tmpfs the run mounts with `huge=always`.
    HugeTmpfs,
    /// A memfd, with the top-level `shmem_enabled` set to `always` (it
    /// governs the kernel's internal shmem mount, where memfds live).
    Memfd,
    /// The shmem file behind `MAP_SHARED|MAP_ANONYMOUS` memory (opened
    /// through /proc/self/map_files), filled through that mapping with only
    /// the per-size `hugepages-<size>kB/shmem_enabled` set to `always` (the
    /// per-size shmem knobs govern anonymous shmem only): a folio of every
    /// size the kernel has a knob for, the PMD size and the smaller,
    /// PTE-mapped ones.
    SharedAnonFile { size: usize },
}

impl FolioBacking {
    /// The backings this kernel can be asked for: the per-size ones only
    /// for the sizes the kernel has per-size shmem knobs for (6.11+),
    /// largest first.
    pub fn all(pmd: usize, thp_sizes: &[usize]) -> Vec<FolioBacking> {
        let mut v = vec![FolioBacking::HugeTmpfs, FolioBacking::Memfd];
        let mut sizes: Vec<usize> = thp_sizes.iter().copied().chain([pmd]).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        v.extend(
            sizes
                .into_iter()
                .filter(|&size| size <= pmd && size_shmem_knob(size).exists())
                .map(|size| FolioBacking::SharedAnonFile { size }),
        );
        v
    }

    /// The folio's size (and the mapping's).
    pub fn size(&self, pmd: usize) -> usize {
        match *self {
            FolioBacking::SharedAnonFile { size } => size,
            _ => pmd,
        }
    }

    pub fn suffix(&self, pmd: usize) -> String {
        let folio = format!("{} folio", kb(self.size(pmd)));
        match self {
            FolioBacking::HugeTmpfs => format!("{folio} of a file on a huge=always tmpfs"),
            FolioBacking::Memfd => format!("{folio} of a memfd (shmem_enabled=always)"),
            FolioBacking::SharedAnonFile { size } => format!(
                "{folio} of a MAP_SHARED|MAP_ANONYMOUS shmem file (hugepages-{}kB/shmem_enabled=always)",
                size / 1024
            ),
        }
    }

    pub fn needs(&self) -> Vec<Need> {
        match self {
            FolioBacking::HugeTmpfs => vec![Need::Scratch(ScratchFs::HugeTmpfs)],
            _ => vec![],
        }
    }

    /// The shmem policy the backing needs while its trial runs (the harness
    /// journals and restores every knob).
    pub fn knobs(&self, pmd: usize) -> Vec<Knob> {
        let top = std::path::Path::new(THP_DIR).join("shmem_enabled");
        let sized = size_shmem_knob(self.size(pmd));
        match self {
            FolioBacking::HugeTmpfs => vec![],
            FolioBacking::Memfd => {
                let mut v = vec![Knob::new(top, "always")];
                if sized.exists() {
                    v.push(Knob::new(sized, "inherit"));
                }
                v
            }
            FolioBacking::SharedAnonFile { .. } => {
                vec![Knob::new(top, "never"), Knob::new(sized, "always")]
            }
        }
    }

    /// Fill the file with per-page stamps (for the address the private
    /// mapping will get), map it `MAP_PRIVATE`, `PROT_READ` at an address
    /// aligned to the folio size, read it in, and prove the folio (and, of
    /// the PMD size, its PMD mapping).
    pub fn setup(&self, opts: &TrialOptions) -> Step<FolioMemory> {
        let Some(pmd) = env().pmd_size else {
            return skip("this kernel has no PMD-sized THP");
        };
        let page = env().page_size;
        let size = self.size(pmd);
        // The private mapping's place, reserved first: stamps name addresses.
        let region = mem::map_aligned(size, ProtFlags::PROT_NONE)?;
        let pattern = opts.pattern(page);
        let image = pattern.image(region, ORIGINAL);
        let file = match self {
            FolioBacking::HugeTmpfs => {
                let Some(dir) = scratch_dir(ScratchFs::HugeTmpfs) else {
                    return fail(
                        "no huge=always tmpfs scratch mount although the trial's need was met",
                    );
                };
                let f = tempfile::tempfile_in(&dir)
                    .or_else(|e| fail(format!("creating a file in {}: {e}", dir.display())))?;
                write_image(&f, &image)?;
                f
            }
            FolioBacking::Memfd => {
                let fd = nix::sys::memfd::memfd_create(
                    "cowgup-folio",
                    nix::sys::memfd::MFdFlags::empty(),
                )
                .or_else(|e| fail(format!("memfd_create() failed: {e}")))?;
                let f = File::from(fd);
                write_image(&f, &image)?;
                f
            }
            FolioBacking::SharedAnonFile { .. } => {
                let shared = mem::map_aligned(size, ProtFlags::PROT_NONE)?;
                mem::map_fixed(
                    shared,
                    RW,
                    MapFlags::MAP_SHARED | MapFlags::MAP_ANONYMOUS,
                    None,
                    0,
                )?;
                // SAFETY: our fresh shared mapping, `image` is as long.
                unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), shared.ptr(), shared.len) };
                let path = format!("/proc/self/map_files/{:x}-{:x}", shared.addr, shared.end());
                File::open(&path).or_else(|e| {
                    skip(format!(
                        "cannot open {path} (the shared anonymous memory's shmem file): {e}"
                    ))
                })?
            }
        };
        mem::map_fixed(
            region,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE,
            Some(file.as_raw_fd()),
            0,
        )?;
        region.touch_read(page);
        let folio = prove_folio(region, pmd)?;
        cowgup_harness::evidence("folio", &folio);
        let cache_view = View::capture(region, page)?;
        Ok(FolioMemory {
            region,
            pattern,
            file,
            folio,
            cache_view,
        })
    }
}

fn size_shmem_knob(pmd: usize) -> std::path::PathBuf {
    std::path::Path::new(THP_DIR)
        .join(format!("hugepages-{}kB", pmd / 1024))
        .join("shmem_enabled")
}

fn write_image(f: &File, image: &[u8]) -> Step<()> {
    f.write_all_at(image, 0)
        .or_else(|e| fail(format!("writing the stamped file failed: {e}")))
}

/// What proved the folio.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FolioProof {
    pub head_pfn: u64,
    pub head_flags: String,
    pub last_pfn: u64,
    pub last_flags: String,
    /// smaps FilePmdMapped + ShmemPmdMapped of the private mapping.
    pub pmd_mapped_kb: u64,
}

impl std::fmt::Display for FolioProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "first page pfn 0x{:x} ({}), last page pfn 0x{:x} ({}), {} kB PMD-mapped",
            self.head_pfn, self.head_flags, self.last_pfn, self.last_flags, self.pmd_mapped_kb
        )
    }
}

/// The mapping's first page is the head of a THP whose last tail is the
/// mapping's last page, PFN-aligned to the mapping's size; and a mapping of
/// the PMD size is all PMD-mapped, says smaps.
fn prove_folio(region: Region, pmd: usize) -> Step<FolioProof> {
    let page = env().page_size;
    let size = region.len;
    let nr = (size / page) as u64;
    let first = pagemap::entry(region.addr).or_else(fail)?;
    let last = pagemap::entry(region.end() - page).or_else(fail)?;
    let (Some(head_pfn), Some(last_pfn)) = (first.pfn(), last.pfn()) else {
        return skip(format!(
            "cannot prove a large folio: the file pages' PFNs are not visible (pagemap says {first:?} and {last:?}; needs CAP_SYS_ADMIN)"
        ));
    };
    let flags = |pfn| pagemap::kflags(pfn);
    let (Some(hf), Some(lf)) = (flags(head_pfn), flags(last_pfn)) else {
        return skip("cannot prove a large folio: /proc/kpageflags is not readable");
    };
    let proof = FolioProof {
        head_pfn,
        head_flags: pagemap::describe_flags(hf),
        last_pfn,
        last_flags: pagemap::describe_flags(lf),
        pmd_mapped_kb: smaps_pmd_mapped_kb(region.addr)?,
    };
    let folio = hf.contains(PhysicalPageFlags::THP | PhysicalPageFlags::COMPOUND_HEAD)
        && lf.contains(PhysicalPageFlags::THP | PhysicalPageFlags::COMPOUND_TAIL)
        && head_pfn % nr == 0
        && last_pfn == head_pfn + nr - 1;
    if !folio {
        return skip(format!(
            "the kernel did not give the file a {} folio: {proof}",
            kb(size)
        ));
    }
    if size == pmd && proof.pmd_mapped_kb < (pmd / 1024) as u64 {
        return skip(format!(
            "the page cache holds a {} folio but the private mapping maps it with PTEs: {proof}",
            kb(size)
        ));
    }
    Ok(proof)
}

/// FilePmdMapped + ShmemPmdMapped of the VMA starting at `addr`.
fn smaps_pmd_mapped_kb(addr: usize) -> Step<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")
        .or_else(|e| fail(format!("reading /proc/self/smaps failed: {e}")))?;
    let header = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    if lines.next().is_none() {
        return fail(format!("no VMA at 0x{addr:x} in /proc/self/smaps"));
    }
    Ok(lines
        .take_while(|l| !l.contains('-') || l.contains(':'))
        .filter_map(|l| {
            let (key, rest) = l.split_once(':')?;
            matches!(key, "FilePmdMapped" | "ShmemPmdMapped").then(|| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })?
        })
        .sum())
}

pub struct FolioMemory {
    pub region: Region,
    pub pattern: Pattern,
    pub file: File,
    pub folio: FolioProof,
    /// The mapping's page-table entries at setup: the page cache's pages.
    pub cache_view: View,
}

impl FolioMemory {
    /// The file's page cache, read with pread(2), must still hold the
    /// original stamps.
    fn page_cache_unchanged(&self, after: &str) -> Step<()> {
        let mut bytes = vec![0u8; self.region.len];
        self.file
            .read_exact_at(&mut bytes, 0)
            .or_else(|e| fail(format!("pread() of the file failed: {e}")))?;
        match self.pattern.check_bytes(&bytes, self.region.addr, ORIGINAL) {
            Ok(()) => Ok(()),
            Err(m) => {
                cowgup_harness::evidence("mismatch", &m);
                fail(format!("{after}, the file's page cache changed: {m}"))
            }
        }
    }

    /// The process's write (the head of every page, after mprotect(RW)):
    /// its own copy must hold its write and the old bodies; the written
    /// pages must no longer be the page cache's.
    fn cow_write(&self) -> Step<()> {
        self.region.mprotect(RW)?;
        write_and_check_own(
            self.region,
            self.pattern,
            ORIGINAL,
            Writer::Parent,
            "the process",
        )?;
        self.after_cow()
    }

    /// After the COW: no page of the mapping is a page-cache page any more
    /// (compared with the PFNs the mapping had at setup, before any pin
    /// could unshare), and the page cache holds what it held.
    fn after_cow(&self) -> Step<()> {
        let after = View::capture(self.region, self.pattern.page)?;
        let sharing = evidence::compare(
            "the private mapping at setup vs after the COW write",
            "page cache",
            &self.cache_view,
            "after",
            &after,
        );
        cowgup_harness::evidence("sharing", &sharing);
        if sharing.same > 0 {
            return fail(format!(
                "{} of {} written pages still map the page-cache page: {}",
                sharing.same, sharing.compared, sharing.summary
            ));
        }
        self.page_cache_unchanged("after the COW write")
    }

    /// Tell the log which call is about to be made on which folio: if the
    /// call never returns, this is the trial's last word before its time limit.
    fn announce(&self, what: &str) {
        diag(format!(
            "{what} on the {} kB folio ({}), at most {} s",
            self.region.len / 1024,
            self.folio,
            CALL_LIMIT.as_secs()
        ));
    }
}

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
fn bounded<T: Send + 'static>(
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Step<Result<T, String>> {
    bounded_for(CALL_LIMIT, what, call)
}

/// A call that did not return, where only a clean return is acceptable.
fn returned<T>(r: Result<T, String>) -> Step<T> {
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

fn take_bounded(source: PinSource, region: Region) -> Step<Result<Taken, String>> {
    Ok(match bounded(source.name(), move || source.take(region))? {
        Ok(taken) => Ok(taken?),
        Err(why) => Err(why),
    })
}

/// What a case does on the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// gup_test PIN_LONGTERM_TEST_START, R/O: must unshare into anonymous
    /// pages, return, see the stamps, and see the process's later write.
    RoPin { fast: bool },
    /// gup_test PIN_LONGTERM_BENCHMARK, R/O, all pages in one call.
    RoPinBenchmark,
    /// A write after mprotect(PROT_WRITE).
    CowAfterMprotect,
    /// A FOLL_FORCE write through /proc/self/mem into the PROT_READ mapping.
    CowForcedWrite,
    /// io_uring's registration takes FOLL_WRITE | FOLL_LONGTERM: on a
    /// PROT_READ mapping without FOLL_FORCE it must be refused (EFAULT).
    IoUringRefused,
    /// The same registration after mprotect(PROT_WRITE): a write fault per
    /// page COWs it, the pin returns and follows the process's writes.
    IoUringAfterMprotect,
    /// vmsplice(): FOLL_GET on the page-cache pages, which the process's
    /// COW write must not reach.
    Vmsplice,
    /// pwrite(O_DIRECT) from the mapping: a short-term R/O FOLL_PIN.
    ODirect,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::RoPin { fast: false },
        Case::RoPin { fast: true },
        Case::RoPinBenchmark,
        Case::CowAfterMprotect,
        Case::CowForcedWrite,
        Case::IoUringRefused,
        Case::IoUringAfterMprotect,
        Case::Vmsplice,
        Case::ODirect,
    ];

    pub fn desc(&self) -> String {
        match self {
            Case::RoPin { fast } => ro_pin(*fast).name().to_string(),
            Case::RoPinBenchmark => {
                "R/O PIN_LONGTERM_BENCHMARK (pin_user_pages(FOLL_LONGTERM))".into()
            }
            Case::CowAfterMprotect => "COW on write after mprotect(PROT_WRITE)".into(),
            Case::CowForcedWrite => "COW on a forced write through /proc/self/mem".into(),
            Case::IoUringRefused => {
                format!(
                    "{} is refused on the PROT_READ mapping",
                    PinSource::IoUringFixed.name()
                )
            }
            Case::IoUringAfterMprotect => {
                format!(
                    "{} after mprotect(PROT_WRITE)",
                    PinSource::IoUringFixed.name()
                )
            }
            Case::Vmsplice => format!("{} then COW", PinSource::Vmsplice.name()),
            Case::ODirect => PinSource::ODirect.name().to_string(),
        }
    }

    pub fn needs(&self) -> Vec<Need> {
        match self {
            Case::RoPin { .. } | Case::RoPinBenchmark => vec![Need::GupTest],
            Case::IoUringRefused | Case::IoUringAfterMprotect => vec![Need::IoUring],
            Case::ODirect => PinSource::ODirect.needs(),
            Case::CowAfterMprotect | Case::CowForcedWrite | Case::Vmsplice => vec![],
        }
    }

    /// Takes FOLL_PIN references (the run counts pin balance exactly).
    pub fn pins(&self) -> bool {
        !matches!(
            self,
            Case::CowAfterMprotect | Case::CowForcedWrite | Case::Vmsplice
        )
    }

    /// `kernel`: the running kernel's version, for the expectation table
    /// (which judges only the R/O long-term pins: a livelock there is a
    /// known bug of kernels before the fix).
    pub fn run(&self, m: &FolioMemory, kernel: Option<Version>) -> Step<Outcome> {
        let subject = Subject {
            mechanism: Mechanism::RoPin,
            memory: MemoryClass::ShmemFile,
            size: Some(m.region.len),
            mapping: Mapping::Private,
            kernel,
        };
        match *self {
            Case::RoPin { fast } => ro_longterm_pin(m, fast, &subject),
            Case::RoPinBenchmark => ro_benchmark(m, &subject),
            Case::CowAfterMprotect => {
                m.cow_write()?;
                Ok(Outcome::Pass)
            }
            Case::CowForcedWrite => forced_write(m),
            Case::IoUringRefused => io_uring_refused(m),
            Case::IoUringAfterMprotect => io_uring_after_mprotect(m),
            Case::Vmsplice => vmsplice_then_cow(m),
            Case::ODirect => odirect_write(m),
        }
    }
}

fn ro_pin(fast: bool) -> PinSource {
    PinSource::GupTest { write: false, fast }
}

fn ro_longterm_pin(m: &FolioMemory, fast: bool, subject: &Subject) -> Step<Outcome> {
    let source = ro_pin(fast);
    m.announce(&format!("taking a {}", source.name()));
    let mut held = match take_bounded(source, m.region)? {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return fail(format!("{} was refused: {e}", source.name())),
        Err(why) => return Ok(judge(subject, Observed::Livelock(why))),
    };
    if let Err(mm) = held.check(m.region, m.pattern, ORIGINAL)? {
        return fail(format!("through the {}: {mm}", source.name()));
    }
    m.cow_write()?;
    // A R/O long-term pin in a COW mapping pins the exclusive anonymous
    // page the unshare made, which the process's write then reuses.
    Ok(
        match held.check(m.region, m.pattern, ORIGINAL.written_by(Writer::Parent))? {
            Ok(()) => judge(subject, Observed::Clean),
            Err(mm) => Outcome::Fail(format!(
                "the {} does not see the process's later write (it pins a page the process no longer maps): {mm}",
                source.name()
            )),
        },
    )
}

fn ro_benchmark(m: &FolioMemory, subject: &Subject) -> Step<Outcome> {
    let gup = GupTest::open_file()?;
    m.announce("PIN_LONGTERM_BENCHMARK (R/O, all pages in one call)");
    let region = m.region;
    let done = match bounded("PIN_LONGTERM_BENCHMARK (R/O)", move || {
        gup_bench::on_region(&gup, GupCmd::PinLongtermBenchmark, region, false)
    })? {
        Ok(done) => done,
        Err(why) => return Ok(judge(subject, Observed::Livelock(why))),
    };
    match done {
        Ok(n) if n == m.region.len => {}
        Ok(n) => {
            return fail(format!(
                "PIN_LONGTERM_BENCHMARK covered {n} of {} bytes",
                m.region.len
            ))
        }
        Err(e) => return fail(format!("PIN_LONGTERM_BENCHMARK failed: {e}")),
    }
    if let Err(mm) = m.pattern.check(m.region, ORIGINAL) {
        return fail(format!("after the pin was dropped the process reads: {mm}"));
    }
    m.page_cache_unchanged("after the pins")?;
    Ok(judge(subject, Observed::Clean))
}

/// pwrite(2) into /proc/self/mem: GUP with FOLL_FORCE | FOLL_WRITE, which
/// must COW each page it writes, never write the page cache.
fn forced_write(m: &FolioMemory) -> Step<Outcome> {
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .or_else(|e| fail(format!("opening /proc/self/mem failed: {e}")))?;
    m.announce("forced writes through /proc/self/mem");
    let (region, pattern) = (m.region, m.pattern);
    returned(bounded(
        "a forced write through /proc/self/mem",
        move || {
            let first = region.addr / pattern.page;
            for i in 0..pattern.pages(region.len) {
                let addr = region.addr + i * pattern.page;
                let word = Writer::Parent.word(first + i, 0).to_ne_bytes();
                match mem.write_at(&word, addr as u64) {
                    Ok(8) => {}
                    Ok(n) => {
                        return fail(format!("/proc/self/mem wrote {n} of 8 bytes at 0x{addr:x}"))
                    }
                    Err(e) => {
                        return fail(format!("write to /proc/self/mem at 0x{addr:x} failed: {e}"))
                    }
                }
            }
            Ok(())
        },
    )?)??;
    check_own_write(
        m.region,
        m.pattern,
        ORIGINAL.written_by(Writer::Parent),
        "the process",
    )?;
    m.after_cow()?;
    Ok(Outcome::Pass)
}

fn io_uring_refused(m: &FolioMemory) -> Step<Outcome> {
    m.announce("registering an io_uring fixed buffer");
    let region = m.region;
    let taken = returned(bounded("io_uring buffer registration", move || {
        FixedBuffer::try_register(region)
    })?)??;
    diag(format!(
        "evidence: io_uring registration on the PROT_READ mapping: {}",
        taken
            .as_ref()
            .map_or_else(|e| format!("refused with {e}"), |_| "granted".into())
    ));
    match taken {
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {}
        Err(e) => return fail(format!("refused with {e}, expected EFAULT")),
        Ok(_) => {
            return fail(
                "io_uring took a writable long-term pin on a PROT_READ private file mapping",
            )
        }
    }
    if let Err(mm) = m.pattern.check(m.region, ORIGINAL) {
        return fail(format!(
            "after the refused registration the process reads: {mm}"
        ));
    }
    m.page_cache_unchanged("after the refused registration")?;
    Ok(Outcome::Pass)
}

fn io_uring_after_mprotect(m: &FolioMemory) -> Step<Outcome> {
    let source = PinSource::IoUringFixed;
    m.region.mprotect(RW)?;
    m.announce(&format!("taking an {}", source.name()));
    let mut held = match returned(take_bounded(source, m.region)?)? {
        Ok(h) => h,
        Err(e) => {
            return fail(format!(
                "{} was refused after mprotect(PROT_WRITE): {e}",
                source.name()
            ))
        }
    };
    if let Err(mm) = held.check(m.region, m.pattern, ORIGINAL)? {
        return fail(format!("through the {}: {mm}", source.name()));
    }
    // The writable pin COWed every page: none may still be the page cache's.
    m.after_cow()?;
    write_and_check_own(m.region, m.pattern, ORIGINAL, Writer::Parent, "the process")?;
    m.page_cache_unchanged("after the process's write")?;
    Ok(
        match held.check(m.region, m.pattern, ORIGINAL.written_by(Writer::Parent))? {
            Ok(()) => Outcome::Pass,
            Err(mm) => Outcome::Fail(format!(
                "the {} does not see the process's later write: {mm}",
                source.name()
            )),
        },
    )
}

/// vmsplice() references the page-cache pages themselves (FOLL_GET, no
/// unshare): after the process's COW write the pipe must still hold the
/// original stamps, as must the page cache.
fn vmsplice_then_cow(m: &FolioMemory) -> Step<Outcome> {
    let source = PinSource::Vmsplice;
    m.announce("vmsplice()");
    let mut held = match returned(take_bounded(source, m.region)?)? {
        Ok(h) => h,
        Err(e) => return fail(format!("vmsplice() failed: {e}")),
    };
    let covered = held.covered();
    if covered == 0 {
        return fail("vmsplice() took no page");
    }
    m.cow_write()?;
    let spliced = m.region.sub(0, covered);
    Ok(match held.check(spliced, m.pattern, ORIGINAL)? {
        Ok(()) => Outcome::Pass,
        Err(mm) => Outcome::Fail(format!(
            "the pipe's references to the page cache see the process's COW write: {mm}"
        )),
    })
}

fn odirect_write(m: &FolioMemory) -> Step<Outcome> {
    let source = PinSource::ODirect;
    m.announce("an O_DIRECT write from the mapping");
    let mut held = match returned(take_bounded(source, m.region)?)? {
        Ok(h) => h,
        Err(e) => return fail(format!("the O_DIRECT write from the mapping failed: {e}")),
    };
    if let Err(mm) = held.check(m.region, m.pattern, ORIGINAL)? {
        return fail(format!("the O_DIRECT write wrote: {mm}"));
    }
    m.page_cache_unchanged("after the O_DIRECT write")?;
    Ok(Outcome::Pass)
}

/// The family's trials: every case with every backing this kernel has.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    catalogue(
        caps.pmd_size,
        &caps.thp_sizes,
        crate::expectations::parse_version(&caps.kernel_release),
    )
}

/// The trials for this PMD size, these mTHP sizes and this kernel.
pub fn catalogue(
    pmd_size: Option<usize>,
    thp_sizes: &[usize],
    kernel: Option<Version>,
) -> Vec<Scenario> {
    let Some(pmd) = pmd_size else {
        return vec![];
    };
    let mut v = Vec::new();
    for case in Case::ALL {
        for backing in FolioBacking::all(pmd, thp_sizes) {
            v.push(Scenario {
                name: format!("{} ... with {}", case.desc(), backing.suffix(pmd)),
                family: Family::FILE_LARGE_FOLIOS,
                group: "file large folios".into(),
                needs: backing.needs().into_iter().chain(case.needs()).collect(),
                knobs: backing.knobs(pmd),
                pins: case.pins(),
                body: std::sync::Arc::new(move |opts| case.run(&backing.setup(opts)?, kernel)),
            });
        }
    }
    v
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

    /// Without the knob its trial holds, a memfd gets no PMD folio on a
    /// host whose shmem_enabled is "never": the backing skips, saying what
    /// the page-cache page was.
    #[test]
    fn no_pmd_folio_is_a_skip_with_what_was_measured() {
        let top = std::path::Path::new(THP_DIR).join("shmem_enabled");
        let policy = cowgup_harness::guard::read_knob(&top).unwrap_or_default();
        if policy != "never" || !cowgup_harness::probe::cap_sys_admin() || env().pmd_size.is_none()
        {
            eprintln!("needs root, THP and shmem_enabled=never (it is {policy:?})");
            return;
        }
        match FolioBacking::Memfd
            .setup(&TrialOptions::default())
            .map(|m| m.folio)
        {
            Err(Outcome::Skip(r)) => {
                eprintln!("skipped: {r}");
                assert!(
                    r.starts_with(
                        "the kernel did not give the file a 2048 kB folio: first page pfn 0x"
                    ),
                    "{r}"
                )
            }
            Ok(f) if cowgup_harness::guard::read_knob(&top).ok().as_deref() != Some("never") => {
                eprintln!("another run changed shmem_enabled meanwhile: {f}")
            }
            other => panic!("expected a skip, got {:?}", other.map(|f| f.to_string())),
        }
    }

    #[test]
    fn names_are_unique_and_derived() {
        let v = catalogue(Some(2 << 20), &[16 << 10, 2 << 20], Some((6, 18)));
        let mut names: Vec<&str> = v.iter().map(|s| s.name.as_str()).collect();
        assert!(names.iter().all(|n| n.contains(" kB folio of ")));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(catalogue(None, &[], None).is_empty());
    }
}
