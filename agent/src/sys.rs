//! Thin, safe wrappers over the few system calls the agent needs (libc declarations only, so the
//! binary links statically against musl with no C compiler).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = cstring(source)?;
    let tgt = cstr(target)?;
    let fs = fstype.map(cstring).transpose()?;
    let dat = data.map(cstring).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive for the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr() as *const libc::c_void),
        )
    })
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let tgt = cstr(target)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(tgt.as_ptr(), flags) })
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })
}

pub fn gethostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc < 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } < 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        // c_char is i8 on x86_64 (the host tests) and u8 on aarch64 (the node).
        .map(|&c| {
            #[allow(clippy::unnecessary_cast)]
            let b = c as u8;
            b
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpid() }
}

pub fn sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() }
}

/// reboot(2) with one of `libc::RB_AUTOBOOT`, `RB_POWER_OFF`, `RB_HALT_SYSTEM`.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: plain syscall; returns only on failure.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// Tell the kernel not to reboot on ctrl-alt-del but to send SIGINT to PID 1.
pub fn disable_cad() {
    // SAFETY: plain syscall.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) })
}

/// Loads a kernel module from an open file; the kernel decompresses it when `compressed`.
pub fn finit_module(file: &std::fs::File, params: &str, compressed: bool) -> io::Result<()> {
    const MODULE_INIT_COMPRESSED_FILE: libc::c_long = 4;
    let p = cstring(params)?;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: fd is open for the duration; params is a valid C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd() as libc::c_long,
            p.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn realtime_secs() -> i64 {
    // SAFETY: timespec is POD; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i64
}

/// Seconds since the kernel booted (CLOCK_BOOTTIME, the clock behind /proc/uptime).
pub fn uptime() -> Option<f64> {
    // SAFETY: timespec is POD; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (r == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

pub fn set_realtime(secs: i64, nanos: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as _,
        tv_nsec: nanos as _,
    };
    // SAFETY: valid pointer to a timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// Makes this process a child subreaper so orphans of supervised services come back to it
/// (PID 1 gets them anyway; this makes host tests see the same behaviour).
pub fn set_child_subreaper() {
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// One finished child, from waitpid(-1, WNOHANG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    pub status: ExitStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Reaps one exited child of this process (any pid), without blocking.
pub fn reap_one() -> Option<Exit> {
    let mut status: libc::c_int = 0;
    // SAFETY: valid pointer to an int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let st = if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(-1)
    };
    Some(Exit { pid, status: st })
}

/// The signals PID 1 handles synchronously (blocked everywhere, collected with sigtimedwait).
pub const HANDLED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
    libc::SIGUSR2,
    libc::SIGHUP,
];

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is POD; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: valid pointer and signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks the handled signals in the calling thread (threads spawned later inherit the mask;
/// std::process resets the mask in children).
pub fn block_signals(signals: &[libc::c_int]) {
    let set = sigset(signals);
    // SAFETY: valid set pointer.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits up to `timeout` for one of `signals` (which must be blocked); None on timeout.
pub fn wait_signal(signals: &[libc::c_int], timeout: std::time::Duration) -> Option<libc::c_int> {
    let set = sigset(signals);
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: valid pointers; info may be null.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if rc > 0 {
        Some(rc)
    } else {
        None
    }
}

/// `ioctl(fd, req, &mut value)` for the u64-argument block/ext4 ioctls.
pub fn ioctl_u64(file: &std::fs::File, req: libc::c_ulong, value: &mut u64) -> io::Result<()> {
    // SAFETY: the requests used with this take a pointer to a u64.
    check(unsafe { libc::ioctl(file.as_raw_fd(), req as _, value as *mut u64) })
}

/// `ioctl(fd, req, ptr)` with a caller-provided struct.
///
/// # Safety
/// `arg` must point to the structure the request expects.
pub unsafe fn ioctl_ptr(
    file: &std::fs::File,
    req: libc::c_ulong,
    arg: *mut libc::c_void,
) -> io::Result<()> {
    // SAFETY: forwarded to the caller.
    check(unsafe { libc::ioctl(file.as_raw_fd(), req as _, arg) })
}

/// Writes `data` to `path` so that a power cut leaves the old file or the new one, never a
/// partial one: a temp file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The loop driver's interface (linux/loop.h); libc does not declare it.
mod loop_dev {
    pub const CTL_GET_FREE: libc::c_ulong = 0x4C82;
    pub const SET_FD: libc::c_ulong = 0x4C00;
    pub const CLR_FD: libc::c_ulong = 0x4C01;
    pub const SET_STATUS64: libc::c_ulong = 0x4C04;
    /// Linux 5.8 and later: fd, flags and status in one call.
    pub const CONFIGURE: libc::c_ulong = 0x4C0A;
    pub const FLAGS_READ_ONLY: u32 = 1;
    pub const FLAGS_AUTOCLEAR: u32 = 4;

    #[repr(C)]
    pub struct Info64 {
        pub device: u64,
        pub inode: u64,
        pub rdevice: u64,
        pub offset: u64,
        pub sizelimit: u64,
        pub number: u32,
        pub encrypt_type: u32,
        pub encrypt_key_size: u32,
        pub flags: u32,
        pub file_name: [u8; 64],
        pub crypt_name: [u8; 64],
        pub encrypt_key: [u8; 32],
        pub init: [u64; 2],
    }

    #[repr(C)]
    pub struct Config {
        pub fd: u32,
        pub block_size: u32,
        pub info: Info64,
        pub reserved: [u64; 8],
    }

    // The kernel's sizes of struct loop_info64 and struct loop_config.
    const _: () = assert!(std::mem::size_of::<Info64>() == 232);
    const _: () = assert!(std::mem::size_of::<Config>() == 304);
}

/// Attaches `image` to a free loop device, read-only and cleared by the kernel when its last
/// user (the mounted filesystem) lets go. Returns the device node (`/dev/loop0`) and the device
/// open: its last close before a mount would clear it.
pub fn loop_attach(image: &Path) -> io::Result<(std::path::PathBuf, std::fs::File)> {
    let backing = std::fs::File::open(image)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device between the two calls: ask again.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), loop_dev::CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let node = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::File::open(&node)?;
        match loop_configure(&dev, &backing, image) {
            Ok(()) => return Ok((node, dev)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// LOOP_CONFIGURE, or on kernels before 5.8 LOOP_SET_FD then LOOP_SET_STATUS64 (there the
/// read-only backing file makes the device read-only).
fn loop_configure(dev: &std::fs::File, backing: &std::fs::File, image: &Path) -> io::Result<()> {
    // SAFETY: both structures are plain integers and byte arrays; zero is their empty value.
    let mut info: loop_dev::Info64 = unsafe { std::mem::zeroed() };
    info.flags = loop_dev::FLAGS_READ_ONLY | loop_dev::FLAGS_AUTOCLEAR;
    let name = image.as_os_str().as_bytes();
    let len = name.len().min(info.file_name.len() - 1);
    info.file_name[..len].copy_from_slice(&name[..len]);
    let mut cfg = loop_dev::Config {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a struct loop_config, which Config mirrors.
    let configured = unsafe {
        ioctl_ptr(
            dev,
            loop_dev::CONFIGURE,
            &mut cfg as *mut loop_dev::Config as *mut libc::c_void,
        )
    };
    match configured {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) => {}
        other => return other,
    }
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor as its argument.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            loop_dev::SET_FD as _,
            backing.as_raw_fd() as libc::c_ulong,
        )
    })?;
    // SAFETY: LOOP_SET_STATUS64 reads a struct loop_info64, which Info64 mirrors.
    let status = unsafe {
        ioctl_ptr(
            dev,
            loop_dev::SET_STATUS64,
            &mut cfg.info as *mut loop_dev::Info64 as *mut libc::c_void,
        )
    };
    if status.is_err() {
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), loop_dev::CLR_FD as _, 0) };
    }
    status
}
