//! `tallyd-blast`, the load generator every figure in docs/BENCHMARKS.md comes from: the built
//! binary sends to a real daemon, and what it says it sent is exactly what the daemon counted,
//! series by series.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;

/// Runs `tallyd-blast` with `args` against `target` (off the async runtime); returns its
/// `key=value` report.
async fn blast(
    target: std::net::SocketAddr,
    args: &'static [&'static str],
) -> BTreeMap<String, String> {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tallyd-blast"))
            .args(["--target", &target.to_string()])
            .args(args)
            .output()
            .expect("run tallyd-blast")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "blast failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("sent "))
        .expect("report");
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The sum of every sample of `family` (any labels).
fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Packed to 500 bytes from three sender sockets, paced, 7 names x 4 tag values: every one of
/// the 20,000 lines lands in the series its number says, and the datagram count matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_from_three_senders_arrives_exactly() {
    let t = TestDaemon::start(&config_text(2, "")).await;
    let target = t.udp[0];
    let r = blast(
        target,
        &[
            "--count",
            "20000",
            "--rate",
            "400000",
            "--duration",
            "60s",
            "--names",
            "7",
            "--tags",
            "2",
            "--packed",
            "500",
            "--senders",
            "3",
            "--prefix",
            "bl",
        ],
    )
    .await;
    assert_eq!(r["lines"], "20000");
    assert_eq!(r["send_errors"], "0");
    let datagrams: f64 = r["datagrams"].parse().unwrap();
    // Lines of 22-23 bytes packed to 500: at least 20 to a datagram.
    assert!(datagrams <= 20000.0 / 20.0 + 3.0, "{datagrams} datagrams");
    let listener = "udp://127.0.0.1:0";
    let mut want = vec![(
        format!("tallyd_datagrams_received_total{{listener=\"{listener}\"}}"),
        datagrams,
    )];
    let mut per_series: BTreeMap<String, f64> = BTreeMap::new();
    for n in 0u64..20000 {
        let v = (n / 7) % 4;
        *per_series
            .entry(format!("bl_{}_total{{k0=\"v{v}\",k1=\"v{v}\"}}", n % 7))
            .or_default() += 1.0;
    }
    assert_eq!(per_series.len(), 28);
    want.extend(per_series);
    let want: Vec<(&str, f64)> = want.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let text = wait_for(t.http, &want).await;
    assert_eq!(family_sum(&text, "tallyd_lines_received_total"), 20000.0);
    assert_eq!(family_sum(&text, "tallyd_udp_kernel_drops_total"), 0.0);
    t.stop().await;
}

/// One line per datagram, no tags: one datagram per line, every one counted. (Paced: flat out,
/// 5,000 datagrams could outrun a 4 MiB receive buffer on a loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_datagram() {
    let t = TestDaemon::start(&config_text(1, "")).await;
    let target = t.udp[0];
    let r = blast(
        target,
        &[
            "--count", "5000", "--rate", "100000", "--names", "3", "--prefix", "one",
        ],
    )
    .await;
    assert_eq!(
        (r["lines"].as_str(), r["datagrams"].as_str()),
        ("5000", "5000")
    );
    // The series and the self-metrics together: a worker counts a batch just after it
    // aggregates it, so a scrape can fall between the two.
    let text = wait_for(
        t.http,
        &[
            ("one_0_total", 1667.0),
            ("one_1_total", 1667.0),
            ("one_2_total", 1666.0),
            (
                "tallyd_datagrams_received_total{listener=\"udp://127.0.0.1:0\"}",
                5000.0,
            ),
        ],
    )
    .await;
    assert_eq!(family_sum(&text, "tallyd_lines_received_total"), 5000.0);
    t.stop().await;
}
