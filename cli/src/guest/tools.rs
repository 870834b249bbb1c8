//! The host programs a guest boot needs: qemu, mkfs.ext4, a static busybox
//! and a static cowgup for the guest's root.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A statically linked cowgup for the guests: `--guest-bin`, this program
/// when static, or a release build with `crt-static` from this checkout.
pub fn guest_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let is_static = |p: &Path| {
        std::fs::read(p)
            .map(|b| initramfs::is_static_elf(&b))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    if let Some(p) = explicit {
        return if is_static(p)? {
            Ok(p.into())
        } else {
            Err(format!("{}: not a static executable", p.display()))
        };
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if is_static(&me)? {
        return Ok(me);
    }
    let src = source_dir().ok_or(
        "this cowgup is linked dynamically and its sources are not here: pass --guest-bin a static build",
    )?;
    let target_dir = src.join("target").join("static");
    eprintln!("cowgup: building a static cowgup for the guests (cargo, target/static)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--quiet", "--release", "-p", "cowgup"])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the static build failed ({status})"));
    }
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/cowgup");
    if is_static(&bin)? {
        Ok(bin)
    } else {
        Err(format!("{}: built, but not static", bin.display()))
    }
}

pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub fn static_busybox() -> Result<PathBuf, String> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| std::fs::read(p).is_ok_and(|b| initramfs::is_static_elf(&b)))
        .ok_or_else(|| "no static busybox (apt-get install busybox-static)".to_string())
}
