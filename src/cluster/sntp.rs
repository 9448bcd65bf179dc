//! The SNTP server reply (RFC 4330 section 5) with the host's clock: nodes without a real-time
//! clock set theirs from it, and kubeadm and kubelet start only once they have.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds between 1900-01-01 (NTP era 0) and 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A time as an NTP timestamp: seconds since 1900 (mod 2^32) and a binary fraction.
pub fn ntp_timestamp(t: SystemTime) -> [u8; 8] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (d.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..].copy_from_slice(&frac.to_be_bytes());
    out
}

/// The reply to a client request received at `received`, sent at `now`; None for anything but
/// a client (mode 3) or symmetric-active (mode 1) request of version 1 to 4.
pub fn reply(request: &[u8], received: SystemTime, now: SystemTime) -> Option<[u8; 48]> {
    if request.len() < 48 {
        return None;
    }
    let version = (request[0] >> 3) & 7;
    let mode = request[0] & 7;
    if !(1..=4).contains(&version) || !(mode == 3 || mode == 1) {
        return None;
    }
    let mut r = [0u8; 48];
    // LI 0 (no warning), the client's version, mode 4 (server), or 2 (symmetric passive).
    r[0] = (version << 3) | if mode == 3 { 4 } else { 2 };
    // Stratum 1 with the reference "LOCL": the host's clock is the reference, as far as the
    // segment can know (it is synced by whatever syncs the host).
    r[1] = 1;
    r[2] = request[2];
    r[3] = (-20i8) as u8; // precision ~1 µs
    r[12..16].copy_from_slice(b"LOCL");
    r[16..24].copy_from_slice(&ntp_timestamp(now));
    // Originate = the client's transmit timestamp, so that it can match the reply.
    r[24..32].copy_from_slice(&request[40..48]);
    r[32..40].copy_from_slice(&ntp_timestamp(received));
    r[40..48].copy_from_slice(&ntp_timestamp(now));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_request_gets_a_server_reply_with_the_hosts_time() {
        let mut req = [0u8; 48];
        req[0] = 0x23; // v4 client
        req[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 500_000_000);
        let r = reply(&req, t, t).unwrap();
        assert_eq!(r[0], 0x24);
        assert_eq!(r[1], 1);
        assert_eq!(&r[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let secs = u32::from_be_bytes(r[40..44].try_into().unwrap());
        assert_eq!(u64::from(secs), 1_800_000_000 + NTP_UNIX_OFFSET);
        let frac = u32::from_be_bytes(r[44..48].try_into().unwrap());
        assert_eq!(frac, 1 << 31);
        // The agent's own SNTP client takes it.
        assert_eq!(
            piimg_agent::clock::parse_reply(&r),
            Ok((1_800_000_000, 500_000_000))
        );
        // v3 clients get v3 replies; servers' and broadcast packets get none.
        req[0] = 0x1b;
        assert_eq!(reply(&req, t, t).unwrap()[0], 0x1c);
        req[0] = 0x24;
        assert!(reply(&req, t, t).is_none());
        assert!(reply(&req[..40], t, t).is_none());
    }
}
