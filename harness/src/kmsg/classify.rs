//! What a kernel log line or a taint flag says: whether a line has the
//! shape of a kernel error (`PATTERNS`, `matches`), whether it is a fault
//! the kernel may not get over (`fatal_shape`), and what the taint flags of
//! kernel/panic.c mean. Pure: nothing here reads the log.

use serde::Serialize;

use super::log::Record;

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
pub(super) const FATAL_TAINTS: u64 = (1 << 7) | (1 << 5) | (1 << 14) | (1 << 4);

pub fn is_fatal(f: &Finding) -> bool {
    f.facility == 0 && fatal_shape(&f.line).is_some()
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

#[cfg(test)]
mod tests {
    use super::super::log::parse_record;
    use super::*;

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
    fn taint_letters_follow_kernel_panic_c() {
        assert_eq!(
            describe_taints(1 << 9 | 1 << 5),
            "B (bad page), W (warning)"
        );
        assert_eq!(describe_taints(1 << 40), "bit 40");
        assert_eq!(error_taints(), 1 << 4 | 1 << 5 | 1 << 7 | 1 << 9 | 1 << 14);
    }
}
