//! Steps several scenario families share: the checking child of a fork test,
//! a child that just stays alive, the softdirty trick, and passing a check's
//! result from a child to its parent.

use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::pagemap;
pub use cowgup_fixtures::proc::{child_body, collect};
use cowgup_fixtures::proc::{spawn, Child, Pipe};
use cowgup_fixtures::stamp::{Content, Mismatch, Pattern, Writer};
use cowgup_fixtures::{fail, Step};
use cowgup_harness::diag;

use crate::expectations::Observed;

/// What anonymous memory holds when a case starts.
pub const ORIGINAL: Content = Content::all(Writer::Setup);

/// `writer` writes the head of every page of `region` (whose pages held
/// `original`), then checks its own copy (`check_own_write`).
pub fn write_and_check_own(
    region: Region,
    pattern: Pattern,
    original: Content,
    writer: Writer,
    who: &str,
) -> Step<()> {
    pattern.write(region, writer);
    check_own_write(region, pattern, original.written_by(writer), who)
}

/// The writer's side of a COW: after its write, its copy must hold its own
/// heads *and* the old bodies on every page (the kernel copied all of each
/// page, to the right place). Wrong data here is never an accepted leak.
pub fn check_own_write(region: Region, pattern: Pattern, written: Content, who: &str) -> Step<()> {
    damage::copy(Side::Writer, region, pattern);
    match pattern.check(region, written) {
        Ok(()) => Ok(()),
        Err(m) => {
            cowgup_harness::evidence("mismatch", &m);
            fail(format!(
                "{who}'s own copy is wrong after its write (copy on write incomplete or misplaced): {m}"
            ))
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

/// A child forked by `fork_with`, past its first look and waiting for `go`;
/// it sends `Some(result of then)` on `report`.
pub struct Watched {
    pub child: Child,
    pub go: Pipe,
    pub report: Pipe,
}

/// The child's first-look handshake. The child looks at `range`
/// (`child_first_look`); when the data is there it runs `prepare`, then
/// tells the parent it is ready, waits for `go` and runs `then` with what
/// `prepare` gave (sending `None` instead when fork() lost the data). The
/// parent waits for ready: `Err(lost_at_fork())` when the child found its
/// page lost, a failure when the child failed before it was ready.
pub fn fork_with<P, T: serde::Serialize + serde::de::DeserializeOwned>(
    range: Region,
    pattern: Pattern,
    prepare: impl FnOnce() -> Step<P>,
    then: impl FnOnce(P) -> Step<T>,
) -> Step<Result<Watched, Observed>> {
    let (ready, go, report) = (Pipe::new()?, Pipe::new()?, Pipe::new()?);
    let child = spawn(|| {
        child_body(&report, || {
            let look = child_first_look(range, pattern)?;
            if look != FIRST_LOOK_OK {
                ready.send(&[look])?;
                return Ok(None);
            }
            let prepared = prepare()?;
            ready.send(&[look])?;
            go.wait()?;
            then(prepared).map(Some)
        })
    })?;
    match ready.recv()?.as_slice() {
        [FIRST_LOOK_OK] => Ok(Ok(Watched { child, go, report })),
        [FIRST_LOOK_LOST] => {
            child.exit_code()?;
            Ok(Err(lost_at_fork()))
        }
        _ => {
            // The child's own failure (sent on `report`) says what it saw.
            collect::<Option<T>>(&report, child)?;
            fail("child failed before it was ready (see its diagnostics)")
        }
    }
}

/// cow.c's `child_memcmp_fn`: a child that reads `range` (which must hold the
/// original data), tells the parent it is ready, waits while the parent
/// writes, and checks again: any difference is the parent's data leaking in.
pub struct Checker {
    child: Child,
    go: Pipe,
    report: Pipe,
    range: Region,
    pattern: Pattern,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ChildView {
    pub data: Result<(), Mismatch>,
    pub view: View,
}

impl Checker {
    /// Fork the checking child; `Err(observed)` when fork() lost the data already.
    pub fn fork(range: Region, pattern: Pattern) -> Step<Result<Checker, Observed>> {
        let watched = fork_with(
            range,
            pattern,
            || Ok(()),
            |()| {
                damage::copy(Side::Reader, range, pattern);
                Ok(ChildView {
                    data: pattern.check(range, ORIGINAL),
                    view: View::capture(range, pattern.unit)?,
                })
            },
        )?;
        Ok(watched.map(|w| Checker {
            child: w.child,
            go: w.go,
            report: w.report,
            range,
            pattern,
        }))
    }

    /// The parent has written the head of every page of `written` (which
    /// holds the range the child keeps): check the parent's own copy, let the
    /// child check its copy, and judge the data against the page tables.
    pub fn judge_parents_write(self, written: Region) -> Step<Observed> {
        let own = check_own_write(
            written,
            self.pattern,
            ORIGINAL.written_by(Writer::Parent),
            "the parent",
        );
        let parent = View::capture(self.range, self.pattern.unit)?;
        let child = self.finish()?;
        own?;
        evidence::compare_and_agree(
            "parent vs child after the parent's write",
            ("parent", &parent),
            ("child", &child.view),
            &child.data,
            true,
            "parent and child still share the page",
        )?;
        Ok(Observed::leak_unless(
            child.data,
            "Leak from parent into child",
        ))
    }

    /// Let the child check again, and collect what it saw.
    pub fn finish(self) -> Step<ChildView> {
        self.go.notify()?;
        match collect::<Option<ChildView>>(&self.report, self.child)? {
            Some(seen) => Ok(seen),
            None => fail("checking child had nothing to check"),
        }
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
