//! Shared harness for the profile modules' unit tests: a checking context without files, and
//! drafts made from profile texts written to a temporary folder.

use super::diag::{Diagnostics, Severity};
use super::draft::{self, Draft};
use super::fields::Ctx;
use super::source::{self, Origins, SourceFile};
use std::collections::BTreeMap;
use std::path::Path;

/// Runs `f` with a context for a profile `p.toml` whose fields have no recorded lines.
pub fn check<T>(f: impl FnOnce(&mut Ctx) -> T) -> (T, Diagnostics) {
    let mut diags = Diagnostics::default();
    let origins = Origins::default();
    let mut ctx = Ctx {
        diags: &mut diags,
        origins: &origins,
        path: Path::new("p.toml"),
        chain: &[],
    };
    let out = f(&mut ctx);
    (out, diags)
}

/// Each error as `field: message`.
pub fn errors(diags: &Diagnostics) -> Vec<String> {
    lines(diags, Severity::Error)
}

/// Each warning as `field: message`.
pub fn warnings(diags: &Diagnostics) -> Vec<String> {
    lines(diags, Severity::Warning)
}

fn lines(diags: &Diagnostics, severity: Severity) -> Vec<String> {
    diags
        .0
        .iter()
        .filter(|d| d.severity == severity)
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect()
}

/// Profile files (name, text) written to a temporary folder and read back.
pub struct Folder {
    pub dir: tempfile::TempDir,
    pub files: BTreeMap<String, SourceFile>,
}

pub fn folder(profiles: &[(&str, &str)]) -> Folder {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut files = BTreeMap::new();
    for (name, text) in profiles {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("profile written");
        let f = source::read_file(&path).expect("profile parses");
        files.insert(name.to_string(), f);
    }
    Folder { dir, files }
}

impl Folder {
    /// The draft of node `name`, and what checking it reported.
    pub fn draft(&self, name: &str) -> (Option<Draft>, Diagnostics) {
        let mut diags = Diagnostics::default();
        let m = source::resolve(name, &self.files, &mut diags).expect("profile resolves");
        (draft::draft(&m, &mut diags), diags)
    }

    /// The drafts of `names`, each of which must check clean.
    pub fn drafts(&self, names: &[&str]) -> Vec<Draft> {
        names
            .iter()
            .map(|n| {
                let (d, diags) = self.draft(n);
                assert!(!diags.has_errors(), "{n}: {diags}");
                d.expect("a draft")
            })
            .collect()
    }
}

/// A profile of cluster `c` with one Kubernetes node's settings.
pub fn k8s_node(host: &str, role: &str, address: &str, extra: &str) -> String {
    format!(
        "cluster = \"c\"\nsecrets = \"s.toml\"\nhostname = \"{host}\"\nboard = \"rpi4b\"\nrole = \"{role}\"\n\
         [network]\naddress = \"{address}\"\nntp = [\"pool.ntp.org\"]\n\
         [kubernetes]\nversion = \"v1.31.4\"\ncontrol_plane_endpoint = \"192.168.50.10:6443\"\n{extra}\n"
    )
}

/// A load-balancer profile of cluster `c`.
pub fn lb_node(host: &str, address: &str, extra: &str) -> String {
    format!(
        "cluster = \"c\"\nhostname = \"{host}\"\nboard = \"rpi3b\"\nrole = \"load-balancer\"\n\
         [network]\naddress = \"{address}\"\n{extra}\n"
    )
}
