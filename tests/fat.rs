//! FAT32 writer checked with dosfstools (fsck.vfat), mtools (mdir/mcopy) and blkid.

mod common;
use common::checkers::{fat_files, run};
use common::pattern;

use piimg::fs::fat32::{self, FatError, FatOptions};
use piimg::fs::sparse::{FileSink, Sink};
use piimg::tree::{FileData, InodeKind, Meta, Tree};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn m() -> Meta {
    Meta::root(0o644, 0)
}

/// A boot-partition-like tree: LFN names, nested dirs, empty files, multi-MiB files, 320
/// entries in one directory, non-ASCII and mixed-case names.
fn boot_tree() -> (Tree, BTreeMap<String, Vec<u8>>) {
    let mut t = Tree::new(Meta::root(0o755, 0));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut add = |t: &mut Tree, p: &str, data: Vec<u8>| {
        t.add_file(p, m(), FileData::from_bytes(data.clone()))
            .unwrap();
        files.insert(p.to_string(), data);
    };
    add(
        &mut t,
        "config.txt",
        b"arm_64bit=1\nkernel=vmlinuz\n".to_vec(),
    );
    add(
        &mut t,
        "cmdline.txt",
        b"console=ttyAMA0 root=PARTUUID=x\n".to_vec(),
    );
    add(&mut t, "vmlinuz-6.12.117-arm64", pattern(3 << 20, 1));
    add(
        &mut t,
        "initrd.img-6.12.117-arm64",
        pattern((5 << 20) + 123, 2),
    );
    add(&mut t, "bcm2837-rpi-3-b.dtb", pattern(30_000, 3));
    add(&mut t, "empty", Vec::new());
    add(&mut t, "Mixed Case Name.TXT", b"mixed".to_vec());
    add(&mut t, "Grüße 日本.txt", b"unicode".to_vec());
    add(&mut t, ".hidden", b"dot".to_vec());
    add(&mut t, "a+b,c;d=e[f].g", b"long-only chars".to_vec());
    add(&mut t, "LONGNA~1.TXT", b"literal short".to_vec());
    add(&mut t, "longname one.txt", b"1".to_vec());
    add(&mut t, "longname two.txt", b"2".to_vec());
    add(&mut t, "a/b/c/d/deep.txt", b"deep".to_vec());
    add(&mut t, "a/b/empty-file", Vec::new());
    // exactly 13 and 26 UTF-16 units: LFN entries with no terminator
    add(&mut t, "thirteen_char", b"13".to_vec());
    add(&mut t, "twenty-six-characters-long", b"26".to_vec());
    add(&mut t, &"n".repeat(255), b"255".to_vec());
    for i in 0..320 {
        let len = (i * 37) % 1500;
        add(
            &mut t,
            &format!("overlays/vc4-kms-overlay-{i:03}.dtbo"),
            pattern(len, i as u64 + 10),
        );
    }
    t.mkdir_p("empty-dir", Meta::root(0o755, 0)).unwrap();
    (t, files)
}

fn opts(size: u64) -> FatOptions {
    FatOptions {
        size,
        label: "PIBOOT".into(),
        volume_id: 0x1234_abcd,
        timestamp: 1_700_000_000,
        hidden_sectors: 0,
    }
}

fn write_img(dir: &Path, tree: &Tree, o: &FatOptions, offset: u64) -> PathBuf {
    let path = dir.join("fat.img");
    let f = std::fs::File::create(&path).unwrap();
    let mut sink = FileSink::new(f, offset + o.size).unwrap();
    fat32::write(tree, o, &mut sink, offset).unwrap();
    path
}

fn fsck(img: &Path) -> String {
    let text = run(Command::new("fsck.vfat").arg("-n").arg("-v").arg(img));
    // -n exits 0 only without errors; also reject warnings it might print.
    assert!(!text.to_lowercase().contains("warning"), "{text}");
    text
}

/// Copies everything out with mcopy and compares with `files` (and nothing else exists).
fn check_contents(img_spec: &str, files: &BTreeMap<String, Vec<u8>>, tmp: &Path) {
    let found = fat_files(img_spec, &tmp.join("out"));
    let want: Vec<&String> = files.keys().collect();
    let got: Vec<&String> = found.keys().collect();
    assert_eq!(got, want, "file list differs");
    for (k, v) in files {
        assert!(found[k] == *v, "{k}: content differs");
    }
}

#[test]
fn fsck_clean_and_every_file_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, files) = boot_tree();
    let img = write_img(tmp.path(), &tree, &opts(64 << 20), 0);
    let report = fsck(&img);
    assert!(report.contains("345 files"), "{report}");
    check_contents(img.to_str().unwrap(), &files, tmp.path());

    // mdir shows long names and the 320 overlays.
    let listing = run(Command::new("mdir").args(["-i", img.to_str().unwrap(), "::/overlays"]));
    assert!(listing.contains("vc4-kms-overlay-319.dtbo"), "{listing}");
    let n = listing
        .lines()
        .filter(|l| l.contains(".dtbo") && l.contains("vc4-kms-overlay-"))
        .count();
    assert_eq!(n, 320, "{listing}");
    let root = run(Command::new("mdir").args(["-i", img.to_str().unwrap(), "::/"]));
    assert!(root.contains("Grüße 日本.txt"), "{root}");
    assert!(root.contains("Volume in drive : is PIBOOT"), "{root}");
    assert!(root.contains("1234-ABCD"), "{root}");
}

#[test]
fn blkid_sees_label_and_volume_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, _) = boot_tree();
    let img = write_img(tmp.path(), &tree, &opts(64 << 20), 0);
    let out = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img));
    assert!(out.contains("TYPE=vfat"), "{out}");
    assert!(out.contains("VERSION=FAT32"), "{out}");
    assert!(out.contains("LABEL=PIBOOT"), "{out}");
    assert!(out.contains("UUID=1234-ABCD"), "{out}");
}

#[test]
fn sizes_from_minimum_to_512_mib_are_clean() {
    let (tree, files) = boot_tree();
    let min = fat32::min_fat32_size();
    assert!(min <= 34 << 20, "min {min}");
    for size in [min, 100 << 20, 260 << 20, 261 << 20, 300 << 20, 512 << 20] {
        let tmp = tempfile::tempdir().unwrap();
        let img = write_img(tmp.path(), &tree, &opts(size), 0);
        fsck(&img);
        check_contents(img.to_str().unwrap(), &files, tmp.path());
    }
}

#[test]
fn filesystem_at_an_offset_with_hidden_sectors() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, files) = boot_tree();
    let mut o = opts(64 << 20);
    o.hidden_sectors = 2048;
    let img = write_img(tmp.path(), &tree, &o, 1 << 20);
    let spec = format!("{}@@1M", img.display());
    check_contents(&spec, &files, tmp.path());
    let bytes = std::fs::read(&img).unwrap();
    let bs = &bytes[1 << 20..(1 << 20) + 512];
    assert_eq!(u32::from_le_bytes(bs[28..32].try_into().unwrap()), 2048);
    assert_eq!(bs[21], 0xf8);
    // backup boot sector at sector 6 equals the primary
    assert_eq!(bs, &bytes[(1 << 20) + 6 * 512..(1 << 20) + 7 * 512]);
    // the same filesystem copied out of the disk is fsck-clean
    let part = tmp.path().join("part.img");
    std::fs::write(&part, &bytes[1 << 20..]).unwrap();
    fsck(&part);
}

#[test]
fn same_tree_gives_same_bytes_whatever_the_insertion_order() {
    let (a, files) = boot_tree();
    let mut b = Tree::new(Meta::root(0o755, 0));
    b.mkdir_p("empty-dir", Meta::root(0o755, 0)).unwrap();
    for (k, v) in files.iter().rev() {
        b.add_file(k, m(), FileData::from_bytes(v.clone())).unwrap();
    }
    let mut sa = piimg::fs::sparse::MemSink::new(40 << 20);
    let mut sb = piimg::fs::sparse::MemSink::new(40 << 20);
    fat32::write(&a, &opts(40 << 20), &mut sa, 0).unwrap();
    fat32::write(&b, &opts(40 << 20), &mut sb, 0).unwrap();
    assert!(sa.bytes == sb.bytes);
}

#[test]
fn symlinks_and_devices_are_errors_naming_the_path() {
    let mut t = Tree::new(Meta::root(0o755, 0));
    t.add_symlink("boot/link", "x", m()).unwrap();
    let mut s = piimg::fs::sparse::MemSink::new(40 << 20);
    let e = fat32::write(&t, &opts(40 << 20), &mut s, 0).unwrap_err();
    assert!(e.to_string().contains("boot/link"), "{e}");
    assert!(e.to_string().contains("symlink"), "{e}");
    let mut t = Tree::new(Meta::root(0o755, 0));
    t.insert("dev/null", m(), InodeKind::CharDev { major: 1, minor: 3 })
        .unwrap();
    let e = fat32::write(&t, &opts(40 << 20), &mut s, 0).unwrap_err();
    assert!(e.to_string().contains("dev/null"), "{e}");
    // nothing was written
    assert!(s.bytes.iter().all(|b| *b == 0));
}

#[test]
fn too_small_reports_the_bytes_needed_before_writing() {
    let mut t = Tree::new(Meta::root(0o755, 0));
    t.add_file("big", m(), FileData::from_bytes(pattern(40 << 20, 9)))
        .unwrap();
    let mut s = piimg::fs::sparse::MemSink::new(40 << 20);
    let e = fat32::write(&t, &opts(40 << 20), &mut s, 0).unwrap_err();
    let FatError::TooSmall { needed, size } = e else {
        panic!("{e}")
    };
    assert_eq!(size, 40 << 20);
    assert!(needed > 40 << 20 && needed % (1 << 20) == 0);
    assert!(s.bytes.iter().all(|b| *b == 0));
    // the reported size is enough
    let tmp = tempfile::tempdir().unwrap();
    let img = write_img(tmp.path(), &t, &opts(needed), 0);
    fsck(&img);
    // and one MiB less is not
    let mut s = piimg::fs::sparse::MemSink::new(needed);
    assert!(fat32::write(&t, &opts(needed - (1 << 20)), &mut s, 0).is_err());
    // under FAT32's minimum
    let e = fat32::write(&Tree::new(m()), &opts(8 << 20), &mut s, 0).unwrap_err();
    assert!(matches!(e, FatError::TooSmall { .. }), "{e}");
}

#[test]
fn full_volume_is_clean() {
    // fill the volume to the last cluster: FSInfo free count 0
    let size = fat32::min_fat32_size();
    let g = fat32::Geometry::for_size(size).unwrap();
    let cb = g.cluster_bytes();
    // root dir (label + one entry) takes 1 cluster
    let len = (u64::from(g.clusters) - 1) * cb;
    let mut t = Tree::new(Meta::root(0o755, 0));
    t.add_file(
        "FILL.BIN",
        m(),
        FileData::from_bytes(pattern(len as usize, 4)),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let img = write_img(tmp.path(), &t, &opts(size), 0);
    fsck(&img);
    let mut s = FileSink::new(tempfile::tempfile().unwrap(), size).unwrap();
    assert!(s.len() == size);
    let mut t2 = t.clone();
    t2.add_file("one-more", m(), FileData::from_bytes(vec![1]))
        .unwrap();
    assert!(matches!(
        fat32::write(&t2, &opts(size), &mut s, 0),
        Err(FatError::TooSmall { .. })
    ));
}

#[test]
fn a_source_file_that_vanishes_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/kernel.img"), vec![7u8; 5000]).unwrap();
    let tree = Tree::from_host_dir(&src, Default::default()).unwrap();
    std::fs::remove_file(src.join("sub/kernel.img")).unwrap();
    let mut s = piimg::fs::sparse::MemSink::new(40 << 20);
    let e = fat32::write(&tree, &opts(40 << 20), &mut s, 0).unwrap_err();
    assert!(matches!(e, FatError::Read { .. }), "{e}");
    assert!(e.to_string().contains("sub/kernel.img"), "{e}");
    // a file that changed size since the tree was made is caught too
    std::fs::write(src.join("sub/kernel.img"), vec![7u8; 4000]).unwrap();
    let e = fat32::write(&tree, &opts(40 << 20), &mut s, 0).unwrap_err();
    assert!(e.to_string().contains("changed size"), "{e}");
}
