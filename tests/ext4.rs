//! The ext4 writer checked with e2fsprogs: every image must pass `e2fsck -fn`, and debugfs must
//! show every entry with the source's content, type, mode, owner, mtime, link target, device
//! numbers, xattrs and hard-link identity.

mod common;
use common::checkers::{e2fsck, extract, run, stdout_of, tool};

use piimg::fs::ext4::{self, Ext4Error, Ext4Options};
use piimg::fs::sparse::{AtomicOutput, FileSink, Sink};
use piimg::tree::{FileData, HostImport, InodeId, InodeKind, Meta, Tree};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const T0: i64 = 1_700_000_000;

fn opts(size: u64) -> Ext4Options {
    Ext4Options {
        size,
        label: "piimg-test".into(),
        uuid: *b"0123456789abcdef",
        hash_seed: *b"fedcba9876543210",
        timestamp: T0,
    }
}

struct Img {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write_img(tree: &Tree, size: u64) -> Img {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.img");
    let out = AtomicOutput::create(&path).unwrap();
    let mut sink = out.sink(size).unwrap();
    ext4::write(tree, &opts(size), &mut sink, 0).unwrap();
    drop(sink);
    out.commit().unwrap();
    Img { _dir: dir, path }
}

/// Runs debugfs commands in one process; returns each command's output.
fn debugfs(path: &Path, cmds: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmds");
    std::fs::write(&file, cmds.join("\n") + "\n").unwrap();
    let out = stdout_of(Command::new("debugfs").arg("-f").arg(&file).arg(path));
    let text = String::from_utf8_lossy(&out).into_owned();
    let parts: Vec<String> = text
        .split("debugfs: ")
        .skip(1)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(parts.len(), cmds.len(), "debugfs output:\n{text}");
    parts
}

fn quote(path: &[u8]) -> String {
    let p = String::from_utf8(path.to_vec()).unwrap();
    assert!(!p.contains('"'));
    format!("\"/{p}\"")
}

/// The value after `key` in whitespace-separated stat output.
fn field<'a>(stat: &'a str, key: &str) -> &'a str {
    let mut it = stat.split_whitespace();
    while let Some(t) = it.next() {
        if t == key {
            return it.next().unwrap_or("");
        }
    }
    panic!("no {key} in\n{stat}")
}

fn stat_mtime(stat: &str) -> i64 {
    let line = stat
        .lines()
        .find(|l| l.trim_start().starts_with("mtime:"))
        .unwrap();
    let v = line.split_whitespace().nth(1).unwrap();
    let (lo, extra) = v.trim_start_matches("0x").split_once(':').unwrap();
    let lo = u32::from_str_radix(lo, 16).unwrap() as i32 as i64;
    let extra = u32::from_str_radix(extra, 16).unwrap();
    lo + (i64::from(extra & 3) << 32)
}

/// Checks every entry of `tree` against the image with debugfs (stat, ea_list, rdump).
fn verify(img: &Path, tree: &Tree) {
    let walk = tree.walk();
    let mut cmds = Vec::new();
    for (path, _) in &walk {
        cmds.push(format!("stat {}", quote(path)));
        cmds.push(format!("ea_list {}", quote(path)));
    }
    let out = debugfs(img, &cmds);
    let mut ino_of: BTreeMap<InodeId, String> = BTreeMap::new();
    for (i, (path, id)) in walk.iter().enumerate() {
        let (stat, eas) = (&out[2 * i], &out[2 * i + 1]);
        let name = String::from_utf8_lossy(path);
        let node = tree.inode(*id);
        assert!(!stat.contains("File not found"), "{name}: {stat}");
        let ino = field(stat, "Inode:").to_string();
        if let Some(prev) = ino_of.insert(*id, ino.clone()) {
            assert_eq!(prev, ino, "{name}: hard link to a different inode");
        }
        if path.is_empty() {
            assert_eq!(ino, "2");
        }
        let ty = field(stat, "Type:");
        let want_ty = match node.kind {
            InodeKind::Dir(_) => "directory",
            InodeKind::File(_) => "regular",
            InodeKind::Symlink(_) => "symlink",
            InodeKind::CharDev { .. } => "character",
            InodeKind::BlockDev { .. } => "block",
            InodeKind::Fifo => "FIFO",
            InodeKind::Socket => "socket",
        };
        assert_eq!(ty, want_ty, "{name}");
        let mode = u32::from_str_radix(field(stat, "Mode:"), 8).unwrap();
        assert_eq!(mode, u32::from(node.meta.perm), "{name}: mode");
        assert_eq!(field(stat, "User:"), node.meta.uid.to_string(), "{name}");
        assert_eq!(field(stat, "Group:"), node.meta.gid.to_string(), "{name}");
        assert_eq!(stat_mtime(stat), node.meta.mtime, "{name}: mtime");
        let links: u32 = field(stat, "Links:").parse().unwrap();
        let size: u64 = field(stat, "Size:").parse().unwrap();
        match &node.kind {
            InodeKind::Dir(_) => {
                let subdirs = tree.children(*id).filter(|(_, c)| tree.inode(*c).is_dir());
                let lpf = u32::from(path.is_empty() && tree.lookup("lost+found").is_none());
                assert_eq!(links, 2 + subdirs.count() as u32 + lpf, "{name}: links");
            }
            InodeKind::File(d) => {
                assert_eq!(size, d.len(), "{name}: size");
                assert_eq!(links, tree.link_count(*id), "{name}: links");
            }
            InodeKind::Symlink(t) => {
                assert_eq!(size, t.len() as u64, "{name}");
                if t.len() < 60 {
                    let want = format!("Fast link dest: \"{}\"", String::from_utf8_lossy(t));
                    assert!(stat.contains(&want), "{name}: {stat}");
                } else {
                    assert!(stat.contains("EXTENTS:"), "{name}: slow symlink\n{stat}");
                }
            }
            InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                assert!(
                    stat.contains(&format!("Device major/minor number: {major:02}:{minor:02}")),
                    "{name}: {stat}"
                );
            }
            InodeKind::Fifo | InodeKind::Socket => {}
        }
        for (k, v) in &node.meta.xattrs {
            // debugfs prints printable values quoted, others as hex bytes.
            let k = String::from_utf8_lossy(k);
            let hex: Vec<String> = v.iter().map(|b| format!("{b:02x}")).collect();
            let as_hex = format!("  {k} ({}) = {} ", v.len(), hex.join(" "));
            let as_text = format!("  {k} ({}) = \"{}\"", v.len(), String::from_utf8_lossy(v));
            assert!(
                eas.lines().any(|l| l == as_hex || l == as_text),
                "{name}: {k} missing or different in\n{eas}"
            );
        }
        let listed = eas.lines().filter(|l| l.starts_with("  ")).count();
        assert_eq!(listed, node.meta.xattrs.len(), "{name}: {eas}");
    }
    // Content and link targets: rdump (as root it also keeps owners and modes).
    let dump = tempfile::tempdir().unwrap();
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dump.path().display()))
        .arg(img));
    for (path, id) in &walk {
        let host = dump.path().join(std::ffi::OsStr::from_bytes(path));
        let name = String::from_utf8_lossy(path);
        match &tree.inode(*id).kind {
            InodeKind::File(d) => {
                let got = std::fs::read(&host).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(got == d.read_all().unwrap(), "{name}: content differs");
            }
            InodeKind::Symlink(t) => {
                let got = std::fs::read_link(&host).unwrap();
                assert_eq!(got.as_os_str().as_bytes(), &t[..], "{name}");
            }
            _ => {}
        }
    }
}

fn m(perm: u16) -> Meta {
    Meta::new(perm, 0, 0, T0 - 1000)
}

/// Bytes that are never zero over a whole block.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) >> 13) as u8 | 1)
        .collect()
}

fn mixed_tree() -> Tree {
    let mut t = Tree::new(Meta::new(0o755, 0, 0, T0));
    t.add_file("empty", m(0o644), FileData::from_bytes(Vec::new()))
        .unwrap();
    t.add_file(
        "one-block",
        m(0o600),
        FileData::from_bytes(pattern(4096, 1)),
    )
    .unwrap();
    t.add_file("odd-size", m(0o644), FileData::from_bytes(pattern(4097, 2)))
        .unwrap();
    t.add_file(
        "usr/lib/big",
        m(0o644),
        FileData::from_bytes(pattern(3 << 20, 3)),
    )
    .unwrap();
    // Alternating data and zero blocks: 600 extents, so the extent tree needs leaf blocks.
    let mut holes = vec![0u8; 1200 * 4096];
    for b in (0..1200).step_by(2) {
        holes[b * 4096..b * 4096 + 10].copy_from_slice(b"0123456789");
    }
    t.add_file("var/holey", m(0o644), FileData::from_bytes(holes))
        .unwrap();
    t.add_file(
        "var/tail-zero",
        m(0o644),
        FileData::from_bytes([pattern(5000, 4), vec![0; 9000]].concat()),
    )
    .unwrap();
    for len in [1usize, 59, 60, 61, 4000] {
        let target = "t".repeat(len);
        t.add_symlink(format!("links/s{len}"), &target, m(0o777))
            .unwrap();
    }
    t.add_symlink("links/rel", "../usr/lib/big", m(0o777))
        .unwrap();
    t.add_file(
        "a/shared",
        Meta::new(0o640, 33, 44, T0 - 5),
        FileData::from_bytes("same inode\n"),
    )
    .unwrap();
    t.add_hardlink("b/c/shared-too", "a/shared").unwrap();
    t.add_hardlink("shared-3", "a/shared").unwrap();
    t.add_file("bin/su", m(0o4755), FileData::from_bytes("suid"))
        .unwrap();
    t.add_file("bin/wall", m(0o2755), FileData::from_bytes("sgid"))
        .unwrap();
    t.mkdir_p("tmp", m(0o1777)).unwrap();
    t.insert(
        "dev/null",
        m(0o666),
        InodeKind::CharDev { major: 1, minor: 3 },
    )
    .unwrap();
    t.insert(
        "dev/sda1",
        m(0o660),
        InodeKind::BlockDev { major: 8, minor: 1 },
    )
    .unwrap();
    t.insert(
        "dev/nvme",
        m(0o600),
        InodeKind::CharDev {
            major: 259,
            minor: 70000,
        },
    )
    .unwrap();
    t.insert("dev/fifo", m(0o644), InodeKind::Fifo).unwrap();
    t.insert("run/sock", m(0o755), InodeKind::Socket).unwrap();
    t.add_file(
        "home/user/big-ids",
        Meta::new(0o600, 100_000, 200_000, T0),
        FileData::from_bytes("ids"),
    )
    .unwrap();
    t.add_file(
        "y2038",
        Meta::new(0o644, 0, 0, 2_200_000_000),
        FileData::from_bytes("late"),
    )
    .unwrap();
    t.add_file(
        "1960",
        Meta::new(0o644, 0, 0, -300_000_000),
        FileData::from_bytes("early"),
    )
    .unwrap();
    t.add_file("grüße/日本語-😀", m(0o644), FileData::from_bytes("unicode"))
        .unwrap();
    t.add_file("x".repeat(255), m(0o644), FileData::from_bytes("long name"))
        .unwrap();
    let mut cap = Meta::new(0o755, 0, 0, T0);
    // VFS_CAP_REVISION_2 with cap_net_bind_service permitted+effective.
    let mut v = vec![0u8; 20];
    v[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    v[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    cap.xattrs.insert(b"security.capability".to_vec(), v);
    cap.xattrs.insert(b"user.note".to_vec(), b"hello".to_vec());
    t.add_file("usr/bin/ping", cap, FileData::from_bytes("ping"))
        .unwrap();
    t
}

#[test]
fn mixed_tree_passes_fsck_and_reads_back() {
    let t = mixed_tree();
    let img = write_img(&t, 64 * MIB);
    e2fsck(&img.path);
    verify(&img.path, &t);
    // The holey file: 600 data blocks plus extent tree blocks, not 1200.
    let stat = &debugfs(&img.path, &["stat /var/holey".into()])[0];
    let sectors: u64 = field(stat, "Blockcount:").parse().unwrap();
    assert_eq!(sectors, (600 + 2) * 8, "{stat}");
    assert!(
        stat.contains("(ETB0)"),
        "expected extent tree blocks:\n{stat}"
    );
}

#[test]
fn same_input_gives_identical_bytes() {
    let t = mixed_tree();
    let a = std::fs::read(write_img(&t, 32 * MIB).path).unwrap();
    let b = std::fs::read(write_img(&t, 32 * MIB).path).unwrap();
    assert!(a == b, "two writes of the same tree differ");
}

#[test]
fn ten_thousand_entries_in_one_directory() {
    let mut t = Tree::new(Meta::root(0o755, T0));
    for i in 0..10_000 {
        let name = format!("many/entry-with-a-longish-name-{i:05}");
        t.add_file(name, m(0o644), FileData::from_bytes(format!("{i}\n")))
            .unwrap();
    }
    let img = write_img(&t, 128 * MIB);
    e2fsck(&img.path);
    verify(&img.path, &t);
}

#[test]
fn sixty_deep_nesting() {
    let mut t = Tree::new(Meta::root(0o755, T0));
    let mut p = String::new();
    for i in 0..60 {
        p.push_str(&format!("level{i}/"));
        t.add_file(
            format!("{p}file"),
            m(0o644),
            FileData::from_bytes(p.clone()),
        )
        .unwrap();
    }
    let img = write_img(&t, 16 * MIB);
    e2fsck(&img.path);
    verify(&img.path, &t);
}

#[test]
fn host_directory_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let d = src.path();
    std::fs::create_dir_all(d.join("etc/ssl")).unwrap();
    std::fs::write(d.join("etc/hostname"), "node-1\n").unwrap();
    std::fs::write(d.join("etc/ssl/blob"), pattern(300_000, 9)).unwrap();
    std::fs::hard_link(d.join("etc/hostname"), d.join("hn-link")).unwrap();
    std::os::unix::fs::symlink("etc/hostname", d.join("sym")).unwrap();
    let mut tree = Tree::from_host_dir(d, HostImport::default()).unwrap();
    // A member of a bigger host file, and the tree's own lost+found (kept, not replaced).
    let blob = d.join("etc/ssl/blob");
    tree.add_file(
        "range",
        m(0o644),
        FileData::Range {
            path: blob,
            offset: 5000,
            len: 200_000,
        },
    )
    .unwrap();
    tree.mkdir_p("lost+found", m(0o700)).unwrap();
    tree.add_file("lost+found/kept", m(0o600), FileData::from_bytes("found"))
        .unwrap();
    let img = write_img(&tree, 32 * MIB);
    e2fsck(&img.path);
    verify(&img.path, &tree);
}

#[test]
fn sparse_5gib_host_file_stays_sparse() {
    let src = tempfile::tempdir().unwrap();
    let host = src.path().join("sparse");
    let f = std::fs::File::create(&host).unwrap();
    let len = 5u64 << 30;
    f.set_len(len).unwrap();
    let marks = [(0u64, b"start"), (3 << 30, b"three"), (len - 5, b"last!")];
    for (off, data) in marks {
        f.write_all_at(data, off).unwrap();
    }
    drop(f);
    let mut t = Tree::new(Meta::root(0o755, T0));
    t.add_file(
        "sparse",
        m(0o644),
        FileData::Host {
            path: host.clone(),
            len,
        },
    )
    .unwrap();
    let size = 64 * MIB;
    assert!(ext4::required_size(&t, &opts(0)).unwrap() <= size);
    let img = write_img(&t, size);
    e2fsck(&img.path);
    let out = debugfs(
        &img.path,
        &["stat /sparse".into(), "dump_extents /sparse".into()],
    );
    assert_eq!(field(&out[0], "Size:"), len.to_string());
    assert_eq!(field(&out[0], "Blockcount:"), (3 * 8).to_string());
    // Each mapped block (as debugfs reports it) holds the host file's bytes at that offset.
    let image = std::fs::File::open(&img.path).unwrap();
    let hostf = std::fs::File::open(&host).unwrap();
    let mut mapped = 0;
    for line in out[1].lines().filter(|l| l.contains(" - ")) {
        // "  0/ 0   1/  1     0 -     0 12345 - 12345      1"
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let (lstart, pstart, n) = (nums[4], nums[6], nums[8]);
        for i in 0..n {
            let mut a = vec![0u8; 4096];
            let mut b = vec![0u8; 4096];
            image.read_exact_at(&mut a, (pstart + i) * 4096).unwrap();
            let off = (lstart + i) * 4096;
            let want = (len - off).min(4096) as usize;
            hostf.read_exact_at(&mut b[..want], off).unwrap();
            assert!(a == b, "block {}", lstart + i);
            mapped += 1;
        }
    }
    assert_eq!(mapped, 3);
    let md = std::fs::metadata(&img.path).unwrap();
    assert!(
        md.blocks() * 512 < 8 * MIB,
        "image uses {} bytes",
        md.blocks() * 512
    );
}

#[test]
fn too_small_fails_before_writing_anything() {
    let mut t = mixed_tree();
    t.add_file("more", m(0o644), FileData::from_bytes(pattern(12 << 20, 5)))
        .unwrap();
    let needed = ext4::required_size(&t, &opts(0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.img");
    let f = std::fs::File::create(&path).unwrap();
    let size = 12 * MIB;
    let mut sink = FileSink::new(f, size).unwrap();
    match ext4::write(&t, &opts(size), &mut sink, 0) {
        Err(Ext4Error::TooSmall { needed: n, size: s }) => {
            assert_eq!((n, s), (needed, size));
        }
        other => panic!("expected TooSmall, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0);
    // Exactly the reported size is enough.
    let img = write_img(&t, needed);
    e2fsck(&img.path);
}

#[test]
fn filesystem_at_an_offset() {
    let t = mixed_tree();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    let mut sink = FileSink::new(f, 40 * MIB).unwrap();
    assert_eq!(sink.len(), 40 * MIB);
    ext4::write(&t, &opts(32 * MIB), &mut sink, 4 * MIB).unwrap();
    drop(sink);
    let part = dir.path().join("part.img");
    extract(&path, 4 * MIB, 32 * MIB, &part);
    e2fsck(&part);
    verify(&part, &t);
}

#[test]
fn thirty_two_gib_filesystem() {
    let t = mixed_tree();
    let size = 32u64 << 30;
    let img = write_img(&t, size);
    e2fsck(&img.path);
    let md = std::fs::metadata(&img.path).unwrap();
    assert_eq!(md.len(), size);
    assert!(
        md.blocks() * 512 < 64 * MIB,
        "image uses {} bytes",
        md.blocks() * 512
    );
    verify(&img.path, &t);
}

#[test]
fn resize2fs_grows_a_copy() {
    let t = mixed_tree();
    let img = write_img(&t, 100 * MIB);
    // Past one descriptor block (64 groups = 8 GiB), so new descriptor blocks are needed.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap();
    f.set_len(10 << 30).unwrap();
    drop(f);
    run(Command::new("resize2fs").arg(&img.path));
    e2fsck(&img.path);
    verify(&img.path, &t);
    let dump = tool(Command::new("dumpe2fs").arg("-h").arg(&img.path)).text();
    assert!(dump.contains("Block count:              2621440"), "{dump}");
}

/// A torn primary superblock (a power cut between its two sectors: the first new, the second
/// with the old checksum) leaves e2fsck the backups to go by. `e2fsck -y` must then check the
/// whole filesystem, as it does for mke2fs's (libext2fs writes backups "not clean"): the path
/// drops the groups' uninit flags, and bitmaps never written must be rebuilt, not trusted.
/// Afterwards `e2fsck -fn` finds it clean and every file reads back.
#[test]
fn a_torn_primary_superblock_is_repaired_from_a_backup() {
    let t = mixed_tree();
    let img = write_img(&t, 300 * MIB);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img.path)
        .unwrap();
    let mut first = [0u8; 512];
    f.read_exact_at(&mut first, 1024).unwrap();
    first[0x34..0x36].copy_from_slice(&1u16.to_le_bytes()); // s_mnt_count
    f.write_all_at(&first, 1024).unwrap();
    drop(f);
    let y = tool(Command::new("e2fsck").arg("-y").arg(&img.path));
    assert!(
        matches!(y.status.code(), Some(0 | 1)),
        "e2fsck -y: {}",
        y.show()
    );
    let text = y.text();
    assert!(text.contains("trying backup blocks"), "{text}");
    assert!(text.contains("Pass 5"), "no full check: {text}");
    e2fsck(&img.path);
    verify(&img.path, &t);
}

/// Not a test: the benchmark script's entry point (scripts/bench-ext4.sh). Writes
/// PIIMG_BENCH_SRC as an ext4 image of PIIMG_BENCH_SIZE bytes to PIIMG_BENCH_OUT.
#[test]
#[ignore]
fn bench_write_host_dir() {
    let src = std::env::var("PIIMG_BENCH_SRC").expect("PIIMG_BENCH_SRC");
    let out = std::env::var("PIIMG_BENCH_OUT").expect("PIIMG_BENCH_OUT");
    let size: u64 = std::env::var("PIIMG_BENCH_SIZE")
        .expect("PIIMG_BENCH_SIZE")
        .parse()
        .unwrap();
    let tree = Tree::from_host_dir(Path::new(&src), HostImport::default()).unwrap();
    let f = std::fs::File::create(&out).unwrap();
    let mut sink = FileSink::new(f, size).unwrap();
    ext4::write(&tree, &opts(size), &mut sink, 0).unwrap();
}
