//! `sendmmsg`: many datagrams in one system call, which a load generator needs to outrun the
//! receiver it measures. The binary's one `unsafe` block.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Sends each of `datagrams` as one datagram on the connected socket `fd`, in one `sendmmsg`
/// call. Returns how many went out (always a prefix; the kernel stops at the first failure,
/// which the next call then reports).
pub fn send_batch(fd: &impl AsRawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            let mut h = libc::mmsghdr {
                // SAFETY: msghdr is a plain C struct for which all-zero is a valid value (no
                // address, no control data); the iovec is set below.
                msg_hdr: unsafe { std::mem::zeroed() },
                msg_len: 0,
            };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let len = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    // SAFETY: `headers` holds `len` valid mmsghdr whose single iovecs point into `iovecs` and
    // through them into the caller's slices, all alive and unmoved for this call; the kernel
    // only reads them (it writes `msg_len`, inside `headers`). No address: the socket is
    // connected.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), len, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
