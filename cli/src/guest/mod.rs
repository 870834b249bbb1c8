//! A guest boot: one kernel under qemu with cowgup's initramfs, its console
//! and its result port. Used by `cowgup matrix` (a cell is a guest boot) and
//! by `cowgup bench --guest` (one boot timing upstream's C programs and the
//! catalogue); the two differ only in what their `/init` runs and what they
//! read back.
//!
//! - `spec`: what `--kernel` names, and fetching Debian's kernels;
//! - `build`: building a kernel from linux-source (`build:6.12`): here, not
//!   in `matrix`, because a `spec` names it;
//! - `tree`: building the developer's own kernel tree (`tree:PATH`);
//! - `initramfs`: the guest's root, the cpio writer and `/init` (its shared
//!   preamble, and the matrix's script; `bench` writes its own after the
//!   preamble);
//! - `topology`: what a guest sets up besides the kernel (zram, ext4, fsdax,
//!   movable): here because every `/init`'s preamble carries its setup
//!   fragment and the qemu command line its disks; the matrix makes cells of
//!   it (`matrix::modules`, the topology's kernel modules, stays in the
//!   matrix: only its cells load them);
//! - `tools`: host programs, the static busybox and the static cowgup;
//! - `disk`: the ext4 images;
//! - `qemu`: the command line, the KVM probe, a child process under a time
//!   limit, and reading the console back.

pub mod arch;
pub mod build;
pub mod disk;
pub mod initramfs;
pub mod qemu;
pub mod spec;
pub mod tools;
pub mod topology;
pub mod tree;
