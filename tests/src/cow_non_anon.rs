//! cow.c's non-anonymous cases (`non_anon_test_cases[]`): a private mapping
//! of a zeropage or of file data must COW away from the other view, and a
//! R/O long-term pin on it must stay reliable.

use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::non_anon::NonAnonMemory;
use cowgup_fixtures::stamp::{Content, Writer};
use cowgup_fixtures::{fail, Step};

use crate::common::write_and_check_own;
use crate::cow_anon::ro_pin_and_check;
use crate::expectations::{Mechanism, Observed};

pub struct NonAnonCase {
    pub desc: &'static str,
    pub mechanism: Mechanism,
    pub needs: &'static [Need],
    pub run: fn(&NonAnonMemory) -> Step<Observed>,
}

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
    let sharing = evidence::compare(
        "written private mapping vs other mapping",
        "other",
        &smem,
        "private",
        &mem,
    );
    evidence::agree(
        &sharing,
        &data,
        true,
        "the write landed in the page the other mapping shows",
    )?;
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(mm) => Observed::Leak(format!("Other mapping modified: {mm}")),
    })
}

fn ro_pin(m: &NonAnonMemory, fast: bool) -> Step<Observed> {
    ro_pin_and_check(m.mem, m.pattern, ORIGINAL, fast)
}
