//! What is written after the data pass, from the counts it leaves: each group's inode table,
//! bitmaps and descriptor, the superblock and descriptor copies, and the journal.

use super::format::{self, crc, put16, put32};
use super::layout::{self, Geometry, BPG, BS, DESC_SIZE, FIRST_INO, INODE_SIZE, LOG_FLEX};
use super::{Ext4Error, Ext4Options, Fs};

/// Group descriptor flags.
const INODE_UNINIT: u16 = 0x1;
const BLOCK_UNINIT: u16 = 0x2;

/// Free blocks and inodes of the whole filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Free {
    pub(super) blocks: u64,
    pub(super) inodes: u64,
}

/// One 64-byte ext4 group descriptor; byte offsets (low part, high part) in the comments.
struct GroupDesc {
    /// 0x00, 0x20
    block_bitmap: u64,
    /// 0x04, 0x24
    inode_bitmap: u64,
    /// 0x08, 0x28
    inode_table: u64,
    /// 0x0C, 0x2C
    free_blocks: u64,
    /// 0x0E, 0x2E; also bg_itable_unused (0x1C, 0x32): inodes past the used ones are never
    /// initialised.
    free_inodes: u64,
    /// 0x10, 0x30
    used_dirs: u32,
    /// 0x12
    flags: u16,
    /// 0x18, 0x38
    block_bitmap_csum: u32,
    /// 0x1A, 0x3A
    inode_bitmap_csum: u32,
    // 0x1E: the descriptor's own checksum, computed by `encode`.
}

impl GroupDesc {
    fn encode(&self, group: u32, fs_seed: u32) -> [u8; DESC_SIZE as usize] {
        let mut d = [0u8; DESC_SIZE as usize];
        let (bb, ib, it) = (self.block_bitmap, self.inode_bitmap, self.inode_table);
        let (fb, fi, dirs) = (self.free_blocks, self.free_inodes, self.used_dirs);
        let (bbm_csum, ibm_csum) = (self.block_bitmap_csum, self.inode_bitmap_csum);
        put32(&mut d, 0x00, bb as u32);
        put32(&mut d, 0x04, ib as u32);
        put32(&mut d, 0x08, it as u32);
        put16(&mut d, 0x0C, fb as u16);
        put16(&mut d, 0x0E, fi as u16);
        put16(&mut d, 0x10, dirs as u16);
        put16(&mut d, 0x12, self.flags);
        put16(&mut d, 0x18, bbm_csum as u16);
        put16(&mut d, 0x1A, ibm_csum as u16);
        put16(&mut d, 0x1C, fi as u16);
        put32(&mut d, 0x20, (bb >> 32) as u32);
        put32(&mut d, 0x24, (ib >> 32) as u32);
        put32(&mut d, 0x28, (it >> 32) as u32);
        put16(&mut d, 0x2C, (fb >> 16) as u16);
        put16(&mut d, 0x2E, (fi >> 16) as u16);
        put16(&mut d, 0x30, (dirs >> 16) as u16);
        put16(&mut d, 0x32, (fi >> 16) as u16);
        put16(&mut d, 0x38, (bbm_csum >> 16) as u16);
        put16(&mut d, 0x3A, (ibm_csum >> 16) as u16);
        let c = crc(crc(fs_seed, &group.to_le_bytes()), &d);
        put16(&mut d, 0x1E, c as u16);
        d
    }
}

impl Fs<'_, '_> {
    /// Writes every group's inode table and bitmaps; returns the descriptor table and the free
    /// counts.
    pub(super) fn write_group_tables(&mut self) -> Result<(Vec<u8>, Free), Ext4Error> {
        let geo = &self.layout.geo.clone();
        let mut gdt = vec![0u8; geo.gdt_blocks as usize * BS as usize];
        let mut free = Free::default();
        for g in 0..geo.groups {
            let desc = self.write_group(g)?;
            free.blocks += desc.free_blocks;
            free.inodes += desc.free_inodes;
            let at = g as usize * DESC_SIZE as usize;
            gdt[at..at + DESC_SIZE as usize].copy_from_slice(&desc.encode(g, self.fs_seed));
        }
        Ok((gdt, free))
    }

    /// One group's inode table and bitmaps (those the kernel cannot initialise itself).
    fn write_group(&mut self, g: u32) -> Result<GroupDesc, Ext4Error> {
        let (layout, gi) = (self.layout, g as usize);
        let geo = &layout.geo;
        let first = u64::from(g) * u64::from(geo.ipg);
        let used = u64::from(self.plan.max_ino())
            .saturating_sub(first)
            .min(u64::from(geo.ipg));
        let mut flags = 0u16;
        let mut inode_bitmap_csum = 0;
        if used == 0 {
            flags |= INODE_UNINIT;
        } else {
            inode_bitmap_csum = self.write_inode_table(g, first, used)?;
        }
        let (start, len) = (geo.group_start(g), geo.group_len(g));
        let used_blocks = self.w.map.count(start, len);
        let mut block_bitmap_csum = 0;
        if g + 1 < geo.groups && used_blocks == layout.uninit_used(g) {
            flags |= BLOCK_UNINIT;
        } else {
            let bbm = self.w.map.group_bitmap(start);
            block_bitmap_csum = crc(self.fs_seed, &bbm);
            self.w.write_at(layout.block_bitmap[gi] * BS, &bbm)?;
        }
        Ok(GroupDesc {
            block_bitmap: layout.block_bitmap[gi],
            inode_bitmap: layout.inode_bitmap[gi],
            inode_table: layout.inode_table[gi],
            free_blocks: len - used_blocks,
            free_inodes: u64::from(geo.ipg) - used,
            used_dirs: self.dirs_in_group[gi],
            flags,
            block_bitmap_csum,
            inode_bitmap_csum,
        })
    }

    /// Writes the `used` inodes of group `g` from `first` and the group's inode bitmap; returns
    /// the bitmap's checksum.
    fn write_inode_table(&mut self, g: u32, first: u64, used: u64) -> Result<u32, Ext4Error> {
        let (layout, gi) = (self.layout, g as usize);
        let lo = first as usize * INODE_SIZE as usize;
        let hi = (first + used) as usize * INODE_SIZE as usize;
        let mut table = self.itab[lo..hi].to_vec();
        table.resize(table.len().next_multiple_of(BS as usize), 0);
        self.w.write_at(layout.inode_table[gi] * BS, &table)?;
        // Padding bits past the group's last inode are set, as mke2fs writes them.
        let mut ibm = vec![0u8; BS as usize];
        for i in (0..used).chain(u64::from(layout.geo.ipg)..BS * 8) {
            ibm[(i / 8) as usize] |= 1 << (i % 8);
        }
        let csum = crc(self.fs_seed, &ibm[..layout.geo.ipg as usize / 8]);
        self.w.write_at(layout.inode_bitmap[gi] * BS, &ibm)?;
        Ok(csum)
    }

    /// The superblock and descriptor table in group 0 and each backup group.
    pub(super) fn write_superblocks(
        &mut self,
        sb: &Superblock,
        gdt: &[u8],
    ) -> Result<(), Ext4Error> {
        let geo = &self.layout.geo;
        for g in (0..geo.groups).filter(|g| layout::has_super(*g)) {
            let start = geo.group_start(g) * BS;
            let bytes = sb.encode(g as u16);
            self.w.write_at(if g == 0 { 1024 } else { start }, &bytes)?;
            self.w.write_at(start + BS, gdt)?;
        }
        Ok(())
    }

    /// The log itself is zeros, written as such (they stay holes in the image file but are
    /// mapped): a card that held this same image before may still carry its old journal blocks,
    /// whose sequence numbers and checksums (same UUID) jbd2 recovery would accept. Then the
    /// journal superblock.
    pub(super) fn write_journal(&mut self) -> Result<(), Ext4Error> {
        let layout = self.layout;
        let zeros = vec![0u8; 1 << 20];
        for &(start, len) in &layout.journal {
            let (mut at, end) = (start * BS, (start + len) * BS);
            while at < end {
                let n = (end - at).min(zeros.len() as u64);
                self.w.write_at(at, &zeros[..n as usize])?;
                at += n;
            }
        }
        let jsb = journal_superblock(&layout.geo, self.opts);
        self.w.write_at(layout.journal[0].0 * BS, &jsb)
    }
}

pub(super) struct Superblock<'a> {
    pub(super) geo: &'a Geometry,
    pub(super) opts: &'a Ext4Options,
    pub(super) free_blocks: u64,
    pub(super) free_inodes: u64,
    pub(super) jblock: &'a [u8; 60],
    pub(super) jsize: u64,
}

const COMPAT: u32 = 0x4 | 0x8 | 0x20; // has_journal, ext_attr, dir_index
const INCOMPAT: u32 = 0x2 | 0x40 | 0x80 | 0x200; // filetype, extent, 64bit, flex_bg
                                                 // sparse_super, large_file, huge_file, dir_nlink, extra_isize, metadata_csum
const RO_COMPAT: u32 = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400;

impl Superblock<'_> {
    pub(super) fn encode(&self, group: u16) -> Vec<u8> {
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
        // s_state: clean in the primary. Backups say "not clean", as libext2fs writes them: a
        // checker that has to fall back to one then checks the whole filesystem (its uninit
        // flags are dropped on that path, and bitmaps never written would otherwise be taken
        // as they are).
        put16(&mut s, 0x3A, u16::from(group == 0));
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
mod tests {
    use super::*;

    #[test]
    fn group_descriptor_fields_sit_at_their_offsets() {
        let d = GroupDesc {
            block_bitmap: 0x1_0000_0002,
            inode_bitmap: 0x3_0000_0004,
            inode_table: 0x5_0000_0006,
            free_blocks: 0x7_0008,
            free_inodes: 0x9_000A,
            used_dirs: 0xB_000C,
            flags: INODE_UNINIT | BLOCK_UNINIT,
            block_bitmap_csum: 0xD_000E,
            inode_bitmap_csum: 0xF_0010,
        }
        .encode(3, 0x1234_5678);
        let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
        assert_eq!((u32_at(0x00), u32_at(0x20)), (2, 1));
        assert_eq!((u32_at(0x04), u32_at(0x24)), (4, 3));
        assert_eq!((u32_at(0x08), u32_at(0x28)), (6, 5));
        assert_eq!((u16_at(0x0C), u16_at(0x2C)), (8, 7));
        assert_eq!((u16_at(0x0E), u16_at(0x2E)), (0xA, 9));
        assert_eq!((u16_at(0x1C), u16_at(0x32)), (0xA, 9));
        assert_eq!((u16_at(0x10), u16_at(0x30)), (0xC, 0xB));
        assert_eq!(u16_at(0x12), 3);
        assert_eq!((u16_at(0x18), u16_at(0x38)), (0xE, 0xD));
        assert_eq!((u16_at(0x1A), u16_at(0x3A)), (0x10, 0xF));
        // The checksum covers the descriptor with its own field zero, seeded with the group.
        let mut zeroed = d;
        zeroed[0x1E..0x20].fill(0);
        let c = crc(crc(0x1234_5678, &3u32.to_le_bytes()), &zeroed);
        assert_eq!(u16_at(0x1E), c as u16);
    }
}
