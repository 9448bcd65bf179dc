//! newc archives checked with GNU cpio (-t, -idv), gunzip and zstd.

mod common;
use common::checkers::pipe;

use piimg::fs::cpio::{self, Compression, CpioOptions};
use piimg::tree::{FileData, HostImport, InodeKind, Meta, Tree};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn archive(tree: &Tree, c: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    cpio::write(tree, &CpioOptions { compression: c }, &mut out).unwrap();
    out
}

fn sample_tree() -> Tree {
    let mut t = Tree::new(Meta::root(0o755, 1_700_000_000));
    t.add_file(
        "init",
        Meta::root(0o755, 1_700_000_001),
        FileData::from_bytes(b"#!/bin/sh\n".to_vec()),
    )
    .unwrap();
    let big: Vec<u8> = (0..3_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    t.add_file(
        "usr/lib/big.bin",
        Meta::new(0o600, 0, 0, 5),
        FileData::from_bytes(big),
    )
    .unwrap();
    t.add_file(
        "etc/odd",
        Meta::root(0o644, 5),
        FileData::from_bytes(b"abc".to_vec()),
    )
    .unwrap();
    t.add_file(
        "empty",
        Meta::root(0o644, 5),
        FileData::from_bytes(Vec::new()),
    )
    .unwrap();
    t.add_hardlink("usr/bin/busybox-link", "init").unwrap();
    t.add_hardlink("sbin/init-again", "init").unwrap();
    t.add_symlink("bin", "usr/bin", Meta::root(0o777, 5))
        .unwrap();
    t.mkdir_p("proc", Meta::root(0o555, 5)).unwrap();
    t
}

#[test]
fn cpio_lists_and_extracts_everything() {
    let tree = sample_tree();
    let bytes = archive(&tree, Compression::None);
    let list = pipe(Command::new("cpio").args(["-t", "--quiet"]), &bytes);
    let names: Vec<String> = String::from_utf8(list)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut want = vec![".".to_string()];
    want.extend(
        tree.walk()
            .into_iter()
            .skip(1)
            .map(|(p, _)| String::from_utf8(p).unwrap()),
    );
    assert_eq!(names, want);

    let tmp = tempfile::tempdir().unwrap();
    pipe(
        Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(tmp.path()),
        &bytes,
    );
    let d = tmp.path();
    let big = std::fs::read(d.join("usr/lib/big.bin")).unwrap();
    assert_eq!(big.len(), 3_000_003);
    assert!(big
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i as u32 * 7 % 251) as u8));
    assert_eq!(std::fs::read(d.join("etc/odd")).unwrap(), b"abc");
    assert_eq!(std::fs::read(d.join("empty")).unwrap(), b"");
    // three names, one inode, the content on all of them
    let i1 = std::fs::metadata(d.join("init")).unwrap();
    let i2 = std::fs::metadata(d.join("usr/bin/busybox-link")).unwrap();
    let i3 = std::fs::metadata(d.join("sbin/init-again")).unwrap();
    assert_eq!(i1.ino(), i2.ino());
    assert_eq!(i1.ino(), i3.ino());
    assert_eq!(i1.nlink(), 3);
    assert_eq!(
        std::fs::read(d.join("sbin/init-again")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(i1.mode() & 0o7777, 0o755);
    assert_eq!(i1.mtime(), 1_700_000_001);
    let m = std::fs::metadata(d.join("usr/lib/big.bin")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        std::fs::read_link(d.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
}

#[test]
fn devices_are_listed_with_their_numbers() {
    let mut t = Tree::new(Meta::root(0o755, 0));
    t.insert(
        "dev/console",
        Meta::root(0o600, 0),
        InodeKind::CharDev { major: 5, minor: 1 },
    )
    .unwrap();
    t.insert(
        "dev/sda",
        Meta::root(0o660, 0),
        InodeKind::BlockDev { major: 8, minor: 0 },
    )
    .unwrap();
    let bytes = archive(&t, Compression::None);
    let list = String::from_utf8(pipe(
        Command::new("cpio")
            .args(["-tv", "--quiet"])
            .env("TZ", "UTC"),
        &bytes,
    ))
    .unwrap();
    let console = list.lines().find(|l| l.ends_with("dev/console")).unwrap();
    assert!(console.starts_with("crw-------"), "{list}");
    assert!(console.contains("5,"), "{list}");
    let sda = list.lines().find(|l| l.ends_with("dev/sda")).unwrap();
    assert!(
        sda.starts_with("brw-rw----") && sda.contains("8,"),
        "{list}"
    );
}

#[test]
fn gzip_and_zstd_decompress_to_the_same_archive() {
    let tree = sample_tree();
    let plain = archive(&tree, Compression::None);
    let gz = archive(&tree, Compression::Gzip { level: 9 });
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip header mtime must be 0");
    assert_eq!(gz[3] & 0x08, 0, "no file name in the gzip header");
    assert!(pipe(Command::new("gunzip").arg("-c"), &gz) == plain);
    let zst = archive(&tree, Compression::Zstd { level: 19 });
    assert!(pipe(Command::new("zstd").args(["-d", "-c"]), &zst) == plain);
    assert!(zst.len() < plain.len() && gz.len() < plain.len());
}

/// The same folder contents, created at different times in a different order, give the same
/// archive bytes (owners and mtimes fixed on import, modes set explicitly).
#[test]
fn same_input_same_bytes() {
    let mut outs = Vec::new();
    for reverse in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut names: Vec<u32> = (0..40).collect();
        if reverse {
            names.reverse();
        }
        for k in names {
            let p = d.join(format!("dir{}/f{k}", k % 4));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("content {k}")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        for k in 0..4 {
            std::fs::set_permissions(
                d.join(format!("dir{k}")),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tree = Tree::from_host_dir(
            d,
            HostImport {
                owner: Some((0, 0)),
                mtime: Some(1_700_000_000),
            },
        )
        .unwrap();
        outs.push((
            archive(&tree, Compression::None),
            archive(&tree, Compression::Gzip { level: 9 }),
            archive(&tree, Compression::Zstd { level: 10 }),
        ));
    }
    assert!(outs[0] == outs[1]);
}
