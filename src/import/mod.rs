//! `tallyd import statsd-exporter`: a prometheus/statsd_exporter deployment, its mapping file
//! and its command-line flags, translated into one tallyd config that behaves as it did, with
//! `[defaults] naming = "statsd_exporter"` so that every series keeps its name.
//!
//! - `yaml`: the mapping file read into its model, each value with its line, and checked as
//!   statsd_exporter checks it.
//! - `rules`: the mappings as `[[mapping]]` rules in the order statsd_exporter tries them,
//!   its matching semantics kept, its matcher's defects found and reported.
//! - `flags`: the flags, and an exporter-toolkit web config, as tallyd's sections.
//!
//! What cannot be said in tallyd's config is a [`Kind::Lossy`] finding; the command refuses
//! to write the config while there is one, unless told to allow it.

mod flags;
mod rules;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The input is invalid (statsd_exporter would refuse it too): nothing is written.
    Error,
    /// Something tallyd's config cannot express: written only with `--allow-lossy`.
    Lossy,
    /// Translated, but the user should look: a statsd_exporter defect whose intent was kept,
    /// a reference that expands to nothing.
    Warning,
    /// Translated, for information.
    Note,
}

/// One thing the import has to say, at its place in the input.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `file:line`, or the flag.
    pub at: String,
    /// How serious.
    pub kind: Kind,
    /// What and why.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Error => "error",
            Kind::Lossy => "cannot translate",
            Kind::Warning => "warning",
            Kind::Note => "note",
        };
        write!(f, "{}: {kind}: {}", self.at, self.message)
    }
}

/// The findings so far, located in the file being read.
#[derive(Debug, Default)]
pub(crate) struct Findings(pub Vec<Finding>, String);

impl Findings {
    /// A finding at `line` of the current file.
    fn push(&mut self, kind: Kind, line: usize, message: String) {
        let at = format!("{}:{line}", self.1);
        self.push_at(kind, &at, message);
    }

    /// A finding at a place given as text.
    fn push_at(&mut self, kind: Kind, at: &str, message: String) {
        self.0.push(Finding {
            at: at.to_string(),
            kind,
            message,
        });
    }

    fn errors(&self) -> usize {
        self.0.iter().filter(|f| f.kind == Kind::Error).count()
    }
}

/// What to import.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The mapping file (`--mapping-config`; else the flags' `--statsd.mapping-config`).
    pub mapping: Option<PathBuf>,
    /// statsd_exporter's flags, as its command line had them.
    pub flags: Vec<String>,
}

/// The outcome: the config (unless an error prevents it) and every finding.
#[derive(Debug)]
pub struct Import {
    /// The tallyd config, when there is no error.
    pub toml: Option<String>,
    /// In input order: the mapping file's, then the flags'.
    pub findings: Vec<Finding>,
}

impl Import {
    /// Whether anything could not be expressed.
    pub fn lossy(&self) -> bool {
        self.findings.iter().any(|f| f.kind == Kind::Lossy)
    }
}

/// Translates a statsd_exporter deployment; `read` reads the files it names.
pub fn statsd_exporter(opts: &Options, read: &dyn Fn(&Path) -> std::io::Result<String>) -> Import {
    let mut f = Findings::default();
    let flags = flags::Flags::parse(&opts.flags, &mut f);
    let mapping = opts.mapping.clone().or_else(|| flags.mapping_config());
    let file = match &mapping {
        Some(path) => {
            f.1 = path.display().to_string();
            match read(path) {
                Ok(text) => yaml::read(&text, &mut f),
                Err(e) => {
                    f.push_at(Kind::Error, &f.1.clone(), format!("cannot read: {e}"));
                    yaml::File::default()
                }
            }
        }
        None => yaml::File::default(),
    };
    let source = mapping.as_deref().and_then(Path::file_name).map_or_else(
        || "the mapping file".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = String::new();
    out.push_str(
        "# tallyd config imported from statsd_exporter by `tallyd import statsd-exporter`",
    );
    match &mapping {
        Some(p) => out.push_str(&format!(
            "\n# mapping file: {}",
            p.display().to_string().escape_debug()
        )),
        None => out.push_str("\n# no mapping file"),
    }
    if !opts.flags.is_empty() {
        out.push_str("\n# flags:");
        for a in &opts.flags {
            out.push(' ');
            out.extend(a.escape_debug());
        }
    }
    out.push_str(
        "\n#\n# statsd_exporter listens on every interface by default, and so does this file.\n\
         # Check it with: tallyd check-config <this file>\n\n",
    );
    let mut body = String::new();
    flags::sections(&flags, &mut f, read, &mut body);
    rules::defaults(&file, &mut f, &mut body);
    if mapping.is_none() {
        // Without a mapping file statsd_exporter's histograms have no native part.
        body.push_str("histograms = \"classic\"\n");
    }
    body.push('\n');
    rules::mappings(&file, &source, &mut f, &mut body);
    out.push_str(&body);
    let toml = (f.errors() == 0).then_some(out);
    Import {
        toml,
        findings: f.0,
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A regex as a TOML literal string (no escapes to double) when it can be one.
fn quote_regex(s: &str) -> String {
    if s.contains(['\'', '\n', '\r']) || s.chars().any(char::is_control) {
        quote(s)
    } else {
        format!("'{s}'")
    }
}

/// A TOML float.
fn float(v: f64) -> String {
    toml::Value::Float(v).to_string()
}

/// A TOML array of floats.
fn floats(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| float(*x)).collect();
    format!("[{}]", parts.join(", "))
}

/// A duration as tallyd writes one: the largest unit that is exact.
fn tallyd_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = if ms == 0 {
        "1ms".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    quote(&s)
}
