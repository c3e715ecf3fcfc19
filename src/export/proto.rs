//! The protobuf exposition: length-delimited `io.prometheus.client.MetricFamily` messages,
//! the Prometheus client model (`metrics.proto` of prometheus/client_model) as prost messages,
//! field numbers as the model's.
//!
//! The walk is streamed: each chunk's part of a family is its own `MetricFamily` message (a
//! family of a million series is several messages of one name, which Prometheus reads as
//! one family). Counts that are not whole (sample rates weigh observations by 1/rate) go in
//! the model's float fields (`sample_count_float`, `cumulative_count_float`); whole ones in
//! the integer fields. A summary's count has no float field in the model: it is rounded.

use prost::Message as _;

use crate::naming::{FamilyKind, unescape};
use crate::store::census::label_pairs;
use crate::store::read::{Values, Visitor};

#[allow(missing_docs)]
mod model {
    //! `io.prometheus.client` messages (only the fields tallyd writes).

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Counter {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Quantile {
        #[prost(double, optional, tag = "1")]
        pub quantile: Option<f64>,
        #[prost(double, optional, tag = "2")]
        pub value: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(uint64, optional, tag = "1")]
        pub sample_count: Option<u64>,
        #[prost(double, optional, tag = "2")]
        pub sample_sum: Option<f64>,
        #[prost(message, repeated, tag = "3")]
        pub quantile: Vec<Quantile>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Untyped {
        #[prost(double, optional, tag = "1")]
        pub value: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bucket {
        #[prost(uint64, optional, tag = "1")]
        pub cumulative_count: Option<u64>,
        #[prost(double, optional, tag = "4")]
        pub cumulative_count_float: Option<f64>,
        #[prost(double, optional, tag = "2")]
        pub upper_bound: Option<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BucketSpan {
        #[prost(sint32, optional, tag = "1")]
        pub offset: Option<i32>,
        #[prost(uint32, optional, tag = "2")]
        pub length: Option<u32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(uint64, optional, tag = "1")]
        pub sample_count: Option<u64>,
        #[prost(double, optional, tag = "4")]
        pub sample_count_float: Option<f64>,
        #[prost(double, optional, tag = "2")]
        pub sample_sum: Option<f64>,
        #[prost(message, repeated, tag = "3")]
        pub bucket: Vec<Bucket>,
        #[prost(sint32, optional, tag = "5")]
        pub schema: Option<i32>,
        #[prost(double, optional, tag = "6")]
        pub zero_threshold: Option<f64>,
        #[prost(uint64, optional, tag = "7")]
        pub zero_count: Option<u64>,
        #[prost(double, optional, tag = "8")]
        pub zero_count_float: Option<f64>,
        #[prost(message, repeated, tag = "9")]
        pub negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "10")]
        pub negative_delta: Vec<i64>,
        #[prost(double, repeated, tag = "11")]
        pub negative_count: Vec<f64>,
        #[prost(message, repeated, tag = "12")]
        pub positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "13")]
        pub positive_delta: Vec<i64>,
        #[prost(double, repeated, tag = "14")]
        pub positive_count: Vec<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(message, optional, tag = "2")]
        pub gauge: Option<Gauge>,
        #[prost(message, optional, tag = "3")]
        pub counter: Option<Counter>,
        #[prost(message, optional, tag = "4")]
        pub summary: Option<Summary>,
        #[prost(message, optional, tag = "5")]
        pub untyped: Option<Untyped>,
        #[prost(message, optional, tag = "7")]
        pub histogram: Option<Histogram>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub enum MetricType {
        Counter = 0,
        Gauge = 1,
        Summary = 2,
        Untyped = 3,
        Histogram = 4,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricFamily {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub help: Option<String>,
        #[prost(enumeration = "MetricType", optional, tag = "3")]
        pub r#type: Option<i32>,
        #[prost(message, repeated, tag = "4")]
        pub metric: Vec<Metric>,
    }
}

pub use model::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
    Quantile, Summary, Untyped,
};

fn whole(v: f64) -> bool {
    v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(63)
}

/// A count in the integer field (`float` false) or the float one.
fn count(v: f64, float: bool) -> (Option<u64>, Option<f64>) {
    if float {
        (None, Some(v))
    } else {
        (Some(v as u64), None)
    }
}

/// Fills `h`'s native fields from a merged native histogram: spans, and counts as deltas
/// (integer histograms) or absolute (`float`).
fn native_fields(h: &mut Histogram, m: &crate::store::native::Merged, zero: f64, float: bool) {
    use crate::store::native::spans;
    h.schema = Some(i32::from(m.schema));
    h.zero_threshold = Some(zero);
    (h.zero_count, h.zero_count_float) = count(m.zero_count, float);
    let side =
        |b: &[(i64, f64)], span: &mut Vec<BucketSpan>, delta: &mut Vec<i64>, abs: &mut Vec<f64>| {
            span.extend(spans(b).into_iter().map(|(o, l)| BucketSpan {
                offset: Some(o),
                length: Some(l),
            }));
            if float {
                abs.extend(b.iter().map(|p| p.1));
            } else {
                let mut prev = 0i64;
                for p in b {
                    let c = p.1 as i64;
                    delta.push(c - prev);
                    prev = c;
                }
            }
        };
    side(
        &m.positive,
        &mut h.positive_span,
        &mut h.positive_delta,
        &mut h.positive_count,
    );
    side(
        &m.negative,
        &mut h.negative_span,
        &mut h.negative_delta,
        &mut h.negative_count,
    );
    if zero == 0.0 && h.positive_span.is_empty() && h.negative_span.is_empty() {
        // Marks the histogram native when nothing else would (as Prometheus clients do).
        h.positive_span.push(BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
}

/// Collects one chunk's families as messages ([`ProtoVisitor::finish`] encodes them).
#[derive(Default)]
pub struct ProtoVisitor {
    families: Vec<MetricFamily>,
}

impl ProtoVisitor {
    /// Appends the chunk's families, length-delimited, to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for f in self.families.drain(..) {
            // Writing into a Vec cannot fail.
            let _ = f.encode_length_delimited(out);
        }
    }
}

impl Visitor for ProtoVisitor {
    fn family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        help: Option<&str>,
        _: &dyn Fn(&str) -> bool,
    ) -> bool {
        let ty = match kind {
            FamilyKind::Counter => MetricType::Counter,
            FamilyKind::Gauge | FamilyKind::Set => MetricType::Gauge,
            FamilyKind::Histogram => MetricType::Histogram,
            FamilyKind::Summary => MetricType::Summary,
        };
        self.families.push(MetricFamily {
            name: Some(name.to_string()),
            help: Some(help.unwrap_or(kind.default_help()).to_string()),
            r#type: Some(ty as i32),
            metric: Vec::new(),
        });
        true
    }

    fn series(&mut self, labels: &str, values: Values<'_>) {
        let Some(f) = self.families.last_mut() else {
            return;
        };
        let mut m = Metric {
            label: label_pairs(labels)
                .map(|(k, v)| LabelPair {
                    name: Some(k.to_string()),
                    value: Some(unescape(v)),
                })
                .collect(),
            ..Default::default()
        };
        match values {
            Values::Counter(v) => m.counter = Some(Counter { value: Some(v) }),
            Values::Gauge(v) => m.gauge = Some(Gauge { value: Some(v) }),
            Values::Histogram {
                bounds,
                buckets,
                count: total,
                sum,
                native,
            } => {
                // One kind of count for the whole histogram: integers when every count is.
                let float = !whole(total)
                    || buckets.iter().any(|b| !whole(*b))
                    || native.is_some_and(|(m, _)| {
                        !whole(m.zero_count)
                            || m.positive.iter().chain(&m.negative).any(|p| !whole(p.1))
                    });
                let mut cum = 0.0;
                let bucket = bounds
                    .iter()
                    .zip(buckets)
                    .map(|(b, w)| {
                        cum += w;
                        let (c, cf) = count(cum, float);
                        Bucket {
                            cumulative_count: c,
                            cumulative_count_float: cf,
                            upper_bound: Some(*b),
                        }
                    })
                    .collect();
                let (c, cf) = count(total, float);
                let mut h = Histogram {
                    sample_count: c,
                    sample_count_float: cf,
                    sample_sum: Some(sum),
                    bucket,
                    ..Default::default()
                };
                if let Some((m, zero)) = native {
                    native_fields(&mut h, m, zero, float);
                }
                m.histogram = Some(h);
            }
            Values::Summary {
                quantiles,
                values,
                count: total,
                sum,
            } => {
                m.summary = Some(Summary {
                    sample_count: Some(total.round().max(0.0) as u64),
                    sample_sum: Some(sum),
                    quantile: quantiles
                        .iter()
                        .zip(values)
                        .map(|(q, v)| Quantile {
                            quantile: Some(*q),
                            value: Some(*v),
                        })
                        .collect(),
                });
            }
        }
        f.metric.push(m);
    }

    fn native(&self) -> bool {
        true
    }
}

/// tallyd's own metrics (the `prometheus` crate's gathered families) in the client model.
pub fn own(families: &[prometheus::proto::MetricFamily], out: &mut Vec<u8>) {
    use prometheus::proto::MetricType as T;
    for f in families {
        let ty = match f.get_field_type() {
            T::COUNTER => MetricType::Counter,
            T::GAUGE => MetricType::Gauge,
            T::SUMMARY => MetricType::Summary,
            T::HISTOGRAM => MetricType::Histogram,
            T::UNTYPED => MetricType::Untyped,
        };
        let metric = f
            .get_metric()
            .iter()
            .map(|m| {
                let mut out = Metric {
                    label: m
                        .get_label()
                        .iter()
                        .map(|l| LabelPair {
                            name: Some(l.name().to_string()),
                            value: Some(l.value().to_string()),
                        })
                        .collect(),
                    ..Default::default()
                };
                match ty {
                    MetricType::Counter => {
                        out.counter = Some(Counter {
                            value: Some(m.get_counter().get_value()),
                        })
                    }
                    MetricType::Gauge => {
                        out.gauge = Some(Gauge {
                            value: Some(m.get_gauge().get_value()),
                        })
                    }
                    MetricType::Untyped => {
                        // The crate keeps untyped values only behind its protobuf-era API.
                        #[allow(deprecated)]
                        let v = m.get_untyped().get_value();
                        out.untyped = Some(Untyped { value: Some(v) })
                    }
                    MetricType::Summary => {
                        let s = m.get_summary();
                        out.summary = Some(Summary {
                            sample_count: Some(s.sample_count()),
                            sample_sum: Some(s.sample_sum()),
                            quantile: s
                                .get_quantile()
                                .iter()
                                .map(|q| Quantile {
                                    quantile: Some(q.quantile()),
                                    value: Some(q.value()),
                                })
                                .collect(),
                        })
                    }
                    MetricType::Histogram => {
                        let h = m.get_histogram();
                        out.histogram = Some(Histogram {
                            sample_count: Some(h.get_sample_count()),
                            sample_sum: Some(h.get_sample_sum()),
                            bucket: h
                                .get_bucket()
                                .iter()
                                .map(|b| Bucket {
                                    cumulative_count: Some(b.cumulative_count()),
                                    cumulative_count_float: None,
                                    upper_bound: Some(b.upper_bound()),
                                })
                                .collect(),
                            ..Default::default()
                        })
                    }
                }
                out
            })
            .collect();
        let mf = MetricFamily {
            name: Some(f.name().to_string()),
            help: Some(f.help().to_string()),
            r#type: Some(ty as i32),
            metric,
        };
        let _ = mf.encode_length_delimited(out);
    }
}
