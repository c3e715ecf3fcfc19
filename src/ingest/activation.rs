//! systemd socket activation: adopting the sockets passed in `LISTEN_FDS`.
//!
//! systemd passes descriptors 3, 4, ... with `LISTEN_PID` set to our pid and
//! `LISTEN_FDNAMES` naming them. tallyd matches each to a configured listener by what the
//! socket is bound to (address for UDP and TCP, path for Unix datagram sockets), so the unit's
//! `ListenDatagram=` lines and the config's `listen` keys only have to agree. A passed socket
//! no listener claims is logged and closed. The variables are removed after reading so child
//! processes do not inherit them.

use std::net::SocketAddr;
use std::path::PathBuf;

use socket2::{Socket, Type};

/// A socket passed by systemd, with what it is bound to.
pub struct Passed {
    /// The socket.
    pub socket: Socket,
    /// Its `LISTEN_FDNAMES` entry.
    pub name: String,
    /// Datagram (true) or stream.
    pub datagram: bool,
    /// Bound IP address, for UDP and TCP.
    pub addr: Option<SocketAddr>,
    /// Bound path, for Unix sockets.
    pub path: Option<PathBuf>,
}

/// Takes the sockets systemd passed to this process (none when not socket-activated).
pub fn take() -> Vec<Passed> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    super::sys::clear_env(&["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]);
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..n)
        .map(|i| {
            // SAFETY: systemd passes fds 3..3+n to this process alone, and we take each once.
            let fd = unsafe { super::sys::adopt_fd(3 + i) };
            let socket = Socket::from(fd);
            let name = names.next().unwrap_or("").to_string();
            let datagram = socket.r#type().is_ok_and(|t| t == Type::DGRAM);
            let local = socket.local_addr().ok();
            Passed {
                addr: local.as_ref().and_then(|a| a.as_socket()),
                path: local
                    .as_ref()
                    .and_then(|a| a.as_pathname().map(PathBuf::from)),
                socket,
                name,
                datagram,
            }
        })
        .collect()
}
