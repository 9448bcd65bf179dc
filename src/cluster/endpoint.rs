//! The host's station on the cluster's virtual segment, with an address of the nodes' subnet
//! (their NTP server address): it answers SNTP and splices TCP connections from 127.0.0.1
//! ports to the nodes (`--forward`). It is a userspace TCP/IP stack (smoltcp) behind one port
//! of the switch, so that the host needs no interface, tap or route on that subnet.

use super::sntp;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

/// The segment as smoltcp sees it: frames in from the switch, frames out to it.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// `--forward`: connections to 127.0.0.1:`listener`'s port go to `to` on the segment.
pub struct Forward {
    pub listener: TcpListener,
    pub to: SocketAddrV4,
}

/// One forwarded connection: the host side and the smoltcp socket towards the node, with what
/// one side gave that the other has not taken yet.
struct Conn {
    stream: TcpStream,
    socket: SocketHandle,
    to_node: Vec<u8>,
    to_host: Vec<u8>,
    host_eof: bool,
    host_closed: bool,
}

const TCP_BUFFER: usize = 64 * 1024;
/// How many frames of the segment may wait for smoltcp before the oldest are dropped (a
/// flood must not grow memory without bound).
const MAX_QUEUED: usize = 1024;

pub struct Endpoint {
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
    sntp: SocketHandle,
    forwards: Vec<Forward>,
    conns: Vec<Conn>,
    next_port: u16,
    epoch: Instant,
}

impl Endpoint {
    /// The station `address`/`prefix` with `mac`, answering SNTP on UDP 123.
    pub fn new(mac: [u8; 6], address: Ipv4Addr, prefix: u8, forwards: Vec<Forward>) -> Endpoint {
        let mut dev = Queues::default();
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed =
            u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
                ^ SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
        let mut iface = Interface::new(config, &mut dev, SmolInstant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(address), prefix));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let udp_buf =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0u8; 16 * 128]);
        let mut s = udp::Socket::new(udp_buf(), udp_buf());
        // Binding a fresh socket to a non-zero port cannot fail.
        let _ = s.bind(123);
        let sntp = sockets.add(s);
        for f in &forwards {
            let _ = f.listener.set_nonblocking(true);
        }
        Endpoint {
            iface,
            dev,
            sockets,
            sntp,
            forwards,
            conns: Vec::new(),
            next_port: 49152,
            epoch,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// A frame from the segment.
    pub fn receive(&mut self, frame: &[u8]) {
        if self.dev.rx.len() >= MAX_QUEUED {
            self.dev.rx.pop_front();
        }
        self.dev.rx.push_back(frame.to_vec());
    }

    /// What the switch's loop waits on besides its socket: the forward listeners and the host
    /// sides that may send (not those whose data still waits for the node).
    pub fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self
            .forwards
            .iter()
            .map(|f| f.listener.as_raw_fd())
            .collect();
        fds.extend(
            self.conns
                .iter()
                .filter(|c| !c.host_eof && !c.host_closed && c.to_node.is_empty())
                .map(|c| c.stream.as_raw_fd()),
        );
        fds
    }

    /// How long smoltcp may wait before it has something to do (retransmits, timers); short
    /// while a connection has data waiting on either side.
    pub fn delay(&mut self) -> Option<Duration> {
        if self
            .conns
            .iter()
            .any(|c| !c.to_node.is_empty() || !c.to_host.is_empty())
        {
            return Some(Duration::from_millis(5));
        }
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Runs the stack: takes the frames received, answers SNTP, moves forwarded data; returns
    /// the frames to send on the segment.
    pub fn poll(&mut self) -> Vec<Vec<u8>> {
        self.accept();
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.answer_sntp();
        self.splice();
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.dev.tx.drain(..).collect()
    }

    fn answer_sntp(&mut self) {
        let s = self.sockets.get_mut::<udp::Socket>(self.sntp);
        while let Ok((req, meta)) = s.recv() {
            let received = SystemTime::now();
            let Some(r) = sntp::reply(req, received, SystemTime::now()) else {
                continue;
            };
            let to: IpEndpoint = meta.endpoint;
            let _ = s.send_slice(&r, to);
        }
    }

    /// New host connections on the forward ports, each with a smoltcp connection to its node.
    fn accept(&mut self) {
        for i in 0..self.forwards.len() {
            while let Ok((stream, _)) = self.forwards[i].listener.accept() {
                let to = self.forwards[i].to;
                let _ = stream.set_nonblocking(true);
                let _ = stream.set_nodelay(true);
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
                    tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
                );
                // A node that never answers (wrong address, not booted) must not hold the
                // host's connection open forever.
                s.set_timeout(Some(smoltcp::time::Duration::from_secs(20)));
                let port = self.local_port();
                let cx = self.iface.context();
                if s.connect(cx, (IpAddress::Ipv4(*to.ip()), to.port()), port)
                    .is_err()
                {
                    continue;
                }
                let socket = self.sockets.add(s);
                self.conns.push(Conn {
                    stream,
                    socket,
                    to_node: Vec::new(),
                    to_host: Vec::new(),
                    host_eof: false,
                    host_closed: false,
                });
            }
        }
    }

    fn local_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
        p
    }

    /// Moves data both ways on every connection; drops those both sides have closed.
    fn splice(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        for c in &mut self.conns {
            let s = self.sockets.get_mut::<tcp::Socket>(c.socket);
            // Host -> node.
            if c.to_node.is_empty() && !c.host_eof && !c.host_closed && s.may_send() {
                match c.stream.read(&mut buf) {
                    Ok(0) => c.host_eof = true,
                    Ok(n) => c.to_node.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => c.host_closed = true,
                }
            }
            if !c.to_node.is_empty() && s.can_send() {
                if let Ok(n) = s.send_slice(&c.to_node) {
                    c.to_node.drain(..n);
                }
            }
            if c.host_eof && c.to_node.is_empty() {
                s.close();
            }
            // Node -> host.
            if c.to_host.is_empty() && s.can_recv() {
                if let Ok(n) = s.recv_slice(&mut buf) {
                    c.to_host.extend_from_slice(&buf[..n]);
                }
            }
            if !c.to_host.is_empty() && !c.host_closed {
                match c.stream.write(&c.to_host) {
                    Ok(n) => {
                        c.to_host.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => c.host_closed = true,
                }
            }
            if c.host_closed {
                s.abort();
                c.to_host.clear();
            }
            let node_done = !s.is_open() || (!s.may_recv() && s.state() != tcp::State::SynSent);
            if node_done && c.to_host.is_empty() {
                let _ = c.stream.shutdown(Shutdown::Write);
            }
        }
        let sockets = &mut self.sockets;
        self.conns.retain(|c| {
            let s = sockets.get::<tcp::Socket>(c.socket);
            let done = !s.is_open() && c.to_host.is_empty();
            if done {
                let _ = c.stream.shutdown(Shutdown::Both);
                sockets.remove(c.socket);
            }
            !done
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::lan::Lan;
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A node on the segment that is not a QEMU guest: a smoltcp stack of its own behind a UDP
    /// port of the switch, with an SNTP client socket and a TCP echo server on port 7.
    struct TestNode {
        sock: UdpSocket,
        switch: SocketAddr,
        iface: Interface,
        dev: Queues,
        sockets: SocketSet<'static>,
        udp: SocketHandle,
        tcp: SocketHandle,
        epoch: Instant,
    }

    impl TestNode {
        fn new(address: Ipv4Addr) -> TestNode {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            let mut dev = Queues::default();
            let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
                0xb8, 0x27, 0xeb, 1, 2, 3,
            ])));
            let mut iface = Interface::new(config, &mut dev, SmolInstant::from_millis(0));
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::Ipv4(address), 24)).unwrap();
            });
            let mut sockets = SocketSet::new(Vec::new());
            let buf =
                || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0u8; 1024]);
            let mut u = udp::Socket::new(buf(), buf());
            u.bind(40123).unwrap();
            let udp = sockets.add(u);
            let mut t = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; 4096]),
                tcp::SocketBuffer::new(vec![0u8; 4096]),
            );
            t.listen(7).unwrap();
            let tcp = sockets.add(t);
            TestNode {
                sock,
                switch: "127.0.0.1:1".parse().unwrap(),
                iface,
                dev,
                sockets,
                udp,
                tcp,
                epoch: Instant::now(),
            }
        }

        /// One round: frames in from the switch, the stack, the echo server, frames out.
        fn pump(&mut self) {
            let mut buf = [0u8; 2048];
            while let Ok(n) = self.sock.recv(&mut buf) {
                self.dev.rx.push_back(buf[..n].to_vec());
            }
            let now = SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64);
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
            let t = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            if t.can_recv() && t.can_send() {
                let mut data = [0u8; 512];
                let n = t.recv_slice(&mut data).unwrap();
                t.send_slice(&data[..n].to_ascii_uppercase()).unwrap();
            }
            if t.state() == tcp::State::CloseWait {
                t.close();
            }
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
            for f in self.dev.tx.drain(..) {
                self.sock.send_to(&f, self.switch).unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_hosts_station_answers_sntp_and_forwards_tcp_to_a_node() {
        let host_ip = Ipv4Addr::new(10, 77, 0, 1);
        let node_ip = Ipv4Addr::new(10, 77, 0, 30);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fwd_port = listener.local_addr().unwrap().port();
        let ep = Endpoint::new(
            [2, 0, 0, 0, 0, 1],
            host_ip,
            24,
            vec![Forward {
                listener,
                to: SocketAddrV4::new(node_ip, 7),
            }],
        );
        let mut node = TestNode::new(node_ip);
        let peer = node.sock.local_addr().unwrap();
        let mut lan = Lan::bind(0, &[peer], Some(ep)).unwrap();
        node.switch = SocketAddr::from((Ipv4Addr::LOCALHOST, lan.port().unwrap()));
        let stop = Arc::new(AtomicBool::new(false));
        let switch = {
            let stop = stop.clone();
            std::thread::spawn(move || lan.run(&stop))
        };

        // SNTP: the node asks the host's station (ARP first, as a guest would).
        let mut req = [0u8; 48];
        req[0] = 0x23;
        req[40..48].copy_from_slice(b"nonce-42");
        node.sockets
            .get_mut::<udp::Socket>(node.udp)
            .send_slice(&req, (IpAddress::Ipv4(host_ip), 123))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            assert!(Instant::now() < deadline, "no SNTP reply");
            node.pump();
            if let Ok((data, meta)) = node.sockets.get_mut::<udp::Socket>(node.udp).recv() {
                assert_eq!(meta.endpoint.port, 123);
                break data.to_vec();
            }
        };
        assert_eq!(&reply[24..32], b"nonce-42");
        let (secs, _) = piimg_agent::clock::parse_reply(&reply).unwrap();
        let host_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((secs - host_now).abs() <= 2, "{secs} vs {host_now}");

        // A forward: 127.0.0.1:fwd_port -> the node's port 7 (echo in capitals), both ways,
        // and the node's close reaches the host as EOF.
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", fwd_port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hello node\n").unwrap();
            let mut got = [0u8; 11];
            s.read_exact(&mut got).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            (got, rest)
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        while !client.is_finished() {
            assert!(Instant::now() < deadline, "the forward did not finish");
            node.pump();
        }
        let (got, rest) = client.join().unwrap();
        assert_eq!(&got, b"HELLO NODE\n");
        assert!(rest.is_empty());
        stop.store(true, Ordering::SeqCst);
        switch.join().unwrap().unwrap();
    }
}
