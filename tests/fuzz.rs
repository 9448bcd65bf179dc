//! Every parser of outside data fed generated and mutated inputs (proptest, stable Rust): the
//! builder's FAT reader, partition-table reader, device-tree reader, config.txt and bmap
//! parsers and profile loader, and the agent's node.json and kernel command line parsers. An
//! input may be refused; none may panic or hang. Each target prints its count of inputs, crashes
//! (a crash fails the test) and its slowest input.
//!
//! CI runs PIIMG_FUZZ_CASES (default 300) inputs per target; set it higher for longer runs.
//! The same targets run under libFuzzer with cargo-fuzz (scripts/fuzz.sh), seeded with the base
//! inputs these tests write to PIIMG_FUZZ_SEEDS=DIR (DIR/TARGET/seed).

mod fuzz_targets;

use fuzz_targets as t;
use piimg::fs::sparse::{MemSink, Sink};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Keeps `base` as the libFuzzer seed of `target` when PIIMG_FUZZ_SEEDS names a folder.
fn seed(target: &str, base: &[u8]) {
    if let Some(dir) = std::env::var_os("PIIMG_FUZZ_SEEDS") {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("seed"), base).unwrap();
    }
}

fn cases(weight: u32) -> u32 {
    let n: u32 = std::env::var("PIIMG_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    (n / weight).max(10)
}

/// Runs `f` on `cases` inputs from `strategy`; prints the figures.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, f: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let result = runner.run(&strategy, |input| {
        let t = Instant::now();
        f(input);
        slowest.set(slowest.get().max(t.elapsed()));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "FUZZ {name}: {cases} inputs, 0 crashes, slowest input {:?}",
        slowest.get()
    );
    assert!(
        slowest.get() < Duration::from_secs(5),
        "{name}: an input took {:?}",
        slowest.get()
    );
}

/// Up to `n` (offset, byte) writes at offsets below `span`.
fn mutations(span: usize, n: usize) -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((0..span, any::<u8>()), 1..n)
}

fn mutate(base: &[u8], m: &[(usize, u8)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(at, b) in m {
        if at < v.len() {
            v[at] = b;
        }
    }
    v
}

/// A FAT32 volume holding a few files and folders, written by piimg's writer.
fn fat_image() -> &'static Vec<u8> {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        use piimg::tree::{FileData, Meta, Tree};
        let mut t = Tree::new(Meta::new(0o755, 0, 0, 0));
        t.add_file(
            "config.txt",
            Meta::new(0o644, 0, 0, 0),
            FileData::from_bytes(b"arm_64bit=1\n".to_vec()),
        )
        .unwrap();
        t.add_file(
            "overlays/a-long-file-name.dtbo",
            Meta::new(0o644, 0, 0, 0),
            FileData::from_bytes(vec![7u8; 9000]),
        )
        .unwrap();
        t.add_file(
            "kernel8.img",
            Meta::new(0o644, 0, 0, 0),
            FileData::from_bytes(vec![3u8; 70000]),
        )
        .unwrap();
        let size = 33 << 20;
        let mut sink = MemSink::new(size);
        piimg::fs::fat32::write(
            &t,
            &piimg::fs::fat32::FatOptions {
                size,
                label: "FUZZ".into(),
                volume_id: 1,
                timestamp: 0,
                hidden_sectors: 0,
            },
            &mut sink,
            0,
        )
        .unwrap();
        assert_eq!(sink.len(), size);
        sink.bytes
    })
}

#[test]
fn fat_reader() {
    let base = fat_image();
    seed("fat_reader", base);
    // Boot sector, FSInfo, both FATs and the first data clusters: where the structure lives.
    fuzz("fat32 reader", cases(2), mutations(1 << 20, 24), |m| {
        t::fat_reader(&mutate(base, &m))
    });
}

fn disk(gpt: bool) -> Vec<u8> {
    let mut d = vec![0u8; 64 * 512];
    d[510] = 0x55;
    d[511] = 0xaa;
    if gpt {
        d[446 + 4] = 0xee;
        d[446 + 12..446 + 16].copy_from_slice(&63u32.to_le_bytes());
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        d[1024] = 1;
        d[1024 + 32..1024 + 40].copy_from_slice(&34u64.to_le_bytes());
        d[1024 + 40..1024 + 48].copy_from_slice(&60u64.to_le_bytes());
        d[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
        d = t::with_gpt_checksums(&d);
    } else {
        d[446 + 4] = 0x0c;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&30u32.to_le_bytes());
    }
    d
}

#[test]
fn partition_tables() {
    for gpt in [false, true] {
        let base = disk(gpt);
        let name = if gpt { "GPT reader" } else { "MBR reader" };
        let kind = if gpt { "gpt" } else { "mbr" };
        seed(&format!("partition_table/{kind}"), &base);
        seed(&format!("agent_partition_table/{kind}"), &base);
        fuzz(name, cases(1), mutations(2048, 12), |m| {
            t::partition_table(&mutate(&base, &m))
        });
        // The agent's table code reads the same tables on the node.
        fuzz(
            &format!("agent {name}"),
            cases(2),
            mutations(2048, 12),
            |m| t::agent_partition_table(&mutate(&base, &m)),
        );
    }
}

/// A flattened device tree with a `serial` node whose compatible names the Bluetooth UART, the
/// shape the patcher edits.
fn dtb() -> Vec<u8> {
    fn be(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    let strings = b"compatible\0status\0".to_vec();
    let mut st = Vec::new();
    let node = |st: &mut Vec<u8>, name: &[u8]| {
        be(st, 1);
        st.extend_from_slice(name);
        st.push(0);
        while !st.len().is_multiple_of(4) {
            st.push(0);
        }
    };
    let prop = |st: &mut Vec<u8>, off: u32, val: &[u8]| {
        be(st, 3);
        be(st, val.len() as u32);
        be(st, off);
        st.extend_from_slice(val);
        while !st.len().is_multiple_of(4) {
            st.push(0);
        }
    };
    node(&mut st, b"");
    node(&mut st, b"serial@7e201000");
    prop(&mut st, 0, b"brcm,bcm2835-pl011\0arm,pl011\0");
    node(&mut st, b"bluetooth");
    prop(&mut st, 0, b"brcm,bcm43438-bt\0");
    prop(&mut st, 11, b"okay\0");
    be(&mut st, 2);
    be(&mut st, 2);
    be(&mut st, 2);
    be(&mut st, 9);
    let header = 40u32;
    let rsv = 16u32;
    let mut v = Vec::new();
    be(&mut v, 0xd00d_feed);
    be(
        &mut v,
        header + rsv + st.len() as u32 + strings.len() as u32,
    );
    be(&mut v, header + rsv);
    be(&mut v, header + rsv + st.len() as u32);
    be(&mut v, header);
    be(&mut v, 17);
    be(&mut v, 16);
    be(&mut v, 0);
    be(&mut v, strings.len() as u32);
    be(&mut v, st.len() as u32);
    v.extend_from_slice(&[0u8; 16]);
    v.extend_from_slice(&st);
    v.extend_from_slice(&strings);
    v
}

#[test]
fn device_tree_reader() {
    let base = dtb();
    seed("device_tree", &base);
    let n = base.len();
    fuzz("device-tree reader", cases(1), mutations(n, 8), |m| {
        t::device_tree(&mutate(&base, &m))
    });
    fuzz(
        "device-tree reader (any bytes)",
        cases(1),
        proptest::collection::vec(any::<u8>(), 0..512),
        |d| t::device_tree(&d),
    );
}

#[test]
fn text_formats() {
    fuzz(
        "config.txt",
        cases(1),
        "[\\[\\]a-z0-9_=#\\n ]{0,400}",
        |s| t::config_txt(s.as_bytes()),
    );
    seed("config_txt", b"[all]\narm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n[pi4]\ndtoverlay=disable-bt\n");
    fuzz(
        "kernel command line",
        cases(1),
        "[a-z0-9=\" ./_-]{0,300}",
        |s| t::kernel_cmdline(s.as_bytes()),
    );
    seed(
        "kernel_cmdline",
        b"console=ttyAMA0,115200 root=PARTUUID=0badc0de-02 rootwait ro piimg.debug=1\n",
    );
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 16).unwrap();
    std::os::unix::fs::FileExt::write_all_at(img.as_file(), &[1u8; 5000], 4096).unwrap();
    let bmap = piimg::bmap::Bmap::from_extents(img.as_file(), &[(4096, 9096)])
        .unwrap()
        .to_xml();
    let len = bmap.len();
    seed("bmap", bmap.as_bytes());
    fuzz("bmap", cases(1), mutations(len, 6), |m| {
        t::bmap(&mutate(bmap.as_bytes(), &m))
    });
    let node = sample_node_json();
    seed("node_json", &node);
    let len = node.len();
    fuzz("node.json", cases(1), mutations(len, 6), |m| {
        t::node_json(&mutate(&node, &m))
    });
}

/// cp1's node.json as the builder writes it (secrets of a temp cluster included).
fn sample_node_json() -> Vec<u8> {
    let repo = t::repo_profiles();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    for f in ["cluster.toml", "cp1.toml", "lb1.toml"] {
        std::fs::copy(repo.join(f), profiles.join(f)).unwrap();
    }
    let p = piimg::profile::load(&profiles, &t::load_options()).unwrap();
    let json = p.node("cp1").unwrap().config.to_json();
    assert!(json.len() > 1000);
    json
}

#[test]
fn profile_loading() {
    let base = std::fs::read(t::repo_profiles().join("cp1.toml")).unwrap();
    seed("profile", &base);
    let len = base.len();
    fuzz("profile loading", cases(4), mutations(len, 6), |m| {
        t::profile(&mutate(&base, &m))
    });
}

/// A small .deb as Debian's tools write one, its members uncompressed so that mutations land in
/// ar and tar headers rather than in a compressed stream.
fn small_deb() -> Vec<u8> {
    fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
            }
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }
    let control = tar_of(&[(
        "./control",
        b"Package: fuzz\nVersion: 1.0\nArchitecture: arm64\n",
        0o644,
    )]);
    let data = tar_of(&[
        ("./", b"", 0o755),
        ("./usr/", b"", 0o755),
        ("./usr/bin/", b"", 0o755),
        ("./usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        ("./etc/", b"", 0o755),
        ("./etc/tool.conf", b"x=1\n", 0o644),
    ]);
    let mut ar = ar::Builder::new(Vec::new());
    for (name, body) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar", &control[..]),
        ("data.tar", &data[..]),
    ] {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
        h.set_mode(0o644);
        ar.append(&h, body).unwrap();
    }
    ar.into_inner().unwrap()
}

#[test]
fn deb_reader() {
    let base = small_deb();
    // The seed itself is a package the reader takes.
    {
        use piimg::components::{cache::Cache, deb};
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("s.deb"), &base).unwrap();
        let cache = Cache::open(d.path().join("cache")).unwrap();
        let mut tree = piimg::tree::Tree::new(piimg::tree::Meta::root(0o755, 0));
        deb::read_deb(
            &mut tree,
            &cache,
            &d.path().join("s.deb"),
            "s",
            &Default::default(),
        )
        .unwrap();
        assert!(tree.lookup("usr/bin/tool").is_some());
    }
    seed("deb", &base);
    let len = base.len();
    fuzz(".deb reader (ar, tar)", cases(4), mutations(len, 8), |m| {
        t::deb(&mutate(&base, &m))
    });
}

/// PIIMG_FUZZ_INPUT=TARGET:FILE runs one input (a libFuzzer artifact, say) through a target's
/// body on stable and prints how long it took.
#[test]
fn replay_one_input() {
    let Ok(spec) = std::env::var("PIIMG_FUZZ_INPUT") else {
        return;
    };
    let (target, file) = spec.split_once(':').expect("TARGET:FILE");
    let data = std::fs::read(file).unwrap();
    let body: fn(&[u8]) = match target {
        "fat_reader" => t::fat_reader,
        "partition_table" => t::partition_table,
        "agent_partition_table" => t::agent_partition_table,
        "device_tree" => t::device_tree,
        "config_txt" => t::config_txt,
        "kernel_cmdline" => t::kernel_cmdline,
        "bmap" => t::bmap,
        "node_json" => t::node_json,
        "deb" => t::deb,
        "profile" => t::profile,
        other => panic!("no fuzz target {other}"),
    };
    let t0 = Instant::now();
    body(&data);
    eprintln!("REPLAY {target} {file}: {:?}", t0.elapsed());
}
