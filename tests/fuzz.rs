//! Every parser of outside data fed generated and mutated inputs (proptest, stable Rust): the
//! builder's FAT reader, partition-table reader, device-tree patcher, config.txt and bmap
//! parsers and profile loader, and the agent's node.json and kernel command line parsers. An
//! input may be refused; none may panic or hang. Each target prints its count of inputs, crashes
//! (a crash fails the test) and its slowest input.
//!
//! CI runs PIIMG_FUZZ_CASES (default 300) inputs per target; set it higher for longer runs.

use piimg::fs::sparse::{MemSink, Sink};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::Cursor;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// Reads everything a volume claims to hold (bounded), as `piimg qemu` would.
fn walk_fat(img: Vec<u8>) {
    let Ok(mut v) = piimg::fs::fat32::read::FatVolume::open(Cursor::new(img), 0) else {
        return;
    };
    let mut dirs = vec![String::new()];
    let mut seen = 0;
    while let Some(d) = dirs.pop() {
        let Ok(entries) = v.read_dir(&d) else {
            continue;
        };
        for e in entries {
            seen += 1;
            if seen > 200 {
                return;
            }
            let path = if d.is_empty() {
                e.name.clone()
            } else {
                format!("{d}/{}", e.name)
            };
            if e.is_dir() {
                if dirs.len() < 20 && e.name != "." && e.name != ".." {
                    dirs.push(path);
                }
            } else {
                let _ = v.copy_file(&path, &mut std::io::sink());
            }
        }
    }
}

#[test]
fn fat_reader() {
    let base = fat_image();
    // Boot sector, FSInfo, both FATs and the first data clusters: where the structure lives.
    fuzz("fat32 reader", cases(2), mutations(1 << 20, 24), |m| {
        walk_fat(mutate(base, &m))
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
        fuzz(name, cases(1), mutations(2048, 12), |m| {
            let _ = piimg::qemu::read_partitions(&mut Cursor::new(mutate(&base, &m)), "fuzz.img");
        });
        // The agent's table code reads the same tables on the node.
        fuzz(
            &format!("agent {name}"),
            cases(2),
            mutations(2048, 12),
            |m| {
                let f = tempfile::tempfile().unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, &mutate(&base, &m), 0).unwrap();
                let _ = piimg_agent::grow::grow_partition(&f, 128 * 512, 1);
            },
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
        while st.len() % 4 != 0 {
            st.push(0);
        }
    };
    let prop = |st: &mut Vec<u8>, off: u32, val: &[u8]| {
        be(st, 3);
        be(st, val.len() as u32);
        be(st, off);
        st.extend_from_slice(val);
        while st.len() % 4 != 0 {
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
fn device_tree_patcher() {
    let base = dtb();
    let n = base.len();
    fuzz("device-tree patcher", cases(1), mutations(n, 8), |m| {
        let mut d = mutate(&base, &m);
        let _ = piimg::qemu::apply_disable_bt(&mut d);
    });
    fuzz(
        "device-tree patcher (any bytes)",
        cases(1),
        proptest::collection::vec(any::<u8>(), 0..512),
        |mut d| {
            let _ = piimg::qemu::apply_disable_bt(&mut d);
        },
    );
}

#[test]
fn text_formats() {
    fuzz(
        "config.txt",
        cases(1),
        "[\\[\\]a-z0-9_=#\\n ]{0,400}",
        |t| {
            let _ = piimg::qemu::parse_config_txt(&t);
        },
    );
    fuzz(
        "kernel command line",
        cases(1),
        "[a-z0-9=\" ./_-]{0,300}",
        |t| {
            let _ = piimg_agent::cmdline::parse(&t);
        },
    );
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 16).unwrap();
    std::os::unix::fs::FileExt::write_all_at(img.as_file(), &[1u8; 5000], 4096).unwrap();
    let bmap = piimg::bmap::Bmap::from_extents(img.as_file(), &[(4096, 9096)])
        .unwrap()
        .to_xml();
    let len = bmap.len();
    fuzz("bmap", cases(1), mutations(len, 6), |m| {
        let t = String::from_utf8_lossy(&mutate(bmap.as_bytes(), &m)).into_owned();
        let _ = piimg::bmap::Bmap::parse(&t);
    });
    let node = sample_node_json();
    let len = node.len();
    fuzz("node.json", cases(1), mutations(len, 6), |m| {
        let _ = piimg_agent::node::NodeConfig::from_json(&mutate(&node, &m));
    });
}

fn load_opts() -> piimg::profile::LoadOptions {
    piimg::profile::LoadOptions {
        generate_secrets: true,
        build_epoch: 1_767_225_600,
        now: 1_767_225_600,
    }
}

/// cp1's node.json as the builder writes it (secrets of a temp cluster included).
fn sample_node_json() -> Vec<u8> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    for f in ["cluster.toml", "cp1.toml", "lb1.toml"] {
        std::fs::copy(repo.join(f), profiles.join(f)).unwrap();
    }
    let p = piimg::profile::load(&profiles, &load_opts()).unwrap();
    let json = p.node("cp1").unwrap().config.to_json();
    assert!(json.len() > 1000);
    json
}

#[test]
fn profile_loading() {
    let base =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/cp1.toml"))
            .unwrap();
    let cluster = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/cluster.toml"),
    )
    .unwrap();
    let len = base.len();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(profiles.join("cluster.toml"), &cluster).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/lb1.toml"),
        profiles.join("lb1.toml"),
    )
    .unwrap();
    fuzz("profile loading", cases(4), mutations(len, 6), |m| {
        std::fs::write(profiles.join("cp1.toml"), mutate(&base, &m)).unwrap();
        let _ = piimg::profile::load(&profiles, &load_opts());
    });
}
