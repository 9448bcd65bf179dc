//! `piimg serve` checked by TFTP clients we did not write (tftp-hpa, atftp, curl), on 127.0.0.1
//! only: byte-identical files at every blksize, windows, block-number rollover, refused escapes
//! and writes, many clients at once, garbage, and a clean stop.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `piimg serve` on a free port of 127.0.0.1, serving `root`; stopped on drop.
struct Serving {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Serving {
    fn start() -> Serving {
        // No hidden component in its path: an absolute name must be refused as not found (taken
        // relative), not for being hidden.
        let dir = tempfile::Builder::new().prefix("tftp-").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_piimg"))
            .args(["serve", "--bind", "127.0.0.1", "--tftp-port", "0"])
            .args(["--http-port", "0", "--dir"])
            .arg(dir.path().join("root"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let port = first
            .rsplit_once("127.0.0.1:")
            .and_then(|(_, p)| p.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            // The other servers' startup lines are not TFTP's log.
            for line in lines.map_while(Result::ok) {
                if line.starts_with("serving ") {
                    continue;
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Serving {
            child,
            port,
            dir,
            log,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Writes `len` bytes that do not repeat within a block into root/name.
    fn file(&self, name: &str, len: usize) -> Vec<u8> {
        let data = random_bytes(len, len as u64 ^ 0x9e37_79b9_7f4a_7c15);
        std::fs::write(self.root().join(name), &data).unwrap();
        data
    }

    fn url(&self, name: &str) -> String {
        format!("tftp://127.0.0.1:{}/{name}", self.port)
    }

    /// Sends `signal` and returns the exit status code.
    fn stop(mut self, signal: libc::c_int) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "piimg serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run (tool missing?): {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_same(got: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        got == want,
        "{what}: {} bytes, want {}",
        got.len(),
        want.len()
    );
}

fn tftp_hpa(s: &Serving, mode: &str, command: &str) -> Output {
    run(Command::new("tftp")
        .args(["-m", mode, "127.0.0.1", &s.port.to_string(), "-c"])
        .args(command.split(' '))
        .current_dir(s.dir.path()))
}

fn atftp(s: &Serving, options: &[&str], remote: &str, local: &Path) -> Output {
    let mut cmd = Command::new("atftp");
    for o in options {
        cmd.args(["--option", o]);
    }
    run(cmd
        .args(["--tftp-timeout", "2", "-g", "-r", remote, "-l"])
        .arg(local)
        .args(["127.0.0.1", &s.port.to_string()]))
}

fn curl(s: &Serving, args: &[&str], remote: &str, local: &Path) -> Output {
    run(Command::new("curl")
        .args(["-sS", "--path-as-is", "-o"])
        .arg(local)
        .args(args)
        .arg(s.url(remote)))
}

#[test]
fn tftp_hpa_fetches_octet_and_netascii_files_unchanged() {
    let s = Serving::start();
    let data = s.file("kernel8.img", 300_001);
    let o = tftp_hpa(&s, "binary", "get kernel8.img got");
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&s.dir.path().join("got"), &data, "octet");
    let lines = b"dtoverlay=vc4-kms-v3d\nenable_uart=1\n\nkernel=kernel8.img\n".repeat(40);
    std::fs::write(s.root().join("config.txt"), &lines).unwrap();
    let o = tftp_hpa(&s, "netascii", "get config.txt got.txt");
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&s.dir.path().join("got.txt"), &lines, "netascii");
}

/// A netascii copy is held in memory for the transfer: a root image asked for in netascii
/// (hundreds of forged requests would exhaust the server) is refused, in octet it is served.
#[test]
fn netascii_is_refused_for_a_file_over_a_mebibyte() {
    let s = Serving::start();
    let data = s.file("root.squashfs", (1 << 20) + 1);
    let o = tftp_hpa(&s, "netascii", "get root.squashfs got.txt");
    assert!(
        text(&o).contains("too large for netascii"),
        "tftp-hpa got no refusal: {}",
        text(&o)
    );
    let o = tftp_hpa(&s, "binary", "get root.squashfs got");
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&s.dir.path().join("got"), &data, "octet");
}

#[test]
fn a_file_past_65535_blocks_arrives_whole_at_blksize_512() {
    let s = Serving::start();
    // 37 MB at 512 bytes a block is 73,697 blocks: block numbers pass 65535 and start at 0.
    let data = s.file("big.img", 37_000_000 + 123);
    let started = Instant::now();
    let o = tftp_hpa(&s, "binary", "get big.img big");
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&s.dir.path().join("big"), &data, "rollover");
    eprintln!(
        "37 MB at blksize 512 in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn atftp_fetches_with_each_blksize_tsize_and_a_window() {
    let s = Serving::start();
    let data = s.file("start4.elf", 2_266_752 + 77);
    for options in [
        &["blksize 512", "tsize enable"][..],
        &["blksize 1468", "windowsize 8", "timeout 2"],
        &["blksize 65464", "tsize enable"],
        &["blksize 512", "windowsize 4"],
    ] {
        let local = s.dir.path().join("got");
        let o = atftp(&s, options, "start4.elf", &local);
        assert!(o.status.success(), "{options:?}: {}", text(&o));
        assert_same(&local, &data, &format!("atftp {options:?}"));
        std::fs::remove_file(&local).unwrap();
    }
}

#[test]
fn curl_fetches_with_each_blksize() {
    let s = Serving::start();
    let data = s.file("fixup4.dat", 5_000_000 + 9);
    for blksize in ["512", "1468", "65464"] {
        let local = s.dir.path().join(blksize);
        let o = curl(&s, &["--tftp-blksize", blksize], "fixup4.dat", &local);
        assert!(o.status.success(), "blksize {blksize}: {}", text(&o));
        assert_same(&local, &data, &format!("curl blksize {blksize}"));
    }
    // A file ending on a block boundary ends with an empty block.
    let even = s.file("even", 512 * 20);
    let local = s.dir.path().join("even");
    assert!(curl(&s, &[], "even", &local).status.success());
    assert_same(&local, &even, "a multiple of the block size");
}

#[test]
fn escapes_from_the_served_folder_are_refused_with_a_tftp_error() {
    let s = Serving::start();
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, b"outside").unwrap();
    std::fs::create_dir(s.root().join("sub")).unwrap();
    std::os::unix::fs::symlink("../secret", s.root().join("link")).unwrap();
    std::os::unix::fs::symlink(s.dir.path(), s.root().join("sub/up")).unwrap();
    let absolute = secret.display().to_string();
    for name in [
        "../secret",
        "sub/../../secret",
        "link",
        "sub/up/secret",
        &absolute,
    ] {
        let local = s.dir.path().join("got");
        let o = curl(&s, &[], name.trim_start_matches('/'), &local);
        assert!(!o.status.success(), "curl got {name}");
        // curl: 68 "file not found", 69 "permission problem" (TFTP errors 1 and 2).
        assert!(
            matches!(o.status.code(), Some(68 | 69)),
            "{name}: {}",
            text(&o)
        );
        assert!(!local.exists() || std::fs::read(&local).unwrap().is_empty());
        let o = atftp(&s, &[], name, &local);
        assert!(!o.status.success(), "atftp got {name}: {}", text(&o));
        let _ = std::fs::remove_file(&local);
    }
    // tftp-hpa sends the absolute name with its leading slash.
    let o = tftp_hpa(&s, "binary", &format!("get {absolute} got"));
    assert!(text(&o).contains("Error code 1"), "{}", text(&o));
    let o = tftp_hpa(&s, "binary", "get ../secret got");
    assert!(text(&o).contains("Error code 2"), "{}", text(&o));
    assert!(s.log().contains("refused"), "{}", s.log());
}

#[test]
fn write_requests_are_refused_and_nothing_is_written() {
    let s = Serving::start();
    let upload = s.dir.path().join("upload");
    std::fs::write(&upload, b"new config").unwrap();
    let o = run(Command::new("curl")
        .args(["-sS", "-T"])
        .arg(&upload)
        .arg(s.url("config.txt")));
    // 69: TFTP error 2 (curl 7.88 words it as a getpeername() failure).
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    let o = tftp_hpa(&s, "binary", "put upload config.txt");
    assert!(
        text(&o).contains("Error code 2: this server is read-only"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_dir(s.root()).unwrap().count(), 0);
}

#[test]
fn a_hundred_clients_at_once_all_get_their_bytes() {
    let s = Serving::start();
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| s.file(&format!("f{i}"), 200_000 + i * 1000))
        .collect();
    let out = s.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let started = Instant::now();
    let children: Vec<Child> = (0..100)
        .map(|i| {
            Command::new("curl")
                .args(["-sS", "--tftp-blksize", "1468", "-o"])
                .arg(out.join(i.to_string()))
                .arg(s.url(&format!("f{}", i % 4)))
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        assert!(c.wait().unwrap().success(), "client {i}");
        assert_same(
            &out.join(i.to_string()),
            &files[i % 4],
            &format!("client {i}"),
        );
    }
    eprintln!("100 clients in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn ten_thousand_garbage_datagrams_leave_the_server_answering() {
    let s = Serving::start();
    let data = s.file("bootcode.bin", 51_000);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let noise = random_bytes(10_000 * 64, 7);
    for (i, chunk) in noise.chunks(64).enumerate() {
        let mut d = chunk[..i % 64 + 1].to_vec();
        // Every fourth looks like a request (RRQ, WRQ) or a stray ACK/ERROR/DATA/OACK.
        if i % 4 == 0 && d.len() >= 2 {
            d[0] = 0;
            d[1] = (i / 4 % 7) as u8;
        }
        socket.send_to(&d, ("127.0.0.1", s.port)).unwrap();
    }
    let local = s.dir.path().join("got");
    let o = curl(&s, &[], "bootcode.bin", &local);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&local, &data, "after the garbage");
}

#[test]
fn each_transfer_is_logged_and_sigterm_or_sigint_stop_with_status_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let s = Serving::start();
        s.file("start4.elf", 10_000);
        let local = s.dir.path().join("got");
        assert!(curl(&s, &[], "start4.elf", &local).status.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.log().contains("start4.elf: 10000 bytes in") {
            assert!(Instant::now() < deadline, "no log line: {}", s.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(s.log().starts_with("tftp 127.0.0.1:"), "{}", s.log());
        assert_eq!(s.stop(signal), Some(0));
    }
}

#[test]
fn a_port_in_use_is_named_with_what_to_do() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = run(Command::new(env!("CARGO_BIN_EXE_piimg"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--tftp-port",
            &port,
            "--dir",
        ])
        .arg(dir.path()));
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o);
    assert!(err.contains(&format!("port {port} is in use")), "{err}");
    assert!(err.contains("--tftp-port"), "{err}");
}

#[test]
fn a_privileged_port_as_another_user_says_so_and_suggests_another_port() {
    let unprivileged_from: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 || unprivileged_from <= 69 {
        eprintln!("skipped: needs root to switch users, and port 69 privileged");
        return;
    }
    // The binary is copied where user nobody can run it (the build folder may be private).
    let open = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .unwrap();
    let bin = open.path().join("piimg");
    std::fs::copy(env!("CARGO_BIN_EXE_piimg"), &bin).unwrap();
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["serve", "--bind", "127.0.0.1", "--tftp-port", "69", "--dir"])
        .arg(open.path())
        .current_dir(open.path()));
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o);
    assert!(err.contains("binding UDP port 69 needs root"), "{err}");
    assert!(err.contains("--tftp-port"), "{err}");
}
