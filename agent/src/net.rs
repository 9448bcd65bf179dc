//! Static network configuration over rtnetlink (hand-written messages, no shelling out):
//! link up, address, default gateway, extra routes; and /run/resolv.conf.

use crate::node::Network;
use ipnet::IpNet;
use std::io;
use std::net::IpAddr;
use std::path::Path;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One netlink message under construction: header, fixed body, then attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        Msg { buf }
    }

    fn body(mut self, bytes: &[u8]) -> Msg {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() as u32).to_ne_bytes();
        self.buf[..4].copy_from_slice(&len);
        self.buf
    }
}

/// RTM_NEWLINK setting IFF_UP on interface `index`.
pub fn link_up_msg(index: u32, seq: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.push(libc::AF_UNSPEC as u8);
    body.push(0);
    body.extend_from_slice(&0u16.to_ne_bytes()); // type
    body.extend_from_slice(&(index as i32).to_ne_bytes());
    body.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    body.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    Msg::new(RTM_NEWLINK, 0, seq).body(&body).finish()
}

/// RTM_NEWADDR adding `addr` (with prefix) to interface `index`.
pub fn addr_msg(index: u32, addr: &IpNet, seq: u32) -> Vec<u8> {
    let ip = addr.addr();
    let body = [family(&ip), addr.prefix_len(), 0, RT_SCOPE_UNIVERSE]
        .iter()
        .copied()
        .chain(index.to_ne_bytes())
        .collect::<Vec<u8>>();
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq)
        .body(&body)
        .attr(IFA_LOCAL, &ip_bytes(&ip))
        .attr(IFA_ADDRESS, &ip_bytes(&ip));
    if let IpNet::V4(n) = addr {
        if n.prefix_len() < 31 {
            m = m.attr(IFA_BROADCAST, &n.broadcast().octets());
        }
    }
    m.finish()
}

/// RTM_NEWROUTE: `to` via `via` (None: directly on the link) out of interface `index`.
pub fn route_msg(index: u32, to: &IpNet, via: Option<&IpAddr>, seq: u32) -> Vec<u8> {
    let dst = to.network();
    let scope = if via.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let body = [
        family(&dst),
        to.prefix_len(),
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        scope,
        RTN_UNICAST,
    ]
    .iter()
    .copied()
    .chain(0u32.to_ne_bytes()) // flags
    .collect::<Vec<u8>>();
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq).body(&body);
    if to.prefix_len() > 0 {
        m = m.attr(RTA_DST, &ip_bytes(&dst));
    }
    if let Some(gw) = via {
        m = m.attr(RTA_GATEWAY, &ip_bytes(gw));
    }
    m.attr(RTA_OIF, &index.to_ne_bytes()).finish()
}

/// The error code (0 = ack) of a netlink reply, if it is an NLMSG_ERROR for `seq`.
pub fn parse_ack(reply: &[u8], seq: u32) -> Option<i32> {
    let mut off = 0;
    while off + 16 <= reply.len() {
        let len = u32::from_ne_bytes(reply[off..off + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(reply[off + 4..off + 6].try_into().ok()?);
        let s = u32::from_ne_bytes(reply[off + 8..off + 12].try_into().ok()?);
        if len < 16 {
            return None;
        }
        if kind == NLMSG_ERROR && s == seq && off + 20 <= reply.len() {
            return Some(i32::from_ne_bytes(
                reply[off + 16..off + 20].try_into().ok()?,
            ));
        }
        off += (len + 3) & !3;
    }
    None
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    fd: std::os::unix::io::OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        use std::os::unix::io::FromRawFd;
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { std::os::unix::io::OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and waits for its acknowledgement. EEXIST counts as success.
    fn request(&mut self, msg: &[u8], seq: u32) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let fd = self.fd.as_raw_fd();
        // SAFETY: sockaddr_nl is POD; zeroed = the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address are valid for the call.
        let rc = unsafe {
            libc::sendto(
                fd,
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buffer valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse_ack(&buf[..n as usize], seq) {
                Some(0) => return Ok(()),
                Some(e) if -e == libc::EEXIST => return Ok(()),
                Some(e) => return Err(io::Error::from_raw_os_error(-e)),
                None => continue,
            }
        }
    }

    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let seq = self.next_seq();
        self.request(&link_up_msg(index, seq), seq)
    }

    pub fn add_addr(&mut self, index: u32, addr: &IpNet) -> io::Result<()> {
        let seq = self.next_seq();
        self.request(&addr_msg(index, addr, seq), seq)
    }

    pub fn add_route(&mut self, index: u32, to: &IpNet, via: Option<&IpAddr>) -> io::Result<()> {
        let seq = self.next_seq();
        self.request(&route_msg(index, to, via, seq), seq)
    }
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Whether the link reports carrier (`/sys/class/net/IF/carrier` = 1). Interfaces without
/// carrier reporting (loopback) count as up when their operstate is not "down".
pub fn has_carrier(sys_net: &Path, name: &str) -> bool {
    let dir = sys_net.join(name);
    match std::fs::read_to_string(dir.join("carrier")) {
        Ok(s) => s.trim() == "1",
        Err(_) => std::fs::read_to_string(dir.join("operstate"))
            .map(|s| s.trim() != "down")
            .unwrap_or(false),
    }
}

/// Brings loopback up.
pub fn loopback_up(nl: &mut Netlink) -> io::Result<()> {
    let idx = ifindex("lo").ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    nl.link_up(idx)
}

/// Applies the profile network to its interface: link up, address, default route, routes.
pub fn configure(nl: &mut Netlink, net: &Network) -> io::Result<()> {
    let idx = ifindex(&net.interface).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {} not present", net.interface),
        )
    })?;
    nl.link_up(idx)?;
    nl.add_addr(idx, &net.address)?;
    if let Some(gw) = &net.gateway {
        let default: IpNet = match gw {
            IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
            IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        nl.add_route(idx, &default, Some(gw))?;
    }
    for r in &net.routes {
        nl.add_route(idx, &r.to, Some(&r.via))?;
    }
    Ok(())
}

/// Whether `net.address` is on its interface right now.
pub fn has_address(net: &Network) -> bool {
    let want = net.address.addr();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return false;
    }
    let mut found = false;
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned; each entry's pointers are valid or null.
        let ifa = unsafe { &*p };
        // SAFETY: ifa_name is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() == net.interface.as_bytes() && !ifa.ifa_addr.is_null() {
            // SAFETY: the family says which sockaddr this is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let addr = match family {
                libc::AF_INET => {
                    // SAFETY: AF_INET addresses are sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    // SAFETY: AF_INET6 addresses are sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            found |= addr == Some(want);
        }
        p = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// A NETLINK_ROUTE socket that hears link, address and route changes (a USB NIC that
/// re-enumerates, a cable pulled and plugged back).
pub struct Watcher {
    fd: std::os::unix::io::OwnedFd,
}

impl Watcher {
    pub fn open() -> io::Result<Watcher> {
        use std::os::unix::io::{AsRawFd, FromRawFd};
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { std::os::unix::io::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is POD.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: valid address and length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watcher { fd })
    }

    /// Waits up to `timeout` for a change; true when one came (all pending ones are read).
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<bool> {
        use std::os::unix::io::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(false);
        }
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: buffer valid for its length; the socket is non-blocking.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if r <= 0 {
                // Drained (EAGAIN), or the kernel dropped events (ENOBUFS): either way, look.
                return Ok(true);
            }
        }
    }
}

/// Keeps `net` on its interface for good: after each change the kernel reports (or every
/// `every`), re-applies the configuration when the address is gone, and says when it was lost
/// and when it is back. Returns only when `stop` says so.
pub fn keep_applied(net: &Network, every: std::time::Duration, stop: &dyn Fn() -> bool) {
    let watcher = Watcher::open();
    if let Err(e) = &watcher {
        crate::console::say(&format!("network: cannot watch for changes ({e}); polling"));
    }
    let mut lost = false;
    while !stop() {
        match &watcher {
            Ok(w) => {
                let _ = w.wait(every);
            }
            Err(_) => std::thread::sleep(every),
        }
        if has_address(net) {
            continue;
        }
        if !lost {
            crate::console::say(&format!(
                "network: {} lost {}; re-applying",
                net.interface, net.address
            ));
            lost = true;
        }
        let applied = Netlink::open().and_then(|mut nl| configure(&mut nl, net));
        if applied.is_ok() && has_address(net) {
            crate::console::say(&format!(
                "network up again {} {}",
                net.interface, net.address
            ));
            lost = false;
        }
    }
}

/// The resolv.conf text for these DNS servers (empty list: a comment only).
pub fn resolv_conf(net: &Network) -> String {
    let mut s = String::from("# written by piimg-agent\n");
    for d in &net.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_message_layout() {
        let m = addr_msg(3, &"10.0.2.15/24".parse().unwrap(), 7);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        // IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST: 8 bytes each.
        assert_eq!(m.len(), 16 + 8 + 3 * 8);
        assert_eq!(&m[28..32], &[10, 0, 2, 15]);
        assert_eq!(&m[44..48], &[10, 0, 2, 255]);
    }

    #[test]
    fn default_route_has_no_dst() {
        let m = route_msg(
            2,
            &"0.0.0.0/0".parse().unwrap(),
            Some(&"10.0.2.2".parse().unwrap()),
            1,
        );
        // header 16 + rtmsg 12 + gateway 8 + oif 8
        assert_eq!(m.len(), 44);
        assert_eq!(
            u16::from_ne_bytes(m[30..32].try_into().unwrap()),
            RTA_GATEWAY
        );
        let m = route_msg(
            2,
            &"192.168.0.0/16".parse().unwrap(),
            Some(&"10.0.2.1".parse().unwrap()),
            1,
        );
        assert_eq!(m.len(), 52);
        assert_eq!(m[17], 16);
    }

    #[test]
    fn ack_parsing() {
        let mut r = vec![0u8; 36];
        r[0..4].copy_from_slice(&36u32.to_ne_bytes());
        r[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        r[8..12].copy_from_slice(&9u32.to_ne_bytes());
        r[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse_ack(&r, 9), Some(-17));
        assert_eq!(parse_ack(&r, 8), None);
    }

    #[test]
    fn resolv() {
        let net = Network {
            interface: "eth0".into(),
            address: "10.0.2.15/24".parse().unwrap(),
            gateway: None,
            dns: vec!["10.0.2.3".parse().unwrap(), "1.1.1.1".parse().unwrap()],
            routes: vec![],
            ntp: vec![],
            wifi: None,
        };
        assert_eq!(
            resolv_conf(&net),
            "# written by piimg-agent\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
    }

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stage 1 configures the netboot interface, then stage 2 applies the same network again:
    /// in a network namespace of this test's own (we are root), iproute2 sees one address and
    /// one default route after both.
    #[test]
    fn configuring_an_interface_twice_is_fine_and_changes_nothing() {
        std::thread::spawn(|| {
            // SAFETY: plain unshare; it moves this thread alone into a new network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            ip(&[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
            ]);
            ip(&["link", "set", "eth1", "up"]);
            let net = Network {
                interface: "eth0".into(),
                address: "10.0.2.15/24".parse().unwrap(),
                gateway: Some("10.0.2.2".parse().unwrap()),
                dns: vec![],
                routes: vec![],
                ntp: vec![],
                wifi: None,
            };
            assert!(!has_address(&net));
            for _ in 0..2 {
                configure(&mut Netlink::open().unwrap(), &net).unwrap();
            }
            assert!(has_address(&net));
            let addrs = ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
            assert_eq!(addrs.lines().count(), 1, "{addrs}");
            assert!(
                addrs.contains("inet 10.0.2.15/24 brd 10.0.2.255"),
                "{addrs}"
            );
            let routes = ip(&["-4", "route", "show", "default"]);
            assert_eq!(
                routes.trim(),
                "default via 10.0.2.2 dev eth0 proto static",
                "{routes}"
            );
        })
        .join()
        .unwrap();
    }
}
