//! The series that left the exposition: marked idle by a sweep (their `ttl` passed), recorded
//! in a bounded journal only while someone asked for it ([`Store::want_departures`]: a remote
//! write endpoint, which sends a staleness marker for each so the receiver ends the series at
//! once instead of five minutes later).
//!
//! The journal is written by the sweep under the registry lock, read by the senders after each
//! push; neither is on the ingest hot path.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Store;
use super::catalog::{Catalog, State};
use crate::naming::FamilyKind;
use crate::sync::{AtomicU64, Mutex, Ordering, lock};

/// Departures kept; a reader further behind misses the oldest (it is told how many).
pub const DEPARTURES_MAX: usize = 100_000;

/// A series that left the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Departure {
    /// Its family's name.
    pub family: Box<str>,
    /// The family's kind (which sample names the series wrote).
    pub kind: FamilyKind,
    /// Its rendered labels (`k="v",...`).
    pub labels: Box<str>,
    /// A histogram's finite bounds, or a summary's quantiles.
    pub bounds: Arc<[f64]>,
}

#[derive(Default)]
pub(super) struct Departures {
    /// 1 once someone wants departures.
    wanted: AtomicU64,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// The sequence number of `entries[0]`.
    first: u64,
    entries: VecDeque<Departure>,
}

impl Departures {
    /// Records series `id` (called by the sweep as it marks the series idle).
    pub(super) fn record(&self, cat: &Catalog, id: u32) {
        if self.wanted.load(Ordering::Relaxed) == 0 {
            return;
        }
        let fam = cat.family(cat.family_of(id));
        let d = Departure {
            family: Box::from(cat.family_name(id)),
            kind: fam.kind,
            labels: Box::from(cat.labels(id)),
            bounds: Arc::from(fam.buckets()),
        };
        let mut log = lock(&self.log);
        if log.entries.len() == DEPARTURES_MAX {
            log.entries.pop_front();
            log.first += 1;
        }
        log.entries.push_back(d);
    }
}

impl Store {
    /// Starts the departure journal; returns the sequence number a new reader starts from.
    pub fn want_departures(&self) -> u64 {
        self.departures.wanted.store(1, Ordering::Relaxed);
        let log = lock(&self.departures.log);
        log.first + log.entries.len() as u64
    }

    /// The departures from sequence number `from` on, the number to read from next time, and
    /// how many a reader that far behind missed.
    pub fn departures_since(&self, from: u64) -> (Vec<Departure>, u64, u64) {
        let log = lock(&self.departures.log);
        let end = log.first + log.entries.len() as u64;
        let missed = log.first.saturating_sub(from);
        let start = from.max(log.first);
        let skip = (start - log.first) as usize;
        (
            log.entries.iter().skip(skip).cloned().collect(),
            end,
            missed,
        )
    }
}

impl Store {
    /// True if the series `labels` of family `family` is exported now (it came back after it
    /// departed, or never left).
    pub fn exports(&self, family: &str, labels: &str) -> bool {
        let key = format!("{family}\0{labels}");
        let reg = lock(&self.registry);
        let hash = reg.cat.key_hash(&key);
        reg.cat
            .find(hash, &key)
            .is_some_and(|id| reg.cat.series(id).state() == State::Live)
    }
}
