//! Native histograms (Prometheus's sparse exponential histograms) in a shard's words, so they
//! merge across workers exactly like everything else.
//!
//! Buckets follow Prometheus's scheme: at schema `s` the bucket of index `i` holds the values
//! in `(2^((i-1)/2^s), 2^(i/2^s)]` (negative values the same by magnitude), so neighbouring
//! bounds are a factor `2^(2^-s)` apart (schema 3: 1.09). Values whose magnitude is at most the
//! zero threshold count in the zero bucket. Lowering the schema by one merges bucket pairs
//! exactly (index `i` becomes `ceil(i/2)`), which is how shards at different schemas merge
//! at a scrape and how a shard makes room.
//!
//! Memory is bounded: each shard keeps a window of `window` consecutive positive buckets and
//! `window / 8` (at least 8) negative ones, each from a moving base. A value outside its window
//! first moves the window, if the populated buckets and the new one fit; otherwise the schema
//! drops by one (halving the span) until they do. So at most `window` positive buckets are
//! ever populated, which is statsd_exporter's "max buckets" knob, and the resolution only drops
//! when the data spans more than that. Both signs share one schema (Prometheus's model), so
//! negative values spread over more than their smaller window lower the resolution of the
//! positive buckets too; the schema never rises again for the life of the series. At the
//! lowest schema (-4) a value still outside its window is counted in the window's edge bucket
//! (its count and sum stay exact): 8 buckets span a factor of 2^128 there, so it takes values
//! of one sign more than 38 decades apart.
//!
//! Words from the native header `h` (after the classic part): `[schema, zero_count,
//! positive_base, negative_base, positive * window, negative * window/8]`. The schema word is
//! `schema + SCHEMA_BIAS` (0: nothing observed yet), the bases `index + BASE_BIAS` (0: unset).

use std::sync::OnceLock;

use super::arena::Shard;
use crate::sync::Ordering;

/// The lowest schema (a factor of 65536 between bounds).
pub const MIN_SCHEMA: i8 = -4;
/// The highest schema (a factor of 1.0027).
pub const MAX_SCHEMA: i8 = 8;
/// Prometheus clients' default zero threshold, 2^-128.
pub const DEFAULT_ZERO_THRESHOLD: f64 = 2.938735877055719e-39;
/// Words of the native part before the bucket windows.
pub const HEADER: u32 = 4;
const SCHEMA_BIAS: u64 = 16;
const BASE_BIAS: i64 = 1 << 40;

/// The schema whose bucket factor is the largest one not above `factor` (> 1), as Prometheus
/// clients pick it, clamped to [-4, 8].
pub fn schema_for(factor: f64) -> i8 {
    let s = -(factor.log2().log2().floor());
    s.clamp(f64::from(MIN_SCHEMA), f64::from(MAX_SCHEMA)) as i8
}

/// Negative buckets kept per shard for a positive window of `window`.
pub fn negative_window(window: u16) -> u32 {
    (u32::from(window) / 8).max(8)
}

/// Words of the native part of a series with a positive window of `window`.
pub fn words(window: u16) -> u32 {
    HEADER + u32::from(window) + negative_window(window)
}

/// The upper bounds within one power of two at schema `s > 0`: `2^(j/2^s - 1)` for
/// `j < 2^s`, as fractions of a value's binary mantissa in [0.5, 1).
fn fraction_bounds(s: i8) -> &'static [f64] {
    static TABLES: OnceLock<Vec<Vec<f64>>> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        (0..=MAX_SCHEMA)
            .map(|s| {
                let n = 1u32 << s;
                (0..n)
                    .map(|j| (f64::from(j) / f64::from(n) - 1.0).exp2())
                    .collect()
            })
            .collect()
    });
    &t[s as usize]
}

/// The bucket index of magnitude `v` (> 0, normal) at schema `s`.
pub fn index(v: f64, s: i8) -> i64 {
    let bits = v.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i64;
    if raw_exp == 0 || raw_exp == 0x7ff {
        // Subnormal or infinite: outside every practical range; the nearest bucket by log.
        let l = v.log2() * f64::from(s).exp2();
        return l.ceil().clamp(-(1 << 30) as f64, (1 << 30) as f64) as i64;
    }
    // v = frac * 2^exp with frac in [0.5, 1).
    let exp = raw_exp - 1022;
    let frac = f64::from_bits((bits & ((1 << 52) - 1)) | (1022 << 52));
    if s > 0 {
        let bounds = fraction_bounds(s);
        let j = bounds.partition_point(|&b| b < frac) as i64;
        j + (exp - 1) * bounds.len() as i64
    } else {
        let mut key = exp;
        if frac == 0.5 {
            key -= 1;
        }
        let shift = -i64::from(s);
        let offset = (1 << shift) - 1;
        (key + offset) >> shift
    }
}

/// An index at schema `from` lowered to schema `to` (<= `from`): `ceil(i / 2^(from - to))`.
pub fn downscale(i: i64, from: i8, to: i8) -> i64 {
    let d = i64::from(from - to);
    if d == 0 {
        return i;
    }
    ((i - 1) >> d) + 1
}

fn load_f64(shard: &Shard, o: u32) -> f64 {
    f64::from_bits(shard.word(o).load(Ordering::Relaxed))
}

fn store_f64(shard: &Shard, o: u32, v: f64) {
    shard.word(o).store(v.to_bits(), Ordering::Relaxed);
}

/// One window's place in the words.
#[derive(Clone, Copy)]
struct Window {
    base_word: u32,
    first: u32,
    len: u32,
}

impl Window {
    fn base(self, shard: &Shard) -> Option<i64> {
        match shard.word(self.base_word).load(Ordering::Relaxed) {
            0 => None,
            b => Some(b as i64 - BASE_BIAS),
        }
    }

    fn set_base(self, shard: &Shard, b: i64) {
        shard
            .word(self.base_word)
            .store((b + BASE_BIAS) as u64, Ordering::Relaxed);
    }

    /// The populated buckets, as (index, weight).
    fn populated(self, shard: &Shard, out: &mut Vec<(i64, f64)>) {
        out.clear();
        let Some(base) = self.base(shard) else { return };
        for k in 0..self.len {
            let w = load_f64(shard, self.first + k);
            if w != 0.0 {
                out.push((base + i64::from(k), w));
            }
        }
    }

    /// Rewrites the window to hold `buckets` from `base`.
    fn rewrite(self, shard: &Shard, base: i64, buckets: &[(i64, f64)]) {
        for k in 0..self.len {
            store_f64(shard, self.first + k, 0.0);
        }
        self.set_base(shard, base);
        for &(i, w) in buckets {
            let k = (i - base) as u32;
            store_f64(shard, self.first + k, load_f64(shard, self.first + k) + w);
        }
    }
}

fn windows(h: u32, window: u16) -> [Window; 2] {
    let w = u32::from(window);
    [
        Window {
            base_word: h + 2,
            first: h + HEADER,
            len: w,
        },
        Window {
            base_word: h + 3,
            first: h + HEADER + w,
            len: negative_window(window),
        },
    ]
}

/// Adds observation `v` with weight `w` to the native part at `h` in `shard` (the writer's
/// own): `initial` is the family's schema, `zero` its zero threshold. The caller holds the
/// series' seqlock.
pub(crate) fn observe(shard: &Shard, h: u32, initial: i8, window: u16, zero: f64, v: f64, w: f64) {
    let schema_word = shard.word(h);
    let mut schema = match schema_word.load(Ordering::Relaxed) {
        0 => {
            schema_word.store(
                (i64::from(initial) + SCHEMA_BIAS as i64) as u64,
                Ordering::Relaxed,
            );
            initial
        }
        s => (s as i64 - SCHEMA_BIAS as i64) as i8,
    };
    if v.is_nan() {
        return;
    }
    if v.abs() <= zero {
        store_f64(shard, h + 1, load_f64(shard, h + 1) + w);
        return;
    }
    let wins = windows(h, window);
    let win = wins[usize::from(v < 0.0)];
    let mut scratch = Vec::new();
    loop {
        let i = index(v.abs(), schema);
        let Some(base) = win.base(shard) else {
            let base = i - i64::from(win.len / 2);
            win.set_base(shard, base);
            continue;
        };
        if i >= base && i < base + i64::from(win.len) {
            let k = win.first + (i - base) as u32;
            store_f64(shard, k, load_f64(shard, k) + w);
            return;
        }
        win.populated(shard, &mut scratch);
        let lo = scratch.first().map_or(i, |p| p.0.min(i));
        let hi = scratch.last().map_or(i, |p| p.0.max(i));
        let span = hi - lo + 1;
        if span <= i64::from(win.len) {
            // Move the window over the populated buckets and the new one, centred.
            let base = lo - (i64::from(win.len) - span) / 2;
            win.rewrite(shard, base, &scratch);
            continue;
        }
        if schema == MIN_SCHEMA {
            // Values of one sign more than the window's span apart even at the widest
            // buckets (module docs): keep the weight in the nearest bucket rather than lose it.
            let k = win.first + if i < base { 0 } else { win.len - 1 };
            store_f64(shard, k, load_f64(shard, k) + w);
            return;
        }
        // Halve the resolution of both windows and try again.
        for win in wins {
            win.populated(shard, &mut scratch);
            let Some(base) = win.base(shard) else {
                continue;
            };
            for p in &mut scratch {
                p.0 = downscale(p.0, schema, schema - 1);
            }
            win.rewrite(shard, downscale(base, schema, schema - 1), &scratch);
        }
        schema -= 1;
        schema_word.store(
            (i64::from(schema) + SCHEMA_BIAS as i64) as u64,
            Ordering::Relaxed,
        );
    }
}

/// A native histogram merged across shards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// The lowest schema among the shards that observed anything (the family's own when none
    /// did).
    pub schema: i8,
    /// Weight in the zero bucket.
    pub zero_count: f64,
    /// Populated positive buckets, by index, ascending.
    pub positive: Vec<(i64, f64)>,
    /// Populated negative buckets, by index (of the magnitude), ascending.
    pub negative: Vec<(i64, f64)>,
}

/// Merges the native parts read from each shard: `parts` holds each shard's words from the
/// native header on.
pub(crate) fn merge<'w>(
    parts: impl Iterator<Item = &'w [u64]> + Clone,
    initial: i8,
    window: u16,
    out: &mut Merged,
) {
    let schema_of = |p: &[u64]| match p[0] {
        0 => None,
        s => Some((s as i64 - SCHEMA_BIAS as i64) as i8),
    };
    out.schema = parts.clone().filter_map(schema_of).min().unwrap_or(initial);
    out.zero_count = 0.0;
    out.positive.clear();
    out.negative.clear();
    let w = window as usize;
    let wn = negative_window(window) as usize;
    for p in parts {
        let Some(s) = schema_of(p) else { continue };
        out.zero_count += f64::from_bits(p[1]);
        for (side, (base_word, first, len)) in
            [(2, HEADER as usize, w), (3, HEADER as usize + w, wn)]
                .into_iter()
                .enumerate()
        {
            let base = match p[base_word] {
                0 => continue,
                b => b as i64 - BASE_BIAS,
            };
            let dst = if side == 0 {
                &mut out.positive
            } else {
                &mut out.negative
            };
            for k in 0..len {
                let c = f64::from_bits(p[first + k]);
                if c != 0.0 {
                    dst.push((downscale(base + k as i64, s, out.schema), c));
                }
            }
        }
    }
    for v in [&mut out.positive, &mut out.negative] {
        v.sort_by_key(|p| p.0);
        v.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 += b.1;
                true
            } else {
                false
            }
        });
    }
}

/// Buckets as Prometheus spans: each run of consecutive indices is a span `(offset, length)`,
/// the first span's offset its first index, every other's the gap since the previous span.
pub fn spans(buckets: &[(i64, f64)]) -> Vec<(i32, u32)> {
    let mut out: Vec<(i32, u32)> = Vec::new();
    let mut next = 0i64;
    for (n, &(i, _)) in buckets.iter().enumerate() {
        if n > 0 && i == next {
            if let Some(last) = out.last_mut() {
                last.1 += 1;
            }
        } else {
            let offset = if n == 0 { i } else { i - next };
            out.push((offset as i32, 1));
        }
        next = i + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket of `v` at schema `s` has `v` in `(lower, upper]`.
    fn holds(v: f64, s: i8) {
        let i = index(v, s);
        let f = f64::from(s).exp2();
        let upper = (i as f64 / f).exp2();
        let lower = ((i - 1) as f64 / f).exp2();
        assert!(
            v <= upper * (1.0 + 1e-12) && v > lower * (1.0 - 1e-12),
            "{v} at schema {s}: bucket {i} ({lower}, {upper}]"
        );
    }

    #[test]
    fn indexes_as_prometheus_defines_them() {
        for s in MIN_SCHEMA..=MAX_SCHEMA {
            for v in [
                1e-9, 0.001, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 1000.0, 123_456.7, 1e30,
            ] {
                holds(v, s);
            }
        }
        // Powers of two sit on upper bounds: 1 is the top of bucket 0, 2 of bucket 2^s.
        assert_eq!(index(1.0, 3), 0);
        assert_eq!(index(2.0, 3), 8);
        assert_eq!(index(2.0, 0), 1);
        assert_eq!(index(4.0, -1), 1);
        assert_eq!(index(5.0, -1), 2);
        assert_eq!(schema_for(1.1), 3);
        assert_eq!(schema_for(2.0), 0);
        assert_eq!(schema_for(1.0001), 8);
        assert_eq!(schema_for(1e10), -4);
    }

    #[test]
    fn downscaling_merges_pairs() {
        for i in -20i64..20 {
            let j = downscale(i, 3, 2);
            assert_eq!(j, (i as f64 / 2.0).ceil() as i64, "{i}");
            assert_eq!(downscale(i, 3, 0), (i as f64 / 8.0).ceil() as i64, "{i}");
        }
        // A value's bucket at the lower schema is its downscaled bucket.
        for v in [0.01, 0.7, 1.0, 3.3, 250.0] {
            assert_eq!(downscale(index(v, 3), 3, 1), index(v, 1), "{v}");
        }
    }

    /// Two shards, one forced down to a lower schema by a narrow window: the merge equals the
    /// observations bucketed directly at the merged schema, weights (sample rates) included,
    /// and nothing is lost.
    #[test]
    fn shards_at_different_schemas_merge_exactly() {
        let window = 8;
        let len = words(window) as usize;
        let (a, b) = (Shard::new(0), Shard::new(0));
        let obs_a: Vec<(f64, f64)> = (0..40).map(|i| (1.1f64.powi(i), 1.0)).collect();
        let obs_b: Vec<(f64, f64)> = vec![(1.0, 2.0), (1.5, 3.3333), (-2.0, 1.0), (0.0, 4.0)];
        for &(v, w) in &obs_a {
            observe(&a, 0, 3, window, DEFAULT_ZERO_THRESHOLD, v, w);
        }
        for &(v, w) in &obs_b {
            observe(&b, 0, 3, window, DEFAULT_ZERO_THRESHOLD, v, w);
        }
        let read = |s: &Shard| (0..len as u32).map(|i| s.load(i)).collect::<Vec<u64>>();
        let (wa, wb) = (read(&a), read(&b));
        let mut m = Merged::default();
        merge(
            [wa.as_slice(), wb.as_slice()].into_iter(),
            3,
            window,
            &mut m,
        );
        // 40 values over 1.1^39 = 41x cannot stay at schema 3 in 8 buckets.
        assert!(m.schema < 3, "{m:?}");
        let mut want_pos: Vec<(i64, f64)> = Vec::new();
        let mut want_neg: Vec<(i64, f64)> = Vec::new();
        for &(v, w) in obs_a.iter().chain(&obs_b) {
            if v == 0.0 {
                continue;
            }
            let side = if v > 0.0 {
                &mut want_pos
            } else {
                &mut want_neg
            };
            let i = index(v.abs(), m.schema);
            match side.iter_mut().find(|p| p.0 == i) {
                Some(p) => p.1 += w,
                None => side.push((i, w)),
            }
        }
        want_pos.sort_by_key(|p| p.0);
        assert_eq!(m.positive, want_pos);
        assert_eq!(m.negative, want_neg);
        assert_eq!(m.zero_count, 4.0);
        assert!(m.positive.len() <= usize::from(window));
    }

    #[test]
    fn spans_of_runs() {
        let b = |ix: &[i64]| ix.iter().map(|&i| (i, 1.0)).collect::<Vec<_>>();
        assert_eq!(spans(&b(&[-2, -1, 0, 3, 4, 9])), [(-2, 3), (2, 2), (4, 1)]);
        assert_eq!(spans(&[]), []);
    }
}
