//! Profiles: per-node TOML files in one folder, `extends` inheritance, cluster-wide validation and
//! the secrets they reference. The result of [`load`] is one fully resolved
//! [`piimg_agent::node::NodeConfig`] per node, or every problem found, each with file, line and
//! field.

pub mod diag;
pub mod schema;
pub mod secrets;
pub mod source;

use crate::components::apt::{Archive, Snapshot, SuiteSources};
use diag::{Diagnostic, Diagnostics, Location, ProfileError};
use ipnet::IpNet;
use piimg_agent::node::{
    AgentSettings, Backend, Board, ClusterNode, Kubernetes, LoadBalancer, Network, NodeConfig,
    Role, Route, Storage, SCHEMA_VERSION,
};
use schema::ProfileSpec;
use secrets::ClusterSecrets;
use serde::Serialize;
use source::{Merged, Origins, SourceFile};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DEFAULT_SUITE: &str = "trixie";
pub const SUPPORTED_SUITES: [&str; 2] = ["trixie", "bookworm"];
/// The agent's status endpoint: outside 9100-9999, which Prometheus exporters have allocated
/// (node-exporter is 9100), and clear of Kubernetes' own ports.
pub const DEFAULT_STATUS_PORT: u16 = 7780;
pub const DEFAULT_API_PORT: u16 = 6443;
pub const DEFAULT_CLUSTER: &str = "default";

/// Image settings resolved from `[image]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSettings {
    pub size: u64,
    pub boot_size: u64,
    pub data_size: u64,
    /// The Debian suite and where its packages come from (`suite`, `mirror`, `archives`, ...).
    #[serde(flatten)]
    pub sources: SuiteSources,
}

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

/// One node, ready to build.
#[derive(Debug, Clone)]
pub struct NodeProfile {
    /// Profile name (file stem).
    pub name: String,
    pub path: PathBuf,
    /// The profile file and every file it extends, in that order.
    pub sources: Vec<PathBuf>,
    pub cluster: String,
    pub config: NodeConfig,
    pub image: ImageSettings,
    /// Local files replacing components (name -> path resolved against the profile's folder).
    pub components: BTreeMap<String, PathBuf>,
    /// Present for Kubernetes nodes.
    pub secrets: Option<Arc<ClusterSecrets>>,
    pub secrets_path: Option<PathBuf>,
}

/// How failure-tolerant one cluster's control plane is.
#[derive(Debug, Clone, Serialize)]
pub struct HaAssessment {
    pub cluster: String,
    pub control_plane_members: usize,
    pub tolerated_failures: usize,
    pub load_balancers: usize,
    pub highly_available: bool,
    pub summary: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Profiles {
    pub dir: PathBuf,
    /// Nodes sorted by cluster, then profile name.
    pub nodes: Vec<NodeProfile>,
    /// Warnings (errors make `load` fail).
    pub diagnostics: Diagnostics,
    /// Secrets files created by this load.
    pub generated_secrets: Vec<PathBuf>,
}

impl Profiles {
    pub fn node(&self, name: &str) -> Option<&NodeProfile> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn clusters(&self) -> BTreeSet<&str> {
        self.nodes.iter().map(|n| n.cluster.as_str()).collect()
    }

    pub fn ha(&self) -> Vec<HaAssessment> {
        self.clusters()
            .into_iter()
            .map(|c| assess(c, self.nodes.iter().filter(|n| n.cluster == c)))
            .collect()
    }
}

/// HA assessment per the classic stacked-etcd rule: n members tolerate (n-1)/2 failures.
fn assess<'a>(cluster: &str, nodes: impl Iterator<Item = &'a NodeProfile>) -> HaAssessment {
    let nodes: Vec<_> = nodes.collect();
    let n = nodes
        .iter()
        .filter(|n| n.config.role == Role::ControlPlane)
        .count();
    let lbs = nodes
        .iter()
        .filter(|n| n.config.role == Role::LoadBalancer)
        .count();
    assess_counts(cluster, n, lbs)
}

/// The HA assessment of a cluster with `n` control-plane members (stacked etcd: 2f+1 members
/// tolerate f failures) and `lbs` load balancers.
pub fn assess_counts(cluster: &str, n: usize, lbs: usize) -> HaAssessment {
    let tolerated = n.saturating_sub(1) / 2;
    let mut warnings = Vec::new();
    if n > 0 && n % 2 == 0 {
        warnings.push(format!(
            "{n} control-plane members: an even count adds no failure tolerance over {}",
            n - 1
        ));
    }
    if n > 0 && n < 3 {
        warnings.push(format!(
            "not highly available: {n} control-plane member{} (3 are needed to survive a failure)",
            if n == 1 { "" } else { "s" }
        ));
    }
    if n > 1 && lbs == 0 {
        warnings.push(
            "several control-plane nodes but no load balancer: clients depend on one API server"
                .to_string(),
        );
    }
    let summary = if n == 0 {
        "no control-plane members".to_string()
    } else {
        format!(
            "{n} control-plane member{}, tolerates {tolerated} failure{}",
            if n == 1 { "" } else { "s" },
            if tolerated == 1 { "" } else { "s" }
        )
    };
    HaAssessment {
        cluster: cluster.to_string(),
        control_plane_members: n,
        tolerated_failures: tolerated,
        load_balancers: lbs,
        highly_available: n >= 3,
        summary,
        warnings,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Create missing secrets files (false: a missing one is an error).
    pub generate_secrets: bool,
    /// SOURCE_DATE_EPOCH: what the node config records as build time.
    pub build_epoch: i64,
    /// Wall-clock time, only used to date a newly generated CA.
    pub now: i64,
}

/// A node being resolved, before cross-node checks.
struct Draft {
    name: String,
    path: PathBuf,
    sources: Vec<PathBuf>,
    origins: Origins,
    spec: ProfileSpec,
    cluster: String,
    role: Role,
    board: Board,
    hostname: String,
    network: Network,
    k8s: Option<KDraft>,
    lb_bind: Option<SocketAddr>,
    lb_backends: Option<Vec<Backend>>,
    lb_backend_port: u16,
    image: ImageSettings,
    components: BTreeMap<String, PathBuf>,
    secrets_path: Option<PathBuf>,
}

struct KDraft {
    version: String,
    endpoint: String,
    endpoint_host: String,
    pod_cidr: IpNet,
    service_cidr: IpNet,
    /// This node's /24 (or the profile's choice) of the pod network.
    node_pod_cidr: Option<IpNet>,
    init: bool,
    discovery_ca_hash: Option<String>,
    token_ttl: String,
}

struct Ctx<'a> {
    diags: &'a mut Diagnostics,
    origins: &'a Origins,
    path: &'a Path,
}

impl Ctx<'_> {
    fn at(&self, field: &str) -> Location {
        self.origins
            .locate(field)
            .cloned()
            .unwrap_or_else(|| Location::file(self.path))
    }
    fn err(&mut self, field: &str, msg: impl Into<String>) {
        let l = self.at(field);
        self.diags.push(Diagnostic::error(l, field, msg));
    }
    fn warn(&mut self, field: &str, msg: impl Into<String>) {
        let l = self.at(field);
        self.diags.push(Diagnostic::warning(l, field, msg));
    }
    fn missing(&mut self, field: &str, what: &str) {
        let l = Location::file(self.path);
        self.diags.push(Diagnostic::error(
            l,
            field,
            format!("missing: {what} must be set (here or in a profile it extends)"),
        ));
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

fn parse_cidr(ctx: &mut Ctx, field: &str, v: &str) -> Option<IpNet> {
    match v.parse::<IpNet>() {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.err(
                field,
                format!("`{v}` is not a CIDR (expected an address with a prefix, e.g. 192.168.50.11/24)"),
            );
            None
        }
    }
}

fn parse_ip(ctx: &mut Ctx, field: &str, v: &str) -> Option<IpAddr> {
    match v.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(field, format!("`{v}` is not an IP address"));
            None
        }
    }
}

fn parse_size_field(ctx: &mut Ctx, field: &str, v: Option<&str>, default: u64) -> u64 {
    match v {
        None => default,
        Some(s) => match crate::units::parse_size(s) {
            Ok(n) => n,
            Err(e) => {
                ctx.err(field, e);
                default
            }
        },
    }
}

/// Splits `host:port` (IPv6 hosts in brackets).
fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    (valid_hostname(h) || h.contains('.')).then(|| (h.to_string(), port))
}

fn draft(m: &Merged, diags: &mut Diagnostics) -> Option<Draft> {
    let spec: ProfileSpec =
        match serde_path_to_error::deserialize(toml::Value::Table(m.table.clone())) {
            Ok(s) => s,
            Err(e) => {
                let mut field = String::new();
                for seg in e.path().iter() {
                    let part = match seg {
                        serde_path_to_error::Segment::Seq { index } => index.to_string(),
                        serde_path_to_error::Segment::Map { key } => key.clone(),
                        serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                        serde_path_to_error::Segment::Unknown => continue,
                    };
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(&part);
                }
                let msg = e.inner().to_string();
                // serde names an unknown key in the message but not in the path: add it so the
                // error points at the key's own line.
                if let Some(k) = msg
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    if !field.ends_with(k) {
                        if !field.is_empty() {
                            field.push('.');
                        }
                        field.push_str(k);
                    }
                }
                let loc = m
                    .origins
                    .locate(&field)
                    .cloned()
                    .unwrap_or_else(|| Location::file(&m.path));
                diags.push(Diagnostic::error(loc, &field, msg.trim().to_string()));
                return None;
            }
        };
    let mut ctx = Ctx {
        diags,
        origins: &m.origins,
        path: &m.path,
    };
    let before = ctx.diags.errors().count();
    let cluster = spec
        .cluster
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    let Some(role) = spec.role else {
        ctx.missing("role", "role (control-plane, worker or load-balancer)");
        return None;
    };
    let board = spec.board.unwrap_or_else(|| {
        ctx.missing("board", "board (rpi3b, rpi3bplus, zero2w, rpi4b or cm4)");
        Board::Rpi4b
    });
    // kubeadm v1.31's preflight (checks_linux.go, Mem) fails a control-plane node with less than
    // 1700 MB of RAM, and no preflight error is ignored: these boards have 1 GiB or less.
    if role == Role::ControlPlane
        && matches!(board, Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w)
    {
        ctx.err(
            "board",
            format!(
                "{board} has at most 1 GiB of RAM; kubeadm requires 1700 MB on a control-plane node (use rpi4b or cm4 with 2 GB or more)"
            ),
        );
    }
    let hostname = match &spec.hostname {
        Some(h) if valid_hostname(h) => h.clone(),
        Some(h) => {
            ctx.err(
                "hostname",
                format!("`{h}` is not a valid host name (lowercase letters, digits and '-', at most 63)"),
            );
            h.clone()
        }
        None => {
            ctx.missing("hostname", "hostname");
            String::new()
        }
    };
    // Network.
    let n = &spec.network;
    let interface = n.interface.clone().unwrap_or_else(|| "eth0".to_string());
    let address = match &n.address {
        Some(a) => parse_cidr(&mut ctx, "network.address", a),
        None => {
            ctx.missing("network.address", "network.address (CIDR)");
            None
        }
    };
    if let Some(a) = address {
        if a.prefix_len() < a.max_prefix_len() && a.addr() == a.network() {
            ctx.err(
                "network.address",
                format!("`{a}` is the network address of its subnet, not a host address"),
            );
        }
    }
    let gateway = n
        .gateway
        .as_deref()
        .and_then(|g| parse_ip(&mut ctx, "network.gateway", g));
    if let (Some(a), Some(g)) = (address, gateway) {
        if !a.trunc().contains(&g) {
            ctx.err(
                "network.gateway",
                format!("{g} is outside the node's subnet {}", a.trunc()),
            );
        }
    }
    let dns: Vec<IpAddr> = n
        .dns
        .iter()
        .enumerate()
        .filter_map(|(i, d)| parse_ip(&mut ctx, &format!("network.dns.{i}"), d))
        .collect();
    let mut routes = Vec::new();
    for (i, r) in n.routes.iter().enumerate() {
        let to = parse_cidr(&mut ctx, &format!("network.routes.{i}.to"), &r.to);
        let via = parse_ip(&mut ctx, &format!("network.routes.{i}.via"), &r.via);
        if let (Some(to), Some(via)) = (to, via) {
            routes.push(Route { to, via });
        }
    }
    let network = Network {
        interface,
        address: address.unwrap_or_else(|| IpNet::from(IpAddr::from([0, 0, 0, 0]))),
        gateway,
        dns,
        routes,
        ntp: n.ntp.clone(),
    };
    if role.is_kubernetes() && n.ntp.is_empty() {
        // A Pi has no RTC and kubeadm and kubelet wait for a synced clock.
        ctx.missing(
            "network.ntp",
            "network.ntp (NTP servers, e.g. [\"pool.ntp.org\"] or your router: a Pi has no clock of its own, and kubeadm and kubelet start only once it is synced)",
        );
    }
    for (i, server) in n.ntp.iter().enumerate() {
        if server.is_empty() || server.contains(char::is_whitespace) {
            ctx.err(
                &format!("network.ntp.{i}"),
                format!("`{server}` is not a host, address or host:port"),
            );
        }
    }
    // Kubernetes.
    let k8s = if role.is_kubernetes() {
        let k = spec.kubernetes.clone().unwrap_or_default();
        let version = k.version.clone().unwrap_or_else(|| {
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
        let endpoint = k.control_plane_endpoint.clone().unwrap_or_else(|| {
            ctx.missing(
                "kubernetes.control_plane_endpoint",
                "kubernetes.control_plane_endpoint (host:port)",
            );
            String::new()
        });
        let endpoint_host = match split_host_port(&endpoint) {
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
        let pod = k.pod_cidr.as_deref().unwrap_or("10.244.0.0/16").to_string();
        let svc = k
            .service_cidr
            .as_deref()
            .unwrap_or("10.96.0.0/12")
            .to_string();
        let pod_cidr = parse_cidr(&mut ctx, "kubernetes.pod_cidr", &pod);
        let service_cidr = parse_cidr(&mut ctx, "kubernetes.service_cidr", &svc);
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
        if k.init && role != Role::ControlPlane {
            ctx.err(
                "kubernetes.init",
                "only a control-plane node can initialise the cluster",
            );
        }
        let node_pod_cidr = match (&k.node_pod_cidr, pod_cidr, address) {
            (Some(text), Some(pods), _) => {
                let own = parse_cidr(&mut ctx, "kubernetes.node_pod_cidr", text);
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
        };
        if let Some(h) = &k.discovery_ca_hash {
            if !secrets::valid_ca_hash(h) {
                ctx.err(
                    "kubernetes.discovery_ca_hash",
                    "expected `sha256:` followed by 64 hex digits",
                );
            }
        }
        let token_ttl = k
            .token_ttl
            .clone()
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
        Some(KDraft {
            version,
            endpoint,
            endpoint_host,
            token_ttl,
            pod_cidr: pod_cidr.unwrap_or_else(|| IpNet::from(IpAddr::from([0, 0, 0, 0]))),
            node_pod_cidr,
            service_cidr: service_cidr.unwrap_or_else(|| IpNet::from(IpAddr::from([0, 0, 0, 0]))),
            init: k.init,
            discovery_ca_hash: k.discovery_ca_hash,
        })
    } else {
        if spec.kubernetes.as_ref().is_some_and(|k| k.init) {
            ctx.err(
                "kubernetes.init",
                "only a control-plane node can initialise the cluster",
            );
        }
        None
    };
    // Load balancer.
    let (mut lb_bind, mut lb_backends, mut lb_backend_port) = (None, None, DEFAULT_API_PORT);
    match (&spec.load_balancer, role) {
        (Some(lb), Role::LoadBalancer) => {
            let bind = lb.bind.as_deref().unwrap_or("0.0.0.0:6443");
            lb_bind = match bind.parse::<SocketAddr>() {
                Ok(b) => Some(b),
                Err(_) => {
                    ctx.err(
                        "load_balancer.bind",
                        format!("`{bind}` is not address:port (e.g. 0.0.0.0:6443)"),
                    );
                    None
                }
            };
            lb_backend_port = lb.backend_port.unwrap_or(DEFAULT_API_PORT);
            if let Some(bs) = &lb.backends {
                let mut out = Vec::new();
                for (i, b) in bs.iter().enumerate() {
                    match b.parse::<SocketAddr>() {
                        Ok(a) => out.push(Backend {
                            name: format!("backend{}", i + 1),
                            address: a,
                        }),
                        Err(_) => ctx.err(
                            &format!("load_balancer.backends.{i}"),
                            format!("`{b}` is not address:port"),
                        ),
                    }
                }
                lb_backends = Some(out);
            }
        }
        (None, Role::LoadBalancer) => lb_bind = "0.0.0.0:6443".parse().ok(),
        (Some(_), _) => ctx.err(
            "load_balancer",
            format!("only a load-balancer node takes [load_balancer] (this node is a {role})"),
        ),
        (None, _) => {}
    }
    // Image.
    let img = &spec.image;
    let size = parse_size_field(&mut ctx, "image.size", img.size.as_deref(), 2 << 30);
    if !size.is_power_of_two() {
        ctx.err(
            "image.size",
            format!(
                "{size} bytes is not a power of two (QEMU's SD card model needs one, e.g. 2GiB)"
            ),
        );
    }
    let boot_size = parse_size_field(
        &mut ctx,
        "image.boot_size",
        img.boot_size.as_deref(),
        128 << 20,
    );
    let data_size = parse_size_field(
        &mut ctx,
        "image.data_size",
        img.data_size.as_deref(),
        256 << 20,
    );
    if boot_size < (64 << 20) {
        ctx.err(
            "image.boot_size",
            "the FAT32 boot partition needs at least 64MiB",
        );
    }
    if boot_size + data_size + (256 << 20) > size {
        ctx.err(
            "image.size",
            format!(
                "too small for a {} boot and {} data partition plus a root filesystem of at least 256 MiB",
                crate::units::human(boot_size),
                crate::units::human(data_size)
            ),
        );
    }
    let suite = img
        .suite
        .clone()
        .unwrap_or_else(|| DEFAULT_SUITE.to_string());
    if !SUPPORTED_SUITES.contains(&suite.as_str()) {
        ctx.err(
            "image.suite",
            format!(
                "`{suite}` is not supported (use {})",
                SUPPORTED_SUITES.join(" or ")
            ),
        );
    }
    for (field, uri) in [
        ("image.mirror", &img.mirror),
        ("image.security_mirror", &img.security_mirror),
        ("image.snapshot_mirror", &img.snapshot_mirror),
    ] {
        if let Some(u) = uri {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(char::is_whitespace);
            if !ok {
                ctx.err(field, format!("`{u}` is not an http(s) URI"));
            }
        }
    }
    let mut archives = Vec::new();
    for a in img
        .archives
        .clone()
        .unwrap_or_else(|| vec!["updates".into(), "security".into()])
    {
        match Archive::parse(&a) {
            Ok(x) if archives.contains(&x) => {
                ctx.err("image.archives", format!("`{a}` is listed twice"))
            }
            Ok(x) => archives.push(x),
            Err(_) => ctx.err(
                "image.archives",
                format!(
                    "`{a}` is not an archive piimg resolves from (use \"updates\", \"security\")"
                ),
            ),
        }
    }
    if archives.contains(&Archive::Security)
        && img.mirror.is_some()
        && img.security_mirror.is_none()
    {
        ctx.err(
            "image.security_mirror",
            "needed with image.mirror while image.archives includes \"security\" \
             (the security archive has its own mirror), or leave \"security\" out of image.archives",
        );
    }
    let snapshot = match (&img.snapshot, &img.snapshot_mirror) {
        (Some(t), Some(m)) => {
            if !Snapshot::valid_timestamp(t) {
                ctx.err(
                    "image.snapshot",
                    format!("`{t}` is not a snapshot timestamp (want the form 20251120T000000Z)"),
                );
            }
            Some(Snapshot {
                timestamp: t.clone(),
                mirror: m.trim_end_matches('/').to_string(),
            })
        }
        (Some(_), None) => {
            ctx.err(
                "image.snapshot",
                "needs image.snapshot_mirror, the snapshot archive's base URI",
            );
            None
        }
        (None, Some(_)) => {
            ctx.err("image.snapshot_mirror", "set without image.snapshot");
            None
        }
        (None, None) => None,
    };
    // Paths relative to the file that set them.
    let rel = |field: &str, p: &str| -> PathBuf {
        let base = m
            .origins
            .file_of(field)
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        normalize(&base.join(p))
    };
    let keyring = img.keyring.as_deref().map(|k| rel("image.keyring", k));
    if let Some(k) = &keyring {
        if !k.is_file() {
            ctx.err("image.keyring", format!("{} is not a file", k.display()));
        }
    }
    let image = ImageSettings {
        size,
        boot_size,
        data_size,
        sources: SuiteSources {
            suite,
            mirror: img
                .mirror
                .as_ref()
                .map(|m| m.trim_end_matches('/').to_string()),
            security_mirror: img
                .security_mirror
                .as_ref()
                .map(|m| m.trim_end_matches('/').to_string()),
            archives,
            snapshot,
            keyring,
        },
    };
    let components = spec
        .components
        .iter()
        .map(|(k, v)| (k.clone(), rel(&format!("components.{k}"), v)))
        .collect();
    let secrets_path = spec.secrets.as_deref().map(|s| rel("secrets", s));
    if role.is_kubernetes() && secrets_path.is_none() {
        ctx.missing(
            "secrets",
            "secrets (path of the cluster secrets file, e.g. \"../secrets/cluster.toml\")",
        );
    }
    if spec.agent.debug_shell == Some(true) {
        ctx.warn(
            "agent.debug_shell",
            "debug shell is on: anyone at the serial console gets a root shell",
        );
    }
    if ctx.diags.errors().count() > before {
        return None;
    }
    Some(Draft {
        name: m.name.clone(),
        path: m.path.clone(),
        sources: m.chain.clone(),
        origins: m.origins.clone(),
        spec,
        cluster,
        role,
        board,
        hostname,
        network,
        k8s,
        lb_bind,
        lb_backends,
        lb_backend_port,
        image,
        components,
        secrets_path,
    })
}

/// `a/b/../c` -> `a/c` without touching the filesystem (the target may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

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

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Loads every `*.toml` in `dir`, resolves inheritance and secrets, and checks each cluster.
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Profiles, ProfileError> {
    load_inner(dir, opts, None)
}

/// Loads what building or showing `node` reads: its profile, the files it extends and the other
/// profiles of its cluster (for the cross-node checks). Problems in other profiles are not
/// reported and do not stop it; `load` still reports everything.
pub fn load_for(dir: &Path, opts: &LoadOptions, node: &str) -> Result<Profiles, ProfileError> {
    load_inner(dir, opts, Some(node))
}

fn toml_paths(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Profiles that others extend, or that say so, carry shared settings and are not nodes.
fn base_names(files: &BTreeMap<String, SourceFile>) -> BTreeSet<String> {
    files
        .values()
        .filter_map(|f| f.table.get("extends").and_then(|v| v.as_str()))
        .map(str::to_string)
        .chain(
            files
                .iter()
                .filter(|(_, f)| f.table.get("abstract").and_then(|v| v.as_bool()) == Some(true))
                .map(|(n, _)| n.clone()),
        )
        .collect()
}

/// The names of the node profiles in `dir` (files that parse and are not bases), for telling a
/// user which ones exist.
pub fn node_names(dir: &Path) -> Vec<String> {
    let files: BTreeMap<String, SourceFile> = toml_paths(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            source::read_file(p)
                .ok()
                .map(|f| (source::profile_name(p), f))
        })
        .collect();
    let bases = base_names(&files);
    files.into_keys().filter(|n| !bases.contains(n)).collect()
}

fn load_inner(
    dir: &Path,
    opts: &LoadOptions,
    scope: Option<&str>,
) -> Result<Profiles, ProfileError> {
    let mut diags = Diagnostics::default();
    let fail = |diags: Diagnostics| ProfileError { diagnostics: diags };
    let paths = toml_paths(dir).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(Diagnostic::error(
            Location::file(dir),
            "",
            format!("cannot read the profiles folder: {e}"),
        ));
        fail(d)
    })?;
    let mut files: BTreeMap<String, SourceFile> = BTreeMap::new();
    let mut unreadable: Vec<(String, Diagnostic)> = Vec::new();
    for p in &paths {
        match source::read_file(p) {
            Ok(f) => {
                files.insert(source::profile_name(p), f);
            }
            Err(d) => unreadable.push((source::profile_name(p), d)),
        }
    }
    let bases = base_names(&files);
    // Each node's own findings, so that a scoped load can keep only its cluster's.
    let mut drafts = Vec::new();
    let mut node_diags: BTreeMap<String, Diagnostics> = BTreeMap::new();
    for name in files.keys() {
        if bases.contains(name) {
            continue;
        }
        let mut nd = Diagnostics::default();
        if let Some(m) = source::resolve(name, &files, &mut nd) {
            if let Some(d) = draft(&m, &mut nd) {
                drafts.push(d);
            }
        }
        node_diags.insert(name.clone(), nd);
    }
    match scope {
        None => {
            diags.0.extend(unreadable.into_iter().map(|(_, d)| d));
            for nd in node_diags.into_values() {
                diags.0.extend(nd.0);
            }
            if files.is_empty() && !diags.has_errors() {
                diags.push(Diagnostic::error(
                    Location::file(dir),
                    "",
                    "no profiles (*.toml) in this folder",
                ));
            }
        }
        Some(target) => {
            let cluster = drafts
                .iter()
                .find(|d| d.name == target)
                .map(|d| d.cluster.clone());
            drafts.retain(|d| Some(&d.cluster) == cluster.as_ref());
            let mut kept: BTreeSet<String> = drafts.iter().map(|d| d.name.clone()).collect();
            kept.insert(target.to_string());
            // The files those nodes read, including an `extends` target that failed to parse.
            let mut read: BTreeSet<String> = kept.clone();
            for name in &kept {
                let mut cur = files.get(name);
                while let Some(f) = cur {
                    match f.table.get("extends").and_then(|v| v.as_str()) {
                        Some(next) if read.insert(next.to_string()) => cur = files.get(next),
                        _ => cur = None,
                    }
                }
            }
            diags.0.extend(
                unreadable
                    .into_iter()
                    .filter(|(n, _)| read.contains(n))
                    .map(|(_, d)| d),
            );
            for (name, nd) in node_diags {
                if kept.contains(&name) {
                    diags.0.extend(nd.0);
                }
            }
            if !files.contains_key(target) && !diags.has_errors() {
                diags.push(Diagnostic::error(
                    Location::file(&dir.join(format!("{target}.toml"))),
                    "",
                    format!("no node profile named `{target}`"),
                ));
            }
        }
    }
    let mut generated = Vec::new();
    let mut nodes = Vec::new();
    // Cross-node checks on a partial cluster would only report follow-on errors.
    if diags.has_errors() {
        return Err(fail(dedup(diags)));
    }
    let clusters: BTreeSet<String> = drafts.iter().map(|d| d.cluster.clone()).collect();
    for c in &clusters {
        let members: Vec<&Draft> = drafts.iter().filter(|d| &d.cluster == c).collect();
        check_cluster(&members, &mut diags);
        let secrets = cluster_secrets(&members, opts, &mut diags, &mut generated);
        for d in &members {
            nodes.push(finish(d, &members, &secrets, opts, &mut diags));
        }
    }
    if diags.has_errors() {
        let mut sorted = diags;
        sorted
            .0
            .sort_by_key(|d| d.severity != diag::Severity::Error);
        return Err(fail(sorted));
    }
    Ok(Profiles {
        dir: dir.to_path_buf(),
        nodes: nodes.into_iter().flatten().collect(),
        diagnostics: dedup(diags),
        generated_secrets: generated,
    })
}

/// Errors first; one line per distinct problem (an inherited value is checked once per node).
fn dedup(diags: Diagnostics) -> Diagnostics {
    let mut out: Vec<Diagnostic> = Vec::new();
    for d in diags.0 {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out.sort_by_key(|d| d.severity != diag::Severity::Error);
    Diagnostics(out)
}

fn cluster_secrets(
    members: &[&Draft],
    opts: &LoadOptions,
    diags: &mut Diagnostics,
    generated: &mut Vec<PathBuf>,
) -> BTreeMap<PathBuf, Arc<ClusterSecrets>> {
    let mut out = BTreeMap::new();
    let paths: BTreeSet<&PathBuf> = members
        .iter()
        .filter(|d| d.role.is_kubernetes())
        .filter_map(|d| d.secrets_path.as_ref())
        .collect();
    if paths.len() > 1 {
        let d = members[0];
        diags.push(Diagnostic::error(
            Location::file(&d.path),
            "secrets",
            format!(
                "the nodes of cluster `{}` name different secrets files; a cluster has one",
                d.cluster
            ),
        ));
    }
    for p in paths {
        if !p.exists() && opts.generate_secrets {
            match ClusterSecrets::generate(opts.now).and_then(|s| s.save_new(p).map(|_| s)) {
                Ok(s) => {
                    generated.push(p.clone());
                    out.insert(p.clone(), Arc::new(s));
                    continue;
                }
                // Another piimg run created it between the look and the link: use that one,
                // so that concurrent builds of one cluster share one CA.
                Err(secrets::SecretsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    diags.push(Diagnostic::error(Location::file(p), "", e.to_string()));
                    continue;
                }
            }
        }
        match ClusterSecrets::load(p) {
            Ok(mut s) => {
                // Files from before piimg preseeded the whole control-plane PKI get it added.
                match s.complete(opts.now) {
                    Ok(true) if opts.generate_secrets => {
                        if let Err(e) = s.save_replace(p) {
                            diags.push(Diagnostic::error(Location::file(p), "", e.to_string()));
                        } else {
                            generated.push(p.clone());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => diags.push(Diagnostic::error(Location::file(p), "", e.to_string())),
                }
                use std::os::unix::fs::PermissionsExt;
                if let Ok(md) = std::fs::metadata(p) {
                    if md.permissions().mode() & 0o077 != 0 {
                        diags.push(Diagnostic::warning(
                            Location::file(p),
                            "",
                            format!(
                                "secrets file is readable by others (mode {:o}); run chmod 600",
                                md.permissions().mode() & 0o777
                            ),
                        ));
                    }
                }
                out.insert(p.clone(), Arc::new(s));
            }
            Err(ds) => ds.into_iter().for_each(|d| diags.push(d)),
        }
    }
    out
}

fn check_cluster(members: &[&Draft], diags: &mut Diagnostics) {
    let err = |diags: &mut Diagnostics, d: &Draft, field: &str, msg: String| {
        let loc = d
            .origins
            .locate(field)
            .cloned()
            .unwrap_or_else(|| Location::file(&d.path));
        diags.push(Diagnostic::error(loc, field, msg));
    };
    // Pod subnets: one per Kubernetes node, none shared; peers off the node's subnet get no
    // route to their pods.
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
        pods.push((d, own));
    }
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
    let cps: Vec<&&Draft> = members
        .iter()
        .filter(|d| d.role == Role::ControlPlane)
        .collect();
    let lbs: Vec<&&Draft> = members
        .iter()
        .filter(|d| d.role == Role::LoadBalancer)
        .collect();
    let inits: Vec<&&Draft> = cps
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
    // Where the API must be reachable: the load balancer if there is one, else a control plane.
    let lb_hosts: BTreeSet<String> = lbs
        .iter()
        .flat_map(|d| {
            let mut v = vec![d.network.address.addr().to_string(), d.hostname.clone()];
            if let Some(b) = d.lb_bind.filter(|b| !b.ip().is_unspecified()) {
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
                err(
                    diags,
                    d,
                    field,
                    format!(
                        "`{}` is not the load balancer's address ({})",
                        k.endpoint,
                        lbs.iter()
                            .map(|l| l.network.address.addr().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
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
    for d in &lbs {
        if d.lb_backends.is_none() && cps.is_empty() {
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

fn finish(
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
    let kubernetes = match (&d.k8s, d.role.is_kubernetes()) {
        (Some(k), true) => {
            let sec_ref = sec.as_ref()?;
            let derived = sec_ref.ca_cert_hash().ok()?;
            let ca_cert_hash = match &k.discovery_ca_hash {
                Some(h) if d.role == Role::ControlPlane && *h != derived => {
                    diags.push(Diagnostic::error(
                        d.origins
                            .locate("kubernetes.discovery_ca_hash")
                            .cloned()
                            .unwrap_or_else(|| Location::file(&d.path)),
                        "kubernetes.discovery_ca_hash",
                        "does not match the cluster CA in the secrets file",
                    ));
                    return None;
                }
                Some(h) => h.clone(),
                None => derived,
            };
            let cp = d.role == Role::ControlPlane;
            Some(Kubernetes {
                version: k.version.clone(),
                control_plane_endpoint: k.endpoint.clone(),
                pod_cidr: k.pod_cidr,
                service_cidr: k.service_cidr,
                init: k.init,
                node_pod_cidr: k.node_pod_cidr,
                cluster_nodes: if k.init {
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
                } else {
                    Vec::new()
                },
                join_after: if cp && !k.init {
                    // The init node first, then the joining control planes by hostname.
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
                } else {
                    Vec::new()
                },
                token: sec_ref.token.clone(),
                token_ttl: k.token_ttl.clone(),
                ca_cert_hash,
                certificate_key: cp.then(|| sec_ref.certificate_key.clone()),
                pki_dir: cp.then(|| "/etc/kubernetes/pki".to_string()),
            })
        }
        _ => None,
    };
    let load_balancer = (d.role == Role::LoadBalancer).then(|| {
        let backends = d.lb_backends.clone().unwrap_or_else(|| {
            let mut cps: Vec<&&Draft> = members
                .iter()
                .filter(|m| m.role == Role::ControlPlane)
                .collect();
            cps.sort_by(|a, b| a.hostname.cmp(&b.hostname));
            cps.iter()
                .map(|m| Backend {
                    name: m.hostname.clone(),
                    address: SocketAddr::new(m.network.address.addr(), d.lb_backend_port),
                })
                .collect()
        });
        LoadBalancer {
            bind: d
                .lb_bind
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT))),
            backends,
        }
    });
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
            load_balancer,
            agent: AgentSettings {
                debug_shell: d.spec.agent.debug_shell.unwrap_or(false),
                status_port: d.spec.agent.status_port.unwrap_or(DEFAULT_STATUS_PORT),
                status_bind: d.spec.agent.status_bind,
                watchdog: d.spec.agent.watchdog.unwrap_or(true),
            },
            // Partition ids are derived when the image is laid out.
            storage: Storage::default(),
            // The node's clock never starts before its certificates are valid (a Pi has no
            // RTC; before NTP answers, "not yet valid" would fail every TLS handshake).
            build_epoch: sec
                .as_ref()
                .and_then(|s| secrets::cert_not_before(&s.ca_cert))
                .map_or(opts.build_epoch, |nb| nb.max(opts.build_epoch)),
        },
        image: d.image.clone(),
        components: d.components.clone(),
        secrets: sec,
        secrets_path: d.secrets_path.clone(),
    })
}
