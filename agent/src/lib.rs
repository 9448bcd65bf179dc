//! piimg-agent: the init process of a piimg node, and the node configuration schema that the
//! builder writes into every image (the builder depends on this crate for [`node::NodeConfig`]).
//!
//! The binary is PID 1 twice: stage 1 in the initramfs ([`stage1`]) and stage 2 in the root
//! filesystem ([`stage2`]); [`commands`] documents how it decides. Everything that can run on a
//! host without root takes its paths as parameters and is tested there; the stages make their
//! privileged calls through [`syscall::Syscall`] and find their files under [`syscall::Host`]'s
//! root, so they are tested there too, against a recording fake.

pub mod blockdev;
pub mod check;
pub mod clock;
pub mod cmdline;
pub mod commands;
pub mod console;
pub mod contract;
pub mod fsck;
pub mod grow;
pub mod keeper;
pub mod kubeadm;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod netroot;
pub mod node;
pub mod roles;
pub mod stage1;
pub mod stage2;
pub mod status;
pub mod supervise;
pub mod sys;
pub mod syscall;
pub mod sysctl;
pub mod watchdog;
