//! Per-board conformance: one image for each of the five boards piimg accepts, checked for what
//! that board's hardware needs, since QEMU emulates none of their NICs and only raspi3b/raspi4b
//! at all. Each check uses what the real boot chain would: the file names the boot ROM and
//! firmware read, the dtb `device_tree=` names (read with fdtget), and the modules kmod's own
//! depmod + modprobe resolve for the devices in that dtb (what udev would load), which must be in
//! the initramfs and its stage-1 load list.
//!
//! The board facts in [`BOARDS`] come from the boards' upstream device trees
//! (arch/arm64/boot/dts/broadcom/bcm2837-rpi-3-b.dts, -3-b-plus.dts, -zero-2-w.dts,
//! bcm2711-rpi-4-b.dts, bcm2711-rpi-cm4-io.dts and the .dtsi files they include), the PHY ids from
//! include/linux/brcmphy.h (PHY_ID_BCM54213PE) and drivers/net/phy/microchip.c (PHY_ID_LAN88XX),
//! and the firmware files from the Raspberry Pi boot documentation (Pi 3 boot ROM: bootcode.bin;
//! Pi 4 EEPROM bootloader: start4.elf, fixup4.dat).

mod common;
use common::checkers::{
    deb_member, ext4_read, ext4_walk, extract, fat_files, firmware_glob, pipe, run, sfdisk_json,
    spans, text_of, tool, wpa_supplicant_reads,
};
use common::piimg::Run;
use common::project::{project, Project};
use common::{cache_home, process_dir, read_json};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const EPOCH: &str = "1767225600";

struct BoardSpec {
    board: &'static str,
    /// The dtb config.txt must name, and its root node's first `compatible` entry.
    dtb: &'static str,
    root_compatible: &'static str,
    /// What the board's boot ROM / EEPROM bootloader and GPU firmware read from the FAT.
    firmware: &'static [&'static str],
    /// The device tree node of the SD card's controller and the module that drives it.
    sd_node: &'static str,
    sd_module: &'static str,
    /// The on-board Ethernet: its device tree node (None: the board has none) and driver.
    nic: Option<(&'static str, &'static str)>,
    /// The Ethernet PHY's id (read over MDIO, not in the device tree) and its driver.
    phy: Option<(u32, &'static str)>,
    /// The Wi-Fi chip's name in brcmfmac's SDIO firmware table.
    wifi_chip: &'static str,
}

const PI3_FIRMWARE: &[&str] = &["bootcode.bin", "start.elf", "fixup.dat"];
const PI4_FIRMWARE: &[&str] = &["start4.elf", "fixup4.dat"];

const BOARDS: &[BoardSpec] = &[
    BoardSpec {
        board: "rpi3b",
        dtb: "bcm2837-rpi-3-b.dtb",
        root_compatible: "raspberrypi,3-model-b",
        firmware: PI3_FIRMWARE,
        // bcm283x.dtsi: sdhost, the controller the SD slot is wired to on Pi 3 boards.
        sd_node: "/soc/mmc@7e202000",
        sd_module: "bcm2835",
        // bcm283x-rpi-smsc9514.dtsi: the LAN9514 hub's Ethernet function.
        nic: Some(("/soc/usb@7e980000/usb1@1/ethernet@1", "smsc95xx")),
        // The LAN9514's PHY is internal and driven by smsc95xx itself.
        phy: None,
        // BCM43438 (BCM43430 rev 1).
        wifi_chip: "brcmfmac43430-sdio",
    },
    BoardSpec {
        board: "rpi3bplus",
        dtb: "bcm2837-rpi-3-b-plus.dtb",
        root_compatible: "raspberrypi,3-model-b-plus",
        firmware: PI3_FIRMWARE,
        sd_node: "/soc/mmc@7e202000",
        sd_module: "bcm2835",
        // bcm283x-rpi-lan7515.dtsi: two hub ports deep.
        nic: Some((
            "/soc/usb@7e980000/usb-port@1/usb-port@1/ethernet@1",
            "lan78xx",
        )),
        phy: Some((0x0007_c132, "microchip")),
        // CYW43455.
        wifi_chip: "brcmfmac43455-sdio",
    },
    BoardSpec {
        board: "zero2w",
        dtb: "bcm2837-rpi-zero-2-w.dtb",
        root_compatible: "raspberrypi,model-zero-2-w",
        firmware: PI3_FIRMWARE,
        sd_node: "/soc/mmc@7e202000",
        sd_module: "bcm2835",
        nic: None,
        phy: None,
        // CYW43438 (BCM43430 rev 1), as on the 3B.
        wifi_chip: "brcmfmac43430-sdio",
    },
    BoardSpec {
        board: "rpi4b",
        dtb: "bcm2711-rpi-4-b.dtb",
        root_compatible: "raspberrypi,4-model-b",
        firmware: PI4_FIRMWARE,
        // bcm2711-rpi.dtsi: emmc2, the SD slot's controller on the BCM2711.
        sd_node: "/emmc2bus/mmc@7e340000",
        sd_module: "sdhci_iproc",
        nic: Some(("/scb/ethernet@7d580000", "genet")),
        phy: Some((0x600d_84a2, "broadcom")),
        // CYW43455, as on the 3B+.
        wifi_chip: "brcmfmac43455-sdio",
    },
    BoardSpec {
        board: "cm4",
        dtb: "bcm2711-rpi-cm4-io.dtb",
        root_compatible: "raspberrypi,4-compute-module",
        firmware: PI4_FIRMWARE,
        sd_node: "/emmc2bus/mmc@7e340000",
        sd_module: "sdhci_iproc",
        nic: Some(("/scb/ethernet@7d580000", "genet")),
        phy: Some((0x600d_84a2, "broadcom")),
        wifi_chip: "brcmfmac43455-sdio",
    },
];

struct Built {
    _project: Project,
    work: PathBuf,
    out: PathBuf,
    build: Run,
}

/// One load-balancer image per board (the board is what differs; a load balancer is the
/// quickest role to build), from the QEMU profile with board, hostname and address changed.
fn shared() -> &'static Built {
    static S: OnceLock<Built> = OnceLock::new();
    S.get_or_init(|| {
        let work = process_dir("boards-test");
        let project = project().only(&[]).lock().create_in(&work.join("project"));
        let template = std::fs::read_to_string(common::repo().join("profiles/qemu.toml")).unwrap();
        // The [netboot] table would give all five the same serial folder.
        let template = template.split("\n[netboot]").next().unwrap().to_string()
            + "\n[image]\nsize = \"1GiB\"\n";
        for (i, b) in BOARDS.iter().enumerate() {
            let text = template
                .replace("cluster = \"qemu\"", "cluster = \"boards\"")
                .replace(
                    "hostname = \"qemu-lb\"",
                    &format!("hostname = \"{}\"", b.board),
                )
                .replace("board = \"rpi3b\"", &format!("board = \"{}\"", b.board))
                .replace("10.0.2.15/24", &format!("10.0.2.{}/24", 20 + i));
            assert!(text.contains(&format!("board = \"{}\"", b.board)), "{text}");
            // Every board joins by Wi-Fi, so each image carries its chip's firmware (a Zero 2 W
            // needs it: check refuses one with neither Wi-Fi nor USB Ethernet).
            let text = text.replace("interface = \"eth0\"\n", "")
                + "\n[network.wifi]\nssid = \"boards\"\ncountry = \"DE\"\n";
            project.write(b.board, &text);
        }
        let out = work.join("out");
        let build = project
            .piimg()
            .profiles(&project.profiles())
            .shared_cache()
            .epoch(EPOCH)
            .args(["build", "--all", "--jobs", "2", "--out"])
            .arg(&out)
            .run();
        Built {
            _project: project,
            work,
            out,
            build,
        }
    })
}

/// A board's image taken apart: the FAT's files and the initramfs unpacked (with cpio).
struct Parts {
    fat: BTreeMap<String, Vec<u8>>,
    /// The root filesystem (partition 2), for debugfs.
    root: PathBuf,
    initramfs: PathBuf,
    release: String,
}

fn parts(board: &str) -> &'static Parts {
    static P: OnceLock<BTreeMap<&'static str, Parts>> = OnceLock::new();
    let all = P.get_or_init(|| {
        let b = shared();
        b.build.assert_ok();
        BOARDS
            .iter()
            .map(|spec| {
                let img = b.out.join(format!("{}.img", spec.board));
                let dir = b.work.join(format!("parts-{}", spec.board));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let table = spans(&sfdisk_json(&img));
                let (start, size) = table[0];
                let boot = dir.join("boot.fat");
                extract(&img, start, size, &boot);
                let root = dir.join("root.ext4");
                extract(&img, table[1].0, table[1].1, &root);
                let fat = fat_files(boot.to_str().unwrap(), &dir.join("fat"));
                let initramfs = dir.join("initramfs");
                std::fs::create_dir_all(&initramfs).unwrap();
                let cpio = pipe(Command::new("zstd").arg("-dc"), &fat["initramfs8"]);
                pipe(
                    Command::new("cpio")
                        .args(["-id", "--quiet", "--no-absolute-filenames"])
                        .current_dir(&initramfs),
                    &cpio,
                );
                let m = read_json(&b.out.join(format!("{}.manifest.json", spec.board)));
                let release = m["kernel_release"].as_str().unwrap().to_string();
                (
                    spec.board,
                    Parts {
                        fat,
                        root,
                        initramfs,
                        release,
                    },
                )
            })
            .collect()
    });
    &all[board]
}

fn fdtget(dtb: &Path, node: &str, prop: &str) -> Vec<String> {
    run(Command::new("fdtget")
        .args(["-t", "s"])
        .arg(dtb)
        .args([node, prop]))
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// The modalias the kernel gives a device tree node (drivers/of/module.c, of_modalias).
fn of_modalias(dtb: &Path, node: &str) -> String {
    let name = node.rsplit('/').next().unwrap().split('@').next().unwrap();
    let compat = fdtget(dtb, node, "compatible");
    assert!(!compat.is_empty(), "{node} has no compatible");
    format!("of:N{name}T(null)C{}", compat.join("C"))
}

/// The modalias a USB device gets once it enumerates (drivers/usb/core/message.c), with the
/// vendor and product from its device tree node (`usb424,ec00`) and the rest zero.
fn usb_modalias(dtb: &Path, node: &str) -> String {
    let compat = fdtget(dtb, node, "compatible");
    let ids = compat[0].strip_prefix("usb").unwrap();
    let (v, p) = ids.split_once(',').unwrap();
    format!(
        "usb:v{:0>4}p{:0>4}d0000dc00dsc00dp00icFFisc00ip00in00",
        v.to_uppercase(),
        p.to_uppercase()
    )
}

/// The modules kmod's modprobe would load for `alias` from the initramfs's modules, indexed by
/// kmod's own depmod (not piimg's modules.dep): module names, dependencies first.
fn kmod_resolves(parts: &Parts, alias: &str) -> Vec<String> {
    let r = tool(
        Command::new("modprobe")
            .arg("-d")
            .arg(&parts.initramfs)
            .args(["-S", &parts.release, "--show-depends", alias]),
    );
    r.text()
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| {
            let file = p.trim().rsplit('/').next().unwrap();
            file.split(".ko").next().unwrap().replace('-', "_")
        })
        .collect()
}

fn depmod(parts: &Parts) {
    run(Command::new("depmod")
        .arg("-b")
        .arg(&parts.initramfs)
        .arg(&parts.release));
}

fn stage1_list(parts: &Parts) -> Vec<String> {
    std::fs::read_to_string(parts.initramfs.join("etc/piimg/stage1.modules"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let file = l.rsplit('/').next().unwrap();
            file.split(".ko").next().unwrap().replace('-', "_")
        })
        .collect()
}

fn dtb_of(spec: &BoardSpec) -> PathBuf {
    let p = parts(spec.board);
    let dtb = shared()
        .work
        .join(format!("parts-{}", spec.board))
        .join("fat")
        .join(spec.dtb);
    assert!(
        p.fat.contains_key(spec.dtb),
        "{}: no {}",
        spec.board,
        spec.dtb
    );
    dtb
}

#[test]
fn each_board_gets_the_firmware_its_boot_rom_reads() {
    let b = shared();
    b.build.assert_ok();
    let m = read_json(&b.out.join("rpi3b.manifest.json"));
    let sha = m["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "raspi-firmware")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let deb = cache_home().join("piimg/sha256").join(sha);
    for spec in BOARDS {
        let p = parts(spec.board);
        for f in spec.firmware {
            let want = deb_member(&deb, &format!("./usr/lib/raspi-firmware/{f}"));
            assert!(!want.is_empty());
            assert!(
                p.fat.get(*f) == Some(&want),
                "{}: {f} missing or not raspi-firmware's",
                spec.board
            );
        }
        // The Pi 4 bootloader lives in its EEPROM; a Pi 3's firmware files do not belong there.
        if spec.firmware == PI4_FIRMWARE {
            assert!(!p.fat.contains_key("bootcode.bin"), "{}", spec.board);
        }
    }
}

#[test]
fn config_txt_names_the_boards_device_tree() {
    for spec in BOARDS {
        let p = parts(spec.board);
        let config = String::from_utf8(p.fat["config.txt"].clone()).unwrap();
        // device_tree= before any [filter] section applies to every board.
        let named: Vec<&str> = config
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .filter_map(|l| l.trim().strip_prefix("device_tree="))
            .collect();
        assert_eq!(named, [spec.dtb], "{}:\n{config}", spec.board);
        let dtb = dtb_of(spec);
        let compat = fdtget(&dtb, "/", "compatible");
        assert_eq!(compat[0], spec.root_compatible, "{}", spec.board);
    }
}

#[test]
fn storage_nic_phy_and_usb_drivers_are_what_kmod_resolves_and_stage_one_loads() {
    for spec in BOARDS {
        let p = parts(spec.board);
        let dtb = dtb_of(spec);
        depmod(p);
        let stage1 = stage1_list(p);
        let mut wanted = vec![(of_modalias(&dtb, spec.sd_node), spec.sd_module)];
        if let Some((node, module)) = spec.nic {
            let alias = if node.contains("/usb") {
                usb_modalias(&dtb, node)
            } else {
                of_modalias(&dtb, node)
            };
            wanted.push((alias, module));
        }
        if let Some((id, module)) = spec.phy {
            wanted.push((format!("mdio:{id:032b}"), module));
        }
        // Pi 4: the USB-A ports' controller, a VIA VL805 xHCI on PCIe (class 0c0330).
        if spec.board == "rpi4b" {
            wanted.push((
                "pci:v00001106d00003483sv00001106sd00003483bc0Csc03i30".into(),
                "xhci_pci",
            ));
        }
        // USB Ethernet adapters any board may carry: an RTL8153, an AX88179 (by vendor and
        // product) and a CDC ECM device (by interface class 02/06, as QEMU's usb-net).
        for (alias, module) in [
            ("usb:v0BDAp8153d3000dc00dsc00dp00icFFiscFFip00in00", "r8152"),
            (
                "usb:v0B95p1790d0100dcFFdscFFdp00icFFiscFFip00in00",
                "ax88179_178a",
            ),
            (
                "usb:v0525pA4A2d0000dc02dsc00dp00ic02isc06ip00in00",
                "cdc_ether",
            ),
        ] {
            wanted.push((alias.into(), module));
        }
        for (alias, module) in &wanted {
            let got = kmod_resolves(p, alias);
            assert!(
                got.iter().any(|m| m == module),
                "{}: modprobe resolves {alias} to {got:?}, not {module}",
                spec.board
            );
            for m in &got {
                assert!(
                    stage1.contains(m),
                    "{}: {m} (for {alias}) is not in stage 1's list {stage1:?}",
                    spec.board
                );
            }
        }
    }
}

/// The drivers follow the board: a Pi 3 image has no Pi 4 Ethernet driver and the reverse, so
/// the lists above come from each board's device tree, not from one list for all.
#[test]
fn no_board_carries_another_boards_nic() {
    let stage1 = |b: &str| stage1_list(parts(b));
    for (board, absent) in [
        ("rpi3b", &["genet", "lan78xx", "broadcom"][..]),
        ("rpi3bplus", &["genet", "smsc95xx"]),
        ("zero2w", &["genet", "smsc95xx", "lan78xx"]),
        ("rpi4b", &["smsc95xx", "lan78xx", "bcm2835"]),
        ("cm4", &["smsc95xx", "lan78xx", "bcm2835"]),
    ] {
        let list = stage1(board);
        for m in absent {
            assert!(!list.iter().any(|x| x == m), "{board}: {m} in {list:?}");
        }
    }
}

/// piimg's own device tree reader, checked against dtc: parsing each board's dtb and writing it
/// back gives a blob dtc decompiles to the same source.
#[test]
fn piimg_reads_and_writes_every_boards_dtb_as_dtc_does() {
    for spec in BOARDS {
        let dtb = dtb_of(spec);
        let raw = std::fs::read(&dtb).unwrap();
        let t = piimg::dtb::Fdt::parse(&raw).unwrap();
        let again = dtb.with_extension("again.dtb");
        std::fs::write(&again, t.to_bytes()).unwrap();
        let dts = |p: &Path| run(Command::new("dtc").args(["-I", "dtb", "-O", "dts"]).arg(p));
        assert_eq!(dts(&dtb), dts(&again), "{}", spec.board);
        // The drivers piimg chose and recorded name the same nodes.
        let m = read_json(&shared().out.join(format!("{}.manifest.json", spec.board)));
        let sd = &m["drivers"][spec.sd_module];
        assert!(
            sd.as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str() == Some(spec.sd_node)),
            "{}: {sd}",
            spec.board
        );
    }
}

/// Wi-Fi firmware by the names brcmfmac requests on each board: `<chip>.bin`, `<chip>.clm_blob`
/// and the NVRAM `<chip>.<board type>.txt`, where the board type is the dtb's first root
/// `compatible` (brcmfmac's of.c) and the chip comes from the driver's own firmware table
/// (`modinfo -F firmware` of the brcmfmac.ko in the image). Only that chip's files are there.
#[test]
fn wifi_firmware_and_supplicant_configuration_on_each_board() {
    for spec in BOARDS {
        let p = parts(spec.board);
        let board_type = fdtget(&dtb_of(spec), "/", "compatible").remove(0);
        let work = shared().work.join(format!("parts-{}", spec.board));
        let ko_path = format!(
            "/usr/lib/modules/{}/kernel/drivers/net/wireless/broadcom/brcm80211/brcmfmac/brcmfmac.ko",
            p.release
        );
        let ko = work.join("brcmfmac.ko");
        let bytes = ext4_read(&p.root, &work, &ko_path)
            .unwrap_or_else(|| panic!("{}: no {ko_path}", spec.board));
        std::fs::write(&ko, bytes).unwrap();
        let table = text_of(Command::new("modinfo").args(["-F", "firmware"]).arg(&ko));
        let chip = spec.wifi_chip;
        for name in [
            format!("brcm/{chip}.bin"),
            format!("brcm/{chip}.clm_blob"),
            format!("brcm/{chip}.{board_type}.txt"),
        ] {
            assert!(
                table.lines().any(|pattern| firmware_glob(pattern, &name)),
                "{}: {name} matches no firmware= entry of brcmfmac:\n{table}",
                spec.board
            );
            let data = ext4_read(&p.root, &work, &format!("/lib/firmware/{name}"))
                .unwrap_or_else(|| panic!("{}: /lib/firmware/{name} missing", spec.board));
            assert!(!data.is_empty(), "{}: {name} is empty", spec.board);
        }
        // The supplicant's configuration, as Debian's wpa_supplicant reads it on the host
        // (in a namespace with no radio: it stops only where it opens the driver).
        let conf = work.join("wpa_supplicant-wlan0.conf");
        let text = ext4_read(
            &p.root,
            &work,
            "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf",
        )
        .unwrap_or_else(|| panic!("{}: no supplicant configuration", spec.board));
        std::fs::write(&conf, text).unwrap();
        let (_, said) = wpa_supplicant_reads(&conf);
        for expected in ["country='DE'", "id=0 ssid='boards'"] {
            assert!(
                said.contains(expected),
                "{}: `{expected}`:\n{said}",
                spec.board
            );
        }
        assert!(
            !said.contains("Failed to read or parse configuration"),
            "{}: {said}",
            spec.board
        );
        let files = ext4_walk(&p.root, "/usr/lib/firmware/brcm");
        assert!(
            !files.is_empty() && files.iter().all(|f| f.contains(&format!("/{chip}."))),
            "{}: {files:?}",
            spec.board
        );
    }
}
