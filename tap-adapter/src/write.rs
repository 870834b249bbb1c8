//! The writer: the one place in cowgup that formats a TAP result line
//! (`ok N ...` / `not ok N ...`). Every line is flushed as it is written, so output is never
//! held in a buffer a fork() could duplicate, and a runner that kills us on
//! timeout still has every line printed so far.

use std::io::{self, Write};

use cowgup_harness::{OutcomeKind, Totals};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// kselftest.h: `TAP version 13` (omitted when KSFT_TAP_LEVEL is set),
    /// directives before the description (`ok 3 # SKIP desc`), `# Totals:` at the end.
    Kselftest,
    /// Documentation/dev-tools/ktap.rst: `KTAP version 1`, directives after it
    /// (`ok 3 desc # SKIP reason`).
    Ktap,
}

pub struct TapWriter<W: Write> {
    out: W,
    dialect: Dialect,
    plan: Option<usize>,
    totals: Totals,
    printed_anything: bool,
}

impl<W: Write> TapWriter<W> {
    pub fn new(out: W, dialect: Dialect) -> Self {
        TapWriter {
            out,
            dialect,
            plan: None,
            totals: Totals::default(),
            printed_anything: false,
        }
    }

    fn line(&mut self, s: &str) -> io::Result<()> {
        self.printed_anything = true;
        self.out.write_all(s.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// `ksft_print_header()`: the version line (kselftest skips it when
    /// KSFT_TAP_LEVEL is set, because an outer runner already printed one).
    pub fn header(&mut self, ksft_tap_level_set: bool) -> io::Result<()> {
        match self.dialect {
            Dialect::Kselftest if ksft_tap_level_set => Ok(()),
            Dialect::Kselftest => self.line("TAP version 13"),
            Dialect::Ktap => self.line("KTAP version 1"),
        }
    }

    pub fn plan(&mut self, n: usize) -> io::Result<()> {
        self.plan = Some(n);
        self.line(&format!("1..{n}"))
    }

    /// `ksft_print_msg()`: `# ` + message, one line per line of text.
    pub fn diag(&mut self, msg: &str) -> io::Result<()> {
        for l in msg.lines() {
            self.line(&format!("# {l}"))?;
        }
        Ok(())
    }

    /// One result. `desc` is the test name; `reason` is used by KTAP's
    /// directive text (kselftest puts only the name after its directive).
    pub fn result(&mut self, kind: OutcomeKind, desc: &str, reason: &str) -> io::Result<()> {
        self.totals.add(kind);
        let n = self.totals.count();
        // '#' would start a directive: descriptions must not contain one.
        let desc = desc.replace('#', "_");
        let reason = reason.replace('\n', " ");
        let line = match (self.dialect, kind) {
            (_, OutcomeKind::Pass) => format!("ok {n} {desc}"),
            (_, OutcomeKind::Fail) => format!("not ok {n} {desc}"),
            (Dialect::Kselftest, OutcomeKind::Skip) => format!("ok {n} # SKIP {desc}"),
            (Dialect::Kselftest, OutcomeKind::Xfail) => format!("ok {n} # XFAIL {desc}"),
            // As ksft_test_result_code() prints it; the exit code says it is not a success.
            (Dialect::Kselftest, OutcomeKind::Xpass) => format!("ok {n} # XPASS {desc}"),
            (Dialect::Kselftest, OutcomeKind::Error) => format!("not ok {n} # error {desc}"),
            (Dialect::Ktap, OutcomeKind::Skip) => format!("ok {n} {desc} # SKIP {reason}"),
            (Dialect::Ktap, OutcomeKind::Xfail) => format!("ok {n} {desc} # XFAIL {reason}"),
            (Dialect::Ktap, OutcomeKind::Xpass) => format!("ok {n} {desc} # XPASS {reason}"),
            (Dialect::Ktap, OutcomeKind::Error) if reason.contains("timed out") => {
                format!("not ok {n} {desc} # TIMEOUT {reason}")
            }
            (Dialect::Ktap, OutcomeKind::Error) => format!("not ok {n} {desc} # ERROR {reason}"),
        };
        self.line(line.trim_end())
    }

    /// `ksft_exit_fail_msg()`'s first half.
    pub fn bail_out(&mut self, msg: &str) -> io::Result<()> {
        self.line(&format!("Bail out! {msg}"))
    }

    /// `ksft_finished()`'s output: a mismatch note when the plan was not kept,
    /// then the totals line (kselftest only; KTAP has none).
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(plan) = self.plan {
            if plan != self.totals.count() {
                let note = format!(
                    "Planned tests != run tests ({plan} != {})",
                    self.totals.count()
                );
                self.diag(&note)?;
            }
        }
        if self.dialect == Dialect::Kselftest {
            let t = self.totals;
            self.line(&format!("# Totals: {t}"))?;
        }
        Ok(())
    }

    /// `ksft_exit_skip()`: the whole program skips.
    pub fn skip_all(&mut self, reason: &str) -> io::Result<()> {
        if self.plan.is_some() || self.totals.count() > 0 {
            // ksft_exit_skip() after a plan: "ok N # SKIP reason", then the totals.
            self.result(OutcomeKind::Skip, reason, reason)?;
            let t = self.totals;
            self.line(&format!("# Totals: {t}"))
        } else {
            self.line(&format!("1..0 # SKIP {reason}"))
        }
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The exit code `ksft_finished()` would give: 0 iff every planned test
    /// ran and passed, xfailed or skipped.
    pub fn exit_code(&self) -> i32 {
        let t = self.totals;
        let planned = self.plan.unwrap_or(t.count());
        if t.pass + t.xfail + t.skip == planned && t.count() == planned {
            crate::KSFT_PASS
        } else {
            crate::KSFT_FAIL
        }
    }

    pub fn printed_anything(&self) -> bool {
        self.printed_anything
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(dialect: Dialect, f: impl FnOnce(&mut TapWriter<&mut Vec<u8>>)) -> String {
        let mut buf = Vec::new();
        let mut w = TapWriter::new(&mut buf, dialect);
        f(&mut w);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn kselftest_dialect_matches_kselftest_h() {
        let out = render(Dialect::Kselftest, |w| {
            w.header(false).unwrap();
            w.plan(5).unwrap();
            w.diag("[RUN] a").unwrap();
            w.result(OutcomeKind::Pass, "a", "").unwrap();
            w.result(OutcomeKind::Fail, "b", "leak").unwrap();
            w.result(OutcomeKind::Skip, "c", "no swap").unwrap();
            w.result(OutcomeKind::Xfail, "d", "known").unwrap();
            w.result(OutcomeKind::Error, "e", "timed out").unwrap();
            w.finish().unwrap();
            assert_eq!(w.exit_code(), 1);
        });
        assert_eq!(
            out,
            "TAP version 13\n1..5\n# [RUN] a\nok 1 a\nnot ok 2 b\nok 3 # SKIP c\nok 4 # XFAIL d\n\
             not ok 5 # error e\n# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:1\n"
        );
    }

    #[test]
    fn ktap_puts_directives_after_the_description() {
        let out = render(Dialect::Ktap, |w| {
            w.header(false).unwrap();
            w.plan(3).unwrap();
            w.result(OutcomeKind::Skip, "c", "no swap").unwrap();
            w.result(OutcomeKind::Error, "e", "timed out after 60 s")
                .unwrap();
            w.result(OutcomeKind::Xfail, "d", "known").unwrap();
            w.finish().unwrap();
        });
        assert_eq!(
            out,
            "KTAP version 1\n1..3\nok 1 c # SKIP no swap\nnot ok 2 e # TIMEOUT timed out after 60 s\nok 3 d # XFAIL known\n"
        );
    }

    #[test]
    fn exit_codes_follow_ksft_finished_and_ksft_exit_skip() {
        let mut buf = Vec::new();
        let mut w = TapWriter::new(&mut buf, Dialect::Kselftest);
        w.plan(2).unwrap();
        w.result(OutcomeKind::Pass, "a", "").unwrap();
        assert_eq!(w.exit_code(), 1, "a missing result is a failure");
        w.result(OutcomeKind::Skip, "b", "").unwrap();
        assert_eq!(w.exit_code(), 0, "all skipped or passed is success");
        let out = render(Dialect::Kselftest, |w| {
            w.header(true).unwrap();
            w.skip_all("gup_test not available").unwrap();
        });
        assert_eq!(
            out, "1..0 # SKIP gup_test not available\n",
            "KSFT_TAP_LEVEL drops the version line"
        );
    }

    #[test]
    fn a_skip_after_the_plan_is_a_result_line() {
        let out = render(Dialect::Kselftest, |w| {
            w.plan(2).unwrap();
            w.result(OutcomeKind::Pass, "a", "").unwrap();
            w.skip_all("no gup_test").unwrap();
        });
        assert_eq!(
            out,
            "1..2\nok 1 a\nok 2 # SKIP no gup_test\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0\n"
        );
    }

    #[test]
    fn a_short_run_says_so_before_the_totals() {
        let out = render(Dialect::Kselftest, |w| {
            w.plan(2).unwrap();
            w.result(OutcomeKind::Pass, "a", "").unwrap();
            w.finish().unwrap();
        });
        assert!(out.ends_with(
            "# Planned tests != run tests (2 != 1)\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0\n"
        ));
    }
}
