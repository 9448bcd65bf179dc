//! Stage 2, PID 1 of the running node: mounts, storage, kernel setup, identity, network, clock,
//! services, status; then the reaper/supervisor loop until a shutdown signal.

use crate::console::say;
use crate::node::{Network, NodeConfig, NODE_CONFIG_PATH};
use crate::supervise::{Options, ServiceSpec, Supervisor};
use crate::syscall::Host;
use crate::watchdog::{self, Watchdog};
use crate::{blockdev, clock, fsck, grow, modules, mounts, net, roles, status, sys, sysctl};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MODULES_LOAD: &str = crate::contract::paths::MODULES_LOAD;
pub const GROWN_MARKER: &str = crate::contract::paths::GROWN;
pub const RESOLV_CONF: &str = "/run/resolv.conf";
/// The kernel runs this for request_module(); it is a symlink to the agent, so argv[0] says
/// "modprobe".
pub const MODPROBE_LINK: &str = "/run/piimg/modprobe";

/// What the main loop needs after setup.
struct Node {
    cfg: Option<NodeConfig>,
    sup: Supervisor,
    net_up: Arc<AtomicBool>,
    ready: bool,
    watchdog: Option<Watchdog>,
}

/// A step of stage 2 that failed; the stage says so and goes on with the next one.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("hostname: {0}")]
    Hostname(io::Error),
    #[error("mount {} on /var: {source}", dev.display())]
    MountData { dev: PathBuf, source: io::Error },
    #[error("grow: cannot find the disk of {0}")]
    NoDisk(String),
    /// Not recorded as done: the next boot tries again.
    #[error("grow {part}: {reason}")]
    Grow { part: String, reason: String },
}

fn report(step: Result<(), StepError>) {
    if let Err(e) = step {
        say(&e.to_string());
    }
}

fn read_config(host: &Host) -> Option<NodeConfig> {
    match std::fs::read(host.path(NODE_CONFIG_PATH)) {
        Ok(bytes) => match NodeConfig::from_json(&bytes) {
            Ok(c) => {
                // Reported, not fatal: each step copes with what it gets.
                for p in crate::check::problems(&c) {
                    say(&format!("node config: {p}"));
                }
                Some(c)
            }
            Err(e) => {
                say(&format!("{e}; running without services"));
                None
            }
        },
        Err(e) => {
            say(&format!(
                "{NODE_CONFIG_PATH}: {e}; running without services"
            ));
            None
        }
    }
}

fn agent_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/sbin/init".into())
}

fn mount_api(host: &Host) {
    for (t, e) in mounts::mount_all(&*host.sys, &host.root, &mounts::stage2_mounts()) {
        say(&format!("mount {t}: {e}"));
    }
    let on = mounts::enable_cgroup_controllers(
        &host.path("/sys/fs/cgroup"),
        &mounts::CGROUP_CONTROLLERS,
    );
    say(&format!("cgroup controllers: {}", on.join(" ")));
}

fn find_with_timeout(host: &Host, partuuid: &str, limit: Duration) -> Option<PathBuf> {
    let end = Instant::now() + limit;
    loop {
        if let Some(p) =
            blockdev::find_partuuid(&host.path("/sys/class/block"), &host.path("/dev"), partuuid)
        {
            return Some(p);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn var_mounted(host: &Host) -> bool {
    std::fs::read_to_string(host.path("/proc/self/mountinfo"))
        .map(|t| mounts::mount_points(&t).iter().any(|p| p == "/var"))
        .unwrap_or(false)
}

/// How long netboot's stage 2 gives the card reader to be probed before /var becomes a tmpfs.
const DATA_CARD_WAIT: Duration = Duration::from_secs(10);

/// Netboot's storage: /var from the local card, then the card's secrets into the root when the
/// card is this node's; `cfg` then holds them.
fn netboot_storage(host: &Host, cfg: &mut NodeConfig, label: &str, wait: Duration) {
    mount_var_by_label(host, label, wait);
    let base = host.path(crate::contract::paths::CARD_SECRETS);
    if !base.is_dir() {
        return;
    }
    match card_config(&base) {
        // The card's config is the image's with the secrets filled in.
        Ok(card) if card.public() == cfg.public() => {
            if copy_card_secrets(&base, host)
                .iter()
                .any(|p| p == NODE_CONFIG_PATH)
            {
                *cfg = card;
            }
        }
        // Another node's secrets would make this node that one: its name, address and role.
        Ok(card) if card.hostname != cfg.hostname => say(&format!(
            "the card belongs to another node: {}; none of its secrets copied, {} keeps its own config",
            card.hostname, cfg.hostname
        )),
        Ok(_) => say(&format!(
            "the card's node config differs from this image's (a card from another build of {}?); \
             none of its secrets copied",
            cfg.hostname
        )),
        Err(why) => say(&format!("card secrets: {why}; none copied")),
    }
}

/// The node config among the card's secrets: which node the card belongs to.
fn card_config(base: &Path) -> Result<NodeConfig, String> {
    let path = base.join(NODE_CONFIG_PATH.trim_start_matches('/'));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    NodeConfig::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// /var on the ext4 filesystem labelled `label` of a local card, else on a tmpfs; with the
/// data skeleton's folders either way.
fn mount_var_by_label(host: &Host, label: &str, wait: Duration) {
    if !var_mounted(host) {
        let end = Instant::now() + wait;
        let found = loop {
            let found = blockdev::find_ext4_label(
                &host.path("/sys/class/block"),
                &host.path("/dev"),
                label,
            );
            if found.is_some() || Instant::now() >= end {
                break found;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let on_card = match &found {
            Some(dev) => {
                check_data(host, dev);
                match host.sys.mount(
                    &dev.to_string_lossy(),
                    &host.path("/var"),
                    Some("ext4"),
                    libc::MS_NOATIME,
                    None,
                ) {
                    Ok(()) => {
                        say(&format!("data LABEL={label} {} on /var", dev.display()));
                        // The card was written at the image's data size: give /var the whole card,
                        // once, as a node image's data partition gets.
                        if !host.path(GROWN_MARKER).exists() {
                            report(grow_data(host, dev));
                        }
                        true
                    }
                    Err(source) => {
                        say(&StepError::MountData {
                            dev: dev.clone(),
                            source,
                        }
                        .to_string());
                        false
                    }
                }
            }
            None => {
                say(&format!("no card with an ext4 filesystem labelled {label}"));
                false
            }
        };
        if !on_card {
            match host.sys.mount(
                "var",
                &host.path("/var"),
                Some("tmpfs"),
                0,
                Some("mode=0755"),
            ) {
                Ok(()) => say(
                    "WARNING: /var is a tmpfs: this node's state (kubelet, containerd, etcd, \
                     logs) will not survive a reboot",
                ),
                Err(e) => say(&format!(
                    "mount tmpfs on /var: {e}; /var stays in the root overlay (RAM as well)"
                )),
            }
        }
    }
    make_data_skeleton(host);
}

/// The folders a data filesystem is made with, where missing (a tmpfs, an older card).
fn make_data_skeleton(host: &Host) {
    use std::os::unix::fs::PermissionsExt;
    for (rel, mode) in crate::contract::paths::DATA_SKELETON {
        let dir = host.path("/var").join(rel);
        if dir.exists() {
            continue;
        }
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(*mode)));
        if let Err(e) = made {
            say(&format!("/var/{rel}: {e}"));
        }
    }
}

/// Copies each file below the card's secrets folder `base` to the same path in the root (mode
/// 0600, owned by this process: root); says how many, never what. Returns their root paths.
fn copy_card_secrets(base: &Path, host: &Host) -> Vec<String> {
    let mut found = Vec::new();
    secret_files(base, base, &mut found);
    let mut copied = Vec::new();
    for rel in found {
        let abs = format!("/{rel}");
        match install_secret(&base.join(&rel), &host.path(&abs)) {
            Ok(()) => copied.push(abs),
            Err(e) => say(&format!("card secret {abs}: {e}")),
        }
    }
    say(&format!(
        "card secrets: {} files copied from {} into the root",
        copied.len(),
        crate::contract::paths::CARD_SECRETS
    ));
    copied
}

/// Regular files below `dir`, relative to `base`, in name order (symlinks are not followed).
fn secret_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => secret_files(base, &p, out),
            Ok(t) if t.is_file() => {
                if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
            _ => say(&format!(
                "card secret {}: not a regular file; skipped",
                p.display()
            )),
        }
    }
}

fn install_secret(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let data = std::fs::read(from)?;
    if let Some(parent) = to.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    sys::write_atomic(to, &data, 0o600)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
}

/// The data partition on /var, grown to the end of the card once.
fn mount_data(host: &Host, cfg: &NodeConfig) -> Result<(), StepError> {
    let Some(uuid) = cfg.storage.data_partuuid.as_deref() else {
        say("no data partition configured: /var stays on the root filesystem");
        return Ok(());
    };
    let Some(dev) = find_with_timeout(host, uuid, Duration::from_secs(15)) else {
        say(&format!(
            "data partition PARTUUID={uuid} not found: /var stays on the root filesystem"
        ));
        return Ok(());
    };
    if !var_mounted(host) {
        check_data(host, &dev);
        host.sys
            .mount(
                &dev.to_string_lossy(),
                &host.path("/var"),
                Some("ext4"),
                libc::MS_NOATIME,
                None,
            )
            .map_err(|source| StepError::MountData {
                dev: dev.clone(),
                source,
            })?;
    }
    say(&format!("data {} on /var", dev.display()));
    if !host.path(GROWN_MARKER).exists() {
        grow_data(host, &dev)?;
    }
    Ok(())
}

/// e2fsck on the data filesystem before the kernel sees it ([`fsck`]). Whatever the verdict,
/// the mount that follows decides: an unchecked /var on the card is still better than none.
fn check_data(host: &Host, dev: &Path) {
    use crate::contract::paths::E2FSCK;
    match fsck::check(&host.path(E2FSCK), dev, &mut |l| say(l)) {
        Err(e) => say(&format!(
            "{E2FSCK}: {e}; mounting {} unchecked",
            dev.display()
        )),
        Ok(fsck::Outcome::Clean | fsck::Outcome::Preened) => {}
        Ok(fsck::Outcome::Repaired) => say(&format!(
            "{}: e2fsck -p gave up, e2fsck -fy repaired it",
            dev.display()
        )),
        Ok(fsck::Outcome::Failed(code)) => say(&format!(
            "{}: e2fsck -fy left errors (exit {code}); mounting it anyway",
            dev.display()
        )),
    }
}

/// Grows the data partition and its filesystem, and records that it is done.
fn grow_data(host: &Host, dev: &Path) -> Result<(), StepError> {
    let part = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((disk, partno)) = grow::disk_of(&host.path("/sys/class/block"), &part) else {
        return Err(StepError::NoDisk(part));
    };
    let disk_path = host.path("/dev").join(&disk);
    let what = grow_to_end(host, dev, &disk_path, partno).map_err(|reason| StepError::Grow {
        part: part.clone(),
        reason,
    })?;
    say(&format!("grow {part}: {what}"));
    let _ = std::fs::create_dir_all(host.path("/var/lib/piimg"));
    if let Err(e) = sys::write_atomic(&host.path(GROWN_MARKER), b"grown\n", 0o644) {
        say(&format!("{GROWN_MARKER}: {e}"));
    }
    Ok(())
}

/// The partition table, then the kernel's view of the partition, then the filesystem on /var.
/// Returns what changed.
fn grow_to_end(host: &Host, dev: &Path, disk_path: &Path, partno: u32) -> Result<String, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk_path)
        .map_err(|e| format!("{}: {e}", disk_path.display()))?;
    let bytes = grow::device_bytes(&f).map_err(|e| e.to_string())?;
    let grown = grow::grow_partition(&f, bytes, partno).map_err(|e| e.to_string())?;
    let Some(g) = grown else {
        // The table reached the end on an earlier boot; the filesystem may not have.
        return match grow::finish_resize(&*host.sys, dev, &host.path("/var")) {
            Ok(None) => Ok("already at the end of the disk".into()),
            Ok(Some((from, to))) => Ok(format!(
                "resumed an interrupted growth: filesystem {from} -> {to} bytes"
            )),
            Err(e) => Err(format!("EXT4_IOC_RESIZE_FS: {e}")),
        };
    };
    host.sys
        .resize_partition(&f, partno, &g)
        .map_err(|e| format!("BLKPG: {e}"))?;
    let blocks = host
        .sys
        .resize_ext4(&host.path("/var"), g.new_sectors * 512)
        .map_err(|e| format!("EXT4_IOC_RESIZE_FS: {e}"))?;
    Ok(format!(
        "{} sectors -> {} sectors ({blocks} blocks)",
        g.old_sectors, g.new_sectors
    ))
}

/// The kernel's modprobe helper, modules, sysctls. The helper comes first: a module may ask for
/// another while it probes (brcmfmac's firmware callback requests its vendor module), and that
/// request must reach a modprobe that exists.
fn setup_kernel(host: &Host) {
    install_modprobe_helper(host);
    load_modules(host);
    apply_sysctls(host);
}

fn load_modules(host: &Host) {
    let loader = modules::Loader::for_running_kernel(&*host.sys, &host.root);
    let db = modules::ModuleDb::load(&loader.module_dir);
    let list = std::fs::read_to_string(host.path(MODULES_LOAD)).unwrap_or_default();
    for name in modules::parse_list(&list) {
        if db.is_builtin(&name) || loader.is_loaded(&name.replace('-', "_")) {
            continue;
        }
        if let Err(e) = loader.modprobe(&*host.sys, &db, &name) {
            say(&format!("modprobe {name}: {e}"));
        }
    }
}

fn apply_sysctls(host: &Host) {
    // bridge-nf-call-* exist only with br_netfilter (Kubernetes nodes); a failed load of it is
    // already reported above, so their absence is not news.
    let bridge = host.path("/proc/sys/net/bridge").exists();
    let wanted: Vec<(&str, &str)> = sysctl::DEFAULTS
        .iter()
        .copied()
        .filter(|(k, _)| bridge || !k.starts_with("net.bridge."))
        .collect();
    for (k, e) in sysctl::apply(&host.path("/proc/sys"), &wanted) {
        say(&format!("sysctl {k}: {e}"));
    }
}

fn install_modprobe_helper(host: &Host) {
    let link = host.path(MODPROBE_LINK);
    let _ = std::fs::create_dir_all(host.path("/run/piimg"));
    let _ = std::fs::remove_file(&link);
    match std::os::unix::fs::symlink(agent_exe(), &link).and_then(|_| {
        std::fs::write(
            host.path("/proc/sys/kernel/modprobe"),
            format!("{MODPROBE_LINK}\n"),
        )
    }) {
        Ok(()) => {}
        Err(e) => say(&format!("kernel modprobe helper: {e}")),
    }
}

/// Before anything reads the clock: no earlier than the build time or the last known time
/// (after /var is mounted, where that is saved).
fn set_clock(host: &Host, cfg: &NodeConfig) {
    let saved = std::fs::read_to_string(host.path(clock::SAVED_TIME)).ok();
    let floor = clock::floor(cfg.build_epoch, saved.as_deref());
    if let Some(t) = clock::clamp_target(host.sys.realtime_secs(), floor) {
        let from = if floor > cfg.build_epoch {
            "the last known time"
        } else {
            "build time"
        };
        match host.sys.set_realtime(t, 0) {
            Ok(()) => say(&format!("clock set to {from} {t}")),
            Err(e) => say(&format!("clock: {e}")),
        }
    }
}

fn save_time(host: &Host) {
    let now = host.sys.realtime_secs();
    let _ = sys::write_atomic(
        &host.path(clock::SAVED_TIME),
        format!("{now}\n").as_bytes(),
        0o644,
    );
}

fn spawn_ntp(host: &Host, servers: Vec<String>, build_epoch: i64) {
    if servers.is_empty() {
        return;
    }
    let host = host.clone();
    let _ = std::thread::Builder::new()
        .name("ntp".into())
        .spawn(move || {
            let mut announced = false;
            loop {
                let synced = sync_clock(&host, &servers, build_epoch, &mut announced);
                save_time(&host);
                // Quick retries until the first success, then hourly.
                std::thread::sleep(Duration::from_secs(if synced { 3600 } else { 15 }));
            }
        });
}

/// Sets the clock from the first server that answers; says so (and marks it) the first time.
fn sync_clock(host: &Host, servers: &[String], build_epoch: i64, announced: &mut bool) -> bool {
    for s in servers {
        let Ok((secs, nanos)) = clock::query(s, Duration::from_secs(3)) else {
            continue;
        };
        // A server claiming a time before the build is wrong: ignore it.
        if secs >= build_epoch && host.sys.set_realtime(secs, nanos as i64).is_ok() {
            if !*announced {
                say(&format!("clock synced from {s}: {secs}"));
                let marker = host.path(clock::SYNCED_MARKER);
                if let Err(e) = sys::write_atomic(&marker, b"synced\n", 0o644) {
                    say(&format!("{}: {e}", clock::SYNCED_MARKER));
                }
                *announced = true;
            }
            return true;
        }
    }
    false
}

/// Loopback and resolv.conf now; the node's interface from a thread, because a USB NIC may
/// appear only seconds later.
fn spawn_network(host: &Host, cfg: &NodeConfig, up: Arc<AtomicBool>) {
    match host.sys.loopback_up() {
        Ok(()) => {}
        Err(e) => say(&format!("loopback: {e}")),
    }
    if let Err(e) = std::fs::write(host.path(RESOLV_CONF), net::resolv_conf(&cfg.network)) {
        say(&format!("{RESOLV_CONF}: {e}"));
    }
    let host = host.clone();
    let network = cfg.network.clone();
    let r = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || bring_up_network(&host, &network, &up));
    if let Err(e) = r {
        say(&format!("network thread: {e}"));
    }
}

/// Applies the network until its interface has carrier, sets `up`, then keeps it applied.
/// A Wi-Fi interface is configured once wpa_supplicant runs on it: its carrier is the
/// association the supplicant makes.
fn bring_up_network(host: &Host, network: &Network, up: &AtomicBool) {
    let started = Instant::now();
    let mut complained = false;
    if network.wifi.is_some() {
        wait_for_supplicant(host, &network.interface, started);
    }
    loop {
        let res = host.sys.configure_network(network);
        let carrier = net::has_carrier(&host.path("/sys/class/net"), &network.interface);
        match res {
            Ok(()) if carrier => {
                say(&format!(
                    "network up {} {}",
                    network.interface, network.address
                ));
                up.store(true, Ordering::SeqCst);
                // A USB NIC that re-enumerates comes back without its address.
                host.sys.keep_network(network, Duration::from_secs(30));
                return;
            }
            Ok(()) if !complained && started.elapsed() > Duration::from_secs(30) => {
                say(&format!(
                    "network: no carrier on {} yet; still waiting",
                    network.interface
                ));
                complained = true;
            }
            Err(e) if !complained && started.elapsed() > Duration::from_secs(30) => {
                say(&format!("network: {e}; retrying in the background"));
                complained = true;
            }
            _ => {}
        }
        // The USB NIC usually appears within seconds of boot: look often at first so
        // `ready` follows it closely, then settle to once a second.
        let pause = if started.elapsed() < Duration::from_secs(20) {
            100
        } else {
            1000
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
}

/// Until wpa_supplicant's control socket for `interface` exists (the supervisor starts it; it
/// exits and is restarted while brcmfmac has not yet created the interface). After 30 s, and
/// whenever the reason changes, the console says which of the two is missing.
fn wait_for_supplicant(host: &Host, interface: &str, started: Instant) {
    let socket = host.path(&format!(
        "{}/{interface}",
        crate::contract::paths::WPA_CTRL_DIR
    ));
    let iface = host.path(&format!("/sys/class/net/{interface}"));
    let mut said: Option<bool> = None;
    while !socket.exists() {
        let has_iface = iface.exists();
        if started.elapsed() > Duration::from_secs(30) && said != Some(has_iface) {
            say(&if has_iface {
                format!("network: wpa_supplicant has not started on {interface} yet; still waiting")
            } else {
                format!(
                    "network: no {interface}: the Wi-Fi driver made no interface (no chip, or its \
                     firmware is missing: see the kernel log for brcmfmac); still waiting"
                )
            });
            said = Some(has_iface);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup(host: &Host) -> Node {
    mount_api(host);
    say("stage2 start");
    host.sys.set_child_subreaper();
    let mut cfg = read_config(host);
    let net_up = Arc::new(AtomicBool::new(false));
    let specs = match &mut cfg {
        Some(cfg) => prepare(host, cfg, &net_up),
        None => {
            setup_kernel(host);
            Vec::new()
        }
    };
    let opts = Options {
        redact: cfg
            .as_ref()
            .map(NodeConfig::secret_strings)
            .unwrap_or_default(),
        ..Options::default()
    };
    let sup = Supervisor::new(specs, opts);
    if let Some(cfg) = &cfg {
        serve_status(cfg, &sup);
    }
    let watchdog = arm_watchdog(host, cfg.as_ref());
    Node {
        cfg,
        sup,
        net_up,
        ready: false,
        watchdog,
    }
}

/// The steps that need the node config, in boot order. Returns the services to supervise.
/// `cfg` may change: a netbooted node can take its config from its card.
fn prepare(host: &Host, cfg: &mut NodeConfig, net_up: &Arc<AtomicBool>) -> Vec<ServiceSpec> {
    set_clock(host, cfg);
    report(
        host.sys
            .sethostname(&cfg.hostname)
            .map_err(StepError::Hostname),
    );
    match (&cfg.storage.data_partuuid, cfg.storage.data_label.clone()) {
        (None, Some(label)) => netboot_storage(host, cfg, &label, DATA_CARD_WAIT),
        _ => report(mount_data(host, cfg)),
    }
    if roles::lacks_card_secrets(cfg) {
        say(&format!(
            "this node's secrets card is missing: flash out/{}.secrets.img — piimg build \
             --netboot writes it — to a card in the node's slot; kubeadm and kubelet do not \
             start without it",
            cfg.hostname
        ));
    }
    // Again with the time saved on /var, now that it is mounted.
    set_clock(host, cfg);
    for d in ["/var/log", "/var/lib/piimg", "/var/lib/kubelet"] {
        let _ = std::fs::create_dir_all(host.path(d));
    }
    setup_kernel(host);
    spawn_network(host, cfg, net_up.clone());
    spawn_ntp(host, cfg.network.ntp.clone(), cfg.build_epoch);
    roles::services(cfg, &agent_exe())
}

/// The read-only status endpoint, when the profile asks for one.
fn serve_status(cfg: &NodeConfig, sup: &Supervisor) {
    if cfg.agent.status_port == 0 {
        return;
    }
    let src = status::Source {
        hostname: cfg.hostname.clone(),
        role: cfg.role.to_string(),
        addresses: vec![cfg.network.address.to_string()],
        services: sup.status_handle(),
        started: Instant::now(),
    };
    let ip = cfg
        .agent
        .status_bind
        .unwrap_or_else(|| cfg.network.address.addr());
    let addr = std::net::SocketAddr::new(ip, cfg.agent.status_port);
    if let Err(e) = status::spawn_when_bindable(addr, src, say) {
        say(&format!("status endpoint: {e}"));
    }
}

/// The hardware watchdog, unless the profile or the kernel command line turns it off.
fn arm_watchdog(host: &Host, cfg: Option<&NodeConfig>) -> Option<Watchdog> {
    let cmdline = std::fs::read_to_string(host.path("/proc/cmdline")).unwrap_or_default();
    match cfg {
        Some(c) if c.agent.watchdog && crate::cmdline::turned_off(&cmdline, "piimg.watchdog") => {
            say("watchdog: off (piimg.watchdog=0 on the kernel command line)");
            None
        }
        Some(c) if c.agent.watchdog => match Watchdog::open(&host.path(watchdog::DEVICE)) {
            Ok(w) => {
                say(&format!(
                    "watchdog: {} armed (timeout {} s)",
                    watchdog::DEVICE,
                    w.timeout_hint().as_secs()
                ));
                Some(w)
            }
            Err(e) => {
                say(&format!(
                    "watchdog: {}: {e}; running without",
                    watchdog::DEVICE
                ));
                None
            }
        },
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    Reboot,
    PowerOff,
}

/// What a signal to PID 1 means: SIGINT (ctrl-alt-del) and SIGTERM reboot; SIGPWR and SIGUSR2
/// power off (busybox conventions); others are ignored.
pub fn signal_action(sig: libc::c_int) -> Option<Halt> {
    match sig {
        libc::SIGINT | libc::SIGTERM => Some(Halt::Reboot),
        libc::SIGPWR | libc::SIGUSR2 => Some(Halt::PowerOff),
        _ => None,
    }
}

fn main_loop(node: &mut Node) -> Halt {
    loop {
        // Until `ready` is said, wake often: it waits on the network thread, which has no way
        // to interrupt the signal wait.
        let poll = Duration::from_millis(if node.ready { 1000 } else { 100 });
        if let Some(w) = node.watchdog.as_mut() {
            if let Err(e) = w.pet() {
                say(&format!("watchdog: {e}"));
            }
        }
        if let Some(sig) = node.sup.step(poll) {
            if let Some(h) = signal_action(sig) {
                return h;
            }
        }
        let net_ok = node.cfg.is_none() || node.net_up.load(Ordering::SeqCst);
        if !node.ready && net_ok && node.sup.all_started() {
            node.ready = true;
            // What is left for pods; a netbooted node's root image and overlay live in RAM.
            if let Some(m) = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| memory_line(&t))
            {
                say(&m);
            }
            // The guest's own clock since power-on: what `piimg qemu` and the tests report.
            match sys::uptime() {
                Some(up) => say(&format!("ready (uptime {up:.2} s)")),
                None => say("ready"),
            }
        }
    }
}

fn shutdown(host: &Host, node: &mut Node, how: Halt) -> ! {
    say(&format!("shutdown: {how:?}"));
    stop_processes(host, node);
    let e = halt(host, how);
    loop {
        say(&format!("reboot: {e}; halted"));
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The services, then every other process: SIGTERM, three seconds, SIGKILL.
fn stop_processes(host: &Host, node: &mut Node) {
    // Stopping services may take longer than the watchdog's timeout, and a reset half-way
    // through unmounting is worse than the hang it would cure.
    if let Some(w) = node.watchdog.take() {
        let _ = w.disarm();
    }
    node.sup.stop_all();
    let _ = host.sys.kill(-1, libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        node.sup.reap(Instant::now());
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = host.sys.kill(-1, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    node.sup.reap(Instant::now());
}

/// Unmounts what it can, leaves `/` read-only, and reboots or powers off; returns only why
/// that failed.
fn halt(host: &Host, how: Halt) -> io::Error {
    host.sys.sync();
    for m in ["/var", "/tmp", "/sys/fs/bpf"] {
        let target = host.path(m);
        if host.sys.umount(&target, 0).is_err() {
            let _ = host.sys.umount(&target, libc::MNT_DETACH);
        }
    }
    // A netbooted root is an overlay on RAM: nothing to protect, and remounting it read-only
    // would only fail on what is still open.
    let mountinfo = std::fs::read_to_string(host.path("/proc/self/mountinfo")).unwrap_or_default();
    if mounts::root_fstype(&mountinfo).as_deref() != Some("overlay") {
        let _ = host.sys.mount(
            "",
            &host.path("/"),
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        );
    }
    host.sys.sync();
    let cmd = match how {
        Halt::Reboot => libc::RB_AUTOBOOT,
        Halt::PowerOff => libc::RB_POWER_OFF,
    };
    crate::console::flush(Duration::from_secs(3));
    host.sys.reboot(cmd)
}

/// `memory: N MiB available of M MiB` from /proc/meminfo's MemAvailable and MemTotal.
fn memory_line(meminfo: &str) -> Option<String> {
    let kib = |key: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    Some(format!(
        "memory: {} MiB available of {} MiB",
        kib("MemAvailable:")? / 1024,
        kib("MemTotal:")? / 1024
    ))
}

pub fn run() -> ! {
    let host = Host::real();
    // Before any thread exists, so every thread inherits the mask and sigtimedwait sees them.
    sys::block_signals(&sys::HANDLED_SIGNALS);
    host.sys.disable_cad();
    // After the mask, so the writer thread inherits it like every other thread.
    crate::console::start_async(Box::new(std::io::stderr()));
    let mut node = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup(&host))) {
        Ok(n) => n,
        Err(_) => {
            say("setup panicked; running the reaper only");
            Node {
                cfg: None,
                sup: Supervisor::new(Vec::new(), Options::default()),
                net_up: Arc::new(AtomicBool::new(true)),
                ready: false,
                watchdog: None,
            }
        }
    };
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main_loop(&mut node))) {
            Ok(how) => shutdown(&host, &mut node, how),
            Err(_) => {
                say("main loop panicked; continuing");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::table::Mbr;
    use crate::node::Role;
    use crate::syscall::fake::{put, put_partition, RecordingSyscall, RELEASE};

    const MIB: u64 = 1 << 20;

    fn load_balancer() -> NodeConfig {
        let mut c = crate::node::tests::sample();
        c.hostname = "lb1".into();
        c.role = Role::LoadBalancer;
        c.network.gateway = None;
        c.kubernetes = None;
        c.load_balancer = None;
        c.agent.status_port = 0;
        c
    }

    /// A 64 MiB card whose MBR holds a boot partition and a 4 MiB data partition 3.
    fn card(root: &Path) {
        let mut mbr = [0u8; 512];
        mbr[440..444].copy_from_slice(&0x0bad_c0de_u32.to_le_bytes());
        for (slot, kind, first) in [(0, 0x0c_u8, 2048_u32), (2, 0x83, 10240)] {
            let o = 446 + slot * 16;
            mbr[o + 4] = kind;
            mbr[o + 8..o + 12].copy_from_slice(&first.to_le_bytes());
            mbr[o + 12..o + 16].copy_from_slice(&8192_u32.to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        put(root, "/dev/mmcblk0", &mbr);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("dev/mmcblk0"))
            .unwrap();
        f.set_len(64 * MIB).unwrap();
        put_partition(root, "mmcblk0", 1, "0badc0de-01");
        put_partition(root, "mmcblk0", 3, "0badc0de-03");
    }

    /// A root filesystem as the builder writes it for `cfg`, on a card whose NIC has carrier.
    fn rootfs(cfg: &NodeConfig) -> (tempfile::TempDir, Host, Arc<RecordingSyscall>) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        put(root, NODE_CONFIG_PATH, &cfg.to_json());
        put(root, MODULES_LOAD, b"# netfilter\nbridge\n");
        let dep =
            "kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n\
                   kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz\nkernel/net/llc/llc.ko.xz:\n";
        put(
            root,
            &format!("/lib/modules/{RELEASE}/modules.dep"),
            dep.as_bytes(),
        );
        for m in ["bridge/bridge", "802/stp", "llc/llc"] {
            put(
                root,
                &format!("/lib/modules/{RELEASE}/kernel/net/{m}.ko.xz"),
                b"module",
            );
        }
        std::fs::create_dir_all(root.join("proc/sys/net/ipv4")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        put(root, "/sys/class/net/eth0/carrier", b"1\n");
        put(root, watchdog::DEVICE, b"");
        card(root);
        let (host, fake) = RecordingSyscall::host(root);
        (t, host, fake)
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    const API_MOUNTS: [&str; 9] = [
        "mount proc /proc -t proc -o nosuid,nodev,noexec",
        "mount sysfs /sys -t sysfs -o nosuid,nodev,noexec",
        "mount devtmpfs /dev -t devtmpfs -o nosuid,mode=0755",
        "mount devpts /dev/pts -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666",
        "mount shm /dev/shm -t tmpfs -o nosuid,nodev,mode=1777",
        "mount run /run -t tmpfs -o nosuid,nodev,mode=0755",
        "mount tmp /tmp -t tmpfs -o nosuid,nodev,mode=1777",
        "mount cgroup2 /sys/fs/cgroup -t cgroup2 -o nosuid,nodev,noexec,nsdelegate",
        "mount bpf /sys/fs/bpf -t bpf -o nosuid,nodev,noexec,mode=0700",
    ];

    fn with_api_mounts(rest: &[&str]) -> Vec<String> {
        API_MOUNTS
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
    }

    /// The supervisor's services by name, in start order.
    fn service_names(node: &Node) -> Vec<String> {
        node.sup
            .status_handle()
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn boot_mounts_and_grows_var_loads_modules_brings_up_network_and_supervises() {
        let cfg = load_balancer();
        let (_t, host, fake) = rootfs(&cfg);
        // The last time this node knew, on /var.
        put(&host.root, clock::SAVED_TIME, b"1900000000\n");
        let node = setup(&host);
        wait_for("the network thread", || {
            fake.calls().iter().any(|c| c.starts_with("keep_network"))
        });
        let grown = 64 * MIB / 512 - 10240;
        assert_eq!(
            fake.calls(),
            with_api_mounts(&[
                "set_child_subreaper",
                "clock_settime 1900000000",
                "sethostname lb1",
                "mount /dev/mmcblk0p3 /var -t ext4 -o noatime",
                &format!("blkpg_resize /dev/mmcblk0 3 start=10240 sectors={grown}"),
                &format!("resize_ext4 /var {}", grown * 512),
                &format!("finit_module /lib/modules/{RELEASE}/kernel/net/llc/llc.ko.xz compressed"),
                &format!("finit_module /lib/modules/{RELEASE}/kernel/net/802/stp.ko.xz compressed"),
                &format!(
                    "finit_module /lib/modules/{RELEASE}/kernel/net/bridge/bridge.ko.xz compressed"
                ),
                "loopback_up",
                "configure_network eth0 10.0.2.15/24",
                "keep_network eth0 every 30s",
            ])
        );
        assert!(node.net_up.load(Ordering::SeqCst));
        let services = service_names(&node);
        assert_eq!(services, vec!["haproxy"]);
        assert!(node.watchdog.is_some());
        let read = |p: &str| std::fs::read_to_string(host.path(p)).unwrap();
        assert_eq!(read(GROWN_MARKER), "grown\n");
        let mbr = Mbr::parse(&std::fs::read(host.path("/dev/mmcblk0")).unwrap()[..512]).unwrap();
        assert_eq!(u64::from(mbr.entries[2].sectors), grown);
        assert_eq!(read("/proc/sys/net/ipv4/ip_forward"), "1\n");
        assert_eq!(
            read("/proc/sys/kernel/modprobe"),
            format!("{MODPROBE_LINK}\n")
        );
        assert_eq!(read(RESOLV_CONF), net::resolv_conf(&cfg.network));
    }

    #[test]
    fn a_wifi_node_configures_wlan0_only_once_wpa_supplicant_runs_on_it() {
        let mut cfg = load_balancer();
        cfg.network.interface = "wlan0".into();
        cfg.network.wifi = Some(crate::node::Wifi {
            ssid: "lab".into(),
            country: "DE".into(),
        });
        let (_t, host, fake) = rootfs(&cfg);
        put(&host.root, "/sys/class/net/wlan0/carrier", b"1\n");
        let node = setup(&host);
        let services = service_names(&node);
        assert_eq!(services, ["wpa_supplicant", "haproxy"]);
        std::thread::sleep(Duration::from_millis(300));
        let configured = || {
            fake.calls()
                .iter()
                .any(|c| c.starts_with("configure_network"))
        };
        assert!(!configured(), "{:?}", fake.calls());
        assert!(!node.net_up.load(Ordering::SeqCst));
        // What wpa_supplicant's ctrl_interface makes when it runs on the interface.
        put(&host.root, "/run/wpa_supplicant/wlan0", b"");
        wait_for("the network thread", || {
            fake.calls().iter().any(|c| c.starts_with("keep_network"))
        });
        let calls = fake.calls();
        let tail: Vec<&str> = calls[calls.len() - 2..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "configure_network wlan0 10.0.2.15/24",
                "keep_network wlan0 every 30s"
            ]
        );
        assert!(node.net_up.load(Ordering::SeqCst));
    }

    #[test]
    fn without_a_node_config_only_the_kernel_is_set_up() {
        let (_t, host, fake) = rootfs(&load_balancer());
        std::fs::remove_file(host.path(NODE_CONFIG_PATH)).unwrap();
        let node = setup(&host);
        assert_eq!(
            fake.calls(),
            with_api_mounts(&[
                "set_child_subreaper",
                &format!("finit_module /lib/modules/{RELEASE}/kernel/net/llc/llc.ko.xz compressed"),
                &format!("finit_module /lib/modules/{RELEASE}/kernel/net/802/stp.ko.xz compressed"),
                &format!(
                    "finit_module /lib/modules/{RELEASE}/kernel/net/bridge/bridge.ko.xz compressed"
                ),
            ])
        );
        assert!(node.cfg.is_none() && node.watchdog.is_none());
        assert!(node.sup.all_started(), "no services to start");
    }

    #[test]
    fn a_failed_var_mount_is_the_steps_error_and_nothing_grows() {
        let (_t, host, fake) = rootfs(&load_balancer());
        fake.fail("mount /dev/mmcblk0p3 /var", libc::ENODEV);
        let e = mount_data(&host, &load_balancer()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "mount {} on /var: No such device (os error 19)",
                host.path("/dev/mmcblk0p3").display()
            )
        );
        assert_eq!(
            fake.calls(),
            vec!["mount /dev/mmcblk0p3 /var -t ext4 -o noatime"]
        );
        assert!(!host.path(GROWN_MARKER).exists());
    }

    #[test]
    fn a_refused_partition_resize_is_the_grow_error_and_is_tried_next_boot() {
        let (_t, host, fake) = rootfs(&load_balancer());
        fake.fail("blkpg_resize", libc::EBUSY);
        let e = mount_data(&host, &load_balancer()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "grow mmcblk0p3: BLKPG: Device or resource busy (os error 16)"
        );
        let calls = fake.calls();
        assert!(
            calls.last().unwrap().starts_with("blkpg_resize"),
            "{calls:?}"
        );
        assert!(!host.path(GROWN_MARKER).exists());
    }

    #[test]
    fn a_grown_var_is_only_mounted() {
        let (_t, host, fake) = rootfs(&load_balancer());
        put(&host.root, GROWN_MARKER, b"grown\n");
        put(
            &host.root,
            "/proc/self/mountinfo",
            b"22 1 179:2 / / ro shared:1 - ext4 /dev/mmcblk0p2 ro\n",
        );
        mount_data(&host, &load_balancer()).unwrap();
        assert_eq!(
            fake.calls(),
            vec!["mount /dev/mmcblk0p3 /var -t ext4 -o noatime"]
        );
        // Mounted already (a restarted stage): nothing at all.
        put(
            &host.root,
            "/proc/self/mountinfo",
            b"30 22 179:3 / /var rw,noatime - ext4 /dev/mmcblk0p3 rw\n",
        );
        mount_data(&host, &load_balancer()).unwrap();
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn halting_unmounts_remounts_root_read_only_and_powers_off() {
        let (_t, host, fake) = rootfs(&load_balancer());
        fake.fail("umount /tmp", libc::EBUSY);
        let e = halt(&host, Halt::PowerOff);
        assert_eq!(e.raw_os_error(), Some(libc::ENOSYS));
        assert_eq!(
            fake.calls(),
            vec![
                "sync",
                "umount /var",
                "umount /tmp",
                "umount /tmp -l",
                "umount /sys/fs/bpf",
                "mount '' / -o remount,ro",
                "sync",
                "reboot power-off",
            ]
        );
    }

    #[test]
    fn memory_is_reported_from_meminfo() {
        let m = "MemTotal:         949392 kB\nMemFree:          800000 kB\nMemAvailable:     831488 kB\n";
        assert_eq!(
            memory_line(m).as_deref(),
            Some("memory: 812 MiB available of 927 MiB")
        );
        assert_eq!(memory_line("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn signals_documented() {
        assert_eq!(signal_action(libc::SIGINT), Some(Halt::Reboot));
        assert_eq!(signal_action(libc::SIGTERM), Some(Halt::Reboot));
        assert_eq!(signal_action(libc::SIGPWR), Some(Halt::PowerOff));
        assert_eq!(signal_action(libc::SIGUSR2), Some(Halt::PowerOff));
        assert_eq!(signal_action(libc::SIGHUP), None);
    }

    /// A netbooted node's config: /var by label, no data partition.
    fn netbooted() -> NodeConfig {
        let mut c = load_balancer();
        c.storage = crate::node::Storage {
            root_partuuid: None,
            data_partuuid: None,
            data_label: Some("piimg-data".into()),
        };
        c
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn assert_skeleton(host: &Host) {
        for (rel, m) in crate::contract::paths::DATA_SKELETON {
            assert_eq!(mode(&host.path("/var").join(rel)), *m, "/var/{rel}");
        }
    }

    /// A card's /dev/sda1 holding an ext4 filesystem labelled `label` (mke2fs's), and the
    /// host's e2fsck where the image has its own, so stage 2 checks a real filesystem.
    fn data_card(host: &Host, label: &str) {
        put_partition(&host.root, "sda", 1, "12345678-01");
        crate::blockdev::tests::mkfs_ext4(&host.path("/dev/sda1"), label);
        let e2fsck = ["/usr/sbin/e2fsck", "/sbin/e2fsck"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("e2fsprogs on the host");
        let at = host.path(crate::contract::paths::E2FSCK);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(e2fsck, at).unwrap();
    }

    /// Whether `line` is e2fsck -p's verdict "clean" on the filesystem of [`data_card`] (e2fsck
    /// names a filesystem by its label).
    fn says_clean(line: &str) -> bool {
        line.strip_prefix("piimg-agent: e2fsck -p: piimg-data: clean, ")
            .is_some_and(|rest| rest.ends_with(" blocks"))
    }

    #[test]
    fn netboot_mounts_the_card_whose_ext4_label_matches_on_var() {
        let cfg = netbooted();
        let (_t, host, fake) = rootfs(&cfg);
        data_card(&host, "piimg-data");
        // Grown on an earlier boot (growing is mount_data's, tested there).
        put(&host.root, GROWN_MARKER, b"grown\n");
        let lines = crate::console::capture_thread();
        let mut got = cfg.clone();
        netboot_storage(&host, &mut got, "piimg-data", Duration::ZERO);
        assert_eq!(
            fake.calls(),
            vec!["mount /dev/sda1 /var -t ext4 -o noatime"]
        );
        assert_eq!(got, cfg);
        assert_skeleton(&host);
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(says_clean(&lines[0]), "{lines:#?}");
        assert_eq!(
            lines[1],
            format!(
                "piimg-agent: data LABEL=piimg-data {} on /var",
                host.path("/dev/sda1").display()
            )
        );
        // Already mounted (a restarted stage): only the skeleton is looked at.
        put(
            &host.root,
            "/proc/self/mountinfo",
            b"30 22 8:1 / /var rw,noatime - ext4 /dev/sda1 rw\n",
        );
        mount_var_by_label(&host, "piimg-data", Duration::ZERO);
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn netboot_without_a_card_puts_var_on_a_tmpfs_and_warns() {
        let cfg = netbooted();
        let (_t, host, fake) = rootfs(&cfg);
        data_card(&host, "someone-else");
        let lines = crate::console::capture_thread();
        let started = Instant::now();
        mount_var_by_label(&host, "piimg-data", Duration::from_millis(500));
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "did not wait"
        );
        assert_eq!(fake.calls(), vec!["mount var /var -t tmpfs -o mode=0755"]);
        assert_skeleton(&host);
        let lines = lines.lock().unwrap().clone();
        assert_eq!(
            lines,
            vec![
                "piimg-agent: no card with an ext4 filesystem labelled piimg-data",
                "piimg-agent: WARNING: /var is a tmpfs: this node's state (kubelet, containerd, \
                 etcd, logs) will not survive a reboot",
            ]
        );
    }

    #[test]
    fn a_card_that_will_not_mount_leaves_var_on_a_tmpfs() {
        let (_t, host, fake) = rootfs(&netbooted());
        data_card(&host, "piimg-data");
        fake.fail("mount /dev/sda1", libc::EIO);
        mount_var_by_label(&host, "piimg-data", Duration::ZERO);
        assert_eq!(
            fake.calls(),
            vec![
                "mount /dev/sda1 /var -t ext4 -o noatime",
                "mount var /var -t tmpfs -o mode=0755",
            ]
        );
    }

    /// A netbooted worker's whole config, as its card holds it; its root image holds
    /// `.public()`.
    fn netbooted_worker() -> NodeConfig {
        let mut c = crate::node::tests::sample();
        c.storage = netbooted().storage;
        c.agent.status_port = 0;
        c
    }

    const CA_KEY: &[u8] = b"-----BEGIN PRIVATE KEY----- secret";

    /// A card labelled piimg-data, mounted on /var (the fake mounts nothing: its files are put
    /// there), whose secrets are `cfg` and a CA key.
    fn secrets_card(host: &Host, cfg: Option<&NodeConfig>) {
        data_card(host, "piimg-data");
        put(&host.root, GROWN_MARKER, b"grown\n");
        let secrets = crate::contract::paths::CARD_SECRETS;
        if let Some(cfg) = cfg {
            put(
                &host.root,
                &format!("{secrets}{NODE_CONFIG_PATH}"),
                &cfg.to_json(),
            );
        }
        put(
            &host.root,
            &format!("{secrets}/etc/kubernetes/pki/ca.key"),
            CA_KEY,
        );
    }

    #[test]
    fn the_nodes_own_card_secrets_are_copied_into_the_root_mode_0600_and_become_its_config() {
        use std::os::unix::fs::MetadataExt;
        let whole = netbooted_worker();
        let cfg = whole.public();
        let (_t, host, _fake) = rootfs(&cfg);
        secrets_card(&host, Some(&whole));
        let secrets = crate::contract::paths::CARD_SECRETS;
        std::os::unix::fs::symlink("/etc/shadow", host.path(secrets).join("link")).unwrap();
        let lines = crate::console::capture_thread();
        let mut got = cfg.clone();
        netboot_storage(&host, &mut got, "piimg-data", Duration::ZERO);
        assert_eq!(got, whole);
        assert!(!roles::lacks_card_secrets(&got));
        for (path, content) in [
            (NODE_CONFIG_PATH, whole.to_json()),
            ("/etc/kubernetes/pki/ca.key", CA_KEY.to_vec()),
        ] {
            let p = host.path(path);
            assert_eq!(std::fs::read(&p).unwrap(), content, "{path}");
            assert_eq!(mode(&p), 0o600, "{path}");
            assert_eq!(std::fs::metadata(&p).unwrap().uid(), 0, "{path}");
        }
        assert_eq!(mode(&host.path("/etc/kubernetes/pki")), 0o755);
        assert!(!host.path("/link").exists());
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines.contains(&"piimg-agent: card secrets: 2 files copied from /var/lib/piimg/secrets into the root".to_string()),
            "{lines:#?}"
        );
        assert!(!lines.iter().any(|l| l.contains("PRIVATE")), "{lines:#?}");
    }

    #[test]
    fn another_nodes_card_gives_none_of_its_secrets_and_the_image_keeps_its_config() {
        let cfg = netbooted_worker().public();
        let (_t, host, _fake) = rootfs(&cfg);
        let mut other = netbooted_worker();
        other.hostname = "w7".into();
        other.network.address = "10.0.2.17/24".parse().unwrap();
        secrets_card(&host, Some(&other));
        let lines = crate::console::capture_thread();
        let mut got = cfg.clone();
        netboot_storage(&host, &mut got, "piimg-data", Duration::ZERO);
        assert_eq!(got, cfg);
        assert_eq!(
            std::fs::read(host.path(NODE_CONFIG_PATH)).unwrap(),
            cfg.to_json()
        );
        assert!(!host.path("/etc/kubernetes").exists());
        let lines = lines.lock().unwrap().clone();
        assert!(says_clean(&lines[0]), "{lines:#?}");
        assert_eq!(
            lines[2..],
            [
                "piimg-agent: the card belongs to another node: w7; none of its secrets copied, \
              w1 keeps its own config"
            ],
            "{lines:#?}"
        );
    }

    #[test]
    fn a_card_of_this_hostname_with_another_config_or_none_gives_no_secrets() {
        let cfg = netbooted_worker().public();
        let mut stale = netbooted_worker();
        stale.network.dns.clear();
        for (card, line) in [
            (
                Some(&stale),
                "piimg-agent: the card's node config differs from this image's (a card from \
                 another build of w1?); none of its secrets copied"
                    .to_string(),
            ),
            (
                None,
                "piimg-agent: card secrets: {root}/var/lib/piimg/secrets/etc/piimg/node.json: \
                 No such file or directory (os error 2); none copied"
                    .to_string(),
            ),
        ] {
            let (_t, host, _fake) = rootfs(&cfg);
            secrets_card(&host, card);
            let lines = crate::console::capture_thread();
            let mut got = cfg.clone();
            netboot_storage(&host, &mut got, "piimg-data", Duration::ZERO);
            assert_eq!(got, cfg);
            assert!(!host.path("/etc/kubernetes").exists());
            let lines = lines.lock().unwrap().clone();
            let line = line.replace("{root}", &host.root.display().to_string());
            assert!(says_clean(&lines[0]), "{lines:#?}");
            assert_eq!(lines[2..], [line], "{lines:#?}");
        }
    }

    #[test]
    fn a_kubernetes_node_netbooted_without_its_card_says_so_and_starts_no_kubeadm_or_kubelet() {
        let cfg = netbooted_worker().public();
        let (_t, host, fake) = rootfs(&cfg);
        data_card(&host, "piimg-data");
        put(&host.root, GROWN_MARKER, b"grown\n");
        let lines = crate::console::capture_thread();
        let node = setup(&host);
        let services = service_names(&node);
        assert_eq!(services, vec!["containerd", "image-import"]);
        let lines = lines.lock().unwrap().clone();
        let said: Vec<&String> = lines.iter().filter(|l| l.contains("card")).collect();
        assert_eq!(
            said,
            [
                "piimg-agent: this node's secrets card is missing: flash out/w1.secrets.img — \
              piimg build --netboot writes it — to a card in the node's slot; kubeadm and \
              kubelet do not start without it"
            ],
            "{lines:#?}"
        );
        // The rest of the node comes up as always.
        assert!(fake.calls().contains(&"sethostname w1".to_string()));
        wait_for("the network thread", || {
            fake.calls().iter().any(|c| c.starts_with("keep_network"))
        });
        // With its card in the slot: kubeadm and kubelet as always, and nothing said.
        let (_t, host, _fake) = rootfs(&cfg);
        secrets_card(&host, Some(&netbooted_worker()));
        let lines = crate::console::capture_thread();
        let node = setup(&host);
        let services = service_names(&node);
        assert_eq!(
            services,
            vec!["containerd", "image-import", "kubeadm", "kubelet"]
        );
        let lines = lines.lock().unwrap().clone();
        assert!(!lines.iter().any(|l| l.contains("missing")), "{lines:#?}");
    }

    #[test]
    fn halting_leaves_an_overlay_root_alone() {
        let (_t, host, fake) = rootfs(&netbooted());
        put(
            &host.root,
            "/proc/self/mountinfo",
            b"30 1 0:40 / / rw - overlay overlay rw,lowerdir=/run/piimg/netroot/lower\n",
        );
        halt(&host, Halt::Reboot);
        assert!(
            !fake.calls().iter().any(|c| c.contains("remount")),
            "{:?}",
            fake.calls()
        );
    }
}
