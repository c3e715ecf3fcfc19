//! Overload and the cardinality attack, against a real in-process daemon on loopback.
//!
//! - A receive buffer of 64 KiB and one worker, flooded by two sender threads until the kernel
//!   has dropped datagrams and at least five scrapes were served during the flood: the daemon
//!   stays up, every scrape during the flood answers 200 with a valid exposition, and
//!   afterwards the accounting identity is exact: lines sent = `tallyd_lines_received_total` +
//!   datagrams the kernel dropped (`tallyd_udp_kernel_drops_total`) x lines per datagram (one
//!   here).
//! - `[limits] max_series = 1000` against a sender that invents a new tag value per line while
//!   a well-behaved sender keeps incrementing 10 fixed series: the well-behaved totals are
//!   exact, `tallyd_series` never passes 1000, and every refused line is counted.
//! - Slow HTTP clients holding every connection slot are closed after `header_read_timeout`,
//!   and a scrape queued behind them gets through.
//!
//! Nothing here is timed: how fast a scrape answers under load is for a bench to measure; a
//! wait on a condition has the common `DEADLINE` as a hang guard.

mod common;
mod exposition;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn config(workers: usize, recv_buffer: &str, extra: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\n\
         recv_buffer = \"{recv_buffer}\"\n\n{extra}\n"
    )
}

/// Scrapes through the strict reader; returns the text and the families. ([`DEADLINE`] is
/// the read timeout: a hang guard.)
async fn strict_scrape(addr: SocketAddr) -> (String, Vec<exposition::Family>) {
    tokio::task::spawn_blocking(move || {
        let (status, text) = exposition::fetch(addr, "/metrics", DEADLINE)
            .unwrap_or_else(|e| panic!("scrape failed: {e}"));
        assert_eq!(status, 200, "scrape status");
        let fams = exposition::parse(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}"));
        (text, fams)
    })
    .await
    .unwrap()
}

fn total(fams: &[exposition::Family], name: &str) -> f64 {
    exposition::sum(fams, name, &[]).unwrap_or(0.0)
}

fn reason(fams: &[exposition::Family], name: &str, reason: &str) -> f64 {
    exposition::sum(fams, name, &[("reason".into(), reason.into())]).unwrap_or(0.0)
}

/// Sends one-line datagrams as fast as the socket takes them until `stop`; returns how many
/// the local kernel accepted.
fn flood(to: SocketAddr, line: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    s.connect(to).expect("connect");
    let (mut sent, mut refused) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            match s.send(line.as_bytes()) {
                Ok(_) => sent += 1,
                Err(_) => refused += 1,
            }
        }
    }
    (sent, refused)
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_into_a_tiny_buffer_drops_only_at_the_kernel_and_counts_it() {
    let t = TestDaemon::start(&config(1, "64KiB", "")).await;
    let target = t.udp[0];
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the senders however the test ends (a failed scrape must not leave them flooding).
    let _stop_on_drop = StopOnDrop(stop.clone());
    let senders: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || flood(target, format!("flood.s{i}:1|c"), stop))
        })
        .collect();
    // Flood until the kernel has dropped datagrams (read by the scrape) and at least five
    // scrapes were served meanwhile, each a 200 with a valid exposition.
    let started = Instant::now();
    let mut scrapes = 0;
    loop {
        let (_, fams) = strict_scrape(t.http).await;
        scrapes += 1;
        if scrapes >= 5 && total(&fams, "tallyd_udp_kernel_drops_total") > 0.0 {
            break;
        }
        if started.elapsed() > DEADLINE {
            panic!(
                "a 64 KiB buffer under a 2-thread flood never overflowed (hang guard \
                 {DEADLINE:?}, {scrapes} scrapes)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut send_errors) = (0, 0);
    for s in senders {
        let (a, b) = s.join().expect("sender");
        sent += a;
        send_errors += b;
    }
    eprintln!(
        "flood: {sent} datagrams sent ({send_errors} refused by the sender's kernel), \
         {scrapes} scrapes during the flood"
    );

    // Once the socket is drained the identity must close exactly.
    let deadline = Instant::now() + DEADLINE;
    let (received, dropped, flood_total, fams) = loop {
        let (_, fams) = strict_scrape(t.http).await;
        let received = total(&fams, "tallyd_lines_received_total");
        let dropped = total(&fams, "tallyd_udp_kernel_drops_total");
        let flood_total = exposition::sum(&fams, "flood_s0_total", &[]).unwrap_or(0.0)
            + exposition::sum(&fams, "flood_s1_total", &[]).unwrap_or(0.0);
        // One scrape reads the series before tallyd's own counters, so a batch aggregated in
        // between shows in `received` and not yet in the series: wait for both to agree.
        let settled = received + dropped == sent as f64 && flood_total == received;
        if settled || Instant::now() > deadline {
            break (received, dropped, flood_total, fams);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("received {received}, kernel drops {dropped}, aggregated {flood_total}");
    assert!(
        dropped > 0.0,
        "a 64 KiB buffer under a 2-thread flood should overflow; nothing was dropped"
    );
    assert_eq!(
        received + dropped,
        sent as f64,
        "lines sent = lines received + kernel drops x 1 line per datagram"
    );
    assert_eq!(flood_total, received, "every received line was aggregated");
    let errors: f64 = ["tallyd_parse_errors_total", "tallyd_samples_dropped_total"]
        .iter()
        .map(|n| total(&fams, n))
        .sum();
    assert_eq!(errors, 0.0);
    assert_eq!(
        exposition::fetch(t.http, "/-/healthy", DEADLINE).unwrap().0,
        200
    );
    t.stop().await;
}

/// Paces every sender to one listener on the daemon's own datagram counter: at most
/// [`Window::SIZE`] datagrams sent and not yet read, so the daemon (a debug build on a shared
/// machine) keeps up and nothing is lost to the kernel, however slow the machine is, instead
/// of hoping a pause is long enough.
#[derive(Clone)]
struct Window {
    sent: Arc<AtomicU64>,
    /// `tallyd_datagrams_received_total` of the listener, read in-process (cheap); the scrape
    /// stays the oracle.
    received: prometheus::IntCounter,
}

impl Window {
    /// 200 datagrams of at most 50 short lines: well under a quarter of an 8 MiB buffer.
    const SIZE: u64 = 200;

    fn new(t: &TestDaemon) -> Self {
        let received = t
            .d()
            .telemetry()
            .datagrams
            .with_label_values(&["udp://127.0.0.1:0"]);
        Self {
            sent: Arc::new(AtomicU64::new(0)),
            received,
        }
    }

    /// Waits until one more datagram fits in the window, then counts it as sent. Fails when
    /// the daemon reads nothing for [`DEADLINE`] (a hang guard).
    fn admit(&self) {
        let mut seen = self.received.get();
        let mut since = Instant::now();
        while self.sent.load(Ordering::SeqCst) >= self.received.get() + Self::SIZE {
            let now = self.received.get();
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            assert!(since.elapsed() < DEADLINE, "the daemon stopped reading");
            std::thread::sleep(Duration::from_micros(200));
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sends `lines` packed `per` to a datagram, paced by `window`; returns the lines sent.
fn send_lines(to: SocketAddr, lines: Vec<String>, per: usize, window: &Window) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    s.connect(to).expect("connect");
    let mut sent = 0;
    for chunk in lines.chunks(per) {
        window.admit();
        s.send(chunk.join("\n").as_bytes()).expect("send");
        sent += chunk.len() as u64;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cardinality_attack_is_stopped_and_well_behaved_totals_stay_exact() {
    let t = TestDaemon::start(&config(2, "8MiB", "[limits]\nmax_series = 1000\n")).await;
    let target = t.udp[0];
    let window = Window::new(&t);
    // The well-behaved sender's series exist before the attack.
    let first: Vec<String> = (0..10).map(|i| format!("good.s{i}:1|c")).collect();
    send_lines(target, first, 10, &window);
    let want: Vec<(String, f64)> = (0..10).map(|i| (format!("good_s{i}_total"), 1.0)).collect();
    let want_ref: Vec<(&str, f64)> = want.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    wait_for(t.http, &want_ref).await;

    const ATTACK: u64 = 50_000;
    const ROUNDS: u64 = 500;
    let attacker = std::thread::spawn({
        let window = window.clone();
        move || {
            let lines = (0..ATTACK).map(|n| format!("attack:1|c|#id:{n}")).collect();
            send_lines(target, lines, 50, &window)
        }
    });
    let good = std::thread::spawn({
        let window = window.clone();
        move || {
            let lines = (0..ROUNDS)
                .flat_map(|_| (0..10).map(|i| format!("good.s{i}:1|c")))
                .collect();
            send_lines(target, lines, 10, &window)
        }
    });
    let mut max_series = 0.0f64;
    while !(attacker.is_finished() && good.is_finished()) {
        let (_, fams) = strict_scrape(t.http).await;
        max_series = max_series.max(total(&fams, "tallyd_series"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attack_sent = attacker.join().unwrap();
    let good_sent = good.join().unwrap();
    let expected_lines = (10 + attack_sent + good_sent) as f64;

    let deadline = Instant::now() + DEADLINE;
    let (text, fams) = loop {
        let (text, fams) = strict_scrape(t.http).await;
        let received = total(&fams, "tallyd_lines_received_total");
        let dropped = total(&fams, "tallyd_udp_kernel_drops_total");
        if received >= expected_lines || dropped > 0.0 || Instant::now() > deadline {
            break (text, fams);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    max_series = max_series.max(total(&fams, "tallyd_series"));
    assert_eq!(
        total(&fams, "tallyd_udp_kernel_drops_total"),
        0.0,
        "the paced senders must not overflow an 8 MiB buffer (otherwise totals cannot be exact)"
    );
    assert_eq!(total(&fams, "tallyd_lines_received_total"), expected_lines);
    for i in 0..10 {
        assert_eq!(
            value(&text, &format!("good_s{i}_total")),
            Some(1.0 + ROUNDS as f64),
            "good_s{i}_total"
        );
    }
    let attack_series = exposition::sum(&fams, "attack_total", &[])
        .map(|_| {
            fams.iter()
                .flat_map(|f| &f.samples)
                .filter(|s| s.name == "attack_total")
                .count() as f64
        })
        .unwrap_or(0.0);
    let series = total(&fams, "tallyd_series");
    eprintln!(
        "attack: {attack_sent} lines, {attack_series} series admitted, tallyd_series {series} \
         (max seen {max_series})"
    );
    assert!(max_series <= 1000.0, "tallyd_series reached {max_series}");
    assert_eq!(series, 1000.0, "the limit is filled, not exceeded");
    assert_eq!(attack_series, 990.0);
    assert_eq!(
        reason(&fams, "tallyd_series_refused_total", "max_series"),
        attack_sent as f64 - attack_series,
        "every refused attack line is counted"
    );
    assert_eq!(
        total(&fams, "tallyd_samples_total"),
        expected_lines - (attack_sent as f64 - attack_series),
        "every other line was aggregated"
    );

    // After the attack: existing series keep updating, a new series is refused and counted.
    send_lines(
        target,
        (0..10)
            .map(|i| format!("good.s{i}:1|c"))
            .chain(std::iter::once("newcomer:1|c".to_string()))
            .collect(),
        11,
        &window,
    );
    let want: Vec<(String, f64)> = (0..10)
        .map(|i| (format!("good_s{i}_total"), 2.0 + ROUNDS as f64))
        .collect();
    let want_ref: Vec<(&str, f64)> = want.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let text = wait_for(t.http, &want_ref).await;
    assert_eq!(value(&text, "newcomer_total"), None);
    wait_until(t.http, "the newcomer's refusal counted", |text| {
        value(text, "tallyd_series_refused_total{reason=\"max_series\"}")
            == Some(attack_sent as f64 - attack_series + 1.0)
    })
    .await;
    t.stop().await;
}

/// Slowloris: clients that take every HTTP connection slot and send nothing (or half a
/// request) are closed after `header_read_timeout`, and a scrape waiting behind them gets
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_clients_cannot_hold_the_endpoint() {
    use std::io::{Read, Write};
    let t = TestDaemon::start(&config(1, "1MiB", "").replace(
        "[http]\n",
        "[http]\nmax_connections = 2\nheader_read_timeout = \"1s\"\n",
    ))
    .await;
    let http = t.http;
    let closed = tokio::task::spawn_blocking(move || {
        // connect() returns once the handshake is done, with the connection in the listener's
        // accept queue, which is FIFO: the server accepts these two first, and they take both
        // slots whenever it gets to them, so the scrape below waits behind them. No pause needed.
        let mut silent = std::net::TcpStream::connect(http).unwrap();
        let mut partial = std::net::TcpStream::connect(http).unwrap();
        partial
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let (status, _) = exposition::fetch(http, "/metrics", DEADLINE).unwrap();
        assert_eq!(status, 200);
        let mut closed = 0;
        for s in [&mut silent, &mut partial] {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut buf = [0u8; 256];
            // A 408 or a plain close; either way the server ends the connection.
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed += 1;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        closed
    })
    .await
    .unwrap();
    assert_eq!(closed, 2, "the slow clients were closed by the server");
    t.stop().await;
}
