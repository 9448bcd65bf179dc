//! `[network.wifi]` and the Zero 2 W's network: the board has no Ethernet port, so its profile
//! says how the node reaches its cluster, by Wi-Fi or by a USB Ethernet adapter it declares.

use super::fields::Ctx;
use super::schema::{NetworkSpec, WifiSpec};
use piimg_agent::contract::paths::WIFI_INTERFACE;
use piimg_agent::node::{Board, Wifi};

/// ISO 3166-1 alpha-2 codes officially assigned: the regulatory domains cfg80211 knows by name.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL \
BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM \
DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC \
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE \
NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD \
SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA \
UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The node's Wi-Fi settings, None without `[network.wifi]`; the Zero 2 W rule checked too.
pub(super) fn check(ctx: &mut Ctx, n: &NetworkSpec, board: Board) -> Option<Wifi> {
    let wifi = n.wifi.as_ref().and_then(|w| wifi(ctx, w));
    check_interface(ctx, n);
    check_zero2w(ctx, n, board);
    wifi
}

fn wifi(ctx: &mut Ctx, w: &WifiSpec) -> Option<Wifi> {
    let ssid = match w.ssid.as_deref() {
        Some(s) if valid_ssid(s) => Some(s.to_string()),
        Some(s) => {
            ctx.err(
                "network.wifi.ssid",
                format!(
                    "an SSID is 1 to 32 bytes without control characters; this one is {} bytes",
                    s.len()
                ),
            );
            None
        }
        None => {
            ctx.missing(
                "network.wifi.ssid",
                "network.wifi.ssid (the network's name)",
            );
            None
        }
    };
    let country = match w.country.as_deref() {
        Some(c) if COUNTRIES.split(' ').any(|k| k == c) => Some(c.to_string()),
        Some(c) => {
            ctx.err(
                "network.wifi.country",
                format!("`{c}` is not an ISO 3166-1 alpha-2 country code (two capital letters, e.g. \"DE\" or \"US\"); it sets the channels and power the radio may use"),
            );
            None
        }
        None => {
            ctx.missing(
                "network.wifi.country",
                "network.wifi.country (ISO 3166-1 alpha-2 code of where the node runs, e.g. \"GB\")",
            );
            None
        }
    };
    Some(Wifi {
        ssid: ssid?,
        country: country?,
    })
}

/// What wpa_supplicant's configuration can carry: 1-32 bytes, no line breaks or other controls.
fn valid_ssid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && !s.chars().any(char::is_control)
}

/// `[network.wifi]` makes wlan0 the node's interface. Another interface set in the file that
/// holds [network.wifi] or in a more specific one (the node's own over the base it extends) is a
/// contradiction; only one inherited from a profile the Wi-Fi's file extends is overridden.
fn check_interface(ctx: &mut Ctx, n: &NetworkSpec) {
    let (Some(_), Some(i)) = (&n.wifi, &n.interface) else {
        return;
    };
    let file = |field| ctx.origins.file_of(field);
    let rank = |field| file(field).and_then(|f| ctx.chain.iter().position(|c| c == f));
    let inherited = matches!(
        (rank("network.interface"), rank("network.wifi")),
        (Some(interface), Some(wifi)) if interface > wifi
    );
    if i == WIFI_INTERFACE || inherited {
        return;
    }
    let wifi_at = match file("network.wifi") {
        Some(w) if file("network.interface") != Some(w) => format!(" (in {})", w.display()),
        _ => String::new(),
    };
    ctx.err(
        "network.interface",
        format!("`{i}` beside [network.wifi]{wifi_at}: a Wi-Fi node's interface is {WIFI_INTERFACE}; remove this line"),
    );
}

/// A Zero 2 W has no Ethernet port: an interface name alone would build a node that never
/// reaches its cluster.
fn check_zero2w(ctx: &mut Ctx, n: &NetworkSpec, board: Board) {
    if board == Board::Zero2w && n.wifi.is_none() && n.usb_ethernet != Some(true) {
        ctx.err(
            "board",
            "a Zero 2 W has no Ethernet port: add [network.wifi] with ssid and country, or declare a USB Ethernet adapter with network.usb_ethernet = true",
        );
    }
}

/// The node's interface: wlan0 with Wi-Fi, else the profile's (default eth0).
pub(super) fn interface(n: &NetworkSpec) -> String {
    if n.wifi.is_some() {
        return WIFI_INTERFACE.to_string();
    }
    n.interface.clone().unwrap_or_else(|| "eth0".to_string())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors, folder, lb_node};
    use super::*;

    fn spec(text: &str) -> NetworkSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn wifi_needs_an_ssid_and_a_country_code() {
        let n = spec("[wifi]\nssid = \"lab\"\ncountry = \"DE\"");
        let (w, diags) = check(|ctx| super::check(ctx, &n, Board::Zero2w));
        assert!(diags.0.is_empty(), "{diags}");
        assert_eq!(
            w,
            Some(Wifi {
                ssid: "lab".into(),
                country: "DE".into()
            })
        );
        assert_eq!(interface(&n), "wlan0");
        let n = spec("[wifi]\nssid = \"lab\"\ncountry = \"de\"");
        let (w, diags) = check(|ctx| super::check(ctx, &n, Board::Rpi4b));
        assert_eq!(w, None);
        assert!(errors(&diags)[0].starts_with("network.wifi.country: `de` is not an ISO 3166-1"));
        let n = spec("[wifi]\nssid = \"a\\nb\"");
        let (_, diags) = check(|ctx| super::check(ctx, &n, Board::Rpi4b));
        let e = errors(&diags);
        assert!(
            e[0].starts_with("network.wifi.ssid: an SSID is 1 to 32 bytes"),
            "{e:?}"
        );
        assert!(e[1].starts_with("network.wifi.country: missing"), "{e:?}");
        assert!(!valid_ssid(&"x".repeat(33)) && valid_ssid(&"x".repeat(32)));
        assert!(!COUNTRIES.split(' ').any(|c| c == "XX" || c == "UK"));
        assert_eq!(COUNTRIES.split(' ').count(), 249);
    }

    #[test]
    fn a_zero_2_w_declares_wifi_or_usb_ethernet_and_an_interface_name_is_neither() {
        for (text, ok) in [
            ("", false),
            ("interface = \"eth0\"", false),
            ("usb_ethernet = false", false),
            ("usb_ethernet = true", true),
            ("[wifi]\nssid = \"lab\"\ncountry = \"DE\"", true),
        ] {
            let (_, diags) = check(|ctx| super::check(ctx, &spec(text), Board::Zero2w));
            assert_eq!(diags.0.is_empty(), ok, "{text}: {diags}");
            let (_, diags) = check(|ctx| super::check(ctx, &spec(text), Board::Rpi3b));
            assert!(diags.0.is_empty(), "{text}: {diags}");
        }
        let (_, diags) = check(|ctx| super::check(ctx, &spec(""), Board::Zero2w));
        assert!(errors(&diags)[0].starts_with("board: a Zero 2 W has no Ethernet port"));
    }

    #[test]
    fn wifi_overrides_an_inherited_interface_but_not_one_beside_it() {
        let wifi = "[network.wifi]\nssid = \"lab\"\ncountry = \"DE\"\n";
        let base = "abstract = true\n[network]\ninterface = \"eth0\"\n";
        let node = format!("extends = \"base\"\n{}", lb_node("lb1", "10.0.0.2/24", ""))
            .replace("rpi3b", "zero2w")
            + wifi;
        let f = folder(&[("base", base), ("lb1", &node)]);
        let (d, diags) = f.draft("lb1");
        assert!(!diags.has_errors(), "{diags}");
        assert_eq!(d.expect("a draft").network.interface, "wlan0");
        let beside = lb_node("lb1", "10.0.0.2/24", "interface = \"eth1\"") + wifi;
        let f = folder(&[("lb1", &beside)]);
        let (d, diags) = f.draft("lb1");
        assert!(d.is_none());
        let e = &diags.0[0];
        assert_eq!(e.field, "network.interface");
        assert_eq!(e.location.line, Some(7));
    }

    #[test]
    fn an_inherited_wifi_does_not_override_the_nodes_own_interface() {
        let base = "abstract = true\n[network.wifi]\nssid = \"lab\"\ncountry = \"DE\"\n";
        let node = |extra: &str| {
            format!(
                "extends = \"base\"\n{}",
                lb_node("lb1", "10.0.0.2/24", extra)
            )
        };
        let f = folder(&[("base", base), ("lb1", &node("interface = \"eth1\""))]);
        let (d, diags) = f.draft("lb1");
        assert!(d.is_none());
        let e = &diags.0[0];
        assert_eq!(
            (e.field.as_str(), e.location.file.as_path(), e.location.line),
            (
                "network.interface",
                f.dir.path().join("lb1.toml").as_path(),
                Some(8)
            )
        );
        let base_path = f.dir.path().join("base.toml");
        assert_eq!(
            e.message,
            format!(
                "`eth1` beside [network.wifi] (in {}): a Wi-Fi node's interface is wlan0; remove this line",
                base_path.display()
            )
        );
        // Set between them, in a profile that extends the Wi-Fi's: as much the node's own.
        let mid = "abstract = true\nextends = \"base\"\n[network]\ninterface = \"eth1\"\n";
        let f = folder(&[
            ("base", base),
            ("mid", mid),
            ("lb1", &node("").replace("\"base\"", "\"mid\"")),
        ]);
        let (d, diags) = f.draft("lb1");
        assert!(d.is_none());
        let e = &diags.0[0];
        assert_eq!(
            (e.field.as_str(), e.location.file.as_path(), e.location.line),
            (
                "network.interface",
                f.dir.path().join("mid.toml").as_path(),
                Some(4)
            )
        );
        // wlan0 itself says the same as [network.wifi].
        let f = folder(&[("base", base), ("lb1", &node("interface = \"wlan0\""))]);
        let (d, diags) = f.draft("lb1");
        assert!(!diags.has_errors(), "{diags}");
        assert_eq!(d.expect("a draft").network.interface, "wlan0");
    }
}
