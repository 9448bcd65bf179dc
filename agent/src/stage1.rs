//! Stage 1, in the initramfs: API mounts, storage modules, wait for the root partition, mount it,
//! switch_root, exec stage 2. Never returns and never panics the kernel: every failure is logged
//! and retried.

use crate::cmdline::{self, Cmdline, RootSpec};
use crate::console::say;
use crate::syscall::Host;
use crate::{blockdev, modules, mounts};
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
}

impl Stage1Error {
    /// Seconds until the next attempt.
    fn retry_secs(&self) -> u64 {
        match self {
            Stage1Error::MountRoot { .. } => 2,
            Stage1Error::InitMissing(_) | Stage1Error::SwitchRoot(_) => 5,
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
    let mut v: Vec<String> = std::fs::read_dir(host.path("/sys/class/block"))
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
    match boot(&Host::real()) {
        Stopped::NoRoot => {
            say("no root= on the kernel command line; waiting (fix cmdline.txt)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        // Keep PID 1 alive and say why.
        Stopped::Exec { init, error } => loop {
            say(&format!("exec {init}: {error}; system halted here"));
            std::thread::sleep(Duration::from_secs(60));
        },
    }
}

/// Stage 1 up to the exec of init, which does not return when it works.
fn boot(host: &Host) -> Stopped {
    let (cmd, loader) = start(host);
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
    say(&format!("exec {}", cmd.init));
    let error = host.sys.exec(&cmd.init);
    Stopped::Exec {
        init: cmd.init,
        error,
    }
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
    if !newroot.join(cmd.init.trim_start_matches('/')).exists() {
        return Err(Stage1Error::InitMissing(cmd.init.clone()));
    }
    mounts::switch_root(&*host.sys, &newroot).map_err(Stage1Error::SwitchRoot)
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
        let Stopped::Exec { init, error } = boot(&host) else {
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
        assert!(matches!(boot(&host), Stopped::Exec { .. }));
        let calls = fake.calls();
        assert_eq!(calls[7], "mount /dev/sda2 /newroot -t btrfs -o subvol=@");
    }

    #[test]
    fn without_root_stage_1_stops_after_the_modules() {
        let (_t, host, fake) = initramfs("console=ttyAMA0");
        assert!(matches!(boot(&host), Stopped::NoRoot));
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
}
