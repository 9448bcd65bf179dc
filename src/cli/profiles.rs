//! `check` and `show`, and loading the profiles folder for every command that reads it.

use anyhow::Result;
use piimg::profile::{self, diag::ProfileError, LoadOptions, NodeProfile, Profiles};
use serde::Serialize;
use std::path::Path;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The error for a profile name that names no node: which ones exist, and the closest.
pub(super) fn unknown_profile(dir: &Path, name: &str) -> anyhow::Error {
    let names = profile::node_names(dir);
    let closest = names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(name, n), n))
        .filter(|(d, n)| *d <= (n.len() / 2).max(2))
        .min();
    let hint = match closest {
        Some((_, n)) => format!("; did you mean `{n}`?"),
        None => String::new(),
    };
    if names.is_empty() {
        anyhow::anyhow!("no node profile named `{name}`: {} has none", dir.display())
    } else {
        anyhow::anyhow!(
            "no node profile named `{name}` in {} (there are: {}){hint}",
            dir.display(),
            names.join(", ")
        )
    }
}

/// Loads every profile (`scope` None, as `check` does) or only what node `scope` reads: its
/// profile, what it extends and its cluster; warnings and errors are then only about those.
pub(super) fn load(
    dir: &Path,
    scope: Option<&str>,
    json: bool,
    quiet: bool,
) -> Result<Option<Profiles>> {
    let opts = LoadOptions {
        generate_secrets: true,
        build_epoch: super::source_date_epoch()?,
        now: now(),
    };
    if let Some(name) = scope {
        if dir.is_dir() && !profile::node_names(dir).iter().any(|n| n == name) {
            return Err(unknown_profile(dir, name));
        }
    }
    let loaded = match scope {
        Some(name) => profile::load_for(dir, &opts, name),
        None => profile::load(dir, &opts),
    };
    match loaded {
        Ok(p) => {
            for s in &p.generated_secrets {
                eprintln!(
                    "piimg: generated cluster secrets (token, certificate key, cluster, front-proxy and etcd CAs, service-account key) in {} (mode 0600); keep it private and out of version control",
                    s.display()
                );
            }
            if !json && !quiet {
                for w in p.diagnostics.warnings() {
                    eprintln!("{w}");
                }
            }
            Ok(Some(p))
        }
        Err(ProfileError { diagnostics }) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "ok": false,
                        "diagnostics": diagnostics,
                    }))?
                );
            } else {
                eprint!("{diagnostics}");
                eprintln!(
                    "piimg: {} error(s) in {}",
                    diagnostics.errors().count(),
                    dir.display()
                );
            }
            Ok(None)
        }
    }
}

#[derive(Serialize)]
struct Row<'a> {
    profile: &'a str,
    role: String,
    board: String,
    hostname: &'a str,
    address: String,
    endpoint: String,
}

fn row(n: &NodeProfile) -> Row<'_> {
    let c = &n.config;
    let endpoint = match (&c.kubernetes, &c.load_balancer) {
        (Some(k), _) => k.control_plane_endpoint.clone(),
        (None, Some(lb)) => format!("frontend {}", lb.bind),
        _ => String::new(),
    };
    Row {
        profile: &n.name,
        role: c.role.to_string(),
        board: c.board.to_string(),
        hostname: &c.hostname,
        address: c.network.address.to_string(),
        endpoint,
    }
}

pub fn check(dir: &Path, json: bool, quiet: bool) -> Result<i32> {
    let Some(p) = load(dir, None, json, quiet)? else {
        return Ok(1);
    };
    let ha = p.ha();
    if json {
        let clusters: Vec<_> = ha
            .iter()
            .map(|h| {
                let nodes: Vec<Row> = p
                    .nodes
                    .iter()
                    .filter(|n| n.cluster == h.cluster)
                    .map(row)
                    .collect();
                serde_json::json!({ "name": h.cluster, "nodes": nodes, "ha": h })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true,
                "clusters": clusters,
                "diagnostics": p.diagnostics,
            }))?
        );
        return Ok(0);
    }
    for h in &ha {
        let rows: Vec<Row> = p
            .nodes
            .iter()
            .filter(|n| n.cluster == h.cluster)
            .map(row)
            .collect();
        println!(
            "cluster {} ({} node{})",
            h.cluster,
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        );
        let header = [
            "PROFILE", "ROLE", "BOARD", "HOSTNAME", "ADDRESS", "ENDPOINT",
        ];
        let cells: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.profile.to_string(),
                    r.role.clone(),
                    r.board.clone(),
                    r.hostname.to_string(),
                    r.address.clone(),
                    r.endpoint.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for c in &cells {
            for (w, s) in widths.iter_mut().zip(c) {
                *w = (*w).max(s.len());
            }
        }
        let line = |c: &[String]| {
            c.iter()
                .zip(widths)
                .map(|(s, w)| format!("{s:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        println!("  {}", line(&header.map(String::from)));
        for c in &cells {
            println!("  {}", line(c));
        }
        println!("  HA: {}", h.summary);
        for w in &h.warnings {
            println!("  HA warning: {w}");
        }
        println!();
    }
    Ok(0)
}

pub fn show(dir: &Path, name: &str, json: bool) -> Result<i32> {
    let Some(p) = load(dir, Some(name), json, false)? else {
        return Ok(1);
    };
    let Some(n) = p.node(name) else {
        return Err(unknown_profile(dir, name));
    };
    #[derive(Serialize)]
    struct Shown<'a> {
        profile: &'a str,
        cluster: &'a str,
        source: String,
        node: piimg_agent::node::NodeConfig,
        image: &'a profile::ImageSettings,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        components: std::collections::BTreeMap<&'a str, String>,
    }
    let shown = Shown {
        profile: &n.name,
        cluster: &n.cluster,
        source: n.path.display().to_string(),
        node: n.config.redacted(),
        image: &n.image,
        components: n
            .components
            .iter()
            .map(|(k, v)| (k.as_str(), v.display().to_string()))
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print!("{}", toml::to_string_pretty(&shown)?);
    }
    Ok(0)
}

pub(super) fn parse_overrides(items: &[String]) -> Result<Vec<(String, std::path::PathBuf)>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .map(|(n, p)| (n.to_string(), std::path::PathBuf::from(p)))
                .ok_or_else(|| anyhow::anyhow!("--component {s}: expected NAME=PATH"))
        })
        .collect()
}

pub(super) fn cache() -> Result<piimg::components::cache::Cache> {
    let root = piimg::components::cache::Cache::default_root()?;
    Ok(piimg::components::cache::Cache::open(root)?)
}
