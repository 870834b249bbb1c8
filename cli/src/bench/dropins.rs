//! The drop-in `cow` and `gup_longterm` (crate cowgup-tap) for the bench's
//! guest: static builds of this checkout for the guest's architecture, in
//! the same target directory as the guest's cowgup (`target/static`,
//! cross-linked with the target's gcc), so the names they print can be
//! compared with upstream's in the same guest.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest::arch::Arch;
use crate::guest::tools::static_for;

/// The drop-ins whose names are compared with the C programs of the same name.
pub const DROPINS: [&str; 2] = ["cow", "gup_longterm"];

fn source_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").exists().then_some(dir)
}

/// The `cargo build` arguments (after `cargo`) of the static drop-ins.
pub fn cargo_args(arch: Arch, target_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["build", "--quiet", "--release", "-p", "cowgup-tap"]
        .map(String::from)
        .to_vec();
    for b in DROPINS {
        v.extend(["--bin".into(), b.into()]);
    }
    v.extend([
        "--target".into(),
        arch.rust_target().into(),
        "--target-dir".into(),
        target_dir.display().to_string(),
    ]);
    v
}

/// The directory with the static drop-ins of `arch`, built if need be.
pub fn build(arch: Arch) -> Result<PathBuf, String> {
    let src = source_dir().ok_or(
        "the names comparison needs the drop-ins `cow` and `gup_longterm`, built from the \
         cowgup checkout this cowgup was built in, and its sources are not here",
    )?;
    let target_dir = src.join("target").join("static");
    let triple = arch.rust_target();
    eprintln!(
        "cowgup: building the static {arch} drop-ins cow, gup_longterm (cargo, target/static)"
    );
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args(cargo_args(arch, &target_dir))
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if let Some(cross) = arch.cross_compile() {
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            triple.to_uppercase().replace('-', "_")
        );
        cargo.env(var, format!("{cross}gcc"));
    }
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the static {arch} drop-ins did not build ({status}); a cross build needs \
             `rustup target add {triple}` and `apt-get install {}`",
            arch.cross_package()
        ));
    }
    let dir = target_dir.join(triple).join("release");
    for b in DROPINS {
        static_for(&dir.join(b), arch)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_ins_build_for_the_guests_target() {
        let v = cargo_args(Arch::Arm64, Path::new("/t/static"));
        assert_eq!(
            v.join(" "),
            "build --quiet --release -p cowgup-tap --bin cow --bin gup_longterm \
             --target aarch64-unknown-linux-gnu --target-dir /t/static"
        );
    }
}
