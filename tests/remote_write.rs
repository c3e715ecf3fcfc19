//! Remote write against a receiver in the test: the request as the protocol wants it (headers,
//! snappy, protobuf, one timestamp per push, sorted labels, external labels), every family
//! equal to a scrape at the same moment, error replies (400 dropped once, 429 with
//! `Retry-After`, 503, a hang past the timeout: retried) while a sender's totals stay exact,
//! staleness markers for expired series, and the final push at stop.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http_body_util::BodyExt as _;
use prost::Message as _;
use tallyd::remote::proto::{STALE_NAN, WriteRequest};

/// How the test receiver answers a request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16, Option<&'static str>),
    /// Answers 200 after this long (past the sender's timeout).
    Hang(Duration),
}

/// What the receiver got: headers and the decoded request.
#[derive(Debug, Clone)]
struct Got {
    headers: hyper::HeaderMap,
    req: WriteRequest,
    /// The status it answered.
    status: u16,
}

/// A remote write receiver on a loopback port: answers each request with the next scripted
/// reply (200 once the script is spent) and keeps what it received.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[Reply]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (g, sc) = (got.clone(), script.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (g, sc) = (g.clone(), sc.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (g, sc) = (g.clone(), sc.clone());
                            async move {
                                let headers = req.headers().clone();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                                let decoded = WriteRequest::decode(raw.as_slice()).unwrap();
                                let reply = sc.lock().unwrap().pop_front();
                                let (status, retry_after) = match reply {
                                    Some(Reply::Status(s, ra)) => (s, ra),
                                    Some(Reply::Hang(d)) => {
                                        tokio::time::sleep(d).await;
                                        (200, None)
                                    }
                                    None => (200, None),
                                };
                                g.lock().unwrap().push(Got {
                                    headers,
                                    req: decoded,
                                    status,
                                });
                                let mut r = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"reply"),
                                ));
                                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                if let Some(ra) = retry_after {
                                    r.headers_mut().insert("retry-after", ra.parse().unwrap());
                                }
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, got, task }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `cond` holds for what was received.
    async fn wait(&self, what: &str, cond: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = std::time::Instant::now();
        loop {
            let got = self.got();
            if cond(&got) {
                return got;
            }
            assert!(
                start.elapsed() < DEADLINE * 3,
                "the receiver never saw {what}; it got {} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `name{k="v",...}` with labels sorted, `__name__` left out.
fn key(labels: &[(String, String)]) -> String {
    let name = labels
        .iter()
        .find(|(k, _)| k == "__name__")
        .map_or("", |(_, v)| v.as_str());
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// Every series of the pushes in `got` (the last value of each), by [`key`].
fn pushed(got: &[Got]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for g in got.iter().filter(|g| g.status == 200) {
        for ts in &g.req.timeseries {
            let labels: Vec<(String, String)> = ts
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            out.insert(key(&labels), ts.samples[0].value);
        }
    }
    out
}

/// The StatsD series of a scrape, by [`key`], with `extra` labels added.
fn scraped(text: &str, extra: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in statsd_samples(text) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut v: Vec<(String, String)> = vec![("__name__".into(), name.into())];
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let end = after.find('"').unwrap();
            v.push((k.to_string(), after[..end].to_string()));
            rest = after[end + 1..].trim_start_matches(',');
        }
        for (k, val) in extra {
            if !v.iter().any(|(n, _)| n == k) {
                v.push((k.to_string(), val.to_string()));
            }
        }
        v.sort();
        out.insert(key(&v), value.parse().unwrap());
    }
    out
}

fn remote(url: &str, extra: &str) -> String {
    format!("[[remote_write]]\nname = \"test\"\nurl = \"{url}\"\n{extra}\n")
}

const SUMMARY: &str = "[[mapping]]\nmatch = \"lat.*\"\nname = \"lat_$1\"\nobserver = \"summary\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_every_family_as_the_protocol_wants_equal_to_a_scrape() {
    let rx = Receiver::start(&[]).await;
    let t = TestDaemon::start(&config_text(
        1,
        &format!(
            "{}{SUMMARY}",
            remote(
                &rx.url(),
                "interval = \"200ms\"\nexternal_labels = { region = \"eu\", env = \"x\" }\n[remote_write.headers]\nX-Scope-OrgID = \"tenant-1\"\n"
            )
        ),
    ))
    .await;
    t.send(b"hits:3|c|#env:prod\nhits:4|c\nq.depth:7|g\napi.latency:250|ms|#route:a\napi.latency:1200|ms|#route:a\nusers:alice|s\nlat.db:5|ms\nlat.db:15|ms");
    let scrape = wait_for(
        t.http,
        &[("hits_total{env=\"prod\"}", 3.0), ("hits_total", 4.0)],
    )
    .await;
    let want = scraped(&scrape, &[("region", "eu"), ("env", "x")]);
    assert!(want.len() > 15, "{want:?}");
    // A push made after the scrape carries the same values.
    let got = rx
        .wait("a push with every series of the scrape", |g| {
            let p = pushed(g);
            want.iter().all(|(k, v)| p.get(k).is_some_and(|x| x == v))
        })
        .await;
    let last = got.last().unwrap();
    let h = &last.headers;
    assert_eq!(h["content-encoding"], "snappy");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(
        h["user-agent"],
        format!("tallyd/{}", env!("CARGO_PKG_VERSION")).as_str()
    );
    assert_eq!(h["x-scope-orgid"], "tenant-1");
    let p = pushed(&got);
    // The series' own `env` wins over the external label; the external `region` is added.
    assert_eq!(p["hits_total{env=\"prod\",region=\"eu\"}"], 3.0);
    assert_eq!(p["hits_total{env=\"x\",region=\"eu\"}"], 4.0);
    assert_eq!(
        p["api_latency_count{env=\"x\",region=\"eu\",route=\"a\"}"],
        2.0
    );
    assert_eq!(
        p["api_latency_bucket{env=\"x\",le=\"+Inf\",region=\"eu\",route=\"a\"}"],
        2.0
    );
    assert_eq!(p["lat_db_count{env=\"x\",region=\"eu\"}"], 2.0);
    assert!(
        p.contains_key("lat_db{env=\"x\",quantile=\"0.5\",region=\"eu\"}"),
        "{p:?}"
    );
    // tallyd's own metrics travel too.
    assert!(
        p.keys()
            .any(|k| k.starts_with("tallyd_lines_received_total{"))
    );
    for g in &got {
        let ts = &g.req.timeseries;
        // One timestamp per push (all requests of a push here fit in one), labels sorted.
        assert!(
            ts.iter()
                .all(|t| t.samples[0].timestamp == ts[0].samples[0].timestamp)
        );
        for t in ts {
            let names: Vec<&str> = t.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted);
            assert_eq!(t.samples.len(), 1);
        }
    }
    let m = t.scrape().await;
    assert!(
        value(
            &m,
            "tallyd_remote_write_samples_sent_total{endpoint=\"test\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(&m, "tallyd_remote_write_retries_total{endpoint=\"test\"}"),
        Some(0.0)
    );
    t.stop().await;
}

/// 400 dropped and counted once; 429 with `Retry-After`, 503 and a hang past the timeout
/// retried; ingest unaffected: a sender's total arrives exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_are_dropped_or_retried_and_no_count_is_lost() {
    let rx = Receiver::start(&[
        Reply::Status(400, None),
        Reply::Status(429, Some("1")),
        Reply::Status(503, None),
        Reply::Hang(Duration::from_millis(1500)),
    ])
    .await;
    let t = TestDaemon::start(&config_text(
        1,
        &remote(
            &rx.url(),
            "interval = \"300ms\"\ntimeout = \"500ms\"\nmin_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n",
        ),
    ))
    .await;
    let sender = Sender::start(t.udp[0], "steady:1|c");
    rx.wait(
        "the scripted replies and an accepted push after them",
        |g| g.len() >= 5 && g[4..].iter().any(|x| x.status == 200),
    )
    .await;
    let sent = sender.stop();
    let m = wait_datagrams(t.http, "udp://127.0.0.1:0", sent).await;
    let dg = "tallyd_datagrams_received_total{listener=\"udp://127.0.0.1:0\"}";
    let counted = value(&m, "steady_total").unwrap();
    assert_eq!(counted, value(&m, dg).unwrap());
    rx.wait("the exact total", |g| {
        pushed(g).get("steady_total{}") == Some(&counted)
    })
    .await;
    let m = t.scrape().await;
    let v = |s: &str| value(&m, s).unwrap_or(0.0);
    let e = "endpoint=\"test\"";
    assert_eq!(
        v(&format!(
            "tallyd_remote_write_requests_dropped_total{{{e},reason=\"rejected\"}}"
        )),
        1.0
    );
    assert_eq!(
        v(&format!(
            "tallyd_remote_write_requests_failed_total{{{e},reason=\"http_4xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        v(&format!(
            "tallyd_remote_write_requests_failed_total{{{e},reason=\"http_429\"}}"
        )),
        1.0
    );
    assert_eq!(
        v(&format!(
            "tallyd_remote_write_requests_failed_total{{{e},reason=\"http_5xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        v(&format!(
            "tallyd_remote_write_requests_failed_total{{{e},reason=\"timeout\"}}"
        )),
        1.0
    );
    // Each of the three retryable failures was retried once.
    assert_eq!(v(&format!("tallyd_remote_write_retries_total{{{e}}}")), 3.0);
    // The request after the 429 waited for its Retry-After.
    let got = rx.got();
    assert_eq!(got[0].status, 400);
    assert_eq!(got[1].status, 429);
    t.stop().await;
}

/// A series that expires gets a staleness marker in the next push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_series_is_marked_stale() {
    let rx = Receiver::start(&[]).await;
    let t = TestDaemon::start(&config_text(
        1,
        &format!(
            "[[mapping]]\nmatch = \"brief.*\"\nname = \"brief_$1\"\nttl = \"1s\"\n\n{}",
            remote(&rx.url(), "interval = \"200ms\"")
        ),
    ))
    .await;
    t.send(b"brief.x:1|c\nbrief.h:5|h|#k:v\nstays:1|c");
    wait_for(t.http, &[("brief_x_total", 1.0)]).await;
    let got = rx
        .wait("staleness markers for the expired series", |g| {
            let stale = |name: &str| {
                g.iter().any(|x| {
                    x.req.timeseries.iter().any(|t| {
                        t.labels
                            .iter()
                            .any(|l| l.name == "__name__" && l.value == name)
                            && t.samples[0].value.to_bits() == STALE_NAN
                    })
                })
            };
            stale("brief_x_total") && stale("brief_h_count") && stale("brief_h_bucket")
        })
        .await;
    // The series that stays is never marked.
    assert!(!got.iter().any(|x| x.req.timeseries.iter().any(|t| {
        t.labels.iter().any(|l| l.value == "stays_total") && t.samples[0].value.is_nan()
    })));
    t.stop().await;
}

/// At stop, one last push carries what came in since the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_pushes_once_more() {
    let rx = Receiver::start(&[]).await;
    let t = TestDaemon::start(&config_text(1, &remote(&rx.url(), "interval = \"1h\""))).await;
    t.send(b"last:5|c");
    wait_for(t.http, &[("last_total", 5.0)]).await;
    assert!(rx.got().is_empty());
    t.stop().await;
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(pushed(&got)["last_total{}"], 5.0);
}

/// A reload that changes nothing keeps the endpoint; a changed section restarts it; a bad
/// `url` is refused with its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_sections_reload() {
    let rx = Receiver::start(&[]).await;
    let t = TestDaemon::start_with(
        &config_text(1, &remote(&rx.url(), "interval = \"200ms\"")),
        |o| o.watch = false,
    )
    .await;
    t.send(b"r:1|c");
    rx.wait("a push", |g| pushed(g).get("r_total{}") == Some(&1.0))
        .await;
    t.rewrite_config(&config_text(
        1,
        &remote(
            &rx.url(),
            "interval = \"200ms\"\nexternal_labels = { dc = \"a\" }",
        ),
    ));
    assert!(t.d().reload().await.is_ok());
    rx.wait("a push with the new external label", |g| {
        pushed(g).get("r_total{dc=\"a\"}") == Some(&1.0)
    })
    .await;
    let bad = config_text(1, &remote("ftp://x", ""));
    let e = tallyd::config::Config::from_toml(&bad).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("remote_write[0].url"));
    assert!(e.line > 0);
    t.stop().await;
}

/// An address where nothing listens (a port bound, then released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/api/v1/write")
}

/// A dead endpoint's queue is bounded in size and age (the oldest dropped first, each
/// counted), and it slows neither another endpoint nor ingest; a reload that leaves its
/// section unchanged keeps its queue, one that changes it drops the queue (counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_bounded_and_isolated() {
    let hanging = Receiver::start(&[Reply::Hang(Duration::from_secs(3600))]).await;
    let healthy = Receiver::start(&[]).await;
    let dead = dead_url();
    let sections = format!(
        "{}{}{}",
        format_args!(
            "[[remote_write]]\nname = \"full\"\nurl = \"{dead}\"\ninterval = \"100ms\"\n\
             max_pending_requests = 2\nmin_backoff = \"1s\"\nmax_backoff = \"1s\"\n"
        ),
        format_args!(
            "[[remote_write]]\nname = \"old\"\nurl = \"{}\"\ninterval = \"100ms\"\n\
             timeout = \"2s\"\nmax_pending_age = \"300ms\"\n",
            hanging.url()
        ),
        format_args!(
            "[[remote_write]]\nname = \"ok\"\nurl = \"{}\"\ninterval = \"100ms\"\n",
            healthy.url()
        ),
    );
    let t = TestDaemon::start_with(&config_text(1, &sections), |o| o.watch = false).await;
    let v = |m: &str, s: &str| value(m, s).unwrap_or(0.0);
    let m = wait_until(t.http, "a full queue dropping its oldest", |m| {
        v(
            m,
            "tallyd_remote_write_requests_dropped_total{endpoint=\"full\",reason=\"queue_full\"}",
        ) >= 3.0
    })
    .await;
    assert!(
        v(
            &m,
            "tallyd_remote_write_samples_dropped_total{endpoint=\"full\",reason=\"queue_full\"}"
        ) > 0.0
    );
    assert_eq!(
        v(&m, "tallyd_remote_write_queue_length{endpoint=\"full\"}"),
        2.0
    );
    // The hanging endpoint's requests time out one after the other; those queued behind age
    // out unsent. Meanwhile the healthy endpoint and ingest go on.
    for i in 1..=5 {
        t.send(format!("alive:{i}|c").as_bytes());
    }
    healthy
        .wait("the healthy endpoint's pushes of what came in", |g| {
            pushed(g).get("alive_total{}") == Some(&15.0)
        })
        .await;
    wait_for(t.http, &[("alive_total", 15.0)]).await;

    // Unchanged section: the queue stays (it is full again at once, never emptied).
    t.rewrite_config(&config_text(
        1,
        &format!("{sections}\n[limits]\nmax_series = 9999\n"),
    ));
    assert!(t.d().reload().await.is_ok());
    let m = t.scrape().await;
    let shutdown =
        "tallyd_remote_write_requests_dropped_total{endpoint=\"full\",reason=\"shutdown\"}";
    assert_eq!(v(&m, shutdown), 0.0);
    // Changed section: restarted, its two queued requests dropped and counted.
    let changed = sections.replace("max_pending_requests = 2", "max_pending_requests = 3");
    t.rewrite_config(&config_text(1, &changed));
    assert!(t.d().reload().await.is_ok());
    let m = t.scrape().await;
    assert_eq!(v(&m, shutdown), 2.0);
    let m = wait_until(t.http, "requests too old to send", |m| {
        v(
            m,
            "tallyd_remote_write_requests_dropped_total{endpoint=\"old\",reason=\"too_old\"}",
        ) > 0.0
    })
    .await;
    assert!(
        v(
            &m,
            "tallyd_remote_write_requests_failed_total{endpoint=\"old\",reason=\"timeout\"}"
        ) >= 1.0
    );
    t.stop().await;
}

/// SIGTERM to the binary: the listeners drain, then one last push carries every count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_pushes_once_more() {
    let rx = Receiver::start(&[]).await;
    let mut d = Spawned::start(&remote(&rx.url(), "interval = \"1h\""));
    send(d.udp, b"bye:7|c");
    wait_for(d.http, &[("bye_total", 7.0)]).await;
    assert!(rx.got().is_empty());
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success(), "{}", d.log());
    let got = rx.got();
    assert_eq!(got.len(), 1, "{}", d.log());
    assert_eq!(pushed(&got)["bye_total{}"], 7.0);
}
