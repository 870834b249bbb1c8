//! The gup_test invocations of run_vmtests.sh as named trials: its default
//! ones and `run_gup_matrix` (-a): backing x command x write x shared x
//! pages per call. Names are the command lines run_vmtests.sh prints.

use cowgup_fixtures::gup_bench::GupRun;
use cowgup_harness::{diag, Outcome};

/// run_vmtests.sh's default gup_test runs.
const DEFAULT_RUNS: [&str; 5] = [
    "-u -n 1",
    "-u -n -1",
    "-a -n 1",
    "-a -n -1",
    "-ct -F 0x1 0 19 0x1000",
];

/// run_vmtests.sh's `hugetlb_mb`: max(2 pages per CPU, 256 MiB) of the default huge page size.
pub fn hugetlb_mb(default_hugepage: usize, cpus: usize) -> usize {
    (default_hugepage * cpus * 2).max(256 << 20) >> 20
}

/// Every invocation, as an argument string, in run_vmtests.sh's order.
pub fn invocations(hugetlb_mb: usize) -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_RUNS.iter().map(|s| s.to_string()).collect();
    let huge = [
        String::from("-t"),
        String::from("-T"),
        format!("-H -m {hugetlb_mb}"),
    ];
    for h in &huge {
        for cmd in ["-u", "-U", "-a", "-b", "-L"] {
            for write in ["-w", "-W"] {
                for share in ["-S", ""] {
                    for num in ["-n 1", "-n 512", "-n 123", "-n -1"] {
                        let args = [h.as_str(), cmd, write, share, num];
                        v.push(
                            args.iter()
                                .filter(|a| !a.is_empty())
                                .copied()
                                .collect::<Vec<_>>()
                                .join(" "),
                        );
                    }
                }
            }
        }
    }
    v
}

pub fn run(args: &str) -> Outcome {
    let words: Vec<&str> = args.split_whitespace().collect();
    let (gup_run, _) = match GupRun::from_args(&words) {
        Ok(x) => x,
        Err(e) => return Outcome::Error(format!("bad catalogue entry: {e}")),
    };
    let gup = match cowgup_fixtures::pin::GupTest::open_file() {
        Ok(f) => f,
        Err(o) => return o,
    };
    match gup_run.run(&gup, 1) {
        Ok(results) => {
            let r = &results[0];
            for l in &r.lines {
                diag(l);
            }
            if r.status == 0 {
                Outcome::Pass
            } else {
                Outcome::Fail(format!(
                    "ioctl status {} ({})",
                    r.status,
                    nix::errno::Errno::from_raw(-r.status)
                ))
            }
        }
        Err(e) => Outcome::Fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_is_run_vmtests_shape() {
        let v = invocations(256);
        assert_eq!(v.len(), 5 + 3 * 5 * 2 * 2 * 4);
        assert_eq!(v[5], "-t -u -w -S -n 1");
        assert_eq!(v[9], "-t -u -w -n 1");
        assert!(v.contains(&"-H -m 256 -L -W -n -1".to_string()));
        assert_eq!(hugetlb_mb(2 << 20, 2), 256);
        for args in v {
            let words: Vec<&str> = args.split_whitespace().collect();
            assert!(GupRun::from_args(&words).is_ok(), "{args}");
        }
    }
}
