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
