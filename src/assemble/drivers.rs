//! Which kernel modules a board needs, read from the device tree it boots with, as udev would
//! choose them: every enabled node's modalias (`of:N..T..C..`) matched against the modules'
//! `alias=` patterns. A node of a USB device (`compatible = "usb424,ec00"`, the Ethernet chip
//! behind a Pi 3's hub) is matched against `usb:v0424pEC00d*` aliases, as the kernel matches the
//! device once it enumerates. The kernel also waits for a device's suppliers (regulators, PHYs,
//! resets, clocks named by phandle) before probing it, so their drivers come along.
//!
//! Only drivers a headless cluster node uses are kept: storage, network, USB and the hardware RNG
//! (TLS and kubeadm's keys want entropy early). udev would also load display, sound, Bluetooth,
//! I2C, LED and PWM drivers; a node has no use for them, and Bluetooth's UART driver would take
//! the serial port. What the device tree cannot say is listed by hand in [`BY_HAND`],
//! [`NODES_BY_HAND`] and [`PHY_IDS`], with the reason.

use crate::components::modules::ModuleSet;
use crate::dtb::{Fdt, Node};
use piimg_agent::modules::glob_match;
use piimg_agent::node::Board;
use std::collections::{BTreeMap, BTreeSet};

/// Module folders whose device-tree matches a node keeps (paths in the kernel package).
const KEPT_DIRS: &[&str] = &[
    "kernel/drivers/mmc/",
    "kernel/drivers/net/",
    "kernel/drivers/usb/",
    "kernel/drivers/char/hw_random/",
];

/// Properties naming a node's suppliers, with the provider's `#...-cells` property (None: one
/// plain phandle). fw_devlink (drivers/of/property.c) defers a probe until these are bound.
const SUPPLIER_PROPS: &[(&str, Option<&str>)] = &[
    ("phys", Some("#phy-cells")),
    ("resets", Some("#reset-cells")),
    ("clocks", Some("#clock-cells")),
    ("power-domains", Some("#power-domain-cells")),
];

/// Ethernet PHYs, found by the MAC driver reading the PHY's id over MDIO: the device tree names
/// the PHY's address, not its chip, so the id is listed here per board; the module is then the
/// one whose `mdio:` alias matches the id. Without the PHY driver the generic one binds and the
/// link still comes up, but without the chip's errata and delay settings.
pub const PHY_IDS: &[(Board, u32, &str)] = &[
    // LAN7515's internal PHY (drivers/net/phy/microchip.c, PHY_ID_LAN88XX).
    (Board::Rpi3bplus, 0x0007_c132, "LAN88xx behind the LAN7515"),
    // The Pi 4's and CM4's GENET PHY (drivers/net/phy/broadcom.c, PHY_ID_BCM54213PE).
    (Board::Rpi4b, 0x600d_84a2, "BCM54213PE on GENET's MDIO bus"),
    (Board::Cm4, 0x600d_84a2, "BCM54213PE on GENET's MDIO bus"),
];

/// Modules no device tree node names, for every board: USB Ethernet adapters (the Zero 2 W's
/// `network.usb_ethernet`, a second NIC) and QEMU's usb-net are not on the board. The agent loads
/// listed modules only (it has no udev), so the common adapter chips are all here: the CDC class
/// drivers (QEMU's usb-net, many adapters), and Realtek's and ASIX's, which claim their chips
/// themselves (cdc_ether leaves an RTL8153 to r8152).
pub const BY_HAND: &[(&str, &str)] = &[
    (
        "cdc_ether",
        "USB Ethernet adapters of the CDC ECM class, QEMU's usb-net",
    ),
    ("cdc_ncm", "USB Ethernet adapters of the CDC NCM class"),
    ("r8152", "Realtek RTL8152/RTL8153 USB Ethernet adapters"),
    (
        "ax88179_178a",
        "ASIX AX88179/AX88178A USB 3 Ethernet adapters",
    ),
    ("asix", "ASIX AX88772 and older USB 2 Ethernet adapters"),
];

/// Devices on a discoverable bus that a device tree node stands for, but with nothing the
/// modules' aliases match (no `compatible`, or a PCI class match): the module by hand, and the
/// node's suppliers as for any chosen node.
pub const NODES_BY_HAND: &[(&str, &str, &str)] = &[
    // xhci-pci resets the VL805 through the firmware (`resets` of this node) before it starts.
    (
        "/scb/pcie@7d500000/pci@0,0/usb@0,0",
        "xhci_pci",
        "the Pi 4's USB 3 controller (VIA VL805) behind PCIe, matched by PCI class",
    ),
];

/// One module and why it is in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub module: String,
    /// Device tree paths, `supplier of PATH`, or the reason it is listed by hand.
    pub why: Vec<String>,
}

/// The modules whose aliases match `modalias`.
fn matching<'a>(set: &'a ModuleSet, modalias: &str) -> Vec<&'a str> {
    set.modules
        .values()
        .filter(|m| m.aliases.iter().any(|a| glob_match(a, modalias)))
        .map(|m| m.name.as_str())
        .collect()
}

/// `usb424,ec00` -> the kernel's USB modalias prefix `usb:v0424pEC00d` (ids are upper-case hex).
fn usb_prefix(compatible: &str) -> Option<String> {
    let ids = compatible.strip_prefix("usb")?;
    let (v, p) = ids.split_once(',')?;
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 4 && s.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| format!("{:0>4}", s.to_ascii_uppercase()))
    };
    Some(format!("usb:v{}p{}d", hex(v)?, hex(p)?))
}

/// Modules for a USB device node: id-table entries naming exactly this vendor and product.
/// Class-matching drivers (cdc_ether and the like) need the descriptors the device reports,
/// which the device tree does not hold, so they are not guessed.
fn usb_matching<'a>(set: &'a ModuleSet, node: &Node) -> Vec<&'a str> {
    let prefixes: Vec<String> = node
        .strings("compatible")
        .iter()
        .filter_map(|c| usb_prefix(c))
        .collect();
    set.modules
        .values()
        .filter(|m| {
            m.aliases
                .iter()
                .any(|a| prefixes.iter().any(|p| a.starts_with(p.as_str())))
        })
        .map(|m| m.name.as_str())
        .collect()
}

fn kept(set: &ModuleSet, module: &str) -> bool {
    set.modules
        .get(module)
        .is_some_and(|m| KEPT_DIRS.iter().any(|d| m.path.starts_with(d)))
}

fn be_u32s(v: &[u8]) -> Vec<u32> {
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The enabled nodes a node's probe waits for: `*-supply` and the phandle lists above.
fn suppliers<'a>(node: &Node, by_phandle: &BTreeMap<u32, (&'a str, &'a Node)>) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (name, value) in &node.props {
        if name.ends_with("-supply") {
            if let Some(&(path, _)) = be_u32s(value).first().and_then(|p| by_phandle.get(p)) {
                out.push(path);
            }
            continue;
        }
        let Some(&(_, cells)) = SUPPLIER_PROPS.iter().find(|(p, _)| p == name) else {
            continue;
        };
        let words = be_u32s(value);
        let mut i = 0;
        while let Some(ph) = words.get(i) {
            let Some(&(path, provider)) = by_phandle.get(ph) else {
                break; // an unknown phandle: the argument count is unknown too
            };
            out.push(path);
            let n = cells
                .and_then(|c| provider.prop(c))
                .and_then(|v| be_u32s(v).first().copied())
                .unwrap_or(0);
            i += 1 + n as usize;
        }
    }
    out
}

/// The board's modules: device-tree matches in [`KEPT_DIRS`], their suppliers' drivers, the
/// board's PHY and [`BY_HAND`]. Sorted by module name; names are canonical (`_`).
pub fn for_board(board: Board, fdt: &Fdt, set: &ModuleSet) -> Vec<Choice> {
    let enabled = fdt.enabled();
    let by_path: BTreeMap<&str, &Node> = enabled.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let by_phandle: BTreeMap<u32, (&str, &Node)> = enabled
        .iter()
        .filter_map(|(p, n)| {
            let ph = be_u32s(n.prop("phandle")?).first().copied()?;
            Some((ph, (p.as_str(), *n)))
        })
        .collect();
    let drivers_of = |node: &Node| -> Vec<&str> {
        let mut v: Vec<&str> = node
            .modalias()
            .map(|m| matching(set, &m))
            .unwrap_or_default();
        v.extend(usb_matching(set, node));
        v
    };

    let mut chosen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut queue: Vec<&str> = Vec::new();
    for (path, node) in &enabled {
        for m in drivers_of(node) {
            if kept(set, m) {
                chosen
                    .entry(m.to_string())
                    .or_default()
                    .insert(path.clone());
                queue.push(path.as_str());
            }
        }
    }
    for &(path, module, why) in NODES_BY_HAND {
        if by_path.contains_key(path) && set.modules.contains_key(module) {
            chosen
                .entry(module.to_string())
                .or_default()
                .insert(format!("{path} (by hand: {why})"));
            queue.push(path);
        }
    }
    let mut seen: BTreeSet<&str> = queue.iter().copied().collect();
    while let Some(path) = queue.pop() {
        let Some(node) = by_path.get(path) else {
            continue;
        };
        for s in suppliers(node, &by_phandle) {
            let Some(sn) = by_path.get(s) else { continue };
            for m in drivers_of(sn) {
                chosen
                    .entry(m.to_string())
                    .or_default()
                    .insert(format!("supplier {s} of {path}"));
            }
            if seen.insert(s) {
                queue.push(s);
            }
        }
    }
    for &(_, id, what) in PHY_IDS.iter().filter(|(b, ..)| *b == board) {
        let alias = format!("mdio:{id:032b}");
        for m in matching(set, &alias) {
            chosen
                .entry(m.to_string())
                .or_default()
                .insert(format!("PHY id {id:#010x}: {what}"));
        }
    }
    for (m, why) in BY_HAND {
        if set.modules.contains_key(*m) {
            chosen
                .entry(m.to_string())
                .or_default()
                .insert(format!("by hand: {why}"));
        }
    }
    chosen
        .into_iter()
        .map(|(module, why)| Choice {
            module,
            why: why.into_iter().collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::modules::ModInfo;

    fn module(name: &str, path: &str, aliases: &[&str]) -> (String, ModInfo) {
        (
            name.to_string(),
            ModInfo {
                name: name.into(),
                path: path.into(),
                aliases: aliases.iter().map(|s| s.to_string()).collect(),
                ..ModInfo::default()
            },
        )
    }

    fn set() -> ModuleSet {
        ModuleSet {
            release: "6.12".into(),
            dir: "usr/lib/modules/6.12".into(),
            modules: [
                module(
                    "sdhci_iproc",
                    "kernel/drivers/mmc/host/sdhci-iproc.ko.xz",
                    &["of:N*T*Cbrcm,bcm2711-emmc2C*", "of:N*T*Cbrcm,bcm2711-emmc2"],
                ),
                module(
                    "gpio_regulator",
                    "kernel/drivers/regulator/gpio-regulator.ko.xz",
                    &["of:N*T*Cregulator-gpio"],
                ),
                module(
                    "vc4",
                    "kernel/drivers/gpu/drm/vc4/vc4.ko.xz",
                    &["of:N*T*Cbrcm,bcm2711-vc5"],
                ),
                module(
                    "smsc95xx",
                    "kernel/drivers/net/usb/smsc95xx.ko.xz",
                    &["usb:v0424pEC00d*dc*dsc*dp*ic*isc*ip*in*"],
                ),
                module(
                    "cdc_ether",
                    "kernel/drivers/net/usb/cdc_ether.ko.xz",
                    &["usb:v*p*d*dc*dsc*dp*ic02isc06ip00in*"],
                ),
                module(
                    "broadcom",
                    "kernel/drivers/net/phy/broadcom.ko.xz",
                    &["mdio:0110000000001101100001001010????"],
                ),
                module(
                    "genet",
                    "kernel/drivers/net/ethernet/broadcom/genet/genet.ko.xz",
                    &["of:N*T*Cbrcm,bcm2711-genet-v5"],
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn node(name: &str, props: &[(&str, &[u8])], children: Vec<Node>) -> Node {
        Node {
            name: name.into(),
            props: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            children,
        }
    }

    fn tree() -> Fdt {
        let ph = 7u32.to_be_bytes();
        Fdt {
            root: node(
                "",
                &[],
                vec![
                    node(
                        "regulator-sd-io-1v8",
                        &[("compatible", b"regulator-gpio\0"), ("phandle", &ph)],
                        vec![],
                    ),
                    node(
                        "mmc@7e340000",
                        &[
                            ("compatible", b"brcm,bcm2711-emmc2\0"),
                            ("vqmmc-supply", &ph),
                        ],
                        vec![],
                    ),
                    node("gpu", &[("compatible", b"brcm,bcm2711-vc5\0")], vec![]),
                    node(
                        "ethernet@7d580000",
                        &[
                            ("compatible", b"brcm,bcm2711-genet-v5\0"),
                            ("status", b"disabled\0"),
                        ],
                        vec![],
                    ),
                    node(
                        "usb",
                        &[],
                        vec![node(
                            "ethernet@1",
                            &[("compatible", b"usb424,ec00\0")],
                            vec![],
                        )],
                    ),
                ],
            ),
            mem_reserve: vec![],
            boot_cpuid: 0,
        }
    }

    #[test]
    fn kept_subsystems_their_suppliers_the_phy_and_hand_picks() {
        let got = for_board(Board::Rpi4b, &tree(), &set());
        let names: Vec<&str> = got.iter().map(|c| c.module.as_str()).collect();
        // vc4 is matched but not kept; genet's node is disabled; the regulator comes as the SD
        // controller's supplier; smsc95xx through its USB ids; cdc_ether by hand, not from the
        // USB node (its alias is a class match).
        assert_eq!(
            names,
            [
                "broadcom",
                "cdc_ether",
                "gpio_regulator",
                "sdhci_iproc",
                "smsc95xx"
            ]
        );
        let reg = got.iter().find(|c| c.module == "gpio_regulator").unwrap();
        assert_eq!(reg.why, ["supplier /regulator-sd-io-1v8 of /mmc@7e340000"]);
        let phy = got.iter().find(|c| c.module == "broadcom").unwrap();
        assert!(phy.why[0].starts_with("PHY id 0x600d84a2"), "{:?}", phy.why);
        let cdc = got.iter().find(|c| c.module == "cdc_ether").unwrap();
        assert!(
            cdc.why.iter().all(|w| w.starts_with("by hand")),
            "{:?}",
            cdc.why
        );
    }

    #[test]
    fn a_node_by_hand_brings_its_module_and_its_suppliers() {
        let mut set = set();
        set.modules.extend([
            module(
                "xhci_pci",
                "kernel/drivers/usb/host/xhci-pci.ko.xz",
                &["pci:v*d*sv*sd*bc0Csc03i30*"],
            ),
            module(
                "reset_raspberrypi",
                "kernel/drivers/reset/reset-raspberrypi.ko.xz",
                &["of:N*T*Craspberrypi,firmware-reset"],
            ),
        ]);
        let ph = 9u32.to_be_bytes();
        let resets = [9u32.to_be_bytes(), 0u32.to_be_bytes()].concat();
        let fdt = Fdt {
            root: node(
                "",
                &[],
                vec![
                    node(
                        "reset",
                        &[
                            ("compatible", b"raspberrypi,firmware-reset\0"),
                            ("phandle", &ph),
                            ("#reset-cells", &1u32.to_be_bytes()),
                        ],
                        vec![],
                    ),
                    node(
                        "scb",
                        &[],
                        vec![node(
                            "pcie@7d500000",
                            &[("compatible", b"brcm,bcm2711-pcie\0")],
                            vec![node(
                                "pci@0,0",
                                &[],
                                vec![node("usb@0,0", &[("resets", &resets)], vec![])],
                            )],
                        )],
                    ),
                ],
            ),
            mem_reserve: vec![],
            boot_cpuid: 0,
        };
        let got = for_board(Board::Rpi4b, &fdt, &set);
        let why = |m: &str| got.iter().find(|c| c.module == m).map(|c| c.why.clone());
        assert!(why("xhci_pci").unwrap()[0].contains("by hand"));
        assert_eq!(
            why("reset_raspberrypi").unwrap(),
            ["supplier /reset of /scb/pcie@7d500000/pci@0,0/usb@0,0"]
        );
    }

    #[test]
    fn a_pi3_gets_no_pi4_phy() {
        let got = for_board(Board::Rpi3b, &tree(), &set());
        assert!(got.iter().all(|c| c.module != "broadcom"));
    }

    #[test]
    fn usb_ids_are_padded_and_upper_case() {
        assert_eq!(
            usb_prefix("usb424,ec00").as_deref(),
            Some("usb:v0424pEC00d")
        );
        assert_eq!(usb_prefix("usb1234,5").as_deref(), Some("usb:v1234p0005d"));
        assert_eq!(usb_prefix("brcm,usb"), None);
        assert_eq!(usb_prefix("usbx,1"), None);
    }
}
