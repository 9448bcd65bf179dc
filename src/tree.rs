//! The in-memory filesystem that every source fills and every writer reads.
//!
//! Inodes live in an arena; a directory maps names (raw bytes) to inode ids in a `BTreeMap`, so every
//! walk is in byte order of names, whatever order entries were added or a host directory listed
//! them. A hard link is simply a second directory entry naming the same inode id. File content is
//! described, not loaded: bytes in memory, a host file, or a byte range of a cached archive, so the
//! writers stream large files.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of an inode in the tree's arena. The root directory is always `InodeId::ROOT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub usize);

impl InodeId {
    pub const ROOT: InodeId = InodeId(0);
}

/// Longest name a directory entry may have (ext4 and the kernel's NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Permission bits (including setuid/setgid/sticky), owner and time of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The low 12 bits of st_mode (07777); the file type comes from the inode kind.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; builds set it from SOURCE_DATE_EPOCH.
    pub mtime: i64,
    /// Extended attributes, full names such as `security.capability`.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    pub fn new(perm: u16, uid: u32, gid: u32, mtime: i64) -> Meta {
        Meta {
            perm: perm & 0o7777,
            uid,
            gid,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }

    /// root:root with the given permissions.
    pub fn root(perm: u16, mtime: i64) -> Meta {
        Meta::new(perm, 0, 0, mtime)
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    Bytes(Arc<[u8]>),
    /// A whole host file of the given length (the length is fixed when added so a file that changes
    /// afterwards is detected by the writer instead of silently producing a different image).
    Host {
        path: PathBuf,
        len: u64,
    },
    /// `len` bytes at `offset` in a host file (e.g. a member of a decompressed, cached tar).
    Range {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl FileData {
    pub fn len(&self) -> u64 {
        match self {
            FileData::Bytes(b) => b.len() as u64,
            FileData::Host { len, .. } | FileData::Range { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> FileData {
        FileData::Bytes(Arc::from(bytes.into().into_boxed_slice()))
    }

    /// Opens the content as a reader of exactly `len()` bytes.
    pub fn open(&self) -> std::io::Result<Box<dyn std::io::Read + Send + '_>> {
        use std::io::{Read, Seek, SeekFrom};
        match self {
            FileData::Bytes(b) => Ok(Box::new(&b[..])),
            FileData::Host { path, len } => {
                let f = std::fs::File::open(path)?;
                let actual = f.metadata()?.len();
                if actual != *len {
                    return Err(std::io::Error::other(format!(
                        "{} changed size while building ({} bytes, expected {})",
                        path.display(),
                        actual,
                        len
                    )));
                }
                Ok(Box::new(f.take(*len)))
            }
            FileData::Range { path, offset, len } => {
                let mut f = std::fs::File::open(path)?;
                f.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(f.take(*len)))
            }
        }
    }

    /// Reads the whole content into memory (for small files such as configs).
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() as usize);
        std::io::copy(&mut self.open()?, &mut out)?;
        if out.len() as u64 != self.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file content shorter than recorded",
            ));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InodeKind {
    Dir(BTreeMap<Vec<u8>, InodeId>),
    File(FileData),
    Symlink(Vec<u8>),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub meta: Meta,
    pub kind: InodeKind,
}

impl Inode {
    /// The S_IFMT bits of this inode's kind.
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            InodeKind::Dir(_) => 0o040000,
            InodeKind::File(_) => 0o100000,
            InodeKind::Symlink(_) => 0o120000,
            InodeKind::CharDev { .. } => 0o020000,
            InodeKind::BlockDev { .. } => 0o060000,
            InodeKind::Fifo => 0o010000,
            InodeKind::Socket => 0o140000,
        }
    }

    /// Full st_mode: type bits plus permissions.
    pub fn mode(&self) -> u32 {
        self.type_bits() | u32::from(self.meta.perm)
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, InodeKind::Dir(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: name component is longer than {NAME_MAX} bytes ({len} bytes)")]
    NameTooLong { path: String, len: usize },
    #[error("{path}: invalid path component")]
    BadName { path: String },
    #[error("{path}: already exists")]
    Exists { path: String },
    #[error("{path}: parent is not a directory")]
    NotDir { path: String },
    #[error("{path}: no such entry")]
    NotFound { path: String },
    #[error("{path}: cannot hard-link a directory")]
    HardLinkDir { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type")]
    Unsupported { path: String },
}

/// How `Tree::from_host_dir` sets ownership.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostImport {
    /// Replace every uid/gid (for trees prepared by an unprivileged user).
    pub owner: Option<(u32, u32)>,
    /// Replace every mtime (SOURCE_DATE_EPOCH); `None` keeps the host's.
    pub mtime: Option<i64>,
}

/// The filesystem tree. Paths are `/`-separated byte strings relative to the root; a leading `/`
/// is accepted and ignored.
#[derive(Debug, Clone)]
pub struct Tree {
    inodes: Vec<Inode>,
    /// How many directory entries name each inode (hard links count twice).
    links: Vec<u32>,
}

fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        if c.is_empty() {
            continue;
        }
        if c == b"." || c == b".." || c.contains(&0) {
            return Err(TreeError::BadName {
                path: display(path),
            });
        }
        if c.len() > NAME_MAX {
            return Err(TreeError::NameTooLong {
                path: display(path),
                len: c.len(),
            });
        }
        out.push(c);
    }
    Ok(out)
}

impl Tree {
    pub fn new(root: Meta) -> Tree {
        Tree {
            inodes: vec![Inode {
                meta: root,
                kind: InodeKind::Dir(BTreeMap::new()),
            }],
            links: vec![1],
        }
    }

    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id.0]
    }

    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id.0]
    }

    /// Number of inodes in the tree, the root included.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.len() == 1
    }

    /// Directory entries naming this inode (the hard link count for non-directories).
    pub fn link_count(&self, id: InodeId) -> u32 {
        self.links[id.0]
    }

    /// Children of a directory in name order (empty for non-directories).
    pub fn children(&self, id: InodeId) -> impl Iterator<Item = (&[u8], InodeId)> {
        let map = match &self.inodes[id.0].kind {
            InodeKind::Dir(m) => Some(m),
            _ => None,
        };
        map.into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), *v)))
    }

    pub fn lookup(&self, path: impl AsRef<[u8]>) -> Option<InodeId> {
        let mut cur = InodeId::ROOT;
        for c in components(path.as_ref()).ok()? {
            match &self.inodes[cur.0].kind {
                InodeKind::Dir(m) => cur = *m.get(c)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    fn push(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        self.links.push(0);
        InodeId(self.inodes.len() - 1)
    }

    /// Finds the parent directory of `path`, creating missing directories with `dir_meta`.
    fn parent_for<'p>(
        &mut self,
        path: &'p [u8],
        dir_meta: Option<&Meta>,
    ) -> Result<(InodeId, &'p [u8]), TreeError> {
        let comps = components(path)?;
        let (name, dirs) = comps.split_last().ok_or_else(|| TreeError::BadName {
            path: display(path),
        })?;
        let mut cur = InodeId::ROOT;
        for d in dirs {
            let next = match &self.inodes[cur.0].kind {
                InodeKind::Dir(m) => m.get(*d).copied(),
                _ => {
                    return Err(TreeError::NotDir {
                        path: display(path),
                    })
                }
            };
            cur = match next {
                Some(id) => {
                    if !self.inodes[id.0].is_dir() {
                        return Err(TreeError::NotDir {
                            path: display(path),
                        });
                    }
                    id
                }
                None => {
                    let meta = dir_meta.cloned().ok_or_else(|| TreeError::NotFound {
                        path: display(path),
                    })?;
                    self.link_new(cur, d, meta, InodeKind::Dir(BTreeMap::new()))?
                }
            };
        }
        Ok((cur, name))
    }

    fn link_new(
        &mut self,
        parent: InodeId,
        name: &[u8],
        meta: Meta,
        kind: InodeKind,
    ) -> Result<InodeId, TreeError> {
        let id = self.push(Inode { meta, kind });
        self.link(parent, name, id)?;
        Ok(id)
    }

    fn link(&mut self, parent: InodeId, name: &[u8], id: InodeId) -> Result<(), TreeError> {
        let InodeKind::Dir(m) = &mut self.inodes[parent.0].kind else {
            return Err(TreeError::NotDir {
                path: display(name),
            });
        };
        if m.contains_key(name) {
            return Err(TreeError::Exists {
                path: display(name),
            });
        }
        m.insert(name.to_vec(), id);
        self.links[id.0] += 1;
        Ok(())
    }

    /// Adds an inode at `path`; missing parent directories are created as root:root 0755 with the
    /// inode's mtime. Fails if the path exists.
    pub fn insert(
        &mut self,
        path: impl AsRef<[u8]>,
        meta: Meta,
        kind: InodeKind,
    ) -> Result<InodeId, TreeError> {
        let path = path.as_ref();
        let parent_meta = Meta::root(0o755, meta.mtime);
        let (parent, name) = self.parent_for(path, Some(&parent_meta))?;
        self.link_new(parent, name, meta, kind)
            .map_err(|e| match e {
                TreeError::Exists { .. } => TreeError::Exists {
                    path: display(path),
                },
                other => other,
            })
    }

    /// Adds or replaces an inode at `path` (a directory that exists keeps its children and gets the
    /// new metadata). Used by overlays, which override files from packages.
    pub fn upsert(
        &mut self,
        path: impl AsRef<[u8]>,
        meta: Meta,
        kind: InodeKind,
    ) -> Result<InodeId, TreeError> {
        let path = path.as_ref();
        if let Some(id) = self.lookup(path) {
            if id == InodeId::ROOT
                || (self.inodes[id.0].is_dir() && matches!(kind, InodeKind::Dir(_)))
            {
                self.inodes[id.0].meta = meta;
                return Ok(id);
            }
            self.remove(path)?;
        }
        self.insert(path, meta, kind)
    }

    /// Removes the entry at `path` (a directory with everything below it).
    pub fn remove(&mut self, path: impl AsRef<[u8]>) -> Result<(), TreeError> {
        let path = path.as_ref();
        let (parent, name) = self.parent_for(path, None)?;
        let InodeKind::Dir(m) = &mut self.inodes[parent.0].kind else {
            return Err(TreeError::NotDir {
                path: display(path),
            });
        };
        let id = m.remove(name).ok_or_else(|| TreeError::NotFound {
            path: display(path),
        })?;
        self.unlink_rec(id);
        Ok(())
    }

    fn unlink_rec(&mut self, id: InodeId) {
        self.links[id.0] -= 1;
        if self.links[id.0] == 0 {
            if let InodeKind::Dir(m) =
                std::mem::replace(&mut self.inodes[id.0].kind, InodeKind::Fifo)
            {
                for child in m.into_values() {
                    self.unlink_rec(child);
                }
            }
        }
    }

    /// Creates a directory and any missing parents; an existing directory is left as it is.
    pub fn mkdir_p(&mut self, path: impl AsRef<[u8]>, meta: Meta) -> Result<InodeId, TreeError> {
        let path = path.as_ref();
        if let Some(id) = self.lookup(path) {
            return if self.inodes[id.0].is_dir() {
                Ok(id)
            } else {
                Err(TreeError::NotDir {
                    path: display(path),
                })
            };
        }
        let (parent, name) = self.parent_for(path, Some(&meta))?;
        self.link_new(parent, name, meta, InodeKind::Dir(BTreeMap::new()))
    }

    pub fn add_file(
        &mut self,
        path: impl AsRef<[u8]>,
        meta: Meta,
        data: FileData,
    ) -> Result<InodeId, TreeError> {
        self.insert(path, meta, InodeKind::File(data))
    }

    pub fn add_symlink(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
        meta: Meta,
    ) -> Result<InodeId, TreeError> {
        self.insert(path, meta, InodeKind::Symlink(target.as_ref().to_vec()))
    }

    /// Adds a second name for the non-directory inode at `existing`.
    pub fn add_hardlink(
        &mut self,
        path: impl AsRef<[u8]>,
        existing: impl AsRef<[u8]>,
    ) -> Result<InodeId, TreeError> {
        let existing = existing.as_ref();
        let id = self.lookup(existing).ok_or_else(|| TreeError::NotFound {
            path: display(existing),
        })?;
        if self.inodes[id.0].is_dir() {
            return Err(TreeError::HardLinkDir {
                path: display(existing),
            });
        }
        let path = path.as_ref();
        let parent_meta = Meta::root(0o755, self.inodes[id.0].meta.mtime);
        let (parent, name) = self.parent_for(path, Some(&parent_meta))?;
        self.link(parent, name, id).map_err(|_| TreeError::Exists {
            path: display(path),
        })?;
        Ok(id)
    }

    /// Depth-first walk in name order, directories before their contents. Yields every directory
    /// entry (hard links appear once per name) with its full path; the root is yielded first with
    /// an empty path.
    pub fn walk(&self) -> Vec<(Vec<u8>, InodeId)> {
        let mut out = vec![(Vec::new(), InodeId::ROOT)];
        let mut stack: Vec<(Vec<u8>, InodeId)> = Vec::new();
        let push_children = |stack: &mut Vec<(Vec<u8>, InodeId)>, prefix: &[u8], id: InodeId| {
            let kids: Vec<_> = self.children(id).collect();
            for (name, child) in kids.into_iter().rev() {
                let mut p = prefix.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                stack.push((p, child));
            }
        };
        push_children(&mut stack, &[], InodeId::ROOT);
        while let Some((path, id)) = stack.pop() {
            if self.inodes[id.0].is_dir() {
                push_children(&mut stack, &path, id);
            }
            out.push((path, id));
        }
        out
    }

    /// Total bytes of regular file content (each inode once).
    pub fn content_bytes(&self) -> u64 {
        self.inodes
            .iter()
            .zip(&self.links)
            .filter(|(_, l)| **l > 0)
            .map(|(n, _)| match &n.kind {
                InodeKind::File(d) => d.len(),
                _ => 0,
            })
            .sum()
    }

    /// Inode ids still reachable from the root, in arena order (removed inodes are skipped).
    pub fn live_inodes(&self) -> impl Iterator<Item = InodeId> + '_ {
        (0..self.inodes.len())
            .filter(|i| self.links[*i] > 0)
            .map(InodeId)
    }

    /// Builds a tree from a host directory (like `mke2fs -d`): contents are referenced, not copied;
    /// hard links are kept (same device and inode); sockets are skipped.
    pub fn from_host_dir(dir: &Path, opts: HostImport) -> Result<Tree, TreeError> {
        let io = |p: &Path, e: std::io::Error| TreeError::Io {
            path: p.display().to_string(),
            source: e,
        };
        let md = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
        if !md.is_dir() {
            return Err(TreeError::NotDir {
                path: dir.display().to_string(),
            });
        }
        let meta_of = |md: &std::fs::Metadata| {
            let (uid, gid) = opts.owner.unwrap_or((md.uid(), md.gid()));
            Meta::new(
                (md.mode() & 0o7777) as u16,
                uid,
                gid,
                opts.mtime.unwrap_or(md.mtime()),
            )
        };
        let mut tree = Tree::new(meta_of(&md));
        let mut seen: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(dir.to_path_buf(), Vec::new())];
        while let Some((host, rel)) = stack.pop() {
            let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&host)
                .map_err(|e| io(&host, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| io(&host, e))?;
            names.sort();
            for name in names {
                let hp = host.join(&name);
                let mut rp = rel.clone();
                if !rp.is_empty() {
                    rp.push(b'/');
                }
                rp.extend_from_slice(name.as_bytes());
                let md = std::fs::symlink_metadata(&hp).map_err(|e| io(&hp, e))?;
                let ft = md.file_type();
                let meta = meta_of(&md);
                if !ft.is_dir() && md.nlink() > 1 {
                    if let Some(first) = seen.get(&(md.dev(), md.ino())) {
                        tree.add_hardlink(&rp, first.clone())?;
                        continue;
                    }
                    seen.insert((md.dev(), md.ino()), rp.clone());
                }
                let kind = if ft.is_dir() {
                    stack.push((hp.clone(), rp.clone()));
                    InodeKind::Dir(BTreeMap::new())
                } else if ft.is_file() {
                    InodeKind::File(FileData::Host {
                        path: hp.clone(),
                        len: md.len(),
                    })
                } else if ft.is_symlink() {
                    let t = std::fs::read_link(&hp).map_err(|e| io(&hp, e))?;
                    InodeKind::Symlink(t.as_os_str().as_bytes().to_vec())
                } else if ft.is_char_device() || ft.is_block_device() {
                    let rdev = md.rdev();
                    let (major, minor) = (dev_major(rdev), dev_minor(rdev));
                    if ft.is_char_device() {
                        InodeKind::CharDev { major, minor }
                    } else {
                        InodeKind::BlockDev { major, minor }
                    }
                } else if ft.is_fifo() {
                    InodeKind::Fifo
                } else {
                    continue;
                };
                tree.insert(&rp, meta, kind)?;
            }
        }
        Ok(tree)
    }
}

/// glibc's gnu_dev_major/minor encoding of a 64-bit dev_t.
pub fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32
}

pub fn dev_minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Meta {
        Meta::root(0o644, 0)
    }

    #[test]
    fn walk_is_sorted_regardless_of_insertion_order() {
        let mut a = Tree::new(Meta::root(0o755, 0));
        let mut b = Tree::new(Meta::root(0o755, 0));
        let paths = ["z/b", "a", "z/a", "m/x/y", "b-c", "b/c"];
        for p in paths {
            a.add_file(p, m(), FileData::from_bytes(p.as_bytes()))
                .unwrap();
        }
        for p in paths.iter().rev() {
            b.add_file(p, m(), FileData::from_bytes(p.as_bytes()))
                .unwrap();
        }
        let wa: Vec<_> = a.walk().into_iter().map(|(p, _)| p).collect();
        let wb: Vec<_> = b.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(wa, wb);
        let names: Vec<String> = wa.iter().map(|p| display(p)).collect();
        assert_eq!(
            names,
            ["", "a", "b", "b/c", "b-c", "m", "m/x", "m/x/y", "z", "z/a", "z/b"]
        );
    }

    #[test]
    fn hard_links_share_a_node() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let id = t.add_file("d1/f", m(), FileData::from_bytes("x")).unwrap();
        assert_eq!(t.add_hardlink("d2/g", "d1/f").unwrap(), id);
        assert_eq!(t.link_count(id), 2);
        t.remove("d1").unwrap();
        assert_eq!(t.link_count(id), 1);
        assert_eq!(t.lookup("d2/g"), Some(id));
    }

    #[test]
    fn rejects_bad_names() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let long = "x".repeat(256);
        assert!(matches!(
            t.add_file(&long, m(), FileData::from_bytes("")),
            Err(TreeError::NameTooLong { len: 256, .. })
        ));
        assert!(t.add_file("a/../b", m(), FileData::from_bytes("")).is_err());
        t.add_file("f", m(), FileData::from_bytes("")).unwrap();
        assert!(matches!(
            t.add_file("f", m(), FileData::from_bytes("")),
            Err(TreeError::Exists { .. })
        ));
        assert!(matches!(
            t.add_file("f/g", m(), FileData::from_bytes("")),
            Err(TreeError::NotDir { .. })
        ));
    }
}
