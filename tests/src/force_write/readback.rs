//! How the judgement reads back the file that must still hold the original
//! (a mapping is read in place, `Region::bytes`): through the page cache
//! (pread in chunks) and from disk (O_DIRECT). Kept apart from the judgement
//! so that `untouched` reads as the list of places it checks.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use cowgup_fixtures::mem::{self, RW};
use cowgup_fixtures::stamp::{Content, Pattern};
use cowgup_fixtures::{fail, Step};
use nix::sys::mman::MapFlags;

/// Files are read and checked in chunks of this size.
const CHUNK: usize = 2 << 20;

/// pread() the file in chunks and check each against the stamps the target
/// (at `addr`) held; the first wrong chunk, with its file offset.
pub(super) fn check_file(
    f: &std::fs::File,
    len: usize,
    addr: usize,
    p: &Pattern,
    orig: Content,
) -> Step<Result<(), String>> {
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut off = 0;
    while off < len {
        let n = buf.len().min(len - off);
        f.read_exact_at(&mut buf[..n], off as u64)
            .or_else(|e| fail(format!("pread() of the file at +0x{off:x} failed: {e}")))?;
        if let Err(m) = p.check_bytes(&buf[..n], addr + off, orig) {
            cowgup_harness::evidence("mismatch", &m);
            return Ok(Err(format!(
                "in the {n} bytes at file offset 0x{off:x}: {m}"
            )));
        }
        off += n;
    }
    Ok(Ok(()))
}

pub(super) fn direct_read(f: &std::fs::File, len: usize) -> Step<Vec<u8>> {
    // O_DIRECT needs an aligned buffer: an anonymous mapping.
    let buf = mem::map_anon(len, RW, MapFlags::MAP_PRIVATE)
        .or_else(|e| fail(format!("mmap() failed: {e}")))?;
    // SAFETY: reading into our own mapped, aligned buffer.
    let n = unsafe { libc::pread(f.as_raw_fd(), buf.ptr().cast(), len, 0) };
    if n as usize != len {
        return fail(format!(
            "O_DIRECT pread() returned {n}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let bytes = buf.bytes().to_vec();
    buf.munmap()?;
    Ok(bytes)
}
