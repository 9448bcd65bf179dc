//! `check`, `show` and `build`: the commands that start from the profiles folder.

use anyhow::Result;
use piimg::profile::{self, diag::ProfileError, LoadOptions, NodeProfile, Profiles};
use serde::Serialize;
use std::path::Path;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Loads the folder; on failure prints every diagnostic (as JSON when asked) and returns `None`.
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

fn selected<'a>(
    p: &'a Profiles,
    dir: &Path,
    profile: Option<&str>,
) -> Result<Vec<&'a NodeProfile>> {
    Ok(match profile {
        Some(name) => vec![p.node(name).ok_or_else(|| unknown_profile(dir, name))?],
        None => p.nodes.iter().collect(),
    })
}

pub fn fetch(dir: &Path, profile: Option<&str>, update: bool, quiet: bool) -> Result<i32> {
    let Some(p) = load(dir, profile, false, quiet)? else {
        return Ok(1);
    };
    let nodes = selected(&p, dir, profile)?;
    let lock = piimg::pipeline::lock_path(dir);
    let progress = super::progress::Progress::new(quiet);
    let cache = cache()?;
    let r = piimg::pipeline::fetch(&nodes, &cache, &lock, update, &progress)?;
    for c in &r.changes {
        println!("{c}");
    }
    for (suite, n) in &r.suites {
        println!("{suite}: {n} packages locked and cached");
    }
    for u in &r.unpinned {
        eprintln!(
            "piimg: warning: {name} could not be fetched ({why}); {} need it: supply it with --component {name}=PATH or run `piimg fetch --update` where it can be downloaded",
            u.profiles.join(", "),
            name = u.name,
            why = u.reason,
        );
    }
    println!(
        "{} {}",
        lock.display(),
        if r.lock_changed {
            "written"
        } else {
            "unchanged"
        }
    );
    Ok(0)
}

/// `fetch --outdated`: a table (or JSON) of locked packages with newer versions; exit 1 if any.
pub fn outdated(dir: &Path, profile: Option<&str>, json: bool, quiet: bool) -> Result<i32> {
    let Some(p) = load(dir, profile, false, quiet)? else {
        return Ok(1);
    };
    let nodes = selected(&p, dir, profile)?;
    let lock = piimg::pipeline::lock_path(dir);
    let progress = super::progress::Progress::new(quiet);
    let cache = cache()?;
    let found = piimg::pipeline::outdated(&nodes, &cache, &lock, &progress)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.is_empty() {
        println!(
            "{}: every locked package is the newest the archive has",
            lock.display()
        );
    } else {
        let w = found.iter().map(|o| o.name.len()).max().unwrap_or(0).max(7);
        let wl = found
            .iter()
            .map(|o| o.locked.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let wa = found
            .iter()
            .map(|o| o.available.len())
            .max()
            .unwrap_or(0)
            .max(9);
        println!(
            "{:w$}  {:wl$}  {:wa$}  FROM",
            "PACKAGE", "LOCKED", "AVAILABLE"
        );
        for o in &found {
            println!(
                "{:w$}  {:wl$}  {:wa$}  {}{}",
                o.name,
                o.locked,
                o.available,
                o.from.join(","),
                if o.security { "  [security]" } else { "" }
            );
        }
        let sec = found.iter().filter(|o| o.security).count();
        println!(
            "{} outdated ({sec} from the security archive): run `piimg fetch --update`",
            found.len()
        );
    }
    Ok(if found.is_empty() { 0 } else { 1 })
}

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
        Ok(piimg::pipeline::BuildOptions {
            out_dir: self.out.to_path_buf(),
            offline: self.offline,
            overrides: parse_overrides(self.components)?,
            epoch: super::source_date_epoch()?,
            agent: piimg::assemble::agent_binary()?,
            compress: self.compress.to_vec(),
        })
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
