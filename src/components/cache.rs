//! The content-addressed download cache: `<root>/sha256/<hex>` holds a file whose sha256 is
//! `<hex>`. Every write goes to a temp file in the same directory and is renamed only after its
//! hash was checked, so an interrupted or corrupt download never appears under a final name.
//! Runs of external tools that share state (apt) are serialised with an exclusive file lock.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: sha256 mismatch: expected {expected}, got {actual} (nothing was kept)")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{0:?} is not a sha256 (64 lowercase hex digits)")]
    BadSha(String),
    #[error("neither XDG_CACHE_HOME nor HOME is set: pass a cache directory")]
    NoHome,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// True for a 64-digit lowercase hex string.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_sha(s: &str) -> Result<(), CacheError> {
    if is_sha256(s) {
        Ok(())
    } else {
        Err(CacheError::BadSha(s.to_string()))
    }
}

/// sha256 of everything `r` yields, copied into `w`; progress in bytes goes to `reporter`.
pub fn copy_hashing(
    r: &mut dyn Read,
    w: &mut dyn Write,
    reporter: &dyn Reporter,
) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        total += n as u64;
        reporter.advance(n as u64);
    }
    Ok((hex::encode(h.finalize()), total))
}

/// sha256 (lowercase hex) of a file.
pub fn sha256_of_path(path: &Path) -> Result<String, CacheError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let (sha, _) =
        copy_hashing(&mut f, &mut io::sink(), &crate::report::Silent).map_err(io_err(path))?;
    Ok(sha)
}

/// An exclusive lock held until dropped (the OS releases it if the process dies).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

/// Locks `path` exclusively, creating it if needed; blocks until the lock is free.
pub fn lock_file(path: &Path) -> Result<CacheLock, CacheError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.lock().map_err(io_err(path))?;
    Ok(CacheLock { _file: file })
}

/// The cache directory, shared by concurrent builds. Nothing in it is trusted for existing:
/// an object is hashed before its first use in a run, and one that does not match its name (a
/// truncated download, a flipped bit) is removed, so that it is fetched again or named missing.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    /// Objects this process has hashed and found right (each is checked once per run).
    checked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Cache {
    /// `$XDG_CACHE_HOME/piimg`, else `$HOME/.cache/piimg`.
    pub fn default_root() -> Result<PathBuf, CacheError> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("piimg"));
        }
        let home = std::env::var_os("HOME")
            .filter(|x| !x.is_empty())
            .ok_or(CacheError::NoHome)?;
        Ok(PathBuf::from(home).join(".cache").join("piimg"))
    }

    /// Opens (creating if needed) a cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let root = root.into();
        for sub in ["sha256", "tar", "locks"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Cache {
            root,
            checked: Default::default(),
        })
    }

    fn is_checked(&self, key: &str) -> bool {
        self.checked.lock().is_ok_and(|c| c.contains(key))
    }

    fn mark_checked(&self, key: &str) {
        if let Ok(mut c) = self.checked.lock() {
            c.insert(key.to_string());
        }
    }

    /// Removes an object and what was derived from it.
    pub fn evict(&self, sha: &str) {
        for p in [
            self.path_of(sha),
            self.data_tar_path(sha),
            self.data_tar_record(sha),
        ] {
            let _ = std::fs::remove_file(p);
        }
        if let Ok(mut c) = self.checked.lock() {
            c.remove(sha);
            c.remove(&format!("tar:{sha}"));
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the file with this sha256 lives (whether or not it is there).
    pub fn path_of(&self, sha: &str) -> PathBuf {
        self.root.join("sha256").join(sha)
    }

    /// Whether the object is stored and intact (hashed on first use in this run; a corrupt
    /// one is evicted and reported absent).
    pub fn has(&self, sha: &str) -> bool {
        if !is_sha256(sha) || !self.path_of(sha).is_file() {
            return false;
        }
        if self.is_checked(sha) {
            return true;
        }
        match self.verify(sha) {
            Ok(()) => {
                self.mark_checked(sha);
                true
            }
            Err(_) => {
                self.evict(sha);
                false
            }
        }
    }

    /// Every sha256 stored, sorted (for tests and `piimg cache ls`).
    pub fn list(&self) -> Result<Vec<String>, CacheError> {
        let dir = self.root.join("sha256");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(n) = e.file_name().to_str().filter(|n| is_sha256(n)) {
                out.push(n.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Holds the named lock (`<root>/locks/<name>.lock`) until the guard is dropped.
    pub fn lock(&self, name: &str) -> Result<CacheLock, CacheError> {
        lock_file(&self.root.join("locks").join(format!("{name}.lock")))
    }

    /// A temp file in `dir` (same filesystem as its final name), removed if dropped.
    pub(crate) fn temp_in(&self, dir: &Path) -> Result<tempfile::NamedTempFile, CacheError> {
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io_err(dir))
    }

    /// Streams `r` into the cache while hashing. With `expected`, a different hash is an error and
    /// nothing is kept; without, the content is stored under whatever hash it has. Returns the
    /// sha256 and the final path.
    pub fn insert_reader(
        &self,
        what: &str,
        r: &mut dyn Read,
        expected: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<(String, PathBuf), CacheError> {
        if let Some(e) = expected {
            check_sha(e)?;
        }
        let dir = self.root.join("sha256");
        let mut tmp = self.temp_in(&dir)?;
        let (sha, _) =
            copy_hashing(r, tmp.as_file_mut(), reporter).map_err(|source| CacheError::Io {
                path: what.to_string(),
                source,
            })?;
        if let Some(e) = expected {
            if e != sha {
                return Err(CacheError::Mismatch {
                    what: what.to_string(),
                    expected: e.to_string(),
                    actual: sha,
                });
            }
        }
        let dest = self.path_of(&sha);
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        // Two builds may race to the same content; the loser's rename replaces identical bytes.
        tmp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.display().to_string(),
            source: e.error,
        })?;
        self.mark_checked(&sha);
        Ok((sha, dest))
    }

    /// Copies a host file into the cache after checking its sha256.
    pub fn insert_file(&self, path: &Path, expected_sha: &str) -> Result<PathBuf, CacheError> {
        check_sha(expected_sha)?;
        if self.has(expected_sha) {
            // Still verify the caller's file: a wrong pin must not pass because the cache has it.
            let actual = sha256_of_path(path)?;
            if actual != expected_sha {
                return Err(CacheError::Mismatch {
                    what: path.display().to_string(),
                    expected: expected_sha.to_string(),
                    actual,
                });
            }
            return Ok(self.path_of(expected_sha));
        }
        let mut f = File::open(path).map_err(io_err(path))?;
        let what = path.display().to_string();
        let (_, dest) =
            self.insert_reader(&what, &mut f, Some(expected_sha), &crate::report::Silent)?;
        Ok(dest)
    }

    /// Copies a host file into the cache under whatever hash it has; returns the hash.
    pub fn insert_file_any(&self, path: &Path) -> Result<String, CacheError> {
        let mut f = File::open(path).map_err(io_err(path))?;
        let what = path.display().to_string();
        let (sha, _) = self.insert_reader(&what, &mut f, None, &crate::report::Silent)?;
        Ok(sha)
    }

    /// Re-hashes a cached file (detects on-disk corruption).
    pub fn verify(&self, sha: &str) -> Result<(), CacheError> {
        let p = self.path_of(sha);
        let actual = sha256_of_path(&p)?;
        if actual != sha {
            return Err(CacheError::Mismatch {
                what: p.display().to_string(),
                expected: sha.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Where the decompressed data.tar of the .deb with this sha256 is kept.
    pub fn data_tar_path(&self, deb_sha: &str) -> PathBuf {
        self.root.join("tar").join(format!("{deb_sha}.tar"))
    }

    /// The record of a kept data tar: `SHA256 SIZE`, written once the tar is in place.
    fn data_tar_record(&self, deb_sha: &str) -> PathBuf {
        self.root.join("tar").join(format!("{deb_sha}.tar.sha256"))
    }

    /// Whether the kept data tar of this .deb is there and matches its record (hashed once per
    /// run); one that does not is removed.
    pub fn data_tar_ok(&self, deb_sha: &str) -> bool {
        let key = format!("tar:{deb_sha}");
        if self.is_checked(&key) && self.data_tar_path(deb_sha).is_file() {
            return true;
        }
        let tar = self.data_tar_path(deb_sha);
        let record = std::fs::read_to_string(self.data_tar_record(deb_sha)).unwrap_or_default();
        let mut it = record.split_whitespace();
        let (want_sha, want_size) = (it.next(), it.next().and_then(|s| s.parse::<u64>().ok()));
        let ok = match (want_sha, want_size, std::fs::metadata(&tar)) {
            (Some(sha), Some(size), Ok(md)) if md.len() == size => {
                sha256_of_path(&tar).is_ok_and(|got| got == sha)
            }
            _ => false,
        };
        if ok {
            self.mark_checked(&key);
        } else {
            let _ = std::fs::remove_file(&tar);
            let _ = std::fs::remove_file(self.data_tar_record(deb_sha));
        }
        ok
    }

    /// Puts a freshly made data tar in place (synced first) and records its sha256 and size.
    pub fn commit_data_tar(
        &self,
        deb_sha: &str,
        tmp: tempfile::NamedTempFile,
        sha: &str,
        size: u64,
    ) -> Result<(), CacheError> {
        let tar = self.data_tar_path(deb_sha);
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        tmp.persist(&tar).map_err(|e| CacheError::Io {
            path: tar.display().to_string(),
            source: e.error,
        })?;
        let record = self.data_tar_record(deb_sha);
        let dir = self.root.join("tar");
        let mut rt = self.temp_in(&dir)?;
        rt.as_file_mut()
            .write_all(format!("{sha} {size}\n").as_bytes())
            .and_then(|()| rt.as_file().sync_all())
            .map_err(io_err(&record))?;
        rt.persist(&record).map_err(|e| CacheError::Io {
            path: record.display().to_string(),
            source: e.error,
        })?;
        self.mark_checked(&format!("tar:{deb_sha}"));
        Ok(())
    }
}
