//! The trial runner. It knows how to run a named piece of work in its own
//! process, under a time limit, while holding a set of host settings, and how
//! to put the host back afterwards; and what the running kernel offers.
//!
//! So it knows the host's memory-management *settings files*: how to read,
//! write and put back a sysfs or procfs knob, a hugetlb pool (which it
//! settles, surplus pages and all), a swap area, a mount (`guard`); it
//! probes what the kernel provides (THP sizes, hugetlb pools, gup_test,
//! io_uring; `probe`); and it reads the kernel log for errors (`kmsg`). It
//! does not know what a trial means: which settings a trial needs, what it
//! does and what its outcome says about COW or GUP come from the catalogue
//! in `tests/` and the backings in `fixtures/`.

pub mod group;
pub mod guard;
pub mod kmsg;
pub mod libtest;
pub mod outcome;
pub mod probe;
pub mod runner;
pub mod signals;
pub mod trial;
pub mod verdict;

pub use guard::{HostGuard, Knob};
pub use kmsg::KernelLog;
pub use outcome::{CheckResult, CheckStatus, Evidence, Outcome, OutcomeKind, Totals, TrialReport};
pub use runner::{diag, evidence, run_batch, run_trial, Record, RunOptions, Stop, Watch};
pub use trial::Trial;
