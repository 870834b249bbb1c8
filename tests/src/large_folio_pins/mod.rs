//! Partial and repeated long-term pins of large folios (PMD THPs, mTHPs,
//! hugetlb pages) through io_uring fixed buffers, whose registration
//! (io_uring/rsrc.c io_sqe_buffer_register) coalesces the pages of one folio
//! into one bvec and keeps one pin per folio, and whose pins decide whether
//! fork() shares a folio or copies it for the child (folio_maybe_dma_pinned()
//! in fork's copy path). Four shapes, each a case crossed with the folio
//! sizes the host has:
//! - two buffers over the halves of one folio, one unregistered, then fork():
//!   the remaining pin must still see the parent's write;
//! - 64 rings pinning the same folio, released in a fixed pseudo-random
//!   order: every registration granted, the last pin still effective, pins
//!   balanced (the runner's pin-balance check);
//! - fork() with a live pin while a thread keeps writing a generation
//!   counter: the child must see the memory as it was at one moment;
//! - buffers over several folios, partial folios, mixed folio sizes and one
//!   page mapped twice (the CVE-2023-2598 shape): `WRITE_FIXED` must write
//!   exactly the bytes the mapping holds.
//!
//! Where each piece is:
//! - here: the folio kinds, the shapes of each case (`Folio`, `TornBacking`,
//!   `Span`), the catalogue (`scenarios`) with its judgement (each case's
//!   observation judged by `expectations::judge`), and `register`, how cases
//!   (a) to (c) take a pin and say why one was refused;
//! - `one_folio.rs`: (a) the halves of one folio and (b) many rings on one folio;
//! - `torn.rs`: (c) fork() racing a writer thread, and what "one moment" means;
//! - `spans.rs`: (d) building each span and comparing `WRITE_FIXED` with the mapping.

mod one_folio;
mod spans;
mod torn;

use std::sync::Arc;

use cowgup_fixtures::anon::{AnonBacking, AnonMemory, ThpShape};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::{fail, kb, skip, Step};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::Knob;

use crate::expectations::{self, judge, Mapping, Mechanism, MemoryClass, Observed, Subject};
use crate::scenario::{Body, Family, Scenario};
use one_folio::{halves, many_rings};
use spans::write_fixed_span;
use torn::torn_fork;

pub use one_folio::{RELEASE_SEED, RINGS};
pub use torn::Snapshot;

/// One large folio kind the cases run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folio {
    /// Anonymous THP of this size (the PMD size, or an mTHP size).
    Thp(usize),
    /// Private anonymous hugetlb page of this size.
    Hugetlb(usize),
}

impl Folio {
    /// What kind of page, and its size: the one place both are read from.
    fn kind(self) -> (&'static str, usize) {
        match self {
            Folio::Thp(s) => ("THP", s),
            Folio::Hugetlb(s) => ("hugetlb", s),
        }
    }

    fn suffix(self) -> String {
        let (kind, size) = self.kind();
        format!("{kind} ({})", kb(size))
    }

    fn size(self) -> usize {
        self.kind().1
    }

    fn group(self) -> String {
        let (kind, size) = self.kind();
        format!("anon {kind} {}", kb(size))
    }

    /// The backing's needs and io_uring's.
    fn needs(self) -> Vec<Need> {
        self.backing()
            .needs()
            .into_iter()
            .chain([Need::IoUring])
            .collect()
    }

    /// The one-folio backing (THP only at the PMD size).
    fn backing(self) -> AnonBacking {
        match self {
            Folio::Thp(size) => AnonBacking::Thp {
                shape: ThpShape::Pmd,
                size,
            },
            Folio::Hugetlb(size) => AnonBacking::Hugetlb { size },
        }
    }

    fn subject(self, kernel: Option<expectations::Version>) -> Subject {
        Subject {
            mechanism: Mechanism::Fork,
            memory: match self {
                Folio::Thp(_) => MemoryClass::Anon,
                Folio::Hugetlb(_) => MemoryClass::AnonHugetlb,
            },
            size: Some(self.size()),
            mapping: Mapping::Private,
            kernel,
        }
    }

    fn knobs(self, pmd: Option<usize>) -> Vec<Knob> {
        self.backing().knobs(pmd)
    }
}

/// The large folios of this host that one-folio cases run on: the PMD THP
/// and every hugetlb size.
fn one_folio_kinds(caps: &Capabilities) -> Vec<Folio> {
    caps.pmd_size
        .map(Folio::Thp)
        .into_iter()
        .chain(caps.hugetlb.iter().map(|p| Folio::Hugetlb(p.size)))
        .collect()
}

/// The shapes of (d): what a fixed buffer spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// `n` folios of one kind, from the middle of the first to the middle
    /// of the last (at most 1 MiB of each partial folio).
    Folios { folio: Folio, n: usize },
    /// A PMD THP, then base pages of a NOHUGEPAGE mapping right after it.
    ThpThenBasePages(usize),
    /// Base pages, then a PMD THP right after them.
    BasePagesThenThp(usize),
    /// One memfd page mapped at two adjacent addresses, then another page.
    PageTwice,
    /// One hugetlb memfd page mapped at two adjacent addresses; the buffer
    /// is the end of the first view and the start of the second.
    HugePageTwice(usize),
}

impl Span {
    fn name(self) -> String {
        match self {
            Span::Folios { folio, n } => format!(
                "WRITE_FIXED of a fixed buffer over {n} folios, from mid-folio to mid-folio ... with {}",
                folio.suffix()
            ),
            Span::ThpThenBasePages(s) => format!(
                "WRITE_FIXED of a fixed buffer over a THP and the base pages after it ... with THP ({})",
                kb(s)
            ),
            Span::BasePagesThenThp(s) => format!(
                "WRITE_FIXED of a fixed buffer over base pages and the THP after them ... with THP ({})",
                kb(s)
            ),
            Span::PageTwice => "WRITE_FIXED of a fixed buffer with one page mapped twice \
                                (CVE-2023-2598 shape) ... with memfd"
                .into(),
            Span::HugePageTwice(s) => format!(
                "WRITE_FIXED of a fixed buffer with one page mapped twice (CVE-2023-2598 shape) \
                 ... with memfd hugetlb ({})",
                kb(s)
            ),
        }
    }

    fn needs(self) -> Vec<Need> {
        let mut v = vec![Need::IoUring];
        match self {
            Span::Folios {
                folio: Folio::Hugetlb(size),
                n,
            } => v.push(Need::HugetlbPages {
                size,
                count: n as u64,
            }),
            Span::HugePageTwice(size) => v.push(Need::HugetlbPages { size, count: 1 }),
            _ => {}
        }
        v
    }

    fn knobs(self, pmd: Option<usize>) -> Vec<Knob> {
        match self {
            Span::Folios { folio, .. } => folio.knobs(pmd),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).knobs(pmd),
            Span::PageTwice | Span::HugePageTwice(_) => vec![],
        }
    }

    fn group(self) -> String {
        match self {
            Span::Folios { folio, .. } => folio.group(),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).group(),
            Span::PageTwice => "memfd".into(),
            Span::HugePageTwice(s) => format!("memfd hugetlb {}", kb(s)),
        }
    }
}

/// Every shape of (d) on this host.
pub fn spans(caps: &Capabilities) -> Vec<Span> {
    let mut v: Vec<Span> = caps
        .thp_sizes
        .iter()
        .map(|&s| Span::Folios {
            folio: Folio::Thp(s),
            n: 4,
        })
        .collect();
    v.extend(caps.hugetlb.iter().map(|p| Span::Folios {
        folio: Folio::Hugetlb(p.size),
        n: 2,
    }));
    if let Some(pmd) = caps.pmd_size {
        v.push(Span::ThpThenBasePages(pmd));
        v.push(Span::BasePagesThenThp(pmd));
    }
    v.push(Span::PageTwice);
    v.extend(caps.hugetlb.iter().map(|p| Span::HugePageTwice(p.size)));
    v
}

/// What the writer-thread case forks with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornBacking {
    /// 512 base pages (2 MiB, MADV_NOHUGEPAGE): fork copies them one by one.
    BasePages,
    Folio(Folio),
}

impl TornBacking {
    fn suffix(self) -> String {
        match self {
            TornBacking::BasePages => format!("base pages ({})", kb(TORN_BASE_LEN)),
            TornBacking::Folio(f) => f.suffix(),
        }
    }

    fn group(self) -> String {
        match self {
            TornBacking::BasePages => "anon base page".to_string(),
            TornBacking::Folio(f) => f.group(),
        }
    }

    fn needs(self) -> Vec<Need> {
        match self {
            TornBacking::BasePages => vec![Need::IoUring],
            TornBacking::Folio(f) => f.needs(),
        }
    }

    fn knobs(self, pmd: Option<usize>) -> Vec<Knob> {
        match self {
            TornBacking::BasePages => vec![],
            TornBacking::Folio(f) => f.knobs(pmd),
        }
    }

    /// How a fork() of this memory is judged.
    fn subject(self, kernel: Option<expectations::Version>) -> Subject {
        match self {
            TornBacking::BasePages => Subject {
                mechanism: Mechanism::Fork,
                memory: MemoryClass::Anon,
                size: None,
                mapping: Mapping::Private,
                kernel,
            },
            TornBacking::Folio(f) => f.subject(kernel),
        }
    }
}

const TORN_BASE_LEN: usize = 2 << 20;

/// The family's trials on this host: (a) and (b) on every one-folio kind,
/// (c) on base pages and every one-folio kind, (d) on every span.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let pmd = caps.pmd_size;
    let mut v = one_folio_scenarios(caps, kernel);
    v.extend(torn_scenarios(caps, kernel));
    for s in spans(caps) {
        let body: Body = Arc::new(move |_| write_fixed_span(s));
        v.push(trial(s.name(), s.group(), s.needs(), s.knobs(pmd), body));
    }
    v
}

/// Every trial of the family pins.
fn trial(name: String, group: String, needs: Vec<Need>, knobs: Vec<Knob>, body: Body) -> Scenario {
    Scenario {
        name,
        family: Family::LARGE_FOLIO_PINS,
        group,
        needs,
        knobs,
        pins: true,
        body,
    }
}

/// (a) and (b): one folio, two ways of leaving it pinned before fork().
fn one_folio_scenarios(
    caps: &Capabilities,
    kernel: Option<expectations::Version>,
) -> Vec<Scenario> {
    let cases: [(String, OneFolioCase); 2] = [
        (
            "fork() after unregistering one of two fixed buffers over the halves of one folio"
                .into(),
            halves,
        ),
        (
            format!("{RINGS} fixed buffers over one folio released in random order, then fork()"),
            many_rings,
        ),
    ];
    let mut v = Vec::new();
    for (desc, run) in cases {
        for f in one_folio_kinds(caps) {
            let subject = f.subject(kernel);
            v.push(trial(
                format!("{desc} ... with {}", f.suffix()),
                f.group(),
                f.needs(),
                f.knobs(caps.pmd_size),
                Arc::new(move |opts| Ok(judge(&subject, run(&f.backing().setup(opts)?)?))),
            ));
        }
    }
    v
}

/// (c): fork() racing a writer thread, on base pages and every one-folio kind.
fn torn_scenarios(caps: &Capabilities, kernel: Option<expectations::Version>) -> Vec<Scenario> {
    std::iter::once(TornBacking::BasePages)
        .chain(one_folio_kinds(caps).into_iter().map(TornBacking::Folio))
        .map(|t| {
            let subject = t.subject(kernel);
            trial(
                format!(
                    "fork() with a fixed buffer while a thread writes: the child sees one moment ... with {}",
                    t.suffix()
                ),
                t.group(),
                t.needs(),
                t.knobs(caps.pmd_size),
                Arc::new(move |opts| {
                    // A page lost at fork() is fork()'s own behaviour; anything
                    // else the child saw is judged as a torn copy.
                    Ok(match torn_fork(opts, t)? {
                        o @ Observed::LostAtFork(_) => judge(&subject, o),
                        o => judge(
                            &Subject {
                                mechanism: Mechanism::ThreadedFork,
                                ..subject
                            },
                            o,
                        ),
                    })
                }),
            )
        })
        .collect()
}

/// A case run on one folio pinned before fork().
type OneFolioCase = fn(&AnonMemory) -> Step<Observed>;

/// An io_uring fixed buffer the case needs granted; a refusal says why.
fn register(region: Region, which: &str) -> Step<Held> {
    match PinSource::IoUringFixed.take(region)? {
        Ok(h) => Ok(h),
        Err(nix::errno::Errno::ENOMEM) => skip(format!(
            "io_uring_register_buffers() of {which} ({} bytes) refused with ENOMEM: {}",
            region.len,
            memlock()
        )),
        Err(e) => fail(format!(
            "io_uring_register_buffers() of {which} ({} bytes) failed with {e}",
            region.len
        )),
    }
}

/// RLIMIT_MEMLOCK as set, and whether io_uring accounts against it (it
/// does not for CAP_IPC_LOCK).
fn memlock() -> String {
    let lim = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK);
    // CAP_IPC_LOCK is capability 14 of CapEff in /proc/self/status.
    let ipc_lock = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .map_or("unknown".to_string(), |caps| {
            (caps >> 14 & 1 == 1).to_string()
        });
    match lim {
        Ok((cur, max)) => format!(
            "RLIMIT_MEMLOCK cur {cur} max {max} bytes (io_uring accounts pinned pages against it \
             unless the process has CAP_IPC_LOCK; CAP_IPC_LOCK here: {ipc_lock})"
        ),
        Err(e) => format!("RLIMIT_MEMLOCK unreadable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_covers_every_size() {
        let caps = crate::tests::reference_host();
        let all = scenarios(&caps);
        // (a), (b): PMD THP + 2 hugetlb; (c): + base pages; (d): 8 THP sizes,
        // 2 hugetlb, 2 mixed, 1 memfd, 2 memfd hugetlb.
        assert_eq!(all.len(), 3 + 3 + 4 + (8 + 2 + 2 + 1 + 2));
        let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are unique");
        assert!(all.iter().all(|s| s.needs.contains(&Need::IoUring)));
    }
}
