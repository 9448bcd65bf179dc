//! Builds killed at random moments and builds running side by side. After every kill the
//! outputs are either absent or one consistent set (the manifest's sha256 is the image's and
//! its .sha256 file's), secrets are never readable by others, and the next build leaves no
//! `.partial` behind. Eight builds of different nodes into one folder all succeed.
//!
//! CI kills 8 builds; PIIMG_KILLS=50 runs the full count. The figures are printed.

mod common;
use common::piimg::{Piimg, Run};
use common::project::{project, Project};
use common::KUBE_STANDINS;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn crash_project(name: &str) -> Project {
    project()
        .lock()
        .create_fresh(&format!("build-crash-{name}"))
}

/// `piimg -q build` of `node` into out/.
fn build(project: &Project, node: &str) -> Piimg {
    let c = project
        .piimg()
        .args(["-q", "build", "--profile", node, "--out", "out"]);
    // Kubernetes nodes take the stand-in kubelet/kubeadm/kubectl.
    if matches!(node, "lb1" | "qemu") {
        c
    } else {
        c.standins(&KUBE_STANDINS)
    }
}

/// sha256 of an image, its holes hashed as zeros without reading them (a 4 GiB image with
/// 300 MB of data: sha256sum would read all 4 GiB after every kill).
fn sha256_of(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    hex::encode(piimg::fs::sparse::sha256_file(&mut f).unwrap())
}

/// The set of `node` in `out` is absent or consistent; its files are 0600 when it holds secrets.
fn check_set(out: &Path, node: &str, secret: bool) -> &'static str {
    let manifest = out.join(format!("{node}.manifest.json"));
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        return "no manifest";
    };
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let img = out.join(format!("{node}.img"));
    let side = std::fs::read_to_string(out.join(format!("{node}.img.sha256"))).unwrap();
    let want = m["sha256"].as_str().unwrap();
    assert!(
        side.starts_with(want),
        "{node}: .sha256 {side} vs manifest {want}"
    );
    assert_eq!(
        sha256_of(&img),
        want,
        "{node}: the image is not the manifest's"
    );
    for f in [
        img.clone(),
        out.join(format!("{node}.img.bmap")),
        manifest.clone(),
    ] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        if secret {
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    "complete"
}

fn partials(out: &Path) -> Vec<String> {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_builds_leave_a_whole_set_or_none() {
    let p = crash_project("kills");
    let out = p.root().join("out");
    // The reference set, then how long a warm build takes (the window the kills fall in).
    build(&p, "w1").run().assert_ok();
    let t0 = Instant::now();
    build(&p, "w1").run().assert_ok();
    let full = t0.elapsed();
    check_set(&out, "w1", true);
    let kills: u32 = std::env::var("PIIMG_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let (mut complete, mut absent) = (0, 0);
    // A fixed xorshift: the moments differ from kill to kill but not from run to run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..kills {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = Duration::from_millis(x % (full.as_millis() as u64 + 200));
        // Every other round starts from nothing, so kills also land in a first build; the
        // others kill a rebuild over a complete set, which must survive it.
        if i % 2 == 1 {
            let _ = std::fs::remove_dir_all(&out);
        } else if check_set(&out, "w1", true) != "complete" {
            build(&p, "w1").run().assert_ok();
        }
        let running = build(&p, "w1").spawn();
        std::thread::sleep(at);
        running.kill();
        match check_set(&out, "w1", true) {
            "complete" => complete += 1,
            // A killed rebuild may have reached its commit (the manifest is removed first, then
            // the renames): then the set is gone, never half-replaced.
            _ => absent += 1,
        }
        if let Ok(md) = std::fs::metadata(&out) {
            if out.join("w1.img").exists() {
                assert_eq!(md.permissions().mode() & 0o077, 0, "out/ open to others");
            }
        }
    }
    // The next build clears what the killed ones left and completes the set.
    build(&p, "w1").run().assert_ok();
    assert_eq!(check_set(&out, "w1", true), "complete");
    assert!(partials(&out).is_empty(), "{:?}", partials(&out));
    eprintln!(
        "KILLS: {kills} builds killed within {:.1} s of their start (half over a complete set): {complete} left a complete set, {absent} left none, 0 inconsistent; the next build left no .partial",
        full.as_secs_f64() + 0.2
    );
}

#[test]
fn eight_builds_of_different_nodes_into_one_folder() {
    let p = crash_project("concurrent");
    let out = p.root().join("out");
    let nodes = [
        "lb1",
        "cp1",
        "cp2",
        "cp3",
        "w1",
        "w2",
        "qemu",
        "qemu-worker",
    ];
    let t0 = Instant::now();
    let running: Vec<_> = nodes.iter().map(|n| build(&p, n).spawn()).collect();
    for r in running {
        r.wait().assert_ok();
    }
    for n in nodes {
        let secret = !(n == "lb1" || n == "qemu");
        assert_eq!(check_set(&out, n, secret), "complete", "{n}");
    }
    assert!(partials(&out).is_empty(), "{:?}", partials(&out));
    eprintln!(
        "CONCURRENT: 8 builds in {:.1} s, every set complete and consistent",
        t0.elapsed().as_secs_f64()
    );
}

/// `piimg ARGS` with the stand-ins for every Kubernetes node.
fn run_piimg(project: &Project, args: &[&str]) -> Run {
    project.piimg().args(args).standins(&KUBE_STANDINS).run()
}

/// `build --cluster`: every node of the cluster and no other, each with the bytes its own
/// `build --profile` gives; an unknown cluster writes nothing; a node that fails leaves the
/// others built and is named.
#[test]
fn a_cluster_build_gives_each_node_the_bytes_of_its_own_build() {
    let p = crash_project("cluster");
    let t0 = Instant::now();
    run_piimg(&p, &["-q", "build", "--cluster", "home", "--jobs", "2"]).assert_ok();
    let took = t0.elapsed();
    let out = p.root().join("out");
    for n in ["lb1", "cp1", "cp2", "cp3", "w1", "w2"] {
        assert_eq!(check_set(&out, n, n != "lb1"), "complete", "{n}");
    }
    for n in ["qemu", "qemu-worker", "qemu-ha-lb1", "qemu-ha-w1"] {
        assert!(
            !out.join(format!("{n}.img")).exists(),
            "{n} is not in cluster home"
        );
    }
    for n in ["lb1", "w1"] {
        run_piimg(&p, &["-q", "build", "--profile", n, "--out", "single"]).assert_ok();
        assert_eq!(
            sha256_of(&p.root().join("single").join(format!("{n}.img"))),
            sha256_of(&out.join(format!("{n}.img"))),
            "{n}: cluster build and single build differ"
        );
    }

    let o = run_piimg(&p, &["build", "--cluster", "nosuch", "--out", "none"]);
    o.assert_code(1);
    let err = &o.stderr;
    assert!(
        err.contains(
            "no node profiles in cluster `nosuch`; clusters here: home, qemu, qemu-ha, qemu-worker"
        ),
        "{err}"
    );
    assert!(!p.root().join("none").exists());

    // w2 names a component file that is not there: w2 fails, the rest are built.
    p.append("w2", "[components]\ncontainerd = \"no-such-containerd\"");
    let o = run_piimg(&p, &["build", "--cluster", "home", "--out", "partly"]);
    o.assert_code(1);
    let err = &o.stderr;
    assert!(err.contains("piimg: failed: w2"), "{err}");
    assert!(err.contains("5 of 6 nodes built"), "{err}");
    let partly = p.root().join("partly");
    assert_eq!(check_set(&partly, "w1", true), "complete");
    assert_eq!(check_set(&partly, "w2", true), "no manifest");
    assert!(partials(&partly).is_empty());
    eprintln!(
        "CLUSTER: 6 nodes with --jobs 2 in {:.1} s",
        took.as_secs_f64()
    );
}
