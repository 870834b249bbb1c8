//! kselftest TAP (the dialect of tools/testing/selftests/kselftest.h) and
//! KTAP v1: a writer that produces it byte for byte, and a strict parser our
//! own tests use to hold the writer (and the drop-in binaries) to it. Also
//! the event stream every report consumes (`stream`) and its TAP consumer
//! (`reporter`), shared by the drop-in programs and `cowgup run`.

pub mod kselftest;
pub mod parse;
pub mod reporter;
pub mod stream;
pub mod write;

pub use parse::{parse, Parsed, ResultLine};
pub use reporter::TapReporter;
pub use stream::{drive, Event, Reporter};
pub use write::{Dialect, TapWriter};

/// kselftest.h's exit codes.
pub const KSFT_PASS: i32 = 0;
pub const KSFT_FAIL: i32 = 1;
pub const KSFT_XFAIL: i32 = 2;
pub const KSFT_XPASS: i32 = 3;
pub const KSFT_SKIP: i32 = 4;
