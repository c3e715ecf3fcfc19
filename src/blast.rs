//! The load generator behind `tallyd blast`: paced StatsD traffic over UDP from several
//! sockets, one line per datagram or packed to a size, with a chosen number of distinct names
//! and tags. It prints what it sent, so a run can be checked against what the daemon counted.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Debug, Clone, clap::Args)]
pub struct BlastArgs {
    /// Target address.
    #[arg(long, default_value = "127.0.0.1:8125")]
    pub target: SocketAddr,
    /// Lines per second in total (0 = as fast as possible).
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Stop after this many lines (0 = no limit; then --duration applies).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Stop after this long.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// Distinct metric names.
    #[arg(long, default_value_t = 100)]
    pub names: u64,
    /// Tags per line (`|#k0:v,k1:v...`).
    #[arg(long, default_value_t = 0)]
    pub tags: u32,
    /// Pack lines into datagrams of at most this many bytes (0 = one line per datagram).
    #[arg(long, default_value_t = 0)]
    pub packed: usize,
    /// Sender sockets (threads); the rate is split between them.
    #[arg(long, default_value_t = 1)]
    pub senders: u32,
    /// Metric name prefix.
    #[arg(long, default_value = "blast")]
    pub prefix: String,
}

/// What was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Lines sent.
    pub lines: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Datagrams the local kernel refused (ENOBUFS and the like).
    pub send_errors: u64,
}

/// Sends traffic as described; every line is a counter increment of 1, so the daemon's total
/// over all `<prefix>_<n>_total` series must equal `lines` when nothing was lost.
pub fn run(args: &BlastArgs) -> std::io::Result<(Sent, Duration)> {
    let start = Instant::now();
    let senders = args.senders.max(1);
    let handles: Vec<_> = (0..senders)
        .map(|i| {
            let a = args.clone();
            std::thread::spawn(move || sender(&a, i, senders))
        })
        .collect();
    let mut total = Sent::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| std::io::Error::other("sender panicked"))??;
        total.lines += s.lines;
        total.datagrams += s.datagrams;
        total.send_errors += s.send_errors;
    }
    Ok((total, start.elapsed()))
}

fn sender(a: &BlastArgs, idx: u32, of: u32) -> std::io::Result<Sent> {
    let bind: SocketAddr = if a.target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("static");
    let sock = UdpSocket::bind(bind)?;
    sock.connect(a.target)?;
    let my_count = if a.count == 0 {
        u64::MAX
    } else {
        a.count / u64::from(of) + u64::from(u64::from(idx) < a.count % u64::from(of))
    };
    let my_rate = a.rate / u64::from(of);
    let start = Instant::now();
    let mut sent = Sent::default();
    let mut buf = Vec::with_capacity(a.packed.max(512));
    let mut line = Vec::with_capacity(256);
    let mut n: u64 = u64::from(idx);
    let mut pending = 0u64;
    let flush = |buf: &mut Vec<u8>, pending: &mut u64, sent: &mut Sent| {
        if buf.is_empty() {
            return;
        }
        match sock.send(buf) {
            Ok(_) => {
                sent.datagrams += 1;
                sent.lines += *pending;
            }
            Err(_) => sent.send_errors += 1,
        }
        buf.clear();
        *pending = 0;
    };
    while sent.lines + pending < my_count && start.elapsed() < a.duration {
        line.clear();
        use std::io::Write as _;
        let _ = write!(line, "{}.{}:1|c", a.prefix, n % a.names.max(1));
        if a.tags > 0 {
            line.extend_from_slice(b"|#");
            for t in 0..a.tags {
                if t > 0 {
                    line.push(b',');
                }
                let _ = write!(line, "k{t}:v{}", (n / a.names.max(1)) % 4);
            }
        }
        n += u64::from(of);
        if a.packed == 0 {
            buf.extend_from_slice(&line);
            pending = 1;
            flush(&mut buf, &mut pending, &mut sent);
        } else {
            if !buf.is_empty() && buf.len() + 1 + line.len() > a.packed {
                flush(&mut buf, &mut pending, &mut sent);
            }
            if !buf.is_empty() {
                buf.push(b'\n');
            }
            buf.extend_from_slice(&line);
            pending += 1;
        }
        if my_rate > 0 {
            // Pace: never ahead of the schedule by more than a millisecond's worth.
            let due = Duration::from_secs_f64((sent.lines + pending) as f64 / my_rate as f64);
            let el = start.elapsed();
            if due > el + Duration::from_millis(1) {
                flush(&mut buf, &mut pending, &mut sent);
                std::thread::sleep(due - el);
            }
        }
    }
    flush(&mut buf, &mut pending, &mut sent);
    Ok(sent)
}
