//! What turns one assembled node into its netboot form: the root as a squashfs image fetched over
//! HTTP, the initramfs told where it is and what its sha256 must be, and the node's secrets kept
//! off the LAN on a small local card unless the profile says to serve them.
//!
//! What a LAN attacker can read from a netboot tree (TFTP and HTTP are clear text and
//! unauthenticated): firmware, kernel, device tree, the initramfs (the agent, modules, the node's
//! address) and the root image (packages, configs, node.json without secrets). With
//! `netboot.secrets = "serve"` the root image also holds the join token, certificate key and, on
//! control-plane nodes, the cluster CA keys: whoever fetches it can join or impersonate the
//! cluster.

use crate::assemble::node::Assembled;
use crate::tree::{FileData, InodeKind, Meta, Tree};
use piimg_agent::contract::paths::{self, in_tree};
use piimg_agent::node::{NetRoot, NodeConfig};

/// The root image's name in the node's folder.
pub const ROOT_IMAGE: &str = "root.squashfs";

#[derive(Debug, thiserror::Error)]
pub enum NetbootNodeError {
    #[error("building the netboot trees: {0}")]
    Tree(#[from] crate::tree::TreeError),
    #[error("{0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("netroot.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// The URL the node's initramfs fetches its root from.
pub fn root_url(server: std::net::SocketAddr, folder: &str) -> String {
    format!("http://{server}/{folder}/{ROOT_IMAGE}")
}

/// `cfg` for a netbooted node: no partitions of its own; /var on a local card's data filesystem
/// when one is present.
pub fn netboot_config(cfg: &NodeConfig) -> NodeConfig {
    let mut c = cfg.clone();
    c.storage.root_partuuid = None;
    c.storage.data_partuuid = None;
    c.storage.data_label = Some(crate::image::DATA_LABEL.to_string());
    c
}

/// Moves every secret file of the root into a data tree for the node's local card, at its root
/// path below [`paths::CARD_SECRETS`], and leaves in the root a node.json without the secret
/// strings (stage 2 reads it before /var is mounted, then the card's copy replaces it).
pub fn secrets_to_card(
    asm: &mut Assembled,
    cfg: &NodeConfig,
    epoch: i64,
) -> Result<Tree, NetbootNodeError> {
    let mut card = asm.data.clone();
    let below = in_tree(paths::CARD_SECRETS)
        .strip_prefix("var/")
        .unwrap_or(in_tree(paths::CARD_SECRETS))
        .to_string();
    for p in std::mem::take(&mut asm.secret_paths) {
        let Some(id) = asm.root.lookup(&p) else {
            continue;
        };
        let inode = asm.root.inode(id).clone();
        let InodeKind::File(data) = inode.kind else {
            continue;
        };
        let dest = format!("{below}/{p}");
        if let Some((dir, _)) = dest.rsplit_once('/') {
            card.mkdir_p(dir, Meta::root(0o700, inode.meta.mtime))?;
        }
        card.add_file(&dest, Meta::root(0o600, inode.meta.mtime), data)?;
        asm.root.remove(&p)?;
    }
    let node_json = in_tree(paths::NODE_CONFIG);
    if asm.root.lookup(node_json).is_none() {
        // The agent compares the card's node.json with this one through the same
        // NodeConfig::public: it adopts only its own node's card.
        let public = cfg.public();
        asm.root.add_file(
            node_json,
            Meta::root(0o644, epoch),
            FileData::from_bytes(public.to_json()),
        )?;
    }
    Ok(card)
}

/// The initramfs learns the root image's hash and length, and the address to fetch it from.
pub fn add_netroot(
    initramfs: &mut Tree,
    cfg: &NodeConfig,
    sha256: &str,
    size: u64,
    epoch: i64,
) -> Result<(), NetbootNodeError> {
    let n = NetRoot {
        sha256: sha256.to_string(),
        size,
        fstype: "squashfs".into(),
        interface: cfg.network.interface.clone(),
        address: cfg.network.address,
        gateway: cfg.network.gateway,
    };
    let mut json = serde_json::to_vec_pretty(&n)?;
    json.push(b'\n');
    let path = in_tree(paths::NETROOT);
    if let Some((dir, _)) = path.rsplit_once('/') {
        initramfs.mkdir_p(dir, Meta::root(0o755, epoch))?;
    }
    initramfs.add_file(path, Meta::root(0o644, epoch), FileData::from_bytes(json))?;
    Ok(())
}

/// The boot tree's files by name (it is flat: firmware, config.txt, cmdline.txt, kernel, dtb).
pub fn boot_files(boot: &Tree) -> Vec<(String, FileData)> {
    boot.walk()
        .into_iter()
        .filter_map(|(path, id)| match &boot.inode(id).kind {
            InodeKind::File(d) => Some((String::from_utf8_lossy(&path).into_owned(), d.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use piimg_agent::node::NodeConfig;

    #[test]
    fn secrets_leave_the_root_for_the_card_and_a_public_node_json_stays() {
        let cfg = NodeConfig::from_json(
            br#"{"schema":1,"hostname":"w1","role":"worker","board":"rpi4b",
            "network":{"interface":"eth0","address":"10.0.2.15/24"},
            "kubernetes":{"version":"v1.31.4","control_plane_endpoint":"10.0.2.10:6443",
              "pod_cidr":"10.244.0.0/16","service_cidr":"10.96.0.0/12","init":false,
              "token":"abcdef.0123456789abcdef","ca_cert_hash":"sha256:00"},
            "agent":{"status_port":7780},"build_epoch":1700000000}"#,
        )
        .unwrap();
        let meta = Meta::root(0o755, 0);
        let mut root = Tree::new(meta.clone());
        root.mkdir_p("etc/piimg", meta.clone()).unwrap();
        root.add_file(
            in_tree(paths::NODE_CONFIG),
            Meta::root(0o600, 0),
            FileData::from_bytes(cfg.to_json()),
        )
        .unwrap();
        root.add_file(
            "etc/piimg/kubeadm.yaml",
            Meta::root(0o600, 0),
            FileData::from_bytes(b"token".to_vec()),
        )
        .unwrap();
        let mut asm = Assembled {
            boot: Tree::new(meta.clone()),
            root,
            data: Tree::new(meta.clone()),
            initramfs: Tree::new(meta),
            kernel_release: String::new(),
            modules_requested: vec![],
            modules_missing: vec![],
            drivers: vec![],
            components: vec![],
            secret_paths: vec![
                in_tree(paths::NODE_CONFIG).to_string(),
                "etc/piimg/kubeadm.yaml".into(),
            ],
        };
        let card = secrets_to_card(&mut asm, &cfg, 0).unwrap();
        assert!(asm.root.lookup("etc/piimg/kubeadm.yaml").is_none());
        let id = card
            .lookup("lib/piimg/secrets/etc/piimg/kubeadm.yaml")
            .unwrap();
        assert_eq!(card.inode(id).meta.perm, 0o600);
        let id = asm.root.lookup(in_tree(paths::NODE_CONFIG)).unwrap();
        let InodeKind::File(d) = &asm.root.inode(id).kind else {
            panic!("node.json is a file")
        };
        let public = String::from_utf8(d.read_all().unwrap()).unwrap();
        let token = cfg.kubernetes.as_ref().unwrap().token.clone();
        assert!(!token.is_empty() && !public.contains(&token), "{public}");
        let id = card
            .lookup("lib/piimg/secrets/etc/piimg/node.json")
            .unwrap();
        let InodeKind::File(d) = &card.inode(id).kind else {
            panic!("node.json is a file")
        };
        assert!(String::from_utf8(d.read_all().unwrap())
            .unwrap()
            .contains(&token));
    }
}
