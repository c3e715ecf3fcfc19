//! A push's body: the store's series (and tallyd's own metrics) as remote write time series,
//! one sample each at the push's timestamp, cut into requests of at most
//! `max_samples_per_request` samples, each protobuf-encoded (prost) and snappy-compressed
//! (snap, block format) as the protocol requires.
//!
//! A series becomes the sample names a scrape shows: a counter or gauge its name; a histogram
//! `_bucket` per bound (cumulative, `le` written as the text format writes it, `+Inf` last),
//! `_sum` and `_count`; a summary one series per quantile, `_sum` and `_count`. Labels are
//! sorted by name; an external label is added where the series has no label of its name.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;

use super::proto::{Label, STALE_NAN, Sample, TimeSeries, WriteRequest};
use crate::export::fmt_value;
use crate::naming::{FamilyKind, unescape};
use crate::store::Store;
use crate::store::census::label_pairs;
use crate::store::departed::Departure;
use crate::store::read::{Cursor, Values, Visitor};

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// The snappy-compressed protobuf `WriteRequest`.
    pub body: Bytes,
    /// Samples in it.
    pub samples: u64,
}

/// Builds a push's requests.
pub struct Batcher<'a> {
    at_ms: i64,
    external: &'a [(String, String)],
    max: usize,
    series: Vec<TimeSeries>,
    samples: usize,
    /// The finished requests.
    pub out: Vec<Request>,
    family: String,
    kind: FamilyKind,
}

impl<'a> Batcher<'a> {
    /// A push at `at_ms` (milliseconds since the epoch) with `external` labels, cut at `max`
    /// samples per request.
    pub fn new(at_ms: i64, external: &'a [(String, String)], max: usize) -> Self {
        Self {
            at_ms,
            external,
            max: max.max(1),
            series: Vec::new(),
            samples: 0,
            out: Vec::new(),
            family: String::new(),
            kind: FamilyKind::Gauge,
        }
    }

    /// The store's live series, walked in chunks as a scrape walks them.
    pub fn store(&mut self, store: &Store, set_window: Duration) {
        let mut cursor = Cursor::default();
        while !store.visit_some(set_window, &mut cursor, crate::export::CHUNK_SERIES, self) {}
    }

    /// A staleness marker for every sample name of each departed series.
    pub fn stale(&mut self, gone: &[Departure]) {
        let stale = f64::from_bits(STALE_NAN);
        for d in gone {
            self.family.clear();
            self.family.push_str(&d.family);
            self.kind = d.kind;
            let base = self.base(&d.labels);
            match d.kind {
                FamilyKind::Counter | FamilyKind::Gauge | FamilyKind::Set => {
                    self.push("", &base, None, stale);
                }
                FamilyKind::Histogram => {
                    for b in d.bounds.iter().copied().chain([f64::INFINITY]) {
                        self.push("_bucket", &base, Some(("le", b)), stale);
                    }
                    self.push("_sum", &base, None, stale);
                    self.push("_count", &base, None, stale);
                }
                FamilyKind::Summary => {
                    for q in d.bounds.iter().copied() {
                        self.push("", &base, Some(("quantile", q)), stale);
                    }
                    self.push("_sum", &base, None, stale);
                    self.push("_count", &base, None, stale);
                }
            }
        }
    }

    /// tallyd's own metrics (counters, gauges, histograms of its registry).
    pub fn own(&mut self, families: &[prometheus::proto::MetricFamily]) {
        use prometheus::proto::MetricType;
        for f in families {
            self.family.clear();
            self.family.push_str(f.name());
            for m in f.get_metric() {
                let mut base: Vec<Label> = m
                    .get_label()
                    .iter()
                    .map(|l| Label {
                        name: l.name().to_string(),
                        value: l.value().to_string(),
                    })
                    .collect();
                self.add_external(&mut base);
                match f.get_field_type() {
                    MetricType::COUNTER => {
                        self.push("", &base, None, m.get_counter().get_value());
                    }
                    MetricType::GAUGE => self.push("", &base, None, m.get_gauge().get_value()),
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        for b in h.get_bucket() {
                            self.push(
                                "_bucket",
                                &base,
                                Some(("le", b.upper_bound())),
                                b.cumulative_count() as f64,
                            );
                        }
                        let count = h.get_sample_count() as f64;
                        self.push("_bucket", &base, Some(("le", f64::INFINITY)), count);
                        self.push("_sum", &base, None, h.get_sample_sum());
                        self.push("_count", &base, None, count);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends what is left into a last request.
    pub fn finish(mut self) -> Vec<Request> {
        self.flush();
        self.out
    }

    /// The labels of a rendered label set, unescaped, with the external labels it lacks.
    fn base(&self, rendered: &str) -> Vec<Label> {
        let mut v: Vec<Label> = label_pairs(rendered)
            .map(|(n, val)| Label {
                name: n.to_string(),
                value: unescape(val),
            })
            .collect();
        self.add_external(&mut v);
        v
    }

    fn add_external(&self, v: &mut Vec<Label>) {
        for (k, val) in self.external {
            if !v.iter().any(|l| &l.name == k) {
                v.push(Label {
                    name: k.clone(),
                    value: val.clone(),
                });
            }
        }
    }

    /// One sample of `family + suffix` with `base` labels and an optional `le`/`quantile`.
    fn push(&mut self, suffix: &str, base: &[Label], extra: Option<(&str, f64)>, value: f64) {
        let mut labels = Vec::with_capacity(base.len() + 2);
        labels.push(Label {
            name: "__name__".into(),
            value: format!("{}{suffix}", self.family),
        });
        labels.extend_from_slice(base);
        if let Some((name, v)) = extra {
            let mut value = String::new();
            fmt_value(&mut value, v);
            labels.retain(|l| l.name != name);
            labels.push(Label {
                name: name.into(),
                value,
            });
        }
        labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        self.series.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value,
                timestamp: self.at_ms,
            }],
        });
        self.samples += 1;
        if self.samples >= self.max {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.series.is_empty() {
            return;
        }
        let req = WriteRequest {
            timeseries: std::mem::take(&mut self.series),
        };
        let raw = req.encode_to_vec();
        let body = snap::raw::Encoder::new()
            .compress_vec(&raw)
            .expect("snappy compresses any input below 4 GiB");
        self.out.push(Request {
            body: Bytes::from(body),
            samples: self.samples as u64,
        });
        self.samples = 0;
    }
}

impl Visitor for Batcher<'_> {
    fn family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        _help: Option<&str>,
        _: &dyn Fn(&str) -> bool,
    ) -> bool {
        self.family.clear();
        self.family.push_str(name);
        self.kind = kind;
        true
    }

    fn series(&mut self, labels: &str, values: Values<'_>) {
        let base = self.base(labels);
        values.samples(|suffix, extra, v| self.push(suffix, &base, extra, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_cut_at_the_sample_limit_and_decode() {
        let ext = vec![("region".to_string(), "eu".to_string())];
        let mut b = Batcher::new(1_000, &ext, 2);
        b.family("x_total", FamilyKind::Counter, None, &|_| false);
        b.series(r#"a="1""#, Values::Counter(3.0));
        b.series(r#"a="2",region="us""#, Values::Counter(4.0));
        b.series("", Values::Counter(5.0));
        let out = b.finish();
        assert_eq!(out.iter().map(|r| r.samples).collect::<Vec<_>>(), [2, 1]);
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&out[0].body)
            .unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        let names: Vec<Vec<(String, String)>> = req
            .timeseries
            .iter()
            .map(|t| {
                t.labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect()
            })
            .collect();
        let own = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            names,
            [
                own(&[("__name__", "x_total"), ("a", "1"), ("region", "eu")]),
                own(&[("__name__", "x_total"), ("a", "2"), ("region", "us")]),
            ]
        );
        assert_eq!(
            req.timeseries[1].samples,
            [Sample {
                value: 4.0,
                timestamp: 1_000
            }]
        );
    }
}
