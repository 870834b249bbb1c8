//! The host comes back as it was, whatever happens to a run: SIGTERM in the
//! middle, SIGKILL followed by `cowgup restore`. And a run without root, and
//! bad input, change nothing and crash nothing. Runs one test at a time
//! (harness = false, cowgup_harness::libtest): the `host::` tests own the
//! host's global mm settings.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cowgup_fixtures::needs::snapshot_diff;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");

/// The host's mm settings plus what is left in the state directory.
fn host_state(state_dir: &Path) -> BTreeMap<String, String> {
    cowgup_fixtures::needs::host_settings(&[state_dir])
}

/// Wait up to 5 s for the host to be as it was `before`: hugetlb pages of
/// processes that are still exiting are freed a moment later.
fn settles_to(before: &BTreeMap<String, String>, state: &Path, when: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let diff = snapshot_diff(before, &host_state(state));
        if diff.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("host differs {when}:\n  {}", diff.join("\n  ")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(format!(
        "/var/tmp/cowgup-host-safety-{tag}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

fn cowgup(state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(COWGUP);
    c.args(args)
        .env("COWGUP_STATE_DIR", state)
        .stdin(Stdio::null());
    c
}

/// Wait until the run has journaled a change that needs restoring.
fn wait_for_provisioning(state: &Path, child: &mut std::process::Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let journal = fs::read_to_string(state.join("journal")).unwrap_or_default();
        // Any journaled change will do (hosts without hugetlb still get swap).
        if journal.lines().count() >= 2 {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sigterm_mid_run_restores_the_host() -> Result<(), String> {
    let state = state_dir("term");
    let before = host_state(&state);
    let mut child = cowgup(&state, &["run"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    if !wait_for_provisioning(&state, &mut child) {
        return Err("the run never journaled a change".into());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGTERM) && status.success() {
        return Err(format!("run was not interrupted: {status:?}"));
    }
    let settled = settles_to(&before, &state, "after SIGTERM");
    let _ = fs::remove_dir_all(&state);
    settled
}

fn sigkill_then_restore_command_restores_the_host() -> Result<(), String> {
    let state = state_dir("kill");
    let before = host_state(&state);
    let mut child = cowgup(&state, &["run", "hugetlb", "swapped"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    if !wait_for_provisioning(&state, &mut child) {
        return Err("the run never journaled a change".into());
    }
    child.kill().map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string())?;
    let killed = host_state(&state);
    if killed == before {
        return Err("SIGKILL left nothing to restore; the test proves nothing".into());
    }
    let out = cowgup(&state, &["restore"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let settled = settles_to(&before, &state, "after restore");
    let again = cowgup(&state, &["restore"])
        .output()
        .map_err(|e| e.to_string())?;
    let _ = fs::remove_dir_all(&state);
    if !String::from_utf8_lossy(&again.stdout).contains("nothing to restore") {
        return Err("a second restore found a journal again".into());
    }
    settled
}

fn run_as(uid: u32, args: &[&str]) -> Result<Output, String> {
    use std::os::unix::process::CommandExt;
    Command::new(COWGUP)
        .args(args)
        .uid(uid)
        .gid(uid)
        .env("TMPDIR", "/tmp")
        .current_dir("/tmp")
        .output()
        .map_err(|e| format!("cannot run {COWGUP} as uid {uid}: {e}"))
}

fn non_root_runs_and_every_privileged_case_skips_with_a_reason() -> Result<(), String> {
    let state = state_dir("nonroot");
    let before = host_state(&state);
    let out = run_as(65534, &["run", "--verbose", "Basic COW"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    settles_to(&before, &state, "after a non-root run")?;
    if !out.status.success() {
        return Err(format!(
            "non-root run failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for needle in [
        "not root",
        "PASS  Basic COW after fork() ... with base page",
        "PFNs hidden",
    ] {
        if !text.contains(needle) {
            return Err(format!("non-root output lacks {needle:?}:\n{text}"));
        }
    }
    // Result lines carry " -- reason"; the summary groups them as "SKIP  xN  reason".
    if text
        .lines()
        .any(|l| l.starts_with("SKIP ") && !l.starts_with("SKIP  x") && !l.contains(" -- "))
    {
        return Err(format!("a skip without a reason:\n{text}"));
    }
    Ok(())
}

fn bad_input_gets_a_short_error_and_changes_nothing() -> Result<(), String> {
    let state = state_dir("bad");
    let before = host_state(&state);
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "no trial is called this"],
        &["run", "--timeout", "0"],
        &["bench", "--repeat", "many"],
        &["frobnicate"],
    ] {
        let out = cowgup(&state, args).output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2)
            || err.contains("panicked")
            || err.lines().next().is_none_or(|l| l.len() > 200)
        {
            return Err(format!(
                "{args:?}: status {:?}, stderr:\n{err}",
                out.status.code()
            ));
        }
    }
    let settled = settles_to(&before, &state, "after bad input");
    let _ = fs::remove_dir_all(&state);
    settled
}

use cowgup_harness::libtest::{self, check, check_unless};

/// Why a test that needs root cannot run here, if it cannot.
fn not_root(why: &'static str) -> impl FnOnce() -> Option<String> {
    move || (!is_root()).then(|| format!("needs root ({why})"))
}

fn main() {
    let restores = "it changes and restores global mm settings";
    libtest::main(vec![
        check(
            "bad input gets a short error and changes nothing",
            bad_input_gets_a_short_error_and_changes_nothing,
        ),
        check_unless(
            libtest::host("SIGTERM mid-run restores the host"),
            not_root(restores),
            sigterm_mid_run_restores_the_host,
        ),
        check_unless(
            libtest::host("SIGKILL, then `cowgup restore`, restores the host"),
            not_root(restores),
            sigkill_then_restore_command_restores_the_host,
        ),
        check_unless(
            "non-root runs and every privileged case skips with a reason",
            not_root("it runs cowgup as another user"),
            non_root_runs_and_every_privileged_case_skips_with_a_reason,
        ),
    ])
}
