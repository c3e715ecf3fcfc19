//! Exposition: what a scrape answers, and the HTTP endpoint that serves it.
//!
//! - this module: a scrape's flow: the store walked in chunks ([`crate::store::read`]), each
//!   chunk rendered and handed to the response body as it is made, then tallyd's own metrics;
//! - [`text`]: the Prometheus text format 0.0.4, and the state it keeps across chunks;
//! - [`http`]: the hyper service: `/metrics` (streamed, gzip on request), health, readiness,
//!   the lifecycle endpoints, TLS;
//! - [`status`]: the status page (`/`) and its JSON (`/api/v1/status`): listeners, config,
//!   series and the top families, refusals with their last lines;
//! - [`conn`]: the connection cap, who is shed when it is reached, the write timeout;
//! - [`auth`]: basic auth with bcrypt, its cost bounded.
//!
//! Rendering cannot fail whatever the series hold: names and label names were sanitised when
//! the series was created ([`crate::naming`]), label values are escaped here, and every value is
//! a finite or infinite f64 printed in a form Prometheus parses. A scrape therefore always
//! answers 200.

pub mod auth;
pub mod conn;
pub mod http;
pub mod status;
pub mod text;

pub use text::{TextState, TextVisitor, fmt_value};

use crate::store::Store;
use crate::store::read::Cursor;
use crate::telemetry::Telemetry;

/// Series rendered per registry lock hold and per streamed chunk.
pub const CHUNK_SERIES: usize = 2048;

/// Renders the exposition in chunks: the StatsD families, then tallyd's own metrics. `sink`
/// gets each chunk (a few hundred KiB at most) and returns false to stop (client gone). Memory
/// stays bounded by one chunk whatever the number of series.
pub fn render_chunks(
    store: &Store,
    telemetry: &Telemetry,
    set_window: std::time::Duration,
    mut sink: impl FnMut(&str) -> bool,
) {
    let mut out = String::with_capacity(256 * 1024);
    let mut cursor = Cursor::default();
    let mut state = TextState::default();
    loop {
        out.clear();
        let done = store.visit_some(
            set_window,
            &mut cursor,
            CHUNK_SERIES,
            &mut TextVisitor::new(&mut out, &mut state),
        );
        if !out.is_empty() && !sink(&out) {
            return;
        }
        if done {
            break;
        }
    }
    telemetry.series.set(store.series_count() as i64);
    Telemetry::catch_up(&telemetry.expired, store.expired_total());
    let (queue_full, write_failed) = crate::log::dropped();
    Telemetry::catch_up(&telemetry.log_dropped[0], queue_full);
    Telemetry::catch_up(&telemetry.log_dropped[1], write_failed);
    let families = telemetry.registry.gather();
    let mut buf = Vec::new();
    if prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf).is_ok() {
        sink(&String::from_utf8_lossy(&buf));
    }
}

/// Renders the whole exposition into one string (tests, benches).
pub fn render(store: &Store, telemetry: &Telemetry, set_window: std::time::Duration) -> String {
    let mut out = String::new();
    render_chunks(store, telemetry, set_window, |c| {
        out.push_str(c);
        true
    });
    out
}
