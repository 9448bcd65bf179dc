//! The status endpoint over a real TCP connection, fed by a real supervisor.

use piimg_agent::status;
use piimg_agent::supervise::{Options, ServiceSpec, Supervisor};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn status_endpoint_reports_services() {
    piimg_agent::sys::block_signals(&[libc::SIGCHLD]);
    let t = tempfile::tempdir().unwrap();
    let opts = Options {
        log_dir: Some(t.path().to_path_buf()),
        grace: Duration::from_secs(5),
        ..Options::default()
    };
    let mut sup = Supervisor::new(
        vec![
            ServiceSpec::daemon("sleeper", &["/bin/sleep", "30"]),
            ServiceSpec::daemon("crasher", &["/bin/false"]),
        ],
        opts,
    );
    let src = status::Source {
        hostname: "w1".into(),
        role: "worker".into(),
        addresses: vec!["10.0.2.15/24".into()],
        services: sup.status_handle(),
        started: Instant::now(),
    };
    let addr = status::spawn("127.0.0.1:0", src).unwrap();
    let guard = Instant::now() + Duration::from_secs(60);
    while sup.restarts("crasher") < 1 || sup.pid("sleeper").is_none() {
        assert!(Instant::now() < guard, "services never started");
        sup.step(Duration::from_millis(20));
    }
    let pid = sup.pid("sleeper").unwrap();

    let (head, body) = get(addr, "/status");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hostname"], "w1");
    assert_eq!(v["role"], "worker");
    assert_eq!(v["addresses"][0], "10.0.2.15/24");
    assert!(v["uptime"].is_u64());
    let svcs = v["services"].as_array().unwrap();
    assert_eq!(svcs.len(), 2);
    assert_eq!(svcs[0]["name"], "sleeper");
    assert_eq!(svcs[0]["state"], "running");
    assert_eq!(svcs[0]["pid"], pid);
    assert_eq!(svcs[0]["restarts"], 0);
    assert_eq!(svcs[1]["name"], "crasher");
    assert!(svcs[1]["restarts"].as_u64().unwrap() >= 1);

    let (head, _) = get(addr, "/secrets");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    sup.stop_all();
    let (_, body) = get(addr, "/status");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["services"][0]["state"], "stopped");
    assert_eq!(v["services"][0]["pid"], serde_json::Value::Null);
}

/// A client trickling its request cannot hold the endpoint: others are served meanwhile, the
/// trickler is cut off at the deadline, and connections beyond the limit get a quick 503.
#[test]
fn slow_and_excess_clients_do_not_block_the_endpoint() {
    let src = status::Source {
        hostname: "lb1".into(),
        role: "load-balancer".into(),
        addresses: vec!["192.168.50.10/24".into()],
        services: Default::default(),
        started: Instant::now(),
    };
    let addr = status::spawn("127.0.0.1:0", src).unwrap();
    // A slowloris: one byte every 300 ms, never a full request head.
    let mut slow = TcpStream::connect(addr).unwrap();
    let trickle = std::thread::spawn(move || {
        let t0 = Instant::now();
        for b in b"GET /status HTTP/1.1\r\nHost: x" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        t0.elapsed()
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let (head, _) = get(addr, "/status");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "served only after the slow client"
    );
    let held = trickle.join().unwrap();
    assert!(
        held < status::REQUEST_DEADLINE + Duration::from_secs(2),
        "the trickling client held its connection for {held:?}"
    );
    // Fill every slot with idle connections: the next one is told 503 at once.
    let idle: Vec<TcpStream> = (0..status::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut resp = String::new();
    let _ = extra.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    drop(idle);
    // Once the idle ones are cut off at the deadline, requests are served again.
    std::thread::sleep(status::REQUEST_DEADLINE + Duration::from_millis(500));
    let (head, _) = get(addr, "/status");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
