//! The binary outside PID 1: usage and helper subcommands fail cleanly instead of mounting.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_piimg-agent");

#[test]
fn not_pid1_without_arguments_prints_usage() {
    let out = Command::new(AGENT).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: piimg-agent"));
}

#[test]
fn net_apply_reports_bad_config() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("node.json");
    std::fs::write(&p, br#"{"schema": 99}"#).unwrap();
    let out = Command::new(AGENT)
        .arg("net-apply")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("piimg-agent: "), "{err}");
    assert!(err.contains("node config"), "{err}");
}
