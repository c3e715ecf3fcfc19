//! The HTTP endpoint (hyper 1.x, HTTP/1.1): `GET /metrics`, `GET /-/healthy`, `GET /-/ready`,
//! `POST /-/reload`.
//!
//! Hardened for an endpoint that anyone on the host can reach: a header-read timeout, a cap on
//! concurrent connections (more wait in the kernel's accept queue), request bodies never read,
//! only the methods each path serves (405 otherwise). `/metrics` is gzip-compressed (level
//! fast) when the client asks for it, and rendered on a blocking thread so the async workers
//! stay responsive during a large scrape.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

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
}

type Body = BoxBody<Bytes, Infallible>;

/// How long a scrape may leave a chunk of its response unread before it is cut off.
pub const RESPONSE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
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

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let path = req.uri().path();
    if (path == "/metrics" || path == "/-/reload")
        && !state
            .auth
            .allows(&state.live.load().config.http.basic_auth_users, &req)
            .await
    {
        return Ok(unauthorized());
    }
    Ok(match req.uri().path() {
        "/metrics" if get => metrics(&state, &req).await,
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
                return Ok(text(
                    StatusCode::FORBIDDEN,
                    "lifecycle endpoints are disabled; set [http] enable_lifecycle = true\n",
                ));
            }
            let (tx, rx) = oneshot::channel();
            if state
                .control
                .send(Control::Reload { reply: Some(tx) })
                .await
                .is_err()
            {
                return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
            }
            match rx.await {
                Ok(Ok(msg)) => text(StatusCode::OK, format!("{msg}\n")),
                Ok(Err(msg)) => text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        "/-/reload" => method_not_allowed("POST"),
        "/" if get => text(
            StatusCode::OK,
            "tallyd: see /metrics, /-/healthy, /-/ready\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// The streamed `/metrics` body: the render thread's chunks, in order. It ends only once the
/// render thread has dropped its sender *and* every chunk it sent has been read (tokio's
/// `mpsc::Receiver::poll_recv` guarantees both). `http_body_util::channel::Channel` does not:
/// it polls its frame queue, then its error oneshot, and if the sender sends its last chunks
/// and is dropped between those two polls it ends the body with the chunks still queued, so a
/// scrape came back 200 with an empty or truncated exposition.
struct ChunkBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

async fn metrics(state: &Arc<State>, req: &Request<Incoming>) -> Response<Body> {
    let gzip = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.trim().split(';').next() == Some("gzip"))
        });
    // The body streams from a blocking thread through a small channel: the scrape's memory is
    // a few chunks, and a slow client stalls only its own render (the registry lock is held
    // for one chunk at a time, never while waiting for the client).
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let body = ChunkBody(rx);
    let st = state.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        (st.before_scrape)();
        let window = st.live.load().config.defaults.set_window;
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
        super::render_chunks(&st.store, &st.telemetry, window, |chunk| {
            ok = match gz.as_mut() {
                Some(enc) => {
                    let _ = enc.write_all(chunk.as_bytes());
                    let _ = enc.flush();
                    let out = std::mem::take(enc.get_mut());
                    out.is_empty() || send(Bytes::from(out))
                }
                None => send(Bytes::copy_from_slice(chunk.as_bytes())),
            };
            ok
        });
        if !ok {
            st.telemetry.scrape_errors.inc();
        } else if let Some(enc) = gz
            && let Ok(tail) = enc.finish()
            && !tail.is_empty()
        {
            send(Bytes::from(tail));
        }
    });
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    if gzip {
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
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

/// Checks HTTP basic auth against `[http] basic_auth_users` (bcrypt). A password that verified
/// once is remembered (compared in constant time), so a scraper pays bcrypt's cost once, not
/// on every scrape.
#[derive(Default)]
pub struct Auth {
    verified: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

impl Auth {
    async fn allows(
        &self,
        users: &std::collections::BTreeMap<String, String>,
        req: &Request<Incoming>,
    ) -> bool {
        use base64::Engine as _;
        if users.is_empty() {
            return true;
        }
        let Some(cred) = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return false;
        };
        let Some((user, pass)) = cred.split_once(':') else {
            return false;
        };
        let Some(hash) = users.get(user) else {
            return false;
        };
        let cached = crate::sync::lock(&self.verified).get(user).cloned();
        if let Some((h, p)) = cached
            && h == *hash
            && bool::from(p.as_bytes().ct_eq(pass.as_bytes()))
        {
            return true;
        }
        let (pass, hash) = (pass.to_string(), hash.clone());
        let ok = tokio::task::spawn_blocking({
            let (pass, hash) = (pass.clone(), hash.clone());
            move || bcrypt::verify(pass, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            crate::sync::lock(&self.verified).insert(user.to_string(), (hash, pass));
        }
        ok
    }
}

fn unauthorized() -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, "authentication required\n");
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tallyd\""),
    );
    r
}

/// Serves until `shutdown` turns true. `max_connections` caps concurrent connections.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
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
        let st = state.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(TokioIo::new(stream), st, header_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(TokioIo::new(s), st, header_timeout, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one HTTP/1.1 connection until it closes or the daemon stops.
async fn connection<IO>(
    io: TokioIo<IO>,
    st: Arc<State>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
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
