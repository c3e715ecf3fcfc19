//! The thin facade over atomics, `Arc`, `Mutex`, lazily-published boxes and the config cell
//! that the concurrent core ([`crate::store`], [`crate::config::live::Live`], readiness) is written
//! against.
//!
//! In a normal build these are the std types and `arc_swap::ArcSwap`. Built with
//! `RUSTFLAGS="--cfg loom"` they are loom's model types, so `tests/loom.rs` can explore every
//! interleaving of the real code. arc-swap has no loom support: under loom, [`Cell`] is an
//! `RwLock<Arc<T>>` with the same interface (every reader sees one whole value, old or new,
//! which is the property arc-swap gives and the models check).
//!
//! `OnceBox` is written here rather than taken from a crate (`once_cell::race::OnceBox` does
//! the same) because loom must model it: built on this module's atomics it runs under loom's
//! scheduler in `tests/loom.rs`, and a crate's would not. It is the second module allowed
//! `unsafe` (the raw pointer of the box); every block says why it holds.
#![allow(unsafe_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: every critical section in tallyd leaves its data
/// consistent before anything that could panic, and a scrape must never fail because another
/// thread once panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(loom)]
    {
        m.lock().unwrap()
    }
    #[cfg(not(loom))]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Loads a word whose every store happens before this load: a shard's writer reading its own
/// word before adding to it, or a sweep reading the epoch that only sweeps store, under the
/// registry lock it holds. A Relaxed load: by coherence it returns the last store, so no
/// ordering is needed.
///
/// Under loom it is an `unsync_load`, for two reasons. Loom then checks that claim itself: it
/// panics if any other thread's store to the word is not ordered with this load (the sweeper
/// zeroes a word only after every writer has let go of it). And it keeps loom's
/// partial-order reduction exact: loom 0.7 remembers only the last access to an atomic, so a
/// writer's own load just before its store hides a scrape's earlier load of the word, and the
/// interleavings where the scrape reads after the store are never explored
/// (tokio-rs/loom#166, #392). A load that cannot race with anything is not an access DPOR needs.
#[inline]
pub(crate) fn load_own(w: &AtomicU64) -> u64 {
    #[cfg(loom)]
    {
        // SAFETY: loom's `unsync_load` is sound when no other thread stores concurrently, the
        // single-writer invariant above, which loom verifies on every execution.
        unsafe { w.unsync_load() }
    }
    #[cfg(not(loom))]
    {
        w.load(Ordering::Relaxed)
    }
}

/// A box published once, read lock-free: double-checked initialisation,
/// done with an Acquire load and an AcqRel compare-exchange so a reader that sees the pointer
/// also sees the fully initialised contents.
///
/// Hand-written rather than `once_cell::race::OnceBox` so that it runs on loom's atomics.
pub(crate) struct OnceBox<T> {
    ptr: AtomicPtr<T>,
}

impl<T> OnceBox<T> {
    pub(crate) fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The value, if published.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published by `get_or_init` from `Box::into_raw`
        // with Release (AcqRel) ordering, so its pointee is initialised and visible after our
        // Acquire load; it is never freed while `self` lives (only in `Drop`, with `&mut`).
        unsafe { p.as_ref() }
    }

    /// The value, publishing `init()` first if nobody has. The published case is inlined.
    #[inline]
    pub(crate) fn get_or_init(&self, init: impl FnOnce() -> Box<T>) -> &T {
        match self.get() {
            Some(v) => v,
            None => self.publish(init()),
        }
    }

    /// Publishes `new` unless another value was first; returns the published one.
    #[cold]
    #[inline(never)]
    fn publish(&self, new: Box<T>) -> &T {
        let new = Box::into_raw(new);
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: we just published `new`; see `get`.
            Ok(_) => unsafe { &*new },
            Err(existing) => {
                // SAFETY: `new` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(new) });
                // SAFETY: `existing` was published by the winner; see `get`.
                unsafe { &*existing }
            }
        }
    }
}

impl<T> Drop for OnceBox<T> {
    fn drop(&mut self) {
        #[cfg(loom)]
        let p = self.ptr.with_mut(|p| *p);
        #[cfg(not(loom))]
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: published from `Box::into_raw` and, with `&mut self`, no reader remains.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

// SAFETY: OnceBox hands out `&T` to many threads and moves a `Box<T>` between them.
unsafe impl<T: Send + Sync> Sync for OnceBox<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for OnceBox<T> {}

/// The atomically swapped cell holding a published value (the live config).
pub struct Cell<T> {
    #[cfg(not(loom))]
    inner: arc_swap::ArcSwap<T>,
    #[cfg(loom)]
    inner: loom::sync::RwLock<Arc<T>>,
}

impl<T> Cell<T> {
    /// A cell holding `value`.
    pub fn new(value: Arc<T>) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: arc_swap::ArcSwap::new(value),
            #[cfg(loom)]
            inner: loom::sync::RwLock::new(value),
        }
    }

    /// The current value (one whole value, old or new).
    pub fn load(&self) -> Arc<T> {
        #[cfg(not(loom))]
        {
            self.inner.load_full()
        }
        #[cfg(loom)]
        {
            self.inner.read().unwrap().clone()
        }
    }

    /// True if `current` is still the published value. Lock-free and write-free in normal
    /// builds (it does not touch the reference count), so workers call it once per batch.
    pub fn is_current(&self, current: &Arc<T>) -> bool {
        #[cfg(not(loom))]
        {
            Arc::ptr_eq(&self.inner.load(), current)
        }
        #[cfg(loom)]
        {
            Arc::ptr_eq(&self.inner.read().unwrap(), current)
        }
    }

    /// Publishes `value`; readers that load afterwards see it whole.
    pub fn store(&self, value: Arc<T>) {
        #[cfg(not(loom))]
        self.inner.store(value);
        #[cfg(loom)]
        {
            *self.inner.write().unwrap() = value;
        }
    }
}
