//! A recording [`Syscall`] for unit tests: every call becomes one shell-like line, with paths
//! shown as the node would see them (the test's root stripped), so a test asserts the exact
//! sequence a stage makes; chosen calls fail with an errno.

use super::{Host, LoopDevice, Syscall};
use crate::grow::Grown;
use crate::node::Network;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What [`RecordingSyscall::kernel_release`] answers.
pub const RELEASE: &str = "6.12.0-test";
/// What [`RecordingSyscall::realtime_secs`] answers until a test sets the clock.
pub const NOW: i64 = 1_800_000_000;

pub struct RecordingSyscall {
    /// The test's root as given and as the kernel resolves it (/proc/self/fd links).
    roots: Vec<String>,
    calls: Mutex<Vec<String>>,
    /// Prefix, errno, and how many more times (None: always).
    failures: Mutex<Vec<(String, i32, Option<u32>)>>,
    clock: AtomicI64,
}

/// Mount flags by their mount(8) names, in the order a line shows them.
const MOUNT_FLAGS: [(libc::c_ulong, &str); 7] = [
    (libc::MS_REMOUNT, "remount"),
    (libc::MS_MOVE, "move"),
    (libc::MS_RDONLY, "ro"),
    (libc::MS_NOSUID, "nosuid"),
    (libc::MS_NODEV, "nodev"),
    (libc::MS_NOEXEC, "noexec"),
    (libc::MS_NOATIME, "noatime"),
];

fn mount_options(flags: libc::c_ulong, data: Option<&str>) -> Vec<String> {
    let mut opts: Vec<String> = MOUNT_FLAGS
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let rest = MOUNT_FLAGS.iter().fold(flags, |r, (f, _)| r & !f);
    if rest != 0 {
        opts.push(format!("{rest:#x}"));
    }
    opts.extend(data.map(str::to_string));
    opts
}

fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "TERM".into(),
        libc::SIGKILL => "KILL".into(),
        s => s.to_string(),
    }
}

impl RecordingSyscall {
    pub fn new(root: &Path) -> RecordingSyscall {
        let mut roots = vec![root.display().to_string()];
        if let Ok(real) = root.canonicalize() {
            roots.push(real.display().to_string());
        }
        RecordingSyscall {
            roots,
            calls: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            clock: AtomicI64::new(NOW),
        }
    }

    /// A host rooted at `root` whose calls go to a new recorder.
    pub fn host(root: &Path) -> (Host, Arc<RecordingSyscall>) {
        let fake = Arc::new(RecordingSyscall::new(root));
        let host = Host {
            sys: fake.clone(),
            root: root.to_path_buf(),
        };
        (host, fake)
    }

    /// Calls whose line starts with `prefix` fail with `errno` (and are recorded all the same).
    pub fn fail(&self, prefix: &str, errno: i32) {
        self.failures
            .lock()
            .unwrap()
            .push((prefix.to_string(), errno, None));
    }

    /// Like [`RecordingSyscall::fail`], for the first matching call only.
    pub fn fail_once(&self, prefix: &str, errno: i32) {
        self.failures
            .lock()
            .unwrap()
            .push((prefix.to_string(), errno, Some(1)));
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// `p` as the node sees it: the test's root stripped.
    fn rel(&self, p: &str) -> String {
        for r in &self.roots {
            if p == r {
                return "/".into();
            }
            if let Some(rest) = p.strip_prefix(r.as_str()) {
                if rest.starts_with('/') {
                    return rest.to_string();
                }
            }
        }
        p.to_string()
    }

    /// Mount data names paths too (an overlay's layers): the test's root taken out of each.
    fn strip_roots(&self, data: &str) -> String {
        self.roots
            .iter()
            .fold(data.to_string(), |d, r| d.replace(&format!("{r}/"), "/"))
    }

    fn path(&self, p: &Path) -> String {
        self.rel(&p.display().to_string())
    }

    /// The path an open file came from: the calls that take a file do not name it.
    fn file(&self, f: &File) -> String {
        match std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) {
            Ok(p) => self.path(&p),
            Err(e) => format!("<fd {}: {e}>", f.as_raw_fd()),
        }
    }

    fn record(&self, line: String) -> io::Result<()> {
        let failure = {
            let mut failures = self.failures.lock().unwrap();
            failures
                .iter_mut()
                .find(|(prefix, _, left)| line.starts_with(prefix.as_str()) && *left != Some(0))
                .map(|(_, errno, left)| {
                    if let Some(n) = left {
                        *n -= 1;
                    }
                    *errno
                })
        };
        self.calls.lock().unwrap().push(line);
        match failure {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    /// For calls that return only on failure: the injected errno, else ENOSYS.
    fn record_failure(&self, line: String) -> io::Error {
        self.record(line)
            .err()
            .unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = if source.is_empty() {
            "''".into()
        } else {
            self.rel(source)
        };
        let mut line = format!("mount {source} {}", self.path(target));
        if let Some(t) = fstype {
            line.push_str(&format!(" -t {t}"));
        }
        let data = data.map(|d| self.strip_roots(d));
        let opts = mount_options(flags, data.as_deref());
        if !opts.is_empty() {
            line.push_str(&format!(" -o {}", opts.join(",")));
        }
        self.record(line)
    }

    fn umount(&self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let flags = match flags {
            0 => String::new(),
            libc::MNT_DETACH => " -l".into(),
            f => format!(" {f:#x}"),
        };
        self.record(format!("umount {}{flags}", self.path(target)))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", self.path(path)))
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chroot {}", self.path(path)))
    }

    fn exec(&self, program: &str) -> io::Error {
        self.record_failure(format!("exec {program}"))
    }

    fn kernel_release(&self) -> String {
        RELEASE.into()
    }

    fn finit_module(&self, file: &File, params: &str, compressed: bool) -> io::Result<()> {
        let mut line = format!("finit_module {}", self.file(file));
        if !params.is_empty() {
            line.push_str(&format!(" {params}"));
        }
        if compressed {
            line.push_str(" compressed");
        }
        self.record(line)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname {name}"))
    }

    fn set_child_subreaper(&self) {
        let _ = self.record("set_child_subreaper".into());
    }

    fn realtime_secs(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn set_realtime(&self, secs: i64, nanos: i64) -> io::Result<()> {
        let nanos = if nanos == 0 {
            String::new()
        } else {
            format!(".{nanos:09}")
        };
        self.record(format!("clock_settime {secs}{nanos}"))?;
        self.clock.store(secs, Ordering::SeqCst);
        Ok(())
    }

    fn resize_partition(&self, disk: &File, partno: u32, g: &Grown) -> io::Result<()> {
        self.record(format!(
            "blkpg_resize {} {partno} start={} sectors={}",
            self.file(disk),
            g.start,
            g.new_sectors
        ))
    }

    fn resize_ext4(&self, mountpoint: &Path, bytes: u64) -> io::Result<u64> {
        self.record(format!("resize_ext4 {} {bytes}", self.path(mountpoint)))?;
        Ok(bytes / 4096)
    }

    fn loop_attach(&self, image: &Path) -> io::Result<LoopDevice> {
        self.record(format!("loop_attach {} ro,autoclear", self.path(image)))?;
        Ok(LoopDevice {
            node: PathBuf::from("/dev/loop0"),
            hold: None,
        })
    }

    fn loopback_up(&self) -> io::Result<()> {
        self.record("loopback_up".into())
    }

    fn configure_network(&self, net: &Network) -> io::Result<()> {
        self.record(format!(
            "configure_network {} {}",
            net.interface, net.address
        ))
    }

    fn keep_network(&self, net: &Network, every: Duration) {
        let _ = self.record(format!(
            "keep_network {} every {}s",
            net.interface,
            every.as_secs()
        ));
    }

    fn kill(&self, pid: i32, sig: libc::c_int) -> io::Result<()> {
        self.record(format!("kill {pid} {}", signal_name(sig)))
    }

    fn sync(&self) {
        let _ = self.record("sync".into());
    }

    fn reboot(&self, cmd: libc::c_int) -> io::Error {
        let how = match cmd {
            libc::RB_AUTOBOOT => "autoboot".to_string(),
            libc::RB_POWER_OFF => "power-off".to_string(),
            c => format!("{c:#x}"),
        };
        self.record_failure(format!("reboot {how}"))
    }

    fn disable_cad(&self) {
        let _ = self.record("disable_cad".into());
    }
}

/// Writes `content` to `abs` (a path on the node) under a test's `root`, making its directory.
pub fn put(root: &Path, abs: &str, content: &[u8]) {
    let p = root.join(abs.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A partition in a fake /sys/class/block, as the kernel shows it: a link into /sys/devices
/// whose parent is the disk, with its number and PARTUUID.
pub fn put_partition(root: &Path, disk: &str, number: u32, partuuid: &str) {
    let name = crate::blockdev::partition_name(disk, number);
    let dev = format!("/sys/devices/platform/mmc/{disk}/{name}");
    put(
        root,
        &format!("{dev}/partition"),
        format!("{number}\n").as_bytes(),
    );
    let uevent =
        format!("DEVNAME={name}\nDEVTYPE=partition\nPARTN={number}\nPARTUUID={partuuid}\n");
    put(root, &format!("{dev}/uevent"), uevent.as_bytes());
    let class = root.join("sys/class/block");
    std::fs::create_dir_all(&class).unwrap();
    std::os::unix::fs::symlink(root.join(&dev[1..]), class.join(name)).unwrap();
}
