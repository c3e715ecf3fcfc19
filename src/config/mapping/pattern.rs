//! Regex rules: Go's (and statsd_exporter's) ASCII meaning of `\w`, `\d` and `\s`, and sets of
//! rules compiled in chunks.
//!
//! The `regex` crate reads `\w` as every Unicode word character, which compiles to an automaton
//! of hundreds of kilobytes per use; RE2 and Go read it as `[0-9A-Za-z_]`. Each Perl class in a
//! rule's pattern is rewritten to its ASCII class before compiling (`\w` to `[[:word:]]`, `\D`
//! to `[^0-9]`, `[\w-]` to `[[:word:]-]`), so patterns mean what they mean in statsd_exporter
//! and cost a few kilobytes. Everything else keeps Unicode semantics: `.` and negated classes
//! match one character, and captures are always whole characters.

use std::convert::Infallible;
use std::ops::Range;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use regex_syntax::ast::{self, Ast, ClassPerl, ClassPerlKind, ClassSetItem};

/// Regex rules per [`RegexSet`]: small enough that one set compiles well inside the crate's
/// size limits however many rules there are, large enough that a name is tried against few.
pub(super) const CHUNK: usize = 256;

/// A regex rule's pattern, checked and rewritten.
#[derive(Debug)]
pub(super) struct Ascii {
    /// The pattern with every Perl class made ASCII.
    pub(super) pattern: String,
    /// Capture groups, counting `$0`.
    pub(super) captures: usize,
    /// The names of the named groups.
    pub(super) names: Vec<String>,
}

/// Checks `pattern` as the `regex` crate would (the error is the crate's own message, with a
/// caret under the fault) and rewrites it ([`Ascii`]).
pub(super) fn ascii(pattern: &str) -> Result<Ascii, String> {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    let tree = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    let Ok(mut found) = ast::visit(&tree, Found::default());
    found.edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(pattern.len() + 16 * found.edits.len());
    let mut at = 0;
    for (range, with) in found.edits {
        out.push_str(&pattern[at..range.start]);
        out.push_str(with);
        at = range.end;
    }
    out.push_str(&pattern[at..]);
    Ok(Ascii {
        pattern: out,
        captures: found.captures + 1,
        names: found.names,
    })
}

/// What a walk of the pattern finds: each Perl class's span and its ASCII replacement, and
/// the capture groups.
#[derive(Default)]
struct Found {
    edits: Vec<(Range<usize>, &'static str)>,
    captures: usize,
    names: Vec<String>,
}

impl Found {
    fn push(&mut self, p: &ClassPerl, inside_brackets: bool) {
        use ClassPerlKind::{Digit, Space, Word};
        let with = match (&p.kind, p.negated, inside_brackets) {
            (Word, false, false) => "[[:word:]]",
            (Word, true, false) => "[^[:word:]]",
            (Digit, false, false) => "[0-9]",
            (Digit, true, false) => "[^0-9]",
            (Space, false, false) => "[[:space:]]",
            (Space, true, false) => "[^[:space:]]",
            (Word, false, true) => "[:word:]",
            (Word, true, true) => "[:^word:]",
            (Digit, false, true) => "[:digit:]",
            (Digit, true, true) => "[:^digit:]",
            (Space, false, true) => "[:space:]",
            (Space, true, true) => "[:^space:]",
        };
        self.edits
            .push((p.span.start.offset..p.span.end.offset, with));
    }
}

impl ast::Visitor for Found {
    type Output = Self;
    type Err = Infallible;

    fn finish(self) -> Result<Self, Infallible> {
        Ok(self)
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), Infallible> {
        match ast {
            Ast::ClassPerl(p) => self.push(p, false),
            Ast::Group(g) => match &g.kind {
                ast::GroupKind::CaptureIndex(_) => self.captures += 1,
                ast::GroupKind::CaptureName { name, .. } => {
                    self.captures += 1;
                    self.names.push(name.name.clone());
                }
                ast::GroupKind::NonCapturing(_) => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ClassSetItem) -> Result<(), Infallible> {
        if let ClassSetItem::Perl(p) = item {
            self.push(p, true);
        }
        Ok(())
    }
}

/// `re` (already ASCII) anchored at both ends: a rule matches the whole name.
pub(super) fn anchored(re: &str) -> String {
    let inner = re.strip_prefix('^').unwrap_or(re);
    let inner = match inner.strip_suffix('$') {
        Some(i) if !i.ends_with('\\') => i,
        _ => inner,
    };
    format!("^(?:{inner})$")
}

/// One regex rule's own regex, for its captures, compiled the first time the rule wins a
/// name (most rules of a large file never do on a given host, and each costs tens of
/// kilobytes compiled). Its set compiled the same pattern, so this compile cannot fail on
/// the pattern; if it did, the rule maps nothing rather than panic a worker.
#[derive(Debug)]
pub(super) struct Lazy {
    anchored: Box<str>,
    regex: std::sync::OnceLock<Option<Regex>>,
}

impl Lazy {
    pub(super) fn new(anchored: &str) -> Self {
        Self {
            anchored: anchored.into(),
            regex: std::sync::OnceLock::new(),
        }
    }

    pub(super) fn get(&self) -> Option<&Regex> {
        self.regex
            .get_or_init(|| RegexBuilder::new(&self.anchored).build().ok())
            .as_ref()
    }
}

/// Up to [`CHUNK`] regex rules tried at once, and their rule indexes in rule order.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) set: RegexSet,
    pub(super) rules: Vec<u32>,
}

impl Chunk {
    pub(super) fn new(patterns: &[String], rules: Vec<u32>) -> Result<Self, regex::Error> {
        Ok(Self {
            set: RegexSetBuilder::new(patterns).build()?,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_classes_become_ascii() {
        for (from, to) in [
            (r"api\.(\w+)", r"api\.([[:word:]]+)"),
            (
                r"\W\d\D\s\S",
                r"[^[:word:]][0-9][^0-9][[:space:]][^[:space:]]",
            ),
            (r"[\w-]+\.[^\d.]", r"[[:word:]-]+\.[^[:digit:].]"),
            (r"\\w \x41 \pL", r"\\w \x41 \pL"),
        ] {
            assert_eq!(ascii(from).unwrap().pattern, to, "{from}");
        }
        let a = ascii(r"(\w+)(?:x)(?P<n>y)?\.(\W)").unwrap();
        assert_eq!(
            (a.captures, a.names.as_slice()),
            (4, &["n".to_string()][..])
        );
        let re = Lazy::new(&anchored(&ascii(r"(\w+)\.(\W)").unwrap().pattern));
        let re = re.get().unwrap();
        assert!(
            !re.is_match("café.x"),
            "é is not a word character, as in Go"
        );
        let caps = re.captures("cafe.é").unwrap();
        assert_eq!(&caps[2], "é", "a negated class matches a whole character");
    }
}
