//! Drop-in for tools/testing/selftests/mm/gup_longterm. Its catalogue is not
//! written yet, so it says so the way kselftest programs do: a whole-program
//! skip (exit 4), never a silent pass.

use cowgup_tap::write::{Dialect, TapWriter};

fn main() -> std::process::ExitCode {
    let mut w = TapWriter::new(std::io::stdout().lock(), Dialect::Kselftest);
    let _ = w.header(std::env::var_os("KSFT_TAP_LEVEL").is_some());
    let _ = w.skip_all("cowgup: the gup_longterm catalogue is not implemented yet");
    std::process::ExitCode::from(cowgup_tap::KSFT_SKIP as u8)
}
