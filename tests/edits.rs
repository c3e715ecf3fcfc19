//! Config edits as editors, tools and operators make them, against the real daemon with a
//! sender running on its configured port throughout: every editing style ends in exactly one
//! reload of the final content and loses no datagram; a file that is missing for a while is
//! one failure, and a success again when it returns; a listener whose port is busy at reload
//! is reported down and bound once the port frees; a file with basic auth is never served
//! without it, even while it is rewritten in place.
//!
//! The pauses inside an edit (between the two writes of an in-place rewrite) are part of the
//! edit being reproduced, not synchronisation: every wait for an outcome is a wait on a value.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A daemon on `extra` config with a sender on its UDP port; returns both.
async fn with_sender(extra: &str) -> (TestDaemon, Sender) {
    let t = TestDaemon::start(&config_text(1, extra)).await;
    let sender = Sender::start(t.udp[0], "steady:1|c");
    wait_until(t.http, "traffic", |s| value(s, "steady_total").is_some()).await;
    (t, sender)
}

/// Rewrites `path` in place (truncate, then two writes `pause` apart), as `gen > file` or an
/// editor that does not write by rename does.
fn write_in_place(path: &Path, text: &str, pause: Duration) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open for rewrite");
    let (a, b) = text.split_at(text.len() / 2);
    f.write_all(a.as_bytes()).expect("first half");
    f.flush().unwrap();
    std::thread::sleep(pause);
    f.write_all(b.as_bytes()).expect("second half");
}

/// The new mapping is in force, after exactly one successful reload and no failure, and the
/// sender lost nothing.
async fn one_reload_nothing_lost(http: SocketAddr, udp: SocketAddr, sender: Sender) {
    wait_renamed(http, udp).await;
    wait_for(http, &[(SUCCESS, 1.0), (FAILURE, 0.0), (LAST_OK, 1.0)]).await;
    assert_nothing_lost(http, sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_rewrite_in_two_chunks_is_read_once_whole() {
    let (t, sender) = with_sender("").await;
    let path = t.config_path.clone();
    let text = config_text(1, RENAME);
    tokio::task::spawn_blocking(move || {
        write_in_place(&path, &text, Duration::from_millis(500));
    })
    .await
    .unwrap();
    one_reload_nothing_lost(t.http, t.udp[0], sender).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_over_the_file() {
    let (t, sender) = with_sender("").await;
    let other = t.dir.path().join("new.toml.in");
    std::fs::write(&other, config_text(1, RENAME)).unwrap();
    std::fs::copy(&other, &t.config_path).unwrap();
    one_reload_nothing_lost(t.http, t.udp[0], sender).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_rename_as_vim_and_ansible() {
    let (t, sender) = with_sender("").await;
    t.rewrite_config(&config_text(1, RENAME));
    one_reload_nothing_lost(t.http, t.udp[0], sender).await;
    t.stop().await;
}

/// `dir/tallyd.toml` is a symlink to `other/real.toml`; the target is replaced by rename in its
/// own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_into_another_directory_whose_target_is_edited() {
    let dir = tempfile::tempdir().unwrap();
    let tgt = dir.path().join("tgt");
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&tgt).unwrap();
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(tgt.join("real.toml"), config_text(1, "")).unwrap();
    std::os::unix::fs::symlink(tgt.join("real.toml"), cfg.join("tallyd.toml")).unwrap();
    let d =
        tallyd::daemon::Daemon::start(tallyd::daemon::Options::new(Some(cfg.join("tallyd.toml"))))
            .await
            .expect("daemon starts");
    let (http, udp) = (d.http_addr, d.udp_addrs()[0]);
    let sender = Sender::start(udp, "steady:1|c");
    wait_until(http, "traffic", |s| value(s, "steady_total").is_some()).await;

    std::fs::write(tgt.join(".t"), config_text(1, RENAME)).unwrap();
    std::fs::rename(tgt.join(".t"), tgt.join("real.toml")).unwrap();
    one_reload_nothing_lost(http, udp, sender).await;
    d.shutdown().await;
}

/// A file that disappears is one failure however many events its directory sees (here a log
/// written beside it), and when it comes back unchanged the reload is a success again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_one_failure_and_its_return_a_success() {
    let (t, sender) = with_sender("").await;
    let away = t.dir.path().join("away.toml");
    std::fs::rename(&t.config_path, &away).unwrap();
    wait_for(t.http, &[(FAILURE, 1.0), (LAST_OK, 0.0)]).await;
    // A busy neighbour: 200 writes in the directory, each an event.
    let log = t.dir.path().join("tallyd.log");
    for i in 0..200 {
        std::fs::write(&log, format!("line {i}\n")).unwrap();
    }
    // The same file back: a success, and the gauge back to 1.
    std::fs::rename(&away, &t.config_path).unwrap();
    wait_for(t.http, &[(SUCCESS, 1.0), (LAST_OK, 1.0)]).await;
    let text = scrape(t.http).await;
    assert_eq!(value(&text, FAILURE), Some(1.0), "{text}");
    assert_nothing_lost(t.http, sender).await;
    t.stop().await;
}

/// An empty file written by an event is not applied: the running config stays (a failure is
/// counted, so the gauge says the file on disk is not what runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_from_an_event_is_not_applied() {
    let (t, sender) = with_sender(RENAME).await;
    std::fs::write(&t.config_path, "").unwrap();
    wait_for(t.http, &[(FAILURE, 1.0), (LAST_OK, 0.0)]).await;
    // Still the configured listener and mapping.
    wait_renamed(t.http, t.udp[0]).await;
    assert_nothing_lost(t.http, sender).await;
    t.stop().await;
}

/// A `[[tcp]]` listener added on a busy port: the reload is partial, the listener is reported
/// down, and it is bound once the port is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_at_reload_is_retried_until_it_binds() {
    let t = TestDaemon::start(&config_text(1, "")).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let up = format!("tallyd_listener_up{{listener=\"tcp://127.0.0.1:{port}\"}}");
    t.rewrite_config(&config_text(
        1,
        &format!("[[tcp]]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    wait_for(
        t.http,
        &[(PARTIAL, 1.0), (SUCCESS, 0.0), (LAST_OK, 0.0), (&up, 0.0)],
    )
    .await;
    drop(busy);
    wait_for(t.http, &[(&up, 1.0), (LAST_OK, 1.0)]).await;
    // The listener works.
    send_tcp(SocketAddr::from(([127, 0, 0, 1], port)), b"tcp.after:1|c\n");
    wait_for(t.http, &[("tcp_after_total", 1.0)]).await;
    t.stop().await;
}

/// With `[http.basic_auth_users]` in the file, 30 in-place rewrites (two writes 20 ms apart)
/// never let an unauthenticated scrape through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_never_off_while_the_file_is_rewritten() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let text = config_text(1, "").replace(
        "enable_lifecycle = true\n",
        &format!("enable_lifecycle = true\n[http.basic_auth_users]\nprom = \"{hash}\"\n"),
    );
    let t = TestDaemon::start(&text).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, addr) = (stop.clone(), t.http);
        std::thread::spawn(move || {
            let mut statuses = std::collections::BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _, _) = http(addr, "GET", "/metrics");
                *statuses.entry(status).or_insert(0u32) += 1;
            }
            statuses
        })
    };
    let path = t.config_path.clone();
    let edits = text.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..30 {
            write_in_place(&path, &edits, Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    // The file settles to the text in force: nothing to reload, nothing counted. (Read with
    // credentials; the prober keeps asking without them meanwhile.)
    let http_addr = t.http;
    let text = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            let text = authed_scrape(http_addr);
            if value(&text, LAST_OK) == Some(1.0) && value(&text, SUCCESS) == Some(0.0) {
                return text;
            }
            assert!(start.elapsed() < DEADLINE, "never settled; last:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(value(&text, FAILURE), Some(0.0), "{text}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = prober.join().unwrap();
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![401],
        "unauthenticated scrapes while the file was rewritten: {statuses:?}"
    );
    t.stop().await;
}

/// `GET /metrics` as user `prom`, password `s3cret`; the body without the chunked coding.
fn authed_scrape(addr: SocketAddr) -> String {
    use base64::Engine as _;
    use std::io::Read as _;
    let cred = base64::engine::general_purpose::STANDARD.encode("prom:s3cret");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).ok();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {cred}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    dechunk(body)
}

/// `[log]` applies live: a format change is in the next line the daemon logs, and nothing
/// waits for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_and_level_apply_live() {
    let d = tokio::task::spawn_blocking(|| Spawned::start(""))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    d.rewrite_config(&format!(
        "{text}\n[log]\nformat = \"json\"\nlevel = \"info\"\n"
    ));
    wait_log(&d, r#""fields":{"message":"config reloaded"#).await;
    wait_for(
        d.http,
        &[("tallyd_config_restart_required", 0.0), (SUCCESS, 1.0)],
    )
    .await;
    d.rewrite_config(&format!(
        "{text}\n[log]\nformat = \"logfmt\"\nlevel = \"warn\"\n"
    ));
    wait_for(d.http, &[(SUCCESS, 2.0)]).await;
    // At `warn`, the reload's own info line is not written; a warning is, in logfmt.
    d.rewrite_config(&format!(
        "{text}\n[log]\nformat = \"logfmt\"\nlevel = \"warn\"\n[[mapping]]\nmatch = \"a.*\"\nname = \"x_$1\"\n[[mapping]]\nmatch = \"a.b\"\nname = \"y\"\n"
    ));
    wait_for(d.http, &[(SUCCESS, 3.0)]).await;
    wait_log(&d, "level=warn").await;
    assert!(
        !d.log().contains("level=info"),
        "an info line at level warn:\n{}",
        d.log()
    );
}
