//! Partition tables: MBR (written by hand; the Pi 3 / Zero 2 boot ROM reads only MBR) and GPT
//! (through the `gpt` crate, over an in-memory device, then copied into the sink). Every id is
//! derived from a seed, so the same seed gives the same bytes.

use crate::fs::ids;
use crate::fs::sparse::Sink;
use piimg_agent::contract;
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (SD erase blocks, what fdisk/sfdisk do).
pub const ALIGN: u64 = 1 << 20;
/// A "rest of the disk" partition ends on a 4 KiB boundary (a whole number of ext4 blocks).
const REST_ALIGN: u64 = 4096;
/// GPT backup header plus a 128-entry array at the end of the disk.
const GPT_TAIL_SECTORS: u64 = 1 + 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// The firmware's FAT partition: MBR type 0x0c, GPT "Microsoft basic data".
    BootFat,
    /// MBR type 0x83, GPT "Linux filesystem".
    Linux,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    /// GPT partition name (ignored for MBR).
    pub name: String,
    pub kind: PartKind,
    /// Bytes, a multiple of 512; 0 = the rest of the disk (last partition only).
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Partition number, from 1.
    pub number: u32,
    pub name: String,
    pub kind: PartKind,
    /// Byte offset on the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// What the kernel matches in `root=PARTUUID=`: `<signature>-<NN>` for MBR, the partition
    /// GUID (lower case) for GPT.
    pub partuuid: String,
    /// The GPT partition GUID (RFC 4122 byte order); all zero for MBR.
    pub guid: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub table: Table,
    pub disk_size: u64,
    /// MBR disk signature (used by MBR only; the GPT protective MBR keeps 0).
    pub signature: u32,
    /// GPT disk GUID (RFC 4122 byte order); all zero for MBR.
    pub disk_guid: [u8; 16],
    pub parts: Vec<Placed>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what} {value} is not a whole number of 512-byte sectors")]
    NotSectors { what: String, value: u64 },
    #[error("the partitions need {needed} bytes but the disk is {size} bytes")]
    DoesNotFit { needed: u64, size: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("GPT: {0}")]
    Gpt(String),
    #[error("writing the partition table: {0}")]
    Write(#[source] io::Error),
}

/// The MBR disk signature for a seed (the PARTUUIDs' prefix).
pub fn mbr_signature(seed: &[u8]) -> u32 {
    ids::derive32(seed, "mbr-signature")
}

fn check_sectors(what: &str, value: u64) -> Result<(), DiskError> {
    if !value.is_multiple_of(SECTOR) {
        return Err(DiskError::NotSectors {
            what: what.to_string(),
            value,
        });
    }
    Ok(())
}

/// Places the partitions in order, each on a 1 MiB boundary, and derives every id from `id_seed`.
pub fn plan(
    table: Table,
    disk_size: u64,
    specs: &[PartSpec],
    id_seed: &[u8],
) -> Result<Layout, DiskError> {
    check_table(table, disk_size, specs)?;
    // Last byte a partition may use (exclusive).
    let usable_end = match table {
        Table::Mbr => disk_size,
        Table::Gpt => disk_size.saturating_sub(GPT_TAIL_SECTORS * SECTOR),
    };
    let signature = mbr_signature(id_seed);
    let disk_guid = match table {
        Table::Mbr => [0; 16],
        Table::Gpt => ids::derive(id_seed, "disk"),
    };
    let mut parts = Vec::with_capacity(specs.len());
    let mut pos = ALIGN;
    for (i, s) in specs.iter().enumerate() {
        let number = i as u32 + 1;
        let start = pos.div_ceil(ALIGN) * ALIGN;
        let last = i + 1 == specs.len();
        let size = partition_size(s, number, last, start, usable_end, disk_size)?;
        pos = start + size;
        let (partuuid, guid) = match table {
            Table::Mbr => (contract::mbr_partuuid(signature, number), [0; 16]),
            Table::Gpt => {
                let g = ids::derive(id_seed, &format!("partition-{number}"));
                (contract::Guid::from_rfc4122(g).to_string(), g)
            }
        };
        parts.push(Placed {
            number,
            name: s.name.clone(),
            kind: s.kind,
            start,
            size,
            partuuid,
            guid,
        });
    }
    if pos > usable_end {
        return Err(DiskError::DoesNotFit {
            needed: pos + (disk_size - usable_end),
            size: disk_size,
        });
    }
    Ok(Layout {
        table,
        disk_size,
        signature,
        disk_guid,
        parts,
    })
}

/// What the table type can hold: the partition count, and for MBR 32-bit sector numbers.
fn check_table(table: Table, disk_size: u64, specs: &[PartSpec]) -> Result<(), DiskError> {
    check_sectors("disk size", disk_size)?;
    if specs.is_empty() {
        return Err(DiskError::Invalid("no partitions to place".into()));
    }
    let max_parts = match table {
        Table::Mbr => 4,
        Table::Gpt => 128,
    };
    if specs.len() > max_parts {
        return Err(DiskError::Invalid(format!(
            "{} partitions; the {} table holds {max_parts}",
            specs.len(),
            if table == Table::Mbr { "MBR" } else { "GPT" }
        )));
    }
    if table == Table::Mbr && disk_size / SECTOR > u64::from(u32::MAX) {
        return Err(DiskError::Invalid(format!(
            "MBR cannot address a {disk_size}-byte disk (2 TiB at most); use GPT"
        )));
    }
    Ok(())
}

/// A partition's size: its own, or (size 0, last partition only) the rest of the usable disk.
fn partition_size(
    s: &PartSpec,
    number: u32,
    last: bool,
    start: u64,
    usable_end: u64,
    disk_size: u64,
) -> Result<u64, DiskError> {
    check_sectors(&format!("partition {number} size"), s.size)?;
    if s.size != 0 {
        return Ok(s.size);
    }
    if !last {
        return Err(DiskError::Invalid(format!(
            "partition {number}: only the last partition may take the rest of the disk"
        )));
    }
    let rest = usable_end.saturating_sub(start) / REST_ALIGN * REST_ALIGN;
    if rest == 0 {
        return Err(DiskError::DoesNotFit {
            needed: start + ALIGN + (disk_size - usable_end),
            size: disk_size,
        });
    }
    Ok(rest)
}

/// Writes the partition table(s) of `layout` (MBR: sector 0; GPT: protective MBR, primary header
/// and array at the start, backup array and header at the end).
pub fn write_table(layout: &Layout, out: &mut dyn Sink) -> Result<(), DiskError> {
    if out.len() < layout.disk_size {
        return Err(DiskError::Invalid(format!(
            "the output ({} bytes) is smaller than the disk ({} bytes)",
            out.len(),
            layout.disk_size
        )));
    }
    match layout.table {
        Table::Mbr => out
            .write_at(0, &mbr_sector(layout))
            .map_err(DiskError::Write),
        Table::Gpt => {
            let dev = gpt_bytes(layout)?;
            for (off, bytes) in dev.writes {
                out.write_at(off, &bytes).map_err(DiskError::Write)?;
            }
            Ok(())
        }
    }
}

/// CHS tuple (head, sector|cyl-high, cyl-low) for an LBA with 255 heads and 63 sectors/track;
/// beyond cylinder 1023 the conventional "too big" value.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, spt) = (255u64, 63u64);
    let cyl = lba / (heads * spt);
    if cyl > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / spt) % heads;
    let sector = lba % spt + 1;
    [
        head as u8,
        (sector as u8) | (((cyl >> 8) as u8 & 0x03) << 6),
        cyl as u8,
    ]
}

fn mbr_sector(layout: &Layout) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[440..444].copy_from_slice(&layout.signature.to_le_bytes());
    for (i, p) in layout.parts.iter().enumerate() {
        let first = p.start / SECTOR;
        let count = p.size / SECTOR;
        let e = &mut b[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = 0x00;
        e[1..4].copy_from_slice(&chs(first));
        e[4] = match p.kind {
            PartKind::BootFat => 0x0c,
            PartKind::Linux => 0x83,
        };
        e[5..8].copy_from_slice(&chs(first + count - 1));
        e[8..12].copy_from_slice(&(first as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    }
    b[510] = 0x55;
    b[511] = 0xaa;
    b
}

/// A disk of a fixed length that reads as zeros and records what is written to it, so the `gpt`
/// crate can lay out a table for a multi-GiB image without the image existing.
#[derive(Debug)]
struct RecordingDisk {
    len: u64,
    pos: u64,
    /// (offset, bytes) in the order written.
    writes: Vec<(u64, Vec<u8>)>,
}

impl Read for RecordingDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        // Overlay the writes in order so a read-back sees the latest bytes.
        let (lo, hi) = (self.pos, self.pos + n as u64);
        for (off, data) in &self.writes {
            let end = off + data.len() as u64;
            if end <= lo || *off >= hi {
                continue;
            }
            let s = lo.max(*off);
            let e = hi.min(end);
            buf[(s - lo) as usize..(e - lo) as usize]
                .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for RecordingDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        self.writes.push((self.pos, buf.to_vec()));
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for RecordingDisk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

fn gpt_bytes(layout: &Layout) -> Result<RecordingDisk, DiskError> {
    let ge = |e: gpt::GptError| DiskError::Gpt(e.to_string());
    let dev = RecordingDisk {
        len: layout.disk_size,
        pos: 0,
        writes: Vec::new(),
    };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(dev, Some(uuid::Uuid::from_bytes(layout.disk_guid)))
        .map_err(ge)?;
    let mut parts = BTreeMap::new();
    for p in &layout.parts {
        parts.insert(
            p.number,
            gpt::partition::Partition {
                part_type_guid: match p.kind {
                    PartKind::BootFat => gpt::partition_types::BASIC,
                    PartKind::Linux => gpt::partition_types::LINUX_FS,
                },
                part_guid: uuid::Uuid::from_bytes(p.guid),
                first_lba: p.start / SECTOR,
                last_lba: (p.start + p.size) / SECTOR - 1,
                flags: 0,
                name: p.name.clone(),
            },
        );
    }
    disk.update_partitions(parts).map_err(ge)?;
    let mut dev = disk.write().map_err(ge)?;
    let sectors = layout.disk_size / SECTOR;
    let pmbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    pmbr.overwrite_lba0(&mut dev)
        .map_err(|e| DiskError::Gpt(e.to_string()))?;
    Ok(normalize(dev))
}

/// Flattens recorded writes (later ones win) into non-overlapping runs.
fn normalize(mut dev: RecordingDisk) -> RecordingDisk {
    let mut flat = Vec::new();
    let mut ranges: Vec<(u64, u64)> = dev
        .writes
        .iter()
        .map(|(o, d)| (*o, o + d.len() as u64))
        .collect();
    ranges.sort_unstable();
    // Merge covering ranges, then read each merged range back through the overlay.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    for (s, e) in merged {
        let mut buf = vec![0u8; (e - s) as usize];
        dev.pos = s;
        // Reading from the recording disk cannot fail.
        let _ = dev.read(&mut buf);
        flat.push((s, buf));
    }
    dev.writes = flat;
    dev
}
