//! Pages that move: mremap() of a range that is pinned, COW-shared with a
//! child, or both (moved whole, grown, shrunk, half of it moved away, which
//! splits a THP), and UFFDIO_MOVE, which moves exclusive anonymous pages
//! and must refuse pinned and COW-shared ones. Moved memory keeps the
//! stamps of the address it was stamped at (`Pattern::check_moved`), so a
//! page that arrives in the wrong place names the page it is.

use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::View;
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::uffd::Mover;
use cowgup_fixtures::{env, fail, Step};
use nix::errno::Errno;

use super::probe::vma_over;
use super::{judge_child, stale, take, through_pin, unmoved, watch_child, Memory};
use crate::common::{collect, write_and_check_own, ChildView, Watched, ORIGINAL};
use crate::expectations::Observed;

/// What mremap() does to the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// To a new place, aligned as the memory is (a THP stays PMD-mappable).
    Move,
    /// To twice its size at a new place (MREMAP_MAYMOVE | MREMAP_FIXED).
    Grow,
    /// To half its size, in place: the tail is unmapped while pinned.
    Shrink,
    /// Its second half to another place: a THP is split across two VMAs.
    MoveHalf,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Move, Op::Grow, Op::Shrink, Op::MoveHalf];

    pub fn desc(self) -> &'static str {
        match self {
            Op::Move => "mremap() move",
            Op::Grow => "mremap() grow (to twice the size, moved)",
            Op::Shrink => "mremap() shrink (to half the size)",
            Op::MoveHalf => "mremap() move of the second half",
        }
    }

    /// Cuts the range in two: needs two units or more.
    pub fn splits(self) -> bool {
        matches!(self, Op::Shrink | Op::MoveHalf)
    }
}

/// What holds the pages while they move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Pin(PinSource),
    /// A child forked before the move: the pages are COW-shared (private
    /// memory) or shared (shared memory).
    Child,
    /// A child forked first, then the parent pins (which unshares its pages).
    ChildThenPin(PinSource),
}

impl Holder {
    pub const ALL: [Holder; 5] = [
        Holder::Pin(PinSource::IoUringFixed),
        Holder::Pin(PinSource::GupTest {
            write: false,
            fast: false,
        }),
        Holder::Pin(PinSource::GupTest {
            write: true,
            fast: false,
        }),
        Holder::Child,
        Holder::ChildThenPin(PinSource::IoUringFixed),
    ];

    pub fn desc(self) -> String {
        match self {
            Holder::Pin(p) => format!(" of pages pinned by {}", p.name()),
            Holder::Child => " of pages COW-shared with a child".into(),
            Holder::ChildThenPin(p) => format!(
                " of pages COW-shared with a child, then pinned by {}",
                p.name()
            ),
        }
    }

    pub fn pin(self) -> Option<PinSource> {
        match self {
            Holder::Pin(p) | Holder::ChildThenPin(p) => Some(p),
            Holder::Child => None,
        }
    }

    pub fn forks(self) -> bool {
        !matches!(self, Holder::Pin(_))
    }

    pub fn needs(self) -> Vec<Need> {
        self.pin().map_or(vec![], |p| p.needs())
    }

    pub fn pins(self) -> bool {
        self.pin().is_some_and(|p| p.pins())
    }
}

/// A part of the range after the move: where it is now, where it was stamped.
#[derive(Clone, Copy, Debug)]
struct Piece {
    now: Region,
    origin: usize,
}

/// What a successful mremap() left.
struct Applied {
    pieces: Vec<Piece>,
    /// Ranges no VMA may cover any more.
    vacated: Vec<Region>,
    /// The part a growth added, private anonymous memory: zeroes.
    grown: Option<Region>,
}

fn remap(old: Region, new_len: usize, flags: libc::c_int, to: usize) -> Result<usize, Errno> {
    // SAFETY: moves only this trial's own mapping, onto its own reservation.
    let p = unsafe { libc::mremap(old.ptr().cast(), old.len, new_len, flags, to) };
    if p == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(p as usize)
    }
}

const FIXED: libc::c_int = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;

fn apply(op: Op, m: &Memory) -> Step<Result<Applied, Errno>> {
    let region = m.region;
    let page = env().page_size;
    let half = region.len / 2 / page * page;
    let piece = |now, origin| Piece { now, origin };
    Ok(match op {
        Op::Move => {
            let to = mem::reserve(region.len, m.align)?;
            remap(region, region.len, FIXED, to.addr).map(|at| Applied {
                pieces: vec![piece(Region::new(at, region.len), region.addr)],
                vacated: vec![region],
                grown: None,
            })
        }
        Op::Grow => {
            let to = mem::reserve(2 * region.len, m.align)?;
            remap(region, 2 * region.len, FIXED, to.addr).map(|at| Applied {
                pieces: vec![piece(Region::new(at, region.len), region.addr)],
                vacated: vec![region],
                grown: Some(Region::new(at + region.len, region.len)),
            })
        }
        Op::Shrink => remap(region, half, 0, 0).map(|at| Applied {
            pieces: vec![piece(Region::new(at, half), region.addr)],
            vacated: vec![region.sub(half, region.len - half)],
            grown: None,
        }),
        Op::MoveHalf => {
            let tail = region.sub(half, region.len - half);
            let to = mem::reserve(tail.len, page)?;
            remap(tail, tail.len, FIXED, to.addr).map(|at| Applied {
                pieces: vec![
                    piece(region.sub(0, half), region.addr),
                    piece(Region::new(at, tail.len), tail.addr),
                ],
                vacated: vec![tail],
                grown: None,
            })
        }
    })
}

/// The page-table entries of the pieces, in the range's order.
fn view_of(pieces: &[Piece], unit: usize) -> Step<View> {
    let mut views = pieces
        .iter()
        .map(|p| View::capture(p.now, unit))
        .collect::<Step<Vec<View>>>()?;
    let mut all = views.remove(0);
    for v in views {
        all.ptes.extend(v.ptes);
    }
    Ok(all)
}

/// The parent's side of an mremap() case.
struct Moved {
    /// The parent's pages after its write, in the range's order.
    after: View,
    through: Result<(), cowgup_fixtures::stamp::Mismatch>,
}

fn move_and_write(m: &Memory, shared: bool, op: Op, holder: Holder) -> Step<Moved> {
    let (region, pattern) = (m.region, m.pattern);
    let mut held = take(holder.pin(), region)?;
    if op == Op::Shrink {
        // The tail is about to go: the write is made while it is mapped
        // (and COWs what a child shares, before the pages are looked at).
        pattern.write(region, Writer::Parent);
    }
    let before = View::capture(region, pattern.unit)?;
    let applied = match apply(op, m)? {
        Ok(a) => a,
        // mm/mremap.c: "Don't allow remap expansion, because the underlying
        // hugetlb reservation is not yet capable to handle split
        // reservation" (-EINVAL). The range stays as it was.
        Err(Errno::EINVAL) if op == Op::Grow && m.huge.is_some() => {
            cowgup_harness::evidence(
                "mremap",
                serde_json::json!({ "refused": "EINVAL", "op": op.desc() }),
            );
            write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the parent")?;
            let after = View::capture(region, pattern.unit)?;
            if holder.pin().is_some() {
                unmoved(
                    "the pinned pages across the parent's write",
                    &before,
                    &after,
                )?;
            }
            return Ok(Moved {
                after,
                through: through_pin(&mut held, m)?,
            });
        }
        Err(e) => return fail(format!("{} failed: {e}", op.desc())),
    };
    if op == Op::Grow && m.huge.is_some() {
        return fail(
            "mremap() grew a hugetlb mapping: mm/mremap.c refuses hugetlb expansion with EINVAL",
        );
    }
    cowgup_harness::evidence(
        "mremap",
        serde_json::json!({
            "op": op.desc(),
            "pieces": applied.pieces.iter().map(|p| format!("0x{:x}+0x{:x} from 0x{:x}", p.now.addr, p.now.len, p.origin)).collect::<Vec<_>>(),
        }),
    );
    for gone in &applied.vacated {
        if let Some(line) = vma_over(*gone)? {
            return fail(format!(
                "{} left a VMA over the range it vacated (0x{:x}+0x{:x}): {line}",
                op.desc(),
                gone.addr,
                gone.len
            ));
        }
    }
    let moved = view_of(&applied.pieces, pattern.unit)?;
    let kept = before.first_units(moved.ptes.len());
    unmoved("the pages before vs after the move", &kept, &moved)?;
    for p in &applied.pieces {
        if op != Op::Shrink {
            pattern.write_moved(p.now, p.origin, Writer::Parent);
        }
        damage::copy(Side::Writer, p.now, pattern);
        if let Err(mm) = pattern.check_moved(p.now, p.origin, ORIGINAL.written_by(Writer::Parent)) {
            cowgup_harness::evidence("mismatch", &mm);
            return fail(format!(
                "the parent's copy at its new place (0x{:x}, moved from 0x{:x}) is wrong after \
                 its write: {mm}",
                p.now.addr, p.origin
            ));
        }
    }
    if let Some(grown) = applied.grown.filter(|_| !shared) {
        if let Err(mm) = pattern.check(grown, Writer::Nobody) {
            return fail(format!(
                "the part mremap() added to private anonymous memory is not zeroes: {mm}"
            ));
        }
    }
    let after = view_of(&applied.pieces, pattern.unit)?;
    if holder.pin().is_some() {
        unmoved("the pinned pages across the parent's write", &moved, &after)?;
    }
    Ok(Moved {
        after,
        through: through_pin(&mut held, m)?,
    })
}

/// mremap() of a pinned or COW-shared range: the pin and the new mapping
/// agree (same PFNs, the parent's writes seen through the pin); a child
/// keeps its own copy (private memory) or sees the write (shared).
pub fn mremap(m: &Memory, shared: bool, op: Op, holder: Holder) -> Step<Observed> {
    let watched = if holder.forks() {
        let (w, expects) = watch_child(m, shared)?;
        match w {
            Ok(w) => Some((w, expects)),
            Err(observed) => return Ok(observed),
        }
    } else {
        None
    };
    let moved = move_and_write(m, shared, op, holder);
    let Some((Watched { child, go, report }, expects)) = watched else {
        let moved = moved?;
        return Ok(stale(moved.through).unwrap_or(Observed::Clean));
    };
    go.notify()?;
    let seen = collect::<Option<ChildView>>(&report, child)?;
    let moved = moved?;
    let Some(child) = seen else {
        return fail("the child sent no view");
    };
    judge_child(shared, &moved.after, child, expects, moved.through)
}

/// How long UFFDIO_MOVE may take: milliseconds, also under qemu TCG. A
/// move that retries forever in the kernel is a livelock: on 6.12.117 a
/// pinned large folio's split_folio() fails with -EAGAIN, which
/// move_pages() retries (6.12.118 returns -EBUSY there instead).
pub const MOVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A UFFDIO_MOVE that did not return within `MOVE_LIMIT`.
fn no_return(what: &str) -> Observed {
    Observed::Livelock(format!(
        "UFFDIO_MOVE of {what} pages did not return within {} s",
        MOVE_LIMIT.as_secs()
    ))
}

/// UFFDIO_MOVE: exclusive pages move (same PFNs, same data, the source
/// left empty); pinned pages and pages COW-shared with a child are refused
/// with EBUSY (move_pages_pte()/move_present_pte() and move_pages_huge_pmd():
/// `folio_maybe_dma_pinned()` or `!PageAnonExclusive()`; a pinned large
/// folio cannot be split, which is EBUSY too) and stay where they were,
/// unchanged on both sides.
pub fn uffd_move(m: &Memory, holder: Option<Holder>) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let dst = mem::map_aligned(m.align.max(region.len), RW)?.sub(0, region.len);
    let mover = Mover::new(dst)?;
    let Some(holder) = holder else {
        // A page is exclusive once the process wrote it (a page of a
        // partially shared THP is not until then).
        pattern.write(region, Writer::Parent);
        let before = View::capture(region, pattern.unit)?;
        // A large folio is split before its pages move, and split_folio()
        // fails while anything else holds a reference for a moment (an
        // LRU batch a fresh folio may sit in, for one), which
        // move_pages_pte() reports as EBUSY at once since it stopped
        // retrying -EAGAIN: seen once in about 440 moves (a PTE-mapped
        // 1 MiB THP, 6.18.44). Exclusive pages get a few more tries;
        // pinned and shared ones are refused for good on the first.
        let mut busy = 0;
        let moved = loop {
            match mover.move_within(region, MOVE_LIMIT) {
                Some(Err((Errno::EBUSY, 0 | -16))) if busy < 20 => {
                    busy += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => break r,
            }
        };
        cowgup_harness::evidence(
            "uffdio_move",
            serde_json::json!({ "result": format!("{moved:?}"), "ebusy_retries": busy }),
        );
        match moved {
            None => return Ok(no_return("exclusive")),
            Some(Ok(n)) if n == region.len => {}
            Some(Ok(n)) => return fail(format!("UFFDIO_MOVE moved {n} of {} bytes", region.len)),
            // A move the kernel should make, refused: the expectation table
            // is asked (symptom "refused", its errno).
            Some(Err((e, _))) => return Ok(Observed::Refused(e)),
        }
        let left = pagemap::read(region, pattern.unit).or_else(fail)?;
        if let Some(p) = left.iter().find(|p| p.populated()) {
            return fail(format!(
                "UFFDIO_MOVE left a page-table entry at the source: {p:?}"
            ));
        }
        let at_dst = View::capture(dst, pattern.unit)?;
        unmoved("the source's pages vs the destination's", &before, &at_dst)?;
        damage::copy(Side::Writer, dst, pattern);
        if let Err(mm) = pattern.check_moved(dst, region.addr, ORIGINAL.written_by(Writer::Parent))
        {
            cowgup_harness::evidence("mismatch", &mm);
            return fail(format!(
                "the destination does not hold what the source held: {mm}"
            ));
        }
        return Ok(Observed::Clean);
    };
    let watched = if holder.forks() {
        match watch_child(m, false)? {
            (Ok(w), expects) => Some((w, expects)),
            (Err(observed), _) => return Ok(observed),
        }
    } else {
        None
    };
    let parent = refused_and_written(m, &mover, holder);
    let (child, expects) = match watched {
        Some((Watched { child, go, report }, expects)) => {
            go.notify()?;
            (collect::<Option<ChildView>>(&report, child)?, expects)
        }
        None => (None, ORIGINAL),
    };
    let (after, through) = match parent? {
        Ok(p) => p,
        Err(livelock) => return Ok(livelock),
    };
    match child {
        Some(c) => judge_child(false, &after, c, expects, through),
        None if holder.forks() => fail("the child sent no view"),
        None => Ok(stale(through).unwrap_or(Observed::Clean)),
    }
}

/// The parent's pages after its write, and what the pin showed.
type AfterRefusal = (View, Result<(), cowgup_fixtures::stamp::Mismatch>);

/// The parent's side of a refused UFFDIO_MOVE: refused with EBUSY, nothing
/// moved, then the parent writes; its pages after the write and what the
/// pin shows (`Err`: the move did not return).
fn refused_and_written(
    m: &Memory,
    mover: &Mover,
    holder: Holder,
) -> Step<Result<AfterRefusal, Observed>> {
    let (region, pattern) = (m.region, m.pattern);
    let mut held = take(holder.pin(), region)?;
    let before = View::capture(region, pattern.unit)?;
    let moved = mover.move_within(region, MOVE_LIMIT);
    cowgup_harness::evidence(
        "uffdio_move",
        serde_json::json!({ "result": format!("{moved:?}") }),
    );
    let what = if holder.forks() {
        "COW-shared"
    } else {
        "pinned"
    };
    let Some(moved) = moved else {
        return Ok(Err(no_return(what)));
    };
    match moved {
        Err((Errno::EBUSY, _)) => {}
        Ok(n) => {
            return fail(format!(
                "UFFDIO_MOVE moved {n} bytes of {what} pages: move_pages() must refuse them with \
                 EBUSY"
            ))
        }
        Err((e, mv)) => {
            return fail(format!(
                "UFFDIO_MOVE of {what} pages failed with {e} (move = {mv}), expected EBUSY"
            ))
        }
    }
    let dst = pagemap::read(mover.dst, pattern.unit).or_else(fail)?;
    if let Some(p) = dst.iter().find(|p| p.populated()) {
        return fail(format!(
            "the refused UFFDIO_MOVE populated the destination: {p:?}"
        ));
    }
    let stayed = stayed_put(region, pattern.unit, &before)?;
    write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the parent")?;
    let after = View::capture(region, pattern.unit)?;
    if held.is_some() {
        unmoved(
            "the pinned pages across the parent's write",
            &stayed,
            &after,
        )?;
    }
    Ok(Ok((after, through_pin(&mut held, m)?)))
}

/// UFFDIO_MOVE out of memory it may not move from: hugetlb (`VM_HUGETLB`)
/// and shared memory (not `vma_is_anonymous()`, and a page protection other
/// than the private destination's) are refused with EINVAL
/// (mm/userfaultfd.c validate_move_areas()), and stay as they were.
pub fn uffd_move_refused(m: &Memory) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let dst = mem::map_aligned(m.align.max(region.len), RW)?.sub(0, region.len);
    let mover = Mover::new(dst)?;
    let before = View::capture(region, pattern.unit)?;
    let moved = mover.move_within(region, MOVE_LIMIT);
    cowgup_harness::evidence(
        "uffdio_move",
        serde_json::json!({ "result": format!("{moved:?}") }),
    );
    match moved {
        None => return Ok(no_return("hugetlb or shared")),
        Some(Err((Errno::EINVAL, _))) => {}
        Some(Ok(n)) => {
            return fail(format!(
            "UFFDIO_MOVE moved {n} bytes out of hugetlb or shared memory: validate_move_areas() \
                 refuses it with EINVAL"
        ))
        }
        Some(Err((e, mv))) => {
            return fail(format!(
                "UFFDIO_MOVE out of hugetlb or shared memory failed with {e} (move = {mv}), \
                 expected EINVAL"
            ))
        }
    }
    stayed_put(region, pattern.unit, &before)?;
    match pattern.check(region, ORIGINAL) {
        Ok(()) => Ok(Observed::Clean),
        Err(mm) => fail(format!("the refused UFFDIO_MOVE changed the memory: {mm}")),
    }
}

/// The pages of `region` after a refused UFFDIO_MOVE, proven the ones
/// `before` had.
fn stayed_put(region: Region, unit: usize, before: &View) -> Step<View> {
    let stayed = View::capture(region, unit)?;
    unmoved(
        "the pages before vs after the refused UFFDIO_MOVE",
        before,
        &stayed,
    )?;
    Ok(stayed)
}
