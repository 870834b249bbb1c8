//! FOLL_FORCE writes: the Dirty COW family. A debugger's write into a
//! read-only mapping (`/proc/self/mem`, `ptrace(PTRACE_POKEDATA)`) is a GUP
//! with FOLL_FORCE|FOLL_WRITE. In a private (COW) mapping it must land in a
//! private anonymous copy that only this process sees; in a shared mapping,
//! and in hugetlb before 6.14, it must be refused. Every target is a
//! PROT_READ mapping already faulted in by a read.
//!
//! Bugs of this shape: Dirty COW (CVE-2016-5195, a racing MADV_DONTNEED made
//! the retried GUP drop FOLL_WRITE and write the page cache), huge Dirty COW
//! (CVE-2017-1000405, THP and the huge zeropage), and CVE-2022-2590 (a R/O
//! dirty PTE of a shmem page installed by UFFDIO_CONTINUE was writable
//! through FOLL_FORCE).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowgup_fixtures::anon::{AnonBacking, ThpShape};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::{scratch_dir, Need, ScratchFs};
use cowgup_fixtures::non_anon::NonAnonBacking;
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::stamp::{Content, Pattern, Writer};
use cowgup_fixtures::{env, fail, kb, skip, Step, TrialOptions};
use cowgup_harness::{diag, Knob, Outcome};
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};

use crate::common::{check_own_write, child_body, collect, Checker, ORIGINAL};
use crate::expectations::{Observed, Version};
use crate::scenario::{Family, Scenario};
use cowgup_fixtures::force::{
    poke, proc_mem, proc_mem_without_force, proc_mem_write, Tracing, WriteResult,
};
use cowgup_fixtures::{seeded, uffd};
use cowgup_harness::probe::Capabilities;

/// Who makes the forced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forcer {
    /// pwrite() at the mapping's address through /proc/self/mem.
    ProcMem,
    /// A tracer process (a child) seizes the trial process and pokes words.
    Poke,
}

impl Forcer {
    pub const ALL: [Forcer; 2] = [Forcer::ProcMem, Forcer::Poke];

    pub fn name(self) -> &'static str {
        match self {
            Forcer::ProcMem => "/proc/self/mem",
            Forcer::Poke => "ptrace(PTRACE_POKEDATA)",
        }
    }
}

/// What the forced write is aimed at (always a PROT_READ mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// MAP_PRIVATE of an ext4 file opened O_RDONLY (Dirty COW's shape).
    PrivateFile,
    /// Anonymous memory COW-shared with a child (base page or PMD THP).
    SharedWithChild(AnonBacking),
    Zeropage,
    HugeZeropage,
    /// MAP_PRIVATE of a memfd reopened O_RDONLY (shmem).
    PrivateMemfd,
    /// The same, its PTEs installed by UFFDIO_CONTINUE (CVE-2022-2590's shape).
    UffdMinorMemfd,
    /// MAP_SHARED of an ext4 file opened O_RDONLY (no VM_MAYWRITE).
    SharedFile,
    /// MAP_SHARED of a memfd opened O_RDWR, mapped PROT_READ (VM_SHARED).
    SharedMemfd,
    Hugetlb {
        size: usize,
        shared: bool,
    },
}

/// What the kernel must do with a forced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// COW: the write lands in a private anonymous copy only this process sees.
    PrivateCopy,
    /// check_vma_flags() refuses it; userspace sees EIO.
    Refused,
}

/// "mm/hugetlb: support FOLL_FORCE|FOLL_WRITE" (Guillaume Morin, v4 Dec
/// 2024, merged for 6.14; the 6.12 tree still has check_vma_flags()'s
/// "hugetlb does not support FOLL_FORCE|FOLL_WRITE").
pub const HUGETLB_FORCE_SINCE: Version = (6, 14);

impl Target {
    pub fn all(pmd_size: Option<usize>, hugetlb_sizes: &[usize]) -> Vec<Target> {
        let mut v = vec![
            Target::PrivateFile,
            Target::SharedWithChild(AnonBacking::BasePage),
        ];
        if let Some(size) = pmd_size {
            v.push(Target::SharedWithChild(AnonBacking::Thp {
                shape: ThpShape::Pmd,
                size,
            }));
        }
        v.push(Target::Zeropage);
        if pmd_size.is_some() {
            v.push(Target::HugeZeropage);
        }
        v.extend([
            Target::PrivateMemfd,
            Target::UffdMinorMemfd,
            Target::SharedFile,
            Target::SharedMemfd,
        ]);
        for &size in hugetlb_sizes {
            v.push(Target::Hugetlb {
                size,
                shared: false,
            });
            v.push(Target::Hugetlb { size, shared: true });
        }
        v
    }

    pub fn suffix(&self) -> String {
        match *self {
            Target::PrivateFile => "MAP_PRIVATE ext4 file opened read-only".into(),
            Target::SharedWithChild(b) => format!("{} shared with a child", b.suffix()),
            Target::Zeropage => NonAnonBacking::SharedZeropage.suffix(),
            Target::HugeZeropage => NonAnonBacking::HugeZeropage.suffix(),
            Target::PrivateMemfd => "MAP_PRIVATE memfd opened read-only".into(),
            Target::UffdMinorMemfd => {
                "MAP_PRIVATE memfd opened read-only, mapped by UFFDIO_CONTINUE".into()
            }
            Target::SharedFile => "MAP_SHARED ext4 file opened read-only".into(),
            Target::SharedMemfd => "MAP_SHARED memfd mapped PROT_READ".into(),
            Target::Hugetlb { size, shared } => format!(
                "{} memfd hugetlb ({})",
                if shared { "MAP_SHARED" } else { "MAP_PRIVATE" },
                kb(size)
            ),
        }
    }

    pub fn group(&self) -> String {
        match *self {
            Target::SharedWithChild(b) => b.group(),
            Target::Hugetlb { size, .. } => format!("memfd hugetlb {}", kb(size)),
            Target::PrivateFile | Target::SharedFile => "ext4 file".into(),
            Target::Zeropage | Target::HugeZeropage => self.suffix(),
            _ => "memfd".into(),
        }
    }

    pub fn needs(&self) -> Vec<Need> {
        match *self {
            Target::PrivateFile | Target::SharedFile => vec![Need::Scratch(ScratchFs::Ext4)],
            Target::SharedWithChild(b) => b.needs(),
            Target::HugeZeropage => vec![Need::HugeZeropage],
            // The file's page, and one for a private copy.
            Target::Hugetlb { size, .. } => vec![Need::HugetlbPages { size, count: 2 }],
            _ => vec![],
        }
    }

    pub fn knobs(&self, pmd_size: Option<usize>) -> Vec<Knob> {
        match (*self, pmd_size) {
            (Target::SharedWithChild(b), _) => b.knobs(pmd_size),
            (Target::HugeZeropage, Some(pmd)) => cowgup_fixtures::thp::pmd_inherits(pmd),
            _ => vec![],
        }
    }

    /// What this kernel must do, argued from mm/gup.c check_vma_flags():
    /// a write without VM_WRITE needs FOLL_FORCE and a COW mapping
    /// (`is_cow_mapping()`: VM_MAYWRITE without VM_SHARED), and hugetlb
    /// is refused outright before HUGETLB_FORCE_SINCE.
    pub fn expect(&self, kernel: Option<Version>) -> Expect {
        match *self {
            Target::SharedFile | Target::SharedMemfd | Target::Hugetlb { shared: true, .. } => {
                Expect::Refused
            }
            Target::Hugetlb { shared: false, .. } => match kernel {
                Some(v) if v < HUGETLB_FORCE_SINCE => Expect::Refused,
                _ => Expect::PrivateCopy,
            },
            _ => Expect::PrivateCopy,
        }
    }
}

/// The target set up and faulted in, with everything that must keep the
/// original data after the forced write.
struct Prepared {
    /// The PROT_READ mapping the forced write goes to.
    target: Region,
    /// The part of it that is written (the head word of every base page).
    written: Region,
    pattern: Pattern,
    /// What the target holds before the write.
    original: Content,
    /// Other mappings of the same data (stamped for `target`'s addresses).
    views: Vec<(&'static str, Region)>,
    file: Option<FileSide>,
    /// The child the pages are COW-shared with.
    checker: Option<Checker>,
    /// Zeropages: a fresh mapping made afterwards must read zeroes.
    fresh_zero: Option<usize>,
    /// Kept open for the trial (userfaultfd).
    _hold: Vec<OwnedFd>,
}

/// The file behind a file target, for pread, O_DIRECT pread and fresh maps.
struct FileSide {
    file: std::fs::File,
    direct: Option<std::fs::File>,
    len: usize,
    unit: usize,
}

/// One trial: `forcer` writes into `target`, judged by `expect`.
pub fn run(opts: &TrialOptions, forcer: Forcer, target: Target, expect: Expect) -> Step<Outcome> {
    let p = prepare(target, opts)?;
    let before = View::capture(p.written, p.pattern.unit)?;
    let words = heads(p.written, p.pattern, Writer::Parent);
    let res = match forcer {
        Forcer::ProcMem => proc_mem_write(&words)?,
        Forcer::Poke => poke(&words)?,
    };
    let after = View::capture(p.written, p.pattern.unit)?;
    let record = serde_json::json!({
        "writer": forcer.name(),
        "target": target.suffix(),
        "expected": match expect {
            Expect::PrivateCopy => "a private copy",
            Expect::Refused => "refused with EIO",
        },
        "attempted": words.len(),
        "written": res.written,
        "errno": res.errno.map(|e| Errno::from_raw(e).to_string()),
    });
    cowgup_harness::evidence("forced_write", &record);
    diag(format!(
        "evidence: forced write via {}: {} of {} word(s) written{}",
        forcer.name(),
        res.written,
        words.len(),
        res.errno
            .map(|e| format!(", then {}", Errno::from_raw(e)))
            .unwrap_or_default()
    ));
    cowgup_harness::evidence(
        "sharing",
        evidence::compare(
            "written pages before vs after the forced write",
            "before",
            &before,
            "after",
            &after,
        ),
    );
    judge(p, forcer, expect, &res, words.len(), &after)
}

fn judge(
    p: Prepared,
    forcer: Forcer,
    expect: Expect,
    res: &WriteResult,
    attempted: usize,
    after: &View,
) -> Step<Outcome> {
    let who = forcer.name();
    match expect {
        Expect::PrivateCopy => {
            if res.written != attempted {
                if forcer == Forcer::ProcMem {
                    if let Some(why) = proc_mem_without_force() {
                        return Ok(Outcome::Skip(why));
                    }
                }
                let why = res
                    .errno
                    .map_or("a short write".into(), |e| Errno::from_raw(e).to_string());
                return Ok(Outcome::Fail(format!(
                    "forced write via {who} refused after {} of {attempted} word(s): {why} \
                     (a COW mapping must take FOLL_FORCE writes into a private copy)",
                    res.written
                )));
            }
            if let Some(checker) = p.checker {
                // The child's copy must keep the original; the writer sees its write.
                return Ok(match checker.judge_parents_write(p.written)? {
                    Observed::Clean => Outcome::Pass,
                    other => Outcome::Fail(format!(
                        "forced write via {who} reached the child: {other:?}"
                    )),
                });
            }
            check_own_write(
                p.written,
                p.pattern,
                p.original.written_by(Writer::Parent),
                "the forced writer",
            )?;
            // The written page must be a new one, not the one the other
            // views map (which must keep the original); a contradiction
            // is reported with whatever else changed.
            let mut agreement = Ok(());
            if let Some((label, view)) = p.views.first() {
                let off = p.written.addr - p.target.addr;
                let other = view.sub(off, p.written.len);
                let theirs = View::capture(other, p.pattern.unit)?;
                let data = p
                    .pattern
                    .check_bytes(read(other), p.written.addr, p.original);
                agreement = evidence::compare_and_agree(
                    "writer's copy vs the other view",
                    ("writer", after),
                    (label, &theirs),
                    &data,
                    true,
                    "the forced write went into the page the other view maps",
                );
            }
            let data = untouched(&p, who)?;
            Ok(match (agreement, data) {
                (Ok(()), d) => d,
                (Err(a), Outcome::Pass) => a,
                (Err(a), d) => Outcome::Fail(format!("{}; {}", a.reason(), d.reason())),
            })
        }
        Expect::Refused => {
            let refused = match (res.written, res.errno.map(Errno::from_raw)) {
                (0, Some(Errno::EIO)) => None,
                (0, Some(e)) => Some(format!("refused with {e}, expected EIO")),
                (n, e) => Some(format!(
                    "the kernel took {n} of {attempted} forced word(s){} into a mapping where \
                     FOLL_FORCE must be refused (check_vma_flags: no COW mapping, or hugetlb)",
                    e.map(|e| format!(" (then {e})")).unwrap_or_default()
                )),
            };
            // Whatever happened, nothing may have changed.
            let data = untouched(&p, who)?;
            Ok(match (refused, data) {
                (None, d) => d,
                (Some(why), Outcome::Pass) => Outcome::Fail(why),
                (Some(why), Outcome::Fail(d)) => Outcome::Fail(format!("{why}; {d}")),
                (Some(why), other) => Outcome::Fail(format!("{why}; {other:?}")),
            })
        }
    }
}

/// The rest of the target, every other view, the file (page cache and
/// disk) and a fresh mapping still hold the original.
fn untouched(p: &Prepared, who: &str) -> Step<Outcome> {
    let orig = p.original;
    let mut wrong = Vec::new();
    let written_off = p.written.addr - p.target.addr;
    let own = if p.written.len == p.target.len {
        None
    } else {
        Some(p.written_off_range(written_off))
    };
    let mut see = |what: String, r: Result<(), String>| {
        if let Err(m) = r {
            wrong.push(format!("{what}: {m}"));
        }
    };
    if let Some(rest) = own {
        for r in rest {
            see(
                "the unwritten rest of the target".into(),
                seen(p.pattern.check(r, orig)),
            );
        }
    }
    for (label, v) in &p.views {
        see(
            (*label).to_string(),
            seen(p.pattern.check_bytes(read(*v), p.target.addr, orig)),
        );
    }
    if let Some(f) = &p.file {
        see(
            "pread() of the file (page cache)".into(),
            check_file(&f.file, f.len, p.target.addr, &p.pattern, orig)?,
        );
        if let Some(d) = &f.direct {
            see(
                "O_DIRECT pread() of the file (disk)".into(),
                seen(
                    p.pattern
                        .check_bytes(&direct_read(d, f.len)?, p.target.addr, orig),
                ),
            );
        }
        let fresh = map_file(&f.file, f.len, false, false, None)?;
        fresh.touch_read(f.unit);
        see(
            "a fresh MAP_SHARED mapping of the file".into(),
            seen(p.pattern.check_bytes(read(fresh), p.target.addr, orig)),
        );
    }
    if let Some(len) = p.fresh_zero {
        let fresh = if len == env().page_size {
            mem::map_anon(len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE)
                .or_else(|e| fail(format!("mmap() failed: {e}")))?
        } else {
            let r = mem::map_aligned(len, ProtFlags::PROT_READ)?;
            r.madvise(nix::sys::mman::MmapAdvise::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
            r
        };
        fresh.touch_read(len);
        let zero = read(fresh).iter().position(|b| *b != 0);
        if let Some(off) = zero {
            wrong.push(format!(
                "a fresh private anonymous mapping does not read zeroes: byte +0x{off:x} is not zero \
                 (the forced write reached the zeropage itself)"
            ));
        }
    }
    Ok(if wrong.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "forced write via {who} changed what it must not: {}",
            wrong.join("; ")
        ))
    })
}

/// A stamp check's result as a line, its mismatch sent as evidence.
fn seen(r: Result<(), cowgup_fixtures::stamp::Mismatch>) -> Result<(), String> {
    r.map_err(|m| {
        cowgup_harness::evidence("mismatch", &m);
        m.to_string()
    })
}

impl Prepared {
    /// The parts of the target outside `written` (at `off`).
    fn written_off_range(&self, off: usize) -> Vec<Region> {
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

/// The bytes of a mapping, read for real where they are checked (no copy:
/// a 1 GiB hugetlb page is checked in place).
fn read(r: Region) -> &'static [u8] {
    // SAFETY: trial processes never unmap these mappings while checking them.
    unsafe { std::slice::from_raw_parts(r.ptr(), r.len) }
}

/// Files are read and checked in chunks of this size.
const CHUNK: usize = 2 << 20;

/// pread() the file in chunks and check each against the stamps the target
/// (at `addr`) held; the first wrong chunk, with its file offset.
fn check_file(
    f: &std::fs::File,
    len: usize,
    addr: usize,
    p: &Pattern,
    orig: Content,
) -> Step<Result<(), String>> {
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut off = 0;
    while off < len {
        let n = buf.len().min(len - off);
        f.read_exact_at(&mut buf[..n], off as u64)
            .or_else(|e| fail(format!("pread() of the file at +0x{off:x} failed: {e}")))?;
        if let Err(m) = p.check_bytes(&buf[..n], addr + off, orig) {
            cowgup_harness::evidence("mismatch", &m);
            return Ok(Err(format!(
                "in the {n} bytes at file offset 0x{off:x}: {m}"
            )));
        }
        off += n;
    }
    Ok(Ok(()))
}

/// The head word of every base page: (address, word `writer` leaves there).
fn heads(r: Region, pattern: Pattern, writer: Writer) -> Vec<(usize, u64)> {
    (0..r.len / pattern.page)
        .map(|i| {
            let addr = r.addr + i * pattern.page;
            (addr, writer.word(addr / pattern.page, 0))
        })
        .collect()
}

/// The family's trials: every writer crossed with every target, then the
/// bounded race for each writer. Names: `Forced write via <writer> ... with
/// <target>`; the expectation (private copy or EIO) is the kernel's, not
/// part of the name.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = crate::expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let mut v = Vec::new();
    for target in Target::all(caps.pmd_size, &hugetlb) {
        for forcer in Forcer::ALL {
            let expect = target.expect(kernel);
            v.push(Scenario {
                name: format!(
                    "Forced write via {} ... with {}",
                    forcer.name(),
                    target.suffix()
                ),
                family: Family::FORCE_WRITE,
                group: target.group(),
                needs: target.needs(),
                knobs: target.knobs(caps.pmd_size),
                pins: false,
                body: Arc::new(move |opts| run(opts, forcer, target, expect)),
            });
        }
    }
    for forcer in Forcer::ALL {
        v.push(Scenario {
            name: format!(
                "Forced write via {} racing MADV_DONTNEED ... with {}",
                forcer.name(),
                Target::PrivateFile.suffix()
            ),
            family: Family::FORCE_WRITE,
            group: Target::PrivateFile.group(),
            needs: Target::PrivateFile.needs(),
            knobs: vec![],
            pins: false,
            body: Arc::new(move |opts| race(opts, forcer)),
        });
    }
    v
}

// ---------------------------------------------------------------- targets

fn prepare(target: Target, opts: &TrialOptions) -> Step<Prepared> {
    let page = env().page_size;
    match target {
        Target::SharedWithChild(b) => {
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
        Target::Zeropage | Target::HugeZeropage => {
            let backing = if target == Target::Zeropage {
                NonAnonBacking::SharedZeropage
            } else {
                NonAnonBacking::HugeZeropage
            };
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
        Target::PrivateFile | Target::SharedFile => {
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
                    .or_else(|e| {
                        skip(format!("cannot open {} with O_DIRECT: {e}", path.display()))
                    })?;
                Ok((rw, ro, direct))
            });
            let _ = std::fs::remove_file(&path);
            let (rw, ro, direct) = opened?;
            file_target(
                rw,
                ro,
                Some(direct),
                4 * page,
                opts.pattern(page),
                target == Target::SharedFile,
            )
        }
        Target::PrivateMemfd | Target::UffdMinorMemfd | Target::SharedMemfd => {
            let fd =
                nix::sys::memfd::memfd_create("cowgup-force", nix::sys::memfd::MFdFlags::empty())
                    .or_else(|e| fail(format!("memfd_create() failed: {e}")))?;
            let rw = std::fs::File::from(fd);
            let ro = if target == Target::SharedMemfd {
                rw.try_clone()
                    .or_else(|e| fail(format!("dup() failed: {e}")))?
            } else {
                reopen_read_only(&rw)?
            };
            let mut p = file_target(
                rw,
                ro,
                None,
                4 * page,
                opts.pattern(page),
                target == Target::SharedMemfd,
            )?;
            if target == Target::UffdMinorMemfd {
                p._hold.push(uffd::uffd_continue(p.target)?);
                // CVE-2022-2590's starting point: the private mapping maps
                // the shmem page-cache pages themselves, read-only.
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
            }
            Ok(p)
        }
        Target::Hugetlb { size, shared } => {
            let flags = nix::sys::memfd::MFdFlags::MFD_HUGETLB
                | nix::sys::memfd::MFdFlags::from_bits_retain(
                    (size.trailing_zeros() as libc::c_uint) << libc::MFD_HUGE_SHIFT,
                );
            let fd = nix::sys::memfd::memfd_create("cowgup-force", flags)
                .or_else(|e| fail(format!("memfd_create(MFD_HUGETLB) failed: {e}")))?;
            let rw = std::fs::File::from(fd);
            let ro = if shared {
                rw.try_clone()
                    .or_else(|e| fail(format!("dup() failed: {e}")))?
            } else {
                reopen_read_only(&rw)?
            };
            let mut p = file_target(rw, ro, None, size, opts.pattern(size), shared)?;
            // One base page at the head of the huge page; the rest must
            // show the original (the whole huge page was copied).
            p.written = p.target.sub(0, page);
            Ok(p)
        }
    }
}

fn reopen_read_only(f: &std::fs::File) -> Step<std::fs::File> {
    let path = format!("/proc/self/fd/{}", f.as_raw_fd());
    std::fs::File::open(&path).or_else(|e| fail(format!("reopening {path} read-only failed: {e}")))
}

/// mmap() of `len` bytes of a file, shared or private, R/O or RW.
/// With `at`, exactly there (MAP_FIXED_NOREPLACE: never over a mapping).
fn map_file(
    f: &impl AsFd,
    len: usize,
    private: bool,
    writable: bool,
    at: Option<usize>,
) -> Step<Region> {
    let prot = if writable { RW } else { ProtFlags::PROT_READ };
    let mut flags = if private {
        MapFlags::MAP_PRIVATE
    } else {
        MapFlags::MAP_SHARED
    };
    if at.is_some() {
        flags |= MapFlags::MAP_FIXED_NOREPLACE;
    }
    let nz = std::num::NonZeroUsize::new(len).expect("mapping of zero length");
    let addr = at.and_then(std::num::NonZeroUsize::new);
    // SAFETY: a fresh mapping, at an address no mapping holds; nothing truncates the file.
    let p = unsafe { nix::sys::mman::mmap(addr, nz, prot, flags, f, 0) }.or_else(|e| {
        if len > env().page_size {
            skip(format!("need more free huge pages: mmap() failed: {e}"))
        } else {
            fail(format!("mmap() failed: {e}"))
        }
    })?;
    Ok(Region::new(p.as_ptr() as usize, len))
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
    let filler = map_file(&rw, len, false, true, None)?;
    pattern.fill(filler, Writer::Setup);
    filler.munmap()?;
    let target = map_file(&ro, len, !shared, false, Some(filler.addr))?;
    let view = map_file(&ro, len, false, false, None)?;
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

fn direct_read(f: &std::fs::File, len: usize) -> Step<Vec<u8>> {
    // O_DIRECT needs an aligned buffer: an anonymous mapping.
    let buf = mem::map_anon(len, RW, MapFlags::MAP_PRIVATE)
        .or_else(|e| fail(format!("mmap() failed: {e}")))?;
    // SAFETY: reading into our own mapped, aligned buffer.
    let n = unsafe { libc::pread(f.as_raw_fd(), buf.ptr().cast(), len, 0) };
    if n as usize != len {
        return fail(format!(
            "O_DIRECT pread() returned {n}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let bytes = read(buf).to_vec();
    buf.munmap()?;
    Ok(bytes)
}

// ------------------------------------------------------------------ race

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlb_private_is_refused_only_before_6_14() {
        let t = Target::Hugetlb {
            size: 2 << 20,
            shared: false,
        };
        assert_eq!(t.expect(Some((6, 12))), Expect::Refused);
        assert_eq!(t.expect(Some((6, 14))), Expect::PrivateCopy);
        assert_eq!(t.expect(Some((6, 18))), Expect::PrivateCopy);
        let s = Target::Hugetlb {
            size: 2 << 20,
            shared: true,
        };
        assert_eq!(s.expect(Some((6, 18))), Expect::Refused);
        assert_eq!(Target::SharedMemfd.expect(None), Expect::Refused);
        assert_eq!(Target::PrivateFile.expect(None), Expect::PrivateCopy);
    }

    #[test]
    fn heads_name_every_base_page() {
        let p = Pattern {
            page: 4096,
            unit: 4096,
            thorough: false,
        };
        let h = heads(Region::new(0x10000, 3 * 4096), p, Writer::Parent);
        assert_eq!(h.len(), 3);
        assert_eq!(h[2], (0x12000, Writer::Parent.word(0x12, 0)));
    }
}
