//! The device tree of a Pi 4 or CM4 as QEMU's `raspi4b` machine needs it, edited in memory (the
//! image is never changed). QEMU models the BCM2711's CPUs, GIC and the BCM2835-era peripherals,
//! but not its display pipeline, the brcmstb L2 interrupt controller, AVS, the RNG200, PCIe or
//! GENET: their drivers fault or hang in probe against registers that read as zero, so those
//! nodes are disabled. QEMU wires `-drive if=sd` to the Arasan SDHCI at 0x7e300000, which on a
//! real Pi 4 carries the Wi-Fi chip; emmc2 stays empty.

use crate::dtb::{DtbError, Fdt};

/// The SD controller QEMU's raspi4b attaches the card to.
pub const SD_CONTROLLER: &str = "/soc/mmc@7e300000";
/// The PL011's Bluetooth chip: with it the kernel makes ttyAMA0 (QEMU's console) a serdev bus.
pub const BLUETOOTH: &str = "/soc/serial@7e201000/bluetooth";

/// Parts of `compatible` strings of BCM2711 blocks QEMU's raspi4b does not emulate (QEMU 10.0,
/// hw/arm/bcm2838_peripherals.c), each with what it is.
const NOT_EMULATED: &[(&str, &str)] = &[
    ("hvs", "display: hardware video scaler"),
    ("pixelvalve", "display: pixel valves"),
    ("txp", "display: transposer"),
    ("hdmi", "display: HDMI encoders and their brcmstb I2C buses"),
    ("dvp", "display: HDMI clock and reset block"),
    ("vc4", "display: VC4 KMS"),
    ("v3d", "3D GPU"),
    ("cec", "HDMI CEC"),
    (
        "bcm2711-l2",
        "brcmstb L2 interrupt controller (of the HDMI block)",
    ),
    (
        "brcmstb",
        "other brcmstb blocks (I2C, L2 interrupt controllers)",
    ),
    ("avs", "adaptive voltage scaling monitor"),
    ("thermal", "thermal sensor (inside the AVS monitor)"),
    ("rng", "RNG200 random number generator"),
    (
        "pcie",
        "PCIe root complex (the VL805 USB 3 controller behind it)",
    ),
    ("genet", "GENET Ethernet and its MDIO bus"),
];

#[derive(Debug, thiserror::Error)]
pub enum Pi4DtbError {
    #[error(transparent)]
    Dtb(#[from] DtbError),
    #[error(
        "it has no {SD_CONTROLLER} node, the SD controller QEMU's raspi4b attaches the card to (is it a Pi 4 device tree?)"
    )]
    NoSdController,
}

/// Whether QEMU's raspi4b emulates the device of a node with these `compatible` strings.
pub fn emulated(compatible: &[String]) -> bool {
    !compatible.iter().any(|c| {
        let model = c.split_once(',').map_or(c.as_str(), |(_, m)| m);
        NOT_EMULATED.iter().any(|(part, _)| model.contains(part))
    })
}

/// What [`raspi4b_dtb`] changed, as device tree paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    pub removed: Vec<String>,
    pub disabled: Vec<String>,
}

/// Drops the Bluetooth node under the PL011 UART, as the firmware's `disable-bt` overlay does:
/// the kernel then makes that UART a tty, the console QEMU connects. Whether it was there.
pub fn remove_bluetooth(fdt: &mut Fdt) -> bool {
    let (serial, bt) = BLUETOOTH.rsplit_once('/').unwrap_or(("", BLUETOOTH));
    fdt.node_mut(serial).is_some_and(|n| n.remove_child(bt))
}

/// The edited device tree and what was changed. See the module header for why.
pub fn raspi4b_dtb(bytes: &[u8]) -> Result<(Vec<u8>, Edits), Pi4DtbError> {
    let mut fdt = Fdt::parse(bytes)?;
    let mut edits = Edits::default();
    if remove_bluetooth(&mut fdt) {
        edits.removed.push(BLUETOOTH.to_string());
    }
    // The card: removable (QEMU's card detect works, and `non-removable` skips it), no power
    // sequence (its GPIOs sit behind the firmware's expander, which QEMU does not answer), and no
    // Wi-Fi chip on the bus.
    let sd = fdt
        .node_mut(SD_CONTROLLER)
        .ok_or(Pi4DtbError::NoSdController)?;
    sd.remove_prop("non-removable");
    sd.remove_prop("mmc-pwrseq");
    let wifi: Vec<String> = sd
        .children
        .iter()
        .filter(|c| c.base_name() == "wifi")
        .map(|c| c.name.clone())
        .collect();
    for w in wifi {
        sd.remove_child(&w);
        edits.removed.push(format!("{SD_CONTROLLER}/{w}"));
    }
    edits.disabled = fdt
        .enabled()
        .into_iter()
        .filter(|(_, n)| !emulated(&n.strings("compatible")))
        .map(|(p, _)| p)
        .collect();
    for p in &edits.disabled {
        if let Some(n) = fdt.node_mut(p) {
            n.set_prop("status", b"disabled\0".to_vec());
        }
    }
    Ok((fdt.to_bytes(), edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_pipeline_pcie_and_genet_are_not_emulated() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for c in [
            &["brcm,bcm2711-hdmi0"][..],
            &["brcm,bcm2711-l2-intc", "brcm,l2-intc"],
            &["brcm,bcm2711-pcie"],
            &["brcm,bcm2711-genet-v5"],
            &["brcm,genet-mdio-v5"],
            &["brcm,bcm2711-avs-monitor", "syscon", "simple-mfd"],
            &["brcm,2711-v3d"],
        ] {
            assert!(!emulated(&s(c)), "{c:?}");
        }
        for c in [
            &["brcm,bcm2835-sdhci"][..],
            &["brcm,bcm2835-usb"],
            &["arm,pl011", "arm,primecell"],
            &["brcm,bcm2711-gpio"],
            &["arm,gic-400"],
            &["raspberrypi,bcm2835-firmware", "simple-mfd"],
            &["brcm,bcm2711-vc5"],
        ] {
            assert!(emulated(&s(c)), "{c:?}");
        }
    }

    #[test]
    fn a_tree_without_the_arasan_controller_is_refused() {
        let fdt = Fdt {
            root: crate::dtb::Node::default(),
            mem_reserve: Vec::new(),
            boot_cpuid: 0,
        };
        assert!(matches!(
            raspi4b_dtb(&fdt.to_bytes()),
            Err(Pi4DtbError::NoSdController)
        ));
    }
}
