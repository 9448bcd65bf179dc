//! FAT32 writer (write-once) for the Pi boot partition. (Being written: see issue 3.)

use crate::fs::sparse::Sink;
use crate::tree::Tree;

#[derive(Debug, Clone)]
pub struct FatOptions {
    /// Filesystem size in bytes (a multiple of 512).
    pub size: u64,
    /// Volume label (at most 11 bytes, upper-cased).
    pub label: String,
    /// Volume serial number; derive it from the profile.
    pub volume_id: u32,
    /// Timestamp of every entry (SOURCE_DATE_EPOCH).
    pub timestamp: i64,
    /// Sectors before the filesystem on the disk (the partition's start LBA).
    pub hidden_sectors: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FatError {
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

pub fn write(
    _tree: &Tree,
    _opts: &FatOptions,
    _out: &mut dyn Sink,
    _offset: u64,
) -> Result<(), FatError> {
    Err(FatError::Invalid("FAT32 writer not written yet".into()))
}
