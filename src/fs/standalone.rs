//! Filesystem and disk images straight from host folders (`piimg fs`): what `mke2fs -d`,
//! `mkfs.vfat` + `mcopy -s` and `sfdisk` + `dd` do, in one reproducible step.
//!
//! Reproducibility: ids (filesystem UUID, FAT volume id, disk signature/GUIDs) come from sha256 of
//! the label and the output file *name* (not its folder); with an epoch (SOURCE_DATE_EPOCH),
//! later mtimes are clamped to it and it is the filesystem timestamp, otherwise filesystem-level
//! times are 0.

use crate::bmap::Bmap;
use crate::fs::disk::{self, DiskError, Layout, PartKind, PartSpec, Table};
use crate::fs::ext4::{self, Ext4Error, Ext4Options};
use crate::fs::fat32::{self, FatError, FatOptions};
use crate::fs::ids;
use crate::fs::sparse::{sha256_file, AtomicOutput, OutputSet, Sink};
use crate::image::{self, ImageError};
use crate::tree::{HostImport, InodeKind, Tree, TreeError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const BOOT_LABEL: &str = "BOOTFS";
const ROOT_LABEL: &str = "rootfs";

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The tree error names its cause; no chain, so the message says it once.
    #[error("reading {0}: {1}")]
    Read(PathBuf, TreeError),
    #[error("{0}: output needs a file name")]
    NoFileName(PathBuf),
    #[error("building {out}")]
    Build {
        out: PathBuf,
        #[source]
        source: Box<StandaloneError>,
    },
    /// `what` is the step: creating, sizing, hashing, syncing, mapping, writing.
    #[error("{what} {path}")]
    Output {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("syncing {0}: the sync thread panicked")]
    SyncPanicked(PathBuf),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Ext4(Ext4Error),
    #[error("{0}")]
    Fat(FatError),
    #[error("{0}")]
    Disk(DiskError),
    #[error("the tree does not fit")]
    NoFit,
    #[error("boot partition beyond 2 TiB")]
    BootBeyond2TiB(#[source] std::num::TryFromIntError),
    #[error("boot partition: the tree needs at least {needed} bytes but the partition is {size} bytes (use --boot-size)")]
    BootTooSmall { needed: u64, size: u64 },
    #[error("boot partition: {0}")]
    BootPartition(FatError),
    #[error("root partition: {0}")]
    RootPartition(Ext4Error),
    #[error("root partition does not fit")]
    RootNoFit,
}

impl StandaloneError {
    fn building(self, out: &Path) -> StandaloneError {
        StandaloneError::Build {
            out: out.to_path_buf(),
            source: Box::new(self),
        }
    }
}

/// What was written: the image's size and sha256.
#[derive(Debug, Clone)]
pub struct Made {
    pub size: u64,
    pub sha256: String,
}

pub struct Ext4Request<'a> {
    pub from: &'a Path,
    pub out: &'a Path,
    /// None: the tree plus slack, grown once if the writer needs more.
    pub size: Option<u64>,
    pub label: &'a str,
    /// Owner of every file instead of the folder's owners.
    pub owner: Option<(u32, u32)>,
    pub epoch: Option<i64>,
}

pub struct FatRequest<'a> {
    pub from: &'a Path,
    pub out: &'a Path,
    pub size: Option<u64>,
    pub label: &'a str,
    pub epoch: Option<i64>,
}

/// A FAT32 boot partition and an ext4 root partition taking the rest of the disk.
pub struct DiskRequest<'a> {
    pub boot: &'a Path,
    pub root: &'a Path,
    pub out: &'a Path,
    pub table: Table,
    pub size: Option<u64>,
    pub boot_size: Option<u64>,
    pub owner: Option<(u32, u32)>,
    pub epoch: Option<i64>,
}

/// An ext4 image of a folder, committed with its `.sha256`.
pub fn ext4_image(r: &Ext4Request) -> Result<Made, StandaloneError> {
    let timestamp = r.epoch.unwrap_or(0);
    let tree = load_tree(r.from, r.owner, r.epoch)?;
    let seed = seed("ext4", r.label, r.out)?;
    let mut size = r.size.unwrap_or_else(|| ext4_estimate(&tree));
    // A default size grows once if the writer says it needs more; an explicit one does not.
    for attempt in 0..2 {
        let opts = ext4_options(size, r.label, &seed, timestamp);
        let res = produce(r.out, size, false, |sink| {
            ext4::write(&tree, &opts, sink, 0).map_err(StandaloneError::Ext4)
        });
        match res {
            Ok(sha256) => return Ok(Made { size, sha256 }),
            Err(StandaloneError::Ext4(Ext4Error::TooSmall { needed, .. }))
                if r.size.is_none() && attempt == 0 =>
            {
                size = with_slack(needed);
            }
            Err(e) => return Err(e.building(r.out)),
        }
    }
    Err(StandaloneError::NoFit.building(r.out))
}

/// A FAT32 image of a folder, committed with its `.sha256`.
pub fn fat_image(r: &FatRequest) -> Result<Made, StandaloneError> {
    let tree = load_tree(r.from, None, r.epoch)?;
    let seed = seed("fat", r.label, r.out)?;
    let size = match r.size {
        Some(s) => s,
        None => fat_default_size(&tree, r.label).map_err(|e| e.building(r.out))?,
    };
    let opts = fat_options(size, r.label, &seed, r.epoch.unwrap_or(0), 0);
    let sha256 = produce(r.out, size, false, |sink| {
        fat32::write(&tree, &opts, sink, 0).map_err(StandaloneError::Fat)
    })
    .map_err(|e| e.building(r.out))?;
    Ok(Made { size, sha256 })
}

/// A partitioned disk image, committed with its `.sha256` and `.bmap`; returns its layout too.
pub fn disk_image(r: &DiskRequest) -> Result<(Made, Layout), StandaloneError> {
    let timestamp = r.epoch.unwrap_or(0);
    let boot_tree = load_tree(r.boot, None, r.epoch)?;
    let root_tree = load_tree(r.root, r.owner, r.epoch)?;
    let seed = seed("image", "", r.out)?;
    let boot_size = match r.boot_size {
        Some(s) => s,
        None => fat_default_size(&boot_tree, BOOT_LABEL).map_err(|e| e.building(r.out))?,
    };
    // 1 MiB before the first partition, and 1 MiB of room for alignment and the GPT backup.
    let mut disk_size = r
        .size
        .unwrap_or(MIB + boot_size + ext4_estimate(&root_tree) + MIB);
    // Only a default-sized disk may grow when ext4 says it needs more.
    for attempt in 0..2 {
        let layout = disk::plan(r.table, disk_size, &boot_and_root(boot_size), &seed)
            .map_err(|e| StandaloneError::Disk(e).building(r.out))?;
        let (bp, rp) = (&layout.parts[0], &layout.parts[1]);
        let hidden = u32::try_from(bp.start / 512).map_err(StandaloneError::BootBeyond2TiB)?;
        let fat_opts = fat_options(bp.size, BOOT_LABEL, &seed, timestamp, hidden);
        let ext_opts = ext4_options(rp.size, ROOT_LABEL, &seed, timestamp);
        let res = produce(r.out, disk_size, true, |sink| {
            disk::write_table(&layout, sink).map_err(StandaloneError::Disk)?;
            fat32::write(&boot_tree, &fat_opts, sink, bp.start).map_err(|e| match e {
                FatError::TooSmall { needed, size } => {
                    StandaloneError::BootTooSmall { needed, size }
                }
                e => StandaloneError::BootPartition(e),
            })?;
            ext4::write(&root_tree, &ext_opts, sink, rp.start)
                .map_err(StandaloneError::RootPartition)
        });
        match res {
            Ok(sha256) => {
                let made = Made {
                    size: disk_size,
                    sha256,
                };
                return Ok((made, layout));
            }
            Err(StandaloneError::RootPartition(Ext4Error::TooSmall { needed, .. }))
                if r.size.is_none() && attempt == 0 =>
            {
                disk_size = MIB + boot_size + with_slack(needed) + MIB;
            }
            Err(e) => return Err(e.building(r.out)),
        }
    }
    Err(StandaloneError::RootNoFit.building(r.out))
}

fn boot_and_root(boot_size: u64) -> Vec<PartSpec> {
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
}

fn load_tree(
    dir: &Path,
    owner: Option<(u32, u32)>,
    epoch: Option<i64>,
) -> Result<Tree, StandaloneError> {
    let mut tree = Tree::from_host_dir(dir, HostImport { owner, mtime: None })
        .map_err(|e| StandaloneError::Read(dir.to_path_buf(), e))?;
    if let Some(e) = epoch {
        let ids: Vec<_> = tree.live_inodes().collect();
        for id in ids {
            let m = &mut tree.inode_mut(id).meta;
            m.mtime = m.mtime.min(e);
        }
    }
    Ok(tree)
}

/// sha256 over a purpose, the label and the output's file name: the seed of every id.
fn seed(purpose: &str, label: &str, out: &Path) -> Result<[u8; 32], StandaloneError> {
    let name = out
        .file_name()
        .ok_or_else(|| StandaloneError::NoFileName(out.to_path_buf()))?;
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

/// Tree plus 10 % (at least 1 MiB), whole MiB.
fn with_slack(n: u64) -> u64 {
    (n + (n / 10).max(MIB)).div_ceil(MIB) * MIB
}

fn fat_default_size(tree: &Tree, label: &str) -> Result<u64, StandaloneError> {
    Ok(with_slack(
        fat32::min_size(tree, !label.is_empty()).map_err(StandaloneError::Fat)?,
    ))
}

/// A first guess of the ext4 size for a tree: data in 4 KiB blocks, a block per directory,
/// 256-byte inodes with headroom, plus room for metadata and the journal. If the writer needs
/// more it says how much, and a default-sized build retries with that.
fn ext4_estimate(tree: &Tree) -> u64 {
    let mut data = 0u64;
    let mut nodes = 0u64;
    for id in tree.live_inodes() {
        nodes += 1;
        data += match &tree.inode(id).kind {
            InodeKind::File(d) => d.len().div_ceil(4096) * 4096,
            InodeKind::Dir(_) => 4096,
            InodeKind::Symlink(t) if t.len() >= 60 => 4096,
            _ => 0,
        };
    }
    with_slack(data + nodes * 512 + 16 * MIB)
}

fn ext4_options(size: u64, label: &str, seed: &[u8; 32], timestamp: i64) -> Ext4Options {
    let (uuid, hash_seed) = ids::ext4(seed, "ext4");
    Ext4Options {
        size,
        label: label.to_string(),
        uuid,
        hash_seed,
        timestamp,
    }
}

fn fat_options(size: u64, label: &str, seed: &[u8; 32], timestamp: i64, hidden: u32) -> FatOptions {
    FatOptions {
        size,
        label: label.to_string(),
        volume_id: ids::derive32(seed, "fat-volume-id"),
        timestamp,
        hidden_sectors: hidden,
    }
}

/// Creates the output, lets `fill` write it, then syncs and commits it with its sha256 sidecar
/// (and, for disk images, its bmap) as one set; returns its sha256. On error nothing is left at
/// `out`.
fn produce(
    out: &Path,
    len: u64,
    with_bmap: bool,
    fill: impl FnOnce(&mut dyn Sink) -> Result<(), StandaloneError>,
) -> Result<String, StandaloneError> {
    let step = |what: &'static str| {
        move |source| StandaloneError::Output {
            what,
            path: out.to_path_buf(),
            source,
        }
    };
    let output = AtomicOutput::create(out).map_err(step("creating"))?;
    let mapped = {
        let mut sink = output.sink(len).map_err(step("sizing"))?;
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
    let digest = digest.map_err(step("hashing"))?;
    synced
        .map_err(|_| StandaloneError::SyncPanicked(out.to_path_buf()))?
        .map_err(step("syncing"))?;
    let hex = hex::encode(digest);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let side = |ext: &str| image::sidecar(out, ext);
    let mut set = OutputSet::new();
    let bmap = if with_bmap {
        let map = Bmap::from_extents(output.file(), &mapped).map_err(step("mapping"))?;
        Some(image::stage_bytes(&side(".bmap"), map.to_xml().as_bytes())?)
    } else {
        None
    };
    set.push(output);
    set.extend(bmap);
    set.push(image::stage_bytes(
        &side(".sha256"),
        format!("{hex}  {name}\n").as_bytes(),
    )?);
    set.commit(0o644).map_err(step("writing"))?;
    Ok(hex)
}
