//! Where clocks live: each clock's head and the event blocks it has accepted, plus the registry
//! of provisioned Spaces. One trait, two backends:
//!
//! - [`RedisStore`] (production): all keys of a clock share one hash tag (`clock:{<did>}:…`) so
//!   Redis Cluster keeps them in one slot; the head is replaced by a Lua script (through
//!   `redis::Script`) that compares it with the head the caller read and writes the event blocks
//!   with it — a compare-and-set, so concurrent advances from many connections and many
//!   replicas never lose an event.
//! - [`RedbStore`] (embedded default): one redb file; the compare-and-set is a write
//!   transaction (redb has a single writer).
//!
//! An advance is one round trip: [`ClockStore::compare_and_set_head`] writes the event blocks
//! and the new head in one atomic step, and writes nothing when the head has moved. So a head
//! never names a block the store lacks (its blocks come with it, or were written by an earlier
//! step), and a lost race leaves nothing behind. Blocks read back are hash-checked again, so a
//! corrupted store shows up as an error, not as a wrong clock.

use std::future::Future;

use cid::Cid;
use proto::Block;

mod redb_store;
mod redis_store;

pub use redb_store::RedbStore;
pub use redis_store::RedisStore;

/// A store failure, with the operation and clock it happened on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis answered with an error or the connection failed.
    #[error("redis {op} for {clock}: {source}")]
    Redis {
        /// The operation.
        op: &'static str,
        /// The clock (or Space) DID.
        clock: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// The embedded database failed.
    #[error("redb {op} for {clock}: {reason}")]
    Redb {
        /// The operation.
        op: &'static str,
        /// The clock (or Space) DID.
        clock: String,
        /// The cause, rendered (redb has several error types).
        reason: String,
    },
    /// Stored bytes do not decode or do not match their CID: the store is corrupt.
    #[error("corrupt {what} for {clock}: {reason}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The clock DID.
        clock: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The store URL in the configuration is not usable.
    #[error("invalid store location {location:?}: {reason}")]
    InvalidLocation {
        /// What was configured.
        location: String,
        /// Why it is rejected.
        reason: String,
    },
}

/// The operations the clock service needs from its storage.
///
/// Implementations must be safe to share between tasks and between service replicas pointing at
/// the same backend.
pub trait ClockStore: Send + Sync + 'static {
    /// The clock's head as last written (empty for a clock never advanced).
    fn head(&self, clock: &str) -> impl Future<Output = Result<Vec<Cid>, StoreError>> + Send;

    /// Replaces the head with `new` only if it still equals `expected` (same CIDs, same order),
    /// storing `blocks` (the event blocks `new` may name that the store may lack; idempotent,
    /// already hash-checked) in the same atomic step. `Ok(false)` means another writer got there
    /// first and nothing was written: re-read and merge again.
    fn compare_and_set_head(
        &self,
        clock: &str,
        expected: &[Cid],
        new: &[Cid],
        blocks: &[Block],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores event blocks of `clock` without touching the head (idempotent; blocks are already
    /// hash-checked). Advances do not need it: [`Self::compare_and_set_head`] stores theirs.
    fn put_blocks(
        &self,
        clock: &str,
        blocks: &[Block],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads event blocks of `clock`, `None` for those it does not hold; hash-checked.
    fn get_blocks(
        &self,
        clock: &str,
        cids: &[Cid],
    ) -> impl Future<Output = Result<Vec<Option<Block>>, StoreError>> + Send;

    /// True when `space` is in the registry of provisioned Spaces.
    fn is_provisioned(&self, space: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds `space` to (or removes it from) the registry of provisioned Spaces.
    fn set_provisioned(
        &self,
        space: &str,
        provisioned: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every Space in the registry, sorted.
    fn provisioned(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Checks the backend answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The configured backend: one concrete type so the service is not generic over it.
#[derive(Clone)]
pub enum AnyStore {
    /// Redis (production).
    Redis(RedisStore),
    /// redb (embedded default).
    Redb(RedbStore),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis(_) => f.write_str("AnyStore::Redis"),
            Self::Redb(_) => f.write_str("AnyStore::Redb"),
        }
    }
}

impl AnyStore {
    /// Opens the store named by `location`: `redis://…` / `rediss://…` (optionally ending in
    /// `#<key prefix>`, to share one Redis between deployments or test runs), or `redb:<path>`.
    pub async fn open(location: &str) -> Result<Self, StoreError> {
        if location.starts_with("redis://") || location.starts_with("rediss://") {
            Ok(Self::Redis(match location.split_once('#') {
                Some((url, prefix)) => RedisStore::connect_with_prefix(url, prefix).await?,
                None => RedisStore::connect(location).await?,
            }))
        } else if let Some(path) = location.strip_prefix("redb:") {
            Ok(Self::Redb(RedbStore::open(path).await?))
        } else {
            Err(StoreError::InvalidLocation {
                location: location.to_string(),
                reason: "expected redis://… or redb:<path>".to_string(),
            })
        }
    }

    /// The same store for another worker thread: a Redis store opens a connection of its own
    /// (driven by the runtime this is called on), a redb store is shared as it is (its
    /// operations run on the blocking pool anyway).
    pub async fn another_connection(&self) -> Result<Self, StoreError> {
        match self {
            Self::Redis(s) => Ok(Self::Redis(s.another_connection().await?)),
            Self::Redb(s) => Ok(Self::Redb(s.clone())),
        }
    }

    /// A short name of the backend, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Redb(_) => "redb",
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Redis($s) => $e,
            AnyStore::Redb($s) => $e,
        }
    };
}

impl ClockStore for AnyStore {
    async fn head(&self, clock: &str) -> Result<Vec<Cid>, StoreError> {
        dispatch!(self, s => s.head(clock).await)
    }
    async fn compare_and_set_head(
        &self,
        clock: &str,
        expected: &[Cid],
        new: &[Cid],
        blocks: &[Block],
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.compare_and_set_head(clock, expected, new, blocks).await)
    }
    async fn put_blocks(&self, clock: &str, blocks: &[Block]) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_blocks(clock, blocks).await)
    }
    async fn get_blocks(
        &self,
        clock: &str,
        cids: &[Cid],
    ) -> Result<Vec<Option<Block>>, StoreError> {
        dispatch!(self, s => s.get_blocks(clock, cids).await)
    }
    async fn is_provisioned(&self, space: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.is_provisioned(space).await)
    }
    async fn set_provisioned(&self, space: &str, provisioned: bool) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_provisioned(space, provisioned).await)
    }
    async fn provisioned(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.provisioned().await)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
}
