//! Kernel modules a cell needs on kernels that build them as modules: the
//! state disk's (NVMe or virtio-blk, ext4: built into Debian's cloud
//! kernels, modules of its arm64-16k one) and the topology's (Debian's
//! cloud kernels: zram, virtio_blk, libnvdimm, nd_pmem, nd_e820).
//! When the kernel image sits in an unpacked package (`.../boot/vmlinuz-<v>`
//! beside `.../lib/modules/<v>/`), the modules and what they depend on
//! (`depends=` in their `.modinfo`) are decompressed on the host and
//! appended to the cell's initramfs as a second cpio archive (the kernel
//! unpacks concatenated archives); `/init` loads them in order with
//! `insmod` before it mounts the state disk. Nothing is loaded for `base`
//! on a kernel that has the state disk's drivers built in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::guest::initramfs::{Content, Entry};
use crate::guest::topology::{Feature, Topology};

/// Where `/init` finds them (loaded in file-name order).
pub const DIR: &str = "lib/modules/cowgup";

/// What every cell needs: the state disk (either disk, and ext4 with the
/// checksum it asks the crypto API for at mount time: no `depends=`) and
/// arm64's result port, a virtio console (a module on Debian's 6.1
/// cloud-arm64, with its PCI transport).
const STATE_DISK: [&str; 6] = [
    "nvme",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "crc32c_generic",
    "ext4",
];

/// The modules a cell needs (dependencies come on their own).
pub fn wanted(t: &Topology) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    let mut add = |names: &[&'static str]| {
        for n in names {
            if !v.contains(n) {
                v.push(n);
            }
        }
    };
    add(&STATE_DISK);
    // zram's default compressor comes through the crypto API (lzo-rle on
    // 6.1, lz4 on Debian's arm64 kernels; modules there); virtio-blk needs
    // its PCI transport.
    if t.has(Feature::Zram) {
        add(&["zram", "lzo_rle", "lz4"]);
    }
    if t.has(Feature::Ext4) {
        add(&["virtio_pci", "virtio_blk"]);
    }
    if t.has(Feature::Fsdax) {
        add(&[
            "virtio_pci",
            "virtio_blk",
            "libnvdimm",
            "nd_pmem",
            "nd_e820",
        ]);
    }
    v
}

/// `.../lib/modules/<release>` of an image at `.../boot/vmlinuz-<release>`.
pub fn modules_dir(kernel: &Path) -> Option<PathBuf> {
    let name = kernel.file_name()?.to_str()?;
    let release = name.strip_prefix("vmlinuz-")?;
    let boot = kernel.parent()?;
    if boot.file_name()? != "boot" {
        return None;
    }
    let dir = boot.parent()?.join("lib/modules").join(release);
    dir.join("kernel").is_dir().then_some(dir)
}

/// A module's name from its file name (`nd_pmem.ko.xz` -> `nd_pmem`; `-` is `_`).
pub fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

/// Every module file under `dir/kernel`, by name.
pub fn index(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()).and_then(module_name) {
                found.insert(n, p);
            }
        }
    }
    found
}

/// Modules built into the kernel (`modules.builtin`), by name.
pub fn builtin(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(module_name)
        .collect()
}

/// The `depends=` of a module's `.modinfo` (names, comma-separated).
pub fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko
        .windows(key.len() + 1)
        .position(|w| w[0] == 0 && &w[1..] == key)
    else {
        return Vec::new();
    };
    let rest = &ko[at + 1 + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|s| s.trim().replace('-', "_"))
        .filter(|s| !s.is_empty())
        .collect()
}

/// A module file's bytes, decompressed (`xz -dc` / `zstd -dc` / `gzip -dc`).
pub fn load(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(|e| format!("{name}: {e}")),
        Some(t) => {
            let out = std::process::Command::new(t)
                .arg("-dc")
                .arg(path)
                .output()
                .map_err(|e| format!("cannot run {t}: {e}"))?;
            if out.status.success() {
                Ok(out.stdout)
            } else {
                Err(format!("{t} -dc {name} failed"))
            }
        }
    }
}

/// The modules to load for `want`, dependencies first, with their bytes;
/// built-in and absent ones are left out (the topology's setup line then
/// says what is missing).
pub fn resolve(
    want: &[&str],
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    load: &dyn Fn(&Path) -> Result<Vec<u8>, String>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        load: &dyn Fn(&Path) -> Result<Vec<u8>, String>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) || builtin.contains(name) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            return Ok(());
        };
        let bytes = load(path)?;
        for d in depends(&bytes) {
            visit(&d, index, builtin, load, seen, out)?;
        }
        out.push((name.to_string(), bytes));
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in want {
        visit(w, index, builtin, load, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// The appended archive's entries: `lib/modules/cowgup/NN-<name>.ko`.
pub fn entries(mods: Vec<(String, Vec<u8>)>) -> Vec<Entry> {
    let mut v: Vec<Entry> = ["lib", "lib/modules", DIR]
        .iter()
        .map(|d| Entry {
            path: d.to_string(),
            mode: 0o040755,
            content: Content::Dir,
        })
        .collect();
    for (i, (name, bytes)) in mods.into_iter().enumerate() {
        v.push(Entry {
            path: format!("{DIR}/{i:02}-{name}.ko"),
            mode: 0o100644,
            content: Content::Bytes(bytes),
        });
    }
    v
}

/// What `kernel` needs loaded for `t`, as archive entries (empty when
/// nothing: `base`, a kernel with it all built in, or no modules beside it).
pub fn for_cell(kernel: &Path, t: &Topology) -> Result<Vec<Entry>, String> {
    let want = wanted(t);
    let Some(dir) = (!want.is_empty()).then(|| modules_dir(kernel)).flatten() else {
        return Ok(Vec::new());
    };
    let mods = resolve(&want, &index(&dir), &builtin(&dir), &load)?;
    Ok(if mods.is_empty() {
        Vec::new()
    } else {
        entries(mods)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modinfo(deps: &str) -> Vec<u8> {
        let mut v = b"\x7fELF junk\0license=GPL\0".to_vec();
        v.extend_from_slice(format!("depends={deps}\0name=x\0").as_bytes());
        v
    }

    #[test]
    fn features_want_their_modules() {
        let t: Topology = "zram+fsdax".parse().unwrap();
        assert_eq!(
            wanted(&t)[STATE_DISK.len()..],
            ["zram", "lzo_rle", "lz4", "libnvdimm", "nd_pmem", "nd_e820"]
        );
        assert_eq!(wanted(&Topology::base()), STATE_DISK);
        assert_eq!(wanted(&"movable".parse().unwrap()), STATE_DISK);
    }

    #[test]
    fn names_and_depends_parse() {
        assert_eq!(module_name("nd_pmem.ko.xz").as_deref(), Some("nd_pmem"));
        assert_eq!(module_name("dax-hmem.ko").as_deref(), Some("dax_hmem"));
        assert_eq!(module_name("modules.order"), None);
        assert_eq!(
            depends(&modinfo("libnvdimm,nd_btt")),
            ["libnvdimm", "nd_btt"]
        );
        assert!(depends(&modinfo("")).is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }

    #[test]
    fn dependencies_load_first_builtins_and_absent_ones_are_left_out() {
        let index: BTreeMap<String, PathBuf> = [
            ("zram", "/m/zram.ko.xz"),
            ("zsmalloc", "/m/zsmalloc.ko.xz"),
            ("nd_pmem", "/m/nd_pmem.ko.xz"),
            ("nd_btt", "/m/nd_btt.ko.xz"),
            ("libnvdimm", "/m/libnvdimm.ko.xz"),
        ]
        .iter()
        .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
        .collect();
        let builtin: BTreeSet<String> = ["virtio_blk".to_string()].into();
        let load = |p: &Path| -> Result<Vec<u8>, String> {
            Ok(match p.to_str().unwrap() {
                "/m/zram.ko.xz" => modinfo("zsmalloc"),
                "/m/nd_pmem.ko.xz" => modinfo("nd_btt,libnvdimm"),
                "/m/nd_btt.ko.xz" => modinfo("libnvdimm"),
                _ => modinfo(""),
            })
        };
        let t: Topology = "zram+fsdax".parse().unwrap();
        let got = resolve(&wanted(&t), &index, &builtin, &load).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["zsmalloc", "zram", "libnvdimm", "nd_btt", "nd_pmem"],
            "nd_e820 absent, virtio_blk built in"
        );
        let e = entries(got);
        assert_eq!(e[2].path, "lib/modules/cowgup");
        assert_eq!(e[3].path, "lib/modules/cowgup/00-zsmalloc.ko");
        assert_eq!(e[7].path, "lib/modules/cowgup/04-nd_pmem.ko");
    }

    #[test]
    fn modules_sit_beside_an_unpacked_package_only() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("boot/vmlinuz-6.1.0-57-cloud-amd64");
        std::fs::create_dir_all(k.parent().unwrap()).unwrap();
        assert_eq!(modules_dir(&k), None);
        let m = dir.path().join("lib/modules/6.1.0-57-cloud-amd64");
        std::fs::create_dir_all(m.join("kernel/drivers/block/zram")).unwrap();
        std::fs::write(m.join("kernel/drivers/block/zram/zram.ko"), modinfo("")).unwrap();
        std::fs::write(
            m.join("modules.builtin"),
            "kernel/drivers/block/virtio_blk.ko\n",
        )
        .unwrap();
        assert_eq!(modules_dir(&k), Some(m.clone()));
        assert_eq!(modules_dir(Path::new("/k/bzImage")), None);
        assert!(builtin(&m).contains("virtio_blk"));
        let e = for_cell(&k, &"zram+ext4".parse().unwrap()).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "lib",
                "lib/modules",
                "lib/modules/cowgup",
                "lib/modules/cowgup/00-zram.ko"
            ]
        );
        assert!(
            for_cell(&k, &Topology::base()).unwrap().is_empty(),
            "the state disk's drivers are built in (or absent)"
        );
    }
}
