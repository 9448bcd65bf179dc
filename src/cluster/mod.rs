//! `piimg cluster up`: a whole cluster's images booted in QEMU on one virtual Ethernet segment
//! that exists only inside the QEMU processes and host loopback ([`lan`]), with the host's own
//! station on it for time and port forwards ([`endpoint`], [`sntp`]), and the record of what was
//! started so that `cluster down` stops all of it ([`state`]).

pub mod endpoint;
pub mod lan;
pub mod plan;
pub mod sntp;
pub mod state;
pub mod supervise;

use sha2::{Digest, Sha256};

/// A node's MAC on the segment, the same on every run: the Raspberry Pi Foundation's OUI and 24
/// bits of the hostname's hash. Universally administered on purpose: for a locally
/// administered address the guest's cdc_ether names the interface usb0, not the profile's eth0.
pub fn node_mac(hostname: &str) -> [u8; 6] {
    let h = Sha256::digest(hostname.as_bytes());
    [0xb8, 0x27, 0xeb, h[0], h[1], h[2]]
}

/// The host station's MAC: locally administered, derived from the cluster's name.
pub fn host_mac(cluster: &str) -> [u8; 6] {
    let h = Sha256::digest(format!("piimg-cluster-host {cluster}").as_bytes());
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_per_name_and_of_the_right_kind() {
        let a = node_mac("qemu-ha-lb1");
        assert_eq!(a, node_mac("qemu-ha-lb1"));
        assert_ne!(a, node_mac("qemu-ha-lb2"));
        assert_eq!(&a[..3], &[0xb8, 0x27, 0xeb]);
        let h = host_mac("qemu-ha");
        assert_eq!(h[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(
            mac_text(&[0xb8, 0x27, 0xeb, 0, 1, 0xff]),
            "b8:27:eb:00:01:ff"
        );
    }
}
