//! Progress of long operations, reported to whoever shows it (a terminal bar, logs).

/// Receives progress of one long operation.
pub trait Progress: Send + Sync {
    /// The operation starts; `total` bytes are expected when known.
    fn start(&self, label: &str, total: Option<u64>);
    /// `bytes` more were processed.
    fn advance(&self, bytes: u64);
    /// The operation ended.
    fn finish(&self);
}

/// Progress that goes nowhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
