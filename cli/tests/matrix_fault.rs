//! `cowgup matrix` on a kernel that faults on purpose: a 6.12 with
//! CONFIG_GUP_TEST and the project's fault patch, where `gup_test.fault=stall`
//! makes the Nth `PIN_LONGTERM_TEST_READ` BUG() and then every CPU spin with
//! interrupts off (the guest reports nothing more), and `gup_test.fault=oops`
//! makes it dereference NULL (the caller dies, the kernel goes on). Either way
//! the cell must end as KERNEL FAULT well within a minute of the fault, with
//! the results streamed before it, the fault quoted and the trial it hit
//! named. Skipped (with the reason) without qemu or the image:
//! `$COWGUP_FAULT_KERNEL`, else `/work/kbuild/bzImage-fault`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");
/// Trials that pin with gup_test and read through the pin, one at a time.
const FILTER: &str = "R/O GUP pin on R/O-mapped shared page";

fn setup() -> Result<PathBuf, String> {
    common::guest_image("COWGUP_FAULT_KERNEL", "/work/kbuild/bzImage-fault")
}

fn faulting_cell(kernel: &Path, fault: &str) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("matrix.json");
    let out = Command::new(COWGUP)
        .arg("matrix")
        .arg("--kernel")
        .arg(kernel)
        .args(["--kvm", "off", "--timeout-cell", "600", "--append"])
        .arg(format!("gup_test.fault={fault} gup_test.fault_after=3"))
        .args(["--format", "json", "--output"])
        .arg(&json)
        .arg(FILTER)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (doc["cells"][0].clone(), text)
}

#[test]
fn a_kernel_fault_ends_the_cell_and_keeps_what_came_before() {
    let kernel = match setup() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIP matrix fault cell: {why}");
            return;
        }
    };
    for fault in ["stall", "oops"] {
        let (cell, text) = faulting_cell(&kernel, fault);
        assert_eq!(cell["outcome"], "kernel_fault", "{fault}: {text}");
        let f = &cell["kernel_fault"];
        let headline = f["headline"].as_str().unwrap();
        match fault {
            "stall" => assert!(
                headline.starts_with("kernel BUG at mm/gup_test.c"),
                "{text}"
            ),
            _ => assert!(headline.contains("NULL pointer dereference"), "{text}"),
        }
        let lines = f["lines"].as_array().unwrap();
        assert!(lines.len() >= 5 && lines.len() <= 30, "{text}");
        let trial = f["trial"].as_str().unwrap();
        assert!(trial.contains(FILTER), "{fault}: the trial it hit: {trial}");
        // Results before the fault were streamed and kept.
        let trials = cell["trials"].as_array().unwrap();
        assert!(!trials.is_empty(), "{text}");
        assert!(trials
            .iter()
            .all(|t| t["name"].as_str().unwrap().contains(FILTER)));
        let after = f["ended_after_s"].as_f64().unwrap();
        assert!(
            after < 60.0,
            "{fault}: the cell ended {after} s after the fault"
        );
        assert!(cell["wall_s"].as_f64().unwrap() < 600.0);
        assert_eq!(cell["stream"]["garbled"], 0, "{text}");
        assert!(
            text.contains("| **all** | **KERNEL FAULT: "),
            "{fault}: {text}"
        );
        eprintln!(
            "{fault}: {} result(s) kept, fault in {trial}, cell ended {after:.1} s after it",
            trials.len()
        );
    }
}
