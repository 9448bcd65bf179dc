//! Profiles: per-node TOML files in one folder, `extends` inheritance, cluster-wide validation and
//! the secrets they reference. The result of [`load`] is one fully resolved
//! [`piimg_agent::node::NodeConfig`] per node, or every problem found, each with file, line and
//! field.
//!
//! Loading reads the folder, checks each node's profile section by section ([`node`], [`network`],
//! [`kubernetes`], [`load_balancer`], [`image`]), then checks each cluster as a whole
//! ([`cluster`]), loads its secrets and resolves every node's config ([`config`]).

mod cluster;
mod cluster_secrets;
mod config;
pub mod diag;
mod draft;
mod fields;
mod image;
mod kubernetes;
mod load_balancer;
mod netboot;
mod network;
mod node;
pub mod schema;
pub mod secrets;
pub mod source;
#[cfg(test)]
mod testing;
mod wifi;

use crate::components::apt::SuiteSources;
use diag::{Diagnostic, Diagnostics, Location, ProfileError};
use draft::Draft;
pub use kubernetes::node_subnet;
pub use netboot::{NetbootKey, NetbootSettings, SecretsPolicy};
use piimg_agent::node::{NodeConfig, Role};
use secrets::ClusterSecrets;
use serde::Serialize;
use source::SourceFile;
use std::collections::{BTreeMap, BTreeSet};
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
    /// `[netboot]`: used by `piimg build --netboot` only.
    pub netboot: NetbootSettings,
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
    if n > 0 && n.is_multiple_of(2) {
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

/// A profile file that did not parse, by profile name.
type Unreadable = Vec<(String, Diagnostic)>;

/// One load: the folder's files, each node checked on its own, the findings in scope, then per
/// cluster the cross-node checks, its secrets and its nodes' configs.
fn load_inner(
    dir: &Path,
    opts: &LoadOptions,
    scope: Option<&str>,
) -> Result<Profiles, ProfileError> {
    let (files, unreadable) = read_folder(dir)?;
    let (mut drafts, node_diags) = draft_nodes(&files);
    let mut diags = match scope {
        None => findings_of_all(dir, &files, unreadable, node_diags),
        Some(target) => {
            keep_cluster_of(target, &mut drafts);
            findings_of_scope(dir, target, &files, &drafts, unreadable, node_diags)
        }
    };
    // Cross-node checks on a partial cluster would only report follow-on errors.
    if diags.has_errors() {
        return Err(ProfileError {
            diagnostics: dedup(diags),
        });
    }
    let (nodes, generated) = resolve_clusters(&drafts, opts, &mut diags);
    if diags.has_errors() {
        diags.0.sort_by_key(|d| d.severity != diag::Severity::Error);
        return Err(ProfileError { diagnostics: diags });
    }
    Ok(Profiles {
        dir: dir.to_path_buf(),
        nodes,
        diagnostics: dedup(diags),
        generated_secrets: generated,
    })
}

/// Every profile file of `dir` by name, and those that do not parse; only an unreadable folder
/// stops the load here.
fn read_folder(dir: &Path) -> Result<(BTreeMap<String, SourceFile>, Unreadable), ProfileError> {
    let paths = toml_paths(dir).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(Diagnostic::error(
            Location::file(dir),
            "",
            format!("cannot read the profiles folder: {e}"),
        ));
        ProfileError { diagnostics: d }
    })?;
    let mut files: BTreeMap<String, SourceFile> = BTreeMap::new();
    let mut unreadable: Unreadable = Vec::new();
    for p in &paths {
        match source::read_file(p) {
            Ok(f) => {
                files.insert(source::profile_name(p), f);
            }
            Err(d) => unreadable.push((source::profile_name(p), d)),
        }
    }
    Ok((files, unreadable))
}

/// Each node profile resolved and checked on its own. Its findings are kept per node, so that a
/// scoped load can keep only its cluster's.
fn draft_nodes(
    files: &BTreeMap<String, SourceFile>,
) -> (Vec<Draft>, BTreeMap<String, Diagnostics>) {
    let bases = base_names(files);
    let mut drafts = Vec::new();
    let mut node_diags: BTreeMap<String, Diagnostics> = BTreeMap::new();
    for name in files.keys() {
        if bases.contains(name) {
            continue;
        }
        let mut nd = Diagnostics::default();
        if let Some(m) = source::resolve(name, files, &mut nd) {
            if let Some(d) = draft::draft(&m, &mut nd) {
                drafts.push(d);
            }
        }
        node_diags.insert(name.clone(), nd);
    }
    (drafts, node_diags)
}

/// `check` reports everything: unparsable files first, then each node's findings by name.
fn findings_of_all(
    dir: &Path,
    files: &BTreeMap<String, SourceFile>,
    unreadable: Unreadable,
    node_diags: BTreeMap<String, Diagnostics>,
) -> Diagnostics {
    let mut diags = Diagnostics::default();
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
    diags
}

/// A scoped load builds only `target`'s cluster: the other drafts go.
fn keep_cluster_of(target: &str, drafts: &mut Vec<Draft>) {
    let cluster = drafts
        .iter()
        .find(|d| d.name == target)
        .map(|d| d.cluster.clone());
    drafts.retain(|d| Some(&d.cluster) == cluster.as_ref());
}

/// A scoped load reports what `target` and its cluster read, so that a broken profile of
/// another cluster does not stop it.
fn findings_of_scope(
    dir: &Path,
    target: &str,
    files: &BTreeMap<String, SourceFile>,
    drafts: &[Draft],
    unreadable: Unreadable,
    node_diags: BTreeMap<String, Diagnostics>,
) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let mut kept: BTreeSet<String> = drafts.iter().map(|d| d.name.clone()).collect();
    kept.insert(target.to_string());
    let read = files_read_by(&kept, files);
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
    diags
}

/// The files the `kept` nodes read, including an `extends` target that failed to parse.
fn files_read_by(
    kept: &BTreeSet<String>,
    files: &BTreeMap<String, SourceFile>,
) -> BTreeSet<String> {
    let mut read: BTreeSet<String> = kept.clone();
    for name in kept {
        let mut cur = files.get(name);
        while let Some(f) = cur {
            match f.table.get("extends").and_then(|v| v.as_str()) {
                Some(next) if read.insert(next.to_string()) => cur = files.get(next),
                _ => cur = None,
            }
        }
    }
    read
}

/// Per cluster: the cross-node checks, its secrets, then each member's node config. Returns the
/// nodes and the secrets files this load created or completed.
fn resolve_clusters(
    drafts: &[Draft],
    opts: &LoadOptions,
    diags: &mut Diagnostics,
) -> (Vec<NodeProfile>, Vec<PathBuf>) {
    let mut generated = Vec::new();
    let mut nodes = Vec::new();
    let clusters: BTreeSet<&str> = drafts.iter().map(|d| d.cluster.as_str()).collect();
    for c in clusters {
        let members: Vec<&Draft> = drafts.iter().filter(|d| d.cluster == c).collect();
        cluster::check(&members, diags);
        let secrets = cluster_secrets::load(&members, opts, diags, &mut generated);
        for d in &members {
            nodes.extend(config::node_profile(d, &members, &secrets, opts, diags));
        }
    }
    (nodes, generated)
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

#[cfg(test)]
mod tests {
    use super::testing::{errors, folder, k8s_node};
    use super::*;

    #[test]
    fn a_scoped_load_reads_the_extends_chain_even_past_a_missing_base() {
        let f = folder(&[
            ("base", "extends = \"gone\"\nabstract = true"),
            ("w1", "extends = \"base\""),
            ("w2", "hostname = \"w2\""),
        ]);
        let kept: BTreeSet<String> = ["w1".to_string()].into();
        let read = files_read_by(&kept, &f.files);
        assert_eq!(read, ["base", "gone", "w1"].map(String::from).into());
    }

    #[test]
    fn a_scoped_load_keeps_the_targets_cluster() {
        let other = k8s_node("w2", "worker", "192.168.50.22/24", "").replace("\"c\"", "\"d\"");
        let f = folder(&[
            ("w1", &k8s_node("w1", "worker", "192.168.50.21/24", "")),
            ("w2", &other),
        ]);
        let mut drafts = f.drafts(&["w1", "w2"]);
        keep_cluster_of("w2", &mut drafts);
        let names: Vec<&str> = drafts.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["w2"]);
    }

    #[test]
    fn a_scoped_load_names_a_missing_target() {
        let f = folder(&[("w1", &k8s_node("w1", "worker", "192.168.50.21/24", ""))]);
        let diags = findings_of_scope(
            f.dir.path(),
            "w9",
            &f.files,
            &[],
            Vec::new(),
            BTreeMap::new(),
        );
        assert_eq!(errors(&diags), [": no node profile named `w9`"]);
    }

    #[test]
    fn every_node_is_drafted_but_no_base() {
        let f = folder(&[
            ("base", "cluster = \"c\""),
            (
                "w1",
                &format!(
                    "extends = \"base\"\n{}",
                    k8s_node("w1", "worker", "192.168.50.21/24", "")
                ),
            ),
        ]);
        let (drafts, node_diags) = draft_nodes(&f.files);
        assert_eq!(drafts.len(), 1);
        assert_eq!(node_diags.keys().collect::<Vec<_>>(), ["w1"]);
    }
}
