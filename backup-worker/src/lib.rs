//! The backup worker: one job = one verified, incremental backup of a Bluesky account (repo,
//! blobs, preferences) from its PDS into a Storacha Space, recorded in the Space's Backup DAG
//! and published by advancing the Space's Merkle clock. A library (the queue consumer wraps
//! [`backup::Worker`]) and a one-shot CLI ([`cli`]: `once`, `list`, `export`, `verify`).
//!
//! # Layout
//!
//! - [`backup`]: one backup, step by step ([`backup::Worker::run`]): what is verified, what is
//!   downloaded, what is written, in which order, and why a failure leaves nothing behind.
//! - [`restore`]: reading backups back through the clock head: list, export (`repo.car` and
//!   `blobs/<cid>`), re-verify.
//! - [`staging`]: a backup's blocks on local disk until every check has passed.
//! - [`space`]: the Space seam ([`space::SpaceStore`]) and [`space::LocalSpace`], a directory
//!   standing in for a Storacha Space: blocks packed into CAR shards, written crash-safely.
//! - [`storacha_space`]: a real Storacha Space behind the same seam, through the [`storacha`]
//!   client (`space/blob/add` per shard; index, `space/index/add` and `upload/add` on commit).
//! - [`clock`]: the Space's clock, embedded (the clock service's own logic over redb) or the
//!   clock service over ucanto.
//! - [`identity`]: handle → DID → DID document (PLC directory or `did:web`) → PDS endpoint and
//!   `#atproto` signing key, with the endpoint checks a server calling user-supplied URLs needs.
//! - [`xrpc`]: the XRPC client for `com.atproto.sync.*` (`getLatestCommit`, streaming
//!   `getRepo` and `getBlob`, paged `listBlobs`), `resolveHandle`, `createSession` and
//!   `getPreferences`: a per-host rate limiter honouring `RateLimit-*`, 429 and `Retry-After`,
//!   request counters, and named errors with a retry/permanent [`xrpc::Disposition`].
//! - [`error`]: the crate's [`Error`], each with a name and a disposition for the queue.
//! - [`cli`]: the `backup-worker` command.
//!
//! Verifying what the PDS sends (commit signatures, the MST walk, DID documents), the Backup
//! DAG, UnixFS and pail are pure and live in [`proto`]; CAR parsing in [`proto::car`].

// Errors carry CIDs (96 bytes each) for their messages; they travel only on the failure path of
// I/O-bound work, so boxing them would buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod cid_map;
pub mod cli;
pub mod clock;
pub mod error;
pub mod identity;
pub mod restore;
pub mod space;
pub mod staging;
pub mod storacha_space;
pub mod xrpc;

pub use error::Error;
