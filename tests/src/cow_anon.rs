//! cow.c's anonymous-memory cases (`anon_test_cases[]`), run on every
//! anonymous backing. Where a case lives: "vmsplice() before fork(), unmap in
//! parent after fork()" on hugetlb is `VMSPLICE_BEFORE_FORK` below, on
//! `AnonBacking::Hugetlb` from fixtures/src/anon.rs.

use cowgup_fixtures::anon::AnonMemory;
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::{self, Region, RW};
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pin::{self, FixedBuffer, GupTest};
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::stamp::{Pattern, Writer};
use cowgup_fixtures::{fail, skip, Step};
use nix::sys::mman::{MapFlags, ProtFlags};

use crate::common::{
    child_body, child_first_look, clear_softdirty, decode, encode, lost_at_fork, Bystander,
    Checker, FIRST_LOOK_LOST, FIRST_LOOK_OK,
};
use crate::expectations::{Mechanism, Observed};

pub struct AnonCase {
    pub desc: &'static str,
    pub mechanism: Mechanism,
    /// Needs beyond the backing's own, checked after them (as cow.c does).
    pub needs: &'static [Need],
    pub run: fn(&AnonMemory) -> Step<Observed>,
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
    m.pattern.stamp(m.region, Writer::Parent);
    checker.judge_parents_write(m.region)
}

/// The child vmsplices the memory into a pipe and unmaps it; the parent then
/// writes; the pipe must still hold the original data.
fn vmsplice_in_child(m: &AnonMemory, mprotect: bool) -> Step<Observed> {
    let (ready, go, report) = (Pipe::new()?, Pipe::new()?, Pipe::new()?);
    let child = spawn(|| {
        child_body(&report, || {
            let look = child_first_look(m.region, m.pattern)?;
            if look != FIRST_LOOK_OK {
                ready.send(&[look])?;
                return Ok(vec![]);
            }
            let spliced = pin::vmsplice(m.region)?;
            m.region.munmap()?;
            ready.send(&[look])?;
            go.wait()?;
            let bytes = spliced.read_all()?;
            let mut w = vec![spliced.transferred as u64];
            w.extend(encode(&m.pattern.check_bytes(
                &bytes,
                m.region.addr,
                Writer::Setup,
            )));
            Ok(w)
        })
    })?;
    match ready.recv()?.as_slice() {
        [FIRST_LOOK_OK] => {}
        [FIRST_LOOK_LOST] => {
            child.exit_code()?;
            return Ok(lost_at_fork());
        }
        _ => {
            let _ = child.exit_code();
            return fail("child failed before it was ready (see its diagnostics)");
        }
    }
    if mprotect {
        mprotect_dance(m)?;
    }
    let before = View::capture(m.region, m.pattern.unit)?;
    m.pattern.stamp(m.region, Writer::Parent);
    let after = View::capture(m.region, m.pattern.unit)?;
    go.notify()?;
    let words = report.recv()?;
    let code = child.exit_code()?;
    let Some((&transferred, rest)) = words.split_first() else {
        return fail("child sent no result (see its diagnostics)");
    };
    let (data, _) = decode(rest, Writer::Setup)?;
    if code != 0 {
        return fail(format!("child exited with {code}"));
    }
    let units = (transferred as usize).div_ceil(m.pattern.unit);
    cowgup_harness::diag(format!(
        "vmsplice() transferred {transferred} bytes ({units} unit(s))"
    ));
    let sharing = evidence::compare(
        "parent before vs after its write, pages in the pipe",
        "before",
        &before.first_units(units),
        "after",
        &after.first_units(units),
    );
    evidence::agree(
        &sharing,
        &data,
        true,
        "the parent wrote in place into a page the pipe references",
    )?;
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(mm) => Observed::Leak(format!("Leak from parent into child: {mm}")),
    })
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
            ready.notify()?;
            go.wait()?;
            let before = View::capture(m.region, m.pattern.unit)?;
            m.pattern.stamp(m.region, Writer::Child);
            let after = View::capture(m.region, m.pattern.unit)?;
            let mut w = before.to_words();
            w.extend(after.to_words());
            Ok(w)
        })
    })?;
    let spliced = match early {
        Some(s) => s,
        None => pin::vmsplice(m.region)?,
    };
    ready.wait()?;
    m.region.munmap()?;
    go.notify()?;
    let words = report.recv()?;
    let code = child.exit_code()?;
    if code != 0 {
        return fail(format!("child exited with {code}"));
    }
    let (before, rest) = View::from_words(&words)?;
    let (after, _) = View::from_words(rest)?;
    let bytes = spliced.read_all()?;
    let data = m.pattern.check_bytes(&bytes, m.region.addr, Writer::Setup);
    let units = spliced.transferred.div_ceil(m.pattern.unit);
    cowgup_harness::diag(format!(
        "vmsplice() transferred {} bytes ({units} unit(s))",
        spliced.transferred
    ));
    let sharing = evidence::compare(
        "child before vs after its write, pages in the pipe",
        "before",
        &before.first_units(units),
        "after",
        &after.first_units(units),
    );
    evidence::agree(
        &sharing,
        &data,
        true,
        "the child wrote in place into a page the pipe references",
    )?;
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(mm) => Observed::Leak(format!("Leak from child into parent: {mm}")),
    })
}

/// A long-term R/W pin (io_uring fixed buffer) must keep seeing what the
/// process sees after the page is R/O-mapped (softdirty) or shared by fork.
fn iouring(m: &AnonMemory, use_fork: bool) -> Step<Observed> {
    let file = tempfile::tempfile().or_else(|e| fail(format!("tmpfile() failed: {e}")))?;
    let mut buf = FixedBuffer::register(m.region)?;
    let bystander = if use_fork {
        Some(Bystander::fork()?)
    } else {
        m.region.mprotect(ProtFlags::PROT_READ)?;
        clear_softdirty()?;
        m.region.mprotect(RW)?;
        None
    };
    let before = View::capture(m.region, m.pattern.unit)?;
    m.pattern.stamp(m.region, Writer::Parent);
    let after = View::capture(m.region, m.pattern.unit)?;
    buf.write_through_pin(&file, m.pattern)?;
    let data = buf.check_file(&file, m.pattern, Writer::Parent)?;
    if let Some(b) = bystander {
        b.release()?;
    }
    let sharing = evidence::compare(
        "pinned pages before vs after the write",
        "before",
        &before,
        "after",
        &after,
    );
    evidence::agree(
        &sharing,
        &data,
        false,
        "the write went to a new page, away from the pin",
    )?;
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(mm) => Observed::Leak(format!("Longterm R/W pin is not reliable: {mm}")),
    })
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
    let gup = GupTest::open()?;
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
    let observed = ro_pin_and_check(&gup, m.region, m.pattern, fast)?;
    if let Some(b) = bystander {
        b.release()?;
    }
    Ok(observed)
}

/// Pin `region` R/O, write it, read back through the pin and compare.
pub fn ro_pin_and_check(
    gup: &GupTest,
    region: Region,
    pattern: Pattern,
    fast: bool,
) -> Step<Observed> {
    match gup.start(region, false, fast) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINVAL) => return skip("PIN_LONGTERM_TEST_START failed: EINVAL"),
        Err(e) => return fail(format!("PIN_LONGTERM_TEST_START failed: {e}")),
    }
    let before = View::capture(region, pattern.unit)?;
    pattern.stamp(region, Writer::Parent);
    let after = View::capture(region, pattern.unit)?;
    let copy = mem::map_anon(region.len, RW, MapFlags::MAP_PRIVATE)
        .or_else(|e| fail(format!("mmap() failed: {e}")))?;
    let read = gup.read(copy);
    gup.stop();
    read?;
    // The copy holds what the pinned pages of `region` hold: check it as `region`'s.
    // SAFETY: the copy is mapped and was just filled by the kernel.
    let pinned = unsafe { std::slice::from_raw_parts(copy.ptr(), copy.len) };
    let data = pattern.check_bytes(pinned, region.addr, Writer::Parent);
    let sharing = evidence::compare(
        "pinned pages before vs after the write",
        "before",
        &before,
        "after",
        &after,
    );
    evidence::agree(
        &sharing,
        &data,
        false,
        "the write went to a new page, away from the pin",
    )?;
    Ok(match data {
        Ok(()) => Observed::Clean,
        Err(mm) => Observed::Leak(format!("Longterm R/O pin is not reliable: {mm}")),
    })
}
