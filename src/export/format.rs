//! Which exposition format a scrape gets: the `Accept` header's media ranges, with their
//! q-values, against the three tallyd writes.
//!
//! - `text/plain; version=0.0.4` (also `text/plain`, `text/*`, `*/*`, no header at all, and
//!   any header naming nothing tallyd writes: a scraper always gets an answer);
//! - `application/openmetrics-text` (version `1.0.0`, `0.0.1` or none: tallyd writes 1.0.0);
//! - `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//!   encoding=delimited`.
//!
//! The highest q wins; on a tie, the range listed first. With `naming = "statsd_exporter"`
//! OpenMetrics is never chosen: its counters' samples must end in `_total`, which would
//! rename statsd_exporter's counters for a scraper that asks for it (statsd_exporter itself
//! does not offer OpenMetrics).

/// An exposition format (its index is its `tallyd_scrapes_total{format}` series).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` protobuf messages.
    Protobuf,
}

impl Format {
    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// The format one media range asks for, if tallyd writes it.
fn format_of(range: &str) -> Option<Format> {
    let mut parts = range.split(';').map(str::trim);
    let media = parts.next()?.to_ascii_lowercase();
    let params: Vec<(String, String)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match media.as_str() {
        "text/plain" => matches!(param("version"), None | Some("0.0.4")).then_some(Format::Text),
        "text/*" | "*/*" => Some(Format::Text),
        "application/openmetrics-text" => {
            matches!(param("version"), None | Some("1.0.0") | Some("0.0.1"))
                .then_some(Format::OpenMetrics)
        }
        "application/vnd.google.protobuf" => (param("proto")
            == Some("io.prometheus.client.MetricFamily")
            && param("encoding") == Some("delimited"))
        .then_some(Format::Protobuf),
        _ => None,
    }
}

/// The format for an `Accept` header (`None`: no header). `openmetrics` says whether
/// OpenMetrics may be chosen.
pub fn negotiate(accept: Option<&str>, openmetrics: bool) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: Option<(f64, Format)> = None;
    for range in accept.split(',') {
        let Some(format) = format_of(range) else {
            continue;
        };
        if format == Format::OpenMetrics && !openmetrics {
            continue;
        }
        let q = range
            .split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, q)| q.trim().parse::<f64>().ok())
            .filter(|q| q.is_finite())
            .map_or(1.0, |q| q.clamp(0.0, 1.0));
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_headers() {
        // Prometheus 2.42's default, and with native histograms on.
        let om = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(om), true), Format::OpenMetrics);
        assert_eq!(negotiate(Some(om), false), Format::Text);
        let pb = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(negotiate(Some(pb), true), Format::Protobuf);
        assert_eq!(negotiate(None, true), Format::Text);
        assert_eq!(negotiate(Some("*/*"), true), Format::Text);
        assert_eq!(negotiate(Some("application/json"), true), Format::Text);
        // q-values order, not position; q=0 refuses; an unknown version is not ours.
        assert_eq!(
            negotiate(
                Some("text/plain;q=0.2, application/openmetrics-text; version=1.0.0; q=0.9"),
                true
            ),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(
                Some("application/openmetrics-text;q=0,text/plain;q=0.1"),
                true
            ),
            Format::Text
        );
        assert_eq!(
            negotiate(
                Some("application/openmetrics-text;Q=0.1,text/plain;q=0.2"),
                true
            ),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=2.0.0"), true),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/vnd.google.protobuf;proto=other"), true),
            Format::Text
        );
    }
}
