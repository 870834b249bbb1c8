//! Upstream's C programs for a bench guest: built from the given kernel
//! tree (never vendored), static, for the guest's architecture (cross-built
//! from an x86_64 host), cached per tree and architecture.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::guest::arch::Arch;
use crate::guest::tools::static_for;
use crate::guest::{qemu, spec};

/// The C programs built from the tree, in the order the guest runs them.
pub const PROGRAMS: [&str; 3] = ["cow", "gup_longterm", "gup_test"];

/// Where the C programs of a tree are built for `arch`.
fn c_cache(src: &Path, arch: Arch) -> PathBuf {
    let canon = src.canonicalize().unwrap_or_else(|_| src.into());
    let tag: String = canon
        .display()
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    spec::cache_dir()
        .parent()
        .map_or_else(|| PathBuf::from("/var/tmp/cowgup"), Path::to_path_buf)
        .join("c-selftests")
        .join(tag.trim_matches('_'))
        .join(arch.name())
}

/// `ARCH=` and `CROSS_COMPILE=` for the kernel's makefiles when `arch` is
/// not this host's (natively nothing: the selftests' Makefile tells the
/// architecture from `uname -m` then).
fn make_arch(arch: Arch) -> Vec<String> {
    arch.cross_compile()
        .map(|c| {
            vec![
                format!("ARCH={}", arch.kernel_arch()),
                format!("CROSS_COMPILE={c}"),
            ]
        })
        .unwrap_or_default()
}

/// The make command that builds [`PROGRAMS`] statically for `arch` into `out`.
pub fn make_command(src: &Path, out: &Path, arch: Arch) -> Vec<String> {
    let mut v = vec![
        "make".to_string(),
        "-C".into(),
        src.join("tools/testing/selftests/mm").display().to_string(),
    ];
    v.extend(make_arch(arch));
    v.extend([
        format!("OUTPUT={}", out.display()),
        "USERLDFLAGS=-static".into(),
    ]);
    v.extend(PROGRAMS.iter().map(|p| out.join(p).display().to_string()));
    v
}

/// Run `argv` with its output in `log`; a failure says `what` and the log's tail.
fn run_logged(argv: &[String], log: &Path, what: &str) -> Result<(), String> {
    eprintln!("cowgup: {what}: {}", argv.join(" "));
    let ended = qemu::run_limited(
        Command::new(&argv[0]).args(&argv[1..]),
        log,
        Duration::from_secs(1800),
    )?;
    if matches!(ended, qemu::Ended::Exited(s) if s.success()) {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Err(format!(
        "{what} failed; {}:\n{}",
        log.display(),
        qemu::tail(&text, 15).join("\n")
    ))
}

/// Upstream's C programs of the tree `src` for `arch` guests, static, in
/// the cache (kept: a source tree does not change). The tree's uapi headers
/// are installed for `arch` first (`make headers`), and the selftests'
/// liburing probe (`local_config.h`, which check_config.sh writes in the
/// tree with the compiler it is given) is made anew for this compiler: cow's
/// io_uring cases, and so its names, depend on it.
pub fn build_c(src: &Path, arch: Arch) -> Result<PathBuf, String> {
    let mm = src.join("tools/testing/selftests/mm");
    if !mm.join("run_vmtests.sh").is_file() {
        return Err(format!(
            "{}: not a kernel source tree (no tools/testing/selftests/mm/run_vmtests.sh)",
            src.display()
        ));
    }
    let out = c_cache(src, arch);
    if PROGRAMS
        .iter()
        .all(|p| static_for(&out.join(p), arch).is_ok())
    {
        return Ok(out);
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut headers = vec!["make".to_string(), "-C".into(), src.display().to_string()];
    headers.extend(make_arch(arch));
    headers.push("headers".into());
    run_logged(
        &headers,
        &out.join("headers.log"),
        &format!("installing the tree's {arch} uapi headers"),
    )?;
    for f in ["local_config.h", "local_config.mk"] {
        let _ = std::fs::remove_file(mm.join(f));
    }
    let hint = match arch.cross_compile() {
        Some(_) => format!(
            " (needs {} and liburing-dev:{} for a static link)",
            arch.cross_package(),
            arch.debian()
        ),
        None => format!(" (needs liburing-dev:{} for a static link)", arch.debian()),
    };
    run_logged(
        &make_command(src, &out, arch),
        &out.join("build.log"),
        &format!("building upstream's C programs for {arch}{hint}"),
    )?;
    let probe = std::fs::read_to_string(mm.join("local_config.h")).unwrap_or_default();
    if !probe.contains("LOCAL_CONFIG_HAVE_LIBURING") {
        for p in PROGRAMS {
            let _ = std::fs::remove_file(out.join(p));
        }
        return Err(format!(
            "the C programs built without liburing (cow would leave out its io_uring cases): \
             apt-get install liburing-dev:{}",
            arch.debian()
        ));
    }
    for p in PROGRAMS {
        static_for(&out.join(p), arch).map_err(|e| format!("built, but {e}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_make_line_builds_static_into_the_cache() {
        let v = make_command(Path::new("/src"), Path::new("/cache"), Arch::host());
        assert_eq!(
            v,
            [
                "make",
                "-C",
                "/src/tools/testing/selftests/mm",
                "OUTPUT=/cache",
                "USERLDFLAGS=-static",
                "/cache/cow",
                "/cache/gup_longterm",
                "/cache/gup_test"
            ]
        );
        if Arch::host() == Arch::X86_64 {
            let v = make_command(Path::new("/src"), Path::new("/cache"), Arch::Arm64);
            assert_eq!(v[3..5], ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]);
        }
        assert!(c_cache(Path::new("/src"), Arch::Arm64).ends_with("c-selftests/src/arm64"));
    }
}
