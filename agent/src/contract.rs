//! What the builder writes and the agent reads, said once: paths in the root filesystem, the
//! on-disk partition tables (typed), and the text of GUIDs and PARTUUIDs. The builder depends on
//! this crate, so `piimg build`, `piimg qemu`, `verify`, `flash` and the agent on the node all
//! read the same tables the same way.

/// Paths in the node's root filesystem, as the agent sees them. The builder places files at
/// [`paths::in_tree`] of the same constants.
pub mod paths {
    /// The node configuration (crate::node::NodeConfig as JSON).
    pub const NODE_CONFIG: &str = "/etc/piimg/node.json";
    /// Modules stage 2 loads, one per line.
    pub const MODULES_LOAD: &str = "/etc/piimg/modules.load";
    /// Modules stage 1 loads from the initramfs to reach the root device.
    pub const STAGE1_MODULES: &str = "/etc/piimg/stage1.modules";
    pub const KUBEADM_YAML: &str = "/etc/piimg/kubeadm.yaml";
    /// The agent's pristine copy of the preseeded PKI, restored between kubeadm attempts.
    pub const PRESEED_PKI: &str = "/etc/piimg/pki";
    /// kubeadm's certificates folder.
    pub const KUBE_PKI: &str = "/etc/kubernetes/pki";
    /// Image archives imported into containerd on first boot.
    pub const IMAGES_DIR: &str = "/usr/share/piimg/images";
    /// Wi-Fi nodes: Debian's wpa_supplicant, its configuration (mode 0600: it holds the
    /// passphrase), and the folder of its control sockets (`ctrl_interface`), where the socket
    /// named after the interface appears once it runs.
    pub const WPA_SUPPLICANT: &str = "/usr/sbin/wpa_supplicant";
    pub const WPA_SUPPLICANT_CONF: &str = "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf";
    pub const WPA_CTRL_DIR: &str = "/run/wpa_supplicant";
    /// The interface brcmfmac names the on-board Wi-Fi.
    pub const WIFI_INTERFACE: &str = "wlan0";

    /// e2fsprogs' checker: stage 2 runs it on the data filesystem before mounting it on /var.
    pub const E2FSCK: &str = "/usr/sbin/e2fsck";

    /// Markers on /var: a oneshot's work is done (written atomically, after a sync).
    pub const KUBEADM_DONE: &str = "/var/lib/piimg/kubeadm.done";
    pub const IMAGES_DONE: &str = "/var/lib/piimg/images.done";
    pub const KEEPER_DONE: &str = "/var/lib/piimg/keeper.done";
    pub const GROWN: &str = "/var/lib/piimg/grown";

    /// Netboot: in the initramfs, where the node's root image is and how to reach it
    /// (crate::node::NetRoot as JSON). The kernel command line's `piimg.root=` names the URL.
    pub const NETROOT: &str = "/etc/piimg/netroot.json";
    /// Netboot: on a local card's data filesystem (mounted on /var), files holding secrets, each
    /// at its root-filesystem path below this folder; stage 2 copies them into the root.
    pub const CARD_SECRETS: &str = "/var/lib/piimg/secrets";

    /// Folders of the data filesystem mounted on /var (path relative to /var, mode): written by
    /// the builder into the data partition, and made by the agent when /var is a tmpfs.
    pub const DATA_SKELETON: &[(&str, u32)] = &[
        ("lib/piimg", 0o755),
        ("lib/containerd", 0o755),
        ("lib/kubelet", 0o755),
        ("log", 0o755),
        ("cache", 0o755),
        ("lib/haproxy", 0o755),
        ("lib/etcd", 0o700),
        ("tmp", 0o1777),
    ];

    /// The same path relative to the root of a filesystem tree (`etc/piimg/node.json`).
    pub fn in_tree(path: &str) -> &str {
        path.trim_start_matches('/')
    }
}

/// A GUID in its usual text form (lower case, as the kernel prints PARTUUIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the first 16 bytes of `b` as a GPT stores them (first three fields little-endian);
    /// `b` must hold at least 16.
    pub fn from_disk(b: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&b[..16]);
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Guid(g)
    }

    /// From RFC 4122 byte order (how uuid::Uuid and text read left to right).
    pub fn from_rfc4122(b: [u8; 16]) -> Guid {
        Guid(b)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The PARTUUID the kernel gives partition `number` of an MBR disk: the disk signature and the
/// number, both in hex (`0badc0de-02`).
pub fn mbr_partuuid(signature: u32, number: u32) -> String {
    format!("{signature:08x}-{number:02x}")
}

/// CRC-32 (IEEE, reflected), as GPT headers and entry arrays use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// MBR and GPT as they lie on disk: parsing into typed values, and the field offsets for code
/// that rewrites a table in place (crate::grow).
pub mod table {
    use super::{crc32, Guid};
    use std::io::{Read, Seek, SeekFrom};

    pub const SECTOR: u64 = 512;
    /// Offset of the four primary entries in the MBR, and an entry's length.
    pub const MBR_ENTRIES: usize = 446;
    pub const MBR_ENTRY_LEN: usize = 16;
    /// The MBR type of a GPT's protective partition.
    pub const PROTECTIVE: u8 = 0xee;

    /// Field offsets in a GPT header (UEFI 2.10, 5.3.2).
    pub mod gpt_header {
        pub const SIZE: usize = 12;
        pub const CRC: usize = 16;
        pub const CURRENT_LBA: usize = 24;
        pub const BACKUP_LBA: usize = 32;
        pub const FIRST_USABLE: usize = 40;
        pub const LAST_USABLE: usize = 48;
        pub const ENTRIES_LBA: usize = 72;
        pub const ENTRY_COUNT: usize = 80;
        pub const ENTRY_SIZE: usize = 84;
        pub const ENTRIES_CRC: usize = 88;
    }

    /// Field offsets in a GPT partition entry.
    pub mod gpt_entry {
        pub const TYPE: usize = 0;
        pub const UNIQUE: usize = 16;
        pub const FIRST_LBA: usize = 32;
        pub const LAST_LBA: usize = 40;
    }

    pub fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    pub fn le64(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    }

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum TableError {
        #[error("no partition table (no MBR boot signature)")]
        NoTable,
        #[error("MBR partition {0} ends past the end of the disk")]
        MbrPastEnd(u32),
        #[error("protective MBR but no GPT header at LBA 1")]
        NoGptHeader,
        #[error("GPT header: {0}")]
        BadHeader(&'static str),
        #[error("GPT header: {count} entries of {size} bytes")]
        BadEntryArray { count: u32, size: u32 },
        #[error("GPT entry array at LBA {0} lies outside the disk")]
        ArrayOutside(u64),
        #[error("GPT entry array checksum does not match its header")]
        ArrayCrc,
        #[error("GPT partition {number} has a bad extent {first}..={last}")]
        BadExtent { number: u32, first: u64, last: u64 },
    }

    /// One of the four primary MBR entries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MbrEntry {
        pub kind: u8,
        pub first_lba: u32,
        pub sectors: u32,
    }

    impl MbrEntry {
        pub fn is_empty(&self) -> bool {
            self.kind == 0 || self.sectors == 0
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Mbr {
        pub signature: u32,
        pub entries: [MbrEntry; 4],
    }

    impl Mbr {
        /// Sector 0 of a disk; None without the 0x55aa boot signature.
        pub fn parse(sector: &[u8]) -> Option<Mbr> {
            if sector.len() < 512 || sector[510] != 0x55 || sector[511] != 0xaa {
                return None;
            }
            let entry = |i: usize| {
                let o = MBR_ENTRIES + i * MBR_ENTRY_LEN;
                MbrEntry {
                    kind: sector[o + 4],
                    first_lba: le32(sector, o + 8),
                    sectors: le32(sector, o + 12),
                }
            };
            Some(Mbr {
                signature: le32(sector, 440),
                entries: [entry(0), entry(1), entry(2), entry(3)],
            })
        }

        /// A GPT's protective MBR: the real table is the GPT.
        pub fn is_protective(&self) -> bool {
            self.entries.iter().any(|e| e.kind == PROTECTIVE)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GptHeader {
        pub header_size: u32,
        pub current_lba: u64,
        pub backup_lba: u64,
        pub first_usable: u64,
        pub last_usable: u64,
        pub disk_guid: Guid,
        pub entries_lba: u64,
        pub entry_count: u32,
        pub entry_size: u32,
        pub entries_crc: u32,
    }

    impl GptHeader {
        /// A header sector, checked as the kernel checks it (efi.c is_gpt_valid): signature,
        /// header size, header CRC, and an entry array of sane shape.
        pub fn parse(sector: &[u8]) -> Result<GptHeader, TableError> {
            use gpt_header as h;
            if sector.len() < 512 || &sector[..8] != b"EFI PART" {
                return Err(TableError::NoGptHeader);
            }
            let size = le32(sector, h::SIZE);
            if !(92..=512).contains(&size) {
                return Err(TableError::BadHeader("header size"));
            }
            let mut check = [0u8; 512];
            check.copy_from_slice(&sector[..512]);
            check[h::CRC..h::CRC + 4].fill(0);
            if crc32(&check[..size as usize]) != le32(sector, h::CRC) {
                return Err(TableError::BadHeader("header checksum"));
            }
            let count = le32(sector, h::ENTRY_COUNT);
            let esize = le32(sector, h::ENTRY_SIZE);
            if !(128..=4096).contains(&esize)
                || !esize.is_power_of_two()
                || !(1..=1024).contains(&count)
            {
                return Err(TableError::BadEntryArray { count, size: esize });
            }
            Ok(GptHeader {
                header_size: size,
                current_lba: le64(sector, h::CURRENT_LBA),
                backup_lba: le64(sector, h::BACKUP_LBA),
                first_usable: le64(sector, h::FIRST_USABLE),
                last_usable: le64(sector, h::LAST_USABLE),
                disk_guid: Guid::from_disk(&sector[56..72]),
                entries_lba: le64(sector, h::ENTRIES_LBA),
                entry_count: count,
                entry_size: esize,
                entries_crc: le32(sector, h::ENTRIES_CRC),
            })
        }

        pub fn array_bytes(&self) -> u64 {
            u64::from(self.entry_count) * u64::from(self.entry_size)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GptEntry {
        /// From 1: the entry's place in the array, as Linux numbers partitions.
        pub number: u32,
        pub type_guid: Guid,
        pub unique_guid: Guid,
        pub first_lba: u64,
        pub last_lba: u64,
    }

    /// The used entries of an entry array, in array order.
    pub fn gpt_entries(header: &GptHeader, array: &[u8]) -> Vec<GptEntry> {
        use gpt_entry as e;
        array
            .chunks_exact(header.entry_size as usize)
            .take(header.entry_count as usize)
            .enumerate()
            .filter(|(_, b)| b[..16].iter().any(|&x| x != 0))
            .map(|(i, b)| GptEntry {
                number: i as u32 + 1,
                type_guid: Guid::from_disk(&b[e::TYPE..]),
                unique_guid: Guid::from_disk(&b[e::UNIQUE..]),
                first_lba: le64(b, e::FIRST_LBA),
                last_lba: le64(b, e::LAST_LBA),
            })
            .collect()
    }

    /// What a partition's table says its type is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum PartType {
        Mbr(u8),
        Gpt(Guid),
    }

    /// One partition, whichever table it came from.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Partition {
        /// From 1, as Linux numbers them (`mmcblk0p1`).
        pub number: u32,
        /// Byte offset on the disk.
        pub start: u64,
        /// Bytes.
        pub size: u64,
        pub kind: PartType,
        /// What `root=PARTUUID=` matches.
        pub partuuid: String,
    }

    /// GPT type GUIDs the Pi firmware boots from: Microsoft basic data and the EFI system
    /// partition.
    const FAT_GPT_TYPES: [&str; 2] = [
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    ];

    impl Partition {
        /// Whether the table marks it as a FAT partition (the only kind the Pi firmware boots
        /// from).
        pub fn is_fat_type(&self) -> bool {
            match self.kind {
                PartType::Mbr(t) => matches!(t, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e),
                PartType::Gpt(g) => FAT_GPT_TYPES.contains(&g.to_string().as_str()),
            }
        }
    }

    /// Reads a disk's partition table: MBR primary entries, or the GPT behind a protective MBR.
    /// Every extent is checked against the disk's length. Entries come in table order, empty
    /// slots left out.
    pub fn read<R: Read + Seek>(dev: &mut R) -> Result<Vec<Partition>, ReadError> {
        let disk_len = dev.seek(SeekFrom::End(0))?;
        let mut sector = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut sector)?;
        let mbr = Mbr::parse(&sector).ok_or(TableError::NoTable)?;
        if mbr.is_protective() {
            gpt_partitions(dev, disk_len)
        } else {
            mbr_partitions(&mbr, disk_len)
        }
    }

    /// The used primary entries of an MBR.
    fn mbr_partitions(mbr: &Mbr, disk_len: u64) -> Result<Vec<Partition>, ReadError> {
        let mut out = Vec::new();
        for (i, e) in mbr.entries.iter().enumerate() {
            let number = i as u32 + 1;
            if e.is_empty() {
                continue;
            }
            let (lba, sectors) = (u64::from(e.first_lba), u64::from(e.sectors));
            if (lba + sectors) * SECTOR > disk_len {
                return Err(TableError::MbrPastEnd(number).into());
            }
            out.push(Partition {
                number,
                start: lba * SECTOR,
                size: sectors * SECTOR,
                kind: PartType::Mbr(e.kind),
                partuuid: super::mbr_partuuid(mbr.signature, number),
            });
        }
        Ok(out)
    }

    /// The used entries of the GPT whose primary header is at LBA 1.
    fn gpt_partitions<R: Read + Seek>(
        dev: &mut R,
        disk_len: u64,
    ) -> Result<Vec<Partition>, ReadError> {
        let mut sector = [0u8; 512];
        dev.seek(SeekFrom::Start(SECTOR))?;
        dev.read_exact(&mut sector)?;
        let hdr = GptHeader::parse(&sector)?;
        let start = hdr
            .entries_lba
            .checked_mul(SECTOR)
            .filter(|s| s.saturating_add(hdr.array_bytes()) <= disk_len)
            .ok_or(TableError::ArrayOutside(hdr.entries_lba))?;
        let mut array = vec![0u8; hdr.array_bytes() as usize];
        dev.seek(SeekFrom::Start(start))?;
        dev.read_exact(&mut array)?;
        if crc32(&array) != hdr.entries_crc {
            return Err(TableError::ArrayCrc.into());
        }
        gpt_entries(&hdr, &array)
            .into_iter()
            .map(|e| {
                let end = e
                    .last_lba
                    .checked_add(1)
                    .and_then(|l| l.checked_mul(SECTOR));
                if e.last_lba < e.first_lba || end.is_none_or(|end| end > disk_len) {
                    return Err(TableError::BadExtent {
                        number: e.number,
                        first: e.first_lba,
                        last: e.last_lba,
                    }
                    .into());
                }
                Ok(Partition {
                    number: e.number,
                    start: e.first_lba * SECTOR,
                    size: (e.last_lba - e.first_lba + 1) * SECTOR,
                    kind: PartType::Gpt(e.type_guid),
                    partuuid: e.unique_guid.to_string(),
                })
            })
            .collect()
    }

    #[derive(Debug, thiserror::Error)]
    pub enum ReadError {
        #[error(transparent)]
        Io(#[from] std::io::Error),
        #[error(transparent)]
        Table(#[from] TableError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_both_byte_orders() {
        // The EFI system partition type GUID as a GPT stores it.
        let disk = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        let g = Guid::from_disk(&disk);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(Guid::from_rfc4122(g.0), g);
        assert_eq!(mbr_partuuid(0x0bad_c0de, 2), "0badc0de-02");
        assert_eq!(paths::in_tree(paths::NODE_CONFIG), "etc/piimg/node.json");
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
