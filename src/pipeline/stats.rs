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
    /// The last few refused lines per reason, for the status page.
    pub recent: Recent,
    /// Lines handed to the relay's sender.
    pub relay_lines: u64,
    /// Datagrams handed to the relay's sender.
    pub relay_datagrams: u64,
    /// Lines dropped because the relay's queue was full.
    pub relay_queue_full: u64,
    /// Lines longer than the relay's datagram size, not relayed.
    pub relay_too_long: u64,
}

/// How many reasons a line or sample is refused for, as the status page lists them (see
/// [`reject_reason`]).
pub const REJECT_REASONS: usize =
    ParseError::ALL.len() + Refusal::DROPPED.len() + Refusal::REFUSED.len();

/// Refused lines kept per reason ([`Recent`], and the status page's list).
pub const RECENT_LINES: usize = 5;

/// The reason at `index` (`0..REJECT_REASONS`): its `reason` label, and the self-metric that
/// counts it (`tallyd_parse_errors_total`, `tallyd_samples_dropped_total`,
/// `tallyd_series_refused_total`). Parse errors come first, then [`Refusal::DROPPED`], then
/// [`Refusal::REFUSED`], each in its own order.
pub fn reject_reason(index: usize) -> (&'static str, &'static str) {
    let parse = ParseError::ALL.len();
    let dropped = parse + Refusal::DROPPED.len();
    if index < parse {
        (ParseError::ALL[index].reason(), "tallyd_parse_errors_total")
    } else if index < dropped {
        (
            Refusal::DROPPED[index - parse].reason(),
            "tallyd_samples_dropped_total",
        )
    } else {
        (
            Refusal::REFUSED[index - dropped].reason(),
            "tallyd_series_refused_total",
        )
    }
}

/// A writer's last [`RECENT_LINES`] refused lines per reason, each cut to
/// [`super::REJECT_LOG_BYTES`] (plus one byte, so a cut shows). Only refused lines come here,
/// and the buffers are reused, so a flood of bad lines costs a copy of each, no allocation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recent {
    /// The writer's listener (its `listener` label).
    pub listener: std::sync::Arc<str>,
    rings: Vec<Ring>,
    fresh: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Ring {
    lines: Vec<Vec<u8>>,
    /// Where the next line goes once the ring is full.
    next: usize,
    /// Lines kept since the last drain (at most [`RECENT_LINES`]).
    fresh: usize,
}

impl Recent {
    /// Keeps `line`, refused for the reason at `index` ([`reject_reason`]).
    pub(crate) fn keep(&mut self, index: usize, line: &[u8]) {
        if self.rings.is_empty() {
            self.rings.resize_with(REJECT_REASONS, Ring::default);
        }
        let Some(ring) = self.rings.get_mut(index) else {
            return;
        };
        let line = &line[..line.len().min(super::REJECT_LOG_BYTES + 1)];
        if ring.lines.len() < RECENT_LINES {
            ring.lines.push(line.to_vec());
        } else {
            let slot = &mut ring.lines[ring.next];
            slot.clear();
            slot.extend_from_slice(line);
            ring.next = (ring.next + 1) % RECENT_LINES;
        }
        ring.fresh = (ring.fresh + 1).min(RECENT_LINES);
        self.fresh = true;
    }

    /// True if lines were kept since the last [`Recent::drain`].
    pub fn has_fresh(&self) -> bool {
        self.fresh
    }

    /// Hands every line kept since the last drain to `f(reason index, line)`, oldest first
    /// within a reason.
    pub fn drain(&mut self, mut f: impl FnMut(usize, &[u8])) {
        for (index, ring) in self.rings.iter_mut().enumerate() {
            let n = ring.lines.len();
            // The oldest line is at `next` once the ring is full, at 0 before.
            let oldest = if n < RECENT_LINES { 0 } else { ring.next };
            for k in n - ring.fresh..n {
                f(index, &ring.lines[(oldest + k) % n]);
            }
            ring.fresh = 0;
        }
        self.fresh = false;
    }
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
