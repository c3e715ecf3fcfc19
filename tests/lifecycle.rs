//! The daemon's life: readiness before and after the listeners are bound (through the library's
//! two-step start), SIGTERM on the built binary, `check-config`, `--version`, `--help`, and the
//! binary on its embedded defaults (needs 127.0.0.1:8125 and :9102 free: elsewhere it is
//! reported as SKIPPED, under CI=true it fails).
#![allow(unsafe_code)] // signals sent with libc::kill; each block says why it holds

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tallyd::daemon::{Daemon, Options};

async fn get(addr: SocketAddr, path: &'static str) -> u16 {
    tokio::task::spawn_blocking(move || http(addr, "GET", path).0)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_listeners_are_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tallyd.toml");
    std::fs::write(&path, config_text(1, "")).unwrap();
    let mut opts = Options::new(Some(path.clone()));
    opts.watch = false;
    let starting = Daemon::start_http(opts).await.expect("http starts");
    let addr = starting.http_addr;
    assert_eq!(get(addr, "/-/ready").await, 503, "not ready before bind");
    assert_eq!(get(addr, "/-/healthy").await, 200, "healthy while starting");
    assert_eq!(get(addr, "/metrics").await, 200, "scrapable while starting");
    // Still not ready after serving those requests: nothing but bind_listeners makes it ready.
    assert_eq!(get(addr, "/-/ready").await, 503);

    let d = starting.bind_listeners().await.expect("listeners bind");
    assert_eq!(d.http_addr, addr);
    assert_eq!(get(addr, "/-/ready").await, 200);
    send(d.udp_addrs()[0], b"up:1|c");
    wait_for(addr, &[("up_total", 1.0)]).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_fails_the_start() {
    // Something else holds the TCP port: bind_listeners fails and the daemon never turns ready.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tallyd.toml");
    let text = config_text(1, &format!("[[tcp]]\nlisten = \"127.0.0.1:{port}\"\n"));
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("listen = \"127.0.0.1:") && l.contains(&port.to_string()))
        .unwrap();
    std::fs::write(&path, &text).unwrap();
    let mut opts = Options::new(Some(path.clone()));
    opts.watch = false;
    let starting = Daemon::start_http(opts).await.expect("http starts");
    let addr = starting.http_addr;
    assert_eq!(get(addr, "/-/ready").await, 503);
    let err = match starting.bind_listeners().await {
        Ok(_) => panic!("bind must fail while the port is held"),
        Err(e) => e.to_string(),
    };
    // One sentence: which listener, where the file sets it, the address, the OS reason.
    assert_eq!(
        err,
        format!(
            "cannot bind the TCP listener tcp://127.0.0.1:{port} ({}, line {line}): \
             address already in use",
            path.display()
        )
    );
}

/// Linux lets an autobind with SO_REUSEPORT pick a port another SO_REUSEPORT socket of the same
/// user holds, and the two would split each other's datagrams (this broke CI once: two test
/// daemons on port 0 traded lines). With 4,000 such sockets holding about one port in seven,
/// 40 daemons asked for UDP port 0 would, without the fix, land on a held port with
/// probability 1 - (6/7)^40 > 99.7%; every one must get a port nobody else holds, and a line
/// sent there must reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_port_zero_never_joins_someone_elses_reuseport_group() {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut held = std::collections::HashSet::new();
    let mut holders = Vec::new();
    for _ in 0..4000 {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_port(true).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&any.into()).unwrap();
        held.insert(s.local_addr().unwrap().as_socket().unwrap().port());
        holders.push(s);
    }
    for i in 0..40 {
        let t = TestDaemon::start(&config_text(2, "")).await;
        let port = t.udp[0].port();
        assert!(!held.contains(&port), "daemon {i} joined held port {port}");
        t.send(format!("own_port_{i}:1|c").as_bytes());
        wait_for(t.http, &[(&format!("own_port_{i}_total"), 1.0)]).await;
        t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero() {
    let mut d = tokio::task::spawn_blocking(|| Spawned::start(""))
        .await
        .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..100 {
        sock.send_to(format!("term:1|c\nterm.g:{i}|g").as_bytes(), d.udp)
            .unwrap();
    }
    // Everything sent before the signal is counted.
    wait_for(d.http, &[("term_total", 100.0), ("term_g", 99.0)]).await;
    d.signal(libc::SIGTERM);
    let (status, log) = tokio::task::spawn_blocking(move || {
        let st = d.wait_exit();
        (st, d.log())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("stop signal received"), "log:\n{log}");
}

#[test]
fn sigint_exits_zero_too() {
    let mut d = Spawned::start("");
    d.signal(libc::SIGINT);
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
}

fn tallyd(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run tallyd")
}

fn check_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    let out = tallyd(&["check-config", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_good_files() {
    for text in [
        String::new(),
        config_text(0, ""),
        config_text(
            2,
            "[limits]\nmax_series = 10\n[[mapping]]\nmatch = \"a.*\"\nname = \"a_$1\"\n",
        ),
    ] {
        let (code, stdout, stderr) = check_config(&text);
        assert_eq!(code, Some(0), "{text}\nstderr: {stderr}");
        assert!(stdout.contains(": ok"), "{stdout}");
    }
    // The documented example in the repository (packaged as /etc/tallyd/tallyd.toml).
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tallyd.toml");
    let out = tallyd(&["check-config", example]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_and_help() {
    let out = tallyd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tallyd {}", env!("CARGO_PKG_VERSION"))
    );
    let out = tallyd(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["--config", "check-config", "--version", "--help"] {
        assert!(help.contains(want), "--help lacks {want}:\n{help}");
    }
    let out = tallyd(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

/// With no --config the binary listens on 127.0.0.1:8125 (UDP) and 127.0.0.1:9102 (HTTP).
/// Needs both free: when they are not, the test reports SKIPPED (and fails under CI=true).
#[test]
fn no_config_runs_on_the_default_ports() {
    let (udp, http): (SocketAddr, SocketAddr) = (
        "127.0.0.1:8125".parse().unwrap(),
        "127.0.0.1:9102".parse().unwrap(),
    );
    let free = UdpSocket::bind(udp).is_ok() && TcpListener::bind(http).is_ok();
    if !free {
        skip_or_fail(
            "no_config_runs_on_the_default_ports because 127.0.0.1:8125/udp or \
             127.0.0.1:9102/tcp is in use on this machine",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    let mut child = Command::new(binary())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("tallyd exited early ({st:?}); log:\n{}", log());
        }
        if std::net::TcpStream::connect(http).is_ok() && http_status(http, "/-/ready") == 200 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never ready; log:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    send(udp, b"defaults.ok:1|c");
    rt.block_on(wait_for(http, &[("defaults_ok_total", 1.0)]));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!(
                "no exit after SIGTERM (hang guard {DEADLINE:?}); log:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "log:\n{}", log());
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path).0
}
