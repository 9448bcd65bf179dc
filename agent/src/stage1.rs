//! Stage 1, in the initramfs: API mounts, storage modules, wait for the root partition, mount it,
//! switch_root, exec stage 2. Netboot (`piimg.root=`): network modules, the interface up, the
//! root image fetched into RAM and mounted read-only under a tmpfs overlay instead. Never returns
//! and never panics the kernel: every failure is logged and retried, but a root image that is
//! not this initramfs's reboots the node for a matching set.

use crate::cmdline::{self, Cmdline, HttpUrl, RootSpec};
use crate::console::say;
use crate::netroot::{self, Pace};
use crate::node::{NetRoot, Network};
use crate::syscall::Host;
use crate::{blockdev, modules, mounts, net};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const STAGE1_MODULES: &str = crate::contract::paths::STAGE1_MODULES;
const NEWROOT: &str = "/newroot";
/// How long to wait for the root device before complaining (then keep waiting).
const ROOT_WAIT: Duration = Duration::from_secs(30);

/// Why one attempt to make the root filesystem `/` failed; each is retried.
#[derive(Debug, thiserror::Error)]
enum Stage1Error {
    #[error("mount {} on {NEWROOT} ({fstype}): {source}", dev.display())]
    MountRoot {
        dev: PathBuf,
        fstype: String,
        source: io::Error,
    },
    #[error("{0} missing in the root filesystem")]
    InitMissing(String),
    #[error("switch_root: {0}")]
    SwitchRoot(io::Error),
    #[error("mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: String,
        source: io::Error,
    },
    #[error("{}: {source}", target.display())]
    Mkdir { target: PathBuf, source: io::Error },
    #[error("loop device for the root image: {0}")]
    Loop(io::Error),
    #[error("network: {0}")]
    Network(io::Error),
}

impl Stage1Error {
    /// Seconds until the next attempt.
    fn retry_secs(&self) -> u64 {
        match self {
            Stage1Error::InitMissing(_) | Stage1Error::SwitchRoot(_) => 5,
            _ => 2,
        }
    }
}

/// Where stage 1 ends when it does not become init.
#[derive(Debug)]
enum Stopped {
    /// No `root=` on the kernel command line: nothing to look for.
    NoRoot,
    /// The exec of init failed, in the new root: nothing to go back to.
    Exec { init: String, error: io::Error },
    /// Netboot without what it needs: a usable `piimg.root=` and the initramfs's netroot.json.
    NoNetRoot(String),
}

fn load_stage1_modules(host: &Host, loader: &modules::Loader) {
    let list = std::fs::read_to_string(host.path(STAGE1_MODULES)).unwrap_or_default();
    for rel in modules::parse_list(&list) {
        if let Err(e) = loader.load_file(&*host.sys, &rel) {
            say(&format!("module {rel}: {e}"));
        }
    }
}

/// Where the root device is, once it appears.
fn locate(host: &Host, spec: &RootSpec) -> Option<PathBuf> {
    match spec {
        RootSpec::PartUuid(u) => {
            blockdev::find_partuuid(&host.path("/sys/class/block"), &host.path("/dev"), u)
        }
        RootSpec::Device(d) => host.path(d).exists().then(|| PathBuf::from(d)),
    }
}

fn wait_for_root(host: &Host, spec: &RootSpec, loader: &modules::Loader) -> PathBuf {
    let mut since = Instant::now();
    loop {
        if let Some(p) = locate(host, spec) {
            return p;
        }
        if since.elapsed() >= ROOT_WAIT {
            say(&format!(
                "root {spec:?} not found after {}s; block devices: {}; retrying",
                ROOT_WAIT.as_secs(),
                list_block_devices(host).join(" ")
            ));
            // A module may have failed on a transient error: try again.
            load_stage1_modules(host, loader);
            since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn list_block_devices(host: &Host) -> Vec<String> {
    sorted_names(&host.path("/sys/class/block"))
}

/// The entries of a sysfs class folder, sorted, for a console line (none when unreadable).
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn run() -> ! {
    match boot(&Host::real(), &Pace::NODE) {
        Stopped::NoRoot => {
            say("no root= on the kernel command line; waiting (fix cmdline.txt)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Stopped::NoNetRoot(why) => loop {
            say(&format!(
                "netboot: {why}; waiting (rebuild the node's netboot files)"
            ));
            std::thread::sleep(Duration::from_secs(60));
        },
        // Keep PID 1 alive and say why.
        Stopped::Exec { init, error } => loop {
            say(&format!("exec {init}: {error}; system halted here"));
            std::thread::sleep(Duration::from_secs(60));
        },
    }
}

/// Stage 1 up to the exec of init, which does not return when it works.
fn boot(host: &Host, pace: &Pace) -> Stopped {
    let (cmd, loader) = start(host);
    if let Some(url) = &cmd.net_root {
        let wanted = url
            .as_ref()
            .map_err(|e| format!("piimg.root={e}"))
            .and_then(|url| Ok((url, read_netroot(host)?)));
        return match wanted {
            Ok((url, net)) => {
                netboot(host, url, &net, &cmd.init, &loader, pace);
                exec_init(host, cmd.init)
            }
            Err(why) => Stopped::NoNetRoot(why),
        };
    }
    let Some(spec) = cmd.root.clone() else {
        return Stopped::NoRoot;
    };
    loop {
        let dev = wait_for_root(host, &spec, &loader);
        say(&format!("root found {}", dev.display()));
        match switch_to(host, &cmd, &dev) {
            Ok(()) => break,
            Err(e) => back_off(host, &e),
        }
    }
    exec_init(host, cmd.init)
}

fn exec_init(host: &Host, init: String) -> Stopped {
    say(&format!("exec {init}"));
    let error = host.sys.exec(&init);
    Stopped::Exec { init, error }
}

/// What comes before the root is known: API filesystems, a console, the kernel command line,
/// the storage modules.
fn start(host: &Host) -> (Cmdline, modules::Loader) {
    for (t, e) in mounts::mount_all(&*host.sys, &host.root, &mounts::stage1_mounts()) {
        // No console may exist yet; try anyway.
        say(&format!("mount {t}: {e}"));
    }
    if !crate::console::stderr_is_open() {
        crate::console::attach_dev_console(&host.path("/dev/console"));
    }
    say("stage1 start");
    let cmd =
        cmdline::parse(&std::fs::read_to_string(host.path("/proc/cmdline")).unwrap_or_default());
    let loader = modules::Loader::for_running_kernel(&*host.sys, &host.root);
    load_stage1_modules(host, &loader);
    (cmd, loader)
}

/// Mounts the root device on /newroot, checks that init is there, and makes it `/`.
fn switch_to(host: &Host, cmd: &Cmdline, dev: &Path) -> Result<(), Stage1Error> {
    let newroot = host.path(NEWROOT);
    let _ = std::fs::create_dir_all(&newroot);
    let mut flags = 0;
    if cmd.read_only {
        flags |= libc::MS_RDONLY;
    }
    host.sys
        .mount(
            &dev.to_string_lossy(),
            &newroot,
            Some(&cmd.rootfstype),
            flags,
            cmd.rootflags.as_deref(),
        )
        .map_err(|source| Stage1Error::MountRoot {
            dev: dev.to_path_buf(),
            fstype: cmd.rootfstype.clone(),
            source,
        })?;
    switch_into(host, &cmd.init, &mounts::CARRIED)
}

/// Netboot's mounts, below the /run that stage 1 carries into the new root (as systemd's initrd
/// does): there `df` shows the RAM the image takes, and nothing is left behind unreachable in
/// the initramfs. The overlay holds its layers either way.
const NETROOT_IMAGE: &str = "/run/piimg/netroot/image";
const NETROOT_FILE: &str = "/run/piimg/netroot/image/root.img";
const NETROOT_LOWER: &str = "/run/piimg/netroot/lower";
const NETROOT_RW: &str = "/run/piimg/netroot/rw";

fn read_netroot(host: &Host) -> Result<NetRoot, String> {
    let path = crate::contract::paths::NETROOT;
    let bytes = std::fs::read(host.path(path)).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// Netboot up to a root on /newroot made `/`: the interface, the image in RAM, the overlay.
fn netboot(
    host: &Host,
    url: &HttpUrl,
    net: &NetRoot,
    init: &str,
    loader: &modules::Loader,
    pace: &Pace,
) {
    say(&format!("netboot: root image {url}"));
    wait_for_interface(host, &net.interface, loader, pace);
    until_ok(pace, || bring_up(host, net, pace));
    for (t, e) in mounts::mount_all(&*host.sys, &host.root, &run_mount()) {
        say(&format!("mount {t}: {e}"));
    }
    until_ok(pace, || {
        mount_tmpfs(host, "netroot", NETROOT_IMAGE, "mode=0700")
    });
    while let Err(e) = netroot::fetch(url, net, &host.path(NETROOT_FILE), pace) {
        // The firmware fetches kernel and initramfs again on the way up: a matching set.
        say(&format!("{e}: rebooting"));
        crate::console::flush(Duration::from_secs(3));
        let e = host.sys.reboot(libc::RB_AUTOBOOT);
        say(&format!("reboot: {e}; fetching again"));
    }
    until_ok(pace, || {
        let r = mount_overlay(host, net).and_then(|()| {
            let carried = [&mounts::CARRIED[..], &["/run"]].concat();
            switch_into(host, init, &carried)
        });
        if r.is_err() {
            for t in ["/newroot", NETROOT_RW, NETROOT_LOWER] {
                let _ = host.sys.umount(&host.path(t), 0);
            }
        }
        r
    });
}

/// The /run of stage 2's table.
fn run_mount() -> Vec<mounts::MountSpec> {
    mounts::stage2_mounts()
        .into_iter()
        .filter(|m| m.target == "/run")
        .collect()
}

/// Runs `step` until it works, saying why it did not, backing off.
fn until_ok(pace: &Pace, mut step: impl FnMut() -> Result<(), Stage1Error>) {
    let mut pause = pace.retry_first;
    while let Err(e) = step() {
        say(&format!("{e}; retrying in {pause:.0?}"));
        std::thread::sleep(pause);
        pause = (pause * 2).min(pace.retry_max);
    }
}

fn list_interfaces(host: &Host) -> Vec<String> {
    sorted_names(&host.path("/sys/class/net"))
}

/// Until the NIC's driver has made the interface (a USB NIC enumerates seconds after its
/// module loads); says which interfaces exist when it takes long, then keeps waiting.
fn wait_for_interface(host: &Host, name: &str, loader: &modules::Loader, pace: &Pace) {
    let mut since = Instant::now();
    while !host.path("/sys/class/net").join(name).exists() {
        if since.elapsed() >= pace.interface_wait {
            let found = list_interfaces(host);
            say(&format!(
                "interface {name} not found after {:.0?}; interfaces: {}; still waiting",
                pace.interface_wait,
                if found.is_empty() {
                    "none".into()
                } else {
                    found.join(" ")
                }
            ));
            load_stage1_modules(host, loader);
            since = Instant::now();
        }
        std::thread::sleep(pace.poll);
    }
}

/// The node's static address and default route on its interface, as stage 2 applies them
/// (stage 2 applies them again: the same requests, which the kernel accepts twice).
fn bring_up(host: &Host, net: &NetRoot, pace: &Pace) -> Result<(), Stage1Error> {
    let network = Network {
        interface: net.interface.clone(),
        address: net.address,
        gateway: net.gateway,
        dns: Vec::new(),
        routes: Vec::new(),
        ntp: Vec::new(),
        wifi: None,
    };
    host.sys
        .configure_network(&network)
        .map_err(Stage1Error::Network)?;
    let since = Instant::now();
    let sys_net = host.path("/sys/class/net");
    while !net::has_carrier(&sys_net, &net.interface) {
        if since.elapsed() >= pace.interface_wait {
            say(&format!(
                "no carrier on {} yet; trying anyway",
                net.interface
            ));
            break;
        }
        std::thread::sleep(pace.poll);
    }
    say(&format!("network up {} {}", net.interface, net.address));
    Ok(())
}

fn mkdir(host: &Host, abs: &str) -> Result<PathBuf, Stage1Error> {
    let target = host.path(abs);
    std::fs::create_dir_all(&target).map_err(|source| Stage1Error::Mkdir {
        target: target.clone(),
        source,
    })?;
    Ok(target)
}

fn mount_error(what: &str, target: &str) -> impl FnOnce(io::Error) -> Stage1Error {
    let (what, target) = (what.to_string(), target.to_string());
    move |source| Stage1Error::Mount {
        what,
        target,
        source,
    }
}

fn mount_tmpfs(host: &Host, name: &str, target: &str, data: &str) -> Result<(), Stage1Error> {
    let dir = mkdir(host, target)?;
    host.sys
        .mount(name, &dir, Some("tmpfs"), 0, Some(data))
        .map_err(mount_error("tmpfs", target))
}

/// The fetched image read-only as the lower layer, a tmpfs for upper and work, the overlay on
/// /newroot. Writable whatever `ro`/`rw` say: writes go to RAM, the image never changes.
fn mount_overlay(host: &Host, net: &NetRoot) -> Result<(), Stage1Error> {
    let image = host.path(NETROOT_FILE);
    let lower = mkdir(host, NETROOT_LOWER)?;
    let dev = host.sys.loop_attach(&image).map_err(Stage1Error::Loop)?;
    let node = dev.node.to_string_lossy().into_owned();
    host.sys
        .mount(&node, &lower, Some(&net.fstype), libc::MS_RDONLY, None)
        .map_err(mount_error(&node, NETROOT_LOWER))?;
    // The mounted filesystem holds the loop device now.
    drop(dev);
    mount_tmpfs(host, "netroot-rw", NETROOT_RW, "mode=0755")?;
    let upper = mkdir(host, &format!("{NETROOT_RW}/upper"))?;
    let work = mkdir(host, &format!("{NETROOT_RW}/work"))?;
    let newroot = mkdir(host, NEWROOT)?;
    let layers = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    host.sys
        .mount("overlay", &newroot, Some("overlay"), 0, Some(&layers))
        .map_err(mount_error("overlay", NEWROOT))
}

/// Checks that init is in /newroot and makes it `/`, carrying `carried` along.
fn switch_into(host: &Host, init: &str, carried: &[&str]) -> Result<(), Stage1Error> {
    let newroot = host.path(NEWROOT);
    if !newroot.join(init.trim_start_matches('/')).exists() {
        return Err(Stage1Error::InitMissing(init.to_string()));
    }
    mounts::switch_root(&*host.sys, &newroot, carried).map_err(Stage1Error::SwitchRoot)
}

/// Says why the attempt failed, unmounts a root without init, and waits for the next attempt.
fn back_off(host: &Host, e: &Stage1Error) {
    say(&format!("{e}; retrying in {}s", e.retry_secs()));
    if let Stage1Error::InitMissing(_) = e {
        let _ = host.sys.umount(&host.path(NEWROOT), 0);
    }
    std::thread::sleep(Duration::from_secs(e.retry_secs()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netroot::tests::{image, netroot_for, ok, serve, FAST};
    use crate::syscall::fake::{put, put_partition, RecordingSyscall, RELEASE};
    use std::sync::Arc;

    /// In list order, which is not the alphabetical one; crc16 is already loaded.
    const MODULE_LIST: &str = "# storage\nkernel/lib/crc16.ko.xz\nkernel/fs/mbcache.ko.xz\n\
                               kernel/fs/jbd2/jbd2.ko.xz\nkernel/fs/ext4/ext4.ko.xz\n\
                               kernel/drivers/mmc/host/sdhci.ko.xz\n";

    /// An initramfs with a module list, its modules, an SD card with two partitions, and a root
    /// filesystem holding init (as once it is mounted on /newroot).
    fn initramfs(cmdline: &str) -> (tempfile::TempDir, Host, Arc<RecordingSyscall>) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        put(root, "/proc/cmdline", cmdline.as_bytes());
        put(root, STAGE1_MODULES, MODULE_LIST.as_bytes());
        for rel in modules::parse_list(MODULE_LIST) {
            put(root, &format!("/lib/modules/{RELEASE}/{rel}"), b"module");
        }
        std::fs::create_dir_all(root.join("sys/module/crc16")).unwrap();
        put_partition(root, "mmcblk0", 1, "0badc0de-01");
        put_partition(root, "mmcblk0", 2, "0badc0de-02");
        put(root, "/newroot/sbin/init", b"agent");
        let (host, fake) = RecordingSyscall::host(root);
        (t, host, fake)
    }

    const API_MOUNTS: [&str; 3] = [
        "mount proc /proc -t proc -o nosuid,nodev,noexec",
        "mount sysfs /sys -t sysfs -o nosuid,nodev,noexec",
        "mount devtmpfs /dev -t devtmpfs -o nosuid,mode=0755",
    ];

    fn modules_loaded() -> Vec<String> {
        [
            "fs/mbcache",
            "fs/jbd2/jbd2",
            "fs/ext4/ext4",
            "drivers/mmc/host/sdhci",
        ]
        .iter()
        .map(|m| format!("finit_module /lib/modules/{RELEASE}/kernel/{m}.ko.xz compressed"))
        .collect()
    }

    const SWITCH_ROOT: [&str; 7] = [
        "mount /proc /newroot/proc -o move",
        "mount /sys /newroot/sys -o move",
        "mount /dev /newroot/dev -o move",
        "chdir /newroot",
        "mount . / -o move",
        "chroot .",
        "chdir /",
    ];

    #[test]
    fn mounts_api_loads_listed_modules_finds_root_by_partuuid_switches_and_execs_init() {
        let (_t, host, fake) = initramfs("console=ttyAMA0 root=PARTUUID=0BADC0DE-02 rootwait");
        let Stopped::Exec { init, error } = boot(&host, &FAST) else {
            panic!("stage 1 stopped before exec: {:?}", fake.calls());
        };
        assert_eq!(init, "/sbin/init");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSYS));
        let mut want: Vec<String> = API_MOUNTS.iter().map(|s| s.to_string()).collect();
        want.extend(modules_loaded());
        want.push("mount /dev/mmcblk0p2 /newroot -t ext4 -o ro".into());
        want.extend(SWITCH_ROOT.iter().map(|s| s.to_string()));
        want.push("exec /sbin/init".into());
        assert_eq!(fake.calls(), want);
    }

    #[test]
    fn kernel_command_line_sets_device_type_flags_and_init() {
        let (_t, host, fake) =
            initramfs("root=/dev/sda2 rootfstype=btrfs rootflags=subvol=@ rw init=/sbin/init");
        put(&host.root, "/dev/sda2", b"");
        assert!(matches!(boot(&host, &FAST), Stopped::Exec { .. }));
        let calls = fake.calls();
        assert_eq!(calls[7], "mount /dev/sda2 /newroot -t btrfs -o subvol=@");
    }

    #[test]
    fn without_root_stage_1_stops_after_the_modules() {
        let (_t, host, fake) = initramfs("console=ttyAMA0");
        assert!(matches!(boot(&host, &FAST), Stopped::NoRoot));
        let mut want: Vec<String> = API_MOUNTS.iter().map(|s| s.to_string()).collect();
        want.extend(modules_loaded());
        assert_eq!(fake.calls(), want);
    }

    #[test]
    fn a_failed_root_mount_is_the_attempts_error() {
        let (_t, host, fake) = initramfs("");
        fake.fail("mount /dev/mmcblk0p2 /newroot", libc::ENODEV);
        let cmd = cmdline::parse("root=PARTUUID=0badc0de-02");
        let e = switch_to(&host, &cmd, Path::new("/dev/mmcblk0p2")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount /dev/mmcblk0p2 on /newroot (ext4): No such device (os error 19)"
        );
        assert_eq!(e.retry_secs(), 2);
        assert_eq!(
            fake.calls(),
            vec!["mount /dev/mmcblk0p2 /newroot -t ext4 -o ro"]
        );
    }

    #[test]
    fn a_root_without_init_is_not_switched_to() {
        let (_t, host, fake) = initramfs("");
        std::fs::remove_file(host.path("/newroot/sbin/init")).unwrap();
        let cmd = cmdline::parse("root=/dev/sda2");
        let e = switch_to(&host, &cmd, Path::new("/dev/sda2")).unwrap_err();
        assert_eq!(e.to_string(), "/sbin/init missing in the root filesystem");
        assert_eq!(e.retry_secs(), 5);
        assert_eq!(fake.calls(), vec!["mount /dev/sda2 /newroot -t ext4 -o ro"]);
    }

    #[test]
    fn a_failed_chroot_is_the_switch_root_error() {
        let (_t, host, fake) = initramfs("");
        fake.fail("chroot", libc::EPERM);
        let cmd = cmdline::parse("root=/dev/sda2");
        let e = switch_to(&host, &cmd, Path::new("/dev/sda2")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "switch_root: Operation not permitted (os error 1)"
        );
        let calls = fake.calls();
        assert_eq!(calls.last().map(String::as_str), Some("chroot ."));
        assert_eq!(calls.len(), 7, "{calls:?}");
    }

    const NET_MODULES: &str = "kernel/drivers/net/usb/smsc95xx.ko.xz\n\
                               kernel/fs/squashfs/squashfs.ko.xz\n\
                               kernel/drivers/block/loop.ko.xz\n\
                               kernel/fs/overlayfs/overlay.ko.xz\n";

    /// A netboot initramfs (NIC and filesystem modules, netroot.json for `body`) whose kernel
    /// command line names a loopback server giving `answers`.
    fn netboot_initramfs(
        body: &[u8],
        answers: Vec<crate::netroot::tests::Answer>,
    ) -> (
        tempfile::TempDir,
        Host,
        Arc<RecordingSyscall>,
        std::thread::JoinHandle<Vec<String>>,
    ) {
        let (addr, server) = serve(answers);
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let cmdline = format!("console=ttyAMA0 piimg.root=http://{addr}/w1/root.squashfs\n");
        put(root, "/proc/cmdline", cmdline.as_bytes());
        put(root, STAGE1_MODULES, NET_MODULES.as_bytes());
        for rel in modules::parse_list(NET_MODULES) {
            put(root, &format!("/lib/modules/{RELEASE}/{rel}"), b"module");
        }
        let net = serde_json::to_vec(&netroot_for(body)).unwrap();
        put(root, crate::contract::paths::NETROOT, &net);
        put(root, "/sys/class/net/lo/operstate", b"unknown\n");
        put(root, "/sys/class/net/eth0/carrier", b"1\n");
        put(root, "/newroot/sbin/init", b"agent");
        let (host, fake) = RecordingSyscall::host(root);
        (t, host, fake, server)
    }

    fn netboot_calls() -> Vec<String> {
        let mut want: Vec<String> = API_MOUNTS.iter().map(|s| s.to_string()).collect();
        want.extend(
            modules::parse_list(NET_MODULES)
                .iter()
                .map(|m| format!("finit_module /lib/modules/{RELEASE}/{m} compressed")),
        );
        want.extend(
            [
                "configure_network eth0 10.0.2.15/24",
                "mount run /run -t tmpfs -o nosuid,nodev,mode=0755",
                "mount netroot /run/piimg/netroot/image -t tmpfs -o mode=0700",
                "loop_attach /run/piimg/netroot/image/root.img ro,autoclear",
                "mount /dev/loop0 /run/piimg/netroot/lower -t squashfs -o ro",
                "mount netroot-rw /run/piimg/netroot/rw -t tmpfs -o mode=0755",
                "mount overlay /newroot -t overlay -o lowerdir=/run/piimg/netroot/lower,\
                 upperdir=/run/piimg/netroot/rw/upper,workdir=/run/piimg/netroot/rw/work",
            ]
            .map(String::from),
        );
        want.extend(SWITCH_ROOT[..3].iter().map(|s| s.to_string()));
        want.push("mount /run /newroot/run -o move".into());
        want.extend(SWITCH_ROOT[3..].iter().map(|s| s.to_string()));
        want.push("exec /sbin/init".into());
        want
    }

    #[test]
    fn netboot_brings_up_the_interface_fetches_the_image_and_boots_an_overlay_on_it() {
        let body = image();
        let (_t, host, fake, server) = netboot_initramfs(&body, vec![ok(&body)]);
        let lines = crate::console::capture_thread();
        let Stopped::Exec { init, .. } = boot(&host, &FAST) else {
            panic!("stage 1 stopped before exec: {:?}", fake.calls());
        };
        assert_eq!(init, "/sbin/init");
        assert_eq!(fake.calls(), netboot_calls());
        assert!(std::fs::read(host.path(NETROOT_FILE)).unwrap() == body);
        let head = &server.join().unwrap()[0];
        assert!(
            head.starts_with("GET /w1/root.squashfs HTTP/1.1\r\n"),
            "{head}"
        );
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines.contains(&"piimg-agent: network up eth0 10.0.2.15/24".to_string()),
            "{lines:#?}"
        );
        let progress: Vec<&String> = lines.iter().filter(|l| l.contains("% (")).collect();
        assert!(progress.len() >= 8, "{lines:#?}");
        assert!(progress[0].contains(" of 3.0 MB, "), "{lines:#?}");
    }

    #[test]
    fn netboot_deletes_an_image_whose_sha256_is_wrong_and_fetches_it_again() {
        let body = image();
        let mut tampered = body.clone();
        tampered[0] ^= 0xff;
        let (_t, host, fake, server) = netboot_initramfs(&body, vec![ok(&tampered), ok(&body)]);
        let lines = crate::console::capture_thread();
        assert!(matches!(boot(&host, &FAST), Stopped::Exec { .. }));
        // The second fetch replaced the first in RAM; nothing else was done twice.
        assert_eq!(fake.calls(), netboot_calls());
        assert!(std::fs::read(host.path(NETROOT_FILE)).unwrap() == body);
        assert_eq!(server.join().unwrap().len(), 2);
        let lines = lines.lock().unwrap().clone();
        let mismatch: Vec<&String> = lines.iter().filter(|l| l.contains("sha256")).collect();
        assert_eq!(mismatch.len(), 2, "{lines:#?}");
        assert!(
            mismatch[0].contains("but the initramfs expects"),
            "{lines:#?}"
        );
        assert!(mismatch[1].ends_with("sha256 ok"), "{lines:#?}");
    }

    /// `body` with one byte changed: what a rebuild serves under the same name.
    fn rebuilt(body: &[u8]) -> Vec<u8> {
        let mut other = body.to_vec();
        other[0] ^= 0xff;
        other
    }

    #[test]
    fn netboot_reboots_after_five_images_that_do_not_match_the_initramfs() {
        let body = image();
        let other = rebuilt(&body);
        let longer = [&body[..], b"x"].concat();
        let answers = vec![
            ok(&other),
            ok(&longer),
            crate::netroot::tests::Answer::Bytes(b"HTTP/1.1 503 Busy\r\n\r\n".to_vec()),
            ok(&other),
            ok(&other),
            ok(&other),
            // After the (failed) reboot: the fetch starts over.
            ok(&body),
        ];
        let (_t, host, fake, server) = netboot_initramfs(&body, answers);
        let lines = crate::console::capture_thread();
        assert!(matches!(boot(&host, &FAST), Stopped::Exec { .. }));
        assert_eq!(server.join().unwrap().len(), 7);
        let mut want = netboot_calls();
        let at = want
            .iter()
            .position(|c| c.starts_with("loop_attach"))
            .unwrap();
        want.insert(at, "reboot autoboot".into());
        assert_eq!(fake.calls(), want);
        let lines = lines.lock().unwrap().clone();
        let said: Vec<&String> = lines.iter().filter(|l| l.contains("reboot")).collect();
        assert_eq!(
            said,
            [
                "piimg-agent: the root image on the server does not match this initramfs \
                 (rebuilt meanwhile?): rebooting",
                "piimg-agent: reboot: Function not implemented (os error 38); fetching again",
            ],
            "{lines:#?}"
        );
    }

    #[test]
    fn netboot_failures_other_than_a_wrong_image_do_not_count_towards_a_reboot() {
        let body = image();
        let other = rebuilt(&body);
        let mut answers: Vec<_> = (0..4).map(|_| ok(&other)).collect();
        answers.push(crate::netroot::tests::Answer::Bytes(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ));
        // Closed before the headers ended.
        answers.push(crate::netroot::tests::Answer::Bytes(Vec::new()));
        answers.push(ok(&body));
        let (_t, host, fake, server) = netboot_initramfs(&body, answers);
        assert!(matches!(boot(&host, &FAST), Stopped::Exec { .. }));
        assert_eq!(server.join().unwrap().len(), 7);
        assert_eq!(fake.calls(), netboot_calls());
    }

    #[test]
    fn netboot_names_the_interfaces_there_are_while_its_own_is_missing_and_keeps_waiting() {
        let body = image();
        let (_t, host, fake, server) = netboot_initramfs(&body, vec![ok(&body)]);
        std::fs::remove_dir_all(host.path("/sys/class/net/eth0")).unwrap();
        put(&host.root, "/sys/class/net/wlan0/carrier", b"0\n");
        let late = host.path("/sys/class/net/eth0/carrier");
        let nic = std::thread::spawn(move || {
            std::thread::sleep(FAST.interface_wait * 3);
            std::fs::create_dir_all(late.parent().unwrap()).unwrap();
            std::fs::write(late, "1\n").unwrap();
        });
        let lines = crate::console::capture_thread();
        assert!(matches!(boot(&host, &FAST), Stopped::Exec { .. }));
        nic.join().unwrap();
        server.join().unwrap();
        let lines = lines.lock().unwrap().clone();
        let said: Vec<&String> = lines.iter().filter(|l| l.contains("not found")).collect();
        assert!(!said.is_empty(), "{lines:#?}");
        assert_eq!(
            said[0],
            "piimg-agent: interface eth0 not found after 200ms; interfaces: lo wlan0; still waiting"
        );
        // Each complaint loaded the modules again (a driver may have failed transiently).
        let loads = fake
            .calls()
            .iter()
            .filter(|c| c.contains("smsc95xx"))
            .count();
        assert_eq!(loads, 1 + said.len());
        assert_eq!(fake.calls().last().unwrap(), "exec /sbin/init");
    }

    #[test]
    fn netboot_without_its_json_or_with_a_bad_url_says_why_and_stops() {
        let body = image();
        let (_t, host, fake, _server) = netboot_initramfs(&body, vec![]);
        std::fs::remove_file(host.path(crate::contract::paths::NETROOT)).unwrap();
        let Stopped::NoNetRoot(why) = boot(&host, &FAST) else {
            panic!("booted without netroot.json");
        };
        assert!(
            why.starts_with("/etc/piimg/netroot.json: No such file"),
            "{why}"
        );
        assert!(!fake
            .calls()
            .iter()
            .any(|c| c.starts_with("configure_network")));
        put(
            &host.root,
            "/proc/cmdline",
            b"piimg.root=http://nas.lan/root.img",
        );
        let Stopped::NoNetRoot(why) = boot(&host, &FAST) else {
            panic!("booted from a host name");
        };
        assert!(
            why.starts_with("piimg.root=\"http://nas.lan/root.img\": the host must be"),
            "{why}"
        );
    }

    #[test]
    fn a_failed_overlay_is_undone_and_tried_again() {
        let body = image();
        let (_t, host, fake, server) = netboot_initramfs(&body, vec![ok(&body)]);
        fake.fail_once("mount overlay", libc::EINVAL);
        assert!(matches!(boot(&host, &FAST), Stopped::Exec { .. }));
        server.join().unwrap();
        let calls = fake.calls();
        let at = calls
            .iter()
            .position(|c| c.starts_with("mount overlay"))
            .unwrap();
        assert_eq!(
            calls[at + 1..at + 4],
            [
                "umount /newroot",
                "umount /run/piimg/netroot/rw",
                "umount /run/piimg/netroot/lower"
            ]
        );
        assert_eq!(
            calls[at + 4],
            "loop_attach /run/piimg/netroot/image/root.img ro,autoclear"
        );
        assert_eq!(calls.last().unwrap(), "exec /sbin/init");
    }

    /// Unmounts what a real-kernel test mounted, also when it fails.
    struct Unmount(Vec<PathBuf>);

    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = crate::sys::umount(p, libc::MNT_DETACH);
            }
        }
    }

    fn read_trim(p: impl AsRef<Path>) -> String {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// On this kernel (we are root): a filesystem image made by mke2fs, attached and mounted by
    /// the same code stage 1 runs, is read-only below and writable through the overlay.
    #[test]
    fn the_image_mounts_read_only_from_a_loop_device_under_a_writable_overlay() {
        let t = tempfile::tempdir().unwrap();
        let host = Host {
            sys: Arc::new(crate::syscall::LinuxSyscall),
            root: t.path().join("initramfs"),
        };
        let src = t.path().join("src");
        put(&src, "/sbin/init", b"the agent");
        put(&src, "/etc/hostname", b"w1\n");
        let image = host.path(NETROOT_FILE);
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        let mkfs = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-d"])
            .arg(&src)
            .arg(&image)
            .arg("4M")
            .output()
            .unwrap();
        assert!(mkfs.status.success(), "{mkfs:?}");
        let net = NetRoot {
            fstype: "ext4".into(),
            ..netroot_for(b"")
        };
        let _guard = Unmount(
            ["/newroot", NETROOT_RW, NETROOT_LOWER]
                .iter()
                .map(|p| host.path(p))
                .collect(),
        );
        mount_overlay(&host, &net).unwrap();

        let newroot = host.path(NEWROOT);
        assert_eq!(
            std::fs::read(newroot.join("sbin/init")).unwrap(),
            b"the agent"
        );
        std::fs::write(newroot.join("etc/hostname"), "w2\n").unwrap();
        assert_eq!(read_trim(newroot.join("etc/hostname")), "w2");
        assert_eq!(
            read_trim(host.path(NETROOT_RW).join("upper/etc/hostname")),
            "w2"
        );
        let lower = host.path(NETROOT_LOWER);
        assert_eq!(read_trim(lower.join("etc/hostname")), "w1");
        let e = std::fs::write(lower.join("etc/hostname"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));

        // The kernel's view of the loop device: read-only, cleared when unmounted, this file.
        let mountinfo = read_trim("/proc/self/mountinfo");
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(lower.to_str().unwrap()))
            .unwrap();
        let dev = line
            .rsplit(" - ")
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap();
        let name = dev.strip_prefix("/dev/").unwrap();
        let sys = PathBuf::from("/sys/block").join(name);
        assert_eq!(read_trim(sys.join("ro")), "1");
        assert_eq!(read_trim(sys.join("loop/autoclear")), "1");
        assert_eq!(
            read_trim(sys.join("loop/backing_file")),
            image.canonicalize().unwrap().display().to_string()
        );
        for p in ["/newroot", NETROOT_RW, NETROOT_LOWER] {
            crate::sys::umount(&host.path(p), 0).unwrap();
        }
        let end = Instant::now() + Duration::from_secs(5);
        while sys.join("loop/backing_file").exists() {
            assert!(
                Instant::now() < end,
                "{name} still attached after the unmount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
