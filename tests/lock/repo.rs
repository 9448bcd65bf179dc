//! A local, signed Debian apt repository served over HTTP on 127.0.0.1, so that tests can run the
//! host's real apt against known packages without any network beyond loopback.

// Each test uses a part of this harness.
#![allow(dead_code)]

use crate::common::checkers::{pipe, stdout_of};
use crate::common::sha256_hex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The Release date of every published suite: fixed so that indices are reproducible, and in the
/// past so that apt never finds a Release "not valid yet".
pub const RELEASE_DATE: &str = "Thu, 01 Jan 2026 00:00:00 UTC";

/// `SOURCE_DATE_EPOCH` for the packages this harness builds (the same instant as
/// [`RELEASE_DATE`]), so that a repacked .deb is byte-for-byte reproducible.
const SOURCE_DATE_EPOCH: &str = "1767225600";

// ---------------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------------

/// A static HTTP/1.1 file server on 127.0.0.1 (ephemeral port) serving `root`, in a thread; stops
/// on drop. apt's http method is the client it is written for: one response per connection with
/// `Connection: close` (apt re-sends what it had pipelined on a new connection), and paths are
/// percent-decoded because apt sends `%2b` for `+` and `%7e` for `~`.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and serves the files under `root` until the `Server` is dropped.
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
        // Non-blocking accept, so the loop can notice the stop flag without a wake-up connection.
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("non-blocking listener: {e}"));
        let addr = listener.local_addr().expect("listener address");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (root, stop, requests) = (root.to_path_buf(), stop.clone(), requests.clone());
            thread::Builder::new()
                .name(format!("repo-http-{}", addr.port()))
                .spawn(move || accept_loop(listener, root, stop, requests))
                .expect("spawning the HTTP accept thread")
        };
        Server {
            addr,
            stop,
            requests,
            accept: Some(accept),
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The decoded paths of the GET and HEAD requests seen so far, in arrival order, so a test can
    /// tell what apt fetched (or did not).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far, so a test can look at one phase's requests alone.
    pub fn clear_requests(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (root, requests) = (root.clone(), requests.clone());
                // Connections are short and time out on their own; they are not joined.
                thread::spawn(move || {
                    let _ = serve_connection(stream, &root, &requests);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Answers one request, then closes the connection gracefully.
fn serve_connection(
    stream: TcpStream,
    root: &Path,
    requests: &Mutex<Vec<String>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;

    // Request line (blank lines before it are allowed), then headers up to the empty line. A
    // GET or HEAD has no body, so the headers themselves are not needed.
    let mut line = String::new();
    let request_line = loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if !line.trim().is_empty() {
            break line.trim_end().to_string();
        }
    };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }

    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    if method == "GET" || method == "HEAD" {
        let path = decode_target(target);
        requests.lock().unwrap().push(path.clone());
        match resolve(root, &path).and_then(|file| fs::File::open(file).ok()) {
            Some(mut file) => {
                let len = file.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\
                     Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                )?;
                if method == "GET" {
                    io::copy(&mut file, &mut out)?;
                }
            }
            None => respond_plain(&mut out, method, "404 Not Found")?,
        }
    } else {
        respond_plain(&mut out, method, "501 Not Implemented")?;
    }
    out.flush()?;

    // Lingering close: stop sending, then read what the client still sends (pipelined requests)
    // until it closes. Closing with unread input would send a RST, which can make the client
    // drop the response it has not read yet.
    out.shutdown(Shutdown::Write)?;
    out.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

fn respond_plain(out: &mut TcpStream, method: &str, status: &str) -> io::Result<()> {
    let body = format!("{status}\n");
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    Ok(())
}

/// The path of a request target: the absolute form's scheme and authority, the query and the
/// fragment dropped, then percent-decoded.
fn decode_target(target: &str) -> String {
    let mut path = target;
    for scheme in ["http://", "https://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            path = rest.find('/').map_or("/", |slash| &rest[slash..]);
        }
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    percent_decode(path)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The regular file under `root` that `path` names, or `None` (not found, a directory, or an
/// attempt to leave `root` with `..`).
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.strip_prefix('/')?;
    let mut file = root.to_path_buf();
    for part in Path::new(relative).components() {
        match part {
            Component::Normal(name) => file.push(name),
            Component::CurDir => {}
            _ => return None,
        }
    }
    file.is_file().then_some(file)
}

// ---------------------------------------------------------------------------------------------
// Signing key
// ---------------------------------------------------------------------------------------------

/// A throwaway OpenPGP signing key (ed25519, no passphrase) in its own gpg homedir, so tests
/// never touch the user's keys; its public half is exported as a binary keyring that apt can
/// trust (`Dir::Etc::Trusted` or `signed-by`). Dropping it kills its gpg-agent.
pub struct Key {
    home: PathBuf,
    keyring: PathBuf,
    fingerprint: String,
}

impl Key {
    /// Makes `dir/gnupg` (mode 0700), generates the key there and exports the public key to
    /// `dir/piimg-test-keyring.gpg` (mode 0644: apt reads it as user `_apt`).
    pub fn new(dir: &Path) -> Key {
        let home = dir.join("gnupg");
        fs::create_dir_all(&home).unwrap_or_else(|e| panic!("creating {home:?}: {e}"));
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod 0700 {home:?}: {e}"));
        stdout_of(gpg(&home).args([
            "--quick-gen-key",
            "piimg test <test@piimg.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        let listing = stdout_of(gpg(&home).args(["--with-colons", "--list-secret-keys"]));
        let listing = String::from_utf8_lossy(&listing);
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .unwrap_or_else(|| panic!("no fingerprint in gpg's listing:\n{listing}"))
            .to_string();
        let keyring = dir.join("piimg-test-keyring.gpg");
        stdout_of(
            gpg(&home)
                .args(["--yes", "--output"])
                .arg(&keyring)
                .args(["--export", &fingerprint]),
        );
        fs::set_permissions(&keyring, fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod 0644 {keyring:?}: {e}"));
        Key {
            home,
            keyring,
            fingerprint,
        }
    }

    /// The binary keyring holding the public key (`gpg --export`).
    pub fn keyring(&self) -> &Path {
        &self.keyring
    }

    /// The key's fingerprint (40 hex digits).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Writes `input` clear-signed to `output` (an InRelease from a Release).
    pub fn clearsign(&self, input: &Path, output: &Path) {
        stdout_of(
            gpg(&self.home)
                .args(["--yes", "--digest-algo", "SHA512", "--local-user"])
                .arg(&self.fingerprint)
                .arg("--output")
                .arg(output)
                .arg("--clearsign")
                .arg(input),
        );
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// gpg on `home` that never prompts (batch, loopback pinentry, empty passphrase).
fn gpg(home: &Path) -> Command {
    let mut cmd = Command::new("gpg");
    cmd.arg("--homedir").arg(home).args([
        "--batch",
        "--no-tty",
        "--quiet",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Archive
// ---------------------------------------------------------------------------------------------

/// Writes one suite's index of an archive and signs it:
/// `archive_root/dists/<suite>/{Release, InRelease, <component>/binary-arm64/Packages}`.
///
/// `packages` maps a component to the .deb files (already inside `archive_root`, absolute or
/// relative to it) that it lists. Every component in `components` gets a Packages file, empty if
/// nothing is listed in it, because apt warns (and piimg treats warnings as errors) when a
/// configured component is missing. Release has a fixed [`RELEASE_DATE`] and MD5Sum and SHA256
/// lists; InRelease is Release clear-signed with `key`.
pub fn publish(
    archive_root: &Path,
    suite: &str,
    components: &[&str],
    packages: &BTreeMap<String, Vec<PathBuf>>,
    key: &Key,
) {
    if let Some(stray) = packages.keys().find(|c| !components.contains(&c.as_str())) {
        panic!("publish {suite}: packages for component {stray:?}, not in {components:?}");
    }
    let dist = archive_root.join("dists").join(suite);
    let mut indices = Vec::new();
    for component in components {
        let mut text = String::new();
        for deb in packages.get(*component).into_iter().flatten() {
            text.push_str(&stanza(archive_root, deb));
            text.push('\n');
        }
        let relative = format!("{component}/binary-arm64/Packages");
        write_file(&dist.join(&relative), text.as_bytes());
        indices.push((relative, text.into_bytes()));
    }

    let mut release = format!(
        "Origin: piimg-test\nLabel: piimg-test\nSuite: {suite}\nCodename: {suite}\n\
         Date: {RELEASE_DATE}\nArchitectures: arm64\nComponents: {}\n\
         Description: piimg test archive\n",
        components.join(" ")
    );
    release.push_str("MD5Sum:\n");
    for (relative, bytes) in &indices {
        let _ = writeln!(release, " {} {:>8} {relative}", md5_hex(bytes), bytes.len());
    }
    release.push_str("SHA256:\n");
    for (relative, bytes) in &indices {
        let _ = writeln!(
            release,
            " {} {:>8} {relative}",
            sha256_hex(bytes),
            bytes.len()
        );
    }
    let release_path = dist.join("Release");
    write_file(&release_path, release.as_bytes());
    key.clearsign(&release_path, &dist.join("InRelease"));
}

/// One Packages stanza: the .deb's control fields, then Filename (relative to `archive_root`),
/// Size, MD5sum and SHA256.
fn stanza(archive_root: &Path, deb: &Path) -> String {
    let file = if deb.is_absolute() {
        deb.to_path_buf()
    } else {
        archive_root.join(deb)
    };
    let filename = file
        .strip_prefix(archive_root)
        .ok()
        .map(Path::to_path_buf)
        .or_else(|| {
            let (file, root) = (file.canonicalize().ok()?, archive_root.canonicalize().ok()?);
            file.strip_prefix(root).ok().map(Path::to_path_buf)
        })
        .unwrap_or_else(|| panic!("{deb:?} is not inside the archive {archive_root:?}"));
    let bytes = fs::read(&file).unwrap_or_else(|e| panic!("reading {file:?}: {e}"));
    let control = stdout_of(Command::new("dpkg-deb").arg("--field").arg(&file));
    let mut text = String::from_utf8_lossy(&control).trim_end().to_string();
    let _ = write!(
        text,
        "\nFilename: {}\nSize: {}\nMD5sum: {}\nSHA256: {}\n",
        filename.display(),
        bytes.len(),
        md5_hex(&bytes),
        sha256_hex(&bytes)
    );
    text
}

/// A copy of `deb` with its control Version set to `version`, written to `out` (its parent is
/// created), so a test can offer several versions of one real package.
pub fn repack(deb: &Path, version: &str, out: &Path) {
    let tmp = tempfile::tempdir().expect("temp dir for repack");
    let root = tmp.path().join("pkg");
    stdout_of(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&root));
    let control_path = root.join("DEBIAN/control");
    let control = fs::read_to_string(&control_path)
        .unwrap_or_else(|e| panic!("reading {control_path:?}: {e}"));
    let mut found = false;
    let edited: String = control
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                found = true;
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(found, "{deb:?} has no Version field:\n{control}");
    write_file(&control_path, edited.as_bytes());
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {parent:?}: {e}"));
    }
    stdout_of(
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .args(["--root-owner-group", "-Zxz", "-b"])
            .arg(&root)
            .arg(out),
    );
}

/// The Debian pool path of a package file:
/// `pool/<component>/<prefix>/<source>/<package>_<version without epoch>_<architecture>.deb`,
/// where prefix is the source's first letter, or its first four for `lib*` sources.
pub fn pool_path(deb: &Path, component: &str) -> String {
    let package = deb_field(deb, "Package");
    let source = deb_field(deb, "Source");
    // "Source: name (version)" when the binary's version differs from the source's.
    let source = source
        .split_whitespace()
        .next()
        .unwrap_or(&package)
        .to_string();
    let version = deb_field(deb, "Version");
    let version = version.split_once(':').map_or(version.as_str(), |(_, v)| v);
    let architecture = deb_field(deb, "Architecture");
    assert!(
        !package.is_empty() && !source.is_empty() && !version.is_empty(),
        "{deb:?} lacks Package or Version"
    );
    let prefix = if source.starts_with("lib") && source.len() > 3 {
        &source[..4]
    } else {
        &source[..1]
    };
    format!("pool/{component}/{prefix}/{source}/{package}_{version}_{architecture}.deb")
}

/// One control field of a .deb, empty if absent.
fn deb_field(deb: &Path, field: &str) -> String {
    let out = stdout_of(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field));
    String::from_utf8_lossy(&out).trim().to_string()
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {parent:?}: {e}"));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
}

/// MD5 through coreutils' md5sum: no MD5 crate in the workspace, and apt only reads it as a
/// legacy extra.
fn md5_hex(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&pipe(&mut Command::new("md5sum"), bytes))
        .split_whitespace()
        .next()
        .expect("md5sum printed a digest")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs an apt tool under the private configuration, with no proxy from the environment
    /// (traffic must stay on 127.0.0.1); returns (success, stdout + stderr).
    fn apt(config: &Path, program: &str, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("APT_CONFIG", config)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn mkdirs(dirs: &[&Path]) {
        for dir in dirs {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
        }
    }

    #[test]
    fn apt_trusts_the_signed_local_repo() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // apt's methods run as user _apt: it must reach the keyring and the lists below
        // (tempfile makes 0777 & umask, so this matters only under a strict umask).
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();

        // A tiny arm64 package.
        let build = dir.join("build/piimg-test-hello");
        mkdirs(&[
            &build.join("DEBIAN"),
            &build.join("usr/share/doc/piimg-test-hello"),
        ]);
        write_file(
            &build.join("DEBIAN/control"),
            b"Package: piimg-test-hello\nVersion: 1.0\nArchitecture: arm64\n\
              Maintainer: piimg tests <test@piimg.invalid>\nSection: misc\nPriority: optional\n\
              Description: piimg test package\n A file, to check apt against a local archive.\n",
        );
        write_file(
            &build.join("usr/share/doc/piimg-test-hello/hello"),
            b"hello\n",
        );
        let built = dir.join("build/piimg-test-hello_1.0_arm64.deb");
        stdout_of(
            Command::new("dpkg-deb")
                .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
                .args(["--root-owner-group", "-Zxz", "-b"])
                .arg(&build)
                .arg(&built),
        );

        // repack: a second version whose pool path needs percent-encoding in apt's requests.
        let newer = "1:1.1~rc1+b1";
        let repacked = dir.join("build/repacked.deb");
        repack(&built, newer, &repacked);
        assert_eq!(deb_field(&repacked, "Version"), newer);
        assert_eq!(deb_field(&repacked, "Package"), "piimg-test-hello");
        let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(&repacked));
        assert!(
            String::from_utf8_lossy(&listing).contains("./usr/share/doc/piimg-test-hello/hello"),
            "repacked contents: {}",
            String::from_utf8_lossy(&listing)
        );

        // The archive.
        let www = dir.join("www");
        let archive = www.join("debian");
        let pool = pool_path(&built, "main");
        assert_eq!(
            pool,
            "pool/main/p/piimg-test-hello/piimg-test-hello_1.0_arm64.deb"
        );
        let pool_newer = pool_path(&repacked, "main");
        assert_eq!(
            pool_newer,
            "pool/main/p/piimg-test-hello/piimg-test-hello_1.1~rc1+b1_arm64.deb"
        );
        for (from, to) in [(&built, &pool), (&repacked, &pool_newer)] {
            let to = archive.join(to);
            mkdirs(&[to.parent().unwrap()]);
            fs::copy(from, &to).unwrap();
        }
        let key = Key::new(&dir.join("key"));
        let mut main = BTreeMap::new();
        main.insert(
            "main".to_string(),
            vec![archive.join(&pool), PathBuf::from(&pool_newer)],
        );
        let components = ["main", "non-free-firmware"];
        publish(&archive, "trixie", &components, &main, &key);
        publish(
            &archive,
            "trixie-updates",
            &components,
            &BTreeMap::new(),
            &key,
        );
        let server = Server::start(&www);
        assert!(server.url().starts_with("http://127.0.0.1:"));
        assert!(!server.url().ends_with('/'));

        // A fully private apt configuration.
        let a = dir.join("apt");
        let empty = a.join("empty");
        mkdirs(&[
            &empty,
            &a.join("state"),
            &a.join("lists/partial"),
            &a.join("cache/archives/partial"),
            &a.join("log"),
        ]);
        write_file(&a.join("status"), b"");
        let keyring = key.keyring().display();
        let url = server.url();
        write_file(
            &a.join("sources.list"),
            format!(
                "deb [arch=arm64 signed-by={keyring}] {url}/debian trixie main non-free-firmware\n\
                 deb [arch=arm64 signed-by={keyring}] {url}/debian trixie-updates main non-free-firmware\n"
            )
            .as_bytes(),
        );
        let p = |name: &str| a.join(name).display().to_string();
        let config = a.join("apt.conf");
        write_file(
            &config,
            format!(
                "Dir::Etc::Main \"/dev/null\";\n\
                 Dir::Etc::Parts \"{empty}\";\n\
                 Dir::Etc::SourceList \"{sources}\";\n\
                 Dir::Etc::SourceParts \"{empty}\";\n\
                 Dir::Etc::Trusted \"{keyring}\";\n\
                 Dir::Etc::TrustedParts \"{empty}\";\n\
                 Dir::Etc::Preferences \"{preferences}\";\n\
                 Dir::Etc::PreferencesParts \"{empty}\";\n\
                 Dir::State \"{state}\";\n\
                 Dir::State::Lists \"{lists}\";\n\
                 Dir::State::status \"{status}\";\n\
                 Dir::Cache \"{cache}\";\n\
                 Dir::Log \"{log}\";\n\
                 APT::Architecture \"arm64\";\n\
                 APT::Architectures {{ \"arm64\"; }};\n\
                 Acquire::Languages \"none\";\n\
                 Acquire::http::Proxy::127.0.0.1 \"DIRECT\";\n\
                 Acquire::Retries \"0\";\n",
                empty = empty.display(),
                sources = p("sources.list"),
                preferences = p("preferences"),
                state = p("state"),
                lists = p("lists"),
                status = p("status"),
                cache = p("cache"),
                log = p("log"),
            )
            .as_bytes(),
        );

        let (ok, out) = apt(&config, "apt-get", &["-q", "update", "--error-on=any"]);
        assert!(ok, "apt-get update failed:\n{out}");
        let complaints: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
            .collect();
        assert!(complaints.is_empty(), "apt-get update complained:\n{out}");
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r == "/debian/dists/trixie/InRelease"),
            "no InRelease request in {requests:?}"
        );
        // The empty components' Packages files are not requested (apt knows from Release that
        // they are empty) but their Release entries are what keeps apt from warning that the
        // configured component is missing: the no-W: check above covers them.

        let (ok, madison) = apt(&config, "apt-cache", &["madison", "piimg-test-hello"]);
        assert!(ok, "apt-cache madison failed:\n{madison}");
        let versions: Vec<&str> = madison
            .lines()
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim)
            .collect();
        assert!(versions.contains(&"1.0"), "madison:\n{madison}");
        assert!(versions.contains(&newer), "madison:\n{madison}");

        server.clear_requests();
        assert!(server.requests().is_empty());
        // apt-helper writes the file as _apt: a target it cannot write makes it warn.
        let dl = dir.join("dl");
        mkdirs(&[&dl]);
        fs::set_permissions(&dl, fs::Permissions::from_mode(0o777)).unwrap();
        for (pool, source) in [(&pool, &built), (&pool_newer, &repacked)] {
            let bytes = fs::read(source).unwrap();
            let dest = dl.join(Path::new(pool.as_str()).file_name().unwrap());
            let (ok, out) = apt(
                &config,
                "/usr/lib/apt/apt-helper",
                &[
                    "download-file",
                    &format!("{url}/debian/{pool}"),
                    dest.to_str().unwrap(),
                    &format!("SHA256:{}", sha256_hex(&bytes)),
                ],
            );
            assert!(ok, "apt-helper download-file {pool} failed:\n{out}");
            assert!(
                !out.lines()
                    .any(|l| l.starts_with("W:") || l.starts_with("E:")),
                "apt-helper download-file {pool} complained:\n{out}"
            );
            assert!(
                fs::read(&dest).unwrap() == bytes,
                "{dest:?} differs from {source:?}"
            );
        }
        let requests = server.requests();
        assert!(
            requests.contains(&format!("/debian/{pool_newer}")),
            "the percent-encoded pool path was not decoded: {requests:?}"
        );
    }

    #[test]
    fn the_server_decodes_paths_and_stays_inside_its_root() {
        let tmp = tempfile::tempdir().unwrap();
        write_file(&tmp.path().join("www/a+b~c"), b"payload");
        write_file(&tmp.path().join("secret"), b"no");
        let server = Server::start(&tmp.path().join("www"));
        let get = |request: &str| {
            let mut stream =
                TcpStream::connect(server.url().trim_start_matches("http://")).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let ok = get("GET /a%2bb%7ec HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 7\r\n") && ok.ends_with("\r\n\r\npayload"),
            "{ok}"
        );
        let head = get("HEAD /a+b~c HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        for bad in ["/../secret", "/%2e%2e/secret", "/missing", "/"] {
            let answer = get(&format!("GET {bad} HTTP/1.1\r\n\r\n"));
            assert!(answer.starts_with("HTTP/1.1 404 "), "{bad}: {answer}");
        }
        assert_eq!(
            server.requests(),
            [
                "/a+b~c",
                "/a+b~c",
                "/../secret",
                "/../secret",
                "/missing",
                "/"
            ]
        );
    }
}
