//! Tags: the DogStatsD `k:v` tag and the tags a name may carry (SignalFx `[k=v]`, Librato
//! `#k=v`, InfluxDB `,k=v`), split into key/value pairs, and why a tag was skipped. Runs only
//! when a worker meets a raw name it has not resolved before.

use crate::config::Parse;

/// Why a tag was skipped. Each variant is a `reason` of `tallyd_tag_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagError {
    /// `#flag`, `k` with no `:`/`=`.
    MissingValue,
    /// `:v`.
    EmptyKey,
    /// `k:`.
    EmptyValue,
    /// `__*`, `le` on a histogram, `quantile` on a summary: dropped so the exposition stays
    /// valid.
    ReservedLabel,
    /// SignalFx brackets out of order, unclosed or nested: the name is used as sent.
    MalformedBrackets,
    /// More `|#` fields than tallyd keeps.
    TooManyFields,
}

impl TagError {
    /// Every reason, in index order.
    pub const ALL: [TagError; 6] = [
        Self::MissingValue,
        Self::EmptyKey,
        Self::EmptyValue,
        Self::ReservedLabel,
        Self::MalformedBrackets,
        Self::TooManyFields,
    ];

    /// The `reason` label value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingValue => "missing_value",
            Self::EmptyKey => "empty_key",
            Self::EmptyValue => "empty_value",
            Self::ReservedLabel => "reserved_label",
            Self::MalformedBrackets => "malformed_brackets",
            Self::TooManyFields => "too_many_fields",
        }
    }
}

/// Tag errors of one raw key, a count per reason, kept in the worker's cache so a repeated line
/// is counted again without re-resolving it. `u32`, not `u8`: one 64 KiB line can carry 30,000
/// bad tags (`#a,a,a,...`), and every one of them is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagErrors(pub [u32; 6]);

impl TagErrors {
    /// Counts one error.
    pub fn add(&mut self, e: TagError) {
        let slot = &mut self.0[e as usize];
        *slot = slot.saturating_add(1);
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 6]
    }
}

/// Splits name-embedded tags off `raw` (SignalFx `[k=v]`, Librato `#k=v`, InfluxDB `,k=v`, each
/// as switched on in `[parse]`), pushing them onto `tags`. Returns the bare StatsD name.
///
/// Brackets come first, by one rule wherever they stand: the first `[` and the first `]` after
/// it, with no `[` between and no `]` before, enclose the tags, and the name is what surrounds
/// them (a later bracket is part of the name, as in statsd_exporter); Librato and InfluxDB tags
/// are then read from that name. Any other use of brackets is malformed: the name is used
/// exactly as sent, no tag syntax at all is read from it, and the error is counted.
pub fn split_name_tags(
    raw: &str,
    p: &Parse,
    tags: &mut Vec<(String, String)>,
    errors: &mut TagErrors,
) -> String {
    let stripped;
    let mut name = raw;
    if p.signalfx_tags && raw.contains(['[', ']']) {
        match signalfx(raw) {
            Some((rest, group)) => {
                kv_tags(group, '=', tags, errors);
                stripped = rest;
                name = &stripped;
            }
            None => {
                errors.add(TagError::MalformedBrackets);
                return raw.to_string();
            }
        }
    }
    if p.librato_tags
        && let Some((n, t)) = name.split_once('#')
    {
        kv_tags(t, '=', tags, errors);
        name = n;
    }
    if p.influxdb_tags
        && let Some((n, t)) = name.split_once(',')
    {
        kv_tags(t, '=', tags, errors);
        name = n;
    }
    name.to_string()
}

/// The name without its SignalFx tag group, and the group (`k=v,...`), if the brackets are well
/// formed ([`split_name_tags`]).
fn signalfx(raw: &str) -> Option<(String, &str)> {
    let open = raw.find('[')?;
    let close = raw.find(']')?;
    if close < open || raw[open + 1..close].contains('[') {
        return None;
    }
    let name = [&raw[..open], &raw[close + 1..]].concat();
    Some((name, &raw[open + 1..close]))
}

/// Parses `k<sep>v,k2<sep>v2`.
fn kv_tags(s: &str, sep: char, tags: &mut Vec<(String, String)>, errors: &mut TagErrors) {
    for t in s.split(',').filter(|t| !t.is_empty()) {
        one_tag(t, sep, tags, errors);
    }
}

/// One DogStatsD-style tag (`k:v`, split at the first separator; a leading `#` stripped).
pub fn one_tag(t: &str, sep: char, tags: &mut Vec<(String, String)>, errors: &mut TagErrors) {
    let t = t.strip_prefix('#').unwrap_or(t);
    match t.split_once(sep) {
        None => errors.add(TagError::MissingValue),
        Some(("", _)) => errors.add(TagError::EmptyKey),
        Some((_, "")) => errors.add(TagError::EmptyValue),
        Some((k, v)) => tags.push((k.to_string(), v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(raw: &str) -> (String, Vec<(String, String)>, TagErrors) {
        let mut tags = Vec::new();
        let mut e = TagErrors::default();
        let n = split_name_tags(raw, &Parse::default(), &mut tags, &mut e);
        (n, tags, e)
    }

    #[test]
    fn dialects() {
        assert_eq!(split("foo,env=prod").0, "foo");
        assert_eq!(split("foo,env=prod").1, vec![("env".into(), "prod".into())]);
        assert_eq!(split("foo#env=prod").1, vec![("env".into(), "prod".into())]);
        let (n, t, _) = split("foo.[env=prod]bar");
        assert_eq!(
            (n.as_str(), t),
            ("foo.bar", vec![("env".into(), "prod".into())])
        );
        let (n, _, e) = split("a]b[c");
        assert_eq!(
            (n.as_str(), e.0[TagError::MalformedBrackets as usize]),
            ("a]b[c", 1)
        );
        // The first group is the tags; a later bracket is part of the name.
        let (n, t, e) = split("a[b=c]]");
        assert_eq!(
            (n.as_str(), t, e.is_empty()),
            ("a]", vec![("b".into(), "c".into())], true)
        );
        let (n, t, _) = split("foo.[a=1]bar[b=2]");
        assert_eq!(
            (n.as_str(), t),
            ("foo.bar[b=2]", vec![("a".into(), "1".into())])
        );
        // Malformed: used as sent, and no other tag syntax is read from it.
        let (n, t, _) = split("[tag1=bar,tag2=bazfoo.test");
        assert_eq!((n.as_str(), t), ("[tag1=bar,tag2=bazfoo.test", vec![]));
        for bad in ["[[a=b]]", "a[b", "]["] {
            let (n, _, e) = split(bad);
            assert_eq!((n.as_str(), e.is_empty()), (bad, false), "{bad}");
        }
        assert_eq!(split("[a=b]").0, "");
    }
}
