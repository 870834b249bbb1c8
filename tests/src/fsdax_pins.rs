//! fsdax_pins: DAX pages have no page cache between a pin and the
//! filesystem blocks, so a long-term pin of a MAP_SHARED file mapping on
//! fsdax must be refused: mm/gup.c `check_vma_flags()` returns -EOPNOTSUPP
//! for `FOLL_LONGTERM && vma_is_fsdax(vma)` (before the writable-file check,
//! so R/O and R/W alike), and GUP-fast leaves devmap entries to the slow
//! path when FOLL_LONGTERM is set (`gup_fast_pte_range()`,
//! `gup_fast_pmd_range()`). Short-term references (O_DIRECT, vmsplice,
//! gup_test without LONGTERM) work and see the file's data. A MAP_PRIVATE
//! mapping after a write fault holds anonymous copies, which may be pinned.
//!
//! Runs on the ext4 a `--topology fsdax` guest mounts `-o dax`
//! ($COWGUP_FSDAX_DIR), with the file proved DAX by statx(STATX_ATTR_DAX);
//! skips with the reason elsewhere.

use std::os::unix::fs::FileExt;

use cowgup_fixtures::file::{fsdax_dir, prove_dax, FileBacking, FileMemory};
use cowgup_fixtures::gup_bench::{GupCmd, GupRun};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin::GupTest;
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::stamp::{Content, Writer};
use cowgup_fixtures::{env, fail, skip, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Outcome};

use crate::cross::{Case, Cross};
use crate::expectations::{
    self, judge, Mapping, Mechanism, MemoryClass, Observed, Subject, Version,
};
use crate::scenario::{Family, Scenario};

pub const SHORT_TERM: [PinSource; 2] = [PinSource::ODirect, PinSource::Vmsplice];

/// gup_test's short-term calls: FOLL_PIN (slow and fast) and FOLL_GET.
pub const GUP_SHORT: [GupCmd; 3] = [
    GupCmd::PinBasicTest,
    GupCmd::PinFastBenchmark,
    GupCmd::GupBasicTest,
];

/// include/uapi/linux/kernel-page-flags.h
const KPF_ANON: u64 = 1 << 12;

const BACKING: FileBacking = FileBacking::Fsdax;

/// The errno check_vma_flags() refuses a FOLL_LONGTERM pin of fsdax with.
pub const REFUSAL: nix::errno::Errno = nix::errno::Errno::EOPNOTSUPP;

/// The family's cases, all on [`BACKING`].
#[derive(Clone, Copy)]
enum FsdaxCase {
    SharedLongterm(PinSource),
    SharedShortTerm(PinSource),
    GupShort(GupCmd),
    PrivateLongterm(PinSource),
}

impl Case for FsdaxCase {
    fn desc(&self) -> String {
        match *self {
            FsdaxCase::SharedLongterm(s) => {
                format!("{} of a MAP_SHARED file mapping is refused", s.name())
            }
            FsdaxCase::SharedShortTerm(s) => {
                format!("{} of a MAP_SHARED file mapping sees the file", s.name())
            }
            FsdaxCase::GupShort(cmd) => format!(
                "gup_test {} (short-term) of a MAP_SHARED file mapping works",
                cmd.name()
            ),
            FsdaxCase::PrivateLongterm(s) => format!(
                "{} of a MAP_PRIVATE file mapping after a write fault is granted",
                s.name()
            ),
        }
    }
    fn needs(&self) -> Vec<Need> {
        match *self {
            FsdaxCase::SharedLongterm(s)
            | FsdaxCase::SharedShortTerm(s)
            | FsdaxCase::PrivateLongterm(s) => s.needs(),
            FsdaxCase::GupShort(_) => vec![Need::GupTest],
        }
    }
    fn pins(&self) -> bool {
        match *self {
            FsdaxCase::SharedLongterm(s)
            | FsdaxCase::SharedShortTerm(s)
            | FsdaxCase::PrivateLongterm(s) => s.pins(),
            FsdaxCase::GupShort(cmd) => cmd.pins(),
        }
    }
}

pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let cases = (PinSource::LONGTERM
        .map(FsdaxCase::SharedLongterm)
        .into_iter())
    .chain(SHORT_TERM.map(FsdaxCase::SharedShortTerm))
    .chain(GUP_SHORT.map(FsdaxCase::GupShort))
    .chain(PinSource::LONGTERM.map(FsdaxCase::PrivateLongterm));
    Cross::new(Family::FSDAX_PINS, caps, cases, [BACKING]).build(move |opts, case, _| match case {
        FsdaxCase::SharedLongterm(source) => shared_longterm(opts, source),
        FsdaxCase::SharedShortTerm(source) => shared_short_term(opts, source),
        FsdaxCase::GupShort(cmd) => gup_short(cmd),
        FsdaxCase::PrivateLongterm(source) => private_longterm(opts, source, kernel),
    })
}

fn read_only(source: PinSource) -> bool {
    matches!(source, PinSource::GupTest { write: false, .. })
}

/// The file's page as the page tables show it (PFN, kpageflags), for
/// diagnostics. No zone: the legacy pmem region (`memmap=N!S`) lies inside
/// the Normal zone's span, its pages are ZONE_DEVICE.
fn where_is(mem: &FileMemory) -> String {
    match pagemap::entry(mem.region.addr).map(|p| p.pfn()) {
        Ok(Some(pfn)) => {
            let flags =
                pagemap::kflags(pfn).map_or("flags unreadable".into(), pagemap::describe_flags);
            format!("pfn 0x{pfn:x} ({flags})")
        }
        Ok(None) => "pfn hidden".into(),
        Err(e) => e,
    }
}

/// What the file holds, read with pread() (through the filesystem, not the mapping).
fn file_holds(
    mem: &FileMemory,
    expected: Content,
) -> Step<Result<(), cowgup_fixtures::stamp::Mismatch>> {
    let mut buf = vec![0u8; mem.region.len];
    mem.file()
        .read_exact_at(&mut buf, 0)
        .or_else(|e| fail(format!("pread() of the file failed: {e}")))?;
    Ok(mem.pattern.check_bytes(&buf, mem.region.addr, expected))
}

fn setup(opts: &TrialOptions, shared: bool, read_only: bool) -> Step<FileMemory> {
    let mem = BACKING.setup(shared, read_only, opts)?;
    if !mem.dax {
        return fail("the fsdax backing's file is not DAX although setup proved it");
    }
    diag(format!(
        "DAX: statx() reports STATX_ATTR_DAX for a file on {} ({}); the mapping maps {}",
        fsdax_dir().unwrap_or_default().display(),
        mem.fs.name(),
        where_is(&mem)
    ));
    Ok(mem)
}

fn shared_longterm(opts: &TrialOptions, source: PinSource) -> Step<Outcome> {
    let mem = setup(opts, true, read_only(source))?;
    Ok(match source.take(mem.region)? {
        Err(e) if e == REFUSAL => {
            diag(format!("{} refused: {e}", source.name()));
            Outcome::Pass
        }
        Err(e) => Outcome::Fail(format!(
            "{} was refused with {e}; check_vma_flags() refuses FOLL_LONGTERM on fsdax with {REFUSAL}",
            source.name()
        )),
        Ok(held) => {
            drop(held);
            Outcome::Fail(format!(
                "{} of a MAP_SHARED fsdax mapping was granted ({}): a long-term pin of DAX \
                 memory must be refused",
                source.name(),
                where_is(&mem)
            ))
        }
    })
}

fn shared_short_term(opts: &TrialOptions, source: PinSource) -> Step<Outcome> {
    let mem = setup(opts, true, false)?;
    let setup_content = Content::all(Writer::Setup);
    if let Err(mm) = file_holds(&mem, setup_content)? {
        return fail(format!(
            "the file does not hold what the shared mapping wrote: {mm}"
        ));
    }
    let mut held = match source.take(mem.region)? {
        Ok(h) => h,
        Err(e) => {
            return Ok(Outcome::Fail(format!(
                "{} of a MAP_SHARED fsdax mapping failed: {e}; short-term references are allowed",
                source.name()
            )))
        }
    };
    diag(format!("{} granted on {}", source.name(), where_is(&mem)));
    Ok(match held.check(mem.region, mem.pattern, setup_content)? {
        Ok(()) => Outcome::Pass,
        Err(mm) => Outcome::Fail(format!(
            "{} does not see the file's data: {mm}",
            source.name()
        )),
    })
}

/// gup_test's own mapping of a file on the DAX mount, MAP_SHARED.
fn gup_short(cmd: GupCmd) -> Step<Outcome> {
    let dir = fsdax_dir().or_else(skip)?;
    let gup = GupTest::open_file()?;
    let file = tempfile::NamedTempFile::new_in(&dir)
        .or_else(|e| fail(format!("creating a file on {} failed: {e}", dir.display())))?;
    prove_dax(file.as_file())?;
    let size = 16 * env().page_size;
    file.as_file()
        .set_len(size as u64)
        .or_else(|e| fail(format!("ftruncate() failed: {e}")))?;
    let run = GupRun {
        cmd,
        size,
        nr_pages: -1,
        write: false,
        shared: true,
        file: file.path().display().to_string(),
        ..GupRun::default()
    };
    let results = run.run(&gup, 1).or_else(fail)?;
    let Some(r) = results.first() else {
        return fail("gup_test ran no thread");
    };
    if r.status != 0 {
        let e = nix::errno::Errno::from_raw(-r.status);
        return Ok(Outcome::Fail(format!(
            "gup_test {} of a MAP_SHARED fsdax mapping failed: {e}; only FOLL_LONGTERM is refused",
            cmd.name()
        )));
    }
    diag(format!("gup_test {}: {}", cmd.name(), r.lines.join("; ")));
    Ok(Outcome::Pass)
}

fn private_longterm(
    opts: &TrialOptions,
    source: PinSource,
    kernel: Option<Version>,
) -> Step<Outcome> {
    let mem = setup(opts, false, read_only(source))?;
    // The write fault replaced the DAX page with an anonymous copy.
    if let Ok(Some(pfn)) = pagemap::entry(mem.region.addr).map(|p| p.pfn()) {
        if let Some(f) = pagemap::kflags(pfn) {
            if f.bits() & KPF_ANON == 0 {
                return fail(format!(
                    "after a write fault the MAP_PRIVATE page is not anonymous: {}",
                    where_is(&mem)
                ));
            }
        }
    }
    if let Err(mm) = file_holds(&mem, Content::all(Writer::Nobody))? {
        return fail(format!(
            "the private mapping's write reached the DAX file: {mm}"
        ));
    }
    // The slow path refuses by the VMA (check_vma_flags(): vma_is_fsdax()
    // whatever the mapping), GUP-fast pins the anonymous pages it finds:
    // the table says which refusals are the kernel's known behaviour.
    let subject = Subject {
        mechanism: match source {
            PinSource::GupTest { write: false, .. } => Mechanism::RoPin,
            PinSource::GupTest { write: true, .. } => Mechanism::RwPin,
            _ => Mechanism::IoUringPin,
        },
        memory: MemoryClass::FsdaxFile,
        size: None,
        mapping: Mapping::Private,
        kernel,
    };
    let mut held = match source.take(mem.region)? {
        Ok(h) => h,
        Err(e) => {
            diag(format!(
                "{} of the anonymous copy in a MAP_PRIVATE fsdax mapping was refused: {e} ({})",
                source.name(),
                where_is(&mem)
            ));
            return Ok(judge(&subject, Observed::Refused(e)));
        }
    };
    debug_assert!(source.longterm());
    diag(format!("{} granted on {}", source.name(), where_is(&mem)));
    Ok(
        match held.check(mem.region, mem.pattern, Content::all(Writer::Setup))? {
            Ok(()) => judge(&subject, Observed::Clean),
            Err(mm) => Outcome::Fail(format!(
                "{} does not see the private copy's data: {mm}",
                source.name()
            )),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_trials_named_from_their_values() {
        let c = scenarios(&crate::tests::reference_host());
        assert_eq!(c.len(), 15);
        assert_eq!(
            c[0].name,
            "io_uring fixed buffer (R/W longterm pin) of a MAP_SHARED file mapping is refused ... with file on fsdax"
        );
        assert!(c.iter().all(|s| s.family == Family::FSDAX_PINS));
    }
}
