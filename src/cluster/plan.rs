//! From a cluster's profiles to what `cluster up` runs: which nodes QEMU can network, where the
//! host's station sits (the nodes' NTP server address), the MACs and the forwards; and a node's
//! state read from its console log.

use super::state::{Plan, PlanForward, PlanNode};
use crate::qemu::Machine;
use ipnet::IpNet;
use piimg_agent::node::Board;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("cluster `{0}` has no nodes")]
    Empty(String),
    #[error(
        "{node} is a {board}: QEMU's raspi4b machine emulates no Ethernet (no GENET, no PCIe), so it cannot join the virtual LAN; `cluster up` boots rpi3b, rpi3bplus and zero2w nodes only"
    )]
    NoEthernet { node: String, board: Board },
    #[error("{node}: {address} is not IPv4; the virtual LAN carries IPv4 only")]
    NotIpv4 { node: String, address: IpNet },
    #[error(
        "no node of cluster `{0}` names an IPv4 address in network.ntp: `cluster up` answers SNTP at that address on the nodes' subnet (e.g. ntp = [\"10.77.0.1\"] for nodes on 10.77.0.0/24)"
    )]
    NoNtpAddress(String),
    #[error(
        "{node}'s subnet {subnet} does not hold the NTP address {ntp}: the host's station on the virtual LAN takes that address, and every node must reach it directly (put the nodes on one subnet with network.ntp on it)"
    )]
    NtpOffSubnet {
        node: String,
        subnet: IpNet,
        ntp: Ipv4Addr,
    },
    #[error("the NTP address {ntp} is also {node}'s address")]
    NtpIsNode { node: String, ntp: Ipv4Addr },
    #[error("{a} and {b} would get the same MAC address: rename one")]
    MacClash { a: String, b: String },
    #[error("--forward {0}: expected HOSTPORT:NODE:GUESTPORT (e.g. 7780:lb1:7780)")]
    BadForward(String),
    #[error("--forward {forward}: no node `{node}` in the cluster (nodes: {known})")]
    UnknownNode {
        forward: String,
        node: String,
        known: String,
    },
}

/// One node as the plan needs it.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// Profile name.
    pub name: &'a str,
    pub hostname: &'a str,
    pub board: Board,
    pub address: IpNet,
    pub ntp: &'a [String],
    pub image: PathBuf,
}

fn v4(m: &Member) -> Result<(Ipv4Addr, u8), PlanError> {
    match m.address.addr() {
        IpAddr::V4(a) => Ok((a, m.address.prefix_len())),
        IpAddr::V6(_) => Err(PlanError::NotIpv4 {
            node: m.name.to_string(),
            address: m.address,
        }),
    }
}

/// The plan for `members` of `cluster`, with `forwards` as the user wrote them.
pub fn plan(cluster: &str, members: &[Member], forwards: &[String]) -> Result<Plan, PlanError> {
    if members.is_empty() {
        return Err(PlanError::Empty(cluster.to_string()));
    }
    for m in members {
        if Machine::for_board(m.board) != Machine::Raspi3b {
            return Err(PlanError::NoEthernet {
                node: m.name.to_string(),
                board: m.board,
            });
        }
    }
    // The first IPv4 literal any node names as its time server (names cannot be answered).
    let ntp = members
        .iter()
        .flat_map(|m| m.ntp.iter())
        .find_map(|s| s.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| PlanError::NoNtpAddress(cluster.to_string()))?;
    let mut nodes = Vec::new();
    let mut prefix = 32;
    for m in members {
        let (address, p) = v4(m)?;
        if !m.address.trunc().contains(&IpAddr::V4(ntp)) {
            return Err(PlanError::NtpOffSubnet {
                node: m.name.to_string(),
                subnet: m.address.trunc(),
                ntp,
            });
        }
        if address == ntp {
            return Err(PlanError::NtpIsNode {
                node: m.name.to_string(),
                ntp,
            });
        }
        prefix = prefix.min(p);
        let mac = super::node_mac(m.hostname);
        if let Some(o) = nodes.iter().find(|n: &&PlanNode| n.mac == mac) {
            return Err(PlanError::MacClash {
                a: o.name.clone(),
                b: m.name.to_string(),
            });
        }
        nodes.push(PlanNode {
            name: m.name.to_string(),
            image: m.image.clone(),
            mac,
            address,
        });
    }
    let forwards = forwards
        .iter()
        .map(|f| forward(f, members))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        cluster: cluster.to_string(),
        host_address: ntp,
        prefix,
        host_mac: super::host_mac(cluster),
        forwards,
        nodes,
    })
}

/// `HOSTPORT:NODE:GUESTPORT`, NODE a profile name or a hostname.
fn forward(f: &str, members: &[Member]) -> Result<PlanForward, PlanError> {
    let bad = || PlanError::BadForward(f.to_string());
    let mut parts = f.split(':');
    let (Some(h), Some(n), Some(g), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let host_port: u16 = h.parse().map_err(|_| bad())?;
    let guest: u16 = g.parse().map_err(|_| bad())?;
    if host_port == 0 || guest == 0 || n.is_empty() {
        return Err(bad());
    }
    let m = members
        .iter()
        .find(|m| m.name == n || m.hostname == n)
        .ok_or_else(|| PlanError::UnknownNode {
            forward: f.to_string(),
            node: n.to_string(),
            known: members
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let (address, _) = v4(m)?;
    Ok(PlanForward {
        host_port,
        to: SocketAddrV4::new(address, guest),
    })
}

/// A node as its console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    Booting,
    Ready,
    /// Why (the line that says so).
    Failed(String),
}

/// The agent's line once every service has started and the network is up.
pub const READY_LINE: &str = "piimg-agent: ready";

/// The state a console log shows: failed on a kernel panic or QEMU's exit, ready once the agent
/// said so, else booting.
pub fn node_status(console: &str) -> NodeStatus {
    let mut status = NodeStatus::Booting;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if line.contains("Kernel panic") || line.starts_with(super::supervise::EXIT_LINE) {
            return NodeStatus::Failed(line.trim().to_string());
        }
        if line.contains(READY_LINE) {
            status = NodeStatus::Ready;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member<'a>(name: &'a str, board: Board, address: &str, ntp: &'a [String]) -> Member<'a> {
        Member {
            name,
            hostname: name,
            board,
            address: address.parse().unwrap(),
            ntp,
            image: PathBuf::from(format!("out/{name}.img")),
        }
    }

    #[test]
    fn the_host_takes_the_ntp_address_and_forwards_name_nodes() {
        let ntp = vec!["pool.example".to_string(), "10.77.0.1".to_string()];
        let none: Vec<String> = Vec::new();
        let ms = [
            member("lb1", Board::Rpi3b, "10.77.0.10/24", &none),
            member("w1", Board::Zero2w, "10.77.0.21/24", &ntp),
        ];
        let p = plan("c", &ms, &["7780:w1:7780".into(), "16443:lb1:6443".into()]).unwrap();
        assert_eq!(p.host_address, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(p.prefix, 24);
        assert_eq!(p.nodes[1].address, Ipv4Addr::new(10, 77, 0, 21));
        assert_eq!(p.forwards[0].to, "10.77.0.21:7780".parse().unwrap());
        assert_eq!(p.forwards[1].host_port, 16443);
        for bad in ["7780:w1", "x:w1:1", "0:w1:1", "1:w1:0", "1::2", "1:w1:2:3"] {
            assert_eq!(
                plan("c", &ms, &[bad.into()]).unwrap_err(),
                PlanError::BadForward(bad.into())
            );
        }
        assert!(matches!(
            plan("c", &ms, &["1:w9:2".into()]).unwrap_err(),
            PlanError::UnknownNode { .. }
        ));
    }

    #[test]
    fn refused_clusters_say_why() {
        let ntp = vec!["10.77.0.1".to_string()];
        let pi4 = [member("w1", Board::Rpi4b, "10.77.0.21/24", &ntp)];
        let e = plan("c", &pi4, &[]).unwrap_err().to_string();
        assert!(
            e.contains("w1 is a rpi4b") && e.contains("no Ethernet"),
            "{e}"
        );
        let names = vec!["pool.ntp.org".to_string()];
        let e = plan(
            "c",
            &[member("a", Board::Rpi3b, "10.77.0.2/24", &names)],
            &[],
        );
        assert_eq!(e.unwrap_err(), PlanError::NoNtpAddress("c".into()));
        let off = [member("a", Board::Rpi3b, "10.78.0.2/24", &ntp)];
        assert!(matches!(
            plan("c", &off, &[]).unwrap_err(),
            PlanError::NtpOffSubnet { .. }
        ));
        let same = [member("a", Board::Rpi3b, "10.77.0.1/24", &ntp)];
        assert!(matches!(
            plan("c", &same, &[]).unwrap_err(),
            PlanError::NtpIsNode { .. }
        ));
    }

    #[test]
    fn the_console_tells_the_state() {
        assert_eq!(node_status("[ 1.0] booting\r\n"), NodeStatus::Booting);
        assert_eq!(
            node_status("x\r\npiimg-agent: ready (uptime 9.1 s)\r\n"),
            NodeStatus::Ready
        );
        assert!(matches!(
            node_status("[ 2.0] Kernel panic - not syncing: VFS\r\n"),
            NodeStatus::Failed(l) if l.contains("VFS")
        ));
        assert!(matches!(
            node_status("piimg-agent: ready\n\npiimg cluster: QEMU exited (exit status: 1)\n"),
            NodeStatus::Failed(_)
        ));
    }
}
