//! `cowgup bench`: wall time per family and in total (per backing group: the
//! sum of its trials' durations, which overlap with `--jobs`), over repeated
//! runs of the same selection, optionally next to upstream's C `cow` run on
//! the same provisioned host. Figures are printed, never asserted.
//!
//! `bench()` runs the session: [`measure`] times the rounds, [`result`]
//! reduces them to medians and minima, [`render`] writes the table;
//! `--guest` is `guest`'s, `--simulate-leak` [`simulate_leak`]'s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use cowgup_harness::OutcomeKind;
use cowgup_tests::session::{Progress, Session};
use cowgup_tests::Scenario;

use crate::{fatal, select, SelectArgs, SessionArgs};

pub mod c_programs;
pub mod dropins;
pub mod figures;
pub mod guest;
pub mod names;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    session: SessionArgs,
    /// How many times to run the selection.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// Also time this upstream `cow` binary (run with no arguments, same host state).
    #[arg(long, value_name = "PATH")]
    against: Option<PathBuf>,
    /// Boot this kernel (an image, x86_64 or arm64, told by its header; or any `matrix --kernel` spec: `debian:6.12/arm64`, `build:6.12`, `tree:PATH`) once under qemu (TCG,
    /// 2 vCPUs) and time upstream's C programs (built from --c-from) and then the
    /// whole catalogue (--jobs 2, then 1) in it; the drop-ins `cow` and
    /// `gup_longterm` run there too and their test names are compared with C's.
    #[arg(long, value_name = "KERNEL", requires = "c_from")]
    guest: Option<crate::guest::spec::KernelSpec>,
    /// The kernel source tree the C programs (cow, gup_longterm, gup_test) are built from
    /// for the guest's architecture (statically, into the cache, after `make headers`
    /// there; liburing-dev of that architecture installed, a cross gcc for arm64).
    #[arg(long, value_name = "LINUX_SRC", requires = "guest")]
    c_from: Option<PathBuf>,
    /// The static cowgup to put in the guest [default: as `matrix` finds it].
    #[arg(long, value_name = "FILE", requires = "guest")]
    guest_bin: Option<PathBuf>,
    /// In the guest, only the names part: C `cow` and `gup_longterm`, then our
    /// drop-ins, and their `# [RUN]` names compared (no gup_test runs, no catalogue).
    #[arg(long, requires = "guest")]
    names_only: bool,
    /// Time limit of the guest (boot, both sides), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5400, value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout_guest: u64,
    /// Also print `BENCH family <id> <seconds> <executed>` and `BENCH total <seconds>` lines
    /// (what `--guest` reads back from the guest).
    #[arg(long, hide = true)]
    lines: bool,
    /// Time the selection as it is, then with every io_uring fixed buffer's
    /// pins kept after its trial (handed to a process outside the trial until
    /// the run ends: a kernel that leaks pins), and print both and the ratio.
    #[arg(long, conflicts_with_all = ["guest", "against"])]
    simulate_leak: bool,
}

/// What the pin-balance check of a trial says it waited for releases to
/// land; trials of one batch share one measurement, so with `--jobs` this
/// counts it once per member.
fn pin_balance_wait(r: &cowgup_harness::TrialReport) -> Duration {
    r.checks
        .iter()
        .filter(|c| c.check == "pin balance")
        .map(|c| {
            Duration::from_millis(
                c.data
                    .get("waited_ms")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
            )
        })
        .sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn bench(args: &BenchArgs) -> ExitCode {
    if let (Some(spec), Some(src)) = (&args.guest, &args.c_from) {
        if let crate::guest::spec::KernelSpec::Image(p) = spec {
            if let Err(e) = crate::guest::spec::check_image("--guest", p) {
                return fatal(&e);
            }
        }
        let kernel = match spec.image() {
            Ok(k) => k,
            Err(e) => return fatal(&e),
        };
        return guest::run(&guest::GuestBench {
            kernel: &kernel,
            src,
            guest_bin: args.guest_bin.as_deref(),
            skip: &args.select.skip,
            timeout: Duration::from_secs(args.timeout_guest),
            mode: if args.names_only {
                guest::Mode::NamesOnly
            } else {
                guest::Mode::Full
            },
        });
    }
    let (caps, chosen) = match select(&args.select) {
        Ok(x) => x,
        Err(e) => return fatal(&e),
    };
    let refs: Vec<&Scenario> = chosen.iter().collect();
    if args.simulate_leak {
        return simulate_leak(args, caps, &refs);
    }
    let started = Instant::now();
    let mut session = match Session::start_with(&args.session.options(), caps, &refs) {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };
    for line in &session.log {
        println!("cowgup: {line}");
    }
    let m = measure(&mut session, &chosen, args.repeat, started);
    let r = result(&m, chosen.len());
    print!("{}", render(&r, args.lines, args.repeat, session.jobs));
    if let Some(path) = &args.against {
        let mut runs = Vec::new();
        for _ in 0..args.repeat {
            let t0 = Instant::now();
            let status = Command::new(path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match status {
                Ok(_) => runs.push(t0.elapsed()),
                Err(e) => {
                    session.finish();
                    return fatal(&format!("cannot run {}: {e}", path.display()));
                }
            }
        }
        let theirs = median(runs);
        let compared = if r.cow_only.is_zero() {
            r.total
        } else {
            r.cow_only
        };
        println!(
            "{:<28} {:>8} {:>9.1} ms                ratio cowgup cow families / C = {:.3}",
            format!("total ({})", path.display()),
            "-",
            theirs.as_secs_f64() * 1e3,
            compared.as_secs_f64() / theirs.as_secs_f64()
        );
    }
    if let Some(r) = session.finish() {
        for p in r.problems {
            eprintln!("cowgup: could not restore: {p}");
        }
    }
    ExitCode::SUCCESS
}

/// What `repeat` rounds of the selection took, as measured.
struct Measured {
    /// Backing group -> its trials' summed durations, one per round.
    per_group: BTreeMap<String, Vec<Duration>>,
    /// Backing group -> trials executed (first round).
    executed: BTreeMap<String, usize>,
    /// Wall time of each round.
    totals: Vec<Duration>,
    /// Family -> its wall time, one per round (the pin-balance check included:
    /// what a user waits for).
    per_family: BTreeMap<&'static str, Vec<Duration>>,
    /// Family -> trials executed (first round).
    family_executed: BTreeMap<&'static str, usize>,
    /// Profile of the first round: probe + provisioning, the trials' own
    /// time (spawn, scenario, checks), and the pin-balance waits they report.
    start_time: Duration,
    trial_time: Duration,
    pin_wait: Duration,
    /// Wall time of a trial that does nothing.
    floor: Duration,
}

/// Run the selection `repeat` times in `session` (started at `started`),
/// after timing the harness floor.
fn measure(session: &mut Session, chosen: &[Scenario], repeat: u32, started: Instant) -> Measured {
    let refs: Vec<&Scenario> = chosen.iter().collect();
    let mut per_group: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut executed: BTreeMap<String, usize> = BTreeMap::new();
    let mut totals = Vec::new();
    let start_time = started.elapsed();
    let floor = harness_floor(session);
    let (mut trial_time, mut pin_wait) = (Duration::ZERO, Duration::ZERO);
    let mut per_family: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut family_executed: BTreeMap<&'static str, usize> = BTreeMap::new();
    for round in 0..repeat {
        let mut sums: BTreeMap<String, Duration> = BTreeMap::new();
        let mut fam: BTreeMap<&'static str, Duration> = BTreeMap::new();
        let t0 = Instant::now();
        // The whole selection in one go, as `cowgup run` does (trials of
        // neighbouring families may share a batch). A family's wall time is
        // from the previous family's last result to its own last one:
        // results come in catalogue order, which keeps each family together.
        let mut last = t0;
        let ran = session.run_all(&refs, |p| {
            if let Progress::Finished(i, r) = p {
                let now = Instant::now();
                *fam.entry(chosen[i].family.id()).or_default() += now - last;
                last = now;
                let group = &chosen[i].group;
                *sums.entry(group.clone()).or_default() += r.duration;
                if round == 0 {
                    trial_time += r.duration;
                    pin_wait += pin_balance_wait(&r);
                }
                if round == 0 && r.outcome.kind() != OutcomeKind::Skip {
                    *executed.entry(group.clone()).or_default() += 1;
                    *family_executed.entry(chosen[i].family.id()).or_default() += 1;
                }
            }
            Ok::<(), std::convert::Infallible>(())
        });
        if let Err((stop, _)) = ran {
            session.abort(stop)
        }
        totals.push(t0.elapsed());
        for (g, d) in sums {
            per_group.entry(g).or_default().push(d);
        }
        for (f, d) in fam {
            per_family.entry(f).or_default().push(d);
        }
    }
    Measured {
        per_group,
        executed,
        totals,
        per_family,
        family_executed,
        start_time,
        trial_time,
        pin_wait,
        floor,
    }
}

/// The figures of a bench: medians and minima of what was measured.
struct BenchResult {
    /// Backing group, trials executed, median, min.
    groups: Vec<(String, usize, Duration, Duration)>,
    /// Family, median, trials executed.
    families: Vec<(&'static str, Duration, usize)>,
    /// Median and min of the rounds' wall time.
    total: Duration,
    total_min: Duration,
    /// Trials executed, and selected.
    executed: usize,
    selected: usize,
    /// Upstream's `cow` runs the cow families only: the sum of their medians,
    /// to compare like with like.
    cow_only: Duration,
    start_time: Duration,
    trial_time: Duration,
    pin_wait: Duration,
    floor: Duration,
}

fn result(m: &Measured, selected: usize) -> BenchResult {
    let groups = m
        .per_group
        .iter()
        .map(|(g, v)| {
            let min = *v.iter().min().expect("at least one round");
            (
                g.clone(),
                m.executed.get(g).copied().unwrap_or(0),
                median(v.clone()),
                min,
            )
        })
        .collect();
    let families = m
        .per_family
        .iter()
        .map(|(f, v)| {
            (
                *f,
                median(v.clone()),
                m.family_executed.get(f).copied().unwrap_or(0),
            )
        })
        .collect();
    let cow_only: Duration = m
        .per_family
        .iter()
        .filter(|(f, _)| f.starts_with("cow_"))
        .map(|(_, v)| median(v.clone()))
        .sum();
    BenchResult {
        groups,
        families,
        total: median(m.totals.clone()),
        total_min: *m.totals.iter().min().expect("at least one round"),
        executed: m.executed.values().sum(),
        selected,
        cow_only,
        start_time: m.start_time,
        trial_time: m.trial_time,
        pin_wait: m.pin_wait,
        floor: m.floor,
    }
}

/// The table (per backing group, per family), with `lines` the `BENCH`
/// lines `--guest` reads back, the profile and the total; `jobs` is the
/// session's.
fn render(r: &BenchResult, lines: bool, repeat: u32, jobs: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>8} {:>12} {:>12}",
        "backing group", "executed", "median", "min"
    );
    for (g, executed, median, min) in &r.groups {
        let _ = writeln!(
            s,
            "{g:<28} {executed:>8} {:>9.1} ms {:>9.1} ms",
            median.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3
        );
    }
    for (f, median, _) in &r.families {
        let _ = writeln!(
            s,
            "{:<28} {:>8} {:>9.1} ms",
            format!("family {f}"),
            "",
            median.as_secs_f64() * 1e3
        );
    }
    if lines {
        for (f, median, executed) in &r.families {
            let _ = writeln!(s, "BENCH family {f} {:.3} {executed}", median.as_secs_f64());
        }
        let _ = writeln!(s, "BENCH total {:.3} {}", r.total.as_secs_f64(), r.selected);
        let _ = writeln!(
            s,
            "BENCH phase start {:.3} trials {:.3} pin_wait {:.3}",
            r.start_time.as_secs_f64(),
            r.trial_time.as_secs_f64(),
            r.pin_wait.as_secs_f64()
        );
        let _ = writeln!(s, "BENCH floor {:.4}", r.floor.as_secs_f64() * 1e3);
    }
    let ran = r.executed;
    let _ = writeln!(
        s,
        "profile: probe+provisioning {:.2} s; a trial that does nothing takes {:.2} ms of wall \
         time here (fork, report, reap, checks; {FLOOR_TRIALS} at --jobs {jobs}): {:.2} s of the {ran} \
         executed trials, the scenarios the rest; pin-balance waits {:.2} s (per batch member)",
        r.start_time.as_secs_f64(),
        r.floor.as_secs_f64() * 1e3,
        r.floor.as_secs_f64() * ran as f64,
        r.pin_wait.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "{:<28} {:>8} {:>9.1} ms {:>9.1} ms   ({repeat} runs, {} trials each)",
        "total (cowgup)",
        ran,
        r.total.as_secs_f64() * 1e3,
        r.total_min.as_secs_f64() * 1e3,
        r.selected
    );
    s
}

/// One timed run of `refs` in a session of its own (a fresh pin-balance
/// watch): wall time of the trials, how many executed, and how many failed
/// their pin balance.
fn timed(
    args: &BenchArgs,
    caps: &cowgup_harness::probe::Capabilities,
    refs: &[&Scenario],
    simulate_leak: bool,
) -> Result<(Duration, usize, usize), String> {
    let opts = cowgup_tests::session::Options {
        simulate_leak,
        ..args.session.options()
    };
    let mut session = Session::start_with(&opts, caps.clone(), refs)?;
    let (mut executed, mut kept) = (0, 0);
    let t0 = Instant::now();
    let ran = session.run_all(refs, |p| {
        if let Progress::Finished(_, r) = p {
            executed += usize::from(r.outcome.kind() != OutcomeKind::Skip);
            kept += usize::from(r.checks.iter().any(|c| {
                c.check == "pin balance" && c.status == cowgup_harness::CheckStatus::Violated
            }));
        }
        Ok::<(), std::convert::Infallible>(())
    });
    let took = t0.elapsed();
    if let Err((stop, _)) = ran {
        session.abort(stop)
    }
    // Releases the kept pins, then restores the host.
    if let Some(r) = session.finish() {
        for p in r.problems {
            eprintln!("cowgup: could not restore: {p}");
        }
    }
    Ok((took, executed, kept))
}

/// `--simulate-leak`: the same trials passing and keeping their pins.
fn simulate_leak(
    args: &BenchArgs,
    caps: cowgup_harness::probe::Capabilities,
    refs: &[&Scenario],
) -> ExitCode {
    let (mut passing, mut leaking) = (Vec::new(), Vec::new());
    let mut counts = (0, 0, 0);
    for _ in 0..args.repeat {
        match timed(args, &caps, refs, false) {
            Ok((d, _, _)) => passing.push(d),
            Err(e) => return fatal(&e),
        }
        match timed(args, &caps, refs, true) {
            Ok((d, executed, kept)) => {
                leaking.push(d);
                counts = (executed, kept, refs.len());
            }
            Err(e) => return fatal(&e),
        }
    }
    let (executed, kept, selected) = counts;
    let (p, l) = (median(passing), median(leaking));
    println!(
        "passing                      {selected} trials, {executed} executed: {:>9.1} ms (median of {})",
        p.as_secs_f64() * 1e3,
        args.repeat
    );
    println!(
        "pins kept (simulated leak)   {kept} failed their pin balance:  {:>9.1} ms",
        l.as_secs_f64() * 1e3
    );
    println!("leak ratio: {:.2} x", l.as_secs_f64() / p.as_secs_f64());
    ExitCode::SUCCESS
}

/// No-op trials timed for the harness floor.
const FLOOR_TRIALS: usize = 64;

/// Wall time per trial of trials that do nothing, batched as cow trials
/// are: what the harness itself costs a trial (fork, the report socket,
/// reaping, leftovers, pin balance and kernel log per batch).
fn harness_floor(session: &mut Session) -> Duration {
    let noop: Vec<Scenario> = (0..FLOOR_TRIALS)
        .map(|i| Scenario {
            name: format!("bench: a trial that does nothing #{i}"),
            family: cowgup_tests::Family::COW_ANON,
            group: "no-op".into(),
            needs: vec![],
            knobs: vec![],
            pins: false,
            body: std::sync::Arc::new(|_| Ok(cowgup_harness::Outcome::Pass)),
        })
        .collect();
    let refs: Vec<&Scenario> = noop.iter().collect();
    let t0 = Instant::now();
    if let Err((stop, _)) = session.run_all(&refs, |_| Ok::<(), std::convert::Infallible>(())) {
        session.abort(stop)
    }
    t0.elapsed() / FLOOR_TRIALS as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_medians_and_render_as_the_table_then_lines_profile_total() {
        let ms = Duration::from_millis;
        let m = Measured {
            per_group: [("anon".to_string(), vec![ms(30), ms(10), ms(20)])].into(),
            executed: [("anon".to_string(), 4)].into(),
            totals: vec![ms(300), ms(100), ms(200)],
            per_family: [
                ("cow_anon", vec![ms(9), ms(7), ms(8)]),
                ("gup_test", vec![ms(5); 3]),
            ]
            .into(),
            family_executed: [("cow_anon", 3), ("gup_test", 1)].into(),
            start_time: ms(1500),
            trial_time: ms(40),
            pin_wait: ms(2),
            floor: Duration::from_micros(12_500),
        };
        let r = result(&m, 6);
        assert_eq!(r.cow_only, ms(8));
        assert_eq!((r.total, r.total_min, r.executed), (ms(200), ms(100), 4));
        let text = render(&r, true, 3, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "backing group                executed       median          min",
                "anon                                4      20.0 ms      10.0 ms",
                "family cow_anon                             8.0 ms",
                "family gup_test                             5.0 ms",
                "BENCH family cow_anon 0.008 3",
                "BENCH family gup_test 0.005 1",
                "BENCH total 0.200 6",
                "BENCH phase start 1.500 trials 0.040 pin_wait 0.002",
                "BENCH floor 12.5000",
                "profile: probe+provisioning 1.50 s; a trial that does nothing takes 12.50 ms of wall \
                 time here (fork, report, reap, checks; 64 at --jobs 2): 0.05 s of the 4 executed \
                 trials, the scenarios the rest; pin-balance waits 0.00 s (per batch member)",
                "total (cowgup)                      4     200.0 ms     100.0 ms   (3 runs, 6 trials each)",
            ]
        );
        assert!(!render(&r, false, 3, 2).contains("BENCH"));
    }
}
