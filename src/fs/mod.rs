//! Writers that turn a [`crate::tree::Tree`] into filesystem and disk image bytes.

pub mod cpio;
pub mod disk;
pub mod ext4;
pub mod fat32;
pub mod ids;
pub mod sparse;
pub mod squashfs;
pub mod standalone;
