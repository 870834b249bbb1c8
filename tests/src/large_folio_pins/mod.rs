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
//! - here: the cases (`OneFolio` for (a) and (b), `Torn` for (c); a `Span`
//!   of (d) is its own case and backing), the backings (`Folio`,
//!   `TornBacking`), the catalogue (`scenarios`: one cross per shape) with
//!   its judgement (each case's observation judged by `expectations::judge`),
//!   and `register`, how cases (a) to (c) take a pin and say why one was
//!   refused;
//! - `one_folio.rs`: (a) the halves of one folio and (b) many rings on one folio;
//! - `torn.rs`: (c) fork() racing a writer thread, and what "one moment" means;
//! - `spans.rs`: (d) building each span and comparing `WRITE_FIXED` with the mapping.

mod one_folio;
mod spans;
mod torn;

use cowgup_fixtures::anon::{AnonBacking, AnonMemory, ThpShape};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::pin_source::{Held, PinSource};
use cowgup_fixtures::{fail, kb, skip, Step};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::Knob;

use crate::cross::{Backing, Case, Cross};
use crate::expectations::{self, judge, Mapping, Mechanism, MemoryClass, Observed, Subject};
use crate::scenario::{Family, Scenario};
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

    fn size(self) -> usize {
        self.kind().1
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
}

impl Backing for Folio {
    fn suffix(&self) -> String {
        let (kind, size) = self.kind();
        format!("{kind} ({})", kb(size))
    }

    fn group(&self) -> String {
        let (kind, size) = self.kind();
        format!("anon {kind} {}", kb(size))
    }

    /// The backing's needs and io_uring's.
    fn needs(&self) -> Vec<Need> {
        self.backing()
            .needs()
            .into_iter()
            .chain([Need::IoUring])
            .collect()
    }

    fn knobs(&self, caps: &Capabilities) -> Vec<Knob> {
        self.backing().knobs(caps.pmd_size)
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

/// A span is its case and its backing at once: its shape heads the name,
/// its memory ends it. It says its needs as a case (io_uring first, then
/// the hugetlb pages it takes), none as a backing.
impl Case for Span {
    fn desc(&self) -> String {
        let over = match *self {
            Span::Folios { n, .. } => {
                format!("over {n} folios, from mid-folio to mid-folio")
            }
            Span::ThpThenBasePages(_) => "over a THP and the base pages after it".into(),
            Span::BasePagesThenThp(_) => "over base pages and the THP after them".into(),
            Span::PageTwice | Span::HugePageTwice(_) => {
                "with one page mapped twice (CVE-2023-2598 shape)".into()
            }
        };
        format!("WRITE_FIXED of a fixed buffer {over}")
    }

    fn needs(&self) -> Vec<Need> {
        let mut v = vec![Need::IoUring];
        match *self {
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

    fn pins(&self) -> bool {
        true
    }
}

impl Backing for Span {
    fn suffix(&self) -> String {
        match *self {
            Span::Folios { folio, .. } => folio.suffix(),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).suffix(),
            Span::PageTwice => "memfd".into(),
            Span::HugePageTwice(s) => format!("memfd hugetlb ({})", kb(s)),
        }
    }

    fn group(&self) -> String {
        match *self {
            Span::Folios { folio, .. } => folio.group(),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).group(),
            Span::PageTwice => "memfd".into(),
            Span::HugePageTwice(s) => format!("memfd hugetlb {}", kb(s)),
        }
    }

    fn needs(&self) -> Vec<Need> {
        vec![]
    }

    fn knobs(&self, caps: &Capabilities) -> Vec<Knob> {
        match *self {
            Span::Folios { folio, .. } => folio.knobs(caps),
            Span::ThpThenBasePages(s) | Span::BasePagesThenThp(s) => Folio::Thp(s).knobs(caps),
            Span::PageTwice | Span::HugePageTwice(_) => vec![],
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

impl Backing for TornBacking {
    fn suffix(&self) -> String {
        match self {
            TornBacking::BasePages => format!("base pages ({})", kb(TORN_BASE_LEN)),
            TornBacking::Folio(f) => f.suffix(),
        }
    }

    fn group(&self) -> String {
        match self {
            TornBacking::BasePages => "anon base page".to_string(),
            TornBacking::Folio(f) => f.group(),
        }
    }

    fn needs(&self) -> Vec<Need> {
        match self {
            TornBacking::BasePages => vec![Need::IoUring],
            TornBacking::Folio(f) => f.needs(),
        }
    }

    fn knobs(&self, caps: &Capabilities) -> Vec<Knob> {
        match self {
            TornBacking::BasePages => vec![],
            TornBacking::Folio(f) => f.knobs(caps),
        }
    }
}

impl TornBacking {
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

/// The cases on one folio pinned before fork(): (a) and (b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OneFolio {
    Halves,
    ManyRings,
}

impl OneFolio {
    fn run(self, m: &AnonMemory) -> Step<Observed> {
        match self {
            OneFolio::Halves => halves(m),
            OneFolio::ManyRings => many_rings(m),
        }
    }
}

impl Case for OneFolio {
    fn desc(&self) -> String {
        match self {
            OneFolio::Halves => {
                "fork() after unregistering one of two fixed buffers over the halves of one folio"
                    .into()
            }
            OneFolio::ManyRings => {
                format!(
                    "{RINGS} fixed buffers over one folio released in random order, then fork()"
                )
            }
        }
    }
    fn pins(&self) -> bool {
        true
    }
}

/// (c): fork() racing a writer thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Torn;

impl Case for Torn {
    fn desc(&self) -> String {
        "fork() with a fixed buffer while a thread writes: the child sees one moment".into()
    }
    fn pins(&self) -> bool {
        true
    }
}

/// The family's trials on this host: (a) and (b) on every one-folio kind,
/// (c) on base pages and every one-folio kind, (d) on every span.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    let kernel = expectations::parse_version(&caps.kernel_release);
    let family = Family::LARGE_FOLIO_PINS;
    let one_folio = [OneFolio::Halves, OneFolio::ManyRings];
    let pinned = Cross::new(family, caps, one_folio, one_folio_kinds(caps));
    let pinned = pinned.build(move |opts, case, f| {
        let observed = case.run(&f.backing().setup(opts)?)?;
        Ok(judge(&f.subject(kernel), observed))
    });
    let torn_backings = std::iter::once(TornBacking::BasePages)
        .chain(one_folio_kinds(caps).into_iter().map(TornBacking::Folio));
    let torn = Cross::new(family, caps, [Torn], torn_backings).build(move |opts, Torn, t| {
        let subject = t.subject(kernel);
        // A page lost at fork() is fork()'s own behaviour; anything else the
        // child saw is judged as a torn copy.
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
    });
    let spans = spans(caps).into_iter().map(|s| (s, s)).collect();
    let spans = Cross::pairs(family, caps, spans).build(|_, s, _| write_fixed_span(s));
    pinned.into_iter().chain(torn).chain(spans).collect()
}

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
