//! The writer's side of the relay (`[relay]`): every line the parser accepts is copied, as
//! received, into a datagram being packed; a full datagram (and, after each batch, a partial
//! one) is handed to the relay's sender thread through a bounded queue without waiting. When
//! the queue is full the datagram's lines are dropped and counted: the relay never slows
//! ingest. Off (`None` in the writer) unless `[relay]` is configured: then a line costs one
//! copy.

use std::sync::mpsc::{SyncSender, TrySendError};

use super::Stats;

/// A datagram being packed for the relay, and the queue to its sender.
pub struct RelayOut {
    tx: SyncSender<Vec<u8>>,
    max: usize,
    buf: Vec<u8>,
    lines: u64,
}

impl RelayOut {
    /// Packs into datagrams of at most `max` bytes, handed to `tx`.
    pub fn new(tx: SyncSender<Vec<u8>>, max: usize) -> Self {
        Self {
            tx,
            max: max.max(1),
            buf: Vec::with_capacity(max),
            lines: 0,
        }
    }

    /// Adds an accepted line.
    #[inline]
    pub(super) fn line(&mut self, line: &[u8], stats: &mut Stats) {
        if line.len() > self.max {
            stats.relay_too_long += 1;
            return;
        }
        let sep = usize::from(!self.buf.is_empty());
        if self.buf.len() + sep + line.len() > self.max {
            self.flush(stats);
        }
        if !self.buf.is_empty() {
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(line);
        self.lines += 1;
    }

    /// Hands the datagram being packed to the sender, if it holds a line.
    pub(super) fn flush(&mut self, stats: &mut Stats) {
        if self.buf.is_empty() {
            return;
        }
        let datagram = std::mem::replace(&mut self.buf, Vec::with_capacity(self.max));
        match self.tx.try_send(datagram) {
            Ok(()) => {
                stats.relay_lines += self.lines;
                stats.relay_datagrams += 1;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                stats.relay_queue_full += self.lines;
            }
        }
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    /// Lines are packed up to `max`, and what the queue cannot take is counted as queue_full,
    /// never waited for: the sender here never drains its queue of one.
    #[test]
    fn packing_and_a_full_queue() {
        let (tx, rx) = sync_channel(1);
        let mut out = RelayOut::new(tx, 11);
        let mut stats = Stats::default();
        for _ in 0..3 {
            out.line(b"a:1|c", &mut stats);
        }
        // Two lines fit 11 bytes; the third started a datagram and pushed the first out.
        assert_eq!((stats.relay_lines, stats.relay_datagrams), (2, 1));
        out.line(b"too_long:1|c", &mut stats);
        assert_eq!(stats.relay_too_long, 1);
        // The queue holds the first datagram: the second is dropped, its line counted.
        out.flush(&mut stats);
        assert_eq!(stats.relay_queue_full, 1);
        assert_eq!(rx.try_recv().unwrap(), b"a:1|c\na:1|c");
        // Room again: the next datagram goes.
        out.line(b"b:2|g", &mut stats);
        out.flush(&mut stats);
        assert_eq!((stats.relay_lines, stats.relay_datagrams), (3, 2));
        assert_eq!(rx.try_recv().unwrap(), b"b:2|g");
        // A sender that is gone drops and counts like a full queue.
        drop(rx);
        out.line(b"c:3|c", &mut stats);
        out.flush(&mut stats);
        assert_eq!(stats.relay_queue_full, 2);
    }
}
