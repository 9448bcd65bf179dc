//! What a block device is and who uses it, from sysfs and /proc: whole disk or partition,
//! removable or fixed, size, vendor and model, partitions, mounts, swaps, holders (LVM, RAID,
//! device-mapper) and whether it holds the running system's / or /boot.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub type DevNo = (u32, u32);

/// One partition of a disk as the kernel knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionInfo {
    pub name: String,
    pub size: u64,
    /// Where it is mounted, when it is.
    pub mounted_at: Vec<String>,
}

/// A whole-disk block device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockDevice {
    pub path: PathBuf,
    pub name: String,
    #[serde(skip)]
    pub devno: DevNo,
    pub size: u64,
    pub removable: bool,
    /// usb, mmc, nvme, sata/scsi, virtio, loop, ...
    pub transport: String,
    pub vendor: String,
    pub model: String,
    pub read_only: bool,
    pub partitions: Vec<PartitionInfo>,
    /// Why the system uses it right now (mounts, swap, holders); empty when free.
    pub in_use: Vec<String>,
    /// `/` or `/boot` when the running system lives on it.
    pub holds_system: Vec<String>,
}

/// The kind of file a target path is.
pub enum Kind {
    Disk(BlockDevice),
    /// A partition of `disk`.
    Partition {
        disk: String,
    },
    Regular(u64),
    Other,
    Missing,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn sys_block(name: &str) -> PathBuf {
    Path::new("/sys/class/block").join(name)
}

fn devno_of_rdev(rdev: u64) -> DevNo {
    (libc::major(rdev), libc::minor(rdev))
}

/// The sysfs name of a device number (`loop0`, `sdb1`), when the kernel has one.
fn name_of(devno: DevNo) -> Option<String> {
    let link = std::fs::canonicalize(format!("/sys/dev/block/{}:{}", devno.0, devno.1)).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn is_partition(name: &str) -> bool {
    sys_block(name).join("partition").exists()
}

/// The whole disk a sysfs name belongs to (itself for a whole disk).
fn disk_of(name: &str) -> Option<String> {
    if !is_partition(name) {
        return Some(name.to_string());
    }
    let real = std::fs::canonicalize(sys_block(name)).ok()?;
    real.parent()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The whole disks under a device, following device-mapper and md slaves down.
fn disks_under(name: &str, out: &mut BTreeSet<String>, depth: u32) {
    let Some(disk) = disk_of(name) else { return };
    let slaves: Vec<String> = std::fs::read_dir(sys_block(&disk).join("slaves"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() || depth > 8 {
        out.insert(disk);
    } else {
        for s in slaves {
            disks_under(&s, out, depth + 1);
        }
    }
}

/// A mount from /proc/self/mountinfo: device number, mount point, source.
struct Mount {
    devno: DevNo,
    at: String,
    source: String,
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            let at = unescape_mount(f.get(4)?);
            let dash = f.iter().position(|x| *x == "-")?;
            let source = unescape_mount(f.get(dash + 2)?);
            Some(Mount {
                devno: (maj.parse().ok()?, min.parse().ok()?),
                at,
                source,
            })
        })
        .collect()
}

/// The block device behind a mount: its device number when it is a real one, else the device
/// its source names (btrfs and others report an anonymous number).
fn mount_devices(m: &Mount) -> Vec<DevNo> {
    let mut v = vec![m.devno];
    if let Ok(md) = std::fs::metadata(&m.source) {
        if md.file_type().is_block_device() {
            v.push(devno_of_rdev(md.rdev()));
        }
    }
    v
}

/// Whole disks holding the running system's `/` and `/boot` (and /boot/firmware, /boot/efi).
fn system_disks() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in mounts() {
        if !matches!(
            m.at.as_str(),
            "/" | "/boot" | "/boot/firmware" | "/boot/efi"
        ) {
            continue;
        }
        for d in mount_devices(&m) {
            if let Some(name) = name_of(d) {
                let mut disks = BTreeSet::new();
                disks_under(&name, &mut disks, 0);
                for disk in disks {
                    out.push((disk, m.at.clone()));
                }
            }
        }
    }
    out
}

fn devno_of_name(name: &str) -> Option<DevNo> {
    let t = read_trim(&sys_block(name).join("dev"))?;
    let (a, b) = t.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn size_of(name: &str) -> u64 {
    read_trim(&sys_block(name).join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |s| s * 512)
}

fn partitions_of(disk: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys_block(disk))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(disk) && is_partition(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn holders_of(name: &str) -> Vec<String> {
    std::fs::read_dir(sys_block(name).join("holders"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn transport_of(name: &str) -> String {
    let real = std::fs::canonicalize(sys_block(name))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if name.starts_with("loop") {
        "loop".into()
    } else if real.contains("/usb") {
        "usb".into()
    } else if name.starts_with("mmcblk") {
        "mmc".into()
    } else if name.starts_with("nvme") {
        "nvme".into()
    } else if real.contains("/virtio") {
        "virtio".into()
    } else if real.contains("/ata") {
        "sata".into()
    } else {
        "other".into()
    }
}

/// Describes the whole disk `name`.
pub fn describe(name: &str, path: &Path) -> Option<BlockDevice> {
    let devno = devno_of_name(name)?;
    let dev = sys_block(name).join("device");
    let transport = transport_of(name);
    // SD cards in a built-in reader (mmcblk, type SD) are what this tool writes, though the
    // kernel does not flag the slot removable; eMMC (type MMC) stays fixed.
    let removable = read_trim(&sys_block(name).join("removable")).as_deref() == Some("1")
        || (transport == "mmc" && read_trim(&dev.join("type")).as_deref() == Some("SD"));
    let (vendor, model) = if transport == "loop" {
        (
            "loop".to_string(),
            read_trim(&sys_block(name).join("loop/backing_file")).unwrap_or_default(),
        )
    } else if transport == "mmc" {
        (
            read_trim(&dev.join("manfid")).unwrap_or_default(),
            read_trim(&dev.join("name")).unwrap_or_default(),
        )
    } else {
        (
            read_trim(&dev.join("vendor")).unwrap_or_default(),
            read_trim(&dev.join("model")).unwrap_or_default(),
        )
    };
    let parts = partitions_of(name);
    let all_mounts = mounts();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let swap_devs: Vec<DevNo> = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| std::fs::metadata(unescape_mount(p)).ok())
        .filter(|md| md.file_type().is_block_device())
        .map(|md| devno_of_rdev(md.rdev()))
        .collect();
    let mut in_use = Vec::new();
    let mut partitions = Vec::new();
    for n in std::iter::once(name.to_string()).chain(parts.iter().cloned()) {
        let Some(d) = devno_of_name(&n) else { continue };
        let at: Vec<String> = all_mounts
            .iter()
            .filter(|m| mount_devices(m).contains(&d))
            .map(|m| m.at.clone())
            .collect();
        for a in &at {
            in_use.push(format!("/dev/{n} is mounted on {a}"));
        }
        if swap_devs.contains(&d) {
            in_use.push(format!("/dev/{n} is in use as swap"));
        }
        for h in holders_of(&n) {
            in_use.push(format!(
                "/dev/{n} is held by {h} (device-mapper, LVM or RAID)"
            ));
        }
        if n != name {
            partitions.push(PartitionInfo {
                size: size_of(&n),
                name: n,
                mounted_at: at,
            });
        }
    }
    let holds_system = system_disks()
        .into_iter()
        .filter(|(d, _)| d == name)
        .map(|(_, at)| at)
        .collect();
    Some(BlockDevice {
        path: path.to_path_buf(),
        name: name.to_string(),
        devno,
        size: size_of(name),
        removable,
        transport,
        vendor,
        model,
        read_only: read_trim(&sys_block(name).join("ro")).as_deref() == Some("1"),
        partitions,
        in_use,
        holds_system,
    })
}

/// What `path` is.
pub fn classify(path: &Path) -> std::io::Result<Kind> {
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kind::Missing),
        Err(e) => return Err(e),
    };
    if md.file_type().is_file() {
        return Ok(Kind::Regular(md.len()));
    }
    if !md.file_type().is_block_device() {
        return Ok(Kind::Other);
    }
    let Some(name) = name_of(devno_of_rdev(md.rdev())) else {
        return Ok(Kind::Other);
    };
    if is_partition(&name) {
        return Ok(Kind::Partition {
            disk: disk_of(&name).unwrap_or_default(),
        });
    }
    Ok(describe(&name, path).map_or(Kind::Other, Kind::Disk))
}

/// Whole disks that could be a card to flash: removable, not empty, not in use, not the system's.
pub fn candidates() -> Vec<BlockDevice> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|n| describe(n, &Path::new("/dev").join(n)))
        .filter(|d| {
            d.removable
                && d.size > 0
                && !d.read_only
                && d.in_use.is_empty()
                && d.holds_system.is_empty()
        })
        .collect()
}
