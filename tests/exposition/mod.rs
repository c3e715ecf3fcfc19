//! A strict reader of the Prometheus text exposition (format 0.0.4), used as a test oracle by
//! `tests/hostile.rs`, `tests/proptest.rs` and `tests/overload.rs`.
//!
//! It checks what `promtool check metrics` (the Go `expfmt` text parser) would reject, and the
//! structural lint findings tallyd is responsible for, so the property tests can run it on
//! thousands of scrapes without a Go toolchain:
//! - every line is `# HELP name text`, `# TYPE name type`, another `# ` comment, or a sample
//!   `name{labels} value` with no timestamp;
//! - names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` and never
//!   start with `__`; no label name twice in one sample; label values use only `\\`, `\"` and
//!   `\n` escapes; values are floats or `+Inf`/`-Inf`/`NaN`;
//! - each family has at most one HELP and one TYPE, both before its samples; a family's lines
//!   are contiguous; a sample name resolves to its family the way `expfmt` resolves it (exact
//!   name, or a histogram's `_bucket`/`_sum`/`_count`), so a `# TYPE x_sum ...` after a
//!   histogram `x` is the error the Go parser reports ("second TYPE line");
//! - `le` only on a histogram's `_bucket` samples (and always there), `quantile` only on a
//!   summary's quantile samples (and always there), counters end in `_total`; no series
//!   appears twice.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`x_bucket` for a histogram `x`).
    pub name: String,
    /// The family it belongs to.
    pub family: String,
    /// Label pairs in line order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A family and its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family name.
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses a value as Go's `strconv.ParseFloat` does for what an exposition should hold.
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let b = s.as_bytes();
    let body = match b.first() {
        Some(b'+' | b'-') => &b[1..],
        _ => b,
    };
    let ok_chars = body
        .iter()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'));
    if body.is_empty() || !ok_chars || !(body[0].is_ascii_digit() || body[0] == b'.') {
        return Err(format!("value {s:?} is not a number"));
    }
    s.parse::<f64>()
        .map_err(|e| format!("value {s:?} does not parse: {e}"))
}

/// Label pairs in line order.
pub type Labels = Vec<(String, String)>;

/// Parses `{k="v",...}` starting after the `{`; returns the labels and the rest after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((out, rest));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let name = &s[..eq];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if name.starts_with("__") {
            return Err(format!("reserved label name {name:?}"));
        }
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated label value")?;
            match c {
                '"' => break i,
                '\n' => return Err("raw newline in a label value".into()),
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("invalid escape {other:?} in a label value")),
                },
                c => value.push(c),
            }
        };
        if !seen.insert(name) {
            return Err(format!("label {name:?} twice"));
        }
        out.push((name.to_string(), value));
        s = &s[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// Validates a whole exposition; returns its families in order.
pub fn parse(text: &str) -> Result<Vec<Family>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut typed: HashSet<String> = HashSet::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut closed: HashSet<usize> = HashSet::new();
    let mut current: Option<usize> = None;
    let mut series: HashSet<String> = HashSet::new();
    // The family a name resolves to, the way expfmt's setOrCreateCurrentMF does.
    let resolve = |name: &str, families: &[Family], by_name: &HashMap<String, usize>| {
        if let Some(&i) = by_name.get(name) {
            return Some(i);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(stem) = name.strip_suffix(suffix)
                && let Some(&i) = by_name.get(stem)
                && (families[i].kind == "histogram"
                    || (families[i].kind == "summary" && suffix != "_bucket"))
            {
                return Some(i);
            }
        }
        None
    };
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {:.200}", n + 1, line);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.splitn(4, ' ');
            let (_, kw, name) = (parts.next(), parts.next(), parts.next());
            let (Some(kw @ ("HELP" | "TYPE")), Some(name)) = (kw, name) else {
                continue; // a plain comment
            };
            if !is_name(name) {
                return Err(at(format!("invalid metric name {name:?}")));
            }
            let arg = parts.next().unwrap_or("");
            let i = match resolve(name, &families, &by_name) {
                Some(i) if families[i].name != name => {
                    return Err(at(format!(
                        "{kw} for {name:?}, whose samples belong to the histogram {:?}",
                        families[i].name
                    )));
                }
                Some(i) => i,
                None => {
                    families.push(Family {
                        name: name.to_string(),
                        kind: "untyped".into(),
                        samples: Vec::new(),
                    });
                    by_name.insert(name.to_string(), families.len() - 1);
                    families.len() - 1
                }
            };
            if closed.contains(&i) {
                return Err(at(format!("family {name:?} is not contiguous")));
            }
            if let Some(c) = current
                && c != i
            {
                closed.insert(c);
            }
            current = Some(i);
            if !families[i].samples.is_empty() {
                return Err(at(format!("{kw} for {name:?} after its samples")));
            }
            if kw == "TYPE" {
                if !typed.insert(name.to_string()) {
                    return Err(at(format!("second TYPE for {name:?}")));
                }
                if !matches!(
                    arg,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(at(format!("unknown type {arg:?}")));
                }
                if arg == "counter" && !name.ends_with("_total") {
                    return Err(at(format!("counter {name:?} does not end in _total")));
                }
                families[i].kind = arg.to_string();
            } else {
                if !helped.insert(name.to_string()) {
                    return Err(at(format!("second HELP for {name:?}")));
                }
                let mut chars = arg.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                        return Err(at("invalid escape in HELP".into()));
                    }
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("invalid metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        if value.contains(' ') {
            return Err(at("more than a value after the labels".into()));
        }
        let value = parse_value(value).map_err(at)?;
        let i = resolve(name, &families, &by_name)
            .ok_or_else(|| at(format!("sample {name:?} without a TYPE")))?;
        if closed.contains(&i) {
            return Err(at(format!(
                "family {:?} is not contiguous",
                families[i].name
            )));
        }
        if let Some(c) = current
            && c != i
        {
            closed.insert(c);
        }
        current = Some(i);
        let fam = &families[i];
        let has = |k: &str| labels.iter().any(|(l, _)| l == k);
        let is_bucket = fam.kind == "histogram" && name == format!("{}_bucket", fam.name);
        if fam.kind == "histogram" && name == fam.name {
            return Err(at("a histogram sample without a suffix".into()));
        }
        if is_bucket {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .ok_or_else(|| at("bucket without `le`".into()))?;
            parse_value(&le.1).map_err(at)?;
        } else if has("le") && fam.kind == "histogram" {
            // Elsewhere `le` is a label like any other (Prometheus reads it so).
            return Err(at("`le` on a histogram sample that is not a bucket".into()));
        }
        let is_quantile = fam.kind == "summary" && name == fam.name;
        if is_quantile {
            let q = labels
                .iter()
                .find(|(k, _)| k == "quantile")
                .ok_or_else(|| at("summary sample without `quantile`".into()))?;
            parse_value(&q.1).map_err(at)?;
        } else if has("quantile") && fam.kind == "summary" {
            return Err(at("`quantile` on a summary's `_sum` or `_count`".into()));
        }
        let mut key: Vec<_> = labels.iter().map(|(k, v)| format!("{k}\u{1}{v}")).collect();
        key.sort();
        if !series.insert(format!("{name}\u{0}{}", key.join("\u{2}"))) {
            return Err(at("the same series twice".into()));
        }
        let family = fam.name.clone();
        families[i].samples.push(Sample {
            name: name.to_string(),
            family,
            labels,
            value,
        });
    }
    for f in &families {
        if !typed.contains(&f.name) {
            return Err(format!("family {:?} has no TYPE", f.name));
        }
    }
    Ok(families)
}

/// Runs `promtool check metrics` on `text` if promtool is on PATH. `None` when it is missing,
/// reported through [`crate::common::skip_or_fail`] (SKIPPED on stderr; a failure under
/// CI=true); `Some((exit code, combined output))` when it ran. The caller decides what output
/// is acceptable. (A test that includes this module includes `common` too.)
pub fn promtool(text: &str) -> Option<(i32, String)> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            crate::common::skip_or_fail(&format!(
                "`promtool check metrics` because promtool is not runnable ({e}); install it \
                 with `apt-get install prometheus`"
            ));
            return None;
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let input = text.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("promtool runs");
    let _ = writer.join();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.code().unwrap_or(-1), s))
}

/// Asserts `promtool check metrics` accepts `text` with no output, except lint findings that
/// contain `allow` (never a parse error). When promtool is missing: see [`promtool`].
pub fn assert_promtool(text: &str, context: &str, allow: Option<&str>) {
    let Some((code, out)) = promtool(text) else {
        return;
    };
    if code == 0 && out.trim().is_empty() {
        return;
    }
    if let Some(allow) = allow
        && code == 3
        && out
            .lines()
            .all(|l| l.trim().is_empty() || l.contains(allow))
    {
        return;
    }
    let path = std::env::temp_dir().join(format!(
        "tallyd-promtool-{}.prom",
        context.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let _ = std::fs::write(&path, text);
    panic!(
        "{context}: promtool check metrics exited {code}: {out:.2000}\n(scrape saved to {})",
        path.display()
    );
}

/// The sum of every sample named `name` whose labels include all of `want`.
pub fn sum(families: &[Family], name: &str, want: &[(String, String)]) -> Option<f64> {
    let mut found = None;
    for f in families {
        for s in &f.samples {
            if s.name == name && want.iter().all(|w| s.labels.contains(w)) {
                *found.get_or_insert(0.0) += s.value;
            }
        }
    }
    found
}

/// The value of the one sample named `name` whose label set is exactly `labels` (any order).
pub fn exact(families: &[Family], name: &str, labels: &[(String, String)]) -> Option<f64> {
    families.iter().flat_map(|f| &f.samples).find_map(|s| {
        (s.name == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|l| s.labels.contains(l)))
        .then_some(s.value)
    })
}

/// Splits a selector `name{k="v",...}` into a name and label pairs.
pub fn selector(sel: &str) -> (String, Vec<(String, String)>) {
    match sel.split_once('{') {
        None => (sel.to_string(), Vec::new()),
        Some((name, rest)) => {
            let (labels, _) = parse_labels(rest).expect("valid selector");
            (name.to_string(), labels)
        }
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; returns the status and the body, with a
/// chunked transfer encoding decoded and the body required to be UTF-8 (an exposition must be).
/// Decodes bytes before text, so a chunk boundary inside a UTF-8 sequence is harmless.
pub fn fetch(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: tallyd\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut out = Vec::with_capacity(body.len());
    if chunked {
        loop {
            let nl = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk header")?;
            let size_text = std::str::from_utf8(&body[..nl]).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
            body = &body[nl + 2..];
            if size == 0 {
                break;
            }
            if body.len() < size + 2 {
                return Err("truncated chunk".into());
            }
            out.extend_from_slice(&body[..size]);
            body = &body[size + 2..];
        }
    } else {
        out.extend_from_slice(body);
    }
    let text = String::from_utf8(out).map_err(|e| format!("body is not UTF-8: {e}"))?;
    Ok((status, text))
}
