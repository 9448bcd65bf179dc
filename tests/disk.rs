//! Partition tables checked with sfdisk, sgdisk and blkid; a FAT32 filesystem written into
//! partition 1 is checked through the table's offsets.

mod common;
use common::checkers::{run, sfdisk_json};

use piimg::fs::disk::{self, DiskError, Layout, PartKind, PartSpec, Table};
use piimg::fs::fat32::{self, FatOptions};
use piimg::fs::sparse::FileSink;
use piimg::tree::{FileData, Meta, Tree};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn specs() -> Vec<PartSpec> {
    vec![
        PartSpec {
            name: "boot".into(),
            kind: PartKind::BootFat,
            size: 64 * MIB,
        },
        PartSpec {
            name: "root".into(),
            kind: PartKind::Linux,
            size: 0,
        },
    ]
}

/// Writes the table and a FAT32 filesystem in partition 1.
fn write_disk(dir: &Path, layout: &Layout) -> PathBuf {
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    let mut sink = FileSink::new(f, layout.disk_size).unwrap();
    disk::write_table(layout, &mut sink).unwrap();
    let p1 = &layout.parts[0];
    let mut tree = Tree::new(Meta::root(0o755, 0));
    tree.add_file(
        "config.txt",
        Meta::root(0o644, 0),
        FileData::from_bytes("arm_64bit=1\n"),
    )
    .unwrap();
    let opts = FatOptions {
        size: p1.size,
        label: "BOOT".into(),
        volume_id: 0xdead_beef,
        timestamp: 0,
        hidden_sectors: (p1.start / 512) as u32,
    };
    fat32::write(&tree, &opts, &mut sink, p1.start).unwrap();
    path
}

#[test]
fn mbr_verifies_and_has_expected_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = disk::plan(Table::Mbr, 256 * MIB, &specs(), b"node-a").unwrap();
    assert_eq!(layout.parts[0].start, MIB);
    assert_eq!(layout.parts[1].start, 65 * MIB);
    assert_eq!(layout.parts[1].size, 256 * MIB - 65 * MIB);
    let sig = disk::mbr_signature(b"node-a");
    assert_eq!(layout.parts[0].partuuid, format!("{sig:08x}-01"));
    assert_eq!(layout.parts[1].partuuid, format!("{sig:08x}-02"));
    let img = write_disk(tmp.path(), &layout);

    let v = run(Command::new("sfdisk").arg("--verify").arg(&img));
    assert!(!v.to_lowercase().contains("warn"), "{v}");
    let j = sfdisk_json(&img);
    let pt = &j["partitiontable"];
    assert_eq!(pt["label"], "dos");
    assert_eq!(pt["id"], format!("0x{sig:08x}"));
    assert_eq!(pt["sectorsize"], 512);
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["size"], 64 * 2048);
    assert_eq!(parts[0]["type"], "c");
    assert!(parts[0].get("bootable").is_none());
    assert_eq!(parts[1]["start"], 65 * 2048);
    assert_eq!(parts[1]["size"], (256 - 65) * 2048);
    assert_eq!(parts[1]["type"], "83");

    // libblkid's idea of the PARTUUIDs (what the kernel matches in root=PARTUUID=) equals ours
    let px = run(Command::new("partx")
        .args(["-g", "-o", "NR,START,SECTORS,TYPE,UUID"])
        .arg(&img));
    let rows: Vec<Vec<&str>> = px.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{px}");
    for (p, row) in layout.parts.iter().zip(&rows) {
        let want = [
            p.number.to_string(),
            (p.start / 512).to_string(),
            (p.size / 512).to_string(),
            if p.kind == PartKind::BootFat {
                "0xc"
            } else {
                "0x83"
            }
            .to_string(),
            p.partuuid.clone(),
        ];
        assert_eq!(row, &want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }
    // blkid: the disk's PTUUID, and the FAT filesystem at partition 1's offset
    let d = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img));
    assert!(d.contains(&format!("PTUUID={sig:08x}")), "{d}");
    assert!(d.contains("PTTYPE=dos"), "{d}");
    let f = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &MIB.to_string()])
        .arg(&img));
    assert!(f.contains("TYPE=vfat") && f.contains("LABEL=BOOT"), "{f}");
    let l = run(Command::new("mdir")
        .arg("-i")
        .arg(format!("{}@@1M", img.display())));
    // an exact 8.3 name: one short entry with the lower-case flags, listed in lower case
    assert!(
        l.lines()
            .any(|x| x.split_whitespace().take(3).eq(["config", "txt", "12"])),
        "{l}"
    );
}

#[test]
fn gpt_verifies_with_derived_guids() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = disk::plan(Table::Gpt, 256 * MIB, &specs(), b"node-a").unwrap();
    // the rest-of-disk partition stops before the backup table and on a 4 KiB boundary
    let p2 = &layout.parts[1];
    assert!(p2.start + p2.size <= 256 * MIB - 33 * 512);
    assert_eq!(p2.size % 4096, 0);
    let img = write_disk(tmp.path(), &layout);

    let v = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(v.contains("No problems found"), "{v}");
    for p in &layout.parts {
        let i = run(Command::new("sgdisk")
            .arg("-i")
            .arg(p.number.to_string())
            .arg(&img));
        let guid = p.partuuid.to_uppercase();
        assert!(i.contains(&format!("Partition unique GUID: {guid}")), "{i}");
        let (ty, name) = match p.kind {
            PartKind::BootFat => ("Microsoft basic data", "boot"),
            PartKind::Linux => ("Linux filesystem", "root"),
        };
        assert!(i.contains(ty), "{i}");
        assert!(i.contains(&format!("Partition name: '{name}'")), "{i}");
        assert!(
            i.contains(&format!("First sector: {}", p.start / 512)),
            "{i}"
        );
        // RFC 4122 version 4 / variant 10xx
        let u = uuid::Uuid::parse_str(&p.partuuid).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let s = run(Command::new("sfdisk")
            .arg("--part-uuid")
            .arg(&img)
            .arg(p.number.to_string()));
        assert_eq!(s.trim().to_lowercase(), p.partuuid);
        let px = run(Command::new("partx")
            .args(["-g", "-o", "UUID", "-n"])
            .arg(p.number.to_string())
            .arg(&img));
        assert_eq!(px.trim(), p.partuuid);
    }
    let pr = run(Command::new("sgdisk").arg("-p").arg(&img));
    let disk_guid = uuid::Uuid::from_bytes(layout.disk_guid)
        .to_string()
        .to_uppercase();
    assert!(
        pr.contains(&format!("Disk identifier (GUID): {disk_guid}")),
        "{pr}"
    );
    let j = sfdisk_json(&img);
    assert_eq!(j["partitiontable"]["label"], "gpt");
    let parts = j["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts[0]["type"], "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
    assert_eq!(parts[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    let f = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &MIB.to_string()])
        .arg(&img));
    assert!(f.contains("TYPE=vfat"), "{f}");
}

#[test]
fn same_seed_same_bytes_other_seed_other_ids() {
    for table in [Table::Mbr, Table::Gpt] {
        let a = disk::plan(table, 128 * MIB, &specs(), b"seed-1").unwrap();
        let b = disk::plan(table, 128 * MIB, &specs(), b"seed-1").unwrap();
        let c = disk::plan(table, 128 * MIB, &specs(), b"seed-2").unwrap();
        assert_eq!(a, b);
        assert_ne!(a.parts[0].partuuid, c.parts[0].partuuid);
        let mut sa = piimg::fs::sparse::MemSink::new(128 * MIB);
        let mut sb = piimg::fs::sparse::MemSink::new(128 * MIB);
        disk::write_table(&a, &mut sa).unwrap();
        disk::write_table(&b, &mut sb).unwrap();
        assert!(sa.bytes == sb.bytes);
    }
}

#[test]
fn bad_sizes_and_overflow_are_errors() {
    let e = disk::plan(Table::Mbr, 128 * MIB + 100, &specs(), b"s").unwrap_err();
    assert!(matches!(e, DiskError::NotSectors { .. }), "{e}");
    let mut s = specs();
    s[0].size = 1000;
    let e = disk::plan(Table::Mbr, 128 * MIB, &s, b"s").unwrap_err();
    assert!(matches!(e, DiskError::NotSectors { .. }), "{e}");
    let mut s = specs();
    s[1].size = 200 * MIB;
    let e = disk::plan(Table::Gpt, 128 * MIB, &s, b"s").unwrap_err();
    let DiskError::DoesNotFit { needed, size } = e else {
        panic!("{e}")
    };
    assert_eq!(size, 128 * MIB);
    assert!(needed >= 265 * MIB);
    // the needed size works
    assert!(disk::plan(Table::Gpt, needed.div_ceil(512) * 512, &s, b"s").is_ok());
    // rest-of-disk only last
    let mut s = specs();
    s[0].size = 0;
    assert!(disk::plan(Table::Mbr, 128 * MIB, &s, b"s").is_err());
    // MBR holds 4 partitions
    let five: Vec<PartSpec> = (0..5)
        .map(|i| PartSpec {
            name: format!("p{i}"),
            kind: PartKind::Linux,
            size: MIB,
        })
        .collect();
    assert!(disk::plan(Table::Mbr, 128 * MIB, &five, b"s").is_err());
    assert!(disk::plan(Table::Gpt, 128 * MIB, &five, b"s").is_ok());
}
