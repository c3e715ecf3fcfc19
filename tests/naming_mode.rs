//! `[defaults] naming = "statsd_exporter"` end to end: counters keep their mapped names,
//! observers default to summaries in seconds, `:` is escaped, a name used with two types keeps
//! its first, runs of `-` escape to one `_`, and `honor_labels` lets tags win. Each against the same lines under tallyd's own
//! naming, in the same test, so the difference is what is asserted.

mod common;
mod exposition;

use std::net::UdpSocket;

use common::*;

/// Asserts the StatsD samples of `text` against `want` (series and value): exact, except a
/// quantile, which must be within the sketch's 2% of the value given.
fn assert_samples(text: &str, want: &[(&str, f64)]) {
    let got: Vec<(&str, f64)> = statsd_samples(text)
        .iter()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    let names = |v: &[(&str, f64)]| v.iter().map(|p| p.0.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(want), "{text}");
    for ((k, g), (_, w)) in got.iter().zip(want) {
        if k.contains("quantile=") {
            assert!((g - w).abs() <= w.abs() * 0.02, "{k} = {g}, want {w} ±2%");
        } else {
            assert_eq!(g, w, "{k}");
        }
    }
}

fn sender(t: &TestDaemon) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(t.udp[0]).unwrap();
    s
}

const RULES: &str = r#"
[[mapping]]
match = "app.*.hits"
name = "app:hits"
labels = { page = "$1", env = "mapped" }

[[mapping]]
match = "app.*.honoured"
name = "app_honoured"
labels = { env = "mapped" }
honor_labels = true
"#;

const LINES: &[&str] = &[
    "app.home.hits:2|c|#env:sent",
    "app.home.honoured:5|g|#env:sent",
    "plain.count:3|c",
    "req.time:250|ms",
    "req.time:750|ms",
    "size:4|h",
    "twice:1|c",
    "twice:7|g",
    "dash--name:1|c|#my--tag:v",
];

/// The same lines under both namings: only the counter names, the observer type and `:`
/// differ, and a name sent as a counter and a gauge conflicts only when the counter keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_exporter_names_against_tallyd_names() {
    let t = TestDaemon::start(&config_text(
        1,
        &format!("[defaults]\nnaming = \"statsd_exporter\"\n{RULES}"),
    ))
    .await;
    let s = sender(&t);
    for l in LINES {
        s.send(l.as_bytes()).unwrap();
    }
    wait_datagrams(t.http, "udp://127.0.0.1:0", LINES.len() as u64).await;
    wait_for(t.http, &[("size_count", 1.0)]).await;
    let text = wait_until(t.http, "the conflict counted", |text| {
        value(text, r#"tallyd_samples_dropped_total{reason="conflict"}"#) == Some(1.0)
    })
    .await;
    assert_samples(
        &text,
        &[
            (r#"app_hits{env="mapped",page="home"}"#, 2.0),
            (r#"app_honoured{env="sent"}"#, 5.0),
            (r#"dash_name{my_tag="v"}"#, 1.0),
            ("plain_count", 3.0),
            (r#"req_time{quantile="0.5"}"#, 0.25),
            (r#"req_time{quantile="0.9"}"#, 0.75),
            (r#"req_time{quantile="0.99"}"#, 0.75),
            ("req_time_sum", 1.0),
            ("req_time_count", 2.0),
            (r#"size{quantile="0.5"}"#, 4.0),
            (r#"size{quantile="0.9"}"#, 4.0),
            (r#"size{quantile="0.99"}"#, 4.0),
            ("size_sum", 4.0),
            ("size_count", 1.0),
            ("twice", 1.0),
        ],
    );
    assert!(text.contains("# TYPE plain_count counter\n"), "{text}");
    assert!(text.contains("# TYPE req_time summary\n"), "{text}");
    t.stop().await;

    let t = TestDaemon::start(&config_text(1, RULES)).await;
    let s = sender(&t);
    for l in LINES {
        s.send(l.as_bytes()).unwrap();
    }
    wait_datagrams(t.http, "udp://127.0.0.1:0", LINES.len() as u64).await;
    let text = wait_for(t.http, &[("size_count", 1.0), ("twice", 7.0)]).await;
    let samples = statsd_samples(&text);
    for want in [
        r#"app:hits_total{env="mapped",page="home"} 2"#,
        r#"app_honoured{env="sent"} 5"#,
        "plain_count_total 3",
        r#"req_time_bucket{le="0.25"} 1"#,
        "req_time_count 2",
        "twice_total 1",
        "twice 7",
        r#"dash__name_total{my__tag="v"} 1"#,
    ] {
        assert!(samples.contains(&want), "{want} missing:\n{text}");
    }
    assert_eq!(
        value(&text, r#"tallyd_samples_dropped_total{reason="conflict"}"#),
        Some(0.0)
    );
    t.stop().await;
}

/// `[defaults] observer` overrides what the naming implies, and a rule's `observer` overrides
/// both; `quantiles` and `window` in `[defaults]` shape the summaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_defaults_and_rule_overrides() {
    let t = TestDaemon::start(&config_text(
        1,
        r#"
[defaults]
naming = "statsd_exporter"
quantiles = [0.5]
histogram_buckets = [1.0, 10.0]

[[mapping]]
match = "hist.*"
name = "hist_$1"
observer = "histogram"
"#,
    ))
    .await;
    let s = sender(&t);
    s.send(b"sum.a:3|h").unwrap();
    s.send(b"hist.a:3|h").unwrap();
    let text = wait_for(t.http, &[("sum_a_count", 1.0), ("hist_a_count", 1.0)]).await;
    assert_samples(
        &text,
        &[
            (r#"hist_a_bucket{le="1"}"#, 0.0),
            (r#"hist_a_bucket{le="10"}"#, 1.0),
            (r#"hist_a_bucket{le="+Inf"}"#, 1.0),
            ("hist_a_sum", 3.0),
            ("hist_a_count", 1.0),
            (r#"sum_a{quantile="0.5"}"#, 3.0),
            ("sum_a_sum", 3.0),
            ("sum_a_count", 1.0),
        ],
    );
    t.stop().await;

    let t = TestDaemon::start(&config_text(
        1,
        "[defaults]\nnaming = \"statsd_exporter\"\nobserver = \"histogram\"\nhistogram_buckets = [5.0]\n",
    ))
    .await;
    sender(&t).send(b"h.b:3|h").unwrap();
    let text = wait_for(t.http, &[("h_b_count", 1.0)]).await;
    assert_eq!(value(&text, r#"h_b_bucket{le="5"}"#), Some(1.0), "{text}");
    t.stop().await;
}

/// What `promtool check metrics` says of statsd_exporter's names, as docs/config.md and
/// check-config say it will: exactly one lint finding per counter not named `_total`, nothing
/// else. Without promtool the check is reported as skipped (and fails under CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_flags_only_the_counters_without_total() {
    let t = TestDaemon::start(&config_text(
        1,
        "[defaults]\nnaming = \"statsd_exporter\"\n",
    ))
    .await;
    let s = sender(&t);
    for l in [
        "hits:1|c",
        "done_total:1|c",
        "req.time_seconds:5|ms",
        "temp:3|g",
    ] {
        s.send(l.as_bytes()).unwrap();
    }
    let text = wait_for(t.http, &[("hits", 1.0), ("done_total", 1.0), ("temp", 3.0)]).await;
    t.stop().await;
    let Some((_, report)) = exposition::promtool(&text) else {
        return;
    };
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines,
        [r#"hits counter metrics should have "_total" suffix"#],
        "{report}"
    );
}
