//! Shared test harness: a real daemon (in-process through the library, or the built binary)
//! on ephemeral loopback ports, real UDP datagrams, real HTTP scrapes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tallyd::daemon::{Daemon, Options};

/// How long a test waits for a value before failing with the last scrape.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The config a test daemon runs on: ephemeral ports plus `extra` TOML.
pub fn config_text(workers: usize, extra: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nenable_lifecycle = true\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\nrecv_buffer = \"4MiB\"\n\n{extra}\n"
    )
}

/// An in-process daemon with its config file in a temp dir.
pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub http: SocketAddr,
    pub udp: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestDaemon {
    /// Starts a daemon on `config` (written to `<tmp>/tallyd.toml`).
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, |_| {}).await
    }

    /// Starts a daemon after letting `tweak` adjust the options (clock, watch...).
    pub async fn start_with(config: &str, tweak: impl FnOnce(&mut Options)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("tallyd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut opts = Options::new(Some(config_path.clone()));
        tweak(&mut opts);
        let daemon = Daemon::start(opts).await.expect("daemon starts");
        let http = daemon.http_addr;
        let udp = daemon.udp_addrs();
        Self {
            daemon: Some(daemon),
            http,
            udp,
            dir,
            config_path,
        }
    }

    pub fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    /// Sends one datagram to the first UDP listener.
    pub fn send(&self, payload: &[u8]) {
        send(self.udp[0], payload);
    }

    /// Scrapes `/metrics`.
    pub async fn scrape(&self) -> String {
        scrape(self.http).await
    }

    /// Replaces the config file atomically (write a temp file, rename over), as editors do.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.dir.path().join(".tallyd.toml.swp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.config_path).expect("rename");
    }

    pub async fn stop(mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

/// Sends one UDP datagram from a fresh socket.
pub fn send(to: SocketAddr, payload: &[u8]) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    s.send_to(payload, to).expect("send");
}

/// A blocking HTTP/1.1 request; returns (status, headers, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(DEADLINE)).ok();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: tallyd\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// `GET /metrics` (off the async runtime's threads).
pub async fn scrape(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = http(addr, "GET", "/metrics");
        assert_eq!(status, 200, "scrape status; body:\n{body}");
        body
    })
    .await
    .expect("scrape task")
}

/// The value of the series written exactly as `series` (e.g. `foo_total{env="prod"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

/// Polls until every `(series, value)` holds exactly; returns the scrape. Panics with the last
/// scrape after [`DEADLINE`].
pub async fn wait_for(addr: SocketAddr, want: &[(&str, f64)]) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(addr).await;
        if want.iter().all(|(s, v)| value(&text, s) == Some(*v)) {
            return text;
        }
        if start.elapsed() > DEADLINE {
            let got: Vec<_> = want.iter().map(|(s, _)| (s, value(&text, s))).collect();
            panic!("timed out waiting for {want:?}; got {got:?}; last scrape:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `cond(scrape)` holds.
pub async fn wait_until(addr: SocketAddr, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(addr).await;
        if cond(&text) {
            return text;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}; last scrape:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (for the spawned binary, which must be told its ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The built `tallyd` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tallyd"))
}

/// Waits until `GET path` answers `status`.
pub fn wait_http(addr: SocketAddr, path: &str, status: u16) {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            );
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            let text = String::from_utf8_lossy(&raw);
            if text.split_whitespace().nth(1) == Some(&status.to_string()) {
                return;
            }
        }
        assert!(start.elapsed() < DEADLINE, "{path} never answered {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
