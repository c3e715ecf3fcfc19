//! Prometheus remote write: every `[[remote_write]]` endpoint gets the current state pushed
//! every `interval`, as Prometheus itself sends to Mimir, Thanos Receive, VictoriaMetrics,
//! Cortex or a Prometheus with its remote-write receiver.
//!
//! - [`proto`]: the protocol's messages (prost);
//! - [`encode`]: a push's series cut into snappy-compressed requests;
//! - this module: per endpoint, a producer that reads the store every `interval` (and once
//!   more at stop) into requests, a bounded queue of requests (the oldest dropped first, and
//!   any older than `max_pending_age`, each counted), and a consumer that sends them in
//!   order, one at a time, retrying as Prometheus does.
//!
//! # Why nothing is lost
//! tallyd's series are cumulative: every push carries each series' total, so after an outage
//! the first push that gets through carries exact totals; the queued pushes fill in the points
//! between, as far as the queue allows. A series that expires (`ttl`) gets a staleness marker
//! in the next push, so the receiver ends it at once. At stop (SIGTERM) one last push is made
//! and the queue drained within the endpoint's `timeout`, so a planned restart loses no count.
//!
//! # Failures
//! 2xx: sent. 429, 5xx, a connection error or a timeout: the same request is tried again
//! after an exponential backoff with jitter (`min_backoff` doubled up to `max_backoff`), or
//! after the `Retry-After` the receiver asked for. Any other 4xx (or a redirect, which tallyd
//! does not follow): the request is dropped and counted (it would never succeed). Nothing here runs on an ingest thread, and each endpoint
//! has its own tasks, so a slow or dead endpoint slows neither ingest, nor scrapes, nor another
//! endpoint.

pub mod encode;
pub mod proto;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Notify, watch};

use crate::config::RemoteWrite;
use crate::config::live::Live;
use crate::store::Store;
use crate::sync::lock;
use crate::telemetry::Telemetry;
use encode::{Batcher, Request};

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The longest a stop waits for an endpoint's last push, whatever its `timeout`: well within
/// systemd's default stop timeout (90 s).
pub const FINAL_PUSH_MAX: Duration = Duration::from_secs(30);

/// The longest `Retry-After` tallyd honours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A request waiting to be sent.
struct Pending {
    req: Request,
    made: Instant,
}

/// What the producer and the consumer of one endpoint share.
struct Queue {
    pending: Mutex<VecDeque<Pending>>,
    ready: Notify,
}

/// What an endpoint's tasks need.
struct Ctx {
    name: String,
    cfg: RemoteWrite,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    live: Arc<Live>,
    client: HttpClient,
    uri: hyper::Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    external: Vec<(String, String)>,
    queue: Queue,
}

/// A running endpoint.
pub struct Endpoint {
    /// Its config section (a reload compares it).
    pub cfg: RemoteWrite,
    ctx: Arc<Ctx>,
    /// Tells the producer to stop (true: after one last push).
    stop: watch::Sender<bool>,
    /// Tells the consumer to return once the queue is empty.
    drain: watch::Sender<bool>,
    producer: tokio::task::JoinHandle<()>,
    consumer: tokio::task::JoinHandle<()>,
}

/// Starts pushing to the endpoint `cfg` describes: reads its secret files and TLS material
/// (an error names what could not be read), then starts its tasks on the current runtime.
pub fn start(
    cfg: &RemoteWrite,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    live: Arc<Live>,
) -> Result<Endpoint, String> {
    let name = cfg.endpoint();
    let uri: hyper::Uri = cfg
        .url
        .parse()
        .map_err(|e| format!("invalid url {:?}: {e}", cfg.url))?;
    let client = client(cfg)?;
    let headers = headers(cfg)?;
    let ctx = Arc::new(Ctx {
        name: name.clone(),
        cfg: cfg.clone(),
        store,
        external: cfg
            .external_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        telemetry,
        live,
        client,
        uri,
        headers,
        queue: Queue {
            pending: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        },
    });
    let m = &ctx.telemetry.remote;
    m.queue_length.with_label_values(&[&name]).set(0);
    m.samples_sent.with_label_values(&[&name]);
    m.requests_sent.with_label_values(&[&name]);
    m.retries.with_label_values(&[&name]);
    let (stop, stop_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let producer = tokio::spawn(produce(ctx.clone(), stop_rx));
    let consumer = tokio::spawn(consume(ctx.clone(), drain_rx));
    tracing::info!(endpoint = %name, url = %cfg.url, interval = ?cfg.interval, "remote write started");
    Ok(Endpoint {
        cfg: cfg.clone(),
        ctx,
        stop,
        drain,
        producer,
        consumer,
    })
}

impl Endpoint {
    /// The `endpoint` label.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// Stops: with `final_push`, one last push and the queue drained, both within the
    /// endpoint's `timeout` (at most [`FINAL_PUSH_MAX`]); what is left unsent is counted
    /// (`shutdown`).
    pub async fn stop(self, final_push: bool) {
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.timeout.min(FINAL_PUSH_MAX);
        let _ = self.stop.send(final_push);
        let _ = tokio::time::timeout_at(deadline, self.producer).await;
        if final_push {
            let _ = self.drain.send(true);
            let mut consumer = self.consumer;
            if tokio::time::timeout_at(deadline, &mut consumer)
                .await
                .is_err()
            {
                consumer.abort();
            }
        } else {
            self.consumer.abort();
        }
        let left: Vec<Pending> = lock(&self.ctx.queue.pending).drain(..).collect();
        for p in left {
            self.ctx.dropped("shutdown", p.req.samples);
        }
        self.ctx
            .telemetry
            .remote
            .queue_length
            .with_label_values(&[&self.ctx.name])
            .set(0);
        tracing::info!(endpoint = %self.ctx.name, "remote write stopped");
    }
}

/// Pushes every `interval`, and once more when stopped with a final push.
async fn produce(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let every = ctx.cfg.interval;
    let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = ctx.store.want_departures();
    loop {
        let last = tokio::select! {
            _ = iv.tick() => false,
            _ = stop.changed() => true,
        };
        if last && !*stop.borrow() {
            return;
        }
        let c = ctx.clone();
        let from = cursor;
        match tokio::task::spawn_blocking(move || c.snapshot(from)).await {
            Ok((requests, next)) => {
                cursor = next;
                ctx.enqueue(requests);
            }
            Err(e) => tracing::error!(endpoint = %ctx.name, error = %e, "remote write push failed"),
        }
        if last {
            return;
        }
    }
}

/// Sends the queue in order, one request at a time. Once `drain` is set (the producer has
/// made its last push), returns when the queue is empty.
async fn consume(ctx: Arc<Ctx>, mut drain: watch::Receiver<bool>) {
    loop {
        let next = lock(&ctx.queue.pending).pop_front();
        ctx.set_queue_length();
        let Some(p) = next else {
            if *drain.borrow() {
                return;
            }
            tokio::select! {
                _ = ctx.queue.ready.notified() => {}
                _ = drain.changed() => {}
            }
            continue;
        };
        ctx.send(p).await;
    }
}

impl Ctx {
    fn set_queue_length(&self) {
        let n = lock(&self.queue.pending).len();
        self.telemetry
            .remote
            .queue_length
            .with_label_values(&[&self.name])
            .set(n as i64);
    }

    fn dropped(&self, reason: &str, samples: u64) {
        let m = &self.telemetry.remote;
        m.requests_dropped
            .with_label_values(&[&self.name, reason])
            .inc();
        m.samples_dropped
            .with_label_values(&[&self.name, reason])
            .inc_by(samples);
    }

    /// Reads the state into requests: staleness markers for the series that departed since
    /// `from`, the store's series and tallyd's own metrics, all at one timestamp taken when
    /// the read began. Returns the requests and where the next read of departures starts.
    fn snapshot(&self, from: u64) -> (Vec<Request>, u64) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let set_window = self.live.load().config.defaults.set_window;
        let mut b = Batcher::new(at_ms, &self.external, self.cfg.max_samples_per_request);
        let (gone, next, missed) = self.store.departures_since(from);
        if missed > 0 {
            tracing::warn!(
                endpoint = %self.name,
                missed,
                "more series expired between two pushes than tallyd remembers; their \
                 staleness markers are not sent (the receiver ends them after 5 minutes)"
            );
        }
        // A series that came back since it departed is in this push with a value.
        let gone: Vec<_> = gone
            .into_iter()
            .filter(|d| !self.store.exports(&d.family, &d.labels))
            .collect();
        b.stale(&gone);
        b.store(&self.store, set_window);
        b.own(&self.telemetry.registry.gather());
        (b.finish(), next)
    }

    /// Queues a push's requests, dropping the oldest past `max_pending_requests`.
    fn enqueue(&self, requests: Vec<Request>) {
        let now = Instant::now();
        let mut dropped = Vec::new();
        {
            let mut q = lock(&self.queue.pending);
            for req in requests {
                if q.len() >= self.cfg.max_pending_requests
                    && let Some(old) = q.pop_front()
                {
                    dropped.push(old.req.samples);
                }
                q.push_back(Pending { req, made: now });
            }
        }
        for samples in dropped {
            self.dropped("queue_full", samples);
        }
        self.set_queue_length();
        self.queue.ready.notify_one();
    }

    /// Sends one request until it is accepted, refused for good, or too old.
    async fn send(&self, p: Pending) {
        let m = &self.telemetry.remote;
        let name = self.name.as_str();
        let mut backoff = self.cfg.min_backoff;
        let mut first = true;
        loop {
            if p.made.elapsed() > self.cfg.max_pending_age {
                self.dropped("too_old", p.req.samples);
                return;
            }
            if !first {
                m.retries.with_label_values(&[name]).inc();
            }
            first = false;
            let started = Instant::now();
            let outcome = self.attempt(&p.req.body).await;
            m.duration
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            let wait = match outcome {
                Attempt::Accepted => {
                    m.samples_sent
                        .with_label_values(&[name])
                        .inc_by(p.req.samples);
                    m.requests_sent.with_label_values(&[name]).inc();
                    m.last_success
                        .with_label_values(&[name])
                        .set(crate::telemetry::unix_now());
                    return;
                }
                Attempt::Refused(reason, status, body) => {
                    m.requests_failed.with_label_values(&[name, reason]).inc();
                    self.dropped("rejected", p.req.samples);
                    tracing::error!(
                        endpoint = name,
                        status = status.as_u16(),
                        reply = %body,
                        samples = p.req.samples,
                        "remote write request refused; dropped (it would never succeed)"
                    );
                    return;
                }
                Attempt::Retry(reason, retry_after) => {
                    m.requests_failed.with_label_values(&[name, reason]).inc();
                    let wait = retry_after.unwrap_or_else(|| jitter(backoff));
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                    tracing::debug!(endpoint = name, reason, wait = ?wait, "remote write will retry");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One POST of `body`.
    async fn attempt(&self, body: &Bytes) -> Attempt {
        let mut req = hyper::Request::post(self.uri.clone())
            .body(Full::new(body.clone()))
            .expect("a request from a parsed URI");
        let h = req.headers_mut();
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            // Read (a bounded part of) the reply so the connection can be reused.
            let body = http_body_util::Limited::new(resp.into_body(), 4096)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, body))
        };
        match tokio::time::timeout(self.cfg.timeout, call).await {
            Err(_) => Attempt::Retry("timeout", None),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %self.name, error = %e, "remote write connection failed");
                Attempt::Retry("connection", None)
            }
            Ok(Ok((status, retry_after, body))) => {
                if status.is_success() {
                    Attempt::Accepted
                } else if status == hyper::StatusCode::TOO_MANY_REQUESTS {
                    Attempt::Retry("http_429", retry_after)
                } else if status.is_server_error() {
                    Attempt::Retry("http_5xx", retry_after)
                } else {
                    let reason = if status.is_client_error() {
                        "http_4xx"
                    } else {
                        "http_other"
                    };
                    Attempt::Refused(reason, status, body)
                }
            }
        }
    }
}

/// How an attempt ended.
enum Attempt {
    Accepted,
    /// A 4xx other than 429, or a status that is neither success nor error (a redirect):
    /// never retried. The reason label, the status, the reply.
    Refused(&'static str, hyper::StatusCode, String),
    /// Retried: the reason label, and the wait the receiver asked for.
    Retry(&'static str, Option<Duration>),
}

/// A `Retry-After` value: seconds, or an HTTP date; at most [`MAX_RETRY_AFTER`].
fn retry_after(v: &str) -> Option<Duration> {
    let wait = match v.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v.trim())
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `d` scaled by a random factor in [0.5, 1): retries of many senders spread out.
fn jitter(d: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    let r = foldhash::fast::RandomState::default().hash_one(Instant::now());
    let f = 0.5 + (r % 1000) as f64 / 2000.0;
    d.mul_f64(f)
}

/// The headers of every request: the protocol's, the section's, and its auth.
fn headers(cfg: &RemoteWrite) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut h = vec![
        (
            hyper::header::CONTENT_ENCODING,
            HeaderValue::from_static("snappy"),
        ),
        (
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        ),
        (
            HeaderName::from_static("x-prometheus-remote-write-version"),
            HeaderValue::from_static("0.1.0"),
        ),
        (
            hyper::header::USER_AGENT,
            HeaderValue::from_static(concat!("tallyd/", env!("CARGO_PKG_VERSION"))),
        ),
    ];
    for (k, v) in &cfg.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
        h.push((name, value));
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().next().unwrap_or("").to_string())
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let auth = if let Some(b) = &cfg.basic_auth {
        use base64::Engine as _;
        let pass = read(&b.password_file)?;
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{pass}", b.username))
        ))
    } else if let Some(f) = &cfg.bearer_token_file {
        Some(format!("Bearer {}", read(f)?))
    } else {
        None
    };
    if let Some(a) = auth {
        let mut v = HeaderValue::from_str(&a).map_err(|e| format!("credentials: {e}"))?;
        v.set_sensitive(true);
        h.push((hyper::header::AUTHORIZATION, v));
    }
    Ok(h)
}

/// The endpoint's HTTP client: HTTP/1.1, HTTPS with rustls (the system's roots, or the
/// section's CA file; a client certificate if set; verification on unless turned off).
fn client(cfg: &RemoteWrite) -> Result<HttpClient, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if cfg.tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.tls.ca_file {
            Some(ca) => {
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("cannot read {}: {e}", ca.display()))?
                {
                    let c =
                        c.map_err(|e| format!("invalid certificate in {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("invalid certificate in {}: {e}", ca.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        builder.with_root_certificates(roots)
    };
    let tls = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("invalid certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate and key do not fit: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

/// `insecure_skip_verify`: accepts any certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerify(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_a_date_capped() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1000));
        }
    }
}
