//! Assembly: everything between a validated node and the writers — board boot files, the rootfs
//! laid out per role, the initramfs, and the generated configuration files.

pub mod config;

/// The init agent, cross-compiled for aarch64 musl by build.rs and embedded in piimg.
static AGENT: &[u8] = include_bytes!(env!("PIIMG_AGENT_PATH"));

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("this piimg was built without the init agent: {0}")]
    NoAgent(String),
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
