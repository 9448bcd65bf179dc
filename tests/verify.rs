//! `piimg verify`: two builds in different environments give the same bytes, and the comparison
//! names the partition and file when two images do differ.
//!
//! Needs Debian's archive for the first build on a machine (packages are cached in
//! target/tmp/piimg-test-cache), `faketime` (so the build clock really differs) and e2fsprogs.

mod common;
use common::checkers::tool;
use common::project::{project, Project};

use std::path::Path;
use std::process::Command;

/// A temporary project holding one profile and the repository's lock.
fn project_with(profile: &str) -> Project {
    project()
        .only(&[profile])
        .lock()
        .create_temp("piimg-verify-")
}

#[test]
fn two_builds_in_different_environments_are_identical() {
    let ft = Command::new("faketime")
        .args(["-f", "+1d", "true"])
        .status();
    assert!(
        ft.is_ok_and(|s| s.success()),
        "faketime is needed to vary the build clock: apt-get install faketime"
    );
    let p = project_with("qemu");
    let keep = p.root().join("builds");
    let o = p
        .piimg_cached()
        .args(["verify", "--profile", "qemu", "--keep"])
        .arg(&keep)
        .run();
    o.assert_ok();
    let (out, err) = (&o.stdout, &o.stderr);
    assert!(out.starts_with("identical: sha256 "), "{out}");
    // Both environments were really used, the clock included.
    assert!(
        err.contains("TZ=UTC LC_ALL=C umask 022 clock real"),
        "{err}"
    );
    assert!(err.contains("umask 077 clock +1234d"), "{err}");
    let a = std::fs::read(keep.join("build1/qemu.img.sha256")).unwrap();
    let b = std::fs::read(keep.join("build2/qemu.img.sha256")).unwrap();
    assert_eq!(a, b);
    let sha = String::from_utf8_lossy(&a);
    assert!(out.contains(sha.split_whitespace().next().unwrap()));
}

#[test]
fn a_different_build_time_is_found_and_located() {
    let p = project_with("qemu");
    let mut imgs = Vec::new();
    for (i, epoch) in ["1767225600", "1767312000"].iter().enumerate() {
        let out = p.root().join(format!("out{i}"));
        p.piimg_cached()
            .epoch(epoch)
            .args(["--quiet", "build", "--profile", "qemu", "--out"])
            .arg(&out)
            .run()
            .assert_ok();
        imgs.push((out.join("qemu.img"), out.join("qemu.manifest.json")));
    }
    let cmp =
        piimg::verify::compare([&imgs[0].0, &imgs[1].0], Some([&imgs[0].1, &imgs[1].1])).unwrap();
    let report = cmp.report();
    eprintln!("{report}");
    assert!(!cmp.identical);
    assert!(report.starts_with("DIFFERENT: sha256 "));
    assert!(
        cmp.manifest
            .iter()
            .any(|m| m == "field source_date_epoch differs (1767225600 vs 1767312000)"),
        "{report}"
    );
    // Timestamps live in every filesystem: each partition is named, with what differs there.
    let boot = cmp
        .partitions
        .iter()
        .find(|d| d.number == Some(1))
        .unwrap_or_else(|| panic!("no difference found in the boot partition:\n{report}"));
    assert!(boot.partition.contains("boot") && boot.partition.contains("FAT32"));
    let what = boot.what.as_deref().unwrap_or("");
    assert!(
        what.starts_with("directory /, "),
        "boot difference not located in the root directory: {what}"
    );
    // The first entry that differs after the label is a file's, named.
    let file = boot.first_file.as_deref().unwrap_or(what);
    assert!(
        file.contains("entry of \"") || file.starts_with("content of /"),
        "no file named in the boot partition: {boot}"
    );
    let root = cmp
        .partitions
        .iter()
        .find(|d| d.number == Some(2))
        .unwrap_or_else(|| panic!("no difference found in the root partition:\n{report}"));
    assert!(root.partition.contains("root") && root.partition.contains("ext4"));
    let what = root.what.as_deref().unwrap_or("");
    // The first difference of an ext4 built at another time: the superblock's times, or an
    // inode's times (then named with its path via debugfs ncheck).
    assert!(
        what.contains("superblock") || what.contains("inode"),
        "root difference not located: {what}"
    );
    let file = root.first_file.as_deref().unwrap_or(what);
    assert!(
        file.contains("inode ") && file.contains(" /"),
        "no file named in the root partition: {root}"
    );
    // The located offsets really differ, as a tool we did not write sees them.
    for d in &cmp.partitions {
        let byte = |img: &Path| {
            let o = tool(
                Command::new("cmp")
                    .arg(img)
                    .arg(&imgs[1].0)
                    .arg("-i")
                    .arg(format!("{}", d.disk_offset))
                    .arg("-n")
                    .arg("1"),
            );
            o.status.code()
        };
        assert_eq!(byte(&imgs[0].0), Some(1), "{d}");
    }
}

#[test]
fn a_worker_with_secrets_and_local_components_builds_identically() {
    let p = project_with("qemu-worker");
    let o = p
        .piimg_cached()
        .args(["verify", "--profile", "qemu-worker"])
        .standins(&["kubelet", "kubeadm"])
        .run();
    o.assert_ok();
    assert!(o.stdout.starts_with("identical: sha256 "), "{}", o.stdout);
    // The secrets file was generated once and both builds used it.
    assert!(p.secrets("qemu-worker").exists());
}
