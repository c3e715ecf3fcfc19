//! Where log lines go: stderr through a bounded queue drained by one writer thread, so a slow,
//! full or broken stderr never blocks, slows or kills a thread that logs (an ingest worker
//! logging a refusal, the control loop logging a reload). A line that cannot be queued (the
//! queue is full) or written (stderr is closed) is dropped and counted in
//! `tallyd_log_lines_dropped_total{reason}`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines waiting for the writer thread at most; more are dropped and counted.
pub const QUEUE_LINES: usize = 8192;

static WRITE_FAILED: AtomicU64 = AtomicU64::new(0);
static QUEUE_FULL: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped because the queue was full (the writer thread could not keep up or is
/// blocked on stderr) and because stderr refused them, since start.
pub fn dropped() -> (u64, u64) {
    (
        QUEUE_FULL.get().map_or(0, |c| c.dropped_lines() as u64),
        WRITE_FAILED.load(Ordering::Relaxed),
    )
}

/// stderr as the writer thread sees it: each message is one line, written whole or counted
/// as failed; an error is never returned (the thread would stop draining the queue).
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().lock().write_all(line).is_err() {
            WRITE_FAILED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The writer log layers write to, and the guard that flushes what is queued when dropped
/// (keep it for the life of the process). Call once.
pub fn stderr() -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("tallyd-log")
        .finish(Stderr);
    let _ = QUEUE_FULL.set(writer.error_counter());
    (writer, guard)
}
