//! Assembly: everything between a validated node and the writers — board boot files, the rootfs
//! laid out per role, the initramfs, and the generated configuration files.

pub mod config;
pub mod drivers;
pub mod node;
pub mod wifi;

/// The init agent, cross-compiled for aarch64 musl by build.rs and embedded in piimg.
static AGENT: &[u8] = include_bytes!(env!("PIIMG_AGENT_PATH"));

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("this piimg was built without the init agent: {0}")]
    NoAgent(String),
    #[error(
        "{0} is not in piimg.lock: run `piimg fetch` (or supply it with --component {0}=PATH)"
    )]
    NotLocked(String),
    #[error("missing {0}")]
    Missing(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Deb(#[from] crate::components::deb::DebError),
    #[error(transparent)]
    Module(#[from] crate::components::modules::ModuleError),
    #[error(transparent)]
    Fetch(#[from] crate::components::fetch::FetchError),
    #[error("assembling the image tree: {0}")]
    Tree(#[from] crate::tree::TreeError),
}

/// The embedded agent binary, or why this piimg has none.
pub fn agent_binary() -> Result<&'static [u8], AssembleError> {
    if AGENT.is_empty() {
        let why = env!("PIIMG_AGENT_ERROR");
        return Err(AssembleError::NoAgent(if why.is_empty() {
            "unknown reason".into()
        } else {
            why.into()
        }));
    }
    Ok(AGENT)
}
