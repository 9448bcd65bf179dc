//! The lock as a promise, against archives that move on: builds download every locked .deb by its
//! pool path and check it, never reading the index; a file the pool dropped comes from the
//! snapshot archive or fails the build with one clear error and nothing written; security updates
//! are reported by `fetch --outdated` and taken by `fetch --update`; a corrupt file never enters
//! the cache.
//!
//! The archive is a local one this test signs with its own key and serves on 127.0.0.1 (see
//! `repo.rs`), filled with the exact files of the committed piimg.lock, so nothing here depends
//! on the live mirror's state. Only the first test, the newcomer's path, reads the host's mirror:
//! it builds lb1 from the committed lock with an empty cache, so a lock that no longer builds
//! fails CI before it fails a new user.

// The harness lives beside the test binaries, not in this folder.
#[path = "../common/mod.rs"]
mod common;
mod repo;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::checkers::run;
use common::piimg::{Piimg, Run};
use common::project::project;
use common::{cache_home, dir_names, repo, sha256_file, temp_dir};
use repo::{Key, Server};

const SNAPSHOT: &str = "20260101T000000Z";
const SUPERSEDED: &str = "liblua5.4-0";

/// A project with the shipped profiles, the overlays and `lock`; `image` keys are set in lb1's
/// `[image]` table.
fn lb1_project(dir: &Path, lock: &Path, image: &[(&str, toml_edit::Value)]) {
    let p = project().lock_from(lock).overlays().create_in(dir);
    let mut doc: toml_edit::DocumentMut = p.read("lb1").parse().unwrap();
    for (k, v) in image {
        doc["image"][k] = toml_edit::Item::Value(v.clone());
    }
    p.write("lb1", &doc.to_string());
}

/// Runs piimg in `dir` with `cache` as XDG_CACHE_HOME and no proxy (traffic stays on loopback).
fn piimg(dir: &Path, cache: &Path, args: &[&str]) -> Run {
    Piimg::new()
        .cwd(dir)
        .cache(cache)
        .no_epoch()
        .no_proxy()
        .args(args)
        .run()
}

/// The files in a cache's content store.
fn cached(cache: &Path) -> BTreeSet<String> {
    std::fs::read_dir(cache.join("piimg/sha256"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of a folder, none if it does not exist (to show that nothing was written).
fn listing(dir: &Path) -> Vec<String> {
    if dir.exists() {
        dir_names(dir)
    } else {
        Vec::new()
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
struct LockFile {
    component: Vec<Entry>,
    #[serde(default)]
    snapshot: Vec<toml::Value>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Entry {
    name: String,
    version: String,
    source: String,
    sha256: Option<String>,
    #[serde(default)]
    archive: Option<String>,
    #[serde(default)]
    depends: Vec<String>,
}

impl Entry {
    fn pool_path(&self) -> &str {
        self.source
            .strip_prefix("debian:trixie/")
            .unwrap_or_else(|| panic!("{} is not a trixie package", self.source))
    }
}

fn read_lock(p: &Path) -> LockFile {
    toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn debs(lock: &LockFile) -> Vec<&Entry> {
    lock.component
        .iter()
        .filter(|e| e.source.starts_with("debian:"))
        .collect()
}

// ---------------------------------------------------------------- the newcomer's path

#[test]
fn committed_lock_builds_lb1_with_an_empty_cache() {
    let work = temp_dir("piimg-newcomer-");
    let cache = work.path().join("cache");
    let dir = work.path().join("project");
    lb1_project(&dir, &repo().join("piimg.lock"), &[]);
    let before = std::fs::read(dir.join("piimg.lock")).unwrap();
    let o = piimg(&dir, &cache, &["build", "--profile", "lb1", "--out", "out"]);
    o.assert_ok();
    let img = dir.join("out/lb1.img");
    let sum = std::fs::read_to_string(dir.join("out/lb1.img.sha256")).unwrap();
    assert!(sum.starts_with(&sha256_file(&img)), "{}", o.text());
    assert_eq!(
        std::fs::read(dir.join("piimg.lock")).unwrap(),
        before,
        "a build must not change the lock"
    );
    // Every locked package lb1 uses came from the pool into the empty cache, checked.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/lb1.manifest.json")).unwrap()).unwrap();
    let have = cached(&cache);
    for c in manifest["components"].as_array().unwrap() {
        let sha = c["sha256"].as_str().unwrap();
        assert!(have.contains(sha), "{c} is not in the cache");
    }
}

// ---------------------------------------------------------------- a local archive that moves on

/// The local archive: the committed lock's files at their pool paths (security ones in their own
/// archive), stubs for the maintainer-script packages piimg leaves out (apt needs them to
/// resolve), signed with a key made here.
struct Archive {
    _work: tempfile::TempDir,
    srv: PathBuf,
    server: Server,
    key: Key,
    lock: LockFile,
    lock_path: PathBuf,
    /// Files of the release archive per component, as published.
    main: Vec<PathBuf>,
    security: Vec<PathBuf>,
}

impl Archive {
    fn new() -> Archive {
        let work = temp_dir("piimg-archive-");
        let committed = repo().join("piimg.lock");
        // The committed lock's files, once, into the shared cache (from the host's mirror).
        let seed = work.path().join("seed");
        lb1_project(&seed, &committed, &[]);
        piimg(&seed, &cache_home(), &["fetch", "--profile", "lb1"]).assert_ok();
        let lock = read_lock(&committed);
        let srv = work.path().join("srv");
        let store = cache_home().join("piimg/sha256");
        let mut main = Vec::new();
        let mut security = Vec::new();
        for e in debs(&lock) {
            let root = if e.archive.as_deref() == Some("security") {
                "debian-security"
            } else {
                "debian"
            };
            let dest = srv.join(root).join(e.pool_path());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let src = store.join(e.sha256.as_deref().unwrap());
            if std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest).unwrap();
            }
            if root == "debian" {
                main.push(dest);
            } else {
                security.push(dest);
            }
        }
        // Stubs for every dependency the lock does not hold (dpkg, debconf, adduser, ...).
        let locked: BTreeSet<&str> = debs(&lock).iter().map(|e| e.name.as_str()).collect();
        let wanted: BTreeSet<&str> = debs(&lock)
            .iter()
            .flat_map(|e| e.depends.iter().map(String::as_str))
            .filter(|d| !locked.contains(d))
            .collect();
        for name in wanted {
            main.push(stub_deb(&srv.join("debian"), name));
        }
        let key = Key::new(work.path());
        let server = Server::start(&srv);
        let lock_path = work.path().join("committed.lock");
        std::fs::copy(&committed, &lock_path).unwrap();
        let a = Archive {
            _work: work,
            srv,
            server,
            key,
            lock,
            lock_path,
            main,
            security,
        };
        a.publish();
        a
    }

    fn publish(&self) {
        let comps = ["main", "non-free-firmware"];
        let map = |files: &[PathBuf]| BTreeMap::from([("main".to_string(), files.to_vec())]);
        let debian = self.srv.join("debian");
        repo::publish(&debian, "trixie", &comps, &map(&self.main), &self.key);
        repo::publish(&debian, "trixie-updates", &comps, &map(&[]), &self.key);
        repo::publish(
            &self.srv.join("debian-security"),
            "trixie-security",
            &comps,
            &map(&self.security),
            &self.key,
        );
    }

    /// lb1's `[image]` keys pointing at this archive.
    fn image(&self) -> Vec<(&'static str, toml_edit::Value)> {
        let url = self.server.url();
        vec![
            ("mirror", format!("{url}/debian").into()),
            ("security_mirror", format!("{url}/debian-security").into()),
            ("keyring", self.key.keyring().display().to_string().into()),
        ]
    }

    fn entry(&self, name: &str) -> &Entry {
        self.lock
            .component
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the committed lock"))
    }

    /// The published file of a locked package, in the archive it came from.
    fn file(&self, name: &str) -> PathBuf {
        let e = self.entry(name);
        let root = if e.archive.as_deref() == Some("security") {
            "debian-security"
        } else {
            "debian"
        };
        self.srv.join(root).join(e.pool_path())
    }
}

/// A package with nothing in it, standing for one piimg excludes.
fn stub_deb(archive_root: &Path, name: &str) -> PathBuf {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 99.0-piimgstub\nArchitecture: arm64\nMaintainer: piimg tests <t@piimg.invalid>\nDescription: stand-in for {name} (apt needs it to resolve; piimg leaves it out)\n"
        ),
    )
    .unwrap();
    let out = archive_root.join(format!("pool/main/stub/{name}_99.0-piimgstub_arm64.deb"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-b"])
        .arg(&root)
        .arg(&out));
    out
}

fn archive() -> &'static Archive {
    static A: OnceLock<Archive> = OnceLock::new();
    A.get_or_init(Archive::new)
}

/// Builds lb1 from `lock` against the local archive with a fresh cache (or `cache`); returns the
/// run, the output folder and the cache used.
fn build_from(
    a: &Archive,
    lock: &Path,
    extra: &[(&'static str, toml_edit::Value)],
    cache: Option<&Path>,
) -> (Run, PathBuf, PathBuf, tempfile::TempDir) {
    let work = temp_dir("piimg-lockbuild-");
    let dir = work.path().join("project");
    let mut image = a.image();
    image.extend(extra.iter().cloned());
    lb1_project(&dir, lock, &image);
    let cache = cache
        .map(Path::to_path_buf)
        .unwrap_or_else(|| work.path().join("cache"));
    let o = piimg(&dir, &cache, &["build", "--profile", "lb1", "--out", "out"]);
    (o, dir.join("out"), cache, work)
}

/// One test walks the archive through time: each step needs the state the previous one left.
#[test]
fn a_moving_archive_keeps_the_locks_promise() {
    let a = archive();
    // A library lb1 uses, from the release archive (not security): the archive supersedes it.
    let old = a.entry(SUPERSEDED).clone();
    assert_eq!(
        old.archive, None,
        "{SUPERSEDED} is locked from an update archive"
    );

    // 1. The committed lock against the local archive, empty cache: the same image as from the
    //    host's mirror (built offline from the shared cache).
    let reference = temp_dir("piimg-ref-");
    let rdir = reference.path().join("project");
    lb1_project(&rdir, &a.lock_path, &[]);
    piimg(
        &rdir,
        &cache_home(),
        &["build", "--offline", "--profile", "lb1", "--out", "out"],
    )
    .assert_ok();
    let want = sha256_file(&rdir.join("out/lb1.img"));
    a.server.clear_requests();
    let (o, out, cache1, _w1) = build_from(a, &a.lock_path, &[], None);
    o.assert_ok();
    assert_eq!(sha256_file(&out.join("lb1.img")), want, "{}", o.text());
    let reqs = a.server.requests();
    assert!(
        reqs.iter().any(|r| r.ends_with(old.pool_path())),
        "{SUPERSEDED} was not fetched by its pool path: {reqs:?}"
    );
    assert!(
        !reqs.iter().any(|r| r.contains("/dists/")),
        "a build from the lock read the archive's index: {reqs:?}"
    );

    // 2. The archive supersedes the library; the old file stays in the pool. The lock still
    //    builds, byte for byte, and `fetch --outdated` names the newer version (not security).
    let newer = format!("{}+piimgtest1", old.version);
    let new_file = a.file(SUPERSEDED).with_file_name(format!(
        "{SUPERSEDED}_{}_arm64.deb",
        newer.split_once(':').map_or(newer.as_str(), |x| x.1)
    ));
    repo::repack(&a.file(SUPERSEDED), &newer, &new_file);
    let mut main: Vec<PathBuf> = a
        .main
        .iter()
        .filter(|p| **p != a.file(SUPERSEDED))
        .cloned()
        .collect();
    main.push(new_file.clone());
    let comps = ["main", "non-free-firmware"];
    let debian = a.srv.join("debian");
    repo::publish(
        &debian,
        "trixie",
        &comps,
        &BTreeMap::from([("main".to_string(), main.clone())]),
        &a.key,
    );
    let (o, out, _, _w2) = build_from(a, &a.lock_path, &[], None);
    o.assert_ok();
    assert_eq!(sha256_file(&out.join("lb1.img")), want, "{}", o.text());

    // 3. A security update of zlib1g appears; `--outdated` reports both, marks the security
    //    one, exits 1; `--update` takes both and records where they came from.
    let zlib = a.entry("zlib1g").clone();
    let zlib_new = format!("{}+piimgsec1", zlib.version);
    let zlib_file = a.srv.join("debian-security").join(format!(
        "pool/updates/main/z/zlib/zlib1g_{}_arm64.deb",
        zlib_new.split_once(':').map_or(zlib_new.as_str(), |x| x.1)
    ));
    repo::repack(&a.file("zlib1g"), &zlib_new, &zlib_file);
    let mut security = a.security.clone();
    security.retain(|p| !p.ends_with(zlib.pool_path()));
    security.push(zlib_file.clone());
    repo::publish(
        &a.srv.join("debian-security"),
        "trixie-security",
        &comps,
        &BTreeMap::from([("main".to_string(), security)]),
        &a.key,
    );
    let upd = temp_dir("piimg-update-");
    let udir = upd.path().join("project");
    lb1_project(&udir, &a.lock_path, &a.image());
    let ucache = upd.path().join("cache");
    let o = piimg(
        &udir,
        &ucache,
        &["fetch", "--outdated", "--profile", "lb1", "--json"],
    );
    assert_eq!(o.code, Some(1), "{}", o.text());
    let list: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let found: BTreeMap<String, (String, String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                (
                    x["locked"].as_str().unwrap().to_string(),
                    x["available"].as_str().unwrap().to_string(),
                    x["security"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        found,
        BTreeMap::from([
            (
                SUPERSEDED.to_string(),
                (old.version.clone(), newer.clone(), false)
            ),
            (
                "zlib1g".to_string(),
                (zlib.version.clone(), zlib_new.clone(), true)
            ),
        ]),
        "{}",
        o.text()
    );
    let o = piimg(&udir, &ucache, &["fetch", "--outdated", "--profile", "lb1"]);
    let table = o.stdout.clone();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("zlib1g") && l.contains("[security]"))
            && table
                .lines()
                .any(|l| l.starts_with(SUPERSEDED) && !l.contains("[security]")),
        "{}",
        o.text()
    );
    let o = piimg(&udir, &ucache, &["fetch", "--update", "--profile", "lb1"]);
    o.assert_ok();
    let updated = read_lock(&udir.join("piimg.lock"));
    let get = |n: &str| updated.component.iter().find(|e| e.name == n).unwrap();
    assert_eq!(get(SUPERSEDED).version, newer, "{}", o.text());
    assert_eq!(get(SUPERSEDED).archive, None);
    assert_eq!(get("zlib1g").version, zlib_new);
    assert_eq!(get("zlib1g").archive.as_deref(), Some("security"));
    assert_eq!(
        get("zlib1g").sha256.as_deref(),
        Some(sha256_file(&zlib_file).as_str())
    );
    // Nothing else moved: the archive holds exactly the committed versions otherwise.
    let before: BTreeMap<&str, &str> = debs(&a.lock)
        .iter()
        .map(|e| (e.name.as_str(), e.version.as_str()))
        .collect();
    let after: BTreeMap<&str, &str> = debs(&updated)
        .iter()
        .map(|e| (e.name.as_str(), e.version.as_str()))
        .collect();
    let moved: Vec<&str> = after
        .iter()
        .filter(|(n, v)| before.get(*n) != Some(*v))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(moved, [SUPERSEDED, "zlib1g"], "{}", o.text());
    let o = piimg(&udir, &ucache, &["fetch", "--outdated", "--profile", "lb1"]);
    o.assert_ok();
    assert!(o.stdout.contains("newest"), "{}", o.text());

    // 4. The old version leaves the pool: a build from the old lock fails before writing
    //    anything, naming the package and the ways out.
    std::fs::remove_file(a.file(SUPERSEDED)).unwrap();
    let (o, out, cache4, _w4) = build_from(a, &a.lock_path, &[], None);
    assert_ne!(o.code, Some(0), "{}", o.text());
    let err = &o.stderr;
    for needle in [
        format!("{SUPERSEDED} {}", old.version),
        "piimg fetch --update".to_string(),
        "image.snapshot".to_string(),
        "--offline".to_string(),
    ] {
        assert!(err.contains(&needle), "no {needle:?} in:\n{}", o.text());
    }
    assert!(
        listing(&out).is_empty(),
        "a failed build left {:?}",
        listing(&out)
    );
    assert!(!cached(&cache4).contains(old.sha256.as_deref().unwrap()));

    // 5. With a snapshot named, the same lock builds again, byte for byte, from the snapshot.
    let snap = a
        .srv
        .join("snapshot/archive/debian")
        .join(SNAPSHOT)
        .join(old.pool_path());
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    std::fs::copy(
        cache1
            .join("piimg/sha256")
            .join(old.sha256.as_deref().unwrap()),
        &snap,
    )
    .unwrap();
    a.server.clear_requests();
    let (o, out, _, _w5) = build_from(
        a,
        &a.lock_path,
        &[
            ("snapshot", SNAPSHOT.into()),
            (
                "snapshot_mirror",
                format!("{}/snapshot", a.server.url()).into(),
            ),
        ],
        None,
    );
    o.assert_ok();
    assert_eq!(sha256_file(&out.join("lb1.img")), want, "{}", o.text());
    let reqs = a.server.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with(&format!("/snapshot/archive/debian/{SNAPSHOT}/pool/"))),
        "{reqs:?}"
    );

    // 6. A corrupt file at a locked path: refused, and the cache is exactly as before.
    let busybox = a.file("busybox-static");
    let good = std::fs::read(&busybox).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::remove_file(&busybox).unwrap(); // a hard link into the shared cache: never write through it
    std::fs::write(&busybox, &bad).unwrap();
    let work6 = temp_dir("piimg-corrupt-");
    let cache6 = work6.path().join("cache");
    let store6 = cache6.join("piimg/sha256");
    std::fs::create_dir_all(&store6).unwrap();
    let busybox_sha = a.entry("busybox-static").sha256.clone().unwrap();
    for sha in cached(&cache1) {
        if sha != busybox_sha {
            std::fs::copy(cache1.join("piimg/sha256").join(&sha), store6.join(&sha)).unwrap();
        }
    }
    let before = cached(&cache6);
    let (o, out, _, _w6) = build_from(a, &a.lock_path, &[], Some(&cache6));
    std::fs::write(&busybox, &good).unwrap();
    assert_ne!(o.code, Some(0), "{}", o.text());
    let err = &o.stderr;
    assert!(
        err.contains("busybox-static") && err.contains(&busybox_sha),
        "{}",
        o.text()
    );
    assert_eq!(cached(&cache6), before, "the cache changed");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    assert!(
        a.lock.snapshot.is_empty(),
        "the committed lock names a snapshot"
    );
}
