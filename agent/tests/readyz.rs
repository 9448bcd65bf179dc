//! The joining control plane's readiness probe, with the node's tool (openssl s_client) against
//! a TLS server run by the test on loopback (openssl s_server -www, which answers any GET with
//! 200), standing for a predecessor's API server once it is up; before, nothing listens.

use piimg_agent::kubeadm::{api_ready, wait_for_predecessors};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tls_server(dir: &Path, port: u16) -> Server {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=cp1",
        ])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let child = Command::new("openssl")
        .args([
            "s_server", "-WWW", "-quiet", "-cert", "c.pem", "-key", "k.pem", "-accept",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

#[test]
fn a_join_waits_for_the_api_servers_before_it() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let openssl = Path::new("/usr/bin/openssl");
    let timeout = Duration::from_secs(10);
    // Nothing listening yet: not ready.
    assert!(!api_ready(openssl, addr, timeout));
    // The join waits until the predecessor's API server answers, then goes on.
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        wait_for_predecessors(openssl, &[addr], Duration::from_millis(200));
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !waiter.is_finished(),
        "the join went on before the API server was up"
    );
    let _server = tls_server(t.path(), port);
    let waited = waiter.join().unwrap();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(api_ready(openssl, addr, timeout));
}

#[test]
fn a_plain_or_failing_answer_is_not_ready() {
    // A plain-text server answering 503: no TLS handshake, no 200.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            use std::io::Write;
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        }
    });
    assert!(!api_ready(
        Path::new("/usr/bin/openssl"),
        addr,
        Duration::from_secs(10)
    ));
}
