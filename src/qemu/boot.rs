//! What the Pi firmware would load, read from the image: the partition table, config.txt and
//! cmdline.txt on the FAT boot partition, and the kernel, device tree and initramfs they name
//! (the device tree edited for the QEMU machine the board needs, see [`Machine`]).

use super::{io, Machine, QemuError};
use crate::dtb::Fdt;
use crate::fs::fat32::read::{FatReadError, FatVolume};
use piimg_agent::node::Board;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

pub use piimg_agent::contract::table::{PartType, Partition};

/// Reads the partition table of a disk image (piimg_agent::contract::table::read): MBR primary
/// entries, or the GPT behind a protective MBR, in table order.
pub fn read_partitions<R: Read + Seek>(
    dev: &mut R,
    name: &str,
) -> Result<Vec<Partition>, QemuError> {
    use piimg_agent::contract::table::{self, ReadError, TableError};
    table::read(dev).map_err(|e| match e {
        ReadError::Io(source) => QemuError::Io {
            path: name.to_string(),
            source,
        },
        ReadError::Table(TableError::NoTable) => QemuError::NoTable(name.to_string()),
        ReadError::Table(t) => QemuError::Table {
            image: name.to_string(),
            msg: t.to_string(),
        },
    })
}

/// What config.txt tells the firmware to load (for a Pi 3 Model B, which QEMU's raspi3b is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub kernel: String,
    pub initramfs: Option<String>,
    pub device_tree: String,
    pub cmdline_file: String,
    /// `dtoverlay=` names, in order (parameters after `,` dropped).
    pub overlays: Vec<String>,
}

/// Parses config.txt as the firmware of a Pi 3 Model B would (QEMU's raspi3b).
pub fn parse_config_txt(text: &str) -> BootConfig {
    parse_config_txt_for(text, Board::Rpi3b)
}

/// Whether a model filter (`pi3`, `pi3+`, `pi02`, `pi4`, `cm4`, lowercase) selects `board`, as
/// the Raspberry Pi documentation's conditional-filters table has it.
fn model_filter_selects(filter: &str, board: Board) -> bool {
    match filter {
        "pi3" => matches!(board, Board::Rpi3b | Board::Rpi3bplus),
        "pi3+" => board == Board::Rpi3bplus,
        "pi02" => board == Board::Zero2w,
        "pi4" => matches!(board, Board::Rpi4b | Board::Cm4),
        "cm4" => board == Board::Cm4,
        _ => false,
    }
}

/// The device tree the Pi firmware loads when config.txt names none (its own, downstream names).
fn firmware_default_dtb(board: Board) -> &'static str {
    match board {
        Board::Rpi3b => "bcm2710-rpi-3-b.dtb",
        Board::Rpi3bplus => "bcm2710-rpi-3-b-plus.dtb",
        Board::Zero2w => "bcm2710-rpi-zero-2-w.dtb",
        Board::Rpi4b => "bcm2711-rpi-4-b.dtb",
        Board::Cm4 => "bcm2711-rpi-cm4.dtb",
    }
}

/// Parses config.txt as `board`'s firmware would: `[all]` and the model filters that select
/// the board apply; other model filters and every other kind of filter (`[gpio...]`,
/// `[EDID=...]`, `[none]`, ...) do not. Model filters replace each other; `[all]` resets
/// everything. Missing settings take the firmware's defaults for the board.
pub fn parse_config_txt_for(text: &str, board: Board) -> BootConfig {
    let mut kernel = None;
    let mut initramfs = None;
    let mut device_tree = None;
    let mut cmdline = None;
    let mut arm64 = false;
    let mut overlays = Vec::new();
    let (mut model_ok, mut other_ok) = (true, true);
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(f) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let f = f.trim().to_ascii_lowercase();
            match f.as_str() {
                "all" => (model_ok, other_ok) = (true, true),
                m if m.starts_with("pi") || m.starts_with("cm") => {
                    model_ok = model_filter_selects(m, board)
                }
                _ => other_ok = false,
            }
            continue;
        }
        if !(model_ok && other_ok) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("initramfs ") {
            // `initramfs FILE followkernel` (or an address): the first word is the file.
            initramfs = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "kernel" => kernel = Some(v),
            "device_tree" => device_tree = Some(v),
            "cmdline" => cmdline = Some(v),
            "arm_64bit" => arm64 = v == "1",
            "dtoverlay" if !v.is_empty() => {
                overlays.push(v.split([',', ':']).next().unwrap_or("").to_string())
            }
            _ => {}
        }
    }
    BootConfig {
        // The firmware's defaults.
        kernel: kernel.unwrap_or_else(|| if arm64 { "kernel8.img" } else { "kernel7.img" }.into()),
        initramfs,
        device_tree: device_tree.unwrap_or_else(|| firmware_default_dtb(board).into()),
        cmdline_file: cmdline.unwrap_or_else(|| "cmdline.txt".into()),
        overlays,
    }
}

/// What the firmware's `disable-bt` overlay does that matters under QEMU: without the
/// Bluetooth node under the PL011 UART (serial@7e201000), the kernel makes the UART a tty
/// (ttyAMA0) instead of a serdev bus for Bluetooth, and console input reaches the guest. A tree
/// without that node is returned as it was.
pub fn raspi3b_dtb(bytes: &[u8]) -> Result<Vec<u8>, crate::dtb::DtbError> {
    let mut fdt = crate::dtb::Fdt::parse(bytes)?;
    if super::pi4::remove_bluetooth(&mut fdt) {
        Ok(fdt.to_bytes())
    } else {
        Ok(bytes.to_vec())
    }
}

/// The board whose firmware the boot files are for: a CM4 or Pi 4 if config.txt, read as that
/// board's firmware reads it, names a device tree of that board (its root `compatible`); else a
/// Pi 3, QEMU's raspi3b. `read` gives a boot file's bytes, None if it cannot.
pub fn board_of(config_txt: &str, mut read: impl FnMut(&str) -> Option<Vec<u8>>) -> Board {
    for (board, compatible) in [
        (Board::Cm4, "raspberrypi,4-compute-module"),
        (Board::Rpi4b, "brcm,bcm2711"),
    ] {
        let dtb = read(&parse_config_txt_for(config_txt, board).device_tree);
        let names = |f: Fdt| f.root.strings("compatible").iter().any(|c| c == compatible);
        if dtb.is_some_and(|b| Fdt::parse(&b).is_ok_and(names)) {
            return board;
        }
    }
    Board::Rpi3b
}

/// The board's device tree (the file `dtb`) edited in place for its QEMU machine.
fn prepare_dtb(board: Board, dtb: &Path, image: &str, file: &str) -> Result<(), QemuError> {
    let bytes = std::fs::read(dtb).map_err(io(dtb))?;
    let bytes = Machine::for_board(board)
        .prepare_dtb(bytes)
        .map_err(|source| QemuError::DeviceTree {
            image: image.to_string(),
            file: file.to_string(),
            source,
        })?;
    std::fs::write(dtb, bytes).map_err(io(dtb))
}

/// The boot files of an image, extracted into a folder.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The board whose firmware would read them ([`board_of`]).
    pub board: Board,
    pub partition: Partition,
    pub config: BootConfig,
    pub kernel: PathBuf,
    pub dtb: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// cmdline.txt as one line.
    pub cmdline: String,
    /// `dtoverlay=` lines `piimg qemu` does not emulate.
    pub ignored_overlays: Vec<String>,
}

/// What QEMU loads itself, in place of the Pi firmware.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub kernel: PathBuf,
    pub dtb: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

impl BootFiles {
    pub fn kernel_files(&self) -> KernelFiles {
        KernelFiles {
            kernel: self.kernel.clone(),
            dtb: self.dtb.clone(),
            initramfs: self.initramfs.clone(),
            cmdline: self.cmdline.clone(),
        }
    }
}

/// Finds the boot partition (the first FAT-typed partition that holds a FAT filesystem), reads
/// config.txt and cmdline.txt from it and copies the kernel, device tree and initramfs into
/// `dest`.
pub fn extract_boot(image: &Path, dest: &Path) -> Result<BootFiles, QemuError> {
    let name = image.display().to_string();
    let mut f = File::open(image).map_err(io(image))?;
    let parts = read_partitions(&mut f, &name)?;
    let mut last_err = "the table has no FAT-typed partition".to_string();
    let mut found = None;
    for p in parts.iter().filter(|p| p.is_fat_type()) {
        let dev = f.try_clone().map_err(io(image))?;
        match FatVolume::open(dev, p.start) {
            Ok(v) => {
                found = Some((p.clone(), v));
                break;
            }
            Err(e) => last_err = format!("partition {}: {e}", p.number),
        }
    }
    let (part, mut vol) = found.ok_or(QemuError::NoBootPartition {
        image: name.clone(),
        msg: last_err,
    })?;
    let fat = |source| QemuError::Fat {
        image: name.clone(),
        source,
    };
    let missing = |file: &str, by: &str| QemuError::MissingBootFile {
        image: name.clone(),
        file: file.to_string(),
        by: by.to_string(),
    };
    let config_text = match vol.read_file("config.txt") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        // No config.txt: the firmware runs on defaults.
        Err(FatReadError::NotFound(_)) => String::new(),
        Err(e) => return Err(fat(e)),
    };
    let board = board_of(&config_text, |f| vol.read_file(f).ok());
    let config = parse_config_txt_for(&config_text, board);
    let cmdline = match vol.read_file(&config.cmdline_file) {
        Ok(b) => String::from_utf8_lossy(&b)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(FatReadError::NotFound(_)) => String::new(),
        Err(e) => return Err(fat(e)),
    };
    let mut copy = |file: &str, by: &str, out_name: &str| -> Result<PathBuf, QemuError> {
        let out = dest.join(out_name);
        let mut w = File::create(&out).map_err(io(&out))?;
        match vol.copy_file(file, &mut w) {
            Ok(_) => Ok(out),
            Err(FatReadError::NotFound(_)) => Err(missing(file, by)),
            Err(e) => Err(fat(e)),
        }
    };
    let kernel = copy(&config.kernel, "kernel= in config.txt", "kernel")?;
    let dtb = copy(&config.device_tree, "device_tree= in config.txt", "dtb")?;
    // QEMU emulates no Bluetooth chip, but the board's device tree puts one on the PL011, which
    // would take ttyAMA0 (the console) away from the serial port: it goes, as with the firmware's
    // disable-bt overlay. Other overlays are the firmware's job and are only reported.
    prepare_dtb(board, &dtb, &name, &config.device_tree)?;
    let ignored_overlays: Vec<String> = config
        .overlays
        .iter()
        .filter(|o| o.as_str() != "disable-bt")
        .cloned()
        .collect();
    let initramfs = match &config.initramfs {
        Some(i) => Some(copy(i, "initramfs in config.txt", "initramfs")?),
        None => None,
    };
    Ok(BootFiles {
        board,
        partition: part,
        config,
        kernel,
        dtb,
        initramfs,
        cmdline,
        ignored_overlays,
    })
}

/// The boot files of a netboot folder (`piimg build --netboot`): what the firmware would have
/// fetched over TFTP, read in place; only the device tree is copied into `dest` to be edited
/// as [`extract_boot`] does.
pub fn folder_boot(dir: &Path, dest: &Path) -> Result<KernelFiles, QemuError> {
    let name = dir.display().to_string();
    let config_text = match std::fs::read(dir.join("config.txt")) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&dir.join("config.txt"))(e)),
    };
    let board = board_of(&config_text, |f| std::fs::read(dir.join(f)).ok());
    let config = parse_config_txt_for(&config_text, board);
    let cmdline = std::fs::read(dir.join(&config.cmdline_file))
        .map(|b| {
            let text = String::from_utf8_lossy(&b).into_owned();
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default();
    let present = |file: &str, by: &str| -> Result<PathBuf, QemuError> {
        let p = dir.join(file);
        if p.is_file() {
            Ok(p)
        } else {
            Err(QemuError::MissingBootFile {
                image: name.clone(),
                file: file.to_string(),
                by: by.to_string(),
            })
        }
    };
    let kernel = present(&config.kernel, "kernel= in config.txt")?;
    let source_dtb = present(&config.device_tree, "device_tree= in config.txt")?;
    let dtb = dest.join("dtb");
    std::fs::copy(&source_dtb, &dtb).map_err(io(&source_dtb))?;
    prepare_dtb(board, &dtb, &name, &config.device_tree)?;
    let initramfs = match &config.initramfs {
        Some(i) => Some(present(i, "initramfs in config.txt")?),
        None => None,
    };
    Ok(KernelFiles {
        kernel,
        dtb,
        initramfs,
        cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition tables whose numbers point anywhere: an error naming the problem, never a
    /// panic or an overflowing offset.
    #[test]
    fn hostile_partition_tables_are_refused() {
        let disk = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut d = vec![0u8; 64 * 512];
            d[510] = 0x55;
            d[511] = 0xaa;
            edit(&mut d);
            read_partitions(&mut std::io::Cursor::new(d), "hostile.img")
        };
        // MBR: a partition starting near 2^32 sectors on a tiny disk.
        let r = disk(&|d| {
            d[446 + 4] = 0x83;
            d[446 + 8..446 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
            d[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        });
        assert!(matches!(r, Err(QemuError::Table { .. })), "{r:?}");
        let gpt = |entries_lba: u64, last: u64| {
            move |d: &mut Vec<u8>| {
                d[446 + 4] = 0xee;
                d[446 + 12..446 + 16].copy_from_slice(&63u32.to_le_bytes());
                d[512..520].copy_from_slice(b"EFI PART");
                d[512 + 72..512 + 80].copy_from_slice(&entries_lba.to_le_bytes());
                d[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
                d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
                let e = 1024;
                d[e] = 1;
                d[e + 32..e + 40].copy_from_slice(&34u64.to_le_bytes());
                d[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
                // Valid checksums, so that the extents are what gets refused.
                use piimg_agent::contract::crc32;
                d[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
                let array = crc32(&d[1024..1024 + 4 * 128]);
                d[512 + 88..512 + 92].copy_from_slice(&array.to_le_bytes());
                let header = crc32(&d[512..512 + 92]);
                d[512 + 16..512 + 20].copy_from_slice(&header.to_le_bytes());
            }
        };
        for (lba, last, why) in [
            (u64::MAX / 4, 40, "outside the disk"),
            (2, u64::MAX, "bad extent"),
            (2, u64::MAX / 512, "bad extent"),
            (1 << 40, 40, "outside the disk"),
        ] {
            let r = disk(&gpt(lba, last));
            assert!(
                matches!(&r, Err(QemuError::Table { msg, .. }) if msg.contains(why)),
                "{lba} {last}: {r:?}"
            );
        }
        // A checksum that does not match is refused as the kernel refuses it.
        let r = disk(&|d| {
            gpt(2, 40)(d);
            d[1024 + 40] ^= 1;
        });
        assert!(
            matches!(&r, Err(QemuError::Table { msg, .. }) if msg.contains("checksum")),
            "{r:?}"
        );
        // The same table with sane numbers reads.
        let r = disk(&gpt(2, 40)).unwrap();
        assert_eq!((r[0].start, r[0].size), (34 * 512, 7 * 512));
    }

    #[test]
    fn config_txt_sections() {
        let c = parse_config_txt(
            "arm_64bit=1\nkernel=k.img\ninitramfs init.gz followkernel\n[pi4]\nkernel=pi4.img\ndtoverlay=vc4-kms-v3d\n\
             [pi3]\ndevice_tree=a.dtb\ndtoverlay=disable-bt\n[pi02]\ndevice_tree=zero.dtb\n[all]\ncmdline=c.txt\n\
             [gpio4=1]\nkernel=gpio.img\n",
        );
        assert_eq!(c.kernel, "k.img");
        assert_eq!(c.initramfs.as_deref(), Some("init.gz"));
        assert_eq!(c.device_tree, "a.dtb");
        assert_eq!(c.cmdline_file, "c.txt");
        assert_eq!(c.overlays, ["disable-bt"]);
        let t = "kernel=k.img\n[pi4]\nkernel=k4.img\n[pi3]\ndevice_tree=b3.dtb\n[all]\ninitramfs initrd followkernel\n";
        let c = parse_config_txt_for(t, Board::Rpi3bplus);
        assert_eq!(
            (c.kernel.as_str(), c.device_tree.as_str()),
            ("k.img", "b3.dtb")
        );
        assert_eq!(c.initramfs.as_deref(), Some("initrd"));
        assert_eq!(parse_config_txt_for(t, Board::Cm4).kernel, "k4.img");
        let d = parse_config_txt("arm_64bit=1\n");
        assert_eq!(d.kernel, "kernel8.img");
        assert_eq!(d.initramfs, None);
    }
}
