//! squashfs writer for the netbooted root: a node fetches the image over HTTP into RAM and mounts
//! it read-only, so the image is what stays resident, and its size is RAM the node does not get.
//!
//! The on-disk format is backhand's (`FilesystemWriter`); this file maps a [`Tree`] onto it and
//! pins everything that would otherwise vary: nodes go in in tree walk order (byte order of
//! names, which is backhand's order too), the id table in order of first use, the superblock time
//! is `opts.epoch`, file data is read lazily (one source file open at a time), duplicate files are
//! stored once, and the image is padded to 4 KiB like mksquashfs.
//!
//! What backhand cannot express, and how this writer deals with it:
//! - hard links: each further name of an inode becomes its own inode (link count 1). Its data is
//!   shared through duplicate detection when the file has a full block; smaller files are stored
//!   again in a fragment. Counted in [`SquashReport::hard_links_split`].
//! - extended attributes: refused (no source of a node's root sets any today, and a silently
//!   dropped `security.capability` would break a binary at run time).
//! - the root directory's mtime: backhand has no setter for it, so it is 0.
//! - symlink targets longer than 255 bytes: backhand panics on them, so they are refused first.

use crate::tree::{FileData, InodeId, InodeKind, Tree};
use backhand::compression::{CompressionOptions, Compressor, Zstd};
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Compressor, level and block size for a netbooted Pi 3 (Cortex-A53 at 1.2 GHz, 1 GiB RAM,
/// image held in RAM for the node's whole life).
///
/// zstd: on an A53 it decompresses about five times faster than xz and three times faster than
/// zlib, for a size within a few percent of xz at high levels (see the figures in
/// tests/squashfs.rs); the compression level costs build time only, not the node's decompression
/// speed or memory. 128 KiB blocks (mksquashfs's default): the kernel keeps a decompressor
/// workspace of about one block per CPU (Debian's kernel decompresses per CPU) plus a read cache
/// of one block and a fragment cache of three, and reading any 4 KiB of a file decompresses its
/// whole block, so 1 MiB blocks would cost ~8 MiB of kernel memory and slower cold reads for a
/// few percent of image size.
pub const PI_ZSTD_LEVEL: u32 = 19;
pub const PI_BLOCK_SIZE: u32 = 128 * 1024;

const NO_XATTRS: &str = "has extended attributes, which this squashfs writer cannot store";

/// Longest symlink target backhand writes (it asserts `target_size < 256`).
const MAX_SYMLINK: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashOptions {
    /// Superblock creation time, seconds since the epoch (SOURCE_DATE_EPOCH).
    pub epoch: i64,
    /// zstd level, 1-22.
    pub zstd_level: u32,
    /// Data block size: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
}

impl SquashOptions {
    /// The settings for a netbooted Pi (see [`PI_ZSTD_LEVEL`]).
    pub fn pi(epoch: i64) -> SquashOptions {
        SquashOptions {
            epoch,
            zstd_level: PI_ZSTD_LEVEL,
            block_size: PI_BLOCK_SIZE,
        }
    }
}

/// What [`write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashReport {
    /// Length of the image, padding included (the file is truncated to it).
    pub bytes: u64,
    /// Inodes in the image (one per name of a hard-linked file).
    pub inodes: u32,
    /// Bytes of regular file content in the tree, each inode once.
    pub content_bytes: u64,
    /// Names that were hard links in the tree and are separate inodes in the image.
    pub hard_links_split: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
    #[error("invalid squashfs options: {0}")]
    Options(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the squashfs image: {0}")]
    Write(#[source] io::Error),
    #[error("writing the squashfs image: {0}")]
    Backhand(#[source] BackhandError),
}

/// Writes the image for `tree` into `out` from its start and truncates `out` to the image's
/// length. Same tree and options, same bytes.
pub fn write(tree: &Tree, out: &File, opts: &SquashOptions) -> Result<SquashReport, SquashError> {
    let mut fs = FilesystemWriter::default();
    configure(&mut fs, opts)?;
    let root = tree.inode(InodeId::ROOT);
    fs.set_root_mode(root.meta.perm);
    fs.set_root_uid(root.meta.uid);
    fs.set_root_gid(root.meta.gid);
    check_root(tree)?;

    let failed: Rc<RefCell<Option<SquashError>>> = Rc::default();
    let mut seen = BTreeSet::new();
    let mut hard_links_split = 0;
    for (path, id) in tree.walk().into_iter().skip(1) {
        let inode = tree.inode(id);
        if !inode.is_dir() && !seen.insert(id) {
            hard_links_split += 1;
        }
        add(&mut fs, tree, &path, id, &failed)?;
    }

    let mut w = BufWriter::with_capacity(1 << 20, out);
    let written = fs.write(&mut w);
    // A source file that failed to read is the cause; backhand only saw an I/O error.
    if let Some(e) = failed.borrow_mut().take() {
        return Err(e);
    }
    let (superblock, bytes) = written.map_err(SquashError::Backhand)?;
    w.flush().map_err(SquashError::Write)?;
    drop(w);
    // backhand writes over a duplicate file's data instead of truncating, so bytes past the image
    // can be left behind.
    out.set_len(bytes).map_err(SquashError::Write)?;
    Ok(SquashReport {
        bytes,
        inodes: superblock.inode_count,
        content_bytes: tree.content_bytes(),
        hard_links_split,
    })
}

fn configure(
    fs: &mut FilesystemWriter<'_, '_, '_>,
    opts: &SquashOptions,
) -> Result<(), SquashError> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(backhand::MIN_BLOCK_SIZE..=backhand::MAX_BLOCK_SIZE).contains(&bs)
    {
        return Err(SquashError::Options(format!(
            "block size {bs} is not a power of two from 4 KiB to 1 MiB"
        )));
    }
    if !(1..=22).contains(&opts.zstd_level) {
        return Err(SquashError::Options(format!(
            "zstd level {} is not in 1-22",
            opts.zstd_level
        )));
    }
    let time = u32::try_from(opts.epoch).map_err(|_| {
        SquashError::Options(format!(
            "time {} does not fit squashfs (1970-2106)",
            opts.epoch
        ))
    })?;
    fs.set_block_size(bs);
    fs.set_time(time);
    fs.set_only_root_id();
    let compressor = FilesystemCompressor::new(
        Compressor::Zstd,
        Some(CompressionOptions::Zstd(Zstd {
            compression_level: opts.zstd_level,
        })),
    )
    .map_err(SquashError::Backhand)?;
    fs.set_compressor(compressor);
    Ok(())
}

/// The root directory is not handed to backhand like the others: its extended attributes are
/// checked here, and its owner, since backhand registers the ids of every node it is given but
/// not the root's own (an owner only the root has would fail deep in the write).
fn check_root(tree: &Tree) -> Result<(), SquashError> {
    let root = &tree.inode(InodeId::ROOT).meta;
    if !root.xattrs.is_empty() {
        return Err(SquashError::Invalid {
            path: "/".into(),
            why: NO_XATTRS.into(),
        });
    }
    let mut ids: BTreeSet<u32> = BTreeSet::from([0]);
    for id in tree.live_inodes().skip(1) {
        let m = &tree.inode(id).meta;
        ids.extend([m.uid, m.gid]);
    }
    for owner in [root.uid, root.gid] {
        if !ids.contains(&owner) {
            return Err(SquashError::Invalid {
                path: "/".into(),
                why: format!("owner id {owner} is used by the root directory only; backhand cannot record it"),
            });
        }
    }
    Ok(())
}

/// Hands one directory entry to backhand: its header, then the kind's own data.
fn add<'t>(
    fs: &mut FilesystemWriter<'_, '_, 't>,
    tree: &'t Tree,
    path: &[u8],
    id: InodeId,
    failed: &Rc<RefCell<Option<SquashError>>>,
) -> Result<(), SquashError> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    let invalid = |why: String| SquashError::Invalid { path: shown(), why };
    let inode = tree.inode(id);
    let m = &inode.meta;
    if !m.xattrs.is_empty() {
        return Err(invalid(NO_XATTRS.into()));
    }
    let mtime = u32::try_from(m.mtime).map_err(|_| {
        invalid(format!(
            "mtime {} does not fit squashfs (1970-2106)",
            m.mtime
        ))
    })?;
    let header = NodeHeader::new(m.perm, m.uid, m.gid, mtime);
    let at = Path::new(OsStr::from_bytes(path));
    let bh = |e: BackhandError| invalid(e.to_string());
    match &inode.kind {
        InodeKind::Dir(_) => fs.push_dir(at, header).map_err(bh),
        InodeKind::File(data) => {
            let reader = SourceFile::new(data, shown(), Rc::clone(failed));
            fs.push_file(reader, at, header).map_err(bh)
        }
        InodeKind::Symlink(target) => {
            if target.len() > MAX_SYMLINK {
                return Err(invalid(format!(
                    "symlink target of {} bytes; this squashfs writer stores at most {MAX_SYMLINK}",
                    target.len()
                )));
            }
            let target = PathBuf::from(OsStr::from_bytes(target));
            fs.push_symlink(target, at, header).map_err(bh)
        }
        InodeKind::CharDev { major, minor } => {
            let dev = encode_dev(*major, *minor).map_err(invalid)?;
            fs.push_char_device(dev, at, header).map_err(bh)
        }
        InodeKind::BlockDev { major, minor } => {
            let dev = encode_dev(*major, *minor).map_err(invalid)?;
            fs.push_block_device(dev, at, header).map_err(bh)
        }
        InodeKind::Fifo => fs.push_fifo(at, header).map_err(bh),
        InodeKind::Socket => fs.push_socket(at, header).map_err(bh),
    }
}

/// The kernel's new_encode_dev, which squashfs stores (12-bit major, 20-bit minor).
fn encode_dev(major: u32, minor: u32) -> Result<u32, String> {
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(format!(
            "device {major}:{minor} does not fit squashfs (major < 4096, minor < 1048576)"
        ));
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// A file's content, opened on first read so that only one source file is open at a time, and
/// checked to be exactly the length the tree recorded. A failure is kept for [`write`] to report
/// with the file's path.
struct SourceFile<'t> {
    data: &'t FileData,
    path: String,
    reader: Option<Box<dyn Read + Send + 't>>,
    read: u64,
    failed: Rc<RefCell<Option<SquashError>>>,
}

impl<'t> SourceFile<'t> {
    fn new(data: &'t FileData, path: String, failed: Rc<RefCell<Option<SquashError>>>) -> Self {
        SourceFile {
            data,
            path,
            reader: None,
            read: 0,
            failed,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader = match &mut self.reader {
            Some(r) => r,
            None => self.reader.insert(self.data.open()?),
        };
        let n = reader.read(buf)?;
        self.read += n as u64;
        if n == 0 && !buf.is_empty() && self.read != self.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "content ended after {} of {} bytes",
                    self.read,
                    self.data.len()
                ),
            ));
        }
        Ok(n)
    }
}

impl Read for SourceFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(buf).inspect_err(|e| {
            let mut failed = self.failed.borrow_mut();
            if failed.is_none() {
                *failed = Some(SquashError::Read {
                    path: self.path.clone(),
                    source: io::Error::new(e.kind(), e.to_string()),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;
    use std::io::Seek;

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn device_numbers_use_the_kernels_encoding() {
        // new_encode_dev: MKDEV(8, 1), and a minor above 255 split around the major.
        assert_eq!(encode_dev(8, 1), Ok(0x801));
        assert_eq!(encode_dev(1, 0x12345), Ok(0x1230_0145));
        assert!(encode_dev(4096, 0).is_err());
        assert!(encode_dev(0, 1 << 20).is_err());
    }

    #[test]
    fn the_superblock_carries_the_epoch_zstd_and_the_block_size() {
        let mut tree = Tree::new(Meta::root(0o755, 5));
        tree.add_file(
            "a",
            Meta::root(0o644, 5),
            FileData::from_bytes(b"hello".to_vec()),
        )
        .unwrap();
        tree.add_hardlink("b", "a").unwrap();
        let f = tempfile::tempfile().unwrap();
        let report = write(&tree, &f, &SquashOptions::pi(1_767_225_600)).unwrap();
        let mut img = Vec::new();
        (&f).seek(io::SeekFrom::Start(0)).unwrap();
        (&f).read_to_end(&mut img).unwrap();
        assert_eq!(img.len() as u64, report.bytes);
        assert_eq!(&img[0..4], b"hsqs");
        assert_eq!(le32(&img, 4), 3, "root, a and b: the hard link is split");
        assert_eq!(le32(&img, 8), 1_767_225_600);
        assert_eq!(le32(&img, 12), PI_BLOCK_SIZE);
        assert_eq!(u16::from_le_bytes([img[20], img[21]]), 6, "zstd");
        assert_eq!((img[28], img[30]), (4, 0), "version 4.0");
        let bytes_used = u64::from_le_bytes(img[40..48].try_into().unwrap());
        assert!(bytes_used <= report.bytes && report.bytes - bytes_used < 4096);
        assert_eq!(report.hard_links_split, 1);
    }

    #[test]
    fn options_outside_the_format_are_refused() {
        let tree = Tree::new(Meta::root(0o755, 0));
        let f = tempfile::tempfile().unwrap();
        for bad in [
            SquashOptions {
                block_size: 4095,
                ..SquashOptions::pi(0)
            },
            SquashOptions {
                block_size: 2 << 20,
                ..SquashOptions::pi(0)
            },
            SquashOptions {
                zstd_level: 0,
                ..SquashOptions::pi(0)
            },
            SquashOptions::pi(1 << 32),
        ] {
            assert!(
                matches!(write(&tree, &f, &bad), Err(SquashError::Options(_))),
                "{bad:?}"
            );
        }
    }
}
