//! `cargo test` runs the whole catalogue here, through libtest-mimic: the
//! usual filters (`cargo test -- vmsplice`, `--exact`, `--skip`, `--list`)
//! work, and so does `cargo nextest run`. Every trial still runs in its own
//! process. The selected trials run first, through the session, up to
//! `COWGUP_JOBS` (default: the CPU count) side by side where their families
//! allow it (see tests/jobs.rs for the proof that results do not change);
//! libtest then reports each stored result (it runs its closures on the main
//! thread, one at a time, because the runner forks).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cowgup_harness::probe::Capabilities;
use cowgup_harness::Outcome;
use cowgup_harness::TrialReport;
use cowgup_tests::session::{Options, Progress, Session};
use cowgup_tests::{catalogue, Selection};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let caps = Capabilities::probe();
    let scenarios = catalogue(&caps);
    let selection = Selection {
        filters: args.filter.iter().cloned().collect(),
        exact: args.exact,
        skip: args.skip.clone(),
    };
    let selected: Vec<_> = scenarios
        .iter()
        .filter(|s| selection.selects(&s.name))
        .collect();
    let session = if args.list {
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
            Trial::ignorable_test(scenario.name.clone(), move || {
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
    let conclusion = libtest_mimic::run(&args, trials);
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
