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

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::cache::{io_err, sha256_of_path, Cache, CacheError};
use crate::tree::{FileData, InodeId, InodeKind, Meta, Tree, TreeError};

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
    let file = std::fs::File::open(deb).map_err(io_err(deb))?;
    let mut ar = ar::Archive::new(file);
    let mut m = Members {
        control: None,
        data_tmp: None,
        data_seen: false,
    };
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(io_error(label))?;
        let id = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if first {
            check_debian_binary(&mut entry, &id, label)?;
            first = false;
        } else if id.starts_with("control.tar") {
            if let Some(control) = read_control(&mut entry, &id, label)? {
                m.control = Some(control);
            }
        } else if id.starts_with("data.tar") {
            m.data_seen = true;
            // A kept tar is used only when its size and sha256 still match what was recorded
            // when it was made; otherwise it is made again from the .deb.
            if cache.data_tar_ok(deb_sha) {
                continue;
            }
            m.data_tmp = Some(unpack_data(&mut entry, &id, cache, final_tar, label)?);
        }
    }
    if first {
        return Err(format_error(label, "empty ar archive".into()));
    }
    if !m.data_seen {
        return Err(format_error(label, "no data.tar member".into()));
    }
    Ok(m)
}

fn io_error(package: &str) -> impl Fn(std::io::Error) -> DebError + '_ {
    move |source| DebError::Io {
        package: package.to_string(),
        source,
    }
}

fn format_error(package: &str, reason: String) -> DebError {
    DebError::Format {
        package: package.to_string(),
        reason,
    }
}

/// The first member must be `debian-binary` saying format 2.x.
fn check_debian_binary(member: &mut impl Read, id: &str, label: &str) -> Result<(), DebError> {
    let mut v = String::new();
    member
        .take(64)
        .read_to_string(&mut v)
        .map_err(io_error(label))?;
    if id != "debian-binary" || !v.starts_with("2.") {
        return Err(format_error(
            label,
            format!(
                "first member is {id:?} ({:?}), want debian-binary 2.x",
                v.trim()
            ),
        ));
    }
    Ok(())
}

/// The `control` file of a control.tar member, if it has one.
fn read_control(member: &mut impl Read, id: &str, label: &str) -> Result<Option<String>, DebError> {
    let ioe = io_error(label);
    let dec = decoder(id, Box::new(member)).map_err(|r| format_error(label, r))?;
    let mut t = tar::Archive::new(dec.take(CONTROL_MAX));
    let mut control = None;
    for e in t.entries().map_err(&ioe)? {
        let mut e = e.map_err(&ioe)?;
        if normalize_entry(&e.path_bytes()).ok().flatten().as_deref() == Some(b"control") {
            let mut s = String::new();
            e.read_to_string(&mut s).map_err(&ioe)?;
            control = Some(s);
        }
    }
    Ok(control)
}

/// Decompresses a data.tar member into a temporary file next to its final place in the cache;
/// returns it with its sha256 and size.
fn unpack_data(
    member: &mut impl Read,
    id: &str,
    cache: &Cache,
    final_tar: &Path,
    label: &str,
) -> Result<(tempfile::NamedTempFile, String, u64), DebError> {
    let dir = final_tar.parent().unwrap_or(cache.root());
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let mut dec = decoder(id, Box::new(member)).map_err(|r| format_error(label, r))?;
    let (sha, size) =
        super::cache::copy_hashing(&mut dec, tmp.as_file_mut(), &crate::report::Silent)
            .map_err(io_error(label))?;
    Ok((tmp, sha, size))
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
    let ioe = io_error(package);
    let file = std::fs::File::open(tar_now).map_err(io_err(tar_now))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut apply = Apply {
        tree,
        tar_ref,
        package,
        opts,
        files: Vec::new(),
        skipped: 0,
        dropped: Default::default(),
    };
    for e in archive.entries().map_err(&ioe)? {
        apply.entry(&e.map_err(&ioe)?)?;
    }
    Ok((apply.files, apply.skipped))
}

/// One data tar being applied: where it goes and what it has contributed so far.
struct Apply<'a> {
    tree: &'a mut Tree,
    tar_ref: &'a Path,
    package: &'a str,
    opts: &'a DebOptions,
    /// Paths of the non-directory entries added, in archive order.
    files: Vec<Vec<u8>>,
    /// Entries dropped by the documentation filter.
    skipped: usize,
    /// Regular files dropped by the filter, so a hard link to one elsewhere still gets content.
    dropped: BTreeMap<Vec<u8>, (Meta, FileData)>,
}

/// Where one tar entry lands.
struct Dest {
    /// The entry's name as the tar has it (for messages).
    raw: Vec<u8>,
    /// Normalised, and moved under usr/ when merging.
    path: Vec<u8>,
    /// What the tree already has there.
    existing: Option<InodeId>,
    /// Dropped by the documentation filter.
    doc: bool,
}

impl Apply<'_> {
    /// One entry: where it lands and its metadata, then the step for its type.
    fn entry(&mut self, e: &tar::Entry<'_, impl Read>) -> Result<(), DebError> {
        let raw = e.path_bytes().into_owned();
        let h = e.header();
        let ty = h.entry_type();
        let norm = normalize_entry(&raw).map_err(|r| self.hostile(&raw, r.to_string()))?;
        let Some(mut path) = norm else {
            return Ok(()); // "./" itself: the root's metadata is the image's, not a package's
        };
        if self.opts.merge_usr {
            path = merge_usr(path);
        }
        let meta = self.meta_of(h)?;
        check_parents(self.tree, &path).map_err(|r| self.hostile(&raw, r))?;
        let existing = self.tree.lookup(&path);
        if let Some(id) = existing {
            if matches!(self.tree.inode(id).kind, InodeKind::Symlink(_)) && ty.is_dir() {
                return Err(self.hostile(
                    &raw,
                    format!("directory would replace symlink /{}", show(&path)),
                ));
            }
        }
        let doc = !self.opts.keep_docs && is_doc(&path);
        let dest = Dest {
            raw,
            path,
            existing,
            doc,
        };
        if ty.is_dir() {
            self.mkdir(dest, meta)
        } else if ty.is_hard_link() {
            self.link(e, dest)
        } else {
            let kind = self.node_kind(e, &dest.raw)?;
            self.add(dest, meta, kind)
        }
    }

    /// Owner, mode and (clamped) mtime from the tar header.
    fn meta_of(&self, h: &tar::Header) -> Result<Meta, DebError> {
        let ioe = io_error(self.package);
        let mut mtime = h.mtime().map_err(&ioe)? as i64;
        if let Some(c) = self.opts.clamp_mtime {
            mtime = mtime.min(c);
        }
        Ok(Meta::new(
            (h.mode().map_err(&ioe)? & 0o7777) as u16,
            h.uid().map_err(&ioe)? as u32,
            h.gid().map_err(&ioe)? as u32,
            mtime,
        ))
    }

    /// A directory: made unless one is there (a shared directory: the first package wins).
    fn mkdir(&mut self, d: Dest, meta: Meta) -> Result<(), DebError> {
        if d.doc {
            self.skipped += 1;
            return Ok(());
        }
        match d.existing {
            Some(id) if self.tree.inode(id).is_dir() => {}
            Some(_) => {
                return Err(self.tree_err(
                    &d.raw,
                    TreeError::Exists {
                        path: show(&d.path),
                    },
                ))
            }
            None => {
                self.tree
                    .mkdir_p(&d.path, meta)
                    .map_err(|s| self.tree_err(&d.raw, s))?;
            }
        }
        Ok(())
    }

    /// What a file, symlink, device or fifo entry becomes; other types are refused.
    fn node_kind(&self, e: &tar::Entry<'_, impl Read>, raw: &[u8]) -> Result<InodeKind, DebError> {
        let h = e.header();
        let ty = h.entry_type();
        Ok(if ty.is_file() || ty == tar::EntryType::Continuous {
            InodeKind::File(FileData::Range {
                path: self.tar_ref.to_path_buf(),
                offset: e.raw_file_position(),
                len: e.size(),
            })
        } else if ty.is_symlink() {
            let target = e
                .link_name_bytes()
                .ok_or_else(|| self.hostile(raw, "symlink without target".into()))?;
            if target.is_empty() || target.contains(&0) {
                return Err(self.hostile(raw, "empty or NUL symlink target".into()));
            }
            InodeKind::Symlink(target.into_owned())
        } else if ty.is_character_special() || ty.is_block_special() {
            let ioe = io_error(self.package);
            let major = h.device_major().map_err(&ioe)?.unwrap_or(0);
            let minor = h.device_minor().map_err(&ioe)?.unwrap_or(0);
            if ty.is_character_special() {
                InodeKind::CharDev { major, minor }
            } else {
                InodeKind::BlockDev { major, minor }
            }
        } else if ty.is_fifo() {
            InodeKind::Fifo
        } else {
            return Err(self.hostile(raw, format!("unsupported tar entry type {ty:?}")));
        })
    }

    /// A hard link: to its target, or a copy of the target's content when the filter dropped
    /// the target.
    fn link(&mut self, e: &tar::Entry<'_, impl Read>, d: Dest) -> Result<(), DebError> {
        let raw = &d.raw;
        let target_raw = e
            .link_name_bytes()
            .ok_or_else(|| self.hostile(raw, "hard link without target".into()))?
            .into_owned();
        let mut target = normalize_entry(&target_raw)
            .map_err(|r| self.hostile(raw, format!("hard link target: {r}")))?
            .ok_or_else(|| self.hostile(raw, "hard link to the root".into()))?;
        if self.opts.merge_usr {
            target = merge_usr(target);
        }
        check_parents(self.tree, &target)
            .map_err(|r| self.hostile(raw, format!("hard link target: {r}")))?;
        if d.doc {
            self.skipped += 1;
            return Ok(());
        }
        if let Some((m, data)) = self.dropped.get(&target) {
            let kind = InodeKind::File(data.clone());
            add_node(self.tree, &d.path, m.clone(), kind, self.opts)
                .map_err(|s| self.tree_err(raw, s))?;
        } else {
            if d.existing.is_some() {
                if !self.opts.allow_replace {
                    return Err(self.tree_err(
                        raw,
                        TreeError::Exists {
                            path: show(&d.path),
                        },
                    ));
                }
                self.tree
                    .remove(&d.path)
                    .map_err(|s| self.tree_err(raw, s))?;
            }
            self.tree
                .add_hardlink(&d.path, &target)
                .map_err(|s| self.tree_err(raw, s))?;
        }
        self.files.push(d.path);
        Ok(())
    }

    /// A file, symlink, device or fifo; a filtered-out file is remembered for hard links to it.
    fn add(&mut self, d: Dest, meta: Meta, kind: InodeKind) -> Result<(), DebError> {
        if d.doc {
            self.skipped += 1;
            if let InodeKind::File(data) = kind {
                self.dropped.insert(d.path, (meta, data));
            }
            return Ok(());
        }
        if let Some(id) = d.existing {
            if self.tree.inode(id).is_dir() {
                return Err(self.tree_err(
                    &d.raw,
                    TreeError::Exists {
                        path: show(&d.path),
                    },
                ));
            }
        }
        add_node(self.tree, &d.path, meta, kind, self.opts)
            .map_err(|s| self.tree_err(&d.raw, s))?;
        self.files.push(d.path);
        Ok(())
    }

    fn hostile(&self, entry: &[u8], reason: String) -> DebError {
        DebError::Hostile {
            package: self.package.to_string(),
            entry: show(entry),
            reason,
        }
    }

    fn tree_err(&self, entry: &[u8], source: TreeError) -> DebError {
        DebError::Tree {
            package: self.package.to_string(),
            entry: show(entry),
            source,
        }
    }
}

fn add_node(
    tree: &mut Tree,
    path: &[u8],
    meta: Meta,
    kind: InodeKind,
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
            Some(id) => match &tree.inode(id).kind {
                InodeKind::Dir(_) => {}
                InodeKind::Symlink(t) => {
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
