//! Stage 2, PID 1 of the running node: mounts, storage, kernel setup, identity, network, clock,
//! services, status; then the reaper/supervisor loop until a shutdown signal.

use crate::console::say;
use crate::node::{NodeConfig, NODE_CONFIG_PATH};
use crate::supervise::{Options, Supervisor};
use crate::{blockdev, clock, grow, modules, mounts, net, roles, status, sys, sysctl};
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
    watchdog: Option<crate::watchdog::Watchdog>,
}

fn read_config() -> Option<NodeConfig> {
    match std::fs::read(NODE_CONFIG_PATH) {
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

fn mount_api() {
    for (t, e) in mounts::mount_all(Path::new("/"), &mounts::stage2_mounts()) {
        say(&format!("mount {t}: {e}"));
    }
    let on =
        mounts::enable_cgroup_controllers(Path::new("/sys/fs/cgroup"), &mounts::CGROUP_CONTROLLERS);
    say(&format!("cgroup controllers: {}", on.join(" ")));
}

fn find_with_timeout(partuuid: &str, limit: Duration) -> Option<PathBuf> {
    let end = Instant::now() + limit;
    loop {
        if let Some(p) =
            blockdev::find_partuuid(Path::new("/sys/class/block"), Path::new("/dev"), partuuid)
        {
            return Some(p);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mount_data(cfg: &NodeConfig) {
    let Some(uuid) = cfg.storage.data_partuuid.as_deref() else {
        say("no data partition configured: /var stays on the root filesystem");
        return;
    };
    let Some(dev) = find_with_timeout(uuid, Duration::from_secs(15)) else {
        say(&format!(
            "data partition PARTUUID={uuid} not found: /var stays on the root filesystem"
        ));
        return;
    };
    let already = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mounts::mount_points(&t).iter().any(|p| p == "/var"))
        .unwrap_or(false);
    if !already {
        if let Err(e) = sys::mount(
            &dev.to_string_lossy(),
            Path::new("/var"),
            Some("ext4"),
            libc::MS_NOATIME,
            None,
        ) {
            say(&format!("mount {} on /var: {e}", dev.display()));
            return;
        }
    }
    say(&format!("data {} on /var", dev.display()));
    if !Path::new(GROWN_MARKER).exists() {
        grow_data(&dev);
    }
}

fn grow_data(dev: &Path) {
    let part = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((disk, partno)) = grow::disk_of(Path::new("/sys/class/block"), &part) else {
        say(&format!("grow: cannot find the disk of {part}"));
        return;
    };
    let disk_path = Path::new("/dev").join(&disk);
    let result = (|| -> Result<String, String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk_path)
            .map_err(|e| format!("{}: {e}", disk_path.display()))?;
        let bytes = grow::device_bytes(&f).map_err(|e| e.to_string())?;
        let grown = grow::grow_partition(&f, bytes, partno).map_err(|e| e.to_string())?;
        let Some(g) = grown else {
            // The table reached the end on an earlier boot; the filesystem may not have.
            return match grow::finish_resize(dev, Path::new("/var")) {
                Ok(None) => Ok("already at the end of the disk".into()),
                Ok(Some((from, to))) => Ok(format!(
                    "resumed an interrupted growth: filesystem {from} -> {to} bytes"
                )),
                Err(e) => Err(format!("EXT4_IOC_RESIZE_FS: {e}")),
            };
        };
        grow::kernel_resize_partition(&f, partno, &g).map_err(|e| format!("BLKPG: {e}"))?;
        let blocks = grow::resize_ext4(Path::new("/var"), g.new_sectors * 512)
            .map_err(|e| format!("EXT4_IOC_RESIZE_FS: {e}"))?;
        Ok(format!(
            "{} sectors -> {} sectors ({blocks} blocks)",
            g.old_sectors, g.new_sectors
        ))
    })();
    match result {
        Ok(what) => {
            say(&format!("grow {part}: {what}"));
            let _ = std::fs::create_dir_all("/var/lib/piimg");
            if let Err(e) = crate::sys::write_atomic(Path::new(GROWN_MARKER), b"grown\n", 0o644) {
                say(&format!("{GROWN_MARKER}: {e}"));
            }
        }
        // Not recorded: the next boot tries again.
        Err(e) => say(&format!("grow {part}: {e}")),
    }
}

fn setup_kernel() {
    let loader = modules::Loader::for_running_kernel(Path::new("/"));
    let db = modules::ModuleDb::load(&loader.module_dir);
    let list = std::fs::read_to_string(MODULES_LOAD).unwrap_or_default();
    for name in modules::parse_list(&list) {
        if db.is_builtin(&name) || loader.is_loaded(&name.replace('-', "_")) {
            continue;
        }
        if let Err(e) = loader.modprobe(&db, &name) {
            say(&format!("modprobe {name}: {e}"));
        }
    }
    // bridge-nf-call-* exist only with br_netfilter (Kubernetes nodes); a failed load of it is
    // already reported above, so their absence is not news.
    let bridge = Path::new("/proc/sys/net/bridge").exists();
    let wanted: Vec<(&str, &str)> = sysctl::DEFAULTS
        .iter()
        .copied()
        .filter(|(k, _)| bridge || !k.starts_with("net.bridge."))
        .collect();
    for (k, e) in sysctl::apply(Path::new("/proc/sys"), &wanted) {
        say(&format!("sysctl {k}: {e}"));
    }
    let _ = std::fs::create_dir_all("/run/piimg");
    let _ = std::fs::remove_file(MODPROBE_LINK);
    match std::os::unix::fs::symlink(agent_exe(), MODPROBE_LINK)
        .and_then(|_| std::fs::write("/proc/sys/kernel/modprobe", format!("{MODPROBE_LINK}\n")))
    {
        Ok(()) => {}
        Err(e) => say(&format!("kernel modprobe helper: {e}")),
    }
}

/// Before anything reads the clock: no earlier than the build time or the last known time
/// (after /var is mounted, where that is saved).
fn set_clock(cfg: &NodeConfig) {
    let saved = std::fs::read_to_string(clock::SAVED_TIME).ok();
    let floor = clock::floor(cfg.build_epoch, saved.as_deref());
    if let Some(t) = clock::clamp_target(sys::realtime_secs(), floor) {
        let from = if floor > cfg.build_epoch {
            "the last known time"
        } else {
            "build time"
        };
        match sys::set_realtime(t, 0) {
            Ok(()) => say(&format!("clock set to {from} {t}")),
            Err(e) => say(&format!("clock: {e}")),
        }
    }
}

fn save_time() {
    let now = sys::realtime_secs();
    let _ = sys::write_atomic(
        Path::new(clock::SAVED_TIME),
        format!("{now}\n").as_bytes(),
        0o644,
    );
}

fn spawn_ntp(servers: Vec<String>, build_epoch: i64) {
    if servers.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ntp".into())
        .spawn(move || {
            let mut announced = false;
            loop {
                let mut synced = false;
                for s in &servers {
                    let Ok((secs, nanos)) = clock::query(s, Duration::from_secs(3)) else {
                        continue;
                    };
                    // A server claiming a time before the build is wrong: ignore it.
                    if secs >= build_epoch && sys::set_realtime(secs, nanos as i64).is_ok() {
                        synced = true;
                        if !announced {
                            say(&format!("clock synced from {s}: {secs}"));
                            let marker = Path::new(clock::SYNCED_MARKER);
                            if let Err(e) = sys::write_atomic(marker, b"synced\n", 0o644) {
                                say(&format!("{}: {e}", marker.display()));
                            }
                            announced = true;
                        }
                        break;
                    }
                }
                save_time();
                // Quick retries until the first success, then hourly.
                std::thread::sleep(Duration::from_secs(if synced { 3600 } else { 15 }));
            }
        });
}

fn spawn_network(cfg: &NodeConfig, up: Arc<AtomicBool>) {
    match net::Netlink::open().and_then(|mut nl| net::loopback_up(&mut nl)) {
        Ok(()) => {}
        Err(e) => say(&format!("loopback: {e}")),
    }
    if let Err(e) = std::fs::write(RESOLV_CONF, net::resolv_conf(&cfg.network)) {
        say(&format!("{RESOLV_CONF}: {e}"));
    }
    let network = cfg.network.clone();
    let r = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || {
            let started = Instant::now();
            let mut complained = false;
            loop {
                let res = net::Netlink::open().and_then(|mut nl| net::configure(&mut nl, &network));
                let carrier = net::has_carrier(Path::new("/sys/class/net"), &network.interface);
                match res {
                    Ok(()) if carrier => {
                        say(&format!(
                            "network up {} {}",
                            network.interface, network.address
                        ));
                        up.store(true, Ordering::SeqCst);
                        // A USB NIC that re-enumerates comes back without its address.
                        net::keep_applied(&network, Duration::from_secs(30), &|| false);
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
        });
    if let Err(e) = r {
        say(&format!("network thread: {e}"));
    }
}

fn setup() -> Node {
    mount_api();
    say("stage2 start");
    sys::set_child_subreaper();
    let cfg = read_config();
    let mut specs = Vec::new();
    let net_up = Arc::new(AtomicBool::new(false));
    if let Some(cfg) = &cfg {
        set_clock(cfg);
        if let Err(e) = sys::sethostname(&cfg.hostname) {
            say(&format!("hostname: {e}"));
        }
        mount_data(cfg);
        // Again with the time saved on /var, now that it is mounted.
        set_clock(cfg);
        for d in ["/var/log", "/var/lib/piimg", "/var/lib/kubelet"] {
            let _ = std::fs::create_dir_all(d);
        }
        setup_kernel();
        spawn_network(cfg, net_up.clone());
        spawn_ntp(cfg.network.ntp.clone(), cfg.build_epoch);
        specs = roles::services(cfg, &agent_exe());
    } else {
        setup_kernel();
    }
    let opts = Options {
        redact: cfg
            .as_ref()
            .map(NodeConfig::secret_strings)
            .unwrap_or_default(),
        ..Options::default()
    };
    let sup = Supervisor::new(specs, opts);
    if let Some(cfg) = &cfg {
        if cfg.agent.status_port != 0 {
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
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let watchdog = match &cfg {
        Some(c) if c.agent.watchdog && crate::cmdline::turned_off(&cmdline, "piimg.watchdog") => {
            say("watchdog: off (piimg.watchdog=0 on the kernel command line)");
            None
        }
        Some(c) if c.agent.watchdog => {
            match crate::watchdog::Watchdog::open(Path::new(crate::watchdog::DEVICE)) {
                Ok(w) => {
                    say(&format!(
                        "watchdog: {} armed (timeout {} s)",
                        crate::watchdog::DEVICE,
                        w.timeout_hint().as_secs()
                    ));
                    Some(w)
                }
                Err(e) => {
                    say(&format!(
                        "watchdog: {}: {e}; running without",
                        crate::watchdog::DEVICE
                    ));
                    None
                }
            }
        }
        _ => None,
    };
    Node {
        cfg,
        sup,
        net_up,
        ready: false,
        watchdog,
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
            // The guest's own clock since power-on: what `piimg qemu` and the tests report.
            match sys::uptime() {
                Some(up) => say(&format!("ready (uptime {up:.2} s)")),
                None => say("ready"),
            }
        }
    }
}

fn shutdown(node: &mut Node, how: Halt) -> ! {
    say(&format!("shutdown: {how:?}"));
    // Stopping services may take longer than the watchdog's timeout, and a reset half-way
    // through unmounting is worse than the hang it would cure.
    if let Some(w) = node.watchdog.take() {
        let _ = w.disarm();
    }
    node.sup.stop_all();
    let _ = sys::kill(-1, libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        node.sup.reap(Instant::now());
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sys::kill(-1, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    node.sup.reap(Instant::now());
    sys::sync();
    for m in ["/var", "/tmp", "/sys/fs/bpf"] {
        if sys::umount(Path::new(m), 0).is_err() {
            let _ = sys::umount(Path::new(m), libc::MNT_DETACH);
        }
    }
    let _ = sys::mount(
        "",
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    );
    sys::sync();
    let cmd = match how {
        Halt::Reboot => libc::RB_AUTOBOOT,
        Halt::PowerOff => libc::RB_POWER_OFF,
    };
    crate::console::flush(Duration::from_secs(3));
    let e = sys::reboot(cmd);
    loop {
        say(&format!("reboot: {e}; halted"));
        std::thread::sleep(Duration::from_secs(3600));
    }
}

pub fn run() -> ! {
    // Before any thread exists, so every thread inherits the mask and sigtimedwait sees them.
    sys::block_signals(&sys::HANDLED_SIGNALS);
    sys::disable_cad();
    // After the mask, so the writer thread inherits it like every other thread.
    crate::console::start_async(Box::new(std::io::stderr()));
    let mut node = match std::panic::catch_unwind(setup) {
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
            Ok(how) => shutdown(&mut node, how),
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

    #[test]
    fn signals_documented() {
        assert_eq!(signal_action(libc::SIGINT), Some(Halt::Reboot));
        assert_eq!(signal_action(libc::SIGTERM), Some(Halt::Reboot));
        assert_eq!(signal_action(libc::SIGPWR), Some(Halt::PowerOff));
        assert_eq!(signal_action(libc::SIGUSR2), Some(Halt::PowerOff));
        assert_eq!(signal_action(libc::SIGHUP), None);
    }
}
