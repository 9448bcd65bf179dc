//! `piimg init`: writes a new cluster's profiles and says what it wrote.

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use piimg::fs::sparse::OutputSet;
use piimg::init::{plan, InitRequest};
use piimg_agent::node::Board;
use std::net::Ipv4Addr;
use std::path::PathBuf;

fn parse_board(s: &str) -> Result<Board, String> {
    Board::ALL
        .into_iter()
        .find(|b| b.as_str() == s)
        .ok_or_else(|| {
            let all: Vec<&str> = Board::ALL.iter().map(|b| b.as_str()).collect();
            format!("unknown board; one of: {}", all.join(", "))
        })
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to write the profiles into (created if missing; existing files are never replaced)
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Cluster name (names the base profile and the secrets file)
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// The nodes' network, e.g. 192.168.60.0/24
    #[arg(long, value_name = "CIDR")]
    subnet: IpNet,
    /// Default route (default: the subnet's first address)
    #[arg(long, value_name = "IP")]
    gateway: Option<Ipv4Addr>,
    /// Control-plane nodes with stacked etcd (odd counts tolerate (n-1)/2 failures)
    #[arg(long, default_value_t = 3, value_name = "N")]
    control_planes: u32,
    /// Worker nodes
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: u32,
    /// A load balancer (HAProxy) in front of the API servers (the default)
    #[arg(long, overrides_with = "no_load_balancer")]
    load_balancer: bool,
    /// No load balancer: the first control plane is the API endpoint
    #[arg(long)]
    no_load_balancer: bool,
    /// Board of every node: rpi3b, rpi3bplus, zero2w, rpi4b, cm4
    #[arg(long, default_value = "rpi4b", value_parser = parse_board, value_name = "BOARD")]
    board: Board,
    /// NTP server (repeatable; required when the cluster has Kubernetes nodes)
    #[arg(long, value_name = "SERVER")]
    ntp: Vec<String>,
    /// Address of the first node (default: the subnet's 10th address)
    #[arg(long, value_name = "IP")]
    first_address: Option<Ipv4Addr>,
}

pub fn run(a: &InitArgs) -> Result<i32> {
    let p = plan(&InitRequest {
        cluster: a.cluster.clone(),
        subnet: a.subnet,
        gateway: a.gateway,
        control_planes: a.control_planes,
        workers: a.workers,
        load_balancer: !a.no_load_balancer,
        board: a.board,
        ntp: a.ntp.clone(),
        first_address: a.first_address,
    })?;
    let existing: Vec<String> = p
        .files
        .iter()
        .map(|f| a.dir.join(&f.name))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "refusing to overwrite {}: nothing was written (choose another folder or --cluster)",
            existing.join(", ")
        );
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut set = OutputSet::new();
    for f in &p.files {
        set.push(piimg::image::stage_bytes(
            &a.dir.join(&f.name),
            f.text.as_bytes(),
        )?);
    }
    set.commit(0o644)
        .with_context(|| format!("writing into {}", a.dir.display()))?;
    println!("wrote {} profiles into {}:", p.files.len(), a.dir.display());
    for f in &p.files {
        println!("  {}", f.name);
    }
    for n in &p.nodes {
        println!("  {:<6} {:<14} {}", n.name, n.role, n.address);
    }
    if !p.endpoint.is_empty() {
        println!("API endpoint {}", p.endpoint);
    }
    println!("HA: {}", p.ha.summary);
    for w in &p.ha.warnings {
        eprintln!("piimg: warning: {w}");
    }
    println!(
        "next: check the lines marked CHECK, then `piimg check --profiles {d}` and `piimg build --profiles {d} --profile {first}`",
        d = a.dir.display(),
        first = p.nodes.first().map_or("NAME", |n| n.name.as_str())
    );
    Ok(0)
}
