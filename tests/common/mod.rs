//! Helpers shared by the integration tests that drive outside checkers.

use std::process::Command;

/// Runs a checker (sfdisk, fsck.vfat, mcopy, ...), fails the test unless it exits 0, and returns
/// its stdout and stderr together.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run (tool missing?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}
