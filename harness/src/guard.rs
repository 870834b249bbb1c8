//! The host-settings guard. Every global setting the suite changes (sysfs and
//! procfs knobs, a swap file, a mount, a scratch directory) is written to a
//! journal *before* it changes, and put back on normal exit, on a caught
//! signal, on panic (Drop), and after SIGKILL by replaying the journal
//! (`cowgup restore`, or the next run, which does that first).
//!
//! A restore proves itself. It first stops every process the run's trials
//! left (their process groups are journaled as they are forked, so a replay
//! after SIGKILL finds them too) and waits until they are gone, naming any
//! that cannot be stopped; then it writes each setting back, reads it back,
//! and rewrites it until it holds; then it reads every journaled setting once
//! more. Only a restore whose read-back agrees removes the journal.
//!
//! A hugetlb pool is journaled and restored as its *persistent* size
//! (`nr_hugepages` less `surplus_hugepages`): `nr_hugepages` also counts
//! surplus pages, which belong to whoever maps them and are freed when they
//! go. Written back as the pool's size, they would become persistent
//! (`set_max_huge_pages()` turns surplus pages into persistent ones when the
//! count grows) and stay in the pool after their process ended: that is how
//! a process of a killed run still holding a 1 GiB page made the next run
//! "restore" the 1 GiB pool to one page.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A host setting: write `value` to `path`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Knob {
    pub path: PathBuf,
    pub value: String,
}

impl Knob {
    pub fn new(path: impl Into<PathBuf>, value: impl Into<String>) -> Self {
        Knob {
            path: path.into(),
            value: value.into(),
        }
    }

    /// Whether the host already has this setting (so nothing needs to change).
    pub fn holds(&self) -> bool {
        read_setting(&self.path).is_ok_and(|v| v == self.value)
    }
}

/// The value of a knob as it would be written back: the bracketed choice for
/// selector files like `always [madvise] never`, the trimmed content otherwise.
pub fn read_knob(path: &Path) -> io::Result<String> {
    let raw = fs::read_to_string(path)?;
    Ok(selected_value(&raw))
}

pub fn selected_value(raw: &str) -> String {
    if let (Some(open), Some(close)) = (raw.find('['), raw.find(']')) {
        if open < close {
            return raw[open + 1..close].to_string();
        }
    }
    raw.trim().to_string()
}

fn write_knob(path: &Path, value: &str) -> io::Result<()> {
    // O_TRUNC as a shell's `>` does: sysfs ignores it, plain files need it.
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

/// The counter beside a hugetlb pool's `nr_hugepages` that says how many of
/// its pages are surplus, when `path` is such a pool.
fn surplus_of(path: &Path) -> Option<PathBuf> {
    if path.file_name()? != "nr_hugepages" {
        return None;
    }
    let surplus = path.parent()?.join("surplus_hugepages");
    surplus.exists().then_some(surplus)
}

fn read_count(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::other(format!(
            "{} reads {:?}, not a count",
            path.display(),
            text.trim()
        ))
    })
}

/// A setting as the guard journals and restores it: `read_knob`, except that
/// a hugetlb pool's `nr_hugepages` reads as its persistent pages (see the
/// module comment: surplus pages are not the host's setting).
pub fn read_setting(path: &Path) -> io::Result<String> {
    let Some(surplus) = surplus_of(path) else {
        return read_knob(path);
    };
    // The two counters are read apart: read until surplus did not move.
    for _ in 0..100 {
        let before = read_count(&surplus)?;
        let total = read_count(path)?;
        if read_count(&surplus)? == before {
            return Ok(total.saturating_sub(before).to_string());
        }
    }
    Err(io::Error::other(format!(
        "{} keeps changing while read",
        surplus.display()
    )))
}

/// A hugetlb pool's counters, for messages: "nr 1, free 1, resv 0, surplus 0".
pub fn pool_state(nr_hugepages: &Path) -> Option<String> {
    let dir = nr_hugepages.parent()?;
    let read = |f: &str| read_count(&dir.join(f)).ok();
    Some(format!(
        "nr {}, free {}, resv {}, surplus {}",
        read("nr_hugepages")?,
        read("free_hugepages")?,
        read("resv_hugepages")?,
        read("surplus_hugepages")?
    ))
}

/// How long a setting may take to hold after it is written.
const SETTLE: Duration = Duration::from_secs(10);

/// Write, read back, and write again until the kernel reports the value:
/// a hugetlb pool grows only as far as memory allows at that moment and
/// shrinks only as far as reservations let it, so one write is not proof.
fn write_setting_settled(path: &Path, value: &str) -> io::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        write_knob(path, value)?;
        let now = read_setting(path)?;
        if now == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            let pool = pool_state(path)
                .filter(|_| surplus_of(path).is_some())
                .map(|s| format!(" (pool: {s})"))
                .unwrap_or_default();
            return Err(io::Error::other(format!(
                "{} reads {now:?} after writing {value:?} for {} s{pool}",
                path.display(),
                SETTLE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Put a hugetlb pool back at `persistent` pages, and wait until it holds
/// no surplus page either: only then is the memory the run took back with
/// the host. A surplus page in use goes when its user lets go of it (a
/// process, or an io_uring ring being torn down after its process exited).
/// A free surplus page nobody holds is never freed by the kernel on its own
/// (surplus pages are freed when their user frees them or a reservation is
/// returned, and a shrink stops at the persistent count); writing the pool's
/// whole size makes it persistent, and the shrink that follows frees it.
fn settle_pool(path: &Path, persistent: u64) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let read = |f: &str| read_count(&dir.join(f));
    let deadline = Instant::now() + SETTLE;
    loop {
        let (nr, free, resv, surplus) = (
            read("nr_hugepages")?,
            read("free_hugepages")?,
            read("resv_hugepages")?,
            read("surplus_hugepages")?,
        );
        if nr.saturating_sub(surplus) == persistent && surplus == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            let held = if surplus > 0 && free <= resv {
                format!(
                    "; {surplus} surplus page(s) still in use (a process, or an io_uring ring \
                     being torn down, holds them; the kernel frees them when they are let go, \
                     `cowgup restore` checks again)"
                )
            } else {
                String::new()
            };
            return Err(io::Error::other(format!(
                "{} is not back at {persistent} page(s) with no surplus after {} s (pool: nr \
                 {nr}, free {free}, resv {resv}, surplus {surplus}){held}",
                path.display(),
                SETTLE.as_secs()
            )));
        }
        if surplus > 0 && free > resv {
            write_knob(path, &nr.to_string())?;
        }
        write_knob(path, &persistent.to_string())?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Knob {
        path: PathBuf,
        original: String,
    },
    Swapfile(PathBuf),
    /// A zram device set up as swap: /sys/block/<name>.
    ZramSwap(String),
    Mount(PathBuf),
    ScratchDir(PathBuf),
    /// A trial's process group, by its id and its leader's start time (in
    /// clock ticks after boot, /proc/PID/stat field 22): who to stop before
    /// restoring, also after the runner was killed.
    Group {
        pgid: i32,
        start: u64,
    },
}

impl Entry {
    fn to_line(&self) -> String {
        match self {
            Entry::Knob { path, original } => format!("knob\t{}\t{}", path.display(), original),
            Entry::Swapfile(p) => format!("swapfile\t{}", p.display()),
            Entry::ZramSwap(name) => format!("zram\t{name}"),
            Entry::Mount(p) => format!("mount\t{}", p.display()),
            Entry::ScratchDir(p) => format!("scratch\t{}", p.display()),
            Entry::Group { pgid, start } => format!("group\t{pgid}\t{start}"),
        }
    }

    fn parse(line: &str) -> Option<Entry> {
        let mut it = line.splitn(3, '\t');
        match (it.next()?, it.next()?, it.next()) {
            ("knob", p, Some(orig)) => Some(Entry::Knob {
                path: p.into(),
                original: orig.to_string(),
            }),
            ("swapfile", p, None) => Some(Entry::Swapfile(p.into())),
            ("zram", name, None) => Some(Entry::ZramSwap(name.to_string())),
            ("mount", p, None) => Some(Entry::Mount(p.into())),
            ("scratch", p, None) => Some(Entry::ScratchDir(p.into())),
            ("group", pgid, Some(start)) => Some(Entry::Group {
                pgid: pgid.parse().ok()?,
                start: start.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Put this one change back. Idempotent: replaying a journal twice is safe.
    fn undo(&self) -> Result<Option<String>, String> {
        match self {
            Entry::Knob { path, original } => match (read_setting(path), surplus_of(path)) {
                (Ok(now), Some(_)) => {
                    let persistent = original.parse().map_err(|_| {
                        format!(
                            "{}: journaled size {original:?} is not a count",
                            path.display()
                        )
                    })?;
                    let moved = now != *original;
                    settle_pool(path, persistent)
                        .map(|_| moved.then(|| format!("{}: {now} -> {original}", path.display())))
                        .map_err(|e| e.to_string())
                }
                (Ok(now), None) if now == *original => Ok(None),
                (Ok(now), None) => write_setting_settled(path, original)
                    .map(|_| Some(format!("{}: {now} -> {original}", path.display())))
                    .map_err(|e| e.to_string()),
                (Err(e), _) => Err(format!("{}: {e}", path.display())),
            },
            Entry::Swapfile(p) => {
                let mut did = Vec::new();
                if swap_is_active(p) {
                    swapoff(p).map_err(|e| format!("swapoff {}: {e}", p.display()))?;
                    did.push("swapoff");
                }
                match fs::remove_file(p) {
                    Ok(()) => did.push("removed"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("removing {}: {e}", p.display())),
                }
                Ok((!did.is_empty())
                    .then(|| format!("swap file {}: {}", p.display(), did.join(", "))))
            }
            Entry::ZramSwap(name) => {
                let dev = PathBuf::from(format!("/dev/{name}"));
                let mut did = Vec::new();
                if swap_is_active(&dev) {
                    swapoff(&dev).map_err(|e| format!("swapoff {}: {e}", dev.display()))?;
                    did.push("swapoff");
                }
                let sys = Path::new("/sys/block").join(name);
                if read_knob(&sys.join("disksize")).is_ok_and(|v| v != "0") {
                    write_knob(&sys.join("reset"), "1").map_err(|e| e.to_string())?;
                    did.push("reset");
                }
                Ok((!did.is_empty()).then(|| format!("zram swap {name}: {}", did.join(", "))))
            }
            Entry::Mount(p) => {
                if !is_mountpoint(p) {
                    return Ok(None);
                }
                nix::mount::umount(p)
                    .map(|_| Some(format!("unmounted {}", p.display())))
                    .map_err(|e| format!("umount {}: {e}", p.display()))
            }
            Entry::ScratchDir(p) if p.is_file() => fs::remove_file(p)
                .map(|_| Some(format!("removed {}", p.display())))
                .map_err(|e| format!("removing {}: {e}", p.display())),
            Entry::ScratchDir(p) => match fs::remove_dir_all(p) {
                Ok(()) => Ok(Some(format!("removed {}", p.display()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("removing {}: {e}", p.display())),
            },
            // Stopped together, before anything else (see `undo_all`).
            Entry::Group { .. } => Ok(None),
        }
    }

    /// Read back what `undo` put back: None when it holds, else what is wrong.
    fn verify(&self) -> Option<String> {
        match self {
            Entry::Knob { path, original } => match read_setting(path) {
                Ok(now) if now == *original => None,
                Ok(now) => Some(format!(
                    "{} reads {now:?}, not its original {original:?}{}",
                    path.display(),
                    surplus_of(path)
                        .and_then(|_| pool_state(path))
                        .map(|s| format!(" (pool: {s})"))
                        .unwrap_or_default()
                )),
                Err(e) => Some(format!("{}: {e}", path.display())),
            },
            Entry::Swapfile(p) if swap_is_active(p) || p.exists() => Some(format!(
                "swap file {} is still {}",
                p.display(),
                if swap_is_active(p) { "in use" } else { "there" }
            )),
            Entry::ZramSwap(name) if swap_is_active(&PathBuf::from(format!("/dev/{name}"))) => {
                Some(format!("zram swap {name} is still in use"))
            }
            Entry::Mount(p) if is_mountpoint(p) => {
                Some(format!("{} is still mounted", p.display()))
            }
            Entry::ScratchDir(p) if p.exists() => Some(format!("{} is still there", p.display())),
            _ => None,
        }
    }
}

/// Stop the journaled trial process groups that still have processes and
/// wait until they are gone: a process of a trial may hold hugetlb pages
/// (surplus once the pool shrinks), swap entries or a mount, and the host is
/// only back once it is gone. Returns what was stopped and who could not be.
fn stop_groups(entries: &[Entry], report: &mut RestoreReport) {
    let groups: Vec<(i32, u64)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Group { pgid, start } => Some((*pgid, *start)),
            _ => None,
        })
        .collect();
    // One kill(2) each: the groups of tidy trials are long gone.
    let alive: Vec<(i32, u64)> = groups
        .into_iter()
        .filter(|&(g, _)| g > 0 && crate::group::exists(nix::unistd::Pid::from_raw(g)))
        .collect();
    if alive.is_empty() {
        return;
    }
    let ours: Vec<i32> = alive
        .into_iter()
        .filter(|&(g, start)| group_is_ours(g, start))
        .map(|(g, _)| g)
        .collect();
    let mut stopped = Vec::new();
    for &g in &ours {
        let pgid = nix::unistd::Pid::from_raw(g);
        let members = crate::group::members(pgid);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        stopped.extend(members);
    }
    let deadline = Instant::now() + SETTLE;
    let left = loop {
        let left: Vec<crate::group::Member> = ours
            .iter()
            .flat_map(|&g| crate::group::members(nix::unistd::Pid::from_raw(g)))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let names = |m: &[crate::group::Member]| {
        m.iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !stopped.is_empty() {
        report.changed.push(format!(
            "stopped {} process(es) left by trials: {}",
            stopped.len(),
            names(&stopped)
        ));
    }
    if !left.is_empty() {
        report.problems.push(format!(
            "process(es) of trials still there {} s after SIGKILL (settings they hold may not \
             come back until they end): {}",
            SETTLE.as_secs(),
            names(&left)
        ));
    }
}

/// Whether process group `pgid` is still the trial's whose leader started at
/// `start`: its leader is alive with that start time, or the leader is gone
/// (a group id cannot be handed out again while any process is in it).
fn group_is_ours(pgid: i32, start: u64) -> bool {
    match procfs::process::Process::new(pgid).and_then(|p| p.stat()) {
        Ok(stat) => stat.starttime == start,
        Err(_) => true,
    }
}

/// The start time of `pid`, for the journal's `group` lines.
fn start_time(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

fn swap_is_active(p: &Path) -> bool {
    let target = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| Path::new(name) == target || Path::new(name) == p)
}

fn swapon(p: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid C string; flags 0.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("swapon {}: {e}", p.display()),
        ));
    }
    Ok(())
}

fn swapoff(p: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid C string.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn is_mountpoint(p: &Path) -> bool {
    let want = p.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == want)
}

/// What a restore did and what it could not do.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub changed: Vec<String>,
    pub problems: Vec<String>,
}

impl RestoreReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Stop what the trials left, put every change back in reverse order, then
/// read every setting back: a later undo must not have moved an earlier one.
fn undo_all(entries: &[Entry]) -> RestoreReport {
    let mut report = RestoreReport::default();
    stop_groups(entries, &mut report);
    for e in entries.iter().rev() {
        match e.undo() {
            Ok(Some(what)) => report.changed.push(what),
            Ok(None) => {}
            Err(problem) => report.problems.push(problem),
        }
    }
    // A path journaled twice (two runs' journals replayed as one) counts by
    // its first original, the host's own.
    let mut seen = BTreeSet::new();
    for e in entries {
        if let Entry::Knob { path, .. } = e {
            if !seen.insert(path.clone()) {
                continue;
            }
        }
        if let Some(wrong) = e.verify() {
            if !report.problems.iter().any(|p| p.contains(&wrong)) {
                report.problems.push(format!("read back: {wrong}"));
            }
        }
    }
    report
}

const JOURNAL: &str = "journal";

/// Holds the host for one run. Only one process may hold it at a time.
pub struct HostGuard {
    dir: PathBuf,
    journal: File,
    _lock: UnixListener,
    entries: Vec<Entry>,
    journaled_knobs: BTreeMap<PathBuf, String>,
    held: BTreeSet<PathBuf>,
    owner: u32,
    restored: bool,
    waited: bool,
}

impl HostGuard {
    /// Take the host. A journal left by a run that died (SIGKILL, power cut)
    /// is replayed first; its report is returned so the caller can say so.
    /// `wait`: how long to wait for another holder (zero: fail at once).
    pub fn acquire(dir: &Path, wait: Duration) -> io::Result<(HostGuard, Option<RestoreReport>)> {
        let (lock, waited) = wait_for_lock(dir, wait)?;
        let stale = replay_journal(dir)?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(JOURNAL))?;
        let guard = HostGuard {
            dir: dir.to_path_buf(),
            journal,
            _lock: lock,
            entries: Vec::new(),
            journaled_knobs: BTreeMap::new(),
            held: BTreeSet::new(),
            owner: std::process::id(),
            restored: false,
            waited,
        };
        Ok((guard, stale))
    }

    /// Another run held the host while we waited for it: whatever was probed
    /// before `acquire` may no longer be true (it has restored its changes).
    pub fn waited_for_another_run(&self) -> bool {
        self.waited
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    fn record(&mut self, entry: Entry) -> io::Result<()> {
        writeln!(self.journal, "{}", entry.to_line())?;
        self.journal.sync_data()?;
        self.entries.push(entry);
        Ok(())
    }

    /// Change a knob for the rest of the run (until restore).
    pub fn set(&mut self, knob: &Knob) -> io::Result<()> {
        let now = read_setting(&knob.path)?;
        if now == knob.value {
            return Ok(());
        }
        if !self.journaled_knobs.contains_key(&knob.path) {
            self.record(Entry::Knob {
                path: knob.path.clone(),
                original: now.clone(),
            })?;
            self.journaled_knobs.insert(knob.path.clone(), now);
        }
        write_knob(&knob.path, &knob.value)
    }

    /// Make exactly these knobs hold on top of the host's own settings: knobs
    /// held for an earlier trial and absent here go back to their originals.
    pub fn hold(&mut self, knobs: &[Knob]) -> io::Result<()> {
        let wanted: BTreeSet<PathBuf> = knobs.iter().map(|k| k.path.clone()).collect();
        let release: Vec<PathBuf> = self.held.difference(&wanted).cloned().collect();
        for path in release {
            if let Some(original) = self.journaled_knobs.get(&path).cloned() {
                write_setting_settled(&path, &original)?;
            }
            self.held.remove(&path);
        }
        for k in knobs {
            self.set(k)?;
            self.held.insert(k.path.clone());
        }
        Ok(())
    }

    /// Journal a trial's process group (its leader `pid`, just forked), so
    /// that a restore, also one after SIGKILL, stops whatever is left of it
    /// first. Not synced: the line only has to outlive the process, which the
    /// page cache does; one line per trial must not cost a disk flush.
    pub fn track_group(&mut self, pid: i32) {
        let Some(start) = start_time(pid) else {
            return; // gone already: nothing to stop later
        };
        let entry = Entry::Group { pgid: pid, start };
        if writeln!(self.journal, "{}", entry.to_line()).is_ok() {
            self.entries.push(entry);
        }
    }

    /// Create a swap file of `bytes` at `path` and swap on it.
    pub fn add_swapfile(&mut self, path: &Path, bytes: u64) -> io::Result<()> {
        self.record(Entry::Swapfile(path.to_path_buf()))?;
        make_swapfile(path, bytes)?;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        // SAFETY: a valid C string; flags 0.
        if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            let _ = fs::remove_file(path);
            return Err(io::Error::new(
                e.kind(),
                format!("swapon {}: {e}", path.display()),
            ));
        }
        Ok(())
    }

    /// Use an unused zram device (disksize 0) as swap of `bytes`.
    pub fn add_zram_swap(&mut self, name: &str, bytes: u64) -> io::Result<()> {
        let sys = Path::new("/sys/block").join(name);
        if read_knob(&sys.join("disksize"))? != "0" {
            return Err(io::Error::other(format!("{name} is in use")));
        }
        self.record(Entry::ZramSwap(name.to_string()))?;
        write_knob(&sys.join("disksize"), &bytes.to_string())?;
        let dev = PathBuf::from(format!("/dev/{name}"));
        let mut f = OpenOptions::new().write(true).open(&dev)?;
        f.write_all(&swap_header(bytes))?;
        f.sync_all()?;
        swapon(&dev)
    }

    /// Journal a mount someone else performs (mount(8) -o loop, say).
    pub fn record_mount(&mut self, target: &Path) -> io::Result<()> {
        self.record(Entry::Mount(target.to_path_buf()))
    }

    /// A file that is removed at restore.
    pub fn scratch_file(&mut self, path: &Path) -> io::Result<()> {
        self.record(Entry::ScratchDir(path.to_path_buf()))
    }

    pub fn mount(&mut self, fstype: &str, target: &Path) -> io::Result<()> {
        self.record(Entry::Mount(target.to_path_buf()))?;
        nix::mount::mount(
            Some(fstype),
            target,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(io::Error::from)
    }

    /// A directory that is removed, with its contents, at restore.
    pub fn scratch_dir(&mut self, path: &Path) -> io::Result<()> {
        self.record(Entry::ScratchDir(path.to_path_buf()))?;
        fs::create_dir_all(path)
    }

    /// Put everything back. The journal is removed only when all went well, so
    /// that `cowgup restore` can try again.
    pub fn restore(&mut self) -> RestoreReport {
        self.restored = true;
        let report = undo_all(&self.entries);
        if report.is_clean() {
            let _ = fs::remove_file(self.dir.join(JOURNAL));
            remove_lock(&self.dir);
        }
        report
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        // A forked trial process inherits the guard; only its owner restores.
        if self.restored || std::process::id() != self.owner {
            return;
        }
        let report = self.restore();
        for p in &report.problems {
            eprintln!("cowgup: could not restore: {p}");
        }
    }
}

/// The host lock: an abstract unix socket. One per host (network namespace),
/// whatever state directory a run uses, released by the kernel when its
/// holder dies however it dies, and it leaves no file behind.
const HOST_LOCK: &[u8] = b"cowgup-host-guard";

/// The lock's fd, closed in every forked trial process so that a child which
/// outlives a killed runner cannot keep the host locked.
static LOCK_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// For forked children: let go of the inherited host lock.
pub fn release_inherited_lock() {
    let fd = LOCK_FD.swap(-1, std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the fd was inherited from the parent and is not used here.
        unsafe { libc::close(fd) };
    }
}

fn lock_host() -> io::Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(HOST_LOCK)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => {
            LOCK_FD.store(l.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
            Ok(l)
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another cowgup is changing this host's settings",
        )),
        Err(e) => Err(e),
    }
}

/// The pid holding the host lock, as the kernel tells a peer, or "?".
fn lock_holder() -> String {
    SocketAddr::from_abstract_name(HOST_LOCK)
        .and_then(|addr| UnixStream::connect_addr(&addr))
        .ok()
        .and_then(|s| {
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()
        })
        .map_or("?".to_string(), |c| c.pid().to_string())
}

fn lock_state_dir(dir: &Path) -> io::Result<UnixListener> {
    let lock = lock_host()?;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(lock)
}

/// Take the host lock, waiting up to `wait` for another holder; whether we waited.
fn wait_for_lock(dir: &Path, wait: Duration) -> io::Result<(UnixListener, bool)> {
    let deadline = Instant::now() + wait;
    let mut waited = false;
    loop {
        match lock_state_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                waited = true;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Asked once, when giving up: every connect() queues on
                // the holder's listener, which never accepts, so asking
                // on each retry would fill its backlog and block us.
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another cowgup (pid {}) is changing this host's settings",
                        lock_holder()
                    ),
                ));
            }
            other => return other.map(|l| (l, waited)),
        }
    }
}

/// Leave nothing behind: the state directory, if it is empty.
fn remove_lock(dir: &Path) {
    let _ = fs::remove_dir(dir);
}

fn replay_journal(dir: &Path) -> io::Result<Option<RestoreReport>> {
    let path = dir.join(JOURNAL);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
    let mut report = undo_all(&entries);
    let unknown = text
        .lines()
        .filter(|l| !l.is_empty() && Entry::parse(l).is_none())
        .count();
    if unknown > 0 {
        report.problems.push(format!(
            "{unknown} journal line(s) in {} not understood",
            path.display()
        ));
    }
    if report.is_clean() {
        fs::remove_file(&path)?;
    }
    Ok(Some(report))
}

/// `cowgup restore`: replay the journal a killed run left behind.
pub fn restore_from_journal(dir: &Path) -> io::Result<Option<RestoreReport>> {
    if !dir.exists() {
        return Ok(None);
    }
    // A run killed a moment ago holds the lock until the kernel has finished
    // tearing it down (freeing a 1 GiB page takes a while): wait for that.
    let (_lock, _) = wait_for_lock(dir, SETTLE)?;
    let report = replay_journal(dir)?;
    if report.as_ref().is_none_or(|r| r.is_clean()) {
        remove_lock(dir);
    }
    Ok(report)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// The first page of a swap area as mkswap(8) writes it: a version-1 header
/// and the "SWAPSPACE2" signature at the end of the page.
fn swap_header(bytes: u64) -> Vec<u8> {
    let page = page_size();
    let pages = bytes / page;
    let mut header = vec![0u8; page as usize];
    header[1024..1028].copy_from_slice(&1u32.to_ne_bytes()); // version
    header[1028..1032].copy_from_slice(&((pages - 1) as u32).to_ne_bytes()); // last_page
    let sig = b"SWAPSPACE2";
    header[page as usize - sig.len()..].copy_from_slice(sig);
    header
}

fn make_swapfile(path: &Path, bytes: u64) -> io::Result<()> {
    let page = page_size();
    if bytes / page < 10 {
        return Err(io::Error::other("swap area too small"));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::empty(),
        0,
        (bytes / page * page) as i64,
    )?;
    f.write_all(&swap_header(bytes))?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_files_read_as_their_choice() {
        assert_eq!(selected_value("always [madvise] never\n"), "madvise");
        assert_eq!(selected_value("0\n"), "0");
        assert_eq!(selected_value("[never] always"), "never");
    }

    #[test]
    fn journal_lines_round_trip() {
        for e in [
            Entry::Knob {
                path: "/sys/x/enabled".into(),
                original: "madvise".into(),
            },
            Entry::Swapfile("/var/tmp/cowgup/swapfile".into()),
            Entry::ZramSwap("zram0".into()),
            Entry::Mount("/sys/kernel/debug".into()),
            Entry::ScratchDir("/var/tmp/cowgup/ext4".into()),
        ] {
            assert_eq!(Entry::parse(&e.to_line()), Some(e));
        }
        assert_eq!(Entry::parse("garbage"), None);
    }

    /// Takes the host lock: `host::` (cowgup_harness::libtest::HOST).
    mod host {
        use super::*;

        #[test]
        fn guard_restores_plain_files_it_changed_and_replays_a_journal() {
            let dir =
                std::env::temp_dir().join(format!("cowgup-guard-unit-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            let knob_file = dir.join("knob");
            fs::write(&knob_file, "always [madvise] never\n").unwrap();
            let state = dir.join("state");
            {
                // The host lock is machine-wide: wait for a run that holds it.
                let (mut g, stale) = HostGuard::acquire(&state, Duration::from_secs(600)).unwrap();
                assert!(stale.is_none());
                g.set(&Knob::new(&knob_file, "never")).unwrap();
                assert_eq!(fs::read_to_string(&knob_file).unwrap(), "never");
                // Simulate SIGKILL: the guard never runs its restore.
                g.restored = true;
            }
            assert!(state.join(JOURNAL).exists());
            let deadline = Instant::now() + Duration::from_secs(600);
            let report = loop {
                match restore_from_journal(&state) {
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    other => break other.unwrap().unwrap(),
                }
            };
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(fs::read_to_string(&knob_file).unwrap(), "madvise");
            assert!(
                !state.exists(),
                "a clean restore leaves no state directory behind"
            );
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}
