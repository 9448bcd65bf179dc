//! Geometry (block groups, inode counts, journal size) and placement of the fixed metadata.

/// Block size in bytes; the writer only makes 4 KiB-block filesystems.
pub const BS: u64 = 4096;
/// Blocks (and clusters) per group: one bitmap block's worth of bits.
pub const BPG: u64 = 32768;
pub const INODE_SIZE: u64 = 256;
pub const INODES_PER_BLOCK: u32 = (BS / INODE_SIZE) as u32;
pub const DESC_SIZE: u64 = 64;
const DESCS_PER_BLOCK: u64 = BS / DESC_SIZE;
/// Groups per flex group (log2 = 4, the mke2fs default).
pub const FLEX: u32 = 16;
pub const LOG_FLEX: u8 = 4;
/// First non-reserved inode (lost+found).
pub const FIRST_INO: u32 = 11;
/// Smallest filesystem we make: below this mke2fs would not create a journal.
pub const MIN_BLOCKS: u64 = 2048;

#[derive(Debug, Clone)]
pub struct Geometry {
    pub blocks: u64,
    pub groups: u32,
    /// Inodes per group.
    pub ipg: u32,
    /// Inode table blocks per group.
    pub itb: u32,
    pub gdt_blocks: u32,
    pub journal_blocks: u32,
}

/// Journal size mke2fs picks for a filesystem of `blocks` 4 KiB blocks (ext2fs_default_journal_size).
fn journal_blocks(blocks: u64) -> u32 {
    match blocks {
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

/// sparse_super: groups 0, 1 and powers of 3, 5 and 7 carry superblock and descriptor copies.
pub fn has_super(g: u32) -> bool {
    if g <= 1 {
        return true;
    }
    for base in [3u32, 5, 7] {
        let mut p = base;
        while p < g {
            p = match p.checked_mul(base) {
                Some(v) => v,
                None => break,
            };
        }
        if p == g {
            return true;
        }
    }
    false
}

/// Why a size cannot hold the tree.
pub enum Shortfall {
    /// Fewer blocks than the minimum filesystem.
    Blocks,
    /// More inodes needed than groups can hold.
    Inodes,
}

impl Geometry {
    /// Geometry for a filesystem of `size` bytes holding at least `min_inodes` inodes.
    pub fn new(size: u64, min_inodes: u64) -> Result<Geometry, Shortfall> {
        let mut blocks = size / BS;
        if blocks < MIN_BLOCKS {
            return Err(Shortfall::Blocks);
        }
        let mut groups = blocks.div_ceil(BPG);
        // A last group too small to be worth its own backup metadata is dropped, as mke2fs does.
        let last = blocks - (groups - 1) * BPG;
        let gdt = groups.div_ceil(DESCS_PER_BLOCK);
        let last_backup = if has_super((groups - 1) as u32) {
            1 + gdt
        } else {
            0
        };
        if groups > 1 && last < last_backup + 256 {
            blocks -= last;
            groups -= 1;
        }
        let gdt_blocks = groups.div_ceil(DESCS_PER_BLOCK);
        let ratio = if blocks * BS < (512 << 20) {
            4096
        } else {
            16384
        };
        let inodes = (blocks * BS / ratio).max(min_inodes);
        let ipg = inodes
            .div_ceil(groups)
            .next_multiple_of(u64::from(INODES_PER_BLOCK))
            .max(u64::from(INODES_PER_BLOCK));
        // One inode bitmap block per group: at most 8 * block size inodes.
        if ipg > BS * 8 || ipg * groups > u64::from(u32::MAX) {
            return Err(Shortfall::Inodes);
        }
        let ipg = ipg as u32;
        Ok(Geometry {
            blocks,
            groups: groups as u32,
            ipg,
            itb: ipg / INODES_PER_BLOCK,
            gdt_blocks: gdt_blocks as u32,
            journal_blocks: journal_blocks(blocks),
        })
    }

    pub fn group_start(&self, g: u32) -> u64 {
        u64::from(g) * BPG
    }

    pub fn group_len(&self, g: u32) -> u64 {
        (self.blocks - self.group_start(g)).min(BPG)
    }

    /// Superblock + descriptor copy at the start of group `g` (0 if it has none).
    pub fn backup_len(&self, g: u32) -> u64 {
        if has_super(g) {
            1 + u64::from(self.gdt_blocks)
        } else {
            0
        }
    }

    pub fn inodes(&self) -> u64 {
        u64::from(self.ipg) * u64::from(self.groups)
    }

    /// Blocks taken by everything but file system content: superblocks, descriptors, bitmaps,
    /// inode tables and the journal.
    pub fn overhead(&self) -> u64 {
        let backups: u64 = (0..self.groups).map(|g| self.backup_len(g)).sum();
        backups
            + u64::from(self.groups) * (2 + u64::from(self.itb))
            + u64::from(self.journal_blocks)
    }

    /// Blocks left for directories, files, symlinks and extent tree blocks.
    pub fn data_capacity(&self) -> u64 {
        self.blocks.saturating_sub(self.overhead())
    }
}

/// A bitmap over every block of the filesystem (one bit per block; memory is blocks / 8 bytes).
#[derive(Debug, Clone)]
pub struct BlockMap {
    words: Vec<u64>,
    blocks: u64,
}

impl BlockMap {
    pub fn new(blocks: u64) -> BlockMap {
        BlockMap {
            words: vec![0; blocks.div_ceil(64) as usize],
            blocks,
        }
    }

    pub fn is_used(&self, b: u64) -> bool {
        self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    pub fn set(&mut self, b: u64) {
        self.words[(b / 64) as usize] |= 1 << (b % 64);
    }

    pub fn set_range(&mut self, start: u64, len: u64) {
        for b in start..start + len {
            self.set(b);
        }
    }

    /// Used blocks in `[start, start + len)`.
    pub fn count(&self, start: u64, len: u64) -> u64 {
        (start..start + len).filter(|b| self.is_used(*b)).count() as u64
    }

    /// First free run of `n` blocks at or after `from` (no wrap-around).
    pub fn find_run(&self, from: u64, n: u64) -> Option<u64> {
        let mut start = from;
        let mut len = 0;
        let mut b = from;
        while b < self.blocks {
            if self.is_used(b) {
                len = 0;
                start = b + 1;
            } else {
                len += 1;
                if len == n {
                    return Some(start);
                }
            }
            b += 1;
        }
        None
    }

    /// The bitmap bytes of blocks `[start, start + BPG)`, bits past the end of the filesystem set
    /// (the kernel and e2fsck expect the padding of the last group's bitmap to be ones).
    pub fn group_bitmap(&self, start: u64) -> Vec<u8> {
        let mut out = vec![0u8; BS as usize];
        for i in 0..BPG {
            let b = start + i;
            if b >= self.blocks || self.is_used(b) {
                out[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        out
    }
}

/// Where each group's bitmaps and inode table are, and the journal's blocks.
#[derive(Debug, Clone)]
pub struct Layout {
    pub geo: Geometry,
    pub map: BlockMap,
    pub block_bitmap: Vec<u64>,
    pub inode_bitmap: Vec<u64>,
    pub inode_table: Vec<u64>,
    /// Journal runs (start, length), in logical order.
    pub journal: Vec<(u64, u64)>,
}

impl Layout {
    /// Places metadata the way mke2fs does with flex_bg: each flex group's bitmaps and inode
    /// tables packed at the start of its first group; the journal in the middle of the disk.
    /// `None` only if the geometry's own arithmetic was wrong (it never is for a valid geometry).
    pub fn new(geo: Geometry) -> Option<Layout> {
        let mut map = BlockMap::new(geo.blocks);
        for g in 0..geo.groups {
            map.set_range(geo.group_start(g), geo.backup_len(g));
        }
        let n = geo.groups as usize;
        let (mut bb, mut ib, mut it) = (vec![0; n], vec![0; n], vec![0; n]);
        let mut flex = 0;
        while flex < geo.groups {
            let members = flex..(flex + FLEX).min(geo.groups);
            let hint = geo.group_start(flex);
            for g in members.clone() {
                let b = map.find_run(hint, 1).or_else(|| map.find_run(0, 1))?;
                map.set(b);
                bb[g as usize] = b;
            }
            for g in members.clone() {
                let b = map.find_run(hint, 1).or_else(|| map.find_run(0, 1))?;
                map.set(b);
                ib[g as usize] = b;
            }
            for g in members {
                let len = u64::from(geo.itb);
                let b = map.find_run(hint, len).or_else(|| map.find_run(0, len))?;
                map.set_range(b, len);
                it[g as usize] = b;
            }
            flex += FLEX;
        }
        // Journal: one run near the middle if possible, else pieces from the start.
        let jlen = u64::from(geo.journal_blocks);
        let mut mid = (geo.blocks / 2 / BPG) as u32;
        if mid > FLEX {
            mid &= !(FLEX - 1);
        }
        let mut journal = Vec::new();
        if let Some(b) = map
            .find_run(geo.group_start(mid), jlen)
            .or_else(|| map.find_run(0, jlen))
        {
            map.set_range(b, jlen);
            journal.push((b, jlen));
        } else {
            let mut need = jlen;
            let mut b = 0;
            while need > 0 {
                if b >= geo.blocks {
                    return None;
                }
                if !map.is_used(b) {
                    map.set(b);
                    match journal.last_mut() {
                        Some((s, l)) if *s + *l == b => *l += 1,
                        _ => journal.push((b, 1)),
                    }
                    need -= 1;
                }
                b += 1;
            }
        }
        Some(Layout {
            geo,
            map,
            block_bitmap: bb,
            inode_bitmap: ib,
            inode_table: it,
            journal,
        })
    }

    /// Number of blocks of group `g` that the kernel marks used when it initialises a
    /// BLOCK_UNINIT group itself: its superblock copy and its own metadata if it lies inside.
    pub fn uninit_used(&self, g: u32) -> u64 {
        let start = self.geo.group_start(g);
        let end = start + self.geo.group_len(g);
        let inside = |b: u64| b >= start && b < end;
        let gi = g as usize;
        let mut n = self.geo.backup_len(g);
        n += u64::from(inside(self.block_bitmap[gi]));
        n += u64::from(inside(self.inode_bitmap[gi]));
        let it = self.inode_table[gi];
        n += (it..it + u64::from(self.geo.itb))
            .filter(|b| inside(*b))
            .count() as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u32> = (0..100).filter(|g| has_super(*g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn overhead_matches_layout() {
        for size in [8u64 << 20, 100 << 20, 600 << 20, 5 << 30] {
            let geo = Geometry::new(size, 100).ok().unwrap();
            let overhead = geo.overhead();
            let layout = Layout::new(geo).unwrap();
            assert_eq!(layout.map.count(0, layout.geo.blocks), overhead, "{size}");
        }
    }
}
