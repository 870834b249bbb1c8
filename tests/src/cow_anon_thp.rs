//! cow.c's anonymous THP cases (`anon_thp_test_cases[]`): COW must survive
//! MADV_COLLAPSE of a PTE-mapped THP that is (partly) shared with a child.
//! They always run on one PMD-sized THP, and their names have no suffix.

use cowgup_fixtures::anon::{pte_map, AnonBacking, AnonMemory, ThpShape};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::{fail, skip, Step};
use cowgup_harness::probe::Capabilities;
use nix::sys::mman::MmapAdvise;

use crate::common::Checker;
use crate::cross::{Case, Cross};
use crate::expectations::{self, judge, Mechanism, Observed, Subject};
use crate::scenario::{Family, Scenario};

/// When the PTE-mapped THP is collapsed, and which half the child shares.
#[derive(Clone, Copy, Debug)]
pub enum Collapse {
    BeforeFork,
    AfterForkFullyShared,
    AfterForkLowerShared,
    AfterForkUpperShared,
}

/// The cases, in cow.c's order.
pub const CASES: [Collapse; 4] = [
    Collapse::BeforeFork,
    Collapse::AfterForkFullyShared,
    Collapse::AfterForkLowerShared,
    Collapse::AfterForkUpperShared,
];

impl Case for Collapse {
    fn desc(&self) -> String {
        match self {
            Collapse::BeforeFork => "Basic COW after fork() when collapsing before fork()",
            Collapse::AfterForkFullyShared => {
                "Basic COW after fork() when collapsing after fork() (fully shared)"
            }
            Collapse::AfterForkLowerShared => {
                "Basic COW after fork() when collapsing after fork() (lower shared)"
            }
            Collapse::AfterForkUpperShared => {
                "Basic COW after fork() when collapsing after fork() (upper shared)"
            }
        }
        .into()
    }
    fn pins(&self) -> bool {
        false
    }
}

fn collapse(m: &AnonMemory) -> Step<()> {
    m.region
        .madvise_raw(libc::MADV_COLLAPSE)
        .or_else(|e| skip(format!("MADV_COLLAPSE failed: {e}")))
}

pub fn run(case: Collapse, m: &AnonMemory) -> Step<Observed> {
    let size = m.region.len;
    let (lower, upper) = (m.region.sub(0, size / 2), m.region.sub(size / 2, size / 2));
    pte_map(m.region)?;
    // The half the child keeps (the other is MADV_DONTFORK'ed away from it).
    let (shared, not_shared) = match case {
        Collapse::BeforeFork | Collapse::AfterForkFullyShared => (m.region, None),
        Collapse::AfterForkLowerShared => (lower, Some(upper)),
        Collapse::AfterForkUpperShared => (upper, Some(lower)),
    };
    if matches!(case, Collapse::BeforeFork) {
        collapse(m)?;
    }
    if let Some(r) = not_shared {
        r.madvise(MmapAdvise::MADV_DONTFORK, "MADV_DONTFORK")?;
    }
    let checker = match Checker::fork(shared, m.pattern)? {
        Ok(c) => c,
        Err(observed) => return Ok(observed),
    };
    if not_shared.is_some() {
        m.region.madvise(MmapAdvise::MADV_DOFORK, "MADV_DOFORK")?;
    }
    if !matches!(case, Collapse::BeforeFork) {
        collapse(m)?;
    }
    let head = pagemap::entry(m.region.addr).or_else(fail)?;
    if let Some(f) = head.pfn().and_then(pagemap::kflags) {
        cowgup_harness::diag(format!(
            "after MADV_COLLAPSE the first page is {}",
            pagemap::describe_flags(f)
        ));
    }
    m.pattern.write(m.region, Writer::Parent);
    checker.judge_parents_write(m.region)
}

/// The family's trials: every case on one PMD THP (none without PMD THP).
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    entries(caps).into_iter().map(|(s, _)| s).collect()
}

/// The trials, each with the subject it hands the expectation table.
pub fn entries(caps: &Capabilities) -> Vec<(Scenario, Subject)> {
    let Some(pmd) = caps.pmd_size else {
        return vec![];
    };
    let kernel = expectations::parse_version(&caps.kernel_release);
    let backing = AnonBacking::Thp {
        shape: ThpShape::Pmd,
        size: pmd,
    };
    Cross::new(Family::COW_ANON_THP, caps, CASES, [backing])
        .named(|case, _| case.desc())
        .entries(
            |_, backing| Subject::anon(Mechanism::Collapse, backing, kernel),
            |opts, case, backing, subject| Ok(judge(subject, run(case, &backing.setup(opts)?)?)),
        )
}
