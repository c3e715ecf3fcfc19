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
    /// Reload the config file. `only_if_changed` for file events; `reply` for HTTP.
    Reload {
        /// Skip (and count nothing) when the file's text did not change.
        only_if_changed: bool,
        /// Where the outcome goes.
        reply: Option<ReloadReply>,
    },
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
    /// Called before each scrape (reads kernel drop counters from the sockets).
    pub before_scrape: Box<dyn Fn() + Send + Sync>,
}

type Body = BoxBody<Bytes, Infallible>;

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
                .send(Control::Reload {
                    only_if_changed: false,
                    reply: Some(tx),
                })
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
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
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
        let mut send = |bytes: Bytes| rt.block_on(tx.send_data(bytes)).is_ok();
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

/// Serves until `shutdown` turns true. `max_connections` caps concurrent connections.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
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
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}
