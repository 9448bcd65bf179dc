//! The privileged calls stage 1 and stage 2 make, behind one trait (as youki's libcontainer
//! does), so both stages run on a host in unit tests against a recording fake; and [`Host`], the
//! calls together with the directory the stages' paths are under.

mod linux;

#[cfg(test)]
pub mod fake;

pub use linux::LinuxSyscall;

use crate::grow::Grown;
use crate::node::Network;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a stage asks of the kernel. Queries whose answer differs between a host and a node
/// (the kernel release, the time) are here too, so tests can fix them.
pub trait Syscall: Send + Sync {
    /// mount(2).
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: libc::c_int) -> io::Result<()>;
    /// chdir(2): switching root moves the process's working directory.
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// execve(2) of `program` with itself as argv[0]; returns only on failure.
    fn exec(&self, program: &str) -> io::Error;
    /// The running kernel's release (`uname -r`): where its modules are.
    fn kernel_release(&self) -> String;
    /// finit_module(2); the kernel decompresses the file when `compressed`.
    fn finit_module(&self, file: &File, params: &str, compressed: bool) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// PR_SET_CHILD_SUBREAPER on this process.
    fn set_child_subreaper(&self);
    /// CLOCK_REALTIME in seconds.
    fn realtime_secs(&self) -> i64;
    fn set_realtime(&self, secs: i64, nanos: i64) -> io::Result<()>;
    /// BLKPG: tells the kernel a partition of `disk` grew while it is mounted.
    fn resize_partition(&self, disk: &File, partno: u32, grown: &Grown) -> io::Result<()>;
    /// EXT4_IOC_RESIZE_FS on the ext4 mounted at `mountpoint`; returns its size in blocks.
    fn resize_ext4(&self, mountpoint: &Path, bytes: u64) -> io::Result<u64>;
    /// Attaches a filesystem image to a free loop device, read-only, released by the kernel
    /// when unmounted; returns the device node.
    fn loop_attach(&self, image: &Path) -> io::Result<LoopDevice>;
    /// rtnetlink: loopback up.
    fn loopback_up(&self) -> io::Result<()>;
    /// rtnetlink: the node's interface up, with its address and routes.
    fn configure_network(&self, net: &Network) -> io::Result<()>;
    /// Keeps `net` applied, looking every `every`; on a node it never returns.
    fn keep_network(&self, net: &Network, every: Duration);
    /// kill(2).
    fn kill(&self, pid: i32, sig: libc::c_int) -> io::Result<()>;
    fn sync(&self);
    /// reboot(2) with `libc::RB_AUTOBOOT` or `RB_POWER_OFF`; returns only on failure.
    fn reboot(&self, cmd: libc::c_int) -> io::Error;
    /// Ctrl-alt-del sends SIGINT to PID 1 instead of rebooting at once.
    fn disable_cad(&self);
}

/// A configured loop device. The kernel clears an autoclear device at its last close, so this
/// holds it open until the filesystem on it is mounted (then the mount holds it); drop it after.
pub struct LoopDevice {
    pub node: PathBuf,
    pub hold: Option<File>,
}

/// Where a stage runs: the system calls it makes, and the root its absolute paths are under
/// (`/` on a node; a temporary directory in tests).
#[derive(Clone)]
pub struct Host {
    pub sys: Arc<dyn Syscall>,
    pub root: PathBuf,
}

impl Host {
    /// The running system.
    pub fn real() -> Host {
        Host {
            sys: Arc::new(LinuxSyscall),
            root: PathBuf::from("/"),
        }
    }

    /// `abs`, an absolute path on the node, under this host's root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}
