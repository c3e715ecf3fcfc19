//! Opt-in summaries: quantiles from the mergeable sketch, across two workers, over a window.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tallyd::clock::ManualClock;

const RULES: &str = r#"
[[mapping]]
match = "rpc.*.latency"
name = "rpc_latency_seconds"
labels = { method = "$1" }
observer = "summary"
quantiles = [0.5, 0.9, 0.99]
window = "60s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_quantiles_merge_across_workers_and_slide() {
    let clock = Arc::new(ManualClock::default());
    let c = clock.clone();
    let t = TestDaemon::start_with(&config_text(2, RULES), |o| o.clock = c).await;
    // 1..=1000 ms from two sender sockets (the kernel spreads senders over the workers).
    let mut a = String::new();
    let mut b = String::new();
    for v in 1..=1000 {
        let line = format!("rpc.get.latency:{v}|ms\n");
        if v % 2 == 0 {
            a.push_str(&line)
        } else {
            b.push_str(&line)
        }
    }
    for text in [&a, &b] {
        let mut buf = String::new();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for line in text.lines() {
            if buf.len() + line.len() + 1 > 1400 {
                sender.send_to(buf.as_bytes(), t.udp[0]).unwrap();
                buf.clear();
            }
            buf.push_str(line);
            buf.push('\n');
        }
        sender.send_to(buf.as_bytes(), t.udp[0]).unwrap();
    }
    let text = wait_for(
        t.http,
        &[("rpc_latency_seconds_count{method=\"get\"}", 1000.0)],
    )
    .await;
    assert!(
        text.contains("# TYPE rpc_latency_seconds summary"),
        "{text}"
    );
    for (q, exact) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99)] {
        let got = value(
            &text,
            &format!("rpc_latency_seconds{{method=\"get\",quantile=\"{q}\"}}"),
        )
        .unwrap();
        assert!(
            (got - exact).abs() / exact <= 0.02 + 1e-9,
            "q{q}: got {got}, want {exact} within 2%"
        );
    }
    let sum = value(&text, "rpc_latency_seconds_sum{method=\"get\"}").unwrap();
    assert!((sum - 500.5).abs() < 1e-6, "{sum}");
    // After a whole window without observations the quantiles are NaN; count and sum stay.
    clock.advance(Duration::from_secs(61));
    let text = wait_until(t.http, "quantiles to expire", |s| {
        s.contains("rpc_latency_seconds{method=\"get\",quantile=\"0.5\"} NaN")
    })
    .await;
    assert_eq!(
        value(&text, "rpc_latency_seconds_count{method=\"get\"}"),
        Some(1000.0)
    );
    t.stop().await;
}

#[test]
fn summary_keys_are_validated() {
    use tallyd::config::live::Snapshot;
    let e = Snapshot::from_toml("[[mapping]]\nmatch = \"a.*\"\nname = \"x\"\nquantiles = [0.5]\n")
        .unwrap_err();
    assert!(e.message.contains("observer"), "{e}");
    let e = Snapshot::from_toml(
        "[[mapping]]\nmatch = \"a.*\"\nname = \"x\"\nobserver = \"summary\"\nquantiles = [1.5]\n",
    )
    .unwrap_err();
    assert_eq!(e.line, 5, "{e}");
}
