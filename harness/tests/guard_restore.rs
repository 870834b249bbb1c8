//! The restore proves itself against a process that holds hugetlb pages while
//! the host is restored (root; uses the 2 MiB pool, put back as found).
//!
//! Both tests reproduce, deterministically, how a killed run once left a
//! 1 GiB page in the host's pool while its restore said "restored":
//! - a process of an earlier run still held a surplus page when the guard
//!   journaled the pool's size, so the journal held a size one too big, and
//!   writing it back turned the surplus page into a persistent one;
//! - after SIGKILL, the trial process that held a page was still alive when
//!   `cowgup restore` shrank the pool, so the page stayed (as surplus) as long
//!   as that process lived.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cowgup_harness::guard::{self, HostGuard, Knob};
use cowgup_harness::libtest;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe, read, setpgid, write, ForkResult, Pid};

const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const PAGE: usize = 2 << 20;

fn count(file: &str) -> u64 {
    fs::read_to_string(Path::new(POOL).join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn set_pool(n: u64) {
    fs::write(Path::new(POOL).join("nr_hugepages"), n.to_string()).unwrap();
}

fn pool() -> String {
    guard::pool_state(&Path::new(POOL).join("nr_hugepages")).unwrap_or_default()
}

/// Why this host cannot run these tests, if it cannot.
fn unfit() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (writes the 2 MiB hugetlb pool)".into());
    }
    if !Path::new(POOL).exists() {
        return Some(format!("no {POOL}"));
    }
    None
}

/// Whether something else holds pages of the 2 MiB pool (asked under the host lock).
fn in_use() -> Result<(), String> {
    if count("surplus_hugepages") != 0 || count("resv_hugepages") != 0 {
        return Err(format!(
            "the 2 MiB pool is in use outside cowgup: {}",
            pool()
        ));
    }
    Ok(())
}

/// A process in its own process group that maps and touches one page of the
/// 2 MiB pool, says so, and holds it until `release` is written to (or
/// until killed, when nobody writes).
struct Holder {
    pid: Pid,
    release: std::os::fd::OwnedFd,
}

fn hold_a_page() -> Holder {
    let (ready_r, ready_w) = pipe().unwrap();
    let (release_r, release_w) = pipe().unwrap();
    // SAFETY: the test runs on one thread (test_threads = 1); the child only
    // maps, touches, writes a byte and reads a pipe before _exit.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            // As every trial process does (runner/child.rs): the host lock stays
            // with the run.
            guard::release_inherited_lock();
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            // SAFETY: a fresh anonymous hugetlb mapping, touched once.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                    -1,
                    0,
                )
            };
            let ok = p != libc::MAP_FAILED;
            if ok {
                // SAFETY: the mapping is PAGE bytes long.
                unsafe { *(p as *mut u8) = 1 };
            }
            let _ = write(&ready_w, &[u8::from(ok)]);
            let mut b = [0u8];
            // Released by a write; an end of file (whoever held the other end
            // died) is no release: hold on, like a trial process left behind.
            while !matches!(read(&release_r, &mut b), Ok(1)) {
                std::thread::sleep(Duration::from_secs(1));
            }
            // SAFETY: leave without running the test harness's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let _ = setpgid(child, child);
            drop(ready_w);
            drop(release_r);
            let mut b = [0u8];
            assert_eq!(read(&ready_r, &mut b).unwrap(), 1);
            assert_eq!(b[0], 1, "the holder could not map a 2 MiB hugetlb page");
            Holder {
                pid: child,
                release: release_w,
            }
        }
    }
}

impl Holder {
    fn release(self) {
        let _ = write(&self.release, &[0]);
        let _ = waitpid(self.pid, None);
    }
}

/// Poll until the pool is back at `base` pages with no surplus, or say how it is.
fn pool_back_at(base: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if count("nr_hugepages") == base && count("surplus_hugepages") == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the 2 MiB pool was {base} page(s) before and is now: {}",
        pool()
    ))
}

fn state_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cowgup-{name}-{}", std::process::id()))
}

fn acquire(dir: &Path) -> HostGuard {
    // The host lock is machine-wide: wait for a run that holds it.
    HostGuard::acquire(dir, Duration::from_secs(600)).unwrap().0
}

/// An earlier run's process still holds a page that its restore made surplus
/// when this run journals the pool: the journal must hold the persistent
/// size (the page must not become persistent), the restore must say the page
/// is not back and keep the journal, and the journal's replay, once the page
/// is let go, must find the pool as it was.
fn surplus_page_of_an_earlier_run_is_not_journaled() -> Result<(), String> {
    // Held throughout: other runs on this host change the pool too.
    let dir = state_dir("surplus");
    let mut g = acquire(&dir);
    in_use()?;
    let base = count("nr_hugepages");
    let knob = Path::new(POOL).join("nr_hugepages");
    // The earlier run: grow the pool, fault a page in, restore (the page
    // becomes surplus: nr_hugepages still counts it).
    set_pool(base + 1);
    let holder = hold_a_page();
    set_pool(base);
    let surplus = count("surplus_hugepages");
    g.set(&Knob::new(&knob, (base + 2).to_string())).unwrap();
    // The earlier run's page is still held: the restore must put the pool's
    // size back, say that the page is not back yet, and keep the journal.
    let first = g.restore();
    drop(g);
    holder.release();
    let again = guard::restore_from_journal(&dir);
    let back = pool_back_at(base);
    set_pool(base);
    let _ = fs::remove_dir_all(&dir);
    if surplus != 1 {
        return Err(format!(
            "setup: expected 1 surplus page, the pool was: {}",
            pool()
        ));
    }
    if !first
        .problems
        .iter()
        .any(|p| p.contains("surplus page(s) still in use"))
    {
        return Err(format!(
            "the restore under a held surplus page did not say so: {:?}",
            first.problems
        ));
    }
    match again {
        Ok(Some(r)) if r.is_clean() => {}
        other => return Err(format!("the journal's second restore: {other:?}")),
    }
    back
}

/// A run killed outright leaves a trial process holding a page; `cowgup
/// restore` must stop it (it is journaled by process group) and only then
/// shrink the pool, and say it did.
fn restore_after_sigkill_stops_the_trial_holding_a_page() -> Result<(), String> {
    let knob = Path::new(POOL).join("nr_hugepages");
    let dir = state_dir("sigkill");
    let (ready_r, ready_w) = pipe().unwrap();
    // The run: takes the host, grows the pool, starts a trial process that
    // holds a page, and dies without restoring.
    // SAFETY: one thread; the child uses the guard and exits with _exit.
    let run = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let mut g = acquire(&dir);
            let base = count("nr_hugepages");
            g.set(&Knob::new(&knob, (base + 1).to_string())).unwrap();
            let holder = hold_a_page();
            g.track_group(holder.pid.as_raw());
            let mut msg = holder.pid.as_raw().to_ne_bytes().to_vec();
            msg.extend((base as u32).to_ne_bytes());
            let _ = write(&ready_w, &msg);
            std::mem::forget(holder); // never released: it outlives the run
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let mut b = [0u8; 8];
    assert_eq!(read(&ready_r, &mut b).unwrap(), 8);
    let holder = Pid::from_raw(i32::from_ne_bytes(b[..4].try_into().unwrap()));
    let base = u64::from(u32::from_ne_bytes(b[4..].try_into().unwrap()));
    let held = count("nr_hugepages");
    kill(run, Signal::SIGKILL).unwrap();
    let _ = waitpid(run, None);
    // Another run may take the host first; it leaves our journal alone.
    let deadline = Instant::now() + Duration::from_secs(600);
    let report = loop {
        match guard::restore_from_journal(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => break other,
        }
    };
    // Whatever the restore did, leave no holder behind.
    let _ = kill(holder, Signal::SIGKILL);
    let check = state_dir("sigkill-check");
    let g = acquire(&check);
    let back = pool_back_at(base);
    set_pool(base);
    drop(g);
    let _ = fs::remove_dir_all(&dir);
    let report = report
        .map_err(|e| format!("restore failed: {e}"))?
        .ok_or("the killed run left no journal")?;
    if held != base + 1 {
        return Err(format!(
            "setup: the killed run's page was not there: {}",
            pool()
        ));
    }
    if !report.is_clean() {
        return Err(format!("restore reported problems: {:?}", report.problems));
    }
    if !report
        .changed
        .iter()
        .any(|c| c.starts_with("stopped 1 process"))
    {
        return Err(format!(
            "restore does not say it stopped the trial: {:?}",
            report.changed
        ));
    }
    back
}

fn main() {
    type Check = fn() -> Result<(), String>;
    let tests: [(&str, Check); 2] = [
        (
            "surplus_page_of_an_earlier_run_is_not_journaled",
            surplus_page_of_an_earlier_run_is_not_journaled,
        ),
        (
            "restore_after_sigkill_stops_the_trial_holding_a_page",
            restore_after_sigkill_stops_the_trial_holding_a_page,
        ),
    ];
    libtest::main(
        tests
            .into_iter()
            .map(|(name, f)| libtest::check_unless(libtest::host(name), unfit, f))
            .collect(),
    )
}
