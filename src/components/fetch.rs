//! URL artifacts (the official Kubernetes release binaries) and local-file overrides.
//!
//! Downloads stream into a temp file in the cache while being hashed; with a pin, a different
//! hash is an error naming both and nothing is kept. Only `https://` is fetched, except plain
//! `http://` to a loopback host (127.0.0.1, [::1], localhost), which tests use for a server they
//! run themselves; that cannot reach another machine, so it weakens nothing.
//!
//! Pins: piimg ships no sha256 for these URLs (none was verifiable when this was written and
//! invented hashes would be worse than none). `piimg fetch --update` fills them: it reads the
//! `.sha256` file the release publishes next to each binary ([`published_sha256`]), downloads
//! the binary against it, and records the hash in piimg.lock; later builds check against the lock.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::cache::{is_sha256, sha256_of_path, Cache, CacheError};
use super::lock::LockEntry;
use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{url}: refusing to fetch (only https://, or http:// to a loopback address)")]
    Scheme { url: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: published checksum file is not a sha256: {text:?}")]
    BadPublished { url: String, text: String },
    #[error("{name}: local file {path}: {source}")]
    Local {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no member named {member}")]
    NoMember { what: String, member: String },
    #[error("{what}: {source}")]
    Archive {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A downloadable component and its pin (None until `piimg fetch --update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlArtifact {
    pub name: String,
    pub version: String,
    pub url: String,
    pub sha256: Option<String>,
}

impl UrlArtifact {
    pub fn lock_entry(&self) -> LockEntry {
        LockEntry {
            name: self.name.clone(),
            version: self.version.clone(),
            source: self.url.clone(),
            sha256: self.sha256.clone(),
            size: None,
            archive: None,
            depends: Vec::new(),
        }
    }
}

/// Default Kubernetes version for new locks.
pub const DEFAULT_KUBERNETES: &str = "v1.31.4";
/// Default cri-tools (crictl) version for new locks.
pub const DEFAULT_CRICTL: &str = "v1.31.1";

/// kubelet, kubeadm, kubectl (linux/arm64 from dl.k8s.io) and crictl (the cri-tools release
/// tarball), unpinned.
pub fn kubernetes_artifacts(k8s: &str, crictl: &str) -> Vec<UrlArtifact> {
    let mut v: Vec<UrlArtifact> = ["kubeadm", "kubectl", "kubelet"]
        .into_iter()
        .map(|b| UrlArtifact {
            name: b.to_string(),
            version: k8s.to_string(),
            url: format!("https://dl.k8s.io/release/{k8s}/bin/linux/arm64/{b}"),
            sha256: None,
        })
        .collect();
    v.push(UrlArtifact {
        name: "crictl".into(),
        version: crictl.to_string(),
        url: format!(
            "https://github.com/kubernetes-sigs/cri-tools/releases/download/{crictl}/crictl-{crictl}-linux-arm64.tar.gz"
        ),
        sha256: None,
    });
    v
}

fn host_of(rest: &str) -> &str {
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    let auth = auth.rsplit('@').next().unwrap_or(auth);
    if let Some(v6) = auth.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    auth.split(':').next().unwrap_or("")
}

/// https anywhere; http only to loopback.
pub fn check_url(url: &str) -> Result<(), FetchError> {
    if let Some(rest) = url.strip_prefix("https://") {
        if !host_of(rest).is_empty() {
            return Ok(());
        }
    } else if let Some(rest) = url.strip_prefix("http://") {
        if matches!(host_of(rest), "127.0.0.1" | "::1" | "localhost") {
            return Ok(());
        }
    }
    Err(FetchError::Scheme {
        url: url.to_string(),
    })
}

fn get(url: &str) -> Result<ureq::Response, FetchError> {
    check_url(url)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .build();
    match agent.get(url).call() {
        Ok(r) => {
            // Redirects must not leave https (or loopback) either.
            check_url(r.get_url())?;
            Ok(r)
        }
        Err(ureq::Error::Status(status, _)) => Err(FetchError::Status {
            url: url.to_string(),
            status,
        }),
        Err(e) => Err(FetchError::Transport {
            url: url.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Downloads `url` into the cache. With `expected`, a different hash is an error naming both
/// hashes and nothing is kept; already-cached pinned content is not downloaded again.
/// Returns the sha256.
pub fn fetch_url(
    name: &str,
    url: &str,
    expected: Option<&str>,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<String, FetchError> {
    check_url(url)?;
    if let Some(e) = expected {
        if cache.has(e) {
            return Ok(e.to_string());
        }
    }
    let resp = get(url)?;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    reporter.begin(&format!("fetch {name}"), total);
    let mut reader = resp.into_reader();
    let r = cache.insert_reader(&format!("{name} ({url})"), &mut reader, expected, reporter);
    reporter.end();
    Ok(r?.0)
}

/// The sha256 a release publishes next to an artifact (`<url>.sha256`, first word).
pub fn published_sha256(url: &str) -> Result<String, FetchError> {
    let sum_url = format!("{url}.sha256");
    let resp = get(&sum_url)?;
    let mut text = String::new();
    resp.into_reader()
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| FetchError::Transport {
            url: sum_url.clone(),
            reason: e.to_string(),
        })?;
    let word = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if !is_sha256(&word) {
        return Err(FetchError::BadPublished { url: sum_url, text });
    }
    Ok(word)
}

/// `fetch --update` for one artifact: pin to the published checksum, download against it.
pub fn pin_and_fetch(
    a: &UrlArtifact,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<UrlArtifact, FetchError> {
    let sha = published_sha256(&a.url)?;
    fetch_url(&a.name, &a.url, Some(&sha), cache, reporter)?;
    Ok(UrlArtifact {
        sha256: Some(sha),
        ..a.clone()
    })
}

/// A component supplied as a local file (`name=PATH`): copied into the cache and recorded as
/// `local:<basename>` with its sha256.
pub fn add_local(
    name: &str,
    version: &str,
    path: &Path,
    cache: &Cache,
) -> Result<LockEntry, FetchError> {
    let local = |source| FetchError::Local {
        name: name.to_string(),
        path: path.display().to_string(),
        source,
    };
    let md = std::fs::metadata(path).map_err(local)?;
    if !md.is_file() {
        return Err(local(std::io::Error::other("not a regular file")));
    }
    let sha = sha256_of_path(path)?;
    cache.insert_file(path, &sha)?;
    let base = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    Ok(LockEntry {
        name: name.to_string(),
        version: version.to_string(),
        source: format!("local:{base}"),
        sha256: Some(sha),
        size: Some(md.len()),
        archive: None,
        depends: Vec::new(),
    })
}

/// One member of a cached .tar.gz (crictl ships as `crictl` inside its release tarball).
pub fn tgz_member(path: &Path, member: &str) -> Result<Vec<u8>, FetchError> {
    let what = path.display().to_string();
    let arch = |source| FetchError::Archive {
        what: what.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(arch)?;
    let mut t = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in t.entries().map_err(arch)? {
        let mut e = e.map_err(arch)?;
        let p = e.path_bytes().into_owned();
        let p = p.strip_prefix(b"./").unwrap_or(&p);
        if p == member.as_bytes() && e.header().entry_type().is_file() {
            let mut out = Vec::new();
            e.read_to_end(&mut out).map_err(arch)?;
            return Ok(out);
        }
    }
    Err(FetchError::NoMember {
        what,
        member: member.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_policy() {
        assert!(check_url("https://dl.k8s.io/release/v1/bin/linux/arm64/kubelet").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_url("http://[::1]:8080/x").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://dl.k8s.io/x").is_err());
        assert!(check_url("http://127.0.0.1.evil.invalid/x").is_err());
        assert!(check_url("http://127.0.0.1@evil.invalid/x").is_err());
        assert!(check_url("ftp://127.0.0.1/x").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
    }
}
