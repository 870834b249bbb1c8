//! `--kernel build:6.12[/arm64][+debug_vm][+64k]`: a kernel built from
//! Debian's `linux-source-6.12` (fetched with `apt-get download`, never
//! installed): `make defconfig` of the architecture (arm64: `defconfig
//! virt.config`, no SoC platforms; cross-compiled with
//! `CROSS_COMPILE=aarch64-linux-gnu-` for arm64 on an x86 host), the repo's
//! fragments (`cli/kernel-config/`: `cowgup`, the architecture's, then the
//! variants) merged with `scripts/kconfig/merge_config.sh`, `make
//! olddefconfig`, `make -j bzImage` (arm64: `Image`). Cached by (source
//! version, fragments' hash) under `~/.cache/cowgup/kernels/build-<series>/`,
//! one source tree for every architecture. Takes about 12 minutes on two
//! cores from a cold tree (x86_64); never run in CI. `--dry-run` prints the
//! steps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::arch::Arch;

/// The fragments, as kept in the repo (compiled in: the hash is of what is
/// built): `cowgup` always, the architecture's (named as [`Arch::name`]),
/// and the variants a spec adds.
pub const FRAGMENTS: [(&str, &str); 5] = [
    ("cowgup", include_str!("../../kernel-config/cowgup.config")),
    ("x86_64", include_str!("../../kernel-config/x86_64.config")),
    ("arm64", include_str!("../../kernel-config/arm64.config")),
    (
        "debug_vm",
        include_str!("../../kernel-config/debug_vm.config"),
    ),
    ("64k", include_str!("../../kernel-config/64k.config")),
];

/// Variants and the architectures they apply to.
const VARIANTS: [(&str, &[Arch]); 2] = [
    ("debug_vm", &[Arch::X86_64, Arch::Arm64]),
    ("64k", &[Arch::Arm64]),
];

/// Series Debian ships sources for.
pub const SERIES: [&str; 2] = ["6.1", "6.12"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSpec {
    pub series: String,
    pub arch: Arch,
    /// Extra fragments beyond `cowgup` and the architecture's (`debug_vm`, `64k`).
    pub variants: Vec<String>,
}

impl BuildSpec {
    /// `6.12`, `6.12+debug_vm`, `6.12/arm64`, `6.12/arm64+64k` (what follows
    /// `build:`); without `/ARCH`, this host's architecture.
    pub fn parse(s: &str) -> Result<BuildSpec, String> {
        let mut parts = s.split('+');
        let head = parts.next().unwrap_or_default();
        let (series, arch) = match head.split_once('/') {
            Some((series, a)) => (
                series,
                Arch::parse(a).ok_or_else(|| {
                    format!("build:{s}: unknown architecture {a:?} (x86_64, arm64)")
                })?,
            ),
            None => (head, Arch::host()),
        };
        if !SERIES.contains(&series) {
            return Err(format!(
                "build:{s}: Debian ships linux-source for 6.1 and 6.12 (build:6.12, \
                 build:6.12+debug_vm, build:6.12/arm64, build:6.12/arm64+64k)"
            ));
        }
        let mut variants = Vec::new();
        for v in parts {
            let Some((_, archs)) = VARIANTS.iter().find(|(n, _)| *n == v) else {
                return Err(format!(
                    "build:{s}: unknown config variant {v:?} (known: debug_vm, and 64k for arm64)"
                ));
            };
            if !archs.contains(&arch) {
                return Err(format!("build:{s}: the {v} variant is for arm64 only"));
            }
            if !variants.iter().any(|x| x == v) {
                variants.push(v.to_string());
            }
        }
        Ok(BuildSpec {
            series: series.into(),
            arch,
            variants,
        })
    }

    /// As typed, in a canonical form: the architecture only when it is not
    /// x86_64 (so x86 labels stay what they were).
    pub fn label(&self) -> String {
        let mut s = format!("build:{}", self.series);
        if self.arch != Arch::X86_64 {
            s.push('/');
            s.push_str(self.arch.name());
        }
        for v in &self.variants {
            s.push('+');
            s.push_str(v);
        }
        s
    }

    /// The fragments merged, in order: `cowgup`, the architecture's, then
    /// the variants.
    pub fn fragments(&self) -> Vec<(&'static str, &'static str)> {
        fragments_for(self.arch, &self.variants)
    }

    /// FNV-1a (64 bit) of the fragments' names and text: part of the cache key.
    pub fn fragment_hash(&self) -> String {
        fragments_hash(&self.fragments())
    }

    pub fn package(&self) -> String {
        format!("linux-source-{}", self.series)
    }
}

/// The fragments for `arch` and `variants`, in merge order: `cowgup`, the
/// architecture's, then the variants.
pub fn fragments_for(arch: Arch, variants: &[String]) -> Vec<(&'static str, &'static str)> {
    FRAGMENTS
        .iter()
        .filter(|(n, _)| *n == "cowgup" || *n == arch.name() || variants.iter().any(|v| v == n))
        .copied()
        .collect()
}

/// FNV-1a (64 bit) of `bytes`.
pub fn fnv64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The hash of fragments' names and text, as cache keys and stamps hold it.
pub fn fragments_hash(fragments: &[(&str, &str)]) -> String {
    let bytes = fragments
        .iter()
        .flat_map(|(name, text)| name.bytes().chain([0]).chain(text.bytes()).chain([0]));
    format!("{:016x}", fnv64(bytes))
}

/// The options `fragments` ask for that `config` lacks, each with the
/// fragment that asks for it.
pub fn missing_from(
    fragments: &[(&'static str, &'static str)],
    config: &str,
) -> Vec<(String, &'static str)> {
    fragments
        .iter()
        .flat_map(|(name, text)| text.lines().map(move |l| (l.trim(), *name)))
        .filter(|(l, _)| l.starts_with("CONFIG_"))
        .filter(|(want, _)| !config.lines().any(|l| l.trim() == *want))
        .map(|(l, name)| (l.to_string(), name))
        .collect()
}

/// Where a build lives: `<cache>/build-<series>/`.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    /// The source version (`6.12.117-1~deb12u1`), from apt.
    pub version: String,
}

impl Layout {
    /// The unpacked source tree (shared by every fragment set).
    pub fn src(&self) -> PathBuf {
        self.root.join(format!("src-{}", self.version))
    }
    pub fn tree(&self, b: &BuildSpec) -> PathBuf {
        self.src().join(b.package())
    }
    /// Objects of one (version, fragments) build (`make O=`).
    pub fn obj(&self, b: &BuildSpec) -> PathBuf {
        self.root
            .join(format!("obj-{}-{}", self.version, b.fragment_hash()))
    }
    /// The finished image: its presence is the cache hit.
    pub fn image(&self, b: &BuildSpec) -> PathBuf {
        self.root
            .join(format!("{}-{}", self.version, b.fragment_hash()))
            .join(b.arch.image_target())
    }
    pub fn fragment_file(&self, b: &BuildSpec, name: &str) -> PathBuf {
        self.obj(b).join(format!("cowgup-{name}.config"))
    }
}

/// One step of the recipe: what it does, and the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub argv: Vec<String>,
}

fn sh(what: &str, script: String) -> Step {
    Step {
        what: what.into(),
        argv: vec!["sh".into(), "-c".into(), script],
    }
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The recipe, from nothing to `layout.image(b)`; steps whose result is
/// already there (the unpacked tree) are left out when `have_tree`.
pub fn steps(b: &BuildSpec, l: &Layout, jobs: usize, have_tree: bool) -> Vec<Step> {
    let tree = l.tree(b);
    let obj = l.obj(b);
    let mut v = Vec::new();
    if !have_tree {
        let dl = l.root.join(".download");
        v.push(sh(
            &format!("download {} {}", b.package(), l.version),
            format!(
                "mkdir -p {dl} && cd {dl} && apt-get download -q {pkg}={ver}",
                dl = q(&dl),
                pkg = b.package(),
                ver = l.version
            ),
        ));
        v.push(sh(
            "unpack the source tarball",
            format!(
                "rm -rf {src}.partial && mkdir -p {src}.partial && \
                 dpkg-deb --fsys-tarfile {dl}/{pkg}_*.deb | tar -xO ./usr/src/{pkg}.tar.xz | \
                 xz -dc -T2 | tar -x -C {src}.partial && mv {src}.partial {src} && rm -rf {dl}",
                src = q(&l.src()),
                dl = q(&dl),
                pkg = b.package()
            ),
        ));
    }
    let make = |args: &[&str]| -> Vec<String> {
        let mut a = vec![
            "make".to_string(),
            "-C".into(),
            tree.display().to_string(),
            format!("O={}", obj.display()),
            format!("ARCH={}", b.arch.kernel_arch()),
        ];
        if let Some(cross) = b.arch.cross_compile() {
            a.push(format!("CROSS_COMPILE={cross}"));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        a
    };
    // virt.config is in the kernel since 6.9: not in Debian's 6.1 source.
    let base: Vec<&str> = match b.arch.guest_config() {
        Some(guest) if b.series != "6.1" => vec!["defconfig", guest],
        _ => vec!["defconfig"],
    };
    v.push(Step {
        what: format!("{} {}", b.arch, base.join(" ")),
        argv: make(&base),
    });
    let mut merge = vec![
        tree.join("scripts/kconfig/merge_config.sh")
            .display()
            .to_string(),
        "-m".into(),
        "-O".into(),
        obj.display().to_string(),
        obj.join(".config").display().to_string(),
    ];
    merge.extend(
        b.fragments()
            .iter()
            .map(|(n, _)| l.fragment_file(b, n).display().to_string()),
    );
    v.push(Step {
        what: format!(
            "merge the fragments ({})",
            b.fragments()
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        argv: merge,
    });
    v.push(Step {
        what: "resolve the merged config".into(),
        argv: make(&["olddefconfig"]),
    });
    let target = b.arch.image_target();
    v.push(Step {
        what: format!(
            "build {target} (-j{jobs}; about {} min on 2 cores)",
            match b.arch {
                Arch::X86_64 => "12-15",
                Arch::Arm64 => "30",
            }
        ),
        argv: make(&[&format!("-j{jobs}"), target]),
    });
    v
}

/// Options the fragments ask for that the resolved `.config` lacks (a
/// dependency not met, a name that no longer exists).
pub fn missing_options(b: &BuildSpec, config: &str) -> Vec<String> {
    missing_from(&b.fragments(), config)
        .into_iter()
        .map(|(o, _)| o)
        .collect()
}

/// The source version apt offers for `linux-source-<series>`.
pub fn source_version(b: &BuildSpec) -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", &b.package()])
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| {
            format!(
                "apt offers no {} (apt-get update? bookworm in sources.list?)",
                b.package()
            )
        })
}

pub fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// kbuild's quiet lines for compiled C files: how incremental a build was.
pub fn compiled(log: &str) -> usize {
    log.lines()
        .filter(|l| l.trim_start().starts_with("CC ") && l.trim_end().ends_with(".o"))
        .count()
}

/// A build's progress line: files compiled so far, the last one, the time.
fn progress(log: &str, t: Duration) -> String {
    let last = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("CC "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("");
    let s = t.as_secs();
    format!(
        "  {} compiled, {}:{:02} ... {last}",
        compiled(log),
        s / 60,
        s % 60
    )
}

/// Runs `steps` one after the other, each announced on stderr (`label:
/// [i/n] what in out`), their output into `log` (a progress line on a
/// terminal meanwhile). A step that fails, or a signal `stop` was asked to
/// note, ends it: the error quotes the log's last lines. Returns the log.
pub fn run_steps(label: &str, steps: &[Step], out: &Path, log: &Path) -> Result<String, String> {
    let mut text = String::new();
    for (i, s) in steps.iter().enumerate() {
        eprintln!(
            "cowgup: {label}: [{}/{}] {} in {}",
            i + 1,
            steps.len(),
            s.what,
            out.display()
        );
        let step_log = log.with_extension(format!("step{i}"));
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut shown = Duration::ZERO;
        let ended = super::qemu::run_watched(
            Command::new(&s.argv[0]).args(&s.argv[1..]),
            &step_log,
            Duration::from_secs(6 * 3600),
            |t| {
                if terminal && t >= shown + Duration::from_secs(5) {
                    shown = t;
                    eprint!(
                        "\r\x1b[K{}",
                        progress(&super::qemu::read_lossy(&step_log), t)
                    );
                }
                None
            },
        );
        if terminal && shown > Duration::ZERO {
            eprint!("\r\x1b[K");
        }
        let output = super::qemu::read_lossy(&step_log);
        let _ = std::fs::remove_file(&step_log);
        text.push_str(&output);
        let _ = std::fs::write(log, &text);
        let failed = match ended {
            Ok(super::qemu::Ended::Exited(st)) if st.success() => None,
            Ok(super::qemu::Ended::Exited(st)) => Some(st.to_string()),
            Ok(super::qemu::Ended::Stopped(why)) => Some(why),
            Ok(super::qemu::Ended::TimedOut) => Some("timed out".into()),
            Err(e) => Some(e),
        };
        if let Some(why) = failed {
            let tail: Vec<&str> = output.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{label}: {} failed ({why}); the last lines of {}:\n{}",
                s.what,
                log.display(),
                tail.join("\n")
            ));
        }
    }
    Ok(text)
}

/// The built image: from the cache, or built now (progress on stderr).
pub fn build(b: &BuildSpec, root: &Path) -> Result<PathBuf, String> {
    let l = Layout {
        root: root.to_path_buf(),
        version: source_version(b)?,
    };
    let image = l.image(b);
    if image.is_file() {
        eprintln!(
            "cowgup: {}: cached {} ({} + fragments {})",
            b.label(),
            image.display(),
            l.version,
            b.fragment_hash()
        );
        return Ok(image);
    }
    let have_tree = l.tree(b).join("Makefile").is_file();
    std::fs::create_dir_all(l.obj(b)).map_err(|e| format!("{}: {e}", l.obj(b).display()))?;
    for (name, text) in b.fragments() {
        let f = l.fragment_file(b, name);
        std::fs::write(&f, text).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let all = steps(b, &l, jobs(), have_tree);
    let start = std::time::Instant::now();
    if let Err(e) = run_steps(
        &b.label(),
        &all,
        &l.obj(b),
        &l.obj(b).join("cowgup-build.log"),
    ) {
        let cross = match b.arch.cross_compile() {
            Some(_) => format!(" {}", b.arch.cross_package()),
            None => String::new(),
        };
        return Err(format!(
            "{e}\n(a kernel build needs: apt-get install build-essential flex bison bc libelf-dev \
             libssl-dev xz-utils{cross})"
        ));
    }
    eprintln!(
        "cowgup: {}: built in {:.0} s",
        b.label(),
        start.elapsed().as_secs_f64()
    );
    let config = std::fs::read_to_string(l.obj(b).join(".config")).unwrap_or_default();
    for m in missing_options(b, &config) {
        eprintln!(
            "cowgup: {}: warning: {m} did not survive olddefconfig",
            b.label()
        );
    }
    let dir = image.parent().expect("image has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::copy(l.obj(b).join(".config"), dir.join("config"))
        .map_err(|e| format!("cannot keep the .config: {e}"))?;
    std::fs::copy(l.obj(b).join(b.arch.image_path()), &image)
        .map_err(|e| format!("cannot copy the {}: {e}", b.arch.image_target()))?;
    eprintln!("cowgup: {}: built {}", b.label(), image.display());
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            root: "/c/build-6.12".into(),
            version: "6.12.117-1~deb12u1".into(),
        }
    }

    #[test]
    fn specs_parse() {
        let b = BuildSpec::parse("6.12").unwrap();
        assert_eq!(b.variants, Vec::<String>::new());
        assert_eq!(b.label(), "build:6.12");
        let d = BuildSpec::parse("6.12+debug_vm").unwrap();
        assert_eq!(d.label(), "build:6.12+debug_vm");
        assert_eq!(
            d.fragments().iter().map(|f| f.0).collect::<Vec<_>>(),
            ["cowgup", "x86_64", "debug_vm"]
        );
        let a = BuildSpec::parse("6.12/arm64+64k").unwrap();
        assert_eq!(
            (a.arch, a.label().as_str()),
            (Arch::Arm64, "build:6.12/arm64+64k")
        );
        assert_eq!(
            a.fragments().iter().map(|f| f.0).collect::<Vec<_>>(),
            ["cowgup", "arm64", "64k"]
        );
        assert_eq!(
            BuildSpec::parse("6.12/x86_64").unwrap().label(),
            "build:6.12"
        );
        assert!(BuildSpec::parse("6.12+64k")
            .unwrap_err()
            .contains("arm64 only"));
        assert!(BuildSpec::parse("6.12/riscv64")
            .unwrap_err()
            .contains("riscv64"));
        assert_ne!(
            a.fragment_hash(),
            BuildSpec::parse("6.12/arm64").unwrap().fragment_hash()
        );
        assert_ne!(
            b.fragment_hash(),
            d.fragment_hash(),
            "separate cache entries"
        );
        assert!(BuildSpec::parse("5.10").is_err());
        assert!(BuildSpec::parse("6.12+kasan")
            .unwrap_err()
            .contains("kasan"));
    }

    #[test]
    fn dry_run_steps_from_a_cold_cache() {
        let b = BuildSpec::parse("6.12+debug_vm").unwrap();
        let l = layout();
        let s = steps(&b, &l, 2, false);
        let lines: Vec<String> = s.iter().map(|s| s.argv.join(" ")).collect();
        assert_eq!(s.len(), 6, "{lines:#?}");
        assert!(lines[0].contains("apt-get download -q linux-source-6.12=6.12.117-1~deb12u1"));
        assert!(lines[1].contains("tar -xO ./usr/src/linux-source-6.12.tar.xz"));
        let tree = "/c/build-6.12/src-6.12.117-1~deb12u1/linux-source-6.12";
        let obj = format!("/c/build-6.12/obj-6.12.117-1~deb12u1-{}", b.fragment_hash());
        assert_eq!(
            lines[2],
            format!("make -C {tree} O={obj} ARCH=x86 defconfig")
        );
        assert_eq!(
            lines[3],
            format!(
                "{tree}/scripts/kconfig/merge_config.sh -m -O {obj} {obj}/.config \
                 {obj}/cowgup-cowgup.config {obj}/cowgup-x86_64.config {obj}/cowgup-debug_vm.config"
            )
        );
        assert_eq!(
            lines[4],
            format!("make -C {tree} O={obj} ARCH=x86 olddefconfig")
        );
        assert_eq!(
            lines[5],
            format!("make -C {tree} O={obj} ARCH=x86 -j2 bzImage")
        );
        assert_eq!(
            l.image(&b),
            Path::new(&format!(
                "/c/build-6.12/6.12.117-1~deb12u1-{}/bzImage",
                b.fragment_hash()
            ))
        );
        assert_eq!(steps(&b, &l, 2, true).len(), 4, "the tree is reused");
    }

    #[test]
    fn arm64_is_cross_compiled_to_an_image() {
        let b = BuildSpec::parse("6.12/arm64+64k").unwrap();
        let l = layout();
        let lines: Vec<String> = steps(&b, &l, 2, true)
            .iter()
            .map(|s| s.argv.join(" "))
            .collect();
        let cross = if Arch::host() == Arch::Arm64 {
            String::new()
        } else {
            " CROSS_COMPILE=aarch64-linux-gnu-".into()
        };
        assert!(
            lines[0].ends_with(&format!("ARCH=arm64{cross} defconfig virt.config")),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(
                "cowgup-cowgup.config {obj}/cowgup-arm64.config {obj}/cowgup-64k.config"
                    .replace("{obj}", &l.obj(&b).display().to_string())
                    .as_str()
            ),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].ends_with(&format!("ARCH=arm64{cross} -j2 Image")),
            "{}",
            lines[3]
        );
        assert_eq!(l.image(&b).file_name().unwrap(), "Image");
    }

    #[test]
    fn compiled_files_are_counted_from_kbuilds_lines() {
        let log = "  CC      mm/memory.o\n  AR      mm/built-in.a\n  CC      kernel/fork.o\n  \
                   LD      vmlinux.o\n  CC [M]  x.o\n  CALL    scripts/checksyscalls.sh\n";
        assert_eq!(compiled(log), 3, "modules are compiled too");
        assert_eq!(compiled(""), 0);
    }

    #[test]
    fn options_lost_by_olddefconfig_are_named() {
        let b = BuildSpec::parse("6.12").unwrap();
        let all: String = b.fragments().iter().map(|(_, text)| *text).collect();
        let config = all.replace("CONFIG_GUP_TEST=y", "# CONFIG_GUP_TEST is not set");
        assert_eq!(missing_options(&b, &config), ["CONFIG_GUP_TEST=y"]);
        assert!(missing_options(&b, &all).is_empty());
    }

    fn options(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("CONFIG_"))
            .filter_map(|l| l.strip_suffix("=y"))
            .collect()
    }

    #[test]
    fn fragments_hold_only_y_options() {
        for (name, text) in FRAGMENTS {
            for l in text.lines().map(str::trim) {
                assert!(
                    l.is_empty()
                        || l.starts_with('#')
                        || (l.starts_with("CONFIG_") && l.ends_with("=y")),
                    "{name}: {l:?}"
                );
            }
            assert!(!options(text).is_empty());
        }
    }

    /// Every option the fragments set exists in the 6.12 tree's Kconfig files.
    #[test]
    fn fragment_options_exist_in_the_6_12_kconfig_tree() {
        let tree = Path::new("/work/c-selftests/linux-source-6.12");
        if !tree.join("Kconfig").is_file() {
            eprintln!("SKIP: no 6.12 source tree at {}", tree.display());
            return;
        }
        let mut declared = std::collections::HashSet::new();
        let mut stack = vec![tree.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let ft = e.file_type().unwrap();
                if ft.is_dir() && !ft.is_symlink() {
                    stack.push(p);
                } else if ft.is_file()
                    && p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("Kconfig")
                {
                    for l in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                        let l = l.trim();
                        if let Some(n) = l
                            .strip_prefix("config ")
                            .or_else(|| l.strip_prefix("menuconfig "))
                        {
                            declared.insert(n.trim().to_string());
                        }
                    }
                }
            }
        }
        for (name, text) in FRAGMENTS {
            for o in options(text) {
                assert!(
                    declared.contains(o),
                    "{name}: CONFIG_{o} is no Kconfig symbol in 6.12"
                );
            }
        }
    }

    /// The recipe's config steps (defconfig, merge_config.sh, olddefconfig)
    /// on a hard-linked copy of the 6.12 tree keep every fragment option
    /// (no unmet dependency drops one). About 10 s of CPU; needs flex and
    /// bison: `cargo test -p cowgup --bin cowgup -- --ignored olddefconfig`.
    #[test]
    #[ignore]
    fn every_fragment_option_survives_olddefconfig() {
        let shared = Path::new("/work/c-selftests/linux-source-6.12");
        if !shared.join("Kconfig").is_file() {
            eprintln!("SKIP: no 6.12 source tree at {}", shared.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let b = BuildSpec::parse("6.12+debug_vm").unwrap();
        let l = Layout {
            root: dir.path().into(),
            version: "test".into(),
        };
        std::fs::create_dir_all(l.src()).unwrap();
        let cp = Command::new("cp")
            .arg("-al")
            .arg(shared)
            .arg(l.tree(&b))
            .status()
            .unwrap();
        assert!(cp.success());
        // Generated headers in the shared tree make `make O=` refuse it.
        let _ = std::fs::remove_dir_all(l.tree(&b).join("arch/x86/include/generated"));
        std::fs::create_dir_all(l.obj(&b)).unwrap();
        for (name, text) in b.fragments() {
            std::fs::write(l.fragment_file(&b, name), text).unwrap();
        }
        let all = steps(&b, &l, 2, true);
        for s in &all[..3] {
            let out = Command::new(&s.argv[0])
                .args(&s.argv[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                s.what,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config = std::fs::read_to_string(l.obj(&b).join(".config")).unwrap();
        assert_eq!(missing_options(&b, &config), Vec::<String>::new());
    }

    /// The cached prebuilt kernel has the fragment's options but the two
    /// the fragment adds (UDMABUF, CMA).
    #[test]
    fn the_cached_kernel_config_agrees_with_the_fragment() {
        let cfg = Path::new("/work/shared/kernels/config-6.12.117-guptest");
        let Ok(text) = std::fs::read_to_string(cfg) else {
            eprintln!("SKIP: no {}", cfg.display());
            return;
        };
        let b = BuildSpec::parse("6.12").unwrap();
        let missing = missing_options(&b, &text);
        assert_eq!(missing, ["CONFIG_UDMABUF=y", "CONFIG_CMA=y"]);
    }
}
