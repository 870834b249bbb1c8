//! A strict reader for what the writer produces: version line, one plan,
//! results numbered 1..N in order with known directives, `# ` diagnostics,
//! `Bail out!`, and a `# Totals:` line that agrees with the results. Anything
//! else is an error: our output is checked against this, so it must not guess.

use cowgup_harness::{OutcomeKind, Totals};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLine {
    pub number: usize,
    pub kind: OutcomeKind,
    pub desc: String,
    /// Text after a KTAP-style directive (`desc # SKIP reason`).
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub version: Option<String>,
    pub plan: Option<usize>,
    /// `1..0 # SKIP reason`: the whole program skipped.
    pub skip_all: Option<String>,
    pub results: Vec<ResultLine>,
    pub diagnostics: Vec<String>,
    pub totals_line: Option<Totals>,
    pub bail_out: Option<String>,
}

impl Parsed {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for r in &self.results {
            t.add(r.kind);
        }
        t
    }

    /// The exit code kselftest.h would have given for this output.
    pub fn expected_exit_code(&self) -> i32 {
        if self.skip_all.is_some() {
            return crate::KSFT_SKIP;
        }
        let t = self.totals();
        let planned = self.plan.unwrap_or(usize::MAX);
        if self.bail_out.is_none() && t.pass + t.xfail + t.skip == planned {
            crate::KSFT_PASS
        } else {
            crate::KSFT_FAIL
        }
    }

    /// Check a program's exit code against its output.
    pub fn check_exit_code(&self, code: i32) -> Result<(), String> {
        let want = self.expected_exit_code();
        (code == want).then_some(()).ok_or_else(|| {
            format!(
                "exit code {code}, but the output calls for {want} (totals {})",
                self.totals()
            )
        })
    }
}

fn directive_kind(ok: bool, directive: &str) -> Option<OutcomeKind> {
    match (ok, directive) {
        (true, "SKIP") => Some(OutcomeKind::Skip),
        (true, "XFAIL") => Some(OutcomeKind::Xfail),
        (true, "XPASS") => Some(OutcomeKind::Xpass),
        (false, "error" | "ERROR" | "TIMEOUT") => Some(OutcomeKind::Error),
        _ => None,
    }
}

fn parse_totals(s: &str) -> Option<Totals> {
    let mut t = Totals::default();
    let mut seen = 0;
    for field in s.split_whitespace() {
        let (k, v) = field.split_once(':')?;
        let v: usize = v.parse().ok()?;
        let slot = match k {
            "pass" => &mut t.pass,
            "fail" => &mut t.fail,
            "xfail" => &mut t.xfail,
            "xpass" => &mut t.xpass,
            "skip" => &mut t.skip,
            "error" => &mut t.error,
            _ => return None,
        };
        *slot = v;
        seen += 1;
    }
    (seen == 6).then_some(t)
}

/// ok?, number, kind, description, directive reason
type RawResult = (bool, usize, OutcomeKind, String, String);

fn parse_result(line: &str) -> Result<Option<RawResult>, String> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        return Ok(None);
    };
    let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let number: usize = num
        .parse()
        .map_err(|_| format!("bad test number {num:?}"))?;
    // kselftest.h: "ok 3 # SKIP desc"; KTAP: "ok 3 desc # SKIP reason".
    if let Some(after) = rest.strip_prefix("# ") {
        let (directive, desc) = after.split_once(' ').unwrap_or((after, ""));
        let kind = directive_kind(ok, directive)
            .ok_or_else(|| format!("unknown directive {directive:?}"))?;
        return Ok(Some((ok, number, kind, desc.to_string(), String::new())));
    }
    if let Some((desc, after)) = rest.split_once(" # ") {
        let (directive, reason) = after.split_once(' ').unwrap_or((after, ""));
        let kind = directive_kind(ok, directive)
            .ok_or_else(|| format!("unknown directive {directive:?}"))?;
        return Ok(Some((
            ok,
            number,
            kind,
            desc.to_string(),
            reason.to_string(),
        )));
    }
    let kind = if ok {
        OutcomeKind::Pass
    } else {
        OutcomeKind::Fail
    };
    Ok(Some((ok, number, kind, rest.to_string(), String::new())))
}

/// Parse and check. Every problem is reported with its line number.
pub fn parse(text: &str) -> Result<Parsed, Vec<String>> {
    let mut p = Parsed::default();
    let mut errors = Vec::new();
    let mut after_totals = false;
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line:?}", i + 1);
        if after_totals && !line.is_empty() {
            errors.push(at("output after the totals line".into()));
        }
        if line == "TAP version 13" || line == "KTAP version 1" {
            if i != 0 || p.version.is_some() {
                errors.push(at("version line not first".into()));
            }
            p.version = Some(line.to_string());
        } else if let Some(plan) = line.strip_prefix("1..") {
            if p.plan.is_some() {
                errors.push(at("second plan".into()));
            }
            let (n, skip) = match plan.split_once(" # SKIP ") {
                Some((n, reason)) => (n, Some(reason.to_string())),
                None => (plan, None),
            };
            match n.parse() {
                Ok(n) => p.plan = Some(n),
                Err(_) => errors.push(at("bad plan".into())),
            }
            p.skip_all = skip;
        } else if let Some(t) = line.strip_prefix("# Totals: ") {
            match parse_totals(t) {
                Some(t) => p.totals_line = Some(t),
                None => errors.push(at("bad totals line".into())),
            }
            after_totals = true;
        } else if let Some(d) = line.strip_prefix("# ") {
            p.diagnostics.push(d.to_string());
        } else if line == "#" {
            p.diagnostics.push(String::new());
        } else if let Some(msg) = line.strip_prefix("Bail out!") {
            p.bail_out = Some(msg.trim().to_string());
        } else {
            match parse_result(line) {
                Ok(Some((_, number, kind, desc, reason))) => {
                    if p.plan.is_none() {
                        errors.push(at("result before the plan".into()));
                    }
                    let want = p.results.len() + 1;
                    if number != want {
                        errors.push(at(format!("test number {number}, expected {want}")));
                    }
                    p.results.push(ResultLine {
                        number,
                        kind,
                        desc,
                        reason,
                    });
                }
                Ok(None) => errors.push(at("not a TAP line".into())),
                Err(e) => errors.push(at(e)),
            }
        }
    }
    match p.plan {
        None if p.bail_out.is_some() => {}
        None => errors.push("no plan".into()),
        Some(n) if p.skip_all.is_none() && n != p.results.len() && p.bail_out.is_none() => {
            let listed = p
                .diagnostics
                .iter()
                .any(|d| d.starts_with("Planned tests != run tests"));
            if !listed {
                errors.push(format!(
                    "plan says {n} tests, {} ran, and the output does not say so",
                    p.results.len()
                ));
            }
        }
        _ => {}
    }
    if let Some(t) = p.totals_line {
        if t != p.totals() {
            errors.push(format!(
                "totals line says {t}, results add up to {}",
                p.totals()
            ));
        }
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{Dialect, TapWriter};

    fn sample(dialect: Dialect) -> String {
        let mut buf = Vec::new();
        let mut w = TapWriter::new(&mut buf, dialect);
        w.header(false).unwrap();
        w.diag("[INFO] detected PMD size: 2048 KiB").unwrap();
        w.plan(6).unwrap();
        for (k, name) in [
            (
                OutcomeKind::Pass,
                "Basic COW after fork() ... with base page",
            ),
            (OutcomeKind::Fail, "b"),
            (OutcomeKind::Skip, "c"),
            (OutcomeKind::Xfail, "d"),
            (OutcomeKind::Xpass, "e"),
            (OutcomeKind::Error, "f"),
        ] {
            w.diag(&format!("[RUN] {name}")).unwrap();
            w.result(k, name, "why").unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn the_writers_output_parses_back_in_both_dialects() {
        for d in [Dialect::Kselftest, Dialect::Ktap] {
            let p = parse(&sample(d)).unwrap_or_else(|e| panic!("{d:?}: {e:?}"));
            assert_eq!(p.plan, Some(6));
            let kinds: Vec<OutcomeKind> = p.results.iter().map(|r| r.kind).collect();
            assert_eq!(
                kinds,
                [
                    OutcomeKind::Pass,
                    OutcomeKind::Fail,
                    OutcomeKind::Skip,
                    OutcomeKind::Xfail,
                    OutcomeKind::Xpass,
                    OutcomeKind::Error
                ]
            );
            assert_eq!(
                p.results[0].desc,
                "Basic COW after fork() ... with base page"
            );
            assert_eq!(p.expected_exit_code(), 1);
        }
    }

    #[test]
    fn broken_output_is_refused() {
        let ok = "TAP version 13\n1..2\nok 1 a\nok 2 # SKIP b\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0\n";
        let p = parse(ok).unwrap();
        assert_eq!(p.expected_exit_code(), 0);
        assert!(p.check_exit_code(0).is_ok() && p.check_exit_code(1).is_err());
        for (bad, why) in [
            ("TAP version 13\n1..2\nok 1 a\nok 3 b\n", "numbering"),
            ("TAP version 13\n1..2\nok 1 a\n", "short run without a note"),
            ("TAP version 13\nok 1 a\n1..1\n", "result before plan"),
            (
                "TAP version 13\n1..1\nok 1 a\n# Totals: pass:0 fail:1 xfail:0 xpass:0 skip:0 error:0\n",
                "totals disagree",
            ),
            ("TAP version 13\n1..1\nok 1 # TODO a\n", "unknown directive"),
            ("TAP version 13\n1..1\nok 1 a\ngarbage\n", "stray line"),
            ("TAP version 13\n1..1\n1..1\nok 1 a\n", "two plans"),
            ("TAP version 13\n", "no plan and no bail out"),
        ] {
            assert!(parse(bad).is_err(), "{why} was accepted");
        }
    }

    #[test]
    fn a_bail_out_needs_no_plan_and_means_exit_1() {
        let p = parse("TAP version 13\nBail out! opening pagemap failed\n# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:0 error:0\n").unwrap();
        assert_eq!(p.bail_out.as_deref(), Some("opening pagemap failed"));
        assert_eq!(p.expected_exit_code(), 1);
    }

    #[test]
    fn whole_program_skip_means_exit_4() {
        let p = parse("TAP version 13\n1..0 # SKIP gup_test not available\n").unwrap();
        assert_eq!(p.skip_all.as_deref(), Some("gup_test not available"));
        assert_eq!(p.expected_exit_code(), 4);
    }
}
