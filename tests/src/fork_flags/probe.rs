//! A child's look at a range fork() must not have given it (MADV_DONTFORK):
//! is a VMA there in its /proc/self/maps, and what does a read of the range
//! do. The read is made by a grandchild of its own, whose SIGSEGV/SIGBUS
//! handler reports the signal, its si_code and si_addr before it exits, so a
//! fault on the range is told apart from a crash anywhere else (that one
//! ends the grandchild without a report) and from a read that succeeds.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use cowgup_fixtures::mem::Region;
use cowgup_fixtures::proc::spawn;
use cowgup_fixtures::{fail, Step};

/// What reading one word of the range did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Touch {
    /// The read faulted: the signal, its si_code, the faulting address.
    Faulted { signal: i32, code: i32, addr: u64 },
    /// The read returned this word.
    Read(u64),
    /// The grandchild ended otherwise (its exit code, or the signal that
    /// killed it without the handler running).
    Died(i32),
}

impl Touch {
    /// A read of an address no VMA covers: SIGSEGV with SEGV_MAPERR at exactly
    /// that address (arch/x86/mm/fault.c bad_area_nosemaphore(): no VMA is
    /// found, so it is MAPERR, never SIGBUS, for hugetlb ranges too).
    pub fn is_unmapped_fault_at(self, addr: usize) -> bool {
        self == Touch::Faulted {
            signal: libc::SIGSEGV,
            code: SEGV_MAPERR,
            addr: addr as u64,
        }
    }
}

impl std::fmt::Display for Touch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Touch::Faulted { signal, code, addr } => {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map_or_else(|_| signal.to_string(), |s| s.to_string());
                write!(f, "{name} (si_code {code}) at 0x{addr:x}")
            }
            Touch::Read(w) => write!(f, "read 0x{w:016x}"),
            Touch::Died(c) => write!(f, "ended without a report ({c})"),
        }
    }
}

/// si_code of a SIGSEGV where no VMA covers the address (asm-generic/siginfo.h).
const SEGV_MAPERR: i32 = 1;
const FAULTED: i32 = 0x5e;
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // write(2) and _exit(2) are async-signal-safe.
    unsafe {
        let words = [
            signal as u64,
            (*info).si_code as u64,
            (*info).si_addr() as u64,
        ];
        libc::write(REPORT_FD.load(Ordering::Relaxed), words.as_ptr().cast(), 24);
        libc::_exit(FAULTED);
    }
}

/// Read the word at `addr` in a grandchild and say what happened.
pub fn touch(addr: usize) -> Step<Touch> {
    let (rd, wr) = nix::unistd::pipe().or_else(|e| fail(format!("pipe() failed: {e}")))?;
    let child = spawn(|| {
        REPORT_FD.store(wr.as_raw_fd(), Ordering::Relaxed);
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: installing a handler in this single-threaded process.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_fault as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(signal, &sa, std::ptr::null_mut()) != 0 {
                    return 1;
                }
            }
        }
        // SAFETY: the point is to read it, mapped or not.
        let word = unsafe { std::ptr::read_volatile(addr as *const u64) };
        let words = [0u64, 0, word];
        // SAFETY: writing our own buffer to our pipe.
        unsafe { libc::write(wr.as_raw_fd(), words.as_ptr().cast(), 24) };
        0
    })?;
    drop(wr);
    let mut buf = [0u8; 24];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&rd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return fail(format!("read() from the probe's pipe failed: {e}")),
        }
    }
    // Killed by a signal: the handler did not run (a crash elsewhere).
    let code = child.exit_code().unwrap_or(-1);
    let word = |i: usize| u64::from_ne_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(match (code, got) {
        (FAULTED, 24) => Touch::Faulted {
            signal: word(0) as i32,
            code: word(1) as i32,
            addr: word(2),
        },
        (0, 24) => Touch::Read(word(2)),
        _ => Touch::Died(code),
    })
}

/// The first base page, the middle one and the last of `region`.
pub fn spots(region: Region, page: usize) -> Vec<usize> {
    let pages = region.len / page;
    let mut v = vec![0, pages / 2, pages - 1];
    v.dedup();
    v.into_iter().map(|i| region.addr + i * page).collect()
}

/// The line of /proc/self/maps of a VMA overlapping `region`, if any.
pub fn vma_over(region: Region) -> Step<Option<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .or_else(|e| fail(format!("reading /proc/self/maps: {e}")))?;
    Ok(maps
        .lines()
        .find(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let mut ends = range
                .split('-')
                .map(|h| usize::from_str_radix(h, 16).unwrap_or(0));
            let (start, end) = (ends.next().unwrap_or(0), ends.next().unwrap_or(0));
            start < region.end() && region.addr < end
        })
        .map(str::to_string))
}
