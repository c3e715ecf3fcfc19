//! `/metrics` rendering for 10k, 100k and 1M counter series (1000 families, one `id` label,
//! two worker shards that both saw every series, as with the default 2 UDP workers on this
//! machine). Per size:
//!
//! - `baseline_write_lines`: writing the same text, already formatted and held as one
//!   `Vec<String>`, into a reused `String`: the memory traffic of the output alone;
//! - `visit_text`: `Store::visit` with `export::TextVisitor` into a reused `String` (the store
//!   walk and the formatting, one registry lock hold);
//! - `stream`: `export::render_chunks`, what the HTTP handler runs, with a sink that only
//!   counts bytes (chunks of `CHUNK_SERIES` series, the registry lock taken per chunk, then
//!   tallyd's own metrics);
//! - `stream_gzip_fast`: the same into a `flate2` gzip encoder at level fast, flushed per
//!   chunk as the handler does when the client sends `Accept-Encoding: gzip`;
//! - `stream_openmetrics`, `stream_protobuf`: `stream` in the other two formats.
//!
//! Before measuring, each size prints the peak heap growth during one streamed scrape and
//! during one whole-string render (a counting allocator), to show the streamed path's memory
//! is bounded by a chunk, not by the output.
//!
//! `cargo bench --bench render -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;
use std::io::Write as _;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::export::{self, Format, TextState, TextVisitor};
use tallyd::pipeline::Writer;
use tallyd::telemetry::Telemetry;

#[global_allocator]
static GLOBAL: common::Peak = common::Peak;

/// Peak heap growth while `f` runs.
fn peak_growth(f: impl FnOnce()) -> i64 {
    common::measured(f).1
}

fn render(c: &mut Criterion) {
    for n in [10_000u64, 100_000, 1_000_000] {
        let (store, live) = common::store(2_000_000);
        let mut w1 = Writer::new(&store, live.clone());
        let mut w2 = Writer::new(&store, live);
        let lines: Vec<String> = (0..n)
            .map(|i| format!("app.metric.{}:1|c|#id:{}", i % 1000, i / 1000))
            .collect();
        let datagrams = common::pack(&lines, 1432);
        drop(lines);
        common::feed(&mut w1, &datagrams);
        common::feed(&mut w2, &datagrams);
        drop(datagrams);
        assert_eq!(store.series_count(), n);
        let telemetry = Telemetry::new();
        let window = Duration::from_secs(60);
        let mut out = String::new();
        store.visit(
            window,
            &mut TextVisitor::new(&mut out, &mut TextState::default()),
        );
        let text_lines: Vec<String> = out.lines().map(|l| format!("{l}\n")).collect();
        let mut bytes = 0usize;
        let stream_peak = peak_growth(|| {
            export::render_chunks(&store, &telemetry, window, Format::Text, |chunk| {
                bytes += chunk.len();
                true
            })
        });
        for format in [Format::OpenMetrics, Format::Protobuf] {
            let mut fbytes = 0usize;
            let peak = peak_growth(|| {
                export::render_chunks(&store, &telemetry, window, format, |chunk| {
                    fbytes += chunk.len();
                    true
                })
            });
            eprintln!(
                "render {n} {format:?}: {fbytes} bytes; peak heap growth, streamed: {peak} B"
            );
        }
        let string_peak = peak_growth(|| {
            black_box(export::render(&store, &telemetry, window));
        });
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        export::render_chunks(&store, &telemetry, window, Format::Text, |chunk| {
            enc.write_all(chunk).is_ok()
        });
        let gz = enc.finish().map_or(0, |v| v.len());
        eprintln!(
            "render {n}: {bytes} bytes of exposition ({gz} gzipped, level fast); peak heap \
             growth: streamed {stream_peak} B, whole string {string_peak} B"
        );

        let label = match n {
            10_000 => "10k",
            100_000 => "100k",
            _ => "1M",
        };
        let mut g = c.benchmark_group(format!("render/{label}"));
        g.throughput(Throughput::Elements(n));
        if n >= 100_000 {
            g.sample_size(10);
        }
        g.bench_function("baseline_write_lines", |b| {
            b.iter(|| {
                out.clear();
                for l in &text_lines {
                    out.push_str(l);
                }
                black_box(out.len())
            })
        });
        g.bench_function("visit_text", |b| {
            b.iter(|| {
                out.clear();
                store.visit(
                    window,
                    &mut TextVisitor::new(&mut out, &mut TextState::default()),
                );
                black_box(out.len())
            })
        });
        for (name, format) in [
            ("stream", Format::Text),
            ("stream_openmetrics", Format::OpenMetrics),
            ("stream_protobuf", Format::Protobuf),
        ] {
            g.bench_function(name, |b| {
                b.iter(|| {
                    let mut bytes = 0usize;
                    export::render_chunks(&store, &telemetry, window, format, |chunk| {
                        bytes += black_box(chunk).len();
                        true
                    });
                    bytes
                })
            });
        }
        g.bench_function("stream_gzip_fast", |b| {
            b.iter(|| {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let mut sent = 0usize;
                export::render_chunks(&store, &telemetry, window, Format::Text, |chunk| {
                    let _ = enc.write_all(chunk);
                    let _ = enc.flush();
                    sent += std::mem::take(enc.get_mut()).len();
                    true
                });
                sent + enc.finish().map_or(0, |t| t.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, render);
criterion_main!(benches);
