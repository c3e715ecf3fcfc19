//! The live configuration: the published [`Snapshot`], reloads, and the file watcher.
//!
//! A reload reads and validates the whole file on the caller's thread (never an ingest
//! worker), then publishes the new snapshot with one atomic swap. Workers compare their
//! snapshot pointer with the published one once per batch (no lock, no reference-count write)
//! and switch at the next batch; ingest never pauses. Reloads are serialised by a mutex so two
//! triggers (a file event and SIGHUP) cannot interleave their read-validate-publish steps.
//! Every reader sees one whole snapshot, old or new, and a worker's next batch uses the new one
//! rather than its cached resolutions (`tests/loom.rs`: `config_reload_is_seen_whole`; under
//! loom the cell is an `RwLock<Arc<_>>`, see [`crate::sync::Cell`]).

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Mapper};
use crate::sync::{Arc, Cell, Mutex, lock};

/// One validated configuration, as published to workers.
#[derive(Debug)]
pub struct Snapshot {
    /// The settings.
    pub config: Config,
    /// The compiled mapping rules.
    pub mapper: Mapper,
    /// Non-fatal findings (shadowed mapping rules).
    pub warnings: Vec<ConfigError>,
    /// Where each listener is set in the file, for errors that name it.
    pub origins: Origins,
}

/// A file that cannot be used: every error (never empty), in file order, and the warnings
/// found on the way (a file with a bad mapping rule is not checked for dead rules).
#[derive(Debug)]
pub struct Refused {
    /// The errors.
    pub errors: Vec<ConfigError>,
    /// The warnings.
    pub warnings: Vec<ConfigError>,
}

/// The 1-based line of each listener's address in the config file (`listen`, or `path` for
/// `[[unixgram]]`; the table's header when the key is left to its default), in config order.
/// Empty for the embedded defaults.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Origins {
    /// `[http] listen`, if set.
    pub http: Option<usize>,
    /// Each `[[udp]]`.
    pub udp: Vec<usize>,
    /// Each `[[tcp]]`.
    pub tcp: Vec<usize>,
    /// Each `[[unixgram]]`.
    pub unixgram: Vec<usize>,
}

impl Origins {
    fn of(text: &str, config: &Config) -> Self {
        use super::check::{Step, Tree};
        let Some(tree) = Tree::parse(text) else {
            return Self::default();
        };
        let lines = |section: &'static str, key: &'static str, n: usize| -> Vec<usize> {
            (0..n)
                .map(|i| tree.line(&[Step::Key(section), Step::Index(i), Step::Key(key)]))
                .collect()
        };
        let http = [Step::Key("http"), Step::Key("listen")];
        Self {
            http: tree.has(&http).then(|| tree.line(&http)),
            udp: lines("udp", "listen", config.udp.len()),
            tcp: lines("tcp", "listen", config.tcp.len()),
            unixgram: lines("unixgram", "path", config.unixgram.len()),
        }
    }
}

impl Snapshot {
    /// Parses, validates and compiles a config file's text; the first error if any.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::check(text).map_err(|mut r| r.errors.swap_remove(0))
    }

    /// Parses, validates and compiles a config file's text, reporting every error (the
    /// mapping rules' once the rest of the file is valid), in file order, and the warnings
    /// found on the way.
    pub fn check(text: &str) -> Result<Self, Refused> {
        let (config, mut errors) = Config::check_partial(text);
        let Some(config) = config else {
            return Err(Refused {
                errors,
                warnings: Vec::new(),
            });
        };
        let with_config = |mut w: Vec<ConfigError>| {
            w.extend(config.warnings(text));
            w.sort_by_key(|e| (e.line, e.column));
            w
        };
        match Mapper::compile(&config.mapping, text) {
            Ok((mapper, warnings)) if errors.is_empty() => Ok(Self {
                warnings: with_config(warnings),
                origins: Origins::of(text, &config),
                config,
                mapper,
            }),
            Ok((_, warnings)) => Err(Refused {
                warnings: with_config(warnings),
                errors,
            }),
            Err(more) => {
                errors.extend(more);
                errors.sort_by_key(|e| (e.line, e.column));
                Err(Refused {
                    errors,
                    warnings: Vec::new(),
                })
            }
        }
    }

    /// The embedded defaults.
    pub fn defaults() -> Self {
        Self::from_toml("").expect("the empty config is valid")
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The ingest listener sections differ from the running ones.
    pub listeners_changed: bool,
    /// `[http]` settings that need a restart differ from the running ones.
    pub http_changed: bool,
    /// `[log]` differs from the running one.
    pub log_changed: bool,
    /// Warnings of the new file.
    pub warnings: Vec<String>,
}

/// What a reload of a given text did. One rule for every trigger (a file event, SIGHUP,
/// `POST /-/reload`): a text other than the one in force is validated and published or
/// refused; the text in force again is a success only if the last attempt had failed (so
/// `tallyd_config_last_reload_successful` returns to 1 when a good file comes back), and
/// otherwise changes and counts nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new config was published.
    Applied(Reloaded),
    /// The text in force, after a failed attempt: a success, nothing to publish.
    Recovered,
    /// The text in force, nothing failed since: nothing happened.
    Unchanged,
}

/// The config cell plus where it came from.
pub struct Live {
    cell: Cell<Snapshot>,
    path: Option<PathBuf>,
    state: Mutex<FileState>,
}

/// What reloads remember between attempts.
struct FileState {
    /// The text of the config in force (`None`: the embedded defaults).
    applied: Option<String>,
    /// Whether the last attempt (of any trigger) succeeded.
    last_ok: bool,
}

impl Live {
    /// A live config holding `snapshot` (parsed from `text`), reloaded from `path` (if any).
    pub fn new(snapshot: Snapshot, path: Option<PathBuf>, text: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            cell: Cell::new(Arc::new(snapshot)),
            path,
            state: Mutex::new(FileState {
                applied: text,
                last_ok: true,
            }),
        })
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.cell.load()
    }

    /// True if `s` is still the published snapshot (cheap; called once per batch).
    pub fn is_current(&self, s: &Arc<Snapshot>) -> bool {
        self.cell.is_current(s)
    }

    /// The file reloads read, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The text of the config in force (`None`: the embedded defaults).
    pub fn applied_text(&self) -> Option<String> {
        lock(&self.state).applied.clone()
    }

    /// Publishes `snapshot` (tests and the loom models use this directly).
    pub fn publish(&self, snapshot: Snapshot) {
        self.cell.store(Arc::new(snapshot));
    }

    /// Reads the file now (SIGHUP, `POST /-/reload`) and reloads its text ([`Live::apply`]).
    /// `Ok(None)` when there is no file (the embedded defaults).
    pub fn reload(&self) -> Result<Option<Outcome>, ConfigError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        match super::read_file(path) {
            Ok(text) => self.apply(text).map(Some),
            Err(e) => {
                self.failed();
                Err(e)
            }
        }
    }

    /// Reloads from `text` (read by the caller: the file watcher reads it once the file is
    /// quiet): validates it and publishes it if it differs from the text in force.
    pub fn apply(&self, text: String) -> Result<Outcome, ConfigError> {
        let mut st = lock(&self.state);
        if st.applied.as_deref() == Some(text.as_str()) {
            let was_ok = std::mem::replace(&mut st.last_ok, true);
            return Ok(if was_ok {
                Outcome::Unchanged
            } else {
                Outcome::Recovered
            });
        }
        let new = match Snapshot::from_toml(&text) {
            Ok(n) => n,
            Err(e) => {
                st.last_ok = false;
                return Err(e);
            }
        };
        let old = self.cell.load();
        let mut warnings: Vec<String> = new.warnings.iter().map(ToString::to_string).collect();
        if let Some(path) = &self.path {
            warnings.extend(super::permission_warnings(path));
        }
        let out = Reloaded {
            listeners_changed: old.config.listeners_differ(&new.config),
            http_changed: old.config.http_differs(&new.config),
            log_changed: old.config.log != new.config.log,
            warnings,
        };
        self.cell.store(Arc::new(new));
        st.applied = Some(text);
        st.last_ok = true;
        Ok(Outcome::Applied(out))
    }

    /// Records a failed attempt that never reached [`Live::apply`] (the file missing,
    /// unreadable, or refused by the watcher), so the next good read counts as a recovery.
    pub fn failed(&self) {
        lock(&self.state).last_ok = false;
    }
}

/// The paths whose change is a change of the config at `path`: the path itself, every symlink
/// on the way to the file (each link in a chain, and a symlinked directory on the way, as
/// Kubernetes' `..data`), and the file it resolves to. A watcher watches their directories
/// and reacts to events that name one of them.
#[cfg(not(loom))]
pub fn config_paths(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        // Symlinked directories on the way (`..data/tallyd.toml`, where `..data` is a link).
        for anc in p.ancestors().skip(1) {
            if anc.as_os_str().is_empty() {
                break;
            }
            if std::fs::symlink_metadata(anc).is_ok_and(|m| m.file_type().is_symlink()) {
                out.push(anc.to_path_buf());
            }
        }
        let Ok(target) = std::fs::read_link(&p) else {
            break;
        };
        let next = match p.parent() {
            Some(dir) if target.is_relative() => dir.join(&target),
            _ => target,
        };
        out.push(next.clone());
        p = next;
    }
    if let Ok(c) = std::fs::canonicalize(path) {
        out.push(c);
    }
    out.sort();
    out.dedup();
    out
}

/// Watches the directories of the config's paths ([`config_paths`]; not the file itself:
/// editors replace it by rename and Kubernetes swaps a `..data` symlink, which a watch on the
/// file misses) and calls `on_change` for every event that names one of the paths' file names.
/// Events for anything else in those directories (a log file beside the config) are ignored.
/// [`ConfigWatch::refresh`] follows a chain of links that changed. Keep it alive.
#[cfg(not(loom))]
pub struct ConfigWatch {
    watcher: notify::RecommendedWatcher,
    path: PathBuf,
    dirs: Vec<PathBuf>,
    names: Arc<Mutex<Vec<std::ffi::OsString>>>,
}

#[cfg(not(loom))]
impl ConfigWatch {
    /// Starts watching for `path`.
    pub fn new(
        path: &Path,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> notify::Result<ConfigWatch> {
        let names: Arc<Mutex<Vec<std::ffi::OsString>>> = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else {
                return;
            };
            if ev.kind.is_access() {
                return;
            }
            let names = lock(&seen);
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
            {
                on_change();
            }
        })?;
        let mut w = ConfigWatch {
            watcher,
            path: path.to_path_buf(),
            dirs: Vec::new(),
            names,
        };
        w.refresh()?;
        Ok(w)
    }

    /// Recomputes the config's paths and watches any new directory among theirs (after a link
    /// was re-pointed). Directories no longer on the way are let go.
    pub fn refresh(&mut self) -> notify::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let paths = config_paths(&self.path);
        let mut dirs: Vec<PathBuf> = paths
            .iter()
            .map(|p| {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf()
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        *lock(&self.names) = paths
            .iter()
            .filter_map(|p| p.file_name().map(ToOwned::to_owned))
            .collect();
        for d in self.dirs.iter().filter(|d| !dirs.contains(d)) {
            let _ = self.watcher.unwatch(d);
        }
        let mut watched = Vec::new();
        for d in dirs {
            if self.dirs.contains(&d) {
                watched.push(d);
                continue;
            }
            // A directory that does not exist (a dangling link's) is tried again next time.
            match self.watcher.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => watched.push(d),
                Err(_) if !d.exists() => {}
                Err(e) => return Err(e),
            }
        }
        self.dirs = watched;
        Ok(())
    }
}
