//! A client for Storacha's upload service: store blocks in a user's Space the way Storacha's own
//! client does, read them back, and check that a Space is provisioned.
//!
//! The service speaks ucanto: UCAN invocations in CAR agent messages over HTTP, answered with
//! signed receipts whose effects name further tasks. There is no Rust ucanto (nor a Rust
//! Storacha client), and the wire format is small and fixed, so it is written here on top of our
//! own codecs in `proto` (dag-ucan, agent messages, receipts, capabilities, the sharded-DAG
//! index), which are proven byte-for-byte against the JS implementations. Everything here is
//! tested against Storacha's real upload service (`@storacha/upload-api`) running locally, and
//! checked with the real JS client.
//!
//! # Layout
//!
//! - [`config`]: service URL and DID, receipts and gateway URLs (production defaults, all
//!   overridable), timeouts, retry and polling policy.
//! - [`agent`]: the agent key, its Space and delegations (the CLI's text form), invocation
//!   signing (fresh nonce, expiry, proofs).
//! - [`client`]: [`Client`] and the ucanto round trip, [`Client::execute`].
//! - `transport` (private): pooled HTTP with retries and backoff for POST, PUT and GET.
//! - `receipts` (private): [`Client::fetch_receipt`] and [`Client::poll_receipt`], both
//!   receipt-endpoint forms.
//! - [`blob`]: the `space/blob/add` → PUT → `http/put` receipt → `ucan/conclude` → `blob/accept`
//!   flow for one blob ([`Client::add_blob`]), including the "already there" cases.
//! - [`shard`]: CAR shards with block positions, and the sharded-DAG index of an upload.
//! - [`upload`]: `space/index/add` and `upload/add` ([`Client::register_upload`]).
//! - [`space`]: `space/info` ([`Client::space_info`], [`Client::is_provisioned`]).
//! - [`retrieval`]: reading blocks back, hash-checked, by location or through the gateway.
//! - [`error`]: [`Error`] with named service [`Failure`]s and a retry/permanent answer.
//!
//! # Use
//!
//! ```no_run
//! # async fn run(worker_key: proto::principal::Ed25519Signer, proof_text: &str,
//! #              blocks: Vec<proto::Block>, root: cid::Cid) -> Result<(), storacha::Error> {
//! use storacha::{Agent, Client, Config, shard::CarShard};
//! let agent = Agent::from_proof_text(worker_key, proof_text)?;
//! let client = Client::new(Config::default(), agent)?;
//! let shard = CarShard::encode(&blocks, None);
//! client.add_blob(shard.blob()).await?;
//! client.register_upload(root, &[shard.summary()]).await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod blob;
pub mod client;
pub mod config;
pub mod error;
mod receipts;
pub mod retrieval;
pub mod shard;
pub mod space;
mod transport;
pub mod upload;

pub use agent::Agent;
pub use client::Client;
pub use config::Config;
pub use error::{Error, Failure};
