//! Swap areas the guard adds: a swap file or a zram device, with the first
//! page mkswap(8) would write, swapped on and off by syscall.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub(super) fn swap_is_active(p: &Path) -> bool {
    let target = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| Path::new(name) == target || Path::new(name) == p)
}

pub(super) fn swapon(p: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid C string; flags 0.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("swapon {}: {e}", p.display()),
        ));
    }
    Ok(())
}

pub(super) fn swapoff(p: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid C string.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// The first page of a swap area as mkswap(8) writes it: a version-1 header
/// and the "SWAPSPACE2" signature at the end of the page.
pub(super) fn swap_header(bytes: u64) -> Vec<u8> {
    let page = page_size();
    let pages = bytes / page;
    let mut header = vec![0u8; page as usize];
    header[1024..1028].copy_from_slice(&1u32.to_ne_bytes()); // version
    header[1028..1032].copy_from_slice(&((pages - 1) as u32).to_ne_bytes()); // last_page
    let sig = b"SWAPSPACE2";
    header[page as usize - sig.len()..].copy_from_slice(sig);
    header
}

pub(super) fn make_swapfile(path: &Path, bytes: u64) -> io::Result<()> {
    let page = page_size();
    if bytes / page < 10 {
        return Err(io::Error::other("swap area too small"));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::empty(),
        0,
        (bytes / page * page) as i64,
    )?;
    f.write_all(&swap_header(bytes))?;
    f.sync_all()
}
