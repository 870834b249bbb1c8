//! The guest's root: busybox, a static cowgup and an `/init` that runs the
//! suite, streams each event and then writes its JSON report to the result
//! port (x86_64: the second serial port, ttyS1; arm64: a virtio console,
//! hvc0), where kernel messages never go. Written as an uncompressed newc
//! cpio archive.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::arch::Arch;

/// Marker lines: `/init` started (on the console), and the result frame (on the result port).
pub const START: &str = "=== GUEST-START";
pub const EXIT: &str = "=== GUEST-EXIT";
pub const RESULT: &str = "=== COWGUP-RESULT";
pub const RESULT_END: &str = "=== COWGUP-RESULT-END";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Dir,
    /// Copied from the host.
    Host(PathBuf),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub content: Content,
}

/// Quote one argument for the guest's shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The start of every guest's `/init`: busybox's applets, the basics
/// mounted (then `mounts`, lines of the caller's own), the cell's modules
/// loaded (`matrix::modules`), the ext4 state disk on `/var/tmp` (NVMe, or
/// virtio-blk, by its serial), [`START`] on the console and the topology
/// named on the kernel command line set up. What follows is the caller's.
pub fn preamble(mounts: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /tmp
{mounts}by_serial() {{ for b in /sys/block/*; do [ "$(cat $b/serial 2>/dev/null)" = "$1" ] && echo /dev/${{b##*/}} && return 0; done; return 1; }}
for m in /lib/modules/cowgup/*.ko; do [ -e "$m" ] && {{ insmod "$m" || echo "cowgup: insmod $m failed"; }}; done
[ -d /lib/modules/cowgup ] && for i in 1 2 3 4 5; do {{ [ -b /dev/nvme0n1 ] || [ -n "$(by_serial cowgup-state)" ]; }} && break; sleep 1; done
for d in /dev/nvme0n1 $(by_serial cowgup-state); do [ -b $d ] && mount -t ext4 $d /var/tmp && break; done
cd /tmp
echo "{START} $(uname -r)"
{topology}"#,
        topology = super::topology::init_fragment(),
    )
}

/// The matrix's `/init` after the [`preamble`]; `@NAME@` is filled in by
/// [`init_script`].
const MATRIX_INIT: &str = include_str!("matrix_init.sh");

/// The matrix's `/init`: the [`preamble`], then `cowgup run` with `args`, its
/// human report on the console, each event (a result as it is formed) on
/// the result port of `arch` as one JSON line; then the topology's setup
/// lines and the JSON report framed, on the result port, compacted on the
/// way (pretty-printed JSON never has a raw newline inside a string, so
/// dropping each line's indentation and the newlines keeps it intact; the
/// x86 port moves ~180 KB/s under TCG).
pub fn init_script(arch: Arch, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
    // The arguments last: nothing in them is read as a name to fill in.
    let script = [
        ("EXIT", EXIT),
        ("RESULT_END", RESULT_END),
        ("RESULT", RESULT),
        ("PORT", arch.result_port()),
    ]
    .iter()
    .fold(MATRIX_INIT.to_string(), |s, (name, value)| {
        s.replace(&format!("@{name}@"), value)
    })
    .replace("@ARGS@", &args.join(" "));
    preamble("") + &script
}

/// The matrix's archive: [`root`] with its [`init_script`].
pub fn entries(arch: Arch, busybox: &Path, cowgup: &Path, args: &[String]) -> Vec<Entry> {
    root(busybox, cowgup, init_script(arch, args))
}

/// A guest's root, in order (directories before their files, `init` last):
/// busybox, the static cowgup and `init`.
pub fn root(busybox: &Path, cowgup: &Path, init: String) -> Vec<Entry> {
    let dir = |p: &str| Entry {
        path: p.into(),
        mode: 0o040755,
        content: Content::Dir,
    };
    let mut v: Vec<Entry> = ["bin", "dev", "proc", "sys", "tmp", "var", "var/tmp"]
        .into_iter()
        .map(dir)
        .collect();
    v.push(Entry {
        path: "bin/busybox".into(),
        mode: 0o100755,
        content: Content::Host(busybox.into()),
    });
    v.push(Entry {
        path: "bin/cowgup".into(),
        mode: 0o100755,
        content: Content::Host(cowgup.into()),
    });
    v.push(Entry {
        path: "init".into(),
        mode: 0o100755,
        content: Content::Text(init),
    });
    v
}

fn pad4<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
}

fn header<W: Write>(out: &mut W, ino: u32, name: &str, mode: u32, size: usize) -> io::Result<()> {
    let namesize = name.len() + 1;
    write!(
        out,
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, if mode & 0o040000 != 0 { 2 } else { 1 }, 0, 0, 0, 0, 0, 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + namesize)
}

/// Write `entries` as a newc archive (the format the kernel unpacks).
pub fn write_cpio<W: Write>(out: &mut W, entries: &[Entry]) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let data = match &e.content {
            Content::Dir => Vec::new(),
            Content::Host(p) => std::fs::read(p)
                .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", p.display())))?,
            Content::Text(t) => t.clone().into_bytes(),
            Content::Bytes(b) => b.clone(),
        };
        header(out, i as u32 + 1, &e.path, e.mode, data.len())?;
        out.write_all(&data)?;
        pad4(out, data.len())?;
    }
    header(out, 0, "TRAILER!!!", 0, 0)
}

/// Write `entries` as the archive at `path`.
pub fn write_initrd(path: &Path, entries: &[Entry]) -> Result<(), String> {
    let mut f = io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    write_cpio(&mut f, entries)
        .and_then(|_| f.flush())
        .map_err(|e| format!("cannot write the initramfs: {e}"))
}

/// Whether an ELF executable runs without a dynamic loader (no PT_INTERP).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|t| t != 3 /* PT_INTERP */)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_busybox_cowgup_and_init() {
        let e = entries(
            Arch::X86_64,
            Path::new("/bin/busybox"),
            Path::new("/t/cowgup"),
            &["--skip".into(), "1048576 kB".into()],
        );
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "dev",
                "proc",
                "sys",
                "tmp",
                "var",
                "var/tmp",
                "bin/busybox",
                "bin/cowgup",
                "init"
            ]
        );
        assert_eq!(e[8].content, Content::Host("/t/cowgup".into()));
        let Content::Text(init) = &e[9].content else {
            panic!("init is generated")
        };
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains(
            "stty -F /dev/ttyS1 raw -echo\n/bin/cowgup run --format json --output /tmp/result.json \
             --events /dev/ttyS1 '--skip' '1048576 kB' 2>&1 | cat"
        ));
        assert!(init.contains("> /dev/ttyS1"));
        assert!(init.contains(
            "for d in /dev/nvme0n1 $(by_serial cowgup-state); do [ -b $d ] && mount -t ext4 $d /var/tmp"
        ));
        let (insmod, mount) = (
            init.find("insmod").unwrap(),
            init.find("/var/tmp &&").unwrap(),
        );
        assert!(
            insmod < mount,
            "the state disk's modules load before it is mounted"
        );
        let arm = init_script(Arch::Arm64, &[]);
        assert!(arm.contains("--events /dev/hvc0") && !arm.contains("ttyS1"));
        let (setup, run) = (
            init.find("COWGUP_TOPOLOGY").unwrap(),
            init.find("/bin/cowgup run").unwrap(),
        );
        assert!(setup < run, "the topology is set up before the suite runs");
        assert!(init.contains("{ cat /tmp/topology.txt; echo \"=== COWGUP-RESULT rc=$rc"));
        assert!(init.contains(START) && init.contains(RESULT_END));
    }

    #[test]
    fn every_init_starts_with_the_preamble() {
        let p = preamble("");
        assert!(init_script(Arch::X86_64, &[]).starts_with(&p));
        assert!(p.ends_with(&super::super::topology::init_fragment()));
        let with = preamble("mount -t debugfs debugfs /sys/kernel/debug\n");
        assert!(with.contains(
            "mount -t tmpfs tmpfs /tmp\nmount -t debugfs debugfs /sys/kernel/debug\nby_serial()"
        ));
        assert_eq!(
            with.len(),
            p.len() + "mount -t debugfs debugfs /sys/kernel/debug\n".len()
        );
    }

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn cpio_is_newc_padded_and_terminated() {
        let mut out = Vec::new();
        write_cpio(
            &mut out,
            &[
                Entry {
                    path: "bin".into(),
                    mode: 0o040755,
                    content: Content::Dir,
                },
                Entry {
                    path: "init".into(),
                    mode: 0o100755,
                    content: Content::Text("abcde".into()),
                },
            ],
        )
        .unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0"));
        assert!(text.contains("abcde\0\0\0"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn static_elf_is_told_from_dynamic() {
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are linked dynamically unless built with crt-static.
        let dynamic = !is_static_elf(&this);
        assert_eq!(dynamic, !cfg!(target_feature = "crt-static"));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
