//! The host's settings files, as the guard reads, writes and restores them:
//! sysfs and procfs knobs (a selector file like `always [madvise] never`
//! reads as its choice); one put back is written until the kernel reports
//! the value, and a hugetlb pool put back until it holds no surplus page.
//!
//! A hugetlb pool is journaled and restored as its *persistent* size
//! (`nr_hugepages` less `surplus_hugepages`): `nr_hugepages` also counts
//! surplus pages, which belong to whoever maps them and are freed when they
//! go. Written back as the pool's size, they would become persistent
//! (`set_max_huge_pages()` turns surplus pages into persistent ones when the
//! count grows) and stay in the pool after their process ended: that is how
//! a process of a killed run still holding a 1 GiB page made the next run
//! "restore" the 1 GiB pool to one page.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A host setting: write `value` to `path`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Knob {
    pub path: PathBuf,
    pub value: String,
}

impl Knob {
    pub fn new(path: impl Into<PathBuf>, value: impl Into<String>) -> Self {
        Knob {
            path: path.into(),
            value: value.into(),
        }
    }

    /// Whether the host already has this setting (so nothing needs to change).
    pub fn holds(&self) -> bool {
        read_setting(&self.path).is_ok_and(|v| v == self.value)
    }
}

/// The value of a knob as it would be written back: the bracketed choice for
/// selector files like `always [madvise] never`, the trimmed content otherwise.
pub fn read_knob(path: &Path) -> io::Result<String> {
    let raw = fs::read_to_string(path)?;
    Ok(selected_value(&raw))
}

pub fn selected_value(raw: &str) -> String {
    if let (Some(open), Some(close)) = (raw.find('['), raw.find(']')) {
        if open < close {
            return raw[open + 1..close].to_string();
        }
    }
    raw.trim().to_string()
}

pub(super) fn write_knob(path: &Path, value: &str) -> io::Result<()> {
    // O_TRUNC as a shell's `>` does: sysfs ignores it, plain files need it.
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

/// The counter beside a hugetlb pool's `nr_hugepages` that says how many of
/// its pages are surplus, when `path` is such a pool.
pub(super) fn surplus_of(path: &Path) -> Option<PathBuf> {
    if path.file_name()? != "nr_hugepages" {
        return None;
    }
    let surplus = path.parent()?.join("surplus_hugepages");
    surplus.exists().then_some(surplus)
}

fn read_count(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::other(format!(
            "{} reads {:?}, not a count",
            path.display(),
            text.trim()
        ))
    })
}

/// A setting as the guard journals and restores it: `read_knob`, except that
/// a hugetlb pool's `nr_hugepages` reads as its persistent pages (see the
/// module comment: surplus pages are not the host's setting).
pub fn read_setting(path: &Path) -> io::Result<String> {
    let Some(surplus) = surplus_of(path) else {
        return read_knob(path);
    };
    // The two counters are read apart: read until surplus did not move.
    for _ in 0..100 {
        let before = read_count(&surplus)?;
        let total = read_count(path)?;
        if read_count(&surplus)? == before {
            return Ok(total.saturating_sub(before).to_string());
        }
    }
    Err(io::Error::other(format!(
        "{} keeps changing while read",
        surplus.display()
    )))
}

/// A hugetlb pool's counters, for messages: "nr 1, free 1, resv 0, surplus 0".
pub fn pool_state(nr_hugepages: &Path) -> Option<String> {
    let dir = nr_hugepages.parent()?;
    let read = |f: &str| read_count(&dir.join(f)).ok();
    Some(format!(
        "nr {}, free {}, resv {}, surplus {}",
        read("nr_hugepages")?,
        read("free_hugepages")?,
        read("resv_hugepages")?,
        read("surplus_hugepages")?
    ))
}

/// How long a setting may take to hold after it is written.
pub(super) const SETTLE: Duration = Duration::from_secs(10);

/// Write, read back, and write again until the kernel reports the value:
/// a hugetlb pool grows only as far as memory allows at that moment and
/// shrinks only as far as reservations let it, so one write is not proof.
pub(super) fn write_setting_settled(path: &Path, value: &str) -> io::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        write_knob(path, value)?;
        let now = read_setting(path)?;
        if now == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            let pool = pool_state(path)
                .filter(|_| surplus_of(path).is_some())
                .map(|s| format!(" (pool: {s})"))
                .unwrap_or_default();
            return Err(io::Error::other(format!(
                "{} reads {now:?} after writing {value:?} for {} s{pool}",
                path.display(),
                SETTLE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Put a hugetlb pool back at `persistent` pages, and wait until it holds
/// no surplus page either: only then is the memory the run took back with
/// the host. A surplus page in use goes when its user lets go of it (a
/// process, or an io_uring ring being torn down after its process exited).
/// A free surplus page nobody holds is never freed by the kernel on its own
/// (surplus pages are freed when their user frees them or a reservation is
/// returned, and a shrink stops at the persistent count); writing the pool's
/// whole size makes it persistent, and the shrink that follows frees it.
pub(super) fn settle_pool(path: &Path, persistent: u64) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let read = |f: &str| read_count(&dir.join(f));
    let deadline = Instant::now() + SETTLE;
    loop {
        let (nr, free, resv, surplus) = (
            read("nr_hugepages")?,
            read("free_hugepages")?,
            read("resv_hugepages")?,
            read("surplus_hugepages")?,
        );
        if nr.saturating_sub(surplus) == persistent && surplus == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            let held = if surplus > 0 && free <= resv {
                format!(
                    "; {surplus} surplus page(s) still in use (a process, or an io_uring ring \
                     being torn down, holds them; the kernel frees them when they are let go, \
                     `cowgup restore` checks again)"
                )
            } else {
                String::new()
            };
            return Err(io::Error::other(format!(
                "{} is not back at {persistent} page(s) with no surplus after {} s (pool: nr \
                 {nr}, free {free}, resv {resv}, surplus {surplus}){held}",
                path.display(),
                SETTLE.as_secs()
            )));
        }
        if surplus > 0 && free > resv {
            write_knob(path, &nr.to_string())?;
        }
        write_knob(path, &persistent.to_string())?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_files_read_as_their_choice() {
        assert_eq!(selected_value("always [madvise] never\n"), "madvise");
        assert_eq!(selected_value("0\n"), "0");
        assert_eq!(selected_value("[never] always"), "never");
    }
}
