use super::*;
use crate::fs::sparse::MemSink;
use crate::tree::{FileData, InodeKind, Meta};

fn opts(size: u64) -> Ext4Options {
    Ext4Options {
        size,
        label: "test".into(),
        uuid: [7; 16],
        hash_seed: [9; 16],
        timestamp: 1_700_000_000,
    }
}

#[test]
fn too_small_is_reported_before_writing() {
    let mut t = Tree::new(Meta::root(0o755, 0));
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    t.add_file("big", Meta::root(0o644, 0), FileData::from_bytes(big))
        .unwrap();
    let mut sink = MemSink::new(16 << 20);
    let err = write(&t, &opts(16 << 20), &mut sink, 0).unwrap_err();
    let Ext4Error::TooSmall { needed, size } = err else {
        panic!("{err}")
    };
    assert_eq!(size, 16 << 20);
    assert!(needed > 20 << 20, "{needed}");
    assert_eq!(needed, required_size(&t, &opts(0)).unwrap());
    assert!(sink.bytes.iter().all(|b| *b == 0));
    let mut sink = MemSink::new(needed);
    write(&t, &opts(needed), &mut sink, 0).unwrap();
}

#[test]
fn rejects_what_ext4_cannot_hold() {
    let write_one = |meta: Meta, kind: InodeKind| {
        let mut t = Tree::new(Meta::root(0o755, 0));
        t.insert("x", meta, kind).unwrap();
        let mut sink = MemSink::new(16 << 20);
        write(&t, &opts(16 << 20), &mut sink, 0)
    };
    let file = || InodeKind::File(FileData::from_bytes("x"));
    // More attribute bytes than the 96-byte in-inode area holds.
    let mut big = Meta::root(0o644, 0);
    big.xattrs.insert(b"user.big".to_vec(), vec![1; 100]);
    assert!(matches!(write_one(big, file()), Err(Ext4Error::Invalid(_))));
    // ACLs would need conversion to ext4's own format.
    let mut acl = Meta::root(0o644, 0);
    acl.xattrs
        .insert(b"system.posix_acl_access".to_vec(), vec![2, 0, 0, 0]);
    assert!(matches!(write_one(acl, file()), Err(Ext4Error::Invalid(_))));
    let empty_link = InodeKind::Symlink(Vec::new());
    assert!(matches!(
        write_one(Meta::root(0o777, 0), empty_link),
        Err(Ext4Error::Invalid(_))
    ));
    // A label longer than 16 bytes.
    let t = Tree::new(Meta::root(0o755, 0));
    let mut o = opts(16 << 20);
    o.label = "seventeen-bytes!!".into();
    let mut sink = MemSink::new(16 << 20);
    assert!(matches!(
        write(&t, &o, &mut sink, 0),
        Err(Ext4Error::Invalid(_))
    ));
    // The sink must hold offset + size.
    assert!(matches!(
        write(&t, &opts(16 << 20), &mut sink, 4096),
        Err(Ext4Error::Invalid(_))
    ));
}

#[test]
fn report_counts_match_the_tree() {
    let mut t = Tree::new(Meta::root(0o755, 0));
    t.add_file(
        "a/b",
        Meta::root(0o644, 0),
        FileData::from_bytes(vec![1u8; 10_000]),
    )
    .unwrap();
    let mut sink = MemSink::new(32 << 20);
    let r = write_with_report(&t, &opts(32 << 20), &mut sink, 0).unwrap();
    assert_eq!(r.fs_bytes, 32 << 20);
    assert_eq!(r.blocks, 8192);
    // Inodes 1..=11 reserved, root and lost+found among them, plus a and a/b.
    assert_eq!(r.inodes - r.free_inodes, 13);
    // root, lost+found (4 blocks), a: directory blocks; b: 3 data blocks.
    assert_eq!(r.data_bytes, (1 + 4 + 1 + 3) * 4096);
}
