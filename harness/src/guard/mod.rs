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
//! The parts: `settings` reads and writes the settings files (and settles
//! hugetlb pools), `journal` is the journal and the restore, `lock` the
//! host lock, `swap` the swap areas; the guard itself (`HostGuard`) is here.

mod journal;
mod lock;
mod settings;
mod swap;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use journal::{replay_journal, start_time, undo_all, Entry, JOURNAL};
use lock::{remove_lock, wait_for_lock};
use settings::{write_knob, write_setting_settled};
use swap::{make_swapfile, swap_header, swapon};

pub use journal::{is_mountpoint, restore_from_journal, RestoreReport};
pub use lock::release_inherited_lock;
pub use settings::{pool_state, read_knob, read_setting, selected_value, Knob};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
