//! `piimg verify`: builds one profile twice in different build environments and checks that the
//! images are identical; when they are not, says where they differ — the manifest field or file
//! first, then for each partition the first differing byte and what lives there (a FAT directory
//! entry or file, an ext4 file found with debugfs `icheck`/`ncheck`, an inode, a bitmap...).

use crate::fs::fat32::read::FatVolume;
use crate::qemu::{read_partitions, Partition};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("build {which} ({env}) failed: {msg}")]
    Build {
        which: usize,
        env: String,
        msg: String,
    },
    #[error("{0}: {1}")]
    Manifest(String, String),
    #[error(transparent)]
    Table(#[from] crate::qemu::QemuError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One build environment: what differs between the two builds.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    pub tz: String,
    pub lc_all: String,
    pub umask: u32,
    /// A `faketime` offset such as `+1000d` (None: the real clock).
    pub faketime: Option<String>,
}

impl std::fmt::Display for BuildEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TZ={} LC_ALL={} umask {:03o} clock {}",
            self.tz,
            self.lc_all,
            self.umask,
            self.faketime.as_deref().unwrap_or("real")
        )
    }
}

/// The two environments: far-apart time zones, different locales and umasks, and (with the
/// `faketime` tool) a clock shifted by years.
pub fn environments(faketime: bool) -> [BuildEnv; 2] {
    [
        BuildEnv {
            tz: "UTC".into(),
            lc_all: "C".into(),
            umask: 0o022,
            faketime: None,
        },
        BuildEnv {
            tz: "Pacific/Kiritimati".into(),
            lc_all: "C.UTF-8".into(),
            umask: 0o077,
            faketime: faketime.then(|| "+1234d".to_string()),
        },
    ]
}

/// Whether `faketime` is in PATH.
pub fn faketime_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("faketime").is_file()))
}

/// What one build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: PathBuf,
    pub manifest: PathBuf,
}

/// A `piimg build` request, run as a child process so that its whole environment (umask, time
/// zone, locale, clock, working folder) is the one asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub exe: PathBuf,
    /// Absolute.
    pub profiles: PathBuf,
    pub profile: String,
    /// `NAME=PATH` with absolute paths.
    pub components: Vec<String>,
    pub offline: bool,
}

/// Runs one build into `out` with `env`, in `out` as working folder.
pub fn build_in(
    req: &BuildRequest,
    env: &BuildEnv,
    which: usize,
    out: &Path,
) -> Result<Built, VerifyError> {
    let (program, args) = build_args(req, env, out);
    let o = build_command(&program, &args, env, out)
        .output()
        .map_err(|e| VerifyError::Build {
            which,
            env: env.to_string(),
            msg: format!("starting {}: {e}", program.display()),
        })?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(VerifyError::Build {
            which,
            env: env.to_string(),
            msg: format!(
                "{}\n{}",
                o.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(Built {
        image: out.join(format!("{}.img", req.profile)),
        manifest: out.join(format!("{}.manifest.json", req.profile)),
    })
}

/// The program and arguments of the `piimg build` (run by `faketime` when the clock is shifted).
fn build_args(req: &BuildRequest, env: &BuildEnv, out: &Path) -> (PathBuf, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let program = match &env.faketime {
        Some(offset) => {
            args.extend(["-f".to_string(), offset.clone()]);
            args.push(req.exe.display().to_string());
            PathBuf::from("faketime")
        }
        None => req.exe.clone(),
    };
    args.extend([
        "--profiles".to_string(),
        req.profiles.display().to_string(),
        "--quiet".into(),
        "build".into(),
        "--profile".into(),
        req.profile.clone(),
        "--out".into(),
        out.display().to_string(),
    ]);
    for c in &req.components {
        args.extend(["--component".to_string(), c.clone()]);
    }
    if req.offline {
        args.push("--offline".into());
    }
    (program, args)
}

/// The command in `out` with the environment's time zone, locale and umask.
fn build_command(program: &Path, args: &[String], env: &BuildEnv, out: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(out)
        .env("TZ", &env.tz)
        .env("LC_ALL", &env.lc_all)
        .env("LANG", &env.lc_all)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mask = env.umask as libc::mode_t;
    // SAFETY: umask(2) is async-signal-safe; called between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
    cmd
}

/// Where two images differ inside one partition (or the table area).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDiff {
    /// e.g. `partition 2 (root, ext4)` or `partition table / gap`.
    pub partition: String,
    pub number: Option<u32>,
    /// First differing byte, from the start of the disk.
    pub disk_offset: u64,
    /// The same, from the start of the partition.
    pub offset: u64,
    /// Differing 4 KiB blocks in the partition.
    pub blocks: u64,
    /// What lives there, when it could be found.
    pub what: Option<String>,
    /// The first differing block that belongs to a named file (when the first difference is
    /// filesystem metadata such as a superblock or a volume label).
    pub first_file: Option<String>,
}

impl std::fmt::Display for PartDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: first difference at byte {} (disk byte {}), {} differing 4 KiB block(s)",
            self.partition, self.offset, self.disk_offset, self.blocks
        )?;
        if let Some(w) = &self.what {
            write!(f, ": {w}")?;
        }
        if let Some(w) = &self.first_file {
            write!(f, "; first differing file: {w}")?;
        }
        Ok(())
    }
}

/// The result of comparing two builds.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub sha256: [String; 2],
    pub identical: bool,
    /// Differences between the manifests, most specific first (files, then other fields).
    pub manifest: Vec<String>,
    pub partitions: Vec<PartDiff>,
}

impl Comparison {
    /// A readable report, one finding per line.
    pub fn report(&self) -> String {
        let mut s = String::new();
        if self.identical {
            s.push_str(&format!("identical: sha256 {}\n", self.sha256[0]));
            return s;
        }
        s.push_str(&format!(
            "DIFFERENT: sha256 {} vs {}\n",
            self.sha256[0], self.sha256[1]
        ));
        for m in &self.manifest {
            s.push_str(&format!("manifest: {m}\n"));
        }
        if self.manifest.is_empty() {
            s.push_str("manifest: identical (the difference is in bytes the manifest does not describe: metadata, layout)\n");
        }
        for p in &self.partitions {
            s.push_str(&format!("{p}\n"));
        }
        s
    }
}

fn sha256_file(p: &Path) -> Result<String, VerifyError> {
    let mut f = File::open(p).map_err(io(p))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(p))?;
    Ok(hex::encode(h.finalize()))
}

fn load_json(p: &Path) -> Result<Value, VerifyError> {
    let text = std::fs::read(p).map_err(io(p))?;
    serde_json::from_slice(&text)
        .map_err(|e| VerifyError::Manifest(p.display().to_string(), e.to_string()))
}

/// Differences between two manifests: per file (by partition and path: added, removed, or the
/// first differing field), then every other top-level field that differs. `sha256` (of the whole
/// image) is left out: it differs whenever anything does.
pub fn diff_manifests(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let files = |v: &Value| -> std::collections::BTreeMap<(String, String), Value> {
        v.get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|f| {
                let k = (
                    f.get("partition")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    f.get("path")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                );
                (k, f.clone())
            })
            .collect()
    };
    let (fa, fb) = (files(a), files(b));
    for (k, va) in &fa {
        match fb.get(k) {
            None => out.push(format!("{} {}: only in the first build", k.0, k.1)),
            Some(vb) if va != vb => {
                let field = ["sha256", "size", "mode", "uid", "gid", "type", "target"]
                    .into_iter()
                    .find(|f| va.get(f) != vb.get(f))
                    .unwrap_or("entry");
                out.push(format!(
                    "{} {}: {field} differs ({} vs {})",
                    k.0,
                    k.1,
                    va.get(field).unwrap_or(&Value::Null),
                    vb.get(field).unwrap_or(&Value::Null)
                ));
            }
            _ => {}
        }
    }
    for k in fb.keys().filter(|k| !fa.contains_key(*k)) {
        out.push(format!("{} {}: only in the second build", k.0, k.1));
    }
    if let (Some(oa), Some(ob)) = (a.as_object(), b.as_object()) {
        let mut keys: Vec<&String> = oa.keys().chain(ob.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if k == "files" || k == "sha256" {
                continue;
            }
            let (x, y) = (oa.get(k), ob.get(k));
            if x != y {
                let show = |v: Option<&Value>| {
                    let s = v.map_or("(absent)".to_string(), Value::to_string);
                    if s.len() > 80 {
                        format!("{}...", &s[..s.floor_char_boundary_compat(77)])
                    } else {
                        s
                    }
                };
                out.push(format!("field {k} differs ({} vs {})", show(x), show(y)));
            }
        }
    }
    out
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

const BLOCK: u64 = 4096;

/// Compares two image files: hashes, manifests (when given) and, if the bytes differ, where.
pub fn compare(
    images: [&Path; 2],
    manifests: Option<[&Path; 2]>,
) -> Result<Comparison, VerifyError> {
    let sha256 = [sha256_file(images[0])?, sha256_file(images[1])?];
    let identical = sha256[0] == sha256[1];
    let mut cmp = Comparison {
        sha256,
        identical,
        manifest: Vec::new(),
        partitions: Vec::new(),
    };
    if identical {
        return Ok(cmp);
    }
    let mut names: Vec<(u32, String)> = Vec::new();
    if let Some([ma, mb]) = manifests {
        let (a, b) = (load_json(ma)?, load_json(mb)?);
        cmp.manifest = diff_manifests(&a, &b);
        names = a
            .get("partitions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("number")?.as_u64()? as u32,
                    p.get("name")?.as_str()?.to_string(),
                ))
            })
            .collect();
    }
    cmp.partitions = diff_bytes(images, &names)?;
    Ok(cmp)
}

/// Differing blocks per partition that are located when looking for a named file.
const MAX_LOCATED: usize = 16;

/// Whether a location names a file (rather than filesystem metadata).
fn names_a_file(what: &str) -> bool {
    what.contains("entry of \"")
        || what.starts_with("content of /")
        || (what.contains("inode ") && what.contains(" /"))
}

/// Region of the disk a byte belongs to.
fn region_of(parts: &[Partition], at: u64) -> Option<usize> {
    parts
        .iter()
        .position(|p| at >= p.start && at < p.start + p.size)
}

/// Where two images differ in one region.
struct Found {
    /// First differing byte, from the start of the disk.
    first: u64,
    /// Differing blocks.
    blocks: u64,
    /// The first differing byte of each of the first `MAX_LOCATED` differing blocks.
    offsets: Vec<u64>,
}

/// First differing byte and differing-block count per partition (and for the area outside
/// partitions), each explained where possible.
fn diff_bytes(images: [&Path; 2], names: &[(u32, String)]) -> Result<Vec<PartDiff>, VerifyError> {
    let mut fa = File::open(images[0]).map_err(io(images[0]))?;
    let mut fb = File::open(images[1]).map_err(io(images[1]))?;
    let la = fa.metadata().map_err(io(images[0]))?.len();
    let lb = fb.metadata().map_err(io(images[1]))?.len();
    let parts = read_partitions(&mut fa, &images[0].display().to_string())?;
    let found = scan(images, [&mut fa, &mut fb], la.min(lb), &parts)?;
    let mut out = Vec::new();
    if la != lb {
        out.push(PartDiff {
            partition: "disk".into(),
            number: None,
            disk_offset: la.min(lb),
            offset: la.min(lb),
            blocks: 0,
            what: Some(format!("sizes differ: {la} vs {lb} bytes")),
            first_file: None,
        });
    }
    for (region, f) in found {
        out.push(match region {
            None => outside_diff(&f),
            Some(i) => partition_diff(images, &parts[i], names, &f),
        });
    }
    Ok(out)
}

/// Reads both images from the start, 1 MiB at a time, up to `len`; what differs per region
/// (None = outside any partition).
fn scan(
    images: [&Path; 2],
    [fa, fb]: [&mut File; 2],
    len: u64,
    parts: &[Partition],
) -> Result<BTreeMap<Option<usize>, Found>, VerifyError> {
    let mut found = BTreeMap::new();
    fa.seek(SeekFrom::Start(0)).map_err(io(images[0]))?;
    fb.seek(SeekFrom::Start(0)).map_err(io(images[1]))?;
    let chunk = 1usize << 20;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(chunk as u64) as usize;
        fa.read_exact(&mut ba[..n]).map_err(io(images[0]))?;
        fb.read_exact(&mut bb[..n]).map_err(io(images[1]))?;
        if ba[..n] != bb[..n] {
            record_blocks([&ba[..n], &bb[..n]], pos, parts, &mut found);
        }
        pos += n as u64;
    }
    Ok(found)
}

/// Adds each differing block of two chunks read at disk byte `pos` to its region.
fn record_blocks(
    [a, b]: [&[u8]; 2],
    pos: u64,
    parts: &[Partition],
    found: &mut BTreeMap<Option<usize>, Found>,
) {
    let blocks = a.chunks(BLOCK as usize).zip(b.chunks(BLOCK as usize));
    for (k, (x, y)) in blocks.enumerate() {
        if x == y {
            continue;
        }
        let i = x.iter().zip(y).position(|(p, q)| p != q).unwrap_or(0);
        let at = pos + (k as u64) * BLOCK + i as u64;
        let f = found.entry(region_of(parts, at)).or_insert(Found {
            first: at,
            blocks: 0,
            offsets: Vec::new(),
        });
        f.blocks += 1;
        if f.offsets.len() < MAX_LOCATED {
            f.offsets.push(at);
        }
    }
}

/// Differences outside every partition: the MBR, the GPT or a gap.
fn outside_diff(f: &Found) -> PartDiff {
    let at = f.first;
    PartDiff {
        partition: "partition table / space outside partitions".into(),
        number: None,
        disk_offset: at,
        offset: at,
        blocks: f.blocks,
        what: Some(if at < 512 {
            "MBR".to_string()
        } else if at < 1 << 20 {
            "partition table area (GPT header or entries)".to_string()
        } else {
            "outside every partition".to_string()
        }),
        first_file: None,
    }
}

/// Differences in partition `p`, explained; when the first is not in a file, the first
/// differing block that is.
fn partition_diff(
    images: [&Path; 2],
    p: &Partition,
    names: &[(u32, String)],
    f: &Found,
) -> PartDiff {
    let off = f.first - p.start;
    let name = names
        .iter()
        .find(|(n, _)| *n == p.number)
        .map(|(_, s)| s.clone());
    let (fs, what) = explain(images, p, off);
    let first_file = if what.as_deref().is_some_and(names_a_file) {
        None
    } else {
        f.offsets
            .iter()
            .skip(1)
            .filter_map(|o| explain(images, p, o - p.start).1)
            .find(|w| names_a_file(w))
    };
    PartDiff {
        partition: format!(
            "partition {} ({})",
            p.number,
            [name, Some(fs.to_string())]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        number: Some(p.number),
        disk_offset: f.first,
        offset: off,
        blocks: f.blocks,
        what,
        first_file,
    }
}

/// The filesystem kind of a partition and what is at `off` in it (in the first image; for a
/// file that only the second has, the second).
fn explain(images: [&Path; 2], p: &Partition, off: u64) -> (&'static str, Option<String>) {
    let Ok(f) = File::open(images[0]) else {
        return ("?", None);
    };
    if let Ok(mut v) = FatVolume::open(f, p.start) {
        let kind = match v.fat_type() {
            crate::fs::fat32::read::FatType::Fat32 => "FAT32",
            crate::fs::fat32::read::FatType::Fat16 => "FAT16",
            crate::fs::fat32::read::FatType::Fat12 => "FAT12",
        };
        return (kind, v.locate(off).ok());
    }
    if is_ext4(images[0], p.start) {
        let mut what = ext4_locate(images[0], p.start, off);
        if what.as_deref().is_some_and(|w| w.contains("free space")) {
            if let Some(w2) = ext4_locate(images[1], p.start, off) {
                what = Some(format!("{w2} (in the second build; free in the first)"));
            }
        }
        return ("ext4", what);
    }
    ("unknown filesystem", None)
}

fn is_ext4(image: &Path, start: u64) -> bool {
    let Ok(mut f) = File::open(image) else {
        return false;
    };
    let mut m = [0u8; 2];
    f.seek(SeekFrom::Start(start + 1024 + 56)).is_ok()
        && f.read_exact(&mut m).is_ok()
        && m == [0x53, 0xef]
}

fn debugfs(image: &Path, start: u64, request: &str) -> Option<String> {
    let o = Command::new("debugfs")
        .args(["-R", request])
        .arg(format!("{}?offset={start}", image.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Names what lives at byte `off` of the ext4 filesystem at `start` with e2fsprogs: the file
/// owning the block (`icheck` + `ncheck`), else the metadata region from `dumpe2fs` (superblock,
/// descriptors, bitmaps, inode tables — with the inode and its path).
fn ext4_locate(image: &Path, start: u64, off: u64) -> Option<String> {
    let fs = Ext4Dump::read(image, start)?;
    let block = off / fs.block_size;
    let byte = off % fs.block_size;
    fs.file_at(block, byte)
        .or_else(|| fs.metadata_at(block, byte))
        .or_else(|| {
            Some(format!(
                "block {block}: free space or a directory/extent block"
            ))
        })
}

/// An ext4 filesystem in an image as `dumpe2fs` describes it.
struct Ext4Dump<'a> {
    image: &'a Path,
    start: u64,
    /// dumpe2fs's output.
    dump: String,
    block_size: u64,
    inodes_per_group: u64,
    inode_size: u64,
}

/// dumpe2fs's per-group lines: label and what it names.
const GROUP_REGIONS: [(&str, &str); 7] = [
    ("Primary superblock at ", "primary superblock"),
    ("Backup superblock at ", "backup superblock"),
    ("Group descriptors at ", "group descriptors"),
    ("Reserved GDT blocks at ", "reserved GDT blocks"),
    ("Block bitmap at ", "block bitmap"),
    ("Inode bitmap at ", "inode bitmap"),
    ("Inode table at ", "inode table"),
];

impl<'a> Ext4Dump<'a> {
    fn read(image: &'a Path, start: u64) -> Option<Ext4Dump<'a>> {
        let dump = Command::new("dumpe2fs")
            .arg(format!("{}?offset={start}", image.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
        let field = |name: &str| -> Option<u64> {
            dump.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Ext4Dump {
            image,
            start,
            block_size: field("Block size:")?,
            inodes_per_group: field("Inodes per group:")?,
            inode_size: field("Inode size:")?,
            dump,
        })
    }

    /// The file whose data block `block` is (`icheck`).
    fn file_at(&self, block: u64, byte: u64) -> Option<String> {
        let out = debugfs(self.image, self.start, &format!("icheck {block}"))?;
        let ino = out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .find_map(|s| s.parse::<u64>().ok())?;
        let path = self.path_of(ino);
        Some(format!(
            "block {block}: data of inode {ino} {path}, byte {byte}"
        ))
    }

    /// The metadata region holding `block`, from the per-group lines of the dump.
    fn metadata_at(&self, block: u64, byte: u64) -> Option<String> {
        let mut group = 0u64;
        for l in self.dump.lines() {
            if let Some(g) = l
                .strip_prefix("Group ")
                .and_then(|r| r.split(':').next())
                .and_then(|g| g.trim().parse().ok())
            {
                group = g;
                continue;
            }
            for part in l.trim().split(", ") {
                for (label, what) in GROUP_REGIONS {
                    let Some(r) = part.strip_prefix(label).and_then(block_range) else {
                        continue;
                    };
                    if !(r.0..=r.1).contains(&block) {
                        continue;
                    }
                    if what == "inode table" {
                        return Some(self.inode_at(group, (block - r.0) * self.block_size + byte));
                    }
                    return Some(format!("block {block}: {what} of group {group}"));
                }
            }
        }
        None
    }

    /// The inode at byte `byte` of group `group`'s inode table.
    fn inode_at(&self, group: u64, byte: u64) -> String {
        let ino = group * self.inodes_per_group + byte / self.inode_size + 1;
        let path = self.path_of(ino);
        format!(
            "inode table of group {group}: inode {ino} {path}, byte {} of the inode",
            byte % self.inode_size
        )
    }

    /// An inode's path (`ncheck`).
    fn path_of(&self, ino: u64) -> String {
        let path = debugfs(self.image, self.start, &format!("ncheck {ino}")).and_then(|out| {
            out.lines()
                .skip(1)
                .find_map(|l| l.split_once('\t').map(|(_, p)| p.trim().to_string()))
        });
        match path {
            // ncheck prints children of the root as `//name`.
            Some(p) => match p.strip_prefix("//") {
                Some(rest) => format!("/{rest}"),
                None => p,
            },
            None => "(no path)".into(),
        }
    }
}

/// A dumpe2fs block range, `A-B` or `A` (followed by more text).
fn block_range(s: &str) -> Option<(u64, u64)> {
    let s = s.split_whitespace().next()?.trim_end_matches(',');
    match s.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let a = s.parse().ok()?;
            Some((a, a))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpe2fs_block_ranges_are_read() {
        assert_eq!(block_range("1-1 (+0)"), Some((1, 1)));
        assert_eq!(block_range("1025-1536"), Some((1025, 1536)));
        assert_eq!(block_range("0, Group descriptors at 1-1"), Some((0, 0)));
        assert_eq!(block_range("x-1"), None);
        assert_eq!(block_range(""), None);
    }

    #[test]
    fn differing_blocks_are_counted_per_region() {
        let parts = [Partition {
            number: 1,
            start: 2 * BLOCK,
            size: 2 * BLOCK,
            kind: crate::qemu::PartType::Mbr(0x83),
            partuuid: String::new(),
        }];
        let a = vec![0u8; 5 * BLOCK as usize];
        let mut b = a.clone();
        for at in [
            10,
            2 * BLOCK as usize + 7,
            3 * BLOCK as usize + 1,
            4 * BLOCK as usize,
        ] {
            b[at] = 1;
        }
        let mut found = BTreeMap::new();
        record_blocks([&a, &b], 0, &parts, &mut found);
        let outside = &found[&None];
        assert_eq!((outside.first, outside.blocks), (10, 2));
        assert_eq!(outside.offsets, [10, 4 * BLOCK]);
        let inside = &found[&Some(0)];
        assert_eq!((inside.first, inside.blocks), (2 * BLOCK + 7, 2));
    }
}
