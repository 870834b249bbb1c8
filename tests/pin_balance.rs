//! The pin-balance check catches a trial whose pins outlive it: here an
//! io_uring fixed buffer whose ring is held by a process that escapes the
//! trial's process group and outlives it.

use std::sync::Arc;
use std::time::Duration;

use cowgup_fixtures::mem::{self, RW};
use cowgup_fixtures::pin::FixedBuffer;
use cowgup_fixtures::stamp::{Pattern, Writer};
use cowgup_harness::{CheckStatus, Outcome};
use cowgup_tests::session::{Options, Session};
use cowgup_tests::{Family, Scenario};
use nix::sys::mman::MapFlags;

fn scenario(name: &str, leak: bool, pid_file: std::path::PathBuf) -> Scenario {
    Scenario {
        name: name.into(),
        family: Family::CowAnon,
        group: "test".into(),
        needs: vec![],
        knobs: vec![],
        pins: true,
        body: Arc::new(move || {
            let region = mem::map_anon(64 << 10, RW, MapFlags::MAP_PRIVATE).expect("mmap");
            Pattern::with_unit(4096).fill(region, Writer::Setup);
            let ring = match FixedBuffer::register(region) {
                Ok(r) => r,
                Err(o) => return o,
            };
            if leak {
                // SAFETY: the trial process is single-threaded.
                if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                    // Out of the trial's process group: the runner cannot reap us.
                    let _ = nix::unistd::setsid();
                    let _ = std::fs::write(&pid_file, std::process::id().to_string());
                    std::thread::sleep(Duration::from_secs(30));
                    drop(ring);
                    // SAFETY: leave without unwinding into the runner's code.
                    unsafe { libc::_exit(0) };
                }
                while !pid_file.exists() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Only close our ring fd; the holder keeps the registration.
                std::mem::forget(ring);
                return Outcome::Pass;
            }
            drop(ring);
            Outcome::Pass
        }),
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("holder.pid");
    let clean = scenario("releases its pins", false, pid_file.clone());
    let leaky = scenario(
        "leaves its pins to a process that outlives it",
        true,
        pid_file.clone(),
    );
    let opts = Options {
        provision: false,
        ..Options::default()
    };
    let mut session = Session::start(&opts, &[&clean, &leaky]).expect("session");
    let first = session.run(&clean).expect("not interrupted");
    let second = session.run(&leaky).expect("not interrupted");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.trim().parse().expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    println!("{}: {} {:?}", first.name, first.outcome, first.diagnostics);
    println!(
        "{}: {} {:?}",
        second.name, second.outcome, second.diagnostics
    );
    println!("{:?}\n{:?}", first.checks, second.checks);
    let pin_check = |r: &cowgup_harness::TrialReport| {
        r.checks
            .iter()
            .find(|c| c.check == "pin balance")
            .map(|c| (c.status, c.detail.clone()))
    };
    let mut failed = 0;
    if first.outcome != Outcome::Pass {
        println!("FAILED a trial that releases its pins must pass");
        failed += 1;
    }
    match pin_check(&first) {
        Some((CheckStatus::Held, d)) if d == "16 pins taken and released" => {}
        other => {
            println!("FAILED its check must hold and count 16 pins, got {other:?}");
            failed += 1;
        }
    }
    match &second.outcome {
        Outcome::Fail(r) if r.starts_with("pin balance: 16 pins acquired but 0 released") => {}
        other => {
            println!("FAILED the leaking trial must fail the pin-balance check, got {other}");
            failed += 1;
        }
    }
    if !matches!(pin_check(&second), Some((CheckStatus::Violated, _))) {
        println!("FAILED the leaking trial's check must be violated");
        failed += 1;
    }
    if !second
        .diagnostics
        .iter()
        .any(|d| d == "outcome before the checks: pass")
    {
        println!("FAILED the trial's own outcome must stay in its diagnostics");
        failed += 1;
    }
    println!("{} passed, {failed} failed", 5 - failed);
    std::process::exit(i32::from(failed > 0));
}
