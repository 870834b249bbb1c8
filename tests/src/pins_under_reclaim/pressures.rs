//! How each pressure but KSM is applied to the pinned pages: MADV_PAGEOUT
//! and MADV_COLD (with an unpinned control page that proves pageout works),
//! move_pages() and mbind() to the node the pages are on, MADV_COLLAPSE on
//! the PMD range around them, /proc/sys/vm/compact_memory. Each returns
//! `Applied`: the syscall's result and the vmstat counters that moved, for
//! the table in `mod.rs` to judge.

use std::collections::BTreeMap;
use std::time::Instant;

use cowgup_fixtures::anon::{AnonBacking, AnonMemory};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::{env, fail, kb, skip, Step};
use cowgup_harness::diag;
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, MmapAdvise};

use super::{errno_name, errno_of, Applied};
/// linux/mempolicy.h: fail (EIO) when pages that should move do not.
const MPOL_MF_STRICT: libc::c_int = 1 << 0;
/// linux/mempolicy.h: move the pages mapped only by this process.
const MPOL_MF_MOVE: libc::c_int = 1 << 1;

/// MADV_PAGEOUT / MADV_COLD on the pinned range. For MADV_PAGEOUT an
/// unpinned control page is paged out too: if it does not go to swap,
/// pageout cannot work here and the trial skips.
pub(super) fn madvise_lru(
    m: &AnonMemory,
    backing: AnonBacking,
    advice: i32,
    what: &str,
) -> Step<Applied> {
    let control = if advice == libc::MADV_PAGEOUT && !backing.is_hugetlb() {
        let page = env().page_size;
        let c = mem::map_anon(page, RW, MapFlags::MAP_PRIVATE)
            .or_else(|e| fail(format!("mmap() failed: {e}")))?;
        let _ = c.madvise_raw(libc::MADV_NOHUGEPAGE);
        c.touch_write(page);
        c.madvise(MmapAdvise::MADV_PAGEOUT, "MADV_PAGEOUT on the control page")?;
        let pte = pagemap::entry(c.addr).or_else(fail)?;
        if !pte.swapped() {
            return skip(format!(
                "MADV_PAGEOUT did not swap out an unpinned control page (its entry is {pte:?}; \
                 swap: {}): pageout cannot be tried on the pinned pages",
                swap_summary()
            ));
        }
        Some(format!("{pte:?}"))
    } else {
        None
    };
    let before = vmstat();
    let errno = errno_of(m.region.madvise_raw(advice));
    let delta = vmstat_delta(&before, &["pswpout", "pgdeactivate", "pgactivate"]);
    let summary = format!(
        "madvise({what}) on {} returned {}{}; vmstat {}",
        kb(m.region.len),
        errno_name(errno),
        control.as_ref().map_or(String::new(), |c| format!(
            " (the unpinned control page went to swap: {c})"
        )),
        show_delta(&delta)
    );
    Ok(Applied {
        errno,
        summary,
        detail: serde_json::json!({ "control": control, "vmstat": delta }),
    })
}

fn swap_summary() -> String {
    std::fs::read_to_string("/proc/swaps")
        .map(|s| {
            let devs: Vec<String> = s
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .collect();
            if devs.is_empty() {
                "/proc/swaps lists no device".into()
            } else {
                devs.join("; ")
            }
        })
        .unwrap_or_else(|e| format!("/proc/swaps unreadable: {e}"))
}

/// The address of the first base page of every unit of the region.
fn unit_addrs(m: &AnonMemory) -> Vec<*mut libc::c_void> {
    (0..m.region.len)
        .step_by(m.pattern.unit)
        .map(|off| (m.region.addr + off) as *mut libc::c_void)
        .collect()
}

/// move_pages(2) on this process; `nodes` None queries.
fn move_pages(pages: &[*mut libc::c_void], nodes: Option<&[i32]>) -> (i64, Vec<i32>) {
    let mut status = vec![i32::MIN; pages.len()];
    // SAFETY: arrays of `pages.len()` entries; pid 0 is this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            nodes.map_or(std::ptr::null(), |n| n.as_ptr()),
            status.as_mut_ptr(),
            MPOL_MF_MOVE,
        )
    };
    let r = if r < 0 { -(Errno::last() as i64) } else { r };
    (r, status)
}

/// The node every unit is on now (move_pages() with no target nodes).
fn current_nodes(m: &AnonMemory) -> Step<Vec<i32>> {
    let (r, status) = move_pages(&unit_addrs(m), None);
    if r < 0 {
        return fail(format!(
            "move_pages() querying the pinned pages' nodes failed: {}",
            Errno::from_raw(-r as i32)
        ));
    }
    if let Some((i, s)) = status.iter().enumerate().find(|(_, s)| **s < 0) {
        return fail(format!(
            "move_pages() query: unit {i} has status {} (not mapped although pinned?)",
            Errno::from_raw(-s)
        ));
    }
    Ok(status)
}

/// Per-page statuses, grouped: "512 x node 0".
fn show_status(status: &[i32]) -> String {
    let mut count: BTreeMap<i32, usize> = BTreeMap::new();
    for s in status {
        *count.entry(*s).or_default() += 1;
    }
    count
        .iter()
        .map(|(s, n)| {
            if *s >= 0 {
                format!("{n} x node {s}")
            } else {
                format!("{n} x {}", Errno::from_raw(-s))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn move_pages_same_node(m: &AnonMemory, _: AnonBacking) -> Step<Applied> {
    let nodes = current_nodes(m)?;
    let before = vmstat();
    let (r, status) = move_pages(&unit_addrs(m), Some(&nodes));
    let delta = vmstat_delta(&before, &["pgmigrate_success", "pgmigrate_fail"]);
    // Each page's status is its node (nothing to do) or a negative errno
    // (not moved): a different node would be a page moved elsewhere.
    let stray = status
        .iter()
        .zip(&nodes)
        .position(|(s, n)| *s >= 0 && s != n);
    if let Some(i) = stray {
        return fail(format!(
            "move_pages() to the same node reports unit {i} on node {} (asked for node {}): {}",
            status[i],
            nodes[i],
            show_status(&status)
        ));
    }
    let errno = if r < 0 { -r as i32 } else { 0 };
    Ok(Applied {
        errno,
        summary: format!(
            "move_pages() of {} unit(s) to their node returned {r}, status {}; vmstat {}",
            nodes.len(),
            show_status(&status),
            show_delta(&delta)
        ),
        detail: serde_json::json!({
            "returned": r,
            "nodes": show_status(&nodes),
            "status": show_status(&status),
            "vmstat": delta,
        }),
    })
}

pub(super) fn mbind_same_node(m: &AnonMemory, _: AnonBacking) -> Step<Applied> {
    let nodes = current_nodes(m)?;
    let node = nodes[0];
    if nodes.iter().any(|n| *n != node) || !(0..64).contains(&node) {
        return fail(format!(
            "the pinned pages are on nodes {}: expected one node below 64",
            show_status(&nodes)
        ));
    }
    let mask: u64 = 1 << node;
    let before = vmstat();
    // SAFETY: a one-word node mask; the range is this trial's mapping.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            m.region.addr,
            m.region.len,
            libc::MPOL_BIND,
            &mask as *const u64,
            64 as libc::c_ulong,
            (MPOL_MF_MOVE | MPOL_MF_STRICT) as libc::c_uint,
        )
    };
    let errno = if r < 0 { Errno::last() as i32 } else { 0 };
    let delta = vmstat_delta(&before, &["pgmigrate_success", "pgmigrate_fail"]);
    let (_, status) = move_pages(&unit_addrs(m), None);
    Ok(Applied {
        errno,
        summary: format!(
            "mbind(MPOL_BIND to node {node}, MPOL_MF_MOVE|MPOL_MF_STRICT) returned {}; pages now on {}; vmstat {}",
            errno_name(errno),
            show_status(&status),
            show_delta(&delta)
        ),
        detail: serde_json::json!({ "node": node, "status": show_status(&status), "vmstat": delta }),
    })
}

/// The mapping (from /proc/self/maps) that holds `addr`: (start, end).
fn vma_of(addr: usize) -> Step<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .or_else(|e| fail(format!("reading /proc/self/maps failed: {e}")))?;
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        if a <= addr && addr < b {
            return Ok((a, b));
        }
    }
    fail(format!("no mapping holds 0x{addr:x} in /proc/self/maps"))
}

/// MADV_COLLAPSE on the PMD-aligned range holding the pinned pages (what
/// madvise_collapse() works on), when one mapping covers all of it.
pub(super) fn collapse(m: &AnonMemory, backing: AnonBacking) -> Step<Applied> {
    let target = if backing.is_hugetlb() {
        m.region
    } else {
        let Some(pmd) = env().pmd_size else {
            return skip("no PMD-sized THP on this kernel: MADV_COLLAPSE has nothing to make");
        };
        let start = m.region.addr / pmd * pmd;
        let (a, b) = vma_of(m.region.addr)?;
        if m.region.end() > start + pmd || a > start || b < start + pmd {
            diag(format!(
                "evidence: pinned pages 0x{:x}+{} in the mapping 0x{a:x}-0x{b:x}",
                m.region.addr,
                kb(m.region.len)
            ));
            return skip(format!(
                "the mapping of the pinned pages ({}) holds no whole PMD-aligned {} range around \
                 them: MADV_COLLAPSE has nothing to collapse (madvise_collapse() works on whole PMD \
                 ranges only)",
                kb(b - a),
                kb(pmd)
            ));
        }
        Region::new(start, pmd)
    };
    let before = vmstat();
    let errno = errno_of(target.madvise_raw(libc::MADV_COLLAPSE));
    let delta = vmstat_delta(
        &before,
        &["thp_collapse_alloc", "thp_collapse_alloc_failed"],
    );
    if errno == libc::ENOMEM {
        return skip(format!(
            "MADV_COLLAPSE could not allocate a {} page (ENOMEM): collapse was not tried",
            kb(target.len)
        ));
    }
    Ok(Applied {
        errno,
        summary: format!(
            "madvise(MADV_COLLAPSE) on 0x{:x}+{} returned {}; vmstat {}",
            target.addr,
            kb(target.len),
            errno_name(errno),
            show_delta(&delta)
        ),
        detail: serde_json::json!({ "addr": target.addr, "len": target.len, "vmstat": delta }),
    })
}

/// /proc/sys/vm/compact_memory: compact every zone of every node, now.
pub(super) fn compact(_: &AnonMemory, _: AnonBacking) -> Step<Applied> {
    let before = vmstat();
    let started = Instant::now();
    let r = cowgup_fixtures::mem::compact_memory();
    let delta = vmstat_delta(
        &before,
        &[
            "compact_migrate_scanned",
            "compact_isolated",
            "pgmigrate_success",
            "pgmigrate_fail",
        ],
    );
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => skip(format!(
            "writing /proc/sys/vm/compact_memory needs root: {e}"
        )),
        Err(e) => fail(format!("writing /proc/sys/vm/compact_memory failed: {e}")),
        Ok(()) => Ok(Applied {
            errno: 0,
            summary: format!(
                "compact_memory took {:.2} s; vmstat {}",
                started.elapsed().as_secs_f64(),
                show_delta(&delta)
            ),
            detail: serde_json::json!({ "vmstat": delta }),
        }),
    }
}

fn vmstat() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// How these counters changed since `before` (system-wide: other activity counts too).
fn vmstat_delta(before: &BTreeMap<String, u64>, keys: &[&str]) -> BTreeMap<String, i64> {
    let now = vmstat();
    keys.iter()
        .filter_map(|k| {
            let (a, b) = (before.get(*k)?, now.get(*k)?);
            Some((k.to_string(), *b as i64 - *a as i64))
        })
        .collect()
}

fn show_delta(d: &BTreeMap<String, i64>) -> String {
    if d.is_empty() {
        return "(counters unreadable)".into();
    }
    d.iter()
        .map(|(k, v)| format!("{k} +{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
