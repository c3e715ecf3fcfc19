//! `tallyd-blast`, the load generator of tallyd's load and soak tests: paced StatsD traffic
//! over UDP from several sockets, one line per datagram or packed to a size, with a chosen
//! number of distinct names and tags. It prints what it sent, so a run can be checked against
//! what the daemon counted. A tool beside the daemon, not part of it: it uses none of the
//! daemon's library.

mod mmsg;

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Sends paced StatsD counter lines over UDP and prints what it sent.
#[derive(Debug, Clone, Parser)]
#[command(name = "tallyd-blast", version)]
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
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
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

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 32;

/// Lines are prepared once when there are at most this many distinct ones.
const TABLE_LINES: u64 = 1 << 20;

/// The `n`th line of the stream: `<prefix>.<n % names>:1|c`, with `tags` tags whose values
/// cycle through four per name.
fn write_line(a: &BlastArgs, n: u64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let names = a.names.max(1);
    let _ = write!(out, "{}.{}:1|c", a.prefix, n % names);
    if a.tags > 0 {
        out.extend_from_slice(b"|#");
        for t in 0..a.tags {
            if t > 0 {
                out.push(b',');
            }
            let _ = write!(out, "k{t}:v{}", (n / names) % 4);
        }
    }
}

/// The stream's distinct lines, prepared once (the line of `n` depends on `n` modulo
/// `names`, times 4 with tags), so sending costs no formatting.
struct Lines {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    fn new(a: &BlastArgs) -> Option<Self> {
        let period = a.names.max(1) * if a.tags > 0 { 4 } else { 1 };
        if period > TABLE_LINES {
            return None;
        }
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(period as usize);
        for n in 0..period {
            write_line(a, n, &mut bytes);
            ends.push(bytes.len());
        }
        Some(Self { bytes, ends })
    }

    fn get(&self, n: u64) -> &[u8] {
        let i = (n % self.ends.len() as u64) as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
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
    // Paced, a batch holds at most a millisecond's worth of lines.
    let batch_lines = if my_rate > 0 {
        (my_rate / 1000).max(1)
    } else {
        u64::MAX
    };
    let table = Lines::new(a);
    let start = Instant::now();
    let mut sent = Sent::default();
    // Complete datagrams back to back in `out`, the `i`th ending at `ends[i].0` with
    // `ends[i].1` lines; after the last, the datagram being filled (`filling` lines).
    let mut out = Vec::with_capacity(BATCH * a.packed.max(512));
    let mut ends: Vec<(usize, u64)> = Vec::with_capacity(BATCH);
    let mut line = Vec::with_capacity(256);
    let mut n: u64 = u64::from(idx);
    let (mut produced, mut filling, mut since_send) = (0u64, 0u64, 0u64);
    loop {
        let timed_out = start.elapsed() >= a.duration;
        while !timed_out && ends.len() < BATCH && produced < my_count && since_send < batch_lines {
            line.clear();
            let l: &[u8] = match &table {
                Some(t) => t.get(n),
                None => {
                    write_line(a, n, &mut line);
                    &line
                }
            };
            let at = ends.last().map_or(0, |e| e.0);
            if a.packed > 0 && filling > 0 && out.len() - at + 1 + l.len() > a.packed {
                ends.push((out.len(), filling));
                filling = 0;
                if ends.len() == BATCH {
                    break;
                }
            }
            if filling > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(l);
            (filling, produced, since_send, n) =
                (filling + 1, produced + 1, since_send + 1, n + u64::from(of));
            if a.packed == 0 {
                ends.push((out.len(), 1));
                filling = 0;
            }
        }
        let finished = timed_out || produced >= my_count;
        // The datagram being filled goes out now if it is the last, or the only one.
        if filling > 0 && (finished || ends.is_empty()) {
            ends.push((out.len(), filling));
            filling = 0;
        }
        if let Some(&(last, _)) = ends.last() {
            let mut from = 0;
            let mut slices: Vec<&[u8]> = Vec::with_capacity(ends.len());
            for &(end, _) in &ends {
                slices.push(&out[from..end]);
                from = end;
            }
            let mut i = 0;
            while i < slices.len() {
                match mmsg::send_batch(&sock, &slices[i..]) {
                    Ok(k) if k > 0 => {
                        sent.datagrams += k as u64;
                        sent.lines += ends[i..i + k].iter().map(|e| e.1).sum::<u64>();
                        i += k;
                    }
                    _ => {
                        // Refused by the local kernel (ENOBUFS and the like): counted.
                        sent.send_errors += 1;
                        i += 1;
                    }
                }
            }
            drop(slices);
            out.drain(..last);
            ends.clear();
            since_send = filling;
        }
        if finished {
            break;
        }
        if my_rate > 0 {
            // Pace: never ahead of the schedule by more than a millisecond's worth.
            let due = Duration::from_secs_f64(produced as f64 / my_rate as f64);
            let el = start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
    }
    Ok(sent)
}

fn main() -> ExitCode {
    let args = BlastArgs::parse();
    match run(&args) {
        Ok((s, took)) => {
            println!(
                "sent lines={} datagrams={} send_errors={} seconds={:.3} lines_per_second={:.0}",
                s.lines,
                s.datagrams,
                s.send_errors,
                took.as_secs_f64(),
                s.lines as f64 / took.as_secs_f64().max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tallyd-blast: {e}");
            ExitCode::FAILURE
        }
    }
}
