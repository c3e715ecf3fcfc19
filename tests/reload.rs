//! Live config reloads, end to end: by atomic rename (the file watcher), by SIGHUP (the built
//! binary), by `POST /-/reload`, through a Kubernetes-style `..data` symlink swap, and with
//! broken files. While a reload happens a sender keeps sending increments on its own socket;
//! at the end its counter must equal exactly what it sent (no increment lost at a swap).
//!
//! A change has taken effect when a scrape shows the new mapping's (or limit's) output; the
//! tests wait for that, with the common [`DEADLINE`] only as a hang guard. How fast a reload
//! lands is not something a test on a shared machine can time honestly.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tallyd::daemon::{Daemon, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_reload_under_traffic() {
    let t = TestDaemon::start(&config_text(2, "")).await;
    let sender = Sender::start(t.udp[0], "steady:1|c");
    send(t.udp[0], b"other.x:1|c");
    wait_until(t.http, "traffic before the reload", |s| {
        value(s, "other_x_total") == Some(1.0) && value(s, "steady_total").is_some()
    })
    .await;

    t.rewrite_config(&config_text(2, RENAME));
    let text = wait_renamed(t.http, t.udp[0]).await;
    // Samples that arrived before the swap kept the old name; that series stays.
    assert!(value(&text, "other_x_total").is_some(), "{text}");

    assert_nothing_lost(t.http, sender).await;
    // The temp file's events and the rename's events make exactly one reload.
    let text = wait_for(t.http, &[(SUCCESS, 1.0), (FAILURE, 0.0), (LAST_OK, 1.0)]).await;
    assert_eq!(value(&text, "tallyd_config_restart_required"), Some(0.0));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_by_rename_takes_effect() {
    let t = TestDaemon::start(&config_text(1, "[limits]\nmax_series = 2\n")).await;
    send(t.udp[0], b"a:1|c\nb:1|c\nc:1|c");
    wait_for(
        t.http,
        &[
            ("a_total", 1.0),
            ("b_total", 1.0),
            (r#"tallyd_series_refused_total{reason="max_series"}"#, 1.0),
        ],
    )
    .await;
    t.rewrite_config(&config_text(1, "[limits]\nmax_series = 3\n"));
    let start = std::time::Instant::now();
    loop {
        send(t.udp[0], b"c:1|c");
        let text = scrape(t.http).await;
        if value(&text, "c_total").is_some() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the limit was never raised (hang guard {DEADLINE:?}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let mut d = tokio::task::spawn_blocking(|| Spawned::start(""))
        .await
        .unwrap();
    let sender = Sender::start(d.udp, "steady:1|c");
    wait_until(d.http, "traffic", |s| value(s, "steady_total").is_some()).await;

    // SIGHUP re-reads the file; unchanged, it changes and counts nothing (one rule for every
    // trigger).
    d.signal(libc::SIGHUP);
    wait_log(&d, "config unchanged").await;
    wait_for(d.http, &[(SUCCESS, 0.0), (LAST_OK, 1.0)]).await;

    // A new file plus SIGHUP: the mapping takes effect.
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    d.rewrite_config(&format!("{text}\n{RENAME}"));
    d.signal(libc::SIGHUP);
    wait_renamed(d.http, d.udp).await;
    // The watcher sees the same file too, before or after the signal: one reload in all.
    wait_for(d.http, &[(SUCCESS, 1.0), (FAILURE, 0.0)]).await;

    assert_nothing_lost(d.http, sender).await;
    d.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let st = d.wait_exit();
        (st, d.log())
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}; log:\n{}",
        status.0,
        status.1
    );
}

/// POST /-/reload on a daemon that does not watch its file, so each reload is the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_answers_with_the_outcome() {
    let t = TestDaemon::start_with(&config_text(1, ""), |o| o.watch = false).await;
    let post =
        |addr: SocketAddr| tokio::task::spawn_blocking(move || http(addr, "POST", "/-/reload"));

    // The file in force: nothing to reload, nothing counted.
    let (status, _, body) = post(t.http).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("config unchanged"), "{body}");
    wait_for(t.http, &[(SUCCESS, 0.0), (LAST_OK, 1.0)]).await;

    // A changed file: the reply comes after the swap, so the next sample is mapped.
    std::fs::write(&t.config_path, config_text(1, RENAME)).unwrap();
    let (status, _, body) = post(t.http).await.unwrap();
    assert_eq!(status, 200, "{body}");
    send(t.udp[0], b"other.x:1|c");
    wait_for(t.http, &[("renamed_x_total", 1.0), (SUCCESS, 1.0)]).await;

    // A broken file: 400 with the error (line, column, key), the old config keeps serving.
    let broken = format!(
        "{}[limits]\nmax_series = \"lots\"\n",
        config_text(1, RENAME)
    );
    let line = 1 + broken
        .lines()
        .position(|l| l.starts_with("max_series"))
        .unwrap();
    std::fs::write(&t.config_path, &broken).unwrap();
    let (status, _, body) = post(t.http).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("config reload failed"), "{body}");
    assert!(body.contains(&format!("line {line}, column 14")), "{body}");
    assert!(body.contains("max_series"), "{body}");
    send(t.udp[0], b"other.x:1|c");
    wait_for(
        t.http,
        &[
            ("renamed_x_total", 2.0),
            (SUCCESS, 1.0),
            (FAILURE, 1.0),
            (LAST_OK, 0.0),
        ],
    )
    .await;
    let (status, _, _) = tokio::task::spawn_blocking({
        let a = t.http;
        move || http(a, "GET", "/-/ready")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);

    // Only POST.
    let (status, _, _) = tokio::task::spawn_blocking({
        let a = t.http;
        move || http(a, "GET", "/-/reload")
    })
    .await
    .unwrap();
    assert_eq!(status, 405);
    t.stop().await;

    // With the lifecycle endpoints off: 403, and nothing is reloaded.
    let off = "[http]\nlisten = \"127.0.0.1:0\"\nenable_lifecycle = false\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n";
    let t = TestDaemon::start_with(off, |o| o.watch = false).await;
    let (status, _, body) = post(t.http).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("enable_lifecycle"), "{body}");
    wait_for(t.http, &[(SUCCESS, 0.0), (FAILURE, 0.0)]).await;
    t.stop().await;
}

/// Broken files written by rename: each is counted as a failure once, the old config (and its
/// mapping) keeps serving, readiness stays 200; a good file afterwards is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_keeps_the_old_one() {
    let good = config_text(1, "[[mapping]]\nmatch = \"svc.*\"\nname = \"svc_$1\"\n");
    let t = TestDaemon::start(&good).await;
    let sender = Sender::start(t.udp[0], "steady:1|c");
    send(t.udp[0], b"svc.a:1|c");
    wait_for(t.http, &[("svc_a_total", 1.0)]).await;

    let broken = [
        ("bad TOML", format!("{good}[limits\nmax_series = 5\n")),
        ("unknown key", format!("{good}[limits]\nmax_seriez = 5\n")),
        (
            "bad value",
            format!("{good}[defaults]\nttl = \"forever\"\n"),
        ),
        (
            "bad mapping",
            format!("{good}[[mapping]]\nmatch = \"x.*\"\nname = \"x_$2\"\n"),
        ),
    ];
    for (i, (what, text)) in broken.iter().enumerate() {
        let n = (i + 1) as f64;
        t.rewrite_config(text);
        wait_for(t.http, &[(FAILURE, n), (SUCCESS, 0.0), (LAST_OK, 0.0)]).await;
        let http = t.http;
        let (status, _, _) = tokio::task::spawn_blocking(move || http_get(http, "/-/ready"))
            .await
            .unwrap();
        assert_eq!(status, 200, "ready after a {what} reload");
        send(t.udp[0], b"svc.a:1|c");
        wait_for(t.http, &[("svc_a_total", n + 1.0)]).await;
    }

    // A good file again is taken.
    t.rewrite_config(&format!("{good}{RENAME}"));
    wait_renamed(t.http, t.udp[0]).await;
    wait_for(t.http, &[(SUCCESS, 1.0), (FAILURE, 4.0), (LAST_OK, 1.0)]).await;
    assert_nothing_lost(t.http, sender).await;
    t.stop().await;
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(addr, "GET", path)
}

/// A Kubernetes ConfigMap volume: `dir/tallyd.toml -> ..data/tallyd.toml`,
/// `dir/..data -> ..2026_a`; an update writes `..2026_b` and swaps `..data` by renaming a new
/// symlink over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write_version = |name: &str, text: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("tallyd.toml"), text).unwrap();
    };
    write_version("..2026_a", &config_text(1, ""));
    symlink("..2026_a", root.join("..data")).unwrap();
    symlink("..data/tallyd.toml", root.join("tallyd.toml")).unwrap();

    let d = Daemon::start(Options::new(Some(root.join("tallyd.toml"))))
        .await
        .expect("daemon starts");
    let (http, udp) = (d.http_addr, d.udp_addrs()[0]);
    let sender = Sender::start(udp, "steady:1|c");
    wait_until(http, "traffic", |s| value(s, "steady_total").is_some()).await;

    write_version("..2026_b", &config_text(1, RENAME));
    swap_symlink(root, "..2026_b");
    wait_renamed(http, udp).await;
    wait_for(http, &[(SUCCESS, 1.0), (FAILURE, 0.0)]).await;
    assert_nothing_lost(http, sender).await;
    // The old version directory is deleted, as the kubelet does: nothing changes.
    std::fs::remove_dir_all(root.join("..2026_a")).unwrap();
    send(udp, b"other.x:1|c");
    wait_until(http, "still mapped", |s| {
        value(s, "renamed_x_total").is_some() && value(s, FAILURE) == Some(0.0)
    })
    .await;
    d.shutdown().await;
}

/// Points `root/..data` at `target` atomically: a temp symlink renamed over it.
fn swap_symlink(root: &Path, target: &str) {
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
}

/// A reload of a config file that every user may write logs a warning naming the file and
/// its mode (the new config still applies: the warning is about who else could change it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_warns_of_a_config_file_anyone_can_write() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tokio::task::spawn_blocking(|| Spawned::start(""))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    // The mode first: whichever reload applies the new text (the watcher's or SIGHUP's) sees it.
    std::fs::set_permissions(&d.config_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(&d.config_path, format!("{text}\n{RENAME}")).unwrap();
    d.signal(libc::SIGHUP);
    wait_renamed(d.http, d.udp).await;
    wait_log(
        &d,
        &format!(
            "{} is writable by every user (mode 0666)",
            d.config_path.display()
        ),
    )
    .await;
}
