//! `[netboot]`: where a Pi's bootloader looks for this node's files in a netboot tree (its
//! serial or MAC folder), the server its initramfs fetches the root from, and whether a netboot
//! tree may carry the node's secrets.

use super::fields::Ctx;
use super::schema::NetbootSpec;
use piimg_agent::node::Board;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The folder of a netboot tree the bootloader reads this node's files from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetbootKey {
    /// The board serial, 8 lowercase hex digits (Pi 3 ROM; Pi 4 EEPROM TFTP_PREFIX=0, the default).
    Serial(String),
    /// The MAC address as `dc-a6-32-01-36-c2` (Pi 4 EEPROM TFTP_PREFIX=2).
    Mac(String),
}

impl NetbootKey {
    /// The folder name, as the bootloader spells it.
    pub fn dir(&self) -> &str {
        match self {
            NetbootKey::Serial(s) | NetbootKey::Mac(s) => s,
        }
    }

    pub fn field(&self) -> &'static str {
        match self {
            NetbootKey::Serial(_) => "netboot.serial",
            NetbootKey::Mac(_) => "netboot.mac",
        }
    }
}

/// What a netboot tree may hold of a node's secrets (join token, certificate key, CA keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretsPolicy {
    /// None: they go on a small local card (`NAME.secrets.img`), mounted on /var at boot.
    #[default]
    Card,
    /// In the root image, served to anyone on the LAN; `piimg netboot check` warns.
    Serve,
}

/// `[netboot]` resolved; every field is optional until `piimg build --netboot` needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetbootSettings {
    pub key: Option<NetbootKey>,
    /// Where `piimg serve` answers HTTP: the initramfs fetches the root from here.
    pub server: Option<SocketAddr>,
    pub secrets: SecretsPolicy,
}

/// The section as this profile sets it.
pub(super) fn check(
    ctx: &mut Ctx,
    spec: &NetbootSpec,
    board: Board,
    wifi: bool,
) -> NetbootSettings {
    let serial = spec.serial.as_deref().and_then(|s| serial(ctx, s));
    let mac = spec.mac.as_deref().and_then(|m| mac(ctx, m));
    let key = match (serial, mac) {
        (Some(_), Some(_)) => {
            ctx.err(
                "netboot.mac",
                "set netboot.serial or netboot.mac, not both: the bootloader reads one folder (TFTP_PREFIX)",
            );
            None
        }
        (s, m) => s.or(m),
    };
    if spec.serial.is_some() || spec.mac.is_some() {
        match board {
            Board::Zero2w => ctx.err(
                if spec.serial.is_some() {
                    "netboot.serial"
                } else {
                    "netboot.mac"
                },
                "a Zero 2 W has no Ethernet port: its boot ROM cannot boot from the network",
            ),
            // The boot ROM and stage 1 fetch over Ethernet; the supplicant runs in stage 2.
            _ if wifi => ctx.err(
                if spec.serial.is_some() {
                    "netboot.serial"
                } else {
                    "netboot.mac"
                },
                "a node on Wi-Fi cannot netboot: the boot ROM and the initramfs fetch over Ethernet, before wpa_supplicant runs",
            ),
            Board::Rpi3b | Board::Rpi3bplus if spec.mac.is_some() => ctx.err(
                "netboot.mac",
                format!(
                    "the {board} boot ROM looks for its serial folder only: set netboot.serial"
                ),
            ),
            _ => {}
        }
    }
    let server = spec.server.as_deref().and_then(|s| server(ctx, s));
    NetbootSettings {
        key,
        server,
        secrets: spec.secrets.unwrap_or_default(),
    }
}

/// The bootloader asks for the serial in 8 lowercase hex digits (e.g. `9ffefdef/start4.elf`).
fn serial(ctx: &mut Ctx, s: &str) -> Option<NetbootKey> {
    let ok = s.len() == 8 && s.chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        ctx.err(
            "netboot.serial",
            format!("`{s}` is not a board serial: 8 hex digits, as `vcgencmd otp_dump | grep 28:` or /proc/cpuinfo's Serial end (e.g. \"9ffefdef\")"),
        );
        return None;
    }
    Some(NetbootKey::Serial(s.to_ascii_lowercase()))
}

/// `dc:a6:32:01:36:c2` or `dc-a6-32-01-36-c2`, kept in the bootloader's dashed lowercase form.
fn mac(ctx: &mut Ctx, m: &str) -> Option<NetbootKey> {
    let parts: Vec<&str> = m.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        ctx.err(
            "netboot.mac",
            format!("`{m}` is not a MAC address (e.g. \"dc:a6:32:01:36:c2\")"),
        );
        return None;
    }
    Some(NetbootKey::Mac(parts.join("-").to_ascii_lowercase()))
}

/// `http://ADDRESS:PORT`: the initramfs has no resolver, so an address, not a name.
fn server(ctx: &mut Ctx, s: &str) -> Option<SocketAddr> {
    let parsed = s
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .and_then(|r| r.parse::<SocketAddr>().ok());
    if parsed.is_none() {
        ctx.err(
            "netboot.server",
            format!("`{s}` is not http://ADDRESS:PORT (an IP address: the initramfs resolves no names; e.g. \"http://192.168.50.2:8080\")"),
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, folder};
    use super::NetbootSettings;

    /// `[netboot]` with `body` on a load balancer of `board`: its settings, or every error.
    fn netboot(board: &str, body: &str) -> Result<NetbootSettings, String> {
        let text = format!(
            "hostname = \"n1\"\nboard = \"{board}\"\nrole = \"load-balancer\"\n\
             [network]\naddress = \"192.168.50.10/24\"\n[netboot]\n{body}\n"
        );
        let (d, diags) = folder(&[("n1", &text)]).draft("n1");
        d.map(|d| d.netboot)
            .ok_or_else(|| errors(&diags).join("\n"))
    }

    #[test]
    fn serials_and_macs_are_kept_as_the_bootloader_spells_them() {
        let n = netboot("rpi4b", "mac = \"DC:A6:32:01:36:C2\"").unwrap();
        assert_eq!(n.key.unwrap().dir(), "dc-a6-32-01-36-c2");
        let n = netboot(
            "rpi4b",
            "serial = \"9FFEFDEF\"\nserver = \"http://10.0.0.2:8080/\"",
        )
        .unwrap();
        assert_eq!(n.key.unwrap().dir(), "9ffefdef");
        assert_eq!(n.server.unwrap().to_string(), "10.0.0.2:8080");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, field) in [
            ("serial = \"9ffefde\"", "netboot.serial"),
            ("serial = \"9ffefdeg\"", "netboot.serial"),
            ("mac = \"dc:a6:32:01:36\"", "netboot.mac"),
            ("server = \"http://pxe.lan:8080\"", "netboot.server"),
            ("server = \"10.0.0.2:8080\"", "netboot.server"),
            ("secrets = \"lan\"", "netboot.secrets"),
            (
                "serial = \"9ffefdef\"\nmac = \"dc:a6:32:01:36:c2\"",
                "netboot.mac",
            ),
        ] {
            let e = netboot("rpi4b", body).unwrap_err();
            assert!(e.starts_with(field), "{body}: {e}");
        }
    }

    #[test]
    fn boards_whose_rom_cannot_use_the_key_are_refused() {
        let e = netboot("zero2w", "serial = \"9ffefdef\"").unwrap_err();
        assert!(e.contains("no Ethernet"), "{e}");
        let e = netboot("rpi3b", "mac = \"dc:a6:32:01:36:c2\"").unwrap_err();
        assert!(e.contains("serial folder only"), "{e}");
        netboot("rpi3bplus", "serial = \"9ffefdef\"").unwrap();
    }

    #[test]
    fn a_wifi_node_cannot_netboot() {
        let text = "hostname = \"n1\"\nboard = \"rpi4b\"\nrole = \"load-balancer\"\n\
             [network]\naddress = \"192.168.50.10/24\"\n[network.wifi]\nssid = \"lab\"\n\
             country = \"DE\"\n[netboot]\nserial = \"9ffefdef\"\n";
        let (d, diags) = folder(&[("n1", text)]).draft("n1");
        assert!(d.is_none());
        let e = errors(&diags).join("\n");
        assert!(
            e.starts_with("netboot.serial") && e.contains("Wi-Fi"),
            "{e}"
        );
    }
}
