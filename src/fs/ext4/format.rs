//! On-disk encodings: checksums, inodes, in-inode xattrs, extent trees, directory blocks.

use super::layout::{BS, INODE_SIZE};
use super::Ext4Error;
use std::collections::BTreeMap;

/// The kernel's crc32c primitive (no pre/post inversion) continued from `seed`.
pub fn crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Per-inode checksum seed: fs seed, inode number, generation (always 0 here).
pub fn inode_seed(fs_seed: u32, ino: u32) -> u32 {
    crc(crc(fs_seed, &ino.to_le_bytes()), &0u32.to_le_bytes())
}

pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Seconds as (low 32 bits, extra field with the epoch bits), like ext4_encode_extra_time.
/// Times outside ext4's range (1901..2446) are clamped.
pub fn split_time(t: i64) -> (u32, u32) {
    let t = t.clamp(i64::from(i32::MIN), (3i64 << 32) + i64::from(i32::MAX));
    let lo = t as i32;
    let extra = ((t - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, extra)
}

pub const EXTENTS_FL: u32 = 0x80000;
pub const EXT_MAGIC: u16 = 0xF30A;
const EXT_PER_BLOCK: usize = (BS as usize - 12) / 12;
const EXT_MAX_LEN: u16 = 32768;

/// A file's mapping, built block by block as data is laid out.
#[derive(Debug, Default)]
pub struct Extents {
    /// (logical block, length, physical block)
    pub list: Vec<(u32, u16, u64)>,
}

impl Extents {
    pub fn push(&mut self, logical: u32, phys: u64) {
        if let Some(last) = self.list.last_mut() {
            let len = u64::from(last.1);
            if u64::from(last.0) + len == u64::from(logical)
                && last.2 + len == phys
                && last.1 < EXT_MAX_LEN
            {
                last.1 += 1;
                return;
            }
        }
        self.list.push((logical, 1, phys));
    }

    pub fn push_run(&mut self, logical: u32, phys: u64, len: u64) {
        for i in 0..len {
            self.push(logical + i as u32, phys + i);
        }
    }

    pub fn data_blocks(&self) -> u64 {
        self.list.iter().map(|e| u64::from(e.1)).sum()
    }
}

fn ext_header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, EXT_MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

/// Extent tree blocks needed for `n` extents (0 while they fit in the inode).
pub fn tree_blocks(mut n: u64) -> u64 {
    let mut total = 0;
    while n > 4 {
        n = n.div_ceil(EXT_PER_BLOCK as u64);
        total += n;
    }
    total
}

/// Builds the extent tree: the 60-byte i_block root, plus the tree blocks (leaves first, then
/// each index level), which `place` gives a physical block to and stores. Returns i_block and the
/// number of tree blocks.
pub fn build_extent_tree(
    ext: &Extents,
    seed: u32,
    place: &mut dyn FnMut(&[u8]) -> Result<u64, Ext4Error>,
) -> Result<([u8; 60], u64), Ext4Error> {
    let mut iblock = [0u8; 60];
    if ext.list.len() <= 4 {
        ext_header(&mut iblock, ext.list.len(), 4, 0);
        for (i, e) in ext.list.iter().enumerate() {
            put_extent(&mut iblock[12 + 12 * i..], *e);
        }
        return Ok((iblock, 0));
    }
    let mut tree = 0;
    // Each level: (first logical block, physical block) of the nodes below.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in ext.list.chunks(EXT_PER_BLOCK) {
        let mut blk = vec![0u8; BS as usize];
        ext_header(&mut blk, chunk.len(), EXT_PER_BLOCK, 0);
        for (i, e) in chunk.iter().enumerate() {
            put_extent(&mut blk[12 + 12 * i..], *e);
        }
        seal_ext_block(&mut blk, seed);
        level.push((chunk[0].0, place(&blk)?));
        tree += 1;
    }
    let mut depth = 1u16;
    while level.len() > 4 {
        let mut next = Vec::new();
        for chunk in level.chunks(EXT_PER_BLOCK) {
            let mut blk = vec![0u8; BS as usize];
            ext_header(&mut blk, chunk.len(), EXT_PER_BLOCK, depth);
            for (i, e) in chunk.iter().enumerate() {
                put_index(&mut blk[12 + 12 * i..], *e);
            }
            seal_ext_block(&mut blk, seed);
            next.push((chunk[0].0, place(&blk)?));
            tree += 1;
        }
        level = next;
        depth += 1;
    }
    ext_header(&mut iblock, level.len(), 4, depth);
    for (i, e) in level.iter().enumerate() {
        put_index(&mut iblock[12 + 12 * i..], *e);
    }
    Ok((iblock, tree))
}

fn put_extent(b: &mut [u8], (logical, len, phys): (u32, u16, u64)) {
    put32(b, 0, logical);
    put16(b, 4, len);
    put16(b, 6, (phys >> 32) as u16);
    put32(b, 8, phys as u32);
}

fn put_index(b: &mut [u8], (logical, phys): (u32, u64)) {
    put32(b, 0, logical);
    put32(b, 4, phys as u32);
    put16(b, 8, (phys >> 32) as u16);
}

fn seal_ext_block(blk: &mut [u8], seed: u32) {
    let tail = 12 + 12 * EXT_PER_BLOCK;
    let c = crc(seed, &blk[..tail]);
    put32(blk, tail, c);
}

/// Everything that goes into one inode.
pub struct InodeSpec<'a> {
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub time: i64,
    pub flags: u32,
    pub iblock: [u8; 60],
    /// Filesystem blocks owned (data and extent tree blocks).
    pub blocks: u64,
    pub xattrs: Option<&'a BTreeMap<Vec<u8>, Vec<u8>>>,
}

pub const EXTRA_ISIZE: u16 = 32;

/// Encodes an inode with its checksum.
pub fn encode_inode(spec: &InodeSpec, ino: u32, fs_seed: u32) -> Result<Vec<u8>, Ext4Error> {
    let mut b = vec![0u8; INODE_SIZE as usize];
    put16(&mut b, 0x0, spec.mode as u16);
    put16(&mut b, 0x2, spec.uid as u16);
    put32(&mut b, 0x4, spec.size as u32);
    let (t, extra) = split_time(spec.time);
    for off in [0x8, 0xC, 0x10, 0x90] {
        put32(&mut b, off, t);
    }
    for off in [0x84, 0x88, 0x8C, 0x94] {
        put32(&mut b, off, extra);
    }
    put16(&mut b, 0x18, spec.gid as u16);
    put16(&mut b, 0x1A, spec.links);
    let sectors = spec.blocks * (BS / 512);
    put32(&mut b, 0x1C, sectors as u32);
    put32(&mut b, 0x20, spec.flags);
    b[0x28..0x28 + 60].copy_from_slice(&spec.iblock);
    put32(&mut b, 0x6C, (spec.size >> 32) as u32);
    put16(&mut b, 0x74, (sectors >> 32) as u16);
    put16(&mut b, 0x78, (spec.uid >> 16) as u16);
    put16(&mut b, 0x7A, (spec.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    if let Some(x) = spec.xattrs.filter(|x| !x.is_empty()) {
        put_ibody_xattrs(&mut b, x, ino)?;
    }
    let c = crc(inode_seed(fs_seed, ino), &b);
    put16(&mut b, 0x7C, c as u16);
    put16(&mut b, 0x82, (c >> 16) as u16);
    Ok(b)
}

const XATTR_MAGIC: u32 = 0xEA02_0000;

/// Splits a full attribute name into ext4's name index and suffix.
fn xattr_index(name: &[u8]) -> Option<(u8, &[u8])> {
    // Longest prefixes first; ACLs are stored in ext4's own format, which we do not convert.
    const PREFIXES: [(&[u8], u8); 4] = [
        (b"user.", 1),
        (b"trusted.", 4),
        (b"security.", 6),
        (b"system.", 7),
    ];
    if name.starts_with(b"system.posix_acl_") {
        return None;
    }
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p) && name.len() > p.len())
        .map(|(p, i)| (*i, &name[p.len()..]))
}

fn xattr_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for c in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(*c);
    }
    for w in value.chunks(4) {
        let mut word = [0u8; 4];
        word[..w.len()].copy_from_slice(w);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(word);
    }
    h
}

/// Extended attributes stored after the extra inode fields (ext4 "ibody" attributes).
fn put_ibody_xattrs(
    b: &mut [u8],
    xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
    ino: u32,
) -> Result<(), Ext4Error> {
    let start = 128 + usize::from(EXTRA_ISIZE);
    put32(b, start, XATTR_MAGIC);
    let first = start + 4;
    let end = b.len();
    let mut entry = first;
    let mut value_end = end;
    for (name, value) in xattrs {
        let (index, suffix) = xattr_index(name).ok_or_else(|| {
            Ext4Error::Invalid(format!(
                "inode {ino}: unsupported extended attribute {}",
                String::from_utf8_lossy(name)
            ))
        })?;
        let esize = (16 + suffix.len() + 3) & !3;
        let vsize = (value.len() + 3) & !3;
        // Keep room for the 4-byte terminator after the last entry.
        if suffix.len() > 255 || entry + esize + 4 + vsize > value_end {
            return Err(Ext4Error::Invalid(format!(
                "inode {ino}: extended attributes do not fit in the inode ({} bytes available)",
                end - first - 4
            )));
        }
        let voff = if value.is_empty() {
            0
        } else {
            value_end -= vsize;
            b[value_end..value_end + value.len()].copy_from_slice(value);
            value_end - first
        };
        b[entry] = suffix.len() as u8;
        b[entry + 1] = index;
        put16(b, entry + 2, voff as u16);
        put32(b, entry + 4, 0);
        put32(b, entry + 8, value.len() as u32);
        put32(b, entry + 12, xattr_hash(suffix, value));
        b[entry + 16..entry + 16 + suffix.len()].copy_from_slice(suffix);
        entry += esize;
    }
    Ok(())
}

/// ext4 directory entry file types.
pub fn dirent_type(mode: u32) -> u8 {
    match mode & 0o170000 {
        0o100000 => 1,
        0o040000 => 2,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

const DIR_TAIL: usize = 12;
const DIR_SPACE: usize = BS as usize - DIR_TAIL;

fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// Blocks a linear directory with entries of these name lengths takes ("." and ".." included).
pub fn dir_block_count(name_lens: impl Iterator<Item = usize>) -> u64 {
    let mut blocks = 1;
    let mut pos = rec_len(1) + rec_len(2);
    for n in name_lens {
        let r = rec_len(n);
        if pos + r > DIR_SPACE {
            blocks += 1;
            pos = 0;
        }
        pos += r;
    }
    blocks
}

/// Packs directory entries (name, inode, file type) into checksummed linear directory blocks.
pub struct DirBuilder {
    blocks: Vec<Vec<u8>>,
    pos: usize,
    last: usize,
}

impl DirBuilder {
    pub fn new(ino: u32, parent: u32) -> DirBuilder {
        let mut d = DirBuilder {
            blocks: vec![vec![0u8; BS as usize]],
            pos: 0,
            last: 0,
        };
        d.add(b".", ino, 2);
        d.add(b"..", parent, 2);
        d
    }

    pub fn add(&mut self, name: &[u8], ino: u32, ftype: u8) {
        let r = rec_len(name.len());
        if self.pos + r > DIR_SPACE {
            self.close_block();
            self.blocks.push(vec![0u8; BS as usize]);
            self.pos = 0;
        }
        let Some(b) = self.blocks.last_mut() else {
            return;
        };
        let p = self.pos;
        put32(b, p, ino);
        put16(b, p + 4, r as u16);
        b[p + 6] = name.len() as u8;
        b[p + 7] = ftype;
        b[p + 8..p + 8 + name.len()].copy_from_slice(name);
        self.last = p;
        self.pos += r;
    }

    /// Stretches the last entry to the tail.
    fn close_block(&mut self) {
        if let Some(b) = self.blocks.last_mut() {
            put16(b, self.last + 4, (DIR_SPACE - self.last) as u16);
        }
    }

    /// Appends an empty block (lost+found is pre-sized so e2fsck can reconnect into it).
    pub fn add_empty_block(&mut self) {
        self.close_block();
        let mut b = vec![0u8; BS as usize];
        put16(&mut b, 4, DIR_SPACE as u16);
        self.blocks.push(b);
        self.last = 0;
        self.pos = DIR_SPACE;
    }

    /// The finished blocks, each with its checksum tail.
    pub fn finish(mut self, seed: u32) -> Vec<Vec<u8>> {
        self.close_block();
        for b in &mut self.blocks {
            put32(b, DIR_SPACE, 0);
            put16(b, DIR_SPACE + 4, DIR_TAIL as u16);
            b[DIR_SPACE + 6] = 0;
            b[DIR_SPACE + 7] = 0xDE;
            let c = crc(seed, &b[..DIR_SPACE]);
            put32(b, DIR_SPACE + 8, c);
        }
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_kernel_convention() {
        // Standard CRC-32C check value, and the kernel's raw form is its complement.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc(!0, b"123456789"), !0xE306_9283);
        // Continuation equals one pass.
        assert_eq!(crc(crc(7, b"abc"), b"def"), crc(7, b"abcdef"));
    }

    #[test]
    fn time_epoch_bits() {
        assert_eq!(split_time(0), (0, 0));
        assert_eq!(split_time(-1), (u32::MAX, 0));
        assert_eq!(split_time(1 << 31), (1 << 31, 1));
        assert_eq!(split_time(1 << 32), (0, 1));
    }

    #[test]
    fn dir_count_matches_builder() {
        for n in [0usize, 10, 300, 10_000] {
            let names: Vec<Vec<u8>> = (0..n)
                .map(|i| format!("name-{i:05}").into_bytes())
                .collect();
            let mut d = DirBuilder::new(2, 2);
            for name in &names {
                d.add(name, 12, 1);
            }
            let blocks = d.finish(0);
            assert_eq!(
                blocks.len() as u64,
                dir_block_count(names.iter().map(|n| n.len()))
            );
        }
    }

    #[test]
    fn tree_block_counts() {
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(340 * 4), 4);
        assert_eq!(tree_blocks(340 * 4 + 1), 6);
    }
}
