//! The socket system calls the standard library and socket2 do not offer: batched
//! `recvmmsg`, `SO_MEMINFO` (kernel drops), `SO_RCVBUFFORCE`. One of the few modules allowed
//! `unsafe` (the crate denies it elsewhere); every block says why it holds.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// One `mmsghdr` per iovec, each pointing at its iovec (no address, no control data). The
/// headers hold raw pointers into `iovecs`, which must stay alive and unmoved while they are
/// used.
fn headers_for(iovecs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

/// Bytes between the end of one datagram buffer and the start of the next: seven cache lines,
/// so that buffers of 64 KiB do not all start in the same cache sets. Without it the first
/// lines of all 32 datagrams of a batch (and whatever else maps there) compete for the same
/// 8 (L1) or 16 (L2) ways, and a worker reads its datagrams back from further away.
const STAGGER: usize = 7 * 64;

/// Reused buffers and headers for one `recvmmsg` call of up to `batch` datagrams.
pub struct MmsgBuffers {
    bufs: Vec<u8>,
    size: usize,
    /// `size` + [`STAGGER`]: where buffer `i` starts is `i * stride`.
    stride: usize,
    // The iovecs point into `bufs` and the headers into `iovecs`; neither Vec is resized after
    // construction, so the pointers stay valid for the struct's life.
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers only point into the struct's own heap buffers.
unsafe impl Send for MmsgBuffers {}

impl MmsgBuffers {
    /// `batch` buffers of `size` bytes each.
    pub fn new(batch: usize, size: usize) -> Self {
        let stride = size + STAGGER;
        let mut bufs = vec![0u8; batch * stride];
        let mut iovecs: Vec<libc::iovec> = bufs
            .chunks_mut(stride)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: size,
            })
            .collect();
        let headers = headers_for(&mut iovecs);
        Self {
            bufs,
            size,
            stride,
            iovecs,
            headers,
        }
    }

    /// Datagrams one call can take.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to a batch of datagrams: blocks for the first (up to the socket's read
    /// timeout) unless `nonblocking`, then takes what is queued. Returns how many arrived.
    pub fn recv(&mut self, fd: RawFd, nonblocking: bool) -> io::Result<usize> {
        for h in &mut self.headers {
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        debug_assert_eq!(self.iovecs.len(), self.headers.len());
        let flags = libc::MSG_WAITFORONE | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: `headers` holds `len` valid mmsghdr whose iovecs point to `size`-byte
        // regions of `bufs`, all alive for this call; a null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last call and whether the kernel truncated it.
    pub fn datagram(&self, i: usize) -> (&[u8], bool) {
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(self.size);
        let start = i * self.stride;
        (
            &self.bufs[start..start + len],
            h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        )
    }
}

/// Asks for `bytes` of receive buffer, with SO_RCVBUFFORCE first (granted to root and
/// CAP_NET_ADMIN beyond `net.core.rmem_max`), then SO_RCVBUF. Returns what the kernel reports
/// (the kernel doubles the request for its bookkeeping, so a full grant reads as 2 x bytes).
pub fn set_recv_buffer(fd: &impl AsRawFd, bytes: u64) -> io::Result<u64> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: a valid fd and a pointer to a c_int with its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd and an out-pointer of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(got.max(0) as u64)
}

/// The kernel's count of datagrams dropped on this socket because its buffer was full
/// (`SK_MEMINFO_DROPS` of `SO_MEMINFO`).
pub fn socket_drops(fd: RawFd) -> Option<u64> {
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: a valid fd and an out-buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize >= (SK_MEMINFO_DROPS + 1) * 4)
        .then(|| u64::from(info[SK_MEMINFO_DROPS]))
}
