//! What a catalogue entry is: a [`Scenario`] (a trial plus what it needs
//! from the host), the [`Family`] it belongs to, and the [`Selection`] rules
//! that pick entries by name. A leaf: the families build on it (most through
//! `cross.rs`, which crosses a case table with backings), and the registry
//! (`registry.rs`) says what each [`Family`] is.

use std::sync::Arc;

use cowgup_fixtures::needs::{first_unmet, Need};
use cowgup_fixtures::{Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{Knob, Outcome, Trial};

/// libtest's selection rules, shared with every test binary's runner.
pub use cowgup_harness::libtest::Selection;

/// A family of the catalogue: an index into the registry's table
/// (`registry::FAMILIES`), one byte, so it is stored in every [`Scenario`]
/// and copied and compared for free; its order is the catalogue's order.
/// Its constants (`Family::COW_ANON`, ...) and what it is (`id()`, `title()`,
/// `covers()`, `concurrent()`) come from the family's row there; only the
/// registry makes one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family(pub(crate) u8);

/// A catalogue entry: a trial plus what it needs from the host.
#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub family: Family,
    /// The backing group (for reports and benchmarks).
    pub group: String,
    pub needs: Vec<Need>,
    pub knobs: Vec<Knob>,
    /// Takes FOLL_PIN references (so pin balance is counted exactly).
    pub pins: bool,
    pub body: Body,
}

/// What a trial runs in its own process, given the run's options. Every
/// outcome is a value of one type: a body ends early with `?` on a step's
/// skip or fail, or returns the outcome it judged (pass, fail, xfail, ...).
pub type Body = Arc<dyn Fn(&TrialOptions) -> Step<Outcome> + Send + Sync>;

impl Scenario {
    /// The runnable trial, skipped up front if the probed host cannot meet a need.
    pub fn trial(&self, caps: &Capabilities, opts: TrialOptions) -> Trial {
        let body = self.body.clone();
        // The one place an early end and a judged outcome become the same.
        let run = move || body(&opts).unwrap_or_else(|early| early);
        let mut t = Trial::new(self.name.clone(), run).with_knobs(self.knobs.clone());
        t.skip = first_unmet(&self.needs, caps);
        t
    }

    /// Whether running it as root changes global host settings: THP, KSM or
    /// hugetlb knobs held while it runs, or provisioning (a hugetlb pool, a
    /// swap file, a scratch mount, debugfs for gup_test). `cargo test` names
    /// these trials `host::...` (cowgup_harness::libtest::HOST).
    pub fn changes_host(&self) -> bool {
        !self.knobs.is_empty()
            || self
                .needs
                .iter()
                .any(|n| n.provisionable() || *n == Need::GupTest)
    }
}
