//! The one test runner of the workspace's `harness = false` test binaries:
//! libtest-mimic, with cargo test's command line. libtest takes several
//! filters (`cargo test -- verifier grandchild` runs every test whose name
//! contains either), libtest-mimic's `Arguments` only one; so the positional
//! filters are taken out of the command line here, the rest is parsed by
//! libtest-mimic, and the trial list is filtered here, by libtest's rules
//! ([`Selection`]), so that `--list` and the run agree.
//!
//! It lives in the harness crate because that is the crate every test binary
//! of the workspace already depends on (the catalogue, the CLI's and the TAP
//! adapter's tests all run trials through it), and the catalogue's own
//! selection (`cowgup run FILTER...`) uses the same [`Selection`].
//!
//! Every binary runs its tests one at a time on the main thread
//! (`--test-threads 1`, whatever is asked): they fork, which is only sound
//! from a single-threaded process, or they own the host.
//!
//! Tests that change global host settings (hugetlb pools, THP and KSM knobs,
//! swap, mounts) or hold the host lock are named `host::...` ([`HOST`]), so
//! that `cargo test -- --skip host::` runs none of them.

use std::ffi::OsString;

pub use libtest_mimic::{Completion, Conclusion, Failed, Trial};

/// The name prefix of tests that change global host settings or hold the
/// host lock: `cargo test -- --skip host::` leaves the host alone. (Unit
/// tests get it as a `mod host`: `guard::tests::host::...`.)
pub const HOST: &str = "host::";

/// `name` with the [`HOST`] prefix.
pub fn host(name: impl std::fmt::Display) -> String {
    format!("{HOST}{name}")
}

/// libtest's selection rules: a name is run if it contains any filter (or
/// equals one, with `exact`), and contains no skip pattern (equals none,
/// with `exact`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub filters: Vec<String>,
    pub exact: bool,
    pub skip: Vec<String>,
}

impl Selection {
    pub fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skip.iter().any(matches)
    }
}

/// Options of libtest-mimic's `Arguments` that take a value (`--skip X` as
/// well as `--skip=X`): their value is not a filter.
const TAKES_VALUE: &[&str] = &[
    "--skip",
    "--test-threads",
    "--logfile",
    "--color",
    "--format",
    "-Z",
];

/// Split a command line (without the program name) into the positional
/// filters and everything else, as libtest does: an argument is a filter
/// unless it starts with `-` (a lone `-` is a filter) or is the value of an
/// option that takes one; after `--` every argument is a filter.
pub fn split(args: impl IntoIterator<Item = OsString>) -> (Vec<String>, Vec<OsString>) {
    let mut filters = Vec::new();
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            filters.extend(args.map(|a| a.to_string_lossy().into_owned()));
            break;
        }
        if !text.starts_with('-') || text == "-" {
            filters.push(text.into_owned());
            continue;
        }
        let value_follows = TAKES_VALUE.contains(&text.as_ref());
        rest.push(arg);
        if value_follows {
            rest.extend(args.next());
        }
    }
    (filters, rest)
}

/// Stands for "not selected": deselected trials get it as their kind and
/// libtest-mimic skips it, so its summary counts them as filtered out. (No
/// argument can hold a NUL, so no user's `--skip` or test name is it.)
const DESELECTED: &str = "\0cowgup: not selected\0";

/// A test binary's command line.
#[derive(Clone, Debug)]
pub struct Args {
    pub selection: Selection,
    /// Only tests marked ignored (`--ignored`).
    pub ignored: bool,
    /// Only list the tests (`--list`).
    pub list: bool,
    mimic: libtest_mimic::Arguments,
}

impl Args {
    /// This process's command line. Bad usage exits 2 with libtest-mimic's
    /// message; `--help` prints its help.
    pub fn from_env() -> Args {
        Self::parse(std::env::args_os())
    }

    /// A command line, the program name first.
    pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Args {
        let mut argv = argv.into_iter();
        let program = argv.next().unwrap_or_else(|| "test".into());
        let (filters, rest) = split(argv);
        let mimic = libtest_mimic::Arguments::from_iter(std::iter::once(program).chain(rest));
        Args {
            selection: Selection {
                filters,
                exact: mimic.exact,
                skip: mimic.skip.clone(),
            },
            ignored: mimic.ignored,
            list: mimic.list,
            mimic,
        }
    }

    /// Whether the test by this name is selected to run (or to be listed):
    /// its name passes the filters and, with `--ignored`, it is marked ignored.
    pub fn selects(&self, name: &str, marked_ignored: bool) -> bool {
        self.selection.selects(name) && (marked_ignored || !self.ignored)
    }

    /// Run (or list) the selected trials, one at a time on the main thread,
    /// in the order given; libtest's report and summary. Trials not selected
    /// count as filtered out.
    pub fn run(&self, trials: Vec<Trial>) -> Conclusion {
        let mut mimic = self.mimic.clone();
        mimic.test_threads = Some(1);
        // The filtering is done here: libtest-mimic only drops what is
        // marked deselected (by substring, so `exact` must be off for it).
        mimic.filter = None;
        mimic.exact = false;
        mimic.skip = vec![DESELECTED.into()];
        let trials = trials
            .into_iter()
            .map(|t| {
                if self.selects(t.name(), t.has_ignored_flag()) {
                    t
                } else {
                    t.with_kind(DESELECTED)
                }
            })
            .collect();
        libtest_mimic::run(&mimic, trials)
    }
}

/// The whole `main` of a test binary whose tests are these trials.
pub fn main(trials: Vec<Trial>) -> ! {
    Args::from_env().run(trials).exit()
}

/// A check that is `Ok` or says what is wrong, as a libtest-mimic trial.
pub fn check(
    name: impl Into<String>,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Trial {
    Trial::test(name, move || f().map_err(Failed::from))
}

/// A check that runs only where `unable` finds nothing missing (root, a
/// tool); elsewhere it is reported as ignored, with `unable`'s reason.
pub fn check_unless(
    name: impl Into<String>,
    unable: impl FnOnce() -> Option<String> + Send + 'static,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Trial {
    Trial::ignorable_test(name, move || match unable() {
        Some(why) => Ok(Completion::ignored_with(why)),
        None => f().map(|()| Completion::Completed).map_err(Failed::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn positional_filters_are_taken_out_and_option_values_stay() {
        let (filters, rest) = split(os(&[
            "verifier",
            "--skip",
            "host::",
            "grandchild",
            "--exact",
            "--test-threads=2",
            "--format",
            "terse",
            "-Z",
            "unstable-options",
            "-Zunstable-options",
            "-q",
            "-",
            "--skip=hugetlb",
            "--color",
            "never",
            "--nocapture",
        ]));
        assert_eq!(filters, ["verifier", "grandchild", "-"]);
        assert_eq!(
            rest,
            os(&[
                "--skip",
                "host::",
                "--exact",
                "--test-threads=2",
                "--format",
                "terse",
                "-Z",
                "unstable-options",
                "-Zunstable-options",
                "-q",
                "--skip=hugetlb",
                "--color",
                "never",
                "--nocapture",
            ])
        );
    }

    #[test]
    fn after_a_double_dash_everything_is_a_filter() {
        let (filters, rest) = split(os(&["--list", "a", "--", "--b", "c"]));
        assert_eq!(filters, ["a", "--b", "c"]);
        assert_eq!(rest, os(&["--list"]));
        // An option that takes a value at the very end has none: libtest-mimic says so.
        let (filters, rest) = split(os(&["x", "--skip"]));
        assert_eq!((filters, rest), (vec!["x".to_string()], os(&["--skip"])));
    }

    #[test]
    fn nextest_command_lines_parse() {
        let list = Args::parse(os(&["bin", "--list", "--format", "terse"]));
        assert!(list.list && list.selection == Selection::default());
        let one = Args::parse(os(&[
            "bin",
            "--exact",
            "a b: c",
            "--nocapture",
            "--ignored",
        ]));
        assert!(!one.list && one.ignored);
        assert_eq!(
            one.selection,
            Selection {
                filters: vec!["a b: c".into()],
                exact: true,
                skip: vec![],
            }
        );
        assert!(one.selects("a b: c", true));
        assert!(
            !one.selects("a b: c", false),
            "--ignored: only ignored tests"
        );
        assert!(!one.selects("a b: cd", true));
    }

    #[test]
    fn several_filters_select_any_and_skips_win() {
        let args = Args::parse(os(&[
            "bin",
            "verifier",
            "grandchild",
            "--skip",
            "host::",
            "--skip",
            "aborts",
        ]));
        assert!(args.selects("a grandchild reports pass", false));
        assert!(args.selects("verifier: damaged trials fail", false));
        assert!(!args.selects("host::verifier: damaged trials fail", false));
        assert!(!args.selects(
            "a grandchild reports pass, then the trial process aborts",
            false
        ));
        assert!(!args.selects("segfaults", false));
        let exact = Args::parse(os(&[
            "bin",
            "--exact",
            "passes",
            "segfaults",
            "--skip",
            "pass",
        ]));
        assert!(exact.selects("passes", false) && exact.selects("segfaults", false));
        assert!(!exact.selects("passes afterwards", false));
        let exact_skip = Args::parse(os(&["bin", "--exact", "--skip", "passes"]));
        assert!(!exact_skip.selects("passes", false));
        assert!(exact_skip.selects("passes afterwards", false));
    }

    #[test]
    fn selection_follows_libtest() {
        let s = Selection {
            filters: vec!["vmsplice".into()],
            exact: false,
            skip: vec!["hugetlb".into()],
        };
        assert!(s.selects("vmsplice() + unmap in child ... with base page"));
        assert!(!s.selects("vmsplice() + unmap in child ... with hugetlb (2048 kB)"));
        assert!(!s.selects("Basic COW ... with memfd"));
        let exact = Selection {
            filters: vec!["Basic COW ... with memfd".into()],
            exact: true,
            skip: vec![],
        };
        assert!(exact.selects("Basic COW ... with memfd"));
        assert!(!exact.selects("Basic COW ... with memfd hugetlb (2048 kB)"));
    }

    #[test]
    fn deselected_trials_are_counted_as_filtered_out_and_not_listed() {
        let log = std::env::temp_dir().join(format!("cowgup-libtest-{}", std::process::id()));
        let trials = || {
            ["a", "b", "c", "d"]
                .map(|n| check(n, move || Err(format!("{n} must not run"))))
                .into_iter()
                .map(|t| {
                    let ignored = t.name() != "a";
                    t.with_ignored_flag(ignored)
                })
                .collect()
        };
        let args = |extra: &[&str]| {
            let mut v = os(&["bin", "--exact", "b", "c", "--logfile"]);
            v.push(log.clone().into_os_string());
            v.extend(os(extra));
            Args::parse(v)
        };
        let c = args(&[]).run(trials());
        // b and c are marked ignored and not run; a and d are filtered out.
        assert_eq!((c.num_ignored, c.num_filtered_out, c.num_failed), (2, 2, 0));
        let _ = args(&["--list"]).run(trials());
        let listed = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(listed, "b: test\nc: test\n");
    }
}
