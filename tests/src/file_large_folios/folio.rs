//! The backings: a file whose page cache holds one large folio, mapped
//! `MAP_PRIVATE`, `PROT_READ`. How each backing makes its file (a huge=always
//! tmpfs, a memfd, the shmem file of shared anonymous memory) and the shmem
//! knobs it needs, the proof that the folio is there (`prove_folio`: THP
//! head and tail flags, PFN alignment, smaps), and the checks every case
//! makes of the page cache (`FolioMemory`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::{scratch_dir, Need, ScratchFs};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::stamp::{Pattern, Writer};
use cowgup_fixtures::{env, fail, kb, skip, Step, TrialOptions};
use cowgup_harness::probe::THP_DIR;
use cowgup_harness::{diag, Knob};
use nix::sys::mman::{MapFlags, ProtFlags};
use procfs::PhysicalPageFlags;

use super::CALL_LIMIT;
use crate::common::{write_and_check_own, ORIGINAL};

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
    pub(super) fn page_cache_unchanged(&self, after: &str) -> Step<()> {
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
    pub(super) fn cow_write(&self) -> Step<()> {
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
    pub(super) fn after_cow(&self) -> Step<()> {
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
    pub(super) fn announce(&self, what: &str) {
        diag(format!(
            "{what} on the {} kB folio ({}), at most {} s",
            self.region.len / 1024,
            self.folio,
            CALL_LIMIT.as_secs()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowgup_harness::Outcome;

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
}
