//! `cowgup`: the front end people type. Parsing arguments and printing are
//! here; everything else is the session from `cowgup-tests`.

mod bench;
mod formats;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cowgup_harness::probe::Capabilities;
use cowgup_tests::session::{default_state_dir, Options, Session};
use cowgup_tests::{catalogue, Scenario, Selection};

const ABOUT: &str = "Runs the Linux kernel's COW/GUP selftest catalogue (tools/testing/selftests/mm/cow.c) \
against the running kernel and proves, per page, that no data leaks between parent and child and that \
pins never go stale.";

const AFTER_HELP: &str = "\
Outcomes:
  pass   the check ran and held
  fail   the kernel leaked data, a pin went stale, or the trial crashed (signal named)
  xfail  a known kernel behaviour the expectation table names (e.g. hugetlb + vmsplice)
  xpass  passed where a failure was expected and a pass would be news
  skip   the host could not provide what the trial needs; the reason says what
  error  the trial timed out or could not be run at all

Host settings:
  As root, `run` reserves hugetlb pages (2 per size, 1 GiB included when the kernel can),
  enables a temporary swap file, sets per-size THP policy around each trial and mounts
  debugfs, all journaled in the state directory before each change and restored on exit,
  on SIGINT/SIGTERM/SIGHUP and on panic. After a SIGKILL run `cowgup restore` (the next
  run also restores first). --no-provision leaves the host exactly alone.

Examples:
  cowgup run                          the whole catalogue
  cowgup run vmsplice --skip hugetlb  names containing 'vmsplice' but not 'hugetlb'
  cowgup run --exact 'Basic COW ... with memfd'
  cowgup list 'THP (2048 kB)'         what would run
  cowgup bench --repeat 5             wall time per backing group";

#[derive(Parser)]
#[command(name = "cowgup", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run trials and report (a progress line on a terminal, every result otherwise).
    Run(RunArgs),
    /// List trial names, one per line, in run order.
    List(SelectArgs),
    /// Show what the running kernel offers (sizes, pools, swap, io_uring, gup_test, ...).
    Probe,
    /// Put back host settings a killed run left behind (replays the journal).
    Restore(StateArgs),
    /// Time the selected trials per backing group (optionally against upstream's `cow`).
    Bench(bench::BenchArgs),
}

#[derive(Args, Clone, Debug)]
pub struct SelectArgs {
    /// Run trials whose names contain any FILTER (all when none given).
    pub filters: Vec<String>,
    /// Match FILTERs (and --skip) against whole names.
    #[arg(long)]
    pub exact: bool,
    /// Leave out trials whose names contain PATTERN (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub skip: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct StateArgs {
    /// Where the journal, lock and swap file live [default: $COWGUP_STATE_DIR or /var/tmp/cowgup]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct SessionArgs {
    /// Leave host settings alone: no hugetlb pages, swap, THP policy or debugfs mount.
    #[arg(long)]
    pub no_provision: bool,
    /// Stamp and verify every byte of every page instead of one word per page.
    #[arg(long)]
    pub thorough: bool,
    /// Time limit per trial, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    #[command(flatten)]
    pub state: StateArgs,
}

impl SessionArgs {
    pub fn options(&self) -> Options {
        Options {
            provision: !self.no_provision,
            thorough: self.thorough,
            timeout: Duration::from_secs(self.timeout),
            state_dir: self
                .state
                .state_dir
                .clone()
                .unwrap_or_else(default_state_dir),
            lock_wait: Duration::ZERO,
        }
    }
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    session: SessionArgs,
    /// Print every result with its diagnostics and evidence.
    #[arg(short, long)]
    verbose: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = formats::Format::Human)]
    format: formats::Format,
    /// Write the report to FILE (the human report then still goes to the terminal).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe => {
            print!("{}", Capabilities::probe().table());
            ExitCode::SUCCESS
        }
        Command::List(sel) => match select(&sel) {
            Ok((_, chosen)) => {
                for s in chosen {
                    println!("{}", s.name);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fatal(&e),
        },
        Command::Restore(state) => restore(&state),
        Command::Run(args) => run(&args),
        Command::Bench(args) => bench::bench(&args),
    }
}

pub fn fatal(msg: &str) -> ExitCode {
    eprintln!("cowgup: {msg}");
    ExitCode::from(2)
}

/// The catalogue for this kernel and the scenarios the arguments select.
pub fn select(sel: &SelectArgs) -> Result<(Capabilities, Vec<Scenario>), String> {
    let caps = Capabilities::probe();
    let selection = Selection {
        filters: sel.filters.clone(),
        exact: sel.exact,
        skip: sel.skip.clone(),
    };
    let chosen: Vec<Scenario> = catalogue(&caps)
        .into_iter()
        .filter(|s| selection.selects(&s.name))
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "no trial name {} {:?}{} (see `cowgup list`)",
            if sel.exact { "equals" } else { "contains" },
            sel.filters,
            if sel.skip.is_empty() {
                String::new()
            } else {
                format!(" once {:?} are skipped", sel.skip)
            }
        ));
    }
    Ok((caps, chosen))
}

fn restore(state: &StateArgs) -> ExitCode {
    let dir = state.state_dir.clone().unwrap_or_else(default_state_dir);
    if !nix::unistd::geteuid().is_root() {
        return fatal("restore changes host settings and needs root");
    }
    match cowgup_harness::guard::restore_from_journal(&dir) {
        Ok(None) => {
            println!(
                "cowgup: nothing to restore (no journal in {})",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Some(report)) => {
            for c in &report.changed {
                println!("cowgup: restored {c}");
            }
            if report.changed.is_empty() {
                println!("cowgup: journal replayed; the host already had its original settings");
            }
            for p in &report.problems {
                eprintln!("cowgup: could not restore: {p}");
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fatal(&format!("cannot restore from {}: {e}", dir.display())),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    use formats::{Format, Record, Streaming};
    let (caps, chosen) = match select(&args.select) {
        Ok(x) => x,
        Err(e) => return fatal(&e),
    };
    // Open the output before touching the host: a bad path must change nothing.
    let mut file = match &args.output {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(std::io::BufWriter::new(f)),
            Err(e) => return fatal(&format!("cannot write {}: {e}", p.display())),
        },
        None => None,
    };
    let refs: Vec<&Scenario> = chosen.iter().collect();
    let mut session = match Session::start_with(&args.session.options(), caps, &refs) {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };
    let human = args.format == Format::Human || file.is_some();
    let mut reporter = human.then(|| report::Human::new(args.verbose, chosen.len()));
    if let Some(r) = &reporter {
        r.header(&session);
    }
    let mut stream = match args.format {
        Format::Tap | Format::Ktap => {
            let sink: Box<dyn std::io::Write> = match file.take() {
                Some(f) => Box::new(f),
                None => Box::new(std::io::stdout()),
            };
            match Streaming::new(sink, args.format, chosen.len(), &session) {
                Ok(s) => Some(s),
                Err(e) => return fatal(&format!("cannot write the report: {e}")),
            }
        }
        _ => None,
    };
    let mut record = Record::new(&session);
    for s in &chosen {
        if let Some(r) = &reporter {
            r.starting(&s.name);
        }
        match session.run(s) {
            Ok(r) => {
                if let Some(h) = &mut reporter {
                    h.finished(&r);
                }
                if let Some(st) = &mut stream {
                    if let Err(e) = st.trial(&r) {
                        eprintln!("cowgup: cannot write the report: {e}");
                        session.finish();
                        return ExitCode::FAILURE;
                    }
                }
                record.add(s, &r);
            }
            Err(stop) => {
                if let Some(h) = &reporter {
                    h.interrupted();
                }
                session.abort(stop);
            }
        }
    }
    let restored = session.finish();
    let ok = match &reporter {
        Some(h) => h.summary(restored.as_ref()),
        None => record.trials.iter().all(|(_, _, r)| r.outcome.is_success()),
    };
    let written = match (&mut stream, args.format) {
        (Some(st), _) => st.tap.finish(),
        (None, Format::Json) => write_doc(&args.output, &formats::json(&record, restored.as_ref())),
        (None, Format::Junit) => write_doc(&args.output, &formats::junit(&record)),
        _ => Ok(()),
    };
    if let Err(e) = written {
        eprintln!("cowgup: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    if ok && restored.as_ref().is_none_or(|r| r.is_clean()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_doc(output: &Option<PathBuf>, text: &str) -> std::io::Result<()> {
    match output {
        Some(p) => std::fs::write(p, text),
        None => {
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())
        }
    }
}
