//! Kernel parameters a Kubernetes node needs, written through /proc/sys.

use std::path::{Path, PathBuf};

/// The sysctls every node gets (bridge-nf-call-* exist only once br_netfilter is loaded).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.inotify.max_user_watches", "524288"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
];

/// `net.ipv4.ip_forward` -> `<proc_sys>/net/ipv4/ip_forward`.
pub fn key_path(proc_sys: &Path, key: &str) -> PathBuf {
    proc_sys.join(key.replace('.', "/"))
}

/// Writes each value; returns the keys that failed with their error (the caller logs them).
pub fn apply(proc_sys: &Path, values: &[(&str, &str)]) -> Vec<(String, std::io::Error)> {
    let mut failed = Vec::new();
    for (k, v) in values {
        if let Err(e) = std::fs::write(key_path(proc_sys, k), format!("{v}\n")) {
            failed.push((k.to_string(), e));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_values_and_reports_missing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("net/ipv4")).unwrap();
        let failed = apply(
            t.path(),
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.bridge.bridge-nf-call-iptables", "1"),
            ],
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("net/ipv4/ip_forward")).unwrap(),
            "1\n"
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "net.bridge.bridge-nf-call-iptables");
        assert_eq!(
            key_path(Path::new("/proc/sys"), "net.bridge.bridge-nf-call-iptables"),
            Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables")
        );
    }
}
