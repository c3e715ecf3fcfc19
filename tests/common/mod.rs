//! Shared test harness: a real daemon (in-process through the library, or the built binary)
//! on ephemeral loopback ports, real UDP datagrams, real HTTP scrapes.
#![allow(dead_code)]
#![allow(unsafe_code)] // signals sent with libc::kill; each block says why it holds

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tallyd::daemon::{Daemon, Options};

pub mod prom;

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

/// `GET /metrics` (off the async runtime's threads), decoded: see [`scrape_text`].
pub async fn scrape(addr: SocketAddr) -> String {
    scrape_text(addr).await
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

/// Reports a check that cannot run here: `SKIPPED: <reason>` on stderr, so a skip is never
/// silent; and under CI (`CI=true`, where every prerequisite is installed) a failure, since a
/// check CI needs must not be skipped there. `reason` says what is skipped and why, e.g.
/// "`promtool check metrics` because promtool is not on PATH".
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("SKIPPED under CI=true, which must run every check: {reason}");
    }
    // Once per reason and test binary (a check repeated per fixture would print it dozens of
    // times), written to the process's stderr rather than through `eprintln!`, which the test
    // harness captures and shows only for failing tests: a skip must show in a passing run.
    static REPORTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut reported = REPORTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !reported.iter().any(|r| r == reason) {
        reported.push(reason.to_string());
        let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
    }
}

/// The address in `key=<addr>` on the first line of `log` that contains `message` (the text
/// and logfmt formats: `... INFO tallyd::daemon: HTTP endpoint serving /metrics
/// address=127.0.0.1:1234`), or in `"key":"<addr>"` (the JSON format).
pub fn logged_addr(log: &str, message: &str, key: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(message))?;
    let text = format!(" {key}=");
    let json = format!("\"{key}\":\"");
    let value = if let Some(at) = line.find(&text) {
        line[at + text.len()..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
    } else {
        let at = line.find(&json)? + json.len();
        line[at..].split('"').next()?
    };
    value.parse().ok()
}

/// Waits until the log at `log_path` has a line with `message` and reads its `key=<addr>`
/// (see [`logged_addr`]); fails early (with the log) if `child` exits first, and after
/// [`DEADLINE`] (a hang guard) if the line never comes.
pub fn wait_logged_addr(
    child: &mut std::process::Child,
    log_path: &std::path::Path,
    message: &str,
    key: &str,
) -> SocketAddr {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if let Some(a) = logged_addr(&log, message, key) {
            return a;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("tallyd exited ({st}) before logging {message:?}; log:\n{log}");
        }
        assert!(
            start.elapsed() < DEADLINE,
            "tallyd never logged {message:?} with {key}=; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The local addresses of the IPv4 UDP sockets process `pid` holds (its open fds matched with
/// `/proc/<pid>/net/udp`), sorted, without repeats (a listener's SO_REUSEPORT workers share
/// one). The daemon logs its listeners by their configured address (`udp://127.0.0.1:0`), so
/// a test that lets it pick a port reads the bound one from the socket table.
pub fn udp_addrs_of(pid: u32) -> Vec<SocketAddr> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_str()?;
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    let mut out: Vec<SocketAddr> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if !inodes.contains(*f.get(9)?) {
                return None;
            }
            let (ip, port) = f.get(1)?.split_once(':')?;
            // The kernel prints the address as the u32 it holds in network order, read in host
            // order: its native-endian bytes are the address's bytes.
            let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
            let port = u16::from_str_radix(port, 16).ok()?;
            (port != 0).then(|| SocketAddr::from((ip, port)))
        })
        .collect();
    out.sort();
    out.dedup();
    out
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

/// The StatsD part of a scrape: everything before tallyd's own families (the first line that
/// starts `# HELP process_` or `# HELP tallyd_`; they are rendered after the StatsD families).
pub fn statsd_section(text: &str) -> &str {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("# HELP process_") || line.starts_with("# HELP tallyd_") {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// The sample lines (no `#` lines) of the StatsD part of a scrape, in exposition order.
pub fn statsd_samples(text: &str) -> Vec<&str> {
    statsd_section(text)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

/// Every series of `family` (`family` or `family{...}`) with a non-zero value, in order.
pub fn nonzero<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let name = k.split('{').next()?;
            let v: f64 = v.parse().ok()?;
            (name == family && v != 0.0).then_some((k, v))
        })
        .collect()
}

/// The sum of every series of `family` (0 when there is none).
pub fn family_sum(text: &str, family: &str) -> f64 {
    nonzero(text, family).iter().map(|(_, v)| v).sum()
}

/// Writes `payload` to a new TCP connection to `to`, then closes it (EOF).
pub fn send_tcp(to: SocketAddr, payload: &[u8]) {
    let mut s = TcpStream::connect(to).expect("connect tcp");
    s.write_all(payload).expect("write tcp");
    s.shutdown(std::net::Shutdown::Write).ok();
}

/// Removes the HTTP/1.1 chunked transfer coding from a response body (`/metrics` streams its
/// exposition in chunks; [`http`] and [`scrape`] return the body as it came off the wire).
pub fn dechunk(body: &str) -> String {
    String::from_utf8(dechunk_bytes(body.as_bytes())).expect("the exposition is UTF-8")
}

/// [`dechunk`] for a binary body (the protobuf exposition).
pub fn dechunk_bytes(body: &[u8]) -> Vec<u8> {
    let mut raw = body;
    let mut out = Vec::with_capacity(raw.len());
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|e| panic!("bad chunk size {size_text:?}: {e}"));
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        assert!(raw.len() >= size, "truncated chunk");
        out.extend_from_slice(&raw[..size]);
        raw = raw[size..]
            .strip_prefix(b"\r\n")
            .expect("chunk ends in CRLF");
    }
    panic!("chunked body without its last (0) chunk");
}

/// `GET /metrics` as a Prometheus server reads it: status 200 asserted, the chunked transfer
/// coding (if any) removed, so the text can be compared byte for byte.
pub async fn scrape_text(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let (status, head, body) = http(addr, "GET", "/metrics");
        assert_eq!(status, 200, "scrape status; body:\n{body}");
        let text = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&body)
        } else {
            body.clone()
        };
        // tallyd's own metrics are always there: an empty exposition is a broken response.
        assert!(
            text.contains("# TYPE tallyd_build_info"),
            "incomplete exposition; raw response:\n{head}\r\n\r\n{body:?}"
        );
        text
    })
    .await
    .expect("scrape task")
}

/// The config of a spawned binary: HTTP and one UDP listener on ports the daemon picks (the
/// test reads them back, see [`Spawned::start`]) plus `extra`.
pub fn binary_config(extra: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nrecv_buffer = \"1MiB\"\n\n{extra}\n"
    )
}

/// The built binary running as a child process; killed on drop if still running.
pub struct Spawned {
    pub child: std::process::Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Spawned {
    /// Writes [`binary_config`] to `<tmp>/tallyd.toml`, starts `tallyd --config <it>` (stderr
    /// to `<tmp>/tallyd.log`), reads the HTTP address from its log line `HTTP endpoint serving
    /// /metrics address=...`, waits for `/-/ready` 200, then reads the UDP listener's bound
    /// address from the process's socket table ([`udp_addrs_of`]). No port is picked by the
    /// test, so none can be taken by another test in between.
    pub fn start(extra: &str) -> Self {
        Self::launch(extra, false)
    }

    /// As [`Spawned::start`], but stderr is a pipe that the test reads (into the log file)
    /// until tallyd says it is ready, and then closes: every later write to stderr fails with
    /// EPIPE, as when the reader of `tallyd 2>&1 | tool` has exited.
    pub fn start_stderr_closed_after_ready(extra: &str) -> Self {
        Self::launch(extra, true)
    }

    fn launch(extra: &str, close_stderr: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("tallyd.toml");
        std::fs::write(&config_path, binary_config(extra)).expect("write config");
        let log_path = dir.path().join("tallyd.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = std::process::Command::new(binary())
            .arg("--config")
            .arg(&config_path)
            // The config's [log] is what a test sets; RUST_LOG would override it.
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(if close_stderr {
                std::process::Stdio::piped()
            } else {
                log.into()
            })
            .spawn()
            .expect("spawn tallyd");
        if close_stderr {
            use std::io::BufRead as _;
            let pipe = child.stderr.take().expect("piped stderr");
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .expect("log file");
            for line in std::io::BufReader::new(pipe).lines() {
                let line = line.expect("read tallyd's stderr");
                writeln!(log, "{line}").expect("copy to the log file");
                if line.contains("tallyd is ready") {
                    break;
                }
            }
            // The reader is dropped here: the pipe has no reader from now on.
        }
        let http = wait_logged_addr(&mut child, &log_path, "HTTP endpoint serving", "address");
        let mut s = Self {
            child,
            http,
            udp: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            config_path,
            log_path,
        };
        s.wait_ready();
        // Ready means every listener is bound.
        let udp = udp_addrs_of(s.child.id());
        assert_eq!(udp.len(), 1, "one UDP listener: {udp:?}; log:\n{}", s.log());
        s.udp = udp[0];
        s
    }

    /// Waits for `/-/ready` 200, failing early (with the log) if the process exited.
    pub fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(mut st) = TcpStream::connect(self.http) {
                st.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let _ = write!(
                    st,
                    "GET /-/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                );
                let mut raw = Vec::new();
                let _ = st.read_to_end(&mut raw);
                if String::from_utf8_lossy(&raw).split_whitespace().nth(1) == Some("200") {
                    return;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "tallyd never became ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the child to exit; panics (with the log) if it has not after [`DEADLINE`], a
    /// hang guard, not a claim about how fast it stops.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "tallyd did not exit (hang guard {DEADLINE:?}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Replaces the config file atomically (write a temp file, rename over).
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.dir.path().join(".tallyd.toml.swp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.config_path).expect("rename");
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A thread sending `line` as one datagram after another until stopped; `stop()` returns how
/// many it sent. Used to prove that nothing is lost while something else happens.
pub struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Sender {
    /// Starts sending `line` to `to` from one socket, with a short pause after each datagram.
    pub fn start(to: SocketAddr, line: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let line = line.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
            s.connect(to).expect("connect sender");
            let mut sent = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                s.send(&line).expect("send");
                sent += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread and returns the number of datagrams sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("sender")
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits until the spawned daemon's log has a line containing `needle`; a hang guard of
/// [`DEADLINE`] fails the test with the log.
pub async fn wait_log(d: &Spawned, needle: &str) {
    let start = Instant::now();
    loop {
        let log = d.log();
        if log.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the log never said {needle:?}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The mapping rule the reloads add: `other.<x>` becomes `renamed_<x>_total`.
pub const RENAME: &str = "[[mapping]]\nmatch = \"other.*\"\nname = \"renamed_$1\"\n";

/// Sends `other.x:1|c` and scrapes until `renamed_x_total` shows (the new mapping took
/// effect); fails after [`DEADLINE`], a hang guard. Returns the scrape.
pub async fn wait_renamed(http: SocketAddr, udp: SocketAddr) -> String {
    let start = std::time::Instant::now();
    loop {
        send(udp, b"other.x:1|c");
        let text = scrape(http).await;
        if value(&text, "renamed_x_total").is_some() {
            return text;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the new mapping never took effect (hang guard {DEADLINE:?}); last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the sender and waits until its counter shows exactly what it sent.
pub async fn assert_nothing_lost(http: SocketAddr, sender: Sender) {
    let sent = sender.stop();
    assert!(sent > 10, "the sender barely ran ({sent} datagrams)");
    wait_for(http, &[("steady_total", sent as f64)]).await;
}

/// `tallyd_config_reloads_total` by outcome, and whether the file in force runs whole.
pub const SUCCESS: &str = r#"tallyd_config_reloads_total{outcome="success"}"#;
pub const FAILURE: &str = r#"tallyd_config_reloads_total{outcome="failure"}"#;
pub const PARTIAL: &str = r#"tallyd_config_reloads_total{outcome="partial"}"#;
pub const LAST_OK: &str = "tallyd_config_last_reload_successful";

/// Waits until every one of `sent` datagrams to the UDP listener `listener` (its label) was
/// read or dropped by the kernel (counted in `tallyd_udp_kernel_drops_total`); returns a
/// scrape taken after that, which holds every line of those datagrams.
pub async fn wait_datagrams(http: SocketAddr, listener: &str, sent: u64) -> String {
    let dg = format!("tallyd_datagrams_received_total{{listener=\"{listener}\"}}");
    let drops = format!("tallyd_udp_kernel_drops_total{{listener=\"{listener}\"}}");
    wait_until(http, "every datagram read or dropped", |m| {
        value(m, &dg).unwrap_or(0.0) + value(m, &drops).unwrap_or(0.0) == sent as f64
    })
    .await;
    // A fresh scrape: in the one that saw the last datagram counted, the StatsD families were
    // read before tallyd's own metrics, so they could predate its lines.
    scrape_text(http).await
}
