//! The verifier's self-test. Each round runs every family of the catalogue
//! (or those `COWGUP_VERIFIER_FAMILIES=id,id` names, for a shorter run) with
//! one test-only damage (fixtures/src/damage.rs,
//! `COWGUP_DAMAGE`) that stands for a kernel bug: a different page mapped, a
//! page left uncopied (first, middle, last), one byte flipped mid-page, a
//! reference showing the other copy. Every trial whose copy was damaged must
//! fail and name the damaged page; none may pass. Trials the kernel already
//! fails in an accepted way (an XFAIL row) may stay XFAIL, never pass.
//!
//! A byte flipped mid-page is only visible to `--thorough` (the default checks
//! the first and the last word of every base page; what an io_uring pin of a
//! hugetlb page shows, per huge page), so those rounds run in a second
//! process with a thorough session.
//!
//! One test, `host::verifier: ...` (the session provisions hugetlb pools,
//! swap and THP settings), run by cowgup_harness::libtest.

use std::collections::{BTreeMap, BTreeSet};

use cowgup_fixtures::damage::VAR;
use cowgup_harness::libtest::{self, Completion, Failed};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::OutcomeKind;
use cowgup_tests::session::{Options, Progress, Session};
use cowgup_tests::{catalogue, Family, Scenario};

const STRUCTURAL: &[&str] = &[
    "writer:other:first",
    "writer:uncopied:first",
    "writer:uncopied:middle",
    "writer:uncopied:last",
    "reader:other:last",
    "reader:uncopied:first",
    "reader:uncopied:middle",
    "reader:uncopied:last",
    "reader:stale:first",
    "reader:stale:last",
];
const THOROUGH: &[&str] = &["writer:flip:middle", "reader:flip:last"];

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Seen {
    damage: String,
    name: String,
    family: String,
    outcome: String,
    reason: String,
    /// Pages the damage hooks reported damaging in this trial.
    damaged_pages: Vec<u64>,
}

/// Narrows the families damaged: ids separated by commas.
const FAMILIES_VAR: &str = "COWGUP_VERIFIER_FAMILIES";

/// The families whose trials are damaged: every family, or those named.
fn families() -> Vec<Family> {
    match std::env::var(FAMILIES_VAR) {
        Ok(ids) if !ids.trim().is_empty() => ids
            .split(',')
            .map(|id| {
                Family::by_id(id.trim())
                    .unwrap_or_else(|| panic!("{FAMILIES_VAR}: no family {id:?}"))
            })
            .collect(),
        _ => Family::all().collect(),
    }
}

/// The baseline outcome per trial, and what each damaged round saw.
type Rounds = (BTreeMap<String, String>, Vec<Seen>);

/// Run the baseline and every damage round in one session.
fn rounds(thorough: bool, damages: &[&str]) -> Result<Rounds, String> {
    let caps = Capabilities::probe();
    let scenarios: Vec<Scenario> = catalogue(&caps)
        .into_iter()
        .filter(|s| families().contains(&s.family))
        .collect();
    let selected: Vec<&Scenario> = scenarios.iter().collect();
    let opts = Options {
        thorough,
        lock_wait: std::time::Duration::from_secs(600),
        ..Options::default()
    };
    let mut session = Session::start(&opts, &selected).map_err(|e| format!("verifier: {e}"))?;
    // Side by side where the families allow it (the verdicts do not change,
    // see tests/jobs.rs): a dozen rounds of the whole cow catalogue.
    session.jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut run = |list: &[&Scenario]| {
        let mut reports = Vec::with_capacity(list.len());
        let ran = session.run_all(list, |p| {
            if let Progress::Finished(_, r) = p {
                reports.push(r);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        match ran {
            Ok(_) => reports,
            Err((stop, _)) => session.abort(stop),
        }
    };
    // SAFETY (set_var/remove_var): this test is single-threaded.
    std::env::remove_var(VAR);
    let baseline: BTreeMap<String, String> = scenarios
        .iter()
        .zip(run(&selected))
        .map(|(s, r)| (s.name.clone(), r.outcome.kind().as_str().to_string()))
        .collect();
    let executed: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| baseline[&s.name] != "skip")
        .collect();
    let mut seen = Vec::new();
    for &damage in damages {
        std::env::set_var(VAR, damage);
        for (s, r) in executed.iter().zip(run(&executed)) {
            let damaged_pages = r
                .evidence
                .iter()
                .filter(|e| e.kind == "damage")
                .filter_map(|e| e.data.get("page")?.as_u64())
                .collect();
            seen.push(Seen {
                damage: damage.to_string(),
                name: s.name.clone(),
                family: s.family.id().to_string(),
                outcome: r.outcome.kind().as_str().to_string(),
                reason: r.outcome.reason().to_string(),
                damaged_pages,
            });
        }
    }
    std::env::remove_var(VAR);
    if let Some(r) = session.finish() {
        for p in r.problems {
            eprintln!("verifier: could not restore: {p}");
        }
    }
    Ok((baseline, seen))
}

fn main() {
    if std::env::args().any(|a| a == "--thorough-rounds") {
        match rounds(true, THOROUGH) {
            Ok(r) => println!("{}", serde_json::to_string(&r).unwrap()),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    libtest::main(vec![libtest::Trial::ignorable_test(
        libtest::host("verifier: every damaged trial fails and names the damaged page"),
        || {
            if !nix::unistd::geteuid().is_root() {
                return Ok(Completion::ignored_with(
                    "needs root (PFNs, hugetlb pages, swap)",
                ));
            }
            verify()
                .map(|()| Completion::Completed)
                .map_err(Failed::from)
        },
    )])
}

fn verify() -> Result<(), String> {
    let (baseline, mut seen) = rounds(false, STRUCTURAL)?;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--thorough-rounds")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("re-running the verifier test");
    if !out.status.success() {
        return Err("thorough rounds failed".into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let (_, thorough_seen): Rounds =
        serde_json::from_str(line.trim()).expect("thorough rounds' result");
    seen.extend(thorough_seen);

    let mut problems = Vec::new();
    let mut per_damage: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for s in &seen {
        let slot = per_damage.entry(s.damage.as_str()).or_default();
        slot.1 += 1;
        if s.damaged_pages.is_empty() {
            continue;
        }
        slot.0 += 1;
        let accepted = baseline.get(&s.name).is_some_and(|b| b == "xfail");
        let names_page = s
            .damaged_pages
            .iter()
            .any(|p| s.reason.contains(&format!("page {p} ")));
        let ok = match OutcomeKind::parse(&s.outcome) {
            Some(OutcomeKind::Fail) => names_page,
            Some(OutcomeKind::Xfail) => accepted || racy_by_nature(&s.name),
            _ => false,
        };
        if !ok {
            problems.push(format!(
                "{} under {}: {} ({}), damaged page(s) {:?}",
                s.name, s.damage, s.outcome, s.reason, s.damaged_pages
            ));
        }
    }
    for (damage, (damaged, ran)) in &per_damage {
        println!("{damage}: {damaged} of {ran} executed trial(s) damaged");
    }
    // Per family: how many of its executed trials some damage reached (a
    // family without damage hooks shows 0: it is run, not checked).
    let mut per_family: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for s in &seen {
        let slot = per_family.entry(s.family.as_str()).or_default();
        slot.1.insert(s.name.as_str());
        if !s.damaged_pages.is_empty() {
            slot.0.insert(s.name.as_str());
        }
    }
    for (family, (damaged, ran)) in &per_family {
        println!(
            "family {family}: {} of {} executed trial(s) damaged in some round",
            damaged.len(),
            ran.len()
        );
    }
    // Every executed cow trial has a writer whose copy is checked: writer
    // damage must reach all of them, except where it cannot show: a page
    // "left uncopied" that was all zeroes anyway (non-anonymous memory starts
    // as zeroes), and a trial whose child lost the page at fork() before
    // anybody wrote (an XFAIL row).
    // Every executed cow_anon trial also has another side that is checked (a
    // child, a pipe or a pin): reader damage other than `stale` (which only a
    // reference can show) must reach all of those too.
    for s in &seen {
        let zeroes = s.family == "cow_non_anon" && s.damage.contains(":uncopied:");
        let lost = s.outcome == "xfail" && s.reason.starts_with("lost at fork");
        // Outside --thorough (the flip rounds), an io_uring fixed buffer on
        // hugetlb is read through the pin per huge page: its first and last
        // words (FixedBuffer::read_through_pin). A base page inside it left
        // uncopied keeps its head, so that damage is not what the pin shows.
        let per_huge_page = s.damage.starts_with("reader:")
            && !s.damage.contains(":flip:")
            && s.name.contains("iouring fixed buffer")
            && s.name.contains("with hugetlb");
        let must = if s.damage.starts_with("writer:") {
            s.family.starts_with("cow") || fork_flags_writes(&s.family, &s.name)
        } else {
            (s.family == "cow_anon" || fork_flags_child_checks(&s.family, &s.name))
                && !s.damage.contains(":stale:")
        };
        if must && s.damaged_pages.is_empty() && !zeroes && !lost && !per_huge_page {
            problems.push(format!(
                "{} under {}: not damaged ({}: {})",
                s.name, s.damage, s.outcome, s.reason
            ));
        }
    }
    println!(
        "verifier: {} of {} damaged-round results as they must be",
        seen.len() - problems.len().min(seen.len()),
        seen.len()
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} result(s) wrong:\n{}",
            problems.len(),
            problems.join("\n")
        ))
    }
}

/// A fork_flags trial whose parent writes and checks its own copy: all but
/// MADV_WIPEONFORK and UFFDIO_MOVE refused on memory with a file (hugetlb,
/// shared memory: nothing is written there).
fn fork_flags_writes(family: &str, name: &str) -> bool {
    let refusal = (name.starts_with("MADV_WIPEONFORK") || name.starts_with("UFFDIO_MOVE"))
        && (name.contains("with hugetlb") || name.contains("MAP_SHARED"));
    family == "fork_flags" && !refusal
}

/// A fork_flags trial whose child checks data it inherited (MADV_DOFORK, a
/// range (COW-)shared with a child, moved or refused): its copy is what
/// reader damage hits.
fn fork_flags_child_checks(family: &str, name: &str) -> bool {
    family == "fork_flags" && (name.contains("MADV_DOFORK") || name.contains("shared with a child"))
}

/// A trial whose accepted failure is a race (an XFAIL row that may pass):
/// large_folio_pins' fork() while a thread writes, where the child's copy
/// is torn or not depending on timing. Damage to what the pin shows is
/// judged a torn copy, the row's symptom: never a pass, but XFAIL whether
/// the baseline happened to be torn or not.
fn racy_by_nature(name: &str) -> bool {
    name.starts_with("fork() with a fixed buffer while a thread writes")
}
