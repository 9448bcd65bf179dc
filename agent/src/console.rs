//! The console: the agent's one output. Every line goes out in a single write so lines from
//! services and the agent do not interleave mid-line. Tests can capture the lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

type Capture = Arc<Mutex<Vec<String>>>;

static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

/// Routes console lines into a buffer as well (for tests); returns the buffer.
pub fn capture() -> Capture {
    let buf: Capture = Arc::new(Mutex::new(Vec::new()));
    if let Ok(mut g) = CAPTURE.lock() {
        *g = Some(buf.clone());
    }
    buf
}

/// Writes one raw line (a trailing newline is added).
pub fn line(text: &str) {
    if let Ok(g) = CAPTURE.lock() {
        if let Some(c) = g.as_ref() {
            if let Ok(mut v) = c.lock() {
                v.push(text.to_string());
            }
        }
    }
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    // PID 1 must never die on a console error: ignore it.
    let _ = std::io::stderr().lock().write_all(&buf);
}

/// A milestone or diagnostic from the agent: `piimg-agent: MSG`.
pub fn say(msg: &str) {
    line(&format!("piimg-agent: {msg}"));
}

/// Reopens /dev/console as stdin/stdout/stderr (the kernel leaves them closed when the initramfs
/// has no /dev/console node; after devtmpfs is mounted the node exists).
pub fn attach_dev_console(path: &std::path::Path) {
    use std::os::unix::io::AsRawFd;
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(path)
    {
        for fd in 0..3 {
            // SAFETY: dup2 on a valid open fd.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// Whether fd 2 is open (the kernel may start init with no console).
pub fn stderr_is_open() -> bool {
    // SAFETY: F_GETFD on a possibly-closed fd only reports EBADF.
    unsafe { libc::fcntl(2, libc::F_GETFD) >= 0 }
}
