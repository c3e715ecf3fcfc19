//! tallyd: a StatsD / DogStatsD aggregation daemon that Prometheus scrapes.
//!
//! The data path reads top to bottom:
//!
//! - [`ingest`]: listeners (UDP workers on SO_REUSEPORT sockets with `recvmmsg`, TCP, Unix
//!   datagram), socket activation; `ingest::sys` is the one module with `unsafe`.
//! - [`parse`]: pure, borrowing StatsD / DogStatsD line parsing and the datagram line split
//!   (a separator index the caller keeps); no I/O, no allocation once the index has grown.
//! - [`store`]: the series registry, the per-worker cache-padded shards and series caches,
//!   expiry, limits.
//! - [`config`]: the TOML file's types and validation, mapping rules, the live (arc-swap)
//!   handle, the file watcher.
//! - [`export`]: the Prometheus text exposition and the hyper HTTP endpoint.
//! - [`daemon`]: wiring, readiness, reloads, listener changes, signals, systemd notify.
//! - [`telemetry`]: tallyd's own metrics, every failure mode a named counter.
//! - [`ready`]: the readiness flag and what it guards.
//! - [`sync`]: the facade over atomics and the config cell that loom swaps out.
//! - [`blast`]: the load generator (`tallyd blast`).
#![deny(missing_docs, rust_2018_idioms, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod parse;
pub mod ready;
pub mod store;
pub mod sync;

#[cfg(not(loom))]
pub mod blast;
#[cfg(not(loom))]
pub mod daemon;
#[cfg(not(loom))]
pub mod export;
#[cfg(not(loom))]
pub mod ingest;
#[cfg(not(loom))]
pub mod telemetry;
