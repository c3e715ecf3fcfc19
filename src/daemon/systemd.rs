//! systemd: the notify protocol (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`, the watchdog
//! ping) and socket activation (the sockets passed in `LISTEN_FDS`, and which listener each
//! belongs to). The protocols themselves are the `sd-notify` crate's; what is tallyd's is when
//! to say what, and how a passed socket is matched to a listener.
//!
//! systemd passes descriptors 3, 4, ... with `LISTEN_PID` set to our pid and `LISTEN_FDNAMES`
//! naming them. tallyd matches each to a configured listener by what the socket is bound to
//! (address for UDP and TCP, path for Unix datagram sockets), so the unit's `ListenDatagram=`
//! lines and the config's `listen` keys only have to agree. The daemon keeps every passed
//! socket for its whole life and hands listeners copies, so a listener that a reload changes or
//! adds back gets the same socket again (systemd holds it: binding its address anew fails).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use socket2::{Socket, Type};

use super::Key;

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

/// Takes the sockets systemd passed to this process (none when not socket-activated), and
/// removes the activation variables so that child processes do not inherit them.
///
/// # Safety
/// Call once, before any other thread exists: the environment is changed, which is sound only
/// while no other thread can read it, and each passed descriptor is adopted (owned and later
/// closed) by the returned sockets, so nothing else in the process may own them.
#[allow(unsafe_code)]
pub unsafe fn take_passed_sockets() -> Vec<Passed> {
    // SAFETY: the caller guarantees a single thread (see above).
    let fds = match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
        Ok(fds) => fds,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring invalid socket activation variables");
            return Vec::new();
        }
    };
    fds.map(|(fd, name)| {
        // SAFETY: systemd passed this descriptor to this process alone, `listen_fds` checked
        // `LISTEN_PID`, and the caller guarantees nothing else adopts it.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
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

/// Whether `p`, a socket passed by systemd, is the one for listener `key`: same kind, same
/// address (UDP, TCP) or path (Unix datagram).
pub(super) fn claims(key: &Key, p: &Passed) -> bool {
    match key {
        Key::Udp(u) => p.datagram && p.addr == Some(u.listen),
        Key::Tcp(t) => !p.datagram && p.addr == Some(t.listen),
        Key::Unixgram(u) => p.datagram && p.path.as_deref() == Some(u.path.as_path()),
    }
}

/// A copy (a dup) of the first passed socket that `f` accepts. The daemon keeps every socket
/// systemd passed for its whole life and hands out copies, so a listener that a reload changes
/// or adds back gets the same socket again (systemd holds it: binding its address anew fails).
pub(super) fn take_passed(passed: &[Passed], f: impl Fn(&Passed) -> bool) -> Option<Passed> {
    let p = passed.iter().find(|p| f(p))?;
    match p.socket.try_clone() {
        Ok(socket) => Some(Passed {
            socket,
            name: p.name.clone(),
            datagram: p.datagram,
            addr: p.addr,
            path: p.path.clone(),
        }),
        Err(e) => {
            tracing::warn!(name = %p.name, error = %e, "cannot duplicate a socket passed by systemd");
            None
        }
    }
}

/// Sends one notify message; the notify socket is `NOTIFY_SOCKET` (nothing is sent without
/// it), and a failure is logged at debug level only: systemd's view is advisory.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line (start-up, and the end of a reload).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic time, as `Type=notify-reload` expects.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// `WATCHDOG=1`.
pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`, for this process per
/// `WATCHDOG_PID`), if the watchdog is on and there is a notify socket to ping.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}
