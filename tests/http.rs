//! `piimg serve`'s HTTP server checked by clients we did not write (curl, and busybox wget as
//! the node's initramfs runs it), on 127.0.0.1 only: large files byte-identical, HEAD, every
//! form of byte range and 416, a cut download resumed, refused escapes, many clients at once,
//! garbage and slow clients, a clean stop, and the errors for a taken or privileged port.

mod common;
use common::checkers::{tool, ToolRun};
use common::piimg::Piimg;
use common::{pattern, temp_dir};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `piimg serve` on free ports of 127.0.0.1, serving `root`; stopped on drop.
struct Serving {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Serving {
    fn start() -> Serving {
        let dir = temp_dir("http-");
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let mut child = Piimg::new()
            .args(["serve", "--bind", "127.0.0.1", "--tftp-port", "0"])
            .args(["--http-port", "0", "--dir"])
            .arg(dir.path().join("root"))
            .command()
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut startup = String::new();
        let base = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("no HTTP line in {startup:?}"));
            let line = line.unwrap();
            startup.push_str(&line);
            if let Some((_, url)) = line.split_once(" over HTTP on ") {
                break url.trim_end_matches('/').to_string();
            }
        };
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Serving {
            child,
            base,
            dir,
            log,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Writes `len` pseudo-random bytes into root/name.
    fn file(&self, name: &str, len: usize) -> Vec<u8> {
        let data = pattern(len, len as u64 ^ 0x9e37_79b9_7f4a_7c15);
        std::fs::write(self.root().join(name), &data).unwrap();
        data
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn local(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits until the log holds `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
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
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command with no proxy from the environment: the traffic stays on loopback.
fn client(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    cmd
}

/// `curl ARGS URL`, the body to `out`; stdout is what `-w` asks for.
fn curl(args: &[&str], url: &str, out: &Path) -> ToolRun {
    tool(
        client("curl")
            .args(["-sS", "--path-as-is", "-o"])
            .arg(out)
            .args(args)
            .arg(url),
    )
}

/// The status code of `curl ARGS URL`, the body to `out`.
fn status(args: &[&str], url: &str, out: &Path) -> String {
    let run = curl(&[args, &["-w", "%{http_code}"]].concat(), url, out);
    assert!(run.success(), "{}", run.show());
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[track_caller]
fn assert_same(got: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        got == want,
        "{what}: {} bytes, want {}",
        got.len(),
        want.len()
    );
}

/// Response headers as curl saw them (`-D`), lower-cased.
fn headers(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().to_ascii_lowercase()
}

#[test]
fn a_large_file_arrives_byte_identical_and_head_describes_it() {
    let s = Serving::start();
    let data = s.file("root.img", 48 << 20);
    let got = s.local("got");
    assert_eq!(status(&[], &s.url("/root.img"), &got), "200");
    assert_same(&got, &data, "curl");
    let wget = tool(
        client("busybox")
            .args(["wget", "-q", "-O"])
            .arg(s.local("wget"))
            .arg(s.url("/root.img")),
    );
    assert!(wget.success(), "{}", wget.show());
    assert_same(&s.local("wget"), &data, "busybox wget");
    s.wait_log("GET /root.img: 200, 50331648 bytes in");

    let head = curl(&["-I"], &s.url("/root.img"), &s.local("head"));
    assert!(head.success(), "{}", head.show());
    let h = headers(&s.local("head"));
    assert!(h.starts_with("http/1.1 200 ok\r\n"), "{h}");
    for line in [
        "content-length: 50331648\r\n",
        "accept-ranges: bytes\r\n",
        "content-type: application/octet-stream\r\n",
        "date: ",
    ] {
        assert!(h.contains(line), "no {line:?} in\n{h}");
    }
    // Nothing follows the head of a reply to HEAD.
    let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    c.write_all(b"HEAD /root.img HTTP/1.0\r\n\r\n").unwrap();
    let raw = reply(&mut c, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(text.contains("Content-Length: 50331648\r\n"), "{text}");
    s.wait_log("HEAD /root.img: 200, 0 bytes in");
}

#[test]
fn each_form_of_byte_range_gives_exactly_that_slice() {
    let s = Serving::start();
    let len = 3_000_017;
    let data = s.file("initramfs", len);
    for (range, first, last) in [
        ("0-99", 0, 99),
        ("1000-", 1000, len - 1),
        ("-500", len - 500, len - 1),
        ("77-77", 77, 77),
        ("2999990-99999999", 2_999_990, len - 1),
        ("-99999999", 0, len - 1),
    ] {
        let got = s.local("part");
        let hdrs = s.local("headers");
        let d = hdrs.to_str().unwrap();
        let code = status(&["-r", range, "-D", d], &s.url("/initramfs"), &got);
        assert_eq!(code, "206", "range {range}");
        assert_same(&got, &data[first..=last], &format!("range {range}"));
        let h = headers(&hdrs);
        let want = format!("content-range: bytes {first}-{last}/{len}\r\n");
        assert!(h.contains(&want), "range {range}: {h}");
        let want = format!("content-length: {}\r\n", last - first + 1);
        assert!(h.contains(&want), "range {range}: {h}");
    }
    // Several ranges: the whole file, as RFC 9110 allows.
    let got = s.local("multi");
    assert_eq!(
        status(&["-r", "0-9,20-29"], &s.url("/initramfs"), &got),
        "200"
    );
    assert_same(&got, &data, "several ranges");
}

#[test]
fn a_range_past_the_end_is_416_with_the_length() {
    let s = Serving::start();
    s.file("kernel8.img", 1000);
    let hdrs = s.local("headers");
    let code = status(
        &["-r", "1000-", "-D", hdrs.to_str().unwrap()],
        &s.url("/kernel8.img"),
        &s.local("body"),
    );
    assert_eq!(code, "416");
    let h = headers(&hdrs);
    assert!(h.contains("content-range: bytes */1000\r\n"), "{h}");
    std::fs::write(s.root().join("empty"), b"").unwrap();
    assert_eq!(
        status(&["-r", "-10"], &s.url("/empty"), &s.local("e")),
        "416"
    );
}

#[test]
fn a_cut_download_resumes_where_it_stopped() {
    let s = Serving::start();
    let data = s.file("root.squashfs", 24 << 20);
    let got = s.local("got");
    // Cut after about a second at 4 MB/s: curl leaves what it had.
    let cut = curl(
        &["--limit-rate", "4M", "--max-time", "1"],
        &s.url("/root.squashfs"),
        &got,
    );
    assert_eq!(cut.status.code(), Some(28), "{}", cut.show());
    let had = std::fs::metadata(&got).unwrap().len() as usize;
    assert!(had > 0 && had < data.len(), "{had} bytes before the cut");
    assert_eq!(status(&["-C", "-"], &s.url("/root.squashfs"), &got), "206");
    assert_same(&got, &data, "resumed with curl -C -");
    s.wait_log(&format!("206, {} bytes in", data.len() - had));

    // busybox wget -c, as an initramfs would retry.
    let w = s.local("wget");
    std::fs::write(&w, &data[..1_234_567]).unwrap();
    let wget = tool(
        client("busybox")
            .args(["wget", "-q", "-c", "-O"])
            .arg(&w)
            .arg(s.url("/root.squashfs")),
    );
    assert!(wget.success(), "{}", wget.show());
    assert_same(&w, &data, "resumed with busybox wget -c");
}

#[test]
fn missing_files_are_404_and_names_are_percent_decoded() {
    let s = Serving::start();
    std::fs::create_dir(s.root().join("dc-a6-32-01-36-c2")).unwrap();
    let data = b"console=serial0,115200 root=/dev/ram0\n";
    std::fs::write(s.root().join("dc-a6-32-01-36-c2/cmd line.txt"), data).unwrap();
    let got = s.local("got");
    let url = s.url("/dc-a6-32-01-36-c2/cmd%20line.txt?v=1");
    assert_eq!(status(&[], &url, &got), "200");
    assert_same(&got, data, "a percent-encoded name");
    assert_eq!(status(&[], &s.url("/nothing.img"), &got), "404");
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "not found\n");
    s.wait_log("GET /nothing.img: 404");
}

#[test]
fn escapes_from_the_served_folder_and_folders_are_refused() {
    let s = Serving::start();
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, b"outside").unwrap();
    std::fs::create_dir(s.root().join("sub")).unwrap();
    std::fs::write(s.root().join("sub/inside"), b"inside").unwrap();
    std::os::unix::fs::symlink("../secret", s.root().join("link")).unwrap();
    std::os::unix::fs::symlink(s.dir.path(), s.root().join("sub/up")).unwrap();
    let absolute = format!("/{}", secret.display());
    for (path, want) in [
        ("/../secret", "403"),
        ("/sub/../../secret", "403"),
        ("/%2e%2e/secret", "403"),
        ("/sub/%2E%2E/%2e%2e/secret", "403"),
        ("/sub%2f..%2f..%2fsecret", "403"),
        ("/link", "403"),
        ("/sub/up/secret", "403"),
        ("/sub", "403"),
        ("/", "403"),
        // `//tmp/...` is a name inside the folder, which does not hold it.
        (&absolute, "404"),
    ] {
        let got = s.local("got");
        assert_eq!(status(&[], &s.url(path), &got), want, "{path}");
        let body = std::fs::read(&got).unwrap();
        assert!(!body.windows(7).any(|w| w == b"outside"), "{path}");
    }
    // The same names through the raw request line, where no client tidies them.
    let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    c.write_all(b"GET /../secret HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 403 "), "{reply}");
    let got = s.local("in");
    assert_eq!(status(&[], &s.url("/sub/./inside"), &got), "200");
    assert!(s.log().contains("leaves the served folder"), "{}", s.log());
}

#[test]
fn other_methods_are_405_and_nothing_is_written() {
    let s = Serving::start();
    let upload = s.local("upload");
    std::fs::write(&upload, b"new cmdline").unwrap();
    let hdrs = s.local("headers");
    let code = status(
        &["-T", upload.to_str().unwrap(), "-D", hdrs.to_str().unwrap()],
        &s.url("/cmdline.txt"),
        &s.local("body"),
    );
    assert_eq!(code, "405");
    assert!(headers(&hdrs).contains("allow: get, head\r\n"));
    let code = status(&["-X", "DELETE"], &s.url("/x"), &s.local("body"));
    assert_eq!(code, "405");
    assert_eq!(std::fs::read_dir(s.root()).unwrap().count(), 0);
}

#[test]
fn fifty_clients_at_once_all_get_their_bytes() {
    let s = Serving::start();
    let files: Vec<Vec<u8>> = (0..5)
        .map(|i| s.file(&format!("f{i}"), 2_000_000 + i * 1001))
        .collect();
    let out = s.local("out");
    std::fs::create_dir(&out).unwrap();
    let started = Instant::now();
    let children: Vec<Child> = (0..50)
        .map(|i| {
            client("curl")
                .args(["-sS", "-f", "-o"])
                .arg(out.join(i.to_string()))
                .arg(s.url(&format!("/f{}", i % 5)))
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        assert!(c.wait().unwrap().success(), "client {i}");
        let want = &files[i % 5];
        assert_same(&out.join(i.to_string()), want, &format!("client {i}"));
    }
    eprintln!("50 clients in {:.1} s", started.elapsed().as_secs_f64());
}

/// Reads what the server answers on `c` until it closes, for at most `limit`.
fn reply(c: &mut TcpStream, limit: Duration) -> Vec<u8> {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    got
}

/// The status line of a reply, and the rest.
fn status_line(reply: &[u8]) -> String {
    let end = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(reply.len());
    String::from_utf8_lossy(&reply[..end]).into_owned()
}

#[test]
fn garbage_and_idle_connections_leave_the_server_serving() {
    let s = Serving::start();
    let data = s.file("bootcode.bin", 52_480);
    let addr = ("127.0.0.1", s.port());
    // Connections that send nothing or half a request, all held open meanwhile.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut half: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /bootcode.bin HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            c
        })
        .collect();
    let noise = pattern(64 * 1024, 11);
    for (i, chunk) in noise.chunks(2048).enumerate() {
        let mut c = TcpStream::connect(addr).unwrap();
        let _ = c.write_all(chunk);
        let line = status_line(&reply(&mut c, Duration::from_secs(5)));
        assert!(line.starts_with("HTTP/1.1 400 "), "garbage {i}: {line:?}");
    }
    // A head too large for the server, and a request line with no version.
    let mut c = TcpStream::connect(addr).unwrap();
    let big = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
    let _ = c.write_all(big.as_bytes());
    let line = status_line(&reply(&mut c, Duration::from_secs(5)));
    assert!(line.starts_with("HTTP/1.1 431 "), "{line:?}");
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /bootcode.bin\r\n\r\n").unwrap();
    let line = status_line(&reply(&mut c, Duration::from_secs(5)));
    assert!(line.starts_with("HTTP/1.1 400 "), "{line:?}");

    let got = s.local("got");
    assert_eq!(status(&[], &s.url("/bootcode.bin"), &got), "200");
    assert_same(&got, &data, "beside the idle and half-sent connections");
    // Half-sent requests finished now are answered, the file whole after the head.
    for c in &mut half[..3] {
        c.write_all(b"\r\n").unwrap();
        let raw = reply(c, Duration::from_secs(5));
        assert_eq!(status_line(&raw), "HTTP/1.1 200 OK");
        let body = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(raw[body..] == data[..], "{} body bytes", raw.len() - body);
    }
    drop(idle);
}

#[test]
fn past_256_connections_the_next_is_told_busy_and_the_server_recovers() {
    let s = Serving::start();
    let data = s.file("fixup4.dat", 7_000);
    let addr = ("127.0.0.1", s.port());
    let held: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut extra = TcpStream::connect(addr).unwrap();
    let line = status_line(&reply(&mut extra, Duration::from_secs(5)));
    assert!(line.starts_with("HTTP/1.1 503 "), "{line:?}");
    drop(held);
    // The held connections' threads see them closed within a poll interval.
    let got = s.local("got");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&[], &s.url("/fixup4.dat"), &got) != "200" {
        assert!(Instant::now() < deadline, "still busy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_same(&got, &data, "after the crowd left");
}

#[test]
fn a_request_trickled_byte_by_byte_is_cut_off_after_ten_seconds() {
    let s = Serving::start();
    s.file("start4.elf", 1000);
    let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let started = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    // One byte of an endless header every half second: each read is quick, the head never ends.
    for b in b"GET /start4.elf HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain([b'a'; 64].iter())
    {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let line = status_line(&got);
    assert!(line.starts_with("HTTP/1.1 408 "), "{line:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "cut off after {took:?}");
    s.wait_log("408,");
}

#[test]
fn sigterm_during_a_download_stops_with_status_0() {
    let s = Serving::start();
    s.file("root.img", 16 << 20);
    let slow = client("curl")
        .args(["-sS", "--limit-rate", "1M", "-o"])
        .arg(s.local("got"))
        .arg(s.url("/root.img"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(s.local("got")).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "the download did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    assert_eq!(s.stop(libc::SIGTERM), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut slow = slow;
    let _ = slow.kill();
    let _ = slow.wait();
}

/// `piimg serve` on 127.0.0.1 with `args`, run to its end.
fn serve_once(args: &[&str], dir: &Path) -> common::piimg::Run {
    Piimg::new()
        .args(["serve", "--bind", "127.0.0.1"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .run()
}

#[test]
fn a_port_in_use_is_named_with_what_to_do() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = temp_dir("http-");
    let r = serve_once(&["--tftp-port", "0", "--http-port", &port], dir.path());
    r.assert_code(1);
    let err = &r.stderr;
    assert!(err.contains(&format!("TCP port {port} is in use")), "{err}");
    assert!(err.contains("--http-port"), "{err}");
}

#[test]
fn a_privileged_port_as_another_user_says_so_and_suggests_another_port() {
    let unprivileged_from: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 || unprivileged_from <= 80 {
        eprintln!("skipped: needs root to switch users, and port 80 privileged");
        return;
    }
    // The binary is copied where user nobody can run it (the build folder may be private).
    let open = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .unwrap();
    let bin = open.path().join("piimg");
    std::fs::copy(common::piimg::BIN, &bin).unwrap();
    let o = tool(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["serve", "--bind", "127.0.0.1", "--tftp-port", "0"])
            .args(["--http-port", "80", "--dir"])
            .arg(open.path())
            .current_dir(open.path()),
    );
    assert_eq!(o.status.code(), Some(1), "{}", o.show());
    let err = o.text();
    assert!(
        err.contains("binding TCP port 80 for HTTP needs root or CAP_NET_BIND_SERVICE"),
        "{err}"
    );
    assert!(err.contains("--http-port"), "{err}");
}
