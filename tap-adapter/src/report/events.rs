//! `cowgup run --events FILE`: every event as one line of JSON, written and
//! flushed when it is formed (a line never waits for the next event), so a
//! run that dies keeps every result before it:
//!
//! ```text
//! {"event":"run_started","seq":1,"tool":"cowgup","version":..,"kernel":..,"planned":N,"host_changes":[..]}
//! {"event":"trial_started","seq":2,"number":1,"name":..,"family":..,"backing":..}
//! {"event":"trial_finished","seq":3,"number":1,"trial":{..the JSON report's trial object..}}
//! {"event":"interrupted","seq":..,"signal":"SIGTERM","done":N,"planned":N}
//! {"event":"run_finished","seq":..,"totals":{..},"duration_s":..,"restore":..,"kernel_log_outside_trials":[..]}
//! ```
//!
//! `event` and `seq` (1, 2, ...: a gap is a lost line) come first in every
//! line, so a reader can find `{"event":"` in a line a noisy port prefixed
//! with something else. On a terminal (a serial port) each `trial_started`
//! line is drained (tcdrain) before the trial runs: the reader knows which
//! trial was running when the machine dies.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::json;

use super::json::{json_trial, restore_json, totals_json};
use crate::stream::{Event, Reporter};

pub struct Events<W: Write> {
    out: W,
    seq: u64,
    /// Drain the line to the device after `trial_started` (a tty's fd).
    drain: Option<std::os::fd::RawFd>,
}

#[derive(Serialize)]
struct EventLine<'a, T: Serialize> {
    event: &'a str,
    seq: u64,
    #[serde(flatten)]
    body: T,
}

impl<W: Write> Events<W> {
    pub fn new(out: W) -> Self {
        Events {
            out,
            seq: 0,
            drain: None,
        }
    }

    /// After each `trial_started`, wait until the device sent it (`fd` is a terminal's).
    pub fn draining(mut self, fd: std::os::fd::RawFd) -> Self {
        self.drain = Some(fd);
        self
    }

    fn line<T: Serialize>(&mut self, event: &str, body: T) -> io::Result<()> {
        self.seq += 1;
        let mut text = serde_json::to_string(&EventLine {
            event,
            seq: self.seq,
            body,
        })
        .map_err(io::Error::other)?;
        text.push('\n');
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Reporter for Events<W> {
    fn on(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted(s) => self.line(
                "run_started",
                json!({
                    "tool": "cowgup",
                    "version": env!("CARGO_PKG_VERSION"),
                    "kernel": s.caps.kernel_release,
                    "page_size": s.caps.page_size,
                    "planned": s.planned,
                    "host_changes": s.host_changes,
                }),
            ),
            Event::TrialStarted(t) => {
                self.line(
                    "trial_started",
                    json!({
                        "number": t.number,
                        "name": t.name,
                        "family": t.family.id(),
                        "backing": t.group,
                    }),
                )?;
                if let Some(fd) = self.drain {
                    drain(fd)?;
                }
                Ok(())
            }
            Event::TrialFinished(t) => self.line(
                "trial_finished",
                json!({"number": t.trial.number, "trial": json_trial(t)}),
            ),
            Event::Interrupted {
                signal,
                done,
                planned,
            } => self.line(
                "interrupted",
                json!({"signal": signal.as_str(), "done": done, "planned": planned}),
            ),
            Event::RunFinished(end) => self.line(
                "run_finished",
                json!({
                    "totals": totals_json(&end.totals),
                    "duration_s": end.elapsed.as_secs_f64(),
                    "restore": restore_json(end),
                    "kernel_log_outside_trials": end.kernel_log,
                }),
            ),
        }
    }
}

/// Wait until the line written so far has left the port. The kernel ends
/// this wait with EINTR whenever anything is pending for the task, not only
/// a signal with a handler: io_uring's task work (TIF_NOTIFY_SIGNAL) does
/// too, and the call is not restarted. Wait again: the line is short, and a
/// real SIGINT is seen by the run loop right after.
fn drain(fd: std::os::fd::RawFd) -> io::Result<()> {
    loop {
        // SAFETY: tcdrain only reads the fd, owned by our writer.
        if unsafe { libc::tcdrain(fd) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{sample_output, Document};
    use super::*;

    #[test]
    fn events_are_one_json_line_each_and_read_back_as_the_report_has_them() {
        let text = sample_output(|b| Box::new(Events::new(b)));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "run_started",
                "trial_started",
                "trial_finished",
                "trial_started",
                "trial_finished",
                "run_finished"
            ]
        );
        for (i, l) in text.lines().enumerate() {
            assert!(
                l.starts_with(&format!("{{\"event\":\"{}\",\"seq\":{},", names[i], i + 1)),
                "{l}"
            );
        }
        assert_eq!(lines[0]["planned"], 2);
        assert_eq!(lines[1]["number"], 1);
        assert_eq!(lines[1]["family"], "cow_anon");
        assert_eq!(lines[5]["totals"]["fail"], 1);
        // The trial object is the JSON report's, field for field.
        let doc: serde_json::Value =
            serde_json::from_str(&sample_output(|b| Box::new(Document::json(b)))).unwrap();
        assert_eq!(lines[2]["trial"], doc["trials"][0]);
        assert_eq!(lines[4]["trial"], doc["trials"][1]);
    }
}
