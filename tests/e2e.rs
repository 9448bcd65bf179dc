//! End to end: real images built by `piimg build` in a temporary copy of the project, booted by
//! `piimg qemu` in QEMU's raspi3b machine, checked from the outside (port forwards, the serial
//! console) and from the inside (the debug shell, driven through QEMU's stdin).
//!
//! Needs Debian's archive for the first build on a machine (packages are cached in
//! target/tmp/piimg-test-cache) and qemu-system-aarch64 (`apt-get install qemu-system-arm`).
//! Missing either is a failure, not a skip. The boots are serialised: two TCG guests on a
//! two-core CI machine would only slow each other down.

mod common;
use common::checkers::{partitions, run, tool};
use common::loopdev::LoopDev;
use common::oci;
use common::piimg::Piimg;
use common::project::{project, Project};
use common::{read_json, read_toml, sha256_file};

use regex::Regex;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static BOOTS: Mutex<()> = Mutex::new(());

/// Generous: TCG on a loaded two-core machine (a boot to `ready` takes ~30 s when idle).
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// A temporary project: the named profiles, piimg.lock and overlays copied from the repository.
fn e2e_project(profiles: &[&str]) -> Project {
    project()
        .only(profiles)
        .lock()
        .overlays()
        .create_temp("piimg-e2e-")
}

/// Builds `profile` in `p` from the shared cache (with the given stand-ins); returns the image.
fn build(p: &Project, profile: &str, standins: &[&str]) -> PathBuf {
    let t = Instant::now();
    p.piimg_cached()
        .args(["--quiet", "build", "--profile", profile])
        .standins(standins)
        .run()
        .assert_ok();
    eprintln!("built {profile} in {:.1} s", t.elapsed().as_secs_f64());
    p.root().join("out").join(format!("{profile}.img"))
}

/// A running `piimg qemu`: console lines arrive on a channel (and are echoed to the test's
/// output); the serial port's input is our pipe to its stdin.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
    started: Instant,
    /// Last kernel timestamp seen.
    last_kernel_ts: Option<f64>,
}

impl Guest {
    fn boot(image: &Path, forwards: &[(u16, u16)]) -> Guest {
        Guest::start(image, forwards, &[], "console")
    }

    /// `piimg qemu IMAGE EXTRA...`; console lines are echoed with `label` in front.
    fn start(image: &Path, forwards: &[(u16, u16)], extra: &[&str], label: &str) -> Guest {
        let mut c = Piimg::new()
            .arg("qemu")
            .arg(image)
            .args(["--timeout", "1500"])
            .args(extra);
        for (h, g) in forwards {
            c = c.args(["--forward", &format!("{h}:{g}")]);
        }
        let mut child = c
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let label = label.to_string();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        eprintln!("{label}| {l}");
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Guest {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
            started: Instant::now(),
            last_kernel_ts: None,
        }
    }

    /// Waits for a console line matching `re` (lines seen earlier do not count); returns it.
    fn wait(&mut self, re: &str, timeout: Duration) -> String {
        let re = Regex::new(re).unwrap();
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(ts) = l
                        .strip_prefix('[')
                        .and_then(|r| r.split_once(']'))
                        .and_then(|(n, _)| n.trim().parse::<f64>().ok())
                    {
                        self.last_kernel_ts = Some(ts);
                    }
                    assert!(
                        !l.contains("Kernel panic"),
                        "kernel panic while waiting for {re}: {l}"
                    );
                    self.seen.push(l.clone());
                    if re.is_match(&l) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "no console line matching {re} within {timeout:?} ({e:?}); last lines:\n{}",
                    self.seen[self.seen.len().saturating_sub(30)..].join("\n")
                ),
            }
        }
    }

    /// Reads console lines for `dur` (into `seen`) without waiting for anything in particular.
    fn drain(&mut self, dur: Duration) {
        let until = Instant::now() + dur;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Runs a shell command on the debug shell and returns the line after `BEGIN`-marker.
    fn shell(&mut self, cmd: &str, tag: &str) -> String {
        // The marker is printed by the command's output, not its echo: `echo A""B` echoes as
        // typed but prints AB.
        self.send(&format!("echo {tag}\"\"BEGIN; {cmd}; echo {tag}\"\"END"));
        self.wait(&format!("^{tag}BEGIN"), STEP_TIMEOUT);
        // Service output (`[name] ...`), kernel and agent lines may come in between.
        let l = loop {
            let l = self.wait(".", STEP_TIMEOUT);
            if !l.starts_with('[') && !l.starts_with("piimg-agent: ") {
                break l;
            }
        };
        self.wait(&format!("{tag}END"), STEP_TIMEOUT);
        l
    }

    /// Boot milestones: wall time since QEMU started, and the guest's uptime that the agent
    /// prints with `ready`, checked against /proc/uptime read right after.
    fn report_ready(&mut self, what: &str) {
        // Not anchored at the start: the shell's prompt may precede it on the same line.
        let line = self.wait(
            r"piimg-agent: ready \(uptime [0-9]+\.[0-9]+ s\)$",
            BOOT_TIMEOUT,
        );
        let wall = self.started.elapsed();
        let kernel = self.last_kernel_ts;
        let guest: f64 = line
            .rsplit_once("(uptime ")
            .and_then(|(_, r)| r.strip_suffix(" s)"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no uptime in {line:?}"));
        let up = self.shell("cat /proc/uptime", "UPTIME");
        let now: f64 = up
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected /proc/uptime line {up:?}"));
        // The agent's figure is the guest clock at `ready`: after the last kernel line and
        // before the shell read the clock again.
        assert!(
            kernel.is_none_or(|k| k <= guest) && guest <= now,
            "ready at uptime {guest}, last kernel line {kernel:?}, /proc/uptime after {now}"
        );
        // Straight to the process's stderr: eprintln! is captured by the test harness, and these
        // figures belong in every CI log, passing or not.
        let _ = writeln!(
            std::io::stderr(),
            "BOOT {what}: power-on to `piimg-agent: ready`: wall {:.1} s, guest uptime {guest:.2} s",
            wall.as_secs_f64()
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SIGTERM: piimg stops QEMU and removes its temporary files.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An echo server on 127.0.0.1 (the guest reaches it as 10.0.2.2); returns its port.
/// A stand-in for an API server behind HAProxy: a TLS client (HAProxy's health check) gets a
/// TLS session whose `GET /readyz` is answered `200 ok` while `ready` is set and `503` otherwise,
/// as kube-apiserver answers it; a plain TCP client gets its bytes echoed, so the test can see
/// traffic pass the frontend. Returns the port and the count of /readyz requests.
fn apiserver_like_backend(ready: Arc<AtomicBool>) -> (u16, Arc<AtomicUsize>) {
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let tls = tls.clone();
            let (ready, counted) = (ready.clone(), counted.clone());
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                let mut first = [0u8; 1];
                // 0x16: a TLS handshake record.
                if matches!(c.peek(&mut first), Ok(1) if first[0] == 0x16) {
                    let Ok(conn) = rustls::ServerConnection::new(tls) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(conn, c);
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp: &[u8] = if !req.starts_with(b"GET /readyz ") {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else if ready.load(Ordering::SeqCst) {
                        counted.fetch_add(1, Ordering::SeqCst);
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    } else {
                        counted.fetch_add(1, Ordering::SeqCst);
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    };
                    let _ = s.write_all(resp);
                    s.conn.send_close_notify();
                    let _ = s.flush();
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, checks)
}

/// An SNTP server on host loopback (the guest reaches it as 10.0.2.2:PORT) that answers with the
/// host's clock once `on` is set, and stays silent before, like an unreachable server.
fn sntp_server(on: Arc<AtomicBool>) -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 48 || !on.load(Ordering::SeqCst) {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let secs = (now.as_secs() + 2_208_988_800) as u32;
            let frac = ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32;
            let mut r = [0u8; 48];
            r[0] = 0x24; // version 4, server
            r[1] = 2; // stratum 2: synchronised
            r[24..32].copy_from_slice(&buf[40..48]); // originate = client's transmit
            for off in [32, 40] {
                r[off..off + 4].copy_from_slice(&secs.to_be_bytes());
                r[off + 4..off + 8].copy_from_slice(&frac.to_be_bytes());
            }
            let _ = sock.send_to(&r, from);
        }
    });
    port
}

/// One attempt: does the frontend echo `msg`?
fn answers(port: u16, msg: &[u8]) -> bool {
    let r = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got == msg)
    })();
    r.unwrap_or(false)
}

/// Connects to the forwarded frontend and round-trips `msg`, retrying while HAProxy (or its
/// health check of the backend) is not up yet. Returns the attempts it took.
fn round_trip(port: u16, msg: &[u8], within: Duration) -> usize {
    let until = Instant::now() + within;
    let mut attempts = 0;
    let mut last = String::new();
    while Instant::now() < until {
        attempts += 1;
        let r = (|| -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(msg)?;
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got)?;
            Ok(got)
        })();
        match r {
            Ok(got) if got == msg => return attempts,
            Ok(got) => last = format!("got {:?}", String::from_utf8_lossy(&got)),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("no round trip through 127.0.0.1:{port} within {within:?}: {last}");
}

/// The agent's status endpoint through a forward: hostname, address and a running service.
fn check_status(port: u16, hostname: &str, address: &str, service: &str) {
    let resp = common::http_get(port, "/status");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "status endpoint: {head}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["hostname"], hostname, "{v}");
    let addrs: Vec<&str> = v["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        addrs.iter().any(|a| a.starts_with(address)),
        "addresses {addrs:?} lack {address}"
    );
    let svc = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no service {service} in {v}"));
    assert_eq!(svc["state"], "running", "{svc}");
}

#[test]
fn load_balancer_forwards_restarts_and_reports_status() {
    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let proj = e2e_project(&["qemu"]);
    // The guest's backend is the host (10.0.2.2) at a port this test listens on.
    let ready = Arc::new(AtomicBool::new(false));
    let (backend, checks) = apiserver_like_backend(ready.clone());
    proj.replace(
        "qemu",
        "\"10.0.2.2:6443\"",
        &format!("\"10.0.2.2:{backend}\""),
    );
    let image = build(&proj, "qemu", &[]);
    let before = sha256_file(&image);

    let (front, status) = (common::free_port(), common::free_port());
    let mut g = Guest::boot(&image, &[(front, 6443), (status, 7780)]);
    g.report_ready("load balancer");
    assert!(
        g.seen
            .iter()
            .any(|l| l.contains("piimg-agent: service haproxy running")),
        "haproxy never reported running"
    );
    assert!(g
        .seen
        .iter()
        .any(|l| l.ends_with("piimg-agent: network up eth0 10.0.2.15/24")));

    // While the API server's /readyz says 503, HAProxy's HTTPS check keeps it out: a client
    // gets no answer through the frontend.
    let until = Instant::now() + STEP_TIMEOUT;
    while checks.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < until, "HAProxy never asked /readyz");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !answers(front, b"piimg-e2e not ready\n"),
        "traffic reached an API server that is not ready"
    );
    // host -> forward -> HAProxy in the guest -> 10.0.2.2 -> the backend, and back, once ready.
    ready.store(true, Ordering::SeqCst);
    let n = round_trip(front, b"piimg-e2e hello\n", STEP_TIMEOUT);
    eprintln!("first round trip after {n} attempt(s)");
    check_status(status, "qemu-lb", "10.0.2.15", "haproxy");

    // Kill HAProxy from the debug shell: the agent restarts it and traffic flows again.
    g.send("busybox killall haproxy");
    let exited = g.wait(
        r"piimg-agent: service haproxy exited .*restart in",
        STEP_TIMEOUT,
    );
    eprintln!("{exited}");
    g.wait(r"piimg-agent: service haproxy running", STEP_TIMEOUT);
    round_trip(front, b"piimg-e2e after restart\n", STEP_TIMEOUT);
    let resp = common::http_get(status, "/status");
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let restarts = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "haproxy")
        .map(|s| s["restarts"].as_u64().unwrap());
    assert_eq!(restarts, Some(1), "status after the restart: {v}");
    drop(g);
    // The image itself was never written (the SD card was a snapshot overlay).
    assert_eq!(sha256_file(&image), before);
    let sidecar = std::fs::read_to_string(image.with_extension("img.sha256")).unwrap();
    assert!(sidecar.starts_with(&before));
}

/// `piimg serve` of `dir` on 127.0.0.1 (TFTP on a free port, HTTP on `http`); its stderr log is
/// collected. Stopped on drop.
struct Serving {
    child: Child,
    tftp: u16,
    log: Arc<Mutex<String>>,
}

impl Serving {
    fn start(dir: &Path, http: u16) -> Serving {
        let mut child = Piimg::new()
            .args(["serve", "--bind", "127.0.0.1", "--tftp-port", "0"])
            .args(["--http-port", &http.to_string(), "--dir"])
            .arg(dir)
            .command()
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let tftp = first
            .rsplit_once("127.0.0.1:")
            .and_then(|(_, p)| p.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no TFTP port in {first:?}"));
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Serving { child, tftp, log }
    }

    /// `path` over TFTP, with curl (blksize 1468, as the Pi 4 bootloader asks), into `dest`.
    fn fetch(&self, path: &str, dest: &Path) {
        run(Command::new("curl")
            .args(["-sSf", "--tftp-blksize", "1468", "-o"])
            .arg(dest)
            .arg(format!("tftp://127.0.0.1:{}/{path}", self.tftp)));
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A Pi 3 load balancer with no SD card: the test fetches what its boot ROM and firmware would,
/// in their order, over TFTP from `piimg serve`; QEMU boots those files (raspi3b cannot netboot
/// by itself); the initramfs fetches the root image over HTTP from the same server, through
/// QEMU's user network, checks its sha256 and boots it under an overlay; HAProxy then forwards.
#[test]
fn a_netbooted_load_balancer_fetches_its_root_over_http_and_forwards() {
    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let proj = e2e_project(&["qemu"]);
    let (backend, _) = apiserver_like_backend(Arc::new(AtomicBool::new(true)));
    proj.replace(
        "qemu",
        "\"10.0.2.2:6443\"",
        &format!("\"10.0.2.2:{backend}\""),
    );
    let http = common::free_port();
    proj.replace(
        "qemu",
        "\"http://10.0.2.2:8080\"",
        &format!("\"http://10.0.2.2:{http}\""),
    );
    let t = Instant::now();
    proj.piimg_cached()
        .args(["--quiet", "build", "--profile", "qemu", "--netboot"])
        .run()
        .assert_ok();
    eprintln!("built qemu --netboot in {:.1} s", t.elapsed().as_secs_f64());
    let tree = proj.root().join("out/netboot");
    let serial = "00000007";
    let serving = Serving::start(&tree, http);

    // The Pi 3 ROM: bootcode.bin from the top, then the serial folder's firmware; the firmware
    // then reads config.txt and what it names, and cmdline.txt.
    let fetched = tempfile::tempdir().unwrap();
    let got = |name: &str| fetched.path().join(name);
    serving.fetch("bootcode.bin", &got("bootcode.bin"));
    for f in ["start.elf", "fixup.dat", "config.txt"] {
        serving.fetch(&format!("{serial}/{f}"), &got(f));
    }
    let config =
        piimg::qemu::parse_config_txt(&std::fs::read_to_string(got("config.txt")).unwrap());
    let mut names = vec![
        config.device_tree.clone(),
        config.cmdline_file.clone(),
        config.kernel.clone(),
    ];
    names.extend(config.initramfs.clone());
    for f in &names {
        serving.fetch(&format!("{serial}/{f}"), &got(f));
    }
    for f in names
        .iter()
        .chain(&["start.elf".to_string(), "config.txt".to_string()])
    {
        assert_eq!(
            sha256_file(&got(f)),
            sha256_file(&tree.join(serial).join(f)),
            "{f} changed over TFTP"
        );
    }

    let (front, status) = (common::free_port(), common::free_port());
    let mut g = Guest::start(
        fetched.path(),
        &[(front, 6443), (status, 7780)],
        &[],
        "netboot",
    );
    let fetched_line = g.wait(
        r"piimg-agent: root image fetched: .* sha256 ok",
        BOOT_TIMEOUT,
    );
    g.report_ready("netbooted load balancer");
    let memory = g
        .seen
        .iter()
        .rev()
        .find(|l| l.contains("piimg-agent: memory: "))
        .cloned()
        .expect("the agent reports memory at ready");
    let _ = writeln!(
        std::io::stderr(),
        "NETBOOT root: {fetched_line}\nNETBOOT {memory}"
    );
    assert!(
        g.seen.iter().any(|l| l.contains("/var is a tmpfs")),
        "no warning about a tmpfs /var without a card"
    );
    round_trip(front, b"piimg-e2e netbooted\n", STEP_TIMEOUT);
    check_status(status, "qemu-lb", "10.0.2.15", "haproxy");
    drop(g);
    let log = serving.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!("GET /{serial}/root.squashfs (node qemu): 200")),
        "serve did not log the root image's transfer:\n{log}"
    );
    assert!(
        log.contains(&format!(" {serial}/kernel8.img (node qemu): ")),
        "serve did not log the kernel's TFTP transfer with its node:\n{log}"
    );
}

/// The qemu-worker image with the kubelet/kubeadm stand-ins, `image_name` preloaded, the
/// stand-ins' test modes switched on (files in /etc/piimg-test) and its NTP server at a host
/// port that answers once `ntp_on` is set. Returns the project, the image and that port.
fn worker_image(
    image_name: &str,
    test_modes: &[&str],
    ntp_on: Arc<AtomicBool>,
) -> (Project, PathBuf, u16) {
    let proj = e2e_project(&["qemu", "qemu-worker"]);
    let archive = oci::oci_archive(&oci::busybox_from_cache(&proj, "qemu"), image_name);
    let images = proj.root().join("overlays/worker/usr/share/piimg/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("e2e-marker.tar"), archive).unwrap();
    let modes = proj.root().join("overlays/worker/etc/piimg-test");
    std::fs::create_dir_all(&modes).unwrap();
    for m in test_modes {
        std::fs::write(modes.join(m), b"").unwrap();
    }
    let ntp = sntp_server(ntp_on);
    proj.replace(
        "qemu-worker",
        "ntp = [\"10.0.2.2\"]",
        &format!("ntp = [\"10.0.2.2:{ntp}\"]"),
    );
    let image = build(&proj, "qemu-worker", &["kubelet", "kubeadm"]);
    (proj, image, ntp)
}

#[test]
fn worker_runs_containerd_a_preloaded_container_and_the_join_command() {
    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let image_name = "docker.io/piimg/e2e-marker:1";
    // The stand-in kubeadm's test mode: the first join fails after leaving partial state.
    let ntp_on = Arc::new(AtomicBool::new(false));
    let (proj, image, ntp) = worker_image(image_name, &["kubeadm-fail-once"], ntp_on.clone());
    // What the join must carry: the generated token and the CA hash piimg reports.
    let secrets = read_toml(&proj.secrets("qemu-worker"));
    let token = secrets["token"].as_str().unwrap().to_string();
    let shown = proj
        .piimg_cached()
        .args(["show", "--profile", "qemu-worker", "--json"])
        .run();
    shown.assert_ok();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    let ca_hash = shown["node"]["kubernetes"]["ca_cert_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ca_hash.starts_with("sha256:"));

    let status = common::free_port();
    let mut g = Guest::boot(&image, &[(status, 7780)]);
    g.wait(r"piimg-agent: service containerd running", BOOT_TIMEOUT);
    g.wait(r"piimg-agent: service image-import done", BOOT_TIMEOUT);
    // No NTP answer yet: kubeadm (and kubelet) must not start on an unsynced clock.
    g.drain(Duration::from_secs(8));
    assert!(
        !g.seen.iter().any(|l| l.starts_with("[kubeadm]")),
        "kubeadm started before the clock was synced"
    );
    ntp_on.store(true, Ordering::SeqCst);
    g.wait(
        &format!(r"^piimg-agent: clock synced from 10\.0\.2\.2:{ntp}: \d+$"),
        STEP_TIMEOUT,
    );
    // Service output comes prefixed with the service name.
    // First attempt: fails after writing partial state. The agent resets (kubeadm reset -f)
    // and joins again, in that order.
    let join =
        r"^\[kubeadm\] piimg-test-standin kubeadm: argv: join --config /etc/piimg/kubeadm.yaml$";
    g.wait(join, BOOT_TIMEOUT);
    g.wait(
        r"^\[kubeadm\] piimg-test-standin kubeadm: failing once after writing partial state",
        STEP_TIMEOUT,
    );
    g.wait(
        r"^\[kubeadm\] kubeadm-run: an earlier attempt did not finish \(/etc/kubernetes/kubelet.conf, /etc/kubernetes/bootstrap-kubelet.conf left behind\): kubeadm reset -f$",
        STEP_TIMEOUT,
    );
    g.wait(
        r"^\[kubeadm\] piimg-test-standin kubeadm: argv: reset -f$",
        STEP_TIMEOUT,
    );
    g.wait(join, STEP_TIMEOUT);
    let mut config = Vec::new();
    loop {
        let l = g.wait(r"^\[kubeadm\] piimg-test-standin kubeadm: ", STEP_TIMEOUT);
        if l.ends_with("done (stand-in, nothing joined)") {
            break;
        }
        config.push(l);
    }
    let has = |needle: &str| config.iter().any(|l| l.contains(needle));
    // The stand-in ran kubeadm v1.31's join preflight in the guest (tests/standins/kubeadm).
    assert!(has("preflight passed"), "{config:#?}");
    assert!(has("apiServerEndpoint: \"10.0.2.2:6443\""), "{config:#?}");
    // The stand-in prints the token it was given; the agent shows it redacted.
    assert!(has("token: \"[redacted]\""), "{config:#?}");
    let secret_half = token.split_once('.').unwrap().1.to_string();
    assert!(
        !g.seen.iter().any(|l| l.contains(&secret_half)),
        "the join token reached the console"
    );
    assert!(
        has(&format!("caCertHashes: [\"{ca_hash}\"]")),
        "{config:#?}"
    );
    assert!(has("kind: JoinConfiguration"), "{config:#?}");
    // kubelet starts once kubeadm has written its configuration (the stand-in writes one).
    g.wait(
        r"^\[kubelet\] piimg-test-standin kubelet: started: ",
        STEP_TIMEOUT,
    );
    g.report_ready("worker");
    check_status(status, "qemu-worker", "10.0.2.15", "containerd");
    // The guest's clock is the host's (it started at the build time, months earlier).
    let guest: i64 = g.shell("busybox date +%s", "DATE").trim().parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() < 120,
        "guest clock {guest}, host {host}"
    );
    // Pods leave the pod network masqueraded, and reach other nodes' pods unchanged: the
    // kernel's own iptables (nft) holds the agent's rule for this node's subnet.
    let nat = g.shell(
        "iptables -t nat -S POSTROUTING | busybox grep 'piimg: pod egress'",
        "NAT",
    );
    assert_eq!(
        nat,
        "-A POSTROUTING -s 10.244.15.0/24 ! -d 10.244.0.0/16 -m comment --comment \"piimg: pod egress\" -j MASQUERADE"
    );
    // The service log holds the same redacted lines and only root reads it. The token is read
    // from the node's own kubeadm.yaml so that it is never typed on the console.
    let log = g.shell(
        "T=$(busybox grep -o '[a-z0-9]\\{6\\}\\.[a-z0-9]\\{16\\}' /etc/piimg/kubeadm.yaml | busybox head -1); echo mode=$(busybox stat -c %a /var/log/kubeadm.log) has=$(busybox grep -c \"${T#*.}\" /var/log/kubeadm.log) redacted=$(busybox grep -c 'token: \"\\[redacted\\]\"' /var/log/kubeadm.log)",
        "KLOG",
    );
    assert_eq!(log, "mode=600 has=0 redacted=1", "kubeadm.log");
    // The stand-in's preflight fails as kubeadm's would on a node that has joined (kubelet.conf
    // exists), and --ignore-preflight-errors demotes that one check.
    let again = g.shell(
        "kubeadm join --config /etc/piimg/kubeadm.yaml >/tmp/k.out 2>&1; r=$?; busybox grep -q '^.\\[ERROR FileAvailable--etc-kubernetes-kubelet.conf\\]: /etc/kubernetes/kubelet.conf already exists$' /tmp/k.out && echo rc=$r named",
        "AGAIN",
    );
    assert_eq!(again, "rc=1 named", "second join");
    let ignored = g.shell(
        "kubeadm join --config /etc/piimg/kubeadm.yaml --ignore-preflight-errors=FileAvailable--etc-kubernetes-kubelet.conf >/tmp/k.out 2>&1; r=$?; echo rc=$r",
        "IGNORED",
    );
    assert_eq!(ignored, "rc=0", "join with the check ignored");
    // The same from the configuration's nodeRegistration.ignorePreflightErrors (what a profile's
    // kubernetes.ignore_preflight_errors writes; a worker's nodeRegistration ends its file), and
    // `all` there is refused, as kubeadm refuses it.
    let from_cfg = g.shell(
        "{ busybox cat /etc/piimg/kubeadm.yaml; printf '  ignorePreflightErrors:\\n    - \"FileAvailable--etc-kubernetes-kubelet.conf\"\\n'; } >/tmp/ki.yaml; kubeadm join --config /tmp/ki.yaml >/tmp/k.out 2>&1; echo rc=$?; busybox rm -f /tmp/k.out",
        "CFGIGNORED",
    );
    assert_eq!(
        from_cfg, "rc=0",
        "join with the check ignored in the configuration"
    );
    let all = g.shell(
        "busybox sed 's/- \"FileAvailable--etc-kubernetes-kubelet.conf\"/- \"all\"/' /tmp/ki.yaml >/tmp/ka.yaml; kubeadm join --config /tmp/ka.yaml >/tmp/k.out 2>&1; r=$?; busybox grep -q \"'all' cannot be used in configuration file\" /tmp/k.out && echo rc=$r refused; busybox rm -f /tmp/ki.yaml /tmp/ka.yaml /tmp/k.out",
        "CFGALL",
    );
    assert_eq!(all, "rc=1 refused", "`all` in the configuration");
    // The socket works and the preloaded image was imported on first boot.
    let listed = g.shell("ctr -n k8s.io images ls -q | grep e2e-marker", "IMAGES");
    assert_eq!(listed, image_name);
    g.send(&format!(
        "ctr -n k8s.io run --rm {image_name} e2e-marker /bin/busybox echo PIIMG\"\"E2E\"\"MARKER"
    ));
    g.wait("^PIIMGE2EMARKER$", STEP_TIMEOUT);
}

/// The load balancer built and written to a card twice its size.
struct LargerCard {
    _project: Project,
    img: PathBuf,
    card: PathBuf,
    card_size: u64,
    /// Where the data partition starts and how large it is in the image (the manifest's).
    data_start: u64,
    data_size: u64,
}

fn qemu_on_a_larger_card() -> LargerCard {
    let p = e2e_project(&["qemu"]);
    let img = build(&p, "qemu", &[]);
    let manifest = read_json(&p.root().join("out/qemu.manifest.json"));
    let card = p.root().join("card.img");
    let card_size = card_twice_the_size(&img, &card);
    LargerCard {
        img,
        card,
        card_size,
        data_start: manifest["partitions"][2]["start"].as_u64().unwrap(),
        data_size: manifest["partitions"][2]["size"].as_u64().unwrap(),
        _project: p,
    }
}

/// The image written to a card twice its size (QEMU needs a power of two), holes kept; returns
/// the card's size.
fn card_twice_the_size(image: &Path, card: &Path) -> u64 {
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(card));
    let size = 2 * std::fs::metadata(image).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(card)
        .unwrap()
        .set_len(size)
        .unwrap();
    size
}

#[test]
fn data_partition_and_filesystem_grow_to_fill_a_larger_card() {
    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let sd = qemu_on_a_larger_card();
    let mut g = Guest::boot(&sd.card, &[]);
    let line = g.wait(r"piimg-agent: grow mmcblk0p3: ", BOOT_TIMEOUT);
    let re =
        Regex::new(r"grow mmcblk0p3: (\d+) sectors -> (\d+) sectors \((\d+) blocks\)").unwrap();
    let c = re
        .captures(&line)
        .unwrap_or_else(|| panic!("the data partition did not grow: {line}"));
    let old: u64 = c[1].parse().unwrap();
    let new: u64 = c[2].parse().unwrap();
    let blocks: u64 = c[3].parse().unwrap();
    assert_eq!(old * 512, sd.data_size, "{line}");
    // MBR: the partition now ends at the end of the card.
    assert_eq!(sd.data_start + new * 512, sd.card_size, "{line}");
    assert_eq!(
        blocks,
        new * 512 / 4096,
        "the filesystem did not take the new space: {line}"
    );
    g.report_ready("grown card");
    // The kernel's view of the mounted filesystem: total 1K blocks of /var.
    let df = g.shell("busybox df -k /var | busybox tail -n 1", "DF");
    let total_kib: u64 = df
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected df line {df:?}"));
    assert!(
        total_kib * 1024
            > sd.data_size + (sd.card_size - std::fs::metadata(&sd.img).unwrap().len()) * 9 / 10,
        "df shows {total_kib} KiB for /var after growth"
    );
}

/// A growth cut short by a power cut after the partition table was rewritten: the card's table
/// already reaches its end, the data filesystem is still the image's size, and the cut tore a
/// superblock write of the data filesystem (its first sector written, the second, which ends
/// with the checksum, not: the kernel refuses such a filesystem, "invalid superblock
/// checksum"). The next boot must repair it with e2fsck from a backup superblock, then grow
/// the filesystem instead of taking the partition's size as done; e2fsck -fn on the host
/// finds it clean afterwards.
#[test]
fn an_interrupted_growth_with_a_torn_superblock_is_repaired_and_finished_on_the_next_boot() {
    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let sd = qemu_on_a_larger_card();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&sd.card)
        .unwrap();
    // What the first boot got done before the power went: the table only.
    let g = piimg_agent::grow::grow_partition(&f, sd.card_size, 3)
        .unwrap()
        .unwrap();
    assert_eq!(sd.data_start + g.new_sectors * 512, sd.card_size);
    // The superblock is at byte 1024 of the filesystem: a later s_mtime, s_wtime (0x2C, 0x30)
    // and s_mnt_count (0x34) in its first sector, the old checksum (0x3FC) in its second.
    let sb = sd.data_start + 1024;
    let mut first = [0u8; 512];
    f.read_exact_at(&mut first, sb).unwrap();
    first[0x2C..0x30].copy_from_slice(&1_795_000_000u32.to_le_bytes());
    first[0x30..0x34].copy_from_slice(&1_795_000_000u32.to_le_bytes());
    first[0x34..0x36].copy_from_slice(&1u16.to_le_bytes());
    f.write_all_at(&first, sb).unwrap();
    drop(f);
    // The host's kernel refuses it too (read-only, so nothing is replayed or repaired here).
    {
        let dev = LoopDev::range(&sd.card, sd.data_start, sd.data_size);
        let at = tempfile::tempdir().unwrap();
        let m = tool(
            Command::new("mount")
                .args(["-o", "ro", &dev.dev])
                .arg(at.path()),
        );
        if m.success() {
            tool(Command::new("umount").arg(at.path()));
            panic!("the torn superblock still mounts");
        }
    }
    let mut guest = Guest::start(&sd.card, &[], &["--writable"], "console");
    guest.wait(
        r"piimg-agent: /dev/mmcblk0p3: e2fsck -p gave up, e2fsck -fy repaired it$",
        BOOT_TIMEOUT,
    );
    let line = guest.wait(r"piimg-agent: grow mmcblk0p3: ", BOOT_TIMEOUT);
    let re = Regex::new(r"resumed an interrupted growth: filesystem (\d+) -> (\d+) bytes").unwrap();
    let c = re
        .captures(&line)
        .unwrap_or_else(|| panic!("the interrupted growth was not finished: {line}"));
    let from: u64 = c[1].parse().unwrap();
    let to: u64 = c[2].parse().unwrap();
    assert_eq!(from, sd.data_size, "{line}");
    // ext4 leaves out a last block group too small to hold its own metadata.
    let part = g.new_sectors * 512;
    assert!(
        to <= part && to + (128 << 20) > part,
        "{line}: partition {part}"
    );
    guest.report_ready("resumed growth");
    guest.shell("busybox sync && echo synced", "SYNC");
    guest.power_cut();
    drop(guest);
    assert_eq!(fsck_after_replay(&sd.card, 3), None);
}

/// Where a power cut lands: `delay` after the first console line matching `after`.
#[derive(Clone, Debug)]
struct Cut {
    phase: &'static str,
    after: &'static str,
    delay: Duration,
}

/// First-boot milestones of the worker, in boot order.
const MILESTONES: &[(&str, &str)] = &[
    ("stage 1", r"piimg-agent: root found "),
    ("growth", r"piimg-agent: data /dev/mmcblk0p3 on /var$"),
    ("growth", r"piimg-agent: grow mmcblk0p3: "),
    ("containerd", r"piimg-agent: service containerd running"),
    ("image import", r"piimg-agent: service image-import running"),
    ("image import", r"piimg-agent: service image-import done"),
    (
        "kubeadm",
        r"^\[kubeadm\] piimg-test-standin kubeadm: argv: join",
    ),
    (
        "kubeadm",
        r"^\[kubeadm\] piimg-test-standin kubeadm: preflight passed",
    ),
    ("kubeadm", r"piimg-agent: service kubeadm done"),
    ("log writes", r"kubelet: log line 1\.1:"),
    ("log writes", r"piimg-agent: ready \(uptime"),
    ("log writes", r"kubelet: log line 4\.1:"),
];

/// Every milestone at three delays: 36 cuts (PIIMG_POWERCUTS=all), or those of one phase
/// (PIIMG_POWERCUTS=growth); CI takes one each during growth, image import, kubeadm and log
/// writes.
fn power_cuts() -> Vec<Cut> {
    let all: Vec<Cut> = MILESTONES
        .iter()
        .flat_map(|&(phase, after)| {
            [0, 150, 600].map(|ms| Cut {
                phase,
                after,
                delay: Duration::from_millis(ms),
            })
        })
        .collect();
    match std::env::var("PIIMG_POWERCUTS").as_deref() {
        Ok("all") => all,
        Ok(phase) if MILESTONES.iter().any(|&(p, _)| p == phase) => {
            all.into_iter().filter(|c| c.phase == phase).collect()
        }
        Ok(other) => panic!(
            "PIIMG_POWERCUTS={other:?}: expected all or a phase ({})",
            MILESTONES
                .iter()
                .map(|m| m.0)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(_) => [4, 13, 22, 31].iter().map(|&i| all[i].clone()).collect(),
    }
}

impl Guest {
    /// Pulls the plug: SIGKILL to QEMU itself (what it had written to the card stays, the
    /// guest's page cache is lost), then waits for piimg to notice.
    fn power_cut(&mut self) {
        let pid = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let qemu: Vec<i32> = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        assert_eq!(qemu.len(), 1, "piimg qemu's children: {qemu:?}");
        unsafe { libc::kill(qemu[0], libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn saw(&self, re: &str) -> bool {
        let re = Regex::new(re).unwrap();
        self.seen.iter().any(|l| re.is_match(l))
    }
}

/// e2fsck's verdict on partition `n` of `card` after replaying its journal, as the kernel does
/// at mount: None when clean, else what it said.
fn fsck_after_replay(card: &Path, n: usize) -> Option<String> {
    let (start, size) = partitions(card)[n - 1];
    let dev = LoopDev::range(card, start, size);
    let replay = tool(Command::new("e2fsck").args(["-E", "journal_only", "-y", &dev.dev]));
    // 0: nothing to do, 1: the journal was replayed.
    if !matches!(replay.status.code(), Some(0 | 1)) {
        return Some(format!("journal replay: {}", replay.show()));
    }
    let o = tool(Command::new("e2fsck").args(["-fn", &dev.dev]));
    (!o.success()).then(|| {
        format!(
            "partition {n}: e2fsck -fn exit {:?}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// What one power cut left: did the next boot reach `ready` with everything a first boot does?
struct CutResult {
    cut: Cut,
    /// Seconds from power-on to the cut.
    at: f64,
    /// Problems found after the second boot (empty: all good).
    problems: Vec<String>,
    kubeadm_done_before: bool,
    resumed_growth: bool,
}

fn power_cut_trial(i: usize, cut: &Cut, image: &Path, dir: &Path) -> CutResult {
    let card = dir.join(format!("card-{i}.img"));
    // The first boot grows /var.
    let card_size = card_twice_the_size(image, &card);
    let label = format!("cut{i}");
    let mut g = Guest::start(&card, &[], &["--writable"], &format!("{label}/1"));
    g.wait(cut.after, BOOT_TIMEOUT);
    std::thread::sleep(cut.delay);
    let at = g.started.elapsed().as_secs_f64();
    g.power_cut();
    // What the first boot had finished, as far as the console tells.
    g.drain(Duration::from_millis(200));
    let kubeadm_done_before = g.saw(r"piimg-agent: service kubeadm done");
    drop(g);

    let mut problems = Vec::new();
    let mut g = Guest::start(&card, &[], &["--writable"], &format!("{label}/2"));
    g.wait(r"piimg-agent: ready \(uptime", BOOT_TIMEOUT);
    // kubelet waits for kubeadm's done marker: it starts on every boot that joined.
    let kubelet = r"^\[kubelet\] piimg-test-standin kubelet: started: ";
    if !g.saw(kubelet) {
        g.wait(kubelet, STEP_TIMEOUT);
    }
    let resumed_growth = g.saw("resumed an interrupted growth");
    if kubeadm_done_before && g.saw(r"^\[kubeadm\] piimg-test-standin kubeadm: argv: join") {
        problems.push("kubeadm ran again after it had succeeded".to_string());
    }
    if !kubeadm_done_before && !g.saw(r"piimg-agent: service kubeadm done") {
        problems.push("kubeadm did not finish on the second boot".to_string());
    }
    let data_start = partitions(&card)[2].0;
    let df = g.shell("busybox df -k /var | busybox tail -n 1", "DF");
    let total: u64 = df
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
        * 1024;
    if total < (card_size - data_start) * 9 / 10 {
        problems.push(format!(
            "/var is {total} bytes on a card with {} after its start",
            card_size - data_start
        ));
    }
    let conf = g.shell("busybox wc -c < /etc/kubernetes/kubelet.conf", "KCONF");
    if conf.trim().parse::<u64>().unwrap_or(0) == 0 {
        problems.push(format!("/etc/kubernetes/kubelet.conf: {conf:?}"));
    }
    let listed = g.shell(
        "ctr -n k8s.io images ls -q | busybox grep -c e2e-marker",
        "IMAGES",
    );
    if listed.trim() != "1" {
        problems.push(format!(
            "the preloaded image is not in containerd: {listed:?}"
        ));
    }
    g.shell("busybox sync && echo synced", "SYNC");
    g.power_cut();
    drop(g);
    for n in [2, 3] {
        if let Some(p) = fsck_after_replay(&card, n) {
            problems.push(p);
        }
    }
    std::fs::remove_file(&card).unwrap();
    CutResult {
        cut: cut.clone(),
        at,
        problems,
        kubeadm_done_before,
        resumed_growth,
    }
}

/// The power-cut matrix: the worker's first boot on a writable card is cut at a console
/// milestone (growth, image import, kubeadm, log writes...), the card booted again. Each must
/// reach `ready` with /var filling the card, kubeadm not run again once it had succeeded, its
/// files and the preloaded image in place, and both ext4 filesystems clean by e2fsck.
/// PIIMG_POWERCUTS=all runs all 36 cuts (scripts/powercut.sh). Two cards at a time by default
/// (PIIMG_POWERCUT_JOBS): a guest is one TCG thread, and no other boot runs meanwhile (BOOTS).
#[test]
fn power_cuts_during_the_first_boot_leave_a_card_that_boots_to_ready() {
    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let (proj, image, _) = worker_image(
        "docker.io/piimg/e2e-marker:1",
        &["kubelet-chatty"],
        Arc::new(AtomicBool::new(true)),
    );
    let cuts = power_cuts();
    let jobs: usize = std::env::var("PIIMG_POWERCUT_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(cut) = cuts.get(i) else { break };
                let r = power_cut_trial(i, cut, &image, proj.root());
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut err = std::io::stderr();
    for (i, r) in &results {
        let _ = writeln!(
            err,
            "POWERCUT {i:2} {:12} {:>5} ms after {:?} (at {:.1} s): {}{}{}",
            r.cut.phase,
            r.cut.delay.as_millis(),
            r.cut.after,
            r.at,
            if r.problems.is_empty() {
                "ready, clean".to_string()
            } else {
                r.problems.join("; ")
            },
            if r.kubeadm_done_before {
                ", kubeadm had finished"
            } else {
                ""
            },
            if r.resumed_growth {
                ", growth resumed"
            } else {
                ""
            },
        );
    }
    let good = results
        .iter()
        .filter(|(_, r)| r.problems.is_empty())
        .count();
    let _ = writeln!(
        err,
        "POWERCUT: {good} of {} cuts reached ready with /var filling the card, kubeadm not re-run after success and e2fsck clean ({:.0} s, {jobs} at a time)",
        results.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        good,
        results.len(),
        "some power cuts left a card that did not recover"
    );
}
