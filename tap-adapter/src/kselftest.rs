//! A kselftest program made of catalogue trials: what the drop-in `cow` and
//! `gup_longterm` binaries run. Prints what upstream prints — the `# [INFO]`
//! lines, `# [RUN] <name>` before each result, the reason of a skip or
//! failure as a diagnostic — plus each trial's evidence and checks as
//! diagnostics, and exits as `ksft_finished()` does. The printing is the
//! TAP consumer of the event stream (`report::tap`), as in `cowgup run`.

use std::io::{stdout, Write};
use std::process::ExitCode;

use cowgup_harness::probe::Capabilities;
use cowgup_harness::Outcome;
use cowgup_tests::session::{Options, Session};
use cowgup_tests::{Family, Scenario};

use crate::report::TapReporter;
use crate::stream::drive;
use crate::write::Dialect;

pub struct Program {
    /// The [INFO] lines cow.c prints before its plan.
    pub info: Vec<String>,
    pub scenarios: Vec<Scenario>,
    /// The line printed when a family's trials start, as upstream does.
    pub section: fn(Family) -> Option<&'static str>,
}

/// cow.c's section lines.
pub fn cow_section(f: Family) -> Option<&'static str> {
    match f {
        Family::COW_ANON => Some("[INFO] Anonymous memory tests in private mappings"),
        Family::COW_ANON_THP => Some("[INFO] Anonymous THP tests"),
        Family::COW_NON_ANON => Some("[RUN] Non-anonymous memory tests in private mappings"),
        _ => None,
    }
}

/// gup_longterm.c's start-up [INFO] lines.
pub fn hugetlb_info(caps: &Capabilities) -> Vec<String> {
    caps.hugetlb
        .iter()
        .map(|p| format!("[INFO] detected hugetlb page size: {} KiB", p.size / 1024))
        .collect()
}

/// cow.c's start-up [INFO] lines for this kernel.
pub fn cow_info(caps: &Capabilities) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(pmd) = caps.pmd_size {
        v.push(format!("[INFO] detected PMD size: {} KiB", pmd / 1024));
        for s in &caps.thp_sizes {
            v.push(format!("[INFO] detected THP size: {} KiB", s / 1024));
        }
    }
    for p in &caps.hugetlb {
        v.push(format!(
            "[INFO] detected hugetlb page size: {} KiB",
            p.size / 1024
        ));
    }
    v
}

fn options_from_env() -> Options {
    Options {
        // Under run_vmtests.sh the script manages hugetlb pools itself; we
        // only top them up and put back what we changed. COWGUP_NO_PROVISION=1
        // leaves the host alone entirely.
        provision: std::env::var_os("COWGUP_NO_PROVISION").is_none(),
        thorough: std::env::var_os("COWGUP_THOROUGH").is_some(),
        // Seconds to wait for another cowgup to finish with the host (default: none).
        lock_wait: std::env::var("COWGUP_LOCK_WAIT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or_default(),
        // And the rest as for `cargo test`: COWGUP_EXPECTATIONS=FILE[:FILE...]
        // adds the user's expectation rows, COWGUP_STATE_DIR moves the journal.
        ..Options::default()
    }
}

/// Command-line handling shared by the drop-ins: upstream's programs take no
/// arguments; ours also take optional name filters (substrings, as
/// `cargo test` does), so `KSELFTEST_COW_ARGS=memfd` runs a subset under the
/// kernel's runner. Anything that looks like an option is refused in TAP.
pub fn select(program: &str, mut scenarios: Vec<Scenario>) -> Result<Vec<Scenario>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bad) = args.iter().find(|a| a.starts_with('-')) {
        return Err(format!(
            "{program}: unknown option {bad:?} (usage: {program} [FILTER...]; a trial runs if its name contains a FILTER)"
        ));
    }
    let selection = cowgup_tests::Selection {
        filters: args,
        ..Default::default()
    };
    scenarios.retain(|s| selection.selects(&s.name));
    scenarios.extend(injected());
    Ok(scenarios)
}

/// `COWGUP_INJECT=fail|hang` appends one deliberately broken trial, so the
/// exit-code mapping of kselftest's runner can be tested end to end.
fn injected() -> Option<Scenario> {
    let what = std::env::var("COWGUP_INJECT").ok()?;
    let body: cowgup_tests::scenario::Body = match what.as_str() {
        "fail" => std::sync::Arc::new(|_| {
            Ok(Outcome::Fail(
                "injected failure (COWGUP_INJECT=fail)".into(),
            ))
        }),
        "hang" => std::sync::Arc::new(|_| loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }),
        _ => return None,
    };
    Some(Scenario {
        name: format!("cowgup injected {what} (COWGUP_INJECT={what})"),
        family: Family::COW_NON_ANON,
        group: "injected".into(),
        needs: vec![],
        knobs: vec![],
        pins: false,
        body,
    })
}

/// Refuse bad input the kselftest way: `Bail out!` and exit 1.
pub fn bail(msg: &str) -> ExitCode {
    let _ = TapReporter::new(stdout().lock(), Dialect::Kselftest).bail_out(msg);
    ExitCode::from(crate::KSFT_FAIL as u8)
}

/// Run the program: its trials through the session, printed by the TAP
/// consumer of the event stream. Write errors (a closed pipe) end the
/// program as a failure would, with the host restored.
pub fn run(program: Program) -> ExitCode {
    let mut tap = TapReporter::new(stdout().lock(), Dialect::Kselftest)
        .with_preamble(program.info)
        .with_sections(program.section);
    let refs: Vec<&Scenario> = program.scenarios.iter().collect();
    let code = match Session::start(&options_from_env(), &refs) {
        Ok(mut session) => match drive(&mut session, &program.scenarios, &mut [&mut tap]) {
            Ok(_) => tap.exit_code(),
            Err(_) => crate::KSFT_FAIL,
        },
        Err(e) => {
            let _ = tap.bail_out(&e);
            crate::KSFT_FAIL
        }
    };
    let _ = stdout().flush();
    ExitCode::from(code as u8)
}
