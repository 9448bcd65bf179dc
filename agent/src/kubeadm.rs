//! Runs `kubeadm init` or `kubeadm join` so that a failed attempt never blocks the next one.
//!
//! kubeadm is not idempotent: an attempt that fails after its kubelet-start phase leaves
//! kubelet.conf, static pod manifests and /var/lib/etcd behind, and every later attempt then fails
//! its own preflight. So before any attempt after the first, the runner calls `kubeadm reset -f`
//! (which also empties /etc/kubernetes/pki) and puts the preseeded PKI back from the image's
//! pristine copy. A node whose kubelet.conf is a working kubeconfig has joined and never runs
//! kubeadm again. The supervisor restarts the runner with backoff while it fails. A joining
//! control plane first waits until the API servers of the control planes before it are ready, so
//! etcd is asked for one new member (one learner) at a time.

use crate::node::{NodeConfig, Role};
use crate::roles;
use crate::sys::write_atomic;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Written (atomically) before an attempt, removed after a successful one: its presence at the
/// start means an earlier attempt did not finish.
pub const ATTEMPT_MARKER: &str = "/var/lib/piimg/kubeadm.attempt";
/// The builder's copy of the control plane's shared keys and certificates (never touched by
/// kubeadm reset), restored into [`KUBE_PKI`] before each attempt.
pub const PRESEED_PKI: &str = crate::contract::paths::PRESEED_PKI;
pub const KUBE_PKI: &str = crate::contract::paths::KUBE_PKI;
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";

/// What to do on this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The node has joined: kubeadm must not run again.
    Joined,
    /// Run kubeadm, after `kubeadm reset -f` when an earlier attempt left state behind.
    Run { reset: bool },
}

/// A kubeconfig that names a server and client credentials: what kubelet.conf is once the
/// kubelet has completed its TLS bootstrap.
pub fn is_working_kubeconfig(text: &str) -> bool {
    let has = |k: &str| text.lines().any(|l| l.trim_start().starts_with(k));
    has("server:") && (has("client-certificate:") || has("client-certificate-data:"))
}

/// State an attempt leaves that makes kubeadm's next preflight fail (kubeadm v1.31
/// FileAvailable/DirAvailable checks), under `root`.
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mut found = Vec::new();
    for f in [
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "/etc/kubernetes/manifests/kube-controller-manager.yaml",
        "/etc/kubernetes/manifests/kube-scheduler.yaml",
        "/etc/kubernetes/manifests/etcd.yaml",
    ] {
        if at(f).exists() {
            found.push(at(f));
        }
    }
    let etcd = at("/var/lib/etcd");
    if std::fs::read_dir(&etcd).is_ok_and(|mut d| d.next().is_some()) {
        found.push(etcd);
    }
    found
}

/// Decides from the node's files under `root`.
pub fn plan(root: &Path) -> Plan {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    if std::fs::read_to_string(at(KUBELET_CONF)).is_ok_and(|t| is_working_kubeconfig(&t)) {
        return Plan::Joined;
    }
    Plan::Run {
        reset: at(ATTEMPT_MARKER).exists() || !leftovers(root).is_empty(),
    }
}

/// Copies every file of the preseeded PKI (under `root`) into kubeadm's folder, keeping modes.
pub fn restore_pki(root: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let src = root.join(PRESEED_PKI.trim_start_matches('/'));
    let dst = root.join(KUBE_PKI.trim_start_matches('/'));
    let mut n = 0;
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(src.join(&rel)) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let md = e.metadata()?;
            if md.is_dir() {
                todo.push(r);
            } else if md.is_file() {
                let data = std::fs::read(e.path())?;
                write_atomic(&dst.join(&r), &data, md.permissions().mode() & 0o7777)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Where the node's openssl is (package openssl, with ca-certificates): the agent has no TLS of
/// its own, and a readiness probe needs only a TLS client.
pub const OPENSSL: &str = "/usr/bin/openssl";

/// `GET /readyz` over TLS (no verification: only "ready?" is asked, as HAProxy asks it); true
/// on a 200 answer within `timeout`.
pub fn api_ready(openssl: &Path, addr: std::net::SocketAddr, timeout: Duration) -> bool {
    use std::io::Read;
    use std::process::Stdio;
    let child = std::process::Command::new(openssl)
        .args(["s_client", "-connect", &addr.to_string(), "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
    }
    let mut stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.take(64).read_to_end(&mut first);
        }
        let _ = tx.send(first);
    });
    let got = rx.recv_timeout(timeout).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let line = String::from_utf8_lossy(&got);
    let mut words = line.split_whitespace();
    matches!(
        (words.next(), words.next()),
        (Some(v), Some("200")) if v.starts_with("HTTP/")
    )
}

/// Waits until every API server in `after` is ready: a joining control plane adds its etcd
/// member only once the ones before it are full members (etcd takes one learner at a time).
pub fn wait_for_predecessors(openssl: &Path, after: &[std::net::SocketAddr], every: Duration) {
    for addr in after {
        let mut waited = Duration::ZERO;
        while !api_ready(openssl, *addr, Duration::from_secs(10)) {
            if waited.as_secs().is_multiple_of(60) {
                println!(
                    "kubeadm-run: waiting for the API server at {addr} to be ready before joining"
                );
            }
            std::thread::sleep(every);
            waited += every;
        }
        println!("kubeadm-run: {addr} is ready");
    }
}

fn run_status(argv: &[String]) -> i32 {
    match std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
    {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            println!("kubeadm-run: cannot run {}: {e}", argv[0]);
            127
        }
    }
}

/// `piimg-agent kubeadm`: the supervised kubeadm service. Exit 0 when the node is initialised
/// or joined.
pub fn run(cfg: &NodeConfig) -> i32 {
    let Some(argv) = roles::kubeadm_command(cfg) else {
        println!("kubeadm-run: this node runs no kubeadm");
        return 0;
    };
    let root = Path::new("/");
    match plan(root) {
        Plan::Joined => {
            println!("kubeadm-run: {KUBELET_CONF} is a working kubeconfig: the node has joined, kubeadm is not run again");
            return 0;
        }
        Plan::Run { reset: true } => {
            let left = leftovers(root);
            println!(
                "kubeadm-run: an earlier attempt did not finish ({} left behind): kubeadm reset -f",
                if left.is_empty() {
                    "nothing".to_string()
                } else {
                    left.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            let rc = run_status(&[argv[0].clone(), "reset".into(), "-f".into()]);
            if rc != 0 {
                println!("kubeadm-run: kubeadm reset exited {rc}");
                return rc;
            }
        }
        Plan::Run { reset: false } => {}
    }
    if cfg.role == Role::ControlPlane {
        match restore_pki(root) {
            Ok(n) => println!("kubeadm-run: {n} preseeded PKI file(s) in {KUBE_PKI}"),
            Err(e) => {
                println!("kubeadm-run: restoring the preseeded PKI: {e}");
                return 1;
            }
        }
    }
    if let Some(k) = cfg.kubernetes.as_ref().filter(|k| !k.join_after.is_empty()) {
        wait_for_predecessors(Path::new(OPENSSL), &k.join_after, Duration::from_secs(5));
    }
    if let Err(e) = write_atomic(Path::new(ATTEMPT_MARKER), b"attempt\n", 0o644) {
        println!("kubeadm-run: {ATTEMPT_MARKER}: {e}");
        return 1;
    }
    let rc = run_status(&argv);
    if rc == 0 {
        let _ = std::fs::remove_file(ATTEMPT_MARKER);
    } else {
        println!("kubeadm-run: kubeadm exited {rc}; the next attempt resets first");
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_from_the_files_an_attempt_leaves() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(plan(r), Plan::Run { reset: false });
        std::fs::create_dir_all(r.join("var/lib/etcd/member")).unwrap();
        assert_eq!(plan(r), Plan::Run { reset: true });
        std::fs::remove_dir_all(r.join("var/lib/etcd/member")).unwrap();
        assert_eq!(plan(r), Plan::Run { reset: false });
        write_atomic(&r.join("var/lib/piimg/kubeadm.attempt"), b"x", 0o644).unwrap();
        assert_eq!(plan(r), Plan::Run { reset: true });
        std::fs::remove_file(r.join("var/lib/piimg/kubeadm.attempt")).unwrap();
        // A bootstrap-only kubelet.conf (no client credentials yet) is a leftover, not a join.
        write_atomic(
            &r.join("etc/kubernetes/kubelet.conf"),
            b"clusters:\n- cluster:\n    server: https://x:6443\n",
            0o600,
        )
        .unwrap();
        assert_eq!(plan(r), Plan::Run { reset: true });
        write_atomic(
            &r.join("etc/kubernetes/kubelet.conf"),
            b"clusters:\n- cluster:\n    server: https://x:6443\nusers:\n- user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
            0o600,
        )
        .unwrap();
        assert_eq!(plan(r), Plan::Joined);
    }

    #[test]
    fn restores_the_pki_with_its_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write_atomic(&r.join("etc/piimg/pki/ca.key"), b"k", 0o600).unwrap();
        write_atomic(&r.join("etc/piimg/pki/etcd/ca.crt"), b"c", 0o644).unwrap();
        write_atomic(&r.join("etc/kubernetes/pki/ca.key"), b"stale", 0o644).unwrap();
        assert_eq!(restore_pki(r).unwrap(), 2);
        let key = r.join("etc/kubernetes/pki/ca.key");
        assert_eq!(std::fs::read(&key).unwrap(), b"k");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read(r.join("etc/kubernetes/pki/etcd/ca.crt")).unwrap(),
            b"c"
        );
    }
}
