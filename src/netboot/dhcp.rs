//! A proxyDHCP server (PXE specification 2.1, section 2.2.3) that answers only Raspberry Pi boot
//! ROMs and bootloaders, so that `piimg serve` can sit beside a home router's DHCP server: the
//! router hands out the address, we only tell the Pi that this is a netboot network and where
//! its TFTP server is. We never assign an address (yiaddr is always 0.0.0.0).
//!
//! What a Pi sends and needs back, and where each rule comes from:
//! - The Pi 3B/3B+ boot ROM, the Pi 4/5 EEPROM bootloader and bootcode.bin send DHCPDISCOVER with
//!   option 60 `PXEClient:Arch:00000:UNDI:002001` (Raspberry Pi documentation, "Network booting",
//!   DHCP request/reply capture; raspberrypi/firmware#1928 for the Pi 4). We answer a vendor class
//!   starting with `PXEClient`, as dnsmasq's `is_pxe_client` (src/rfc2131.c) does, and only from
//!   a MAC address of Raspberry Pi Ltd ([`PI_OUIS`]): other PXE machines on the LAN are not ours.
//! - The reply is what dnsmasq's proxy mode sends for `pxe-service=0,"Raspberry Pi Boot   "`
//!   (src/rfc2131.c, `dhcp_reply`, "proxy DHCP here"): yiaddr 0, the broadcast flag, option 53
//!   OFFER to a DISCOVER (ACK to a REQUEST that names us), option 54 our address, option 60
//!   `PXEClient` and the client's option 97 echoed (`pxe_misc`), and option 43 as `pxe_opts`
//!   builds it (see [`vendor_options`]).
//! - Option 43 must contain "Raspberry Pi Boot"; the 3B's ROM needs three spaces after it
//!   (Raspberry Pi documentation, "Network booting": "due to a bug in the boot ROM, you may need
//!   to add three spaces"). The Pi 4 bootloader looks for the string (its PXE_OPTION43 setting),
//!   so the padded text suits every model.
//! - The TFTP server: the 3B ROM ignores siaddr and fetches from the server that sent option 43
//!   (raspberrypi/firmware#801, #1265), so that address is option 54; it also goes in siaddr and in
//!   option 66 as text, which later bootloaders read (raspberrypi/firmware#871, rpi-eeprom#72).
//!
//! Replies are broadcast to port 68 on the interface: the client has no address yet. The packet
//! format (RFC 2131 section 2, options RFC 2132) is parsed here rather than with `dhcproto`, which
//! needs the whole hickory DNS stack (29 more crates) for a fixed header and six options.
//! Anything else, garbage included, is dropped without a reply; nothing here prints: every
//! datagram ends in one [`Event`].

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The DHCP server and client ports (RFC 2131 section 4.1).
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// The MAC prefixes (IEEE OUIs) of Raspberry Pi boards. b8:27:eb (Raspberry Pi Foundation),
/// dc:a6:32, e4:5f:01 and 28:cd:c1 (Raspberry Pi Trading Ltd) are in the IEEE MA-L registry
/// (Debian ieee-data 20220827); d8:3a:dd (Pi 4, raspberrypi/firmware#1850) and 2c:cf:67 (Pi 5)
/// were registered after that snapshot.
pub const PI_OUIS: [[u8; 3]; 6] = [
    [0xb8, 0x27, 0xeb],
    [0xdc, 0xa6, 0x32],
    [0xe4, 0x5f, 0x01],
    [0x28, 0xcd, 0xc1],
    [0xd8, 0x3a, 0xdd],
    [0x2c, 0xcf, 0x67],
];

/// The boot menu text the Pi looks for, with the three spaces the 3B's ROM needs.
pub const PI_BOOT_MENU: &str = "Raspberry Pi Boot   ";
/// The vendor class of PXE clients and of our replies (PXE 2.1 section 2.2.1).
const PXE_CLIENT: &[u8] = b"PXEClient";

/// How long a blocking receive goes without looking at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// RFC 1542 section 3.1.1: replies are at least 300 bytes, for BOOTP relays that expect it.
const MIN_PACKET: usize = 300;
/// The fixed BOOTP header (RFC 2131 figure 1) and the magic cookie after it (RFC 2131 3).
const HEADER_LEN: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
/// The broadcast bit of `flags` (RFC 2131 figure 2).
const FLAG_BROADCAST: u16 = 0x8000;

// Option codes (RFC 2132; 93, 94, 97 from RFC 4578).
const OPT_PAD: u8 = 0;
const OPT_VENDOR_ENCAPSULATED: u8 = 43;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_VENDOR_CLASS: u8 = 60;
const OPT_TFTP_SERVER: u8 = 66;
const OPT_CLIENT_UUID: u8 = 97;
const OPT_END: u8 = 255;

// Message types (RFC 2132 section 9.6).
const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
const DHCPREQUEST: u8 = 3;
const DHCPACK: u8 = 5;

// PXE sub-options of option 43 (PXE 2.1 table 2-1; dnsmasq src/dhcp-protocol.h SUBOPT_PXE_*).
const PXE_DISCOVERY_CONTROL: u8 = 6;
const PXE_BOOT_MENU: u8 = 9;
const PXE_MENU_PROMPT: u8 = 10;

/// An Ethernet address, printed the usual way (`b8:27:eb:28:f6:6d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Whether the address belongs to a Raspberry Pi board ([`PI_OUIS`]).
    pub fn is_pi(&self) -> bool {
        PI_OUIS.iter().any(|oui| self.0[..3] == oui[..])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What we sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Offer,
    Ack,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reply::Offer => "DHCPOFFER",
            Reply::Ack => "DHCPACK",
        })
    }
}

/// Why a datagram got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Not a DHCP request: garbage, a BOOTREPLY, plain BOOTP.
    NotDhcp,
    /// A vendor class other than PXEClient, or none: an ordinary client.
    NotPxe,
    /// A PXE client whose MAC address is not a Raspberry Pi's.
    NotPi,
    /// Came through a relay agent; the Pi 3B cannot boot through one and we only answer on the
    /// link (raspberrypi/linux#1638).
    Relayed,
    /// A DHCPREQUEST for another server (the Pi taking the router's address offer).
    OtherServer(Ipv4Addr),
    /// A message type a proxyDHCP does not answer (RELEASE, INFORM, a REQUEST with no server).
    MessageType(u8),
}

impl Ignored {
    /// Whether this came from a PXE client (a Pi, or a board whose MAC prefix we do not know):
    /// worth a log line, where the DHCP traffic of every other device on the LAN is not.
    pub fn from_pxe_client(&self) -> bool {
        !matches!(self, Ignored::NotDhcp | Ignored::NotPxe)
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::NotDhcp => f.write_str("not a DHCP request"),
            Ignored::NotPxe => f.write_str("no PXEClient vendor class"),
            Ignored::NotPi => f.write_str("PXE client without a Raspberry Pi MAC address"),
            Ignored::Relayed => f.write_str("came through a DHCP relay"),
            Ignored::OtherServer(s) => write!(f, "DHCPREQUEST for the DHCP server {s}"),
            Ignored::MessageType(t) => write!(f, "DHCP message type {t} needs no answer"),
        }
    }
}

/// The outcome of one datagram, for the log.
#[derive(Debug)]
pub enum Event {
    /// A Pi got a reply naming `tftp` as its TFTP server.
    Answered {
        mac: Mac,
        xid: u32,
        reply: Reply,
        tftp: Ipv4Addr,
    },
    /// No reply; `mac` when the datagram was a DHCP request.
    Ignored { mac: Option<Mac>, reason: Ignored },
    /// The reply could not be sent.
    Unsent {
        mac: Mac,
        reply: Reply,
        error: io::Error,
    },
}

/// Why the proxyDHCP could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("--proxy-dhcp {0}: no such network interface (`ip -br link` lists them)")]
    NoInterface(String),
    #[error("--proxy-dhcp {0}: the interface has no IPv4 address: give it one (`ip addr add ADDR/24 dev {0}`), the Pi boot ROM speaks IPv4 only")]
    NoAddress(String),
    #[error("--proxy-dhcp {0}: reading the interface addresses: {1}")]
    Addresses(String, io::Error),
    #[error("UDP port 67 on {0} is in use (a DHCP server such as dnsmasq? `ss -ulpn 'sport = :67'` names it): stop it, or serve the Pis from it instead of --proxy-dhcp")]
    PortInUse(String),
    #[error("the proxyDHCP listens on UDP port 67 of {0}: run as root, or with CAP_NET_BIND_SERVICE and CAP_NET_RAW")]
    Privileged(String),
    #[error("cannot listen on UDP port 67 of {0}: {1}")]
    Socket(String, io::Error),
    #[error("receiving on UDP port 67 of {0}: {1}")]
    Receive(String, io::Error),
}

/// The fixed part of a BOOTP/DHCP message (RFC 2131 figure 1), then its options.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Packet {
    op: u8,           // 0
    htype: u8,        // 1
    hlen: u8,         // 2
    hops: u8,         // 3
    xid: u32,         // 4
    secs: u16,        // 8
    flags: u16,       // 10
    ciaddr: [u8; 4],  // 12
    yiaddr: [u8; 4],  // 16
    siaddr: [u8; 4],  // 20
    giaddr: [u8; 4],  // 24
    chaddr: [u8; 16], // 28
    // sname (44, 64 bytes) and file (108, 128 bytes) are neither read nor sent.
    /// Options after the magic cookie (236), in order; pad and end left out.
    options: Vec<(u8, Vec<u8>)>,
}

impl Packet {
    /// Decodes a datagram; None when it is too short, lacks the DHCP cookie or an option runs
    /// past the end.
    fn parse(buf: &[u8]) -> Option<Packet> {
        let header = buf.get(..HEADER_LEN)?;
        if buf.get(HEADER_LEN..HEADER_LEN + 4)? != MAGIC_COOKIE {
            return None;
        }
        let u32_at =
            |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let addr_at = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&header[28..44]);
        let mut options = Vec::new();
        let mut rest = &buf[HEADER_LEN + 4..];
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                OPT_PAD => rest = tail,
                OPT_END => break,
                _ => {
                    let (&len, tail) = tail.split_first()?;
                    let data = tail.get(..len as usize)?;
                    options.push((code, data.to_vec()));
                    rest = &tail[len as usize..];
                }
            }
        }
        Some(Packet {
            op: header[0],
            htype: header[1],
            hlen: header[2],
            hops: header[3],
            xid: u32_at(4),
            secs: u16::from_be_bytes([header[8], header[9]]),
            flags: u16::from_be_bytes([header[10], header[11]]),
            ciaddr: addr_at(12),
            yiaddr: addr_at(16),
            siaddr: addr_at(20),
            giaddr: addr_at(24),
            chaddr,
            options,
        })
    }

    /// The first instance of an option.
    fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    }

    /// The client's Ethernet address, when it says it is on Ethernet.
    fn mac(&self) -> Option<Mac> {
        if self.htype != HTYPE_ETHERNET || self.hlen != 6 {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.chaddr[..6]);
        Some(Mac(mac))
    }

    /// The wire form: header, zeroed sname and file, cookie, options, end, zeros up to 300 bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_PACKET + 64);
        out.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for addr in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&addr);
        }
        out.extend_from_slice(&self.chaddr);
        out.resize(HEADER_LEN, 0);
        out.extend_from_slice(&MAGIC_COOKIE);
        for (code, data) in &self.options {
            // Every option we send is built here and shorter than 256 bytes.
            out.push(*code);
            out.push(data.len() as u8);
            out.extend_from_slice(data);
        }
        out.push(OPT_END);
        if out.len() < MIN_PACKET {
            out.resize(MIN_PACKET, 0);
        }
        out
    }
}

/// Option 43 as dnsmasq's `pxe_opts` (src/rfc2131.c) builds it for one `pxe-service` entry of
/// type 0 with no boot file or server: discovery control 3 (no multicast or broadcast
/// discovery), a menu prompt with timeout 0 (boot the only item at once), the one menu item
/// (boot server type 0, then the text), end.
fn vendor_options(menu: &str) -> Vec<u8> {
    let text = menu.as_bytes();
    let mut out = vec![PXE_DISCOVERY_CONTROL, 1, 3];
    out.extend_from_slice(&[PXE_MENU_PROMPT, 4, 0, b'P', b'X', b'E']);
    out.extend_from_slice(&[PXE_BOOT_MENU, text.len() as u8 + 3, 0, 0, text.len() as u8]);
    out.extend_from_slice(text);
    out.push(OPT_END);
    out
}

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Reply {
        mac: Mac,
        xid: u32,
        reply: Reply,
        packet: Vec<u8>,
    },
    Ignore {
        mac: Option<Mac>,
        reason: Ignored,
    },
}

/// The answer to `datagram` from a proxyDHCP whose address (and TFTP server) is `server`.
fn decide(datagram: &[u8], server: Ipv4Addr) -> Decision {
    let ignore = |mac, reason| Decision::Ignore { mac, reason };
    let Some(request) = Packet::parse(datagram) else {
        return ignore(None, Ignored::NotDhcp);
    };
    let mac = request.mac();
    let message_type = match request.option(OPT_MESSAGE_TYPE) {
        Some(&[t]) if request.op == BOOTREQUEST => t,
        _ => return ignore(mac, Ignored::NotDhcp),
    };
    if !request
        .option(OPT_VENDOR_CLASS)
        .is_some_and(|v| v.starts_with(PXE_CLIENT))
    {
        return ignore(mac, Ignored::NotPxe);
    }
    let Some(mac) = mac.filter(Mac::is_pi) else {
        return ignore(mac, Ignored::NotPi);
    };
    if request.giaddr != [0; 4] {
        return ignore(Some(mac), Ignored::Relayed);
    }
    let reply = match (message_type, request.option(OPT_SERVER_ID)) {
        (DHCPDISCOVER, _) => Reply::Offer,
        (DHCPREQUEST, Some(id)) if id == server.octets() => Reply::Ack,
        (DHCPREQUEST, Some(&[a, b, c, d])) => {
            return ignore(Some(mac), Ignored::OtherServer(Ipv4Addr::new(a, b, c, d)))
        }
        (t, _) => return ignore(Some(mac), Ignored::MessageType(t)),
    };
    Decision::Reply {
        mac,
        xid: request.xid,
        reply,
        packet: reply_to(&request, reply, server).encode(),
    }
}

/// The proxy reply (RFC 2131 table 3, fields as dnsmasq's proxy mode sets them).
fn reply_to(request: &Packet, reply: Reply, server: Ipv4Addr) -> Packet {
    let message_type = match reply {
        Reply::Offer => DHCPOFFER,
        Reply::Ack => DHCPACK,
    };
    let mut options = vec![
        (OPT_MESSAGE_TYPE, vec![message_type]),
        (OPT_SERVER_ID, server.octets().to_vec()),
        (OPT_VENDOR_CLASS, PXE_CLIENT.to_vec()),
    ];
    // PXE 2.1 section 2.2.1: the client machine identifier comes back as it was sent.
    if let Some(uuid) = request.option(OPT_CLIENT_UUID).filter(|u| u.len() == 17) {
        options.push((OPT_CLIENT_UUID, uuid.to_vec()));
    }
    options.push((OPT_VENDOR_ENCAPSULATED, vendor_options(PI_BOOT_MENU)));
    options.push((OPT_TFTP_SERVER, server.to_string().into_bytes()));
    Packet {
        op: BOOTREPLY,
        htype: request.htype,
        hlen: request.hlen,
        hops: 0,
        xid: request.xid,
        secs: 0,
        flags: FLAG_BROADCAST,
        ciaddr: match reply {
            Reply::Offer => [0; 4],
            Reply::Ack => request.ciaddr,
        },
        yiaddr: [0; 4],
        siaddr: server.octets(),
        giaddr: [0; 4],
        chaddr: request.chaddr,
        options,
    }
}

/// A proxyDHCP listening on one interface; [`ProxyDhcp::serve`] answers until the stop flag.
pub struct ProxyDhcp {
    socket: UdpSocket,
    iface: String,
    server: Ipv4Addr,
}

impl ProxyDhcp {
    /// Listens on UDP port 67 of `iface`. The Pis are sent to `tftp` for their files, or to the
    /// interface's first IPv4 address when None.
    pub fn bind(iface: &str, tftp: Option<Ipv4Addr>) -> Result<ProxyDhcp, DhcpError> {
        let name = CString::new(iface).map_err(|_| DhcpError::NoInterface(iface.into()))?;
        // SAFETY: a NUL-terminated name; returns 0 for an unknown interface.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(DhcpError::NoInterface(iface.into()));
        }
        let address = interface_ipv4(iface)
            .map_err(|e| DhcpError::Addresses(iface.into(), e))?
            .ok_or_else(|| DhcpError::NoAddress(iface.into()))?;
        let socket = bind_device(&name, SERVER_PORT).map_err(|e| match e.raw_os_error() {
            Some(libc::EADDRINUSE) => DhcpError::PortInUse(iface.into()),
            Some(libc::EACCES | libc::EPERM) => DhcpError::Privileged(iface.into()),
            _ => DhcpError::Socket(iface.into(), e),
        })?;
        Ok(ProxyDhcp {
            socket,
            iface: iface.into(),
            server: tftp.unwrap_or(address),
        })
    }

    /// The TFTP server address the Pis are given (and our server identifier).
    pub fn server(&self) -> Ipv4Addr {
        self.server
    }

    /// The interface listened on.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// Answers Pi boot requests until `stop` is set; every datagram ends in one `on_event`.
    pub fn serve(&self, stop: &AtomicBool, on_event: &dyn Fn(Event)) -> Result<(), DhcpError> {
        let receive = |e| DhcpError::Receive(self.iface.clone(), e);
        self.socket.set_read_timeout(Some(POLL)).map_err(receive)?;
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            let n = match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if is_retry(&e) => continue,
                Err(e) => return Err(receive(e)),
            };
            on_event(match decide(&buf[..n], self.server) {
                Decision::Ignore { mac, reason } => Event::Ignored { mac, reason },
                Decision::Reply {
                    mac,
                    xid,
                    reply,
                    packet,
                } => match self.socket.send_to(&packet, to) {
                    Ok(_) => Event::Answered {
                        mac,
                        xid,
                        reply,
                        tftp: self.server,
                    },
                    Err(error) => Event::Unsent { mac, reply, error },
                },
            });
        }
        Ok(())
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A UDP socket on 0.0.0.0:`port` that sees and sends only on interface `name` (SO_BINDTODEVICE,
/// set before bind so that servers on other interfaces do not clash) and may broadcast.
fn bind_device(name: &CStr, port: u16) -> io::Result<UdpSocket> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket calls on a descriptor we own; every pointer outlives its call.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let owned = OwnedFd::from_raw_fd(fd);
        let name = name.to_bytes_with_nul();
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        ))?;
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BROADCAST,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        check(libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
        Ok(UdpSocket::from(owned))
    }
}

/// The first IPv4 address of interface `iface` (getifaddrs(3)).
pub fn interface_ipv4(iface: &str) -> io::Result<Option<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; entries are read while it is alive.
    unsafe {
        if libc::getifaddrs(&mut list) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut found = None;
        let mut entry = list;
        while let Some(ifa) = entry.as_ref() {
            entry = ifa.ifa_next;
            let addr = ifa.ifa_addr;
            if addr.is_null() || i32::from((*addr).sa_family) != libc::AF_INET {
                continue;
            }
            if CStr::from_ptr(ifa.ifa_name).to_bytes() != iface.as_bytes() {
                continue;
            }
            let sin = &*(addr as *const libc::sockaddr_in);
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
        libc::freeifaddrs(list);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI3: [u8; 6] = [0xb8, 0x27, 0xeb, 0x28, 0xf6, 0x6d];
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    /// The ROM's option 60 (Raspberry Pi documentation, "Network booting").
    const ROM_VENDOR_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

    /// A request written byte by byte, not through [`Packet::encode`].
    fn request(mac: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![BOOTREQUEST, HTYPE_ETHERNET, 6, 0];
        p.extend_from_slice(&0x26f3_0339u32.to_be_bytes());
        p.extend_from_slice(&[0; 4]); // secs, flags
        p.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
        p.extend_from_slice(&mac);
        p.resize(HEADER_LEN, 0);
        p.extend_from_slice(&MAGIC_COOKIE);
        for (code, data) in options {
            p.push(*code);
            p.push(data.len() as u8);
            p.extend_from_slice(data);
        }
        p.push(OPT_END);
        p
    }

    fn uuid() -> Vec<u8> {
        let mut u = vec![0u8];
        u.extend_from_slice(&[68; 16]);
        u
    }

    /// The Pi 3B ROM's DISCOVER as the Raspberry Pi documentation's tcpdump shows it.
    fn rom_discover(mac: [u8; 6]) -> Vec<u8> {
        let uuid = uuid();
        request(
            mac,
            &[
                (OPT_MESSAGE_TYPE, &[DHCPDISCOVER]),
                (
                    55,
                    &[43, 60, 67, 128, 129, 130, 131, 132, 133, 134, 135, 66],
                ),
                (93, &[0, 0]),
                (94, &[1, 2, 1]),
                (OPT_CLIENT_UUID, &uuid),
                (OPT_VENDOR_CLASS, ROM_VENDOR_CLASS),
            ],
        )
    }

    fn reply(decision: Decision) -> (Reply, Packet, Vec<u8>) {
        match decision {
            Decision::Reply { reply, packet, .. } => {
                let parsed = Packet::parse(&packet).expect("our reply parses");
                (reply, parsed, packet)
            }
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn option_43_matches_the_documented_dnsmasq_reply_byte_for_byte() {
        // "Vendor-Option Option 43, length 32" from the Raspberry Pi documentation's capture of
        // dnsmasq with pxe-service=0,"Raspberry Pi Boot".
        let documented: Vec<u8> = [
            6, 1, 3, 10, 4, 0, 80, 88, 69, 9, 20, 0, 0, 17, 82, 97, 115, 112, 98, 101, 114, 114,
            121, 32, 80, 105, 32, 66, 111, 111, 116, 255,
        ]
        .to_vec();
        assert_eq!(vendor_options("Raspberry Pi Boot"), documented);
    }

    #[test]
    fn a_pi_rom_discover_gets_an_offer_with_the_boot_menu_and_the_tftp_server() {
        let (kind, offer, wire) = reply(decide(&rom_discover(PI3), SERVER));
        assert_eq!(kind, Reply::Offer);
        assert!(wire.len() >= MIN_PACKET);
        assert_eq!(offer.op, BOOTREPLY);
        assert_eq!(offer.xid, 0x26f3_0339);
        assert_eq!(offer.flags, FLAG_BROADCAST);
        assert_eq!(offer.yiaddr, [0; 4], "a proxyDHCP never assigns an address");
        assert_eq!(offer.ciaddr, [0; 4]);
        assert_eq!(offer.siaddr, [192, 168, 1, 1]);
        assert_eq!(&offer.chaddr[..6], &PI3);
        let mut menu = vec![6, 1, 3, 10, 4, 0, b'P', b'X', b'E', 9, 23, 0, 0, 20];
        menu.extend_from_slice(b"Raspberry Pi Boot   ");
        menu.push(255);
        assert_eq!(
            offer.options,
            vec![
                (OPT_MESSAGE_TYPE, vec![DHCPOFFER]),
                (OPT_SERVER_ID, vec![192, 168, 1, 1]),
                (OPT_VENDOR_CLASS, b"PXEClient".to_vec()),
                (OPT_CLIENT_UUID, uuid()),
                (OPT_VENDOR_ENCAPSULATED, menu),
                (OPT_TFTP_SERVER, b"192.168.1.1".to_vec()),
            ]
        );
    }

    #[test]
    fn every_raspberry_pi_prefix_is_answered() {
        for oui in PI_OUIS {
            let mac = [oui[0], oui[1], oui[2], 1, 2, 3];
            assert!(matches!(
                decide(&rom_discover(mac), SERVER),
                Decision::Reply { .. }
            ));
        }
    }

    #[test]
    fn a_request_naming_us_gets_an_ack_and_one_naming_the_router_nothing() {
        let ours = request(
            PI3,
            &[
                (OPT_MESSAGE_TYPE, &[DHCPREQUEST]),
                (OPT_SERVER_ID, &SERVER.octets()),
                (OPT_VENDOR_CLASS, ROM_VENDOR_CLASS),
            ],
        );
        let (kind, ack, _) = reply(decide(&ours, SERVER));
        assert_eq!(kind, Reply::Ack);
        assert_eq!(ack.option(OPT_MESSAGE_TYPE), Some(&[DHCPACK][..]));
        assert_eq!(ack.yiaddr, [0; 4]);
        let routers = request(
            PI3,
            &[
                (OPT_MESSAGE_TYPE, &[DHCPREQUEST]),
                (OPT_SERVER_ID, &[192, 168, 1, 254]),
                (OPT_VENDOR_CLASS, ROM_VENDOR_CLASS),
            ],
        );
        assert_eq!(
            decide(&routers, SERVER),
            Decision::Ignore {
                mac: Some(Mac(PI3)),
                reason: Ignored::OtherServer(Ipv4Addr::new(192, 168, 1, 254))
            }
        );
    }

    #[test]
    fn an_ordinary_client_gets_no_answer() {
        let laptop = [0x3c, 0x22, 0xfb, 1, 2, 3];
        let udhcpc = request(
            laptop,
            &[
                (OPT_MESSAGE_TYPE, &[DHCPDISCOVER]),
                (OPT_VENDOR_CLASS, b"udhcp 1.35.0"),
            ],
        );
        assert_eq!(
            decide(&udhcpc, SERVER),
            Decision::Ignore {
                mac: Some(Mac(laptop)),
                reason: Ignored::NotPxe
            }
        );
        // A Pi running an ordinary DHCP client (its OS, not its ROM) is not answered either.
        let pi_os = request(PI3, &[(OPT_MESSAGE_TYPE, &[DHCPDISCOVER])]);
        assert!(matches!(
            decide(&pi_os, SERVER),
            Decision::Ignore {
                reason: Ignored::NotPxe,
                ..
            }
        ));
    }

    #[test]
    fn a_pxe_client_that_is_not_a_pi_gets_no_answer() {
        let pc = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(
            decide(&rom_discover(pc), SERVER),
            Decision::Ignore {
                mac: Some(Mac(pc)),
                reason: Ignored::NotPi
            }
        );
    }

    #[test]
    fn replies_relayed_requests_and_bootp_get_no_answer() {
        let mut reply_packet = rom_discover(PI3);
        reply_packet[0] = BOOTREPLY;
        let mut relayed = rom_discover(PI3);
        relayed[24..28].copy_from_slice(&[10, 0, 0, 1]);
        let bootp = request(PI3, &[(OPT_VENDOR_CLASS, ROM_VENDOR_CLASS)]);
        for (packet, reason) in [
            (reply_packet, Ignored::NotDhcp),
            (relayed, Ignored::Relayed),
            (bootp, Ignored::NotDhcp),
        ] {
            assert!(matches!(
                decide(&packet, SERVER),
                Decision::Ignore { reason: r, .. } if r == reason
            ));
        }
    }

    #[test]
    fn garbage_and_every_truncation_get_no_answer_and_no_panic() {
        let whole = rom_discover(PI3);
        for len in 0..whole.len() - 1 {
            // Cut inside an option: None; cut at an option boundary: parsed without the end.
            let _ = decide(&whole[..len], SERVER);
        }
        assert_eq!(
            decide(&whole[..HEADER_LEN + 3], SERVER),
            Decision::Ignore {
                mac: None,
                reason: Ignored::NotDhcp
            }
        );
        let mut overrun = request(PI3, &[(OPT_MESSAGE_TYPE, &[DHCPDISCOVER])]);
        overrun.truncate(overrun.len() - 2); // drop the end and the type byte
        assert!(Packet::parse(&overrun).is_none());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in [0usize, 1, 239, 240, 241, 300, 576, 1500] {
            let mut noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decide(&noise, SERVER);
            if noise.len() >= HEADER_LEN + 4 {
                noise[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&MAGIC_COOKIE);
                let _ = decide(&noise, SERVER);
            }
        }
    }

    #[test]
    fn pad_options_are_skipped() {
        let mut p = request(PI3, &[]);
        p.pop(); // the end
        p.extend_from_slice(&[OPT_PAD, OPT_PAD, OPT_MESSAGE_TYPE, 1, DHCPDISCOVER, OPT_PAD]);
        p.extend_from_slice(&[OPT_VENDOR_CLASS, ROM_VENDOR_CLASS.len() as u8]);
        p.extend_from_slice(ROM_VENDOR_CLASS);
        assert!(matches!(decide(&p, SERVER), Decision::Reply { .. }));
    }

    #[test]
    fn macs_print_in_lower_case_with_colons() {
        assert_eq!(Mac(PI3).to_string(), "b8:27:eb:28:f6:6d");
        assert!(Mac(PI3).is_pi());
        assert!(!Mac([0x52, 0x54, 0, 1, 2, 3]).is_pi());
    }

    #[test]
    fn an_unknown_interface_is_named_in_the_error() {
        let e = ProxyDhcp::bind("piimg-none0", None).err();
        assert!(matches!(e, Some(DhcpError::NoInterface(ref n)) if n == "piimg-none0"));
    }

    #[test]
    fn the_loopback_interface_has_its_address() {
        assert_eq!(
            interface_ipv4("lo").ok().flatten(),
            Some(Ipv4Addr::LOCALHOST)
        );
    }
}
