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
//!
//! Where each piece is:
//! - here: the cases (`Case`), what each does on the mapping and how it is
//!   judged, and the catalogue (`scenarios`: cases x backings);
//! - `folio.rs`: the backings (`FolioBacking`), the proof that the file got
//!   a large folio (`FolioProof`), and the mapping with its checks of the
//!   page cache (`FolioMemory`);
//! - `bounded.rs`: running a call on a thread of its own under
//!   `CALL_LIMIT`, and what a call that never returned was doing.

mod bounded;
mod folio;

use std::os::unix::fs::FileExt;

use cowgup_fixtures::gup_bench::{self, GupCmd};
use cowgup_fixtures::mem::RW;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pin::{FixedBuffer, GupTest};
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::{fail, Step};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Knob, Outcome};

use crate::common::{check_own_write, write_and_check_own, ORIGINAL};
use crate::cross::{self, Backing, Cross};
use crate::expectations::{judge, Mapping, Mechanism, MemoryClass, Observed, Subject, Version};
use crate::scenario::{Family, Scenario};
use bounded::{bounded, returned, take_bounded};

pub use bounded::CALL_LIMIT;
pub use folio::{FolioBacking, FolioMemory, FolioProof};

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

impl cross::Case for Case {
    fn desc(&self) -> String {
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

    fn needs(&self) -> Vec<Need> {
        match self {
            Case::RoPin { .. } | Case::RoPinBenchmark => vec![Need::GupTest],
            Case::IoUringRefused | Case::IoUringAfterMprotect => vec![Need::IoUring],
            Case::ODirect => PinSource::ODirect.needs(),
            Case::CowAfterMprotect | Case::CowForcedWrite | Case::Vmsplice => vec![],
        }
    }

    /// Takes FOLL_PIN references (the run counts pin balance exactly).
    fn pins(&self) -> bool {
        !matches!(
            self,
            Case::CowAfterMprotect | Case::CowForcedWrite | Case::Vmsplice
        )
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

/// `source` taken on the mapping (announced as `doing`), where a call that
/// does not return and a refusal (`refused: errno`) both fail: these
/// references are not the R/O long-term pins the livelock is known for.
fn granted(m: &FolioMemory, source: PinSource, doing: &str, refused: &str) -> Step<Held> {
    m.announce(doing);
    match returned(take_bounded(source, m.region)?)? {
        Ok(h) => Ok(h),
        Err(e) => fail(format!("{refused}: {e}")),
    }
}

fn io_uring_after_mprotect(m: &FolioMemory) -> Step<Outcome> {
    let source = PinSource::IoUringFixed;
    m.region.mprotect(RW)?;
    let mut held = granted(
        m,
        source,
        &format!("taking an {}", source.name()),
        &format!("{} was refused after mprotect(PROT_WRITE)", source.name()),
    )?;
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
    let mut held = granted(m, source, "vmsplice()", "vmsplice() failed")?;
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
    let mut held = granted(
        m,
        source,
        "an O_DIRECT write from the mapping",
        "the O_DIRECT write from the mapping failed",
    )?;
    if let Err(mm) = held.check(m.region, m.pattern, ORIGINAL)? {
        return fail(format!("the O_DIRECT write wrote: {mm}"));
    }
    m.page_cache_unchanged("after the O_DIRECT write")?;
    Ok(Outcome::Pass)
}

/// The family's trials: every case with every backing this kernel has
/// (none without a PMD size).
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let Some(pmd) = caps.pmd_size else {
        return vec![];
    };
    let kernel = crate::expectations::parse_version(&caps.kernel_release);
    let backings = FolioBacking::all(pmd, &caps.thp_sizes)
        .into_iter()
        .map(|backing| OnHost { backing, pmd });
    Cross::new(Family::FILE_LARGE_FOLIOS, caps, Case::ALL, backings)
        .build(move |opts, case, b| case.run(&b.backing.setup(opts)?, kernel))
}

/// A backing on a host with this PMD size, which names its folio's size.
#[derive(Clone, Copy)]
struct OnHost {
    backing: FolioBacking,
    pmd: usize,
}

impl Backing for OnHost {
    fn suffix(&self) -> String {
        self.backing.suffix(self.pmd)
    }
    fn group(&self) -> String {
        "file large folios".into()
    }
    fn needs(&self) -> Vec<Need> {
        self.backing.needs()
    }
    fn knobs(&self, _caps: &Capabilities) -> Vec<Knob> {
        self.backing.knobs(self.pmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_derived() {
        let mut caps = crate::tests::reference_host();
        caps.thp_sizes = vec![16 << 10, 2 << 20];
        let v = scenarios(&caps);
        let mut names: Vec<&str> = v.iter().map(|s| s.name.as_str()).collect();
        assert!(names.iter().all(|n| n.contains(" kB folio of ")));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        caps.pmd_size = None;
        assert!(scenarios(&caps).is_empty());
    }
}
