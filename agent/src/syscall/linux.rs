//! [`Syscall`] on the running kernel: each call is the agent's own wrapper of it (crate::sys,
//! crate::net, crate::grow).

use super::{LoopDevice, Syscall};
use crate::grow::{self, Grown};
use crate::node::Network;
use crate::{net, sys};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        sys::mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        sys::umount(target, flags)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        sys::chroot(path)
    }

    fn exec(&self, program: &str) -> io::Error {
        std::process::Command::new(program).arg0(program).exec()
    }

    fn kernel_release(&self) -> String {
        sys::kernel_release()
    }

    fn finit_module(&self, file: &File, params: &str, compressed: bool) -> io::Result<()> {
        sys::finit_module(file, params, compressed)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        sys::sethostname(name)
    }

    fn set_child_subreaper(&self) {
        sys::set_child_subreaper()
    }

    fn realtime_secs(&self) -> i64 {
        sys::realtime_secs()
    }

    fn set_realtime(&self, secs: i64, nanos: i64) -> io::Result<()> {
        sys::set_realtime(secs, nanos)
    }

    fn resize_partition(&self, disk: &File, partno: u32, grown: &Grown) -> io::Result<()> {
        grow::kernel_resize_partition(disk, partno, grown)
    }

    fn resize_ext4(&self, mountpoint: &Path, bytes: u64) -> io::Result<u64> {
        grow::resize_ext4(mountpoint, bytes)
    }

    fn loop_attach(&self, image: &Path) -> io::Result<LoopDevice> {
        sys::loop_attach(image).map(|(node, hold)| LoopDevice {
            node,
            hold: Some(hold),
        })
    }

    fn loopback_up(&self) -> io::Result<()> {
        net::Netlink::open().and_then(|mut nl| net::loopback_up(&mut nl))
    }

    fn configure_network(&self, network: &Network) -> io::Result<()> {
        net::Netlink::open().and_then(|mut nl| net::configure(&mut nl, network))
    }

    fn keep_network(&self, network: &Network, every: Duration) {
        net::keep_applied(network, every, &|| false)
    }

    fn kill(&self, pid: i32, sig: libc::c_int) -> io::Result<()> {
        sys::kill(pid, sig)
    }

    fn sync(&self) {
        sys::sync()
    }

    fn reboot(&self, cmd: libc::c_int) -> io::Error {
        sys::reboot(cmd)
    }

    fn disable_cad(&self) {
        sys::disable_cad()
    }
}
