//! `cowgup bench --guest KERNEL --c-from LINUX_SRC`: upstream's C programs
//! and the whole cowgup catalogue, timed in one guest boot (the matrix's
//! guest boot, `crate::guest`: initramfs, qemu, the result port ttyS1).
//!
//! The C side is built from the given tree (`make -C tools/testing/selftests/mm
//! USERLDFLAGS=-static OUTPUT=<cache>`), never vendored, and runs what
//! run_vmtests.sh runs for these programs, with its hugetlb pool: `cow`,
//! `gup_longterm`, and every `./gup_test` invocation of the script, its
//! `run_gup_matrix` (`-a`) included, read from that tree's run_vmtests.sh.
//! Then the pool is emptied and `cowgup bench` runs the catalogue (no 1 GiB
//! trials: the guest has no 1 GiB pages), first with `--jobs` at the guest's
//! CPU count, then `--jobs 1`. Times are the guest's (`/proc/uptime` for C,
//! `Instant` for cowgup), sent back as lines on ttyS1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::guest::arch::Arch;
use crate::guest::initramfs::{self, quote};
use crate::guest::{disk, qemu, spec, tools};

/// The C programs built from the tree, in the order the guest runs them.
pub const PROGRAMS: [&str; 3] = ["cow", "gup_longterm", "gup_test"];

/// Frame of the bench's lines on ttyS1.
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
/// function, `$hugetlb_mb` replaced) in place of the `else` branch it stands
/// in for with `-a`, and every other `run_test ./gup_test ARGS` line.
pub fn gup_test_invocations(script: &str, hugetlb_mb: usize) -> Result<Vec<String>, String> {
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
            let list = list.replace("$hugetlb_mb", &hugetlb_mb.to_string());
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

/// run_vmtests.sh's `needmem_KB`: max(2 huge pages per CPU, 256 MiB).
pub fn needmem_kb(hpgsize_kb: usize, cpus: usize) -> usize {
    (hpgsize_kb * cpus * 2).max(256 * 1024)
}

/// The bench's `/init`: the guest's [`initramfs::preamble`] (and debugfs),
/// then the C programs and cowgup. C programs live in `/c`. Result lines (on ttyS1):
/// `C <program> <seconds> <runs> <failed runs>`, then cowgup's
/// `BENCH ...` lines of each `--jobs` run prefixed with `J<jobs> `.
pub fn init_script(
    gup_test_args: &[String],
    nr_hugepages: usize,
    cowgup_args: &[String],
) -> String {
    let gup_list: Vec<String> = gup_test_args.iter().map(|a| quote(a)).collect();
    let ours: Vec<String> = cowgup_args.iter().map(|a| quote(a)).collect();
    format!(
        r#"{preamble}now() {{ read u rest < /proc/uptime; echo $u; }}
out=/tmp/bench.txt
: > $out
# run_vmtests.sh's hugetlb pool for the C programs
echo {nr_hugepages} > /proc/sys/vm/nr_hugepages
timed() {{ name=$1; shift; s=$(now); n=0; f=0
  for a in "$@"; do n=$((n+1)); /c/$name $a > /tmp/c-$name.log 2>&1; rc=$?; [ $rc = 0 ] || [ $rc = 4 ] || f=$((f+1)); done
  e=$(now); echo "C $name $(echo "$s $e" | awk '{{printf "%.2f", $2-$1}}') $n $f" | tee -a $out; }}
timed cow ''
timed gup_longterm ''
timed gup_test {gup_list}
echo 0 > /proc/sys/vm/nr_hugepages
for j in $(nproc) 1; do
  /bin/cowgup bench --repeat 1 --lines --timeout 600 --jobs $j {ours} > /tmp/ours.txt 2>&1
  grep '^BENCH ' /tmp/ours.txt | sed "s/^/J$j /" | tee -a $out
  tail -n 3 /tmp/ours.txt
done
echo "{EXIT} rc=0"
stty -F /dev/ttyS1 raw -echo
{{ echo "{FRAME} release=$(uname -r) cpus=$(nproc)"; cat $out; echo "{FRAME_END}"; }} > /dev/ttyS1
sync; reboot -f
"#,
        preamble = initramfs::preamble("mount -t debugfs debugfs /sys/kernel/debug\n"),
        EXIT = initramfs::EXIT,
        gup_list = gup_list.join(" "),
        ours = ours.join(" "),
    )
}

/// What came back from the guest.
#[derive(Debug, Default, PartialEq)]
pub struct GuestFigures {
    pub release: String,
    pub cpus: usize,
    /// program -> (seconds, runs, failed runs)
    pub c: BTreeMap<String, (f64, usize, usize)>,
    /// jobs -> family -> (seconds, executed trials)
    pub ours: BTreeMap<usize, BTreeMap<String, (f64, usize)>>,
    /// jobs -> the catalogue's wall time
    pub ours_total: BTreeMap<usize, f64>,
    /// jobs -> (session start, sum of trial times, pin-balance waits)
    pub profile: BTreeMap<usize, (f64, f64, f64)>,
    /// --jobs -> wall ms of a trial that does nothing (the harness floor).
    pub floor: BTreeMap<usize, f64>,
}

/// Parse the framed lines (see [`init_script`] and `bench --lines`).
pub fn parse(channel: &str) -> Result<GuestFigures, String> {
    let start = channel.find(FRAME).ok_or("no bench frame on ttyS1")?;
    let body = &channel[start..];
    let end = body.find(FRAME_END).ok_or("the bench frame is cut off")?;
    let mut lines = body[..end].lines();
    let head = lines.next().unwrap_or_default();
    let mut g = GuestFigures::default();
    for w in head.split_whitespace() {
        if let Some(r) = w.strip_prefix("release=") {
            g.release = r.into();
        } else if let Some(c) = w.strip_prefix("cpus=") {
            g.cpus = c.parse().map_err(|e| format!("cpus={c}: {e}"))?;
        }
    }
    let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    let int = |s: &str| s.parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["C", prog, secs, runs, failed] => {
                g.c.insert(prog.to_string(), (num(secs)?, int(runs)?, int(failed)?));
            }
            [j, "BENCH", "family", fam, secs, executed] => {
                let jobs = int(j.trim_start_matches('J'))?;
                g.ours
                    .entry(jobs)
                    .or_default()
                    .insert(fam.to_string(), (num(secs)?, int(executed)?));
            }
            [j, "BENCH", "phase", "start", start, "trials", trials, "pin_wait", wait] => {
                g.profile.insert(
                    int(j.trim_start_matches('J'))?,
                    (num(start)?, num(trials)?, num(wait)?),
                );
            }
            [j, "BENCH", "floor", ms] => {
                g.floor.insert(int(j.trim_start_matches('J'))?, num(ms)?);
            }
            [j, "BENCH", "total", secs, ..] => {
                g.ours_total
                    .insert(int(j.trim_start_matches('J'))?, num(secs)?);
            }
            [] => {}
            _ => return Err(format!("unexpected bench line {l:?}")),
        }
    }
    if g.c.is_empty() || g.ours_total.is_empty() {
        return Err(format!(
            "incomplete figures (C programs: {}, cowgup runs: {})",
            g.c.len(),
            g.ours_total.len()
        ));
    }
    Ok(g)
}

/// The upstream program a cowgup family does the work of, if any.
pub fn upstream_of(family: &str) -> Option<&'static str> {
    if family.starts_with("cow_") {
        Some("cow")
    } else if family == "gup_longterm" {
        Some("gup_longterm")
    } else if family == "gup_test" {
        Some("gup_test")
    } else {
        None
    }
}

impl GuestFigures {
    /// Seconds and executed trials of cowgup's families that `pred` picks,
    /// with `--jobs j`.
    fn family_sum(&self, j: usize, pred: impl Fn(&str) -> bool) -> (f64, usize) {
        self.ours.get(&j).map_or((0.0, 0), |m| {
            m.iter()
                .filter(|(f, _)| pred(f))
                .fold((0.0, 0), |(t, n), (_, (secs, ex))| (t + secs, n + ex))
        })
    }

    /// The C programs' seconds, all together.
    fn c_total(&self) -> f64 {
        self.c.values().map(|(t, _, _)| t).sum()
    }
}

/// The report: per upstream program C vs cowgup (each `--jobs`), cowgup's
/// families without a C counterpart, the totals; last line the ratio of the
/// same work (cowgup's families that do a C program's work, `--jobs` = the
/// guest's CPUs) to C's total, after the whole catalogue's ratio.
pub fn render(g: &GuestFigures, label: &str) -> String {
    let mut s = String::new();
    let jobs: Vec<usize> = g.ours_total.keys().rev().copied().collect();
    s.push_str(&format!(
        "guest: {label} ({}), qemu TCG, {} vCPUs; guest seconds\n",
        g.release, g.cpus
    ));
    s.push_str(&format!("{:<40} {:>16}", "work", "C (upstream)"));
    for j in &jobs {
        s.push_str(&format!(" {:>22}", format!("cowgup --jobs {j}")));
    }
    s.push('\n');
    program_rows(&mut s, g, &jobs);
    family_rows(&mut s, g, &jobs);
    total_rows(&mut s, g, &jobs);
    profile_lines(&mut s, g);
    ratio_lines(&mut s, g, &jobs);
    s
}

/// Per upstream program: C's time (runs, failures), and cowgup's for the
/// families that do its work, with the ratio.
fn program_rows(s: &mut String, g: &GuestFigures, jobs: &[usize]) {
    for p in PROGRAMS {
        let (secs, runs, failed) = g.c.get(p).copied().unwrap_or((0.0, 0, 0));
        let c = format!(
            "{secs:.2} s ({runs}{})",
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
        s.push_str(&format!("{:<40} {c:>16}", format!("{p}")));
        for j in jobs {
            let (t, n) = g.family_sum(*j, |f| upstream_of(f) == Some(p));
            s.push_str(&format!(
                " {:>22}",
                format!("{t:.2} s ({n}) {:.2}x", t / secs.max(1e-9))
            ));
        }
        s.push('\n');
    }
}

/// Per cowgup family: its time and trials, and which C program it stands for.
fn family_rows(s: &mut String, g: &GuestFigures, jobs: &[usize]) {
    let families: Vec<&String> = g
        .ours
        .values()
        .flat_map(|m| m.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for f in families {
        let tag = match upstream_of(f) {
            Some(p) => format!("  family {f} (~ {p})"),
            None => format!("  family {f} (no C)"),
        };
        s.push_str(&format!("{tag:<40} {:>16}", "-"));
        for j in jobs {
            let (t, n) = g
                .ours
                .get(j)
                .and_then(|m| m.get(f.as_str()))
                .copied()
                .unwrap_or((0.0, 0));
            s.push_str(&format!(" {:>22}", format!("{t:.2} s ({n})")));
        }
        s.push('\n');
    }
}

/// The whole catalogue against C, then like for like: only the families
/// that do a C program's work.
fn total_rows(s: &mut String, g: &GuestFigures, jobs: &[usize]) {
    let c_total = g.c_total();
    s.push_str(&format!(
        "{:<40} {:>16}",
        "total",
        format!("{c_total:.2} s")
    ));
    for j in jobs {
        let t = g.ours_total[j];
        s.push_str(&format!(
            " {:>22}",
            format!("{t:.2} s {:.2}x", t / c_total.max(1e-9))
        ));
    }
    s.push('\n');
    s.push_str(&format!(
        "{:<40} {:>16}",
        "total, families with a C counterpart",
        format!("{c_total:.2} s")
    ));
    for j in jobs {
        let (t, _) = g.family_sum(*j, |f| upstream_of(f).is_some());
        s.push_str(&format!(
            " {:>22}",
            format!("{t:.2} s {:.2}x", t / c_total.max(1e-9))
        ));
    }
    s.push('\n');
}

/// Where cowgup's time went, per `--jobs`.
fn profile_lines(s: &mut String, g: &GuestFigures) {
    for (j, (start, trials, wait)) in g.profile.iter().rev() {
        let executed: usize = g
            .ours
            .get(j)
            .map_or(0, |m| m.values().map(|(_, n)| n).sum());
        let floor = g.floor.get(j).map_or(String::new(), |ms| {
            format!(
                "; a trial that does nothing {ms:.2} ms (fork, report, reap, checks): {:.2} s of the {executed} executed",
                ms * executed as f64 / 1e3
            )
        });
        s.push_str(&format!(
            "profile --jobs {j}: probe+provisioning {start:.2} s; trials (spawn, scenario, checks) {trials:.2} s summed; pin-balance waits {wait:.2} s of that (per batch member){floor}; wall {:.2} s\n",
            g.ours_total.get(j).copied().unwrap_or(0.0)
        ));
    }
}

/// The whole catalogue's ratio, then the like-for-like ratio (with
/// `--jobs 1` too when the top `--jobs` is not 1).
fn ratio_lines(s: &mut String, g: &GuestFigures, jobs: &[usize]) {
    let c_total = g.c_total();
    let top = jobs.first().copied().unwrap_or(1);
    let same = |j: usize| g.family_sum(j, |f| upstream_of(f).is_some()).0 / c_total.max(1e-9);
    s.push_str(&format!(
        "whole catalogue ratio (families upstream lacks included): {:.2} x\n",
        g.ours_total[&top] / c_total.max(1e-9)
    ));
    if top != 1 && g.ours_total.contains_key(&1) {
        s.push_str(&format!("guest ratio with --jobs 1: {:.2} x\n", same(1)));
    }
    s.push_str(&format!("guest ratio: {:.2} x\n", same(top)));
}

/// Where the C programs of a tree are built.
fn c_cache(src: &Path) -> PathBuf {
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
}

/// The make command that builds [`PROGRAMS`] statically into `out`.
pub fn make_command(src: &Path, out: &Path) -> Vec<String> {
    let mut v = vec![
        "make".to_string(),
        "-C".into(),
        src.join("tools/testing/selftests/mm").display().to_string(),
        format!("OUTPUT={}", out.display()),
        "USERLDFLAGS=-static".into(),
    ];
    v.extend(PROGRAMS.iter().map(|p| out.join(p).display().to_string()));
    v
}

fn build_c(src: &Path) -> Result<PathBuf, String> {
    let mm = src.join("tools/testing/selftests/mm");
    if !mm.join("run_vmtests.sh").is_file() {
        return Err(format!(
            "{}: not a kernel source tree (no tools/testing/selftests/mm/run_vmtests.sh)",
            src.display()
        ));
    }
    let out = c_cache(src);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let argv = make_command(src, &out);
    eprintln!("cowgup: building upstream's C programs: {}", argv.join(" "));
    let log = out.join("build.log");
    let ended = qemu::run_limited(
        Command::new(&argv[0]).args(&argv[1..]),
        &log,
        Duration::from_secs(1800),
    )?;
    let ok = matches!(ended, qemu::Ended::Exited(s) if s.success());
    if !ok {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "building the C programs failed (needs `make headers` in the tree and liburing-dev for a static link); {}:\n{}",
            log.display(),
            qemu::tail(&text, 15).join("\n")
        ));
    }
    for p in PROGRAMS {
        let bytes = std::fs::read(out.join(p)).map_err(|e| format!("{p}: {e}"))?;
        if !initramfs::is_static_elf(&bytes) {
            return Err(format!("{}: built, but not static", out.join(p).display()));
        }
    }
    Ok(out)
}

pub struct GuestBench<'a> {
    pub kernel: &'a Path,
    pub src: &'a Path,
    pub guest_bin: Option<&'a Path>,
    /// `--skip` patterns for cowgup's catalogue (1 GiB trials always).
    pub skip: &'a [String],
    pub timeout: Duration,
}

pub fn run(b: &GuestBench) -> ExitCode {
    // A bad path fails here, before the C programs or a static cowgup are built.
    if let Err(e) = spec::check_image("--guest", b.kernel) {
        return crate::fatal(&e);
    }
    match run_inner(b) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fatal(&e),
    }
}

fn run_inner(b: &GuestBench) -> Result<String, String> {
    tools::require(&["qemu-system-x86_64", "mkfs.ext4", "make"], "")?;
    // Upstream's C programs are built natively: an x86_64 guest.
    let arch = Arch::X86_64;
    let busybox = tools::static_busybox(arch)?;
    let cowgup = tools::guest_binary(
        &b.guest_bin
            .iter()
            .map(|p| p.to_path_buf())
            .collect::<Vec<_>>(),
        arch,
    )?;
    let cdir = build_c(b.src)?;
    let script = std::fs::read_to_string(b.src.join("tools/testing/selftests/mm/run_vmtests.sh"))
        .map_err(|e| format!("run_vmtests.sh: {e}"))?;
    // The guest's figures, as run_vmtests.sh computes them there: 2 MiB
    // default huge pages (x86-64), the vCPUs qemu gets.
    let hpgsize_kb = 2048;
    let needmem = needmem_kb(hpgsize_kb, 2);
    let gup = gup_test_invocations(&script, needmem / 1024)?;
    let mut ours = vec![];
    for s in b.skip.iter().map(String::as_str).chain(["1048576 kB"]) {
        ours.extend(["--skip".to_string(), s.to_string()]);
    }
    let init = init_script(&gup, needmem / hpgsize_kb, &ours);
    let work = tempfile::Builder::new()
        .prefix("cowgup-bench-")
        .tempdir()
        .map_err(|e| format!("cannot make a work directory: {e}"))?;
    let dir = work.path();
    let mut entries = initramfs::root(&busybox, &cowgup, init);
    entries.insert(
        entries.len() - 1,
        initramfs::Entry {
            path: "c".into(),
            mode: 0o040755,
            content: initramfs::Content::Dir,
        },
    );
    for p in PROGRAMS {
        entries.insert(
            entries.len() - 1,
            initramfs::Entry {
                path: format!("c/{p}"),
                mode: 0o100755,
                content: initramfs::Content::Host(cdir.join(p)),
            },
        );
    }
    let initrd = dir.join("initrd.cpio");
    initramfs::write_initrd(&initrd, &entries)?;
    let g = qemu::Guest::new(arch, b.kernel, initrd, dir);
    for (d, bytes, opts) in disk::state_images(&g.disks) {
        disk::mkfs_image(&d, bytes, &opts)?;
    }
    eprintln!(
        "cowgup: booting {} (TCG, 2 vCPUs): C cow, gup_longterm, {} gup_test runs, then the catalogue (--jobs 2, then 1)",
        b.kernel.display(),
        gup.len()
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
            Ok(format!(
                "(boot and run: {:.0} s wall on the host)\n{}",
                wall.as_secs_f64(),
                render(&fig, &label)
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
        let v = gup_test_invocations(SCRIPT, 256).unwrap();
        assert_eq!(v.len(), 3 * 5 * 2 * 2 * 3 + 1);
        assert_eq!(v[0], "-t -u -w -S -n 1");
        assert_eq!(v[3], "-t -u -w -n 1");
        assert_eq!(v[179], "-H -m 256 -L -W -n 123");
        assert_eq!(v[180], "-ct -F 0x1 0 19 0x1000");
        assert!(!v.iter().any(|a| a == "-u" || a.contains("gup_longterm")));
        assert_eq!(needmem_kb(2048, 2), 256 * 1024);
        assert_eq!(needmem_kb(1 << 20, 2), 4 << 20);
    }

    #[test]
    fn the_source_trees_script_parses_when_present() {
        let p = Path::new(
            "/work/c-selftests/linux-source-6.12/tools/testing/selftests/mm/run_vmtests.sh",
        );
        let Ok(s) = std::fs::read_to_string(p) else {
            return;
        };
        let v = gup_test_invocations(&s, 256).unwrap();
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
    fn the_init_runs_c_then_cowgup_and_frames_the_lines() {
        let s = init_script(
            &["-u -n 1".into(), "-ct -F 0x1 0 19 0x1000".into()],
            128,
            &["--skip".into(), "1048576 kB".into()],
        );
        assert!(s.starts_with(&initramfs::preamble(
            "mount -t debugfs debugfs /sys/kernel/debug\n"
        )));
        assert!(s.contains("echo 128 > /proc/sys/vm/nr_hugepages"));
        assert!(s.contains("timed gup_test '-u -n 1' '-ct -F 0x1 0 19 0x1000'"));
        assert!(s.contains("--jobs $j '--skip' '1048576 kB'"));
        let (c, ours) = (
            s.find("timed cow").unwrap(),
            s.find("/bin/cowgup bench").unwrap(),
        );
        assert!(c < ours);
        assert!(s.contains(FRAME) && s.contains(FRAME_END));
    }

    #[test]
    fn figures_parse_and_render_with_the_ratio_last() {
        let ch = format!(
            "noise\n{FRAME} release=6.12.117 cpus=2\nC cow 8.85 1 0\nC gup_longterm 0.22 1 0\n\
             C gup_test 80.00 181 0\nJ2 BENCH family cow_anon 4.00 742\nJ2 BENCH family gup_test 20.00 245\n\
             J2 BENCH family beyond_upstream 1.00 40\nJ2 BENCH total 25.00\nJ1 BENCH family cow_anon 6.00 742\n\
             J1 BENCH total 40.00\nJ1 BENCH phase start 1.50 trials 37.00 pin_wait 2.00\nJ1 BENCH floor 12.5\n{FRAME_END}\n"
        );
        let g = parse(&ch).unwrap();
        assert_eq!(g.cpus, 2);
        assert_eq!(g.c["gup_test"], (80.0, 181, 0));
        assert_eq!(g.ours[&2]["gup_test"], (20.0, 245));
        assert_eq!(g.ours_total[&1], 40.0);
        assert_eq!(g.profile[&1], (1.5, 37.0, 2.0));
        assert_eq!(g.floor[&1], 12.5);
        let r = render(&g, "bzImage");
        let last = r.lines().last().unwrap();
        assert_eq!(last, "guest ratio: 0.27 x");
        assert!(r.contains("whole catalogue ratio (families upstream lacks included): 0.28 x"));
        assert!(r.contains("guest ratio with --jobs 1: 0.07 x"));
        assert!(r.contains("family beyond_upstream (no C)"));
        assert!(
            r.contains("a trial that does nothing 12.50 ms (fork, report, reap, checks): 9.28 s of the 742 executed"),
            "{r}"
        );
        // cow_anon + gup_test of --jobs 2 against C's 89.07 s.
        assert!(r.contains("24.00 s 0.27x"), "{r}");
        assert!(parse("nothing").is_err());
        assert!(parse(&format!("{FRAME}\nbad line\n{FRAME_END}")).is_err());
    }

    #[test]
    fn the_make_line_builds_static_into_the_cache() {
        let v = make_command(Path::new("/src"), Path::new("/cache"));
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
    }
}
