//! The HTTP endpoint (hyper 1.x, HTTP/1.1): `GET /metrics`, `GET /` (the status page),
//! `GET /api/v1/status`, `GET /-/healthy`, `GET /-/ready`, `POST /-/reload`.
//!
//! Hardened for an endpoint that anyone on the host can reach: a header-read timeout, a write
//! timeout, a cap on concurrent connections that sheds idle and stalled clients before a new
//! one waits ([`super::conn`]), request bodies never read, only the methods each path serves
//! (405 otherwise), basic auth whose cost is bounded ([`super::auth`]). `/metrics` is
//! gzip-compressed (level fast) when the client accepts it, and rendered on a blocking thread
//! so the async workers stay responsive during a large scrape. A response that cannot be
//! finished ends the connection without its terminating chunk, so the client sees an error.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::auth::{Auth, Verdict};
use super::conn::{Conn, Table, Tracked};

use crate::config::live::Live;
use crate::ready::Readiness;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// A reload asked for over HTTP; the answer is the outcome text.
pub type ReloadReply = oneshot::Sender<Result<String, String>>;

/// What the daemon's control loop is asked to do.
pub enum Control {
    /// Read the config file now and reload it (SIGHUP, `POST /-/reload`).
    Reload {
        /// Where the outcome goes.
        reply: Option<ReloadReply>,
        /// What asked: `sighup` or `http` (the status page shows it).
        by: &'static str,
    },
    /// The file watcher saw the config file settle: its text, or why it could not be read.
    FileSettled(Result<String, crate::config::ConfigError>),
    /// Stop: close listeners, drain, answer.
    Shutdown(oneshot::Sender<()>),
}

/// Everything the endpoints read.
pub struct State {
    /// The aggregates.
    pub store: Arc<Store>,
    /// tallyd's own metrics.
    pub telemetry: Arc<Telemetry>,
    /// The live config.
    pub live: Arc<Live>,
    /// `/-/ready`.
    pub ready: Arc<Readiness>,
    /// Where `POST /-/reload` sends its request.
    pub control: mpsc::Sender<Control>,
    /// Basic-auth state.
    pub auth: Auth,
    /// Called before each scrape (reads kernel drop counters from the sockets).
    pub before_scrape: Box<dyn Fn() + Send + Sync>,
    /// The configured listeners, for the status page.
    pub listeners: Box<dyn Fn() -> Vec<super::status::ListenerRef> + Send + Sync>,
}

/// Why a body ended early.
type BodyError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BodyError>;

/// How long the render thread waits for the connection to take a chunk before it gives up: a
/// backstop (the write timeout ends a stalled connection first, and the render sees it gone).
pub const RESPONSE_STALL_TIMEOUT: Duration = Duration::from_secs(300);

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Serves one request of `conn`; the response holds `conn`'s response guard until its body is
/// done.
async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let guard = conn.begin_response();
    let r = respond(&state, req).await;
    let (parts, body) = r.into_parts();
    // The closure owns the guard, so the guard lives exactly as long as the body.
    let body = body.map_err(move |e| {
        let _ = &guard;
        e
    });
    Ok(Response::from_parts(parts, body.boxed()))
}

async fn respond(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    // `[http] metrics_path` is served as `/metrics`; `/metrics` itself only when it is that.
    let path = match req.uri().path() {
        p if p == state.live.load().config.http.metrics_path => "/metrics",
        "/metrics" => "",
        p => p,
    };
    if matches!(path, "/metrics" | "/-/reload" | "/" | "/api/v1/status") {
        let users = &state.live.load().config.http.basic_auth_users;
        match state
            .auth
            .check(users, req.headers().get(hyper::header::AUTHORIZATION))
            .await
        {
            Verdict::Allowed => {}
            Verdict::Denied => {
                state.telemetry.auth_failures[0].inc();
                return unauthorized();
            }
            Verdict::Busy => {
                state.telemetry.auth_failures[1].inc();
                let mut r = text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many authentication attempts in progress; try again\n",
                );
                r.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    match path {
        "/metrics" if get => metrics(state, &req).await,
        "/-/healthy" if get => text(StatusCode::OK, "OK\n"),
        "/-/ready" if get => {
            if state.ready.is_ready() {
                text(StatusCode::OK, "Ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n")
            }
        }
        "/metrics" | "/-/healthy" | "/-/ready" => method_not_allowed("GET, HEAD"),
        "/-/reload" if req.method() == Method::POST => {
            if !state.live.load().config.http.enable_lifecycle {
                return text(
                    StatusCode::FORBIDDEN,
                    "lifecycle endpoints are disabled; set [http] enable_lifecycle = true\n",
                );
            }
            let (tx, rx) = oneshot::channel();
            if state
                .control
                .send(Control::Reload {
                    reply: Some(tx),
                    by: "http",
                })
                .await
                .is_err()
            {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match rx.await {
                Ok(Ok(msg)) => text(StatusCode::OK, format!("{msg}\n")),
                Ok(Err(msg)) => text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        "/-/reload" => method_not_allowed("POST"),
        "/" | "/api/v1/status" if get => status_page(state, &req).await,
        "/" | "/api/v1/status" => method_not_allowed("GET, HEAD"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /` (the status page) and `GET /api/v1/status` (its data as JSON), read on a blocking
/// thread: the census walks the store like a scrape ([`super::status`]).
async fn status_page(state: &Arc<State>, req: &Request<Incoming>) -> Response<Body> {
    let page = req.uri().path() == "/";
    let headers = |mut r: Response<Body>| {
        let h = r.headers_mut();
        if page {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(&super::status::content_security_policy()) {
                h.insert(hyper::header::CONTENT_SECURITY_POLICY, v);
            }
        } else {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        h.insert(
            hyper::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        r
    };
    if req.method() == Method::HEAD {
        return headers(Response::new(full(Bytes::new())));
    }
    let st = state.clone();
    let built = tokio::task::spawn_blocking(move || {
        (st.before_scrape)();
        let snap = st.live.load();
        st.telemetry
            .series_limit
            .set(snap.config.limits.max_series as i64);
        super::status::Status::build(&st.store, &st.telemetry, &snap.config, (st.listeners)())
    })
    .await;
    let Ok(status) = built else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the status could not be read\n",
        );
    };
    let body = if page {
        super::status::html(&status)
    } else {
        match serde_json::to_string_pretty(&status) {
            Ok(j) => j + "\n",
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the status could not be serialised: {e}\n"),
                );
            }
        }
    };
    headers(Response::new(full(body)))
}

/// The streamed `/metrics` body: the render thread's chunks, in order. It ends only once the
/// render thread has dropped its sender *and* every chunk it sent has been read (tokio's
/// `mpsc::Receiver::poll_recv` guarantees both). `http_body_util::channel::Channel` does not:
/// it polls its frame queue, then its error oneshot, and if the sender sends its last chunks
/// and is dropped between those two polls it ends the body with the chunks still queued, so a
/// scrape came back 200 with an empty or truncated exposition.
///
/// The render thread sets `complete` before it drops its sender, only if it rendered
/// everything: a body whose channel ends without it fails instead of ending, and hyper then
/// closes the connection without the terminating chunk, so the client sees a cut response as
/// an error, never as a complete scrape.
struct ChunkBody {
    rx: mpsc::Receiver<Bytes>,
    complete: Arc<AtomicBool>,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        self.rx.poll_recv(cx).map(|chunk| match chunk {
            Some(b) => Some(Ok(hyper::body::Frame::data(b))),
            None if self.complete.load(Ordering::Acquire) => None,
            None => Some(Err("the scrape could not be rendered whole".into())),
        })
    }
}

/// True if an `Accept-Encoding` value accepts gzip: `gzip` (or `x-gzip`, or else `*`) with a
/// q-value above 0 (RFC 9110: `gzip;q=0` refuses it).
fn accepts_gzip(header: &str) -> bool {
    let (mut gzip, mut any) = (None, None);
    for item in header.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .map_or(1.0, |v| v.parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

async fn metrics(state: &Arc<State>, req: &Request<Incoming>) -> Response<Body> {
    let gzip = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    let exporter_names =
        state.live.load().config.defaults.naming == crate::config::Naming::StatsdExporter;
    let format = super::format::negotiate(
        req.headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
        !exporter_names,
    );
    let headers = |mut r: Response<Body>| {
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        r.headers_mut().insert(
            hyper::header::VARY,
            HeaderValue::from_static("Accept, Accept-Encoding"),
        );
        if gzip {
            r.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    if req.method() == Method::HEAD {
        // The headers a GET would get; nothing rendered, nothing counted.
        return headers(Response::new(full(Bytes::new())));
    }
    // The body streams from a blocking thread through a small channel: the scrape's memory is
    // a few chunks, and a slow client stalls only its own render (the registry lock is held
    // for one chunk at a time, never while waiting for the client).
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let complete = Arc::new(AtomicBool::new(false));
    let body = ChunkBody {
        rx,
        complete: complete.clone(),
    };
    let st = state.clone();
    let rt = tokio::runtime::Handle::current();
    state.telemetry.scrapes[format as usize].inc();
    tokio::task::spawn_blocking(move || {
        (st.before_scrape)();
        let snap = st.live.load();
        st.telemetry
            .series_limit
            .set(snap.config.limits.max_series as i64);
        let window = snap.config.defaults.set_window;
        let mut gz = gzip.then(|| {
            flate2::write::GzEncoder::new(
                Vec::with_capacity(64 * 1024),
                flate2::Compression::fast(),
            )
        });
        // A client that stops reading gets cut off instead of pinning this thread forever.
        let send = |bytes: Bytes| {
            rt.block_on(async {
                tokio::time::timeout(RESPONSE_STALL_TIMEOUT, tx.send(bytes)).await
            })
            .is_ok_and(|r| r.is_ok())
        };
        let mut ok = true;
        super::render_chunks(&st.store, &st.telemetry, window, format, |chunk| {
            ok = match gz.as_mut() {
                Some(enc) => {
                    let _ = enc.write_all(chunk);
                    let _ = enc.flush();
                    let out = std::mem::take(enc.get_mut());
                    out.is_empty() || send(Bytes::from(out))
                }
                None => send(Bytes::copy_from_slice(chunk)),
            };
            ok
        });
        if ok && let Some(enc) = gz {
            ok = match enc.finish() {
                Ok(tail) => tail.is_empty() || send(Bytes::from(tail)),
                Err(_) => false,
            };
        }
        if ok {
            complete.store(true, Ordering::Release);
        } else {
            st.telemetry.scrape_errors.inc();
        }
    });
    headers(Response::new(body.boxed()))
}

/// Builds the TLS acceptor from `[http] tls_cert_file` / `tls_key_file` (none when unset).
pub fn tls_acceptor(
    cfg: &crate::config::Http,
) -> std::io::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let bad = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{what} {}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cannot read certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("invalid certificate", cert, &e))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad("cannot read private key", key, &e))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| std::io::Error::other(format!("TLS certificate and key do not fit: {e}")))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        config,
    ))))
}

fn unauthorized() -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, "authentication required\n");
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tallyd\""),
    );
    r
}

/// The HTTP server's limits (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time to send a request's headers (and, with TLS, to finish the handshake).
    pub header_read_timeout: Duration,
    /// Time a response's write may stay blocked on a client that reads nothing.
    pub write_timeout: Duration,
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let table = Table::new(limits.max_connections);
    let timed_out = {
        let c = state.telemetry.http_write_timeouts.clone();
        Arc::new(move || c.inc()) as Arc<dyn Fn() + Send + Sync>
    };
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Responses go out as they are written, not after a delayed ACK (a keep-alive scrape
        // would otherwise wait ~40 ms for its last segment).
        let _ = stream.set_nodelay(true);
        let slot = tokio::select! {
            s = table.admit(|why| {
                state.telemetry.http_shed.with_label_values(&[why.reason()]).inc();
            }) => s,
            _ = shutdown.changed() => return,
        };
        let st = state.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        let io = Tracked::new(
            stream,
            slot.conn.clone(),
            limits.write_timeout,
            timed_out.clone(),
        );
        tokio::spawn(async move {
            let conn = slot.conn.clone();
            let header_timeout = limits.header_read_timeout;
            tokio::select! {
                _ = async {
                    match tls {
                        None => connection(TokioIo::new(io), st, conn.clone(), header_timeout, stop).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                                Ok(Ok(s)) => connection(TokioIo::new(s), st, conn.clone(), header_timeout, stop).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                } => {}
                // Shed to make room: dropping the connection closes it at once.
                _ = conn.shed() => {}
            }
            drop(slot);
        });
        // Let the new connection read its request before accepting the next: under a flood
        // of connections it would otherwise sit behind every one accepted after it.
        tokio::task::yield_now().await;
    }
}

/// Serves one HTTP/1.1 connection until it closes or the daemon stops.
async fn connection<IO>(
    io: TokioIo<IO>,
    st: Arc<State>,
    conn: Arc<Conn>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(st.clone(), conn.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_only_when_accepted_with_a_positive_q() {
        for (header, want) in [
            ("gzip", true),
            ("GZIP", true),
            ("deflate, gzip;q=0.5", true),
            ("x-gzip", true),
            ("*", true),
            ("gzip;q=0", false),
            ("gzip; q=0.0", false),
            ("gzip;q=0, *", false),
            ("*;q=0", false),
            ("identity", false),
            ("", false),
            ("gzip;q=nonsense", false),
        ] {
            assert_eq!(accepts_gzip(header), want, "{header:?}");
        }
    }
}
