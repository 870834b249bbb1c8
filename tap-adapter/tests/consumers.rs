//! The drop-in binaries' output, read by real consumers: our strict parser,
//! Perl's TAP::Parser (what `prove` uses), the kernel's kselftest runner.sh
//! and mm/run_vmtests.sh (fetched from Debian's linux-source-6.12 at test
//! time, cached under target/, never committed). One test at a time
//! (harness = false, cowgup_harness::libtest): the binaries change and
//! restore global mm settings as root, and the tests that run them are
//! named `host::...`.

mod common;
use common::framework;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cowgup_fixtures::needs::host_snapshot;
use cowgup_tap::parse;

const COW: &str = env!("CARGO_BIN_EXE_cow");
const GUP_TEST: &str = env!("CARGO_BIN_EXE_gup_test");
const GUP_LONGTERM: &str = env!("CARGO_BIN_EXE_gup_longterm");

struct Ran {
    code: i32,
    stdout: String,
}

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Ran, String> {
    let mut c = Command::new(bin);
    c.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
    // Other cowgup runs on this host (a concurrent `cargo test`) finish first.
    c.env("COWGUP_LOCK_WAIT", "600");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().map_err(|e| format!("cannot run {bin}: {e}"))?;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn strict(r: &Ran) -> Result<parse::Parsed, String> {
    let p = parse::parse(&r.stdout).map_err(|e| format!("parse errors: {e:?}"))?;
    p.check_exit_code(r.code)?;
    Ok(p)
}

fn cow_output_is_strict_kselftest_tap() -> Result<(), String> {
    let before = host_snapshot();
    let r = run(COW, &[], &[])?;
    let p = strict(&r)?;
    if p.totals_line != Some(p.totals()) {
        return Err("no totals line, or it disagrees".into());
    }
    if p.results.iter().any(|x| x.desc.is_empty()) {
        return Err("a result without a name".into());
    }
    // As upstream: "# [RUN] <name>", diagnostics, then the result carrying the same name.
    let lines: Vec<&str> = r.stdout.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("# [RUN] ") else {
            continue;
        };
        if name.ends_with("memory tests in private mappings") {
            continue;
        }
        let result = lines[i + 1..].iter().find(|l| !l.starts_with('#'));
        if !result.is_some_and(|r| {
            r.ends_with(name) && (r.starts_with("ok ") || r.starts_with("not ok "))
        }) {
            return Err(format!(
                "[RUN] {name} is not followed by its result: {result:?}"
            ));
        }
    }
    (host_snapshot() == before)
        .then_some(())
        .ok_or_else(|| "cow did not restore the host".into())
}

const TAP_PARSER: &str = r#"
use TAP::Parser;
my $p = TAP::Parser->new({ source => $ARGV[0] });
while (defined(my $r = $p->next)) {}
printf "planned=%d run=%d passed=%d failed=%d skipped=%d parse_errors=%d skip_all=%d\n",
    $p->tests_planned // -1, $p->tests_run, scalar($p->passed), scalar($p->failed),
    scalar($p->skipped), scalar($p->parse_errors), $p->skip_all ? 1 : 0;
print "error: $_\n" for $p->parse_errors;
"#;

fn perl_tap_parser_available() -> bool {
    Command::new("perl")
        .args(["-MTAP::Parser", "-e1"])
        .status()
        .is_ok_and(|s| s.success())
}

/// What TAP::Parser counts, as `key=value` pairs.
fn tap_parser(output: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("out.tap");
    fs::write(&file, output).map_err(|e| e.to_string())?;
    let o = Command::new("perl")
        .args(["-e", TAP_PARSER])
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn perl_tap_parser_agrees_with_our_totals() -> Result<(), String> {
    let r = run(COW, &[], &[])?;
    let p = strict(&r)?;
    let t = p.totals();
    let counted = tap_parser(&r.stdout)?;
    // TAP counts every "ok" as passed (skip and xfail included), "not ok" as failed.
    let want = format!(
        "planned={} run={} passed={} failed={} skipped={} parse_errors=0 skip_all=0",
        p.plan.unwrap_or(0),
        t.count(),
        t.pass + t.skip + t.xfail + t.xpass,
        t.fail + t.error,
        t.skip
    );
    if counted.trim() != want {
        return Err(format!(
            "TAP::Parser counted\n  {}\nour totals give\n  {want}",
            counted.trim()
        ));
    }
    let r = run(GUP_LONGTERM, &[], &[])?;
    let p = strict(&r)?;
    let counted = tap_parser(&r.stdout)?;
    if p.results.len() < 30 || !counted.contains("parse_errors=0") {
        return Err(format!(
            "gup_longterm: {} results, TAP::Parser says {counted}",
            p.results.len()
        ));
    }
    {
        let (bin, reason) = (GUP_TEST, "gup_test not available");
        let r = run(bin, &[], &[])?;
        let p = strict(&r)?;
        if r.code != 4 || !p.skip_all.as_deref().is_some_and(|s| s.contains(reason)) {
            return Err(format!(
                "{bin}: want a whole-program skip with exit 4, got {}:\n{}",
                r.code, r.stdout
            ));
        }
        let counted = tap_parser(&r.stdout)?;
        if !counted.contains("parse_errors=0 skip_all=1") {
            return Err(format!("{bin}: TAP::Parser says {counted}"));
        }
    }
    // prove itself, as a CI would run it (it would call exit 4 "dubious" without --ignore-exit).
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("cow.tap");
    fs::write(&file, &r.stdout).map_err(|e| e.to_string())?;
    let o = Command::new("prove")
        .args(["--ignore-exit", "-e", "cat"])
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() || !text.contains("Result: PASS") {
        return Err(format!("prove: {text}"));
    }
    Ok(())
}

/// A made-up run whose trials carry evidence and checks of every kind (the
/// catalogue need not produce any), through the same TAP consumer of the
/// event stream the drop-ins use: strict TAP, evidence and checks as `# `
/// lines of their trial, and Perl's TAP::Parser reads it without errors.
fn evidence_and_checks_keep_tap_strict() -> Result<(), String> {
    use cowgup_tap::stream::examples::sample_run;
    use cowgup_tap::{Dialect, Reporter, TapReporter};
    for dialect in [Dialect::Kselftest, Dialect::Ktap] {
        let mut buf = Vec::new();
        let mut tap = TapReporter::new(&mut buf, dialect);
        for e in &sample_run() {
            tap.on(e).map_err(|e| e.to_string())?;
        }
        let text = String::from_utf8(buf).map_err(|e| e.to_string())?;
        let p = parse::parse(&text).map_err(|e| format!("{dialect:?}: {e:?}\n{text}"))?;
        for want in ["evidence sharing: ", "pin balance: not checked ("] {
            if !p.diagnostics.iter().any(|d| d.starts_with(want)) {
                return Err(format!("{dialect:?}: no {want:?} line:\n{text}"));
            }
        }
        if dialect == Dialect::Kselftest && perl_tap_parser_available() {
            let counted = tap_parser(&text)?;
            if !counted.contains("planned=2 run=2 passed=1 failed=1")
                || !counted.contains("parse_errors=0")
            {
                return Err(format!("TAP::Parser counted {counted}"));
            }
        }
    }
    Ok(())
}

fn exit_codes_follow_ksft_finished() -> Result<(), String> {
    let pass = run(COW, &["Basic COW ... with memfd"], &[])?;
    let fail = run(
        COW,
        &["Basic COW ... with memfd"],
        &[("COWGUP_INJECT", "fail")],
    )?;
    let skip = run(GUP_TEST, &["-u", "-n", "1"], &[])?;
    let bad = run(COW, &["--frobnicate"], &[])?;
    for (r, want, what) in [
        (&pass, 0, "all pass"),
        (&fail, 1, "one fail"),
        (&skip, 4, "whole-program skip"),
        (&bad, 1, "bad option"),
    ] {
        if r.code != want {
            return Err(format!(
                "{what}: exit {} (want {want}):\n{}",
                r.code, r.stdout
            ));
        }
        strict(r).map_err(|e| format!("{what}: {e}"))?;
    }
    if !bad.stdout.contains("Bail out! cow: unknown option") {
        return Err(format!("bad option: {}", bad.stdout));
    }
    Ok(())
}

/// A collection directory inside the framework, as tools/testing/selftests/<dir>.
fn collection(fw: &Path, tag: &str, timeout: u32) -> Result<PathBuf, String> {
    let dir = fw.join(format!("cowgup-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for bin in [COW, GUP_TEST, GUP_LONGTERM] {
        let name = Path::new(bin).file_name().expect("binary name");
        std::os::unix::fs::symlink(bin, dir.join(name)).map_err(|e| e.to_string())?;
    }
    fs::write(dir.join("settings"), format!("timeout={timeout}\n")).map_err(|e| e.to_string())?;
    Ok(dir)
}

fn runner(fw: &Path, dir: &Path, progs: &str, env: &[(&str, &str)]) -> Result<String, String> {
    let script = format!(". {}/kselftest/runner.sh; run_many {progs}", fw.display());
    let mut c = Command::new("bash");
    c.args(["-c", &script])
        .current_dir(dir)
        .env("BASE_DIR", fw)
        .env("COWGUP_LOCK_WAIT", "600")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn kselftest_runner_maps_exit_codes() -> Result<(), String> {
    let fw = framework()?;
    let before = host_snapshot();
    let dir = collection(&fw, "runner", 120)?;
    let name = dir
        .file_name()
        .expect("dir name")
        .to_string_lossy()
        .into_owned();
    let memfd = [
        ("KSELFTEST_COW_ARGS", "memfd"),
        ("KSELFTEST_GUP_LONGTERM_ARGS", "memfd"),
    ];
    // programs to run, environment, lines the runner must print
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: [Case; 3] = [
        (
            "./cow ./gup_test ./gup_longterm",
            memfd.to_vec(),
            vec![
                "# timeout set to 120".into(),
                format!("ok 1 selftests: {name}: cow"),
                format!("ok 2 selftests: {name}: gup_test # SKIP"),
                format!("ok 3 selftests: {name}: gup_longterm"),
            ],
        ),
        (
            "./cow",
            vec![memfd[0], ("COWGUP_INJECT", "fail")],
            vec![format!("not ok 1 selftests: {name}: cow # exit=1")],
        ),
        (
            "./cow",
            vec![
                memfd[0],
                ("COWGUP_INJECT", "hang"),
                ("kselftest_override_timeout", "3"),
            ],
            vec![format!(
                "not ok 1 selftests: {name}: cow # TIMEOUT 3 seconds"
            )],
        ),
    ];
    for (progs, env, want) in cases {
        let out = runner(&fw, &dir, progs, &env)?;
        for line in want {
            if !out.lines().any(|l| l == line) {
                let _ = fs::remove_dir_all(&dir);
                return Err(format!("runner.sh output lacks {line:?}:\n{out}"));
            }
        }
        let after = host_snapshot();
        if after != before {
            return Err(format!(
                "host not restored after {progs} {env:?}: {}",
                snapshot_diff(&before, &after)
            ));
        }
    }
    fs::remove_dir_all(&dir).map_err(|e| e.to_string())
}

fn run_vmtests_runs_our_cow() -> Result<(), String> {
    let fw = framework()?;
    let before = host_snapshot();
    let dir = fw.join(format!("mm-cowgup-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    fs::copy(fw.join("mm/run_vmtests.sh"), dir.join("run_vmtests.sh"))
        .map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(COW, dir.join("cow")).map_err(|e| e.to_string())?;
    let o = Command::new("bash")
        .args(["./run_vmtests.sh", "-t", "cow"])
        .current_dir(&dir)
        .env("COWGUP_LOCK_WAIT", "600")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&o.stdout);
    let _ = fs::remove_dir_all(&dir);
    if !out.lines().any(|l| l == "ok 1 cow") || !o.status.success() {
        return Err(format!(
            "run_vmtests.sh -t cow (exit {:?}):\n{}",
            o.status.code(),
            out
        ));
    }
    let after = host_snapshot();
    (after == before).then_some(()).ok_or_else(|| {
        format!(
            "host not restored after run_vmtests.sh: {}",
            snapshot_diff(&before, &after)
        )
    })
}

/// The lines of two host snapshots that differ, for the failure message.
fn snapshot_diff(before: &str, after: &str) -> String {
    let gone = before.lines().filter(|l| !after.lines().any(|a| a == *l));
    let new = after.lines().filter(|l| !before.lines().any(|b| b == *l));
    let mut out: Vec<String> = gone.map(|l| format!("was {l}")).collect();
    out.extend(new.map(|l| format!("now {l}")));
    out.join("; ")
}

use cowgup_harness::libtest::{self, check, check_unless};

fn main() {
    let not_root = |why: &'static str| {
        move || (!nix::unistd::geteuid().is_root()).then(|| format!("needs root ({why})"))
    };
    libtest::main(vec![
        check(
            libtest::host("cow's output is strict kselftest TAP"),
            cow_output_is_strict_kselftest_tap,
        ),
        check(
            libtest::host("exit codes follow ksft_finished()"),
            exit_codes_follow_ksft_finished,
        ),
        check(
            "evidence and checks keep TAP strict",
            evidence_and_checks_keep_tap_strict,
        ),
        check_unless(
            libtest::host("Perl's TAP::Parser and prove agree with our totals"),
            || {
                (!perl_tap_parser_available())
                    .then(|| "perl's TAP::Parser is not installed (Debian package perl)".into())
            },
            perl_tap_parser_agrees_with_our_totals,
        ),
        check_unless(
            libtest::host("the kernel's runner.sh maps exit codes 0, 1, 4 and timeout"),
            not_root("runner.sh runs the binaries, which change host settings"),
            kselftest_runner_maps_exit_codes,
        ),
        check_unless(
            libtest::host("run_vmtests.sh -t cow runs our cow"),
            not_root("run_vmtests.sh writes nr_hugepages"),
            run_vmtests_runs_our_cow,
        ),
    ])
}
