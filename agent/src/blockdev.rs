//! Finding a partition by PARTUUID without udev: first the kernel's uevent files in
//! /sys/class/block (they carry `PARTUUID=`), then the partition tables of whole disks.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `KEY=value` lines of a sysfs uevent file.
pub fn parse_uevent(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// PARTUUIDs compare case-insensitively (MBR ids are hex; GUIDs may be written upper case).
pub fn same_partuuid(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The device name (e.g. `mmcblk0p2`) if this uevent describes the partition `want`.
pub fn uevent_matches(text: &str, want: &str) -> Option<String> {
    let kv = parse_uevent(text);
    if kv.get("DEVTYPE").map(String::as_str) != Some("partition") {
        return None;
    }
    let uuid = kv.get("PARTUUID")?;
    if same_partuuid(uuid, want) {
        kv.get("DEVNAME").cloned()
    } else {
        None
    }
}

/// (partition number, PARTUUID) for every partition in an MBR or GPT table. `head` holds the
/// first sectors of the disk (at least 2 sectors for GPT plus the entry array).
pub fn table_partuuids(head: &[u8], sector: usize) -> Vec<(u32, String)> {
    if head.len() < 512 || head[510] != 0x55 || head[511] != 0xaa {
        return Vec::new();
    }
    let protective = (0..4).any(|i| head[446 + i * 16 + 4] == 0xee);
    if protective {
        return gpt_partuuids(head, sector);
    }
    let sig = u32::from_le_bytes([head[440], head[441], head[442], head[443]]);
    (0..4)
        .filter(|i| head[446 + i * 16 + 4] != 0)
        .map(|i| (i as u32 + 1, format!("{sig:08x}-{:02x}", i + 1)))
        .collect()
}

/// Formats a GPT GUID (mixed endian on disk) the way the kernel prints it.
pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

fn gpt_partuuids(head: &[u8], sector: usize) -> Vec<(u32, String)> {
    let hdr = match head.get(sector..sector + 92) {
        Some(h) if &h[..8] == b"EFI PART" => h,
        _ => return Vec::new(),
    };
    let u64at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&hdr[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let u32at = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    let entries_lba = u64at(72) as usize;
    let count = u32at(80) as usize;
    let size = u32at(84) as usize;
    if size < 128 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in 0..count {
        let off = entries_lba * sector + i * size;
        let Some(e) = head.get(off..off + 128) else {
            break;
        };
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        out.push((i as u32 + 1, guid_string(&e[16..32])));
    }
    out
}

/// The kernel's name for partition `n` of `disk` (`sda` -> `sda1`, `mmcblk0` -> `mmcblk0p1`).
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// Finds the block device with this PARTUUID. `sys_block` is /sys/class/block, `dev` is /dev.
pub fn find_partuuid(sys_block: &Path, dev: &Path, want: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut disks = Vec::new();
    for name in &names {
        let Ok(text) = fs::read_to_string(sys_block.join(name).join("uevent")) else {
            continue;
        };
        if let Some(devname) = uevent_matches(&text, want) {
            return Some(dev.join(devname));
        }
        let kv = parse_uevent(&text);
        if kv.get("DEVTYPE").map(String::as_str) == Some("disk") {
            disks.push(kv.get("DEVNAME").cloned().unwrap_or_else(|| name.clone()));
        }
    }
    // Older kernels have no PARTUUID in uevent: read the tables ourselves.
    for disk in disks {
        let mut head = vec![0u8; 512 * 64];
        let Ok(mut f) = fs::File::open(dev.join(&disk)) else {
            continue;
        };
        let mut got = 0;
        while got < head.len() {
            match f.read(&mut head[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        head.truncate(got);
        for (n, uuid) in table_partuuids(&head, 512) {
            if same_partuuid(&uuid, want) {
                return Some(dev.join(partition_name(&disk, n)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: &str = "MAJOR=179\nMINOR=2\nDEVNAME=mmcblk0p2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\nPARTUUID=0badc0de-02\n";

    #[test]
    fn uevent_match() {
        assert_eq!(
            uevent_matches(PART, "0BADC0DE-02"),
            Some("mmcblk0p2".into())
        );
        assert_eq!(uevent_matches(PART, "0badc0de-03"), None);
        let disk = "MAJOR=179\nMINOR=0\nDEVNAME=mmcblk0\nDEVTYPE=disk\n";
        assert_eq!(uevent_matches(disk, "0badc0de-02"), None);
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("mmcblk0", 2), "mmcblk0p2");
        assert_eq!(partition_name("sda", 3), "sda3");
    }

    #[test]
    fn find_in_fake_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        for (n, text) in [
            ("mmcblk0", "DEVNAME=mmcblk0\nDEVTYPE=disk\n"),
            ("mmcblk0p2", PART),
        ] {
            fs::create_dir_all(sys.join(n)).unwrap();
            fs::write(sys.join(n).join("uevent"), text).unwrap();
        }
        assert_eq!(
            find_partuuid(&sys, Path::new("/dev"), "0badc0de-02"),
            Some(PathBuf::from("/dev/mmcblk0p2"))
        );
        assert_eq!(find_partuuid(&sys, Path::new("/dev"), "0badc0de-09"), None);
    }
}
