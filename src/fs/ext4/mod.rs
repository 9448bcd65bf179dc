//! ext4 writer (write-once): turns a Tree into an ext4 filesystem that e2fsck accepts and the
//! Linux kernel mounts read-write.
//!
//! Features: has_journal (empty journal, inode 8), ext_attr (in-inode), dir_index (set; directories
//! are written linear), filetype, extent, 64bit, flex_bg, sparse_super, large_file, huge_file,
//! dir_nlink, extra_isize, metadata_csum. No resize_inode: resize2fs grows the filesystem offline
//! by moving blocks, and the kernel's online resize switches to meta_bg by itself.
//!
//! One pass: inode numbers are assigned (directory entries in name order), then directories,
//! file data and symlink blocks are laid out in inode order, each block at the next free block,
//! so the output is one long sequential stream. All-zero 4 KiB blocks of files are not
//! allocated (sparse files). Inode tables, bitmaps, descriptors and superblocks are written last;
//! only metadata is kept in memory.

mod format;
mod layout;
mod source;

use crate::fs::sparse::Sink;
use crate::tree::{NodeId, NodeKind, Tree};
use format::{
    build_extent_tree, crc, dir_block_count, dirent_type, encode_inode, inode_seed, put16, put32,
    tree_blocks, DirBuilder, Extents, InodeSpec, EXTENTS_FL,
};
use layout::{Geometry, Layout, Shortfall, BPG, BS, DESC_SIZE, FIRST_INO, INODE_SIZE, LOG_FLEX};
use source::{is_zero, Content};

/// Everything that decides the output bytes besides the tree.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Filesystem size in bytes (a multiple of the block size).
    pub size: u64,
    /// Volume label (at most 16 bytes).
    pub label: String,
    /// Filesystem UUID; derive it from the profile, never random.
    pub uuid: [u8; 16],
    /// htree hash seed; derive it from the profile.
    pub hash_seed: [u8; 16],
    /// Superblock and inode times for things the tree does not time (SOURCE_DATE_EPOCH).
    pub timestamp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("the tree needs at least {needed} bytes but the filesystem is {size} bytes")]
    TooSmall { needed: u64, size: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image: {0}")]
    Write(#[source] std::io::Error),
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Report {
    /// Bytes the filesystem covers (`opts.size` rounded down to whole blocks; a last block group
    /// too small to be useful is left out, as mke2fs does).
    pub fs_bytes: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u64,
    pub free_inodes: u64,
    /// Bytes of file, directory and symlink blocks written.
    pub data_bytes: u64,
}

/// Block size of the filesystems this module writes.
pub const BLOCK_SIZE: u64 = BS;

/// Writes the filesystem into `out` starting at byte `offset` (a partition's start).
pub fn write(
    tree: &Tree,
    opts: &Ext4Options,
    out: &mut dyn Sink,
    offset: u64,
) -> Result<(), Ext4Error> {
    write_with_report(tree, opts, out, offset).map(|_| ())
}

/// Smallest filesystem size in bytes that holds `tree` (reads host files' hole maps, not their
/// content). Only `opts.size` is ignored.
pub fn required_size(tree: &Tree, _opts: &Ext4Options) -> Result<u64, Ext4Error> {
    let plan = Plan::new(tree)?;
    Ok(plan.min_size())
}

/// Where each inode number comes from.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Reserved,
    Node(NodeId),
    /// lost+found made by us (the tree has none).
    LostFound,
}

const LPF_BLOCKS: usize = 4;
const MAX_LINKS: u32 = 65000;

struct Plan<'t> {
    tree: std::marker::PhantomData<&'t Tree>,
    /// Inode number of each node (0 = unreachable).
    ino_of: Vec<u32>,
    /// Slot of inode number i + 1.
    slots: Vec<Slot>,
    /// For directories: the parent's inode number and how many subdirectories it has.
    parent: Vec<u32>,
    subdirs: Vec<u32>,
    /// For files: the byte ranges that may hold data (holes of host files skipped).
    ranges: Vec<Vec<(u64, u64)>>,
    /// Upper bound of blocks for directories, files, symlinks and their extent trees.
    data_blocks: u64,
}

impl<'t> Plan<'t> {
    fn new(tree: &'t Tree) -> Result<Plan<'t>, Ext4Error> {
        let n = tree.len();
        let mut p = Plan {
            tree: std::marker::PhantomData,
            ino_of: vec![0; n],
            slots: vec![Slot::Reserved; FIRST_INO as usize],
            parent: vec![0; n],
            subdirs: vec![0; n],
            ranges: vec![Vec::new(); n],
            data_blocks: 0,
        };
        p.ino_of[NodeId::ROOT.0] = 2;
        p.slots[1] = Slot::Node(NodeId::ROOT);
        p.parent[NodeId::ROOT.0] = 2;
        let lpf = tree
            .children(NodeId::ROOT)
            .find(|(name, _)| *name == b"lost+found")
            .map(|(_, id)| id);
        match lpf {
            Some(id) if tree.node(id).is_dir() => {
                p.ino_of[id.0] = FIRST_INO;
                p.slots[FIRST_INO as usize - 1] = Slot::Node(id);
            }
            Some(_) => {
                return Err(Ext4Error::Invalid(
                    "/lost+found exists and is not a directory".into(),
                ))
            }
            None => {
                p.slots[FIRST_INO as usize - 1] = Slot::LostFound;
                p.subdirs[NodeId::ROOT.0] += 1;
                p.data_blocks += LPF_BLOCKS as u64;
            }
        }
        // Each directory's entries get consecutive numbers, then its subdirectories in name order.
        let mut stack = vec![NodeId::ROOT];
        while let Some(d) = stack.pop() {
            let dino = p.ino_of[d.0];
            let mut dirs = Vec::new();
            for (name, c) in tree.children(d) {
                if p.ino_of[c.0] == 0 {
                    p.slots.push(Slot::Node(c));
                    let ino = u32::try_from(p.slots.len())
                        .map_err(|_| Ext4Error::Invalid("too many inodes".into()))?;
                    p.ino_of[c.0] = ino;
                }
                if tree.node(c).is_dir() {
                    p.parent[c.0] = dino;
                    p.subdirs[d.0] += 1;
                    dirs.push(c);
                } else if tree.link_count(c) > MAX_LINKS {
                    return Err(Ext4Error::Invalid(format!(
                        "{}: more than {MAX_LINKS} hard links",
                        String::from_utf8_lossy(name)
                    )));
                }
            }
            stack.extend(dirs.into_iter().rev());
        }
        // Space: every directory, symlink and file once.
        for slot in p.slots.clone() {
            let Slot::Node(id) = slot else { continue };
            let blocks = match &tree.node(id).kind {
                NodeKind::Dir(_) => {
                    let extra = (id == NodeId::ROOT && matches!(p.slots[10], Slot::LostFound))
                        .then_some(b"lost+found".len());
                    dir_block_count(tree.children(id).map(|(n, _)| n.len()).chain(extra))
                }
                NodeKind::File(data) => {
                    if data.len() > (u64::from(u32::MAX) + 1) * BS {
                        return Err(Ext4Error::Invalid("file larger than 16 TiB".into()));
                    }
                    let (ranges, upper) = source::probe(data)?;
                    p.ranges[id.0] = ranges;
                    upper
                }
                NodeKind::Symlink(t) if t.len() >= 60 => 1,
                _ => 0,
            };
            // Worst case every block is its own extent.
            p.data_blocks += blocks + tree_blocks(blocks);
        }
        Ok(p)
    }

    fn max_ino(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Checks that `geo` holds the plan; returns the layout if it does.
    fn fits(&self, geo: Geometry) -> Option<Layout> {
        let cap = geo.data_capacity();
        if cap < self.data_blocks {
            return None;
        }
        let layout = Layout::new(geo)?;
        let jtree = tree_blocks(journal_extents(&layout).list.len() as u64);
        (cap >= self.data_blocks + jtree).then_some(layout)
    }

    fn min_size(&self) -> u64 {
        let need = self.data_blocks;
        let mut blocks = layout::MIN_BLOCKS.max(need + need / 16 + 1024);
        loop {
            match Geometry::new(blocks * BS, u64::from(self.max_ino())) {
                Ok(geo) => {
                    let cap = geo.data_capacity();
                    if self.fits(geo).is_some() {
                        return blocks * BS;
                    }
                    blocks += need.saturating_sub(cap).max(16);
                }
                Err(Shortfall::Blocks) => blocks = layout::MIN_BLOCKS,
                Err(Shortfall::Inodes) => blocks += BPG,
            }
        }
    }
}

fn journal_extents(layout: &Layout) -> Extents {
    let mut e = Extents::default();
    let mut logical = 0u32;
    for (start, len) in &layout.journal {
        e.push_run(logical, *start, *len);
        logical += *len as u32;
    }
    e
}

/// Bytes gathered for one sequential write.
const WRITE_CHUNK: usize = 8 << 20;

/// Lays blocks out at the next free block and writes them in large sequential runs.
struct Writer<'o> {
    out: &'o mut dyn Sink,
    offset: u64,
    map: layout::BlockMap,
    cursor: u64,
    blocks: u64,
    buf: Vec<u8>,
    buf_start: u64,
    data_bytes: u64,
}

impl Writer<'_> {
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

    fn flush(&mut self) -> Result<(), Ext4Error> {
        if !self.buf.is_empty() {
            let mut data = std::mem::take(&mut self.buf);
            self.write_at(self.buf_start * BS, &data)?;
            data.clear();
            self.buf = data;
        }
        Ok(())
    }

    /// Writes at a byte position relative to the filesystem start.
    fn write_at(&mut self, pos: u64, data: &[u8]) -> Result<(), Ext4Error> {
        self.out
            .write_at(self.offset + pos, data)
            .map_err(Ext4Error::Write)
    }
}

/// Group descriptor flags.
const INODE_UNINIT: u16 = 0x1;
const BLOCK_UNINIT: u16 = 0x2;

/// Writes the filesystem and reports its figures.
pub fn write_with_report(
    tree: &Tree,
    opts: &Ext4Options,
    out: &mut dyn Sink,
    offset: u64,
) -> Result<Ext4Report, Ext4Error> {
    if opts.label.len() > 16 {
        return Err(Ext4Error::Invalid(format!(
            "volume label {:?} is longer than 16 bytes",
            opts.label
        )));
    }
    let end = offset.checked_add(opts.size);
    if end.is_none_or(|e| e > out.len()) {
        return Err(Ext4Error::Invalid(format!(
            "a {}-byte filesystem at offset {offset} does not fit the {}-byte output",
            opts.size,
            out.len()
        )));
    }
    let plan = Plan::new(tree)?;
    let too_small = || Ext4Error::TooSmall {
        needed: plan.min_size(),
        size: opts.size,
    };
    let geo = Geometry::new(opts.size, u64::from(plan.max_ino())).map_err(|_| too_small())?;
    let layout = plan.fits(geo).ok_or_else(too_small)?;
    let fs_seed = crc(!0, &opts.uuid);
    let geo = layout.geo.clone();
    let mut w = Writer {
        out,
        offset,
        map: layout.map.clone(),
        cursor: 0,
        blocks: geo.blocks,
        buf: Vec::with_capacity(WRITE_CHUNK),
        buf_start: 0,
        data_bytes: 0,
    };
    let max_ino = plan.max_ino();
    let mut itab = vec![0u8; max_ino as usize * INODE_SIZE as usize];
    let mut dirs_in_group = vec![0u32; geo.groups as usize];
    let mut put_inode = |ino: u32, bytes: Vec<u8>| {
        let at = (ino as usize - 1) * INODE_SIZE as usize;
        itab[at..at + INODE_SIZE as usize].copy_from_slice(&bytes);
    };

    // Journal (inode 8): blocks reserved by the layout, content is holes but its superblock.
    let jext = journal_extents(&layout);
    let (jblock, jtree) = build_extent_tree(&jext, inode_seed(fs_seed, 8), &mut |b| w.emit(b))?;
    let jsize = u64::from(geo.journal_blocks) * BS;
    put_inode(
        8,
        encode_inode(
            &InodeSpec {
                mode: 0o100600,
                uid: 0,
                gid: 0,
                size: jsize,
                links: 1,
                time: opts.timestamp,
                flags: EXTENTS_FL,
                iblock: jblock,
                blocks: u64::from(geo.journal_blocks) + jtree,
                xattrs: None,
            },
            8,
            fs_seed,
        )?,
    );

    let mut buf = Vec::with_capacity(1 << 20);
    for ino in 1..=max_ino {
        let seed = inode_seed(fs_seed, ino);
        let spec = match plan.slots[ino as usize - 1] {
            Slot::Reserved => continue,
            Slot::LostFound => {
                let mut d = DirBuilder::new(ino, 2);
                for _ in 1..LPF_BLOCKS {
                    d.add_empty_block();
                }
                let (iblock, blocks) = emit_blocks(&mut w, &d.finish(seed), seed)?;
                dirs_in_group[((ino - 1) / geo.ipg) as usize] += 1;
                InodeSpec {
                    mode: 0o040700,
                    uid: 0,
                    gid: 0,
                    size: LPF_BLOCKS as u64 * BS,
                    links: 2,
                    time: opts.timestamp,
                    flags: EXTENTS_FL,
                    iblock,
                    blocks,
                    xattrs: None,
                }
            }
            Slot::Node(id) => {
                let node = tree.node(id);
                let mut spec = InodeSpec {
                    mode: node.mode(),
                    uid: node.meta.uid,
                    gid: node.meta.gid,
                    size: 0,
                    links: tree.link_count(id) as u16,
                    time: node.meta.mtime,
                    flags: 0,
                    iblock: [0; 60],
                    blocks: 0,
                    xattrs: Some(&node.meta.xattrs),
                };
                match &node.kind {
                    NodeKind::Dir(_) => {
                        let mut d = DirBuilder::new(ino, plan.parent[id.0]);
                        if id == NodeId::ROOT && matches!(plan.slots[10], Slot::LostFound) {
                            d.add(b"lost+found", FIRST_INO, 2);
                        }
                        for (name, c) in tree.children(id) {
                            let ftype = dirent_type(tree.node(c).mode());
                            d.add(name, plan.ino_of[c.0], ftype);
                        }
                        let blocks = d.finish(seed);
                        spec.size = blocks.len() as u64 * BS;
                        (spec.iblock, spec.blocks) = emit_blocks(&mut w, &blocks, seed)?;
                        spec.flags = EXTENTS_FL;
                        let links = 2 + plan.subdirs[id.0];
                        spec.links = if links > MAX_LINKS { 1 } else { links as u16 };
                        dirs_in_group[((ino - 1) / geo.ipg) as usize] += 1;
                    }
                    NodeKind::File(data) => {
                        let content = Content::open(data, &plan.ranges[id.0])?;
                        let mut ext = Extents::default();
                        content.for_each_chunk(&mut buf, &mut |first, bytes| {
                            for (i, blk) in bytes.chunks(BS as usize).enumerate() {
                                if !is_zero(blk) {
                                    let p = w.emit(blk)?;
                                    ext.push((first + i as u64) as u32, p);
                                }
                            }
                            Ok(())
                        })?;
                        let (iblock, tree_blocks) =
                            build_extent_tree(&ext, seed, &mut |b| w.emit(b))?;
                        spec.size = data.len();
                        spec.iblock = iblock;
                        spec.blocks = ext.data_blocks() + tree_blocks;
                        spec.flags = EXTENTS_FL;
                    }
                    NodeKind::Symlink(target) => {
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
                            (spec.iblock, spec.blocks) =
                                emit_blocks(&mut w, std::slice::from_ref(target), seed)?;
                            spec.flags = EXTENTS_FL;
                        }
                    }
                    NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
                        // Old 16-bit encoding when it fits, else the new one in i_block[1].
                        if *major < 256 && *minor < 256 {
                            put32(&mut spec.iblock, 0, (major << 8) | minor);
                        } else {
                            let enc = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                            put32(&mut spec.iblock, 4, enc);
                        }
                    }
                    NodeKind::Fifo | NodeKind::Socket => {}
                }
                spec
            }
        };
        put_inode(ino, encode_inode(&spec, ino, fs_seed)?);
    }
    w.flush()?;

    // Metadata: inode tables, bitmaps, descriptors, superblocks, journal superblock.
    let mut gdt = vec![0u8; geo.gdt_blocks as usize * BS as usize];
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for g in 0..geo.groups {
        let gi = g as usize;
        let first = u64::from(g) * u64::from(geo.ipg);
        let used = u64::from(max_ino)
            .saturating_sub(first)
            .min(u64::from(geo.ipg));
        let mut flags = 0u16;
        let (mut ibm_csum, mut bbm_csum) = (0u32, 0u32);
        if used == 0 {
            flags |= INODE_UNINIT;
        } else {
            let lo = first as usize * INODE_SIZE as usize;
            let hi = (first + used) as usize * INODE_SIZE as usize;
            let mut table = itab[lo..hi].to_vec();
            table.resize(table.len().next_multiple_of(BS as usize), 0);
            w.write_at(layout.inode_table[gi] * BS, &table)?;
            let mut ibm = vec![0u8; BS as usize];
            for i in (0..used).chain(u64::from(geo.ipg)..BS * 8) {
                ibm[(i / 8) as usize] |= 1 << (i % 8);
            }
            ibm_csum = crc(fs_seed, &ibm[..geo.ipg as usize / 8]);
            w.write_at(layout.inode_bitmap[gi] * BS, &ibm)?;
        }
        let start = geo.group_start(g);
        let len = geo.group_len(g);
        let used_blocks = w.map.count(start, len);
        if g + 1 < geo.groups && used_blocks == layout.uninit_used(g) {
            flags |= BLOCK_UNINIT;
        } else {
            let bbm = w.map.group_bitmap(start);
            bbm_csum = crc(fs_seed, &bbm);
            w.write_at(layout.block_bitmap[gi] * BS, &bbm)?;
        }
        let fb = len - used_blocks;
        let fi = u64::from(geo.ipg) - used;
        free_blocks += fb;
        free_inodes += fi;
        let d = &mut gdt[gi * DESC_SIZE as usize..(gi + 1) * DESC_SIZE as usize];
        let (bb, ib, it) = (
            layout.block_bitmap[gi],
            layout.inode_bitmap[gi],
            layout.inode_table[gi],
        );
        put32(d, 0x00, bb as u32);
        put32(d, 0x04, ib as u32);
        put32(d, 0x08, it as u32);
        put16(d, 0x0C, fb as u16);
        put16(d, 0x0E, fi as u16);
        put16(d, 0x10, dirs_in_group[gi] as u16);
        put16(d, 0x12, flags);
        put16(d, 0x18, bbm_csum as u16);
        put16(d, 0x1A, ibm_csum as u16);
        put16(d, 0x1C, fi as u16);
        put32(d, 0x20, (bb >> 32) as u32);
        put32(d, 0x24, (ib >> 32) as u32);
        put32(d, 0x28, (it >> 32) as u32);
        put16(d, 0x2C, (fb >> 16) as u16);
        put16(d, 0x2E, (fi >> 16) as u16);
        put16(d, 0x30, (dirs_in_group[gi] >> 16) as u16);
        put16(d, 0x32, (fi >> 16) as u16);
        put16(d, 0x38, (bbm_csum >> 16) as u16);
        put16(d, 0x3A, (ibm_csum >> 16) as u16);
        let c = crc(crc(fs_seed, &g.to_le_bytes()), d);
        put16(d, 0x1E, c as u16);
    }

    let sb = Superblock {
        geo: &geo,
        opts,
        free_blocks,
        free_inodes,
        jblock: &jblock,
        jsize,
    };
    for g in (0..geo.groups).filter(|g| layout::has_super(*g)) {
        let start = geo.group_start(g) * BS;
        let bytes = sb.encode(g as u16);
        w.write_at(if g == 0 { 1024 } else { start }, &bytes)?;
        w.write_at(start + BS, &gdt)?;
    }
    // The log itself is zeros, written as such (they stay holes in the image file but are mapped):
    // a card that held this same image before may still carry its old journal blocks, whose
    // sequence numbers and checksums (same UUID) jbd2 recovery would accept.
    let zeros = vec![0u8; 1 << 20];
    for &(start, len) in &layout.journal {
        let (mut at, end) = (start * BS, (start + len) * BS);
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            w.write_at(at, &zeros[..n as usize])?;
            at += n;
        }
    }
    w.write_at(layout.journal[0].0 * BS, &journal_superblock(&geo, opts))?;
    Ok(Ext4Report {
        fs_bytes: geo.blocks * BS,
        blocks: geo.blocks,
        free_blocks,
        inodes: geo.inodes(),
        free_inodes,
        data_bytes: w.data_bytes,
    })
}

/// Writes a small object's blocks (directory, slow symlink) and builds its extent tree.
fn emit_blocks(
    w: &mut Writer,
    blocks: &[Vec<u8>],
    seed: u32,
) -> Result<([u8; 60], u64), Ext4Error> {
    let mut ext = Extents::default();
    for (i, b) in blocks.iter().enumerate() {
        let p = w.emit(b)?;
        ext.push(i as u32, p);
    }
    let (iblock, tree) = build_extent_tree(&ext, seed, &mut |b| w.emit(b))?;
    Ok((iblock, blocks.len() as u64 + tree))
}

struct Superblock<'a> {
    geo: &'a Geometry,
    opts: &'a Ext4Options,
    free_blocks: u64,
    free_inodes: u64,
    jblock: &'a [u8; 60],
    jsize: u64,
}

const COMPAT: u32 = 0x4 | 0x8 | 0x20; // has_journal, ext_attr, dir_index
const INCOMPAT: u32 = 0x2 | 0x40 | 0x80 | 0x200; // filetype, extent, 64bit, flex_bg
                                                 // sparse_super, large_file, huge_file, dir_nlink, extra_isize, metadata_csum
const RO_COMPAT: u32 = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400;

impl Superblock<'_> {
    fn encode(&self, group: u16) -> Vec<u8> {
        let geo = self.geo;
        let mut s = vec![0u8; 1024];
        let reserved = geo.blocks / 20;
        // Superblock times: 32 bits plus a high byte (no pre-1970 dates).
        let ts = self.opts.timestamp.max(0);
        let (t, t_hi) = (ts as u32, (ts >> 32) as u8);
        put32(&mut s, 0x00, geo.inodes() as u32);
        put32(&mut s, 0x04, geo.blocks as u32);
        put32(&mut s, 0x08, reserved as u32);
        put32(&mut s, 0x0C, self.free_blocks as u32);
        put32(&mut s, 0x10, self.free_inodes as u32);
        put32(&mut s, 0x14, 0);
        put32(&mut s, 0x18, 2);
        put32(&mut s, 0x1C, 2);
        put32(&mut s, 0x20, BPG as u32);
        put32(&mut s, 0x24, BPG as u32);
        put32(&mut s, 0x28, geo.ipg);
        put32(&mut s, 0x30, t);
        put16(&mut s, 0x34, 0);
        put16(&mut s, 0x36, 0xFFFF);
        put16(&mut s, 0x38, 0xEF53);
        put16(&mut s, 0x3A, 1);
        put16(&mut s, 0x3C, 1);
        put32(&mut s, 0x40, t);
        put32(&mut s, 0x4C, 1);
        put32(&mut s, 0x54, FIRST_INO);
        put16(&mut s, 0x58, INODE_SIZE as u16);
        put16(&mut s, 0x5A, group);
        put32(&mut s, 0x5C, COMPAT);
        put32(&mut s, 0x60, INCOMPAT);
        put32(&mut s, 0x64, RO_COMPAT);
        s[0x68..0x78].copy_from_slice(&self.opts.uuid);
        let label = self.opts.label.as_bytes();
        s[0x78..0x78 + label.len()].copy_from_slice(label);
        put32(&mut s, 0xE0, 8);
        s[0xEC..0xFC].copy_from_slice(&self.opts.hash_seed);
        s[0xFC] = 1; // half_md4
        s[0xFD] = 1; // journal backup in s_jnl_blocks
        put16(&mut s, 0xFE, DESC_SIZE as u16);
        put32(&mut s, 0x100, 0x0C); // user_xattr, acl
        put32(&mut s, 0x108, t);
        s[0x10C..0x10C + 60].copy_from_slice(self.jblock);
        put32(&mut s, 0x148, (self.jsize >> 32) as u32);
        put32(&mut s, 0x14C, self.jsize as u32);
        put32(&mut s, 0x150, (geo.blocks >> 32) as u32);
        put32(&mut s, 0x154, (reserved >> 32) as u32);
        put32(&mut s, 0x158, (self.free_blocks >> 32) as u32);
        put16(&mut s, 0x15C, format::EXTRA_ISIZE);
        put16(&mut s, 0x15E, format::EXTRA_ISIZE);
        put32(&mut s, 0x160, 1); // signed directory hash
        s[0x174] = LOG_FLEX;
        s[0x175] = 1; // crc32c
        for off in [0x274, 0x276] {
            s[off] = t_hi; // s_wtime_hi, s_mkfs_time_hi
        }
        s[0x277] = t_hi; // s_lastcheck_hi
        let c = crc(!0, &s[..0x3FC]);
        put32(&mut s, 0x3FC, c);
        s
    }
}

/// An empty (clean) jbd2 v2 journal superblock, as mke2fs writes it.
fn journal_superblock(geo: &Geometry, opts: &Ext4Options) -> Vec<u8> {
    let mut j = vec![0u8; 1024];
    let be =
        |j: &mut Vec<u8>, off: usize, v: u32| j[off..off + 4].copy_from_slice(&v.to_be_bytes());
    be(&mut j, 0x0, 0xC03B_3998);
    be(&mut j, 0x4, 4);
    be(&mut j, 0xC, BS as u32);
    be(&mut j, 0x10, geo.journal_blocks);
    be(&mut j, 0x14, 1);
    be(&mut j, 0x18, 1);
    j[0x30..0x40].copy_from_slice(&opts.uuid);
    be(&mut j, 0x40, 1);
    j
}

#[cfg(test)]
mod tests;
