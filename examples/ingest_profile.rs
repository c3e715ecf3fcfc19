//! The load test's packed traffic through one writer, for profilers: `blast.<n>:1|c` lines over
//! `names` names packed into 900-byte datagrams (what `tallyd blast --packed 900` sends),
//! ingested `rounds` times after a warm-up pass, `begin_batch` every 32 datagrams as a UDP
//! worker does, each batch first copied into one buffer as `recvmmsg` leaves it. No sockets: only tallyd's own per-line work, so instruction counts under
//! `valgrind --tool=callgrind` are repeatable on a noisy machine.
//!
//! `cargo run --release --example ingest_profile -- [rounds] [names]`, or
//! `valgrind --tool=callgrind target/release/examples/ingest_profile 5`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use tallyd::clock::MonotonicClock;
use tallyd::config::live::{Live, Snapshot};
use tallyd::pipeline::Writer;
use tallyd::store::Store;

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let names: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);

    // What blast sends: a name picked per line by a fixed-seed LCG, packed to 900 bytes.
    let mut state = 7u64;
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::new();
    let mut lines = 0u64;
    for _ in 0..200_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let line = format!("blast.{}:1|c", (state >> 33) % names);
        if !cur.is_empty() && cur.len() + 1 + line.len() > 900 {
            datagrams.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(b'\n');
        }
        cur.extend_from_slice(line.as_bytes());
        lines += 1;
    }
    datagrams.push(cur);

    let snap = Snapshot::from_toml("").expect("the default config is valid");
    let live = Live::new(snap, None, None);
    let store = Store::new(Arc::new(MonotonicClock::default()), Vec::new());
    let mut w = Writer::new(&store, live);
    // Each batch is copied into one receive buffer first, as `recvmmsg` leaves it: the lines
    // are read from warm cache lines, not from a corpus larger than the cache.
    let mut buf = vec![0u8; 32 * 1024];
    let feed = |w: &mut Writer, buf: &mut [u8]| {
        for chunk in datagrams.chunks(batch) {
            let mut at = 0;
            let mut spans = [(0, 0); 32];
            for (span, d) in spans.iter_mut().zip(chunk) {
                buf[at..at + d.len()].copy_from_slice(d);
                *span = (at, at + d.len());
                at += d.len();
            }
            w.begin_batch();
            for &(from, to) in &spans[..chunk.len()] {
                w.ingest(black_box(&buf[from..to]), false);
            }
        }
    };
    feed(&mut w, &mut buf);
    let start = Instant::now();
    for _ in 0..rounds {
        feed(&mut w, &mut buf);
    }
    let took = start.elapsed();
    let n = lines * u64::from(rounds);
    println!(
        "{n} lines in {} datagrams x {rounds} rounds, {} series: {:.1} ns/line",
        datagrams.len(),
        store.series_count(),
        took.as_nanos() as f64 / n as f64
    );
}
