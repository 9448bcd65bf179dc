//! Helpers shared by the integration tests: the repository, the shared download cache, the
//! stand-ins, and running outside checkers. Each test binary uses a part of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository (profiles, piimg.lock, overlays, stand-ins).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$XDG_CACHE_HOME` of the tests that build images: the .debs are downloaded once per target
/// folder and shared by every test binary.
pub fn cache_home() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("piimg-test-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A clearly named test stand-in (tests/standins/NAME) for `--component NAME=PATH`.
pub fn standin(name: &str) -> PathBuf {
    repo().join("tests/standins").join(name)
}

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
