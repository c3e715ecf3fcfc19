//! Native histograms: what a series costs, in the store and on the wire, at 10, 100 and 256
//! populated buckets (schema 3, values `2^(k/8)`, each in its own bucket), two worker shards
//! that both observed every value; and the protobuf render of 10k such series against the
//! text render (classic buckets) of the same store in the same run.
//!
//! Printed before measuring, per populated count: the store's bytes per series (fixed by
//! `native_max_buckets`, whatever is populated), the protobuf bytes of one series, and the
//! text bytes of the same series (its classic buckets).
//!
//! `cargo bench --bench native -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::export::{self, Format};
use tallyd::pipeline::Writer;
use tallyd::store::Layout;
use tallyd::telemetry::Telemetry;

const WINDOW: Duration = Duration::from_secs(60);

/// `series` native histograms with `populated` buckets each, fed by two writers.
fn filled(series: u64, populated: u32) -> std::sync::Arc<tallyd::store::Store> {
    let (store, live) = common::store(2_000_000);
    let mut w1 = Writer::new(&store, live.clone());
    let mut w2 = Writer::new(&store, live);
    let lines: Vec<String> = (0..series)
        .flat_map(|s| {
            (0..populated).map(move |k| format!("lat.{s}:{}|h", 2f64.powf(f64::from(k) / 8.0)))
        })
        .collect();
    let datagrams = common::pack(&lines, 1432);
    common::feed(&mut w1, &datagrams);
    common::feed(&mut w2, &datagrams);
    store
}

fn bytes(store: &tallyd::store::Store, format: Format) -> usize {
    export::render_bytes(store, &Telemetry::new(), WINDOW, format).len()
}

fn native(c: &mut Criterion) {
    let own_pb = bytes(&filled(0, 0), Format::Protobuf);
    let own_text = bytes(&filled(0, 0), Format::Text);
    let words = Layout::Native(11, 3, 256).words() as usize;
    for populated in [10, 100, 256] {
        let store = filled(1, populated);
        eprintln!(
            "native histogram, {populated} populated buckets: store {} B per worker \
             ({words} words), protobuf {} B per series, text (classic buckets) {} B",
            words * 8,
            bytes(&store, Format::Protobuf) - own_pb,
            bytes(&store, Format::Text) - own_text,
        );
    }
    let store = filled(10_000, 100);
    let telemetry = Telemetry::new();
    let mut g = c.benchmark_group("native/render_10k_series_100_buckets");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    for (name, format) in [
        ("text_classic", Format::Text),
        ("protobuf_native", Format::Protobuf),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                export::render_chunks(&store, &telemetry, WINDOW, format, |chunk| {
                    n += black_box(chunk).len();
                    true
                });
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, native);
criterion_main!(benches);
