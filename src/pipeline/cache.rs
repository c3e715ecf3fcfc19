//! A writer's cache of resolved raw keys (see [`super::Writer`]), laid out for memory: every
//! worker keeps an entry for every series it has seen, so the entry is most of what a series
//! costs per worker.
//!
//! The table holds 4-byte slots (hashbrown's `HashTable`, one control byte each): where a
//! key was filed in one arena, in which each key follows its entry's value and its length (no
//! allocation, no allocator header per key). A plain entry (a counter, gauge or set series
//! with scale and rate 1, no bucket bounds, no tag errors: the common case) is that value
//! itself, any other an index into a side vector. Nothing is removed
//! one by one: a writer empties the whole cache (config swap, store epoch, size caps), which
//! resets all three. Looked up from one thread only.

use std::sync::Arc;

use std::hash::{BuildHasher as _, Hasher as _};

use hashbrown::HashTable;

use crate::parse::MetricType;
use crate::parse::tags::TagErrors;
use crate::store::{Layout, Refusal};

/// A worker's cached resolution of one raw key.
///
/// Two kinds of key map to entries (see [`super::Writer::line`]): a sample key (type, raw
/// name, tag fields, container id) and a line key (the line's bytes without its value). Only a
/// line key's entry reads `rate`: the sample rate is part of the line's bytes, so it is fixed
/// for the key, but not for a sample key.
#[derive(Debug)]
pub(super) enum Entry {
    Series {
        offset: u32,
        layout: Layout,
        kind: MetricType,
        scale: f64,
        rate: f64,
        buckets: Option<Arc<[f64]>>,
        tag_errors: TagErrors,
    },
    Refused {
        reason: Refusal,
        rule: usize,
        tag_errors: TagErrors,
    },
}

/// What a lookup found, borrowed from the cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hit<'a> {
    pub target: Target,
    /// The sample's type and rate (read for line keys only).
    pub kind: MetricType,
    pub rate: f64,
    pub scale: f64,
    pub buckets: Option<&'a [f64]>,
    pub tag_errors: Option<&'a TagErrors>,
}

/// Where a hit's samples go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Target {
    Series { offset: u32, layout: Layout },
    Refused { reason: Refusal, rule: usize },
}

impl Hit<'_> {
    /// The entry this hit was read from (the bucket bounds copied: only on a cache miss of
    /// another key for the same series).
    pub fn to_entry(self) -> Entry {
        let tag_errors = self.tag_errors.copied().unwrap_or_default();
        match self.target {
            Target::Series { offset, layout } => Entry::Series {
                offset,
                layout,
                kind: self.kind,
                scale: self.scale,
                rate: self.rate,
                buckets: self.buckets.map(Arc::from),
                tag_errors,
            },
            Target::Refused { reason, rule } => Entry::Refused {
                reason,
                rule,
                tag_errors,
            },
        }
    }
}

impl Entry {
    pub fn hit(&self) -> Hit<'_> {
        match self {
            Entry::Series {
                offset,
                layout,
                kind,
                scale,
                rate,
                buckets,
                tag_errors,
            } => Hit {
                target: Target::Series {
                    offset: *offset,
                    layout: *layout,
                },
                kind: *kind,
                rate: *rate,
                scale: *scale,
                buckets: buckets.as_deref(),
                tag_errors: (!tag_errors.is_empty()).then_some(tag_errors),
            },
            Entry::Refused {
                reason,
                rule,
                tag_errors,
            } => Hit {
                target: Target::Refused {
                    reason: *reason,
                    rule: *rule,
                },
                kind: MetricType::Counter,
                rate: 1.0,
                scale: 1.0,
                buckets: None,
                tag_errors: (!tag_errors.is_empty()).then_some(tag_errors),
            },
        }
    }

    /// The slot code of a plain entry (`1 + kind + 6 * layout`: never [`FAT`]), or `None`.
    fn plain(&self) -> Option<u32> {
        let Entry::Series {
            offset,
            layout,
            kind,
            scale,
            rate,
            buckets: None,
            tag_errors,
        } = self
        else {
            return None;
        };
        // Exhaustive, no wildcard: a new layout must be given a code here (or none) before
        // this compiles, and `PLAIN_LAYOUTS` decodes the code back.
        let code = match layout {
            Layout::Counter => 0,
            Layout::Gauge => 1,
            Layout::Set => 2,
            Layout::Histogram(_) | Layout::Summary(_) | Layout::Native(..) => return None,
        };
        debug_assert_eq!(PLAIN_LAYOUTS[code as usize], *layout);
        (*scale == 1.0 && *rate == 1.0 && tag_errors.is_empty() && *offset <= PAYLOAD)
            .then_some(1 + kind_code(*kind) + KINDS.len() as u32 * code)
    }
}

/// The first byte of a line key; a sample key starts with its type (below 16), an event's or
/// service check's with `E` or `S`.
pub(super) const LINE_KEY: u8 = 0x80;

/// A slot's value: the top five bits a code (0 = [`FAT`], else a plain entry's kind and
/// layout, see [`Entry::plain`]), the low 27 bits a plain entry's series offset or a fat
/// entry's index in the side vector.
const CODE_SHIFT: u32 = 27;
const PAYLOAD: u32 = (1 << CODE_SHIFT) - 1;
/// The code of an entry kept in the side vector.
const FAT: u32 = 0;
/// The code of a plain counter series fed by counter samples: what most lines hit.
const PLAIN_COUNTER: u32 = 1;

/// The series offset of a filed value that is a plain counter entry (kind and layout counter,
/// scale and rate 1, no tag errors): its sample is only added to the offset's counter.
#[inline(always)]
pub(super) fn plain_counter(value: u32) -> Option<u32> {
    (value >> CODE_SHIFT == PLAIN_COUNTER).then_some(value & PAYLOAD)
}

/// The layouts a plain entry may have, each at its code's place ([`Entry::plain`]).
const PLAIN_LAYOUTS: [Layout; 3] = [Layout::Counter, Layout::Gauge, Layout::Set];

/// A sample type's code: its place in [`KINDS`]. Exhaustive, so a new type must be placed.
fn kind_code(kind: MetricType) -> u32 {
    match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Timer => 2,
        MetricType::Histogram => 3,
        MetricType::Distribution => 4,
        MetricType::Set => 5,
    }
}

/// Every sample type, each at its [`kind_code`].
const KINDS: [MetricType; 6] = [
    MetricType::Counter,
    MetricType::Gauge,
    MetricType::Timer,
    MetricType::Histogram,
    MetricType::Distribution,
    MetricType::Set,
];

/// `a == b` for slices of equal length, eight bytes at a time (four, or one, below eight): keys
/// are a few dozen bytes, where a call to libc's `memcmp` costs more than the compare.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    if n < 8 {
        if n >= 4 {
            let half =
                |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().unwrap_or([0; 4]));
            return half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4);
        }
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut i = 0;
    while i + 8 <= n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    // The tail, as the last eight bytes (overlapping what was compared).
    word(a, n - 8) == word(b, n - 8)
}

/// A line key's hash, from its pieces: the bytes after its first byte up to and including the
/// first `:` (the name), then the rest. A line key is thus hashed from the line's own bytes
/// ([`Cache::line_hash`]), never copied. The first byte ([`LINE_KEY`]) is left out: a third
/// multiply in the hash's dependency chain, for keys the compare tells apart anyway.
#[inline(always)]
fn hash_parts(hasher: &foldhash::fast::RandomState, a: &[u8], b: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(a);
    h.write(b);
    h.finish()
}

/// The hash of a whole stored key: [`hash_parts`] for a line key, any other in one piece.
fn hash_key(hasher: &foldhash::fast::RandomState, key: &[u8]) -> u64 {
    match key.split_first() {
        Some((&LINE_KEY, rest)) => {
            let at = rest
                .iter()
                .position(|&c| c == b':')
                .map_or(rest.len(), |i| i + 1);
            hash_parts(hasher, &rest[..at], &rest[at..])
        }
        _ => {
            let mut h = hasher.build_hasher();
            h.write(key);
            h.finish()
        }
    }
}

/// A filed key's place in the arena: its entry's value (see [`CODE_SHIFT`]), four bytes
/// little-endian; its length, one byte (or [`LONG`] and two more); its bytes. The table holds
/// only this place (4 bytes a slot): a hit reads the value from the cache line it compares.
type Slot = u32;

/// Marks a two-byte length in the arena; any smaller byte is the length itself.
const LONG: u8 = u8::MAX;

/// The entry's value filed at `at` in `arena`.
#[inline(always)]
fn filed_value(arena: &[u8], at: Slot) -> u32 {
    let at = at as usize;
    let v = &arena[at..at + 4];
    u32::from_le_bytes([v[0], v[1], v[2], v[3]])
}

/// The key filed at `at` in `arena` (after the value, and its length).
#[inline(always)]
fn filed_key(arena: &[u8], at: Slot) -> &[u8] {
    let at = at as usize + 4;
    match arena[at] {
        LONG => {
            let long = &arena[at + 1..at + 3];
            &arena[at + 3..][..usize::from(u16::from_le_bytes([long[0], long[1]]))]
        }
        len => &arena[at + 1..][..usize::from(len)],
    }
}

/// See the module doc.
pub(super) struct Cache {
    table: HashTable<Slot>,
    keys: Vec<u8>,
    fat: Vec<Entry>,
    hasher: foldhash::fast::RandomState,
}

impl Cache {
    pub fn new() -> Self {
        Self {
            table: HashTable::new(),
            keys: Vec::new(),
            fat: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes of key held in the arena.
    pub fn key_bytes(&self) -> usize {
        self.keys.len()
    }

    /// Empties the cache, keeping no memory beyond the table's and arena's capacity.
    pub fn clear(&mut self) {
        self.table.clear();
        self.keys.clear();
        self.fat.clear();
    }

    /// The hash of the line key `LINE_KEY, name_colon, tail` ([`Cache::line_value`]).
    #[inline(always)]
    pub fn line_hash(&self, name_colon: &[u8], tail: &[u8]) -> u64 {
        hash_parts(&self.hasher, name_colon, tail)
    }

    /// Looks up a sample key (or any key, whole).
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<Hit<'_>> {
        let keys = &self.keys;
        let at = self.table.find(hash_key(&self.hasher, key), |&at| {
            let k = filed_key(keys, at);
            k.len() == key.len() && same(k, key)
        })?;
        Some(self.read(*at))
    }

    /// Looks up the line key `LINE_KEY, name_colon, tail` (`name_colon` ends at the line's
    /// first `:`, `tail` is the line from the `|` after the value).
    #[cfg(test)]
    pub fn get_line(&self, name_colon: &[u8], tail: &[u8]) -> Option<Hit<'_>> {
        let hash = self.line_hash(name_colon, tail);
        self.line_value(hash, name_colon, tail)
            .map(|v| self.decode(v))
    }

    /// [`Cache::get_line`]'s filed value, undecoded, the key's [`Cache::line_hash`] given (the
    /// writer hashes a datagram's lines ahead of their lookups, see [`super::Writer::ingest`]):
    /// [`plain_counter`] reads the common case from it without building a [`Hit`],
    /// [`Cache::decode`] any other.
    #[inline(always)]
    pub fn line_value(&self, hash: u64, name_colon: &[u8], tail: &[u8]) -> Option<u32> {
        let keys = &self.keys;
        let len = 1 + name_colon.len() + tail.len();
        // The candidates (slots whose control byte matches) compared here, inline: through
        // `HashTable::find` the compare was a call per line.
        for &at in self.table.iter_hash(hash) {
            let k = filed_key(keys, at);
            if k.len() == len
                && k[0] == LINE_KEY
                && same(&k[1..1 + name_colon.len()], name_colon)
                && same(&k[1 + name_colon.len()..], tail)
            {
                return Some(filed_value(keys, at));
            }
        }
        None
    }

    #[inline(always)]
    fn read(&self, at: Slot) -> Hit<'_> {
        self.decode(filed_value(&self.keys, at))
    }

    /// The hit a filed value stands for.
    #[inline(always)]
    pub fn decode(&self, value: u32) -> Hit<'_> {
        let (code, payload) = (value >> CODE_SHIFT, value & PAYLOAD);
        if code == FAT {
            return self.fat[payload as usize].hit();
        }
        let code = (code - 1) as usize;
        Hit {
            target: Target::Series {
                offset: payload,
                layout: PLAIN_LAYOUTS[code / KINDS.len()],
            },
            kind: KINDS[code % KINDS.len()],
            rate: 1.0,
            scale: 1.0,
            buckets: None,
            tag_errors: None,
        }
    }

    /// Files `entry` under `key`, which must not be in the cache. A key over 64 KiB (only a
    /// TCP or Unix line can be that long) or one the arena cannot address (past 4 GiB of keys)
    /// is not cached, nor an entry past the side vector's 2^27: it is resolved through the
    /// registry every time. The caller's size caps clear the cache long before either.
    pub fn insert(&mut self, key: &[u8], entry: Entry) {
        let (Ok(key_at), Ok(len)) = (u32::try_from(self.keys.len()), u16::try_from(key.len()))
        else {
            return;
        };
        if key_at.checked_add(u32::from(len) + 7).is_none() {
            return;
        }
        let value = match entry.plain() {
            Some(code) => match entry {
                Entry::Series { offset, .. } => offset | code << CODE_SHIFT,
                Entry::Refused { .. } => unreachable!("plain() is Some only for a series"),
            },
            None => {
                let Ok(index) = u32::try_from(self.fat.len()) else {
                    return;
                };
                if index > PAYLOAD {
                    return;
                }
                self.fat.push(entry);
                index | FAT << CODE_SHIFT
            }
        };
        self.keys.extend_from_slice(&value.to_le_bytes());
        match u8::try_from(len) {
            Ok(short) if short != LONG => self.keys.push(short),
            _ => {
                self.keys.push(LONG);
                self.keys.extend_from_slice(&len.to_le_bytes());
            }
        }
        self.keys.extend_from_slice(key);
        let hash = hash_key(&self.hasher, key);
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.table
            .insert_unique(hash, key_at, |&at| hash_key(hasher, filed_key(keys, at)));
    }
}

#[cfg(test)]
mod tests {
    /// Every plain layout and every sample type encodes to a code that fits the slot's five
    /// bits and decodes to itself; every other layout is kept fat.
    #[test]
    fn every_plain_code_round_trips() {
        use crate::store::Layout;
        assert_eq!(kind_code(MetricType::Counter), PLAIN_COUNTER - 1);
        let all = [
            Layout::Counter,
            Layout::Gauge,
            Layout::Set,
            Layout::Histogram(3),
            Layout::Summary(500),
        ];
        let mut cache = Cache::new();
        for layout in all {
            for kind in KINDS {
                assert_eq!(KINDS[kind_code(kind) as usize], kind);
                let e = Entry::Series {
                    offset: 42,
                    layout,
                    kind,
                    scale: 1.0,
                    rate: 1.0,
                    buckets: None,
                    tag_errors: Default::default(),
                };
                let Some(code) = e.plain() else {
                    assert!(matches!(layout, Layout::Histogram(_) | Layout::Summary(_)));
                    continue;
                };
                assert!(
                    code != FAT && code < 1 << (32 - CODE_SHIFT),
                    "{layout:?} {kind:?}"
                );
                let hit = cache.decode(code << CODE_SHIFT | 42);
                assert_eq!(
                    (hit.target, hit.kind),
                    (Target::Series { offset: 42, layout }, kind)
                );
            }
        }
        cache.clear();
    }

    use super::*;

    fn series(offset: u32, layout: Layout, kind: MetricType, scale: f64) -> Entry {
        Entry::Series {
            offset,
            layout,
            kind,
            scale,
            rate: 1.0,
            buckets: None,
            tag_errors: TagErrors::default(),
        }
    }

    #[test]
    fn slots_are_four_bytes_and_long_keys_are_not_cached() {
        // The slot is most of what a series costs a worker: growing it should be a decision.
        assert_eq!(std::mem::size_of::<Slot>(), 4);
        let mut c = Cache::new();
        let long = vec![b'x'; usize::from(u16::MAX) + 1];
        c.insert(&long, series(1, Layout::Counter, MetricType::Counter, 1.0));
        assert!(c.get(&long).is_none());
        assert_eq!((c.len(), c.key_bytes()), (0, 0));
        let max = &long[1..];
        c.insert(max, series(2, Layout::Counter, MetricType::Counter, 1.0));
        assert!(c.get(max).is_some_and(|h| h.target
            == Target::Series {
                offset: 2,
                layout: Layout::Counter
            }));
    }

    #[test]
    fn every_length_code_and_large_offset_reads_back() {
        let mut c = Cache::new();
        let kinds = [
            (Layout::Counter, MetricType::Counter),
            (Layout::Counter, MetricType::Timer),
            (Layout::Gauge, MetricType::Gauge),
            (Layout::Set, MetricType::Set),
            (Layout::Counter, MetricType::Distribution),
        ];
        // Lengths on both sides of the one-byte length's end, offsets on both sides of the
        // slot's 27-bit payload (the larger ones kept in the side vector).
        let lens = [0, 1, 7, 8, 253, 254, 255, 256, 300, 4096];
        let offsets = [0, 5, PAYLOAD - 1, PAYLOAD, PAYLOAD + 1, u32::MAX];
        let mut filed = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            for (j, &offset) in offsets.iter().enumerate() {
                let (layout, kind) = kinds[(i + j) % kinds.len()];
                let mut key = vec![b'a' + (j as u8); len];
                key.extend_from_slice(&[i as u8, j as u8]);
                c.insert(&key, series(offset, layout, kind, 1.0));
                filed.push((key, offset, layout, kind));
            }
        }
        assert_eq!(c.len(), filed.len());
        for (key, offset, layout, kind) in &filed {
            let h = c.get(key).expect("filed");
            assert_eq!(
                h.target,
                Target::Series {
                    offset: *offset,
                    layout: *layout
                },
                "{} {offset}",
                key.len()
            );
            assert_eq!((h.kind, h.scale, h.rate), (*kind, 1.0, 1.0));
            let mut other = key.clone();
            other.push(0);
            assert!(c.get(&other).is_none());
        }
    }

    #[test]
    fn same_is_slice_equality() {
        let a: Vec<u8> = (0..40).collect();
        for n in 0..40 {
            assert!(same(&a[..n], &a[..n]));
            for at in 0..n {
                let mut b = a[..n].to_vec();
                b[at] ^= 1;
                assert!(!same(&a[..n], &b), "{n} {at}");
            }
        }
    }

    #[test]
    fn plain_and_fat_entries_read_back_as_filed() {
        let mut c = Cache::new();
        c.insert(b"a", series(7, Layout::Gauge, MetricType::Gauge, 1.0));
        c.insert(b"ab", series(9, Layout::Counter, MetricType::Timer, 0.001));
        let mut errors = TagErrors::default();
        errors.add(crate::parse::tags::TagError::EmptyKey);
        c.insert(
            b"abc",
            Entry::Refused {
                reason: Refusal::Conflict,
                rule: 3,
                tag_errors: errors,
            },
        );
        assert_eq!(c.len(), 3);
        let a = c.get(b"a").unwrap();
        assert_eq!(
            a.target,
            Target::Series {
                offset: 7,
                layout: Layout::Gauge
            }
        );
        assert_eq!((a.kind, a.scale, a.rate), (MetricType::Gauge, 1.0, 1.0));
        let ab = c.get(b"ab").unwrap();
        assert_eq!((ab.kind, ab.scale), (MetricType::Timer, 0.001));
        let abc = c.get(b"abc").unwrap();
        assert_eq!(
            abc.target,
            Target::Refused {
                reason: Refusal::Conflict,
                rule: 3
            }
        );
        assert_eq!(abc.tag_errors, Some(&errors));
        assert!(c.get(b"abcd").is_none() && c.get(b"b").is_none());
        // Growth rehashes from the arena.
        for i in 0..10_000u32 {
            c.insert(
                format!("k{i}").as_bytes(),
                series(i, Layout::Counter, MetricType::Counter, 1.0),
            );
        }
        for i in (0..10_000u32).step_by(97) {
            let h = c.get(format!("k{i}").as_bytes()).unwrap();
            assert_eq!(
                h.target,
                Target::Series {
                    offset: i,
                    layout: Layout::Counter
                }
            );
        }
        // A line key, filed whole, is found from its pieces, and only so.
        let line_key = [&[LINE_KEY][..], b"name:", b"|c|#a:b"].concat();
        c.insert(
            &line_key,
            series(42, Layout::Counter, MetricType::Counter, 1.0),
        );
        let h = c.get_line(b"name:", b"|c|#a:b").unwrap();
        assert_eq!(
            h.target,
            Target::Series {
                offset: 42,
                layout: Layout::Counter
            }
        );
        assert!(c.get(&line_key).is_some());
        assert!(c.get_line(b"name:", b"|c|#a:c").is_none());
        assert!(c.get_line(b"nam:", b"e:|c|#a:b").is_none());
        c.clear();
        assert_eq!((c.len(), c.key_bytes()), (0, 0));
        assert!(c.get(b"a").is_none());
    }
}
