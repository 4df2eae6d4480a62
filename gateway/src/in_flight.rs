//! The count of requests and background settles not finished yet, so a graceful shutdown
//! can end as soon as the last one has settled. Counting only; nothing here waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Requests (and background settles) not finished yet; clones share one count.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// How many are in flight.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// One more is in flight.
    pub fn enter(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// One has finished.
    pub fn leave(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
