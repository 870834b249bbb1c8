//! Drop-in for tools/testing/selftests/mm/cow: no arguments, kselftest TAP.

use cowgup_harness::probe::Capabilities;
use cowgup_tap::kselftest::{bail, cow_info, cow_section, run, select, Program};

fn main() -> std::process::ExitCode {
    let caps = Capabilities::probe();
    let scenarios = match select("cow", cowgup_tests::cow_catalogue(&caps)) {
        Ok(s) => s,
        Err(e) => return bail(&e),
    };
    run(Program {
        info: cow_info(&caps),
        scenarios,
        section: cow_section,
    })
}
