//! `cowgup matrix` with a real guest: one trial on a prebuilt kernel under
//! qemu, next to a bogus "kernel" that must cost its own cell only; the
//! prebuilt kernel also as a cell with every topology feature, each of
//! which must be set up (fsdax mounted `dax=always`, a Movable zone). Skipped
//! (with the reason) without qemu, mkfs.ext4, a static busybox, or a kernel
//! image: `$COWGUP_MATRIX_KERNEL`, else the project machine's cached
//! `/work/shared/kernels/bzImage-6.12.117-guptest`.

mod common;

use std::path::PathBuf;
use std::process::Command;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");
const TRIAL: &str = "Basic COW after fork() ... with base page";

/// The kernel to boot, or why the test cannot run here.
fn setup() -> Result<PathBuf, String> {
    common::gup_test_image()
}

#[test]
fn a_guest_cell_runs_and_a_broken_one_costs_only_its_cell() {
    let kernel = match setup() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIP matrix guest cell: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, "this is no kernel\n").unwrap();
    let json = dir.path().join("matrix.json");
    let out = Command::new(COWGUP)
        .arg("matrix")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--kernel")
        .arg(&bogus)
        .args([
            "--topology",
            "base",
            "--topology",
            "zram+ext4+fsdax+movable",
        ])
        .args(["--jobs", "1", "--kvm", "off"])
        .args(["--timeout-cell", "300", "--format", "json", "--output"])
        .arg(&json)
        .args(["--exact", TRIAL])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ran = &doc["cells"][0];
    assert_eq!(ran["totals"]["pass"], 1, "{stdout}\n{stderr}");
    assert_eq!(ran["trials"][0]["name"], TRIAL);
    assert!(ran["release"].as_str().unwrap().starts_with("6."));
    assert!(ran["no_result"].is_null());
    assert_eq!(ran["topology"], "base");
    assert_eq!(ran["setup"], serde_json::json!([]));
    let topo = &doc["cells"][1];
    assert_eq!(topo["topology"], "zram+ext4+fsdax+movable");
    assert_eq!(topo["totals"]["pass"], 1, "{stdout}\n{stderr}");
    let setup = topo["setup"].as_array().unwrap();
    let features: Vec<&str> = setup
        .iter()
        .map(|s| s["feature"].as_str().unwrap())
        .collect();
    assert_eq!(features, ["zram", "ext4", "fsdax", "movable"], "{stdout}");
    for s in setup {
        assert_eq!(s["ok"], true, "{s}");
    }
    assert!(setup[2]["detail"]
        .as_str()
        .unwrap()
        .contains("/mnt/dax ext4 rw,relatime,dax"));
    assert!(setup[3]["detail"]
        .as_str()
        .unwrap()
        .contains("zone Movable has"));
    let broken = &doc["cells"][2];
    assert_eq!(broken["kernel"], "not-a-kernel");
    assert!(broken["no_result"]
        .as_str()
        .unwrap()
        .contains("without a result"));
    assert!(
        stdout.contains("- not-a-kernel: NO RESULT: qemu ended"),
        "{stdout}"
    );
}
