//! Wi-Fi for nodes whose profile has `[network.wifi]` (the Zero 2 W has no other network): the
//! packages, kernel modules, the brcmfmac firmware of the board's chip, the regulatory database
//! and the wpa_supplicant configuration.

use super::AssembleError;
use crate::tree::{FileData, InodeKind, Tree};
use piimg_agent::contract::paths::WPA_CTRL_DIR;
use piimg_agent::node::{Board, Wifi};

/// Debian packages installed into a Wi-Fi node's root with their dependency closure: the
/// supplicant and the regulatory database cfg80211 loads.
pub const ROOT_PACKAGES: &[&str] = &["wpasupplicant", "wireless-regdb"];
/// The Broadcom chips' firmware (non-free-firmware): read into a tree of its own, and only the
/// board chip's files go into the image.
pub const FIRMWARE_PACKAGE: &str = "firmware-brcm80211";
/// Every Wi-Fi package, for `piimg fetch`.
pub const WIFI_PACKAGES: &[&str] = &["wpasupplicant", "wireless-regdb", FIRMWARE_PACKAGE];

/// Loaded at stage 2 on Wi-Fi nodes, with their dependencies. brcmfmac asks for its firmware
/// vendor's module (`brcmfmac-wcc` for Broadcom's SDIO ids, `brcmfmac-cyw` for Cypress') with
/// request_module() while it probes, and fails the probe without it: both are listed, as no
/// `depends=` leads to them.
pub const WIFI_MODULES: &[&str] = &[
    "cfg80211",
    "brcmutil",
    "brcmfmac",
    "brcmfmac_wcc",
    "brcmfmac_cyw",
];

/// Where Debian's packages put firmware (/lib is a link to usr/lib).
const FIRMWARE_DIR: &str = "usr/lib/firmware";

/// The firmware names brcmfmac's SDIO table (brcmf_sdio_fwnames in sdio.c; the `firmware=`
/// entries of brcmfmac.ko) gives each board's chip: BCM43430 rev 1 (A1, "brcmfmac43430-sdio") on
/// the Pi 3B, BCM4345 rev 6 (43455) on the 3B+, 4B and CM4. Zero 2 W boards carry either a
/// CYW43438 (43430 rev 1) or a CYW43436 (43430 rev 4, which the table names 43430B0).
pub fn chip_firmware(board: Board) -> &'static [&'static str] {
    match board {
        Board::Rpi3b => &["brcmfmac43430-sdio"],
        Board::Rpi3bplus | Board::Rpi4b | Board::Cm4 => &["brcmfmac43455-sdio"],
        Board::Zero2w => &["brcmfmac43430-sdio", "brcmfmac43430b0-sdio"],
    }
}

/// The first string of the device tree root's `compatible`: what brcmfmac takes as the board
/// type and puts into the firmware names it asks for (`<chip>.<board type>.txt`).
pub fn board_type(fdt: &crate::dtb::Fdt) -> Option<String> {
    fdt.node("/")?.strings("compatible").into_iter().next()
}

/// One firmware file for the image: its name under /lib/firmware/brcm and its bytes.
pub struct FirmwareFile {
    pub name: String,
    pub data: FileData,
}

/// The files brcmfmac asks for on `board`, from the firmware package's tree: for each chip, the
/// firmware (`.bin`), the regulatory blob (`.clm_blob`) and the board's NVRAM (`.txt`), each by
/// the board-specific name brcmfmac tries first or else the plain one, symlinks followed.
/// Returns the files and the chips the package has no firmware for.
pub fn firmware_files(
    fw: &Tree,
    board: Board,
    board_type: &str,
) -> Result<(Vec<FirmwareFile>, Vec<String>), AssembleError> {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for chip in chip_firmware(board) {
        if resolve(fw, &format!("{FIRMWARE_DIR}/brcm/{chip}.bin")).is_none() {
            missing.push(format!("brcm/{chip}.bin"));
            continue;
        }
        for ext in ["bin", "clm_blob", "txt"] {
            let names = [
                format!("{chip}.{board_type}.{ext}"),
                format!("{chip}.{ext}"),
            ];
            let found = names
                .into_iter()
                .find_map(|n| resolve(fw, &format!("{FIRMWARE_DIR}/brcm/{n}")).map(|d| (n, d)));
            match (found, ext) {
                (Some((name, data)), _) => files.push(FirmwareFile { name, data }),
                // Without its NVRAM file the chip does not start: the package must have it.
                (None, "txt") => {
                    return Err(AssembleError::Missing(format!(
                        "{FIRMWARE_PACKAGE}: brcm/{chip}.{board_type}.txt (the NVRAM brcmfmac reads for {board})"
                    )))
                }
                (None, _) => {}
            }
        }
    }
    if files.is_empty() {
        return Err(AssembleError::Missing(format!(
            "{FIRMWARE_PACKAGE}: {} (brcmfmac's firmware for {board})",
            missing.join(", ")
        )));
    }
    Ok((files, missing))
}

/// A regular file's bytes at `path`, following symlinks (relative or absolute) within `tree`.
fn resolve(tree: &Tree, path: &str) -> Option<FileData> {
    let mut path = path.to_string();
    for _ in 0..8 {
        match &tree.inode(tree.lookup(&path)?).kind {
            InodeKind::File(d) => return Some(d.clone()),
            InodeKind::Symlink(t) => {
                let t = String::from_utf8_lossy(t);
                let joined = match t.strip_prefix('/') {
                    Some(abs) => abs.to_string(),
                    None => format!("{}/{t}", path.rsplit_once('/').map_or("", |(d, _)| d)),
                };
                path = normalize(&joined);
            }
            InodeKind::Dir(_) => return None,
            _ => return None,
        }
    }
    None
}

/// `a/b/../c` -> `a/c`.
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// What wireless-regdb's postinst does with update-alternatives, at its highest priority (100,
/// Debian's signature, which the Debian kernel's built-in keys verify): the names cfg80211
/// requests, through /etc/alternatives.
pub const REGDB_LINKS: &[(&str, &str)] = &[
    (
        "etc/alternatives/regulatory.db",
        "/lib/firmware/regulatory.db-debian",
    ),
    (
        "etc/alternatives/regulatory.db.p7s",
        "/lib/firmware/regulatory.db.p7s-debian",
    ),
    (
        "usr/lib/firmware/regulatory.db",
        "/etc/alternatives/regulatory.db",
    ),
    (
        "usr/lib/firmware/regulatory.db.p7s",
        "/etc/alternatives/regulatory.db.p7s",
    ),
];

/// wpa_supplicant's configuration for the node's network: the control socket folder the agent
/// waits on, the regulatory domain and one network, WPA-PSK with a passphrase or open without.
pub fn wpa_supplicant_conf(wifi: &Wifi, passphrase: Option<&str>) -> String {
    let mut network = format!("\tssid={}\n\tscan_ssid=1\n", ssid_value(&wifi.ssid));
    match passphrase {
        Some(p) => network.push_str(&format!(
            "\tkey_mgmt=WPA-PSK\n\tpsk={}\n",
            wpa_psk(&wifi.ssid, p)
        )),
        None => network.push_str("\tkey_mgmt=NONE\n"),
    }
    format!(
        "# Written by piimg for [network.wifi]; the agent runs wpa_supplicant with it.\n\
         ctrl_interface=DIR={WPA_CTRL_DIR}\ncountry={}\nnetwork={{\n{network}}}\n",
        wifi.country
    )
}

/// The 256-bit PSK as 64 lowercase hex digits, what wpa_supplicant takes unquoted: 64 hex digits
/// are the PSK already; a passphrase becomes PBKDF2-HMAC-SHA1(passphrase, SSID, 4096, 32 bytes)
/// (IEEE 802.11i H.4, what `wpa_passphrase` prints). A quoted passphrase would have to survive
/// wpa_supplicant's quoting, which has no escapes (`"` and `#` in it cut it short), and would
/// put the passphrase itself on the card.
pub fn wpa_psk(ssid: &str, passphrase: &str) -> String {
    if passphrase.len() == 64 && passphrase.bytes().all(|c| c.is_ascii_hexdigit()) {
        return passphrase.to_ascii_lowercase();
    }
    const ROUNDS: std::num::NonZeroU32 = match std::num::NonZeroU32::new(4096) {
        Some(n) => n,
        None => unreachable!(),
    };
    let mut psk = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        ROUNDS,
        ssid.as_bytes(),
        passphrase.as_bytes(),
        &mut psk,
    );
    hex::encode(psk)
}

/// A printable SSID quoted as written, any other as the hex of its bytes (which wpa_supplicant
/// also takes), so no byte of it can end the line or the string.
fn ssid_value(ssid: &str) -> String {
    if ssid.bytes().all(|c| (0x20..0x7f).contains(&c) && c != b'"') {
        format!("\"{ssid}\"")
    } else {
        hex::encode(ssid.as_bytes())
    }
}

/// The kernel command line with cfg80211's regulatory domain: set before any scan, so the radio
/// uses the country's channels from the start rather than the world domain's.
pub fn with_regdom(cmdline: &str, country: &str) -> String {
    format!(
        "{} cfg80211.ieee80211_regdom={country}\n",
        cmdline.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;

    fn wifi() -> Wifi {
        Wifi {
            ssid: "lab".into(),
            country: "DE".into(),
        }
    }

    #[test]
    fn the_supplicant_config_is_wpa_psk_with_a_passphrase_and_open_without() {
        let psk = wpa_supplicant_conf(&wifi(), Some("correct horse"));
        assert!(psk.contains("ctrl_interface=DIR=/run/wpa_supplicant\ncountry=DE\n"));
        assert!(psk.contains(&format!(
            "\tssid=\"lab\"\n\tscan_ssid=1\n\tkey_mgmt=WPA-PSK\n\tpsk={}\n}}\n",
            wpa_psk("lab", "correct horse")
        )));
        assert!(!psk.contains("correct horse"));
        let open = wpa_supplicant_conf(&wifi(), None);
        assert!(open.contains("\tkey_mgmt=NONE\n}") && !open.contains("psk"));
        let raw = "aB".repeat(32);
        assert!(wpa_supplicant_conf(&wifi(), Some(&raw))
            .contains(&format!("\tpsk={}\n", "ab".repeat(32))));
        let odd = Wifi {
            ssid: "caf\u{e9} \"x\"".into(),
            country: "FR".into(),
        };
        assert!(wpa_supplicant_conf(&odd, None)
            .contains(&format!("\tssid={}\n", hex::encode(odd.ssid.as_bytes()))));
    }

    #[test]
    fn a_passphrase_becomes_the_psk_of_ieee_802_11i() {
        // IEEE 802.11i-2004 H.4.2's test vectors.
        assert_eq!(
            wpa_psk("IEEE", "password"),
            "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
        );
        assert_eq!(
            wpa_psk("ThisIsASSID", "ThisIsAPassword"),
            "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"
        );
    }

    #[test]
    fn the_regulatory_domain_joins_the_command_line() {
        assert_eq!(
            with_regdom("console=ttyAMA0 rootwait ro\n", "GB"),
            "console=ttyAMA0 rootwait ro cfg80211.ieee80211_regdom=GB\n"
        );
    }

    #[test]
    fn firmware_is_found_by_board_type_first_through_symlinks() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let m = Meta::root(0o644, 0);
        let dir = "usr/lib/firmware";
        t.add_file(
            format!("{dir}/cypress/cyfmac43430-sdio.bin"),
            m.clone(),
            FileData::from_bytes(b"fw".to_vec()),
        )
        .unwrap();
        t.add_symlink(
            format!("{dir}/brcm/brcmfmac43430-sdio.bin"),
            "../cypress/cyfmac43430-sdio.bin",
            m.clone(),
        )
        .unwrap();
        t.add_file(
            format!("{dir}/brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt"),
            m.clone(),
            FileData::from_bytes(b"nvram".to_vec()),
        )
        .unwrap();
        t.add_symlink(
            format!("{dir}/brcm/brcmfmac43430-sdio.raspberrypi,model-zero-2-w.txt"),
            "brcmfmac43430-sdio.raspberrypi,3-model-b.txt",
            m.clone(),
        )
        .unwrap();
        let (files, missing) =
            firmware_files(&t, Board::Zero2w, "raspberrypi,model-zero-2-w").unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "brcmfmac43430-sdio.bin",
                "brcmfmac43430-sdio.raspberrypi,model-zero-2-w.txt"
            ]
        );
        assert_eq!(files[1].data.read_all().unwrap(), b"nvram");
        assert_eq!(missing, ["brcm/brcmfmac43430b0-sdio.bin"]);
        assert!(firmware_files(&t, Board::Rpi4b, "raspberrypi,4-model-b").is_err());
        assert!(
            matches!(firmware_files(&t, Board::Rpi3b, "raspberrypi,3-model-b-plus"), Err(AssembleError::Missing(m)) if m.contains("3-model-b-plus.txt"))
        );
    }
}
