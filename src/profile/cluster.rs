//! Checks across the nodes of one cluster: what no single profile can get wrong alone (shared
//! pod subnets, duplicate names and addresses, who initialises it, where its API is reached).

use super::diag::{Diagnostic, Diagnostics, Location};
use super::draft::Draft;
use super::fields::overlaps;
use ipnet::IpNet;
use piimg_agent::node::Role;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Every cross-node check of one cluster's members, in the order they are reported.
pub(super) fn check(members: &[&Draft], diags: &mut Diagnostics) {
    let cps: Vec<&Draft> = with_role(members, Role::ControlPlane);
    let lbs: Vec<&Draft> = with_role(members, Role::LoadBalancer);
    check_pod_subnets(members, diags);
    check_unique(members, diags);
    check_init(&cps, diags);
    check_endpoints(members, &cps, &lbs, diags);
    check_lb_backends(&cps, &lbs, diags);
    check_netboot(members, diags);
}

fn with_role<'a>(members: &[&'a Draft], role: Role) -> Vec<&'a Draft> {
    members.iter().copied().filter(|d| d.role == role).collect()
}

/// An error at the line of `d`'s chain that set `field`.
fn err(diags: &mut Diagnostics, d: &Draft, field: &str, msg: String) {
    diags.push(Diagnostic::error(d.at(field), field, msg));
}

/// Pod subnets: one per Kubernetes node, none shared; peers off the node's subnet get no
/// route to their pods.
fn check_pod_subnets(members: &[&Draft], diags: &mut Diagnostics) {
    let mut pods: Vec<(&Draft, IpNet)> = Vec::new();
    for d in members.iter().filter(|d| d.role.is_kubernetes()) {
        let Some(own) = d.k8s.as_ref().and_then(|k| k.node_pod_cidr) else {
            continue;
        };
        let field = if d
            .spec
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.node_pod_cidr.is_some())
        {
            "kubernetes.node_pod_cidr"
        } else {
            "network.address"
        };
        if let Some((o, other)) = pods.iter().find(|(_, c)| overlaps(c, &own)) {
            err(
                diags,
                d,
                field,
                format!(
                    "pod subnet {own} collides with {other} of {} ({}): set kubernetes.node_pod_cidr",
                    o.name,
                    o.path.display()
                ),
            );
        }
        for (o, _) in &pods {
            warn_unrouted(d, o, diags);
        }
        pods.push((d, own));
    }
}

/// Pods on `d` and on `o` need routes piimg does not configure when `o` is off `d`'s subnet.
fn warn_unrouted(d: &Draft, o: &Draft, diags: &mut Diagnostics) {
    if !d
        .network
        .address
        .trunc()
        .contains(&o.network.address.addr())
    {
        diags.push(Diagnostic::warning(
            Location::file(&d.path),
            "network.address",
            format!(
                "{} is not on this node's subnet: pods here and on {} cannot reach each other without routes in your network",
                o.network.address.addr(),
                o.name
            ),
        ));
    }
}

/// Nodes share one netboot tree: each needs its own folder, and one server serves them all.
fn check_netboot(members: &[&Draft], diags: &mut Diagnostics) {
    let mut seen_key: BTreeMap<&str, &Draft> = BTreeMap::new();
    let mut server: Option<(&Draft, std::net::SocketAddr)> = None;
    for d in members {
        if let Some(k) = &d.netboot.key {
            if let Some(o) = seen_key.insert(k.dir(), d) {
                let msg = format!(
                    "`{}` is also the netboot folder of {}",
                    k.dir(),
                    o.path.display()
                );
                err(diags, d, k.field(), msg);
            }
        }
        match (server, d.netboot.server) {
            (Some((o, s)), Some(mine)) if s != mine => err(
                diags,
                d,
                "netboot.server",
                format!(
                    "http://{mine} differs from http://{s} of {}: a cluster's nodes boot from one server",
                    o.path.display()
                ),
            ),
            (None, Some(mine)) => server = Some((d, mine)),
            _ => {}
        }
    }
}

/// Two nodes with one hostname or one address cannot both join.
fn check_unique(members: &[&Draft], diags: &mut Diagnostics) {
    let mut seen_host: BTreeMap<&str, &Draft> = BTreeMap::new();
    let mut seen_addr: BTreeMap<IpAddr, &Draft> = BTreeMap::new();
    for d in members {
        if let Some(o) = seen_host.insert(&d.hostname, d) {
            err(
                diags,
                d,
                "hostname",
                format!(
                    "`{}` is also the hostname of {}",
                    d.hostname,
                    o.path.display()
                ),
            );
        }
        if let Some(o) = seen_addr.insert(d.network.address.addr(), d) {
            err(
                diags,
                d,
                "network.address",
                format!(
                    "{} is also the address of {}",
                    d.network.address.addr(),
                    o.path.display()
                ),
            );
        }
    }
}

/// Exactly one control plane runs `kubeadm init`; the others join it.
fn check_init(cps: &[&Draft], diags: &mut Diagnostics) {
    let inits: Vec<&Draft> = cps
        .iter()
        .copied()
        .filter(|d| d.k8s.as_ref().is_some_and(|k| k.init))
        .collect();
    if !cps.is_empty() && inits.is_empty() {
        err(
            diags,
            cps[0],
            "kubernetes.init",
            format!(
                "no control-plane node of cluster `{}` initialises it: set `init = true` in exactly one",
                cps[0].cluster
            ),
        );
    }
    if inits.len() > 1 {
        let names: Vec<&str> = inits.iter().map(|d| d.name.as_str()).collect();
        for d in &inits[1..] {
            err(
                diags,
                d,
                "kubernetes.init",
                format!(
                    "several control-plane nodes initialise the cluster ({}): exactly one may",
                    names.join(", ")
                ),
            );
        }
    }
}

/// Where the API must be reachable: the load balancer if there is one, else a control plane.
fn check_endpoints(members: &[&Draft], cps: &[&Draft], lbs: &[&Draft], diags: &mut Diagnostics) {
    let lb_hosts: BTreeSet<String> = lbs
        .iter()
        .flat_map(|d| {
            let mut v = vec![d.network.address.addr().to_string(), d.hostname.clone()];
            if let Some(b) = d.lb.bind.filter(|b| !b.ip().is_unspecified()) {
                v.push(b.ip().to_string());
            }
            v
        })
        .collect();
    let cp_hosts: BTreeSet<String> = cps
        .iter()
        .flat_map(|d| [d.network.address.addr().to_string(), d.hostname.clone()])
        .collect();
    for d in members {
        let Some(k) = &d.k8s else { continue };
        if k.endpoint_host.is_empty() {
            continue;
        }
        let field = "kubernetes.control_plane_endpoint";
        if !lbs.is_empty() {
            if !lb_hosts.contains(&k.endpoint_host) {
                let addrs: Vec<String> = lbs
                    .iter()
                    .map(|l| l.network.address.addr().to_string())
                    .collect();
                let msg = format!(
                    "`{}` is not the load balancer's address ({})",
                    k.endpoint,
                    addrs.join(", ")
                );
                err(diags, d, field, msg);
            }
        } else if !cps.is_empty() && !cp_hosts.contains(&k.endpoint_host) {
            err(
                diags,
                d,
                field,
                format!(
                    "`{}` is neither a load balancer nor a control-plane node of cluster `{}`",
                    k.endpoint, d.cluster
                ),
            );
        }
    }
}

/// A load balancer without listed backends forwards to the cluster's control planes.
fn check_lb_backends(cps: &[&Draft], lbs: &[&Draft], diags: &mut Diagnostics) {
    for d in lbs {
        if d.lb.backends.is_none() && cps.is_empty() {
            err(
                diags,
                d,
                "load_balancer.backends",
                format!(
                    "cluster `{}` has no control-plane profiles to derive backends from: list them",
                    d.cluster
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, folder, k8s_node, lb_node, warnings, Folder};
    use super::*;

    /// lb1, cp1 (init) and cp2 on 192.168.50.0/24, and w1 from `w1`.
    fn cluster(w1: &str) -> Folder {
        folder(&[
            ("lb1", &lb_node("lb1", "192.168.50.10/24", "")),
            (
                "cp1",
                &k8s_node("cp1", "control-plane", "192.168.50.11/24", "init = true"),
            ),
            (
                "cp2",
                &k8s_node("cp2", "control-plane", "192.168.50.12/24", ""),
            ),
            ("w1", w1),
        ])
    }

    fn check_all(f: &Folder, names: &[&str]) -> Diagnostics {
        let drafts = f.drafts(names);
        let members: Vec<&Draft> = drafts.iter().collect();
        let mut diags = Diagnostics::default();
        check(&members, &mut diags);
        diags
    }

    #[test]
    fn a_consistent_cluster_checks_clean() {
        let f = cluster(&k8s_node("w1", "worker", "192.168.50.21/24", ""));
        let diags = check_all(&f, &["lb1", "cp1", "cp2", "w1"]);
        assert!(diags.0.is_empty(), "{diags}");
    }

    #[test]
    fn netboot_folders_are_unique_and_the_server_is_one() {
        let f = cluster(&k8s_node(
            "w1",
            "worker",
            "192.168.50.21/24",
            "[netboot]\nserial = \"9FFEFDEF\"\nserver = \"http://192.168.50.2:8081\"",
        ));
        let diags = check_all(&f, &["lb1", "cp1", "cp2", "w1"]);
        assert!(diags.0.is_empty(), "{diags}");
        let f = folder(&[
            (
                "w1",
                &k8s_node(
                    "w1",
                    "worker",
                    "192.168.50.21/24",
                    "[netboot]\nserial = \"9FFEFDEF\"\nserver = \"http://192.168.50.2:8080\"",
                ),
            ),
            (
                "w2",
                &k8s_node(
                    "w2",
                    "worker",
                    "192.168.50.22/24",
                    "[netboot]\nserial = \"9ffefdef\"\nserver = \"http://192.168.50.3:8080\"",
                ),
            ),
        ]);
        let e = errors(&check_all(&f, &["w1", "w2"]));
        assert!(
            e.iter()
                .any(|e| e.starts_with("netboot.serial: `9ffefdef` is also the netboot folder of")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with(
                "netboot.server: http://192.168.50.3:8080 differs from http://192.168.50.2:8080"
            )),
            "{e:?}"
        );
    }

    #[test]
    fn hostnames_and_addresses_are_unique() {
        let f = cluster(&k8s_node("cp2", "worker", "192.168.50.12/24", ""));
        let e = errors(&check_all(&f, &["lb1", "cp1", "cp2", "w1"]));
        assert!(
            e.iter()
                .any(|e| e.starts_with("hostname: `cp2` is also the hostname of")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("network.address: 192.168.50.12 is also the address of")),
            "{e:?}"
        );
    }

    #[test]
    fn one_control_plane_initialises_the_cluster() {
        let f = cluster(&k8s_node("w1", "worker", "192.168.50.21/24", ""));
        let e = errors(&check_all(&f, &["lb1", "cp2", "w1"]));
        assert_eq!(
            e,
            ["kubernetes.init: no control-plane node of cluster `c` initialises it: set `init = true` in exactly one"]
        );
    }

    #[test]
    fn the_endpoint_is_the_load_balancer() {
        let w1 = k8s_node("w1", "worker", "192.168.50.21/24", "")
            .replace("192.168.50.10:6443", "192.168.50.11:6443");
        let f = cluster(&w1);
        let e = errors(&check_all(&f, &["lb1", "cp1", "cp2", "w1"]));
        assert_eq!(
            e,
            ["kubernetes.control_plane_endpoint: `192.168.50.11:6443` is not the load balancer's address (192.168.50.10)"]
        );
    }

    #[test]
    fn pod_subnets_do_not_collide_and_off_subnet_peers_are_warned_of() {
        let w1 = k8s_node(
            "w1",
            "worker",
            "192.168.51.21/24",
            "node_pod_cidr = \"10.244.11.0/24\"",
        );
        let f = cluster(&w1);
        let diags = check_all(&f, &["cp1", "w1"]);
        assert!(errors(&diags)[0]
            .starts_with("kubernetes.node_pod_cidr: pod subnet 10.244.11.0/24 collides with"));
        assert!(warnings(&diags)[0]
            .starts_with("network.address: 192.168.50.11 is not on this node's subnet"));
    }

    #[test]
    fn a_load_balancer_without_control_planes_lists_its_backends() {
        let f = cluster(&k8s_node("w1", "worker", "192.168.50.21/24", ""));
        let e = errors(&check_all(&f, &["lb1"]));
        assert_eq!(
            e,
            ["load_balancer.backends: cluster `c` has no control-plane profiles to derive backends from: list them"]
        );
    }
}
