//! Partition tables made by util-linux/gdisk: PARTUUID reading (what stage 1 uses when uevent
//! lacks PARTUUID) and first-boot growth, checked with sfdisk --verify / sgdisk -v.

use piimg_agent::{blockdev, grow};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: u64 = 1024 * 1024;

fn sfdisk_script(img: &Path, script: &str) {
    let mut c = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (util-linux fdisk package) must be installed");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
}

fn sfdisk_json(img: &Path) -> serde_json::Value {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn image(dir: &Path, size: u64, script: &str) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    sfdisk_script(&img, script);
    img
}

fn head(img: &Path) -> Vec<u8> {
    let b = fs::read(img).unwrap();
    b[..(512 * 64).min(b.len())].to_vec()
}

#[test]
fn mbr_partuuids_and_growth() {
    let t = tempfile::tempdir().unwrap();
    let img = image(
        t.path(),
        64 * MIB,
        "label: dos\nlabel-id: 0x0badc0de\nstart=2048, size=32768, type=c\nstart=34816, size=65536, type=83\nstart=100352, size=8192, type=83\n",
    );
    let uuids = blockdev::table_partuuids(&head(&img), 512);
    assert_eq!(
        uuids,
        vec![
            (1, "0badc0de-01".to_string()),
            (2, "0badc0de-02".to_string()),
            (3, "0badc0de-03".to_string())
        ]
    );
    assert_eq!(sfdisk_json(&img)["partitiontable"]["id"], "0x0badc0de");

    // The image was written to a bigger card.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    f.set_len(128 * MIB).unwrap();
    let g = grow::grow_partition(&f, 128 * MIB, 3).unwrap().unwrap();
    assert_eq!(
        g,
        grow::Grown {
            start: 100352,
            old_sectors: 8192,
            new_sectors: 262144 - 100352
        }
    );
    let j = sfdisk_json(&img);
    assert_eq!(
        j["partitiontable"]["partitions"][2]["size"],
        262144 - 100352
    );
    assert_eq!(j["partitiontable"]["partitions"][1]["size"], 65536);
    let v = Command::new("sfdisk")
        .arg("--verify")
        .arg(&img)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // Second run: nothing left to grow.
    assert_eq!(grow::grow_partition(&f, 128 * MIB, 3).unwrap(), None);
    // Only the last partition may grow.
    assert!(matches!(
        grow::grow_partition(&f, 256 * MIB, 2),
        Err(grow::GrowError::NotLast(2))
    ));
}

#[test]
fn gpt_partuuids_and_growth() {
    let t = tempfile::tempdir().unwrap();
    let img = image(
        t.path(),
        64 * MIB,
        "label: gpt\nlabel-id: 5A1F3C2B-0000-4000-8000-0000000000AA\n\
         start=2048, size=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=11111111-2222-4333-8444-555555555501\n\
         start=34816, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=11111111-2222-4333-8444-555555555502\n\
         start=100352, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=11111111-2222-4333-8444-555555555503\n",
    );
    let uuids = blockdev::table_partuuids(&head(&img), 512);
    let j = sfdisk_json(&img);
    let want: Vec<(u32, String)> = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i as u32 + 1,
                p["uuid"].as_str().unwrap().to_ascii_lowercase(),
            )
        })
        .collect();
    assert_eq!(uuids, want);
    assert_eq!(uuids[1].1, "11111111-2222-4333-8444-555555555502");

    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    f.set_len(128 * MIB).unwrap();
    let g = grow::grow_partition(&f, 128 * MIB, 3).unwrap().unwrap();
    assert_eq!(g.start, 100352);
    assert_eq!(g.old_sectors, 8192);
    // sgdisk: both headers and the entry arrays are consistent at the new size.
    let v = Command::new("sgdisk")
        .arg("-v")
        .arg(&img)
        .output()
        .expect("sgdisk (gdisk) must be installed");
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains("No problems found"), "{text}");
    let j = sfdisk_json(&img);
    let p3 = &j["partitiontable"]["partitions"][2];
    assert_eq!(p3["size"].as_u64().unwrap(), g.new_sectors);
    assert_eq!(p3["uuid"], "11111111-2222-4333-8444-555555555503");
    assert_eq!(
        j["partitiontable"]["lastlba"].as_u64().unwrap(),
        262144 - 34
    );
    assert!(g.new_sectors > 150_000);
    assert_eq!(grow::grow_partition(&f, 128 * MIB, 3).unwrap(), None);
}

#[test]
fn find_partuuid_reads_tables_when_uevent_lacks_it() {
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("dev");
    fs::create_dir_all(&dev).unwrap();
    let img = image(
        &dev,
        16 * MIB,
        "label: dos\nlabel-id: 0x12345678\nstart=2048, size=8192, type=c\nstart=10240, type=83\n",
    );
    fs::rename(&img, dev.join("mmcblk0")).unwrap();
    let sys = t.path().join("sys");
    for (n, text) in [
        (
            "mmcblk0",
            "MAJOR=179\nMINOR=0\nDEVNAME=mmcblk0\nDEVTYPE=disk\n",
        ),
        (
            "mmcblk0p1",
            "MAJOR=179\nMINOR=1\nDEVNAME=mmcblk0p1\nDEVTYPE=partition\nPARTN=1\n",
        ),
        (
            "mmcblk0p2",
            "MAJOR=179\nMINOR=2\nDEVNAME=mmcblk0p2\nDEVTYPE=partition\nPARTN=2\n",
        ),
    ] {
        fs::create_dir_all(sys.join(n)).unwrap();
        fs::write(sys.join(n).join("uevent"), text).unwrap();
    }
    assert_eq!(
        blockdev::find_partuuid(&sys, &dev, "12345678-02"),
        Some(dev.join("mmcblk0p2"))
    );
    assert_eq!(blockdev::find_partuuid(&sys, &dev, "12345678-03"), None);
}

/// The filesystem size a resumed growth compares with the partition comes from the ext4
/// superblock: as mke2fs wrote it, for 1 KiB and 4 KiB blocks. (The online resize itself needs
/// CAP_SYS_RESOURCE, which this sandbox lacks: tests/e2e.rs resumes a growth in QEMU.)
#[test]
fn ext4_size_is_read_from_the_superblock() {
    let dir = tempfile::tempdir().unwrap();
    for (size, bs) in [("16M", "1024"), ("48M", "4096")] {
        let img = dir.path().join(format!("fs-{bs}"));
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", bs])
            .arg(&img)
            .arg(size)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let f = fs::File::open(&img).unwrap();
        let want = size.trim_end_matches('M').parse::<u64>().unwrap() * MIB;
        assert_eq!(grow::ext4_bytes(&f).unwrap(), want, "{bs}-byte blocks");
    }
    let zeros = dir.path().join("zeros");
    fs::File::create(&zeros).unwrap().set_len(MIB).unwrap();
    assert!(grow::ext4_bytes(&fs::File::open(&zeros).unwrap()).is_err());
}
