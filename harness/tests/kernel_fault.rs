//! The live kernel-fault watch: an Oops logged while a trial runs fails that
//! trial at once (not at its time limit), stops its processes, and no trial
//! runs after it; a WARNING fails its trial but the run goes on. The kernel
//! log here is a pipe the trial writes /dev/kmsg-shaped records into, read
//! through the real `KernelLog` and the real runner (see kernel_log.rs and the
//! matrix's faulty-kernel cell for the real /dev/kmsg).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cowgup_harness::kmsg::{Read1, Source};
use cowgup_harness::libtest::{self, Failed, Trial as Test};
use cowgup_harness::{
    run_batch, run_trial, KernelLog, Outcome, RunOptions, Trial, TrialReport, Watch,
};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{pipe, read, write};

/// /dev/kmsg as a pipe: one record per write.
struct PipeLog {
    r: OwnedFd,
}

impl Source for PipeLog {
    fn read1(&mut self) -> Read1 {
        let mut buf = [0u8; 4096];
        match read(&self.r, &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EAGAIN) => Read1::End,
            Ok(n) => Read1::Record(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => Read1::Failed(e.to_string()),
        }
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.r.as_raw_fd())
    }
}

/// A kernel log whose records the trials write to `writer`.
fn fake_log() -> (KernelLog, Arc<OwnedFd>) {
    let (r, w) = pipe().unwrap();
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let r = Mutex::new(Some(r));
    let log = KernelLog::new().with_sources(
        move || {
            Ok(Box::new(PipeLog {
                r: r.lock().unwrap().take().expect("opened once"),
            }) as Box<dyn Source>)
        },
        || Some(0),
    );
    (log, Arc::new(w))
}

/// A trial that logs `line` as the kernel would and then hangs.
fn logs_then_hangs(name: &str, w: &Arc<OwnedFd>, seq: u64, line: &str) -> Trial {
    let w = w.clone();
    let record = format!("0,{seq},1000,-;{line}\n");
    Trial::new(name, move || {
        write(&*w, record.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        Outcome::Pass
    })
}

fn hangs(name: &str) -> Trial {
    Trial::new(name, || {
        std::thread::sleep(Duration::from_secs(60));
        Outcome::Pass
    })
}

const OOPS: &str = "Oops: general protection fault, probably for non-canonical address \
                    0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI";

fn opts() -> RunOptions {
    RunOptions {
        timeout: Duration::from_secs(60),
    }
}

fn expect(r: &TrialReport, kind: &str, words: &str) -> Result<(), Failed> {
    let o = &r.outcome;
    if o.kind().as_str() != kind || !o.reason().contains(words) {
        return Err(format!("{}: expected {kind} saying {words:?}, got {o}", r.name).into());
    }
    Ok(())
}

fn one_trial() -> Result<(), Failed> {
    let (mut log, w) = fake_log();
    let t0 = Instant::now();
    let first = run_trial(
        &logs_then_hangs("oopses", &w, 1, OOPS),
        None,
        &opts(),
        &mut [&mut log as &mut dyn Watch],
    )
    .unwrap();
    let took = t0.elapsed();
    expect(&first, "fail", "the kernel faulted while this trial ran")?;
    expect(&first, "fail", "0xdead000000000100")?;
    if took > Duration::from_secs(5) {
        return Err(format!("the faulting trial took {took:?} to fail").into());
    }
    let second = run_trial(&hangs("next"), None, &opts(), &mut [&mut log]).unwrap();
    expect(
        &second,
        "error",
        "not run: the kernel faulted in an earlier trial",
    )?;
    if t0.elapsed() > Duration::from_secs(5) {
        return Err("the trial after the fault was run".into());
    }
    Ok(())
}

fn a_batch() -> Result<(), Failed> {
    let (mut log, w) = fake_log();
    let t0 = Instant::now();
    let trials = [
        logs_then_hangs("oopses", &w, 1, OOPS),
        hangs("beside it"),
        hangs("never started"),
    ];
    let refs: Vec<&Trial> = trials.iter().collect();
    let reports = run_batch(&refs, None, &opts(), &mut [&mut log as &mut dyn Watch], 2).unwrap();
    let took = t0.elapsed();
    expect(
        &reports[0],
        "fail",
        "the kernel faulted while this trial ran",
    )?;
    expect(
        &reports[1],
        "fail",
        "the kernel faulted while this trial ran",
    )?;
    expect(
        &reports[2],
        "error",
        "not run: the kernel faulted in a trial run beside it",
    )?;
    if took > Duration::from_secs(5) {
        return Err(format!("the batch took {took:?} to end").into());
    }
    Ok(())
}

fn a_warning_fails_its_trial_and_the_run_goes_on() -> Result<(), Failed> {
    let (mut log, w) = fake_log();
    let warns = {
        let w = w.clone();
        Trial::new("warns", move || {
            let r = "4,1,1000,-;WARNING: CPU: 1 PID: 42 at mm/memory.c:1 do_wp_page+0x1/0x2\n";
            write(&*w, r.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            Outcome::Pass
        })
    };
    let first = run_trial(&warns, None, &opts(), &mut [&mut log as &mut dyn Watch]).unwrap();
    expect(&first, "fail", "WARNING: CPU: 1")?;
    let second = run_trial(
        &Trial::new("next", || Outcome::Pass),
        None,
        &opts(),
        &mut [&mut log],
    )
    .unwrap();
    expect(&second, "pass", "")
}

fn an_oops_between_trials_stops_the_next() -> Result<(), Failed> {
    let (mut log, w) = fake_log();
    let pass = || Trial::new("passes", || Outcome::Pass);
    let first = run_trial(&pass(), None, &opts(), &mut [&mut log as &mut dyn Watch]).unwrap();
    expect(&first, "pass", "")?;
    write(&*w, format!("0,1,1000,-;{OOPS}\n").as_bytes()).unwrap();
    let second = run_trial(&pass(), None, &opts(), &mut [&mut log]).unwrap();
    expect(&second, "error", "not run: the kernel faulted")
}

fn main() {
    let tests = [
        (
            "an_oops_fails_its_trial_at_once_and_no_trial_runs_after_it",
            one_trial as fn() -> Result<(), Failed>,
        ),
        (
            "an_oops_in_a_batch_fails_the_running_trials_and_starts_no_other",
            a_batch,
        ),
        (
            "a_warning_fails_its_trial_and_the_run_goes_on",
            a_warning_fails_its_trial_and_the_run_goes_on,
        ),
        (
            "an_oops_between_trials_stops_the_next",
            an_oops_between_trials_stops_the_next,
        ),
    ];
    libtest::main(tests.into_iter().map(|(n, f)| Test::test(n, f)).collect())
}
