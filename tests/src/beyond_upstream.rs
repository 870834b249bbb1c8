//! Memory types and pin sources upstream's selftests never cover, run
//! through the same questions: does fork() share what must be shared and
//! copy what must be copied, does every pin source see what the process
//! sees, and is every pin refused where none may be taken.

use cowgup_fixtures::anon::AnonBacking;
use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::needs::{scratch_dir, Need, ScratchFs};
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::proc::{spawn, Pipe};
use cowgup_fixtures::special::{self, KSM_FILL};
use cowgup_fixtures::stamp::{Pattern, Writer};
use cowgup_fixtures::{fail, skip, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Knob, Outcome};

use std::os::unix::fs::OpenOptionsExt;

use crate::common::{child_body, collect, write_and_check_own, Checker, ORIGINAL};
use crate::cross::{Backing, Case, Cross};
use crate::expectations::Observed;
use crate::scenario::{Family, Scenario};

pub const SHARED_ANON: &str = "MAP_SHARED|MAP_ANONYMOUS";
pub const SECRET: &str = "memfd_secret";
pub const KSM: &str = "KSM-merged pages";

/// KSM scans only when told to, and by default slowly: hold it running and quick.
pub fn ksm_knobs() -> Vec<Knob> {
    let ksm = std::path::Path::new("/sys/kernel/mm/ksm");
    vec![
        Knob::new(ksm.join("run"), "1"),
        Knob::new(ksm.join("sleep_millisecs"), "0"),
        Knob::new(ksm.join("pages_to_scan"), "10000"),
    ]
}

/// A child writes into MAP_SHARED|MAP_ANONYMOUS memory after fork(); the
/// parent must see it, on the same physical pages.
pub fn shared_stays_shared(opts: &TrialOptions) -> Step<Outcome> {
    let (region, pattern) = special::shared_anon(opts)?;
    let view = child_writes(region, pattern)?;
    let parent = View::capture(region, pattern.unit)?;
    damage::copy(Side::Reader, region, pattern);
    let data = pattern.check(region, ORIGINAL.written_by(Writer::Child));
    // Here a page that is *not* shared is the bug.
    evidence::compare_and_agree(
        "parent vs child after the child's write",
        ("parent", &parent),
        ("child", &view),
        &data,
        false,
        "the child's write went to a private copy",
    )?;
    Ok(match data {
        Ok(()) => Outcome::Pass,
        Err(m) => Outcome::Fail(format!("shared memory is not shared after fork(): {m}")),
    })
}

/// Fork a child that writes the head of every page of `region` (checking its
/// own copy) and reports its view.
fn child_writes(region: Region, pattern: Pattern) -> Step<View> {
    let report = Pipe::new()?;
    let child = spawn(|| {
        child_body(&report, || {
            write_and_check_own(region, pattern, ORIGINAL, Writer::Child, "the child")?;
            View::capture(region, pattern.unit)
        })
    })?;
    collect::<View>(&report, child)
}

/// A reference taken before fork() on shared anonymous memory must show
/// what the child writes afterwards: the pages are shared, not copied.
pub fn pin_sees_childs_write(opts: &TrialOptions, source: PinSource) -> Step<Outcome> {
    let (region, pattern) = special::shared_anon(opts)?;
    let mut held = match source.take(region)? {
        Ok(h) => h,
        Err(e) => {
            return fail(format!(
                "{} was refused on shared anonymous memory: {e}",
                source.name()
            ))
        }
    };
    child_writes(region, pattern)?;
    let seen = held.check(region, pattern, ORIGINAL.written_by(Writer::Child))?;
    cowgup_harness::evidence(
        "through_reference",
        serde_json::json!({
            "source": source.name(),
            "expected": "the child's write on every page",
            "mismatch": seen.as_ref().err(),
        }),
    );
    Ok(match seen {
        Ok(()) => Outcome::Pass,
        Err(m) => Outcome::Fail(format!(
            "{} does not see the child's write: {m}",
            source.name()
        )),
    })
}

/// Secret memory is out of the kernel's direct map: no GUP may reach it.
pub fn secret_refuses(opts: &TrialOptions, source: PinSource) -> Step<Outcome> {
    let (region, _) = special::secret(opts)?;
    let taken = source.take(region)?;
    diag(format!(
        "evidence: {} on memfd_secret memory: {}",
        source.name(),
        taken
            .as_ref()
            .map_or_else(|e| format!("refused with {e}"), |_| "granted".into())
    ));
    Ok(match taken {
        Err(nix::errno::Errno::EFAULT) => Outcome::Pass,
        Err(e) => Outcome::Fail(format!("refused with {e}, expected EFAULT")),
        Ok(_) => Outcome::Fail(format!("{} reached memfd_secret memory", source.name())),
    })
}

/// COW from a page KSM shares by content: after fork() the parent writes one
/// of the merged pages; the child and the parent's other pages keep the data.
pub fn ksm_cow() -> Step<Outcome> {
    let region = ksm_merged()?;
    let page = cowgup_fixtures::env().page_size;
    let before = View::capture(region, page)?;
    let (go, report) = (Pipe::new()?, Pipe::new()?);
    let child = spawn(|| {
        child_body(&report, || {
            go.wait()?;
            Ok(special::check_fill(region, KSM_FILL).is_err())
        })
    })?;
    let first = region.sub(0, page);
    special::fill(first, !KSM_FILL);
    let after = View::capture(region, page)?;
    go.notify()?;
    let child_saw_change = collect::<bool>(&report, child)?;
    let rest = region.sub(page, region.len - page);
    let sharing = evidence::compare(
        "first page before vs after the write",
        "before",
        &before,
        "after",
        &after,
    );
    cowgup_harness::evidence("sharing", &sharing);
    if sharing.compared > 0 && sharing.same > 0 && before.ptes[0].pfn() == after.ptes[0].pfn() {
        return Ok(Outcome::Fail(
            "the write landed in the KSM page itself".into(),
        ));
    }
    Ok(
        match (child_saw_change, special::check_fill(rest, KSM_FILL)) {
            (false, Ok(())) => Outcome::Pass,
            (_, Err(e)) => Outcome::Fail(format!("the other merged pages changed: {e}")),
            _ => Outcome::Fail("Leak from parent into child through a KSM page".into()),
        },
    )
}

/// `special::ksm_merged()`, whose skip (ksmd did not merge in time) says
/// what was measured: how long it waited, KSM's run value and counters.
fn ksm_merged() -> Step<Region> {
    let before = KsmStats::read();
    let started = std::time::Instant::now();
    match special::ksm_merged() {
        Err(Outcome::Skip(_)) => {
            let after = KsmStats::read();
            let waited = started.elapsed().as_secs_f64();
            let pages = special::PAGES;
            if after.run.as_deref() == Some("1") {
                skip(format!(
                    "ksmd did not merge {pages} identical pages within {waited:.1} s although \
                     /sys/kernel/mm/ksm/run is 1: full_scans {} -> {}, pages_shared {} -> {}, \
                     pages_sharing {} -> {}, this process's ksm_merging_pages {}",
                    before.show(|s| &s.full_scans),
                    after.show(|s| &s.full_scans),
                    before.show(|s| &s.pages_shared),
                    after.show(|s| &s.pages_shared),
                    before.show(|s| &s.pages_sharing),
                    after.show(|s| &s.pages_sharing),
                    after.show(|s| &s.merging_pages),
                ))
            } else {
                skip(format!(
                    "KSM is not running: /sys/kernel/mm/ksm/run is {} after {waited:.1} s of waiting \
                     for {pages} identical pages to merge (the trial's knob sets it to 1)",
                    after.show(|s| &s.run)
                ))
            }
        }
        other => other,
    }
}

/// KSM's state, each value as read (None: unreadable).
struct KsmStats {
    run: Option<String>,
    full_scans: Option<String>,
    pages_shared: Option<String>,
    pages_sharing: Option<String>,
    merging_pages: Option<String>,
}

impl KsmStats {
    fn read() -> KsmStats {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let ksm = |f: &str| read(&format!("/sys/kernel/mm/ksm/{f}"));
        KsmStats {
            run: ksm("run"),
            full_scans: ksm("full_scans"),
            pages_shared: ksm("pages_shared"),
            pages_sharing: ksm("pages_sharing"),
            merging_pages: read("/proc/self/ksm_merging_pages"),
        }
    }

    fn show(&self, field: impl Fn(&KsmStats) -> &Option<String>) -> &str {
        field(self).as_deref().unwrap_or("unreadable")
    }
}

/// An O_DIRECT read into a page COW-shared with a child: the kernel pins the
/// page for writing (FOLL_PIN | FOLL_WRITE), which must unshare it first, so
/// the data lands in the parent's page only.
pub fn odirect_read_into_shared_page(opts: &TrialOptions) -> Step<Outcome> {
    let m = AnonBacking::BasePage.setup(opts)?;
    // The trial's need for it was met before it ran.
    let dir = scratch_dir(ScratchFs::Ext4).ok_or_else(|| {
        Outcome::Fail("no ext4 scratch directory although the trial's need was met".into())
    })?;
    let path = dir.join(format!("odirect-{}", std::process::id()));
    // The file holds what the parent's page should end up holding.
    std::fs::write(
        &path,
        m.pattern
            .image(m.region, ORIGINAL.written_by(Writer::Parent)),
    )
    .or_else(|e| fail(format!("writing {}: {e}", path.display())))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .or_else(|e| {
            skip(format!(
                "cannot open {} (on {}) with O_DIRECT: {e}",
                path.display(),
                cowgup_harness::probe::fs_type(&dir)
            ))
        })?;
    let _ = std::fs::remove_file(&path);
    let checker = match Checker::fork(m.region, m.pattern)? {
        Ok(c) => c,
        Err(observed) => return Ok(Outcome::Fail(format!("{observed:?}"))),
    };
    // SAFETY: reading into our own mapped, aligned page.
    let n = unsafe {
        libc::pread(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            m.region.ptr().cast(),
            m.region.len,
            0,
        )
    };
    if n as usize != m.region.len {
        return fail(format!(
            "O_DIRECT read returned {n}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The read is the parent's write here: the parent must see it (its
    // own copy is checked first) and the child must not.
    Ok(match checker.judge_parents_write(m.region)? {
        Observed::Clean => Outcome::Pass,
        observed => Outcome::Fail(format!("the O_DIRECT read reached the child: {observed:?}")),
    })
}

/// What the cases run on; each is named by its memory, as cow.c's are.
#[derive(Clone, Copy)]
enum Memory {
    SharedAnon,
    Secret,
    Ksm,
    BasePage,
}

impl Backing for Memory {
    fn suffix(&self) -> String {
        match self {
            Memory::SharedAnon => SHARED_ANON.into(),
            Memory::Secret => SECRET.into(),
            Memory::Ksm => KSM.into(),
            Memory::BasePage => AnonBacking::BasePage.suffix(),
        }
    }
    fn group(&self) -> String {
        "beyond upstream".into()
    }
    fn needs(&self) -> Vec<Need> {
        vec![]
    }
    fn knobs(&self, _caps: &Capabilities) -> Vec<Knob> {
        match self {
            Memory::Ksm => ksm_knobs(),
            _ => vec![],
        }
    }
}

#[derive(Clone, Copy)]
enum Check {
    StaysShared,
    PinSeesChildsWrite(PinSource),
    Refused(PinSource),
    Cow,
    ODirectRead,
}

impl Case for Check {
    fn desc(&self) -> String {
        match self {
            Check::StaysShared => "Shared memory stays shared after fork()".into(),
            Check::PinSeesChildsWrite(s) => {
                format!("{} sees the child's write after fork()", s.name())
            }
            Check::Refused(s) => format!("{} is refused", s.name()),
            Check::Cow => "Basic COW after fork()".into(),
            Check::ODirectRead => {
                "O_DIRECT read into a page shared with a child after fork()".into()
            }
        }
    }
    fn needs(&self) -> Vec<Need> {
        match self {
            Check::PinSeesChildsWrite(s) | Check::Refused(s) => s.needs(),
            Check::ODirectRead => vec![Need::Scratch(ScratchFs::Ext4)],
            Check::StaysShared | Check::Cow => vec![],
        }
    }
    fn pins(&self) -> bool {
        match self {
            Check::PinSeesChildsWrite(s) | Check::Refused(s) => s.pins(),
            Check::ODirectRead => true,
            Check::StaysShared | Check::Cow => false,
        }
    }
}

/// Memory types and pin sources upstream never covers.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    // An O_DIRECT reference lasts one I/O: nothing is held across the
    // child's write.
    let seen_by = PinSource::ALL
        .into_iter()
        .filter(|s| *s != PinSource::ODirect)
        .map(|s| (Check::PinSeesChildsWrite(s), Memory::SharedAnon));
    let refused = PinSource::ALL.map(|s| (Check::Refused(s), Memory::Secret));
    let pairs = [(Check::StaysShared, Memory::SharedAnon)]
        .into_iter()
        .chain(seen_by)
        .chain(refused)
        .chain([
            (Check::Cow, Memory::Ksm),
            (Check::ODirectRead, Memory::BasePage),
        ])
        .collect();
    Cross::pairs(Family::BEYOND_UPSTREAM, caps, pairs).build(|opts, check, _| match check {
        Check::StaysShared => shared_stays_shared(opts),
        Check::PinSeesChildsWrite(source) => pin_sees_childs_write(opts, source),
        Check::Refused(source) => secret_refuses(opts, source),
        Check::Cow => ksm_cow(),
        Check::ODirectRead => odirect_read_into_shared_page(opts),
    })
}
