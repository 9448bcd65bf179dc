//! `piimg.lock`: every component's name, version, source and sha256, sorted, so a build is a
//! function of the lock (plus profile, secrets and SOURCE_DATE_EPOCH).
//!
//! Sources:
//! - `debian:<suite>/<filename>`: a .deb of the suite (`filename` is the pool path; no mirror is
//!   recorded, any mirror serves it). `archive = "updates"` or `"security"` says it was resolved
//!   from `SUITE-updates` or Debian's security archive (whose mirror and pool are its own).
//!   A build downloads exactly that file and checks its size and sha256; the archive's index is
//!   not read, so a lock keeps building after Debian moves on, for as long as the pool (or the
//!   snapshot archive named in `[[snapshot]]`) has the file.
//! - `https://...`: a URL artifact (Kubernetes release binaries). Its `sha256` may be absent
//!   until `piimg fetch --update` pins it.
//! - `local:<basename>`: a file supplied on the command line (`name=PATH`); only the cache can
//!   provide it again.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::apt::{Archive, DebPackage, Snapshot};
use super::cache::{is_sha256, Cache, CacheError};

/// Format version written to the lock.
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: unsupported lock version {version} (this piimg writes {LOCK_VERSION})")]
    Version { path: String, version: u32 },
    #[error("{path}: component {name}: {reason}")]
    Entry {
        path: String,
        name: String,
        reason: String,
    },
    #[error("could not serialise the lock: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("offline: {} component(s) missing from the cache:\n{}", .0.len(), missing_list(.0))]
    Missing(Vec<LockEntry>),
}

fn missing_list(v: &[LockEntry]) -> String {
    v.iter()
        .map(|e| {
            format!(
                "  {} {} sha256 {} ({})",
                e.name,
                e.version,
                e.sha256.as_deref().unwrap_or("<not pinned>"),
                e.source
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a component comes from (parsed form of [`LockEntry::source`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    Debian { suite: &'a str, filename: &'a str },
    Url(&'a str),
    Local(&'a str),
}

impl<'a> Source<'a> {
    pub fn parse(s: &'a str) -> Option<Source<'a>> {
        if let Some(rest) = s.strip_prefix("debian:") {
            let (suite, filename) = rest.split_once('/')?;
            (!suite.is_empty() && !filename.is_empty())
                .then_some(Source::Debian { suite, filename })
        } else if let Some(b) = s.strip_prefix("local:") {
            (!b.is_empty() && !b.contains('/')).then_some(Source::Local(b))
        } else if s.starts_with("https://") || s.starts_with("http://") {
            Some(Source::Url(s))
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockEntry {
    pub name: String,
    pub version: String,
    pub source: String,
    /// Absent for a URL whose pin is still to be filled by `piimg fetch --update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Debian packages: `updates` or `security` when not from the suite itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// Debian packages: names this package depends on (every alternative), so a build picks a
    /// role's closure from the lock without apt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends: Vec<String>,
}

impl LockEntry {
    pub fn source(&self) -> Option<Source<'_>> {
        Source::parse(&self.source)
    }

    /// The archive a Debian package's file is served from.
    pub fn archive(&self) -> Archive {
        self.archive
            .as_deref()
            .and_then(|a| Archive::parse(a).ok())
            .unwrap_or_default()
    }

    /// The entry for a package resolved by apt.
    pub fn from_deb(suite: &str, p: &DebPackage) -> LockEntry {
        LockEntry {
            name: p.name.clone(),
            version: p.version.clone(),
            source: format!("debian:{suite}/{}", p.filename),
            sha256: Some(p.sha256.clone()),
            size: Some(p.size),
            archive: p.archive.name().map(str::to_string),
            depends: {
                let mut d: Vec<String> = p.depends.iter().flatten().cloned().collect();
                d.sort();
                d.dedup();
                d
            },
        }
    }

    /// Identity within the lock: a component appears once per suite (debs) or once (others).
    fn key(&self) -> (String, String) {
        let kind = match self.source() {
            Some(Source::Debian { suite, .. }) => format!("debian:{suite}"),
            Some(Source::Url(_)) | Some(Source::Local(_)) | None => String::new(),
        };
        (self.name.clone(), kind)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub version: u32,
    #[serde(default, rename = "component")]
    pub components: Vec<LockEntry>,
    /// The snapshot archive each suite falls back to, as the profiles named it at `fetch`.
    #[serde(default, rename = "snapshot", skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<LockSnapshot>,
}

/// `[[snapshot]]`: where a suite's locked files are found once the mirror's pool dropped them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockSnapshot {
    pub suite: String,
    pub timestamp: String,
    pub mirror: String,
}

impl Lock {
    pub fn new() -> Lock {
        Lock {
            version: LOCK_VERSION,
            components: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Lock, LockError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut lock: Lock = toml::from_str(&text).map_err(|source| LockError::Parse {
            path: shown.clone(),
            source: Box::new(source),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Version {
                path: shown,
                version: lock.version,
            });
        }
        for e in &lock.components {
            let bad = |reason: &str| LockError::Entry {
                path: shown.clone(),
                name: e.name.clone(),
                reason: reason.to_string(),
            };
            if e.source().is_none() {
                return Err(bad(&format!("unknown source {:?}", e.source)));
            }
            if let Some(a) = &e.archive {
                if Archive::parse(a).is_err() {
                    return Err(bad(&format!(
                        "unknown archive {a:?} (want \"updates\" or \"security\")"
                    )));
                }
            }
            match &e.sha256 {
                Some(s) if !is_sha256(s) => {
                    return Err(bad("sha256 is not 64 lowercase hex digits"))
                }
                None if !matches!(e.source(), Some(Source::Url(_))) => {
                    return Err(bad("sha256 missing (only URL components may be unpinned)"))
                }
                _ => {}
            }
        }
        lock.sort();
        Ok(lock)
    }

    /// Loads the lock, or an empty one if the file does not exist.
    pub fn load_or_new(path: &Path) -> Result<Lock, LockError> {
        if path.exists() {
            Lock::load(path)
        } else {
            Ok(Lock::new())
        }
    }

    pub fn sort(&mut self) {
        self.components.sort();
        self.components.dedup();
        self.snapshots.sort();
        self.snapshots.dedup();
    }

    /// The snapshot recorded for `suite`.
    pub fn snapshot(&self, suite: &str) -> Option<Snapshot> {
        self.snapshots
            .iter()
            .find(|s| s.suite == suite)
            .map(|s| Snapshot {
                timestamp: s.timestamp.clone(),
                mirror: s.mirror.clone(),
            })
    }

    /// Records (or, with `None`, forgets) the snapshot of `suite`.
    pub fn set_snapshot(&mut self, suite: &str, snap: Option<&Snapshot>) {
        self.snapshots.retain(|s| s.suite != suite);
        if let Some(s) = snap {
            self.snapshots.push(LockSnapshot {
                suite: suite.to_string(),
                timestamp: s.timestamp.clone(),
                mirror: s.mirror.clone(),
            });
        }
        self.sort();
    }

    /// The TOML text (sorted; the same lock always gives the same bytes).
    pub fn to_toml(&self) -> Result<String, LockError> {
        let mut l = self.clone();
        l.sort();
        let body = toml::to_string(&l)?;
        Ok(format!(
            "# piimg.lock: written by piimg (fetch --update); every component's source and sha256.\n\
             # Edit with care: a build uses exactly these bytes.\n\n{body}"
        ))
    }

    /// Writes atomically (temp file in the same directory, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let text = self.to_toml()?;
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".piimg.lock.")
            .tempfile_in(dir)
            .map_err(io)?;
        std::io::Write::write_all(tmp.as_file_mut(), text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Adds or replaces (same name and suite, or same name for non-deb sources) an entry.
    pub fn upsert(&mut self, entry: LockEntry) {
        let key = entry.key();
        self.components.retain(|e| e.key() != key);
        self.components.push(entry);
        self.sort();
    }

    /// Replaces every `debian:<suite>` entry with the given resolved set.
    pub fn set_suite(&mut self, suite: &str, pkgs: &[DebPackage]) {
        self.components
            .retain(|e| !matches!(e.source(), Some(Source::Debian { suite: s, .. }) if s == suite));
        self.components
            .extend(pkgs.iter().map(|p| LockEntry::from_deb(suite, p)));
        self.sort();
    }

    /// Entries of one Debian suite.
    pub fn suite_entries(&self, suite: &str) -> Vec<&LockEntry> {
        self.components
            .iter()
            .filter(|e| matches!(e.source(), Some(Source::Debian { suite: s, .. }) if s == suite))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&LockEntry> {
        self.components.iter().find(|e| e.name == name)
    }

    /// Entries whose content the cache lacks (unpinned ones included).
    pub fn missing(&self, cache: &Cache) -> Vec<LockEntry> {
        self.components
            .iter()
            .filter(|e| e.sha256.as_deref().is_none_or(|s| !cache.has(s)))
            .cloned()
            .collect()
    }

    /// `--offline`: everything must already be in the cache; the error names every missing
    /// component (name, version, sha256).
    pub fn check_offline(&self, cache: &Cache) -> Result<(), LockError> {
        let m = self.missing(cache);
        if m.is_empty() {
            Ok(())
        } else {
            Err(LockError::Missing(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("debian:trixie/pool/main/r/runc/runc_1_arm64.deb"),
            Some(Source::Debian {
                suite: "trixie",
                filename: "pool/main/r/runc/runc_1_arm64.deb"
            })
        );
        assert_eq!(
            Source::parse("local:kubelet"),
            Some(Source::Local("kubelet"))
        );
        assert_eq!(Source::parse("local:a/b"), None);
        assert_eq!(Source::parse("ftp://x"), None);
    }
}
