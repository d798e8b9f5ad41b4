//! The backup worker: one job = one verified, incremental backup of a Bluesky account (repo,
//! blobs, preferences) from its PDS into a Storacha Space.
//!
//! The ATProto side is built: resolving who an account is and talking to its PDS. The backup
//! itself (verification over the Space, the Backup DAG, the clock) and the CLI arrive next.
//!
//! # Layout
//!
//! - [`identity`]: handle → DID → DID document (PLC directory or `did:web`) → PDS endpoint and
//!   `#atproto` signing key, with the endpoint checks a server calling user-supplied URLs needs.
//! - [`xrpc`]: the XRPC client for `com.atproto.sync.*` (`getLatestCommit`, streaming
//!   `getRepo` and `getBlob`, paged `listBlobs`), `resolveHandle` and `getPreferences`: a
//!   per-host rate limiter honouring `RateLimit-*`, 429 and `Retry-After`, request counters,
//!   and named errors with a retry/permanent [`xrpc::Disposition`].
//!
//! - [`space`]: the Space seam ([`space::SpaceStore`]) and [`space::LocalSpace`], a directory
//!   standing in for a Storacha Space: blocks packed into CAR shards, written crash-safely.
//!
//! Verifying what the PDS sends (commit signatures, the MST walk, DID documents) is pure and
//! lives in [`proto::repo`]; CAR parsing in [`proto::car`].

pub mod backup;
pub mod cli;
pub mod restore;
pub mod clock;
pub mod error;
pub mod identity;
pub mod space;
pub mod staging;
pub mod xrpc;

pub use error::Error;
