//! The ingest protocol end to end (`docs/protocol.md`): every example row of the protocol's
//! table, plus framing (several lines per datagram, CRLF, MSG_TRUNC), tag errors, conflicts,
//! reserved names, histogram exposition, sample-rate weights, sets, events and service checks,
//! the `[parse]` switches, the TCP and Unix datagram listeners, 200,000 increments over two
//! sockets, and concurrent scrapes that must each be a complete exposition.
//!
//! Each row runs on a fresh daemon with one UDP worker. After sending, the test waits on a
//! *barrier*: a gauge line sent on the same socket, twice. Once the first barrier is visible in
//! a scrape, every datagram sent before it has been aggregated; the second barrier arrives in a
//! strictly later receive batch, so the first batch's self-metrics have been flushed too. Then
//! the test asserts the exact StatsD sample lines of the scrape and the exact set of non-zero
//! failure counters (`tallyd_parse_errors_total`, `tallyd_tag_errors_total`,
//! `tallyd_samples_dropped_total`, `tallyd_series_refused_total`), so "moved by exactly 1 and
//! nothing else happened" is checked, not assumed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// The gauge the barrier sets; its lines are left out of every assertion.
const BARRIER: &str = "zz_barrier";

/// The failure counters whose non-zero series every row asserts exactly.
const FAILURES: [&str; 4] = [
    "tallyd_parse_errors_total",
    "tallyd_tag_errors_total",
    "tallyd_samples_dropped_total",
    "tallyd_series_refused_total",
];

/// A one-worker daemon and one sender socket (so every datagram reaches the worker in order).
struct Probe {
    t: TestDaemon,
    sock: UdpSocket,
    barriers: u32,
}

impl Probe {
    async fn start(extra: &str) -> Self {
        let t = TestDaemon::start(&config_text(1, extra)).await;
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        sock.connect(t.udp[0]).expect("connect sender");
        Self {
            t,
            sock,
            barriers: 0,
        }
    }

    fn send(&self, payload: &[u8]) {
        self.sock.send(payload).expect("send");
    }

    /// Waits until everything sent so far is aggregated and its self-metrics are flushed.
    /// Returns the scrape after that, without the chunked transfer coding.
    async fn settle(&mut self) -> String {
        self.barrier().await;
        self.barrier().await;
        scrape_text(self.t.http).await
    }

    async fn barrier(&mut self) -> String {
        self.barriers += 1;
        let n = self.barriers;
        self.send(format!("{BARRIER}:{n}|g").as_bytes());
        wait_for(self.t.http, &[(BARRIER, f64::from(n))]).await
    }

    async fn stop(self) {
        self.t.stop().await;
    }
}

/// StatsD sample lines without the barrier's.
fn samples(text: &str) -> Vec<&str> {
    statsd_samples(text)
        .into_iter()
        .filter(|l| !l.starts_with(BARRIER))
        .collect()
}

/// Every non-zero series of the failure counters.
fn failures(text: &str) -> Vec<(&str, f64)> {
    FAILURES.iter().flat_map(|f| nonzero(text, f)).collect()
}

/// Sends each payload as one datagram, settles, and asserts the exact StatsD sample lines and
/// the exact non-zero failure counters. Returns the scrape for further checks.
async fn row(payloads: &[&[u8]], want: &[&str], want_failures: &[(&str, f64)]) -> String {
    let mut p = Probe::start("").await;
    for d in payloads {
        p.send(d);
    }
    let text = p.settle().await;
    let shown: Vec<String> = payloads
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert_eq!(
        samples(&text),
        want,
        "samples for {shown:?}; scrape:\n{text}"
    );
    assert_eq!(
        failures(&text),
        want_failures,
        "failure counters for {shown:?}; scrape:\n{text}"
    );
    p.stop().await;
    text
}

/// An `ERR reason` row: the line is counted under `reason` exactly once, nothing is created.
async fn err_row(line: &[u8], reason: &str) {
    let series = format!("tallyd_parse_errors_total{{reason=\"{reason}\"}}");
    let text = row(&[line], &[], &[(series.as_str(), 1.0)]).await;
    // Only the barrier's series exists, and no sample but the barriers' (gauges) was counted.
    assert_eq!(value(&text, "tallyd_series"), Some(1.0), "{text}");
    let counted: Vec<_> = nonzero(&text, "tallyd_samples_total")
        .into_iter()
        .filter(|(s, _)| !s.contains(r#"type="gauge""#))
        .collect();
    assert_eq!(counted, vec![], "{text}");
}

/// The timer/histogram default buckets' `le` values, as rendered.
const LE: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];

/// The exposition lines of one histogram series: `labels` (rendered, may be empty), the
/// cumulative counts per default bucket, then +Inf (= count), sum and count.
fn histogram(
    name: &str,
    labels: &str,
    cumulative: [&str; 11],
    sum: &str,
    count: &str,
) -> Vec<String> {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut out: Vec<String> = LE
        .iter()
        .zip(cumulative)
        .map(|(le, c)| format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}"))
        .collect();
    out.push(format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}"));
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    out.push(format!("{name}_sum{braces} {sum}"));
    out.push(format!("{name}_count{braces} {count}"));
    out
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// The example table of protocol.md, row by row, in table order.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counter() {
    row(&[b"foo:2|c"], &["foo_total 2"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counter_sample_rate() {
    row(&[b"foo:1|c|@0.1"], &["foo_total 10"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_gauge_ignores_sample_rate() {
    row(&[b"foo:3|g|@0.2"], &["foo 3"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_gauge_set_then_deltas() {
    row(&[b"g:333|g\ng:-10|g\ng:+4|g"], &["g 327"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_timer_in_seconds() {
    let want = histogram(
        "foo",
        "",
        ["0", "0", "0", "0", "0", "0", "1", "1", "1", "1", "1"],
        "0.32",
        "1",
    );
    row(&[b"foo:320|ms"], &strs(&want), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_timer_sample_rate_is_a_weight() {
    let want = histogram(
        "foo",
        "",
        ["0", "0", "0", "0", "0", "0", "2", "2", "2", "2", "2"],
        "0.64",
        "2",
    );
    row(&[b"foo:320|ms|@0.5"], &strs(&want), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_histogram_keeps_unit() {
    let want = histogram("foo", "", ["0"; 11], "200", "1");
    row(&[b"foo:200|h"], &strs(&want), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_distribution_packed_with_tags() {
    let want = histogram(
        "foo",
        r#"env="prod""#,
        ["0", "0", "0", "0", "0", "0", "0", "1", "2", "3", "3"],
        "6",
        "3",
    );
    row(&[b"foo:1:2:3|d|#env:prod"], &strs(&want), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_etsy_multi_typed() {
    let mut want = histogram(
        "foo",
        "",
        ["0", "0", "0", "0", "0", "1", "1", "1", "1", "1", "1"],
        "0.2",
        "1",
    );
    want.push("foo_total 1".into());
    row(&[b"foo:1|c:200|ms"], &strs(&want), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_dogstatsd_tags_with_hash_prefix() {
    row(
        &[b"foo:1|c|#env:prod,#role:web"],
        &[r#"foo_total{env="prod",role="web"} 1"#],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_influxdb_tags() {
    row(&[b"foo,env=prod:1|c"], &[r#"foo_total{env="prod"} 1"#], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_librato_tags() {
    row(&[b"foo#env=prod:1|c"], &[r#"foo_total{env="prod"} 1"#], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_signalfx_tags() {
    row(
        &[b"foo.[env=prod]bar:1|c"],
        &[r#"foo_bar_total{env="prod"} 1"#],
        &[],
    )
    .await;
}

/// Decision (tallyd's): malformed brackets keep the name as sent (sanitised) and count one
/// `malformed_brackets` tag error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_malformed_brackets() {
    row(
        &[b"a]b[c:1|c"],
        &["a_b_c_total 1"],
        &[(
            r#"tallyd_tag_errors_total{reason="malformed_brackets"}"#,
            1.0,
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_label_names_sanitised() {
    row(
        &[b"foo:1|c|#tag.with.dots:1,09x:2"],
        &[r#"foo_total{_09x="2",tag_with_dots="1"} 1"#],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_dunder_label_dropped_and_counted() {
    row(
        &[b"foo:1|c|#__name__:x"],
        &["foo_total 1"],
        &[(r#"tallyd_tag_errors_total{reason="reserved_label"}"#, 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_le_tag_on_histogram_dropped_and_counted() {
    let want = histogram(
        "foo",
        "",
        ["0", "0", "0", "0", "0", "0", "0", "1", "1", "1", "1"],
        "1",
        "1",
    );
    row(
        &[b"foo:1|h|#le:5"],
        &strs(&want),
        &[(r#"tallyd_tag_errors_total{reason="reserved_label"}"#, 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_tag_without_value() {
    row(
        &[b"foo:1|c|#flag"],
        &["foo_total 1"],
        &[(r#"tallyd_tag_errors_total{reason="missing_value"}"#, 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_trailing_cr() {
    row(&[b"foo:1|c\r"], &["foo_total 1"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_container_id_and_timestamp_fields() {
    row(
        &[b"foo:1|c|#a:b|c:abc123|T1656581400"],
        &[r#"foo_total{a="b"} 1"#],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_set_counts_distinct_members() {
    row(&[b"foo:1|s", b"foo:2|s", b"foo:1|s"], &["foo 2"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_service_check() {
    let text = row(
        &[b"_sc|db|2|#env:dev|m:timeout"],
        &[r#"statsd_service_check_status{check="db",env="dev"} 2"#],
        &[],
    )
    .await;
    assert_eq!(value(&text, "tallyd_service_checks_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_event() {
    let text = row(
        &[b"_e{5,4}:title|text|t:warning"],
        &[r#"statsd_events_total{alert_type="warning",priority="normal"} 1"#],
        &[],
    )
    .await;
    assert_eq!(value(&text, "tallyd_events_total"), Some(1.0));
    // The title is not a label (unbounded cardinality).
    assert!(!statsd_section(&text).contains("title"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_no_colon() {
    err_row(b"foo", "malformed_line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_no_type() {
    err_row(b"foo:1", "malformed_line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_empty_name() {
    err_row(b":1|c", "empty_name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_empty_name_after_tags() {
    err_row(b"[a=b]:1|c", "empty_name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_invalid_value() {
    err_row(b"foo:1o|c", "invalid_value").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_nan() {
    err_row(b"foo:NaN|c", "invalid_value").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_negative_counter() {
    err_row(b"foo:-1|c", "negative_counter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_unknown_type() {
    err_row(b"foo:1|t", "unknown_type").await;
}

/// A rate that is a number outside (0, 1] is ignored: the value counts at rate 1, and the
/// ignored rate is counted (`tallyd_sample_rates_ignored_total`; tests/parity.rs asserts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_zero_sample_rate_counts_at_rate_one() {
    row(&[b"foo:1|c|@0"], &["foo_total 1"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_sample_rate_above_one_counts_at_rate_one() {
    row(&[b"foo:1|c|@2"], &["foo_total 1"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_err_sample_rate_not_a_number() {
    err_row(b"foo:1|c|@x", "invalid_sample_rate").await;
}

/// `@0.000001` is one observation of weight 1,000,000 (every bucket, the count and the sum
/// scaled), not a million observations: exactly one timer sample is counted. Whether that costs
/// constant time is for a bench to measure, not for a wall clock in a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_tiny_sample_rate_is_one_weighted_observation() {
    let want = histogram("foo", "", ["1000000"; 11], "1000", "1000000");
    let text = row(&[b"foo:1|ms|@0.000001"], &strs(&want), &[]).await;
    // The barrier lines are gauges; every other counted sample is listed.
    let counted: Vec<_> = nonzero(&text, "tallyd_samples_total")
        .into_iter()
        .filter(|(s, _)| !s.contains(r#"type="gauge""#))
        .collect();
    assert_eq!(
        counted,
        vec![(r#"tallyd_samples_total{type="timer"}"#, 1.0)],
        "{text}"
    );
}

/// Decision (tallyd's, see src/parse): an empty field is ignored, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_empty_trailing_field() {
    row(&[b"foo:1|c|"], &["foo_total 1"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_invalid_utf8_only_drops_its_line() {
    row(
        &[b"ok:1|c\nbad\xc3(:1|c"],
        &["ok_total 1"],
        &[(r#"tallyd_parse_errors_total{reason="invalid_utf8"}"#, 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counter_and_gauge_share_a_statsd_name() {
    row(&[b"foo:1|c\nfoo:1|g"], &["foo 1", "foo_total 1"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_gauge_then_timer_is_a_conflict() {
    row(
        &[b"foo:1|g\nfoo:1|ms"],
        &["foo 1"],
        &[(r#"tallyd_samples_dropped_total{reason="conflict"}"#, 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_histogram_suffix_collision() {
    let want = histogram(
        "x",
        "",
        ["0", "0", "0", "0", "0", "0", "0", "1", "1", "1", "1"],
        "1",
        "1",
    );
    row(
        &[b"x:1|d\nx_count:1|d"],
        &strs(&want),
        &[(r#"tallyd_samples_dropped_total{reason="conflict"}"#, 1.0)],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Framing, tags, conflicts, reserved names.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_lines_per_datagram_crlf_and_empty_lines() {
    let mut p = Probe::start("").await;
    p.send(b"a:1|c\nb:2|c\nc:3|g\n");
    p.send(b"a:1|c\r\nb:2|c\r\n\r\n\nc:+1|g\r\n");
    p.send(b"\n\n");
    let text = p.settle().await;
    assert_eq!(samples(&text), ["a_total 2", "b_total 4", "c 4"], "{text}");
    assert_eq!(failures(&text), [], "{text}");
    // Empty lines are skipped silently: 6 metric lines + 2 barrier lines, in 3 + 2 datagrams.
    // (The last barrier's batch may be flushed just after the scrape that saw it: poll.)
    wait_until(p.t.http, "8 lines in 5 datagrams", |t| {
        family_sum(t, "tallyd_lines_received_total") == 8.0
            && family_sum(t, "tallyd_datagrams_received_total") == 5.0
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_errors_are_counted_by_reason_every_time() {
    // Sent twice: the second line is answered by the worker's cache and must count again.
    let line: &[u8] = b"foo:1|c|#flag,:v,k:,ok:1";
    row(
        &[line, line],
        &[r#"foo_total{ok="1"} 2"#],
        &[
            (r#"tallyd_tag_errors_total{reason="empty_key"}"#, 2.0),
            (r#"tallyd_tag_errors_total{reason="empty_value"}"#, 2.0),
            (r#"tallyd_tag_errors_total{reason="missing_value"}"#, 2.0),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_are_escaped_and_duplicates_last_wins() {
    row(
        &[b"foo:1|c|#k:a\\b\"c,k2:x,k2:y"],
        &[r#"foo_total{k="a\\b\"c",k2="y"} 1"#],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_dropped_and_counted() {
    let mut want = histogram(
        "h",
        "",
        ["0", "0", "0", "0", "0", "0", "0", "1", "1", "1", "1"],
        "1",
        "1",
    );
    want.insert(0, "g_count 5".into());
    want.push("h_total 1".into());
    want.push("t 1".into());
    row(
        &[
            // The first type wins.
            b"t:1|g",
            b"t:1|ms\nt:1|s",
            // An observer whose _count would collide with an existing gauge.
            b"g_count:5|g\ng:1|h",
            // A gauge whose name collides with an existing histogram's suffix.
            b"h:1|h\nh_sum:1|g\nh_bucket:2|g",
            // A counter is `h_total`: no collision with the histogram `h`.
            b"h:1|c",
        ],
        &strs(&want),
        &[(r#"tallyd_samples_dropped_total{reason="conflict"}"#, 5.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_tallyd_self_metrics_are_refused() {
    let mut p = Probe::start("").await;
    p.send(
        b"tallyd_series:1|g\nprocess_open_fds:1|g\nprocess.open.fds:1|g\n\
          tallyd_series:1|c\ntallyd_build_info:5|g\nprocess_cpu_seconds:1|c\ntallyd_anything:1|h",
    );
    let text = p.settle().await;
    assert_eq!(samples(&text), Vec::<&str>::new(), "{text}");
    assert_eq!(
        failures(&text),
        vec![(
            r#"tallyd_samples_dropped_total{reason="reserved_name"}"#,
            7.0
        )],
        "{text}"
    );
    // The self metrics are untouched: one barrier series, one build_info, one open-fds line.
    assert_eq!(value(&text, "tallyd_series"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, r#"tallyd_build_info{version="0.1.0"}"#),
        Some(1.0)
    );
    let fds_lines = text
        .lines()
        .filter(|l| l.starts_with("process_open_fds"))
        .count();
    assert_eq!(fds_lines, 1, "{text}");
    assert_ne!(value(&text, "process_open_fds"), Some(1.0), "{text}");
    assert_eq!(
        text.matches("# TYPE tallyd_series ").count(),
        1,
        "one family per name; {text}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_buckets_and_sample_rates_from_config() {
    // Timers are converted ms -> s before bucketing; custom bounds from [defaults].
    let mut p = Probe::start("[defaults]\ntimer_buckets = [0.1, 0.5]\n").await;
    p.send(b"lat:50|ms\nlat:300|ms|@0.25\nlat:2000|ms");
    let text = p.settle().await;
    assert_eq!(
        samples(&text),
        vec![
            r#"lat_bucket{le="0.1"} 1"#,
            r#"lat_bucket{le="0.5"} 5"#,
            r#"lat_bucket{le="+Inf"} 6"#,
            "lat_sum 3.25",
            "lat_count 6",
        ],
        "{text}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_switches_turn_dialects_off() {
    let mut p = Probe::start(
        "[parse]\ndogstatsd_tags = false\ninfluxdb_tags = false\nlibrato_tags = false\n\
         signalfx_tags = false\ncontainer_id_label = true\n",
    )
    .await;
    p.send(b"in,env=prod:1|c\nlib#env=prod:1|c\nsfx.[env=prod]x:1|c\ndd:1|c|#env:prod");
    p.send(b"cid:1|c|c:abc123\ncid:1|c|#a:b|c:");
    let text = p.settle().await;
    assert_eq!(
        samples(&text),
        [
            r#"cid_total{container_id="abc123"} 1"#,
            "cid_total 1",
            "dd_total 1",
            "in_env_prod_total 1",
            "lib_env_prod_total 1",
            "sfx__env_prod_x_total 1",
        ],
        "{text}"
    );
    assert_eq!(failures(&text), [], "{text}");
    p.stop().await;
}

/// A datagram longer than `max_datagram_size` (MSG_TRUNC): its complete lines are used, the
/// cut-off last line is counted as truncated and never parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_datagram_drops_only_its_cut_line() {
    let cfg = "[http]\nlisten = \"127.0.0.1:0\"\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
               max_datagram_size = 64\n";
    let t = TestDaemon::start(cfg).await;
    // 50 bytes of whole lines, then a line cut at byte 64 (it would read cut:111...|c).
    let mut d = b"a:1|c\nb:2|c\nc:3|g\nd:1|c|#k:v\nee:1|c\nff:2|c\ngg:3|c\n".to_vec();
    assert_eq!(d.len(), 50);
    d.extend_from_slice(format!("cut:{}|c", "1".repeat(40)).as_bytes());
    send(t.udp[0], &d);
    send(t.udp[0], b"after:1|c");
    let text = wait_for(
        t.http,
        &[
            ("a_total", 1.0),
            ("b_total", 2.0),
            ("c", 3.0),
            (r#"d_total{k="v"}"#, 1.0),
            ("ee_total", 1.0),
            ("ff_total", 2.0),
            ("gg_total", 3.0),
            ("after_total", 1.0),
            (r#"tallyd_parse_errors_total{reason="truncated"}"#, 1.0),
        ],
    )
    .await;
    assert!(!text.contains("cut"), "{text}");
    assert_eq!(
        family_sum(&text, "tallyd_datagrams_truncated_total"),
        1.0,
        "{text}"
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Stream and Unix datagram listeners.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_lines_long_line_and_final_line_without_newline() {
    let t = TestDaemon::start(&config_text(
        1,
        "[[tcp]]\nlisten = \"127.0.0.1:0\"\nmax_line_length = \"1KiB\"\n",
    ))
    .await;
    let tcp: SocketAddr = t.d().tcp_addrs()[0];
    // One write: a good line, a too-long line, the next line (counted), a last line with no \n.
    let long = format!("long:{}|c", "1".repeat(2000));
    let payload = format!("a:1|c\n{long}\nb:2|c\r\nc:3|g");
    send_tcp(tcp, payload.as_bytes());
    let text = wait_for(
        t.http,
        &[
            ("a_total", 1.0),
            ("b_total", 2.0),
            ("c", 3.0),
            (r#"tallyd_parse_errors_total{reason="line_too_long"}"#, 1.0),
        ],
    )
    .await;
    assert!(!text.lines().any(|l| l.starts_with("long_total")), "{text}");

    // The long line spread over several writes on one connection; the next line still counts.
    let mut s = std::net::TcpStream::connect(tcp).expect("connect");
    use std::io::Write;
    s.write_all(b"a:1|c\nlong:").unwrap();
    for _ in 0..40 {
        s.write_all(&[b'1'; 100]).unwrap();
        s.flush().unwrap();
    }
    s.write_all(b"|c\nb:1|c\n").unwrap();
    s.write_all(b"d:7|c").unwrap();
    drop(s);
    let text = wait_for(
        t.http,
        &[
            ("a_total", 2.0),
            ("b_total", 3.0),
            ("d_total", 7.0),
            (r#"tallyd_parse_errors_total{reason="line_too_long"}"#, 2.0),
        ],
    )
    .await;
    assert!(!text.lines().any(|l| l.starts_with("long_total")), "{text}");
    assert_eq!(
        failures(&text),
        vec![(r#"tallyd_parse_errors_total{reason="line_too_long"}"#, 2.0)],
        "{text}"
    );
    // Counted per listener too, with the connections; a stream has no datagrams.
    let listener = format!("{{listener=\"tcp://{tcp}\"}}");
    assert_eq!(
        value(&text, &format!("tallyd_tcp_lines_too_long_total{listener}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("tallyd_tcp_connections_accepted_total{listener}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("tallyd_datagrams_received_total{listener}")),
        None,
        "{text}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unixgram_listener_receives_lines_and_removes_its_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let t = TestDaemon::start(&config_text(
        1,
        &format!(
            "[[unixgram]]\npath = \"{}\"\nmode = \"0600\"\n",
            path.display()
        ),
    ))
    .await;
    let meta = std::fs::metadata(&path).expect("socket file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    s.send_to(b"ux:1|c\nux:2|c|#via:unix", &path).unwrap();
    s.send_to(b"uxg:5|g", &path).unwrap();
    let text = wait_for(
        t.http,
        &[
            ("ux_total", 1.0),
            (r#"ux_total{via="unix"}"#, 2.0),
            ("uxg", 5.0),
        ],
    )
    .await;
    assert!(
        text.contains(&format!("listener=\"unixgram://{}\"", path.display())),
        "{text}"
    );
    t.stop().await;
    assert!(!path.exists(), "the socket file is removed at stop");
}

// ---------------------------------------------------------------------------------------------
// Volume: exact totals under load.
// ---------------------------------------------------------------------------------------------

/// 200,000 increments over 2 sender sockets into 50 names, two UDP workers. The senders pace
/// themselves on the daemon's own datagram counter (at most `WINDOW` datagrams in flight), so
/// the test stays below capacity on a loaded machine instead of hoping a sleep is long enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_increments_are_exact() {
    const NAMES: usize = 50;
    const SENDERS: usize = 2;
    const DATAGRAMS_PER_SENDER: usize = 2000; // x 50 lines x 2 senders = 200,000
    const WINDOW: u64 = 200;
    let t = TestDaemon::start(&config_text(2, "")).await;
    let udp = t.udp[0];
    let telemetry = t.d().telemetry().clone();
    // Pacing reads the daemon's counter in-process (cheap); the oracle is the scrape.
    let datagrams = telemetry
        .datagrams
        .with_label_values(&["udp://127.0.0.1:0"]);
    let received = move || -> u64 { datagrams.get() };
    let sent = Arc::new(AtomicU64::new(0));
    let payload: Vec<u8> = (0..NAMES)
        .map(|i| format!("load.n{i:02}:1|c"))
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    let threads: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (sent, payload, received) = (sent.clone(), payload.clone(), received.clone());
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.connect(udp).unwrap();
                let deadline = Instant::now() + DEADLINE;
                for _ in 0..DATAGRAMS_PER_SENDER {
                    while sent.load(Ordering::SeqCst) >= received() + WINDOW {
                        assert!(Instant::now() < deadline, "the daemon stopped reading");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    sock.send(&payload).unwrap();
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let want: Vec<(String, f64)> = (0..NAMES)
        .map(|i| {
            (
                format!("load_n{i:02}_total"),
                (SENDERS * DATAGRAMS_PER_SENDER) as f64,
            )
        })
        .collect();
    let want_ref: Vec<(&str, f64)> = want.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let text = wait_for(t.http, &want_ref).await;
    let total: f64 = statsd_samples(&text)
        .iter()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 200_000.0);
    assert_eq!(family_sum(&text, "tallyd_udp_kernel_drops_total"), 0.0);
    assert_eq!(
        value(&text, r#"tallyd_samples_total{type="counter"}"#),
        Some(200_000.0)
    );
    t.stop().await;
}

/// Awaits every task, keeping each outcome (so the spinners are stopped before a panic).
async fn join_all<T>(
    hs: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        out.push(h.await);
    }
    out
}

/// Concurrent scrapes are always complete expositions (a streamed body once ended early and
/// answered 200 with nothing in it; `scrape_text` asserts the self-metrics are present).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_are_complete() {
    let t = TestDaemon::start(&config_text(1, "")).await;
    t.send(b"a:1|c");
    wait_for(t.http, &[("a_total", 1.0)]).await;
    // Busy threads make the OS preempt the HTTP workers at arbitrary points, which is what
    // exposed the race (a render finishing between two polls of the body).
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                while busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let http = t.http;
            tokio::spawn(async move {
                for _ in 0..200 {
                    let text = scrape_text(http).await;
                    assert_eq!(statsd_samples(&text), ["a_total 1"], "{text}");
                }
            })
        })
        .collect();
    let results: Vec<_> = join_all(scrapers).await;
    busy.store(false, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    for r in results {
        r.expect("scraper");
    }
    t.stop().await;
}

/// Signed gauges are a dialect: deltas by default (Etsy StatsD, statsd_exporter), absolute
/// values on a listener with `gauge_signs = "absolute"` (DogStatsD clients), per listener and
/// transport, cached lines included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauge_signs_are_a_per_listener_choice() {
    let t = TestDaemon::start(&config_text(
        1,
        "[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 1\ngauge_signs = \"absolute\"\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:0\"\ngauge_signs = \"absolute\"\n",
    ))
    .await;
    let (etsy, dd) = (t.udp[0], t.udp[1]);
    for (to, name) in [(etsy, "etsy"), (dd, "dog")] {
        // Twice, so the second round goes through the writers' caches.
        for _ in 0..2 {
            send(
                to,
                format!("{name}.g:10|g\n{name}.g:-3|g\n{name}.p:+4|g").as_bytes(),
            );
        }
    }
    send_tcp(
        t.d().tcp_addrs()[0],
        b"tcp.g:10|g\ntcp.g:-3|g\ntcp.p:+4|g\n",
    );
    wait_for(
        t.http,
        &[
            // Deltas: each round sets g to 10 and lowers it by 3, and raises p by 4.
            // Absolute: the last value sent.
            ("etsy_g", 7.0),
            ("etsy_p", 8.0),
            ("dog_g", -3.0),
            ("dog_p", 4.0),
            ("tcp_g", -3.0),
            ("tcp_p", 4.0),
        ],
    )
    .await;
    // A typo is refused with its place.
    let e =
        tallyd::config::Config::from_toml("[[udp]]\ngauge_signs = \"dogstatsd\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("udp[0].gauge_signs"));
    t.stop().await;
}
