//! The Prometheus text exposition (format 0.0.4): rendering the store and tallyd's own
//! metrics, and the hyper service that serves it with the health, readiness and lifecycle
//! endpoints ([`http`]).
//!
//! Rendering cannot fail whatever the series hold: names and label names were sanitised when
//! the series was created, label values are escaped here, and every value is a finite or
//! infinite f64 printed in a form Prometheus parses. A scrape therefore always answers 200.

pub mod http;

use std::fmt::Write as _;

use crate::store::{FamilyKind, Store, Values, Visitor};
use crate::telemetry::Telemetry;

/// Formats an f64 the way Prometheus parses it: integers without a fraction, others in the
/// shortest form that round-trips, exponent notation for very large or small magnitudes.
pub fn fmt_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else if v.abs() >= 1e15 || v.abs() < 1e-4 {
        let _ = write!(out, "{v:e}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Renders families into a text buffer.
pub struct TextVisitor<'a> {
    out: &'a mut String,
    family: String,
    kind: Option<FamilyKind>,
}

impl<'a> TextVisitor<'a> {
    /// A visitor appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        Self {
            out,
            family: String::new(),
            kind: None,
        }
    }

    fn sample(&mut self, suffix: &str, labels: &str, extra: Option<(&str, &str)>, v: f64) {
        let out = &mut *self.out;
        out.push_str(&self.family);
        out.push_str(suffix);
        if !labels.is_empty() || extra.is_some() {
            out.push('{');
            out.push_str(labels);
            if let Some((k, val)) = extra {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                out.push_str(val);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        fmt_value(out, v);
        out.push('\n');
    }
}

impl Visitor for TextVisitor<'_> {
    fn family(&mut self, name: &str, kind: FamilyKind, help: Option<&str>) {
        self.family.clear();
        self.family.push_str(name);
        self.kind = Some(kind);
        let ty = match kind {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge | FamilyKind::Set => "gauge",
            FamilyKind::Histogram => "histogram",
            FamilyKind::Summary => "summary",
        };
        let out = &mut *self.out;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        match help {
            Some(h) => {
                for c in h.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
            }
            None if kind == FamilyKind::Set => {
                out.push_str("Distinct members of StatsD set (estimate), aggregated by tallyd.")
            }
            None => out.push_str("StatsD metric aggregated by tallyd."),
        }
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(ty);
        out.push('\n');
    }

    fn resume(&mut self, name: &str, kind: FamilyKind) {
        self.family.clear();
        self.family.push_str(name);
        self.kind = Some(kind);
    }

    fn series(&mut self, labels: &str, values: Values<'_>) {
        match values {
            Values::Counter(v) | Values::Gauge(v) => self.sample("", labels, None, v),
            Values::Histogram {
                bounds,
                buckets,
                count,
                sum,
            } => {
                let mut cum = 0.0;
                let mut le = String::new();
                for (b, w) in bounds.iter().zip(buckets) {
                    cum += w;
                    le.clear();
                    fmt_value(&mut le, *b);
                    self.sample("_bucket", labels, Some(("le", &le)), cum);
                }
                self.sample("_bucket", labels, Some(("le", "+Inf")), count);
                self.sample("_sum", labels, None, sum);
                self.sample("_count", labels, None, count);
            }
            Values::Summary {
                quantiles,
                values,
                count,
                sum,
            } => {
                let mut q = String::new();
                for (quantile, v) in quantiles.iter().zip(values) {
                    q.clear();
                    fmt_value(&mut q, *quantile);
                    self.sample("", labels, Some(("quantile", &q)), *v);
                }
                self.sample("_sum", labels, None, sum);
                self.sample("_count", labels, None, count);
            }
        }
    }
}

/// Series rendered per registry lock hold and per streamed chunk.
pub const CHUNK_SERIES: usize = 2048;

/// Renders the exposition in chunks: the StatsD families, then tallyd's own metrics. `sink`
/// gets each chunk (a few hundred KiB at most) and returns false to stop (client gone). Memory
/// stays bounded by one chunk whatever the number of series.
pub fn render_chunks(
    store: &Store,
    telemetry: &Telemetry,
    set_window: std::time::Duration,
    mut sink: impl FnMut(&str) -> bool,
) {
    let mut out = String::with_capacity(256 * 1024);
    let mut cursor = crate::store::Cursor::default();
    loop {
        out.clear();
        let done = store.visit_some(
            set_window,
            &mut cursor,
            CHUNK_SERIES,
            &mut TextVisitor::new(&mut out),
        );
        if !out.is_empty() && !sink(&out) {
            return;
        }
        if done {
            break;
        }
    }
    telemetry.series.set(store.series_count() as i64);
    Telemetry::catch_up(&telemetry.expired, store.expired_total());
    let families = telemetry.registry.gather();
    let mut buf = Vec::new();
    if prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf).is_ok() {
        sink(&String::from_utf8_lossy(&buf));
    }
}

/// Renders the whole exposition into one string (tests, benches).
pub fn render(store: &Store, telemetry: &Telemetry, set_window: std::time::Duration) -> String {
    let mut out = String::new();
    render_chunks(store, telemetry, set_window, |c| {
        out.push_str(c);
        true
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        for (v, want) in [
            (2.0, "2"),
            (-10.0, "-10"),
            (0.32, "0.32"),
            (1e308, "1e308"),
            (1e-300, "1e-300"),
            (f64::INFINITY, "+Inf"),
            (2.5, "2.5"),
            (1e6, "1000000"),
        ] {
            let mut s = String::new();
            fmt_value(&mut s, v);
            assert_eq!(s, want);
        }
    }
}
