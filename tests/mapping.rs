//! `[[mapping]]` rules, expiry and limits, end to end: glob captures in names and
//! labels, file order across globs and regexes, type filters, `action = "drop"`, per-rule and
//! default ttl with an injected clock, the type claim released on expiry, `[limits]`, the
//! shadowed-rule warning of `check-config`, and a reload of 11,000 rules.
//!
//! Every test sends from one socket to a one-worker daemon, so lines are aggregated in the
//! order sent; values are read from real scrapes.

mod common;

/// The benches' generator of large mapping files.
#[path = "../benches/common/mod.rs"]
mod bench;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tallyd::clock::ManualClock;

/// A sender socket connected to the daemon's UDP listener.
fn sender(t: &TestDaemon) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(t.udp[0]).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_captures_in_name_and_labels() {
    let t = TestDaemon::start(&config_text(
        1,
        r#"
[[mapping]]
match = "api.*.*.requests"
name = "api_${1}_requests"
labels = { method = "$2", both = "${1}-$2", fixed = "x" }

[[mapping]]
match = "job.*.dur*"
type = "observer"
name = "job_duration_seconds"
labels = { job = "$1", unit = "$2" }
"#,
    ))
    .await;
    let s = sender(&t);
    s.send(b"api.users.get.requests:3|c\napi.users.get.requests:2|c|#env:prod")
        .unwrap();
    s.send(b"api.orders.post.requests:1|c").unwrap();
    // `*` is one segment: four segments do not match a three-segment glob.
    s.send(b"api.v1.users.get.requests:1|c").unwrap();
    s.send(b"job.backup.durms:1500|ms").unwrap();
    let text = wait_for(
        t.http,
        &[
            (
                r#"api_users_requests_total{both="users-get",fixed="x",method="get"}"#,
                3.0,
            ),
            (
                r#"api_users_requests_total{both="users-get",env="prod",fixed="x",method="get"}"#,
                2.0,
            ),
            (
                r#"api_orders_requests_total{both="orders-post",fixed="x",method="post"}"#,
                1.0,
            ),
            ("api_v1_users_get_requests_total", 1.0),
            (r#"job_duration_seconds_count{job="backup",unit="ms"}"#, 1.0),
            (r#"job_duration_seconds_sum{job="backup",unit="ms"}"#, 1.5),
        ],
    )
    .await;
    assert_eq!(value(&text, "tallyd_unmapped_samples_total"), Some(1.0));
    t.stop().await;
}

/// Rules are tried in file order, globs and regexes interleaved: a glob after a regex that
/// matches first never wins, and a later rule gets only what the earlier ones leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_rule_wins_in_file_order() {
    let t = TestDaemon::start(&config_text(
        1,
        r#"
[[mapping]]
regex = 'api\.(\w+)\.requests'
name = "re_$1"

[[mapping]]
match = "api.*.requests"
name = "glob_$1"
labels = { ep = "$1" }

[[mapping]]
match = "web.*.hits"
name = "web_glob"

[[mapping]]
regex = 'web\.(.+)\.hits'
name = "web_re_$1"
"#,
    ))
    .await;
    let s = sender(&t);
    // The regex (first) matches `\w+`; the glob only gets what it leaves (`a-b`).
    s.send(b"api.users.requests:1|c\napi.a-b.requests:1|c")
        .unwrap();
    // The glob (first) wins one segment; the regex takes several.
    s.send(b"web.x.hits:1|c\nweb.x.y.hits:1|c").unwrap();
    let text = wait_for(
        t.http,
        &[
            ("re_users_total", 1.0),
            (r#"glob_a_b_total{ep="a-b"}"#, 1.0),
            ("web_glob_total", 1.0),
            ("web_re_x_y_total", 1.0),
        ],
    )
    .await;
    assert!(!text.contains("glob_users"), "{text}");
    assert!(!text.contains("web_re_x_total"), "{text}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filters_and_drop() {
    let t = TestDaemon::start(&config_text(
        1,
        r#"
[[mapping]]
match = "noisy.*"
type = "gauge"
action = "drop"

[[mapping]]
match = "noisy.*"
type = "counter"
name = "noisy_${1}_events"

[[mapping]]
match = "noisy.*"
type = "observer"
name = "noisy_${1}_seconds"
buckets = [0.1, 1]

[[mapping]]
regex = 'debug\..*'
action = "drop"
"#,
    ))
    .await;
    let s = sender(&t);
    s.send(b"noisy.a:5|g\nnoisy.a:2|c\nnoisy.a:300|ms\nnoisy.a:x|s")
        .unwrap();
    s.send(b"debug.one:1|c\ndebug.two:1|g\ndebug.one:1|c")
        .unwrap();
    let text = wait_for(
        t.http,
        &[
            ("noisy_a_events_total", 2.0),
            (r#"noisy_a_seconds_bucket{le="0.1"}"#, 0.0),
            (r#"noisy_a_seconds_bucket{le="1"}"#, 1.0),
            (r#"noisy_a_seconds_bucket{le="+Inf"}"#, 1.0),
            ("noisy_a_seconds_sum", 0.3),
            // No rule for sets: the set keeps its own name.
            ("noisy_a", 1.0),
            (
                r#"tallyd_samples_dropped_total{reason="mapping_drop"}"#,
                4.0,
            ),
            (r#"tallyd_mapping_drops_total{rule="1"}"#, 1.0),
            (r#"tallyd_mapping_drops_total{rule="4"}"#, 3.0),
        ],
    )
    .await;
    // The dropped gauge made no series; nothing else was dropped.
    assert!(!text.contains("debug"), "{text}");
    assert_eq!(
        nonzero(&text, "tallyd_samples_dropped_total"),
        vec![(
            r#"tallyd_samples_dropped_total{reason="mapping_drop"}"#,
            4.0
        )]
    );
    assert_eq!(value(&text, "tallyd_series"), Some(3.0), "{text}");
    t.stop().await;
}

/// Per-rule and default ttl with an injected clock: an idle series leaves `/metrics` and
/// `tallyd_series`, a busy one stays, and the name's type claim goes with its last series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_with_an_injected_clock() {
    let clock = Arc::new(ManualClock::default());
    let c = clock.clone();
    let t = TestDaemon::start_with(
        &config_text(
            1,
            r#"
[defaults]
ttl = "30s"

[[mapping]]
match = "short.*"
name = "short_$1"
ttl = "10s"

[[mapping]]
match = "forever.*"
name = "forever_$1"
ttl = "0s"
"#,
        ),
        move |o| {
            o.clock = c;
            o.sweep_interval = Duration::from_millis(20);
        },
    )
    .await;
    let s = sender(&t);
    s.send(b"short.a:1|c\nshared:7|g\nforever.b:1|c\nbusy:1|c")
        .unwrap();
    wait_for(
        t.http,
        &[
            ("short_a_total", 1.0),
            ("shared", 7.0),
            ("forever_b_total", 1.0),
            ("busy_total", 1.0),
            ("tallyd_series", 4.0),
        ],
    )
    .await;
    // While `shared` is a gauge, a timer of that name is a conflict.
    s.send(b"shared:5|ms").unwrap();
    wait_for(
        t.http,
        &[(r#"tallyd_samples_dropped_total{reason="conflict"}"#, 1.0)],
    )
    .await;

    // 11 s: past the rule's 10 s, within the default 30 s.
    clock.advance(Duration::from_secs(11));
    let text = wait_until(t.http, "short_a expired", |s| {
        value(s, "short_a_total").is_none() && value(s, "tallyd_series") == Some(3.0)
    })
    .await;
    assert_eq!(value(&text, "shared"), Some(7.0), "{text}");
    assert!(
        !text.contains("# HELP short_a_total"),
        "no empty family: {text}"
    );

    // 25 s more, with `busy` updated at 11 s: `shared` (idle 36 s) goes, `busy` (idle 25 s)
    // and `forever_b` (ttl 0) stay.
    s.send(b"busy:1|c").unwrap();
    wait_for(t.http, &[("busy_total", 2.0)]).await;
    clock.advance(Duration::from_secs(25));
    let text = wait_until(t.http, "shared expired", |s| {
        value(s, "shared").is_none() && value(s, "tallyd_series") == Some(2.0)
    })
    .await;
    assert_eq!(value(&text, "busy_total"), Some(2.0), "{text}");
    assert_eq!(value(&text, "forever_b_total"), Some(1.0), "{text}");
    wait_until(t.http, "expired counted", |s| {
        value(s, "tallyd_series_expired_total") == Some(2.0)
    })
    .await;

    // The name is free again: another type may claim it. An expired counter starts over.
    s.send(b"shared:5|ms\nshort.a:1|c").unwrap();
    let text = wait_for(
        t.http,
        &[
            ("shared_count", 1.0),
            ("shared_sum", 0.005),
            ("short_a_total", 1.0),
            ("tallyd_series", 4.0),
        ],
    )
    .await;
    assert!(text.contains("# TYPE shared histogram"), "{text}");
    assert_eq!(
        value(&text, r#"tallyd_samples_dropped_total{reason="conflict"}"#),
        Some(1.0)
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_series_refuses_new_series_only() {
    let t = TestDaemon::start(&config_text(1, "[limits]\nmax_series = 3\n")).await;
    let s = sender(&t);
    s.send(b"a:1|c\nb:1|g\nc:1|c|#k:v").unwrap();
    s.send(b"d:1|c\nc:1|c|#k:w\ne:1|ms").unwrap();
    s.send(b"a:1|c\nb:+2|g\nc:1|c|#k:v\nd:1|c").unwrap();
    let text = wait_for(
        t.http,
        &[
            ("a_total", 2.0),
            ("b", 3.0),
            (r#"c_total{k="v"}"#, 2.0),
            (r#"tallyd_series_refused_total{reason="max_series"}"#, 4.0),
            ("tallyd_series", 3.0),
        ],
    )
    .await;
    assert_eq!(
        statsd_samples(&scrape_text(t.http).await),
        ["a_total 2", "b 3", r#"c_total{k="v"} 2"#]
    );
    assert_eq!(
        value(
            &text,
            r#"tallyd_series_refused_total{reason="max_series_per_metric"}"#
        ),
        Some(0.0)
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_series_per_metric_refuses_per_name() {
    let t = TestDaemon::start(&config_text(1, "[limits]\nmax_series_per_metric = 2\n")).await;
    let s = sender(&t);
    s.send(b"m:1|c|#k:1\nm:1|c|#k:2\nm:1|c|#k:3\nm:1|c|#k:4")
        .unwrap();
    s.send(b"other:1|c|#k:1\nother:1|c|#k:2\nm:1|c|#k:1\nm:1|c|#k:3")
        .unwrap();
    let text = wait_for(
        t.http,
        &[
            (r#"m_total{k="1"}"#, 2.0),
            (r#"m_total{k="2"}"#, 1.0),
            (r#"other_total{k="1"}"#, 1.0),
            (r#"other_total{k="2"}"#, 1.0),
            (
                r#"tallyd_series_refused_total{reason="max_series_per_metric"}"#,
                3.0,
            ),
        ],
    )
    .await;
    assert!(!text.contains(r#"m_total{k="3"}"#), "{text}");
    assert_eq!(
        value(&text, r#"tallyd_series_refused_total{reason="max_series"}"#),
        Some(0.0)
    );
    t.stop().await;
}

/// A file of 11,000 rules (10,000 globs, 1,000 regexes) reloads into a running daemon and the
/// last rule of each kind maps with its captures; a version refused at its last rule leaves
/// the loaded rules in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_thousand_rules_reload_and_map() {
    let t = TestDaemon::start_with(&config_text(1, ""), |o| o.watch = false).await;
    let post = |addr| tokio::task::spawn_blocking(move || http(addr, "POST", "/-/reload"));
    let rules = bench::mapping_rules(10_000, 1_000);
    std::fs::write(&t.config_path, config_text(1, &rules)).unwrap();
    let (status, _, body) = post(t.http).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let s = sender(&t);
    s.send(b"svc9999.users.requests.200:2|c\nrsvc999.orders.latency_ms:250|ms")
        .unwrap();
    let glob = r#"svc9999_requests_total{code="200",endpoint="users"}"#;
    let regex = r#"rsvc999_latency_count{endpoint="orders",unit="ms"}"#;
    wait_for(t.http, &[(glob, 2.0), (regex, 1.0)]).await;

    let bad = format!("{rules}[[mapping]]\nregex = 'oops('\nname = \"x\"\n");
    std::fs::write(&t.config_path, config_text(1, &bad)).unwrap();
    let (status, _, body) = post(t.http).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mapping[11000].regex"), "{body}");
    s.send(b"svc9999.users.requests.200:3|c").unwrap();
    wait_for(t.http, &[(glob, 5.0), (regex, 1.0)]).await;
    t.stop().await;
}
