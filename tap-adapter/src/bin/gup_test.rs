//! Drop-in for tools/testing/selftests/mm/gup_test: the same options, the
//! same ioctls on /sys/kernel/debug/gup_test, kselftest TAP out. Without the
//! debugfs file (no CONFIG_GUP_TEST, or debugfs not mounted) the whole
//! program skips with the reason and exit code 4.

use std::process::ExitCode;

use cowgup_fixtures::gup_bench::GupRun;
use cowgup_harness::probe::{DEBUGFS, GUP_TEST};
use cowgup_harness::OutcomeKind;
use cowgup_tap::write::{Dialect, TapWriter};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut w = TapWriter::new(std::io::stdout(), Dialect::Kselftest);
    let _ = w.header(std::env::var_os("KSFT_TAP_LEVEL").is_some());
    let code = run(&args, &mut w).unwrap_or(cowgup_tap::KSFT_FAIL);
    ExitCode::from(code as u8)
}

fn run(args: &[String], w: &mut TapWriter<std::io::Stdout>) -> std::io::Result<i32> {
    let (gup_run, threads) = match GupRun::from_args(args) {
        Ok(x) => x,
        Err(e) => {
            w.bail_out(&format!("gup_test: {e}"))?;
            w.finish()?;
            return Ok(cowgup_tap::KSFT_FAIL);
        }
    };
    let gup = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(GUP_TEST)
    {
        Ok(f) => f,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root()
            {
                w.diag("Please run this test as root")?;
            } else if !cowgup_harness::guard::is_mountpoint(std::path::Path::new(DEBUGFS)) {
                w.diag("mount debugfs at /sys/kernel/debug")?;
            }
            w.diag("check if CONFIG_GUP_TEST is enabled in kernel config")?;
            w.skip_all(&format!("gup_test not available: {GUP_TEST}: {e}"))?;
            return Ok(cowgup_tap::KSFT_SKIP);
        }
    };
    w.plan(threads)?;
    match gup_run.run(&gup, threads) {
        Ok(results) => {
            for r in results {
                for l in &r.lines {
                    w.diag(l)?;
                }
                let kind = if r.status == 0 {
                    OutcomeKind::Pass
                } else {
                    OutcomeKind::Fail
                };
                w.result(kind, &format!("ioctl status {}", r.status), "")?;
            }
            w.finish()?;
            Ok(w.exit_code())
        }
        Err(e) => {
            w.bail_out(&e)?;
            w.finish()?;
            Ok(cowgup_tap::KSFT_FAIL)
        }
    }
}
