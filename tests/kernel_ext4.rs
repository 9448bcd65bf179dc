//! The Linux kernel mounts piimg's ext4 read-write and reads every file.
//!
//! Debian's arm64 kernel boots in `qemu-system-aarch64 -M raspi3b` with a tiny busybox initramfs
//! (written by piimg's cpio writer) that loads the SD host and ext4 modules, mounts partition 2 of
//! an SD image (MBR + FAT32 + ext4, all written by piimg) read-write, prints the sha256 of every
//! regular file, then creates, copies and deletes files and unmounts. The test compares every
//! checksum with the source tree's, then checks the partition the kernel wrote to with `e2fsck -fn`
//! and `debugfs`.
//!
//! The kernel and busybox-static come from Debian through piimg's components API into the test
//! cache shared with tests/build.rs, so they download once per target dir. QEMU, e2fsck and
//! debugfs are required: a missing one fails the test.

mod common;
use common::checkers::{debugfs, e2fsck, extract};
use common::{cache_home, sha256_hex, temp_dir};

use piimg::components::apt::{kernel_package, Apt, AptConfig};
use piimg::components::cache::Cache;
use piimg::components::deb::{read_cached_deb, DebOptions};
use piimg::components::modules::{decompress_module, ModuleSet};
use piimg::fs::cpio::{self, Compression, CpioOptions};
use piimg::fs::disk::{self, PartKind, PartSpec, Table};
use piimg::fs::ext4::{self, Ext4Options};
use piimg::fs::fat32::{self, FatOptions};
use piimg::fs::sparse::{FileSink, Sink};
use piimg::report::Silent;
use piimg::tree::{FileData, InodeKind, Meta, Tree};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const T0: i64 = 1_767_225_600;
/// QEMU's SD card model needs a power-of-two image.
const DISK: u64 = 128 * MIB;
const BOOT_PART: u64 = 40 * MIB;
const SUITE: &str = "trixie";
/// Modules the initramfs loads (the node image's stage 1 set).
const MODULES: &[&str] = &["bcm2835", "sdhci_iproc", "ext4", "crc32c_generic"];
/// Printed by the guest's /init once everything is done; the test kills QEMU after it.
const DONE: &str = "PIIMG-TEST-DONE";
/// Whole-run limit (TCG emulation on a loaded CI machine is slow; a normal run takes ~30 s).
const TIMEOUT: Duration = Duration::from_secs(600);

fn m(perm: u16) -> Meta {
    Meta::root(perm, T0)
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------- Debian packages

struct Packages {
    cache: Cache,
    kernel_sha: String,
    kernel_release: String,
    busybox_sha: String,
}

/// The current kernel and busybox-static of the suite, downloaded into the shared test cache.
fn packages() -> Packages {
    let cache = Cache::open(cache_home().join("piimg")).unwrap();
    let apt = Apt::in_cache(&cache, AptConfig::new(SUITE, None).unwrap()).unwrap();
    apt.update(&Silent).unwrap();
    let resolved = apt
        .resolve(&["linux-image-arm64", "busybox-static"], &[])
        .unwrap();
    let kernel = kernel_package(&resolved.packages)
        .expect("no versioned kernel package in the resolved set")
        .clone();
    let busybox = resolved
        .packages
        .iter()
        .find(|p| p.name == "busybox-static")
        .expect("busybox-static not resolved")
        .clone();
    apt.download(&[kernel.clone(), busybox.clone()], &cache, &Silent)
        .unwrap();
    let kernel_release = piimg::components::apt::kernel_release(&kernel.name)
        .unwrap()
        .to_string();
    Packages {
        cache,
        kernel_sha: kernel.sha256,
        kernel_release,
        busybox_sha: busybox.sha256,
    }
}

fn read_pkg(cache: &Cache, sha: &str, label: &str) -> Tree {
    let mut t = Tree::new(m(0o755));
    let opts = DebOptions {
        merge_usr: true,
        clamp_mtime: Some(T0),
        ..Default::default()
    };
    read_cached_deb(&mut t, cache, sha, label, &opts).unwrap();
    t
}

fn file_bytes(tree: &Tree, path: &str) -> Vec<u8> {
    let id = tree
        .lookup(path)
        .unwrap_or_else(|| panic!("{path} not in the package"));
    match &tree.inode(id).kind {
        InodeKind::File(d) => d.read_all().unwrap(),
        other => panic!("{path} is not a file: {other:?}"),
    }
}

// ---------------------------------------------------------------- the initramfs

/// The modules of `set` in the order piimg's initramfs loads them (the builder's own
/// [`ModuleSet::load_order`], so that this test boots the order a node boots), by name.
fn stage1_order(set: &ModuleSet, names: &[String]) -> Vec<String> {
    let by_path: BTreeMap<&str, &str> = set
        .modules
        .values()
        .map(|m| (m.path.as_str(), m.name.as_str()))
        .collect();
    set.load_order(names)
        .iter()
        .map(|p| by_path[p.as_str()].to_string())
        .collect()
}

/// /init: mounts the API filesystems, loads the modules, mounts the root partition read-write,
/// prints `SUM <sha256>  ./path` for every regular file, writes, unmounts, prints the marker.
const INIT: &str = r#"#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /usr/bin /usr/sbin /sbin
# --install -s links to /proc/self/exe's target: proc first.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "PIIMG-TEST: init running"
for m in $(cat /modules.order); do
  insmod "/lib/modules/$m.ko" || echo "PIIMG-TEST-FAIL: insmod $m"
done
i=0
while [ ! -b /dev/mmcblk0p2 ]; do
  i=$((i+1))
  if [ $i -gt 60 ]; then
    echo "PIIMG-TEST-FAIL: no /dev/mmcblk0p2"; ls /dev; echo "PIIMG-TEST-DONE"; poweroff -f
  fi
  sleep 1
done
if ! mount -t ext4 -o rw /dev/mmcblk0p2 /mnt; then
  echo "PIIMG-TEST-FAIL: mount"; dmesg | tail -n 30; echo "PIIMG-TEST-DONE"; poweroff -f
fi
# Keep kernel messages off the console while the checksums are printed.
dmesg -n 1
echo "MOUNT $(grep ' /mnt ' /proc/mounts)"
cd /mnt
find . -type f | sort | while IFS= read -r f; do
  echo "SUM $(sha256sum "$f")"
done
echo "PIIMG-TEST: sums done"
mkdir from-kernel
echo "written by linux" > from-kernel/hello.txt
cp big/random.bin from-kernel/random-copy.bin
rm -f small/d3/f7
ln from-kernel/hello.txt from-kernel/hello-link.txt
sync
echo "WROTE $(sha256sum from-kernel/random-copy.bin)"
cd /
umount /mnt
echo "UMOUNT rc=$?"
dmesg | grep -i -e ext4 -e jbd2 -e mmc | while IFS= read -r l; do echo "DMESG $l"; done
echo "PIIMG-TEST-DONE"
poweroff -f
"#;

fn initramfs(p: &Packages, kernel: &Tree, dir: &Path) -> (PathBuf, Vec<String>) {
    let busybox = read_pkg(&p.cache, &p.busybox_sha, "busybox-static");
    let bb = ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .find_map(|c| busybox.lookup(c).map(|_| file_bytes(&busybox, c)))
        .expect("busybox-static has no busybox binary");
    let set = ModuleSet::from_tree(kernel, Some(&p.kernel_release)).unwrap();
    let closure = set.closure(MODULES, true).unwrap();
    let order = stage1_order(&set, &closure);
    assert_eq!(order.len(), closure.len(), "{order:?} vs {closure:?}");

    let mut t = Tree::new(m(0o755));
    t.add_file("bin/busybox", m(0o755), FileData::from_bytes(bb))
        .unwrap();
    t.add_symlink("bin/sh", "busybox", m(0o777)).unwrap();
    // The kernel opens /dev/console before /init mounts devtmpfs.
    t.insert(
        "dev/console",
        m(0o600),
        InodeKind::CharDev { major: 5, minor: 1 },
    )
    .unwrap();
    t.add_file("init", m(0o755), FileData::from_bytes(INIT))
        .unwrap();
    for name in &order {
        let info = &set.modules[name];
        let raw = file_bytes(kernel, &format!("{}/{}", set.dir, info.path));
        let elf = decompress_module(&info.path, &raw).unwrap();
        t.add_file(
            format!("lib/modules/{name}.ko"),
            m(0o644),
            FileData::from_bytes(elf),
        )
        .unwrap();
    }
    t.add_file(
        "modules.order",
        m(0o644),
        FileData::from_bytes(format!("{}\n", order.join("\n"))),
    )
    .unwrap();
    let path = dir.join("initrd.cpio.gz");
    let mut f = std::fs::File::create(&path).unwrap();
    let opts = CpioOptions {
        compression: Compression::Gzip { level: 6 },
    };
    cpio::write(&t, &opts, &mut f).unwrap();
    f.flush().unwrap();
    (path, order)
}

// ---------------------------------------------------------------- the SD image

/// The tree written to the ext4 partition: nested directories, many small files, a few MiB of
/// noise, blocks of zeros inside data, a sparse host file with many extents, empty and one-byte
/// files, fast and slow symlinks, hard links, a 255-byte name, non-ASCII names, special files.
fn source_tree(dir: &Path) -> Tree {
    let mut t = Tree::new(m(0o755));
    t.add_file(
        "big/random.bin",
        m(0o644),
        FileData::from_bytes(noise(1, 3 * MIB as usize + 123)),
    )
    .unwrap();
    let mut zeros_inside = noise(2, 1 << 20);
    zeros_inside[64 << 10..320 << 10].fill(0);
    t.add_file(
        "big/zero-run.bin",
        m(0o600),
        FileData::from_bytes(zeros_inside),
    )
    .unwrap();
    // Sparse host file: six 4 KiB data runs 1 MiB apart and a tail, so the extents do not fit in
    // the inode (an extent tree block is needed).
    let sparse = dir.join("sparse.src");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(8 * MIB + 1000).unwrap();
    for i in 0..6u64 {
        f.write_all_at(&noise(10 + i, 4096), i * MIB + 8192)
            .unwrap();
    }
    f.write_all_at(b"tail", 8 * MIB + 996).unwrap();
    drop(f);
    t.add_file(
        "big/sparse.bin",
        m(0o644),
        FileData::Host {
            path: sparse,
            len: 8 * MIB + 1000,
        },
    )
    .unwrap();
    for d in 0..8u64 {
        for i in 0..40u64 {
            let len = ((d * 131 + i * 977) % 9000) as usize;
            t.add_file(
                format!("small/d{d}/f{i}"),
                Meta::new(0o640, 1000 + d as u32, 100, T0 - i as i64),
                FileData::from_bytes(noise(d * 100 + i + 7, len)),
            )
            .unwrap();
        }
    }
    // Deep nesting.
    t.add_file(
        "deep/a/b/c/d/e/f/g/h/leaf.txt",
        m(0o644),
        FileData::from_bytes("deep leaf\n"),
    )
    .unwrap();
    // One directory with many entries (several directory blocks).
    for i in 0..300u32 {
        t.add_file(
            format!("wide/entry-with-a-longish-name-{i:04}"),
            m(0o644),
            FileData::from_bytes(format!("{i}\n")),
        )
        .unwrap();
    }
    t.add_file("edge/empty", m(0o644), FileData::from_bytes(""))
        .unwrap();
    t.add_file("edge/one", m(0o644), FileData::from_bytes("x"))
        .unwrap();
    t.add_file("edge/block", m(0o644), FileData::from_bytes(noise(3, 4096)))
        .unwrap();
    t.add_file(
        "edge/block+1",
        m(0o644),
        FileData::from_bytes(noise(4, 4097)),
    )
    .unwrap();
    t.add_file(
        "edge/all-zero",
        m(0o644),
        FileData::from_bytes(vec![0u8; 20000]),
    )
    .unwrap();
    let long = "n".repeat(255);
    t.add_file(
        format!("edge/{long}"),
        m(0o644),
        FileData::from_bytes("longest name\n"),
    )
    .unwrap();
    t.add_file(
        "edge/caf\u{e9} \u{65e5}\u{672c}",
        m(0o644),
        FileData::from_bytes("utf-8 name\n"),
    )
    .unwrap();
    t.add_file("edge/setuid", m(0o4755), FileData::from_bytes("suid\n"))
        .unwrap();
    t.add_hardlink("edge/hard-link", "big/zero-run.bin")
        .unwrap();
    t.add_hardlink("small/d0/hard", "small/d1/f1").unwrap();
    t.add_symlink("links/fast", "../edge/one", m(0o777))
        .unwrap();
    let slow = format!("../{}/{}", "x".repeat(100), "target");
    t.add_symlink("links/slow", slow, m(0o777)).unwrap();
    t.add_symlink("links/dangling", "/nowhere", m(0o777))
        .unwrap();
    t.insert(
        "dev/null",
        m(0o666),
        InodeKind::CharDev { major: 1, minor: 3 },
    )
    .unwrap();
    t.insert("dev/fifo", m(0o644), InodeKind::Fifo).unwrap();
    t.mkdir_p("empty-dir", m(0o755)).unwrap();
    t.mkdir_p("tmp", m(0o1777)).unwrap();
    t
}

/// `./path` -> sha256 of every regular file name in the tree (hard links once per name).
fn expected_sums(tree: &Tree) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, id) in tree.walk() {
        if let InodeKind::File(d) = &tree.inode(id).kind {
            let name = format!("./{}", String::from_utf8(path).unwrap());
            out.insert(name, sha256_hex(&d.read_all().unwrap()));
        }
    }
    out
}

struct Disk {
    path: PathBuf,
    root_start: u64,
    root_size: u64,
}

fn sd_image(dir: &Path, root: &Tree) -> Disk {
    let layout = disk::plan(
        Table::Mbr,
        DISK,
        &[
            PartSpec {
                name: "boot".into(),
                kind: PartKind::BootFat,
                size: BOOT_PART,
            },
            PartSpec {
                name: "root".into(),
                kind: PartKind::Linux,
                size: 0,
            },
        ],
        b"kernel-ext4-test",
    )
    .unwrap();
    let path = dir.join("sd.img");
    let file = std::fs::File::create(&path).unwrap();
    let mut sink = FileSink::new(file, DISK).unwrap();
    assert_eq!(sink.len(), DISK);
    disk::write_table(&layout, &mut sink).unwrap();
    let (boot, rootp) = (&layout.parts[0], &layout.parts[1]);
    let mut boot_tree = Tree::new(m(0o755));
    boot_tree
        .add_file("README.TXT", m(0o644), FileData::from_bytes("boot\n"))
        .unwrap();
    fat32::write(
        &boot_tree,
        &FatOptions {
            size: boot.size,
            label: "BOOT".into(),
            volume_id: 0x1234_5678,
            timestamp: T0,
            hidden_sectors: (boot.start / 512) as u32,
        },
        &mut sink,
        boot.start,
    )
    .unwrap();
    ext4::write(
        root,
        &Ext4Options {
            size: rootp.size,
            label: "root".into(),
            uuid: *b"kernel-ext4-uuid",
            hash_seed: *b"kernel-ext4-hash",
            timestamp: T0,
        },
        &mut sink,
        rootp.start,
    )
    .unwrap();
    sink.into_file().sync_all().unwrap();
    Disk {
        path,
        root_start: rootp.start,
        root_size: rootp.size,
    }
}

// ---------------------------------------------------------------- QEMU

/// Boots and returns the console once the guest printed [`DONE`]; fails on a timeout, a kernel
/// panic or QEMU exiting first. QEMU is killed (by its pid) before returning.
/// Boots the kernel through piimg's own QEMU code (`piimg qemu`'s machine, single-threaded TCG
/// and console watch), the SD card writable, until the init script prints DONE.
fn boot(kernel: &Path, dtb: &Path, initrd: &Path, sd: &Path) -> String {
    use piimg::qemu::{self, End, KernelFiles, RunOptions};
    let opts = RunOptions {
        image: sd.to_path_buf(),
        memory: Some("1G".into()),
        forwards: Vec::new(),
        timeout: Some(TIMEOUT),
        until: Some(regex::Regex::new(DONE).unwrap()),
        qemu: None,
        writable: true,
        direct: Some(KernelFiles {
            kernel: kernel.to_path_buf(),
            dtb: dtb.to_path_buf(),
            initramfs: Some(initrd.to_path_buf()),
            cmdline: "console=ttyAMA0,115200 rdinit=/init".into(),
        }),
        card: None,
        lan: None,
    };
    let mut console = Vec::new();
    let o = qemu::run(&opts, &mut console)
        .unwrap_or_else(|e| panic!("{e} (install qemu-system-arm for qemu-system-aarch64)"));
    // The rest of the marker's line and what follows is not needed: the script has finished.
    let text = String::from_utf8_lossy(&console).replace('\r', "");
    if o.end != End::Matched {
        panic!(
            "{:?} after {:?}:\n{text}\n--- QEMU stderr\n{}",
            o.end,
            o.wall,
            o.stderr_tail.join("\n")
        );
    }
    text
}

// ---------------------------------------------------------------- the test

#[test]
fn linux_mounts_piimg_ext4_read_write_and_reads_every_file() {
    let work = temp_dir("kernel-ext4-");
    let dir = work.path();

    // Boot files from the Debian kernel package.
    let p = packages();
    let kernel = read_pkg(&p.cache, &p.kernel_sha, "linux-image");
    let rel = &p.kernel_release;
    let vmlinuz = dir.join("vmlinuz");
    std::fs::write(
        &vmlinuz,
        file_bytes(&kernel, &format!("boot/vmlinuz-{rel}")),
    )
    .unwrap();
    let dtb = dir.join("bcm2837-rpi-3-b.dtb");
    std::fs::write(
        &dtb,
        file_bytes(
            &kernel,
            &format!("usr/lib/linux-image-{rel}/broadcom/bcm2837-rpi-3-b.dtb"),
        ),
    )
    .unwrap();
    let (initrd, order) = initramfs(&p, &kernel, dir);
    for needed in ["sdhci_iproc", "bcm2835", "ext4", "jbd2", "crc32c_generic"] {
        assert!(
            order.iter().any(|o| o == needed),
            "{needed} not in {order:?}"
        );
    }
    let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
    assert!(pos("jbd2") < pos("ext4") && pos("crc32c_generic") < pos("ext4"));

    // The SD image, checked before the kernel touches it.
    let src = source_tree(dir);
    let want = expected_sums(&src);
    let sd = sd_image(dir, &src);
    assert!(std::fs::metadata(&sd.path).unwrap().len().is_power_of_two());
    let root_img = dir.join("root.img");
    extract(&sd.path, sd.root_start, sd.root_size, &root_img);
    e2fsck(&root_img);

    let console = boot(&vmlinuz, &dtb, &initrd, &sd.path);
    // Shown with --nocapture (and on failure of a later assertion).
    eprintln!("kernel {rel}, modules {order:?}\n{console}");

    // Every module loaded, the partition mounted read-write.
    let fails: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("PIIMG-TEST-FAIL"))
        .collect();
    assert!(fails.is_empty(), "{fails:?}\n{console}");
    let mount = console
        .lines()
        .find_map(|l| l.strip_prefix("MOUNT "))
        .unwrap_or_else(|| panic!("no MOUNT line:\n{console}"));
    let fields: Vec<&str> = mount.split_whitespace().collect();
    assert_eq!(fields.get(2), Some(&"ext4"), "{mount}");
    assert!(
        fields
            .get(3)
            .is_some_and(|o| o.split(',').any(|x| x == "rw")),
        "not mounted read-write: {mount}"
    );

    // Every checksum the kernel printed matches the source tree, and every file was printed.
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for l in console.lines() {
        if let Some(rest) = l.strip_prefix("SUM ") {
            let (sum, name) = rest
                .split_once("  ")
                .unwrap_or_else(|| panic!("bad SUM line {l:?}"));
            assert!(
                got.insert(name.to_string(), sum.to_string()).is_none(),
                "{name} printed twice"
            );
        }
    }
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "files not seen by the kernel: {missing:?}\nfiles the source does not have: {extra:?}\n{console}"
    );
    for (name, sum) in &want {
        assert_eq!(&got[name], sum, "{name}: content read by Linux differs");
    }
    assert!(want.len() > 600, "{} files", want.len());

    // The writes went through and the unmount was clean; the kernel logged no ext4 trouble.
    assert!(console.contains("UMOUNT rc=0"), "{console}");
    let wrote = console
        .lines()
        .find_map(|l| l.strip_prefix("WROTE "))
        .unwrap_or_else(|| panic!("no WROTE line:\n{console}"));
    assert_eq!(
        wrote.split_whitespace().next(),
        Some(want["./big/random.bin"].as_str())
    );
    let trouble: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("DMESG "))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("warning") || l.contains("corrupt")
        })
        .collect();
    assert!(trouble.is_empty(), "{trouble:?}");
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("DMESG ") && l.contains("EXT4-fs (mmcblk0p2)")),
        "no ext4 mount message:\n{console}"
    );

    // The partition the kernel wrote to is still consistent and holds what it wrote.
    extract(&sd.path, sd.root_start, sd.root_size, &root_img);
    e2fsck(&root_img);
    assert_eq!(
        debugfs(&root_img, "cat /from-kernel/hello.txt")
            .lines()
            .find(|l| !l.starts_with("debugfs"))
            .unwrap_or(""),
        "written by linux"
    );
    let copy = dir.join("copy.bin");
    debugfs(
        &root_img,
        &format!("dump /from-kernel/random-copy.bin {}", copy.display()),
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&copy).unwrap()),
        want["./big/random.bin"]
    );
    let stat = debugfs(&root_img, "stat /from-kernel/hello-link.txt");
    assert!(stat.contains("Links: 2"), "{stat}");
    let gone = debugfs(&root_img, "stat /small/d3/f7");
    assert!(gone.contains("File not found"), "{gone}");
}
