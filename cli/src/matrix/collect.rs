//! A cell's result: the suite's JSON report read back from the result
//! channel (ttyS1, or the host run's output file); else the results the
//! suite streamed before it died or hung (`watch`), with the trial left
//! unfinished; or why there is none, with the console's last lines. A
//! kernel fault seen on the console is part of the cell whatever else came.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::guest::initramfs::{RESULT, RESULT_END, START};
pub use crate::guest::topology::Setup;

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Trial {
    pub name: String,
    pub family: String,
    pub outcome: String,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Trial {
    pub fn unexpected(&self) -> bool {
        matches!(self.outcome.as_str(), "fail" | "xpass" | "error")
    }
}

#[derive(Clone, Debug)]
pub struct Cell {
    /// The column heading (`host`, `debian:6.1`, an image's file name).
    pub kernel: String,
    /// `uname -r` as the suite saw it.
    pub release: Option<String>,
    /// The guest's architecture (`x86_64`, `arm64`; the host's for `host`).
    pub arch: String,
    /// The base page size the suite saw.
    pub page_size: Option<u64>,
    pub wall: Duration,
    /// The suite's report; empty when it produced none.
    pub trials: Vec<Trial>,
    /// Every trial as the suite's JSON has it (evidence and checks included).
    pub raw_trials: Vec<serde_json::Value>,
    /// Why the cell has no result (it then counts as one error).
    pub broken: Option<String>,
    /// The console's last lines, when the cell is broken.
    pub console_tail: Vec<String>,
    /// The cell's topology (`base`, `fsdax`, `zram+movable`, ...).
    pub topology: String,
    /// How each of the topology's features was set up (from `/init`).
    pub setup: Vec<Setup>,
    /// Kernel log lines (WARNING, BUG, ...) the suite saw outside any trial.
    pub kernel_log: Vec<String>,
    /// A kernel fault on the guest's console (Oops, BUG, RCU stall, ...).
    pub fault: Option<KernelFault>,
    /// The trial started and never finished, when the cell ended without
    /// the suite's report.
    pub unfinished: Option<String>,
    /// How many trials the suite planned (its `run_started`), when known.
    pub planned: Option<u64>,
    /// What the streamed event lines came to.
    pub stream: StreamStats,
}

/// The event lines of a cell: read, not parsed (ignored), lost (gaps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub events: u64,
    pub garbled: u64,
    pub lost: u64,
}

/// A kernel fault the host saw on a guest's console.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelFault {
    /// The fault line and the lines after it (`watch::QUOTED` at most).
    pub lines: Vec<String>,
    /// Fault lines after the quote (RCU stalls, lockups), the first few,
    /// and how many there were.
    pub later: Vec<String>,
    pub later_count: usize,
    /// The trial it hit: the one whose own kernel-log check quotes the
    /// fault line (`by_check`), else the one running (started, not
    /// finished) when the host saw it.
    pub trial: Option<String>,
    pub by_check: bool,
    /// When none was running: the last one finished before it.
    pub after: Option<String>,
    /// Seconds into the cell when the host saw it.
    pub seen_s: f64,
    /// Seconds from then to the cell's end.
    pub ended_after_s: f64,
}

impl KernelFault {
    /// The fault line without its timestamp.
    pub fn headline(&self) -> &str {
        self.lines
            .first()
            .map(|l| super::watch::strip_printk_prefix(l).trim())
            .unwrap_or("")
    }

    /// `in trial #20 NAME`, `after trial #19 NAME (...)`, or `before any trial finished`.
    pub fn place(&self) -> String {
        match (&self.trial, &self.after) {
            (Some(t), _) => format!("in trial {t}"),
            (None, Some(a)) => format!(
                "after trial {a} (no trial announced since: between trials, or in a batch, \
                 whose trials are announced when it ends)"
            ),
            (None, None) => "before any trial finished".into(),
        }
    }

    /// How the trial was told, when there is one.
    pub fn named_by(&self) -> Option<&'static str> {
        self.trial.as_ref().map(|_| {
            if self.by_check {
                "its own kernel-log check quotes the fault line"
            } else {
                "started and not finished when the host saw the fault"
            }
        })
    }
}

/// The trial (`#N name`) whose kernel-log check quotes `line`, a console
/// line: as the check quotes it, `[sec.usec] text` (console and check
/// carry the same printk timestamp). `trials` as the JSON report has them,
/// with their numbers in the run.
pub fn quoted_by(line: &str, trials: &[serde_json::Value], numbers: &[u64]) -> Option<String> {
    let text = super::watch::strip_printk_prefix(line).trim();
    let stamp = line
        .trim_start()
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map(|(s, _)| s.trim())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    let needle = match stamp {
        Some(s) => format!("[{s}] {text}"),
        None => text.to_string(),
    };
    if text.is_empty() {
        return None;
    }
    trials.iter().enumerate().find_map(|(i, t)| {
        let quotes = t["checks"].as_array()?.iter().any(|c| {
            c["check"] == cowgup_harness::kmsg::CHECK
                && c["detail"].as_str().is_some_and(|d| d.contains(&needle))
        });
        quotes.then(|| {
            let n = numbers.get(i).copied().unwrap_or(i as u64 + 1);
            format!("#{n} {}", t["name"].as_str().unwrap_or("?"))
        })
    })
}

pub const OUTCOMES: [&str; 6] = ["pass", "fail", "xfail", "xpass", "skip", "error"];

impl Cell {
    pub fn ran(kernel: &str, wall: Duration, r: SuiteReport) -> Cell {
        Cell {
            kernel: kernel.into(),
            release: r.release,
            arch: String::new(),
            page_size: r.page_size,
            wall,
            trials: r.trials,
            raw_trials: r.raw_trials,
            broken: None,
            console_tail: Vec::new(),
            topology: "base".into(),
            setup: Vec::new(),
            kernel_log: r.kernel_log,
            fault: None,
            unfinished: None,
            planned: None,
            stream: StreamStats::default(),
        }
    }

    pub fn broken(kernel: &str, wall: Duration, why: String, tail: Vec<String>) -> Cell {
        Cell {
            kernel: kernel.into(),
            release: None,
            arch: String::new(),
            page_size: None,
            wall,
            trials: Vec::new(),
            raw_trials: Vec::new(),
            broken: Some(why),
            console_tail: tail,
            topology: "base".into(),
            setup: Vec::new(),
            kernel_log: Vec::new(),
            fault: None,
            unfinished: None,
            planned: None,
            stream: StreamStats::default(),
        }
    }

    /// No report, but what the suite streamed before it stopped: every
    /// finished trial and the one left unfinished.
    pub fn streamed(
        kernel: &str,
        wall: Duration,
        why: String,
        tail: Vec<String>,
        s: &super::watch::EventStream,
    ) -> Cell {
        let mut c = Cell::broken(kernel, wall, why, tail);
        c.release = s.release.clone();
        c.page_size = s.page_size;
        c.trials = s.trials.clone();
        c.raw_trials = s.raw_trials.clone();
        c.kernel_log = s.kernel_log.clone();
        c.unfinished = s.running.as_ref().map(ToString::to_string);
        c.planned = s.planned;
        c
    }

    /// How the cell ended: `complete`, `KERNEL FAULT`, `INCOMPLETE` (no
    /// report, some results streamed) or `NO RESULT`.
    pub fn outcome(&self) -> &'static str {
        if self.fault.is_some() {
            "KERNEL FAULT"
        } else if self.broken.is_none() {
            "complete"
        } else if self.trials.is_empty() {
            "NO RESULT"
        } else {
            "INCOMPLETE"
        }
    }

    /// The column heading: the kernel, and the topology unless `base`.
    pub fn label(&self) -> String {
        if self.topology == "base" {
            self.kernel.clone()
        } else {
            format!("{} [{}]", self.kernel, self.topology)
        }
    }

    /// The machine in a few words: `arm64, 16 KiB pages` (`?` where unknown).
    pub fn machine(&self) -> String {
        let arch = if self.arch.is_empty() {
            "?"
        } else {
            &self.arch
        };
        match self.page_size {
            Some(p) => format!("{arch}, {} KiB pages", p / 1024),
            None => format!("{arch}, ? pages"),
        }
    }

    /// Features of the topology `/init` could not set up.
    pub fn setup_failures(&self) -> impl Iterator<Item = &Setup> {
        self.setup.iter().filter(|s| !s.ok)
    }

    pub fn totals(&self) -> BTreeMap<&'static str, usize> {
        OUTCOMES
            .iter()
            .map(|o| (*o, self.trials.iter().filter(|t| t.outcome == *o).count()))
            .collect()
    }

    pub fn ok(&self) -> bool {
        self.broken.is_none()
            && self.fault.is_none()
            && !self.trials.iter().any(Trial::unexpected)
            && self.setup_failures().next().is_none()
    }
}

/// The suite's JSON report, as much of it as the matrix reads.
pub struct SuiteReport {
    pub release: Option<String>,
    pub page_size: Option<u64>,
    pub trials: Vec<Trial>,
    pub raw_trials: Vec<serde_json::Value>,
    /// `kernel_log_outside_trials`: what the kernel logged between trials.
    pub kernel_log: Vec<String>,
}

/// Parse `cowgup run --format json`.
pub fn parse_report(text: &str) -> Result<SuiteReport, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the suite's JSON does not parse: {e}"))?;
    let raw = doc["trials"]
        .as_array()
        .ok_or("the suite's JSON has no trials")?
        .clone();
    let trials = raw
        .iter()
        .map(|t| serde_json::from_value(t.clone()).map_err(|e| format!("a trial: {e}")))
        .collect::<Result<Vec<Trial>, String>>()?;
    Ok(SuiteReport {
        release: doc["kernel"].as_str().map(str::to_string),
        page_size: doc["probe"]["page_size"].as_u64(),
        trials,
        raw_trials: raw,
        kernel_log: doc["kernel_log_outside_trials"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The JSON report framed on the result port: between `=== COWGUP-RESULT ...`
/// and `=== COWGUP-RESULT-END`. `None` when the frame is missing or cut off.
pub fn unframe(channel: &str) -> Option<&str> {
    let start = channel.find(RESULT)?;
    let body = &channel[start..];
    let body = &body[body.find('\n')? + 1..];
    let end = body.find(RESULT_END)?;
    Some(&body[..end])
}

/// Whether `/init` ran (the kernel booted far enough to start the suite).
pub fn reached_init(console: &str) -> bool {
    console.lines().any(|l| l.starts_with(START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::qemu::{clean_console, tail};

    #[test]
    fn the_frame_is_found_between_its_markers() {
        let ch =
            "noise\n=== COWGUP-RESULT rc=0 release=6.1.0\n{\"a\": 1}\n\n=== COWGUP-RESULT-END\n";
        assert_eq!(unframe(ch), Some("{\"a\": 1}\n\n"));
        assert_eq!(
            unframe("=== COWGUP-RESULT rc=0\n{\"a\": 1"),
            None,
            "cut off"
        );
        assert_eq!(unframe(""), None);
    }

    #[test]
    fn the_suite_report_parses_into_trials() {
        let text = r#"{"kernel": "6.12.117", "trials": [
            {"name": "a", "family": "cow_anon", "outcome": "pass", "reason": null, "evidence": []},
            {"name": "b", "family": "gup_test", "outcome": "skip", "reason": "no gup_test"}]}"#;
        let r = parse_report(text).unwrap();
        assert_eq!(r.release.as_deref(), Some("6.12.117"));
        assert_eq!(r.trials.len(), 2);
        assert_eq!(r.trials[1].reason.as_deref(), Some("no gup_test"));
        assert_eq!(r.raw_trials[0]["evidence"], serde_json::json!([]));
        assert!(r.kernel_log.is_empty());
        assert!(parse_report("{\"kernel\": \"x\"}").is_err());
        let r = parse_report(
            r#"{"trials": [], "kernel_log_outside_trials": ["[3.1] WARNING: at mm/gup.c:99"]}"#,
        )
        .unwrap();
        assert_eq!(r.kernel_log, ["[3.1] WARNING: at mm/gup.c:99"]);
    }

    #[test]
    fn the_trial_whose_kernel_log_check_quotes_the_fault_is_the_one_it_hit() {
        let trial = |name: &str, detail: &str| {
            serde_json::json!({"name": name, "checks": [
                {"check": "pin balance", "status": "held", "detail": "[34.131699] BUG: x"},
                {"check": "kernel log", "status": "violated", "detail": detail},
            ]})
        };
        let trials = [
            trial("a", "0 records logged during the trial"),
            trial(
                "b",
                "the kernel logged 2 error lines during the trial: [34.131699] BUG: kernel NULL \
                 pointer dereference, address: 0000000000000010 | [34.132990] Oops: Oops: 0002",
            ),
            trial("c", "0 records"),
        ];
        let line = "[   34.131699] BUG: kernel NULL pointer dereference, address: 0000000000000010";
        assert_eq!(
            quoted_by(line, &trials, &[7, 8, 9]).as_deref(),
            Some("#8 b")
        );
        assert_eq!(quoted_by(line, &trials, &[]).as_deref(), Some("#2 b"));
        // Another moment, or a line no check quotes: not told this way.
        let other =
            "[   99.000001] BUG: kernel NULL pointer dereference, address: 0000000000000010";
        assert_eq!(quoted_by(other, &trials, &[]), None);
        assert_eq!(quoted_by("[ 1.0] kernel BUG at x", &trials, &[]), None);
    }

    #[test]
    fn console_noise_is_stripped() {
        let raw = b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n=== GUEST-START 6.1\r\nok\r\n";
        let c = clean_console(raw);
        assert_eq!(c, "SeaBIOS\n=== GUEST-START 6.1\nok\n");
        assert!(reached_init(&c));
        assert_eq!(tail(&c, 2), ["=== GUEST-START 6.1", "ok"]);
    }
}
