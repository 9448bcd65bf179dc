//! Finding a partition without udev: by PARTUUID, first the kernel's uevent files in
//! /sys/class/block (they carry `PARTUUID=`), then the partition tables of whole disks; and by
//! the label in an ext4 superblock (netboot's data card).

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
    use crate::contract::mbr_partuuid;
    use crate::contract::table::{gpt_entries, GptHeader, Mbr};
    let Some(mbr) = Mbr::parse(head) else {
        return Vec::new();
    };
    if !mbr.is_protective() {
        return (1..=4u32)
            .filter(|&n| mbr.entries[n as usize - 1].kind != 0)
            .map(|n| (n, mbr_partuuid(mbr.signature, n)))
            .collect();
    }
    let Some(Ok(hdr)) = head.get(sector..).map(GptHeader::parse) else {
        return Vec::new();
    };
    let array = usize::try_from(hdr.entries_lba)
        .ok()
        .and_then(|lba| lba.checked_mul(sector))
        .and_then(|at| head.get(at..))
        .unwrap_or_default();
    let array = &array[..array.len().min(hdr.array_bytes() as usize)];
    gpt_entries(&hdr, array)
        .into_iter()
        .map(|e| (e.number, e.unique_guid.to_string()))
        .collect()
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

/// Where the ext4 superblock and its fields are (ext4 disk layout, "The Super Block").
pub mod ext4_sb {
    /// Byte offset of the superblock on the device.
    pub const OFFSET: usize = 1024;
    /// s_magic, le16.
    pub const MAGIC: usize = 0x38;
    pub const MAGIC_VALUE: u16 = 0xEF53;
    /// s_volume_name, 16 bytes, NUL-padded.
    pub const VOLUME_NAME: usize = 0x78;
    pub const VOLUME_NAME_LEN: usize = 16;
    /// Bytes to read from the start of a device to see both.
    pub const HEAD: usize = OFFSET + VOLUME_NAME + VOLUME_NAME_LEN;
}

/// The label of the ext2/3/4 filesystem whose first bytes are `head`; None when it is not one.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    use ext4_sb::*;
    let sb = head.get(OFFSET..HEAD)?;
    if u16::from_le_bytes([sb[MAGIC], sb[MAGIC + 1]]) != MAGIC_VALUE {
        return None;
    }
    let name = &sb[VOLUME_NAME..VOLUME_NAME + VOLUME_NAME_LEN];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Block devices no card's data filesystem is on: loop (the netboot root is on one) and RAM
/// disks; optical drives, raw flash and network block devices, where a read can block for long.
const NOT_A_CARD: [&str; 6] = ["loop", "ram", "zram", "sr", "mtdblock", "nbd"];

/// Whether sysfs says the device is empty (an unconfigured nbd, a reader without a card);
/// unknown counts as not empty.
fn is_empty(sys_block: &Path, name: &str) -> bool {
    fs::read_to_string(sys_block.join(name).join("size"))
        .is_ok_and(|s| s.trim().parse::<u64>() == Ok(0))
}

/// Finds a disk or partition (see [`NOT_A_CARD`] for those left out) holding an ext4
/// filesystem labelled `label`; the first by name.
pub fn find_ext4_label(sys_block: &Path, dev: &Path, label: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !NOT_A_CARD.iter().any(|p| n.starts_with(p)))
        .filter(|n| !is_empty(sys_block, n))
        .collect();
    names.sort();
    names.into_iter().map(|n| dev.join(n)).find(|p| {
        let mut head = vec![0u8; ext4_sb::HEAD];
        fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && ext4_label(&head).as_deref() == Some(label)
    })
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// An ext4 image made by mke2fs, labelled `label`.
    pub(crate) fn mkfs_ext4(path: &Path, label: &str) {
        let out = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", label])
            .arg(path)
            .arg("2M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn label_of_a_filesystem_mke2fs_made() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        mkfs_ext4(&img, "piimg-data");
        let head = fs::read(&img).unwrap();
        assert_eq!(ext4_label(&head).as_deref(), Some("piimg-data"));
        mkfs_ext4(&img, "a-label-of-16-ch");
        assert_eq!(
            ext4_label(&fs::read(&img).unwrap()).as_deref(),
            Some("a-label-of-16-ch")
        );
        assert_eq!(ext4_label(&[0u8; 4096]), None);
        assert_eq!(ext4_label(&head[..1100]), None);
    }

    /// A device in a fake /sys/class/block with its size in sectors.
    fn sys_device(sys: &Path, name: &str, sectors: u64) {
        fs::create_dir_all(sys.join(name)).unwrap();
        fs::write(sys.join(name).join("size"), format!("{sectors}\n")).unwrap();
    }

    #[test]
    fn find_by_label_skips_loop_devices_and_other_labels() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        fs::create_dir_all(&dev).unwrap();
        for (name, label) in [
            ("loop0", "piimg-data"),
            ("sda1", "other"),
            ("sdb1", "piimg-data"),
        ] {
            sys_device(&sys, name, 4096);
            mkfs_ext4(&dev.join(name), label);
        }
        sys_device(&sys, "sdb", 8192);
        fs::write(dev.join("sdb"), [0u8; 512]).unwrap();
        assert_eq!(
            find_ext4_label(&sys, &dev, "piimg-data"),
            Some(dev.join("sdb1"))
        );
        assert_eq!(find_ext4_label(&sys, &dev, "nothing"), None);
    }

    #[test]
    fn find_by_label_opens_no_optical_flash_network_or_empty_device() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        fs::create_dir_all(&dev).unwrap();
        // All labelled alike and named before vda1: any of them opened would be the answer.
        for (name, sectors) in [
            ("mmcblk0", 0),
            ("mtdblock0", 4096),
            ("nbd0", 4096),
            ("sda", 0),
            ("sr0", 4096),
            ("vda1", 4096),
        ] {
            sys_device(&sys, name, sectors);
            mkfs_ext4(&dev.join(name), "piimg-data");
        }
        assert_eq!(
            find_ext4_label(&sys, &dev, "piimg-data"),
            Some(dev.join("vda1"))
        );
        // A size sysfs does not give is no reason to leave a device out.
        fs::remove_file(sys.join("sda").join("size")).unwrap();
        assert_eq!(
            find_ext4_label(&sys, &dev, "piimg-data"),
            Some(dev.join("sda"))
        );
    }
}
