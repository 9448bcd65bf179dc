//! The agent's rtnetlink code against the real kernel, in a fresh user+network namespace
//! (`unshare -rn`, no root needed), checked with iproute2's `ip -j`.

use piimg_agent::node::*;
use std::process::Command;

fn config() -> NodeConfig {
    NodeConfig {
        schema: SCHEMA_VERSION,
        hostname: "w1".into(),
        role: Role::LoadBalancer,
        board: Board::Rpi3b,
        network: Network {
            // A fresh namespace has only loopback; the code path is the same for eth0.
            interface: "lo".into(),
            address: "10.0.2.15/24".parse().unwrap(),
            gateway: Some("10.0.2.2".parse().unwrap()),
            dns: vec![],
            routes: vec![Route {
                to: "192.168.50.0/24".parse().unwrap(),
                via: "10.0.2.1".parse().unwrap(),
            }],
            ntp: vec![],
            wifi: None,
        },
        kubernetes: None,
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

#[test]
fn static_network_in_namespace() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("node.json");
    std::fs::write(&cfg, config().to_json()).unwrap();
    let agent = env!("CARGO_BIN_EXE_piimg-agent");
    // Applying twice must also succeed (a retry after a partial failure).
    let script = format!(
        "{agent} net-apply {c} && {agent} net-apply {c} && echo ---ADDR && ip -j addr show dev lo && echo ---ROUTE && ip -j route show table main",
        c = cfg.display()
    );
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("piimg-agent: network up lo 10.0.2.15/24"),
        "{stderr}"
    );
    let (_, rest) = stdout.split_once("---ADDR\n").unwrap();
    let (addr, route) = rest.split_once("---ROUTE\n").unwrap();
    let addr: serde_json::Value = serde_json::from_str(addr).unwrap();
    let lo = &addr[0];
    assert!(
        lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{lo}"
    );
    let infos = lo["addr_info"].as_array().unwrap();
    assert!(
        infos
            .iter()
            .any(|a| a["local"] == "10.0.2.15" && a["prefixlen"] == 24),
        "{infos:?}"
    );
    let routes: serde_json::Value = serde_json::from_str(route).unwrap();
    let routes = routes.as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.0.2.2" && r["dev"] == "lo"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "192.168.50.0/24" && r["gateway"] == "10.0.2.1"),
        "{routes:?}"
    );
}

/// A USB NIC that re-enumerates comes back as a new interface without its address: the
/// watcher hears the kernel's link and address events and applies the configuration again.
#[test]
fn a_reappearing_interface_gets_its_address_back() {
    let t = tempfile::tempdir().unwrap();
    let mut c = config();
    c.network.interface = "eth0".into();
    let cfg = t.path().join("node.json");
    std::fs::write(&cfg, c.to_json()).unwrap();
    let log = t.path().join("agent.log");
    let agent = env!("CARGO_BIN_EXE_piimg-agent");
    let wait_addr = "for i in $(seq 100); do ip -br addr show dev eth0 2>/dev/null | grep -q 10.0.2.15 && break; sleep 0.1; done";
    let script = format!(
        "ip link add eth0 type veth peer name peer0 && ip link set peer0 up && \
         {{ {agent} net-watch {c} 2>{log} & P=$!; }} && {wait_addr}; \
         echo ---FIRST; ip -j addr show dev eth0; \
         ip link del eth0; ip link add eth0 type veth peer name peer0 && ip link set peer0 up; \
         {wait_addr}; echo ---AGAIN; ip -j addr show dev eth0; kill $P",
        c = cfg.display(),
        log = log.display(),
    );
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let (_, rest) = stdout
        .split_once("---FIRST\n")
        .unwrap_or_else(|| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let (first, again) = rest.split_once("---AGAIN\n").unwrap();
    assert!(first.contains("\"10.0.2.15\""), "{first}");
    assert!(
        again.contains("\"10.0.2.15\""),
        "the new eth0 did not get the address back: {again}\nagent said:\n{said}"
    );
    assert!(said.contains("network: eth0 lost 10.0.2.15/24"), "{said}");
    assert!(
        said.contains("network up again eth0 10.0.2.15/24"),
        "{said}"
    );
}
