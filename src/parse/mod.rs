//! StatsD / DogStatsD line parsing: `&[u8]` in, borrowed samples out.
//!
//! This module is pure and synchronous. It owns the wire grammar of
//! `docs/protocol.md` (`<name>:<value>[:<value>...]|<type>[|<field>]...`, the DogStatsD
//! v1.1 value pack, the Etsy multi-typed form, sample rates, tag fields, events and service
//! checks) and nothing else: it does not know about Prometheus names, label sanitising or the
//! store. Everything it hands out borrows from the input line, so the hit path allocates
//! nothing; tags stay raw byte ranges until the store resolves a series it has never seen
//! (see [`crate::store`]), which is where name-embedded tags are split off.
//!
//! Decisions where the spec leaves a choice (documented here and in the README):
//! - An empty field (`foo:1|c|`, `foo:1|c||#a:b`) is ignored, not an error.
//! - A field the grammar does not know is ignored and counted in [`LineInfo::unknown_fields`].
//! - In a v1.1 pack, one bad value rejects the whole line (no partial line is ever counted).
//! - More than [`MAX_TAG_FIELDS`] `|#` fields on one line: the extra fields are ignored and
//!   counted as a tag error.

mod lines;
pub mod tags;

pub use lines::{LineSpan, LineSpans, Separators, lines, split_lines};

use memchr::memchr;

/// The most `|#` tag fields kept from one line; more are counted as a tag error.
pub const MAX_TAG_FIELDS: usize = 4;

/// The StatsD metric type letter(s) of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `c`: a counter increment.
    Counter,
    /// `g`: a gauge set, or a delta with a leading sign.
    Gauge,
    /// `ms`: a timer observation in milliseconds, exported in seconds.
    Timer,
    /// `h`: a histogram observation, unit kept.
    Histogram,
    /// `d`: a distribution observation (treated as a histogram), unit kept.
    Distribution,
    /// `s`: a set member.
    Set,
}

impl MetricType {
    fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(match b {
            b"c" => Self::Counter,
            b"g" => Self::Gauge,
            b"ms" => Self::Timer,
            b"h" => Self::Histogram,
            b"d" => Self::Distribution,
            b"s" => Self::Set,
            _ => return None,
        })
    }

    /// The label value used for this type in tallyd's own metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Timer => "timer",
            Self::Histogram => "histogram",
            Self::Distribution => "distribution",
            Self::Set => "set",
        }
    }

    /// True for the types that feed a histogram or summary (`ms`, `h`, `d`).
    pub fn is_observer(self) -> bool {
        matches!(self, Self::Timer | Self::Histogram | Self::Distribution)
    }
}

/// Why a line was dropped. Each variant is a `reason` label of `tallyd_parse_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// No `:` or no `|`: not a StatsD line at all.
    #[error("malformed line")]
    MalformedLine,
    /// The name is empty (before or after tag extraction).
    #[error("empty metric name")]
    EmptyName,
    /// A value that is not a finite decimal number.
    #[error("invalid value")]
    InvalidValue,
    /// A counter with a negative value.
    #[error("negative counter")]
    NegativeCounter,
    /// A type other than `c g ms h d s`.
    #[error("unknown type")]
    UnknownType,
    /// `@r` with r not in (0, 1].
    #[error("invalid sample rate")]
    InvalidSampleRate,
    /// The line is not valid UTF-8.
    #[error("invalid utf-8")]
    InvalidUtf8,
    /// Several values packed for a set (`s`).
    #[error("packed set")]
    PackedSet,
    /// A malformed DogStatsD event (`_e{...}`).
    #[error("malformed event")]
    MalformedEvent,
    /// A malformed DogStatsD service check (`_sc|...`).
    #[error("malformed service check")]
    MalformedServiceCheck,
    /// A line longer than the stream listener's limit (TCP).
    #[error("line too long")]
    LineTooLong,
    /// The last line of a datagram cut off by the receive buffer (MSG_TRUNC).
    #[error("truncated")]
    Truncated,
}

impl ParseError {
    /// Every reason, in a fixed order (indexes for per-worker counters).
    pub const ALL: [ParseError; 12] = [
        Self::MalformedLine,
        Self::EmptyName,
        Self::InvalidValue,
        Self::NegativeCounter,
        Self::UnknownType,
        Self::InvalidSampleRate,
        Self::InvalidUtf8,
        Self::PackedSet,
        Self::MalformedEvent,
        Self::MalformedServiceCheck,
        Self::LineTooLong,
        Self::Truncated,
    ];

    /// The `reason` label value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MalformedLine => "malformed_line",
            Self::EmptyName => "empty_name",
            Self::InvalidValue => "invalid_value",
            Self::NegativeCounter => "negative_counter",
            Self::UnknownType => "unknown_type",
            Self::InvalidSampleRate => "invalid_sample_rate",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::PackedSet => "packed_set",
            Self::MalformedEvent => "malformed_event",
            Self::MalformedServiceCheck => "malformed_service_check",
            Self::LineTooLong => "line_too_long",
            Self::Truncated => "truncated",
        }
    }

    /// Index into [`ParseError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One sample of a metric line, borrowing from the line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The raw name as sent, name-embedded tags (InfluxDB, Librato, SignalFx) still in it.
    pub name: &'a str,
    /// The type of this sample.
    pub kind: MetricType,
    /// The value as sent (milliseconds for timers; the store converts).
    pub value: f64,
    /// For gauges: the value had a leading sign and is a delta.
    pub delta: bool,
    /// The sample rate, in (0, 1]; 1 when absent.
    pub rate: f64,
    /// For sets: the member as sent.
    pub member: &'a str,
    /// The `|#` tag fields of the line (without the `#`), at most [`MAX_TAG_FIELDS`].
    pub tags: TagFields<'a>,
    /// The `|c:` container id field, if any.
    pub container_id: Option<&'a str>,
}

/// The raw `|#` tag fields of one line, unsplit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TagFields<'a> {
    fields: [&'a str; MAX_TAG_FIELDS],
    len: u8,
}

impl<'a> TagFields<'a> {
    /// The fields, in line order.
    pub fn as_slice(&self) -> &[&'a str] {
        &self.fields[..self.len as usize]
    }

    fn push(&mut self, field: &'a str) -> bool {
        if (self.len as usize) < MAX_TAG_FIELDS {
            self.fields[self.len as usize] = field;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// Iterates every `k:v` tag of every field (split on `,`, empty items skipped).
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.as_slice()
            .iter()
            .flat_map(|f| f.split(',').filter(|t| !t.is_empty()))
    }
}

/// What a line was, besides its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LineInfo {
    /// Fields after the type that the grammar does not know (ignored).
    pub unknown_fields: u32,
    /// `|#` fields beyond [`MAX_TAG_FIELDS`] (ignored, counted as tag errors).
    pub dropped_tag_fields: u32,
    /// `@` fields that were a number outside (0, 1]: ignored, so the rate stays 1.
    pub ignored_rates: u32,
}

/// A parsed non-metric DogStatsD line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Special<'a> {
    /// `_e{title_len,text_len}:title|text|...`: only the low-cardinality fields are kept.
    Event {
        /// `t:` alert type (`info` when absent).
        alert_type: &'a str,
        /// `p:` priority (`normal` when absent).
        priority: &'a str,
        /// `|#` tags.
        tags: TagFields<'a>,
    },
    /// `_sc|name|status|...`.
    ServiceCheck {
        /// The check's name.
        name: &'a str,
        /// 0 OK, 1 warning, 2 critical, 3 unknown.
        status: u8,
        /// `|#` tags.
        tags: TagFields<'a>,
    },
}

/// Which pieces of the protocol are switched on (from `[parse]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Accept `|#` tags.
    pub dogstatsd_tags: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            dogstatsd_tags: true,
        }
    }
}

/// The result of parsing one line.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A metric line; its samples were handed to the sink.
    Metric(LineInfo),
    /// An event or service check.
    Special(Special<'a>),
}

/// Parses one line (no `\n`, `\r` already stripped), handing each sample to `sink`.
///
/// Samples are handed out only when the whole line is valid: a line is counted whole or not
/// at all.
pub fn parse_line<'a>(
    line: &'a [u8],
    opts: &ParseOptions,
    sink: &mut impl FnMut(&Sample<'a>),
) -> Result<Parsed<'a>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    if let Some(rest) = line.strip_prefix("_e{") {
        return parse_event(rest, opts).map(Parsed::Special);
    }
    if let Some(rest) = line.strip_prefix("_sc|") {
        return parse_service_check(rest, opts).map(Parsed::Special);
    }
    let colon = memchr(b':', line.as_bytes()).ok_or(ParseError::MalformedLine)?;
    let name = &line[..colon];
    let rest = &line[colon + 1..];
    let first_pipe = memchr(b'|', rest.as_bytes()).ok_or(ParseError::MalformedLine)?;
    if name.is_empty() {
        return Err(ParseError::EmptyName);
    }
    if is_etsy_form(rest, first_pipe) {
        // Validate every part first, then emit: a line is used whole or not at all.
        let mut info = LineInfo::default();
        for part in rest.split(':') {
            parse_body(name, part, opts, &mut info, &mut |_| {})?;
        }
        let mut info = LineInfo::default();
        for part in rest.split(':') {
            parse_body(name, part, opts, &mut info, sink)?;
        }
        return Ok(Parsed::Metric(info));
    }
    let mut info = LineInfo::default();
    parse_body(name, rest, opts, &mut info, sink)?;
    Ok(Parsed::Metric(info))
}

/// The Etsy multi-typed form: every `:`-separated part after the name carries its own `|`.
/// A later part must itself start `<number>|<type>`, so a `:` inside a tag or a container id
/// (`foo:1|c|#a:b|c:abc123`) never makes a line look multi-typed.
fn is_etsy_form(rest: &str, first_pipe: usize) -> bool {
    // A v1.1 pack has its `:`s before the first `|`; the Etsy form has none there.
    if memchr(b':', &rest.as_bytes()[..first_pipe]).is_some() {
        return false;
    }
    // The common case, no `:` after the type either: one part only, not multi-typed.
    let Some(colon) = memchr(b':', &rest.as_bytes()[first_pipe..]) else {
        return false;
    };
    let mut any = false;
    for p in split_ascii(&rest[first_pipe + colon + 1..], b':') {
        let mut f = split_ascii(p, b'|');
        let (Some(v), Some(t)) = (f.next(), f.next()) else {
            return false;
        };
        if parse_value(v).is_err() || MetricType::from_bytes(t.as_bytes()).is_none() {
            return false;
        }
        any = true;
    }
    any
}

/// Parses `<values>|<type>[|field]...` for `name`.
fn parse_body<'a>(
    name: &'a str,
    body: &'a str,
    opts: &ParseOptions,
    info: &mut LineInfo,
    sink: &mut impl FnMut(&Sample<'a>),
) -> Result<(), ParseError> {
    let mut fields = split_ascii(body, b'|');
    let values = fields.next().unwrap_or("");
    let kind = match fields.next() {
        Some(t) => MetricType::from_bytes(t.as_bytes()).ok_or(ParseError::UnknownType)?,
        None => return Err(ParseError::MalformedLine),
    };
    let mut rate = 1.0;
    let mut tags = TagFields::default();
    let mut container_id = None;
    for field in fields {
        let b = field.as_bytes();
        match b.first() {
            None => {}
            Some(b'@') => match parse_rate(&field[1..])? {
                Some(r) => rate = r,
                None => {
                    rate = 1.0;
                    info.ignored_rates += 1;
                }
            },
            Some(b'#') => {
                let kept = !opts.dogstatsd_tags || tags.push(&field[1..]);
                info.dropped_tag_fields += u32::from(!kept);
            }
            Some(b'c') if b.starts_with(b"c:") => container_id = Some(&field[2..]),
            Some(b'T') if b.len() > 1 && b[1..].iter().all(u8::is_ascii_digit) => {}
            Some(b'e') if b.starts_with(b"e:") => {}
            Some(b'c') if b.starts_with(b"card:") => {}
            Some(_) => info.unknown_fields += 1,
        }
    }
    let packed = memchr(b':', values.as_bytes()).is_some();
    if kind == MetricType::Set {
        if packed {
            return Err(ParseError::PackedSet);
        }
        if values.is_empty() {
            return Err(ParseError::InvalidValue);
        }
        sink(&Sample {
            name,
            kind,
            value: 0.0,
            delta: false,
            rate: 1.0,
            member: values,
            tags,
            container_id,
        });
        return Ok(());
    }
    let emit = |raw: &str| -> Result<Sample<'a>, ParseError> {
        let (value, delta) = sample_value(raw.as_bytes(), kind)?;
        Ok(Sample {
            name,
            kind,
            value,
            delta,
            rate,
            member: "",
            tags,
            container_id,
        })
    };
    if packed {
        for raw in split_ascii(values, b':') {
            emit(raw)?;
        }
        for raw in split_ascii(values, b':') {
            sink(&emit(raw)?);
        }
    } else {
        sink(&emit(values)?);
    }
    Ok(())
}

/// `s.split(sep as char)` for an ASCII separator, found with memchr: the same pieces (empty
/// ones included), without std's char searcher, whose setup costs more than the search on
/// StatsD's short fields (it was a fifth of the hot path's time in `benches/hotpath.rs`).
fn split_ascii(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    debug_assert!(sep.is_ascii());
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr(sep, r.as_bytes()) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Whether the bytes between a line's first `:` and the `|` after it are one value: not
/// empty, and no `:` (a v1.1 pack). Only such a line can be looked up by its bytes without the
/// value (the pipeline's line key), since nothing but the value then varies.
#[inline]
pub fn is_single_value(value: &[u8]) -> bool {
    // A value is a few bytes: a plain loop beats memchr's call here.
    !value.is_empty() && !value.contains(&b':')
}

/// One sample's value for a line of type `kind` (not a set, whose value is its member): a
/// number [`parse_value_bytes`] accepts, not negative on a counter; and whether it is a gauge
/// delta (`+n`/`-n`). The one value rule, used by [`parse_line`] and by the pipeline when it
/// parses only the value of a line it knows.
#[inline(always)]
pub fn sample_value(raw: &[u8], kind: MetricType) -> Result<(f64, bool), ParseError> {
    let value = parse_value_bytes(raw)?;
    if kind == MetricType::Counter && value < 0.0 {
        return Err(ParseError::NegativeCounter);
    }
    Ok((
        value,
        kind == MetricType::Gauge && matches!(raw[0], b'+' | b'-'),
    ))
}

/// [`sample_value`] of a counter line: the value, if the parser would take it.
#[inline(always)]
pub fn counter_value(raw: &[u8]) -> Option<f64> {
    sample_value(raw, MetricType::Counter).ok().map(|(v, _)| v)
}

/// A decimal number: optional sign, digits, optional fraction, optional exponent. Hex, `_`,
/// `NaN`, `Inf` and overflow are refused.
pub fn parse_value(raw: &str) -> Result<f64, ParseError> {
    parse_value_bytes(raw.as_bytes())
}

/// [`parse_value`] on bytes (not UTF-8 checked first: a value is ASCII or invalid). Inlined
/// into the line-key path, where the value is all that is parsed; decimals go out of line.
#[inline]
pub fn parse_value_bytes(b: &[u8]) -> Result<f64, ParseError> {
    let digits = match b.first() {
        Some(b'+' | b'-') => &b[1..],
        _ => b,
    };
    // std's parser accepts "inf", "nan" and "infinity"; a StatsD value starts with a digit
    // or a dot after its sign, which rules those out before parsing.
    match digits.first() {
        Some(c) if c.is_ascii_digit() || *c == b'.' => {}
        _ => return Err(ParseError::InvalidValue),
    }
    // Most values are small integers ("1"): up to 15 digits the integer is exact in an f64
    // and equals what the decimal parser returns (sign, and so -0, included).
    if digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        // Below 10^15, so through i64: one conversion instruction (u64 -> f64 takes six).
        let v = n as i64 as f64;
        return Ok(if b[0] == b'-' { -v } else { v });
    }
    parse_decimal(b)
}

#[inline(never)]
fn parse_decimal(b: &[u8]) -> Result<f64, ParseError> {
    match std::str::from_utf8(b).map(str::parse::<f64>) {
        Ok(Ok(v)) if v.is_finite() => Ok(v),
        _ => Err(ParseError::InvalidValue),
    }
}

/// A sample rate: `Some` in (0, 1]; `None` for a number outside it (`@0`, `@2`, `@1e-400`:
/// the value is sound, so the line counts at rate 1 and the ignored rate is counted, where
/// statsd_exporter does the same); an error for what is not a number (`@bar`, `@`: the line is
/// refused, as the DogStatsD agent refuses it).
fn parse_rate(raw: &str) -> Result<Option<f64>, ParseError> {
    match parse_value(raw) {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(Some(r)),
        Ok(_) => Ok(None),
        Err(_) => Err(ParseError::InvalidSampleRate),
    }
}

/// Reads the optional `|`-fields shared by events and service checks.
fn special_fields<'a>(
    fields: impl Iterator<Item = &'a str>,
    opts: &ParseOptions,
) -> (TagFields<'a>, [&'a str; 2]) {
    let mut tags = TagFields::default();
    let mut alert_type = "info";
    let mut priority = "normal";
    for f in fields {
        if let Some(t) = f.strip_prefix('#') {
            if opts.dogstatsd_tags {
                tags.push(t);
            }
        } else if let Some(t) = f.strip_prefix("t:") {
            alert_type = t;
        } else if let Some(p) = f.strip_prefix("p:") {
            priority = p;
        }
    }
    (tags, [alert_type, priority])
}

/// `_e{<title_len>,<text_len>}:<title>|<text>|...`, after the `_e{`.
fn parse_event<'a>(rest: &'a str, opts: &ParseOptions) -> Result<Special<'a>, ParseError> {
    let close = rest.find("}:").ok_or(ParseError::MalformedEvent)?;
    let (tl, xl) = rest[..close]
        .split_once(',')
        .ok_or(ParseError::MalformedEvent)?;
    let title_len: usize = tl.parse().map_err(|_| ParseError::MalformedEvent)?;
    let text_len: usize = xl.parse().map_err(|_| ParseError::MalformedEvent)?;
    let body = &rest[close + 2..];
    let text_end = title_len
        .checked_add(1)
        .and_then(|n| n.checked_add(text_len))
        .ok_or(ParseError::MalformedEvent)?;
    if body.len() < text_end
        || body.as_bytes().get(title_len) != Some(&b'|')
        || !body.is_char_boundary(text_end)
        || title_len == 0
    {
        return Err(ParseError::MalformedEvent);
    }
    let tail = &body[text_end..];
    if !tail.is_empty() && !tail.starts_with('|') {
        return Err(ParseError::MalformedEvent);
    }
    let (tags, [alert_type, priority]) = special_fields(tail.split('|').skip(1), opts);
    Ok(Special::Event {
        alert_type,
        priority,
        tags,
    })
}

/// `_sc|<name>|<status>|...`, after the `_sc|`.
fn parse_service_check<'a>(rest: &'a str, opts: &ParseOptions) -> Result<Special<'a>, ParseError> {
    let mut fields = rest.split('|');
    let name = fields
        .next()
        .filter(|n| !n.is_empty())
        .ok_or(ParseError::MalformedServiceCheck)?;
    let status = match fields.next() {
        Some("0") => 0,
        Some("1") => 1,
        Some("2") => 2,
        Some("3") => 3,
        _ => return Err(ParseError::MalformedServiceCheck),
    };
    let (tags, _) = special_fields(fields, opts);
    Ok(Special::ServiceCheck { name, status, tags })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, type, value, delta, rate, tags.
    type Row = (String, MetricType, f64, bool, f64, Vec<String>);

    fn samples(line: &str) -> Result<Vec<Row>, ParseError> {
        let mut out = Vec::new();
        parse_line(line.as_bytes(), &ParseOptions::default(), &mut |s| {
            out.push((
                s.name.to_string(),
                s.kind,
                s.value,
                s.delta,
                s.rate,
                s.tags.iter().map(str::to_string).collect(),
            ))
        })?;
        Ok(out)
    }

    #[test]
    fn errors_table() {
        for (line, want) in [
            ("foo", ParseError::MalformedLine),
            ("foo:1", ParseError::MalformedLine),
            (":1|c", ParseError::EmptyName),
            ("foo:1o|c", ParseError::InvalidValue),
            ("foo:NaN|c", ParseError::InvalidValue),
            ("foo:inf|g", ParseError::InvalidValue),
            ("foo:0x10|g", ParseError::InvalidValue),
            ("foo:1_000|g", ParseError::InvalidValue),
            ("foo:1e400|g", ParseError::InvalidValue),
            ("foo:|c", ParseError::InvalidValue),
            ("foo:-1|c", ParseError::NegativeCounter),
            ("foo:1|t", ParseError::UnknownType),
            ("foo:1|C", ParseError::UnknownType),
            ("foo:1|MS", ParseError::UnknownType),
            ("foo:1|", ParseError::UnknownType),
            ("foo:1|c|@x", ParseError::InvalidSampleRate),
            ("foo:1|c|@", ParseError::InvalidSampleRate),
            ("foo:1:2|s", ParseError::PackedSet),
            ("foo:1:x:3|ms", ParseError::InvalidValue),
        ] {
            assert_eq!(samples(line), Err(want), "{line}");
        }
        assert_eq!(
            parse_line(b"bad\xc3(:1|c", &ParseOptions::default(), &mut |_| {}).unwrap_err(),
            ParseError::InvalidUtf8
        );
    }

    #[test]
    fn a_rate_outside_zero_to_one_is_ignored_and_counted() {
        for line in [
            "foo:2|c|@0",
            "foo:2|c|@2",
            "foo:2|c|@-0.5",
            "foo:2|c|@1e-400",
        ] {
            let mut got = Vec::new();
            let parsed = parse_line(line.as_bytes(), &ParseOptions::default(), &mut |s| {
                got.push((s.value, s.rate))
            });
            let Ok(Parsed::Metric(info)) = parsed else {
                panic!("{line}: {parsed:?}");
            };
            assert_eq!((got, info.ignored_rates), (vec![(2.0, 1.0)], 1), "{line}");
        }
        // The last rate applies.
        assert_eq!(samples("foo:1|c|@0.5|@0.25").unwrap()[0].4, 0.25);
    }

    #[test]
    fn values_and_fields() {
        assert_eq!(samples("foo:2|c").unwrap()[0].2, 2.0);
        assert_eq!(samples("foo:.5|g").unwrap()[0].2, 0.5);
        assert_eq!(samples("foo:5.|g").unwrap()[0].2, 5.0);
        assert_eq!(samples("foo:1e3|g").unwrap()[0].2, 1000.0);
        let g = samples("g:-10|g").unwrap();
        assert_eq!((g[0].2, g[0].3), (-10.0, true));
        let g = samples("g:+4|g").unwrap();
        assert_eq!((g[0].2, g[0].3), (4.0, true));
        assert!(!samples("g:4|g").unwrap()[0].3);
        assert_eq!(samples("foo:1|c|@0.1").unwrap()[0].4, 0.1);
        let s = samples("foo:1|c|#env:prod,#role:web").unwrap();
        assert_eq!(s[0].5, vec!["env:prod", "#role:web"]);
        let s = samples("foo:1|c|#a:b|c:abc123|T1656581400").unwrap();
        assert_eq!(s[0].5, vec!["a:b"]);
        assert_eq!(samples("foo:1|c|").unwrap().len(), 1);
        let s = samples("foo:1:2:3|d|#env:prod").unwrap();
        assert_eq!(
            s.iter().map(|s| s.2).collect::<Vec<_>>(),
            vec![1.0, 2.0, 3.0]
        );
        let s = samples("foo:1|c:200|ms").unwrap();
        assert_eq!((s[0].1, s[0].2), (MetricType::Counter, 1.0));
        assert_eq!((s[1].1, s[1].2), (MetricType::Timer, 200.0));
        let s = samples("foo:1|c|#a:1|#b:2").unwrap();
        assert_eq!(s[0].5, vec!["a:1", "b:2"]);
    }

    #[test]
    fn integer_values_parse_as_the_decimal_parser_does() {
        let mut cases: Vec<String> = ["0", "-0", "+0", "007", "999999999999999", "1", "-1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 15 + 1) as usize;
            let n = x % 10u64.pow(digits as u32);
            let sign = ["", "+", "-"][(x % 3) as usize];
            cases.push(format!("{sign}{n:0digits$}"));
        }
        for c in &cases {
            let want: f64 = c.parse().unwrap();
            let got = parse_value(c).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{c}");
        }
        // Longer ones take the decimal parser.
        assert_eq!(
            parse_value("1234567890123456789").unwrap(),
            1234567890123456789.0
        );
    }

    #[test]
    fn split_ascii_is_str_split() {
        for s in ["", ":", "a", "a:b", ":a:", "a::b", "é:ü|x:", "1:2:3|d"] {
            for sep in [b':', b'|'] {
                let want: Vec<_> = s.split(sep as char).collect();
                assert_eq!(split_ascii(s, sep).collect::<Vec<_>>(), want, "{s:?}");
            }
        }
    }

    #[test]
    fn lines_split_crlf_and_empties() {
        let got: Vec<_> = lines(b"a:1|c\r\n\nb:2|c\n").collect();
        assert_eq!(got, vec![&b"a:1|c"[..], &b"b:2|c"[..]]);
        // Lines on both sides of the 48-byte scan, against the plain split.
        for len in [0, 1, 47, 48, 49, 50, 200] {
            for lines_n in 1..4 {
                let line = "x".repeat(len);
                let d = vec![line.as_str(); lines_n].join("\r\n") + "\n\n";
                let want: Vec<&[u8]> = d
                    .as_bytes()
                    .split(|&b| b == b'\n')
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                    .filter(|l| !l.is_empty())
                    .collect();
                assert_eq!(
                    lines(d.as_bytes()).collect::<Vec<_>>(),
                    want,
                    "{len} x {lines_n}"
                );
            }
        }
    }

    #[test]
    fn events_and_service_checks() {
        let opts = ParseOptions::default();
        match parse_line(b"_e{5,4}:title|text|t:warning", &opts, &mut |_| {}).unwrap() {
            Parsed::Special(Special::Event {
                alert_type,
                priority,
                ..
            }) => {
                assert_eq!((alert_type, priority), ("warning", "normal"));
            }
            other => panic!("{other:?}"),
        }
        match parse_line(b"_sc|db|2|#env:dev|m:timeout", &opts, &mut |_| {}).unwrap() {
            Parsed::Special(Special::ServiceCheck { name, status, tags }) => {
                assert_eq!((name, status), ("db", 2));
                assert_eq!(tags.as_slice(), &["env:dev"]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"_e{5,40}:title|text"[..],
            b"_e{x,4}:title|text",
            b"_e{99999999999999999999,1}:a|b",
            b"_sc|db|7",
            b"_sc||1",
        ] {
            assert!(parse_line(bad, &opts, &mut |_| {}).is_err());
        }
    }
}
