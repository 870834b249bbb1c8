//! A deliberately broken trial costs exactly one result and the run goes on;
//! no process but the trial's own can report its outcome; processes a trial
//! leaves behind are named and stopped; checks around a trial take part in
//! its verdict. Runs one test at a time on the main thread (harness = false,
//! cowgup_harness::libtest) because the runner forks, which is only sound
//! from a single-threaded process.

use std::time::{Duration, Instant};

use cowgup_harness::libtest::{self, check, Trial as Test};
use cowgup_harness::runner::send_record;
use cowgup_harness::{
    diag, run_trial, signals, CheckResult, CheckStatus, Outcome, OutcomeKind, Record, RunOptions,
    Stop, Trial, TrialReport, Watch,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};

fn segfault() {
    // SAFETY: deliberately not safe; the point is the crash.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
}

/// Fork; the child returns `outcome` from the trial body, so it falls through
/// into the trial's end and sends an outcome record of its own. The trial
/// process waits for it, so that record is sent first.
fn grandchild_returns(outcome: Outcome) -> Option<Outcome> {
    // SAFETY: single-threaded trial process.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => Some(outcome),
        ForkResult::Parent { child } => {
            let _ = waitpid(child, None);
            None
        }
    }
}

/// A process left behind: forks a child that sleeps (optionally deaf to
/// SIGTERM) and returns pass without waiting for it.
fn leave_a_sleeper(ignore_term: bool) -> Outcome {
    // SAFETY: single-threaded trial process.
    if let ForkResult::Child = unsafe { fork() }.expect("fork") {
        if ignore_term {
            // SAFETY: ignoring a signal.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        }
        diag("sleeping");
        std::thread::sleep(Duration::from_secs(600));
        // SAFETY: never reached in practice; do not unwind into the runner.
        unsafe { libc::_exit(0) };
    }
    std::thread::sleep(Duration::from_millis(20));
    Outcome::Pass
}

/// Every socket this process holds beyond stdio is close-on-exec.
fn sockets_are_cloexec() -> Outcome {
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("fd dir")
        .flatten()
    {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if fd > 2 && target.to_string_lossy().starts_with("socket:") {
            // SAFETY: F_GETFD on an fd number just listed.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                return Outcome::Fail(format!("fd {fd} ({target:?}) survives exec"));
            }
        }
    }
    Outcome::Pass
}

struct FakeCheck {
    status: CheckStatus,
    calls: Vec<&'static str>,
}

impl Watch for FakeCheck {
    fn before(&mut self) {
        self.calls.push("before");
    }
    fn after(&mut self) -> CheckResult {
        self.calls.push("after");
        CheckResult {
            check: "fake".into(),
            status: self.status,
            detail: "3 widgets unaccounted for".into(),
            data: serde_json::Value::Null,
        }
    }
}

type Expect = fn(&TrialReport) -> Result<(), String>;

fn kind_and_reason(r: &TrialReport, kind: OutcomeKind, needle: &str) -> Result<(), String> {
    if r.outcome.kind() == kind && r.outcome.reason().contains(needle) {
        Ok(())
    } else {
        Err(format!("want {} containing {needle:?}", kind.as_str()))
    }
}

fn has_diag(r: &TrialReport, needle: &str) -> Result<(), String> {
    if r.diagnostics.iter().any(|d| d.contains(needle)) {
        Ok(())
    } else {
        Err(format!("no diagnostic contains {needle:?}"))
    }
}

fn leftover_pids(r: &TrialReport, field: &str) -> Vec<i32> {
    r.checks
        .iter()
        .find(|c| c.check == "leftover processes")
        .and_then(|c| c.data[field].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["pid"].as_i64().map(|p| p as i32))
        .collect()
}

/// Gone, or a zombie waiting for init: either way no longer running.
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn left_and_killed(r: &TrialReport, must_need_sigkill: bool) -> Result<(), String> {
    let left = leftover_pids(r, "left");
    if left.len() != 1 {
        return Err(format!("want one leftover in checks, got {:?}", r.checks));
    }
    let check = r.checks.iter().find(|c| c.check == "leftover processes");
    if !check.is_some_and(|c| {
        c.status == CheckStatus::Violated && c.detail.contains(&left[0].to_string())
    }) {
        return Err(format!("the leftover check must name pid {}", left[0]));
    }
    if must_need_sigkill != (leftover_pids(r, "killed") == left) {
        return Err(format!("SIGKILL needed: want {must_need_sigkill}"));
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !gone(left[0]) {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(left[0]), Signal::SIGKILL);
            return Err(format!("pid {} still running", left[0]));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    has_diag(r, "[pid ")?;
    has_diag(r, "LEAK: ")
}

/// An expectation's result, with what the trial ended as when it was not met.
fn judged(r: &TrialReport, result: Result<(), String>) -> Result<(), String> {
    result.map_err(|e| {
        format!(
            "{e}\n       got {} {:?} {:?}",
            r.outcome, r.diagnostics, r.checks
        )
    })
}

/// Trials that end badly on their own: each costs exactly its own result.
fn ending_badly() -> Vec<(Trial, Expect)> {
    vec![
        (Trial::new("passes", || Outcome::Pass), |r| {
            kind_and_reason(r, OutcomeKind::Pass, "")?;
            r.checks
                .is_empty()
                .then_some(())
                .ok_or("a tidy trial has no leftover check".into())
        }),
        (
            Trial::new("segfaults", || {
                diag("about to dereference null");
                segfault();
                Outcome::Pass
            }),
            |r| {
                kind_and_reason(r, OutcomeKind::Fail, "signal 11 (SIGSEGV)")?;
                // Diagnostics printed before a crash survive it.
                has_diag(r, "about to dereference null")
            },
        ),
        (Trial::new("panics", || panic!("broken fixture")), |r| {
            kind_and_reason(r, OutcomeKind::Fail, "trial panicked: broken fixture")
        }),
        (Trial::new("aborts", || std::process::abort()), |r| {
            kind_and_reason(r, OutcomeKind::Fail, "SIGABRT")
        }),
        (
            Trial::new("exits without a verdict", || std::process::exit(3)),
            |r| kind_and_reason(r, OutcomeKind::Fail, "status 3"),
        ),
        (
            Trial::new("hangs", || loop {
                std::thread::sleep(Duration::from_secs(1));
            }),
            |r| kind_and_reason(r, OutcomeKind::Error, "timed out after 1 s"),
        ),
    ]
}

/// Outcome records that must not decide the trial: a grandchild's, or the
/// trial process's own when it crashes afterwards.
fn outcomes_that_do_not_count() -> Vec<(Trial, Expect)> {
    vec![
        (
            Trial::new(
                "a grandchild reports pass, then the trial process crashes",
                || {
                    if let Some(o) = grandchild_returns(Outcome::Pass) {
                        return o;
                    }
                    segfault();
                    Outcome::Fail("not reached".into())
                },
            ),
            |r| {
                kind_and_reason(r, OutcomeKind::Fail, "killed by signal 11 (SIGSEGV)")?;
                has_diag(r, "(not the trial process ")
            },
        ),
        (
            Trial::new(
                "a grandchild reports pass, then the trial process aborts",
                || {
                    if let Some(o) = grandchild_returns(Outcome::Pass) {
                        return o;
                    }
                    std::process::abort()
                },
            ),
            |r| kind_and_reason(r, OutcomeKind::Fail, "SIGABRT"),
        ),
        (
            Trial::new("a grandchild reports pass, the trial reports fail", || {
                grandchild_returns(Outcome::Pass)
                    .unwrap_or(Outcome::Fail("the child saw the parent's write".into()))
            }),
            |r| {
                kind_and_reason(r, OutcomeKind::Fail, "the child saw the parent's write")?;
                has_diag(r, "ignored: pass")
            },
        ),
        (
            Trial::new("reports pass, then crashes", || {
                send_record(&Record::Outcome {
                    kind: OutcomeKind::Pass,
                    reason: String::new(),
                });
                segfault();
                Outcome::Pass
            }),
            |r| {
                if r.outcome
                    == Outcome::Error(
                        "trial process killed by signal 11 (SIGSEGV) after reporting pass".into(),
                    )
                {
                    Ok(())
                } else {
                    Err("want the report-then-crash error".into())
                }
            },
        ),
    ]
}

/// What a trial leaves or sends that the runner must bound: processes left
/// behind, records too large, a report channel that would survive exec.
fn what_a_trial_leaves() -> Vec<(Trial, Expect)> {
    vec![
        (
            Trial::new("leaves a sleeping process behind", || {
                leave_a_sleeper(false)
            }),
            |r| {
                kind_and_reason(r, OutcomeKind::Fail, "leftover processes: 1 process(es)")?;
                has_diag(r, "outcome before the checks: pass")?;
                left_and_killed(r, false)
            },
        ),
        (
            Trial::new("leaves a process that ignores SIGTERM", || {
                leave_a_sleeper(true)
            }),
            |r| {
                kind_and_reason(r, OutcomeKind::Fail, "then SIGKILL")?;
                left_and_killed(r, true)
            },
        ),
        (
            Trial::new("writes a long diagnostic and large evidence", || {
                diag("x".repeat(10_000));
                cowgup_harness::evidence("big", "y".repeat(100_000));
                Outcome::Pass
            }),
            |r| {
                kind_and_reason(r, OutcomeKind::Pass, "")?;
                if !r.diagnostics.iter().any(|d| d.len() == 10_000) {
                    return Err("a 10 kB diagnostic arrives whole".into());
                }
                has_diag(r, "evidence \"big\" dropped")
            },
        ),
        (
            Trial::new("has no socket that survives exec", sockets_are_cloexec),
            |r| kind_and_reason(r, OutcomeKind::Pass, ""),
        ),
    ]
}

/// Skips, and a pass after all of the above: the run went on.
fn skips_and_the_run_goes_on() -> Vec<(Trial, Expect)> {
    vec![
        (
            Trial::new("skips", || Outcome::Skip("nothing to do".into())),
            |r| kind_and_reason(r, OutcomeKind::Skip, "nothing to do"),
        ),
        (
            Trial::new("statically skipped", || unreachable!())
                .skipped_because("decided at plan time"),
            |r| kind_and_reason(r, OutcomeKind::Skip, "decided at plan time"),
        ),
        (Trial::new("passes afterwards", || Outcome::Pass), |r| {
            kind_and_reason(r, OutcomeKind::Pass, "")
        }),
    ]
}

/// A test that runs `trial` and holds its report to `expect`.
fn expected(trial: Trial, expect: Expect, opts: RunOptions) -> Test {
    check(trial.name.clone(), move || {
        let r = run_trial(&trial, None, &opts, &mut []).expect("not interrupted");
        let mut result = expect(&r);
        if r.name != trial.name {
            result = Err("one result per trial, in order".into());
        }
        judged(&r, result)
    })
}

/// Checks around a trial: before the fork, after it, and in the verdict.
fn checks_around_a_trial(opts: RunOptions) -> Vec<Test> {
    let mut tests = Vec::new();
    for (status, want) in [
        (
            CheckStatus::Violated,
            Outcome::Fail("fake: 3 widgets unaccounted for".into()),
        ),
        (CheckStatus::NotChecked, Outcome::Pass),
        (CheckStatus::Unreliable, Outcome::Pass),
        (CheckStatus::Held, Outcome::Pass),
    ] {
        tests.push(check(
            format!("a {status:?} check gives {want}"),
            move || {
                let mut watch = FakeCheck {
                    status,
                    calls: vec![],
                };
                let trial = Trial::new("passes under a check", || Outcome::Pass);
                let r = run_trial(&trial, None, &opts, &mut [&mut watch]).expect("not interrupted");
                let ok = r.outcome == want
                    && watch.calls == ["before", "after"]
                    && r.checks.len() == 1
                    && r.checks[0].status == status;
                judged(
                    &r,
                    ok.then_some(())
                        .ok_or_else(|| format!("calls {:?}", watch.calls)),
                )
            },
        ));
    }
    tests.push(check(
        "a trial that is not forked is not watched",
        move || {
            let mut watch = FakeCheck {
                status: CheckStatus::Violated,
                calls: vec![],
            };
            let skipped = Trial::new("skipped", || unreachable!()).skipped_because("plan");
            let r = run_trial(&skipped, None, &opts, &mut [&mut watch]).expect("not interrupted");
            judged(
                &r,
                (watch.calls.is_empty() && r.checks.is_empty())
                    .then_some(())
                    .ok_or("watched".into()),
            )
        },
    ));
    tests
}

/// The grandchild's socket must not make the runner wait for it: the
/// leftover is found and stopped in well under the 1 s time limit.
fn a_leftover_costs_little(opts: RunOptions) -> Test {
    check(
        "a leftover holding the socket costs well under the time limit",
        move || {
            let leak_time = Instant::now();
            let r = run_trial(
                &Trial::new("leak timing", || leave_a_sleeper(false)),
                None,
                &opts,
                &mut [],
            )
            .expect("not interrupted");
            let took = leak_time.elapsed();
            judged(
                &r,
                (took < Duration::from_millis(600))
                    .then_some(())
                    .ok_or(format!("took {took:?}")),
            )
        },
    )
}

/// Termination signals: a flag, no SA_RESTART, and the run stops. (Last of
/// the tests that run trials: the flag stays raised.)
fn sighup_stops_the_run(opts: RunOptions) -> Test {
    check(
        "SIGHUP becomes a flag that stops the run (handlers without SA_RESTART)",
        move || {
            signals::install();
            let restarting = signals::TERMINATING
                .iter()
                .filter(|s| signals::restarts(**s))
                .count();
            let _ = nix::sys::signal::raise(Signal::SIGHUP);
            let stopped = run_trial(
                &Trial::new("after SIGHUP", || Outcome::Pass),
                None,
                &opts,
                &mut [],
            );
            (restarting == 0
                && signals::pending() == Some(Signal::SIGHUP)
                && matches!(stopped, Err(Stop::Interrupted(Signal::SIGHUP))))
            .then_some(())
            .ok_or(format!("{restarting} handler(s) restart; {stopped:?}"))
        },
    )
}

fn main() {
    let opts = RunOptions {
        timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let mut tests: Vec<Test> = [
        ending_badly(),
        outcomes_that_do_not_count(),
        what_a_trial_leaves(),
        skips_and_the_run_goes_on(),
    ]
    .into_iter()
    .flatten()
    .map(|(trial, expect)| expected(trial, expect, opts))
    .collect();
    tests.extend(checks_around_a_trial(opts));
    tests.push(a_leftover_costs_little(opts));
    tests.push(sighup_stops_the_run(opts));
    tests.push(check("all of it in under 10 s", move || {
        let total = started.elapsed();
        (total < Duration::from_secs(10))
            .then_some(())
            .ok_or(format!("{total:?}"))
    }));
    libtest::main(tests)
}
