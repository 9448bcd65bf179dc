//! `piimg fs`: filesystem and disk images straight from host folders (what `mke2fs -d`,
//! `mkfs.vfat` + `mcopy -s` and `sfdisk` + `dd` do, in one reproducible step).
//!
//! Reproducibility: ids (filesystem UUID, FAT volume id, disk signature/GUIDs) come from sha256 of
//! the label and the output file *name* (not its folder); with SOURCE_DATE_EPOCH set, later mtimes
//! are clamped to it and it is the filesystem timestamp, otherwise filesystem-level times are 0.

use anyhow::{anyhow, bail, Context, Result};
use piimg::fs::disk::{self, PartKind, PartSpec, Table};
use piimg::fs::ext4::{self, Ext4Error, Ext4Options};
use piimg::fs::fat32::{self, FatError, FatOptions};
use piimg::fs::sparse::{sha256_file, AtomicOutput, OutputSet, Sink};
use piimg::tree::{HostImport, Tree};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

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

/// Library errors already name their cause in their message; cutting the chain keeps the
/// message from repeating it.
fn flat(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// SOURCE_DATE_EPOCH if set (it clamps mtimes and times the filesystem), else None.
fn epoch() -> Result<Option<i64>> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        return Ok(None);
    }
    Ok(Some(super::source_date_epoch()?))
}

fn load_tree(dir: &Path, owner: Option<(u32, u32)>, epoch: Option<i64>) -> Result<Tree> {
    let mut tree = Tree::from_host_dir(dir, HostImport { owner, mtime: None })
        .map_err(|e| anyhow!("reading {}: {e}", dir.display()))?;
    if let Some(e) = epoch {
        let ids: Vec<_> = tree.live_nodes().collect();
        for id in ids {
            let m = &mut tree.node_mut(id).meta;
            m.mtime = m.mtime.min(e);
        }
    }
    Ok(tree)
}

/// sha256 over a purpose, the label and the output's file name: the seed of every id.
fn seed(purpose: &str, label: &str, out: &Path) -> Result<[u8; 32]> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: output needs a file name", out.display()))?;
    let mut h = Sha256::new();
    for part in [
        purpose.as_bytes(),
        label.as_bytes(),
        name.as_encoded_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(h.finalize().into())
}

fn round_mib(n: u64) -> u64 {
    n.div_ceil(MIB) * MIB
}

/// Tree plus 10 % (at least 1 MiB), whole MiB.
fn with_slack(n: u64) -> u64 {
    round_mib(n + (n / 10).max(MIB))
}

fn fat_default_size(tree: &Tree, label: &str) -> Result<u64> {
    Ok(with_slack(
        fat32::min_size(tree, !label.is_empty()).map_err(flat)?,
    ))
}

/// A first guess of the ext4 size for a tree: data in 4 KiB blocks, a block per directory,
/// 256-byte inodes with headroom, plus room for metadata and the journal. If the writer needs
/// more it says how much, and a default-sized build retries with that.
fn ext4_estimate(tree: &Tree) -> u64 {
    use piimg::tree::NodeKind;
    let mut data = 0u64;
    let mut nodes = 0u64;
    for id in tree.live_nodes() {
        nodes += 1;
        data += match &tree.node(id).kind {
            NodeKind::File(d) => d.len().div_ceil(4096) * 4096,
            NodeKind::Dir(_) => 4096,
            NodeKind::Symlink(t) if t.len() >= 60 => 4096,
            _ => 0,
        };
    }
    with_slack(data + nodes * 512 + 16 * MIB)
}

fn ext4_options(size: u64, label: &str, seed: &[u8; 32], timestamp: i64) -> Ext4Options {
    let mut uuid = disk::derived_guid(seed, "ext4-uuid");
    // ext4 shows the UUID as stored; keep the RFC 4122 bits for tools that check them.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    Ext4Options {
        size,
        label: label.to_string(),
        uuid,
        hash_seed: disk::derived_guid(seed, "ext4-hash-seed"),
        timestamp,
    }
}

fn fat_options(size: u64, label: &str, seed: &[u8; 32], timestamp: i64, hidden: u32) -> FatOptions {
    let v = disk::derived_guid(seed, "fat-volume-id");
    FatOptions {
        size,
        label: label.to_string(),
        volume_id: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
        timestamp,
        hidden_sectors: hidden,
    }
}

/// Creates the output, lets `fill` write it, then syncs and commits it with its sha256 sidecar
/// (and, for disk images, its bmap) as one set. On error nothing is left at `out`.
fn produce(
    out: &Path,
    len: u64,
    with_bmap: bool,
    fill: impl FnOnce(&mut dyn Sink) -> Result<()>,
) -> Result<String> {
    let output =
        AtomicOutput::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mapped = {
        let mut sink = output
            .sink(len)
            .with_context(|| format!("sizing {}", out.display()))?;
        fill(&mut sink)?;
        sink.mapped()
    };
    // Hashing is CPU work and the sync is disk work: run them side by side (the sync in
    // `commit` then finds nothing left to write).
    let mut f = output.file().try_clone()?;
    let syncer = output.file().try_clone()?;
    let (digest, synced) = std::thread::scope(|s| {
        let sync = s.spawn(move || syncer.sync_data());
        let digest = sha256_file(&mut f);
        (digest, sync.join())
    });
    let digest = digest.with_context(|| format!("hashing {}", out.display()))?;
    synced
        .map_err(|_| anyhow!("syncing {}: the sync thread panicked", out.display()))?
        .with_context(|| format!("syncing {}", out.display()))?;
    let hex = hex::encode(digest);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let side = |ext: &str| piimg::image::sidecar(out, ext);
    let mut set = OutputSet::new();
    let bmap = if with_bmap {
        let map = piimg::bmap::Bmap::from_extents(output.file(), &mapped)
            .with_context(|| format!("mapping {}", out.display()))?;
        Some(piimg::image::stage_bytes(
            &side(".bmap"),
            map.to_xml().as_bytes(),
        )?)
    } else {
        None
    };
    set.push(output);
    set.extend(bmap);
    set.push(piimg::image::stage_bytes(
        &side(".sha256"),
        format!("{hex}  {name}\n").as_bytes(),
    )?);
    set.commit(0o644)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(hex)
}

pub fn run(cmd: FsCmd) -> Result<()> {
    let ts = epoch()?;
    let timestamp = ts.unwrap_or(0);
    match cmd {
        FsCmd::Ext4 {
            from,
            out,
            size,
            label,
            owner,
        } => {
            let size = parse_sectors("size", size.as_ref())?;
            let owner = parse_owner(owner.as_ref())?;
            let tree = load_tree(&from, owner, ts)?;
            let seed = seed("ext4", &label, &out)?;
            let mut size_now = size.unwrap_or_else(|| ext4_estimate(&tree));
            // A default size grows once if the writer says it needs more; an explicit one does not.
            for attempt in 0..2 {
                let opts = ext4_options(size_now, &label, &seed, timestamp);
                let mut err: Option<Ext4Error> = None;
                let res = produce(&out, size_now, false, |sink| {
                    ext4::write(&tree, &opts, sink, 0).map_err(|e| {
                        let msg = e.to_string();
                        err = Some(e);
                        anyhow::anyhow!(msg)
                    })
                });
                match (res, err) {
                    (Ok(hex), _) => {
                        println!("{}: ext4, {size_now} bytes, sha256 {hex}", out.display());
                        return Ok(());
                    }
                    (Err(_), Some(Ext4Error::TooSmall { needed, .. }))
                        if size.is_none() && attempt == 0 =>
                    {
                        size_now = with_slack(needed);
                    }
                    (Err(e), _) => return Err(e.context(format!("building {}", out.display()))),
                }
            }
            bail!("building {}: the tree does not fit", out.display());
        }
        FsCmd::Fat {
            from,
            out,
            size,
            label,
        } => {
            let size = parse_sectors("size", size.as_ref())?;
            let tree = load_tree(&from, None, ts)?;
            let seed = seed("fat", &label, &out)?;
            let ctx = || format!("building {}", out.display());
            let size = match size {
                Some(s) => s,
                None => fat_default_size(&tree, &label).with_context(ctx)?,
            };
            let opts = fat_options(size, &label, &seed, timestamp, 0);
            let hex = produce(&out, size, false, |sink| {
                fat32::write(&tree, &opts, sink, 0).map_err(flat)
            })
            .with_context(ctx)?;
            println!("{}: FAT32, {size} bytes, sha256 {hex}", out.display());
        }
        FsCmd::Image {
            boot,
            root,
            out,
            table,
            size,
            boot_size,
            owner,
        } => image(ImageArgs {
            boot,
            root,
            out,
            table: match table {
                TableArg::Mbr => Table::Mbr,
                TableArg::Gpt => Table::Gpt,
            },
            size: parse_sectors("size", size.as_ref())?,
            boot_size: parse_sectors("boot-size", boot_size.as_ref())?,
            owner: parse_owner(owner.as_ref())?,
            epoch: ts,
        })?,
    }
    Ok(())
}

struct ImageArgs {
    boot: PathBuf,
    root: PathBuf,
    out: PathBuf,
    table: Table,
    size: Option<u64>,
    boot_size: Option<u64>,
    owner: Option<(u32, u32)>,
    epoch: Option<i64>,
}

const BOOT_LABEL: &str = "BOOTFS";
const ROOT_LABEL: &str = "rootfs";

fn image(a: ImageArgs) -> Result<()> {
    let timestamp = a.epoch.unwrap_or(0);
    let ctx = || format!("building {}", a.out.display());
    let boot_tree = load_tree(&a.boot, None, a.epoch)?;
    let root_tree = load_tree(&a.root, a.owner, a.epoch)?;
    let seed = seed("image", "", &a.out)?;
    let boot_size = match a.boot_size {
        Some(s) => s,
        None => fat_default_size(&boot_tree, BOOT_LABEL).with_context(ctx)?,
    };
    // 1 MiB before the first partition, and 1 MiB of room for alignment and the GPT backup.
    let root_default = ext4_estimate(&root_tree);
    let mut disk_size = a.size.unwrap_or(MIB + boot_size + root_default + MIB);
    let specs = |boot_size: u64| {
        vec![
            PartSpec {
                name: "boot".into(),
                kind: PartKind::BootFat,
                size: boot_size,
            },
            PartSpec {
                name: "root".into(),
                kind: PartKind::Linux,
                size: 0,
            },
        ]
    };
    // Only a default-sized disk may grow when ext4 says it needs more.
    for attempt in 0..2 {
        let layout = disk::plan(a.table, disk_size, &specs(boot_size), &seed)
            .map_err(flat)
            .with_context(ctx)?;
        let (bp, rp) = (&layout.parts[0], &layout.parts[1]);
        let fat_opts = fat_options(
            bp.size,
            BOOT_LABEL,
            &seed,
            timestamp,
            u32::try_from(bp.start / 512).context("boot partition beyond 2 TiB")?,
        );
        let ext_opts = ext4_options(rp.size, ROOT_LABEL, &seed, timestamp);
        let mut ext_err: Option<Ext4Error> = None;
        let res = produce(&a.out, disk_size, true, |sink| {
            disk::write_table(&layout, sink).map_err(flat)?;
            fat32::write(&boot_tree, &fat_opts, sink, bp.start).map_err(|e| match e {
                FatError::TooSmall { needed, size } => anyhow::anyhow!(
                    "boot partition: the tree needs at least {needed} bytes but the partition is {size} bytes (use --boot-size)"
                ),
                e => anyhow!("boot partition: {e}"),
            })?;
            if let Err(e) = ext4::write(&root_tree, &ext_opts, sink, rp.start) {
                let msg = format!("root partition: {e}");
                ext_err = Some(e);
                bail!(msg);
            }
            Ok(())
        });
        match (res, ext_err) {
            (Ok(hex), _) => {
                println!(
                    "{}: {} disk, {disk_size} bytes, sha256 {hex}",
                    a.out.display(),
                    if a.table == Table::Mbr { "MBR" } else { "GPT" }
                );
                for p in &layout.parts {
                    println!(
                        "  partition {} {:>6}: start {} size {} PARTUUID={}",
                        p.number, p.name, p.start, p.size, p.partuuid
                    );
                }
                return Ok(());
            }
            (Err(_), Some(Ext4Error::TooSmall { needed, .. }))
                if a.size.is_none() && attempt == 0 =>
            {
                disk_size = MIB + boot_size + with_slack(needed) + MIB;
            }
            (Err(e), _) => return Err(e.context(ctx())),
        }
    }
    bail!("{}: root partition does not fit", ctx())
}
