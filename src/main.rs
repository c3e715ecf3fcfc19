//! The `tallyd` binary: CLI, logging, config, run; errors mapped to exit codes.
//!
//! Under `--cfg loom` only the library's concurrent core is built (for `tests/loom.rs`), and
//! the binary is an empty stub so that `cargo test --test loom` can build it.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tallyd::config::live::Snapshot;
use tallyd::config::{Config, LogFormat};
#[cfg(not(loom))]
use tallyd::daemon::{Daemon, Options, control};

/// A StatsD / DogStatsD aggregation daemon for Prometheus.
#[cfg(not(loom))]
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Without it, tallyd runs on its embedded defaults:
    /// UDP 127.0.0.1:8125 in, HTTP 127.0.0.1:9102 out.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[cfg(not(loom))]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate a config file: exit 0 if good, else print each error with line and column and
    /// exit 1. Warnings (shadowed mapping rules) are printed but do not fail.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
}

#[cfg(not(loom))]
fn init_logging(cfg: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cfg.log.level.as_str()));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Logfmt => builder
            .event_format(tracing_logfmt::EventsFormatter::default())
            .fmt_fields(tracing_logfmt::FieldsFormatter::default())
            .init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
}

fn check_config(path: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match Snapshot::from_toml(&text) {
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: error: {e}", path.display());
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
        Some(Command::CheckConfig { path }) => return check_config(&path),
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
    init_logging(&cfg);
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
            Ok(d) => {
                d.wait().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("tallyd: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
