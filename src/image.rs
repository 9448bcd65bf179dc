//! A node image on disk: the partition layout derived from the profile, the three filesystems
//! written into one sparse file, its `.sha256`, and a manifest of every file and component.

use crate::assemble::node::{Assembled, INITRAMFS_FILE};
use crate::bmap::Bmap;
use crate::compress::{self, Codec};
use crate::fs::cpio::{self, Compression, CpioOptions};
use crate::fs::disk::{self, Layout, PartKind, PartSpec, Table};
use crate::fs::ext4::{self, Ext4Options};
use crate::fs::fat32::{self, FatOptions};
use crate::fs::ids;
use crate::fs::sparse::{self, AtomicOutput, OutputSet, SparseReader};
use crate::report::Reporter;
use crate::tree::{FileData, InodeKind, Meta, Tree};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const BOOT_LABEL: &str = "PIIMG-BOOT";
pub const ROOT_LABEL: &str = "piimg-root";
pub const DATA_LABEL: &str = "piimg-data";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("partition layout: {0}")]
    Disk(#[from] crate::fs::disk::DiskError),
    #[error("boot partition (FAT32): {0}")]
    Fat(#[from] crate::fs::fat32::FatError),
    #[error("{what} (ext4): {source}")]
    Ext4 {
        what: &'static str,
        #[source]
        source: crate::fs::ext4::Ext4Error,
    },
    #[error("initramfs: {0}")]
    Cpio(#[from] crate::fs::cpio::CpioError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("building the boot tree: {0}")]
    Tree(#[from] crate::tree::TreeError),
    #[error("manifest: {0}")]
    Json(#[from] serde_json::Error),
}

/// Sizes of the three partitions.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub disk: u64,
    pub boot: u64,
    pub data: u64,
}

/// The disk layout of a node: FAT boot, ext4 root, ext4 data last (the agent grows it to the
/// card's end). MBR for boards whose boot ROM reads only MBR, GPT otherwise. Every id derives
/// from `seed`.
pub fn layout(needs_mbr: bool, sizes: Sizes, seed: &[u8]) -> Result<Layout, ImageError> {
    let table = if needs_mbr { Table::Mbr } else { Table::Gpt };
    // 1 MiB before the first partition; the data partition takes the rest (up to GPT's backup
    // table), about `sizes.data`: the root gets what is left between them.
    let root = sizes
        .disk
        .saturating_sub(sizes.boot + sizes.data + 2 * disk::ALIGN);
    Ok(disk::plan(
        table,
        sizes.disk,
        &[
            PartSpec {
                name: "boot".into(),
                kind: PartKind::BootFat,
                size: sizes.boot,
            },
            PartSpec {
                name: "root".into(),
                kind: PartKind::Linux,
                size: root,
            },
            PartSpec {
                name: "data".into(),
                kind: PartKind::Linux,
                size: 0,
            },
        ],
        seed,
    )?)
}

/// One file of the image in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub partition: &'static str,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Left out for files holding secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn hash_data(d: &FileData) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut r = d.open()?;
    std::io::copy(&mut r, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Lists a tree for the manifest (secret files get no hash).
pub fn list_tree(
    tree: &Tree,
    partition: &'static str,
    secret: &[String],
) -> Result<Vec<FileEntry>, ImageError> {
    let mut out = Vec::new();
    for (path, id) in tree.walk() {
        let n = tree.inode(id);
        let p = String::from_utf8_lossy(&path).into_owned();
        let (kind, size, sha, target) = match &n.kind {
            InodeKind::Dir(_) => ("dir", None, None, None),
            InodeKind::File(d) => {
                let sha = if secret.contains(&p) {
                    None
                } else {
                    Some(hash_data(d).map_err(|e| ImageError::Io(p.clone(), e))?)
                };
                ("file", Some(d.len()), sha, None)
            }
            InodeKind::Symlink(t) => (
                "symlink",
                None,
                None,
                Some(String::from_utf8_lossy(t).into_owned()),
            ),
            InodeKind::CharDev { .. } => ("char", None, None, None),
            InodeKind::BlockDev { .. } => ("block", None, None, None),
            InodeKind::Fifo => ("fifo", None, None, None),
            InodeKind::Socket => ("socket", None, None, None),
        };
        out.push(FileEntry {
            partition,
            path: format!("/{p}"),
            kind,
            mode: format!("{:04o}", n.meta.perm),
            uid: n.meta.uid,
            gid: n.meta.gid,
            size,
            sha256: sha,
            target,
        });
    }
    Ok(out)
}

/// What `write_image` produced: the image, complete and synced but not yet at its final path.
pub struct Written {
    pub image: AtomicOutput,
    pub sha256: String,
    /// Byte ranges the writers filled (partition tables, filesystem metadata, files, journals).
    pub mapped: Vec<(u64, u64)>,
    pub initramfs_bytes: u64,
}

/// The initramfs as the firmware loads it: a zstd-compressed newc archive (smaller than gzip
/// for the same time; Debian's kernel decompresses both).
pub fn initramfs_cpio(tree: &Tree) -> Result<Vec<u8>, ImageError> {
    let mut initrd = Vec::new();
    cpio::write(
        tree,
        &CpioOptions {
            compression: Compression::Zstd { level: 19 },
        },
        &mut initrd,
    )?;
    Ok(initrd)
}

/// A netbooted node's local card: one ext4 partition labelled like a node image's data partition
/// (stage 2 mounts it on /var by that label) holding `tree`. Staged at `dest`, not committed.
pub fn write_card(
    tree: &Tree,
    size: u64,
    seed: &[u8],
    epoch: i64,
    dest: &Path,
) -> Result<AtomicOutput, ImageError> {
    let layout = disk::plan(
        Table::Mbr,
        size,
        &[PartSpec {
            name: "data".into(),
            kind: PartKind::Linux,
            size: 0,
        }],
        seed,
    )?;
    let io = |e| ImageError::Io(dest.display().to_string(), e);
    let out = AtomicOutput::create(dest).map_err(io)?;
    let mut sink = out.sink(size).map_err(io)?;
    disk::write_table(&layout, &mut sink)?;
    let part = &layout.parts[0];
    let (uuid, hash_seed) = ids::ext4(seed, DATA_LABEL);
    ext4::write(
        tree,
        &Ext4Options {
            size: part.size,
            label: DATA_LABEL.into(),
            uuid,
            hash_seed,
            timestamp: epoch,
        },
        &mut sink,
        part.start,
    )
    .map_err(|source| ImageError::Ext4 {
        what: "card data filesystem",
        source,
    })?;
    drop(sink);
    Ok(out)
}

/// Writes the node image into a temp file beside `dest`; the caller commits it with the files that
/// belong to it (see [`stage_artifacts`]). The initramfs is packed into the boot tree here so that
/// its name matches config.txt.
pub fn write_image(
    asm: &mut Assembled,
    layout: &Layout,
    seed: &[u8],
    epoch: i64,
    dest: &Path,
    reporter: &dyn Reporter,
) -> Result<Written, ImageError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| ImageError::Io(what.clone(), e)
    };
    let initrd = initramfs_cpio(&asm.initramfs)?;
    let initramfs_bytes = initrd.len() as u64;
    asm.boot.add_file(
        INITRAMFS_FILE,
        Meta::root(0o644, epoch),
        FileData::from_bytes(initrd),
    )?;

    let out = AtomicOutput::create(dest).map_err(io(&dest.display().to_string()))?;
    let mut sink = out
        .sink(layout.disk_size)
        .map_err(io(&dest.display().to_string()))?;
    disk::write_table(layout, &mut sink)?;
    let [boot, root, data] = &layout.parts[..] else {
        return Err(ImageError::Disk(crate::fs::disk::DiskError::Invalid(
            "expected three partitions".into(),
        )));
    };
    reporter.begin("writing boot partition (FAT32)", Some(boot.size));
    fat32::write(
        &asm.boot,
        &FatOptions {
            size: boot.size,
            label: BOOT_LABEL.into(),
            volume_id: ids::derive32(seed, "fat-volume-id"),
            timestamp: epoch,
            hidden_sectors: (boot.start / 512) as u32,
        },
        &mut sink,
        boot.start,
    )?;
    reporter.end();
    for (part, tree, label, what) in [
        (root, &asm.root, ROOT_LABEL, "root filesystem"),
        (data, &asm.data, DATA_LABEL, "data filesystem"),
    ] {
        reporter.begin(&format!("writing {what} (ext4)"), Some(part.size));
        let (uuid, hash_seed) = ids::ext4(seed, label);
        ext4::write(
            tree,
            &Ext4Options {
                size: part.size,
                label: label.into(),
                uuid,
                hash_seed,
                timestamp: epoch,
            },
            &mut sink,
            part.start,
        )
        .map_err(|source| ImageError::Ext4 { what, source })?;
        reporter.end();
    }
    let mapped = sink.mapped();
    drop(sink);
    reporter.begin("checksumming the image", Some(layout.disk_size));
    let mut f = out.file().try_clone().map_err(io("image"))?;
    let digest = sparse::sha256_file(&mut f).map_err(io("image"))?;
    reporter.end();
    Ok(Written {
        image: out,
        sha256: hex::encode(digest),
        mapped,
        initramfs_bytes,
    })
}

/// The files that travel with an image, staged as temp files beside it.
pub struct Artifacts {
    pub set: OutputSet,
    pub bmap: Bmap,
    /// File name and sha256 of each compressed copy.
    pub compressed: Vec<(String, String)>,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `p` with `ext` appended (`w1.img` -> `w1.img.sha256`).
pub fn sidecar(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// Stages `text` as a file at `dest`.
pub fn stage_bytes(dest: &Path, text: &[u8]) -> Result<AtomicOutput, ImageError> {
    let err = |e| ImageError::Io(dest.display().to_string(), e);
    let out = AtomicOutput::create(dest).map_err(err)?;
    std::io::Write::write_all(&mut out.file(), text).map_err(err)?;
    Ok(out)
}

/// Stages the image with `NAME.img.sha256`, `NAME.img.bmap` (bmaptool's format, of the
/// uncompressed image) and, for each codec, `NAME.img.EXT` with its own `.sha256`. The caller adds
/// the manifest last and commits the set.
pub fn stage_artifacts(
    written: Written,
    codecs: &[Codec],
    reporter: &dyn Reporter,
) -> Result<Artifacts, ImageError> {
    let dest = written.image.dest().to_path_buf();
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e| ImageError::Io(what.clone(), e)
    };
    reporter.begin("mapping the image (bmap)", None);
    let bmap = Bmap::from_extents(written.image.file(), &written.mapped).map_err(io(&dest))?;
    reporter.end();
    let mut set = OutputSet::new();
    let mut staged = vec![
        stage_bytes(
            &sidecar(&dest, ".sha256"),
            format!("{}  {}\n", written.sha256, file_name(&dest)).as_bytes(),
        )?,
        stage_bytes(&sidecar(&dest, ".bmap"), bmap.to_xml().as_bytes())?,
    ];
    let mut compressed = Vec::new();
    for codec in codecs {
        let path = sidecar(&dest, &format!(".{}", codec.extension()));
        reporter.begin(
            &format!("compressing ({})", file_name(&path)),
            Some(bmap.image_size),
        );
        let out = AtomicOutput::create(&path).map_err(io(&path))?;
        let image = written.image.file().try_clone().map_err(io(&dest))?;
        let mut input = SparseReader::new(image).map_err(io(&dest))?;
        let sum = {
            let mut hashing = HashingWriter {
                inner: std::io::BufWriter::with_capacity(1 << 20, out.file()),
                hash: Sha256::new(),
            };
            compress::compress(*codec, &mut input, &mut hashing, &|n| reporter.advance(n))
                .map_err(io(&path))?;
            std::io::Write::flush(&mut hashing.inner).map_err(io(&path))?;
            hex::encode(hashing.hash.finalize())
        };
        reporter.end();
        staged.push(stage_bytes(
            &sidecar(&path, ".sha256"),
            format!("{sum}  {}\n", file_name(&path)).as_bytes(),
        )?);
        compressed.push((file_name(&path), sum));
        staged.push(out);
    }
    for codec in [Codec::Zstd, Codec::Xz] {
        if !codecs.contains(&codec) {
            let path = sidecar(&dest, &format!(".{}", codec.extension()));
            set.remove(sidecar(&path, ".sha256"));
            set.remove(path);
        }
    }
    // The image first, then the files describing it.
    set.push(written.image);
    for s in staged {
        set.push(s);
    }
    Ok(Artifacts {
        set,
        bmap,
        compressed,
    })
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `value` as pretty JSON at `dest`, atomically.
pub fn write_json(dest: &Path, value: &impl Serialize) -> Result<(), ImageError> {
    let out =
        AtomicOutput::create(dest).map_err(|e| ImageError::Io(dest.display().to_string(), e))?;
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::io::Write::write_all(&mut out.file(), &text)
        .map_err(|e| ImageError::Io(dest.display().to_string(), e))?;
    out.commit()
        .map_err(|e| ImageError::Io(dest.display().to_string(), e))?;
    Ok(())
}
