//! The trial runner. It knows how to run a named piece of work in its own
//! process, under a time limit, while holding a set of host settings, and how
//! to put the host back afterwards. It knows nothing about memory management:
//! the catalogue in `tests/` and the backings in `fixtures/` give it meaning.

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
