//! The text expositions: Prometheus text 0.0.4 (`# HELP`, `# TYPE`, one line per sample) and
//! OpenMetrics text 1.0.0, whose sample lines are the same and whose headers differ: a
//! counter's family is named without `_total` (its samples keep it), `# UNIT` is written
//! where the name ends in a unit, HELP escapes `"` too, and the exposition ends in `# EOF`.
//!
//! A counter whose OpenMetrics family name (without `_total`) is another family's name
//! (gauge `x` beside counter `x_total`) is written as `unknown` under its full name, so that
//! no two families share a name and every sample keeps the name the 0.0.4 text gives it.

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
    openmetrics: bool,
}

impl TextState {
    /// The state of an OpenMetrics exposition.
    pub fn openmetrics() -> Self {
        Self {
            openmetrics: true,
            ..Self::default()
        }
    }
}

/// Prometheus's base units: a family whose name ends in `_<unit>` gets `# UNIT` in
/// OpenMetrics.
const UNITS: [&str; 9] = [
    "seconds", "bytes", "joules", "grams", "meters", "ratio", "volts", "amperes", "celsius",
];

/// The unit `name` ends in, if any.
pub fn unit_of(name: &str) -> Option<&'static str> {
    UNITS.iter().copied().find(|u| {
        name.strip_suffix(u)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('_'))
    })
}

/// Writes a HELP text escaped: `\\` and newlines in both text formats, `"` too in
/// OpenMetrics (`quote`).
fn escape_help(out: &mut String, help: &str, quote: bool) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes OpenMetrics descriptors: `# TYPE`, `# UNIT` when the name has one, `# HELP`.
pub fn openmetrics_header(out: &mut String, family: &str, type_name: &str, help: &str) {
    out.push_str("# TYPE ");
    out.push_str(family);
    out.push(' ');
    out.push_str(type_name);
    out.push('\n');
    if type_name != "unknown"
        && let Some(u) = unit_of(family)
    {
        out.push_str("# UNIT ");
        out.push_str(family);
        out.push(' ');
        out.push_str(u);
        out.push('\n');
    }
    out.push_str("# HELP ");
    out.push_str(family);
    out.push(' ');
    escape_help(out, help, true);
    out.push('\n');
}

impl<'a> TextVisitor<'a> {
    /// A visitor appending to `out`, continuing the walk that `state` has followed so far.
    pub fn new(out: &'a mut String, state: &'a mut TextState) -> Self {
        Self { out, state }
    }

    fn sample(&mut self, suffix: &str, labels: &str, extra: Option<(&str, f64)>, v: f64) {
        let out = &mut *self.out;
        out.push_str(&self.state.family);
        out.push_str(suffix);
        if !labels.is_empty() || extra.is_some() {
            out.push('{');
            out.push_str(labels);
            if let Some((k, x)) = extra {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                fmt_value(out, x);
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
    fn family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        help: Option<&str>,
        exists: &dyn Fn(&str) -> bool,
    ) -> bool {
        if self.state.kind.is_some() && self.state.family == name {
            // Continued from the last chunk: its header is out (and says which type).
            return self.state.kind == Some(kind);
        }
        self.state.family.clear();
        self.state.family.push_str(name);
        self.state.kind = Some(kind);
        let help = help.unwrap_or(kind.default_help());
        let out = &mut *self.out;
        if self.state.openmetrics {
            match (kind, name.strip_suffix("_total")) {
                (FamilyKind::Counter, Some(base)) if !exists(base) => {
                    openmetrics_header(out, base, "counter", help)
                }
                (FamilyKind::Counter, _) => openmetrics_header(out, name, "unknown", help),
                _ => openmetrics_header(out, name, kind.type_name(), help),
            }
            return true;
        }
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_help(out, help, false);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind.type_name());
        out.push('\n');
        true
    }

    fn series(&mut self, labels: &str, values: Values<'_>) {
        values.samples(|suffix, extra, v| self.sample(suffix, labels, extra, v));
    }
}

/// tallyd's own metrics (the `prometheus` crate's gathered families) in OpenMetrics, then
/// `# EOF`.
pub fn own_openmetrics(families: &[prometheus::proto::MetricFamily], out: &mut String) {
    use prometheus::proto::MetricType as T;
    let sample = |out: &mut String,
                  name: &str,
                  labels: &[prometheus::proto::LabelPair],
                  extra: Option<(&str, f64)>,
                  v: f64| {
        out.push_str(name);
        if !labels.is_empty() || extra.is_some() {
            out.push('{');
            for (i, l) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(l.name());
                out.push_str("=\"");
                crate::naming::escape_into(out, l.value());
                out.push('"');
            }
            if let Some((k, x)) = extra {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                fmt_value(out, x);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        fmt_value(out, v);
        out.push('\n');
    };
    for f in families {
        let name = f.name();
        let ty = f.get_field_type();
        match (ty, name.strip_suffix("_total")) {
            (T::COUNTER, Some(base)) => openmetrics_header(out, base, "counter", f.help()),
            (T::COUNTER | T::UNTYPED, _) => openmetrics_header(out, name, "unknown", f.help()),
            (T::GAUGE, _) => openmetrics_header(out, name, "gauge", f.help()),
            (T::HISTOGRAM, _) => openmetrics_header(out, name, "histogram", f.help()),
            (T::SUMMARY, _) => openmetrics_header(out, name, "summary", f.help()),
        }
        for m in f.get_metric() {
            let l = m.get_label();
            match ty {
                T::COUNTER => sample(out, name, l, None, m.get_counter().get_value()),
                T::GAUGE => sample(out, name, l, None, m.get_gauge().get_value()),
                T::UNTYPED => {
                    // The crate keeps untyped values only behind its protobuf-era API.
                    #[allow(deprecated)]
                    let v = m.get_untyped().get_value();
                    sample(out, name, l, None, v)
                }
                T::HISTOGRAM => {
                    let h = m.get_histogram();
                    let bucket = format!("{name}_bucket");
                    for b in h.get_bucket() {
                        let le = b.upper_bound();
                        sample(
                            out,
                            &bucket,
                            l,
                            Some(("le", le)),
                            b.cumulative_count() as f64,
                        );
                    }
                    if h.get_bucket()
                        .last()
                        .is_none_or(|b| b.upper_bound() != f64::INFINITY)
                    {
                        sample(
                            out,
                            &bucket,
                            l,
                            Some(("le", f64::INFINITY)),
                            h.get_sample_count() as f64,
                        );
                    }
                    sample(out, &format!("{name}_sum"), l, None, h.get_sample_sum());
                    sample(
                        out,
                        &format!("{name}_count"),
                        l,
                        None,
                        h.get_sample_count() as f64,
                    );
                }
                T::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        sample(out, name, l, Some(("quantile", q.quantile())), q.value());
                    }
                    sample(out, &format!("{name}_sum"), l, None, s.sample_sum());
                    sample(
                        out,
                        &format!("{name}_count"),
                        l,
                        None,
                        s.sample_count() as f64,
                    );
                }
            }
        }
    }
    out.push_str("# EOF\n");
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
