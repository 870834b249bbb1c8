//! The ext4 images of a guest: the two state disks every guest has (NVMe
//! and virtio-blk; `/init` mounts the first it finds on `/var/tmp`) and a
//! topology's own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An image to make: its path, size and mkfs.ext4 options.
pub type Image = (PathBuf, u64, Vec<String>);

/// The state disks of a guest whose files live in `dir`.
pub fn state_disks(dir: &Path) -> Vec<PathBuf> {
    ["nvme", "virtio"]
        .iter()
        .map(|d| dir.join(format!("{d}.img")))
        .collect()
}

/// The state disks as images to make: 2 GiB each, formatted quietly.
pub fn state_images(disks: &[PathBuf]) -> Vec<Image> {
    let quiet = ["-q".to_string(), "-F".to_string()];
    disks
        .iter()
        .map(|d| (d.clone(), 2u64 << 30, quiet.to_vec()))
        .collect()
}

pub fn mkfs_image(img: &Path, bytes: u64, opts: &[String]) -> Result<(), String> {
    let made = std::fs::File::create(img)
        .and_then(|f| f.set_len(bytes))
        .map_err(|e| e.to_string())
        .and_then(|_| {
            Command::new("mkfs.ext4")
                .args(opts)
                .arg(img)
                .status()
                .map_err(|e| e.to_string())
        });
    match made {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!(
            "cannot make the ext4 image {}: {other:?}",
            img.display()
        )),
    }
}
