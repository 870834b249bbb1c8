//! The scale-out files parse as what their engines expect, and the commands
//! they call run here in dry-run form: the GitHub Actions workflow's
//! `cowgup matrix` line per kernel (`--dry-run`: nothing fetched or booted),
//! and the LAVA test definition's steps (`DRY_RUN=1`), whose TAP-to-LAVA
//! converter runs for real on TAP in both dialects the suite writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const COWGUP: &str = env!("CARGO_BIN_EXE_cowgup");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn load(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn sh(script: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(root())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `${{ matrix.X }}` replaced from one `include` entry.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut t = text.to_string();
    for (k, v) in vars {
        t = t.replace(&format!("${{{{ matrix.{k} }}}}"), v);
    }
    t
}

#[test]
fn the_workflow_runs_one_matrix_job_per_kernel_and_uploads_json_and_html() {
    let wf = load(".github/workflows/matrix.yml");
    let job = &wf["jobs"]["matrix"];
    assert!(job["runs-on"].as_str().is_some(), "runs-on");
    let include = job["strategy"]["matrix"]["include"]
        .as_sequence()
        .expect("strategy.matrix.include");
    assert!(include.len() >= 2, "one job per kernel");
    let steps = job["steps"].as_sequence().expect("steps");
    let run_step = steps
        .iter()
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("cowgup matrix"))
        })
        .expect("a step runs cowgup matrix");
    let upload = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
        })
        .expect("an upload step");
    assert!(
        steps.iter().any(|s| s["run"]
            .as_str()
            .is_some_and(|r| r.contains("cargo build --release --locked -p cowgup"))),
        "the workflow builds this crate"
    );
    for entry in include {
        let vars: BTreeMap<String, String> = entry
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v.as_str().unwrap().to_string(),
                )
            })
            .collect();
        let kernel = &vars["kernel"];
        let script = expand(run_step["run"].as_str().unwrap(), &vars)
            .replace("target/release/cowgup", COWGUP);
        assert!(
            !script.contains("${{"),
            "every matrix variable is defined: {script}"
        );
        let (ok, out) = sh(&format!("{} --dry-run", script.trim_end()), &[]);
        assert!(ok, "{script}\n{out}");
        assert!(out.contains(&format!("# cell 0: {kernel}\n")), "{out}");
        let qemu = if kernel.contains("arm64") {
            "qemu-system-aarch64 -M virt -accel"
        } else {
            "qemu-system-x86_64 -accel"
        };
        assert!(out.contains(qemu), "{out}");
        // What the run step writes is what the upload step uploads.
        let paths = expand(upload["with"]["path"].as_str().unwrap(), &vars);
        let uploaded: Vec<&str> = paths
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        for ext in ["json", "html"] {
            let file = format!("matrix-{}.{ext}", vars["name"]);
            assert!(script.contains(&format!("\"{file}\"")), "{script}");
            assert!(uploaded.contains(&file.as_str()), "{uploaded:?}");
        }
        assert!(!Path::new(&root().join(format!("matrix-{}.json", vars["name"]))).exists());
    }
}

const LAVA: &str = "scale-out/lava/cowgup.yaml";

#[test]
fn the_lava_definition_runs_the_suite_in_dry_run_form() {
    let def = load(LAVA);
    assert_eq!(
        def["metadata"]["format"].as_str(),
        Some("Lava-Test Test Definition 1.0")
    );
    assert_eq!(def["metadata"]["name"].as_str(), Some("cowgup"));
    let params = def["params"].as_mapping().expect("params");
    let mut env: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k == "DRY_RUN"));
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "DRY_RUN" => *v = "1".into(),
            "COWGUP_BIN" => *v = COWGUP.into(),
            "COWGUP_URL" => *v = "https://example.invalid/cowgup".into(),
            "FILTER" => *v = "vmsplice".into(),
            _ => {}
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let steps = def["run"]["steps"].as_sequence().expect("run.steps");
    assert!(!steps.is_empty());
    let mut all = String::new();
    for step in steps {
        let step = step.as_str().expect("a step is a shell line");
        let (ok, out) = sh(step, &env);
        assert!(ok, "{step}\n{out}");
        all.push_str(&out);
    }
    assert!(all.contains("+ curl -fsSL -o "), "{all}");
    assert!(
        all.contains(&format!(
            "+ {COWGUP} run --format tap --output cowgup.tap --skip 1048576 kB vmsplice\n"
        )),
        "{all}"
    );
    assert!(all.contains("tap-to-lava.sh < cowgup.tap"), "{all}");
    assert!(
        !root().join("cowgup.tap").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn tap_results_become_lava_test_cases() {
    let kselftest = "TAP version 13\n1..6\n# [RUN] x\n\
        ok 1 Basic COW after fork() ... with base page\n\
        not ok 2 R/O longterm GUP pin ... with THP\n\
        ok 3 # SKIP gup_test ... with 1048576 kB hugetlb\n\
        ok 4 # XFAIL vmsplice() + unmap in child ... with 2048 kB hugetlb\n\
        ok 5 # XPASS unexpectedly fine\n\
        not ok 6 # error broke\n\
        # Totals: pass:1 fail:1 xfail:1 xpass:1 skip:1 error:1\n";
    let ktap =
        "KTAP version 1\n1..2\nok 1 a b # SKIP no gup_test\nnot ok 2 c # TIMEOUT timed out\n";
    let long = format!("TAP version 13\n1..1\nok 1 {}\n", "x".repeat(300));
    let convert = |tap: &str| {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.tap");
        std::fs::write(&input, tap).unwrap();
        let (ok, out) = sh(
            &format!("scale-out/lava/tap-to-lava.sh < '{}'", input.display()),
            &[("LAVA_TEST_CASE", "echo")],
        );
        assert!(ok, "{out}");
        out
    };
    assert_eq!(
        convert(kselftest),
        "1_Basic_COW_after_fork_..._with_base_page --result pass\n\
         2_R_O_longterm_GUP_pin_..._with_THP --result fail\n\
         3_gup_test_..._with_1048576_kB_hugetlb --result skip\n\
         4_vmsplice_unmap_in_child_..._with_2048_kB_hugetlb --result pass\n\
         5_unexpectedly_fine --result fail\n\
         6_broke --result fail\n"
    );
    assert_eq!(convert(ktap), "1_a_b --result skip\n2_c --result fail\n");
    let out = convert(&long);
    assert_eq!(out.split_whitespace().next().unwrap().len(), 100, "{out}");
}
