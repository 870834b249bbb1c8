//! The doors fork() keeps closed, and pages that move while pinned or
//! COW-shared. Before pinned pages were safe across fork(), RDMA stacks
//! (libibverbs' ibv_fork_init(), DPDK) marked registered memory
//! MADV_DONTFORK so fork() leaves it out of the child, and MADV_WIPEONFORK
//! gives a child zeroes instead of a copy; fork() honours both in
//! dup_mmap() (kernel/fork.c), next to the COW decisions the cow families
//! test. Pages also move: mremap() moves page tables (mm/mremap.c
//! move_page_tables(), move_hugetlb_page_tables()), pinned or COW-shared
//! pages with them, and UFFDIO_MOVE (6.8+, mm/userfaultfd.c move_pages())
//! must refuse pinned and non-exclusive pages.
//!
//! Cases x backings (`memory::FlagBacking`: every anonymous backing of
//! cow.c, and MAP_SHARED anonymous memory, memfd and hugetlb memfd) x pin
//! sources (none, io_uring fixed buffer, gup_test R/O and R/W longterm).
//! Every base page is stamped; both sides are checked per page, and page
//! tables (PFNs) are compared across fork and across every move.
//!
//! | case | kernel function whose change it catches |
//! |---|---|
//! | `MADV_DONTFORK` | `dup_mmap()`'s `VM_DONTCOPY` skip; `madvise_vma_behavior()`; hugetlb pool accounting at fork (`hugetlb_dup_vma_private()`, `hugetlb_vm_op_open()`) |
//! | `MADV_DONTFORK` then `MADV_DOFORK` | `madvise_vma_behavior()` clearing `VM_DONTCOPY`; then `copy_present_pte()`/`copy_present_page()`, `copy_hugetlb_page_range()` as cow.c |
//! | `MADV_WIPEONFORK` | `dup_mmap()`'s `VM_WIPEONFORK` (no `anon_vma_fork()`, no `copy_page_range()`); `madvise_vma_behavior()`'s `EINVAL` for file/shared VMAs |
//! | `mremap()` move, grow, shrink, half | `move_page_tables()`/`move_ptes()`/`move_huge_pmd()`, `move_hugetlb_page_tables()`, `vma_to_resize()`/`mremap_to()` (hugetlb growth refused), `do_vmi_munmap()` of a pinned tail |
//! | `UFFDIO_MOVE` | `move_pages()`, `move_pages_pte()`/`move_present_pte()`, `move_pages_huge_pmd()`: `EBUSY` for `folio_maybe_dma_pinned()` and `!PageAnonExclusive()` |

mod memory;
mod moves;
mod probe;

use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::proc::{collect_holding, spawn, Pipe};
use cowgup_fixtures::stamp::{identify, Content, Mismatch, Writer};
use cowgup_fixtures::{fail, Step};
use cowgup_harness::probe::Capabilities;
use nix::sys::mman::MmapAdvise;

use crate::common::{
    child_body, collect, fork_with, write_and_check_own, ChildView, Watched, ORIGINAL,
};
use crate::cross::{Backing, Case, Cross};
use crate::expectations::{self, judge, Mechanism, Observed};
use crate::scenario::{Family, Scenario};

pub use memory::{FlagBacking, Memory, Pool};
pub use moves::{Holder, Op};

/// The per-VMA flag a fork case sets before fork().
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkFlag {
    DontFork,
    /// MADV_DONTFORK, then MADV_DOFORK: fork() copies (or shares) as usual.
    DoForkAgain,
    WipeOnFork,
}

/// A case of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagCase {
    Fork {
        flag: ForkFlag,
        pin: Option<PinSource>,
    },
    Mremap {
        op: Op,
        holder: Holder,
    },
    UffdMove {
        holder: Option<Holder>,
    },
}

/// The pins a fork case takes (none first).
pub const PINS: [Option<PinSource>; 4] = [
    None,
    Some(PinSource::IoUringFixed),
    Some(PinSource::GupTest {
        write: false,
        fast: false,
    }),
    Some(PinSource::GupTest {
        write: true,
        fast: false,
    }),
];

/// Every case, in catalogue order.
pub fn cases() -> Vec<FlagCase> {
    let mut v = Vec::new();
    for flag in [
        ForkFlag::DontFork,
        ForkFlag::DoForkAgain,
        ForkFlag::WipeOnFork,
    ] {
        v.extend(PINS.map(|pin| FlagCase::Fork { flag, pin }));
    }
    for op in Op::ALL {
        v.extend(Holder::ALL.map(|holder| FlagCase::Mremap { op, holder }));
    }
    v.push(FlagCase::UffdMove { holder: None });
    v.push(FlagCase::UffdMove {
        holder: Some(Holder::Pin(PinSource::IoUringFixed)),
    });
    v.push(FlagCase::UffdMove {
        holder: Some(Holder::Child),
    });
    v
}

fn pinned_by(pin: Option<PinSource>) -> String {
    pin.map_or(String::new(), |p| {
        format!(" of pages pinned by {}", p.name())
    })
}

impl Case for FlagCase {
    fn desc(&self) -> String {
        match *self {
            FlagCase::Fork { flag, pin } => {
                let flag = match flag {
                    ForkFlag::DontFork => "MADV_DONTFORK",
                    ForkFlag::DoForkAgain => "MADV_DONTFORK then MADV_DOFORK",
                    ForkFlag::WipeOnFork => "MADV_WIPEONFORK",
                };
                format!("{flag}{}, then fork()", pinned_by(pin))
            }
            FlagCase::Mremap { op, holder } => format!("{}{}", op.desc(), holder.desc()),
            FlagCase::UffdMove { holder } => match holder {
                None => "UFFDIO_MOVE of exclusive pages".into(),
                Some(h) => format!("UFFDIO_MOVE{}", h.desc()),
            },
        }
    }
    fn needs(&self) -> Vec<cowgup_fixtures::needs::Need> {
        match *self {
            FlagCase::Fork { pin, .. } => pin.map_or(vec![], |p| p.needs()),
            FlagCase::Mremap { holder, .. } => holder.needs(),
            FlagCase::UffdMove { holder } => holder.map_or(vec![], |h| h.needs()),
        }
    }
    fn pins(&self) -> bool {
        match *self {
            FlagCase::Fork { pin, .. } => pin.is_some_and(|p| p.pins()),
            FlagCase::Mremap { holder, .. } => holder.pins(),
            FlagCase::UffdMove { holder } => holder.is_some_and(|h| h.pins()),
        }
    }
}

/// Whether a case runs on a backing: a refusal is run once (without pins),
/// a shrink or a half move needs a range of two units or more, UFFDIO_MOVE
/// runs where it may move (private anonymous memory that is not hugetlb;
/// swapped-out pages are left out: it moves swap entries, not pages) and,
/// once, where it may not (hugetlb, shared memory: EINVAL).
fn applies(case: FlagCase, b: FlagBacking) -> bool {
    match case {
        FlagCase::Fork {
            flag: ForkFlag::WipeOnFork,
            pin,
        } => b.private_anon() || pin.is_none(),
        FlagCase::Fork { .. } => true,
        FlagCase::Mremap { op, .. } => !op.splits() || b.units() >= 2,
        // Where it may not move (hugetlb, shared memory) it is refused once.
        FlagCase::UffdMove { holder } => {
            (b.private_anon() && !b.swapped()) || (!b.private_anon() && holder.is_none())
        }
    }
}

/// Every case on every backing it applies to, case by case.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let backings = FlagBacking::all(caps);
    let pairs = cases()
        .into_iter()
        .flat_map(|c| {
            backings
                .iter()
                .filter(move |&&b| applies(c, b))
                .map(move |&b| (c, b))
        })
        .collect();
    Cross::pairs(Family::FORK_FLAGS, caps, pairs)
        .named(|case, backing| {
            // Shared memory is shared with a child, not COW-shared.
            let desc = case.desc();
            let desc = if backing.shared() {
                desc.replace("COW-shared", "shared")
            } else {
                desc
            };
            format!("{desc} ... with {}", backing.suffix())
        })
        .build(move |opts, case, backing| {
            let m = backing.setup(opts)?;
            let observed = match case {
                FlagCase::Fork { flag, pin } => match flag {
                    ForkFlag::DontFork => dont_fork(&m, pin)?,
                    ForkFlag::DoForkAgain => do_fork_again(&m, backing.shared(), pin)?,
                    ForkFlag::WipeOnFork => wipe_on_fork(&m, backing.private_anon(), pin)?,
                },
                FlagCase::Mremap { op, holder } => moves::mremap(&m, backing.shared(), op, holder)?,
                FlagCase::UffdMove { holder } if backing.private_anon() => {
                    moves::uffd_move(&m, holder)?
                }
                FlagCase::UffdMove { .. } => moves::uffd_move_refused(&m)?,
            };
            let mut subject = backing.subject(kernel);
            if let FlagCase::UffdMove { .. } = case {
                subject.mechanism = Mechanism::UffdMove;
            }
            Ok(judge(&subject, observed))
        })
}

/// Take the pin; a refusal fails (long-term pins of anonymous, shmem and
/// hugetlb pages are granted on every kernel this suite runs on).
pub fn take(pin: Option<PinSource>, region: Region) -> Step<Option<Held>> {
    let Some(p) = pin else {
        return Ok(None);
    };
    match p.take(region)? {
        Ok(h) => Ok(Some(h)),
        Err(e) => fail(format!("{} was refused: {e}", p.name())),
    }
}

/// What the pin shows, after the parent wrote: the parent's write.
pub fn through_pin(held: &mut Option<Held>, m: &Memory) -> Step<Result<(), Mismatch>> {
    match held {
        Some(h) => h.check(m.region, m.pattern, ORIGINAL.written_by(Writer::Parent)),
        None => Ok(Ok(())),
    }
}

/// A stale pin: it no longer shows what the process wrote.
pub fn stale(through: Result<(), Mismatch>) -> Option<Observed> {
    through.err().map(|m| {
        cowgup_harness::evidence("mismatch", &m);
        Observed::Leak(format!(
            "Pin went stale: the pin does not see the parent's write: {m}"
        ))
    })
}

/// The parent's pages must stay where they were: nothing shared them, or
/// a pin holds them.
/// The parent's pages stayed where they were across fork() and, while
/// pinned, across its own write; then what the pin showed.
fn parent_kept(
    before: &View,
    after_fork: &View,
    after: &View,
    pinned: bool,
    through: Result<(), Mismatch>,
) -> Step<Observed> {
    unmoved("the parent's pages across fork()", before, after_fork)?;
    if pinned {
        unmoved(
            "the pinned pages across the parent's write",
            after_fork,
            after,
        )?;
    }
    Ok(stale(through).unwrap_or(Observed::Clean))
}

pub fn unmoved(what: &str, before: &View, after: &View) -> Step<()> {
    let s = evidence::compare(what, "before", before, "after", after);
    cowgup_harness::evidence("sharing", &s);
    if s.compared > 0 && s.same < s.compared {
        return fail(format!(
            "{what}: {} of {} units moved to another PFN ({})",
            s.compared - s.same,
            s.compared,
            s.summary
        ));
    }
    Ok(())
}

/// What the child of a MADV_DONTFORK range found.
#[derive(serde::Serialize, serde::Deserialize)]
struct Absent {
    /// A /proc/self/maps line over the range, if fork() copied the VMA.
    vma: Option<String>,
    /// (address, what reading it did) at the first, middle and last page.
    touches: Vec<(usize, probe::Touch)>,
    /// The hugetlb pool while the child is alive.
    pool: Option<Pool>,
}

/// MADV_DONTFORK: the child has no VMA there and faults on the range; the
/// parent's pages stay where they were, with their pin; the hugetlb pool
/// does not move at fork.
fn dont_fork(m: &Memory, pin: Option<PinSource>) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    region.madvise(MmapAdvise::MADV_DONTFORK, "MADV_DONTFORK")?;
    let mut held = take(pin, region)?;
    let before = View::capture(region, pattern.unit)?;
    let pool_before = m.huge.map(Pool::read).transpose()?;
    let report = Pipe::new()?;
    let child = spawn(|| {
        child_body(&report, || {
            let vma = probe::vma_over(region)?;
            let touches = probe::spots(region, pattern.page)
                .into_iter()
                .map(|a| Ok((a, probe::touch(a)?)))
                .collect::<Step<Vec<_>>>()?;
            Ok(Absent {
                vma,
                touches,
                pool: m.huge.map(Pool::read).transpose()?,
            })
        })
    })?;
    let absent: Absent = collect(&report, child)?;
    let pool_after = m.huge.map(Pool::read).transpose()?;
    let after_fork = View::capture(region, pattern.unit)?;
    write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the parent")?;
    let after = View::capture(region, pattern.unit)?;
    let through = through_pin(&mut held, m)?;
    cowgup_harness::evidence(
        "dontfork",
        serde_json::json!({
            "child_vma": absent.vma,
            "child_touches": absent.touches.iter().map(|(a, t)| format!("0x{a:x}: {t}")).collect::<Vec<_>>(),
            "pool_before_fork": pool_before,
            "pool_in_child": absent.pool,
            "pool_after_child": pool_after,
            "pin": pin.map(|p| p.name()),
        }),
    );
    for (i, &(addr, touch)) in absent.touches.iter().enumerate() {
        if let probe::Touch::Read(word) = touch {
            let page = (addr - region.addr) / pattern.page;
            let whose = identify(word).map_or("unrecognised data".into(), |o| {
                o.writer.describe().to_string()
            });
            return Ok(Observed::Leak(format!(
                "Leak from parent into child: the child of a MADV_DONTFORK range read page {page} \
                 (probe {i}): 0x{word:016x} ({whose})"
            )));
        }
        if !touch.is_unmapped_fault_at(addr) {
            return fail(format!(
                "the child's read of 0x{addr:x} in the MADV_DONTFORK range: {touch}, expected \
                 SIGSEGV (SEGV_MAPERR) at that address"
            ));
        }
    }
    if let Some(line) = absent.vma {
        return fail(format!(
            "fork() copied the MADV_DONTFORK VMA into the child: its /proc/self/maps has {line}"
        ));
    }
    if let (Some(b), Some(c), Some(a)) = (pool_before, absent.pool, pool_after) {
        if b != c || b != a {
            return fail(format!(
                "the hugetlb pool moved at fork() of a MADV_DONTFORK range: before {b:?}, with \
                 the child {c:?}, after {a:?}"
            ));
        }
    }
    parent_kept(&before, &after_fork, &after, held.is_some(), through)
}

/// MADV_DONTFORK then MADV_DOFORK: fork() as usual. Private memory: the
/// child keeps the original while the parent writes (and its pin sees the
/// write); shared memory: the child sees the parent's write, on the same pages.
fn do_fork_again(m: &Memory, shared: bool, pin: Option<PinSource>) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    region.madvise(MmapAdvise::MADV_DONTFORK, "MADV_DONTFORK")?;
    region.madvise(MmapAdvise::MADV_DOFORK, "MADV_DOFORK")?;
    let mut held = take(pin, region)?;
    let (watched, child_expects) = watch_child(m, shared)?;
    let Watched { child, go, report } = match watched {
        Ok(w) => w,
        Err(observed) => return Ok(observed),
    };
    let own = write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the parent");
    let parent = View::capture(region, pattern.unit);
    let through = through_pin(&mut held, m);
    go.notify()?;
    let seen = collect::<Option<ChildView>>(&report, child)?;
    own?;
    let (parent, through) = (parent?, through?);
    let Some(child) = seen else {
        return fail("the child sent no view");
    };
    judge_child(shared, &parent, child, child_expects, through)
}

/// Fork a child that checks `region` once the parent has written: the
/// original (private memory) or the parent's write (shared memory).
pub fn watch_child(m: &Memory, shared: bool) -> Step<(Result<Watched, Observed>, Content)> {
    let (region, pattern) = (m.region, m.pattern);
    let expects = if shared {
        ORIGINAL.written_by(Writer::Parent)
    } else {
        ORIGINAL
    };
    let watched = fork_with(
        region,
        pattern,
        || Ok(()),
        |()| {
            damage::copy(Side::Reader, region, pattern);
            Ok(ChildView {
                data: pattern.check(region, expects),
                view: View::capture(region, pattern.unit)?,
            })
        },
    )?;
    Ok((watched, expects))
}

/// The child's copy against the parent's pages after the parent's write.
pub fn judge_child(
    shared: bool,
    parent: &View,
    child: ChildView,
    expects: Content,
    through: Result<(), Mismatch>,
) -> Step<Observed> {
    let units = parent.ptes.len();
    evidence::compare_and_agree(
        "parent vs child after the parent's write",
        ("parent", parent),
        ("child", &child.view.first_units(units)),
        &child.data,
        !shared,
        if shared {
            "the parent's write went to a private copy"
        } else {
            "parent and child still share the page"
        },
    )?;
    if let Some(o) = stale(through) {
        return Ok(o);
    }
    match child.data {
        Ok(()) => Ok(Observed::Clean),
        Err(m) if shared => fail(format!(
            "the child does not see the parent's write to shared memory (expected {}): {m}",
            expects.describe()
        )),
        Err(m) => Ok(Observed::Leak(format!("Leak from parent into child: {m}"))),
    }
}

/// What the child of a MADV_WIPEONFORK range found.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wiped {
    /// Page-table entries populated right after fork(), of all.
    populated: usize,
    units: usize,
    zeroes: Result<(), Mismatch>,
    /// Its own write, on zeroes.
    own: Result<(), Mismatch>,
    view: View,
}

/// MADV_WIPEONFORK: the child starts with empty page tables and reads
/// zeroes; its write stays its own; the parent keeps its data, its pages
/// and its pin. Memory with a file (hugetlb, shmem) refuses the advice
/// with EINVAL (mm/madvise.c: "MADV_WIPEONFORK is only supported on
/// anonymous memory", `vma->vm_file || VM_SHARED`).
fn wipe_on_fork(m: &Memory, private_anon: bool, pin: Option<PinSource>) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let advised = region.madvise_raw(libc::MADV_WIPEONFORK);
    cowgup_harness::evidence(
        "wipeonfork",
        serde_json::json!({ "madvise": advised.map_or_else(|e| e.to_string(), |()| "0".into()) }),
    );
    match (advised, private_anon) {
        (Ok(()), true) => {}
        (Err(nix::errno::Errno::EINVAL), false) => {
            return match pattern.check(region, ORIGINAL) {
                Ok(()) => Ok(Observed::Clean),
                Err(mm) => fail(format!(
                    "the refused MADV_WIPEONFORK changed the memory: {mm}"
                )),
            };
        }
        (Err(e), true) => {
            return fail(format!(
                "MADV_WIPEONFORK refused on private anonymous memory: {e}"
            ))
        }
        (Err(e), false) => {
            return fail(format!(
                "MADV_WIPEONFORK on memory with a file refused with {e}, expected EINVAL"
            ))
        }
        (Ok(()), false) => {
            return fail("MADV_WIPEONFORK accepted on memory with a file (hugetlb or shmem)")
        }
    }
    let mut held = take(pin, region)?;
    let before = View::capture(region, pattern.unit)?;
    let (report, release) = (Pipe::new()?, Pipe::new()?);
    let child = spawn(|| {
        let code = child_body(&report, || {
            let ptes = pagemap::read(region, pattern.unit).or_else(fail)?;
            damage::copy(Side::Reader, region, pattern);
            let zeroes = pattern.check(region, Writer::Nobody);
            pattern.write(region, Writer::Child);
            let own = pattern.check(
                region,
                Content {
                    head: Writer::Child,
                    body: Writer::Nobody,
                },
            );
            Ok(Wiped {
                populated: ptes.iter().filter(|p| p.populated()).count(),
                units: ptes.len(),
                zeroes,
                own,
                view: View::capture(region, pattern.unit)?,
            })
        });
        // Hold the pages until the parent has its own (collect_holding).
        let _ = release.wait();
        code
    })?;
    let (wiped, (kept, after_fork, after)): (Wiped, _) =
        collect_holding(&report, &release, child, || {
            let kept = pattern.check(region, ORIGINAL);
            let after_fork = View::capture(region, pattern.unit)?;
            write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the parent")?;
            Ok((kept, after_fork, View::capture(region, pattern.unit)?))
        })?;
    let through = through_pin(&mut held, m)?;
    if wiped.populated > 0 {
        return fail(format!(
            "the child's page-table entries over the MADV_WIPEONFORK range were populated right \
             after fork() ({} of {}): dup_mmap() copies none there",
            wiped.populated, wiped.units
        ));
    }
    evidence::compare_and_agree(
        "parent vs child after both wrote",
        ("parent", &after),
        ("child", &wiped.view),
        &wiped.zeroes,
        true,
        "the child maps the parent's page",
    )?;
    if let Err(mm) = wiped.zeroes {
        return Ok(Observed::Leak(format!(
            "Leak from parent into child: the child of a MADV_WIPEONFORK range does not read \
             zeroes: {mm}"
        )));
    }
    if let Err(mm) = wiped.own {
        return fail(format!(
            "the child's own write on its zeroed pages is wrong: {mm}"
        ));
    }
    if let Err(mm) = kept {
        return Ok(Observed::Leak(format!(
            "Leak from child into parent: after the child's write the parent's copy holds: {mm}"
        )));
    }
    parent_kept(&before, &after_fork, &after, held.is_some(), through)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_runs_where_it_applies() {
        let caps = crate::tests::reference_host();
        let all = scenarios(&caps);
        // 58 backings: 54 anonymous (cow.c's), MAP_SHARED anon, memfd, 2 hugetlb memfds.
        // Fork flags: 3 x 4 pins on all but MADV_WIPEONFORK's refusals (once each, 6);
        // mremap(): 5 holders x (2 ops on all + 2 splitting ops on the 35 of two
        // units or more); UFFDIO_MOVE: 3 on the 34 unswapped private anon backings,
        // refused once on each of the 6 hugetlb and shared ones.
        assert_eq!(
            all.len(),
            4 * 58 * 2 + (52 * 4 + 6) + 5 * (2 * 58 + 2 * 35) + 3 * 34 + 6
        );
        assert_eq!(all[0].name, "MADV_DONTFORK, then fork() ... with base page");
        assert!(all.iter().any(
            |s| s.name == "UFFDIO_MOVE of pages COW-shared with a child ... with THP (2048 kB)"
        ));
        let uffd_hugetlb: Vec<&Scenario> = all
            .iter()
            .filter(|s| s.name.starts_with("UFFDIO_MOVE") && s.name.contains("hugetlb"))
            .collect();
        assert_eq!(uffd_hugetlb.len(), 4);
        assert!(uffd_hugetlb.iter().all(|s| !s.pins));
        let names: std::collections::BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "names are unique");
    }

    #[test]
    fn refusals_run_once_and_take_no_pin() {
        let caps = crate::tests::reference_host();
        let refused: Vec<Scenario> = scenarios(&caps)
            .into_iter()
            .filter(|s| s.name.starts_with("MADV_WIPEONFORK") && s.name.contains("MAP_SHARED"))
            .collect();
        assert_eq!(refused.len(), 4);
        assert!(refused.iter().all(|s| !s.pins));
    }
}
