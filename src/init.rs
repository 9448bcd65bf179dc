//! `piimg init`: the profiles of a new cluster, consistent by construction: consecutive static
//! addresses, the load balancer (or the first control plane) as the API endpoint, exactly one
//! init node, NTP everywhere, pod and service networks clear of the node network.

use ipnet::{IpNet, Ipv4Net};
use piimg_agent::node::Board;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("--subnet {0}: piimg clusters use IPv4 node networks")]
    NotV4(IpNet),
    #[error("{what} {addr} is not a host address of {subnet}")]
    Outside {
        what: String,
        addr: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("{what} {addr} is the gateway's address")]
    Gateway { what: String, addr: Ipv4Addr },
    #[error("a cluster with workers needs at least one control-plane node (--control-planes)")]
    NoControlPlane,
    #[error("a load balancer needs control-plane nodes behind it (--control-planes)")]
    NothingToBalance,
    #[error("--ntp is required: kubeadm and kubelet wait for a synchronised clock and a Pi has no clock of its own")]
    NoNtp,
    #[error("--cluster `{0}`: use lowercase letters, digits and '-' (it names files)")]
    BadName(String),
    #[error("{0} has at most 1 GiB of RAM; kubeadm requires 1700 MB on a control-plane node: use --board rpi4b or cm4 (or --control-planes 0)")]
    SmallBoard(Board),
    #[error("no pod or service network is free of the node network {0}: pick another --subnet")]
    NoFreeNetwork(Ipv4Net),
}

#[derive(Debug, Clone)]
pub struct InitRequest {
    pub cluster: String,
    pub subnet: IpNet,
    pub gateway: Option<Ipv4Addr>,
    pub control_planes: u32,
    pub workers: u32,
    pub load_balancer: bool,
    pub board: Board,
    pub ntp: Vec<String>,
    pub first_address: Option<Ipv4Addr>,
}

/// One file to write: its name in the profiles folder and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFile {
    pub name: String,
    pub text: String,
}

/// A node of the plan, for the summary the CLI prints.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    pub name: String,
    pub role: &'static str,
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub files: Vec<ProfileFile>,
    pub nodes: Vec<PlannedNode>,
    pub endpoint: String,
    pub ha: crate::profile::HaAssessment,
}

/// The Kubernetes release the example profiles and the lock use.
const K8S_VERSION: &str = "v1.31.4";
const POD_CANDIDATES: [&str; 3] = ["10.244.0.0/16", "172.20.0.0/16", "10.200.0.0/16"];
const SERVICE_CANDIDATES: [&str; 3] = ["10.96.0.0/12", "172.24.0.0/16", "10.112.0.0/16"];

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn pick(candidates: &[&str], avoid: &[Ipv4Net]) -> Option<Ipv4Net> {
    candidates
        .iter()
        .filter_map(|c| c.parse::<Ipv4Net>().ok())
        .find(|c| avoid.iter().all(|a| !overlaps(c, a)))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn plan(r: &InitRequest) -> Result<Plan, InitError> {
    let subnet = check_request(r)?;
    let (gateway, nodes) = assign_addresses(r, subnet)?;
    let endpoint_node = nodes
        .iter()
        .find(|n| n.role == "load-balancer")
        .or_else(|| nodes.iter().find(|n| n.role == "control-plane"));
    let endpoint = endpoint_node
        .map(|n| format!("{}:6443", n.address))
        .unwrap_or_default();
    let pods = pick(&POD_CANDIDATES, &[subnet]).ok_or(InitError::NoFreeNetwork(subnet))?;
    let services =
        pick(&SERVICE_CANDIDATES, &[subnet, pods]).ok_or(InitError::NoFreeNetwork(subnet))?;
    let mut files = vec![ProfileFile {
        name: format!("{}.toml", r.cluster),
        text: cluster_profile(r, gateway, &endpoint, pods, services),
    }];
    files.extend(
        nodes
            .iter()
            .map(|n| node_profile(n, &r.cluster, subnet.prefix_len())),
    );
    let lbs = usize::from(r.load_balancer);
    Ok(Plan {
        files,
        nodes,
        endpoint,
        ha: crate::profile::assess_counts(&r.cluster, r.control_planes as usize, lbs),
    })
}

/// The request's own consistency; returns the node network.
fn check_request(r: &InitRequest) -> Result<Ipv4Net, InitError> {
    let valid_name = !r.cluster.is_empty()
        && r.cluster
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_name {
        return Err(InitError::BadName(r.cluster.clone()));
    }
    let IpNet::V4(subnet) = r.subnet.trunc() else {
        return Err(InitError::NotV4(r.subnet));
    };
    let kube_nodes = r.control_planes + r.workers;
    if r.workers > 0 && r.control_planes == 0 {
        return Err(InitError::NoControlPlane);
    }
    if r.load_balancer && r.control_planes == 0 {
        return Err(InitError::NothingToBalance);
    }
    if kube_nodes > 0 && r.ntp.is_empty() {
        return Err(InitError::NoNtp);
    }
    if r.control_planes > 0 && matches!(r.board, Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w) {
        return Err(InitError::SmallBoard(r.board));
    }
    Ok(subnet)
}

/// The gateway and consecutive host addresses for lb1, cp1.., w1.., in that order.
fn assign_addresses(
    r: &InitRequest,
    subnet: Ipv4Net,
) -> Result<(Ipv4Addr, Vec<PlannedNode>), InitError> {
    let host = |what: &str, a: Ipv4Addr| -> Result<Ipv4Addr, InitError> {
        if subnet.contains(&a)
            && a != subnet.network()
            && (subnet.prefix_len() >= 31 || a != subnet.broadcast())
        {
            Ok(a)
        } else {
            Err(InitError::Outside {
                what: what.to_string(),
                addr: a,
                subnet,
            })
        }
    };
    let base = u32::from(subnet.network());
    let gateway = host(
        "--gateway",
        r.gateway.unwrap_or(Ipv4Addr::from(base.wrapping_add(1))),
    )?;
    let first = r
        .first_address
        .unwrap_or(Ipv4Addr::from(base.wrapping_add(10)));
    let mut names: Vec<(String, &'static str)> = Vec::new();
    if r.load_balancer {
        names.push(("lb1".into(), "load-balancer"));
    }
    names.extend((1..=r.control_planes).map(|i| (format!("cp{i}"), "control-plane")));
    names.extend((1..=r.workers).map(|i| (format!("w{i}"), "worker")));
    let mut nodes = Vec::new();
    let mut next = u32::from(first);
    for (name, role) in names {
        let a = host(&format!("{name}'s address"), Ipv4Addr::from(next))?;
        if a == gateway {
            return Err(InitError::Gateway {
                what: name,
                addr: a,
            });
        }
        nodes.push(PlannedNode {
            name,
            role,
            address: a,
        });
        next = next.wrapping_add(1);
    }
    Ok((gateway, nodes))
}

/// The cluster-wide profile every node extends.
fn cluster_profile(
    r: &InitRequest,
    gateway: Ipv4Addr,
    endpoint: &str,
    pods: Ipv4Net,
    services: Ipv4Net,
) -> String {
    let c = &r.cluster;
    let ntp: Vec<String> = r.ntp.iter().map(|s| toml_str(s)).collect();
    let mut text = format!(
        "# Settings shared by every node of cluster `{c}` (written by `piimg init`). Node profiles\n\
         # say `extends = \"{c}\"`; their own settings win. Check the lines marked CHECK.\n\
         cluster = {cq}\n\
         # Token, certificate key and CAs: generated on first use, mode 0600; keep them out of\n\
         # version control.\n\
         secrets = {sq}\n\
         board = {bq}\n\
         \n\
         [network]\n\
         interface = \"eth0\"\n\
         gateway = \"{gateway}\"\n\
         dns = [\"{gateway}\"]  # CHECK: your DNS resolver (here: the gateway)\n\
         ntp = [{ntp}]  # a Pi has no clock; kubeadm waits until NTP answers\n",
        cq = toml_str(c),
        sq = toml_str(&format!("../secrets/{c}.toml")),
        bq = toml_str(r.board.as_str()),
        ntp = ntp.join(", "),
    );
    if r.control_planes + r.workers > 0 {
        text.push_str(&format!(
            "\n[kubernetes]\n\
             version = \"{K8S_VERSION}\"\n\
             # kubectl and every node reach the API servers here{}.\n\
             control_plane_endpoint = \"{endpoint}\"\n\
             pod_cidr = \"{pods}\"\n\
             service_cidr = \"{services}\"\n",
            if r.load_balancer {
                " (the load balancer)"
            } else {
                " (the first control plane: no load balancer)"
            }
        ));
    }
    text.push_str("\n[image]\nsize = \"4GiB\"\nsuite = \"trixie\"\n");
    text
}

/// One node's profile: its identity, address and what only it does.
fn node_profile(n: &PlannedNode, cluster: &str, prefix: u8) -> ProfileFile {
    let mut t = format!(
        "extends = {}\nhostname = \"{}\"\nrole = \"{}\"\n\n[network]\naddress = \"{}/{}\"\n",
        toml_str(cluster),
        n.name,
        n.role,
        n.address,
        prefix
    );
    match n.name.as_str() {
        "lb1" => t.push_str(
            "\n[load_balancer]\n# Backends default to every control-plane node of the cluster on port 6443.\nbind = \"0.0.0.0:6443\"\n\n[image]\nsize = \"1GiB\"\n",
        ),
        "cp1" => t.push_str(
            "\n[kubernetes]\n# cp1 runs `kubeadm init`; the other control planes join it.\ninit = true\n",
        ),
        _ => {}
    }
    ProfileFile {
        name: format!("{}.toml", n.name),
        text: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> InitRequest {
        InitRequest {
            cluster: "lab".into(),
            subnet: "10.0.7.0/24".parse().unwrap(),
            gateway: None,
            control_planes: 3,
            workers: 2,
            load_balancer: true,
            board: Board::Rpi4b,
            ntp: vec!["10.0.7.1".into()],
            first_address: None,
        }
    }

    #[test]
    fn addresses_are_consecutive_and_the_lb_is_the_endpoint() {
        let p = plan(&req()).unwrap();
        let got: Vec<(String, String)> = p
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.address.to_string()))
            .collect();
        let want = [
            ("lb1", "10.0.7.10"),
            ("cp1", "10.0.7.11"),
            ("cp2", "10.0.7.12"),
            ("cp3", "10.0.7.13"),
            ("w1", "10.0.7.14"),
            ("w2", "10.0.7.15"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        assert_eq!(p.endpoint, "10.0.7.10:6443");
        assert_eq!(p.ha.tolerated_failures, 1);
        assert_eq!(p.files.len(), 7);
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = req();
        r.ntp.clear();
        assert!(matches!(plan(&r), Err(InitError::NoNtp)));
        let mut r = req();
        r.first_address = Some("10.0.7.250".parse().unwrap());
        assert!(matches!(plan(&r), Err(InitError::Outside { .. })));
        let mut r = req();
        r.board = Board::Rpi3b;
        assert!(matches!(plan(&r), Err(InitError::SmallBoard(_))));
        let mut r = req();
        r.subnet = "10.244.3.0/24".parse().unwrap();
        let p = plan(&r).unwrap();
        assert!(p.files[0].text.contains("pod_cidr = \"172.20.0.0/16\""));
    }
}
