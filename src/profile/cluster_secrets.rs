//! The secrets file of each cluster: one per cluster, created on first use (unless told not to)
//! and completed when an older piimg wrote only part of the control-plane PKI.

use super::diag::{Diagnostic, Diagnostics, Location};
use super::draft::Draft;
use super::secrets::{self, ClusterSecrets};
use super::LoadOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The secrets of one cluster's members by file; files it creates or completes go to `generated`.
pub(super) fn load(
    members: &[&Draft],
    opts: &LoadOptions,
    diags: &mut Diagnostics,
    generated: &mut Vec<PathBuf>,
) -> BTreeMap<PathBuf, Arc<ClusterSecrets>> {
    let mut out = BTreeMap::new();
    for p in paths(members, diags) {
        if !p.exists() && opts.generate_secrets {
            match generate(p, opts.now) {
                Ok(Some(s)) => {
                    generated.push(p.clone());
                    out.insert(p.clone(), Arc::new(s));
                    continue;
                }
                Ok(None) => {}
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            }
        }
        if let Some(s) = load_file(p, opts, diags, generated) {
            out.insert(p.clone(), Arc::new(s));
        }
    }
    out
}

/// The files the Kubernetes and Wi-Fi members name (a Wi-Fi passphrase lives there too); more
/// than one splits the cluster's CA.
fn paths<'a>(members: &[&'a Draft], diags: &mut Diagnostics) -> BTreeSet<&'a PathBuf> {
    let paths: BTreeSet<&PathBuf> = members
        .iter()
        .filter(|d| d.role.is_kubernetes() || d.network.wifi.is_some())
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
    paths
}

/// New secrets saved at `p`; None when another piimg run created it between the look and the
/// link, so that concurrent builds of one cluster share one CA.
fn generate(p: &Path, now: i64) -> Result<Option<ClusterSecrets>, Diagnostic> {
    match ClusterSecrets::generate(now).and_then(|s| s.save_new(p).map(|_| s)) {
        Ok(s) => Ok(Some(s)),
        Err(secrets::SecretsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(None)
        }
        Err(e) => Err(Diagnostic::error(Location::file(p), "", e.to_string())),
    }
}

/// An existing file, completed and saved back when allowed, with a warning if others can read it.
fn load_file(
    p: &Path,
    opts: &LoadOptions,
    diags: &mut Diagnostics,
    generated: &mut Vec<PathBuf>,
) -> Option<ClusterSecrets> {
    let mut s = match ClusterSecrets::load(p) {
        Ok(s) => s,
        Err(ds) => {
            ds.into_iter().for_each(|d| diags.push(d));
            return None;
        }
    };
    // Files from before piimg preseeded the whole control-plane PKI get it added.
    match s.complete(opts.now) {
        Ok(true) if opts.generate_secrets => {
            if let Err(e) = s.save_replace(p) {
                diags.push(Diagnostic::error(Location::file(p), "", e.to_string()));
            } else {
                generated.push(p.to_path_buf());
            }
        }
        Ok(_) => {}
        Err(e) => diags.push(Diagnostic::error(Location::file(p), "", e.to_string())),
    }
    warn_if_readable(p, diags);
    Some(s)
}

/// The file holds the cluster's CA keys: anyone who reads it can join or impersonate nodes.
fn warn_if_readable(p: &Path, diags: &mut Diagnostics) {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, folder, k8s_node, lb_node, warnings};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cluster_names_one_secrets_file() {
        let w2 = k8s_node("w2", "worker", "192.168.50.22/24", "").replace("s.toml", "t.toml");
        let f = folder(&[
            ("lb1", &lb_node("lb1", "192.168.50.10/24", "")),
            ("w1", &k8s_node("w1", "worker", "192.168.50.21/24", "")),
            ("w2", &w2),
        ]);
        let drafts = f.drafts(&["lb1", "w1"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        let mut diags = Diagnostics::default();
        assert_eq!(paths(&members, &mut diags).len(), 1);
        assert!(diags.0.is_empty());
        let drafts = f.drafts(&["w1", "w2"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        assert_eq!(paths(&members, &mut diags).len(), 2);
        assert_eq!(
            errors(&diags),
            ["secrets: the nodes of cluster `c` name different secrets files; a cluster has one"]
        );
    }

    #[test]
    fn a_file_others_can_read_is_warned_of() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "").expect("written");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut diags = Diagnostics::default();
        warn_if_readable(&p, &mut diags);
        assert!(diags.0.is_empty());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        warn_if_readable(&p, &mut diags);
        assert_eq!(
            warnings(&diags),
            [": secrets file is readable by others (mode 640); run chmod 600"]
        );
    }

    #[test]
    fn a_missing_file_is_generated_once_and_then_loaded() {
        let f = folder(&[("w1", &k8s_node("w1", "worker", "192.168.50.21/24", ""))]);
        let drafts = f.drafts(&["w1"]);
        let members: Vec<&Draft> = drafts.iter().collect();
        let opts = LoadOptions {
            generate_secrets: true,
            build_epoch: 0,
            now: 1_767_225_600,
        };
        let (mut diags, mut generated) = (Diagnostics::default(), Vec::new());
        let first = load(&members, &opts, &mut diags, &mut generated);
        let p = f.dir.path().join("s.toml");
        assert_eq!(generated.as_slice(), std::slice::from_ref(&p));
        let again = load(&members, &opts, &mut diags, &mut generated);
        assert_eq!(generated.len(), 1);
        assert!(!diags.has_errors(), "{diags}");
        assert_eq!(first[&p].token, again[&p].token);
        assert!(matches!(generate(&p, opts.now), Ok(None)));
    }
}
