//! The reports written once the run finished, JSON and JUnit: a consumer
//! that collects the stream and hands it whole to the format's writer.

use std::io::{self, Write};

use crate::stream::{Event, Reporter, RunEnd, RunStart, TrialEnd};

type Render = fn(&RunStart, &[TrialEnd], &RunEnd) -> io::Result<String>;

/// JSON or JUnit: collects the stream, writes one document at the end.
pub struct Document<W: Write> {
    out: W,
    render: Render,
    start: Option<RunStart>,
    trials: Vec<TrialEnd>,
}

impl<W: Write> Document<W> {
    /// The JSON report (`super::json`).
    pub fn json(out: W) -> Self {
        Self::new(out, |s, t, e| Ok(super::json::json(s, t, e)))
    }

    /// The JUnit XML report (`super::junit`).
    pub fn junit(out: W) -> Self {
        Self::new(out, super::junit::junit)
    }

    fn new(out: W, render: Render) -> Self {
        Document {
            out,
            render,
            start: None,
            trials: Vec::new(),
        }
    }
}

impl<W: Write> Reporter for Document<W> {
    fn on(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted(s) => self.start = Some(s.clone()),
            Event::TrialFinished(t) => self.trials.push(t.clone()),
            Event::RunFinished(end) => {
                let start = self
                    .start
                    .as_ref()
                    .ok_or_else(|| io::Error::other("RunFinished without RunStarted"))?;
                let text = (self.render)(start, &self.trials, end)?;
                self.out.write_all(text.as_bytes())?;
                self.out.flush()?;
            }
            Event::TrialStarted(_) | Event::Interrupted { .. } => {}
        }
        Ok(())
    }
}
