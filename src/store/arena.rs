//! A worker's shard: a segmented array of 64-bit atomic words, written by one thread only.
//!
//! Every series owns the same word range (`offset .. offset + layout.words()`) in every shard.
//! Segments of [`SEG_WORDS`] words are allocated lazily, the first time the owning writer
//! touches them, as arrays of 128-byte aligned lines (`CachePadded`), so two shards never share
//! a cache line and a series costs its words (8 to 16 bytes for a counter) per worker, not a
//! cache line. Segments are published through `OnceBox` (Acquire/AcqRel), so a scrape that
//! sees a segment sees it zeroed and whole; a segment a writer never touched reads as zeros.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, OnceBox, Ordering, fence, load_own};

/// Words per segment (512 KiB).
#[cfg(not(loom))]
pub const SEG_WORDS: u32 = 1 << 16;
/// Segments per shard: 512 Mi words (4 GiB of address space, allocated only where written):
/// `max_series` of the largest layouts (1.7M native histograms at the default 307 words, 1M
/// summaries) before the words run out.
#[cfg(not(loom))]
pub const MAX_SEGS: usize = 8192;
/// Under loom: tiny segments, so models stay small.
#[cfg(loom)]
pub const SEG_WORDS: u32 = 32;
/// Under loom: a few segments.
#[cfg(loom)]
pub const MAX_SEGS: usize = 8;
const LINE_WORDS: usize = 16;

const SEG_LINES: usize = SEG_WORDS as usize / LINE_WORDS;

type Line = CachePadded<[AtomicU64; LINE_WORDS]>;

/// A fixed-size array, so that a word is one load past the segment pointer with no length to
/// check.
type Segment = [Line; SEG_LINES];

fn new_segment() -> Box<Segment> {
    let lines: Box<[Line]> = (0..SEG_LINES)
        .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
        .collect();
    match lines.try_into() {
        Ok(seg) => seg,
        Err(_) => unreachable!("SEG_LINES lines were collected"),
    }
}

/// One writer's words.
pub struct Shard {
    segs: Box<[OnceBox<Segment>]>,
    /// The store epoch this shard's writer has caught up with (its cache holds no series
    /// retired before it); `u64::MAX` once the writer is gone. Written by the writer with
    /// Release, read by the sweeper with Acquire.
    pub(crate) seen_epoch: CachePadded<AtomicU64>,
}

impl Shard {
    /// An empty shard whose writer starts at store epoch `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            segs: (0..MAX_SEGS).map(|_| OnceBox::new()).collect(),
            seen_epoch: CachePadded::new(AtomicU64::new(epoch)),
        }
    }

    /// The word at `offset`, allocating its segment. Only the owning writer calls this.
    #[inline]
    pub fn word(&self, offset: u32) -> &AtomicU64 {
        let seg = self.segs[(offset / SEG_WORDS) as usize].get_or_init(new_segment);
        let i = (offset % SEG_WORDS) as usize;
        &seg[i / LINE_WORDS][i % LINE_WORDS]
    }

    /// The word at `offset` if its segment exists (readers: scrape, sweep).
    #[inline]
    pub fn peek(&self, offset: u32) -> Option<&AtomicU64> {
        let seg = self.segs[(offset / SEG_WORDS) as usize].get()?;
        let i = (offset % SEG_WORDS) as usize;
        Some(&seg[i / LINE_WORDS][i % LINE_WORDS])
    }

    /// Reads word `offset`, zero if never written.
    #[inline]
    pub fn load(&self, offset: u32) -> u64 {
        self.peek(offset).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Adds to the f64 in word `offset`. Single writer: a plain load and store, no RMW.
    #[inline]
    pub fn add_f64(&self, offset: u32, v: f64) {
        let w = self.word(offset);
        w.store(
            (f64::from_bits(load_own(w)) + v).to_bits(),
            Ordering::Relaxed,
        );
    }

    /// Adds to a counter: the f64 in word `offset`, then its last-seen stamp in the next word,
    /// with one segment lookup (a series never straddles two segments). Single writer.
    #[inline]
    pub fn add_counter(&self, offset: u32, v: f64, stamp: u64) {
        debug_assert!(offset % SEG_WORDS + 1 < SEG_WORDS);
        let seg = self.segs[(offset / SEG_WORDS) as usize].get_or_init(new_segment);
        let word = |o: u32| {
            let i = (o % SEG_WORDS) as usize;
            &seg[i / LINE_WORDS][i % LINE_WORDS]
        };
        let w = word(offset);
        w.store(
            (f64::from_bits(load_own(w)) + v).to_bits(),
            Ordering::Relaxed,
        );
        word(offset + 1).store(stamp, Ordering::Relaxed);
    }

    /// Opens a seqlock write on the word at `seq`: readers retry until [`Shard::write_end`].
    #[inline]
    pub fn write_begin(&self, seq: u32) -> u64 {
        let w = self.word(seq);
        let s = load_own(w);
        w.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        s
    }

    /// Closes a seqlock write opened by [`Shard::write_begin`].
    #[inline]
    pub fn write_end(&self, seq: u32, s: u64) {
        self.word(seq).store(s.wrapping_add(2), Ordering::Release);
    }

    /// Reads `out.len()` words after the seqlock word `seq` consistently (retrying while a write
    /// is in progress). Returns false if the segment was never allocated (all zero).
    pub fn read_consistent(&self, seq: u32, out: &mut [u64]) -> bool {
        let Some(seq_word) = self.peek(seq) else {
            out.fill(0);
            return false;
        };
        loop {
            let s1 = seq_word.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                #[cfg(loom)]
                loom::thread::yield_now();
                continue;
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = self.load(seq + 1 + i as u32);
            }
            fence(Ordering::Acquire);
            if seq_word.load(Ordering::Relaxed) == s1 {
                return true;
            }
        }
    }

    /// Zeroes `len` words at `offset` (slot reclamation; no writer holds the slot then).
    pub(crate) fn zero(&self, offset: u32, len: u32) {
        for o in offset..offset + len {
            if let Some(w) = self.peek(o) {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}
