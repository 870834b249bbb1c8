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
//!
//! Where each piece is:
//! - here: the case model (the writers `Forcer` and `Racing` as cases, the
//!   `Target`s as backings, `Expect` and what the kernel must do, argued
//!   from check_vma_flags()), the catalogue (`scenarios`: writers x
//!   targets), one trial (`run`) and its judgement (`judge`, `untouched`);
//! - `targets.rs`: how each target is built and faulted in (`prepare`), and
//!   what it leaves for the judgement (`Prepared`);
//! - `readback.rs`: reading back the file, from the page cache and the disk;
//! - `race.rs`: the Dirty COW race against MADV_DONTNEED.

mod race;
mod readback;
mod targets;

use cowgup_fixtures::anon::{AnonBacking, ThpShape};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::force::{poke, proc_mem_without_force, proc_mem_write, WriteResult};
use cowgup_fixtures::mem::{self, Region};
use cowgup_fixtures::needs::{Need, ScratchFs};
use cowgup_fixtures::non_anon::NonAnonBacking;
use cowgup_fixtures::stamp::{Pattern, Writer};
use cowgup_fixtures::{env, fail, kb, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Knob, Outcome};
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};

use crate::common::check_own_write;
use crate::cross::{Backing, Case, Cross};
use crate::expectations::{Observed, Version};
use crate::scenario::{Family, Scenario};
use readback::{check_file, direct_read};
use targets::{mmap_failed, prepare, Prepared};

pub use race::{race, RACE_FOR, RACE_SEED};

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

/// A forced write is a case, on every target; no case pins.
impl Case for Forcer {
    fn desc(&self) -> String {
        format!("Forced write via {}", self.name())
    }
    fn pins(&self) -> bool {
        false
    }
}

/// The same writer racing MADV_DONTNEED (Dirty COW's race), on the private
/// file only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Racing(pub Forcer);

impl Case for Racing {
    fn desc(&self) -> String {
        format!("{} racing MADV_DONTNEED", self.0.desc())
    }
    fn pins(&self) -> bool {
        false
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

impl Backing for Target {
    fn suffix(&self) -> String {
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

    fn group(&self) -> String {
        match *self {
            Target::SharedWithChild(b) => b.group(),
            Target::Hugetlb { size, .. } => format!("memfd hugetlb {}", kb(size)),
            Target::PrivateFile | Target::SharedFile => "ext4 file".into(),
            Target::Zeropage | Target::HugeZeropage => self.suffix(),
            _ => "memfd".into(),
        }
    }

    fn needs(&self) -> Vec<Need> {
        match *self {
            Target::PrivateFile | Target::SharedFile => vec![Need::Scratch(ScratchFs::Ext4)],
            Target::SharedWithChild(b) => b.needs(),
            Target::HugeZeropage => vec![Need::HugeZeropage],
            // The file's page, and one for a private copy.
            Target::Hugetlb { size, .. } => vec![Need::HugetlbPages { size, count: 2 }],
            _ => vec![],
        }
    }

    fn knobs(&self, caps: &Capabilities) -> Vec<Knob> {
        match (*self, caps.pmd_size) {
            (Target::SharedWithChild(b), pmd) => b.knobs(pmd),
            (Target::HugeZeropage, Some(pmd)) => cowgup_fixtures::thp::pmd_inherits(pmd),
            _ => vec![],
        }
    }
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

/// What the kernel did with the forced write, judged against `expect`.
fn judge(
    p: Prepared,
    forcer: Forcer,
    expect: Expect,
    res: &WriteResult,
    attempted: usize,
    after: &View,
) -> Step<Outcome> {
    match expect {
        Expect::PrivateCopy => private_copy(p, forcer, res, attempted, after),
        Expect::Refused => refused(p, forcer.name(), res, attempted),
    }
}

/// Every word written, into a copy only the writer sees: the child, the
/// other views and the file keep the original.
fn private_copy(
    p: Prepared,
    forcer: Forcer,
    res: &WriteResult,
    attempted: usize,
    after: &View,
) -> Step<Outcome> {
    let who = forcer.name();
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
            .check_bytes(other.bytes(), p.written.addr, p.original);
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

/// EIO before any word is written, and nothing changed anywhere.
fn refused(p: Prepared, who: &str, res: &WriteResult, attempted: usize) -> Step<Outcome> {
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
            seen(p.pattern.check_bytes(v.bytes(), p.target.addr, orig)),
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
        let fresh = mem::map_file(
            &f.file,
            f.len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            None,
        )
        .or_else(mmap_failed(f.len))?;
        fresh.touch_read(f.unit);
        see(
            "a fresh MAP_SHARED mapping of the file".into(),
            seen(p.pattern.check_bytes(fresh.bytes(), p.target.addr, orig)),
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
        let zero = fresh.bytes().iter().position(|b| *b != 0);
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

/// The head word of every base page: (address, word `writer` leaves there).
fn heads(r: Region, pattern: Pattern, writer: Writer) -> Vec<(usize, u64)> {
    (0..r.len / pattern.page)
        .map(|i| {
            let addr = r.addr + i * pattern.page;
            (addr, writer.word(addr / pattern.page, 0))
        })
        .collect()
}

/// The family's trials: every writer on every target, target by target,
/// then the bounded race for each writer. Names: `Forced write via <writer>
/// ... with <target>`; the expectation (private copy or EIO) is the
/// kernel's, not part of the name.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = crate::expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let targets = Target::all(caps.pmd_size, &hugetlb);
    let writes = Cross::by_backing(Family::FORCE_WRITE, caps, targets, Forcer::ALL)
        .build(move |opts, forcer, target| run(opts, forcer, target, target.expect(kernel)));
    let races = Forcer::ALL.map(|f| (Racing(f), Target::PrivateFile));
    let races = Cross::pairs(Family::FORCE_WRITE, caps, races.to_vec())
        .build(|opts, Racing(forcer), _| race(opts, forcer));
    writes.into_iter().chain(races).collect()
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
