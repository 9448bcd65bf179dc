//! Components: apt (private config), Kubernetes release binaries, cache, lock, .deb reader.
//!
//! - [`cache`]: the content-addressed cache (`sha256/<hex>`, temp + rename, file locks).
//! - [`apt`]: Debian arm64 packages through the host's apt with a private configuration.
//! - [`deb`]: .deb files read straight into a [`crate::tree::Tree`].
//! - [`modules`]: kernel module metadata (`.modinfo`), closure, modules.dep/alias/softdep.
//! - [`fetch`]: URL artifacts (Kubernetes release binaries) with sha256 pins, local overrides.
//! - [`lock`]: `piimg.lock`, the record of every component's source and sha256.
//!
//! Typical use: `fetch --update` = [`update_suite`] per suite + [`fetch::pin_and_fetch`] per URL
//! artifact, recorded with [`lock::Lock::set_suite`] / [`lock::Lock::upsert`]; a build =
//! [`fetch_locked`] (or [`lock::Lock::check_offline`] with `--offline`), then
//! [`deb::read_cached_deb`] for each package into the root tree.

pub mod apt;
pub mod cache;
pub mod deb;
pub mod fetch;
pub mod lock;
pub mod modules;

use crate::report::Reporter;
use apt::{Apt, AptConfig, AptError, Resolved, SuiteSources};
use cache::Cache;
use fetch::FetchError;
use lock::{Lock, LockEntry, LockError, Source};

#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    GoneFromPool(Box<GoneFromPool>),
    #[error("{name}: URL component has no sha256 pin yet: run `piimg fetch --update`")]
    Unpinned { name: String },
    #[error(
        "{name}: local component ({origin}) is not in the cache: supply it again as {name}=PATH"
    )]
    LocalMissing { name: String, origin: String },
}

/// Locked .debs that neither the mirror's pool nor the snapshot archive (if any) still serve.
#[derive(Debug, thiserror::Error)]
#[error("{} locked package(s) of Debian {suite} are no longer served{}:\n{}\nways out:\n  \
         piimg fetch --update         re-resolve against the archive as it is now (changes piimg.lock)\n  \
         image.snapshot = \"YYYYMMDDThhmmssZ\" with image.snapshot_mirror = \"URI\" in the profile: \
         fetch these exact files from Debian's snapshot archive\n  \
         piimg build --offline        with a cache that still holds them",
    .missing.len(),
    .snapshot.as_ref().map(|s| format!(" (the snapshot {s} does not have them either)")).unwrap_or_default(),
    .missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n"))]
pub struct GoneFromPool {
    pub suite: String,
    pub snapshot: Option<String>,
    /// `NAME VERSION (URI)` per missing package.
    pub missing: Vec<String>,
}

/// How [`fetch_locked`] may get what the cache lacks.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Use only the cache; fail naming every missing component.
    pub offline: bool,
    /// Where the suite's packages are served.
    pub sources: SuiteSources,
}

/// `apt-get update` for the suite and its archives, resolve `packages` minus `exclude`, download
/// the result into the cache (size and sha256 checked). The caller records it with
/// [`Lock::set_suite`].
pub fn update_suite(
    cache: &Cache,
    sources: &SuiteSources,
    packages: &[&str],
    exclude: &[&str],
    reporter: &dyn Reporter,
) -> Result<Resolved, ComponentsError> {
    let apt = Apt::in_cache(cache, AptConfig::from_sources(sources)?)?;
    apt.update(reporter)?;
    let resolved = apt.resolve(packages, exclude)?;
    apt.download(&resolved.packages, cache, reporter)?;
    Ok(resolved)
}

/// Downloads locked .debs the cache lacks by the pool path the lock records, from the mirror of
/// the archive each came from, then from the snapshot archive when one is configured. Every
/// file is checked against the lock's size and sha256; the index is never consulted.
fn download_debs(
    apt: &Apt,
    entries: &[LockEntry],
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<(), ComponentsError> {
    let files: Vec<apt::PoolFile> = entries
        .iter()
        .filter_map(|e| match (e.source(), e.sha256.as_deref()) {
            (Some(Source::Debian { filename, .. }), Some(sha)) => Some(apt::PoolFile {
                name: &e.name,
                version: &e.version,
                archive: e.archive(),
                filename,
                sha256: sha,
                size: e.size,
            }),
            _ => None,
        })
        .collect();
    let missing = apt.download_pool(&files, cache, reporter)?;
    if missing.is_empty() {
        return Ok(());
    }
    let cfg = apt.config();
    Err(ComponentsError::GoneFromPool(Box::new(GoneFromPool {
        suite: cfg.suite.clone(),
        snapshot: cfg.snapshot.as_ref().map(|s| s.timestamp.clone()),
        missing,
    })))
}

/// Makes sure every locked component is in the cache, downloading what is missing (debs by
/// their locked pool path, pinned URLs over https). Never changes a pin and never reads the
/// archive's index.
pub fn fetch_locked(
    lock: &Lock,
    cache: &Cache,
    opts: &FetchOptions,
    reporter: &dyn Reporter,
) -> Result<(), ComponentsError> {
    if opts.offline {
        return Ok(lock.check_offline(cache)?);
    }
    let missing = lock.missing(cache);
    let mut debs: Vec<LockEntry> = Vec::new();
    for e in missing {
        match e.source() {
            Some(Source::Debian { suite, .. }) => {
                if suite == opts.sources.suite {
                    debs.push(e.clone());
                }
            }
            Some(Source::Url(url)) => {
                let sha = e
                    .sha256
                    .as_deref()
                    .ok_or_else(|| ComponentsError::Unpinned {
                        name: e.name.clone(),
                    })?;
                fetch::fetch_url(&e.name, url, Some(sha), cache, reporter)?;
            }
            Some(Source::Local(_)) | None => {
                return Err(ComponentsError::LocalMissing {
                    name: e.name.clone(),
                    origin: e.source.clone(),
                })
            }
        }
    }
    if debs.is_empty() {
        return Ok(());
    }
    let mut sources = opts.sources.clone();
    if sources.snapshot.is_none() {
        sources.snapshot = lock.snapshot(&sources.suite);
    }
    // Downloads need the mirrors, not the index: no `apt-get update` here.
    let apt = Apt::in_cache(cache, AptConfig::from_sources(&sources)?)?;
    download_debs(&apt, &debs, cache, reporter)
}

/// One locked package the archive has a newer version of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outdated {
    pub name: String,
    pub suite: String,
    pub locked: String,
    pub available: String,
    /// The newer version comes from Debian's security archive.
    pub security: bool,
    /// The suites that offer it (`trixie-security`, ...).
    pub from: Vec<String>,
}

/// Refreshes the suite's index and lists the locked packages whose newest version (apt's
/// candidate over the suite and its archives) differs from the locked one.
pub fn outdated(
    lock: &Lock,
    cache: &Cache,
    sources: &SuiteSources,
    reporter: &dyn Reporter,
) -> Result<Vec<Outdated>, ComponentsError> {
    let apt = Apt::in_cache(cache, AptConfig::from_sources(sources)?)?;
    apt.update(reporter)?;
    let entries = lock.suite_entries(&sources.suite);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let cands = apt.candidates(&names)?;
    let mut out = Vec::new();
    for e in entries {
        let Some(c) = cands.get(&e.name) else {
            continue;
        };
        if c.version != e.version && !c.newer_than_candidate.contains(&e.version) {
            out.push(Outdated {
                name: e.name.clone(),
                suite: sources.suite.clone(),
                locked: e.version.clone(),
                available: c.version.clone(),
                security: c.security,
                from: c.suites.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_stay_small() {
        // Callers wrap these in their own errors; keep clippy's result_large_err quiet for them.
        assert!(std::mem::size_of::<super::ComponentsError>() <= 96);
    }
}
