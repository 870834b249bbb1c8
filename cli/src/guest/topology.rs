//! `--topology NAME`: what a guest cell sets up besides the kernel. A cell
//! is kernel x topology. `base` is what every guest has (an ext4 disk on
//! `/var/tmp`, the suite provisioning hugetlb 2 MiB pools and swap itself;
//! 1 GiB pages reserved at boot with `--with-1g`); other names add features,
//! combined with `+` (`zram+fsdax`):
//!
//! - `zram`: `/init` makes `/dev/zram0` a swap device before the suite runs;
//! - `ext4`: a dedicated ext4 disk on virtio-blk, mounted on `/mnt/ext4` and
//!   used as the suite's state directory;
//! - `fsdax`: a legacy pmem region (`memmap=256M!4G`, guest RAM, so it is
//!   empty at boot): `/init` copies a host-formatted ext4 image (4 KiB
//!   blocks, on a virtio-blk disk) onto `/dev/pmem0` and mounts it `-o dax`
//!   on `/mnt/dax`, then checks the mount really is DAX;
//! - `movable`: `movablecore=2G`, checked for a populated Movable zone.
//!
//! Where the kernel builds a feature's driver as a module, the cell's
//! initramfs carries it (see `modules`) and `/init` loads it first.
//!
//! `/init` reports each feature as one `=== TOPOLOGY <feature> ok|FAILED:
//! ...` line (console and result port) and exposes what it set up to the
//! suite as environment variables, also written to `/etc/cowgup/topology.env`:
//! `COWGUP_TOPOLOGY`, `COWGUP_ZRAM_SWAP`, `COWGUP_EXT4_DIR`,
//! `COWGUP_FSDAX_DIR`, `COWGUP_FSDAX_DEV`, `COWGUP_MOVABLE_PAGES`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Marker of a feature's setup line.
pub const TOPOLOGY: &str = "=== TOPOLOGY";
/// The kernel parameter `/init` reads the features from.
pub const PARAM: &str = "cowgup.topology";

/// Where the pmem region lives: inside the guest's RAM above 4 GiB (the pc
/// machine maps RAM beyond 3 GiB there; guests get at least 6 GiB).
pub const PMEM_MEMMAP: &str = "memmap=256M!4G";
pub const PMEM_BYTES: u64 = 256 << 20;
pub const MOVABLECORE: &str = "movablecore=2G";
pub const EXT4_DISK_BYTES: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    Zram,
    Ext4,
    Fsdax,
    Movable,
}

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::Zram,
        Feature::Ext4,
        Feature::Fsdax,
        Feature::Movable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Zram => "zram",
            Feature::Ext4 => "ext4",
            Feature::Fsdax => "fsdax",
            Feature::Movable => "movable",
        }
    }
}

/// A set of features; the empty set is `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    features: Vec<Feature>,
}

impl Topology {
    pub fn base() -> Topology {
        Topology { features: vec![] }
    }

    pub fn is_base(&self) -> bool {
        self.features.is_empty()
    }

    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(&f)
    }

    /// What this topology adds to the kernel command line.
    pub fn cmdline(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.is_base() {
            return v;
        }
        if self.has(Feature::Fsdax) {
            v.push(PMEM_MEMMAP.to_string());
        }
        if self.has(Feature::Movable) {
            v.push(MOVABLECORE.to_string());
        }
        v.push(format!("{PARAM}={self}"));
        v
    }

    /// The disks this topology adds (beyond the base state disk).
    pub fn disks(&self, dir: &Path) -> Vec<Disk> {
        let mut v = Vec::new();
        if self.has(Feature::Ext4) {
            v.push(Disk {
                path: dir.join("ext4.img"),
                serial: "cowgup-ext4".into(),
                bytes: EXT4_DISK_BYTES,
                mkfs: vec!["-q".into(), "-F".into()],
            });
        }
        if self.has(Feature::Fsdax) {
            // DAX needs the block size to equal the page size.
            v.push(Disk {
                path: dir.join("fsdax.img"),
                serial: "cowgup-dax".into(),
                bytes: PMEM_BYTES,
                mkfs: vec!["-q".into(), "-F".into(), "-b".into(), "4096".into()],
            });
        }
        v
    }
}

/// A virtio-blk disk, found in the guest by its serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
    pub bytes: u64,
    /// `mkfs.ext4` options (the image path follows).
    pub mkfs: Vec<String>,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_base() {
            return f.write_str("base");
        }
        let names: Vec<&str> = self.features.iter().map(|x| x.name()).collect();
        f.write_str(&names.join("+"))
    }
}

impl FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut features = Vec::new();
        for part in s.split('+') {
            if part == "base" {
                continue;
            }
            let f = Feature::ALL
                .into_iter()
                .find(|f| f.name() == part)
                .ok_or_else(|| {
                    format!("{s}: unknown topology {part:?} (base, zram, ext4, fsdax, movable; combine with +)")
                })?;
            if !features.contains(&f) {
                features.push(f);
            }
        }
        features.sort();
        Ok(Topology { features })
    }
}

/// The part of `/init` that sets the topology up (before the suite runs;
/// `/init` defines `by_serial`, the block device of a disk serial):
/// reads `cowgup.topology=` from `/proc/cmdline`, reports each feature on
/// the console and in `/tmp/topology.txt` (sent ahead of the result frame),
/// exports what it set up.
pub fn init_fragment() -> String {
    format!(
        r#"mkdir -p /etc/cowgup /mnt
topo=base
for w in $(cat /proc/cmdline); do case $w in {PARAM}=*) topo=${{w#{PARAM}=}};; esac; done
: > /tmp/topology.txt
: > /etc/cowgup/topology.env
setenv() {{ export "$1=$2"; echo "$1=$2" >> /etc/cowgup/topology.env; }}
report() {{ echo "{TOPOLOGY} $*"; echo "{TOPOLOGY} $*" >> /tmp/topology.txt; }}
setenv COWGUP_TOPOLOGY $topo
wait_for() {{ i=0; while [ ! -e "$1" ] && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done; }}
case "+$topo+" in *+zram+*)
  if [ ! -e /sys/block/zram0/disksize ]; then report "zram FAILED: no /sys/block/zram0 (CONFIG_ZRAM neither built in nor loadable)"
  elif ! echo 1G > /sys/block/zram0/disksize; then report "zram FAILED: cannot size /dev/zram0"
  elif ! mkswap /dev/zram0 >/dev/null || ! swapon /dev/zram0; then report "zram FAILED: mkswap/swapon /dev/zram0"
  else setenv COWGUP_ZRAM_SWAP /dev/zram0; report "zram ok: /dev/zram0 (1 GiB) is swap"; fi;;
esac
case "+$topo+" in *+ext4+*)
  d=$(by_serial cowgup-ext4)
  if [ -z "$d" ]; then report "ext4 FAILED: no virtio-blk disk with serial cowgup-ext4 (CONFIG_VIRTIO_BLK neither built in nor loadable?)"
  elif ! mkdir -p /mnt/ext4 || ! mount -t ext4 $d /mnt/ext4; then report "ext4 FAILED: cannot mount $d on /mnt/ext4"
  else setenv COWGUP_EXT4_DIR /mnt/ext4; setenv COWGUP_STATE_DIR /mnt/ext4/cowgup; report "ext4 ok: $d mounted on /mnt/ext4, the state directory"; fi;;
esac
case "+$topo+" in *+fsdax+*)
  d=$(by_serial cowgup-dax); wait_for /dev/pmem0
  if [ ! -b /dev/pmem0 ]; then report "fsdax FAILED: no /dev/pmem0 from {PMEM_MEMMAP} (CONFIG_X86_PMEM_LEGACY, BLK_DEV_PMEM neither built in nor loadable?)"
  elif [ "$(cat /sys/block/pmem0/queue/dax 2>/dev/null)" != 1 ]; then report "fsdax FAILED: /dev/pmem0 does not support DAX (CONFIG_FS_DAX?)"
  elif [ -z "$d" ]; then report "fsdax FAILED: no virtio-blk disk with serial cowgup-dax holding the ext4 image"
  elif ! dd if=$d of=/dev/pmem0 bs=1M 2>/dev/null; then report "fsdax FAILED: cannot copy the ext4 image from $d onto /dev/pmem0"
  elif ! mkdir -p /mnt/dax || ! mount -t ext4 -o dax /dev/pmem0 /mnt/dax; then report "fsdax FAILED: mount -t ext4 -o dax /dev/pmem0 /mnt/dax refused"
  elif ! grep -q '^/dev/pmem0 /mnt/dax ext4 [^ ]*dax' /proc/mounts; then report "fsdax FAILED: /mnt/dax mounted without dax: $(grep /mnt/dax /proc/mounts)"
  else setenv COWGUP_FSDAX_DIR /mnt/dax; setenv COWGUP_FSDAX_DEV /dev/pmem0; report "fsdax ok: /dev/pmem0 ($(($(cat /sys/block/pmem0/size) / 2048)) MiB) ext4 mounted on /mnt/dax: $(grep /mnt/dax /proc/mounts)"; fi;;
esac
case "+$topo+" in *+movable+*)
  p=$(awk '/^Node .* zone +Movable/ {{m=1; next}} /^Node/ {{m=0}} m && $1 == "present" {{s += $2}} END {{print s+0}}' /proc/zoneinfo)
  if [ "$p" -gt 0 ]; then setenv COWGUP_MOVABLE_PAGES $p; report "movable ok: zone Movable has $p pages present ({MOVABLECORE})"
  else report "movable FAILED: no populated Movable zone in /proc/zoneinfo after {MOVABLECORE} (CONFIG_MEMORY_HOTPLUG?)"; fi;;
esac
"#
    )
}

/// A feature's setup line, as `/init` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    pub feature: String,
    pub ok: bool,
    pub detail: String,
}

/// The `=== TOPOLOGY` lines of a result port (or console).
pub fn parse_setup(channel: &str) -> Vec<Setup> {
    channel
        .lines()
        .filter_map(|l| l.strip_prefix(TOPOLOGY)?.strip_prefix(' '))
        .filter_map(|rest| {
            let (feature, rest) = rest.split_once(' ')?;
            let (ok, detail) = if let Some(d) = rest.strip_prefix("ok: ") {
                (true, d)
            } else {
                (false, rest.strip_prefix("FAILED: ")?)
            };
            Some(Setup {
                feature: feature.into(),
                ok,
                detail: detail.trim().into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_combine() {
        assert!("base".parse::<Topology>().unwrap().is_base());
        let t: Topology = "fsdax+zram+zram".parse().unwrap();
        assert_eq!(t.to_string(), "zram+fsdax");
        assert!(t.has(Feature::Fsdax) && t.has(Feature::Zram) && !t.has(Feature::Ext4));
        let e = "numa".parse::<Topology>().unwrap_err();
        assert!(e.contains("unknown topology \"numa\""), "{e}");
        assert_eq!(Topology::base().to_string(), "base");
    }

    #[test]
    fn base_adds_nothing() {
        let b = Topology::base();
        assert!(b.cmdline().is_empty());
        assert!(b.disks(Path::new("/w")).is_empty());
    }

    #[test]
    fn fsdax_gets_a_pmem_region_and_a_page_sized_ext4_image() {
        let t: Topology = "fsdax".parse().unwrap();
        assert_eq!(t.cmdline(), ["memmap=256M!4G", "cowgup.topology=fsdax"]);
        let d = t.disks(Path::new("/w"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, Path::new("/w/fsdax.img"));
        assert_eq!(d[0].serial, "cowgup-dax");
        assert_eq!(d[0].bytes, PMEM_BYTES, "the image fills the region");
        assert_eq!(d[0].mkfs, ["-q", "-F", "-b", "4096"]);
    }

    #[test]
    fn movable_ext4_and_zram() {
        let t: Topology = "movable+ext4+zram".parse().unwrap();
        assert_eq!(
            t.cmdline(),
            ["movablecore=2G", "cowgup.topology=zram+ext4+movable"]
        );
        let d = t.disks(Path::new("/w"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].serial, "cowgup-ext4");
        assert_eq!(d[0].bytes, 1 << 30);
    }

    #[test]
    fn the_init_fragment_sets_up_and_exports_each_feature() {
        let s = init_fragment();
        assert!(s.contains("cowgup.topology=*) topo=${w#cowgup.topology=}"));
        assert!(s.contains("mount -t ext4 -o dax /dev/pmem0 /mnt/dax"));
        assert!(s.contains("setenv COWGUP_FSDAX_DIR /mnt/dax"));
        assert!(s.contains("/sys/block/pmem0/queue/dax"));
        assert!(s.contains("swapon /dev/zram0"));
        assert!(s.contains("setenv COWGUP_STATE_DIR /mnt/ext4/cowgup"));
        assert!(s.contains("zone +Movable"));
        for f in Feature::ALL {
            assert!(s.contains(&format!("*+{}+*)", f.name())), "{f:?}");
        }
    }

    #[test]
    fn setup_lines_parse() {
        let ch = "=== TOPOLOGY fsdax ok: /dev/pmem0 (256 MiB) ext4 mounted on /mnt/dax\n\
                  noise\n=== TOPOLOGY zram FAILED: no /sys/block/zram0\n=== TOPOLOGY bad\n";
        let s = parse_setup(ch);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            Setup {
                feature: "fsdax".into(),
                ok: true,
                detail: "/dev/pmem0 (256 MiB) ext4 mounted on /mnt/dax".into()
            }
        );
        assert!(!s[1].ok);
        assert_eq!(s[1].detail, "no /sys/block/zram0");
    }
}
