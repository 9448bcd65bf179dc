//! `piimg flash` on real block devices (loop devices; the tests run as root) and the artifacts
//! `piimg build` writes for other flashers. Checked with tools piimg did not write: sfdisk,
//! sgdisk, e2fsck, fsck.vfat, mdir, blkid, bmaptool, zstd, xz, sha256sum.
//!
//! The loop devices are common::loopdev's.

mod common;
use common::checkers::{e2fsck, fsck_vfat, partitions, run};
use common::fresh_dir;
use common::loopdev::LoopDev as Loop;
use common::piimg::{Piimg, BIN};
use common::project::{project, Project};

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const MIB: u64 = 1 << 20;

fn work(name: &str) -> PathBuf {
    fresh_dir(&format!("flash-{name}"))
}

/// Pseudo-random bytes, different per seed: a card's old contents.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Fills a device with noise and leaves an old GPT on it, as a used card would have.
fn used_card(l: &Loop, size: u64) {
    let chunk = noise(4 * MIB as usize, 7);
    let mut at = 0;
    while at < size {
        let n = chunk.len().min((size - at) as usize);
        l.write_at(at, &chunk[..n]);
        at += n as u64;
    }
    run(Command::new("sgdisk").args(["-o", "-n", "1:2048:+40M", "-n", "2:0:0", &l.dev]));
}

/// lb1 built from the shipped profiles and lock in a temp project, with both compressed copies.
struct Lb1 {
    out: PathBuf,
    project: Project,
}

fn lb1() -> &'static Lb1 {
    static S: OnceLock<Lb1> = OnceLock::new();
    S.get_or_init(|| {
        let w = work("lb1");
        let project = project().lock().create_in(&w.join("project"));
        let out = w.join("out");
        project
            .piimg()
            .args(["-q", "build", "--profile", "lb1"])
            .args(["--compress", "zstd", "--compress", "xz", "--out"])
            .arg(&out)
            .run()
            .assert_ok();
        Lb1 { out, project }
    })
}

/// (start, end) of every mapped range of a bmap.
fn mapped(bmap: &Path) -> Vec<(u64, u64)> {
    let m = piimg::bmap::Bmap::parse(&std::fs::read_to_string(bmap).unwrap()).unwrap();
    m.ranges.iter().map(|r| m.span(r)).collect()
}

/// `piimg flash ARGS`: whether it succeeded, and what it printed.
fn flash(args: &[&str]) -> (bool, String) {
    let r = Piimg::new().arg("flash").args(args).run();
    (r.success(), r.combined())
}

#[test]
fn lb1_over_a_used_card_leaves_only_the_image_visible() {
    let b = lb1();
    let img = b.out.join("lb1.img");
    let size = 1536 * MIB;
    let w = work("used-card");
    let l = Loop::new_file(&w.join("card"), size);
    used_card(&l, size);
    // An old ISO 9660 volume descriptor 32 KiB into where the root partition will start: a
    // block the new ext4 leaves free. blkid then sees two filesystems ("ambivalent result") and
    // mounting by label fails, unless the flasher clears it.
    let parts = partitions(&img);
    for (start, _) in &parts[1..] {
        l.write_at(start + 32768, b"\x01CD001\x01");
    }
    let (ok, text) = flash(&[
        b.out.join("lb1.img.zst").to_str().unwrap(),
        &l.dev,
        "--yes",
        "--allow-fixed",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("read back and verified"), "{text}");

    // Every mapped range holds the image's bytes.
    let image = std::fs::File::open(&img).unwrap();
    let mut mapped_bytes = 0;
    for (s, e) in mapped(&b.out.join("lb1.img.bmap")) {
        let mut want = vec![0u8; (e - s) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&image, &mut want, s).unwrap();
        assert!(l.read_at(s, e - s) == want, "range {s}..{e} differs");
        mapped_bytes += e - s;
    }
    assert!(text.contains(&piimg::units::human(mapped_bytes)), "{text}");
    // The first and last MiB of the card and of every partition read as in the image (zeros
    // where it has no data); the old GPT's backup at the card's end is gone.
    let mut spots = vec![(0, MIB)];
    for (s, len) in &parts {
        spots.push((*s, s + MIB));
        spots.push((s + len - MIB, s + len));
    }
    for (s, e) in spots {
        let mut want = vec![0u8; (e - s) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&image, &mut want, s).unwrap();
        assert!(
            l.read_at(s, e - s) == want,
            "bytes {s}..{e} differ from the image"
        );
    }
    assert!(l.read_at(size - MIB, MIB).iter().all(|&b| b == 0));

    run(Command::new("sfdisk").args(["--verify", &l.dev]));
    let whole = run(Command::new("wipefs").args(["--no-act", &l.dev]));
    assert!(
        whole.contains("dos") && !whole.contains("gpt") && !whole.contains("ext4"),
        "{whole}"
    );
    l.add_partitions();
    for (n, ty) in [(1, "vfat"), (2, "ext4"), (3, "ext4")] {
        let t = run(Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE", &l.part(n)]));
        assert_eq!(t.trim(), ty, "partition {n}");
    }
    e2fsck(l.part(2));
    e2fsck(l.part(3));
    fsck_vfat(l.part(1));
    let dir = run(Command::new("mdir").args(["-i", &l.part(1), "::/"]));
    assert!(dir.contains("config") && dir.contains("txt"), "{dir}");
}

#[test]
fn flash_writes_what_bmaptool_writes_and_the_artifacts_decompress_to_the_image() {
    let b = lb1();
    let img = b.out.join("lb1.img");
    for f in ["lb1.img.sha256", "lb1.img.zst.sha256", "lb1.img.xz.sha256"] {
        run(Command::new("sha256sum")
            .args(["-c", f])
            .current_dir(&b.out));
    }
    let w = work("vs-bmaptool");
    for (codec, tool) in [("zst", "zstd"), ("xz", "xz")] {
        let back = w.join(format!("back-{codec}"));
        let out = run(Command::new("sh").arg("-c").arg(format!(
            "{tool} -dc {} > {}",
            b.out.join(format!("lb1.img.{codec}")).display(),
            back.display()
        )));
        run(Command::new("cmp").arg(&back).arg(&img));
        let _ = (out, std::fs::remove_file(&back));
    }
    // bmaptool's own block map of the image, read by piimg.
    let theirs = w.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    run(Command::new("cp")
        .args(["--sparse=always"])
        .arg(&img)
        .arg(theirs.join("lb1.img")));
    run(Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(theirs.join("lb1.img.bmap"))
        .arg(theirs.join("lb1.img")));

    let size = 1280 * MIB;
    let a = Loop::new_file(&w.join("a"), size);
    let (ok, text) = flash(&[
        b.out.join("lb1.img.xz").to_str().unwrap(),
        &a.dev,
        "--yes",
        "--allow-fixed",
    ]);
    assert!(ok, "{text}");
    let c = Loop::new_file(&w.join("c"), size);
    let (ok, text) = flash(&[
        theirs.join("lb1.img").to_str().unwrap(),
        &c.dev,
        "--yes",
        "--allow-fixed",
    ]);
    assert!(ok, "{text}");
    let bm = Loop::new_file(&w.join("b"), size);
    run(Command::new("bmaptool")
        .args(["-q", "copy"])
        .arg(b.out.join("lb1.img.zst"))
        .arg(&bm.dev));
    let want = bm.sha256();
    assert_eq!(
        a.sha256(),
        want,
        "piimg flash of .xz and bmaptool copy of .zst differ"
    );
    assert_eq!(c.sha256(), want, "piimg flash with bmaptool's map differs");
}

/// A small disk image from `piimg fs image`: boot and root folders of a few files.
fn small_image(dir: &Path, table: &str, size: &str, root_bytes: usize) -> PathBuf {
    let boot = dir.join("boot");
    let root = dir.join("root");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(boot.join("config.txt"), "arm_64bit=1\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "card\n").unwrap();
    if root_bytes > 0 {
        std::fs::write(root.join("payload"), noise(root_bytes, 11)).unwrap();
    }
    let out = dir.join("small.img");
    Piimg::new()
        .args(["fs", "image", "--table", table, "--size", size, "--boot"])
        .arg(&boot)
        .arg("--root")
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .epoch("1700000000")
        .run()
        .assert_ok();
    out
}

#[test]
fn a_gpt_image_on_a_larger_card_has_its_backup_table_at_the_card_end() {
    let w = work("gpt");
    let img = small_image(&w, "gpt", "64MiB", 0);
    assert!(Path::new(&format!("{}.bmap", img.display())).exists());
    let size = 256 * MIB;
    let l = Loop::new_file(&w.join("card"), size);
    used_card(&l, size);
    let (ok, text) = flash(&[img.to_str().unwrap(), &l.dev, "--yes", "--allow-fixed"]);
    assert!(ok, "{text}");
    assert!(text.contains("backup GPT moved"), "{text}");
    let v = run(Command::new("sgdisk").args(["-v", &l.dev]));
    assert!(v.contains("No problems found"), "{v}");
    // The backup header sits in the card's last sector.
    assert_eq!(&l.read_at(size - 512, 8), b"EFI PART");
    l.add_partitions();
    e2fsck(l.part(2));
    fsck_vfat(l.part(1));

    let before = l.sha256();
    l.remove_partitions();
    // An image that no longer matches its map is named as the damaged side.
    let bad = w.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    // A data byte (not in a block of zeros, which a copy without the map would not rewrite).
    let at = mapped(Path::new(&format!("{}.bmap", img.display())))[1..]
        .iter()
        .find_map(|&(s, e)| (s..e).find(|&i| bytes[i as usize] != 0))
        .unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(bad.join("small.img"), &bytes).unwrap();
    std::fs::copy(
        format!("{}.bmap", img.display()),
        bad.join("small.img.bmap"),
    )
    .unwrap();
    let (ok, text) = flash(&[
        bad.join("small.img").to_str().unwrap(),
        &l.dev,
        "--yes",
        "--allow-fixed",
    ]);
    assert!(
        !ok && text.contains("does not match its block map"),
        "{text}"
    );

    // Without a map, the image file's holes are what is skipped: the same card comes out.
    let bare = w.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    run(Command::new("cp")
        .args(["--sparse=always"])
        .arg(&img)
        .arg(bare.join("small.img")));
    let (ok, text) = flash(&[
        bare.join("small.img").to_str().unwrap(),
        &l.dev,
        "--yes",
        "--allow-fixed",
    ]);
    assert!(ok, "{text}");
    assert_eq!(l.sha256(), before);
}

fn refused(args: &[&str], l: &Loop, expect: &str) {
    let before = l.sha256();
    let (ok, text) = flash(args);
    assert!(!ok, "flash {args:?} should have been refused: {text}");
    assert!(
        text.contains(expect),
        "flash {args:?}: expected `{expect}` in: {text}"
    );
    assert_eq!(l.sha256(), before, "flash {args:?} changed the device");
}

#[test]
fn every_refusal_leaves_the_device_as_it_was() {
    let w = work("refusals");
    let img = small_image(&w, "mbr", "48MiB", 0);
    let img_s = img.to_str().unwrap();
    let l = Loop::new_file(&w.join("card"), 96 * MIB);
    used_card(&l, 96 * MIB);
    // A card that already holds this image's filesystems, so that partitions can be mounted.
    let (ok, text) = flash(&[img_s, &l.dev, "--yes", "--allow-fixed"]);
    assert!(ok, "{text}");
    l.add_partitions();

    refused(&[img_s, &l.dev, "--yes"], &l, "fixed disk");
    refused(
        &[img_s, &l.part(1), "--yes", "--allow-fixed"],
        &l,
        "is a partition of",
    );
    refused(&[img_s, &l.dev, "--allow-fixed"], &l, "not a terminal");

    let mnt = w.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // Read-only, so that mounting itself writes nothing to the device.
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(l.part(2))
        .arg(&mnt));
    let before = l.sha256();
    let (ok, text) = flash(&[img_s, &l.dev, "--yes", "--allow-fixed"]);
    run(Command::new("umount").arg(&mnt));
    assert!(!ok && text.contains("is mounted on"), "{text}");
    assert_eq!(l.sha256(), before);

    // The disk holding /boot, in a mount namespace of the test's own.
    let before = l.sha256();
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount --make-rprivate / && mount -o ro {} /boot && exec {} flash {img_s} {} --yes --allow-fixed",
            l.part(2),
            BIN,
            l.dev
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && text.contains("running system (/boot"),
        "{text}"
    );
    assert_eq!(l.sha256(), before);

    // Not root, not in the disk group. The binary and the image are copied where that user can
    // reach them (the build folder may sit under a private temp folder).
    let before = l.sha256();
    let open = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap();
    let bin = open.path().join("piimg");
    std::fs::copy(BIN, &bin).unwrap();
    let img_copy = open.path().join("small.img");
    std::fs::copy(&img, &img_copy).unwrap();
    std::fs::set_permissions(&img_copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("flash")
        .arg(&img_copy)
        .args([&l.dev, "--yes", "--allow-fixed"])
        .current_dir(open.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && text.contains(&format!("permission denied opening {}", l.dev)),
        "{text}"
    );
    assert_eq!(l.sha256(), before);

    // A disk in use as swap.
    let sw = Loop::new_file(&w.join("swap"), 64 * MIB);
    run(Command::new("mkswap").arg(&sw.dev));
    run(Command::new("swapon").arg(&sw.dev));
    let (ok, text) = flash(&[img_s, &sw.dev, "--yes", "--allow-fixed"]);
    run(Command::new("swapoff").arg(&sw.dev));
    assert!(!ok && text.contains("in use as swap"), "{text}");
    assert!(sw.read_at(4096 - 10, 10) == b"SWAPSPACE2");

    let tiny = Loop::new_file(&w.join("tiny"), 16 * MIB);
    refused(
        &[img_s, &tiny.dev, "--yes", "--allow-fixed"],
        &tiny,
        "holds 16.0 MiB but the image needs",
    );

    // Regular files and other non-devices.
    let file = w.join("file.img");
    std::fs::write(&file, b"old").unwrap();
    let (ok, text) = flash(&[img_s, file.to_str().unwrap(), "--yes"]);
    assert!(!ok && text.contains("regular file"), "{text}");
    assert_eq!(std::fs::read(&file).unwrap(), b"old");
    let (ok, text) = flash(&[img_s, "/dev/null", "--yes", "--allow-fixed"]);
    assert!(!ok && text.contains("not a block device"), "{text}");

    // At the prompt: a wrong name writes nothing; the device's name goes on.
    l.remove_partitions();
    let typed = |answer: &str| {
        let o = Command::new("script")
            .args(["-qec"])
            .arg(format!("{BIN} flash {img_s} {} --allow-fixed", l.dev))
            .arg("/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(answer.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let before = l.sha256();
    let (ok, text) = typed("sda\n");
    assert!(!ok && text.contains("not confirmed"), "{text}");
    assert_eq!(l.sha256(), before);
    let name = l.dev.trim_start_matches("/dev/").to_string();
    let (ok, text) = typed(&format!("{name}\n"));
    assert!(
        ok && text.contains("Type the device name") && text.contains("verified"),
        "{text}"
    );
}

#[test]
fn a_card_pulled_mid_write_stops_with_how_far_it_got() {
    let w = work("pulled");
    let img = small_image(&w, "mbr", "640MiB", 480 * MIB as usize);
    let l = Loop::new_file(&w.join("card"), 640 * MIB);
    let mut flashing = Piimg::new()
        .arg("flash")
        .arg(&img)
        .args([&l.dev, "--yes", "--allow-fixed"])
        .spawn();
    let child = &mut flashing.child;
    // Wait until the card has taken some data, freeze piimg, pull the card (shrink the
    // backing file and tell the loop driver), let piimg go on.
    let pid = child.id().to_string();
    let t0 = std::time::Instant::now();
    loop {
        let used = std::fs::metadata(&l.backing).unwrap().blocks() * 512;
        if used > 48 * MIB {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "flash ended before the card was pulled"
        );
        assert!(t0.elapsed().as_secs() < 120, "no write progress");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    run(Command::new("kill").args(["-STOP", &pid]));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&l.backing)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    run(Command::new("losetup").args(["-c", &l.dev]));
    run(Command::new("kill").args(["-CONT", &pid]));
    let r = flashing.wait();
    r.assert_code(1);
    assert!(
        r.stderr.contains("Was the card removed?") && r.stderr.contains("had been written"),
        "{}",
        r.text()
    );
}

#[test]
fn list_shows_removable_free_disks_only() {
    let (ok, text) = flash(&["--list", "--json"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for d in v.as_array().unwrap() {
        assert_eq!(d["removable"], true, "{d}");
        assert_ne!(d["transport"], "loop", "{d}");
        assert!(d["in_use"].as_array().unwrap().is_empty(), "{d}");
    }
    let (ok, text) = flash(&["--list"]);
    assert!(ok, "{text}");
}

#[test]
fn flash_profile_builds_when_the_image_is_missing_or_stale() {
    let b = lb1();
    let w = work("profile");
    let project = project().lock().create_in(&w.join("project"));
    // The lock is the one lb1() built with; its packages are in the cache.
    let _ = &b.project;
    let out = w.join("out");
    let card = w.join("card.img");
    let go = || {
        let r = project
            .piimg()
            .args(["flash", "--profile", "lb1", "--file", "--out"])
            .arg(&out)
            .arg(&card)
            .run();
        (r.success(), r.combined())
    };
    let (ok, text) = go();
    assert!(
        ok && text.contains("building lb1") && text.contains("does not exist"),
        "{text}"
    );
    run(Command::new("sfdisk").arg("--verify").arg(&card));
    // A file --file creates may receive a node's secrets: owner-only.
    let card_mode = std::fs::metadata(&card).unwrap().permissions().mode();
    assert_eq!(card_mode & 0o777, 0o600, "{card_mode:o}");
    let (ok, text) = go();
    assert!(
        ok && text.contains("is current") && !text.contains("building"),
        "{text}"
    );
    project.append("lb1", "# edited");
    let (ok, text) = go();
    assert!(
        ok && text.contains("changed since the last build: profile"),
        "{text}"
    );
    // A set committed in part (no manifest) is not current either.
    std::fs::remove_file(out.join("lb1.manifest.json")).unwrap();
    let (ok, text) = go();
    assert!(ok && text.contains("building lb1"), "{text}");
    let mode = std::fs::metadata(out.join("lb1.img"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644, "lb1 holds no secrets");
}
