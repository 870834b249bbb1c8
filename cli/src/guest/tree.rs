//! `--kernel tree:PATH[:ARCH]`: the developer's own kernel tree, built where
//! they would build it and booted like any other cell.
//!
//! Where the objects go, in kbuild's own terms: `O=$KBUILD_OUTPUT` when the
//! user set it; in the tree when the tree is configured in place (it has a
//! `.config`: kbuild then refuses any `O=`); else an `O=` directory of ours
//! in the cache, one per (tree, architecture). A config that is the
//! user's is used as it is and checked for the options the suite needs, each
//! missing one named with the fragment that asks for it; ours is
//! `defconfig` plus the repo's fragments, made again only when the
//! fragments change. Every build after the first is make's incremental one
//! (and goes through ccache, when installed, in our own `O=`). make's
//! output goes to `cowgup-build.log` beside the objects; its tail is
//! quoted when the build fails. The heading is the tree's `git describe`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::arch::Arch;
use super::build::{self, Step};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSpec {
    /// As the user typed it (made absolute when built).
    pub path: PathBuf,
    pub arch: Arch,
}

impl TreeSpec {
    /// `PATH` or `PATH:ARCH` (what follows `tree:`); without an
    /// architecture, this host's.
    pub fn parse(s: &str) -> Result<TreeSpec, String> {
        let (path, arch) = match s.rsplit_once(':') {
            Some((p, a)) if Arch::parse(a).is_some() => (p, Arch::parse(a).expect("parsed")),
            _ => (s, Arch::host()),
        };
        if path.is_empty() {
            return Err(format!(
                "tree:{s}: needs the path of a kernel tree (tree:PATH, tree:PATH:arm64)"
            ));
        }
        Ok(TreeSpec {
            path: PathBuf::from(path),
            arch,
        })
    }

    /// `tree:` and the tree's `git describe` (its path when it has none),
    /// then the architecture when it is not x86_64.
    pub fn label(&self) -> String {
        let what = describe(&self.path).unwrap_or_else(|| self.path.display().to_string());
        match self.arch {
            Arch::X86_64 => format!("tree:{what}"),
            a => format!("tree:{what}:{a}"),
        }
    }
}

/// `git describe --tags --always --dirty` of the tree, when it is a git checkout.
pub fn describe(tree: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(["describe", "--tags", "--always", "--dirty"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Where one tree's build happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub tree: PathBuf,
    /// `O=`; `None` builds in the tree.
    pub obj: Option<PathBuf>,
    /// The config is ours (defconfig + fragments), not the user's.
    pub ours: bool,
}

impl Layout {
    /// Where the objects, the `.config` and the image are.
    pub fn out(&self) -> &Path {
        self.obj.as_deref().unwrap_or(&self.tree)
    }
    pub fn config(&self) -> PathBuf {
        self.out().join(".config")
    }
    pub fn image(&self, arch: Arch) -> PathBuf {
        self.out().join(arch.image_path())
    }
    pub fn log(&self) -> PathBuf {
        self.out().join("cowgup-build.log")
    }
    /// The fragments' hash our config was made from.
    fn stamp(&self) -> PathBuf {
        self.out().join("cowgup-fragments")
    }
}

/// `layout` as this process finds it: `$KBUILD_OUTPUT`, the kernel cache.
pub fn layout_here(t: &TreeSpec, tree: &Path) -> Layout {
    let kbuild_output = std::env::var_os("KBUILD_OUTPUT").map(PathBuf::from);
    layout(t, tree, kbuild_output, &super::spec::cache_dir())
}

/// A kernel tree: a top `Makefile` and the architecture's `arch/` directory.
pub fn check_tree(t: &TreeSpec) -> Result<PathBuf, String> {
    let tree =
        std::fs::canonicalize(&t.path).map_err(|e| format!("tree:{}: {e}", t.path.display()))?;
    for want in ["Makefile", "mm/memory.c"] {
        if !tree.join(want).is_file() {
            return Err(format!(
                "tree:{}: not a kernel tree (no {want})",
                t.path.display()
            ));
        }
    }
    let arch = tree.join("arch").join(t.arch.kernel_arch());
    if !arch.is_dir() {
        return Err(format!(
            "tree:{}: has no {} (ARCH={})",
            t.path.display(),
            arch.display(),
            t.arch.kernel_arch()
        ));
    }
    Ok(tree)
}

/// Where `t` builds: `$KBUILD_OUTPUT`, in the tree (configured in place),
/// or our `O=` under `cache`.
pub fn layout(t: &TreeSpec, tree: &Path, kbuild_output: Option<PathBuf>, cache: &Path) -> Layout {
    let tree = tree.to_path_buf();
    if let Some(o) = kbuild_output {
        let ours = !o.join(".config").is_file() || o.join("cowgup-fragments").is_file();
        return Layout {
            tree,
            obj: Some(o),
            ours,
        };
    }
    if tree.join(".config").is_file() {
        return Layout {
            tree,
            obj: None,
            ours: false,
        };
    }
    let name = tree
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let obj = cache.join(format!(
        "tree-{name}-{:08x}-{}",
        build::fnv64(tree.display().to_string().bytes()) >> 32,
        t.arch
    ));
    Layout {
        tree,
        obj: Some(obj),
        ours: true,
    }
}

/// The fragments a tree's config is made from or checked against.
fn fragments(arch: Arch) -> Vec<(&'static str, &'static str)> {
    build::fragments_for(arch, &[])
}

fn fragment_hash(arch: Arch) -> String {
    build::fragments_hash(&fragments(arch))
}

/// Our config must be made (again): none yet, or from other fragments.
pub fn needs_config(l: &Layout, arch: Arch) -> bool {
    l.ours
        && (!l.config().is_file()
            || std::fs::read_to_string(l.stamp()).ok().as_deref() != Some(&fragment_hash(arch)))
}

/// The recipe: our config when it must be made, then the image.
pub fn steps(arch: Arch, l: &Layout, jobs: usize, ccache: bool, config: bool) -> Vec<Step> {
    let make = |args: &[&str]| -> Vec<String> {
        let mut a = vec![
            "make".to_string(),
            "-C".into(),
            l.tree.display().to_string(),
        ];
        if let Some(o) = &l.obj {
            a.push(format!("O={}", o.display()));
        }
        a.push(format!("ARCH={}", arch.kernel_arch()));
        let cross = arch.cross_compile();
        if let Some(c) = cross {
            a.push(format!("CROSS_COMPILE={c}"));
        }
        // Only in our own O=: switching a user's tree to another CC
        // would rebuild all of it once.
        if ccache && l.ours {
            a.push(format!("CC=ccache {}gcc", cross.unwrap_or("")));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        a
    };
    let mut v = Vec::new();
    if config {
        let mut base = vec!["defconfig"];
        if let Some(guest) = arch.guest_config() {
            let dir = l.tree.join("arch").join(arch.kernel_arch()).join("configs");
            if dir.join(guest).is_file() {
                base.push(guest);
            }
        }
        v.push(Step {
            what: format!("{arch} {}", base.join(" ")),
            argv: make(&base),
        });
        let mut merge = vec![
            l.tree
                .join("scripts/kconfig/merge_config.sh")
                .display()
                .to_string(),
            "-m".into(),
            "-O".into(),
            l.out().display().to_string(),
            l.config().display().to_string(),
        ];
        merge.extend(
            fragments(arch)
                .iter()
                .map(|(n, _)| fragment_file(l, n).display().to_string()),
        );
        v.push(Step {
            what: "merge cowgup's fragments".into(),
            argv: merge,
        });
        v.push(Step {
            what: "resolve the merged config".into(),
            argv: make(&["olddefconfig"]),
        });
    }
    let target = arch.image_target();
    v.push(Step {
        what: format!("build {target} (-j{jobs})"),
        argv: make(&[&format!("-j{jobs}"), target]),
    });
    v
}

fn fragment_file(l: &Layout, name: &str) -> PathBuf {
    l.out().join(format!("cowgup-{name}.config"))
}

/// What the user's config lacks, one line each with the fragment to merge.
pub fn config_warnings(arch: Arch, config: &str) -> Vec<String> {
    build::missing_from(&fragments(arch), config)
        .into_iter()
        .map(|(option, fragment)| {
            format!(
                "the tree's .config lacks {option} (cowgup's cli/kernel-config/{fragment}.config \
                 adds it: scripts/kconfig/merge_config.sh -m .config FRAGMENT, then make olddefconfig)"
            )
        })
        .collect()
}

/// What one build did.
#[derive(Clone, Debug)]
pub struct Built {
    pub image: PathBuf,
    pub label: String,
    pub wall: Duration,
    /// C files compiled (0: nothing changed).
    pub compiled: usize,
}

/// Build the tree as it is checked out now; make's output in the log,
/// progress and the time taken on stderr.
pub fn build(t: &TreeSpec) -> Result<Built, String> {
    let tree = check_tree(t)?;
    let l = layout_here(t, &tree);
    let label = t.label();
    let config = needs_config(&l, t.arch);
    if let Some(o) = &l.obj {
        std::fs::create_dir_all(o).map_err(|e| format!("{}: {e}", o.display()))?;
    }
    if config {
        for (name, text) in fragments(t.arch) {
            let f = fragment_file(&l, name);
            std::fs::write(&f, text).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    } else if !l.ours {
        let text = std::fs::read_to_string(l.config()).unwrap_or_default();
        for w in config_warnings(t.arch, &text) {
            eprintln!("cowgup: {label}: warning: {w}");
        }
    }
    let ccache = super::tools::tool("ccache").is_some();
    let all = steps(t.arch, &l, build::jobs(), ccache, config);
    let start = Instant::now();
    let text = build::run_steps(&label, &all, l.out(), &l.log())?;
    if config {
        let _ = std::fs::write(l.stamp(), fragment_hash(t.arch));
        let text = std::fs::read_to_string(l.config()).unwrap_or_default();
        for (m, _) in build::missing_from(&fragments(t.arch), &text) {
            eprintln!("cowgup: {label}: warning: {m} did not survive olddefconfig");
        }
    }
    let built = Built {
        image: l.image(t.arch),
        label,
        wall: start.elapsed(),
        compiled: build::compiled(&text),
    };
    eprintln!(
        "cowgup: {}: built {} in {:.0} s ({})",
        built.label,
        built.image.display(),
        built.wall.as_secs_f64(),
        match built.compiled {
            0 => "nothing to compile".to_string(),
            1 => "1 C file compiled".to_string(),
            n => format!("{n} C files compiled"),
        }
    );
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_spec_is_a_path_and_perhaps_an_architecture() {
        let t = TreeSpec::parse("/src/linux").unwrap();
        assert_eq!(
            (t.path.as_path(), t.arch),
            (Path::new("/src/linux"), Arch::host())
        );
        let t = TreeSpec::parse("../linux:arm64").unwrap();
        assert_eq!(
            (t.path.as_path(), t.arch),
            (Path::new("../linux"), Arch::Arm64)
        );
        // A colon that names no architecture is part of the path.
        let t = TreeSpec::parse("/a:b").unwrap();
        assert_eq!(t.path, Path::new("/a:b"));
        assert!(TreeSpec::parse("").unwrap_err().contains("needs the path"));
        assert!(TreeSpec::parse(":arm64").is_err());
    }

    #[test]
    fn objects_go_where_kbuild_would_put_them() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        std::fs::create_dir_all(&tree).unwrap();
        let cache = dir.path().join("cache");
        let t = TreeSpec::parse(tree.to_str().unwrap()).unwrap();
        let l = layout(&t, &tree, None, &cache);
        assert!(l.ours);
        let obj = l.obj.clone().unwrap();
        assert!(obj.starts_with(&cache), "{obj:?}");
        assert!(obj
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tree-linux-"));
        assert_eq!(layout(&t, &tree, None, &cache), l, "stable");
        // KBUILD_OUTPUT is the user's O=.
        let o = dir.path().join("o");
        let l = layout(&t, &tree, Some(o.clone()), &cache);
        assert_eq!(l.obj, Some(o.clone()));
        std::fs::create_dir_all(&o).unwrap();
        std::fs::write(o.join(".config"), "CONFIG_MMU=y\n").unwrap();
        assert!(!layout(&t, &tree, Some(o), &cache).ours, "their config");
        // Configured in place: built in place with its own config.
        std::fs::write(tree.join(".config"), "CONFIG_MMU=y\n").unwrap();
        let l = layout(&t, &tree, None, &cache);
        assert_eq!((l.out(), l.ours), (tree.as_path(), false));
        assert_eq!(l.obj, None);
    }

    #[test]
    fn our_config_is_made_once_per_fragment_set() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout {
            tree: dir.path().join("linux"),
            obj: Some(dir.path().to_path_buf()),
            ours: true,
        };
        let a = Arch::X86_64;
        assert!(needs_config(&l, a), "no .config yet");
        std::fs::write(l.config(), "").unwrap();
        assert!(needs_config(&l, a), "no stamp");
        std::fs::write(l.stamp(), fragment_hash(a)).unwrap();
        assert!(!needs_config(&l, a));
        std::fs::write(l.stamp(), "other").unwrap();
        assert!(needs_config(&l, a), "the fragments changed");
        let theirs = Layout { ours: false, ..l };
        assert!(!needs_config(&theirs, a));
    }

    #[test]
    fn steps_use_o_and_ccache_only_in_our_own_directory() {
        let ours = Layout {
            tree: "/t".into(),
            obj: Some("/c/o".into()),
            ours: true,
        };
        let s = steps(Arch::Arm64, &ours, 2, true, true);
        let lines: Vec<String> = s.iter().map(|s| s.argv.join(" ")).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "make -C /t O=/c/o ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- \
             CC=ccache aarch64-linux-gnu-gcc defconfig"
        );
        assert!(lines[1].contains("merge_config.sh -m -O /c/o /c/o/.config /c/o/cowgup-cowgup.config /c/o/cowgup-arm64.config"), "{}", lines[1]);
        assert!(lines[3].ends_with("-j2 Image"));
        let theirs = Layout {
            tree: "/t".into(),
            obj: None,
            ours: false,
        };
        let s = steps(Arch::X86_64, &theirs, 8, true, false);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].argv.join(" "), "make -C /t ARCH=x86 -j8 bzImage");
    }

    #[test]
    fn a_users_config_is_told_what_it_lacks_and_where_to_get_it() {
        let w = config_warnings(Arch::X86_64, "CONFIG_GUP_TEST=y\n");
        assert!(w.iter().all(|l| !l.contains("CONFIG_GUP_TEST=y")));
        let io = w.iter().find(|l| l.contains("CONFIG_IO_URING=y")).unwrap();
        assert!(io.contains("cli/kernel-config/cowgup.config"), "{io}");
        assert!(w
            .iter()
            .any(|l| l.contains("CONFIG_SERIAL_8250=y") && l.contains("x86_64.config")));
    }
}
