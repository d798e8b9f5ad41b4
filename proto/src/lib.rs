//! Wire types and codecs for Bluesky Backups on Storacha. Pure: no tokio, no network, no
//! filesystem; everything here works on bytes and values handed in, so every service and the
//! tests share one implementation of the protocol.
//!
//! Our services speak Storacha's ucanto protocol so that real JS clients
//! (`@web3-storage/clock`, `@ucanto/client`, the Storacha CLI) work against them unchanged. No
//! Rust library does: the `ucan` crate implements JWT UCAN 0.10 and no longer resolves, and
//! there is no Rust ucanto. So dag-ucan 0.9.1, ucanto messages and receipts, the Merkle clock and
//! pail shards are written here, and proven byte-for-byte against the JS implementations by the
//! fixtures under `tests/fixtures` (made by pinned npm packages in `tests/js`).
//!
//! # Layout
//!
//! - [`ipld`]: CIDv1 helpers, DAG-CBOR (canonical key order) and DAG-JSON codecs, [`ipld::Block`]
//!   (a CID and the bytes it names, hash-checked).
//! - [`car`]: CARv1 streaming reader (bounded, hash-verifying) and writer.
//! - [`principal`]: Ed25519 `did:key` signers and verifiers, ucanto's private-key text format,
//!   `did:web` identities, multidid byte encodings, varsig signatures, batch verification.
//!   Crates: ed25519-zebra verifies (ZIP215, the rules of the JS verifier ucanto uses, and
//!   batch verification that agrees with single checks), AWS-LC (`aws-lc-rs`) signs (twice as
//!   fast as ed25519-dalek here, same bytes), ed25519-dalek holds keys.
//! - [`ucan`]: dag-ucan 0.9.1 UCANs: decode, encode, sign, verify; delegations with their proofs;
//!   delegation archives as the Storacha CLI writes them.
//! - [`validator`]: ucanto's authorization rules (audience, time bounds, signatures, chains
//!   rooted at the resource, capability covering, `ucan/attest`, revocation), one error type per
//!   failure, rendered on the wire as ucanto renders them.
//! - [`message`]: the `ucanto/message@7.0.0` agent message (request and response CARs) and HTTP
//!   content negotiation.
//! - [`receipt`]: receipts (`ocm` + `sig`), signed and verified, with their effects.
//! - [`capability`]: typed capabilities: `clock/*` and the Storacha ones the worker invokes.
//! - [`blob_index`]: the sharded-DAG index (`index/sharded/dag@0.1`) an upload registers with
//!   `space/index/add`: which CAR shards hold which blocks, at which offsets.
//! - [`clock`]: Merkle clock events and pail's `advance` over an abstract block getter.
//! - [`pail`]: pail ≥ 0.6 shards: encode, decode, `get`, `put`, `entries`.
//! - [`unixfs`]: UnixFS file encoding with Storacha's settings (raw leaves, 1 MiB chunks,
//!   balanced width 1024), CID-identical to `@ipld/unixfs` as the Storacha client configures it.
//! - [`backup`]: the Backup DAG kept in the Space (Root → Account → Backups pail → Backup) and the
//!   union of concurrent roots.
//! - [`repo`]: ATProto repositories: signed commits (k256/p256) and MST walks.

pub mod backup;
pub mod blob_index;
pub mod capability;
pub mod car;
pub mod clock;
pub mod ipld;
pub mod message;
pub mod pail;
pub mod principal;
pub mod receipt;
pub mod repo;
pub mod ucan;
pub mod unixfs;
pub mod validator;

pub use cid::Cid;
pub use ipld::{Block, Ipld};
