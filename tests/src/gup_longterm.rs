//! gup_longterm.c's catalogue: which long-term pins the kernel must grant and
//! which it must refuse, per kind of file. A writable long-term pin of a
//! MAP_SHARED mapping is only fine where the page cache cannot be written
//! back under the pin (tmpfs, hugetlbfs); on ext4/xfs/btrfs it must be
//! refused (6.5+). Read-only pins, and pins of MAP_PRIVATE mappings (which
//! COW into anonymous memory first), must always work.

use cowgup_fixtures::file::{FileBacking, FileMemory, FsClass};
use cowgup_fixtures::needs::{Need, ScratchFs};
use cowgup_fixtures::pin::{FixedBuffer, GupTest};
use cowgup_fixtures::pin_source::Held;
use cowgup_fixtures::stamp::{Mismatch, Writer};
use cowgup_fixtures::{fail, skip, Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{diag, Outcome};

use crate::cross::{Case, Cross};
use crate::expectations::{judge, Mapping, Mechanism, MemoryClass, Observed, Subject, Version};
use crate::scenario::{Family, Scenario};

#[derive(Clone, Copy, Debug)]
pub enum LongtermPin {
    /// gup_test PIN_LONGTERM_TEST_START
    Gup { write: bool, fast: bool },
    /// io_uring fixed buffer: always FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM
    IoUring,
}

pub struct LongtermCase {
    pub desc: &'static str,
    pub pin: LongtermPin,
    pub shared: bool,
}

const fn gup(desc: &'static str, write: bool, fast: bool, shared: bool) -> LongtermCase {
    LongtermCase {
        desc,
        pin: LongtermPin::Gup { write, fast },
        shared,
    }
}

pub const CASES: [LongtermCase; 10] = [
    gup(
        "R/W longterm GUP pin in MAP_SHARED file mapping",
        true,
        false,
        true,
    ),
    gup(
        "R/W longterm GUP-fast pin in MAP_SHARED file mapping",
        true,
        true,
        true,
    ),
    gup(
        "R/O longterm GUP pin in MAP_SHARED file mapping",
        false,
        false,
        true,
    ),
    gup(
        "R/O longterm GUP-fast pin in MAP_SHARED file mapping",
        false,
        true,
        true,
    ),
    gup(
        "R/W longterm GUP pin in MAP_PRIVATE file mapping",
        true,
        false,
        false,
    ),
    gup(
        "R/W longterm GUP-fast pin in MAP_PRIVATE file mapping",
        true,
        true,
        false,
    ),
    gup(
        "R/O longterm GUP pin in MAP_PRIVATE file mapping",
        false,
        false,
        false,
    ),
    gup(
        "R/O longterm GUP-fast pin in MAP_PRIVATE file mapping",
        false,
        true,
        false,
    ),
    LongtermCase {
        desc: "io_uring fixed buffer with MAP_SHARED file mapping",
        pin: LongtermPin::IoUring,
        shared: true,
    },
    LongtermCase {
        desc: "io_uring fixed buffer with MAP_PRIVATE file mapping",
        pin: LongtermPin::IoUring,
        shared: false,
    },
];

impl Case for LongtermCase {
    fn desc(&self) -> String {
        self.desc.into()
    }
    fn needs(&self) -> Vec<Need> {
        match self.pin {
            LongtermPin::Gup { .. } => vec![Need::GupTest],
            LongtermPin::IoUring => vec![Need::IoUring],
        }
    }
    /// Every case takes (or is refused) a FOLL_PIN | FOLL_LONGTERM reference.
    fn pins(&self) -> bool {
        true
    }
}

impl LongtermCase {
    pub fn mechanism(&self) -> Mechanism {
        match self.pin {
            LongtermPin::Gup { write: false, .. } => Mechanism::RoPin,
            LongtermPin::Gup { write: true, .. } => Mechanism::RwPin,
            LongtermPin::IoUring => Mechanism::IoUringPin,
        }
    }

    /// What the expectation table is told about this case on a file of `memory`.
    pub fn subject(
        &self,
        memory: MemoryClass,
        size: Option<usize>,
        kernel: Option<Version>,
    ) -> Subject {
        Subject {
            mechanism: self.mechanism(),
            memory,
            size,
            mapping: if self.shared {
                Mapping::Shared
            } else {
                Mapping::Private
            },
            kernel,
        }
    }

    fn writes(&self) -> bool {
        match self.pin {
            LongtermPin::Gup { write, .. } => write,
            LongtermPin::IoUring => true,
        }
    }
}

/// What the pin attempt returned.
enum Granted {
    /// Granted; what the pinned pages showed through the pin, against the
    /// file's data (upstream only asks whether the pin is granted: a pin
    /// granted on the wrong pages would pass there).
    Yes(Result<(), Mismatch>),
    /// Refused with an errno that means "not allowed here".
    Refused(nix::errno::Errno),
}

/// Run the case on a file of `backing`, judged for `kernel` (read once, when
/// the catalogue was built).
pub fn run(
    opts: &TrialOptions,
    case: &LongtermCase,
    backing: FileBacking,
    kernel: Option<Version>,
) -> Step<Outcome> {
    let read_only = matches!(case.pin, LongtermPin::Gup { write: false, .. });
    let mem = backing.setup(case.shared, read_only, opts)?;
    diag(format!("file on {}", mem.fs.name()));
    if case.shared && case.writes() {
        if let FsClass::Unknown { name, .. } = &mem.fs {
            return skip(format!(
                "Unknown filesystem: the file is on {name}; gup_longterm only knows whether writable \
                 long-term pins of MAP_SHARED files must work on tmpfs, hugetlbfs, ext4, xfs and btrfs"
            ));
        }
    }
    // fsdax: no page cache between the pin and the filesystem blocks, so no
    // long-term pin of a MAP_SHARED mapping at all, R/O or R/W
    // (mm/gup.c check_vma_flags(): FOLL_LONGTERM && vma_is_fsdax() -> -EOPNOTSUPP;
    // GUP-fast leaves devmap entries to the slow path under FOLL_LONGTERM).
    // Upstream's gup_longterm would expect R/O pins to work there.
    if mem.dax {
        diag("the file is DAX (statx STATX_ATTR_DAX)");
    }
    let should_work = if mem.dax && case.shared {
        false
    } else {
        !case.shared || !case.writes() || matches!(mem.fs, FsClass::PinsAllowed(_))
    };
    let granted = match case.pin {
        LongtermPin::Gup { write, fast } => pin_with_gup_test(&mem, write, fast)?,
        LongtermPin::IoUring => pin_with_io_uring(&mem)?,
    };
    // The file's own filesystem, as measured, decides what the table excuses.
    let subject = case.subject(
        if mem.dax {
            MemoryClass::FsdaxFile
        } else {
            MemoryClass::of_file(mem.fs.filesystem())
        },
        backing.huge_size(),
        kernel,
    );
    if let Granted::Yes(Err(m)) = &granted {
        cowgup_harness::evidence("mismatch", m);
        return Ok(Outcome::Fail(format!(
            "the granted pin does not show the file's data: {m}"
        )));
    }
    Ok(match (granted, should_work) {
        (Granted::Yes(_), true) => judge(&subject, Observed::Clean),
        (Granted::Refused(e), false) if mem.dax && e != nix::errno::Errno::EOPNOTSUPP => {
            Outcome::Fail(format!(
                "a long-term pin of a MAP_SHARED fsdax file was refused with {e}, where \
                 check_vma_flags() refuses with EOPNOTSUPP"
            ))
        }
        (Granted::Refused(e), false) => {
            diag(format!("refused: {e}"));
            Outcome::Pass
        }
        (Granted::Yes(_), false) if mem.dax => Outcome::Fail(format!(
            "Should have failed: a long-term pin of a MAP_SHARED {} file on fsdax (DAX) was granted",
            mem.fs.name()
        )),
        (Granted::Yes(_), false) => Outcome::Fail(format!(
            "Should have failed: a writable long-term pin of a MAP_SHARED {} file was granted",
            mem.fs.name()
        )),
        (Granted::Refused(e), true) => judge(&subject, Observed::Refused(e)),
    })
}

fn pin_with_gup_test(mem: &FileMemory, write: bool, fast: bool) -> Step<Granted> {
    let gup = GupTest::open()?;
    match gup.start(mem.region, write, fast) {
        // Read through the pin (PIN_LONGTERM_TEST_READ), then unpinned on drop.
        Ok(()) => Ok(Granted::Yes(Held::Gup(gup, mem.region).check(
            mem.region,
            mem.pattern,
            Writer::Setup,
        )?)),
        Err(e @ (nix::errno::Errno::EFAULT | nix::errno::Errno::EOPNOTSUPP)) => {
            Ok(Granted::Refused(e))
        }
        Err(nix::errno::Errno::EINVAL) => skip("PIN_LONGTERM_TEST_START failed: EINVAL"),
        Err(e) => fail(format!("PIN_LONGTERM_TEST_START failed: {e}")),
    }
}

/// Judged by the error code the registration returns (upstream reads a stale
/// errno instead, which liburing never sets).
fn pin_with_io_uring(mem: &FileMemory) -> Step<Granted> {
    match FixedBuffer::try_register(mem.region)? {
        Ok(buf) => Ok(Granted::Yes(Held::Ring(Box::new(buf)).check(
            mem.region,
            mem.pattern,
            Writer::Setup,
        )?)),
        Err(e) => {
            let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
            diag(format!("io_uring_register_buffers() returned {errno}"));
            match errno {
                // EFAULT since 6.5; ENOSPC/EOPNOTSUPP on older kernels.
                nix::errno::Errno::EFAULT
                | nix::errno::Errno::ENOSPC
                | nix::errno::Errno::EOPNOTSUPP => Ok(Granted::Refused(errno)),
                // Lack of support or of RLIMIT_MEMLOCK: not a verdict on pinning.
                other => skip(format!(
                    "io_uring_register_buffers() failed ({other}) for a {} kB buffer; RLIMIT_MEMLOCK {}",
                    mem.region.len / 1024,
                    memlock()
                )),
            }
        }
    }
}

/// This process's RLIMIT_MEMLOCK, for a skip reason.
fn memlock() -> String {
    use nix::sys::resource::{getrlimit, Resource};
    let kb = |l: u64| {
        if l == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} kB", l / 1024)
        }
    };
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, hard)) => format!("{} (hard {})", kb(soft), kb(hard)),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// The family's trials: upstream's backings, a file on a tmpfs and on an
/// ext4 the suite controls, and on fsdax.
pub fn scenarios(caps: &Capabilities) -> Vec<Scenario> {
    catalogue(caps, true)
}

/// gup_longterm's trials: upstream's backings, and with `extra` a file on a
/// tmpfs and on an ext4 the suite controls, so that both expectations (pin
/// allowed, pin refused) are exercised on every host.
pub fn catalogue(caps: &Capabilities, extra: bool) -> Vec<Scenario> {
    entries(caps, extra).into_iter().map(|(s, _)| s).collect()
}

/// gup_longterm's trials, each with the subject the table is told before
/// the trial runs (the filesystem as probed; the trial measures its file).
pub fn entries(caps: &Capabilities, extra: bool) -> Vec<(Scenario, Subject)> {
    let kernel = crate::expectations::parse_version(&caps.kernel_release);
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    let mut backings = FileBacking::upstream(&hugetlb);
    if extra {
        backings.extend([
            FileBacking::Scratch(ScratchFs::Tmpfs),
            FileBacking::Scratch(ScratchFs::Ext4),
            FileBacking::Fsdax,
        ]);
    }
    Cross::new(Family::GUP_LONGTERM, caps, &CASES, backings).entries(
        |case, backing| {
            case.subject(
                if backing == FileBacking::Fsdax {
                    MemoryClass::FsdaxFile
                } else {
                    MemoryClass::of_file(backing.filesystem(caps))
                },
                backing.huge_size(),
                kernel,
            )
        },
        move |opts, case, backing, _| run(opts, case, backing, kernel),
    )
}
