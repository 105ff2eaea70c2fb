//! Peak memory of a benchmark phase and what was in use when it started.

use super::MemProbe;

/// Memory readings of one phase (see the `bench` module doc).
#[derive(Debug, Clone, Default)]
pub struct Peak {
    /// In use at the start (CPU `VmRSS`, CUDA in-use bytes).
    pub start: Option<u64>,
    /// CPU `VmHWM`, CUDA pool reserved bytes (the highest sample).
    pub peak: Option<u64>,
    /// CUDA in-use bytes (the highest sample).
    pub in_use: Option<u64>,
    cuda: bool,
}

impl Peak {
    /// Reset the probe's peak and read what is in use.
    pub(super) fn start(mem: &MemProbe) -> Self {
        mem.reset();
        Self {
            start: mem.current(),
            cuda: matches!(mem, MemProbe::Cuda(_)),
            ..Default::default()
        }
    }

    pub(super) fn note(&mut self, mem: &MemProbe) {
        self.peak = self.peak.max(mem.sample());
        if self.cuda {
            self.in_use = self.in_use.max(mem.current());
        }
    }

    /// Peak above the start: CPU peak RSS − RSS at start, CUDA in-use peak − in use at start.
    pub fn activations(&self) -> Option<u64> {
        let top = if self.cuda { self.in_use } else { self.peak };
        Some(top?.saturating_sub(self.start?))
    }
}
