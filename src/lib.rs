//! piimg: turns per-node TOML profiles into bootable, reproducible Raspberry Pi node images.
//!
//! Data flows one way: [`profile`] (load, extend, validate) -> `piimg_agent::node::NodeConfig` ->
//! [`components`] + [`assemble`] fill [`tree::Tree`]s -> [`fs`] writers -> image files.
//! Nothing below the CLI prints; progress goes through [`report::Reporter`].

pub mod assemble;
pub mod bmap;
pub mod cluster;
pub mod components;
pub mod compress;
pub mod dtb;
pub mod flash;
pub mod fs;
pub mod image;
pub mod init;
pub mod netboot;
pub mod pipeline;
pub mod profile;
pub mod qemu;
pub mod report;
pub mod tree;
pub mod units;
pub mod verify;
