//! `cowgup run --format json|junit|tap|ktap`: documents CI tools can load.
//! JSON is read back with serde_json, JUnit with Python's ElementTree (as a
//! CI viewer would parse it), TAP and KTAP with our strict parser.

use std::process::Command;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");
/// cow's non-anonymous "Basic COW" on its six backings (on a host with two hugetlb sizes).
const SELECTION: &str = "Basic COW ... with";

fn report(format: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("report");
    let out = Command::new(COWGUP)
        .args(["run", "--format", format, "--output"])
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
    if !String::from_utf8_lossy(&out.stdout).contains("cowgup: pass:") {
        return Err("with --output the human summary still goes to the terminal".into());
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
            "evidence",
        ] {
            if t.get(key).is_none() {
                return Err(format!("trial lacks {key}: {t}"));
            }
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

const JUNIT_CHECK: &str = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
for s in root.findall("testsuite"):
    cases = s.findall("testcase")
    assert int(s.get("tests")) == len(cases), s.get("name")
    assert int(s.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
    for c in cases:
        k = c.find("skipped")
        assert k is None or k.get("message"), c.get("name")
    print(s.get("name"), len(cases))
"#;

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

fn tap_and_ktap_parse_strictly() -> Result<(), String> {
    for format in ["tap", "ktap"] {
        let text = report(format)?;
        let p = cowgup_tap::parse(&text).map_err(|e| format!("{format}: {e:?}"))?;
        if p.results.len() < 4 {
            return Err(format!("{format}: {} results", p.results.len()));
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

use cowgup_harness::checks::Check;

fn main() {
    let tests: [(&str, Check); 3] = [
        (
            "JSON carries the probe and every trial",
            json_carries_probe_and_every_trial,
        ),
        (
            "JUnit loads, one testsuite per family",
            junit_loads_with_a_testsuite_per_family,
        ),
        ("TAP and KTAP parse strictly", tap_and_ktap_parse_strictly),
    ];
    cowgup_harness::checks::run_checks(&tests)
}
