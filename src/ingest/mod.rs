//! Listeners: UDP workers, Unix datagram workers and TCP line readers.
//!
//! A UDP listener runs `workers` OS threads, each with its own SO_REUSEPORT socket, its own
//! reused `recvmmsg` buffers and its own [`Writer`] (so its own shard). The kernel spreads
//! senders over the sockets by their address hash, so one sender's lines stay in order on one
//! worker. Workers block in `recvmmsg` with a 100 ms timeout so they notice a stop, a new
//! config or a store epoch promptly; on stop they drain what the socket still holds, then exit.
//! TCP connections are async tasks sharing one writer per listener behind a mutex (streams
//! carry far fewer lines than UDP on a StatsD host).
//!
//! [`relay`] is the `[relay]` sender: the lines every writer accepted, forwarded over UDP.

pub mod relay;
pub mod sys;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::IntCounter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;

use crate::clock::Throttle;
use crate::config::{Tcp, Udp, Unixgram};
use crate::parse::ParseError;
use crate::pipeline::Writer;
use crate::store::Store;
use crate::sync::lock;
use crate::telemetry::Telemetry;

/// How often an idle worker wakes to look at the stop flag, the config and the store epoch.
pub const IDLE_TICK: Duration = Duration::from_millis(100);

/// Where every listener's lines go: the store (through a writer of its own), the live config
/// its writers read, and the self-metrics.
#[derive(Clone)]
pub struct Sinks {
    /// The aggregates.
    pub store: Arc<Store>,
    /// The live config.
    pub live: Arc<crate::config::live::Live>,
    /// tallyd's own metrics.
    pub telemetry: Arc<Telemetry>,
    /// Told the name of an ingest thread or task that dies (panics).
    pub on_death: OnDeath,
    /// The relay, if `[relay]` is configured.
    pub relay: Option<std::sync::Arc<relay::RelayHandle>>,
}

/// What to do when an ingest worker dies: given its name.
pub type OnDeath = Arc<dyn Fn(&str) + Send + Sync>;

/// Reports its worker's death: dropped while its thread or task unwinds from a panic, it calls
/// the [`OnDeath`] it holds. A worker that returns normally drops it silently.
pub(crate) struct DeathWatch {
    name: String,
    on_death: OnDeath,
}

impl DeathWatch {
    pub(crate) fn new(name: impl Into<String>, on_death: &OnDeath) -> Self {
        Self {
            name: name.into(),
            on_death: on_death.clone(),
        }
    }
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.on_death)(&self.name);
        }
    }
}

impl Sinks {
    /// A new writer (its own shard) for one ingest thread or listener.
    fn writer(&self, label: &str, signs: crate::config::GaugeSigns) -> Writer {
        Writer::new(&self.store, self.live.clone())
            .with_listener(label)
            .with_gauge_signs(signs)
            .with_relay(self.relay.as_ref().map(|r| r.out()))
    }
}

/// Per-listener counters, resolved once. Each transport has the series that mean something for
/// it: lines and bytes for all; datagrams and truncated datagrams for datagram listeners (UDP,
/// Unix datagram); over-long lines for TCP (whose connections are counted where they are
/// accepted). A listener never creates another transport's series.
#[derive(Clone)]
struct Counters {
    lines: IntCounter,
    bytes: IntCounter,
    /// `tallyd_lines_rejected_total`: lines the parser refused.
    rejected: IntCounter,
    /// Datagram listeners: `tallyd_datagrams_received_total`.
    datagrams: Option<IntCounter>,
    /// Datagram listeners: `tallyd_datagrams_truncated_total`.
    truncated: Option<IntCounter>,
    /// TCP: `tallyd_tcp_lines_too_long_total`.
    too_long: Option<IntCounter>,
}

impl Counters {
    /// A datagram listener's (UDP, Unix datagram).
    fn datagram(t: &Telemetry, label: &str) -> Self {
        Self {
            lines: t.lines.with_label_values(&[label]),
            bytes: t.bytes.with_label_values(&[label]),
            rejected: t.lines_rejected.with_label_values(&[label]),
            datagrams: Some(t.datagrams.with_label_values(&[label])),
            truncated: Some(t.truncated.with_label_values(&[label])),
            too_long: None,
        }
    }

    /// A TCP listener's.
    fn stream(t: &Telemetry, label: &str) -> Self {
        Self {
            lines: t.lines.with_label_values(&[label]),
            bytes: t.bytes.with_label_values(&[label]),
            rejected: t.lines_rejected.with_label_values(&[label]),
            datagrams: None,
            truncated: None,
            too_long: Some(t.tcp_too_long.with_label_values(&[label])),
        }
    }
}

/// What a worker counted since its last flush, beside its writer's [`Writer::stats`]. A count
/// its listener has no series for stays 0.
#[derive(Default)]
struct Pending {
    bytes: u64,
    datagrams: u64,
    truncated: u64,
    too_long: u64,
}

/// Flushes a writer's counters and `p` into the self-metrics.
fn flush(w: &mut Writer, c: &Counters, t: &Telemetry, p: &mut Pending) {
    if w.stats.lines > 0 {
        c.lines.inc_by(w.stats.lines);
        w.stats.lines = 0;
    }
    w.flush_relay();
    // The parse errors are zeroed by the telemetry flush below, so this is what this batch
    // refused.
    let rejected: u64 = w.stats.parse_errors.iter().sum();
    if rejected > 0 {
        c.rejected.inc_by(rejected);
    }
    for (counter, v) in [
        (Some(&c.bytes), &mut p.bytes),
        (c.datagrams.as_ref(), &mut p.datagrams),
        (c.truncated.as_ref(), &mut p.truncated),
        (c.too_long.as_ref(), &mut p.too_long),
    ] {
        if *v > 0 {
            debug_assert!(counter.is_some(), "a count without its series");
            if let Some(counter) = counter {
                counter.inc_by(*v);
            }
            *v = 0;
        }
    }
    t.flush(&mut w.stats);
}

/// A running listener: its threads or task, and the sockets whose kernel drops are reported.
pub struct Running {
    /// The `listener` label.
    pub label: String,
    /// The bound address (UDP/TCP).
    pub addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    sockets: Vec<Arc<Socket>>,
    unlink: Option<SocketFile>,
    /// UDP: `tallyd_udp_kernel_drops_total`, read from `sockets`. (A Unix datagram socket
    /// drops nothing: a sender whose datagram does not fit waits or gets EAGAIN.)
    drops: Option<IntCounter>,
    /// Per worker: its loop counter and the value the watchdog saw last.
    beats: Vec<Heartbeat>,
}

impl Running {
    /// Stops the listener: closes its sockets, lets workers drain what they already hold, and
    /// waits for them (at most `deadline` for a TCP task).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(file) = self.unlink.take() {
            file.remove();
        }
    }

    /// True if every worker went round its loop since the last call (they do at least every
    /// [`IDLE_TICK`] even when idle); a stuck worker makes this false.
    pub fn is_alive(&self) -> bool {
        self.beats.iter().fold(true, |ok, (beat, seen)| {
            let now = beat.load(Ordering::Relaxed);
            ok & (seen.swap(now, Ordering::Relaxed) != now)
        })
    }

    /// Updates `tallyd_udp_kernel_drops_total` from the sockets (UDP listeners only).
    pub fn read_drops(&self) {
        let Some(drops) = &self.drops else {
            return;
        };
        let total: u64 = self
            .sockets
            .iter()
            .filter_map(|s| sys::socket_drops(s.as_raw_fd()))
            .sum();
        Telemetry::catch_up(drops, total);
    }
}

/// Where a listener's sockets come from.
pub enum Source {
    /// Bind them.
    Bind,
    /// Use this socket passed by systemd (one socket shared by every worker).
    Inherited(Socket),
}

/// Asks for a UDP socket's receive buffer; with `log`, logs what the kernel reports.
///
/// The log's `kernel_bytes` is the figure `tallyd_udp_receive_buffer_bytes` shows: SO_RCVBUF
/// read back, which on Linux is twice the size granted (the kernel's allowance for its
/// bookkeeping), so a full grant of `recv_buffer = "8MiB"` reads 16777216.
fn udp_recv_buffer(sock: &Socket, want: u64, label: &str, log: bool) {
    match sys::set_recv_buffer(sock, want) {
        // A full grant reads as >= 2 x want.
        Ok(got) if got < want.saturating_mul(2) => {
            if log {
                tracing::warn!(
                    listener = %label,
                    requested_bytes = want,
                    kernel_bytes = got,
                    "the kernel capped the UDP receive buffer (kernel_bytes is SO_RCVBUF as Linux reports it, twice the size granted); bursts may be dropped. Raise the cap with: sysctl -w net.core.rmem_max={want}"
                );
            }
        }
        Ok(got) => {
            if log {
                tracing::info!(
                    listener = %label,
                    requested_bytes = want,
                    kernel_bytes = got,
                    "UDP receive buffer set (kernel_bytes is SO_RCVBUF as Linux reports it, twice the size granted)"
                );
            }
        }
        Err(e) => {
            tracing::warn!(listener = %label, error = %e, "cannot set the UDP receive buffer");
        }
    }
}

/// Serialises port-0 picks within the process (see [`bind_udp`]).
static PORT_PICK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Binds a UDP listener's sockets (one per worker, SO_REUSEPORT).
///
/// Port 0 is not handed to the SO_REUSEPORT sockets: Linux lets an autobind with SO_REUSEPORT
/// pick a port that another SO_REUSEPORT socket of the same user already holds, and the two
/// listeners would then split each other's traffic (seen when two tallyds in one test process
/// both listened on port 0). A probe socket without SO_REUSEPORT or SO_REUSEADDR picks a port
/// nobody holds; the group binds to it while `PORT_PICK` is held, so two pickers in one
/// process cannot pick the same one.
pub fn bind_udp(cfg: &Udp) -> io::Result<Vec<Socket>> {
    let label = cfg.label();
    let mut addr = cfg.listen;
    let _pick = (addr.port() == 0).then(|| {
        PORT_PICK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    if addr.port() == 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        probe.bind(&addr.into())?;
        let picked = probe.local_addr()?.as_socket().map_or(0, |a| a.port());
        addr.set_port(picked);
    }
    let mut sockets = Vec::new();
    for i in 0..cfg.worker_count() {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        // Every worker's socket gets the same size: one log line per listener.
        udp_recv_buffer(&s, cfg.recv_buffer, &label, i == 0);
        s.bind(&addr.into())?;
        sockets.push(s);
    }
    Ok(sockets)
}

/// Starts a UDP listener on `sockets` (from [`bind_udp`] or systemd).
pub fn start_udp(cfg: &Udp, sockets: Vec<Socket>, sinks: &Sinks) -> io::Result<Running> {
    let t = &sinks.telemetry;
    let label = cfg.label();
    let addr = sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .and_then(|a| a.as_socket());
    // What the kernel reports for the socket as it is, bound here or passed by systemd: the
    // figure the bind's log line gave.
    if let Some(size) = sockets.first().and_then(|s| s.recv_buffer_size().ok()) {
        t.recv_buffer
            .with_label_values(&[&label])
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sockets: Vec<Arc<Socket>> = sockets.into_iter().map(Arc::new).collect();
    let (mut threads, mut beats) = (Vec::new(), Vec::new());
    // An inherited socket is shared by all workers (recvmmsg on one socket from several
    // threads is safe; each datagram goes to exactly one caller).
    let per_worker: Vec<Arc<Socket>> = if sockets.len() == 1 {
        vec![sockets[0].clone(); cfg.worker_count()]
    } else {
        sockets.clone()
    };
    for (i, sock) in per_worker.into_iter().enumerate() {
        let bufs = sys::MmsgBuffers::new(cfg.batch, cfg.max_datagram_size as usize);
        let (thread, beat) = DatagramWorker::spawn(
            format!("tallyd-udp-{i}"),
            sock,
            bufs,
            (&label, cfg.gauge_signs),
            &stop,
            sinks,
        )?;
        threads.push(thread);
        beats.push(beat);
    }
    match addr {
        Some(bound) => tracing::info!(
            listener = %label,
            bound = %bound,
            workers = threads.len(),
            "UDP listener started"
        ),
        None => tracing::info!(listener = %label, workers = threads.len(), "UDP listener started"),
    }
    Ok(Running {
        drops: Some(t.kernel_drops.with_label_values(&[&label])),
        label,
        addr,
        stop,
        threads,
        task: None,
        sockets,
        unlink: None,
        beats,
    })
}

/// Binds and starts a Unix datagram listener (one worker); see [`bind_unixgram`] for how the
/// socket file is made and what may be replaced. The file is removed at stop only while it is
/// still the socket tallyd made.
pub fn start_unixgram(
    cfg: &Unixgram,
    inherited: Option<Socket>,
    sinks: &Sinks,
) -> io::Result<Running> {
    let label = format!("unixgram://{}", cfg.path.display());
    let (sock, unlink) = match inherited {
        Some(s) => (s, None),
        None => {
            let (s, own) = bind_unixgram(&cfg.path, cfg.mode)?;
            (s, Some(own))
        }
    };
    // Asked for as configured, but not reported: Linux bounds a Unix datagram socket's queue
    // by `net.unix.max_dgram_qlen` datagrams and the sender's send buffer, not by its receive
    // buffer, and drops nothing (a sender that does not fit waits, or gets EAGAIN), so there is
    // no receive buffer or kernel drop series for it.
    if let Err(e) = sys::set_recv_buffer(&sock, cfg.recv_buffer) {
        tracing::debug!(listener = %label, error = %e, "cannot set the unixgram receive buffer");
    }
    let sock = Arc::new(sock);
    let stop = Arc::new(AtomicBool::new(false));
    let bufs = sys::MmsgBuffers::new(32, 65536);
    let (thread, beat) = DatagramWorker::spawn(
        "tallyd-unixgram".into(),
        sock.clone(),
        bufs,
        (&label, cfg.gauge_signs),
        &stop,
        sinks,
    )?;
    tracing::info!(listener = %label, "unixgram listener started");
    Ok(Running {
        drops: None,
        label,
        addr: None,
        stop,
        threads: vec![thread],
        task: None,
        sockets: vec![sock],
        unlink,
        beats: vec![beat],
    })
}

/// A socket file tallyd made: its path and the inode it had, so that stop removes it only if
/// the path still names that socket (not a file someone put there since).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    /// Removes the file if it is still this socket; says why not otherwise.
    fn remove(self) {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the unixgram socket");
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "not removing the unixgram socket path: it is no longer the socket tallyd made"
            ),
            Err(_) => {}
        }
    }
}

/// Makes the Unix datagram socket at `path` with file mode `mode`.
///
/// - Something already at `path` is replaced only if it is a socket that nobody receives on
///   (a stale socket left by a tallyd that did not stop cleanly). A live socket is "in use"; a
///   regular file, directory or symlink is refused and left alone.
/// - The socket has `mode` from the moment it appears at `path`: it is bound inside a fresh
///   directory next to `path` that only tallyd's user can enter (mode 0700), given its mode
///   there, and renamed into place (which also replaces a stale socket atomically). No umask
///   and no window between bind and chmod. When the private directory's path would be longer
///   than a socket address holds, the socket is bound through `/proc/self/fd` instead.
///
/// Returns the socket and the file to remove at stop.
pub fn bind_unixgram(path: &std::path::Path, mode: u32) -> io::Result<(Socket, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
    use std::os::unix::net::UnixDatagram;
    let shown = path.display();
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let ft = m.file_type();
        if !ft.is_socket() {
            let what = if ft.is_file() {
                "a regular file"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_symlink() {
                "a symlink"
            } else {
                "not a socket"
            };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{shown} exists and is {what}; tallyd replaces only a stale socket"),
            ));
        }
        let probe = UnixDatagram::unbound()?;
        if probe.connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{shown} is in use by another process"),
            ));
        }
        tracing::info!(path = %shown, "replacing a stale unixgram socket");
    }
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let private = tempfile::Builder::new()
        .prefix(".tallyd-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)?;
    let inside = private.path().join("s");
    let sock = if inside.as_os_str().len() <= crate::config::MAX_SOCKET_PATH {
        UnixDatagram::bind(&inside)?
    } else {
        let dir = std::fs::File::open(private.path())?;
        UnixDatagram::bind(format!("/proc/self/fd/{}/s", dir.as_raw_fd()))?
    };
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(mode))?;
    let meta = std::fs::symlink_metadata(&inside)?;
    std::fs::rename(&inside, path)?;
    Ok((
        Socket::from(sock),
        SocketFile {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// The longest a datagram worker waits, after a call that found few datagrams queued, for more
/// to gather before the next call; see [`coalesce`].
pub const COALESCE_MAX: Duration = Duration::from_millis(5);

/// Kernel memory charged per queued datagram beyond its payload (the skb's overhead; about
/// 768 bytes for a small loopback datagram, rounded up).
const SKB_OVERHEAD: u64 = 1024;

/// How long to wait before the next `recvmmsg` after one that returned `n` of `capacity`
/// datagrams (`bytes` of payload) that arrived over `interval`, on a socket whose receive
/// buffer is `buffer` bytes.
///
/// At low and moderate rates each wakeup found a datagram or two: the wakeup, the syscall and
/// the caches that the sender's core cooled down cost more than the lines (0.26 us per packed
/// line at 200k lines/s against 0.12 us at 8M). Waiting lets datagrams gather in the kernel
/// buffer, so one call takes many and the per-call costs are shared. The wait lasts until, at
/// the rate just observed, a whole batch (`capacity`) has gathered, and never longer than
/// [`COALESCE_MAX`] or than it takes the buffer to fill to a quarter: a small buffer or a fast
/// sender means a short wait or none, and a full batch means none. (Waiting only after calls
/// that found under a quarter of a batch, as before, woke twice per wait at steady low rates:
/// once for the gathered datagrams, once for the next single one.)
pub fn coalesce(
    n: usize,
    capacity: usize,
    bytes: u64,
    interval: Duration,
    buffer: u64,
) -> Duration {
    if n == 0 || n >= capacity {
        return Duration::ZERO;
    }
    let nanos = interval.as_nanos().max(1) as u64;
    // Nanoseconds until a batch has gathered at `n / nanos` datagrams per ns.
    let batch = (capacity as u64).saturating_mul(nanos) / n as u64;
    // Nanoseconds until the buffer is a quarter full at `charged / nanos` bytes per ns.
    let charged = bytes + n as u64 * SKB_OVERHEAD;
    let fill = (buffer / 4).saturating_mul(nanos) / charged.max(1);
    let wait = Duration::from_nanos(batch.min(fill)).min(COALESCE_MAX);
    if wait < Duration::from_micros(50) {
        Duration::ZERO
    } else {
        wait
    }
}

/// A worker's loop counter and the value the watchdog saw last.
type Heartbeat = (Arc<AtomicU64>, AtomicU64);

/// One datagram worker thread.
struct DatagramWorker {
    socket: Arc<Socket>,
    writer: Writer,
    /// The store, for its clock (the error log throttle).
    store: Arc<Store>,
    counters: Counters,
    telemetry: Arc<Telemetry>,
    stop: Arc<AtomicBool>,
    bufs: sys::MmsgBuffers,
    beat: Arc<AtomicU64>,
}

impl DatagramWorker {
    /// Starts a worker thread on `socket` with its own writer; returns the thread and its
    /// heartbeat (for the watchdog).
    fn spawn(
        name: String,
        socket: Arc<Socket>,
        bufs: sys::MmsgBuffers,
        (label, signs): (&str, crate::config::GaugeSigns),
        stop: &Arc<AtomicBool>,
        sinks: &Sinks,
    ) -> io::Result<(JoinHandle<()>, Heartbeat)> {
        let t = &sinks.telemetry;
        socket.set_read_timeout(Some(IDLE_TICK))?;
        let beat = Arc::new(AtomicU64::new(0));
        let worker = DatagramWorker {
            socket,
            writer: sinks.writer(label, signs),
            store: sinks.store.clone(),
            counters: Counters::datagram(t, label),
            telemetry: t.clone(),
            stop: stop.clone(),
            bufs,
            beat: beat.clone(),
        };
        let watch = DeathWatch::new(&name, &sinks.on_death);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let _watch = watch;
            worker.run()
        })?;
        Ok((thread, (beat, AtomicU64::new(u64::MAX))))
    }

    fn run(mut self) {
        let fd = self.socket.as_raw_fd();
        let mut counted = Pending::default();
        let mut error_log = Throttle::new(Duration::from_secs(10));
        let capacity = self.bufs.capacity();
        let buffer = self.socket.recv_buffer_size().map_or(0, |b| b as u64);
        let mut woke = std::time::Instant::now();
        loop {
            self.beat.fetch_add(1, Ordering::Relaxed);
            let stopping = self.stop.load(Ordering::Acquire);
            // Once stopping, drain what the socket holds without blocking, then exit.
            let received = self.bufs.recv(fd, stopping);
            // After the wait, not before it: a datagram that arrives after a config swap (the
            // wait can last IDLE_TICK) must be parsed with the new config, and the batch's
            // clock reading is the time the datagrams were read.
            self.writer.begin_batch();
            let mut wait = Duration::ZERO;
            match received {
                Ok(n) => {
                    let before = counted.bytes;
                    for i in 0..n {
                        let (d, cut) = self.bufs.datagram(i);
                        counted.datagrams += 1;
                        counted.bytes += d.len() as u64;
                        counted.truncated += u64::from(cut);
                        #[cfg(feature = "fault-injection")]
                        if d.starts_with(FAULT) {
                            panic!("fault injected by a test datagram");
                        }
                        self.writer.ingest(d, cut);
                    }
                    let now = std::time::Instant::now();
                    if !stopping {
                        let got = counted.bytes - before;
                        wait = coalesce(n, capacity, got, now - woke, buffer);
                    }
                    woke = now;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if stopping {
                        break;
                    }
                }
                Err(e) => {
                    if stopping {
                        break;
                    }
                    if error_log.pass(self.store.now()) {
                        tracing::error!(error = %e, "recvmmsg failed (logged at most every 10s)");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            flush(
                &mut self.writer,
                &self.counters,
                &self.telemetry,
                &mut counted,
            );
            // After the flush: what was aggregated is counted before the worker waits.
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        flush(
            &mut self.writer,
            &self.counters,
            &self.telemetry,
            &mut counted,
        );
    }
}

/// A datagram that starts with this kills the worker that reads it, in a build with the
/// `fault-injection` feature (the tests' build, never a release): how the tests make a worker
/// die.
#[cfg(feature = "fault-injection")]
pub const FAULT: &[u8] = b"tallyd.fault.injection:1|c";

/// Aborts a task when dropped (when its owner task is aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds a TCP listener.
pub fn bind_tcp(cfg: &Tcp) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(
        Domain::for_address(cfg.listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&cfg.listen.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Starts a TCP listener: one task accepting, one task per connection, one writer shared.
pub fn start_tcp(cfg: &Tcp, listener: std::net::TcpListener, sinks: &Sinks) -> io::Result<Running> {
    let t = &sinks.telemetry;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let label = format!("tcp://{addr}");
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let writer = Arc::new(Mutex::new(sinks.writer(&label, cfg.gauge_signs)));
    let counters = Counters::stream(t, &label);
    let stop = Arc::new(AtomicBool::new(false));
    let open = t.tcp_connections.with_label_values(&[&label]);
    let accepted = t.tcp_accepted.with_label_values(&[&label]);
    let refused = t.tcp_refused.with_label_values(&[&label]);
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    let (max_line, idle) = (cfg.max_line_length as usize, cfg.idle_timeout);
    let tel = t.clone();
    let tick_writer = writer.clone();
    let on_death = sinks.on_death.clone();
    let task_watch = DeathWatch::new(format!("{label} accept"), &on_death);
    let conn_name = format!("{label} connection");
    let task = tokio::spawn(async move {
        let _watch = task_watch;
        // Keep the writer's epoch and config current while connections are idle.
        let _ticker = AbortOnDrop(tokio::spawn(async move {
            let mut iv = tokio::time::interval(IDLE_TICK);
            loop {
                iv.tick().await;
                lock(&tick_writer).begin_batch();
            }
        }));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refused.inc();
                continue;
            };
            accepted.inc();
            let (w, c, t, open) = (writer.clone(), counters.clone(), tel.clone(), open.clone());
            let watch = DeathWatch::new(&conn_name, &on_death);
            tokio::spawn(async move {
                let _watch = watch;
                let _permit = permit;
                open.inc();
                serve_stream(stream, &w, &c, &t, max_line, idle).await;
                open.dec();
            });
        }
    });
    tracing::info!(listener = %label, "TCP listener started");
    Ok(Running {
        drops: None,
        label,
        addr: Some(addr),
        stop,
        threads: Vec::new(),
        task: Some(task),
        sockets: Vec::new(),
        unlink: None,
        beats: Vec::new(),
    })
}

/// Reads `\n`-terminated lines from one connection. A line longer than `max_line` is dropped
/// and counted; the connection stays open. A final line without `\n` is parsed at EOF.
async fn serve_stream(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    writer: &Mutex<Writer>,
    c: &Counters,
    t: &Telemetry,
    max_line: usize,
    idle: Duration,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut discarding = false;
    loop {
        let n = match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => 0,
        };
        let eof = n == 0;
        let data = &chunk[..n];
        let mut w = lock(writer);
        let mut counted = Pending {
            bytes: n as u64,
            ..Pending::default()
        };
        w.begin_batch();
        let mut rest = data;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (head, tail) = (&rest[..nl], &rest[nl + 1..]);
            if discarding {
                discarding = false;
            } else if buf.len() + head.len() > max_line {
                too_long(&mut w, &mut buf, head, &mut counted);
            } else if buf.is_empty() {
                w.ingest(head, false);
            } else {
                buf.extend_from_slice(head);
                w.ingest(&buf, false);
                buf.clear();
            }
            rest = tail;
        }
        if !discarding {
            if buf.len() + rest.len() > max_line {
                too_long(&mut w, &mut buf, rest, &mut counted);
                discarding = true;
            } else {
                buf.extend_from_slice(rest);
            }
        }
        if eof && !discarding && !buf.is_empty() {
            w.ingest(&buf, false);
            buf.clear();
        }
        flush(&mut w, c, t, &mut counted);
        drop(w);
        if eof {
            return;
        }
    }
}

/// Counts a line longer than `max_line_length` (`buf`, what was buffered of it, then `more`)
/// and empties `buf`. What the rejected-line log may show of it is taken into `buf` first.
#[cold]
fn too_long(w: &mut Writer, buf: &mut Vec<u8>, more: &[u8], counted: &mut Pending) {
    // One byte beyond what the log shows, so it shows the line was cut.
    let shown = (crate::pipeline::REJECT_LOG_BYTES + 1).saturating_sub(buf.len());
    buf.extend_from_slice(&more[..shown.min(more.len())]);
    w.reject(ParseError::LineTooLong, buf);
    counted.too_long += 1;
    buf.clear();
}

/// Raw fds of the datagram sockets of `r` (for tests that read kernel counters).
pub fn fds(r: &Running) -> Vec<RawFd> {
    r.sockets.iter().map(|s| s.as_raw_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_waits_only_while_the_buffer_has_room() {
        // The fixed points only; `tests/coalesce.rs` checks the behaviour over whole streams.
        let ms = Duration::from_millis(1);
        // A trickle into a large buffer: the longest wait, never more.
        assert_eq!(coalesce(3, 32, 60, ms, 8 << 20), COALESCE_MAX);
        // Nothing, or a whole batch: no wait.
        assert_eq!(coalesce(0, 32, 0, ms, 8 << 20), Duration::ZERO);
        assert_eq!(coalesce(32, 32, 640, ms, 8 << 20), Duration::ZERO);
    }
}
