//! Exposition: what a scrape answers, and the HTTP endpoint that serves it.
//!
//! - this module: a scrape's flow: the store walked in chunks ([`crate::store::read`]), each
//!   chunk rendered and handed to the response body as it is made, then tallyd's own metrics;
//! - [`format`](mod@format): which format a scrape gets, from its `Accept` header;
//! - [`text`]: the Prometheus text format 0.0.4 and OpenMetrics text 1.0.0, and the state
//!   they keep across chunks;
//! - [`proto`]: the protobuf format (the Prometheus client model, delimited);
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
pub mod format;
pub mod http;
pub mod proto;
pub mod status;
pub mod text;

pub use format::Format;
pub use text::{TextState, TextVisitor, fmt_value};

use crate::store::Store;
use crate::store::read::Cursor;
use crate::telemetry::Telemetry;

/// Series rendered per registry lock hold and per streamed chunk.
pub const CHUNK_SERIES: usize = 2048;

/// Renders the exposition in `format`, in chunks: the StatsD families, then tallyd's own
/// metrics. `sink` gets each chunk (a few hundred KiB at most) and returns false to stop
/// (client gone). Memory stays bounded by one chunk whatever the number of series.
pub fn render_chunks(
    store: &Store,
    telemetry: &Telemetry,
    set_window: std::time::Duration,
    format: Format,
    mut sink: impl FnMut(&[u8]) -> bool,
) {
    let mut cursor = Cursor::default();
    let mut state = match format {
        Format::OpenMetrics => TextState::openmetrics(),
        _ => TextState::default(),
    };
    let mut text = String::new();
    let mut bin = Vec::new();
    let mut proto = proto::ProtoVisitor::default();
    loop {
        let done = match format {
            Format::Text | Format::OpenMetrics => {
                text.clear();
                let done = store.visit_some(
                    set_window,
                    &mut cursor,
                    CHUNK_SERIES,
                    &mut TextVisitor::new(&mut text, &mut state),
                );
                if !text.is_empty() && !sink(text.as_bytes()) {
                    return;
                }
                done
            }
            Format::Protobuf => {
                bin.clear();
                let done = store.visit_some(set_window, &mut cursor, CHUNK_SERIES, &mut proto);
                proto.finish(&mut bin);
                if !bin.is_empty() && !sink(&bin) {
                    return;
                }
                done
            }
        };
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
    match format {
        Format::Text => {
            let mut buf = Vec::new();
            if prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf)
                .is_ok()
            {
                sink(&buf);
            }
        }
        Format::OpenMetrics => {
            text.clear();
            text::own_openmetrics(&families, &mut text);
            sink(text.as_bytes());
        }
        Format::Protobuf => {
            bin.clear();
            proto::own(&families, &mut bin);
            sink(&bin);
        }
    }
}

/// Renders the whole exposition into one string (tests, benches): the text format.
pub fn render(store: &Store, telemetry: &Telemetry, set_window: std::time::Duration) -> String {
    String::from_utf8(render_bytes(store, telemetry, set_window, Format::Text))
        .expect("the text exposition is UTF-8")
}

/// Renders the whole exposition in `format` into one buffer (tests, benches).
pub fn render_bytes(
    store: &Store,
    telemetry: &Telemetry,
    set_window: std::time::Duration,
    format: Format,
) -> Vec<u8> {
    let mut out = Vec::new();
    render_chunks(store, telemetry, set_window, format, |c| {
        out.extend_from_slice(c);
        true
    });
    out
}
