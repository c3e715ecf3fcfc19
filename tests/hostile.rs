//! The hostile corpus (`tests/fixtures/hostile/`, described by its `manifest.txt`): datagrams
//! that crashed or wedged other StatsD daemons and everything else nasty. Each fixture goes
//! through a real socket into a fresh in-process daemon; the daemon must stay healthy, `/metrics`
//! must answer 200 with an exposition that the strict reader in `tests/exposition` and
//! `promtool check metrics` accept (without promtool: SKIPPED on stderr, a failure under
//! CI=true), and the counters the manifest names must move by exactly the amount it says.
//!
//! Regenerate the corpus with `python3 tests/fixtures/hostile/generate.py`.

mod common;
mod exposition;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// What a manifest line expects of a counter or series.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The (summed) value rose by exactly this much.
    Delta(f64),
    /// The exact series has this value (NaN matches NaN).
    Value(f64),
}

#[derive(Debug, Default)]
struct Fixture {
    file: String,
    via: String,
    expects: Vec<(String, Expect)>,
    lint: Option<String>,
    why: String,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

fn manifest() -> Vec<Fixture> {
    let text = std::fs::read_to_string(corpus_dir().join("manifest.txt")).expect("manifest");
    let mut out: Vec<Fixture> = Vec::new();
    let at = |file: &str, out: &mut Vec<Fixture>| -> usize {
        if let Some(i) = out.iter().position(|f| f.file == file) {
            return i;
        }
        out.push(Fixture {
            file: file.to_string(),
            ..Default::default()
        });
        out.len() - 1
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (a, b, rest) = (
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        match a {
            "why" => {
                let i = at(b, &mut out);
                out[i].why = rest.to_string();
            }
            "lint" => {
                let i = at(b, &mut out);
                out[i].lint = Some(rest.to_string());
            }
            file => {
                let (sel, exp) = rest.rsplit_once(' ').expect("selector and expectation");
                let i = at(file, &mut out);
                out[i].via = b.to_string();
                let e = if let Some(v) = exp.strip_prefix("==") {
                    Expect::Value(exposition::parse_value(v).expect("manifest value"))
                } else if let Some(v) = exp.strip_prefix('+') {
                    Expect::Delta(v.parse().expect("manifest delta"))
                } else {
                    panic!("bad expectation {exp:?} in {line:?}")
                };
                out[i].expects.push((sel.to_string(), e));
            }
        }
    }
    for f in &out {
        assert!(
            corpus_dir().join(&f.file).exists(),
            "{} is in the manifest but not in the corpus",
            f.file
        );
        assert!(!f.via.is_empty(), "{} has no expectation", f.file);
    }
    // Every file of the corpus is in the manifest.
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if !matches!(name.as_str(), "manifest.txt" | "README.md" | "generate.py") {
            assert!(
                out.iter().any(|f| f.file == name),
                "{name} is in the corpus but not in the manifest"
            );
        }
    }
    out
}

/// One UDP listener (one worker, so datagrams are handled in the order sent), one TCP
/// listener. `small`: the UDP listener reads at most 1 KiB per datagram.
fn config(small: bool, workers: usize) -> String {
    let max = if small {
        "max_datagram_size = \"1KiB\"\n"
    } else {
        ""
    };
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\n\
         recv_buffer = \"4MiB\"\n{max}\n[[tcp]]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// Writes `payload` on a new connection, closes the sending side, and waits for the server to
/// close its side: it does so after it has read to EOF and flushed that stream's counters, so
/// once this returns the stream has been handled and counted.
fn send_tcp_stream(to: SocketAddr, payload: &[u8]) {
    let mut s = TcpStream::connect(to).expect("connect tcp");
    s.write_all(payload).expect("write tcp");
    s.shutdown(std::net::Shutdown::Write).ok();
    s.set_read_timeout(Some(DEADLINE)).ok();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "the StatsD TCP listener answered: {rest:?}"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server never closed the stream (hang guard {DEADLINE:?}): {e}"),
    }
}

async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        exposition::fetch(addr, path, DEADLINE).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    })
    .await
    .unwrap()
}

/// Scrapes and checks the exposition with the strict reader and, with `lint` (the allowed lint
/// text, if any), with promtool too; returns it parsed. promtool is slow on the widest series
/// (16 s for one series of 10,000 labels), so polling loops use the strict reader only and run
/// promtool once on the final scrape.
async fn checked_scrape(
    addr: SocketAddr,
    context: &str,
    promtool: Option<Option<&str>>,
) -> (String, Vec<exposition::Family>) {
    let (status, _) = get(addr, "/-/healthy").await;
    assert_eq!(status, 200, "{context}: /-/healthy");
    let text = get(addr, "/metrics").await;
    assert_eq!(text.0, 200, "{context}: /metrics");
    let text = text.1;
    let fams =
        exposition::parse(&text).unwrap_or_else(|e| panic!("{context}: invalid exposition: {e}"));
    if let Some(lint) = promtool {
        let t = text.clone();
        let ctx = context.to_string();
        let lint = lint.map(str::to_string);
        tokio::task::spawn_blocking(move || exposition::assert_promtool(&t, &ctx, lint.as_deref()))
            .await
            .unwrap();
    }
    (text, fams)
}

/// How much one UDP sentinel line (`hostile_sentinel:1|c`, one datagram) adds to `sel`.
fn sentinel_share(sel: &str) -> f64 {
    match sel {
        "tallyd_lines_received_total"
        | "tallyd_datagrams_received_total"
        | "tallyd_samples_total{type=\"counter\"}" => 1.0,
        _ => 0.0,
    }
}

fn measure(fams: &[exposition::Family], sel: &str, e: Expect) -> Option<f64> {
    let (name, labels) = exposition::selector(sel);
    match e {
        Expect::Delta(_) => Some(exposition::sum(fams, &name, &labels).unwrap_or(0.0)),
        Expect::Value(_) => exposition::exact(fams, &name, &labels),
    }
}

fn holds(got: Option<f64>, before: Option<f64>, e: Expect, extra: f64) -> bool {
    match (e, got) {
        (Expect::Delta(d), Some(g)) => g - before.unwrap_or(0.0) == d + extra,
        (Expect::Value(v), Some(g)) => g == v || (g.is_nan() && v.is_nan()),
        _ => false,
    }
}

/// Runs one fixture on a fresh daemon and checks everything the manifest says.
async fn run_fixture(f: &Fixture) {
    let payload = std::fs::read(corpus_dir().join(&f.file)).unwrap();
    let ctx = format!("{} ({})", f.file, f.why);
    let t = TestDaemon::start(&config(f.via == "udp-small", 1)).await;
    let (_, before) = checked_scrape(t.http, &format!("{ctx}: before"), None).await;
    let before: Vec<Option<f64>> = f
        .expects
        .iter()
        .map(|(s, e)| measure(&before, s, *e))
        .collect();
    let udp = f.via != "tcp";
    // How many sentinels were sent (each adds its `sentinel_share`).
    let mut sentinels = 0.0;
    if udp {
        t.send(&payload);
        // One listening socket, one worker: once the first sentinel is counted, the fixture
        // was handled. The second is sent only then, so it arrives in a later receive batch:
        // once it is counted, the batch that held the fixture has had its counters flushed
        // too, and a "+0" expectation can no longer hold only because nothing was flushed yet.
        for n in 1..=2 {
            t.send(b"hostile_sentinel:1|c");
            wait_for(t.http, &[("hostile_sentinel_total", f64::from(n))]).await;
            sentinels += 1.0;
        }
    } else {
        // Returns once the server closed the stream, after flushing its counters.
        let tcp = t.d().tcp_addrs()[0];
        tokio::task::spawn_blocking(move || send_tcp_stream(tcp, &payload))
            .await
            .unwrap();
    }
    // Each counter moves in one step, so "exactly N more" cannot be met half-way; the poll
    // below only waits for the sentinels' own counters to be flushed.
    let start = Instant::now();
    loop {
        let (text, fams) = checked_scrape(t.http, &ctx, None).await;
        let results: Vec<_> = f
            .expects
            .iter()
            .zip(&before)
            .map(|((sel, e), b)| {
                let extra = sentinels * sentinel_share(sel);
                let got = measure(&fams, sel, *e);
                (sel, *e, *b, got, holds(got, *b, *e, extra))
            })
            .collect();
        let tcp_open = exposition::sum(&fams, "tallyd_tcp_connections", &[]).unwrap_or(0.0);
        if results.iter().all(|r| r.4) && tcp_open == 0.0 {
            let ctx = ctx.clone();
            let lint = f.lint.clone();
            tokio::task::spawn_blocking(move || {
                exposition::assert_promtool(&text, &ctx, lint.as_deref())
            })
            .await
            .unwrap();
            break;
        }
        if start.elapsed() > DEADLINE {
            let failed: Vec<_> = results.iter().filter(|r| !r.4).collect();
            let stats: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.starts_with("tallyd_parse")
                            || l.starts_with("tallyd_tag")
                            || l.starts_with("tallyd_samples")
                            || l.starts_with("tallyd_lines"))
                })
                .collect();
            panic!(
                "{ctx}: expectations not met: {failed:#?}\nself-metrics:\n{}",
                stats.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_survived_valid_and_counted() {
    let fixtures = manifest();
    assert!(
        fixtures.len() >= 50,
        "the corpus shrank: {}",
        fixtures.len()
    );
    // Four at a time (each on its own daemon): most of a fixture's time is waiting.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut running = Vec::new();
    for f in fixtures {
        let slot = slots.clone().acquire_owned().await.unwrap();
        running.push(tokio::spawn(async move {
            let _slot = slot;
            let started = Instant::now();
            run_fixture(&f).await;
            eprintln!("{}: {:?}", f.file, started.elapsed());
        }));
    }
    for r in running {
        if let Err(e) = r.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// All fixtures into one long-lived daemon with two workers, over UDP and then again over TCP,
/// so they also meet each other (claims, collisions, caches): it stays up and every scrape
/// stays valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_corpus_into_one_daemon_twice() {
    let fixtures = manifest();
    let mut allow = fixtures
        .iter()
        .filter_map(|f| f.lint.clone())
        .collect::<Vec<_>>();
    allow.sort();
    allow.dedup();
    assert!(allow.len() <= 1, "one lint allowance is supported here");
    let allow = allow.first().map(String::as_str);
    let t = TestDaemon::start(&config(false, 2)).await;
    let tcp = t.d().tcp_addrs()[0];
    for round in 0..2 {
        for (i, f) in fixtures.iter().enumerate() {
            let payload = std::fs::read(corpus_dir().join(&f.file)).unwrap();
            if round == 0 && f.via != "tcp" {
                t.send(&payload);
            } else {
                let mut p = payload.clone();
                p.push(b'\n');
                tokio::task::spawn_blocking(move || send_tcp_stream(tcp, &p))
                    .await
                    .unwrap();
            }
            if i % 8 == 7 {
                checked_scrape(t.http, &format!("round {round} after {}", f.file), None).await;
            }
        }
    }
    t.send(b"corpus_done:1|c");
    wait_for(t.http, &[("corpus_done_total", 1.0)]).await;
    let (text, _) = checked_scrape(t.http, "after the whole corpus", Some(allow)).await;
    assert_eq!(value(&text, "overflow_total"), Some(f64::INFINITY));
    t.stop().await;
}

/// The cache-miss path copes with the largest tag sets a datagram can carry: 20 datagrams of
/// 10,000 tags each, every one a new series (the last tag differs), all become series (the wait
/// has only the common DEADLINE as a hang guard: how fast is for a bench to measure), and
/// the worker and the endpoint keep serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tags_per_line_do_not_wedge_a_worker() {
    let t = TestDaemon::start(&config(false, 1)).await;
    // Three-letter keys keep 10,000 tags inside one datagram.
    let letters = |i: usize| (b'a' + (i % 26) as u8) as char;
    let keys: Vec<String> = (0..9999)
        .map(|i| format!("{}{}{}:v", letters(i / 676), letters(i / 26), letters(i)))
        .collect();
    let base = keys.join(",");
    for n in 0..20 {
        let line = format!("wide:1|c|#{base},zz:{n}");
        assert!(line.len() < 65507);
        t.send(line.as_bytes());
    }
    let text = wait_until(t.http, "20 wide series", |text| {
        text.lines()
            .filter(|l| l.starts_with("wide_total{"))
            .count()
            == 20
    })
    .await;
    drop(text);
    // The same worker still takes new lines.
    t.send(b"after_wide:1|c");
    wait_for(t.http, &[("after_wide_total", 1.0)]).await;
    let (status, text) = get(t.http, "/metrics").await;
    assert_eq!(status, 200);
    exposition::parse(&text).expect("valid exposition");
    t.stop().await;
}
