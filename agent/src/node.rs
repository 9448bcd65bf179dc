//! The node configuration: what the builder resolved from the profiles and what the agent reads at
//! boot. It is written as JSON to [`NODE_CONFIG_PATH`] in the root filesystem (mode 0600: it holds
//! join secrets). The builder validates everything; the agent re-checks only what it relies on.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Where the builder puts the node configuration inside the root filesystem.
pub const NODE_CONFIG_PATH: &str = crate::contract::paths::NODE_CONFIG;
/// Version of this schema; bumped on incompatible changes so an old agent refuses a new config.
pub const SCHEMA_VERSION: u32 = 1;
/// What `redacted()` puts in place of a secret.
pub const REDACTED: &str = "<redacted>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
    LoadBalancer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::ControlPlane, Role::Worker, Role::LoadBalancer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::LoadBalancer => "load-balancer",
        }
    }

    /// Whether the node runs containerd + kubelet.
    pub fn is_kubernetes(self) -> bool {
        matches!(self, Role::ControlPlane | Role::Worker)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Board {
    Rpi3b,
    Rpi3bplus,
    Zero2w,
    Rpi4b,
    Cm4,
}

impl Board {
    pub const ALL: [Board; 5] = [
        Board::Rpi3b,
        Board::Rpi3bplus,
        Board::Zero2w,
        Board::Rpi4b,
        Board::Cm4,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Board::Rpi3b => "rpi3b",
            Board::Rpi3bplus => "rpi3bplus",
            Board::Zero2w => "zero2w",
            Board::Rpi4b => "rpi4b",
            Board::Cm4 => "cm4",
        }
    }

    /// Pi 3 and Zero 2 boot ROMs read only an MBR partition table; Pi 4/CM4 also read GPT.
    pub fn needs_mbr(self) -> bool {
        matches!(self, Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w)
    }

    /// Upstream (kernel) device tree name, as shipped by Debian's kernel package.
    pub fn dtb(self) -> &'static str {
        match self {
            Board::Rpi3b => "bcm2837-rpi-3-b.dtb",
            Board::Rpi3bplus => "bcm2837-rpi-3-b-plus.dtb",
            Board::Zero2w => "bcm2837-rpi-zero-2-w.dtb",
            Board::Rpi4b => "bcm2711-rpi-4-b.dtb",
            Board::Cm4 => "bcm2711-rpi-cm4-io.dtb",
        }
    }
}

impl std::fmt::Display for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub schema: u32,
    pub hostname: String,
    pub role: Role,
    pub board: Board,
    pub network: Network,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    pub agent: AgentSettings,
    /// Which partitions the agent mounts (absent in old configs: the agent then skips /var).
    #[serde(default)]
    pub storage: Storage,
    /// Build time (SOURCE_DATE_EPOCH, seconds): the agent never sets the clock earlier than this.
    pub build_epoch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub interface: String,
    /// The node's static address with its prefix length.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub ntp: Vec<String>,
    /// The interface is a Wi-Fi one: the agent runs wpa_supplicant on it (the passphrase is only
    /// in [`crate::contract::paths::WPA_SUPPLICANT_CONF`], mode 0600, never here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wifi: Option<Wifi>,
}

/// The network a Wi-Fi node joins, as far as it is no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    pub ssid: String,
    /// ISO 3166-1 alpha-2: the regulatory domain (channels, power) the radio may use.
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: IpNet,
    pub via: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Kubernetes release, e.g. "v1.31.2".
    pub version: String,
    /// host:port of the API endpoint every node talks to (normally the load balancer).
    pub control_plane_endpoint: String,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    /// This node runs `kubeadm init`; every other control-plane node joins with `--control-plane`.
    pub init: bool,
    /// Bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}` (secret).
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo (public).
    pub ca_cert_hash: String,
    /// This node's share of the pod network: its CNI bridge hands out addresses from it, and
    /// every other node routes it to this node's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pod_cidr: Option<IpNet>,
    /// The init node only: every Kubernetes node of the cluster with its pod subnet, which the
    /// cluster keeper records in the Node objects before it deletes the bootstrap token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_nodes: Vec<ClusterNode>,
    /// Joining control-plane nodes only: the API servers (address:port) of the control-plane
    /// nodes that come before this one (the init node, then the others by hostname). The join
    /// waits until each answers /readyz, so etcd gets one new member (one learner) at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join_after: Vec<std::net::SocketAddr>,
    /// Lifetime of the bootstrap token, a Go duration (`24h`): a leaked token stops working.
    #[serde(default = "default_token_ttl")]
    pub token_ttl: String,
    /// Key that encrypts the uploaded control-plane certificates, 64 hex (secret; control plane only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<String>,
    /// Where the cluster CA certificate and key are in the rootfs (control plane only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_dir: Option<String>,
    /// kubeadm preflight checks whose errors are warnings (nodeRegistration.ignorePreflightErrors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_preflight_errors: Vec<String>,
}

/// A preseeded node as the init node's keeper knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// The Node object's name (the hostname).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<IpNet>,
}

/// The bootstrap token's lifetime when a profile names none.
pub const DEFAULT_TOKEN_TTL: &str = "24h";

fn default_token_ttl() -> String {
    DEFAULT_TOKEN_TTL.to_string()
}

impl Kubernetes {
    /// The pause (sandbox) image tag kubeadm of this minor release pulls and expects containerd
    /// to use (kubeadm's constants.PauseVersion); `None` for releases piimg does not know.
    pub fn pause_version(&self) -> Option<&'static str> {
        pause_version(&self.version)
    }
}

/// See [`Kubernetes::pause_version`]: `v1.31.4` -> `3.10`.
pub fn pause_version(version: &str) -> Option<&'static str> {
    let minor: u32 = version
        .strip_prefix("v1.")?
        .split('.')
        .next()?
        .parse()
        .ok()?;
    match minor {
        28..=30 => Some("3.9"),
        31..=33 => Some("3.10"),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// Frontend bind address and port.
    pub bind: SocketAddr,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
}

/// Partition identities as the kernel reports them (`PARTUUID=`): MBR `xxxxxxxx-NN`, GPT a GUID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The root filesystem partition (also given to the kernel as `root=PARTUUID=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_partuuid: Option<String>,
    /// The data partition (ext4, label "piimg-data") mounted on /var and grown on first boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_partuuid: Option<String>,
    /// Netboot (no data_partuuid): the ext4 label of a local card's data filesystem to mount on
    /// /var when one is present; else /var is a tmpfs, and the agent says so on the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_label: Option<String>,
}

/// Netboot: what stage 1 needs to fetch the node's root image (written into the node's
/// initramfs; the URL comes from the kernel command line's `piimg.root=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRoot {
    /// sha256 of the root image, lowercase hex: stage 1 mounts nothing else.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
    /// Filesystem type of the image (`squashfs`), mounted read-only under a tmpfs overlay.
    pub fstype: String,
    /// The interface stage 1 brings up, with the node's static address and gateway.
    pub interface: String,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// A busybox shell on the serial console (off by default; `piimg check` warns when on).
    #[serde(default)]
    pub debug_shell: bool,
    /// TCP port of the read-only status endpoint (0 = off).
    pub status_port: u16,
    /// Address the status endpoint listens on; none: the node's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_bind: Option<std::net::IpAddr>,
    /// PID 1 pets the hardware watchdog (/dev/watchdog).
    #[serde(default = "yes")]
    pub watchdog: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("node config: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("node config: schema {found} is not supported by this agent (expects {expected})")]
    Schema { found: u32, expected: u32 },
}

impl NodeConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = serde_json::from_slice(bytes)?;
        if cfg.schema != SCHEMA_VERSION {
            return Err(ConfigError::Schema {
                found: cfg.schema,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(cfg)
    }

    /// Canonical JSON (struct field order, no maps): the same config always gives the same bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Whether any field holds a secret (decides the file mode the builder uses).
    pub fn has_secrets(&self) -> bool {
        self.kubernetes.is_some()
    }

    /// The secret strings of this node, as they could appear in a service's output: the join
    /// token, its secret half and the certificate key. The agent redacts them.
    pub fn secret_strings(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(k) = &self.kubernetes {
            v.push(k.token.clone());
            if let Some((_, secret)) = k.token.split_once('.') {
                v.push(secret.to_string());
            }
            v.extend(k.certificate_key.clone());
        }
        v.retain(|s| s.len() >= 6 && s != REDACTED);
        v
    }

    /// A copy without the secret fields (those of [`NodeConfig::secret_strings`]) at all, as a
    /// netbooted node's root image holds it when its secrets are on its card: a card's config
    /// is this node's when both compare equal this way.
    pub fn public(&self) -> NodeConfig {
        let mut c = self.clone();
        if let Some(k) = c.kubernetes.as_mut() {
            k.token = String::new();
            k.certificate_key = None;
        }
        c
    }

    /// A copy safe to print or put in a manifest: join token and certificate key replaced.
    pub fn redacted(&self) -> NodeConfig {
        let mut c = self.clone();
        if let Some(k) = c.kubernetes.as_mut() {
            k.token = REDACTED.to_string();
            if k.certificate_key.is_some() {
                k.certificate_key = Some(REDACTED.to_string());
            }
        }
        c
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A worker's config: the fixture other modules' tests start from.
    pub(crate) fn sample() -> NodeConfig {
        NodeConfig {
            schema: SCHEMA_VERSION,
            hostname: "w1".into(),
            role: Role::Worker,
            board: Board::Rpi4b,
            network: Network {
                interface: "eth0".into(),
                address: "10.0.2.15/24".parse().unwrap(),
                gateway: Some("10.0.2.2".parse().unwrap()),
                dns: vec!["10.0.2.3".parse().unwrap()],
                routes: vec![],
                ntp: vec![],
                wifi: None,
            },
            kubernetes: Some(Kubernetes {
                token_ttl: "24h".into(),
                node_pod_cidr: None,
                cluster_nodes: Vec::new(),
                join_after: Vec::new(),
                version: "v1.31.2".into(),
                control_plane_endpoint: "10.0.2.2:6443".into(),
                pod_cidr: "10.244.0.0/16".parse().unwrap(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
                init: false,
                token: "abcdef.0123456789abcdef".into(),
                ca_cert_hash: format!("sha256:{}", "ab".repeat(32)),
                certificate_key: None,
                pki_dir: None,
                ignore_preflight_errors: vec![],
            }),
            load_balancer: None,
            agent: AgentSettings {
                debug_shell: false,
                status_port: 9100,
                status_bind: None,
                watchdog: true,
            },
            storage: Storage {
                root_partuuid: Some("0badc0de-02".into()),
                data_partuuid: Some("0badc0de-03".into()),
                data_label: None,
            },
            build_epoch: 1_700_000_000,
        }
    }

    #[test]
    fn json_round_trip() {
        let c = sample();
        let back = NodeConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn redaction_removes_token() {
        let c = sample().redacted();
        let text = String::from_utf8(c.to_json()).unwrap();
        assert!(!text.contains("abcdef.0123456789abcdef"));
        assert!(text.contains(REDACTED));
    }

    #[test]
    fn the_public_part_leaves_out_exactly_the_secret_strings() {
        let mut c = sample();
        c.kubernetes.as_mut().unwrap().certificate_key = Some("c0ffee".repeat(8));
        let public = c.public();
        assert!(public.secret_strings().is_empty());
        let text = String::from_utf8(public.to_json()).unwrap();
        for s in c.secret_strings() {
            assert!(!text.contains(&s), "{s} in {text}");
        }
        let mut other = c.clone();
        other.kubernetes.as_mut().unwrap().token = "zyxwvu.0123456789abcdef".into();
        assert_eq!(other.public(), public);
        other.hostname = "w2".into();
        assert_ne!(other.public(), public);
    }

    #[test]
    fn unknown_schema_refused() {
        let mut c = sample();
        c.schema = 99;
        let err = NodeConfig::from_json(&c.to_json()).unwrap_err();
        assert!(err.to_string().contains("schema 99"));
    }

    #[test]
    fn storage_is_optional() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v.as_object_mut().unwrap().remove("storage");
        let c = NodeConfig::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.storage, Storage::default());
    }

    #[test]
    fn unknown_field_refused() {
        let text = String::from_utf8(sample().to_json()).unwrap().replacen(
            "\"schema\"",
            "\"bogus\": 1, \"schema\"",
            1,
        );
        assert!(NodeConfig::from_json(text.as_bytes()).is_err());
    }
}
