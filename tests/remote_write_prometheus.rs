//! Remote write into a real Prometheus (Debian's `prometheus`, with
//! `--web.enable-remote-write-receiver`), read back through its HTTP API: exact counter totals,
//! every family equal to tallyd's own scrape, external labels, a series expired by ttl ended by
//! its staleness marker, and an outage: the receiver stopped for several push intervals and
//! restarted on the same port, after which its totals equal what was sent and tallyd's
//! self-metrics account for every failed and retried request.
//!
//! Without `prometheus` on the PATH the tests say SKIPPED (a failure under CI=true).

mod common;

use common::prom::{Prom, have_prometheus};
use common::*;

/// The StatsD samples of a scrape as PromQL selectors with `extra` labels, and their values.
fn selectors(text: &str, extra: &str) -> Vec<(String, f64)> {
    statsd_samples(text)
        .into_iter()
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let sel = match series.split_once('{') {
                Some((n, l)) => format!("{n}{{{},{extra}}}", l.trim_end_matches('}')),
                None => format!("{series}{{{extra}}}"),
            };
            (sel, value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_receives_exact_values_labels_and_staleness() {
    if !have_prometheus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prom = Prom::start(dir.path(), None);
    let t = TestDaemon::start(&config_text(
        1,
        &format!(
            "[[mapping]]\nmatch = \"lat.*\"\nname = \"lat_$1\"\nobserver = \"summary\"\n\n\
             [[mapping]]\nmatch = \"brief.*\"\nname = \"brief_$1\"\nttl = \"2s\"\n\n\
             [[remote_write]]\nname = \"prom\"\nurl = \"{}\"\ninterval = \"250ms\"\n\
             external_labels = {{ host = \"test-1\" }}\n",
            prom.url()
        ),
    ))
    .await;
    let mut hits = 0.0;
    for i in 0..20 {
        t.send(
            format!(
                "hits:{}|c|#env:prod\nq.depth:{i}|g\napi.latency:{}|ms|#route:a\nlat.db:{}|ms",
                i + 1,
                i * 37,
                i * 3
            )
            .as_bytes(),
        );
        hits += f64::from(i + 1);
    }
    t.send(b"users:alice|s\nusers:bob|s\nbrief.gone:1|c");
    let scrape = wait_until(t.http, "the traffic counted", |m| {
        value(m, "hits_total{env=\"prod\"}") == Some(hits)
            && value(m, "brief_gone_total") == Some(1.0)
    })
    .await;
    // Exact counter total, with the external label.
    prom.wait("hits_total{env=\"prod\",host=\"test-1\"}", |r| {
        r.len() == 1 && r[0].1 == hits
    })
    .await;
    // Every family equals the scrape (nothing is sent any more, so the values stand still;
    // the ttl series is left out: it is about to go).
    for (sel, want) in selectors(&scrape, "host=\"test-1\"") {
        if sel.starts_with("brief_") {
            continue;
        }
        prom.wait(&sel, |r| {
            r.len() == 1 && (r[0].1 == want || (r[0].1.is_nan() && want.is_nan()))
        })
        .await;
    }
    // The ttl series expires; its staleness marker ends it at once (no 5-minute lookback).
    prom.wait("brief_gone_total{host=\"test-1\"}", |r| r.is_empty())
        .await;
    // The others are still there.
    assert_eq!(prom.query("hits_total{host=\"test-1\"}").len(), 1);
    t.stop().await;
    prom.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_receiver_loses_no_count() {
    if !have_prometheus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prom = Prom::start(dir.path(), None);
    let addr = prom.addr;
    let t = TestDaemon::start(&config_text(
        1,
        &format!(
            "[[remote_write]]\nname = \"prom\"\nurl = \"{}\"\ninterval = \"200ms\"\n\
             timeout = \"1s\"\nmin_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n",
            prom.url()
        ),
    ))
    .await;
    let sender = Sender::start(t.udp[0], "outage:1|c");
    prom.wait("outage_total", |r| r.len() == 1 && r[0].1 > 0.0)
        .await;
    let before = prom.query("count_over_time(outage_total[1h])")[0].1;
    prom.stop();
    // Several push intervals fail while traffic keeps flowing: five pushes wait in the queue.
    let failed =
        "tallyd_remote_write_requests_failed_total{endpoint=\"prom\",reason=\"connection\"}";
    let queued = "tallyd_remote_write_queue_length{endpoint=\"prom\"}";
    wait_until(t.http, "pushes failing and queued during the outage", |m| {
        value(m, failed).is_some_and(|v| v >= 5.0) && value(m, queued).is_some_and(|v| v >= 5.0)
    })
    .await;
    let prom = Prom::start(dir.path(), Some(addr));
    let sent = sender.stop();
    let m = wait_datagrams(t.http, "udp://127.0.0.1:0", sent).await;
    let dg = "tallyd_datagrams_received_total{listener=\"udp://127.0.0.1:0\"}";
    let counted = value(&m, "outage_total").unwrap();
    assert_eq!(counted, value(&m, dg).unwrap());
    prom.wait("outage_total", |r| r.len() == 1 && r[0].1 == counted)
        .await;
    // The points of the outage were filled in from the queue (a push every 200 ms): the five
    // queued pushes at least, besides those before and after.
    let points = prom.query("count_over_time(outage_total[1h])");
    assert!(
        points[0].1 >= before + 5.0,
        "{points:?}, {before} before the outage"
    );
    // Every failed attempt was retried; nothing was dropped.
    let m = t.scrape().await;
    let sum = |family: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(family) && l.contains("endpoint=\"prom\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let failed = sum("tallyd_remote_write_requests_failed_total{");
    assert!(failed >= 5.0);
    assert_eq!(sum("tallyd_remote_write_retries_total{"), failed);
    assert_eq!(sum("tallyd_remote_write_requests_dropped_total{"), 0.0);
    t.stop().await;
    prom.stop();
}
