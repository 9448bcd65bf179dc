//! `build`: one node, or every node of a cluster at once.

use super::profiles::{cache, load, unknown_profile};
use anyhow::Result;
use std::path::Path;

/// How `piimg build` was asked to build, whichever nodes it builds.
pub struct BuildArgs<'a> {
    pub out: &'a Path,
    pub components: &'a [String],
    pub offline: bool,
    pub compress: &'a [piimg::compress::Codec],
    pub quiet: bool,
    pub verbose: u8,
}

impl BuildArgs<'_> {
    fn options(&self) -> Result<piimg::pipeline::BuildOptions> {
        super::build_options(
            self.out,
            self.offline,
            self.components,
            self.compress.to_vec(),
        )
    }
}

fn print_built(r: &piimg::pipeline::BuildOutput, verbose: u8) -> Result<()> {
    println!(
        "{} ({}, {} mapped, sha256 {})\n{}",
        r.image.display(),
        piimg::units::human(r.size),
        piimg::units::human(r.mapped_bytes),
        r.sha256,
        r.manifest.display()
    );
    if verbose > 0 {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&r.manifest)?)?;
        for c in m["components"].as_array().into_iter().flatten() {
            eprintln!(
                "component {} {} {}",
                c["name"].as_str().unwrap_or_default(),
                c["version"].as_str().unwrap_or_default(),
                c["source"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn build(dir: &Path, name: &str, how: &BuildArgs) -> Result<i32> {
    let opts = how.options()?;
    let Some(p) = load(dir, Some(name), false, how.quiet)? else {
        return Ok(1);
    };
    let Some(node) = p.node(name) else {
        return Err(unknown_profile(dir, name));
    };
    let progress = super::progress::Progress::new(how.quiet);
    let lock = piimg::pipeline::lock_path(dir);
    let r = piimg::pipeline::build(&p, node, &cache()?, &lock, &opts, &progress)?;
    print_built(&r, how.verbose)?;
    Ok(0)
}

/// `piimg build --cluster NAME` (or `--all`, `cluster` None): every node, `jobs` at a time.
pub fn build_many(
    dir: &Path,
    cluster: Option<&str>,
    jobs: Option<u32>,
    how: &BuildArgs,
) -> Result<i32> {
    let opts = how.options()?;
    let Some(p) = load(dir, None, false, how.quiet)? else {
        return Ok(1);
    };
    let nodes: Vec<&piimg::profile::NodeProfile> = p
        .nodes
        .iter()
        .filter(|n| cluster.is_none_or(|c| n.cluster == c))
        .collect();
    if nodes.is_empty() {
        let known: Vec<&str> = p.clusters().into_iter().collect();
        anyhow::bail!(
            "{}: no node profiles{}; clusters here: {}",
            dir.display(),
            cluster.map_or(String::new(), |c| format!(" in cluster `{c}`")),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let jobs = jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |j| j as usize,
    );
    let reporters: Vec<super::progress::NodeLines> = nodes
        .iter()
        .map(|n| super::progress::NodeLines::new(&n.name, how.quiet))
        .collect();
    let lock = piimg::pipeline::lock_path(dir);
    let t = std::time::Instant::now();
    let results =
        piimg::pipeline::build_many(&p, &nodes, &cache()?, &lock, &opts, jobs, &reporters);
    let mut failed = Vec::new();
    for (node, r) in nodes.iter().zip(results) {
        match r {
            Ok(r) => print_built(&r, how.verbose)?,
            Err(e) => {
                eprintln!("piimg: {}: {}", node.name, super::error_chain(&e.into()));
                failed.push(node.name.as_str());
            }
        }
    }
    if !how.quiet {
        eprintln!(
            "piimg: {} of {} nodes built in {:.1} s, {jobs} at a time",
            nodes.len() - failed.len(),
            nodes.len(),
            t.elapsed().as_secs_f64()
        );
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("piimg: failed: {}", failed.join(", "));
        Ok(1)
    }
}

/// Which nodes `piimg build --netboot` writes into the tree.
pub enum Scope<'a> {
    Node(&'a str),
    Cluster(Option<&'a str>),
    All,
}

/// `piimg build --netboot`: each node merged into OUT/netboot, one after the other (they share
/// the tree's lock and the cache's components).
pub fn build_netboot(dir: &Path, scope: Scope, how: &BuildArgs) -> Result<i32> {
    let opts = how.options()?;
    let name = match scope {
        Scope::Node(n) => Some(n),
        _ => None,
    };
    let Some(p) = load(dir, name, false, how.quiet)? else {
        return Ok(1);
    };
    let nodes: Vec<&piimg::profile::NodeProfile> = match scope {
        Scope::Node(n) => vec![p.node(n).ok_or_else(|| unknown_profile(dir, n))?],
        Scope::Cluster(c) => p
            .nodes
            .iter()
            .filter(|n| c.is_none_or(|c| n.cluster == c))
            .collect(),
        Scope::All => p.nodes.iter().collect(),
    };
    if nodes.is_empty() {
        anyhow::bail!("{}: no node profiles to build", dir.display());
    }
    let tree = how.out.join("netboot");
    let lock = piimg::pipeline::lock_path(dir);
    let cache = cache()?;
    let mut failed = Vec::new();
    for node in nodes {
        let progress = super::progress::Progress::new(how.quiet);
        match piimg::pipeline::build_netboot(&p, node, &cache, &lock, &opts, &tree, &progress) {
            Ok(r) => {
                println!(
                    "{}/ ({} for {}; root {} at {})",
                    r.folder.display(),
                    node.name,
                    r.record.board,
                    piimg::units::human(r.root_bytes),
                    r.root_url
                );
                if let Some(card) = &r.card {
                    println!(
                        "{} (its secrets: flash it to the node's local card)",
                        card.display()
                    );
                }
                if r.record.secrets_served {
                    eprintln!(
                        "warning: {}: the root image holds {}'s secrets and is served to the whole LAN (netboot.secrets = \"serve\")",
                        r.folder.display(),
                        node.name
                    );
                }
            }
            Err(e) => {
                eprintln!("piimg: {}: {}", node.name, super::error_chain(&e.into()));
                failed.push(node.name.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("piimg: failed: {}", failed.join(", "));
        Ok(1)
    }
}
