//! `cowgup bisect` and `--kernel tree:` end to end, on a kernel tree made
//! here: Debian's linux-source-6.12 as one commit, then sixteen commits in
//! `mm/`, one of which brings back CVE-2020-29374 (Jann Horn's vmsplice
//! leak: `wp_can_reuse_anon_folio()` deciding reuse by mapcount, as
//! `do_wp_page()` did before 09854ba94c6a "mm: do_wp_page() simplification",
//! v5.10; `bug-history.md` row 3). cow.c's "vmsplice() + unmap in child"
//! catches it on base pages; the bisection must name that commit and the
//! trial and leave the tree on its branch.
//!
//! Ignored by default (a first kernel build is ~15 min on two cores, a
//! bisection ~20 more): as root,
//! `cargo test -p cowgup --test bisect -- --ignored --nocapture`.
//! The tree is kept in `~/.cache/cowgup/bisect-e2e/linux` (made once, same
//! hashes every time), so its build is incremental from the second run on.
//! `COWGUP_E2E_LINUX_SRC` names an unpacked linux-source-6.12 to copy;
//! else the matrix's build cache's, else `apt-get download`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BRANCH: &str = "e2e";
/// Tagged on the last commit: the history is complete.
const DONE: &str = "cowgup-e2e-v1";
/// The commit that brings the bug back (1-based among the sixteen).
const BUGGY: usize = 11;

fn cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    base.join("cowgup").join("bisect-e2e")
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fixed names and dates: the same hashes on every machine.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=cowgup e2e",
            "-c",
            "user.email=e2e@cowgup.invalid",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", "2026-12-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-12-01T00:00:00Z")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An unpacked linux-source-6.12: given, the matrix's build cache's, or downloaded.
fn source(work: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("COWGUP_E2E_LINUX_SRC") {
        return PathBuf::from(p);
    }
    let builds = cache().parent().unwrap().join("kernels").join("build-6.12");
    if let Ok(dirs) = std::fs::read_dir(&builds) {
        let mut found: Vec<PathBuf> = dirs
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("linux-source-6.12"))
            .filter(|p| p.join("mm/memory.c").is_file())
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return p;
        }
    }
    sh(
        work,
        "apt-get download -q linux-source-6.12 && mkdir -p src && \
         dpkg-deb --fsys-tarfile linux-source-6.12_*.deb | tar -xO ./usr/src/linux-source-6.12.tar.xz | \
         xz -dc -T2 | tar -x -C src && rm linux-source-6.12_*.deb",
    );
    work.join("src/linux-source-6.12")
}

/// Appends a comment to `file`: a harmless change in mm/.
fn harmless(tree: &Path, file: &str, i: usize) {
    let p = tree.join(file);
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(&format!("/* cowgup e2e: harmless change {i} */\n"));
    std::fs::write(&p, text).unwrap();
}

/// `wp_can_reuse_anon_folio()` as before 5.10: a page mapped once is
/// reused, whoever else holds a reference to it (a vmsplice'd pipe).
fn reintroduce_cve_2020_29374(tree: &Path) {
    let p = tree.join("mm/memory.c");
    let text = std::fs::read_to_string(&p).unwrap();
    let start = text
        .find("\tif (folio_test_ksm(folio) || folio_ref_count(folio) > 3)\n\t\treturn false;")
        .expect("6.12's wp_can_reuse_anon_folio");
    let end = start
        + text[start..]
            .find("\t/*\n\t * Ok, we've got the only folio reference")
            .unwrap();
    let bug = "\t/* Reuse what is mapped once: nobody else can see it. */\n\
               \tif (folio_test_ksm(folio) || folio_mapcount(folio) != 1)\n\t\treturn false;\n\
               \tif (!folio_trylock(folio))\n\t\treturn false;\n\
               \tif (folio_test_swapcache(folio))\n\t\tfolio_free_swap(folio);\n";
    std::fs::write(&p, format!("{}{bug}{}", &text[..start], &text[end..])).unwrap();
}

/// The tree and its history (made once): returns (tree, good, buggy commit).
fn tree() -> (PathBuf, String, String) {
    let root = cache();
    let tree = root.join("linux");
    if tree.join(".git").is_dir()
        && Command::new("git")
            .arg("-C")
            .arg(&tree)
            .args(["rev-parse", "--verify", "--quiet", DONE])
            .output()
            .unwrap()
            .status
            .success()
    {
        git(&tree, &["checkout", "--quiet", BRANCH]);
    } else {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let src = source(&root);
        sh(&root, &format!("cp -a '{}' linux", src.display()));
        git(
            &tree,
            &["init", "--quiet", &format!("--initial-branch={BRANCH}")],
        );
        // Debian's .gitignore ignores every top-level path (its packaging repo holds debian/ only).
        git(&tree, &["add", "--force", "-A"]);
        git(
            &tree,
            &[
                "commit",
                "--quiet",
                "-m",
                "linux-source-6.12, as Debian ships it",
            ],
        );
        let files = [
            "mm/util.c",
            "mm/mmap.c",
            "mm/gup.c",
            "mm/madvise.c",
            "mm/mprotect.c",
            "mm/mremap.c",
            "mm/rmap.c",
            "mm/swapfile.c",
            "mm/memory.c",
            "mm/huge_memory.c",
            "",
            "mm/page_alloc.c",
            "mm/filemap.c",
            "mm/shmem.c",
            "mm/hugetlb.c",
            "mm/vmscan.c",
        ];
        for (i, f) in files.iter().enumerate() {
            let n = i + 1;
            let subject = if n == BUGGY {
                reintroduce_cve_2020_29374(&tree);
                "mm/memory: reuse an anonymous folio that is mapped only once".to_string()
            } else {
                harmless(&tree, f, n);
                format!("{}: a harmless comment ({n})", f.trim_end_matches(".c"))
            };
            git(&tree, &["commit", "--quiet", "-a", "-m", &subject]);
        }
        git(&tree, &["tag", DONE]);
        eprintln!(
            "e2e: made {} (17 commits) in {:.0} s",
            tree.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let good = git(&tree, &["rev-parse", &format!("{DONE}~16")]);
    let buggy = git(&tree, &["rev-parse", &format!("{DONE}~{}", 16 - BUGGY)]);
    (tree, good, buggy)
}

fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("e2e: SKIP: needs root (the guests' disks, the cache)");
        return false;
    }
    for t in [
        "git",
        "make",
        "gcc",
        "qemu-system-x86_64",
        "flex",
        "bison",
        "bc",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!("e2e: SKIP: needs {t} (README: the kernel build's packages)");
            return false;
        }
    }
    true
}

#[test]
#[ignore = "builds a kernel and bisects it: ~35 min cold on two cores"]
fn bisect_names_the_commit_that_brought_back_cve_2020_29374() {
    if !ready() {
        return;
    }
    let (tree, good, buggy) = tree();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cowgup"))
        .args(["bisect", "--tree"])
        .arg(&tree)
        .args(["--good", &good, "--bad", BRANCH, "--family", "cow_anon"])
        .args([
            "vmsplice() + unmap in child ... with base page",
            "Basic COW after fork() ... with base page",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "e2e: bisect took {:.0} s\n{stdout}",
        t.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("first bad commit: {buggy} mm/memory: reuse")),
        "{stdout}"
    );
    assert!(stdout.contains("vmsplice() + unmap in child ... with base page: FAIL"));
    assert!(stdout.contains("vmsplice() + unmap in child ... with base page: pass"));
    assert_eq!(git(&tree, &["symbolic-ref", "--short", "HEAD"]), BRANCH);
    assert_eq!(
        git(&tree, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );
}

#[test]
#[ignore = "builds a kernel twice: ~15 min cold on two cores, then a minute or two"]
fn a_second_tree_build_after_one_change_is_incremental() {
    if !ready() {
        return;
    }
    let (tree, _, _) = tree();
    let run = || {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_cowgup"))
            .args(["matrix", "--kernel"])
            .arg(format!("tree:{}", tree.display()))
            .args(["--exact", "Basic COW after fork() ... with base page"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "{err}");
        let built = err
            .lines()
            .find(|l| l.contains(": built "))
            .unwrap_or_else(|| panic!("no build line: {err}"))
            .to_string();
        eprintln!("e2e: {built} (the whole cell {secs:.0} s)");
        built
    };
    run();
    // The heading names the tree's commit, dirty once a file is changed.
    harmless(&tree, "mm/mlock.c", 99);
    let second = run();
    sh(&tree, "git checkout -- mm/mlock.c");
    assert!(second.contains("-dirty"), "{second}");
    // mm/mlock.c, and what depends on the release string, which a dirty
    // tree changes (`-dirty`, CONFIG_LOCALVERSION_AUTO): init/version*,
    // kernel/sys.c, the module loader, the firmware loader, the boot stub's
    // version and misc (9 in all, seen on 6.12.118).
    let compiled: usize = second
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        (1..=12).contains(&compiled),
        "an incremental build compiles mm/mlock.c and little else: {second}"
    );
}

/// A tree that looks like a kernel's to `tree:` (a top Makefile, mm/memory.c,
/// arch/x86) and whose make takes `bzImage_recipe` (per commit), in a git
/// repository on branch `work` with `commits` commits. The build cache
/// goes to a directory of the test's own (`XDG_CACHE_HOME`).
fn fake_tree(commits: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("linux");
    for d in ["mm", "arch/x86", "scripts/kconfig"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("mm/memory.c"), "").unwrap();
    std::fs::write(
        t.join("scripts/kconfig/merge_config.sh"),
        "#!/bin/sh\nexit 0\n",
    )
    .unwrap();
    sh(&t, "chmod +x scripts/kconfig/merge_config.sh");
    git(&t, &["init", "--quiet", "--initial-branch=work"]);
    for (i, recipe) in commits.iter().enumerate() {
        std::fs::write(
            t.join("Makefile"),
            format!(
                "# commit {i}\ndefconfig:\n\ttouch $(O)/.config\nolddefconfig:\n\ttrue\nbzImage:\n\t{recipe}\n"
            ),
        )
        .unwrap();
        git(&t, &["add", "-A"]);
        git(&t, &["commit", "--quiet", "-m", &format!("commit {i}")]);
    }
    dir
}

fn bisect_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cowgup"));
    c.env("XDG_CACHE_HOME", dir.join("cache"))
        .args(["bisect", "--tree"])
        .arg(dir.join("linux"));
    c
}

#[test]
fn bisect_refuses_what_it_cannot_bisect_in_one_line() {
    let dir = fake_tree(&["true", "true", "true"]);
    let t = dir.path().join("linux");
    let run = |args: &[&str]| {
        let out = bisect_cmd(dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.starts_with("cowgup: bisect: "), "{err}");
        err
    };
    let e = run(&["--good", "nonsense", "--bad", "HEAD"]);
    assert!(e.contains("no commit \"nonsense\""), "{e}");
    let e = run(&["--good", "HEAD", "--bad", "HEAD~2"]);
    assert!(e.contains("is not an ancestor of --bad"), "{e}");
    let e = run(&["--good", "HEAD~2", "--bad", "HEAD", "--arch", "mips"]);
    assert!(e.contains("--arch mips: unknown"), "{e}");
    std::fs::write(t.join("mm/memory.c"), "changed").unwrap();
    let e = run(&["--good", "HEAD~2", "--bad", "HEAD"]);
    assert!(e.contains("uncommitted changes"), "{e}");
    sh(&t, "git checkout -- mm/memory.c && rm Makefile");
    let e = run(&["--good", "HEAD~2", "--bad", "HEAD"]);
    assert!(e.contains("not a kernel tree (no Makefile)"), "{e}");
    assert!(t.join(".git").is_dir() && !t.join(".git/BISECT_START").exists());
}

/// What a child wrote on `err` until `marker` appeared (it must).
fn read_until(err: &mut impl std::io::Read, marker: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(marker) {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "ended before {marker:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

/// qemu and a static busybox: what a bisection prepares before its first build.
fn guest_tools() -> Option<PathBuf> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())?;
    let has_qemu = Command::new("sh")
        .args([
            "-c",
            "command -v qemu-system-x86_64 && command -v mkfs.ext4",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    has_qemu.then_some(bb)
}

#[test]
fn a_bisect_that_cannot_build_an_end_stops_and_puts_the_tree_back() {
    let Some(bb) = guest_tools() else {
        eprintln!("SKIP: needs qemu-system-x86_64, mkfs.ext4 and busybox-static");
        return;
    };
    let dir = fake_tree(&[
        "true",
        "true",
        "echo 'mm/memory.c:1: error: broken' >&2; exit 1",
    ]);
    let t = dir.path().join("linux");
    git(&t, &["checkout", "--quiet", "-b", "topic", "HEAD~1"]);
    // busybox stands in for the guest's cowgup: no guest boots here.
    let out = bisect_cmd(dir.path())
        .args(["--good", "work~2", "--bad", "work", "--guest-bin"])
        .arg(&bb)
        .args(["--kvm", "off", "Basic COW after fork() ... with base page"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the bad end"), "{err}");
    assert!(err.contains("the build failed"), "{err}");
    assert!(
        err.contains("error: broken"),
        "make's own words are quoted: {err}"
    );
    assert!(err.contains("is back on topic"), "{err}");
    assert_eq!(git(&t, &["symbolic-ref", "--short", "HEAD"]), "topic");
}

#[test]
fn an_interrupted_bisect_puts_the_tree_back_at_once() {
    let Some(bb) = guest_tools() else {
        eprintln!("SKIP: needs qemu-system-x86_64, mkfs.ext4 and busybox-static");
        return;
    };
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let dir = fake_tree(&["true", "true", "sleep 60"]);
        let t = dir.path().join("linux");
        let mut child = bisect_cmd(dir.path())
            .args(["--good", "work~2", "--bad", "work", "--guest-bin"])
            .arg(&bb)
            .args(["--kvm", "off", "Basic COW after fork() ... with base page"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        // Until make runs the bad end's build (it sleeps).
        let mut seen = read_until(&mut err, "build bzImage");
        let t0 = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        seen.push_str(&rest);
        assert!(
            t0.elapsed().as_secs() < 10,
            "{sig}: took {:?}",
            t0.elapsed()
        );
        assert_eq!(status.code(), Some(130), "{sig}: {seen}");
        assert!(seen.contains(&format!("stopped by {sig}")), "{seen}");
        assert!(seen.contains("is back on work"), "{seen}");
        assert_eq!(git(&t, &["symbolic-ref", "--short", "HEAD"]), "work");
    }
}

#[test]
fn a_tree_spec_that_names_no_kernel_tree_is_one_line_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    for (path, why) in [
        (dir.path().join("nonexistent"), "No such file or directory"),
        (dir.path().to_path_buf(), "not a kernel tree (no Makefile)"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cowgup"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args(["matrix", "--kernel"])
            .arg(format!("tree:{}", path.display()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("cowgup: tree:") && err.contains(why),
            "{err}"
        );
        assert!(
            !dir.path().join("cache").exists(),
            "nothing built or fetched"
        );
    }
}

#[test]
fn a_matrix_stopped_while_it_builds_stops_its_make_too() {
    let Some(bb) = guest_tools() else {
        eprintln!("SKIP: needs qemu-system-x86_64, mkfs.ext4 and busybox-static");
        return;
    };
    // A make that outlives cowgup would go on building into the cache.
    let dir = fake_tree(&["sleep 77"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cowgup"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .args(["matrix", "--kernel"])
        .arg(format!("tree:{}", dir.path().join("linux").display()))
        .arg("--guest-bin")
        .arg(&bb)
        .args(["--kvm", "off", "Basic COW after fork() ... with base page"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let seen = read_until(&mut err, "build bzImage");
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("stopped by SIGTERM"), "{rest}");
    let left = Command::new("pgrep")
        .args(["-f", "sleep 77"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "make's child still runs: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
