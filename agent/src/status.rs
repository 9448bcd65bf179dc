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

fn handle(mut s: TcpStream, src: &Source) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let resp = respond(&String::from_utf8_lossy(&buf), src);
    let _ = s.write_all(resp.as_bytes());
}

/// Serves on an already bound listener, one connection at a time, for ever.
pub fn serve(listener: TcpListener, src: Source) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => handle(s, &src),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
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
