//! What each role runs: pure functions from the node config to service specs and command lines.

use crate::contract::paths;
use crate::node::{NodeConfig, Role};
use crate::supervise::{Kind, ServiceSpec};
use std::path::{Path, PathBuf};

pub const KUBEADM_YAML: &str = paths::KUBEADM_YAML;
pub const KUBEADM_DONE: &str = paths::KUBEADM_DONE;
pub const IMAGES_DONE: &str = paths::IMAGES_DONE;
pub const KEEPER_DONE: &str = paths::KEEPER_DONE;
/// Per boot (iptables rules are): /run is a tmpfs.
pub const POD_EGRESS_DONE: &str = "/run/piimg/pod-egress.done";

/// NAT for pods talking beyond the pod network (the internet, the node network), and none
/// between pods: the CNI bridge's own ipMasq would masquerade pod-to-pod traffic to other nodes,
/// which Kubernetes' network model forbids.
pub fn pod_egress_command(cfg: &NodeConfig) -> Option<Vec<String>> {
    let k = cfg.kubernetes.as_ref()?;
    let own = k.node_pod_cidr?;
    Some(
        [
            "/usr/sbin/iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &own.to_string(),
            "!",
            "-d",
            &k.pod_cidr.to_string(),
            "-m",
            "comment",
            "--comment",
            "piimg: pod egress",
            "-j",
            "MASQUERADE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
}
pub const CONTAINERD_SOCK: &str = "/run/containerd/containerd.sock";
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// Where the builder may place image archives for air-gapped nodes (both are scanned).
pub const IMAGE_DIRS: [&str; 2] = ["/var/lib/piimg/images", paths::IMAGES_DIR];
pub const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The kubeadm invocation for this node (None for roles without Kubernetes).
pub fn kubeadm_command(cfg: &NodeConfig) -> Option<Vec<String>> {
    let k = cfg.kubernetes.as_ref()?;
    if !cfg.role.is_kubernetes() {
        return None;
    }
    Some(if k.init && cfg.role == Role::ControlPlane {
        // The shared control-plane certificates are preseeded in every control-plane image:
        // nothing to upload. kubeadm init prints the token and certificate key unless told not
        // to.
        strings(&[
            "/usr/bin/kubeadm",
            "init",
            "--config",
            KUBEADM_YAML,
            "--skip-token-print",
            "--skip-certificate-key-print",
        ])
    } else {
        strings(&["/usr/bin/kubeadm", "join", "--config", KUBEADM_YAML])
    })
}

pub fn kubelet_command() -> Vec<String> {
    strings(&[
        "/usr/bin/kubelet",
        "--config",
        KUBELET_CONFIG,
        "--kubeconfig",
        "/etc/kubernetes/kubelet.conf",
        "--bootstrap-kubeconfig",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "--container-runtime-endpoint",
        "unix:///run/containerd/containerd.sock",
    ])
}

/// Debian's wpa_supplicant in the foreground (the supervisor restarts it and keeps its output)
/// on the node's Wi-Fi interface, over nl80211; None on a node without Wi-Fi.
pub fn wpa_supplicant_command(cfg: &NodeConfig) -> Option<Vec<String>> {
    cfg.network.wifi.as_ref()?;
    Some(strings(&[
        paths::WPA_SUPPLICANT,
        "-i",
        &cfg.network.interface,
        "-D",
        "nl80211",
        "-c",
        paths::WPA_SUPPLICANT_CONF,
    ]))
}

pub fn containerd_command() -> Vec<String> {
    strings(&["/usr/bin/containerd"])
}

pub fn haproxy_command() -> Vec<String> {
    strings(&[
        "/usr/sbin/haproxy",
        "-W",
        "-db",
        "-f",
        "/etc/haproxy/haproxy.cfg",
    ])
}

/// Image archives to import, sorted by path (deterministic order), from `dirs` under `root`.
pub fn image_archives(root: &Path, dirs: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let dir = root.join(d.trim_start_matches('/'));
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar") && p.is_file())
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// `ctr -n k8s.io images import FILE` for one archive (path as seen inside the node).
pub fn image_import_command(archive: &Path) -> Vec<String> {
    vec![
        "/usr/bin/ctr".into(),
        "-n".into(),
        "k8s.io".into(),
        "images".into(),
        "import".into(),
        archive.display().to_string(),
    ]
}

fn with_env(mut s: ServiceSpec) -> ServiceSpec {
    s.env.push(("PATH".into(), PATH_ENV.into()));
    s.env.push(("HOME".into(), "/root".into()));
    s
}

/// The supervised services of this node, in start order. `agent_exe` is the agent's own path
/// (the image import runs as `agent import-images`).
pub fn services(cfg: &NodeConfig, agent_exe: &str) -> Vec<ServiceSpec> {
    let mut v = Vec::new();
    // First: the node's only network may be the one it joins.
    if let Some(argv) = wpa_supplicant_command(cfg) {
        v.push(daemon("wpa_supplicant", argv, Vec::new()));
    }
    if cfg.role.is_kubernetes() {
        v.extend(kubernetes_services(cfg, agent_exe));
    }
    if cfg.role == Role::LoadBalancer {
        v.push(with_env(daemon("haproxy", haproxy_command(), Vec::new())));
    }
    if cfg.agent.debug_shell {
        v.push(with_env(debug_shell()));
    }
    v
}

/// A netbooted Kubernetes node whose secrets stayed on a card that was not adopted (missing, or
/// another node's): its root has no join token and no kubeadm.yaml, so kubeadm could only fail.
pub fn lacks_card_secrets(cfg: &NodeConfig) -> bool {
    cfg.storage.data_label.is_some()
        && cfg.role.is_kubernetes()
        && cfg.kubernetes.as_ref().is_some_and(|k| k.token.is_empty())
}

/// containerd, the image import, pod egress NAT, kubeadm, the cluster keeper and kubelet, as
/// far as this node has them (none of the last three without its secrets).
fn kubernetes_services(cfg: &NodeConfig, agent_exe: &str) -> Vec<ServiceSpec> {
    let mut v = vec![daemon("containerd", containerd_command(), Vec::new())];
    let mut images = ServiceSpec::oneshot(
        "image-import",
        vec![agent_exe.to_string(), "import-images".into()],
        Some(IMAGES_DONE.into()),
    );
    images.wait_for = vec![CONTAINERD_SOCK.into()];
    v.push(images);
    if let Some(argv) = pod_egress_command(cfg) {
        let mut nat = ServiceSpec::oneshot("pod-egress", argv, Some(POD_EGRESS_DONE.into()));
        nat.wait_for = vec![CONTAINERD_SOCK.into()];
        v.push(nat);
    }
    if lacks_card_secrets(cfg) {
        return v.into_iter().map(with_env).collect();
    }
    if kubeadm_command(cfg).is_some() {
        v.push(kubeadm_service(agent_exe));
    }
    if cfg.kubernetes.as_ref().is_some_and(|k| k.init) && cfg.role == Role::ControlPlane {
        v.push(cluster_keeper_service(agent_exe));
    }
    // kubeadm writes the kubelet config; starting earlier would only crash-loop.
    let kubelet_waits = vec![
        CONTAINERD_SOCK.into(),
        KUBELET_CONFIG.into(),
        crate::clock::SYNCED_MARKER.into(),
    ];
    v.push(daemon("kubelet", kubelet_command(), kubelet_waits));
    v.into_iter().map(with_env).collect()
}

fn daemon(name: &str, argv: Vec<String>, wait_for: Vec<PathBuf>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        argv,
        env: Vec::new(),
        kind: Kind::Daemon,
        wait_for,
        console: false,
    }
}

/// The agent runs kubeadm (crate::kubeadm): reset and PKI restore between attempts.
fn kubeadm_service(agent_exe: &str) -> ServiceSpec {
    let argv = vec![agent_exe.to_string(), "kubeadm".into()];
    let mut k = ServiceSpec::oneshot("kubeadm", argv, Some(KUBEADM_DONE.into()));
    // Certificates are checked against the clock: wait for NTP.
    k.wait_for = vec![
        CONTAINERD_SOCK.into(),
        IMAGES_DONE.into(),
        crate::clock::SYNCED_MARKER.into(),
    ];
    k
}

/// Pod subnets into the Node objects, then the bootstrap token away (keeper.rs).
fn cluster_keeper_service(agent_exe: &str) -> ServiceSpec {
    let mut k = ServiceSpec::oneshot(
        "cluster-keeper",
        vec![agent_exe.to_string(), "cluster-keeper".into()],
        Some(KEEPER_DONE.into()),
    );
    k.wait_for = vec![KUBEADM_DONE.into(), crate::keeper::ADMIN_CONF.into()];
    k
}

fn debug_shell() -> ServiceSpec {
    let mut sh = ServiceSpec::daemon("shell", &["/bin/sh"]);
    sh.console = true;
    sh.env.push(("TERM".into(), "linux".into()));
    sh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::*;

    pub(crate) fn cfg(role: Role, init: bool) -> NodeConfig {
        NodeConfig {
            schema: SCHEMA_VERSION,
            hostname: "n1".into(),
            role,
            board: Board::Rpi4b,
            network: Network {
                interface: "eth0".into(),
                address: "10.0.2.15/24".parse().unwrap(),
                gateway: None,
                dns: vec![],
                routes: vec![],
                ntp: vec![],
                wifi: None,
            },
            kubernetes: role.is_kubernetes().then(|| Kubernetes {
                token_ttl: "24h".into(),
                node_pod_cidr: None,
                cluster_nodes: Vec::new(),
                join_after: Vec::new(),
                version: "v1.31.2".into(),
                control_plane_endpoint: "10.0.2.10:6443".into(),
                pod_cidr: "10.244.0.0/16".parse().unwrap(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
                init,
                token: "abcdef.0123456789abcdef".into(),
                ca_cert_hash: format!("sha256:{}", "ab".repeat(32)),
                certificate_key: None,
                pki_dir: None,
                ignore_preflight_errors: vec![],
            }),
            load_balancer: None,
            agent: AgentSettings {
                debug_shell: false,
                status_port: 0,
                status_bind: None,
                watchdog: true,
            },
            storage: Storage::default(),
            build_epoch: 1_700_000_000,
        }
    }

    #[test]
    fn pod_egress_masquerades_only_beyond_the_pod_network() {
        let mut c = cfg(Role::Worker, false);
        assert_eq!(pod_egress_command(&c), None, "no node subnet, no rule");
        if let Some(k) = c.kubernetes.as_mut() {
            k.node_pod_cidr = Some("10.244.21.0/24".parse().unwrap());
        }
        let argv = pod_egress_command(&c).unwrap().join(" ");
        assert!(
            argv.ends_with(&format!(
                "-s 10.244.21.0/24 ! -d {} -m comment --comment piimg: pod egress -j MASQUERADE",
                c.kubernetes.as_ref().unwrap().pod_cidr
            )),
            "{argv}"
        );
        assert!(services(&c, "/sbin/init")
            .iter()
            .any(|s| s.name == "pod-egress"));
    }

    #[test]
    fn kubeadm_init_join_and_none() {
        assert_eq!(
            kubeadm_command(&cfg(Role::ControlPlane, true)).unwrap(),
            vec![
                "/usr/bin/kubeadm",
                "init",
                "--config",
                "/etc/piimg/kubeadm.yaml",
                "--skip-token-print",
                "--skip-certificate-key-print"
            ]
        );
        assert_eq!(
            kubeadm_command(&cfg(Role::ControlPlane, false)).unwrap(),
            vec![
                "/usr/bin/kubeadm",
                "join",
                "--config",
                "/etc/piimg/kubeadm.yaml"
            ]
        );
        assert_eq!(
            kubeadm_command(&cfg(Role::Worker, false)).unwrap()[1],
            "join"
        );
        // A worker never inits, even if the flag is set by mistake.
        assert_eq!(
            kubeadm_command(&cfg(Role::Worker, true)).unwrap()[1],
            "join"
        );
        assert_eq!(kubeadm_command(&cfg(Role::LoadBalancer, false)), None);
        // The command line carries no secret: the token lives in the YAML file.
        let all = kubeadm_command(&cfg(Role::ControlPlane, true))
            .unwrap()
            .join(" ");
        assert!(!all.contains("abcdef"));
    }

    #[test]
    fn services_per_role() {
        let names = |c: &NodeConfig| {
            services(c, "/sbin/init")
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&cfg(Role::Worker, false)),
            vec!["containerd", "image-import", "kubeadm", "kubelet"]
        );
        assert_eq!(names(&cfg(Role::LoadBalancer, false)), vec!["haproxy"]);
        let mut c = cfg(Role::LoadBalancer, false);
        c.agent.debug_shell = true;
        let s = services(&c, "/sbin/init");
        assert_eq!(s[1].name, "shell");
        assert!(s[1].console);
        let w = services(&cfg(Role::Worker, false), "/sbin/init");
        assert_eq!(w[3].argv, kubelet_command());
        assert_eq!(w[1].argv, vec!["/sbin/init", "import-images"]);
        assert!(
            matches!(&w[2].kind, Kind::Oneshot { done_file: Some(p) } if p == Path::new(KUBEADM_DONE))
        );
    }

    #[test]
    fn a_wifi_node_runs_wpa_supplicant_on_its_interface_before_anything_else() {
        let mut c = cfg(Role::Worker, false);
        assert_eq!(wpa_supplicant_command(&c), None);
        c.network.interface = "wlan0".into();
        c.network.wifi = Some(Wifi {
            ssid: "lab".into(),
            country: "DE".into(),
        });
        let s = services(&c, "/sbin/init");
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "wpa_supplicant",
                "containerd",
                "image-import",
                "kubeadm",
                "kubelet"
            ]
        );
        assert_eq!(
            s[0].argv,
            [
                "/usr/sbin/wpa_supplicant",
                "-i",
                "wlan0",
                "-D",
                "nl80211",
                "-c",
                "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
            ]
        );
        assert_eq!(s[0].kind, Kind::Daemon);
        assert!(s[0].wait_for.is_empty());
        let mut lb = cfg(Role::LoadBalancer, false);
        lb.network.wifi = c.network.wifi.clone();
        assert_eq!(services(&lb, "/sbin/init")[0].name, "wpa_supplicant");
    }

    #[test]
    fn a_netbooted_kubernetes_node_without_its_card_secrets_runs_no_kubeadm_or_kubelet() {
        let names = |c: &NodeConfig| {
            services(c, "/sbin/init")
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        };
        let mut c = cfg(Role::ControlPlane, true);
        c.storage.data_label = Some("piimg-data".into());
        c.agent.debug_shell = true;
        assert!(!lacks_card_secrets(&c));
        assert_eq!(
            names(&c),
            vec![
                "containerd",
                "image-import",
                "kubeadm",
                "cluster-keeper",
                "kubelet",
                "shell"
            ]
        );
        let public = c.public();
        assert!(lacks_card_secrets(&public));
        assert_eq!(names(&public), vec!["containerd", "image-import", "shell"]);
        // Booted from its own card (no data_label) or with its secrets served: as always.
        let mut own_card = public.clone();
        own_card.storage.data_label = None;
        assert!(!lacks_card_secrets(&own_card));
        let mut lb = cfg(Role::LoadBalancer, false);
        lb.storage.data_label = Some("piimg-data".into());
        assert!(!lacks_card_secrets(&lb));
    }

    #[test]
    fn archives_sorted_tar_only() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("var/lib/piimg/images");
        let b = t.path().join("usr/share/piimg/images");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for f in ["z.tar", "a.tar", "notes.txt"] {
            std::fs::write(a.join(f), b"x").unwrap();
        }
        std::fs::write(b.join("pause.tar"), b"x").unwrap();
        let got = image_archives(t.path(), &IMAGE_DIRS);
        assert_eq!(
            got,
            vec![a.join("a.tar"), a.join("z.tar"), b.join("pause.tar")]
        );
        assert_eq!(
            image_import_command(Path::new("/x/a.tar")),
            vec![
                "/usr/bin/ctr",
                "-n",
                "k8s.io",
                "images",
                "import",
                "/x/a.tar"
            ]
        );
    }
}
