//! The console: the agent's one output. Every line goes out in a single write so lines from
//! services and the agent do not interleave mid-line. In PID 1's stage 2 a writer thread does
//! the writing, so a slow serial console never stalls the main loop. Tests can capture lines.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Capture = Arc<Mutex<Vec<String>>>;

static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

thread_local! {
    static THREAD_CAPTURE: std::cell::RefCell<Option<Capture>> =
        const { std::cell::RefCell::new(None) };
}

/// Routes console lines, from every thread, into a buffer as well (for tests); returns it.
pub fn capture() -> Capture {
    let buf: Capture = Arc::new(Mutex::new(Vec::new()));
    if let Ok(mut g) = CAPTURE.lock() {
        *g = Some(buf.clone());
    }
    buf
}

/// Routes the lines this thread says into a buffer as well: for unit tests, which run in
/// parallel threads and each want their own lines.
pub fn capture_thread() -> Capture {
    let buf: Capture = Arc::new(Mutex::new(Vec::new()));
    THREAD_CAPTURE.with(|c| *c.borrow_mut() = Some(buf.clone()));
    buf
}

fn push(buf: &Capture, text: &str) {
    if let Ok(mut v) = buf.lock() {
        v.push(text.to_string());
    }
}

/// Lines waiting for a slow console (115200 baud is ~11 KB/s), in two queues: the agent's own
/// milestones and service output. A service that prints faster than the console loses lines
/// (counted and reported), PID 1 never waits.
struct Queue {
    agent: VecDeque<Vec<u8>>,
    services: VecDeque<Vec<u8>>,
    dropped: u64,
}

struct Async {
    q: Mutex<Queue>,
    ready: Condvar,
    drained: Condvar,
}

/// Service lines waiting at most; beyond, they are dropped.
pub const SERVICE_BACKLOG: usize = 512;
/// Agent lines waiting at most (a console that stopped entirely must not grow memory forever).
pub const AGENT_BACKLOG: usize = 4096;

static ASYNC: OnceLock<Arc<Async>> = OnceLock::new();

/// From now on, console lines go through a writer thread to `out` (the console for PID 1);
/// before this, and in helper commands, every line is written directly.
pub fn start_async(out: Box<dyn Write + Send>) {
    let a = Arc::new(Async {
        q: Mutex::new(Queue {
            agent: VecDeque::new(),
            services: VecDeque::new(),
            dropped: 0,
        }),
        ready: Condvar::new(),
        drained: Condvar::new(),
    });
    if ASYNC.set(a.clone()).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || writer(a, out));
    if spawned.is_err() {
        direct(b"piimg-agent: console writer thread failed to start\n");
    }
}

/// How often the count of dropped lines is said: once per line would itself fill the console.
const DROP_NOTICE_EVERY: Duration = Duration::from_secs(5);

fn writer(a: Arc<Async>, mut out: Box<dyn Write + Send>) {
    // The first drop is said at once.
    let mut noticed = Instant::now()
        .checked_sub(DROP_NOTICE_EVERY)
        .unwrap_or_else(Instant::now);
    loop {
        let (next, dropped) = {
            let Ok(mut q) = a.q.lock() else { return };
            while q.agent.is_empty() && q.services.is_empty() {
                a.drained.notify_all();
                q = match a.ready.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            let next = q.agent.pop_front().or_else(|| q.services.pop_front());
            let dropped = if noticed.elapsed() >= DROP_NOTICE_EVERY {
                std::mem::take(&mut q.dropped)
            } else {
                0
            };
            (next, dropped)
        };
        if dropped > 0 {
            noticed = Instant::now();
            let _ = out.write_all(
                format!(
                    "piimg-agent: console: {dropped} service lines dropped (console too slow)\n"
                )
                .as_bytes(),
            );
        }
        if let Some(l) = next {
            // PID 1 must never die on a console error: ignore it.
            let _ = out.write_all(&l);
        }
    }
}

fn direct(buf: &[u8]) {
    let _ = std::io::stderr().lock().write_all(buf);
}

fn emit(text: &str, from_agent: bool) {
    if let Ok(g) = CAPTURE.lock() {
        if let Some(buf) = g.as_ref() {
            push(buf, text);
        }
    }
    THREAD_CAPTURE.with(|c| {
        if let Some(buf) = c.borrow().as_ref() {
            push(buf, text);
        }
    });
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    let Some(a) = ASYNC.get() else {
        direct(&buf);
        return;
    };
    if let Ok(mut q) = a.q.lock() {
        let (queue, cap) = if from_agent {
            (&mut q.agent, AGENT_BACKLOG)
        } else {
            (&mut q.services, SERVICE_BACKLOG)
        };
        if queue.len() < cap {
            queue.push_back(buf);
        } else {
            q.dropped += 1;
        }
        a.ready.notify_one();
    }
}

/// Waits up to `limit` for the queued lines to reach the console (before a reboot).
pub fn flush(limit: Duration) {
    let Some(a) = ASYNC.get() else { return };
    let until = Instant::now() + limit;
    let Ok(mut q) = a.q.lock() else { return };
    while !(q.agent.is_empty() && q.services.is_empty()) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        q = match a.drained.wait_timeout(q, left) {
            Ok((q, _)) => q,
            Err(_) => return,
        };
    }
}

/// Writes one line of service output (a trailing newline is added); dropped, and counted,
/// when the console is that far behind.
pub fn line(text: &str) {
    emit(text, false);
}

/// A milestone or diagnostic from the agent: `piimg-agent: MSG`.
pub fn say(msg: &str) {
    emit(&format!("piimg-agent: {msg}"), true);
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
