//! A scrape's read of the store: a chunked walk over the live series in family-name order,
//! each series' words summed (or merged) across the shards into [`Values`].
//!
//! The walk takes the registry lock for one chunk at a time ([`Store::visit_some`]), so a
//! scrape of a million series never blocks series creation for long and can stream its
//! output. The walk knows nothing of exposition formats: a [`Visitor`] is told where each
//! family's series begin in every chunk and decides what to write (headers, suffixes); what
//! an exposition remembers across chunks is its own state.

use std::time::Duration;

use super::arena::Shard;
use super::catalog::{Family, SeriesMeta, State};
use super::{HLL_P, HLL_WORDS, Layout, Store, half_window_index, native, sketch};
use crate::naming::FamilyKind;
use crate::sync::{self, lock};

/// Values of one series as a scrape sees them.
#[derive(Debug, Clone, PartialEq)]
pub enum Values<'a> {
    /// A counter's total.
    Counter(f64),
    /// A gauge's value (also a set's estimate).
    Gauge(f64),
    /// A histogram: per-bucket (not cumulative) weights for the finite bounds, total weight, sum.
    Histogram {
        /// Finite upper bounds.
        bounds: &'a [f64],
        /// Weight per finite bucket (not cumulative).
        buckets: &'a [f64],
        /// Total weight (the `+Inf` bucket and `_count`).
        count: f64,
        /// Sum of weighted values.
        sum: f64,
        /// The native part, if the histogram has one, and its zero threshold.
        native: Option<(&'a native::Merged, f64)>,
    },
    /// A summary: quantile values over its window, cumulative count and sum.
    Summary {
        /// The quantiles asked for.
        quantiles: &'a [f64],
        /// Their values (NaN when the window holds no observation).
        values: &'a [f64],
        /// Total weight.
        count: f64,
        /// Sum of weighted values.
        sum: f64,
    },
}

impl Values<'_> {
    /// The series' samples as the text exposition lists them: the name suffix, the extra label
    /// (`le` with a bound, `quantile` with a quantile) and the value. Cumulative buckets, the
    /// `+Inf` bucket, then `_sum` and `_count`; a summary's quantiles, then the same. Every
    /// exposition of classic samples (text, OpenMetrics, remote write) walks this.
    pub fn samples(&self, mut f: impl FnMut(&'static str, Option<(&'static str, f64)>, f64)) {
        match self {
            Values::Counter(v) | Values::Gauge(v) => f("", None, *v),
            Values::Histogram {
                bounds,
                buckets,
                count,
                sum,
                ..
            } => {
                let mut cum = 0.0;
                for (b, w) in bounds.iter().zip(buckets.iter()) {
                    cum += w;
                    f("_bucket", Some(("le", *b)), cum);
                }
                f("_bucket", Some(("le", f64::INFINITY)), *count);
                f("_sum", None, *sum);
                f("_count", None, *count);
            }
            Values::Summary {
                quantiles,
                values,
                count,
                sum,
            } => {
                for (q, v) in quantiles.iter().zip(values.iter()) {
                    f("", Some(("quantile", *q)), *v);
                }
                f("_sum", None, *sum);
                f("_count", None, *count);
            }
        }
    }
}

/// Receives a scrape's series in family-name order.
pub trait Visitor {
    /// The series that follow, up to the next call, are family `name`'s. Called before the
    /// first series of each family in every chunk of a walk ([`Store::visit_some`]), so a
    /// family split across chunks is announced again at the start of the next one; a family
    /// with no live series is not announced. Returning false skips the family's series in this
    /// chunk (an exposition that already wrote `name` under another type must not mix them).
    /// `exists` tells whether a family of another name exists (live or not), for formats
    /// whose family names are not the sample names (OpenMetrics' counters).
    fn family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        help: Option<&str>,
        exists: &dyn Fn(&str) -> bool,
    ) -> bool;
    /// One series of the current family; `labels` is rendered `k="v",...` without braces.
    fn series(&mut self, labels: &str, values: Values<'_>);
    /// Whether the visitor writes native histograms; when not, a histogram's native part is
    /// not read (a text scrape reads only the classic words).
    fn native(&self) -> bool {
        false
    }
}

impl Store {
    /// Walks every live series in family-name order. `set_window` is the sets' window.
    pub fn visit(&self, set_window: Duration, v: &mut impl Visitor) {
        let mut cursor = Cursor::default();
        while !self.visit_some(set_window, &mut cursor, usize::MAX, v) {}
    }

    /// Walks at most `budget` series from `cursor`, holding the registry lock only for those,
    /// so a scrape of a million series never blocks series creation for long and can stream
    /// its output. Returns true when the walk is complete.
    ///
    /// Between calls series may come and go: a series appended during the walk is rendered if
    /// the walk has not passed it; a removal moves the family's last series into the gap
    /// (`swap_remove`), so a series can be missed by one scrape but never rendered twice.
    pub fn visit_some(
        &self,
        set_window: Duration,
        cursor: &mut Cursor,
        budget: usize,
        v: &mut impl Visitor,
    ) -> bool {
        let shards = self.shards();
        let now = self.clock.now();
        let half = half_window_index(now, set_window);
        let mut reg = lock(&self.registry);
        if cursor.family.is_none() {
            // A walk sees every family created before it began.
            reg.cat.settle();
        }
        let cat = &reg.cat;
        let mut words = Vec::new();
        let mut buckets = Vec::new();
        let mut merged = native::Merged::default();
        let want_native = v.native();
        let mut left = budget;
        for &fid in cat.ordered_from(cursor.family.as_deref()) {
            let (name, fam) = (cat.name(fid), cat.family(fid));
            let resuming = cursor.family.as_deref() == Some(name);
            let mut announced = None;
            let from = if resuming { cursor.next } else { 0 };
            for i in from..fam.len() {
                let Some(id) = fam.member(i) else { break };
                let meta = cat.series(id);
                if meta.state() != State::Live {
                    continue;
                }
                if left == 0 {
                    cursor.family = Some(Box::from(name));
                    cursor.next = i;
                    return false;
                }
                if *announced.get_or_insert_with(|| {
                    v.family(name, fam.kind, fam.help(), &|n| cat.family_id(n).is_some())
                }) {
                    let values = read_series(
                        &shards,
                        meta,
                        fam,
                        now,
                        half,
                        &mut words,
                        &mut buckets,
                        want_native.then_some(&mut merged),
                    );
                    v.series(cat.labels(id), values);
                }
                left -= 1;
            }
        }
        cursor.family = None;
        true
    }
}

/// Where a chunked walk ([`Store::visit_some`]) resumes: a family by name, and the index of
/// its next member.
#[derive(Debug, Default)]
pub struct Cursor {
    family: Option<Box<str>>,
    next: usize,
}

#[allow(clippy::too_many_arguments)]
fn read_series<'a>(
    shards: &[sync::Arc<Shard>],
    meta: &SeriesMeta,
    fam: &'a Family,
    now: Duration,
    half: u64,
    words: &mut Vec<u64>,
    buckets: &'a mut Vec<f64>,
    merged: Option<&'a mut native::Merged>,
) -> Values<'a> {
    let o = meta.offset;
    match meta.layout {
        Layout::Counter => Values::Counter(shards.iter().map(|s| f64::from_bits(s.load(o))).sum()),
        Layout::Gauge => {
            let mut newest: Option<(u64, f64)> = None;
            let mut deltas = 0.0;
            words.resize(2, 0);
            for s in shards {
                s.read_consistent(o, words);
                let (set_time, value) = (words[0], f64::from_bits(words[1]));
                if set_time == 0 {
                    deltas += value;
                } else if newest.is_none_or(|(t, _)| set_time > t) {
                    newest = Some((set_time, value));
                }
            }
            Values::Gauge(newest.map_or(0.0, |(_, v)| v) + deltas)
        }
        Layout::Histogram(n) | Layout::Native(n, ..) => {
            let nu = n as usize;
            let spec = match meta.layout {
                Layout::Native(_, schema, window) => Some((schema, window)),
                _ => None,
            };
            let merged = merged.filter(|_| spec.is_some());
            // After the seq word: count, sum, classic buckets, stamp, then the native part;
            // every shard's copy side by side. Without a native reader, the classic part only.
            let len = match &merged {
                Some(_) => meta.layout.words() as usize - 1,
                None => 2 + nu,
            };
            words.resize(len * shards.len(), 0);
            buckets.clear();
            buckets.resize(nu, 0.0);
            let (mut count, mut sum) = (0.0, 0.0);
            for (s, part) in shards.iter().zip(words.chunks_mut(len)) {
                s.read_consistent(o, part);
                count += f64::from_bits(part[0]);
                sum += f64::from_bits(part[1]);
                for (b, w) in buckets.iter_mut().zip(&part[2..2 + nu]) {
                    *b += f64::from_bits(*w);
                }
            }
            let b = fam.buckets();
            let (bounds, zero) = b.split_at(nu.min(b.len()));
            let zero = zero
                .first()
                .copied()
                .unwrap_or(native::DEFAULT_ZERO_THRESHOLD);
            let native = merged.zip(spec).map(|(m, (schema, window))| {
                let h = 3 + nu;
                native::merge(words.chunks(len).map(|p| &p[h..]), schema, window, m);
                (&*m, zero)
            });
            Values::Histogram {
                bounds,
                buckets,
                count,
                sum,
                native,
            }
        }
        Layout::Summary(_) => {
            let quantiles = fam.buckets();
            let m = sketch::merge(
                shards,
                o,
                half_window_index(now, fam.window()),
                quantiles,
                words,
            );
            buckets.clear();
            buckets.extend(m.quantiles);
            Values::Summary {
                quantiles,
                values: buckets,
                count: m.count,
                sum: m.sum,
            }
        }
        Layout::Set => {
            let mut regs = [0u8; 1 << HLL_P];
            words.resize(3 + 2 * HLL_WORDS as usize, 0);
            for s in shards {
                s.read_consistent(o, words);
                for h in 0..2 {
                    let idx = words[h];
                    if idx == 0 || (idx != half && idx + 1 != half) {
                        continue;
                    }
                    let start = 3 + h * HLL_WORDS as usize;
                    for (w, word) in words[start..start + HLL_WORDS as usize].iter().enumerate() {
                        for (b, byte) in word.to_le_bytes().iter().enumerate() {
                            let r = &mut regs[w * 8 + b];
                            *r = (*r).max(*byte);
                        }
                    }
                }
            }
            Values::Gauge(hll_estimate(&regs))
        }
    }
}

/// The HyperLogLog estimate with linear counting for small cardinalities, rounded.
fn hll_estimate(regs: &[u8]) -> f64 {
    let m = regs.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = regs.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let zeros = regs.iter().filter(|&&r| r == 0).count() as f64;
    let e = alpha * m * m / sum;
    let e = if e <= 2.5 * m && zeros > 0.0 {
        m * (m / zeros).ln()
    } else {
        e
    };
    e.round()
}
