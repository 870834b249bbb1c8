//! `cowgup`: the front end people type. Here: the arguments, `list`,
//! `probe`, `restore`, and which reports `run` writes where (every report
//! is `cowgup_tap::report`'s); the runs are the session from
//! `cowgup-tests`; `bench` and `matrix` are modules of their own.

mod bench;
mod bisect;
mod guest;
mod help;
mod matrix;
mod stop;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use cowgup_harness::probe::Capabilities;
use cowgup_tap::report::{Document, Events, Human, TapReporter};
use cowgup_tap::stream::{drive, Reporter};
use cowgup_tap::Dialect;
use cowgup_tests::session::{default_state_dir, Options, Session};
use cowgup_tests::{catalogue, Scenario, Selection};

#[derive(Parser)]
#[command(name = "cowgup", version, about = help::ABOUT)]
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
    /// Run the suite on several kernels (the host, kernel images, Debian's kernels) under qemu; one table.
    Matrix(matrix::MatrixArgs),
    /// Find the commit of a kernel tree that made trials fail: both ends checked, then git bisect, one incremental build and two boots per step.
    #[command(after_help = bisect::EXAMPLE)]
    Bisect(bisect::BisectArgs),
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
    /// Only trials of this family (repeatable; the families are listed below).
    #[arg(long, value_name = "ID", value_parser = clap::builder::PossibleValuesParser::new(help::family_ids()))]
    pub family: Vec<String>,
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
    /// Wait up to SECS for another cowgup to finish with this host's settings (default: fail at once).
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub lock_wait: u64,
    /// Add the expectation rows of FILE (TOML, as tests/expectations.toml) to the built-in ones:
    /// known issues of your tree, reported as XFAIL (repeatable; after those of $COWGUP_EXPECTATIONS).
    #[arg(long, value_name = "FILE")]
    pub expectations: Vec<PathBuf>,
    /// Run up to N trials side by side (default 1: one at a time). Trials of the cow and
    /// gup_longterm families that need the same host settings (hugetlb trials need none) share a
    /// batch of up to 16 x N, N at a time, within the hugetlb pool (provisioned for N) and
    /// gup_test's one slot; pin balance and the kernel log are judged per batch, and a batch that
    /// does not hold is run again one trial at a time. Results and their order are
    /// those of a serial run.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub jobs: u64,
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
            lock_wait: Duration::from_secs(self.lock_wait),
            jobs: self.jobs as usize,
            simulate_leak: false,
            expectations: cowgup_tests::expectations::files_from_env()
                .into_iter()
                .chain(self.expectations.iter().cloned())
                .collect(),
        }
    }
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    session: SessionArgs,
    /// Print every result with its diagnostics, evidence and checks.
    #[arg(short, long)]
    verbose: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Write the report to FILE (for tap, ktap, json and junit the human report still goes to the terminal).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write every event to FILE as it happens, one JSON object a line, flushed per line
    /// (run_started, trial_started, trial_finished, run_finished; any format). A run that
    /// dies keeps every result before it there; a serial port works (`cowgup matrix` uses ttyS1).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Test-only: keep every io_uring fixed buffer's pins after its trial, as a kernel
    /// that leaks pins would (what `matrix --simulate-leak` runs in guests).
    #[arg(long, hide = true)]
    simulate_leak: bool,
    /// Test-only: damage one copy per trial as a kernel bug would, SIDE:KIND:PAGE
    /// (fixtures/src/damage.rs; what `matrix --damage` runs in guests).
    #[arg(long, hide = true, value_name = "SIDE:KIND:PAGE")]
    damage: Option<String>,
}

/// The reports of `cowgup_tap::report` that `run --format` chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// progress and a summary for people
    Human,
    /// kselftest TAP 13, as tools/testing/selftests/kselftest.h writes it
    Tap,
    /// KTAP version 1 (Documentation/dev-tools/ktap.rst)
    Ktap,
    /// one JSON document: probe, host changes, every trial with its evidence and checks
    Json,
    /// JUnit XML, one testsuite per family
    Junit,
}

/// The command line, its help text built from the catalogue's families.
fn command() -> clap::Command {
    Cli::command()
        .after_long_help(help::top())
        .after_help("Families, filters, report formats, host settings and exit codes: --help")
        .mut_subcommand("run", |c| c.after_long_help(help::run()))
        .mut_subcommand("list", |c| c.after_long_help(help::list()))
        .mut_subcommand("bench", |c| c.after_long_help(help::list()))
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Probe => {
            print!("{}", Capabilities::probe().table());
            ExitCode::SUCCESS
        }
        Command::List(sel) => match select(&sel) {
            Ok((_, chosen)) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                // A reader that stops early (`| head`) ends the listing quietly.
                for s in chosen {
                    if writeln!(out, "{}", s.name).is_err() {
                        break;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fatal(&e),
        },
        Command::Restore(state) => restore(&state),
        Command::Run(args) => run(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Matrix(args) => matrix::matrix(&args),
        Command::Bisect(args) => bisect::bisect(&args),
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
        .filter(|s| sel.family.is_empty() || sel.family.iter().any(|f| f == s.family.id()))
        .filter(|s| selection.selects(&s.name))
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "no trial name {} {:?}{}{} (see `cowgup list`)",
            if sel.exact { "equals" } else { "contains" },
            sel.filters,
            if sel.family.is_empty() {
                String::new()
            } else {
                format!(" in families {:?}", sel.family)
            },
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

/// `--events FILE`: a file (truncated) or a device such as a serial port
/// (never made our controlling terminal); a terminal gets its
/// `trial_started` lines drained before the trial runs.
fn open_events(p: &std::path::Path) -> Result<Events<std::fs::File>, String> {
    use std::io::IsTerminal;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOCTTY)
        .open(p)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    let fd = f.as_raw_fd();
    let tty = f.is_terminal();
    let events = Events::new(f);
    Ok(if tty { events.draining(fd) } else { events })
}

/// The reports `args` ask for, in the order they see each event: the human
/// report in FILE or on the terminal, or the machine-readable one there and
/// the human one on the terminal too when FILE takes the machine one.
fn reporters(
    args: &RunArgs,
    caps: &Capabilities,
    sink: Box<dyn std::io::Write>,
    events: Option<Events<std::fs::File>>,
) -> Vec<Box<dyn Reporter>> {
    let mut reporters: Vec<Box<dyn Reporter>> = Vec::new();
    // First: a result leaves on the events line before anything else is written.
    if let Some(e) = events {
        reporters.push(Box::new(e));
    }
    if args.format != Format::Human && args.output.is_some() {
        reporters.push(Box::new(Human::new(std::io::stdout(), args.verbose, true)));
    }
    let tap = |sink: Box<dyn std::io::Write>, dialect| {
        TapReporter::new(sink, dialect).with_preamble(vec![format!(
            "cowgup {} on {}",
            env!("CARGO_PKG_VERSION"),
            caps.kernel_release
        )])
    };
    reporters.push(match args.format {
        Format::Human => Box::new(Human::new(sink, args.verbose, args.output.is_none())),
        Format::Tap => Box::new(tap(sink, Dialect::Kselftest)),
        Format::Ktap => Box::new(tap(sink, Dialect::Ktap)),
        Format::Json => Box::new(Document::json(sink)),
        Format::Junit => Box::new(Document::junit(sink)),
    });
    reporters
}

/// Run the selection, every report a consumer of the one event stream
/// (`cowgup_tap::stream`): the human report on the terminal (or in FILE), and
/// the machine-readable one on stdout or in FILE.
fn run(args: &RunArgs) -> ExitCode {
    if let Some(d) = &args.damage {
        if let Err(e) = cowgup_fixtures::damage::Damage::parse(d) {
            return fatal(&e);
        }
        // Read by the damage hooks in each trial's process; no thread runs yet.
        std::env::set_var(cowgup_fixtures::damage::VAR, d);
    }
    let (caps, chosen) = match select(&args.select) {
        Ok(x) => x,
        Err(e) => return fatal(&e),
    };
    // Open the output before touching the host: a bad path must change nothing.
    let sink: Box<dyn std::io::Write> = match &args.output {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fatal(&format!("cannot write {}: {e}", p.display())),
        },
        None => Box::new(std::io::stdout()),
    };
    let events = match args.events.as_deref().map(open_events).transpose() {
        Ok(e) => e,
        Err(e) => return fatal(&e),
    };
    let refs: Vec<&Scenario> = chosen.iter().collect();
    let opts = Options {
        simulate_leak: args.simulate_leak,
        ..args.session.options()
    };
    let mut session = match Session::start_with(&opts, caps.clone(), &refs) {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };
    let mut reporters = reporters(args, &caps, sink, events);
    let mut refs: Vec<&mut dyn Reporter> = reporters.iter_mut().map(|r| r.as_mut()).collect();
    match drive(&mut session, &chosen, &mut refs) {
        Ok(end) if end.succeeded() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cowgup: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}
