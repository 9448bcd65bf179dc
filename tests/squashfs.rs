//! squashfs images of the netbooted root, checked by tools piimg did not write: squashfs-tools'
//! unsquashfs lists and extracts them, the host kernel mounts them (`mount -t squashfs -o ro` on
//! a loop device), diff compares the two, and the bytes of two writes are compared.
//!
//! Needs root (loop devices, mount, unsquashfs creating devices and owners) and squashfs-tools.

mod common;
use common::checkers::{run, stdout_of, tool};
use common::loopdev::LoopDev;
use common::{pattern, temp_dir};

use piimg::fs::squashfs::{self, SquashError, SquashOptions, SquashReport};
use piimg::tree::{FileData, InodeId, InodeKind, Meta, Tree};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const EPOCH: i64 = 1_767_225_600;
const BLOCK: usize = 128 * 1024;

/// The writer's own settings with a fast level: the format does not depend on the level.
fn opts() -> SquashOptions {
    SquashOptions {
        zstd_level: 3,
        ..SquashOptions::pi(EPOCH)
    }
}

/// Writes `tree` to DIR/name.sqfs.
fn image(tree: &Tree, dir: &Path, name: &str, opts: &SquashOptions) -> (PathBuf, SquashReport) {
    let path = dir.join(format!("{name}.sqfs"));
    let f = std::fs::File::create(&path).unwrap();
    let report = squashfs::write(tree, &f, opts).unwrap();
    (path, report)
}

fn m(perm: u16, uid: u32, gid: u32) -> Meta {
    Meta::new(perm, uid, gid, EPOCH - 86_400)
}

/// Every inode kind, the owners and modes a root filesystem has, and the shapes that cross the
/// format's limits: a multi-block file whose tail is not a whole block, an empty file, a file of
/// zeros (stored as holes), a 255-byte name, a deep path, a directory of 600 entries (more than
/// one directory header and metadata block), a duplicate file, a hard link, large device numbers.
fn sample_tree() -> Tree {
    let mut t = Tree::new(Meta::root(0o755, EPOCH));
    let big = pattern(3 * BLOCK + 12_345, 7);
    t.add_file(
        "usr/lib/big.bin",
        m(0o644, 0, 0),
        FileData::from_bytes(big.clone()),
    )
    .unwrap();
    t.add_file(
        "usr/lib/big-copy.bin",
        m(0o600, 0, 0),
        FileData::from_bytes(big),
    )
    .unwrap();
    t.add_file(
        "usr/bin/tool",
        m(0o4755, 0, 0),
        FileData::from_bytes(b"#!/bin/sh\necho hi\n".to_vec()),
    )
    .unwrap();
    t.add_hardlink("usr/bin/tool-link", "usr/bin/tool").unwrap();
    t.add_file(
        "etc/empty",
        m(0o644, 0, 0),
        FileData::from_bytes(Vec::new()),
    )
    .unwrap();
    t.add_file(
        "var/zeros",
        m(0o640, 0, 42),
        FileData::from_bytes(vec![0; 2 * BLOCK + 7]),
    )
    .unwrap();
    t.add_file(
        "home/user/.profile",
        m(0o600, 1000, 1000),
        FileData::from_bytes(b"PATH=/bin\n".to_vec()),
    )
    .unwrap();
    t.mkdir_p("home/user", m(0o700, 1000, 1000)).unwrap();
    t.mkdir_p("tmp", m(0o1777, 0, 0)).unwrap();
    t.mkdir_p("srv/empty", m(0o2775, 0, 50)).unwrap();
    let long = "L".repeat(255);
    t.add_file(
        format!("names/{long}"),
        m(0o644, 0, 0),
        FileData::from_bytes(b"long".to_vec()),
    )
    .unwrap();
    t.add_file(
        b"names/caf\xc3\xa9 and space",
        m(0o644, 0, 0),
        FileData::from_bytes(b"u".to_vec()),
    )
    .unwrap();
    t.add_file(
        b"names/raw-\xff-byte",
        m(0o644, 0, 0),
        FileData::from_bytes(b"r".to_vec()),
    )
    .unwrap();
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    t.add_file(
        format!("{deep}leaf"),
        m(0o644, 0, 0),
        FileData::from_bytes(b"deep".to_vec()),
    )
    .unwrap();
    for i in 0..600 {
        t.add_file(
            format!("many/entry-{i:04}"),
            m(0o644, 0, 0),
            FileData::from_bytes(pattern(i * 37 % 5000, i as u64)),
        )
        .unwrap();
    }
    t.add_symlink("bin", "usr/bin", m(0o777, 0, 0)).unwrap();
    t.add_symlink("etc/abs", "/usr/lib/big.bin", m(0o777, 0, 0))
        .unwrap();
    t.add_symlink("etc/dangling", "nowhere/at/all", m(0o777, 0, 0))
        .unwrap();
    t.add_symlink("etc/long-link", "x/".repeat(126) + "end", m(0o777, 0, 0))
        .unwrap();
    let dev = |major, minor, block| {
        if block {
            InodeKind::BlockDev { major, minor }
        } else {
            InodeKind::CharDev { major, minor }
        }
    };
    t.insert("dev/null", m(0o666, 0, 0), dev(1, 3, false))
        .unwrap();
    t.insert("dev/sda1", m(0o660, 0, 6), dev(8, 1, true))
        .unwrap();
    t.insert("dev/big", m(0o600, 0, 0), dev(259, 65_537, true))
        .unwrap();
    t.insert("run/fifo", m(0o600, 0, 0), InodeKind::Fifo)
        .unwrap();
    t.insert("run/sock", m(0o755, 0, 0), InodeKind::Socket)
        .unwrap();
    t
}

fn display(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// The `ls -l` type letter and permission string of an inode.
fn mode_string(kind: &InodeKind, perm: u16) -> String {
    let t = match kind {
        InodeKind::Dir(_) => 'd',
        InodeKind::File(_) => '-',
        InodeKind::Symlink(_) => 'l',
        InodeKind::CharDev { .. } => 'c',
        InodeKind::BlockDev { .. } => 'b',
        InodeKind::Fifo => 'p',
        InodeKind::Socket => 's',
    };
    let mut s = String::from(t);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set, unset)) in special.iter().enumerate() {
        let shift = 6 - 3 * i;
        let r = perm >> shift & 4 != 0;
        let w = perm >> shift & 2 != 0;
        let x = perm >> shift & 1 != 0;
        s.push(if r { 'r' } else { '-' });
        s.push(if w { 'w' } else { '-' });
        s.push(match (perm & bit != 0, x) {
            (true, true) => *set,
            (true, false) => *unset,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// One line of `unsquashfs -lln -UTC`, split into its fields.
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    mode: String,
    owner: String,
    /// Size for files and symlinks, "MAJOR,MINOR" for devices, None for directories (their size
    /// is the format's, not the tree's).
    size: Option<String>,
    time: String,
    path: Vec<u8>,
    target: Option<Vec<u8>>,
}

fn parse_listing(out: &[u8]) -> Vec<Listed> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut rest = line;
            let mut field = || {
                let start = rest.iter().position(|b| *b != b' ').unwrap();
                rest = &rest[start..];
                let end = rest.iter().position(|b| *b == b' ').unwrap();
                let f = display(&rest[..end]);
                rest = &rest[end..];
                f
            };
            let mode = field();
            let owner = field();
            let mut size = field();
            if mode.starts_with(['c', 'b']) {
                size = format!("{size}{}", field());
            }
            let time = format!("{} {}", field(), field());
            let rest = &rest[1..];
            let (path, target) = match mode.starts_with('l') {
                true => {
                    let at = rest.windows(4).position(|w| w == b" -> ").unwrap();
                    (rest[..at].to_vec(), Some(rest[at + 4..].to_vec()))
                }
                false => (rest.to_vec(), None),
            };
            Listed {
                size: (!mode.starts_with('d')).then_some(size),
                mode,
                owner,
                time,
                path,
                target,
            }
        })
        .collect()
}

fn utc(secs: i64) -> String {
    let out = run(Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M", "-d"])
        .arg(format!("@{secs}")));
    out.trim().to_string()
}

/// What `unsquashfs -lln -UTC` should print for `tree`, extracted at `squashfs-root`.
fn expected_listing(tree: &Tree) -> Vec<Listed> {
    let mut times = BTreeMap::new();
    tree.walk()
        .into_iter()
        .map(|(path, id)| {
            let n = tree.inode(id);
            let mut full = b"squashfs-root".to_vec();
            if !path.is_empty() {
                full.push(b'/');
                full.extend_from_slice(&path);
            }
            // backhand cannot set the root directory's time: it is always 0.
            let mtime = if id == InodeId::ROOT { 0 } else { n.meta.mtime };
            let time = times.entry(mtime).or_insert_with(|| utc(mtime)).clone();
            let (size, target) = match &n.kind {
                InodeKind::Dir(_) => (None, None),
                InodeKind::File(d) => (Some(d.len().to_string()), None),
                InodeKind::Symlink(t) => (Some(t.len().to_string()), Some(t.clone())),
                InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                    // squashfs stores the kernel's new_encode_dev; unsquashfs 4.5's listing (not
                    // its extraction, nor the kernel: both checked below) decodes it the old way,
                    // major = dev >> 8, minor = dev & 0xff, which differs above minor 255.
                    let dev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                    (Some(format!("{},{}", dev >> 8, dev & 0xff)), None)
                }
                InodeKind::Fifo | InodeKind::Socket => (Some("0".into()), None),
            };
            Listed {
                mode: mode_string(&n.kind, n.meta.perm),
                owner: format!("{}/{}", n.meta.uid, n.meta.gid),
                size,
                time,
                path: full,
                target,
            }
        })
        .collect()
}

/// Checks a directory (an extraction or a mount) against the tree: every name, type, mode,
/// owner, content, symlink target, device number and mtime, and no extra names. Returns the
/// link count of each path the tree hard-links, as the directory shows it.
fn assert_dir_is_tree(dir: &Path, tree: &Tree, what: &str) -> BTreeMap<String, u64> {
    let mut links = BTreeMap::new();
    let mut found = 0;
    for (path, id) in tree.walk() {
        let n = tree.inode(id);
        let host = dir.join(OsStr::from_bytes(&path));
        let shown = format!("{what}: /{}", display(&path));
        let md = std::fs::symlink_metadata(&host).unwrap_or_else(|e| panic!("{shown}: {e}"));
        found += 1;
        assert_eq!(md.mode(), n.mode(), "{shown}: mode");
        assert_eq!(
            (md.uid(), md.gid()),
            (n.meta.uid, n.meta.gid),
            "{shown}: owner"
        );
        let ft = md.file_type();
        match &n.kind {
            InodeKind::Dir(_) => {
                assert!(ft.is_dir(), "{shown}: type");
                let names = std::fs::read_dir(&host).unwrap().count();
                assert_eq!(names, tree.children(id).count(), "{shown}: entries");
            }
            InodeKind::File(d) => {
                assert!(ft.is_file(), "{shown}: type");
                let got = std::fs::read(&host).unwrap();
                assert!(got == d.read_all().unwrap(), "{shown}: content differs");
                if tree.link_count(id) > 1 {
                    links.insert(display(&path), md.nlink());
                }
            }
            InodeKind::Symlink(t) => {
                assert!(ft.is_symlink(), "{shown}: type");
                let got = std::fs::read_link(&host).unwrap();
                assert_eq!(got.as_os_str().as_bytes(), &t[..], "{shown}: target");
            }
            InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                let is_char = matches!(n.kind, InodeKind::CharDev { .. });
                assert!(if is_char {
                    ft.is_char_device()
                } else {
                    ft.is_block_device()
                });
                let rdev = md.rdev();
                let got = (piimg::tree::dev_major(rdev), piimg::tree::dev_minor(rdev));
                assert_eq!(got, (*major, *minor), "{shown}: device number");
            }
            InodeKind::Fifo => assert!(ft.is_fifo(), "{shown}: type"),
            InodeKind::Socket => assert!(ft.is_socket(), "{shown}: type"),
        }
        // unsquashfs sets no time on a symlink; the root's time is backhand's 0.
        if id != InodeId::ROOT && !ft.is_symlink() {
            assert_eq!(md.mtime(), n.meta.mtime, "{shown}: mtime");
        }
    }
    assert_eq!(found, tree.walk().len());
    links
}

fn unsquashfs_extract(img: &Path, dest: &Path) {
    run(Command::new("unsquashfs")
        .args(["-no-progress", "-quiet", "-d"])
        .arg(dest)
        .arg(img));
}

/// The tree holds nothing outside the names `assert_dir_is_tree` visits: counts every entry below
/// `dir`.
fn count_entries(dir: &Path) -> usize {
    let out = stdout_of(Command::new("find").arg(dir));
    out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()
}

#[test]
fn unsquashfs_lists_every_entry_as_the_tree_has_it() {
    let tmp = temp_dir("squashfs-list");
    let tree = sample_tree();
    let (img, report) = image(&tree, tmp.path(), "sample", &opts());
    let out = stdout_of(Command::new("unsquashfs").args(["-lln", "-UTC"]).arg(&img));
    let got = parse_listing(&out);
    let want = expected_listing(&tree);
    assert_eq!(got.len(), want.len(), "{}", String::from_utf8_lossy(&out));
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    // One inode per name: the hard link became a second inode.
    assert_eq!(report.inodes as usize, tree.walk().len());
    assert_eq!(report.hard_links_split, 1);
    assert_eq!(report.bytes, std::fs::metadata(&img).unwrap().len());
    assert_eq!(report.bytes % 4096, 0, "padded to 4 KiB like mksquashfs");
}

#[test]
fn unsquashfs_reports_the_options_and_epoch_of_the_superblock() {
    let tmp = temp_dir("squashfs-super");
    let tree = sample_tree();
    let (img, _) = image(&tree, tmp.path(), "sample", &SquashOptions::pi(EPOCH));
    let out = run(Command::new("unsquashfs").args(["-s", "-UTC"]).arg(&img));
    assert!(
        out.contains("Found a valid SQUASHFS 4:0 superblock"),
        "{out}"
    );
    assert!(out.contains("Compression zstd"), "{out}");
    assert!(out.contains("compression-level 19"), "{out}");
    assert!(out.contains("Block size 131072"), "{out}");
    assert!(out.contains("Duplicates are removed"), "{out}");
    assert!(
        out.contains(&format!(
            "Creation or last append time {}",
            "Thu Jan  1 00:00:00 2026"
        )),
        "{out}"
    );
}

#[test]
fn unsquashfs_extracts_every_file_byte_identical() {
    let tmp = temp_dir("squashfs-extract");
    let tree = sample_tree();
    let (img, _) = image(&tree, tmp.path(), "sample", &opts());
    let dest = tmp.path().join("x");
    unsquashfs_extract(&img, &dest);
    let links = assert_dir_is_tree(&dest, &tree, "unsquashfs");
    assert_eq!(count_entries(&dest), tree.walk().len());
    // A split hard link extracts as two files of one link each.
    assert_eq!(links.values().collect::<Vec<_>>(), [&1, &1]);
}

#[test]
fn two_writes_are_bit_identical_whatever_the_insertion_order() {
    let tmp = temp_dir("squashfs-repro");
    let a = sample_tree();
    // The same tree built in another order: paths added deepest and last first.
    let mut b = Tree::new(Meta::root(0o755, EPOCH));
    let mut entries = a.walk();
    entries.reverse();
    let mut seen = BTreeMap::new();
    for (path, id) in entries.iter().filter(|(p, _)| !p.is_empty()) {
        let n = a.inode(*id);
        if let Some(first) = seen.get(id) {
            b.add_hardlink(path, first).unwrap();
            continue;
        }
        match &n.kind {
            InodeKind::Dir(_) => {
                b.mkdir_p(path, n.meta.clone()).unwrap();
                b.upsert(path, n.meta.clone(), InodeKind::Dir(BTreeMap::new()))
                    .unwrap();
            }
            other => {
                b.insert(path, n.meta.clone(), other.clone()).unwrap();
                seen.insert(*id, path.clone());
            }
        }
    }
    let (ia, _) = image(&a, tmp.path(), "a", &opts());
    let (ia2, _) = image(&a, tmp.path(), "a2", &opts());
    let (ib, _) = image(&b, tmp.path(), "b", &opts());
    let (x, y, z) = (
        std::fs::read(ia).unwrap(),
        std::fs::read(ia2).unwrap(),
        std::fs::read(ib).unwrap(),
    );
    assert!(x == y, "two writes of one tree differ");
    assert!(
        x == z,
        "the same tree built in another order gives other bytes"
    );
    // The epoch is in the image: a different one changes it.
    let (ic, _) = image(
        &a,
        tmp.path(),
        "c",
        &SquashOptions {
            epoch: EPOCH + 1,
            ..opts()
        },
    );
    assert!(std::fs::read(ic).unwrap() != x);
}

/// Unmounts on drop, so that a failing test leaves no mount behind (the loop device detaches
/// itself after this, being dropped later).
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).output();
    }
}

/// Whether this kernel can mount squashfs at all (built in, or after modprobe).
fn kernel_has_squashfs() -> bool {
    let has = || {
        std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|f| f.lines().any(|l| l.ends_with("\tsquashfs")))
    };
    if !has() {
        let _ = Command::new("modprobe").arg("squashfs").output();
    }
    has()
}

#[test]
fn the_kernel_mounts_the_image_and_shows_what_unsquashfs_extracted() {
    if !kernel_has_squashfs() {
        eprintln!(
            "SKIPPED: the host kernel has no squashfs (not in /proc/filesystems after modprobe)"
        );
        return;
    }
    let tmp = temp_dir("squashfs-kernel");
    let tree = sample_tree();
    let (img, report) = image(&tree, tmp.path(), "sample", &SquashOptions::pi(EPOCH));
    let dest = tmp.path().join("x");
    unsquashfs_extract(&img, &dest);

    let lo = LoopDev::range(&img, 0, report.bytes);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-t", "squashfs", "-o", "ro", &lo.dev])
        .arg(&mnt));
    let _mounted = Mounted(&mnt);

    let links = assert_dir_is_tree(&mnt, &tree, "kernel");
    assert_eq!(links.values().collect::<Vec<_>>(), [&1, &1]);
    assert_eq!(count_entries(&mnt), tree.walk().len());
    // diff -r reads no device, fifo or socket: it names each pair "a X while ... a X" (checked
    // field by field above). Everything else must be the same.
    let d = tool(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&mnt)
            .arg(&dest),
    );
    let text = String::from_utf8_lossy(&d.stdout).into_owned();
    let special = |l: &&str| {
        [
            "block special file",
            "character special file",
            "fifo",
            "socket",
        ]
        .iter()
        .any(|k| l.ends_with(&format!(" is a {k}")) && l.contains(&format!(" is a {k} while ")))
    };
    let real: Vec<&str> = text.lines().filter(|l| !special(l)).collect();
    assert!(
        real.is_empty(),
        "kernel and unsquashfs disagree:\n{text}{}",
        String::from_utf8_lossy(&d.stderr)
    );
    assert_eq!(
        text.lines().count(),
        5,
        "three devices, a fifo, a socket:\n{text}"
    );
    // The kernel checks what it reads: a statfs of the mount agrees with the image.
    let df = run(Command::new("stat").args(["-f", "-c", "%T"]).arg(&mnt));
    assert_eq!(df.trim(), "squashfs");
}

#[test]
fn a_file_that_changed_size_is_an_error_naming_it() {
    let tmp = temp_dir("squashfs-changed");
    let src = tmp.path().join("src");
    std::fs::write(&src, b"0123456789").unwrap();
    let mut t = Tree::new(Meta::root(0o755, EPOCH));
    t.add_file(
        "a/file",
        m(0o644, 0, 0),
        FileData::Host {
            path: src.clone(),
            len: 10,
        },
    )
    .unwrap();
    t.add_file(
        "a/range",
        m(0o644, 0, 0),
        FileData::Range {
            path: src.clone(),
            offset: 4,
            len: 20,
        },
    )
    .unwrap();
    let f = std::fs::File::create(tmp.path().join("out")).unwrap();
    let err = squashfs::write(&t, &f, &opts()).unwrap_err();
    assert!(
        matches!(&err, SquashError::Read { path, .. } if path == "a/range"),
        "{err}"
    );

    std::fs::write(&src, b"012345").unwrap();
    let err = squashfs::write(&t, &f, &opts()).unwrap_err();
    assert!(
        matches!(&err, SquashError::Read { path, .. } if path == "a/file"),
        "{err}"
    );
    assert!(err.to_string().contains("a/file"), "{err}");
}

#[test]
fn what_squashfs_cannot_hold_is_refused_by_name() {
    let tmp = temp_dir("squashfs-refused");
    let f = std::fs::File::create(tmp.path().join("out")).unwrap();
    let mut t = Tree::new(Meta::root(0o755, EPOCH));
    let mut cap = m(0o755, 0, 0);
    cap.xattrs
        .insert(b"security.capability".to_vec(), vec![1, 0, 0, 2]);
    t.add_file("usr/bin/ping", cap, FileData::from_bytes(b"x".to_vec()))
        .unwrap();
    let err = squashfs::write(&t, &f, &opts()).unwrap_err();
    assert!(
        err.to_string().contains("usr/bin/ping") && err.to_string().contains("extended attributes"),
        "{err}"
    );

    let mut t = Tree::new(Meta::root(0o755, EPOCH));
    t.add_file(
        "old",
        Meta::root(0o644, -1),
        FileData::from_bytes(Vec::new()),
    )
    .unwrap();
    let err = squashfs::write(&t, &f, &opts()).unwrap_err();
    assert!(
        err.to_string().contains("old") && err.to_string().contains("mtime"),
        "{err}"
    );

    let mut t = Tree::new(Meta::root(0o755, EPOCH));
    t.insert(
        "dev/x",
        m(0o600, 0, 0),
        InodeKind::CharDev {
            major: 4096,
            minor: 0,
        },
    )
    .unwrap();
    let err = squashfs::write(&t, &f, &opts()).unwrap_err();
    assert!(err.to_string().contains("dev/x"), "{err}");

    for bad in [
        SquashOptions {
            block_size: 3000,
            ..opts()
        },
        SquashOptions {
            block_size: 2 << 20,
            ..opts()
        },
        SquashOptions {
            zstd_level: 23,
            ..opts()
        },
        SquashOptions {
            epoch: -5,
            ..opts()
        },
    ] {
        let err = squashfs::write(&sample_tree(), &f, &bad).unwrap_err();
        assert!(matches!(err, SquashError::Options(_)), "{bad:?}: {err}");
    }
}

/// A generated tree: nested names, files of sizes around the block size (fragments, tails,
/// whole blocks), symlinks, owners and modes.
fn arb_tree() -> impl Strategy<Value = Tree> {
    let name = "[a-z0-9._-]{1,12}".prop_filter("not . or ..", |n| n != "." && n != "..");
    let path = prop::collection::vec(name, 1..4);
    let size = prop_oneof![
        0usize..200,
        (BLOCK - 3)..(BLOCK + 3),
        (2 * BLOCK - 100)..(3 * BLOCK + 100),
    ];
    let entry = (path, size, 0u8..4, 0u16..0o7777, 0u32..3, any::<u64>());
    prop::collection::vec(entry, 1..40).prop_map(|entries| {
        let mut t = Tree::new(Meta::root(0o755, EPOCH));
        for (comps, size, kind, perm, owner, seed) in entries {
            let p = comps.join("/");
            let mut meta = Meta::new(perm, owner * 1000, owner, EPOCH - seed as i64 % 1000);
            let r = match kind {
                0 => {
                    // Linux gives every symlink 0777; so do unsquashfs and the kernel.
                    meta.perm = 0o777;
                    t.add_symlink(&p, comps.join("_"), meta)
                }
                1 => t.mkdir_p(&p, meta),
                // Repeated bytes: compressible, and a whole block of one seed repeats across files.
                2 => t.add_file(&p, meta, FileData::from_bytes(vec![(seed % 3) as u8; size])),
                _ => t.add_file(&p, meta, FileData::from_bytes(pattern(size, seed))),
            };
            // A generated path may run through a file or repeat one: the tree refuses it.
            let _ = r;
        }
        t
    })
}

#[test]
fn generated_trees_extract_as_written() {
    let tmp = temp_dir("squashfs-gen");
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::cell::Cell::new(0);
    runner
        .run(&arb_tree(), |tree| {
            n.set(n.get() + 1);
            let (img, _) = image(&tree, tmp.path(), &format!("g{}", n.get()), &opts());
            let dest = tmp.path().join(format!("x{}", n.get()));
            unsquashfs_extract(&img, &dest);
            assert_dir_is_tree(&dest, &tree, "generated");
            assert_eq!(count_entries(&dest), tree.walk().len());
            std::fs::remove_dir_all(&dest).unwrap();
            std::fs::remove_file(&img).unwrap();
            Ok(())
        })
        .unwrap();
}
