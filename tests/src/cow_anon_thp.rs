//! cow.c's anonymous THP cases (`anon_thp_test_cases[]`): COW must survive
//! MADV_COLLAPSE of a PTE-mapped THP that is (partly) shared with a child.
//! They always run on one PMD-sized THP, and their names have no suffix.

use std::sync::Arc;

use cowgup_fixtures::anon::{pte_map, AnonBacking, AnonMemory, ThpShape};
use cowgup_fixtures::pagemap;
use cowgup_fixtures::stamp::Writer;
use cowgup_fixtures::{fail, skip, Step};
use cowgup_harness::probe::Capabilities;
use nix::sys::mman::MmapAdvise;

use crate::common::Checker;
use crate::expectations::{self, judge, Mapping, Mechanism, MemoryClass, Observed, Subject};
use crate::scenario::{Family, Scenario};

#[derive(Clone, Copy, Debug)]
pub enum Collapse {
    BeforeFork,
    AfterForkFullyShared,
    AfterForkLowerShared,
    AfterForkUpperShared,
}

pub struct ThpCase {
    pub desc: &'static str,
    pub collapse: Collapse,
}

pub const CASES: [ThpCase; 4] = [
    ThpCase {
        desc: "Basic COW after fork() when collapsing before fork()",
        collapse: Collapse::BeforeFork,
    },
    ThpCase {
        desc: "Basic COW after fork() when collapsing after fork() (fully shared)",
        collapse: Collapse::AfterForkFullyShared,
    },
    ThpCase {
        desc: "Basic COW after fork() when collapsing after fork() (lower shared)",
        collapse: Collapse::AfterForkLowerShared,
    },
    ThpCase {
        desc: "Basic COW after fork() when collapsing after fork() (upper shared)",
        collapse: Collapse::AfterForkUpperShared,
    },
];

fn collapse(m: &AnonMemory) -> Step<()> {
    m.region
        .madvise_raw(libc::MADV_COLLAPSE)
        .or_else(|e| skip(format!("MADV_COLLAPSE failed: {e}")))
}

pub fn run(case: &ThpCase, m: &AnonMemory) -> Step<Observed> {
    let size = m.region.len;
    let (lower, upper) = (m.region.sub(0, size / 2), m.region.sub(size / 2, size / 2));
    pte_map(m.region)?;
    // The half the child keeps (the other is MADV_DONTFORK'ed away from it).
    let (shared, not_shared) = match case.collapse {
        Collapse::BeforeFork | Collapse::AfterForkFullyShared => (m.region, None),
        Collapse::AfterForkLowerShared => (lower, Some(upper)),
        Collapse::AfterForkUpperShared => (upper, Some(lower)),
    };
    if matches!(case.collapse, Collapse::BeforeFork) {
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
    if !matches!(case.collapse, Collapse::BeforeFork) {
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
    let subject = Subject {
        mechanism: Mechanism::Collapse,
        memory: MemoryClass::Anon,
        size: Some(pmd),
        mapping: Mapping::Private,
        kernel,
    };
    let mut out = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let scenario = Scenario {
            name: case.desc.to_string(),
            family: Family::COW_ANON_THP,
            group: backing.group(),
            needs: backing.needs(),
            knobs: backing.knobs(caps.pmd_size),
            pins: false,
            body: Arc::new(move |opts| Ok(judge(&subject, run(&CASES[i], &backing.setup(opts)?)?))),
        };
        out.push((scenario, subject));
    }
    out
}
