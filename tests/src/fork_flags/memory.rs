//! What the family runs on: every private anonymous backing of cow.c (base
//! page, every THP size and shape, swapped-out variants, hugetlb of every
//! size), and the shared ones where fork() shares instead of copying
//! (MAP_SHARED anonymous memory, a memfd, a hugetlb memfd, each MAP_SHARED).
//! Also the hugetlb pool's counters, which fork() must leave alone.

use cowgup_fixtures::anon::{AnonBacking, ThpShape};
use cowgup_fixtures::file::{FileBacking, FileMemory};
use cowgup_fixtures::mem::Region;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::special;
use cowgup_fixtures::stamp::Pattern;
use cowgup_fixtures::{env, fail, kb, Step, TrialOptions};
use cowgup_harness::probe::{Capabilities, HugetlbPool};
use cowgup_harness::Knob;

use crate::beyond_upstream::SHARED_ANON;
use crate::cross::{anon_backings, Backing};
use crate::expectations::{Mapping, Mechanism, MemoryClass, Subject, Version};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagBacking {
    Anon(AnonBacking),
    SharedAnon,
    SharedMemfd,
    SharedMemfdHugetlb { size: usize },
}

impl FlagBacking {
    /// Every backing of this host: the anonymous ones in cow.c's order, then the shared ones.
    pub fn all(caps: &Capabilities) -> Vec<FlagBacking> {
        let mut v: Vec<FlagBacking> = anon_backings(caps)
            .into_iter()
            .map(FlagBacking::Anon)
            .collect();
        v.push(FlagBacking::SharedAnon);
        v.push(FlagBacking::SharedMemfd);
        v.extend(
            caps.hugetlb
                .iter()
                .map(|p| FlagBacking::SharedMemfdHugetlb { size: p.size }),
        );
        v
    }

    fn file(self) -> Option<FileBacking> {
        match self {
            FlagBacking::SharedMemfd => Some(FileBacking::Memfd),
            FlagBacking::SharedMemfdHugetlb { size } => Some(FileBacking::MemfdHugetlb { size }),
            _ => None,
        }
    }

    /// fork() shares the pages instead of copying them.
    pub fn shared(self) -> bool {
        !matches!(self, FlagBacking::Anon(_))
    }

    /// Private anonymous memory without a file underneath: what
    /// MADV_WIPEONFORK and UFFDIO_MOVE accept (hugetlb has a hugetlbfs file).
    pub fn private_anon(self) -> bool {
        matches!(self, FlagBacking::Anon(a) if !a.is_hugetlb())
    }

    pub fn swapped(self) -> bool {
        match self {
            FlagBacking::Anon(AnonBacking::SwappedBasePage) => true,
            FlagBacking::Anon(AnonBacking::Thp { shape, .. }) => shape.swapped(),
            _ => false,
        }
    }

    /// Base pages the range has (a hugetlb page counts as one: it cannot be split).
    pub fn units(self) -> usize {
        let page = env().page_size;
        match self {
            FlagBacking::Anon(AnonBacking::Thp { shape, size }) => match shape {
                ThpShape::SinglePte | ThpShape::SingleSwappedPte => 1,
                ThpShape::PartiallyMremapped => size / 2 / page,
                _ => size / page,
            },
            FlagBacking::SharedAnon => special::PAGES,
            _ => 1,
        }
    }

    /// What the expectation table is asked about.
    pub fn subject(self, kernel: Option<Version>) -> Subject {
        let shared = |memory, size| Subject {
            mechanism: Mechanism::Fork,
            memory,
            size,
            mapping: Mapping::Shared,
            kernel,
        };
        match self {
            FlagBacking::Anon(a) => Subject::anon(Mechanism::Fork, a, kernel),
            FlagBacking::SharedAnon | FlagBacking::SharedMemfd => {
                shared(MemoryClass::ShmemFile, None)
            }
            FlagBacking::SharedMemfdHugetlb { size } => {
                shared(MemoryClass::HugetlbfsFile, Some(size))
            }
        }
    }

    pub fn setup(self, opts: &TrialOptions) -> Step<Memory> {
        let page = env().page_size;
        match self {
            FlagBacking::Anon(a) => {
                let m = a.setup(opts)?;
                let (huge, align) = match a {
                    AnonBacking::Hugetlb { size } => (Some(size), size),
                    AnonBacking::Thp { size, .. } => (None, size),
                    _ => (None, page),
                };
                Ok(Memory {
                    region: m.region,
                    pattern: m.pattern,
                    huge,
                    align,
                    _file: None,
                })
            }
            FlagBacking::SharedAnon => {
                let (region, pattern) = special::shared_anon(opts)?;
                Ok(Memory {
                    region,
                    pattern,
                    huge: None,
                    align: page,
                    _file: None,
                })
            }
            FlagBacking::SharedMemfd | FlagBacking::SharedMemfdHugetlb { .. } => {
                let file = self.file().expect("a file backing");
                let f = file.setup(true, false, opts)?;
                let huge = file.huge_size();
                Ok(Memory {
                    region: f.region,
                    pattern: f.pattern,
                    huge,
                    align: huge.unwrap_or(page),
                    _file: Some(f),
                })
            }
        }
    }
}

impl Backing for FlagBacking {
    fn suffix(&self) -> String {
        match *self {
            FlagBacking::Anon(a) => a.suffix(),
            FlagBacking::SharedAnon => SHARED_ANON.into(),
            FlagBacking::SharedMemfd => "MAP_SHARED memfd".into(),
            FlagBacking::SharedMemfdHugetlb { size } => {
                format!("MAP_SHARED memfd hugetlb ({})", kb(size))
            }
        }
    }
    fn group(&self) -> String {
        match *self {
            FlagBacking::Anon(a) => a.group(),
            _ => format!("shared: {}", self.suffix()),
        }
    }
    fn needs(&self) -> Vec<Need> {
        match *self {
            FlagBacking::Anon(a) => a.needs(),
            b => b.file().map_or(vec![], |f| f.needs()),
        }
    }
    fn knobs(&self, caps: &Capabilities) -> Vec<Knob> {
        match *self {
            FlagBacking::Anon(a) => a.knobs(caps.pmd_size),
            _ => vec![],
        }
    }
}

/// Memory a case runs on, stamped by `Writer::Setup`.
pub struct Memory {
    pub region: Region,
    pub pattern: Pattern,
    /// The hugetlb page size, for hugetlb memory.
    pub huge: Option<usize>,
    /// Where a moved copy must start to keep the mapping's shape (a THP
    /// stays PMD-mappable, a hugetlb page must stay aligned).
    pub align: usize,
    _file: Option<FileMemory>,
}

/// A hugetlb pool's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    pub free: u64,
    pub resv: u64,
    pub total: u64,
}

impl Pool {
    pub fn read(size: usize) -> Step<Pool> {
        let dir = HugetlbPool::dir(size);
        let read = |f: &str| -> Step<u64> {
            let s = std::fs::read_to_string(dir.join(f))
                .or_else(|e| fail(format!("reading {}: {e}", dir.join(f).display())))?;
            s.trim()
                .parse()
                .or_else(|e| fail(format!("{f}: {s:?}: {e}")))
        };
        Ok(Pool {
            free: read("free_hugepages")?,
            resv: read("resv_hugepages")?,
            total: read("nr_hugepages")?,
        })
    }
}
