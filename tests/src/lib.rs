//! The scenario catalogue, written once and used by `cargo test`, `cowgup`
//! and the drop-in binaries. Like cow.c it is tables crossed with backings:
//!
//! | family          | cases                       | backings                          |
//! |-----------------|-----------------------------|-----------------------------------|
//! | `cow_anon`      | `cow_anon::CASES` (14)      | `fixtures::anon::AnonBacking::all` |
//! | `cow_anon_thp`  | `cow_anon_thp::CASES` (4)   | one PMD THP                       |
//! | `cow_non_anon`  | `cow_non_anon::CASES` (3)   | `fixtures::non_anon::NonAnonBacking::all` |
//! | `pins_under_reclaim` | `pins_under_reclaim::PRESSURES` (7) x `SOURCES` (2) | `fixtures::anon::AnonBacking::all` |
//!
//! A trial's name is derived, never typed: `<case> ... with <backing>`.

pub mod beyond_upstream;
pub mod common;
pub mod cow_anon;
pub mod cow_anon_thp;
pub mod cow_non_anon;
pub mod expectations;
pub mod file_large_folios;
pub mod force_write;
pub mod fsdax_pins;
pub mod gup_longterm;
pub mod gup_test;
pub mod large_folio_pins;
pub mod movable_pins;
pub mod pins_under_reclaim;
pub mod remote_access;
pub mod session;

use std::sync::Arc;

use cowgup_fixtures::anon::{AnonBacking, ThpShape};
use cowgup_fixtures::needs::{first_unmet, Need};
use cowgup_fixtures::non_anon::NonAnonBacking;
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{Knob, Outcome, Trial};

use expectations::{judge, Mapping, MemoryClass, Subject};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    CowAnon,
    CowAnonThp,
    CowNonAnon,
    GupLongterm,
    GupTest,
    BeyondUpstream,
    RemoteAccess,
    LargeFolioPins,
    ForceWrite,
    PinsUnderReclaim,
    FileLargeFolios,
    MovablePins,
    FsdaxPins,
}

impl Family {
    /// Stable identifier (the catalogue file it lives in).
    pub fn id(self) -> &'static str {
        match self {
            Family::CowAnon => "cow_anon",
            Family::CowAnonThp => "cow_anon_thp",
            Family::CowNonAnon => "cow_non_anon",
            Family::GupLongterm => "gup_longterm",
            Family::GupTest => "gup_test",
            Family::BeyondUpstream => "beyond_upstream",
            Family::RemoteAccess => "remote_access",
            Family::LargeFolioPins => "large_folio_pins",
            Family::ForceWrite => "force_write",
            Family::PinsUnderReclaim => "pins_under_reclaim",
            Family::FileLargeFolios => "file_large_folios",
            Family::MovablePins => "movable_pins",
            Family::FsdaxPins => "fsdax_pins",
        }
    }

    /// Whether its trials may run side by side with others (`--jobs`): they
    /// act only on memory of their own processes. Other families (gup_test's
    /// benchmarks, KSM, reclaim, what reads system-wide state) run alone.
    pub fn concurrent(self) -> bool {
        matches!(
            self,
            Family::CowAnon | Family::CowAnonThp | Family::CowNonAnon | Family::GupLongterm
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::CowAnon => "cow: anonymous memory",
            Family::CowAnonThp => "cow: anonymous THP collapse",
            Family::CowNonAnon => "cow: non-anonymous memory",
            Family::GupLongterm => "gup_longterm: long-term pins of files",
            Family::GupTest => "gup_test: get/pin_user_pages() via CONFIG_GUP_TEST",
            Family::BeyondUpstream => "beyond upstream: shared anon, KSM, memfd_secret, O_DIRECT",
            Family::RemoteAccess => "remote access: process_vm_readv/writev into COW-shared pages",
            Family::LargeFolioPins => {
                "large folio pins: partial, repeated and torn pins of THP/hugetlb"
            }
            Family::ForceWrite => "force_write: FOLL_FORCE writes (Dirty COW family)",
            Family::PinsUnderReclaim => "pins under reclaim, migration, collapse, KSM, compaction",
            Family::FileLargeFolios => "file large folios: pins and COW on a large file folio",
            Family::MovablePins => {
                "movable pins: long-term pins migrate memory out of ZONE_MOVABLE"
            }
            Family::FsdaxPins => "fsdax pins: long-term pins of DAX file mappings are refused",
        }
    }
}

/// A catalogue entry: a trial plus what it needs from the host.
#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub family: Family,
    /// The backing group (for reports and benchmarks).
    pub group: String,
    pub needs: Vec<Need>,
    pub knobs: Vec<Knob>,
    /// Takes FOLL_PIN references (so pin balance is counted exactly).
    pub pins: bool,
    pub body: Arc<dyn Fn() -> Outcome + Send + Sync>,
}

impl Scenario {
    /// The runnable trial, skipped up front if the probed host cannot meet a need.
    pub fn trial(&self, caps: &Capabilities) -> Trial {
        let body = self.body.clone();
        let mut t = Trial::new(self.name.clone(), move || body()).with_knobs(self.knobs.clone());
        t.skip = first_unmet(&self.needs, caps);
        t
    }

    /// Whether running it as root changes global host settings: THP, KSM or
    /// hugetlb knobs held while it runs, or provisioning (a hugetlb pool, a
    /// swap file, a scratch mount, debugfs for gup_test). `cargo test` names
    /// these trials `host::...` (cowgup_harness::libtest::HOST).
    pub fn changes_host(&self) -> bool {
        !self.knobs.is_empty()
            || self
                .needs
                .iter()
                .any(|n| n.provisionable() || *n == Need::GupTest)
    }
}

fn outcome(step: cowgup_fixtures::Step<Outcome>) -> Outcome {
    step.unwrap_or_else(|o| o)
}

/// Every cow trial for this kernel, in cow.c's order.
pub fn cow_catalogue(caps: &Capabilities) -> Vec<Scenario> {
    cow_entries(caps).into_iter().map(|(s, _)| s).collect()
}

/// The cow trials, each with the subject it hands the expectation table.
pub fn cow_entries(caps: &Capabilities) -> Vec<(Scenario, Subject)> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let anon = AnonBacking::all(&caps.thp_sizes, caps.pmd_size, &hugetlb);
    let mut out = Vec::new();
    for case in &cow_anon::CASES {
        for &backing in &anon {
            let subject = Subject {
                mechanism: case.mechanism,
                memory: if backing.is_hugetlb() {
                    MemoryClass::AnonHugetlb
                } else {
                    MemoryClass::Anon
                },
                size: match backing {
                    AnonBacking::Thp { size, .. } | AnonBacking::Hugetlb { size } => Some(size),
                    _ => None,
                },
                mapping: Mapping::Private,
                kernel,
            };
            let mechanism = case.mechanism;
            let run = case.run;
            let scenario = Scenario {
                name: format!("{} ... with {}", case.desc, backing.suffix()),
                family: Family::CowAnon,
                group: backing.group(),
                needs: backing
                    .needs()
                    .into_iter()
                    .chain(case.needs.iter().copied())
                    .collect(),
                knobs: backing.knobs(caps.pmd_size),
                pins: mechanism.pins(),
                body: Arc::new(move || {
                    outcome(
                        backing
                            .setup()
                            .and_then(|m| run(&m))
                            .map(|o| judge(&subject, o)),
                    )
                }),
            };
            out.push((scenario, subject));
        }
    }
    if let Some(pmd) = caps.pmd_size {
        let backing = AnonBacking::Thp {
            shape: ThpShape::Pmd,
            size: pmd,
        };
        let subject = Subject {
            mechanism: expectations::Mechanism::Collapse,
            memory: MemoryClass::Anon,
            size: Some(pmd),
            mapping: Mapping::Private,
            kernel,
        };
        for (i, case) in cow_anon_thp::CASES.iter().enumerate() {
            let scenario = Scenario {
                name: case.desc.to_string(),
                family: Family::CowAnonThp,
                group: backing.group(),
                needs: backing.needs(),
                knobs: backing.knobs(caps.pmd_size),
                pins: false,
                body: Arc::new(move || {
                    let case = &cow_anon_thp::CASES[i];
                    outcome(
                        backing
                            .setup()
                            .and_then(|m| cow_anon_thp::run(case, &m))
                            .map(|o| judge(&subject, o)),
                    )
                }),
            };
            out.push((scenario, subject));
        }
    }
    for case in &cow_non_anon::CASES {
        for backing in NonAnonBacking::all(caps.pmd_size, &hugetlb) {
            let subject = Subject {
                mechanism: case.mechanism,
                memory: MemoryClass::NonAnon,
                size: match backing {
                    NonAnonBacking::MemfdHugetlb { size } => Some(size),
                    NonAnonBacking::HugeZeropage => caps.pmd_size,
                    _ => None,
                },
                mapping: Mapping::Private,
                kernel,
            };
            let mechanism = case.mechanism;
            let run = case.run;
            let knobs = match (backing, caps.pmd_size) {
                (NonAnonBacking::HugeZeropage, Some(pmd)) => {
                    cowgup_fixtures::thp::pmd_inherits(pmd)
                }
                (NonAnonBacking::MemfdHugetlb { size }, _)
                    if case.mechanism == expectations::Mechanism::RoPin =>
                {
                    movable_pins::unshare_headroom(size, caps.pmd_size)
                }
                _ => vec![],
            };
            let scenario = Scenario {
                name: format!("{} ... with {}", case.desc, backing.suffix()),
                family: Family::CowNonAnon,
                group: backing.group(),
                needs: backing
                    .needs()
                    .into_iter()
                    .chain(case.needs.iter().copied())
                    .collect(),
                knobs,
                pins: mechanism.pins(),
                body: Arc::new(move || {
                    outcome(
                        backing
                            .setup()
                            .and_then(|m| run(&m))
                            .map(|o| judge(&subject, o)),
                    )
                }),
            };
            out.push((scenario, subject));
        }
    }
    out
}

/// gup_longterm's trials: upstream's backings, and with `extra` a file on a
/// tmpfs and on an ext4 the suite controls, so that both expectations (pin
/// allowed, pin refused) are exercised on every host.
pub fn gup_longterm_catalogue(caps: &Capabilities, extra: bool) -> Vec<Scenario> {
    gup_longterm_entries(caps, extra)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// gup_longterm's trials, each with the subject the table is told before
/// the trial runs (the filesystem as probed; the trial measures its file).
pub fn gup_longterm_entries(caps: &Capabilities, extra: bool) -> Vec<(Scenario, Subject)> {
    use cowgup_fixtures::file::FileBacking;
    use cowgup_fixtures::needs::ScratchFs;
    let kernel = expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let mut backings = FileBacking::upstream(&hugetlb);
    if extra {
        backings.extend([
            FileBacking::Scratch(ScratchFs::Tmpfs),
            FileBacking::Scratch(ScratchFs::Ext4),
            FileBacking::Fsdax,
        ]);
    }
    let mut out = Vec::new();
    for (i, case) in gup_longterm::CASES.iter().enumerate() {
        for &backing in &backings {
            let subject = case.subject(
                if backing == FileBacking::Fsdax {
                    MemoryClass::FsdaxFile
                } else {
                    MemoryClass::of_file(backing.filesystem(caps))
                },
                backing.huge_size(),
                kernel,
            );
            let scenario = Scenario {
                name: format!("{} ... with {}", case.desc, backing.suffix()),
                family: Family::GupLongterm,
                group: backing.group(),
                needs: backing.needs().into_iter().chain(case.needs()).collect(),
                knobs: vec![],
                pins: true,
                body: Arc::new(move || gup_longterm::run(&gup_longterm::CASES[i], backing, kernel)),
            };
            out.push((scenario, subject));
        }
    }
    out
}

/// run_vmtests.sh's gup_test runs, named by their command lines.
pub fn gup_test_catalogue(caps: &Capabilities) -> Vec<Scenario> {
    let default_huge = caps.hugetlb_default_size.unwrap_or(2 << 20);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mb = gup_test::hugetlb_mb(default_huge, cpus);
    gup_test::invocations(mb)
        .into_iter()
        .map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (run, _) = cowgup_fixtures::gup_bench::GupRun::from_args(&words)
                .expect("catalogue entries parse");
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
                family: Family::GupTest,
                group: "gup_test".into(),
                needs,
                knobs: vec![],
                pins: run.cmd.pins(),
                body: Arc::new(move || gup_test::run(&args, default_huge)),
            }
        })
        .collect()
}

/// Memory types and pin sources upstream never covers (beyond_upstream.rs).
pub fn beyond_upstream_catalogue() -> Vec<Scenario> {
    use beyond_upstream as b;
    use cowgup_fixtures::pin_source::PinSource;
    let scenario = |name: String,
                    needs: Vec<Need>,
                    knobs: Vec<Knob>,
                    pins: bool,
                    body: Arc<dyn Fn() -> Outcome + Send + Sync>| Scenario {
        name,
        family: Family::BeyondUpstream,
        group: "beyond upstream".into(),
        needs,
        knobs,
        pins,
        body,
    };
    let mut v = vec![scenario(
        format!(
            "Shared memory stays shared after fork() ... with {}",
            b::SHARED_ANON
        ),
        vec![],
        vec![],
        false,
        Arc::new(b::shared_stays_shared),
    )];
    for source in PinSource::ALL
        .into_iter()
        .filter(|s| *s != PinSource::ODirect)
    {
        v.push(scenario(
            format!(
                "{} sees the child's write after fork() ... with {}",
                source.name(),
                b::SHARED_ANON
            ),
            source.needs(),
            vec![],
            source.pins(),
            Arc::new(move || b::pin_sees_childs_write(source)),
        ));
    }
    for source in PinSource::ALL {
        v.push(scenario(
            format!("{} is refused ... with {}", source.name(), b::SECRET),
            source.needs(),
            vec![],
            source.pins(),
            Arc::new(move || b::secret_refuses(source)),
        ));
    }
    v.push(scenario(
        format!("Basic COW after fork() ... with {}", b::KSM),
        vec![],
        b::ksm_knobs(),
        false,
        Arc::new(b::ksm_cow),
    ));
    v.push(scenario(
        "O_DIRECT read into a page shared with a child after fork() ... with base page".into(),
        b::ext4_scratch(),
        vec![],
        true,
        Arc::new(b::odirect_read_into_shared_page),
    ));
    v
}

/// Everything `cowgup` runs: the cow catalogue, gup_longterm's, gup_test's,
/// and what upstream never covers.
pub fn catalogue(caps: &Capabilities) -> Vec<Scenario> {
    let mut v = cow_catalogue(caps);
    v.extend(gup_longterm_catalogue(caps, true));
    v.extend(gup_test_catalogue(caps));
    v.extend(beyond_upstream_catalogue());
    v.extend(remote_access::remote_access_catalogue(caps));
    v.extend(large_folio_pins::large_folio_pins_catalogue(caps));
    v.extend(force_write::force_write_catalogue(caps));
    v.extend(pins_under_reclaim::pins_under_reclaim_catalogue(caps));
    v.extend(file_large_folios::catalogue(
        caps.pmd_size,
        &caps.thp_sizes,
        expectations::parse_version(&caps.kernel_release),
    ));
    v.extend(movable_pins::movable_pins_catalogue(caps));
    v.extend(fsdax_pins::fsdax_pins_catalogue(caps));
    movable_pins::grow_pools(&mut v, caps);
    v
}

/// libtest's selection rules, shared with every test binary's runner.
pub use cowgup_harness::libtest::Selection;

#[cfg(test)]
mod tests {
    use super::*;
    use cowgup_harness::probe::HugetlbPool;

    /// The host the reference name lists were taken on: THP 16K..2M, hugetlb 2M + 1G.
    pub(crate) fn reference_host() -> Capabilities {
        let mut caps = Capabilities::probe();
        caps.pmd_size = Some(2 << 20);
        caps.thp_sizes = (14..=21).map(|s| 1usize << s).collect();
        caps.hugetlb = [2 << 20, 1 << 30]
            .map(|size| HugetlbPool {
                size,
                total: 0,
                free: 0,
            })
            .to_vec();
        caps
    }

    #[test]
    fn cow_names_equal_upstreams_list_byte_for_byte() {
        let expected = include_str!("../names-cow.txt");
        let names: Vec<String> = cow_catalogue(&reference_host())
            .into_iter()
            .map(|s| s.name)
            .collect();
        let want: Vec<&str> = expected.lines().collect();
        assert_eq!(names.len(), 778);
        for (i, (got, want)) in names.iter().zip(&want).enumerate() {
            assert_eq!(got, want, "name #{}", i + 1);
        }
        assert_eq!(names.len(), want.len());
    }

    #[test]
    fn gup_longterm_names_equal_upstreams_list() {
        let expected = include_str!("../names-gup_longterm.txt");
        let names: Vec<String> = gup_longterm_catalogue(&reference_host(), false)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, expected.lines().collect::<Vec<_>>());
        assert_eq!(gup_longterm_catalogue(&reference_host(), true).len(), 80);
    }

    #[test]
    fn plan_size_follows_cow_c_formula() {
        // plan = A*(2 + H + 6T + 2pmd) + 4*pmd + 3*(3 + H + pmd)
        for (t, h) in [(1usize, 1usize), (8, 2), (3, 0)] {
            let mut caps = reference_host();
            caps.thp_sizes = (22 - t..=21).map(|s| 1usize << s).collect();
            caps.hugetlb.truncate(h);
            let plan = 14 * (2 + h + 6 * t + 2) + 4 + 3 * (3 + h + 1);
            assert_eq!(cow_catalogue(&caps).len(), plan, "T={t} H={h}");
        }
        let mut caps = reference_host();
        caps.pmd_size = None;
        caps.thp_sizes.clear();
        caps.hugetlb.clear();
        assert_eq!(cow_catalogue(&caps).len(), 14 * 2 + 3 * 3);
    }
}
