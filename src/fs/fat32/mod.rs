//! FAT32 writer (write-once) for the Pi boot partition.
//!
//! The whole layout is planned before a byte is written: names (VFAT long names plus unique 8.3
//! short names), one contiguous cluster run per directory and file in walk order, then the boot
//! sector, FSInfo, their backups (sectors 6 and 7), both FATs, directories and streamed file data.
//! Geometry follows mkfs.vfat: 32 reserved sectors, two FATs, cluster size by volume size,
//! data area aligned to the cluster size (and at least 4 KiB).

mod names;
pub mod read;

pub use names::{lfn_checksum, FatName};

use crate::fs::sparse::Sink;
use crate::tree::{FileData, InodeId, InodeKind, Tree};
use std::collections::BTreeMap;
use std::io::Read;

#[derive(Debug, Clone)]
pub struct FatOptions {
    /// Filesystem size in bytes (a multiple of 512).
    pub size: u64,
    /// Volume label (at most 11 bytes, upper-cased).
    pub label: String,
    /// Volume serial number; derive it from the profile.
    pub volume_id: u32,
    /// Timestamp of every entry (SOURCE_DATE_EPOCH).
    pub timestamp: i64,
    /// Sectors before the filesystem on the disk (the partition's start LBA).
    pub hidden_sectors: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FatError {
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

const SECTOR: u64 = 512;
const RESERVED_SECTORS: u32 = 32;
const NUM_FATS: u32 = 2;
/// mkfs.vfat's lower bound for FAT32 (a few above the 65525 FAT16/FAT32 boundary).
const MIN_CLUSTERS: u32 = 65529;
const MAX_CLUSTERS: u32 = 0x0fff_fff5;
/// A directory may hold at most 65536 entries (2 MiB).
const MAX_DIR_ENTRIES: usize = 65536;
const ROOT_CLUSTER: u32 = 2;
const EOC: u32 = 0x0fff_ffff;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME: u8 = 0x08;

/// Where everything lives in a FAT32 volume of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub total_sectors: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    pub fat_sectors: u32,
    /// Data clusters (numbered from 2).
    pub clusters: u32,
}

impl Geometry {
    /// mkfs.vfat's choice (after Microsoft's format): 512-byte clusters up to 260 MiB, 4 KiB up to
    /// 8 GiB, 8 KiB up to 16 GiB, 16 KiB up to 32 GiB, 32 KiB above; halved while the volume would
    /// have too few clusters for FAT32.
    pub fn for_size(size: u64) -> Result<Geometry, FatError> {
        if !size.is_multiple_of(SECTOR) {
            return Err(FatError::Invalid(format!(
                "FAT size {size} is not a whole number of 512-byte sectors"
            )));
        }
        let total = u32::try_from(size / SECTOR).map_err(|_| {
            FatError::Invalid(format!("FAT32 volumes stop at 2 TiB ({size} bytes asked)"))
        })?;
        let mb = size.div_ceil(1 << 20);
        let mut spc: u32 = match mb {
            m if m > 32 * 1024 => 64,
            m if m > 16 * 1024 => 32,
            m if m > 8 * 1024 => 16,
            m if m > 260 => 8,
            _ => 1,
        };
        loop {
            if let Some(g) = Geometry::with_cluster(total, spc) {
                if g.clusters >= MIN_CLUSTERS {
                    return Ok(g);
                }
            }
            if spc == 1 {
                return Err(FatError::TooSmall {
                    needed: min_fat32_size(),
                    size,
                });
            }
            spc /= 2;
        }
    }

    fn with_cluster(total: u32, spc: u32) -> Option<Geometry> {
        let avail = total.checked_sub(RESERVED_SECTORS)?;
        // Sized for every cluster the space could hold if there were no FAT: a little generous,
        // never short.
        let entries = u64::from(avail / spc) + 2;
        let fat_sectors = u32::try_from((entries * 4).div_ceil(SECTOR)).ok()?;
        let data_start = RESERVED_SECTORS + NUM_FATS * fat_sectors;
        let align = spc.max(8);
        let aligned = data_start.div_ceil(align) * align;
        let reserved = RESERVED_SECTORS + (aligned - data_start);
        let clusters = total.checked_sub(aligned)? / spc;
        let clusters = clusters.min(MAX_CLUSTERS);
        Some(Geometry {
            total_sectors: total,
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            fat_sectors,
            clusters,
        })
    }

    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    /// Byte offset of the data area from the start of the volume.
    pub fn data_start(&self) -> u64 {
        u64::from(self.reserved_sectors + NUM_FATS * self.fat_sectors) * SECTOR
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start() + u64::from(cluster - 2) * self.cluster_bytes()
    }
}

/// The smallest FAT32 volume (whole MiB) mkfs.vfat would also accept.
pub fn min_fat32_size() -> u64 {
    let mut mib = 32u64;
    loop {
        let total = (mib << 20) / SECTOR;
        if let Some(g) = Geometry::with_cluster(total as u32, 1) {
            if g.clusters >= MIN_CLUSTERS {
                return mib << 20;
            }
        }
        mib += 1;
    }
}

enum ItemKind<'t> {
    Dir {
        /// (name, child item index)
        entries: Vec<(FatName, usize)>,
        /// Parent item index (None for the root).
        parent: Option<usize>,
    },
    File(&'t FileData),
}

struct Item<'t> {
    path: String,
    kind: ItemKind<'t>,
    /// Bytes the item occupies in the data area (directories: their entries).
    bytes: u64,
    first_cluster: u32,
}

/// A tree checked and named for FAT, not yet placed on a volume.
pub struct Plan<'t> {
    items: Vec<Item<'t>>,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl<'t> Plan<'t> {
    /// Checks the tree (directories and regular files only, names FAT can store) and assigns
    /// names. `has_label` adds the root volume-label entry.
    pub fn new(tree: &'t Tree, has_label: bool) -> Result<Plan<'t>, FatError> {
        let walk = tree.walk();
        let index: BTreeMap<&[u8], usize> = walk
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (p.as_slice(), i))
            .collect();
        let mut items = Vec::with_capacity(walk.len());
        // Parents come before children in walk order, so a parent index is known when needed.
        let mut parent_of: Vec<Option<usize>> = vec![None; walk.len()];
        for (i, (path, id)) in walk.iter().enumerate() {
            let shown = if path.is_empty() {
                "/".to_string()
            } else {
                lossy(path)
            };
            let inode = tree.inode(*id);
            let item = match &inode.kind {
                InodeKind::Dir(_) => {
                    let entries = dir_entries(tree, *id, path, &index)?;
                    for (_, ci) in &entries {
                        parent_of[*ci] = Some(i);
                    }
                    // The root holds the label entry instead of `.` and `..`.
                    let extra = if i == 0 { usize::from(has_label) } else { 2 };
                    dir_item(shown, entries, parent_of[i], extra)?
                }
                InodeKind::File(data) => file_item(shown, data)?,
                _ => {
                    return Err(FatError::Invalid(format!(
                        "{shown}: FAT holds only directories and regular files (this is a {})",
                        kind_name(&inode.kind)
                    )))
                }
            };
            items.push(item);
        }
        Ok(Plan { items })
    }

    /// Data clusters needed with clusters of `cluster_bytes`.
    pub fn clusters_needed(&self, cluster_bytes: u64) -> u64 {
        self.items
            .iter()
            .map(|it| it.bytes.div_ceil(cluster_bytes))
            .sum()
    }

    /// The smallest volume size (whole MiB) that holds this plan.
    pub fn min_size(&self) -> u64 {
        let mut cache: BTreeMap<u64, u64> = BTreeMap::new();
        let lower = (self.clusters_needed(SECTOR) * SECTOR) >> 20;
        let mut mib = lower.max(min_fat32_size() >> 20);
        loop {
            if (mib << 20) / SECTOR > u64::from(u32::MAX) {
                // Beyond FAT32: writing at this size reports why.
                return mib << 20;
            }
            if let Ok(g) = Geometry::for_size(mib << 20) {
                let cb = g.cluster_bytes();
                let need = *cache.entry(cb).or_insert_with(|| self.clusters_needed(cb));
                if need <= u64::from(g.clusters) {
                    return mib << 20;
                }
            }
            mib += 1;
        }
    }
}

/// A directory's children, FAT-named, with their item indices.
fn dir_entries(
    tree: &Tree,
    id: InodeId,
    path: &[u8],
    index: &BTreeMap<&[u8], usize>,
) -> Result<Vec<(FatName, usize)>, FatError> {
    let kids: Vec<(&[u8], InodeId)> = tree.children(id).collect();
    let names_in: Vec<&[u8]> = kids.iter().map(|(n, _)| *n).collect();
    let names = names::assign(&lossy(path), &names_in)?;
    let mut entries = Vec::with_capacity(kids.len());
    for ((name, _), fat) in kids.iter().zip(names) {
        let mut child = path.to_vec();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(name);
        let ci = *index
            .get(child.as_slice())
            .ok_or_else(|| FatError::Invalid(format!("{}: lost in walk", lossy(&child))))?;
        entries.push((fat, ci));
    }
    Ok(entries)
}

/// A directory item: `extra` entries besides its children's (`.` and `..`, or the label).
fn dir_item<'t>(
    shown: String,
    entries: Vec<(FatName, usize)>,
    parent: Option<usize>,
    extra: usize,
) -> Result<Item<'t>, FatError> {
    let slots: usize = entries.iter().map(|(n, _)| n.slots()).sum::<usize>() + extra;
    if slots > MAX_DIR_ENTRIES {
        return Err(FatError::Invalid(format!(
            "{shown}: {slots} directory entries, FAT allows {MAX_DIR_ENTRIES}"
        )));
    }
    Ok(Item {
        path: shown,
        bytes: (slots.max(1) * 32) as u64,
        kind: ItemKind::Dir { entries, parent },
        first_cluster: 0,
    })
}

fn file_item(shown: String, data: &FileData) -> Result<Item<'_>, FatError> {
    if data.len() > u64::from(u32::MAX) {
        return Err(FatError::Invalid(format!(
            "{shown}: {} bytes, FAT files stop at 4 GiB - 1",
            data.len()
        )));
    }
    Ok(Item {
        path: shown,
        bytes: data.len(),
        kind: ItemKind::File(data),
        first_cluster: 0,
    })
}

fn kind_name(k: &InodeKind) -> &'static str {
    match k {
        InodeKind::Dir(_) => "directory",
        InodeKind::File(_) => "regular file",
        InodeKind::Symlink(_) => "symlink",
        InodeKind::CharDev { .. } => "character device",
        InodeKind::BlockDev { .. } => "block device",
        InodeKind::Fifo => "fifo",
        InodeKind::Socket => "socket",
    }
}

/// The smallest FAT32 size (whole MiB) that holds `tree`.
pub fn min_size(tree: &Tree, has_label: bool) -> Result<u64, FatError> {
    Ok(Plan::new(tree, has_label)?.min_size())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// FAT (date, time) of a Unix time, read as UTC and clamped to FAT's 1980..=2107 range.
pub fn fat_datetime(t: i64) -> (u16, u16) {
    const MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: i64 = 4_354_819_198; // 2107-12-31T23:59:58Z
    let t = t.clamp(MIN, MAX);
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = (((secs / 3600) as u16) << 11)
        | ((((secs / 60) % 60) as u16) << 5)
        | ((secs % 60) / 2) as u16;
    (date, time)
}

/// The 11-byte label: ASCII, upper case, space padded; empty means none.
fn label_bytes(label: &str) -> Result<Option<[u8; 11]>, FatError> {
    if label.is_empty() {
        return Ok(None);
    }
    if label.len() > 11 {
        return Err(FatError::Invalid(format!(
            "volume label {label:?} is longer than 11 bytes"
        )));
    }
    let mut out = [b' '; 11];
    for (i, c) in label.bytes().enumerate() {
        if !c.is_ascii() || c < 0x20 || b"\"*+,./:;<=>?[\\]|".contains(&c) {
            return Err(FatError::Invalid(format!(
                "volume label {label:?}: character {:?} is not allowed",
                c as char
            )));
        }
        out[i] = c.to_ascii_uppercase();
    }
    Ok(Some(out))
}

fn short_entry(
    name: &[u8; 11],
    attr: u8,
    case: u8,
    cluster: u32,
    size: u32,
    dt: (u16, u16),
) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    if e[0] == 0xe5 {
        e[0] = 0x05;
    }
    e[11] = attr;
    e[12] = case;
    let (date, time) = dt;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

fn boot_sector(g: &Geometry, opts: &FatOptions, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(g.reserved_sectors as u16).to_le_bytes());
    b[16] = NUM_FATS as u8;
    // root entries, 16-bit total sectors and 16-bit FAT size stay 0 on FAT32
    b[21] = 0xf8;
    b[24..26].copy_from_slice(&63u16.to_le_bytes());
    b[26..28].copy_from_slice(&255u16.to_le_bytes());
    b[28..32].copy_from_slice(&opts.hidden_sectors.to_le_bytes());
    b[32..36].copy_from_slice(&g.total_sectors.to_le_bytes());
    b[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
    b[44..48].copy_from_slice(&ROOT_CLUSTER.to_le_bytes());
    b[48..50].copy_from_slice(&1u16.to_le_bytes());
    b[50..52].copy_from_slice(&6u16.to_le_bytes());
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&opts.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    // Not bootable on a PC: "int 0x18" (no bootable disk) at the jump target.
    b[90..92].copy_from_slice(&[0xcd, 0x18]);
    b[510] = 0x55;
    b[511] = 0xaa;
    b
}

fn fsinfo_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    b[488..492].copy_from_slice(&free.to_le_bytes());
    b[492..496].copy_from_slice(&next_free.to_le_bytes());
    b[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
    b
}

/// Writes a FAT32 filesystem of `opts.size` bytes holding `tree` into `out` at byte `offset`.
/// Everything is checked (names, file types, space) before the first write.
pub fn write(
    tree: &Tree,
    opts: &FatOptions,
    out: &mut dyn Sink,
    offset: u64,
) -> Result<(), FatError> {
    let label = label_bytes(&opts.label)?;
    let mut plan = Plan::new(tree, label.is_some())?;
    let g = Geometry::for_size(opts.size)?;
    check_fits(&plan, &g, opts, out.len(), offset)?;
    let fat = plan.allocate_clusters(&g);
    let mut v = Volume { out, offset, g };
    v.write_boot_sectors(opts, &label.unwrap_or(*b"NO NAME    "), &fat)?;
    v.write_fats(&fat)?;
    let dt = fat_datetime(opts.timestamp);
    let mut buf = vec![0u8; 1 << 20];
    for (i, it) in plan.items.iter().enumerate() {
        match &it.kind {
            ItemKind::Dir { entries, parent } => {
                let d = plan.dir_bytes(i, entries, *parent, label.as_ref(), dt);
                v.write_at(g.cluster_offset(it.first_cluster), &d)?;
            }
            ItemKind::File(data) => v.write_file(it, data, &mut buf)?,
        }
    }
    Ok(())
}

/// The plan fits a volume of geometry `g`, and the volume fits the output.
fn check_fits(
    plan: &Plan,
    g: &Geometry,
    opts: &FatOptions,
    out_len: u64,
    offset: u64,
) -> Result<(), FatError> {
    let need = plan.clusters_needed(g.cluster_bytes());
    if need > u64::from(g.clusters) {
        return Err(FatError::TooSmall {
            needed: plan.min_size(),
            size: opts.size,
        });
    }
    if offset
        .checked_add(opts.size)
        .is_none_or(|end| end > out_len)
    {
        return Err(FatError::Invalid(format!(
            "a {}-byte filesystem at offset {offset} does not fit the {out_len}-byte output",
            opts.size,
        )));
    }
    Ok(())
}

/// The file allocation table, and the first cluster after the allocated ones.
struct Fat {
    table: Vec<u32>,
    next: u32,
}

impl Plan<'_> {
    /// Contiguous runs in walk order; the root comes first, so it starts at cluster 2.
    fn allocate_clusters(&mut self, g: &Geometry) -> Fat {
        let cb = g.cluster_bytes();
        let mut fat = vec![0u32; g.clusters as usize + 2];
        fat[0] = 0x0fff_fff8;
        fat[1] = EOC;
        let mut next = ROOT_CLUSTER;
        for it in &mut self.items {
            let n = it.bytes.div_ceil(cb) as u32;
            if n == 0 {
                continue;
            }
            it.first_cluster = next;
            for c in next..next + n - 1 {
                fat[c as usize] = c + 1;
            }
            fat[(next + n - 1) as usize] = EOC;
            next += n;
        }
        Fat { table: fat, next }
    }

    /// The entries of directory item `i`: the label (root) or `.` and `..`, then its children's.
    fn dir_bytes(
        &self,
        i: usize,
        entries: &[(FatName, usize)],
        parent: Option<usize>,
        label: Option<&[u8; 11]>,
        dt: (u16, u16),
    ) -> Vec<u8> {
        let it = &self.items[i];
        let mut d: Vec<u8> = Vec::with_capacity(it.bytes as usize);
        if i == 0 {
            if let Some(l) = label {
                d.extend_from_slice(&short_entry(l, ATTR_VOLUME, 0, 0, 0, dt));
            }
        } else {
            // `..` of a first-level directory names the root as cluster 0.
            let up = parent
                .map(|p| self.items[p].first_cluster)
                .filter(|c| *c != ROOT_CLUSTER)
                .unwrap_or(0);
            let here = it.first_cluster;
            d.extend_from_slice(&short_entry(b".          ", ATTR_DIR, 0, here, 0, dt));
            d.extend_from_slice(&short_entry(b"..         ", ATTR_DIR, 0, up, 0, dt));
        }
        for (name, ci) in entries {
            let child = &self.items[*ci];
            if let Some(long) = &name.long {
                for e in names::lfn_entries(long, &name.short) {
                    d.extend_from_slice(&e);
                }
            }
            let (attr, size) = match child.kind {
                ItemKind::Dir { .. } => (ATTR_DIR, 0),
                ItemKind::File(_) => (ATTR_ARCHIVE, child.bytes as u32),
            };
            let cluster = child.first_cluster;
            d.extend_from_slice(&short_entry(
                &name.short,
                attr,
                name.case,
                cluster,
                size,
                dt,
            ));
        }
        d
    }
}

/// The volume being written: the output and where in it the filesystem starts.
struct Volume<'o> {
    out: &'o mut dyn Sink,
    offset: u64,
    g: Geometry,
}

impl Volume<'_> {
    /// Writes at a byte position relative to the volume start.
    fn write_at(&mut self, at: u64, data: &[u8]) -> Result<(), FatError> {
        self.out
            .write_at(self.offset + at, data)
            .map_err(FatError::Write)
    }

    /// Boot sector, FSInfo and the third boot sector, and their backups at sector 6.
    fn write_boot_sectors(
        &mut self,
        opts: &FatOptions,
        label11: &[u8; 11],
        fat: &Fat,
    ) -> Result<(), FatError> {
        let used = fat.next - ROOT_CLUSTER;
        let free = self.g.clusters - used;
        let next_free = if free == 0 { 0xffff_ffff } else { fat.next };
        let boot = boot_sector(&self.g, opts, label11);
        let info = fsinfo_sector(free, next_free);
        for base in [0u64, 6] {
            self.write_at(base * SECTOR, &boot)?;
            self.write_at((base + 1) * SECTOR, &info)?;
            // Sector 2 of each copy ends in the boot signature too (as mkfs.vfat writes it).
            let mut third = [0u8; 512];
            third[510] = 0x55;
            third[511] = 0xaa;
            self.write_at((base + 2) * SECTOR, &third)?;
        }
        Ok(())
    }

    /// Both copies of the FAT, 1 MiB at a time.
    fn write_fats(&mut self, fat: &Fat) -> Result<(), FatError> {
        let fat_bytes: Vec<u8> = fat.table.iter().flat_map(|e| e.to_le_bytes()).collect();
        for copy in 0..NUM_FATS {
            let at = u64::from(self.g.reserved_sectors + copy * self.g.fat_sectors) * SECTOR;
            for (k, chunk) in fat_bytes.chunks(1 << 20).enumerate() {
                self.write_at(at + (k as u64) * (1 << 20), chunk)?;
            }
        }
        Ok(())
    }

    /// Streams a file's content into its clusters.
    fn write_file(&mut self, it: &Item, data: &FileData, buf: &mut [u8]) -> Result<(), FatError> {
        if it.bytes == 0 {
            return Ok(());
        }
        let rd = |e| FatError::Read {
            path: it.path.clone(),
            source: e,
        };
        let mut r = data.open().map_err(rd)?;
        let mut at = self.g.cluster_offset(it.first_cluster);
        let mut left = it.bytes;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let mut got = 0;
            while got < want {
                let n = r.read(&mut buf[got..want]).map_err(rd)?;
                if n == 0 {
                    return Err(rd(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("content ended {left} bytes early (changed while building?)"),
                    )));
                }
                got += n;
            }
            self.write_at(at, &buf[..want])?;
            at += want as u64;
            left -= want as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_encode_as_utc() {
        // 2024-03-05T13:14:16Z
        let (d, t) = fat_datetime(1_709_644_456);
        assert_eq!(d, (44 << 9) | (3 << 5) | 5);
        assert_eq!(t, (13 << 11) | (14 << 5) | 8);
        // before 1980: clamped to 1980-01-01 00:00:00
        assert_eq!(fat_datetime(0), ((1 << 5) | 1, 0));
    }

    #[test]
    fn geometry_like_mkfs() {
        let g = Geometry::for_size(64 << 20).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert!(g.clusters >= MIN_CLUSTERS);
        assert_eq!(g.data_start() % 4096, 0);
        let g = Geometry::for_size(512 << 20).unwrap();
        assert_eq!(g.sectors_per_cluster, 8);
        let g = Geometry::for_size(261 << 20).unwrap();
        assert!(g.sectors_per_cluster == 8 && g.clusters >= MIN_CLUSTERS);
        let g = Geometry::for_size(260 << 20).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert!(matches!(
            Geometry::for_size(16 << 20),
            Err(FatError::TooSmall { .. })
        ));
        let min = min_fat32_size();
        assert!(Geometry::for_size(min).is_ok());
        assert!(Geometry::for_size(min - (1 << 20)).is_err());
    }
}
