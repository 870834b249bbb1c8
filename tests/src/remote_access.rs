//! Remote access (FOLL_REMOTE) to COW-shared anonymous memory: the parent
//! reads and writes its child's pages with process_vm_readv(2) and
//! process_vm_writev(2), which pin the child's pages through
//! `pin_user_pages_remote()` (mm/process_vm_access.c). A remote write is a
//! write by the child's mm: it must unshare the child's page and leave the
//! parent's alone; a remote read must show the child's current page, never
//! the parent's; and a remote read-only pin of a COW-shared page unshares it
//! in the child (gup_must_unshare()), after which the parent's writes must
//! still not show there. Every case runs on every anonymous backing
//! (`AnonBacking::all`, sizes as probed), each base page stamped per page.

use cowgup_fixtures::anon::AnonMemory;
use cowgup_fixtures::damage::{self, Side};
use cowgup_fixtures::evidence::{self, Sharing, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::remote;
use cowgup_fixtures::stamp::{Content, Mismatch, Pattern, Writer};
use cowgup_fixtures::{fail, Step};
use cowgup_harness::probe::Capabilities;
use nix::unistd::Pid;

use crate::common::{collect, fork_with, write_and_check_own, ChildView, Watched, ORIGINAL};
use crate::cross::{anon_backings, Case, Cross};
use crate::expectations::{self, judge, Mechanism, Observed, Subject};
use crate::scenario::{Family, Scenario};

/// Which side acts, and how: the family's cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The parent process_vm_writev()s its stamps into the child's
    /// still-shared pages; only the child's copy may change.
    WriteIntoChild,
    /// The child writes after fork(); the parent's process_vm_readv() of the
    /// child's pages must return the child's data, not its own.
    ReadChildsWrite,
    /// The parent process_vm_readv()s the still-shared pages (a remote R/O
    /// pin, which unshares them in the child), then writes its own copy: the
    /// child, and a second remote read, must still show the original data.
    ReadThenParentWrites,
}

pub const CASES: [Direction; 3] = [
    Direction::WriteIntoChild,
    Direction::ReadChildsWrite,
    Direction::ReadThenParentWrites,
];

impl Case for Direction {
    fn desc(&self) -> String {
        match self {
            Direction::WriteIntoChild => {
                "process_vm_writev() from the parent into COW-shared pages of the child"
            }
            Direction::ReadChildsWrite => {
                "process_vm_readv() by the parent of pages the child wrote after fork()"
            }
            Direction::ReadThenParentWrites => {
                "process_vm_readv() of COW-shared pages, then the parent writes"
            }
        }
        .into()
    }
    /// pin_user_pages_remote(): FOLL_PIN, counted in /proc/vmstat.
    fn pins(&self) -> bool {
        true
    }
}

impl Direction {
    /// What the child's copy must hold at the end.
    fn child_final(self) -> Content {
        match self {
            Direction::WriteIntoChild => ORIGINAL.written_by(Writer::Parent),
            Direction::ReadChildsWrite => ORIGINAL.written_by(Writer::Child),
            Direction::ReadThenParentWrites => ORIGINAL,
        }
    }
}

/// Every case on every anonymous backing of this host.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    Cross::new(Family::REMOTE_ACCESS, caps, CASES, anon_backings(caps)).build(
        move |opts, direction, backing| {
            // The table is asked about fork()'s part: a child that lost its
            // page at fork() (hugetlb-1g-lost-at-fork) is judged as such.
            let subject = Subject::anon(Mechanism::Fork, backing, kernel);
            Ok(judge(&subject, run(direction, &backing.setup(opts)?)?))
        },
    )
}

/// The word positions of every base page that remote reads sample: the head
/// and the last word (the stamps' default positions).
fn sample_offsets(region: Region, pattern: Pattern) -> Vec<usize> {
    (0..pattern.pages(region.len))
        .flat_map(|i| [i * pattern.page, (i + 1) * pattern.page - 8])
        .collect()
}

/// process_vm_writev() of `writer`'s head stamp into every base page of
/// `region` in `pid` (one 8-byte remote iovec per page).
pub fn remote_write_heads(pid: Pid, region: Region, pattern: Pattern, writer: Writer) -> Step<()> {
    let first = region.addr / pattern.page;
    let pages = pattern.pages(region.len);
    let addrs: Vec<usize> = (0..pages).map(|i| region.addr + i * pattern.page).collect();
    let words: Vec<u64> = (0..pages).map(|i| writer.word(first + i, 0)).collect();
    remote::write_words(pid, &addrs, &words)
}

/// process_vm_readv() of the sampled words of every base page of `region`
/// in `pid`, checked against `expected`.
pub fn remote_read_check(
    pid: Pid,
    region: Region,
    pattern: Pattern,
    expected: Content,
) -> Step<Result<(), Mismatch>> {
    let offsets = sample_offsets(region, pattern);
    let addrs: Vec<usize> = offsets.iter().map(|&off| region.addr + off).collect();
    let words = remote::read_words(pid, &addrs)?;
    let mut found: Vec<(usize, u64)> = offsets.into_iter().zip(words).collect();
    // What the remote read shows is a reference to the child's pages.
    damage::reference_samples(&mut found, region.addr, region.len, pattern, expected);
    Ok(pattern.check_samples(&found, region.addr, region.len, expected))
}

/// What the parent's side did.
struct Acted {
    /// What its remote read found, where it read.
    remote: Option<Result<(), Mismatch>>,
    /// What its own copy must hold afterwards.
    own_expected: Content,
}

fn run(direction: Direction, m: &AnonMemory) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    let child_final = direction.child_final();
    let watched = fork_with(
        region,
        pattern,
        || {
            if direction == Direction::ReadChildsWrite {
                write_and_check_own(region, pattern, ORIGINAL, Writer::Child, "the child")?;
            }
            Ok(())
        },
        |()| {
            damage::copy(Side::Reader, region, pattern);
            Ok(ChildView {
                data: pattern.check(region, child_final),
                view: View::capture(region, pattern.unit)?,
            })
        },
    )?;
    let Watched { child, go, report } = match watched {
        Ok(w) => w,
        Err(observed) => return Ok(observed),
    };
    let pid = child.pid();
    let before = View::capture(region, pattern.unit)?;
    let acted = act(direction, pid, region, pattern, &before);
    let own = acted
        .as_ref()
        .ok()
        .map(|a| pattern.check(region, a.own_expected));
    let after = View::capture(region, pattern.unit)?;
    // The child is released whatever the parent's side did, so it is reaped.
    go.notify()?;
    let seen = collect::<Option<ChildView>>(&report, child);
    let acted = acted?;
    let Some(child) = seen? else {
        return fail("child sent no view");
    };
    let own = own.expect("checked when the action succeeded");
    let sharing = evidence::compare(
        "parent vs child at the end",
        "parent",
        &after,
        "child",
        &child.view,
    );
    cowgup_harness::evidence(
        "remote_access",
        serde_json::json!({
            "direction": format!("{direction:?}"),
            "child_pid": pid.as_raw(),
            "parent_expected": acted.own_expected.describe(),
            "child_expected": child_final.describe(),
            "parent_pfn_before": before.ptes.first().and_then(|p| p.pfn()),
            "parent_pfn_after": after.ptes.first().and_then(|p| p.pfn()),
            "child_pfn": child.view.ptes.first().and_then(|p| p.pfn()),
            "parent_own": own.as_ref().err(),
            "remote_read": acted.remote.as_ref().and_then(|r| r.as_ref().err()),
            "child_data": child.data.as_ref().err(),
        }),
    );
    let end = End {
        sharing,
        own,
        child: child.data,
        remote: acted.remote,
    };
    match direction {
        Direction::WriteIntoChild => end.write_into_child(),
        Direction::ReadChildsWrite => end.read_childs_write(),
        Direction::ReadThenParentWrites => end.read_then_parent_writes(),
    }
}

/// The parent's side, while the child holds its pages shared.
fn act(
    direction: Direction,
    pid: Pid,
    region: Region,
    pattern: Pattern,
    before: &View,
) -> Step<Acted> {
    match direction {
        Direction::WriteIntoChild => {
            remote_write_heads(pid, region, pattern, Writer::Parent)?;
            Ok(Acted {
                remote: None,
                own_expected: ORIGINAL,
            })
        }
        Direction::ReadChildsWrite => Ok(Acted {
            remote: Some(remote_read_check(
                pid,
                region,
                pattern,
                ORIGINAL.written_by(Writer::Child),
            )?),
            own_expected: ORIGINAL,
        }),
        Direction::ReadThenParentWrites => {
            let first = remote_read_check(pid, region, pattern, ORIGINAL)?;
            if let Err(m) = first {
                return fail(format!(
                    "process_vm_readv() of the child's still-shared pages, before anyone wrote: {m}"
                ));
            }
            let unshared = View::capture(region, pattern.unit)?;
            write_and_check_own(region, pattern, ORIGINAL, Writer::Parent, "the parent")?;
            let again = remote_read_check(pid, region, pattern, ORIGINAL)?;
            cowgup_harness::evidence(
                "sharing",
                evidence::compare(
                    "parent before vs after the remote read (the parent's PFNs must not move)",
                    "before",
                    before,
                    "after",
                    &unshared,
                ),
            );
            Ok(Acted {
                remote: Some(again),
                own_expected: ORIGINAL.written_by(Writer::Parent),
            })
        }
    }
}

/// What both sides hold at the end: the verdict per direction.
struct End {
    sharing: Sharing,
    /// The parent's own copy, against what it must hold.
    own: Result<(), Mismatch>,
    /// The child's copy, against what it must hold.
    child: Result<(), Mismatch>,
    /// The parent's remote read, where it read.
    remote: Option<Result<(), Mismatch>>,
}

impl End {
    fn write_into_child(self) -> Step<Observed> {
        // The parent's pages must keep their stamps: a change means the
        // remote write landed in a page the parent still maps.
        evidence::agree(
            &self.sharing,
            &self.own,
            true,
            "the remote write went into a page still shared with the parent",
        )?;
        if let Err(m) = self.own {
            return Ok(Observed::Leak(format!(
                "Leak from the child into the parent: process_vm_writev() into the child \
                 changed the parent's pages: {m}"
            )));
        }
        if let Err(m) = self.child {
            return fail(format!(
                "the child does not see the parent's process_vm_writev(): {m}"
            ));
        }
        Ok(Observed::Clean)
    }

    fn read_childs_write(self) -> Step<Observed> {
        cowgup_harness::evidence("sharing", &self.sharing);
        if let Err(m) = self.own {
            return fail(format!(
                "the parent's own pages changed although only the child wrote: {m}"
            ));
        }
        if let Err(m) = self.child {
            return fail(format!("the child's copy changed after its write: {m}"));
        }
        match self.remote.expect("a read was made") {
            Ok(()) => Ok(Observed::Clean),
            Err(m) => fail(format!(
                "process_vm_readv() of the child's written pages did not return the child's \
                 data: {m}"
            )),
        }
    }

    fn read_then_parent_writes(self) -> Step<Observed> {
        evidence::agree(
            &self.sharing,
            &self.child,
            true,
            "parent and child still share the page",
        )?;
        if let Err(m) = self.own {
            return fail(format!(
                "the parent's own copy is wrong after its write: {m}"
            ));
        }
        Ok(match (self.child, self.remote.expect("a read was made")) {
            (Err(m), _) => Observed::Leak(format!("Leak from parent into child: {m}")),
            (Ok(()), Err(m)) => Observed::Leak(format!(
                "Leak from parent into child: a second process_vm_readv() of the child \
                 shows: {m}"
            )),
            (Ok(()), Ok(())) => Observed::Clean,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_the_head_and_the_last_word_of_every_page() {
        let p = Pattern {
            page: 4096,
            unit: 4096,
            thorough: false,
        };
        let offs = sample_offsets(Region::new(0x10000, 3 * 4096), p);
        assert_eq!(offs, vec![0, 4088, 4096, 8184, 8192, 12280]);
    }

    #[test]
    fn every_case_runs_on_every_backing() {
        let caps = crate::tests::reference_host();
        let all = scenarios(&caps);
        assert_eq!(all.len(), 3 * (2 + 6 * 8 + 2 + 2));
        assert!(all.iter().all(|s| s.pins));
        assert_eq!(
            all[0].name,
            "process_vm_writev() from the parent into COW-shared pages of the child ... with base page"
        );
    }
}
