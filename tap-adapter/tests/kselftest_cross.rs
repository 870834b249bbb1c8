//! The kselftest collection (tap-adapter/kselftest/Makefile) cross-builds
//! the drop-in programs the kselftest way: `ARCH=arm64
//! CROSS_COMPILE=aarch64-linux-gnu-` choose the cargo target, link with the
//! cross gcc and link statically, so that the programs run in any initramfs.
//!
//! The checks:
//! - what `make -n` would run for each ARCH/CROSS_COMPILE (seconds: the
//!   target, the linker, crt-static, where the programs are picked up, and
//!   that a native build stays as `cargo build --release` makes it);
//! - the real cross build, from this checkout into a temporary target
//!   directory: a cold release build of the workspace for aarch64 (3 to 7
//!   minutes on two cores), so it is marked ignored. Run it with
//!
//!   ```sh
//!   cargo test -p cowgup-tap --test kselftest_cross -- --ignored
//!   ```
//!
//!   (`COWGUP_CROSS_TARGET_DIR=DIR` builds into DIR and keeps it, so that a
//!   second run takes seconds). It needs `rustup target add
//!   aarch64-unknown-linux-gnu` and Debian's `gcc-aarch64-linux-gnu` and
//!   `libc6-dev-arm64-cross`, and is reported ignored, saying which is
//!   missing, without them. (Its ELF reader is checked on this program.)
//!
//! Both use the kernel's lib.mk, fetched once per checkout under
//! target/kselftest-framework (as the consumers tests do).

mod common;
use common::framework;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cowgup_harness::libtest::{self, check, check_unless};

const TRIPLE: &str = "aarch64-unknown-linux-gnu";
const CROSS_COMPILE: &str = "aarch64-linux-gnu-";
const PROGRAMS: [&str; 3] = ["cow", "gup_longterm", "gup_test"];
/// ELF e_machine of AArch64 (EM_AARCH64).
const EM_AARCH64: u16 = 183;
/// Program header type of the dynamic loader's path (PT_INTERP).
const PT_INTERP: u32 = 3;

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn collection() -> PathBuf {
    checkout().join("tap-adapter/kselftest")
}

/// `make -C tap-adapter/kselftest` with these arguments, its output (both
/// streams) and whether it succeeded. ARCH and CROSS_COMPILE are what the
/// arguments say, empty if they say nothing (on make's command line, the
/// last assignment wins), whatever this test's environment or an outer
/// make holds. The checkout's RUSTFLAGS are for its host build, not for a
/// cross target: they are left out.
fn make(args: &[String]) -> Result<(bool, String), String> {
    let out = Command::new("make")
        .arg("-C")
        .arg(collection())
        .args(["ARCH=", "CROSS_COMPILE="])
        .args(args)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The last lines of a long output, for an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `make -n` would run, in the fetched framework.
fn dry_run(fw: &Path, vars: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "-n".to_string(),
        format!("KSFT_FRAMEWORK={}", fw.display()),
        "COWGUP_TARGET_DIR=/T".into(),
        "OUTPUT=/O".into(),
    ];
    args.extend(vars.iter().map(|v| v.to_string()));
    let (ok, text) = make(&args)?;
    if !ok {
        return Err(format!("make -n {vars:?} failed:\n{}", tail(&text, 20)));
    }
    Ok(text)
}

fn expect(text: &str, vars: &[&str], has: &[&str], lacks: &[&str]) -> Result<(), String> {
    for h in has {
        if !text.contains(h) {
            return Err(format!("make -n {vars:?} does not say {h:?}:\n{text}"));
        }
    }
    for l in lacks {
        if text.contains(l) {
            return Err(format!("make -n {vars:?} says {l:?}:\n{text}"));
        }
    }
    Ok(())
}

fn arch_and_cross_compile_choose_the_build() -> Result<(), String> {
    let fw = framework()?;
    let linker = "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER='aarch64-linux-gnu-gcc'";
    let aarch64 = [
        linker,
        "-C target-feature=+crt-static",
        "--target aarch64-unknown-linux-gnu",
        "install -m 0755 /T/aarch64-unknown-linux-gnu/release/cow /O/cow",
        "install -m 0755 /T/aarch64-unknown-linux-gnu/release/gup_test /O/gup_test",
    ];
    // As kselftest passes them, and CROSS_COMPILE alone (with a directory).
    for vars in [
        &["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"][..],
        &["CROSS_COMPILE=aarch64-linux-gnu-"][..],
    ] {
        expect(&dry_run(&fw, vars)?, vars, &aarch64, &["/T/release/"])?;
    }
    let vars = ["CROSS_COMPILE=/opt/cross/bin/aarch64-linux-gnu-"];
    expect(
        &dry_run(&fw, &vars)?,
        &vars,
        &["_LINKER='/opt/cross/bin/aarch64-linux-gnu-gcc'"],
        &[],
    )?;
    // The kernel's top Makefile exports ARCH=x86 on an x86 host: a static
    // x86_64 build, linked by the host's gcc.
    for vars in [&["ARCH=x86"][..], &["ARCH=x86_64"][..]] {
        expect(
            &dry_run(&fw, vars)?,
            vars,
            &[
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER='gcc'",
                "-C target-feature=+crt-static",
                "--target x86_64-unknown-linux-gnu",
                "/T/x86_64-unknown-linux-gnu/release/gup_longterm /O/gup_longterm",
            ],
            &[],
        )?;
    }
    // Native, as before: no target, no static link, target/release.
    let vars = [];
    expect(
        &dry_run(&fw, &vars)?,
        &vars,
        &["install -m 0755 /T/release/cow /O/cow"],
        &["--target ", "crt-static", "_LINKER"],
    )?;
    // An architecture without a Rust target here says so.
    let (ok, text) = make(&[
        "-n".into(),
        format!("KSFT_FRAMEWORK={}", fw.display()),
        "ARCH=riscv".into(),
    ])?;
    if ok || !text.contains("no Rust target for ARCH=riscv") {
        return Err(format!("make -n ARCH=riscv did not refuse:\n{text}"));
    }
    Ok(())
}

/// What the cross build needs that this machine lacks, if anything.
fn cross_toolchain_missing() -> Option<String> {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        None => return Some("cannot run rustc --print sysroot".into()),
        Some(s) if !s.join("lib/rustlib").join(TRIPLE).join("lib").is_dir() => {
            return Some(format!(
                "the Rust target {TRIPLE} is not installed (rustup target add {TRIPLE})"
            ))
        }
        Some(_) => {}
    }
    let gcc = format!("{CROSS_COMPILE}gcc");
    // gcc prints the bare name for a file it cannot find.
    let libc = Command::new(&gcc)
        .arg("-print-file-name=libc.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match libc {
        None => Some(format!(
            "{gcc} is not installed (Debian: apt-get install gcc-aarch64-linux-gnu)"
        )),
        Some(p) if !Path::new(&p).is_absolute() => Some(format!(
            "{gcc} has no static glibc (Debian: apt-get install libc6-dev-arm64-cross)"
        )),
        Some(_) => None,
    }
}

/// An ELF file's machine and whether it names a dynamic loader (PT_INTERP).
/// 64-bit little-endian only, which is all this test builds.
fn elf_machine_and_interp(path: &Path) -> Result<(u16, bool), String> {
    let b = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |why: &str| format!("{}: {why}", path.display());
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if b[4] != 2 || b[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let machine = u16_at(18);
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    let mut interp = false;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = b
            .get(o..o + 4)
            .ok_or_else(|| bad("program headers past the end"))?;
        interp |= u32::from_le_bytes(p_type.try_into().expect("4 bytes")) == PT_INTERP;
    }
    Ok((machine, interp))
}

/// The ELF reader, on this test program: the host's machine, and a
/// PT_INTERP unless it was linked statically.
fn the_elf_reader_reads_this_program() -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let (machine, interp) = elf_machine_and_interp(&me)?;
    let host = if cfg!(target_arch = "x86_64") {
        62 // EM_X86_64
    } else if cfg!(target_arch = "aarch64") {
        EM_AARCH64
    } else {
        return Ok(());
    };
    let dynamic = !cfg!(target_feature = "crt-static");
    if (machine, interp) != (host, dynamic) {
        return Err(format!(
            "{}: read ELF machine {machine} and PT_INTERP {interp}, expected {host} and {dynamic}",
            me.display()
        ));
    }
    Ok(())
}

fn cross_build_from_a_checkout_is_static_aarch64() -> Result<(), String> {
    let fw = framework()?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let target_dir = match std::env::var_os("COWGUP_CROSS_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().join("target"),
    };
    let output = tmp.path().join("out");
    let install = tmp.path().join("install");
    fs::create_dir_all(&output).map_err(|e| e.to_string())?;
    // install (lib.mk copies with rsync) when rsync is here, else all.
    let rsync = Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut args = vec![
        "ARCH=arm64".to_string(),
        format!("CROSS_COMPILE={CROSS_COMPILE}"),
        format!("KSFT_FRAMEWORK={}", fw.display()),
        format!("COWGUP_TARGET_DIR={}", target_dir.display()),
        format!("OUTPUT={}", output.display()),
    ];
    if rsync {
        args.extend([
            "install".into(),
            format!("INSTALL_PATH={}", install.display()),
        ]);
    }
    eprintln!(
        "kselftest_cross: make -C tap-adapter/kselftest {} (a cold aarch64 release build: minutes)",
        args.join(" ")
    );
    let (ok, text) = make(&args)?;
    if !ok {
        return Err(format!("the cross make failed:\n{}", tail(&text, 40)));
    }
    let mut dirs = vec![output];
    if rsync {
        dirs.push(install);
    } else {
        eprintln!("kselftest_cross: rsync is not installed: `install` not checked");
    }
    for dir in &dirs {
        for prog in PROGRAMS {
            let path = dir.join(prog);
            let (machine, interp) = elf_machine_and_interp(&path)?;
            if machine != EM_AARCH64 {
                return Err(format!(
                    "{}: ELF machine {machine}, not aarch64 ({EM_AARCH64})",
                    path.display()
                ));
            }
            if interp {
                return Err(format!(
                    "{}: dynamically linked (it has a PT_INTERP)",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn make_missing() -> Option<String> {
    let ok = Command::new("make")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "make is not installed".into())
}

fn main() {
    libtest::main(vec![
        check(
            "the ELF reader reads this program",
            the_elf_reader_reads_this_program,
        ),
        check_unless(
            "ARCH and CROSS_COMPILE choose the target, the linker and a static link",
            make_missing,
            arch_and_cross_compile_choose_the_build,
        ),
        check_unless(
            "a cross build from a checkout makes static aarch64 programs",
            || make_missing().or_else(cross_toolchain_missing),
            cross_build_from_a_checkout_is_static_aarch64,
        )
        .with_ignored_flag(true),
    ])
}
