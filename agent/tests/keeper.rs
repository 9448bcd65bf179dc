//! The init node's cluster keeper against the kubectl stand-in (tests/standins/kubectl, as
//! strict as the API server on what the keeper asks) and a recording kubeadm: each preseeded
//! node's pod subnet is recorded as the node registers, and the bootstrap token is deleted only
//! once every preseeded node has registered; a node that never comes ends it at the token's TTL.

use piimg_agent::keeper::{run_keeper, Tools};
use piimg_agent::node::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn config(ttl: &str) -> NodeConfig {
    NodeConfig {
        schema: SCHEMA_VERSION,
        hostname: "cp1".into(),
        role: Role::ControlPlane,
        board: Board::Rpi4b,
        network: Network {
            interface: "eth0".into(),
            address: "192.168.50.11/24".parse().unwrap(),
            gateway: None,
            dns: vec![],
            routes: vec![],
            ntp: vec!["pool.ntp.org".into()],
            wifi: None,
        },
        kubernetes: Some(Kubernetes {
            version: "v1.31.4".into(),
            control_plane_endpoint: "192.168.50.10:6443".into(),
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            node_pod_cidr: Some("10.244.11.0/24".parse().unwrap()),
            cluster_nodes: vec![
                ClusterNode {
                    name: "cp1".into(),
                    pod_cidr: Some("10.244.11.0/24".parse().unwrap()),
                },
                ClusterNode {
                    name: "w1".into(),
                    pod_cidr: Some("10.244.21.0/24".parse().unwrap()),
                },
            ],
            token_ttl: ttl.into(),
            join_after: vec![],
            init: true,
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: format!("sha256:{}", "0".repeat(64)),
            certificate_key: None,
            pki_dir: None,
            ignore_preflight_errors: vec![],
        }),
        load_balancer: None,
        agent: AgentSettings {
            debug_shell: false,
            status_port: 0,
            status_bind: None,
            watchdog: true,
        },
        storage: Storage::default(),
        build_epoch: 1_700_000_000,
    }
}

/// The stand-in kubectl, with its state in `state`, and a kubeadm that records its arguments.
fn tools(dir: &Path) -> (Tools, PathBuf) {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/standins/kubectl");
    let kubectl = dir.join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\nKUBECTL_STANDIN_STATE={} exec {} \"$@\"\n",
            state.display(),
            standin.display()
        ),
    )
    .unwrap();
    let kubeadm = dir.join("kubeadm");
    std::fs::write(
        &kubeadm,
        format!(
            "#!/bin/sh\necho \"kubeadm $*\" >> {}/calls\n",
            state.display()
        ),
    )
    .unwrap();
    for f in [&kubectl, &kubeadm] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (
        Tools {
            kubectl,
            kubeadm,
            kubeconfig: "/etc/kubernetes/admin.conf".into(),
            every: Duration::from_millis(50),
        },
        state,
    )
}

fn calls(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join("calls"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains(" get nodes "))
        .map(str::to_string)
        .collect()
}

#[test]
fn records_pod_subnets_as_nodes_register_then_deletes_the_token() {
    let t = tempfile::tempdir().unwrap();
    let (tools, state) = tools(t.path());
    std::fs::write(state.join("nodes"), "cp1 \n").unwrap();
    let cfg = config("24h");
    let keeper = std::thread::spawn(move || run_keeper(&cfg, &tools));
    // cp1 is registered: its subnet is recorded, but w1 has not come, so the token stays.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !calls(&state).iter().any(|c| c.contains("patch node cp1")) {
        assert!(std::time::Instant::now() < until, "{:?}", calls(&state));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!calls(&state).iter().any(|c| c.contains("token")));
    // w1 registers.
    let mut nodes = std::fs::read_to_string(state.join("nodes")).unwrap();
    nodes.push_str("w1 \n");
    std::fs::write(state.join("nodes"), nodes).unwrap();
    assert_eq!(keeper.join().unwrap(), 0);
    let c = calls(&state);
    let kc = "--kubeconfig=/etc/kubernetes/admin.conf";
    assert_eq!(
        c,
        vec![
            format!("{kc} patch node cp1 --type=merge -p {{\"spec\":{{\"podCIDR\":\"10.244.11.0/24\",\"podCIDRs\":[\"10.244.11.0/24\"]}}}}"),
            format!("{kc} patch node w1 --type=merge -p {{\"spec\":{{\"podCIDR\":\"10.244.21.0/24\",\"podCIDRs\":[\"10.244.21.0/24\"]}}}}"),
            format!("kubeadm {kc} token delete abcdef"),
        ]
    );
    let nodes = std::fs::read_to_string(state.join("nodes")).unwrap();
    assert!(nodes.contains("cp1 10.244.11.0/24") && nodes.contains("w1 10.244.21.0/24"));
}

#[test]
fn a_node_that_never_registers_ends_at_the_token_ttl() {
    let t = tempfile::tempdir().unwrap();
    let (tools, state) = tools(t.path());
    std::fs::write(state.join("nodes"), "cp1 \n").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(run_keeper(&config("1s"), &tools), 0);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let c = calls(&state);
    assert!(c.iter().any(|l| l.contains("patch node cp1")), "{c:?}");
    assert!(!c.iter().any(|l| l.contains("token")), "{c:?}");
}

#[test]
fn the_standin_refuses_what_the_api_server_refuses() {
    let t = tempfile::tempdir().unwrap();
    let (tools, state) = tools(t.path());
    std::fs::write(state.join("nodes"), "w1 10.244.99.0/24\n").unwrap();
    let patch = |node: &str| {
        std::process::Command::new(&tools.kubectl)
            .args([
                "patch",
                "node",
                node,
                "--type=merge",
                "-p",
                "{\"spec\":{\"podCIDR\":\"10.244.21.0/24\",\"podCIDRs\":[\"10.244.21.0/24\"]}}",
            ])
            .output()
            .unwrap()
    };
    let o = patch("w1");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("may not change podCIDR"));
    let o = patch("w9");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NotFound"));
}
