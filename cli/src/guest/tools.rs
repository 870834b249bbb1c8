//! The host programs a guest boot needs: qemu, mkfs.ext4, a static busybox
//! and a static cowgup for the guest's root, of the guest's architecture
//! (cross-built, and Debian's `busybox-static:arm64`, for arm64 guests on an
//! x86_64 host).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::arch::Arch;
use super::initramfs;

/// Every program in `names` is on `PATH`; else which is not, and `hint`.
pub fn require(names: &[&str], hint: &str) -> Result<(), String> {
    for t in names {
        tool(t).ok_or(format!("{t} not found{hint}"))?;
    }
    Ok(())
}

fn source_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").exists().then_some(dir)
}

/// The ELF machine of an executable (`e_machine`), if it is one.
fn elf_machine(bytes: &[u8]) -> Option<u16> {
    (bytes.get(..4) == Some(b"\x7fELF")).then_some(())?;
    Some(u16::from_le_bytes(bytes.get(18..20)?.try_into().ok()?))
}

/// Whether `p` is a static executable for `arch` (else what it is).
pub fn static_for(p: &Path, arch: Arch) -> Result<(), String> {
    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !initramfs::is_static_elf(&bytes) {
        return Err(format!("{}: not a static executable", p.display()));
    }
    match elf_machine(&bytes) {
        Some(m) if m == arch.elf_machine() => Ok(()),
        m => Err(format!(
            "{}: not an {arch} executable (ELF machine {m:?})",
            p.display()
        )),
    }
}

/// A statically linked cowgup for `arch` guests: the `--guest-bin` of that
/// architecture (each is told by its ELF header), this program when static
/// and of `arch`, or a release build with `crt-static` from this checkout
/// (cross-compiled with the target's gcc as linker for another architecture).
pub fn guest_binary(explicit: &[PathBuf], arch: Arch) -> Result<PathBuf, String> {
    for p in explicit {
        std::fs::metadata(p).map_err(|e| format!("--guest-bin {}: {e}", p.display()))?;
        if static_for(p, arch).is_ok() {
            return Ok(p.clone());
        }
    }
    if let Some(p) = explicit
        .first()
        .filter(|_| explicit.len() == 1 && arch == Arch::host())
    {
        // The one given is for this host's guests: say what is wrong with it.
        static_for(p, arch)?;
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if static_for(&me, arch).is_ok() {
        return Ok(me);
    }
    let src = source_dir().ok_or(format!(
        "no static {arch} cowgup: this one is not, and its sources are not here: pass \
         --guest-bin a static {arch} build"
    ))?;
    build_static(&src, arch)
}

/// `cargo build --release --target <arch> -p cowgup` with `crt-static`,
/// into `target/static` (a cross build links with `<triple>-gcc`).
fn build_static(src: &Path, arch: Arch) -> Result<PathBuf, String> {
    let target_dir = src.join("target").join("static");
    let triple = arch.rust_target();
    eprintln!("cowgup: building a static {arch} cowgup for the guests (cargo, target/static)");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args(["build", "--quiet", "--release", "-p", "cowgup"])
        .args(["--target", triple, "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    let mut hint = String::new();
    if let Some(cross) = arch.cross_compile() {
        let linker = format!("{cross}gcc");
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            triple.to_uppercase().replace('-', "_")
        );
        cargo.env(var, &linker);
        hint = format!(
            "; a cross build needs `rustup target add {triple}` and `apt-get install {} {}`",
            arch.cross_package(),
            match arch {
                Arch::Arm64 => "libc6-dev-arm64-cross",
                Arch::X86_64 => "libc6-dev-amd64-cross",
            }
        );
    }
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the static {arch} build failed ({status}){hint}"));
    }
    let bin = target_dir.join(triple).join("release/cowgup");
    static_for(&bin, arch).map(|()| bin)
}

pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A static busybox for `arch` guests: the host's own, or Debian's
/// `busybox-static:<arch>` downloaded into the cache (never installed).
pub fn static_busybox(arch: Arch) -> Result<PathBuf, String> {
    if let Some(p) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| static_for(p, arch).is_ok())
    {
        return Ok(p);
    }
    if arch == Arch::host() {
        return Err("no static busybox (apt-get install busybox-static)".into());
    }
    foreign_busybox(arch)
}

fn foreign_busybox(arch: Arch) -> Result<PathBuf, String> {
    let dir = super::spec::cache_dir().join(format!("busybox-{arch}"));
    let bin = dir.join("bin/busybox");
    if static_for(&bin, arch).is_ok() {
        return Ok(bin);
    }
    let package = format!("busybox-static:{}", arch.debian());
    let hint = format!(
        "no static {arch} busybox: `apt-get download {package}` failed (dpkg \
         --add-architecture {} && apt-get update)",
        arch.debian()
    );
    let download = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| format!("{}: {e}", download.display()))?;
    let ok = Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&download)
        .output()
        .is_ok_and(|o| o.status.success());
    let deb = std::fs::read_dir(&download).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    });
    let (true, Some(deb)) = (ok, deb) else {
        return Err(hint);
    };
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(&download);
    if !unpacked {
        return Err(format!("cannot unpack {}", deb.display()));
    }
    static_for(&bin, arch).map(|()| bin)
}
