//! A runner for integration tests written as plain functions (harness =
//! false: they fork, or own global host settings, so they run one at a time
//! on the main thread). Prints one line per check and the closing
//! "N passed, M failed" line CI reads; exits 1 if any failed.

pub type Check = fn() -> Result<(), String>;

pub fn run_checks(checks: &[(&str, Check)]) -> ! {
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(()) => println!("ok     {name}"),
            Err(e) => {
                failed += 1;
                println!("FAILED {name}: {e}");
            }
        }
    }
    println!("{} passed, {failed} failed", checks.len() - failed);
    std::process::exit(i32::from(failed > 0))
}
