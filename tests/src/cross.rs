//! A case table crossed with backings, as a value: cow.c's `test_cases[]` x
//! `run_with_*()`, kselftest_harness.h's TEST x FIXTURE_VARIANT. A family
//! declares its cases (each says its name, needs and whether it pins) and
//! its backings (each says its name suffix, group, needs and knobs), and
//! [`Cross`] yields the named [`Scenario`]s, in order, each running the
//! family's one body on its (case, backing). Nothing is looped by hand, so
//! a name, a need or a knob is written once per case or backing.

use std::sync::Arc;

use cowgup_fixtures::anon::AnonBacking;
use cowgup_fixtures::file::FileBacking;
use cowgup_fixtures::needs::Need;
use cowgup_fixtures::non_anon::NonAnonBacking;
use cowgup_fixtures::pin_source::PinSource;
use cowgup_fixtures::{Step, TrialOptions};
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{Knob, Outcome};

use crate::scenario::{Family, Scenario};

/// What a case runs on: a FIXTURE_VARIANT.
pub trait Backing {
    /// The tail of every name: `... with {suffix}`.
    fn suffix(&self) -> String;
    /// Its group in reports and benchmarks.
    fn group(&self) -> String;
    /// What the host must offer before any case runs on it (checked first).
    fn needs(&self) -> Vec<Need>;
    /// Host settings held while a trial runs on it.
    fn knobs(&self, _caps: &Capabilities) -> Vec<Knob> {
        vec![]
    }
}

/// What is done to a backing: a row of a case table.
pub trait Case {
    /// Its part of the name (cow.c's `desc`).
    fn desc(&self) -> String;
    /// Needs beyond the backing's, checked after them (as cow.c does).
    fn needs(&self) -> Vec<Need> {
        vec![]
    }
    /// Whether it takes FOLL_PIN references (pin balance is counted exactly).
    fn pins(&self) -> bool;
}

/// Case tables are `const` arrays of rows that are not `Copy` (`&CASES`):
/// they cross by reference.
impl<T: Case + ?Sized> Case for &T {
    fn desc(&self) -> String {
        (**self).desc()
    }
    fn needs(&self) -> Vec<Need> {
        (**self).needs()
    }
    fn pins(&self) -> bool {
        (**self).pins()
    }
}

/// The (case, backing) pairs of a family, in catalogue order, and how each
/// becomes a [`Scenario`].
pub struct Cross<'a, C, B> {
    family: Family,
    caps: &'a Capabilities,
    pairs: Vec<(C, B)>,
    name: Box<dyn Fn(C, B) -> String + 'a>,
    more_knobs: Box<dyn Fn(C, B) -> Vec<Knob> + 'a>,
}

impl<'a, C, B> Cross<'a, C, B>
where
    C: Case + Copy + Send + Sync + 'static,
    B: Backing + Copy + Send + Sync + 'static,
{
    /// Every case with every backing, case by case (cow.c's order:
    /// `for (i ...) run_with_*(test_cases[i])`).
    pub fn new(
        family: Family,
        caps: &'a Capabilities,
        cases: impl IntoIterator<Item = C>,
        backings: impl IntoIterator<Item = B>,
    ) -> Self {
        Cross::pairs(family, caps, product(cases, backings))
    }

    /// Pairs as listed, for a family whose cases each run on their own
    /// backing (or whose crossing is not a plain product).
    pub fn pairs(family: Family, caps: &'a Capabilities, pairs: Vec<(C, B)>) -> Self {
        Cross {
            family,
            caps,
            pairs,
            name: Box::new(|c: C, b: B| format!("{} ... with {}", c.desc(), b.suffix())),
            more_knobs: Box::new(|_, _| vec![]),
        }
    }

    /// Every case on one backing before the next backing.
    pub fn by_backing(
        family: Family,
        caps: &'a Capabilities,
        backings: impl IntoIterator<Item = B>,
        cases: impl IntoIterator<Item = C>,
    ) -> Self {
        let pairs = product(backings, cases).into_iter().map(|(b, c)| (c, b));
        Cross::pairs(family, caps, pairs.collect())
    }

    /// Names other than `{case} ... with {backing}`.
    pub fn named(mut self, name: impl Fn(C, B) -> String + 'a) -> Self {
        self.name = Box::new(name);
        self
    }

    /// Knobs a case needs on a backing, held after the backing's own.
    pub fn more_knobs(mut self, knobs: impl Fn(C, B) -> Vec<Knob> + 'a) -> Self {
        self.more_knobs = Box::new(knobs);
        self
    }

    /// The scenarios, each running `run` on its pair.
    pub fn build(
        self,
        run: impl Fn(&TrialOptions, C, B) -> Step<Outcome> + Send + Sync + 'static,
    ) -> Vec<Scenario> {
        self.entries(|_, _| (), move |opts, c, b, ()| run(opts, c, b))
            .into_iter()
            .map(|(s, ())| s)
            .collect()
    }

    /// The scenarios, each with what `subject` says of its pair (the
    /// expectation table's `Subject`), handed to `run` as well.
    pub fn entries<T>(
        self,
        subject: impl Fn(C, B) -> T,
        run: impl Fn(&TrialOptions, C, B, &T) -> Step<Outcome> + Send + Sync + 'static,
    ) -> Vec<(Scenario, T)>
    where
        T: Clone + Send + Sync + 'static,
    {
        let run = Arc::new(run);
        self.pairs
            .iter()
            .map(|&(case, backing)| {
                let tag = subject(case, backing);
                let (run, t) = (run.clone(), tag.clone());
                let mut knobs = backing.knobs(self.caps);
                knobs.extend((self.more_knobs)(case, backing));
                let scenario = Scenario {
                    name: (self.name)(case, backing),
                    family: self.family,
                    group: backing.group(),
                    needs: backing.needs().into_iter().chain(case.needs()).collect(),
                    knobs,
                    pins: case.pins(),
                    body: Arc::new(move |opts| run(opts, case, backing, &t)),
                };
                (scenario, tag)
            })
            .collect()
    }
}

/// Every `x` with every `y`, `x` by `x`.
fn product<X: Copy, Y: Copy>(
    xs: impl IntoIterator<Item = X>,
    ys: impl IntoIterator<Item = Y>,
) -> Vec<(X, Y)> {
    let ys: Vec<Y> = ys.into_iter().collect();
    xs.into_iter()
        .flat_map(|x| ys.iter().map(move |&y| (x, y)))
        .collect()
}

/// The fixtures' backings say their suffix, group and needs themselves;
/// `knobs` is what a trial holds on one, given the host.
macro_rules! fixture_backing {
    ($t:ty, |$b:ident, $caps:ident| $knobs:expr) => {
        impl Backing for $t {
            fn suffix(&self) -> String {
                <$t>::suffix(self)
            }
            fn group(&self) -> String {
                <$t>::group(self)
            }
            fn needs(&self) -> Vec<Need> {
                <$t>::needs(self)
            }
            fn knobs(&self, $caps: &Capabilities) -> Vec<Knob> {
                let $b = *self;
                $knobs
            }
        }
    };
}

fixture_backing!(AnonBacking, |b, caps| b.knobs(caps.pmd_size));
// cow.c's huge zeropage cases rely on the PMD size inheriting the top-level
// THP policy.
fixture_backing!(NonAnonBacking, |b, caps| match (b, caps.pmd_size) {
    (NonAnonBacking::HugeZeropage, Some(pmd)) => cowgup_fixtures::thp::pmd_inherits(pmd),
    _ => vec![],
});
fixture_backing!(FileBacking, |_b, _caps| vec![]);

/// A pin source is a case wherever a family runs every source.
impl Case for PinSource {
    fn desc(&self) -> String {
        self.name().into()
    }
    fn needs(&self) -> Vec<Need> {
        PinSource::needs(self)
    }
    fn pins(&self) -> bool {
        PinSource::pins(self)
    }
}

/// Every anonymous backing of this host, in cow.c's order.
pub fn anon_backings(caps: &Capabilities) -> Vec<AnonBacking> {
    let hugetlb: Vec<usize> = caps.hugetlb.iter().map(|p| p.size).collect();
    AnonBacking::all(&caps.thp_sizes, caps.pmd_size, &hugetlb)
}
