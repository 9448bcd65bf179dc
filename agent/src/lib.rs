//! piimg-agent: the init process of a piimg node, and the node configuration schema that the
//! builder writes into every image (the builder depends on this crate for [`node::NodeConfig`]).

pub mod node;
