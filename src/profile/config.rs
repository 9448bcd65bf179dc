//! The node config each checked draft becomes once its whole cluster and the cluster's secrets
//! are known: derived peers, join order, backends, routes and the secrets' settings.

use super::diag::{Diagnostic, Diagnostics};
use super::draft::{Draft, KDraft};
use super::schema::AgentSpec;
use super::secrets::{self, ClusterSecrets};
use super::{LoadOptions, NodeProfile, DEFAULT_API_PORT, DEFAULT_STATUS_PORT};
use piimg_agent::node::{
    AgentSettings, Backend, ClusterNode, Kubernetes, LoadBalancer, Network, NodeConfig, Role,
    Route, Storage, SCHEMA_VERSION,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The node ready to build; None when its secrets are unusable or do not match the profile.
pub(super) fn node_profile(
    d: &Draft,
    members: &[&Draft],
    secrets: &BTreeMap<PathBuf, Arc<ClusterSecrets>>,
    opts: &LoadOptions,
    diags: &mut Diagnostics,
) -> Option<NodeProfile> {
    let sec = d
        .secrets_path
        .as_ref()
        .and_then(|p| secrets.get(p))
        .cloned();
    warn_if_open_wifi(d, sec.as_deref(), diags);
    let kubernetes = match (&d.k8s, d.role.is_kubernetes()) {
        (Some(k), true) => Some(kubernetes(d, k, members, sec.as_deref()?, diags)?),
        _ => None,
    };
    Some(NodeProfile {
        name: d.name.clone(),
        path: d.path.clone(),
        sources: d.sources.clone(),
        cluster: d.cluster.clone(),
        config: NodeConfig {
            schema: SCHEMA_VERSION,
            hostname: d.hostname.clone(),
            role: d.role,
            board: d.board,
            network: with_pod_routes(d, members),
            kubernetes,
            load_balancer: load_balancer(d, members),
            agent: agent_settings(&d.spec.agent),
            // Partition ids are derived when the image is laid out.
            storage: Storage::default(),
            build_epoch: build_epoch(sec.as_deref(), opts),
        },
        image: d.image.clone(),
        components: d.components.clone(),
        secrets: sec,
        netboot: d.netboot.clone(),
        secrets_path: d.secrets_path.clone(),
    })
}

/// An SSID the secrets file has no passphrase for is joined as an open network: say so, since
/// a forgotten passphrase looks the same.
fn warn_if_open_wifi(d: &Draft, sec: Option<&ClusterSecrets>, diags: &mut Diagnostics) {
    let Some(w) = &d.network.wifi else {
        return;
    };
    if sec.is_some_and(|s| s.wifi.contains_key(&w.ssid)) {
        return;
    }
    let field = "network.wifi.ssid";
    diags.push(Diagnostic::warning(
        d.at(field),
        field,
        format!(
            "no passphrase for `{}` in the cluster secrets file ([wifi] {} = \"...\"{}): the node joins it as an open network",
            w.ssid,
            // The key as TOML spells it: quotes and backslashes in an SSID escaped.
            toml::Value::String(w.ssid.clone()),
            if d.secrets_path.is_none() { ", and this node names no secrets file" } else { "" }
        ),
    ));
}

/// What kubeadm on this node needs: the cluster's peers, the token and, on a control plane, the
/// shared certificates' key.
fn kubernetes(
    d: &Draft,
    k: &KDraft,
    members: &[&Draft],
    sec: &ClusterSecrets,
    diags: &mut Diagnostics,
) -> Option<Kubernetes> {
    let ca_cert_hash = ca_cert_hash(d, k, sec, diags)?;
    let cp = d.role == Role::ControlPlane;
    Some(Kubernetes {
        version: k.version.clone(),
        control_plane_endpoint: k.endpoint.clone(),
        pod_cidr: k.pod_cidr,
        service_cidr: k.service_cidr,
        init: k.init,
        node_pod_cidr: k.node_pod_cidr,
        cluster_nodes: if k.init {
            cluster_nodes(members)
        } else {
            Vec::new()
        },
        join_after: if cp && !k.init {
            join_after(d, members)
        } else {
            Vec::new()
        },
        token: sec.token.clone(),
        token_ttl: k.token_ttl.clone(),
        ca_cert_hash,
        certificate_key: cp.then(|| sec.certificate_key.clone()),
        pki_dir: cp.then(|| "/etc/kubernetes/pki".to_string()),
        ignore_preflight_errors: k.ignore_preflight_errors.clone(),
    })
}

/// The CA hash joining nodes verify: the profile's, which a control plane's own CA must match.
fn ca_cert_hash(
    d: &Draft,
    k: &KDraft,
    sec: &ClusterSecrets,
    diags: &mut Diagnostics,
) -> Option<String> {
    let derived = sec.ca_cert_hash().ok()?;
    match &k.discovery_ca_hash {
        Some(h) if d.role == Role::ControlPlane && *h != derived => {
            let field = "kubernetes.discovery_ca_hash";
            diags.push(Diagnostic::error(
                d.at(field),
                field,
                "does not match the cluster CA in the secrets file",
            ));
            None
        }
        Some(h) => Some(h.clone()),
        None => Some(derived),
    }
}

/// Every Kubernetes node of the cluster with its pod subnet, by name: the init node sets them.
fn cluster_nodes(members: &[&Draft]) -> Vec<ClusterNode> {
    let mut all: Vec<ClusterNode> = members
        .iter()
        .filter(|m| m.role.is_kubernetes())
        .map(|m| ClusterNode {
            name: m.hostname.clone(),
            pod_cidr: m.k8s.as_ref().and_then(|mk| mk.node_pod_cidr),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// The API servers a joining control plane waits for: the init node first, then the joining
/// control planes by hostname, up to this one.
fn join_after(d: &Draft, members: &[&Draft]) -> Vec<SocketAddr> {
    let mut cps: Vec<&&Draft> = members
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .collect();
    cps.sort_by_key(|m| {
        (
            !m.k8s.as_ref().is_some_and(|mk| mk.init),
            m.hostname.clone(),
        )
    });
    cps.iter()
        .take_while(|m| m.hostname != d.hostname)
        .map(|m| SocketAddr::new(m.network.address.addr(), DEFAULT_API_PORT))
        .collect()
}

/// A load balancer forwards to its listed backends, or else to every control plane by hostname.
fn load_balancer(d: &Draft, members: &[&Draft]) -> Option<LoadBalancer> {
    if d.role != Role::LoadBalancer {
        return None;
    }
    let backends = d.lb.backends.clone().unwrap_or_else(|| {
        let mut cps: Vec<&&Draft> = members
            .iter()
            .filter(|m| m.role == Role::ControlPlane)
            .collect();
        cps.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        cps.iter()
            .map(|m| Backend {
                name: m.hostname.clone(),
                address: SocketAddr::new(m.network.address.addr(), d.lb.backend_port),
            })
            .collect()
    });
    Some(LoadBalancer {
        bind: d
            .lb
            .bind
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT))),
        backends,
    })
}

/// `[agent]` with its defaults: status endpoint on, watchdog on, no debug shell.
fn agent_settings(a: &AgentSpec) -> AgentSettings {
    AgentSettings {
        debug_shell: a.debug_shell.unwrap_or(false),
        status_port: a.status_port.unwrap_or(DEFAULT_STATUS_PORT),
        status_bind: a.status_bind,
        watchdog: a.watchdog.unwrap_or(true),
    }
}

/// The node's clock never starts before its certificates are valid (a Pi has no RTC; before NTP
/// answers, "not yet valid" would fail every TLS handshake).
fn build_epoch(sec: Option<&ClusterSecrets>, opts: &LoadOptions) -> i64 {
    sec.and_then(|s| secrets::cert_not_before(&s.ca_cert))
        .map_or(opts.build_epoch, |nb| nb.max(opts.build_epoch))
}

/// The node's network plus a route to every other Kubernetes node's pod subnet via that node's
/// address, for peers on the node's own subnet: pods reach pods on other nodes with no overlay.
fn with_pod_routes(d: &Draft, members: &[&Draft]) -> Network {
    let mut net = d.network.clone();
    if !d.role.is_kubernetes() {
        return net;
    }
    let mut peers: Vec<&&Draft> = members
        .iter()
        .filter(|m| m.role.is_kubernetes() && m.hostname != d.hostname)
        .collect();
    peers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    for m in peers {
        let Some(cidr) = m.k8s.as_ref().and_then(|k| k.node_pod_cidr) else {
            continue;
        };
        let via = m.network.address.addr();
        if net.address.trunc().contains(&via) && !net.routes.iter().any(|r| r.to == cidr) {
            net.routes.push(Route { to: cidr, via });
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, folder, k8s_node, lb_node, Folder};
    use super::*;

    fn cluster() -> Folder {
        folder(&[
            (
                "lb1",
                &lb_node(
                    "lb1",
                    "192.168.50.10/24",
                    "[load_balancer]\nbackend_port = 7443",
                ),
            ),
            (
                "cp1",
                &k8s_node("cp1", "control-plane", "192.168.50.11/24", ""),
            ),
            (
                "cp2",
                &k8s_node("cp2", "control-plane", "192.168.50.12/24", "init = true"),
            ),
            (
                "cp3",
                &k8s_node("cp3", "control-plane", "192.168.50.13/24", ""),
            ),
            ("w1", &k8s_node("w1", "worker", "192.168.50.21/24", "")),
        ])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn control_planes_join_after_the_init_node_then_by_hostname() {
        let drafts = cluster().drafts(&["lb1", "cp1", "cp2", "cp3", "w1"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        assert_eq!(
            join_after(members[1], &members),
            [addr("192.168.50.12:6443")]
        );
        assert_eq!(
            join_after(members[3], &members),
            [addr("192.168.50.12:6443"), addr("192.168.50.11:6443")]
        );
    }

    #[test]
    fn the_init_node_knows_every_kubernetes_node_and_its_pod_subnet() {
        let drafts = cluster().drafts(&["w1", "lb1", "cp2", "cp1"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        let nodes = cluster_nodes(&members);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["cp1", "cp2", "w1"]);
        assert_eq!(nodes[2].pod_cidr, "10.244.21.0/24".parse().ok());
    }

    #[test]
    fn a_load_balancer_derives_its_backends_from_the_control_planes() {
        let drafts = cluster().drafts(&["lb1", "cp2", "cp1", "w1"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        let lb = load_balancer(members[0], &members).expect("a load balancer");
        assert_eq!(lb.bind, addr("0.0.0.0:6443"));
        let b: Vec<(&str, SocketAddr)> = lb
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.address))
            .collect();
        assert_eq!(
            b,
            [
                ("cp1", addr("192.168.50.11:7443")),
                ("cp2", addr("192.168.50.12:7443"))
            ]
        );
        assert!(load_balancer(members[3], &members).is_none());
    }

    #[test]
    fn pods_on_peers_of_the_subnet_are_routed_via_the_peer() {
        let drafts = cluster().drafts(&["lb1", "cp1", "w1"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        let net = with_pod_routes(members[2], &members);
        assert_eq!(
            net.routes,
            [Route {
                to: "10.244.11.0/24".parse().expect("CIDR"),
                via: "192.168.50.11".parse().expect("address"),
            }]
        );
        assert!(with_pod_routes(members[0], &members).routes.is_empty());
    }

    #[test]
    fn a_control_planes_discovery_hash_must_be_its_own_cas() {
        let sec = ClusterSecrets::generate(1_767_225_600).expect("secrets");
        let other = format!("sha256:{}", "0".repeat(64));
        let extra = format!("discovery_ca_hash = \"{other}\"");
        let f = folder(&[
            (
                "cp1",
                &k8s_node("cp1", "control-plane", "192.168.50.11/24", &extra),
            ),
            ("w1", &k8s_node("w1", "worker", "192.168.50.21/24", &extra)),
        ]);
        let drafts = f.drafts(&["cp1", "w1"]);
        let mut diags = Diagnostics::default();
        let w1 = drafts[1].k8s.as_ref().expect("Kubernetes");
        assert_eq!(ca_cert_hash(&drafts[1], w1, &sec, &mut diags), Some(other));
        let cp1 = drafts[0].k8s.as_ref().expect("Kubernetes");
        assert_eq!(ca_cert_hash(&drafts[0], cp1, &sec, &mut diags), None);
        assert_eq!(
            errors(&diags),
            ["kubernetes.discovery_ca_hash: does not match the cluster CA in the secrets file"]
        );
    }

    #[test]
    fn agent_defaults_keep_the_watchdog_and_status_endpoint_on() {
        let a = agent_settings(&AgentSpec::default());
        assert!(!a.debug_shell && a.watchdog);
        assert_eq!(a.status_port, DEFAULT_STATUS_PORT);
    }
}
