//! The journal and the restore: every change the guard makes is a line
//! (`Entry`) written before the change; a restore stops what the trials
//! left, undoes the entries in reverse order and reads every setting back,
//! from the live guard or by replaying the journal a killed run left
//! (`restore_from_journal`).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::lock::{remove_lock, wait_for_lock};
use super::settings::{
    pool_state, read_knob, read_setting, settle_pool, surplus_of, write_knob,
    write_setting_settled, SETTLE,
};
use super::swap::{swap_is_active, swapoff};

pub(super) const JOURNAL: &str = "journal";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Entry {
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
    pub(super) fn to_line(&self) -> String {
        match self {
            Entry::Knob { path, original } => format!("knob\t{}\t{}", path.display(), original),
            Entry::Swapfile(p) => format!("swapfile\t{}", p.display()),
            Entry::ZramSwap(name) => format!("zram\t{name}"),
            Entry::Mount(p) => format!("mount\t{}", p.display()),
            Entry::ScratchDir(p) => format!("scratch\t{}", p.display()),
            Entry::Group { pgid, start } => format!("group\t{pgid}\t{start}"),
        }
    }

    pub(super) fn parse(line: &str) -> Option<Entry> {
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
pub(super) fn start_time(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
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
pub(super) fn undo_all(entries: &[Entry]) -> RestoreReport {
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

pub(super) fn replay_journal(dir: &Path) -> io::Result<Option<RestoreReport>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
