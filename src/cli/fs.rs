//! `piimg fs`: filesystem and disk images straight from host folders; the work is
//! [`piimg::fs::standalone`]'s, this parses the arguments and prints the result.

use anyhow::{anyhow, bail, Result};
use piimg::fs::disk::Table;
use piimg::fs::standalone::{self, DiskRequest, Ext4Request, FatRequest};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TableArg {
    Mbr,
    Gpt,
}

#[derive(Debug, clap::Subcommand)]
pub enum FsCmd {
    /// Write an ext4 filesystem image holding a folder (like `mke2fs -t ext4 -d`)
    #[command(after_help = "Example:\n  piimg fs ext4 --from rootfs/ --out root.ext4 --owner 0:0")]
    Ext4 {
        /// Folder whose contents become the filesystem
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Image file to write (plus FILE.sha256)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Filesystem size (e.g. 512MiB); default: the tree plus slack
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Volume label (at most 16 bytes)
        #[arg(long, default_value = "rootfs")]
        label: String,
        /// Owner of every file instead of the folder's owners
        #[arg(long, value_name = "UID:GID")]
        owner: Option<String>,
    },
    /// Write a FAT32 filesystem image holding a folder (like `mkfs.vfat` + `mcopy -s`)
    #[command(after_help = "Example:\n  piimg fs fat --from boot/ --out boot.vfat --size 64MiB")]
    Fat {
        /// Folder whose contents become the filesystem
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Image file to write (plus FILE.sha256)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Filesystem size (at least ~33 MiB for FAT32); default: the tree plus slack
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Volume label (at most 11 characters)
        #[arg(long, default_value = "BOOTFS")]
        label: String,
    },
    /// Write a partitioned disk image: FAT32 boot partition + ext4 root partition
    #[command(
        after_help = "Example:\n  piimg fs image --boot boot/ --root rootfs/ --out sd.img --table mbr --size 2GiB"
    )]
    Image {
        /// Folder for the FAT32 boot partition (partition 1)
        #[arg(long, value_name = "DIR")]
        boot: PathBuf,
        /// Folder for the ext4 root partition (partition 2)
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Disk image to write (plus FILE.sha256 and FILE.bmap, its block map for flashers)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Partition table: mbr (every Pi) or gpt (Pi 4 / 5 only)
        #[arg(long, value_enum, default_value = "mbr")]
        table: TableArg,
        /// Whole disk size; the root partition takes what the boot partition leaves
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Boot partition size; default: the boot tree plus slack
        #[arg(long, value_name = "SIZE")]
        boot_size: Option<String>,
        /// Owner of every file in the root partition instead of the folder's owners
        #[arg(long, value_name = "UID:GID")]
        owner: Option<String>,
    },
}

/// A size that is a whole number of 512-byte sectors. Parsed here rather than by clap so a bad
/// value exits with status 1 like every other error.
fn parse_sectors(opt: &str, s: Option<&String>) -> Result<Option<u64>> {
    let Some(s) = s else { return Ok(None) };
    let n = piimg::units::parse_size(s).map_err(|e| anyhow!("--{opt}: {e}"))?;
    if n == 0 || n % 512 != 0 {
        bail!("--{opt} {s}: {n} bytes is not a whole, non-zero number of 512-byte sectors");
    }
    Ok(Some(n))
}

fn parse_owner(s: Option<&String>) -> Result<Option<(u32, u32)>> {
    let Some(s) = s else { return Ok(None) };
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("--owner {s}: expected UID:GID, e.g. 0:0"))?;
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| anyhow!("--owner {s}: `{x}` is not a numeric id"))
    };
    Ok(Some((num(u)?, num(g)?)))
}

/// SOURCE_DATE_EPOCH if set (it clamps mtimes and times the filesystem), else None.
fn epoch() -> Result<Option<i64>> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        return Ok(None);
    }
    Ok(Some(super::source_date_epoch()?))
}

pub fn run(cmd: FsCmd) -> Result<()> {
    let epoch = epoch()?;
    match cmd {
        FsCmd::Ext4 {
            from,
            out,
            size,
            label,
            owner,
        } => {
            let made = standalone::ext4_image(&Ext4Request {
                from: &from,
                out: &out,
                size: parse_sectors("size", size.as_ref())?,
                label: &label,
                owner: parse_owner(owner.as_ref())?,
                epoch,
            })?;
            println!(
                "{}: ext4, {} bytes, sha256 {}",
                out.display(),
                made.size,
                made.sha256
            );
        }
        FsCmd::Fat {
            from,
            out,
            size,
            label,
        } => {
            let made = standalone::fat_image(&FatRequest {
                from: &from,
                out: &out,
                size: parse_sectors("size", size.as_ref())?,
                label: &label,
                epoch,
            })?;
            println!(
                "{}: FAT32, {} bytes, sha256 {}",
                out.display(),
                made.size,
                made.sha256
            );
        }
        FsCmd::Image {
            boot,
            root,
            out,
            table,
            size,
            boot_size,
            owner,
        } => {
            let table = match table {
                TableArg::Mbr => Table::Mbr,
                TableArg::Gpt => Table::Gpt,
            };
            let (made, layout) = standalone::disk_image(&DiskRequest {
                boot: &boot,
                root: &root,
                out: &out,
                table,
                size: parse_sectors("size", size.as_ref())?,
                boot_size: parse_sectors("boot-size", boot_size.as_ref())?,
                owner: parse_owner(owner.as_ref())?,
                epoch,
            })?;
            println!(
                "{}: {} disk, {} bytes, sha256 {}",
                out.display(),
                if table == Table::Mbr { "MBR" } else { "GPT" },
                made.size,
                made.sha256
            );
            for p in &layout.parts {
                println!(
                    "  partition {} {:>6}: start {} size {} PARTUUID={}",
                    p.number, p.name, p.start, p.size, p.partuuid
                );
            }
        }
    }
    Ok(())
}
