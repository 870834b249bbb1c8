//! cow.c's anonymous-memory cases (`anon_test_cases[]`), run on every
//! anonymous backing. Where a case lives: "vmsplice() before fork(), unmap in
//! parent after fork()" on hugetlb is `VMSPLICE_BEFORE_FORK` below, on
//! `AnonBacking::Hugetlb` from fixtures/src/anon.rs.

use cowgup_fixtures::anon::AnonMemory;
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::{Region, RW};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pin;
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::stamp::{Content, Mismatch, Pattern, Writer};
use cowgup_fixtures::{fail, skip, Step};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::Outcome;
use nix::sys::mman::ProtFlags;

use crate::common::{
    child_body, child_first_look, clear_softdirty, collect, fork_with, lost_at_fork,
    write_and_check_own, Bystander, Checker, Watched, FIRST_LOOK_OK, ORIGINAL,
};
use crate::cross::{anon_backings, Case, Cross};
use crate::expectations::{self, judge, Mechanism, Observed, Subject};
use crate::scenario::{Family, Scenario};

/// A row of cow.c's case tables (`anon_test_cases[]`, `non_anon_test_cases[]`):
/// what it runs on the memory `M` its backing set up.
pub struct CowCase<M> {
    pub desc: &'static str,
    pub mechanism: Mechanism,
    /// Needs beyond the backing's own, checked after them (as cow.c does).
    pub needs: &'static [Need],
    pub run: fn(&M) -> Step<Observed>,
}

pub type AnonCase = CowCase<AnonMemory>;

impl<M> Case for CowCase<M> {
    fn desc(&self) -> String {
        self.desc.into()
    }
    fn needs(&self) -> Vec<Need> {
        self.needs.to_vec()
    }
    fn pins(&self) -> bool {
        self.mechanism.pins()
    }
}

impl<M> CowCase<M> {
    /// The case's outcome on `memory`, judged as `subject`.
    pub fn judged(&self, subject: &Subject, memory: &M) -> Step<Outcome> {
        Ok(judge(subject, (self.run)(memory)?))
    }
}

pub const CASES: [AnonCase; 14] = [
    AnonCase {
        desc: "Basic COW after fork()",
        mechanism: Mechanism::Fork,
        needs: &[],
        run: |m| basic_cow(m, false),
    },
    AnonCase {
        desc: "Basic COW after fork() with mprotect() optimization",
        mechanism: Mechanism::Fork,
        needs: &[],
        run: |m| basic_cow(m, true),
    },
    // CVE-2020-29374 (Jann Horn): a read-only GUP reference in the child must
    // not let the parent's later writes show through.
    AnonCase {
        desc: "vmsplice() + unmap in child",
        mechanism: Mechanism::Vmsplice,
        needs: &[],
        run: |m| vmsplice_in_child(m, false),
    },
    AnonCase {
        desc: "vmsplice() + unmap in child with mprotect() optimization",
        mechanism: Mechanism::Vmsplice,
        needs: &[],
        run: |m| vmsplice_in_child(m, true),
    },
    AnonCase {
        desc: "vmsplice() before fork(), unmap in parent after fork()",
        mechanism: Mechanism::Vmsplice,
        needs: &[],
        run: |m| vmsplice_in_parent(m, true),
    },
    AnonCase {
        desc: "vmsplice() + unmap in parent after fork()",
        mechanism: Mechanism::Vmsplice,
        needs: &[],
        run: |m| vmsplice_in_parent(m, false),
    },
    AnonCase {
        desc: "R/O-mapping a page registered as iouring fixed buffer",
        mechanism: Mechanism::IoUringPin,
        needs: &[Need::IoUring],
        run: |m| iouring(m, false),
    },
    AnonCase {
        desc: "fork() with an iouring fixed buffer",
        mechanism: Mechanism::IoUringPin,
        needs: &[Need::IoUring],
        run: |m| iouring(m, true),
    },
    AnonCase {
        desc: "R/O GUP pin on R/O-mapped shared page",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, RoPinPage::Shared, false),
    },
    AnonCase {
        desc: "R/O GUP-fast pin on R/O-mapped shared page",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, RoPinPage::Shared, true),
    },
    AnonCase {
        desc: "R/O GUP pin on R/O-mapped previously-shared page",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, RoPinPage::PreviouslyShared, false),
    },
    AnonCase {
        desc: "R/O GUP-fast pin on R/O-mapped previously-shared page",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, RoPinPage::PreviouslyShared, true),
    },
    AnonCase {
        desc: "R/O GUP pin on R/O-mapped exclusive page",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, RoPinPage::Exclusive, false),
    },
    AnonCase {
        desc: "R/O GUP-fast pin on R/O-mapped exclusive page",
        mechanism: Mechanism::RoPin,
        needs: &[Need::GupTest],
        run: |m| ro_pin(m, RoPinPage::Exclusive, true),
    },
];

fn mprotect_dance(m: &AnonMemory) -> Step<()> {
    m.region.mprotect(ProtFlags::PROT_READ)?;
    m.region.mprotect(RW)
}

/// The child keeps the original data after the parent writes.
fn basic_cow(m: &AnonMemory, mprotect: bool) -> Step<Observed> {
    let checker = match Checker::fork(m.region, m.pattern)? {
        Ok(c) => c,
        Err(observed) => return Ok(observed),
    };
    if mprotect {
        mprotect_dance(m)?;
    }
    m.pattern.write(m.region, Writer::Parent);
    checker.judge_parents_write(m.region)
}

/// The child vmsplices the memory into a pipe and unmaps it; the parent then
/// writes; the pipe must still hold the original data.
fn vmsplice_in_child(m: &AnonMemory, mprotect: bool) -> Step<Observed> {
    let watched = fork_with(
        m.region,
        m.pattern,
        || {
            let spliced = Held::Pipe(pin::vmsplice(m.region)?);
            m.region.munmap()?;
            Ok(spliced)
        },
        |mut spliced| {
            let transferred = spliced.covered();
            let data = spliced.check(m.region.sub(0, transferred), m.pattern, ORIGINAL)?;
            Ok((transferred, data))
        },
    )?;
    let Watched { child, go, report } = match watched {
        Ok(w) => w,
        Err(observed) => return Ok(observed),
    };
    if mprotect {
        mprotect_dance(m)?;
    }
    let before = View::capture(m.region, m.pattern.unit)?;
    let own = write_and_check_own(m.region, m.pattern, ORIGINAL, Writer::Parent, "the parent");
    let after = View::capture(m.region, m.pattern.unit)?;
    go.notify()?;
    let seen = collect::<Option<(usize, Result<(), Mismatch>)>>(&report, child);
    own?;
    let Some((transferred, data)) = seen? else {
        return fail("child sent no result");
    };
    judge_pipe(
        transferred,
        m.pattern,
        &before,
        &after,
        data,
        "parent",
        "child",
    )
}

/// What a pipe of vmsplice'd pages shows, judged against the page tables of
/// the writer before and after its write.
fn judge_pipe(
    transferred: usize,
    pattern: Pattern,
    before: &View,
    after: &View,
    data: Result<(), Mismatch>,
    writer: &str,
    reader: &str,
) -> Step<Observed> {
    let units = transferred.div_ceil(pattern.unit);
    cowgup_harness::evidence(
        "vmsplice",
        serde_json::json!({ "transferred": transferred, "units": units }),
    );
    evidence::compare_and_agree(
        &format!("{writer} before vs after its write, pages in the pipe"),
        ("before", &before.first_units(units)),
        ("after", &after.first_units(units)),
        &data,
        true,
        &format!("the {writer} wrote in place into a page the pipe references"),
    )?;
    Ok(Observed::leak_unless(
        data,
        &format!("Leak from {writer} into {reader}"),
    ))
}

/// The parent vmsplices (before or after fork), unmaps; the child writes; the
/// parent's pipe must still hold the original data.
fn vmsplice_in_parent(m: &AnonMemory, before_fork: bool) -> Step<Observed> {
    let early = if before_fork {
        Some(pin::vmsplice(m.region)?)
    } else {
        None
    };
    let (ready, go, report) = (Pipe::new()?, Pipe::new()?, Pipe::new()?);
    let child = spawn(|| {
        child_body(&report, || {
            let look = child_first_look(m.region, m.pattern)?;
            ready.notify()?;
            go.wait()?;
            if look != FIRST_LOOK_OK {
                return Ok(None);
            }
            let before = View::capture(m.region, m.pattern.unit)?;
            write_and_check_own(m.region, m.pattern, ORIGINAL, Writer::Child, "the child")?;
            let after = View::capture(m.region, m.pattern.unit)?;
            Ok(Some((before, after)))
        })
    })?;
    let mut spliced = Held::Pipe(match early {
        Some(s) => s,
        None => pin::vmsplice(m.region)?,
    });
    ready.wait()?;
    m.region.munmap()?;
    go.notify()?;
    let Some((before, after)) = collect::<Option<(View, View)>>(&report, child)? else {
        return Ok(lost_at_fork());
    };
    let transferred = spliced.covered();
    let data = spliced.check(m.region.sub(0, transferred), m.pattern, ORIGINAL)?;
    judge_pipe(
        transferred,
        m.pattern,
        &before,
        &after,
        data,
        "child",
        "parent",
    )
}

/// A long-term R/W pin (io_uring fixed buffer) must keep seeing what the
/// process sees after the page is R/O-mapped (softdirty) or shared by fork.
fn iouring(m: &AnonMemory, use_fork: bool) -> Step<Observed> {
    let mut held = take(PinSource::IoUringFixed, m.region)?;
    let bystander = if use_fork {
        Some(Bystander::fork()?)
    } else {
        m.region.mprotect(ProtFlags::PROT_READ)?;
        clear_softdirty()?;
        m.region.mprotect(RW)?;
        None
    };
    let observed = write_and_look_through(&mut held, m.region, m.pattern, ORIGINAL, "R/W");
    if let Some(b) = bystander {
        b.release()?;
    }
    observed
}

/// Take a reference that the case needs granted.
fn take(source: PinSource, region: Region) -> Step<Held> {
    match source.take(region)? {
        Ok(h) => Ok(h),
        Err(e) => fail(format!("{} failed: {e}", source.name())),
    }
}

/// The process writes the head of every page of `region` (a pinned range);
/// its own copy must hold the write, and the pin must see it too.
fn write_and_look_through(
    held: &mut Held,
    region: Region,
    pattern: Pattern,
    original: Content,
    kind: &str,
) -> Step<Observed> {
    let written = original.written_by(Writer::Parent);
    let before = View::capture(region, pattern.unit)?;
    write_and_check_own(region, pattern, original, Writer::Parent, "the process")?;
    let after = View::capture(region, pattern.unit)?;
    let data = held.check(region, pattern, written)?;
    evidence::compare_and_agree(
        "pinned pages before vs after the write",
        ("before", &before),
        ("after", &after),
        &data,
        false,
        "the write went to a new page, away from the pin",
    )?;
    Ok(Observed::leak_unless(
        data,
        &format!("Longterm {kind} pin is not reliable"),
    ))
}

#[derive(Clone, Copy)]
enum RoPinPage {
    Shared,
    PreviouslyShared,
    Exclusive,
}

/// A long-term R/O pin (gup_test) must keep seeing what the process sees
/// after it writes, whether the page was shared, once shared, or exclusive.
fn ro_pin(m: &AnonMemory, page: RoPinPage, fast: bool) -> Step<Observed> {
    let bystander = match page {
        RoPinPage::Shared => Some(Bystander::fork()?),
        RoPinPage::PreviouslyShared => {
            spawn(|| 0)?.exit_code()?;
            None
        }
        RoPinPage::Exclusive => {
            m.region.mprotect(ProtFlags::PROT_READ)?;
            clear_softdirty()?;
            m.region.mprotect(RW)?;
            None
        }
    };
    let observed = ro_pin_and_check(m.region, m.pattern, ORIGINAL, fast)?;
    if let Some(b) = bystander {
        b.release()?;
    }
    Ok(observed)
}

/// Pin `region` R/O, write it, read back through the pin and compare.
pub fn ro_pin_and_check(
    region: Region,
    pattern: Pattern,
    original: Content,
    fast: bool,
) -> Step<Observed> {
    let source = PinSource::GupTest { write: false, fast };
    let mut held = match source.take(region)? {
        Ok(h) => h,
        Err(nix::errno::Errno::EINVAL) => return skip("PIN_LONGTERM_TEST_START failed: EINVAL"),
        Err(e) => return fail(format!("PIN_LONGTERM_TEST_START failed: {e}")),
    };
    write_and_look_through(&mut held, region, pattern, original, "R/O")
}

/// The family's trials: every case with every anonymous backing, in cow.c's order.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    entries(caps).into_iter().map(|(s, _)| s).collect()
}

/// The trials, each with the subject it hands the expectation table.
pub fn entries(caps: &Capabilities) -> Vec<(Scenario, Subject)> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    Cross::new(Family::COW_ANON, caps, &CASES, anon_backings(caps)).entries(
        |case, backing| Subject::anon(case.mechanism, backing, kernel),
        |opts, case, backing, subject| case.judged(subject, &backing.setup(opts)?),
    )
}
