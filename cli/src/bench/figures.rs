//! What a bench guest sends back (its framed lines parsed into
//! [`GuestFigures`]: C programs' and cowgup's times, the names compared) and
//! the report rendered from them, the ratio last.

use std::collections::BTreeMap;

use super::c_programs::PROGRAMS;
use super::guest::{FRAME, FRAME_END};
use super::{dropins, names};

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

#[cfg(test)]
mod tests {
    use super::*;
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
}
