//! What each kernel behaviour is expected to produce, as data. A scenario
//! reports what it observed (clean, a leak, a page lost at fork, a refused
//! pin); this table turns that into an outcome. A known, accepted behaviour
//! is one row with its key, reason and reference, not an `if` inside a
//! scenario.
//!
//! Every key of a row is a pattern over what the catalogue passes for a trial
//! (its [`Subject`]): the mechanism, the class of memory, the huge page size,
//! the mapping, the kernel version range. `None` (or an empty list) matches
//! anything. Rows are plain constants, so they can move into a data file
//! field by field.

use cowgup_harness::probe::Filesystem;
use cowgup_harness::Outcome;
use nix::errno::Errno;

/// What a scenario saw, before expectations are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Clean,
    /// Data crossed between processes, or a pin went stale: the message says which.
    Leak(String),
    /// fork() did not give the child the parent's data at all (cow.c cannot
    /// see this: its child copies the memory after fork() and compares later
    /// against that copy).
    LostAtFork(String),
    /// A pin the trial expects the kernel to grant was refused with this errno.
    Refused(Errno),
}

/// The reference mechanism a case exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Fork,
    Vmsplice,
    /// io_uring fixed buffer: FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM.
    IoUringPin,
    /// gup_test PIN_LONGTERM_TEST_START, read-only.
    RoPin,
    /// gup_test PIN_LONGTERM_TEST_START with PIN_LONGTERM_TEST_FLAG_USE_WRITE.
    RwPin,
    Collapse,
}

impl Mechanism {
    /// Whether the mechanism takes FOLL_PIN references.
    pub fn pins(self) -> bool {
        matches!(
            self,
            Mechanism::IoUringPin | Mechanism::RoPin | Mechanism::RwPin
        )
    }
}

/// The kind of memory, as far as expectations care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryClass {
    /// Private anonymous memory: base pages and THPs of every size and shape.
    Anon,
    /// Private anonymous hugetlb memory (MAP_HUGETLB).
    AnonHugetlb,
    /// cow.c's non-anonymous backings: the zeropages and private file mappings.
    NonAnon,
    /// A file on shmem: a memfd, a file on tmpfs.
    ShmemFile,
    /// A file on hugetlbfs: a hugetlb memfd.
    HugetlbfsFile,
    /// A file on a filesystem that is neither shmem nor hugetlbfs and maps
    /// its own pages (ext4, xfs, btrfs, ramfs, nfs, 9p).
    OtherFile,
    /// A file on a filesystem the table cannot place: overlayfs (mmap maps
    /// the file of the layer beneath, which may be tmpfs), an unknown magic,
    /// or fstatfs() failed. No row names it, so nothing is excused there.
    UnknownFile,
}

impl MemoryClass {
    /// The class of a file by the filesystem statfs(2) reports for it.
    pub fn of_file(fs: Option<Filesystem>) -> MemoryClass {
        match fs {
            Some(Filesystem::Tmpfs) => MemoryClass::ShmemFile,
            Some(Filesystem::Hugetlbfs) => MemoryClass::HugetlbfsFile,
            Some(
                Filesystem::Ext4
                | Filesystem::Xfs
                | Filesystem::Btrfs
                | Filesystem::Ramfs
                | Filesystem::Nfs
                | Filesystem::NineP,
            ) => MemoryClass::OtherFile,
            Some(Filesystem::Overlayfs) | None => MemoryClass::UnknownFile,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    Private,
    Shared,
}

/// A kernel (major, minor), as `uname -r` starts.
pub type Version = (u32, u32);

/// `from <= v < before`; an open end is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRange {
    pub from: Option<Version>,
    pub before: Option<Version>,
}

impl KernelRange {
    pub const ANY: KernelRange = KernelRange {
        from: None,
        before: None,
    };

    /// Whether `kernel` is in the range. An unknown kernel version is only
    /// in the unbounded range: a row bounded by versions never excuses a
    /// trial on a kernel whose version could not be read.
    pub fn contains(&self, kernel: Option<Version>) -> bool {
        match kernel {
            Some(v) => self.from.is_none_or(|f| f <= v) && self.before.is_none_or(|b| v < b),
            None => *self == KernelRange::ANY,
        }
    }
}

/// What a trial is, as far as the table cares: what the catalogue passes to
/// [`judge`] (built once per trial when the catalogue is made; gup_longterm
/// fills in the file's filesystem when the trial has the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    pub mechanism: Mechanism,
    pub memory: MemoryClass,
    /// The huge page size of the backing (hugetlb, THP); None for base pages.
    pub size: Option<usize>,
    pub mapping: Mapping,
    /// The running kernel, read once (`parse_version(uname -r)`); None if unreadable.
    pub kernel: Option<Version>,
}

/// What a row expects to see instead of a clean run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symptom {
    Leak,
    LostAtFork,
    /// The pin is refused with exactly this errno.
    Refused(Errno),
}

impl Symptom {
    fn of(observed: &Observed) -> Option<Symptom> {
        match observed {
            Observed::Clean => None,
            Observed::Leak(_) => Some(Symptom::Leak),
            Observed::LostAtFork(_) => Some(Symptom::LostAtFork),
            Observed::Refused(e) => Some(Symptom::Refused(*e)),
        }
    }
}

/// One known kernel behaviour: where it shows (the keys), what it looks like
/// (the symptom, reported as XFAIL), and what a clean run means.
#[derive(Debug)]
pub struct Expectation {
    /// Stable identifier.
    pub id: &'static str,
    /// Empty: any mechanism.
    pub mechanisms: &'static [Mechanism],
    pub memory: MemoryClass,
    /// None: any size.
    pub size: Option<usize>,
    /// None: either mapping.
    pub mapping: Option<Mapping>,
    pub kernel: KernelRange,
    pub symptom: Symptom,
    /// A clean run is fine too (the behaviour is timing-dependent, or the
    /// symptom is the exception and a clean run the rule): report pass and
    /// say so in the diagnostics. Otherwise a clean run is XPASS: news.
    pub may_pass: bool,
    /// The kernel behaviour.
    pub reason: &'static str,
    /// Where it is documented or was seen.
    pub reference: &'static str,
}

pub const HUGETLB_VMSPLICE: Expectation = Expectation {
    id: "hugetlb-vmsplice-leak",
    mechanisms: &[Mechanism::Vmsplice],
    memory: MemoryClass::AnonHugetlb,
    size: None,
    mapping: None,
    kernel: KernelRange::ANY,
    symptom: Symptom::Leak,
    // Seen on every hugetlb size and kernel run so far (6.1, 6.12, 6.18; on
    // 2 MiB every run): a clean run would be news. A 1 GiB run on 6.18 can
    // also be clean because of HUGETLB_1G_LOST_AT_FORK, which says so.
    may_pass: false,
    reason: "hugetlb reuses a COW page when folio_mapcount() == 1 and vmsplice() holds only \
             FOLL_GET references, so the write is not unshared; accepted upstream, never fixed",
    reference: "cow.c marks it XFAIL since v6.10: 'selftests: mm: cow: flag vmsplice() hugetlb \
                tests as XFAIL', 20240502085259.103784-1-david@redhat.com",
};

pub const HUGETLB_1G_LOST_AT_FORK: Expectation = Expectation {
    id: "hugetlb-1g-lost-at-fork",
    // The cases whose child looks at the memory right after fork() (and the
    // vmsplice() ones, whose child writes to it: a lost page makes them clean).
    mechanisms: &[Mechanism::Fork, Mechanism::Vmsplice],
    memory: MemoryClass::AnonHugetlb,
    size: Some(1 << 30),
    mapping: Some(Mapping::Private),
    kernel: KernelRange {
        from: Some((6, 18)),
        before: Some((6, 19)),
    },
    symptom: Symptom::LostAtFork,
    may_pass: true,
    reason: "fork() intermittently leaves the child without the parent's private 1 GiB \
             hugetlb page (the child's PUD entry is empty; it faults in a fresh zeroed page)",
    reference: "found by cowgup on 6.18.44 (about 1 fork in 3; 2 MiB never; reproduced by a \
                25-line C program that forks with a private 1 GiB hugetlb page); cow.c cannot \
                see it (its child copies the memory after fork()); not reported upstream yet",
};

pub const IO_URING_FILE_BUFFERS: Expectation = Expectation {
    id: "io-uring-file-buffers-before-6.5",
    mechanisms: &[Mechanism::IoUringPin],
    // Not shmem (memfd, tmpfs) and not hugetlbfs: io_uring accepted those.
    memory: MemoryClass::OtherFile,
    size: None,
    // It refused MAP_SHARED ones too, but there a refusal is what every kernel
    // must do (gup_longterm's rule): only MAP_PRIVATE needs excusing.
    mapping: Some(Mapping::Private),
    kernel: KernelRange {
        from: None,
        before: Some((6, 5)),
    },
    symptom: Symptom::Refused(Errno::EOPNOTSUPP),
    may_pass: true,
    reason: "before v6.5 io_uring refused a fixed buffer in any file mapping that is neither \
             shmem (vma_is_shmem()) nor hugetlbfs (is_file_hugepages()), MAP_PRIVATE ones included",
    reference: "io_uring/rsrc.c io_pin_pages() until 'io_uring: rsrc: delegate VMA file-backed \
                check to GUP' (v6.5); seen on Debian 6.1",
};

/// The table.
pub const EXPECTATIONS: &[&Expectation] = &[
    &HUGETLB_VMSPLICE,
    &HUGETLB_1G_LOST_AT_FORK,
    &IO_URING_FILE_BUFFERS,
];

impl Expectation {
    /// The reason with its reference, as outcomes quote it.
    pub fn because(&self) -> String {
        format!("{} ({})", self.reason, self.reference)
    }

    /// Whether the row's keys all match the subject.
    pub fn applies_to(&self, s: &Subject) -> bool {
        (self.mechanisms.is_empty() || self.mechanisms.contains(&s.mechanism))
            && self.memory == s.memory
            && self.size.is_none_or(|size| s.size == Some(size))
            && self.mapping.is_none_or(|m| m == s.mapping)
            && self.kernel.contains(s.kernel)
    }
}

/// Every row that can turn a trial of this subject into XFAIL.
pub fn rows_for(subject: &Subject) -> impl Iterator<Item = &'static Expectation> + '_ {
    EXPECTATIONS
        .iter()
        .copied()
        .filter(move |r| r.applies_to(subject))
}

/// (major, minor) from a `uname -r` release string; the catalogue reads it
/// once from the probe (`Capabilities::kernel_release`).
pub fn parse_version(release: &str) -> Option<Version> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn judge(subject: &Subject, observed: Observed) -> Outcome {
    let Some(symptom) = Symptom::of(&observed) else {
        return judge_clean(subject);
    };
    let row = rows_for(subject).find(|r| r.symptom == symptom);
    match (observed, row) {
        (Observed::Clean, _) => unreachable!("judged above"),
        (Observed::Leak(what), Some(k)) => {
            // The details go to the diagnostics; the reason stays the same for
            // every trial with this behaviour, so reports can group them.
            cowgup_harness::diag(&what);
            let label = what.split(':').next().unwrap_or(&what);
            Outcome::Xfail(format!("{label}; expected: {}", k.because()))
        }
        (Observed::LostAtFork(what), Some(k)) => {
            cowgup_harness::diag(&what);
            Outcome::Xfail(format!("lost at fork; expected: {}", k.because()))
        }
        (Observed::Refused(e), Some(k)) => {
            Outcome::Xfail(format!("refused with {e}; expected: {}", k.because()))
        }
        (Observed::Leak(what) | Observed::LostAtFork(what), None) => Outcome::Fail(what),
        (Observed::Refused(e), None) => {
            Outcome::Fail(format!("Should have worked: the pin was refused with {e}"))
        }
    }
}

fn judge_clean(subject: &Subject) -> Outcome {
    let rows: Vec<_> = rows_for(subject).collect();
    if let Some(k) = rows.iter().find(|r| r.may_pass) {
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        cowgup_harness::diag(format!(
            "expected at times: {} did not show; {} accepts a clean run, counted as a pass",
            ids.join(", "),
            k.id
        ));
        return Outcome::Pass;
    }
    match rows.first() {
        Some(k) => Outcome::Xpass(format!("expected {:?}: {}", k.symptom, k.because())),
        None => Outcome::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const V6_18: Option<Version> = Some((6, 18));

    fn subject(m: Mechanism, memory: MemoryClass, size: Option<usize>) -> Subject {
        Subject {
            mechanism: m,
            memory,
            size,
            mapping: Mapping::Private,
            kernel: V6_18,
        }
    }

    const G: Option<usize> = Some(1 << 30);
    const M2: Option<usize> = Some(2 << 20);

    #[test]
    fn hugetlb_vmsplice_leaks_are_xfail() {
        let leak = Observed::Leak("Leak from parent into child".into());
        for size in [M2, G] {
            let s = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, size);
            let o = judge(&s, leak.clone());
            assert!(
                matches!(&o, Outcome::Xfail(r) if r.contains("folio_mapcount")),
                "{o:?}"
            );
        }
        let anon = subject(Mechanism::Vmsplice, MemoryClass::Anon, None);
        assert!(matches!(judge(&anon, leak), Outcome::Fail(_)));
    }

    #[test]
    fn a_clean_hugetlb_vmsplice_is_news_except_where_the_page_can_be_lost_at_fork() {
        let s = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, M2);
        assert!(matches!(judge(&s, Observed::Clean), Outcome::Xpass(_)));
        // 1 GiB on 6.18: the child may lose the page and write to a fresh one.
        let s = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, G);
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        let s = Subject {
            kernel: Some((6, 12)),
            ..s
        };
        assert!(matches!(judge(&s, Observed::Clean), Outcome::Xpass(_)));
    }

    #[test]
    fn a_page_lost_at_fork_is_only_excused_for_1g_hugetlb_on_6_18() {
        let lost = Observed::LostAtFork("x".into());
        let s = subject(Mechanism::Fork, MemoryClass::AnonHugetlb, G);
        assert!(matches!(judge(&s, lost.clone()), Outcome::Xfail(_)));
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        for other in [
            subject(Mechanism::Fork, MemoryClass::AnonHugetlb, M2),
            subject(Mechanism::Fork, MemoryClass::Anon, None),
            subject(Mechanism::Fork, MemoryClass::Anon, G),
            Subject {
                kernel: Some((6, 19)),
                ..s
            },
            Subject {
                kernel: Some((6, 17)),
                ..s
            },
            Subject { kernel: None, ..s },
        ] {
            assert!(
                matches!(judge(&other, lost.clone()), Outcome::Fail(_)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn io_uring_refusals_are_only_excused_for_other_files_before_6_5() {
        let refused = Observed::Refused(Errno::EOPNOTSUPP);
        let s = Subject {
            kernel: Some((6, 1)),
            ..subject(Mechanism::IoUringPin, MemoryClass::OtherFile, None)
        };
        assert!(matches!(judge(&s, refused.clone()), Outcome::Xfail(_)));
        // A granted pin is what newer kernels do, and what the test expects.
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        for (memory, size) in [
            (MemoryClass::ShmemFile, None),
            (MemoryClass::HugetlbfsFile, M2),
            (MemoryClass::HugetlbfsFile, G),
            (MemoryClass::UnknownFile, None),
        ] {
            let s = Subject { memory, size, ..s };
            assert!(
                matches!(judge(&s, refused.clone()), Outcome::Fail(_)),
                "{s:?}"
            );
        }
        for kernel in [Some((6, 5)), Some((6, 12)), None] {
            let s = Subject { kernel, ..s };
            assert!(
                matches!(judge(&s, refused.clone()), Outcome::Fail(_)),
                "{s:?}"
            );
        }
        let efault = Observed::Refused(Errno::EFAULT);
        assert!(matches!(judge(&s, efault), Outcome::Fail(_)));
    }

    #[test]
    fn file_classes_follow_io_urings_old_check() {
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Tmpfs)),
            MemoryClass::ShmemFile
        );
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Hugetlbfs)),
            MemoryClass::HugetlbfsFile
        );
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Ext4)),
            MemoryClass::OtherFile
        );
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Overlayfs)),
            MemoryClass::UnknownFile
        );
        assert_eq!(MemoryClass::of_file(None), MemoryClass::UnknownFile);
    }

    #[test]
    fn kernel_versions_parse_and_order() {
        assert_eq!(parse_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_version("unknown"), None);
        let r = HUGETLB_1G_LOST_AT_FORK.kernel;
        assert!(r.contains(Some((6, 18))));
        assert!(!r.contains(Some((6, 19))));
        assert!(!r.contains(Some((6, 9))));
        assert!(!r.contains(None));
        assert!(KernelRange::ANY.contains(None));
    }

    #[test]
    fn no_other_leak_is_excused() {
        for m in [
            Mechanism::Fork,
            Mechanism::IoUringPin,
            Mechanism::RoPin,
            Mechanism::RwPin,
            Mechanism::Collapse,
        ] {
            for c in [
                MemoryClass::Anon,
                MemoryClass::AnonHugetlb,
                MemoryClass::NonAnon,
            ] {
                for size in [None, M2, G] {
                    let s = subject(m, c, size);
                    assert!(
                        matches!(judge(&s, Observed::Leak("x".into())), Outcome::Fail(_)),
                        "{s:?}"
                    );
                }
            }
        }
    }

    /// The reference host (THP 16K..2M, hugetlb 2M + 1G, /tmp and the cwd on
    /// ext4) on a given kernel.
    fn reference_host(release: &str) -> cowgup_harness::probe::Capabilities {
        let mut caps = crate::tests::reference_host();
        caps.kernel_release = release.into();
        caps.scratch_fs = [std::env::temp_dir(), std::env::current_dir().unwrap()]
            .map(|d| (d, "ext4".to_string()))
            .to_vec();
        caps
    }

    /// Every trial of the reference host that can end as XFAIL on this
    /// kernel, with the rows that can make it so: the catalogue's own
    /// subjects, asked of the table.
    fn xfail_reach(
        caps: &cowgup_harness::probe::Capabilities,
    ) -> BTreeMap<String, Vec<&'static str>> {
        crate::cow_entries(caps)
            .into_iter()
            .chain(crate::gup_longterm_entries(caps, true))
            .filter_map(|(scenario, subject)| {
                let ids: Vec<_> = rows_for(&subject).map(|r| r.id).collect();
                (!ids.is_empty()).then_some((scenario.name, ids))
            })
            .collect()
    }

    /// Upstream's XFAIL set for the reference host. cow.c (v6.10+) passes
    /// `xfail = is_hugetlb` to the four vmsplice() tests only, and only
    /// run_with_hugetlb() sets is_hugetlb (memfd hugetlb is a non-anon
    /// backing, which has no vmsplice() case); gup_longterm.c has no XFAIL.
    /// cow.c does not look at the kernel version: the set is the same on
    /// every kernel (before v6.10 the in-tree cow.c reported these as FAIL).
    fn upstream_xfails() -> BTreeSet<&'static str> {
        const XFAIL_IF_HUGETLB: [&str; 4] = [
            "vmsplice() + unmap in child",
            "vmsplice() + unmap in child with mprotect() optimization",
            "vmsplice() before fork(), unmap in parent after fork()",
            "vmsplice() + unmap in parent after fork()",
        ];
        include_str!("../names-cow.txt")
            .lines()
            .filter(|name| {
                name.split_once(" ... with ")
                    .is_some_and(|(case, backing)| {
                        XFAIL_IF_HUGETLB.contains(&case) && backing.starts_with("hugetlb (")
                    })
            })
            .collect()
    }

    #[test]
    fn xfail_reach_is_upstreams_plus_named_differences() {
        let upstream = upstream_xfails();
        assert_eq!(upstream.len(), 8, "{upstream:#?}");
        let lost = HUGETLB_1G_LOST_AT_FORK.id;
        let io_uring = IO_URING_FILE_BUFFERS.id;
        // Per kernel: where we differ from upstream (name, row), and why.
        type Differences = Vec<(String, &'static str)>;
        let kernels: [(&str, Differences, &str); 4] = [
            (
                "6.1.0-56-cloud-amd64",
                [
                    "tmpfile",
                    "local tmpfile",
                    "file on an ext4 scratch directory",
                ]
                .map(|b| {
                    let name =
                        format!("io_uring fixed buffer with MAP_PRIVATE file mapping ... with {b}");
                    (name, io_uring)
                })
                .to_vec(),
                "io_uring before 6.5 refuses these buffers itself (EOPNOTSUPP); upstream's \
                 gup_longterm reads errno there, which liburing does not set, so it skips or fails \
                 them. Not the memfd, memfd hugetlb or tmpfs ones: io_uring took shmem and \
                 hugetlbfs buffers",
            ),
            (
                "6.5.0",
                vec![],
                "io_uring leaves the decision to GUP from 6.5 on",
            ),
            ("6.12.117", vec![], "nothing known beyond upstream"),
            (
                "6.18.44-fc-v857",
                [
                    "Basic COW after fork()",
                    "Basic COW after fork() with mprotect() optimization",
                    // Already upstream's XFAILs; here also because a page lost
                    // at fork makes their child see zeroes, or makes them clean.
                    "vmsplice() + unmap in child",
                    "vmsplice() + unmap in child with mprotect() optimization",
                    "vmsplice() before fork(), unmap in parent after fork()",
                    "vmsplice() + unmap in parent after fork()",
                ]
                .map(|case| (format!("{case} ... with hugetlb (1048576 kB)"), lost))
                .to_vec(),
                "fork() loses 1 GiB hugetlb pages on 6.18 (cowgup's own finding; cow.c's child \
                 copies the memory after fork() and cannot see it)",
            ),
        ];
        for (release, differences, why) in kernels {
            let mut want: BTreeMap<String, Vec<&str>> = upstream
                .iter()
                .map(|n| (n.to_string(), vec![HUGETLB_VMSPLICE.id]))
                .collect();
            for (name, row) in differences {
                want.entry(name).or_default().push(row);
            }
            let got = xfail_reach(&reference_host(release));
            assert_eq!(got, want, "kernel {release}: {why}");
        }
    }

    #[test]
    fn a_tmpfile_on_tmpfs_is_not_excused_before_6_5() {
        let mut caps = reference_host("6.1.0");
        caps.scratch_fs[0].1 = "tmpfs".into();
        let got = xfail_reach(&caps);
        let name = |backing: &str| {
            format!("io_uring fixed buffer with MAP_PRIVATE file mapping ... with {backing}")
        };
        assert!(!got.contains_key(&name("tmpfile")));
        assert!(got.contains_key(&name("local tmpfile")));
        for backing in [
            "memfd",
            "memfd hugetlb (2048 kB)",
            "memfd hugetlb (1048576 kB)",
            "file on a tmpfs scratch mount",
        ] {
            assert!(!got.contains_key(&name(backing)), "{backing}");
        }
    }
}
