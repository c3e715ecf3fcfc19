//! Checking a config file whole: every error in one pass, each at the line and column of the
//! key at fault (the key's own span from the TOML parser), for `tallyd check-config`; start and
//! reloads refuse a file on the same errors (the first one is reported there).
//!
//! The file is parsed into a spanned tree first (all syntax errors are reported at once). Each
//! key of each section is then read on its own, so one bad value does not hide the next, and an
//! error points at its key even inside `[[udp]]` (not at the table's header). Only a file with
//! no such error is read whole and its cross-key rules checked ([`Config::validate`]); those
//! errors are located through the same tree.

use std::ops::Range;

use serde::Deserialize as _;
use serde::de::{DeserializeOwned, IntoDeserializer as _};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    Config, ConfigError, Dogstatsd, Http, Limits, Log, Parse, RemoteWrite, Tcp, Udp, Unixgram,
};
use super::{Defaults, MappingRule, Relay, line_col};

/// One step of a path into the file: a key, or an index into an array of tables.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The file's spanned tree, for locating keys.
pub(crate) struct Tree<'t> {
    text: &'t str,
    root: Spanned<DeTable<'t>>,
}

impl<'t> Tree<'t> {
    /// The tree of `text`, if it parses.
    pub(crate) fn parse(text: &'t str) -> Option<Self> {
        let (root, errors) = DeTable::parse_recoverable(text);
        errors.is_empty().then_some(Tree { text, root })
    }

    /// The 1-based line of the key that `path` leads to (or of the deepest step found).
    pub(crate) fn line(&self, path: &[Step<'_>]) -> usize {
        line_col(self.text, self.span(path).start).0
    }

    /// An error at the key that `path` leads to (the deepest step found: a missing key is
    /// reported at its table), named by the path.
    pub(crate) fn error(&self, path: &[Step<'_>], message: String) -> ConfigError {
        let span = self.span(path);
        let (line, column) = line_col(self.text, span.start);
        ConfigError {
            line,
            column,
            key: Some(display(path)),
            message,
        }
    }

    /// True if every step of `path` is in the file.
    pub(crate) fn has(&self, path: &[Step<'_>]) -> bool {
        self.walk(path).1 == path.len()
    }

    fn span(&self, path: &[Step<'_>]) -> Range<usize> {
        self.walk(path).0
    }

    /// The span of the deepest step of `path` found, and how many steps were found.
    fn walk(&self, path: &[Step<'_>]) -> (Range<usize>, usize) {
        let mut found = 0;
        let mut table = self.root.get_ref();
        let mut span = 0..0;
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for step in path {
            let next = match (step, value.map(Spanned::get_ref)) {
                (Step::Key(k), None | Some(DeValue::Table(_))) => {
                    if let Some(DeValue::Table(t)) = value.map(Spanned::get_ref) {
                        table = t;
                    }
                    table
                        .iter()
                        .find(|(key, _)| key.get_ref() == k)
                        .map(|(key, v)| {
                            span = key.span();
                            v
                        })
                }
                (Step::Index(i), Some(DeValue::Array(a))) => a.get(*i).inspect(|v| {
                    span = v.span();
                }),
                _ => None,
            };
            match next {
                Some(v) => {
                    value = Some(v);
                    found += 1;
                }
                None => break,
            }
        }
        (span, found)
    }
}

/// `udp[1].batch` style.
fn display(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key refused by the per-key reads, to be left out of the rest of the file.
enum Bad {
    /// A whole section (unknown, or of the wrong shape).
    Section(String),
    /// A key of a section, or of one table of an array of tables.
    Key(String, Option<usize>, String),
}

/// Every error in `text`, in file order, and the config read from the rest of the file (the
/// keys in error left out), if that reads: the checks that span keys, and the mapping rules,
/// are run on it, so that one bad key does not hide another error.
pub(crate) fn check(text: &str) -> (Option<Config>, Vec<ConfigError>) {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // A tree recovered around a syntax error would report errors that are not there.
        return (
            None,
            syntax.iter().map(|e| super::locate(text, e)).collect(),
        );
    }
    let tree = Tree { text, root };
    let mut errors = Vec::new();
    let mut bad = Vec::new();
    for (key, value) in tree.root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        let mut found = Found {
            text,
            errors: &mut errors,
            bad: &mut bad,
        };
        match name {
            "http" => found.per_key::<Http>(name, None, value),
            "parse" => found.per_key::<Parse>(name, None, value),
            "dogstatsd" => found.per_key::<Dogstatsd>(name, None, value),
            "defaults" => found.per_key::<Defaults>(name, None, value),
            "limits" => found.per_key::<Limits>(name, None, value),
            "log" => found.per_key::<Log>(name, None, value),
            "relay" => found.per_key::<Relay>(name, None, value),
            "udp" => found.per_element::<Udp>(name, value),
            "tcp" => found.per_element::<Tcp>(name, value),
            "unixgram" => found.per_element::<Unixgram>(name, value),
            "mapping" => found.per_element::<MappingRule>(name, value),
            "remote_write" => found.per_element::<RemoteWrite>(name, value),
            _ => {
                let (line, column) = line_col(text, key.span().start);
                errors.push(ConfigError {
                    line,
                    column,
                    key: Some(name.to_string()),
                    message: format!(
                        "unknown section `{name}`; the sections are http, udp, tcp, unixgram, \
                         parse, dogstatsd, defaults, limits, mapping, remote_write, relay and log"
                    ),
                });
                bad.push(Bad::Section(name.to_string()));
            }
        }
    }
    // The rest of the file: the tree without the keys in error (spans still the file's).
    let mut rest = tree.root.clone();
    for b in &bad {
        let table = rest.get_mut();
        match b {
            Bad::Section(name) => {
                table.remove(name.as_str());
            }
            Bad::Key(section, index, key) => {
                let section = table.get_mut(section.as_str()).map(Spanned::get_mut);
                let inner = match (section, index) {
                    (Some(DeValue::Table(t)), None) => Some(t),
                    (Some(DeValue::Array(a)), Some(i)) => match a.get_mut(*i).map(Spanned::get_mut)
                    {
                        Some(DeValue::Table(t)) => Some(t),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(t) = inner {
                    t.remove(key.as_str());
                }
            }
        }
    }
    let config = match Config::deserialize(rest.into_deserializer()) {
        Ok(config) => {
            errors.extend(config.validate(&tree));
            Some(config)
        }
        Err(e) if errors.is_empty() => {
            errors.push(super::locate(text, &e));
            None
        }
        Err(_) => None,
    };
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    (config, errors)
}

/// What the per-key reads found: the errors, and the keys to leave out of the rest.
struct Found<'a> {
    text: &'a str,
    errors: &'a mut Vec<ConfigError>,
    bad: &'a mut Vec<Bad>,
}

impl Found<'_> {
    /// Reads each key of the table `value` (the section `section`, or its `index`th table) on
    /// its own into `T` (whose other keys default), so every bad key is reported.
    fn per_key<T: DeserializeOwned>(
        &mut self,
        section: &str,
        index: Option<usize>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let text = self.text;
        let name = match index {
            Some(i) => format!("{section}[{i}]"),
            None => section.to_string(),
        };
        let DeValue::Table(table) = value.get_ref() else {
            let (line, column) = line_col(text, value.span().start);
            self.errors.push(ConfigError {
                line,
                column,
                key: Some(name.clone()),
                message: format!("`{name}` is a table: write it as [{name}]"),
            });
            self.bad.push(Bad::Section(section.to_string()));
            return;
        };
        for (k, v) in table.iter() {
            let mut one = DeTable::new();
            one.insert(k.clone(), v.clone());
            let whole = Spanned::new(value.span(), one);
            if let Err(e) = T::deserialize(whole.into_deserializer()) {
                let mut err = super::locate(text, &e);
                if e.span().is_none() || err.line == 0 {
                    (err.line, err.column) = line_col(text, k.span().start);
                }
                err.key = Some(format!("{name}.{}", k.get_ref()));
                if err.message.contains("invalid socket address syntax") {
                    err.message.push_str(
                        "; write an IP address and a port, e.g. \"127.0.0.1:8125\" or \
                         \"[::1]:8125\" (host names such as localhost are not resolved)",
                    );
                }
                self.errors.push(err);
                self.bad.push(Bad::Key(
                    section.to_string(),
                    index,
                    k.get_ref().to_string(),
                ));
            }
        }
    }

    /// Reads each table of the array `value` (`[[section]]`) key by key (every key of those
    /// sections has a default).
    fn per_element<T: DeserializeOwned>(&mut self, section: &str, value: &Spanned<DeValue<'_>>) {
        let DeValue::Array(items) = value.get_ref() else {
            let (line, column) = line_col(self.text, value.span().start);
            self.errors.push(ConfigError {
                line,
                column,
                key: Some(section.to_string()),
                message: format!(
                    "`{section}` is a list of tables: write each as [[{section}]] (with two \
                     brackets)"
                ),
            });
            self.bad.push(Bad::Section(section.to_string()));
            return;
        };
        for (i, item) in items.iter().enumerate() {
            self.per_key::<T>(section, Some(i), item);
        }
    }
}
