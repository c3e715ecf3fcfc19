//! Prometheus naming: the one place for what a name may be and which names clash.
//!
//! Both sides use it: the ingest side when it creates a series (a sanitised name, a family that
//! must not claim a reserved name or collide with another family's suffixed samples), and the
//! export side when it writes the samples a family's kind adds (`_bucket`, `_sum`, `_count`).
//! A rule here holds for every exposition format at once.

use crate::parse::tags::{TagError, TagErrors};

/// The prefix of tallyd's own metrics; no StatsD family may start with it.
pub const RESERVED_PREFIX: &str = "tallyd_";

/// The process metrics tallyd exports beside its own (the Prometheus process collector's).
pub const PROCESS_FAMILIES: [&str; 8] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The Prometheus type a family was claimed with.
pub enum FamilyKind {
    /// `counter`, name ends in `_total`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// A set's distinct-member estimate, exported as a `gauge`.
    Set,
    /// `summary`: quantiles from a sketch (opt-in per mapping rule).
    Summary,
}

/// True if creating family `name` of `kind` would collide with histogram suffixes: a new
/// histogram whose `_bucket`/`_sum`/`_count` names exist already, or a new family of any kind
/// (histograms included: `x_sum` as a histogram after the histogram `x`) whose name is one of
/// an existing histogram's suffixed names. Either would make the text parser attach one
/// family's samples or `# TYPE` line to the other, and the whole scrape would fail.
///
/// `existing` looks a family up by name and returns its kind.
pub fn collides(
    name: &str,
    kind: FamilyKind,
    existing: impl Fn(&str) -> Option<FamilyKind>,
) -> bool {
    if kind
        .suffixes()
        .iter()
        .any(|s| existing(&format!("{name}{s}")).is_some())
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|s| {
        name.strip_suffix(s)
            .and_then(&existing)
            .is_some_and(|k| k.suffixes().contains(s))
    })
}

/// True if a family `name` of `kind` would write a sample under a reserved name: one of
/// tallyd's own metrics (`reserved`, and anything starting with [`RESERVED_PREFIX`]).
///
/// A name is also reserved when it differs from a reserved one only by `_total`: OpenMetrics
/// names a counter's family without it, so `process_threads_total` (a counter) would take the
/// family name of tallyd's gauge `process_threads`.
pub fn is_reserved(name: &str, kind: FamilyKind, reserved: &[impl AsRef<str>]) -> bool {
    let exact =
        |n: &str| n.starts_with(RESERVED_PREFIX) || reserved.iter().any(|r| r.as_ref() == n);
    let hit = |n: &str| {
        exact(n) || exact(&format!("{n}_total")) || n.strip_suffix("_total").is_some_and(exact)
    };
    hit(name) || kind.suffixes().iter().any(|s| hit(&format!("{name}{s}")))
}

/// A counter family's name: the sanitised name with `_total` appended unless it has it.
pub fn counter_family(name: String) -> String {
    if name.ends_with("_total") {
        name
    } else {
        format!("{name}_total")
    }
}

impl FamilyKind {
    /// The Prometheus type name (`# TYPE`); a set's estimate is a gauge.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge | Self::Set => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }

    /// The HELP text of a family of this kind that no mapping rule named: what it is.
    pub fn default_help(self) -> &'static str {
        match self {
            Self::Counter => "StatsD counter (c), summed by tallyd.",
            Self::Gauge => "StatsD gauge (g), by tallyd.",
            Self::Histogram => {
                "StatsD timer (ms, in seconds), histogram (h) or distribution (d), bucketed by tallyd."
            }
            Self::Summary => {
                "StatsD timer (ms, in seconds), histogram (h) or distribution (d), quantiles over a sliding window, by tallyd."
            }
            Self::Set => {
                "StatsD set (s): distinct members over a sliding window (estimate), by tallyd."
            }
        }
    }

    /// The sample-name suffixes a family of this kind writes besides its own name.
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            Self::Histogram => &["_bucket", "_sum", "_count"],
            Self::Summary => &["_sum", "_count"],
            _ => &[],
        }
    }
}

/// A Prometheus metric name: every character outside `[a-zA-Z0-9_:]` becomes `_`; a leading
/// digit gets a `_` prefix.
pub fn metric_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// A metric name (or a tag's label name) as statsd_exporter escapes it, for
/// `[defaults] naming = "statsd_exporter"`: every character outside `[a-zA-Z0-9_]` (`:`
/// included) becomes `_`, except that a run of `-` becomes one `_`; a leading digit gets a `_`
/// prefix.
pub fn exporter_metric_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    let mut prev = '\0';
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !(c == '-' && prev == '-') {
            out.push('_');
        }
        prev = c;
    }
    out
}

/// A Prometheus label name: every character outside `[a-zA-Z0-9_]` becomes `_`; a leading digit
/// gets a `_` prefix.
pub fn label_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// Writes a label value escaped for the text exposition (`\\`, `\"`, `\n`).
pub fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A label value as [`escape_into`] wrote it, unescaped.
pub fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Whether label `name` (sanitised) is reserved on a family of `kind` ([`render_labels`]).
pub fn is_reserved_label(name: &str, kind: FamilyKind) -> bool {
    name.starts_with("__")
        || (name == "le" && kind == FamilyKind::Histogram)
        || (name == "quantile" && kind == FamilyKind::Summary)
}

/// Sanitises, filters and sorts `tags` into the rendered label set `k="v",k2="v2"` (no braces).
/// Later duplicates win.
///
/// A label is reserved, dropped and counted, where the exposition of the family's `kind` uses
/// its name: `le` on a histogram (its buckets), `quantile` on a summary, and `__*` names on
/// every kind (Prometheus keeps those for itself). Elsewhere `le` and `quantile` are labels like
/// any other, so `c:1|c|#le:1` and `c:1|c|#le:2` stay two series.
///
/// Duplicates are removed by a stable sort, so a line with 10,000 tags costs O(n log n), not
/// O(n^2) (a hostile datagram must not wedge a worker on its cache-miss path).
pub fn render_labels(
    tags: Vec<(String, String)>,
    kind: FamilyKind,
    errors: &mut TagErrors,
) -> String {
    let mut labels: Vec<(String, String)> = Vec::with_capacity(tags.len());
    for (k, v) in tags {
        let k = label_name(&k);
        if is_reserved_label(&k, kind) {
            errors.add(TagError::ReservedLabel);
            continue;
        }
        labels.push((k, v));
    }
    // Stable: equal keys keep their line order, so the last of each run is the one that wins.
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keep = vec![true; labels.len()];
    for i in 1..labels.len() {
        if labels[i - 1].0 == labels[i].0 {
            keep[i - 1] = false;
        }
    }
    let mut keep = keep.into_iter();
    labels.retain(|_| keep.next().unwrap_or(true));
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(&mut out, v);
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_what_escape_into_wrote() {
        let mut e = String::new();
        escape_into(&mut e, "a\"b\\c\nd");
        assert_eq!(unescape(&e), "a\"b\\c\nd");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn names_and_labels() {
        assert_eq!(metric_name("api.req-count"), "api_req_count");
        assert_eq!(metric_name("9lives"), "_9lives");
        assert_eq!(label_name("tag.with.dots"), "tag_with_dots");
        assert_eq!(label_name("09x"), "_09x");
        // statsd_exporter's own escaping table.
        for (raw, want) in [
            ("clean", "clean"),
            ("0starts_with_digit", "_0starts_with_digit"),
            ("with--doubledash", "with_doubledash"),
            ("with---multiple-dashes", "with_multiple_dashes"),
            ("with.dot", "with_dot"),
            ("with\u{1f631}emoji", "with_emoji"),
            ("with.*.multiple", "with___multiple"),
            ("test.web-server.foo.bar", "test_web_server_foo_bar"),
            ("a:b", "a_b"),
        ] {
            assert_eq!(exporter_metric_name(raw), want, "{raw}");
        }
        let mut e = TagErrors::default();
        let l = render_labels(
            vec![
                ("b".into(), "1".into()),
                ("a".into(), "q\"\\\n".into()),
                ("b".into(), "2".into()),
                ("__name__".into(), "x".into()),
            ],
            FamilyKind::Counter,
            &mut e,
        );
        assert_eq!(l, r#"a="q\"\\\n",b="2""#);
        assert_eq!(e.0[TagError::ReservedLabel as usize], 1);
        let le = || vec![("le".to_string(), "5".to_string())];
        assert_eq!(render_labels(le(), FamilyKind::Histogram, &mut e), "");
        assert_eq!(
            render_labels(le(), FamilyKind::Counter, &mut e),
            r#"le="5""#
        );
        let q = || vec![("quantile".to_string(), "0.5".to_string())];
        assert_eq!(render_labels(q(), FamilyKind::Summary, &mut e), "");
        assert_eq!(
            render_labels(q(), FamilyKind::Histogram, &mut e),
            r#"quantile="0.5""#
        );
        assert_eq!(e.0[TagError::ReservedLabel as usize], 3);
    }
}
