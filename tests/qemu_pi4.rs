//! Pi 4 and CM4 images in QEMU's raspi4b machine (QEMU >= 9: scripts/install-qemu10.sh): built by
//! `piimg build` from the QEMU load balancer profile with its board changed, booted by `piimg
//! qemu` to the agent's `ready`, and reached from the host through QEMU's USB Ethernet adapter on
//! the OTG port (raspi4b has no GENET). The device tree edits that make a Pi 4 tree boot there
//! are checked with fdtget and dtc.
//!
//! Needs Debian's archive for the first build (packages are cached in
//! target/tmp/piimg-test-cache), qemu-system-aarch64 with raspi4b, mtools, sfdisk and
//! device-tree-compiler. Missing any is a failure, not a skip.

mod common;
use common::checkers::{partitions, run, sfdisk_json, text_of};
use common::piimg::Piimg;
use common::project::{project, Project};

use regex::Regex;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Two TCG guests on a two-core machine would only slow each other down.
static BOOTS: Mutex<()> = Mutex::new(());

/// Generous: a boot to `ready` takes ~6 s of wall time on an idle two-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The nodes of a BCM2711 device tree (Pi 4 B and CM4 IO board alike) that QEMU's raspi4b does
/// not emulate and that are enabled in Debian's trees: display pipeline, the HDMI block's L2
/// interrupt controller and I2C buses, AVS and thermal, RNG200, PCIe, GENET and its MDIO.
const NOT_EMULATED: [&str; 19] = [
    "/soc/txp@7e004000",
    "/soc/hvs@7e400000",
    "/soc/avs-monitor@7d5d2000",
    "/soc/avs-monitor@7d5d2000/thermal",
    "/soc/rng@7e104000",
    "/soc/pixelvalve@7e206000",
    "/soc/pixelvalve@7e207000",
    "/soc/pixelvalve@7e20a000",
    "/soc/pixelvalve@7e216000",
    "/soc/clock@7ef00000",
    "/soc/interrupt-controller@7ef00100",
    "/soc/hdmi@7ef00700",
    "/soc/i2c@7ef04500",
    "/soc/hdmi@7ef05700",
    "/soc/i2c@7ef09500",
    "/scb/pcie@7d500000",
    "/scb/ethernet@7d580000",
    "/scb/ethernet@7d580000/mdio@e14",
    "/scb/gpu@7ec00000",
];

/// What the guest needs and must keep: console UART, the card's controller, USB OTG (the
/// network), the interrupt controller, the firmware mailbox, GPIO and emmc2 (empty, harmless).
const KEPT: [&str; 7] = [
    "/soc/serial@7e201000",
    "/soc/mmc@7e300000",
    "/soc/usb@7e980000",
    "/soc/interrupt-controller@40041000",
    "/soc/firmware",
    "/soc/gpio@7e200000",
    "/emmc2bus/mmc@7e340000",
];

/// The QEMU load balancer profile built for `board`; returns the project and the image.
fn build(board: &str) -> (Project, PathBuf) {
    let p = project()
        .only(&["qemu"])
        .lock()
        .overlays()
        .create_temp("piimg-pi4-");
    p.replace("qemu", "board = \"rpi3b\"", &format!("board = \"{board}\""));
    let t = Instant::now();
    p.piimg_cached()
        .args(["--quiet", "build", "--profile", "qemu"])
        .run()
        .assert_ok();
    eprintln!("built {board} in {:.1} s", t.elapsed().as_secs_f64());
    let image = p.root().join("out/qemu.img");
    (p, image)
}

/// A file of the image's boot partition (the first), copied out with mcopy.
fn boot_file(image: &Path, name: &str, dest: &Path) -> Vec<u8> {
    let (start, _) = partitions(image)[0];
    let out = dest.join(name);
    run(Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(format!("{}@@{start}", image.display()))
        .arg(format!("::{name}"))
        .arg(&out));
    std::fs::read(&out).unwrap()
}

fn fdtget(dtb: &Path, args: &[&str]) -> String {
    text_of(Command::new("fdtget").arg(dtb).args(args))
        .trim()
        .to_string()
}

/// `fdtget -l` / `-p`: the children or property names of a node.
fn fdt_list(dtb: &Path, flag: &str, node: &str) -> Vec<String> {
    text_of(Command::new("fdtget").arg(flag).arg(dtb).arg(node))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// How many nodes dtc shows as disabled.
fn disabled_count(dtb: &Path) -> usize {
    text_of(
        Command::new("dtc")
            .args(["-q", "-I", "dtb", "-O", "dts"])
            .arg(dtb),
    )
    .matches("status = \"disabled\";")
    .count()
}

/// Checks the raspi4b edits of the image's device tree (`dtb_name` on its boot partition) with
/// fdtget and dtc: the Bluetooth and Wi-Fi chips gone, the Arasan controller's card removable
/// with no power sequence, exactly [`NOT_EMULATED`] newly disabled, [`KEPT`] enabled.
fn check_dtb_edits(image: &Path, dtb_name: &str, dir: &Path) {
    let original = dir.join("original.dtb");
    std::fs::write(&original, boot_file(image, dtb_name, dir)).unwrap();
    let (edited_bytes, _) = piimg::qemu::pi4::raspi4b_dtb(&std::fs::read(&original).unwrap())
        .unwrap_or_else(|e| panic!("{dtb_name}: {e}"));
    let edited = dir.join("edited.dtb");
    std::fs::write(&edited, edited_bytes).unwrap();

    // The originals have what the edits remove: the edits are not vacuous.
    assert!(fdt_list(&original, "-l", "/soc/serial@7e201000").contains(&"bluetooth".into()));
    assert!(fdt_list(&original, "-l", "/soc/mmc@7e300000").contains(&"wifi@1".into()));
    let props = fdt_list(&original, "-p", "/soc/mmc@7e300000");
    assert!(props.contains(&"non-removable".into()) && props.contains(&"mmc-pwrseq".into()));

    assert!(!fdt_list(&edited, "-l", "/soc/serial@7e201000").contains(&"bluetooth".into()));
    assert!(fdt_list(&edited, "-l", "/soc/mmc@7e300000").is_empty());
    let props = fdt_list(&edited, "-p", "/soc/mmc@7e300000");
    assert!(
        !props.contains(&"non-removable".into()) && !props.contains(&"mmc-pwrseq".into()),
        "{props:?}"
    );
    for node in NOT_EMULATED {
        let before = text_of(
            Command::new("fdtget")
                .args(["-d", "okay"])
                .arg(&original)
                .args([node, "status"]),
        );
        assert_eq!(before.trim(), "okay", "{dtb_name}: {node} was enabled");
        assert_eq!(fdtget(&edited, &[node, "status"]), "disabled", "{node}");
    }
    for node in KEPT {
        assert_eq!(
            fdtget(&edited, &["-d", "okay", node, "status"]),
            "okay",
            "{node}"
        );
    }
    assert_eq!(
        disabled_count(&edited),
        disabled_count(&original) + NOT_EMULATED.len(),
        "{dtb_name}: nodes other than those QEMU does not emulate were disabled"
    );
}

/// Boots `image` with `piimg qemu` until the agent's `ready`, asserting the stage milestones on
/// the way, then reads the agent's status endpoint through a forward on 127.0.0.1 (the USB
/// Ethernet path, host to guest). Returns the wall time to `ready` and the console.
fn boot_to_ready(image: &Path, hostname: &str) -> (Duration, Vec<String>) {
    let status = common::free_port();
    let mut child = Piimg::new()
        .arg("qemu")
        .arg(image)
        .args(["--timeout", &BOOT_TIMEOUT.as_secs().to_string(), "--json"])
        .args(["--forward", &format!("{status}:7780")])
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // With --json the console goes to stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { break };
            eprintln!("console| {l}");
            if tx.send(l.trim_end_matches('\r').to_string()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait = |re: &str| -> String {
        let re = Regex::new(re).unwrap();
        loop {
            let left = (started + BOOT_TIMEOUT).saturating_duration_since(Instant::now());
            let l = rx.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "no console line matching {re} ({e:?}); last lines:\n{}",
                    seen[seen.len().saturating_sub(40)..].join("\n")
                )
            });
            assert!(!l.contains("Kernel panic"), "kernel panic: {l}");
            seen.push(l.clone());
            if re.is_match(&l) {
                return l;
            }
        }
    };
    wait(r"^piimg-agent: stage1 start$");
    // QEMU attaches the card to the Arasan controller; the root is found by PARTUUID.
    wait(r"^piimg-agent: root found /dev/mmcblk\dp2$");
    wait(r"^piimg-agent: stage2 start$");
    wait(r"^piimg-agent: network up eth0 10\.0\.2\.15/24$");
    wait(r"piimg-agent: ready \(uptime [0-9.]+ s\)$");
    let wall = started.elapsed();
    let body = status_json(status);
    assert_eq!(body["hostname"], hostname, "{body}");
    let haproxy = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "haproxy")
        .unwrap_or_else(|| panic!("no haproxy in {body}"));
    assert_eq!(haproxy["state"], "running", "{haproxy}");
    // SIGTERM: piimg stops QEMU and prints its JSON summary.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(summary["machine"], "raspi4b", "{summary}");
    (wall, seen)
}

/// GET /status on the forward, retried while the agent's listener comes up.
fn status_json(port: u16) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < until {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(s, "GET /status HTTP/1.0\r\nHost: piimg\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        });
        match got {
            Ok(r) if r.starts_with("HTTP/1.1 200") => {
                let body = r.split_once("\r\n\r\n").unwrap().1;
                return serde_json::from_str(body).unwrap();
            }
            Ok(r) => last = r,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no status from the guest through 127.0.0.1:{port}: {last}");
}

/// Builds `board`'s image, checks its GPT and device tree edits, boots it to `ready`.
fn boots_in_raspi4b(board: &str, dtb_name: &str) {
    let (p, image) = build(board);
    // Pi 4 boot ROMs read GPT; QEMU's SD card takes only power-of-two sizes.
    assert_eq!(sfdisk_json(&image)["partitiontable"]["label"], "gpt");
    assert!(std::fs::metadata(&image).unwrap().len().is_power_of_two());
    let config = String::from_utf8(boot_file(&image, "config.txt", p.root())).unwrap();
    assert!(
        config.contains(&format!("device_tree={dtb_name}\n")),
        "{config}"
    );
    check_dtb_edits(&image, dtb_name, p.root());

    let _serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let (wall, _) = boot_to_ready(&image, "qemu-lb");
    // Straight to the process's stderr, so the figure is in every CI log.
    let _ = writeln!(
        std::io::stderr(),
        "BOOT {board} in raspi4b: power-on to `piimg-agent: ready`: wall {:.1} s",
        wall.as_secs_f64()
    );
}

#[test]
fn a_pi4_image_boots_in_raspi4b_to_ready_and_answers_over_usb_ethernet() {
    boots_in_raspi4b("rpi4b", "bcm2711-rpi-4-b.dtb");
}

#[test]
fn a_cm4_image_boots_in_raspi4b_to_ready_and_answers_over_usb_ethernet() {
    boots_in_raspi4b("cm4", "bcm2711-rpi-cm4-io.dtb");
}
