//! A datagram split into lines, and each line's first `:` and the `|` after it found, in one
//! pass over an index of the datagram's separators.
//!
//! One way per job: the datagram's `\n`, `:` and `|` are found here with SIMD compares
//! (`wide`), sixteen bytes at a time; a search inside one line (a field's `|`, a pack's `:`)
//! is `memchr`'s. The index is what the hot path needs: every byte read once, no line's search
//! waiting for the previous line's end (`benches/hotpath.rs` measures the whole path).

use wide::u8x16;

/// Splits a datagram into lines: `\n`-separated, a trailing `\r` stripped, empty lines skipped.
/// The same lines as [`split_lines`], which it runs with an index of its own (a caller that
/// splits many datagrams keeps one [`Separators`] and calls [`split_lines`]).
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut seps = Separators::default();
    let spans: Vec<LineSpan> = split_lines(datagram, &mut seps).collect();
    spans.into_iter().map(|s| &datagram[s.start..s.end])
}

/// Where a line of [`split_lines`] is in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSpan {
    /// The line's first byte.
    pub start: usize,
    /// Past the line's last byte (a trailing `\r` left out).
    pub end: usize,
    /// The places of the line's first `:` and of the first `|` after it (`None` unless both
    /// are there), from the line's start.
    pub colon_bar: Option<(usize, usize)>,
}

/// The lines of [`lines`], as places in the datagram ([`LineSpan`]): they can be kept without
/// borrowing it.
///
/// The datagram's separators are indexed first ([`Separators`]): every byte is read once, and
/// no block's bits depend on another's. Lines are then found from the index's bits. Searching
/// line by line instead makes each line's search wait for the last one's end, three searches
/// per line in a row: the split took a quarter of the line-key path's time that way.
pub fn split_lines<'a>(datagram: &'a [u8], seps: &'a mut Separators) -> LineSpans<'a> {
    seps.index(datagram);
    LineSpans {
        datagram,
        seps,
        at: 0,
    }
}

/// The iterator of [`split_lines`]. A named type, so that its `next` is inlined into the
/// caller's loop: a closure's was not once the caller lived in another module, and the call
/// per line cost a third of the known-counter path.
#[derive(Debug)]
pub struct LineSpans<'a> {
    datagram: &'a [u8],
    seps: &'a Separators,
    at: usize,
}

impl Iterator for LineSpans<'_> {
    type Item = LineSpan;

    #[inline(always)]
    fn next(&mut self) -> Option<LineSpan> {
        let len = self.datagram.len();
        while self.at < len {
            let start = self.at;
            let (end, colon_bar) = self.seps.line_at(start, len);
            self.at = end + 1;
            // A stripped `\r` is the last byte, after any `|`.
            let end = if end > start && self.datagram[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            if end > start {
                return Some(LineSpan {
                    start,
                    end,
                    colon_bar,
                });
            }
        }
        None
    }
}

/// Where a datagram's separators are: for each 64-byte block, a bit per byte that is a `\n`,
/// one per `:` and one per `|`. A writer keeps one and reuses it, so indexing allocates nothing
/// once it has seen its largest datagram.
#[derive(Debug, Default)]
pub struct Separators {
    blocks: Vec<[u64; 3]>,
}

impl Separators {
    const NL: usize = 0;
    const COLON: usize = 1;
    const BAR: usize = 2;

    /// Indexes `d` (the last block's bytes past its end count as none of the three).
    fn index(&mut self, d: &[u8]) {
        self.blocks.clear();
        let mut chunks = d.chunks_exact(64);
        for c in &mut chunks {
            self.blocks.push(block_bits(c));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 64];
            last[..rest.len()].copy_from_slice(rest);
            self.blocks.push(block_bits(&last));
        }
        // A block of none past the end: a window ([`Separators::line_at`]) may reach into it.
        self.blocks.push([0; 3]);
    }

    /// The end of the line that starts at `start` (its `\n`, or `len`, the datagram's end) and
    /// the places of its first `:` and the first `|` after it, relative to `start`.
    ///
    /// A line that ends within 64 bytes is read from one 64-bit window of each kind's bits
    /// (two blocks' words shifted together): no loop, and no search that waits for another.
    #[inline(always)]
    fn line_at(&self, start: usize, len: usize) -> (usize, Option<(usize, usize)>) {
        let (block, shift) = (start / 64, (start % 64) as u32);
        let (lo, hi) = match self.blocks.get(block..block + 2) {
            Some(&[lo, hi]) => (lo, hi),
            _ => return self.line_searched(start, len),
        };
        // Bits `start..start + 64` of a kind (the second shift in two steps: none at 0).
        let window = |kind: usize| (lo[kind] >> shift) | ((hi[kind] << 1) << (63 - shift));
        let nl = window(Self::NL);
        let end = if nl != 0 {
            nl.trailing_zeros()
        } else if len - start <= 64 {
            (len - start) as u32
        } else {
            return self.line_searched(start, len);
        };
        if end == 0 {
            return (start, None);
        }
        let inside = u64::MAX >> (64 - end);
        let colons = window(Self::COLON) & inside;
        if colons == 0 {
            return (start + end as usize, None);
        }
        let colon = colons.trailing_zeros();
        let bars = window(Self::BAR) & inside & ((u64::MAX << colon) << 1);
        let split = (bars != 0).then(|| (colon as usize, bars.trailing_zeros() as usize));
        (start + end as usize, split)
    }

    /// [`Separators::line_at`] for any line, block by block.
    fn line_searched(&self, start: usize, len: usize) -> (usize, Option<(usize, usize)>) {
        let end = self.first(Self::NL, start, len).unwrap_or(len);
        let split = self.first(Self::COLON, start, end).and_then(|c| {
            self.first(Self::BAR, c + 1, end)
                .map(|b| (c - start, b - start))
        });
        (end, split)
    }

    /// The first byte of separator `kind` in `from..to` (`to` within the indexed datagram).
    #[inline(always)]
    fn first(&self, kind: usize, from: usize, to: usize) -> Option<usize> {
        let mut block = from / 64;
        let mut bits = self.blocks.get(block)?[kind] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                let at = block * 64 + bits.trailing_zeros() as usize;
                return (at < to).then_some(at);
            }
            block += 1;
            if block * 64 >= to {
                return None;
            }
            bits = self.blocks[block][kind];
        }
    }
}

/// The separator bits of one 64-byte block ([`Separators`]), sixteen bytes at a time (one
/// vector compare and mask per separator: SSE2 on x86-64, NEON on aarch64, through `wide`'s
/// safe types). Gathering the bits eight bytes at a time with integer arithmetic took 11% of
/// the line-key path's time in its profile, against 3% this way.
#[inline(always)]
fn block_bits(block: &[u8]) -> [u64; 3] {
    let mut bits = [0u64; 3];
    for (i, v) in block.chunks_exact(16).enumerate() {
        let v = u8x16::new(v.try_into().unwrap_or([0; 16]));
        for (b, sep) in bits.iter_mut().zip([b'\n', b':', b'|']) {
            *b |= u64::from(v.simd_eq(u8x16::splat(sep)).to_bitmask()) << (16 * i);
        }
    }
    bits
}
