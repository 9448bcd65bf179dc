//! The integration tests' one harness, in the spirit of ripgrep's tests/util.rs: where the
//! repository and the shared download cache are, work folders, temporary projects
//! ([`project`]), running piimg ([`piimg`]) and running the outside tools that check its output
//! ([`checkers`], [`loopdev`]). Each test binary keeps only its tests and what is its own.
// Every test binary compiles all of the harness and uses a part of it.
#![allow(dead_code)]

pub mod checkers;
pub mod loopdev;
pub mod oci;
pub mod piimg;
pub mod project;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The kubelet/kubeadm/kubectl stand-ins a Kubernetes node is built with (`--component`).
pub const KUBE_STANDINS: [&str; 3] = ["kubelet", "kubeadm", "kubectl"];

/// The repository (profiles, piimg.lock, overlays, stand-ins).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tests' scratch space under the target folder.
pub fn target_tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// `$XDG_CACHE_HOME` of the tests that build images: the .debs are downloaded once per target
/// folder and shared by every test binary.
pub fn cache_home() -> PathBuf {
    let d = target_tmp().join("piimg-test-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A clearly named test stand-in (tests/standins/NAME) for `--component NAME=PATH`.
pub fn standin(name: &str) -> PathBuf {
    repo().join("tests/standins").join(name)
}

/// An empty folder `name` under the target's scratch space, emptied first: it outlives the test
/// so that a failure can be looked at.
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = target_tmp().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A temporary folder under the target's scratch space, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(target_tmp())
        .unwrap()
}

/// This process's folder `PREFIX-PID` for what lives as long as the test binary (statics are
/// never dropped, so it cannot clean up after itself): each run removes the folders of runs
/// whose process is gone.
pub fn process_dir(prefix: &str) -> PathBuf {
    if let Ok(rd) = std::fs::read_dir(target_tmp()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-'));
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    fresh_dir(&format!("{prefix}-{}", std::process::id()))
}

/// The names in a folder, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A JSON file (a manifest, `show --json` saved), parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A TOML file (a profile, a lock, a secrets file), parsed.
pub fn read_toml(path: &Path) -> toml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// sha256 of bytes, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 of a file, in hex, read as a stream (images are large).
pub fn sha256_file(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Deterministic pseudo-random bytes (xorshift), so that large files are not all one value.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for forwards and test servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 to 127.0.0.1:port (a forward into a guest): the whole response.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: piimg\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
