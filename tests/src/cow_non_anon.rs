//! cow.c's non-anonymous cases (`non_anon_test_cases[]`): a private mapping
//! of a zeropage or of file data must COW away from the other view, and a
//! R/O long-term pin on it must stay reliable.

use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::non_anon::{NonAnonBacking, NonAnonMemory};
use cowgup_fixtures::stamp::{Content, Writer};
use cowgup_fixtures::{fail, Step};
use cowgup_harness::probe::Capabilities;

use crate::common::write_and_check_own;
use crate::cow_anon::{ro_pin_and_check, CowCase};
use crate::cross::Cross;
use crate::expectations::{self, Mapping, Mechanism, MemoryClass, Observed, Subject};
use crate::scenario::{Family, Scenario};

pub type NonAnonCase = CowCase<NonAnonMemory>;

pub const CASES: [NonAnonCase; 3] = [
    NonAnonCase {
        desc: "Basic COW",
        mechanism: Mechanism::Fork,
        needs: &[],
        run: basic_cow,
    },
    NonAnonCase {
        desc: "R/O longterm GUP pin",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, false),
    },
    NonAnonCase {
        desc: "R/O longterm GUP-fast pin",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, true),
    },
];

/// What the memory holds when a case starts: zeroes (a zeropage, a new file).
const ORIGINAL: Content = Content::all(Writer::Nobody);

/// Writing the private mapping must not change the other view.
fn basic_cow(m: &NonAnonMemory) -> Step<Observed> {
    if let Err(mm) = m.pattern.check(m.smem, ORIGINAL) {
        return fail(format!("the other mapping does not start out zeroed: {mm}"));
    }
    write_and_check_own(
        m.mem,
        m.pattern,
        ORIGINAL,
        Writer::Parent,
        "the private mapping",
    )?;
    damage::copy(Side::Reader, m.smem, m.pattern);
    let data = m.pattern.check(m.smem, ORIGINAL);
    let mem = View::capture(m.mem, m.pattern.unit)?;
    let smem = View::capture(m.smem, m.pattern.unit)?;
    evidence::compare_and_agree(
        "written private mapping vs other mapping",
        ("other", &smem),
        ("private", &mem),
        &data,
        true,
        "the write landed in the page the other mapping shows",
    )?;
    Ok(Observed::leak_unless(data, "Other mapping modified"))
}

fn ro_pin(m: &NonAnonMemory, fast: bool) -> Step<Observed> {
    ro_pin_and_check(m.mem, m.pattern, ORIGINAL, fast)
}

/// The family's trials: every case with every non-anonymous backing.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    entries(caps).into_iter().map(|(s, _)| s).collect()
}

/// The trials, each with the subject it hands the expectation table.
pub fn entries(caps: &Capabilities) -> Vec<(Scenario, Subject)> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let backings = NonAnonBacking::all(caps.pmd_size, &hugetlb);
    Cross::new(Family::COW_NON_ANON, caps, &CASES, backings)
        .more_knobs(|case, backing| match backing {
            NonAnonBacking::MemfdHugetlb { size } if case.mechanism == Mechanism::RoPin => {
                crate::movable_pins::unshare_headroom(size, caps.pmd_size)
            }
            _ => vec![],
        })
        .entries(
            |case, backing| Subject {
                mechanism: case.mechanism,
                memory: MemoryClass::NonAnon,
                size: match backing {
                    NonAnonBacking::MemfdHugetlb { size } => Some(size),
                    NonAnonBacking::HugeZeropage => caps.pmd_size,
                    _ => None,
                },
                mapping: Mapping::Private,
                kernel,
            },
            |opts, case, backing, subject| case.judged(subject, &backing.setup(opts)?),
        )
}
