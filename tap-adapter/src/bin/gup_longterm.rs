//! Drop-in for tools/testing/selftests/mm/gup_longterm: no arguments (or
//! name filters), kselftest TAP, upstream's names.

use cowgup_harness::probe::Capabilities;
use cowgup_tap::kselftest::{bail, hugetlb_info, run, select, Program};

fn main() -> std::process::ExitCode {
    let caps = Capabilities::probe();
    let scenarios = match select(
        "gup_longterm",
        cowgup_tests::gup_longterm_catalogue(&caps, false),
    ) {
        Ok(s) => s,
        Err(e) => return bail(&e),
    };
    run(Program {
        info: hugetlb_info(&caps),
        scenarios,
        section: |_| None,
    })
}
