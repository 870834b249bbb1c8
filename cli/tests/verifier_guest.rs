//! The verifier's self-test (tests/verifier.rs) for the families that run
//! only in topology guests: movable_pins (`--topology movable`) and
//! fsdax_pins (`--topology fsdax`). What they check is what a long-term pin
//! shows, so the damage that stands for a kernel bug is reader damage: the
//! pin shows a different page, a page left uncopied, the other copy (stale),
//! a byte flipped mid-page (`--thorough`). Each round boots both cells with
//! one damage (`matrix --damage`). Every trial the damage reached must FAIL
//! naming the damaged page (or stay XFAIL where the undamaged baseline was
//! XFAIL), none may pass, and each family must be reached by each damage
//! other than `stale` (only a reference to an old copy can show that).
//!
//! Needs root, qemu and the CONFIG_GUP_TEST image (`$COWGUP_MATRIX_KERNEL`);
//! skipped with the reason otherwise. About 8 boots of two cells.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");
const FAMILIES: [&str; 2] = ["movable_pins", "fsdax_pins"];
/// (damage, needs --thorough)
const ROUNDS: [(&str, bool); 7] = [
    ("reader:other:last", false),
    ("reader:uncopied:first", false),
    ("reader:uncopied:middle", false),
    ("reader:uncopied:last", false),
    ("reader:stale:first", false),
    ("reader:stale:last", false),
    ("reader:flip:last", true),
];

struct Seen {
    family: String,
    outcome: String,
    reason: String,
    damaged_pages: Vec<u64>,
}

/// Both cells with `damage` (none: the baseline): every trial by name.
fn cells(kernel: &Path, damage: Option<&str>, thorough: bool) -> BTreeMap<String, Seen> {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("matrix.json");
    let mut cmd = Command::new(COWGUP);
    cmd.arg("matrix").arg("--kernel").arg(kernel);
    cmd.args([
        "--topology",
        "movable",
        "--topology",
        "fsdax",
        "--jobs",
        "2",
    ]);
    cmd.args(["--kvm", "off", "--timeout-cell", "600"]);
    for f in FAMILIES {
        cmd.args(["--family", f]);
    }
    if let Some(d) = damage {
        cmd.args(["--damage", d]);
    }
    if thorough {
        cmd.arg("--thorough");
    }
    let out = cmd
        .args(["--format", "json", "--output"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("matrix report: {e}\n{stderr}"));
    let mut seen = BTreeMap::new();
    for cell in doc["cells"].as_array().unwrap() {
        assert_eq!(cell["outcome"], "complete", "{cell:#}\n{stderr}");
        for t in cell["trials"].as_array().unwrap() {
            let damaged_pages = t["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["kind"] == "damage")
                .filter_map(|e| e["data"]["page"].as_u64())
                .collect();
            let name = format!("{} [{}]", t["name"].as_str().unwrap(), cell["topology"]);
            let s = Seen {
                family: t["family"].as_str().unwrap().into(),
                outcome: t["outcome"].as_str().unwrap().into(),
                reason: t["reason"].as_str().unwrap_or_default().into(),
                damaged_pages,
            };
            seen.insert(name, s);
        }
    }
    seen
}

#[test]
fn every_damaged_guest_only_trial_fails_naming_the_page() {
    let kernel = match common::gup_test_image() {
        Ok(k) if nix::unistd::geteuid().is_root() => k,
        Ok(_) => return eprintln!("SKIP guest verifier: needs root (PFNs, hugetlb pages)"),
        Err(why) => return eprintln!("SKIP guest verifier: {why}"),
    };
    let baseline = cells(&kernel, None, false);
    let mut executed: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, s) in &baseline {
        assert!(
            matches!(s.outcome.as_str(), "pass" | "xfail" | "skip"),
            "baseline: {name}: {} ({})",
            s.outcome,
            s.reason
        );
        // A trial of the other family's topology skips there (no Movable
        // zone, no DAX mount): only those that ran count.
        if s.outcome != "skip" {
            *executed.entry(&s.family).or_default() += 1;
        }
    }
    for f in FAMILIES {
        assert!(executed.get(f).is_some_and(|&n| n > 0), "{f}: no trial ran");
    }
    let mut problems = Vec::new();
    for (damage, thorough) in ROUNDS {
        let round = cells(&kernel, Some(damage), thorough);
        let mut reached: BTreeMap<&str, usize> = BTreeMap::new();
        for (name, s) in &round {
            if s.damaged_pages.is_empty() {
                continue;
            }
            *reached.entry(&s.family).or_default() += 1;
            let names_page = s
                .damaged_pages
                .iter()
                .any(|p| s.reason.contains(&format!("page {p} ")));
            let ok = match s.outcome.as_str() {
                "fail" => names_page,
                "xfail" => baseline.get(name).is_some_and(|b| b.outcome == "xfail"),
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "{name} under {damage}: {} ({}), damaged page(s) {:?}",
                    s.outcome, s.reason, s.damaged_pages
                ));
            }
        }
        for f in FAMILIES {
            let n = reached.get(f).copied().unwrap_or(0);
            println!(
                "{damage}: family {f}: {n} of {} executed trial(s) damaged",
                executed[f]
            );
            if n == 0 && !damage.contains(":stale:") {
                problems.push(format!("{damage} reached no {f} trial"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
