//! A writer's counters: plain integers on the hot path, flushed into tallyd's self-metrics by
//! the ingest loop after every batch ([`crate::telemetry::Telemetry::flush`]).

use std::collections::HashMap;

use crate::parse::tags::{TagError, TagErrors};
use crate::parse::{MetricType, ParseError};
use crate::store::Refusal;

/// Per-writer counters, plain integers on the hot path; the ingest loop flushes them into
/// tallyd's self-metrics after every batch (one atomic add per non-zero counter).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Lines seen (including bad ones).
    pub lines: u64,
    /// By [`ParseError::index`].
    pub parse_errors: [u64; 12],
    /// By [`TagError`] index.
    pub tag_errors: [u64; TagError::ALL.len()],
    /// Aggregated samples by [`MetricType`] (counter, gauge, timer, histogram, distribution, set).
    pub samples: [u64; 6],
    /// By index of [`Refusal::DROPPED`].
    pub dropped: [u64; 4],
    /// By index of [`Refusal::REFUSED`].
    pub refused: [u64; 2],
    /// Samples no mapping rule matched (counted when the series is resolved).
    pub unmapped: u64,
    /// Series lookups answered by the writer's cache.
    pub cache_hits: u64,
    /// Series lookups that went to the registry.
    pub cache_misses: u64,
    /// DogStatsD events.
    pub events: u64,
    /// DogStatsD service checks.
    pub service_checks: u64,
    /// Fields after the type that tallyd does not know (ignored).
    pub unknown_fields: u64,
    /// Sample rates outside (0, 1] that were ignored (the values count at rate 1).
    pub ignored_rates: u64,
    /// Drops by mapping rule index.
    pub rule_drops: HashMap<usize, u64>,
}

impl Stats {
    /// The index of a sample type in [`Stats::samples`].
    #[inline(always)]
    pub(crate) fn sample_kind_index(t: MetricType) -> usize {
        t as usize
    }

    pub(crate) fn tag_errors(&mut self, t: TagErrors) {
        if !t.is_empty() {
            for (acc, n) in self.tag_errors.iter_mut().zip(t.0) {
                *acc += u64::from(n);
            }
        }
    }

    pub(crate) fn refusal(&mut self, reason: Refusal, rule: usize) {
        if reason == Refusal::EmptyName {
            self.parse_errors[ParseError::EmptyName.index()] += 1;
        } else if let Some(i) = Refusal::DROPPED.iter().position(|r| *r == reason) {
            self.dropped[i] += 1;
            if reason == Refusal::MappingDrop {
                *self.rule_drops.entry(rule).or_default() += 1;
            }
        } else if let Some(i) = Refusal::REFUSED.iter().position(|r| *r == reason) {
            self.refused[i] += 1;
        }
    }
}
