//! What `cowgup --help` and `cowgup run --help` teach: the families (the
//! rows of the registry, `cowgup_tests::FAMILIES`, which also builds the
//! catalogue, so the list cannot drift from it), how
//! names are selected, the report formats, host settings, exit codes.

use cowgup_tests::Family;

/// Every family's id, in catalogue order (`--family`'s values).
pub fn family_ids() -> Vec<&'static str> {
    Family::all().map(Family::id).collect()
}

pub const ABOUT: &str = "Runs the Linux kernel's COW/GUP selftests (tools/testing/selftests/mm \
cow.c, gup_longterm.c, gup_test.c, and what they never cover) against the running kernel, and \
proves per page that no data leaks between parent and child and that pins never go stale.";

fn families() -> String {
    let mut s = String::from(
        "Families (select with --family ID; `cowgup list --family ID` prints a family's trials):\n",
    );
    for f in Family::all() {
        s.push_str(&format!("  {:<16} {}\n", f.id(), f.title()));
        for line in wrap(f.covers(), 70) {
            s.push_str(&format!("  {:<16}   {line}\n", ""));
        }
    }
    s
}

/// Words into lines of at most `width` characters (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.len() + 1 + word.len() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

const SELECTING: &str = "\
Selecting trials (cow and gup_longterm names are upstream's, byte for byte:
`<case> ... with <backing>`; `cowgup list` prints them):
  FILTER...        run names that contain any FILTER (all when none given)
  --skip PATTERN   leave out names that contain PATTERN (repeatable)
  --exact          FILTERs and PATTERNs must equal whole names
  --family ID      only these families (repeatable); combines with FILTERs
  A selected trial the host cannot serve is reported as a skip, with its reason.
";

const REPORTS: &str = "\
Reports (--format):
  human   (default) a progress line on a terminal, every result that is not a success in
          full, skip/xfail reasons and checks that could not be made grouped with counts
          (NOTE lines), the totals and whether host settings were restored. -v prints every
          result with its diagnostics, evidence and checks.
  tap     kselftest TAP 13, as kselftest.h writes it; written as the run goes
  ktap    KTAP version 1; written as the run goes
  json    one document at the end: probe, host changes, totals, and per trial its outcome,
          reason, duration, diagnostics, evidence and checks as structured fields
  junit   JUnit XML at the end, one testsuite per family; failures, errors and skips carry
          their messages, evidence and checks go to system-out
  With --output FILE the report goes to FILE; for tap, ktap, json and junit the human
  report still goes to the terminal.
  --events FILE (with any format) also writes each event the moment it happens, one JSON
  object a line, flushed per line: run_started, trial_started (number, name, family),
  trial_finished (the json report's trial object), run_finished (totals); each with
  \"event\" and \"seq\" first. A run that dies or hangs keeps every result before it, and
  the last trial_started names the trial it was in. FILE may be a serial port.
";

const RUNNING: &str = "\
How trials run:
  --thorough       stamp and verify every byte of every page (default: one distinct word per
                   page and writer, with sharing proven by PFNs)
  --timeout SECS   a trial that runs longer is killed and reported as an error
";

const HOST: &str = "\
Host settings:
  As root, `run` reserves hugetlb pages (2 per size, 1 GiB included when the kernel can),
  enables a temporary swap file, sets per-size THP policy around each trial and mounts
  debugfs for gup_test, only for what the selected trials need. Each change is journaled
  in the state directory (--state-dir, $COWGUP_STATE_DIR, /var/tmp/cowgup) before it is
  made, and put back on exit, on SIGINT/SIGTERM/SIGHUP (the run then dies of the signal)
  and on panic. After a SIGKILL run `cowgup restore` replays the journal (exit 1 if
  something could not be put back); the next run also does so first. --no-provision
  leaves the host exactly alone; without root nothing is changed either, and trials that
  need a change skip.
";

const OUTCOMES: &str = "\
Outcomes:
  pass   the check ran and held
  fail   the kernel leaked data, a pin went stale, or the trial crashed (signal named)
  xfail  a known kernel behaviour the expectation table names (e.g. hugetlb + vmsplice)
  xpass  passed where a failure was expected and a pass would be news
  skip   the host could not provide what the trial needs; the reason says what
  error  the trial timed out or could not be run at all
";

const EXIT: &str = "\
Exit codes of `run`:
  0  every result is pass, xfail or skip, and host settings were restored
  1  a fail, xpass or error, a restore problem, or a report that could not be written
  2  the run could not start: bad arguments, no trial selected, FILE not writable, or
     another cowgup is changing this host's settings (--lock-wait SECS waits for it)
  A run stopped by SIGINT, SIGTERM or SIGHUP restores the host, then dies of the signal.
";

const EXAMPLES: &str = "\
Examples:
  cowgup run                          the whole catalogue
  cowgup run vmsplice --skip hugetlb  names containing 'vmsplice' but not 'hugetlb'
  cowgup run --exact 'Basic COW ... with memfd'
  cowgup run --family gup_longterm --format junit -o junit.xml
  cowgup list 'THP (2048 kB)'         what would run
  cowgup bench --repeat 5             wall time per backing group
  cowgup restore                      after a run that was killed";

/// `cowgup --help`.
pub fn top() -> String {
    [
        families(),
        SELECTING.into(),
        REPORTS.into(),
        RUNNING.into(),
        HOST.into(),
        OUTCOMES.into(),
        EXIT.into(),
        EXAMPLES.into(),
    ]
    .join("\n")
}

/// `cowgup run --help`.
pub fn run() -> String {
    [
        families(),
        SELECTING.into(),
        REPORTS.into(),
        RUNNING.into(),
        OUTCOMES.into(),
        EXIT.into(),
    ]
    .join("\n")
}

/// `cowgup list --help` and `cowgup bench --help`.
pub fn list() -> String {
    [families(), SELECTING.into()].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_family_of_the_catalogue() {
        let caps = cowgup_harness::probe::Capabilities::probe();
        for s in cowgup_tests::catalogue(&caps) {
            assert!(
                family_ids().contains(&s.family.id()),
                "{} not in the registry",
                s.family.id()
            );
        }
        for text in [top(), run(), list()] {
            for f in Family::all() {
                assert!(text.contains(f.id()) && text.contains(f.title()));
            }
            assert!(!text.to_lowercase().contains("issue"));
            assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
        }
    }

    #[test]
    fn wrap_keeps_words_whole() {
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
    }
}
