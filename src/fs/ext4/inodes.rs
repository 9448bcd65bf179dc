//! The data pass: one short function per inode kind (as e2fsprogs' misc/create_inode.c has),
//! each placing its blocks at the next free block and filling in its inode; the caller is a plain
//! dispatch in inode order, so the output is one long sequential stream.

use super::format::{
    build_extent_tree, dirent_type, encode_inode, inode_seed, put32, DirBuilder, Extents,
    InodeSpec, EXTENTS_FL,
};
use super::layout::{self, BS, FIRST_INO, INODE_SIZE};
use super::source::{is_zero, Content};
use super::{journal_extents, Ext4Error, Fs, Slot, LPF_BLOCKS, MAX_LINKS};
use crate::fs::sparse::Sink;
use crate::tree::{FileData, InodeId, InodeKind};

/// Bytes gathered for one sequential write.
const WRITE_CHUNK: usize = 8 << 20;

/// Lays blocks out at the next free block and writes them in large sequential runs.
pub(super) struct Writer<'o> {
    out: &'o mut dyn Sink,
    offset: u64,
    /// Blocks in use: the layout's metadata, then every block placed.
    pub(super) map: layout::BlockMap,
    cursor: u64,
    blocks: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Bytes of blocks placed.
    pub(super) data_bytes: u64,
}

impl<'o> Writer<'o> {
    /// Writes into `out` for a filesystem at byte `offset` whose used blocks are `map`.
    pub(super) fn new(
        out: &'o mut dyn Sink,
        offset: u64,
        map: layout::BlockMap,
        blocks: u64,
    ) -> Self {
        Writer {
            out,
            offset,
            map,
            cursor: 0,
            blocks,
            buf: Vec::with_capacity(WRITE_CHUNK),
            buf_start: 0,
            data_bytes: 0,
        }
    }

    fn alloc(&mut self) -> Result<u64, Ext4Error> {
        while self.cursor < self.blocks && self.map.is_used(self.cursor) {
            self.cursor += 1;
        }
        if self.cursor >= self.blocks {
            // Only if a host file grew data after it was measured.
            return Err(Ext4Error::Invalid(
                "ran out of blocks (did a source file change while writing?)".into(),
            ));
        }
        self.map.set(self.cursor);
        self.cursor += 1;
        Ok(self.cursor - 1)
    }

    /// Places one block (shorter input is zero padded) and returns its block number.
    fn emit(&mut self, block: &[u8]) -> Result<u64, Ext4Error> {
        let p = self.alloc()?;
        let queued = (self.buf.len() as u64) / BS;
        if !self.buf.is_empty() && (p != self.buf_start + queued || self.buf.len() >= WRITE_CHUNK) {
            self.flush()?;
        }
        if self.buf.is_empty() {
            self.buf_start = p;
        }
        self.buf.extend_from_slice(block);
        self.buf
            .resize(self.buf.len().next_multiple_of(BS as usize), 0);
        self.data_bytes += BS;
        Ok(p)
    }

    /// Writes a small object's blocks (directory, slow symlink) and builds its extent tree.
    fn emit_blocks(
        &mut self,
        blocks: &[impl AsRef<[u8]>],
        seed: u32,
    ) -> Result<([u8; 60], u64), Ext4Error> {
        let mut ext = Extents::default();
        for (i, b) in blocks.iter().enumerate() {
            let p = self.emit(b.as_ref())?;
            ext.push(i as u32, p);
        }
        let (iblock, tree) = build_extent_tree(&ext, seed, &mut |b| self.emit(b))?;
        Ok((iblock, blocks.len() as u64 + tree))
    }

    pub(super) fn flush(&mut self) -> Result<(), Ext4Error> {
        if !self.buf.is_empty() {
            let mut data = std::mem::take(&mut self.buf);
            self.write_at(self.buf_start * BS, &data)?;
            data.clear();
            self.buf = data;
        }
        Ok(())
    }

    /// Writes at a byte position relative to the filesystem start.
    pub(super) fn write_at(&mut self, pos: u64, data: &[u8]) -> Result<(), Ext4Error> {
        self.out
            .write_at(self.offset + pos, data)
            .map_err(Ext4Error::Write)
    }
}

impl<'a> Fs<'a, '_> {
    /// Inode 8, the journal: its blocks are reserved by the layout and stay holes here (see
    /// `write_journal`); only its extent tree is placed. Returns its i_block.
    pub(super) fn write_journal_inode(&mut self) -> Result<[u8; 60], Ext4Error> {
        let jext = journal_extents(self.layout);
        let seed = inode_seed(self.fs_seed, 8);
        let (jblock, jtree) = build_extent_tree(&jext, seed, &mut |b| self.w.emit(b))?;
        let journal_blocks = u64::from(self.layout.geo.journal_blocks);
        let spec = InodeSpec {
            mode: 0o100600,
            uid: 0,
            gid: 0,
            size: journal_blocks * BS,
            links: 1,
            time: self.opts.timestamp,
            flags: EXTENTS_FL,
            iblock: jblock,
            blocks: journal_blocks + jtree,
            xattrs: None,
        };
        self.put_inode(8, &spec)?;
        Ok(jblock)
    }

    /// Every inode in number order, its blocks laid out as it comes.
    pub(super) fn write_inodes(&mut self) -> Result<(), Ext4Error> {
        for ino in 1..=self.plan.max_ino() {
            let spec = match self.plan.slots[ino as usize - 1] {
                Slot::Reserved => continue,
                Slot::LostFound => self.make_lost_found(ino)?,
                Slot::Inode(id) => self.tree_inode(ino, id)?,
            };
            self.put_inode(ino, &spec)?;
        }
        self.w.flush()
    }

    /// Encodes an inode into the in-memory inode table.
    fn put_inode(&mut self, ino: u32, spec: &InodeSpec) -> Result<(), Ext4Error> {
        let bytes = encode_inode(spec, ino, self.fs_seed)?;
        let at = (ino as usize - 1) * INODE_SIZE as usize;
        self.itab[at..at + INODE_SIZE as usize].copy_from_slice(&bytes);
        Ok(())
    }

    /// lost+found when the tree has none: empty, with spare blocks for e2fsck to fill.
    fn make_lost_found(&mut self, ino: u32) -> Result<InodeSpec<'a>, Ext4Error> {
        let seed = inode_seed(self.fs_seed, ino);
        let mut d = DirBuilder::new(ino, 2);
        for _ in 1..LPF_BLOCKS {
            d.add_empty_block();
        }
        let (iblock, blocks) = self.w.emit_blocks(&d.finish(seed), seed)?;
        self.count_dir(ino);
        Ok(InodeSpec {
            mode: 0o040700,
            uid: 0,
            gid: 0,
            size: LPF_BLOCKS as u64 * BS,
            links: 2,
            time: self.opts.timestamp,
            flags: EXTENTS_FL,
            iblock,
            blocks,
            xattrs: None,
        })
    }

    /// A tree inode's ext4 inode: what all kinds share, then the kind's own step.
    fn tree_inode(&mut self, ino: u32, id: InodeId) -> Result<InodeSpec<'a>, Ext4Error> {
        let tree = self.tree;
        let inode = tree.inode(id);
        let mut spec = InodeSpec {
            mode: inode.mode(),
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            size: 0,
            links: tree.link_count(id) as u16,
            time: inode.meta.mtime,
            flags: 0,
            iblock: [0; 60],
            blocks: 0,
            xattrs: Some(&inode.meta.xattrs),
        };
        let seed = inode_seed(self.fs_seed, ino);
        match &inode.kind {
            InodeKind::Dir(_) => self.mkdir(&mut spec, ino, id, seed)?,
            InodeKind::File(data) => self.write_file(&mut spec, id, data, seed)?,
            InodeKind::Symlink(target) => self.symlink(&mut spec, target, seed)?,
            InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                mknod(&mut spec, *major, *minor)
            }
            InodeKind::Fifo | InodeKind::Socket => {}
        }
        Ok(spec)
    }

    /// A directory: its entries in the tree's (name) order, written linear.
    fn mkdir(
        &mut self,
        spec: &mut InodeSpec,
        ino: u32,
        id: InodeId,
        seed: u32,
    ) -> Result<(), Ext4Error> {
        let (tree, plan) = (self.tree, self.plan);
        let mut d = DirBuilder::new(ino, plan.parent[id.0]);
        if id == InodeId::ROOT && plan.makes_lost_found() {
            d.add(b"lost+found", FIRST_INO, 2);
        }
        for (name, c) in tree.children(id) {
            let ftype = dirent_type(tree.inode(c).mode());
            d.add(name, plan.ino_of[c.0], ftype);
        }
        let blocks = d.finish(seed);
        spec.size = blocks.len() as u64 * BS;
        (spec.iblock, spec.blocks) = self.w.emit_blocks(&blocks, seed)?;
        spec.flags = EXTENTS_FL;
        // Past ext4's link limit a directory counts 1 (dir_nlink).
        let links = 2 + plan.subdirs[id.0];
        spec.links = if links > MAX_LINKS { 1 } else { links as u16 };
        self.count_dir(ino);
        Ok(())
    }

    /// A regular file: its non-zero blocks (all-zero ones stay holes), then its extent tree.
    fn write_file(
        &mut self,
        spec: &mut InodeSpec,
        id: InodeId,
        data: &FileData,
        seed: u32,
    ) -> Result<(), Ext4Error> {
        let content = Content::open(data, &self.plan.ranges[id.0])?;
        let mut ext = Extents::default();
        let w = &mut self.w;
        content.for_each_chunk(&mut self.buf, &mut |first, bytes| {
            for (i, blk) in bytes.chunks(BS as usize).enumerate() {
                if !is_zero(blk) {
                    let p = w.emit(blk)?;
                    ext.push((first + i as u64) as u32, p);
                }
            }
            Ok(())
        })?;
        let (iblock, tree_blocks) = build_extent_tree(&ext, seed, &mut |b| w.emit(b))?;
        spec.size = data.len();
        spec.iblock = iblock;
        spec.blocks = ext.data_blocks() + tree_blocks;
        spec.flags = EXTENTS_FL;
        Ok(())
    }

    /// A symlink: a fast one (under 60 bytes) in i_block, a slow one in a block of its own.
    fn symlink(&mut self, spec: &mut InodeSpec, target: &[u8], seed: u32) -> Result<(), Ext4Error> {
        if target.is_empty() || target.len() >= BS as usize {
            return Err(Ext4Error::Invalid(format!(
                "symlink target of {} bytes (1 to {} allowed)",
                target.len(),
                BS - 1
            )));
        }
        spec.size = target.len() as u64;
        if target.len() < 60 {
            spec.iblock[..target.len()].copy_from_slice(target);
        } else {
            (spec.iblock, spec.blocks) = self.w.emit_blocks(&[target], seed)?;
            spec.flags = EXTENTS_FL;
        }
        Ok(())
    }

    /// Counts a directory in its group's descriptor.
    fn count_dir(&mut self, ino: u32) {
        self.dirs_in_group[((ino - 1) / self.layout.geo.ipg) as usize] += 1;
    }
}

/// A device: the old 16-bit encoding when it fits, else the new one in i_block[1].
fn mknod(spec: &mut InodeSpec, major: u32, minor: u32) {
    if major < 256 && minor < 256 {
        put32(&mut spec.iblock, 0, (major << 8) | minor);
    } else {
        let enc = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        put32(&mut spec.iblock, 4, enc);
    }
}
