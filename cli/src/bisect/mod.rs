//! `cowgup bisect`: from trials that fail on one commit of a kernel tree
//! and pass on an older one to the commit that broke them. First both ends
//! run the selection (the trials that fail throughout on BAD and pass on
//! GOOD are the ones bisected; it stops, saying why, when there are none);
//! then `git bisect` picks commits and each is built incrementally
//! (`tree:`) and booted with only those trials, twice at once, so a trial
//! that flips between the two runs is seen and run again before it counts.
//! A build or boot that fails, or a trial that still flips, makes the
//! commit `skip`, never good or bad. The tree goes back on the branch it
//! was on however it ends (the answer, an error, SIGINT/SIGTERM/SIGHUP).
//!
//! - `git`: the tree's state, checkouts, what `git bisect` answers;
//! - `verdict`: the cells of one commit to a mark for `git bisect`.

mod git;
mod verdict;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::guest::spec::KernelSpec;
use crate::guest::topology::Topology;
use crate::guest::tree::{self, TreeSpec};
use crate::matrix::{self, Format, Kvm, MatrixArgs, Session};
use git::{Next, Repo, Restore};
use verdict::{Mark, Verdict};

pub const EXAMPLE: &str = "\
Example (a tree whose HEAD fails what v6.12 passed):
  cowgup bisect --tree ~/linux --good v6.12 --bad HEAD \"vmsplice() + unmap in child ... with base page\"
The tree is built as `cowgup matrix --kernel tree:PATH` builds it (README: \"Your own tree\"),
each commit booted twice under qemu with only the failing trials. The answer goes to stdout;
progress to stderr. Exit: 0 found, 1 only skipped commits left, 2 nothing to bisect or bad
arguments, 130 stopped by a signal (the tree is put back on its branch in every case).";

#[derive(Args, Clone, Debug)]
pub struct BisectArgs {
    /// The kernel tree (a git work tree without uncommitted changes); built as `--kernel tree:PATH` builds it.
    #[arg(long, value_name = "PATH")]
    pub tree: PathBuf,
    /// A commit where the trials pass.
    #[arg(long, value_name = "REV")]
    pub good: String,
    /// A commit where they fail (a descendant of GOOD).
    #[arg(long, value_name = "REV")]
    pub bad: String,
    /// The architecture to build and boot (x86_64, arm64) [default: this host's].
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// The trials to bisect (all when no filter is given: slow, name the failing ones).
    #[command(flatten)]
    pub select: crate::SelectArgs,
    /// What each boot sets up (as `matrix --topology`: base, zram, ext4, fsdax, movable, joined with +).
    #[arg(long, value_name = "NAME", default_value = "base")]
    pub topology: Topology,
    /// Time limit of one boot (suite included), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout_cell: u64,
    /// Appended to every guest's kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// The static cowgup to put in the guests (as `matrix --guest-bin`).
    #[arg(long, value_name = "FILE")]
    pub guest_bin: Vec<PathBuf>,
    /// KVM or TCG, as `matrix --kvm` (decided once, by the first boot).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Kvm::Auto, num_args = 0..=1, default_missing_value = "on")]
    pub kvm: Kvm,
}

/// One commit's result: how it was marked, each trial's verdict, the time
/// its build and its boots took.
#[derive(Clone, Debug)]
struct Tested {
    mark: Mark,
    verdicts: BTreeMap<String, Verdict>,
    build: Duration,
    boots: Duration,
}

/// The matrix arguments of a bisect's boots: `runs` cells of one tree.
fn cells_args(
    a: &BisectArgs,
    spec: &KernelSpec,
    only: Option<&[String]>,
    runs: usize,
    kvm: Kvm,
) -> MatrixArgs {
    let select = match only {
        Some(names) => crate::SelectArgs {
            filters: names.to_vec(),
            exact: true,
            skip: vec![],
            family: vec![],
        },
        None => a.select.clone(),
    };
    // A 1 GiB trial named is run (matrix leaves them out of guests otherwise).
    let with_1g = only.is_some_and(|n| n.iter().any(|n| n.contains("1048576 kB")));
    MatrixArgs {
        kernel: vec![spec.clone()],
        topology: vec![a.topology.clone(); runs],
        jobs: Some(runs as u64),
        timeout_cell: a.timeout_cell,
        select,
        with_1g,
        thorough: false,
        damage: None,
        simulate_leak: false,
        append: a.append.clone(),
        guest_bin: a.guest_bin.clone(),
        kvm,
        dry_run: false,
        format: Format::Human,
        output: None,
        html: None,
    }
}

/// One commit: built, then booted twice at once; trials that flip are
/// booted twice more, and what those runs say counts.
fn test_commit(spec: &TreeSpec, session: &mut Session, only: Option<&[String]>) -> Tested {
    let t = Instant::now();
    let built = tree::build(spec);
    let build = t.elapsed();
    let image = match built {
        Ok(b) => b.image,
        Err(e) => {
            return Tested {
                mark: Mark::Skip(format!("the build failed: {e}")),
                verdicts: BTreeMap::new(),
                build,
                boots: Duration::ZERO,
            }
        }
    };
    let t = Instant::now();
    let cells = session.run(&[Some(Ok(image.clone()))]);
    let mut verdicts = verdict::verdicts(&cells, only);
    if let Mark::Flaky(names) = verdict::mark(&verdicts) {
        eprintln!(
            "cowgup: bisect: {} flipped between two runs; two more",
            names.join(", ")
        );
        let again = session.run(&[Some(Ok(image))]);
        verdicts.extend(verdict::verdicts(&again, Some(&names)));
    }
    let mark = match verdict::mark(&verdicts) {
        Mark::Flaky(names) => Mark::Skip(format!(
            "still flipping in two more runs: {}",
            names.join(", ")
        )),
        Mark::Skip(why) if cells.iter().all(|c| c.broken.is_some()) => Mark::Skip(format!(
            "the boot gave no result: {}",
            cells.first().and_then(|c| c.broken.clone()).unwrap_or(why)
        )),
        m => m,
    };
    Tested {
        mark,
        verdicts,
        build,
        boots: t.elapsed(),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("cowgup: bisect: {msg}");
    ExitCode::from(2)
}

pub fn bisect(a: &BisectArgs) -> ExitCode {
    let arch = match a.arch.as_deref() {
        None => crate::guest::arch::Arch::host(),
        Some(s) => match crate::guest::arch::Arch::parse(s) {
            Some(x) => x,
            None => return fail(&format!("--arch {s}: unknown (x86_64, arm64)")),
        },
    };
    let spec = TreeSpec {
        path: a.tree.clone(),
        arch,
    };
    if let Err(e) = tree::check_tree(&spec) {
        return fail(&e);
    }
    let repo = match Repo::open(&a.tree) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let (good, bad) = match (repo.commit(&a.good), repo.commit(&a.bad)) {
        (Ok(g), Ok(b)) => (g, b),
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    if !repo.is_ancestor(&good, &bad) || good == bad {
        return fail(&format!(
            "--good {} is not an ancestor of --bad {}: bisect looks for the change between them",
            a.good, a.bad
        ));
    }
    let selection = cells_args(a, &KernelSpec::Tree(spec.clone()), None, 2, a.kvm);
    if let Err(e) = matrix::check_args(&selection) {
        return fail(&e);
    }
    let was = match repo.position() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if let Err(e) = crate::stop::catch() {
        return fail(&e);
    }
    let mut restore = Restore {
        repo: &repo,
        was,
        bisecting: false,
    };
    let started = Instant::now();
    let code = run(a, &spec, &repo, &good, &bad, &mut restore);
    eprintln!(
        "cowgup: bisect: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    drop(restore);
    if let Some(sig) = crate::stop::requested() {
        eprintln!("cowgup: bisect: stopped by {sig}");
        return ExitCode::from(130);
    }
    code
}

fn interrupted() -> bool {
    crate::stop::requested().is_some()
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

/// Both ends, then `git bisect` to the answer.
fn run(
    a: &BisectArgs,
    spec: &TreeSpec,
    repo: &Repo,
    good: &str,
    bad: &str,
    restore: &mut Restore,
) -> ExitCode {
    let kspec = KernelSpec::Tree(spec.clone());
    let mut session = match Session::new(&cells_args(a, &kspec, None, 2, a.kvm)) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut tested: BTreeMap<String, Tested> = BTreeMap::new();

    eprintln!(
        "cowgup: bisect: {} commits between good {} and bad {}; first both ends",
        repo.count(good, bad),
        repo.short(good),
        repo.short(bad)
    );
    eprintln!(
        "cowgup: bisect: bad end {} {}",
        repo.short(bad),
        repo.subject(bad)
    );
    if let Err(e) = repo.checkout(bad) {
        return fail(&e);
    }
    let at_bad = test_commit(spec, &mut session, None);
    if interrupted() {
        return ExitCode::FAILURE;
    }
    let failing: Vec<String> = match &at_bad.mark {
        Mark::Bad(f) => f.iter().map(|(n, _)| n.clone()).collect(),
        Mark::Skip(why) => {
            return fail(&format!(
                "the bad end {} cannot be tested: {why}",
                repo.short(bad)
            ))
        }
        _ => {
            let passed = at_bad
                .verdicts
                .values()
                .filter(|v| **v == Verdict::Pass)
                .count();
            return fail(&format!(
                "no trial of the selection fails on the bad end {} ({} ran, {passed} passed): nothing to bisect",
                repo.short(bad),
                at_bad.verdicts.len()
            ));
        }
    };
    eprintln!(
        "cowgup: bisect: on {} these fail in both runs (built in {}, booted in {}):",
        repo.short(bad),
        secs(at_bad.build),
        secs(at_bad.boots)
    );
    if let Mark::Bad(f) = &at_bad.mark {
        for (n, why) in f {
            eprintln!("  {n}: {why}");
        }
    }
    tested.insert(bad.to_string(), at_bad);

    eprintln!(
        "cowgup: bisect: good end {} {}",
        repo.short(good),
        repo.subject(good)
    );
    if let Err(e) = repo.checkout(good) {
        return fail(&e);
    }
    // KVM or not was decided by the first boot.
    let kvm = if session.kvm() { Kvm::On } else { Kvm::Off };
    let mut targets_session = match Session::new(&cells_args(a, &kspec, Some(&failing), 2, kvm)) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let at_good = test_commit(spec, &mut targets_session, Some(&failing));
    if interrupted() {
        return ExitCode::FAILURE;
    }
    let targets: Vec<String> = failing
        .iter()
        .filter(|n| at_good.verdicts.get(*n) == Some(&Verdict::Pass))
        .cloned()
        .collect();
    for n in failing.iter().filter(|n| !targets.contains(n)) {
        eprintln!(
            "cowgup: bisect: left out {n}: on the good end it is {:?}",
            at_good.verdicts.get(n)
        );
    }
    if targets.is_empty() {
        return fail(&format!(
            "none of the failing trials passes on the good end {}: it is not good for them",
            repo.short(good)
        ));
    }
    eprintln!(
        "cowgup: bisect: {} trial(s) pass on {} and fail on {}: bisecting them",
        targets.len(),
        repo.short(good),
        repo.short(bad)
    );
    tested.insert(good.to_string(), at_good);
    let mut session = if targets == failing {
        targets_session
    } else {
        match Session::new(&cells_args(a, &kspec, Some(&targets), 2, kvm)) {
            Ok(s) => s,
            Err(e) => return fail(&e),
        }
    };

    if let Err(e) = repo.checkout(&restore.was) {
        return fail(&e);
    }
    let mut next = match repo.start(bad, good) {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    restore.bisecting = true;
    let mut step = 0;
    let mut per_step: Vec<Duration> = Vec::new();
    let answer = loop {
        match next {
            Next::Test { left, steps } => {
                if interrupted() {
                    return ExitCode::FAILURE;
                }
                step += 1;
                let head = match repo.commit("HEAD") {
                    Ok(h) => h,
                    Err(e) => return fail(&e),
                };
                let mean = per_step.iter().sum::<Duration>() / (per_step.len().max(1) as u32);
                eprintln!(
                    "cowgup: bisect: step {step} of about {}: {} {} ({left} commit(s) left after it{})",
                    step + steps as usize,
                    repo.short(&head),
                    repo.subject(&head),
                    if per_step.is_empty() {
                        String::new()
                    } else {
                        format!(", {} per step so far", secs(mean))
                    }
                );
                let t = Instant::now();
                let r = test_commit(spec, &mut session, Some(&targets));
                if interrupted() {
                    return ExitCode::FAILURE;
                }
                per_step.push(t.elapsed());
                eprintln!(
                    "cowgup: bisect: {} is {} (built in {}, booted in {}){}",
                    repo.short(&head),
                    r.mark.git(),
                    secs(r.build),
                    secs(r.boots),
                    match &r.mark {
                        Mark::Skip(why) => format!(": {why}"),
                        _ => String::new(),
                    }
                );
                next = match repo.mark(r.mark.git(), &head) {
                    Ok(n) => n,
                    Err(e) => return fail(&e),
                };
                tested.insert(head, r);
            }
            Next::FirstBad(h) => break Ok(h),
            Next::OnlySkipped(hs) => break Err(hs),
        }
    };
    let total: Duration = per_step.iter().sum();
    let summary = format!(
        "{step} step(s) after the two ends, {} per step on average",
        secs(total / (per_step.len().max(1) as u32))
    );
    match answer {
        Ok(first) => {
            println!("first bad commit: {} {}", first, repo.subject(&first));
            report(repo, &tested, &first, &targets);
            let parent = repo.commit(&format!("{first}^")).unwrap_or_default();
            println!(
                "its parent: {} {}",
                repo.short(&parent),
                repo.subject(&parent)
            );
            report(repo, &tested, &parent, &targets);
            eprintln!("cowgup: bisect: {summary}");
            ExitCode::SUCCESS
        }
        Err(candidates) => {
            println!("no single first bad commit: only skipped commits are left; it is one of");
            for c in &candidates {
                let why = match tested.get(c).map(|t| &t.mark) {
                    Some(Mark::Skip(w)) => format!(" (skipped: {w})"),
                    _ => String::new(),
                };
                println!("  {} {}{why}", repo.short(c), repo.subject(c));
            }
            eprintln!("cowgup: bisect: {summary}");
            ExitCode::FAILURE
        }
    }
}

/// The trials' verdicts on `commit`, as tested.
fn report(repo: &Repo, tested: &BTreeMap<String, Tested>, commit: &str, targets: &[String]) {
    let Some(t) = tested.get(commit) else {
        println!(
            "  (not tested: {} was skipped or not reached)",
            repo.short(commit)
        );
        return;
    };
    for n in targets {
        let line = match t.verdicts.get(n) {
            Some(Verdict::Pass) => "pass".to_string(),
            Some(Verdict::Fail(why)) => format!("FAIL ({why})"),
            Some(Verdict::Flaky { passed, failed }) => {
                format!("flaky (passed {passed}, failed {failed})")
            }
            Some(Verdict::Unknown(why)) => format!("unknown ({why})"),
            None => "not run".into(),
        };
        println!("  {n}: {line}");
    }
}
