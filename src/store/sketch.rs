//! The summary sketch: a DDSketch-style log-bucketed histogram in a shard's words, so summaries
//! merge across workers exactly like everything else (per-bucket weights add up).
//!
//! Relative accuracy: a positive value `v` falls in bucket `i = ceil(ln v / ln γ)` with
//! `γ = (1 + α) / (1 - α)`, `α = 2%`; a quantile is reported as the bucket's representative
//! `2γ^i / (γ + 1)`, within 2% of a true value of that rank. Values `<= 1e-9` (zero and
//! negatives) count in a zero bucket and are reported as 0.
//!
//! Memory is bounded: each half-window keeps [`BUCKETS`] contiguous buckets from a moving base.
//! When a value lands above the range the base moves up and the lowest buckets collapse into
//! the first one (DDSketch's "collapse lowest"): high quantiles, the ones latency alerts use,
//! keep their 2% bound; only quantiles in the collapsed low tail lose it. 256 buckets span a
//! factor of about 28,000 (4.4 decades) before anything collapses.
//!
//! The window slides in halves like sets: observations land in the half of the current
//! half-window index, a half is cleared when reused, and a scrape merges the current and the
//! previous half, so quantiles cover between half of `window` and all of it. `_sum` and
//! `_count` are cumulative, as Prometheus expects of summaries.

use std::collections::BTreeMap;

use super::arena::Shard;
use crate::sync::{Arc, Ordering};

/// Relative accuracy.
pub const ALPHA: f64 = 0.02;
/// Buckets per half-window.
pub const BUCKETS: u32 = 256;
/// Words of a summary series per shard.
pub const WORDS: u32 = 10 + 2 * BUCKETS;
const MIN_POSITIVE: f64 = 1e-9;
/// Base words store `index + BASE_BIAS` so 0 can mean "unset".
const BASE_BIAS: i64 = 1 << 40;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

fn index(v: f64) -> i64 {
    (v.ln() / gamma().ln()).ceil() as i64
}

fn representative(i: i64) -> f64 {
    let g = gamma();
    2.0 * g.powi(i as i32) / (g + 1.0)
}

/// Adds observation `v` with weight `w` to the summary at `o` in `shard` (the writer's own),
/// in half-window `half`. The caller holds the series' seqlock.
pub(crate) fn observe(shard: &Shard, o: u32, half: u64, v: f64, w: f64) {
    shard.add_f64(o + 2, w);
    shard.add_f64(o + 3, v * w);
    let slot = (half % 2) as u32;
    let buckets = o + 10 + slot * BUCKETS;
    if shard.word(o + 4 + slot).load(Ordering::Relaxed) != half {
        for i in 0..BUCKETS {
            shard.word(buckets + i).store(0, Ordering::Relaxed);
        }
        shard.word(o + 6 + slot).store(0, Ordering::Relaxed);
        shard.word(o + 8 + slot).store(0, Ordering::Relaxed);
        shard.word(o + 4 + slot).store(half, Ordering::Relaxed);
    }
    if v.is_nan() || v <= MIN_POSITIVE {
        shard.add_f64(o + 8 + slot, w);
        return;
    }
    let i = index(v);
    let base_word = shard.word(o + 6 + slot);
    let mut base = match base_word.load(Ordering::Relaxed) {
        0 => {
            let b = i - i64::from(BUCKETS) / 2;
            base_word.store((b + BASE_BIAS) as u64, Ordering::Relaxed);
            b
        }
        b => b as i64 - BASE_BIAS,
    };
    if i >= base + i64::from(BUCKETS) {
        // Move the range up; the buckets that fall off the bottom collapse into the first.
        let shift = (i - (base + i64::from(BUCKETS) - 1)).min(i64::from(BUCKETS)) as u32;
        let mut low = 0.0;
        for k in 0..=shift.min(BUCKETS - 1) {
            low += f64::from_bits(shard.word(buckets + k).load(Ordering::Relaxed));
        }
        for k in 0..BUCKETS {
            let src = k + shift;
            let val = if k == 0 {
                low
            } else if src < BUCKETS {
                f64::from_bits(shard.word(buckets + src).load(Ordering::Relaxed))
            } else {
                0.0
            };
            shard
                .word(buckets + k)
                .store(val.to_bits(), Ordering::Relaxed);
        }
        base = i - i64::from(BUCKETS) + 1;
        base_word.store((base + BASE_BIAS) as u64, Ordering::Relaxed);
    }
    let at = (i.max(base) - base) as u32;
    shard.add_f64(buckets + at, w);
}

/// A scrape's merged view of one summary.
pub(crate) struct Merged {
    /// Cumulative total weight.
    pub count: f64,
    /// Cumulative weighted sum.
    pub sum: f64,
    /// Quantile values, in the order asked.
    pub quantiles: Vec<f64>,
}

/// Merges the summary at `o` across `shards` for the window ending in half `half`.
pub(crate) fn merge(
    shards: &[Arc<Shard>],
    o: u32,
    half: u64,
    quantiles: &[f64],
    words: &mut Vec<u64>,
) -> Merged {
    words.resize(WORDS as usize - 1, 0);
    let (mut count, mut sum, mut zero) = (0.0, 0.0, 0.0);
    let mut hist: BTreeMap<i64, f64> = BTreeMap::new();
    for s in shards {
        s.read_consistent(o, words);
        // words[k] is word o + 1 + k.
        count += f64::from_bits(words[1]);
        sum += f64::from_bits(words[2]);
        for slot in 0..2usize {
            let idx = words[3 + slot];
            if idx == 0 || (idx != half && idx + 1 != half) {
                continue;
            }
            zero += f64::from_bits(words[7 + slot]);
            let base = words[5 + slot] as i64 - BASE_BIAS;
            let start = 9 + slot * BUCKETS as usize;
            for (k, w) in words[start..start + BUCKETS as usize].iter().enumerate() {
                let w = f64::from_bits(*w);
                if w > 0.0 {
                    *hist.entry(base + k as i64).or_default() += w;
                }
            }
        }
    }
    let total = zero + hist.values().sum::<f64>();
    let quantiles = quantiles
        .iter()
        .map(|q| {
            if total <= 0.0 {
                return f64::NAN;
            }
            let rank = q * total;
            if rank <= zero {
                return 0.0;
            }
            let mut acc = zero;
            for (i, w) in &hist {
                acc += w;
                if acc >= rank {
                    return representative(*i);
                }
            }
            hist.keys().next_back().map_or(0.0, |i| representative(*i))
        })
        .collect();
    Merged {
        count,
        sum,
        quantiles,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_relative_error() {
        let shard = Arc::new(Shard::new(0));
        let seq = shard.write_begin(0);
        for v in 1..=1000 {
            observe(&shard, 0, 1, f64::from(v) / 1000.0, 1.0);
        }
        shard.write_end(0, seq);
        let m = merge(&[shard], 0, 1, &[0.5, 0.9, 0.99], &mut Vec::new());
        assert_eq!(
            (m.count, (m.sum * 1000.0).round() / 1000.0),
            (1000.0, 500.5)
        );
        for (q, want) in [(0.5, 0.5), (0.9, 0.9), (0.99, 0.99)]
            .iter()
            .zip(&m.quantiles)
        {
            let (q, exact) = q;
            assert!(
                (want - exact).abs() / exact <= ALPHA + 1e-9,
                "q{q}: {want} vs {exact}"
            );
        }
    }

    #[test]
    fn range_moves_up_and_collapses_the_low_tail() {
        let shard = Arc::new(Shard::new(0));
        for v in [1e-6, 1.0, 1e6, 1e12] {
            observe(&shard, 0, 1, v, 1.0);
        }
        let m = merge(&[shard], 0, 1, &[0.99], &mut Vec::new());
        assert_eq!(m.count, 4.0);
        assert!(
            (m.quantiles[0] - 1e12).abs() / 1e12 <= ALPHA,
            "{:?}",
            m.quantiles
        );
    }
}
