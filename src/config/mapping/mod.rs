//! `[[mapping]]` rules: statsd_exporter-style globs and anchored regexes that rename a StatsD
//! name, add labels from captures, filter by type, drop, or override ttl, buckets and help.
//!
//! The first rule in file order that matches a name (and admits its type) wins. Rules compile
//! once per config into two structures that find it without trying every rule:
//!
//! - globs go on a trie of dot-separated segments (`glob`): a few bytes per rule, and a
//!   lookup that follows literal segments by hash and tries only the wildcard segments at each
//!   position;
//! - regexes, with Go's ASCII `\w`, `\d`, `\s` (`pattern`), go into [`regex::RegexSet`]s of
//!   at most 256 rules, each one automaton pass; only the winning rule's own
//!   regex runs again, for its captures.
//!
//! And that happens only on a worker's cache miss: a raw name the worker has resolved before
//! never reaches the mapper until a reload invalidates its cache. Loading 10,000 globs and 1,000
//! regexes takes well under a second (`benches/mapping.rs`, `docs/BENCHMARKS.md`).
//!
//! Glob syntax: the name is split on `.`; a `*` matches within one segment (never a `.`), so
//! `api.*.requests` matches `api.users.requests` and not `api.v1.users.requests`. Captures are
//! numbered from 1 in order. Templates use `$1` or `${1}`; write `${1}_x` rather than `$1_x`,
//! which reads as a capture named `1_x` (the same rule as Go's and statsd_exporter's).

mod glob;
mod pattern;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::ConfigError;
use super::check::Step;
use crate::parse::MetricType;

/// One `[[mapping]]` table as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MappingRule {
    /// Glob over the dot-separated StatsD name.
    #[serde(rename = "match", default)]
    pub glob: Option<Spanned<String>>,
    /// Regex over the StatsD name; anchored at both ends.
    #[serde(default)]
    pub regex: Option<Spanned<String>>,
    /// Only samples of this kind match.
    #[serde(rename = "type", default)]
    pub kind: Option<RuleKind>,
    /// The Prometheus name, with `$n` captures. Required for `action = "map"`.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Extra labels; values may use captures.
    #[serde(default)]
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    /// `map` (default) or `drop`.
    #[serde(default)]
    pub action: Action,
    /// Overrides `[defaults] ttl`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub ttl: Option<Duration>,
    /// Overrides the default buckets for observers.
    #[serde(default, deserialize_with = "opt_buckets")]
    pub buckets: Option<Vec<f64>>,
    /// HELP text of the family.
    #[serde(default)]
    pub help: Option<String>,
    /// Multiplies every value; an `ms` timer's after its conversion to seconds (so
    /// `scale = 1000` keeps milliseconds), as statsd_exporter applies it.
    #[serde(default)]
    pub scale: Option<f64>,
    /// For observers: `histogram` or `summary`. Default: `[defaults] observer`.
    #[serde(default)]
    pub observer: Option<ObserverKind>,
    /// Summary quantiles, each in (0, 1). Default: `[defaults] quantiles`.
    #[serde(default, deserialize_with = "opt_quantiles")]
    pub quantiles: Option<Vec<f64>>,
    /// Summary window: quantiles cover the observations of between half of it and all of it.
    /// Default: `[defaults] window`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// Tags win over this rule's `labels` of the same name (by default the rule's win).
    #[serde(default)]
    pub honor_labels: bool,
    /// What the histograms this rule names keep. Default: `[defaults] histograms`.
    #[serde(default)]
    pub histograms: Option<HistogramKind>,
    /// Native histograms' bucket factor. Default: `[defaults] native_bucket_factor`.
    #[serde(default)]
    pub native_bucket_factor: Option<f64>,
    /// Native histograms' bucket limit. Default: `[defaults] native_max_buckets`.
    #[serde(default)]
    pub native_max_buckets: Option<u16>,
}

/// What a histogram keeps.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HistogramKind {
    /// Classic buckets in every format, and a native histogram in protobuf (the default).
    #[default]
    Both,
    /// Classic buckets only.
    Classic,
    /// A native histogram only: protobuf scrapes get it, text ones `_count` and `_sum`.
    Native,
}

/// Native histogram settings as rules and `[defaults]` take them: a factor above 1 (at most
/// 65536, schema -4), and 4 to 1024 buckets.
pub(crate) fn check_native(factor: Option<f64>, max: Option<u16>) -> Result<(), String> {
    if let Some(f) = factor
        && !(f.is_finite() && f > 1.0 && f <= 65536.0)
    {
        return Err("native_bucket_factor: a number above 1 and at most 65536".into());
    }
    if let Some(m) = max
        && !(4..=1024).contains(&m)
    {
        return Err("native_max_buckets: 4 to 1024".into());
    }
    Ok(())
}

/// Summary quantiles where none are given.
pub const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];
/// Summary window where none is given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// What an observer sample (`ms`, `h`, `d`) feeds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObserverKind {
    /// Buckets (mergeable exactly, the default).
    Histogram,
    /// Quantiles from a relative-error sketch (see [`crate::store`]).
    Summary,
}

/// A summary's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySpec {
    /// Quantiles to export.
    pub quantiles: Arc<[f64]>,
    /// Sliding window.
    pub window: Duration,
}

pub(super) fn opt_quantiles<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    let q = Vec::<f64>::deserialize(d)?;
    if q.is_empty()
        || q.len() > 16
        || q.iter().any(|v| !(*v > 0.0 && *v < 1.0))
        || q.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(serde::de::Error::custom(
            "quantiles: 1 to 16 increasing numbers, each strictly between 0 and 1",
        ));
    }
    Ok(Some(q))
}

/// The `type` filter of a rule.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// `c`.
    Counter,
    /// `g`.
    Gauge,
    /// `ms`, `h`, `d`.
    Observer,
    /// `s`.
    Set,
}

impl RuleKind {
    fn admits(self, t: MetricType) -> bool {
        match self {
            Self::Counter => t == MetricType::Counter,
            Self::Gauge => t == MetricType::Gauge,
            Self::Observer => t.is_observer(),
            Self::Set => t == MetricType::Set,
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Rename and label.
    #[default]
    Map,
    /// Drop the sample (counted by rule).
    Drop,
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    super::duration(d).map(Some)
}

fn opt_buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    super::buckets(d).map(Some)
}

/// How a compiled rule matches.
#[derive(Debug)]
enum Matcher {
    Glob(glob::Glob),
    /// The rule's regex, its capture count (with `$0`) and its group names.
    Regex(pattern::Lazy, usize, Vec<String>),
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    kind: Option<RuleKind>,
    name: String,
    labels: Vec<(String, String)>,
    action: Action,
    ttl: Option<Duration>,
    buckets: Option<Arc<[f64]>>,
    help: Option<Arc<str>>,
    scale: Option<f64>,
    observer: Option<ObserverKind>,
    quantiles: Option<Arc<[f64]>>,
    window: Option<Duration>,
    honor_labels: bool,
    /// `mapping rule <n> (match = "...")`, for the HELP of the families it names.
    about: Arc<str>,
    native: NativeSpec,
}

/// A rule's histogram settings (each `None`: `[defaults]`'s).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NativeSpec {
    /// Classic, native or both.
    pub histograms: Option<HistogramKind>,
    /// Bucket factor.
    pub factor: Option<f64>,
    /// Bucket limit.
    pub max_buckets: Option<u16>,
}

/// The compiled rules of one config.
#[derive(Debug, Default)]
pub struct Mapper {
    rules: Vec<Rule>,
    globs: glob::Trie,
    regexes: Vec<pattern::Chunk>,
}

/// The outcome of mapping one name.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// No rule matched.
    Unmapped,
    /// Rule `rule` (0-based, file order) says drop.
    Drop {
        /// Index of the rule.
        rule: usize,
    },
    /// Rule `rule` renamed the sample.
    Map {
        /// Index of the rule.
        rule: usize,
        /// The expanded name (not yet sanitised).
        name: String,
        /// Expanded labels.
        labels: Vec<(String, String)>,
        /// ttl override.
        ttl: Option<Duration>,
        /// Bucket override.
        buckets: Option<Arc<[f64]>>,
        /// HELP text.
        help: Option<Arc<str>>,
        /// Value factor.
        scale: Option<f64>,
        /// What observers become, if the rule says: `None` leaves it to `[defaults]`.
        observer: Option<ObserverKind>,
        /// Summary quantiles, if the rule gives them.
        quantiles: Option<Arc<[f64]>>,
        /// Summary window, if the rule gives one.
        window: Option<Duration>,
        /// Tags win over `labels` of the same name.
        honor_labels: bool,
        /// The rule, as a HELP text names it: `mapping rule 3 (match = "api.*")`.
        about: Arc<str>,
        /// Its histogram settings.
        native: NativeSpec,
    },
}

/// Why a rule's `name` template would only ever name a reserved family (tallyd's own
/// metrics), if it would: every sample it maps would be refused as `reserved_name`.
fn reserved_template(name: &str, kind: Option<RuleKind>) -> Option<String> {
    let literal = name.split('$').next().unwrap_or("");
    if crate::naming::metric_name(literal).starts_with(crate::naming::RESERVED_PREFIX) {
        return Some(format!(
            "{name:?} names tallyd's own metrics ({}*)",
            crate::naming::RESERVED_PREFIX
        ));
    }
    if name.contains('$') {
        return None;
    }
    let base = crate::naming::metric_name(name);
    let mut families = vec![base.clone()];
    if matches!(kind, None | Some(RuleKind::Counter)) {
        families.push(crate::naming::counter_family(base));
    }
    families
        .iter()
        .find(|f| crate::naming::PROCESS_FAMILIES.contains(&f.as_str()))
        .map(|f| format!("{f:?} is one of tallyd's own metrics"))
}

/// One piece of a name or label template.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Piece<'t> {
    /// Copied as is.
    Text(&'t str),
    /// A capture: a number (`$1`, `${1}`) or a group name.
    Ref(&'t str),
}

/// Splits a template as Go's `Expand` (and the `regex` crate) read it: `$$` is one `$`;
/// `$name` takes the longest run of ASCII letters, digits and `_` (so `$1_x` names `1_x`);
/// `${name}` is explicit; any other `$` is itself. An unclosed `${` is an error.
pub(crate) fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push(Piece::Text("$"));
            rest = more;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {template:?}"))?;
            out.push(Piece::Ref(&braced[..end]));
            rest = &braced[end + 1..];
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 {
                out.push(Piece::Text("$"));
            } else {
                out.push(Piece::Ref(&after[..end]));
            }
            rest = &after[end..];
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Checks that every reference in `template` names a capture: a number below `captures` (which
/// counts `$0`) or a name `named` accepts.
fn check_refs(template: &str, captures: usize, named: &dyn Fn(&str) -> bool) -> Result<(), String> {
    for piece in pieces(template)? {
        let Piece::Ref(name) = piece else { continue };
        match name.parse::<usize>() {
            Ok(n) if n < captures => {}
            Ok(n) => {
                return Err(format!(
                    "capture ${n} is out of range: the pattern has {} capture group(s)",
                    captures - 1
                ));
            }
            Err(_) if !name.is_empty() && named(name) => {}
            Err(_) => {
                return Err(format!(
                    "no capture named {name:?} in the pattern (write ${{1}}_x, not $1_x)"
                ));
            }
        }
    }
    Ok(())
}

/// Expands a checked template; `group` gives a capture's text by number or name ("" when it
/// did not take part in the match).
fn expand<'n>(template: &str, group: &dyn Fn(&str) -> &'n str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    for piece in pieces(template).unwrap_or_default() {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(name) => out.push_str(group(name)),
        }
    }
    out
}

/// A regex's capture groups as a rule reads them (Go's ASCII classes): how many, `$0`
/// included, and the names of the named ones; or why it does not compile.
pub(crate) fn regex_captures(re: &str) -> Result<(usize, Vec<String>), String> {
    let a = pattern::ascii(re)?;
    Ok((a.captures, a.names))
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Mapper {
    /// Compiles `rules`; errors carry the line and column of the offending value in `text`.
    /// Returns the mapper and the warnings (rules an earlier rule always shadows).
    pub fn compile(
        rules: &[MappingRule],
        text: &str,
    ) -> Result<(Self, Vec<ConfigError>), Vec<ConfigError>> {
        // Errors sit at the key at fault, located in the file's spanned tree.
        let tree = super::check::Tree::parse(text);
        let at = |path: &[Step<'_>], message: String| match &tree {
            Some(t) => t.error(path, message),
            None => ConfigError {
                line: 0,
                column: 0,
                key: None,
                message,
            },
        };
        if rules.len() >= u32::MAX as usize {
            return Err(vec![at(
                &[Step::Key("mapping")],
                format!("at most {} mapping rules", u32::MAX - 1),
            )]);
        }
        let mut compiled = Vec::with_capacity(rules.len());
        let mut regex_sources = Vec::new();
        let mut regex_rules = Vec::new();
        let mut shadows = Shadows::default();
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        for (idx, r) in rules.iter().enumerate() {
            let err = |key: &str, message: String| {
                at(
                    &[Step::Key("mapping"), Step::Index(idx), Step::Key(key)],
                    message,
                )
            };
            // One rule's checks; its first error is reported and the next rule checked.
            let one = (|| -> Result<(Option<String>, Rule), ConfigError> {
                let (matcher, source, key) = match (&r.glob, &r.regex) {
                    (Some(g), None) => (
                        Matcher::Glob(glob::Glob::parse(g.get_ref()).map_err(|m| err("match", m))?),
                        None,
                        "match",
                    ),
                    (None, Some(re)) => {
                        // The user's own pattern in the message, not the one compiled.
                        let ascii = pattern::ascii(re.get_ref())
                            .map_err(|e| err("regex", format!("invalid regex: {e}")))?;
                        let anchored = pattern::anchored(&ascii.pattern);
                        let lazy = pattern::Lazy::new(&anchored);
                        (
                            Matcher::Regex(lazy, ascii.captures, ascii.names),
                            Some(anchored),
                            "regex",
                        )
                    }
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "match",
                            "a rule has either `match` or `regex`, not both".into(),
                        ));
                    }
                    (None, None) => {
                        return Err(at(
                            &[Step::Key("mapping"), Step::Index(idx)],
                            "a rule needs `match` (glob) or `regex`".into(),
                        ));
                    }
                };
                let (captures, named): (usize, &dyn Fn(&str) -> bool) = match &matcher {
                    Matcher::Glob(g) => (g.captures_len(), &|_| false),
                    Matcher::Regex(_, captures, names) => {
                        (*captures, &|name| names.iter().any(|c| c == name))
                    }
                };
                let name = match (&r.name, r.action) {
                    (Some(_), Action::Drop) => {
                        return Err(err(
                            "name",
                            "a rule with action = \"drop\" names nothing; remove `name`".into(),
                        ));
                    }
                    (Some(n), Action::Map) => {
                        if let Some(m) = reserved_template(n.get_ref(), r.kind) {
                            return Err(err("name", m));
                        }
                        check_refs(n.get_ref(), captures, named).map_err(|m| err("name", m))?;
                        if n.get_ref().is_empty() {
                            return Err(err("name", "must not be empty".into()));
                        }
                        n.get_ref().clone()
                    }
                    (None, Action::Drop) => String::new(),
                    (None, Action::Map) => {
                        return Err(err(
                            key,
                            "a rule with action = \"map\" needs a `name`".into(),
                        ));
                    }
                };
                let mut labels = Vec::new();
                if let Some(l) = &r.labels {
                    for (k, v) in l.get_ref() {
                        let err = |message: String| {
                            at(
                                &[
                                    Step::Key("mapping"),
                                    Step::Index(idx),
                                    Step::Key("labels"),
                                    Step::Key(k),
                                ],
                                message,
                            )
                        };
                        if !is_label_name(k) || k.starts_with("__") {
                            return Err(err(format!("{k:?} is not a valid label name")));
                        }
                        check_refs(v, captures, named).map_err(err)?;
                        let observes = matches!(r.kind, None | Some(RuleKind::Observer));
                        let summary = r.observer == Some(ObserverKind::Summary);
                        if observes && ((k == "le" && !summary) || (k == "quantile" && summary)) {
                            return Err(err(format!(
                                "{k:?} is the exposition's own label on this rule's {}; name it otherwise",
                                if k == "le" {
                                    "histogram buckets"
                                } else {
                                    "summary quantiles"
                                }
                            )));
                        }
                        labels.push((k.clone(), v.clone()));
                    }
                }
                if r.observer.is_some() && matches!(r.kind, Some(k) if k != RuleKind::Observer) {
                    return Err(err("observer",
                    "`observer` applies to timers, histograms and distributions; this rule's `type` admits none".into(),
                ));
                }
                if r.observer != Some(ObserverKind::Summary)
                    && (r.quantiles.is_some() || r.window.is_some())
                {
                    return Err(err(
                        if r.quantiles.is_some() {
                            "quantiles"
                        } else {
                            "window"
                        },
                        "`quantiles` and `window` apply only with observer = \"summary\"".into(),
                    ));
                }
                if r.window.is_some_and(|w| w < Duration::from_secs(2)) {
                    return Err(err("window", "a summary window must be at least 2s".into()));
                }
                if let Some(s) = r.scale
                    && !(s.is_finite() && s != 0.0)
                {
                    return Err(err("scale", "must be a finite, non-zero number".into()));
                }
                if r.scale.is_some_and(|s| s < 0.0)
                    && matches!(r.kind, None | Some(RuleKind::Counter))
                {
                    return Err(err(
                        "scale",
                        "a negative scale would make counters go down; give the rule a `type` \
                         other than counter"
                            .into(),
                    ));
                }
                check_native(r.native_bucket_factor, r.native_max_buckets).map_err(|m| {
                    err(
                        if m.contains("factor") {
                            "native_bucket_factor"
                        } else {
                            "native_max_buckets"
                        },
                        m,
                    )
                })?;
                Ok((
                    source,
                    Rule {
                        matcher,
                        kind: r.kind,
                        name,
                        labels,
                        action: r.action,
                        ttl: r.ttl,
                        buckets: r.buckets.as_ref().map(|b| Arc::from(b.as_slice())),
                        help: r.help.as_deref().map(Arc::from),
                        scale: r.scale,
                        observer: r.observer,
                        quantiles: r.quantiles.as_deref().map(Arc::from),
                        window: r.window,
                        honor_labels: r.honor_labels,
                        native: NativeSpec {
                            histograms: r.histograms,
                            factor: r.native_bucket_factor,
                            max_buckets: r.native_max_buckets,
                        },
                        about: Arc::from(format!(
                            "mapping rule {} ({} = {:?})",
                            idx + 1,
                            key,
                            r.glob
                                .as_ref()
                                .or(r.regex.as_ref())
                                .map_or("", |p| p.get_ref())
                        )),
                    },
                ))
            })();
            match one {
                Ok((source, rule)) => {
                    if let Some(j) = shadows.first_covering(&rule, r.regex.as_ref(), rules) {
                        let j = j as usize;
                        let key = |rule: &MappingRule| {
                            if rule.glob.is_some() {
                                "match"
                            } else {
                                "regex"
                            }
                        };
                        let prev_line = tree.as_ref().map_or(0, |t| {
                            t.line(&[
                                Step::Key("mapping"),
                                Step::Index(j),
                                Step::Key(key(&rules[j])),
                            ])
                        });
                        warnings.push(at(
                            &[Step::Key("mapping"), Step::Index(idx), Step::Key(key(r))],
                            format!(
                                "this rule can never match: the rule at line {prev_line} \
                                 (mapping[{j}]) matches every name it does and comes first"
                            ),
                        ));
                    }
                    shadows.add(idx, &rule, r.regex.as_ref());
                    if let Some(source) = source {
                        regex_sources.push(source);
                        regex_rules.push(idx as u32);
                    }
                    compiled.push(rule);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut regexes = Vec::with_capacity(regex_rules.len().div_ceil(pattern::CHUNK));
        for (sources, indexes) in regex_sources
            .chunks(pattern::CHUNK)
            .zip(regex_rules.chunks(pattern::CHUNK))
        {
            let chunk = pattern::Chunk::new(sources, indexes.to_vec()).map_err(|e| {
                vec![ConfigError {
                    line: 0,
                    column: 0,
                    key: Some("mapping".into()),
                    message: format!("mapping rules too large to compile together: {e}"),
                }]
            })?;
            regexes.push(chunk);
        }
        Ok((
            Self {
                rules: compiled,
                globs: shadows.globs,
                regexes,
            },
            warnings,
        ))
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Maps a StatsD name (tags already split off) of type `kind`.
    pub fn map(&self, name: &str, kind: MetricType) -> Mapped {
        if self.rules.is_empty() {
            return Mapped::Unmapped;
        }
        let admit = |r: u32| self.rules[r as usize].kind.is_none_or(|k| k.admits(kind));
        let segs: Vec<&str> = name.split('.').collect();
        let mut best = self
            .globs
            .first(&segs, u32::MAX, &admit)
            .unwrap_or(u32::MAX);
        // Chunks hold increasing rule indexes: the first chunk with an admissible match has the
        // lowest, and a chunk that starts past the best glob cannot beat it.
        for chunk in &self.regexes {
            if chunk.rules[0] >= best {
                break;
            }
            // A set yields matching indexes in increasing order.
            if let Some(r) = chunk
                .set
                .matches(name)
                .iter()
                .map(|i| chunk.rules[i])
                .find(|&r| admit(r))
            {
                best = best.min(r);
                break;
            }
        }
        if best == u32::MAX {
            return Mapped::Unmapped;
        }
        let idx = best as usize;
        let rule = &self.rules[idx];
        if rule.action == Action::Drop {
            return Mapped::Drop { rule: idx };
        }
        let (name, labels) = match &rule.matcher {
            Matcher::Glob(g) => {
                let Some(caps) = g.captures(name) else {
                    return Mapped::Unmapped;
                };
                let group = |n: &str| n.parse::<usize>().ok().and_then(|i| caps.get(i).copied());
                rule.expand(&|n| group(n).unwrap_or(""))
            }
            Matcher::Regex(re, ..) => {
                let Some(caps) = re.get().and_then(|re| re.captures(name)) else {
                    return Mapped::Unmapped;
                };
                let group = |n: &str| match n.parse::<usize>() {
                    Ok(i) => caps.get(i),
                    Err(_) => caps.name(n),
                };
                rule.expand(&|n| group(n).map_or("", |m| m.as_str()))
            }
        };
        Mapped::Map {
            rule: idx,
            name,
            labels,
            ttl: rule.ttl,
            buckets: rule.buckets.clone(),
            help: rule.help.clone(),
            scale: rule.scale,
            observer: rule.observer,
            quantiles: rule.quantiles.clone(),
            window: rule.window,
            honor_labels: rule.honor_labels,
            about: rule.about.clone(),
            native: rule.native,
        }
    }
}

impl Rule {
    /// The rule's name and label values with `group`'s captures.
    fn expand<'n>(&self, group: &dyn Fn(&str) -> &'n str) -> (String, Vec<(String, String)>) {
        (
            expand(&self.name, group),
            self.labels
                .iter()
                .map(|(k, v)| (k.clone(), expand(v, group)))
                .collect(),
        )
    }
}

/// The rules seen so far, to find an earlier rule that always shadows a new one: a rule whose
/// type filter is at least as wide and that matches every name the new one does -- a glob
/// that is segment by segment the same text or `*`, a catch-all regex, or the same regex.
/// Each lookup is a walk of the glob trie or a hash lookup, never a pass over every rule.
#[derive(Default)]
struct Shadows {
    globs: glob::Trie,
    /// The first catch-all regex rule of each type filter (`None` first).
    catch_all: Vec<(u32, Option<RuleKind>)>,
    /// The first rule of each regex text, per type filter.
    same: std::collections::HashMap<String, Vec<(u32, Option<RuleKind>)>>,
}

impl Shadows {
    /// The first earlier rule that always shadows `rule` (rule `idx` of `all`, with `regex`
    /// its pattern as written).
    fn first_covering(
        &self,
        rule: &Rule,
        regex: Option<&Spanned<String>>,
        all: &[MappingRule],
    ) -> Option<u32> {
        let wider = |k: Option<RuleKind>| k.is_none() || k == rule.kind;
        let first = |list: &[(u32, Option<RuleKind>)]| {
            list.iter()
                .filter(|(_, k)| wider(*k))
                .map(|(j, _)| *j)
                .min()
        };
        let mut best = first(&self.catch_all);
        if let Some(re) = regex
            && let Some(list) = self.same.get(re.get_ref())
        {
            best = best.into_iter().chain(first(list)).min();
        }
        if let Matcher::Glob(g) = &rule.matcher {
            let admit = |j: u32| wider(all[j as usize].kind);
            best = best
                .into_iter()
                .chain(self.globs.first_covering(g, &admit))
                .min();
        }
        best
    }

    fn add(&mut self, idx: usize, rule: &Rule, regex: Option<&Spanned<String>>) {
        let entry = (idx as u32, rule.kind);
        let add_first = |list: &mut Vec<(u32, Option<RuleKind>)>| {
            if !list.iter().any(|(_, k)| *k == rule.kind) {
                list.push(entry);
            }
        };
        match (&rule.matcher, regex) {
            (Matcher::Glob(g), _) => self.globs.insert(g, entry.0),
            (Matcher::Regex(..), Some(re)) => {
                if matches!(
                    re.get_ref().as_str(),
                    ".*" | "^.*$" | "^.*" | ".*$" | "(.*)" | "^(.*)$"
                ) {
                    add_first(&mut self.catch_all);
                }
                add_first(self.same.entry(re.get_ref().clone()).or_default());
            }
            (Matcher::Regex(..), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use regex::Regex;

    fn mapper(text: &str) -> (Mapper, Vec<ConfigError>) {
        let c = Config::from_toml(text).unwrap();
        Mapper::compile(&c.mapping, text).unwrap()
    }

    #[test]
    fn glob_captures_and_order() {
        let (m, w) = mapper(
            "[[mapping]]\nregex = 'api\\.(\\w+)\\.requests'\nname = \"re_${1}\"\n\
             [[mapping]]\nmatch = \"api.*.requests\"\nname = \"glob_$1\"\nlabels = { ep = \"$1\" }\n",
        );
        assert!(w.is_empty());
        match m.map("api.users.requests", MetricType::Counter) {
            Mapped::Map { rule, name, .. } => assert_eq!((rule, name.as_str()), (0, "re_users")),
            other => panic!("{other:?}"),
        }
        match m.map("api.a-b.requests", MetricType::Counter) {
            Mapped::Map {
                rule, name, labels, ..
            } => {
                assert_eq!((rule, name.as_str()), (1, "glob_a-b"));
                assert_eq!(labels, vec![("ep".to_string(), "a-b".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.map("api.v1.users.requests", MetricType::Counter),
            Mapped::Unmapped
        );
    }

    #[test]
    fn type_filter_and_drop() {
        let (m, _) = mapper(
            "[[mapping]]\nmatch = \"x.*\"\ntype = \"gauge\"\naction = \"drop\"\n[[mapping]]\nmatch = \"x.*\"\nname = \"x\"\n",
        );
        assert_eq!(m.map("x.y", MetricType::Gauge), Mapped::Drop { rule: 0 });
        assert!(matches!(
            m.map("x.y", MetricType::Counter),
            Mapped::Map { rule: 1, .. }
        ));
    }

    #[test]
    fn bad_rules_are_located() {
        for (text, line, key) in [
            (
                "[[mapping]]\nmatch = \"a.*\"\nname = \"x_$2\"\n",
                3,
                "mapping[0].name",
            ),
            (
                "[[mapping]]\nregex = \"a(\"\nname = \"x\"\n",
                2,
                "mapping[0].regex",
            ),
            (
                "[[mapping]]\nmatch = \"a..b\"\nname = \"x\"\n",
                2,
                "mapping[0].match",
            ),
            ("[[mapping]]\nmatch = \"a.*\"\n", 2, "mapping[0].match"),
            ("\n[[mapping]]\nname = \"x\"\n", 2, "mapping[0]"),
            (
                "[[mapping]]\nmatch = \"a.*\"\nname = \"x\"\nlabels = { \"bad-name\" = \"1\" }\n",
                4,
                "mapping[0].labels.bad-name",
            ),
        ] {
            let c = Config::from_toml(text).unwrap();
            let e = Mapper::compile(&c.mapping, text).unwrap_err().remove(0);
            assert_eq!((e.line, e.key.as_deref()), (line, Some(key)), "{text}: {e}");
        }
    }

    proptest::proptest! {
        /// Templates expand as the `regex` crate's (and Go's) `expand` does: `$$`, `$1_x` as a
        /// name, `${1}`, a lone `$`.
        #[test]
        fn templates_expand_as_regex_does(t in "[a$_{}1x2]{0,12}") {
            let re = Regex::new("^(?P<n>a)(b)?(c)$").unwrap();
            let caps = re.captures("ac").unwrap();
            let mut want = String::new();
            caps.expand(&t, &mut want);
            // An unclosed `${` is refused when the config loads; every other template expands.
            if pieces(&t).is_ok() {
                let group = |n: &str| match n.parse::<usize>() {
                    Ok(i) => caps.get(i),
                    Err(_) => caps.name(n),
                };
                let got = expand(&t, &|n| group(n).map_or("", |m| m.as_str()));
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn shadowed_rules_warn() {
        let (_, w) = mapper(
            "[[mapping]]\nmatch = \"a.*\"\nname = \"x\"\n[[mapping]]\nmatch = \"a.b\"\nname = \"y\"\n",
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].line, 5);
        let (_, w) = mapper(
            "[[mapping]]\nmatch = \"a.*\"\ntype = \"gauge\"\nname = \"x\"\n[[mapping]]\nmatch = \"a.b\"\nname = \"y\"\n",
        );
        assert!(w.is_empty());
    }
}
