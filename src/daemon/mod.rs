//! The daemon's lifecycle: start, serve, stop. What runs after start-up is in [`control`]
//! (reloads, listener changes, signals, the watchdog) and [`systemd`] (the notify protocol and
//! socket activation).
//!
//! Start-up is two steps so tests (and the readiness contract) can observe the gap:
//! [`Daemon::start_http`] loads the config and serves HTTP (`/-/ready` answers 503), and
//! [`Starting::bind_listeners`] binds every listener, then marks ready (200, `READY=1`).
//! The outside world is injected ([`Options`]): the config path, the clock, the sockets passed
//! by systemd, an already bound HTTP listener, what stops the daemon (a future: the binary
//! passes [`control::stop_signal`]) and what asks for reloads (SIGHUP in the binary).

pub mod control;
pub mod systemd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{Clock, MonotonicClock};
use crate::config::live::{Live, Snapshot};
use crate::config::{Config, ConfigError, Tcp, Udp, Unixgram};
use crate::export::http::{Control, State};
use crate::ingest::{self, Running};
use crate::ready::Readiness;
use crate::store::Store;
use crate::telemetry::Telemetry;
use systemd::{Passed, claims, take_passed};

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
    /// An HTTP listener already bound, served instead of binding `[http] listen` (a test binds
    /// port 0 and knows its address before the daemon starts).
    pub http_listener: Option<std::net::TcpListener>,
    /// Stops the daemon when it resolves (the binary: SIGTERM or SIGINT). Without it, only
    /// [`Daemon::shutdown`] stops it.
    pub shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Each signal received asks for a reload (the binary: SIGHUP). Installed before
    /// `READY=1`, since systemd may send it as soon as it sees that.
    pub hangup: Option<tokio::signal::unix::Signal>,
    /// Applies `[log]` live on reload; without it a `[log]` change waits for a restart (and
    /// says so in `tallyd_config_restart_required`).
    pub log_reload: Option<LogReload>,
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
            http_listener: None,
            shutdown: None,
            hangup: None,
            log_reload: None,
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// A socket could not be bound: one sentence naming the listener, where the config sets
    /// it, its address and the OS reason.
    #[error("cannot {what} {address} ({origin}): {}", os_reason(source))]
    Bind {
        /// What was being done: "bind the UDP listener", "load the TLS files for".
        what: &'static str,
        /// The address or path.
        address: String,
        /// Where it is configured: "/etc/tallyd.toml, line 7", or a default's description.
        origin: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// An OS error as the end of a sentence: "address already in use", without the errno.
fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Where the config sets something at `line` (`None`: left to its default).
fn origin(path: Option<&std::path::Path>, line: Option<usize>, default: &str) -> String {
    match (path, line) {
        (Some(p), Some(line)) => format!("{}, line {line}", p.display()),
        (Some(p), None) => format!("{default}, {} does not set it", p.display()),
        (None, _) => format!("{default}, embedded defaults"),
    }
}

/// A listener's identity: its whole config section (changing any key re-binds it).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Key {
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

    /// The `listener` label: the configured address or path.
    pub(crate) fn label(&self) -> String {
        match self {
            Key::Udp(u) => u.label(),
            Key::Tcp(t) => t.label(),
            Key::Unixgram(u) => u.label(),
        }
    }

    /// True if both are TCP listeners on one address or Unix listeners on one path: two
    /// sockets cannot hold it at once (UDP ones can, through SO_REUSEPORT).
    pub(crate) fn same_stream_address(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Tcp(a), Key::Tcp(b)) => a.listen == b.listen && a.listen.port() != 0,
            (Key::Unixgram(a), Key::Unixgram(b)) => a.path == b.path,
            _ => false,
        }
    }
}

/// The configured listeners in config order, each under the label its counters carry (the
/// running listener's: a TCP listener's is its bound address) and whether it runs.
fn listener_refs(
    cfg: &Config,
    running: &HashMap<Key, Running>,
) -> Vec<crate::export::status::ListenerRef> {
    Key::all(cfg)
        .into_iter()
        .map(|k| crate::export::status::ListenerRef {
            transport: match k {
                Key::Udp(_) => "udp",
                Key::Tcp(_) => "tcp",
                Key::Unixgram(_) => "unixgram",
            },
            label: running
                .get(&k)
                .map_or_else(|| k.label(), |r| r.label.clone()),
            up: running.contains_key(&k),
        })
        .collect()
}

/// Applies a new `[log]` section to the running logger (the binary's; none in tests).
pub type LogReload = Arc<dyn Fn(&crate::config::Log) -> Result<(), String> + Send + Sync>;

type Listeners = Arc<std::sync::Mutex<HashMap<Key, Running>>>;

/// A daemon whose HTTP endpoint is up but whose listeners are not bound yet.
pub struct Starting {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    shared: Shared,
    control_rx: mpsc::Receiver<Control>,
    passed: Vec<Passed>,
    opts_watch: bool,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    hangup: Option<tokio::signal::unix::Signal>,
    sweep_interval: Duration,
    http_task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub(crate) struct Shared {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    live: Arc<Live>,
    ready: Arc<Readiness>,
    listeners: Listeners,
    /// The `[relay]` sender, as the daemon started (a change waits for a restart).
    relay: Option<Arc<ingest::relay::RelayHandle>>,
    /// The running `[[remote_write]]` endpoints.
    remotes: Arc<std::sync::Mutex<Vec<crate::remote::Endpoint>>>,
    control: mpsc::Sender<Control>,
    stop_tx: watch::Sender<bool>,
    /// The config the daemon started with (settings that apply at start only).
    started: Arc<Snapshot>,
    /// Applies `[log]` live, if the logger can.
    log_reload: Option<LogReload>,
    /// The first ingest worker that died, if one did: the daemon is stopping and exits
    /// non-zero.
    died: Arc<std::sync::OnceLock<String>>,
}

impl Shared {
    /// What an ingest worker's death does: not ready at once, no more watchdog pings, an
    /// ERROR line, and a stop (as on SIGTERM) after which [`Daemon::wait`] returns an error,
    /// so the supervisor restarts tallyd instead of keeping a half-alive daemon.
    fn on_death(&self) -> ingest::OnDeath {
        let (ready, died, stop) = (self.ready.clone(), self.died.clone(), self.stop_tx.clone());
        Arc::new(move |name: &str| {
            ready.set_not_ready();
            if died.set(name.to_string()).is_ok() {
                tracing::error!(worker = name, "an ingest worker died; stopping tallyd");
            }
            let _ = stop.send(true);
        })
    }

    /// The worker that died, if one did.
    pub(crate) fn died(&self) -> Option<&str> {
        self.died.get().map(String::as_str)
    }
}

/// [`Daemon::wait`]'s error: the daemon stopped because an ingest worker died.
#[derive(Debug, thiserror::Error)]
#[error("the ingest worker {0} died; tallyd stopped")]
pub struct WorkerDied(pub String);

/// A running daemon.
pub struct Daemon {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    shared: Shared,
    control_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
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
        for w in opts
            .config_path
            .as_deref()
            .map(crate::config::permission_warnings)
            .unwrap_or_default()
        {
            tracing::warn!("config: {w}");
        }
        let http_cfg = snapshot.config.http.clone();
        let http_origin = origin(
            opts.config_path.as_deref(),
            snapshot.origins.http,
            "the default [http] listen",
        );
        let http_err = |what: &'static str| {
            let (address, origin) = (http_cfg.listen.to_string(), http_origin.clone());
            move |source| StartError::Bind {
                what,
                address,
                origin,
                source,
            }
        };
        let telemetry = Arc::new(Telemetry::new());
        let relay = match &snapshot.config.relay {
            Some(r) => {
                let origin = origin(opts.config_path.as_deref(), None, "[relay] address");
                Some(Arc::new(
                    ingest::relay::RelayHandle::start(r, telemetry.relay_dropped[2].clone())
                        .map_err(|source| StartError::Bind {
                            what: "start the relay to",
                            address: r.address.clone(),
                            origin,
                            source,
                        })?,
                ))
            }
            None => None,
        };
        telemetry
            .records
            .config_loaded(opts.config_path.as_deref(), text.as_deref(), "start");
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
            remotes: Default::default(),
            relay,
            control: control.clone(),
            stop_tx,
            started: live.load(),
            log_reload: opts.log_reload,
            died: Default::default(),
        };
        let passed = opts.passed;
        let given = opts.http_listener.or_else(|| {
            take_passed(&passed, |p| !p.datagram && p.addr == Some(http_cfg.listen))
                .map(|p| p.socket.into())
        });
        let http = match given {
            Some(l) => {
                l.set_nonblocking(true)
                    .map_err(http_err("use the HTTP listener"))?;
                tokio::net::TcpListener::from_std(l).map_err(http_err("use the HTTP listener"))?
            }
            None => tokio::net::TcpListener::bind(http_cfg.listen)
                .await
                .map_err(http_err("bind the HTTP listener"))?,
        };
        let http_addr = http
            .local_addr()
            .map_err(http_err("use the HTTP listener"))?;
        let drops_listeners = listeners.clone();
        let (status_listeners, status_live) = (listeners.clone(), live.clone());
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
            listeners: Box::new(move || {
                listener_refs(
                    &status_live.load().config,
                    &crate::sync::lock(&status_listeners),
                )
            }),
        });
        let tls = crate::export::http::tls_acceptor(&http_cfg)
            .map_err(http_err("load the TLS files for the HTTP listener"))?;
        let http_task = tokio::spawn(crate::export::http::serve(
            http,
            state,
            tls,
            crate::export::http::Limits {
                max_connections: http_cfg.max_connections,
                header_read_timeout: http_cfg.header_read_timeout,
                write_timeout: http_cfg.write_timeout,
            },
            stop_rx,
        ));
        tracing::info!(address = %http_addr, "HTTP endpoint serving /metrics");
        Ok(Starting {
            http_addr,
            shared,
            control_rx,
            passed,
            opts_watch: opts.watch,
            shutdown: opts.shutdown,
            hangup: opts.hangup,
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

    /// What `/-/ready` answers: 200 if true.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.is_ready()
    }

    /// Asks for a reload as SIGHUP does; returns the outcome text.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .shared
            .control
            .send(Control::Reload {
                reply: Some(tx),
                by: "sighup",
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

    /// Runs until [`Options::shutdown`] resolves, the control loop ends or an ingest worker
    /// dies, then stops; the error says which worker died.
    pub async fn wait(self) -> Result<(), WorkerDied> {
        let stopped = self.shared.stop_tx.subscribe();
        let mut stopped = stopped;
        while !*stopped.borrow() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
        let died = self.shared.died().map(str::to_string);
        self.shutdown().await;
        match died {
            Some(name) => Err(WorkerDied(name)),
            None => Ok(()),
        }
    }
}

/// The error for the listener `all[n]` (of `cfg`, read from `path`) that cannot bind.
pub(crate) fn bind_err(
    all: &[Key],
    n: usize,
    cfg: &Snapshot,
    path: Option<&std::path::Path>,
    source: std::io::Error,
) -> StartError {
    let key = &all[n];
    let kind = std::mem::discriminant(key);
    let index = all[..n]
        .iter()
        .filter(|k| std::mem::discriminant(*k) == kind)
        .count();
    let (what, lines, default) = match key {
        Key::Udp(_) => (
            "bind the UDP listener",
            &cfg.origins.udp,
            "the default [[udp]]",
        ),
        Key::Tcp(_) => ("bind the TCP listener", &cfg.origins.tcp, "[[tcp]]"),
        Key::Unixgram(_) => (
            "bind the unixgram listener",
            &cfg.origins.unixgram,
            "[[unixgram]]",
        ),
    };
    StartError::Bind {
        what,
        address: key.label(),
        origin: origin(path, lines.get(index).copied(), default),
        source,
    }
}

/// Binds and starts one listener.
pub(crate) fn start_listener(key: &Key, passed: &[Passed], s: &Shared) -> std::io::Result<Running> {
    let sinks = ingest::Sinks {
        store: s.store.clone(),
        live: s.live.clone(),
        telemetry: s.telemetry.clone(),
        on_death: s.on_death(),
        relay: s.relay.clone(),
    };
    let passed = take_passed(passed, |p| claims(key, p));
    match key {
        Key::Udp(u) => {
            let sockets = match passed {
                Some(p) => {
                    tracing::info!(listener = %u.label(), name = %p.name, "using the UDP socket passed by systemd");
                    vec![p.socket]
                }
                None => ingest::bind_udp(u)?,
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
        let all = Key::all(&cfg.config);
        for (n, key) in all.iter().cloned().enumerate() {
            match start_listener(&key, &self.passed, &s) {
                Ok(r) => {
                    started.insert(key, r);
                }
                Err(e) => {
                    for (_, r) in started.drain() {
                        Running::stop(r);
                    }
                    let _ = s.stop_tx.send(true);
                    return Err(bind_err(&all, n, &cfg, s.live.path(), e));
                }
            }
        }
        let keys = Key::all(&cfg.config);
        for p in self.passed.iter().filter(|p| {
            !keys.iter().any(|k| claims(k, p))
                && (p.datagram || p.addr != Some(cfg.config.http.listen))
        }) {
            let bound = match (&p.addr, &p.path) {
                (Some(a), _) => a.to_string(),
                (None, Some(path)) => path.display().to_string(),
                (None, None) => "unbound".to_string(),
            };
            tracing::warn!(name = %p.name, address = %bound, "a socket passed by systemd matches no listener; kept unread for a later reload");
        }
        let labels: Vec<String> = started.values().map(|r| r.label.clone()).collect();
        for k in started.keys() {
            s.telemetry
                .listener_up
                .with_label_values(&[&k.label()])
                .set(1);
        }
        let bound: Vec<String> = started
            .values()
            .map(|r| match r.addr {
                Some(a) if r.label.starts_with("udp://") => format!("udp://{a}"),
                _ => r.label.clone(),
            })
            .collect();
        *crate::sync::lock(&s.listeners) = started;
        // Signal handlers and the file watcher go in before READY=1: systemd may send SIGHUP
        // (`systemctl reload`) as soon as it sees READY, and an unhandled SIGHUP kills.
        let hangups = self
            .hangup
            .map(|hup| control::forward_hangups(hup, s.control.clone()));
        let watcher = match (self.opts_watch, s.live.path()) {
            (true, Some(path)) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
                let (poke, pokes) = mpsc::channel(1);
                match crate::config::live::ConfigWatch::new(&path, move || {
                    let _ = poke.try_send(());
                }) {
                    Ok(w) => Some(control::watch_file(path, pokes, w, s.control.clone(), None)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP instead");
                        None
                    }
                }
            }
            _ => None,
        };
        s.ready.set_ready(labels.clone());
        systemd::ready(&control::status(&s, "config loaded"));
        tracing::info!(
            version = %env!("CARGO_PKG_VERSION"),
            config = %s.live.path().map_or_else(|| "embedded defaults".to_string(), |p| p.display().to_string()),
            http = %self.http_addr,
            listeners = %bound.join(" "),
            "tallyd is ready"
        );

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
        if let Err(e) = control::apply_remotes(&s).await {
            tracing::error!(error = %e, "a remote write endpoint could not be started");
        }
        // The status page's ingest history (its first sample now, so the page has a rate as
        // soon as it is asked) and growth baseline (until the first, a minute in, growth
        // counts from the start).
        let refs =
            |s: &Shared| listener_refs(&s.live.load().config, &crate::sync::lock(&s.listeners));
        crate::export::status::sample(&s.store, &s.telemetry, &refs(&s), false);
        let sampled = s.clone();
        background.push(tokio::spawn(async move {
            use crate::telemetry::{BASELINE_EVERY, HISTORY_EVERY};
            let mut iv = tokio::time::interval_at(
                tokio::time::Instant::now() + HISTORY_EVERY,
                HISTORY_EVERY,
            );
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let per_baseline = (BASELINE_EVERY.as_secs() / HISTORY_EVERY.as_secs()).max(1);
            let mut n = 0u64;
            loop {
                iv.tick().await;
                let s = sampled.clone();
                n += 1;
                let baseline = n.is_multiple_of(per_baseline);
                let _ = tokio::task::spawn_blocking(move || {
                    crate::export::status::sample(&s.store, &s.telemetry, &refs(&s), baseline);
                })
                .await;
            }
        }));
        if let Some(t) = hangups {
            background.push(tokio::spawn(t));
        }
        if let Some(t) = watcher {
            background.push(tokio::spawn(t));
        }
        if let Some(f) = self.shutdown {
            background.push(tokio::spawn(control::stop_on(f, s.stop_tx.clone())));
        }
        if let Some(t) = control::watchdog(&s) {
            background.push(t);
        }
        let control_task = tokio::spawn(control::control_loop(
            self.control_rx,
            s.clone(),
            self.passed,
        ));
        Ok(Daemon {
            http_addr: self.http_addr,
            shared: s,
            control_task,
            http_task: self.http_task,
            background,
        })
    }
}
