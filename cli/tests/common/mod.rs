//! What the guest tests share: the kernel image to boot and the host tools
//! a guest needs, or why the test cannot run here.

use std::path::{Path, PathBuf};

/// The image at `$var`, else `default`, when qemu, mkfs.ext4 and busybox are
/// installed; otherwise the reason to skip.
pub fn guest_image(var: &str, default: &str) -> Result<PathBuf, String> {
    let kernel = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into());
    if !kernel.is_file() {
        return Err(format!(
            "no kernel image at {} (set {var})",
            kernel.display()
        ));
    }
    for tool in ["qemu-system-x86_64", "mkfs.ext4", "busybox"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| Path::new(d).join(tool).is_file());
        if !found {
            return Err(format!(
                "{tool} not installed (apt-get install qemu-system-x86 e2fsprogs busybox-static)"
            ));
        }
    }
    Ok(kernel)
}

/// The project's cached CONFIG_GUP_TEST kernel (`$COWGUP_MATRIX_KERNEL`).
#[allow(dead_code)] // each test file compiles its own copy; not all use it
pub fn gup_test_image() -> Result<PathBuf, String> {
    guest_image(
        "COWGUP_MATRIX_KERNEL",
        "/work/shared/kernels/bzImage-6.12.117-guptest",
    )
}
