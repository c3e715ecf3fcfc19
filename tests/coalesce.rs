//! Receive coalescing (`tallyd::ingest::coalesce`) by what it must do, not by its formula: a
//! wait is never longer than `COALESCE_MAX`, never when the last call found nothing or a full
//! batch, never long enough (at the rate just observed) to overfill a batch or a quarter of the
//! receive buffer; and a worker under a steady stream wakes at most twice per batch instead of
//! once per datagram. The worker is simulated on a virtual clock (datagrams arrive every
//! `gap`, a call takes what has arrived, up to a batch, then waits what `coalesce` says), so
//! nothing here reads a wall clock.

use std::time::Duration;

use tallyd::ingest::{COALESCE_MAX, coalesce};

const BATCH: usize = 32;
const MIB: u64 = 1 << 20;

/// Every combination of a grid of inputs: `(n, bytes, interval, buffer)`.
fn grid() -> impl Iterator<Item = (usize, u64, Duration, u64)> {
    let ns = [0usize, 1, 2, 7, 16, 31, 32, 33, 64];
    let sizes = [1u64, 20, 900, 1432, 65_507];
    let intervals = [1u64, 10, 50, 200, 1_000, 10_000, 100_000, 10_000_000]; // microseconds
    let buffers = [0u64, 16 << 10, 212_992, MIB, 8 * MIB, 64 * MIB];
    ns.into_iter().flat_map(move |n| {
        sizes.into_iter().flat_map(move |size| {
            intervals.into_iter().flat_map(move |us| {
                buffers
                    .into_iter()
                    .map(move |b| (n, n as u64 * size, Duration::from_micros(us), b))
            })
        })
    })
}

#[test]
fn a_wait_is_bounded_by_its_limits() {
    for (n, bytes, interval, buffer) in grid() {
        let w = coalesce(n, BATCH, bytes, interval, buffer);
        let at = format!("n={n} bytes={bytes} interval={interval:?} buffer={buffer}: {w:?}");
        assert!(w <= COALESCE_MAX, "longer than COALESCE_MAX: {at}");
        if n == 0 || n >= BATCH {
            assert_eq!(
                w,
                Duration::ZERO,
                "nothing found or a full batch: no wait: {at}"
            );
        }
        if w > Duration::ZERO {
            let (w, iv) = (w.as_nanos(), interval.as_nanos());
            // At the rate just observed, what arrives during the wait fits in the rest of a
            // batch (the wait ends when a batch has gathered), and its payload alone stays
            // under a quarter of the buffer (the kernel charges more than the payload).
            assert!(
                w * n as u128 <= BATCH as u128 * iv,
                "the wait gathers more than a batch: {at}"
            );
            assert!(
                w * u128::from(bytes) <= u128::from(buffer / 4) * iv,
                "the wait fills more than a quarter of the buffer: {at}"
            );
        }
    }
}

/// A worker on a virtual clock (nanoseconds): one datagram of `size` bytes every `gap`, a
/// call takes what has arrived (blocking for the next one when nothing has), at most a batch,
/// then waits `coalesce`'s answer. Returns (calls, the most datagrams found queued at a call).
fn simulate(gap: u64, size: u64, buffer: u64, datagrams: u64) -> (u64, u64) {
    let arrival = |i: u64| i * gap;
    let (mut now, mut woke, mut next, mut calls, mut most) = (0u64, 0u64, 0u64, 0u64, 0u64);
    while next < datagrams {
        now = now.max(arrival(next)); // blocks until one is there
        let queued = (next..datagrams).take_while(|&i| arrival(i) <= now).count() as u64;
        most = most.max(queued);
        let n = queued.min(BATCH as u64);
        next += n;
        calls += 1;
        let interval = Duration::from_nanos(now - woke);
        let wait = coalesce(n as usize, BATCH, n * size, interval, buffer);
        assert!(wait <= COALESCE_MAX);
        woke = now;
        now += wait.as_nanos() as u64;
    }
    (calls, most)
}

#[test]
fn a_steady_stream_wakes_the_worker_about_once_per_batch() {
    const N: u64 = 32_000;
    // One 100-byte datagram every 20 us: a batch gathers in 640 us, well within COALESCE_MAX.
    // Without coalescing every call would find one datagram (N calls). With it, at most two
    // per batch: a call that found a full batch does not wait, so the next one may block for
    // a single datagram before the next wait gathers a batch.
    let (calls, most) = simulate(20_000, 100, 8 * MIB, N);
    let batches = N / BATCH as u64;
    assert!(
        calls <= 2 * batches,
        "{calls} wakeups for {N} datagrams ({batches} batches)"
    );
    assert!(
        most <= 2 * BATCH as u64,
        "up to {most} datagrams queued: the waits overshoot a batch"
    );

    // One every 1 ms: a batch would take 32 ms, so each wait stops at COALESCE_MAX, and each
    // wakeup still finds several datagrams.
    let (calls, _) = simulate(1_000_000, 100, 8 * MIB, 2_000);
    assert!(calls < 2_000 / 3, "{calls} wakeups for 2000 slow datagrams");

    // A 16 KiB buffer and 1432-byte datagrams every 20 us: a quarter of the buffer fills in
    // under 3 datagrams, so waiting would risk drops: the worker takes what comes as it comes.
    let (calls, most) = simulate(20_000, 1432, 16 << 10, 2_000);
    assert!(
        most <= 3,
        "up to {most} datagrams of 1432 B queued in a 16 KiB buffer"
    );
    assert!(calls >= 2_000 / 3, "{calls} wakeups");
}
