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
}

impl Snapshot {
    /// Parses, validates and compiles a config file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config = Config::from_toml(text)?;
        let (mapper, warnings) = Mapper::compile(&config.mapping, text)?;
        Ok(Self {
            config,
            mapper,
            warnings,
        })
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
    /// Warnings of the new file.
    pub warnings: Vec<String>,
}

/// The config cell plus where it came from.
pub struct Live {
    cell: Cell<Snapshot>,
    path: Option<PathBuf>,
    /// Text of the last file read (good or bad), so a file event that changed nothing is not
    /// counted as a reload, and a bad file is reported once, not on every event.
    last_text: Mutex<Option<String>>,
}

impl Live {
    /// A live config holding `snapshot`, reloaded from `path` (if any).
    pub fn new(snapshot: Snapshot, path: Option<PathBuf>, text: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            cell: Cell::new(Arc::new(snapshot)),
            path,
            last_text: Mutex::new(text),
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

    /// Publishes `snapshot` (tests and the loom models use this directly).
    pub fn publish(&self, snapshot: Snapshot) {
        self.cell.store(Arc::new(snapshot));
    }

    /// True if the file's text differs from the last text read (or cannot be read).
    pub fn changed_on_disk(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        match std::fs::read_to_string(path) {
            Ok(text) => lock(&self.last_text).as_deref() != Some(text.as_str()),
            Err(_) => true,
        }
    }

    /// Re-reads the file and publishes it if valid. `Ok(None)` when `only_if_changed` and the
    /// text is the same as last read, or when there is no file (defaults only).
    pub fn reload(&self, only_if_changed: bool) -> Result<Option<Reloaded>, ConfigError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut last = lock(&self.last_text);
        let text = super::read_file(path)?;
        if only_if_changed && last.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        *last = Some(text.clone());
        let new = Snapshot::from_toml(&text)?;
        let old = self.cell.load();
        let out = Reloaded {
            listeners_changed: old.config.listeners_differ(&new.config),
            http_changed: old.config.http_differs(&new.config),
            warnings: new.warnings.iter().map(ToString::to_string).collect(),
        };
        self.cell.store(Arc::new(new));
        Ok(Some(out))
    }
}

/// Watches the config file's directory (not the file: editors replace it by rename and
/// Kubernetes swaps a `..data` symlink, both of which a watch on the file itself misses) and
/// calls `on_change` for every event in it. Keep the returned watcher alive.
#[cfg(not(loom))]
pub fn watch(
    path: &Path,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
        {
            on_change();
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
