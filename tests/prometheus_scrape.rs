//! A real Prometheus (Debian's `prometheus`) scraping tallyd, as operators run it:
//!
//! - with `--enable-feature=native-histograms` it asks for protobuf and ingests native
//!   histograms: after observations over five decades, sent as `ms`, `h` and `d` with sample
//!   rates, `histogram_count` and `histogram_sum` equal the totals sent and
//!   `histogram_quantile` is within one bucket (the configured factor) of the true quantile;
//! - without it, it asks for OpenMetrics, and every series it stores equals what the 0.0.4
//!   text scrape shows.
//!
//! Without `prometheus` on the PATH the tests say SKIPPED (a failure under CI=true).

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;

use common::prom::{Prom, have_prometheus};
use common::*;

/// Observations of `lat`: (line, weight, value in the exported unit), repeated `n` times.
const OBSERVED: &[(&str, u32, f64, f64)] = &[
    ("lat:125|ms", 40, 1.0, 0.125),
    ("lat:1|h", 30, 1.0, 1.0),
    ("lat:8|d|@0.5", 10, 2.0, 8.0),
    ("lat:64|h", 9, 1.0, 64.0),
    ("lat:512|d", 1, 1.0, 512.0),
];

fn scrape_config(target: std::net::SocketAddr) -> String {
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: tallyd\n  static_configs:\n  - targets: ['{target}']\n"
    )
}

async fn fed_daemon(extra: &str) -> (TestDaemon, String) {
    let t = TestDaemon::start(&config_text(1, extra)).await;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(t.udp[0]).unwrap();
    let mut sent = 0;
    for (line, n, ..) in OBSERVED {
        for _ in 0..*n {
            s.send(line.as_bytes()).unwrap();
            sent += 1;
        }
    }
    for l in [
        "hits:3|c|#env:prod",
        "temp:21.5|g",
        "users:a|s",
        "req.time:250|ms",
    ] {
        s.send(l.as_bytes()).unwrap();
        sent += 1;
    }
    let text = wait_datagrams(t.http, "udp://127.0.0.1:0", sent).await;
    (t, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_histograms_in_a_real_prometheus() {
    if !have_prometheus() {
        return;
    }
    let (t, _) = fed_daemon("").await;
    let dir = tempfile::tempdir().unwrap();
    let prom = Prom::start_with(
        dir.path(),
        None,
        &scrape_config(t.http),
        &["--enable-feature=native-histograms"],
    );
    let count: f64 = OBSERVED.iter().map(|(_, n, w, _)| f64::from(*n) * w).sum();
    let sum: f64 = OBSERVED
        .iter()
        .map(|(_, n, w, v)| f64::from(*n) * w * v)
        .sum();
    assert_eq!((count, sum), (100.0, 1283.0));
    prom.wait("histogram_count(lat)", |r| r.len() == 1 && r[0].1 == count)
        .await;
    let r = prom.query("histogram_sum(lat)");
    assert_eq!(r[0].1, sum, "{r:?}");
    // The true quantiles (by rank q * count) and the resolution: factor 1.1 is schema 3,
    // bounds 2^(1/8) = 1.0905 apart.
    let factor = 2f64.powf(1.0 / 8.0);
    for (q, truth) in [(0.5, 1.0), (0.9, 8.0), (0.99, 64.0)] {
        let r = prom.query(&format!("histogram_quantile({q}, lat)"));
        let got = r[0].1;
        assert!(
            got <= truth * factor && got >= truth / factor,
            "quantile {q}: {got}, true {truth}, allowed factor {factor}"
        );
    }
    // Prometheus asked for protobuf, and the classic series are not what it stored.
    let text = scrape_text(t.http).await;
    assert!(
        value(&text, r#"tallyd_scrapes_total{format="protobuf"}"#).unwrap() >= 1.0,
        "{text}"
    );
    assert!(prom.query("lat_bucket").is_empty());
    prom.stop();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openmetrics_scrape_stores_what_the_text_shows() {
    if !have_prometheus() {
        return;
    }
    let (t, _) = fed_daemon("").await;
    let dir = tempfile::tempdir().unwrap();
    let prom = Prom::start_with(dir.path(), None, &scrape_config(t.http), &[]);
    let text = scrape_text(t.http).await;
    let want = statsd_samples(&text);
    assert!(want.len() > 20, "{text}");
    // Every StatsD sample of the text scrape, as Prometheus stored it from OpenMetrics.
    prom.wait(
        "count({job=\"tallyd\",__name__!~\"tallyd_.*|process_.*|up|scrape_.*\"})",
        |r| r.len() == 1 && r[0].1 == want.len() as f64,
    )
    .await;
    for line in want {
        let (series, v) = line.rsplit_once(' ').unwrap();
        let v: f64 = v.parse().unwrap();
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let labels = labels.trim_end_matches('}');
        let sel = if labels.is_empty() {
            format!("{name}{{job=\"tallyd\"}}")
        } else {
            format!("{name}{{{labels},job=\"tallyd\"}}")
        };
        let r = prom.query(&sel);
        let got: Vec<(BTreeMap<String, String>, f64)> = r;
        assert_eq!(got.len(), 1, "{sel}: {got:?}");
        assert!(
            got[0].1 == v || (got[0].1.is_nan() && v.is_nan()),
            "{sel}: Prometheus {}, text {v}",
            got[0].1
        );
    }
    let text = scrape_text(t.http).await;
    assert!(
        value(&text, r#"tallyd_scrapes_total{format="openmetrics"}"#).unwrap() >= 1.0,
        "{text}"
    );
    prom.stop();
    t.stop().await;
}
