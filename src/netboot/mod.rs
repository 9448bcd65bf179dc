//! Network boot of Raspberry Pi nodes: the servers a Pi's boot ROM talks to when it boots from
//! the network instead of an SD card.

pub mod dhcp;
pub mod files;
pub mod http;
pub mod tftp;
