//! Time, from one place: the store's stamps and windows, the ingest workers' batch clock and
//! error throttle, the log limiter and the watchdog all read a [`Clock`], injected at start,
//! so a test can step time by hand ([`ManualClock`]) instead of sleeping.

use std::time::Duration;

/// A source of monotonic time, injected so tests can step it.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed start.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Lets something through at most once per interval of a clock's time: what keeps a repeated
/// warning (a series limit reached, a failing receive) to one log line per interval.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    every: Duration,
    last: Option<Duration>,
}

impl Throttle {
    /// At most once per `every`; the first call always passes.
    pub const fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// True (and the interval restarts) if the last pass was `every` or longer before `now`,
    /// a reading of the clock the throttle is used with.
    pub fn pass(&mut self, now: Duration) -> bool {
        if self
            .last
            .is_some_and(|t| now.saturating_sub(t) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_passes_once_per_interval_of_the_clock() {
        let clock = ManualClock::default();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert!(t.pass(clock.now()));
        clock.advance(Duration::from_secs(9));
        assert!(!t.pass(clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(t.pass(clock.now()));
        assert!(!t.pass(clock.now()));
    }
}
