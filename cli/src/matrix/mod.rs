//! `cowgup matrix`: the suite on several kernels, one cell per kernel and
//! topology, guests under qemu, cells in parallel, one report. Here: the
//! arguments, the plan of cells, what every cell shares (the initramfs,
//! KVM or not), running the cells and writing the reports.
//!
//! A guest cell is a boot of `crate::guest` (kernel specs and builds, the
//! initramfs and `/init`, topologies, host tools, disk images, qemu); what
//! is the matrix's own is in
//!
//! - `cell`: one cell run, a guest booted and watched (one more boot for a
//!   kernel that died before `/init`), or the host's `cowgup run`;
//! - `modules`: the kernel modules a cell's topology needs from its kernel,
//!   appended to the initramfs (only cells load them; `bench --guest` boots
//!   without a topology);
//! - `watch`: the console and result port read while the guest runs: event
//!   lines as the suite forms them, and a kernel fault, which ends the cell;
//! - `collect`: a cell's result (the suite's JSON from ttyS1, else what it
//!   streamed) or why none;
//! - `report/`: the table (`text`), the JSON document and the HTML page
//!   (`html`);
//! - `dry_run`: `--dry-run`, the commands the matrix would run.

mod cell;
pub mod collect;
mod dry_run;
pub mod modules;
pub mod report;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;

use crate::guest::arch::Arch;
use crate::guest::tools::{guest_binary, static_busybox};
use crate::guest::{initramfs, qemu, spec, tools, topology};
use collect::Cell;
use spec::KernelSpec;
use topology::Topology;

#[derive(Args, Clone, Debug)]
pub struct MatrixArgs {
    /// A kernel to run the suite on (repeatable): `host`, a path to a bzImage/vmlinuz, `debian:6.1`, `debian:6.12`, or `debian:6.1/arm64`, `debian:6.12/arm64`, `debian:6.12/arm64-16k`, `build:6.12[/arm64][+debug_vm][+64k]` (built from linux-source-6.12 with cli/kernel-config/; cached; ~12 min on x86_64), or `tree:PATH[:arm64]` (your kernel tree, built incrementally; `cowgup bisect` drives it).
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
    /// Which trials run in every cell.
    #[command(flatten)]
    pub select: crate::SelectArgs,
    /// Run the 1 GiB hugetlb trials in guests too (two pages reserved at boot; slow under TCG).
    #[arg(long)]
    pub with_1g: bool,
    /// Stamp and verify every byte of every page in each cell (`cowgup run --thorough`).
    #[arg(long)]
    pub thorough: bool,
    /// Test-only: each cell's suite damages one copy per trial as a kernel bug would
    /// (`cowgup run --damage`; the verifier's self-test of the guest-only families).
    #[arg(long, hide = true, value_name = "SIDE:KIND:PAGE")]
    pub damage: Option<String>,
    /// Test-only: the suite in each guest keeps every io_uring fixed buffer's pins
    /// after its trial, as a kernel that leaks pins would (`cowgup run --simulate-leak`).
    #[arg(long, hide = true)]
    pub simulate_leak: bool,
    /// Appended to every guest's kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// The static cowgup to put in guests, one per architecture (each told by its ELF header) [default: this program if static and of the guest's architecture, else built with cargo, cross-compiled for arm64].
    #[arg(long, value_name = "FILE")]
    pub guest_bin: Vec<PathBuf>,
    /// KVM or TCG: `auto` uses KVM only when a probe boot of the first guest kernel under KVM reaches /init; `--kvm` alone is `on`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Kvm::Auto, num_args = 0..=1, default_missing_value = "on")]
    pub kvm: Kvm,
    /// Print what would run (kernel builds, qemu command lines) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Write the report in --format to FILE (with `--format json` the table still goes to the terminal).
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
    /// The initramfs of each architecture the guest kernels have.
    initrds: BTreeMap<Arch, PathBuf>,
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
    if a.thorough {
        v.push("--thorough".into());
    }
    if let Some(d) = &a.damage {
        v.extend(["--damage".into(), d.clone()]);
    }
    v.extend(selection(a, guest));
    v
}

/// Which trials a cell runs: FILTERs, `--exact`, `--skip` (and, in guests,
/// no 1 GiB trials unless `--with-1g`), as `cowgup run` and `list` take them.
fn selection(a: &MatrixArgs, guest: bool) -> Vec<String> {
    let (mut v, s) = (Vec::<String>::new(), &a.select);
    if s.exact && !s.filters.is_empty() {
        v.push("--exact".into());
    }
    v.extend(s.filters.iter().cloned());
    for p in &s.skip {
        v.extend(["--skip".into(), p.clone()]);
    }
    for f in &s.family {
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

/// Every architecture's tools, static busybox and cowgup, and initramfs.
fn prepare(args: &MatrixArgs, work: &Path) -> Result<Shared, String> {
    let archs: BTreeSet<Arch> = args
        .kernel
        .iter()
        .filter(|k| **k != KernelSpec::Host)
        .map(KernelSpec::arch)
        .collect();
    tools::require(&["mkfs.ext4"], " (apt-get install e2fsprogs)")?;
    for a in &archs {
        tools::require(
            &[a.qemu()],
            &format!(" (apt-get install {} busybox-static)", a.qemu_package()),
        )?;
    }
    if args.kvm == Kvm::On {
        qemu::kvm_usable()?;
    }
    let mut initrds = BTreeMap::new();
    for a in archs {
        let busybox = static_busybox(a)?;
        let cowgup = guest_binary(&args.guest_bin, a)?;
        let initrd = work.join(format!("initrd-{a}.cpio"));
        let entries = initramfs::entries(a, &busybox, &cowgup, &suite_args(args, true));
        initramfs::write_initrd(&initrd, &entries)?;
        initrds.insert(a, initrd);
    }
    Ok(Shared {
        initrds,
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
            let probe = static_busybox(Arch::host())
                .and_then(|bb| qemu::probe_kvm(kernel, &bb, work, limit));
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

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
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
        print!("{}", dry_run::dry_run(args, &cells_planned));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = check_args(args) {
        return crate::fatal(&e);
    }
    if args.kernel.contains(&KernelSpec::Host) && args.topology.iter().any(|t| !t.is_base()) {
        eprintln!("cowgup: topologies apply to guests; the host cell runs as the host is");
    }
    // SIGINT/SIGTERM/SIGHUP stop the kernel build or guest running (a make
    // or qemu left behind would go on without us); the report holds what
    // finished.
    if let Err(e) = crate::stop::catch() {
        return crate::fatal(&e);
    }
    let mut session = match Session::new(args) {
        Ok(s) => s,
        Err(e) => return crate::fatal(&e),
    };
    // Open the outputs before the first cell: a bad path costs nothing.
    let create = |p: &Option<PathBuf>| match p {
        Some(p) => std::fs::File::create(p)
            .map(Some)
            .map_err(|e| format!("cannot write {}: {e}", p.display())),
        None => Ok(None),
    };
    let (sink, html_sink) = match (create(&args.output), create(&args.html)) {
        (Ok(s), Ok(h)) => (s, h),
        (Err(e), _) | (_, Err(e)) => return crate::fatal(&e),
    };
    // Each guest kernel once (fetched or built), whatever its topologies.
    let kernels: Vec<Option<Result<PathBuf, String>>> = args
        .kernel
        .iter()
        .map(|k| (*k != KernelSpec::Host).then(|| k.image()))
        .collect();
    let cells = session.run(&kernels);
    let code = write_reports(args, &cells, sink, html_sink);
    match crate::stop::requested() {
        Some(sig) => {
            eprintln!("cowgup: matrix: stopped by {sig}; the report holds what finished before it");
            ExitCode::from(130)
        }
        None => code,
    }
}

/// What runs of cells with the same arguments share: the work directory,
/// the initramfs of each architecture and, once decided, KVM or not.
/// `matrix` runs one; `bisect` one per selection, a run per commit.
pub struct Session {
    work: tempfile::TempDir,
    shared: Shared,
    kvm_decided: bool,
}

impl Session {
    /// The work directory and every architecture's initramfs.
    pub fn new(args: &MatrixArgs) -> Result<Session, String> {
        let work = tempfile::Builder::new()
            .prefix("cowgup-matrix-")
            .tempdir()
            .map_err(|e| format!("cannot make a work directory: {e}"))?;
        let shared = if args.kernel.iter().any(|k| *k != KernelSpec::Host) {
            prepare(args, work.path())?
        } else {
            Shared {
                initrds: BTreeMap::new(),
                work: work.path().into(),
                args: args.clone(),
                kvm: false,
            }
        };
        Ok(Session {
            work,
            shared,
            kvm_decided: args.kvm != Kvm::Auto,
        })
    }

    /// KVM or not, as decided (TCG until the first run decides).
    pub fn kvm(&self) -> bool {
        self.shared.kvm
    }

    /// Every planned cell on `kernels` (one per `--kernel`, `None` for the
    /// host; resolved, or why not), in plan order.
    pub fn run(&mut self, kernels: &[Option<Result<PathBuf, String>>]) -> Vec<Cell> {
        let args = &self.shared.args;
        if !self.kvm_decided && args.kernel.iter().any(|k| *k != KernelSpec::Host) {
            // KVM runs this host's architecture only: the probe boots the first such kernel.
            let first = args
                .kernel
                .iter()
                .zip(kernels)
                .filter(|(k, _)| k.arch() == Arch::host())
                .find_map(|(_, k)| k.as_ref()?.as_ref().ok());
            self.shared.kvm = decide_kvm(args.kvm, first.map(PathBuf::as_path), self.work.path());
            self.kvm_decided = true;
        }
        run_cells(&self.shared, &plan(&self.shared.args), kernels)
    }
}

/// Bad kernel paths and trees, and a selection that picks nothing: refused before
/// anything is built, probed or booted.
pub fn check_args(args: &MatrixArgs) -> Result<(), String> {
    for k in &args.kernel {
        match k {
            KernelSpec::Image(p) => spec::check_image("--kernel", p)?,
            KernelSpec::Tree(t) => {
                crate::guest::tree::check_tree(t)?;
            }
            _ => {}
        }
    }
    check_selection(args)
}

/// Every planned cell, `--jobs` at a time, each said done on stderr as it
/// ends; the cells in plan order.
fn run_cells(
    shared: &Shared,
    planned: &[Plan],
    kernels: &[Option<Result<PathBuf, String>>],
) -> Vec<Cell> {
    let args = &shared.args;
    let jobs = args.jobs.map(|j| j as usize).unwrap_or_else(default_jobs);
    let labels: Vec<String> = planned
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
    let results: Mutex<Vec<Option<Cell>>> = Mutex::new(vec![None; planned.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(planned.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(p) = planned.get(i) else {
                    break;
                };
                let cell = run_cell(shared, i, p, kernels);
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
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .flatten()
        .collect()
}

/// The `i`th cell, `p`, on its kernel (resolved, or why it could not be).
fn run_cell(
    shared: &Shared,
    i: usize,
    p: &Plan,
    kernels: &[Option<Result<PathBuf, String>>],
) -> Cell {
    let spec = &shared.args.kernel[p.kernel];
    let klabel = spec.label();
    let mut cell = match (spec, &kernels[p.kernel]) {
        (KernelSpec::Host, _) => cell::host_cell(shared, i),
        (_, Some(Ok(k))) => cell::guest_cell(shared, &klabel, spec.arch(), k, &p.topology, i),
        (_, Some(Err(e))) => Cell::broken(&klabel, Duration::ZERO, e.clone(), vec![]),
        (_, None) => unreachable!("guest kernels are resolved"),
    };
    cell.topology = p.topology.to_string();
    cell.arch = spec.arch().to_string();
    cell
}

/// The report on stdout (the table, or JSON when no `--output`), in
/// `--output` and as HTML in `--html`; failure when a cell was not ok.
fn write_reports(
    args: &MatrixArgs,
    cells: &[Cell],
    mut sink: Option<std::fs::File>,
    mut html_sink: Option<std::fs::File>,
) -> ExitCode {
    let doc = report::json(cells);
    match args.format {
        Format::Human => print!("{}", report::text::render(cells)),
        Format::Json if sink.is_none() => {
            println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"))
        }
        Format::Json => print!("{}", report::text::render(cells)),
    }
    if let Some(f) = &mut sink {
        let text = match args.format {
            Format::Json => serde_json::to_string_pretty(&doc).expect("JSON"),
            Format::Human => report::text::render(cells),
        };
        if let Err(e) = std::io::Write::write_all(f, text.as_bytes()) {
            eprintln!("cowgup: cannot write the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(f) = &mut html_sink {
        if let Err(e) = std::io::Write::write_all(f, report::html::html(cells).as_bytes()) {
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
    pub(super) struct T {
        #[command(flatten)]
        pub(super) m: MatrixArgs,
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
            [KernelSpec::Host, "debian:6.1".parse().unwrap()]
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
            "x",
            "--kernel",
            "host",
            "--thorough",
            "--damage",
            "reader:flip:last",
        ]);
        assert_eq!(
            suite_args(&t.m, false),
            ["--thorough", "--damage", "reader:flip:last"]
        );
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
}
