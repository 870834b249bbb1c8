//! The family registry: one row per family, the only place a family's id,
//! title, help text, batching policy and builder are written. `catalogue()`,
//! `cowgup --help`, `cowgup list`, `--family` and the batching policy
//! (`session.rs`) all read it. Adding a family is one new file (with
//! `pub fn scenarios(&Capabilities) -> Vec<Scenario>`) and one row here.

use cowgup_harness::probe::Capabilities;

use crate::scenario::{Family, Scenario};
use crate::{
    beyond_upstream, cow_anon, cow_anon_thp, cow_non_anon, file_large_folios, force_write,
    fork_flags, fsdax_pins, gup_longterm, gup_test, large_folio_pins, movable_pins,
    pins_under_reclaim, remote_access,
};

/// One family of the catalogue.
#[derive(Clone, Copy)]
pub struct FamilyRow {
    /// Stable identifier (the catalogue file it lives in; `--family ID`).
    pub id: &'static str,
    /// Its name in reports (a JUnit testsuite, `--help`).
    pub title: &'static str,
    /// What it runs, in a sentence (`--help`).
    pub covers: &'static str,
    /// Whether its trials may run side by side with others (`--jobs`): they
    /// act only on memory of their own processes. Other families (gup_test's
    /// benchmarks, KSM, reclaim, what reads system-wide state) run alone.
    pub concurrent: bool,
    /// Its trials for this kernel, in order; each carries this row's [`Family`].
    pub build: fn(&Capabilities) -> Vec<Scenario>,
    /// A step over the whole catalogue once every family is built (for what
    /// depends on other families' trials), in row order.
    pub finish: Option<fn(&mut [Scenario], &Capabilities)>,
}

/// The table, and a `Family` constant per row (`NAME => FamilyRow { .. },`):
/// the constant is the row's index, so the two cannot disagree.
macro_rules! registry {
    ($($name:ident => $row:expr,)*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[repr(u8)]
        enum Index {
            $($name,)*
        }

        impl Family {
            $(
                #[doc = concat!("The `", stringify!($name), "` row of the registry.")]
                pub const $name: Family = Family(Index::$name as u8);
            )*
        }

        /// Every family, in catalogue order.
        pub static FAMILIES: &[FamilyRow] = &[$($row,)*];
    };
}

registry! {
    COW_ANON => FamilyRow {
        id: "cow_anon",
        title: "cow: anonymous memory",
        covers: "cow.c's anonymous cases (fork, vmsplice, io_uring fixed buffers, R/O GUP pins) on \
                 base pages, every THP size and shape, every hugetlb size, swapped-out variants",
        concurrent: true,
        build: cow_anon::scenarios,
        finish: None,
    },
    COW_ANON_THP => FamilyRow {
        id: "cow_anon_thp",
        title: "cow: anonymous THP collapse",
        covers: "cow.c's COW after MADV_COLLAPSE, before and after fork()",
        concurrent: true,
        build: cow_anon_thp::scenarios,
        finish: None,
    },
    COW_NON_ANON => FamilyRow {
        id: "cow_non_anon",
        title: "cow: non-anonymous memory",
        covers: "cow.c's private mappings of the shared and huge zeropage, memfd, tmpfile, memfd \
                 hugetlb",
        concurrent: true,
        build: cow_non_anon::scenarios,
        finish: None,
    },
    GUP_LONGTERM => FamilyRow {
        id: "gup_longterm",
        title: "gup_longterm: long-term pins of files",
        covers: "gup_longterm.c: which long-term pins of file pages must be granted or refused \
                 (memfd, tmpfile, memfd hugetlb; files on a tmpfs and an ext4 the suite controls)",
        concurrent: true,
        build: gup_longterm::scenarios,
        finish: None,
    },
    GUP_TEST => FamilyRow {
        id: "gup_test",
        title: "gup_test: get/pin_user_pages() via CONFIG_GUP_TEST",
        covers: "run_vmtests.sh's gup_test invocations, named by their command lines (needs \
                 CONFIG_GUP_TEST; as root the run mounts debugfs for them); each maps 4 PMDs \
                 (hugetlb: 4 huge pages), the paths upstream's 128/256 MiB cover; --thorough \
                 maps upstream's sizes",
        concurrent: false,
        build: gup_test::scenarios,
        finish: None,
    },
    BEYOND_UPSTREAM => FamilyRow {
        id: "beyond_upstream",
        title: "beyond upstream: shared anon, KSM, memfd_secret, O_DIRECT",
        covers: "MAP_SHARED anonymous memory, KSM-merged pages, memfd_secret, O_DIRECT, through \
                 every pin source",
        concurrent: false,
        build: beyond_upstream::scenarios,
        finish: None,
    },
    REMOTE_ACCESS => FamilyRow {
        id: "remote_access",
        title: "remote access: process_vm_readv/writev into COW-shared pages",
        covers: "process_vm_writev() into a child's COW-shared pages changes only the child; \
                 process_vm_readv() returns the child's data, never the parent's; a remote R/O \
                 read unshares (FOLL_REMOTE pins), on every anonymous backing",
        concurrent: false,
        build: remote_access::scenarios,
        finish: None,
    },
    LARGE_FOLIO_PINS => FamilyRow {
        id: "large_folio_pins",
        title: "large folio pins: partial, repeated and torn pins of THP/hugetlb",
        covers: "io_uring fixed buffers on parts of one THP/hugetlb folio (unregister one, fork), \
                 64 rings on one folio released in random order, fork with a live pin and a \
                 writer thread (no torn snapshot), buffers over several folios and one page \
                 mapped twice (CVE-2023-2598 shape): WRITE_FIXED equals the mapping byte for byte",
        concurrent: false,
        build: large_folio_pins::scenarios,
        finish: None,
    },
    FORCE_WRITE => FamilyRow {
        id: "force_write",
        title: "force_write: FOLL_FORCE writes (Dirty COW family)",
        covers: "FOLL_FORCE writes (/proc/self/mem, PTRACE_POKEDATA) into PROT_READ mappings: a \
                 private copy in COW mappings (file, memfd, uffd-minor memfd, zeropages, THP, \
                 pages shared with a child), EIO in MAP_SHARED and hugetlb (before 6.14); a Dirty \
                 COW race against MADV_DONTNEED",
        concurrent: false,
        build: force_write::scenarios,
        finish: None,
    },
    FORK_FLAGS => FamilyRow {
        id: "fork_flags",
        title: "fork flags and moves: MADV_DONTFORK, MADV_WIPEONFORK, mremap(), UFFDIO_MOVE",
        covers: "what fork() must not copy (MADV_DONTFORK: the child faults, the pin and the \
                 hugetlb pool stay; MADV_DOFORK restores COW; MADV_WIPEONFORK: the child reads \
                 zeroes, EINVAL on memory with a file) and pinned or COW-shared pages that move \
                 (mremap() move, grow, shrink, half; UFFDIO_MOVE refused with EBUSY), on every \
                 anonymous and shared backing",
        // Hugetlb pool counters are read system-wide around fork().
        concurrent: false,
        build: fork_flags::scenarios,
        finish: None,
    },
    PINS_UNDER_RECLAIM => FamilyRow {
        id: "pins_under_reclaim",
        title: "pins under reclaim, migration, collapse, KSM, compaction",
        covers: "pinned anonymous pages (io_uring fixed buffer; gup_test R/O pin where available) \
                 under MADV_PAGEOUT, MADV_COLD, move_pages(), mbind(), MADV_COLLAPSE, KSM and \
                 compaction: the PFN must stay and the pin must still see the process's writes, \
                 both ways",
        concurrent: false,
        build: pins_under_reclaim::scenarios,
        finish: None,
    },
    FILE_LARGE_FOLIOS => FamilyRow {
        id: "file_large_folios",
        title: "file large folios: pins and COW on a large file folio",
        covers: "a MAP_PRIVATE PROT_READ mapping of a large file folio (PMD-sized on a \
                 huge=always tmpfs and in a memfd; every per-size shmem knob's size): R/O \
                 longterm GUP pins (the 2025 livelock), COW by mprotect and forced write, \
                 io_uring, vmsplice, O_DIRECT; the page cache must stay unchanged",
        concurrent: false,
        build: file_large_folios::scenarios,
        finish: None,
    },
    MOVABLE_PINS => FamilyRow {
        id: "movable_pins",
        title: "movable pins: long-term pins migrate memory out of ZONE_MOVABLE",
        covers: "memory proved in ZONE_MOVABLE (PFN in the zone's /proc/zoneinfo span) is \
                 migrated out before a long-term pin (io_uring, gup_test R/O and R/W, GUP and \
                 GUP-fast) succeeds, data intact; O_DIRECT and vmsplice may leave it (recorded); \
                 base pages, THP/mTHP, hugetlb. Needs a Movable zone: cowgup matrix --topology \
                 movable",
        concurrent: false,
        build: movable_pins::scenarios,
        // Its hugetlb trials hold the pool above what any trial of the catalogue needs.
        finish: Some(movable_pins::grow_pools),
    },
    FSDAX_PINS => FamilyRow {
        id: "fsdax_pins",
        title: "fsdax pins: long-term pins of DAX file mappings are refused",
        covers: "on an ext4 mounted -o dax (statx STATX_ATTR_DAX): long-term pins of a \
                 MAP_SHARED file mapping are refused with EOPNOTSUPP; O_DIRECT, vmsplice and \
                 short-term gup_test pins work and see the file; MAP_PRIVATE after a write fault \
                 pins. Needs $COWGUP_FSDAX_DIR: cowgup matrix --topology fsdax",
        concurrent: false,
        build: fsdax_pins::scenarios,
        finish: None,
    },
}

impl Family {
    /// Every family, in catalogue order.
    pub fn all() -> impl Iterator<Item = Family> {
        (0..FAMILIES.len()).map(|i| Family(i as u8))
    }

    /// Its row of the registry.
    pub fn row(self) -> &'static FamilyRow {
        &FAMILIES[usize::from(self.0)]
    }

    /// Stable identifier (the catalogue file it lives in).
    pub fn id(self) -> &'static str {
        self.row().id
    }

    /// Its name in reports.
    pub fn title(self) -> &'static str {
        self.row().title
    }

    /// What it runs, in a sentence.
    pub fn covers(self) -> &'static str {
        self.row().covers
    }

    /// Whether its trials may run side by side with others (`--jobs`).
    pub fn concurrent(self) -> bool {
        self.row().concurrent
    }

    /// The family with this id.
    pub fn by_id(id: &str) -> Option<Family> {
        Family::all().find(|f| f.id() == id)
    }

    /// Its trials for this kernel (without the whole catalogue's `finish` steps).
    pub fn scenarios(self, caps: &Capabilities) -> Vec<Scenario> {
        (self.row().build)(caps)
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// Everything `cowgup` runs: every family's trials in row order, then the
/// rows' `finish` steps.
pub fn catalogue(caps: &Capabilities) -> Vec<Scenario> {
    let mut v: Vec<Scenario> = Family::all().flat_map(|f| f.scenarios(caps)).collect();
    for finish in FAMILIES.iter().filter_map(|r| r.finish) {
        finish(&mut v, caps);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_builds_its_own_family_only() {
        let caps = crate::tests::reference_host();
        for f in Family::all() {
            for s in f.scenarios(&caps) {
                assert_eq!(s.family, f, "{} built by {}", s.name, f.id());
            }
        }
    }

    #[test]
    fn ids_are_unique_and_name_their_files() {
        let ids: Vec<&str> = Family::all().map(Family::id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        for id in ids {
            assert_eq!(Family::by_id(id).map(Family::id), Some(id));
            // A family is one file, or a directory whose mod.rs holds its cases.
            let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            assert!(
                src.join(format!("{id}.rs")).exists() || src.join(id).join("mod.rs").exists(),
                "no src/{id}.rs or src/{id}/mod.rs"
            );
        }
    }
}
