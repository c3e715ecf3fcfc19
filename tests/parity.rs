//! Where tallyd and statsd_exporter were found to differ line by line, what tallyd does, one row
//! per case: the bytes sent, the exact StatsD series that result, and the exact self-metric
//! series that move. docs/protocol.md states each rule; the README lists every difference
//! from statsd_exporter that remains, with its reason.

mod common;

use std::net::UdpSocket;

use common::*;

/// The gauge that marks "everything before it is aggregated"; left out of every assertion.
const BARRIER: &str = "zz_barrier";

/// The self-metrics a row may move; every non-zero series of these is asserted exactly.
const COUNTERS: [&str; 6] = [
    "tallyd_parse_errors_total",
    "tallyd_tag_errors_total",
    "tallyd_samples_dropped_total",
    "tallyd_series_refused_total",
    "tallyd_sample_rates_ignored_total",
    "tallyd_unknown_fields_total",
];

/// Sends `lines` (one datagram each) to a fresh one-worker daemon on `extra` config, waits
/// until they are aggregated, and asserts the StatsD sample lines and the moved counters.
async fn row(extra: &str, lines: &[&str], want: &[&str], moved: &[(&str, f64)]) {
    let t = TestDaemon::start(&config_text(1, extra)).await;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    sock.connect(t.udp[0]).expect("connect sender");
    for l in lines {
        sock.send(l.as_bytes()).expect("send");
    }
    // One sender, one worker: the barrier is aggregated after every line before it, and its
    // second round after the worker flushed the first round's counters.
    for n in 1..=2 {
        sock.send(format!("{BARRIER}:{n}|g").as_bytes()).unwrap();
        wait_for(t.http, &[(BARRIER, f64::from(n))]).await;
    }
    let text = scrape_text(t.http).await;
    let got: Vec<&str> = statsd_samples(&text)
        .into_iter()
        .filter(|l| !l.starts_with(BARRIER))
        .collect();
    assert_eq!(got, want, "series for {lines:?}; scrape:\n{text}");
    let counted: Vec<(&str, f64)> = COUNTERS.iter().flat_map(|c| nonzero(&text, c)).collect();
    assert_eq!(counted, moved, "counters for {lines:?}; scrape:\n{text}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn le_and_quantile_are_labels_on_counters_and_gauges() {
    row(
        "",
        &["lec:1|c|#le:1", "lec:1|c|#le:2"],
        &[r#"lec_total{le="1"} 1"#, r#"lec_total{le="2"} 1"#],
        &[],
    )
    .await;
    row(
        "",
        &["qg:5|g|#quantile:0.5", "qg:7|g|#quantile:0.9"],
        &[r#"qg{quantile="0.5"} 5"#, r#"qg{quantile="0.9"} 7"#],
        &[],
    )
    .await;
    // On the types whose exposition writes them, they are still refused and counted.
    row(
        "[defaults]\nhistogram_buckets = [1.0]\n",
        &["lh:0.5|h|#le:9,env:a"],
        &[
            r#"lh_bucket{env="a",le="1"} 1"#,
            r#"lh_bucket{env="a",le="+Inf"} 1"#,
            r#"lh_sum{env="a"} 0.5"#,
            r#"lh_count{env="a"} 1"#,
        ],
        &[(r#"tallyd_tag_errors_total{reason="reserved_label"}"#, 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brackets_follow_one_rule_in_every_position() {
    // A lone bracket anywhere: the name is used as sent (sanitised), no tag syntax is read.
    row(
        "",
        &["[tag1=bar,tag2=bazfoo.test:100|c"],
        &["_tag1_bar_tag2_bazfoo_test_total 100"],
        &[(
            r#"tallyd_tag_errors_total{reason="malformed_brackets"}"#,
            1.0,
        )],
    )
    .await;
    row(
        "",
        &["tag1=bar,tag2=baz]foo.test:100|c"],
        &["tag1_bar_tag2_baz_foo_test_total 100"],
        &[(
            r#"tallyd_tag_errors_total{reason="malformed_brackets"}"#,
            1.0,
        )],
    )
    .await;
    row(
        "",
        &["a]b[c:1|c"],
        &["a_b_c_total 1"],
        &[(
            r#"tallyd_tag_errors_total{reason="malformed_brackets"}"#,
            1.0,
        )],
    )
    .await;
    // The first group is the tags; brackets after it are part of the name.
    row(
        "",
        &["foo.[a=1]bar[b=2]:1|c"],
        &[r#"foo_bar_b_2__total{a="1"} 1"#],
        &[],
    )
    .await;
    // At the start, in the middle, at the end.
    row(
        "",
        &["[env=a]s.one:1|c", "s.[env=a]two:1|c", "s.three[env=a]:1|c"],
        &[
            r#"s_one_total{env="a"} 1"#,
            r#"s_three_total{env="a"} 1"#,
            r#"s_two_total{env="a"} 1"#,
        ],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_rates() {
    // A number outside (0, 1]: the value counts at rate 1, the ignored rate is counted.
    for rate in ["0", "0.0", "1e-400", "2"] {
        let line = format!("foo:2|c|@{rate}");
        row(
            "",
            &[&line],
            &["foo_total 2"],
            &[("tallyd_sample_rates_ignored_total", 1.0)],
        )
        .await;
    }
    // Not a number: the line is refused and counted, as the DogStatsD agent does.
    for rate in ["bar", ""] {
        let line = format!("foo:2|c|@{rate}");
        row(
            "",
            &[&line],
            &[],
            &[(
                r#"tallyd_parse_errors_total{reason="invalid_sample_rate"}"#,
                1.0,
            )],
        )
        .await;
    }
    // Two rates: the last one applies (as in the DogStatsD agent).
    row("", &["foo:1|c|@0.5|@0.25"], &["foo_total 4"], &[]).await;
    // A stray `:` after the type makes the type unknown: refused and counted.
    row(
        "",
        &["foo:1|c:"],
        &[],
        &[(r#"tallyd_parse_errors_total{reason="unknown_type"}"#, 1.0)],
    )
    .await;
    // An observation weighs 1/rate: `_count` and the buckets are fractional.
    row(
        "[defaults]\ntimer_buckets = [1.0]\n",
        &["sr:10|ms|@0.5"],
        &[
            r#"sr_bucket{le="1"} 2"#,
            r#"sr_bucket{le="+Inf"} 2"#,
            "sr_sum 0.02",
            "sr_count 2",
        ],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_values() {
    // Every character outside [a-zA-Z0-9_:] becomes one `_`; runs are kept.
    row(
        "",
        &["with--doubledash:1|c"],
        &["with__doubledash_total 1"],
        &[],
    )
    .await;
    // Only decimal values: hex floats and `_` separators are refused.
    for v in ["0x10p0", "1_000"] {
        let line = format!("foo:{v}|c");
        row(
            "",
            &[&line],
            &[],
            &[(r#"tallyd_parse_errors_total{reason="invalid_value"}"#, 1.0)],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_and_check_families_are_protected_and_configurable() {
    // A user line onto the events' family is refused as a reserved name.
    row(
        "",
        &["_e{5,4}:title|text", "statsd.events:1|c"],
        &[r#"statsd_events_total{alert_type="info",priority="normal"} 1"#],
        &[(
            r#"tallyd_samples_dropped_total{reason="reserved_name"}"#,
            1.0,
        )],
    )
    .await;
    row(
        "",
        &["_sc|db|1", "statsd.service_check_status:3|g"],
        &[r#"statsd_service_check_status{check="db"} 1"#],
        &[(
            r#"tallyd_samples_dropped_total{reason="reserved_name"}"#,
            1.0,
        )],
    )
    .await;
    // Renamed: the old name is free for users, the new one protected.
    row(
        "[dogstatsd]\nevents_family = \"dd_events_total\"\nservice_checks_family = \"dd_checks\"\n",
        &[
            "_e{5,4}:title|text",
            "_sc|db|2",
            "statsd.events:1|c",
            "dd.events:1|c",
            "dd_checks:1|g",
        ],
        &[
            r#"dd_checks{check="db"} 2"#,
            r#"dd_events_total{alert_type="info",priority="normal"} 1"#,
            "statsd_events_total 1",
        ],
        &[(
            r#"tallyd_samples_dropped_total{reason="reserved_name"}"#,
            2.0,
        )],
    )
    .await;
}
