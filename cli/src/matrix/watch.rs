//! Reading a guest while it runs: the result port's event lines (`cowgup
//! run --events`, one JSON object a line) and the console's kernel faults,
//! both fed in pieces as qemu writes them (a piece may end mid-line).
//!
//! - [`EventStream`] keeps every finished trial, the trial started and not
//!   finished, and counts lines that do not parse (a port the kernel or a
//!   dying guest garbled) and events lost (gaps in `seq`); the final framed
//!   report (`=== COWGUP-RESULT` ... end marker) on the same port is skipped
//!   here and read whole once the guest is gone.
//! - [`ConsoleWatch`] finds the first line of a kernel fault the guest may
//!   not survive (Oops, `kernel BUG at`, general protection fault, panic,
//!   RCU stall, soft or hard lockup, hung task) and quotes it with the lines
//!   after it.

use serde_json::Value;

use super::collect::Trial;
use crate::guest::initramfs::{RESULT, RESULT_END};

/// Lines quoted from a fault on, at most.
pub const QUOTED: usize = 30;
/// Later fault lines (after the quote) kept, at most; the rest are counted.
const LATER_KEPT: usize = 10;

/// Complete lines out of pieces: what is left after the last newline waits
/// for the next piece.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                each(&rest[..nl]);
            } else {
                self.partial.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.partial);
                each(&line);
            }
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// The stream ended: a last line without its newline, if any.
    fn end(&mut self) -> Option<Vec<u8>> {
        let last = std::mem::take(&mut self.partial);
        (!last.is_empty()).then_some(last)
    }
}

/// A reader of a stream fed in pieces, one complete line at a time.
trait LineReader {
    fn pending(&mut self) -> &mut Lines;
    fn line(&mut self, raw: &[u8]);

    /// Every line `bytes` completes, to `line`.
    fn read_piece(&mut self, bytes: &[u8]) {
        // `line` needs `self` whole while `Lines` hands it the lines.
        let mut lines = std::mem::take(self.pending());
        lines.feed(bytes, |l| self.line(l));
        *self.pending() = lines;
    }
}

/// A trial by its place in the run and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialRef {
    pub number: u64,
    pub name: String,
}

impl std::fmt::Display for TrialRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {}", self.number, self.name)
    }
}

/// What the result port said so far.
#[derive(Debug, Default)]
pub struct EventStream {
    lines: Lines,
    in_frame: bool,
    /// The final report's frame began / ended.
    pub frame_started: bool,
    pub frame_ended: bool,
    /// Event lines that parsed.
    pub events: u64,
    /// Lines that did not parse (or a last line cut off), ignored.
    pub garbled: u64,
    /// Events missing between the ones read (gaps in `seq`).
    pub lost: u64,
    last_seq: u64,
    /// `run_started`: the kernel release, its base page size and how many
    /// trials were planned.
    pub release: Option<String>,
    pub page_size: Option<u64>,
    pub planned: Option<u64>,
    /// Every `trial_finished`, in order: the fields the matrix reads, and the
    /// trial object as the JSON report has it.
    pub trials: Vec<Trial>,
    pub raw_trials: Vec<Value>,
    /// Their numbers in the run.
    pub numbers: Vec<u64>,
    /// Started and not (yet) finished.
    pub running: Option<TrialRef>,
    pub last_finished: Option<TrialRef>,
    /// `run_finished` arrived: the run is over (its report follows).
    pub run_finished: bool,
    /// `kernel_log_outside_trials` of `run_finished`.
    pub kernel_log: Vec<String>,
    /// `interrupted`: the signal that stopped the guest's run.
    pub interrupted: Option<String>,
}

/// Where an event line begins: `{"event":"` (anything before it is noise).
const EVENT_START: &str = "{\"event\":\"";

impl EventStream {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.read_piece(bytes);
    }

    /// The port is closed: a last line without a newline was cut off (a
    /// complete event line always ends with one).
    pub fn end(&mut self) {
        if let Some(last) = self.lines.end() {
            if !String::from_utf8_lossy(&last).trim().is_empty() {
                self.garbled += 1;
            }
        }
    }

    /// Events read, lines ignored, events lost.
    pub fn stats(&self) -> super::collect::StreamStats {
        super::collect::StreamStats {
            events: self.events,
            garbled: self.garbled,
            lost: self.lost,
        }
    }

    /// Apply one event; false when it is not one we know, or lacks a field.
    fn event(&mut self, v: &Value) -> bool {
        let Some(seq) = v["seq"].as_u64() else {
            return false;
        };
        let trial_ref = |v: &Value, name: &Value| {
            Some(TrialRef {
                number: v["number"].as_u64()?,
                name: name.as_str()?.to_string(),
            })
        };
        match v["event"].as_str() {
            Some("run_started") => {
                self.release = v["kernel"].as_str().map(str::to_string);
                self.page_size = v["page_size"].as_u64();
                self.planned = v["planned"].as_u64();
            }
            Some("trial_started") => match trial_ref(v, &v["name"]) {
                Some(t) => self.running = Some(t),
                None => return false,
            },
            Some("trial_finished") => {
                let Some(t) = trial_ref(v, &v["trial"]["name"]) else {
                    return false;
                };
                let Ok(trial) = serde_json::from_value::<Trial>(v["trial"].clone()) else {
                    return false;
                };
                if self.running.as_ref().is_some_and(|r| r.number <= t.number) {
                    self.running = None;
                }
                self.trials.push(trial);
                self.raw_trials.push(v["trial"].clone());
                self.numbers.push(t.number);
                self.last_finished = Some(t);
            }
            Some("interrupted") => {
                self.interrupted = Some(v["signal"].as_str().unwrap_or("a signal").to_string());
            }
            Some("run_finished") => {
                self.run_finished = true;
                self.running = None;
                self.kernel_log = v["kernel_log_outside_trials"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            _ => return false,
        }
        if seq > self.last_seq + 1 {
            self.lost += seq - self.last_seq - 1;
        }
        self.last_seq = self.last_seq.max(seq);
        true
    }
}

impl LineReader for EventStream {
    fn pending(&mut self) -> &mut Lines {
        &mut self.lines
    }

    fn line(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end_matches('\r');
        if self.in_frame {
            if line.starts_with(RESULT_END) {
                self.in_frame = false;
                self.frame_ended = true;
            }
            return;
        }
        if line.starts_with(RESULT_END) {
            return;
        }
        if line.starts_with(RESULT) {
            self.in_frame = true;
            self.frame_started = true;
            return;
        }
        let Some(at) = line.find(EVENT_START) else {
            // `/init`'s own lines (`=== TOPOLOGY ...`) and blank ones are not noise.
            if !line.trim().is_empty() && !line.starts_with("=== ") {
                self.garbled += 1;
            }
            return;
        };
        match serde_json::from_str::<Value>(&line[at..]) {
            Ok(v) if self.event(&v) => self.events += 1,
            _ => self.garbled += 1,
        }
    }
}

/// A console line without its printk timestamp (`[   50.123456] `) and
/// caller id (`[ T123] `, `[ C1] `), if it has them.
pub fn strip_printk_prefix(line: &str) -> &str {
    let mut l = line;
    for _ in 0..2 {
        let t = l.trim_start();
        let Some(rest) = t.strip_prefix('[') else {
            break;
        };
        let Some((inside, after)) = rest.split_once(']') else {
            break;
        };
        let inside = inside.trim();
        let stamp = !inside.is_empty()
            && inside.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && inside.contains('.');
        let caller = inside.len() > 1
            && (inside.starts_with('T') || inside.starts_with('C'))
            && inside[1..].bytes().all(|b| b.is_ascii_digit());
        if !(stamp || caller) {
            break;
        }
        l = after.strip_prefix(' ').unwrap_or(after);
    }
    l
}

/// What the kernel prints when it faults in a way the guest may not survive
/// (`cowgup_harness::kmsg::fatal_shape`, which the guest's own live watch
/// uses too); None for any other line. `line` is a console line.
pub fn fault_shape(line: &str) -> Option<&'static str> {
    cowgup_harness::kmsg::fatal_shape(strip_printk_prefix(line))
}

/// The first kernel fault on the console and the lines after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// The fault line and up to `QUOTED - 1` after it (through the
    /// `---[ end trace` line when it comes first), as the console has them.
    pub lines: Vec<String>,
    /// Further fault lines after the quote (an RCU stall every minute ...),
    /// the first few.
    pub later: Vec<String>,
    pub later_count: usize,
}

#[derive(Debug, Default)]
pub struct ConsoleWatch {
    lines: Lines,
    pub fault: Option<Fault>,
    quoting: bool,
}

impl ConsoleWatch {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.read_piece(bytes);
    }

    /// The console is closed: its last line, even without a newline.
    pub fn end(&mut self) {
        if let Some(last) = self.lines.end() {
            self.line(&last);
        }
    }
}

impl LineReader for ConsoleWatch {
    fn pending(&mut self) -> &mut Lines {
        &mut self.lines
    }

    fn line(&mut self, raw: &[u8]) {
        let line = crate::guest::qemu::clean_console(raw);
        match &mut self.fault {
            None => {
                if fault_shape(&line).is_some() {
                    self.fault = Some(Fault {
                        lines: vec![line],
                        later: Vec::new(),
                        later_count: 0,
                    });
                    self.quoting = true;
                }
            }
            Some(f) if self.quoting => {
                if line.trim().is_empty() {
                    return;
                }
                let end = strip_printk_prefix(&line).starts_with("---[ end trace");
                f.lines.push(line);
                if end || f.lines.len() >= QUOTED {
                    self.quoting = false;
                }
            }
            Some(f) => {
                if fault_shape(&line).is_some() {
                    f.later_count += 1;
                    if f.later.len() < LATER_KEPT {
                        f.later.push(line);
                    }
                }
            }
        }
    }
}

/// After a fault shows on the console, how long the guest gets to finish
/// its own report (its suite may stop at the fault and report it) ...
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(15);
/// ... and, once the report's frame is arriving, to finish sending it.
pub const REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(45);

/// What was appended to a file qemu writes, since the last read.
#[derive(Debug)]
struct Tail {
    path: std::path::PathBuf,
    offset: u64,
}

impl Tail {
    fn read_new(&mut self) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0; // truncated: a new boot
        }
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            self.offset += buf.len() as u64;
        }
        buf
    }
}

/// When the host saw a fault, and which trial the stream said was running.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: std::time::Duration,
    pub running: Option<TrialRef>,
    pub last_finished: Option<TrialRef>,
}

/// A guest's console and result port, read as qemu writes them.
#[derive(Debug)]
pub struct GuestWatch {
    console_file: Tail,
    port_file: Tail,
    pub console: ConsoleWatch,
    pub port: EventStream,
    pub seen: Option<Seen>,
}

impl GuestWatch {
    pub fn new(console: &std::path::Path, port: &std::path::Path) -> Self {
        GuestWatch {
            console_file: Tail {
                path: console.into(),
                offset: 0,
            },
            port_file: Tail {
                path: port.into(),
                offset: 0,
            },
            console: ConsoleWatch::default(),
            port: EventStream::default(),
            seen: None,
        }
    }

    fn read(&mut self) {
        // The console first: events sent before a fault line was read are
        // on the port by the time it is read.
        let c = self.console_file.read_new();
        self.console.feed(&c);
        let p = self.port_file.read_new();
        self.port.feed(&p);
    }

    /// Read what is new; a reason to stop the guest now, if there is one:
    /// `GRACE` after a fault showed, `REPORT_GRACE` while the report's frame
    /// is arriving, at once when it has arrived.
    pub fn poll(&mut self, elapsed: std::time::Duration) -> Option<String> {
        self.read();
        self.note_fault(elapsed);
        let seen = self.seen.as_ref()?;
        let since = elapsed.saturating_sub(seen.at);
        if self.port.frame_ended {
            Some("the guest's report arrived after a kernel fault".into())
        } else if since >= REPORT_GRACE || (since >= GRACE && !self.port.frame_started) {
            Some(format!(
                "stopped {:.0} s after a kernel fault showed on the console",
                since.as_secs_f64()
            ))
        } else {
            None
        }
    }

    /// The guest is gone: read the rest; a fault first seen now is dated `elapsed`.
    pub fn finish(&mut self, elapsed: std::time::Duration) {
        self.read();
        self.console.end();
        self.port.end();
        self.note_fault(elapsed);
    }

    /// A fault first read now: seen at `elapsed`, with the trial the
    /// stream says is running.
    fn note_fault(&mut self, elapsed: std::time::Duration) {
        if self.seen.is_none() && self.console.fault.is_some() {
            self.seen = Some(Seen {
                at: elapsed,
                running: self.port.running.clone(),
                last_finished: self.port.last_finished.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(seq: u64, n: u64, name: &str) -> String {
        format!(
            "{{\"event\":\"trial_started\",\"seq\":{seq},\"number\":{n},\"name\":\"{name}\",\"family\":\"gup_test\",\"backing\":\"x\"}}\n"
        )
    }

    fn finished(seq: u64, n: u64, name: &str, outcome: &str) -> String {
        format!(
            "{{\"event\":\"trial_finished\",\"seq\":{seq},\"number\":{n},\"trial\":{{\"name\":\"{name}\",\"family\":\"gup_test\",\"backing\":\"x\",\"outcome\":\"{outcome}\",\"reason\":\"\",\"duration_ms\":1.5,\"diagnostics\":[],\"evidence\":[],\"checks\":[]}}}}\n"
        )
    }

    const RUN_STARTED: &str = "{\"event\":\"run_started\",\"seq\":1,\"tool\":\"cowgup\",\"version\":\"0\",\"kernel\":\"6.12.118\",\"planned\":245,\"host_changes\":[]}\n";

    #[test]
    fn events_interleaved_with_garbage_keep_every_result() {
        let mut port = String::new();
        port.push_str(RUN_STARTED);
        port.push_str("\u{0}\u{0}garbage \u{fffd} line\n");
        port.push_str(&started(2, 1, "a"));
        port.push_str(&finished(3, 1, "a", "pass"));
        // A line the kernel cut into: it does not parse.
        port.push_str("{\"event\":\"trial_started\",\"seq\":4,\"num[  50.1] x\n");
        // Noise before an event on its line: the event is still read.
        port.push_str(&format!("\u{1b}[0m@@{}", finished(5, 2, "b", "fail")));
        port.push_str("=== TOPOLOGY zram ok: swap\n\n");
        port.push_str(&started(6, 3, "c"));
        let mut s = EventStream::default();
        s.feed(port.as_bytes());
        s.end();
        assert_eq!(s.release.as_deref(), Some("6.12.118"));
        assert_eq!(s.planned, Some(245));
        assert_eq!(s.events, 5);
        assert_eq!(s.garbled, 2, "the garbage and the cut event");
        assert_eq!(s.lost, 1, "seq 4 never parsed");
        let names: Vec<&str> = s.trials.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.trials[1].outcome, "fail");
        assert_eq!(s.raw_trials[1]["duration_ms"], 1.5);
        assert_eq!(
            s.running,
            Some(TrialRef {
                number: 3,
                name: "c".into()
            })
        );
        assert_eq!(s.last_finished.as_ref().unwrap().name, "b");
        assert!(!s.run_finished && !s.frame_started);
    }

    #[test]
    fn a_stream_cut_mid_line_keeps_what_came_before() {
        let mut port = String::new();
        port.push_str(RUN_STARTED);
        port.push_str(&started(2, 1, "a"));
        port.push_str(&finished(3, 1, "a", "pass"));
        port.push_str(&started(4, 2, "b"));
        let cut = finished(5, 2, "b", "pass");
        port.push_str(&cut[..cut.len() / 2]);
        // Fed in pieces of every size: a piece may end anywhere.
        for piece in [1, 7, 64, 4096] {
            let mut s = EventStream::default();
            for chunk in port.as_bytes().chunks(piece) {
                s.feed(chunk);
            }
            assert_eq!(s.trials.len(), 1, "piece {piece}");
            assert_eq!(s.running.as_ref().unwrap().name, "b");
            assert_eq!(s.garbled, 0, "a partial line waits for its end");
            s.end();
            assert_eq!(s.garbled, 1, "the port closed mid-line");
            assert_eq!(s.events, 4);
        }
    }

    /// What `cowgup run --events` writes (`cowgup_tap::report::Events`),
    /// read back: every trial as the JSON report has it.
    #[test]
    fn a_runs_events_read_back_as_its_json_report_has_them() {
        use cowgup_tap::report::{Document, Events};
        use cowgup_tap::stream::{examples::sample_run, Reporter};
        let (mut text, mut doc) = (Vec::new(), Vec::new());
        let mut events = Events::new(&mut text);
        let mut json = Document::json(&mut doc);
        for e in &sample_run() {
            events.on(e).unwrap();
            json.on(e).unwrap();
        }
        let doc: Value = serde_json::from_slice(&doc).unwrap();
        let mut s = EventStream::default();
        s.feed(&text);
        s.end();
        assert_eq!((s.events, s.garbled, s.lost), (6, 0, 0));
        assert_eq!(
            s.raw_trials,
            [doc["trials"][0].clone(), doc["trials"][1].clone()]
        );
        assert_eq!(s.trials[0].outcome, "fail");
        assert!(s.run_finished && s.running.is_none());
    }

    #[test]
    fn the_final_frame_is_not_read_as_events() {
        let mut port = String::new();
        port.push_str(RUN_STARTED);
        port.push_str(&started(2, 1, "a"));
        port.push_str(&finished(3, 1, "a", "pass"));
        port.push_str(
            "{\"event\":\"run_finished\",\"seq\":4,\"totals\":{},\"duration_s\":1.0,\
             \"restore\":null,\"kernel_log_outside_trials\":[\"[1.0] WARNING: x\"]}\n",
        );
        port.push_str("=== TOPOLOGY zram ok: swap\n=== COWGUP-RESULT rc=0 release=6.12\n{\n  \"trials\": [\n    {\"event\":\"x\"}\n  ]\n}\n\n=== COWGUP-RESULT-END\n");
        let mut s = EventStream::default();
        s.feed(port.as_bytes());
        s.end();
        assert_eq!((s.events, s.garbled, s.lost), (4, 0, 0));
        assert!(s.run_finished && s.frame_started && s.frame_ended);
        assert_eq!(s.kernel_log, ["[1.0] WARNING: x"]);
        assert_eq!(s.running, None);
        let mut s = EventStream::default();
        s.feed(b"=== COWGUP-RESULT rc=0\n{\n");
        assert!(s.frame_started && !s.frame_ended);
    }

    #[test]
    fn printk_prefixes_are_stripped() {
        assert_eq!(
            strip_printk_prefix("[   50.123456] Oops: 0000 [#1]"),
            "Oops: 0000 [#1]"
        );
        assert_eq!(strip_printk_prefix("[   50.1] [  T123] BUG: x"), "BUG: x");
        assert_eq!(strip_printk_prefix("[#1] x"), "[#1] x");
        assert_eq!(strip_printk_prefix("plain"), "plain");
    }

    #[test]
    fn fault_shapes_are_the_ones_a_guest_may_not_survive() {
        for l in [
            "[   50.1] BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "[   50.1] Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "[   50.1] Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1]",
            "[   50.1] general protection fault, probably for non-canonical address",
            "[   50.1] kernel BUG at mm/memory.c:4475!",
            "[  113.2] rcu: INFO: rcu_sched self-detected stall on CPU",
            "[  113.2] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[   72.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [cowgup:120]",
            "[   99.0] Kernel panic - not syncing: Fatal exception",
            "[  240.0] INFO: task cowgup:99 blocked for more than 120 seconds.",
        ] {
            assert!(fault_shape(l).is_some(), "{l}");
        }
        for l in [
            "[   50.1] BUG: Bad page state in process cowgup  pfn:12345",
            "[   50.1] WARNING: CPU: 1 PID: 9 at mm/gup.c:123 foo+0x1/0x2",
            "[   50.1] ------------[ cut here ]------------",
            "FAIL  PIN_LONGTERM_TEST_READ (2 ms) -- kernel log: Oops: 0000",
            "        # [   50.1] kernel BUG at mm/memory.c:4475!",
            "cowgup: kernel log outside trials: [1.2] Oops: 0000",
            "PASS  Basic COW after fork() ... with base page (2.1 ms)",
        ] {
            assert_eq!(fault_shape(l), None, "{l}");
        }
    }

    #[test]
    fn a_console_with_an_oops_and_rcu_stalls() {
        let mut console = String::from(
            "\u{1b}c\u{1b}[2JSeaBIOS\r\n=== GUEST-START 6.12.118\r\nPASS  a (1.0 ms)\r\n",
        );
        console.push_str("[   52.000001] ------------[ cut here ]------------\r\n");
        console.push_str("[   52.000002] kernel BUG at mm/gup_test.c:42!\r\n");
        console.push_str("[   52.000003] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\r\n");
        for i in 0..40 {
            console.push_str(&format!("[   52.0001{i:02}]  ? frame_{i}+0x1/0x2\r\n"));
        }
        console.push_str("[   52.1] ---[ end trace 0000000000000000 ]---\r\n");
        for t in [115, 178, 241] {
            console.push_str(&format!(
                "[  {t}.0] rcu: INFO: rcu_sched self-detected stall on CPU\r\n[  {t}.0] rcu: \t1-....: (1 GPs behind)\r\n"
            ));
        }
        console.push_str("[  300.0] watchdog: BUG: soft lockup - CPU#1 stu");
        let mut w = ConsoleWatch::default();
        for chunk in console.as_bytes().chunks(13) {
            w.feed(chunk);
        }
        w.end();
        let f = w.fault.unwrap();
        assert_eq!(
            strip_printk_prefix(&f.lines[0]),
            "kernel BUG at mm/gup_test.c:42!"
        );
        assert_eq!(f.lines.len(), QUOTED);
        assert_eq!(
            f.lines[1],
            "[   52.000003] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI"
        );
        assert_eq!(f.later_count, 4, "three stalls and the cut-off soft lockup");
        assert_eq!(
            f.later[0],
            "[  115.0] rcu: INFO: rcu_sched self-detected stall on CPU"
        );
        assert_eq!(
            f.later[3],
            "[  300.0] watchdog: BUG: soft lockup - CPU#1 stu"
        );

        // A short oops: the quote ends with its end-trace line.
        let mut w = ConsoleWatch::default();
        w.feed(b"[ 9.0] BUG: kernel NULL pointer dereference, address: 0\n[ 9.0] Oops: 0000 [#1]\n[ 9.1] ---[ end trace 0 ]---\nPASS  b (1 ms)\n");
        let f = w.fault.unwrap();
        assert_eq!(f.lines.len(), 3);
        assert_eq!(
            strip_printk_prefix(&f.lines[0]),
            "BUG: kernel NULL pointer dereference, address: 0"
        );
        let mut w = ConsoleWatch::default();
        w.feed(b"[ 9.0] BUG: Bad page state in process x\nok\n");
        assert_eq!(w.fault, None);
    }
}
