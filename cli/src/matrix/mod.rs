//! `cowgup matrix`: the suite on several kernels, one cell per kernel and
//! topology, guests under qemu, cells in parallel, one report.
//!
//! A guest cell is a boot of `crate::guest` (kernel specs and builds, the
//! initramfs and `/init`, topologies, host tools, disk images, qemu); what
//! is here is the matrix's own:
//!
//! - `modules`: the kernel modules a cell's topology needs from its kernel,
//!   appended to the initramfs (only cells load them; `bench --guest` boots
//!   without a topology);
//! - `watch`: the console and result port read while the guest runs: event
//!   lines as the suite forms them, and a kernel fault, which ends the cell;
//! - `collect`: a cell's result (the suite's JSON from ttyS1, else what it
//!   streamed) or why none;
//! - `report`: the table, the JSON document and the HTML page.

pub mod collect;
pub mod modules;
pub mod report;
pub mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;

use crate::guest::tools::{guest_binary, static_busybox};
use crate::guest::{build, disk, initramfs, qemu, spec, tools, topology};
use collect::Cell;
use spec::KernelSpec;
use topology::Topology;

#[derive(Args, Clone, Debug)]
pub struct MatrixArgs {
    /// A kernel to run the suite on (repeatable): `host`, a path to a bzImage/vmlinuz, `debian:6.1`, `debian:6.12`, or `build:6.12` / `build:6.12+debug_vm` (built from linux-source-6.12 with cli/kernel-config/; cached; ~12 min).
    #[arg(long, value_name = "SPEC", required = true)]
    pub kernel: Vec<KernelSpec>,
    /// What each guest cell sets up (repeatable; a cell is kernel x topology): base, zram, ext4, fsdax, movable, or several joined with + [default: base].
    #[arg(long, value_name = "NAME")]
    pub topology: Vec<Topology>,
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
    /// Only trials of this family, in every cell (repeatable; `cowgup --help` lists them).
    #[arg(long, value_name = "ID", value_parser = clap::builder::PossibleValuesParser::new(crate::help::family_ids()))]
    pub family: Vec<String>,
    /// Run the 1 GiB hugetlb trials in guests too (two pages reserved at boot; slow under TCG).
    #[arg(long)]
    pub with_1g: bool,
    /// Test-only: the suite in each guest keeps every io_uring fixed buffer's pins
    /// after its trial, as a kernel that leaks pins would (`cowgup run --simulate-leak`).
    #[arg(long, hide = true)]
    pub simulate_leak: bool,
    /// Appended to every guest's kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// The static cowgup to put in guests [default: this program if static, else built with cargo].
    #[arg(long, value_name = "FILE")]
    pub guest_bin: Option<PathBuf>,
    /// KVM or TCG: `auto` uses KVM only when a probe boot of the first guest kernel under KVM reaches /init; `--kvm` alone is `on`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Kvm::Auto, num_args = 0..=1, default_missing_value = "on")]
    pub kvm: Kvm,
    /// Print what would run (kernel builds, qemu command lines) and stop.
    #[arg(long)]
    pub dry_run: bool,
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
pub enum Kvm {
    /// KVM if a probe boot shows a stock kernel really runs under it
    Auto,
    /// always KVM (needs /dev/kvm)
    On,
    /// always TCG
    Off,
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
    /// KVM (decided once, by `--kvm` and the probe).
    kvm: bool,
}

/// One cell to run: a kernel (its index in `--kernel`) and a topology.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    kernel: usize,
    topology: Topology,
}

/// Every kernel x topology; the host runs once (topologies are for guests).
fn plan(args: &MatrixArgs) -> Vec<Plan> {
    let topologies = if args.topology.is_empty() {
        vec![Topology::base()]
    } else {
        args.topology.clone()
    };
    let mut v = Vec::new();
    for (k, spec) in args.kernel.iter().enumerate() {
        if *spec == KernelSpec::Host {
            v.push(Plan {
                kernel: k,
                topology: Topology::base(),
            });
            continue;
        }
        for t in &topologies {
            v.push(Plan {
                kernel: k,
                topology: t.clone(),
            });
        }
    }
    v
}

/// The suite's arguments inside a cell.
fn suite_args(a: &MatrixArgs, guest: bool) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if guest {
        // Under TCG a 1 GiB page takes seconds to clear or copy.
        v.extend(["--timeout".into(), "600".into()]);
        v.extend(["--jobs".into(), qemu::GUEST_CPUS.to_string()]);
        if a.simulate_leak {
            v.push("--simulate-leak".into());
        }
    }
    v.extend(selection(a, guest));
    v
}

/// Which trials a cell runs: FILTERs, `--exact`, `--skip` (and, in guests,
/// no 1 GiB trials unless `--with-1g`), as `cowgup run` and `list` take them.
fn selection(a: &MatrixArgs, guest: bool) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if a.exact && !a.filters.is_empty() {
        v.push("--exact".into());
    }
    v.extend(a.filters.iter().cloned());
    for s in &a.skip {
        v.extend(["--skip".into(), s.clone()]);
    }
    for f in &a.family {
        v.extend(["--family".into(), f.clone()]);
    }
    if guest && !a.with_1g {
        v.extend(["--skip".into(), "1048576 kB".into()]);
    }
    v
}

/// A selection that picks no trial fails here, before anything boots (the
/// guests run this same catalogue): `cowgup list` says why.
fn check_selection(a: &MatrixArgs) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut kinds: Vec<bool> = a.kernel.iter().map(|k| *k != KernelSpec::Host).collect();
    kinds.dedup();
    for guest in kinds {
        let out = Command::new(&me)
            .arg("list")
            .args(selection(a, guest))
            .output()
            .map_err(|e| format!("cannot run {} list: {e}", me.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("cowgup: ")
                .to_string());
        }
    }
    Ok(())
}

fn prepare(args: &MatrixArgs, work: &Path) -> Result<Shared, String> {
    tools::require(
        &["qemu-system-x86_64", "mkfs.ext4"],
        " (apt-get install qemu-system-x86 e2fsprogs busybox-static)",
    )?;
    let busybox = static_busybox()?;
    if args.kvm == Kvm::On {
        qemu::kvm_usable()?;
    }
    let cowgup = guest_binary(args.guest_bin.as_deref())?;
    let initrd = work.join("initrd.cpio");
    let entries = initramfs::entries(&busybox, &cowgup, &suite_args(args, true));
    initramfs::write_initrd(&initrd, &entries)?;
    Ok(Shared {
        initrd,
        work: work.into(),
        args: args.clone(),
        kvm: args.kvm == Kvm::On,
    })
}

/// `--kvm auto`: KVM only when a probe boot of `kernel` under it reaches
/// `/init` (on the project's VM it does not: stock kernels hang in the
/// decompressor under its PVM-based KVM). The result is printed.
fn decide_kvm(mode: Kvm, kernel: Option<&Path>, work: &Path) -> bool {
    match mode {
        Kvm::On => true,
        Kvm::Off => false,
        Kvm::Auto => {
            let Some(kernel) = kernel else {
                eprintln!("cowgup: KVM probe: no guest kernel to probe with; using TCG");
                return false;
            };
            let limit = Duration::from_secs(20);
            let probe = static_busybox().and_then(|bb| qemu::probe_kvm(kernel, &bb, work, limit));
            match probe {
                Ok(()) => {
                    eprintln!(
                        "cowgup: KVM probe: {} reached /init under KVM; using KVM",
                        kernel.display()
                    );
                    true
                }
                Err(why) => {
                    eprintln!("cowgup: KVM probe: {why}; using TCG");
                    false
                }
            }
        }
    }
}

/// The qemu guest of a cell (paths under `dir`).
fn guest_of(shared: &Shared, kernel: &Path, topology: &Topology, dir: &Path) -> qemu::Guest {
    let mut extra_cmdline = topology.cmdline();
    extra_cmdline.extend(shared.args.append.iter().cloned());
    qemu::Guest {
        serial_disks: topology
            .disks(dir)
            .into_iter()
            .map(|d| (d.path, d.serial))
            .collect(),
        kvm: shared.kvm,
        with_1g: shared.args.with_1g,
        extra_cmdline,
        ..qemu::Guest::new(kernel, shared.initrd.clone(), dir)
    }
}

/// One boot: the cell's result, or why there is none.
fn boot(shared: &Shared, label: &str, kernel: &Path, topology: &Topology, dir: &Path) -> Cell {
    let start = Instant::now();
    let mut g = guest_of(shared, kernel, topology, dir);
    // Modules the topology needs from this kernel: appended as a second archive.
    match modules::for_cell(kernel, topology) {
        Ok(extra) if extra.is_empty() => {}
        Ok(extra) => {
            let initrd = dir.join("initrd.cpio");
            let made = std::fs::copy(&shared.initrd, &initrd)
                .and_then(|_| std::fs::OpenOptions::new().append(true).open(&initrd))
                .and_then(|f| {
                    let mut w = std::io::BufWriter::new(f);
                    initramfs::write_cpio(&mut w, &extra)?;
                    std::io::Write::flush(&mut w)
                });
            if let Err(e) = made {
                return Cell::broken(
                    label,
                    start.elapsed(),
                    format!("cannot add the topology's modules to the initramfs: {e}"),
                    vec![],
                );
            }
            g.initrd = initrd;
        }
        Err(e) => return Cell::broken(label, start.elapsed(), e, vec![]),
    }
    let mut images = disk::state_images(&g.disks);
    images.extend(
        topology
            .disks(dir)
            .into_iter()
            .map(|d| (d.path, d.bytes, d.mkfs)),
    );
    let made = images
        .iter()
        .try_for_each(|(p, bytes, opts)| disk::mkfs_image(p, *bytes, opts));
    let remove = || {
        for (p, _, _) in &images {
            let _ = std::fs::remove_file(p);
        }
    };
    if let Err(e) = made {
        remove();
        return Cell::broken(label, start.elapsed(), e, vec![]);
    }
    let limit = Duration::from_secs(shared.args.timeout_cell);
    // A file of an earlier boot of this cell must not be read as this one's.
    for f in [&g.console, &g.result] {
        let _ = std::fs::remove_file(f);
    }
    let mut watch = watch::GuestWatch::new(&g.console, &g.result);
    let booted = Instant::now();
    let ended = qemu::run_watched(
        Command::new("qemu-system-x86_64").args(qemu::argv(&g)),
        &dir.join("qemu.log"),
        limit,
        |t| watch.poll(t),
    );
    watch.finish(booted.elapsed());
    let wall = start.elapsed();
    remove();
    let console = qemu::read_lossy(&g.console);
    let mut tail = qemu::tail(&console, 25);
    let qemu_log = qemu::read_lossy(&dir.join("qemu.log"));
    tail.extend(qemu_log.lines().map(|l| format!("qemu: {l}")));
    let channel =
        String::from_utf8_lossy(&std::fs::read(&g.result).unwrap_or_default()).into_owned();
    let setup = topology::parse_setup(&channel);
    let fault = watch
        .console
        .fault
        .as_ref()
        .zip(watch.seen.as_ref())
        .map(|(f, seen)| {
            let seen_s = (booted.duration_since(start) + seen.at).as_secs_f64();
            // The guest's own kernel-log check names the trial for sure; the
            // stream's running trial at the time may already be the next one
            // (the guest went on after the fault before the host looked).
            let quoted =
                collect::quoted_by(&f.lines[0], &watch.port.raw_trials, &watch.port.numbers);
            collect::KernelFault {
                lines: f.lines.clone(),
                later: f.later.clone(),
                later_count: f.later_count,
                by_check: quoted.is_some(),
                trial: quoted.or_else(|| seen.running.as_ref().map(ToString::to_string)),
                after: seen.last_finished.as_ref().map(ToString::to_string),
                seen_s,
                ended_after_s: (wall.as_secs_f64() - seen_s).max(0.0),
            }
        });
    let stream = watch.port.stats();
    let mut cell = match (&ended, collect::unframe(&channel)) {
        (Err(e), _) => Cell::broken(label, wall, e.clone(), tail),
        (_, Some(json)) => match collect::parse_report(json) {
            Ok(r) => {
                let mut c = Cell::ran(label, wall, r);
                c.planned = watch.port.planned;
                c
            }
            Err(e) => Cell::streamed(label, wall, e, tail, &watch.port),
        },
        (Ok(ended), None) => {
            let how = match ended {
                qemu::Ended::TimedOut => format!(
                    "no result within {} s (the cell's time limit): the guest was stopped",
                    limit.as_secs()
                ),
                qemu::Ended::Exited(status) => format!("qemu ended ({status}) without a result"),
                qemu::Ended::Stopped(why) => why.clone(),
            };
            // A fault is reported as such (`KernelFault`): here only how the guest ended.
            let why = match &fault {
                Some(_) => how,
                None if collect::reached_init(&console) => how,
                None if matches!(ended, qemu::Ended::TimedOut) => {
                    format!("{how}; /init never started")
                }
                None if console.trim().is_empty() => {
                    format!("{how}; nothing on the console (qemu could not start the kernel?)")
                }
                None => format!("{how}; the kernel died before /init started"),
            };
            Cell::streamed(label, wall, why, tail, &watch.port)
        }
    };
    if let (Some(n), Some(why)) = (&watch.port.interrupted, &mut cell.broken) {
        why.push_str(&format!(" (the suite was interrupted by {n})"));
    }
    cell.fault = fault;
    cell.stream = stream;
    // The topology lines come on the console too when the result port has none.
    cell.setup = if setup.is_empty() {
        topology::parse_setup(&console)
    } else {
        setup
    };
    cell
}

/// A guest cell: boot once; a kernel that died before `/init` (a rare TCG
/// boot flake seen here) gets one more boot.
fn guest_cell(
    shared: &Shared,
    label: &str,
    kernel: &Path,
    topology: &Topology,
    index: usize,
) -> Cell {
    let start = Instant::now();
    let dir = shared.work.join(format!("cell-{index}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Cell::broken(label, start.elapsed(), e.to_string(), vec![]);
    }
    let first = boot(shared, label, kernel, topology, &dir);
    // The kernel printed something but never reached /init (qemu refusing
    // the image prints nothing on the console: no second try for that).
    let console = qemu::read_lossy(&dir.join("console.log"));
    let died_early =
        first.broken.is_some() && !console.trim().is_empty() && !collect::reached_init(&console);
    let timed_out = first.wall >= Duration::from_secs(shared.args.timeout_cell);
    if died_early && !timed_out && first.wall < Duration::from_secs(60) {
        eprintln!("cowgup: {label}: the kernel died before /init; booting once more");
        let mut second = boot(shared, label, kernel, topology, &dir);
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
    let events = dir.join("events.jsonl");
    let log = dir.join("console.log");
    let me = std::env::current_exe().unwrap_or_else(|_| "cowgup".into());
    let ended = qemu::run_limited(
        Command::new(me)
            .args(["run", "--lock-wait", "600", "--format", "json", "--output"])
            .arg(&report)
            .arg("--events")
            .arg(&events)
            .args(suite_args(&shared.args, false)),
        &log,
        Duration::from_secs(shared.args.timeout_cell),
    );
    let wall = start.elapsed();
    let tail = qemu::tail(&qemu::read_lossy(&log), 25);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let mut stream = watch::EventStream::default();
    stream.feed(&std::fs::read(&events).unwrap_or_default());
    stream.end();
    let mut cell = match (ended, collect::parse_report(&text)) {
        (Ok(_), Ok(r)) => Cell::ran("host", wall, r),
        (Err(e), _) => Cell::broken("host", wall, e, tail),
        (Ok(qemu::Ended::TimedOut), _) => Cell::streamed(
            "host",
            wall,
            format!("no result within {} s", shared.args.timeout_cell),
            tail,
            &stream,
        ),
        (Ok(ended), r) => Cell::streamed(
            "host",
            wall,
            format!(
                "cowgup run ended ({}) without a report{}",
                match ended {
                    qemu::Ended::Exited(s) => s.to_string(),
                    _ => "stopped".into(),
                },
                r.err().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            tail,
            &stream,
        ),
    };
    cell.stream = stream.stats();
    cell
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}

/// The kernel image of a guest spec: fetched (Debian), built (`build:`), or given.
fn resolve(spec: &KernelSpec) -> Result<PathBuf, String> {
    match spec {
        KernelSpec::Debian(series) => spec::fetch_debian(series),
        KernelSpec::Build(b) => {
            build::build(b, &spec::cache_dir().join(format!("build-{}", b.series)))
        }
        KernelSpec::Image(p) => Ok(p.clone()),
        KernelSpec::Host => Err("the host cell runs no guest".into()),
    }
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%$~".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--dry-run`: what would run, one command a line (`#` lines say what
/// follows). Nothing is fetched, built or booted.
fn dry_run(args: &MatrixArgs, cells: &[Plan]) -> String {
    let mut out = String::new();
    let work = Path::new("$WORK");
    let shared = Shared {
        initrd: work.join("initrd.cpio"),
        work: work.into(),
        args: args.clone(),
        kvm: args.kvm == Kvm::On,
    };
    for spec in &args.kernel {
        match spec {
            KernelSpec::Build(b) => {
                // apt's local cache names the version (no network); else a placeholder.
                let version = build::source_version(b).unwrap_or_else(|_| "$VERSION".into());
                let l = build::Layout {
                    root: spec::cache_dir().join(format!("build-{}", b.series)),
                    version,
                };
                out.push_str(&format!(
                    "# {}: {} {} (apt-cache show --no-all-versions {}); cached as {}{}\n",
                    b.label(),
                    b.package(),
                    l.version,
                    b.package(),
                    l.image(b).display(),
                    if l.image(b).is_file() {
                        " (present: nothing to build)"
                    } else {
                        ""
                    }
                ));
                for st in build::steps(b, &l, build::jobs(), false) {
                    out.push_str(&format!("# {}\n{}\n", st.what, shell_words(&st.argv)));
                }
            }
            KernelSpec::Debian(series) => out.push_str(&format!(
                "# debian:{series}\napt-cache search --names-only '{}'\n\
                 apt-get download -q $PACKAGE && dpkg-deb -x $PACKAGE_*.deb {}/$PACKAGE\n",
                spec::debian_pattern(series),
                spec::cache_dir().display()
            )),
            _ => {}
        }
    }
    if args.kvm == Kvm::Auto
        && cells
            .iter()
            .any(|c| args.kernel[c.kernel] != KernelSpec::Host)
    {
        out.push_str("# KVM probe: boot the first guest kernel under KVM; TCG unless /init runs within 20 s\n");
    }
    for (i, c) in cells.iter().enumerate() {
        let spec = &args.kernel[c.kernel];
        let label = cell_label(spec, &c.topology);
        if *spec == KernelSpec::Host {
            let mut argv = vec![
                "cowgup".to_string(),
                "run".into(),
                "--format".into(),
                "json".into(),
            ];
            argv.extend(suite_args(args, false));
            out.push_str(&format!("# cell {i}: {label}\n{}\n", shell_words(&argv)));
            continue;
        }
        let kernel = match spec {
            KernelSpec::Image(p) => p.clone(),
            _ => PathBuf::from(format!("$KERNEL_{}", c.kernel)),
        };
        let dir = work.join(format!("cell-{i}"));
        let g = guest_of(&shared, &kernel, &c.topology, &dir);
        out.push_str(&format!("# cell {i}: {label}\n"));
        for d in &g.disks {
            out.push_str(&format!(
                "truncate -s 2G {0} && mkfs.ext4 -q -F {0}\n",
                d.display()
            ));
        }
        for d in c.topology.disks(&dir) {
            out.push_str(&format!(
                "truncate -s {} {p} && mkfs.ext4 {} {p}\n",
                d.bytes,
                d.mkfs.join(" "),
                p = d.path.display()
            ));
        }
        let mut argv = vec!["qemu-system-x86_64".to_string()];
        argv.extend(qemu::argv(&g));
        out.push_str(&shell_words(&argv));
        out.push('\n');
    }
    out
}

fn cell_label(spec: &KernelSpec, t: &Topology) -> String {
    if t.is_base() {
        spec.label()
    } else {
        format!("{} [{t}]", spec.label())
    }
}

pub fn matrix(args: &MatrixArgs) -> ExitCode {
    let cells_planned = plan(args);
    if args.dry_run {
        print!("{}", dry_run(args, &cells_planned));
        return ExitCode::SUCCESS;
    }
    // Bad kernel paths first: nothing is built, probed or booted for them.
    for k in &args.kernel {
        if let KernelSpec::Image(p) = k {
            if let Err(e) = spec::check_image("--kernel", p) {
                return crate::fatal(&e);
            }
        }
    }
    if let Err(e) = check_selection(args) {
        return crate::fatal(&e);
    }
    let work = match tempfile::Builder::new().prefix("cowgup-matrix-").tempdir() {
        Ok(w) => w,
        Err(e) => return crate::fatal(&format!("cannot make a work directory: {e}")),
    };
    if args.kernel.contains(&KernelSpec::Host) && args.topology.iter().any(|t| !t.is_base()) {
        eprintln!("cowgup: topologies apply to guests; the host cell runs as the host is");
    }
    let needs_guest = args.kernel.iter().any(|k| *k != KernelSpec::Host);
    let mut shared = if needs_guest {
        match prepare(args, work.path()) {
            Ok(s) => s,
            Err(e) => return crate::fatal(&e),
        }
    } else {
        Shared {
            initrd: PathBuf::new(),
            work: work.path().into(),
            args: args.clone(),
            kvm: false,
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
    // Each guest kernel once (fetched or built), whatever its topologies.
    let kernels: Vec<Option<Result<PathBuf, String>>> = args
        .kernel
        .iter()
        .map(|k| (*k != KernelSpec::Host).then(|| resolve(k)))
        .collect();
    if needs_guest {
        let first = kernels.iter().flatten().find_map(|k| k.as_ref().ok());
        shared.kvm = decide_kvm(args.kvm, first.map(PathBuf::as_path), work.path());
    }
    let jobs = args.jobs.map(|j| j as usize).unwrap_or_else(default_jobs);
    let labels: Vec<String> = cells_planned
        .iter()
        .map(|c| cell_label(&args.kernel[c.kernel], &c.topology))
        .collect();
    eprintln!(
        "cowgup: matrix of {} cell(s) ({}), {} at a time, {} s per cell, {}",
        labels.len(),
        labels.join(", "),
        jobs,
        args.timeout_cell,
        if shared.kvm { "KVM" } else { "TCG" }
    );
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Cell>>> = Mutex::new(vec![None; cells_planned.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(cells_planned.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(p) = cells_planned.get(i) else {
                    break;
                };
                let spec = &args.kernel[p.kernel];
                let klabel = spec.label();
                let mut cell = match (spec, &kernels[p.kernel]) {
                    (KernelSpec::Host, _) => host_cell(&shared, i),
                    (_, Some(Ok(k))) => guest_cell(&shared, &klabel, k, &p.topology, i),
                    (_, Some(Err(e))) => Cell::broken(&klabel, Duration::ZERO, e.clone(), vec![]),
                    (_, None) => unreachable!("guest kernels are resolved"),
                };
                cell.topology = p.topology.to_string();
                let summary = match (&cell.fault, &cell.broken) {
                    (Some(f), _) => format!("KERNEL FAULT {}: {}", f.place(), f.headline()),
                    (None, Some(why)) => why.clone(),
                    (None, None) if cell.ok() => "no unexpected result".into(),
                    (None, None) => "unexpected results".into(),
                };
                eprintln!(
                    "cowgup: cell {} done in {:.0} s: {summary}",
                    labels[i],
                    cell.wall.as_secs_f64(),
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
        Format::Human => print!("{}", report::text::render(&cells)),
        Format::Json if sink.is_none() => {
            println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"))
        }
        Format::Json => print!("{}", report::text::render(&cells)),
    }
    if let Some(f) = &mut sink {
        let text = match args.format {
            Format::Json => serde_json::to_string_pretty(&doc).expect("JSON"),
            Format::Human => report::text::render(&cells),
        };
        if let Err(e) = std::io::Write::write_all(f, text.as_bytes()) {
            eprintln!("cowgup: cannot write the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(f) = &mut html_sink {
        if let Err(e) = std::io::Write::write_all(f, report::html::html(&cells).as_bytes()) {
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
                "--jobs",
                "2",
                "vmsplice",
                "--skip",
                "memfd",
                "--skip",
                "1048576 kB"
            ]
        );
        assert_eq!(suite_args(&t.m, false), ["vmsplice", "--skip", "memfd"]);
        let t = T::parse_from(["x", "--kernel", "/k", "--with-1g"]);
        assert_eq!(suite_args(&t.m, true), ["--timeout", "600", "--jobs", "2"]);
        assert_eq!(t.m.html, None);
        let t = T::parse_from([
            "x", "--kernel", "host", "--format", "json", "--output", "m.json", "--html", "m.html",
        ]);
        assert_eq!(t.m.output.as_deref(), Some(Path::new("m.json")));
        assert_eq!(t.m.html.as_deref(), Some(Path::new("m.html")));
        assert!(T::try_parse_from(["x", "--kernel", "build:6.1x"]).is_err());
        assert!(T::try_parse_from(["x"]).is_err(), "--kernel is required");
    }

    #[test]
    fn cells_are_kernels_times_topologies_and_the_host_runs_once() {
        let t = T::parse_from([
            "x",
            "--kernel",
            "host",
            "--kernel",
            "/k",
            "--topology",
            "base",
            "--topology",
            "zram+fsdax",
        ]);
        let p = plan(&t.m);
        let got: Vec<(usize, String)> = p
            .iter()
            .map(|c| (c.kernel, c.topology.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (0, "base".into()),
                (1, "base".into()),
                (1, "zram+fsdax".into())
            ]
        );
        let t = T::parse_from(["x", "--kernel", "/k"]);
        assert_eq!(plan(&t.m).len(), 1, "base by default");
        assert!(T::try_parse_from(["x", "--kernel", "/k", "--topology", "numa"]).is_err());
    }

    #[test]
    fn kvm_is_auto_by_default_and_bare_kvm_means_on() {
        assert_eq!(T::parse_from(["x", "--kernel", "/k"]).m.kvm, Kvm::Auto);
        assert_eq!(
            T::parse_from(["x", "--kernel", "/k", "--kvm"]).m.kvm,
            Kvm::On
        );
        assert_eq!(
            T::parse_from(["x", "--kernel", "/k", "--kvm", "off"]).m.kvm,
            Kvm::Off
        );
        assert_eq!(
            T::parse_from(["x", "--kernel", "/k", "--kvm=auto"]).m.kvm,
            Kvm::Auto
        );
    }

    #[test]
    fn dry_run_prints_builds_disks_and_qemu_lines() {
        let t = T::parse_from([
            "x",
            "--kernel",
            "build:6.12+debug_vm",
            "--kernel",
            "/k/bzImage",
            "--kernel",
            "host",
            "--topology",
            "fsdax+movable",
            "--kvm",
            "off",
            "--dry-run",
            "vmsplice",
        ]);
        let out = dry_run(&t.m, &plan(&t.m));
        assert!(out.contains("merge_config.sh -m -O"), "{out}");
        assert!(out.contains("cowgup-debug_vm.config"));
        assert!(out.contains(" -j"));
        assert!(!out.contains("KVM probe"), "--kvm off");
        assert!(
            out.contains("# cell 0: build:6.12+debug_vm [fsdax+movable]\n"),
            "{out}"
        );
        assert!(out.contains("# cell 1: bzImage [fsdax+movable]\n"));
        assert!(out.contains("# cell 2: host\ncowgup run --format json vmsplice\n"));
        assert!(out.contains(
            "truncate -s 268435456 $WORK/cell-1/fsdax.img && mkfs.ext4 -q -F -b 4096 $WORK/cell-1/fsdax.img\n"
        ));
        assert!(out.contains("-kernel /k/bzImage"));
        assert!(out.contains("-kernel $KERNEL_0"));
        assert!(out.contains(
            "-device virtio-blk-pci,drive=topo0,serial=cowgup-dax -append \
             'console=ttyS0 panic=-1 quiet memmap=256M!4G movablecore=2G cowgup.topology=fsdax+movable'"
        ), "{out}");
    }
}
