//! `[[mapping]]` rules: statsd_exporter-style globs and anchored regexes that rename a StatsD
//! name, add labels from captures, filter by type, drop, or override ttl, buckets and help.
//!
//! Rules compile once per config into one [`regex::RegexSet`] (globs are translated to
//! anchored regexes first), so finding the first matching rule is a single automaton pass
//! however many rules there are; only the winning rule's own regex runs again, for its
//! captures. And that happens only on a worker's cache miss: a raw name the worker has
//! resolved before never reaches the mapper until a reload invalidates its cache.
//!
//! Glob syntax: the name is split on `.`; a `*` matches within one segment (never a `.`), so
//! `api.*.requests` matches `api.users.requests` and not `api.v1.users.requests`. Captures are
//! numbered from 1 in order. Templates use `$1` or `${1}`; write `${1}_x` rather than `$1_x`,
//! which reads as a capture named `1_x` (the same rule as Go's and statsd_exporter's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use regex::{Regex, RegexSet};
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
    /// Multiplies every value (applied after the timer's ms-to-seconds conversion is skipped:
    /// a mapped timer with `scale` gets exactly `value * scale`).
    #[serde(default)]
    pub scale: Option<f64>,
    /// For observers: `histogram` (default) or `summary`.
    #[serde(default)]
    pub observer: Option<ObserverKind>,
    /// Summary quantiles, each in (0, 1). Default `[0.5, 0.9, 0.99]`.
    #[serde(default, deserialize_with = "opt_quantiles")]
    pub quantiles: Option<Vec<f64>>,
    /// Summary window: quantiles cover the observations of between half of it and all of it.
    /// Default `"10m"`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
}

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

fn opt_quantiles<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
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

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    super::duration(d).map(Some)
}

fn opt_buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    super::buckets(d).map(Some)
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    regex: Regex,
    kind: Option<RuleKind>,
    name: String,
    labels: Vec<(String, String)>,
    action: Action,
    ttl: Option<Duration>,
    buckets: Option<Arc<[f64]>>,
    help: Option<Arc<str>>,
    scale: Option<f64>,
    summary: Option<SummarySpec>,
}

/// The compiled rules of one config.
#[derive(Debug, Default)]
pub struct Mapper {
    rules: Vec<Rule>,
    set: Option<RegexSet>,
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
        /// Observers become a summary.
        summary: Option<SummarySpec>,
    },
}

/// Translates a glob into an anchored regex: `*` becomes one segment's worth of characters.
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

fn glob_to_regex(glob: &str) -> Result<String, String> {
    if glob.is_empty() {
        return Err("empty glob".into());
    }
    if glob.split('.').any(str::is_empty) {
        return Err(format!("glob {glob:?} has an empty segment"));
    }
    let mut re = String::from("^");
    for (i, seg) in glob.split('.').enumerate() {
        if i > 0 {
            re.push_str("\\.");
        }
        for (j, lit) in seg.split('*').enumerate() {
            if j > 0 {
                re.push_str("([^.]*)");
            }
            if lit.chars().any(|c| "[]{}()?+|^$\\".contains(c)) {
                return Err(format!(
                    "glob {glob:?}: only `*` is special in a glob; use `regex` for {lit:?}"
                ));
            }
            re.push_str(&regex::escape(lit));
        }
    }
    re.push('$');
    Ok(re)
}

fn anchored(re: &str) -> String {
    let inner = re.strip_prefix('^').unwrap_or(re);
    let inner = match inner.strip_suffix('$') {
        Some(i) if !i.ends_with('\\') => i,
        _ => inner,
    };
    format!("^(?:{inner})$")
}

/// Checks that every `$n` / `${n}` / `$name` reference in `template` exists in `re`.
fn check_refs(template: &str, re: &Regex) -> Result<(), String> {
    let b = template.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        if i < b.len() && b[i] == b'$' {
            i += 1;
            continue;
        }
        let (name, next) = if i < b.len() && b[i] == b'{' {
            match template[i + 1..].find('}') {
                Some(end) => (&template[i + 1..i + 1 + end], i + 2 + end),
                None => return Err(format!("unclosed ${{ in {template:?}")),
            }
        } else {
            let end = template[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(b.len(), |e| i + e);
            (&template[i..end], end)
        };
        i = next;
        if name.is_empty() {
            continue;
        }
        match name.parse::<usize>() {
            Ok(n) if n < re.captures_len() => {}
            Ok(n) => {
                return Err(format!(
                    "capture ${n} is out of range: the pattern has {} capture group(s)",
                    re.captures_len() - 1
                ));
            }
            Err(_) if re.capture_names().flatten().any(|c| c == name) => {}
            Err(_) => {
                return Err(format!(
                    "no capture named {name:?} in the pattern (write ${{1}}_x, not $1_x)"
                ));
            }
        }
    }
    Ok(())
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
        let mut compiled = Vec::with_capacity(rules.len());
        let mut sources = Vec::with_capacity(rules.len());
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
            let one = (|| -> Result<(String, Rule), ConfigError> {
                let (pattern, key) = match (&r.glob, &r.regex) {
                    (Some(g), None) => (
                        glob_to_regex(g.get_ref()).map_err(|m| err("match", m))?,
                        "match",
                    ),
                    (None, Some(re)) => (anchored(re.get_ref()), "regex"),
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
                if let Some(re) = &r.regex {
                    // The user's own pattern in the message, not the anchored one compiled below.
                    Regex::new(re.get_ref())
                        .map_err(|e| err("regex", format!("invalid regex: {e}")))?;
                }
                let regex =
                    Regex::new(&pattern).map_err(|e| err(key, format!("invalid pattern: {e}")))?;
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
                        check_refs(n.get_ref(), &regex).map_err(|m| err("name", m))?;
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
                        check_refs(v, &regex).map_err(err)?;
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
                // A rule is shadowed when an earlier rule with a filter at least as wide matches a
                // superset of its names: the same pattern, a catch-all, or a glob that is
                // segment-wise at least as general.
                for (j, prev) in rules[..idx].iter().enumerate() {
                    let wider_type = prev.kind.is_none() || prev.kind == r.kind;
                    if wider_type {
                        let covers = match (&prev.glob, &r.glob, &prev.regex) {
                            (Some(pg), Some(g), _) => glob_covers(pg.get_ref(), g.get_ref()),
                            (_, _, Some(pr)) => {
                                matches!(
                                    pr.get_ref().as_str(),
                                    ".*" | "^.*$" | "^.*" | ".*$" | "(.*)" | "^(.*)$"
                                ) || r
                                    .regex
                                    .as_ref()
                                    .is_some_and(|re| re.get_ref() == pr.get_ref())
                            }
                            _ => false,
                        };
                        if covers {
                            let prev_key = if prev.glob.is_some() {
                                "match"
                            } else {
                                "regex"
                            };
                            let prev_line = tree.as_ref().map_or(0, |t| {
                                t.line(&[Step::Key("mapping"), Step::Index(j), Step::Key(prev_key)])
                            });
                            warnings.push(err(
                                key,
                                format!(
                                    "this rule can never match: the rule at line {prev_line} \
                                     (mapping[{j}]) matches every name it does and comes first"
                                ),
                            ));
                            break;
                        }
                    }
                }
                Ok((
                    pattern,
                    Rule {
                        regex,
                        kind: r.kind,
                        name,
                        labels,
                        action: r.action,
                        ttl: r.ttl,
                        buckets: r.buckets.as_ref().map(|b| Arc::from(b.as_slice())),
                        help: r.help.as_deref().map(Arc::from),
                        scale: r.scale,
                        summary: (r.observer == Some(ObserverKind::Summary)).then(|| SummarySpec {
                            quantiles: Arc::from(
                                r.quantiles.as_deref().unwrap_or(&[0.5, 0.9, 0.99]),
                            ),
                            window: r.window.unwrap_or(Duration::from_secs(600)),
                        }),
                    },
                ))
            })();
            match one {
                Ok((pattern, rule)) => {
                    sources.push(pattern);
                    compiled.push(rule);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let set = if sources.is_empty() {
            None
        } else {
            Some(RegexSet::new(&sources).map_err(|e| {
                vec![ConfigError {
                    line: 0,
                    column: 0,
                    key: Some("mapping".into()),
                    message: format!("mapping rules too large to compile together: {e}"),
                }]
            })?)
        };
        Ok((
            Self {
                rules: compiled,
                set,
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
        let Some(set) = &self.set else {
            return Mapped::Unmapped;
        };
        let matches = set.matches(name);
        // RegexSet yields matching rule indexes in increasing order: the first admissible one
        // in file order wins.
        let Some(idx) = matches
            .iter()
            .find(|&i| self.rules[i].kind.is_none_or(|k| k.admits(kind)))
        else {
            return Mapped::Unmapped;
        };
        let rule = &self.rules[idx];
        if rule.action == Action::Drop {
            return Mapped::Drop { rule: idx };
        }
        let Some(caps) = rule.regex.captures(name) else {
            return Mapped::Unmapped;
        };
        let expand = |t: &str| {
            let mut out = String::new();
            caps.expand(t, &mut out);
            out
        };
        Mapped::Map {
            rule: idx,
            name: expand(&rule.name),
            labels: rule
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), expand(v)))
                .collect(),
            ttl: rule.ttl,
            buckets: rule.buckets.clone(),
            help: rule.help.clone(),
            scale: rule.scale,
            summary: rule.summary.clone(),
        }
    }
}

/// True if glob `a` matches every name glob `b` matches.
fn glob_covers(a: &str, b: &str) -> bool {
    let (sa, sb): (Vec<_>, Vec<_>) = (a.split('.').collect(), b.split('.').collect());
    sa.len() == sb.len() && sa.iter().zip(&sb).all(|(x, y)| *x == "*" || x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
