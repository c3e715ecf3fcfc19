//! The classic concurrency-cost table (mutex vs atomic vs sharded counter, RwLock vs ArcSwap)
//! on this machine, each row against its naive baseline in the same
//! run:
//!
//! - `increments/<t>threads`: one counter incremented from `t` threads through a
//!   `Mutex<u64>`, one shared `AtomicU64` (`fetch_add`), and tallyd's sharded store (each
//!   thread its own `Writer`, so its own shard: `Writer::record` of a parsed sample, i.e. the
//!   cache lookup of the raw key plus a single-writer add; no parsing). The first two
//!   increment a variable the caller already holds; tallyd finds the series by name on every
//!   call, so the fair baseline for it is `mutex_hashmap_by_name` (a `Mutex<HashMap<String,
//!   f64>>` looked up by name, the usual "mutex + map"), also measured.
//! - `config_reads/<t>threads`: reading the live config while another thread publishes a new
//!   one every 10 ms, through `RwLock<Arc<Snapshot>>` (read lock + clone, or read lock +
//!   pointer compare) against tallyd's `Live` (`arc_swap`: `load`, or the per-batch
//!   `is_current` check the workers actually do).
//!
//! Throughput is operations per second summed over all threads. With two threads on this
//! 2-core machine, the threads share the cores with the rest of the system.
//!
//! `cargo bench --bench contention -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_utils::CachePadded;
use tallyd::config::live::Snapshot;
use tallyd::parse::{MetricType, Sample, TagFields};
use tallyd::pipeline::Writer;

/// Runs `work(thread, ops)` on `threads` threads, splitting `iters` operations between them,
/// and returns the wall time until the last one finishes.
fn threaded(threads: usize, iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let work = &work;
            let t64 = t as u64;
            let th = threads as u64;
            let n = iters / th + u64::from(t64 < iters % th);
            s.spawn(move || work(t, n));
        }
    });
    start.elapsed()
}

fn increments(c: &mut Criterion) {
    let sample = Sample {
        name: "requests",
        kind: MetricType::Counter,
        value: 1.0,
        delta: false,
        rate: 1.0,
        member: "",
        tags: TagFields::default(),
        container_id: None,
    };
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("increments/{threads}threads"));
        g.throughput(Throughput::Elements(1));
        let m = Mutex::new(0u64);
        g.bench_function("mutex_u64", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, |_, n| {
                    for _ in 0..n {
                        *m.lock().unwrap() += 1;
                    }
                })
            })
        });
        let a = AtomicU64::new(0);
        g.bench_function("shared_atomic_u64", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, |_, n| {
                    for _ in 0..n {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
        });
        let map = Mutex::new(std::collections::HashMap::from([(
            "requests".to_string(),
            0.0f64,
        )]));
        g.bench_function("mutex_hashmap_by_name", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, |_, n| {
                    for _ in 0..n {
                        if let Some(v) = map.lock().unwrap().get_mut(black_box("requests")) {
                            *v += 1.0;
                        }
                    }
                })
            })
        });
        let (store, live) = common::store(1000);
        // Padded so the two writers' counters never share a cache line (in the daemon each
        // writer lives in its own thread's worker).
        let writers: Vec<_> = (0..threads)
            .map(|_| CachePadded::new(Mutex::new(Writer::new(&store, live.clone()))))
            .collect();
        g.bench_function("tallyd_sharded_writer", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, |t, n| {
                    let mut w = writers[t].lock().unwrap();
                    w.begin_batch();
                    for _ in 0..n {
                        w.record(black_box(&sample));
                    }
                })
            })
        });
        g.finish();
        black_box((m.into_inner().unwrap(), a.load(Ordering::Relaxed)));
    }
}

fn config_reads(c: &mut Criterion) {
    let (_store, live) = common::store(1000);
    let rw = RwLock::new(Arc::new(Snapshot::defaults()));
    let stop = AtomicBool::new(false);
    let swaps = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                live.publish(Snapshot::defaults());
                *rw.write().unwrap() = Arc::new(Snapshot::defaults());
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        });
        for threads in [1usize, 2] {
            let mut g = c.benchmark_group(format!("config_reads/{threads}threads"));
            g.throughput(Throughput::Elements(1));
            g.bench_function("rwlock_arc_load", |b| {
                b.iter_custom(|iters| {
                    threaded(threads, iters, |_, n| {
                        for _ in 0..n {
                            let snap = rw.read().unwrap().clone();
                            black_box(snap.config.limits.max_series);
                        }
                    })
                })
            });
            g.bench_function("arcswap_live_load", |b| {
                b.iter_custom(|iters| {
                    threaded(threads, iters, |_, n| {
                        for _ in 0..n {
                            let snap = live.load();
                            black_box(snap.config.limits.max_series);
                        }
                    })
                })
            });
            g.bench_function("rwlock_arc_is_current", |b| {
                b.iter_custom(|iters| {
                    threaded(threads, iters, |_, n| {
                        let mut mine = rw.read().unwrap().clone();
                        for _ in 0..n {
                            let current = Arc::ptr_eq(&rw.read().unwrap(), &mine);
                            if !black_box(current) {
                                mine = rw.read().unwrap().clone();
                            }
                        }
                    })
                })
            });
            g.bench_function("arcswap_live_is_current", |b| {
                b.iter_custom(|iters| {
                    threaded(threads, iters, |_, n| {
                        let mut mine = live.load();
                        for _ in 0..n {
                            if !black_box(live.is_current(&mine)) {
                                mine = live.load();
                            }
                        }
                    })
                })
            });
            g.finish();
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "config_reads: {} swaps published during the group",
        swaps.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, increments, config_reads);
criterion_main!(benches);
