//! movable_pins: a long-term pin must never stay on memory that has to stay
//! movable (the "CMA case" of pin_user_pages.rst). Memory faulted in
//! ZONE_MOVABLE — proved by its PFN lying in the Movable zone's span from
//! /proc/zoneinfo — must be migrated out before a FOLL_LONGTERM pin
//! succeeds (mm/gup.c: `__gup_longterm_locked()` ->
//! `check_and_migrate_movable_folios()` -> `migrate_longterm_unpinnable_folios()`,
//! all under `memalloc_pin_save()` so the targets come from other zones).
//! After the pin every PFN is outside ZONE_MOVABLE, the per-page stamps are
//! intact, and a write through the mapping is seen through the pin (the
//! pin holds the page the mapping maps, not the one migrated away from).
//! Short-term pins (O_DIRECT, vmsplice) may leave the memory where it is:
//! the trial records where it is and checks the data through the reference.
//!
//! Needs a Movable zone (`cowgup matrix --topology movable`: `movablecore=2G`)
//! and root (PFNs); skips with the reason otherwise, and when the kernel put
//! the memory elsewhere (saying where).

use cowgup_fixtures::anon::{AnonBacking, ThpShape};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::pagemap;
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::stamp::{Content, Writer};
use cowgup_fixtures::zone::{self, Placement, Zone};
use cowgup_fixtures::{env, fail, skip, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Knob, Outcome};

use crate::cross::Cross;
use crate::scenario::{Family, Scenario};

/// Every pin source, long-term ones first.
pub fn sources() -> impl Iterator<Item = PinSource> {
    PinSource::LONGTERM
        .into_iter()
        .chain([PinSource::ODirect, PinSource::Vmsplice])
}

/// The anonymous backings the kernel allocates movable: base pages, a THP of
/// every size (PMD and mTHP, GFP_TRANSHUGE is movable), every hugetlb size
/// (the pool allocates with GFP_HIGHUSER_MOVABLE where the size can migrate;
/// gigantic pages cannot, and skip saying where they landed).
pub fn backings(caps: &Capabilities) -> Vec<AnonBacking> {
    let mut v = vec![AnonBacking::BasePage];
    v.extend(caps.thp_sizes.iter().map(|&size| AnonBacking::Thp {
        shape: ThpShape::Pmd,
        size,
    }));
    v.extend(
        caps.hugetlb
            .iter()
            .map(|p| AnonBacking::Hugetlb { size: p.size }),
    );
    v
}

pub fn name(source: PinSource, backing: AnonBacking) -> String {
    let what = if source.longterm() {
        "migrates the memory out of ZONE_MOVABLE"
    } else {
        "may leave the memory in ZONE_MOVABLE"
    };
    format!("{} {what} ... with {}", source.name(), backing.suffix())
}

pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    Cross::by_backing(Family::MOVABLE_PINS, caps, backings(caps), sources())
        .named(name)
        .build(|opts, source, backing| run(opts, backing, source))
}

/// Knobs for a hugetlb COW/unshare that happens *inside* a long-term pin
/// (cow.c's "R/O longterm GUP pin ... with memfd hugetlb": the pin of a
/// private mapping's page-cache page must unshare it first, mm/internal.h
/// `gup_must_unshare()`). The new page is allocated under
/// `memalloc_pin_save()`, and `dequeue_hugetlb_folio_node_exact()` then
/// skips every free pool page that is not long-term pinnable: a pool page
/// in ZONE_MOVABLE (where the kernel puts 2 MiB pool pages when it has a
/// Movable zone) cannot be the copy, even the one reserved for the mapping.
/// With no overcommit `alloc_hugetlb_folio()` fails (-ENOSPC ->
/// VM_FAULT_SIGBUS) and the pin with EFAULT. One overcommitted page lets
/// the kernel take a surplus page from the buddy allocator, outside
/// ZONE_MOVABLE under the pin's gfp context. Gigantic sizes have no
/// overcommit (and their pool pages are never movable): no knob.
pub fn unshare_headroom(size: usize, pmd_size: Option<usize>) -> Vec<Knob> {
    if Some(size) != pmd_size {
        return vec![];
    }
    let dir = cowgup_harness::probe::HugetlbPool::dir(size);
    match std::fs::read_to_string(dir.join("nr_overcommit_hugepages")) {
        Ok(v) if v.trim().parse::<u64>().is_ok_and(|n| n == 0) => {
            vec![Knob::new(dir.join("nr_overcommit_hugepages"), "1")]
        }
        _ => vec![],
    }
}

/// Pool pages for the hugetlb trials: the fault takes the free page that was
/// enqueued last (`enqueue_hugetlb_folio()` puts it at the head of the
/// node's free list, `dequeue_hugetlb_folio_node_exact()` takes from the
/// head), and pool pages are allocated GFP_HIGHUSER_MOVABLE, so ZONE_MOVABLE
/// first. But a pool page a long-term pin migrated (any earlier hugetlb pin
/// trial) comes back from outside ZONE_MOVABLE. So each hugetlb trial holds
/// the pool two pages above anything provisioning can have made it (the
/// probed pool plus the largest count any trial needs), and faults in one of
/// those fresh pages (a page more for every next trial). Only where there is a Movable zone: elsewhere the
/// trials skip before touching memory.
pub fn grow_pools(catalogue: &mut [Scenario], caps: &Capabilities) {
    if zone::read().map_or(true, |z| zone::movable(&z).is_empty()) {
        return;
    }
    let most = |catalogue: &[Scenario], size: usize| {
        catalogue
            .iter()
            .flat_map(|s| &s.needs)
            .filter_map(|n| match *n {
                cowgup_fixtures::needs::Need::HugetlbPages { size: s, count } if s == size => {
                    Some(count)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    for pool in &caps.hugetlb {
        if Some(pool.size) != caps.pmd_size {
            continue; // gigantic pages are never allocated movable
        }
        let base = pool.total + most(catalogue, pool.size) + 2;
        let suffix = AnonBacking::Hugetlb { size: pool.size }.suffix();
        let trials = catalogue.iter_mut().filter(|s| {
            s.family == Family::MOVABLE_PINS && s.name.ends_with(&format!("with {suffix}"))
        });
        // One more page per trial: consecutive trials with equal knobs keep
        // them set, and the page the previous trial's pin migrated out of
        // ZONE_MOVABLE, freed last, would head the free list.
        for (i, s) in trials.enumerate() {
            s.knobs.push(Knob::new(
                cowgup_harness::probe::HugetlbPool::dir(pool.size).join("nr_hugepages"),
                (base + i as u64).to_string(),
            ));
        }
    }
}

/// Where each unit of a region lies: (PFN, zone) per page (per huge page
/// for hugetlb).
struct Where {
    units: Vec<(u64, Placement)>,
}

impl Where {
    fn read(region: Region, unit: usize, zones: &[Zone]) -> Step<Where> {
        let ptes = pagemap::read(region, unit).or_else(fail)?;
        let mut units = Vec::with_capacity(ptes.len());
        for (i, p) in ptes.iter().enumerate() {
            let Some(pfn) = p.pfn() else {
                return if p.present() {
                    skip("PFNs are hidden (pagemap without CAP_SYS_ADMIN): cannot tell the zone")
                } else {
                    fail(format!("unit {i} of the region is not present ({p:?})"))
                };
            };
            units.push((pfn, zone::place(zones, pfn)));
        }
        Ok(Where { units })
    }

    /// The first unit whose placement is not `movable`.
    fn first_not(&self, movable: bool) -> Option<&(u64, Placement)> {
        self.units
            .iter()
            .find(|(_, p)| p.movable() != Some(movable))
    }

    /// "512 pages, pfn 0x142800.. : 512 in Movable".
    fn describe(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for (_, p) in &self.units {
            let z = p.short();
            match counts.iter_mut().find(|(n, _)| *n == z) {
                Some((_, c)) => *c += 1,
                None => counts.push((z, 1)),
            }
        }
        let c: Vec<String> = counts.iter().map(|(z, n)| format!("{n} in {z}")).collect();
        format!(
            "{} unit(s) from pfn 0x{:x}: {}",
            self.units.len(),
            self.units.first().map_or(0, |u| u.0),
            c.join(", ")
        )
    }
}

fn run(opts: &TrialOptions, backing: AnonBacking, source: PinSource) -> Step<Outcome> {
    let zones = zone::read().or_else(fail)?;
    let movable = zone::movable(&zones);
    if movable.is_empty() {
        let names: Vec<String> = zones
            .iter()
            .map(|z| format!("{} ({} pages)", z.name, z.present))
            .collect();
        return skip(format!(
            "no populated Movable zone in /proc/zoneinfo (zones: {}): boot with movablecore= \
             (cowgup matrix --topology movable)",
            names.join(", ")
        ));
    }
    let spans: Vec<String> = movable.iter().map(|z| z.to_string()).collect();
    let m = backing.setup(opts)?;
    let unit = if m.is_hugetlb {
        m.region.len
    } else {
        env().page_size
    };
    let before = Where::read(m.region, unit, &zones)?;
    if let Some((pfn, p)) = before.first_not(true) {
        return skip(format!(
            "the memory did not land in ZONE_MOVABLE: pfn 0x{pfn:x} is in {} ({}; Movable: {})",
            p.short(),
            before.describe(),
            spans.join("; ")
        ));
    }
    diag(format!(
        "before the pin: {} ({})",
        before.describe(),
        spans.join("; ")
    ));
    let mut held = match source.take(m.region)? {
        Ok(h) => h,
        Err(e) => {
            return fail(format!(
                "{} of memory in ZONE_MOVABLE failed: {e} (before: {}); the kernel must \
                 migrate it out and pin it",
                source.name(),
                before.describe()
            ))
        }
    };
    let after = Where::read(m.region, unit, &zones)?;
    diag(format!("after the pin: {}", after.describe()));
    let setup = Content::all(Writer::Setup);
    if let Err(mm) = m.pattern.check(m.region, setup) {
        return fail(format!(
            "the memory lost its data across the pin (migrated from {} to {}): {mm}",
            before.describe(),
            after.describe()
        ));
    }
    if !source.longterm() {
        let moved = before
            .units
            .iter()
            .zip(&after.units)
            .filter(|(b, a)| b.0 != a.0)
            .count();
        diag(format!(
            "short-term pin: {moved} of {} unit(s) moved; {}",
            after.units.len(),
            if after.first_not(true).is_none() {
                "all still in ZONE_MOVABLE"
            } else {
                "some left ZONE_MOVABLE"
            }
        ));
        return Ok(match held.check(m.region, m.pattern, setup)? {
            Ok(()) => Outcome::Pass,
            Err(mm) => Outcome::Fail(format!(
                "{} does not see the memory's data: {mm}",
                source.name()
            )),
        });
    }
    if let Some((pfn, p)) = after.first_not(false) {
        return fail(format!(
            "{} was granted but pfn 0x{pfn:x} is still in {} (before: {}; after: {}): \
             check_and_migrate_movable_folios() did not migrate it",
            source.name(),
            p.short(),
            before.describe(),
            after.describe()
        ));
    }
    // The pin and the mapping must hold the same (new) page.
    m.pattern.write(m.region, Writer::Parent);
    let written = setup.written_by(Writer::Parent);
    Ok(match held.check(m.region, m.pattern, written)? {
        Ok(()) => Outcome::Pass,
        Err(mm) => Outcome::Fail(format!(
            "{} does not see the process's write after the migration (pinned the page \
             migrated away from?): {mm}",
            source.name()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_what_each_source_must_do() {
        let thp = AnonBacking::Thp {
            shape: ThpShape::Pmd,
            size: 16 << 10,
        };
        assert_eq!(
            name(PinSource::IoUringFixed, thp),
            "io_uring fixed buffer (R/W longterm pin) migrates the memory out of ZONE_MOVABLE ... with THP (16 kB)"
        );
        assert_eq!(
            name(PinSource::Vmsplice, AnonBacking::BasePage),
            "vmsplice() (FOLL_GET) may leave the memory in ZONE_MOVABLE ... with base page"
        );
        assert_eq!(sources().filter(PinSource::longterm).count(), 5);
    }
}
