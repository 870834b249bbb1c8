//! What each kernel behaviour is expected to produce, as data. A scenario
//! reports what it observed (clean, a leak, a page lost at fork, a refused
//! pin); this table turns that into an outcome. A known, accepted behaviour
//! is one row with its key, reason and reference, not an `if` inside a
//! scenario.
//!
//! Every key of a row is a pattern over what the catalogue passes for a trial
//! (its [`Subject`]): the mechanism, the class of memory, the huge page size,
//! the mapping, the kernel version range. `None` (or an empty list) matches
//! anything.
//!
//! The rows are data: `tests/expectations.toml`, built into every binary.
//! A user adds rows of their own (known issues of their tree) with
//! `cowgup run --expectations FILE` or `COWGUP_EXPECTATIONS=FILE[:FILE...]`;
//! [`install`] loads and validates them once, before any trial forks, and
//! [`judge`] reads the one table from then on. A row's keys:
//!
//! | key | value | absent |
//! |---|---|---|
//! | `id` | unique name | required |
//! | `mechanisms` | `["fork", "vmsplice", "io-uring-pin", "ro-pin", "rw-pin", "collapse", "threaded-fork", "uffd-move"]` | any |
//! | `memory` | `anon`, `anon-hugetlb`, `non-anon`, `shmem-file`, `hugetlbfs-file`, `other-file`, `unknown-file` | required |
//! | `size` | huge page size: `"2M"`, `"1G"`, `"64K"` or bytes | any (base pages included) |
//! | `mapping` | `private`, `shared` | either |
//! | `kernel` | `"6.18..6.19"` (from..before), `"..6.5"`, `"6.10.."`, `"6.18"` (that minor only) | any kernel |
//! | `symptom` | `leak`, `lost-at-fork`, `refused` (with `errno = "EOPNOTSUPP"`), `livelock` | required |
//! | `may_pass` | a clean run is a pass, not XPASS | false |
//! | `reason`, `reference` | what the kernel does, where it is documented or was seen | required |

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cowgup_fixtures::anon::AnonBacking;
use cowgup_fixtures::stamp::Mismatch;
use cowgup_harness::probe::Filesystem;
use cowgup_harness::Outcome;
use nix::errno::Errno;
use serde::Deserialize;

/// What a scenario saw, before expectations are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Clean,
    /// Data crossed between processes, or a pin went stale: the message says which.
    Leak(String),
    /// fork() did not give the child the parent's data at all (cow.c cannot
    /// see this: its child copies the memory after fork() and compares later
    /// against that copy).
    LostAtFork(String),
    /// A pin the trial expects the kernel to grant was refused with this errno.
    Refused(Errno),
    /// A GUP call did not return within the trial's bound: the message says
    /// which and what its thread did meanwhile.
    Livelock(String),
}

impl Observed {
    /// What a data check saw: clean, or a leak that names what leaked
    /// (`what`) and where (the mismatch).
    pub fn leak_unless(data: Result<(), Mismatch>, what: &str) -> Observed {
        match data {
            Ok(()) => Observed::Clean,
            Err(mm) => Observed::Leak(format!("{what}: {mm}")),
        }
    }
}

/// The reference mechanism a case exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Fork,
    Vmsplice,
    /// io_uring fixed buffer: FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM.
    IoUringPin,
    /// gup_test PIN_LONGTERM_TEST_START, read-only.
    RoPin,
    /// gup_test PIN_LONGTERM_TEST_START with PIN_LONGTERM_TEST_FLAG_USE_WRITE.
    RwPin,
    Collapse,
    /// fork() of pinned (so immediately copied) pages while another thread
    /// of the parent keeps writing them (large_folio_pins/torn.rs).
    ThreadedFork,
    /// UFFDIO_MOVE of anonymous pages (fork_flags), whatever holds them.
    UffdMove,
}

impl Mechanism {
    /// Whether the mechanism takes FOLL_PIN references.
    pub fn pins(self) -> bool {
        matches!(
            self,
            Mechanism::IoUringPin | Mechanism::RoPin | Mechanism::RwPin | Mechanism::ThreadedFork
        )
    }
}

/// The kind of memory, as far as expectations care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryClass {
    /// Private anonymous memory: base pages and THPs of every size and shape.
    Anon,
    /// Private anonymous hugetlb memory (MAP_HUGETLB).
    AnonHugetlb,
    /// cow.c's non-anonymous backings: the zeropages and private file mappings.
    NonAnon,
    /// A file on shmem: a memfd, a file on tmpfs.
    ShmemFile,
    /// A file on hugetlbfs: a hugetlb memfd.
    HugetlbfsFile,
    /// A file on a filesystem that is neither shmem nor hugetlbfs and maps
    /// its own pages (ext4, xfs, btrfs, ramfs, nfs, 9p).
    OtherFile,
    /// A file on a filesystem the table cannot place: overlayfs (mmap maps
    /// the file of the layer beneath, which may be tmpfs), an unknown magic,
    /// or fstatfs() failed. No row names it, so nothing is excused there.
    UnknownFile,
    /// A file whose accesses are DAX (statx STATX_ATTR_DAX: ext4/xfs mounted
    /// `-o dax`): no page cache, the mapping maps the persistent memory.
    FsdaxFile,
}

impl MemoryClass {
    /// The class of a file by the filesystem statfs(2) reports for it.
    pub fn of_file(fs: Option<Filesystem>) -> MemoryClass {
        match fs {
            Some(Filesystem::Tmpfs) => MemoryClass::ShmemFile,
            Some(Filesystem::Hugetlbfs) => MemoryClass::HugetlbfsFile,
            Some(
                Filesystem::Ext4
                | Filesystem::Xfs
                | Filesystem::Btrfs
                | Filesystem::Ramfs
                | Filesystem::Nfs
                | Filesystem::NineP,
            ) => MemoryClass::OtherFile,
            Some(Filesystem::Overlayfs) | None => MemoryClass::UnknownFile,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    Private,
    Shared,
}

/// A kernel (major, minor), as `uname -r` starts.
pub type Version = (u32, u32);

/// `from <= v < before`; an open end is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRange {
    pub from: Option<Version>,
    pub before: Option<Version>,
}

impl KernelRange {
    pub const ANY: KernelRange = KernelRange {
        from: None,
        before: None,
    };

    /// Whether `kernel` is in the range. An unknown kernel version is only
    /// in the unbounded range: a row bounded by versions never excuses a
    /// trial on a kernel whose version could not be read.
    pub fn contains(&self, kernel: Option<Version>) -> bool {
        match kernel {
            Some(v) => self.from.is_none_or(|f| f <= v) && self.before.is_none_or(|b| v < b),
            None => *self == KernelRange::ANY,
        }
    }
}

/// What a trial is, as far as the table cares: what the catalogue passes to
/// [`judge`] (built once per trial when the catalogue is made; gup_longterm
/// fills in the file's filesystem when the trial has the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    pub mechanism: Mechanism,
    pub memory: MemoryClass,
    /// The huge page size of the backing (hugetlb, THP); None for base pages.
    pub size: Option<usize>,
    pub mapping: Mapping,
    /// The running kernel, read once (`parse_version(uname -r)`); None if unreadable.
    pub kernel: Option<Version>,
}

impl Subject {
    /// A case on a private anonymous mapping of `backing`: hugetlb is its
    /// own class, and a huge page's size is what rows match on.
    pub fn anon(mechanism: Mechanism, backing: AnonBacking, kernel: Option<Version>) -> Subject {
        Subject {
            mechanism,
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
        }
    }
}

/// What a row expects to see instead of a clean run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symptom {
    Leak,
    LostAtFork,
    /// The pin is refused with exactly this errno.
    Refused(Errno),
    Livelock,
}

impl Symptom {
    fn of(observed: &Observed) -> Option<Symptom> {
        match observed {
            Observed::Clean => None,
            Observed::Leak(_) => Some(Symptom::Leak),
            Observed::LostAtFork(_) => Some(Symptom::LostAtFork),
            Observed::Refused(e) => Some(Symptom::Refused(*e)),
            Observed::Livelock(_) => Some(Symptom::Livelock),
        }
    }
}

/// One known kernel behaviour: where it shows (the keys), what it looks like
/// (the symptom, reported as XFAIL), and what a clean run means.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// Stable identifier, unique in the table.
    pub id: String,
    /// Empty: any mechanism.
    pub mechanisms: Vec<Mechanism>,
    pub memory: MemoryClass,
    /// None: any size.
    pub size: Option<usize>,
    /// None: either mapping.
    pub mapping: Option<Mapping>,
    pub kernel: KernelRange,
    pub symptom: Symptom,
    /// A clean run is fine too (the behaviour is timing-dependent, or the
    /// symptom is the exception and a clean run the rule): report pass and
    /// say so in the diagnostics. Otherwise a clean run is XPASS: news.
    pub may_pass: bool,
    /// The kernel behaviour.
    pub reason: String,
    /// Where it is documented or was seen.
    pub reference: String,
    /// The user's file the row came from; None for a built-in row.
    pub file: Option<PathBuf>,
}

impl Expectation {
    /// The reason with its reference, as outcomes quote it (a user's row
    /// also names its file).
    pub fn because(&self) -> String {
        match &self.file {
            None => format!("{} ({})", self.reason, self.reference),
            Some(f) => format!("{} ({}; {})", self.reason, self.reference, f.display()),
        }
    }

    /// Whether the row's keys all match the subject.
    pub fn applies_to(&self, s: &Subject) -> bool {
        (self.mechanisms.is_empty() || self.mechanisms.contains(&s.mechanism))
            && self.memory == s.memory
            && self.size.is_none_or(|size| s.size == Some(size))
            && self.mapping.is_none_or(|m| m == s.mapping)
            && self.kernel.contains(s.kernel)
    }
}

/// The built-in rows.
pub const BUILTIN: &str = include_str!("../expectations.toml");
const BUILTIN_NAME: &str = "built-in tests/expectations.toml";

/// A name in the data file for each value of an enum.
trait Named: Copy + 'static {
    const WHAT: &'static str;
    const NAMES: &'static [(&'static str, Self)];

    fn from_name(name: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
            .ok_or_else(|| {
                let known: Vec<_> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown {} {name:?} (one of: {})",
                    Self::WHAT,
                    known.join(", ")
                )
            })
    }
}

impl Named for Mechanism {
    const WHAT: &'static str = "mechanism";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("fork", Mechanism::Fork),
        ("vmsplice", Mechanism::Vmsplice),
        ("io-uring-pin", Mechanism::IoUringPin),
        ("ro-pin", Mechanism::RoPin),
        ("rw-pin", Mechanism::RwPin),
        ("collapse", Mechanism::Collapse),
        ("threaded-fork", Mechanism::ThreadedFork),
        ("uffd-move", Mechanism::UffdMove),
    ];
}

impl Named for MemoryClass {
    const WHAT: &'static str = "memory";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("anon", MemoryClass::Anon),
        ("anon-hugetlb", MemoryClass::AnonHugetlb),
        ("non-anon", MemoryClass::NonAnon),
        ("shmem-file", MemoryClass::ShmemFile),
        ("hugetlbfs-file", MemoryClass::HugetlbfsFile),
        ("other-file", MemoryClass::OtherFile),
        ("unknown-file", MemoryClass::UnknownFile),
        ("fsdax-file", MemoryClass::FsdaxFile),
    ];
}

impl Named for Mapping {
    const WHAT: &'static str = "mapping";
    const NAMES: &'static [(&'static str, Self)] =
        &[("private", Mapping::Private), ("shared", Mapping::Shared)];
}

/// The symptom without its errno, as the file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SymptomName {
    Leak,
    LostAtFork,
    Refused,
    Livelock,
}

impl Named for SymptomName {
    const WHAT: &'static str = "symptom";
    const NAMES: &'static [(&'static str, Self)] = &[
        ("leak", SymptomName::Leak),
        ("lost-at-fork", SymptomName::LostAtFork),
        ("refused", SymptomName::Refused),
        ("livelock", SymptomName::Livelock),
    ];
}

/// A value the file names: deserialised from a string through [`Named`], so
/// a bad name is an error at its own line.
#[derive(Clone, Copy, Debug)]
struct Name<T>(T);

impl<'de, T: Named> Deserialize<'de> for Name<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        T::from_name(&s).map(Name).map_err(serde::de::Error::custom)
    }
}

/// `E...` as errno(3) names it (with the aliases Linux has).
pub fn parse_errno(name: &str) -> Result<Errno, String> {
    let alias = match name {
        "ENOTSUP" => Some(Errno::EOPNOTSUPP),
        "EWOULDBLOCK" => Some(Errno::EAGAIN),
        "EDEADLOCK" => Some(Errno::EDEADLK),
        _ => None,
    };
    alias
        .or_else(|| {
            (1..4096)
                .map(Errno::from_raw)
                .find(|e| *e != Errno::UnknownErrno && format!("{e:?}") == name)
        })
        .ok_or_else(|| format!("unknown errno {name:?} (an errno(3) name such as \"EOPNOTSUPP\")"))
}

struct ErrnoName(Errno);

impl<'de> Deserialize<'de> for ErrnoName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_errno(&s)
            .map(ErrnoName)
            .map_err(serde::de::Error::custom)
    }
}

/// `"2M"`, `"1G"`, `"64K"` (also `KiB`, `MiB`, `GiB`, `kB`) or a number of bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || format!("bad size {s:?} (a huge page size such as \"2M\", \"1G\", \"64K\")");
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let shift = match unit.trim_start() {
        "" => 0,
        "K" | "KiB" | "kB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    let n: usize = digits.parse().map_err(|_| bad())?;
    check_size(n.checked_mul(1 << shift).ok_or_else(bad)?).ok_or_else(bad)
}

fn check_size(n: usize) -> Option<usize> {
    (n >= 4096 && n.is_power_of_two()).then_some(n)
}

struct Size(usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bytes(u64),
            Text(String),
        }
        use serde::de::Error;
        match Repr::deserialize(d).map_err(|_| {
            D::Error::custom(
                "bad size (a huge page size such as \"2M\", \"1G\", \"64K\", or bytes)",
            )
        })? {
            Repr::Text(s) => parse_size(&s).map(Size).map_err(D::Error::custom),
            Repr::Bytes(n) => usize::try_from(n)
                .ok()
                .and_then(check_size)
                .map(Size)
                .ok_or_else(|| {
                    D::Error::custom(format!("bad size {n} (a power of two, 4096 or more)"))
                }),
        }
    }
}

/// `"6.18..6.19"` (from 6.18 up to, not including, 6.19), `"..6.5"`,
/// `"6.10.."`, or `"6.18"` (6.18 only).
pub fn parse_range(s: &str) -> Result<KernelRange, String> {
    let bad = |why: &str| {
        format!(
            "bad kernel range {s:?}: {why} (as \"6.18..6.19\", \"..6.5\", \"6.10..\" or \"6.18\")"
        )
    };
    let version = |v: &str| -> Result<Version, String> {
        let (major, minor) = v
            .split_once('.')
            .ok_or_else(|| bad("a version is MAJOR.MINOR"))?;
        match (major.parse(), minor.parse()) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(bad("a version is MAJOR.MINOR")),
        }
    };
    let range = match s.split_once("..") {
        None => {
            let v = version(s)?;
            KernelRange {
                from: Some(v),
                before: Some((v.0, v.1 + 1)),
            }
        }
        Some((_, b)) if b.starts_with('=') => return Err(bad("the end is excluded: use ..")),
        Some((a, b)) => KernelRange {
            from: (!a.is_empty()).then(|| version(a)).transpose()?,
            before: (!b.is_empty()).then(|| version(b)).transpose()?,
        },
    };
    if let (Some(f), Some(b)) = (range.from, range.before) {
        if f >= b {
            return Err(bad("empty: the end is not after the start"));
        }
    }
    Ok(range)
}

impl<'de> Deserialize<'de> for KernelRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_range(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    expectation: Vec<RawRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    id: toml::Spanned<String>,
    #[serde(default)]
    mechanisms: Vec<Name<Mechanism>>,
    memory: Name<MemoryClass>,
    size: Option<Size>,
    mapping: Option<Name<Mapping>>,
    kernel: Option<KernelRange>,
    symptom: Name<SymptomName>,
    errno: Option<ErrnoName>,
    #[serde(default)]
    may_pass: bool,
    reason: String,
    reference: String,
}

/// `origin:line: message`, one line.
fn located(origin: &str, text: &str, at: Option<usize>, msg: &str) -> String {
    let msg = msg.trim().replace('\n', "; ");
    match at {
        Some(at) => {
            let line = text[..at.min(text.len())].matches('\n').count() + 1;
            format!("{origin}:{line}: {msg}")
        }
        None => format!("{origin}: {msg}"),
    }
}

/// The rows of one file, each with where its id is (`origin:line`);
/// `file` is None for the built-in table.
fn parse(
    origin: &str,
    text: &str,
    file: Option<&Path>,
) -> Result<Vec<(Expectation, String)>, String> {
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| located(origin, text, e.span().map(|s| s.start), e.message()))?;
    raw.expectation
        .into_iter()
        .map(|r| {
            let at = |msg: String| located(origin, text, Some(r.id.span().start), &msg);
            let place = at(String::new());
            let place = place.trim_end_matches([':', ' ']).to_string();
            let id = r.id.get_ref().clone();
            if id.is_empty() || id.contains(char::is_whitespace) {
                return Err(at(format!("bad id {id:?} (a name without spaces)")));
            }
            let symptom = match (r.symptom.0, r.errno) {
                (SymptomName::Refused, Some(e)) => Symptom::Refused(e.0),
                (SymptomName::Refused, None) => {
                    return Err(at(format!(
                        "{id}: symptom \"refused\" needs errno = \"E...\""
                    )))
                }
                (_, Some(_)) => {
                    return Err(at(format!("{id}: errno is only for symptom = \"refused\"")))
                }
                (SymptomName::Leak, None) => Symptom::Leak,
                (SymptomName::LostAtFork, None) => Symptom::LostAtFork,
                (SymptomName::Livelock, None) => Symptom::Livelock,
            };
            let row = Expectation {
                id,
                mechanisms: r.mechanisms.into_iter().map(|m| m.0).collect(),
                memory: r.memory.0,
                size: r.size.map(|s| s.0),
                mapping: r.mapping.map(|m| m.0),
                kernel: r.kernel.unwrap_or(KernelRange::ANY),
                symptom,
                may_pass: r.may_pass,
                reason: r.reason,
                reference: r.reference,
                file: file.map(Path::to_path_buf),
            };
            Ok((row, place))
        })
        .collect()
}

/// The built-in rows and a user's, validated: what [`judge`] reads.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Expectation>,
    /// The user's files, in the order given.
    files: Vec<PathBuf>,
}

impl Table {
    /// The built-in rows only.
    pub fn builtin() -> Table {
        Table::with(&[]).unwrap_or_else(|e| panic!("the built-in expectations are bad: {e}"))
    }

    /// The built-in rows plus the rows of each (file, text). Errors are one
    /// line: `FILE:LINE: what is wrong`.
    pub fn with(user: &[(&Path, &str)]) -> Result<Table, String> {
        let mut rows = Vec::new();
        let mut places: Vec<String> = Vec::new();
        let builtin = parse(BUILTIN_NAME, BUILTIN, None)?;
        let mut files = vec![builtin];
        for (path, text) in user {
            let name = format!("expectations file {}", path.display());
            files.push(parse(&name, text, Some(path))?);
        }
        for (row, place) in files.into_iter().flatten() {
            if let Some(i) = rows.iter().position(|r: &Expectation| r.id == row.id) {
                return Err(format!(
                    "{place}: duplicate id {:?} (already at {})",
                    row.id, places[i]
                ));
            }
            rows.push(row);
            places.push(place);
        }
        Ok(Table {
            rows,
            files: user.iter().map(|(p, _)| p.to_path_buf()).collect(),
        })
    }

    /// The built-in rows plus those of these files.
    pub fn from_files(files: &[PathBuf]) -> Result<Table, String> {
        let texts = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read expectations file {}: {e}", f.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let user: Vec<(&Path, &str)> = files
            .iter()
            .zip(&texts)
            .map(|(f, t)| (f.as_path(), t.as_str()))
            .collect();
        Table::with(&user)
    }

    pub fn rows(&self) -> &[Expectation] {
        &self.rows
    }

    /// Every row that can turn a trial of this subject into XFAIL.
    pub fn rows_for<'a: 's, 's>(
        &'a self,
        subject: &'s Subject,
    ) -> impl Iterator<Item = &'a Expectation> + 's {
        self.rows.iter().filter(move |r| r.applies_to(subject))
    }
}

static TABLE: OnceLock<Table> = OnceLock::new();

/// The table trials are judged by: the one [`install`]ed, else the built-in rows.
pub fn table() -> &'static Table {
    TABLE.get_or_init(Table::builtin)
}

/// Load the built-in rows plus these files' once, for every trial of this
/// process (trials are forked from it, so they inherit the table). Call it
/// before anything is judged; calling it again with the same files is a
/// no-op, with other files an error. Errors are one line, for the user.
pub fn install(files: &[PathBuf]) -> Result<(), String> {
    if TABLE.get().is_none() {
        let t = Table::from_files(files)?;
        let _ = TABLE.set(t);
    }
    let installed = &table().files;
    if installed == files {
        Ok(())
    } else {
        Err(format!(
            "expectations already loaded from {installed:?}, cannot load {files:?} as well"
        ))
    }
}

/// `$COWGUP_EXPECTATIONS`: files separated by `:`.
pub fn files_from_env() -> Vec<PathBuf> {
    std::env::var_os("COWGUP_EXPECTATIONS")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Every row of the table in use that can turn a trial of this subject into XFAIL.
pub fn rows_for(subject: &Subject) -> impl Iterator<Item = &'static Expectation> + '_ {
    table().rows_for(subject)
}

/// (major, minor) from a `uname -r` release string; the catalogue reads it
/// once from the probe (`Capabilities::kernel_release`).
pub fn parse_version(release: &str) -> Option<Version> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The outcome of a trial of this subject, by the table in use.
pub fn judge(subject: &Subject, observed: Observed) -> Outcome {
    table().judge(subject, observed)
}

impl Table {
    pub fn judge(&self, subject: &Subject, observed: Observed) -> Outcome {
        let Some(symptom) = Symptom::of(&observed) else {
            return self.judge_clean(subject);
        };
        let row = self.rows_for(subject).find(|r| r.symptom == symptom);
        match (observed, row) {
            (Observed::Clean, _) => unreachable!("judged above"),
            (Observed::Leak(what), Some(k)) => {
                // The details go to the diagnostics; the reason stays the same for
                // every trial with this behaviour, so reports can group them.
                cowgup_harness::diag(&what);
                let label = what.split(':').next().unwrap_or(&what);
                Outcome::Xfail(format!("{label}; expected: {}", k.because()))
            }
            (Observed::LostAtFork(what), Some(k)) => {
                cowgup_harness::diag(&what);
                Outcome::Xfail(format!("lost at fork; expected: {}", k.because()))
            }
            (Observed::Refused(e), Some(k)) => {
                Outcome::Xfail(format!("refused with {e}; expected: {}", k.because()))
            }
            (Observed::Livelock(what), Some(k)) => {
                cowgup_harness::diag(&what);
                Outcome::Xfail(format!("livelock; expected: {}", k.because()))
            }
            (
                Observed::Leak(what) | Observed::LostAtFork(what) | Observed::Livelock(what),
                None,
            ) => Outcome::Fail(what),
            (Observed::Refused(e), None) => {
                Outcome::Fail(format!("Should have worked: the pin was refused with {e}"))
            }
        }
    }

    fn judge_clean(&self, subject: &Subject) -> Outcome {
        let rows: Vec<_> = self.rows_for(subject).collect();
        if let Some(k) = rows.iter().find(|r| r.may_pass) {
            let ids: Vec<_> = rows.iter().map(|r| r.id.as_str()).collect();
            cowgup_harness::diag(format!(
                "expected at times: {} did not show; {} accepts a clean run, counted as a pass",
                ids.join(", "),
                k.id
            ));
            return Outcome::Pass;
        }
        match rows.first() {
            Some(k) => Outcome::Xpass(format!("expected {:?}: {}", k.symptom, k.because())),
            None => Outcome::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const V6_18: Option<Version> = Some((6, 18));

    fn subject(m: Mechanism, memory: MemoryClass, size: Option<usize>) -> Subject {
        Subject {
            mechanism: m,
            memory,
            size,
            mapping: Mapping::Private,
            kernel: V6_18,
        }
    }

    const G: Option<usize> = Some(1 << 30);
    const M2: Option<usize> = Some(2 << 20);

    // The built-in rows' ids.
    const VMSPLICE: &str = "hugetlb-vmsplice-leak";
    const LOST: &str = "hugetlb-1g-lost-at-fork";
    const LIVELOCK: &str = "ro-longterm-pin-pmd-file-folio-livelock";
    const IO_URING: &str = "io-uring-file-buffers-before-6.5";
    const TEAR_ANON: &str = "fork-tearing-pinned-anon";
    const TEAR_HUGETLB: &str = "fork-tearing-pinned-hugetlb";
    const FSDAX: &str = "fsdax-longterm-private-vma-refusal";
    const UFFD_MOVE_LIVELOCK: &str = "uffdio-move-pinned-large-folio-livelock";
    const UFFD_MOVE_EEXIST: &str = "uffdio-move-partially-shared-thp-eexist";

    fn builtin_row(id: &str) -> &'static Expectation {
        table().rows().iter().find(|r| r.id == id).unwrap()
    }

    #[test]
    fn hugetlb_vmsplice_leaks_are_xfail() {
        let leak = Observed::Leak("Leak from parent into child".into());
        for size in [M2, G] {
            let s = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, size);
            let o = judge(&s, leak.clone());
            assert!(
                matches!(&o, Outcome::Xfail(r) if r.contains("folio_mapcount")),
                "{o:?}"
            );
        }
        let anon = subject(Mechanism::Vmsplice, MemoryClass::Anon, None);
        assert!(matches!(judge(&anon, leak), Outcome::Fail(_)));
    }

    #[test]
    fn a_clean_hugetlb_vmsplice_is_news_except_where_the_page_can_be_lost_at_fork() {
        let s = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, M2);
        assert!(matches!(judge(&s, Observed::Clean), Outcome::Xpass(_)));
        // 1 GiB on 6.18: the child may lose the page and write to a fresh one.
        let s = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, G);
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        let s = Subject {
            kernel: Some((6, 12)),
            ..s
        };
        assert!(matches!(judge(&s, Observed::Clean), Outcome::Xpass(_)));
    }

    #[test]
    fn a_page_lost_at_fork_is_only_excused_for_1g_hugetlb_on_6_18() {
        let lost = Observed::LostAtFork("x".into());
        let s = subject(Mechanism::Fork, MemoryClass::AnonHugetlb, G);
        assert!(matches!(judge(&s, lost.clone()), Outcome::Xfail(_)));
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        for other in [
            subject(Mechanism::Fork, MemoryClass::AnonHugetlb, M2),
            subject(Mechanism::Fork, MemoryClass::Anon, None),
            subject(Mechanism::Fork, MemoryClass::Anon, G),
            Subject {
                kernel: Some((6, 19)),
                ..s
            },
            Subject {
                kernel: Some((6, 17)),
                ..s
            },
            Subject { kernel: None, ..s },
        ] {
            assert!(
                matches!(judge(&other, lost.clone()), Outcome::Fail(_)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn io_uring_refusals_are_only_excused_for_other_files_before_6_5() {
        let refused = Observed::Refused(Errno::EOPNOTSUPP);
        let s = Subject {
            kernel: Some((6, 1)),
            ..subject(Mechanism::IoUringPin, MemoryClass::OtherFile, None)
        };
        assert!(matches!(judge(&s, refused.clone()), Outcome::Xfail(_)));
        // A granted pin is what newer kernels do, and what the test expects.
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        for (memory, size) in [
            (MemoryClass::ShmemFile, None),
            (MemoryClass::HugetlbfsFile, M2),
            (MemoryClass::HugetlbfsFile, G),
            (MemoryClass::UnknownFile, None),
        ] {
            let s = Subject { memory, size, ..s };
            assert!(
                matches!(judge(&s, refused.clone()), Outcome::Fail(_)),
                "{s:?}"
            );
        }
        for kernel in [Some((6, 5)), Some((6, 12)), None] {
            let s = Subject { kernel, ..s };
            assert!(
                matches!(judge(&s, refused.clone()), Outcome::Fail(_)),
                "{s:?}"
            );
        }
        let efault = Observed::Refused(Errno::EFAULT);
        assert!(matches!(judge(&s, efault), Outcome::Fail(_)));
    }

    #[test]
    fn file_classes_follow_io_urings_old_check() {
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Tmpfs)),
            MemoryClass::ShmemFile
        );
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Hugetlbfs)),
            MemoryClass::HugetlbfsFile
        );
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Ext4)),
            MemoryClass::OtherFile
        );
        assert_eq!(
            MemoryClass::of_file(Some(Filesystem::Overlayfs)),
            MemoryClass::UnknownFile
        );
        assert_eq!(MemoryClass::of_file(None), MemoryClass::UnknownFile);
    }

    #[test]
    fn kernel_versions_parse_and_order() {
        assert_eq!(parse_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_version("unknown"), None);
        let r = builtin_row(LOST).kernel;
        assert!(r.contains(Some((6, 18))));
        assert!(!r.contains(Some((6, 19))));
        assert!(!r.contains(Some((6, 9))));
        assert!(!r.contains(None));
        assert!(KernelRange::ANY.contains(None));
    }

    #[test]
    fn no_other_leak_is_excused() {
        for m in [
            Mechanism::Fork,
            Mechanism::IoUringPin,
            Mechanism::RoPin,
            Mechanism::RwPin,
            Mechanism::Collapse,
        ] {
            for c in [
                MemoryClass::Anon,
                MemoryClass::AnonHugetlb,
                MemoryClass::NonAnon,
            ] {
                for size in [None, M2, G] {
                    let s = subject(m, c, size);
                    assert!(
                        matches!(judge(&s, Observed::Leak("x".into())), Outcome::Fail(_)),
                        "{s:?}"
                    );
                }
            }
        }
    }

    /// The reference host (THP 16K..2M, hugetlb 2M + 1G, /tmp and the cwd on
    /// ext4) on a given kernel.
    fn reference_host(release: &str) -> cowgup_harness::probe::Capabilities {
        let mut caps = crate::tests::reference_host();
        caps.kernel_release = release.into();
        caps.scratch_fs = [std::env::temp_dir(), std::env::current_dir().unwrap()]
            .map(|d| (d, "ext4".to_string()))
            .to_vec();
        caps
    }

    /// Every trial of the reference host that can end as XFAIL on this
    /// kernel, with the rows that can make it so: the catalogue's own
    /// subjects, asked of the table.
    fn xfail_reach(
        caps: &cowgup_harness::probe::Capabilities,
    ) -> BTreeMap<String, Vec<&'static str>> {
        crate::cow_anon::entries(caps)
            .into_iter()
            .chain(crate::cow_anon_thp::entries(caps))
            .chain(crate::cow_non_anon::entries(caps))
            .chain(crate::gup_longterm::entries(caps, true))
            .filter_map(|(scenario, subject)| {
                let ids: Vec<_> = rows_for(&subject).map(|r| r.id.as_str()).collect();
                (!ids.is_empty()).then_some((scenario.name, ids))
            })
            .collect()
    }

    /// Upstream's XFAIL set for the reference host. cow.c (v6.10+) passes
    /// `xfail = is_hugetlb` to the four vmsplice() tests only, and only
    /// run_with_hugetlb() sets is_hugetlb (memfd hugetlb is a non-anon
    /// backing, which has no vmsplice() case); gup_longterm.c has no XFAIL.
    /// cow.c does not look at the kernel version: the set is the same on
    /// every kernel (before v6.10 the in-tree cow.c reported these as FAIL).
    fn upstream_xfails() -> BTreeSet<&'static str> {
        const XFAIL_IF_HUGETLB: [&str; 4] = [
            "vmsplice() + unmap in child",
            "vmsplice() + unmap in child with mprotect() optimization",
            "vmsplice() before fork(), unmap in parent after fork()",
            "vmsplice() + unmap in parent after fork()",
        ];
        include_str!("../names-cow.txt")
            .lines()
            .filter(|name| {
                name.split_once(" ... with ")
                    .is_some_and(|(case, backing)| {
                        XFAIL_IF_HUGETLB.contains(&case) && backing.starts_with("hugetlb (")
                    })
            })
            .collect()
    }

    #[test]
    fn xfail_reach_is_upstreams_plus_named_differences() {
        let upstream = upstream_xfails();
        assert_eq!(upstream.len(), 8, "{upstream:#?}");
        let lost = LOST;
        let io_uring = IO_URING;
        // Per kernel: where we differ from upstream (name, row), and why.
        type Differences = Vec<(String, &'static str)>;
        let kernels: [(&str, Differences, &str); 4] = [
            (
                "6.1.0-56-cloud-amd64",
                [
                    "tmpfile",
                    "local tmpfile",
                    "file on an ext4 scratch directory",
                ]
                .map(|b| {
                    let name =
                        format!("io_uring fixed buffer with MAP_PRIVATE file mapping ... with {b}");
                    (name, io_uring)
                })
                .to_vec(),
                "io_uring before 6.5 refuses these buffers itself (EOPNOTSUPP); upstream's \
                 gup_longterm reads errno there, which liburing does not set, so it skips or fails \
                 them. Not the memfd, memfd hugetlb or tmpfs ones: io_uring took shmem and \
                 hugetlbfs buffers",
            ),
            (
                "6.5.0",
                vec![],
                "io_uring leaves the decision to GUP from 6.5 on",
            ),
            ("6.12.117", vec![], "nothing known beyond upstream"),
            (
                "6.18.44-fc-v857",
                [
                    "Basic COW after fork()",
                    "Basic COW after fork() with mprotect() optimization",
                    // Already upstream's XFAILs; here also because a page lost
                    // at fork makes their child see zeroes, or makes them clean.
                    "vmsplice() + unmap in child",
                    "vmsplice() + unmap in child with mprotect() optimization",
                    "vmsplice() before fork(), unmap in parent after fork()",
                    "vmsplice() + unmap in parent after fork()",
                ]
                .map(|case| (format!("{case} ... with hugetlb (1048576 kB)"), lost))
                .to_vec(),
                "fork() loses 1 GiB hugetlb pages on 6.18 (cowgup's own finding; cow.c's child \
                 copies the memory after fork() and cannot see it)",
            ),
        ];
        for (release, differences, why) in kernels {
            let mut want: BTreeMap<String, Vec<&str>> = upstream
                .iter()
                .map(|n| (n.to_string(), vec![VMSPLICE]))
                .collect();
            for (name, row) in differences {
                want.entry(name).or_default().push(row);
            }
            // On every kernel: the slow GUP path refuses long-term pins of any
            // fsdax VMA, MAP_PRIVATE included (GUP-fast may pass: may_pass).
            for pin in [
                "R/O longterm GUP",
                "R/O longterm GUP-fast",
                "R/W longterm GUP",
                "R/W longterm GUP-fast",
            ] {
                let name = format!("{pin} pin in MAP_PRIVATE file mapping ... with file on fsdax");
                want.entry(name).or_default().push(FSDAX);
            }
            want.entry(
                "io_uring fixed buffer with MAP_PRIVATE file mapping ... with file on fsdax".into(),
            )
            .or_default()
            .push(FSDAX);
            let got = xfail_reach(&reference_host(release));
            assert_eq!(got, want, "kernel {release}: {why}");
        }
    }

    #[test]
    fn a_tmpfile_on_tmpfs_is_not_excused_before_6_5() {
        let mut caps = reference_host("6.1.0");
        caps.scratch_fs[0].1 = "tmpfs".into();
        let got = xfail_reach(&caps);
        let name = |backing: &str| {
            format!("io_uring fixed buffer with MAP_PRIVATE file mapping ... with {backing}")
        };
        assert!(!got.contains_key(&name("tmpfile")));
        assert!(got.contains_key(&name("local tmpfile")));
        for backing in [
            "memfd",
            "memfd hugetlb (2048 kB)",
            "memfd hugetlb (1048576 kB)",
            "file on a tmpfs scratch mount",
        ] {
            assert!(!got.contains_key(&name(backing)), "{backing}");
        }
    }

    #[test]
    fn the_builtin_rows_keep_their_keys() {
        let ids: Vec<_> = table().rows().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                VMSPLICE,
                LOST,
                IO_URING,
                TEAR_ANON,
                TEAR_HUGETLB,
                LIVELOCK,
                FSDAX,
                UFFD_MOVE_LIVELOCK,
                UFFD_MOVE_EEXIST
            ]
        );
        let u = builtin_row(UFFD_MOVE_LIVELOCK);
        assert_eq!(u.mechanisms, [Mechanism::UffdMove]);
        assert_eq!(
            (u.memory, u.symptom, u.may_pass),
            (MemoryClass::Anon, Symptom::Livelock, true)
        );
        let v = builtin_row(VMSPLICE);
        assert_eq!(v.mechanisms, [Mechanism::Vmsplice]);
        assert_eq!(
            (v.memory, v.size, v.mapping, v.kernel, v.symptom, v.may_pass),
            (
                MemoryClass::AnonHugetlb,
                None,
                None,
                KernelRange::ANY,
                Symptom::Leak,
                false
            )
        );
        let l = builtin_row(LOST);
        assert_eq!(l.mechanisms, [Mechanism::Fork, Mechanism::Vmsplice]);
        assert_eq!(
            (l.memory, l.size, l.mapping, l.symptom, l.may_pass),
            (
                MemoryClass::AnonHugetlb,
                G,
                Some(Mapping::Private),
                Symptom::LostAtFork,
                true
            )
        );
        let range = KernelRange {
            from: Some((6, 18)),
            before: Some((6, 19)),
        };
        assert_eq!(l.kernel, range);
        let io = builtin_row(IO_URING);
        assert_eq!(io.mechanisms, [Mechanism::IoUringPin]);
        assert_eq!(
            (io.memory, io.size, io.mapping, io.symptom, io.may_pass),
            (
                MemoryClass::OtherFile,
                None,
                Some(Mapping::Private),
                Symptom::Refused(Errno::EOPNOTSUPP),
                true
            )
        );
        let before_6_5 = KernelRange {
            from: None,
            before: Some((6, 5)),
        };
        assert_eq!(io.kernel, before_6_5);
        for (id, memory) in [
            (TEAR_ANON, MemoryClass::Anon),
            (TEAR_HUGETLB, MemoryClass::AnonHugetlb),
        ] {
            let t = builtin_row(id);
            assert_eq!(t.mechanisms, [Mechanism::ThreadedFork]);
            assert_eq!(
                (t.memory, t.size, t.mapping, t.symptom, t.may_pass),
                (memory, None, None, Symptom::Leak, true)
            );
        }
        let ll = builtin_row(LIVELOCK);
        assert_eq!(ll.mechanisms, [Mechanism::RoPin]);
        assert_eq!(
            (ll.memory, ll.size, ll.mapping, ll.symptom, ll.may_pass),
            (
                MemoryClass::ShmemFile,
                M2,
                Some(Mapping::Private),
                Symptom::Livelock,
                true
            )
        );
        let before_6_18 = KernelRange {
            from: None,
            before: Some((6, 18)),
        };
        assert_eq!(ll.kernel, before_6_18);
        assert!(table().rows().iter().all(|r| r.file.is_none()));
    }

    #[test]
    fn a_torn_fork_is_excused_only_for_a_threaded_fork() {
        for c in [MemoryClass::Anon, MemoryClass::AnonHugetlb] {
            for size in [None, M2, G] {
                let torn = subject(Mechanism::ThreadedFork, c, size);
                assert!(matches!(
                    judge(&torn, Observed::Leak("Torn fork: x".into())),
                    Outcome::Xfail(_)
                ));
                assert_eq!(judge(&torn, Observed::Clean), Outcome::Pass);
                let plain = subject(Mechanism::Fork, c, size);
                assert!(matches!(
                    judge(&plain, Observed::Leak("x".into())),
                    Outcome::Fail(_)
                ));
            }
        }
    }

    #[test]
    fn a_livelock_is_xfail_before_the_fix_and_a_failure_after() {
        let mut s = subject(Mechanism::RoPin, MemoryClass::ShmemFile, M2);
        let stuck = || Observed::Livelock("R/O longterm GUP pin did not return".into());
        assert!(
            matches!(judge(&s, stuck()), Outcome::Fail(_)),
            "6.18 has the fix"
        );
        assert_eq!(judge(&s, Observed::Clean), Outcome::Pass);
        s.kernel = Some((6, 12));
        assert!(
            matches!(judge(&s, stuck()), Outcome::Xfail(ref r) if r.starts_with("livelock; expected"))
        );
        assert_eq!(
            judge(&s, Observed::Clean),
            Outcome::Pass,
            "a stable backport"
        );
        // gup_longterm's one-page shmem files are not this row's.
        let one_page = subject(Mechanism::RoPin, MemoryClass::ShmemFile, None);
        assert!(matches!(
            judge(
                &Subject {
                    kernel: Some((6, 12)),
                    ..one_page
                },
                stuck()
            ),
            Outcome::Fail(_)
        ));
    }

    const USER_ROW: &str = r#"
# my tree leaks on 2 MiB THP after fork
[[expectation]]
id = "my-thp-leak"
mechanisms = ["fork"]
memory = "anon"
size = "2M"
kernel = "6.18"
symptom = "leak"
reason = "our backport breaks THP COW"
reference = "BUG-123"
"#;

    fn user(text: &str) -> Result<Table, String> {
        Table::with(&[(Path::new("mine.toml"), text)])
    }

    #[test]
    fn a_users_row_turns_a_would_be_fail_into_xfail() {
        let t = user(USER_ROW).unwrap();
        assert_eq!(t.rows().len(), table().rows().len() + 1);
        let row = t.rows().last().unwrap();
        assert_eq!(row.file.as_deref(), Some(Path::new("mine.toml")));
        let leak = Observed::Leak("Leak from parent into child: page 3".into());
        let s = subject(Mechanism::Fork, MemoryClass::Anon, M2);
        assert!(matches!(
            Table::builtin().judge(&s, leak.clone()),
            Outcome::Fail(_)
        ));
        assert_eq!(
            t.judge(&s, leak.clone()),
            Outcome::Xfail(
                "Leak from parent into child; expected: our backport breaks THP COW \
                 (BUG-123; mine.toml)"
                    .into()
            )
        );
        // A clean run is news (may_pass is false by default).
        assert!(matches!(t.judge(&s, Observed::Clean), Outcome::Xpass(_)));
        // Only where the keys say.
        for other in [
            subject(Mechanism::Vmsplice, MemoryClass::Anon, M2),
            subject(Mechanism::Fork, MemoryClass::Anon, None),
            subject(Mechanism::Fork, MemoryClass::AnonHugetlb, M2),
            Subject {
                kernel: Some((6, 19)),
                ..s
            },
        ] {
            assert!(
                matches!(t.judge(&other, leak.clone()), Outcome::Fail(_)),
                "{other:?}"
            );
        }
        // The built-in rows still apply.
        let v = subject(Mechanism::Vmsplice, MemoryClass::AnonHugetlb, M2);
        assert!(matches!(t.judge(&v, leak), Outcome::Xfail(_)));
    }

    #[test]
    fn a_refusal_row_names_its_errno() {
        let t = user(
            r#"[[expectation]]
id = "ro-pin-eperm"
mechanisms = ["ro-pin", "rw-pin"]
memory = "shmem-file"
mapping = "shared"
symptom = "refused"
errno = "ENOTSUP"
may_pass = true
reason = "r"
reference = "x"
"#,
        )
        .unwrap();
        let s = Subject {
            mapping: Mapping::Shared,
            ..subject(Mechanism::RwPin, MemoryClass::ShmemFile, None)
        };
        assert!(matches!(
            t.judge(&s, Observed::Refused(Errno::EOPNOTSUPP)),
            Outcome::Xfail(_)
        ));
        assert!(matches!(
            t.judge(&s, Observed::Refused(Errno::EPERM)),
            Outcome::Fail(_)
        ));
        assert_eq!(t.judge(&s, Observed::Clean), Outcome::Pass);
    }

    #[test]
    fn an_empty_file_adds_nothing() {
        assert_eq!(
            user("# nothing yet\n").unwrap().rows().len(),
            table().rows().len()
        );
    }

    #[test]
    fn kernel_ranges_parse_and_match() {
        let r = |s: &str| parse_range(s).unwrap();
        assert_eq!(r("6.18..6.19"), r("6.18"));
        for (range, v, inside) in [
            ("6.18..6.19", (6, 18), true),
            ("6.18..6.19", (6, 19), false),
            ("6.18..6.19", (6, 17), false),
            ("..6.5", (6, 4), true),
            ("..6.5", (5, 15), true),
            ("..6.5", (6, 5), false),
            ("6.10..", (6, 10), true),
            ("6.10..", (7, 0), true),
            ("6.10..", (6, 9), false),
            ("..", (1, 0), true),
        ] {
            assert_eq!(r(range).contains(Some(v)), inside, "{range} {v:?}");
        }
        assert_eq!(r(".."), KernelRange::ANY);
        assert!(r("..").contains(None));
        assert!(!r("6.10..").contains(None));
    }

    #[test]
    fn sizes_and_errnos_parse() {
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2048 kB"), Ok(2 << 20));
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        for bad in ["", "2", "3M", "2T", "M", "-2M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_errno("EOPNOTSUPP"), Ok(Errno::EOPNOTSUPP));
        assert_eq!(parse_errno("EFAULT"), Ok(Errno::EFAULT));
        assert!(parse_errno("eopnotsupp").is_err());
    }

    /// Each mistake is one line naming the file and the line.
    #[test]
    fn a_bad_file_is_a_one_line_error() {
        let row = |extra: &str, replace: (&str, &str)| {
            format!("{extra}{}", USER_ROW.replace(replace.0, replace.1))
        };
        let cases = [
            (
                row("", ("kernel", "kernal")),
                "mine.toml:8: unknown field `kernal`",
            ),
            (
                row("version = 1\n", ("", "")),
                "mine.toml:1: unknown field `version`",
            ),
            (
                row("", ("\"fork\"", "\"forks\"")),
                "mine.toml:5: unknown mechanism \"forks\" (one of: fork, vmsplice,",
            ),
            (
                row("", ("\"anon\"", "\"anonymous\"")),
                "mine.toml:6: unknown memory \"anonymous\" (one of: anon, anon-hugetlb,",
            ),
            (
                row("", ("\"leak\"", "\"leaks\"")),
                "mine.toml:9: unknown symptom \"leaks\" (one of: leak, lost-at-fork, refused, livelock)",
            ),
            (
                row("", ("\"2M\"", "\"3M\"")),
                "mine.toml:7: bad size \"3M\"",
            ),
            (
                row("", ("\"6.18\"", "\"6.19..6.18\"")),
                "mine.toml:8: bad kernel range \"6.19..6.18\": empty",
            ),
            (
                row("", ("\"6.18\"", "\"6.18..=6.19\"")),
                "mine.toml:8: bad kernel range \"6.18..=6.19\": the end is excluded",
            ),
            (
                row("", ("\"6.18\"", "\"6\"")),
                "mine.toml:8: bad kernel range \"6\": a version is MAJOR.MINOR",
            ),
            (
                row("", ("\"leak\"", "\"refused\"\nerrno = \"EBOGUS\"")),
                "mine.toml:10: unknown errno \"EBOGUS\"",
            ),
            (
                row("", ("\"leak\"", "\"refused\"")),
                "mine.toml:4: my-thp-leak: symptom \"refused\" needs errno",
            ),
            (
                row("", ("\"leak\"", "\"leak\"\nerrno = \"EPERM\"")),
                "mine.toml:4: my-thp-leak: errno is only for symptom = \"refused\"",
            ),
            (
                row("", ("reason = ", "# reason = ")),
                "mine.toml:3: missing field `reason`",
            ),
            (
                row("", ("my-thp-leak", LOST)),
                "mine.toml:4: duplicate id \"hugetlb-1g-lost-at-fork\" (already at \
                 built-in tests/expectations.toml:18)",
            ),
            (
                format!("{USER_ROW}{USER_ROW}"),
                "mine.toml:15: duplicate id \"my-thp-leak\" (already at expectations file mine.toml:4)",
            ),
            (row("", ("mechanisms = [", "mechanisms = ")), "mine.toml:5:"),
        ];
        for (text, want) in cases {
            let err = user(&text).unwrap_err();
            let err = err.strip_prefix("expectations file ").unwrap_or(&err);
            assert!(err.starts_with(want), "{err}\n  wanted: {want}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn files_are_read_and_installed_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mine.toml");
        std::fs::write(&file, USER_ROW).unwrap();
        let t = Table::from_files(std::slice::from_ref(&file)).unwrap();
        assert_eq!(t.rows().last().unwrap().id, "my-thp-leak");
        let missing = dir.path().join("missing.toml");
        let err = Table::from_files(&[missing]).unwrap_err();
        assert!(err.starts_with("cannot read expectations file "), "{err}");
        // This process judges by the built-in table (the other tests use it):
        // installing it again is fine, installing more is refused.
        assert_eq!(install(&[]), Ok(()));
        assert!(install(&[file])
            .unwrap_err()
            .starts_with("expectations already loaded"));
    }

    #[test]
    fn the_readmes_example_is_a_valid_file() {
        let readme = include_str!("../../README.md");
        let example = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|r| r.split("```").next())
            .expect("README has a toml example");
        let t = user(example).unwrap();
        let row = t.rows().last().unwrap();
        assert_eq!((row.id.as_str(), row.size), ("my-thp-cow-leak", M2));
    }
}
