//! cpio "newc" archive writer for the initramfs, optionally gzip- or zstd-compressed (the kernel's
//! initramfs unpacker reads all three).
//!
//! Deterministic: entries in tree walk order (the root first, as "."), inode numbers assigned in
//! that order, mtimes from the tree, no host state. Hard links follow the newc convention: every
//! name carries the same inode number and link count, and only the last name carries the data
//! (the kernel and GNU cpio both link the earlier names and then fill the data in).
//! Extended attributes cannot be stored in newc and are left out.

use crate::tree::{FileData, InodeId, InodeKind, Tree};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// gzip with header mtime 0 and no file name; level 0-9.
    Gzip {
        level: u32,
    },
    /// zstd, single-threaded (deterministic); level 1-22.
    Zstd {
        level: i32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpioOptions {
    pub compression: Compression,
}

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// Counts bytes so padding can be computed on the uncompressed stream.
struct Counting<'w> {
    inner: &'w mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

fn pad4(w: &mut Counting<'_>) -> io::Result<()> {
    let pad = (4 - (w.n % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..pad])
}

fn entry(w: &mut Counting<'_>, h: &Header, name: &[u8]) -> io::Result<()> {
    let fields = [
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.filesize,
        0, // devmajor: the archive has no device
        0,
        h.rdevmajor,
        h.rdevminor,
        name.len() as u32 + 1,
        0, // check: unused by newc
    ];
    let mut s = String::with_capacity(110);
    s.push_str("070701");
    for f in fields {
        s.push_str(&format!("{f:08X}"));
    }
    w.write_all(s.as_bytes())?;
    w.write_all(name)?;
    w.write_all(&[0])?;
    pad4(w)
}

/// Writes the archive for `tree` to `out` and returns the uncompressed archive size.
pub fn write(tree: &Tree, opts: &CpioOptions, out: &mut dyn Write) -> Result<u64, CpioError> {
    let we = CpioError::Write;
    match opts.compression {
        Compression::None => write_newc(tree, out),
        Compression::Gzip { level } => {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(3)
                .write(out, flate2::Compression::new(level.min(9)));
            let n = write_newc(tree, &mut gz)?;
            gz.finish().map_err(we)?;
            Ok(n)
        }
        Compression::Zstd { level } => {
            let mut z = zstd::stream::Encoder::new(out, level).map_err(we)?;
            z.include_checksum(true).map_err(we)?;
            let n = write_newc(tree, &mut z)?;
            z.finish().map_err(we)?;
            Ok(n)
        }
    }
}

fn write_newc(tree: &Tree, out: &mut dyn Write) -> Result<u64, CpioError> {
    let mut a = Newc {
        tree,
        w: Counting { inner: out, n: 0 },
        ino_of: BTreeMap::new(),
        seen: BTreeMap::new(),
    };
    for (path, id) in &tree.walk() {
        a.add(path, *id)?;
    }
    a.finish()
}

/// One archive being written: the output and the inode numbers handed out so far.
struct Newc<'t, 'w> {
    tree: &'t Tree,
    w: Counting<'w>,
    ino_of: BTreeMap<InodeId, u32>,
    /// Names of a hard-linked inode seen so far (the last one carries the data).
    seen: BTreeMap<InodeId, u32>,
}

impl Newc<'_, '_> {
    /// One entry: its header and name, then its data (symlink target or file content).
    fn add(&mut self, path: &[u8], id: InodeId) -> Result<(), CpioError> {
        let shown = || {
            if path.is_empty() {
                ".".to_string()
            } else {
                String::from_utf8_lossy(path).into_owned()
            }
        };
        let invalid = |why: String| CpioError::Invalid { path: shown(), why };
        let mut h = self.header(id).map_err(invalid)?;
        let name: &[u8] = if path.is_empty() { b"." } else { path };
        let inode = self.tree.inode(id);
        let mut body: Option<&[u8]> = None;
        let mut file = None;
        match &inode.kind {
            InodeKind::Dir(_) | InodeKind::Fifo | InodeKind::Socket => {}
            InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                h.rdevmajor = *major;
                h.rdevminor = *minor;
            }
            InodeKind::Symlink(t) => {
                h.filesize = t.len() as u32;
                body = Some(t);
            }
            InodeKind::File(data) => {
                if self.carries_data(id) {
                    h.filesize = u32::try_from(data.len()).map_err(|_| {
                        invalid(format!("{} bytes; newc stops at 4 GiB - 1", data.len()))
                    })?;
                    file = Some(data);
                }
            }
        }
        entry(&mut self.w, &h, name).map_err(CpioError::Write)?;
        if let Some(b) = body {
            self.w.write_all(b).map_err(CpioError::Write)?;
        }
        if let Some(data) = file {
            copy_file(data, &mut self.w, &shown())?;
        }
        pad4(&mut self.w).map_err(CpioError::Write)
    }

    /// The header fields every kind shares (the inode number is the first name's).
    fn header(&mut self, id: InodeId) -> Result<Header, String> {
        let tree = self.tree;
        let next = self.ino_of.len() as u32 + 1;
        let ino = *self.ino_of.entry(id).or_insert(next);
        let inode = tree.inode(id);
        let nlink = match &inode.kind {
            InodeKind::Dir(_) => {
                2 + tree
                    .children(id)
                    .filter(|(_, c)| tree.inode(*c).is_dir())
                    .count() as u32
            }
            _ => tree.link_count(id),
        };
        let mtime = u32::try_from(inode.meta.mtime.max(0))
            .map_err(|_| format!("mtime {} does not fit newc", inode.meta.mtime))?;
        Ok(Header {
            ino,
            mode: inode.mode(),
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            nlink,
            mtime,
            filesize: 0,
            rdevmajor: 0,
            rdevminor: 0,
        })
    }

    /// Whether this name of a file is its last one, the one that carries the content.
    fn carries_data(&mut self, id: InodeId) -> bool {
        let count = self.seen.entry(id).or_insert(0);
        *count += 1;
        *count == self.tree.link_count(id)
    }

    /// The trailer entry; returns the archive's size.
    fn finish(mut self) -> Result<u64, CpioError> {
        let trailer = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rdevmajor: 0,
            rdevminor: 0,
        };
        entry(&mut self.w, &trailer, b"TRAILER!!!").map_err(CpioError::Write)?;
        self.w.flush().map_err(CpioError::Write)?;
        Ok(self.w.n)
    }
}

/// Copies a file's content, which must still be as long as it was when measured.
fn copy_file(data: &FileData, w: &mut Counting<'_>, shown: &str) -> Result<(), CpioError> {
    let rd = |e| CpioError::Read {
        path: shown.to_string(),
        source: e,
    };
    let r = data.open().map_err(rd)?;
    let copied = copy_exact(r, w).map_err(|e| match e {
        CopyError::Read(e) => rd(e),
        CopyError::Write(e) => CpioError::Write(e),
    })?;
    if copied != data.len() {
        return Err(rd(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "content is {copied} bytes, expected {} (changed while building?)",
                data.len()
            ),
        )));
    }
    Ok(())
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_exact(mut r: impl Read, w: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;

    #[test]
    fn layout_of_a_tiny_archive() {
        let mut t = Tree::new(Meta::root(0o755, 5));
        t.add_file("a", Meta::root(0o644, 7), FileData::from_bytes("hi"))
            .unwrap();
        let mut out = Vec::new();
        let opts = CpioOptions {
            compression: Compression::None,
        };
        let n = write(&t, &opts, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // root: ino 1, dir mode, nlink 2, mtime 5, name "."
        let h = std::str::from_utf8(&out[6..110]).unwrap();
        assert_eq!(&h[0..8], "00000001");
        assert_eq!(&h[8..16], "000041ED");
        assert_eq!(&h[32..40], "00000002");
        assert_eq!(&h[40..48], "00000005");
        assert_eq!(&out[110..112], b".\0");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
