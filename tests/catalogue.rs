//! `cargo test` runs the whole catalogue here, through libtest-mimic with
//! cargo test's filters (cowgup_harness::libtest: several FILTERs, `--exact`,
//! `--skip`, `--list`), and `cargo nextest run` works too. Trials that change
//! host settings as root (hugetlb pools, swap, THP and KSM knobs, mounts) are
//! named `host::<name>`; the others keep upstream's names. Every trial still
//! runs in its own process. The selected trials run first, through the
//! session, up to `COWGUP_JOBS` (default: the CPU count) side by side where
//! their families allow it (see tests/jobs.rs for the proof that results do
//! not change); libtest then reports each stored result (it runs its
//! closures on the main thread, one at a time, because the runner forks).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cowgup_harness::libtest::{self, Args, Completion, Failed, Trial};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::Outcome;
use cowgup_harness::TrialReport;
use cowgup_tests::catalogue;
use cowgup_tests::session::{Options, Progress, Session};

/// The scenario's name as `cargo test` shows it.
fn test_name(s: &cowgup_tests::Scenario) -> String {
    if s.changes_host() {
        libtest::host(&s.name)
    } else {
        s.name.clone()
    }
}

fn main() {
    let args = Args::from_env();
    let caps = Capabilities::probe();
    let scenarios = catalogue(&caps);
    // No catalogue trial is marked ignored.
    let selected: Vec<_> = scenarios
        .iter()
        .filter(|s| args.selects(&test_name(s), false))
        .collect();
    let session = if args.list || selected.is_empty() {
        None
    } else {
        // Under nextest every test is its own process and several run at
        // once: they take turns holding the host.
        let opts = Options {
            lock_wait: std::time::Duration::from_secs(600),
            jobs: std::env::var("COWGUP_JOBS")
                .ok()
                .and_then(|j| j.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            ..Options::default()
        };
        match Session::start_with(&opts, caps, &selected) {
            Ok(s) => Some(Arc::new(Mutex::new(s))),
            Err(e) => {
                eprintln!("cowgup: {e}");
                std::process::exit(1);
            }
        }
    };
    let mut results: HashMap<String, TrialReport> = HashMap::new();
    if let Some(s) = &session {
        let mut s = s.lock().unwrap();
        for line in &s.log {
            println!("cowgup: {line}");
        }
        println!(
            "cowgup: running {} trial(s), up to {} side by side; results follow",
            selected.len(),
            s.jobs
        );
        let ran = s.run_all(&selected, |p| {
            if let Progress::Finished(_, r) = p {
                results.insert(r.name.clone(), r);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        if let Err((stop, _)) = ran {
            s.abort(stop)
        }
    }
    let results = Arc::new(Mutex::new(results));
    let trials = scenarios
        .iter()
        .map(|scenario| {
            let results = results.clone();
            let name = scenario.name.clone();
            Trial::ignorable_test(test_name(scenario), move || {
                let report = results
                    .lock()
                    .unwrap()
                    .remove(&name)
                    .expect("every selected trial ran before libtest reports it");
                let detail = || report.diagnostics.join("\n");
                match &report.outcome {
                    Outcome::Pass => Ok(Completion::Completed),
                    Outcome::Xfail(_) => Ok(Completion::Completed),
                    Outcome::Skip(reason) => Ok(Completion::ignored_with(reason)),
                    other => Err(Failed::from(format!("{other}\n{}", detail()))),
                }
            })
        })
        .collect();
    let conclusion = args.run(trials);
    if let Some(s) = session {
        let mut s = s.lock().unwrap();
        for line in s.kernel_log_between_trials() {
            eprintln!("cowgup: kernel log outside trials: {line}");
        }
        if let Some(r) = s.finish() {
            for p in &r.problems {
                eprintln!("cowgup: could not restore: {p}");
            }
            if !r.is_clean() {
                std::process::exit(1);
            }
        }
    }
    conclusion.exit()
}
