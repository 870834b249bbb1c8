//! Pins under reclaim and migration: while a long-term pin (an io_uring
//! fixed buffer, or a gup_test PIN_LONGTERM pin) holds the pages of an
//! anonymous backing, the kernel is asked to reclaim, age, migrate, collapse,
//! merge or compact them. Afterwards the pinned pages must still be the ones
//! mapped (same PFN), and whatever the kernel did, the pin and the process
//! must still see each other's writes: the process writes, the pin is read
//! (WRITE_FIXED / PIN_LONGTERM_TEST_READ); the pin writes (READ_FIXED), the
//! process reads.
//!
//! What each pressure may legitimately do to a pinned page is data in
//! `PRESSURES` (`Pressure::pinned`), argued from the kernel source above
//! each entry; the syscall results it may return are data too.
//!
//! Where each piece is:
//! - here: the case table (`PRESSURES`, with what each pressure may do to a
//!   pinned page and return, and `SOURCES`), the catalogue (`scenarios`),
//!   one trial (`run`) and its judgement (PFNs kept, both directions seen);
//! - `pressures.rs`: how each pressure is applied (madvise, move_pages(),
//!   mbind(), MADV_COLLAPSE, compaction) and the vmstat counters it reports;
//! - `ksm.rs`: KSM merging, which needs ksmd proven to run first.

mod ksm;
mod pressures;

use cowgup_fixtures::anon::{AnonBacking, AnonMemory};
use cowgup_fixtures::evidence::View;
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pagemap::Pte;
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::stamp::{Mismatch, Writer};
use cowgup_fixtures::{fail, skip, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Knob, Outcome};
use nix::errno::Errno;

use crate::common::{write_and_check_own, ORIGINAL};
use crate::cross::{anon_backings, Case, Cross};
use crate::scenario::{Family, Scenario};
use ksm::ksm_merge;
use pressures::{collapse, compact, madvise_lru, mbind_same_node, move_pages_same_node};

/// What the kernel may do to the mapping of a pinned page under a pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Pinned {
    /// The pinned page stays mapped where it is: a changed PFN fails.
    Stays,
    /// The kernel may move or replace the mapping; the pin and the process
    /// must then still see each other's writes.
    MayReplace,
}

/// The syscall results a pressure may return, by backing.
#[derive(Clone, Copy, Debug)]
pub struct Results {
    /// errno values (0: success) accepted on THP and base pages.
    pub anon: &'static [i32],
    /// ... and on hugetlb.
    pub hugetlb: &'static [i32],
}

impl Results {
    fn accepted(&self, backing: AnonBacking) -> &'static [i32] {
        if backing.is_hugetlb() {
            self.hugetlb
        } else {
            self.anon
        }
    }
}

/// One way of putting pressure on pinned pages.
pub struct Pressure {
    /// The first part of the trial name.
    pub desc: &'static str,
    pub pinned: Pinned,
    pub results: Results,
    /// Needs beyond the backing's and the pin source's.
    pub needs: &'static [Need],
    pub knobs: fn() -> Vec<Knob>,
    pub apply: fn(&AnonMemory, AnonBacking) -> Step<Applied>,
}

/// What applying a pressure did, as the kernel reported it.
pub struct Applied {
    /// The syscall's result: 0 or the errno.
    pub errno: i32,
    /// One line for the diagnostics.
    pub summary: String,
    pub detail: serde_json::Value,
}

const OK: i32 = 0;

pub const PRESSURES: [Pressure; 7] = [
    // mm/vmscan.c shrink_folio_list(): an anonymous folio not yet in the
    // swap cache is kept (`goto keep_locked`) when folio_maybe_dma_pinned(),
    // before add_to_swap() and try_to_unmap(); a folio that is already in the
    // swap cache is unmapped but then hits the second
    // folio_maybe_dma_pinned() check (`goto activate_locked`) and is not
    // freed. mm/rmap.c try_to_unmap_one() also refuses to unmap a pinned
    // PageAnonExclusive page (folio_try_share_anon_rmap_pte() fails). So the
    // pinned page stays mapped. hugetlb: mm/madvise.c can_madv_lru_vma()
    // rejects VM_HUGETLB, madvise() returns EINVAL.
    Pressure {
        desc: "MADV_PAGEOUT",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK],
            hugetlb: &[libc::EINVAL],
        },
        needs: &[Need::Swap],
        knobs: Vec::new,
        apply: |m, b| madvise_lru(m, b, libc::MADV_PAGEOUT, "MADV_PAGEOUT"),
    },
    // mm/madvise.c madvise_cold_or_pageout_pte_range() with pageout=false
    // only clears the young bits and deactivates the folio
    // (folio_deactivate()): nothing is unmapped. hugetlb: EINVAL as above.
    Pressure {
        desc: "MADV_COLD",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK],
            hugetlb: &[libc::EINVAL],
        },
        needs: &[],
        knobs: Vec::new,
        apply: |m, b| madvise_lru(m, b, libc::MADV_COLD, "MADV_COLD"),
    },
    // mm/migrate.c add_folio_for_migration(): a folio already on the target
    // node is not queued (`if (folio_nid(folio) == node) return 0`), and
    // do_pages_move() stores that node as the page's status. Were it queued,
    // folio_migrate_mapping() refuses a folio whose refcount is above the
    // expected one (-EAGAIN, the page stays; status -EBUSY/-EAGAIN), and
    // try_to_migrate_one() refuses to unmap a pinned exclusive anon page.
    // Either way the pinned page stays.
    Pressure {
        desc: "move_pages() to the same node",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK],
            hugetlb: &[OK],
        },
        needs: &[],
        knobs: Vec::new,
        apply: move_pages_same_node,
    },
    // mm/mempolicy.c queue_folio_required(): with MPOL_MF_MOVE only folios
    // on a node outside the new policy's nodemask are queued for migration;
    // on the same node nothing is queued and mbind() returns 0. Were they
    // queued, the migration refcount check above keeps the pinned page
    // (MPOL_MF_STRICT then makes mbind() fail with EIO).
    Pressure {
        desc: "mbind(MPOL_MF_MOVE) to the same node",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK, libc::EIO],
            hugetlb: &[OK, libc::EIO],
        },
        needs: &[],
        knobs: Vec::new,
        apply: mbind_same_node,
    },
    // mm/khugepaged.c hpage_collapse_scan_pmd() and
    // __collapse_huge_page_isolate(): a folio whose refcount is above
    // is_refcount_suitable() (mapcount + swap cache) is not collapsed
    // (SCAN_PAGE_COUNT, which madvise_collapse_errno() turns into EAGAIN);
    // a range already PMD-mapped is SCAN_PMD_MAPPED (success, nothing
    // done). hugetlb: madvise_collapse()'s thp_vma_allowable_order() fails,
    // EINVAL.
    Pressure {
        desc: "MADV_COLLAPSE",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK, libc::EAGAIN],
            hugetlb: &[libc::EINVAL],
        },
        needs: &[],
        knobs: Vec::new,
        apply: collapse,
    },
    // mm/ksm.c write_protect_page(): the merge candidate is write-protected
    // only if folio_mapcount() + 1 + swapped == folio_ref_count() (no
    // O_DIRECT-like I/O, no pin) and folio_try_share_anon_rmap_pte()
    // succeeds, which it does not for a maybe-DMA-pinned page; a large folio
    // must first be split (try_to_merge_one_page(): split_folio()), which
    // can_split_folio() refuses while pinned. So the pinned page is never
    // replaced by the KSM page. hugetlb: vma_ksm_compatible() rejects
    // VM_HUGETLB, ksmd never sees the pages (the trial skips).
    Pressure {
        desc: "KSM merging of an identical page",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK],
            hugetlb: &[OK],
        },
        needs: &[],
        knobs: crate::beyond_upstream::ksm_knobs,
        apply: ksm_merge,
    },
    // mm/compaction.c isolate_migratepages_block(): an anonymous folio with
    // more references than mappings ("Migration will fail if an anonymous
    // page is pinned in memory") is not isolated; migration would fail on
    // folio_migrate_mapping()'s refcount check anyway. hugetlb pages are only
    // isolated for alloc_contig, not by /proc/sys/vm/compact_memory.
    Pressure {
        desc: "compaction",
        pinned: Pinned::Stays,
        results: Results {
            anon: &[OK],
            hugetlb: &[OK],
        },
        needs: &[],
        knobs: Vec::new,
        apply: compact,
    },
];

/// The pin sources: an io_uring fixed buffer everywhere, and where gup_test
/// exists a read-only long-term GUP-fast pin (cow.c's R/O pin, the other
/// GUP path).
pub const SOURCES: [PinSource; 2] = [
    PinSource::IoUringFixed,
    PinSource::GupTest {
        write: false,
        fast: true,
    },
];

fn source_label(source: PinSource) -> &'static str {
    match source {
        PinSource::IoUringFixed => "io_uring fixed buffer",
        PinSource::GupTest { .. } => "gup_test R/O longterm GUP-fast pin",
        _ => source.name(),
    }
}

/// A case: a pressure on pages pinned by a source (named after both).
impl Case for (&'static Pressure, PinSource) {
    fn desc(&self) -> String {
        let (pressure, source) = *self;
        format!("{} while pinned by {}", pressure.desc, source_label(source))
    }
    /// The source's needs, then the pressure's.
    fn needs(&self) -> Vec<Need> {
        let (pressure, source) = *self;
        source
            .needs()
            .into_iter()
            .chain(pressure.needs.iter().copied())
            .collect()
    }
    fn pins(&self) -> bool {
        true
    }
}

/// The family's trials: pressure x pin source x anonymous backing.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let cases = PRESSURES
        .iter()
        .flat_map(|pressure| SOURCES.map(|source| (pressure, source)));
    Cross::new(Family::PINS_UNDER_RECLAIM, caps, cases, anon_backings(caps))
        .more_knobs(|(pressure, _), _| (pressure.knobs)())
        .build(|opts, (pressure, source), backing| run(opts, pressure, source, backing))
}

/// Pin, apply the pressure, and check the pin against the process both ways.
fn run(
    opts: &TrialOptions,
    pressure: &Pressure,
    source: PinSource,
    backing: AnonBacking,
) -> Step<Outcome> {
    let m = backing.setup(opts)?;
    let (region, pattern) = (m.region, m.pattern);
    let mut held = take_pin(source, region)?;
    let pinned = View::capture(region, pattern.unit)?;
    let applied = (pressure.apply)(&m, backing)?;
    let after = View::capture(region, pattern.unit)?;
    accept(pressure, backing, &applied)?;

    // The process writes; the pin must see it.
    let written = ORIGINAL.written_by(Writer::Parent);
    write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the process")?;
    let after_write = View::capture(region, pattern.unit)?;
    let pin_sees = held.check(region, pattern, written)?;
    // The pin writes (io_uring only: the others cannot write); the process must see it.
    let process_sees = match &mut held {
        Held::Ring(buf) => Some(write_through_ring(buf, region, pattern)?),
        _ => None,
    };

    let views = Views {
        pinned,
        after,
        after_write,
    };
    views.evidence();
    let through_pin = match &pin_sees {
        Ok(()) => format!(
            "the pin saw {} on all {} page(s)",
            written.describe(),
            pattern.pages(region.len)
        ),
        Err(mm) => format!("the pin saw: {mm}"),
    };
    let into_process = match &process_sees {
        None => String::new(),
        Some(Ok(n)) => format!("; the process saw the pin's READ_FIXED on all {n} page(s)"),
        Some(Err(mm)) => format!("; the process saw: {mm}"),
    };
    let pfn_line = pfn_story(&views.pinned, &views.after, &views.after_write);
    diag(format!(
        "evidence: {} -> {}; {pfn_line}; {through_pin}{into_process}",
        pressure.desc, applied.summary
    ));
    Ok(verdict(
        pressure,
        source,
        &views,
        pin_sees,
        process_sees,
        &pfn_line,
    ))
}

/// The pin the trial holds: a gup_test pin refused with EINVAL skips (the
/// backing is one gup_test cannot pin), any other refusal fails.
fn take_pin(source: PinSource, region: Region) -> Step<Held> {
    match source.take(region)? {
        Ok(h) => Ok(h),
        Err(Errno::EINVAL) if matches!(source, PinSource::GupTest { .. }) => {
            skip("PIN_LONGTERM_TEST_START failed: EINVAL")
        }
        Err(e) => fail(format!("{} failed: {e}", source.name())),
    }
}

/// The pressure's syscall result, recorded, and failed unless the table
/// accepts it for this backing.
fn accept(pressure: &Pressure, backing: AnonBacking, applied: &Applied) -> Step<()> {
    cowgup_harness::evidence(
        "pressure",
        serde_json::json!({
            "pressure": pressure.desc,
            "pinned_may": pressure.pinned,
            "errno": applied.errno,
            "summary": applied.summary,
            "detail": applied.detail,
        }),
    );
    let accepted = pressure.results.accepted(backing);
    if !accepted.contains(&applied.errno) {
        return fail(format!(
            "{} returned {} on {}, expected one of {} ({})",
            pressure.desc,
            errno_name(applied.errno),
            backing.suffix(),
            accepted
                .iter()
                .map(|e| errno_name(*e))
                .collect::<Vec<_>>()
                .join(", "),
            applied.summary
        ));
    }
    Ok(())
}

/// The pinned range's page-table entries at the three moments the
/// judgement compares.
struct Views {
    pinned: View,
    after: View,
    after_write: View,
}

impl Views {
    fn moved_by_pressure(&self) -> Vec<(usize, Pte, Pte)> {
        moved(&self.pinned, &self.after)
    }

    fn moved_by_write(&self) -> Vec<(usize, Pte, Pte)> {
        moved(&self.pinned, &self.after_write)
    }

    fn evidence(&self) {
        cowgup_harness::evidence(
            "pfns",
            serde_json::json!({
                "pinned": pfns(&self.pinned),
                "after_pressure": pfns(&self.after),
                "after_process_write": pfns(&self.after_write),
                "moved_by_pressure": self.moved_by_pressure().len(),
                "moved_by_write": self.moved_by_write().len(),
            }),
        );
    }
}

/// Stale in either direction fails; so does a pinned page that moved where
/// the table says it stays.
fn verdict(
    pressure: &Pressure,
    source: PinSource,
    views: &Views,
    pin_sees: Result<(), Mismatch>,
    process_sees: Option<Result<usize, Mismatch>>,
    pfn_line: &str,
) -> Outcome {
    if let Err(mm) = pin_sees {
        cowgup_harness::evidence("mismatch", &mm);
        return Outcome::Fail(format!(
            "stale pin after {}: the {} does not see the process's write: {mm} ({pfn_line})",
            pressure.desc,
            source_label(source)
        ));
    }
    if let Some(Err(mm)) = process_sees {
        cowgup_harness::evidence("mismatch", &mm);
        return Outcome::Fail(format!(
            "stale pin after {}: the process does not see what the io_uring fixed buffer wrote \
             (READ_FIXED): {mm} ({pfn_line})",
            pressure.desc
        ));
    }
    if pressure.pinned == Pinned::Stays {
        let (by_pressure, by_write) = (views.moved_by_pressure(), views.moved_by_write());
        if let Some(&(unit, was, now)) = by_pressure.first().or(by_write.first()) {
            let when = if by_pressure.is_empty() {
                "by the process's write after it"
            } else {
                "by it"
            };
            return Outcome::Fail(format!(
                "pinned page moved under {} ({when}): unit {unit} was {was:?}, is {now:?} ({} of {} \
                 units moved); a pinned page must stay where it is",
                pressure.desc,
                by_pressure.len().max(by_write.len()),
                views.pinned.ptes.len()
            ));
        }
    }
    Outcome::Pass
}

/// READ_FIXED the child's stamps into the first base page of every unit of
/// the buffer (at most 512 pages), then read them as the process.
/// `Ok(pages)` when the process saw every one.
fn write_through_ring(
    buf: &mut cowgup_fixtures::pin::FixedBuffer,
    region: Region,
    pattern: cowgup_fixtures::stamp::Pattern,
) -> Step<Result<usize, Mismatch>> {
    let page = pattern.page;
    let units = region.len / pattern.unit;
    let step = units.div_ceil(512).max(1) * pattern.unit;
    let offsets: Vec<usize> = (0..region.len).step_by(step).collect();
    let src =
        nix::sys::memfd::memfd_create("cowgup-into-pin", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .or_else(|e| fail(format!("memfd_create() failed: {e}")))?;
    let src = std::fs::File::from(src);
    for &off in &offsets {
        let image = pattern.image(region.sub(off, page), Writer::Child);
        std::os::unix::fs::FileExt::write_all_at(&src, &image, off as u64)
            .or_else(|e| fail(format!("writing the memfd at +0x{off:x} failed: {e}")))?;
    }
    let ranges: Vec<(usize, usize)> = offsets.iter().map(|&o| (o, page)).collect();
    buf.write_through_pin(&src, &ranges)?;
    for &off in &offsets {
        if let Err(mut mm) = pattern.check(region.sub(off, page), Writer::Child) {
            mm.offset += off;
            mm.page += off / page;
            mm.pages = pattern.pages(region.len);
            return Ok(Err(mm));
        }
    }
    Ok(Ok(offsets.len()))
}

/// Units whose page-table entry no longer maps the PFN it mapped when
/// pinned: (unit, then, now). Units whose PFN was not visible are left out.
fn moved(before: &View, after: &View) -> Vec<(usize, Pte, Pte)> {
    before
        .ptes
        .iter()
        .zip(&after.ptes)
        .enumerate()
        .filter(|(_, (b, a))| b.pfn().is_some() && b.pfn() != a.pfn())
        .map(|(i, (b, a))| (i, *b, *a))
        .collect()
}

fn pfns(v: &View) -> Vec<String> {
    v.ptes.iter().take(8).map(|p| format!("{p:?}")).collect()
}

/// The first unit's PFN at each step, and how many units moved.
fn pfn_story(pinned: &View, after: &View, after_write: &View) -> String {
    let first = |v: &View| {
        v.ptes
            .first()
            .map_or("none".to_string(), |p| format!("{p:?}"))
    };
    if pinned.ptes.first().and_then(|p| p.pfn()).is_none() {
        return format!("PFNs not visible (pinned unit 0: {})", first(pinned));
    }
    format!(
        "unit 0: {} pinned, {} after the pressure, {} after the process's write; {} of {} units moved",
        first(pinned),
        first(after),
        first(after_write),
        moved(pinned, after).len().max(moved(pinned, after_write).len()),
        pinned.ptes.len()
    )
}

fn errno_name(e: i32) -> String {
    if e == 0 {
        "0 (success)".into()
    } else {
        format!("{}", Errno::from_raw(e))
    }
}

fn errno_of(r: Result<(), Errno>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowgup_fixtures::stamp::Content;

    #[test]
    fn names_are_derived_and_unique() {
        let caps = crate::tests::reference_host();
        let all = scenarios(&caps);
        let backings = AnonBacking::all(&caps.thp_sizes, caps.pmd_size, &[2 << 20, 1 << 30]).len();
        assert_eq!(all.len(), PRESSURES.len() * SOURCES.len() * backings);
        let names: std::collections::BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert!(
            names.contains("MADV_PAGEOUT while pinned by io_uring fixed buffer ... with base page")
        );
        assert!(all.iter().all(|s| s.pins));
        let pageout = &all[0];
        assert!(pageout.needs.contains(&Need::Swap) && pageout.needs.contains(&Need::IoUring));
    }

    #[test]
    fn accepted_results_follow_the_backing() {
        let pageout = &PRESSURES[0];
        assert_eq!(pageout.results.accepted(AnonBacking::BasePage), &[OK]);
        assert_eq!(
            pageout
                .results
                .accepted(AnonBacking::Hugetlb { size: 2 << 20 }),
            &[libc::EINVAL]
        );
    }

    #[test]
    fn moved_units_compare_visible_pfns_only() {
        let v = |p: &[u64]| View {
            ptes: p.iter().map(|&x| Pte(x)).collect(),
            first: Default::default(),
        };
        let present = |pfn: u64| (1u64 << 63) | pfn;
        let before = v(&[present(1), present(2), 1 << 63]);
        let after = v(&[present(1), 1 << 62, present(9)]);
        let m = moved(&before, &after);
        assert_eq!(m.len(), 1, "unit 1 went to swap; unit 2 had no visible PFN");
        assert_eq!(m[0].0, 1);
        assert!(!Content::all(Writer::Child).describe().is_empty());
    }
}
