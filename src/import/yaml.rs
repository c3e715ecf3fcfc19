//! statsd_exporter's mapping file read into its model, each value with its line, and checked
//! as statsd_exporter checks it at load: a file it would refuse is refused here too, with the
//! line at fault.
//!
//! Keys removed from statsd_exporter after 0.30 (`timer_type`, a mapping's or the defaults'
//! `buckets` and `quantiles`, `match_metric_type: timer`) are read with 0.30's meaning, and a
//! note says so.

use std::time::Duration;

use saphyr::{MarkedYaml, Scalar, ScalarStyle, YamlData, YamlLoader};

use super::{Findings, Kind};

/// `observer_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Observer {
    Summary,
    Histogram,
}

/// `match_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MatchType {
    Glob,
    Regex,
}

/// `match_metric_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MetricType {
    Counter,
    Gauge,
    Observer,
}

/// `summary_options` (and the legacy `quantiles`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct SummaryOptions {
    /// `(quantile, error)` pairs.
    pub quantiles: Option<Vec<(f64, f64)>>,
    pub max_age: Option<Duration>,
    pub age_buckets: Option<u64>,
    pub buf_cap: Option<u64>,
    pub line: usize,
}

/// `histogram_options` (and the legacy `buckets`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct HistogramOptions {
    pub buckets: Option<Vec<f64>>,
    pub native_factor: Option<f64>,
    pub native_max_buckets: Option<u64>,
    pub line: usize,
}

/// `defaults`.
#[derive(Debug, Clone, Default)]
pub(super) struct Defaults {
    pub observer: Option<Observer>,
    pub match_type: Option<MatchType>,
    pub glob_disable_ordering: bool,
    pub ttl: Option<Duration>,
    pub summary: Option<SummaryOptions>,
    pub histogram: Option<HistogramOptions>,
    pub line: usize,
}

/// One entry of `mappings`.
#[derive(Debug, Clone, Default)]
pub(super) struct Mapping {
    /// The line of the entry (its first key).
    pub line: usize,
    pub matcher: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub help: Option<String>,
    pub match_type: Option<MatchType>,
    pub metric_type: Option<MetricType>,
    pub drop: bool,
    /// `Some(None)`: written as `""`, which statsd_exporter reads as a summary.
    pub observer: Option<Option<Observer>>,
    pub ttl: Option<Duration>,
    pub summary: Option<SummaryOptions>,
    pub histogram: Option<HistogramOptions>,
    pub scale: Option<f64>,
    pub honor_labels: bool,
    /// The line of each key, for findings about it.
    pub keys: Vec<(String, usize)>,
}

impl Mapping {
    /// The line of `key` in this entry, else the entry's.
    pub(super) fn line_of(&self, key: &str) -> usize {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.line, |(_, l)| *l)
    }
}

/// The whole file.
#[derive(Debug, Clone, Default)]
pub(super) struct File {
    pub defaults: Defaults,
    pub mappings: Vec<Mapping>,
}

type Node<'a> = MarkedYaml<'a>;

fn line(n: &Node<'_>) -> usize {
    n.span.start.line()
}

/// Loads `text` keeping every scalar as written (Go's decoder gives a string field the text
/// as written: `1.10` stays `1.10`, `True` stays `True`).
pub(super) fn load(text: &str) -> Result<Vec<Node<'_>>, saphyr::ScanError> {
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    let mut loader: YamlLoader<'_, MarkedYaml<'_>> = YamlLoader::default();
    loader.early_parse(false);
    parser.load(&mut loader, true)?;
    if let Some(e) = loader.error() {
        return Err(e.clone());
    }
    Ok(loader.into_documents())
}

/// A plain scalar's text (quoted ones are always strings).
fn plain<'n>(n: &'n Node<'_>) -> Option<&'n str> {
    match &n.data {
        YamlData::Representation(s, ScalarStyle::Plain, None) => Some(s),
        _ => None,
    }
}

fn is_null(n: &Node<'_>) -> bool {
    matches!(plain(n), Some("" | "~" | "null" | "Null" | "NULL"))
        || matches!(n.data, YamlData::Value(Scalar::Null))
}

/// A scalar's text as Go's YAML decoder gives it to a string field.
fn text(n: &Node<'_>) -> Option<String> {
    match &n.data {
        _ if is_null(n) => Some(String::new()),
        YamlData::Representation(s, ..) => Some(s.to_string()),
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn number(n: &Node<'_>) -> Option<f64> {
    let s = text(n)?;
    let s = s.trim();
    match s.to_ascii_lowercase().as_str() {
        ".inf" | "+.inf" => return Some(f64::INFINITY),
        "-.inf" => return Some(f64::NEG_INFINITY),
        ".nan" => return Some(f64::NAN),
        _ => {}
    }
    if let Some(h) = s.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).ok().map(|i| i as f64);
    }
    s.parse().ok().filter(|v: &f64| !v.is_nan() || s == "NaN")
}

fn integer(n: &Node<'_>) -> Option<i64> {
    let s = text(n)?;
    s.trim().parse().ok()
}

/// A bool as YAML 1.1 (Go's decoder) reads one: `true`, `yes`, `on` and their opposites.
fn boolean(n: &Node<'_>) -> Option<bool> {
    match text(n)?.to_ascii_lowercase().as_str() {
        "yes" | "on" | "y" | "true" => Some(true),
        "no" | "off" | "n" | "false" => Some(false),
        _ => None,
    }
}

/// A Go duration (`1h30m`, `1.5s`, `500ms`, `0`); an integer is nanoseconds, as Go decodes it.
pub(super) fn go_duration(n: &Node<'_>) -> Option<Duration> {
    match integer(n) {
        Some(i) => u64::try_from(i).ok().map(Duration::from_nanos),
        None => parse_go_duration(&text(n)?),
    }
}

/// Parses Go's `time.ParseDuration` syntax (no negative values: statsd_exporter has no use
/// for them).
pub(super) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim().strip_prefix('+').unwrap_or(s.trim());
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += num * nanos;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_nanos(total.round() as u64))
}

/// The entries of a mapping node, each key with its value; anything else is an error.
fn entries<'n, 'a>(n: &'n Node<'a>, what: &str, f: &mut Findings) -> Vec<(String, &'n Node<'a>)> {
    match &n.data {
        YamlData::Mapping(m) => m
            .iter()
            .filter_map(|(k, v)| match text(k) {
                Some(key) if key == "<<" => {
                    f.push(
                        Kind::Lossy,
                        line(k),
                        "YAML merge keys (`<<`) are not read; write the keys out".into(),
                    );
                    None
                }
                Some(k) => Some((k, v)),
                None => {
                    f.push(
                        Kind::Error,
                        line(v),
                        format!("{what}: keys must be strings"),
                    );
                    None
                }
            })
            .collect(),
        _ if is_null(n) => Vec::new(),
        _ => {
            f.push(Kind::Error, line(n), format!("{what} must be a mapping"));
            Vec::new()
        }
    }
}

/// What one key's value must be; a wrong one is an error at its line.
struct Reader<'f> {
    f: &'f mut Findings,
}

impl Reader<'_> {
    fn bad(&mut self, n: &Node<'_>, key: &str, want: &str) {
        self.f
            .push(Kind::Error, line(n), format!("{key}: expected {want}"));
    }

    fn string(&mut self, n: &Node<'_>, key: &str) -> Option<String> {
        let t = text(n);
        if t.is_none() {
            self.bad(n, key, "a string");
        }
        t
    }

    fn number(&mut self, n: &Node<'_>, key: &str) -> Option<f64> {
        let v = number(n);
        if v.is_none() {
            self.bad(n, key, "a number");
        }
        v
    }

    fn count(&mut self, n: &Node<'_>, key: &str) -> Option<u64> {
        let v = integer(n).and_then(|i| u64::try_from(i).ok());
        if v.is_none() {
            self.bad(n, key, "a non-negative integer");
        }
        v
    }

    fn boolean(&mut self, n: &Node<'_>, key: &str) -> Option<bool> {
        let v = boolean(n);
        if v.is_none() {
            self.bad(n, key, "true or false");
        }
        v
    }

    fn duration(&mut self, n: &Node<'_>, key: &str) -> Option<Duration> {
        let v = go_duration(n);
        if v.is_none() {
            self.bad(n, key, "a duration such as 30s, 5m or 1h30m");
        }
        v
    }

    fn numbers(&mut self, n: &Node<'_>, key: &str) -> Option<Vec<f64>> {
        let YamlData::Sequence(items) = &n.data else {
            self.bad(n, key, "a list of numbers");
            return None;
        };
        items.iter().map(|i| self.number(i, key)).collect()
    }

    fn observer(&mut self, n: &Node<'_>, key: &str) -> Option<Option<Observer>> {
        match self.string(n, key)?.as_str() {
            "" => Some(None),
            "summary" => Some(Some(Observer::Summary)),
            "histogram" => Some(Some(Observer::Histogram)),
            o => {
                self.f.push(
                    Kind::Error,
                    line(n),
                    format!("{key}: invalid observer type '{o}' (summary or histogram)"),
                );
                None
            }
        }
    }

    fn match_type(&mut self, n: &Node<'_>) -> Option<MatchType> {
        match self.string(n, "match_type")?.as_str() {
            "" | "glob" => Some(MatchType::Glob),
            "regex" => Some(MatchType::Regex),
            m => {
                self.f.push(
                    Kind::Error,
                    line(n),
                    format!("match_type: invalid match type \"{m}\" (glob or regex)"),
                );
                None
            }
        }
    }

    fn summary(&mut self, n: &Node<'_>) -> SummaryOptions {
        let mut s = SummaryOptions {
            line: line(n),
            ..Default::default()
        };
        for (k, v) in entries(n, "summary_options", self.f) {
            match k.as_str() {
                "quantiles" => s.quantiles = self.quantiles(v),
                "max_age" => s.max_age = self.duration(v, "max_age"),
                "age_buckets" => s.age_buckets = self.count(v, "age_buckets"),
                "buf_cap" => s.buf_cap = self.count(v, "buf_cap"),
                _ => self.unknown(v, &k, "summary_options"),
            }
        }
        s
    }

    fn quantiles(&mut self, n: &Node<'_>) -> Option<Vec<(f64, f64)>> {
        let YamlData::Sequence(items) = &n.data else {
            self.bad(n, "quantiles", "a list of {quantile, error}");
            return None;
        };
        let mut out = Vec::new();
        for i in items {
            let (mut q, mut e) = (None, 0.0);
            for (k, v) in entries(i, "quantiles", self.f) {
                match k.as_str() {
                    "quantile" => q = self.number(v, "quantile"),
                    "error" => e = self.number(v, "error").unwrap_or(0.0),
                    _ => self.unknown(v, &k, "a quantile"),
                }
            }
            // Go reads a missing quantile as 0 (refused later, as any quantile outside (0, 1)).
            out.push((q.unwrap_or(0.0), e));
        }
        Some(out)
    }

    fn histogram(&mut self, n: &Node<'_>) -> HistogramOptions {
        let mut h = HistogramOptions {
            line: line(n),
            ..Default::default()
        };
        for (k, v) in entries(n, "histogram_options", self.f) {
            match k.as_str() {
                "buckets" => h.buckets = self.numbers(v, "buckets"),
                "native_histogram_bucket_factor" => h.native_factor = self.number(v, &k),
                "native_histogram_max_buckets" => h.native_max_buckets = self.count(v, &k),
                _ => self.unknown(v, &k, "histogram_options"),
            }
        }
        h
    }

    fn unknown(&mut self, n: &Node<'_>, key: &str, within: &str) {
        self.f.push(
            Kind::Error,
            line(n),
            format!("{key}: unknown key in {within} (statsd_exporter refuses it too)"),
        );
    }

    fn legacy(&mut self, n: &Node<'_>, key: &str, instead: &str) {
        self.f.push(
            Kind::Note,
            line(n),
            format!(
                "{key} is deprecated (statsd_exporter after 0.30 refuses it); read as {instead}"
            ),
        );
    }
}

/// Reads and checks the mapping file `text`; what is wrong goes to `f` as errors.
pub(super) fn read(text: &str, f: &mut Findings) -> File {
    let docs = match load(text) {
        Ok(d) => d,
        Err(e) => {
            f.push(
                Kind::Error,
                e.marker().line(),
                format!("not valid YAML: {}", e.info()),
            );
            return File::default();
        }
    };
    let Some(root) = docs.first() else {
        return File::default();
    };
    let mut file = File::default();
    let mut r = Reader { f };
    // Legacy top-level keys of `defaults`, kept to apply after the current ones.
    let (mut legacy_buckets, mut legacy_quantiles) = (None, None);
    for (k, v) in entries(root, "the file", r.f) {
        match k.as_str() {
            "defaults" => {
                let d = &mut file.defaults;
                d.line = line(v);
                for (k, v) in entries(v, "defaults", r.f) {
                    match k.as_str() {
                        "observer_type" => d.observer = r.observer(v, &k).flatten(),
                        "timer_type" => {
                            r.legacy(v, &k, "observer_type");
                            if d.observer.is_none() {
                                d.observer = r.observer(v, &k).flatten();
                            }
                        }
                        "match_type" => d.match_type = r.match_type(v),
                        "glob_disable_ordering" => {
                            d.glob_disable_ordering = r.boolean(v, &k).unwrap_or(false)
                        }
                        "ttl" => d.ttl = r.duration(v, &k),
                        "summary_options" => d.summary = Some(r.summary(v)),
                        "histogram_options" => d.histogram = Some(r.histogram(v)),
                        "buckets" => {
                            r.legacy(v, &k, "histogram_options.buckets");
                            legacy_buckets = r.numbers(v, &k);
                        }
                        "quantiles" => {
                            r.legacy(v, &k, "summary_options.quantiles");
                            legacy_quantiles = r.quantiles(v);
                        }
                        _ => r.unknown(v, &k, "defaults"),
                    }
                }
            }
            "mappings" => {
                let YamlData::Sequence(items) = &v.data else {
                    if !is_null(v) {
                        r.bad(v, "mappings", "a list");
                    }
                    continue;
                };
                for item in items {
                    file.mappings.push(mapping(item, &mut r));
                }
            }
            _ => r.unknown(v, &k, "the file"),
        }
    }
    // 0.30: a legacy list applies where the current key is empty; legacy quantiles replace
    // the whole summary options.
    if let Some(b) = legacy_buckets {
        let h = file.defaults.histogram.get_or_insert_with(Default::default);
        if h.buckets.as_ref().is_none_or(Vec::is_empty) {
            h.buckets = Some(b);
        }
    }
    if let Some(q) = legacy_quantiles
        && file
            .defaults
            .summary
            .as_ref()
            .is_none_or(|s| s.quantiles.as_ref().is_none_or(Vec::is_empty))
    {
        file.defaults.summary = Some(SummaryOptions {
            quantiles: Some(q),
            ..Default::default()
        });
    }
    file
}

fn mapping(n: &Node<'_>, r: &mut Reader<'_>) -> Mapping {
    let mut m = Mapping {
        line: line(n),
        ..Default::default()
    };
    let (mut legacy_buckets, mut legacy_quantiles, mut timer_type) = (None, None, None);
    let mut name_seen = false;
    for (k, v) in entries(n, "a mapping", r.f) {
        m.keys.push((k.clone(), line(v)));
        match k.as_str() {
            "match" => m.matcher = r.string(v, &k).unwrap_or_default(),
            "name" => {
                m.name = r.string(v, &k).unwrap_or_default();
                name_seen = true;
            }
            "labels" => {
                for (lk, lv) in entries(v, "labels", r.f) {
                    let value = r.string(lv, &lk).unwrap_or_default();
                    m.labels.push((lk, value));
                }
            }
            "help" => m.help = r.string(v, &k),
            "match_type" => m.match_type = r.match_type(v),
            "match_metric_type" => {
                m.metric_type = match r.string(v, &k).as_deref() {
                    Some("counter") => Some(MetricType::Counter),
                    Some("gauge") => Some(MetricType::Gauge),
                    Some("observer") => Some(MetricType::Observer),
                    Some("timer") => {
                        r.legacy(v, "match_metric_type: timer", "observer");
                        Some(MetricType::Observer)
                    }
                    Some(t) => {
                        r.f.push(
                            Kind::Error,
                            line(v),
                            format!(
                                "match_metric_type: invalid metric type '{t}' (counter, gauge or observer)"
                            ),
                        );
                        None
                    }
                    None => None,
                }
            }
            "action" => match r.string(v, &k).as_deref() {
                Some("" | "map") => m.drop = false,
                Some("drop") => m.drop = true,
                Some(a) => r.f.push(
                    Kind::Error,
                    line(v),
                    format!("action: invalid action type \"{a}\" (map or drop)"),
                ),
                None => {}
            },
            "observer_type" => m.observer = r.observer(v, &k),
            "timer_type" => {
                r.legacy(v, &k, "observer_type");
                timer_type = r.observer(v, &k);
            }
            "ttl" => m.ttl = r.duration(v, &k),
            "summary_options" => m.summary = Some(r.summary(v)),
            "histogram_options" => m.histogram = Some(r.histogram(v)),
            "buckets" => {
                r.legacy(v, &k, "histogram_options.buckets");
                legacy_buckets = r.numbers(v, &k).map(|b| (b, line(v)));
            }
            "quantiles" => {
                r.legacy(v, &k, "summary_options.quantiles");
                legacy_quantiles = r.quantiles(v).map(|q| (q, line(v)));
            }
            "scale" => m.scale = r.number(v, &k),
            "honor_labels" => m.honor_labels = r.boolean(v, &k).unwrap_or(false),
            _ => r.unknown(v, &k, "a mapping"),
        }
    }
    if m.observer.is_none_or(|o| o.is_none()) && timer_type.is_some() {
        m.observer = timer_type;
    }
    if let Some((b, at)) = legacy_buckets {
        let h = m.histogram.get_or_insert_with(|| HistogramOptions {
            line: at,
            ..Default::default()
        });
        if h.buckets.is_some() {
            r.f.push(
                Kind::Error,
                at,
                "cannot use buckets in both the top level and histogram options at the same time"
                    .into(),
            );
        }
        h.buckets = Some(b);
    }
    if let Some((q, at)) = legacy_quantiles {
        let s = m.summary.get_or_insert_with(|| SummaryOptions {
            line: at,
            ..Default::default()
        });
        if s.quantiles.is_some() {
            r.f.push(
                Kind::Error,
                at,
                "cannot use quantiles in both the top level and summary options at the same time"
                    .into(),
            );
        }
        s.quantiles = Some(q);
    }
    if !name_seen || m.name.is_empty() {
        r.f.push(
            Kind::Error,
            m.line,
            "metric mapping didn't set a metric name".into(),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("10us"), Some(Duration::from_micros(10)));
        assert_eq!(d("10"), None);
        assert_eq!(d("5d"), None);
        assert_eq!(d(""), None);
    }

    #[test]
    fn lines_and_refusals() {
        let mut f = Findings::default();
        let file = read(
            "defaults:\n  ttl: 1m\nmappings:\n- match: a.*\n  name: x\n  bogus: 1\n- match: b\n",
            &mut f,
        );
        assert_eq!(file.defaults.ttl, Some(Duration::from_secs(60)));
        assert_eq!(file.mappings.len(), 2);
        assert_eq!(file.mappings[0].line, 4);
        let errors: Vec<_> = f.0.iter().map(|x| (x.at.as_str(), x.kind)).collect();
        assert_eq!(
            errors,
            [(":6", Kind::Error), (":7", Kind::Error)],
            "{:?}",
            f.0
        );
    }
}
