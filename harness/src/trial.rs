//! A trial as the runner sees it: a name, a body to run in its own process,
//! and what must be known before it forks (skip, host settings).

use std::sync::Arc;

use crate::guard::Knob;
use crate::outcome::Outcome;

/// The work a trial does, run inside its own process.
pub type Body = Arc<dyn Fn() -> Outcome + Send + Sync>;

/// A named unit of work with everything the runner must know before it forks:
/// whether it can run at all, and which host settings must hold while it does.
#[derive(Clone)]
pub struct Trial {
    pub name: String,
    /// Decided when the plan is made (a missing kernel feature, say): the trial
    /// is reported as skipped with this reason and never forked.
    pub skip: Option<String>,
    /// Host settings that must hold while the body runs, on top of the host's
    /// own; settings held for an earlier trial and not listed here are put back.
    pub knobs: Vec<Knob>,
    pub body: Body,
}

impl Trial {
    pub fn new(
        name: impl Into<String>,
        body: impl Fn() -> Outcome + Send + Sync + 'static,
    ) -> Self {
        Trial {
            name: name.into(),
            skip: None,
            knobs: Vec::new(),
            body: Arc::new(body),
        }
    }

    pub fn with_knobs(mut self, knobs: Vec<Knob>) -> Self {
        self.knobs = knobs;
        self
    }

    pub fn skipped_because(mut self, reason: impl Into<String>) -> Self {
        self.skip = Some(reason.into());
        self
    }
}
