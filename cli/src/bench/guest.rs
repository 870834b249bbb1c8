//! `cowgup bench --guest KERNEL --c-from LINUX_SRC`: upstream's C programs
//! and the whole cowgup catalogue, timed in one guest boot (the matrix's
//! guest boot, `crate::guest`: initramfs, qemu, the architecture's result
//! port: ttyS1 on x86_64, hvc0 on arm64). The guest's architecture is the
//! kernel image's (`Arch::of_image_file`); busybox, the static cowgup and
//! the drop-ins are of that architecture, and so are the C programs.
//!
//! The C side is built from the given tree (`make -C tools/testing/selftests/mm
//! USERLDFLAGS=-static OUTPUT=<cache>/<arch>`, with `ARCH=arm64
//! CROSS_COMPILE=aarch64-linux-gnu-` from an x86_64 host, after `make
//! headers` for that architecture; liburing-dev of the guest's Debian
//! architecture for cow's io_uring cases), never vendored, and runs what
//! run_vmtests.sh runs for these programs, with its hugetlb pool computed in
//! the guest as the script does (`hpgsize_KB` from /proc/meminfo: 2 MiB on
//! x86 and 4K arm64, 32 MiB on 16K pages, 512 MiB on 64K): `cow`,
//! `gup_longterm`, then our drop-ins `cow` and `gup_longterm` (crate
//! cowgup-tap), whose `# [RUN]` names are compared with C's byte for byte
//! (`names`: the report says `<program> names: N equal to C's` or each
//! difference, and the bench fails when they differ), then every
//! `./gup_test` invocation of the script, its `run_gup_matrix` (`-a`)
//! included, read from that tree's run_vmtests.sh. Then the pool is emptied
//! and `cowgup bench` runs the catalogue (no 1 GiB trials: the guest has no
//! 1 GiB pages), first with `--jobs` at the guest's CPU count, then `--jobs
//! 1`. `--names-only` stops after the names. Times are the guest's
//! (`/proc/uptime` for C and the drop-ins, `Instant` for cowgup), sent back
//! as lines on the result port.
//!
//! Here: the `/init` and the boot. The C programs' build is `c_programs`,
//! the drop-ins' `dropins`, the names' comparison `names`, what comes back
//! and the report `figures`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::guest::arch::Arch;
use crate::guest::initramfs::{self, quote};
use crate::guest::{disk, qemu, spec, tools};

use super::c_programs::{build_c, PROGRAMS};
use super::dropins;
use super::figures::{parse, render};

/// Frame of the bench's lines on the result port.
pub const FRAME: &str = "=== COWGUP-BENCH";
pub const FRAME_END: &str = "=== COWGUP-BENCH-END";

/// Split a shell word list as run_vmtests.sh writes its `for` lists:
/// whitespace-separated words, double quotes grouping (`"-n 1"`, `" "`).
fn shell_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Every gup_test invocation run_vmtests.sh makes, in its order, as argument
/// strings: `run_gup_matrix` (the nested `for ... in LIST; do` loops of that
/// function, `$hugetlb_mb` replaced by `hugetlb_mb`: the guest's `/init`
/// passes `$hugetlb_mb` on, to be expanded there) in place of the `else` branch it stands
/// in for with `-a`, and every other `run_test ./gup_test ARGS` line.
pub fn gup_test_invocations(script: &str, hugetlb_mb: &str) -> Result<Vec<String>, String> {
    let lines: Vec<&str> = script.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("run_gup_matrix()"))
        .ok_or("run_vmtests.sh: no run_gup_matrix() function")?;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == "}")
            .ok_or("run_vmtests.sh: run_gup_matrix() does not end")?;
    let mut lists: Vec<Vec<String>> = Vec::new();
    for l in &lines[start..end] {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("for ") {
            let list = rest
                .split_once(" in ")
                .and_then(|(_, r)| r.rsplit_once("; do"))
                .map(|(list, _)| list)
                .ok_or(format!("run_vmtests.sh: cannot read the loop {t:?}"))?;
            let list = list.replace("$hugetlb_mb", hugetlb_mb);
            lists.push(shell_list(&list));
        }
    }
    if lists.is_empty() {
        return Err("run_vmtests.sh: run_gup_matrix() has no loops".into());
    }
    let mut matrix = vec![String::new()];
    for list in &lists {
        matrix = matrix
            .iter()
            .flat_map(|prefix| {
                list.iter().map(move |w| {
                    [prefix.as_str(), w.trim()]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            })
            .collect();
    }
    let mut out = Vec::new();
    // The `if $RUN_ALL; then run_gup_matrix; else <defaults>; fi` block.
    let mut in_else = false;
    for (i, l) in lines.iter().enumerate() {
        if (start..=end).contains(&i) {
            continue;
        }
        let t = l.trim();
        if t == "run_gup_matrix" {
            out.extend(matrix.iter().cloned());
            in_else = true;
            continue;
        }
        if in_else && t == "fi" {
            in_else = false;
            continue;
        }
        if in_else {
            continue;
        }
        if let Some((_, args)) = t.split_once("run_test ./gup_test") {
            let args = args.trim();
            if !args.starts_with('\\') {
                out.push(args.to_string());
            }
        }
    }
    Ok(out)
}

/// What the guest runs: everything (C programs, then the catalogue twice)
/// or only the names part (C `cow` and `gup_longterm`, then our drop-ins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Full,
    NamesOnly,
}

/// The bench's `/init`: the guest's [`initramfs::preamble`] (and debugfs),
/// then run_vmtests.sh's figures from this guest (`hpgsize_KB` from
/// /proc/meminfo's Hugepagesize, `needmem_KB` = max(2 huge pages per CPU,
/// 256 MiB), `hugetlb_mb`, which the gup_test arguments name as
/// `$hugetlb_mb`) and its hugetlb pool, then the C programs (in `/c`) and
/// our drop-ins (in `/d`), and with [`Mode::Full`] the gup_test runs and
/// cowgup. Result lines, framed on `port`: `C <program> <seconds> <runs>
/// <failed runs>`, `D <drop-in> <seconds> <exit code>`, `N <c|ours>
/// <program> <its # [RUN] line>`, then cowgup's `BENCH ...` lines of each
/// `--jobs` run prefixed with `J<jobs> `.
pub fn init_script(
    port: &str,
    gup_test_args: &[String],
    cowgup_args: &[String],
    mode: Mode,
) -> String {
    let gup_list: Vec<String> = gup_test_args.iter().map(|a| quote(a)).collect();
    let ours: Vec<String> = cowgup_args.iter().map(|a| quote(a)).collect();
    let rest = match mode {
        Mode::NamesOnly => String::new(),
        Mode::Full => format!(
            r#"timed gup_test {gup_list}
echo 0 > /proc/sys/vm/nr_hugepages
for j in $(nproc) 1; do
  /bin/cowgup bench --repeat 1 --lines --timeout 600 --jobs $j {ours} > /tmp/ours.txt 2>&1
  grep '^BENCH ' /tmp/ours.txt | sed "s/^/J$j /" | tee -a $out
  tail -n 3 /tmp/ours.txt
done
"#,
            gup_list = gup_list.join(" "),
            ours = ours.join(" "),
        ),
    };
    format!(
        r#"{preamble}now() {{ read u rest < /proc/uptime; echo $u; }}
secs() {{ echo "$1 $2" | awk '{{printf "%.2f", $2-$1}}'; }}
out=/tmp/bench.txt
: > $out
# run_vmtests.sh's figures and hugetlb pool, as it computes them
while read -r name size unit; do [ "$name" = "Hugepagesize:" ] && hpgsize_KB=$size; done < /proc/meminfo
needmem_KB=$((hpgsize_KB * $(nproc) * 2))
[ $needmem_KB -gt 262144 ] || needmem_KB=262144
hugetlb_mb=$((needmem_KB / 1024))
echo $((needmem_KB / hpgsize_KB)) > /proc/sys/vm/nr_hugepages
timed() {{ name=$1; shift; s=$(now); n=0; f=0
  for a in "$@"; do n=$((n+1)); eval "/c/$name $a" > /tmp/c-$name.log 2>&1; rc=$?; [ $rc = 0 ] || [ $rc = 4 ] || f=$((f+1)); done
  e=$(now); echo "C $name $(secs $s $e) $n $f" | tee -a $out; }}
names() {{ grep '^# \[RUN\] ' $3 | sed "s/^/N $1 $2 /" >> $out; }}
timed cow ''
names c cow /tmp/c-cow.log
timed gup_longterm ''
names c gup_longterm /tmp/c-gup_longterm.log
for d in {dropins}; do
  s=$(now); /d/$d > /tmp/d-$d.log 2>&1; rc=$?; e=$(now)
  echo "D $d $(secs $s $e) $rc" | tee -a $out
  names ours $d /tmp/d-$d.log
done
{rest}echo "{EXIT} rc=0"
stty -F {port} raw -echo
{{ echo "{FRAME} release=$(uname -r) cpus=$(nproc) hpgsize_kb=$hpgsize_KB needmem_kb=$needmem_KB mode={mode}"; cat $out; echo "{FRAME_END}"; }} > {port}
sync; reboot -f
"#,
        preamble = initramfs::preamble("mount -t debugfs debugfs /sys/kernel/debug\n"),
        EXIT = initramfs::EXIT,
        dropins = dropins::DROPINS.join(" "),
        mode = match mode {
            Mode::Full => "full",
            Mode::NamesOnly => "names",
        },
    )
}

pub struct GuestBench<'a> {
    pub kernel: &'a Path,
    pub src: &'a Path,
    pub guest_bin: Option<&'a Path>,
    /// `--skip` patterns for cowgup's catalogue (1 GiB trials always).
    pub skip: &'a [String],
    pub timeout: Duration,
    pub mode: Mode,
}

pub fn run(b: &GuestBench) -> ExitCode {
    // A bad path fails here, before the C programs or a static cowgup are built.
    if let Err(e) = spec::check_image("--guest", b.kernel) {
        return crate::fatal(&e);
    }
    // SIGINT/SIGTERM/SIGHUP stop the guest (a qemu left behind would run
    // on for the whole time limit) and the work directory goes with us.
    if let Err(e) = crate::stop::catch() {
        return crate::fatal(&e);
    }
    let result = run_inner(b);
    if let Some(sig) = crate::stop::requested() {
        eprintln!("cowgup: bench --guest: stopped by {sig}");
        return ExitCode::from(130);
    }
    match result {
        Ok((text, equal)) => {
            print!("{text}");
            if equal {
                ExitCode::SUCCESS
            } else {
                eprintln!("cowgup: the drop-ins' names differ from the C programs'");
                ExitCode::FAILURE
            }
        }
        Err(e) => crate::fatal(&e),
    }
}

/// The archive's entries after [`initramfs::root`]'s (before its `init`):
/// `dir/<name>` for each file of `from`.
fn programs(entries: &mut Vec<initramfs::Entry>, dir: &str, from: &Path, names: &[&str]) {
    let at = entries.len() - 1;
    let mut add = vec![initramfs::Entry {
        path: dir.into(),
        mode: 0o040755,
        content: initramfs::Content::Dir,
    }];
    add.extend(names.iter().map(|p| initramfs::Entry {
        path: format!("{dir}/{p}"),
        mode: 0o100755,
        content: initramfs::Content::Host(from.join(p)),
    }));
    entries.splice(at..at, add);
}

/// The report, and whether the drop-ins' names equal C's.
fn run_inner(b: &GuestBench) -> Result<(String, bool), String> {
    let arch = Arch::of_image_file(b.kernel).ok_or(format!(
        "{}: neither an x86 bzImage nor an arm64 Image",
        b.kernel.display()
    ))?;
    tools::require(&[arch.qemu(), "mkfs.ext4", "make"], "")?;
    if let Some(cross) = arch.cross_compile() {
        tools::require(
            &[&format!("{cross}gcc")],
            &format!(" (apt-get install {})", arch.cross_package()),
        )?;
    }
    let busybox = tools::static_busybox(arch)?;
    let cowgup = tools::guest_binary(
        &b.guest_bin
            .iter()
            .map(|p| p.to_path_buf())
            .collect::<Vec<_>>(),
        arch,
    )?;
    let ddir = dropins::build(arch)?;
    let cdir = build_c(b.src, arch)?;
    let script = std::fs::read_to_string(b.src.join("tools/testing/selftests/mm/run_vmtests.sh"))
        .map_err(|e| format!("run_vmtests.sh: {e}"))?;
    // `$hugetlb_mb` is the guest's, as run_vmtests.sh computes it there.
    let gup = gup_test_invocations(&script, "$hugetlb_mb")?;
    let mut ours = vec![];
    for s in b.skip.iter().map(String::as_str).chain(["1048576 kB"]) {
        ours.extend(["--skip".to_string(), s.to_string()]);
    }
    if let Some(sig) = crate::stop::requested() {
        return Err(format!("stopped by {sig} before the boot"));
    }
    let init = init_script(arch.result_port(), &gup, &ours, b.mode);
    let work = tempfile::Builder::new()
        .prefix("cowgup-bench-")
        .tempdir()
        .map_err(|e| format!("cannot make a work directory: {e}"))?;
    let dir = work.path();
    let mut entries = initramfs::root(&busybox, &cowgup, init);
    programs(&mut entries, "c", &cdir, &PROGRAMS);
    programs(&mut entries, "d", &ddir, &dropins::DROPINS);
    // The state disk's modules, on a kernel that builds them as modules.
    entries.extend(crate::matrix::modules::for_cell(
        b.kernel,
        &crate::guest::topology::Topology::base(),
    )?);
    let initrd = dir.join("initrd.cpio");
    initramfs::write_initrd(&initrd, &entries)?;
    let g = qemu::Guest::new(arch, b.kernel, initrd, dir);
    for (d, bytes, opts) in disk::state_images(&g.disks) {
        disk::mkfs_image(&d, bytes, &opts)?;
    }
    eprintln!(
        "cowgup: booting {} ({arch}, TCG, 2 vCPUs): C cow, gup_longterm, the drop-ins{}",
        b.kernel.display(),
        match b.mode {
            Mode::NamesOnly => " (names only)".to_string(),
            Mode::Full => format!(
                ", {} gup_test runs, then the catalogue (--jobs 2, then 1)",
                gup.len()
            ),
        }
    );
    let t0 = Instant::now();
    let ended = qemu::run_limited(
        Command::new(arch.qemu()).args(qemu::argv(&g)),
        &dir.join("qemu.log"),
        b.timeout,
    )?;
    let wall = t0.elapsed();
    let channel = qemu::read_lossy(&g.result);
    match parse(&channel) {
        Ok(fig) => {
            let label = b.kernel.file_name().map_or_else(
                || b.kernel.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            Ok((
                format!(
                    "(boot and run: {:.0} s wall on the host)\n{}",
                    wall.as_secs_f64(),
                    render(&fig, &label)
                ),
                fig.names_equal(),
            ))
        }
        Err(e) => {
            let console = qemu::read_lossy(&g.console);
            Err(format!(
                "{e} ({}); the console's last lines:\n{}",
                match ended {
                    qemu::Ended::TimedOut => format!("stopped after {} s", b.timeout.as_secs()),
                    qemu::Ended::Exited(s) => format!("qemu ended: {s}"),
                    qemu::Ended::Stopped(why) => why,
                },
                qemu::tail(&console, 25).join("\n")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"
run_gup_matrix() {
    # -t: thp=on, -T: thp=off, -H: hugetlb=on
    local hugetlb_mb=$(( needmem_KB / 1024 ))

    for huge in -t -T "-H -m $hugetlb_mb"; do
        for test_cmd in -u -U -a -b -L; do
            for write in -w -W; do
                for share in -S " "; do
                    for num in "-n 1" "-n 512" "-n 123"; do
                        CATEGORY="gup_test" run_test ./gup_test \
                                $huge $test_cmd $write $share $num
                    done
                done
            done
        done
    done
}

if $RUN_ALL; then
    run_gup_matrix
else
    # get_user_pages_fast() benchmark
    CATEGORY="gup_test" run_test ./gup_test -u
    # pin_user_pages_fast() benchmark
    CATEGORY="gup_test" run_test ./gup_test -a
fi
# Dump pages 0, 19, and 4096, using pin_user_pages:
CATEGORY="gup_test" run_test ./gup_test -ct -F 0x1 0 19 0x1000
CATEGORY="gup_test" run_test ./gup_longterm
"#;

    #[test]
    fn run_vmtests_gup_test_invocations_with_the_matrix() {
        let v = gup_test_invocations(SCRIPT, "$hugetlb_mb").unwrap();
        assert_eq!(v.len(), 3 * 5 * 2 * 2 * 3 + 1);
        assert_eq!(v[0], "-t -u -w -S -n 1");
        assert_eq!(v[3], "-t -u -w -n 1");
        assert_eq!(v[179], "-H -m $hugetlb_mb -L -W -n 123");
        assert_eq!(v[180], "-ct -F 0x1 0 19 0x1000");
        assert!(!v.iter().any(|a| a == "-u" || a.contains("gup_longterm")));
    }

    #[test]
    fn the_source_trees_script_parses_when_present() {
        let Some(s) = [
            "/work/c-selftests/linux-source-6.12",
            "/work/c-src/linux-source-6.12",
        ]
        .iter()
        .find_map(|t| {
            std::fs::read_to_string(Path::new(t).join("tools/testing/selftests/mm/run_vmtests.sh"))
                .ok()
        }) else {
            return;
        };
        let v = gup_test_invocations(&s, "256").unwrap();
        assert!(v.len() > 100, "{}", v.len());
        for a in &v {
            let words: Vec<&str> = a.split_whitespace().collect();
            assert!(
                cowgup_fixtures::gup_bench::GupRun::from_args(&words).is_ok(),
                "{a}"
            );
        }
    }

    #[test]
    fn shell_lists_group_quotes() {
        assert_eq!(shell_list(r#"-S " ""#), ["-S", " "]);
        assert_eq!(shell_list(r#""-n 1" "-n -1""#), ["-n 1", "-n -1"]);
    }

    #[test]
    fn the_init_runs_c_then_the_drop_ins_then_cowgup_and_frames_the_lines() {
        let s = init_script(
            "/dev/hvc0",
            &["-u -n 1".into(), "-H -m $hugetlb_mb -u".into()],
            &["--skip".into(), "1048576 kB".into()],
            Mode::Full,
        );
        assert!(s.starts_with(&initramfs::preamble(
            "mount -t debugfs debugfs /sys/kernel/debug\n"
        )));
        // run_vmtests.sh's figures come from the guest.
        assert!(s.contains("[ \"$name\" = \"Hugepagesize:\" ] && hpgsize_KB=$size"));
        assert!(s.contains("echo $((needmem_KB / hpgsize_KB)) > /proc/sys/vm/nr_hugepages"));
        // The guest expands `$hugetlb_mb` (eval), not the host.
        assert!(s.contains("timed gup_test '-u -n 1' '-H -m $hugetlb_mb -u'"));
        assert!(s.contains("eval \"/c/$name $a\""));
        assert!(s.contains("--jobs $j '--skip' '1048576 kB'"));
        let at = |x: &str| s.find(x).unwrap_or_else(|| panic!("{x}"));
        assert!(at("timed cow") < at("names c cow"));
        assert!(at("names c gup_longterm") < at("for d in cow gup_longterm"));
        assert!(at("names ours $d") < at("timed gup_test"));
        assert!(at("timed gup_test") < at("/bin/cowgup bench"));
        assert!(s.contains("stty -F /dev/hvc0 raw -echo"));
        assert!(s.contains("mode=full\"; cat $out; echo \"=== COWGUP-BENCH-END\"; } > /dev/hvc0"));
        assert!(!s.contains("ttyS1"));
        let names = init_script("/dev/ttyS1", &["-u".into()], &[], Mode::NamesOnly);
        assert!(!names.contains("gup_test") && !names.contains("/bin/cowgup"));
        assert!(names.contains("mode=names") && names.contains("names ours $d"));
    }

    #[test]
    fn names_come_back_byte_for_byte_and_are_compared() {
        let ch = format!(
            "{FRAME} release=6.12.118 cpus=2 hpgsize_kb=32768 needmem_kb=262144 mode=names\n\
             C cow 100.00 1 0\nC gup_longterm 3.00 1 0\n\
             N c cow # [RUN] Basic COW after fork() ... with base page\n\
             N c cow # [RUN] Non-anonymous memory tests in private mappings\n\
             N c cow # [RUN]  two  spaces \n\
             N c gup_longterm # [RUN] R/W longterm GUP pin ... with memfd\n\
             D cow 50.00 0\nD gup_longterm 2.00 0\n\
             N ours cow # [RUN] Basic COW after fork() ... with base page\n\
             N ours cow # [RUN]  two  spaces \n\
             N ours gup_longterm # [RUN] R/W longterm GUP pin ... with memfd (16 kB)\n\
             {FRAME_END}\n"
        );
        let g = parse(&ch).unwrap();
        assert!(g.names_only && g.ours_total.is_empty());
        assert_eq!((g.hpgsize_kb, g.needmem_kb), (32768, 262144));
        assert_eq!(g.c_runs["cow"][2], "# [RUN]  two  spaces ");
        assert_eq!(g.dropins["cow"], (50.0, 0));
        assert_eq!(
            g.names(),
            [
                "cow names: 2 equal to C's",
                "gup_longterm names: differ from C's (C 1, ours 1):",
                "  missing in ours: R/W longterm GUP pin ... with memfd",
                "  extra in ours: R/W longterm GUP pin ... with memfd (16 kB)",
            ]
        );
        assert!(!g.names_equal());
        let r = render(&g, "vmlinuz");
        assert!(r.contains("default hugetlb page 32768 KiB"), "{r}");
        assert!(
            r.contains("cow              C 100.00 s; drop-in 50.00 s (exit 0)"),
            "{r}"
        );
        assert!(r.ends_with("  extra in ours: R/W longterm GUP pin ... with memfd (16 kB)\n"));
        // Without the names part: no names from C.
        let bare = parse(&format!("{FRAME} mode=names\nC cow 1.00 1 0\n{FRAME_END}")).unwrap();
        assert_eq!(bare.names()[0], "cow names: C cow printed none");
        assert!(!bare.names_equal());
    }
}
