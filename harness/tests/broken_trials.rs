//! A deliberately broken trial costs exactly one result and the run goes on.
//! Runs without libtest's thread pool (harness = false) because the runner
//! forks, which is only sound from a single-threaded process.

use std::time::{Duration, Instant};

use cowgup_harness::{diag, run_trial, Outcome, OutcomeKind, RunOptions, Trial};

fn main() {
    let trials = vec![
        Trial::new("passes", || Outcome::Pass),
        Trial::new("segfaults", || {
            diag("about to dereference null");
            // SAFETY: deliberately not safe; the point is the crash.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            Outcome::Pass
        }),
        Trial::new("panics", || panic!("broken fixture")),
        Trial::new("aborts", || std::process::abort()),
        Trial::new("exits without a verdict", || std::process::exit(3)),
        Trial::new("hangs", || loop {
            std::thread::sleep(Duration::from_secs(1));
        }),
        Trial::new("hangs in a grandchild holding the pipe", || {
            // SAFETY: single-threaded trial process.
            if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                std::thread::sleep(Duration::from_secs(600));
            }
            Outcome::Pass
        }),
        Trial::new("skips", || Outcome::Skip("nothing to do".into())),
        Trial::new("statically skipped", || unreachable!()).skipped_because("decided at plan time"),
        Trial::new("passes afterwards", || Outcome::Pass),
    ];
    let opts = RunOptions {
        timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let reports: Vec<_> = trials
        .iter()
        .map(|t| run_trial(t, None, &opts).expect("not interrupted"))
        .collect();
    let expect = [
        ("passes", OutcomeKind::Pass, ""),
        ("segfaults", OutcomeKind::Fail, "signal 11 (SIGSEGV)"),
        (
            "panics",
            OutcomeKind::Fail,
            "trial panicked: broken fixture",
        ),
        ("aborts", OutcomeKind::Fail, "SIGABRT"),
        ("exits without a verdict", OutcomeKind::Fail, "status 3"),
        ("hangs", OutcomeKind::Error, "timed out after 1 s"),
        (
            "hangs in a grandchild holding the pipe",
            OutcomeKind::Pass,
            "",
        ),
        ("skips", OutcomeKind::Skip, "nothing to do"),
        (
            "statically skipped",
            OutcomeKind::Skip,
            "decided at plan time",
        ),
        ("passes afterwards", OutcomeKind::Pass, ""),
    ];
    assert_eq!(reports.len(), expect.len(), "one result per trial");
    let mut failed = 0;
    for (r, (name, kind, needle)) in reports.iter().zip(expect) {
        let ok = r.name == name && r.outcome.kind() == kind && r.outcome.reason().contains(needle);
        println!(
            "{} {name}: {} {:?}",
            if ok { "ok    " } else { "WRONG " },
            r.outcome,
            r.diagnostics
        );
        failed += usize::from(!ok);
    }
    assert!(
        reports[1]
            .diagnostics
            .iter()
            .any(|d| d == "about to dereference null"),
        "diagnostics printed before a crash survive it"
    );
    // The grandchild's pipe end must not make the runner wait for it.
    assert!(
        reports[6].duration < Duration::from_millis(900),
        "{:?}",
        reports[6].duration
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    if failed > 0 {
        panic!("{failed} broken trial(s) were not contained");
    }
    println!("{} passed, 0 failed", reports.len());
}
