//! Network boot of Raspberry Pi nodes: the tree `piimg build --netboot` writes, its check, and
//! the servers a Pi's boot ROM and initramfs talk to when it boots from the network instead of
//! an SD card.

pub mod check;
pub mod dhcp;
pub mod files;
pub mod http;
pub mod node;
pub mod tftp;
pub mod tree;
