//! First-boot growth of the data partition: rewrite its MBR or GPT entry to reach the end of the
//! card (moving the GPT backup header), tell the kernel (BLKPG), then grow ext4 online
//! (EXT4_IOC_RESIZE_FS). The table rewrite works on any file, so host tests use image files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::contract::crc32;
use crate::contract::table::{
    gpt_entry as ent, gpt_header as hd, le32, le64, GptHeader, Mbr, TableError,
};
use crate::contract::table::{MBR_ENTRIES, MBR_ENTRY_LEN, PROTECTIVE, SECTOR};
use crate::syscall::Syscall;

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("partition table: {0}")]
    Io(#[from] io::Error),
    #[error("no MBR/GPT signature")]
    NoTable,
    #[error("partition {0} not in the table")]
    NoPartition(u32),
    #[error("partition {0} is not the last one on the disk")]
    NotLast(u32),
    #[error("GPT header corrupt: {0}")]
    BadGpt(&'static str),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// The partition's extent after growing, in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub start: u64,
    pub old_sectors: u64,
    pub new_sectors: u64,
}

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Grows partition `partno` (1-based) to the end of a disk of `disk_bytes`. Returns None when it
/// already ends within 1 MiB of the end (nothing to do).
pub fn grow_partition(
    disk: &File,
    disk_bytes: u64,
    partno: u32,
) -> Result<Option<Grown>, GrowError> {
    let mut mbr = [0u8; 512];
    disk.read_exact_at(&mut mbr, 0)?;
    let table = Mbr::parse(&mbr).ok_or(GrowError::NoTable)?;
    let total = disk_bytes / SECTOR;
    if table.is_protective() {
        grow_gpt(disk, &mut mbr, total, partno)
    } else {
        grow_mbr(disk, &mut mbr, &table, total, partno)
    }
}

const SLACK: u64 = 2048;

fn grow_mbr(
    disk: &File,
    mbr: &mut [u8; 512],
    table: &Mbr,
    total: u64,
    partno: u32,
) -> Result<Option<Grown>, GrowError> {
    if !(1..=4).contains(&partno) {
        return Err(GrowError::NoPartition(partno));
    }
    let idx = partno as usize - 1;
    let entry = table.entries[idx];
    if entry.kind == 0 {
        return Err(GrowError::NoPartition(partno));
    }
    let start = u64::from(entry.first_lba);
    let size = u64::from(entry.sectors);
    for (i, e) in table.entries.iter().enumerate() {
        if i != idx && e.kind != 0 && u64::from(e.first_lba) > start {
            return Err(GrowError::NotLast(partno));
        }
    }
    let off = MBR_ENTRIES + idx * MBR_ENTRY_LEN;
    // MBR sizes are 32-bit sectors: cards past 2 TiB keep the rest unused.
    let end = total.min(u32::MAX as u64);
    if end <= start + size + SLACK {
        return Ok(None);
    }
    let new = end - start;
    put32(mbr, off + 12, new as u32);
    disk.write_all_at(mbr, 0)?;
    disk.sync_all()?;
    Ok(Some(Grown {
        start,
        old_sectors: size,
        new_sectors: new,
    }))
}

fn grow_gpt(
    disk: &File,
    mbr: &mut [u8; 512],
    total: u64,
    partno: u32,
) -> Result<Option<Grown>, GrowError> {
    match rewrite_gpt(disk, mbr, total, Some(partno))? {
        GptChange::Grown(g) => Ok(Some(g)),
        _ => Ok(None),
    }
}

/// Moves a GPT's backup header and entry array to the end of a disk of `disk_bytes` (as
/// `sgdisk -e` does) and leaves every partition as it is: an image written to a larger card.
/// Returns false when the disk has an MBR or the backup is already at the end.
pub fn move_gpt_backup(disk: &File, disk_bytes: u64) -> Result<bool, GrowError> {
    let mut mbr = [0u8; 512];
    disk.read_exact_at(&mut mbr, 0)?;
    if !Mbr::parse(&mbr).ok_or(GrowError::NoTable)?.is_protective() {
        return Ok(false);
    }
    Ok(rewrite_gpt(disk, &mut mbr, disk_bytes / SECTOR, None)? == GptChange::Moved)
}

#[derive(Debug, PartialEq, Eq)]
enum GptChange {
    Unchanged,
    Moved,
    Grown(Grown),
}

/// A GPT as read from a disk: the primary header sector, parsed, and its entry array.
struct Gpt {
    sector: [u8; 512],
    header: GptHeader,
    /// Byte offset of the primary entry array.
    entries_at: u64,
    entries: Vec<u8>,
}

/// Where the rewritten table's moving parts go, in sectors.
struct Placement {
    backup: u64,
    backup_entries: u64,
    last_usable: u64,
}

/// Rewrites the GPT for a disk of `total` sectors: the backup at the end, and partition `grow`
/// (when given) extended to the end of the usable area.
fn rewrite_gpt(
    disk: &File,
    mbr: &mut [u8; 512],
    total: u64,
    grow: Option<u32>,
) -> Result<GptChange, GrowError> {
    let mut gpt = read_gpt(disk)?;
    let at = place_backup(&gpt.header, total)?;
    let change = match grow {
        Some(partno) => match grow_entry(&mut gpt, partno, at.last_usable)? {
            Some(g) => GptChange::Grown(g),
            None => return Ok(GptChange::Unchanged),
        },
        None if gpt.header.backup_lba == at.backup => return Ok(GptChange::Unchanged),
        // A disk smaller than the table says: nothing sensible to move.
        None if at.backup_entries <= gpt.header.last_usable => {
            return Err(GrowError::BadGpt("disk smaller than the table"))
        }
        None => GptChange::Moved,
    };
    write_gpt(disk, mbr, &gpt, &at, total)?;
    Ok(change)
}

/// The primary header and its entry array, whose CRC must match.
fn read_gpt(disk: &File) -> Result<Gpt, GrowError> {
    let mut sector = [0u8; 512];
    disk.read_exact_at(&mut sector, SECTOR)?;
    let header = GptHeader::parse(&sector)?;
    let mut entries = vec![0u8; header.array_bytes() as usize];
    let entries_at = header
        .entries_lba
        .checked_mul(SECTOR)
        .ok_or(GrowError::BadGpt("entry array"))?;
    disk.read_exact_at(&mut entries, entries_at)?;
    if crc32(&entries) != header.entries_crc {
        return Err(GrowError::BadGpt("entries crc"));
    }
    Ok(Gpt {
        sector,
        header,
        entries_at,
        entries,
    })
}

/// The backup header and entry array at the end of a disk of `total` sectors.
fn place_backup(h: &GptHeader, total: u64) -> Result<Placement, GrowError> {
    let array_sectors = h.array_bytes().div_ceil(SECTOR);
    // Every figure from the card is checked: this runs as PID 1 on whatever card it was given.
    let (backup, backup_entries) = total
        .checked_sub(1)
        .and_then(|b| Some((b, b.checked_sub(array_sectors)?)))
        .filter(|&(_, entries)| entries > h.first_usable)
        .ok_or(GrowError::BadGpt("disk smaller than the table"))?;
    Ok(Placement {
        backup,
        backup_entries,
        last_usable: backup_entries - 1,
    })
}

/// Extends the entry of partition `partno` (the last one on the disk) to the end of the usable
/// area; None when it already reaches within 1 MiB of it.
fn grow_entry(gpt: &mut Gpt, partno: u32, last_usable: u64) -> Result<Option<Grown>, GrowError> {
    let count = u64::from(gpt.header.entry_count);
    let esize = u64::from(gpt.header.entry_size);
    let entries = &mut gpt.entries;
    let idx = match u64::from(partno).checked_sub(1) {
        Some(i) if i < count => i,
        _ => return Err(GrowError::NoPartition(partno)),
    };
    let e = (idx * esize) as usize;
    if entries[e..e + 16].iter().all(|&b| b == 0) {
        return Err(GrowError::NoPartition(partno));
    }
    let first = le64(entries, e + ent::FIRST_LBA);
    let last = le64(entries, e + ent::LAST_LBA);
    if last < first {
        return Err(GrowError::BadGpt("partition ends before it starts"));
    }
    if another_starts_after(entries, count, esize, idx, first) {
        return Err(GrowError::NotLast(partno));
    }
    // End on a 1 MiB boundary (sgdisk's default alignment) inside the usable area.
    let new_last = match ((last_usable + 1) / SLACK * SLACK).checked_sub(1) {
        Some(l) if l > last.saturating_add(SLACK) => l,
        _ => return Ok(None),
    };
    put64(entries, e + ent::LAST_LBA, new_last);
    Ok(Some(Grown {
        start: first,
        old_sectors: last - first + 1,
        new_sectors: new_last - first + 1,
    }))
}

/// Whether a used entry other than number `idx` (from 0) starts after sector `first`.
fn another_starts_after(entries: &[u8], count: u64, esize: u64, idx: u64, first: u64) -> bool {
    (0..count).any(|i| {
        let o = (i * esize) as usize;
        i != idx
            && entries[o..o + 16].iter().any(|&b| b != 0)
            && le64(entries, o + ent::FIRST_LBA) > first
    })
}

/// The primary and backup header sectors for the new placement, each with its CRC.
fn headers(gpt: &Gpt, at: &Placement) -> ([u8; 512], [u8; 512]) {
    let hsize = gpt.header.header_size as usize;
    let mut primary = gpt.sector;
    put64(&mut primary, hd::BACKUP_LBA, at.backup);
    put64(&mut primary, hd::LAST_USABLE, at.last_usable);
    put32(&mut primary, hd::ENTRIES_CRC, crc32(&gpt.entries));
    seal(&mut primary, hsize);
    let mut backup = primary;
    put64(&mut backup, hd::CURRENT_LBA, at.backup);
    put64(&mut backup, hd::BACKUP_LBA, 1);
    put64(&mut backup, hd::ENTRIES_LBA, at.backup_entries);
    seal(&mut backup, hsize);
    (primary, backup)
}

/// Sets a header's CRC, computed over its first `size` bytes with the CRC field zero.
fn seal(header: &mut [u8; 512], size: usize) {
    put32(header, hd::CRC, 0);
    let c = crc32(&header[..size]);
    put32(header, hd::CRC, c);
}

/// Writes the rewritten table: entries, headers, the protective MBR, and the old backup wiped.
fn write_gpt(
    disk: &File,
    mbr: &mut [u8; 512],
    gpt: &Gpt,
    at: &Placement,
    total: u64,
) -> Result<(), GrowError> {
    let (primary, backup) = headers(gpt, at);
    // Backup first: if power fails mid-way, the primary still describes a valid (old) disk.
    disk.write_all_at(&gpt.entries, at.backup_entries * SECTOR)?;
    disk.write_all_at(&backup, at.backup * SECTOR)?;
    disk.sync_all()?;
    disk.write_all_at(&gpt.entries, gpt.entries_at)?;
    disk.write_all_at(&primary, SECTOR)?;
    cover_whole_disk(mbr, total);
    disk.write_all_at(mbr, 0)?;
    // The old backup header now lies inside the partition: wipe its signature.
    let old_backup = gpt.header.backup_lba;
    if old_backup != at.backup && old_backup > 1 {
        if let Some(o) = old_backup.checked_mul(SECTOR) {
            disk.write_all_at(&[0u8; 512], o)?;
        }
    }
    disk.sync_all()?;
    Ok(())
}

/// Makes the protective MBR entry cover a disk of `total` sectors (as far as 32 bits reach).
fn cover_whole_disk(mbr: &mut [u8; 512], total: u64) {
    let pm = (0..4)
        .map(|i| MBR_ENTRIES + i * MBR_ENTRY_LEN)
        .find(|&o| mbr[o + 4] == PROTECTIVE)
        .unwrap_or(MBR_ENTRIES);
    put32(mbr, pm + 12, (total - 1).min(u32::MAX as u64) as u32);
}

/// Size of a block device (or regular file) in bytes.
pub fn device_bytes(f: &File) -> io::Result<u64> {
    let md = f.metadata()?;
    if md.len() > 0 {
        return Ok(md.len());
    }
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut v = 0u64;
    crate::sys::ioctl_u64(f, BLKGETSIZE64, &mut v)?;
    Ok(v)
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// Tells the kernel the partition's new size while it is mounted (BLKRRPART would refuse).
pub fn kernel_resize_partition(disk: &File, partno: u32, g: &Grown) -> io::Result<()> {
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
    let mut p = BlkpgPartition {
        start: (g.start * SECTOR) as i64,
        length: (g.new_sectors * SECTOR) as i64,
        pno: partno as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut p as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: arg points to a blkpg_ioctl_arg whose data points to a blkpg_partition.
    unsafe {
        crate::sys::ioctl_ptr(
            disk,
            BLKPG,
            &mut arg as *mut BlkpgIoctlArg as *mut libc::c_void,
        )
    }
}

/// Grows the ext4 mounted at `mountpoint` to `bytes` (online resize).
pub fn resize_ext4(mountpoint: &Path, bytes: u64) -> io::Result<u64> {
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let dir = File::open(mountpoint)?;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is POD; the call fills it.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut sv) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let bsize = (sv.f_frsize as u64).max(1024);
    let mut blocks = bytes / bsize;
    crate::sys::ioctl_u64(&dir, EXT4_IOC_RESIZE_FS, &mut blocks)?;
    Ok(bytes / bsize)
}

/// Size in bytes of the ext4 filesystem on `dev`, from its superblock.
pub fn ext4_bytes(dev: &File) -> io::Result<u64> {
    let mut sb = [0u8; 1024];
    dev.read_exact_at(&mut sb, 1024)?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xef53 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no ext4 superblock",
        ));
    }
    let lo = u64::from(le32(&sb, 0x04));
    // s_blocks_count_hi counts only with the 64bit feature.
    let hi = if le32(&sb, 0x60) & 0x80 != 0 {
        u64::from(le32(&sb, 0x150))
    } else {
        0
    };
    let block = 1024u64 << le32(&sb, 0x18).min(6);
    Ok(((hi << 32) | lo) * block)
}

/// Finishes a growth that stopped after the partition table was rewritten (power cut, a failed
/// resize): when the ext4 on `part`, mounted at `mountpoint`, is smaller than the partition by
/// more than a block group's worth of slack, grows it to the partition. Returns the sizes in
/// bytes (before, after) when it grew.
pub fn finish_resize(
    sys: &dyn Syscall,
    part: &Path,
    mountpoint: &Path,
) -> io::Result<Option<(u64, u64)>> {
    let f = File::open(part)?;
    let part_bytes = device_bytes(&f)?;
    let fs_bytes = ext4_bytes(&f)?;
    // The partition ends on a 1 MiB boundary; ext4 rounds down to whole blocks.
    if fs_bytes + SLACK * SECTOR >= part_bytes {
        return Ok(None);
    }
    sys.resize_ext4(mountpoint, part_bytes)?;
    // ext4 may leave out a last block group too small for its metadata: no change means the
    // filesystem already had all it can take.
    let now = ext4_bytes(&f)?;
    Ok((now > fs_bytes).then_some((fs_bytes, now)))
}

/// Resolves a partition device name (`mmcblk0p3`) to its disk name and number through sysfs.
pub fn disk_of(sys_block: &Path, part: &str) -> Option<(String, u32)> {
    let dir = sys_block.join(part);
    let n: u32 = std::fs::read_to_string(dir.join("partition"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let real = std::fs::canonicalize(&dir).ok()?;
    let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
    Some((disk, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_of_sysfs_layout() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("devices/platform/mmc/mmcblk0/mmcblk0p3");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("partition"), "3\n").unwrap();
        let sb = t.path().join("class/block");
        std::fs::create_dir_all(&sb).unwrap();
        std::os::unix::fs::symlink(&dev, sb.join("mmcblk0p3")).unwrap();
        assert_eq!(disk_of(&sb, "mmcblk0p3"), Some(("mmcblk0".into(), 3)));
    }
}
