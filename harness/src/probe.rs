//! What the running kernel offers and what this process may do: page and
//! THP sizes, hugetlb pools, the huge zero page, swap, io_uring, gup_test,
//! privileges, the memlock limit, the filesystems trials write to. A plan is
//! made from it; it is read before the host is changed and once after. Every
//! field comes from a file or a syscall named next to it, so a surprising
//! value can be checked by hand. Also the one table of filesystem magic
//! numbers (`Filesystem`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use procfs::Current;

pub const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
pub const HUGETLB_DIR: &str = "/sys/kernel/mm/hugepages";
pub const DEBUGFS: &str = "/sys/kernel/debug";
pub const GUP_TEST: &str = "/sys/kernel/debug/gup_test";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HugetlbPool {
    pub size: usize,
    pub total: u64,
    pub free: u64,
}

impl HugetlbPool {
    pub fn dir(size: usize) -> PathBuf {
        Path::new(HUGETLB_DIR).join(format!("hugepages-{}kB", size / 1024))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    Yes,
    No(String),
}

impl Presence {
    pub fn is_yes(&self) -> bool {
        matches!(self, Presence::Yes)
    }
    pub fn reason(&self) -> &str {
        match self {
            Presence::Yes => "",
            Presence::No(r) => r,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Capabilities {
    /// uname -r
    pub kernel_release: String,
    /// sysconf(_SC_PAGESIZE)
    pub page_size: usize,
    /// transparent_hugepage/hpage_pmd_size; None without THP
    pub pmd_size: Option<usize>,
    /// anon THP sizes: every hugepages-<N>kB/enabled, plus the PMD size, ascending
    pub thp_sizes: Vec<usize>,
    /// /sys/kernel/mm/hugepages/hugepages-<N>kB, in readdir order (as cow.c lists them)
    pub hugetlb: Vec<HugetlbPool>,
    /// transparent_hugepage/use_zero_page == 1
    pub huge_zeropage: bool,
    /// SwapTotal from /proc/meminfo, in kB
    pub swap_kb: u64,
    /// Hugepagesize from /proc/meminfo: the default hugetlb size (MAP_HUGETLB
    /// without a size flag); None without hugetlb
    pub hugetlb_default_size: Option<usize>,
    /// io_uring_setup works; /proc/sys/kernel/io_uring_disabled
    pub io_uring: Presence,
    pub io_uring_disabled: Option<u32>,
    /// /sys/kernel/debug/gup_test can be opened read-write
    pub gup_test: Presence,
    pub debugfs_mounted: bool,
    pub euid: u32,
    /// CapEff bit 21 in /proc/self/status: needed for PFNs in pagemap and /proc/kpage*
    pub cap_sys_admin: bool,
    /// RLIMIT_MEMLOCK soft limit in bytes (None = unlimited)
    pub memlock: Option<u64>,
    /// filesystem type of the directories trials create files in
    pub scratch_fs: Vec<(PathBuf, String)>,
}

impl Capabilities {
    /// Read everything. A run probes once before it changes the host and
    /// once after (see the session); nothing else should need to.
    pub fn probe() -> Capabilities {
        let page_size = page_size();
        let pmd_size = pmd_size();
        let meminfo = procfs::Meminfo::current().ok();
        let io_uring_disabled =
            read_trim(Path::new("/proc/sys/kernel/io_uring_disabled")).and_then(|s| s.parse().ok());
        let debugfs_mounted = crate::guard::is_mountpoint(Path::new(DEBUGFS));
        Capabilities {
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            page_size,
            thp_sizes: thp_sizes(pmd_size),
            pmd_size,
            hugetlb: hugetlb_pools(),
            huge_zeropage: read_trim(&Path::new(THP_DIR).join("use_zero_page")).as_deref()
                == Some("1"),
            swap_kb: meminfo.as_ref().map_or(0, |m| m.swap_total / 1024),
            hugetlb_default_size: meminfo
                .as_ref()
                .and_then(|m| m.hugepagesize)
                .map(|b| b as usize)
                .filter(|&b| b > 0),
            io_uring: probe_io_uring(),
            io_uring_disabled,
            gup_test: probe_gup_test(debugfs_mounted),
            debugfs_mounted,
            euid: nix::unistd::geteuid().as_raw(),
            cap_sys_admin: cap_sys_admin(),
            memlock: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                .ok()
                .map(|(soft, _)| soft)
                .filter(|&s| s != libc::RLIM_INFINITY),
            scratch_fs: [
                std::env::temp_dir(),
                std::env::current_dir().unwrap_or_else(|_| ".".into()),
            ]
            .into_iter()
            .map(|d| {
                let fs = fs_type(&d);
                (d, fs)
            })
            .collect(),
        }
    }

    /// Mounting debugfs is the one host change that decides which trials can
    /// run at all; after it, only these two fields are read again.
    pub fn refresh_gup_test(&mut self) {
        self.debugfs_mounted = crate::guard::is_mountpoint(Path::new(DEBUGFS));
        self.gup_test = probe_gup_test(self.debugfs_mounted);
    }

    pub fn is_root(&self) -> bool {
        self.euid == 0
    }

    pub fn hugetlb_pool(&self, size: usize) -> Option<&HugetlbPool> {
        self.hugetlb.iter().find(|p| p.size == size)
    }

    /// A table for `cowgup probe` and the head of every report.
    pub fn table(&self) -> String {
        let kb = |n: usize| format!("{} kB", n / 1024);
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "{k:<22} {v}");
        };
        row("kernel", self.kernel_release.clone());
        row("page size", kb(self.page_size));
        row("PMD size", self.pmd_size.map_or("none (no THP)".into(), kb));
        row(
            "THP sizes",
            if self.thp_sizes.is_empty() {
                "none".into()
            } else {
                self.thp_sizes
                    .iter()
                    .map(|&s| kb(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        for p in &self.hugetlb {
            row(
                &format!("hugetlb {}", kb(p.size)),
                format!("{} free / {} total", p.free, p.total),
            );
        }
        if self.hugetlb.is_empty() {
            row("hugetlb", "none".into());
        }
        row(
            "huge zeropage",
            yes_no(self.huge_zeropage, "use_zero_page != 1"),
        );
        row(
            "swap",
            if self.swap_kb > 0 {
                format!("{} kB", self.swap_kb)
            } else {
                "none".into()
            },
        );
        row(
            "io_uring",
            match (&self.io_uring, self.io_uring_disabled) {
                (Presence::Yes, d) => format!(
                    "yes (io_uring_disabled={})",
                    d.map_or("n/a".into(), |d| d.to_string())
                ),
                (Presence::No(r), _) => format!("no: {r}"),
            },
        );
        row(
            "gup_test",
            match &self.gup_test {
                Presence::Yes => "yes".into(),
                Presence::No(r) => format!("no: {r}"),
            },
        );
        row("debugfs", yes_no(self.debugfs_mounted, "not mounted"));
        row("euid", self.euid.to_string());
        row(
            "CAP_SYS_ADMIN",
            yes_no(self.cap_sys_admin, "PFNs and /proc/kpage* hidden"),
        );
        row(
            "memlock limit",
            self.memlock
                .map_or("unlimited".into(), |b| format!("{} kB", b / 1024)),
        );
        for (d, fs) in &self.scratch_fs {
            row(&format!("fs of {}", d.display()), fs.clone());
        }
        t
    }
}

fn yes_no(b: bool, why_not: &str) -> String {
    if b {
        "yes".into()
    } else {
        format!("no ({why_not})")
    }
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn size_from_dir_name(name: &str) -> Option<usize> {
    name.strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse::<usize>()
        .ok()
        .map(|kb| kb * 1024)
}

fn thp_sizes(pmd: Option<usize>) -> Vec<usize> {
    let mut sizes: Vec<usize> = fs::read_dir(THP_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("enabled").exists())
        .filter_map(|e| size_from_dir_name(&e.file_name().to_string_lossy()))
        .collect();
    sizes.extend(pmd);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

fn hugetlb_pools() -> Vec<HugetlbPool> {
    fs::read_dir(HUGETLB_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let size = size_from_dir_name(&e.file_name().to_string_lossy())?;
            let num = |f: &str| {
                read_trim(&e.path().join(f))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            };
            Some(HugetlbPool {
                size,
                total: num("nr_hugepages"),
                free: num("free_hugepages"),
            })
        })
        .collect()
}

/// sysconf(_SC_PAGESIZE)
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as usize
}

/// transparent_hugepage/hpage_pmd_size; None without THP
pub fn pmd_size() -> Option<usize> {
    read_trim(&Path::new(THP_DIR).join("hpage_pmd_size"))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// CapEff bit 21 (CAP_SYS_ADMIN) in /proc/self/status
pub fn cap_sys_admin() -> bool {
    cap_eff().is_some_and(|c| c & (1 << 21) != 0)
}

fn cap_eff() -> Option<u64> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn probe_io_uring() -> Presence {
    #[repr(C)]
    struct Params([u32; 30]);
    let mut p = Params([0; 30]);
    // SAFETY: io_uring_setup with a zeroed params block the kernel fills in.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut p as *mut Params) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Presence::No(format!("io_uring_setup failed: {e}"));
    }
    // SAFETY: closing the fd io_uring_setup returned.
    unsafe { libc::close(fd as i32) };
    Presence::Yes
}

fn probe_gup_test(debugfs_mounted: bool) -> Presence {
    match fs::OpenOptions::new().read(true).write(true).open(GUP_TEST) {
        Ok(_) => Presence::Yes,
        Err(_) if !debugfs_mounted => {
            Presence::No("debugfs is not mounted at /sys/kernel/debug".into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Presence::No(
            "/sys/kernel/debug/gup_test absent (kernel built without CONFIG_GUP_TEST)".into(),
        ),
        Err(e) => Presence::No(format!("cannot open {GUP_TEST}: {e}")),
    }
}

/// Name of the filesystem holding `dir`, from statfs(2) f_type.
pub fn fs_type(dir: &Path) -> String {
    match nix::sys::statfs::statfs(dir) {
        Ok(s) => fs_name(s.filesystem_type().0 as u64),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The filesystems the suite names, and judges long-term pins on, by their
/// statfs(2) `f_type` (linux/magic.h). The one table of magic numbers: the
/// probe prints names from it and `fixtures::file` classifies files with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filesystem {
    Tmpfs,
    Hugetlbfs,
    /// EXT4_SUPER_MAGIC, which ext2 and ext3 share.
    Ext4,
    Xfs,
    Btrfs,
    Overlayfs,
    NineP,
    Nfs,
    Ramfs,
}

impl Filesystem {
    pub const ALL: [Filesystem; 9] = [
        Filesystem::Tmpfs,
        Filesystem::Hugetlbfs,
        Filesystem::Ext4,
        Filesystem::Xfs,
        Filesystem::Btrfs,
        Filesystem::Overlayfs,
        Filesystem::NineP,
        Filesystem::Nfs,
        Filesystem::Ramfs,
    ];

    pub fn magic(self) -> u64 {
        use nix::sys::statfs as m;
        let magic = match self {
            Filesystem::Tmpfs => m::TMPFS_MAGIC,
            Filesystem::Hugetlbfs => m::HUGETLBFS_MAGIC,
            Filesystem::Ext4 => m::EXT4_SUPER_MAGIC,
            Filesystem::Xfs => m::XFS_SUPER_MAGIC,
            Filesystem::Btrfs => m::BTRFS_SUPER_MAGIC,
            Filesystem::Overlayfs => m::OVERLAYFS_SUPER_MAGIC,
            Filesystem::Nfs => m::NFS_SUPER_MAGIC,
            // Not in nix: V9FS_MAGIC and RAMFS_MAGIC from linux/magic.h.
            Filesystem::NineP => return 0x0102_1997,
            Filesystem::Ramfs => return 0x8584_58f6,
        };
        magic.0 as u64
    }

    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Tmpfs => "tmpfs",
            Filesystem::Hugetlbfs => "hugetlbfs",
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
            Filesystem::Overlayfs => "overlayfs",
            Filesystem::NineP => "9p",
            Filesystem::Nfs => "nfs",
            Filesystem::Ramfs => "ramfs",
        }
    }

    pub fn from_magic(magic: u64) -> Option<Filesystem> {
        Filesystem::ALL.into_iter().find(|f| f.magic() == magic)
    }
}

pub fn fs_name(magic: u64) -> String {
    Filesystem::from_magic(magic).map_or_else(
        || format!("unknown (magic 0x{magic:x})"),
        |f| f.name().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_dirs_parse() {
        assert_eq!(size_from_dir_name("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(size_from_dir_name("hugepages-1048576kB"), Some(1 << 30));
        assert_eq!(size_from_dir_name("khugepaged"), None);
    }

    #[test]
    fn filesystem_magics_round_trip() {
        for f in Filesystem::ALL {
            assert_eq!(Filesystem::from_magic(f.magic()), Some(f));
        }
        assert_eq!(fs_name(0x1234), "unknown (magic 0x1234)");
        // This host's /proc is procfs, which the table does not name.
        assert!(fs_type(Path::new("/proc")).starts_with("unknown (magic 0x9fa0"));
    }

    #[test]
    fn probing_this_host_gives_a_sane_page_size_and_table() {
        let caps = Capabilities::probe();
        assert!(caps.page_size.is_power_of_two());
        assert!(caps.table().contains("page size"));
        // procfs gives bytes where /proc/meminfo prints kB.
        let text = fs::read_to_string("/proc/meminfo").unwrap();
        let kb = |key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse::<usize>()
                    .ok()
            })
        };
        assert_eq!(
            caps.hugetlb_default_size,
            kb("Hugepagesize:").map(|k| k * 1024)
        );
    }
}
