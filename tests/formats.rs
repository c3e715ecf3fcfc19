//! The three exposition formats against each other, over real scrapes of the daemon: the
//! protobuf messages decoded with the same client model carry every value of the text format;
//! the OpenMetrics text has the same sample lines, its own headers and `# EOF`, and passes a
//! strict OpenMetrics parser (Python's `prometheus_client`, which CI installs; without it the
//! check says SKIPPED, a failure under CI=true).

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use common::*;
use prost::Message as _;
use tallyd::export::proto::MetricFamily;

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// `GET /metrics` with `accept`: the content type and the (de-chunked) body.
fn get(addr: SocketAddr, accept: &str) -> (String, Vec<u8>) {
    get_with(addr, accept, "")
}

/// `GET /metrics` with `accept` and `more` headers (each ending in CRLF).
fn get_with(addr: SocketAddr, accept: &str, more: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\n{more}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    let out = dechunk_bytes(&raw[at + 4..]);
    (ctype, out)
}

const LINES: &[&str] = &[
    "hits:3|c|#env:prod,quote:a\"b\\c",
    "hits:2|c",
    "temp_celsius:21.5|g",
    "req.time:250|ms|@0.5",
    "req.time:750|ms",
    "size:4|h|#kind:x",
    "users:alice|s",
    "users:bob|s",
    "api.v1.requests:1|c",
    "lat.rpc:40|ms",
    "x:1|g",
    "x:2|c",
];

const RULES: &str = r#"
[[mapping]]
match = "api.*.requests"
name = "api_requests_total"
labels = { version = "$1" }

[[mapping]]
match = "lat.*"
name = "${1}_latency_seconds"
observer = "summary"
quantiles = [0.5, 0.99]
"#;

async fn daemon() -> TestDaemon {
    let t = TestDaemon::start(&config_text(1, RULES)).await;
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(t.udp[0]).unwrap();
    for l in LINES {
        s.send(l.as_bytes()).unwrap();
    }
    wait_datagrams(t.http, "udp://127.0.0.1:0", LINES.len() as u64).await;
    t
}

/// The protobuf families as text sample lines (`name{labels} value`), in message order.
fn proto_samples(mut body: &[u8]) -> (Vec<MetricFamily>, Vec<String>) {
    let mut families = Vec::new();
    while !body.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut body).expect("a message"));
    }
    let mut lines = Vec::new();
    for f in &families {
        let name = f.name();
        for m in &f.metric {
            let labels: Vec<String> = m
                .label
                .iter()
                .map(|l| {
                    let mut v = String::new();
                    tallyd::naming::escape_into(&mut v, l.value());
                    format!("{}=\"{v}\"", l.name())
                })
                .collect();
            let line = |suffix: &str, extra: Option<String>, v: f64| {
                let mut all = labels.clone();
                all.extend(extra);
                let mut out = format!("{name}{suffix}");
                if !all.is_empty() {
                    out.push_str(&format!("{{{}}}", all.join(",")));
                }
                out.push(' ');
                tallyd::export::fmt_value(&mut out, v);
                out
            };
            let fmt = |v: f64| {
                let mut s = String::new();
                tallyd::export::fmt_value(&mut s, v);
                s
            };
            if let Some(c) = &m.counter {
                lines.push(line("", None, c.value()));
            }
            if let Some(g) = &m.gauge {
                lines.push(line("", None, g.value()));
            }
            if let Some(h) = &m.histogram {
                let count = h.sample_count_float.unwrap_or(h.sample_count() as f64);
                for b in &h.bucket {
                    let c = b
                        .cumulative_count_float
                        .unwrap_or(b.cumulative_count() as f64);
                    lines.push(line(
                        "_bucket",
                        Some(format!("le=\"{}\"", fmt(b.upper_bound()))),
                        c,
                    ));
                }
                lines.push(line("_bucket", Some("le=\"+Inf\"".into()), count));
                lines.push(line("_sum", None, h.sample_sum()));
                lines.push(line("_count", None, count));
            }
            if let Some(s) = &m.summary {
                for q in &s.quantile {
                    lines.push(line(
                        "",
                        Some(format!("quantile=\"{}\"", fmt(q.quantile()))),
                        q.value(),
                    ));
                }
                lines.push(line("_sum", None, s.sample_sum()));
                lines.push(line("_count", None, s.sample_count() as f64));
            }
        }
    }
    (families, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_carries_every_value_of_the_text_format() {
    let t = daemon().await;
    let text = scrape_text(t.http).await;
    let (ctype, body) = get(t.http, PROTOBUF);
    assert_eq!(
        ctype,
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
    );
    let (families, lines) = proto_samples(&body);
    let want = statsd_samples(&text);
    // A `@0.5` timer counts 2 in a float count: the float fields carry it.
    assert!(want.contains(&"req_time_count 3"), "{text}");
    let statsd: Vec<&str> = lines.iter().take(want.len()).map(String::as_str).collect();
    assert_eq!(statsd, want);
    // Types and HELP texts as in the text format; tallyd's own families follow.
    let kinds: Vec<(&str, i32)> = families
        .iter()
        .take(9)
        .map(|f| (f.name(), f.r#type.unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("api_requests_total", 0),
            ("hits_total", 0),
            ("req_time", 4),
            ("rpc_latency_seconds", 2),
            ("size", 4),
            ("temp_celsius", 1),
            ("users", 1),
            ("x", 1),
            ("x_total", 0),
        ]
    );
    assert_eq!(
        families[0].help(),
        "StatsD counter (c), summed by tallyd; named by mapping rule 1 (match = \"api.*.requests\")."
    );
    assert!(families.iter().any(|f| f.name() == "tallyd_scrapes_total"));
    // Gzip applies to protobuf as to text: the same messages once decompressed.
    let (_, gz) = get_with(t.http, PROTOBUF, "Accept-Encoding: gzip\r\n");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut raw)
        .unwrap();
    let (_, gz_lines) = proto_samples(&raw);
    assert_eq!(gz_lines[..want.len()], lines[..want.len()]);
    let after = scrape_text(t.http).await;
    assert_eq!(
        value(&after, r#"tallyd_scrapes_total{format="protobuf"}"#),
        Some(2.0)
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_has_the_text_samples_its_own_headers_and_an_eof() {
    let t = daemon().await;
    let text = scrape_text(t.http).await;
    let (ctype, body) = get(t.http, OPENMETRICS);
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = String::from_utf8(body).unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    let samples = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| !l.starts_with("tallyd_") && !l.starts_with("process_"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(samples(&om), samples(&text));
    for want in [
        "# TYPE hits counter\n",
        "# HELP hits StatsD counter (c), summed by tallyd.\n",
        "# TYPE temp_celsius gauge\n# UNIT temp_celsius celsius\n",
        "# TYPE rpc_latency_seconds summary\n# UNIT rpc_latency_seconds seconds\n",
        "# TYPE req_time histogram\n",
        // `x` is a gauge, so the counter `x_total` cannot be family `x`.
        "# TYPE x_total unknown\n",
        "# TYPE tallyd_scrapes counter\n",
    ] {
        assert!(om.contains(want), "{want:?} missing:\n{om}");
    }
    assert_eq!(om.matches("# EOF").count(), 1);
    strict_parse(&om);
    let after = scrape_text(t.http).await;
    assert_eq!(
        value(&after, r#"tallyd_scrapes_total{format="openmetrics"}"#),
        Some(1.0)
    );
    t.stop().await;

    // With statsd_exporter's names OpenMetrics is not offered (it would add `_total`).
    let t = TestDaemon::start(&config_text(
        1,
        "[defaults]\nnaming = \"statsd_exporter\"\n",
    ))
    .await;
    let (ctype, _) = get(t.http, OPENMETRICS);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    t.stop().await;
}

/// Python's `prometheus_client` OpenMetrics parser, which refuses what the standard forbids.
fn strict_parse(om: &str) {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families\nn = sum(1 for _ in text_string_to_metric_families(sys.stdin.read()))\nprint(n)\n";
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        skip_or_fail("the strict OpenMetrics parse: python3 is not on PATH");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(om.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'prometheus_client'") {
        skip_or_fail(
            "the strict OpenMetrics parse: Python's prometheus_client is not installed \
             (pip install prometheus-client; CI installs it)",
        );
        return;
    }
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition:\n{err}\n{om}"
    );
}

/// Native histograms as Prometheus reads them from protobuf: schema 3 for the default factor
/// 1.1, the zero bucket, spans and deltas for whole counts, absolute float counts under a
/// sample rate (`@0.3` weighs 1/0.3), and the classic/native choice per rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_histograms_in_protobuf() {
    let t = TestDaemon::start(&config_text(
        1,
        "[[mapping]]\nmatch = \"m\"\nname = \"m\"\nhistograms = \"classic\"\n\n\
         [[mapping]]\nmatch = \"k\"\nname = \"k\"\nhistograms = \"native\"\n\
         native_bucket_factor = 2.0\n",
    ))
    .await;
    let lines = [
        "n:1|h",
        "n:2|h",
        "n:3|h|@0.5",
        "n:-1|h",
        "n:0|h",
        "m:1|h",
        "k:3|h",
        "r:1|h|@0.3",
    ];
    for l in lines {
        send(t.udp[0], l.as_bytes());
    }
    wait_datagrams(t.http, "udp://127.0.0.1:0", lines.len() as u64).await;
    let (_, body) = get(t.http, PROTOBUF);
    let (families, _) = proto_samples(&body);
    let h = |name: &str| {
        families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .metric[0]
            .histogram
            .clone()
            .unwrap()
    };
    let span = |o: i32, l: u32| tallyd::export::proto::BucketSpan {
        offset: Some(o),
        length: Some(l),
    };
    let n = h("n");
    assert_eq!(n.schema, Some(3));
    assert_eq!(n.sample_count, Some(6));
    assert_eq!(n.zero_count, Some(1));
    // 1, 2 and 3 at schema 3 are buckets 0, 8 and 13 (2^(13/8) = 3.08).
    assert_eq!(n.positive_span, [span(0, 1), span(7, 1), span(4, 1)]);
    assert_eq!(n.positive_delta, [1, 0, 1]);
    assert_eq!(n.negative_span, [span(0, 1)]);
    assert_eq!(n.negative_delta, [1]);
    assert_eq!(n.bucket.len(), 11, "both: the classic buckets too");
    let m = h("m");
    assert_eq!((m.schema, m.bucket.len()), (None, 11), "classic only");
    let k = h("k");
    assert_eq!(
        (k.schema, k.bucket.len()),
        (Some(0), 0),
        "native only, factor 2"
    );
    assert_eq!(k.positive_span, [span(2, 1)]);
    let r = h("r");
    assert_eq!(r.sample_count, None);
    assert_eq!(r.sample_count_float, Some(1.0 / 0.3));
    assert_eq!(r.positive_count, [1.0 / 0.3]);
    assert!(r.positive_delta.is_empty());
    // The text format shows the classic part, and only `+Inf` for a native-only histogram.
    let text = scrape_text(t.http).await;
    assert_eq!(value(&text, r#"k_bucket{le="+Inf"}"#), Some(1.0), "{text}");
    assert!(!text.contains("k_bucket{le=\"1\"}"), "{text}");
    t.stop().await;
}
