//! Readiness: `/-/ready` answers 200 (and systemd hears `READY=1`) only after the config is
//! published and every listener is bound.
//!
//! The classic trap is a plain `ready` flag with no happens-before edge, so a
//! reader could see `ready == true` and still miss the data it guards. Here the daemon
//! publishes the config and the listener list first and then stores the flag with Release;
//! a reader loads it with Acquire, so seeing `true` guarantees seeing everything published
//! before it (`tests/loom.rs`: `ready_implies_published`).

use crate::sync::{AtomicBool, Mutex, Ordering, lock};

/// The readiness flag and what it guards.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    listeners: Mutex<Vec<String>>,
}

impl Readiness {
    /// Not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the bound listeners, then marks ready (Release).
    pub fn set_ready(&self, listeners: Vec<String>) {
        *lock(&self.listeners) = listeners;
        self.ready.store(true, Ordering::Release);
    }

    /// Marks not ready (shutdown).
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// True once [`Readiness::set_ready`] ran (Acquire).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The listeners recorded by [`Readiness::set_ready`].
    pub fn listeners(&self) -> Vec<String> {
        lock(&self.listeners).clone()
    }
}
