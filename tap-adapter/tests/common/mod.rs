//! What the kselftest tests share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel's kselftest framework, fetched once per checkout (the
/// collection's Makefile would fetch it into every temporary target
/// directory).
pub fn framework() -> Result<PathBuf, String> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dest = here.join("../target/kselftest-framework");
    let st = Command::new(here.join("kselftest/fetch-framework"))
        .arg(&dest)
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("could not fetch the kernel's kselftest framework (linux-source-6.12)".into());
    }
    fs::canonicalize(&dest).map_err(|e| e.to_string())
}
