//! The qemu command line of a guest cell, and running a child process under
//! a time limit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// ttyS0: the console (kernel messages, `/init`'s output).
    pub console: PathBuf,
    /// ttyS1: the suite's JSON report, and nothing else.
    pub result: PathBuf,
    /// ext4 images for `/var/tmp`: one as NVMe, one as virtio-blk.
    pub disks: Vec<PathBuf>,
    pub kvm: bool,
    /// Reserve two 1 GiB hugetlb pages at boot (and give the guest the RAM).
    pub with_1g: bool,
    pub extra_cmdline: Vec<String>,
}

pub fn cmdline(g: &Guest) -> String {
    let mut parts: Vec<String> = Vec::new();
    // 1 GiB pages first: they need contiguous RAM before anything fragments it.
    if g.with_1g {
        parts.push("hugepagesz=1G hugepages=2".into());
    }
    parts.push("console=ttyS0 panic=-1 quiet".into());
    parts.extend(g.extra_cmdline.iter().cloned());
    parts.join(" ")
}

/// qemu's arguments (after the program name).
pub fn argv(g: &Guest) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    if g.kvm {
        push(&["-accel", "kvm", "-cpu", "host"]);
    } else {
        // -cpu max: 1 GiB pages (pdpe1gb) and every feature TCG emulates.
        push(&["-accel", "tcg", "-cpu", "max"]);
    }
    push(&["-smp", "2", "-m", if g.with_1g { "8G" } else { "6G" }]);
    push(&["-display", "none", "-monitor", "none", "-no-reboot"]);
    let path = |p: &Path| p.display().to_string();
    a.extend([
        "-serial".into(),
        format!("file:{}", path(&g.console)),
        "-serial".into(),
        format!("file:{}", path(&g.result)),
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
            a.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=raw", path(d)),
            ]);
        }
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

pub enum Ended {
    Exited(ExitStatus),
    TimedOut,
}

/// Run `cmd` (stdin closed, stdout and stderr to `log`), killing it after `limit`.
pub fn run_limited(cmd: &mut Command, log: &Path, limit: Duration) -> Result<Ended, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(Ended::Exited(status));
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Guest {
        Guest {
            kernel: "/k/bzImage".into(),
            initrd: "/w/initrd.cpio".into(),
            console: "/w/console.log".into(),
            result: "/w/result.txt".into(),
            disks: vec!["/w/nvme.img".into(), "/w/virtio.img".into()],
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
             -drive file=/w/virtio.img,if=virtio,format=raw \
             -append console=ttyS0 panic=-1 quiet"
        );
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
}
