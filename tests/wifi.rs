//! A Zero 2 W with `[network.wifi]` built end to end, and its image read back with tools piimg
//! did not write: sfdisk, dd, mcopy, fdtget (the board type brcmfmac derives from the device
//! tree), e2fsck and debugfs (the root), modinfo (brcmfmac's own firmware table), dpkg-deb and
//! tar (the packages' files) and Debian's wpa_supplicant (the configuration the agent runs it
//! with).
//!
//! What wpa_supplicant can show here: the host kernel has no mac80211_hwsim (no radio to
//! associate with), so it runs exactly as the agent runs it (`-i wlan0 -D nl80211 -c FILE`) in a
//! network namespace the test creates, where no wlan0 exists. wpa_supplicant reads and checks the
//! whole configuration (SSID and PSK, which it shows with `-K`) before it opens the driver: the
//! test asserts it got that far, that the PSK is the one Debian's `wpa_passphrase` derives from
//! SSID and passphrase, and that a broken copy of the same file stops at the parse. SSID and
//! passphrase hold the characters wpa_supplicant's quoting cannot carry (`"`, `#`, `\`, non-ASCII).

mod common;
use common::checkers::{
    debugfs, e2fsck, ext4_read, ext4_walk, extract, fat_files, firmware_glob, partitions,
    stdout_of, text_of, tool, wpa_supplicant_reads,
};
use common::piimg::Run;
use common::project::{project, Project};
use common::{cache_home, read_toml};

use std::path::{Path, PathBuf};
use std::process::Command;

const EPOCH: &str = "1767225600";
/// A `"` and a non-ASCII letter: written as hex, and the PSK's salt is its UTF-8 bytes.
const SSID: &str = "piimg \"lab\" café";
/// The chip of the Zero 2 W (CYW43438: BCM43430 rev 1) in brcmfmac's SDIO firmware table, and
/// the one whose firmware Debian's firmware-brcm80211 lacks (CYW43436: 43430 rev 4, "b0").
const CHIP: &str = "brcm/brcmfmac43430-sdio";
const CHIP_B0: &str = "brcm/brcmfmac43430b0-sdio";

const PROFILE: &str = r#"cluster = "air"
secrets = "../secrets/air.toml"
hostname = "zero"
board = "zero2w"
role = "load-balancer"

[network]
address = "192.168.60.20/24"
gateway = "192.168.60.1"

[network.wifi]
ssid = "piimg \"lab\" café"
country = "DE"

[load_balancer]
backends = ["192.168.60.11:6443"]

[image]
size = "1GiB"
"#;

fn piimg(p: &Project, args: &[&str]) -> Run {
    p.piimg_cached()
        .profiles(&p.profiles())
        .epoch(EPOCH)
        .args(args)
        .run()
}

/// A passphrase no earlier run left anywhere, with what wpa_supplicant's quoted strings cannot
/// hold (`"`, `#`) and what shells and TOML escape (`\`, `'`, spaces).
fn fresh_passphrase() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("wi\"fi #{} \\ it's {nanos:x}", std::process::id())
}

/// A string as a TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The PSK Debian's `wpa_passphrase SSID PASSPHRASE` derives, as 64 hex digits.
fn wpa_passphrase(ssid: &str, passphrase: &str) -> String {
    let out = text_of(Command::new("wpa_passphrase").arg(ssid).arg(passphrase));
    out.lines()
        .find_map(|l| l.strip_prefix("\tpsk="))
        .unwrap_or_else(|| panic!("no psk= in:\n{out}"))
        .to_string()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// debugfs's `st_mode` of `path` (octal), from `ls -l` of its folder.
fn mode_of(fs: &Path, path: &str) -> u32 {
    let (dir, name) = path.rsplit_once('/').unwrap();
    let ls = debugfs(fs, &format!("ls -p \"{dir}\""));
    let f: Vec<&str> = ls
        .lines()
        .map(|l| l.split('/').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[5] == name)
        .unwrap_or_else(|| panic!("{path} not in:\n{ls}"));
    u32::from_str_radix(f[2], 8).unwrap()
}

/// A locked package's .deb in the shared cache.
fn cached_deb(p: &Project, name: &str) -> PathBuf {
    let v = read_toml(&p.root().join("piimg.lock"));
    let sha = v["component"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .and_then(|c| c["sha256"].as_str())
        .unwrap_or_else(|| panic!("{name} not locked"))
        .to_string();
    cache_home().join("piimg/sha256").join(sha)
}

#[test]
fn a_zero_2_w_with_wifi_holds_driver_firmware_regulatory_database_and_a_config_wpa_supplicant_accepts(
) {
    let p = project().only(&[]).lock().create_fresh("wifi-test");
    p.write("zero", PROFILE);
    let work = p.root().to_path_buf();

    // No passphrase yet: an open network, which check says.
    let check = piimg(&p, &["check"]);
    check.assert_ok();
    assert!(
        check
            .stderr
            .contains(&format!("network.wifi.ssid: no passphrase for `{SSID}`")),
        "{}",
        check.text()
    );
    let passphrase = fresh_passphrase();
    assert!((8..=63).contains(&passphrase.len()), "{passphrase}");
    let secrets = p.secrets("air");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(
        &secrets,
        format!(
            "{text}\n[wifi]\n{} = {}\n",
            toml_string(SSID),
            toml_string(&passphrase)
        ),
    )
    .unwrap();
    let check = piimg(&p, &["check"]);
    check.assert_ok();
    assert!(!check.stderr.contains("no passphrase"), "{}", check.text());

    let out = work.join("out");
    let build = piimg(
        &p,
        &["build", "--profile", "zero", "--out", out.to_str().unwrap()],
    );
    build.assert_ok();
    for run in [&check, &build] {
        assert!(
            !run.combined().contains(&passphrase),
            "the passphrase was printed:\n{}",
            run.text()
        );
    }
    assert!(
        build.stderr.contains(&format!("has no {CHIP_B0}.bin")),
        "the Zero 2 W firmware Debian lacks is named:\n{}",
        build.text()
    );

    // Never the passphrase in anything the build wrote, the image's free blocks included.
    let found = tool(
        Command::new("grep")
            .args(["-r", "-F", "-a", "-l", "-e"])
            .arg(&passphrase)
            .arg(&out),
    );
    assert_eq!(found.status.code(), Some(1), "{}", found.text());

    // The partitions, as sfdisk reads them.
    let img = out.join("zero.img");
    let parts = partitions(&img);
    assert_eq!(parts.len(), 3);
    let (boot, root) = (work.join("p1"), work.join("p2"));
    extract(&img, parts[0].0, parts[0].1, &boot);
    extract(&img, parts[1].0, parts[1].1, &root);

    // The FAT partition: never the passphrase, not in a file, not in a free block.
    let fat = fat_files(boot.to_str().unwrap(), &work.join("fat"));
    assert!(!contains(
        &std::fs::read(&boot).unwrap(),
        passphrase.as_bytes()
    ));
    for (name, data) in &fat {
        assert!(!contains(data, passphrase.as_bytes()), "{name}");
    }
    let cmdline = String::from_utf8_lossy(&fat["cmdline.txt"]).into_owned();
    assert!(
        cmdline
            .trim_end()
            .ends_with(" cfg80211.ieee80211_regdom=DE")
            && cmdline.lines().count() == 1,
        "{cmdline}"
    );
    let board_type = text_of(
        Command::new("fdtget")
            .arg(work.join("fat/bcm2837-rpi-zero-2-w.dtb"))
            .args(["/", "compatible"]),
    )
    .split_whitespace()
    .next()
    .unwrap()
    .to_string();
    assert_eq!(board_type, "raspberrypi,model-zero-2-w");

    // The root filesystem.
    e2fsck(&root);
    let modules_dir = ext4_walk(&root, "/usr/lib/modules");
    let module = |name: &str| -> String {
        modules_dir
            .iter()
            .find(|p| p.ends_with(&format!("/{name}.ko")))
            .unwrap_or_else(|| panic!("no {name}.ko in the image"))
            .clone()
    };
    let brcmfmac = module("brcmfmac");
    for m in ["cfg80211", "brcmutil", "brcmfmac-wcc", "brcmfmac-cyw"] {
        module(m);
    }
    let release = brcmfmac.split('/').nth(4).unwrap().to_string();
    let dep = String::from_utf8(
        ext4_read(
            &root,
            &work,
            &format!("/usr/lib/modules/{release}/modules.dep"),
        )
        .unwrap(),
    )
    .unwrap();
    let rel = |p: &str| p.split(&format!("{release}/")).nth(1).unwrap().to_string();
    let line = dep
        .lines()
        .find(|l| l.starts_with(&format!("{}:", rel(&brcmfmac))))
        .unwrap_or_else(|| panic!("brcmfmac not in modules.dep:\n{dep}"));
    for m in ["cfg80211", "brcmutil"] {
        assert!(line.contains(&rel(&module(m))), "{line}");
    }
    let load =
        String::from_utf8(ext4_read(&root, &work, "/etc/piimg/modules.load").unwrap()).unwrap();
    for m in ["cfg80211", "brcmfmac", "brcmfmac_wcc"] {
        assert!(
            load.lines().any(|l| l == m),
            "{m} not loaded at stage 2:\n{load}"
        );
    }

    // brcmfmac's firmware table (modinfo of the module in the image) and the dtb's board type
    // name the files: <chip>.bin, <chip>.clm_blob, <chip>.<board type>.txt.
    let ko = work.join("brcmfmac.ko");
    std::fs::write(&ko, ext4_read(&root, &work, &brcmfmac).unwrap()).unwrap();
    let table = text_of(Command::new("modinfo").args(["-F", "firmware"]).arg(&ko));
    let wanted = [
        format!("{CHIP}.bin"),
        format!("{CHIP}.clm_blob"),
        format!("{CHIP}.{board_type}.txt"),
    ];
    for name in &wanted {
        assert!(
            table.lines().any(|pattern| firmware_glob(pattern, name)),
            "{name} matches no firmware= entry of brcmfmac:\n{table}"
        );
        let data = ext4_read(&root, &work, &format!("/lib/firmware/{name}"))
            .unwrap_or_else(|| panic!("/lib/firmware/{name} missing"));
        assert!(!data.is_empty(), "{name}");
    }
    assert!(
        table.lines().any(|l| l == format!("{CHIP_B0}.bin")),
        "{table}"
    );
    let nvram = ext4_read(&root, &work, &format!("/lib/firmware/{}", wanted[2])).unwrap();
    assert!(
        String::from_utf8_lossy(&nvram).contains("boardtype="),
        "not an NVRAM file"
    );
    // Only the board chip's files: nothing of the 4345 (3B+, 4B).
    let firmware = ext4_walk(&root, "/usr/lib/firmware/brcm");
    assert!(
        firmware.iter().all(|f| f.contains("brcmfmac43430-sdio.")),
        "{firmware:?}"
    );

    // The regulatory database, by the names cfg80211 requests (its modinfo firmware=), as the
    // package's postinst links them: Debian's signed copy.
    let cfg = work.join("cfg80211.ko");
    std::fs::write(&cfg, ext4_read(&root, &work, &module("cfg80211")).unwrap()).unwrap();
    let requested = text_of(Command::new("modinfo").args(["-F", "firmware"]).arg(&cfg));
    assert_eq!(
        requested.lines().collect::<Vec<_>>(),
        ["regulatory.db", "regulatory.db.p7s"]
    );
    let regdb = stdout_of(
        Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - ./usr/lib/firmware/regulatory.db-debian")
            .arg("sh")
            .arg(cached_deb(&p, "wireless-regdb")),
    );
    for name in requested.lines() {
        let data = ext4_read(&root, &work, &format!("/lib/firmware/{name}"))
            .unwrap_or_else(|| panic!("/lib/firmware/{name} missing"));
        if name == "regulatory.db" {
            assert_eq!(data, regdb);
        }
    }

    // The supplicant's configuration: 0600, the PSK Debian's wpa_passphrase derives.
    let conf_path = "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf";
    assert_eq!(mode_of(&root, conf_path) & 0o7777, 0o600);
    let conf = work.join("wpa_supplicant-wlan0.conf");
    std::fs::write(&conf, ext4_read(&root, &work, conf_path).unwrap()).unwrap();
    let conf_text = std::fs::read_to_string(&conf).unwrap();
    let psk = wpa_passphrase(SSID, &passphrase);
    assert!(
        conf_text.contains(&format!("\tkey_mgmt=WPA-PSK\n\tpsk={psk}\n")),
        "{conf_text}"
    );
    assert!(
        conf_text.contains(&format!("\tssid={}\n", hex(SSID.as_bytes()))),
        "{conf_text}"
    );
    let node_json = ext4_read(&root, &work, "/etc/piimg/node.json").unwrap();
    assert!(!contains(&node_json, passphrase.as_bytes()));
    let v: serde_json::Value = serde_json::from_slice(&node_json).unwrap();
    assert_eq!(v["network"]["interface"], "wlan0");
    assert_eq!(v["network"]["wifi"]["country"], "DE");
    let manifest = std::fs::read(out.join("zero.manifest.json")).unwrap();
    assert!(!contains(&manifest, passphrase.as_bytes()));

    // Debian's wpa_supplicant reads it whole: country, the network's SSID (printf-escaped in its
    // log) and PSK; it stops only where it opens the driver.
    let (code, said) = wpa_supplicant_reads(&conf);
    assert_ne!(code, Some(0), "{said}");
    let spaced: Vec<String> = (0..32).map(|i| psk[2 * i..2 * i + 2].to_string()).collect();
    for expected in [
        "Reading configuration file".to_string(),
        "country='DE'".to_string(),
        format!("PSK - hexdump(len=32): {}", spaced.join(" ")),
        r#"id=0 ssid='piimg \"lab\" caf\xc3\xa9'"#.to_string(),
    ] {
        assert!(said.contains(&expected), "`{expected}` missing:\n{said}");
    }
    assert!(
        !said.contains("Failed to read or parse configuration"),
        "{said}"
    );
    assert!(
        !said.contains(&passphrase),
        "wpa_supplicant printed the passphrase"
    );
    // The same file broken: the test can tell a parsed configuration from one that is not.
    let broken = work.join("broken.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("key_mgmt=WPA-PSK"));
    std::fs::write(&broken, text.replace("key_mgmt=WPA-PSK", "key_mgmt=BOGUS")).unwrap();
    let (code, said) = wpa_supplicant_reads(&broken);
    assert_ne!(code, Some(0));
    assert!(said.contains("invalid key_mgmt 'BOGUS'"), "{said}");
    assert!(
        said.contains("Failed to read or parse configuration"),
        "{said}"
    );
    assert!(!said.contains("Priority group"), "{said}");
    eprintln!(
        "wifi: hwsim: {}; ran `unshare --net wpa_supplicant -K -i wlan0 -D nl80211 -dd -c {}`",
        hwsim_status(),
        conf.display()
    );
}

/// Lowercase hex of `b`.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether this kernel offers mac80211_hwsim (said in the test's output: it decides how far the
/// supplicant can go).
fn hwsim_status() -> String {
    let r = tool(Command::new("modprobe").args(["-n", "mac80211_hwsim"]));
    match r.status.code() {
        Some(0) => "available (not used: the parse check runs everywhere)".into(),
        _ => format!(
            "not offered by this kernel ({})",
            String::from_utf8_lossy(&r.stderr).trim()
        ),
    }
}
