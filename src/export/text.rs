//! The Prometheus text exposition, format 0.0.4: `# HELP`, `# TYPE` and one line per sample.

use std::fmt::Write as _;

use crate::naming::FamilyKind;
use crate::store::read::{Values, Visitor};

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

/// Renders families into a text buffer, chunk after chunk of one walk.
///
/// The exposition's state across chunks is its own: the family whose header it wrote last
/// (name and type). A family the walk announces again at the start of a chunk gets no second
/// header; one announced under the same name with another type (expired and re-created with
/// it between two chunks) is skipped, since one exposition may not describe a name twice.
pub struct TextVisitor<'a> {
    out: &'a mut String,
    state: &'a mut TextState,
}

/// What a text exposition remembers between the chunks of one walk ([`TextVisitor`]).
#[derive(Debug, Default)]
pub struct TextState {
    family: String,
    kind: Option<FamilyKind>,
}

impl<'a> TextVisitor<'a> {
    /// A visitor appending to `out`, continuing the walk that `state` has followed so far.
    pub fn new(out: &'a mut String, state: &'a mut TextState) -> Self {
        Self { out, state }
    }

    fn sample(&mut self, suffix: &str, labels: &str, extra: Option<(&str, &str)>, v: f64) {
        let out = &mut *self.out;
        out.push_str(&self.state.family);
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
    fn family(&mut self, name: &str, kind: FamilyKind, help: Option<&str>) -> bool {
        if self.state.kind.is_some() && self.state.family == name {
            // Continued from the last chunk: its header is out (and says which type).
            return self.state.kind == Some(kind);
        }
        self.state.family.clear();
        self.state.family.push_str(name);
        self.state.kind = Some(kind);
        let ty = kind.type_name();
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
        true
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
