//! The kernel-log check: a kernel warning, BUG, Oops or bad-page report
//! logged while a trial ran fails that trial, with the lines; so does an
//! error taint flag (W, B, D, L, M in /proc/sys/kernel/tainted) that appeared
//! meanwhile.
//!
//! It reads `/dev/kmsg` (one structured record per read(): "prio,seq,usec,
//! flags;text" plus " KEY=value" continuation lines; see
//! Documentation/ABI/testing/dev-kmsg), through one descriptor kept open for
//! the whole session:
//! - the first `before` opens it and seeks to the end (SEEK_END: the next
//!   record to be logged), so older lines are never judged;
//! - every `before` reads what was logged since the previous trial: matching
//!   lines there belong to no trial and are kept for `between_trials`;
//! - `after` (run after the trial's processes are gone and the other watches
//!   are done) reads what was logged during the trial and judges it.
//!
//! Only lines of a known error shape count (see `PATTERNS`); everything else
//! the kernel logs (swap on and off, drop_caches, ...) is counted and
//! ignored. A record overwritten before it was read (EPIPE: the ring buffer
//! wrapped) makes the check `Unreliable` unless what was read already
//! violates it. No /dev/kmsg, or not allowed to read it (dmesg_restrict=1
//! without CAP_SYSLOG), is `NotChecked`, saying why; the taint flags, which
//! anyone can read, are still checked then.
//!
//! Records written to /dev/kmsg by userspace carry a non-kernel facility
//! (the kernel forces LOG_USER when none is given and never lets userspace
//! log as facility 0); they are matched like the kernel's and reported with
//! their facility, so an injected line is visibly one.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use serde::Serialize;

use crate::outcome::{CheckResult, CheckStatus};
use crate::runner::Watch;

pub const CHECK: &str = "kernel log";

/// A record is at most CONSOLE_EXT_LOG_MAX (8 KiB); a smaller buffer makes
/// read() fail with EINVAL.
const READ_BUF: usize = 16 << 10;
/// Records read per scan at most: a kernel logging without pause cannot
/// keep the runner reading forever.
const MAX_RECORDS: u64 = 100_000;
/// Matching lines kept per scan; the rest are counted.
const MAX_FINDINGS: usize = 50;
/// Matching lines quoted in the detail; all kept ones are in the data.
const QUOTED: usize = 5;

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

/// A shape of kernel error message: a line that starts with `starts` and
/// then contains `contains`.
#[derive(Debug)]
pub struct Pattern {
    pub starts: &'static str,
    pub contains: &'static str,
    /// Who prints it.
    pub source: &'static str,
}

const fn p(starts: &'static str, contains: &'static str, source: &'static str) -> Pattern {
    Pattern {
        starts,
        contains,
        source,
    }
}

/// The lines that fail a trial. Each is the fixed start of a message the
/// kernel prints only when something is wrong; the match is made at the
/// start of the line, or after one "subsystem: " prefix (pr_fmt, as in
/// "watchdog: BUG: soft lockup" or "rcu: INFO: ... detected stalls").
pub const PATTERNS: &[Pattern] = &[
    p(
        "------------[ cut here ]------------",
        "",
        "CUT_HERE, printed before every WARN and BUG (asm-generic/bug.h)",
    ),
    p(
        "WARNING: CPU: ",
        "",
        "__warn() in kernel/panic.c: WARN_ON, WARN_ONCE, VM_WARN_ON*",
    ),
    p(
        "WARNING: possible ",
        "",
        "lockdep: circular or recursive locking, lock inversion",
    ),
    p("WARNING: inconsistent lock state", "", "lockdep"),
    p("WARNING: bad unlock balance", "", "lockdep"),
    p("WARNING: suspicious RCU usage", "", "lockdep (RCU)"),
    p(
        "BUG: ",
        "",
        "Bad page state (mm/page_alloc.c), Bad page map (mm/memory.c), Bad rss-counter \
         state (kernel/fork.c), NULL pointer dereference, unable to handle page fault, \
         scheduling while atomic, sleeping in atomic context, soft lockup, KASAN/KFENCE/KCSAN",
    ),
    p(
        "BUG ",
        "ainted",
        "SLUB object and slab corruption (mm/slub.c)",
    ),
    p(
        "kernel BUG at ",
        "",
        "BUG(), BUG_ON(), VM_BUG_ON*() (lib/bug.c)",
    ),
    p("Oops: ", "", "die() on x86"),
    p("Internal error: Oops", "", "die() on arm64"),
    p("general protection fault", "", "x86 #GP in the kernel"),
    p(
        "Unable to handle kernel ",
        "",
        "kernel page fault on arm64, riscv, powerpc",
    ),
    p("UBSAN: ", "", "undefined behaviour (lib/ubsan.c)"),
    p(
        "refcount_t: ",
        "",
        "refcount underflow or saturation (lib/refcount.c)",
    ),
    p("list_add corruption", "", "lib/list_debug.c"),
    p("list_del corruption", "", "lib/list_debug.c"),
    p(
        "INFO: ",
        "detected ",
        "RCU stall, also expedited and RCU-tasks (kernel/rcu/tree_stall.h, tree_exp.h, tasks.h)",
    ),
    p(
        "Watchdog detected hard LOCKUP",
        "",
        "hard lockup (kernel/watchdog.c)",
    ),
    p(
        "INFO: task ",
        " blocked for more than ",
        "hung task (kernel/hung_task.c)",
    ),
];

/// The pattern a line of a message matches, if any.
pub fn matches(line: &str) -> Option<&'static Pattern> {
    let line = line.trim_start();
    let hit = |s: &str| {
        PATTERNS.iter().find(|p| {
            s.strip_prefix(p.starts)
                .is_some_and(|rest| rest.contains(p.contains))
        })
    };
    if let Some(p) = hit(line) {
        return Some(p);
    }
    // One pr_fmt prefix: an identifier without spaces, then ": ".
    let (ident, rest) = line.split_once(": ")?;
    let is_ident = !ident.is_empty()
        && ident
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if is_ident {
        hit(rest)
    } else {
        None
    }
}

/// A line that matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub seq: u64,
    pub level: u8,
    pub facility: u32,
    /// Microseconds since boot, as the kernel stamped it.
    pub usec: u64,
    pub line: String,
    /// The `Pattern::starts` it matched.
    pub pattern: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match self.facility {
            0 => String::new(),
            1 => ", from userspace".into(),
            n => format!(", facility {n}"),
        };
        write!(
            f,
            "[{}.{:06}{from}] {}",
            self.usec / 1_000_000,
            self.usec % 1_000_000,
            self.line
        )
    }
}

/// The matching lines of one record.
pub fn findings(r: &Record) -> Vec<Finding> {
    r.text
        .lines()
        .filter_map(|line| {
            matches(line).map(|p| Finding {
                seq: r.seq,
                level: r.level,
                facility: r.facility,
                usec: r.usec,
                line: line.trim_end().to_string(),
                pattern: p.starts,
            })
        })
        .collect()
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
    fn merge(&mut self, later: Scan) {
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

/// `BUG: ` lines of a fault the kernel does not get over: it then kills the
/// task (an Oops follows) or a CPU is stuck. Other `BUG: ` lines (bad page
/// state, bad rss-counter, sleeping in atomic context, KASAN) are logged and
/// survived: they fail their trial (and bad page state taints B).
const FATAL_BUG: &[&str] = &[
    "kernel NULL pointer dereference",
    "unable to handle",
    "soft lockup",
    "workqueue lockup",
    "spinlock lockup",
];

/// What a kernel log line says when the kernel faulted in a way it may not
/// get over (a task died in the kernel, a CPU is stuck, a panic): after it
/// no trial is trusted, and a guest may report nothing more. None for any
/// other line, WARNINGs included. One classification for the live watch in
/// the run and the host's watch of a guest's console.
pub fn fatal_shape(line: &str) -> Option<&'static str> {
    let l = line.trim_start();
    if l.starts_with("Kernel panic - not syncing") {
        return Some("Kernel panic");
    }
    let p = matches(l)?;
    match p.starts {
        "Oops: "
        | "Internal error: Oops"
        | "kernel BUG at "
        | "general protection fault"
        | "Unable to handle kernel "
        | "Watchdog detected hard LOCKUP"
        | "INFO: task " => Some(p.starts.trim_end()),
        // RCU: "INFO: rcu_sched self-detected stall", "... detected stalls".
        "INFO: " if l.contains("stall") => Some("RCU stall"),
        "BUG: " => {
            let rest = l.find("BUG: ").map(|i| &l[i + 5..]).unwrap_or_default();
            FATAL_BUG
                .iter()
                .find(|b| rest.starts_with(*b))
                .map(|_| "BUG:")
        }
        _ => None,
    }
}

/// The taint flags after which the kernel is not trusted: D (died), B (bad
/// page), L (soft lockup), M (machine check).
const FATAL_TAINTS: u64 = (1 << 7) | (1 << 5) | (1 << 14) | (1 << 4);

pub fn is_fatal(f: &Finding) -> bool {
    f.facility == 0 && fatal_shape(&f.line).is_some()
}

/// A kernel fault: why the run stops trusting the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// The lines of fault shapes, as logged (at most MAX_FINDINGS).
    pub lines: Vec<String>,
    /// The taint flags of a fault that appeared, if any.
    pub taint: Option<String>,
}

impl Fault {
    fn of(scan: &Scan, new_taint: u64) -> Option<Fault> {
        let lines: Vec<String> = scan
            .findings
            .iter()
            .filter(|f| is_fatal(f))
            .map(|f| f.to_string())
            .collect();
        let taint = new_taint & FATAL_TAINTS;
        (!lines.is_empty() || taint != 0).then(|| Fault {
            lines,
            taint: (taint != 0).then(|| describe_taints(taint)),
        })
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.lines.iter().take(QUOTED).cloned().collect();
        if self.lines.len() > QUOTED {
            parts.push(format!("and {} more", self.lines.len() - QUOTED));
        }
        if let Some(t) = &self.taint {
            parts.push(format!("tainted {t}"));
        }
        write!(f, "{}", parts.join(" | "))
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

/// The taint flags of kernel/panic.c: bit, letter, meaning, and whether it
/// says the kernel went wrong (rather than what was loaded or configured).
pub const TAINTS: &[(u32, char, &str, bool)] = &[
    (0, 'P', "proprietary module", false),
    (1, 'F', "module force-loaded", false),
    (2, 'S', "CPU out of spec", false),
    (3, 'R', "module force-unloaded", false),
    (4, 'M', "machine check", true),
    (5, 'B', "bad page", true),
    (6, 'U', "tainted by user", false),
    (7, 'D', "kernel died (oops)", true),
    (8, 'A', "ACPI table overridden", false),
    (9, 'W', "warning", true),
    (10, 'C', "staging driver", false),
    (11, 'I', "firmware workaround", false),
    (12, 'O', "out-of-tree module", false),
    (13, 'E', "unsigned module", false),
    (14, 'L', "soft lockup", true),
    (15, 'K', "live patch", false),
    (16, 'X', "auxiliary", false),
    (17, 'T', "struct randomisation", false),
    (18, 'N', "test taint", false),
    (19, 'J', "fwctl", false),
];

/// The taint bits that say the kernel went wrong.
pub fn error_taints() -> u64 {
    TAINTS.iter().filter(|t| t.3).fold(0, |m, t| m | (1 << t.0))
}

/// "W (warning), B (bad page)"; unknown bits as "bit 25".
pub fn describe_taints(bits: u64) -> String {
    (0..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| match TAINTS.iter().find(|t| t.0 == b) {
            Some(t) => format!("{} ({})", t.1, t.2),
            None => format!("bit {b}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn read_taint() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/tainted")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[derive(Serialize)]
struct Data<'a> {
    records_read: u64,
    lost: u64,
    overwritten: bool,
    findings: &'a [Finding],
    more_findings: usize,
    taint_before: Option<u64>,
    taint_after: Option<u64>,
    /// Bits set after the trial that were clear before it.
    new_taint: u64,
    new_taint_flags: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_read: Option<&'a str>,
}

/// Judge one trial: `scan` is what was read of the log during it (Err: why
/// the log could not be read), the taints are /proc/sys/kernel/tainted before
/// and after. Pure.
pub fn judge(
    scan: Result<&Scan, &str>,
    taint_before: Option<u64>,
    taint_after: Option<u64>,
) -> CheckResult {
    let empty = Scan::default();
    let s = scan.unwrap_or(&empty);
    let new_taint = match (taint_before, taint_after) {
        (Some(b), Some(a)) => a & !b,
        _ => 0,
    };
    let bad_taint = new_taint & error_taints();
    let data = serde_json::to_value(Data {
        records_read: s.records,
        lost: s.lost,
        overwritten: s.overwritten,
        findings: &s.findings,
        more_findings: s.more_findings,
        taint_before,
        taint_after,
        new_taint,
        new_taint_flags: describe_taints(new_taint),
        not_read: scan.err(),
    })
    .unwrap_or_default();
    let result = |status, detail| CheckResult {
        check: CHECK.into(),
        status,
        detail,
        data: data.clone(),
    };
    let mut violations = Vec::new();
    let n = s.findings.len() + s.more_findings;
    if n > 0 {
        let quoted: Vec<String> = s
            .findings
            .iter()
            .take(QUOTED)
            .map(|f| f.to_string())
            .collect();
        let rest = n - quoted.len();
        violations.push(format!(
            "the kernel logged {n} error line{} during the trial: {}{}",
            if n == 1 { "" } else { "s" },
            quoted.join(" | "),
            if rest > 0 {
                format!(" | and {rest} more")
            } else {
                String::new()
            }
        ));
    }
    if bad_taint != 0 {
        violations.push(format!(
            "the kernel became tainted during the trial: {} (/proc/sys/kernel/tainted {} -> {})",
            describe_taints(bad_taint),
            taint_before.unwrap_or(0),
            taint_after.unwrap_or(0)
        ));
    }
    if !violations.is_empty() {
        return result(CheckStatus::Violated, violations.join("; "));
    }
    let other_taint = if new_taint != 0 {
        format!(
            "; taint flags that are not kernel errors appeared: {}",
            describe_taints(new_taint)
        )
    } else {
        String::new()
    };
    let taint_note = match (taint_before, taint_after) {
        (Some(_), Some(_)) => "no error taint flag appeared",
        _ => "/proc/sys/kernel/tainted unreadable",
    };
    let s = match scan {
        Err(why) => {
            return result(
                CheckStatus::NotChecked,
                format!("kernel log not checked: {why} ({taint_note}{other_taint})"),
            )
        }
        Ok(s) => s,
    };
    if let Some(e) = &s.error {
        return result(
            CheckStatus::Unreliable,
            format!(
                "kernel log unreliable: reading /dev/kmsg failed after {} records: {e} \
                 ({taint_note}{other_taint})",
                s.records
            ),
        );
    }
    if s.overwritten || s.lost > 0 || s.cut_short {
        let what = if s.cut_short {
            format!("reading stopped after {MAX_RECORDS} records")
        } else {
            let n = match (s.overwritten, s.lost) {
                (true, 0) => "some".to_string(),
                (true, n) => format!("at least {n}"),
                (false, n) => n.to_string(),
            };
            format!(
                "{n} records were overwritten before they could be read (the kernel log \
                 ring buffer wrapped)"
            )
        };
        return result(
            CheckStatus::Unreliable,
            format!(
                "kernel log unreliable: {what}; no error lines in the {} that were read \
                 ({taint_note}{other_taint})",
                s.records
            ),
        );
    }
    result(
        CheckStatus::Held,
        format!(
            "no error lines in {} records logged during the trial ({taint_note}{other_taint})",
            s.records
        ),
    )
}

/// The kernel-log watch of a session: one descriptor for all its trials, so
/// that what is logged between trials is read too (see `between_trials`).
pub struct KernelLog {
    opener: Box<Opener>,
    taint: Box<TaintReader>,
    /// None before the first `before`; Err once opening failed.
    source: Option<Result<Box<dyn Source>, String>>,
    next_seq: Option<u64>,
    taint_before: Option<u64>,
    /// The taint when the last trial ended (for changes between trials).
    taint_last: Option<u64>,
    between: Vec<String>,
    /// What was read while the current trial (or batch) ran.
    during: Scan,
    /// The first kernel fault seen: from then on the kernel is not trusted.
    fault: Option<Fault>,
    /// When `during` last read the taint flags.
    taint_looked: Option<std::time::Instant>,
}

type Opener = dyn FnMut() -> Result<Box<dyn Source>, String> + Send;
type TaintReader = dyn FnMut() -> Option<u64> + Send;

impl Default for KernelLog {
    fn default() -> Self {
        KernelLog {
            opener: Box::new(open),
            taint: Box::new(read_taint),
            source: None,
            next_seq: None,
            taint_before: None,
            taint_last: None,
            between: Vec::new(),
            during: Scan::default(),
            fault: None,
            taint_looked: None,
        }
    }
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog")
            .field("next_seq", &self.next_seq)
            .field("between", &self.between)
            .finish_non_exhaustive()
    }
}

impl KernelLog {
    pub fn new() -> Self {
        KernelLog::default()
    }

    /// Read records from `opener` and the taint from `taint` instead of the
    /// host's (tests).
    pub fn with_sources(
        mut self,
        opener: impl FnMut() -> Result<Box<dyn Source>, String> + Send + 'static,
        taint: impl FnMut() -> Option<u64> + Send + 'static,
    ) -> Self {
        self.opener = Box::new(opener);
        self.taint = Box::new(taint);
        self
    }

    /// Read what is pending outside any trial; keep the error lines.
    fn read_between(&mut self) {
        let Some(Ok(src)) = self.source.as_mut() else {
            return;
        };
        let s = scan(src.as_mut(), &mut self.next_seq);
        self.between.extend(
            s.findings
                .iter()
                .map(|f| format!("{f} (logged between trials)")),
        );
        if s.more_findings > 0 {
            self.between.push(format!(
                "and {} more error lines between trials",
                s.more_findings
            ));
        }
        if s.overwritten || s.lost > 0 {
            self.between.push(
                "kernel log records logged between trials were overwritten before they \
                 could be read"
                    .into(),
            );
        }
        let now = (self.taint)();
        self.note_fault(&s, now);
        if let (Some(last), Some(now)) = (self.taint_last, now) {
            let new = now & !last & error_taints();
            if new != 0 {
                self.between.push(format!(
                    "the kernel became tainted between trials: {}",
                    describe_taints(new)
                ));
            }
        }
        self.taint_last = now;
    }

    /// The first kernel fault seen in or between trials, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    fn note_fault(&mut self, scan: &Scan, taint_now: Option<u64>) {
        if self.fault.is_some() {
            return;
        }
        let new_taint = match (self.taint_before.or(self.taint_last), taint_now) {
            (Some(b), Some(a)) => a & !b,
            _ => 0,
        };
        self.fault = Fault::of(scan, new_taint);
    }

    /// Error lines (and error taint flags) the kernel logged outside any
    /// trial since the first one started, each once: reading them takes
    /// them. Reads what is pending first, so at the end of a run it covers
    /// the time since the last trial.
    pub fn between_trials(&mut self) -> Vec<String> {
        self.read_between();
        std::mem::take(&mut self.between)
    }
}

impl Watch for KernelLog {
    fn before(&mut self) {
        if self.source.is_none() {
            self.source = Some((self.opener)());
            self.taint_last = (self.taint)();
        }
        self.read_between();
        self.taint_before = self.taint_last;
        self.during = Scan::default();
    }

    fn wake_fd(&self) -> Option<RawFd> {
        match &self.source {
            Some(Ok(src)) => src.fd(),
            _ => None,
        }
    }

    /// Read what was logged so far while the trial runs: an Oops, BUG,
    /// #GP, RCU stall or a fault's taint flag is reported at once.
    fn during(&mut self) -> Option<String> {
        if self.fault.is_none() {
            let mut read = 0;
            if let Some(Ok(src)) = self.source.as_mut() {
                let now = scan(src.as_mut(), &mut self.next_seq);
                read = now.records;
                self.during.merge(now);
            }
            // The runner asks on every wake-up (each record a trial sends):
            // the taint flags are read when the log moved, or twice a second.
            let due = self
                .taint_looked
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(500));
            if read > 0 || due {
                self.taint_looked = Some(std::time::Instant::now());
                let taint_now = (self.taint)();
                let during = std::mem::take(&mut self.during);
                self.note_fault(&during, taint_now);
                self.during = during;
            }
        }
        self.fault.as_ref().map(|f| f.to_string())
    }

    fn fault(&self) -> Option<String> {
        self.fault.as_ref().map(|f| f.to_string())
    }

    fn after(&mut self) -> CheckResult {
        let taint_after = (self.taint)();
        let scanned = match self.source.as_mut() {
            Some(Ok(src)) => {
                let mut all = std::mem::take(&mut self.during);
                all.merge(scan(src.as_mut(), &mut self.next_seq));
                Ok(all)
            }
            Some(Err(why)) => Err(why.clone()),
            None => Err("the watch was not started".to_string()),
        };
        if let Ok(s) = &scanned {
            self.note_fault(s, taint_after);
        } else {
            self.note_fault(&Scan::default(), taint_after);
        }
        self.taint_last = taint_after;
        judge(
            scanned.as_ref().map_err(String::as_str),
            self.taint_before.take(),
            taint_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use crate::verdict::{decide, Ended, Observations};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A log the test appends to, read like /dev/kmsg.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<VecDeque<Read1>>>);

    impl Fake {
        fn log(&self, raw: &str) {
            self.0.lock().unwrap().push_back(Read1::Record(raw.into()));
        }
        fn push(&self, r: Read1) {
            self.0.lock().unwrap().push_back(r);
        }
    }

    impl Source for Fake {
        fn read1(&mut self) -> Read1 {
            self.0.lock().unwrap().pop_front().unwrap_or(Read1::End)
        }
    }

    const WARN: &str = "4,1234,5678901,-;WARNING: CPU: 0 PID: 1 at mm/gup.c:123 \
                        try_grab_folio+0x3a/0x1f0\n SUBSYSTEM=test\n DEVICE=+x:y\n";

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
    fn kernel_error_shapes_match() {
        for line in [
            "------------[ cut here ]------------",
            "WARNING: CPU: 3 PID: 4242 at mm/memory.c:1234 zap_pte_range+0x5b1/0x6b0",
            "BUG: Bad page state in process cow  pfn:1a2b3",
            "BUG: Bad page map in process cow  pte:8000000123456067 pmd:1234567",
            "BUG: Bad rss-counter state mm:00000000deadbeef type:MM_ANONPAGES val:1 Comm:cow Pid:12",
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "BUG: KASAN: use-after-free in gup_fast+0x1/0x2",
            "kernel BUG at mm/huge_memory.c:2345!",
            "Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1] PREEMPT SMP NOPTI",
            "Oops: 0002 [#1] SMP",
            "Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP",
            "general protection fault: 0000 [#1] SMP",
            "Unable to handle kernel paging request at virtual address dead000000000100",
            "UBSAN: shift-out-of-bounds in mm/gup.c:99:5",
            "refcount_t: underflow; use-after-free.",
            "list_add corruption. prev->next should be next (ffff888), but was ffff999.",
            "list_del corruption, ffff888->next is LIST_POISON1 (dead000000000100)",
            "WARNING: possible circular locking dependency detected",
            "WARNING: suspicious RCU usage",
            "BUG kmalloc-64 (Not tainted): Poison overwritten",
            "BUG kmalloc-64 (Tainted: G        W         ): Object already free",
            "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [cow:1234]",
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "rcu: INFO: rcu_sched self-detected stall on CPU",
            "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {",
            "watchdog: Watchdog detected hard LOCKUP on cpu 1",
            "INFO: task cow:123 blocked for more than 120 seconds.",
            "cowgup-test: WARNING: CPU: 0 PID: 1 at injected",
        ] {
            assert!(matches(line).is_some(), "{line}");
        }
    }

    #[test]
    fn only_faults_the_kernel_may_not_get_over_are_fatal() {
        for l in [
            "Oops: 0002 [#1] SMP",
            "BUG: kernel NULL pointer dereference, address: 0000000000000010",
            "kernel BUG at mm/gup_test.c:48!",
            "rcu: INFO: rcu_preempt self-detected stall on CPU",
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [cowgup:1115]",
            "Kernel panic - not syncing: Fatal exception",
        ] {
            assert!(fatal_shape(l).is_some(), "{l}");
        }
        for l in [
            "WARNING: CPU: 1 PID: 42 at mm/memory.c:1 do_wp_page+0x1/0x2",
            "BUG: Bad page state in process cowgup  pfn:12345",
            "BUG: Bad rss-counter state mm:000000 type:MM_ANONPAGES val:1",
            "Oopsy driver loaded",
        ] {
            assert_eq!(fatal_shape(l), None, "{l}");
        }
    }

    #[test]
    fn ordinary_lines_do_not_match() {
        // Seen on this machine while the suite runs, and other common lines.
        for line in [
            "zram0: detected capacity change from 0 to 1048576",
            "Adding 524284k swap on /dev/zram0.  Priority:-2 extents:1 across:524284k SS",
            "bash (24548): drop_caches: 3",
            "Warning: unable to open an initial console.",
            "x86/mm: Checked W+X mappings: passed, no W+X pages found.",
            "audit: type=1400 audit(1.2:3): apparmor=\"STATUS\"",
            "INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.2 msecs",
            "BUGGY_DEVICE: ready",
            "Oopsy driver loaded",
            "a process says: the BUG: is elsewhere in the line",
            "systemd[1]: BUG: not a kernel line shape",
            "",
        ] {
            assert!(matches(line).is_none(), "{line}");
        }
    }

    #[test]
    fn every_line_of_a_multi_line_record_is_looked_at() {
        let r = parse_record("4,1,2,-;first line\\x0aBUG: Bad page state in process a  pfn:1\\x0a")
            .unwrap();
        let f = findings(&r);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].line, "BUG: Bad page state in process a  pfn:1");
        assert_eq!(f[0].pattern, "BUG: ");
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

    fn scanned(lines: &[&str]) -> Scan {
        let log = Fake::default();
        for (i, l) in lines.iter().enumerate() {
            log.log(&format!("6,{},{},-;{l}\n", 100 + i, 1000 * i));
        }
        scan(&mut log.clone(), &mut Some(100))
    }

    #[test]
    fn a_warning_violates_and_benign_lines_hold() {
        let s = scanned(&[
            "zram0: detected capacity change",
            "bash (1): drop_caches: 3",
        ]);
        let c = judge(Ok(&s), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::Held, "{c:?}");
        assert_eq!(
            c.detail,
            "no error lines in 2 records logged during the trial (no error taint flag appeared)"
        );

        let s = scanned(&[
            "swap on",
            "WARNING: CPU: 0 PID: 1 at mm/gup.c:123 x+0x1/0x2",
        ]);
        let c = judge(Ok(&s), Some(0), Some(1 << 9));
        assert_eq!(c.status, CheckStatus::Violated, "{c:?}");
        assert_eq!(
            c.detail,
            "the kernel logged 1 error line during the trial: [0.001000] WARNING: CPU: 0 \
             PID: 1 at mm/gup.c:123 x+0x1/0x2; the kernel became tainted during the trial: \
             W (warning) (/proc/sys/kernel/tainted 0 -> 512)"
        );
        assert_eq!(c.data["findings"][0]["seq"], 101);
        assert_eq!(c.data["findings"][0]["pattern"], "WARNING: CPU: ");
        assert_eq!(c.data["new_taint_flags"], "W (warning)");

        // Through the verdict: a pass becomes a fail naming the line.
        let v = decide(&Observations {
            reported: Some(Outcome::Pass),
            ended: Ended::Exited(0),
            checks: vec![c],
        });
        assert!(
            matches!(&v.outcome, Outcome::Fail(r) if r.starts_with("kernel log: the kernel logged 1 error line")
                && r.contains("mm/gup.c:123")),
            "{:?}",
            v.outcome
        );
    }

    #[test]
    fn many_lines_are_quoted_in_part_and_kept_as_data() {
        let lines: Vec<String> = (0..8).map(|i| format!("BUG: Bad page state {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let c = judge(Ok(&scanned(&refs)), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::Violated);
        assert!(c.detail.starts_with("the kernel logged 8 error lines"));
        assert!(c.detail.ends_with("| and 3 more"), "{}", c.detail);
        assert_eq!(c.data["findings"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn taint_alone_decides_by_its_kind() {
        let quiet = scanned(&[]);
        let c = judge(Ok(&quiet), Some(1 << 9), Some(1 << 9 | 1 << 5));
        assert_eq!(c.status, CheckStatus::Violated);
        assert!(c.detail.contains("B (bad page)"), "{}", c.detail);
        // A module loaded meanwhile is not a kernel error: said, not failed.
        let c = judge(Ok(&quiet), Some(0), Some(1 << 12));
        assert_eq!(c.status, CheckStatus::Held);
        assert!(
            c.detail.ends_with(
                "taint flags that are not kernel errors appeared: O (out-of-tree module))"
            ),
            "{}",
            c.detail
        );
    }

    #[test]
    fn lost_records_make_it_unreliable_unless_it_is_violated_anyway() {
        let log = Fake::default();
        log.push(Read1::Overwritten);
        log.log("6,120,1,-;ordinary\n");
        let s = scan(&mut log.clone(), &mut Some(100));
        let c = judge(Ok(&s), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::Unreliable, "{c:?}");
        assert!(
            c.detail.starts_with(
                "kernel log unreliable: at least 20 records were overwritten before they \
                 could be read"
            ),
            "{}",
            c.detail
        );
        // The very first read overwritten: how many is not known.
        let first = Fake::default();
        first.push(Read1::Overwritten);
        let s = scan(&mut first.clone(), &mut None);
        let c = judge(Ok(&s), Some(0), Some(0));
        assert!(
            c.detail
                .starts_with("kernel log unreliable: some records were overwritten"),
            "{}",
            c.detail
        );
        log.push(Read1::Overwritten);
        log.log("4,200,1,-;kernel BUG at mm/gup.c:1!\n");
        let s = scan(&mut log.clone(), &mut Some(121));
        assert_eq!(
            judge(Ok(&s), Some(0), Some(0)).status,
            CheckStatus::Violated
        );
    }

    #[test]
    fn no_log_is_not_checked_but_taint_still_counts() {
        let why = "cannot read /dev/kmsg: Operation not permitted (os error 1) \
                   (kernel.dmesg_restrict = 1: reading needs CAP_SYSLOG)";
        let c = judge(Err(why), Some(0), Some(0));
        assert_eq!(c.status, CheckStatus::NotChecked);
        assert_eq!(
            c.detail,
            format!("kernel log not checked: {why} (no error taint flag appeared)")
        );
        let c = judge(Err(why), Some(0), Some(1 << 7));
        assert_eq!(c.status, CheckStatus::Violated);
        assert!(c.detail.contains("D (kernel died (oops))"), "{}", c.detail);
    }

    #[test]
    fn through_the_watch_with_lines_between_trials() {
        let log = Fake::default();
        let taint = Arc::new(Mutex::new(0u64));
        let (l, t) = (log.clone(), taint.clone());
        let mut w = KernelLog::new().with_sources(
            move || Ok(Box::new(l.clone()) as Box<dyn Source>),
            move || Some(*t.lock().unwrap()),
        );
        // A quiet trial.
        w.before();
        log.log("6,1,1,-;zram0: detected capacity change\n");
        let c = w.after();
        assert_eq!(c.status, CheckStatus::Held, "{c:?}");
        // Between trials: a bad page and its taint; not this trial's.
        log.log("1,2,2,-;BUG: Bad page state in process kswapd0  pfn:12345\n");
        *taint.lock().unwrap() = 1 << 5;
        w.before();
        log.log("6,3,3,-;swap on\n");
        let c = w.after();
        assert_eq!(c.status, CheckStatus::Held, "{c:?}");
        // A warning during the next trial fails it.
        w.before();
        log.log(&WARN.replace("1234", "4"));
        *taint.lock().unwrap() |= 1 << 9;
        let c = w.after();
        assert_eq!(c.status, CheckStatus::Violated, "{c:?}");
        assert!(c.detail.contains("mm/gup.c:123"));
        assert!(c.detail.contains("W (warning)") && !c.detail.contains("bad page"));
        // After the last trial.
        log.log("4,5,5,-;rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n");
        assert_eq!(
            w.between_trials(),
            vec![
                "[0.000002] BUG: Bad page state in process kswapd0  pfn:12345 (logged between trials)",
                "the kernel became tainted between trials: B (bad page)",
                "[0.000005] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks: (logged between trials)",
            ]
        );
        assert!(w.between_trials().is_empty());
    }

    #[test]
    fn a_log_that_cannot_be_opened_is_not_checked() {
        let mut w = KernelLog::new().with_sources(|| Err("no /dev/kmsg".into()), || Some(0));
        w.before();
        let c = w.after();
        assert_eq!(c.status, CheckStatus::NotChecked);
        assert!(c.detail.starts_with("kernel log not checked: no /dev/kmsg"));
        assert!(w.between_trials().is_empty());
    }

    #[test]
    fn taint_letters_follow_kernel_panic_c() {
        assert_eq!(
            describe_taints(1 << 9 | 1 << 5),
            "B (bad page), W (warning)"
        );
        assert_eq!(describe_taints(1 << 40), "bit 40");
        assert_eq!(error_taints(), 1 << 4 | 1 << 5 | 1 << 7 | 1 << 9 | 1 << 14);
    }
}
