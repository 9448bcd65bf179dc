//! Cache fault injection: damage cached objects (delete, truncate to 0 and to half, flip one bit)
//! and build lb1 `--offline`. No fault may give a silently different image: each case either
//! rebuilds the identical image (what can be made again from the cache: decompressed data tars)
//! or fails naming the object (a .deb that only the network could bring back).
//!
//! CI runs a sample (two .debs and two data tars, every fault); PIIMG_FAULTS=all runs every
//! object lb1 uses. The figures are printed.

mod common;
use common::project::{project, Project};
use common::{fresh_dir, read_json};

use std::path::{Path, PathBuf};

/// `piimg ARGS` in the project with `cache` as its download cache: whether it succeeded, and
/// what it printed.
fn piimg(project: &Project, cache: &Path, args: &[&str]) -> (bool, String) {
    let r = project.piimg().cache(cache).args(args).run();
    (r.success(), r.combined())
}

fn image_sha(out: &Path) -> String {
    std::fs::read_to_string(out.join("lb1.img.sha256"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Delete,
    Empty,
    Half,
    FlipBit,
}

fn inject(path: &Path, f: Fault) {
    match f {
        Fault::Delete => std::fs::remove_file(path).unwrap(),
        Fault::Empty => std::fs::File::create(path).unwrap().set_len(0).unwrap(),
        Fault::Half => {
            let len = std::fs::metadata(path).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
        Fault::FlipBit => {
            let mut b = std::fs::read(path).unwrap();
            let i = b.len() / 3;
            b[i] ^= 0x10;
            std::fs::write(path, b).unwrap();
        }
    }
}

/// A copy of a cache made of hard links (fast); the one file to damage is copied for real.
fn link_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            link_dir(&e.path(), &t);
        } else {
            std::fs::hard_link(e.path(), &t).unwrap();
        }
    }
}

#[test]
fn damaged_cache_objects_never_give_a_different_image() {
    let w = fresh_dir("cache-faults");
    let project = project().lock().create_in(&w.join("project"));
    // A private cache, so that damaging it disturbs no other test.
    let good = w.join("good-cache");
    let (ok, text) = piimg(
        &project,
        &good,
        &["-q", "build", "--profile", "lb1", "--out", "ref"],
    );
    assert!(ok, "{text}");
    let reference = image_sha(&project.root().join("ref"));
    let manifest = read_json(&project.root().join("ref/lb1.manifest.json"));
    let debs: Vec<(String, String)> = manifest["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let all = std::env::var("PIIMG_FAULTS").is_ok_and(|v| v == "all");
    let sample: Vec<&(String, String)> = if all {
        debs.iter().collect()
    } else {
        debs.iter()
            .filter(|(n, _)| n == "busybox-static" || n.starts_with("linux-image-6"))
            .collect()
    };
    assert!(!sample.is_empty(), "{debs:?}");
    let mut objects: Vec<(String, PathBuf, bool)> = Vec::new();
    for (name, sha) in &sample {
        objects.push((
            format!("{name}.deb"),
            PathBuf::from(format!("piimg/sha256/{sha}")),
            false,
        ));
        objects.push((
            format!("{name} data tar"),
            PathBuf::from(format!("piimg/tar/{sha}.tar")),
            true,
        ));
    }
    let (mut same, mut named) = (0, 0);
    for (what, rel, rebuildable) in &objects {
        for fault in [Fault::Delete, Fault::Empty, Fault::Half, Fault::FlipBit] {
            let cache = w.join("cache");
            let _ = std::fs::remove_dir_all(&cache);
            link_dir(&good, &cache);
            let target = cache.join(rel);
            assert!(target.is_file(), "{} is not cached", target.display());
            std::fs::remove_file(&target).unwrap();
            std::fs::copy(good.join(rel), &target).unwrap();
            inject(&target, fault);
            let out = project.root().join("out");
            let _ = std::fs::remove_dir_all(&out);
            let (ok, text) = piimg(
                &project,
                &cache,
                &[
                    "-q",
                    "build",
                    "--offline",
                    "--profile",
                    "lb1",
                    "--out",
                    "out",
                ],
            );
            if ok {
                assert_eq!(
                    image_sha(&out),
                    reference,
                    "{what} {fault:?}: the build succeeded with a different image"
                );
                assert!(*rebuildable, "{what} {fault:?}: built without its .deb?");
                same += 1;
            } else {
                let sha = rel
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace(".tar", "");
                let pkg = what.split(' ').next().unwrap().trim_end_matches(".deb");
                assert!(
                    text.contains(&sha) || text.contains(pkg),
                    "{what} {fault:?}: the error names neither the package nor the object: {text}"
                );
                assert!(
                    !out.join("lb1.img").exists(),
                    "{what} {fault:?}: left an image"
                );
                named += 1;
            }
        }
    }
    eprintln!(
        "FAULTS: {} cases over {} objects: {same} rebuilt the identical image, {named} failed naming the object, 0 silently different",
        objects.len() * 4,
        objects.len()
    );
}
