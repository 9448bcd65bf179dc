//! What each fuzz target does with one input: the bodies shared by tests/fuzz.rs (proptest, on
//! stable, in CI) and fuzz/ (cargo-fuzz with libFuzzer, on nightly, scripts/fuzz.sh). An input
//! may be refused; none may panic, hang or exhaust memory.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Reads everything a FAT volume claims to hold (bounded), as `piimg qemu` would.
pub fn fat_reader(img: &[u8]) {
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

/// The disk with its primary GPT's checksums made right, so that a mutation reaches the checks
/// behind them (a random change almost never keeps a CRC-32 valid).
pub fn with_gpt_checksums(disk: &[u8]) -> Vec<u8> {
    use piimg_agent::contract::{crc32, table::le32, table::le64};
    let mut d = disk.to_vec();
    if d.len() < 1024 {
        return d;
    }
    let (count, size) = (le32(&d, 512 + 80) as usize, le32(&d, 512 + 84) as usize);
    let at = usize::try_from(le64(&d, 512 + 72))
        .ok()
        .and_then(|l| l.checked_mul(512));
    if let Some(array) = at
        .zip(count.checked_mul(size))
        .and_then(|(at, n)| d.get(at..at.checked_add(n)?))
    {
        let c = crc32(array);
        d[512 + 88..512 + 92].copy_from_slice(&c.to_le_bytes());
    }
    let hsize = (le32(&d, 512 + 12) as usize).clamp(92, 512);
    d[512 + 16..512 + 20].fill(0);
    let c = crc32(&d[512..512 + hsize]);
    d[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
    d
}

/// The builder's MBR/GPT reader (`piimg qemu`, `verify`, `flash`), on the disk as given and
/// with its checksums made right.
pub fn partition_table(disk: &[u8]) {
    for d in [disk.to_vec(), with_gpt_checksums(disk)] {
        let _ = piimg::qemu::read_partitions(&mut Cursor::new(d), "fuzz.img");
    }
}

/// The agent's table code, as it finds the root by PARTUUID and grows the data partition on a
/// node's first boot.
pub fn agent_partition_table(disk: &[u8]) {
    for d in [disk.to_vec(), with_gpt_checksums(disk)] {
        let _ = piimg_agent::blockdev::table_partuuids(&d, 512);
        let Ok(f) = tempfile::tempfile() else { return };
        if std::os::unix::fs::FileExt::write_all_at(&f, &d, 0).is_err() {
            return;
        }
        let _ = piimg_agent::grow::grow_partition(&f, 128 * 512, 1);
    }
}

/// The device tree reader, and writing back what it read: the same tree again.
pub fn device_tree(dtb: &[u8]) {
    if let Ok(t) = piimg::dtb::Fdt::parse(dtb) {
        let again = piimg::dtb::Fdt::parse(&t.to_bytes()).expect("piimg's own blob");
        assert_eq!(again, t);
    }
    let _ = piimg::qemu::raspi3b_dtb(dtb);
}

pub fn config_txt(text: &[u8]) {
    let _ = piimg::qemu::parse_config_txt(&String::from_utf8_lossy(text));
}

pub fn kernel_cmdline(text: &[u8]) {
    let _ = piimg_agent::cmdline::parse(&String::from_utf8_lossy(text));
}

pub fn bmap(text: &[u8]) {
    let _ = piimg::bmap::Bmap::parse(&String::from_utf8_lossy(text));
}

pub fn node_json(json: &[u8]) {
    let _ = piimg_agent::node::NodeConfig::from_json(json);
}

/// A .deb read into a tree, through a cache of its own (the reader keeps data tars there).
pub fn deb(bytes: &[u8]) {
    use piimg::components::cache::Cache;
    use piimg::components::deb::{self, DebOptions};
    use piimg::tree::{Meta, Tree};
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("fuzz.deb");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let Ok(cache) = Cache::open(dir.path().join("cache")) else {
        return;
    };
    let mut tree = Tree::new(Meta::root(0o755, 0));
    let _ = deb::read_deb(&mut tree, &cache, &path, "fuzz.deb", &DebOptions::default());
}

pub fn load_options() -> piimg::profile::LoadOptions {
    piimg::profile::LoadOptions {
        generate_secrets: true,
        build_epoch: 1_767_225_600,
        now: 1_767_225_600,
    }
}

/// The repository's example profiles (this file is also built from the fuzz/ crate).
pub fn repo_profiles() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = here.join("profiles");
    if p.is_dir() {
        p
    } else {
        here.join("../profiles")
    }
}

/// A profiles folder with the example cluster.toml and lb1.toml, for cp1.toml to join.
fn profiles_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = tempfile::tempdir().expect("a temporary folder");
        for f in ["cluster.toml", "lb1.toml"] {
            std::fs::copy(repo_profiles().join(f), t.path().join(f)).expect("example profiles");
        }
        t
    })
    .path()
}

/// `text` as cp1.toml beside the example cluster.
pub fn profile(text: &[u8]) {
    let dir = profiles_dir();
    if std::fs::write(dir.join("cp1.toml"), text).is_ok() {
        let _ = piimg::profile::load(dir, &load_options());
    }
}
