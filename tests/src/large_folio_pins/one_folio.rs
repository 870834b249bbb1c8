//! The one-folio cases: (a) two buffers over the halves of one folio, one
//! unregistered before fork(), and (b) `RINGS` rings on one folio released
//! in a seeded order. Both end in an `Observed` that the catalogue judges.

use cowgup_fixtures::anon::AnonMemory;
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::pin_source::Held;
use cowgup_fixtures::stamp::{Mismatch, Writer};
use cowgup_fixtures::{fail, seeded, Step};

use super::register;
use crate::common::{Checker, ORIGINAL};
use crate::expectations::Observed;

/// How many rings pin the same folio in the repeated-pin case.
pub const RINGS: usize = 64;
/// The seed of the release order (xorshift64*), fixed so runs repeat.
pub const RELEASE_SEED: u64 = 0x00c0_ffee_5eed_0001;

/// (a) Two buffers over the two halves of one folio; the lower one is
/// unregistered; fork(); the parent writes. The upper buffer's pin keeps the
/// folio maybe-pinned, so fork() must have copied it for the child: the pin
/// sees the parent's write, and the child keeps the original.
pub(super) fn halves(m: &AnonMemory) -> Step<Observed> {
    let region = m.region;
    let half = region.len / 2;
    let (lower, upper) = (region.sub(0, half), region.sub(half, half));
    let lower_pin = register(lower, "the lower half")?;
    let mut upper_pin = register(upper, "the upper half")?;
    drop(lower_pin);
    let after = fork_and_write(
        m,
        upper,
        &mut upper_pin,
        "upper half before fork() vs after the parent's write",
        "the parent's write went to a new page, away from the remaining pin",
    )?;
    Ok(match after {
        AfterFork::Fork(observed) => observed,
        AfterFork::Written { pin: Err(m), .. } => Observed::Leak(format!(
            "Longterm R/W pin is not reliable: the fixed buffer left over the upper half does not see \
             the parent's write after the lower half's buffer was unregistered and fork() ran: {m}"
        )),
        AfterFork::Written { child, .. } => child,
    })
}

/// (b) `RINGS` rings each register the whole folio; one sees the original
/// data through its pin; all but the last in the release order are
/// released; fork(); the parent writes: the last pin must see the write.
pub(super) fn many_rings(m: &AnonMemory) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let started = std::time::Instant::now();
    let mut rings: Vec<Option<Held>> = Vec::with_capacity(RINGS);
    for i in 0..RINGS {
        rings.push(Some(register(region, &format!("ring {i} of {RINGS}"))?));
    }
    let registered_ms = started.elapsed().as_millis();
    let order = seeded::shuffle(RINGS, RELEASE_SEED);
    let last = order[RINGS - 1];
    let first = order[0];
    let probe = rings[first].as_mut().expect("registered");
    if let Err(m) = probe.check(region, pattern, ORIGINAL)? {
        return fail(format!(
            "ring {first} of {RINGS} does not see the original data through its pin: {m}"
        ));
    }
    for &i in &order[..RINGS - 1] {
        drop(rings[i].take());
    }
    cowgup_harness::evidence(
        "rings",
        serde_json::json!({
            "rings": RINGS,
            "bytes_each": region.len,
            "registered_ms": registered_ms,
            "seed": format!("0x{RELEASE_SEED:x}"),
            "release_order_head": &order[..8.min(RINGS)],
            "left": last,
        }),
    );
    let after = fork_and_write(
        m,
        region,
        rings[last].as_mut().expect("kept"),
        "the folio before fork() vs after the parent's write",
        "the parent's write went to a new page, away from the last pin",
    )?;
    drop(rings);
    Ok(match after {
        AfterFork::Fork(observed) => observed,
        AfterFork::Written { pin: Err(m), .. } => Observed::Leak(format!(
            "Longterm R/W pin is not reliable: ring {last}, the last of {RINGS} pins of the folio, does \
             not see the parent's write after the other {} were released and fork() ran: {m}",
            RINGS - 1
        )),
        AfterFork::Written { child, .. } => child,
    })
}

/// What fork() and the parent's write showed.
enum AfterFork {
    /// fork() itself went wrong (the child's copy before any write); the
    /// case ends with it.
    Fork(Observed),
    /// What the pin saw of the parent's write, and the child's copy.
    Written {
        pin: Result<(), Mismatch>,
        child: Observed,
    },
}

/// fork(), then the parent writes the whole folio: the child must keep the
/// original and `pin`, over `watched`, see the write. The page tables of
/// `watched` before fork() and after the write must agree with what the
/// pin saw (`compared` and `claim` name the comparison in the evidence).
fn fork_and_write(
    m: &AnonMemory,
    watched: Region,
    pin: &mut Held,
    compared: &str,
    claim: &str,
) -> Step<AfterFork> {
    let (region, pattern) = (m.region, m.pattern);
    let before = View::capture(watched, pattern.unit)?;
    let checker = match Checker::fork(region, pattern)? {
        Ok(c) => c,
        Err(observed) => return Ok(AfterFork::Fork(observed)),
    };
    pattern.write(region, Writer::Parent);
    let child = checker.judge_parents_write(region)?;
    let after = View::capture(watched, pattern.unit)?;
    let data = pin.check(watched, pattern, ORIGINAL.written_by(Writer::Parent))?;
    evidence::compare_and_agree(
        compared,
        ("before", &before),
        ("after", &after),
        &data,
        false,
        claim,
    )?;
    Ok(AfterFork::Written { pin: data, child })
}
