//! The floor for the end-to-end load test: a minimal UDP receiver that only counts lines.
//!
//! One socket, `recvmmsg` of 32 datagrams into 64 KiB buffers (tallyd's defaults), the same
//! receive buffer request as tallyd (SO_RCVBUFFORCE, then SO_RCVBUF), lines counted with
//! memchr, nothing else. On SIGTERM, or after `idle_seconds` without a datagram, it prints
//! `minrecv lines=.. datagrams=.. cpu_seconds=..` (CPU time from getrusage) and exits.
//!
//! `cargo run --release --example minrecv -- 127.0.0.1:18126 [recv_buffer_bytes] [idle_seconds]`
#![allow(unsafe_code)] // raw socket calls (the minimal receiver tallyd is measured against); each block says why it holds

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).map_or("127.0.0.1:18126", String::as_str);
    let rcvbuf: libc::c_int = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8 << 20);
    let idle = Duration::from_secs(args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10));
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let fd = sock.as_raw_fd();
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid fd and a pointer to a c_int with its size.
        let r =
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const rcvbuf).cast(), 4) };
        if r == 0 {
            break;
        }
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    println!("minrecv listening on {}", sock.local_addr()?);
    const BATCH: usize = 32;
    const SIZE: usize = 65536;
    let mut bufs = vec![0u8; BATCH * SIZE];
    let mut iov: Vec<libc::iovec> = bufs
        .chunks_mut(SIZE)
        .map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: SIZE,
        })
        .collect();
    // SAFETY: mmsghdr is a plain C struct for which all-zero is valid.
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
    }
    let (mut lines, mut datagrams, mut last) = (0u64, 0u64, Instant::now());
    while !STOP.load(Ordering::Relaxed) && last.elapsed() < idle {
        // SAFETY: BATCH headers whose iovecs point into `bufs`, all alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        for (i, h) in hdrs.iter().enumerate().take(n.max(0) as usize) {
            let d = &bufs[i * SIZE..i * SIZE + (h.msg_len as usize).min(SIZE)];
            lines += memchr::memchr_iter(b'\n', d).count() as u64
                + u64::from(d.last().is_some_and(|&b| b != b'\n'));
            datagrams += 1;
            last = Instant::now();
        }
    }
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "minrecv lines={lines} datagrams={datagrams} cpu_seconds={:.6} user={:.6} sys={:.6}",
        secs(ru.ru_utime) + secs(ru.ru_stime),
        secs(ru.ru_utime),
        secs(ru.ru_stime)
    );
    Ok(())
}
