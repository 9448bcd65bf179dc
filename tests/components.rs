//! Components: private apt against the host's Debian mirror (read from the host's apt sources,
//! never written here), the content-addressed cache, the lock, the .deb reader (checked against
//! dpkg-deb + GNU tar listings) and kernel modules (checked against readelf and depmod).
//!
//! Downloads go to `<target>/tmp/piimg-test-cache`, so reruns only re-run `apt-get update`.

mod common;
use common::checkers::{deb_member, deb_tar, pipe, run, sha256sum, text_of};
use common::{cache_home, dir_names};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use piimg::components::apt::{self, Apt, AptConfig, DebPackage, Resolved};
use piimg::components::cache::{Cache, CacheError};
use piimg::components::deb::{self, DebError, DebOptions};
use piimg::components::fetch;
use piimg::components::lock::{Lock, LockEntry, LockError};
use piimg::components::modules::ModuleSet;
use piimg::report::{Reporter, Silent};
use piimg::tree::{InodeKind, Meta, Tree};

// ---------------------------------------------------------------- shared apt state

type Snapshot = BTreeMap<PathBuf, (u64, i64, i64)>;

/// Size and mtime of everything under the host's apt/dpkg state directories.
fn host_apt_state() -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack: Vec<PathBuf> = [
        "/var/lib/apt",
        "/var/cache/apt",
        "/var/lib/dpkg",
        "/etc/apt",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.insert(p.clone(), (md.len(), md.mtime(), md.mtime_nsec()));
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
    }
    out
}

struct Shared {
    cache: Cache,
    before: Snapshot,
    trixie: Apt,
    resolved: Resolved,
}

/// One `apt-get update` + resolution of the node package set per test run.
fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let before = host_apt_state();
        let cache = Cache::open(cache_home().join("piimg")).unwrap();
        let cfg =
            AptConfig::new("trixie", None).expect("a Debian mirror in the host's apt sources");
        let trixie = Apt::in_cache(&cache, cfg).unwrap();
        trixie.update(&Silent).unwrap();
        let excludes: Vec<&str> = apt::DEFAULT_EXCLUDES.iter().map(|(n, _)| *n).collect();
        let resolved = trixie.resolve(apt::NODE_PACKAGES, &excludes).unwrap();
        Shared {
            cache,
            before,
            trixie,
            resolved,
        }
    })
}

fn pkg<'a>(r: &'a Resolved, name: &str) -> &'a DebPackage {
    r.packages
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} not in resolved set"))
}

/// The resolved packages `names`, downloaded into the shared cache.
fn downloaded(s: &Shared, names: &[&str]) -> Vec<DebPackage> {
    let want: Vec<DebPackage> = names.iter().map(|n| pkg(&s.resolved, n).clone()).collect();
    s.trixie.download(&want, &s.cache, &Silent).unwrap();
    want
}

fn names(r: &Resolved) -> Vec<&str> {
    r.packages.iter().map(|p| p.name.as_str()).collect()
}

// ---------------------------------------------------------------- apt

#[test]
fn mirror_comes_from_host_sources() {
    let m = apt::host_mirror().unwrap();
    assert!(m.starts_with("http://") || m.starts_with("https://"), "{m}");
    // The chosen source is not the security archive.
    assert!(!m.contains("security"), "{m}");
}

#[test]
fn trixie_resolution_keeps_runtime_closure_and_prunes_excluded() {
    let s = shared();
    let n = names(&s.resolved);
    for want in [
        "linux-image-arm64",
        "raspi-firmware",
        "containerd",
        "runc",
        "containernetworking-plugins",
        "haproxy",
        "busybox-static",
        "libc6",
        "libssl3t64",
    ] {
        assert!(n.contains(&want), "{want} missing from {n:?}");
    }
    let kernel = apt::kernel_package(&s.resolved.packages).expect("versioned kernel package");
    let release = apt::kernel_release(&kernel.name).unwrap();
    assert!(
        release.starts_with("6.12.") && release.ends_with("-arm64"),
        "{release}"
    );
    for gone in [
        "debconf",
        "perl-base",
        "dpkg",
        "initramfs-tools",
        "linux-base",
        "kmod",
        "systemd",
        "udev",
        "dosfstools",
        "adduser",
    ] {
        assert!(!n.contains(&gone), "{gone} should be pruned: {n:?}");
    }
    // apt chose them, piimg pruned them.
    assert!(s.resolved.pruned.iter().any(|p| p == "initramfs-tools"));
    for p in &s.resolved.packages {
        assert!(
            p.arch == "arm64" || p.arch == "all",
            "{} is {}",
            p.name,
            p.arch
        );
        assert!(p.filename.starts_with("pool/"), "{}", p.filename);
        assert!(piimg::components::cache::is_sha256(&p.sha256));
    }
    // Deterministic: sorted by name, no duplicates.
    let mut sorted = n.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(n, sorted);
    // The exclusion of a requested package is refused.
    assert!(matches!(
        s.trixie.resolve(&["runc", "debconf"], &["debconf"]),
        Err(apt::AptError::RequestedExcluded(_))
    ));
}

#[test]
fn bookworm_resolves_too() {
    let s = shared();
    let apt = Apt::in_cache(&s.cache, AptConfig::new("bookworm", None).unwrap()).unwrap();
    apt.update(&Silent).unwrap();
    let excludes: Vec<&str> = apt::DEFAULT_EXCLUDES.iter().map(|(n, _)| *n).collect();
    let r = apt.resolve(apt::NODE_PACKAGES, &excludes).unwrap();
    let kernel = apt::kernel_package(&r.packages).unwrap();
    assert!(
        kernel.name.starts_with("linux-image-6.1."),
        "{}",
        kernel.name
    );
    assert!(names(&r).contains(&"raspi-firmware"));
    assert!(!names(&r).contains(&"debconf"));
}

#[test]
fn download_verifies_and_host_apt_state_is_untouched() {
    let s = shared();
    let want = downloaded(s, &["busybox-static", "runc"]);
    for p in &want {
        assert!(s.cache.has(&p.sha256), "{} not cached", p.name);
        // Checked with a tool we did not write.
        assert_eq!(
            sha256sum(s.cache.path_of(&p.sha256)),
            p.sha256,
            "{}",
            p.name
        );
        let len = std::fs::metadata(s.cache.path_of(&p.sha256)).unwrap().len();
        assert_eq!(len, p.size, "{}", p.name);
    }
    // The whole run (update, resolve, download) left the host's apt and dpkg state alone.
    let after = host_apt_state();
    let changed: Vec<_> = s
        .before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p.clone())
        .chain(after.keys().filter(|p| !s.before.contains_key(*p)).cloned())
        .collect();
    assert!(changed.is_empty(), "host apt state changed: {changed:?}");
    // And the private state is where it should be.
    let lists = std::fs::read_dir(s.trixie.dir().join("lists"))
        .unwrap()
        .count();
    assert!(lists > 2);
}

#[test]
fn fetch_locked_refuses_a_file_whose_sha256_differs_from_the_lock() {
    let s = shared();
    let p = pkg(&s.resolved, "busybox-static");
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let mut lock = Lock::new();
    let mut e = LockEntry::from_deb("trixie", p);
    e.sha256 = Some("0".repeat(64));
    lock.upsert(e);
    // The file is fetched by its pool path from the host's mirror; the index is not read.
    let opts = piimg::components::FetchOptions {
        offline: false,
        sources: apt::SuiteSources::host("trixie"),
    };
    let err = piimg::components::fetch_locked(&lock, &cache, &opts, &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&"0".repeat(64)) && err.contains(&p.sha256),
        "{err}"
    );
    assert!(cache.list().unwrap().is_empty());
}

// ---------------------------------------------------------------- .deb -> Tree against dpkg-deb

fn perm_from_ls(s: &str) -> u16 {
    let b = s.as_bytes();
    let mut p = 0u16;
    for (i, shift) in [(1, 8), (2, 7), (4, 5), (5, 4), (7, 2), (8, 1)] {
        p |= u16::from(b[i] != b'-') << shift;
    }
    for (i, x, special) in [(3, 6, 0o4000), (6, 3, 0o2000), (9, 0, 0o1000)] {
        let c = b[i];
        if c == b'x' || c == b's' || c == b't' {
            p |= 1 << x;
        }
        if matches!(c, b's' | b'S' | b't' | b'T') {
            p |= special;
        }
    }
    p
}

/// Compares every entry of the package (listed by dpkg-deb and GNU tar) with the tree.
fn assert_tree_matches_dpkg(tree: &Tree, deb: &Path) {
    let listing = pipe(
        Command::new("tar").args(["--numeric-owner", "-tvf", "-"]),
        &deb_tar(deb),
    );
    let text = String::from_utf8(listing).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        // mode, uid/gid, size, date, time, name (columns are space-aligned).
        let mut f = Vec::new();
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap();
            f.push(&rest[..end]);
            rest = &rest[end..];
        }
        f.push(rest.trim_start());
        let (mode, owner, size, name) = (f[0], f[1], f[2], f[5]);
        let (name, target) = match name.split_once(" -> ") {
            Some((n, t)) => (n, Some(t)),
            None => match name.split_once(" link to ") {
                Some((n, t)) => (n, Some(t)),
                None => (name, None),
            },
        };
        let path = name.trim_start_matches("./").trim_end_matches('/');
        if path.is_empty() {
            continue;
        }
        let filtered = deb::DOC_PREFIXES
            .iter()
            .any(|d| path == *d || path.starts_with(&format!("{d}/")));
        if filtered {
            assert!(tree.lookup(path).is_none(), "{path} should be filtered");
            continue;
        }
        let id = tree
            .lookup(path)
            .unwrap_or_else(|| panic!("{path} missing from tree"));
        let node = tree.inode(id);
        let (uid, gid) = owner.split_once('/').unwrap();
        assert_eq!(node.meta.uid, uid.parse::<u32>().unwrap(), "{path}");
        assert_eq!(node.meta.gid, gid.parse::<u32>().unwrap(), "{path}");
        match mode.as_bytes()[0] {
            b'd' => assert!(node.is_dir(), "{path}"),
            b'-' | b'h' => {
                let InodeKind::File(data) = &node.kind else {
                    panic!("{path} is not a file")
                };
                if mode.starts_with('-') {
                    assert_eq!(data.len(), size.parse::<u64>().unwrap(), "{path}");
                } else {
                    let t = target.unwrap().trim_start_matches("./");
                    assert_eq!(tree.lookup(t), Some(id), "{path} not linked to {t}");
                    assert!(tree.link_count(id) >= 2);
                }
            }
            b'l' => {
                let InodeKind::Symlink(t) = &node.kind else {
                    panic!("{path} is not a symlink")
                };
                assert_eq!(t.as_slice(), target.unwrap().as_bytes(), "{path}");
            }
            other => panic!("unexpected type {} for {path}", other as char),
        }
        if !mode.starts_with('l') {
            assert_eq!(node.meta.perm, perm_from_ls(mode), "{path} mode {mode}");
        }
        checked += 1;
    }
    assert!(checked > 3, "only {checked} entries checked");
}

#[test]
fn real_debs_read_into_tree_match_dpkg_deb() {
    let s = shared();
    let want = downloaded(s, &["busybox-static", "runc"]);
    let mut tree = Tree::new(Meta::root(0o755, 0));
    for p in &want {
        let info = deb::read_cached_deb(
            &mut tree,
            &s.cache,
            &p.sha256,
            &p.name,
            &DebOptions::default(),
        )
        .unwrap();
        assert_eq!(info.package, p.name);
        assert_eq!(info.version, p.version);
        assert!(info.skipped > 0, "{}: docs not filtered", p.name);
        assert_tree_matches_dpkg(&tree, &s.cache.path_of(&p.sha256));
    }
    // Content through FileData::Range equals what dpkg-deb extracts.
    for (p, member) in [
        (&want[0], "./usr/bin/busybox"),
        (&want[1], "./usr/sbin/runc"),
    ] {
        let id = tree
            .lookup(member.trim_start_matches("./"))
            .unwrap_or_else(|| panic!("{member}"));
        let InodeKind::File(data) = &tree.inode(id).kind else {
            panic!()
        };
        assert!(matches!(data, piimg::tree::FileData::Range { .. }));
        assert_eq!(tree.inode(id).meta.perm, 0o755);
        let ours = data.read_all().unwrap();
        assert_eq!(ours, deb_member(&s.cache.path_of(&p.sha256), member));
    }
    // The shared /usr directories were merged, and a second copy of a package is an error ...
    let again = deb::read_cached_deb(
        &mut tree,
        &s.cache,
        &want[1].sha256,
        "runc",
        &DebOptions::default(),
    );
    assert!(matches!(again, Err(DebError::Tree { .. })), "{again:?}");
    // ... unless replacing is allowed.
    let opts = DebOptions {
        allow_replace: true,
        keep_docs: true,
        ..Default::default()
    };
    let info = deb::read_cached_deb(&mut tree, &s.cache, &want[1].sha256, "runc", &opts).unwrap();
    assert_eq!(info.skipped, 0);
    assert!(tree.lookup("usr/share/doc/runc").is_some());
}

// ---------------------------------------------------------------- hostile .debs

enum E<'a> {
    Dir(&'a [u8]),
    File(&'a [u8], &'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
    Hard(&'a [u8], &'a [u8]),
}

/// A tar whose names are written raw (the tar crate's builder refuses `..` and absolute paths).
fn raw_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (name, data): (&[u8], &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                (n, b"")
            }
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d)
            }
            E::Symlink(n, t) | E::Hard(n, t) => {
                if matches!(e, E::Hard(..)) {
                    h.set_mode(0o644);
                }
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                (n, b"")
            }
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn make_deb(dir: &Path, package: &str, entries: &[E]) -> PathBuf {
    let control = format!("Package: {package}\nVersion: 1.0\nArchitecture: arm64\n");
    let mut ctar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("./control").unwrap();
    h.set_size(control.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    ctar.append(&h, control.as_bytes()).unwrap();
    // A postinst that must never be looked at.
    let post = b"#!/bin/sh\nrm -rf /\n";
    let mut h = tar::Header::new_gnu();
    h.set_path("./postinst").unwrap();
    h.set_size(post.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    ctar.append(&h, &post[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&ctar.into_inner().unwrap()).unwrap();
    let control_tar = gz.finish().unwrap();
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&raw_tar(entries)).unwrap();
    let data_tar = xz.finish().unwrap();
    let path = dir.join(format!("{package}.deb"));
    let mut ar = ar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, data) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar.gz", &control_tar[..]),
        ("data.tar.xz", &data_tar[..]),
    ] {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        h.set_mode(0o644);
        ar.append(&h, data).unwrap();
    }
    path
}

#[test]
fn hostile_debs_are_refused_and_leave_tree_and_cache_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let mut tree = Tree::new(Meta::root(0o755, 0));
    // A sane package first: its own test dpkg-deb agrees with.
    let good = make_deb(
        tmp.path(),
        "good",
        &[
            E::Dir(b"./"),
            E::Dir(b"./usr/"),
            E::Dir(b"./usr/bin/"),
            E::File(b"./usr/bin/tool", b"#!/bin/sh\necho hi\n"),
            E::Hard(b"./usr/bin/tool2", b"./usr/bin/tool"),
            E::Symlink(b"./usr/bin/t", b"tool"),
            E::File(b"./usr/share/doc/good/copyright", b"c"),
        ],
    );
    deb::read_deb(&mut tree, &cache, &good, "good.deb", &DebOptions::default()).unwrap();
    assert_tree_matches_dpkg(&tree, &good);
    let id = tree.lookup("usr/bin/tool").unwrap();
    assert_eq!(tree.lookup("usr/bin/tool2"), Some(id));
    assert_eq!(tree.inode(id).meta.perm, 0o644);
    let walk_before: Vec<_> = tree.walk().into_iter().map(|(p, _)| p).collect();
    let tar_dir = cache.root().join("tar");
    let tars_before = dir_names(&tar_dir);
    // The data tar and its record (sha256 and size, checked before each reuse).
    assert_eq!(tars_before.len(), 2, "{tars_before:?}");

    let cases: Vec<(&str, Vec<E>, &str, &str)> = vec![
        (
            "dotdot",
            vec![E::Dir(b"./"), E::File(b"./../x", b"x")],
            "./../x",
            "..",
        ),
        (
            "deepdotdot",
            vec![E::Dir(b"./usr/"), E::File(b"./usr/../../etc/x", b"x")],
            "./usr/../../etc/x",
            "..",
        ),
        (
            "absolute",
            vec![E::File(b"/etc/x", b"x")],
            "/etc/x",
            "absolute",
        ),
        (
            "symlinkescape",
            vec![
                E::Symlink(b"./a", b"/etc"),
                E::File(b"./a/passwd", b"root::0:0::/:/bin/sh\n"),
            ],
            "./a/passwd",
            "symlink /a -> /etc",
        ),
        (
            "hardlinkescape",
            vec![E::Hard(b"./shadow", b"../../etc/shadow")],
            "./shadow",
            "..",
        ),
        (
            // Through a symlink that an earlier package put in the tree.
            "throughtree",
            vec![E::File(b"./usr/bin/t/x", b"x")],
            "./usr/bin/t/x",
            "symlink /usr/bin/t -> tool",
        ),
    ];
    for (pkgname, entries, entry, reason) in cases {
        let d = make_deb(tmp.path(), pkgname, &entries);
        let err = deb::read_deb(&mut tree, &cache, &d, "label", &DebOptions::default())
            .expect_err(pkgname);
        let msg = err.to_string();
        assert!(matches!(err, DebError::Hostile { .. }), "{msg}");
        assert!(msg.contains(pkgname), "package not named: {msg}");
        assert!(msg.contains(entry), "entry not named: {msg}");
        assert!(msg.contains(reason), "reason missing: {msg}");
        let walk_now: Vec<_> = tree.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(walk_now, walk_before, "{pkgname} changed the tree");
        assert_eq!(
            dir_names(&tar_dir),
            tars_before,
            "{pkgname} left cache files"
        );
    }
    // A second package that provides the same file: error naming package and path.
    let dup = make_deb(tmp.path(), "dup", &[E::File(b"./usr/bin/tool", b"other")]);
    let msg = deb::read_deb(&mut tree, &cache, &dup, "dup", &DebOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dup") && msg.contains("usr/bin/tool"), "{msg}");
    // Nothing was ever written outside the cache (no extraction onto the host).
    assert!(!tmp.path().join("etc").exists() && !tmp.path().join("x").exists());
}

// ---------------------------------------------------------------- cache

#[test]
fn cache_refuses_wrong_sha_and_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("c")).unwrap();
    let f = tmp.path().join("blob");
    std::fs::write(&f, b"hello piimg").unwrap();
    let real = sha256sum(&f);
    let wrong = "ab".repeat(32);
    let err = cache.insert_file(&f, &wrong).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CacheError::Mismatch { .. }));
    assert!(msg.contains(&wrong) && msg.contains(&real), "{msg}");
    assert!(dir_names(&cache.root().join("sha256")).is_empty());
    assert!(!cache.has(&wrong) && !cache.has(&real));
    let p = cache.insert_file(&f, &real).unwrap();
    assert_eq!(p, cache.path_of(&real));
    assert!(cache.has(&real));
    assert_eq!(sha256sum(&p), real);
    assert_eq!(cache.list().unwrap(), vec![real.clone()]);
    cache.verify(&real).unwrap();
    // A wrong pin is refused even when the content is already cached.
    let g = tmp.path().join("other");
    std::fs::write(&g, b"different").unwrap();
    assert!(cache.insert_file(&g, &real).is_err());
}

#[test]
fn cache_lock_is_exclusive_and_concurrent_inserts_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let guard = cache.lock("apt-trixie").unwrap();
    let f = std::fs::File::open(tmp.path().join("locks/apt-trixie.lock")).unwrap();
    assert!(matches!(
        f.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    drop(guard);
    f.try_lock().unwrap();
    drop(f);
    // Eight threads store the same content at once: one file, right content, no temp files left.
    let data = vec![7u8; 3 << 20];
    let src = tmp.path().join("src");
    std::fs::write(&src, &data).unwrap();
    let sha = sha256sum(&src);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| cache.insert_file(&src, &sha).unwrap());
        }
    });
    assert_eq!(dir_names(&tmp.path().join("sha256")), vec![sha.clone()]);
    assert_eq!(sha256sum(cache.path_of(&sha)), sha);
}

// ---------------------------------------------------------------- lock

fn entry(name: &str, version: &str, source: &str, sha: Option<&str>) -> LockEntry {
    LockEntry {
        name: name.into(),
        version: version.into(),
        source: source.into(),
        sha256: sha.map(str::to_string),
        size: None,
        archive: None,
        depends: Vec::new(),
    }
}

#[test]
fn lock_roundtrip_is_sorted_deterministic_and_offline_names_every_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("c")).unwrap();
    let f = tmp.path().join("kubelet");
    std::fs::write(&f, b"fake kubelet").unwrap();
    let local = fetch::add_local("kubelet", "v1.31.4", &f, &cache).unwrap();
    assert_eq!(local.source, "local:kubelet");
    assert_eq!(local.sha256.as_deref(), Some(sha256sum(&f).as_str()));
    let a = entry(
        "runc",
        "1.1.15+ds1-2+b4",
        "debian:trixie/pool/main/r/runc/runc_1.1.15+ds1-2+b4_arm64.deb",
        Some(&"1".repeat(64)),
    );
    let b = entry(
        "busybox-static",
        "1:1.37.0-6+b9",
        "debian:trixie/pool/main/b/busybox/busybox-static_1.37.0-6+b9_arm64.deb",
        Some(&"2".repeat(64)),
    );
    let k: Vec<LockEntry> = fetch::kubernetes_artifacts("v1.31.4", "v1.31.1")
        .iter()
        .map(|a| a.lock_entry())
        .collect();
    let mut l1 = Lock::new();
    for e in [a.clone(), b.clone()].into_iter().chain(k.clone()) {
        l1.upsert(e);
    }
    let mut l2 = Lock::new();
    for e in k.iter().rev().cloned().chain([b.clone(), a.clone()]) {
        l2.upsert(e);
    }
    assert_eq!(l1.to_toml().unwrap(), l2.to_toml().unwrap());
    // A local override replaces the URL component of the same name.
    l1.upsert(local.clone());
    let kubelets: Vec<_> = l1
        .components
        .iter()
        .filter(|e| e.name == "kubelet")
        .collect();
    assert_eq!(kubelets, [&local]);
    let p = tmp.path().join("piimg.lock");
    l1.save(&p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let names: Vec<&str> = parsed["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(Lock::load(&p).unwrap(), {
        let mut l = l1.clone();
        l.sort();
        l
    });
    // No temp files left next to the lock.
    assert_eq!(dir_names(tmp.path()), ["c", "kubelet", "piimg.lock"]);
    // Offline: every missing component named with version and sha256; the local one is cached.
    let err = l1.check_offline(&cache).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LockError::Missing(ref v) if v.len() == 2 + 3),
        "{msg}"
    );
    for e in [&a, &b] {
        assert!(msg.contains(&e.name) && msg.contains(&e.version), "{msg}");
        assert!(msg.contains(e.sha256.as_deref().unwrap()), "{msg}");
    }
    assert!(
        msg.contains("kubeadm") && msg.contains("<not pinned>"),
        "{msg}"
    );
    assert!(!msg.contains(local.sha256.as_deref().unwrap()), "{msg}");
    // A broken lock is refused with the component named.
    std::fs::write(
        &p,
        "version = 1\n[[component]]\nname = \"x\"\nversion = \"1\"\nsource = \"debian:trixie/pool/x.deb\"\n",
    )
    .unwrap();
    let msg = Lock::load(&p).unwrap_err().to_string();
    assert!(
        msg.contains("component x") && msg.contains("sha256"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- URL artifacts

/// Serves `files` (path -> bytes) over HTTP/1.0 on 127.0.0.1 until the test ends.
fn serve(files: BTreeMap<String, Vec<u8>>) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let resp = match files.get(&path) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = s.write_all(&resp);
        }
    });
    format!("http://{addr}")
}

#[derive(Default)]
struct Count {
    begun: AtomicU64,
    bytes: AtomicU64,
    ended: AtomicU64,
}
impl Reporter for Count {
    fn begin(&self, _: &str, _: Option<u64>) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::SeqCst);
    }
    fn end(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn url_fetch_pins_reports_progress_and_refuses_mismatch() {
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("body"), &body).unwrap();
    let sha = sha256sum(tmp.path().join("body"));
    let mut files = BTreeMap::new();
    files.insert("/kubelet".to_string(), body.clone());
    files.insert(
        "/kubelet.sha256".to_string(),
        format!("{sha}  kubelet\n").into_bytes(),
    );
    files.insert("/bad".to_string(), b"tampered".to_vec());
    files.insert(
        "/bad.sha256".to_string(),
        format!("{}\n", "d".repeat(64)).into_bytes(),
    );
    let base = serve(files);
    let cache = Cache::open(tmp.path().join("c")).unwrap();

    // Wrong pin: error naming both hashes, nothing kept.
    let wrong = "c".repeat(64);
    let err = fetch::fetch_url(
        "kubelet",
        &format!("{base}/kubelet"),
        Some(&wrong),
        &cache,
        &Silent,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&wrong) && err.contains(&sha), "{err}");
    assert!(dir_names(&cache.root().join("sha256")).is_empty());

    // Right pin: stored under its hash, progress counted every byte.
    let rep = Count::default();
    let got = fetch::fetch_url(
        "kubelet",
        &format!("{base}/kubelet"),
        Some(&sha),
        &cache,
        &rep,
    )
    .unwrap();
    assert_eq!(got, sha);
    assert_eq!(sha256sum(cache.path_of(&sha)), sha);
    assert_eq!(rep.bytes.load(Ordering::SeqCst), body.len() as u64);
    assert_eq!(rep.begun.load(Ordering::SeqCst), 1);
    assert_eq!(rep.ended.load(Ordering::SeqCst), 1);

    // `fetch --update` path: pin from the published .sha256, which a tampered file fails.
    let a = fetch::UrlArtifact {
        name: "kubelet".into(),
        version: "v0".into(),
        url: format!("{base}/kubelet"),
        sha256: None,
    };
    assert_eq!(
        fetch::pin_and_fetch(&a, &cache, &Silent).unwrap().sha256,
        Some(sha.clone())
    );
    let bad = fetch::UrlArtifact {
        url: format!("{base}/bad"),
        ..a.clone()
    };
    let err = fetch::pin_and_fetch(&bad, &cache, &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert_eq!(dir_names(&cache.root().join("sha256")), vec![sha.clone()]);

    // 404 and plain http to a non-loopback host are errors.
    let err = fetch::fetch_url("x", &format!("{base}/nope"), None, &cache, &Silent).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert!(
        fetch::fetch_url("x", "http://example.invalid/kubelet", None, &cache, &Silent).is_err()
    );
    // Real default URLs are https and unpinned (filled by `piimg fetch --update`).
    for a in fetch::kubernetes_artifacts(fetch::DEFAULT_KUBERNETES, fetch::DEFAULT_CRICTL) {
        assert!(a.url.starts_with("https://") && a.sha256.is_none(), "{a:?}");
        fetch::check_url(&a.url).unwrap();
    }
}

// ---------------------------------------------------------------- kernel modules

/// `readelf -p .modinfo` of a module file: the key=value strings.
fn readelf_modinfo(path: &Path) -> Vec<String> {
    text_of(Command::new("readelf").args(["-p", ".modinfo"]).arg(path))
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, s)| s.trim().to_string()))
        .collect()
}

#[test]
fn kernel_modules_closure_matches_modinfo_and_depmod() {
    let s = shared();
    let kernel = apt::kernel_package(&s.resolved.packages).unwrap().clone();
    let release = apt::kernel_release(&kernel.name).unwrap().to_string();
    s.trixie
        .download(std::slice::from_ref(&kernel), &s.cache, &Silent)
        .unwrap();
    let mut tree = Tree::new(Meta::root(0o755, 0));
    deb::read_cached_deb(
        &mut tree,
        &s.cache,
        &kernel.sha256,
        &kernel.name,
        &DebOptions::default(),
    )
    .unwrap();
    assert!(tree.lookup(format!("boot/vmlinuz-{release}")).is_some());
    assert!(tree
        .lookup(format!(
            "usr/lib/linux-image-{release}/broadcom/bcm2711-rpi-4-b.dtb"
        ))
        .is_some());
    let set = ModuleSet::from_tree(&tree, None).unwrap();
    assert_eq!(set.release, release);
    assert!(set.modules.len() > 1000, "{}", set.modules.len());

    // Names may use - or _.
    let wanted = [
        "ext4",
        "sdhci-iproc",
        "bcm2835",
        "overlay",
        "br_netfilter",
        "vfat",
    ];
    let closure = set.closure(&wanted, false).unwrap();
    for m in [
        "ext4",
        "jbd2",
        "mbcache",
        "crc16",
        "sdhci_iproc",
        "sdhci",
        "bridge",
    ] {
        assert!(closure.iter().any(|c| c == m), "{m} not in {closure:?}");
    }
    assert!(set.closure(&["no-such-module"], false).is_err());

    // Write the selected modules out (test only) and compare with tools we did not write.
    let tmp = tempfile::tempdir().unwrap();
    let mdir = tmp.path().join("lib/modules").join(&release);
    for name in &closure {
        let m = &set.modules[name];
        let id = tree.lookup(format!("{}/{}", set.dir, m.path)).unwrap();
        let InodeKind::File(d) = &tree.inode(id).kind else {
            panic!()
        };
        let dest = mdir.join(&m.path);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, d.read_all().unwrap()).unwrap();
        if m.path.ends_with(".ko.xz") {
            run(Command::new("xz").arg("-dk").arg(&dest));
            let plain = dest.with_extension("");
            let strings = readelf_modinfo(&plain);
            let dep = strings
                .iter()
                .find_map(|s| s.strip_prefix("depends="))
                .unwrap_or("");
            let theirs: Vec<String> = dep
                .split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.replace('-', "_"))
                .collect();
            assert_eq!(m.depends, theirs, "{name}");
            let aliases: Vec<&str> = strings
                .iter()
                .filter_map(|s| s.strip_prefix("alias="))
                .collect();
            assert_eq!(m.aliases, aliases, "{name}");
            assert!(strings
                .iter()
                .any(|s| *s == format!("vermagic={}", m.vermagic)));
            std::fs::remove_file(&plain).unwrap();
        }
    }
    let ext4 = &set.modules["ext4"];
    for d in ["jbd2", "mbcache", "crc16"] {
        assert!(ext4.depends.iter().any(|x| x == d), "{:?}", ext4.depends);
    }
    assert_eq!(
        ext4.vermagic.split_whitespace().next(),
        Some(release.as_str())
    );

    // depmod (kmod) on exactly these modules must produce the same dependencies.
    run(Command::new("depmod")
        .arg("-b")
        .arg(tmp.path())
        .arg(&release));
    let parse = |text: &str| -> BTreeMap<String, Vec<String>> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (m, deps) = l.split_once(':').unwrap();
                (
                    m.to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                )
            })
            .collect()
    };
    let theirs = parse(&std::fs::read_to_string(mdir.join("modules.dep")).unwrap());
    let ours_text = set.modules_dep(&closure);
    let ours = parse(&ours_text);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (m, deps) in &ours {
        let mut a = deps.clone();
        let mut b = theirs[m].clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{m}");
        // Every module is listed before anything it needs (modprobe loads from the end).
        for (i, d) in deps.iter().enumerate() {
            let dn = set.modules.values().find(|x| &x.path == d).unwrap();
            for later_need in &dn.depends {
                let lp = &set.modules[later_need].path;
                let j = deps.iter().position(|x| x == lp).unwrap();
                assert!(j > i, "{m}: {d} listed after its dependency {lp}");
            }
        }
    }
    // Aliases: same (alias, module) pairs as depmod's modules.alias.
    let pairs = |t: &str| -> Vec<String> {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| l.starts_with("alias "))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let theirs_alias = std::fs::read_to_string(mdir.join("modules.alias")).unwrap();
    assert_eq!(pairs(&set.modules_alias(&closure)), pairs(&theirs_alias));
    let soft = set.modules_softdep(&closure);
    let theirs_soft = std::fs::read_to_string(mdir.join("modules.softdep")).unwrap();
    let lines = |t: &str| -> Vec<String> {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| l.starts_with("softdep "))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(lines(&soft), lines(&theirs_soft));
    // Deterministic output.
    assert_eq!(ours_text, set.modules_dep(&closure));
}
