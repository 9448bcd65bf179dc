//! `piimg fs ...` run as a real binary; outputs checked with fsck.vfat, mtools, e2fsck, debugfs,
//! sfdisk, sgdisk and partx.

mod common;
use common::checkers::{debugfs, e2fsck, fat_files, fsck_vfat, run, sfdisk_json, sha256sum, spans};
use common::piimg::{Piimg, Run};
use common::{dir_names, pattern};

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;
const SDE: &str = "1700000000";

/// `piimg ARGS` in `dir` at a fixed SOURCE_DATE_EPOCH.
fn piimg(args: &[&str], dir: &Path) -> Run {
    Piimg::new().cwd(dir).epoch(SDE).args(args).run()
}

/// The run's output; it must have succeeded.
fn ok(r: &Run) -> String {
    r.assert_ok().combined()
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A boot folder like the Pi's: returns relative path -> content.
fn make_boot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut add = |rel: &str, data: Vec<u8>| {
        put(root, rel, &data, 0o644);
        files.insert(rel.to_string(), data);
    };
    add("config.txt", b"arm_64bit=1\nkernel=vmlinuz\n".to_vec());
    add("cmdline.txt", b"console=ttyAMA0,115200\n".to_vec());
    add("vmlinuz", pattern(3 * MIB as usize + 17, 1));
    add("bcm2837-rpi-3-b.dtb", pattern(33_000, 2));
    add("Mixed Case File.Txt", b"mixed".to_vec());
    add("empty.bin", Vec::new());
    add("a/b/c/nested-file.conf", b"nested".to_vec());
    for i in 0..310 {
        add(
            &format!("overlays/overlay-number-{i:03}.dtbo"),
            pattern(i * 11 % 900, i as u64 + 7),
        );
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    files
}

fn make_root(root: &Path) {
    put(root, "etc/hostname", b"node1\n", 0o644);
    put(root, "usr/bin/tool", &pattern(200_000, 9), 0o755);
    put(
        root,
        "var/lib/data/big",
        &pattern(2 * MIB as usize, 10),
        0o600,
    );
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    for d in [
        "",
        "etc",
        "usr",
        "usr/bin",
        "var",
        "var/lib",
        "var/lib/data",
    ] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// mcopy everything out of a FAT image (spec may carry @@offset) and compare.
fn check_fat(spec: &str, files: &BTreeMap<String, Vec<u8>>, tmp: &Path) {
    let found = fat_files(spec, &tmp.join(format!("mcopy-{}", files.len())));
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    for (k, v) in files {
        assert!(found[k] == *v, "{k} differs");
    }
    let l = run(Command::new("mdir").args(["-i", spec, "::/"]));
    assert!(l.contains("Mixed Case File.Txt"), "{l}");
}

fn sidecar_matches(img: &Path) {
    let side = std::fs::read_to_string(format!("{}.sha256", img.display())).unwrap();
    let digest = sha256sum(img);
    let name = img.file_name().unwrap().to_string_lossy();
    assert_eq!(side, format!("{digest}  {name}\n"));
}

#[test]
fn fat_from_folder_is_clean_and_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_boot(&tmp.path().join("boot"));
    let o = piimg(
        &[
            "fs",
            "fat",
            "--from",
            "boot",
            "--out",
            "out/boot.vfat",
            "--label",
            "PIBOOT",
        ],
        tmp.path(),
    );
    ok(&o);
    let img = tmp.path().join("out/boot.vfat");
    let f = fsck_vfat(&img);
    assert!(!f.to_lowercase().contains("warning"), "{f}");
    check_fat(img.to_str().unwrap(), &files, tmp.path());
    sidecar_matches(&img);
    // default size: whole MiB, enough plus slack
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(len % MIB, 0);
    let b = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img));
    assert!(b.contains("LABEL=PIBOOT"), "{b}");
}

#[test]
fn fat_with_explicit_size() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_boot(&tmp.path().join("boot"));
    ok(&piimg(
        &[
            "fs", "fat", "--from", "boot", "--out", "b.img", "--size", "300M",
        ],
        tmp.path(),
    ));
    let img = tmp.path().join("b.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 300 * MIB);
    fsck_vfat(&img);
    check_fat(img.to_str().unwrap(), &files, tmp.path());
}

/// Builds `args` in two separate folders (different TZ and umask for the run) and returns the
/// two outputs' bytes.
fn build_twice(args: &[&str], out: &str, with_root: bool) -> (Vec<u8>, Vec<u8>) {
    let mut results = Vec::new();
    for (tz, umask) in [("UTC", "022"), ("Asia/Kolkata", "077")] {
        let tmp = tempfile::tempdir().unwrap();
        make_boot(&tmp.path().join("boot"));
        if with_root {
            make_root(&tmp.path().join("root"));
        }
        Piimg::new()
            .cwd(tmp.path())
            .epoch(SDE)
            .tz(tz)
            .umask(umask)
            .args(args)
            .run()
            .assert_ok();
        results.push(std::fs::read(tmp.path().join(out)).unwrap());
        // let the next build start at a different wall-clock second
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let b = results.pop().unwrap();
    (results.pop().unwrap(), b)
}

#[test]
fn fat_is_reproducible() {
    let (a, b) = build_twice(
        &["fs", "fat", "--from", "boot", "--out", "o/boot.img"],
        "o/boot.img",
        false,
    );
    assert!(a == b, "FAT outputs differ");
}

#[test]
fn image_is_reproducible() {
    let args = [
        "fs", "image", "--boot", "boot", "--root", "root", "--out", "o/sd.img", "--owner", "0:0",
    ];
    let (a, b) = build_twice(&args, "o/sd.img", true);
    assert!(a == b, "disk images differ");
}

#[test]
fn image_mbr_partitions_check_out() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_boot(&tmp.path().join("boot"));
    make_root(&tmp.path().join("root"));
    let o = piimg(
        &[
            "fs",
            "image",
            "--boot",
            "boot",
            "--root",
            "root",
            "--out",
            "sd.img",
            "--size",
            "256MiB",
            "--boot-size",
            "64MiB",
            "--owner",
            "0:0",
        ],
        tmp.path(),
    );
    let text = ok(&o);
    let img = tmp.path().join("sd.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 256 * MIB);
    sidecar_matches(&img);
    run(Command::new("sfdisk").arg("--verify").arg(&img));
    let j = sfdisk_json(&img);
    let parts = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(j["partitiontable"]["label"], "dos");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["size"], 64 * 2048);
    assert_eq!(parts[0]["type"], "c");
    assert_eq!(parts[1]["start"], 65 * 2048);
    assert_eq!(parts[1]["size"], (256 - 65) * 2048);
    assert_eq!(parts[1]["type"], "83");
    // the PARTUUIDs printed are what libblkid reads from the table
    let px = run(Command::new("partx").args(["-g", "-o", "UUID"]).arg(&img));
    for u in px.lines() {
        assert!(
            text.contains(&format!("PARTUUID={}", u.trim())),
            "{u} not in {text}"
        );
    }
    // partition 1: FAT32, fsck-clean, complete; partition 2: ext4, e2fsck-clean
    let bytes = std::fs::read(&img).unwrap();
    let p1 = tmp.path().join("p1.img");
    std::fs::write(&p1, &bytes[MIB as usize..65 * MIB as usize]).unwrap();
    fsck_vfat(&p1);
    check_fat(&format!("{}@@1M", img.display()), &files, tmp.path());
    let p2 = tmp.path().join("p2.img");
    std::fs::write(&p2, &bytes[65 * MIB as usize..]).unwrap();
    e2fsck(&p2);
    let cat = debugfs(&p2, "cat /etc/hostname");
    assert!(cat.contains("node1"), "{cat}");
    let b = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &(65 * MIB).to_string()])
        .arg(&img));
    assert!(b.contains("TYPE=ext4"), "{b}");
}

#[test]
fn image_gpt_checks_out() {
    let tmp = tempfile::tempdir().unwrap();
    make_boot(&tmp.path().join("boot"));
    make_root(&tmp.path().join("root"));
    let text = ok(&piimg(
        &[
            "fs", "image", "--boot", "boot", "--root", "root", "--out", "sd.img", "--table", "gpt",
            "--owner", "0:0",
        ],
        tmp.path(),
    ));
    let img = tmp.path().join("sd.img");
    let v = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(v.contains("No problems found"), "{v}");
    let i = run(Command::new("sgdisk").args(["-i", "1"]).arg(&img));
    assert!(i.contains("Microsoft basic data"), "{i}");
    let guid = i
        .lines()
        .find_map(|l| l.strip_prefix("Partition unique GUID: "))
        .unwrap()
        .to_lowercase();
    assert!(text.contains(&format!("PARTUUID={guid}")), "{text}");
    let (start2, size2) = spans(&sfdisk_json(&img))[1];
    let bytes = std::fs::read(&img).unwrap();
    let p2 = tmp.path().join("p2.img");
    std::fs::write(&p2, &bytes[start2 as usize..(start2 + size2) as usize]).unwrap();
    e2fsck(&p2);
}

#[test]
fn ext4_from_folder() {
    let tmp = tempfile::tempdir().unwrap();
    make_root(&tmp.path().join("root"));
    ok(&piimg(
        &[
            "fs", "ext4", "--from", "root", "--out", "r.ext4", "--owner", "0:0", "--label", "root",
        ],
        tmp.path(),
    ));
    let img = tmp.path().join("r.ext4");
    e2fsck(&img);
    let st = debugfs(&img, "stat /var/lib/data/big");
    assert!(st.contains("Size: 2097152"), "{st}");
    assert!(st.contains("Mode:  0600"), "{st}");
    // mtimes are clamped to SOURCE_DATE_EPOCH
    assert!(st.contains("0x6553f100"), "{st}");
    sidecar_matches(&img);
}

/// Runs a failing command: exit status 1, a message containing `want`, and nothing (not even a
/// temp file) left in the output folder.
fn fails(args: &[&str], dir: &Path, want: &str) {
    std::fs::create_dir_all(dir.join("o")).unwrap();
    let o = piimg(args, dir);
    o.assert_code(1);
    assert!(
        o.stderr.contains(want),
        "expected `{want}` in: {}",
        o.stderr
    );
    assert!(
        dir_names(&dir.join("o")).is_empty(),
        "{:?}",
        dir_names(&dir.join("o"))
    );
}

#[test]
fn bad_input_exits_1_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_boot(&d.join("boot"));
    make_root(&d.join("root"));
    // size not a multiple of 512
    fails(
        &[
            "fs", "fat", "--from", "boot", "--out", "o/x.img", "--size", "40000001",
        ],
        d,
        "512-byte sectors",
    );
    fails(
        &[
            "fs", "image", "--boot", "boot", "--root", "root", "--out", "o/x.img", "--size", "1000",
        ],
        d,
        "512-byte sectors",
    );
    // source that does not exist
    fails(
        &["fs", "fat", "--from", "missing", "--out", "o/x.img"],
        d,
        "missing",
    );
    // too small: the message carries the bytes needed
    put(
        &d.join("big"),
        "huge.bin",
        &pattern(40 * MIB as usize, 3),
        0o644,
    );
    fails(
        &[
            "fs", "fat", "--from", "big", "--out", "o/x.img", "--size", "40MiB",
        ],
        d,
        "needs at least",
    );
    fails(
        &[
            "fs",
            "image",
            "--boot",
            "big",
            "--root",
            "root",
            "--out",
            "o/x.img",
            "--boot-size",
            "40MiB",
        ],
        d,
        "needs at least",
    );
    fails(
        &[
            "fs",
            "image",
            "--boot",
            "boot",
            "--root",
            "big",
            "--out",
            "o/x.img",
            "--size",
            "48MiB",
            "--boot-size",
            "40MiB",
        ],
        d,
        "root partition",
    );
    // a symlink cannot go on FAT: the message names it
    std::os::unix::fs::symlink("config.txt", d.join("boot/link.txt")).unwrap();
    fails(
        &["fs", "fat", "--from", "boot", "--out", "o/x.img"],
        d,
        "link.txt",
    );
    std::fs::remove_file(d.join("boot/link.txt")).unwrap();
    // a name FAT cannot store
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"bad\xffname");
    std::fs::write(d.join("boot").join(bad), b"x").unwrap();
    fails(
        &["fs", "fat", "--from", "boot", "--out", "o/x.img"],
        d,
        "not UTF-8",
    );
    // unknown size unit, bad owner
    fails(
        &[
            "fs",
            "ext4",
            "--from",
            "root",
            "--out",
            "o/x.img",
            "--size",
            "3 parsecs",
        ],
        d,
        "size",
    );
    fails(
        &[
            "fs", "ext4", "--from", "root", "--out", "o/x.img", "--owner", "root",
        ],
        d,
        "UID:GID",
    );
}

#[test]
fn failed_build_keeps_the_previous_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_boot(&d.join("boot"));
    ok(&piimg(
        &["fs", "fat", "--from", "boot", "--out", "o/b.img"],
        d,
    ));
    let before = std::fs::read(d.join("o/b.img")).unwrap();
    std::os::unix::fs::symlink("x", d.join("boot/dangling")).unwrap();
    let o = piimg(&["fs", "fat", "--from", "boot", "--out", "o/b.img"], d);
    o.assert_code(1);
    assert!(std::fs::read(d.join("o/b.img")).unwrap() == before);
    assert_eq!(dir_names(&d.join("o")), ["b.img", "b.img.sha256"]);
}
