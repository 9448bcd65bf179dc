//! Read-only HTTP status endpoint: `GET /status` returns JSON (no secrets: no token, no key).

use crate::supervise::{ServiceStatus, SharedStatus};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub hostname: String,
    pub role: String,
    pub addresses: Vec<String>,
    pub services: Vec<ServiceStatus>,
    /// Seconds since the agent started.
    pub uptime: u64,
}

#[derive(Clone)]
pub struct Source {
    pub hostname: String,
    pub role: String,
    pub addresses: Vec<String>,
    pub services: SharedStatus,
    pub started: Instant,
}

impl Source {
    pub fn snapshot(&self) -> Status {
        Status {
            hostname: self.hostname.clone(),
            role: self.role.clone(),
            addresses: self.addresses.clone(),
            services: self.services.lock().map(|g| g.clone()).unwrap_or_default(),
            uptime: self.started.elapsed().as_secs(),
        }
    }
}

/// The response (status line, headers, body) for one request head.
pub fn respond(request: &str, src: &Source) -> String {
    let first = request.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, body) = match (method, path) {
        ("GET", "/status") => (
            "200 OK",
            serde_json::to_string(&src.snapshot()).unwrap_or_else(|_| "{}".into()),
        ),
        ("GET", _) => ("404 Not Found", "{\"error\":\"not found\"}".to_string()),
        _ => (
            "405 Method Not Allowed",
            "{\"error\":\"method not allowed\"}".to_string(),
        ),
    };
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// How long a client has to send its whole request head: a client trickling a byte at a time
/// cannot hold a connection slot for longer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are told to come back (503) without being read.
pub const MAX_CONNECTIONS: usize = 4;

fn handle(mut s: TcpStream, src: &Source) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let _ = s.set_write_timeout(Some(REQUEST_DEADLINE));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let resp = respond(&String::from_utf8_lossy(&buf), src);
    let _ = s.write_all(resp.as_bytes());
}

/// Serves on an already bound listener for ever: a thread per connection, at most
/// [`MAX_CONNECTIONS`] at once.
pub fn serve(listener: TcpListener, src: Source) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::SeqCst);
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        }
        let (src, busy2) = (src.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("status-conn".into())
            .spawn(move || {
                handle(s, &src);
                busy2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Binds `addr` and serves on a thread; returns the bound address.
pub fn spawn(addr: &str, src: Source) -> std::io::Result<std::net::SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || serve(l, src))?;
    Ok(local)
}

/// Serves on `addr` once it can be bound: the node's own address exists only after the network
/// is configured, so binding is retried every second; `report` hears the first failure.
pub fn spawn_when_bindable(
    addr: std::net::SocketAddr,
    src: Source,
    report: impl Fn(&str) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let mut told = false;
            loop {
                match TcpListener::bind(addr) {
                    Ok(l) => return serve(l, src),
                    Err(e) => {
                        if !told {
                            report(&format!("status endpoint {addr}: {e}; retrying"));
                            told = true;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })?;
    Ok(())
}
