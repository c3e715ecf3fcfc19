//! The TOML configuration: serde types with their defaults, validation, and the live handle.
//!
//! Every check that can be tied to a key happens while deserialising (durations, sizes,
//! addresses, buckets, globs, regexes, capture references), so every error carries the line
//! and column of the offending value and the name of its key. An empty file is valid and equal
//! to the embedded defaults (`tallyd` with no `--config`). `docs/config.md`
//! describes every key; `config/tallyd.toml` is the documented example.
//!
//! Reloading lives in [`live`]: a new file is parsed and validated off the hot path and
//! published whole through the [`crate::sync::Cell`] (arc-swap), so a bad file never replaces a
//! good one and workers never take a lock to read the config.

mod check;
pub mod live;
pub mod mapping;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use mapping::{Mapper, MappingRule};

/// One configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, 0 when the error is not tied to a place (an unreadable file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key the error is about, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[http]`: the exposition and lifecycle endpoint.
    pub http: Http,
    /// `[[udp]]`: UDP listeners; absent means one on 127.0.0.1:8125, `udp = []` means none.
    pub udp: Vec<Udp>,
    /// `[[tcp]]`: TCP line listeners; none by default.
    pub tcp: Vec<Tcp>,
    /// `[[unixgram]]`: Unix datagram listeners; none by default.
    pub unixgram: Vec<Unixgram>,
    /// `[parse]`: which protocol dialects are on.
    pub parse: Parse,
    /// `[dogstatsd]`: the families of DogStatsD events and service checks.
    pub dogstatsd: Dogstatsd,
    /// `[defaults]`: ttl, buckets and set window for series no mapping overrides.
    pub defaults: Defaults,
    /// `[limits]`: bounds on series.
    pub limits: Limits,
    /// `[[mapping]]`: rules tried in file order; the first match wins.
    pub mapping: Vec<MappingRule>,
    /// `[log]`: log level and format.
    pub log: Log,
    /// `[[remote_write]]`: endpoints the current state is pushed to (Prometheus remote write).
    pub remote_write: Vec<RemoteWrite>,
    /// `[relay]`: every accepted line also forwarded to another StatsD server.
    pub relay: Option<Relay>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: Http::default(),
            udp: vec![Udp::default()],
            tcp: Vec::new(),
            unixgram: Vec::new(),
            parse: Parse::default(),
            dogstatsd: Dogstatsd::default(),
            defaults: Defaults::default(),
            limits: Limits::default(),
            mapping: Vec::new(),
            log: Log::default(),
            remote_write: Vec::new(),
            relay: None,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of `/metrics`, `/-/healthy`, `/-/ready`, `/-/reload`.
    pub listen: SocketAddr,
    /// Allow `POST /-/reload`.
    pub enable_lifecycle: bool,
    /// The path Prometheus scrapes.
    pub metrics_path: String,
    /// Most concurrent HTTP connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Time allowed to read a request's headers.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Time a response's write may stay blocked on a client that reads nothing before the
    /// connection is closed.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// PEM certificate chain; with `tls_key_file`, the endpoint serves HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// `user = "<bcrypt hash>"`: when non-empty, `/metrics` and `/-/reload` need HTTP basic
    /// auth (the health endpoints stay open for probes).
    #[serde(deserialize_with = "bcrypt_users")]
    pub basic_auth_users: std::collections::BTreeMap<String, String>,
}

/// The HTTP paths tallyd serves besides `metrics_path`.
pub const OWN_PATHS: [&str; 5] = ["/", "/api/v1/status", "/-/healthy", "/-/ready", "/-/reload"];

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9102".parse().expect("static address"),
            enable_lifecycle: false,
            metrics_path: "/metrics".into(),
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            tls_cert_file: None,
            tls_key_file: None,
            basic_auth_users: Default::default(),
        }
    }
}

/// `[[udp]]`: one UDP listener, served by `workers` threads on SO_REUSEPORT sockets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct Udp {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Worker threads (each its own socket and shard); 0 = one per CPU core.
    pub workers: usize,
    /// SO_RCVBUF asked for, per socket; the size the kernel granted is reported.
    #[serde(deserialize_with = "size")]
    pub recv_buffer: u64,
    /// Largest datagram read whole; a longer one is counted as truncated.
    #[serde(deserialize_with = "size")]
    pub max_datagram_size: u64,
    /// Datagrams read per `recvmmsg` call.
    pub batch: usize,
    /// What a signed gauge value (`-3|g`, `+3|g`) means on this listener.
    pub gauge_signs: GaugeSigns,
}

impl Default for Udp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8125".parse().expect("static address"),
            workers: 0,
            recv_buffer: 8 << 20,
            max_datagram_size: 65536,
            batch: 32,
            gauge_signs: GaugeSigns::Delta,
        }
    }
}

impl Tcp {
    /// The `listener` label of this listener's metrics.
    pub fn label(&self) -> String {
        format!("tcp://{}", self.listen)
    }
}

impl Unixgram {
    /// The `listener` label of this listener's metrics.
    pub fn label(&self) -> String {
        format!("unixgram://{}", self.path.display())
    }
}

impl Udp {
    /// The `listener` label of this listener's metrics.
    pub fn label(&self) -> String {
        format!("udp://{}", self.listen)
    }

    /// Workers to run, `0` resolved to the core count.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }
}

/// What a gauge value with a leading sign means: the StatsD dialects differ.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum GaugeSigns {
    /// Etsy StatsD and statsd_exporter: `-3|g` and `+3|g` change the gauge by -3 and +3.
    #[default]
    Delta,
    /// DogStatsD: `-3|g` sets the gauge to -3 (`+3|g` to 3); a DogStatsD client sends a
    /// negative gauge as it is.
    Absolute,
}

/// `[[tcp]]`: one TCP listener of `\n`-terminated lines.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct Tcp {
    /// Address to bind.
    pub listen: SocketAddr,
    /// A longer line is dropped and counted; the connection stays open.
    #[serde(deserialize_with = "size")]
    pub max_line_length: u64,
    /// Most open connections; more are refused and counted.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// What a signed gauge value (`-3|g`, `+3|g`) means on this listener.
    pub gauge_signs: GaugeSigns,
}

impl Default for Tcp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8125".parse().expect("static address"),
            max_line_length: 64 << 10,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            gauge_signs: GaugeSigns::Delta,
        }
    }
}

/// `[[unixgram]]`: one Unix datagram socket.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct Unixgram {
    /// Socket file path; a stale file is replaced at start and removed at stop.
    pub path: PathBuf,
    /// File mode of the socket, octal.
    #[serde(deserialize_with = "file_mode")]
    pub mode: u32,
    /// SO_RCVBUF asked for.
    #[serde(deserialize_with = "size")]
    pub recv_buffer: u64,
    /// What a signed gauge value (`-3|g`, `+3|g`) means on this listener.
    pub gauge_signs: GaugeSigns,
}

impl Default for Unixgram {
    fn default() -> Self {
        Self {
            path: "/run/tallyd/statsd.sock".into(),
            mode: 0o660,
            recv_buffer: 8 << 20,
            gauge_signs: GaugeSigns::Delta,
        }
    }
}

/// `[parse]`: which dialects are recognised.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Parse {
    /// `|#k:v` tags.
    pub dogstatsd_tags: bool,
    /// `name,k=v:1|c`.
    pub influxdb_tags: bool,
    /// `name#k=v:1|c`.
    pub librato_tags: bool,
    /// `name.[k=v]rest:1|c`.
    pub signalfx_tags: bool,
    /// Turn the `|c:` container id into a `container_id` label.
    pub container_id_label: bool,
}

impl Default for Parse {
    fn default() -> Self {
        Self {
            dogstatsd_tags: true,
            influxdb_tags: true,
            librato_tags: true,
            signalfx_tags: true,
            container_id_label: false,
        }
    }
}

/// `[dogstatsd]`: the families tallyd exports DogStatsD events and service checks under.
/// Both are tallyd's own: a StatsD line whose family would be (or would write a sample under)
/// one of these names is refused as `reserved_name`, as a `tallyd_*` name is.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Dogstatsd {
    /// The counter of events, labelled `alert_type` and `priority` (must end in `_total`).
    pub events_family: String,
    /// The gauge of service check statuses, labelled `check`.
    pub service_checks_family: String,
}

impl Default for Dogstatsd {
    fn default() -> Self {
        Self {
            events_family: "statsd_events_total".into(),
            service_checks_family: "statsd_service_check_status".into(),
        }
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// A series not updated for this long disappears; 0 = never.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// Bucket bounds (seconds) for `ms` timers.
    #[serde(deserialize_with = "buckets")]
    pub timer_buckets: Vec<f64>,
    /// Bucket bounds for `h` and `d`.
    #[serde(deserialize_with = "buckets")]
    pub histogram_buckets: Vec<f64>,
    /// Sliding window over which a set's distinct members are counted.
    #[serde(deserialize_with = "duration")]
    pub set_window: Duration,
    /// What `ms`, `h` and `d` samples become where no mapping rule says: a histogram, or a
    /// summary. Unset: a histogram, or a summary under `naming = "statsd_exporter"`.
    pub observer: Option<mapping::ObserverKind>,
    /// Default summary quantiles.
    #[serde(deserialize_with = "mapping::opt_quantiles")]
    pub quantiles: Option<Vec<f64>>,
    /// Default summary window.
    #[serde(deserialize_with = "mapping::opt_duration")]
    pub window: Option<Duration>,
    /// Which exposition conventions names follow.
    pub naming: Naming,
    /// What a histogram keeps: classic buckets, a native histogram, or both.
    pub histograms: mapping::HistogramKind,
    /// Native histograms: the largest factor between neighbouring bucket bounds (> 1).
    pub native_bucket_factor: f64,
    /// Native histograms: the most buckets a worker keeps per histogram (each sign); past it
    /// the resolution halves.
    pub native_max_buckets: u16,
    /// Native histograms: values of at most this magnitude count in the zero bucket.
    pub native_zero_threshold: f64,
}

/// The naming conventions of the exposition.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// Prometheus's: counters end in `_total`; lint-clean.
    #[default]
    Tallyd,
    /// statsd_exporter's, for dashboards written against it: counters keep their name as
    /// mapped (no `_total` added), observers default to summaries, and `:` in a name is
    /// escaped like any other character outside `[a-zA-Z0-9_]`.
    StatsdExporter,
}

impl Defaults {
    /// The summary settings of an observer family, given what its mapping rule says (all
    /// `None` when unmapped): `None` when it is a histogram. What the rule leaves out comes
    /// from `[defaults]`, and what that leaves out from the built-in defaults.
    pub fn summary(
        &self,
        observer: Option<mapping::ObserverKind>,
        quantiles: Option<&Arc<[f64]>>,
        window: Option<Duration>,
    ) -> Option<mapping::SummarySpec> {
        let summary = match observer.or(self.observer) {
            Some(o) => o == mapping::ObserverKind::Summary,
            None => self.naming == Naming::StatsdExporter,
        };
        summary.then(|| mapping::SummarySpec {
            quantiles: quantiles.cloned().unwrap_or_else(|| {
                Arc::from(
                    self.quantiles
                        .as_deref()
                        .unwrap_or(&mapping::DEFAULT_QUANTILES),
                )
            }),
            window: window.or(self.window).unwrap_or(mapping::DEFAULT_WINDOW),
        })
    }
}

/// Prometheus client libraries' default buckets.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for Defaults {
    fn default() -> Self {
        Self {
            ttl: Duration::ZERO,
            timer_buckets: DEFAULT_BUCKETS.to_vec(),
            histogram_buckets: DEFAULT_BUCKETS.to_vec(),
            set_window: Duration::from_secs(60),
            observer: None,
            quantiles: None,
            window: None,
            naming: Naming::Tallyd,
            histograms: mapping::HistogramKind::Both,
            native_bucket_factor: 1.1,
            native_max_buckets: 256,
            native_zero_threshold: crate::store::native::DEFAULT_ZERO_THRESHOLD,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Live series across all metrics; a sample that would create one more is refused.
    pub max_series: usize,
    /// Live series of one metric name; 0 = no per-name limit.
    pub max_series_per_metric: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series: 1_000_000,
            max_series_per_metric: 0,
        }
    }
}

/// `[relay]`: every line a listener accepts is also sent, as received, to another StatsD
/// server over UDP (to feed an old pipeline during a migration).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// `host:port` of the StatsD server (resolved at start).
    pub address: String,
    /// Lines are packed into datagrams of at most this many bytes.
    #[serde(deserialize_with = "size")]
    pub max_datagram_size: u64,
    /// Datagrams waiting for the relay's sender; past it they are dropped and counted.
    pub queue: usize,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            address: String::new(),
            max_datagram_size: 1432,
            queue: 4096,
        }
    }
}

/// `[[remote_write]]`: one endpoint that receives the current state every `interval`
/// (Prometheus remote write 1.0).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWrite {
    /// The endpoint's name in self-metrics and logs (`endpoint` label); defaults to the URL's
    /// host and port.
    pub name: String,
    /// `http://` or `https://` URL of the receiver.
    pub url: String,
    /// How often the current state is pushed.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Time allowed for one request.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Extra request headers (a tenant header: `X-Scope-OrgID`, `THANOS-TENANT`).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Basic auth: a user and a file holding the password.
    pub basic_auth: Option<RemoteBasicAuth>,
    /// A file holding a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// TLS for `https://` URLs.
    pub tls: RemoteTls,
    /// Labels added to every series (a series' own label of that name wins).
    pub external_labels: std::collections::BTreeMap<String, String>,
    /// Most samples in one request; a push is split into requests of at most this many.
    pub max_samples_per_request: usize,
    /// Most requests waiting to be sent; past it the oldest is dropped and counted.
    pub max_pending_requests: usize,
    /// Requests older than this are dropped unsent (counted).
    #[serde(deserialize_with = "duration")]
    pub max_pending_age: Duration,
    /// First wait before a retry; doubled on each retry up to `max_backoff`.
    #[serde(deserialize_with = "duration")]
    pub min_backoff: Duration,
    /// Longest wait between retries.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for RemoteWrite {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            headers: Default::default(),
            basic_auth: None,
            bearer_token_file: None,
            tls: RemoteTls::default(),
            external_labels: Default::default(),
            max_samples_per_request: 2000,
            max_pending_requests: 10_000,
            max_pending_age: Duration::from_secs(3600),
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RemoteWrite {
    /// The `endpoint` label: `name`, or the URL's host and port.
    pub fn endpoint(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        self.url
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| self.url.clone())
    }
}

/// `[remote_write.basic_auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteBasicAuth {
    /// The user.
    pub username: String,
    /// A file holding the password (its first line; a trailing newline is not part of it).
    pub password_file: PathBuf,
}

/// `[remote_write.tls]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteTls {
    /// PEM CA certificates to verify the receiver with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Skip verifying the receiver's certificate (only for tests).
    pub insecure_skip_verify: bool,
}

/// Headers a `[[remote_write]]` section may not set: the protocol's own and the auth ones.
pub const REMOTE_RESERVED_HEADERS: [&str; 6] = [
    "content-encoding",
    "content-type",
    "content-length",
    "user-agent",
    "x-prometheus-remote-write-version",
    "host",
];

/// `[log]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: LogLevel,
    /// `text` (human, colours only on a terminal), `logfmt` or `json`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

/// `[log] level`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum LogFormat {
    Text,
    Logfmt,
    Json,
}

impl Config {
    /// Parses and validates a whole file; the first error if there are any ([`Config::check`]
    /// has them all).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::check(text).map_err(|mut e| e.swap_remove(0))
    }

    /// Parses and validates a whole file, reporting every error it has, in file order, each at
    /// its key's line and column.
    pub fn check(text: &str) -> Result<Self, Vec<ConfigError>> {
        match check::check(text) {
            (Some(config), errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(errors),
        }
    }

    /// [`Config::check`], and the config read from the rest of the file when it has errors (the
    /// keys in error left out), for checks that need one (the mapping rules').
    pub fn check_partial(text: &str) -> (Option<Self>, Vec<ConfigError>) {
        check::check(text)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<(Self, String), ConfigError> {
        let text = read_file(path)?;
        Ok((Self::from_toml(&text)?, text))
    }

    /// Settings that work but are probably not what the operator wants, each at its key: a
    /// unixgram socket every local user may write to, statsd_exporter's names (which
    /// Prometheus's lint flags).
    pub(crate) fn warnings(&self, text: &str) -> Vec<ConfigError> {
        use check::Step::{Index, Key};
        let Some(tree) = check::Tree::parse(text) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, u) in self.unixgram.iter().enumerate() {
            if u.mode & 0o002 != 0 {
                out.push(tree.error(
                    &[Key("unixgram"), Index(i), Key("mode")],
                    format!(
                        "mode 0{:o} lets every user on the host send metrics to {} as any \
                         application; give the senders a group and use 0660",
                        u.mode,
                        u.path.display()
                    ),
                ));
            }
        }
        if self.defaults.naming == Naming::StatsdExporter {
            out.push(
                tree.error(
                    &[Key("defaults"), Key("naming")],
                    "statsd_exporter naming: counters keep their names as mapped (no `_total` \
                 added), observers are summaries unless `observer` says otherwise, and `:` in \
                 names becomes `_`; `promtool check metrics` will report `counter metrics \
                 should have \"_total\" suffix` for every counter not named so"
                        .into(),
                ),
            );
        }
        out
    }

    /// `[[remote_write]]`'s rules: a URL tallyd can post to, names unique, files readable,
    /// headers and labels that cannot break the protocol.
    fn validate_remote_write(&self, err: &mut impl FnMut(&[check::Step<'_>], String)) {
        use check::Step::{Index, Key};
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.remote_write.iter().enumerate() {
            let at = |k: &'static str| [Key("remote_write"), Index(i), Key(k)];
            match r.url.parse::<hyper::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() => {}
                _ => err(
                    &at("url"),
                    format!(
                        "{:?} is not an http:// or https:// URL with a host, e.g. \"http://127.0.0.1:9090/api/v1/write\"",
                        r.url
                    ),
                ),
            }
            if !names.insert(r.endpoint()) {
                err(
                    &at("name"),
                    format!(
                        "two [[remote_write]] sections are named {:?}; give each a distinct name",
                        r.endpoint()
                    ),
                );
            }
            for (k, v, min) in [
                ("interval", r.interval, Duration::from_millis(100)),
                ("timeout", r.timeout, Duration::from_millis(100)),
                ("min_backoff", r.min_backoff, Duration::from_millis(1)),
            ] {
                if v < min {
                    err(
                        &at(k),
                        format!("must be at least {}", humantime::format_duration(min)),
                    );
                }
            }
            if r.max_backoff < r.min_backoff {
                err(&at("max_backoff"), "must be at least min_backoff".into());
            }
            if r.max_samples_per_request == 0 {
                err(&at("max_samples_per_request"), "must be at least 1".into());
            }
            if r.max_pending_requests == 0 {
                err(&at("max_pending_requests"), "must be at least 1".into());
            }
            if r.basic_auth.is_some() && r.bearer_token_file.is_some() {
                err(
                    &at("bearer_token_file"),
                    "basic_auth and bearer_token_file exclude each other".into(),
                );
            }
            let files = [
                ("bearer_token_file", r.bearer_token_file.as_ref()),
                (
                    "basic_auth",
                    r.basic_auth.as_ref().map(|b| &b.password_file),
                ),
                ("tls", r.tls.ca_file.as_ref()),
                ("tls", r.tls.cert_file.as_ref()),
                ("tls", r.tls.key_file.as_ref()),
            ];
            for (k, f) in files {
                if let Some(f) = f
                    && let Err(e) = std::fs::File::open(f)
                {
                    err(&at(k), format!("cannot read {}: {e}", f.display()));
                }
            }
            if r.tls.cert_file.is_some() != r.tls.key_file.is_some() {
                err(&at("tls"), "cert_file and key_file go together".into());
            }
            for h in r.headers.keys() {
                let lower = h.to_ascii_lowercase();
                if REMOTE_RESERVED_HEADERS.contains(&lower.as_str())
                    || (lower == "authorization"
                        && (r.basic_auth.is_some() || r.bearer_token_file.is_some()))
                {
                    err(
                        &at("headers"),
                        format!("header {h:?} is set by tallyd and cannot be configured"),
                    );
                } else if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    err(&at("headers"), format!("{h:?} is not a valid header name"));
                }
            }
            for (h, v) in &r.headers {
                if hyper::header::HeaderValue::from_str(v).is_err() {
                    err(
                        &at("headers"),
                        format!("the value of {h:?} is not a valid header value"),
                    );
                }
            }
            for (k, v) in &r.external_labels {
                if k.is_empty() || crate::naming::label_name(k) != *k || k.starts_with("__") {
                    err(
                        &at("external_labels"),
                        format!(
                            "{k:?} is not a label name tallyd may add (letters, digits and `_`, not starting with a digit or `__`)"
                        ),
                    );
                }
                if v.is_empty() {
                    err(&at("external_labels"), format!("{k:?} has an empty value"));
                }
            }
        }
    }

    /// Checks that span several keys, or the world outside the file (they cannot fail while
    /// deserialising one value): every failure, each at its key.
    fn validate(&self, tree: &check::Tree<'_>) -> Vec<ConfigError> {
        use check::Step::{Index, Key};
        let mut errors = Vec::new();
        let mut err = |path: &[check::Step<'_>], message: String| {
            errors.push(tree.error(path, message));
        };
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.udp.iter().enumerate() {
            if u.batch == 0 || u.batch > 1024 {
                err(
                    &[Key("udp"), Index(i), Key("batch")],
                    "must be between 1 and 1024".into(),
                );
            }
            if u.max_datagram_size == 0 || u.max_datagram_size > 65536 {
                err(
                    &[Key("udp"), Index(i), Key("max_datagram_size")],
                    "must be between 1 and 64KiB".into(),
                );
            }
            if u.listen.port() != 0 && !seen.insert(u.listen) {
                err(
                    &[Key("udp"), Index(i), Key("listen")],
                    format!("{} is listed twice", u.listen),
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tcp.iter().enumerate() {
            if t.listen.port() != 0 && !seen.insert(t.listen) {
                err(
                    &[Key("tcp"), Index(i), Key("listen")],
                    format!("{} is listed twice", t.listen),
                );
            }
            if t.listen.port() != 0 && t.listen == self.http.listen {
                err(
                    &[Key("tcp"), Index(i), Key("listen")],
                    format!(
                        "{} is also [http] listen: one address, one listener",
                        t.listen
                    ),
                );
            }
            if t.max_connections == 0 {
                err(
                    &[Key("tcp"), Index(i), Key("max_connections")],
                    "must be at least 1".into(),
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.unixgram.iter().enumerate() {
            let at = [Key("unixgram"), Index(i), Key("path")];
            if !seen.insert(&u.path) {
                err(&at, format!("{} is listed twice", u.path.display()));
            }
            let len = u.path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                err(
                    &at,
                    format!(
                        "the path is {len} bytes; a Unix socket path holds at most {}",
                        MAX_SOCKET_PATH
                    ),
                );
            }
            // tallyd creates the socket, never the directory it goes in.
            match u.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) if !dir.is_dir() => err(
                    &at,
                    format!(
                        "the directory {} does not exist; tallyd does not create it",
                        dir.display()
                    ),
                ),
                _ => {}
            }
        }
        self.validate_remote_write(&mut err);
        if let Some(r) = &self.relay {
            let at = |k: &'static str| [Key("relay"), Key(k)];
            let port_ok = r.address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                err(
                    &at("address"),
                    format!(
                        "{:?} is not host:port (e.g. \"127.0.0.1:9125\" or \"statsd.example.net:8125\")",
                        r.address
                    ),
                );
            }
            if r.max_datagram_size == 0 || r.max_datagram_size > 65507 {
                err(
                    &at("max_datagram_size"),
                    "must be between 1 and 65507 bytes".into(),
                );
            }
            if r.queue == 0 {
                err(&at("queue"), "must be at least 1".into());
            }
        }
        if self.limits.max_series == 0 {
            err(
                &[Key("limits"), Key("max_series")],
                "must be at least 1".into(),
            );
        }
        match (&self.http.tls_cert_file, &self.http.tls_key_file) {
            (Some(_), None) => err(
                &[Key("http"), Key("tls_cert_file")],
                "tls_key_file is missing: the two go together".into(),
            ),
            (None, Some(_)) => err(
                &[Key("http"), Key("tls_key_file")],
                "tls_cert_file is missing: the two go together".into(),
            ),
            (Some(c), Some(k)) => {
                for (key, file) in [("tls_cert_file", c), ("tls_key_file", k)] {
                    if let Err(e) = std::fs::File::open(file) {
                        err(
                            &[Key("http"), Key(key)],
                            format!("cannot read {}: {e}", file.display()),
                        );
                    }
                }
            }
            (None, None) => {}
        }
        let mp = &self.http.metrics_path;
        if !mp.starts_with('/') || mp.contains(['?', '#', ' ']) || OWN_PATHS.contains(&mp.as_str())
        {
            err(
                &[Key("http"), Key("metrics_path")],
                format!(
                    "{mp:?}: a path starting with `/`, without `?`, `#` or spaces, and not one \
                     of tallyd's own ({})",
                    OWN_PATHS.join(", ")
                ),
            );
        }
        if self.http.max_connections == 0 {
            err(
                &[Key("http"), Key("max_connections")],
                "must be at least 1".into(),
            );
        }
        for (key, d) in [
            ("header_read_timeout", self.http.header_read_timeout),
            ("write_timeout", self.http.write_timeout),
        ] {
            if d < Duration::from_millis(100) {
                err(&[Key("http"), Key(key)], "must be at least 100ms".into());
            }
        }
        if self.defaults.set_window < Duration::from_secs(1) {
            err(
                &[Key("defaults"), Key("set_window")],
                "must be at least 1s".into(),
            );
        }
        let d = &self.defaults;
        for (key, bad) in [
            (
                "native_bucket_factor",
                mapping::check_native(Some(d.native_bucket_factor), None).err(),
            ),
            (
                "native_max_buckets",
                mapping::check_native(None, Some(d.native_max_buckets)).err(),
            ),
        ] {
            if let Some(m) = bad {
                err(&[Key("defaults"), Key(key)], m);
            }
        }
        let z = d.native_zero_threshold;
        if !(z.is_finite() && z >= 0.0) {
            err(
                &[Key("defaults"), Key("native_zero_threshold")],
                "must be a finite number, at least 0".into(),
            );
        }
        if self
            .defaults
            .window
            .is_some_and(|w| w < Duration::from_secs(2))
        {
            err(
                &[Key("defaults"), Key("window")],
                "a summary window must be at least 2s".into(),
            );
        }
        let dd = &self.dogstatsd;
        for (key, name) in [
            ("events_family", &dd.events_family),
            ("service_checks_family", &dd.service_checks_family),
        ] {
            if name.is_empty() || crate::naming::metric_name(name) != *name {
                err(
                    &[Key("dogstatsd"), Key(key)],
                    format!("{name:?} is not a Prometheus metric name"),
                );
            } else if name.starts_with(crate::naming::RESERVED_PREFIX) {
                err(
                    &[Key("dogstatsd"), Key(key)],
                    "tallyd_* names are tallyd's own metrics".into(),
                );
            }
        }
        if !dd.events_family.ends_with("_total") {
            err(
                &[Key("dogstatsd"), Key("events_family")],
                "a counter's name must end in _total".into(),
            );
        }
        if dd.events_family == dd.service_checks_family {
            err(
                &[Key("dogstatsd"), Key("service_checks_family")],
                "must differ from events_family".into(),
            );
        }
        errors
    }

    /// True if the ingest listeners differ (they are re-bound on reload).
    pub fn listeners_differ(&self, other: &Config) -> bool {
        self.udp != other.udp || self.tcp != other.tcp || self.unixgram != other.unixgram
    }

    /// True if `[http]` settings that only take effect at start differ (address, TLS,
    /// connection limits). `enable_lifecycle` and `basic_auth_users` apply live.
    pub fn http_differs(&self, other: &Config) -> bool {
        let (a, b) = (&self.http, &other.http);
        a.listen != b.listen
            || a.tls_cert_file != b.tls_cert_file
            || a.tls_key_file != b.tls_key_file
            || a.max_connections != b.max_connections
            || a.header_read_timeout != b.header_read_timeout
            || a.write_timeout != b.write_timeout
    }
}

/// The largest config file tallyd reads. A larger one is refused whole, never read in part.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a config file's text; an unreadable file is an error not tied to a line.
///
/// Only a regular file (a symlink to one included) of at most [`MAX_CONFIG_BYTES`] is read.
/// The file is opened without blocking, so a FIFO or a device at the path is refused at once
/// instead of wedging the caller, and the read stops one byte past the limit whatever the file
/// claims its size is (`/dev/zero` is refused, not read until memory runs out).
pub fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |message: String| ConfigError {
        line: 0,
        column: 0,
        key: None,
        message: format!("cannot read {}: {message}", path.display()),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(fail(format!("larger than {} MiB", MAX_CONFIG_BYTES >> 20)));
    }
    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))
}

/// Warnings about who else can change the config file at `path`: the file writable by every
/// user, or its directory writable by every user without the sticky bit (anyone could then
/// replace the file). Either lets any local user change what tallyd does at the next reload.
pub fn permission_warnings(path: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o002 != 0
    {
        out.push(format!(
            "{} is writable by every user (mode 0{:o}): anyone on the host can change tallyd's \
             config; chmod o-w it",
            path.display(),
            m.permissions().mode() & 0o7777
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if let Ok(m) = std::fs::metadata(dir)
        && m.permissions().mode() & 0o1002 == 0o002
    {
        out.push(format!(
            "the directory {} is writable by every user (mode 0{:o}): anyone on the host can \
             replace tallyd's config file",
            dir.display(),
            m.permissions().mode() & 0o7777
        ));
    }
    out
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Turns a toml error into a located [`ConfigError`] naming its key.
fn locate(text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let (line, column) = line_col(text, offset);
    let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .or_else(|| {
            // "unknown field `x`" errors point at the table; name the field.
            let m = e.message();
            (m.starts_with("unknown field")
                || m.starts_with("missing field")
                || m.starts_with("duplicate"))
            .then(|| m.split('`').nth(1).map(str::to_string))
            .flatten()
        });
    ConfigError {
        line: if e.span().is_some() { line } else { 0 },
        column,
        key,
        message: e.message().trim().to_string(),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"0s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. \"500ms\", \"10s\", \"5m\""))
}

/// A bcrypt password hash, checked while deserialising so an error points at the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcryptHash(pub String);

impl<'de> Deserialize<'de> for BcryptHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hash = String::deserialize(d)?;
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(serde::de::Error::custom(
                "must be a bcrypt hash (e.g. from `htpasswd -nbBC 10 user pass`), not a plain password",
            ));
        }
        Ok(Self(hash))
    }
}

fn bcrypt_users<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let users = std::collections::BTreeMap::<String, BcryptHash>::deserialize(d)?;
    if let Some(user) = users.keys().find(|u| u.is_empty() || u.contains(':')) {
        return Err(serde::de::Error::custom(format!(
            "invalid user name {user:?}"
        )));
    }
    Ok(users.into_iter().map(|(u, h)| (u, h.0)).collect())
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Int(u64),
        Str(String),
    }
    match Size::deserialize(d)? {
        Size::Int(n) => Ok(n),
        Size::Str(s) => s
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?} ({e}); use e.g. \"512KiB\", \"8MiB\""
                ))
            }),
    }
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A file mode: an octal string (`"0660"`) or a TOML integer, written in octal (`0o660`).
/// Errors show the value in octal, as modes are read.
fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Int(i64),
        Str(String),
    }
    match Mode::deserialize(d)? {
        Mode::Str(s) => match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => Err(serde::de::Error::custom(format!(
                "invalid file mode {s:?}; write it in octal, like \"0660\" or 0o660"
            ))),
        },
        Mode::Int(n) => match u32::try_from(n) {
            Ok(m) if m <= 0o777 => Ok(m),
            Ok(m) => Err(serde::de::Error::custom(format!(
                "invalid file mode 0o{m:o} (decimal {m}); a mode is at most 0o777: write it in \
                 octal, like \"0660\" or 0o660"
            ))),
            Err(_) => Err(serde::de::Error::custom(format!(
                "invalid file mode {n}; write it in octal, like \"0660\" or 0o660"
            ))),
        },
    }
}

/// Bucket bounds: non-empty, finite, strictly increasing.
pub(crate) fn buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let b = Vec::<f64>::deserialize(d)?;
    check_buckets(&b).map_err(serde::de::Error::custom)?;
    Ok(b)
}

pub(crate) fn check_buckets(b: &[f64]) -> Result<(), String> {
    if b.is_empty() {
        return Err("buckets must not be empty".into());
    }
    if b.iter().any(|v| !v.is_finite()) {
        return Err("buckets must be finite numbers (+Inf is implied)".into());
    }
    if b.windows(2).any(|w| w[0] >= w[1]) {
        return Err("buckets must be strictly increasing".into());
    }
    if b.len() > 64 {
        return Err("at most 64 buckets".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_key_line_and_column() {
        let e = Config::from_toml("[http]\nlisten = \"nope\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.column, e.key.as_deref()),
            (2, 10, Some("http.listen"))
        );
        let e = Config::from_toml("[limits]\nmax_series = 5\nbogus = 1\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (3, Some("limits.bogus")));
        assert!(e.message.contains("unknown field"), "{e}");
        let e = Config::from_toml("[defaults]\nttl = \"10 parsecs\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (2, Some("defaults.ttl")));
        let e = Config::from_toml("[defaults]\ntimer_buckets = [1, 0.5]\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (2, Some("defaults.timer_buckets"))
        );
        let e = Config::from_toml("[http\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e =
            Config::from_toml("[[udp]]\nlisten=\"127.0.0.1:1\"\n[[udp]]\nlisten=\"127.0.0.1:1\"\n")
                .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (4, Some("udp[1].listen")),
            "{e}"
        );
    }

    /// Every error of a file in one run, each at its own key, in file order: one bad key does
    /// not hide the next, nor a check that spans keys.
    #[test]
    fn every_error_in_one_run() {
        let text = "[http]\nmax_connections = \"lots\"\n[defaults]\nttl = 5\n[limits]\n\
                    max_series = -1\n[[udp]]\nbatch = 0\n[[tcp]]\nlisten = \"127.0.0.1:9102\"\n";
        let errors = Config::check(text).unwrap_err();
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.line, e.key.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "http.max_connections"),
                (4, "defaults.ttl"),
                (6, "limits.max_series"),
                (8, "udp[0].batch"),
                (10, "tcp[0].listen"),
            ],
            "{errors:?}"
        );
        // `[udp]` for `[[udp]]` names the key and says what to write.
        let e = Config::from_toml("[udp]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.message.contains("[[udp]]"), "{e}");
        // A host name where an address goes: a hint.
        let e = Config::from_toml("[[udp]]\nlisten = \"localhost:18125\"\n").unwrap_err();
        assert!(e.message.contains("127.0.0.1:8125"), "{e}");
        assert_eq!(e.key.as_deref(), Some("udp[0].listen"));
    }

    #[test]
    fn sizes_and_durations() {
        let c = Config::from_toml(
            "[[udp]]\nrecv_buffer = \"512KiB\"\n[defaults]\nttl = \"5m\"\nset_window=\"500ms\"\n",
        );
        assert!(c.is_err());
        let c = Config::from_toml("[[udp]]\nrecv_buffer = \"512KiB\"\n[defaults]\nttl = \"5m\"\n")
            .unwrap();
        assert_eq!(c.udp[0].recv_buffer, 512 * 1024);
        assert_eq!(c.defaults.ttl, Duration::from_secs(300));
        assert!(Config::from_toml("udp = []\n").unwrap().udp.is_empty());
    }
}
