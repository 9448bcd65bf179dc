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
mod inodes;
mod layout;
mod metadata;
mod source;

use crate::fs::sparse::Sink;
use crate::tree::{InodeId, InodeKind, Tree};
use format::{crc, dir_block_count, tree_blocks, Extents};
use inodes::Writer;
use layout::{Geometry, Layout, Shortfall, BPG, BS, FIRST_INO, INODE_SIZE};
use metadata::{Free, Superblock};

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
    /// An inode of the tree.
    Inode(InodeId),
    /// lost+found made by us (the tree has none).
    LostFound,
}

const LPF_BLOCKS: usize = 4;
const MAX_LINKS: u32 = 65000;

struct Plan<'t> {
    tree: std::marker::PhantomData<&'t Tree>,
    /// Inode number of each tree inode (0 = unreachable).
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
        p.ino_of[InodeId::ROOT.0] = 2;
        p.slots[1] = Slot::Inode(InodeId::ROOT);
        p.parent[InodeId::ROOT.0] = 2;
        p.place_lost_found(tree)?;
        p.number_inodes(tree)?;
        p.count_blocks(tree)?;
        Ok(p)
    }

    /// lost+found takes the first non-reserved inode: the tree's own, or one made by us.
    fn place_lost_found(&mut self, tree: &Tree) -> Result<(), Ext4Error> {
        let lpf = tree
            .children(InodeId::ROOT)
            .find(|(name, _)| *name == b"lost+found")
            .map(|(_, id)| id);
        match lpf {
            Some(id) if tree.inode(id).is_dir() => {
                self.ino_of[id.0] = FIRST_INO;
                self.slots[FIRST_INO as usize - 1] = Slot::Inode(id);
            }
            Some(_) => {
                return Err(Ext4Error::Invalid(
                    "/lost+found exists and is not a directory".into(),
                ))
            }
            None => {
                self.slots[FIRST_INO as usize - 1] = Slot::LostFound;
                self.subdirs[InodeId::ROOT.0] += 1;
                self.data_blocks += LPF_BLOCKS as u64;
            }
        }
        Ok(())
    }

    /// Each directory's entries get consecutive numbers, then its subdirectories in name order.
    fn number_inodes(&mut self, tree: &Tree) -> Result<(), Ext4Error> {
        let mut stack = vec![InodeId::ROOT];
        while let Some(d) = stack.pop() {
            let dino = self.ino_of[d.0];
            let mut dirs = Vec::new();
            for (name, c) in tree.children(d) {
                if self.ino_of[c.0] == 0 {
                    self.slots.push(Slot::Inode(c));
                    let ino = u32::try_from(self.slots.len())
                        .map_err(|_| Ext4Error::Invalid("too many inodes".into()))?;
                    self.ino_of[c.0] = ino;
                }
                if tree.inode(c).is_dir() {
                    self.parent[c.0] = dino;
                    self.subdirs[d.0] += 1;
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
        Ok(())
    }

    /// Space: every directory, symlink and file once.
    fn count_blocks(&mut self, tree: &Tree) -> Result<(), Ext4Error> {
        for slot in self.slots.clone() {
            let Slot::Inode(id) = slot else { continue };
            let blocks = match &tree.inode(id).kind {
                InodeKind::Dir(_) => {
                    let extra = (id == InodeId::ROOT && self.makes_lost_found())
                        .then_some(b"lost+found".len());
                    dir_block_count(tree.children(id).map(|(n, _)| n.len()).chain(extra))
                }
                InodeKind::File(data) => {
                    if data.len() > (u64::from(u32::MAX) + 1) * BS {
                        return Err(Ext4Error::Invalid("file larger than 16 TiB".into()));
                    }
                    let (ranges, upper) = source::probe(data)?;
                    self.ranges[id.0] = ranges;
                    upper
                }
                InodeKind::Symlink(t) if t.len() >= 60 => 1,
                _ => 0,
            };
            // Worst case every block is its own extent.
            self.data_blocks += blocks + tree_blocks(blocks);
        }
        Ok(())
    }

    /// Whether lost+found is ours to make (the tree has none).
    fn makes_lost_found(&self) -> bool {
        matches!(self.slots[FIRST_INO as usize - 1], Slot::LostFound)
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

/// One write in progress: the plan, where it goes, and the metadata the data pass collects.
struct Fs<'a, 'o> {
    tree: &'a Tree,
    plan: &'a Plan<'a>,
    opts: &'a Ext4Options,
    layout: &'a Layout,
    fs_seed: u32,
    w: Writer<'o>,
    /// Every inode up to the highest used one, in number order.
    itab: Vec<u8>,
    dirs_in_group: Vec<u32>,
    /// File content read buffer.
    buf: Vec<u8>,
}

/// Writes the filesystem and reports its figures.
pub fn write_with_report(
    tree: &Tree,
    opts: &Ext4Options,
    out: &mut dyn Sink,
    offset: u64,
) -> Result<Ext4Report, Ext4Error> {
    check_target(opts, out.len(), offset)?;
    let plan = Plan::new(tree)?;
    let layout = choose_layout(&plan, opts)?;
    let mut fs = Fs::new(tree, &plan, opts, &layout, out, offset);
    let jblock = fs.write_journal_inode()?;
    fs.write_inodes()?;
    let (gdt, free) = fs.write_group_tables()?;
    let sb = Superblock {
        geo: &layout.geo,
        opts,
        free_blocks: free.blocks,
        free_inodes: free.inodes,
        jblock: &jblock,
        jsize: u64::from(layout.geo.journal_blocks) * BS,
    };
    fs.write_superblocks(&sb, &gdt)?;
    fs.write_journal()?;
    Ok(fs.report(free))
}

/// The label fits the superblock and the filesystem fits the output.
fn check_target(opts: &Ext4Options, out_len: u64, offset: u64) -> Result<(), Ext4Error> {
    if opts.label.len() > 16 {
        return Err(Ext4Error::Invalid(format!(
            "volume label {:?} is longer than 16 bytes",
            opts.label
        )));
    }
    let end = offset.checked_add(opts.size);
    if end.is_none_or(|e| e > out_len) {
        return Err(Ext4Error::Invalid(format!(
            "a {}-byte filesystem at offset {offset} does not fit the {out_len}-byte output",
            opts.size,
        )));
    }
    Ok(())
}

/// The layout of an `opts.size` filesystem holding `plan`, or how much it would need.
fn choose_layout(plan: &Plan, opts: &Ext4Options) -> Result<Layout, Ext4Error> {
    let too_small = || Ext4Error::TooSmall {
        needed: plan.min_size(),
        size: opts.size,
    };
    let geo = Geometry::new(opts.size, u64::from(plan.max_ino())).map_err(|_| too_small())?;
    plan.fits(geo).ok_or_else(too_small)
}

impl<'a, 'o> Fs<'a, 'o> {
    fn new(
        tree: &'a Tree,
        plan: &'a Plan<'a>,
        opts: &'a Ext4Options,
        layout: &'a Layout,
        out: &'o mut dyn Sink,
        offset: u64,
    ) -> Fs<'a, 'o> {
        let w = Writer::new(out, offset, layout.map.clone(), layout.geo.blocks);
        Fs {
            tree,
            plan,
            opts,
            layout,
            fs_seed: crc(!0, &opts.uuid),
            w,
            itab: vec![0u8; plan.max_ino() as usize * INODE_SIZE as usize],
            dirs_in_group: vec![0u32; layout.geo.groups as usize],
            buf: Vec::with_capacity(1 << 20),
        }
    }

    fn report(&self, free: Free) -> Ext4Report {
        let geo = &self.layout.geo;
        Ext4Report {
            fs_bytes: geo.blocks * BS,
            blocks: geo.blocks,
            free_blocks: free.blocks,
            inodes: geo.inodes(),
            free_inodes: free.inodes,
            data_bytes: self.w.data_bytes,
        }
    }
}

#[cfg(test)]
mod tests;
