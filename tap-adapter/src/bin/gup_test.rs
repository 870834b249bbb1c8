//! Drop-in for tools/testing/selftests/mm/gup_test: the same options, the
//! same ioctls on /sys/kernel/debug/gup_test, kselftest TAP out. Without the
//! debugfs file (no CONFIG_GUP_TEST, or debugfs not mounted) the whole
//! program skips with the reason and exit code 4.

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use cowgup_harness::OutcomeKind;
use cowgup_tap::write::{Dialect, TapWriter};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GupTestArgs {
    get_delta_usec: u64,
    put_delta_usec: u64,
    addr: u64,
    size: u64,
    nr_pages_per_call: u32,
    gup_flags: u32,
    test_flags: u32,
    which_pages: [u32; 8],
}

nix::ioctl_readwrite!(gup_fast_benchmark, b'g', 1, GupTestArgs);
nix::ioctl_readwrite!(pin_fast_benchmark, b'g', 2, GupTestArgs);
nix::ioctl_readwrite!(pin_longterm_benchmark, b'g', 3, GupTestArgs);
nix::ioctl_readwrite!(gup_basic_test, b'g', 4, GupTestArgs);
nix::ioctl_readwrite!(pin_basic_test, b'g', 5, GupTestArgs);
nix::ioctl_readwrite!(dump_user_pages_test, b'g', 6, GupTestArgs);

const FOLL_WRITE: u32 = 0x01;
const FOLL_TOUCH: u32 = 0x02;
const GUP_TEST_FLAG_DUMP_PAGES_USE_PIN: u32 = 0x1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cmd {
    GupFastBenchmark,
    PinFastBenchmark,
    PinLongtermBenchmark,
    GupBasicTest,
    PinBasicTest,
    DumpUserPagesTest,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::GupFastBenchmark => "GUP_FAST_BENCHMARK",
            Cmd::PinFastBenchmark => "PIN_FAST_BENCHMARK",
            Cmd::PinLongtermBenchmark => "PIN_LONGTERM_BENCHMARK",
            Cmd::GupBasicTest => "GUP_BASIC_TEST",
            Cmd::PinBasicTest => "PIN_BASIC_TEST",
            Cmd::DumpUserPagesTest => "DUMP_USER_PAGES_TEST",
        }
    }

    fn is_benchmark(self) -> bool {
        matches!(
            self,
            Cmd::GupFastBenchmark | Cmd::PinFastBenchmark | Cmd::PinLongtermBenchmark
        )
    }

    fn call(self, fd: i32, args: &mut GupTestArgs) -> nix::Result<libc::c_int> {
        // SAFETY: the struct matches mm/gup_test.h; the kernel reads and writes it.
        unsafe {
            match self {
                Cmd::GupFastBenchmark => gup_fast_benchmark(fd, args),
                Cmd::PinFastBenchmark => pin_fast_benchmark(fd, args),
                Cmd::PinLongtermBenchmark => pin_longterm_benchmark(fd, args),
                Cmd::GupBasicTest => gup_basic_test(fd, args),
                Cmd::PinBasicTest => pin_basic_test(fd, args),
                Cmd::DumpUserPagesTest => dump_user_pages_test(fd, args),
            }
        }
    }
}

/// Exercise get_user_pages()/pin_user_pages() through CONFIG_GUP_TEST's debugfs file.
#[derive(Parser, Debug)]
#[command(name = "gup_test", disable_version_flag = true)]
struct Opts {
    /// GUP_FAST_BENCHMARK: get_user_pages_fast() + put_page() (the default)
    #[arg(short = 'u')]
    gup_fast: bool,
    /// PIN_FAST_BENCHMARK: pin_user_pages_fast() + unpin
    #[arg(short = 'a')]
    pin_fast: bool,
    /// PIN_LONGTERM_BENCHMARK: pin_user_pages() with FOLL_LONGTERM
    #[arg(short = 'L')]
    pin_longterm: bool,
    /// GUP_BASIC_TEST: get_user_pages()
    #[arg(short = 'U')]
    gup_basic: bool,
    /// PIN_BASIC_TEST: pin_user_pages()
    #[arg(short = 'b')]
    pin_basic: bool,
    /// DUMP_USER_PAGES_TEST: dump_page() the pages given as arguments (default page 0)
    #[arg(short = 'c')]
    dump: bool,
    /// with -c: pin instead of get
    #[arg(short = 'p')]
    dump_with_pin: bool,
    /// raw gup_flags (FOLL_WRITE is added unless -W)
    #[arg(short = 'F', value_parser = parse_int)]
    flags: Option<i64>,
    /// threads (one result each)
    #[arg(short = 'j', default_value_t = 1)]
    threads: usize,
    /// size in MiB
    #[arg(short = 'm', default_value_t = 128)]
    mib: u64,
    /// benchmark repeats
    #[arg(short = 'r', default_value_t = 1)]
    repeats: u32,
    /// pages per call (-1: all)
    #[arg(short = 'n', default_value_t = 1, allow_negative_numbers = true)]
    nr_pages: i64,
    /// MADV_HUGEPAGE
    #[arg(short = 't')]
    thp: bool,
    /// MADV_NOHUGEPAGE
    #[arg(short = 'T')]
    no_thp: bool,
    /// write access (the default)
    #[arg(short = 'w')]
    write: bool,
    /// read-only access
    #[arg(short = 'W')]
    read_only: bool,
    /// backing file
    #[arg(short = 'f', default_value = "/dev/zero")]
    file: String,
    /// MAP_SHARED instead of MAP_PRIVATE
    #[arg(short = 'S')]
    shared: bool,
    /// MAP_HUGETLB | MAP_ANONYMOUS
    #[arg(short = 'H')]
    hugetlb: bool,
    /// let GUP fault pages in (FOLL_TOUCH) instead of touching them first
    #[arg(short = 'z')]
    fault_in_gup: bool,
    /// page indices to dump with -c (0-based, at most 8)
    #[arg(value_parser = parse_int)]
    pages: Vec<i64>,
}

fn parse_int(s: &str) -> Result<i64, String> {
    let (neg, digits) = s.strip_prefix('-').map_or((false, s), |d| (true, d));
    let v = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16)
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8)
    } else {
        digits.parse()
    }
    .map_err(|e| format!("{s:?}: {e}"))?;
    Ok(if neg { -v } else { v })
}

impl Opts {
    /// Like getopt, the last command flag given wins; without one, -u.
    fn cmd(&self) -> Cmd {
        let order = [
            (self.gup_fast, Cmd::GupFastBenchmark),
            (self.pin_fast, Cmd::PinFastBenchmark),
            (self.pin_longterm, Cmd::PinLongtermBenchmark),
            (self.gup_basic, Cmd::GupBasicTest),
            (self.pin_basic, Cmd::PinBasicTest),
            (self.dump, Cmd::DumpUserPagesTest),
        ];
        let chosen: Vec<Cmd> = order
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect();
        chosen.last().copied().unwrap_or(Cmd::GupFastBenchmark)
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let mut w = TapWriter::new(std::io::stdout(), Dialect::Kselftest);
    let _ = w.header(std::env::var_os("KSFT_TAP_LEVEL").is_some());
    let code = run(&opts, &mut w).unwrap_or(cowgup_tap::KSFT_FAIL);
    ExitCode::from(code as u8)
}

fn run(o: &Opts, w: &mut TapWriter<std::io::Stdout>) -> std::io::Result<i32> {
    let gup = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(cowgup_harness::probe::GUP_TEST)
    {
        Ok(f) => f,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root()
            {
                w.diag("Please run this test as root")?;
            } else if !cowgup_harness::guard::is_mountpoint(std::path::Path::new(
                cowgup_harness::probe::DEBUGFS,
            )) {
                w.diag("mount debugfs at /sys/kernel/debug")?;
            }
            w.diag("check if CONFIG_GUP_TEST is enabled in kernel config")?;
            w.skip_all(&format!(
                "gup_test not available: {}: {e}",
                cowgup_harness::probe::GUP_TEST
            ))?;
            return Ok(cowgup_tap::KSFT_SKIP);
        }
    };
    w.plan(o.threads)?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&o.file)
    {
        Ok(f) => f,
        Err(e) => {
            w.bail_out(&format!("Unable to open {}: {e}", o.file))?;
            w.finish()?;
            return Ok(cowgup_tap::KSFT_FAIL);
        }
    };
    let size = (o.mib << 20) as usize;
    let mut flags = if o.shared {
        MapFlags::MAP_SHARED
    } else {
        MapFlags::MAP_PRIVATE
    };
    if o.hugetlb {
        flags |= MapFlags::MAP_HUGETLB | MapFlags::MAP_ANONYMOUS;
    }
    // SAFETY: a fresh mapping of the backing file, used only by this program.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            (ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).bits(),
            flags.bits(),
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        w.bail_out(&format!("mmap: {}", std::io::Error::last_os_error()))?;
        w.finish()?;
        return Ok(cowgup_tap::KSFT_FAIL);
    }
    let region = cowgup_fixtures::mem::Region::new(p as usize, size);
    if o.thp {
        let _ = region.madvise(MmapAdvise::MADV_HUGEPAGE, "MADV_HUGEPAGE");
    } else if o.no_thp {
        let _ = region.madvise(MmapAdvise::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE");
    }
    let mut args = GupTestArgs {
        addr: p as u64,
        nr_pages_per_call: o.nr_pages as u32,
        gup_flags: o.flags.unwrap_or(0) as u32,
        ..Default::default()
    };
    let cmd = o.cmd();
    if cmd == Cmd::DumpUserPagesTest {
        args.which_pages[0] = 1;
        for (slot, &page) in args.which_pages.iter_mut().zip(&o.pages) {
            *slot = (page + 1) as u32;
        }
        if o.dump_with_pin {
            args.test_flags |= GUP_TEST_FLAG_DUMP_PAGES_USE_PIN;
        }
    }
    if !o.read_only {
        args.gup_flags |= FOLL_WRITE;
    }
    if o.fault_in_gup {
        args.gup_flags |= FOLL_TOUCH;
    } else {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        let mut off = 0;
        while off < size {
            // SAFETY: inside the mapping.
            unsafe { (p as *mut u8).add(off).write_volatile(0) };
            off += page;
        }
    }
    let out = Mutex::new(w);
    let fd = gup.as_raw_fd();
    std::thread::scope(|s| {
        for _ in 0..o.threads {
            let out = &out;
            s.spawn(move || {
                let mut args = args;
                let mut lines = Vec::new();
                let mut status = 0;
                let runs = if cmd.is_benchmark() {
                    o.repeats.max(1)
                } else {
                    1
                };
                for _ in 0..runs {
                    args.size = size as u64;
                    if let Err(e) = cmd.call(fd, &mut args) {
                        status = -(e as i32);
                        break;
                    }
                    if cmd.is_benchmark() {
                        let mut l = format!(
                            "{}: Time: get:{} put:{} us",
                            cmd.name(),
                            args.get_delta_usec,
                            args.put_delta_usec
                        );
                        if args.size != size as u64 {
                            l.push_str(&format!(", truncated (size: {})", args.size));
                        }
                        lines.push(l);
                    } else {
                        lines.push(format!("{}: done", cmd.name()));
                        if args.size != size as u64 {
                            lines.push(format!("Truncated (size: {})", args.size));
                        }
                    }
                }
                let mut guard = out.lock().expect("output lock");
                for l in lines {
                    let _ = guard.diag(&l);
                }
                let kind = if status == 0 {
                    OutcomeKind::Pass
                } else {
                    OutcomeKind::Fail
                };
                let _ = guard.result(kind, &format!("ioctl status {status}"), "");
            });
        }
    });
    let w = out.into_inner().expect("output lock");
    w.finish()?;
    Ok(w.exit_code())
}
