//! Every report of a run, each a consumer of the event stream
//! (`crate::stream`), shared by `cowgup run` and the drop-in programs:
//!
//! - `tap`: kselftest TAP and KTAP, written as the run goes (what the
//!   drop-in programs print and `cowgup run --format tap|ktap` writes);
//! - `human`: progress, every failure in full and a summary for people;
//! - `document`: JSON (`json`) and JUnit XML (`junit`), written once the
//!   run finished;
//! - `events`: every event as one JSON line the moment it is formed
//!   (`cowgup run --events`), so a run that dies keeps what it reported.

pub mod document;
pub mod events;
pub mod human;
pub mod json;
pub mod junit;
pub mod tap;

pub use document::Document;
pub use events::Events;
pub use human::Human;
pub use tap::TapReporter;

/// What a reporter writes for `stream::examples::sample_run`.
#[cfg(test)]
fn sample_output(
    make: impl for<'a> FnOnce(&'a mut Vec<u8>) -> Box<dyn crate::stream::Reporter + 'a>,
) -> String {
    let mut buf = Vec::new();
    let mut r = make(&mut buf);
    for e in &crate::stream::examples::sample_run() {
        r.on(e).unwrap();
    }
    drop(r);
    String::from_utf8(buf).unwrap()
}
