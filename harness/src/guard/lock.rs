//! The host lock: one run at a time changes this host's settings.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The host lock: an abstract unix socket. One per host (network namespace),
/// whatever state directory a run uses, released by the kernel when its
/// holder dies however it dies, and it leaves no file behind.
const HOST_LOCK: &[u8] = b"cowgup-host-guard";

/// The lock's fd, closed in every forked trial process so that a child which
/// outlives a killed runner cannot keep the host locked.
static LOCK_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// For forked children: let go of the inherited host lock.
pub fn release_inherited_lock() {
    let fd = LOCK_FD.swap(-1, std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the fd was inherited from the parent and is not used here.
        unsafe { libc::close(fd) };
    }
}

fn lock_host() -> io::Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(HOST_LOCK)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => {
            LOCK_FD.store(l.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
            Ok(l)
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another cowgup is changing this host's settings",
        )),
        Err(e) => Err(e),
    }
}

/// The pid holding the host lock, as the kernel tells a peer, or "?".
fn lock_holder() -> String {
    SocketAddr::from_abstract_name(HOST_LOCK)
        .and_then(|addr| UnixStream::connect_addr(&addr))
        .ok()
        .and_then(|s| {
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()
        })
        .map_or("?".to_string(), |c| c.pid().to_string())
}

fn lock_state_dir(dir: &Path) -> io::Result<UnixListener> {
    let lock = lock_host()?;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(lock)
}

/// Take the host lock, waiting up to `wait` for another holder; whether we waited.
pub(super) fn wait_for_lock(dir: &Path, wait: Duration) -> io::Result<(UnixListener, bool)> {
    let deadline = Instant::now() + wait;
    let mut waited = false;
    loop {
        match lock_state_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                waited = true;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Asked once, when giving up: every connect() queues on
                // the holder's listener, which never accepts, so asking
                // on each retry would fill its backlog and block us.
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another cowgup (pid {}) is changing this host's settings",
                        lock_holder()
                    ),
                ));
            }
            other => return other.map(|l| (l, waited)),
        }
    }
}

/// Leave nothing behind: the state directory, if it is empty.
pub(super) fn remove_lock(dir: &Path) {
    let _ = fs::remove_dir(dir);
}
