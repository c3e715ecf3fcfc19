//! The per-worker pipeline: one [`Writer`] per ingest worker turns a datagram's lines into
//! writes to that worker's own shard of the store.
//!
//! - this module: the [`Writer`]: a datagram split into lines, each line's series found, the
//!   value parsed and handed to [`crate::store::write`];
//! - `cache`: the writer's cache from raw keys to resolved series;
//! - `resolve`: a raw name and tags to a series (mapping rules, [`crate::naming`], the
//!   registry), run on a cache miss only;
//! - [`stats`]: the writer's counters.
//!
//! # Finding a line's series
//! Each writer keeps its own cache (4-byte slots, keys in one arena) from raw keys to resolved
//! series, filled on a miss from the store's registry (a mutex) and emptied whole on a config
//! swap or store epoch. A line seen before is found by its bytes minus the value (its *line
//! key*), so only the value is parsed ([`crate::parse::sample_value`]); the full parser runs on
//! a miss and for lines whose outcome depends on more than the value. Nothing in the cache is
//! shared: the hot path reads only the writer's own memory and writes only its own shard.

mod cache;
pub mod relay;
mod resolve;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use cache::{Cache, Entry, Hit, LINE_KEY, Target};
pub use stats::{RECENT_LINES, REJECT_REASONS, Recent, Stats, reject_reason};

use crate::clock::Throttle;
use crate::config::live::{Live, Snapshot};
use crate::parse::tags::TagError;
use crate::parse::{self, LineInfo, LineSpan, MetricType, ParseError, Parsed, Sample};
use crate::store::arena::Shard;
use crate::store::write::{Batch, Obs, apply};
use crate::store::{Layout, Refusal, Store};
use crate::sync::{self, Ordering};

/// A worker's handle: its shard, its cache of resolved raw keys, its counters.
///
/// Not `Clone` and not shared: exactly one thread writes through a writer, which is what makes
/// the shard single-writer.
pub struct Writer {
    store: Arc<Store>,
    shard: sync::Arc<Shard>,
    live: sync::Arc<Live>,
    snap: sync::Arc<Snapshot>,
    cache: Cache,
    /// The last sample key built.
    key: Vec<u8>,
    /// The current line's line key, if it has one ([`line_split`]).
    line_key: Vec<u8>,
    /// The separator index [`Writer::ingest`] reuses for every datagram.
    seps: parse::Separators,
    /// The lines [`Writer::ingest`] has split and hashed ahead of their lookups, with their
    /// hashes (kept, so a datagram of one line does not initialize room for [`AHEAD`]).
    ahead: Vec<(LineSpan, u64)>,
    has_line_key: bool,
    /// The entry of the current line's first sample, held back from the cache until the parse
    /// tells whether it is filed under the line key or its sample key (`pending_key`); `true`
    /// when the sample key is not cached yet.
    pending: Option<(Entry, bool)>,
    pending_key: Vec<u8>,
    /// Samples the parser handed out for the current line, and the last one's type and rate.
    line_samples: u32,
    line_kind: MetricType,
    line_rate: f64,
    epoch: u64,
    batch: Batch,
    /// The `listener` label of the listener this writer serves (for the rejected-line log).
    listener: Arc<str>,
    /// Per [`ParseError`] reason: when a rejected line was last logged (at debug level).
    reject_log: Box<[Throttle; ParseError::ALL.len()]>,
    /// Signed gauge values set the gauge (DogStatsD) instead of changing it (Etsy).
    absolute_gauges: bool,
    /// Where accepted lines are copied for the relay, if one is configured.
    relay: Option<relay::RelayOut>,
    /// Counters since the last flush.
    pub stats: Stats,
}

/// How often, at most, a writer logs a rejected line of one reason (at debug level).
pub const REJECT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The most bytes of a rejected line the debug log shows.
pub const REJECT_LOG_BYTES: usize = 200;

/// A rejected line as the debug log shows it: its first [`REJECT_LOG_BYTES`] bytes, printable
/// ASCII as is (a backslash doubled), every other byte as `\xNN`, and `...` if it was cut.
pub struct Escaped<'a>(pub &'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let shown = &self.0[..self.0.len().min(REJECT_LOG_BYTES)];
        for &b in shown {
            match b {
                b'\\' => f.write_str("\\\\")?,
                0x20..=0x7e => f.write_char(char::from(b))?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        if self.0.len() > shown.len() {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A gone writer holds no cached series: never block reclamation on it.
        self.shard.seen_epoch.store(u64::MAX, Ordering::Release);
    }
}
/// Counts a resolved sample's outcome and, for a series, adds it to the shard.
#[inline]
fn settle(h: &Hit<'_>, shard: &Shard, batch: &Batch, stats: &mut Stats, s: Obs<'_>, counted: bool) {
    if let Some(t) = h.tag_errors {
        stats.tag_errors(*t);
    }
    match h.target {
        Target::Series { offset, layout } => {
            if counted {
                stats.samples[Stats::sample_kind_index(s.kind)] += 1;
            }
            apply(shard, batch, s, offset, layout, h.scale, h.buckets);
        }
        Target::Refused { reason, rule } => stats.refusal(reason, rule),
    }
}

impl Writer {
    /// A writer with its own new shard of `store`. One per ingest thread; never shared.
    pub fn new(store: &Arc<Store>, live: sync::Arc<Live>) -> Self {
        let snap = live.load();
        let mut w = Writer {
            store: store.clone(),
            shard: store.new_shard(),
            live,
            snap,
            cache: Cache::new(),
            key: Vec::with_capacity(256),
            line_key: Vec::with_capacity(256),
            seps: parse::Separators::default(),
            ahead: Vec::with_capacity(AHEAD),
            has_line_key: false,
            pending: None,
            pending_key: Vec::with_capacity(256),
            line_samples: 0,
            line_kind: MetricType::Counter,
            line_rate: 1.0,
            epoch: u64::MAX,
            batch: Batch::at(std::time::Duration::ZERO, std::time::Duration::from_secs(1)),
            listener: Arc::from(""),
            reject_log: Box::new([Throttle::new(REJECT_LOG_EVERY); ParseError::ALL.len()]),
            absolute_gauges: false,
            relay: None,
            stats: Stats::default(),
        };
        w.begin_batch();
        w
    }

    /// The same writer, reading signed gauge values as `signs` says (a listener's
    /// `gauge_signs`).
    pub fn with_gauge_signs(mut self, signs: crate::config::GaugeSigns) -> Self {
        self.absolute_gauges = signs == crate::config::GaugeSigns::Absolute;
        self
    }

    /// The same writer, copying every line the parser accepts to `relay`.
    pub fn with_relay(mut self, relay: Option<relay::RelayOut>) -> Self {
        self.relay = relay;
        self
    }

    /// Hands the relay the datagram it is packing (call after each batch, so a quiet sender's
    /// lines are not held back).
    pub fn flush_relay(&mut self) {
        if let Some(r) = &mut self.relay {
            r.flush(&mut self.stats);
        }
    }

    /// The same writer, naming `listener` (its `listener` label) in the rejected-line log.
    pub fn with_listener(mut self, listener: &str) -> Self {
        self.listener = Arc::from(listener);
        self.stats.recent.listener = self.listener.clone();
        self
    }

    /// Counts a line the listener dropped before the writer saw it (a TCP line longer than
    /// `max_line_length`: `line` is what was read of it) and, at debug level, logs it as a
    /// line the parser rejects is logged (at most once per reason per [`REJECT_LOG_EVERY`]).
    pub fn reject(&mut self, reason: ParseError, line: &[u8]) {
        self.stats.lines += 1;
        self.rejected(reason, line);
    }

    /// Counts a rejected line and logs it ([`Writer::log_rejected`]).
    #[cold]
    #[inline(never)]
    fn rejected(&mut self, reason: ParseError, line: &[u8]) {
        self.stats.parse_errors[reason.index()] += 1;
        self.log_rejected(reason, line);
    }

    /// When the debug level is on for this module, logs a rejected line: at most one line per
    /// reason per [`REJECT_LOG_EVERY`] of the store's clock, escaped and cut ([`Escaped`]).
    /// Off the hot path: only rejected lines come here, and with debug off they cost one check
    /// of the level.
    #[cold]
    #[inline(never)]
    fn log_rejected(&mut self, reason: ParseError, line: &[u8]) {
        self.stats.recent.keep(reason.index(), line);
        if tracing::enabled!(tracing::Level::DEBUG)
            && self.reject_log[reason.index()].pass(self.store.now())
        {
            tracing::debug!(
                reason = %reason.reason(),
                listener = %self.listener,
                line = %Escaped(line),
                "line rejected (logged at most once per reason per second per worker)"
            );
        }
    }

    /// Call before each batch (and at least every 100 ms while idle): picks up a new config
    /// or a store epoch (clearing the cache) and reads the clock once for the batch.
    pub fn begin_batch(&mut self) {
        if !self.live.is_current(&self.snap) {
            self.snap = self.live.load();
            self.cache.clear();
        }
        let epoch = self.store.epoch();
        if epoch != self.epoch {
            self.cache.clear();
            self.epoch = epoch;
            self.shard.seen_epoch.store(epoch, Ordering::Release);
        }
        self.batch = Batch::at(self.store.now(), self.snap.config.defaults.set_window);
        let cap = self
            .snap
            .config
            .limits
            .max_series
            .saturating_mul(2)
            .max(1024);
        if self.cache.len() > cap || self.cache.key_bytes() > CACHE_KEY_BYTES {
            self.cache.clear();
        }
    }

    /// The config snapshot this writer currently uses.
    pub fn snapshot(&self) -> &sync::Arc<Snapshot> {
        &self.snap
    }

    /// Parses and aggregates one datagram (or one stream line). With `truncated`, the last
    /// line was cut off by the buffer: it is counted as truncated and not parsed.
    pub fn ingest(&mut self, datagram: &[u8], truncated: bool) {
        let mut seps = std::mem::take(&mut self.seps);
        if truncated {
            // Rare: the same split, one line at a time, the last line counted and not parsed.
            let mut lines = parse::split_lines(datagram, &mut seps).peekable();
            while let Some(span) = lines.next() {
                if lines.peek().is_none() {
                    self.stats.lines += 1;
                    self.rejected(ParseError::Truncated, &datagram[span.start..span.end]);
                    break;
                }
                let line = &datagram[span.start..span.end];
                let hash = self.line_hash(line, span.colon_bar);
                self.split_line(line, span.colon_bar, hash);
            }
            self.seps = seps;
            return;
        }
        // Lines are split and their keys hashed up to `AHEAD` at a time, then looked up: two
        // tight loops, in which one line's work (the hash's multiplies, the table's loads)
        // overlaps the next line's instead of waiting for it.
        let mut ahead = std::mem::take(&mut self.ahead);
        let mut lines = parse::split_lines(datagram, &mut seps);
        loop {
            ahead.clear();
            self.hash_ahead(datagram, &mut lines, &mut ahead);
            self.lines_hashed(datagram, &ahead);
            if ahead.len() < AHEAD {
                break;
            }
        }
        self.seps = seps;
        self.ahead = ahead;
    }

    /// Parses and aggregates one line.
    ///
    /// A line seen before skips the parser: its bytes without the value (the line key: up to
    /// the first `:`, and from the `|` after it) look up the entry its first full parse left,
    /// and only the value is parsed; a counter's value is then added inline. The full parse
    /// runs on a miss, and files its one sample's entry under the line key when nothing but
    /// the value can change its outcome: exactly one sample, not a set (whose "value" is the
    /// member), no unknown or excess fields (counted per line), a plain value (a `:` in it is
    /// a v1.1 pack). A hit whose value the fast check refuses (a bad number, a negative
    /// counter) takes the full parse too, which counts it by reason. The parse of everything
    /// but the value depends only on those bytes and the config, and a config swap clears the
    /// cache.
    pub fn line(&mut self, line: &[u8]) {
        let colon = memchr::memchr(b':', line);
        let bar = colon.and_then(|c| memchr::memchr(b'|', &line[c + 1..]).map(|b| (c, c + 1 + b)));
        let hash = self.line_hash(line, bar);
        self.split_line(line, bar, hash);
    }

    /// The hash of a line's line key (0 if it has none).
    #[inline(always)]
    fn line_hash(&self, line: &[u8], colon_bar: Option<(usize, usize)>) -> u64 {
        match colon_bar {
            Some((c, b)) => self.cache.line_hash(&line[..=c], &line[b..]),
            None => 0,
        }
    }

    /// The first pass of [`Writer::ingest`]: up to [`AHEAD`] lines split and hashed. Its own
    /// function, as is the second pass, so the compiler inlines each pass's steps into it.
    #[inline(never)]
    fn hash_ahead(
        &self,
        datagram: &[u8],
        lines: &mut impl Iterator<Item = LineSpan>,
        ahead: &mut Vec<(LineSpan, u64)>,
    ) {
        for span in lines.take(AHEAD) {
            let hash = self.line_hash(&datagram[span.start..span.end], span.colon_bar);
            ahead.push((span, hash));
        }
    }

    /// The second pass of [`Writer::ingest`]: the hashed lines looked up and settled.
    #[inline(never)]
    fn lines_hashed(&mut self, datagram: &[u8], lines: &[(LineSpan, u64)]) {
        for &(span, hash) in lines {
            self.split_line(&datagram[span.start..span.end], span.colon_bar, hash);
        }
    }

    /// [`Writer::line`] with the line's first `:` and the first `|` after it already found
    /// ([`parse::split_lines`]), and its line key's hash ([`Writer::line_hash`]).
    #[inline(always)]
    fn split_line(&mut self, line: &[u8], colon_bar: Option<(usize, usize)>, hash: u64) {
        self.stats.lines += 1;
        let found = match colon_bar {
            Some((colon, bar)) => self.cache.line_value(hash, &line[..=colon], &line[bar..]),
            None => None,
        };
        // The common case, a counter series fed by a counter line, inline and without a
        // `Hit`: what `settle` and `apply` do for it. (`counter_value` refuses a v1.1 pack's
        // `1:2`, so the value is a plain one.)
        if let (Some((colon, bar)), Some(offset)) =
            (colon_bar, found.and_then(cache::plain_counter))
            && let Some(v) = parse::counter_value(&line[colon + 1..bar])
        {
            self.stats.cache_hits += 1;
            self.stats.samples[Stats::sample_kind_index(MetricType::Counter)] += 1;
            self.shard.add_counter(offset, v, self.batch.stamp);
            if let Some(r) = &mut self.relay {
                r.line(line, &mut self.stats);
            }
            return;
        }
        self.other_line(line, colon_bar, found);
    }

    /// [`Writer::split_line`] for any line but a known counter's: a known line key's other
    /// entries (`found`: its filed value) settle through the `Hit` they decode to, the rest
    /// takes the full parse.
    #[inline(never)]
    fn other_line(&mut self, line: &[u8], colon_bar: Option<(usize, usize)>, found: Option<u32>) {
        let split = colon_bar.filter(|&(c, b)| parse::is_single_value(&line[c + 1..b]));
        self.has_line_key = split.is_some();
        if let Some((colon, bar)) = split {
            if let Some(h) = found.map(|v| self.cache.decode(v))
                && let Target::Series { .. } = h.target
                && let Ok((value, delta)) = parse::sample_value(&line[colon + 1..bar], h.kind)
            {
                let s = Obs {
                    kind: h.kind,
                    value,
                    delta: delta && !self.absolute_gauges,
                    rate: h.rate,
                    member: "",
                };
                self.stats.cache_hits += 1;
                settle(&h, &self.shard, &self.batch, &mut self.stats, s, true);
                if let Some(r) = &mut self.relay {
                    r.line(line, &mut self.stats);
                }
                return;
            }
            self.line_key.clear();
            self.line_key.push(LINE_KEY);
            self.line_key.extend_from_slice(&line[..=colon]);
            self.line_key.extend_from_slice(&line[bar..]);
        }
        self.line_samples = 0;
        let opts = parse::ParseOptions {
            dogstatsd_tags: self.snap.config.parse.dogstatsd_tags,
        };
        // A name left empty once its tags are taken out is refused when the sample resolves
        // (counted as a parse error there); compared after the parse to log the line.
        let empty_names = self.stats.parse_errors[ParseError::EmptyName.index()];
        let refusals = (self.stats.dropped, self.stats.refused);
        let parsed = parse::parse_line(line, &opts, &mut |s| self.record(s));
        let failed = parsed.is_err();
        let one_plain_sample = matches!(parsed, Ok(Parsed::Metric(info)) if info == LineInfo::default())
            && self.line_samples == 1;
        self.file_pending(one_plain_sample);
        self.has_line_key = false;
        match parsed {
            Ok(Parsed::Metric(info)) => self.line_info(info),
            Ok(Parsed::Special(sp)) => self.special(&sp),
            Err(e) => self.rejected(e, line),
        }
        if !failed && self.stats.parse_errors[ParseError::EmptyName.index()] != empty_names {
            self.log_rejected(ParseError::EmptyName, line);
        }
        if refusals != (self.stats.dropped, self.stats.refused) {
            self.keep_refused(refusals, line);
        }
        if !failed && let Some(r) = &mut self.relay {
            r.line(line, &mut self.stats);
        }
    }

    /// Keeps `line` as a recent refusal ([`stats::Recent`]) under each dropped or refused
    /// reason whose count moved since `before` (the counts when the line's parse began).
    #[cold]
    #[inline(never)]
    fn keep_refused(&mut self, before: ([u64; 4], [u64; 2]), line: &[u8]) {
        let base = ParseError::ALL.len();
        let (dropped, refused) = (self.stats.dropped, self.stats.refused);
        let moved = (dropped.iter().zip(before.0))
            .chain(refused.iter().zip(before.1))
            .map(|(now, then)| *now != then);
        let moved: Vec<usize> = moved
            .enumerate()
            .filter_map(|(i, m)| m.then_some(base + i))
            .collect();
        for i in moved {
            self.stats.recent.keep(i, line);
        }
    }

    /// Files the held-back entry of the line's first sample: under the line key when the line
    /// was one plain sample of a series other than a set, else under its sample key (if that
    /// is not cached yet). One entry per series per writer in the common case.
    fn file_pending(&mut self, line_key: bool) {
        let Some((mut e, new)) = self.pending.take() else {
            return;
        };
        match &mut e {
            Entry::Series {
                layout, kind, rate, ..
            } if line_key && *layout != Layout::Set => {
                *kind = self.line_kind;
                *rate = self.line_rate;
                self.cache.insert(&self.line_key, e);
            }
            _ if new => self.cache.insert(&self.pending_key, e),
            _ => {}
        }
    }

    fn line_info(&mut self, info: LineInfo) {
        self.stats.unknown_fields += u64::from(info.unknown_fields);
        self.stats.ignored_rates += u64::from(info.ignored_rates);
        self.stats.tag_errors[TagError::TooManyFields as usize] +=
            u64::from(info.dropped_tag_fields);
    }

    /// Builds the cache key of a sample: type, raw name, raw tag fields, container id.
    fn build_key(&mut self, kind: u8, name: &str, tags: &[&str], extra: &str) {
        self.key.clear();
        self.key.push(kind);
        self.key.extend_from_slice(name.as_bytes());
        for t in tags {
            self.key.push(0xff);
            self.key.extend_from_slice(t.as_bytes());
        }
        self.key.push(0xfe);
        self.key.extend_from_slice(extra.as_bytes());
    }

    /// Looks the built key up in the cache, resolving and caching it on a miss, and settles
    /// the sample. The hit path clones nothing and takes no lock. The first sample of a line
    /// that has a line key is held back ([`Writer::file_pending`]) instead of cached.
    fn settle_key(
        &mut self,
        s: &Sample<'_>,
        counted: bool,
        resolve: impl FnOnce(&mut Self) -> Entry,
    ) {
        let hold = self.has_line_key && self.line_samples == 1 && counted;
        if let Some(h) = self.cache.get(self.key.as_slice()) {
            self.stats.cache_hits += 1;
            settle(
                &h,
                &self.shard,
                &self.batch,
                &mut self.stats,
                s.into(),
                counted,
            );
            if hold {
                self.pending = Some((h.to_entry(), false));
            }
            return;
        }
        self.stats.cache_misses += 1;
        let e = resolve(self);
        settle(
            &e.hit(),
            &self.shard,
            &self.batch,
            &mut self.stats,
            s.into(),
            counted,
        );
        // Limit refusals are not cached: the limit may free up, and an attacker's unique
        // names must not grow the cache.
        if matches!(
            e,
            Entry::Refused {
                reason: Refusal::MaxSeries | Refusal::MaxSeriesPerMetric,
                ..
            }
        ) {
            return;
        }
        if hold {
            self.pending_key.clone_from(&self.key);
            self.pending = Some((e, true));
        } else {
            self.cache.insert(&self.key, e);
        }
    }

    /// Aggregates one parsed sample.
    pub fn record(&mut self, s: &Sample<'_>) {
        let absolute;
        let s = if s.delta && self.absolute_gauges {
            absolute = Sample { delta: false, ..*s };
            &absolute
        } else {
            s
        };
        if self.line_samples == 1 {
            // A second sample: the line is not one sample, and this one may share the key.
            self.file_pending(false);
        }
        self.line_samples += 1;
        self.line_kind = s.kind;
        self.line_rate = s.rate;
        let cid = if self.snap.config.parse.container_id_label {
            s.container_id.unwrap_or("")
        } else {
            ""
        };
        self.build_key(s.kind as u8, s.name, s.tags.as_slice(), cid);
        self.settle_key(s, true, |w| w.resolve(s));
    }
}

/// Lines a writer splits and hashes ahead of looking them up ([`Writer::ingest`]).
const AHEAD: usize = 64;

/// A writer empties its cache when the keys in it pass this many bytes.
const CACHE_KEY_BYTES: usize = 256 << 20;
