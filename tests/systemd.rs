//! tallyd under systemd's protocols, driving the built binary: the sd_notify messages around
//! start, reload and stop (read from a fake `NOTIFY_SOCKET`), watchdog pings, socket activation
//! across a restart (no datagram lost), and listeners added and removed by a reload.
//!
//! Every exchange is synchronised on something the daemon says (a notify message, a scrape, a
//! log line, its socket table), never on a sleep: a reload is over when its `READY=1` arrives,
//! a batch is counted when the scrape shows it, and "nothing else was sent" is checked on the
//! whole message stream once the daemon has exited (every message it sent is queued by then).
//! The daemon picks its own ports (`127.0.0.1:0`): the HTTP address is read from its log, a UDP
//! listener's from its socket table; a socket-activated listener's is the test's own socket.
#![allow(unsafe_code)] // signals sent with libc::kill, the monotonic clock; each block says why it holds

mod common;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, binary, http, logged_addr, udp_addrs_of, value, wait_http};

/// A config for the spawned binary: HTTP on a port it picks, one UDP listener per address in
/// `udp` (e.g. `127.0.0.1:0`).
fn config(udp: &[&str]) -> String {
    let mut s = String::from("[http]\nlisten = \"127.0.0.1:0\"\n");
    for a in udp {
        s.push_str(&format!("\n[[udp]]\nlisten = \"{a}\"\nworkers = 1\n"));
    }
    s
}

/// One spawned daemon with its own temp dir: `etc/tallyd.toml` (in a folder of its own, since
/// the daemon watches the config's folder), `notify.sock`, and the daemon's stderr in `log`.
struct Env {
    dir: tempfile::TempDir,
    notify: UnixDatagram,
}

impl Env {
    fn new(config_text: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).expect("bind notify");
        let env = Self { dir, notify };
        std::fs::write(env.config_path(), config_text).unwrap();
        env
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("etc/tallyd.toml")
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("log.{n}"))
    }

    /// Replaces the config file atomically, as editors and config management do.
    fn rewrite_config(&self, text: &str) {
        let tmp = self.dir.path().join("etc/.tallyd.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// The daemon command: `tallyd --config <file>` with `NOTIFY_SOCKET` set and the systemd
    /// variables of the test's own environment removed.
    fn command(&self, program: &Path, n: usize) -> Command {
        let mut c = Command::new(program);
        c.env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.log_path(n)).unwrap());
        c
    }

    fn spawn(&self, mut c: Command, n: usize) -> Daemon {
        let child = c.spawn().expect("spawn tallyd");
        Daemon {
            child,
            log: self.log_path(n),
            http: std::cell::OnceCell::new(),
            exit: None,
        }
    }

    /// The next notify message, or `None` after `timeout`.
    fn next_msg(&self, timeout: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.notify.recv(&mut buf) {
            // Assignments are newline-separated; the last one's newline is optional.
            Ok(n) => Some(
                String::from_utf8_lossy(&buf[..n])
                    .trim_end_matches('\n')
                    .to_owned(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify recv: {e}"),
        }
    }

    /// The next notify message; fails the test (with the daemon's log) if none comes in time.
    fn expect_msg(&self, d: &Daemon, what: &str) -> String {
        self.next_msg(DEADLINE)
            .unwrap_or_else(|| panic!("no notify message ({what}); log:\n{}", d.log()))
    }

    /// Asserts that no notify message is left. Only meaningful once the daemon has exited:
    /// every message it sent is queued by then, so the stream so far was the whole stream and
    /// a message the test did not expect cannot be missed by being late.
    fn expect_drained(&self, d: &Daemon, after: &str) {
        assert!(
            d.exited(),
            "expect_drained needs an exited daemon; log:\n{}",
            d.log()
        );
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let left = self.notify.recv(&mut buf);
        self.notify.set_nonblocking(false).unwrap();
        match left {
            Ok(n) => panic!(
                "unexpected notify message after {after}: {:?}; log:\n{}",
                String::from_utf8_lossy(&buf[..n]),
                d.log()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("notify recv: {e}"),
        }
    }
}

/// A spawned daemon; killed if the test fails before stopping it.
struct Daemon {
    child: Child,
    log: PathBuf,
    /// The HTTP address, read from the log once it is there.
    http: std::cell::OnceCell<SocketAddr>,
    /// The exit status, once [`Daemon::wait`] saw it.
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// The HTTP address the daemon logged (`HTTP endpoint serving /metrics address=...`, before
    /// any listener is bound, so always there once READY=1 came); waits for the line, with
    /// [`DEADLINE`] as a hang guard.
    fn http(&self) -> SocketAddr {
        *self.http.get_or_init(|| {
            let start = Instant::now();
            loop {
                let log = self.log();
                if let Some(a) = logged_addr(&log, "HTTP endpoint serving", "address") {
                    return a;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "tallyd never logged its HTTP address; log:\n{log}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    /// The one bound UDP listener address on `ip` in the daemon's socket table.
    fn udp_on(&self, ip: [u8; 4]) -> SocketAddr {
        let on: Vec<SocketAddr> = udp_addrs_of(self.child.id())
            .into_iter()
            .filter(|a| a.ip() == std::net::IpAddr::from(ip))
            .collect();
        assert_eq!(
            on.len(),
            1,
            "one UDP listener on {ip:?}: {on:?}; log:\n{}",
            self.log()
        );
        on[0]
    }

    /// True once [`Daemon::wait`] saw the process exit.
    fn exited(&self) -> bool {
        self.exit.is_some()
    }
    fn scrape(&self) -> String {
        let (status, _, body) = http(self.http(), "GET", "/metrics");
        assert_eq!(status, 200, "scrape: {body}");
        body
    }

    /// Polls until every `(series, value)` holds exactly.
    fn wait_for(&self, want: &[(&str, f64)]) -> String {
        let start = Instant::now();
        loop {
            let text = self.scrape();
            if want.iter().all(|(s, v)| value(&text, s) == Some(*v)) {
                return text;
            }
            if start.elapsed() > DEADLINE {
                let got: Vec<_> = want.iter().map(|(s, _)| (s, value(&text, s))).collect();
                panic!(
                    "timed out waiting for {want:?}; got {got:?}; log:\n{}\nlast scrape:\n{text}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill {sig}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (at most [`DEADLINE`]).
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exit = Some(st);
                return st;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "tallyd did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Splits `READY=1\nSTATUS=...` into its status text.
fn ready_status(msg: &str) -> &str {
    let status = msg
        .strip_prefix("READY=1\nSTATUS=")
        .unwrap_or_else(|| panic!("expected READY=1 with STATUS=, got {msg:?}"));
    assert!(
        !status.is_empty() && !status.contains('\n'),
        "one STATUS line: {msg:?}"
    );
    status
}

/// Checks `RELOADING=1\nMONOTONIC_USEC=<n>` and returns n, which must be CLOCK_MONOTONIC in
/// microseconds at about now.
fn reloading_usec(msg: &str) -> u64 {
    let usec: u64 = msg
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected RELOADING=1 with MONOTONIC_USEC=<n>, got {msg:?}"));
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    let now =
        u64::try_from(ts.tv_sec).unwrap() * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap() / 1_000;
    assert!(
        usec <= now && now - usec < DEADLINE.as_micros() as u64,
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC now ({now})"
    );
    usec
}

/// One reload's messages: RELOADING=1 (+ MONOTONIC_USEC), then READY=1 with a status that
/// reports `outcome`. Returns (usec, status).
fn expect_reload(env: &Env, d: &Daemon, outcome: &str) -> (u64, String) {
    let usec = reloading_usec(&env.expect_msg(d, "RELOADING=1"));
    let msg = env.expect_msg(d, "READY=1 after the reload");
    let status = ready_status(&msg).to_string();
    assert!(
        status.contains(outcome),
        "STATUS should report {outcome:?}: {status:?}"
    );
    (usec, status)
}

#[test]
fn notify_start_reload_bad_reload_stop() {
    let good = config(&["127.0.0.1:0"]);
    let env = Env::new(&good);
    let mut d = env.spawn(
        {
            let mut c = env.command(&binary(), 0);
            c.arg("--config").arg(env.config_path());
            c
        },
        0,
    );

    // The whole message stream is checked in order: each step expects exactly the next
    // message, and once the daemon has exited nothing may be left. So an extra message
    // anywhere (a second READY=1, a watcher reload of an unchanged file, a repeated failing
    // reload) fails the test however late it comes, where a quiet period could miss it.

    // Start: READY=1 once the config is loaded and every listener is bound.
    let status = ready_status(&env.expect_msg(&d, "READY=1 at start")).to_string();
    assert!(
        status.contains("1 listener"),
        "STATUS names the listeners: {status:?}"
    );
    wait_http(d.http(), "/-/ready", 200);

    // SIGHUP on the file in force: RELOADING=1 and READY=1, nothing reloaded (the watcher
    // stays quiet: the file did not change).
    d.signal(libc::SIGHUP);
    let (u1, _) = expect_reload(&env, &d, "unchanged");

    // A changed good file is picked up by the watcher: one reload; a SIGHUP then finds it in
    // force already.
    env.rewrite_config(&format!("{good}\n[limits]\nmax_series = 5000\n"));
    let (u2, _) = expect_reload(&env, &d, "success");
    d.signal(libc::SIGHUP);
    let (u3, _) = expect_reload(&env, &d, "unchanged");

    // Bad file: the watcher's reload fails, and so does a SIGHUP; READY=1 follows both.
    env.rewrite_config(&format!("{good}\n[limits]\nmax_series = \"lots\"\n"));
    let (u4, _) = expect_reload(&env, &d, "failure");
    d.signal(libc::SIGHUP);
    let (u5, _) = expect_reload(&env, &d, "failure");
    assert!(
        u1 < u2 && u2 < u3 && u3 < u4 && u4 < u5,
        "MONOTONIC_USEC grows"
    );

    // The old config still runs: still ready and serving.
    wait_http(d.http(), "/-/ready", 200);
    let text = d.scrape();
    assert_eq!(
        value(&text, "tallyd_config_last_reload_successful"),
        Some(0.0)
    );

    // Stop: STOPPING=1, then exit 0, then nothing.
    d.signal(libc::SIGTERM);
    assert_eq!(env.expect_msg(&d, "STOPPING=1"), "STOPPING=1");
    let st = d.wait();
    assert_eq!(st.code(), Some(0), "exit status {st:?}; log:\n{}", d.log());
    env.expect_drained(&d, "STOPPING=1");
}

#[test]
fn watchdog_pings_while_workers_progress() {
    let env = Env::new(&config(&["127.0.0.1:0"]));
    let mut c = env.command(&binary(), 0);
    c.arg("--config")
        .arg(env.config_path())
        .env("WATCHDOG_USEC", "200000");
    let mut d = env.spawn(c, 0);
    ready_status(&env.expect_msg(&d, "READY=1 at start"));

    // The daemon pings (at half of WATCHDOG_USEC) only while every worker goes round. That
    // each gap stays under 200 ms is a matter of scheduling that a test on a shared machine
    // cannot time honestly; what is checked is that pings keep coming, and nothing else is
    // sent, while traffic flows and is counted between them (the workers progress), and that
    // no worker is reported stuck. A withheld ping fails the wait (hang guard DEADLINE).
    let udp = d.udp_on([127, 0, 0, 1]);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for round in 1..=5 {
        for _ in 0..4 {
            assert_eq!(env.expect_msg(&d, "WATCHDOG=1"), "WATCHDOG=1");
        }
        send_batch(&sender, udp, "wd", 1, 1);
        d.wait_for(&[("wd_total", f64::from(round))]);
    }
    assert!(
        !d.log().contains("stuck"),
        "no false alarm; log:\n{}",
        d.log()
    );

    d.signal(libc::SIGTERM);
    loop {
        match env.expect_msg(&d, "STOPPING=1").as_str() {
            "WATCHDOG=1" => continue,
            "STOPPING=1" => break,
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(d.wait().code(), Some(0));
}

/// `tallyd --config <file>` started as systemd would: `socket` is its fd 3, `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=statsd`, and `LISTEN_PID` its own pid (set by a `sh` that then execs it,
/// so the pid is the daemon's).
fn activated(env: &Env, socket: &UdpSocket, n: usize) -> Daemon {
    let mut c = env.command(Path::new("/bin/sh"), n);
    c.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(binary())
        .arg("--config")
        .arg(env.config_path())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "statsd");
    let fd = socket.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) on fds we own.
    unsafe {
        c.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the copy; when fd already was 3, clear it by hand.
            let flags = libc::fcntl(3, libc::F_GETFD);
            if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    env.spawn(c, n)
}

/// Sends `datagrams` datagrams of `lines` lines `name:1|c` each; returns the line count.
fn send_batch(
    sender: &UdpSocket,
    to: SocketAddr,
    name: &str,
    datagrams: usize,
    lines: usize,
) -> f64 {
    let payload = vec![format!("{name}:1|c"); lines].join("\n");
    for _ in 0..datagrams {
        sender.send_to(payload.as_bytes(), to).expect("send");
    }
    (datagrams * lines) as f64
}

#[test]
fn socket_activation_restart_loses_nothing() {
    // The socket systemd would hold (tallyd.socket): bound once, kept across both daemons.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The UDP address is the test's own socket's, the same for both daemons; each daemon
    // picks its own HTTP port.
    let env = Env::new(&config(&[&addr.to_string()]));

    // A: sent before any daemon runs; it waits in the socket's buffer.
    let a = send_batch(&sender, addr, "act_a", 40, 10);
    let mut d1 = activated(&env, &socket, 1);
    let status = ready_status(&env.expect_msg(&d1, "READY=1 of daemon 1")).to_string();
    assert!(status.contains("1 listener"), "{status:?}");
    // (It can only have started on the passed socket: the test's socket has no SO_REUSEPORT,
    // so a bind of its own to the same address would fail.)
    // B: sent while daemon 1 runs.
    let b = send_batch(&sender, addr, "act_b", 40, 10);
    let text = d1.wait_for(&[("act_a_total", a), ("act_b_total", b)]);
    let counted_by_1 = value(&text, "act_a_total").unwrap() + value(&text, "act_b_total").unwrap();
    // The passed socket's receive buffer (its unit's ReceiveBuffer= sets it, not tallyd) is
    // reported as the kernel reports it.
    let kernel = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
    assert_eq!(
        value(
            &text,
            &format!("tallyd_udp_receive_buffer_bytes{{listener=\"udp://{addr}\"}}")
        ),
        Some(kernel as f64),
        "{text}"
    );

    // Restart: stop daemon 1; C is sent while no daemon runs; daemon 2 gets the same fd.
    d1.signal(libc::SIGTERM);
    assert_eq!(env.expect_msg(&d1, "STOPPING=1 of daemon 1"), "STOPPING=1");
    assert_eq!(d1.wait().code(), Some(0), "log:\n{}", d1.log());
    let c = send_batch(&sender, addr, "act_c", 40, 10);
    let mut d2 = activated(&env, &socket, 2);
    ready_status(&env.expect_msg(&d2, "READY=1 of daemon 2"));
    // D: sent while daemon 2 runs.
    let d = send_batch(&sender, addr, "act_d", 40, 10);
    let text = d2.wait_for(&[("act_c_total", c), ("act_d_total", d)]);
    assert_eq!(
        value(&text, "act_a_total"),
        None,
        "counters start at zero in daemon 2"
    );
    assert_eq!(value(&text, "act_b_total"), None);
    let counted_by_2 = value(&text, "act_c_total").unwrap() + value(&text, "act_d_total").unwrap();
    assert_eq!(
        counted_by_1 + counted_by_2,
        a + b + c + d,
        "every line counted once"
    );

    // Nothing more trickles in (no duplicates): a last datagram on the same socket, read by
    // the one worker after everything queued before it, is counted while the totals stay.
    send_batch(&sender, addr, "act_end", 1, 1);
    let text = d2.wait_for(&[("act_end_total", 1.0)]);
    assert_eq!(value(&text, "act_c_total"), Some(c));
    assert_eq!(value(&text, "act_d_total"), Some(d));
    d2.signal(libc::SIGTERM);
    assert_eq!(env.expect_msg(&d2, "STOPPING=1 of daemon 2"), "STOPPING=1");
    assert_eq!(d2.wait().code(), Some(0), "log:\n{}", d2.log());
    // Each daemon sent READY=1 and STOPPING=1, and nothing else.
    env.expect_drained(&d2, "STOPPING=1 of daemon 2");

    // The socket outlives both daemons, as systemd's does.
    assert_eq!(socket.local_addr().unwrap(), addr);
}

#[test]
fn reload_adds_and_removes_a_udp_listener() {
    // Both listeners let the daemon pick the port; they differ by address (the whole of
    // 127.0.0.0/8 is loopback), so the config names each once, and each is found in the
    // daemon's socket table by its address.
    const FIRST: &str = "127.0.0.1:0";
    const SECOND: &str = "127.0.0.2:0";
    let env = Env::new(&config(&[FIRST]));
    let mut c = env.command(&binary(), 0);
    c.arg("--config").arg(env.config_path());
    let mut d = env.spawn(c, 0);
    ready_status(&env.expect_msg(&d, "READY=1 at start"));
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let first_addr = d.udp_on([127, 0, 0, 1]);

    // Add a second listener: rewrite the file, SIGHUP. The watcher may reload first; either
    // way the change is done once a READY=1 reports two listeners.
    env.rewrite_config(&config(&[FIRST, SECOND]));
    d.signal(libc::SIGHUP);
    wait_listeners(&env, &d, "2 listener");
    let second_addr = d.udp_on([127, 0, 0, 2]);
    assert_eq!(
        d.udp_on([127, 0, 0, 1]),
        first_addr,
        "the first listener stays"
    );
    let n2 = send_batch(&sender, second_addr, "second", 20, 5);
    let n1 = send_batch(&sender, first_addr, "first", 20, 5);
    d.wait_for(&[("second_total", n2), ("first_total", n1)]);

    // Remove it: the port is released, the first listener keeps counting, and the data that
    // came in on the removed listener stays.
    env.rewrite_config(&config(&[FIRST]));
    d.signal(libc::SIGHUP);
    wait_listeners(&env, &d, "1 listener");
    assert_eq!(
        udp_addrs_of(d.child.id()),
        vec![first_addr],
        "only the first listener's socket is left; log:\n{}",
        d.log()
    );
    UdpSocket::bind(second_addr).expect("the removed listener's port is free again");
    let more = send_batch(&sender, first_addr, "first", 20, 5);
    d.wait_for(&[("second_total", n2), ("first_total", n1 + more)]);

    assert_eq!(d.stop().code(), Some(0), "log:\n{}", d.log());
}

/// Reads notify messages until a `READY=1` whose status contains `listeners`.
fn wait_listeners(env: &Env, d: &Daemon, listeners: &str) {
    loop {
        let m = env.expect_msg(d, listeners);
        if m.starts_with("RELOADING=1") {
            continue;
        }
        let status = ready_status(&m);
        assert!(
            status.contains("success"),
            "reload failed: {status:?}; log:\n{}",
            d.log()
        );
        if status.contains(listeners) {
            return;
        }
    }
}

#[test]
fn socket_activation_survives_listener_changes() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let with = |workers: usize| {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[[udp]]\nlisten = \"{addr}\"\nworkers = {workers}\n"
        )
    };
    let env = Env::new(&with(1));
    let mut d = activated(&env, &socket, 0);
    ready_status(&env.expect_msg(&d, "READY=1"));
    let mut sent = send_batch(&sender, addr, "chg", 20, 5);
    d.wait_for(&[("chg_total", sent)]);

    // Changing the activated listener re-uses the passed socket (binding its address anew
    // would fail: systemd holds it). The watcher and the SIGHUP may each reload; the first
    // reload after the rewrite reads the new file, and its READY=1 comes once the listener
    // change is applied. (A second one may follow: the waits below skip READY=1s that do not
    // report what they wait for, and every READY=1 must report success.)
    env.rewrite_config(&with(2));
    d.signal(libc::SIGHUP);
    wait_listeners(&env, &d, "1 listener");
    let text = d.scrape();
    assert_eq!(
        value(&text, "tallyd_config_restart_required"),
        Some(0.0),
        "the listener change applied; log:\n{}",
        d.log()
    );
    sent += send_batch(&sender, addr, "chg", 20, 5);
    d.wait_for(&[("chg_total", sent)]);

    // Removed, datagrams wait in the socket; added back, they are read.
    env.rewrite_config("udp = []\n\n[http]\nlisten = \"127.0.0.1:0\"\n");
    d.signal(libc::SIGHUP);
    wait_listeners(&env, &d, "0 listener");
    sent += send_batch(&sender, addr, "chg", 20, 5);
    env.rewrite_config(&with(1));
    d.signal(libc::SIGHUP);
    wait_listeners(&env, &d, "1 listener");
    d.wait_for(&[("chg_total", sent)]);
    assert_eq!(
        value(&d.scrape(), "tallyd_config_restart_required"),
        Some(0.0),
        "log:\n{}",
        d.log()
    );
    assert_eq!(d.stop().code(), Some(0), "log:\n{}", d.log());
}
