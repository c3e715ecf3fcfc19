//! The `tallyd` binary: CLI, logging, config, run; errors mapped to exit codes.
//!
//! Under `--cfg loom` only the library's concurrent core is built (for `tests/loom.rs`), and
//! the binary is an empty stub so that `cargo test --test loom` can build it.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tallyd::config::Config;
use tallyd::config::live::{Refused, Snapshot};
#[cfg(not(loom))]
use tallyd::daemon::{Daemon, Options, control};

/// A StatsD / DogStatsD aggregation daemon for Prometheus.
#[cfg(not(loom))]
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Without it, tallyd runs on its embedded defaults:
    /// UDP 127.0.0.1:8125 in, HTTP 127.0.0.1:9102 out.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[cfg(not(loom))]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate a config file as start and reload would: exit 0 if good, else print every
    /// error with its line and column and exit 1. Warnings (rules that can never match) are
    /// printed after errors and do not fail.
    CheckConfig {
        /// The file to check (or give it with --config, as to run).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        path: Option<PathBuf>,
        /// The file to check.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write a tallyd config that behaves as another StatsD server's deployment.
    #[command(subcommand)]
    Import(Import),
}

#[cfg(not(loom))]
#[derive(Subcommand)]
enum Import {
    /// From prometheus/statsd_exporter: its mapping file and its flags, with its metric names
    /// kept. Prints the config (or writes --output); findings go to stderr, each at its line.
    /// Exits 1 on an invalid input, or when something cannot be translated unless
    /// --allow-lossy.
    StatsdExporter {
        /// statsd_exporter's mapping file (its --statsd.mapping-config).
        #[arg(long)]
        mapping_config: Option<PathBuf>,
        /// Write the config here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write the config even when something could not be translated (listed on stderr).
        #[arg(long)]
        allow_lossy: bool,
        /// statsd_exporter's flags, after `--`: `-- --statsd.listen-udp=:9125 ...`.
        #[arg(last = true)]
        flags: Vec<String>,
    },
}

#[cfg(not(loom))]
mod logging {
    //! The logger: a level filter and a format layer, both behind reload handles so that a
    //! `[log]` change applies live.
    use std::io::IsTerminal;

    use tallyd::config::{Log, LogFormat};
    use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

    type Filtered =
        tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
    type Format = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;

    /// The level filter: `RUST_LOG` when set (it overrides `[log] level`), else the level.
    fn filter(log: &Log) -> EnvFilter {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.as_str()))
    }

    fn format(log: &Log, writer: NonBlocking) -> Format {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .log_internal_errors(false);
        match log.format {
            LogFormat::Json => layer.json().boxed(),
            LogFormat::Logfmt => layer
                .event_format(tracing_logfmt::EventsFormatter::default())
                .fmt_fields(tracing_logfmt::FieldsFormatter::default())
                .boxed(),
            LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        }
    }

    /// Installs the logger for `log`; returns what applies a new `[log]` to it, and the guard
    /// that flushes queued lines when dropped.
    pub fn init(log: &Log) -> (tallyd::daemon::LogReload, WorkerGuard) {
        let (writer, guard) = tallyd::log::stderr();
        let (level_layer, filter_handle) = reload::Layer::new(filter(log));
        let (format_layer, format_handle) = reload::Layer::new(format(log, writer.clone()));
        Registry::default()
            .with(level_layer)
            .with(format_layer)
            .init();
        let reload: tallyd::daemon::LogReload = std::sync::Arc::new(move |log: &Log| {
            filter_handle
                .reload(filter(log))
                .map_err(|e| e.to_string())?;
            format_handle
                .reload(format(log, writer.clone()))
                .map_err(|e| e.to_string())
        });
        (reload, guard)
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let text = match tallyd::config::read_file(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: error: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let loose = tallyd::config::permission_warnings(path);
    match Snapshot::check(&text) {
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            for w in &loose {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(Refused { errors, warnings }) => {
            for e in &errors {
                eprintln!("{}: error: {e}", path.display());
            }
            for w in &warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            for w in &loose {
                eprintln!("{}: warning: {w}", path.display());
            }
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(loom))]
fn import(cmd: Import) -> ExitCode {
    let Import::StatsdExporter {
        mapping_config,
        output,
        allow_lossy,
        flags,
    } = cmd;
    let opts = tallyd::import::Options {
        mapping: mapping_config,
        flags,
    };
    let done = tallyd::import::statsd_exporter(&opts, &|p| {
        tallyd::config::read_file(p).map_err(|e| std::io::Error::other(e.to_string()))
    });
    for f in &done.findings {
        eprintln!("{f}");
    }
    let lossy = done.lossy();
    let Some(toml) = done.toml else {
        eprintln!("import refused: the input has errors");
        return ExitCode::FAILURE;
    };
    if lossy && !allow_lossy {
        eprintln!(
            "import refused: some settings cannot be translated (listed above); --allow-lossy writes the rest"
        );
        return ExitCode::FAILURE;
    }
    let written = match &output {
        Some(p) => std::fs::write(p, toml),
        None => std::io::stdout().write_all(toml.as_bytes()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the config: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path, config }) => {
            return match path.or(config) {
                Some(p) => check_config(&p),
                None => ExitCode::FAILURE,
            };
        }
        Some(Command::Import(cmd)) => return import(cmd),
        Some(Command::Run) | None => {}
    }
    // Load once up front for the log settings; the daemon validates and loads it again.
    let cfg = match &cli.config {
        Some(p) => match Config::from_file(p) {
            Ok((c, _)) => c,
            Err(e) => {
                eprintln!("{}: error: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let (log_reload, _log_guard) = logging::init(&cfg.log);
    // SAFETY: no other thread exists yet (the runtime is built below), and nothing else in the
    // process takes the passed descriptors.
    #[allow(unsafe_code)]
    let passed = unsafe { tallyd::daemon::systemd::take_passed_sockets() };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut opts = Options::new(cli.config.clone());
        opts.passed = passed;
        opts.log_reload = Some(log_reload);
        match (control::stop_signal(), control::hangup_signal()) {
            (Ok(stop), Ok(hup)) => {
                opts.shutdown = Some(Box::pin(stop));
                opts.hangup = Some(hup);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("tallyd: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
        match Daemon::start(opts).await {
            Ok(d) => match d.wait().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                tracing::error!("{e}");
                // Also unformatted, for a terminal; stderr may be gone (nothing to do then).
                let _ = writeln!(std::io::stderr(), "tallyd: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
