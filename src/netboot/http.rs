//! A read-only HTTP/1.1 server for the root images a netbooting node's initramfs fetches, over
//! the same tree and under the same rule as the TFTP server ([`super::files`]): GET and HEAD,
//! and one byte range per request (RFC 9110 section 14) so that a cut download resumes where
//! it stopped.
//!
//! Requests are parsed by `httparse` (hyper's parser, no dependencies); the rest is small enough
//! to need no HTTP framework or async runtime. One request per connection (`Connection: close`):
//! a node fetches one root image, and no idle connection then holds a thread.
//!
//! Threads: one per connection, up to [`MAX_CONNECTIONS`]; further ones get 503. A request head
//! must arrive whole within [`HEAD_TIMEOUT`] (a client trickling bytes holds its thread no
//! longer), and a client that takes none of the response for [`STALL_TIMEOUT`] is dropped.
//! Bodies go from the file to the socket by sendfile(2): a root image is never read into
//! memory. Nothing here prints: every request ends in one
//! [`Event`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::files::{self, Refused};

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The longest request head read (request line and headers).
const HEAD_LIMIT: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Time for a whole request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client may take none of the response before it is dropped.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a blocking call goes without looking at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Bytes handed to one sendfile between two looks at the stop flag.
const CHUNK: u64 = 4 << 20;
/// Stack of a connection thread: its buffers are on the heap.
const THREAD_STACK: usize = 256 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Folder { path: PathBuf, source: io::Error },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("TCP port {port} is in use on {ip} (another web server? `ss -tlpn 'sport = :{port}'` names it): stop it, or serve HTTP on another port with --http-port", port = .0.port(), ip = .0.ip())]
    PortInUse(SocketAddr),
    #[error("binding TCP port {port} for HTTP needs root or CAP_NET_BIND_SERVICE: run as root, or pick a port from 1024 up with --http-port", port = .0.port())]
    Privileged(SocketAddr),
    #[error("cannot listen on {addr} for HTTP: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// The outcome of one request, for the log.
#[derive(Debug)]
pub struct Event {
    pub peer: SocketAddr,
    /// Method and target as sent; empty when the request could not be read.
    pub method: String,
    pub target: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Why the request was refused or its response cut short.
    pub problem: Option<String>,
}

/// A bound server; [`Server::serve`] answers requests until the stop flag is set.
pub struct Server {
    listener: TcpListener,
    root: PathBuf,
    active: AtomicUsize,
}

impl Server {
    /// Binds `addr` (port 0: any free port, see [`Server::local_addr`]) to serve the files
    /// below `root`.
    pub fn bind(root: &Path, addr: SocketAddr) -> Result<Server, ServeError> {
        let canonical = root.canonicalize().map_err(|source| ServeError::Folder {
            path: root.to_path_buf(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(ServeError::NotAFolder(root.to_path_buf()));
        }
        let bind_error = |source: io::Error| match source.kind() {
            io::ErrorKind::AddrInUse => ServeError::PortInUse(addr),
            io::ErrorKind::PermissionDenied => ServeError::Privileged(addr),
            _ => ServeError::Bind { addr, source },
        };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        // Non-blocking so that the accept loop can wait with a timeout (poll) and see `stop`.
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(Server {
            listener,
            root: canonical,
            active: AtomicUsize::new(0),
        })
    }

    /// The address actually bound (the port chosen for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `stop` is set, then waits for the running ones to notice it.
    /// Every request ends in one call of `on_event`, from the thread that handled it.
    pub fn serve(&self, stop: &AtomicBool, on_event: &(dyn Fn(Event) + Sync)) {
        std::thread::scope(|scope| {
            while !stop.load(Ordering::SeqCst) {
                if !readable(&self.listener, POLL) {
                    continue;
                }
                match self.listener.accept() {
                    Ok((stream, peer)) => self.start(scope, stream, peer, stop, on_event),
                    // Every accept error is about one connection or a passing shortage (file
                    // descriptors, memory): the listener itself stays good.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        })
    }

    /// Runs one connection on its own thread, or answers 503 when too many are running.
    fn start<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        stream: TcpStream,
        peer: SocketAddr,
        stop: &'env AtomicBool,
        on_event: &'env (dyn Fn(Event) + Sync),
    ) {
        let busy = |stream: TcpStream| {
            // Non-blocking: a new connection's send buffer takes this, and a client that does
            // not read it costs the accept loop nothing.
            let _ = stream.set_nonblocking(true);
            let reply = Reply::text(503, "server busy, try again\n");
            let _ = (&stream).write_all(reply.head().as_bytes());
            let _ = (&stream).write_all(reply.text.as_bytes());
            on_event(Event {
                peer,
                method: String::new(),
                target: String::new(),
                status: 503,
                bytes: 0,
                elapsed: Duration::ZERO,
                problem: reply.problem,
            });
        };
        if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return busy(stream);
        }
        let Ok(spare) = stream.try_clone() else {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .stack_size(THREAD_STACK)
            .spawn_scoped(scope, move || {
                if let Some(event) = self.connection(stream, peer, stop) {
                    on_event(event);
                }
                self.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.active.fetch_sub(1, Ordering::SeqCst);
            busy(spare);
        }
    }

    /// Reads one request and answers it; `None` when the client sent nothing at all.
    fn connection(&self, stream: TcpStream, peer: SocketAddr, stop: &AtomicBool) -> Option<Event> {
        let started = Instant::now();
        let event = |method: &str, target: &str, status, bytes, problem| Event {
            peer,
            method: method.to_string(),
            target: target.to_string(),
            status,
            bytes,
            elapsed: started.elapsed(),
            problem,
        };
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(POLL)))
            .and_then(|()| stream.set_write_timeout(Some(POLL)));
        if setup.is_err() {
            return None;
        }
        let (head, unread) = match read_head(&stream, started + HEAD_TIMEOUT, stop) {
            Ok(got) => got,
            Err(HeadError::Nothing) => return None,
            Err(HeadError::Bad(status, why)) => {
                let reply = Reply::text(status, &format!("{why}\n"));
                let problem = Some(why);
                let sent = reply.send(&stream, false).is_ok();
                finish(&stream, true);
                let bytes = if sent { reply.text.len() as u64 } else { 0 };
                return Some(event("", "", status, bytes, problem));
            }
        };
        let mut reply = self.answer(&head);
        let is_head = head.method == "HEAD";
        let (bytes, cut) = match reply.send(&stream, is_head) {
            Err(e) => (0, Some(e.to_string())),
            Ok(()) if is_head => (0, None),
            Ok(()) => match reply.body.take() {
                Some((file, start, len)) => send_file(&stream, &file, start, len, stop),
                None => (reply.text.len() as u64, None),
            },
        };
        finish(&stream, unread || head.has_body);
        Some(event(
            &head.method,
            &head.target,
            reply.status,
            bytes,
            cut.or(reply.problem),
        ))
    }

    /// The reply to a well-formed request.
    fn answer(&self, head: &Head) -> Reply {
        if head.method != "GET" && head.method != "HEAD" {
            let mut r = Reply::text(405, "only GET and HEAD\n");
            r.headers.push(("Allow", "GET, HEAD".into()));
            return r;
        }
        if head.version == 1 && !head.host {
            // RFC 9112 section 3.2: an HTTP/1.1 request without Host is answered 400.
            return Reply::text(400, "no Host header\n");
        }
        let Some(name) = target_path(&head.target) else {
            return Reply::text(400, "bad request target\n");
        };
        let (file, len) = match files::open(&self.root, &name) {
            Ok(opened) => opened,
            Err(Refused::NotFound) => return Reply::text(404, "not found\n"),
            Err(Refused::Denied(why)) => {
                let mut r = Reply::text(403, "forbidden\n");
                r.problem = Some(why);
                return r;
            }
        };
        // Ranges are defined for GET only (RFC 9110 section 14.2); an If-Range this server
        // cannot check (it sends no validators) means the whole file.
        let range = match &head.range {
            Some(spec) if head.method == "GET" && !head.if_range => byte_range(spec, len),
            _ => Ranged::Whole,
        };
        let (status, start, count) = match range {
            Ranged::Whole => (200, 0, len),
            Ranged::Part(first, last) => (206, first, last - first + 1),
            Ranged::Unsatisfiable => {
                let mut r = Reply::text(416, "range not satisfiable\n");
                r.headers.push(("Content-Range", format!("bytes */{len}")));
                r.headers.push(("Accept-Ranges", "bytes".into()));
                return r;
            }
        };
        let mut r = Reply::new(status);
        r.headers
            .push(("Content-Type", "application/octet-stream".into()));
        r.headers.push(("Content-Length", count.to_string()));
        r.headers.push(("Accept-Ranges", "bytes".into()));
        if status == 206 {
            let last = start + count - 1;
            r.headers
                .push(("Content-Range", format!("bytes {start}-{last}/{len}")));
        }
        r.body = Some((file, start, count));
        r
    }
}

/// Waits up to `timeout` for a connection to accept; false on timeout or a signal.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) > 0 }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// What this server uses of a request head.
#[derive(Debug, Default, PartialEq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub host: bool,
    pub range: Option<String>,
    pub if_range: bool,
    /// The request announces a body (never read: the connection closes after the reply).
    pub has_body: bool,
}

enum HeadError {
    /// The client closed, or sent nothing before the deadline: no request to answer.
    Nothing,
    /// A status and the reason to answer with.
    Bad(u16, String),
}

/// Parses a request head; `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut head = Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        version: req.version.unwrap_or_default(),
        ..Head::default()
    };
    for h in req.headers.iter() {
        let value = || String::from_utf8_lossy(h.value).trim().to_string();
        match h.name.to_ascii_lowercase().as_str() {
            "host" => head.host = true,
            "range" => head.range = Some(value()),
            "if-range" => head.if_range = true,
            "transfer-encoding" => head.has_body = true,
            "content-length" => head.has_body |= value() != "0",
            _ => {}
        }
    }
    Ok(Some((head, used)))
}

/// Reads until a whole request head is in, the deadline passes or the server stops. The flag
/// says whether bytes past the head arrived (they are never read).
fn read_head(
    mut stream: &TcpStream,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(Head, bool), HeadError> {
    let mut buf = vec![0u8; HEAD_LIMIT];
    let mut filled = 0;
    loop {
        if filled > 0 {
            match parse_head(&buf[..filled]) {
                Ok(Some((head, used))) => return Ok((head, used < filled)),
                Ok(None) => {}
                Err(e) => return Err(HeadError::Bad(400, format!("malformed request: {e}"))),
            }
        }
        if filled == buf.len() {
            return Err(HeadError::Bad(431, "request head too large".into()));
        }
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return Err(match filled {
                0 => HeadError::Nothing,
                _ => HeadError::Bad(408, "the request did not arrive in time".into()),
            });
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(HeadError::Nothing),
            Ok(n) => filled += n,
            Err(e) if is_retry(&e) => {}
            Err(_) => return Err(HeadError::Nothing),
        }
    }
}

/// The name a request target asks for: its path, %XX escapes decoded. `None` for a target
/// that is not a path (`*`, `name`) or decodes to no text.
pub fn target_path(target: &str) -> Option<String> {
    // Absolute form (RFC 9112 section 3.2.2), as sent to proxies: its path is what counts.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return None;
    }
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()
        .map(|p| p.into_owned())
}

/// What a Range header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range (absent, another unit, malformed or several): the whole file, 200.
    Whole,
    /// Bytes `first..=last`, 206.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Reads `bytes=a-b`, `bytes=a-` and `bytes=-n` (RFC 9110 section 14.1.2). Several ranges get
/// the whole file, which section 14.2 allows.
pub fn byte_range(header: &str, len: u64) -> Ranged {
    let Some((unit, set)) = header.split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs[..] else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (number(first), number(last), last.is_empty()) {
        // bytes=-n: the last n bytes.
        (None, Some(n), _) if first.is_empty() => match (n, len) {
            (0, _) | (_, 0) => Ranged::Unsatisfiable,
            _ => Ranged::Part(len - n.min(len), len - 1),
        },
        // bytes=a-
        (Some(a), None, true) if a < len => Ranged::Part(a, len - 1),
        (Some(_), None, true) => Ranged::Unsatisfiable,
        // bytes=a-b
        (Some(a), Some(b), _) if a <= b && a < len => Ranged::Part(a, b.min(len - 1)),
        (Some(a), Some(b), _) if a <= b => Ranged::Unsatisfiable,
        _ => Ranged::Whole,
    }
}

/// A response: status, headers, then a short text or a part of a file.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    text: String,
    /// The file, the first byte and the count to send after the head.
    body: Option<(File, u64, u64)>,
    /// For the log: why the request was refused, when the reply does not say it all.
    problem: Option<String>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            text: String::new(),
            body: None,
            problem: None,
        }
    }

    /// An error (or busy) reply whose body says why.
    fn text(status: u16, text: &str) -> Reply {
        let mut r = Reply::new(status);
        r.headers
            .push(("Content-Type", "text/plain; charset=utf-8".into()));
        r.headers.push(("Content-Length", text.len().to_string()));
        r.text = text.to_string();
        r.problem = Some(text.trim_end().to_string());
        r
    }

    fn head(&self) -> String {
        let mut h = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: piimg\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            http_date(SystemTime::now())
        );
        for (name, value) in &self.headers {
            h.push_str(&format!("{name}: {value}\r\n"));
        }
        h.push_str("\r\n");
        h
    }

    /// Sends the head, and the text body unless the request was HEAD.
    fn send(&self, mut stream: &TcpStream, is_head: bool) -> io::Result<()> {
        let mut out = self.head().into_bytes();
        if !is_head {
            out.extend_from_slice(self.text.as_bytes());
        }
        write_all(&mut stream, &out)
    }
}

/// `write_all` through the short write timeout, giving up after [`STALL_TIMEOUT`] without
/// progress.
fn write_all(stream: &mut &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    let mut progress = Instant::now();
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                progress = Instant::now();
            }
            Err(e) if is_retry(&e) && progress.elapsed() < STALL_TIMEOUT => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `count` bytes of `file` from `start`: the bytes sent, and why it stopped short.
fn send_file(
    stream: &TcpStream,
    file: &File,
    start: u64,
    count: u64,
    stop: &AtomicBool,
) -> (u64, Option<String>) {
    let (mut offset, end) = (start, start + count);
    let mut progress = Instant::now();
    while offset < end {
        if stop.load(Ordering::SeqCst) {
            return (offset - start, Some("the server is stopping".into()));
        }
        let chunk = (end - offset).min(CHUNK) as usize;
        match sendfile(stream, file, &mut offset, chunk) {
            Ok(0) => {
                let why = "the file got shorter while it was sent";
                return (offset - start, Some(why.into()));
            }
            Ok(_) => progress = Instant::now(),
            Err(e) if is_retry(&e) && progress.elapsed() < STALL_TIMEOUT => {}
            Err(e) if is_retry(&e) => {
                let why = format!("the client took nothing for {} s", STALL_TIMEOUT.as_secs());
                return (offset - start, Some(why));
            }
            Err(e) => return (offset - start, Some(e.to_string())),
        }
    }
    (count, None)
}

/// sendfile(2) from `offset`, which it moves past the bytes sent. Called directly: std's
/// `io::copy` will not use it from a file to a socket (it keeps `Write`'s promise that later
/// changes to the file are not sent), which matters little for an image nobody rewrites while
/// it is served, and a node checks its root's sha256 anyway.
fn sendfile(stream: &TcpStream, file: &File, offset: &mut u64, count: usize) -> io::Result<usize> {
    // sendfile64 on glibc, where off_t may be 32 bits; musl's off_t is 64 bits.
    #[cfg(not(target_env = "gnu"))]
    use libc::sendfile;
    #[cfg(target_env = "gnu")]
    use libc::sendfile64 as sendfile;
    let mut off =
        i64::try_from(*offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: two open descriptors, and `off` outlives the call.
    let n = unsafe { sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// Closes the connection. When the client may still be sending (a body, pipelined bytes,
/// garbage), its bytes are read away for a moment first: closing with unread data resets the
/// connection, and the client could lose the end of the reply.
fn finish(mut stream: &TcpStream, unread: bool) {
    let _ = stream.shutdown(Shutdown::Write);
    if unread {
        let until = Instant::now() + Duration::from_secs(1);
        let mut sink = [0u8; 4096];
        while Instant::now() < until {
            match stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_retry(&e) => {}
                Err(_) => break,
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// An HTTP date (RFC 9110 section 5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_of_each_form_and_what_is_not_satisfiable() {
        let r = |h| byte_range(h, 1000);
        assert_eq!(r("bytes=0-99"), Ranged::Part(0, 99));
        assert_eq!(r("bytes=900-5000"), Ranged::Part(900, 999));
        assert_eq!(r("bytes=10-"), Ranged::Part(10, 999));
        assert_eq!(r("bytes=-100"), Ranged::Part(900, 999));
        assert_eq!(r("bytes=-5000"), Ranged::Part(0, 999));
        assert_eq!(r("Bytes = 5-5"), Ranged::Part(5, 5));
        assert_eq!(r("bytes=1000-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=1000-2000"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(byte_range("bytes=-10", 0), Ranged::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-", 0), Ranged::Unsatisfiable);
    }

    #[test]
    fn malformed_foreign_or_multiple_ranges_mean_the_whole_file() {
        for h in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=-",
            "bytes=1",
            "items=0-1",
            "0-1",
            "bytes=0-1,5-9",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(byte_range(h, 1000), Ranged::Whole, "{h}");
        }
        assert_eq!(byte_range("bytes=0-1,", 1000), Ranged::Part(0, 1));
    }

    #[test]
    fn a_head_parses_with_what_the_server_uses() {
        let req = b"GET /n/root.img HTTP/1.1\r\nHost: x\r\nrange: bytes=1-\r\n\r\nGET";
        let (head, used) = parse_head(req).unwrap().unwrap();
        assert_eq!(used, req.len() - 3);
        assert_eq!(
            head,
            Head {
                method: "GET".into(),
                target: "/n/root.img".into(),
                version: 1,
                host: true,
                range: Some("bytes=1-".into()),
                ..Head::default()
            }
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHo").unwrap(), None);
        assert!(parse_head(b"\x16\x03\x01garbage\r\n\r\n").is_err());
    }

    #[test]
    fn targets_are_percent_decoded_paths() {
        assert_eq!(target_path("/a%20b/c?x=1").as_deref(), Some("/a b/c"));
        assert_eq!(target_path("/%2e%2e/secret").as_deref(), Some("/../secret"));
        assert_eq!(target_path("http://h:1/r.img").as_deref(), Some("/r.img"));
        assert_eq!(target_path("http://h").as_deref(), Some("/"));
        assert_eq!(target_path("*"), None);
        assert_eq!(target_path("/%ff"), None);
    }

    #[test]
    fn dates_are_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
