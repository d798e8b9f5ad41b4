//! The clock service: one Merkle clock per Storacha Space (the clock DID is the Space DID),
//! advanced and read over ucanto (`clock/advance`, `clock/head`) by browsers, CLIs and our
//! workers, authorized by UCAN delegation chains rooted at the Space. A drop-in for w3clock: the
//! real JS client (`@web3-storage/clock/client`) works against it unchanged.
//!
//! # Layout
//!
//! - [`config`]: the typed [`Config`] from the environment (and flags).
//! - [`server`]: builds the [`App`] (key, store, validator, tower stacks) and serves the ucanto
//!   and admin listeners with a graceful drain.
//! - [`workers`]: the worker threads serving ucanto connections, each on a runtime of its
//!   own.
//! - [`http`]: ucanto over HTTP — negotiation, bounded body, CAR in, signed receipts out.
//! - [`invocation`]: the per-invocation tower stack: authorization layer, provisioning layer,
//!   handlers.
//! - [`client`]: a ucanto client for clock services (ours or w3clock).
//! - [`clocks`]: head reads and advances (pail's merge over attached and stored blocks,
//!   compare-and-set on the head, retried on conflict).
//! - [`signatures`]: invocation signatures of concurrent requests verified in batches.
//! - [`provisioning`]: is the clock a provisioned Space (registry, cached).
//! - [`store`]: the storage trait and its Redis and redb backends.
//! - [`metrics`]: Prometheus metrics on an injected registry.
//! - [`error`]: the crate's error type.
//!
//! The protocol itself (CAR, UCAN, validation rules, receipts, the Merkle clock) lives in the
//! `proto` crate; this crate adds I/O, concurrency and operations around it.

pub mod client;
pub mod clocks;
pub mod config;
pub mod error;
pub mod http;
pub mod invocation;
pub mod metrics;
pub mod provisioning;
pub mod server;
pub mod signatures;
pub mod store;
pub mod workers;

pub use config::Config;
pub use error::Error;
pub use server::App;
