//! `piimg serve --proxy-dhcp` checked by tools we did not write, inside two network namespaces
//! the test makes (a veth pair between them, 192.168.77.1/24 on the server side only): busybox
//! udhcpc plays the Pi boot ROM (its vendor class, option 93/94/97, a Raspberry Pi MAC address)
//! and decodes the reply for its script; tcpdump decodes what went over the wire. Ordinary DHCP
//! clients must get no answer at all.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SERVER_IP: &str = "192.168.77.1";
const SERVER_IF: &str = "pis0";
const CLIENT_IF: &str = "pic0";
/// What the Pi 3B ROM and the Pi 4 bootloader send as option 60.
const ROM_VENDOR_CLASS: &str = "PXEClient:Arch:00000:UNDI:002001";
const PI_MAC: &str = "b8:27:eb:28:f6:6d";
const PC_MAC: &str = "52:54:00:12:34:56";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run (tool missing?): {e}"))
}

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair, deleted on drop even when the test fails. The names
/// carry the process id and a counter, so parallel tests and runs never share one.
struct Net {
    server: String,
    client: String,
}

impl Net {
    fn new() -> Net {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "piimg-dhcp-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        let net = Net {
            server: format!("{id}-s"),
            client: format!("{id}-c"),
        };
        ip(&["netns", "add", &net.server]);
        ip(&["netns", "add", &net.client]);
        // Both ends are made inside their namespaces: nothing appears in the host's.
        ip(&[
            "link",
            "add",
            SERVER_IF,
            "netns",
            &net.server,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            &net.client,
        ]);
        ip(&[
            "-n",
            &net.server,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            SERVER_IF,
        ]);
        ip(&["-n", &net.server, "link", "set", SERVER_IF, "up"]);
        ip(&["-n", &net.client, "link", "set", CLIENT_IF, "up"]);
        net
    }

    fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }

    /// `piimg serve --proxy-dhcp` in the server namespace, once it listens.
    fn serve(&self, extra: &[&str], dir: &Path) -> Serving {
        let mut cmd = self.exec(&self.server);
        cmd.arg(env!("CARGO_BIN_EXE_piimg"))
            .args([
                "serve",
                "--tftp-port",
                "0",
                "--http-port",
                "0",
                "--proxy-dhcp",
                SERVER_IF,
                "--dir",
            ])
            .arg(dir)
            .args(extra)
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if line.starts_with("answering Raspberry Pi boot ROMs") {
                break;
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let serving = Serving { child, log };
        assert!(
            serving.log().contains("answering"),
            "piimg serve did not start:\n{}",
            serving.log()
        );
        serving
    }

    /// tcpdump on the server's end of the veth, once it listens.
    fn capture(&self) -> Capture {
        let mut cmd = self.exec(&self.server);
        cmd.args(["tcpdump", "-l", "-n", "-vv", "-i", SERVER_IF])
            .args(["udp", "and", "(port", "67", "or", "port", "68)"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("tcpdump could not run (missing?): {e}"));
        let mut first = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("listening on"), "tcpdump: {first}");
        Capture { child }
    }

    /// busybox udhcpc from the client namespace with `mac`: two DISCOVERs a second apart, then
    /// it gives up. Returns what its script saw (the last event's environment) and its output.
    fn udhcpc(&self, mac: &str, vendor_class: Option<&str>, dir: &Path) -> (Lease, String) {
        ip(&["-n", &self.client, "link", "set", CLIENT_IF, "address", mac]);
        let script = dir.join("udhcpc.sh");
        let env_file = dir.join("udhcpc.env");
        let _ = std::fs::remove_file(&env_file);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n{{ echo \"event=$1\"; env; echo; }} >> '{}'\n",
                env_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = self.exec(&self.client);
        cmd.args(["busybox", "udhcpc", "-f", "-q", "-n", "-t", "2", "-T", "1"])
            .args(["-i", CLIENT_IF, "-s"])
            .arg(&script)
            // Ask for option 43 and 66 as the ROM does, and send its 93 (arch 0), 94 (UNDI
            // 2.1) and 97 (a 17-byte machine id).
            .args([
                "-O",
                "43",
                "-O",
                "66",
                "-x",
                "0x5d:0000",
                "-x",
                "0x5e:010201",
            ])
            .args(["-x", &format!("0x61:00{}", "44".repeat(16))]);
        if let Some(v) = vendor_class {
            cmd.args(["-V", v]);
        }
        let out = run(&mut cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let events = std::fs::read_to_string(&env_file).unwrap_or_default();
        (Lease::bound(&events), text)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A running `piimg serve`; killed on drop.
struct Serving {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Serving {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running tcpdump; [`Capture::finish`] stops it and returns what it decoded.
struct Capture {
    child: Child,
}

impl Capture {
    fn finish(mut self) -> String {
        // -l writes each packet as it is seen; a moment for the last one to get through.
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let mut text = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let _ = self.child.wait();
        text
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment udhcpc gave its script for the `bound` event, when there was one.
struct Lease(Option<BTreeMap<String, String>>);

impl Lease {
    fn bound(events: &str) -> Lease {
        Lease(
            events
                .split("\n\n")
                .find(|e| e.starts_with("event=bound"))
                .map(|e| {
                    e.lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
        )
    }

    fn get(&self, key: &str) -> &str {
        let env = self.0.as_ref().expect("udhcpc bound no lease");
        env.get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("udhcpc passed no {key}: {env:?}"))
    }
}

fn scratch(name: &str) -> tempfile::TempDir {
    common::temp_dir(name)
}

fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// Replies tcpdump saw from the server.
fn replies(dump: &str) -> usize {
    dump.matches("BOOTP/DHCP, Reply").count()
}

#[test]
fn a_pi_boot_rom_gets_the_boot_menu_and_the_tftp_server_and_no_address() {
    let scratch = scratch("proxy-dhcp-pi");
    let net = Net::new();
    let serving = net.serve(&["--bind", SERVER_IP], &tree(scratch.path()));
    let capture = net.capture();
    let (lease, out) = net.udhcpc(PI_MAC, Some(ROM_VENDOR_CLASS), scratch.path());
    let dump = capture.finish();
    let log = serving.log();
    let context = format!("udhcpc:\n{out}\ntcpdump:\n{dump}\npiimg serve:\n{log}");

    // udhcpc's decoding: option 43 exactly as dnsmasq's pxe-service=0,"Raspberry Pi Boot   "
    // (discovery control 3, prompt "PXE" with timeout 0, menu item 0 with the text, end).
    let mut want = String::from("0601030a04005058450917000014");
    want.push_str(&hex::encode("Raspberry Pi Boot   "));
    want.push_str("ff");
    assert_eq!(lease.get("opt43"), want, "{context}");
    assert_eq!(lease.get("tftp"), SERVER_IP, "{context}");
    assert_eq!(lease.get("siaddr"), SERVER_IP, "{context}");
    assert_eq!(lease.get("serverid"), SERVER_IP, "{context}");
    assert_eq!(lease.get("vendor"), "PXEClient", "{context}");
    assert_eq!(
        lease.get("ip"),
        "0.0.0.0",
        "a proxyDHCP assigns no address: {context}"
    );

    // tcpdump's decoding: broadcast to the client port, the menu text, the TFTP server.
    assert!(
        dump.contains(&format!("{SERVER_IP}.67 > 255.255.255.255.68")),
        "{context}"
    );
    assert!(
        dump.contains("DHCP-Message (53), length 1: Offer"),
        "{context}"
    );
    assert!(dump.contains("Flags [Broadcast]"), "{context}");
    let menu = "82.97.115.112.98.101.114.114.121.32.80.105.32.66.111.111.116.32.32.32.255";
    assert!(
        dump.contains(menu),
        "option 43 carries \"Raspberry Pi Boot   \": {context}"
    );
    assert!(
        dump.contains(&format!("TFTP (66), length 12: \"{SERVER_IP}\"")),
        "{context}"
    );
    assert!(
        dump.contains(&format!("Server-ID (54), length 4: {SERVER_IP}")),
        "{context}"
    );
    assert!(
        dump.contains("GUID (97), length 17"),
        "machine id echoed: {context}"
    );
    assert!(!dump.contains("Your-IP"), "no address offered: {context}");

    // The log names the Pi and what it was sent.
    assert!(
        log.contains(&format!("dhcp {PI_MAC} xid 0x"))
            && log.contains(&format!("sent DHCPOFFER, TFTP server {SERVER_IP}")),
        "{context}"
    );
}

#[test]
fn ordinary_clients_and_pxe_machines_that_are_not_pis_get_no_answer() {
    let scratch = scratch("proxy-dhcp-others");
    let net = Net::new();
    // No --bind: the TFTP server is the interface's own address.
    let serving = net.serve(&[], &tree(scratch.path()));

    let capture = net.capture();
    let (lease, out) = net.udhcpc(PI_MAC, None, scratch.path());
    let dump = capture.finish();
    assert!(
        lease.0.is_none(),
        "a Pi's OS DHCP client got a lease: {out}"
    );
    assert_eq!(
        replies(&dump),
        0,
        "answered udhcpc's own vendor class:\n{dump}"
    );
    assert!(
        dump.contains("Discover"),
        "the DISCOVER did reach the server:\n{dump}"
    );

    let capture = net.capture();
    let (lease, out) = net.udhcpc(PC_MAC, Some(ROM_VENDOR_CLASS), scratch.path());
    let dump = capture.finish();
    assert!(lease.0.is_none(), "a PC's PXE ROM got a lease: {out}");
    assert_eq!(replies(&dump), 0, "answered a non-Pi MAC:\n{dump}");
    assert!(
        serving.log().contains(&format!(
            "dhcp {PC_MAC}: ignored: PXE client without a Raspberry Pi MAC address"
        )),
        "{}",
        serving.log()
    );

    // The same server does answer a Pi: the silences above were decisions, not a dead server.
    let capture = net.capture();
    let (lease, out) = net.udhcpc(PI_MAC, Some(ROM_VENDOR_CLASS), scratch.path());
    let dump = capture.finish();
    assert_eq!(
        replies(&dump),
        2,
        "OFFER and ACK for the Pi:\n{dump}\n{out}"
    );
    assert_eq!(lease.get("tftp"), SERVER_IP);
}

#[test]
fn a_taken_port_a_missing_interface_and_one_without_ipv4_are_clear_errors() {
    let scratch = scratch("proxy-dhcp-errors");
    let dir = tree(scratch.path());
    let net = Net::new();
    let _first = net.serve(&[], &dir);
    let fails = |ns: &str, iface: &str| -> String {
        let out = run(net
            .exec(ns)
            .arg(env!("CARGO_BIN_EXE_piimg"))
            .args(["serve", "--tftp-port", "0", "--http-port", "0"])
            .args(["--proxy-dhcp", iface, "--dir"])
            .arg(&dir));
        assert!(!out.status.success(), "serve --proxy-dhcp {iface} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let taken = fails(&net.server, SERVER_IF);
    assert!(taken.contains("UDP port 67 on pis0 is in use"), "{taken}");
    let missing = fails(&net.server, "nosuch0");
    assert!(
        missing.contains("--proxy-dhcp nosuch0: no such network interface"),
        "{missing}"
    );
    let bare = fails(&net.client, CLIENT_IF);
    assert!(
        bare.contains("--proxy-dhcp pic0: the interface has no IPv4 address"),
        "{bare}"
    );
}
