//! Reads .deb files straight into a [`Tree`]; nothing is ever unpacked onto the host filesystem.
//!
//! A .deb is an `ar` archive of `debian-binary`, `control.tar.*` (read only for its `control`
//! metadata: maintainer scripts are never looked at) and `data.tar.*`. The data tar is
//! decompressed once into the cache (`<cache>/tar/<deb sha256>.tar`) and every regular file
//! becomes a [`FileData::Range`] into it, so large files (kernel modules, containerd) are never
//! held in memory. Owners, modes and mtimes come from the tar headers.
//!
//! Entries that would escape the root are refused with an error naming the package and entry:
//! absolute paths (after a leading `./` is stripped), `..` components, and any path whose parent
//! is a symlink already in the tree. The package is applied to a copy of the tree, and its data
//! tar is kept in the cache only once every entry was accepted, so a refused package leaves both
//! the tree and the cache as they were.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::cache::{io_err, sha256_of_path, Cache, CacheError};
use crate::tree::{FileData, Meta, NodeKind, Tree, TreeError};

/// Paths dropped unless [`DebOptions::keep_docs`] is set (documentation and translations).
pub const DOC_PREFIXES: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
];

/// Upper bound on the uncompressed control.tar (it only holds a few small text files).
const CONTROL_MAX: u64 = 16 << 20;

#[derive(Debug, Clone, Default)]
pub struct DebOptions {
    /// Keep /usr/share/{doc,man,info,locale,lintian}.
    pub keep_docs: bool,
    /// A file that another package already put in the tree is replaced instead of an error.
    pub allow_replace: bool,
    /// Map top-level bin, sbin, lib* to usr/... (bookworm packages still ship them; merged-/usr
    /// images then hold symlinks there which would otherwise be refused as escapes).
    pub merge_usr: bool,
    /// Clamp every mtime to at most this (SOURCE_DATE_EPOCH).
    pub clamp_mtime: Option<i64>,
}

/// What a package contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    pub package: String,
    pub version: String,
    pub arch: String,
    /// Paths of the non-directory entries added, in archive order.
    pub files: Vec<Vec<u8>>,
    /// Entries dropped by the documentation filter.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{package}: {source}")]
    Io {
        package: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{package}: not a usable .deb: {reason}")]
    Format { package: String, reason: String },
    #[error("{package}: refusing entry {entry:?}: {reason}")]
    Hostile {
        package: String,
        entry: String,
        reason: String,
    },
    #[error("{package}: entry {entry:?}: {source}")]
    Tree {
        package: String,
        entry: String,
        #[source]
        source: TreeError,
    },
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Normalises a tar member name: strips a leading `./`, drops `.` components and empty ones.
/// `Ok(None)` is the root itself. Absolute paths and `..` are refused.
pub fn normalize_entry(raw: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    if p.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if p.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out: Vec<u8> = Vec::with_capacity(p.len());
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err("`..` component escapes the root"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn merge_usr(p: Vec<u8>) -> Vec<u8> {
    let first = p.split(|b| *b == b'/').next().unwrap_or(b"");
    if matches!(
        first,
        b"bin" | b"sbin" | b"lib" | b"lib32" | b"lib64" | b"libx32"
    ) {
        let mut out = b"usr/".to_vec();
        out.extend_from_slice(&p);
        out
    } else {
        p
    }
}

fn is_doc(p: &[u8]) -> bool {
    DOC_PREFIXES.iter().any(|d| {
        let d = d.as_bytes();
        p.starts_with(d) && (p.len() == d.len() || p[d.len()] == b'/')
    })
}

fn decoder<'a>(name: &str, r: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>, String> {
    Ok(if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(r))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| e.to_string())?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if name.ends_with(".tar") {
        r
    } else {
        return Err(format!("unsupported member compression: {name}"));
    })
}

/// Control fields of a package (from control.tar's `control`).
fn parse_control(text: &str) -> (String, String, String) {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (get("Package"), get("Version"), get("Architecture"))
}

/// Reads the .deb stored in the cache under `deb_sha` into `tree`; `label` names the package in
/// errors (the control file's name is used once it has been read).
pub fn read_cached_deb(
    tree: &mut Tree,
    cache: &Cache,
    deb_sha: &str,
    label: &str,
    opts: &DebOptions,
) -> Result<DebInfo, DebError> {
    let path = cache.path_of(deb_sha);
    read_deb_with_sha(tree, cache, &path, deb_sha, label, opts)
}

/// Reads any .deb file into `tree` (its sha256 is computed to key the cached data tar).
pub fn read_deb(
    tree: &mut Tree,
    cache: &Cache,
    deb: &Path,
    label: &str,
    opts: &DebOptions,
) -> Result<DebInfo, DebError> {
    let sha = sha256_of_path(deb)?;
    read_deb_with_sha(tree, cache, deb, &sha, label, opts)
}

struct Members {
    control: Option<String>,
    /// A data tar decompressed into a temp file not yet under its final name.
    /// A freshly decompressed data tar, its sha256 and size.
    data_tmp: Option<(tempfile::NamedTempFile, String, u64)>,
    data_seen: bool,
}

fn read_members(
    cache: &Cache,
    deb: &Path,
    deb_sha: &str,
    final_tar: &Path,
    label: &str,
) -> Result<Members, DebError> {
    let ioe = |source| DebError::Io {
        package: label.to_string(),
        source,
    };
    let fmt = |reason: String| DebError::Format {
        package: label.to_string(),
        reason,
    };
    let file = std::fs::File::open(deb).map_err(io_err(deb))?;
    let mut ar = ar::Archive::new(file);
    let mut m = Members {
        control: None,
        data_tmp: None,
        data_seen: false,
    };
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(ioe)?;
        let id = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if first {
            let mut v = String::new();
            (&mut entry).take(64).read_to_string(&mut v).map_err(ioe)?;
            if id != "debian-binary" || !v.starts_with("2.") {
                return Err(fmt(format!(
                    "first member is {id:?} ({:?}), want debian-binary 2.x",
                    v.trim()
                )));
            }
            first = false;
        } else if id.starts_with("control.tar") {
            let dec = decoder(&id, Box::new(&mut entry)).map_err(fmt)?;
            let mut t = tar::Archive::new(dec.take(CONTROL_MAX));
            for e in t.entries().map_err(ioe)? {
                let mut e = e.map_err(ioe)?;
                if normalize_entry(&e.path_bytes()).ok().flatten().as_deref() == Some(b"control") {
                    let mut s = String::new();
                    e.read_to_string(&mut s).map_err(ioe)?;
                    m.control = Some(s);
                }
            }
        } else if id.starts_with("data.tar") {
            m.data_seen = true;
            // A kept tar is used only when its size and sha256 still match what was recorded
            // when it was made; otherwise it is made again from the .deb.
            if cache.data_tar_ok(deb_sha) {
                continue;
            }
            let dir = final_tar.parent().unwrap_or(cache.root());
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(dir)
                .map_err(io_err(dir))?;
            let mut dec = decoder(&id, Box::new(&mut entry)).map_err(fmt)?;
            let (sha, size) =
                super::cache::copy_hashing(&mut dec, tmp.as_file_mut(), &crate::report::Silent)
                    .map_err(ioe)?;
            m.data_tmp = Some((tmp, sha, size));
        }
    }
    if first {
        return Err(fmt("empty ar archive".into()));
    }
    if !m.data_seen {
        return Err(fmt("no data.tar member".into()));
    }
    Ok(m)
}

fn read_deb_with_sha(
    tree: &mut Tree,
    cache: &Cache,
    deb: &Path,
    deb_sha: &str,
    label: &str,
    opts: &DebOptions,
) -> Result<DebInfo, DebError> {
    let final_tar = cache.data_tar_path(deb_sha);
    let members = read_members(cache, deb, deb_sha, &final_tar, label)?;
    let (package, version, arch) = members
        .control
        .as_deref()
        .map(parse_control)
        .unwrap_or_default();
    let name = if package.is_empty() {
        label.to_string()
    } else {
        package.clone()
    };
    let tar_now: PathBuf = match &members.data_tmp {
        Some((t, _, _)) => t.path().to_path_buf(),
        None => final_tar.clone(),
    };
    let mut staged = tree.clone();
    let (files, skipped) = apply_tar(&mut staged, &tar_now, &final_tar, &name, opts)?;
    if let Some((tmp, sha, size)) = members.data_tmp {
        cache.commit_data_tar(deb_sha, tmp, &sha, size)?;
    }
    *tree = staged;
    Ok(DebInfo {
        package: name,
        version,
        arch,
        files,
        skipped,
    })
}

/// Applies every entry of the uncompressed tar at `tar_now` to `tree`; file contents reference
/// `tar_ref` (the tar's final cache path).
fn apply_tar(
    tree: &mut Tree,
    tar_now: &Path,
    tar_ref: &Path,
    package: &str,
    opts: &DebOptions,
) -> Result<(Vec<Vec<u8>>, usize), DebError> {
    let ioe = |source| DebError::Io {
        package: package.to_string(),
        source,
    };
    let hostile = |entry: &[u8], reason: String| DebError::Hostile {
        package: package.to_string(),
        entry: show(entry),
        reason,
    };
    let file = std::fs::File::open(tar_now).map_err(io_err(tar_now))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut files = Vec::new();
    let mut skipped = 0usize;
    // Regular files dropped by the filter, so a hard link to one elsewhere still gets content.
    let mut dropped: std::collections::BTreeMap<Vec<u8>, (Meta, FileData)> = Default::default();
    for e in archive.entries().map_err(ioe)? {
        let e = e.map_err(ioe)?;
        let raw = e.path_bytes().into_owned();
        let h = e.header();
        let ty = h.entry_type();
        let norm = normalize_entry(&raw).map_err(|r| hostile(&raw, r.to_string()))?;
        let Some(mut path) = norm else {
            continue; // "./" itself: the root's metadata is the image's, not a package's
        };
        if opts.merge_usr {
            path = merge_usr(path);
        }
        let mut mtime = h.mtime().map_err(ioe)? as i64;
        if let Some(c) = opts.clamp_mtime {
            mtime = mtime.min(c);
        }
        let meta = Meta::new(
            (h.mode().map_err(ioe)? & 0o7777) as u16,
            h.uid().map_err(ioe)? as u32,
            h.gid().map_err(ioe)? as u32,
            mtime,
        );
        check_parents(tree, &path).map_err(|r| hostile(&raw, r))?;
        let tree_err = |source| DebError::Tree {
            package: package.to_string(),
            entry: show(&raw),
            source,
        };
        let existing = tree.lookup(&path);
        if let Some(id) = existing {
            if matches!(tree.node(id).kind, NodeKind::Symlink(_)) && ty.is_dir() {
                return Err(hostile(
                    &raw,
                    format!("directory would replace symlink /{}", show(&path)),
                ));
            }
        }
        let doc = !opts.keep_docs && is_doc(&path);
        if ty.is_dir() {
            if doc {
                skipped += 1;
                continue;
            }
            match existing {
                Some(id) if tree.node(id).is_dir() => {} // shared directory: first package wins
                Some(_) => return Err(tree_err(TreeError::Exists { path: show(&path) })),
                None => {
                    tree.mkdir_p(&path, meta).map_err(tree_err)?;
                }
            }
            continue;
        }
        let kind = if ty.is_file() || ty == tar::EntryType::Continuous {
            NodeKind::File(FileData::Range {
                path: tar_ref.to_path_buf(),
                offset: e.raw_file_position(),
                len: e.size(),
            })
        } else if ty.is_symlink() {
            let target = e
                .link_name_bytes()
                .ok_or_else(|| hostile(&raw, "symlink without target".into()))?;
            if target.is_empty() || target.contains(&0) {
                return Err(hostile(&raw, "empty or NUL symlink target".into()));
            }
            NodeKind::Symlink(target.into_owned())
        } else if ty.is_hard_link() {
            let target_raw = e
                .link_name_bytes()
                .ok_or_else(|| hostile(&raw, "hard link without target".into()))?
                .into_owned();
            let mut target = normalize_entry(&target_raw)
                .map_err(|r| hostile(&raw, format!("hard link target: {r}")))?
                .ok_or_else(|| hostile(&raw, "hard link to the root".into()))?;
            if opts.merge_usr {
                target = merge_usr(target);
            }
            check_parents(tree, &target)
                .map_err(|r| hostile(&raw, format!("hard link target: {r}")))?;
            if doc {
                skipped += 1;
                continue;
            }
            if let Some((m, data)) = dropped.get(&target) {
                // The link's original was filtered out: this name gets the content itself.
                let (m, data) = (m.clone(), data.clone());
                add_node(tree, &path, m, NodeKind::File(data), opts).map_err(tree_err)?;
            } else {
                if existing.is_some() {
                    if !opts.allow_replace {
                        return Err(tree_err(TreeError::Exists { path: show(&path) }));
                    }
                    tree.remove(&path).map_err(tree_err)?;
                }
                tree.add_hardlink(&path, &target).map_err(tree_err)?;
            }
            files.push(path);
            continue;
        } else if ty.is_character_special() || ty.is_block_special() {
            let major = h.device_major().map_err(ioe)?.unwrap_or(0);
            let minor = h.device_minor().map_err(ioe)?.unwrap_or(0);
            if ty.is_character_special() {
                NodeKind::CharDev { major, minor }
            } else {
                NodeKind::BlockDev { major, minor }
            }
        } else if ty.is_fifo() {
            NodeKind::Fifo
        } else {
            return Err(hostile(&raw, format!("unsupported tar entry type {ty:?}")));
        };
        if doc {
            skipped += 1;
            if let NodeKind::File(d) = kind {
                dropped.insert(path, (meta, d));
            }
            continue;
        }
        if let Some(id) = existing {
            if tree.node(id).is_dir() {
                return Err(tree_err(TreeError::Exists { path: show(&path) }));
            }
        }
        add_node(tree, &path, meta, kind, opts).map_err(tree_err)?;
        files.push(path);
    }
    Ok((files, skipped))
}

fn add_node(
    tree: &mut Tree,
    path: &[u8],
    meta: Meta,
    kind: NodeKind,
    opts: &DebOptions,
) -> Result<(), TreeError> {
    if opts.allow_replace {
        tree.upsert(path, meta, kind)?;
    } else {
        tree.insert(path, meta, kind)?;
    }
    Ok(())
}

/// Every proper prefix of `path` that exists must be a directory; a symlink there means the
/// entry would be written wherever the link points.
fn check_parents(tree: &Tree, path: &[u8]) -> Result<(), String> {
    let mut end = 0;
    while let Some(i) = path[end..].iter().position(|b| *b == b'/') {
        let prefix = &path[..end + i];
        match tree.lookup(prefix) {
            None => return Ok(()), // created below as a plain directory
            Some(id) => match &tree.node(id).kind {
                NodeKind::Dir(_) => {}
                NodeKind::Symlink(t) => {
                    return Err(format!(
                        "path goes through symlink /{} -> {}",
                        show(prefix),
                        show(t)
                    ))
                }
                _ => return Err(format!("parent /{} is not a directory", show(prefix))),
            },
        }
        end += i + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(normalize_entry(b"./").unwrap(), None);
        assert_eq!(
            normalize_entry(b"./usr//bin/./x").unwrap().as_deref(),
            Some(&b"usr/bin/x"[..])
        );
        assert!(normalize_entry(b"./../x").is_err());
        assert!(normalize_entry(b"usr/../../x").is_err());
        assert!(normalize_entry(b"/etc/x").is_err());
        assert!(normalize_entry(b".//etc/x").is_err());
        assert_eq!(merge_usr(b"lib/modules".to_vec()), b"usr/lib/modules");
        assert_eq!(merge_usr(b"libexec/x".to_vec()), b"libexec/x");
        assert!(is_doc(b"usr/share/doc/x/copyright"));
        assert!(!is_doc(b"usr/share/docs"));
    }
}
