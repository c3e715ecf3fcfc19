//! tallyd: a StatsD / DogStatsD aggregation daemon that Prometheus scrapes.
//!
//! # Modules
//! - [`ingest`]: listeners (UDP workers on SO_REUSEPORT sockets with `recvmmsg`, TCP, Unix
//!   datagram), their buffers and coalescing; `ingest::sys` holds the socket system calls.
//! - [`parse`]: the wire grammar, pure and borrowing: the datagram's line split, a line into
//!   samples, tags, the value rule; no I/O, no allocation once its index has grown.
//! - [`pipeline`]: one writer per ingest worker: the line cache, name resolution (mapping
//!   rules, naming), and the hand-off of each value to the store.
//! - [`naming`]: Prometheus naming: sanitising, `_total`, suffixes, reserved names,
//!   collisions; shared by the pipeline (refusals) and the export.
//! - [`store`]: the series registry, per-worker cache-padded shards, expiry, limits, the
//!   chunked read a scrape walks, the census of families the status page reads; summaries'
//!   sketches and native histograms' exponential buckets in the shards' words.
//! - [`export`]: the exposition rendered chunk by chunk in the format the scraper's `Accept`
//!   asks for (text 0.0.4, OpenMetrics 1.0.0, protobuf), the status page and its JSON, and
//!   the HTTP endpoint.
//! - [`config`]: the TOML file's types and validation, mapping rules, the live (arc-swap)
//!   handle, the file watcher.
//! - [`daemon`]: lifecycle (start, serve, stop), control (reloads, signals, watchdog), systemd
//!   (notify, socket activation).
//! - [`import`]: `tallyd import statsd-exporter`: a statsd_exporter mapping file and flags
//!   translated into a tallyd config with its names and matching semantics.
//! - [`remote`]: Prometheus remote write: each endpoint's pushes, queue and retries.
//! - [`telemetry`]: tallyd's own metrics, every failure mode a named counter, and the records
//!   the status page shows beside them (config story, last refused lines, ingest history).
//! - [`ready`]: the readiness flag and what it guards.
//! - [`clock`]: the injected clock every timer reads.
//! - [`log`]: the log writer: a bounded queue to stderr that never blocks a thread that logs,
//!   its drops counted.
//! - [`sync`]: the facade over atomics and the config cell that loom swaps out.
//!
//! # How a datagram flows
//! 1. [`ingest`]: a UDP worker receives up to a batch of datagrams in one `recvmmsg`
//!    (`ingest::sys`), counts them, and hands each to its own [`pipeline::Writer`].
//! 2. [`pipeline`]: the writer starts the batch (a new config snapshot or store epoch clears
//!    its cache), then splits the datagram into lines with [`parse::split_lines`].
//! 3. [`pipeline`]: each line's bytes without the value are looked up in the writer's cache.
//!    On a hit only the value is parsed ([`parse::sample_value`]); on a miss the full parser
//!    runs ([`parse::parse_line`]), and each sample's name and tags are resolved
//!    (`pipeline::resolve`: [`config::mapping`], [`naming`]) to a series that
//!    [`store::Store`] finds or creates under its registry lock.
//! 4. [`store::write`]: the value is added to the writer's own shard, with no lock and no
//!    shared cache line. Refusals and parse errors are counted in the writer's
//!    [`pipeline::Stats`], which the worker flushes into [`telemetry`] after the batch.
//!
//! # How a scrape flows
//! 1. [`export::http`]: `GET /metrics` (auth checked) starts a render on a blocking thread that
//!    streams chunks into the response body, gzip-compressed if asked.
//! 2. [`export`]: the render walks the store in chunks ([`store::read`]): for each chunk the
//!    registry lock is held while at most `export::CHUNK_SERIES` series are read, each one's
//!    words summed across the shards.
//! 3. [`export::text`] or [`export::proto`]: each series is written in the negotiated format
//!    ([`export::format`]); the visitor's own state tells whether a family's header is
//!    already out.
//! 4. [`export`]: tallyd's own metrics ([`telemetry`]) follow the StatsD families.
// The rest of the lint header (`unsafe_code` denied but where a module allows it, every
// `unsafe` block documented) is in Cargo.toml's `[lints]`, for every target.
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod naming;
pub mod parse;
pub mod pipeline;
pub mod ready;
pub mod store;
pub mod sync;

#[cfg(not(loom))]
pub mod daemon;
#[cfg(not(loom))]
pub mod export;
#[cfg(not(loom))]
pub mod import;
#[cfg(not(loom))]
pub mod ingest;
#[cfg(not(loom))]
pub mod log;
#[cfg(not(loom))]
pub mod remote;
#[cfg(not(loom))]
pub mod telemetry;
