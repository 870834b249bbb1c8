//! Target preparation: each `Target` set up, stamped and faulted in as a
//! PROT_READ mapping (a file on the ext4 scratch directory, a memfd, a
//! hugetlb memfd, the zeropages, anonymous memory shared with a child),
//! with the other views of the same data the judgement compares against.
//! How a target is built is mechanics; what it must hold afterwards is
//! judged in `mod.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use cowgup_fixtures::anon::AnonBacking;
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::file::reopen_read_only;
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::{scratch_dir, ScratchFs};
use cowgup_fixtures::non_anon::NonAnonBacking;
use cowgup_fixtures::stamp::{Content, Pattern, Writer};
use cowgup_fixtures::{env, fail, skip, uffd, Step, TrialOptions};
use cowgup_harness::Outcome;
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};

use super::Target;
use crate::common::{Checker, ORIGINAL};

/// The target set up and faulted in, with everything that must keep the
/// original data after the forced write.
pub(super) struct Prepared {
    /// The PROT_READ mapping the forced write goes to.
    pub(super) target: Region,
    /// The part of it that is written (the head word of every base page).
    pub(super) written: Region,
    pub(super) pattern: Pattern,
    /// What the target holds before the write.
    pub(super) original: Content,
    /// Other mappings of the same data (stamped for `target`'s addresses).
    pub(super) views: Vec<(&'static str, Region)>,
    pub(super) file: Option<FileSide>,
    /// The child the pages are COW-shared with.
    pub(super) checker: Option<Checker>,
    /// Zeropages: a fresh mapping made afterwards must read zeroes.
    pub(super) fresh_zero: Option<usize>,
    /// Kept open for the trial (userfaultfd).
    pub(super) _hold: Vec<OwnedFd>,
}

/// The file behind a file target, for pread, O_DIRECT pread and fresh maps.
pub(super) struct FileSide {
    pub(super) file: std::fs::File,
    pub(super) direct: Option<std::fs::File>,
    pub(super) len: usize,
    pub(super) unit: usize,
}
impl Prepared {
    /// The parts of the target outside `written` (at `off`).
    pub(super) fn written_off_range(&self, off: usize) -> Vec<Region> {
        let mut v = Vec::new();
        if off > 0 {
            v.push(self.target.sub(0, off));
        }
        let end = off + self.written.len;
        if end < self.target.len {
            v.push(self.target.sub(end, self.target.len - end));
        }
        v
    }
}

/// `target` built, stamped and faulted in, with what must keep the original.
pub(super) fn prepare(target: Target, opts: &TrialOptions) -> Step<Prepared> {
    match target {
        Target::SharedWithChild(b) => shared_with_child(b, opts),
        Target::Zeropage => zeropage(NonAnonBacking::SharedZeropage, opts),
        Target::HugeZeropage => zeropage(NonAnonBacking::HugeZeropage, opts),
        Target::PrivateFile | Target::SharedFile => ext4_file(target == Target::SharedFile, opts),
        Target::PrivateMemfd | Target::SharedMemfd => memfd(target == Target::SharedMemfd, opts),
        Target::UffdMinorMemfd => {
            let mut p = memfd(false, opts)?;
            map_by_uffd_continue(&mut p)?;
            Ok(p)
        }
        Target::Hugetlb { size, shared } => hugetlb_memfd(size, shared, opts),
    }
}

/// Anonymous memory made PROT_READ and COW-shared with a child, which
/// checks afterwards that it kept the original.
fn shared_with_child(b: AnonBacking, opts: &TrialOptions) -> Step<Prepared> {
    let m = b.setup(opts)?;
    m.region.mprotect(ProtFlags::PROT_READ)?;
    let checker = match Checker::fork(m.region, m.pattern)? {
        Ok(c) => c,
        Err(observed) => return fail(format!("before the forced write: {observed:?}")),
    };
    Ok(Prepared {
        target: m.region,
        written: m.region,
        pattern: m.pattern,
        original: ORIGINAL,
        views: vec![],
        file: None,
        checker: Some(checker),
        fresh_zero: None,
        _hold: vec![],
    })
}

/// A PROT_READ private mapping of the shared or the huge zeropage.
fn zeropage(backing: NonAnonBacking, opts: &TrialOptions) -> Step<Prepared> {
    let page = env().page_size;
    // smem is PROT_READ; mem, the other private mapping of the zeropage, must stay zero.
    let m = backing.setup(opts)?;
    let written = if m.smem.len > page {
        // One page inside the huge zeropage: the PMD must split,
        // the rest keep reading zeroes.
        m.smem.sub(page, page)
    } else {
        m.smem
    };
    Ok(Prepared {
        target: m.smem,
        written,
        pattern: m.pattern,
        original: Content::all(Writer::Nobody),
        views: vec![("the other private mapping of the zeropage", m.mem)],
        file: None,
        checker: None,
        fresh_zero: Some(m.smem.len),
        _hold: vec![],
    })
}

/// A file on the ext4 scratch directory, opened read-only (and O_DIRECT,
/// to read the disk afterwards) and unlinked at once.
fn ext4_file(shared: bool, opts: &TrialOptions) -> Step<Prepared> {
    let page = env().page_size;
    let dir = scratch_dir(ScratchFs::Ext4).ok_or_else(|| {
        Outcome::Fail("no ext4 scratch directory although the trial's need was met".into())
    })?;
    let path = dir.join(format!("force-{}", std::process::id()));
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .or_else(|e| fail(format!("creating {} failed: {e}", path.display())));
    let opened = rw.and_then(|rw| {
        let ro = std::fs::File::open(&path).or_else(|e| {
            fail(format!(
                "reopening {} read-only failed: {e}",
                path.display()
            ))
        })?;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .or_else(|e| skip(format!("cannot open {} with O_DIRECT: {e}", path.display())))?;
        Ok((rw, ro, direct))
    });
    let _ = std::fs::remove_file(&path);
    let (rw, ro, direct) = opened?;
    file_target(rw, ro, Some(direct), 4 * page, opts.pattern(page), shared)
}

/// A memfd mapped shared (through a dup of the writable descriptor) or
/// private (reopened read-only).
fn memfd(shared: bool, opts: &TrialOptions) -> Step<Prepared> {
    let page = env().page_size;
    let fd = nix::sys::memfd::memfd_create("cowgup-force", nix::sys::memfd::MFdFlags::empty())
        .or_else(|e| fail(format!("memfd_create() failed: {e}")))?;
    let rw = std::fs::File::from(fd);
    let ro = to_map(&rw, shared)?;
    file_target(rw, ro, None, 4 * page, opts.pattern(page), shared)
}

/// The private memfd mapping's PTEs installed by UFFDIO_CONTINUE, proved
/// to map the page-cache pages themselves (CVE-2022-2590's starting point).
fn map_by_uffd_continue(p: &mut Prepared) -> Step<()> {
    let page = env().page_size;
    p._hold.push(uffd::uffd_continue(p.target)?);
    let (label, view) = p.views[0];
    let sharing = evidence::compare(
        "target after UFFDIO_CONTINUE vs the MAP_SHARED view",
        "target",
        &View::capture(p.target, page)?,
        label,
        &View::capture(view, page)?,
    );
    cowgup_harness::evidence("sharing", &sharing);
    if sharing.same < sharing.compared {
        return fail(format!(
            "UFFDIO_CONTINUE did not map the page-cache pages: {}",
            sharing.summary
        ));
    }
    Ok(())
}

/// One huge page of a hugetlb memfd, written at its head only.
fn hugetlb_memfd(size: usize, shared: bool, opts: &TrialOptions) -> Step<Prepared> {
    let page = env().page_size;
    let fd = nix::sys::memfd::memfd_create("cowgup-force", mem::hugetlb_memfd_flags(size))
        .or_else(|e| fail(format!("memfd_create(MFD_HUGETLB) failed: {e}")))?;
    let rw = std::fs::File::from(fd);
    let ro = to_map(&rw, shared)?;
    let mut p = file_target(rw, ro, None, size, opts.pattern(size), shared)?;
    // One base page at the head of the huge page; the rest must
    // show the original (the whole huge page was copied).
    p.written = p.target.sub(0, page);
    Ok(p)
}

/// The descriptor a memfd target maps: MAP_SHARED maps the writable one
/// (VM_SHARED, mapped PROT_READ), MAP_PRIVATE one reopened read-only (no
/// write access to the file at all, as in Dirty COW).
fn to_map(rw: &std::fs::File, shared: bool) -> Step<std::fs::File> {
    if shared {
        rw.try_clone()
            .or_else(|e| fail(format!("dup() failed: {e}")))
    } else {
        reopen_read_only(rw)
    }
}

/// What a failed mmap() of `len` bytes of a target's file means: a file
/// larger than a page is a hugetlb one, whose pool is short.
pub(super) fn mmap_failed(len: usize) -> impl FnOnce(Errno) -> Step<Region> {
    move |e| {
        if len > env().page_size {
            skip(format!("need more free huge pages: mmap() failed: {e}"))
        } else {
            fail(format!("mmap() failed: {e}"))
        }
    }
}

/// A file of `len` bytes holding the original stamps for the target's
/// addresses; the target maps `ro` PROT_READ (private, or shared), read in.
fn file_target(
    rw: std::fs::File,
    ro: std::fs::File,
    direct: Option<std::fs::File>,
    len: usize,
    pattern: Pattern,
    shared: bool,
) -> Step<Prepared> {
    let unit = pattern.unit;
    if let Err(e) = nix::fcntl::fallocate(
        rw.as_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        len as i64,
    ) {
        return if unit > env().page_size {
            skip(format!(
                "need more free huge pages: fallocate() failed: {e}"
            ))
        } else {
            fail(format!("fallocate() failed: {e}"))
        };
    }
    // Stamp the file through a writable shared mapping (hugetlbfs has no
    // write()), then map the target at the same address, so the stamps name
    // the target's pages.
    let map = |f: &std::fs::File, prot, flags, at| {
        mem::map_file(f, len, prot, flags, at).or_else(mmap_failed(len))
    };
    let filler = map(&rw, RW, MapFlags::MAP_SHARED, None)?;
    pattern.fill(filler, Writer::Setup);
    filler.munmap()?;
    let sharing = if shared {
        MapFlags::MAP_SHARED
    } else {
        MapFlags::MAP_PRIVATE
    };
    let target = map(&ro, ProtFlags::PROT_READ, sharing, Some(filler.addr))?;
    let view = map(&ro, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, None)?;
    target.touch_read(unit);
    view.touch_read(unit);
    Ok(Prepared {
        target,
        written: target,
        pattern,
        original: ORIGINAL,
        views: vec![(
            "a MAP_SHARED view of the file mapped before the write",
            view,
        )],
        file: Some(FileSide {
            file: ro,
            direct,
            len,
            unit,
        }),
        checker: None,
        fresh_zero: None,
        _hold: vec![],
    })
}
