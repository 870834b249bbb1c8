//! `cowgup run --format json|junit|tap|ktap`: documents CI tools can load.
//! JSON is read back with serde_json (evidence and checks into the harness's
//! own types), JUnit with Python's ElementTree (as a CI viewer would parse
//! it) and quick-junit's reader, TAP and KTAP with our strict parser.
//! (The writers' unit tests feed them made-up trials with evidence of every
//! kind; here the real catalogue runs.) As root the runs provision hugetlb
//! pools, so the tests are named `host::...` (cowgup_harness::libtest).

use std::process::Command;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");
/// cow's non-anonymous "Basic COW" on its six backings (on a host with two hugetlb sizes).
const SELECTION: &str = "Basic COW ... with";

fn report(format: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("report");
    let out = Command::new(COWGUP)
        // Other cowgup runs on this host (a concurrent `cargo test`) finish first.
        .args(["run", "--lock-wait", "600", "--format", format, "--output"])
        .arg(&file)
        .arg(SELECTION)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "cowgup run --format {format} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let terminal = String::from_utf8_lossy(&out.stdout);
    let on_terminal = terminal.contains("cowgup: pass:");
    if on_terminal != (format != "human") {
        return Err(format!(
            "--format {format} --output: the human report goes to the terminal only for \
             the machine formats; the terminal got:\n{terminal}"
        ));
    }
    std::fs::read_to_string(&file).map_err(|e| e.to_string())
}

fn json_carries_probe_and_every_trial() -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(&report("json")?).map_err(|e| e.to_string())?;
    let trials = doc["trials"].as_array().ok_or("no trials array")?;
    let want = 4 + cowgup_harness::probe::Capabilities::probe().hugetlb.len();
    if trials.len() != want {
        return Err(format!("{} trials, want {want}", trials.len()));
    }
    for t in trials {
        for key in [
            "name",
            "family",
            "backing",
            "outcome",
            "reason",
            "duration_ms",
            "diagnostics",
            "evidence",
            "checks",
        ] {
            if t.get(key).is_none() {
                return Err(format!("trial lacks {key}: {t}"));
            }
        }
        // Evidence and checks are records, not strings: they read back as the harness's types.
        serde_json::from_value::<Vec<Evidence>>(t["evidence"].clone())
            .map_err(|e| format!("evidence is not a list of {{kind, data}} records ({e}): {t}"))?;
        serde_json::from_value::<Vec<CheckResult>>(t["checks"].clone())
            .map_err(|e| format!("checks are not CheckResult records ({e}): {t}"))?;
        if !t["diagnostics"]
            .as_array()
            .is_some_and(|d| d.iter().all(|l| l.is_string()))
        {
            return Err(format!("diagnostics are not lines: {t}"));
        }
        if t["outcome"] == "skip" && t["reason"].as_str().is_none_or(str::is_empty) {
            return Err(format!("a skip without its reason: {t}"));
        }
    }
    for key in ["kernel", "probe", "totals", "host_changes"] {
        if doc.get(key).is_none() {
            return Err(format!("document lacks {key}"));
        }
    }
    if doc["probe"]["page_size"].as_u64().is_none() {
        return Err("probe lacks page_size".into());
    }
    Ok(())
}

/// Counts agree with the testcases, skips and failures carry their messages.
const JUNIT_CHECK: &str = include_str!("../../tap-adapter/tests/junit_check.py");

fn junit_loads_with_a_testsuite_per_family() -> Result<(), String> {
    let xml = report("junit")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("junit.xml");
    std::fs::write(&file, &xml).map_err(|e| e.to_string())?;
    let out = match Command::new("python3")
        .args(["-c", JUNIT_CHECK])
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            println!("  (python3 not installed: JUnit structure not checked by a real XML parser)");
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("cow: non-anonymous memory") {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// JUnit is quick-junit's output: its own reader takes it back, counts intact.
fn junit_reads_back_with_quick_junit() -> Result<(), String> {
    let xml = report("junit")?;
    let r = quick_junit::Report::deserialize_from_str(&xml).map_err(|e| e.to_string())?;
    let cases: usize = r.test_suites.iter().map(|s| s.test_cases.len()).sum();
    let want = 4 + cowgup_harness::probe::Capabilities::probe().hugetlb.len();
    if r.tests != want || cases != want {
        return Err(format!("{} tests, {cases} testcases, want {want}", r.tests));
    }
    let skipped = r
        .test_suites
        .iter()
        .flat_map(|s| &s.test_cases)
        .filter(|c| matches!(c.status, quick_junit::TestCaseStatus::Skipped { .. }))
        .count();
    if skipped != r.skipped {
        return Err(format!(
            "skipped={} but {skipped} skipped testcases",
            r.skipped
        ));
    }
    Ok(())
}

/// `--format human --output FILE`: the human report goes to FILE.
fn human_report_goes_to_the_output_file() -> Result<(), String> {
    let text = report("human")?;
    if !text.starts_with("cowgup: kernel ") {
        return Err(format!("not the human report:\n{text}"));
    }
    Ok(())
}

fn tap_and_ktap_parse_strictly() -> Result<(), String> {
    for format in ["tap", "ktap"] {
        let text = report(format)?;
        let p = cowgup_tap::parse(&text).map_err(|e| format!("{format}: {e:?}"))?;
        if p.results.len() < 4 {
            return Err(format!("{format}: {} results", p.results.len()));
        }
        if let Some(d) = p
            .diagnostics
            .iter()
            .find(|d| d.starts_with("evidence ") && !d.contains(':'))
        {
            return Err(format!("{format}: evidence line without its kind: {d}"));
        }
        let version = if format == "tap" {
            "TAP version 13"
        } else {
            "KTAP version 1"
        };
        if p.version.as_deref() != Some(version) {
            return Err(format!("{format}: version {:?}", p.version));
        }
    }
    Ok(())
}

use cowgup_harness::libtest::{self, check};
use cowgup_harness::{CheckResult, Evidence};

type Check = fn() -> Result<(), String>;

fn main() {
    let checks: [(&str, Check); 5] = [
        (
            "JSON carries the probe and every trial",
            json_carries_probe_and_every_trial,
        ),
        (
            "JUnit loads, one testsuite per family",
            junit_loads_with_a_testsuite_per_family,
        ),
        (
            "JUnit reads back with quick-junit",
            junit_reads_back_with_quick_junit,
        ),
        ("TAP and KTAP parse strictly", tap_and_ktap_parse_strictly),
        (
            "--format human --output FILE writes the human report",
            human_report_goes_to_the_output_file,
        ),
    ];
    // Every one runs `cowgup run`, which provisions the host as root.
    libtest::main(
        checks
            .into_iter()
            .map(|(name, f)| check(libtest::host(name), f))
            .collect(),
    )
}
