//! statsd_exporter's mappings translated into `[[mapping]]` rules and `[defaults]`, in the
//! order statsd_exporter tries them, with its matching semantics kept where tallyd's differ:
//!
//! - every glob is tried before any regex, whatever the file order (the rules are reordered);
//! - with `glob_disable_ordering`, the most specific glob wins: at the leftmost segment where
//!   two matching globs differ, a literal beats `*` (the globs are sorted so that tallyd's
//!   first match is that one);
//! - regexes are unanchored (a leftmost match anywhere in the name) and `$0` is the match, so
//!   each is wrapped as `.*?(...).*` for tallyd's anchored matching, its references shifted;
//! - a reference to a capture that does not exist (`$3` of a two-`*` glob, `$1_x`, which
//!   names a group `1_x`) expands to nothing, so it is dropped, with a warning.
//!
//! Two defects of statsd_exporter's glob matcher are translated as the user meant, each with
//! a warning naming the rules: a glob that is a segment-prefix of an earlier glob never matches
//! (`a.b.c` then `a.b` leaves `a.b` unmapped), and with `glob_disable_ordering` a name that
//! follows a specific glob's literal segments and then fails it is not tried against a wider
//! glob (`a.*.*` and `a.b.c` leave `a.b.x` unmapped).

use std::fmt::Write as _;
use std::time::Duration;

use regex::Regex;

use super::yaml::{self, File, MatchType, MetricType, Observer};
use super::{Findings, Kind, float, floats, quote, quote_regex, tallyd_duration};
use crate::config::mapping::{Piece, pieces, regex_captures};

/// statsd_exporter's load-time checks, as it writes them.
struct Checks {
    glob: Regex,
    name: Regex,
    label: Regex,
    template: Regex,
}

impl Checks {
    fn new() -> Self {
        let metric = r"[a-zA-Z_]([a-zA-Z0-9_\-])*";
        let subsequent = r"[a-zA-Z0-9_]([a-zA-Z0-9_\-])*";
        let template = r"(\$\{?\d+\}?)";
        let re = |s: &str| Regex::new(s).expect("static regex");
        Self {
            glob: re(&format!(r"^(\*|{metric})(\.\*|\.{subsequent})*$")),
            name: re(&format!(
                r"^([a-zA-Z_]|{template})([a-zA-Z0-9_]|{template})*$"
            )),
            label: re(r"^[a-zA-Z_][a-zA-Z0-9_]+$"),
            template: re(r"\$\{?([a-zA-Z0-9_$]+)\}?"),
        }
    }
}

/// One mapping ready to write.
struct Rule<'m> {
    m: &'m yaml::Mapping,
    regex: bool,
    /// The glob's segments (globs only).
    segs: Vec<&'m str>,
}

impl Rule<'_> {
    /// The sample types the rule admits, as statsd_exporter's matcher roots: counter, gauge,
    /// observer.
    fn roots(&self) -> [bool; 3] {
        match self.m.metric_type {
            None => [true; 3],
            Some(MetricType::Counter) => [true, false, false],
            Some(MetricType::Gauge) => [false, true, false],
            Some(MetricType::Observer) => [false, false, true],
        }
    }

    fn shares_root(&self, other: &Rule<'_>) -> bool {
        let (a, b) = (self.roots(), other.roots());
        (0..3).any(|i| a[i] && b[i])
    }
}

/// The effective observer of a mapping, as statsd_exporter resolves it: the mapping's, else
/// the defaults', else a summary (an explicit `""` is a summary too).
fn observer(m: &yaml::Mapping, d: &yaml::Defaults) -> Observer {
    match m.observer {
        Some(Some(o)) => o,
        Some(None) => Observer::Summary,
        None => d.observer.unwrap_or(Observer::Summary),
    }
}

/// Writes `[defaults]`'s statsd_exporter part (observer, summary and histogram settings, ttl)
/// into `out`.
pub(super) fn defaults(file: &File, f: &mut Findings, out: &mut String) {
    let d = &file.defaults;
    let at = d.line;
    out.push_str("[defaults]\n");
    out.push_str(
        "# statsd_exporter's names: counters as mapped (no _total), observers as summaries.\n",
    );
    out.push_str("naming = \"statsd_exporter\"\n");
    let o = match d.observer.unwrap_or(Observer::Summary) {
        Observer::Summary => "summary",
        Observer::Histogram => "histogram",
    };
    let _ = writeln!(out, "observer = \"{o}\"");
    let (quantiles, window) = summary_keys(d.summary.as_ref(), f);
    if let Some(q) = quantiles {
        let _ = writeln!(out, "quantiles = {q}");
    }
    if let Some(w) = window {
        let _ = writeln!(out, "window = {w}");
    }
    if let Some(h) = &d.histogram {
        if let Some(b) = buckets(h, f) {
            let _ = writeln!(out, "timer_buckets = {b}\nhistogram_buckets = {b}");
        }
        out.push_str(&native(h, f));
    }
    if let Some(ttl) = d.ttl.filter(|t| !t.is_zero()) {
        let _ = writeln!(out, "ttl = {}", ttl_value(ttl, at, f));
    }
}

/// A ttl for tallyd, which counts whole seconds: a shorter one is rounded up to 1s.
fn ttl_value(ttl: Duration, at: usize, f: &mut Findings) -> String {
    let whole = Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0));
    if whole != ttl {
        f.push(
            Kind::Warning,
            at,
            format!(
                "ttl {ttl:?}: tallyd counts ttls in whole seconds; written as {}s",
                whole.as_secs()
            ),
        );
    }
    tallyd_duration(whole)
}

/// `quantiles` and `window` values from summary options, or `None` for what they leave out.
fn summary_keys(
    s: Option<&yaml::SummaryOptions>,
    f: &mut Findings,
) -> (Option<String>, Option<String>) {
    let Some(s) = s else { return (None, None) };
    let mut quantiles = None;
    if let Some(q) = s.quantiles.as_ref().filter(|q| !q.is_empty()) {
        let mut v: Vec<f64> = q.iter().map(|(q, _)| *q).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        if v.iter().any(|q| !(*q > 0.0 && *q < 1.0)) {
            f.push(
                Kind::Lossy,
                s.line,
                "quantiles 0 and 1 (the minimum and maximum): tallyd's summaries take quantiles \
                 strictly between 0 and 1; they are left out"
                    .into(),
            );
            v.retain(|q| *q > 0.0 && *q < 1.0);
        }
        if v.len() > 16 {
            f.push(
                Kind::Lossy,
                s.line,
                format!(
                    "{} quantiles: tallyd exports at most 16 per summary; the first 16 are kept",
                    v.len()
                ),
            );
            v.truncate(16);
        }
        if !v.is_empty() {
            quantiles = Some(floats(&v));
        }
        if q.iter().any(|(_, e)| *e > 0.0) {
            f.push(
                Kind::Note,
                s.line,
                "quantile errors: tallyd's summaries give each quantile within 2% of a true value \
                 of its rank, whatever error is asked"
                    .into(),
            );
        }
    }
    let window = s.max_age.filter(|w| !w.is_zero()).map(|w| {
        if w < Duration::from_secs(2) {
            f.push(
                Kind::Warning,
                s.line,
                format!("max_age {w:?}: tallyd's summary window is at least 2s; written as 2s"),
            );
        }
        tallyd_duration(w.max(Duration::from_secs(2)))
    });
    if s.age_buckets.is_some_and(|b| b > 0) || s.buf_cap.is_some_and(|b| b > 0) {
        f.push(
            Kind::Note,
            s.line,
            "age_buckets and buf_cap: tallyd's summary window slides in two halves and needs no \
             buffer; they have no equivalent"
                .into(),
        );
    }
    (quantiles, window)
}

/// A `buckets` value from histogram options, or `None` when they give none.
fn buckets(h: &yaml::HistogramOptions, f: &mut Findings) -> Option<String> {
    // A trailing +Inf is implied in both (client_golang drops it).
    let b: Vec<f64> = h
        .buckets
        .iter()
        .flatten()
        .copied()
        .filter(|b| *b != f64::INFINITY)
        .collect();
    let b = Some(&b).filter(|b| !b.is_empty())?;
    if b.iter().any(|x| !x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
        f.push(
            Kind::Error,
            h.line,
            "histogram buckets must be finite and in increasing order".into(),
        );
        return None;
    }
    if b.len() > 64 {
        f.push(
            Kind::Lossy,
            h.line,
            format!(
                "{} buckets: tallyd takes at most 64; the first 64 are kept",
                b.len()
            ),
        );
        return Some(floats(&b[..64]));
    }
    Some(floats(b))
}

/// The native histogram keys from histogram options: `native_bucket_factor` and
/// `native_max_buckets` lines, or `histograms = "classic"` where a factor of at most 1 turns
/// native histograms off (as in client_golang).
fn native(h: &yaml::HistogramOptions, f: &mut Findings) -> String {
    let mut out = String::new();
    match h.native_factor {
        Some(x) if x > 0.0 && x <= 1.0 => out.push_str("histograms = \"classic\"\n"),
        Some(x) if x > 1.0 => {
            let x = if x > 65536.0 {
                f.push(
                    Kind::Lossy,
                    h.line,
                    format!("native_histogram_bucket_factor {x}: tallyd's widest is 65536"),
                );
                65536.0
            } else {
                x
            };
            let _ = writeln!(out, "native_bucket_factor = {}", float(x));
        }
        _ => {}
    }
    if let Some(m) = h.native_max_buckets.filter(|m| *m > 0) {
        let kept = m.clamp(4, 1024);
        if kept != m {
            f.push(
                Kind::Lossy,
                h.line,
                format!(
                    "native_histogram_max_buckets {m}: tallyd keeps 4 to 1024; written as {kept}"
                ),
            );
        }
        let _ = writeln!(out, "native_max_buckets = {kept}");
    }
    out
}

/// Writes the `[[mapping]]` tables of `file` into `out`, in statsd_exporter's order.
pub(super) fn mappings(file: &File, source: &str, f: &mut Findings, out: &mut String) {
    let checks = Checks::new();
    let default_match = file.defaults.match_type.unwrap_or(MatchType::Glob);
    let mut globs = Vec::new();
    let mut regexes = Vec::new();
    let mut reordered = false;
    for m in &file.mappings {
        let regex = m.match_type.unwrap_or(default_match) == MatchType::Regex;
        if !check(m, &file.defaults, regex, &checks, f) {
            continue;
        }
        let rule = Rule {
            m,
            regex,
            segs: if regex {
                Vec::new()
            } else {
                m.matcher.split('.').collect()
            },
        };
        if regex {
            regexes.push(rule);
        } else {
            reordered |= !regexes.is_empty();
            globs.push(rule);
        }
    }
    prefix_defect(&globs, f);
    if !file.defaults.glob_disable_ordering {
        duplicate_defect(&globs, f);
    }
    if file.defaults.glob_disable_ordering {
        ordering_defect(&globs, f);
        // Most specific first: at the first segment where two globs differ in kind, the
        // literal comes first. Stable, so equals keep file order.
        globs.sort_by(|a, b| {
            let kinds = |r: &Rule<'_>| r.segs.iter().map(|s| *s == "*").collect::<Vec<bool>>();
            kinds(a).cmp(&kinds(b))
        });
        let _ = writeln!(
            out,
            "# glob_disable_ordering: the globs are sorted most specific first (a literal \
             segment before `*`),\n# so that the first match is the one statsd_exporter picks.\n"
        );
    }
    if reordered {
        let _ = writeln!(
            out,
            "# statsd_exporter tries every glob before any regex: the regex rules follow the \
             globs here,\n# whatever their place in {source}.\n"
        );
    }
    for r in globs.iter().chain(&regexes) {
        rule(r, file, &checks, source, f, out);
    }
}

/// statsd_exporter's load-time checks of one mapping; false (with errors pushed) if it would
/// refuse the file.
fn check(m: &yaml::Mapping, d: &yaml::Defaults, regex: bool, c: &Checks, f: &mut Findings) -> bool {
    let before = f.errors();
    for (k, _) in &m.labels {
        if !c.label.is_match(k) {
            f.push(
                Kind::Error,
                m.line_of("labels"),
                format!("invalid label key: {k}"),
            );
        }
    }
    if !m.name.is_empty() && !c.name.is_match(&m.name) {
        f.push(
            Kind::Error,
            m.line_of("name"),
            format!(
                "metric name '{}' doesn't match regex '{}'",
                m.name,
                c.name.as_str()
            ),
        );
    }
    if regex {
        if let Err(e) = regex_captures(&m.matcher) {
            // Go's RE2 and Rust's regex differ at the edges (`\Q..\E`, octal escapes, a
            // literal `{`): the rule is left out.
            f.push(
                Kind::Lossy,
                m.line_of("match"),
                format!(
                    "regex {} does not compile for tallyd; the rule is left out: {e}",
                    m.matcher
                ),
            );
            return false;
        }
    } else if !c.glob.is_match(&m.matcher) {
        f.push(
            Kind::Error,
            m.line_of("match"),
            format!("invalid match: {}", m.matcher),
        );
    }
    // statsd_exporter checks these against the observer the mapping resolves to, once one of
    // the mapping and the defaults names it.
    let named = m.observer.is_some() || d.observer.is_some();
    match named.then(|| observer(m, d)) {
        Some(Observer::Histogram) if m.summary.is_some() => f.push(
            Kind::Error,
            m.line_of("summary_options"),
            "cannot use histogram observer and summary options at the same time".into(),
        ),
        Some(Observer::Summary) if m.histogram.is_some() => f.push(
            Kind::Error,
            m.line_of("histogram_options"),
            "cannot use summary observer and histogram options at the same time".into(),
        ),
        _ => {}
    }
    f.errors() == before
}

/// Whether some name can match both globs: as many segments, each pair equal or one a `*`.
fn overlap(a: &[&str], b: &[&str]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || *x == "*" || *y == "*")
}

/// Warns of a glob written twice: statsd_exporter's matcher gives the first copy the second's
/// place in the file, so a rule between them wins the names both match.
fn duplicate_defect(globs: &[Rule<'_>], f: &mut Findings) {
    for (j, dup) in globs.iter().enumerate() {
        let Some(i) = globs[..j]
            .iter()
            .position(|e| e.segs == dup.segs && e.shares_root(dup))
        else {
            continue;
        };
        let first = &globs[i];
        if let Some(between) = globs[i + 1..j]
            .iter()
            .find(|k| overlap(&k.segs, &first.segs) && k.shares_root(first))
        {
            f.push(
                Kind::Warning,
                dup.m.line_of("match"),
                format!(
                    "`{}` is written twice (lines {} and {}): statsd_exporter then gives the \
                     first the second's place, so `{}` (line {}) wins the names both match. \
                     tallyd keeps the file's order: the first `{}` wins them.",
                    dup.m.matcher,
                    first.m.line_of("match"),
                    dup.m.line_of("match"),
                    between.m.matcher,
                    between.m.line_of("match"),
                    first.m.matcher,
                ),
            );
        }
    }
}

/// Warns of each glob that statsd_exporter never matches because it is a segment-prefix of an
/// earlier glob (its matcher attaches no rule to a path an earlier, longer rule made).
fn prefix_defect(globs: &[Rule<'_>], f: &mut Findings) {
    for (j, later) in globs.iter().enumerate() {
        let Some(earlier) = globs[..j].iter().find(|e| {
            e.segs.len() > later.segs.len()
                && e.segs[..later.segs.len()] == later.segs[..]
                && e.shares_root(later)
        }) else {
            continue;
        };
        f.push(
            Kind::Warning,
            later.m.line_of("match"),
            format!(
                "statsd_exporter never matches `{}` here: it begins the earlier rule `{}` (line \
                 {}), and its matcher attaches no rule where an earlier, longer one passes. Names \
                 it was meant for were exported unmapped; tallyd maps them by this rule. Move it \
                 above line {} in the YAML if statsd_exporter stays in use.",
                later.m.matcher,
                earlier.m.matcher,
                earlier.m.line_of("match"),
                earlier.m.line_of("match"),
            ),
        );
    }
}

/// With `glob_disable_ordering`, statsd_exporter follows a literal segment without trying `*`
/// when the rest fails, so a name can be lost between a specific glob and a wider one. Warns
/// of each such pair with a name it loses (at most 20 warnings).
fn ordering_defect(globs: &[Rule<'_>], f: &mut Findings) {
    let mut told = 0;
    for lit in globs {
        for wide in globs {
            if told >= 20 {
                return;
            }
            if std::ptr::eq(lit, wide)
                || lit.segs.len() != wide.segs.len()
                || !lit.shares_root(wide)
            {
                continue;
            }
            if let Some(name) = lost_name(&lit.segs, &wide.segs) {
                told += 1;
                f.push(
                    Kind::Warning,
                    wide.m.line_of("match"),
                    format!(
                        "with glob_disable_ordering, statsd_exporter may leave `{name}` \
                         unmapped: it follows `{}` (line {}) and does not come back to `{}`. \
                         tallyd maps it by `{}`.",
                        lit.m.matcher,
                        lit.m.line_of("match"),
                        wide.m.matcher,
                        wide.m.matcher,
                    ),
                );
            }
        }
    }
}

/// A name `wide` matches that follows `lit`'s literal segment where `wide` has `*`, then fails
/// `lit` at a later segment, if there is one.
fn lost_name(lit: &[&str], wide: &[&str]) -> Option<String> {
    let p = lit.iter().zip(wide).position(|(l, w)| l != w)?;
    if lit[p] == "*" || wide[p] != "*" || !lit[..p].iter().zip(wide).all(|(l, w)| l == w) {
        return None;
    }
    let q = (p + 1..lit.len()).find(|&q| lit[q] != "*" && (wide[q] == "*" || wide[q] != lit[q]))?;
    let name: Vec<String> = (0..lit.len())
        .map(|i| {
            if i == q {
                if wide[q] != "*" {
                    wide[q].to_string()
                } else if lit[q] == "x" {
                    "y".into()
                } else {
                    "x".into()
                }
            } else if lit[i] != "*" && (i <= p || wide[i] == "*" || wide[i] == lit[i]) {
                lit[i].to_string()
            } else if wide[i] != "*" {
                wide[i].to_string()
            } else {
                "x".into()
            }
        })
        .collect();
    Some(name.join("."))
}

/// How a regex is wrapped for tallyd's anchored matching.
struct Wrap {
    /// The pattern tallyd matches.
    pattern: String,
    /// Added to each numbered reference (1 when the original is wrapped in a group).
    shift: usize,
    captures: usize,
    names: Vec<String>,
}

fn wrap(m: &yaml::Mapping, uses_whole: bool) -> Option<Wrap> {
    let (captures, names) = regex_captures(&m.matcher).ok()?;
    let re = &m.matcher;
    // Always wrapped: a `^` or `$` inside still anchors as it did, and an alternation such as
    // `^a|b$` keeps its meaning (tallyd would otherwise anchor the whole of it).
    Some(if uses_whole {
        Wrap {
            pattern: format!(".*?({re}).*"),
            shift: 1,
            captures,
            names,
        }
    } else {
        Wrap {
            pattern: format!(".*?(?:{re}).*"),
            shift: 0,
            captures,
            names,
        }
    })
}

/// A template as tallyd reads it, with what statsd_exporter expands to nothing dropped.
fn template(
    t: &str,
    r: &Rule<'_>,
    wrap: Option<&Wrap>,
    c: &Checks,
    at: usize,
    f: &mut Findings,
) -> String {
    let lit = |s: &str| s.replace('$', "$$");
    let mut out = String::new();
    let empty = |what: &str, f: &mut Findings| {
        f.push(
            Kind::Warning,
            at,
            format!(
                "`{what}` in {t:?} expands to nothing in statsd_exporter (no such capture{}); \
                 left out",
                if what.contains('_') {
                    "; `$1_x` names a capture `1_x`: write `${1}_x` for capture 1 then `_x`"
                } else {
                    ""
                }
            ),
        )
    };
    if !r.regex {
        let stars = r.segs.iter().filter(|s| **s == "*").count();
        if t.contains('%') && c.template.is_match(t) {
            f.push(
                Kind::Warning,
                at,
                format!(
                    "{t:?}: statsd_exporter's glob formatter mangles a `%` beside a reference \
                     (`%!` output); tallyd writes it as it is"
                ),
            );
        }
        let mut last = 0;
        for cap in c.template.captures_iter(t) {
            let whole = cap.get(0).expect("match");
            out.push_str(&lit(&t[last..whole.start()]));
            last = whole.end();
            match cap[1].parse::<usize>() {
                Ok(n) if (1..=stars).contains(&n) => {
                    let _ = write!(out, "${{{n}}}");
                }
                Ok(0) => {
                    f.push(
                        Kind::Warning,
                        at,
                        format!(
                            "`$0` in {t:?}: statsd_exporter 0.30 expands it to nothing in a glob, \
                             later versions to the whole name; tallyd writes the whole name"
                        ),
                    );
                    out.push_str("${0}");
                }
                _ => empty(whole.as_str(), f),
            }
        }
        out.push_str(&lit(&t[last..]));
        return out;
    }
    let Some(w) = wrap else { return lit(t) };
    let Ok(parts) = pieces(t) else {
        // Go's Expand writes an unclosed `${` as it is.
        return lit(t);
    };
    for p in parts {
        match p {
            Piece::Text(s) => out.push_str(&lit(s)),
            Piece::Ref(name) => match name.parse::<usize>() {
                Ok(n) if n < w.captures => {
                    let _ = write!(out, "${{{}}}", n + w.shift);
                }
                Err(_) if w.names.iter().any(|x| x == name) => {
                    let _ = write!(out, "${{{name}}}");
                }
                _ => empty(&format!("${name}"), f),
            },
        }
    }
    out
}

fn uses_whole_match(m: &yaml::Mapping) -> bool {
    std::iter::once(&m.name)
        .chain(m.labels.iter().map(|(_, v)| v))
        .any(|t| pieces(t).unwrap_or_default().contains(&Piece::Ref("0")))
}

/// Writes one `[[mapping]]` table.
fn rule(r: &Rule<'_>, file: &File, c: &Checks, source: &str, f: &mut Findings, out: &mut String) {
    let m = r.m;
    let d = &file.defaults;
    let wrap = if r.regex {
        match wrap(m, uses_whole_match(m)) {
            Some(w) => Some(w),
            None => {
                f.push(
                    Kind::Lossy,
                    m.line_of("match"),
                    format!("regex {:?} does not compile for tallyd", m.matcher),
                );
                return;
            }
        }
    } else {
        None
    };
    let _ = writeln!(out, "# {source}:{}", m.line);
    out.push_str("[[mapping]]\n");
    match &wrap {
        Some(w) => {
            if w.pattern != m.matcher {
                let _ = writeln!(
                    out,
                    "# statsd_exporter's regex {}, unanchored",
                    quote_regex(&m.matcher)
                );
            }
            let _ = writeln!(out, "regex = {}", quote_regex(&w.pattern));
        }
        None => {
            let _ = writeln!(out, "match = {}", quote(&m.matcher));
        }
    }
    if let Some(t) = m.metric_type {
        let t = match t {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Observer => "observer",
        };
        let _ = writeln!(out, "type = \"{t}\"");
    }
    let name = template(&m.name, r, wrap.as_ref(), c, m.line_of("name"), f);
    if m.drop {
        out.push_str("action = \"drop\"\n");
        out.push('\n');
        return;
    }
    if name.is_empty() {
        f.push(
            Kind::Warning,
            m.line_of("name"),
            "the name expands to nothing for every metric, so statsd_exporter drops what this \
             rule matches (counted as empty_metric_name); tallyd drops it too"
                .into(),
        );
        out.push_str("action = \"drop\"\n\n");
        return;
    }
    let _ = writeln!(out, "name = {}", quote(&name));
    let obs = observer(m, d);
    let admits_observer = matches!(m.metric_type, None | Some(MetricType::Observer));
    if !m.labels.is_empty() {
        let mut parts = Vec::new();
        for (k, v) in &m.labels {
            let at = m.line_of("labels");
            if k.starts_with("__") {
                f.push(
                    Kind::Lossy,
                    at,
                    format!("label {k}: names starting with __ are Prometheus's own; left out"),
                );
                continue;
            }
            let reserved = match obs {
                Observer::Histogram => "le",
                Observer::Summary => "quantile",
            };
            if admits_observer && k == reserved {
                f.push(
                    Kind::Lossy,
                    at,
                    format!(
                        "label {k}: the exposition's own label on this rule's observers; left out"
                    ),
                );
                continue;
            }
            // A label that is always empty still removes a tag of its name, in both.
            let v = template(v, r, wrap.as_ref(), c, at, f);
            parts.push(format!("{} = {}", label_key(k), quote(&v)));
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "labels = {{ {} }}", parts.join(", "));
        }
    }
    if let Some(h) = &m.help {
        let _ = writeln!(out, "help = {}", quote(h));
    }
    if let Some(ttl) = m.ttl.filter(|t| !t.is_zero()) {
        let _ = writeln!(out, "ttl = {}", ttl_value(ttl, m.line_of("ttl"), f));
    }
    if let Some(s) = m.scale {
        if s < 0.0 && matches!(m.metric_type, None | Some(MetricType::Counter)) {
            f.push(
                Kind::Lossy,
                m.line_of("scale"),
                format!(
                    "scale {s}: a negative scale would make counters go down (statsd_exporter's \
                     client refuses that); left out"
                ),
            );
        } else if s.is_finite() && s != 0.0 {
            let _ = writeln!(out, "scale = {}", float(s));
        } else {
            f.push(
                Kind::Lossy,
                m.line_of("scale"),
                format!("scale {s}: tallyd takes a finite, non-zero scale; left out"),
            );
        }
    }
    if m.honor_labels {
        out.push_str("honor_labels = true\n");
    }
    if admits_observer {
        match obs {
            Observer::Histogram => {
                let quantile = m.labels.iter().any(|(k, _)| k == "quantile");
                if m.observer.is_some() || quantile {
                    out.push_str("observer = \"histogram\"\n");
                }
                if let Some(h) = &m.histogram {
                    if let Some(b) = buckets(h, f) {
                        let _ = writeln!(out, "buckets = {b}");
                    }
                    out.push_str(&native(h, f));
                }
            }
            Observer::Summary => {
                let (q, w) = summary_keys(m.summary.as_ref(), f);
                // tallyd checks `le` against the rule's own observer.
                let le = m.labels.iter().any(|(k, _)| k == "le");
                if m.observer.is_some() || q.is_some() || w.is_some() || le {
                    out.push_str("observer = \"summary\"\n");
                }
                if let Some(q) = q {
                    let _ = writeln!(out, "quantiles = {q}");
                }
                if let Some(w) = w {
                    let _ = writeln!(out, "window = {w}");
                }
            }
        }
    } else if m.summary.is_some() || m.histogram.is_some() {
        f.push(
            Kind::Note,
            m.line,
            "summary or histogram options on a rule for counters or gauges have no effect; left out"
                .into(),
        );
    }
    out.push('\n');
}

/// A TOML key: bare when it can be.
fn label_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_names_of_the_ordering_defect() {
        let s = |x: &'static str| x.split('.').collect::<Vec<_>>();
        assert_eq!(
            lost_name(&s("a.b.c"), &s("a.*.*")).as_deref(),
            Some("a.b.x")
        );
        assert_eq!(
            lost_name(&s("noorder.ccc.bbb"), &s("noorder.*.*")).as_deref(),
            Some("noorder.ccc.x")
        );
        assert_eq!(lost_name(&s("noorder.ccc.bbb"), &s("noorder.*.bbb")), None);
        assert_eq!(lost_name(&s("noorder.*.bbb"), &s("noorder.*.*")), None);
        assert_eq!(
            lost_name(&s("a.b.x"), &s("a.*.*")).as_deref(),
            Some("a.b.y")
        );
    }
}
