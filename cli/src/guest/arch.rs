//! The guest's architecture: everything a boot or a kernel build does
//! differently on x86_64 and arm64 (qemu program and machine, console and
//! result devices, kernel image name, cross compiler, Debian's package
//! architecture, the Rust target of the static cowgup). A cell's
//! architecture comes from its kernel spec (`debian:6.12/arm64`,
//! `build:6.12/arm64`) or, for an image named by path, from the image's own
//! header, so one matrix run may mix architectures.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The architecture this cowgup was built for.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::X86_64
        }
    }

    /// How specs and reports name it (the kernel's `ARCH=` for arm64, uname's for x86_64).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" | "amd64" | "x86" => Some(Arch::X86_64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// The kernel's `make ARCH=`.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Arm64 => "arm64",
        }
    }

    /// `make CROSS_COMPILE=` from this host, if the kernel is not native.
    pub fn cross_compile(self) -> Option<&'static str> {
        if self == Arch::host() {
            return None;
        }
        Some(match self {
            Arch::X86_64 => "x86_64-linux-gnu-",
            Arch::Arm64 => "aarch64-linux-gnu-",
        })
    }

    /// The Debian package with that cross compiler.
    pub fn cross_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "gcc-x86-64-linux-gnu",
            Arch::Arm64 => "gcc-aarch64-linux-gnu",
        }
    }

    /// The kernel's own fragment for a virtual machine guest, merged by
    /// `make defconfig <it>`: arm64's `virt.config` leaves out every SoC
    /// platform of its defconfig (1912 built-in options instead of 3176 on
    /// 6.12), which about halves a cross build. x86's defconfig is one already.
    pub fn guest_config(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Arm64 => Some("virt.config"),
        }
    }

    /// The boot image `make` builds, and where it lands in the object tree.
    pub fn image_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "bzImage",
            Arch::Arm64 => "Image",
        }
    }

    pub fn image_path(self) -> String {
        format!("arch/{}/boot/{}", self.kernel_arch(), self.image_target())
    }

    /// Debian's name (`dpkg --print-architecture`, `apt-get download pkg:ARCH`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target of the guest's static cowgup.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// ELF `e_machine` of its executables.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package with [`Arch::qemu`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Arm64 => "qemu-system-arm",
        }
    }

    /// The kernel's console (`console=`): the first UART of the machine.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// Where the guest writes the suite's events: a second UART on x86 (built
    /// into every kernel); arm64's `virt` machine has one UART, so a virtio
    /// console on PCI there (`CONFIG_VIRTIO_CONSOLE` and `CONFIG_VIRTIO_PCI`,
    /// built into Debian's arm64 kernels and the repo's fragment).
    pub fn result_port(self) -> &'static str {
        match self {
            Arch::X86_64 => "/dev/ttyS1",
            Arch::Arm64 => "/dev/hvc0",
        }
    }

    /// What a kernel image's header says it is: an x86 bzImage (`HdrS` at
    /// 0x202) or an arm64 `Image` (`ARM\x64` at 0x38, also Debian's arm64
    /// `vmlinuz`, an Image with an EFI stub).
    pub fn of_image(head: &[u8]) -> Option<Arch> {
        if head.get(0x202..0x206) == Some(b"HdrS") {
            return Some(Arch::X86_64);
        }
        if head.get(0x38..0x3c) == Some(b"ARM\x64") {
            return Some(Arch::Arm64);
        }
        // Other EFI images (zboot, compressed): the PE header names the
        // machine, 0xaa64 for arm64.
        if head.get(0..2) == Some(b"MZ") {
            let pe = u32::from_le_bytes(head.get(0x3c..0x40)?.try_into().ok()?) as usize;
            if head.get(pe..pe + 4) == Some(b"PE\0\0") {
                let machine = u16::from_le_bytes(head.get(pe + 4..pe + 6)?.try_into().ok()?);
                return match machine {
                    0xaa64 => Some(Arch::Arm64),
                    0x8664 => Some(Arch::X86_64),
                    _ => None,
                };
            }
        }
        None
    }

    /// [`Arch::of_image`] of a file (its first 4 KiB).
    pub fn of_image_file(p: &std::path::Path) -> Option<Arch> {
        Arch::of_image(&image_head(p)?)
    }
}

/// The first 4 KiB of a kernel image.
fn image_head(p: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(p).ok()?.read(&mut head).ok()?;
    head.truncate(n);
    Some(head)
}

/// The base page size an arm64 `Image` header states (its flags at 0x18,
/// bits 1-2: 1 is 4 KiB, 2 is 16 KiB, 3 is 64 KiB; Documentation/arch/arm64/
/// booting.rst); None for other images or an unstated size.
pub fn image_page_size(p: &std::path::Path) -> Option<usize> {
    let head = image_head(p)?;
    if head.get(0x38..0x3c) != Some(b"ARM\x64") {
        return None;
    }
    let flags = u64::from_le_bytes(head.get(0x18..0x20)?.try_into().ok()?);
    match (flags >> 1) & 3 {
        1 => Some(4096),
        2 => Some(16384),
        3 => Some(65536),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()), Some(a));
        }
        assert_eq!(Arch::parse("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::parse("riscv64"), None);
    }

    #[test]
    fn images_tell_their_architecture() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(Arch::of_image(&bz), Some(Arch::X86_64));
        let mut image = vec![0u8; 0x40];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(Arch::of_image(&image), Some(Arch::Arm64));
        let mut zboot = vec![0u8; 0x100];
        zboot[0..2].copy_from_slice(b"MZ");
        zboot[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        zboot[0x80..0x84].copy_from_slice(b"PE\0\0");
        zboot[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(Arch::of_image(&zboot), Some(Arch::Arm64));
        assert_eq!(Arch::of_image(b"#!/bin/sh\n"), None);
    }

    /// The images this machine has at hand, where they are.
    #[test]
    fn real_images_tell_their_architecture() {
        let cases = [
            ("/work/shared/kernels/bzImage-6.12.117-guptest", Arch::X86_64),
            (
                "/work/arm64/x-linux-image-6.12.118+deb12-arm64-16k-unsigned/boot/vmlinuz-6.12.118+deb12-arm64-16k",
                Arch::Arm64,
            ),
        ];
        for (p, want) in cases {
            let p = std::path::Path::new(p);
            if p.is_file() {
                assert_eq!(Arch::of_image_file(p), Some(want), "{}", p.display());
            }
        }
    }
}
