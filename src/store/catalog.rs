//! The series catalog, the data behind the store's registry lock: every series' key, layout
//! and place, every family's type claim and members, and the families' name order for scrapes.
//! Plain data; nothing here is touched by the hot path (writers reach it only on a cache miss).
//!
//! # Memory
//! With one metric name per series (names that embed ids, `tallyd blast --names N`) a family
//! per series is the common case, so a family costs no allocation of its own:
//!
//! - Series keys (`family '\0' labels`) live back to back in one string (`text`), not in an
//!   allocation each (which would cost malloc's header and rounding: 32 bytes for a 13-byte
//!   key). A removed key leaves garbage that is compacted away once it is half the text.
//! - A family's name is not stored: it is the first part of its first member's key. A family
//!   is 16 bytes in a slab (`Vec<Family>`), found by a hash index of 4-byte ids; its further
//!   members and its rare fields (help, bounds, window) are boxed only when present.
//! - Scrapes walk families in name order. A sorted list of family ids (`order`, 4 bytes a
//!   family) is kept instead of an ordered map (whose nodes cost about 100 bytes a family with
//!   its own name allocation); families created since it was last sorted wait in `recent`,
//!   which is sorted and merged in once it holds [`RECENT_MAX`] families, and at the start of
//!   every scrape ([`Catalog::settle`]).

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;

use super::{FamilyKind, Layout};

/// Families created since `order` was last sorted that are merged in at once. Each merge
/// moves `order` (4 bytes a family) once and sorts at most this many names.
const RECENT_MAX: usize = 4096;

/// Text below this size is never compacted.
const COMPACT_MIN: usize = 64 * 1024;

/// Marks a family with no member: removed, its slot waiting to be freed.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Live,
    /// Marked idle (its mark is in the store's retiring list). Not exported; still in the
    /// index, so a lookup brings it back.
    Retiring,
    /// Slot free for reuse.
    Free,
}

/// One series. 32 bytes.
#[derive(Debug)]
pub(super) struct SeriesMeta {
    /// Where its key (`family '\0' labels`) starts in the catalog's text.
    key_at: u32,
    /// The key's length (below [`KEY_MAX`]), and the [`State`] in the top two bits.
    len_state: u32,
    /// Its family's id.
    family: u32,
    /// Position in its family's member list.
    pos: u32,
    pub(super) offset: u32,
    pub(super) layout: Layout,
    /// Expiry in stamp seconds; 0 = never.
    pub(super) ttl: u32,
}

/// [`SeriesMeta::len_state`] of a key length (below [`KEY_MAX`]) and a state.
fn len_state(len: u32, state: State) -> u32 {
    len | (state as u32) << STATE_SHIFT
}

/// Keys are shorter than this (1 GiB; see [`Catalog::has_room`]).
const KEY_MAX: u32 = 1 << STATE_SHIFT;
const STATE_SHIFT: u32 = 30;

impl SeriesMeta {
    pub(super) fn state(&self) -> State {
        match self.len_state >> STATE_SHIFT {
            0 => State::Live,
            1 => State::Retiring,
            _ => State::Free,
        }
    }

    pub(super) fn set_state(&mut self, state: State) {
        self.len_state = len_state(self.key_len(), state);
    }

    fn key_len(&self) -> u32 {
        self.len_state & (KEY_MAX - 1)
    }
}

/// A metric family: its type claim and its members. 16 bytes.
#[derive(Debug)]
pub(super) struct Family {
    pub(super) kind: FamilyKind,
    /// The first member, whose key starts with the family's name; [`NONE`] once removed.
    first: u32,
    more: Option<Box<More>>,
}

/// What only some families have: members beyond the first, help, bounds, window.
#[derive(Debug, Default)]
struct More {
    rest: Vec<u32>,
    help: Option<Arc<str>>,
    /// Histogram bounds, or a summary's quantiles.
    buckets: Option<Arc<[f64]>>,
    /// A summary's window.
    window: Duration,
}

impl Family {
    pub(super) fn help(&self) -> Option<&str> {
        self.more.as_ref().and_then(|m| m.help.as_deref())
    }

    pub(super) fn buckets(&self) -> &[f64] {
        self.more
            .as_ref()
            .and_then(|m| m.buckets.as_deref())
            .unwrap_or(&[])
    }

    /// The bounds (or quantiles) as shared with the writers.
    pub(super) fn buckets_arc(&self) -> Option<Arc<[f64]>> {
        self.more.as_ref().and_then(|m| m.buckets.clone())
    }

    pub(super) fn window(&self) -> Duration {
        self.more.as_ref().map_or(Duration::ZERO, |m| m.window)
    }

    /// Number of members.
    pub(super) fn len(&self) -> usize {
        if self.first == NONE {
            return 0;
        }
        1 + self.more.as_ref().map_or(0, |m| m.rest.len())
    }

    /// The member at `pos`.
    pub(super) fn member(&self, pos: usize) -> Option<u32> {
        match pos {
            _ if self.first == NONE => None,
            0 => Some(self.first),
            p => self.more.as_ref().and_then(|m| m.rest.get(p - 1).copied()),
        }
    }

    /// Every member, in position order.
    #[cfg(test)]
    fn members(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).filter_map(|p| self.member(p))
    }

    fn push(&mut self, id: u32) {
        if self.first == NONE {
            self.first = id;
        } else {
            self.more.get_or_insert_with(Box::default).rest.push(id);
        }
    }

    /// Removes the member at `pos`, moving the last one into its place; returns the moved id.
    fn swap_remove(&mut self, pos: usize) -> Option<u32> {
        let last = match self.more.as_mut().and_then(|m| m.rest.pop()) {
            Some(id) => id,
            None => {
                self.first = NONE;
                return None;
            }
        };
        if pos == self.len() {
            return None;
        }
        match pos {
            0 => self.first = last,
            p => {
                if let Some(slot) = self.more.as_mut().and_then(|m| m.rest.get_mut(p - 1)) {
                    *slot = last;
                }
            }
        }
        Some(last)
    }
}

/// A new family's claim and rare fields.
pub(super) struct FamilyClaim {
    pub(super) kind: FamilyKind,
    pub(super) help: Option<Arc<str>>,
    pub(super) buckets: Option<Arc<[f64]>>,
    pub(super) window: Duration,
}

/// Where a new series goes and what it is.
pub(super) struct Placement {
    pub(super) offset: u32,
    pub(super) layout: Layout,
    pub(super) ttl: u32,
}

/// Series and families (see the module docs).
pub(super) struct Catalog {
    hasher: foldhash::quality::RandomState,
    text: String,
    /// Bytes of `text` that no series' key uses any more.
    garbage: usize,
    series: Vec<SeriesMeta>,
    /// Series ids by the hash of their key.
    index: HashTable<u32>,
    free_ids: Vec<u32>,
    families: Vec<Family>,
    /// Family ids by the hash of their name.
    family_index: HashTable<u32>,
    /// Family ids in name order.
    order: Vec<u32>,
    /// Family ids created since `order` was sorted.
    recent: Vec<u32>,
    /// Families removed but still listed in `order` or `recent`: their slots are reused only
    /// once [`Catalog::settle`] has dropped them from both.
    dead: Vec<u32>,
    free_families: Vec<u32>,
}

impl Catalog {
    pub(super) fn new() -> Self {
        Self {
            hasher: foldhash::quality::RandomState::default(),
            text: String::new(),
            garbage: 0,
            series: Vec::new(),
            index: HashTable::new(),
            free_ids: Vec::new(),
            families: Vec::new(),
            family_index: HashTable::new(),
            order: Vec::new(),
            recent: Vec::new(),
            dead: Vec::new(),
            free_families: Vec::new(),
        }
    }

    /// The hash of a series key (`family '\0' labels`) in the key index.
    pub(super) fn key_hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    fn key(&self, id: u32) -> &str {
        key_of(&self.text, &self.series[id as usize])
    }

    /// A series' family name.
    pub(super) fn family_name(&self, id: u32) -> &str {
        name_part(self.key(id))
    }

    /// A series' rendered labels.
    pub(super) fn labels(&self, id: u32) -> &str {
        self.key(id).split_once('\0').map_or("", |(_, l)| l)
    }

    pub(super) fn series(&self, id: u32) -> &SeriesMeta {
        &self.series[id as usize]
    }

    pub(super) fn series_mut(&mut self, id: u32) -> &mut SeriesMeta {
        &mut self.series[id as usize]
    }

    /// The series whose key is `key` (hashed with [`Catalog::key_hash`]).
    pub(super) fn find(&self, hash: u64, key: &str) -> Option<u32> {
        self.index.find(hash, |&id| self.key(id) == key).copied()
    }

    /// The name of family `fid`, which must be live.
    pub(super) fn name(&self, fid: u32) -> &str {
        self.family_name(self.families[fid as usize].first)
    }

    /// The live family named `name`.
    pub(super) fn family_id(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name.as_bytes());
        self.family_index
            .find(hash, |&f| self.name(f) == name)
            .copied()
    }

    pub(super) fn family(&self, fid: u32) -> &Family {
        &self.families[fid as usize]
    }

    /// Whether the key text can take `len` more bytes (offsets are 32-bit).
    pub(super) fn has_room(&self, len: usize) -> bool {
        len < KEY_MAX as usize && self.text.len() + len <= u32::MAX as usize
    }

    /// Adds a series with key `key` (`hash` from [`Catalog::key_hash`]; see
    /// [`Catalog::has_room`]) to family `fid`, or to a new family made from `claim` (the key's
    /// first part is its name).
    pub(super) fn insert(
        &mut self,
        hash: u64,
        key: &str,
        family: Result<u32, FamilyClaim>,
        at: Placement,
    ) -> u32 {
        let key_at = self.text.len() as u32;
        self.text.push_str(key);
        let meta = SeriesMeta {
            key_at,
            len_state: len_state(key.len() as u32, State::Live),
            family: 0,
            pos: 0,
            offset: at.offset,
            layout: at.layout,
            ttl: at.ttl,
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.series[id as usize] = meta;
                id
            }
            None => {
                self.series.push(meta);
                (self.series.len() - 1) as u32
            }
        };
        let Self {
            index,
            series,
            text,
            hasher,
            ..
        } = self;
        index.insert_unique(hash, id, |&i| {
            hasher.hash_one(key_of(text, &series[i as usize]).as_bytes())
        });
        let (fid, fresh) = match family {
            Ok(fid) => (fid, false),
            Err(claim) => (self.new_family(claim), true),
        };
        let fam = &mut self.families[fid as usize];
        let pos = fam.len() as u32;
        fam.push(id);
        let m = &mut self.series[id as usize];
        m.family = fid;
        m.pos = pos;
        if fresh {
            self.index_family(fid);
        }
        id
    }

    /// A family slot, without members yet.
    fn new_family(&mut self, claim: FamilyClaim) -> u32 {
        let more = (claim.help.is_some() || claim.buckets.is_some() || !claim.window.is_zero())
            .then(|| {
                Box::new(More {
                    rest: Vec::new(),
                    help: claim.help,
                    buckets: claim.buckets,
                    window: claim.window,
                })
            });
        let fam = Family {
            kind: claim.kind,
            first: NONE,
            more,
        };
        match self.free_families.pop() {
            Some(f) => {
                self.families[f as usize] = fam;
                f
            }
            None => {
                self.families.push(fam);
                (self.families.len() - 1) as u32
            }
        }
    }

    /// Lists a family that has its first member in the name index and among the recent ones.
    fn index_family(&mut self, fid: u32) {
        let hash = self.hasher.hash_one(self.name(fid).as_bytes());
        let Self {
            family_index,
            families,
            series,
            text,
            hasher,
            ..
        } = self;
        family_index.insert_unique(hash, fid, |&f| {
            let k = key_of(text, &series[families[f as usize].first as usize]);
            hasher.hash_one(name_part(k).as_bytes())
        });
        self.recent.push(fid);
        if self.recent.len() >= RECENT_MAX {
            self.settle();
        }
    }

    /// Removes series `id` from the index and its family, and frees its slot. A family left
    /// empty is removed (its type claim goes with its last series).
    pub(super) fn remove(&mut self, id: u32) {
        let hash = self.hasher.hash_one(self.key(id).as_bytes());
        if let Ok(e) = self.index.find_entry(hash, |&i| i == id) {
            e.remove();
        }
        let (fid, pos) = {
            let m = &self.series[id as usize];
            (m.family, m.pos as usize)
        };
        if self.families[fid as usize].len() == 1 {
            // The family's name is this key's prefix: unhash it before the key goes.
            let hash = self.hasher.hash_one(self.name(fid).as_bytes());
            if let Ok(e) = self.family_index.find_entry(hash, |&f| f == fid) {
                e.remove();
            }
            self.dead.push(fid);
        }
        if let Some(moved) = self.families[fid as usize].swap_remove(pos) {
            self.series[moved as usize].pos = pos as u32;
        }
        let m = &mut self.series[id as usize];
        self.garbage += m.key_len() as usize;
        m.key_at = 0;
        m.len_state = len_state(0, State::Free);
        self.free_ids.push(id);
    }

    /// Drops removed families from the name order (freeing their slots), merges the recent
    /// ones in, and compacts the key text if it is mostly garbage. Call it after removals and
    /// before a walk in name order.
    pub(super) fn settle(&mut self) {
        if !self.dead.is_empty() {
            let families = &self.families;
            let alive = |f: &u32| families[*f as usize].first != NONE;
            self.order.retain(alive);
            self.recent.retain(alive);
            self.free_families.append(&mut self.dead);
        }
        self.merge_recent();
        if self.garbage > COMPACT_MIN && self.garbage * 2 > self.text.len() {
            self.compact();
        }
    }

    /// Sorts `recent` by name and merges it into `order`: binary searches for the places,
    /// then moves each run of `order` once, back to front.
    fn merge_recent(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut recent = std::mem::take(&mut self.recent);
        recent.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        let n = self.order.len();
        let mut order = std::mem::take(&mut self.order);
        order.resize(n + recent.len(), 0);
        let mut hi = n;
        for (j, &fid) in recent.iter().enumerate().rev() {
            let name = self.name(fid);
            let p = order[..hi].partition_point(|&f| self.name(f) < name);
            order.copy_within(p..hi, p + j + 1);
            order[p + j] = fid;
            hi = p;
        }
        self.order = order;
        recent.clear();
        self.recent = recent;
    }

    /// Rewrites the key text without its garbage.
    fn compact(&mut self) {
        let live = self.text.len() - self.garbage;
        let mut text = String::with_capacity(live);
        for m in &mut self.series {
            if m.state() == State::Free {
                continue;
            }
            let at = text.len() as u32;
            text.push_str(key_of(&self.text, m));
            m.key_at = at;
        }
        self.text = text;
        self.garbage = 0;
    }

    /// Family ids in name order from the first whose name is not below `from`. Sorted as of
    /// the last [`Catalog::settle`] (families created since are not in it).
    pub(super) fn ordered_from(&self, from: Option<&str>) -> &[u32] {
        debug_assert!(self.dead.is_empty(), "walk before settle");
        let p = from.map_or(0, |name| {
            self.order.partition_point(|&f| self.name(f) < name)
        });
        &self.order[p..]
    }

    /// Series slots, free ones included (ids are `0..slots()`).
    pub(super) fn slots(&self) -> u32 {
        self.series.len() as u32
    }

    /// A series' family.
    pub(super) fn family_of(&self, id: u32) -> u32 {
        self.series[id as usize].family
    }
}

/// The family name at the start of a series key.
fn name_part(key: &str) -> &str {
    key.split_once('\0').map_or(key, |(f, _)| f)
}

fn key_of<'a>(text: &'a str, m: &SeriesMeta) -> &'a str {
    &text[m.key_at as usize..(m.key_at + m.key_len()) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> FamilyClaim {
        FamilyClaim {
            kind: FamilyKind::Counter,
            help: None,
            buckets: None,
            window: Duration::ZERO,
        }
    }

    fn add(r: &mut Catalog, family: &str, labels: &str) -> u32 {
        let key = format!("{family}\0{labels}");
        let hash = r.key_hash(&key);
        assert_eq!(r.find(hash, &key), None);
        let fam = r.family_id(family).ok_or_else(claim);
        let id = r.insert(
            hash,
            &key,
            fam,
            Placement {
                offset: 0,
                layout: Layout::Counter,
                ttl: 0,
            },
        );
        assert_eq!(r.find(hash, &key), Some(id));
        id
    }

    fn walk(r: &mut Catalog) -> Vec<String> {
        r.settle();
        let mut out = Vec::new();
        for &f in r.ordered_from(None) {
            let fam = r.family(f);
            for id in fam.members() {
                out.push(format!("{}{{{}}}", r.family_name(id), r.labels(id)));
            }
        }
        out
    }

    #[test]
    fn families_walk_in_name_order_across_merges_and_removals() {
        let mut r = Catalog::new();
        // Enough families to merge `recent` several times on insert, in scrambled order.
        let n = RECENT_MAX * 3 + 17;
        let mut ids = Vec::new();
        for i in 0..n {
            let k = (i * 7919) % n;
            ids.push((k, add(&mut r, &format!("m{k:06}"), "")));
        }
        let names: Vec<String> = walk(&mut r);
        let mut expect: Vec<String> = (0..n).map(|k| format!("m{k:06}{{}}")).collect();
        assert_eq!(names, expect);
        // Remove every third family, then re-create some under new ids.
        for &(k, id) in &ids {
            if k % 3 == 0 {
                r.remove(id);
            }
        }
        expect.retain(|s| s[1..7].parse::<usize>().is_ok_and(|k| k % 3 != 0));
        assert_eq!(walk(&mut r), expect);
        for k in (0..n).filter(|k| k % 6 == 0) {
            add(&mut r, &format!("m{k:06}"), "again=\"1\"");
            expect.push(format!("m{k:06}{{again=\"1\"}}"));
        }
        expect.sort();
        assert_eq!(walk(&mut r), expect);
        // m000099 was removed and not re-created: a walk resumes at the next name.
        let next = r.ordered_from(Some("m000099")).first().map(|&f| r.name(f));
        assert_eq!(next, Some("m000100"));
    }

    #[test]
    fn series_and_families_stay_small() {
        // With one metric name per series, both are paid per series.
        assert_eq!(std::mem::size_of::<SeriesMeta>(), 32);
        assert_eq!(std::mem::size_of::<Family>(), 16);
    }

    #[test]
    fn members_keep_positions_through_swap_removal() {
        let mut r = Catalog::new();
        let a = add(&mut r, "fam", "a=\"1\"");
        let b = add(&mut r, "fam", "a=\"2\"");
        let c = add(&mut r, "fam", "a=\"3\"");
        let fid = r.family_id("fam").expect("family");
        r.remove(a);
        // `c` moved into the first place, and the family is still found by name.
        assert_eq!(r.family(fid).members().collect::<Vec<_>>(), vec![c, b]);
        assert_eq!(r.series(c).pos, 0);
        assert_eq!(r.family_id("fam"), Some(fid));
        r.remove(b);
        assert_eq!(r.family(fid).members().collect::<Vec<_>>(), vec![c]);
        r.remove(c);
        assert_eq!(r.family_id("fam"), None);
        assert_eq!(walk(&mut r), Vec::<String>::new());
        // The slot is reused once settled, under the new name.
        let d = add(&mut r, "other", "");
        assert_eq!(r.family_of(d), fid);
        assert_eq!(walk(&mut r), vec!["other{}".to_string()]);
    }

    #[test]
    fn key_text_is_compacted_and_keys_survive() {
        let mut r = Catalog::new();
        let long = "x".repeat(100);
        let ids: Vec<u32> = (0..2000)
            .map(|i| add(&mut r, &format!("f{i}"), &format!("l=\"{long}{i}\"")))
            .collect();
        let before = r.text.len();
        for &id in ids.iter().filter(|&&id| id % 4 != 0) {
            r.remove(id);
        }
        r.settle();
        assert!(r.text.len() < before / 2, "{} of {before}", r.text.len());
        for (i, &id) in ids.iter().enumerate().filter(|(_, id)| **id % 4 == 0) {
            let key = format!("f{i}\0l=\"{long}{i}\"");
            assert_eq!(r.find(r.key_hash(&key), &key), Some(id));
            assert_eq!(r.labels(id), format!("l=\"{long}{i}\""));
        }
    }
}
