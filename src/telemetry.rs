//! tallyd's own metrics (`tallyd_*` and `process_*`), in a prometheus-crate registry of their
//! own per daemon, so several daemons in one test process do not share counters.
//!
//! Every failure mode is a named counter. Workers never touch these on the per-line path: they
//! count into a plain [`Stats`] and [`Telemetry::flush`] adds it here after each batch.

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::parse::ParseError;
use crate::parse::tags::TagError;
use crate::pipeline::Stats;
use crate::store::Refusal;
use crate::sync::lock;

/// How a config reload ended (`tallyd_config_reloads_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is in force, whole.
    Success,
    /// The new config is in force, but a listener could not be bound (it is retried) or
    /// `[log]` could not be applied.
    Partial,
    /// The file was refused (invalid, unreadable, missing, empty); the running config stays.
    Failure,
}

/// Handles on every self-metric.
pub struct Telemetry {
    /// The registry rendered at the end of `/metrics`.
    pub registry: Registry,
    /// `tallyd_datagrams_received_total{listener}`: datagram listeners (UDP, Unix datagram).
    pub datagrams: IntCounterVec,
    /// `tallyd_lines_received_total{listener}`: every listener.
    pub lines: IntCounterVec,
    /// `tallyd_bytes_received_total{listener}`: every listener.
    pub bytes: IntCounterVec,
    /// `tallyd_datagrams_truncated_total{listener}`: datagram listeners (UDP, Unix datagram).
    pub truncated: IntCounterVec,
    /// `tallyd_udp_receive_buffer_bytes{listener}`: a UDP socket's SO_RCVBUF as the kernel
    /// reports it (on Linux twice the size granted).
    pub recv_buffer: IntGaugeVec,
    /// `tallyd_udp_kernel_drops_total{listener}` (read from the UDP sockets at scrape time).
    pub kernel_drops: IntCounterVec,
    /// `tallyd_parse_errors_total{reason}`.
    pub parse_errors: Vec<IntCounter>,
    /// `tallyd_tag_errors_total{reason}`.
    pub tag_errors: Vec<IntCounter>,
    /// `tallyd_samples_total{type}`.
    pub samples: Vec<IntCounter>,
    /// `tallyd_samples_dropped_total{reason}`.
    pub dropped: Vec<IntCounter>,
    /// `tallyd_series_refused_total{reason}`.
    pub refused: Vec<IntCounter>,
    /// `tallyd_mapping_drops_total{rule}` (1-based rule number in file order).
    pub rule_drops: IntCounterVec,
    /// `tallyd_unmapped_samples_total`.
    pub unmapped: IntCounter,
    /// `tallyd_mapping_cache_hits_total`.
    pub cache_hits: IntCounter,
    /// `tallyd_mapping_cache_misses_total`.
    pub cache_misses: IntCounter,
    /// `tallyd_events_total`.
    pub events: IntCounter,
    /// `tallyd_service_checks_total`.
    pub service_checks: IntCounter,
    /// `tallyd_unknown_fields_total`.
    pub unknown_fields: IntCounter,
    /// `tallyd_sample_rates_ignored_total`.
    pub ignored_rates: IntCounter,
    /// `tallyd_series`.
    pub series: IntGauge,
    /// `tallyd_series_expired_total` (mirrored from the store at scrape time).
    pub expired: IntCounter,
    /// `tallyd_config_reloads_total{outcome}`.
    pub reloads: IntCounterVec,
    /// `tallyd_config_last_reload_successful`.
    pub last_reload_ok: IntGauge,
    /// `tallyd_config_last_reload_success_timestamp_seconds`.
    pub last_reload_time: Gauge,
    /// `tallyd_config_restart_required`: settings of the file in force that wait for a restart.
    pub restart_required: IntGauge,
    /// `tallyd_listener_up{listener}`.
    pub listener_up: IntGaugeVec,
    /// `tallyd_log_lines_dropped_total{reason}`: `queue_full`, `write_failed` (mirrored from
    /// [`crate::log::dropped`] at scrape time).
    pub log_dropped: [IntCounter; 2],
    /// `tallyd_tcp_connections{listener}`: open now.
    pub tcp_connections: IntGaugeVec,
    /// `tallyd_tcp_connections_accepted_total{listener}`: accepted and served.
    pub tcp_accepted: IntCounterVec,
    /// `tallyd_tcp_connections_refused_total{listener}`.
    pub tcp_refused: IntCounterVec,
    /// `tallyd_tcp_lines_too_long_total{listener}`.
    pub tcp_too_long: IntCounterVec,
    /// `tallyd_scrape_errors_total`: writes to a scraper that failed mid-response.
    pub scrape_errors: IntCounter,
    /// `tallyd_scrapes_total{format}`: `text`, `openmetrics`, `protobuf`.
    pub scrapes: [IntCounter; 3],
    /// `tallyd_http_connections_shed_total{reason}`: `idle`, `stalled_write`.
    pub http_shed: IntCounterVec,
    /// `tallyd_http_write_timeouts_total`.
    pub http_write_timeouts: IntCounter,
    /// `tallyd_http_auth_failures_total{reason}`: `denied`, `busy`.
    pub auth_failures: [IntCounter; 2],
    /// `tallyd_lines_rejected_total{listener}`: lines the parser refused, by listener.
    pub lines_rejected: IntCounterVec,
    /// `tallyd_series_limit`: `[limits] max_series` in force.
    pub series_limit: IntGauge,
    /// `tallyd_relay_lines_total`: lines handed to the relay's sender.
    pub relay_lines: IntCounter,
    /// `tallyd_relay_datagrams_total`: datagrams handed to the relay's sender.
    pub relay_datagrams: IntCounter,
    /// `tallyd_relay_lines_dropped_total{reason}`: `queue_full`, `too_long`, `send_failed`.
    pub relay_dropped: [IntCounter; 3],
    /// What the status page shows beside the counters.
    pub records: Records,
    /// `tallyd_remote_write_*`, per `[[remote_write]]` endpoint.
    pub remote: RemoteMetrics,
}

/// `tallyd_remote_write_*`: each labelled `endpoint` (the section's name).
pub struct RemoteMetrics {
    /// `tallyd_remote_write_samples_sent_total`: samples in requests the receiver accepted
    /// (staleness markers included).
    pub samples_sent: IntCounterVec,
    /// `tallyd_remote_write_requests_sent_total`: requests the receiver accepted.
    pub requests_sent: IntCounterVec,
    /// `tallyd_remote_write_requests_failed_total{reason}`: attempts that failed:
    /// `connection`, `timeout`, `http_4xx`, `http_429`, `http_5xx`, `http_other` (a redirect).
    pub requests_failed: IntCounterVec,
    /// `tallyd_remote_write_retries_total`: attempts after a failure.
    pub retries: IntCounterVec,
    /// `tallyd_remote_write_requests_dropped_total{reason}`: requests given up: `rejected` (a
    /// 4xx other than 429, or a redirect: it would never succeed), `queue_full` (oldest dropped for a new
    /// one), `too_old` (older than max_pending_age), `shutdown` (unsent at stop or reload).
    pub requests_dropped: IntCounterVec,
    /// `tallyd_remote_write_samples_dropped_total{reason}`: the samples of those requests.
    pub samples_dropped: IntCounterVec,
    /// `tallyd_remote_write_queue_length`: requests waiting.
    pub queue_length: IntGaugeVec,
    /// `tallyd_remote_write_last_success_timestamp_seconds`.
    pub last_success: prometheus::GaugeVec,
    /// `tallyd_remote_write_request_duration_seconds`: each attempt, answered or not.
    pub duration: prometheus::HistogramVec,
}

impl RemoteMetrics {
    fn new(r: &Registry) -> Self {
        let two = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["endpoint", "reason"])
                .expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let last_success = prometheus::GaugeVec::new(
            Opts::new(
                "tallyd_remote_write_last_success_timestamp_seconds",
                "Unix time of the last request a remote write endpoint accepted.",
            ),
            &["endpoint"],
        )
        .expect("valid metric");
        r.register(Box::new(last_success.clone())).expect("unique");
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "tallyd_remote_write_request_duration_seconds",
                "Time of each remote write attempt, answered or not.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        r.register(Box::new(duration.clone())).expect("unique");
        Self {
            samples_sent: counter_vec(
                r,
                "tallyd_remote_write_samples_sent_total",
                "Samples in remote write requests the endpoint accepted (staleness markers \
                 included).",
                "endpoint",
            ),
            requests_sent: counter_vec(
                r,
                "tallyd_remote_write_requests_sent_total",
                "Remote write requests the endpoint accepted (2xx).",
                "endpoint",
            ),
            requests_failed: two(
                "tallyd_remote_write_requests_failed_total",
                "Remote write attempts that failed, by reason: connection, timeout, http_4xx, \
                 http_429, http_5xx, http_other (a redirect, not followed).",
            ),
            retries: counter_vec(
                r,
                "tallyd_remote_write_retries_total",
                "Remote write attempts after a failed one (429, 5xx, connection, timeout).",
                "endpoint",
            ),
            requests_dropped: two(
                "tallyd_remote_write_requests_dropped_total",
                "Remote write requests given up, by reason: rejected (4xx other than 429), \
                 queue_full, too_old (older than max_pending_age), shutdown.",
            ),
            samples_dropped: two(
                "tallyd_remote_write_samples_dropped_total",
                "Samples of the remote write requests given up, by reason.",
            ),
            queue_length: gauge_vec(
                r,
                "tallyd_remote_write_queue_length",
                "Remote write requests waiting to be sent.",
                "endpoint",
            ),
            last_success,
            duration,
        }
    }
}

/// What the status page shows beside the counters: when tallyd started, the config's story,
/// the recent refused lines, the ingest history. Each part has its own lock, taken off the
/// hot path (the workers' batch flush only tries the refused lines' lock, and keeps its lines
/// for the next flush when it is taken).
pub struct Records {
    /// When the daemon started.
    pub started: std::time::Instant,
    /// The same, as Unix time.
    pub started_unix: f64,
    /// The config in force and the reloads' outcomes.
    pub config: Mutex<ConfigRecord>,
    /// The last refused lines, per reason ([`crate::pipeline::reject_reason`]).
    pub rejects: Mutex<Vec<VecDeque<RejectedLine>>>,
    /// Lines received per listener, sampled every [`HISTORY_EVERY`].
    pub history: Mutex<VecDeque<HistoryPoint>>,
    /// Series per family at a past moment, for the growth column.
    pub baseline: Mutex<Option<std::sync::Arc<Baseline>>>,
}

/// How often the ingest history is sampled.
pub const HISTORY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Samples of ingest history kept ([`HISTORY_EVERY`] apart: ten minutes).
pub const HISTORY_POINTS: usize = 60;

/// How often the series-per-family baseline of the growth column is taken.
pub const BASELINE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A refused line as the status page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedLine {
    /// The line's first bytes, escaped ([`crate::pipeline::Escaped`]).
    pub line: String,
    /// The listener it came in on.
    pub listener: std::sync::Arc<str>,
    /// When the worker handed it over (Unix time; within a batch of when it arrived).
    pub at_unix: f64,
}

/// One sample of the ingest history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    /// When (Unix time).
    pub at_unix: f64,
    /// `tallyd_lines_received_total` per listener label then.
    pub lines: Vec<(String, u64)>,
}

/// Series per family at one moment, keyed by a hash of the family's name.
pub struct Baseline {
    /// When it was taken (Unix time).
    pub at_unix: f64,
    /// The hasher of the keys.
    pub hasher: foldhash::quality::RandomState,
    /// Series per family-name hash.
    pub counts: std::collections::HashMap<u64, u32>,
}

/// The config in force and the reloads' story.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigRecord {
    /// The file, if any (`None`: the embedded defaults).
    pub path: Option<String>,
    /// SHA-256 of the text in force (hex), `None` for the embedded defaults.
    pub sha256: Option<String>,
    /// When the config in force was loaded (Unix time).
    pub loaded_unix: f64,
    /// What loaded it: `start`, `sighup`, `http` (`POST /-/reload`), `file_change`.
    pub loaded_by: &'static str,
    /// The last reload attempt, if there was one.
    pub last_attempt: Option<Attempt>,
    /// The last reload that failed (kept after later successes), if one did.
    pub last_error: Option<Attempt>,
}

/// One reload attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempt {
    /// When (Unix time).
    pub at_unix: f64,
    /// What asked for it ([`ConfigRecord::loaded_by`]'s words).
    pub trigger: &'static str,
    /// `success`, `partial`, `failure` or `unchanged`.
    pub outcome: &'static str,
    /// What went wrong, if anything.
    pub message: Option<String>,
    /// The error's 1-based line and column in the file (0 when not tied to a place).
    pub line: usize,
    /// See `line`.
    pub column: usize,
}

impl Records {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            started_unix: unix_now(),
            config: Mutex::new(ConfigRecord::default()),
            rejects: Mutex::new(vec![VecDeque::new(); crate::pipeline::REJECT_REASONS]),
            history: Mutex::new(VecDeque::new()),
            baseline: Mutex::new(None),
        }
    }

    /// Records the config in force: its file, its text (hashed) and what loaded it.
    pub fn config_loaded(
        &self,
        path: Option<&std::path::Path>,
        text: Option<&str>,
        by: &'static str,
    ) {
        use sha2::Digest as _;
        let mut c = lock(&self.config);
        c.path = path.map(|p| p.display().to_string());
        c.sha256 = text.map(|t| {
            sha2::Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        });
        c.loaded_unix = unix_now();
        c.loaded_by = by;
    }

    /// Records a reload attempt's outcome.
    pub fn reload_attempt(&self, attempt: Attempt) {
        let mut c = lock(&self.config);
        if attempt.outcome != "success" && attempt.outcome != "unchanged" {
            c.last_error = Some(attempt.clone());
        }
        c.last_attempt = Some(attempt);
    }

    /// Moves a writer's recent refused lines here. Called from a worker's flush after a
    /// batch that refused lines; the lock is held for a few short copies.
    fn keep_rejects(&self, recent: &mut crate::pipeline::Recent) {
        let mut log = lock(&self.rejects);
        let at_unix = unix_now();
        let listener = recent.listener.clone();
        recent.drain(|i, line| {
            if let Some(q) = log.get_mut(i) {
                if q.len() == crate::pipeline::RECENT_LINES {
                    q.pop_front();
                }
                q.push_back(RejectedLine {
                    line: crate::pipeline::Escaped(line).to_string(),
                    listener: listener.clone(),
                    at_unix,
                });
            }
        });
    }

    /// Adds a sample of the ingest history, dropping the oldest past [`HISTORY_POINTS`].
    pub fn sample_history(&self, lines: Vec<(String, u64)>) {
        let mut h = lock(&self.history);
        if h.len() == HISTORY_POINTS {
            h.pop_front();
        }
        h.push_back(HistoryPoint {
            at_unix: unix_now(),
            lines,
        });
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Telemetry {
    /// Registers every self-metric, the build info and the process collector.
    pub fn new() -> Self {
        let r = Registry::new();
        let by = |name: &str,
                  help: &str,
                  label: &str,
                  values: &mut dyn Iterator<Item = &'static str>|
         -> Vec<IntCounter> {
            let v = counter_vec(&r, name, help, label);
            values.map(|x| v.with_label_values(&[x])).collect()
        };
        let parse_errors = by(
            "tallyd_parse_errors_total",
            "Lines dropped because they did not parse, by reason.",
            "reason",
            &mut ParseError::ALL.iter().map(|e| e.reason()),
        );
        let tag_errors = by(
            "tallyd_tag_errors_total",
            "Tags skipped (the rest of the line was used), by reason.",
            "reason",
            &mut TagError::ALL.iter().map(|e| e.reason()),
        );
        let samples = by(
            "tallyd_samples_total",
            "Samples aggregated, by StatsD type.",
            "type",
            &mut [
                "counter",
                "gauge",
                "timer",
                "histogram",
                "distribution",
                "set",
            ]
            .into_iter(),
        );
        let dropped = by(
            "tallyd_samples_dropped_total",
            "Parsed samples not aggregated (type conflicts, reserved names, mapping drops), by reason.",
            "reason",
            &mut Refusal::DROPPED.iter().map(|r| r.reason()),
        );
        let refused = by(
            "tallyd_series_refused_total",
            "Samples refused because they would have created a series beyond a limit, by reason.",
            "reason",
            &mut Refusal::REFUSED.iter().map(|r| r.reason()),
        );
        let build = IntGaugeVec::new(
            Opts::new("tallyd_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid");
        r.register(Box::new(build.clone())).expect("unique");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique");
        let reloads = counter_vec(
            &r,
            "tallyd_config_reloads_total",
            "Config reloads by outcome: success, partial (the config is in force but a listener \
             could not be bound or [log] not applied), failure (refused; the running config stays).",
            "outcome",
        );
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["partial"]);
        reloads.with_label_values(&["failure"]);
        let last_reload_time = Gauge::new(
            "tallyd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )
        .expect("valid");
        r.register(Box::new(last_reload_time.clone()))
            .expect("unique");
        last_reload_time.set(unix_now());
        let t = Self {
            datagrams: counter_vec(
                &r,
                "tallyd_datagrams_received_total",
                "Datagrams received by a datagram listener (UDP, Unix datagram).",
                "listener",
            ),
            lines: counter_vec(
                &r,
                "tallyd_lines_received_total",
                "Lines received, good or bad, by listener (every transport).",
                "listener",
            ),
            bytes: counter_vec(
                &r,
                "tallyd_bytes_received_total",
                "Payload bytes received, by listener (every transport).",
                "listener",
            ),
            truncated: counter_vec(
                &r,
                "tallyd_datagrams_truncated_total",
                "Datagrams longer than a datagram listener reads (UDP: max_datagram_size; Unix \
                 datagram: 64 KiB); their last line was dropped.",
                "listener",
            ),
            recv_buffer: gauge_vec(
                &r,
                "tallyd_udp_receive_buffer_bytes",
                "A UDP socket's receive buffer as the kernel reports it (SO_RCVBUF read back, \
                 as ss -m shows it): on Linux twice the size granted, which is the recv_buffer asked \
                 for unless net.core.rmem_max capped it. Datagrams are dropped when what they \
                 take in the queue reaches it.",
                "listener",
            ),
            kernel_drops: counter_vec(
                &r,
                "tallyd_udp_kernel_drops_total",
                "Datagrams the kernel dropped because a UDP socket's receive buffer was full \
                 (SO_MEMINFO).",
                "listener",
            ),
            parse_errors,
            tag_errors,
            samples,
            dropped,
            refused,
            rule_drops: counter_vec(
                &r,
                "tallyd_mapping_drops_total",
                "Samples dropped by a mapping rule with action = \"drop\".",
                "rule",
            ),
            unmapped: counter(
                &r,
                "tallyd_unmapped_samples_total",
                "Series resolved without any mapping rule matching.",
            ),
            cache_hits: counter(
                &r,
                "tallyd_mapping_cache_hits_total",
                "Series lookups answered by a worker's cache.",
            ),
            cache_misses: counter(
                &r,
                "tallyd_mapping_cache_misses_total",
                "Series lookups that resolved names, tags and mappings anew.",
            ),
            events: counter(&r, "tallyd_events_total", "DogStatsD events received."),
            service_checks: counter(
                &r,
                "tallyd_service_checks_total",
                "DogStatsD service checks received.",
            ),
            unknown_fields: counter(
                &r,
                "tallyd_unknown_fields_total",
                "Line fields tallyd does not know (ignored).",
            ),
            ignored_rates: counter(
                &r,
                "tallyd_sample_rates_ignored_total",
                "Sample rates that were a number outside (0, 1]: the line's values count at rate 1.",
            ),
            series: gauge(&r, "tallyd_series", "Live series in the store."),
            expired: counter(
                &r,
                "tallyd_series_expired_total",
                "Series removed by ttl expiry since start.",
            ),
            reloads,
            last_reload_ok: gauge(
                &r,
                "tallyd_config_last_reload_successful",
                "1 if the config file in force is the file on disk and runs whole: 0 after a \
                 failed or partial reload, back to 1 when a good file is loaded (or the same \
                 file read again) and every listener is bound.",
            ),
            last_reload_time,
            restart_required: gauge(
                &r,
                "tallyd_config_restart_required",
                "1 if settings of the file in force wait for a restart: [http] listen, \
                 tls_cert_file, tls_key_file, max_connections, header_read_timeout, \
                 write_timeout, [relay] (and [log] \
                 where the logger cannot change live). The reload log names them.",
            ),
            log_dropped: {
                let v = counter_vec(
                    &r,
                    "tallyd_log_lines_dropped_total",
                    "Log lines dropped, by reason: queue_full (more than the log queue holds \
                     were waiting for stderr) or write_failed (stderr refused them, e.g. a \
                     closed pipe).",
                    "reason",
                );
                [
                    v.with_label_values(&["queue_full"]),
                    v.with_label_values(&["write_failed"]),
                ]
            },
            listener_up: gauge_vec(
                &r,
                "tallyd_listener_up",
                "1 while a configured listener is bound, 0 while it could not be (retried every 5s).",
                "listener",
            ),
            tcp_connections: gauge_vec(
                &r,
                "tallyd_tcp_connections",
                "Open TCP connections.",
                "listener",
            ),
            tcp_accepted: counter_vec(
                &r,
                "tallyd_tcp_connections_accepted_total",
                "TCP connections accepted and read from (not those refused at max_connections).",
                "listener",
            ),
            tcp_refused: counter_vec(
                &r,
                "tallyd_tcp_connections_refused_total",
                "TCP connections closed at once because max_connections were open.",
                "listener",
            ),
            tcp_too_long: counter_vec(
                &r,
                "tallyd_tcp_lines_too_long_total",
                "TCP lines longer than max_line_length, dropped unread (also counted in \
                 tallyd_parse_errors_total{reason=\"line_too_long\"}).",
                "listener",
            ),
            http_shed: counter_vec(
                &r,
                "tallyd_http_connections_shed_total",
                "HTTP connections closed to make room for a new one at [http] max_connections, \
                 by reason: idle (no request in progress) or stalled_write (a response blocked \
                 on a client that reads nothing).",
                "reason",
            ),
            http_write_timeouts: counter(
                &r,
                "tallyd_http_write_timeouts_total",
                "HTTP connections closed because a write stayed blocked for [http] \
                 write_timeout.",
            ),
            auth_failures: {
                let v = counter_vec(
                    &r,
                    "tallyd_http_auth_failures_total",
                    "Requests refused by basic auth, by reason: denied (missing or wrong \
                     credentials, 401) or busy (too many verifications waiting, 429).",
                    "reason",
                );
                [
                    v.with_label_values(&["denied"]),
                    v.with_label_values(&["busy"]),
                ]
            },
            scrape_errors: counter(
                &r,
                "tallyd_scrape_errors_total",
                "Scrapes whose client went away mid-response.",
            ),
            scrapes: {
                let v = counter_vec(
                    &r,
                    "tallyd_scrapes_total",
                    "Scrapes of the metrics path, by the format the Accept header chose: text \
                     (0.0.4), openmetrics (1.0.0) or protobuf.",
                    "format",
                );
                ["text", "openmetrics", "protobuf"].map(|f| v.with_label_values(&[f]))
            },
            lines_rejected: counter_vec(
                &r,
                "tallyd_lines_rejected_total",
                "Lines the parser refused, by listener (the reasons are in \
                 tallyd_parse_errors_total).",
                "listener",
            ),
            series_limit: gauge(
                &r,
                "tallyd_series_limit",
                "[limits] max_series in force: samples that would create a series beyond it \
                 are refused.",
            ),
            relay_lines: counter(
                &r,
                "tallyd_relay_lines_total",
                "Lines handed to the [relay] sender (accepted lines, as received).",
            ),
            relay_datagrams: counter(
                &r,
                "tallyd_relay_datagrams_total",
                "Datagrams packed for the [relay] sender.",
            ),
            relay_dropped: {
                let v = counter_vec(
                    &r,
                    "tallyd_relay_lines_dropped_total",
                    "Lines not relayed, by reason: queue_full (the relay's queue was full; \
                     ingest never waits for it), too_long (longer than the relay's \
                     max_datagram_size), send_failed (the UDP send failed).",
                    "reason",
                );
                [
                    v.with_label_values(&["queue_full"]),
                    v.with_label_values(&["too_long"]),
                    v.with_label_values(&["send_failed"]),
                ]
            },
            records: Records::new(),
            remote: RemoteMetrics::new(&r),
            registry: r,
        };
        t.last_reload_ok.set(1);
        t
    }

    /// Every family name tallyd exports itself; StatsD names must not collide with them.
    pub fn reserved_names(&self) -> Vec<String> {
        self.registry
            .gather()
            .into_iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    /// Adds a writer's counters and zeroes them.
    pub fn flush(&self, s: &mut Stats) {
        fn add(c: &[IntCounter], v: &mut [u64]) {
            for (c, v) in c.iter().zip(v.iter_mut()) {
                if *v > 0 {
                    c.inc_by(*v);
                    *v = 0;
                }
            }
        }
        add(&self.parse_errors, &mut s.parse_errors);
        add(&self.tag_errors, &mut s.tag_errors);
        add(&self.samples, &mut s.samples);
        add(&self.dropped, &mut s.dropped);
        add(&self.refused, &mut s.refused);
        for (c, v) in [
            (&self.relay_lines, &mut s.relay_lines),
            (&self.relay_datagrams, &mut s.relay_datagrams),
            (&self.relay_dropped[0], &mut s.relay_queue_full),
            (&self.relay_dropped[1], &mut s.relay_too_long),
            (&self.unmapped, &mut s.unmapped),
            (&self.cache_hits, &mut s.cache_hits),
            (&self.cache_misses, &mut s.cache_misses),
            (&self.events, &mut s.events),
            (&self.service_checks, &mut s.service_checks),
            (&self.unknown_fields, &mut s.unknown_fields),
            (&self.ignored_rates, &mut s.ignored_rates),
        ] {
            if *v > 0 {
                c.inc_by(*v);
                *v = 0;
            }
        }
        if s.recent.has_fresh() {
            self.records.keep_rejects(&mut s.recent);
        }
        for (rule, n) in s.rule_drops.drain() {
            self.rule_drops
                .with_label_values(&[&(rule + 1).to_string()])
                .inc_by(n);
        }
    }

    /// Raises counter `c` to `total` (for totals read from elsewhere at scrape time).
    pub fn catch_up(c: &IntCounter, total: u64) {
        let have = c.get();
        if total > have {
            c.inc_by(total - have);
        }
    }

    /// Records a reload's outcome.
    pub fn reload_outcome(&self, outcome: ReloadOutcome) {
        let (label, ok) = match outcome {
            ReloadOutcome::Success => ("success", true),
            ReloadOutcome::Partial => ("partial", false),
            ReloadOutcome::Failure => ("failure", false),
        };
        self.reloads.with_label_values(&[label]).inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_reload_time.set(unix_now());
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Now, as Unix time in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
