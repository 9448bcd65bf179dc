//! The clock of a board without RTC: never earlier than the image's build time (which the
//! builder puts no earlier than the cluster CA's notBefore) or the last time this node knew,
//! then SNTP. Services that check certificates wait for [`SYNCED_MARKER`].

use std::net::{ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// Seconds between 1900-01-01 (NTP era 0) and 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Written once the clock has been set from an NTP server: kubeadm and kubelet wait for it.
pub const SYNCED_MARKER: &str = "/run/piimg/time-synced";
/// The last time this node knew (saved on every sync and hourly, on the data partition), so a
/// reboot without network does not go back to the build time.
pub const SAVED_TIME: &str = "/var/lib/piimg/clock";

/// The time to set, if `now` is before `floor` (certificates would look "not yet valid").
pub fn clamp_target(now: i64, floor: i64) -> Option<i64> {
    (now < floor).then_some(floor)
}

/// The clock floor at boot: the build epoch, or the saved time when it is later.
pub fn floor(build_epoch: i64, saved: Option<&str>) -> i64 {
    saved
        .and_then(|t| t.trim().parse::<i64>().ok())
        .map_or(build_epoch, |t| t.max(build_epoch))
}

/// An SNTP v4 client request.
pub fn sntp_request() -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0x23; // LI 0, version 4, mode 3 (client)
    p
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SntpError {
    #[error("short reply")]
    Short,
    #[error("not a server reply")]
    NotServer,
    #[error("server unsynchronised (kiss-o'-death or stratum 0)")]
    Unsynchronised,
}

/// The server's transmit time as Unix (seconds, nanoseconds).
pub fn parse_reply(p: &[u8]) -> Result<(i64, u32), SntpError> {
    if p.len() < 48 {
        return Err(SntpError::Short);
    }
    if p[0] & 0x7 != 4 {
        return Err(SntpError::NotServer);
    }
    if p[1] == 0 || p[0] >> 6 == 3 {
        return Err(SntpError::Unsynchronised);
    }
    let secs = u32::from_be_bytes([p[40], p[41], p[42], p[43]]) as u64;
    let frac = u32::from_be_bytes([p[44], p[45], p[46], p[47]]) as u64;
    // Era 1 starts in 2036: a small value means the counter wrapped.
    let secs = if secs < NTP_UNIX_OFFSET {
        secs + (1u64 << 32)
    } else {
        secs
    };
    Ok((
        (secs - NTP_UNIX_OFFSET) as i64,
        ((frac * 1_000_000_000) >> 32) as u32,
    ))
}

/// Asks one server (`host` or `host:port`) for the time; returns Unix (secs, nanos) corrected by
/// half the round trip.
pub fn query(server: &str, timeout: Duration) -> std::io::Result<(i64, u32)> {
    let addr_text = if server.contains(':')
        && !server.starts_with('[')
        && server.parse::<std::net::Ipv6Addr>().is_err()
    {
        server.to_string()
    } else if server.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{server}]:123")
    } else {
        format!("{server}:123")
    };
    let addr = addr_text
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.connect(addr)?;
    let sent = Instant::now();
    sock.send(&sntp_request())?;
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf)?;
    let half = sent.elapsed() / 2;
    let (s, ns) = parse_reply(&buf[..n])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let total = Duration::new(s as u64, ns) + half;
    Ok((total.as_secs() as i64, total.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp() {
        assert_eq!(clamp_target(0, 1_700_000_000), Some(1_700_000_000));
        assert_eq!(clamp_target(1_800_000_000, 1_700_000_000), None);
        assert_eq!(floor(1_700_000_000, None), 1_700_000_000);
        assert_eq!(floor(1_700_000_000, Some("1750000000\n")), 1_750_000_000);
        assert_eq!(floor(1_700_000_000, Some("1600000000")), 1_700_000_000);
        assert_eq!(floor(1_700_000_000, Some("garbage")), 1_700_000_000);
    }

    fn reply(secs_unix: u64) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 0x24; // version 4, mode 4
        p[1] = 2;
        let ntp = (secs_unix + NTP_UNIX_OFFSET) as u32;
        p[40..44].copy_from_slice(&ntp.to_be_bytes());
        p[44..48].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        p
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            parse_reply(&reply(1_700_000_000)),
            Ok((1_700_000_000, 500_000_000))
        );
        // After the 2036 wrap.
        assert_eq!(parse_reply(&reply(2_200_000_000)).unwrap().0, 2_200_000_000);
        let mut bad = reply(1);
        bad[1] = 0;
        assert_eq!(parse_reply(&bad), Err(SntpError::Unsynchronised));
        assert_eq!(parse_reply(&[0u8; 10]), Err(SntpError::Short));
    }

    #[test]
    fn query_against_local_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!(n, 48);
            assert_eq!(buf[0], 0x23);
            server.send_to(&reply(1_750_000_000), from).unwrap();
        });
        let (s, _) = query(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        h.join().unwrap();
        assert_eq!(s, 1_750_000_000);
    }
}
