//! Every id an image carries (disk signature or GUID, partition GUIDs, filesystem UUIDs and hash
//! seeds, FAT volume ids) derives from a seed and a purpose through one function, so rebuilds
//! are bit-identical and two images or partitions share an id only if they share the seed and
//! purpose. `piimg build` seeds with the node's identity, `piimg fs` with the output's name.

use sha2::{Digest, Sha256};

/// sha256 over the length-prefixed ("piimg-guid", seed, purpose), first 16 bytes, with the
/// RFC 4122 version-4 and variant bits set: reproducible, yet shaped like any random GUID for
/// tools that check those bits.
pub fn derive(seed: &[u8], purpose: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in [b"piimg-guid".as_slice(), seed, purpose.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    g[6] = (g[6] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// A 32-bit id (MBR disk signature, FAT volume id): the first 4 bytes of [`derive`], little
/// endian, never 0 (tools treat 0 as "no signature").
pub fn derive32(seed: &[u8], purpose: &str) -> u32 {
    let g = derive(seed, purpose);
    match u32::from_le_bytes([g[0], g[1], g[2], g[3]]) {
        0 => 1,
        v => v,
    }
}

/// The UUID and directory-hash seed of an ext4 filesystem named `name` within the seed.
pub fn ext4(seed: &[u8], name: &str) -> ([u8; 16], [u8; 16]) {
    (
        derive(seed, &format!("{name}-uuid")),
        derive(seed, &format!("{name}-hash-seed")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_seed_and_purpose_and_look_like_v4_uuids() {
        let a = derive(b"seed", "root-uuid");
        assert_eq!(a, derive(b"seed", "root-uuid"));
        assert_ne!(a, derive(b"seed", "data-uuid"));
        assert_ne!(a, derive(b"seed2", "root-uuid"));
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 0b10);
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(derive(b"ab", "c"), derive(b"a", "bc"));
        assert_ne!(derive32(b"seed", "fat-volume-id"), 0);
    }
}
