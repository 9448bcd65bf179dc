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

use std::collections::BTreeMap;

use crate::report::Reporter;
use apt::{Apt, AptConfig, AptError, Resolved};
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
    IndexChanged(Box<IndexChanged>),
    #[error("{name} {version} ({suite}) is no longer in the archive's index: run `piimg fetch --update`")]
    GoneFromIndex {
        name: String,
        version: String,
        suite: String,
    },
    #[error("{name}: URL component has no sha256 pin yet: run `piimg fetch --update`")]
    Unpinned { name: String },
    #[error(
        "{name}: local component ({origin}) is not in the cache: supply it again as {name}=PATH"
    )]
    LocalMissing { name: String, origin: String },
}

/// A locked .deb whose sha256 the archive's index no longer agrees with.
#[derive(Debug, thiserror::Error)]
#[error("{name} {version}: the lock pins sha256 {locked} but the {suite} index now has {index}: run `piimg fetch --update`")]
pub struct IndexChanged {
    pub name: String,
    pub version: String,
    pub suite: String,
    pub locked: String,
    pub index: String,
}

/// How [`fetch_locked`] may get what the cache lacks.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Use only the cache; fail naming every missing component.
    pub offline: bool,
    /// Debian mirror; `None` reads the host's apt sources.
    pub mirror: Option<String>,
}

fn has_lists(apt: &Apt) -> bool {
    std::fs::read_dir(apt.dir().join("lists"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

/// `apt-get update` for `suite`, resolve `packages` minus `exclude`, download the result into the
/// cache (sha256-verified). The caller records it with [`Lock::set_suite`].
pub fn update_suite(
    cache: &Cache,
    suite: &str,
    mirror: Option<&str>,
    packages: &[&str],
    exclude: &[&str],
    reporter: &dyn Reporter,
) -> Result<Resolved, ComponentsError> {
    let apt = Apt::in_cache(cache, AptConfig::new(suite, mirror)?)?;
    apt.update(reporter)?;
    let resolved = apt.resolve(packages, exclude)?;
    apt.download(&resolved.packages, cache, reporter)?;
    Ok(resolved)
}

/// Makes sure every locked component is in the cache, downloading what is missing (debs with the
/// private apt, pinned URLs over https). Never changes a pin: an index that disagrees with the
/// lock is an error.
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
    let mut by_suite: BTreeMap<String, Vec<LockEntry>> = BTreeMap::new();
    for e in missing {
        match e.source() {
            Some(Source::Debian { suite, .. }) => by_suite
                .entry(suite.to_string())
                .or_default()
                .push(e.clone()),
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
    for (suite, entries) in by_suite {
        let apt = Apt::in_cache(cache, AptConfig::new(&suite, opts.mirror.as_deref())?)?;
        if !has_lists(&apt) {
            apt.update(reporter)?;
        }
        let pins: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.version.clone()))
            .collect();
        let shown = match apt.show(&pins) {
            Ok(s) => s,
            Err(AptError::Failed { .. }) => {
                // apt-cache show fails as a whole when one version is gone; find which.
                let mut ok = Vec::new();
                for p in &pins {
                    match apt.show(std::slice::from_ref(p)) {
                        Ok(mut v) => ok.append(&mut v),
                        Err(AptError::Failed { .. }) => {
                            return Err(ComponentsError::GoneFromIndex {
                                name: p.0.clone(),
                                version: p.1.clone(),
                                suite: suite.clone(),
                            })
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                ok
            }
            Err(e) => return Err(e.into()),
        };
        let mut pkgs = Vec::new();
        for e in &entries {
            let p = shown
                .iter()
                .find(|p| p.name == e.name && p.version == e.version)
                .ok_or_else(|| ComponentsError::GoneFromIndex {
                    name: e.name.clone(),
                    version: e.version.clone(),
                    suite: suite.clone(),
                })?;
            let locked = e.sha256.clone().unwrap_or_default();
            if p.sha256 != locked {
                return Err(ComponentsError::IndexChanged(Box::new(IndexChanged {
                    name: e.name.clone(),
                    version: e.version.clone(),
                    suite: suite.clone(),
                    locked,
                    index: p.sha256.clone(),
                })));
            }
            pkgs.push(p.clone());
        }
        apt.download(&pkgs, cache, reporter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_stay_small() {
        // Callers wrap these in their own errors; keep clippy's result_large_err quiet for them.
        assert!(std::mem::size_of::<super::ComponentsError>() <= 96);
    }
}
