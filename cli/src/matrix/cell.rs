//! One cell run: a guest booted under qemu (its topology's modules and
//! disks made first, its console and result port watched while it runs,
//! one more boot for a kernel that died before `/init`), or the host's
//! own `cowgup run` as a subprocess; either way a `Cell`, with its result
//! or why it has none.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::collect::{self, Cell};
use super::watch::{self, GuestWatch};
use super::{modules, suite_args, Shared};
use crate::guest::arch::Arch;
use crate::guest::disk::{self, Image};
use crate::guest::{initramfs, qemu, topology};
use topology::Topology;

/// The qemu guest of a cell (paths under `dir`).
pub(super) fn guest_of(
    shared: &Shared,
    arch: Arch,
    kernel: &Path,
    topology: &Topology,
    dir: &Path,
) -> qemu::Guest {
    let initrd = shared.initrds.get(&arch).cloned().unwrap_or_default();
    let mut extra_cmdline = topology.cmdline();
    extra_cmdline.extend(shared.args.append.iter().cloned());
    qemu::Guest {
        serial_disks: topology
            .disks(dir)
            .into_iter()
            .map(|d| (d.path, d.serial))
            .collect(),
        // KVM runs only this host's architecture.
        kvm: shared.kvm && arch == Arch::host(),
        with_1g: shared.args.with_1g,
        extra_cmdline,
        ..qemu::Guest::new(arch, kernel, initrd, dir)
    }
}

/// One boot: the cell's result, or why there is none.
fn boot(
    shared: &Shared,
    label: &str,
    arch: Arch,
    kernel: &Path,
    topology: &Topology,
    dir: &Path,
) -> Cell {
    let start = Instant::now();
    let mut g = guest_of(shared, arch, kernel, topology, dir);
    if let Err(e) = add_modules(kernel, topology, dir, &mut g) {
        return Cell::broken(label, start.elapsed(), e, vec![]);
    }
    let images = match make_images(&g, topology, dir) {
        Ok(images) => images,
        Err(e) => return Cell::broken(label, start.elapsed(), e, vec![]),
    };
    let limit = Duration::from_secs(shared.args.timeout_cell);
    // A file of an earlier boot of this cell must not be read as this one's.
    for f in [&g.console, &g.result] {
        let _ = std::fs::remove_file(f);
    }
    let mut watch = GuestWatch::new(&g.console, &g.result);
    let booted = Instant::now();
    let ended = qemu::run_watched(
        Command::new(arch.qemu()).args(qemu::argv(&g)),
        &dir.join("qemu.log"),
        limit,
        |t| watch.poll(t),
    );
    watch.finish(booted.elapsed());
    let wall = start.elapsed();
    remove_images(&images);
    let console = qemu::read_lossy(&g.console);
    let mut tail = qemu::tail(&console, 25);
    let qemu_log = qemu::read_lossy(&dir.join("qemu.log"));
    tail.extend(qemu_log.lines().map(|l| format!("qemu: {l}")));
    let channel =
        String::from_utf8_lossy(&std::fs::read(&g.result).unwrap_or_default()).into_owned();
    let fault = fault_of(&watch, booted.duration_since(start), wall);
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
            let why = no_report(ended, limit, fault.is_some(), &console);
            Cell::streamed(label, wall, why, tail, &watch.port)
        }
    };
    if let (Some(n), Some(why)) = (&watch.port.interrupted, &mut cell.broken) {
        why.push_str(&format!(" (the suite was interrupted by {n})"));
    }
    cell.fault = fault;
    cell.stream = watch.port.stats();
    // The topology lines come on the console too when the result port has none.
    let setup = topology::parse_setup(&channel);
    cell.setup = if setup.is_empty() {
        topology::parse_setup(&console)
    } else {
        setup
    };
    cell
}

/// Modules the topology needs from this kernel, appended to a copy of the
/// shared initramfs as a second archive (`g` then boots that copy).
fn add_modules(
    kernel: &Path,
    topology: &Topology,
    dir: &Path,
    g: &mut qemu::Guest,
) -> Result<(), String> {
    let extra = modules::for_cell(kernel, topology)?;
    if extra.is_empty() {
        return Ok(());
    }
    let initrd = dir.join("initrd.cpio");
    std::fs::copy(&g.initrd, &initrd)
        .and_then(|_| std::fs::OpenOptions::new().append(true).open(&initrd))
        .and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            initramfs::write_cpio(&mut w, &extra)?;
            std::io::Write::flush(&mut w)
        })
        .map_err(|e| format!("cannot add the topology's modules to the initramfs: {e}"))?;
    g.initrd = initrd;
    Ok(())
}

/// The guest's state disks and the topology's, made (and, if one cannot
/// be, those made removed).
fn make_images(g: &qemu::Guest, topology: &Topology, dir: &Path) -> Result<Vec<Image>, String> {
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
    match made {
        Ok(()) => Ok(images),
        Err(e) => {
            remove_images(&images);
            Err(e)
        }
    }
}

fn remove_images(images: &[Image]) {
    for (p, _, _) in images {
        let _ = std::fs::remove_file(p);
    }
}

/// The kernel fault the console showed, if any, dated from the cell's
/// start (`booted_after`: when qemu started, from the cell's start).
fn fault_of(
    watch: &GuestWatch,
    booted_after: Duration,
    wall: Duration,
) -> Option<collect::KernelFault> {
    let (f, seen) = watch.console.fault.as_ref().zip(watch.seen.as_ref())?;
    let seen_s = (booted_after + seen.at).as_secs_f64();
    // The guest's own kernel-log check names the trial for sure; the
    // stream's running trial at the time may already be the next one
    // (the guest went on after the fault before the host looked).
    let quoted = collect::quoted_by(&f.lines[0], &watch.port.raw_trials, &watch.port.numbers);
    Some(collect::KernelFault {
        lines: f.lines.clone(),
        later: f.later.clone(),
        later_count: f.later_count,
        by_check: quoted.is_some(),
        trial: quoted.or_else(|| seen.running.as_ref().map(ToString::to_string)),
        after: seen.last_finished.as_ref().map(ToString::to_string),
        seen_s,
        ended_after_s: (wall.as_secs_f64() - seen_s).max(0.0),
    })
}

/// Why a guest that ended without the suite's report has none: how it
/// ended, and (no fault seen) how far the boot got.
fn no_report(ended: &qemu::Ended, limit: Duration, faulted: bool, console: &str) -> String {
    let how = match ended {
        qemu::Ended::TimedOut => format!(
            "no result within {} s (the cell's time limit): the guest was stopped",
            limit.as_secs()
        ),
        qemu::Ended::Exited(status) => format!("qemu ended ({status}) without a result"),
        qemu::Ended::Stopped(why) => why.clone(),
    };
    // A fault is reported as such (`KernelFault`): here only how the guest ended.
    if faulted || collect::reached_init(console) {
        how
    } else if matches!(ended, qemu::Ended::TimedOut) {
        format!("{how}; /init never started")
    } else if console.trim().is_empty() {
        format!("{how}; nothing on the console (qemu could not start the kernel?)")
    } else {
        format!("{how}; the kernel died before /init started")
    }
}

/// A guest cell: boot once; a kernel that died before `/init` (a rare TCG
/// boot flake seen here) gets one more boot.
pub(super) fn guest_cell(
    shared: &Shared,
    label: &str,
    arch: Arch,
    kernel: &Path,
    topology: &Topology,
    index: usize,
) -> Cell {
    let start = Instant::now();
    let dir = shared.work.join(format!("cell-{index}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Cell::broken(label, start.elapsed(), e.to_string(), vec![]);
    }
    let first = boot(shared, label, arch, kernel, topology, &dir);
    // The kernel printed something but never reached /init (qemu refusing
    // the image prints nothing on the console: no second try for that).
    let console = qemu::read_lossy(&dir.join("console.log"));
    let died_early =
        first.broken.is_some() && !console.trim().is_empty() && !collect::reached_init(&console);
    let timed_out = first.wall >= Duration::from_secs(shared.args.timeout_cell);
    if died_early && !timed_out && first.wall < Duration::from_secs(60) {
        eprintln!("cowgup: {label}: the kernel died before /init; booting once more");
        let mut second = boot(shared, label, arch, kernel, topology, &dir);
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
pub(super) fn host_cell(shared: &Shared, index: usize) -> Cell {
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
