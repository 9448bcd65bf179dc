//! Builds the init agent for aarch64-unknown-linux-musl and embeds it in piimg, so that a user who
//! has only the piimg binary still gets a working agent. A prebuilt agent can be given with
//! PIIMG_AGENT_BIN=PATH. If the agent cannot be built, piimg still builds (check/show/fs work)
//! and `piimg build` explains why it has no agent.
//!
//! A toolchain that rustup installed before rust-toolchain.toml named the musl target lacks it
//! (rustup honours `targets` only when it installs the toolchain), so the README's first command
//! would build a piimg without an agent: the target is added here when it is missing, and never
//! asked for when present, so an offline build with the target keeps working.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "aarch64-unknown-linux-musl";
const PROFILE: &str = "release-agent";

fn main() {
    println!("cargo:rerun-if-env-changed=PIIMG_AGENT_BIN");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let dest = out_dir.join("piimg-agent");
    for p in [
        "agent/src",
        "agent/Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(p).display());
    }
    let result = match std::env::var_os("PIIMG_AGENT_BIN") {
        Some(p) => std::fs::copy(&p, &dest)
            .map(|_| ())
            .map_err(|e| format!("PIIMG_AGENT_BIN={}: {e}", PathBuf::from(p).display())),
        None => build_agent(&manifest, &out_dir, &dest),
    };
    match result {
        Ok(()) => {
            println!("cargo:rustc-env=PIIMG_AGENT_PATH={}", dest.display());
            println!("cargo:rustc-env=PIIMG_AGENT_ERROR=");
        }
        Err(e) => {
            println!(
                "cargo:warning=the init agent was not built, `piimg build` will refuse to run: {e}"
            );
            // An empty file keeps include_bytes! valid; the error says why it is empty.
            let _ = std::fs::write(&dest, b"");
            println!("cargo:rustc-env=PIIMG_AGENT_PATH={}", dest.display());
            println!("cargo:rustc-env=PIIMG_AGENT_ERROR={}", e.replace('\n', " "));
        }
    }
}

/// The sysroot of the compiler cargo uses for this build.
fn sysroot() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Adds the musl target with rustup when this toolchain does not have it.
fn ensure_target() -> Result<(), String> {
    let Some(root) = sysroot() else {
        return Ok(()); // cargo's own error below says more than a guess here
    };
    if root.join("lib/rustlib").join(TARGET).join("lib").is_dir() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    // Under rustup, the toolchain cargo runs with; rustup's own choice otherwise.
    if let Ok(tc) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &tc]);
    }
    println!(
        "cargo:warning=adding the Rust target {TARGET} for the init agent (rustup target add)"
    );
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`rustup target add {TARGET}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim().replace('\n', " | ")
        )),
        Err(e) => Err(format!(
            "the Rust target {TARGET} is missing and rustup could not be run ({e}): install the target"
        )),
    }
}

fn build_agent(manifest: &Path, out_dir: &Path, dest: &Path) -> Result<(), String> {
    let agent_manifest = manifest.join("agent/Cargo.toml");
    if !agent_manifest.exists() {
        return Err(format!("{} not found", agent_manifest.display()));
    }
    ensure_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out_dir.join("agent-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest)
        .args(["build", "--quiet", "--locked", "--manifest-path"])
        .arg(&agent_manifest)
        .args([
            "--bin",
            "piimg-agent",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host; the agent build makes its own.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
    // Under `cargo clippy` the outer build sets a wrapper; the agent is built, not linted, here
    // (and a lint failure must not silently leave piimg without its agent).
    cmd.env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("CLIPPY_CONF_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    let out = cmd
        .output()
        .map_err(|e| format!("running cargo for the agent: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("target may not be installed")
            || err.contains("can't find crate for `core`")
        {
            " (run: rustup target add aarch64-unknown-linux-musl)"
        } else {
            ""
        };
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        return Err(format!(
            "cargo build of the agent failed{hint}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let built = target_dir.join(TARGET).join(PROFILE).join("piimg-agent");
    std::fs::copy(&built, dest)
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", built.display()))
}
