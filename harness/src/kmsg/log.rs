//! Reading the kernel log: /dev/kmsg records as read(2) returns them
//! ("prio,seq,usec,flags;text" plus " KEY=value" continuation lines; see
//! Documentation/ABI/testing/dev-kmsg), from a `Source` opened at the next
//! record to be logged, and `scan`s of what is pending, which keep the
//! error-shaped lines (see classify.rs) and count what was lost. Also the
//! taint flags, read from /proc/sys/kernel/tainted.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use serde::Serialize;

use super::classify::{findings, Finding};

/// A record is at most CONSOLE_EXT_LOG_MAX (8 KiB); a smaller buffer makes
/// read() fail with EINVAL.
const READ_BUF: usize = 16 << 10;
/// Records read per scan at most: a kernel logging without pause cannot
/// keep the runner reading forever.
pub(super) const MAX_RECORDS: u64 = 100_000;
/// Matching lines kept per scan; the rest are counted.
const MAX_FINDINGS: usize = 50;

/// One record of /dev/kmsg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub seq: u64,
    /// 0 emerg .. 7 debug.
    pub level: u8,
    /// 0 kernel, 1 user, ...
    pub facility: u32,
    pub usec: u64,
    /// The message with the kernel's \xNN escapes undone; may hold several
    /// lines. The continuation (" KEY=value") lines are not part of it.
    pub text: String,
}

/// Parse one record as read(2) returns it. None for anything else.
pub fn parse_record(raw: &str) -> Option<Record> {
    let first = raw.split('\n').next()?;
    let (header, text) = first.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    Some(Record {
        seq,
        level: (prio & 7) as u8,
        facility: prio >> 3,
        usec,
        text: unescape(text),
    })
}

/// Undo /dev/kmsg's escaping: bytes below ' ', above '~' and '\' itself are
/// written as \xNN.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1] == b'x'
            && b[i + 2].is_ascii_hexdigit()
            && b[i + 3].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 2]) << 4 | hex(b[i + 3]));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one read(2) of the log gave.
#[derive(Debug)]
pub enum Read1 {
    Record(String),
    /// EPIPE: the next record was overwritten; reading goes on at the oldest.
    Overwritten,
    /// EAGAIN: nothing more to read.
    End,
    Failed(String),
}

/// Where records come from: /dev/kmsg, or a fake in tests.
pub trait Source: Send {
    fn read1(&mut self) -> Read1;
    /// A descriptor poll() reports readable when a record is logged.
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

struct DevKmsg {
    file: File,
    buf: Vec<u8>,
}

impl Source for DevKmsg {
    fn read1(&mut self) -> Read1 {
        loop {
            return match self.file.read(&mut self.buf) {
                Ok(n) => Read1::Record(String::from_utf8_lossy(&self.buf[..n]).into_owned()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read1::End,
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Read1::Overwritten,
                Err(e) => Read1::Failed(e.to_string()),
            };
        }
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// Open /dev/kmsg positioned at the next record to be logged.
pub fn open() -> Result<Box<dyn Source>, String> {
    let why = |e: io::Error| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            format!(
                " (kernel.dmesg_restrict = {}: reading needs CAP_SYSLOG)",
                std::fs::read_to_string("/proc/sys/kernel/dmesg_restrict")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into())
            )
        } else {
            String::new()
        };
        format!("cannot read /dev/kmsg: {e}{hint}")
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(why)?;
    file.seek(SeekFrom::End(0)).map_err(why)?;
    Ok(Box::new(DevKmsg {
        file,
        buf: vec![0; READ_BUF],
    }))
}

/// What was read from the log since the last scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Scan {
    pub records: u64,
    pub findings: Vec<Finding>,
    /// Matching lines beyond MAX_FINDINGS, counted only.
    pub more_findings: usize,
    /// Records lost: overwritten before they were read (EPIPE), or a gap
    /// in the sequence numbers.
    pub lost: u64,
    /// EPIPE was seen (the count in `lost` may then be a lower bound).
    pub overwritten: bool,
    /// The scan stopped at MAX_RECORDS.
    pub cut_short: bool,
    pub error: Option<String>,
}

impl Scan {
    /// Add a later scan of the same trial to this one.
    pub(super) fn merge(&mut self, later: Scan) {
        self.records += later.records;
        for f in later.findings {
            if self.findings.len() < MAX_FINDINGS {
                self.findings.push(f);
            } else {
                self.more_findings += 1;
            }
        }
        self.more_findings += later.more_findings;
        self.lost += later.lost;
        self.overwritten |= later.overwritten;
        self.cut_short |= later.cut_short;
        if self.error.is_none() {
            self.error = later.error;
        }
    }
}

/// Read everything available. `next_seq` is the sequence number expected
/// next (None: not known yet) and is moved past what was read.
pub fn scan(src: &mut dyn Source, next_seq: &mut Option<u64>) -> Scan {
    let mut s = Scan::default();
    loop {
        if s.records >= MAX_RECORDS {
            s.cut_short = true;
            break;
        }
        match src.read1() {
            Read1::End => break,
            Read1::Failed(e) => {
                s.error = Some(e);
                break;
            }
            Read1::Overwritten => s.overwritten = true,
            Read1::Record(raw) => {
                let Some(r) = parse_record(&raw) else {
                    continue;
                };
                s.records += 1;
                if let Some(want) = *next_seq {
                    s.lost += r.seq.saturating_sub(want);
                }
                *next_seq = Some(r.seq + 1);
                for f in findings(&r) {
                    if s.findings.len() < MAX_FINDINGS {
                        s.findings.push(f);
                    } else {
                        s.more_findings += 1;
                    }
                }
            }
        }
    }
    s
}

pub fn read_taint() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/tainted")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::super::test_log::{Fake, WARN};
    use super::*;

    #[test]
    fn records_parse_with_their_priority_and_continuation_lines() {
        let r = parse_record(WARN).unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!((r.level, r.facility), (4, 0));
        assert_eq!(r.usec, 5678901);
        assert_eq!(
            r.text,
            "WARNING: CPU: 0 PID: 1 at mm/gup.c:123 try_grab_folio+0x3a/0x1f0"
        );
        // user.warning, written by a process; extra header fields are allowed.
        let r = parse_record("12,7,8,-,caller=T42;hello\n").unwrap();
        assert_eq!((r.level, r.facility, r.seq), (4, 1, 7));
        // The kernel's escapes: an embedded newline and a backslash.
        let r = parse_record("3,9,10,c;a\\x0aBUG: x\\x5c\\xzz\n").unwrap();
        assert_eq!(r.text, "a\nBUG: x\\\\xzz");
        assert_eq!(parse_record("not a record"), None);
        assert_eq!(parse_record("x,1,2,-;t"), None);
    }

    #[test]
    fn a_scan_counts_what_was_overwritten() {
        let log = Fake::default();
        log.log("6,10,1,-;zram0: detected capacity change from 0 to 1048576\n");
        log.push(Read1::Overwritten);
        log.log("6,15,2,-;swap off\n");
        log.log("garbage");
        log.log(WARN);
        let mut next = Some(10);
        let s = scan(&mut log.clone(), &mut next);
        assert_eq!(s.records, 3);
        assert!(s.overwritten);
        // 11..14 were overwritten; the WARN's sequence number (1234) is a
        // gap too.
        assert_eq!(s.lost, 4 + (1234 - 16));
        assert_eq!(next, Some(1235));
        assert_eq!(s.findings.len(), 1);
        assert_eq!(s.findings[0].seq, 1234);
    }
}
