//! `matrix --dry-run`: what would run, one command a line (`#` lines say
//! what follows): each kernel's fetch or build, the KVM probe, and per cell
//! its disks and qemu line (or the host's `cowgup run`). Nothing is
//! fetched, built or booted.

use std::path::{Path, PathBuf};

use super::cell::guest_of;
use super::{cell_label, suite_args, Kvm, MatrixArgs, Plan, Shared};
use crate::guest::arch::Arch;
use crate::guest::{build, qemu, spec, tree};
use spec::KernelSpec;

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%$~".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn dry_run(args: &MatrixArgs, cells: &[Plan]) -> String {
    let mut out = String::new();
    for spec in &args.kernel {
        kernel(&mut out, spec);
    }
    if args.kvm == Kvm::Auto
        && cells
            .iter()
            .any(|c| args.kernel[c.kernel] != KernelSpec::Host)
    {
        out.push_str("# KVM probe: boot the first guest kernel under KVM; TCG unless /init runs within 20 s\n");
    }
    let work = Path::new("$WORK");
    let shared = Shared {
        initrds: Arch::ALL
            .into_iter()
            .map(|a| (a, work.join(format!("initrd-{a}.cpio"))))
            .collect(),
        work: work.into(),
        args: args.clone(),
        kvm: args.kvm == Kvm::On,
    };
    for (i, c) in cells.iter().enumerate() {
        cell(&mut out, &shared, i, c);
    }
    out
}

/// How a guest kernel is had: built (`build:`, its steps) or fetched (`debian:`).
fn kernel(out: &mut String, spec: &KernelSpec) {
    match spec {
        KernelSpec::Build(b) => {
            // apt's local cache names the version (no network); else a placeholder.
            let version = build::source_version(b).unwrap_or_else(|_| "$VERSION".into());
            let l = build::Layout {
                root: spec::cache_dir().join(format!("build-{}", b.series)),
                version,
            };
            out.push_str(&format!(
                "# {}: {} {} (apt-cache show --no-all-versions {}); cached as {}{}\n",
                b.label(),
                b.package(),
                l.version,
                b.package(),
                l.image(b).display(),
                if l.image(b).is_file() {
                    " (present: nothing to build)"
                } else {
                    ""
                }
            ));
            for st in build::steps(b, &l, build::jobs(), false) {
                out.push_str(&format!("# {}\n{}\n", st.what, shell_words(&st.argv)));
            }
        }
        KernelSpec::Debian(d) => out.push_str(&format!(
            "# {}\napt-cache search --names-only '{}'\n\
             apt-get download -q $PACKAGE:{} && dpkg-deb -x $PACKAGE_*.deb {}/$PACKAGE\n",
            d.label(),
            d.pattern(),
            d.arch.debian(),
            spec::cache_dir().display()
        )),
        KernelSpec::Tree(t) => {
            let (l, config) = match tree::check_tree(t) {
                Ok(root) => {
                    let l = tree::layout_here(t, &root);
                    let config = tree::needs_config(&l, t.arch);
                    (l, config)
                }
                Err(e) => {
                    out.push_str(&format!("# {e}\n"));
                    return;
                }
            };
            out.push_str(&format!(
                "# {}: objects in {} ({}); make's output to {}\n",
                t.label(),
                l.out().display(),
                match (l.ours, config) {
                    (true, true) => "defconfig + cowgup's fragments, made now",
                    (true, false) => "our config, made before: incremental",
                    (false, _) => "the tree's own .config, checked, then incremental",
                },
                l.log().display()
            ));
            let ccache = crate::guest::tools::tool("ccache").is_some();
            for st in tree::steps(t.arch, &l, build::jobs(), ccache, config) {
                out.push_str(&format!("# {}\n{}\n", st.what, shell_words(&st.argv)));
            }
        }
        _ => {}
    }
}

/// The `i`th cell: the host's `cowgup run`, or the guest's disks and qemu line.
fn cell(out: &mut String, shared: &Shared, i: usize, c: &Plan) {
    let args = &shared.args;
    let spec = &args.kernel[c.kernel];
    let label = cell_label(spec, &c.topology);
    if *spec == KernelSpec::Host {
        let mut argv = vec![
            "cowgup".to_string(),
            "run".into(),
            "--format".into(),
            "json".into(),
        ];
        argv.extend(suite_args(args, false));
        out.push_str(&format!("# cell {i}: {label}\n{}\n", shell_words(&argv)));
        return;
    }
    let kernel = match spec {
        KernelSpec::Image(p) => p.clone(),
        _ => PathBuf::from(format!("$KERNEL_{}", c.kernel)),
    };
    let dir = shared.work.join(format!("cell-{i}"));
    let g = guest_of(shared, spec.arch(), &kernel, &c.topology, &dir);
    out.push_str(&format!("# cell {i}: {label}\n"));
    for d in &g.disks {
        out.push_str(&format!(
            "truncate -s 2G {0} && mkfs.ext4 -q -F {0}\n",
            d.display()
        ));
    }
    for d in c.topology.disks(&dir) {
        out.push_str(&format!(
            "truncate -s {} {p} && mkfs.ext4 {} {p}\n",
            d.bytes,
            d.mkfs.join(" "),
            p = d.path.display()
        ));
    }
    let mut argv = vec![g.arch.qemu().to_string()];
    argv.extend(qemu::argv(&g));
    out.push_str(&shell_words(&argv));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::tests::T;
    use super::*;
    use clap::Parser;

    #[test]
    fn dry_run_prints_builds_disks_and_qemu_lines() {
        let t = T::parse_from([
            "x",
            "--kernel",
            "build:6.12+debug_vm",
            "--kernel",
            "/k/bzImage",
            "--kernel",
            "host",
            "--topology",
            "fsdax+movable",
            "--kvm",
            "off",
            "--dry-run",
            "vmsplice",
        ]);
        let out = dry_run(&t.m, &plan(&t.m));
        assert!(out.contains("merge_config.sh -m -O"), "{out}");
        assert!(out.contains("cowgup-debug_vm.config"));
        assert!(out.contains(" -j"));
        assert!(!out.contains("KVM probe"), "--kvm off");
        assert!(
            out.contains("# cell 0: build:6.12+debug_vm [fsdax+movable]\n"),
            "{out}"
        );
        assert!(out.contains("# cell 1: bzImage [fsdax+movable]\n"));
        assert!(out.contains("# cell 2: host\ncowgup run --format json vmsplice\n"));
        assert!(out.contains(
            "truncate -s 268435456 $WORK/cell-1/fsdax.img && mkfs.ext4 -q -F -b 4096 $WORK/cell-1/fsdax.img\n"
        ));
        assert!(out.contains("-kernel /k/bzImage"));
        assert!(out.contains("-kernel $KERNEL_0"));
        assert!(out.contains(
            "-device virtio-blk-pci,drive=topo0,serial=cowgup-dax -append \
             'console=ttyS0 panic=-1 quiet memmap=256M!4G movablecore=2G cowgup.topology=fsdax+movable'"
        ), "{out}");
    }
}
