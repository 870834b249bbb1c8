//! Drop-in for tools/testing/selftests/mm/cow: no arguments, kselftest TAP.

use cowgup_harness::probe::Capabilities;
use cowgup_tap::kselftest::{cow_info, cow_section, run, Program};

fn main() -> std::process::ExitCode {
    let caps = Capabilities::probe();
    run(Program {
        info: cow_info(&caps),
        scenarios: cowgup_tests::cow_catalogue(&caps),
        section: cow_section,
    })
}
