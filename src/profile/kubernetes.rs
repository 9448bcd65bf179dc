//! `[kubernetes]`: the release, the API endpoint, the pod and service networks, this node's share
//! of the pod network and the bootstrap token's lifetime.

use super::draft::KDraft;
use super::fields::{overlaps, parse_cidr, split_host_port, Ctx};
use super::schema::{KubernetesSpec, ProfileSpec};
use super::secrets;
use ipnet::IpNet;
use piimg_agent::node::Role;
use std::net::IpAddr;

/// A node's /24 of an IPv4 pod network, numbered by the node's host number in its own subnet
/// (192.168.50.21/24 in 10.244.0.0/16 -> 10.244.21.0/24): stable, and distinct for nodes of one
/// subnet. Errors say why none fits (then `kubernetes.node_pod_cidr` sets it).
pub fn node_subnet(pods: &IpNet, address: &IpNet) -> Result<IpNet, String> {
    let (IpNet::V4(p), IpNet::V4(a)) = (pods, address) else {
        return Err(format!(
            "per-node pod subnets are derived for IPv4 only: set kubernetes.node_pod_cidr for {}",
            address.addr()
        ));
    };
    if p.prefix_len() > 24 {
        return Err(format!(
            "{pods} is smaller than one /24 per node: use a larger pod network or set kubernetes.node_pod_cidr"
        ));
    }
    let host = u32::from(a.addr()) - u32::from(a.network());
    let slots = 1u32 << (24 - p.prefix_len());
    if host >= slots {
        return Err(format!(
            "host number {host} of {address} is beyond the {slots} /24 subnets of {pods}: set kubernetes.node_pod_cidr"
        ));
    }
    let base = u32::from(p.network()) + (host << 8);
    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(base), 24)
        .map(IpNet::V4)
        .map_err(|e| e.to_string())
}

/// The node's Kubernetes settings (None for a load balancer, which only may not set `init`).
/// `address` is the node's own, when it parsed.
pub(super) fn check(
    ctx: &mut Ctx,
    spec: &ProfileSpec,
    role: Role,
    address: Option<IpNet>,
) -> Option<KDraft> {
    if !role.is_kubernetes() {
        check_init(ctx, spec.kubernetes.as_ref().is_some_and(|k| k.init), role);
        return None;
    }
    let k = spec.kubernetes.clone().unwrap_or_default();
    let version = version(ctx, k.version.as_deref());
    let (endpoint, endpoint_host) = endpoint(ctx, k.control_plane_endpoint.as_deref());
    let (pod_cidr, service_cidr) = cidrs(ctx, &k, address);
    check_init(ctx, k.init, role);
    let node_pod_cidr = node_pod_cidr(ctx, k.node_pod_cidr.as_deref(), pod_cidr, address);
    check_discovery_hash(ctx, k.discovery_ca_hash.as_deref());
    let token_ttl = token_ttl(ctx, k.token_ttl.as_deref());
    let ignore_preflight_errors = ignore_preflight_errors(ctx, k.ignore_preflight_errors);
    let unset = || IpNet::from(IpAddr::from([0, 0, 0, 0]));
    Some(KDraft {
        version,
        endpoint,
        endpoint_host,
        token_ttl,
        pod_cidr: pod_cidr.unwrap_or_else(unset),
        node_pod_cidr,
        service_cidr: service_cidr.unwrap_or_else(unset),
        init: k.init,
        discovery_ca_hash: k.discovery_ca_hash,
        ignore_preflight_errors,
    })
}

/// Names of kubeadm preflight checks as kubeadm prints them (`Mem`, `NumCPU`,
/// `FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml`), each once. Not `all`: kubeadm
/// refuses it in a configuration file (validation.go, ValidateIgnorePreflightErrors).
fn ignore_preflight_errors(ctx: &mut Ctx, list: Option<Vec<String>>) -> Vec<String> {
    let field = "kubernetes.ignore_preflight_errors";
    let mut out: Vec<String> = Vec::new();
    for name in list.unwrap_or_default() {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !ok {
            ctx.err(
                field,
                format!("`{name}` is not a kubeadm preflight check name (such as \"Mem\" or \"NumCPU\")"),
            );
        } else if name.eq_ignore_ascii_case("all") {
            ctx.err(
                field,
                "kubeadm refuses `all` in its configuration file: name the checks (such as \"Mem\")",
            );
        } else if out.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            ctx.err(field, format!("`{name}` is listed twice"));
        } else {
            out.push(name);
        }
    }
    out
}

/// The release decides the packages and, through the pause image, containerd's configuration.
fn version(ctx: &mut Ctx, version: Option<&str>) -> String {
    let version = version.map(str::to_string).unwrap_or_else(|| {
        ctx.missing(
            "kubernetes.version",
            "kubernetes.version (e.g. \"v1.31.2\")",
        );
        String::new()
    });
    if !version.is_empty() && !valid_k8s_version(&version) {
        ctx.err(
            "kubernetes.version",
            format!("`{version}` is not a Kubernetes release (expected vMAJOR.MINOR.PATCH)"),
        );
    } else if !version.is_empty() && piimg_agent::node::pause_version(&version).is_none() {
        ctx.err(
            "kubernetes.version",
            format!(
                "`{version}`: piimg knows the pause image of v1.28 to v1.33 only (containerd's sandbox image must match kubeadm's)"
            ),
        );
    }
    version
}

/// `vMAJOR.MINOR.PATCH`, the form release downloads and kubeadm's config use.
fn valid_k8s_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// The endpoint and its host, which the cluster checks match against the nodes' addresses.
fn endpoint(ctx: &mut Ctx, endpoint: Option<&str>) -> (String, String) {
    let endpoint = endpoint.map(str::to_string).unwrap_or_else(|| {
        ctx.missing(
            "kubernetes.control_plane_endpoint",
            "kubernetes.control_plane_endpoint (host:port)",
        );
        String::new()
    });
    let host = match split_host_port(&endpoint) {
        Some((h, _)) => h,
        None => {
            if !endpoint.is_empty() {
                ctx.err(
                    "kubernetes.control_plane_endpoint",
                    format!("`{endpoint}` is not host:port"),
                );
            }
            String::new()
        }
    };
    (endpoint, host)
}

/// Pod and service networks: overlapping each other or the node network would misroute traffic.
fn cidrs(
    ctx: &mut Ctx,
    k: &KubernetesSpec,
    address: Option<IpNet>,
) -> (Option<IpNet>, Option<IpNet>) {
    let pod = k.pod_cidr.as_deref().unwrap_or("10.244.0.0/16").to_string();
    let svc = k
        .service_cidr
        .as_deref()
        .unwrap_or("10.96.0.0/12")
        .to_string();
    let pod_cidr = parse_cidr(ctx, "kubernetes.pod_cidr", &pod);
    let service_cidr = parse_cidr(ctx, "kubernetes.service_cidr", &svc);
    if let Some(a) = address {
        for (f, c) in [
            ("kubernetes.pod_cidr", pod_cidr),
            ("kubernetes.service_cidr", service_cidr),
        ] {
            if let Some(c) = c {
                if overlaps(&c, &a.trunc()) {
                    ctx.err(f, format!("{c} overlaps the node network {}", a.trunc()));
                }
            }
        }
    }
    if let (Some(p), Some(s)) = (pod_cidr, service_cidr) {
        if overlaps(&p, &s) {
            ctx.err(
                "kubernetes.service_cidr",
                format!("{s} overlaps the pod network {p}"),
            );
        }
    }
    (pod_cidr, service_cidr)
}

/// `kubeadm init` runs on a control plane; any other node can only join.
fn check_init(ctx: &mut Ctx, init: bool, role: Role) {
    if init && role != Role::ControlPlane {
        ctx.err(
            "kubernetes.init",
            "only a control-plane node can initialise the cluster",
        );
    }
}

/// The node's pod subnet: the profile's, inside the pod network, or derived from its address.
fn node_pod_cidr(
    ctx: &mut Ctx,
    text: Option<&str>,
    pod_cidr: Option<IpNet>,
    address: Option<IpNet>,
) -> Option<IpNet> {
    match (text, pod_cidr, address) {
        (Some(text), Some(pods), _) => {
            let own = parse_cidr(ctx, "kubernetes.node_pod_cidr", text);
            if let Some(o) = own {
                if !pods.contains(&o) {
                    ctx.err(
                        "kubernetes.node_pod_cidr",
                        format!("{o} is not inside the pod network {pods}"),
                    );
                }
            }
            own
        }
        (None, Some(pods), Some(a)) => match node_subnet(&pods, &a) {
            Ok(n) => Some(n),
            Err(why) => {
                ctx.err("kubernetes.pod_cidr", why);
                None
            }
        },
        _ => None,
    }
}

/// kubeadm takes the hash of a CA piimg did not generate only in its own format.
fn check_discovery_hash(ctx: &mut Ctx, hash: Option<&str>) {
    if let Some(h) = hash {
        if !secrets::valid_ca_hash(h) {
            ctx.err(
                "kubernetes.discovery_ca_hash",
                "expected `sha256:` followed by 64 hex digits",
            );
        }
    }
}

/// The bootstrap token must expire, so that a leaked one stops being useful.
fn token_ttl(ctx: &mut Ctx, ttl: Option<&str>) -> String {
    let token_ttl = ttl
        .map(str::to_string)
        .unwrap_or_else(|| piimg_agent::node::DEFAULT_TOKEN_TTL.to_string());
    match piimg_agent::keeper::duration_secs(&token_ttl) {
        Some(0) => ctx.err(
            "kubernetes.token_ttl",
            "a token that never expires stays usable if it leaks: give a lifetime such as \"24h\"",
        ),
        Some(_) => {}
        None => ctx.err(
            "kubernetes.token_ttl",
            format!("`{token_ttl}` is not a duration such as \"24h\", \"90m\" or \"1h30m\""),
        ),
    }
    token_ttl
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors};
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("CIDR")
    }

    fn spec(text: &str) -> ProfileSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn a_worker_gets_its_pod_subnet_from_its_host_number() {
        let s = spec("[kubernetes]\nversion = \"v1.31.4\"\ncontrol_plane_endpoint = \"lb1:6443\"");
        let a = Some(net("192.168.50.21/24"));
        let (k, diags) = check(|ctx| super::check(ctx, &s, Role::Worker, a));
        assert!(diags.0.is_empty(), "{diags}");
        let k = k.expect("a Kubernetes node");
        assert_eq!(k.endpoint_host, "lb1");
        assert_eq!(k.node_pod_cidr, Some(net("10.244.21.0/24")));
        assert_eq!(k.service_cidr, net("10.96.0.0/12"));
        assert_eq!(k.token_ttl, piimg_agent::node::DEFAULT_TOKEN_TTL);
    }

    #[test]
    fn a_load_balancer_may_not_initialise_the_cluster() {
        let s = spec("[kubernetes]\ninit = true");
        let (k, diags) = check(|ctx| super::check(ctx, &s, Role::LoadBalancer, None));
        assert!(k.is_none());
        assert_eq!(
            errors(&diags),
            ["kubernetes.init: only a control-plane node can initialise the cluster"]
        );
    }

    #[test]
    fn node_subnets_fit_the_pod_network() {
        let pods = net("10.244.0.0/16");
        assert_eq!(
            node_subnet(&pods, &net("192.168.50.21/24")),
            Ok(net("10.244.21.0/24"))
        );
        assert!(node_subnet(&pods, &net("fd00::21/64")).is_err_and(|e| e.contains("IPv4 only")));
        assert!(node_subnet(&net("10.244.0.0/25"), &net("192.168.50.21/24"))
            .is_err_and(|e| e.contains("smaller than one /24")));
        assert!(node_subnet(&net("10.244.0.0/20"), &net("192.168.50.21/24"))
            .is_err_and(|e| e.contains("beyond the 16 /24 subnets")));
    }

    #[test]
    fn versions_are_releases_with_a_known_pause_image() {
        let (v, diags) = check(|ctx| version(ctx, Some("v1.31.4")));
        assert_eq!(v, "v1.31.4");
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| version(ctx, Some("1.31")));
        assert!(
            errors(&diags)[0].starts_with("kubernetes.version: `1.31` is not a Kubernetes release")
        );
        let (_, diags) = check(|ctx| version(ctx, Some("v1.40.0")));
        assert!(errors(&diags)[0].contains("pause image"));
    }

    #[test]
    fn the_endpoint_is_host_and_port() {
        let (e, diags) = check(|ctx| endpoint(ctx, Some("[fd00::10]:6443")));
        assert_eq!(e.1, "fd00::10");
        assert!(diags.0.is_empty());
        let (e, diags) = check(|ctx| endpoint(ctx, Some("192.168.50.10")));
        assert_eq!(e.1, "");
        assert_eq!(
            errors(&diags),
            ["kubernetes.control_plane_endpoint: `192.168.50.10` is not host:port"]
        );
    }

    #[test]
    fn pod_and_service_networks_overlap_nothing() {
        let k: KubernetesSpec =
            toml::from_str("pod_cidr = \"10.244.0.0/16\"\nservice_cidr = \"10.244.0.0/20\"")
                .expect("spec");
        let (_, diags) = check(|ctx| cidrs(ctx, &k, Some(net("10.244.5.1/24"))));
        let e = errors(&diags);
        assert!(e[0].starts_with("kubernetes.pod_cidr: 10.244.0.0/16 overlaps the node network"));
        assert!(e[1].starts_with("kubernetes.service_cidr: 10.244.0.0/20 overlaps the node"));
        assert!(e[2].starts_with("kubernetes.service_cidr: 10.244.0.0/20 overlaps the pod"));
    }

    #[test]
    fn a_chosen_node_pod_cidr_is_inside_the_pod_network() {
        let pods = Some(net("10.244.0.0/16"));
        let (c, diags) = check(|ctx| node_pod_cidr(ctx, Some("10.244.200.0/24"), pods, None));
        assert_eq!(c, Some(net("10.244.200.0/24")));
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| node_pod_cidr(ctx, Some("10.250.0.0/24"), pods, None));
        assert!(
            errors(&diags)[0].starts_with("kubernetes.node_pod_cidr: 10.250.0.0/24 is not inside")
        );
    }

    #[test]
    fn discovery_hashes_are_kubeadms_format() {
        let good = format!("sha256:{}", "a".repeat(64));
        let (_, diags) = check(|ctx| check_discovery_hash(ctx, Some(&good)));
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| check_discovery_hash(ctx, Some("md5:1")));
        assert!(errors(&diags)[0].starts_with("kubernetes.discovery_ca_hash: expected `sha256:`"));
    }

    #[test]
    fn tokens_expire() {
        let (t, diags) = check(|ctx| token_ttl(ctx, Some("1h30m")));
        assert_eq!(t, "1h30m");
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| token_ttl(ctx, Some("0s")));
        assert!(errors(&diags)[0].starts_with("kubernetes.token_ttl: a token that never expires"));
        let (_, diags) = check(|ctx| token_ttl(ctx, Some("forever")));
        assert!(errors(&diags)[0].starts_with("kubernetes.token_ttl: `forever` is not a duration"));
    }

    #[test]
    fn ignored_preflight_checks_are_check_names_each_once_and_never_all() {
        let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        let (l, diags) = check(|ctx| ignore_preflight_errors(ctx, list(&["Mem", "NumCPU"])));
        assert_eq!(l, ["Mem", "NumCPU"]);
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| ignore_preflight_errors(ctx, list(&["all"])));
        assert!(errors(&diags)[0].contains("kubeadm refuses `all` in its configuration file"));
        let (l, diags) = check(|ctx| ignore_preflight_errors(ctx, list(&["Mem", "mem", "a b"])));
        assert_eq!(l, ["Mem"]);
        assert!(
            errors(&diags)[0].contains("`mem` is listed twice"),
            "{diags}"
        );
        assert!(errors(&diags)[1].contains("`a b` is not a kubeadm preflight check name"));
    }
}
