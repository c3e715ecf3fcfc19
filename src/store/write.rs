//! How one observation lands in a shard's words, per [`Layout`]: the last step of the hot
//! path. Called only by the shard's own writer ([`crate::pipeline::Writer`]), so every store
//! here is single-writer; multi-word updates are bracketed by the series' seqlock
//! ([`Shard::write_begin`], [`Shard::write_end`]) so a scrape never reads them torn.

use std::hash::BuildHasher as _;
use std::time::Duration;

use super::arena::Shard;
use super::{HLL_P, HLL_WORDS, Layout, half_window_index, native, sketch};
use crate::parse::{MetricType, Sample};
use crate::sync::Ordering;

/// What a writer reads from the clock once per batch.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Last-seen stamp (seconds since start, plus one).
    pub stamp: u64,
    /// Gauge set time (nanoseconds since start, plus one).
    pub time_nanos: u64,
    /// The sets' current half-window index.
    pub set_half: u64,
}

impl Batch {
    /// The batch that starts at `now` (the store's clock), with sets windowed by `set_window`.
    pub fn at(now: Duration, set_window: Duration) -> Self {
        Self {
            stamp: now.as_secs() + 1,
            time_nanos: now.as_nanos() as u64 + 1,
            set_half: half_window_index(now, set_window),
        }
    }
}

/// What aggregating a sample reads of it: a [`Sample`] without its name and tags, small enough
/// to build per line on the line-key path.
#[derive(Debug, Clone, Copy)]
pub struct Obs<'a> {
    /// The sample's type.
    pub kind: MetricType,
    /// Its value (a set's is unused).
    pub value: f64,
    /// Its sample rate: a counter adds `value / rate`, an observation weighs `1 / rate`.
    pub rate: f64,
    /// A gauge delta (`+n`/`-n`) rather than a set.
    pub delta: bool,
    /// A set's member.
    pub member: &'a str,
}

impl<'a> From<&Sample<'a>> for Obs<'a> {
    fn from(s: &Sample<'a>) -> Self {
        Self {
            kind: s.kind,
            value: s.value,
            rate: s.rate,
            delta: s.delta,
            member: s.member,
        }
    }
}

/// Adds a sample to a shard: the hot path.
#[inline]
pub fn apply(
    shard: &Shard,
    batch: &Batch,
    s: Obs<'_>,
    o: u32,
    layout: Layout,
    scale: f64,
    bounds: Option<&[f64]>,
) {
    match layout {
        Layout::Counter => {
            // Exact either way (x * 1 / 1 == x); the common case skips the division's latency.
            let v = if scale == 1.0 && s.rate == 1.0 {
                s.value
            } else {
                s.value * scale / s.rate
            };
            // The stamp (the counter's second word) goes with the add.
            shard.add_counter(o, v, batch.stamp);
            return;
        }
        Layout::Gauge => {
            let seq = shard.write_begin(o);
            if s.delta {
                shard.add_f64(o + 2, s.value * scale);
            } else {
                shard.word(o + 1).store(batch.time_nanos, Ordering::Relaxed);
                shard
                    .word(o + 2)
                    .store((s.value * scale).to_bits(), Ordering::Relaxed);
            }
            shard.write_end(o, seq);
        }
        Layout::Histogram(n) | Layout::Native(n, ..) => {
            let v = s.value * scale;
            let w = 1.0 / s.rate;
            // A native layout's bounds end with its zero threshold.
            let all = bounds.unwrap_or(&[]);
            let (classic, zero) = all.split_at(usize::from(n).min(all.len()));
            let b = classic.partition_point(|&ub| ub < v);
            let seq = shard.write_begin(o);
            shard.add_f64(o + 1, w);
            shard.add_f64(o + 2, v * w);
            if b < n as usize {
                shard.add_f64(o + 3 + b as u32, w);
            }
            if let Layout::Native(_, schema, window) = layout {
                let zero = zero
                    .first()
                    .copied()
                    .unwrap_or(native::DEFAULT_ZERO_THRESHOLD);
                native::observe(shard, o + 4 + u32::from(n), schema, window, zero, v, w);
            }
            shard.write_end(o, seq);
        }
        Layout::Summary(half_ms) => {
            let half = batch.time_nanos / (u64::from(half_ms.max(1)) * 1_000_000) + 1;
            let seq = shard.write_begin(o);
            sketch::observe(shard, o, half, s.value * scale, 1.0 / s.rate);
            shard.write_end(o, seq);
        }
        Layout::Set => {
            let h = SET_HASHER.hash_one(s.member.as_bytes());
            let reg = (h >> (64 - HLL_P)) as u32;
            // Rank of the first set bit after the register bits, capped at 64 - P + 1.
            let rank = ((h << HLL_P) | (1 << (HLL_P - 1))).leading_zeros() as u8 + 1;
            let slot = (batch.set_half % 2) as u32;
            let seq = shard.write_begin(o);
            if shard.word(o + 1 + slot).load(Ordering::Relaxed) != batch.set_half {
                let base = o + 4 + slot * HLL_WORDS;
                for i in 0..HLL_WORDS {
                    shard.word(base + i).store(0, Ordering::Relaxed);
                }
                shard
                    .word(o + 1 + slot)
                    .store(batch.set_half, Ordering::Relaxed);
            }
            let w = shard.word(o + 4 + slot * HLL_WORDS + reg / 8);
            let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
            let byte = &mut bytes[(reg % 8) as usize];
            if rank > *byte {
                *byte = rank;
                w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
            shard.write_end(o, seq);
        }
    }
    shard
        .word(o + layout.stamp())
        .store(batch.stamp, Ordering::Relaxed);
}

/// Set members hash the same in every worker, so their registers merge.
static SET_HASHER: foldhash::quality::FixedState =
    foldhash::quality::FixedState::with_seed(0x7a11_d5e7_5e75_0f00);
