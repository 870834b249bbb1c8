//! The kernel-log check against this host's real /dev/kmsg: a trial during
//! which a warning-shaped line is logged fails, naming the line; a trial
//! during which nothing of the kind is logged passes; a line logged between
//! trials fails none and is kept for the end of the run.
//!
//! The lines are written to /dev/kmsg by this test (root only), so they are
//! user-facility records that say they were injected; no real kernel warning
//! is triggered. The host lock is held meanwhile, so that no other cowgup
//! run's trial is judged while these lines are in the log: the tests are
//! named `host::...`. Runs one test at a time on the main thread
//! (harness = false, cowgup_harness::libtest): the runner forks.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cowgup_harness::kmsg::CHECK;
use cowgup_harness::libtest::{self, Args, Completion, Failed};
use cowgup_harness::{
    run_trial, CheckResult, CheckStatus, HostGuard, KernelLog, Outcome, OutcomeKind, RunOptions,
    Trial, TrialReport, Watch,
};

const WARNING: &str =
    "cowgup-test: WARNING: CPU: 0 PID: 1 at harness/tests/kernel_log.rs (injected by the \
     kernel-log test; not a kernel warning)";

type Check = fn(&mut KernelLog) -> Result<(), String>;

fn write_kmsg(line: &str) -> std::io::Result<()> {
    // A fresh descriptor each time: /dev/kmsg rate-limits writes per open file.
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")?
        .write_all(format!("{line}\n").as_bytes())
}

fn logs(line: &'static str) -> Trial {
    Trial::new(format!("logs {line:?}"), move || match write_kmsg(line) {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Error(format!("cannot write /dev/kmsg: {e}")),
    })
}

fn kernel_log_check(r: &TrialReport) -> Result<&CheckResult, String> {
    r.checks
        .iter()
        .find(|c| c.check == CHECK)
        .ok_or_else(|| format!("no kernel-log check in {:?}", r.checks))
}

fn run(trial: &Trial, w: &mut KernelLog) -> TrialReport {
    run_trial(trial, None, &RunOptions::default(), &mut [w]).expect("not interrupted")
}

fn warning_fails_the_trial(w: &mut KernelLog) -> Result<(), String> {
    let r = run(&logs(WARNING), w);
    let c = kernel_log_check(&r)?;
    if c.status != CheckStatus::Violated {
        return Err(format!("check not violated: {c:?}"));
    }
    match &r.outcome {
        Outcome::Fail(reason)
            if reason.starts_with("kernel log: the kernel logged 1 error line")
                && reason.contains(", from userspace] cowgup-test: WARNING: CPU: 0 PID: 1 at") =>
        {
            Ok(())
        }
        other => Err(format!("outcome {other}")),
    }?;
    let f = &c.data["findings"][0];
    (f["facility"] == 1 && f["pattern"] == "WARNING: CPU: ")
        .then_some(())
        .ok_or(format!("finding data {f}"))
}

fn quiet_trials_pass(w: &mut KernelLog) -> Result<(), String> {
    for t in [
        Trial::new("logs nothing", || Outcome::Pass),
        logs("cowgup-test: an ordinary line, not an error"),
    ] {
        let r = run(&t, w);
        let c = kernel_log_check(&r)?;
        if r.outcome.kind() != OutcomeKind::Pass || c.status != CheckStatus::Held {
            return Err(format!("{}: {} / {c:?}", t.name, r.outcome));
        }
    }
    Ok(())
}

fn between_trials_fails_none(w: &mut KernelLog) -> Result<(), String> {
    // A trial first, so that the line falls between two trials even when
    // this test runs alone (`--exact`, nextest).
    for (name, line) in [
        ("before a line between trials", None),
        ("after a line between trials", Some(WARNING)),
    ] {
        if let Some(line) = line {
            write_kmsg(line).map_err(|e| e.to_string())?;
        }
        let r = run(&Trial::new(name, || Outcome::Pass), w);
        if r.outcome != Outcome::Pass {
            return Err(format!("{name}: outcome {}", r.outcome));
        }
    }
    let between = w.between_trials();
    (between.len() == 1 && between[0].contains(WARNING))
        .then_some(())
        .ok_or(format!("between trials: {between:?}"))
}

/// What the watch costs a trial on this host (no trial, just the watch).
fn cost(w: &mut KernelLog) -> Result<(), String> {
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        w.before();
        let c = w.after();
        if c.status != CheckStatus::Held {
            return Err(format!("{c:?}"));
        }
    }
    println!(
        "# kernel-log watch: {:.1} us per trial (before + after, quiet log)",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    Ok(())
}

/// Why these tests cannot run here, if they cannot.
fn unable() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("writing to /dev/kmsg needs root");
    }
    if std::fs::read_to_string("/proc/sys/kernel/printk_devkmsg").is_ok_and(|s| s.trim() == "off") {
        return Some("kernel.printk_devkmsg = off (no writes to /dev/kmsg)");
    }
    None
}

/// The host lock and the watch, taken by the first test that runs.
type Held = Arc<Mutex<Option<(HostGuard, KernelLog)>>>;

fn main() {
    let checks: [(&str, Check); 4] = [
        (
            "a warning logged during a trial fails it, naming the line",
            warning_fails_the_trial,
        ),
        (
            "trials that log nothing or ordinary lines pass",
            quiet_trials_pass,
        ),
        (
            "a line logged between trials fails none and is kept",
            between_trials_fails_none,
        ),
        ("per-trial cost", cost),
    ];
    let held: Held = Arc::default();
    let tests = checks
        .into_iter()
        .map(|(name, check)| {
            let held = held.clone();
            libtest::Trial::ignorable_test(libtest::host(name), move || {
                if let Some(why) = unable() {
                    return Ok(Completion::ignored_with(why));
                }
                let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                let (_, w) = held.get_or_insert_with(|| {
                    let dir = std::env::var_os("COWGUP_STATE_DIR")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("/var/tmp/cowgup"));
                    let (guard, _) =
                        HostGuard::acquire(&dir, Duration::from_secs(900)).expect("host lock");
                    (guard, KernelLog::new())
                });
                check(w)
                    .map(|()| Completion::Completed)
                    .map_err(Failed::from)
            })
        })
        .collect();
    let conclusion = Args::from_env().run(tests);
    if let Some((mut guard, _)) = held.lock().unwrap_or_else(|e| e.into_inner()).take() {
        guard.restore();
    }
    conclusion.exit()
}
