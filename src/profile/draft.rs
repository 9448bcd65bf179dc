//! One node's profile checked on its own, section by section, before the cross-node checks: every
//! problem in it is reported in one pass, and a profile with any error yields no draft.

use super::diag::{Diagnostic, Diagnostics, Location};
use super::fields::Ctx;
use super::schema::ProfileSpec;
use super::source::{Merged, Origins};
use super::{
    image, kubernetes, load_balancer, netboot, network, node, ImageSettings, NetbootSettings,
    DEFAULT_CLUSTER,
};
use ipnet::IpNet;
use piimg_agent::node::{Backend, Board, Network, Role};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A node being resolved, before cross-node checks.
pub(super) struct Draft {
    pub name: String,
    pub path: PathBuf,
    pub sources: Vec<PathBuf>,
    pub origins: Origins,
    pub spec: ProfileSpec,
    pub cluster: String,
    pub role: Role,
    pub board: Board,
    pub hostname: String,
    pub network: Network,
    pub k8s: Option<KDraft>,
    pub lb: LbDraft,
    pub image: ImageSettings,
    pub components: BTreeMap<String, PathBuf>,
    pub secrets_path: Option<PathBuf>,
    pub netboot: NetbootSettings,
}

impl Draft {
    /// The line that set `field` in this node's chain, or the node's profile.
    pub fn at(&self, field: &str) -> Location {
        self.origins
            .locate(field)
            .cloned()
            .unwrap_or_else(|| Location::file(&self.path))
    }
}

pub(super) struct KDraft {
    pub version: String,
    pub endpoint: String,
    pub endpoint_host: String,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    /// This node's /24 (or the profile's choice) of the pod network.
    pub node_pod_cidr: Option<IpNet>,
    pub init: bool,
    pub discovery_ca_hash: Option<String>,
    pub token_ttl: String,
    /// kubeadm's nodeRegistration.ignorePreflightErrors.
    pub ignore_preflight_errors: Vec<String>,
}

/// `[load_balancer]` as far as one profile decides it (derived backends need the cluster).
pub(super) struct LbDraft {
    pub bind: Option<SocketAddr>,
    pub backends: Option<Vec<Backend>>,
    pub backend_port: u16,
}

/// Checks one merged profile; errors and warnings go to `diags`, in the order of its sections.
pub(super) fn draft(m: &Merged, diags: &mut Diagnostics) -> Option<Draft> {
    let spec = parse_spec(m, diags)?;
    let mut ctx = Ctx {
        diags,
        origins: &m.origins,
        path: &m.path,
        chain: &m.chain,
    };
    let before = ctx.diags.errors().count();
    let cluster = spec
        .cluster
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    let (role, board, hostname) = node::check(&mut ctx, &spec)?;
    let (network, address) = network::check(&mut ctx, &spec.network, role, board);
    let k8s = kubernetes::check(&mut ctx, &spec, role, address);
    let lb = load_balancer::check(&mut ctx, spec.load_balancer.as_ref(), role);
    let image = image::check(&mut ctx, &spec.image);
    let netboot = netboot::check(&mut ctx, &spec.netboot, board, network.wifi.is_some());
    let components = components(&ctx, &spec);
    let secrets_path = secrets_path(&mut ctx, &spec, role);
    check_agent(&mut ctx, &spec);
    if ctx.diags.errors().count() > before {
        return None;
    }
    Some(Draft {
        name: m.name.clone(),
        path: m.path.clone(),
        sources: m.chain.clone(),
        origins: m.origins.clone(),
        spec,
        cluster,
        role,
        board,
        hostname,
        network,
        k8s,
        lb,
        image,
        components,
        secrets_path,
        netboot,
    })
}

/// The merged table as a [`ProfileSpec`]; a type error or unknown key points at its own line.
fn parse_spec(m: &Merged, diags: &mut Diagnostics) -> Option<ProfileSpec> {
    let e = match serde_path_to_error::deserialize(toml::Value::Table(m.table.clone())) {
        Ok(s) => return Some(s),
        Err(e) => e,
    };
    let msg = e.inner().to_string();
    let field = error_field(e.path(), &msg);
    let loc = m
        .origins
        .locate(&field)
        .cloned()
        .unwrap_or_else(|| Location::file(&m.path));
    diags.push(Diagnostic::error(loc, &field, msg.trim().to_string()));
    None
}

/// The dotted field a serde error is about.
fn error_field(path: &serde_path_to_error::Path, msg: &str) -> String {
    let mut field = String::new();
    for seg in path.iter() {
        let part = match seg {
            serde_path_to_error::Segment::Seq { index } => index.to_string(),
            serde_path_to_error::Segment::Map { key } => key.clone(),
            serde_path_to_error::Segment::Enum { variant } => variant.clone(),
            serde_path_to_error::Segment::Unknown => continue,
        };
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(&part);
    }
    // serde names an unknown key in the message but not in the path: add it so the error points
    // at the key's own line.
    if let Some(k) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        if !field.ends_with(k) {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(k);
        }
    }
    field
}

/// Component files are relative to the profile that names them, as their author wrote them.
fn components(ctx: &Ctx, spec: &ProfileSpec) -> BTreeMap<String, PathBuf> {
    spec.components
        .iter()
        .map(|(k, v)| (k.clone(), ctx.rel(&format!("components.{k}"), v)))
        .collect()
}

/// Kubernetes nodes share their cluster's token and CAs through this file.
fn secrets_path(ctx: &mut Ctx, spec: &ProfileSpec, role: Role) -> Option<PathBuf> {
    let secrets_path = spec.secrets.as_deref().map(|s| ctx.rel("secrets", s));
    if role.is_kubernetes() && secrets_path.is_none() {
        ctx.missing(
            "secrets",
            "secrets (path of the cluster secrets file, e.g. \"../secrets/cluster.toml\")",
        );
    }
    secrets_path
}

/// `[agent]` is free-form but a debug shell is worth a reminder before it ships.
fn check_agent(ctx: &mut Ctx, spec: &ProfileSpec) {
    if spec.agent.debug_shell == Some(true) {
        ctx.warn(
            "agent.debug_shell",
            "debug shell is on: anyone at the serial console gets a root shell",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{folder, k8s_node, lb_node, warnings};

    #[test]
    fn a_complete_profile_becomes_a_draft_with_paths_relative_to_its_file() {
        let text = k8s_node("w1", "worker", "192.168.50.21/24", "")
            + "[components]\nkubelet = \"bin/../kubelet\"\n[agent]\ndebug_shell = true\n";
        let f = folder(&[("w1", &text)]);
        let (d, diags) = f.draft("w1");
        let d = d.expect("a draft");
        assert_eq!(d.cluster, "c");
        assert_eq!(d.secrets_path, Some(f.dir.path().join("s.toml")));
        assert_eq!(d.components["kubelet"], f.dir.path().join("kubelet"));
        assert_eq!(
            warnings(&diags),
            ["agent.debug_shell: debug shell is on: anyone at the serial console gets a root shell"]
        );
    }

    #[test]
    fn an_unknown_key_is_reported_at_its_own_line() {
        let f = folder(&[("lb1", &lb_node("lb1", "192.168.50.10/24", "adress = \"x\""))]);
        let (d, diags) = f.draft("lb1");
        assert!(d.is_none());
        let e = &diags.0[0];
        assert_eq!(e.field, "network.adress");
        assert_eq!(e.location.line, Some(7));
        assert!(
            e.message.starts_with("unknown field `adress`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_type_error_names_the_nested_field() {
        let f = folder(&[("lb1", &lb_node("lb1", "192.168.50.10/24", "dns = [1]"))]);
        let (_, diags) = f.draft("lb1");
        assert_eq!(diags.0[0].field, "network.dns.0");
    }

    #[test]
    fn kubernetes_nodes_name_a_secrets_file() {
        let text =
            k8s_node("w1", "worker", "192.168.50.21/24", "").replace("secrets = \"s.toml\"\n", "");
        let f = folder(&[("w1", &text)]);
        let (d, diags) = f.draft("w1");
        assert!(d.is_none());
        assert_eq!(diags.0[0].field, "secrets");
        assert!(diags.0[0].message.starts_with("missing: secrets (path"));
    }
}
