//! The user-facing profile format: what a `profiles/NAME.toml` may contain after `extends` has been
//! merged. Unknown fields are errors.

use piimg_agent::node::{Board, Role};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Name of a profile in the same folder whose settings this one extends (merged first).
    #[serde(default)]
    pub extends: Option<String>,
    /// Marks a profile that only carries shared settings (not a node), e.g. `cluster.toml`.
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    /// Cluster this node belongs to; cross-node checks run per cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Secrets file, relative to the profile that sets it (generated when missing).
    #[serde(default)]
    pub secrets: Option<String>,
    pub hostname: Option<String>,
    pub board: Option<Board>,
    pub role: Option<Role>,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub kubernetes: Option<KubernetesSpec>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub image: ImageSpec,
    #[serde(default)]
    pub agent: AgentSpec,
    #[serde(default)]
    pub netboot: NetbootSpec,
    /// Local files that replace a component (name -> path, relative to the profile).
    #[serde(default)]
    pub components: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub interface: Option<String>,
    pub address: Option<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub ntp: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The node's network is a USB Ethernet adapter (how a Zero 2 W without Wi-Fi says so).
    pub usb_ethernet: Option<bool>,
    /// `[network.wifi]`: join this network on wlan0 (the passphrase is in the secrets file).
    pub wifi: Option<WifiSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WifiSpec {
    pub ssid: Option<String>,
    /// ISO 3166-1 alpha-2 code: the regulatory domain.
    pub country: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub to: String,
    pub via: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    pub version: Option<String>,
    pub control_plane_endpoint: Option<String>,
    pub pod_cidr: Option<String>,
    pub service_cidr: Option<String>,
    /// This control-plane node runs `kubeadm init` (exactly one per cluster).
    #[serde(default)]
    pub init: bool,
    /// Discovery hash of a CA piimg did not generate (joining an existing cluster).
    pub discovery_ca_hash: Option<String>,
    /// Lifetime of the bootstrap token, a Go duration such as "24h" (default 24h).
    pub token_ttl: Option<String>,
    /// This node's share of the pod network (default: the /24 of pod_cidr numbered by the
    /// node's host number in its subnet).
    pub node_pod_cidr: Option<String>,
    /// kubeadm preflight checks whose errors become warnings (its
    /// nodeRegistration.ignorePreflightErrors), e.g. ["Mem"] for a 1 GiB control plane in QEMU.
    pub ignore_preflight_errors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// Frontend bind address:port (default 0.0.0.0:6443).
    pub bind: Option<String>,
    /// API server backends as host:port; default: every control-plane node of the cluster.
    pub backends: Option<Vec<String>>,
    /// Port of the API servers when backends are derived (default 6443).
    pub backend_port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Whole image size, a power of two (e.g. "2GiB").
    pub size: Option<String>,
    /// FAT boot partition size (default 128MiB).
    pub boot_size: Option<String>,
    /// ext4 data partition for /var (default 256MiB; the agent grows it to fill the card).
    pub data_size: Option<String>,
    /// Debian suite the components come from (default trixie).
    pub suite: Option<String>,
    /// Debian mirror URI (default: the host's apt sources).
    pub mirror: Option<String>,
    /// Debian security archive URI (default: the host's apt sources; required with `mirror`).
    pub security_mirror: Option<String>,
    /// Suites resolved besides `suite` itself: `updates`, `security` (default both).
    pub archives: Option<Vec<String>>,
    /// Timestamp of Debian's snapshot archive (`20251120T000000Z`) to fetch locked files from
    /// when the mirror's pool no longer has them.
    pub snapshot: Option<String>,
    /// Base URI of the snapshot archive (the service under which `archive/debian/<timestamp>/`
    /// lives); required with `snapshot`.
    pub snapshot_mirror: Option<String>,
    /// OpenPGP keyring that verifies the archives' Release files (default: the host's Debian
    /// archive keyring).
    pub keyring: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Busybox shell on the serial console (default off).
    #[serde(default)]
    pub debug_shell: Option<bool>,
    /// Port of the read-only HTTP status endpoint (default 7780, 0 = off).
    pub status_port: Option<u16>,
    /// Address it listens on (default: the node's own address; `0.0.0.0` for every one).
    pub status_bind: Option<std::net::IpAddr>,
    /// PID 1 pets the hardware watchdog (default on).
    pub watchdog: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetbootSpec {
    /// Board serial, 8 hex digits: the folder the Pi 3 ROM and (by default) the Pi 4 read.
    pub serial: Option<String>,
    /// MAC address: the folder a Pi 4 reads with TFTP_PREFIX=2.
    pub mac: Option<String>,
    /// `http://ADDRESS:PORT` of `piimg serve`: the initramfs fetches the root image from here.
    pub server: Option<String>,
    /// `card` (default): secrets stay off the netboot tree, on a local card; `serve`: in the
    /// root image, readable by anyone on the LAN.
    pub secrets: Option<super::netboot::SecretsPolicy>,
}
