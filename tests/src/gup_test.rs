//! The gup_test invocations of run_vmtests.sh as named trials: its default
//! ones and `run_gup_matrix` (-a): backing x command x write x shared x
//! pages per call. Names are the command lines run_vmtests.sh prints.
//!
//! # What the mapping size buys, and the size the catalogue maps
//!
//! Names stay upstream's command lines (a kernel developer greps for them),
//! but by default a trial maps [`catalogue_size`], not gup_test.c's 128 MiB
//! (or `-m 256` of hugetlb); `--thorough` maps upstream's sizes, and the
//! drop-in `gup_test` program always does. Each trial's diagnostics say which.
//! The argument, from mm/gup_test.c (`__gup_test_ioctl`) and mm/gup.c (6.12):
//!
//! - The ioctl walks `[addr, addr + size)` in calls of `nr_pages_per_call`
//!   pages; the last call is clamped to the end (`nr = (next - addr) /
//!   PAGE_SIZE`) and a short return ends the walk. Nothing else depends on
//!   the size: `pages[]` is `kvcalloc(size / PAGE_SIZE)`, the verification
//!   (`verify_dma_pinned`) and `put_back_pages` loop over what was pinned.
//! - `-n -1` is `nr_pages_per_call = 0xffffffff`: one call over the whole
//!   mapping. It crosses every PMD (and, with -T, every page table) boundary
//!   in the mapping in one `gup_fast_pgd_range()` / `__get_user_pages()`
//!   walk; two boundaries are as many code paths as 63.
//! - `-n 512` is one PMD per call when the mapping is PMD-aligned (a whole
//!   THP via `gup_fast_pmd_leaf()` / `follow_huge_pmd()`, a whole hugetlb
//!   page, a whole page table with -T) and straddles two otherwise.
//! - `-n 123` starts calls mid-THP (`ctx.page_mask` / `record_subpages()` at
//!   an offset), crosses PMD boundaries inside a call (chunks 492..615,
//!   984..1107, 1476..1599 of a 4-PMD mapping) and ends with a short tail
//!   call (1968..2048): every position class 128 MiB has (65536 mod 123 is
//!   just another tail length).
//! - -S (MAP_SHARED of /dev/zero: shmem) vs private, -t/-T (THP or not) and
//!   -H (hugetlb) choose the backing per page or per folio, not per size.
//!   FOLL_LONGTERM (`check_and_migrate_movable_folios()`) looks at each
//!   folio; one folio of a kind exercises it as well as 64.
//!
//! So 4 PMDs (8 MiB on x86-64) cover it: at least 3 fully PMD-mappable
//! ranges even when the mapping is not PMD-aligned, PMD and page-table
//! boundaries inside a call, and the tail. Hugetlb maps 4 huge pages of the
//! default size for the same reasons. The dump trial (`-c ... 0 19 0x1000`)
//! maps the smallest PMD multiple that holds page 0x1000, so page 4096 is
//! still dumped rather than zeroed as "out of range" by `dump_pages_test()`.
//! The pool need of hugetlb trials stays upstream's count, so `--thorough`
//! finds its 256 MiB.

use std::sync::Arc;

use cowgup_fixtures::gup_bench::GupRun;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::{Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Outcome};

use crate::scenario::{Family, Scenario};

/// run_vmtests.sh's default gup_test runs.
const DEFAULT_RUNS: [&str; 5] = [
    "-u -n 1",
    "-u -n -1",
    "-a -n 1",
    "-a -n -1",
    "-ct -F 0x1 0 19 0x1000",
];

/// run_vmtests.sh's `hugetlb_mb`: max(2 pages per CPU, 256 MiB) of the default huge page size.
pub fn hugetlb_mb(default_hugepage: usize, cpus: usize) -> usize {
    (default_hugepage * cpus * 2).max(256 << 20) >> 20
}

/// Every invocation, as an argument string, in run_vmtests.sh's order.
pub fn invocations(hugetlb_mb: usize) -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_RUNS.iter().map(|s| s.to_string()).collect();
    let huge = [
        String::from("-t"),
        String::from("-T"),
        format!("-H -m {hugetlb_mb}"),
    ];
    for h in &huge {
        for cmd in ["-u", "-U", "-a", "-b", "-L"] {
            for write in ["-w", "-W"] {
                for share in ["-S", ""] {
                    for num in ["-n 1", "-n 512", "-n 123", "-n -1"] {
                        let args = [h.as_str(), cmd, write, share, num];
                        v.push(
                            args.iter()
                                .filter(|a| !a.is_empty())
                                .copied()
                                .collect::<Vec<_>>()
                                .join(" "),
                        );
                    }
                }
            }
        }
    }
    v
}

/// PMDs (or hugetlb pages) a catalogue trial maps: see the module comment.
pub const UNITS: usize = 4;

/// The bytes a catalogue trial maps: upstream's (`run.size`, as parsed) with
/// `thorough`, else [`UNITS`] PMDs or default-size huge pages (for `-c`, the
/// smallest PMD multiple that still holds every dumped page).
pub fn catalogue_size(run: &GupRun, page: usize, pmd: usize, huge: usize, thorough: bool) -> usize {
    if thorough {
        return run.size;
    }
    if run.hugetlb {
        return (UNITS * huge).min(run.size);
    }
    let dumped = run.dump_pages.iter().copied().max().unwrap_or(0).max(0) as usize + 1;
    (UNITS * pmd).max((dumped * page).next_multiple_of(pmd))
}

pub fn run(opts: &TrialOptions, args: &str, default_huge: usize) -> Step<Outcome> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let (mut gup_run, _) = GupRun::from_args(&words)
        .map_err(|e| Outcome::Error(format!("bad catalogue entry: {e}")))?;
    let env = cowgup_fixtures::env();
    let pmd = env.pmd_size.unwrap_or(512 * env.page_size);
    let upstream = gup_run.size;
    gup_run.size = catalogue_size(&gup_run, env.page_size, pmd, default_huge, opts.thorough);
    diag(format!(
        "mapping {} KiB ({}; upstream's {} KiB with --thorough)",
        gup_run.size >> 10,
        if opts.thorough {
            "--thorough: upstream's size"
        } else if gup_run.hugetlb {
            "4 hugetlb pages"
        } else {
            "4 PMDs, or up to the last dumped page"
        },
        upstream >> 10
    ));
    let gup = cowgup_fixtures::pin::GupTest::open_file()?;
    Ok(match gup_run.run(&gup, 1) {
        Ok(results) => {
            let r = &results[0];
            for l in &r.lines {
                diag(l);
            }
            if r.status == 0 {
                Outcome::Pass
            } else {
                Outcome::Fail(format!(
                    "ioctl status {} ({})",
                    r.status,
                    nix::errno::Errno::from_raw(-r.status)
                ))
            }
        }
        Err(e) => Outcome::Fail(e),
    })
}

/// run_vmtests.sh's gup_test runs, named by their command lines.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let default_huge = caps.hugetlb_default_size.unwrap_or(2 << 20);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mb = hugetlb_mb(default_huge, cpus);
    invocations(mb)
        .into_iter()
        .map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (run, _) = GupRun::from_args(&words).expect("catalogue entries parse");
            let mut needs = vec![Need::GupTest];
            if run.hugetlb {
                let count = (mb << 20).div_ceil(default_huge) as u64;
                // After GupTest: without gup_test, the pool is not what is missing.
                needs.push(Need::HugetlbPages {
                    size: default_huge,
                    count,
                });
            }
            Scenario {
                name: format!("gup_test {args}"),
                family: Family::GUP_TEST,
                group: "gup_test".into(),
                needs,
                knobs: vec![],
                pins: run.cmd.pins(),
                body: Arc::new(move |opts| self::run(opts, &args, default_huge)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_is_run_vmtests_shape() {
        let v = invocations(256);
        assert_eq!(v.len(), 5 + 3 * 5 * 2 * 2 * 4);
        assert_eq!(v[5], "-t -u -w -S -n 1");
        assert_eq!(v[9], "-t -u -w -n 1");
        assert!(v.contains(&"-H -m 256 -L -W -n -1".to_string()));
        assert_eq!(hugetlb_mb(2 << 20, 2), 256);
        for args in v {
            let words: Vec<&str> = args.split_whitespace().collect();
            assert!(GupRun::from_args(&words).is_ok(), "{args}");
        }
    }

    fn sized(args: &str, thorough: bool) -> usize {
        let words: Vec<&str> = args.split_whitespace().collect();
        let (r, _) = GupRun::from_args(&words).unwrap();
        catalogue_size(&r, 4096, 2 << 20, 2 << 20, thorough)
    }

    #[test]
    fn the_catalogue_maps_four_pmds_and_thorough_upstreams_size() {
        assert_eq!(sized("-t -a -w -n 123", false), 8 << 20);
        assert_eq!(sized("-u -n -1", false), 8 << 20);
        assert_eq!(sized("-H -m 256 -L -W -n -1", false), 8 << 20);
        // Page 0x1000 must still be inside the mapping: 4097 pages -> 9 PMDs.
        assert_eq!(sized("-ct -F 0x1 0 19 0x1000", false), 18 << 20);
        assert_eq!(sized("-t -a -w -n 123", true), 128 << 20);
        assert_eq!(sized("-H -m 256 -L -W -n -1", true), 256 << 20);
        // Never more than upstream's size (1 GiB default huge pages).
        let (r, _) = GupRun::from_args(&["-H", "-m", "2048", "-u"]).unwrap();
        assert_eq!(catalogue_size(&r, 4096, 2 << 20, 1 << 30, false), 2 << 30);
    }
}
