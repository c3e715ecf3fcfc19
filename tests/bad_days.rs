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
        value(&text, "tallyd_log_lines_dropped_total{reason=\"queue_full\"}"),
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
