//! QEMU's Raspberry Pi machines that piimg boots images in: `raspi3b` for the BCM2837 boards
//! (Pi 3, Pi 3+, Zero 2 W) and `raspi4b` (QEMU >= 9) for the BCM2711 ones (Pi 4, CM4). The
//! device tree the guest boots says which: it names its SoC in the root `compatible`.

use super::pi4;
use crate::dtb::Fdt;
use piimg_agent::node::Board;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Raspi3b,
    Raspi4b,
}

impl Machine {
    pub fn for_board(board: Board) -> Machine {
        match board {
            Board::Rpi3b | Board::Rpi3bplus | Board::Zero2w => Machine::Raspi3b,
            Board::Rpi4b | Board::Cm4 => Machine::Raspi4b,
        }
    }

    /// The machine for a device tree: raspi4b for a BCM2711 one, else raspi3b (also for bytes
    /// that are no device tree: QEMU then says what is wrong with them).
    pub fn of_dtb(bytes: &[u8]) -> Machine {
        let bcm2711 = Fdt::parse(bytes).is_ok_and(|f| {
            f.root
                .strings("compatible")
                .iter()
                .any(|c| c == "brcm,bcm2711")
        });
        if bcm2711 {
            Machine::Raspi4b
        } else {
            Machine::Raspi3b
        }
    }

    /// QEMU's `-M` name.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Raspi3b => "raspi3b",
            Machine::Raspi4b => "raspi4b",
        }
    }

    /// `-m`: raspi3b takes only 1G, raspi4b only 2G (QEMU 10 refuses other sizes).
    pub fn default_memory(self) -> &'static str {
        match self {
            Machine::Raspi3b => "1G",
            Machine::Raspi4b => "2G",
        }
    }

    /// What the user should know about the machine's hardware before trusting a result.
    pub fn note(self) -> Option<&'static str> {
        match self {
            Machine::Raspi3b => None,
            Machine::Raspi4b => Some(
                "raspi4b emulates no GENET Ethernet and no PCIe: the guest's network is QEMU's USB Ethernet adapter on the OTG port (dwc2, cdc_ether), which a real Pi 4 does not have; the device tree was edited for QEMU (Bluetooth, Wi-Fi and what QEMU does not emulate removed or disabled)",
            ),
        }
    }

    /// The board's device tree as the machine needs it.
    pub fn prepare_dtb(self, bytes: Vec<u8>) -> Result<Vec<u8>, pi4::Pi4DtbError> {
        match self {
            Machine::Raspi3b => Ok(super::raspi3b_dtb(&bytes)?),
            Machine::Raspi4b => Ok(pi4::raspi4b_dtb(&bytes)?.0),
        }
    }
}
