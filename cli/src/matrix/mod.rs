//! `cowgup matrix`: the suite on several kernels, one cell per kernel (the
//! default topology), guests under qemu, cells in parallel, one report.
//!
//! - `spec`: what `--kernel` names, and fetching Debian's kernels;
//! - `initramfs`: the guest's root and `/init`;
//! - `qemu`: the command line, and a child process under a time limit;
//! - `collect`: a cell's result (the suite's JSON from ttyS1) or why none;
//! - `report`: the table, the JSON document and the HTML page.

pub mod collect;
pub mod initramfs;
pub mod qemu;
pub mod report;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;

use collect::Cell;
use spec::KernelSpec;

#[derive(Args, Clone, Debug)]
pub struct MatrixArgs {
    /// A kernel to run the suite on (repeatable): `host`, a path to a bzImage/vmlinuz, `debian:6.1` or `debian:6.12`.
    #[arg(long, value_name = "SPEC", required = true)]
    pub kernel: Vec<KernelSpec>,
    /// Cells run at once [default: half the CPUs, at least 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub jobs: Option<u64>,
    /// Time limit of one cell (boot, suite, report), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout_cell: u64,
    /// Run trials whose names contain any FILTER (all when none given).
    pub filters: Vec<String>,
    /// Match FILTERs (and --skip) against whole names.
    #[arg(long)]
    pub exact: bool,
    /// Leave out trials whose names contain PATTERN (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub skip: Vec<String>,
    /// Run the 1 GiB hugetlb trials in guests too (two pages reserved at boot; slow under TCG).
    #[arg(long)]
    pub with_1g: bool,
    /// Appended to every guest's kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// The static cowgup to put in guests [default: this program if static, else built with cargo].
    #[arg(long, value_name = "FILE")]
    pub guest_bin: Option<PathBuf>,
    /// Use KVM instead of TCG (needs /dev/kvm; stock kernels do not boot under every KVM).
    #[arg(long)]
    pub kvm: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Write the JSON report to FILE (the table still goes to the terminal).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page (a heat map, then each cell's details) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// the table, unexpected results and skip reasons
    Human,
    /// {"cells": [...]}: every cell's totals, unexpected results and trials
    Json,
}

/// What every guest cell shares.
struct Shared {
    initrd: PathBuf,
    work: PathBuf,
    args: MatrixArgs,
}

/// The suite's arguments inside a cell.
fn suite_args(a: &MatrixArgs, guest: bool) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if guest {
        // Under TCG a 1 GiB page takes seconds to clear or copy.
        v.extend(["--timeout".into(), "600".into()]);
    }
    if a.exact && !a.filters.is_empty() {
        v.push("--exact".into());
    }
    v.extend(a.filters.iter().cloned());
    for s in &a.skip {
        v.extend(["--skip".into(), s.clone()]);
    }
    if guest && !a.with_1g {
        v.extend(["--skip".into(), "1048576 kB".into()]);
    }
    v
}

fn source_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").exists().then_some(dir)
}

/// A statically linked cowgup for the guests: `--guest-bin`, this program
/// when static, or a release build with `crt-static` from this checkout.
fn guest_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let is_static = |p: &Path| {
        std::fs::read(p)
            .map(|b| initramfs::is_static_elf(&b))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    if let Some(p) = explicit {
        return if is_static(p)? {
            Ok(p.into())
        } else {
            Err(format!("{}: not a static executable", p.display()))
        };
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if is_static(&me)? {
        return Ok(me);
    }
    let src = source_dir().ok_or(
        "this cowgup is linked dynamically and its sources are not here: pass --guest-bin a static build",
    )?;
    let target_dir = src.join("target").join("static");
    eprintln!("cowgup: building a static cowgup for the guests (cargo, target/static)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--quiet", "--release", "-p", "cowgup"])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the static build failed ({status})"));
    }
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/cowgup");
    if is_static(&bin)? {
        Ok(bin)
    } else {
        Err(format!("{}: built, but not static", bin.display()))
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn prepare(args: &MatrixArgs, work: &Path) -> Result<Shared, String> {
    for t in ["qemu-system-x86_64", "mkfs.ext4"] {
        tool(t).ok_or(format!(
            "{t} not found (apt-get install qemu-system-x86 e2fsprogs busybox-static)"
        ))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| std::fs::read(p).is_ok_and(|b| initramfs::is_static_elf(&b)))
        .ok_or("no static busybox (apt-get install busybox-static)")?;
    if args.kvm {
        qemu::kvm_usable()?;
    }
    let cowgup = guest_binary(args.guest_bin.as_deref())?;
    let initrd = work.join("initrd.cpio");
    let entries = initramfs::entries(&busybox, &cowgup, &suite_args(args, true));
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&initrd).map_err(|e| format!("{}: {e}", initrd.display()))?,
    );
    initramfs::write_cpio(&mut f, &entries)
        .and_then(|_| std::io::Write::flush(&mut f))
        .map_err(|e| format!("cannot write the initramfs: {e}"))?;
    Ok(Shared {
        initrd,
        work: work.into(),
        args: args.clone(),
    })
}

fn read_lossy(p: &Path) -> String {
    collect::clean_console(&std::fs::read(p).unwrap_or_default())
}

/// One boot: the cell's result, or why there is none.
fn boot(shared: &Shared, label: &str, kernel: &Path, dir: &Path) -> Cell {
    let start = Instant::now();
    let mut disks = Vec::new();
    for d in ["nvme", "virtio"] {
        let img = dir.join(format!("{d}.img"));
        let made = std::fs::File::create(&img)
            .and_then(|f| f.set_len(2 << 30))
            .map_err(|e| e.to_string())
            .and_then(|_| {
                Command::new("mkfs.ext4")
                    .args(["-q", "-F"])
                    .arg(&img)
                    .status()
                    .map_err(|e| e.to_string())
            });
        if !matches!(made, Ok(s) if s.success()) {
            return Cell::broken(
                label,
                start.elapsed(),
                format!("cannot make the ext4 disk: {made:?}"),
                vec![],
            );
        }
        disks.push(img);
    }
    let g = qemu::Guest {
        kernel: kernel.into(),
        initrd: shared.initrd.clone(),
        console: dir.join("console.log"),
        result: dir.join("result.txt"),
        disks,
        kvm: shared.args.kvm,
        with_1g: shared.args.with_1g,
        extra_cmdline: shared.args.append.iter().cloned().collect(),
    };
    let limit = Duration::from_secs(shared.args.timeout_cell);
    let ended = qemu::run_limited(
        Command::new("qemu-system-x86_64").args(qemu::argv(&g)),
        &dir.join("qemu.log"),
        limit,
    );
    let wall = start.elapsed();
    for d in &g.disks {
        let _ = std::fs::remove_file(d);
    }
    let console = read_lossy(&g.console);
    let mut tail = collect::tail(&console, 25);
    let qemu_log = read_lossy(&dir.join("qemu.log"));
    tail.extend(qemu_log.lines().map(|l| format!("qemu: {l}")));
    let channel =
        String::from_utf8_lossy(&std::fs::read(&g.result).unwrap_or_default()).into_owned();
    let why = match (&ended, collect::unframe(&channel)) {
        (Err(e), _) => e.clone(),
        (_, Some(json)) => match collect::parse_report(json) {
            Ok(r) => return Cell::ran(label, wall, r),
            Err(e) => e,
        },
        (Ok(qemu::Ended::TimedOut), None) => format!(
            "no result within {} s (the cell's time limit): the guest was stopped{}",
            limit.as_secs(),
            if collect::reached_init(&console) {
                ""
            } else {
                "; /init never started"
            }
        ),
        (Ok(qemu::Ended::Exited(status)), None) => format!(
            "qemu ended ({status}) without a result{}",
            if collect::reached_init(&console) {
                ""
            } else if console.trim().is_empty() {
                "; nothing on the console (qemu could not start the kernel?)"
            } else {
                "; the kernel died before /init started"
            }
        ),
    };
    Cell::broken(label, wall, why, tail)
}

/// A guest cell: boot once; a kernel that died before `/init` (a rare TCG
/// boot flake seen here) gets one more boot.
fn guest_cell(shared: &Shared, label: &str, spec: &KernelSpec, index: usize) -> Cell {
    let start = Instant::now();
    let kernel = match spec {
        KernelSpec::Debian(series) => match spec::fetch_debian(series) {
            Ok(k) => k,
            Err(e) => return Cell::broken(label, start.elapsed(), e, vec![]),
        },
        KernelSpec::Image(p) => p.clone(),
        KernelSpec::Host => unreachable!("the host cell runs no guest"),
    };
    let dir = shared.work.join(format!("cell-{index}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Cell::broken(label, start.elapsed(), e.to_string(), vec![]);
    }
    let first = boot(shared, label, &kernel, &dir);
    // The kernel printed something but never reached /init (qemu refusing
    // the image prints nothing on the console: no second try for that).
    let console = read_lossy(&dir.join("console.log"));
    let died_early =
        first.broken.is_some() && !console.trim().is_empty() && !collect::reached_init(&console);
    let timed_out = first.wall >= Duration::from_secs(shared.args.timeout_cell);
    if died_early && !timed_out && first.wall < Duration::from_secs(60) {
        eprintln!("cowgup: {label}: the kernel died before /init; booting once more");
        let mut second = boot(shared, label, &kernel, &dir);
        second.wall += first.wall;
        if let Some(why) = &mut second.broken {
            why.push_str(" (twice)");
        }
        return second;
    }
    let mut cell = first;
    cell.wall = start.elapsed();
    cell
}

/// The host cell: this program's `run` as a subprocess.
fn host_cell(shared: &Shared, index: usize) -> Cell {
    let start = Instant::now();
    let dir = shared.work.join(format!("cell-{index}"));
    let _ = std::fs::create_dir_all(&dir);
    let report = dir.join("result.json");
    let log = dir.join("console.log");
    let me = std::env::current_exe().unwrap_or_else(|_| "cowgup".into());
    let ended = qemu::run_limited(
        Command::new(me)
            .args(["run", "--lock-wait", "600", "--format", "json", "--output"])
            .arg(&report)
            .args(suite_args(&shared.args, false)),
        &log,
        Duration::from_secs(shared.args.timeout_cell),
    );
    let wall = start.elapsed();
    let tail = collect::tail(&read_lossy(&log), 25);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    match (ended, collect::parse_report(&text)) {
        (Ok(_), Ok(r)) => Cell::ran("host", wall, r),
        (Err(e), _) => Cell::broken("host", wall, e, tail),
        (Ok(qemu::Ended::TimedOut), _) => Cell::broken(
            "host",
            wall,
            format!("no result within {} s", shared.args.timeout_cell),
            tail,
        ),
        (Ok(qemu::Ended::Exited(s)), r) => Cell::broken(
            "host",
            wall,
            format!(
                "cowgup run ended ({s}) without a report{}",
                r.err().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            tail,
        ),
    }
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}

pub fn matrix(args: &MatrixArgs) -> ExitCode {
    let work = match tempfile::Builder::new().prefix("cowgup-matrix-").tempdir() {
        Ok(w) => w,
        Err(e) => return crate::fatal(&format!("cannot make a work directory: {e}")),
    };
    let needs_guest = args.kernel.iter().any(|k| *k != KernelSpec::Host);
    let shared = if needs_guest {
        match prepare(args, work.path()) {
            Ok(s) => s,
            Err(e) => return crate::fatal(&e),
        }
    } else {
        Shared {
            initrd: PathBuf::new(),
            work: work.path().into(),
            args: args.clone(),
        }
    };
    // Open the outputs before the first cell: a bad path costs nothing.
    let create = |p: &Option<PathBuf>| match p {
        Some(p) => std::fs::File::create(p)
            .map(Some)
            .map_err(|e| format!("cannot write {}: {e}", p.display())),
        None => Ok(None),
    };
    let (mut sink, mut html_sink) = match (create(&args.output), create(&args.html)) {
        (Ok(s), Ok(h)) => (s, h),
        (Err(e), _) | (_, Err(e)) => return crate::fatal(&e),
    };
    let jobs = args.jobs.map(|j| j as usize).unwrap_or_else(default_jobs);
    let labels: Vec<String> = args.kernel.iter().map(KernelSpec::label).collect();
    eprintln!(
        "cowgup: matrix of {} cell(s) ({}), {} at a time, {} s per cell",
        labels.len(),
        labels.join(", "),
        jobs,
        args.timeout_cell
    );
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Cell>>> = Mutex::new(vec![None; args.kernel.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(args.kernel.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(spec) = args.kernel.get(i) else {
                    break;
                };
                let cell = match spec {
                    KernelSpec::Host => host_cell(&shared, i),
                    _ => guest_cell(&shared, &labels[i], spec, i),
                };
                eprintln!(
                    "cowgup: cell {} done in {:.0} s: {}",
                    labels[i],
                    cell.wall.as_secs_f64(),
                    cell.broken.as_deref().unwrap_or(if cell.ok() {
                        "no unexpected result"
                    } else {
                        "unexpected results"
                    })
                );
                results.lock().unwrap()[i] = Some(cell);
            });
        }
    });
    let cells: Vec<Cell> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    let doc = report::json(&cells);
    match args.format {
        Format::Human => print!("{}", report::render(&cells)),
        Format::Json if sink.is_none() => {
            println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"))
        }
        Format::Json => print!("{}", report::render(&cells)),
    }
    if let Some(f) = &mut sink {
        let text = match args.format {
            Format::Json => serde_json::to_string_pretty(&doc).expect("JSON"),
            Format::Human => report::render(&cells),
        };
        if let Err(e) = std::io::Write::write_all(f, text.as_bytes()) {
            eprintln!("cowgup: cannot write the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(f) = &mut html_sink {
        if let Err(e) = std::io::Write::write_all(f, report::html(&cells).as_bytes()) {
            eprintln!("cowgup: cannot write the HTML report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if cells.iter().all(Cell::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        m: MatrixArgs,
    }

    #[test]
    fn guests_skip_1g_unless_asked() {
        let t = T::parse_from([
            "x",
            "--kernel",
            "host",
            "--kernel",
            "debian:6.1",
            "vmsplice",
            "--skip",
            "memfd",
        ]);
        assert_eq!(
            t.m.kernel,
            [KernelSpec::Host, KernelSpec::Debian("6.1".into())]
        );
        assert_eq!(
            suite_args(&t.m, true),
            [
                "--timeout",
                "600",
                "vmsplice",
                "--skip",
                "memfd",
                "--skip",
                "1048576 kB"
            ]
        );
        assert_eq!(suite_args(&t.m, false), ["vmsplice", "--skip", "memfd"]);
        let t = T::parse_from(["x", "--kernel", "/k", "--with-1g"]);
        assert_eq!(suite_args(&t.m, true), ["--timeout", "600"]);
        assert_eq!(t.m.html, None);
        let t = T::parse_from([
            "x", "--kernel", "host", "--format", "json", "--output", "m.json", "--html", "m.html",
        ]);
        assert_eq!(t.m.output.as_deref(), Some(Path::new("m.json")));
        assert_eq!(t.m.html.as_deref(), Some(Path::new("m.html")));
        assert!(T::try_parse_from(["x", "--kernel", "build:6.12"]).is_err());
        assert!(T::try_parse_from(["x"]).is_err(), "--kernel is required");
    }
}
