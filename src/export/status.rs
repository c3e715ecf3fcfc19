//! The status page (`GET /`) and its data (`GET /api/v1/status`): what tallyd is doing, for an
//! operator at 3 a.m.
//!
//! [`Status::build`] reads everything the page shows: tallyd's own counters (the same ones
//! `/metrics` exports), the records beside them ([`crate::telemetry::Records`]: the config's
//! story, the last refused lines, the ingest history) and a census of the store
//! ([`crate::store::census`]), which holds the registry lock for one chunk of families at a
//! time, like a scrape, and never touches a worker's shard. The top families are kept in
//! bounded heaps while the census walks, so no list of every family or series is copied; only
//! the top families' labels are counted.
//!
//! [`Status`] serialises to the documented JSON (its field names are the API and do not
//! change); [`html`] renders the page: server-side, self-contained (no external asset: it
//! works on an air-gapped host), readable without JavaScript, every string from the outside
//! escaped ([`Esc`]), served with a Content-Security-Policy that allows no script but the
//! page's own refresh ([`REFRESH_SCRIPT`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::{self, Write as _};
use std::hash::BuildHasher as _;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::pipeline::{REJECT_REASONS, reject_reason};
use crate::store::Store;
use crate::telemetry::{Attempt, Baseline, Telemetry, unix_now};

/// Families listed in each top list.
pub const TOP_FAMILIES: usize = 10;

/// The page's refresh, its only script: the page reads the same without it.
pub const REFRESH_SCRIPT: &str = "setTimeout(function(){location.reload();},15000);";

/// Everything the status page shows; serialised as `/api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// tallyd's version.
    pub version: &'static str,
    /// When the status was read (Unix seconds).
    pub now: f64,
    /// When tallyd started (Unix seconds).
    pub started_at: f64,
    /// Seconds since then.
    pub uptime_seconds: f64,
    /// The config in force and the reloads' outcomes.
    pub config: ConfigStatus,
    /// Every configured listener.
    pub listeners: Vec<ListenerStatus>,
    /// Series against the limits.
    pub series: SeriesStatus,
    /// The families with the most series, and those that grew most.
    pub top_families: TopFamilies,
    /// Every refusal reason: its count and its last refused lines.
    pub refusals: Vec<RefusalStatus>,
}

/// The config in force.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    /// The file (`null`: the embedded defaults).
    pub path: Option<String>,
    /// SHA-256 of the file's text in force, hex (`null` for the embedded defaults): compare
    /// with `sha256sum` of the file on disk.
    pub sha256: Option<String>,
    /// When it was loaded (Unix seconds).
    pub loaded_at: f64,
    /// What loaded it: `start`, `sighup`, `http`, `file_change`.
    pub loaded_by: &'static str,
    /// False after a failed or partial reload, until a good one.
    pub last_reload_successful: bool,
    /// Settings of the file in force wait for a restart.
    pub restart_required: bool,
    /// The last reload attempt.
    pub last_reload: Option<AttemptStatus>,
    /// The last reload that failed or was partial, kept after later successes.
    pub last_error: Option<AttemptStatus>,
}

/// One reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptStatus {
    /// When (Unix seconds).
    pub at: f64,
    /// What asked for it: `sighup`, `http`, `file_change`.
    pub trigger: &'static str,
    /// `success`, `partial`, `failure`, `unchanged`.
    pub outcome: &'static str,
    /// What went wrong.
    pub message: Option<String>,
    /// The error's line in the file (0: not tied to a place).
    pub line: usize,
    /// The error's column.
    pub column: usize,
}

/// One configured listener.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    /// Its `listener` label (`udp://127.0.0.1:8125`, `tcp://...`, `unixgram:///path`).
    pub name: String,
    /// `udp`, `tcp` or `unixgram`.
    pub transport: &'static str,
    /// Bound and serving.
    pub up: bool,
    /// Lines received, good or bad.
    pub lines_received: u64,
    /// Lines the parser refused.
    pub lines_rejected: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Datagrams received (datagram listeners; `null` for TCP).
    pub datagrams_received: Option<u64>,
    /// Datagrams the kernel dropped for a full receive buffer (UDP; `null` otherwise).
    pub kernel_drops: Option<u64>,
    /// The socket's receive buffer as the kernel reports it (UDP; `null` otherwise).
    pub receive_buffer_bytes: Option<u64>,
    /// Lines per second over the last history interval up to now.
    pub lines_per_second: f64,
    /// Lines per second between consecutive history samples, oldest first, ending now.
    pub rate_history: Vec<RatePoint>,
}

/// The ingest rate over one interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RatePoint {
    /// The interval's end (Unix seconds).
    pub at: f64,
    /// Lines per second over the interval.
    pub lines_per_second: f64,
}

/// Series against the limits.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesStatus {
    /// Live series (and idle ones not yet reclaimed).
    pub count: u64,
    /// `[limits] max_series`.
    pub max_series: u64,
    /// `[limits] max_series_per_metric` (0: none).
    pub max_series_per_metric: u64,
    /// Families with at least one series.
    pub families: u64,
}

/// The cardinality offenders.
#[derive(Debug, Clone, Serialize)]
pub struct TopFamilies {
    /// The families with the most series, most first.
    pub by_series: Vec<FamilyStatus>,
    /// The families that gained the most series since `growth_since`, most first (only
    /// those that grew).
    pub by_growth: Vec<FamilyStatus>,
    /// When the growth baseline was taken (Unix seconds; tallyd takes one a minute). Until
    /// the first, growth counts from the start.
    pub growth_since: f64,
}

/// One family of the top lists.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyStatus {
    /// The family's name as exported.
    pub name: String,
    /// Its Prometheus type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its series.
    pub series: u64,
    /// Series gained since `growth_since` (negative: lost).
    pub growth: i64,
    /// Its label names, most values first, each with its number of distinct values.
    pub labels: Vec<LabelStatus>,
}

/// A label name of a family and its values.
#[derive(Debug, Clone, Serialize)]
pub struct LabelStatus {
    /// The label name.
    pub name: String,
    /// Distinct values.
    pub values: u64,
    /// True if counting stopped at the cap ([`crate::store::census::DISTINCT_CAP`]): at
    /// least this many.
    pub capped: bool,
}

/// One refusal reason.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalStatus {
    /// The `reason` label.
    pub reason: &'static str,
    /// The self-metric that counts it.
    pub metric: &'static str,
    /// Lines (parse errors) or samples (drops, refusals) refused for it.
    pub count: u64,
    /// The last few refused lines, oldest first.
    pub recent: Vec<RecentLine>,
}

/// A refused line.
#[derive(Debug, Clone, Serialize)]
pub struct RecentLine {
    /// Its first bytes: printable ASCII as is (a backslash doubled), any other byte as
    /// `\xNN`, `...` if it was cut.
    pub line: String,
    /// The listener it came in on.
    pub listener: String,
    /// When it was handed over (Unix seconds).
    pub at: f64,
}

/// A configured listener as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRef {
    /// `udp`, `tcp` or `unixgram`.
    pub transport: &'static str,
    /// The `listener` label its counters carry.
    pub label: String,
    /// Bound and serving.
    pub up: bool,
}

impl Status {
    /// Reads the status of `listeners` (the configured ones, in config order) and the rest
    /// (see the module docs for what it locks).
    pub fn build(
        store: &Store,
        telemetry: &Telemetry,
        config: &Config,
        listeners: Vec<ListenerRef>,
    ) -> Self {
        let rec = &telemetry.records;
        let now = unix_now();
        let counters = Counters::gather(telemetry);
        let history = crate::sync::lock(&rec.history).clone();
        let listeners = listeners
            .into_iter()
            .map(
                |ListenerRef {
                     transport,
                     label: name,
                     up,
                 }| {
                    let lines = counters
                        .get("tallyd_lines_received_total", &name)
                        .unwrap_or(0);
                    let rate_history = rates(&history, &name, lines, now);
                    ListenerStatus {
                        transport,
                        up,
                        lines_received: lines,
                        lines_rejected: counters
                            .get("tallyd_lines_rejected_total", &name)
                            .unwrap_or(0),
                        bytes_received: counters
                            .get("tallyd_bytes_received_total", &name)
                            .unwrap_or(0),
                        datagrams_received: (transport != "tcp").then(|| {
                            counters
                                .get("tallyd_datagrams_received_total", &name)
                                .unwrap_or(0)
                        }),
                        kernel_drops: (transport == "udp").then(|| {
                            counters
                                .get("tallyd_udp_kernel_drops_total", &name)
                                .unwrap_or(0)
                        }),
                        receive_buffer_bytes: (transport == "udp")
                            .then(|| counters.get("tallyd_udp_receive_buffer_bytes", &name))
                            .flatten(),
                        lines_per_second: rate_history.last().map_or(0.0, |p| p.lines_per_second),
                        rate_history,
                        name,
                    }
                },
            )
            .collect();
        let baseline = crate::sync::lock(&rec.baseline).clone();
        let (top_families, families) = top_families(store, baseline.as_deref(), rec.started_unix);
        let refusals = {
            let recent = crate::sync::lock(&rec.rejects).clone();
            (0..REJECT_REASONS)
                .map(|i| {
                    let (reason, metric) = reject_reason(i);
                    RefusalStatus {
                        reason,
                        metric,
                        count: reason_count(telemetry, i),
                        recent: recent
                            .get(i)
                            .into_iter()
                            .flatten()
                            .map(|r| RecentLine {
                                line: r.line.clone(),
                                listener: r.listener.to_string(),
                                at: r.at_unix,
                            })
                            .collect(),
                    }
                })
                .collect()
        };
        let cfg = crate::sync::lock(&rec.config).clone();
        let attempt = |a: Attempt| AttemptStatus {
            at: a.at_unix,
            trigger: a.trigger,
            outcome: a.outcome,
            message: a.message,
            line: a.line,
            column: a.column,
        };
        Status {
            version: env!("CARGO_PKG_VERSION"),
            now,
            started_at: rec.started_unix,
            uptime_seconds: rec.started.elapsed().as_secs_f64(),
            config: ConfigStatus {
                path: cfg.path,
                sha256: cfg.sha256,
                loaded_at: cfg.loaded_unix,
                loaded_by: cfg.loaded_by,
                last_reload_successful: telemetry.last_reload_ok.get() == 1,
                restart_required: telemetry.restart_required.get() == 1,
                last_reload: cfg.last_attempt.map(attempt),
                last_error: cfg.last_error.map(attempt),
            },
            listeners,
            series: SeriesStatus {
                count: store.series_count(),
                max_series: config.limits.max_series as u64,
                max_series_per_metric: config.limits.max_series_per_metric as u64,
                families,
            },
            top_families,
            refusals,
        }
    }
}

/// The count of the refusal reason at `i` ([`reject_reason`]).
fn reason_count(t: &Telemetry, i: usize) -> u64 {
    let parse = t.parse_errors.len();
    let dropped = parse + t.dropped.len();
    let c = if i < parse {
        &t.parse_errors[i]
    } else if i < dropped {
        &t.dropped[i - parse]
    } else {
        &t.refused[i - dropped]
    };
    c.get()
}

/// tallyd's own per-listener series, read once from its registry (reading through the
/// metric vectors would create the series a listener does not have).
struct Counters(HashMap<(String, String), f64>);

impl Counters {
    fn gather(t: &Telemetry) -> Self {
        let mut m = HashMap::new();
        for f in t.registry.gather() {
            for metric in f.get_metric() {
                let Some(l) = metric.get_label().iter().find(|l| l.name() == "listener") else {
                    continue;
                };
                let v = match f.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
                    _ => continue,
                };
                m.insert((f.name().to_string(), l.value().to_string()), v);
            }
        }
        Self(m)
    }

    fn get(&self, family: &str, listener: &str) -> Option<u64> {
        self.0
            .get(&(family.to_string(), listener.to_string()))
            .map(|v| *v as u64)
    }
}

/// Lines per second between consecutive samples of `history` for listener `name`, then from
/// the last sample to now (`lines` received by now). A listener missing from a sample (not
/// configured then) starts at its first sample.
fn rates(
    history: &std::collections::VecDeque<crate::telemetry::HistoryPoint>,
    name: &str,
    lines: u64,
    now: f64,
) -> Vec<RatePoint> {
    let mut points: Vec<(f64, u64)> = history
        .iter()
        .filter_map(|p| {
            p.lines
                .iter()
                .find(|(l, _)| l == name)
                .map(|(_, n)| (p.at_unix, *n))
        })
        .collect();
    points.push((now, lines));
    points
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| RatePoint {
            at: w[1].0,
            lines_per_second: w[1].1.saturating_sub(w[0].1) as f64 / (w[1].0 - w[0].0),
        })
        .collect()
}

/// A bounded min-heap of the best families by a key: (key, name, type, series), the least
/// on top; names in reverse so that of equal keys the first by name ranks higher.
type Top<K> = BinaryHeap<Reverse<(K, Reverse<String>, &'static str, u64)>>;

/// The top families by series and by growth against `baseline` (none: growth since
/// `started`), and the number of families; each listed family's labels counted.
fn top_families(store: &Store, baseline: Option<&Baseline>, started: f64) -> (TopFamilies, u64) {
    // Min-heaps of the best TOP_FAMILIES so far: a family's name is copied only when it
    // enters one.
    let mut by_series: Top<u64> = BinaryHeap::new();
    let mut by_growth: Top<i64> = BinaryHeap::new();
    let mut families = 0u64;
    store.census(|name, kind, series| {
        families += 1;
        let series = series as u64;
        let kind = kind.type_name();
        if by_series.len() < TOP_FAMILIES || by_series.peek().is_some_and(|m| m.0.0 < series) {
            by_series.push(Reverse((series, Reverse(name.to_string()), kind, series)));
            if by_series.len() > TOP_FAMILIES {
                by_series.pop();
            }
        }
        let before = baseline.map_or(0, |b| {
            b.counts
                .get(&b.hasher.hash_one(name.as_bytes()))
                .copied()
                .unwrap_or(0)
        });
        let growth = series as i64 - i64::from(before);
        if growth > 0
            && (by_growth.len() < TOP_FAMILIES || by_growth.peek().is_some_and(|m| m.0.0 < growth))
        {
            by_growth.push(Reverse((growth, Reverse(name.to_string()), kind, series)));
            if by_growth.len() > TOP_FAMILIES {
                by_growth.pop();
            }
        }
    });
    let mut labels: HashMap<String, Vec<LabelStatus>> = HashMap::new();
    let mut labels_of = |name: &str| -> Vec<LabelStatus> {
        labels
            .entry(name.to_string())
            .or_insert_with(|| {
                store
                    .family_labels(name)
                    .into_iter()
                    .map(|l| LabelStatus {
                        name: l.name,
                        values: l.values as u64,
                        capped: l.capped,
                    })
                    .collect()
            })
            .clone()
    };
    let growth_of = |name: &str, series: u64| {
        let before = baseline.map_or(0, |b| {
            b.counts
                .get(&b.hasher.hash_one(name.as_bytes()))
                .copied()
                .unwrap_or(0)
        });
        series as i64 - i64::from(before)
    };
    let by_series: Vec<FamilyStatus> = by_series
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse((_, Reverse(name), kind, series))| FamilyStatus {
            growth: growth_of(&name, series),
            labels: labels_of(&name),
            name,
            kind,
            series,
        })
        .collect();
    let by_growth: Vec<FamilyStatus> = by_growth
        .into_sorted_vec()
        .into_iter()
        .map(
            |Reverse((growth, Reverse(name), kind, series))| FamilyStatus {
                labels: labels_of(&name),
                name,
                kind,
                series,
                growth,
            },
        )
        .collect();
    let top = TopFamilies {
        by_series,
        by_growth,
        growth_since: baseline.map_or(started, |b| b.at_unix),
    };
    (top, families)
}

/// Takes a sample for the status page: the lines received per configured listener (the
/// ingest history) of `listeners`, and, if `baseline`, the series per family that growth is measured from.
/// Called by the daemon every [`crate::telemetry::HISTORY_EVERY`].
pub fn sample(store: &Store, telemetry: &Telemetry, listeners: &[ListenerRef], baseline: bool) {
    let counters = Counters::gather(telemetry);
    let lines = listeners
        .iter()
        .filter_map(|l| {
            let n = counters.get("tallyd_lines_received_total", &l.label)?;
            Some((l.label.clone(), n))
        })
        .collect();
    telemetry.records.sample_history(lines);
    if baseline {
        let hasher = foldhash::quality::RandomState::default();
        let mut counts = HashMap::new();
        store.census(|name, _, series| {
            counts.insert(
                hasher.hash_one(name.as_bytes()),
                u32::try_from(series).unwrap_or(u32::MAX),
            );
        });
        *crate::sync::lock(&telemetry.records.baseline) = Some(std::sync::Arc::new(Baseline {
            at_unix: unix_now(),
            hasher,
            counts,
        }));
    }
}

/// HTML escaping of a string from the outside (names, labels, refused lines, messages).
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['<', '>', '&', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'&' => "&amp;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A Unix time as RFC 3339 (UTC, seconds).
fn time(unix: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration as `2d 3h 4m 5s`, leading zero units left out.
fn span(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if n > 0 || !out.is_empty() {
            let _ = write!(out, "{n}{unit} ");
        }
    }
    let _ = write!(out, "{s}s");
    out
}

/// A rate with at most one decimal.
fn rate(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The rate history as an inline SVG line chart (`points` drawn from the first to the last
/// interval end; the scale is the highest rate shown).
fn chart(out: &mut String, points: &[RatePoint]) {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    let max = points
        .iter()
        .map(|p| p.lines_per_second)
        .fold(0.0f64, f64::max);
    let (t0, t1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.at, b.at),
        _ => (0.0, 0.0),
    };
    let _ = write!(
        out,
        "<svg class=\"rate-chart\" role=\"img\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" \
         data-points=\"{n}\"><title>lines per second, peak {peak}</title>\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{h}\" class=\"bg\"/>",
        h = H + 2.0,
        n = points.len(),
        peak = rate(max),
    );
    if !points.is_empty() {
        out.push_str("<polyline class=\"line\" points=\"");
        for (i, p) in points.iter().enumerate() {
            let x = if t1 > t0 {
                (p.at - t0) / (t1 - t0) * W
            } else {
                // One point: a flat line across.
                if i == 0 { 0.0 } else { W }
            };
            let y = if max > 0.0 {
                1.0 + H - p.lines_per_second / max * H
            } else {
                1.0 + H
            };
            let _ = write!(out, "{x:.1},{y:.1} ");
            if points.len() == 1 {
                let _ = write!(out, "{W:.1},{y:.1} ");
            }
        }
        out.push_str("\"/>");
    }
    out.push_str("</svg>");
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2430;background:#fbfbfd}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .5em;border-bottom:1px solid #d6dae2}\
table{border-collapse:collapse;margin:.3em 0}th,td{padding:.25em .7em;text-align:left;border-bottom:1px solid #e6e9ef;vertical-align:top}\
th{background:#eef1f6;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px ui-monospace,monospace;background:#f1f3f7;padding:0 .2em;word-break:break-all}code.metric{white-space:nowrap;word-break:normal}\
.muted{color:#687385}.bad{color:#b3261e;font-weight:600}.ok{color:#1e7d32;font-weight:600}\
svg .bg{fill:#f1f3f7}svg .line{fill:none;stroke:#3367d6;stroke-width:1.5}\
meter{width:16em}ul{margin:.2em 0;padding-left:1.2em}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}";

/// Renders the status page.
pub fn html(s: &Status) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tallyd status</title><style>{STYLE}</style></head><body>\
         <h1>tallyd {v}</h1><p class=\"muted\">up <span id=\"uptime\">{up}</span> \
         (since {since}); read at {now}. \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/api/v1/status\">/api/v1/status</a> · \
         <a href=\"/-/ready\">/-/ready</a></p>",
        v = Esc(s.version),
        up = span(s.uptime_seconds),
        since = time(s.started_at),
        now = time(s.now),
    );
    config_section(&mut o, &s.config);
    listeners_section(&mut o, &s.listeners);
    series_section(&mut o, s);
    refusals_section(&mut o, &s.refusals);
    let _ = write!(
        o,
        "<p class=\"muted\">This page refreshes every 15 s when JavaScript is on.</p>\
         <script>{REFRESH_SCRIPT}</script></body></html>"
    );
    o
}

fn config_section(o: &mut String, c: &ConfigStatus) {
    let _ = write!(
        o,
        "<h2>Config</h2><dl id=\"config\"><dt>file</dt><dd><code>{path}</code></dd>\
         <dt>sha256</dt><dd><code id=\"config-sha256\">{hash}</code></dd>\
         <dt>loaded</dt><dd>{at} by {by}</dd><dt>last reload</dt><dd id=\"last-reload\">",
        path = Esc(c.path.as_deref().unwrap_or("(embedded defaults)")),
        hash = Esc(c.sha256.as_deref().unwrap_or("-")),
        at = time(c.loaded_at),
        by = Esc(c.loaded_by),
    );
    match &c.last_reload {
        None => o.push_str("none since start"),
        Some(a) => {
            let class = if c.last_reload_successful {
                "ok"
            } else {
                "bad"
            };
            let _ = write!(
                o,
                "<span class=\"{class}\">{}</span> at {} ({})",
                Esc(a.outcome),
                time(a.at),
                Esc(a.trigger)
            );
        }
    }
    o.push_str("</dd>");
    if c.restart_required {
        o.push_str("<dt>restart</dt><dd class=\"bad\">required: settings of the file in force wait for a restart (the log names them)</dd>");
    }
    if let Some(e) = &c.last_error {
        let _ = write!(
            o,
            "<dt>last error</dt><dd id=\"last-error\"><span class=\"bad\">{}</span> at {} ({})",
            Esc(e.outcome),
            time(e.at),
            Esc(e.trigger)
        );
        if e.line > 0 {
            let _ = write!(
                o,
                ", <span class=\"where\">line {}, column {}</span>",
                e.line, e.column
            );
        }
        if let Some(m) = &e.message {
            let _ = write!(o, ": <code>{}</code>", Esc(m));
        }
        o.push_str("</dd>");
    }
    o.push_str("</dl>");
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn listeners_section(o: &mut String, ls: &[ListenerStatus]) {
    o.push_str(
        "<h2>Listeners</h2><table id=\"listeners\"><tr><th>listener</th><th>up</th>\
         <th>lines</th><th>rejected</th><th>datagrams</th><th>bytes</th><th>kernel drops</th>\
         <th>receive buffer</th><th>lines/s</th><th>ingest rate, last minutes</th></tr>",
    );
    for l in ls {
        let _ = write!(
            o,
            "<tr data-listener=\"{name}\"><td><code>{name}</code></td><td class=\"{upc}\">{up}</td>\
             <td class=\"n\" data-field=\"lines_received\">{lines}</td>\
             <td class=\"n\" data-field=\"lines_rejected\">{rej}</td>\
             <td class=\"n\" data-field=\"datagrams_received\">{dg}</td>\
             <td class=\"n\" data-field=\"bytes_received\">{bytes}</td>\
             <td class=\"n{dropc}\" data-field=\"kernel_drops\">{drops}</td>\
             <td class=\"n\" data-field=\"receive_buffer_bytes\">{buf}</td>\
             <td class=\"n\" data-field=\"lines_per_second\">{rate}</td><td>",
            name = Esc(&l.name),
            upc = if l.up { "ok" } else { "bad" },
            up = if l.up { "up" } else { "DOWN" },
            lines = l.lines_received,
            rej = l.lines_rejected,
            dg = opt(l.datagrams_received),
            bytes = l.bytes_received,
            dropc = if l.kernel_drops.unwrap_or(0) > 0 {
                " bad"
            } else {
                ""
            },
            drops = opt(l.kernel_drops),
            buf = opt(l.receive_buffer_bytes),
            rate = rate(l.lines_per_second),
        );
        chart(o, &l.rate_history);
        o.push_str("</td></tr>");
    }
    o.push_str("</table>");
}

fn family_table(o: &mut String, id: &str, fams: &[FamilyStatus]) {
    if fams.is_empty() {
        let _ = write!(o, "<p id=\"{id}\" class=\"muted\">none</p>");
        return;
    }
    let _ = write!(
        o,
        "<table id=\"{id}\"><tr><th>family</th><th>type</th><th>series</th><th>growth</th>\
         <th>labels (distinct values)</th></tr>"
    );
    for f in fams {
        let _ = write!(
            o,
            "<tr data-family=\"{name}\"><td><code>{name}</code></td><td>{kind}</td>\
             <td class=\"n\" data-field=\"series\">{series}</td>\
             <td class=\"n\" data-field=\"growth\">{growth:+}</td><td>",
            name = Esc(&f.name),
            kind = f.kind,
            series = f.series,
            growth = f.growth,
        );
        if f.labels.is_empty() {
            o.push_str("<span class=\"muted\">no labels</span>");
        }
        for (i, l) in f.labels.iter().enumerate() {
            let _ = write!(
                o,
                "{sep}<code>{}</code> {}{}",
                Esc(&l.name),
                l.values,
                if l.capped { "+" } else { "" },
                sep = if i > 0 { ", " } else { "" },
            );
        }
        o.push_str("</td></tr>");
    }
    o.push_str("</table>");
}

fn series_section(o: &mut String, s: &Status) {
    let sr = &s.series;
    let _ = write!(
        o,
        "<h2>Series</h2><p><span id=\"series-count\">{count}</span> series of \
         <span id=\"max-series\">{max}</span> allowed (<code>[limits] max_series</code>) \
         in {fams} families <meter min=\"0\" max=\"{max}\" low=\"{low}\" high=\"{high}\" value=\"{count}\"></meter></p>",
        count = sr.count,
        max = sr.max_series,
        fams = sr.families,
        low = sr.max_series / 2,
        high = sr.max_series / 10 * 9,
    );
    o.push_str("<h2>Top families by series</h2>");
    family_table(o, "top-by-series", &s.top_families.by_series);
    let _ = write!(
        o,
        "<h2>Top families by growth</h2><p class=\"muted\">series gained since {}</p>",
        time(s.top_families.growth_since)
    );
    family_table(o, "top-by-growth", &s.top_families.by_growth);
}

fn refusals_section(o: &mut String, rs: &[RefusalStatus]) {
    o.push_str(
        "<h2>Refusals</h2><table id=\"refusals\"><tr><th>reason</th><th>counted in</th>\
         <th>count</th><th>last refused lines</th></tr>",
    );
    for r in rs {
        let _ = write!(
            o,
            "<tr data-reason=\"{reason}\"><td>{reason}</td><td><code class=\"metric\">{metric}</code></td>\
             <td class=\"n{c}\" data-field=\"count\">{count}</td><td>",
            reason = r.reason,
            metric = r.metric,
            c = if r.count > 0 { " bad" } else { "" },
            count = r.count,
        );
        if !r.recent.is_empty() {
            o.push_str("<ul>");
            for l in r.recent.iter().rev() {
                let _ = write!(
                    o,
                    "<li><code class=\"refused-line\">{}</code> <span class=\"muted\">{} {}</span></li>",
                    Esc(&l.line),
                    Esc(&l.listener),
                    time(l.at)
                );
            }
            o.push_str("</ul>");
        }
        o.push_str("</td></tr>");
    }
    o.push_str("</table>");
}

/// The page's Content-Security-Policy: nothing from elsewhere, inline styles, and no script
/// but [`REFRESH_SCRIPT`] (by its hash), so even markup that escaped escaping could not run.
pub fn content_security_policy() -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(REFRESH_SCRIPT.as_bytes());
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{}'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        base64::engine::general_purpose::STANDARD.encode(hash.as_slice())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            Esc(r#"<script>alert("x")</script>&'"#).to_string(),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn spans_and_rates() {
        assert_eq!(span(5.2), "5s");
        assert_eq!(span(3725.0), "1h 2m 5s");
        assert_eq!(span(90061.0), "1d 1h 1m 1s");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(rate(1234.6), "1235");
        assert_eq!(rate(3.0), "3");
    }

    #[test]
    fn rates_between_samples_and_to_now() {
        let h = [(100.0, 0u64), (110.0, 50), (120.0, 150)]
            .into_iter()
            .map(|(t, n)| crate::telemetry::HistoryPoint {
                at_unix: t,
                lines: vec![("udp://x".into(), n), ("tcp://y".into(), 7)],
            })
            .collect();
        let r = rates(&h, "udp://x", 160, 125.0);
        assert_eq!(
            r,
            [
                RatePoint {
                    at: 110.0,
                    lines_per_second: 5.0
                },
                RatePoint {
                    at: 120.0,
                    lines_per_second: 10.0
                },
                RatePoint {
                    at: 125.0,
                    lines_per_second: 2.0
                },
            ]
        );
        // A listener no sample knows: no interval yet.
        assert!(rates(&h, "udp://new", 9, 125.0).is_empty());
    }
}
