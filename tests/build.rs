//! `piimg fetch` + `piimg build` end to end: the real binary on a temp copy of the
//! example profiles, resolved from scratch (no piimg.lock copied), and the images it writes
//! inspected with tools piimg did not write: sfdisk, sgdisk, dd, fsck.vfat, e2fsck, debugfs,
//! mtools, readelf, file, modinfo, zstd, cpio, dpkg-deb, tar, sha256sum.
//!
//! lb1, w1 and cp1 are built once per run of this test binary (see [`shared`]); each test inspects
//! them. Kubernetes release binaries cannot be downloaded here: w1/cp1 get the shell stand-ins in
//! tests/standins through `--component`, the override a user would use. Debian packages go to a
//! shared cache under the target dir, so they download once per machine.
//!
//! Every tool is required: a missing one fails the test (CI installs e2fsprogs, dosfstools,
//! mtools, fdisk, gdisk, cpio, zstd, binutils, file, kmod).

mod common;
use common::checkers::{
    deb_unpack, debugfs, e2fsck, extract, fsck_vfat, pipe, sfdisk_json, sha256sum, spans,
    stdout_of, text_of,
};
use common::piimg::{Piimg, Run};
use common::project::{project, Project};
use common::{
    cache_home, process_dir, read_json, read_toml, repo, sha256_hex, standin, KUBE_STANDINS,
};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const EPOCH: &str = "1767225600";
const IMAGES: [&str; 3] = ["lb1", "w1", "cp1"];

// ---------------------------------------------------------------- running things

/// piimg in project `p` as every run here: the shared cache (packages download once), a fixed
/// SOURCE_DATE_EPOCH, the given time zone and umask.
fn piimg_in(p: &Project, tz: &str, umask: &str) -> Piimg {
    p.piimg()
        .profiles(&p.profiles())
        .shared_cache()
        .epoch(EPOCH)
        .tz(tz)
        .umask(umask)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|&b| b == first) {
        let s = i + p;
        if hay[s..].starts_with(needle) {
            return true;
        }
        i = s + 1;
    }
    false
}

// ---------------------------------------------------------------- the shared builds

/// The cluster secrets the temp project's `fetch` generated.
struct Secrets {
    token: String,
    certificate_key: String,
    ca_cert: String,
    ca_key: String,
    /// The other private keys of the shared control-plane PKI, by field name.
    other_keys: Vec<(String, String)>,
}

struct Built {
    /// The temp project (profiles/, secrets/, piimg.lock).
    project: Project,
    out: PathBuf,
    work: PathBuf,
    fetch: Run,
    builds: BTreeMap<&'static str, Run>,
    secrets: Secrets,
}

/// From a clean project: `fetch --all`, then lb1 (Debian packages only), w1 and cp1 (stand-ins).
fn shared() -> &'static Built {
    static S: OnceLock<Built> = OnceLock::new();
    S.get_or_init(|| {
        // Images are written where a test binary cannot clean up after itself.
        let work = process_dir("build-test");
        let project = project().create_in(&work.join("project"));
        let out = work.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let fetch = piimg_in(&project, "UTC", "022")
            .args(["fetch", "--all"])
            .run();
        let mut builds = BTreeMap::new();
        for name in IMAGES {
            let mut build = piimg_in(&project, "UTC", "022")
                .args(["build", "--offline", "--profile", name, "--out"])
                .arg(&out);
            // kubectl is needed by the init node (cp1) only; the worker leaves it out.
            if name != "lb1" {
                build = build.standins(&KUBE_STANDINS);
            }
            builds.insert(name, build.run());
        }
        let secrets = std::fs::read_to_string(project.secrets("home"))
            .map(|t| {
                let v: toml::Value = toml::from_str(&t).unwrap();
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                Secrets {
                    token: s("token"),
                    certificate_key: s("certificate_key"),
                    ca_cert: s("ca_cert"),
                    ca_key: s("ca_key"),
                    other_keys: ["front_proxy_ca_key", "etcd_ca_key", "sa_key"]
                        .iter()
                        .map(|k| (k.to_string(), s(k)))
                        .collect(),
                }
            })
            .unwrap_or_else(|e| {
                panic!(
                    "fetch did not generate secrets/home.toml ({e}):\n{}",
                    fetch.text()
                )
            });
        Built {
            project,
            out,
            work,
            fetch,
            builds,
            secrets,
        }
    })
}

/// The built image `name`: asserts its build succeeded.
fn built(name: &str) -> (&'static Built, PathBuf) {
    let b = shared();
    b.builds[name].assert_ok();
    (b, b.out.join(format!("{name}.img")))
}

fn manifest(name: &str) -> serde_json::Value {
    let (b, _) = built(name);
    read_json(&b.out.join(format!("{name}.manifest.json")))
}

/// sha256 of a locked component, from the temp project's lock.
fn locked_sha(name: &str) -> String {
    let v = read_toml(&shared().project.root().join("piimg.lock"));
    v["component"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .and_then(|c| c.get("sha256"))
        .and_then(|s| s.as_str())
        .unwrap_or_else(|| panic!("{name} has no sha256 in the lock:\n{v}"))
        .to_string()
}

fn cached_deb(name: &str) -> PathBuf {
    let p = cache_home().join("piimg/sha256").join(locked_sha(name));
    assert!(p.is_file(), "{name}: {} not in the cache", p.display());
    p
}

// ---------------------------------------------------------------- partitions, extracted

#[derive(Debug, Clone)]
struct Entry {
    /// `st_mode` as debugfs prints it (type and permission bits).
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self.mode >> 12 {
            0o04 => "dir",
            0o10 => "file",
            0o12 => "symlink",
            0o02 => "char",
            0o06 => "block",
            0o01 => "fifo",
            0o14 => "socket",
            _ => "unknown",
        }
    }

    fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// One image taken apart with dd, debugfs and mtools.
struct Parts {
    /// sfdisk --json of the image.
    table: serde_json::Value,
    boot: PathBuf,
    root: PathBuf,
    data: PathBuf,
    /// Every path of the root / data filesystems (`/etc/hostname`), from debugfs `ls -p`.
    root_list: BTreeMap<String, Entry>,
    data_list: BTreeMap<String, Entry>,
    /// The root filesystem copied out with debugfs rdump.
    dump: PathBuf,
    /// initramfs8 (compressed, as on the FAT) and its `cpio -t` listing.
    initrd: Vec<u8>,
    initrd_list: Vec<String>,
}

/// Walks a filesystem with `debugfs ls -p` (one call per directory).
fn ext4_list(part: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![String::from("/")];
    while let Some(dir) = dirs.pop() {
        for line in debugfs(part, &format!("ls -p \"{dir}\"")).lines() {
            // /ino/mode/uid/gid/name/size/
            let f: Vec<&str> = line.split('/').collect();
            // Empty slots (inode 0) show up in lost+found's preallocated blocks.
            if f.len() < 8 || f[1] == "0" || f[5].is_empty() || f[5] == "." || f[5] == ".." {
                continue;
            }
            let e = Entry {
                mode: u32::from_str_radix(f[2], 8).unwrap(),
                uid: f[3].parse().unwrap(),
                gid: f[4].parse().unwrap(),
                size: f[6].parse().ok(),
            };
            let path = if dir == "/" {
                format!("/{}", f[5])
            } else {
                format!("{dir}/{}", f[5])
            };
            if e.kind() == "dir" {
                dirs.push(path.clone());
            }
            out.insert(path, e);
        }
    }
    out
}

fn take_apart(name: &str) -> Parts {
    let (b, img) = built(name);
    let dir = b.work.join(format!("parts-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let table = sfdisk_json(&img);
    let parts = spans(&table);
    assert_eq!(parts.len(), 3, "{table}");
    let mut files = Vec::new();
    for (i, (start, size)) in parts.into_iter().enumerate() {
        let f = dir.join(format!("p{}", i + 1));
        extract(&img, start, size, &f);
        files.push(f);
    }
    let [boot, root, data] = <[PathBuf; 3]>::try_from(files).unwrap();
    let root_list = ext4_list(&root);
    let data_list = ext4_list(&data);
    let dump = dir.join("rootfs");
    std::fs::create_dir_all(&dump).unwrap();
    let top: Vec<String> = root_list
        .keys()
        .filter(|p| p.matches('/').count() == 1 && *p != "/lost+found")
        .cloned()
        .collect();
    debugfs(
        &root,
        &format!("rdump {} \"{}\"", top.join(" "), dump.display()),
    );
    let initrd = fat_file_of(&boot, "initramfs8");
    let listing = pipe(Command::new("cpio").arg("-t"), &zstd_d(&initrd));
    let initrd_list = String::from_utf8_lossy(&listing)
        .lines()
        .map(str::to_string)
        .collect();
    Parts {
        table,
        boot,
        root,
        data,
        root_list,
        data_list,
        dump,
        initrd,
        initrd_list,
    }
}

fn zstd_d(data: &[u8]) -> Vec<u8> {
    pipe(Command::new("zstd").arg("-dc"), data)
}

/// One member of the initramfs, read with `cpio -i --to-stdout`.
fn initrd_member(p: &Parts, path: &str) -> Vec<u8> {
    pipe(
        Command::new("cpio").args(["-i", "--quiet", "--to-stdout", path]),
        &zstd_d(&p.initrd),
    )
}

fn parts(name: &str) -> &'static Parts {
    static LB1: OnceLock<Parts> = OnceLock::new();
    static W1: OnceLock<Parts> = OnceLock::new();
    static CP1: OnceLock<Parts> = OnceLock::new();
    let cell = match name {
        "lb1" => &LB1,
        "w1" => &W1,
        "cp1" => &CP1,
        _ => panic!("no shared image {name}"),
    };
    cell.get_or_init(|| take_apart(name))
}

/// A file of a FAT partition, read with mcopy.
fn fat_file_of(fat: &Path, name: &str) -> Vec<u8> {
    stdout_of(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(fat)
            .arg(format!("::/{name}"))
            .arg("-"),
    )
}

/// A file of the boot partition.
fn fat_file(p: &Parts, name: &str) -> Vec<u8> {
    fat_file_of(&p.boot, name)
}

/// Resolves `path` inside the dumped rootfs, following symlinks (absolute ones from the dump's
/// root, as the node would). `None` when a component does not exist.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: VecDeque<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => cur.push(c),
        }
        let host = root.join(cur.join("/"));
        let md = std::fs::symlink_metadata(&host).ok()?;
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let t = std::fs::read_link(&host).ok()?;
            let t = t.to_string_lossy().into_owned();
            cur.pop();
            if t.starts_with('/') {
                cur.clear();
            }
            for c in t.split('/').filter(|c| !c.is_empty()).rev() {
                todo.push_front(c.to_string());
            }
        }
    }
    Some(root.join(cur.join("/")))
}

// ---------------------------------------------------------------- 1. fetch and lb1

#[test]
fn fetch_from_scratch_warns_about_kubernetes_binaries_and_exits_0() {
    let b = shared();
    let f = &b.fetch;
    f.assert_ok();
    assert!(
        f.stderr.contains("warning: kubelet could not be fetched"),
        "{}",
        f.text()
    );
    assert!(f.stdout.contains("trixie: "), "{}", f.text());
    let lock = read_toml(&b.project.root().join("piimg.lock"));
    let comps = lock["component"].as_array().unwrap();
    for pkg in [
        "linux-image-arm64",
        "raspi-firmware",
        "haproxy",
        "containerd",
        "runc",
    ] {
        let c = comps
            .iter()
            .find(|c| c["name"].as_str() == Some(pkg))
            .unwrap_or_else(|| panic!("{pkg} not in the lock: {lock}"));
        assert!(
            c["source"].as_str().unwrap().starts_with("debian:trixie/"),
            "{c}"
        );
        let sha = c["sha256"].as_str().unwrap();
        // The cached file is what the lock says it is.
        let cached = std::fs::read(cache_home().join("piimg/sha256").join(sha)).unwrap();
        assert_eq!(sha256_hex(&cached), sha, "{pkg}");
    }
    // kubelet could not be pinned: no sha256 in the lock.
    let kubelet = comps
        .iter()
        .find(|c| c["name"].as_str() == Some("kubelet"))
        .unwrap();
    assert!(kubelet.get("sha256").is_none(), "{kubelet}");
}

#[test]
fn lb1_builds_offline_from_debian_packages_only() {
    let (b, img) = built("lb1");
    let run = &b.builds["lb1"];
    let m = manifest("lb1");
    let comps = m["components"].as_array().unwrap();
    assert!(!comps.is_empty());
    for c in comps {
        assert!(
            c["source"].as_str().unwrap().starts_with("debian:trixie/"),
            "lb1 uses a non-Debian component: {c}"
        );
    }
    // The .sha256 sidecar, the manifest and the printed hash agree with sha256sum's.
    let sum = sha256sum(&img);
    let sidecar = std::fs::read_to_string(b.out.join("lb1.img.sha256")).unwrap();
    assert!(sidecar.starts_with(&sum), "{sidecar} vs {sum}");
    assert_eq!(m["sha256"].as_str(), Some(sum.as_str()));
    assert!(run.stdout.contains(&sum), "{}", run.text());
    assert_eq!(
        m["size"].as_u64(),
        Some(std::fs::metadata(&img).unwrap().len())
    );
}

#[test]
fn offline_build_of_an_unlocked_suite_fails_naming_it_and_writes_nothing() {
    let b = shared();
    let root = b.work.join("bookworm-project");
    let _ = std::fs::remove_dir_all(&root);
    let p = project()
        .lock_from(&b.project.root().join("piimg.lock"))
        .create_in(&root);
    p.replace("lb1", "[image]\n", "[image]\nsuite = \"bookworm\"\n");
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let r = piimg_in(&p, "UTC", "022")
        .args(["build", "--offline", "--profile", "lb1", "--out"])
        .arg(&out)
        .run();
    r.assert_code(1);
    assert!(
        r.stderr.contains("bookworm") && r.stderr.contains("piimg fetch"),
        "{}",
        r.text()
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in out/: {left:?}");
}

// ---------------------------------------------------------------- 2. Kubernetes nodes

#[test]
fn kubernetes_nodes_build_with_the_standins() {
    for name in ["w1", "cp1"] {
        let (b, _) = built(name);
        let run = &b.builds[name];
        let p = parts(name);
        for bin in ["kubelet", "kubeadm"] {
            let path = format!("/usr/bin/{bin}");
            let e = p
                .root_list
                .get(&path)
                .unwrap_or_else(|| panic!("{name}: no {path}"));
            assert_eq!((e.kind(), e.perm()), ("file", 0o755), "{name}: {path}");
            assert_eq!(
                std::fs::read(p.dump.join(&path[1..])).unwrap(),
                std::fs::read(standin(bin)).unwrap(),
                "{name}: {path} is not the supplied file"
            );
        }
        let m = manifest(name);
        let kubelet = m["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "kubelet")
            .unwrap()
            .clone();
        assert_eq!(kubelet["source"], "local:kubelet", "{kubelet}");
        assert_eq!(
            kubelet["sha256"].as_str().unwrap(),
            sha256_hex(&std::fs::read(standin("kubelet")).unwrap())
        );
        if name == "w1" {
            assert!(
                !run.stderr.contains("kubectl"),
                "w1 is no control-plane node:\n{}",
                run.text()
            );
        }
    }
}

#[test]
fn the_init_node_carries_kubectl_and_the_worker_does_not() {
    // cp1 initialises the cluster: its keeper runs kubectl (agent/src/keeper.rs).
    let p = parts("cp1");
    assert!(p.root_list.contains_key("/usr/bin/kubectl"));
    assert!(manifest("cp1")["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "kubectl"));
    assert!(!parts("w1").root_list.contains_key("/usr/bin/kubectl"));
    // Without kubectl the init node does not build, and says why; nothing is written.
    let b = shared();
    let out = b.work.join("no-kubectl");
    let run = piimg_in(&b.project, "UTC", "022")
        .args(["build", "--offline", "--profile", "cp1", "--out"])
        .arg(&out)
        .standins(&["kubelet", "kubeadm"])
        .run();
    run.assert_code(1);
    assert!(run.stderr.contains("kubectl"), "{}", run.text());
    assert!(!out.join("cp1.img").exists());
}

// ---------------------------------------------------------------- 3. the images, by tools

#[test]
fn partition_tables_match_the_manifest_and_verify_clean() {
    for name in IMAGES {
        let (_, img) = built(name);
        let p = parts(name);
        let m = manifest(name);
        let t = &p.table["partitiontable"];
        let sector = t["sectorsize"].as_u64().unwrap();
        let mparts = m["partitions"].as_array().unwrap();
        let sparts = t["partitions"].as_array().unwrap();
        assert_eq!(mparts.len(), sparts.len(), "{name}");
        let gpt = t["label"] == "gpt";
        assert_eq!(gpt, name != "lb1", "{name}: rpi3b is MBR, rpi4b GPT: {t}");
        let want_types: [&str; 3] = if gpt {
            [
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            ]
        } else {
            ["c", "83", "83"]
        };
        for (i, (mp, sp)) in mparts.iter().zip(sparts).enumerate() {
            assert_eq!(mp["number"].as_u64(), Some(i as u64 + 1));
            assert_eq!(
                sp["start"].as_u64().unwrap() * sector,
                mp["start"].as_u64().unwrap(),
                "{name} partition {}",
                i + 1
            );
            assert_eq!(
                sp["size"].as_u64().unwrap() * sector,
                mp["size"].as_u64().unwrap(),
                "{name} partition {}",
                i + 1
            );
            assert!(
                sp["type"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case(want_types[i]),
                "{name}: {sp}"
            );
            let partuuid = if gpt {
                sp["uuid"].as_str().unwrap().to_string()
            } else {
                format!(
                    "{}-{:02}",
                    t["id"].as_str().unwrap().trim_start_matches("0x"),
                    i + 1
                )
            };
            assert!(
                partuuid.eq_ignore_ascii_case(mp["partuuid"].as_str().unwrap()),
                "{name}: {partuuid} vs {mp}"
            );
        }
        // Partitions inside the disk, in order, not overlapping.
        let mut end = 0;
        for mp in mparts {
            let s = mp["start"].as_u64().unwrap();
            assert!(s >= end && s % (1 << 20) == 0, "{name}: {mp}");
            end = s + mp["size"].as_u64().unwrap();
        }
        assert!(end <= m["size"].as_u64().unwrap());
        if gpt {
            let o = text_of(Command::new("sgdisk").arg("-v").arg(&img));
            assert!(o.contains("No problems found"), "{name}: sgdisk -v:\n{o}");
        } else {
            let o = text_of(Command::new("sfdisk").arg("--verify").arg(&img));
            assert!(
                o.contains("No errors detected"),
                "{name}: sfdisk --verify:\n{o}"
            );
        }
    }
}

#[test]
fn every_filesystem_checks_clean() {
    for name in IMAGES {
        let p = parts(name);
        fsck_vfat(&p.boot);
        for part in [&p.root, &p.data] {
            e2fsck(part);
        }
    }
}

/// config.txt `key=value` settings, and the `initramfs NAME followkernel` line.
fn config_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let l = l.trim();
        if key == "initramfs" {
            l.strip_prefix("initramfs ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        } else {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim().to_string())
        }
    })
}

#[test]
fn boot_partition_holds_what_the_firmware_loads() {
    for name in IMAGES {
        let (_, img) = built(name);
        let p = parts(name);
        let listing = text_of(
            Command::new("mdir")
                .arg("-b")
                .arg("-i")
                .arg(&p.boot)
                .arg("::/"),
        );
        let files: BTreeSet<String> = listing
            .lines()
            .filter_map(|l| l.trim().strip_prefix("::/"))
            .map(str::to_string)
            .collect();
        let config = String::from_utf8(fat_file(p, "config.txt")).unwrap();
        for key in ["kernel", "initramfs", "device_tree"] {
            let v = config_value(&config, key)
                .unwrap_or_else(|| panic!("{name}: no {key} in config.txt:\n{config}"));
            assert!(
                files.contains(&v),
                "{name}: {key}={v} not on the FAT: {files:?}"
            );
        }
        assert_eq!(config_value(&config, "arm_64bit").as_deref(), Some("1"));
        // What those names hold, by file(1).
        for (key, want) in [
            ("kernel", "Linux kernel ARM64 boot executable Image"),
            ("device_tree", "Device Tree Blob"),
        ] {
            let f = config_value(&config, key).unwrap();
            let tmp = shared().work.join(format!("{name}-{f}"));
            std::fs::write(&tmp, fat_file(p, &f)).unwrap();
            let what = text_of(Command::new("file").arg("-b").arg(&tmp));
            assert!(what.contains(want), "{name}: {key}={f} is {what}");
            std::fs::remove_file(&tmp).unwrap();
        }
        let cmdline = String::from_utf8(fat_file(p, "cmdline.txt")).unwrap();
        assert_eq!(cmdline.lines().count(), 1, "{name}: {cmdline:?}");
        let root = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("root=PARTUUID="))
            .unwrap_or_else(|| panic!("{name}: no root=PARTUUID= in {cmdline}"));
        let t = &p.table["partitiontable"];
        let want = if t["label"] == "gpt" {
            text_of(Command::new("sfdisk").arg("--part-uuid").arg(&img).arg("2"))
                .trim()
                .to_string()
        } else {
            format!("{}-02", t["id"].as_str().unwrap().trim_start_matches("0x"))
        };
        assert!(
            root.eq_ignore_ascii_case(&want),
            "{name}: cmdline root=PARTUUID={root}, partition 2 is {want}"
        );
        // The board's firmware, byte for byte what the raspi-firmware package ships.
        let fw: &[&str] = if name == "lb1" {
            &["bootcode.bin", "start.elf", "fixup.dat"]
        } else {
            &["start4.elf", "fixup4.dat"]
        };
        let debdir = firmware_dir();
        for f in fw {
            assert!(files.contains(*f), "{name}: no {f} on the FAT: {files:?}");
            assert_eq!(
                sha256_hex(&fat_file(p, f)),
                sha256_hex(&std::fs::read(debdir.join("usr/lib/raspi-firmware").join(f)).unwrap()),
                "{name}: {f} differs from the raspi-firmware package's"
            );
        }
        // Every file of the boot partition is in the manifest with its hash, and nothing else.
        let m = manifest(name);
        let listed: BTreeMap<String, String> = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["partition"] == "boot" && f["type"] == "file")
            .map(|f| {
                (
                    f["path"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches('/')
                        .to_string(),
                    f["sha256"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            listed.keys().cloned().collect::<BTreeSet<_>>(),
            files,
            "{name}: manifest vs mdir"
        );
        for (f, sha) in &listed {
            assert_eq!(&sha256_hex(&fat_file(p, f)), sha, "{name}: {f}");
        }
    }
}

/// raspi-firmware's files, unpacked with dpkg-deb and tar from the cached .deb the lock names.
fn firmware_dir() -> PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let dir = shared().work.join("raspi-firmware");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        deb_unpack(&cached_deb("raspi-firmware"), &dir);
        dir
    })
    .clone()
}

/// `dpkg-deb -c` of a cached package: (path in the merged-/usr image, mode, size, link target)
/// of its programs (under bin/ and sbin/).
fn deb_programs(pkg: &str) -> Vec<(String, u32, u64, Option<String>)> {
    let list = text_of(Command::new("dpkg-deb").arg("-c").arg(cached_deb(pkg)));
    let mut out = Vec::new();
    for l in list.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let perms = f[0];
        let path = f[5].trim_start_matches('.');
        let merged = if path.starts_with("/bin/") || path.starts_with("/sbin/") {
            format!("/usr{path}")
        } else {
            path.to_string()
        };
        if !(merged.starts_with("/usr/bin/") || merged.starts_with("/usr/sbin/")) {
            continue;
        }
        let kind = perms.as_bytes()[0];
        if kind != b'-' && kind != b'l' {
            continue;
        }
        let mut mode = 0u32;
        for (i, c) in perms.bytes().skip(1).take(9).enumerate() {
            let bit = 1 << (8 - i);
            match c {
                b'r' | b'w' | b'x' => mode |= bit,
                b's' => mode |= bit | if i == 2 { 0o4000 } else { 0o2000 },
                b'S' => mode |= if i == 2 { 0o4000 } else { 0o2000 },
                b't' => mode |= bit | 0o1000,
                b'T' => mode |= 0o1000,
                _ => {}
            }
        }
        let target = (kind == b'l').then(|| f.get(7).unwrap_or(&"").to_string());
        out.push((merged, mode, f[2].parse().unwrap_or(0), target));
    }
    assert!(!out.is_empty(), "{pkg}: no programs in:\n{list}");
    out
}

/// NEEDED entries and the program interpreter of an ELF file (readelf).
fn elf_deps(file: &Path) -> (Vec<String>, Option<String>) {
    let d = text_of(Command::new("readelf").arg("-d").arg(file));
    let needed = d
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_string))
        .collect();
    let l = text_of(Command::new("readelf").arg("-lW").arg(file));
    let interp = l
        .lines()
        .find_map(|l| l.split("program interpreter: ").nth(1))
        .and_then(|r| r.split(']').next())
        .map(str::to_string);
    (needed, interp)
}

#[test]
fn root_has_the_packages_programs_with_their_modes_and_libraries() {
    for (name, pkgs, programs) in [
        ("lb1", &["haproxy"][..], &["/usr/sbin/haproxy"][..]),
        (
            "w1",
            &["containerd", "runc", "iptables"][..],
            &[
                "/usr/bin/containerd",
                "/usr/bin/containerd-shim-runc-v2",
                "/usr/sbin/runc",
                "/usr/sbin/xtables-nft-multi",
            ][..],
        ),
        (
            "cp1",
            &["containerd", "runc"][..],
            &["/usr/bin/containerd", "/usr/sbin/runc"][..],
        ),
    ] {
        let p = parts(name);
        for pkg in pkgs {
            for (path, mode, size, target) in deb_programs(pkg) {
                let e = p
                    .root_list
                    .get(&path)
                    .unwrap_or_else(|| panic!("{name}: {pkg}'s {path} is not in the image"));
                assert_eq!(e.perm(), mode, "{name}: {path} mode {:o}", e.perm());
                assert_eq!((e.uid, e.gid), (0, 0), "{name}: {path}");
                match target {
                    Some(t) => {
                        assert_eq!(e.kind(), "symlink", "{name}: {path}");
                        let got = std::fs::read_link(p.dump.join(&path[1..])).unwrap();
                        assert_eq!(got.to_string_lossy(), t, "{name}: {path}");
                    }
                    None => {
                        assert_eq!(e.kind(), "file", "{name}: {path}");
                        assert_eq!(e.size, Some(size), "{name}: {path}");
                    }
                }
            }
        }
        // Shared libraries, transitively: every NEEDED resolves in the image.
        let mut todo: Vec<(String, PathBuf)> = programs
            .iter()
            .map(|prog| {
                let f = resolve(&p.dump, prog)
                    .filter(|f| f.is_file())
                    .unwrap_or_else(|| panic!("{name}: no {prog}"));
                (prog.to_string(), f)
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        while let Some((who, f)) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            let (needed, interp) = elf_deps(&f);
            if let Some(i) = interp {
                match resolve(&p.dump, &i).filter(|f| f.is_file()) {
                    Some(t) => todo.push((i, t)),
                    None => missing.push(format!("{who} needs interpreter {i}")),
                }
            }
            for lib in needed {
                let found = ["usr/lib/aarch64-linux-gnu", "usr/lib"]
                    .iter()
                    .find_map(|d| resolve(&p.dump, &format!("{d}/{lib}")).filter(|f| f.is_file()));
                match found {
                    Some(t) => todo.push((lib, t)),
                    None => missing.push(format!("{who} needs {lib}")),
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{name}: missing libraries: {missing:#?}"
        );
        assert!(
            seen.len() > programs.len(),
            "{name}: no library was checked"
        );
    }
}

fn canonical(module: &str) -> String {
    module.replace('-', "_")
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    canonical(base.split(".ko").next().unwrap_or(base))
}

#[test]
fn kernel_modules_and_their_indexes_agree() {
    for name in IMAGES {
        let p = parts(name);
        let m = manifest(name);
        let release = m["kernel_release"].as_str().unwrap();
        let moddir = p.dump.join("usr/lib/modules").join(release);
        let dep = std::fs::read_to_string(moddir.join("modules.dep")).unwrap();
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in dep.lines() {
            let (m, d) = l.split_once(':').unwrap_or_else(|| panic!("{name}: {l}"));
            deps.insert(
                m.to_string(),
                d.split_whitespace().map(String::from).collect(),
            );
        }
        assert!(deps.len() > 10, "{name}: {dep}");
        let by_name: BTreeMap<String, String> =
            deps.keys().map(|k| (module_name(k), k.clone())).collect();
        for (module, ds) in &deps {
            let f = moddir.join(module);
            assert!(
                f.is_file(),
                "{name}: {module} listed in modules.dep, not in the image"
            );
            for d in ds {
                assert!(
                    deps.contains_key(d) && moddir.join(d).is_file(),
                    "{name}: {module} depends on {d}, which is missing"
                );
            }
            // The module's own view (modinfo reads its .modinfo section): built for this
            // kernel, and every module it depends on is in its modules.dep line.
            let magic = text_of(Command::new("modinfo").args(["-F", "vermagic"]).arg(&f));
            assert!(
                magic.starts_with(&format!("{release} ")),
                "{name}: {module}: {magic}"
            );
            let own = text_of(Command::new("modinfo").args(["-F", "depends"]).arg(&f));
            for d in own.trim().split(',').filter(|d| !d.is_empty()) {
                let path = by_name
                    .get(&canonical(d))
                    .unwrap_or_else(|| panic!("{name}: {module} depends on {d}: not in the image"));
                assert!(
                    ds.contains(path),
                    "{name}: {module}: {d} missing from its line"
                );
            }
        }
        // modules.load names resolve by name or alias.
        let alias = std::fs::read_to_string(moddir.join("modules.alias")).unwrap();
        let aliases: BTreeMap<String, String> = alias
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[0] == "alias").then(|| (f[1].to_string(), canonical(f[2])))
            })
            .collect();
        let load = std::fs::read_to_string(p.dump.join("etc/piimg/modules.load")).unwrap();
        let names: Vec<&str> = load.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(names.contains(&"ext4"), "{name}: {load}");
        if name != "lb1" {
            for k in ["overlay", "br_netfilter"] {
                assert!(names.contains(&k), "{name}: {k} not loaded: {load}");
            }
        }
        for n in &names {
            let c = canonical(n);
            let target = aliases.get(&c).cloned().unwrap_or(c);
            assert!(
                by_name.contains_key(&target),
                "{name}: modules.load names {n}, which no module provides"
            );
        }
        let listed: Vec<&str> = m["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(listed, names, "{name}: manifest modules vs modules.load");
    }
}

#[test]
fn init_is_the_static_aarch64_agent_in_root_and_initramfs() {
    for name in IMAGES {
        let p = parts(name);
        let init = resolve(&p.dump, "/sbin/init")
            .filter(|f| f.is_file())
            .unwrap_or_else(|| panic!("{name}: no /sbin/init"));
        let e = &p.root_list["/usr/sbin/init"];
        assert_eq!((e.kind(), e.perm()), ("file", 0o755), "{name}");
        let what = text_of(Command::new("file").arg("-b").arg(&init));
        assert!(
            what.contains("ELF 64-bit") && what.contains("ARM aarch64") && what.contains("static"),
            "{name}: /sbin/init is {what}"
        );
        assert!(
            p.initrd_list.iter().any(|l| l == "init"),
            "{name}: {:?}",
            p.initrd_list
        );
        assert_eq!(
            sha256_hex(&initrd_member(p, "init")),
            sha256_hex(&std::fs::read(&init).unwrap()),
            "{name}: the initramfs /init is not the rootfs agent"
        );
    }
}

#[test]
fn initramfs_holds_the_stage1_modules_it_lists() {
    for name in IMAGES {
        let p = parts(name);
        let release = manifest(name)["kernel_release"]
            .as_str()
            .unwrap()
            .to_string();
        for f in ["init", "etc/piimg/stage1.modules", "dev/console"] {
            assert!(
                p.initrd_list.iter().any(|l| l == f),
                "{name}: no {f} in the initramfs"
            );
        }
        let list = String::from_utf8(initrd_member(p, "etc/piimg/stage1.modules")).unwrap();
        let mods: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
        let names: Vec<String> = mods.iter().map(|m| module_name(m)).collect();
        // phy_generic is dwc2's device-tree PHY: without it dwc2's probe waits for the kernel's
        // 10 s deferred-probe timeout and the USB network comes up that much later. (Order does
        // not matter: a deferred probe is retried whenever another driver binds.)
        // The SD card's controller: sdhost on a Pi 3, emmc2 (sdhci-iproc) on a Pi 4.
        let sd = match manifest(name)["node"]["board"].as_str() {
            Some("rpi4b") => "sdhci_iproc",
            Some("rpi3b") => "bcm2835",
            other => panic!("{name}: board {other:?}"),
        };
        for want in ["ext4", sd, "phy_generic", "dwc2"] {
            assert!(
                names.iter().any(|n| n == want),
                "{name}: {want} not in stage 1: {list}"
            );
        }
        for m in &mods {
            let path = format!("lib/modules/{release}/{m}");
            assert!(
                p.initrd_list.contains(&path),
                "{name}: stage1.modules names {m}, not in the initramfs"
            );
            // The same kernel's module as the rootfs carries.
            let rootfs = p.dump.join("usr").join(&path);
            assert_eq!(
                sha256_hex(&initrd_member(p, &path)),
                sha256_hex(&std::fs::read(&rootfs).unwrap()),
                "{name}: {m} differs between the initramfs and the rootfs"
            );
        }
        // Listed in load order: every module after the modules it depends on.
        let dep = String::from_utf8(initrd_member(
            p,
            &format!("lib/modules/{release}/modules.dep"),
        ))
        .unwrap();
        for l in dep.lines() {
            let (m, ds) = l.split_once(':').unwrap();
            let Some(pos) = mods.iter().position(|x| *x == m) else {
                continue;
            };
            for d in ds.split_whitespace() {
                let dpos = mods.iter().position(|x| *x == d);
                assert!(
                    dpos.is_some_and(|dp| dp < pos),
                    "{name}: {m} is loaded before its dependency {d}"
                );
            }
        }
    }
}

#[test]
fn manifest_lists_exactly_what_the_filesystems_hold() {
    for name in IMAGES {
        let p = parts(name);
        let m = manifest(name);
        for (part, list) in [("root", &p.root_list), ("data", &p.data_list)] {
            let files: Vec<&serde_json::Value> = m["files"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["partition"] == part)
                .collect();
            let in_manifest: BTreeSet<&str> = files
                .iter()
                .map(|f| f["path"].as_str().unwrap())
                .filter(|p| *p != "/")
                .collect();
            let in_image: BTreeSet<&str> = list
                .keys()
                .map(String::as_str)
                .filter(|p| *p != "/lost+found")
                .collect();
            let only_manifest: Vec<_> = in_manifest.difference(&in_image).collect();
            let only_image: Vec<_> = in_image.difference(&in_manifest).collect();
            assert!(
                only_manifest.is_empty() && only_image.is_empty(),
                "{name} {part}: only in the manifest: {only_manifest:?}; only in the image (debugfs): {only_image:?}"
            );
            for f in files {
                let path = f["path"].as_str().unwrap();
                if path == "/" {
                    continue;
                }
                let e = &list[path];
                assert_eq!(f["type"].as_str(), Some(e.kind()), "{name}: {path}");
                assert_eq!(
                    f["mode"].as_str().unwrap(),
                    format!("{:04o}", e.perm()),
                    "{name}: {path}"
                );
                assert_eq!(f["uid"].as_u64(), Some(u64::from(e.uid)), "{name}: {path}");
                assert_eq!(f["gid"].as_u64(), Some(u64::from(e.gid)), "{name}: {path}");
                if part == "root" {
                    if let Some(sha) = f["sha256"].as_str() {
                        let data = std::fs::read(p.dump.join(&path[1..])).unwrap();
                        assert_eq!(sha256_hex(&data), sha, "{name}: {path}");
                    }
                    if let Some(t) = f["target"].as_str() {
                        let got = std::fs::read_link(p.dump.join(&path[1..])).unwrap();
                        assert_eq!(got.to_string_lossy(), t, "{name}: {path}");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- 4. secrets

#[test]
fn secret_files_are_private_and_the_ca_is_the_clusters() {
    let b = shared();
    for name in ["w1", "cp1"] {
        let p = parts(name);
        let mut secret = vec!["/etc/piimg/node.json", "/etc/piimg/kubeadm.yaml"];
        if name == "cp1" {
            for base in ["/etc/kubernetes/pki", "/etc/piimg/pki"] {
                for key in ["ca.key", "front-proxy-ca.key", "etcd/ca.key", "sa.key"] {
                    secret.push(Box::leak(format!("{base}/{key}").into_boxed_str()));
                }
            }
        }
        for path in &secret {
            // Straight from debugfs stat, not only from the walk.
            let st = debugfs(&p.root, &format!("stat {path}"));
            assert!(st.contains("Mode:  0600"), "{name}: {path}:\n{st}");
            assert!(
                st.contains("User:     0   Group:     0"),
                "{name}: {path}:\n{st}"
            );
        }
        let kubeadm = std::fs::read_to_string(p.dump.join("etc/piimg/kubeadm.yaml")).unwrap();
        assert!(
            kubeadm.contains(&b.secrets.token),
            "{name}: the join token is not in kubeadm.yaml"
        );
        // The manifest gives no hash of a secret file (nor the hash of its bytes anywhere).
        let text = std::fs::read_to_string(b.out.join(format!("{name}.manifest.json"))).unwrap();
        let m = manifest(name);
        for path in &secret {
            let f = m["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == *path && f["partition"] == "root")
                .unwrap_or_else(|| panic!("{name}: {path} not in the manifest"));
            assert!(f.get("sha256").is_none(), "{name}: {f}");
            assert_eq!(f["mode"], "0600", "{name}: {f}");
            let data = std::fs::read(p.dump.join(&path[1..])).unwrap();
            assert!(
                !text.contains(&sha256_hex(&data)),
                "{name}: hash of {path} in the manifest"
            );
        }
    }
    let p = parts("cp1");
    let crt = std::fs::read_to_string(p.dump.join("etc/kubernetes/pki/ca.crt")).unwrap();
    assert_eq!(crt.trim(), b.secrets.ca_cert.trim());
    let key = std::fs::read_to_string(p.dump.join("etc/kubernetes/pki/ca.key")).unwrap();
    assert_eq!(key.trim(), b.secrets.ca_key.trim());
    let e = &p.root_list["/etc/kubernetes/pki/ca.crt"];
    assert_eq!(e.perm(), 0o644);
    // The rest of the shared PKI kubeadm's `join --control-plane` needs without uploaded
    // certificates (phases/certs SharedCertificateExists), from the secrets file, in kubeadm's
    // folder and in the copy the agent restores after `kubeadm reset`.
    let file = read_toml(&b.project.secrets("home"));
    for base in ["etc/kubernetes/pki", "etc/piimg/pki"] {
        for (path, field, ca) in [
            ("ca.crt", "ca_cert", true),
            ("front-proxy-ca.crt", "front_proxy_ca_cert", true),
            ("etcd/ca.crt", "etcd_ca_cert", true),
            ("front-proxy-ca.key", "front_proxy_ca_key", false),
            ("etcd/ca.key", "etcd_ca_key", false),
            ("sa.key", "sa_key", false),
            ("sa.pub", "sa_pub", false),
        ] {
            let f = p.dump.join(base).join(path);
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert_eq!(
                text.trim(),
                file[field].as_str().unwrap().trim(),
                "{base}/{path}"
            );
            if ca {
                let ext = text_of(
                    Command::new("openssl")
                        .args(["x509", "-noout", "-ext", "basicConstraints", "-in"])
                        .arg(&f),
                );
                assert!(ext.contains("CA:TRUE"), "{base}/{path}: {ext}");
            }
        }
        // sa.pub is sa.key's public half.
        let derived = text_of(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(p.dump.join(base).join("sa.key")),
        );
        let stored = std::fs::read_to_string(p.dump.join(base).join("sa.pub")).unwrap();
        assert_eq!(derived.trim(), stored.trim(), "{base}: sa.pub");
    }
    // A worker carries no control-plane key.
    let w = parts("w1");
    assert!(
        !w.root_list
            .keys()
            .any(|k| k.starts_with("/etc/kubernetes/pki/") || k.starts_with("/etc/piimg/pki")),
        "w1 holds PKI files"
    );
}

/// The byte strings that must not leak: token (whole and its secret half), certificate key (hex
/// and raw), CA key (PEM, each base64 line, and the raw private scalar).
fn secret_needles(s: &Secrets) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        ("token".to_string(), s.token.as_bytes().to_vec()),
        (
            "token secret".to_string(),
            s.token.split('.').nth(1).unwrap().as_bytes().to_vec(),
        ),
        (
            "certificate key".to_string(),
            s.certificate_key.as_bytes().to_vec(),
        ),
        (
            "certificate key (raw)".to_string(),
            hex::decode(&s.certificate_key).unwrap(),
        ),
        (
            "CA key (PEM)".to_string(),
            s.ca_key.trim().as_bytes().to_vec(),
        ),
    ];
    for (field, pem) in &s.other_keys {
        v.push((format!("{field} (PEM)"), pem.trim().as_bytes().to_vec()));
        for (i, l) in pem
            .lines()
            .map(str::trim)
            .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
            .enumerate()
        {
            v.push((format!("{field} line {}", i + 1), l.as_bytes().to_vec()));
        }
    }
    let body: Vec<&str> = s
        .ca_key
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    for (i, l) in body.iter().enumerate() {
        if l.len() >= 16 {
            v.push((format!("CA key line {}", i + 1), l.as_bytes().to_vec()));
        }
    }
    let der = pipe(Command::new("base64").arg("-d"), body.concat().as_bytes());
    // PKCS#8 EC key: ... INTEGER 1, OCTET STRING (32) <private scalar> ...
    let pos = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("the CA key's private scalar");
    v.push((
        "CA key (raw scalar)".to_string(),
        der[pos + 5..pos + 37].to_vec(),
    ));
    v
}

fn assert_no_secrets(what: &str, hay: &[u8], needles: &[(String, Vec<u8>)]) {
    for (n, bytes) in needles {
        assert!(!contains(hay, bytes), "the {n} appears in {what}");
    }
}

#[test]
fn secrets_appear_nowhere_outside_the_root_filesystem() {
    let b = shared();
    let needles = secret_needles(&b.secrets);
    // The search finds the secrets where they belong (cp1's rootfs).
    let p = parts("cp1");
    let key = std::fs::read(p.dump.join("etc/kubernetes/pki/ca.key")).unwrap();
    let kubeadm = std::fs::read(p.dump.join("etc/piimg/kubeadm.yaml")).unwrap();
    assert!(contains(&key, b.secrets.ca_key.trim().as_bytes()));
    assert!(contains(&kubeadm, b.secrets.token.as_bytes()));
    // The certificate key stays in the node config; the preseeded PKI needs no upload, so
    // kubeadm's configuration no longer carries it.
    let node = std::fs::read(p.dump.join("etc/piimg/node.json")).unwrap();
    assert!(contains(&node, b.secrets.certificate_key.as_bytes()));
    assert!(!contains(&kubeadm, b.secrets.certificate_key.as_bytes()));
    let sa = std::fs::read(p.dump.join("etc/piimg/pki/sa.key")).unwrap();
    let (_, sa_key) = b
        .secrets
        .other_keys
        .iter()
        .find(|k| k.0 == "sa_key")
        .unwrap();
    assert!(contains(&sa, sa_key.trim().as_bytes()));

    let mut outputs = b.fetch.stdout.clone() + &b.fetch.stderr;
    for name in IMAGES {
        let p = parts(name);
        let run = &b.builds[name];
        outputs.push_str(&run.stdout);
        outputs.push_str(&run.stderr);
        let fat = std::fs::read(&p.boot).unwrap();
        assert_no_secrets(&format!("{name}'s FAT partition"), &fat, &needles);
        assert_no_secrets(&format!("{name}'s initramfs"), &zstd_d(&p.initrd), &needles);
        let data = std::fs::read(&p.data).unwrap();
        assert_no_secrets(&format!("{name}'s data partition"), &data, &needles);
        let manifest = std::fs::read(b.out.join(format!("{name}.manifest.json"))).unwrap();
        assert_no_secrets(&format!("{name}.manifest.json"), &manifest, &needles);
    }
    assert_no_secrets("piimg's stdout/stderr", outputs.as_bytes(), &needles);
    // The load balancer needs none of them: not a byte anywhere in its image.
    let (_, img) = built("lb1");
    let mut f = std::fs::File::open(img).unwrap();
    let mut buf = vec![0u8; 64 << 20];
    let keep = 4096;
    let mut filled = 0;
    loop {
        let n = f.read(&mut buf[filled..]).unwrap();
        if n == 0 {
            break;
        }
        filled += n;
        if filled == buf.len() {
            assert_no_secrets("lb1.img", &buf, &needles);
            buf.copy_within(filled - keep.., 0);
            filled = keep;
        }
    }
    assert_no_secrets("lb1.img", &buf[..filled], &needles);
}

// ---------------------------------------------------------------- 5. reproducibility

#[test]
fn same_input_gives_the_same_image() {
    let (b, _) = built("lb1");
    let out2 = b.work.join("out-again");
    let _ = std::fs::remove_dir_all(&out2);
    std::fs::create_dir_all(&out2).unwrap();
    piimg_in(&b.project, "Pacific/Chatham", "077")
        .args(["build", "--offline", "--profile", "lb1", "--out"])
        .arg(&out2)
        .run()
        .assert_ok();
    let first = std::fs::read_to_string(b.out.join("lb1.img.sha256")).unwrap();
    let second = std::fs::read_to_string(out2.join("lb1.img.sha256")).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(b.out.join("lb1.manifest.json")).unwrap(),
        std::fs::read(out2.join("lb1.manifest.json")).unwrap()
    );
}

// ---------------------------------------------------------------- kubeadm v1.31's requirements

/// kubeadm v1.31 preflight, cmd/kubeadm/app/preflight/checks.go `addExecChecks`: executables
/// that must be on PATH (LookPath; a miss is an error). conntrack stops being required only in
/// v1.32 (PR 126952); crictl is not checked since v1.31 (PR 124685).
const KUBEADM_REQUIRED_EXECS: &[&str] = &["conntrack", "ip", "iptables", "mount", "nsenter"];

/// k8s.io/system-validators v1.8.0 (kubeadm v1.31's SystemVerification),
/// validators/types_unix.go L34-54: kernel options that must be `y` or `m`; the alternatives are
/// the validator's aliases. It reads /boot/config-$(uname -r) among other paths
/// (kernel_validator.go L180-190); a node with none fails.
const REQUIRED_KERNEL_CONFIGS: &[&[&str]] = &[
    &["NAMESPACES"],
    &["NET_NS"],
    &["PID_NS"],
    &["IPC_NS"],
    &["UTS_NS"],
    &["CGROUPS"],
    &["CGROUP_CPUACCT"],
    &["CGROUP_DEVICE"],
    &["CGROUP_FREEZER"],
    &["CGROUP_PIDS"],
    &["CGROUP_SCHED"],
    &["CPUSETS"],
    &["MEMCG"],
    &["INET"],
    &["EXT4_FS"],
    &["PROC_FS"],
    &["NETFILTER_XT_TARGET_REDIRECT", "IP_NF_TARGET_REDIRECT"],
    &["NETFILTER_XT_MATCH_COMMENT"],
    &["FAIR_GROUP_SCHED"],
];

/// The modules kube-proxy v1.31's iptables rules use (pkg/proxy/iptables/proxier.go: matches
/// comment, mark, conntrack, statistic, recent, addrtype, tcp/udp/sctp; targets DNAT,
/// MASQUERADE, MARK, REJECT) on an iptables-nft node, plus the netlink module the conntrack CLI
/// needs for kube-proxy's stale-UDP cleanup.
const KUBE_PROXY_MODULES: &[&str] = &[
    "nft_compat",
    "nft_chain_nat",
    "xt_comment",
    "xt_mark",
    "xt_conntrack",
    "xt_statistic",
    "xt_recent",
    "xt_addrtype",
    "xt_tcpudp",
    "xt_sctp",
    "xt_nat",
    "xt_MASQUERADE",
    "ipt_REJECT",
    "ip6t_REJECT",
    "nf_conntrack_netlink",
];

/// The executable `name` as a program on the node's PATH would find it.
fn on_path(p: &Parts, name: &str) -> Option<PathBuf> {
    piimg_agent::roles::PATH_ENV.split(':').find_map(|dir| {
        let f = resolve(&p.dump, &format!("{dir}/{name}"))?;
        let md = std::fs::metadata(&f).ok()?;
        use std::os::unix::fs::PermissionsExt;
        (md.is_file() && md.permissions().mode() & 0o111 != 0).then_some(f)
    })
}

#[test]
fn kubernetes_images_hold_what_kubeadm_v1_31_and_image_pulls_need() {
    for name in ["w1", "cp1"] {
        let p = parts(name);
        let m = manifest(name);
        // Exec checks: each found on PATH, an aarch64 ELF program.
        for exe in KUBEADM_REQUIRED_EXECS {
            let f = on_path(p, exe)
                .unwrap_or_else(|| panic!("{name}: {exe} is not on PATH (kubeadm preflight)"));
            let h = text_of(Command::new("readelf").arg("-h").arg(&f));
            assert!(h.contains("AArch64"), "{name}: {exe} ({f:?}): {h}");
        }
        // The joining control plane's readiness probe (agent/src/kubeadm.rs) uses openssl.
        if name == "cp1" {
            let f = on_path(p, "openssl").expect("cp1: openssl on PATH");
            let h = text_of(Command::new("readelf").arg("-h").arg(&f));
            assert!(h.contains("AArch64"), "openssl: {h}");
        }
        // SystemVerification's kernel config, for the release the image boots.
        let rel = m["kernel_release"].as_str().unwrap();
        let cfg_path = resolve(&p.dump, &format!("/boot/config-{rel}"))
            .unwrap_or_else(|| panic!("{name}: no /boot/config-{rel}"));
        let config = std::fs::read_to_string(cfg_path).unwrap();
        for names in REQUIRED_KERNEL_CONFIGS {
            let set = names.iter().any(|n| {
                config
                    .lines()
                    .any(|l| l == format!("CONFIG_{n}=y") || l == format!("CONFIG_{n}=m"))
            });
            assert!(set, "{name}: CONFIG_{} is neither y nor m", names[0]);
        }
        // kube-proxy's modules: in the image with their index, and loaded at boot.
        let dep = std::fs::read_to_string(
            resolve(&p.dump, &format!("/usr/lib/modules/{rel}/modules.dep")).unwrap(),
        )
        .unwrap();
        let load =
            std::fs::read_to_string(resolve(&p.dump, "/etc/piimg/modules.load").unwrap()).unwrap();
        for module in KUBE_PROXY_MODULES {
            let file = format!("/{module}.ko:");
            let alt = format!("/{}.ko:", module.replace('_', "-"));
            assert!(
                dep.lines().any(|l| l.contains(&file) || l.contains(&alt)),
                "{name}: {module} is not in modules.dep"
            );
            assert!(
                load.lines().any(|l| l.replace('-', "_") == *module),
                "{name}: {module} is not loaded at boot (modules.load)"
            );
        }
        // The trust bundle: every certificate ca-certificates ships, each one parseable.
        let bundle = resolve(&p.dump, "/etc/ssl/certs/ca-certificates.crt")
            .unwrap_or_else(|| panic!("{name}: no /etc/ssl/certs/ca-certificates.crt"));
        let shipped = text_of(
            Command::new("dpkg-deb")
                .arg("-c")
                .arg(cached_deb("ca-certificates")),
        )
        .lines()
        .filter(|l| l.contains("./usr/share/ca-certificates/") && l.ends_with(".crt"))
        .count();
        let p7 = stdout_of(
            Command::new("openssl")
                .args(["crl2pkcs7", "-nocrl", "-certfile"])
                .arg(&bundle),
        );
        let certs = pipe(
            Command::new("openssl").args(["pkcs7", "-print_certs", "-noout"]),
            &p7,
        );
        let subjects: Vec<String> = String::from_utf8_lossy(&certs)
            .lines()
            .filter(|l| l.starts_with("subject="))
            .map(str::to_string)
            .collect();
        assert!(shipped > 100, "{shipped} certificates in ca-certificates?");
        assert_eq!(subjects.len(), shipped, "{name}: bundle vs package");
        // Roots of the chains registry.k8s.io and its mirrors serve today.
        for root in ["GTS Root R1", "Amazon Root CA 1", "ISRG Root X1"] {
            assert!(
                subjects.iter().any(|s| s.contains(root)),
                "{name}: {root} missing"
            );
        }
        // containerd: kubeadm v1.31's pause image (constants.PauseVersion 3.10, CHANGELOG-1.31
        // #125112) and the CNI folder Flannel and Calico install into.
        let k8s = read_toml(&repo().join("profiles/cluster.toml"));
        assert!(k8s["kubernetes"]["version"]
            .as_str()
            .unwrap()
            .starts_with("v1.31."));
        let ctd = read_toml(&resolve(&p.dump, "/etc/containerd/config.toml").unwrap());
        let cri = &ctd["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("registry.k8s.io/pause:3.10")
        );
        // The bridge hands out this node's pod subnet from the profiles (every other node
        // routes it here; tests/profiles checks the routes).
        let conflist =
            read_json(&resolve(&p.dump, "/etc/cni/net.d/10-piimg-bridge.conflist").unwrap());
        let node = read_json(&resolve(&p.dump, "/etc/piimg/node.json").unwrap());
        let want = if name == "w1" {
            "10.244.21.0/24"
        } else {
            "10.244.11.0/24"
        };
        assert_eq!(node["kubernetes"]["node_pod_cidr"], want);
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            want
        );
        let bin_dir = cri["cni"]["bin_dir"].as_str().unwrap();
        assert_eq!(bin_dir, "/opt/cni/bin");
        for plugin in ["bridge", "host-local", "loopback", "portmap"] {
            let f = resolve(&p.dump, &format!("{bin_dir}/{plugin}"))
                .unwrap_or_else(|| panic!("{name}: no {bin_dir}/{plugin}"));
            let h = text_of(Command::new("readelf").arg("-h").arg(&f));
            assert!(h.contains("AArch64"), "{name}: {plugin}: {h}");
        }
    }
}

#[test]
fn load_balancer_config_passes_haproxy_and_checks_the_api_servers_readiness() {
    let p = parts("lb1");
    let cfg = resolve(&p.dump, "/etc/haproxy/haproxy.cfg").expect("lb1 has haproxy.cfg");
    // HAProxy itself (the host's) parses the file the image holds.
    let out = text_of(Command::new("haproxy").arg("-c").arg("-f").arg(&cfg));
    assert!(out.contains("Configuration file is valid"), "{out}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // kubeadm's HA guide (kubernetes/kubeadm docs/ha-considerations.md): an HTTPS health check
    // of each API server, redispatch, the guide's timeouts; /readyz so that a joining control
    // plane gets traffic only once its etcd member is up.
    for want in [
        "mode tcp",
        "option httpchk",
        "http-check send meth GET uri /readyz",
        "http-check expect status 200",
        "option redispatch",
        "timeout connect 5s",
        "timeout client 35s",
        "timeout server 35s",
        "timeout check 10s",
    ] {
        assert!(lines.contains(&want), "no `{want}` in:\n{text}");
    }
    // Every control-plane node of the cluster, checked over TLS without verification.
    for (name, addr) in [
        ("cp1", "192.168.50.11:6443"),
        ("cp2", "192.168.50.12:6443"),
        ("cp3", "192.168.50.13:6443"),
    ] {
        let line = format!("server {name} {addr} check check-ssl verify none");
        assert!(lines.contains(&line.as_str()), "no `{line}` in:\n{text}");
    }
}

#[test]
fn images_holding_secrets_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    for (name, want) in [("w1", 0o600), ("cp1", 0o600), ("lb1", 0o644)] {
        let (b, _) = built(name);
        for f in [
            format!("{name}.img"),
            format!("{name}.img.sha256"),
            format!("{name}.img.bmap"),
            format!("{name}.manifest.json"),
        ] {
            let mode = std::fs::metadata(b.out.join(&f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, want, "{f}: {:o}", mode & 0o777);
        }
    }
    // The manifest records the build's inputs and the bmap; the bmap is bmaptool's format.
    let m = manifest("w1");
    assert!(
        m["inputs"]["lock"].as_str().is_some_and(|s| s.len() == 64),
        "{}",
        m["inputs"]
    );
    assert_eq!(m["bmap"].as_str(), Some("w1.img.bmap"));
    let (b, img) = built("w1");
    // bmaptool checks the file's own checksum and every range's while copying.
    let copy = b.work.join("w1-bmaptool.img");
    text_of(
        Command::new("bmaptool")
            .args(["copy", "--bmap"])
            .arg(b.out.join("w1.img.bmap"))
            .arg(&img)
            .arg(&copy),
    );
    text_of(Command::new("cmp").arg(&copy).arg(&img));
    let _ = std::fs::remove_file(&copy);
}
