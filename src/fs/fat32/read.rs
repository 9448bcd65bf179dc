//! Read-only FAT reader: enough to list and read files of a boot partition inside a disk image
//! (`piimg qemu` takes the kernel, device tree, initramfs, config.txt and cmdline.txt from it).
//!
//! Parses the BPB, follows FAT chains and reads directories with VFAT long names. FAT32 is the
//! target; FAT12/16 (fixed root directory) are read too, since mkfs.vfat picks them for small
//! volumes. Every offset read from the volume is bounds-checked, and chains are cut at the
//! volume's cluster count, so a corrupt image gives an error, never a hang.

use std::io::{Read, Seek, SeekFrom, Write};

#[derive(Debug, thiserror::Error)]
pub enum FatReadError {
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a FAT filesystem: {0}")]
    NotFat(String),
    #[error("corrupt FAT filesystem: {0}")]
    Corrupt(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotDir(String),
    #[error("{0}: is a directory")]
    IsDir(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// One directory entry, long name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The long name when a valid one precedes the short entry, else the 8.3 name (lower-cased
    /// parts as the NT case flags say).
    pub name: String,
    /// The 8.3 name as stored, e.g. `KERNEL8.IMG`.
    pub short_name: String,
    pub attr: u8,
    pub first_cluster: u32,
    pub size: u32,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }
}

const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;

/// A FAT volume at byte `offset` of `dev` (a whole disk image or a partition file).
pub struct FatVolume<R> {
    dev: R,
    offset: u64,
    fat_type: FatType,
    bytes_per_sector: u64,
    cluster_bytes: u64,
    /// Byte offset of the first FAT, from the volume start.
    fat_start: u64,
    /// FAT12/16: byte offset and size of the fixed root directory.
    root_dir: (u64, u64),
    root_cluster: u32,
    data_start: u64,
    /// Highest valid cluster number + 1.
    cluster_end: u32,
    volume_bytes: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The boot sector fields the reader uses (the BIOS parameter block); byte offsets in the
/// comments.
struct Bpb {
    /// 11
    bytes_per_sector: u16,
    /// 13
    sectors_per_cluster: u8,
    /// 14
    reserved_sectors: u16,
    /// 16
    fats: u8,
    /// 17: entries of the fixed root directory (FAT12/16).
    root_entries: u16,
    /// 19 (16 bits), or 32 when that is 0.
    total_sectors: u64,
    /// 22 (16 bits), or 36 (FAT32) when that is 0.
    fat_sectors: u64,
    /// 44 (FAT32 only).
    root_cluster: u32,
}

impl Bpb {
    /// Reads and checks the fields of a boot sector.
    fn parse(b: &[u8; 512]) -> Result<Bpb, FatReadError> {
        let bpb = Bpb {
            bytes_per_sector: le16(b, 11),
            sectors_per_cluster: b[13],
            reserved_sectors: le16(b, 14),
            fats: b[16],
            root_entries: le16(b, 17),
            total_sectors: match le16(b, 19) {
                0 => u64::from(le32(b, 32)),
                n => u64::from(n),
            },
            fat_sectors: match le16(b, 22) {
                0 => u64::from(le32(b, 36)),
                n => u64::from(n),
            },
            root_cluster: le32(b, 44),
        };
        let (bps, spc) = (bpb.bytes_per_sector, bpb.sectors_per_cluster);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(FatReadError::NotFat(format!("{bps} bytes per sector")));
        }
        if spc == 0 || !spc.is_power_of_two() {
            return Err(FatReadError::NotFat(format!("{spc} sectors per cluster")));
        }
        if bpb.reserved_sectors == 0 || bpb.fats == 0 {
            return Err(FatReadError::NotFat(
                "no reserved sectors or no FAT".to_string(),
            ));
        }
        if bpb.total_sectors == 0 || bpb.fat_sectors == 0 {
            return Err(FatReadError::NotFat(
                "zero total sectors or FAT size".to_string(),
            ));
        }
        Ok(bpb)
    }

    /// Data clusters: what the sectors after the reserved ones, the FATs and the fixed root
    /// directory hold.
    fn clusters(&self) -> Result<u64, FatReadError> {
        Ok(self
            .total_sectors
            .checked_sub(self.data_sector())
            .ok_or_else(|| FatReadError::Corrupt("the data area starts past the end".into()))?
            / u64::from(self.sectors_per_cluster))
    }

    /// First sector of the data area.
    fn data_sector(&self) -> u64 {
        let bps = u64::from(self.bytes_per_sector);
        let root_dir_sectors = (u64::from(self.root_entries) * 32).div_ceil(bps);
        u64::from(self.reserved_sectors)
            + u64::from(self.fats) * self.fat_sectors
            + root_dir_sectors
    }
}

/// Microsoft's rule: the type follows from the cluster count alone.
fn fat_type_of(clusters: u64) -> FatType {
    if clusters < 4085 {
        FatType::Fat12
    } else if clusters < 65525 {
        FatType::Fat16
    } else {
        FatType::Fat32
    }
}

impl<R: Read + Seek> FatVolume<R> {
    /// Parses the boot sector (BPB) of the volume at `offset`.
    pub fn open(mut dev: R, offset: u64) -> Result<Self, FatReadError> {
        let mut b = [0u8; 512];
        dev.seek(SeekFrom::Start(offset))?;
        dev.read_exact(&mut b)?;
        if b[510] != 0x55 || b[511] != 0xaa {
            return Err(FatReadError::NotFat(format!(
                "no boot signature at byte {offset}"
            )));
        }
        let bpb = Bpb::parse(&b)?;
        let bps = u64::from(bpb.bytes_per_sector);
        let clusters = bpb.clusters()?;
        let fat_type = fat_type_of(clusters);
        let root_cluster = if fat_type == FatType::Fat32 {
            bpb.root_cluster
        } else {
            0
        };
        let fat_bytes = bpb.fat_sectors * bps;
        let fat_entries = match fat_type {
            FatType::Fat12 => fat_bytes * 2 / 3,
            FatType::Fat16 => fat_bytes / 2,
            FatType::Fat32 => fat_bytes / 4,
        };
        let cluster_end = (clusters + 2).min(fat_entries).min(0x0fff_fff7) as u32;
        if fat_type == FatType::Fat32 && !(2..cluster_end).contains(&root_cluster) {
            return Err(FatReadError::Corrupt(format!(
                "root directory cluster {root_cluster} out of range"
            )));
        }
        let fat_start = u64::from(bpb.reserved_sectors) * bps;
        Ok(FatVolume {
            dev,
            offset,
            fat_type,
            bytes_per_sector: bps,
            cluster_bytes: u64::from(bpb.sectors_per_cluster) * bps,
            fat_start,
            root_dir: (
                fat_start + u64::from(bpb.fats) * fat_bytes,
                u64::from(bpb.root_entries) * 32,
            ),
            root_cluster,
            data_start: bpb.data_sector() * bps,
            cluster_end,
            volume_bytes: bpb.total_sectors * bps,
        })
    }

    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_bytes
    }

    pub fn sector_bytes(&self) -> u64 {
        self.bytes_per_sector
    }

    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<(), FatReadError> {
        if at + buf.len() as u64 > self.volume_bytes {
            return Err(FatReadError::Corrupt(format!(
                "read of {} bytes at {at} past the volume's end ({})",
                buf.len(),
                self.volume_bytes
            )));
        }
        self.dev.seek(SeekFrom::Start(self.offset + at))?;
        self.dev.read_exact(buf)?;
        Ok(())
    }

    /// The FAT entry of `cluster` (from the first FAT).
    fn next_cluster(&mut self, cluster: u32) -> Result<u32, FatReadError> {
        match self.fat_type {
            FatType::Fat32 => {
                let mut e = [0u8; 4];
                self.read_at(self.fat_start + u64::from(cluster) * 4, &mut e)?;
                Ok(u32::from_le_bytes(e) & 0x0fff_ffff)
            }
            FatType::Fat16 => {
                let mut e = [0u8; 2];
                self.read_at(self.fat_start + u64::from(cluster) * 2, &mut e)?;
                Ok(u32::from(u16::from_le_bytes(e)))
            }
            FatType::Fat12 => {
                let mut e = [0u8; 2];
                let at = u64::from(cluster) + u64::from(cluster) / 2;
                self.read_at(self.fat_start + at, &mut e)?;
                let v = u16::from_le_bytes(e);
                Ok(u32::from(if cluster & 1 == 1 { v >> 4 } else { v & 0xfff }))
            }
        }
    }

    fn is_end(&self, c: u32) -> bool {
        match self.fat_type {
            FatType::Fat12 => c >= 0xff8,
            FatType::Fat16 => c >= 0xfff8,
            FatType::Fat32 => c >= 0x0fff_fff8,
        }
    }

    /// The clusters of the chain starting at `first` (empty for cluster 0).
    pub fn chain(&mut self, first: u32) -> Result<Vec<u32>, FatReadError> {
        let mut out = Vec::new();
        // A loop is caught at its first repeated cluster: the cluster count comes from the boot
        // sector, and a hostile one would make a bound on the length run for hundreds of
        // millions of steps.
        let mut seen = std::collections::HashSet::new();
        let mut c = first;
        if c == 0 {
            return Ok(out);
        }
        loop {
            if !(2..self.cluster_end).contains(&c) {
                return Err(FatReadError::Corrupt(format!(
                    "cluster {c} in the chain from {first} is out of range"
                )));
            }
            if !seen.insert(c) {
                return Err(FatReadError::Corrupt(format!(
                    "the chain from cluster {first} loops"
                )));
            }
            out.push(c);
            let n = self.next_cluster(c)?;
            if self.is_end(n) {
                return Ok(out);
            }
            c = n;
        }
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * self.cluster_bytes
    }

    /// Reads the whole chain (directories).
    fn read_chain(&mut self, first: u32) -> Result<Vec<u8>, FatReadError> {
        let chain = self.chain(first)?;
        let mut out = vec![0u8; chain.len() * self.cluster_bytes as usize];
        for (i, c) in chain.iter().enumerate() {
            let at = self.cluster_offset(*c);
            let cb = self.cluster_bytes as usize;
            self.read_at(at, &mut out[i * cb..(i + 1) * cb])?;
        }
        Ok(out)
    }

    /// The raw entries of the root directory.
    fn root_bytes(&mut self) -> Result<Vec<u8>, FatReadError> {
        if self.fat_type == FatType::Fat32 {
            self.read_chain(self.root_cluster)
        } else {
            let (at, len) = self.root_dir;
            let mut buf = vec![0u8; len as usize];
            self.read_at(at, &mut buf)?;
            Ok(buf)
        }
    }

    /// The entries of the root directory (without `.`, `..` and the volume label).
    pub fn root(&mut self) -> Result<Vec<Entry>, FatReadError> {
        let raw = self.root_bytes()?;
        Ok(parse_dir(&raw))
    }

    /// The entries of the directory at `path` (`/`-separated, case-insensitive, as FAT is).
    pub fn read_dir(&mut self, path: &str) -> Result<Vec<Entry>, FatReadError> {
        let mut entries = self.root()?;
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            walked.push('/');
            walked.push_str(part);
            let e = find(&entries, part).ok_or_else(|| FatReadError::NotFound(walked.clone()))?;
            if !e.is_dir() {
                return Err(FatReadError::NotDir(walked));
            }
            entries = if e.first_cluster == 0 {
                // `..` of a first-level directory points at the root as cluster 0.
                self.root()?
            } else {
                let raw = self.read_chain(e.first_cluster)?;
                parse_dir(&raw)
            };
        }
        Ok(entries)
    }

    /// The entry at `path`.
    pub fn lookup(&mut self, path: &str) -> Result<Entry, FatReadError> {
        let path = path.trim_matches('/');
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.is_empty() {
            return Err(FatReadError::NotFound("/".into()));
        }
        let entries = self.read_dir(dir)?;
        find(&entries, name)
            .cloned()
            .ok_or_else(|| FatReadError::NotFound(format!("/{path}")))
    }

    /// Copies the file at `path` into `out`; returns its size.
    pub fn copy_file(&mut self, path: &str, out: &mut dyn Write) -> Result<u64, FatReadError> {
        let e = self.lookup(path)?;
        if e.is_dir() {
            return Err(FatReadError::IsDir(path.to_string()));
        }
        let size = u64::from(e.size);
        let chain = self.chain(e.first_cluster)?;
        if (chain.len() as u64) * self.cluster_bytes < size {
            return Err(FatReadError::Corrupt(format!(
                "{path}: {size} bytes but only {} clusters",
                chain.len()
            )));
        }
        let mut left = size;
        let mut buf = vec![0u8; self.cluster_bytes as usize];
        // Runs of consecutive clusters are read in one go (our writer and mkfs lay files out
        // contiguously), at most 1 MiB at a time.
        let mut i = 0;
        while left > 0 {
            let start = chain[i];
            let mut run = 1;
            while i + run < chain.len()
                && chain[i + run] == start + run as u32
                && (run as u64 + 1) * self.cluster_bytes <= (1 << 20)
            {
                run += 1;
            }
            let want = (run as u64 * self.cluster_bytes).min(left) as usize;
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let at = self.cluster_offset(start);
            self.read_at(at, &mut buf[..want])?;
            out.write_all(&buf[..want])?;
            left -= want as u64;
            i += run;
        }
        Ok(size)
    }

    /// The file at `path` as bytes.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FatReadError> {
        let mut v = Vec::new();
        self.copy_file(path, &mut v)?;
        Ok(v)
    }

    /// Every file and directory below the root as (`/path`, entry), depth first, in directory
    /// order.
    pub fn walk(&mut self) -> Result<Vec<(String, Entry)>, FatReadError> {
        let mut out = Vec::new();
        let mut stack: Vec<(String, Vec<Entry>)> = vec![(String::new(), self.root()?)];
        let mut dirs = 0u32;
        while let Some((prefix, entries)) = stack.pop() {
            let mut subdirs = Vec::new();
            for e in entries {
                let p = format!("{prefix}/{}", e.name);
                if e.is_dir() && e.first_cluster != 0 {
                    dirs += 1;
                    if dirs > self.cluster_end {
                        return Err(FatReadError::Corrupt("directory cycle".into()));
                    }
                    let raw = self.read_chain(e.first_cluster)?;
                    subdirs.push((p.clone(), parse_dir(&raw)));
                }
                out.push((p, e));
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(out)
    }
}

impl<R: Read + Seek> FatVolume<R> {
    /// Names what lives at byte `at` of the volume: a reserved sector, a FAT, the entry of a
    /// directory (and whose entry it is) or the content of a file (used by `piimg verify` to
    /// explain where two images differ).
    pub fn locate(&mut self, at: u64) -> Result<String, FatReadError> {
        let bps = self.bytes_per_sector;
        if at >= self.volume_bytes {
            return Ok(format!("byte {at}: past the end of the volume"));
        }
        if at < self.fat_start {
            let what = match at / bps {
                0 => "boot sector (BPB)",
                1 => "FSInfo sector",
                6 => "backup boot sector",
                7 => "backup FSInfo sector",
                _ => "reserved sectors",
            };
            return Ok(format!("{what}, byte {} of its sector", at % bps));
        }
        let (root_at, root_len) = self.root_dir;
        if at < root_at {
            let fat_bytes = (root_at - self.fat_start) / u64::from(self.fat_copies());
            let copy = (at - self.fat_start) / fat_bytes;
            let entry_bytes = match self.fat_type {
                FatType::Fat32 => 4,
                FatType::Fat16 => 2,
                FatType::Fat12 => 1,
            };
            return Ok(format!(
                "FAT #{} (entry of cluster ~{})",
                copy + 1,
                (at - self.fat_start - copy * fat_bytes) / entry_bytes
            ));
        }
        if at < self.data_start {
            if at < root_at + root_len {
                let raw = self.root_bytes()?;
                return Ok(describe_dir_entry("/", &raw, at - root_at));
            }
            return Ok("between the FATs and the data area".into());
        }
        let cluster = ((at - self.data_start) / self.cluster_bytes) as u32 + 2;
        let within = (at - self.data_start) % self.cluster_bytes;
        if cluster >= self.cluster_end {
            return Ok("past the last cluster".into());
        }
        // Which chain holds the cluster: the root, a directory or a file.
        let mut owners: Vec<(String, u32, bool)> = vec![("/".into(), self.root_cluster, true)];
        for (p, e) in self.walk()? {
            owners.push((p, e.first_cluster, e.is_dir()));
        }
        for (path, first, is_dir) in owners {
            if first < 2 {
                continue;
            }
            let chain = self.chain(first)?;
            let Some(idx) = chain.iter().position(|&c| c == cluster) else {
                continue;
            };
            let off = idx as u64 * self.cluster_bytes + within;
            if is_dir {
                let raw = self.read_chain(first)?;
                return Ok(describe_dir_entry(&path, &raw, off));
            }
            return Ok(format!("content of {path}, byte {off}"));
        }
        Ok(format!("cluster {cluster}, used by no file (free space)"))
    }

    fn fat_copies(&mut self) -> u32 {
        let mut b = [0u8; 1];
        if self.read_at(16, &mut b).is_err() {
            return 1;
        }
        u32::from(b[0].max(1))
    }
}

/// What the directory entry at byte `off` of a directory's raw entries belongs to.
fn describe_dir_entry(dir: &str, raw: &[u8], off: u64) -> String {
    let idx = (off / 32) as usize;
    let field = match off % 32 {
        0..=10 => "name",
        11 => "attributes",
        12 => "case flags",
        13..=17 => "creation time",
        18..=19 => "access date",
        20..=21 | 26..=27 => "first cluster",
        22..=25 => "modification time",
        _ => "size",
    };
    let Some(e) = raw.chunks_exact(32).nth(idx) else {
        return format!("directory {dir}, past its entries");
    };
    if e[0] == 0 {
        return format!("directory {dir}, unused entry space");
    }
    if e[11] & 0x3f == ATTR_LFN {
        // Long-name pieces precede their short entry: name the file they belong to.
        let next = raw
            .chunks_exact(32)
            .skip(idx)
            .position(|x| x[11] & 0x3f != ATTR_LFN)
            .map(|p| idx + p);
        let name = next
            .and_then(|n| {
                let start = n.saturating_sub(20) * 32;
                parse_dir(&raw[start..(n + 1) * 32]).pop()
            })
            .map_or_else(|| "?".to_string(), |e| e.name);
        return format!("directory {dir}, long-name entry of {name:?}");
    }
    if e[11] & ATTR_VOLUME != 0 {
        return format!("directory {dir}, volume label entry ({field})");
    }
    let (stored, _) = short_name(e);
    if e[0] == 0xe5 || stored == "." || stored == ".." {
        return format!("directory {dir}, entry {stored:?} ({field})");
    }
    let start = idx.saturating_sub(20) * 32;
    let name = parse_dir(&raw[start..(idx + 1) * 32])
        .pop()
        .map_or(stored, |e| e.name);
    format!("directory {dir}, entry of {name:?} ({field})")
}

fn find<'e>(entries: &'e [Entry], name: &str) -> Option<&'e Entry> {
    let lower = name.to_lowercase();
    entries
        .iter()
        .find(|e| e.name.to_lowercase() == lower || e.short_name.eq_ignore_ascii_case(name))
}

/// The upper half of code page 437, the OEM code page Linux and mtools (850 agrees on letters
/// such as é) use for short names.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■ ";

/// Short-name bytes are in an OEM code page: decoded as code page 437.
fn oem(bytes: &[u8], lower: bool) -> String {
    bytes
        .iter()
        .flat_map(|&b| {
            let c = if b < 0x80 {
                char::from(b)
            } else {
                CP437_HIGH.chars().nth(usize::from(b - 0x80)).unwrap_or('?')
            };
            let mut one = [c; 1].into_iter().collect::<String>();
            if lower {
                one = one.to_lowercase();
            }
            one.chars().collect::<Vec<_>>()
        })
        .collect()
}

fn short_name(e: &[u8]) -> (String, String) {
    let mut base = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xe5;
    }
    let trim = |v: &[u8]| -> Vec<u8> {
        let end = v.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        v[..end].to_vec()
    };
    let base = trim(&base);
    let ext = trim(&e[8..11]);
    let case = e[12];
    let stored = if ext.is_empty() {
        oem(&base, false)
    } else {
        format!("{}.{}", oem(&base, false), oem(&ext, false))
    };
    let shown_base = oem(&base, case & 0x08 != 0);
    let shown = if ext.is_empty() {
        shown_base
    } else {
        format!("{shown_base}.{}", oem(&ext, case & 0x10 != 0))
    };
    (stored, shown)
}

fn lfn_checksum(short: &[u8]) -> u8 {
    short[..11]
        .iter()
        .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b))
}

/// Parses raw directory entries (32 bytes each) up to the end marker.
pub fn parse_dir(raw: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    // Long-name pieces collected so far: (sequence number, checksum, 13 UTF-16 units).
    let mut lfn: Vec<(u8, u8, [u16; 13])> = Vec::new();
    for e in raw.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xe5 => {
                lfn.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3f == ATTR_LFN {
            let seq = e[0];
            if seq & 0x40 != 0 {
                lfn.clear();
            }
            let mut units = [0u16; 13];
            let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
            for (u, &o) in units.iter_mut().zip(offsets.iter()) {
                *u = le16(e, o);
            }
            lfn.push((seq & 0x1f, e[13], units));
            continue;
        }
        let pieces = std::mem::take(&mut lfn);
        if attr & ATTR_VOLUME != 0 {
            continue;
        }
        let (stored, shown) = short_name(e);
        if stored == "." || stored == ".." {
            continue;
        }
        let long = long_name(&pieces, lfn_checksum(e));
        out.push(Entry {
            name: long.unwrap_or(shown),
            short_name: stored,
            attr,
            first_cluster: (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26)),
            size: le32(e, 28),
        });
    }
    out
}

/// The long name from its pieces (stored last piece first), if they are complete and belong to
/// the short entry whose checksum is `sum`.
fn long_name(pieces: &[(u8, u8, [u16; 13])], sum: u8) -> Option<String> {
    if pieces.is_empty() {
        return None;
    }
    let n = pieces.len();
    for (i, (seq, s, _)) in pieces.iter().enumerate() {
        if *s != sum || usize::from(*seq) != n - i {
            return None;
        }
    }
    let mut units: Vec<u16> = Vec::with_capacity(n * 13);
    for (_, _, u) in pieces.iter().rev() {
        units.extend_from_slice(u);
    }
    if let Some(end) = units.iter().position(|&u| u == 0) {
        units.truncate(end);
    }
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot sector that claims ~2^28 clusters and a root directory whose chain loops after two
    /// clusters: the loop is named at its first repeat, not after 2^28 steps.
    #[test]
    fn a_chain_loop_under_a_huge_cluster_count_is_named_at_once() {
        let mut d = vec![0u8; 64 << 10];
        d[11..13].copy_from_slice(&512u16.to_le_bytes());
        d[13] = 1; // sectors per cluster
        d[14..16].copy_from_slice(&32u16.to_le_bytes()); // reserved
        d[16] = 1; // FATs
        d[32..36].copy_from_slice(&0xffff_fff0u32.to_le_bytes()); // total sectors
        d[36..40].copy_from_slice(&2_000_000u32.to_le_bytes()); // FAT sectors
        d[44..48].copy_from_slice(&2u32.to_le_bytes()); // root cluster
        d[510] = 0x55;
        d[511] = 0xaa;
        let fat = 32 * 512;
        d[fat + 8..fat + 12].copy_from_slice(&3u32.to_le_bytes());
        d[fat + 12..fat + 16].copy_from_slice(&2u32.to_le_bytes());
        let mut v = FatVolume::open(std::io::Cursor::new(d), 0).unwrap();
        assert!(v.cluster_end > 100_000_000, "{}", v.cluster_end);
        let e = v.chain(2).unwrap_err();
        assert!(e.to_string().contains("loops"), "{e}");
    }

    #[test]
    fn short_names_and_case_flags() {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(b"CONFIG  TXT");
        e[12] = 0x18;
        e[11] = 0x20;
        let v = parse_dir(&e);
        assert_eq!(v[0].name, "config.txt");
        assert_eq!(v[0].short_name, "CONFIG.TXT");
        e[12] = 0x08;
        assert_eq!(parse_dir(&e)[0].name, "config.TXT");
        // 0x05 stands for a leading 0xE5 byte.
        e[0] = 0x05;
        assert_eq!(parse_dir(&e)[0].short_name, "\u{3c3}ONFIG.TXT");
    }

    #[test]
    fn orphan_long_name_is_ignored() {
        // A long-name piece whose checksum does not match the short entry that follows.
        let mut raw = vec![0u8; 64];
        raw[0] = 0x41;
        raw[11] = ATTR_LFN;
        raw[13] = 0x00;
        raw[1] = b'x';
        raw[32..43].copy_from_slice(b"README     ");
        raw[43] = 0x20;
        let v = parse_dir(&raw);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "README");
    }

    use crate::tree::{FileData, Meta, Tree};
    use std::collections::BTreeMap;
    use std::process::Command;

    /// Files with long, mixed-case, multi-piece and non-ASCII names, a few sizes around cluster
    /// boundaries, nested folders.
    fn sample() -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let pat = |n: usize, k: u8| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ k).collect();
        m.insert(
            "config.txt".to_string(),
            b"arm_64bit=1\nkernel=kernel8.img\n".to_vec(),
        );
        m.insert("CMDLINE.TXT".to_string(), b"console=ttyAMA0\n".to_vec());
        m.insert("kernel8.img".to_string(), pat(3 * 4096 + 17, 1));
        m.insert("empty".to_string(), Vec::new());
        m.insert(
            "overlays/a-very-long-file-name-that-needs-three-lfn-pieces.dtbo".to_string(),
            pat(512, 2),
        );
        m.insert("overlays/Mixed.Case.Name.txt".to_string(), pat(4096, 3));
        m.insert("deep/er/still/f\u{e9}te.bin".to_string(), pat(100_000, 4));
        m
    }

    fn check_volume(img: &std::path::Path, offset: u64, files: &BTreeMap<String, Vec<u8>>) {
        let mut v = FatVolume::open(File::open(img).unwrap(), offset).unwrap();
        assert_eq!(v.fat_type(), FatType::Fat32);
        for (path, data) in files {
            assert_eq!(&v.read_file(path).unwrap(), data, "{path}");
            // FAT names are case-insensitive.
            assert_eq!(&v.read_file(&path.to_uppercase()).unwrap(), data, "{path}");
        }
        let walked: Vec<String> = v
            .walk()
            .unwrap()
            .into_iter()
            .filter(|(_, e)| !e.is_dir())
            .map(|(p, _)| p)
            .collect();
        let mut want: Vec<String> = files.keys().map(|k| format!("/{k}")).collect();
        let mut got = walked.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert!(matches!(
            v.read_file("nope.txt"),
            Err(FatReadError::NotFound(_))
        ));
        assert!(matches!(
            v.read_file("overlays"),
            Err(FatReadError::IsDir(_))
        ));
        let names: Vec<String> = v
            .read_dir("/overlays")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(
            names.contains(&"Mixed.Case.Name.txt".to_string()),
            "{names:?}"
        );
    }

    use std::fs::File;

    #[test]
    fn reads_what_mkfs_vfat_and_mcopy_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        let files = sample();
        // 1 MiB in, like a partition; mkfs.vfat --offset writes the filesystem there.
        let offset = 1u64 << 20;
        File::create(&img)
            .unwrap()
            .set_len(offset + (40 << 20))
            .unwrap();
        let st = Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "TESTVOL", "--offset", "2048"])
            .arg(&img)
            .arg(((40u64 << 20) / 1024).to_string())
            .output()
            .expect("mkfs.vfat (apt-get install dosfstools)");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let src = dir.path().join("src");
        for (p, d) in &files {
            let f = src.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, d).unwrap();
        }
        let mut entries: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        let st = Command::new("mcopy")
            .arg("-s")
            .arg("-i")
            .arg(format!("{}@@{offset}", img.display()))
            .args(&entries)
            .arg("::")
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("mcopy (apt-get install mtools)");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        check_volume(&img, offset, &files);
        // The label entry is not a file.
        let mut v = FatVolume::open(File::open(&img).unwrap(), offset).unwrap();
        assert!(v.root().unwrap().iter().all(|e| e.name != "TESTVOL"));
    }

    #[test]
    fn reads_what_our_writer_wrote() {
        let files = sample();
        let mut t = Tree::new(Meta::root(0o755, 0));
        for (p, d) in &files {
            t.add_file(p, Meta::root(0o644, 0), FileData::from_bytes(d.clone()))
                .unwrap();
        }
        let offset = 1u64 << 20;
        let size = 40u64 << 20;
        let mut sink = crate::fs::sparse::MemSink::new(offset + size);
        crate::fs::fat32::write(
            &t,
            &crate::fs::fat32::FatOptions {
                size,
                label: "PIIMG".into(),
                volume_id: 1,
                timestamp: 1_767_225_600,
                hidden_sectors: 2048,
            },
            &mut sink,
            offset,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ours.img");
        std::fs::write(&img, &sink.bytes).unwrap();
        check_volume(&img, offset, &files);
        // What mtools lists agrees with what we read.
        let o = Command::new("mdir")
            .args(["-b", "-i"])
            .arg(format!("{}@@{offset}", img.display()))
            .arg("::/overlays")
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("mdir (apt-get install mtools)");
        assert!(o.status.success());
        let listed = String::from_utf8_lossy(&o.stdout);
        let mut v = FatVolume::open(File::open(&img).unwrap(), offset).unwrap();
        for e in v.read_dir("overlays").unwrap() {
            assert!(listed.contains(&e.name), "{} not in {listed}", e.name);
        }
        // locate() names the file whose bytes are at an offset, and directory entries.
        let k = v.lookup("kernel8.img").unwrap();
        let at = v.data_start + u64::from(k.first_cluster - 2) * v.cluster_bytes() + 5000;
        assert_eq!(v.locate(at).unwrap(), "content of /kernel8.img, byte 5000");
        let root_entries = v.data_start + u64::from(v.root_cluster - 2) * v.cluster_bytes();
        let mut found = false;
        for i in 0..32 {
            let d = v.locate(root_entries + i * 32 + 22).unwrap();
            if d.contains("\"config.txt\" (modification time)") {
                found = true;
            }
        }
        assert!(found, "no root entry located as config.txt");
        assert!(v.locate(0).unwrap().starts_with("boot sector"));
    }

    #[test]
    fn rejects_a_non_fat_sector() {
        let zeros = std::io::Cursor::new(vec![0u8; 4096]);
        assert!(matches!(
            FatVolume::open(zeros, 0),
            Err(FatReadError::NotFat(_))
        ));
    }
}
