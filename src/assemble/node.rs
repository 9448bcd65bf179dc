//! Fills the three trees of a node image — boot (FAT), root (ext4), initramfs (cpio) — plus the
//! empty data filesystem, from the locked components in the cache and the node config.

use super::config::{self, paths};
use super::drivers;
use super::wifi;
use super::AssembleError;
use crate::components::cache::Cache;
use crate::components::deb::{self, DebOptions};
use crate::components::lock::{LockEntry, Source};
use crate::components::modules::ModuleSet;
use crate::profile::NodeProfile;
use crate::report::Reporter;
use crate::tree::{FileData, InodeId, InodeKind, Meta, Tree};
use piimg_agent::contract::paths::{self as agent_paths, in_tree};
use piimg_agent::node::{Board, Kubernetes, NodeConfig, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Debian packages every node gets, by role. Their dependency closure comes along (see
/// [`packages_for`]).
pub fn root_packages(role: Role) -> Vec<&'static str> {
    // e2fsprogs: stage 2 checks the data filesystem with e2fsck before mounting it on /var
    // (a power cut can tear its superblock; see piimg_agent::fsck).
    let mut v = vec!["busybox-static", "e2fsprogs"];
    match role {
        // conntrack, nsenter (util-linux), ip (iproute2) and mount are kubeadm v1.31's required
        // executables (preflight addExecChecks); ca-certificates holds the roots containerd
        // needs to pull images over TLS.
        Role::ControlPlane | Role::Worker => v.extend([
            "containerd",
            "runc",
            "containernetworking-plugins",
            "conntrack",
            "util-linux",
            "iproute2",
            "mount",
            "ca-certificates",
        ]),
        Role::LoadBalancer => v.push("haproxy"),
    }
    v
}

/// The packages a node's root gets (their dependency closure comes along), and the firmware
/// packages read into trees of their own: what must be in the cache to build it.
pub fn node_packages(cfg: &NodeConfig) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut roots = root_packages(cfg.role);
    let mut firmware = vec![FIRMWARE_PACKAGE];
    if cfg.network.wifi.is_some() {
        roots.extend(wifi::ROOT_PACKAGES);
        firmware.push(wifi::FIRMWARE_PACKAGE);
    }
    (roots, firmware)
}

/// Packages that only provide boot files or kernel modules: read into their own trees.
pub const KERNEL_PACKAGE_PREFIX: &str = "linux-image-";
pub const FIRMWARE_PACKAGE: &str = "raspi-firmware";

/// Every package any role needs: what `piimg fetch` resolves per suite.
pub fn all_packages() -> Vec<&'static str> {
    let mut v: BTreeSet<&str> = BTreeSet::new();
    v.insert("linux-image-arm64");
    v.insert(FIRMWARE_PACKAGE);
    for r in Role::ALL {
        v.extend(root_packages(r));
    }
    v.extend(wifi::WIFI_PACKAGES);
    v.into_iter().collect()
}

/// What stage 1 loads besides the board's drivers ([`drivers::for_board`]: storage, network,
/// USB, chosen from its device tree) to mount the root: ext4 and the crc32c hash that
/// metadata_csum needs (ext4 names it only as a soft dependency). The network drivers are
/// loaded in stage 1 too, so the USB bus enumerates (Pi 3 Ethernet, QEMU's usb-net) while the
/// root is being mounted.
pub const STAGE1_FS_MODULES: &[&str] = &["ext4", "crc32c_generic"];

/// What stage 1 of a netbooted node adds to mount its root: the image is a squashfs file in RAM
/// on a loop device, under an overlay whose upper layer is a tmpfs.
pub const NETBOOT_MODULES: &[&str] = &["squashfs", "loop", "overlay"];

/// Modules every node loads at stage 2 after the stage-1 list (listed again there; loading a
/// loaded module is a no-op): the FAT boot partition and the watchdog.
pub const BASE_MODULES: &[&str] = &["vfat", "nls_cp437", "nls_iso8859_1", "bcm2835_wdt"];

/// What kubelet, kube-proxy and the CNI plugins need from the kernel. kube-proxy v1.31 in
/// iptables mode (pkg/proxy/iptables/proxier.go) matches comment, mark, conntrack, statistic,
/// recent (ClientIP affinity), addrtype and tcp/udp/sctp, jumps to DNAT, MASQUERADE, MARK and
/// REJECT (services without endpoints), and clears stale UDP flows with the conntrack CLI, which
/// speaks nf_conntrack_netlink; kubelet's KUBE-FIREWALL needs conntrack and comment too.
/// iptables-nft reaches the xt_ modules through nft_compat.
pub const KUBERNETES_MODULES: &[&str] = &[
    "overlay",
    "br_netfilter",
    "bridge",
    "veth",
    "vxlan",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "ip_tables",
    "ip6_tables",
    "iptable_nat",
    "iptable_filter",
    "iptable_mangle",
    "ip6table_nat",
    "ip6table_filter",
    "ip6table_mangle",
    "ipt_REJECT",
    "ip6t_REJECT",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_comment",
    "xt_mark",
    "xt_multiport",
    "xt_nat",
    "xt_recent",
    "xt_sctp",
    "xt_statistic",
    "xt_tcpudp",
];

/// Everything that goes into one node image, before the writers run.
pub struct Assembled {
    pub boot: Tree,
    pub root: Tree,
    pub data: Tree,
    pub initramfs: Tree,
    pub kernel_release: String,
    /// Modules loaded at stage 2 (requested names) and present in the image (with deps).
    pub modules_requested: Vec<String>,
    pub modules_missing: Vec<String>,
    /// The board's drivers, chosen from its device tree ([`drivers::for_board`]).
    pub drivers: Vec<drivers::Choice>,
    /// Components that went into this image, with their lock entries.
    pub components: Vec<LockEntry>,
    /// Paths (in the root tree) of files holding secrets: mode 0600, hashes left out of manifests.
    pub secret_paths: Vec<String>,
}

pub struct Inputs<'a> {
    pub node: &'a NodeProfile,
    /// Locked components of the node's suite plus URL and local components, by name.
    pub components: &'a BTreeMap<String, LockEntry>,
    /// Dependency closure data: package name -> names it depends on (from the lock).
    pub depends: &'a BTreeMap<String, Vec<String>>,
    pub cache: &'a Cache,
    pub agent: &'a [u8],
    /// The project's overlays folder (`overlays/common`, `overlays/<role>`), if any.
    pub overlays: Option<&'a Path>,
    pub epoch: i64,
    /// The node config with partition ids filled in.
    pub config: &'a NodeConfig,
    pub cluster: &'a str,
    /// Netboot: the root image's URL for the kernel command line (`piimg.root=`); the initramfs
    /// then also carries what fetching and mounting it needs.
    pub netboot_root: Option<&'a str>,
}

fn meta(perm: u16, epoch: i64) -> Meta {
    Meta::root(perm, epoch)
}

fn bytes(b: impl Into<Vec<u8>>) -> FileData {
    FileData::from_bytes(b)
}

/// The package's dependency closure within the locked set, sorted.
pub fn packages_for(
    roots: &[&str],
    depends: &BTreeMap<String, Vec<String>>,
    available: &BTreeMap<String, LockEntry>,
) -> Result<Vec<String>, AssembleError> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
    while let Some(p) = stack.pop() {
        if !available.contains_key(&p) {
            return Err(AssembleError::NotLocked(p));
        }
        if out.insert(p.clone()) {
            for d in depends.get(&p).into_iter().flatten() {
                // Dependencies pruned at fetch time (debconf, perl...) are simply not in the lock.
                if available.contains_key(d) {
                    stack.push(d.clone());
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn deb_sha(e: &LockEntry) -> Result<&str, AssembleError> {
    e.sha256
        .as_deref()
        .ok_or_else(|| AssembleError::NotLocked(e.name.clone()))
}

/// Reads one locked package into `tree`.
fn read_pkg(
    tree: &mut Tree,
    cache: &Cache,
    e: &LockEntry,
    epoch: i64,
) -> Result<deb::DebInfo, AssembleError> {
    let opts = DebOptions {
        keep_docs: false,
        allow_replace: false,
        merge_usr: true,
        clamp_mtime: Some(epoch),
    };
    Ok(deb::read_cached_deb(
        tree,
        cache,
        deb_sha(e)?,
        &format!("{} {}", e.name, e.version),
        &opts,
    )?)
}

/// A file's bytes from a tree (for small files such as firmware blobs and the kernel).
fn take(tree: &Tree, path: &str, what: &str) -> Result<FileData, AssembleError> {
    let id = tree
        .lookup(path)
        .ok_or_else(|| AssembleError::Missing(format!("{what}: {path}")))?;
    match &tree.inode(id).kind {
        InodeKind::File(d) => Ok(d.clone()),
        _ => Err(AssembleError::Missing(format!(
            "{what}: {path} is not a file"
        ))),
    }
}

fn firmware_files(board: Board) -> &'static [&'static str] {
    match board {
        Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w => {
            &["bootcode.bin", "start.elf", "fixup.dat"]
        }
        Board::Rpi4b | Board::Cm4 => &["start4.elf", "fixup4.dat"],
    }
}

/// Names of the boot files piimg writes.
pub const KERNEL_FILE: &str = "kernel8.img";
pub const INITRAMFS_FILE: &str = "initramfs8";

/// Copies the modules `names` (already closed over dependencies) from the kernel tree.
fn copy_modules(
    kernel: &Tree,
    set: &ModuleSet,
    installed: &ModuleSet,
    names: &[String],
    dest: &mut Tree,
    dest_dir: &str,
    epoch: i64,
) -> Result<(), AssembleError> {
    for n in names {
        let (Some(m), Some(i)) = (set.modules.get(n), installed.modules.get(n)) else {
            continue;
        };
        let data = take(kernel, &format!("{}/{}", set.dir, m.path), "kernel module")?;
        let raw = data
            .read_all()
            .map_err(|e| AssembleError::Io(m.path.clone(), e))?;
        let elf = crate::components::modules::decompress_module(&m.path, &raw)?;
        dest.add_file(
            format!("{dest_dir}/{}", i.path),
            meta(0o644, epoch),
            bytes(elf),
        )?;
    }
    Ok(())
}

/// The module set as installed: modules are stored decompressed (`.ko`), because the kernel's
/// in-kernel xz decompression at every boot costs seconds on a Pi (and more under emulation),
/// while the image only grows by a few MB and the initramfs is compressed as a whole anyway.
fn uncompressed(set: &ModuleSet) -> ModuleSet {
    let mut out = set.clone();
    for m in out.modules.values_mut() {
        for suffix in [".xz", ".zst", ".gz"] {
            if let Some(p) = m.path.strip_suffix(suffix) {
                m.path = p.to_string();
            }
        }
    }
    out
}

/// Adds every file under `dir` on the host (an overlay) to `tree`, replacing what is there.
/// Owners become root; modes are kept.
fn apply_overlay(tree: &mut Tree, dir: &Path, epoch: i64) -> Result<usize, AssembleError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let t = Tree::from_host_dir(
        dir,
        crate::tree::HostImport {
            owner: Some((0, 0)),
            mtime: Some(epoch),
        },
    )?;
    let mut n = 0;
    for (path, id) in t.walk().into_iter().skip(1) {
        let inode = t.inode(id).clone();
        tree.upsert(
            &path,
            inode.meta.clone(),
            match inode.kind {
                InodeKind::Dir(_) => InodeKind::Dir(BTreeMap::new()),
                other => other,
            },
        )?;
        n += 1;
    }
    Ok(n)
}

/// The kernel's module index. Parsing means decompressing every module, so it is kept in the
/// cache beside the package it came from (`modinfo/<kernel deb sha256>.json`).
fn module_set(
    cache: &Cache,
    kernel_sha: &str,
    kernel: &Tree,
    release: &str,
) -> Result<ModuleSet, AssembleError> {
    let path = cache
        .root()
        .join("modinfo")
        .join(format!("{kernel_sha}.json"));
    if let Ok(text) = std::fs::read(&path) {
        if let Ok(set) = serde_json::from_slice::<ModuleSet>(&text) {
            if set.release == release {
                return Ok(set);
            }
        }
    }
    let set = ModuleSet::from_tree(kernel, Some(release))?;
    // A cache that cannot be written only costs the next build the parse again.
    if let Ok(out) = crate::fs::sparse::AtomicOutput::create(&path) {
        if let Ok(json) = serde_json::to_vec(&set) {
            if std::io::Write::write_all(&mut out.file(), &json).is_ok() {
                let _ = out.commit();
            }
        }
    }
    Ok(set)
}

/// Builds every tree of the node image: verb-named steps over one [`Assembly`]. The order of the
/// steps is the order nodes enter each tree's arena, which fixes inode numbers: keep it.
pub fn assemble(inp: &Inputs, reporter: &dyn Reporter) -> Result<Assembled, AssembleError> {
    let mut a = Assembly {
        inp,
        cfg: inp.config,
        epoch: inp.epoch,
        used: Vec::new(),
        secret_paths: Vec::new(),
    };
    let kernel = a.read_kernel(reporter)?;
    let firmware = a.read_firmware()?;
    let boot = a.boot_partition(&kernel, &firmware)?;
    let board_drivers = a.board_drivers(&kernel);
    let modules = Modules::select(
        &kernel.set,
        &board_drivers,
        a.cfg.role,
        inp.netboot_root.is_some(),
        a.cfg.network.wifi.is_some(),
    )?;
    let initramfs = a.initramfs(&kernel, &modules)?;

    let mut root = a.root_skeleton()?;
    a.install_packages(&mut root, reporter)?;
    // Stage 2 runs it before mounting /var: a package that moved it is caught here, not on a
    // node after a power cut.
    take(
        &root,
        in_tree(agent_paths::E2FSCK),
        "e2fsck (package e2fsprogs)",
    )?;
    a.link_busybox_applets(&mut root)?;
    a.link_iptables_alternatives(&mut root)?;
    if a.cfg.role.is_kubernetes() {
        a.install_kubernetes_binaries(&mut root)?;
    }
    a.install_agent(&mut root)?;
    a.install_modules(&mut root, &kernel, &modules)?;
    a.write_system_files(&mut root)?;
    a.write_node_config(&mut root)?;
    if let Some(w) = &a.cfg.network.wifi {
        a.configure_wifi(&mut root, &kernel, w, reporter)?;
    }
    if let Some(k) = &a.cfg.kubernetes {
        a.configure_kubernetes(&mut root, &kernel, k)?;
    }
    if a.cfg.role == Role::ControlPlane {
        a.preseed_pki(&mut root)?;
    }
    a.configure_haproxy(&mut root)?;
    a.apply_overlays(&mut root)?;
    a.seal_secrets(&mut root);
    let data = a.data_skeleton()?;

    a.used.sort();
    a.used.dedup();
    Ok(Assembled {
        boot,
        root,
        data,
        initramfs,
        kernel_release: kernel.release,
        modules_requested: modules.requested,
        modules_missing: modules.missing,
        drivers: board_drivers,
        components: a.used,
        secret_paths: a.secret_paths,
    })
}

/// What the steps of [`assemble`] share: the inputs, and what they collect for the report.
struct Assembly<'a> {
    inp: &'a Inputs<'a>,
    cfg: &'a NodeConfig,
    epoch: i64,
    /// Components that went into the image, in any order (sorted at the end).
    used: Vec<LockEntry>,
    /// Root-tree paths of files holding secrets.
    secret_paths: Vec<String>,
}

/// The kernel package read into a tree, with its release and module index.
struct Kernel {
    tree: Tree,
    release: String,
    set: ModuleSet,
    /// `set` with the paths the image stores (decompressed).
    installed: ModuleSet,
    /// The board's device tree from this package, parsed once for drivers and Wi-Fi firmware.
    dtb: crate::dtb::Fdt,
}

/// Which modules go where: stage 1's closure in the initramfs, everything requested in the rootfs.
struct Modules {
    stage1: Vec<String>,
    all: Vec<String>,
    /// Requested names present in the kernel (stage 2's load list), and those it lacks.
    requested: Vec<String>,
    missing: Vec<String>,
}

impl Modules {
    fn select(
        set: &ModuleSet,
        board_drivers: &[drivers::Choice],
        role: Role,
        netboot: bool,
        wifi: bool,
    ) -> Result<Modules, AssembleError> {
        let present = |names: &[&str]| -> (Vec<String>, Vec<String>) {
            let (a, b): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| {
                set.modules
                    .contains_key(&crate::components::modules::canonical(n))
            });
            (
                a.iter()
                    .map(|n| crate::components::modules::canonical(n))
                    .collect(),
                b.iter().map(|n| n.to_string()).collect(),
            )
        };
        let mut stage1_names: Vec<&str> = board_drivers.iter().map(|c| c.module.as_str()).collect();
        stage1_names.extend(STAGE1_FS_MODULES);
        if netboot {
            stage1_names.extend(NETBOOT_MODULES);
        }
        let (stage1_req, _) = present(&stage1_names);
        let stage1_refs: Vec<&str> = stage1_req.iter().map(String::as_str).collect();
        let stage1 = set.closure(&stage1_refs, true)?;
        let mut wanted: Vec<&str> = stage1_names;
        wanted.extend(BASE_MODULES);
        if role.is_kubernetes() {
            wanted.extend(KUBERNETES_MODULES);
        }
        if wifi {
            wanted.extend(wifi::WIFI_MODULES);
        }
        let (requested, missing) = present(&wanted);
        let req_refs: Vec<&str> = requested.iter().map(String::as_str).collect();
        let all = set.closure(&req_refs, true)?;
        Ok(Modules {
            stage1,
            all,
            requested,
            missing,
        })
    }
}

impl Assembly<'_> {
    fn meta(&self, perm: u16) -> Meta {
        meta(perm, self.epoch)
    }

    fn new_tree(&self) -> Tree {
        Tree::new(self.meta(0o755))
    }

    /// Boot files, device trees and modules all come from the kernel package.
    fn read_kernel(&mut self, reporter: &dyn Reporter) -> Result<Kernel, AssembleError> {
        reporter.begin("reading the kernel package", None);
        let entry = self
            .inp
            .components
            .values()
            .find(|e| {
                e.name.starts_with(KERNEL_PACKAGE_PREFIX)
                    && e.name != "linux-image-arm64"
                    && matches!(e.source(), Some(Source::Debian { .. }))
            })
            .ok_or_else(|| AssembleError::NotLocked("linux-image-<version>-arm64".into()))?;
        let mut tree = self.new_tree();
        read_pkg(&mut tree, self.inp.cache, entry, self.epoch)?;
        self.used.push(entry.clone());
        let release = crate::components::apt::kernel_release(&entry.name)
            .ok_or_else(|| AssembleError::Missing(format!("kernel release of {}", entry.name)))?
            .to_string();
        let set = module_set(self.inp.cache, deb_sha(entry)?, &tree, &release)?;
        let installed = uncompressed(&set);
        let dtb = self.device_tree(&tree, &release)?;
        reporter.end();
        Ok(Kernel {
            tree,
            release,
            set,
            installed,
            dtb,
        })
    }

    fn read_firmware(&mut self) -> Result<Tree, AssembleError> {
        let entry = self
            .inp
            .components
            .get(FIRMWARE_PACKAGE)
            .ok_or_else(|| AssembleError::NotLocked(FIRMWARE_PACKAGE.into()))?;
        let mut fw = self.new_tree();
        read_pkg(&mut fw, self.inp.cache, entry, self.epoch)?;
        self.used.push(entry.clone());
        Ok(fw)
    }

    /// The device tree the image boots with, from the kernel package.
    fn device_tree(&self, kernel: &Tree, release: &str) -> Result<crate::dtb::Fdt, AssembleError> {
        let path = format!(
            "usr/lib/linux-image-{release}/broadcom/{}",
            self.cfg.board.dtb()
        );
        let raw = take(kernel, &path, "device tree")?
            .read_all()
            .map_err(|e| AssembleError::Io(path.clone(), e))?;
        crate::dtb::Fdt::parse(&raw)
            .map_err(|e| AssembleError::Missing(format!("a readable device tree {path}: {e}")))
    }

    /// The board's drivers, from the device tree the image boots with.
    fn board_drivers(&self, kernel: &Kernel) -> Vec<drivers::Choice> {
        drivers::for_board(self.cfg.board, &kernel.dtb, &kernel.set)
    }

    /// The FAT partition the Pi firmware reads: no secrets here, ever.
    fn boot_partition(&self, kernel: &Kernel, fw: &Tree) -> Result<Tree, AssembleError> {
        let cfg = self.cfg;
        let mut boot = self.new_tree();
        for f in firmware_files(cfg.board) {
            let data = take(fw, &format!("usr/lib/raspi-firmware/{f}"), "Pi firmware")?;
            boot.add_file(*f, self.meta(0o644), data)?;
        }
        let release = &kernel.release;
        boot.add_file(
            KERNEL_FILE,
            self.meta(0o644),
            take(
                &kernel.tree,
                &format!("boot/vmlinuz-{release}"),
                "kernel image",
            )?,
        )?;
        let dtb = cfg.board.dtb();
        boot.add_file(
            dtb,
            self.meta(0o644),
            take(
                &kernel.tree,
                &format!("usr/lib/linux-image-{release}/broadcom/{dtb}"),
                "device tree",
            )?,
        )?;
        boot.add_file(
            "config.txt",
            self.meta(0o644),
            bytes(config::config_txt(
                include_str!("../../firmware/config.txt"),
                cfg.board,
                KERNEL_FILE,
                INITRAMFS_FILE,
            )),
        )?;
        boot.add_file("cmdline.txt", self.meta(0o644), bytes(self.cmdline()?))?;
        Ok(boot)
    }

    /// The kernel command line: where stage 1 finds the root.
    fn cmdline(&self) -> Result<String, AssembleError> {
        let template = include_str!("../../firmware/cmdline.txt");
        if let Some(url) = self.inp.netboot_root {
            return Ok(config::netboot_cmdline_txt(template, url));
        }
        let root_partuuid = self
            .cfg
            .storage
            .root_partuuid
            .as_deref()
            .ok_or_else(|| AssembleError::Missing("root partition id".into()))?;
        // kubeadm writes under /etc; a load balancer needs nothing written to its rootfs.
        let mode = if self.cfg.role.is_kubernetes() {
            "rw"
        } else {
            "ro"
        };
        let line = config::cmdline_txt(template, root_partuuid, mode);
        Ok(match &self.cfg.network.wifi {
            Some(w) => wifi::with_regdom(&line, &w.country),
            None => line,
        })
    }

    /// The agent as /init, the stage-1 modules and their load order.
    fn initramfs(&self, kernel: &Kernel, modules: &Modules) -> Result<Tree, AssembleError> {
        let mut initramfs = self.new_tree();
        for d in ["dev", "proc", "sys", "newroot", "run", "tmp"] {
            initramfs.mkdir_p(d, self.meta(0o755))?;
        }
        // The kernel opens /dev/console before anything mounts devtmpfs.
        initramfs.insert(
            "dev/console",
            self.meta(0o600),
            InodeKind::CharDev { major: 5, minor: 1 },
        )?;
        initramfs.add_file("init", self.meta(0o755), bytes(self.inp.agent))?;
        let mod_dir = format!("lib/modules/{}", kernel.release);
        copy_modules(
            &kernel.tree,
            &kernel.set,
            &kernel.installed,
            &modules.stage1,
            &mut initramfs,
            &mod_dir,
            self.epoch,
        )?;
        let order = kernel.installed.load_order(&modules.stage1);
        initramfs.add_file(
            in_tree(agent_paths::STAGE1_MODULES),
            self.meta(0o644),
            bytes(format!("{}\n", order.join("\n"))),
        )?;
        initramfs.add_file(
            format!("{mod_dir}/modules.dep"),
            self.meta(0o644),
            bytes(kernel.installed.modules_dep(&modules.stage1)),
        )?;
        Ok(initramfs)
    }

    /// Merged /usr and the directories the agent mounts on or writes to.
    fn root_skeleton(&self) -> Result<Tree, AssembleError> {
        let mut root = self.new_tree();
        for (l, t) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
            root.mkdir_p(t, self.meta(0o755))?;
            root.add_symlink(l, t, self.meta(0o777))?;
        }
        for d in [
            "dev",
            "proc",
            "sys",
            "run",
            "var",
            "mnt",
            "etc/piimg",
            in_tree(agent_paths::IMAGES_DIR),
        ] {
            root.mkdir_p(d, self.meta(0o755))?;
        }
        root.mkdir_p("tmp", self.meta(0o1777))?;
        root.mkdir_p("root", self.meta(0o700))?;
        Ok(root)
    }

    /// The role's Debian packages and their dependency closure.
    fn install_packages(
        &mut self,
        root: &mut Tree,
        reporter: &dyn Reporter,
    ) -> Result<(), AssembleError> {
        reporter.begin("reading packages", None);
        let comps = self.inp.components;
        let (roots, _) = node_packages(self.cfg);
        for name in packages_for(&roots, self.inp.depends, comps)? {
            let e = &comps[&name];
            if !matches!(e.source(), Some(Source::Debian { .. })) {
                continue;
            }
            read_pkg(root, self.inp.cache, e, self.epoch)?;
            self.used.push(e.clone());
        }
        reporter.end();
        Ok(())
    }

    /// busybox-static ships only /usr/bin/busybox: the shell and tools need their applet names.
    fn link_busybox_applets(&self, root: &mut Tree) -> Result<(), AssembleError> {
        if root.lookup("usr/bin/busybox").is_none() {
            return Ok(());
        }
        for applet in [
            "sh", "ls", "cat", "ps", "kill", "mount", "umount", "dmesg", "ip", "ping", "grep",
            "vi", "free", "top", "df", "netstat", "wget", "nc", "sleep", "echo", "mkdir", "rm",
            "cp", "mv", "ln", "chmod", "uname", "hostname", "sync", "reboot", "poweroff",
        ] {
            let p = format!("usr/bin/{applet}");
            if root.lookup(&p).is_none() && root.lookup(format!("usr/sbin/{applet}")).is_none() {
                root.add_symlink(&p, "busybox", self.meta(0o777))?;
            }
        }
        Ok(())
    }

    /// What iptables' update-alternatives would link: kube-proxy and the CNI plugins call these.
    fn link_iptables_alternatives(&self, root: &mut Tree) -> Result<(), AssembleError> {
        if root.lookup("usr/sbin/xtables-nft-multi").is_none() {
            return Ok(());
        }
        for t in [
            "iptables",
            "iptables-save",
            "iptables-restore",
            "ip6tables",
            "ip6tables-save",
            "ip6tables-restore",
        ] {
            let p = format!("usr/sbin/{t}");
            if root.lookup(&p).is_none() {
                root.add_symlink(&p, "xtables-nft-multi", self.meta(0o777))?;
            }
        }
        Ok(())
    }

    /// kubelet, kubeadm, kubectl (init node) and crictl: URL or local components.
    fn install_kubernetes_binaries(&mut self, root: &mut Tree) -> Result<(), AssembleError> {
        let comps = self.inp.components;
        let mut bins = vec!["kubelet", "kubeadm"];
        if self.cfg.role == Role::ControlPlane && comps.contains_key("kubectl") {
            bins.push("kubectl");
        }
        for b in bins {
            let e = comps
                .get(b)
                .ok_or_else(|| AssembleError::NotLocked(b.to_string()))?;
            let data = self.host_file(e)?;
            root.add_file(format!("usr/bin/{b}"), self.meta(0o755), data)?;
            self.used.push(e.clone());
        }
        if let Some(e) = comps.get("crictl") {
            let data = if matches!(e.source(), Some(Source::Url(_))) {
                let path = self.inp.cache.path_of(deb_sha(e)?);
                bytes(crate::components::fetch::tgz_member(&path, "crictl")?)
            } else {
                self.host_file(e)?
            };
            root.add_file("usr/bin/crictl", self.meta(0o755), data)?;
            self.used.push(e.clone());
        }
        Ok(())
    }

    /// A component's cached file, streamed by the writers.
    fn host_file(&self, e: &LockEntry) -> Result<FileData, AssembleError> {
        let path = self.inp.cache.path_of(deb_sha(e)?);
        let len = std::fs::metadata(&path)
            .map_err(|e| AssembleError::Io(path.display().to_string(), e))?
            .len();
        Ok(FileData::Host { path, len })
    }

    /// The agent is PID 1 (and the kernel's modprobe helper).
    fn install_agent(&self, root: &mut Tree) -> Result<(), AssembleError> {
        root.upsert(
            "usr/sbin/init",
            self.meta(0o755),
            InodeKind::File(bytes(self.inp.agent)),
        )?;
        Ok(())
    }

    /// Kernel modules with depmod-format indexes, and stage 2's load list.
    fn install_modules(
        &self,
        root: &mut Tree,
        kernel: &Kernel,
        modules: &Modules,
    ) -> Result<(), AssembleError> {
        let installed = &kernel.installed;
        let rmod_dir = format!("usr/lib/modules/{}", kernel.release);
        copy_modules(
            &kernel.tree,
            &kernel.set,
            installed,
            &modules.all,
            root,
            &rmod_dir,
            self.epoch,
        )?;
        for (f, text) in [
            ("modules.dep", installed.modules_dep(&modules.all)),
            ("modules.alias", installed.modules_alias(&modules.all)),
            ("modules.softdep", installed.modules_softdep(&modules.all)),
        ] {
            root.add_file(format!("{rmod_dir}/{f}"), self.meta(0o644), bytes(text))?;
        }
        root.add_file(
            in_tree(agent_paths::MODULES_LOAD),
            self.meta(0o644),
            bytes(format!("{}\n", modules.requested.join("\n"))),
        )?;
        Ok(())
    }

    /// Identity and system files the skipped maintainer scripts would have provided.
    fn write_system_files(&self, root: &mut Tree) -> Result<(), AssembleError> {
        let cfg = self.cfg;
        let (passwd, group) = config::passwd_group(cfg.role);
        let etc_files: Vec<(&str, String)> = vec![
            ("etc/hostname", format!("{}\n", cfg.hostname)),
            (
                "etc/hosts",
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost\n{}\t{}\n",
                    cfg.network.address.addr(),
                    cfg.hostname
                ),
            ),
            ("etc/passwd", passwd),
            ("etc/group", group),
            (
                "etc/nsswitch.conf",
                "passwd: files\ngroup: files\nhosts: files dns\n".into(),
            ),
            (
                "etc/os-release",
                format!(
                    "NAME=piimg\nID=piimg\nPRETTY_NAME=\"piimg {} node ({})\"\nVERSION_ID={}\n",
                    cfg.role,
                    cfg.board,
                    env!("CARGO_PKG_VERSION")
                ),
            ),
        ];
        for (p, text) in etc_files {
            root.upsert(p, self.meta(0o644), InodeKind::File(bytes(text)))?;
        }
        // The agent writes resolv.conf at boot; the rootfs may be read-only.
        root.upsert(
            "etc/resolv.conf",
            self.meta(0o777),
            InodeKind::Symlink(b"../run/resolv.conf".to_vec()),
        )?;
        Ok(())
    }

    /// node.json (the agent's whole input) and kubeadm's configuration.
    fn write_node_config(&mut self, root: &mut Tree) -> Result<(), AssembleError> {
        let cfg = self.cfg;
        let node_json = in_tree(agent_paths::NODE_CONFIG);
        let node_mode = if cfg.has_secrets() { 0o600 } else { 0o644 };
        root.add_file(node_json, self.meta(node_mode), bytes(cfg.to_json()))?;
        if cfg.has_secrets() {
            self.secret_paths.push(node_json.to_string());
        }
        if let Some(y) = config::kubeadm_yaml(cfg, self.inp.cluster) {
            let kubeadm_yaml = in_tree(agent_paths::KUBEADM_YAML);
            root.add_file(kubeadm_yaml, self.meta(0o600), bytes(y))?;
            self.secret_paths.push(kubeadm_yaml.to_string());
        }
        Ok(())
    }

    /// The board chip's brcmfmac firmware under the names the driver asks for (the board type
    /// is the first `compatible` of the device tree the image boots with), the regulatory
    /// database cfg80211 loads, and wpa_supplicant's configuration (0600; a secret when it
    /// holds a passphrase, which comes from the cluster secrets file only).
    fn configure_wifi(
        &mut self,
        root: &mut Tree,
        kernel: &Kernel,
        w: &piimg_agent::node::Wifi,
        reporter: &dyn Reporter,
    ) -> Result<(), AssembleError> {
        let entry = self
            .inp
            .components
            .get(wifi::FIRMWARE_PACKAGE)
            .ok_or_else(|| AssembleError::NotLocked(wifi::FIRMWARE_PACKAGE.into()))?;
        let mut fw = self.new_tree();
        read_pkg(&mut fw, self.inp.cache, entry, self.epoch)?;
        self.used.push(entry.clone());
        let board = self.cfg.board;
        let board_type = wifi::board_type(&kernel.dtb).ok_or_else(|| {
            AssembleError::Missing(format!("the root `compatible` of {}", board.dtb()))
        })?;
        let (files, missing) = wifi::firmware_files(&fw, board, &board_type)?;
        if !missing.is_empty() {
            reporter.info(&format!(
                "{} has no {}: a {board} with that chip gets no Wi-Fi from this image",
                wifi::FIRMWARE_PACKAGE,
                missing.join(", ")
            ));
        }
        root.mkdir_p("usr/lib/firmware/brcm", self.meta(0o755))?;
        for f in files {
            root.upsert(
                format!("usr/lib/firmware/brcm/{}", f.name),
                self.meta(0o644),
                InodeKind::File(f.data),
            )?;
        }
        if root
            .lookup("usr/lib/firmware/regulatory.db-debian")
            .is_none()
        {
            return Err(AssembleError::Missing(
                "/lib/firmware/regulatory.db-debian (package wireless-regdb)".into(),
            ));
        }
        root.mkdir_p("etc/alternatives", self.meta(0o755))?;
        for (link, target) in wifi::REGDB_LINKS {
            root.upsert(
                link,
                self.meta(0o777),
                InodeKind::Symlink(target.as_bytes().to_vec()),
            )?;
        }
        let passphrase = self
            .inp
            .node
            .secrets
            .as_ref()
            .and_then(|s| s.wifi.get(&w.ssid));
        let conf = in_tree(agent_paths::WPA_SUPPLICANT_CONF);
        root.mkdir_p("etc/wpa_supplicant", self.meta(0o755))?;
        root.upsert(
            conf,
            self.meta(0o600),
            InodeKind::File(bytes(wifi::wpa_supplicant_conf(
                w,
                passphrase.map(String::as_str),
            ))),
        )?;
        if passphrase.is_some() {
            self.secret_paths.push(conf.to_string());
        }
        Ok(())
    }

    /// containerd, CNI and crictl configuration, and what kubeadm's preflight reads.
    fn configure_kubernetes(
        &self,
        root: &mut Tree,
        kernel: &Kernel,
        k: &Kubernetes,
    ) -> Result<(), AssembleError> {
        let pause = config::pause_image(k).ok_or_else(|| {
            AssembleError::Missing(format!("the pause image of Kubernetes {}", k.version))
        })?;
        root.upsert(
            paths::CONTAINERD_CONFIG,
            self.meta(0o644),
            InodeKind::File(bytes(config::containerd_toml(&pause))),
        )?;
        kubeadm_prerequisites(root, &kernel.tree, &kernel.release, self.epoch)?;
        if let Some(c) = config::cni_conflist(self.cfg) {
            root.add_file(paths::CNI_CONFIG, self.meta(0o644), bytes(c))?;
        }
        root.upsert(
            paths::CRICTL_CONFIG,
            self.meta(0o644),
            InodeKind::File(bytes(config::crictl_yaml())),
        )?;
        for d in ["etc/kubernetes/manifests", "etc/kubernetes/pki"] {
            root.mkdir_p(d, self.meta(0o755))?;
        }
        Ok(())
    }

    /// The cluster CA and keys in kubeadm's folder, and the pristine copy the agent restores
    /// after `kubeadm reset` (which empties kubeadm's folder) before it retries.
    fn preseed_pki(&mut self, root: &mut Tree) -> Result<(), AssembleError> {
        let s = self
            .inp
            .node
            .secrets
            .as_ref()
            .ok_or_else(|| AssembleError::Missing("cluster secrets".into()))?;
        for base in [agent_paths::KUBE_PKI, agent_paths::PRESEED_PKI].map(in_tree) {
            for (name, content, private) in s.pki_files() {
                let path = format!("{base}/{name}");
                if let Some((dir, _)) = path.rsplit_once('/') {
                    root.mkdir_p(dir, self.meta(0o755))?;
                }
                let mode = if private { 0o600 } else { 0o644 };
                root.add_file(&path, self.meta(mode), bytes(content.to_string()))?;
                if private {
                    self.secret_paths.push(path);
                }
            }
        }
        Ok(())
    }

    fn configure_haproxy(&self, root: &mut Tree) -> Result<(), AssembleError> {
        if let Some(h) = config::haproxy_cfg(self.cfg) {
            root.upsert(
                paths::HAPROXY_CONFIG,
                self.meta(0o644),
                InodeKind::File(bytes(h)),
            )?;
        }
        Ok(())
    }

    /// Overlays last: a user's file wins over packages and generated ones.
    fn apply_overlays(&self, root: &mut Tree) -> Result<(), AssembleError> {
        if let Some(dir) = self.inp.overlays {
            apply_overlay(root, &dir.join("common"), self.epoch)?;
            apply_overlay(root, &dir.join(self.cfg.role.as_str()), self.epoch)?;
        }
        Ok(())
    }

    /// Secrets stay 0600 even where an overlay replaced the file with a wider mode.
    fn seal_secrets(&self, root: &mut Tree) {
        for p in &self.secret_paths {
            if let Some(id) = root.lookup(p) {
                root.inode_mut(id).meta.perm = 0o600;
            }
        }
    }

    /// The data filesystem mounted on /var: state of containerd, kubelet, etcd, logs.
    fn data_skeleton(&self) -> Result<Tree, AssembleError> {
        let mut data = self.new_tree();
        for (dir, mode) in agent_paths::DATA_SKELETON {
            data.mkdir_p(dir, self.meta(*mode as u16))?;
        }
        Ok(data)
    }
}

/// What kubeadm v1.31's preflight and an image-pulling containerd need beyond the packages:
/// the kernel config SystemVerification reads (/boot/config-RELEASE), the trust bundle
/// ca-certificates' postinst would have written, and the CNI plugins where containerd, Flannel
/// and Calico look for them.
fn kubeadm_prerequisites(
    root: &mut Tree,
    kernel: &Tree,
    release: &str,
    epoch: i64,
) -> Result<(), AssembleError> {
    let config = format!("boot/config-{release}");
    root.mkdir_p("boot", meta(0o755, epoch))?;
    root.add_file(
        &config,
        meta(0o644, epoch),
        take(kernel, &config, "kernel config")?,
    )?;

    let bundle = ca_bundle(root)?;
    root.mkdir_p("etc/ssl/certs", meta(0o755, epoch))?;
    root.upsert(
        paths::CA_BUNDLE,
        meta(0o644, epoch),
        InodeKind::File(bytes(bundle)),
    )?;

    let cni = paths::CNI_BIN_DIR.trim_start_matches('/');
    root.mkdir_p(cni, meta(0o755, epoch))?;
    let plugins: Vec<Vec<u8>> = match root.lookup(paths::DEBIAN_CNI_DIR) {
        Some(dir) => root.children(dir).map(|(n, _)| n.to_vec()).collect(),
        None => Vec::new(),
    };
    for name in plugins {
        let name = String::from_utf8_lossy(&name).into_owned();
        let link = format!("{cni}/{name}");
        if root.lookup(&link).is_none() {
            let target = format!("/{}/{name}", paths::DEBIAN_CNI_DIR);
            root.add_symlink(&link, target, meta(0o777, epoch))?;
        }
    }
    Ok(())
}

/// update-ca-certificates with Debian's default configuration (every certificate the package
/// ships enabled): the certificates under /usr/share/ca-certificates in path order, concatenated.
fn ca_bundle(root: &Tree) -> Result<Vec<u8>, AssembleError> {
    const DIR: &str = "usr/share/ca-certificates/";
    let mut certs: Vec<(Vec<u8>, InodeId)> = root
        .walk()
        .into_iter()
        .filter(|(p, _)| p.starts_with(DIR.as_bytes()) && p.ends_with(b".crt"))
        .collect();
    certs.sort();
    let mut out = Vec::new();
    for (path, id) in certs {
        if let InodeKind::File(data) = &root.inode(id).kind {
            let mut pem = data
                .read_all()
                .map_err(|e| AssembleError::Io(String::from_utf8_lossy(&path).into_owned(), e))?;
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            out.extend(pem);
        }
    }
    if out.is_empty() {
        return Err(AssembleError::Missing(
            "CA certificates under /usr/share/ca-certificates (package ca-certificates)".into(),
        ));
    }
    Ok(out)
}

/// Where the project's overlays are: `overlays/` beside the profiles folder.
pub fn overlays_dir(profiles: &Path) -> Option<PathBuf> {
    let parent = profiles.parent().unwrap_or(Path::new("."));
    let d = if parent.as_os_str().is_empty() {
        PathBuf::from("overlays")
    } else {
        parent.join("overlays")
    };
    d.is_dir().then_some(d)
}
