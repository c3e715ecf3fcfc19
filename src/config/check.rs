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

use serde::de::{DeserializeOwned, IntoDeserializer as _};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, ConfigError, Dogstatsd, Http, Limits, Log, Parse, Tcp, Udp, Unixgram};
use super::{Defaults, MappingRule, line_col};

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

    fn span(&self, path: &[Step<'_>]) -> Range<usize> {
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
                Some(v) => value = Some(v),
                None => break,
            }
        }
        span
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

/// Every error in `text`, in file order, and the config read from the rest of the file (the
/// lines of keys in error blanked out), if that reads: the checks that span keys, and the
/// mapping rules, are run on it, so that one bad key does not hide another error.
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
    for (key, value) in tree.root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        match name {
            "http" => per_key::<Http>(text, name, value, &mut errors),
            "parse" => per_key::<Parse>(text, name, value, &mut errors),
            "dogstatsd" => per_key::<Dogstatsd>(text, name, value, &mut errors),
            "defaults" => per_key::<Defaults>(text, name, value, &mut errors),
            "limits" => per_key::<Limits>(text, name, value, &mut errors),
            "log" => per_key::<Log>(text, name, value, &mut errors),
            "udp" => per_element::<Udp>(text, name, value, true, &mut errors),
            "tcp" => per_element::<Tcp>(text, name, value, true, &mut errors),
            "unixgram" => per_element::<Unixgram>(text, name, value, true, &mut errors),
            "mapping" => per_element::<MappingRule>(text, name, value, false, &mut errors),
            _ => {
                let (line, column) = line_col(text, key.span().start);
                errors.push(ConfigError {
                    line,
                    column,
                    key: Some(name.to_string()),
                    message: format!(
                        "unknown section `{name}`; the sections are http, udp, tcp, unixgram, \
                         parse, dogstatsd, defaults, limits, mapping and log"
                    ),
                });
            }
        }
    }
    // The rest of the file: every line with an error blanked (line numbers kept).
    let bad: std::collections::HashSet<usize> = errors.iter().map(|e| e.line).collect();
    let rest: String = text
        .split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| if bad.contains(&(i + 1)) { "\n" } else { l })
        .collect();
    let config = match toml::from_str::<Config>(&rest) {
        Ok(config) => {
            let (root, _) = DeTable::parse_recoverable(&rest);
            errors.extend(config.validate(&Tree { text: &rest, root }));
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

/// Reads each key of the table `value` on its own into `T` (whose other keys default), so
/// every bad key is reported.
fn per_key<T: DeserializeOwned>(
    text: &str,
    section: &str,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) {
    let DeValue::Table(table) = value.get_ref() else {
        let (line, column) = line_col(text, value.span().start);
        errors.push(ConfigError {
            line,
            column,
            key: Some(section.to_string()),
            message: format!("`{section}` is a table: write it as [{section}]"),
        });
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
            err.key = Some(format!("{section}.{}", k.get_ref()));
            if err.message.contains("invalid socket address syntax") {
                err.message.push_str(
                    "; write an IP address and a port, e.g. \"127.0.0.1:8125\" or \"[::1]:8125\" \
                     (host names such as localhost are not resolved)",
                );
            }
            errors.push(err);
        }
    }
}

/// Reads each table of the array `value` (`[[section]]`): key by key when `by_key` (every key
/// of those sections has a default), else whole.
fn per_element<T: DeserializeOwned>(
    text: &str,
    section: &str,
    value: &Spanned<DeValue<'_>>,
    by_key: bool,
    errors: &mut Vec<ConfigError>,
) {
    let DeValue::Array(items) = value.get_ref() else {
        let (line, column) = line_col(text, value.span().start);
        errors.push(ConfigError {
            line,
            column,
            key: Some(section.to_string()),
            message: format!(
                "`{section}` is a list of tables: write each as [[{section}]] (with two brackets)"
            ),
        });
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let name = format!("{section}[{i}]");
        if by_key {
            per_key::<T>(text, &name, item, errors);
        } else if let Err(e) = T::deserialize(item.clone().into_deserializer()) {
            let mut err = super::locate(text, &e);
            if e.span().is_none() {
                (err.line, err.column) = line_col(text, item.span().start);
            }
            errors.push(err);
        }
    }
}
