//! The HTTP endpoint's connections: the cap, who is shed when it is reached, and the write
//! timeout.
//!
//! Every connection is in a table with what the cap needs to know of it: whether a response
//! is being written, since when it has been idle (accepted or between requests), and since
//! when a write has found its socket full. At the cap (`[http] max_connections`) a new
//! connection does not wait behind clients that do nothing: it sheds, in this order,
//! 1. the connection idle longest (one that has not sent a whole request yet, or sits
//!    between requests on keep-alive), if idle for at least [`IDLE_GRACE`]: a slow client
//!    sending its headers a byte at a time holds a slot only until someone needs it, and a
//!    new connection has that long to send its request before it can be shed in turn;
//! 2. else the connection whose response has been blocked on a full socket the longest, if
//!    for at least [`SHED_STALLED_AFTER`]: a client that stopped reading.
//!
//! Only if neither exists (every slot is writing a response that moves) does it wait for a
//! slot. Each shed is counted in `tallyd_http_connections_shed_total{reason}`.
//!
//! Independently of the cap, a write blocked for `[http] write_timeout` ends its connection
//! ([`Tracked`]), counted in `tallyd_http_write_timeouts_total`; the response is then cut
//! without its terminating chunk, so the client sees an error, not a complete scrape.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::sync::lock;

/// How long a response's write must have been blocked before its connection may be shed to
/// make room for a new one.
pub const SHED_STALLED_AFTER: Duration = Duration::from_millis(500);

/// How long a connection may be idle before it may be shed to make room.
pub const IDLE_GRACE: Duration = Duration::from_millis(100);

/// How often a new connection that found nothing to shed looks again.
const RECHECK: Duration = Duration::from_millis(20);

/// Why a connection was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// It had no request in progress (never sent a whole one, or idle between requests).
    Idle,
    /// Its response had been blocked on a full socket for [`SHED_STALLED_AFTER`] or more.
    StalledWrite,
}

impl Shed {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Shed::Idle => "idle",
            Shed::StalledWrite => "stalled_write",
        }
    }
}

/// One connection's state, shared by its task, its I/O and the table.
pub struct Conn {
    /// Responses being written (a request whose response has not been fully written).
    active: AtomicUsize,
    /// When it last became idle: accepted, or its last response finished (ms since the
    /// table's epoch).
    idle_since: AtomicU64,
    /// When a write last found the socket full and has not yet succeeded (ms since the
    /// table's epoch, plus one; 0: not blocked).
    blocked_since: AtomicU64,
    /// Notified to end the connection.
    shed: Notify,
    epoch: Instant,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A response begins; the guard ends it (drop it when the body is done or dropped).
    pub fn begin_response(self: &Arc<Self>) -> ResponseGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ResponseGuard(self.clone())
    }

    /// Resolves when the connection is shed.
    pub async fn shed(&self) {
        self.shed.notified().await;
    }
}

/// Marks a response finished when dropped.
pub struct ResponseGuard(Arc<Conn>);

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections being served, at most `max` at once.
pub struct Table {
    max: usize,
    conns: std::sync::Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    /// Notified when a connection ends.
    freed: Notify,
    epoch: Instant,
}

/// A connection's place in the table; removes it when dropped.
pub struct Slot {
    table: Arc<Table>,
    id: u64,
    /// The connection's state.
    pub conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.table.conns).remove(&self.id);
        self.table.freed.notify_one();
    }
}

impl Table {
    /// A table of at most `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            conns: Default::default(),
            next: AtomicU64::new(0),
            freed: Notify::new(),
            epoch: Instant::now(),
        })
    }

    /// Connections served now.
    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    /// True if none is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A slot for a connection just accepted: at once if one is free or one can be shed
    /// (`on_shed` is told why), else when one frees.
    pub async fn admit(self: &Arc<Self>, on_shed: impl Fn(Shed)) -> Slot {
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self.try_admit(&on_shed) {
                return slot;
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    fn try_admit(self: &Arc<Self>, on_shed: &impl Fn(Shed)) -> Option<Slot> {
        let mut conns = lock(&self.conns);
        if conns.len() >= self.max {
            let now = self.epoch.elapsed().as_millis() as u64;
            let (victim, why) = Self::victim(&conns, now)?;
            let gone = conns.remove(&victim)?;
            gone.shed.notify_one();
            on_shed(why);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            blocked_since: AtomicU64::new(0),
            shed: Notify::new(),
            epoch: self.epoch,
        });
        conns.insert(id, conn.clone());
        Some(Slot {
            table: self.clone(),
            id,
            conn,
        })
    }

    /// The connection to shed, if any may be.
    fn victim(conns: &HashMap<u64, Arc<Conn>>, now: u64) -> Option<(u64, Shed)> {
        let grace = IDLE_GRACE.as_millis() as u64;
        let idle = conns
            .iter()
            .filter(|(_, c)| c.active.load(Ordering::Acquire) == 0)
            .map(|(id, c)| (c.idle_since.load(Ordering::Acquire), *id))
            .filter(|(since, _)| now.saturating_sub(*since) >= grace)
            .min();
        if let Some((_, id)) = idle {
            return Some((id, Shed::Idle));
        }
        let stalled_after = SHED_STALLED_AFTER.as_millis() as u64;
        conns
            .iter()
            .filter_map(|(id, c)| {
                let since = c.blocked_since.load(Ordering::Acquire).checked_sub(1)?;
                (now.saturating_sub(since) >= stalled_after).then_some((since, *id))
            })
            .min()
            .map(|(_, id)| (id, Shed::StalledWrite))
    }
}

/// A connection's socket: records when writes block (for [`Table`]) and fails a write that
/// stays blocked for `timeout`.
pub struct Tracked<IO> {
    io: IO,
    conn: Arc<Conn>,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    on_timeout: Arc<dyn Fn() + Send + Sync>,
}

impl<IO> Tracked<IO> {
    /// Wraps `io` of `conn`; `on_timeout` counts a write timeout.
    pub fn new(
        io: IO,
        conn: Arc<Conn>,
        timeout: Duration,
        on_timeout: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            io,
            conn,
            timeout,
            deadline: None,
            on_timeout,
        }
    }

    /// After a write attempt: `Ready` clears the blocked state; `Pending` starts it (and the
    /// timeout) if new, and fails the write once the timeout has passed.
    fn account<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.deadline = None;
            self.conn.blocked_since.store(0, Ordering::Release);
            return r;
        }
        let deadline = self.deadline.get_or_insert_with(|| {
            let now = self.conn.now();
            self.conn.blocked_since.store(now + 1, Ordering::Release);
            Box::pin(tokio::time::sleep(self.timeout))
        });
        if deadline.as_mut().poll(cx).is_ready() {
            (self.on_timeout)();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.account(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.account(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.account(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn who_is_shed_at_the_cap() {
        let table = Table::new(2);
        let shed = std::sync::Mutex::new(Vec::new());
        let note = |s| shed.lock().unwrap().push(s);
        let a = table.admit(note).await;
        let b = table.admit(note).await;
        // `a` is writing a response that moves; `b` has sent nothing. `c` waits until `b`
        // has been idle for the grace period, then sheds it.
        let busy_a = a.conn.begin_response();
        let before = Instant::now();
        let c = table.admit(note).await;
        assert!(before.elapsed() >= IDLE_GRACE);
        assert_eq!(*shed.lock().unwrap(), vec![Shed::Idle]);
        assert!(lock(&table.conns).contains_key(&a.id));
        assert!(!lock(&table.conns).contains_key(&b.id));
        // Both busy, neither blocked: nothing may be shed, the next one waits...
        let _busy_c = c.conn.begin_response();
        let waiting = {
            let table = table.clone();
            tokio::spawn(async move { table.admit(|_| {}).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        // ...until a write of `a` has been blocked for SHED_STALLED_AFTER.
        a.conn
            .blocked_since
            .store(a.conn.now() + 1, Ordering::Release);
        tokio::time::sleep(SHED_STALLED_AFTER / 2).await;
        assert!(!waiting.is_finished());
        let before = Instant::now();
        let d = waiting.await.unwrap();
        assert!(before.elapsed() <= SHED_STALLED_AFTER);
        assert!(!lock(&table.conns).contains_key(&a.id));
        assert!(lock(&table.conns).contains_key(&d.id));
        drop(busy_a);
        // A slot that frees lets the next one in without shedding.
        drop(c);
        let e = table.admit(|_| panic!("nothing to shed")).await;
        assert_eq!(table.len(), 2);
        drop((d, e));
        assert!(table.is_empty());
    }
}
