//! The one channel through which library code reports progress; the CLI decides how to show it.

/// Receives progress from long-running library work. Implementations must be cheap to call.
pub trait Reporter: Sync {
    /// A step starts; `total` is its size in `unit`s when known.
    fn begin(&self, _step: &str, _total: Option<u64>) {}
    /// `n` more units of the current step are done.
    fn advance(&self, _n: u64) {}
    /// The current step ended.
    fn end(&self) {}
    /// A line worth showing to the user (never a secret).
    fn info(&self, _msg: &str) {}
}

/// Reports nothing (tests, `-q`).
pub struct Silent;
impl Reporter for Silent {}
