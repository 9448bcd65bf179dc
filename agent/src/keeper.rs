//! The init node's cluster keeper: what the profiles preseed but no kubelet can tell the cluster.
//!
//! - Each node's pod subnet comes from the profiles, and every node routes its peers' subnets
//!   there; the cluster must record the same one in `Node.spec.podCIDR`. The controller
//!   manager's own allocation is off (kubeadm.yaml: allocate-node-cidrs false), and the keeper,
//!   which holds admin.conf, sets each Node's podCIDR as the node registers (podCIDR can only go
//!   from empty to a value, so this is done once).
//! - The bootstrap token exists only for preseeded nodes to join: the keeper deletes it once
//!   every one of them has registered. A node that never comes is covered by the token's TTL.
//!
//! It runs `kubectl` and `kubeadm` (the node's own binaries) and exits 0 when done.

use crate::node::{Kubernetes, NodeConfig};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

/// The programs and files the keeper uses (absolute paths on the node; others in tests).
#[derive(Debug, Clone)]
pub struct Tools {
    pub kubectl: PathBuf,
    pub kubeadm: PathBuf,
    pub kubeconfig: PathBuf,
    /// Time between looks at the cluster.
    pub every: Duration,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            kubectl: "/usr/bin/kubectl".into(),
            kubeadm: "/usr/bin/kubeadm".into(),
            kubeconfig: ADMIN_CONF.into(),
            every: Duration::from_secs(10),
        }
    }
}

/// One registered Node as `kubectl get nodes` reports it: name and podCIDR (empty if none).
pub fn parse_nodes(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            Some((name, w.next().unwrap_or("").to_string()))
        })
        .collect()
}

fn run(tool: &std::path::Path, args: &[String]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {}: {}",
            tool.display(),
            args.first().map(String::as_str).unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Seconds of a Go duration such as `24h`, `1h30m`, `90s` (what token_ttl holds).
pub fn duration_secs(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    (num.is_empty() && !s.is_empty()).then_some(total)
}

/// Runs until every preseeded node has registered with its podCIDR set (then deletes the
/// bootstrap token) or the token's TTL has passed. Exit status 0 in both cases.
pub fn run_keeper(cfg: &NodeConfig, tools: &Tools) -> i32 {
    let Some(k) = &cfg.kubernetes else {
        return 0;
    };
    let ttl = Duration::from_secs(duration_secs(&k.token_ttl).unwrap_or(86_400));
    let started = Instant::now();
    let kc = format!("--kubeconfig={}", tools.kubeconfig.display());
    // Mismatches are said once, not every round.
    let mut warned: Vec<String> = Vec::new();
    loop {
        let nodes = list_nodes(tools, &kc);
        set_pod_cidrs(k, &nodes, tools, &kc, &mut warned);
        let missing = unregistered(k, &nodes);
        if missing.is_empty() {
            if delete_token(k, tools, &kc) {
                return 0;
            }
        } else if started.elapsed() >= ttl {
            println!(
                "keeper: the bootstrap token's TTL ({}) has passed; never registered: {}",
                k.token_ttl,
                missing.join(", ")
            );
            return 0;
        }
        std::thread::sleep(tools.every);
    }
}

/// The registered Nodes and their podCIDRs (none when kubectl fails, which is said).
fn list_nodes(tools: &Tools, kc: &str) -> Vec<(String, String)> {
    let listed = run(
        &tools.kubectl,
        &[
            kc.to_string(),
            "get".into(),
            "nodes".into(),
            "-o".into(),
            "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDR}{\"\\n\"}{end}".into(),
        ],
    );
    match listed {
        Ok(t) => parse_nodes(&t),
        Err(e) => {
            println!("keeper: {e}");
            Vec::new()
        }
    }
}

/// Gives each registered preseeded node without a podCIDR the one from its profile; says once
/// about a node whose podCIDR differs from its profile's.
fn set_pod_cidrs(
    k: &Kubernetes,
    nodes: &[(String, String)],
    tools: &Tools,
    kc: &str,
    warned: &mut Vec<String>,
) {
    for m in &k.cluster_nodes {
        let Some(want) = m.pod_cidr else {
            continue;
        };
        let Some((_, have)) = nodes.iter().find(|(n, _)| *n == m.name) else {
            continue;
        };
        if have.is_empty() {
            let patch =
                format!("{{\"spec\":{{\"podCIDR\":\"{want}\",\"podCIDRs\":[\"{want}\"]}}}}");
            let args = [
                kc.to_string(),
                "patch".into(),
                "node".into(),
                m.name.clone(),
                "--type=merge".into(),
                "-p".into(),
                patch,
            ];
            match run(&tools.kubectl, &args) {
                Ok(_) => println!("keeper: node {} podCIDR {want}", m.name),
                Err(e) => println!("keeper: {e}"),
            }
        } else if *have != want.to_string() && !warned.contains(&m.name) {
            println!(
                "keeper: node {} has podCIDR {have}, its profile says {want}: the routes of the other nodes point at {want}",
                m.name
            );
            warned.push(m.name.clone());
        }
    }
}

/// The preseeded nodes not yet registered with a podCIDR.
fn unregistered<'a>(k: &'a Kubernetes, nodes: &[(String, String)]) -> Vec<&'a str> {
    k.cluster_nodes
        .iter()
        .filter(|m| !nodes.iter().any(|(n, c)| *n == m.name && !c.is_empty()))
        .map(|m| m.name.as_str())
        .collect()
}

/// Deletes the bootstrap token; whether that worked.
fn delete_token(k: &Kubernetes, tools: &Tools, kc: &str) -> bool {
    let id = k.token.split('.').next().unwrap_or_default().to_string();
    match run(
        &tools.kubeadm,
        &[kc.to_string(), "token".into(), "delete".into(), id.clone()],
    ) {
        Ok(_) => {
            println!("keeper: every preseeded node has registered: bootstrap token {id} deleted");
            true
        }
        Err(e) => {
            println!("keeper: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubectls_lines_and_durations() {
        assert_eq!(
            parse_nodes("cp1 10.244.11.0/24\nw1 \n\n"),
            vec![
                ("cp1".to_string(), "10.244.11.0/24".to_string()),
                ("w1".to_string(), String::new())
            ]
        );
        assert_eq!(duration_secs("24h"), Some(86_400));
        assert_eq!(duration_secs("1h30m"), Some(5_400));
        assert_eq!(duration_secs("h"), None);
        assert_eq!(duration_secs(""), None);
    }
}
