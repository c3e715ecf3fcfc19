//! Wiring: start-up, readiness, the control loop (reloads, listener changes, stop), signals,
//! the expiry tick, the systemd notify protocol and watchdog.
//!
//! Start-up is two steps so tests (and the readiness contract) can observe the gap:
//! [`Daemon::start_http`] loads the config and serves HTTP (`/-/ready` answers 503), and
//! [`Starting::bind_listeners`] binds every listener, then marks ready (200, `READY=1`).
//! The outside world is injected: config path, clock, sockets passed by systemd.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{Clock, MonotonicClock};
use crate::config::live::{Live, Snapshot};
use crate::config::{Config, ConfigError, Tcp, Udp, Unixgram};
use crate::export::http::{Control, State};
use crate::ingest::{self, Running, activation::Passed};
use crate::ready::Readiness;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// How the daemon is started.
pub struct Options {
    /// The config file; `None` runs on the embedded defaults (no reloads from disk).
    pub config_path: Option<PathBuf>,
    /// The clock for stamps and expiry.
    pub clock: Arc<dyn Clock>,
    /// Sockets passed by systemd (`LISTEN_FDS`).
    pub passed: Vec<Passed>,
    /// How often idle series are swept.
    pub sweep_interval: Duration,
    /// Watch the config file's directory for changes.
    pub watch: bool,
    /// Handle SIGHUP / SIGTERM / SIGINT (off for in-process tests).
    pub signals: bool,
}

impl Options {
    /// Defaults: embedded config, monotonic clock, no passed sockets, sweep every second.
    pub fn new(config_path: Option<PathBuf>) -> Self {
        Self {
            config_path,
            clock: Arc::new(MonotonicClock::default()),
            passed: Vec::new(),
            sweep_interval: Duration::from_secs(1),
            watch: true,
            signals: false,
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot bind {what}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A listener's identity: its whole config section (changing any key re-binds it).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Key {
    Udp(Udp),
    Tcp(Tcp),
    Unixgram(Unixgram),
}

impl Key {
    fn all(c: &Config) -> Vec<Key> {
        let mut v: Vec<Key> = c.udp.iter().cloned().map(Key::Udp).collect();
        v.extend(c.tcp.iter().cloned().map(Key::Tcp));
        v.extend(c.unixgram.iter().cloned().map(Key::Unixgram));
        v
    }
}

type Listeners = Arc<std::sync::Mutex<HashMap<Key, Running>>>;

/// The systemd notify socket (`NOTIFY_SOCKET`), if any.
pub struct Notifier {
    socket: Option<(
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::SocketAddr,
    )>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Self {
        use std::os::linux::net::SocketAddrExt;
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|p| {
            let addr = match p.strip_prefix('@') {
                Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs).ok()?,
                None => std::os::unix::net::SocketAddr::from_pathname(&p).ok()?,
            };
            Some((std::os::unix::net::UnixDatagram::unbound().ok()?, addr))
        });
        Self { socket }
    }

    /// Sends one notify message (newline-separated assignments); errors are ignored.
    pub fn send(&self, msg: &str) {
        if let Some((s, addr)) = &self.socket
            && let Err(e) = s.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// True when running under systemd's notify protocol.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }
}

/// A daemon whose HTTP endpoint is up but whose listeners are not bound yet.
pub struct Starting {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    shared: Shared,
    control_rx: mpsc::Receiver<Control>,
    passed: Vec<Passed>,
    opts_watch: bool,
    opts_signals: bool,
    sweep_interval: Duration,
    http_task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    live: Arc<Live>,
    ready: Arc<Readiness>,
    listeners: Listeners,
    control: mpsc::Sender<Control>,
    stop_tx: watch::Sender<bool>,
    notifier: Arc<Notifier>,
    /// The config the daemon started with (settings that apply at start only).
    started: Arc<Snapshot>,
}

/// A running daemon.
pub struct Daemon {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    shared: Shared,
    control_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Daemon {
    /// Loads the config and serves HTTP; `/-/ready` answers 503 until
    /// [`Starting::bind_listeners`].
    pub async fn start_http(opts: Options) -> Result<Starting, StartError> {
        let (snapshot, text) = match &opts.config_path {
            Some(p) => {
                let text = crate::config::read_file(p)?;
                (Snapshot::from_toml(&text)?, Some(text))
            }
            None => (Snapshot::defaults(), None),
        };
        for w in &snapshot.warnings {
            tracing::warn!("config: {w}");
        }
        let http_cfg = snapshot.config.http.clone();
        let telemetry = Arc::new(Telemetry::new());
        let store = Store::new(opts.clock.clone(), telemetry.reserved_names());
        let live = Live::new(snapshot, opts.config_path.clone(), text);
        let ready = Arc::new(Readiness::new());
        let (control, control_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let listeners: Listeners = Default::default();
        let shared = Shared {
            store: store.clone(),
            telemetry: telemetry.clone(),
            live: live.clone(),
            ready: ready.clone(),
            listeners: listeners.clone(),
            control: control.clone(),
            stop_tx,
            notifier: Arc::new(Notifier::from_env()),
            started: live.load(),
        };
        let passed = opts.passed;
        let http = match take_passed(&passed, |p| !p.datagram && p.addr == Some(http_cfg.listen)) {
            Some(p) => {
                let l: std::net::TcpListener = p.socket.into();
                l.set_nonblocking(true).map_err(|e| bind_err("http", e))?;
                tokio::net::TcpListener::from_std(l).map_err(|e| bind_err("http", e))?
            }
            None => tokio::net::TcpListener::bind(http_cfg.listen)
                .await
                .map_err(|e| bind_err(&format!("http {}", http_cfg.listen), e))?,
        };
        let http_addr = http.local_addr().map_err(|e| bind_err("http", e))?;
        let drops_listeners = listeners.clone();
        let state = Arc::new(State {
            store,
            telemetry,
            live,
            ready,
            control,
            auth: Default::default(),
            before_scrape: Box::new(move || {
                for r in crate::sync::lock(&drops_listeners).values() {
                    r.read_drops();
                }
            }),
        });
        let tls =
            crate::export::http::tls_acceptor(&http_cfg).map_err(|e| bind_err("http TLS", e))?;
        let http_task = tokio::spawn(crate::export::http::serve(
            http,
            state,
            tls,
            http_cfg.max_connections,
            http_cfg.header_read_timeout,
            stop_rx,
        ));
        tracing::info!(address = %http_addr, "HTTP endpoint serving /metrics");
        Ok(Starting {
            http_addr,
            shared,
            control_rx,
            passed,
            opts_watch: opts.watch,
            opts_signals: opts.signals,
            sweep_interval: opts.sweep_interval,
            http_task,
        })
    }

    /// Starts completely: HTTP, then every listener, then ready.
    pub async fn start(opts: Options) -> Result<Daemon, StartError> {
        Self::start_http(opts).await?.bind_listeners().await
    }

    /// Addresses of the running UDP listeners, in config order.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(|k| matches!(k, Key::Udp(_)))
    }

    /// Addresses of the running TCP listeners, in config order.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(|k| matches!(k, Key::Tcp(_)))
    }

    fn addrs(&self, f: impl Fn(&Key) -> bool) -> Vec<SocketAddr> {
        let cfg = self.shared.live.load();
        let map = crate::sync::lock(&self.shared.listeners);
        Key::all(&cfg.config)
            .iter()
            .filter(|k| f(k))
            .filter_map(|k| map.get(k).and_then(|r| r.addr))
            .collect()
    }

    /// The store (tests read it directly).
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// The self-metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }

    /// Asks for a reload as SIGHUP does; returns the outcome text.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .shared
            .control
            .send(Control::Reload {
                only_if_changed: false,
                reply: Some(tx),
            })
            .await;
        rx.await.unwrap_or_else(|_| Err("daemon stopped".into()))
    }

    /// Stops: not ready, `STOPPING=1`, listeners closed and drained, HTTP stopped.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .control
            .send(Control::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let _ = self.control_task.await;
        let _ = self.shared.stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.http_task).await;
        for t in self.background {
            t.abort();
        }
    }

    /// Runs until SIGTERM/SIGINT (with `signals`) or until the control loop ends.
    pub async fn wait(self) {
        let stopped = self.shared.stop_tx.subscribe();
        let mut stopped = stopped;
        while !*stopped.borrow() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
        self.shutdown().await;
    }
}

fn bind_err(what: &str, source: std::io::Error) -> StartError {
    StartError::Bind {
        what: what.to_string(),
        source,
    }
}

/// Whether `p`, a socket passed by systemd, is the one for listener `key`: same kind, same
/// address (UDP, TCP) or path (Unix datagram).
fn claims(key: &Key, p: &Passed) -> bool {
    match key {
        Key::Udp(u) => p.datagram && p.addr == Some(u.listen),
        Key::Tcp(t) => !p.datagram && p.addr == Some(t.listen),
        Key::Unixgram(u) => p.datagram && p.path.as_deref() == Some(u.path.as_path()),
    }
}

/// A copy (a dup) of the first passed socket that `f` accepts. The daemon keeps every socket
/// systemd passed for its whole life and hands out copies, so a listener that a reload changes
/// or adds back gets the same socket again (systemd holds it: binding its address anew fails).
fn take_passed(passed: &[Passed], f: impl Fn(&Passed) -> bool) -> Option<Passed> {
    let p = passed.iter().find(|p| f(p))?;
    match p.socket.try_clone() {
        Ok(socket) => Some(Passed {
            socket,
            name: p.name.clone(),
            datagram: p.datagram,
            addr: p.addr,
            path: p.path.clone(),
        }),
        Err(e) => {
            tracing::warn!(name = %p.name, error = %e, "cannot duplicate a socket passed by systemd");
            None
        }
    }
}

/// Binds and starts one listener.
fn start_listener(key: &Key, passed: &[Passed], s: &Shared) -> std::io::Result<Running> {
    let sinks = ingest::Sinks {
        store: s.store.clone(),
        live: s.live.clone(),
        telemetry: s.telemetry.clone(),
    };
    let passed = take_passed(passed, |p| claims(key, p));
    match key {
        Key::Udp(u) => {
            let sockets = match passed {
                Some(p) => {
                    tracing::info!(listener = %u.label(), name = %p.name, "using the UDP socket passed by systemd");
                    vec![p.socket]
                }
                None => ingest::bind_udp(u, &s.telemetry)?,
            };
            ingest::start_udp(u, sockets, &sinks)
        }
        Key::Tcp(t) => {
            let l = match passed {
                Some(p) => p.socket.into(),
                None => ingest::bind_tcp(t)?,
            };
            ingest::start_tcp(t, l, &sinks)
        }
        Key::Unixgram(u) => ingest::start_unixgram(u, passed.map(|p| p.socket), &sinks),
    }
}

impl Starting {
    /// Binds every configured listener (using sockets passed by systemd where they match),
    /// starts the background tasks, and marks the daemon ready.
    pub async fn bind_listeners(self) -> Result<Daemon, StartError> {
        let s = self.shared.clone();
        let cfg = s.live.load();
        let mut started = HashMap::new();
        for key in Key::all(&cfg.config) {
            match start_listener(&key, &self.passed, &s) {
                Ok(r) => {
                    started.insert(key, r);
                }
                Err(e) => {
                    for (_, r) in started.drain() {
                        Running::stop(r);
                    }
                    let _ = s.stop_tx.send(true);
                    return Err(bind_err(&format!("{key:?}"), e));
                }
            }
        }
        let keys = Key::all(&cfg.config);
        for p in self.passed.iter().filter(|p| {
            !keys.iter().any(|k| claims(k, p))
                && (p.datagram || p.addr != Some(cfg.config.http.listen))
        }) {
            tracing::warn!(name = %p.name, addr = ?p.addr, path = ?p.path, "a socket passed by systemd matches no listener; kept unread for a later reload");
        }
        let labels: Vec<String> = started.values().map(|r| r.label.clone()).collect();
        *crate::sync::lock(&s.listeners) = started;
        // Signal handlers and the file watcher go in before READY=1: systemd may send SIGHUP
        // (`systemctl reload`) as soon as it sees READY, and an unhandled SIGHUP kills.
        let signal_task = self
            .opts_signals
            .then(|| signals(s.control.clone(), s.stop_tx.clone()));
        let watcher = match (self.opts_watch, s.live.path()) {
            (true, Some(path)) => {
                let tx = s.control.clone();
                match crate::config::live::watch(path, move || {
                    let _ = tx.try_send(Control::Reload {
                        only_if_changed: true,
                        reply: None,
                    });
                }) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP instead");
                        None
                    }
                }
            }
            _ => None,
        };
        s.ready.set_ready(labels.clone());
        s.notifier
            .send(&format!("READY=1\nSTATUS={}", status(&s, "config loaded")));
        tracing::info!(listeners = ?labels, "tallyd is ready");

        let mut background = Vec::new();
        // Expiry, off the hot path.
        let store = s.store.clone();
        let every = self.sweep_interval;
        background.push(tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                let st = store.clone();
                let _ = tokio::task::spawn_blocking(move || st.sweep()).await;
            }
        }));
        if let Some(t) = signal_task {
            background.push(tokio::spawn(t));
        }
        if let Some(t) = watchdog(&s) {
            background.push(t);
        }
        let control_task = tokio::spawn(control_loop(self.control_rx, s.clone(), self.passed));
        Ok(Daemon {
            http_addr: self.http_addr,
            shared: s,
            control_task,
            http_task: self.http_task,
            background,
            _watcher: watcher,
        })
    }
}

fn status(s: &Shared, last: &str) -> String {
    let n = crate::sync::lock(&s.listeners).len();
    format!(
        "{n} listener(s), {} series, last reload: {last}",
        s.store.series_count()
    )
}

/// SIGHUP reloads; SIGTERM and SIGINT stop. The handlers are installed by this call (so a
/// signal that arrives before the returned task first runs is kept, not fatal).
fn signals(
    control: mpsc::Sender<Control>,
    stop: watch::Sender<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move { serve_signals(handlers, control, stop).await }
}

type Handlers = (
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
);

async fn serve_signals(
    handlers: Handlers,
    control: mpsc::Sender<Control>,
    stop: watch::Sender<bool>,
) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = handlers else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = control.send(Control::Reload { only_if_changed: false, reply: None }).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stop signal received; draining");
    let _ = stop.send(true);
}

/// Pings the systemd watchdog at half its interval while the ingest workers make progress.
///
/// A worker goes round its loop at least every [`ingest::IDLE_TICK`], but with a short
/// `WatchdogSec` one slightly long idle round can fall between two checks; so a worker counts
/// as stuck only once it has made no round for three ticks. The ping stops then, and systemd's
/// watchdog fires one interval later.
fn watchdog(s: &Shared) -> Option<tokio::task::JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // sd_watchdog_enabled(3): the variables may be meant for another process.
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok()
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    if !s.notifier.enabled() || usec == 0 {
        return None;
    }
    let s = s.clone();
    let grace = ingest::IDLE_TICK * 3;
    Some(tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_micros(usec / 2));
        let mut progress = std::time::Instant::now();
        let mut withheld = false;
        loop {
            iv.tick().await;
            // Ask every listener (no short-circuit: each call also moves its reference point).
            let alive = crate::sync::lock(&s.listeners)
                .values()
                .fold(true, |ok, r| r.is_alive() & ok);
            if alive {
                progress = std::time::Instant::now();
            }
            if progress.elapsed() <= grace {
                s.notifier.send("WATCHDOG=1");
                withheld = false;
            } else if !withheld {
                tracing::error!("an ingest worker is stuck; withholding the watchdog ping");
                withheld = true;
            }
        }
    }))
}

/// Owns reloads and stops, one at a time.
async fn control_loop(mut rx: mpsc::Receiver<Control>, s: Shared, passed: Vec<Passed>) {
    let mut stop_rx = s.stop_tx.subscribe();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = stop_rx.changed() => None,
        };
        match msg {
            Some(Control::Reload {
                only_if_changed,
                reply,
            }) => {
                let out = reload(&s, only_if_changed, &passed).await;
                if let Some(o) = &out {
                    let last = if o.is_ok() { "success" } else { "failure" };
                    s.notifier
                        .send(&format!("READY=1\nSTATUS={}", status(&s, last)));
                }
                if let Some(r) = reply {
                    let _ = r.send(out.unwrap_or_else(|| Ok("unchanged".into())));
                }
            }
            Some(Control::Shutdown(done)) => {
                stop(&s).await;
                let _ = done.send(());
                return;
            }
            None => {
                stop(&s).await;
                return;
            }
        }
    }
}

async fn stop(s: &Shared) {
    s.ready.set_not_ready();
    s.notifier.send("STOPPING=1");
    let running: Vec<Running> = crate::sync::lock(&s.listeners)
        .drain()
        .map(|(_, r)| r)
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for r in running {
            r.stop();
        }
    })
    .await;
    let _ = s.stop_tx.send(true);
    tracing::info!("stopped");
}

/// One reload; `None` when a file event changed nothing.
async fn reload(
    s: &Shared,
    only_if_changed: bool,
    passed: &[Passed],
) -> Option<Result<String, String>> {
    if only_if_changed && !s.live.changed_on_disk() {
        return None;
    }
    s.notifier.send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        ingest::sys::monotonic_usec()
    ));
    let live = s.live.clone();
    let result = tokio::task::spawn_blocking(move || live.reload(false))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError {
                line: 0,
                column: 0,
                key: None,
                message: format!("reload panicked: {e}"),
            })
        });
    Some(match result {
        Ok(None) => Ok("no config file; running on the embedded defaults".into()),
        Ok(Some(r)) => {
            s.telemetry.reload_outcome(true);
            for w in &r.warnings {
                tracing::warn!("config: {w}");
            }
            let mut msg = String::from("config reloaded");
            let mut failed = false;
            if r.listeners_changed {
                match apply_listeners(s, passed).await {
                    Ok(()) => msg.push_str("; listeners updated"),
                    Err(e) => {
                        failed = true;
                        tracing::error!(error = %e, "listener change failed; the old listeners keep running");
                        msg.push_str(&format!(
                            "; listener change failed ({e}), old listeners kept"
                        ));
                    }
                }
            }
            // [http] address, TLS and limits apply at start only.
            let http_pending = s.started.config.http_differs(&s.live.load().config);
            if http_pending {
                tracing::warn!("[http] listen/TLS/limit changes take effect at the next restart");
                msg.push_str("; [http] changes need a restart");
            }
            s.telemetry
                .restart_required
                .set(i64::from(failed || http_pending));
            tracing::info!("{msg}");
            Ok(msg)
        }
        Err(e) => {
            s.telemetry.reload_outcome(false);
            tracing::error!(error = %e, file = ?s.live.path(), "config reload failed; the running config stays");
            Err(format!("config reload failed: {e}"))
        }
    })
}

/// Brings the running listeners in line with the config: binds new ones first, and only then
/// stops the ones that went away. A bind failure leaves every old listener running.
async fn apply_listeners(s: &Shared, passed: &[Passed]) -> Result<(), String> {
    let cfg = s.live.load();
    let want = Key::all(&cfg.config);
    let have: Vec<Key> = crate::sync::lock(&s.listeners).keys().cloned().collect();
    let mut added = Vec::new();
    for k in want.iter().filter(|k| !have.contains(k)) {
        match start_listener(k, passed, s) {
            Ok(r) => added.push((k.clone(), r)),
            Err(e) => {
                let undo: Vec<Running> = added.into_iter().map(|(_, r)| r).collect();
                let _ =
                    tokio::task::spawn_blocking(move || undo.into_iter().for_each(Running::stop))
                        .await;
                return Err(format!("{k:?}: {e}"));
            }
        }
    }
    let removed: Vec<Running> = {
        let mut map = crate::sync::lock(&s.listeners);
        for (k, r) in added {
            map.insert(k, r);
        }
        let gone: Vec<Key> = map.keys().filter(|k| !want.contains(k)).cloned().collect();
        gone.iter().filter_map(|k| map.remove(k)).collect()
    };
    for r in &removed {
        tracing::info!(listener = %r.label, "listener removed");
    }
    let _ = tokio::task::spawn_blocking(move || removed.into_iter().for_each(Running::stop)).await;
    Ok(())
}

/// A logfmt event formatter: `ts=... level=info target=... msg="..." key=value`.
pub struct Logfmt;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Logfmt
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        struct Fields<'a, 'b>(&'a mut tracing_subscriber::fmt::format::Writer<'b>);
        impl tracing::field::Visit for Fields<'_, '_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let v = format!("{value:?}");
                let key = if field.name() == "message" {
                    "msg"
                } else {
                    field.name()
                };
                let quoted = v.contains([' ', '"', '=']) || v.is_empty();
                let _ = if quoted {
                    write!(
                        self.0,
                        " {key}=\"{}\"",
                        v.replace('\\', "\\\\").replace('"', "\\\"")
                    )
                } else {
                    write!(self.0, " {key}={v}")
                };
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.record_debug(field, &format_args!("{value}"));
            }
        }
        let meta = event.metadata();
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        write!(
            w,
            "ts={ts} level={} target={}",
            meta.level().as_str().to_lowercase(),
            meta.target()
        )?;
        event.record(&mut Fields(&mut w));
        writeln!(w)
    }
}
