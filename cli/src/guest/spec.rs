//! `--kernel SPEC`: `host`, a path to a kernel image (x86 bzImage or arm64
//! Image, told by its header), `debian:<series>[/arm64[-16k]]` (the newest
//! `linux-image-<series>*-cloud-amd64`, `-cloud-arm64-unsigned` or
//! `-arm64-16k-unsigned` apt offers, downloaded and unpacked into a cache,
//! never installed), or `build:<series>[/arm64][+debug_vm][+64k]` (built
//! from Debian's `linux-source-<series>`: see `build`), or `tree:PATH[:ARCH]`
//! (the developer's own kernel tree: see `tree`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use super::arch::Arch;

/// One of Debian's kernel packages a spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebianKernel {
    pub series: String,
    pub arch: Arch,
    /// arm64 with 16 KiB base pages (Debian's `arm64-16k` flavour, 6.12
    /// only; it has no cloud variant, so more of it is modules).
    pub pages_16k: bool,
}

impl DebianKernel {
    /// `6.12`, `6.1/arm64`, `6.12/arm64-16k` (what follows `debian:`).
    pub fn parse(s: &str) -> Result<DebianKernel, String> {
        let known = "debian:6.1, debian:6.12, debian:6.1/arm64, debian:6.12/arm64, \
                     debian:6.12/arm64-16k";
        let (series, flavour) = s.split_once('/').unwrap_or((s, "x86_64"));
        if !["6.1", "6.12"].contains(&series) {
            return Err(format!(
                "debian:{s}: Debian offers the series 6.1 and 6.12 ({known})"
            ));
        }
        let (arch, pages_16k) = match flavour {
            "arm64-16k" if series == "6.12" => (Arch::Arm64, true),
            "arm64-16k" => {
                return Err(format!(
                    "debian:{s}: Debian's 16k-page kernel is 6.12 only ({known})"
                ))
            }
            a => (
                Arch::parse(a)
                    .ok_or_else(|| format!("debian:{s}: unknown flavour {a:?} ({known})"))?,
                false,
            ),
        };
        Ok(DebianKernel {
            series: series.into(),
            arch,
            pages_16k,
        })
    }

    pub fn label(&self) -> String {
        match (self.arch, self.pages_16k) {
            (Arch::X86_64, _) => format!("debian:{}", self.series),
            (a, false) => format!("debian:{}/{a}", self.series),
            (a, true) => format!("debian:{}/{a}-16k", self.series),
        }
    }

    /// apt's name pattern for its packages: the cloud flavour where there
    /// is one (fewer modules to load), `-unsigned` on arm64 (the signed
    /// packages are the same image, signed for Secure Boot).
    pub fn pattern(&self) -> String {
        let suffix = match (self.arch, self.pages_16k) {
            (Arch::X86_64, _) => "cloud-amd64",
            (Arch::Arm64, false) => "cloud-arm64-unsigned",
            (Arch::Arm64, true) => "arm64-16k-unsigned",
        };
        match self.series.as_str() {
            "6.1" => format!(r"^linux-image-6\.1\.0-[0-9]+-{suffix}$"),
            series => format!(
                r"^linux-image-{}\.[0-9]+\+deb[0-9]+-{suffix}$",
                series.replace('.', r"\.")
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpec {
    /// The running kernel: the suite as a subprocess.
    Host,
    /// A bzImage/vmlinuz booted under qemu.
    Image(PathBuf),
    /// One of Debian's kernels (`6.1`, `6.12`, on x86_64 or arm64).
    Debian(DebianKernel),
    /// Built from `linux-source-<series>` with the repo's config fragments.
    Build(super::build::BuildSpec),
    /// A kernel tree of the user's, built where kbuild would build it.
    Tree(super::tree::TreeSpec),
}

impl FromStr for KernelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "host" {
            return Ok(KernelSpec::Host);
        }
        if let Some(rest) = s.strip_prefix("debian:") {
            return DebianKernel::parse(rest).map(KernelSpec::Debian);
        }
        if let Some(rest) = s.strip_prefix("build:") {
            return super::build::BuildSpec::parse(rest).map(KernelSpec::Build);
        }
        if let Some(rest) = s.strip_prefix("tree:") {
            return super::tree::TreeSpec::parse(rest).map(KernelSpec::Tree);
        }
        if let Some((scheme, _)) = s.split_once(':') {
            if !scheme.contains('/') {
                return Err(format!(
                    "{s}: unknown kernel source {scheme:?} (host, debian:6.1[/arm64], debian:6.12[/arm64|/arm64-16k], build:6.12[/arm64][+debug_vm][+64k], tree:PATH[:arm64] or a path to a kernel image)"
                ));
            }
        }
        if s.is_empty() {
            return Err("empty kernel spec".into());
        }
        Ok(KernelSpec::Image(PathBuf::from(s)))
    }
}

impl KernelSpec {
    /// The guest's architecture: the spec's, or an image's own header (this
    /// host's when the header is not one we know: qemu will judge it).
    pub fn arch(&self) -> Arch {
        match self {
            KernelSpec::Host => Arch::host(),
            KernelSpec::Image(p) => Arch::of_image_file(p).unwrap_or_else(Arch::host),
            KernelSpec::Debian(d) => d.arch,
            KernelSpec::Build(b) => b.arch,
            KernelSpec::Tree(t) => t.arch,
        }
    }

    /// The column heading: what the user typed, a path shortened to its file name.
    pub fn label(&self) -> String {
        match self {
            KernelSpec::Host => "host".into(),
            KernelSpec::Image(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            KernelSpec::Debian(d) => d.label(),
            KernelSpec::Build(b) => b.label(),
            KernelSpec::Tree(t) => t.label(),
        }
    }

    /// The kernel image to boot: fetched (Debian), built (`build:`,
    /// `tree:`), or given.
    pub fn image(&self) -> Result<PathBuf, String> {
        match self {
            KernelSpec::Debian(d) => fetch_debian(d),
            KernelSpec::Build(b) => {
                super::build::build(b, &cache_dir().join(format!("build-{}", b.series)))
            }
            KernelSpec::Tree(t) => super::tree::build(t).map(|b| b.image),
            KernelSpec::Image(p) => Ok(p.clone()),
            KernelSpec::Host => Err("the host runs no guest".into()),
        }
    }
}

/// A kernel image named by path (`flag` is the option that named it) must
/// be a readable, non-empty regular file; checked before anything is built,
/// probed or booted. What is in it is qemu's to judge (a cell of its own).
pub fn check_image(flag: &str, p: &Path) -> Result<(), String> {
    use std::io::Read;
    let what = |why: &str| format!("{flag} {}: {why}", p.display());
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => what("no such file"),
        std::io::ErrorKind::PermissionDenied => what("not readable (permission denied)"),
        _ => what(&e.to_string()),
    };
    let meta = std::fs::metadata(p).map_err(io)?;
    if meta.is_dir() {
        return Err(what("a directory, not a kernel image"));
    }
    if !meta.is_file() {
        return Err(what("not a regular file"));
    }
    if meta.len() == 0 {
        return Err(what("an empty file, not a kernel image"));
    }
    std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut [0u8; 1]))
        .map_err(io)?;
    Ok(())
}

/// The newest package among `names` (one per line, as `apt-cache search`
/// prints `name - description`): compared by the numbers in the name.
pub fn newest_package(listing: &str) -> Option<String> {
    fn numbers(name: &str) -> Vec<u64> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect()
    }
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("linux-image-"))
        .max_by_key(|n| numbers(n))
        .map(str::to_string)
}

/// Where downloaded kernels are unpacked: `~/.cache/cowgup/kernels`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("cowgup").join("kernels")
}

fn vmlinuz_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel image for `debian:...`: the newest matching package, from the
/// cache or `apt-get download` + `dpkg-deb -x` (nothing is installed).
pub fn fetch_debian(d: &DebianKernel) -> Result<PathBuf, String> {
    let listing = run(Command::new("apt-cache").args(["search", "--names-only", &d.pattern()]))?;
    let package = newest_package(&listing).ok_or_else(|| {
        let foreign = if d.arch == Arch::host() {
            String::new()
        } else {
            format!("dpkg --add-architecture {} && ", d.arch.debian())
        };
        format!(
            "apt offers no package matching {} ({foreign}apt-get update? bookworm in sources.list?)",
            d.pattern()
        )
    })?;
    let dir = cache_dir().join(&package);
    if let Some(v) = vmlinuz_in(&dir) {
        return Ok(v);
    }
    let download = cache_dir().join(format!(".download-{package}"));
    std::fs::create_dir_all(&download)
        .map_err(|e| format!("cannot create {}: {e}", download.display()))?;
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}:{}", d.arch.debian())])
        .current_dir(&download))?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
    let partial = cache_dir().join(format!(".unpack-{package}"));
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    std::fs::rename(&partial, &dir).map_err(|e| format!("cannot move into the cache: {e}"))?;
    let _ = std::fs::remove_dir_all(&download);
    vmlinuz_in(&dir).ok_or_else(|| format!("{package} holds no boot/vmlinuz-*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("host".parse(), Ok(KernelSpec::Host));
        let deb = |s: &str| match s.parse::<KernelSpec>() {
            Ok(KernelSpec::Debian(d)) => Ok(d),
            other => Err(format!("{other:?}")),
        };
        let d = deb("debian:6.12").unwrap();
        assert_eq!(
            (d.arch, d.pages_16k, d.label().as_str()),
            (Arch::X86_64, false, "debian:6.12")
        );
        let d = deb("debian:6.12/arm64-16k").unwrap();
        assert_eq!((d.arch, d.pages_16k), (Arch::Arm64, true));
        assert_eq!(d.label(), "debian:6.12/arm64-16k");
        assert_eq!(
            deb("debian:6.1/aarch64").unwrap().label(),
            "debian:6.1/arm64"
        );
        assert!(deb("debian:6.1/arm64-16k")
            .unwrap_err()
            .contains("6.12 only"));
        assert!(deb("debian:6.12/riscv64")
            .unwrap_err()
            .contains("unknown flavour"));
        assert_eq!(
            "/k/bzImage".parse(),
            Ok(KernelSpec::Image("/k/bzImage".into()))
        );
        assert_eq!(
            "./vmlinuz".parse::<KernelSpec>().unwrap().label(),
            "vmlinuz"
        );
        assert!("debian:5.10".parse::<KernelSpec>().is_err());
        let e = "ftp:6.12".parse::<KernelSpec>().unwrap_err();
        assert!(e.contains("unknown kernel source"), "{e}");
        let b = "build:6.12+debug_vm".parse::<KernelSpec>().unwrap();
        assert_eq!(b.label(), "build:6.12+debug_vm");
        assert!("build:4.19".parse::<KernelSpec>().is_err());
        assert_eq!(
            "tree:../linux:arm64".parse::<KernelSpec>().unwrap().arch(),
            Arch::Arm64
        );
        assert!("tree:".parse::<KernelSpec>().is_err());
        assert!("".parse::<KernelSpec>().is_err());
    }

    #[test]
    fn a_kernel_path_must_be_a_readable_non_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = check_image("--kernel", &d.join("nonexistent")).unwrap_err();
        assert_eq!(
            e,
            format!("--kernel {}/nonexistent: no such file", d.display())
        );
        let e = check_image("--kernel", d).unwrap_err();
        assert!(e.ends_with(": a directory, not a kernel image"), "{e}");
        std::fs::write(d.join("empty"), "").unwrap();
        let e = check_image("--guest", &d.join("empty")).unwrap_err();
        assert!(e.starts_with("--guest ") && e.ends_with(": an empty file, not a kernel image"));
        let e = check_image("--kernel", Path::new("/dev/null")).unwrap_err();
        assert!(e.ends_with("not a regular file"), "{e}");
        std::fs::write(d.join("k"), "not a kernel, but qemu's to judge").unwrap();
        assert_eq!(check_image("--kernel", &d.join("k")), Ok(()));
        // Unreadable: only when not root (root reads a 0000 file).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("k"), std::fs::Permissions::from_mode(0o000)).unwrap();
        if !nix::unistd::geteuid().is_root() {
            let e = check_image("--kernel", &d.join("k")).unwrap_err();
            assert!(e.ends_with("not readable (permission denied)"), "{e}");
        }
    }

    #[test]
    fn newest_package_compares_numbers_not_text() {
        let listing = "linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud\n\
                       linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud\n\
                       linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud\n";
        assert_eq!(
            newest_package(listing).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let listing = "linux-image-6.12.99+deb12-cloud-amd64 - x\n\
                       linux-image-6.12.117+deb12-cloud-amd64 - x\n";
        assert_eq!(
            newest_package(listing).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(newest_package(""), None);
    }

    #[test]
    fn debian_patterns_name_one_flavour() {
        let p = |s: &str| DebianKernel::parse(s).unwrap().pattern();
        assert_eq!(
            p("6.12"),
            r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64$"
        );
        assert!(p("6.1").ends_with("-cloud-amd64$"));
        assert_eq!(
            p("6.1/arm64"),
            r"^linux-image-6\.1\.0-[0-9]+-cloud-arm64-unsigned$"
        );
        assert!(p("6.12/arm64-16k").ends_with(r"\+deb[0-9]+-arm64-16k-unsigned$"));
    }
}
