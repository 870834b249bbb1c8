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

use std::sync::Arc;

use cowgup_fixtures::anon::{AnonBacking, AnonMemory};
use cowgup_fixtures::evidence::{self, View};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::remote;
use cowgup_fixtures::stamp::{Content, Mismatch, Pattern, Writer};
use cowgup_fixtures::{fail, Step};
use cowgup_harness::probe::Capabilities;
use nix::unistd::Pid;

use crate::common::{collect, fork_with, write_and_check_own, ChildView, Watched, ORIGINAL};
use crate::expectations::{self, judge, Mapping, Mechanism, MemoryClass, Observed, Subject};
use crate::scenario::{Family, Scenario};

/// Which side acts, and how.
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

pub struct RemoteCase {
    pub desc: &'static str,
    pub direction: Direction,
}

pub const CASES: [RemoteCase; 3] = [
    RemoteCase {
        desc: "process_vm_writev() from the parent into COW-shared pages of the child",
        direction: Direction::WriteIntoChild,
    },
    RemoteCase {
        desc: "process_vm_readv() by the parent of pages the child wrote after fork()",
        direction: Direction::ReadChildsWrite,
    },
    RemoteCase {
        desc: "process_vm_readv() of COW-shared pages, then the parent writes",
        direction: Direction::ReadThenParentWrites,
    },
];

/// Every case on every anonymous backing of this host.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let mut out = Vec::new();
    for case in &CASES {
        for backing in AnonBacking::all(&caps.thp_sizes, caps.pmd_size, &hugetlb) {
            // The table is asked about fork()'s part: a child that lost its
            // page at fork() (hugetlb-1g-lost-at-fork) is judged as such.
            let subject = Subject {
                mechanism: Mechanism::Fork,
                memory: if backing.is_hugetlb() {
                    MemoryClass::AnonHugetlb
                } else {
                    MemoryClass::Anon
                },
                size: match backing {
                    AnonBacking::Thp { size, .. } | AnonBacking::Hugetlb { size } => Some(size),
                    _ => None,
                },
                mapping: Mapping::Private,
                kernel,
            };
            let direction = case.direction;
            out.push(Scenario {
                name: format!("{} ... with {}", case.desc, backing.suffix()),
                family: Family::REMOTE_ACCESS,
                group: backing.group(),
                needs: backing.needs(),
                knobs: backing.knobs(caps.pmd_size),
                // pin_user_pages_remote(): FOLL_PIN, counted in /proc/vmstat.
                pins: true,
                body: Arc::new(move |opts| {
                    Ok(judge(&subject, run(direction, &backing.setup(opts)?)?))
                }),
            });
        }
    }
    out
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
    let found: Vec<(usize, u64)> = offsets.into_iter().zip(words).collect();
    Ok(pattern.check_samples(&found, region.addr, region.len, expected))
}

fn run(direction: Direction, m: &AnonMemory) -> Step<Observed> {
    let (region, pattern) = (m.region, m.pattern);
    // What the child's copy must hold at the end.
    let child_final = match direction {
        Direction::WriteIntoChild => ORIGINAL.written_by(Writer::Parent),
        Direction::ReadChildsWrite => ORIGINAL.written_by(Writer::Child),
        Direction::ReadThenParentWrites => ORIGINAL,
    };
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
    // The parent's side: what it did, and what its own copy must hold.
    let acted: Step<(Option<Result<(), Mismatch>>, Content)> = (|| match direction {
        Direction::WriteIntoChild => {
            remote_write_heads(pid, region, pattern, Writer::Parent)?;
            Ok((None, ORIGINAL))
        }
        Direction::ReadChildsWrite => Ok((
            Some(remote_read_check(
                pid,
                region,
                pattern,
                ORIGINAL.written_by(Writer::Child),
            )?),
            ORIGINAL,
        )),
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
                    &before,
                    "after",
                    &unshared,
                ),
            );
            Ok((Some(again), ORIGINAL.written_by(Writer::Parent)))
        }
    })();
    let own = acted.as_ref().ok().map(|(_, c)| pattern.check(region, *c));
    let after = View::capture(region, pattern.unit)?;
    go.notify()?;
    let seen = collect::<Option<ChildView>>(&report, child);
    let (remote, own_expected) = acted?;
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
            "parent_expected": own_expected.describe(),
            "child_expected": child_final.describe(),
            "parent_pfn_before": before.ptes.first().and_then(|p| p.pfn()),
            "parent_pfn_after": after.ptes.first().and_then(|p| p.pfn()),
            "child_pfn": child.view.ptes.first().and_then(|p| p.pfn()),
            "parent_own": own.as_ref().err(),
            "remote_read": remote.as_ref().and_then(|r| r.as_ref().err()),
            "child_data": child.data.as_ref().err(),
        }),
    );
    Ok(match direction {
        Direction::WriteIntoChild => {
            // The parent's pages must keep their stamps: a change means the
            // remote write landed in a page the parent still maps.
            evidence::agree(
                &sharing,
                &own,
                true,
                "the remote write went into a page still shared with the parent",
            )?;
            if let Err(m) = own {
                Observed::Leak(format!(
                    "Leak from the child into the parent: process_vm_writev() into the child changed the parent's pages: {m}"
                ))
            } else if let Err(m) = child.data {
                return fail(format!(
                    "the child does not see the parent's process_vm_writev(): {m}"
                ));
            } else {
                Observed::Clean
            }
        }
        Direction::ReadChildsWrite => {
            cowgup_harness::evidence("sharing", &sharing);
            if let Err(m) = own {
                return fail(format!(
                    "the parent's own pages changed although only the child wrote: {m}"
                ));
            }
            if let Err(m) = child.data {
                return fail(format!("the child's copy changed after its write: {m}"));
            }
            match remote.expect("a read was made") {
                Ok(()) => Observed::Clean,
                Err(m) => {
                    return fail(format!(
                        "process_vm_readv() of the child's written pages did not return the child's data: {m}"
                    ))
                }
            }
        }
        Direction::ReadThenParentWrites => {
            evidence::agree(
                &sharing,
                &child.data,
                true,
                "parent and child still share the page",
            )?;
            if let Err(m) = own {
                return fail(format!(
                    "the parent's own copy is wrong after its write: {m}"
                ));
            }
            match (child.data, remote.expect("a read was made")) {
                (Err(m), _) => Observed::Leak(format!("Leak from parent into child: {m}")),
                (Ok(()), Err(m)) => Observed::Leak(format!(
                    "Leak from parent into child: a second process_vm_readv() of the child shows: {m}"
                )),
                (Ok(()), Ok(())) => Observed::Clean,
            }
        }
    })
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
