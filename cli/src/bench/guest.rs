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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::guest::arch::Arch;
use crate::guest::initramfs::{self, quote};
use crate::guest::{disk, qemu, spec, tools};

use super::{dropins, names};

/// The C programs built from the tree, in the order the guest runs them.
pub const PROGRAMS: [&str; 3] = ["cow", "gup_longterm", "gup_test"];

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
    /// run_vmtests.sh's figures as the guest computed them.
    pub hpgsize_kb: usize,
    pub needmem_kb: usize,
    /// Only the names part ran ([`Mode::NamesOnly`]).
    pub names_only: bool,
    /// drop-in -> (seconds, exit code)
    pub dropins: BTreeMap<String, (f64, i32)>,
    /// program -> the `# [RUN] ` lines C printed, and ours.
    pub c_runs: BTreeMap<String, Vec<String>>,
    pub our_runs: BTreeMap<String, Vec<String>>,
}

/// Parse the framed lines (see [`init_script`] and `bench --lines`).
pub fn parse(channel: &str) -> Result<GuestFigures, String> {
    let start = channel
        .find(FRAME)
        .ok_or("no bench frame on the result port")?;
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
        } else if let Some(c) = w.strip_prefix("hpgsize_kb=") {
            g.hpgsize_kb = c.parse().map_err(|e| format!("hpgsize_kb={c}: {e}"))?;
        } else if let Some(c) = w.strip_prefix("needmem_kb=") {
            g.needmem_kb = c.parse().map_err(|e| format!("needmem_kb={c}: {e}"))?;
        } else if w == "mode=names" {
            g.names_only = true;
        }
    }
    let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    let int = |s: &str| s.parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
    for l in lines {
        // A name, byte for byte: `N <side> <program> <line>`.
        if let Some(rest) = l.strip_prefix("N ") {
            let mut it = rest.splitn(3, ' ');
            let (side, prog, line) = match (it.next(), it.next(), it.next()) {
                (Some(s), Some(p), Some(line)) => (s, p, line),
                _ => return Err(format!("unexpected bench line {l:?}")),
            };
            let runs = match side {
                "c" => &mut g.c_runs,
                "ours" => &mut g.our_runs,
                _ => return Err(format!("unexpected bench line {l:?}")),
            };
            runs.entry(prog.to_string())
                .or_default()
                .push(line.to_string());
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["D", prog, secs, rc] => {
                let rc = rc.parse::<i32>().map_err(|e| format!("{rc:?}: {e}"))?;
                g.dropins.insert(prog.to_string(), (num(secs)?, rc));
            }
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
    if g.c.is_empty() || (g.ours_total.is_empty() && !g.names_only) {
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

    /// Per drop-in: C's names and ours ([`names::of_output`] of the lines
    /// that came back).
    fn name_lists(&self) -> Vec<(&'static str, Vec<String>, Vec<String>)> {
        let of = |m: &BTreeMap<String, Vec<String>>, p: &str| {
            names::of_output(&m.get(p).map(|v| v.join("\n")).unwrap_or_default())
        };
        dropins::DROPINS
            .iter()
            .map(|p| (*p, of(&self.c_runs, p), of(&self.our_runs, p)))
            .collect()
    }

    /// Per drop-in, its names against C's: `<program> names: N equal to
    /// C's`, or each difference ([`names::report`]).
    pub fn names(&self) -> Vec<String> {
        self.name_lists()
            .into_iter()
            .flat_map(|(p, c, ours)| {
                if c.is_empty() {
                    return vec![format!("{p} names: C {p} printed none")];
                }
                names::report(p, &c, &ours)
            })
            .collect()
    }

    /// Whether every drop-in printed C's names (and C printed some).
    pub fn names_equal(&self) -> bool {
        self.name_lists()
            .iter()
            .all(|(_, c, ours)| !c.is_empty() && c == ours)
    }

    /// The C programs' seconds, all together.
    fn c_total(&self) -> f64 {
        self.c.values().map(|(t, _, _)| t).sum()
    }
}

/// The report: per upstream program C vs cowgup (each `--jobs`), cowgup's
/// families without a C counterpart, the totals; then the names of each
/// program against C's ([`GuestFigures::names`]); last line the ratio of
/// the same work (cowgup's families that do a C program's work, `--jobs` =
/// the guest's CPUs) to C's total, after the whole catalogue's ratio. With
/// only the names part run: C's and the drop-ins' times, and the names.
pub fn render(g: &GuestFigures, label: &str) -> String {
    let mut s = String::new();
    let jobs: Vec<usize> = g.ours_total.keys().rev().copied().collect();
    s.push_str(&format!(
        "guest: {label} ({}), qemu TCG, {} vCPUs, default hugetlb page {} KiB, \
         run_vmtests.sh's needmem {} KiB; guest seconds\n",
        g.release, g.cpus, g.hpgsize_kb, g.needmem_kb
    ));
    if g.names_only {
        for p in dropins::DROPINS {
            let (secs, _, failed) = g.c.get(p).copied().unwrap_or((0.0, 0, 0));
            let (ours, rc) = g.dropins.get(p).copied().unwrap_or((0.0, -1));
            s.push_str(&format!(
                "{p:<16} C {secs:.2} s{}; drop-in {ours:.2} s (exit {rc})\n",
                if failed > 0 { " (failed)" } else { "" }
            ));
        }
        for l in g.names() {
            s.push_str(&l);
            s.push('\n');
        }
        return s;
    }
    s.push_str(&format!("{:<40} {:>16}", "work", "C (upstream)"));
    for j in &jobs {
        s.push_str(&format!(" {:>22}", format!("cowgup --jobs {j}")));
    }
    s.push('\n');
    program_rows(&mut s, g, &jobs);
    family_rows(&mut s, g, &jobs);
    total_rows(&mut s, g, &jobs);
    profile_lines(&mut s, g);
    for (p, (secs, rc)) in &g.dropins {
        s.push_str(&format!("drop-in {p}: {secs:.2} s (exit {rc})\n"));
    }
    for l in g.names() {
        s.push_str(&l);
        s.push('\n');
    }
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

/// Whether `p` is a static executable for `arch`.
fn static_for(p: &Path, arch: Arch) -> bool {
    std::fs::read(p).is_ok_and(|b| {
        initramfs::is_static_elf(&b) && b.get(18..20) == Some(&arch.elf_machine().to_le_bytes()[..])
    })
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
fn build_c(src: &Path, arch: Arch) -> Result<PathBuf, String> {
    let mm = src.join("tools/testing/selftests/mm");
    if !mm.join("run_vmtests.sh").is_file() {
        return Err(format!(
            "{}: not a kernel source tree (no tools/testing/selftests/mm/run_vmtests.sh)",
            src.display()
        ));
    }
    let out = c_cache(src, arch);
    if PROGRAMS.iter().all(|p| static_for(&out.join(p), arch)) {
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
        if !static_for(&out.join(p), arch) {
            return Err(format!(
                "{}: built, but not a static {arch} executable",
                out.join(p).display()
            ));
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
    pub mode: Mode,
}

pub fn run(b: &GuestBench) -> ExitCode {
    // A bad path fails here, before the C programs or a static cowgup are built.
    if let Err(e) = spec::check_image("--guest", b.kernel) {
        return crate::fatal(&e);
    }
    match run_inner(b) {
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
