//! The qemu command line of a guest, running a child process under a time
//! limit, and reading the console back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::arch::Arch;
use super::initramfs;

#[derive(Clone, Debug)]
pub struct Guest {
    /// The machine qemu emulates (x86_64 `pc`, arm64 `virt`).
    pub arch: Arch,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The first UART (ttyS0, ttyAMA0): the console (kernel messages,
    /// `/init`'s output).
    pub console: PathBuf,
    /// The result port (`Arch::result_port`): the suite's JSON report, and
    /// nothing else.
    pub result: PathBuf,
    /// ext4 images for `/var/tmp`: one as NVMe, one as virtio-blk.
    pub disks: Vec<PathBuf>,
    /// The topology's disks: virtio-blk, found in the guest by serial.
    pub serial_disks: Vec<(PathBuf, String)>,
    pub kvm: bool,
    /// Reserve two 1 GiB hugetlb pages at boot (and give the guest the RAM).
    pub with_1g: bool,
    pub extra_cmdline: Vec<String>,
}

impl Guest {
    /// A TCG guest of `kernel` (of `arch`) and `initrd` whose console,
    /// result port and state disks are files in `dir`; no topology disks, no
    /// 1 GiB pages, nothing appended to the command line.
    pub fn new(arch: Arch, kernel: &Path, initrd: PathBuf, dir: &Path) -> Guest {
        Guest {
            arch,
            kernel: kernel.into(),
            initrd,
            console: dir.join("console.log"),
            result: dir.join("result.txt"),
            disks: super::disk::state_disks(dir),
            serial_disks: vec![],
            kvm: false,
            with_1g: false,
            extra_cmdline: vec![],
        }
    }
}

pub fn cmdline(g: &Guest) -> String {
    let mut parts: Vec<String> = Vec::new();
    // 1 GiB pages first: they need contiguous RAM before anything fragments it.
    if g.with_1g {
        parts.push("hugepagesz=1G hugepages=2".into());
    }
    parts.push(format!("console={} panic=-1 quiet", g.arch.console()));
    parts.extend(g.extra_cmdline.iter().cloned());
    parts.join(" ")
}

/// vCPUs of every guest; the suite in it runs that many trials side by side.
pub const GUEST_CPUS: usize = 2;

/// Guest RAM: 6 GiB, 8 with two 1 GiB pages reserved at boot. 12 with
/// 64 KiB pages: there a PMD THP and a pageblock are 512 MiB, and after a
/// few hundred trials few of a 6 GiB guest's 12 pageblocks were free of
/// unmovable pages, so most 512 MiB THP trials skipped (no THP even after
/// a full compaction). The arm64 image's header states its page size.
fn memory(g: &Guest) -> &'static str {
    match (super::arch::image_page_size(&g.kernel), g.with_1g) {
        (Some(65536), _) => "12G",
        (_, true) => "8G",
        _ => "6G",
    }
}

/// qemu's arguments (after the program name).
pub fn argv(g: &Guest) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    if g.arch == Arch::Arm64 {
        // One machine for every arm64 kernel: PCI for the disks and the
        // result port, a GIC the CPU's own with KVM.
        push(&[
            "-M",
            if g.kvm {
                "virt,gic-version=host"
            } else {
                "virt"
            },
        ]);
    }
    match (g.kvm, g.arch) {
        (true, _) => push(&["-accel", "kvm", "-cpu", "host"]),
        // -cpu max: 1 GiB pages (pdpe1gb) and every feature TCG emulates.
        (false, Arch::X86_64) => push(&["-accel", "tcg", "-cpu", "max"]),
        // pauth-impdef: pointer authentication with QEMU's cheap hash
        // instead of the architected QARMA, which dominates TCG time.
        (false, Arch::Arm64) => push(&["-accel", "tcg", "-cpu", "max,pauth-impdef=on"]),
    }
    let smp = GUEST_CPUS.to_string();
    push(&["-smp", &smp, "-m", memory(g)]);
    push(&["-display", "none", "-monitor", "none", "-no-reboot"]);
    let path = |p: &Path| p.display().to_string();
    a.extend(["-serial".into(), format!("file:{}", path(&g.console))]);
    match g.arch {
        Arch::X86_64 => a.extend(["-serial".into(), format!("file:{}", path(&g.result))]),
        // virt has one UART: the result port is a virtio console (hvc0).
        Arch::Arm64 => a.extend([
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("file,id=result,path={}", path(&g.result)),
            "-device".into(),
            "virtconsole,chardev=result".into(),
        ]),
    }
    a.extend([
        "-kernel".into(),
        path(&g.kernel),
        "-initrd".into(),
        path(&g.initrd),
    ]);
    for (i, d) in g.disks.iter().enumerate() {
        if i == 0 {
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id=nvme,format=raw", path(d)),
                "-device".into(),
                "nvme,drive=nvme,serial=cowgup".into(),
            ]);
        } else {
            // A serial: `/init` finds it among the topology's virtio disks.
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id=state,format=raw", path(d)),
                "-device".into(),
                "virtio-blk-pci,drive=state,serial=cowgup-state".into(),
            ]);
        }
    }
    for (i, (d, serial)) in g.serial_disks.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=topo{i},format=raw", path(d)),
            "-device".into(),
            format!("virtio-blk-pci,drive=topo{i},serial={serial}"),
        ]);
    }
    a.extend(["-append".into(), cmdline(g)]);
    a
}

/// `/dev/kvm` can be opened (whether a stock kernel then boots is another
/// matter: on this project's VM it does not, so KVM is opt-in).
pub fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// The probe's `/init`: one line on the console, then power off.
pub const PROBE_OK: &str = "=== KVM-PROBE-OK";

pub fn probe_init() -> String {
    format!("#!/bin/busybox sh\n/bin/busybox echo \"{PROBE_OK}\"\n/bin/busybox reboot -f\n")
}

/// Whether the probe boot reached its `/init` (what was seen, either way).
pub fn probe_verdict(console: &str, ended: &Ended, limit: Duration) -> Result<(), String> {
    if console.lines().any(|l| l.trim() == PROBE_OK) {
        return Ok(());
    }
    let last = console
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("; last console line: {:?}", l.trim()))
        .unwrap_or_else(|| "; nothing on the console".into());
    Err(match ended {
        Ended::TimedOut => format!(
            "a stock kernel did not reach /init under KVM within {} s{last}",
            limit.as_secs()
        ),
        Ended::Exited(st) => format!("qemu -accel kvm ended ({st}) before /init{last}"),
        Ended::Stopped(why) => format!("stopped: {why}{last}"),
    })
}

/// Boot `kernel` under KVM with an initramfs whose `/init` only prints
/// [`PROBE_OK`]: `Ok` when it does within `limit`.
pub fn probe_kvm(kernel: &Path, busybox: &Path, dir: &Path, limit: Duration) -> Result<(), String> {
    kvm_usable()?;
    let initrd = dir.join("kvm-probe.cpio");
    let entries = vec![
        initramfs::Entry {
            path: "bin".into(),
            mode: 0o040755,
            content: initramfs::Content::Dir,
        },
        initramfs::Entry {
            path: "bin/busybox".into(),
            mode: 0o100755,
            content: initramfs::Content::Host(busybox.into()),
        },
        initramfs::Entry {
            path: "init".into(),
            mode: 0o100755,
            content: initramfs::Content::Text(probe_init()),
        },
    ];
    let mut f = std::fs::File::create(&initrd).map_err(|e| format!("{}: {e}", initrd.display()))?;
    initramfs::write_cpio(&mut f, &entries).map_err(|e| e.to_string())?;
    let g = Guest {
        arch: Arch::host(),
        kernel: kernel.into(),
        initrd: initrd.clone(),
        console: dir.join("kvm-probe-console.log"),
        result: dir.join("kvm-probe-result.txt"),
        disks: vec![],
        serial_disks: vec![],
        kvm: true,
        with_1g: false,
        extra_cmdline: vec![],
    };
    let ended = run_limited(
        Command::new(g.arch.qemu()).args(argv(&g)),
        &dir.join("kvm-probe-qemu.log"),
        limit,
    )?;
    let console = read_lossy(&g.console);
    let _ = std::fs::remove_file(&initrd);
    probe_verdict(&console, &ended, limit).map_err(|e| {
        let log = std::fs::read_to_string(dir.join("kvm-probe-qemu.log")).unwrap_or_default();
        match log.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(l) => format!("{e}; qemu: {}", l.trim()),
            None => e,
        }
    })
}

pub enum Ended {
    Exited(ExitStatus),
    TimedOut,
    /// The watcher stopped it (the reason).
    Stopped(String),
}

/// How often `run_watched` looks at the child and calls its watcher.
pub const POLL: Duration = Duration::from_millis(100);

/// Run `cmd` (stdin closed, stdout and stderr to `log`), killing it after `limit`.
pub fn run_limited(cmd: &mut Command, log: &Path, limit: Duration) -> Result<Ended, String> {
    run_watched(cmd, log, limit, |_| None)
}

/// `run_limited`, and every `POLL` `watch` is called with the time since
/// the start: a reason it returns stops the child at once, as does a
/// signal a command asked `stop` to note.
pub fn run_watched(
    cmd: &mut Command,
    log: &Path,
    limit: Duration,
    mut watch: impl FnMut(Duration) -> Option<String>,
) -> Result<Ended, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let own_group = crate::stop::catching();
    if own_group {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
    }
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let start = Instant::now();
    let end = |child: &mut Child| {
        if own_group {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    };
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(Ended::Exited(status));
        }
        let stop = crate::stop::requested().map(|sig| format!("interrupted by {sig}"));
        if let Some(why) = stop.or_else(|| watch(start.elapsed())) {
            end(&mut child);
            return Ok(Ended::Stopped(why));
        }
        if start.elapsed() >= limit {
            end(&mut child);
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(POLL);
    }
}

/// A console or result port file as text (missing reads as empty).
pub fn read_lossy(p: &Path) -> String {
    clean_console(&std::fs::read(p).unwrap_or_default())
}

/// Console text without carriage returns and terminal escapes.
pub fn clean_console(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                // ESC [ params letter, or ESC + one character.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The last `n` non-blank lines.
pub fn tail(console: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Guest {
        Guest {
            arch: Arch::X86_64,
            kernel: "/k/bzImage".into(),
            initrd: "/w/initrd.cpio".into(),
            console: "/w/console.log".into(),
            result: "/w/result.txt".into(),
            disks: vec!["/w/nvme.img".into(), "/w/virtio.img".into()],
            serial_disks: vec![],
            kvm: false,
            with_1g: false,
            extra_cmdline: vec![],
        }
    }

    #[test]
    fn tcg_two_serial_ports_two_disks() {
        let a = argv(&guest()).join(" ");
        assert_eq!(
            a,
            "-accel tcg -cpu max -smp 2 -m 6G -display none -monitor none -no-reboot \
             -serial file:/w/console.log -serial file:/w/result.txt \
             -kernel /k/bzImage -initrd /w/initrd.cpio \
             -drive file=/w/nvme.img,if=none,id=nvme,format=raw -device nvme,drive=nvme,serial=cowgup \
             -drive file=/w/virtio.img,if=none,id=state,format=raw \
             -device virtio-blk-pci,drive=state,serial=cowgup-state \
             -append console=ttyS0 panic=-1 quiet"
        );
    }

    #[test]
    fn arm64_is_a_virt_machine_with_a_virtio_result_port() {
        let mut g = guest();
        g.arch = Arch::Arm64;
        g.kernel = "/k/Image".into();
        let a = argv(&g).join(" ");
        assert!(
            a.starts_with(
                "-M virt -accel tcg -cpu max,pauth-impdef=on -smp 2 -m 6G -display none \
                 -monitor none -no-reboot -serial file:/w/console.log -device virtio-serial-pci \
                 -chardev file,id=result,path=/w/result.txt -device virtconsole,chardev=result \
                 -kernel /k/Image"
            ),
            "{a}"
        );
        assert!(a.ends_with("-append console=ttyAMA0 panic=-1 quiet"), "{a}");
        g.kvm = true;
        assert!(argv(&g)
            .join(" ")
            .starts_with("-M virt,gic-version=host -accel kvm -cpu host"));
    }

    #[test]
    fn one_gib_pages_come_first_on_the_cmdline() {
        let mut g = guest();
        g.with_1g = true;
        g.extra_cmdline = vec!["init=/bin/sh".into()];
        assert_eq!(
            cmdline(&g),
            "hugepagesz=1G hugepages=2 console=ttyS0 panic=-1 quiet init=/bin/sh"
        );
        let a = argv(&g);
        assert!(a.windows(2).any(|w| w == ["-m", "8G"]));
        g.kvm = true;
        assert!(argv(&g).starts_with(&["-accel".into(), "kvm".into()]));
    }

    #[test]
    fn a_64k_page_image_gets_the_memory_for_its_512m_thps() {
        let dir = tempfile::tempdir().unwrap();
        let image = |flags: u64| {
            let mut h = vec![0u8; 0x40];
            h[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
            h[0x38..0x3c].copy_from_slice(b"ARM\x64");
            let p = dir.path().join(format!("Image-{flags}"));
            std::fs::write(&p, h).unwrap();
            p
        };
        let mem = |p: &Path| {
            let g = Guest::new(Arch::Arm64, p, "i".into(), Path::new("/w"));
            let a = argv(&g);
            let i = a.iter().position(|x| x == "-m").unwrap();
            (super::super::arch::image_page_size(p), a[i + 1].clone())
        };
        assert_eq!(mem(&image(3 << 1)), (Some(65536), "12G".into()));
        assert_eq!(mem(&image(2 << 1)), (Some(16384), "6G".into()));
        assert_eq!(mem(&image(1 << 1 | 1)), (Some(4096), "6G".into()));
        assert_eq!(mem(&image(0)), (None, "6G".into()));
    }

    #[test]
    fn a_fsdax_cell_gets_its_region_and_its_image_disk() {
        let t: super::super::topology::Topology = "fsdax".parse().unwrap();
        let mut g = guest();
        g.extra_cmdline = t.cmdline();
        g.serial_disks = t
            .disks(Path::new("/w"))
            .into_iter()
            .map(|d| (d.path, d.serial))
            .collect();
        let a = argv(&g).join(" ");
        assert!(
            a.ends_with(
                "-device virtio-blk-pci,drive=state,serial=cowgup-state \
             -drive file=/w/fsdax.img,if=none,id=topo0,format=raw \
             -device virtio-blk-pci,drive=topo0,serial=cowgup-dax \
             -append console=ttyS0 panic=-1 quiet memmap=256M!4G cowgup.topology=fsdax"
            ),
            "{a}"
        );
    }

    #[test]
    fn the_kvm_probe_needs_its_marker() {
        let limit = Duration::from_secs(20);
        assert!(probe_init().contains(PROBE_OK));
        assert!(probe_verdict(
            "Linux version 6.1\n=== KVM-PROBE-OK\n",
            &Ended::TimedOut,
            limit
        )
        .is_ok());
        let e = probe_verdict(
            "Probing EDD (edd=off to disable)... ok\n",
            &Ended::TimedOut,
            limit,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "a stock kernel did not reach /init under KVM within 20 s; \
             last console line: \"Probing EDD (edd=off to disable)... ok\""
        );
        let e = probe_verdict("", &Ended::Exited(exit_status(1)), limit).unwrap_err();
        assert!(
            e.contains("ended") && e.ends_with("nothing on the console"),
            "{e}"
        );
    }

    fn exit_status(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn a_child_past_its_limit_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let ended = run_limited(
            Command::new("sleep").arg("30"),
            &dir.path().join("log"),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(matches!(ended, Ended::TimedOut));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_watcher_stops_a_child_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let mut calls = 0;
        let ended = run_watched(
            Command::new("sleep").arg("30"),
            &dir.path().join("log"),
            Duration::from_secs(30),
            |_| {
                calls += 1;
                (calls == 3).then(|| "seen enough".to_string())
            },
        )
        .unwrap();
        assert!(matches!(ended, Ended::Stopped(ref w) if w == "seen enough"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
