//! KSM merging as a pressure. ksmd runs on its own schedule, so before the
//! pinned pages are offered it must be seen merging two unpinned twins of
//! them, and afterwards complete two full scans; either not happening within
//! the deadline is a skip that says what ksmd was doing, not a pass.

use std::time::{Duration, Instant};

use cowgup_fixtures::anon::{AnonBacking, AnonMemory};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::pagemap::{self, Pte};
use cowgup_fixtures::{env, fail, skip, Step};
use nix::sys::mman::{MapFlags, MmapAdvise};

use super::{errno_name, errno_of, Applied};

/// How much ksmd walks per full scan, system-wide (why a scan can be slow).
fn ksm_load() -> String {
    let show = |f: &str| ksm_read(f).map_or("unreadable".into(), |v| v.to_string());
    format!(
        "ksmd walks pages_shared {}, pages_sharing {}, pages_unshared {}, pages_volatile {} \
         system-wide at pages_to_scan {}",
        show("pages_shared"),
        show("pages_sharing"),
        show("pages_unshared"),
        show("pages_volatile"),
        show("pages_to_scan")
    )
}

fn ksm_read(file: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/kernel/mm/ksm/{file}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Two unpinned twins of the pinned region's first page are made
/// MADV_MERGEABLE first, and ksmd must merge them into a KSM page (proof that
/// it runs and that the content merges). Only then is the pinned range made
/// MADV_MERGEABLE (had it been first, the pinned page would sit in the
/// unstable tree and block the twins: try_to_merge_two_pages() fails on it),
/// and ksmd must complete two more full scans, so that the pinned page met
/// the KSM page in stable_tree_search() and try_to_merge_with_ksm_page().
pub(super) fn ksm_merge(m: &AnonMemory, backing: AnonBacking) -> Step<Applied> {
    if backing.is_hugetlb() {
        return skip(
            "KSM never scans hugetlb mappings (mm/ksm.c vma_ksm_compatible() rejects VM_HUGETLB): \
             no KSM pressure can reach these pinned pages",
        );
    }
    let twins = twins_of(m)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    twins_merged(twins, started, deadline)?;
    let merged_after = started.elapsed().as_secs_f64();
    let errno = errno_of(m.region.madvise_raw(libc::MADV_MERGEABLE));
    if errno != 0 {
        return Ok(Applied {
            errno,
            summary: format!(
                "MADV_MERGEABLE on the pinned pages returned {}",
                errno_name(errno)
            ),
            detail: serde_json::Value::Null,
        });
    }
    let Some(scans_at_mergeable) = ksm_read("full_scans") else {
        return skip(
            "/sys/kernel/mm/ksm/full_scans unreadable: cannot tell when ksmd saw the pinned pages",
        );
    };
    two_more_scans(scans_at_mergeable, started, deadline)?;
    let (a, _) = twin_ptes(twins)?;
    let pinned = pagemap::entry(m.region.addr).or_else(fail)?;
    let merging = std::fs::read_to_string("/proc/self/ksm_merging_pages")
        .map_or("unreadable".into(), |s| s.trim().to_string());
    let scans = ksm_read("full_scans").unwrap_or(0) - scans_at_mergeable;
    Ok(Applied {
        errno,
        summary: format!(
            "ksmd merged the unpinned twins into KSM page {a:?} ({merged_after:.2} s), then scanned \
             {scans} time(s) with the pinned pages MADV_MERGEABLE; the pinned first page maps \
             {pinned:?}; ksm_merging_pages {merging}"
        ),
        detail: serde_json::json!({
            "ksm_page": format!("{a:?}"),
            "pinned_first": format!("{pinned:?}"),
            "full_scans_after_mergeable": scans,
            "ksm_merging_pages": merging,
        }),
    })
}

/// Two unpinned copies of the pinned region's first page, MADV_MERGEABLE.
fn twins_of(m: &AnonMemory) -> Step<Region> {
    let page = env().page_size;
    let twins = mem::map_anon(2 * page, RW, MapFlags::MAP_PRIVATE)
        .or_else(|e| fail(format!("mmap() failed: {e}")))?;
    let _ = twins.madvise_raw(libc::MADV_NOHUGEPAGE);
    for t in 0..2 {
        // SAFETY: both are mapped pages of this trial.
        unsafe { std::ptr::copy_nonoverlapping(m.region.ptr(), twins.ptr().add(t * page), page) };
    }
    twins.madvise(MmapAdvise::MADV_MERGEABLE, "MADV_MERGEABLE on the twins")?;
    Ok(twins)
}

/// Wait until ksmd maps both twins to one KSM page (a skip, saying what
/// ksmd did, if not by `deadline`).
fn twins_merged(twins: Region, started: Instant, deadline: Instant) -> Step<()> {
    let scans_at_start = ksm_read("full_scans");
    loop {
        let (a, b) = twin_ptes(twins)?;
        if a.pfn().is_some() && a.pfn() == b.pfn() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return skip(format!(
                "ksmd did not merge two identical unpinned pages within {:.1} s (KSM run {:?}, \
                 full_scans {:?} -> {:?}, twins {a:?} / {b:?}; {})",
                started.elapsed().as_secs_f64(),
                ksm_read("run"),
                scans_at_start,
                ksm_read("full_scans"),
                ksm_load()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn twin_ptes(twins: Region) -> Step<(Pte, Pte)> {
    let p = pagemap::read(twins, env().page_size).or_else(fail)?;
    Ok((p[0], p[1]))
}

/// Two full scans of ksmd after the pinned pages became MADV_MERGEABLE, so
/// that the pinned page met the KSM page (a skip if not by `deadline`).
fn two_more_scans(scans_at_mergeable: u64, started: Instant, deadline: Instant) -> Step<()> {
    loop {
        let scans = ksm_read("full_scans").unwrap_or(0);
        if scans >= scans_at_mergeable + 2 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return skip(format!(
                "ksmd did not complete two full scans after the pinned pages became MADV_MERGEABLE \
                 within {:.1} s (full_scans {scans_at_mergeable} -> {scans}; {})",
                started.elapsed().as_secs_f64(),
                ksm_load()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
