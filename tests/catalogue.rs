//! `cargo test` runs the whole catalogue here, through libtest-mimic: the
//! usual filters (`cargo test -- vmsplice`, `--exact`, `--skip`, `--list`)
//! work, and so does `cargo nextest run`. Every trial still runs in its own
//! process; libtest runs them one at a time on the main thread because they
//! share global host settings and because the runner forks.

use std::sync::{Arc, Mutex};

use cowgup_harness::probe::Capabilities;
use cowgup_harness::Outcome;
use cowgup_tests::session::{Options, Session};
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
    if let Some(s) = &session {
        for line in &s.lock().unwrap().log {
            println!("cowgup: {line}");
        }
    }
    let trials = scenarios
        .iter()
        .map(|scenario| {
            let session = session.clone();
            let scenario = scenario.clone();
            Trial::ignorable_test(scenario.name.clone(), move || {
                let session = session.expect("trials only run when not listing");
                let mut s = session.lock().unwrap();
                let report = match s.run(&scenario) {
                    Ok(r) => r,
                    Err(stop) => s.abort(stop),
                };
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
