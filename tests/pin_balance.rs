//! The pin-balance check catches trials whose pins outlive them, and a
//! kernel that keeps every trial's pins costs about what a passing one does.
//! The leak is real (fixtures/src/leak.rs): with `COWGUP_LEAK_PINS` set, an
//! io_uring fixed buffer's ring goes to a process outside the trial's
//! process group that keeps it open until the test lets it go.
//! Nothing here is timed; `cowgup bench --simulate-leak` prints the figures.
//! One test, run by cowgup_harness::libtest (it changes no host setting: the
//! session does not provision).

use std::sync::Arc;

use cowgup_fixtures::leak::{Anchor, VAR};
use cowgup_fixtures::mem::{self, RW};
use cowgup_fixtures::pin::FixedBuffer;
use cowgup_fixtures::stamp::Writer;
use cowgup_harness::libtest::{self, Completion, Failed};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{CheckResult, CheckStatus, Outcome, TrialReport};
use cowgup_tests::session::{Options, Progress, Session};
use cowgup_tests::{catalogue, Family, Scenario};
use nix::sys::mman::MapFlags;

fn scenario(name: &str) -> Scenario {
    Scenario {
        name: name.into(),
        family: Family::COW_ANON,
        group: "test".into(),
        needs: vec![],
        knobs: vec![],
        pins: true,
        body: Arc::new(move |opts| {
            let region = mem::map_anon(64 << 10, RW, MapFlags::MAP_PRIVATE).expect("mmap");
            opts.pattern(4096).fill(region, Writer::Setup);
            drop(FixedBuffer::register(region)?);
            Ok(Outcome::Pass)
        }),
    }
}

fn pin_check(r: &TrialReport) -> Option<&CheckResult> {
    r.checks.iter().find(|c| c.check == "pin balance")
}

/// How many expectations held, and what each one that did not says.
struct Verdicts(usize, Vec<String>);

impl Verdicts {
    fn expect(&mut self, ok: bool, what: &str) {
        if ok {
            self.0 += 1;
        } else {
            println!("FAILED {what}");
            self.1.push(what.to_string());
        }
    }
}

fn main() {
    libtest::main(vec![libtest::Trial::ignorable_test(
        "pin_balance: trials whose pins outlive them fail the pin-balance check",
        || {
            let caps = Capabilities::probe();
            if !caps.is_root() {
                // Without vm/stat_refresh the per-CPU counters hide small imbalances.
                return Ok(Completion::ignored_with(
                    "needs root (exact counts need /proc/sys/vm/stat_refresh)",
                ));
            }
            let v = kept_pins_fail(caps);
            println!("{} passed, {} failed", v.0, v.1.len());
            if v.1.is_empty() {
                Ok(Completion::Completed)
            } else {
                Err(Failed::from(v.1.join("\n")))
            }
        },
    )])
}

fn kept_pins_fail(caps: Capabilities) -> Verdicts {
    let trial = scenario("takes 16 pins and drops its fixed buffer");
    // The catalogue's io_uring trials on base pages that need no host
    // setting: each takes pins through a FixedBuffer.
    let all = catalogue(&caps);
    let pinning: Vec<&Scenario> = all
        .iter()
        .filter(|s| {
            (s.name.contains("iouring fixed buffer") || s.name.contains("io_uring fixed buffer"))
                && s.name.ends_with("with base page")
                && s.needs.iter().all(|n| !n.provisionable())
                && s.knobs.is_empty()
        })
        .collect();
    let opts = Options {
        provision: false,
        ..Options::default()
    };
    let mut selected = vec![&trial];
    selected.extend(&pinning);
    let mut session = Session::start(&opts, &selected).expect("session");
    let mut v = Verdicts(0, Vec::new());

    let clean = session.run(&trial).expect("not interrupted");
    println!("{}: {} {:?}", clean.name, clean.outcome, clean.checks);
    v.expect(
        clean.outcome == Outcome::Pass,
        "a trial that releases its pins must pass",
    );
    v.expect(
        pin_check(&clean).is_some_and(|c| {
            c.status == CheckStatus::Held && c.detail == "16 pins taken and released"
        }),
        "its check must hold and count 16 pins",
    );

    let anchor = Anchor::new().expect("pipe");
    std::env::set_var(VAR, anchor.env_value());
    let leaky = session.run(&trial).expect("not interrupted");
    println!("{}: {} {:?}", leaky.name, leaky.outcome, leaky.checks);
    v.expect(
        matches!(&leaky.outcome, Outcome::Fail(r)
            if r.starts_with("pin balance: 16 pins acquired but 0 released")),
        "a trial whose pins are kept must fail the pin-balance check",
    );
    v.expect(
        pin_check(&leaky).is_some_and(|c| c.status == CheckStatus::Violated),
        "its check must be violated",
    );
    v.expect(
        leaky
            .diagnostics
            .iter()
            .any(|d| d == "outcome before the checks: pass"),
        "the trial's own outcome must stay in its diagnostics",
    );

    // Every later trial that keeps pins fails too, named, each judged after
    // the short wait (the first imbalance outlasted the full one), and side
    // by side nothing is run twice.
    session.jobs = 2;
    let mut later = Vec::new();
    let ran = session.run_all(&pinning, |p| {
        if let Progress::Finished(_, r) = p {
            later.push(r);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    std::env::remove_var(VAR);
    let released = anchor.release(std::time::Duration::from_secs(30));
    if let Err((stop, _)) = ran {
        session.abort(stop)
    }
    let executed: Vec<&TrialReport> = later
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Skip(_)))
        .collect();
    println!(
        "{} catalogue trials with pins kept, {} executed",
        later.len(),
        executed.len()
    );
    v.expect(
        executed.len() >= 4,
        "at least four io_uring trials on base pages must run here",
    );
    for r in &executed {
        let check = pin_check(r);
        v.expect(
            matches!(r.outcome, Outcome::Fail(_))
                && check.is_some_and(|c| {
                    c.status == CheckStatus::Violated
                        && c.data["short_wait"] == true
                        && c.detail
                            .contains("earlier imbalance outlasted the full wait")
                }),
            &format!(
                "{}: must fail its pin balance after the short wait: {check:?}",
                r.name
            ),
        );
        v.expect(
            !r.diagnostics
                .iter()
                .any(|d| d.starts_with("run again alone")),
            &format!("{}: must not be run twice", r.name),
        );
    }
    v.expect(
        released,
        "the kept pins must be released once the test lets them go",
    );
    v
}
