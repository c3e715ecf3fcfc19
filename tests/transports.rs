//! What tallyd says about its listeners, on real daemons: each transport's own self-metrics
//! (a listener never gets another transport's series), the UDP receive buffer as one figure in
//! the log and the metric, log fields written as plain values, and the debug log of rejected
//! lines (escaped, cut, at most one per reason per second per worker, silent at info).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Spawned, TestDaemon, config_text, scrape, send, send_tcp, value, wait_for, wait_log};
use tallyd::clock::ManualClock;

/// The `listener` label of every series of `family` (zero-valued ones too), in order.
fn listeners_of(text: &str, family: &str) -> Vec<String> {
    let open = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&open))
        .filter_map(|l| {
            let at = l.find("listener=\"")? + "listener=\"".len();
            Some(l[at..].split('"').next()?.to_string())
        })
        .collect()
}

/// The address in `TCP listener started listener=tcp://<addr>` of a text log.
fn logged_tcp(log: &str) -> SocketAddr {
    log.lines()
        .find(|l| l.contains("TCP listener started"))
        .and_then(|l| l.split("listener=tcp://").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no TCP listener in the log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transport_exposes_only_its_own_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let t = TestDaemon::start(&config_text(
        1,
        &format!(
            "[[tcp]]\nlisten = \"127.0.0.1:0\"\nmax_line_length = \"1KiB\"\n\n\
             [[unixgram]]\npath = \"{}\"\n",
            path.display()
        ),
    ))
    .await;
    let udp = "udp://127.0.0.1:0".to_string();
    let tcp_addr = t.d().tcp_addrs()[0];
    let tcp = format!("tcp://{tcp_addr}");
    let unix = format!("unixgram://{}", path.display());

    // UDP: one datagram of two lines.
    let u = b"u:1|c\nu:2|c";
    t.send(u);
    // TCP: two connections; the first has a line over max_line_length between two good ones.
    let c1 = format!("t:1|c\nlong:{}|c\nt:2|c\n", "1".repeat(2000));
    let c2 = "t:3|c";
    send_tcp(tcp_addr, c1.as_bytes());
    send_tcp(tcp_addr, c2.as_bytes());
    // Unix datagram: a small datagram, and one longer than the 64 KiB the listener reads (its
    // first line is used, its cut line dropped; the bytes counted are the bytes read).
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sender.send_to(b"x:1|c", &path).unwrap();
    let big = format!("x:2|c\ncut:{}|c", "1".repeat(70_000));
    sender.send_to(big.as_bytes(), &path).unwrap();

    let s = |family: &str, listener: &str| format!("{family}{{listener=\"{listener}\"}}");
    let want: Vec<(String, f64)> = vec![
        ("u_total".into(), 3.0),
        ("t_total".into(), 6.0),
        ("x_total".into(), 3.0),
        // Every transport: lines and bytes.
        (s("tallyd_lines_received_total", &udp), 2.0),
        (s("tallyd_lines_received_total", &tcp), 4.0),
        (s("tallyd_lines_received_total", &unix), 3.0),
        (s("tallyd_bytes_received_total", &udp), u.len() as f64),
        (
            s("tallyd_bytes_received_total", &tcp),
            (c1.len() + c2.len()) as f64,
        ),
        (s("tallyd_bytes_received_total", &unix), (5 + 65_536) as f64),
        // Datagram listeners: datagrams and truncated datagrams.
        (s("tallyd_datagrams_received_total", &udp), 1.0),
        (s("tallyd_datagrams_received_total", &unix), 2.0),
        (s("tallyd_datagrams_truncated_total", &udp), 0.0),
        (s("tallyd_datagrams_truncated_total", &unix), 1.0),
        // UDP: kernel drops.
        (s("tallyd_udp_kernel_drops_total", &udp), 0.0),
        // TCP: connections and over-long lines.
        (s("tallyd_tcp_connections_accepted_total", &tcp), 2.0),
        (s("tallyd_tcp_connections_refused_total", &tcp), 0.0),
        (s("tallyd_tcp_connections", &tcp), 0.0),
        (s("tallyd_tcp_lines_too_long_total", &tcp), 1.0),
        (
            r#"tallyd_parse_errors_total{reason="line_too_long"}"#.into(),
            1.0,
        ),
        (
            r#"tallyd_parse_errors_total{reason="truncated"}"#.into(),
            1.0,
        ),
    ];
    let want: Vec<(&str, f64)> = want.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let text = wait_for(t.http, &want).await;

    // Each family has exactly the listeners of the transports it means something for.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let datagram = sorted(vec![udp.clone(), unix.clone()]);
    for (family, who) in [
        (
            "tallyd_lines_received_total",
            sorted(vec![udp.clone(), tcp.clone(), unix.clone()]),
        ),
        (
            "tallyd_bytes_received_total",
            sorted(vec![udp.clone(), tcp.clone(), unix.clone()]),
        ),
        ("tallyd_datagrams_received_total", datagram.clone()),
        ("tallyd_datagrams_truncated_total", datagram),
        ("tallyd_udp_kernel_drops_total", vec![udp.clone()]),
        ("tallyd_udp_receive_buffer_bytes", vec![udp.clone()]),
        ("tallyd_tcp_connections", vec![tcp.clone()]),
        ("tallyd_tcp_connections_accepted_total", vec![tcp.clone()]),
        ("tallyd_tcp_connections_refused_total", vec![tcp.clone()]),
        ("tallyd_tcp_lines_too_long_total", vec![tcp.clone()]),
    ] {
        assert_eq!(
            sorted(listeners_of(&text, family)),
            who,
            "{family}:\n{text}"
        );
    }
    // The old UDP-named series for every datagram listener is gone.
    assert!(
        !text.contains("tallyd_udp_datagrams_truncated_total"),
        "{text}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receive_buffer_log_and_metric_give_one_figure() {
    // `binary_config` asks for recv_buffer = "1MiB".
    let d = Spawned::start("");
    // What the kernel reports for the same request on this machine (Linux: 2 x the size
    // granted; the size is capped at net.core.rmem_max unless SO_RCVBUFFORCE is allowed).
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let kernel = tallyd::ingest::sys::set_recv_buffer(&probe, 1 << 20).unwrap();
    wait_log(&d, "kernel_bytes=").await;
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("kernel_bytes="))
        .expect("the receive buffer line");
    assert!(line.contains(" requested_bytes=1048576 "), "{line}");
    assert!(line.contains(&format!(" kernel_bytes={kernel}")), "{line}");
    assert!(!log.contains("granted_bytes"), "{log}");
    // One line per listener, not one per worker socket.
    assert_eq!(log.matches("kernel_bytes=").count(), 1, "{log}");
    let text = scrape(d.http).await;
    assert_eq!(
        value(
            &text,
            r#"tallyd_udp_receive_buffer_bytes{listener="udp://127.0.0.1:0"}"#
        ),
        Some(kernel as f64),
        "{text}"
    );
    let help = text
        .lines()
        .find(|l| l.starts_with("# HELP tallyd_udp_receive_buffer_bytes "))
        .expect("HELP");
    assert!(help.contains("twice the size granted"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_fields_are_plain_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let extra = format!(
        "[[tcp]]\nlisten = \"127.0.0.1:0\"\n\n[[unixgram]]\npath = \"{}\"\n\n[log]\nformat = \"json\"\n",
        path.display()
    );
    let d = Spawned::start(&extra);
    // A failed reload logs the file and the error.
    std::fs::write(&d.config_path, "[http\n").unwrap();
    d.signal(libc::SIGHUP);
    wait_log(&d, "config reload failed").await;
    let log = d.log();
    for line in log.lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        // Debug formatting shows as an option, a list, or a quoted string inside the JSON
        // string (`"file":"Some(\"...\")"`, `"listeners":"[\"udp://...\"]"`).
        for debug in ["Some(", "None", "\\\"", "\"[", "[\\"] {
            assert!(!line.contains(debug), "{debug:?} in {line}");
        }
    }
    let ready = log
        .lines()
        .find(|l| l.contains("tallyd is ready"))
        .expect("ready line");
    let at = ready.find("\"listeners\":\"").expect("listeners field") + "\"listeners\":\"".len();
    let mut listeners: Vec<&str> = ready[at..].split('"').next().unwrap().split(' ').collect();
    listeners.sort();
    let mut want = vec![
        format!("tcp://{}", logged_tcp_json(&log)),
        format!("udp://{}", d.udp),
        format!("unixgram://{}", path.display()),
    ];
    want.sort();
    assert_eq!(listeners, want, "{ready}");
    let failed = log
        .lines()
        .find(|l| l.contains("config reload failed"))
        .unwrap();
    assert!(
        failed.contains(&format!("\"file\":\"{}\"", d.config_path.display())),
        "{failed}"
    );
}

/// The address of `"message":"TCP listener started","listener":"tcp://<addr>"` of a JSON log.
fn logged_tcp_json(log: &str) -> SocketAddr {
    log.lines()
        .find(|l| l.contains("TCP listener started"))
        .and_then(|l| l.split("\"listener\":\"tcp://").nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no TCP listener in the log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_are_logged_escaped_at_debug_level() {
    let d = Spawned::start(
        "[[tcp]]\nlisten = \"127.0.0.1:0\"\nmax_line_length = \"1KiB\"\n\n[log]\nlevel = \"debug\"\n",
    );
    let tcp = logged_tcp(&d.log());
    // Each reason once (one log line per reason per second per worker).
    send(d.udp, b"hello world");
    send(d.udp, b"ctl\x01x:1|zz");
    send(d.udp, b"bs\\:1:2|s");
    send(d.udp, format!("v:{}|c", "z".repeat(300)).as_bytes());
    send(d.udp, b"\xffbad:1|c");
    send_tcp(
        tcp,
        format!("long:{}|c\nok:1|c\n", "9".repeat(2000)).as_bytes(),
    );
    wait_for(
        d.http,
        &[
            ("ok_total", 1.0),
            (r#"tallyd_parse_errors_total{reason="malformed_line"}"#, 1.0),
            (r#"tallyd_parse_errors_total{reason="unknown_type"}"#, 1.0),
            (r#"tallyd_parse_errors_total{reason="packed_set"}"#, 1.0),
            (r#"tallyd_parse_errors_total{reason="invalid_value"}"#, 1.0),
            (r#"tallyd_parse_errors_total{reason="invalid_utf8"}"#, 1.0),
            (r#"tallyd_parse_errors_total{reason="line_too_long"}"#, 1.0),
        ],
    )
    .await;
    // Each line is logged before its counter is flushed, so it is in the log by now.
    let log = d.log();
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("line rejected"))
        .map(|l| &l[l.find(" reason=").expect("reason field") + 1..])
        .collect();
    let udp = "listener=udp://127.0.0.1:0";
    let mut want = vec![
        format!("reason=malformed_line {udp} line=hello world"),
        // A control byte as \xNN.
        format!("reason=unknown_type {udp} line=ctl\\x01x:1|zz"),
        // A backslash doubled, so the escapes cannot be confused with the line's own bytes.
        format!("reason=packed_set {udp} line=bs\\\\:1:2|s"),
        // 200 bytes shown, and `...` for the rest.
        format!("reason=invalid_value {udp} line=v:{}...", "z".repeat(198)),
        format!("reason=invalid_utf8 {udp} line=\\xffbad:1|c"),
        format!(
            "reason=line_too_long listener=tcp://{tcp} line=long:{}...",
            "9".repeat(195)
        ),
    ];
    let mut got: Vec<String> = rejected.iter().map(|s| s.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_are_not_logged_at_info_level() {
    let d = Spawned::start("");
    send(d.udp, b"hello world");
    wait_for(
        d.http,
        &[(r#"tallyd_parse_errors_total{reason="malformed_line"}"#, 1.0)],
    )
    .await;
    let log = d.log();
    assert!(!log.contains("line rejected"), "{log}");
    assert!(!log.contains("hello world"), "{log}");
}

/// The log of this test binary's in-process daemons, captured at debug level.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_are_logged_at_most_once_per_reason_per_second() {
    let log = captured();
    let clock = Arc::new(ManualClock::default());
    let c = clock.clone();
    let t = TestDaemon::start_with(&config_text(1, ""), move |o| {
        o.clock = c;
        o.watch = false;
    })
    .await;
    let logged = |probe: &str| {
        let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("line rejected") && l.contains(probe))
            .count()
    };
    // Two malformed lines at one instant: the first is logged, the second is not; another
    // reason has its own allowance.
    t.send(b"probe_a junk\nprobe_b junk\nprobe_c:1|zz\nsentinel:1|c");
    wait_for(t.http, &[("sentinel_total", 1.0)]).await;
    assert_eq!(
        (logged("probe_a"), logged("probe_b"), logged("probe_c")),
        (1, 0, 1)
    );
    // Just under a second later: still not.
    clock.advance(Duration::from_millis(999));
    t.send(b"probe_d junk\nsentinel:1|c");
    wait_for(t.http, &[("sentinel_total", 2.0)]).await;
    assert_eq!(logged("probe_d"), 0);
    // A second after the last one logged: logged again.
    clock.advance(Duration::from_millis(1));
    t.send(b"probe_e junk\nprobe_f junk\nsentinel:1|c");
    wait_for(t.http, &[("sentinel_total", 3.0)]).await;
    assert_eq!((logged("probe_e"), logged("probe_f")), (1, 0));
    assert_eq!(
        value(
            &scrape(t.http).await,
            r#"tallyd_parse_errors_total{reason="malformed_line"}"#
        ),
        Some(5.0)
    );
    t.stop().await;
}
