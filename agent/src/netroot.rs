//! Netboot's root image: one HTTP/1.1 GET into RAM, checked against the sha256 baked into the
//! node's initramfs, retried until it is right or plainly another build's. The client is
//! hand-written over std::net::TcpStream because stage 1 needs exactly this much: an address
//! literal (no resolver at boot), one request, a body of known length; an HTTP crate would add
//! size and C-free questions for nothing.

use crate::cmdline::HttpUrl;
use crate::console::say;
use crate::node::NetRoot;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long stage 1 waits for things, and how often it talks about it; tests run faster.
#[derive(Debug, Clone)]
pub struct Pace {
    /// TCP connect.
    pub connect: Duration,
    /// Any single read or write (a server that stops sending mid-body).
    pub io: Duration,
    /// First pause after a failed attempt; doubled each time up to `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// A progress line at least this often, besides every 10 %.
    pub progress_every: Duration,
    /// How long the interface may be missing before the console hears which ones exist.
    pub interface_wait: Duration,
    /// How often a missing interface or carrier is looked for.
    pub poll: Duration,
}

impl Pace {
    pub const NODE: Pace = Pace {
        connect: Duration::from_secs(10),
        io: Duration::from_secs(20),
        retry_first: Duration::from_secs(2),
        retry_max: Duration::from_secs(30),
        progress_every: Duration::from_secs(5),
        interface_wait: Duration::from_secs(15),
        poll: Duration::from_millis(100),
    };
}

/// Why one attempt to fetch the root image failed; each is retried (see [`MISMATCHES`]).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("sending the request: {0}")]
    Send(io::Error),
    #[error("reading the response: {0}")]
    Receive(io::Error),
    #[error("the server sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("the server closed the connection before the end of the headers")]
    NoHeaders,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("HTTP {code} {reason}")]
    Status { code: u16, reason: String },
    #[error("the response has no Content-Length")]
    NoLength,
    #[error("the server sends {got} bytes, the initramfs expects {want}: another node's image, or a stale one")]
    Length { got: u64, want: u64 },
    #[error("the connection was cut after {got} of {want} bytes")]
    Cut { got: u64, want: u64 },
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("sha256 {got} but the initramfs expects {want}; deleted it")]
    Digest { got: String, want: String },
}

impl FetchError {
    /// The server has an image, only not the one this initramfs expects: trying again fetches
    /// the same wrong one.
    pub fn is_mismatch(&self) -> bool {
        matches!(self, FetchError::Length { .. } | FetchError::Digest { .. })
    }
}

/// Mismatches after which [`fetch`] gives up: a few in case a copy was being replaced, then the
/// root image is taken to be another build's than the initramfs (a rebuild while the node
/// booted), which only a fresh set from the firmware mends.
pub const MISMATCHES: u32 = 5;

/// Why [`fetch`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("the root image on the server does not match this initramfs (rebuilt meanwhile?)")]
pub struct Mismatched;

/// The most header bytes accepted: a root image server sends a few hundred.
const MAX_HEAD: usize = 64 * 1024;
const CHUNK: usize = 256 * 1024;

fn receive_error(e: io::Error, pace_io: Duration) -> FetchError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FetchError::Stalled(pace_io),
        _ => FetchError::Receive(e),
    }
}

/// The status line and headers of a response: its Content-Length when the status is 200.
pub fn parse_head(head: &str) -> Result<Option<u64>, FetchError> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    let (true, Some(code)) = (version.starts_with("HTTP/1."), code) else {
        return Err(FetchError::Malformed(format!("status line {status:?}")));
    };
    if code != 200 {
        return Err(FetchError::Status {
            code,
            reason: parts.next().unwrap_or_default().to_string(),
        });
    }
    let mut length = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(FetchError::Malformed(format!("header {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| FetchError::Malformed(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(FetchError::Malformed("two Content-Lengths".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            // A transfer coding overrides Content-Length (RFC 9112 6.3): a length we cannot
            // trust is no length.
            return Err(FetchError::Malformed(format!("Transfer-Encoding {value}")));
        }
    }
    Ok(length)
}

/// GETs `url`, whose body must be exactly `want` bytes, into `out`; `progress` hears the bytes
/// received so far. Returns the body's sha256 (lowercase hex).
pub fn get(
    url: &HttpUrl,
    want: u64,
    pace: &Pace,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<String, FetchError> {
    let mut conn =
        TcpStream::connect_timeout(&url.addr, pace.connect).map_err(FetchError::Connect)?;
    conn.set_read_timeout(Some(pace.io))
        .and_then(|()| conn.set_write_timeout(Some(pace.io)))
        .map_err(FetchError::Connect)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: piimg-agent\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority()
    );
    conn.write_all(request.as_bytes())
        .map_err(FetchError::Send)?;

    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let body_start = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            return Err(FetchError::Malformed(format!(
                "headers over {MAX_HEAD} bytes"
            )));
        }
        let n = conn.read(&mut buf).map_err(|e| receive_error(e, pace.io))?;
        if n == 0 {
            return Err(FetchError::NoHeaders);
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..body_start - 4]);
    let got = parse_head(&text)?.ok_or(FetchError::NoLength)?;
    if got != want {
        return Err(FetchError::Length { got, want });
    }

    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut take = |bytes: &[u8], done: &mut u64| -> Result<(), FetchError> {
        let n = bytes.len().min((want - *done) as usize);
        hasher.update(&bytes[..n]);
        out.write_all(&bytes[..n])
            .map_err(|source| FetchError::Write {
                path: PathBuf::new(),
                source,
            })?;
        *done += n as u64;
        Ok(())
    };
    take(&head[body_start..], &mut done)?;
    while done < want {
        progress(done);
        let n = conn.read(&mut buf).map_err(|e| receive_error(e, pace.io))?;
        if n == 0 {
            return Err(FetchError::Cut { got: done, want });
        }
        take(&buf[..n], &mut done)?;
    }
    progress(done);
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When to say how far the fetch got: at each further 10 %, and at least every `every`.
pub struct Progress {
    total: u64,
    next_tenth: u64,
    every: Duration,
    started: Instant,
    said: Instant,
}

impl Progress {
    pub fn new(total: u64, every: Duration) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            next_tenth: 1,
            every,
            started: now,
            said: now,
        }
    }

    /// The line to say after `done` bytes, if one is due.
    pub fn update(&mut self, done: u64) -> Option<String> {
        let tenths = done.saturating_mul(10) / self.total.max(1);
        if done >= self.total || (tenths < self.next_tenth && self.said.elapsed() < self.every) {
            return None;
        }
        self.next_tenth = tenths + 1;
        self.said = Instant::now();
        Some(format!(
            "root image {}% ({:.1} of {:.1} MB, {:.1} MB/s)",
            done * 100 / self.total.max(1),
            done as f64 / 1e6,
            self.total as f64 / 1e6,
            self.rate(done)
        ))
    }

    /// MB/s since the start.
    pub fn rate(&self, done: u64) -> f64 {
        done as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

/// One attempt: the image into `dest`, its sha256 checked. On any failure `dest` is removed
/// (it lives in RAM).
pub fn fetch_once(
    url: &HttpUrl,
    net: &NetRoot,
    dest: &Path,
    pace: &Pace,
) -> Result<(), FetchError> {
    let attempt = || {
        let mut file = std::fs::File::create(dest).map_err(|source| FetchError::Write {
            path: dest.to_path_buf(),
            source,
        })?;
        let mut progress = Progress::new(net.size, pace.progress_every);
        let started = Instant::now();
        let digest = get(url, net.size, pace, &mut file, &mut |done| {
            if let Some(line) = progress.update(done) {
                say(&line);
            }
        })
        .map_err(|e| match e {
            FetchError::Write { source, .. } => FetchError::Write {
                path: dest.to_path_buf(),
                source,
            },
            e => e,
        })?;
        if !digest.eq_ignore_ascii_case(&net.sha256) {
            return Err(FetchError::Digest {
                got: digest,
                want: net.sha256.clone(),
            });
        }
        say(&format!(
            "root image fetched: {} bytes in {:.1} s ({:.1} MB/s), sha256 ok",
            net.size,
            started.elapsed().as_secs_f64(),
            progress.rate(net.size)
        ));
        Ok(())
    };
    let r = attempt();
    if r.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    r
}

/// Fetches until the image is there and right, saying why each failed attempt failed and when
/// the next one comes; gives up after [`MISMATCHES`] wrong images (other failures, such as a
/// server that is down, are retried for ever and do not count).
pub fn fetch(url: &HttpUrl, net: &NetRoot, dest: &Path, pace: &Pace) -> Result<(), Mismatched> {
    let mut pause = pace.retry_first;
    let mut mismatches = 0;
    loop {
        say(&format!(
            "fetching the root image {url} ({} bytes)",
            net.size
        ));
        match fetch_once(url, net, dest, pace) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_mismatch() && mismatches + 1 >= MISMATCHES => {
                say(&format!("root image {url}: {e}"));
                return Err(Mismatched);
            }
            Err(e) => {
                mismatches += u32::from(e.is_mismatch());
                say(&format!("root image {url}: {e}; retrying in {:.0?}", pause));
                std::thread::sleep(pause);
                pause = (pause * 2).min(pace.retry_max);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener};
    use std::thread::JoinHandle;

    /// Short pauses, but room for a loaded machine: a read that times out is one more attempt,
    /// which takes the next scripted answer and throws a test's sequence off (it then retries
    /// for ever against a server that has stopped).
    pub(crate) const FAST: Pace = Pace {
        connect: Duration::from_secs(5),
        io: Duration::from_secs(3),
        retry_first: Duration::from_millis(1),
        retry_max: Duration::from_millis(4),
        progress_every: Duration::from_secs(60),
        interface_wait: Duration::from_millis(200),
        poll: Duration::from_millis(5),
    };

    /// One scripted answer of [`serve`].
    pub(crate) enum Answer {
        /// These bytes, then the connection is closed.
        Bytes(Vec<u8>),
        /// These bytes, then silence until the client gives up.
        Stall(Vec<u8>),
    }

    pub(crate) fn ok(body: &[u8]) -> Answer {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        Answer::Bytes(r)
    }

    /// A loopback server that gives `answers` to successive connections; the join handle
    /// yields each request's head.
    pub(crate) fn serve(answers: Vec<Answer>) -> (SocketAddr, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    assert!(n > 0, "client closed before its request ended");
                    req.extend_from_slice(&b[..n]);
                }
                heads.push(String::from_utf8(req).unwrap());
                // A client may hang up before it has read everything (a wrong Content-Length
                // ends the attempt at the headers): a failed write is its choice, not an error.
                match answer {
                    Answer::Bytes(r) => {
                        let _ = s.write_all(&r);
                    }
                    Answer::Stall(r) => {
                        let _ = s.write_all(&r);
                        // Until the client hangs up.
                        let _ = s.read(&mut b);
                    }
                }
            }
            heads
        });
        (addr, h)
    }

    pub(crate) fn image() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    pub(crate) fn netroot_for(body: &[u8]) -> NetRoot {
        NetRoot {
            sha256: hex(&Sha256::digest(body)),
            size: body.len() as u64,
            fstype: "squashfs".into(),
            interface: "eth0".into(),
            address: "10.0.2.15/24".parse().unwrap(),
            gateway: Some("10.0.2.2".parse().unwrap()),
        }
    }

    fn url(addr: SocketAddr) -> HttpUrl {
        HttpUrl::parse(&format!("http://{addr}/nodes/w1/root.squashfs")).unwrap()
    }

    #[test]
    fn sha256_is_the_one_coreutils_computes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("img");
        std::fs::write(&p, image()).unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(&p)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            netroot_for(&image()).sha256,
            text.split(' ').next().unwrap()
        );
    }

    #[test]
    fn head_parsing() {
        assert_eq!(
            parse_head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\nServer: x").unwrap(),
            Some(12)
        );
        assert_eq!(parse_head("HTTP/1.0 200 OK").unwrap(), None);
        assert!(matches!(
            parse_head("HTTP/1.1 206 Partial Content\r\nContent-Length: 1"),
            Err(FetchError::Status { code: 206, .. })
        ));
        for bad in [
            "SSH-2.0-OpenSSH",
            "HTTP/1.1 2x0 OK",
            "HTTP/1.1 200 OK\r\nContent-Length: -1",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2",
            "HTTP/1.1 200 OK\r\nno colon",
        ] {
            assert!(
                matches!(parse_head(bad), Err(FetchError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn progress_every_tenth_and_never_at_the_end() {
        let mut p = Progress::new(1000, Duration::from_secs(3600));
        let said: Vec<u64> = (0..=1000)
            .step_by(25)
            .filter(|&d| p.update(d).is_some())
            .collect();
        assert_eq!(said, vec![100, 200, 300, 400, 500, 600, 700, 800, 900]);
        let mut p = Progress::new(1000, Duration::ZERO);
        assert!(p
            .update(1)
            .unwrap()
            .starts_with("root image 0% (0.0 of 0.0 MB, "));
    }

    #[test]
    fn get_refuses_wrong_length_404_and_a_cut_body_then_fetches() {
        let body = image();
        let mut cut = ok(&body);
        if let Answer::Bytes(b) = &mut cut {
            b.truncate(b.len() - body.len() / 2);
        }
        let mut wrong = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len() + 1
        )
        .into_bytes();
        wrong.extend_from_slice(&body);
        let (addr, server) = serve(vec![
            Answer::Bytes(wrong),
            Answer::Bytes(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec()),
            cut,
            Answer::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\nabc".to_vec()),
            ok(&body),
        ]);
        let want = body.len() as u64;
        let mut sink = Vec::new();
        let get_once = |sink: &mut Vec<u8>| {
            sink.clear();
            get(&url(addr), want, &FAST, sink, &mut |_| {})
        };
        let e = get_once(&mut sink).unwrap_err();
        assert!(
            matches!(e, FetchError::Length { got, want: w } if got == want + 1 && w == want),
            "{e}"
        );
        let e = get_once(&mut sink).unwrap_err();
        assert_eq!(e.to_string(), "HTTP 404 Not Found");
        let e = get_once(&mut sink).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the connection was cut after {} of {want} bytes",
                want - want / 2
            )
        );
        let e = get_once(&mut sink).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the server sent nothing for {:?}", FAST.io)
        );
        let mut seen = Vec::new();
        sink.clear();
        let digest = get(&url(addr), want, &FAST, &mut sink, &mut |d| seen.push(d)).unwrap();
        assert_eq!(digest, netroot_for(&body).sha256);
        assert!(sink == body, "the body differs");
        assert_eq!(seen.last(), Some(&want));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        let heads = server.join().unwrap();
        assert_eq!(heads.len(), 5);
        assert_eq!(
            heads[0],
            format!(
                "GET /nodes/w1/root.squashfs HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: piimg-agent\r\n\
                 Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
            )
        );
    }

    #[test]
    fn fetch_retries_until_the_image_is_right_and_says_why() {
        let body = image();
        let mut other = body.clone();
        other[1_234_567] ^= 1;
        let (addr, server) = serve(vec![
            Answer::Bytes(b"HTTP/1.1 503 Busy\r\n\r\n".to_vec()),
            ok(&other),
            ok(&body),
        ]);
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("root.img");
        let net = netroot_for(&body);
        let lines = crate::console::capture_thread();
        fetch(&url(addr), &net, &dest, &FAST).unwrap();
        assert!(std::fs::read(&dest).unwrap() == body, "the image differs");
        server.join().unwrap();
        let all = lines.lock().unwrap().clone();
        let (progress, lines): (Vec<String>, Vec<String>) =
            all.into_iter().partition(|l| l.contains('%'));
        // Every 10 % of each of the two whole bodies, the wrong one and the right one.
        assert!(progress.len() >= 2 * 8, "{progress:#?}");
        let u = url(addr);
        let got = hex(&Sha256::digest(&other));
        let want_lines = [
            format!("piimg-agent: fetching the root image {u} (3000000 bytes)"),
            format!("piimg-agent: root image {u}: HTTP 503 Busy; retrying in 1ms"),
            format!("piimg-agent: fetching the root image {u} (3000000 bytes)"),
            format!(
                "piimg-agent: root image {u}: sha256 {got} but the initramfs expects {}; deleted it; retrying in 2ms",
                net.sha256
            ),
            format!("piimg-agent: fetching the root image {u} (3000000 bytes)"),
        ];
        assert_eq!(lines[..5], want_lines, "{lines:#?}");
        assert!(lines[5].starts_with("piimg-agent: root image fetched: 3000000 bytes in "));
        assert_eq!(lines.len(), 6, "{lines:#?}");
    }

    #[test]
    fn a_failed_attempt_leaves_no_file_behind() {
        let body = image();
        let (addr, server) = serve(vec![ok(&body[..10])]);
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("root.img");
        let e = fetch_once(&url(addr), &netroot_for(&body), &dest, &FAST).unwrap_err();
        assert!(matches!(e, FetchError::Length { got: 10, .. }), "{e}");
        assert!(!dest.exists());
        server.join().unwrap();
    }
}
