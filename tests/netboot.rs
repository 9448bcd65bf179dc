//! `piimg build --netboot` end to end, without QEMU: lb1 (a Pi 3) and cp1 (a Pi 4 control plane) of the
//! example cluster merged into one tree, checked with tools piimg did not write (unsquashfs,
//! zstd + cpio, e2fsck, debugfs, curl over TFTP and HTTP against `piimg serve`) and with
//! `piimg netboot check`. The QEMU boot of a netbooted node is in tests/e2e.rs.

mod common;
use common::checkers::{debugfs, e2fsck, extract, partitions, pipe, run, stdout_of, text_of};
use common::piimg::{Piimg, Run};
use common::project::{project, Project};
use common::{read_toml, sha256_file, sha256_hex, KUBE_STANDINS};

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const EPOCH: &str = "1767225600";
/// The profiles' placeholder serials (profiles/lb1.toml, profiles/cp1.toml).
const LB1: &str = "00000001";
const CP1: &str = "00000002";

struct Built {
    project: Project,
    tree: PathBuf,
    /// What must never be readable in the tree: the join token, the certificate key and a line
    /// of each private key of the cluster secrets file.
    secrets: Vec<(String, String)>,
    token: String,
    lb1_first: (String, String),
}

fn piimg(p: &Project) -> Piimg {
    p.piimg_cached().epoch(EPOCH)
}

fn build(p: &Project, profile: &str) -> Run {
    let r = piimg(p)
        .args(["--quiet", "build", "--netboot", "--profile", profile])
        .standins(&KUBE_STANDINS)
        .run();
    r.assert_ok();
    r
}

/// lb1 and cp1 built into one tree once per run of this binary; lb1 twice, to compare bytes.
fn shared() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let project = project().lock().overlays().create_temp("piimg-netboot-");
        let tree = project.root().join("out/netboot");
        build(&project, "lb1");
        let lb1_first = (
            sha256_file(&tree.join(LB1).join("root.squashfs")),
            sha256_file(&tree.join(LB1).join("initramfs8")),
        );
        build(&project, "cp1");
        build(&project, "lb1");
        let file = read_toml(&project.secrets("home"));
        let field = |k: &str| {
            file[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} in secrets"))
                .to_string()
        };
        let mut secrets = vec![
            ("token".to_string(), field("token")),
            ("certificate_key".to_string(), field("certificate_key")),
        ];
        for k in ["ca_key", "front_proxy_ca_key", "etcd_ca_key", "sa_key"] {
            // The first line of base64 after the PEM header: unique to that key.
            let line = field(k).lines().nth(1).expect("a PEM body").to_string();
            secrets.push((k.to_string(), line));
        }
        Built {
            project,
            tree,
            token: field("token"),
            secrets,
            lb1_first,
        }
    })
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

/// The initramfs's members (zstd-compressed newc, read by zstd and cpio).
fn initramfs_members(initramfs: &Path) -> (Vec<String>, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let cpio = pipe(Command::new("zstd").args(["-dc"]).arg(initramfs), &[]);
    let list = pipe(Command::new("cpio").args(["-t", "--quiet"]), &cpio);
    pipe(
        Command::new("cpio")
            .args(["-id", "--quiet", "--no-absolute-filenames"])
            .current_dir(&dir),
        &cpio,
    );
    let names = String::from_utf8_lossy(&list)
        .lines()
        .map(str::to_string)
        .collect();
    (names, dir)
}

#[test]
fn both_nodes_have_their_folders_and_common_bytes_are_stored_once() {
    let b = shared();
    let (lb, w) = (b.tree.join(LB1), b.tree.join(CP1));
    // The same Debian kernel boots the Pi 3 and the Pi 4: one copy on disk.
    assert_eq!(ino(&lb.join("kernel8.img")), ino(&w.join("kernel8.img")));
    // The Pi 3 ROM reads bootcode.bin from the top of the tree.
    assert_eq!(
        ino(&b.tree.join("bootcode.bin")),
        ino(&lb.join("bootcode.bin"))
    );
    for f in [
        "start.elf",
        "fixup.dat",
        "bcm2837-rpi-3-b.dtb",
        "config.txt",
        "cmdline.txt",
    ] {
        assert!(lb.join(f).is_file(), "lb1 lacks {f}");
    }
    for f in ["start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb"] {
        assert!(w.join(f).is_file(), "cp1 lacks {f}");
    }
    assert_ne!(
        ino(&lb.join("root.squashfs")),
        ino(&w.join("root.squashfs"))
    );
    let check = piimg(&b.project)
        .args(["netboot", "check"])
        .arg(&b.tree)
        .run();
    check.assert_ok();
    assert_eq!(
        check.stdout.matches(": complete for ").count(),
        2,
        "{}",
        check.text()
    );
}

#[test]
fn the_cmdline_names_the_root_on_the_server_and_the_initramfs_pins_its_hash() {
    let b = shared();
    let w = b.tree.join(CP1);
    let cmdline = std::fs::read_to_string(w.join("cmdline.txt")).unwrap();
    let url = format!("piimg.root=http://192.168.50.2:8080/{CP1}/root.squashfs");
    assert!(cmdline.split_whitespace().any(|x| x == url), "{cmdline}");
    assert!(!cmdline.contains("root=PARTUUID"), "{cmdline}");
    let (names, dir) = initramfs_members(&w.join("initramfs8"));
    for m in [
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/drivers/block/loop.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(m)),
            "initramfs lacks {m}: {names:?}"
        );
    }
    let order = std::fs::read_to_string(dir.join("etc/piimg/stage1.modules")).unwrap();
    assert!(
        order.contains("squashfs.ko") && order.contains("overlay.ko"),
        "{order}"
    );
    let netroot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("etc/piimg/netroot.json")).unwrap())
            .unwrap();
    let root = w.join("root.squashfs");
    assert_eq!(netroot["sha256"], sha256_file(&root));
    assert_eq!(netroot["size"], std::fs::metadata(&root).unwrap().len());
    assert_eq!(netroot["fstype"], "squashfs");
    assert_eq!(netroot["address"], "192.168.50.11/24");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Every file of the tree with the root images and initramfs unpacked: what anyone on the LAN
/// can read.
fn readable_on_the_lan(tree: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = walk(tree);
    let mut unpacked = Vec::new();
    for folder in [LB1, CP1] {
        let dir = tempfile::tempdir().unwrap().keep();
        let root = dir.join("root");
        run(Command::new("unsquashfs")
            .args(["-q", "-no-xattrs", "-d"])
            .arg(&root)
            .arg(tree.join(folder).join("root.squashfs")));
        let (_, initramfs) = initramfs_members(&tree.join(folder).join("initramfs8"));
        files.extend(walk(&root));
        files.extend(walk(&initramfs));
        unpacked.extend([dir, initramfs]);
    }
    (files, unpacked)
}

#[test]
fn no_secret_enters_the_tree_and_the_card_holds_them_owner_only() {
    let b = shared();
    let root = b.tree.join(CP1).join("root.squashfs");
    let listing = text_of(
        Command::new("unsquashfs")
            .args(["-lln", "-d", "/"])
            .arg(&root),
    );
    assert!(listing.contains("/etc/piimg/node.json"), "{listing}");
    assert!(!listing.contains("/etc/piimg/kubeadm.yaml"), "{listing}");
    assert!(!listing.contains("/etc/kubernetes/pki/ca.key"), "{listing}");
    assert!(listing.contains("/etc/kubernetes/pki/ca.crt"), "{listing}");
    let (files, unpacked) = readable_on_the_lan(&b.tree);
    assert!(files.len() > 1000, "only {} files unpacked", files.len());
    let mut leaked = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for (what, needle) in &b.secrets {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                leaked.push(format!("{what} in {}", f.display()));
            }
        }
    }
    for d in unpacked {
        std::fs::remove_dir_all(d).unwrap();
    }
    assert!(leaked.is_empty(), "secrets readable on the LAN: {leaked:?}");

    let card = b.project.root().join("out/cp1.secrets.img");
    assert_eq!(
        std::fs::metadata(&card).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let parts = partitions(&card);
    assert_eq!(parts.len(), 1, "{parts:?}");
    let fs = card.with_extension("part1");
    extract(&card, parts[0].0, parts[0].1, &fs);
    e2fsck(&fs);
    let label = run(Command::new("e2label").arg(&fs));
    assert_eq!(label.trim(), "piimg-data");
    for (dir, names) in [
        (
            "/lib/piimg/secrets/etc/piimg",
            &["kubeadm.yaml", "node.json"][..],
        ),
        (
            "/lib/piimg/secrets/etc/kubernetes/pki",
            &["ca.key", "sa.key"][..],
        ),
        ("/lib/piimg/secrets/etc/piimg/pki", &["ca.key"][..]),
    ] {
        let ls = debugfs(&fs, &format!("ls -l {dir}"));
        for f in names {
            let line = ls
                .lines()
                .find(|l| l.ends_with(&format!(" {f}")))
                .unwrap_or_else(|| panic!("{dir}/{f} not on the card: {ls}"));
            assert!(line.contains("100600"), "{line}");
        }
    }
    let full = debugfs(&fs, "cat /lib/piimg/secrets/etc/piimg/kubeadm.yaml");
    assert!(
        full.contains(&b.token),
        "the card's kubeadm.yaml lacks the token"
    );
    std::fs::remove_file(fs).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_rebuild_gives_the_same_bytes() {
    let b = shared();
    let lb = b.tree.join(LB1);
    assert_eq!(
        (
            sha256_file(&lb.join("root.squashfs")),
            sha256_file(&lb.join("initramfs8"))
        ),
        b.lb1_first
    );
}

#[test]
fn netboot_check_names_the_first_file_a_pi_would_miss() {
    let b = shared();
    // A copy of lb1's folder and bootcode.bin: the shared tree stays whole for other tests.
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join(LB1);
    std::fs::create_dir(&f).unwrap();
    for e in std::fs::read_dir(b.tree.join(LB1)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), f.join(e.file_name())).unwrap();
    }
    std::fs::copy(b.tree.join("bootcode.bin"), t.path().join("bootcode.bin")).unwrap();
    let check = |what: &str| {
        let r = Piimg::new()
            .args(["netboot", "check"])
            .arg(t.path())
            .args(["--serial", LB1, "--board", "rpi3b"])
            .run();
        (r.code, r.stdout, what.to_string())
    };
    let (code, out, _) = check("complete");
    assert_eq!(code, Some(0), "{out}");
    for gone in ["bcm2837-rpi-3-b.dtb", "initramfs8", "root.squashfs"] {
        let p = f.join(gone);
        std::fs::rename(&p, p.with_extension("away")).unwrap();
        let (code, out, _) = check(gone);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains(&format!(
                "would not find {gone} (TFTP/HTTP path `{LB1}/{gone}`)"
            )),
            "{out}"
        );
        std::fs::rename(p.with_extension("away"), &p).unwrap();
    }
    std::fs::remove_file(t.path().join("bootcode.bin")).unwrap();
    let (code, out, _) = check("bootcode");
    assert_eq!(code, Some(1));
    assert!(out.contains("would not find bootcode.bin"), "{out}");
}

#[test]
fn serve_hands_out_the_tree_over_tftp_and_http() {
    let b = shared();
    let mut child = Command::new(env!("CARGO_BIN_EXE_piimg"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--tftp-port",
            "0",
            "--http-port",
            "0",
            "--dir",
        ])
        .arg(&b.tree)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port_of = |l: String| -> u16 {
        l.rsplit_once("127.0.0.1:")
            .and_then(|(_, p)| {
                p.trim_end_matches('/')
                    .split([' ', '/'])
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no port in {l:?}"))
    };
    let tftp = port_of(lines.next().unwrap().unwrap());
    let http = port_of(lines.next().unwrap().unwrap());
    let got = stdout_of(
        Command::new("curl").args(["-sf", &format!("tftp://127.0.0.1:{tftp}/{LB1}/cmdline.txt")]),
    );
    assert_eq!(
        got,
        std::fs::read(b.tree.join(LB1).join("cmdline.txt")).unwrap()
    );
    let root = std::fs::read(b.tree.join(LB1).join("root.squashfs")).unwrap();
    let url = format!("http://127.0.0.1:{http}/{LB1}/root.squashfs");
    let whole = stdout_of(Command::new("curl").args(["-sf", &url]));
    assert_eq!(sha256_hex(&whole), sha256_hex(&root));
    // The tree's bookkeeping is not served.
    let hidden = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{http}/.piimg/lb1.json"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hidden.stdout), "403");
    let _ = child.kill();
    let _ = child.wait();
}
