//! A soak of the host guard (tracker issue 17): `cowgup run` killed at random
//! times with random signals must leave every host setting it may touch as
//! it was. Ignored: plain `cargo test` does not run it. As root:
//!
//! ```sh
//! cargo build --release -p cowgup
//! COWGUP_SOAK_KILLS=200 COWGUP_SOAK_CONTENDED=50 \
//!     cargo test -p cowgup --release --test soak -- --ignored
//! ```
//!
//! Each *kill* starts `cowgup run` (a random selection: the whole catalogue,
//! one `--family`, or filters that provision 1 GiB / 2 MiB hugetlb pools,
//! swap for MADV_PAGEOUT and the swapped-out backings, gup_longterm's ext4
//! and tmpfs scratch mounts, huge=always tmpfs, THP sizes, KSM; `-j 1` or
//! `-j 2`; a state directory on disk or on tmpfs) and sends it SIGTERM,
//! SIGINT, SIGHUP or SIGKILL after a random delay. After SIGKILL it runs
//! `cowgup restore` (retried while the dying run still holds the host lock).
//! When the run's processes are gone, the host is compared with the
//! snapshot taken before the soak (`cowgup_fixtures::needs::host_settings`:
//! THP and mTHP knobs, khugepaged, every hugetlb pool, swap, zram, loop
//! devices, debugfs and scratch mounts, KSM, `/proc/sys/vm`, what is left in
//! the state directories, other state directories in /tmp, /var/tmp,
//! /dev/shm), and no process of the run (its session, or the cowgup binary)
//! nor file in its working or temp directory (`TMPDIR`) may be left.
//! Differences get a settle wait (surplus huge pages of dying processes are
//! freed a little later) before they count.
//!
//! A *contended* round starts two runs with `--lock-wait 30` (the second up
//! to 1 s after the first, same state directory) and kills one or both at
//! random times; a run that is not killed is cut short with SIGTERM after
//! `COWGUP_SOAK_RUN_LIMIT` seconds.
//!
//! Environment (printed at start):
//!
//! | variable | default | |
//! |---|---|---|
//! | `COWGUP_SOAK_KILLS` | 20 | kills of one run |
//! | `COWGUP_SOAK_CONTENDED` | 5 | contended rounds (two runs) |
//! | `COWGUP_SOAK_SEED` | from the clock | decimal or 0x-hex; each round's choices derive from (seed, round) |
//! | `COWGUP_SOAK_ONLY` | all | one round: `k7` (kill 7) or `c2` (contended round 2), to replay its choices (not the machine's timing) |
//! | `COWGUP_SOAK_DELAY` | `0.2..6` | seconds between start and signal |
//! | `COWGUP_SOAK_SETTLE` | 5 | seconds a difference may take to go away |
//! | `COWGUP_SOAK_RUN_LIMIT` | 120 | seconds before a run that is not to be killed gets SIGTERM |
//! | `COWGUP_SOAK_STATE_DIRS` | `/var/tmp/cowgup:/dev/shm/cowgup-soak` | state directories to choose from (tmpfs: the ext4 scratch is a loop-mounted image) |
//!
//! The host must be otherwise quiet: snapshots are taken holding the host
//! lock (no cowgup run is changing the host meanwhile), but other processes
//! using hugetlb pages change the pools' free counts. A difference names
//! the test binaries of other checkouts that were running.
//!
//! On a difference the round is printed (seed, round, signal, delay,
//! selection, how the run ended, `cowgup restore`'s answer), the settings
//! that differ, processes left, and the last lines the run printed; the
//! soak then kills what is left, restores again, takes the host as it is as
//! the new reference and goes on. It fails at the end with the count. On
//! success the last lines are `soak: N kills (M contended), 0 settings
//! changed` (N: the rounds, kills of one run plus contended rounds), the
//! signals sent and the time taken.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cowgup_fixtures::needs::{host_settings, snapshot_diff};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");

/// The host lock's name (harness/src/guard/lock.rs, `HOST_LOCK`): an abstract
/// unix socket only one cowgup process can bind. The soak binds it while it
/// takes a snapshot, so that no run is changing the host meanwhile.
const HOST_LOCK: &[u8] = b"cowgup-host-guard";

const SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGKILL,
];

/// How long a signalled run may take to end before it gets SIGKILL (its
/// restore waits up to 10 s per hugetlb pool).
const END_LIMIT: Duration = Duration::from_secs(120);

/// How long `cowgup restore` is retried while the host lock is held (by the
/// dying run, or in a contended round by the other run).
const RESTORE_RETRY: Duration = Duration::from_secs(10);

/// The fixtures' xorshift64*, seeded per round through splitmix64, so that
/// one round can be replayed without the ones before it.
struct Rng(cowgup_fixtures::seeded::XorShift);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng(cowgup_fixtures::seeded::XorShift::new(z ^ (z >> 31)))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

struct Params {
    kills: usize,
    contended: usize,
    seed: u64,
    only: Option<(char, usize)>,
    delay: (f64, f64),
    settle: Duration,
    run_limit: Duration,
    state_dirs: Vec<PathBuf>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_u64(name: &str, v: &str) -> Result<u64, String> {
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .map_err(|e| format!("{name}={v:?}: {e}"))
}

fn parse_secs(name: &str, v: &str) -> Result<f64, String> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("{name}={v:?}: not a number of seconds"))
}

impl Params {
    fn from_env() -> Result<Params, String> {
        let num = |name: &str, default: u64| -> Result<u64, String> {
            env_var(name).map_or(Ok(default), |v| parse_u64(name, &v))
        };
        let secs = |name: &str, default: f64| -> Result<Duration, String> {
            env_var(name)
                .map_or(Ok(default), |v| parse_secs(name, &v))
                .map(Duration::from_secs_f64)
        };
        let seed = match env_var("COWGUP_SOAK_SEED") {
            Some(v) => parse_u64("COWGUP_SOAK_SEED", &v)?,
            None => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_secs() ^ (u64::from(t.subsec_nanos()) << 20) ^ u64::from(std::process::id())
            }
        };
        let only = match env_var("COWGUP_SOAK_ONLY") {
            None => None,
            Some(v) => {
                let bad = || format!("COWGUP_SOAK_ONLY={v:?}: k<N> or c<N>");
                let mut chars = v.trim().chars();
                let kind = chars.next().filter(|c| *c == 'k' || *c == 'c');
                let n = chars.as_str().parse::<usize>().ok();
                Some((kind.ok_or_else(bad)?, n.ok_or_else(bad)?))
            }
        };
        let delay = match env_var("COWGUP_SOAK_DELAY") {
            None => (0.2, 6.0),
            Some(v) => {
                let (a, b) = v
                    .split_once("..")
                    .ok_or_else(|| format!("COWGUP_SOAK_DELAY={v:?}: FROM..TO seconds"))?;
                let (a, b) = (
                    parse_secs("COWGUP_SOAK_DELAY", a)?,
                    parse_secs("COWGUP_SOAK_DELAY", b)?,
                );
                if a > b {
                    return Err(format!("COWGUP_SOAK_DELAY={v:?}: FROM > TO"));
                }
                (a, b)
            }
        };
        let state_dirs: Vec<PathBuf> = match env_var("COWGUP_SOAK_STATE_DIRS") {
            Some(v) => v
                .split(':')
                .filter(|s| !s.is_empty())
                .map(Into::into)
                .collect(),
            None => {
                let mut v = vec![PathBuf::from("/var/tmp/cowgup")];
                if cowgup_harness::probe::fs_type(Path::new("/dev/shm")) == "tmpfs" {
                    v.push("/dev/shm/cowgup-soak".into());
                }
                v
            }
        };
        if state_dirs.is_empty() {
            return Err("COWGUP_SOAK_STATE_DIRS names no directory".into());
        }
        Ok(Params {
            kills: num("COWGUP_SOAK_KILLS", 20)? as usize,
            contended: num("COWGUP_SOAK_CONTENDED", 5)? as usize,
            seed,
            only,
            delay,
            settle: secs("COWGUP_SOAK_SETTLE", 5.0)?,
            run_limit: secs("COWGUP_SOAK_RUN_LIMIT", 120.0)?,
            state_dirs,
        })
    }

    fn print(&self) {
        println!(
            "soak: COWGUP_SOAK_KILLS={} COWGUP_SOAK_CONTENDED={} COWGUP_SOAK_SEED={:#x}{} \
             COWGUP_SOAK_DELAY={}..{} COWGUP_SOAK_SETTLE={} COWGUP_SOAK_RUN_LIMIT={} \
             COWGUP_SOAK_STATE_DIRS={}",
            self.kills,
            self.contended,
            self.seed,
            self.only
                .map_or(String::new(), |(k, n)| format!(" COWGUP_SOAK_ONLY={k}{n}")),
            self.delay.0,
            self.delay.1,
            self.settle.as_secs_f64(),
            self.run_limit.as_secs_f64(),
            self.state_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        );
        println!("soak: binary {COWGUP}");
    }
}

/// Selections that provision different things (checked with `cowgup list`
/// at start; those this host has no trial for are dropped).
fn candidate_selections() -> Vec<Vec<&'static str>> {
    let mut v: Vec<Vec<&str>> = vec![
        vec![], // the whole catalogue, as `cowgup run`
        vec!["1048576 kB"],
        vec!["hugetlb (2048 kB)"],
        vec!["hugetlb", "swapped"],
        vec!["MADV_PAGEOUT"],
        vec!["swapped"],
        vec![
            "file on a tmpfs scratch mount",
            "file on an ext4 scratch directory",
        ],
        vec!["huge=always"],
        vec!["shmem_enabled=always"],
        vec!["THP (16 kB)"],
        vec!["THP (64 kB)"],
        vec!["THP (2048 kB)"],
        vec!["KSM"],
        vec!["--family", "pins_under_reclaim", "1048576 kB"],
        vec![
            "MADV_PAGEOUT",
            "1048576 kB",
            "file on an ext4 scratch directory",
        ],
    ];
    // Every family of the registry: a new one is soaked without an edit here.
    for f in cowgup_tests::Family::all().map(cowgup_tests::Family::id) {
        v.push(vec!["--family", f]);
    }
    v
}

fn usable_selections() -> Result<Vec<Vec<String>>, String> {
    let mut usable = Vec::new();
    let mut dropped = Vec::new();
    for sel in candidate_selections() {
        let out = Command::new(COWGUP)
            .arg("list")
            .args(&sel)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {COWGUP} list: {e}"))?;
        let n = String::from_utf8_lossy(&out.stdout).lines().count();
        if out.status.success() && n > 0 {
            usable.push(sel.iter().map(|s| s.to_string()).collect());
        } else {
            dropped.push(format!("{sel:?}"));
        }
    }
    println!(
        "soak: {} selections{}",
        usable.len(),
        if dropped.is_empty() {
            String::new()
        } else {
            format!(" (none on this host: {})", dropped.join(", "))
        }
    );
    if usable.is_empty() {
        return Err("no selection has a trial on this host".into());
    }
    Ok(usable)
}

fn sig_name(s: Signal) -> &'static str {
    s.as_str()
}

/// One `cowgup run` of a round and what the round does to it.
struct Planned {
    selection: Vec<String>,
    jobs: u32,
    /// The signal and the delay after the run's start; None: not killed.
    kill: Option<(Signal, Duration)>,
    /// After the round's start.
    start_after: Duration,
}

impl Planned {
    fn describe(&self) -> String {
        let sel = if self.selection.is_empty() {
            "(whole catalogue)".to_string()
        } else {
            self.selection
                .iter()
                .map(|a| {
                    if a.contains(' ') || a.contains('(') {
                        format!("{a:?}")
                    } else {
                        a.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let kill = match self.kill {
            Some((s, d)) => format!("{} after {:.2} s", sig_name(s), d.as_secs_f64()),
            None => "not killed".into(),
        };
        let start = if self.start_after.is_zero() {
            String::new()
        } else {
            format!(", started {:.2} s later", self.start_after.as_secs_f64())
        };
        format!("run {sel} -j {}: {kill}{start}", self.jobs)
    }
}

struct Round {
    name: String,
    state_dir: PathBuf,
    runs: Vec<Planned>,
}

/// A run being watched.
struct Running {
    child: Child,
    pid: i32,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
    signalled: Option<(Signal, Instant)>,
    /// Signals the soak sent, in order (a SIGKILL after END_LIMIT included).
    sent: Vec<Signal>,
    ended_at: Option<Instant>,
}

impl Running {
    fn poll(&mut self) {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                self.ended_at = Some(Instant::now());
            }
        }
    }

    fn send(&mut self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid), sig);
        self.sent.push(sig);
        if self.signalled.is_none() {
            self.signalled = Some((sig, Instant::now()));
        }
    }

    fn how_it_ended(&self) -> String {
        let at = self.ended_at.map_or(String::new(), |t| {
            format!(" at {:.2} s", (t - self.started).as_secs_f64())
        });
        let sent = self.signalled.map_or(String::new(), |(sig, t)| {
            format!(
                "{} sent at {:.2} s, ",
                sig.as_str(),
                (t - self.started).as_secs_f64()
            )
        });
        let end = match self.status {
            None => "still running".into(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exited {c}{at}"),
                (_, Some(n)) => format!(
                    "died of {}{at}",
                    Signal::try_from(n).map_or_else(|_| n.to_string(), |s| s.as_str().into())
                ),
                _ => format!("{s:?}{at}"),
            },
        };
        format!("{sent}{end}")
    }

    fn lock_was_busy(&self) -> bool {
        self.status.is_some_and(|s| s.code() == Some(2))
            && fs::read_to_string(&self.err)
                .unwrap_or_default()
                .contains("is changing this host's settings")
    }
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Bind the host lock, waiting up to `wait` for whoever holds it.
fn take_host_lock(wait: Duration) -> Option<UnixListener> {
    let deadline = Instant::now() + wait;
    let addr = SocketAddr::from_abstract_name(HOST_LOCK).ok()?;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(l) => return Some(l),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// A process of /proc: (pid, ppid, session, state, comm, exe).
struct Proc {
    pid: i32,
    ppid: i32,
    sid: i32,
    state: char,
    comm: String,
    exe: String,
}

fn processes() -> Vec<Proc> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let exe = fs::read_link(e.path().join("exe"))
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .unwrap_or_default();
        v.push(Proc {
            pid,
            ppid: f[1].parse().unwrap_or(0),
            sid: f[3].parse().unwrap_or(0),
            state: f[0].chars().next().unwrap_or('?'),
            comm,
            exe,
        });
    }
    v
}

/// `cowgup restore`, retried while the host lock is held by someone else
/// (the dying run, or the other run of a contended round). Returns a line
/// for the report and whether it went well (a lock still held when the
/// retries end counts as well: the holder replays the journal itself).
fn restore(state_dir: &Path, retry: Duration) -> (String, bool) {
    let t = Instant::now();
    let deadline = t + retry;
    let mut tries = 0;
    loop {
        tries += 1;
        let out = match Command::new(COWGUP)
            .arg("restore")
            .arg("--state-dir")
            .arg(state_dir)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(e) => return (format!("cannot run cowgup restore: {e}"), false),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let busy =
            out.status.code() == Some(2) && text.contains("is changing this host's settings");
        if busy && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let line = format!(
            "cowgup restore ({tries} tries, {:.2} s): exit {}: {}",
            t.elapsed().as_secs_f64(),
            out.status.code().map_or("?".into(), |c| c.to_string()),
            text.trim().replace('\n', " | ")
        );
        return (line, out.status.success() || busy);
    }
}

struct Soak {
    p: Params,
    selections: Vec<Vec<String>>,
    work: PathBuf,
    cwd: PathBuf,
    tmp: PathBuf,
    exe: String,
    /// The host as the soak found it.
    original: BTreeMap<String, String>,
    /// What the next round is compared with (the original until a
    /// difference was found and the host taken as it then was).
    reference: BTreeMap<String, String>,
    sent: BTreeMap<&'static str, usize>,
    rounds: usize,
    contended_rounds: usize,
    ended_before_signal: usize,
    lock_busy_retries: usize,
    differences: usize,
    settings_changed: usize,
    slowest_settle: Duration,
    /// Time spent waiting for other cowgup runs to release the host lock.
    lock_waited: std::cell::Cell<Duration>,
}

/// A round's runs once they have ended, with the restores' answers
/// (`notes`) and what went wrong on the way (`problems`).
struct Ended {
    runs: Vec<Running>,
    notes: Vec<String>,
    problems: Vec<String>,
}

struct Difference {
    diff: Vec<String>,
    left: Vec<String>,
    files: Vec<String>,
}

impl Soak {
    fn state_dir_refs(&self) -> Vec<&Path> {
        self.p.state_dirs.iter().map(|d| d.as_path()).collect()
    }

    /// The host's settings, read while holding the host lock (so no cowgup
    /// run is halfway through changing them).
    fn snapshot(&self) -> BTreeMap<String, String> {
        let t = Instant::now();
        let lock = take_host_lock(Duration::from_secs(600));
        self.lock_waited.set(self.lock_waited.get() + t.elapsed());
        let mut s = host_settings(&self.state_dir_refs());
        if lock.is_none() {
            s.insert(
                "soak: host lock".into(),
                "held by another process for 600 s; snapshot taken anyway".into(),
            );
        }
        s
    }

    /// Processes of these runs (their sessions) and any process of this
    /// cowgup binary. Zombies are dead: the soak (a subreaper) reaps its own.
    fn left_processes(&self, sids: &[i32]) -> Vec<Proc> {
        let me = std::process::id() as i32;
        processes()
            .into_iter()
            .filter(|p| p.pid != me && (sids.contains(&p.sid) || p.exe == self.exe))
            .filter(|p| {
                if p.state == 'Z' {
                    if p.ppid == me {
                        let _ = nix::sys::wait::waitpid(
                            Pid::from_raw(p.pid),
                            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                        );
                    }
                    false
                } else {
                    true
                }
            })
            .collect()
    }

    /// Test binaries of other checkouts running now (they may change the host).
    fn others(&self) -> Vec<String> {
        let me = std::process::id() as i32;
        processes()
            .into_iter()
            .filter(|p| {
                p.pid != me
                    && p.exe != self.exe
                    && (p.exe.contains("/target/debug/") || p.exe.contains("/target/release/"))
                    && !p.exe.ends_with("/build-script-build")
            })
            .map(|p| format!("pid {} {}", p.pid, p.exe))
            .collect()
    }

    /// Files the runs left in the soak's own working and temp directories.
    fn left_files(&self) -> Vec<String> {
        [&self.cwd, &self.tmp]
            .iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .collect()
    }

    fn plan(&self, kind: char, index: usize) -> Round {
        let stream = if kind == 'k' { 0 } else { 1u64 << 40 } | index as u64;
        let mut rng = Rng::new(self.p.seed, stream);
        let state_dir = rng.pick(&self.p.state_dirs).clone();
        let one = |rng: &mut Rng, killed: bool, start_after: Duration| {
            // The whole catalogue (what the finding ran) one time in five,
            // else any selection (the whole catalogue is one of them too).
            let selection = if rng.below(5) == 0 {
                Vec::new()
            } else {
                rng.pick(&self.selections).clone()
            };
            let jobs = if rng.below(10) < 3 { 2 } else { 1 };
            let sig = *rng.pick(&SIGNALS);
            let (a, b) = self.p.delay;
            let delay = Duration::from_secs_f64(a + (b - a) * rng.unit());
            Planned {
                selection,
                jobs,
                kill: killed.then_some((sig, delay)),
                start_after,
            }
        };
        let runs = if kind == 'k' {
            vec![one(&mut rng, true, Duration::ZERO)]
        } else {
            // Both killed (one time in two), or only the first, or only
            // the second.
            let which = rng.below(4);
            let stagger = Duration::from_secs_f64(rng.unit());
            vec![
                one(&mut rng, which != 2, Duration::ZERO),
                one(&mut rng, which != 1, stagger),
            ]
        };
        Round {
            name: format!("{kind}{index}"),
            state_dir,
            runs,
        }
    }

    fn spawn(&self, round: &Round, i: usize, contended: bool) -> io::Result<Running> {
        let planned = &round.runs[i];
        let out = self.work.join(format!("{}-{i}.out", round.name));
        let err = self.work.join(format!("{}-{i}.err", round.name));
        let mut c = Command::new(COWGUP);
        c.arg("run")
            .args(&planned.selection)
            .arg("--jobs")
            .arg(planned.jobs.to_string())
            .arg("--state-dir")
            .arg(&round.state_dir);
        if contended {
            c.args(["--lock-wait", "30"]);
        }
        c.current_dir(&self.cwd)
            .env("TMPDIR", &self.tmp)
            .env_remove("COWGUP_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        // SAFETY: setsid() is async-signal-safe; the run gets a session of
        // its own, so every process it starts can be found by its sid.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        let child = c.spawn()?;
        Ok(Running {
            pid: child.id() as i32,
            child,
            started: Instant::now(),
            out,
            err,
            status: None,
            signalled: None,
            sent: Vec::new(),
            ended_at: None,
        })
    }

    /// Run one round: start, signal, restore after SIGKILL, wait for the end.
    /// Returns the runs and notes (restore answers, problems).
    fn execute(&mut self, round: &Round) -> Result<Ended, String> {
        let contended = round.runs.len() > 1;
        let t0 = Instant::now();
        let mut runs: Vec<Option<Running>> = round.runs.iter().map(|_| None).collect();
        let mut notes = Vec::new();
        let mut problems = Vec::new();
        let mut killed_hard = false;
        let mut restores = Vec::new();
        loop {
            let now = Instant::now();
            for (i, planned) in round.runs.iter().enumerate() {
                if runs[i].is_none() && now >= t0 + planned.start_after {
                    runs[i] = Some(
                        self.spawn(round, i, contended)
                            .map_err(|e| format!("cannot start {COWGUP}: {e}"))?,
                    );
                }
                let Some(r) = runs[i].as_mut() else {
                    continue;
                };
                r.poll();
                if r.status.is_some() {
                    continue;
                }
                let age = now - r.started;
                match (planned.kill, r.signalled) {
                    (Some((sig, delay)), None) if age >= delay => {
                        r.send(sig);
                        *self.sent.entry(sig_name(sig)).or_default() += 1;
                        if sig == Signal::SIGKILL {
                            killed_hard = true;
                            // The dying run may hold the lock a moment more;
                            // in a contended round the other run may take it.
                            // Restored beside the loop, which goes on
                            // signalling the other run on time.
                            let retry = if contended {
                                Duration::from_secs(3)
                            } else {
                                RESTORE_RETRY
                            };
                            let dir = round.state_dir.clone();
                            restores.push((i, std::thread::spawn(move || restore(&dir, retry))));
                        }
                    }
                    (None, None) if age >= self.p.run_limit => {
                        r.send(Signal::SIGTERM);
                        *self.sent.entry("SIGTERM").or_default() += 1;
                        notes.push(format!(
                            "run {i} cut short with SIGTERM after {:.0} s",
                            age.as_secs_f64()
                        ));
                    }
                    (_, Some((sig, at)))
                        if now - at >= END_LIMIT && !r.sent.contains(&Signal::SIGKILL) =>
                    {
                        problems.push(format!(
                            "run {i} did not end within {} s of {}: sent SIGKILL",
                            END_LIMIT.as_secs(),
                            sig_name(sig)
                        ));
                        r.send(Signal::SIGKILL);
                        killed_hard = true;
                    }
                    (_, Some((sig, at))) if now - at >= 2 * END_LIMIT => {
                        return Err(format!(
                            "round {}: run {i} (pid {}) is still there {} s after {} and SIGKILL",
                            round.name,
                            r.pid,
                            (now - at).as_secs(),
                            sig_name(sig)
                        ));
                    }
                    _ => {}
                }
            }
            if runs
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.status.is_some()))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let runs: Vec<Running> = runs.into_iter().flatten().collect();
        let restores_after_kill = restores.len();
        for (i, h) in restores {
            let (line, ok) = h
                .join()
                .unwrap_or_else(|_| ("the restore thread panicked".into(), false));
            notes.push(format!("after SIGKILL of run {i}: {line}"));
            if !ok {
                problems.push(format!("restore failed: {line}"));
            }
        }
        if killed_hard && (contended || restores_after_kill == 0) {
            // Whatever journal a killed run left and nobody replayed yet
            // (in a contended round; or a run the soak had to SIGKILL).
            let (line, ok) = restore(&round.state_dir, RESTORE_RETRY);
            notes.push(format!("after the runs ended: {line}"));
            if !ok {
                problems.push(format!("restore failed: {line}"));
            }
        }
        for (i, r) in runs.iter().enumerate() {
            let said: Vec<String> = fs::read_to_string(&r.err)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("could not restore"))
                .map(|l| l.to_string())
                .collect();
            if !said.is_empty() {
                problems.push(format!("run {i} said: {}", said.join(" | ")));
            }
        }
        Ok(Ended {
            runs,
            notes,
            problems,
        })
    }

    /// Wait up to the settle time for the host to be as it was and the
    /// runs' processes and files to be gone.
    fn settle(&mut self, sids: &[i32]) -> Option<Difference> {
        let t = Instant::now();
        let waited = self.lock_waited.get();
        // Time spent waiting for another run to release the host lock is
        // not settling time.
        let settling = |s: &Self| t.elapsed().saturating_sub(s.lock_waited.get() - waited);
        loop {
            let left = self.left_processes(sids);
            let now = self.snapshot();
            let diff = snapshot_diff(&self.reference, &now);
            let files = self.left_files();
            if diff.is_empty() && left.is_empty() && files.is_empty() {
                self.slowest_settle = self.slowest_settle.max(settling(self));
                return None;
            }
            if settling(self) >= self.p.settle {
                return Some(Difference {
                    diff,
                    left: left
                        .iter()
                        .map(|p| {
                            format!(
                                "pid {} ({}) state {} ppid {} sid {} exe {}",
                                p.pid, p.comm, p.state, p.ppid, p.sid, p.exe
                            )
                        })
                        .collect(),
                    files,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After a difference: stop what the runs left, restore again, and take
    /// the host as it now is as the reference for the next rounds.
    fn clean_up(&mut self, round: &Round, sids: &[i32]) {
        for p in self.left_processes(sids) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.left_processes(sids).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (line, _) = restore(&round.state_dir, RESTORE_RETRY);
        println!("  clean-up: left processes killed; {line}");
        for f in self.left_files() {
            let _ = fs::remove_file(&f).or_else(|_| fs::remove_dir_all(&f));
        }
        std::thread::sleep(self.p.settle);
        self.reference = self.snapshot();
        let still = snapshot_diff(&self.original, &self.reference);
        if still.is_empty() {
            println!("  clean-up: the host is as the soak found it again");
        } else {
            println!("  clean-up: the host still differs from how the soak found it (the next rounds compare with it as it is now):");
            for d in still {
                println!("    {d}");
            }
        }
    }

    fn round(&mut self, kind: char, index: usize) -> Result<(), String> {
        let round = self.plan(kind, index);
        let t = Instant::now();
        let mut attempt = 0;
        let Ended {
            runs,
            notes,
            problems,
        } = loop {
            // Start only when no other cowgup holds the host.
            let waiting = Instant::now();
            drop(take_host_lock(Duration::from_secs(600)));
            self.lock_waited
                .set(self.lock_waited.get() + waiting.elapsed());
            let ended = self.execute(&round)?;
            let runs = &ended.runs;
            // A run that found the host held by a cowgup not of this soak
            // (no --lock-wait) never started: the round is run again.
            if kind == 'k' && runs.iter().any(|r| r.lock_was_busy()) && attempt < 5 {
                attempt += 1;
                self.lock_busy_retries += 1;
                println!(
                    "soak {}: the host lock was held by another process ({}); again",
                    round.name,
                    tail(&runs[0].err, 1).join(" ")
                );
                continue;
            }
            break ended;
        };
        self.rounds += 1;
        if kind == 'c' {
            self.contended_rounds += 1;
        }
        for (r, planned) in runs.iter().zip(&round.runs) {
            if planned.kill.is_some() && r.sent.is_empty() {
                self.ended_before_signal += 1;
            }
        }
        let sids: Vec<i32> = runs.iter().map(|r| r.pid).collect();
        let difference = self.settle(&sids);
        let ends: Vec<String> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let who = if runs.len() > 1 {
                    format!("run {i} ")
                } else {
                    String::new()
                };
                let before = if round.runs[i].kill.is_some() && r.sent.is_empty() {
                    " (before its signal)"
                } else {
                    ""
                };
                format!("{who}{}{before}", r.how_it_ended())
            })
            .collect();
        if difference.is_none() && problems.is_empty() {
            println!(
                "soak {} ({:.1} s): {} [{}]; {}; host unchanged",
                round.name,
                t.elapsed().as_secs_f64(),
                round
                    .runs
                    .iter()
                    .map(|p| p.describe())
                    .collect::<Vec<_>>()
                    .join(" / "),
                round.state_dir.display(),
                ends.join(", "),
            );
            for n in &notes {
                println!("  {n}");
            }
            for r in &runs {
                let _ = fs::remove_file(&r.out);
                let _ = fs::remove_file(&r.err);
            }
            return Ok(());
        }
        self.differences += 1;
        println!(
            "soak {}: DIFFERENCE (COWGUP_SOAK_SEED={:#x} COWGUP_SOAK_ONLY={} replays the round)",
            round.name, self.p.seed, round.name
        );
        for (i, (p, r)) in round.runs.iter().zip(&runs).enumerate() {
            println!(
                "  run {i}: {} [state dir {}]; {}; signals sent: {:?}",
                p.describe(),
                round.state_dir.display(),
                r.how_it_ended(),
                r.sent.iter().map(|s| s.as_str()).collect::<Vec<_>>()
            );
        }
        for n in &notes {
            println!("  {n}");
        }
        for p in &problems {
            println!("  problem: {p}");
        }
        if let Some(d) = &difference {
            self.settings_changed += d.diff.len();
            println!(
                "  after {:.1} s of settling, compared with the host before the round:",
                self.p.settle.as_secs_f64()
            );
            for l in &d.diff {
                println!("    changed: {l}");
            }
            for l in &d.left {
                println!("    process left: {l}");
            }
            for l in &d.files {
                println!("    file left: {l}");
            }
        }
        let others = self.others();
        if !others.is_empty() {
            println!(
                "  other test binaries running now (they may change the host too): {}",
                others.join(", ")
            );
        }
        for (i, r) in runs.iter().enumerate() {
            for (what, path) in [("stderr", &r.err), ("stdout", &r.out)] {
                let lines = tail(path, 15);
                println!(
                    "  run {i}'s {what} (last {} lines, {}):",
                    lines.len(),
                    path.display()
                );
                for l in lines {
                    println!("    | {l}");
                }
            }
        }
        self.clean_up(&round, &sids);
        Ok(())
    }
}

fn soak() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the soak needs root: cowgup only changes host settings as root".into());
    }
    let p = Params::from_env()?;
    p.print();
    let started = Instant::now();
    // Processes the runs leave behind become the soak's children, so that it
    // can tell them from others' and reap them.
    // SAFETY: a prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let work = std::env::temp_dir().join(format!("guard-soak-{}", std::process::id()));
    let (cwd, tmp) = (work.join("cwd"), work.join("tmp"));
    fs::create_dir_all(&cwd)
        .and_then(|_| fs::create_dir_all(&tmp))
        .map_err(|e| format!("cannot make {}: {e}", work.display()))?;
    let exe = fs::canonicalize(COWGUP)
        .map_err(|e| format!("{COWGUP}: {e}"))?
        .to_string_lossy()
        .into_owned();
    let selections = usable_selections()?;
    if take_host_lock(Duration::ZERO).is_none() {
        println!("soak: another cowgup holds the host; waiting for it (up to 600 s)");
    }
    if take_host_lock(Duration::from_secs(600)).is_none() {
        let me = std::process::id() as i32;
        return Err(format!(
            "another process has held the host lock for 600 s ({}): the soak needs the host to itself",
            processes()
                .iter()
                .filter(|q| q.pid != me && (q.exe.contains("cowgup") || q.exe.contains("/target/")))
                .map(|q| format!("pid {} {}", q.pid, q.exe))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut soak = Soak {
        p,
        selections,
        work: work.clone(),
        cwd,
        tmp,
        exe,
        original: BTreeMap::new(),
        reference: BTreeMap::new(),
        sent: BTreeMap::new(),
        rounds: 0,
        contended_rounds: 0,
        ended_before_signal: 0,
        lock_busy_retries: 0,
        differences: 0,
        settings_changed: 0,
        slowest_settle: Duration::ZERO,
        lock_waited: std::cell::Cell::new(Duration::ZERO),
    };
    // A journal left by an earlier killed run would be replayed by the first
    // run of the soak and count as its doing: put it back first.
    for d in soak.p.state_dirs.clone() {
        if d.join("journal").exists() {
            let (line, ok) = restore(&d, RESTORE_RETRY);
            println!("soak: a journal was left in {}: {line}", d.display());
            if !ok {
                return Err(format!(
                    "cannot restore the journal left in {}",
                    d.display()
                ));
            }
        }
    }
    soak.original = soak.snapshot();
    soak.reference = soak.original.clone();
    println!(
        "soak: {} host settings and places watched, e.g. {}",
        soak.original.len(),
        soak.original
            .iter()
            .filter(|(k, _)| k.contains("nr_hugepages")
                || k.starts_with("swap")
                || k.starts_with("state dir"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let others = soak.others();
    if !others.is_empty() {
        println!(
            "soak: note: other test binaries are running: {}",
            others.join(", ")
        );
    }
    let plan: Vec<(char, usize)> = match soak.p.only {
        Some(one) => vec![one],
        None => (0..soak.p.kills)
            .map(|i| ('k', i))
            .chain((0..soak.p.contended).map(|i| ('c', i)))
            .collect(),
    };
    for (kind, i) in plan {
        soak.round(kind, i)?;
    }
    let total = started.elapsed();
    let last = snapshot_diff(&soak.original, &soak.snapshot());
    if !last.is_empty() {
        println!("soak: the host now differs from how the soak found it:");
        for d in &last {
            println!("    {d}");
        }
    }
    let _ = fs::remove_dir_all(&work);
    println!(
        "soak: {} kills ({} contended), {} settings changed",
        soak.rounds, soak.contended_rounds, soak.settings_changed
    );
    println!(
        "soak: signals sent: {}; runs that ended before their signal: {}; rounds run again because another process held the host lock: {}",
        SIGNALS
            .iter()
            .map(|s| format!("{} {}", s.as_str(), soak.sent.get(s.as_str()).unwrap_or(&0)))
            .collect::<Vec<_>>()
            .join(", "),
        soak.ended_before_signal,
        soak.lock_busy_retries
    );
    println!(
        "soak: {:.1} s in all, {:.1} s per kill; slowest settle {:.2} s; {:.1} s waiting for other cowgup runs to release the host",
        total.as_secs_f64(),
        total.as_secs_f64() / soak.rounds.max(1) as f64,
        soak.slowest_settle.as_secs_f64(),
        soak.lock_waited.get().as_secs_f64()
    );
    if soak.differences > 0 {
        return Err(format!(
            "{} of {} kills left the host changed or could not restore it ({} settings)",
            soak.differences, soak.rounds, soak.settings_changed
        ));
    }
    if !last.is_empty() {
        return Err(format!(
            "the host differs after the soak in {} settings",
            last.len()
        ));
    }
    Ok(())
}

fn main() {
    cowgup_harness::libtest::main(vec![cowgup_harness::libtest::check(
        cowgup_harness::libtest::host(
            "soak: cowgup run killed by random signals at random times restores the host",
        ),
        soak,
    )
    .with_ignored_flag(true)])
}
