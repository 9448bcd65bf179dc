//! The cluster's virtual Ethernet segment: a learning switch on one UDP socket bound to
//! 127.0.0.1. Each QEMU sends its frames as datagrams to the switch (`-netdev dgram`) and
//! receives on a loopback port of its own, so the guests' traffic never touches a host
//! interface or an address outside 127.0.0.0/8. The host's own station on the segment (SNTP,
//! port forwards: [`super::endpoint`]) is one more port of the same switch.

use super::endpoint::Endpoint;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &str) -> impl Fn(std::io::Error) -> LanError + '_ {
    move |source| LanError::Io {
        what: what.to_string(),
        source,
    }
}

/// One port of the switch: a UDP peer (a QEMU's local address) or the host's station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    Peer(SocketAddr),
    Host,
}

/// Which port each source MAC was last seen on, and every port a flood reaches.
#[derive(Debug, Default)]
pub struct Switch {
    peers: Vec<SocketAddr>,
    host: bool,
    table: HashMap<[u8; 6], Port>,
}

/// The largest Ethernet frame a port sends (1500-byte MTU, header, VLAN tag).
pub const MAX_FRAME: usize = 1522;

impl Switch {
    /// A switch with these peers known before they send anything (a broadcast must reach a
    /// guest that has not spoken yet), and the host's station when `host`.
    pub fn new(peers: &[SocketAddr], host: bool) -> Switch {
        Switch {
            peers: peers.to_vec(),
            host,
            table: HashMap::new(),
        }
    }

    /// The ports a frame that came in on `from` goes out on: the port its destination MAC was
    /// learnt on, else every port but `from` (broadcast, multicast, unknown unicast). A runt
    /// frame goes nowhere.
    pub fn route(&mut self, from: Port, frame: &[u8]) -> Vec<Port> {
        if frame.len() < 14 {
            return Vec::new();
        }
        if let Port::Peer(a) = from {
            if !self.peers.contains(&a) {
                self.peers.push(a);
            }
        }
        let dst: [u8; 6] = frame[0..6].try_into().unwrap_or([0xff; 6]);
        let src: [u8; 6] = frame[6..12].try_into().unwrap_or([0; 6]);
        // A multicast source is invalid; learning it would capture broadcasts.
        if src[0] & 1 == 0 {
            self.table.insert(src, from);
        }
        if dst[0] & 1 == 0 {
            if let Some(&p) = self.table.get(&dst) {
                return if p == from { Vec::new() } else { vec![p] };
            }
        }
        let mut out: Vec<Port> = self
            .peers
            .iter()
            .map(|&a| Port::Peer(a))
            .filter(|&p| p != from)
            .collect();
        if self.host && from != Port::Host {
            out.push(Port::Host);
        }
        out
    }
}

/// The switch's socket, its table and the host's station, run by [`Lan::run`].
pub struct Lan {
    sock: UdpSocket,
    switch: Switch,
    endpoint: Option<Endpoint>,
}

impl Lan {
    /// Binds the switch to 127.0.0.1:`port` (0: any free port).
    pub fn bind(
        port: u16,
        peers: &[SocketAddr],
        endpoint: Option<Endpoint>,
    ) -> Result<Lan, LanError> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).map_err(io("switch socket"))?;
        sock.set_nonblocking(true).map_err(io("switch socket"))?;
        Ok(Lan {
            sock,
            switch: Switch::new(peers, endpoint.is_some()),
            endpoint,
        })
    }

    pub fn port(&self) -> Result<u16, LanError> {
        Ok(self.sock.local_addr().map_err(io("switch socket"))?.port())
    }

    /// Switches frames until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), LanError> {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            let wait = self
                .endpoint
                .as_mut()
                .and_then(Endpoint::delay)
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            let mut fds = vec![libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(e) = &self.endpoint {
                fds.extend(e.poll_fds().into_iter().map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }));
            }
            // SAFETY: `fds` is a live array of pollfd of the length passed.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis() as libc::c_int,
                )
            };
            self.step(&mut buf)?;
        }
        Ok(())
    }

    /// Everything that is waiting: datagrams from the peers, then the host's station.
    fn step(&mut self, buf: &mut [u8]) -> Result<(), LanError> {
        loop {
            match self.sock.recv_from(buf) {
                Ok((n, from)) => {
                    let frame = &buf[..n];
                    for p in self.switch.route(Port::Peer(from), frame) {
                        self.deliver(p, frame);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // A peer that is gone (ICMP port unreachable from an earlier send).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("switch socket")(e)),
            }
        }
        let Some(e) = self.endpoint.as_mut() else {
            return Ok(());
        };
        for frame in e.poll() {
            for p in self.switch.route(Port::Host, &frame) {
                if let Port::Peer(a) = p {
                    let _ = self.sock.send_to(&frame, a);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, p: Port, frame: &[u8]) {
        match p {
            // A peer not listening (its QEMU exited) must not stop the others.
            Port::Peer(a) => {
                let _ = self.sock.send_to(frame, a);
            }
            Port::Host => {
                if let Some(e) = self.endpoint.as_mut() {
                    e.receive(frame);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
        f.extend_from_slice(payload);
        f
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    fn peer() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    fn got(s: &UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn the_switch_floods_until_it_has_learnt_then_forwards_to_one_port() {
        let (pa, pb, pc) = (peer(), peer(), peer());
        let addrs: Vec<SocketAddr> = [&pa, &pb, &pc]
            .iter()
            .map(|s| s.local_addr().unwrap())
            .collect();
        let mut lan = Lan::bind(0, &addrs, None).unwrap();
        let sw = SocketAddr::from((Ipv4Addr::LOCALHOST, lan.port().unwrap()));
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let stop = stop.clone();
            std::thread::spawn(move || lan.run(&stop))
        };
        // Unknown destination: every other port gets it, the sender does not.
        let f1 = frame(B, A, b"who is b");
        pa.send_to(&f1, sw).unwrap();
        assert_eq!(got(&pb).as_deref(), Some(&f1[..]));
        assert_eq!(got(&pc).as_deref(), Some(&f1[..]));
        assert_eq!(got(&pa), None);
        // B answers A: A was learnt, so only A gets it; B is learnt now too.
        let f2 = frame(A, B, b"b here");
        pb.send_to(&f2, sw).unwrap();
        assert_eq!(got(&pa).as_deref(), Some(&f2[..]));
        assert_eq!(got(&pc), None);
        let f3 = frame(B, A, b"to b only");
        pa.send_to(&f3, sw).unwrap();
        assert_eq!(got(&pb).as_deref(), Some(&f3[..]));
        assert_eq!(got(&pc), None);
        // Broadcast always floods; a runt goes nowhere.
        let f4 = frame(BCAST, C, b"all");
        pc.send_to(&f4, sw).unwrap();
        assert_eq!(got(&pa).as_deref(), Some(&f4[..]));
        assert_eq!(got(&pb).as_deref(), Some(&f4[..]));
        assert_eq!(got(&pc), None);
        pa.send_to(&[1, 2, 3], sw).unwrap();
        assert_eq!(got(&pb), None);
        // A station that moves to another port is found there.
        let f5 = frame(A, C, b"a moved");
        let pd = peer();
        pd.send_to(&frame(BCAST, A, b"a on d"), sw).unwrap();
        assert!(got(&pa).is_some());
        pc.send_to(&f5, sw).unwrap();
        assert_eq!(got(&pd).as_deref(), Some(&f5[..]));
        assert_eq!(got(&pa), None);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_multicast_source_is_not_learnt_and_the_host_port_gets_floods() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut s = Switch::new(&[a, b], true);
        assert_eq!(
            s.route(Port::Peer(a), &frame(BCAST, BCAST, b"x")),
            vec![Port::Peer(b), Port::Host]
        );
        assert_eq!(
            s.route(Port::Peer(b), &frame(BCAST, B, b"x")),
            vec![Port::Peer(a), Port::Host]
        );
        assert_eq!(s.route(Port::Host, &frame(B, A, b"x")), vec![Port::Peer(b)]);
        assert_eq!(s.route(Port::Peer(b), &frame(A, B, b"x")), vec![Port::Host]);
    }
}
