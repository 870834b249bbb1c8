//! Steps several scenario families share: the checking child of a fork test,
//! a child that just stays alive, the softdirty trick, and passing a check's
//! result from a child to its parent.

use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::pagemap;
use cowgup_fixtures::proc::{spawn, Child, Pipe};
use cowgup_fixtures::stamp::{Mismatch, Pattern, Writer};
use cowgup_fixtures::{fail, Step};
use cowgup_harness::diag;

use crate::expectations::Observed;

pub fn encode(r: &Result<(), Mismatch>) -> Vec<u64> {
    match r {
        Ok(()) => vec![0],
        Err(m) => vec![
            1,
            m.unit as u64,
            m.offset as u64,
            m.found,
            m.bad_units as u64,
            writer_code(m.found_writer),
        ],
    }
}

fn writer_code(w: Option<Writer>) -> u64 {
    match w {
        None => 0,
        Some(Writer::Nobody) => 1,
        Some(Writer::Setup) => 2,
        Some(Writer::Parent) => 3,
        Some(Writer::Child) => 4,
    }
}

fn writer_from_code(c: u64) -> Option<Writer> {
    [Writer::Nobody, Writer::Setup, Writer::Parent, Writer::Child]
        .into_iter()
        .find(|&w| writer_code(Some(w)) == c)
}

/// Decode what `encode` wrote at the front of `words`; returns the rest.
pub fn decode(words: &[u64], expected: Writer) -> Step<(Result<(), Mismatch>, &[u64])> {
    match words {
        [0, rest @ ..] => Ok((Ok(()), rest)),
        [1, unit, offset, found, bad, writer, rest @ ..] => Ok((
            Err(Mismatch {
                unit: *unit as usize,
                offset: *offset as usize,
                expected,
                found: *found,
                found_writer: writer_from_code(*writer),
                bad_units: *bad as usize,
            }),
            rest,
        )),
        _ => fail("child sent no result (see its diagnostics)"),
    }
}

/// Run `f` in the child; on an error, print it and send nothing, so the parent
/// reports "child sent no result" next to the child's own diagnostic.
pub fn child_body(report: &Pipe, f: impl FnOnce() -> Step<Vec<u64>>) -> i32 {
    match f() {
        Ok(words) => report.send(&words).map_or(1, |_| 0),
        Err(outcome) => {
            diag(format!("child: {outcome}"));
            let _ = report.send(&[]);
            1
        }
    }
}

/// What a forked child found when it first looked at the memory it inherited.
pub const FIRST_LOOK_OK: u64 = 0;
pub const FIRST_LOOK_LOST: u64 = 2;

/// The child's first look at inherited memory: it must hold the original data.
/// When it reads zeroes and the child's page-table entries were empty before
/// the read, fork() did not give the child the parent's page at all (it then
/// faulted in a fresh, zeroed one): reported as `FIRST_LOOK_LOST`, which the
/// parent turns into `Observed::LostAtFork`.
pub fn child_first_look(range: Region, pattern: Pattern) -> Step<u64> {
    let ptes = pagemap::read(range, pattern.unit).or_else(fail)?;
    match pattern.check(range, Writer::Setup) {
        Ok(()) => Ok(FIRST_LOOK_OK),
        Err(m) if m.found == 0 && ptes.iter().any(|p| !p.populated()) => {
            diag(format!(
                "child: right after fork() its page-table entries were {:?}; reading gave zeroes: {m}",
                &ptes[..ptes.len().min(4)]
            ));
            Ok(FIRST_LOOK_LOST)
        }
        Err(m) => fail(format!("child saw wrong data before any write: {m}")),
    }
}

pub fn lost_at_fork() -> Observed {
    Observed::LostAtFork(
        "the child did not inherit the parent's page: its page-table entry was empty right after fork() and \
         it read a fresh zeroed page"
            .into(),
    )
}

/// cow.c's `child_memcmp_fn`: a child that reads `range` (which must hold the
/// original data), tells the parent it is ready, waits while the parent
/// writes, and checks again: any difference is the parent's data leaking in.
pub struct Checker {
    child: Child,
    go: Pipe,
    report: Pipe,
    pattern: Pattern,
}

pub struct ChildView {
    pub data: Result<(), Mismatch>,
    pub view: View,
}

impl Checker {
    /// Fork the checking child; `Err(observed)` when fork() lost the data already.
    pub fn fork(range: Region, pattern: Pattern) -> Step<Result<Checker, Observed>> {
        let (ready, go, report) = (Pipe::new()?, Pipe::new()?, Pipe::new()?);
        let child = spawn(|| {
            child_body(&report, || {
                let look = child_first_look(range, pattern)?;
                ready.send(&[look])?;
                if look != FIRST_LOOK_OK {
                    return Ok(vec![]);
                }
                go.wait()?;
                let data = pattern.check(range, Writer::Setup);
                let mut w = encode(&data);
                w.extend(View::capture(range, pattern.unit)?.to_words());
                Ok(w)
            })
        })?;
        match ready.recv()?.as_slice() {
            [FIRST_LOOK_OK] => Ok(Ok(Checker {
                child,
                go,
                report,
                pattern,
            })),
            [FIRST_LOOK_LOST] => {
                child.exit_code()?;
                Ok(Err(lost_at_fork()))
            }
            _ => {
                let _ = child.exit_code();
                fail("checking child failed before it was ready (see its diagnostics)")
            }
        }
    }

    /// The parent has written `written` (the part the child keeps): let the
    /// child check, and judge the data against the page tables.
    pub fn judge_parents_write(self, written: Region) -> Step<Observed> {
        let parent = View::capture(written, self.pattern.unit)?;
        let child = self.finish()?;
        let sharing = evidence::compare(
            "parent vs child after the parent's write",
            "parent",
            &parent,
            "child",
            &child.view,
        );
        evidence::agree(
            &sharing,
            &child.data,
            true,
            "parent and child still share the page",
        )?;
        Ok(match child.data {
            Ok(()) => Observed::Clean,
            Err(mm) => Observed::Leak(format!("Leak from parent into child: {mm}")),
        })
    }

    /// Let the child check again, and collect what it saw.
    pub fn finish(self) -> Step<ChildView> {
        self.go.notify()?;
        let words = self.report.recv()?;
        let code = self.child.exit_code()?;
        let (data, rest) = decode(&words, Writer::Setup)?;
        let (view, _) = View::from_words(rest)?;
        if code != 0 {
            return fail(format!("child exited with {code}"));
        }
        let _ = self.pattern;
        Ok(ChildView { data, view })
    }
}

/// A child that does nothing but keep its copy of the address space alive
/// until released (cow.c's `child_wait_fn`).
pub struct Bystander {
    child: Child,
    release: Pipe,
}

impl Bystander {
    pub fn fork() -> Step<Bystander> {
        let (ready, release) = (Pipe::new()?, Pipe::new()?);
        let child = spawn(|| {
            if ready.notify().is_err() {
                return 1;
            }
            i32::from(release.wait().is_err())
        })?;
        ready.wait()?;
        Ok(Bystander { child, release })
    }

    pub fn release(self) -> Step<()> {
        self.release.notify()?;
        match self.child.exit_code()? {
            0 => Ok(()),
            c => fail(format!("bystander child exited with {c}")),
        }
    }
}

/// Clear the soft-dirty bits: write-protects every PTE of the process, the
/// way cow.c makes a pinned page R/O-mapped without unmapping it.
pub fn clear_softdirty() -> Step<()> {
    std::fs::write("/proc/self/clear_refs", "4")
        .or_else(|e| fail(format!("clear_softdirty() failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_cross_the_pipe_intact() {
        let m = Mismatch {
            unit: 3,
            offset: 0x3000,
            expected: Writer::Setup,
            found: Writer::Parent.word(3),
            found_writer: Some(Writer::Parent),
            bad_units: 7,
        };
        let mut w = encode(&Err(m.clone()));
        w.push(7);
        let (got, rest) = decode(&w, Writer::Setup).unwrap();
        assert_eq!(got, Err(m));
        assert_eq!(rest, &[7]);
        assert!(decode(&[], Writer::Setup).is_err());
    }
}
