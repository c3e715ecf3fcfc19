//! Bad days in production, each against the real daemon: a broken log pipe, an ingest worker
//! that dies, stalled and slow HTTP clients, password guessing, hostile socket paths.

mod common;

use std::time::Duration;

use common::*;

/// stderr a pipe whose reader has exited: every log line fails with EPIPE. Ingest goes on
/// exactly, the lines that could not be written are counted, and SIGTERM still stops tallyd
/// with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stderr_pipe_loses_no_data_and_counts_the_lost_lines() {
    let mut d = Spawned::start_stderr_closed_after_ready(
        "[limits]\nmax_series = 3\n\n[log]\nlevel = \"debug\"\n",
    );
    // One series, then ten more: the limit is reached and logged (a WARN that cannot be
    // written), and the debug samples of refused lines go the same way.
    send(d.udp, b"exact:1|c");
    for i in 0..10 {
        send(d.udp, format!("over{i}:1|c").as_bytes());
        send(d.udp, b"not a statsd line");
    }
    let text = wait_until(d.http, "a log line counted as write_failed", |t| {
        value(t, "tallyd_log_lines_dropped_total{reason=\"write_failed\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(
        value(
            &text,
            "tallyd_log_lines_dropped_total{reason=\"queue_full\"}"
        ),
        Some(0.0)
    );
    // Every worker still ingests, exactly.
    for _ in 0..999 {
        send(d.udp, b"exact:1|c");
    }
    wait_for(d.http, &[("exact_total", 1000.0)]).await;
    d.signal(libc::SIGTERM);
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A worker thread that dies takes readiness with it at once, and the daemon stops with an
/// error naming the worker (the binary exits non-zero, so systemd restarts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_turns_the_daemon_unready_and_stops_it_with_an_error() {
    let mut t = TestDaemon::start(&config_text(1, "")).await;
    t.send(b"before:1|c");
    wait_for(t.http, &[("before_total", 1.0)]).await;
    assert!(t.d().is_ready());
    t.send(tallyd::ingest::FAULT);
    let d = t.daemon.take().expect("running");
    wait_until_true("readiness dropped", || !d.is_ready()).await;
    match d.wait().await {
        Err(e) => assert_eq!(e.0, "tallyd-udp-0"),
        Ok(()) => panic!("wait must report the dead worker"),
    }
}

#[test]
fn the_binary_exits_non_zero_when_a_worker_dies() {
    let mut d = Spawned::start("");
    send(d.udp, tallyd::ingest::FAULT);
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(1), "{status:?}; log:\n{}", d.log());
    let log = d.log();
    assert!(
        log.contains("an ingest worker died; stopping tallyd worker=\"tallyd-udp-0\""),
        "{log}"
    );
    assert!(
        log.contains("the ingest worker tallyd-udp-0 died; tallyd stopped"),
        "{log}"
    );
}

/// Polls `cond` until it holds; a hang guard of [`DEADLINE`] fails the test.
async fn wait_until_true(what: &str, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A daemon with `http` keys in `[http]`, one UDP and one TCP listener.
async fn daemon(http: &str, extra: &str) -> TestDaemon {
    TestDaemon::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{http}\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [[tcp]]\nlisten = \"127.0.0.1:0\"\n\n{extra}\n"
    ))
    .await
}

/// `n` counters, each its own family (about 100 bytes of exposition each), sent over TCP so
/// none is lost; waits until the store has them.
async fn fill(t: &TestDaemon, n: usize) {
    let mut payload = String::new();
    for i in 0..n {
        payload.push_str(&format!("fill{i}:1|c\n"));
    }
    send_tcp(t.d().tcp_addrs()[0], payload.as_bytes());
    wait_until(t.http, "the store filled", |text| {
        value(text, "tallyd_series") == Some(n as f64)
    })
    .await;
}

/// A client that asks for `/metrics`, reads the first bytes of the response (so it is being
/// written) and then nothing, with a small receive buffer so that tallyd's writes soon block.
fn stalled_reader(http: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::{Read as _, Write as _};
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&http.into()).unwrap();
    let mut s: std::net::TcpStream = s.into();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut status = [0u8; 12];
    s.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    s
}

/// The exposition must be far larger than what the socket buffers of a stalled reader hold.
const BIG: usize = 60_000;

/// 64 clients (the connection cap) that ask for `/metrics` and stop reading: a legitimate
/// scrape is still answered, whole, because the cap sheds a connection whose response has
/// been blocked for 500 ms; the write timeout is an hour here, so it cannot be what made room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_at_the_cap_do_not_lock_out_a_scrape() {
    let t = daemon("max_connections = 64\nwrite_timeout = \"1h\"", "").await;
    fill(&t, BIG).await;
    let start = std::time::Instant::now();
    t.scrape().await;
    let alone = start.elapsed();
    let http = t.http;
    let stalled = tokio::task::spawn_blocking(move || {
        (0..64).map(|_| stalled_reader(http)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let start = std::time::Instant::now();
    let text = t.scrape().await;
    let took = start.elapsed();
    eprintln!("legitimate scrape behind 64 stalled readers: {took:?} (alone: {alone:?})");
    assert_eq!(value(&text, "fill59999_total"), Some(1.0));
    assert_eq!(value(&text, "tallyd_series"), Some(BIG as f64));
    assert!(
        value(
            &text,
            "tallyd_http_connections_shed_total{reason=\"stalled_write\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{}",
        text.lines()
            .filter(|l| l.starts_with("tallyd_http"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(value(&text, "tallyd_http_write_timeouts_total"), Some(0.0));
    drop(stalled);
    t.stop().await;
}

/// A client that stops reading is cut off after `[http] write_timeout`, and what it got is
/// not a complete response: the chunked body ends without its terminating chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_timeout_cuts_a_stalled_reader_and_its_response_is_incomplete() {
    use std::io::Read as _;
    let t = daemon("write_timeout = \"1s\"", "").await;
    fill(&t, BIG).await;
    let http = t.http;
    let mut stalled = tokio::task::spawn_blocking(move || {
        (0..4).map(|_| stalled_reader(http)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    wait_until(t.http, "four write timeouts", |text| {
        value(text, "tallyd_http_write_timeouts_total") == Some(4.0)
            && value(text, "tallyd_scrape_errors_total") == Some(4.0)
    })
    .await;
    for s in &mut stalled {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut raw = b"HTTP/1.1 200".to_vec();
        // The connection was closed by tallyd: reading ends (EOF or reset), it never hangs.
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{}",
            &text[..text.len().min(200)]
        );
        assert!(text.contains("transfer-encoding: chunked"));
        assert!(
            raw.len() < 5_000_000,
            "{} bytes: the whole exposition",
            raw.len()
        );
        assert!(
            !text.ends_with("\r\n0\r\n\r\n"),
            "a cut response must not end with the terminating chunk"
        );
    }
    t.stop().await;
}

/// 400 slow clients, each sending its headers a byte at a time and reconnecting as soon as
/// it is closed, against a cap of 64 and a header timeout of a minute: scrapes once a second
/// are all answered, because a new connection sheds the connection idle longest (a slow
/// client never becomes busy). Without the shedding they would wait for the header timeout
/// and the test's hang guard would fail them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_slowloris_does_not_break_scrapes() {
    use tokio::io::AsyncWriteExt as _;
    let t = daemon("max_connections = 64\nheader_read_timeout = \"60s\"", "").await;
    t.send(b"alive:1|c");
    wait_for(t.http, &[("alive_total", 1.0)]).await;
    // The attackers run on their own thread and runtime, as another process would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack = {
        let (http, stop) = (t.http, stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut attackers = Vec::new();
                for _ in 0..400 {
                    let stop = stop.clone();
                    attackers.push(tokio::spawn(async move {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let Ok(mut s) = tokio::net::TcpStream::connect(http).await else {
                                continue;
                            };
                            if s.write_all(b"GET /metrics HTTP/1.1\r\n").await.is_err() {
                                continue;
                            }
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if s.write_all(b"X").await.is_err() {
                                    break;
                                }
                            }
                        }
                    }));
                }
                for a in attackers {
                    let _ = a.await;
                }
            })
        })
    };
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    let mut took = Vec::new();
    for _ in 0..3 {
        pace.tick().await;
        let start = std::time::Instant::now();
        let text = t.scrape().await;
        took.push(start.elapsed());
        assert_eq!(value(&text, "alive_total"), Some(1.0));
    }
    eprintln!("scrapes during the slowloris: {took:?}");
    let text = t.scrape().await;
    assert!(
        value(&text, "tallyd_http_connections_shed_total{reason=\"idle\"}")
            .is_some_and(|v| v > 0.0)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attack.join().unwrap();
    t.stop().await;
}

/// `HEAD /metrics`: the headers of a GET, no body, no scrape error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_metrics_is_not_a_scrape_error() {
    let t = daemon("", "").await;
    let http = t.http;
    let (status, head, body) =
        tokio::task::spawn_blocking(move || common::http(http, "HEAD", "/metrics"))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(body, "");
    let text = t.scrape().await;
    assert_eq!(value(&text, "tallyd_scrape_errors_total"), Some(0.0));
    t.stop().await;
}

/// One raw request on a fresh connection; the whole response.
fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// gzip only when accepted with a q-value above 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_q_zero_is_a_refusal() {
    let t = daemon("", "").await;
    let http = t.http;
    let head = move |enc: &'static str| {
        let r = raw_request(
            http,
            &format!(
                "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAccept-Encoding: {enc}\r\n\r\n"
            ),
        );
        r.split("\r\n\r\n").next().unwrap().to_ascii_lowercase()
    };
    let (q0, yes) = tokio::task::spawn_blocking(move || (head("gzip;q=0"), head("gzip;q=0.5")))
        .await
        .unwrap();
    assert!(!q0.contains("content-encoding"), "{q0}");
    assert!(yes.contains("content-encoding: gzip"), "{yes}");
    t.stop().await;
}

/// Keep-alive scrapes are as quick as scrapes on fresh connections: with Nagle's algorithm
/// on (no TCP_NODELAY), every keep-alive response's last segment waits for the client's
/// delayed ACK (~40 ms on Linux). A ratio of two measurements of this run, with a wide
/// margin: the fault it catches is a tenfold one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_scrapes_do_not_wait_for_delayed_acks() {
    let t = daemon("", "").await;
    t.send(b"k:1|c");
    wait_for(t.http, &[("k_total", 1.0)]).await;
    let http = t.http;
    let (fresh, kept) = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let get = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
        let start = std::time::Instant::now();
        for _ in 0..10 {
            raw_request(
                http,
                "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
        }
        let fresh = start.elapsed();
        let s = std::net::TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            w.write_all(get.as_bytes()).unwrap();
            // Headers, then the chunked body up to its terminating chunk.
            let mut line = String::new();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
            }
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                r.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
            }
        }
        (fresh, start.elapsed())
    })
    .await
    .unwrap();
    eprintln!("10 scrapes: fresh connections {fresh:?}, one keep-alive connection {kept:?}");
    assert!(
        kept < fresh * 4 + Duration::from_millis(100),
        "keep-alive {kept:?} vs fresh {fresh:?}"
    );
    t.stop().await;
}

/// `GET /metrics` with basic credentials on a fresh connection; the status.
fn get_with_auth(http: std::net::SocketAddr, scheme: &str, user_pass: &str) -> u16 {
    use base64::Engine as _;
    let cred = base64::engine::general_purpose::STANDARD.encode(user_pass);
    let r = raw_request(
        http,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: {scheme} {cred}\r\n\r\n"
        ),
    );
    r.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An unknown user and a wrong password take the same time (the unknown user is checked
/// against a dummy hash of the same cost); `basic` in lower case is the same scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timing_does_not_tell_which_users_exist() {
    let hash = bcrypt::hash("s3cret", 8).unwrap();
    let t = daemon(&format!("[http.basic_auth_users]\nprom = \"{hash}\""), "").await;
    let http = t.http;
    let (unknown, wrong, lower) = tokio::task::spawn_blocking(move || {
        let time = |user_pass: &str| {
            let start = std::time::Instant::now();
            assert_eq!(get_with_auth(http, "Basic", user_pass), 401);
            start.elapsed()
        };
        // Warm both paths (the dummy hash is made on first use).
        time("nobody:x");
        time("prom:x");
        let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
        for i in 0..7 {
            unknown.push(time(&format!("nobody{i}:guess")));
            wrong.push(time(&format!("prom:guess{i}")));
        }
        let lower = get_with_auth(http, "basic", "prom:s3cret");
        (median(unknown), median(wrong), lower)
    })
    .await
    .unwrap();
    eprintln!("median 401: unknown user {unknown:?}, wrong password {wrong:?}");
    assert!(
        unknown * 2 >= wrong && wrong * 2 >= unknown,
        "unknown user {unknown:?} vs wrong password {wrong:?}"
    );
    assert_eq!(lower, 200);
    t.stop().await;
}

/// 63 connections guessing passwords as fast as they can: bcrypt runs one at a time with a
/// short queue (beyond it: 429 at once), and a scraper whose password verified before is
/// answered 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_does_not_starve_valid_scrapes() {
    let hash = bcrypt::hash("s3cret", 8).unwrap();
    let t = daemon(&format!("[http.basic_auth_users]\nprom = \"{hash}\""), "").await;
    let http = t.http;
    assert_eq!(
        tokio::task::spawn_blocking(move || get_with_auth(http, "Basic", "prom:s3cret"))
            .await
            .unwrap(),
        200
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guessers: Vec<_> = (0..63)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut statuses = std::collections::BTreeSet::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    statuses.insert(get_with_auth(http, "Basic", &format!("prom:guess{i}-{n}")));
                    n += 1;
                }
                statuses
            })
        })
        .collect();
    let valid = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|_| get_with_auth(http, "Basic", "prom:s3cret"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for g in guessers {
        seen.extend(g.join().unwrap());
    }
    assert_eq!(valid, vec![200; 20]);
    assert_eq!(
        seen,
        [401, 429].into_iter().collect(),
        "guesses are refused, some at once"
    );
    let text = tokio::task::spawn_blocking(move || {
        use base64::Engine as _;
        let cred = base64::engine::general_purpose::STANDARD.encode("prom:s3cret");
        let r = raw_request(
            http,
            &format!(
                "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Basic {cred}\r\n\r\n"
            ),
        );
        dechunk(r.split_once("\r\n\r\n").unwrap().1)
    })
    .await
    .unwrap();
    assert!(value(&text, "tallyd_http_auth_failures_total{reason=\"busy\"}").unwrap() > 0.0);
    assert!(value(&text, "tallyd_http_auth_failures_total{reason=\"denied\"}").unwrap() > 0.0);
    t.stop().await;
}
