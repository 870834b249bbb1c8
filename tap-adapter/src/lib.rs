//! How a run is reported, in every form, and the kselftest drop-ins:
//!
//! - `write` and `parse`: kselftest TAP (the dialect of
//!   tools/testing/selftests/kselftest.h) and KTAP v1, a writer that
//!   produces it byte for byte and a strict parser our own tests use to hold
//!   the writer (and the drop-in binaries) to it;
//! - `kselftest`: the kselftest drop-in wrapper, a kselftest program made
//!   of catalogue trials (the `cow` and `gup_longterm` binaries; `gup_test`
//!   writes its few results with `write` itself);
//! - `stream`: one run as one stream of events, which every report consumes;
//! - `report`: every report format, TAP/KTAP, human, JSON, JUnit and the
//!   JSON-lines events, shared by the drop-in programs and `cowgup run`
//!   (which only chooses and wires them).

pub mod kselftest;
pub mod parse;
pub mod report;
pub mod stream;
pub mod write;

pub use parse::{parse, Parsed, ResultLine};
pub use report::TapReporter;
pub use stream::{drive, Event, Reporter};
pub use write::{Dialect, TapWriter};

/// kselftest.h's exit codes.
pub const KSFT_PASS: i32 = 0;
pub const KSFT_FAIL: i32 = 1;
pub const KSFT_XFAIL: i32 = 2;
pub const KSFT_XPASS: i32 = 3;
pub const KSFT_SKIP: i32 = 4;
