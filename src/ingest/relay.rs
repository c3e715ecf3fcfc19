//! The relay's sender (`[relay]`): one thread that takes the datagrams the writers packed
//! ([`crate::pipeline::relay::RelayOut`]) from a bounded queue and sends them over UDP to
//! the relay address. The writers never wait for it: what does not fit in the queue is dropped
//! and counted on their side; a send that fails is counted here (`send_failed`).

use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use prometheus::IntCounter;

use crate::config::Relay;
use crate::pipeline::relay::RelayOut;

/// A running relay: the queue to its sender thread. The thread ends once every writer's
/// copy of the queue and this one are gone.
pub struct RelayHandle {
    tx: SyncSender<Vec<u8>>,
    max: usize,
    /// The address it sends to, resolved.
    pub target: std::net::SocketAddr,
}

impl RelayHandle {
    /// Resolves `cfg.address`, opens a UDP socket to it and starts the sender thread.
    pub fn start(cfg: &Relay, send_failed: IntCounter) -> std::io::Result<Self> {
        let target = cfg.address.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::other(format!("{} resolves to no address", cfg.address))
        })?;
        let local: std::net::SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().expect("static address")
        } else {
            "[::]:0".parse().expect("static address")
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(target)?;
        let (tx, rx) = sync_channel(cfg.queue);
        std::thread::Builder::new()
            .name("tallyd-relay".into())
            .spawn(move || send(sock, rx, send_failed))?;
        tracing::info!(relay = %cfg.address, target = %target, "relay started");
        Ok(Self {
            tx,
            max: cfg.max_datagram_size as usize,
            target,
        })
    }

    /// A writer's end of the relay.
    pub fn out(&self) -> RelayOut {
        RelayOut::new(self.tx.clone(), self.max)
    }
}

fn send(sock: UdpSocket, rx: Receiver<Vec<u8>>, send_failed: IntCounter) {
    for datagram in rx {
        if let Err(e) = sock.send(&datagram) {
            let lines = datagram.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            send_failed.inc_by(lines);
            tracing::debug!(error = %e, "relay send failed");
        }
    }
}
