//! ext4 writer (write-once): turns a Tree into an ext4 filesystem that e2fsck accepts and the
//! Linux kernel mounts read-write. (Being written: see issue 3.)

use crate::fs::sparse::Sink;
use crate::tree::Tree;

/// Everything that decides the output bytes besides the tree.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Filesystem size in bytes (a multiple of the block size).
    pub size: u64,
    /// Volume label (at most 16 bytes).
    pub label: String,
    /// Filesystem UUID; derive it from the profile, never random.
    pub uuid: [u8; 16],
    /// htree hash seed; derive it from the profile.
    pub hash_seed: [u8; 16],
    /// Superblock and inode times for things the tree does not time (SOURCE_DATE_EPOCH).
    pub timestamp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("the tree needs at least {needed} bytes but the filesystem is {size} bytes")]
    TooSmall { needed: u64, size: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image: {0}")]
    Write(#[source] std::io::Error),
}

/// Writes the filesystem into `out` starting at byte `offset` (a partition's start).
pub fn write(
    _tree: &Tree,
    _opts: &Ext4Options,
    _out: &mut dyn Sink,
    _offset: u64,
) -> Result<(), Ext4Error> {
    Err(Ext4Error::Invalid("ext4 writer not written yet".into()))
}
