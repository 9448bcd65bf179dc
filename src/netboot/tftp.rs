//! A read-only TFTP server (RFC 1350) for the files a Raspberry Pi's boot ROM fetches when it
//! boots from the network, with option negotiation (RFC 2347): blksize (RFC 2348), tsize and
//! timeout (RFC 2349) and windowsize (RFC 7440). Block numbers roll over to 0 after 65535, as
//! tftp-hpa does, so files past 32 MiB at blksize 512 go through.
//!
//! Written here rather than taken from a crate: `tftpd` prints to stdout itself, cannot be
//! stopped, ignores netascii and checks paths only by their text (a symlink out of the folder is
//! served); `async-tftp` needs an async runtime and has no windowsize. The protocol is small.
//!
//! Threads: one per transfer, each with its own UDP socket (its TID, RFC 1350 section 4). A
//! transfer is lock-step blocking I/O on a 256 KiB stack (its buffers are on the heap), a cluster
//! boots tens of Pis at once, and [`MAX_TRANSFERS`] bounds the rest; a pool would only add
//! queueing.
//!
//! Which names are served is [`super::files`]'s rule, the same as for HTTP. Nothing here
//! prints: every transfer ends in one [`Event`].

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::files::{self, Refused};

/// The largest blksize RFC 2348 allows (a 65535-byte IPv4 datagram less its headers).
pub const MAX_BLKSIZE: usize = 65464;
const MIN_BLKSIZE: usize = 8;
const DEFAULT_BLKSIZE: usize = 512;
/// Retransmission interval when the client asks for none (tftp-hpa's default too).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retransmissions of one window before a transfer is given up.
const MAX_RETRIES: u32 = 5;
/// How long a blocking wait goes without looking at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Transfers at once; further requests are answered "server busy" and the client retries.
pub const MAX_TRANSFERS: usize = 512;
/// The largest window granted (RFC 7440 lets the server answer less), in blocks and in bytes: a
/// burst larger than a default socket buffer (208 KiB on Linux) only gets dropped.
const MAX_WINDOW: u16 = 64;
const WINDOW_BYTES: usize = 128 * 1024;
/// Stack of a transfer thread: its buffers are on the heap.
const THREAD_STACK: usize = 256 * 1024;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350 section 5, RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
}

/// Why the server could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Folder { path: PathBuf, source: io::Error },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("port {port} is in use on {ip} (another TFTP server? `ss -ulpn 'sport = :{port}'` names it): stop it, or serve on another port with --tftp-port", port = .0.port(), ip = .0.ip())]
    PortInUse(SocketAddr),
    #[error("binding UDP port {port} needs root or CAP_NET_BIND_SERVICE: run as root, or pick a port from 1024 up with --tftp-port", port = .0.port())]
    Privileged(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("receiving on {addr}: {source}")]
    Receive { addr: SocketAddr, source: io::Error },
}

/// The outcome of one request, for the log.
#[derive(Debug)]
pub enum Event {
    /// The whole file reached the client.
    Sent {
        peer: SocketAddr,
        file: String,
        bytes: u64,
        elapsed: Duration,
        blksize: usize,
        window: u16,
    },
    /// A transfer started and did not finish.
    Failed {
        peer: SocketAddr,
        file: String,
        reason: String,
        elapsed: Duration,
    },
    /// The request was answered with a TFTP error; nothing was sent.
    Refused {
        peer: SocketAddr,
        file: String,
        reason: String,
    },
}

/// A bound server; [`Server::serve`] answers requests until the stop flag is set.
pub struct Server {
    socket: UdpSocket,
    root: PathBuf,
    active: AtomicUsize,
}

impl Server {
    /// Binds `addr` (port 0: any free port, see [`Server::local_addr`]) to serve the files
    /// below `root`.
    pub fn bind(root: &Path, addr: SocketAddr) -> Result<Server, ServeError> {
        let folder = |source| ServeError::Folder {
            path: root.to_path_buf(),
            source,
        };
        let canonical = root.canonicalize().map_err(folder)?;
        if !canonical.is_dir() {
            return Err(ServeError::NotAFolder(root.to_path_buf()));
        }
        let socket = UdpSocket::bind(addr).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => ServeError::PortInUse(addr),
            io::ErrorKind::PermissionDenied => ServeError::Privileged(addr),
            _ => ServeError::Bind { addr, source },
        })?;
        Ok(Server {
            socket,
            root: canonical,
            active: AtomicUsize::new(0),
        })
    }

    /// The address actually bound (the port chosen for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Answers requests until `stop` is set, then waits for the running transfers to notice it.
    /// Every request ends in one call of `on_event`, from the thread that handled it.
    pub fn serve(
        &self,
        stop: &AtomicBool,
        on_event: &(dyn Fn(Event) + Sync),
    ) -> Result<(), ServeError> {
        let addr = self.local_addr().map_err(|source| ServeError::Receive {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let receive = |source| ServeError::Receive { addr, source };
        self.socket.set_read_timeout(Some(POLL)).map_err(receive)?;
        let mut buf = vec![0u8; 65536];
        std::thread::scope(|scope| {
            while !stop.load(Ordering::SeqCst) {
                let (n, peer) = match self.socket.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(e) if is_retry(&e) || e.kind() == io::ErrorKind::ConnectionRefused => {
                        continue
                    }
                    Err(e) => return Err(receive(e)),
                };
                match parse(&buf[..n]) {
                    Some(Packet::Read(req)) => self.start(scope, addr, peer, req, stop, on_event),
                    Some(Packet::Write(req)) => {
                        let reason = "this server is read-only";
                        refuse(addr, peer, ErrorCode::AccessViolation, reason);
                        on_event(Event::Refused {
                            peer,
                            file: req.file,
                            reason: format!("write request: {reason}"),
                        });
                    }
                    // Stray ACKs and garbage get no answer: replies to forged sources would
                    // make the server a reflector.
                    _ => {}
                }
            }
            Ok(())
        })
    }

    /// Runs one read request on its own thread, or refuses it when too many are running.
    fn start<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        local: SocketAddr,
        peer: SocketAddr,
        req: Request,
        stop: &'env AtomicBool,
        on_event: &'env (dyn Fn(Event) + Sync),
    ) {
        if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_TRANSFERS {
            self.active.fetch_sub(1, Ordering::SeqCst);
            refuse(local, peer, ErrorCode::NotDefined, "server busy, try again");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("tftp".into())
            .stack_size(THREAD_STACK)
            .spawn_scoped(scope, move || {
                on_event(self.transfer(local, peer, req, stop));
                self.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.active.fetch_sub(1, Ordering::SeqCst);
            refuse(local, peer, ErrorCode::NotDefined, "server busy, try again");
        }
    }

    /// Opens the file, negotiates the options and sends it.
    fn transfer(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        req: Request,
        stop: &AtomicBool,
    ) -> Event {
        let started = Instant::now();
        let file = req.file.clone();
        let refused = |code, reason: String| {
            refuse(local, peer, code, &reason);
            Event::Refused {
                peer,
                file: file.clone(),
                reason,
            }
        };
        let netascii = match req.mode.to_ascii_lowercase().as_str() {
            "octet" => false,
            "netascii" => true,
            m => {
                return refused(
                    ErrorCode::IllegalOperation,
                    format!("mode {m} is not supported"),
                )
            }
        };
        let source = match Source::open(&self.root, &req.file, netascii) {
            Ok(s) => s,
            Err((code, reason)) => return refused(code, reason),
        };
        let opts = negotiate(&req.options, (!netascii).then(|| source.len()));
        let failed = |reason: String| Event::Failed {
            peer,
            file: file.clone(),
            reason,
            elapsed: started.elapsed(),
        };
        let socket = match connect(local, peer) {
            Ok(s) => s,
            Err(e) => return failed(format!("no socket for the transfer: {e}")),
        };
        let sender = Sender {
            socket,
            source,
            opts,
            stop,
        };
        match sender.send() {
            Ok(bytes) => Event::Sent {
                peer,
                file,
                bytes,
                elapsed: started.elapsed(),
                blksize: sender.opts.blksize,
                window: sender.opts.window,
            },
            Err(reason) => failed(reason),
        }
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A new socket (TID) on the listening address, talking only to `peer`.
fn connect(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
    socket.connect(peer)?;
    Ok(socket)
}

/// Sends an ERROR packet from a new TID; a lost one costs the client only its own timeout.
fn refuse(local: SocketAddr, peer: SocketAddr, code: ErrorCode, msg: &str) {
    if let Ok(socket) = connect(local, peer) {
        let _ = socket.send(&error_packet(code, msg));
    }
}

/// A request: RRQ or WRQ (RFC 1350 section 5, options RFC 2347).
#[derive(Debug, PartialEq)]
pub struct Request {
    pub file: String,
    pub mode: String,
    /// Option names lower-cased (they are case-insensitive), values as sent.
    pub options: Vec<(String, String)>,
}

/// The packets a server receives.
#[derive(Debug, PartialEq)]
pub enum Packet {
    Read(Request),
    Write(Request),
    Ack(u16),
    Error(u16, String),
}

/// Parses a datagram; `None` for anything that is not a well-formed packet a server expects.
pub fn parse(buf: &[u8]) -> Option<Packet> {
    let opcode = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]);
    let rest = &buf[2..];
    match opcode {
        OP_RRQ | OP_WRQ => {
            // Strings are NUL-terminated; a trailing NUL leaves one empty piece after the split.
            let mut parts: Vec<&[u8]> = rest.split(|&b| b == 0).collect();
            if parts.pop() != Some(&[][..]) || parts.len() < 2 || !parts.len().is_multiple_of(2) {
                return None;
            }
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
            let file = text(parts[0])?;
            let mode = text(parts[1])?;
            if file.is_empty() {
                return None;
            }
            let options = parts[2..]
                .chunks(2)
                .map(|kv| Some((text(kv[0])?.to_ascii_lowercase(), text(kv[1])?)))
                .collect::<Option<Vec<_>>>()?;
            let req = Request {
                file,
                mode,
                options,
            };
            Some(if opcode == OP_RRQ {
                Packet::Read(req)
            } else {
                Packet::Write(req)
            })
        }
        OP_ACK if rest.len() == 2 => Some(Packet::Ack(u16::from_be_bytes([rest[0], rest[1]]))),
        OP_ERROR if rest.len() >= 2 => {
            let msg = rest[2..].split(|&b| b == 0).next().unwrap_or_default();
            Some(Packet::Error(
                u16::from_be_bytes([rest[0], rest[1]]),
                String::from_utf8_lossy(msg).into_owned(),
            ))
        }
        _ => None,
    }
}

fn error_packet(code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + msg.len());
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// What a transfer runs with, and the OACK that says so (None: the client asked for nothing
/// granted, and the transfer starts with DATA 1 as in RFC 1350).
#[derive(Debug, PartialEq)]
pub struct Options {
    pub blksize: usize,
    pub timeout: Duration,
    pub window: u16,
    pub oack: Option<Vec<u8>>,
}

/// Grants what the server supports of the client's options (RFC 2347: unknown or invalid
/// options are left out of the OACK). `size` is None when the size is not known ahead (netascii,
/// whose line ends grow in transit: tftp-hpa leaves tsize out there too).
pub fn negotiate(requested: &[(String, String)], size: Option<u64>) -> Options {
    let mut opts = Options {
        blksize: DEFAULT_BLKSIZE,
        timeout: DEFAULT_TIMEOUT,
        window: 1,
        oack: None,
    };
    let mut granted: Vec<(&str, String)> = Vec::new();
    for (name, value) in requested {
        let n: Option<u64> = value.trim().parse().ok();
        match (name.as_str(), n) {
            ("blksize", Some(v)) if v >= MIN_BLKSIZE as u64 => {
                opts.blksize = v.min(MAX_BLKSIZE as u64) as usize;
                granted.push(("blksize", opts.blksize.to_string()));
            }
            ("timeout", Some(v @ 1..=255)) => {
                opts.timeout = Duration::from_secs(v);
                granted.push(("timeout", v.to_string()));
            }
            ("tsize", Some(_)) => {
                if let Some(size) = size {
                    granted.push(("tsize", size.to_string()));
                }
            }
            ("windowsize", Some(v @ 1..=65535)) => {
                opts.window = v as u16;
                granted.push(("windowsize", String::new()));
            }
            _ => {}
        }
    }
    // The window is known once blksize is, which may come after it in the request.
    let fits = (WINDOW_BYTES / opts.blksize).clamp(1, usize::from(MAX_WINDOW)) as u16;
    opts.window = opts.window.min(fits);
    for (name, value) in &mut granted {
        if *name == "windowsize" {
            *value = opts.window.to_string();
        }
    }
    if !granted.is_empty() {
        let mut p = OP_OACK.to_be_bytes().to_vec();
        for (name, value) in granted {
            p.extend_from_slice(name.as_bytes());
            p.push(0);
            p.extend_from_slice(value.as_bytes());
            p.push(0);
        }
        opts.oack = Some(p);
    }
    opts
}

type Refusal = (ErrorCode, String);

/// The TFTP error that says why a name is not served.
fn refusal(r: Refused) -> Refusal {
    match r {
        Refused::NotFound => (ErrorCode::FileNotFound, r.to_string()),
        Refused::Denied(why) => (ErrorCode::AccessViolation, why),
    }
}

/// The largest file served in netascii mode (text: configs, cmdline.txt). With
/// [`MAX_TRANSFERS`] at once this bounds the memory netascii copies can take.
const NETASCII_MAX: u64 = 1 << 20;

/// The bytes a transfer sends: the file read in place, or its netascii form in memory.
enum Source {
    File(File, u64),
    Bytes(Vec<u8>),
}

impl Source {
    /// Opens a requested name inside `root`.
    fn open(root: &Path, name: &str, netascii: bool) -> Result<Source, Refusal> {
        let (file, len) = files::open(root, name).map_err(refusal)?;
        if !netascii {
            return Ok(Source::File(file, len));
        }
        // A netascii copy lives in memory for the whole transfer: bounded, so that forged
        // requests for root images cannot exhaust the server's memory.
        if len > NETASCII_MAX {
            return Err((
                ErrorCode::AccessViolation,
                format!("{len} bytes is too large for netascii (at most {NETASCII_MAX}); ask in octet mode"),
            ));
        }
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut &file, &mut raw)
            .map_err(|e| (ErrorCode::AccessViolation, e.to_string()))?;
        Ok(Source::Bytes(to_netascii(&raw)))
    }

    fn len(&self) -> u64 {
        match self {
            Source::File(_, len) => *len,
            Source::Bytes(b) => b.len() as u64,
        }
    }

    /// Fills `buf` from `offset`; fewer bytes only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::File(file, len) => {
                let want = buf.len().min(len.saturating_sub(offset) as usize);
                let mut got = 0;
                while got < want {
                    match file.read_at(&mut buf[got..want], offset + got as u64)? {
                        0 => break,
                        n => got += n,
                    }
                }
                Ok(got)
            }
            Source::Bytes(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
        }
    }
}

/// Netascii (RFC 764): a line ends in CR LF, a bare CR is sent as CR NUL.
pub fn to_netascii(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
    out
}

/// The block an ACK number means: the one in `base..base + 65536` with that number modulo 65536
/// (block numbers roll over to 0).
pub fn ack_block(base: u64, number: u16) -> u64 {
    base + u64::from(number.wrapping_sub(base as u16))
}

/// One running transfer.
struct Sender<'a> {
    socket: UdpSocket,
    source: Source,
    opts: Options,
    stop: &'a AtomicBool,
}

impl Sender<'_> {
    /// Sends the OACK, then the file window by window; the bytes sent, or why it stopped.
    fn send(&self) -> Result<u64, String> {
        if let Some(oack) = &self.opts.oack {
            // The OACK stands in for block 0: the client acknowledges it with ACK 0.
            self.with_retries(|| {
                self.send_packet(oack)?;
                self.wait_ack(0, 0, 0)
            })?;
        }
        let blksize = self.opts.blksize as u64;
        // The last block is shorter than blksize, empty when the size is a multiple of it.
        let last = self.source.len() / blksize + 1;
        let mut packet = vec![0u8; 4 + self.opts.blksize];
        let mut acked = 0;
        while acked < last {
            let end = last.min(acked + u64::from(self.opts.window));
            acked = self.with_retries(|| {
                for block in acked + 1..=end {
                    self.send_block(block, &mut packet)?;
                }
                self.wait_ack(acked, acked + 1, end)
            })?;
        }
        Ok(self.source.len())
    }

    /// Repeats `attempt` (send, then wait one timeout) until it is answered, at most
    /// [`MAX_RETRIES`] times more.
    fn with_retries(
        &self,
        mut attempt: impl FnMut() -> Result<Option<u64>, String>,
    ) -> Result<u64, String> {
        for _ in 0..=MAX_RETRIES {
            if let Some(block) = attempt()? {
                return Ok(block);
            }
        }
        Err(format!(
            "no answer after {} tries {} s apart",
            MAX_RETRIES + 1,
            self.opts.timeout.as_secs()
        ))
    }

    /// Sends one packet. "Connection refused" reports an ICMP error for an earlier packet; the
    /// client may have closed its port after the last ACK while repeats of a window were still
    /// on their way, so it is no reason to stop: an unanswered client runs out of retries.
    fn send_packet(&self, packet: &[u8]) -> Result<(), String> {
        match self.socket.send(packet) {
            Err(e) if e.kind() != io::ErrorKind::ConnectionRefused => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    fn send_block(&self, block: u64, packet: &mut [u8]) -> Result<(), String> {
        let blksize = self.opts.blksize;
        let n = self
            .source
            .read_at((block - 1) * blksize as u64, &mut packet[4..4 + blksize])
            .map_err(|e| format!("reading the file: {e}"))?;
        packet[..2].copy_from_slice(&OP_DATA.to_be_bytes());
        packet[2..4].copy_from_slice(&(block as u16).to_be_bytes());
        self.send_packet(&packet[..4 + n])
    }

    /// Waits one timeout for an ACK of a block in `first..=last` (numbers counted from `base`,
    /// the last acknowledged); `None` when the timeout passes. Duplicate ACKs are ignored, so a
    /// late one never doubles the traffic (the Sorcerer's Apprentice bug, RFC 1123 4.2.3.1).
    fn wait_ack(&self, base: u64, first: u64, last: u64) -> Result<Option<u64>, String> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut buf = [0u8; 1024];
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err("the server is stopping".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket
                .set_read_timeout(Some(left.min(POLL)))
                .map_err(|e| e.to_string())?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if is_retry(&e) || e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e.to_string()),
            };
            match parse(&buf[..n]) {
                Some(Packet::Ack(number)) => {
                    let block = ack_block(base, number);
                    if (first..=last).contains(&block) {
                        return Ok(Some(block));
                    }
                }
                Some(Packet::Error(code, msg)) => {
                    return Err(format!("the client gave up: error {code}: {msg}"))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(file: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        for s in [file, mode]
            .into_iter()
            .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
        {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn a_read_request_parses_with_its_options_lower_cased() {
        let p = parse(&rrq(
            "start4.elf",
            "octet",
            &[("BLKSIZE", "1468"), ("tsize", "0")],
        ));
        assert_eq!(
            p,
            Some(Packet::Read(Request {
                file: "start4.elf".into(),
                mode: "octet".into(),
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into())
                ],
            }))
        );
    }

    #[test]
    fn truncated_or_unterminated_requests_are_ignored() {
        let full = rrq("a", "octet", &[("blksize", "512")]);
        // Every cut but the one after "octet\0" (a request without options) is malformed.
        let valid = rrq("a", "octet", &[]).len();
        for cut in (0..full.len()).filter(|&c| c != valid) {
            assert_eq!(parse(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(&rrq("", "octet", &[])), None);
        assert_eq!(parse(&[0, 9, 1, 2]), None);
    }

    #[test]
    fn blksize_is_clamped_and_invalid_options_are_left_out() {
        let o = negotiate(
            &[
                ("blksize".into(), "70000".into()),
                ("timeout".into(), "0".into()),
                ("windowsize".into(), "1000".into()),
                ("tsize".into(), "0".into()),
                ("rollover".into(), "0".into()),
            ],
            Some(1234),
        );
        assert_eq!(o.blksize, MAX_BLKSIZE);
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
        // Two 65464-byte blocks fit the socket buffer, a third would not.
        assert_eq!(o.window, 2);
        let oack = o.oack.expect("an OACK");
        assert_eq!(&oack[..2], &OP_OACK.to_be_bytes());
        assert_eq!(
            &oack[2..],
            b"blksize\x0065464\x00windowsize\x002\x00tsize\x001234\x00"
        );
        let w = negotiate(&[("windowsize".into(), "100".into())], None);
        assert_eq!(w.window, MAX_WINDOW);
        let small = negotiate(&[("blksize".into(), "7".into())], None);
        assert_eq!((small.blksize, small.oack), (DEFAULT_BLKSIZE, None));
    }

    #[test]
    fn netascii_has_no_tsize_because_its_size_is_not_known_ahead() {
        let o = negotiate(&[("tsize".into(), "0".into())], None);
        assert_eq!(o.oack, None);
    }

    #[test]
    fn ack_numbers_roll_over_to_zero_after_65535() {
        assert_eq!(ack_block(65535, 0), 65536);
        assert_eq!(ack_block(65530, 3), 65539);
        assert_eq!(ack_block(73_690, (73_697 % 65536) as u16), 73_697);
        assert_eq!(ack_block(5, 5), 5);
    }

    #[test]
    fn netascii_ends_lines_in_cr_lf_and_escapes_a_bare_cr() {
        assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
    }

    /// A minimal client: fetches `file` with `opts`, dropping the first DATA packet it sees
    /// when `drop_first` (the server must send it again after its timeout).
    fn fetch(server: SocketAddr, file: &str, opts: &[(&str, &str)], drop_first: bool) -> Vec<u8> {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.send_to(&rrq(file, "octet", opts), server).unwrap();
        let blksize: usize = opts
            .iter()
            .find(|(k, _)| *k == "blksize")
            .map_or(512, |(_, v)| v.parse().unwrap());
        let mut buf = vec![0u8; 4 + blksize];
        let (mut out, mut expect, mut dropped) = (Vec::new(), 1u16, !drop_first);
        loop {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            let op = u16::from_be_bytes([buf[0], buf[1]]);
            if op == OP_OACK {
                s.send_to(&[0, 4, 0, 0], from).unwrap();
                continue;
            }
            assert_eq!(op, OP_DATA, "{:?}", &buf[..n]);
            if !dropped {
                dropped = true;
                continue;
            }
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if block == expect {
                out.extend_from_slice(&buf[4..n]);
                s.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
                expect = expect.wrapping_add(1);
                if n < 4 + blksize {
                    return out;
                }
            }
        }
    }

    #[test]
    fn a_file_past_65535_blocks_arrives_whole_and_a_lost_block_is_sent_again() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..70_000u32 * 8 + 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(t.path().join("big"), &data).unwrap();
        let server = Server::bind(t.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        let events = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let serving = s.spawn(|| server.serve(&stop, &|e| events.lock().unwrap().push(e)));
            let got = fetch(addr, "big", &[("blksize", "8"), ("windowsize", "4")], false);
            assert!(got == data, "{} bytes of {}", got.len(), data.len());
            let small = fetch(
                addr,
                "/big",
                &[("blksize", "65464"), ("timeout", "1")],
                true,
            );
            assert!(small == data);
            // The server logs a transfer once it has the last ACK, which may still be on its way.
            while events.lock().unwrap().len() < 2 {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::SeqCst);
            serving.join().unwrap().unwrap();
        });
        let events = events.into_inner().unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Event::Sent { bytes, .. } if *bytes == data.len() as u64)),
            "{events:?}"
        );
    }

    #[test]
    fn a_port_in_use_is_named() {
        let t = tempfile::tempdir().unwrap();
        let first = Server::bind(t.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = Server::bind(t.path(), addr).err().unwrap();
        assert!(matches!(err, ServeError::PortInUse(_)));
        assert!(err
            .to_string()
            .starts_with(&format!("port {} is in use", addr.port())));
    }
}
