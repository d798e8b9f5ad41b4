//! A real Storacha Space behind the worker's [`SpaceStore`] seam, through the `storacha` client.
//!
//! - [`SpaceStore::put_shard`] packs the blocks the Space does not hold yet into one CAR shard
//!   (encoded and hashed off the async runtime) and stores it with the `space/blob/add` flow;
//!   it returns once the storage node has accepted the shard. Storing the same bytes again
//!   sends nothing (the service reports them accepted), so a retried job never duplicates a
//!   blob.
//! - [`SpaceStore::commit`] stores the sharded-DAG index of the backup's shards as a blob,
//!   registers it (`space/index/add`) and adds the upload (`upload/add {root, shards}`). Only
//!   after that does the worker advance the clock, so a clock head never names blocks that are
//!   not accepted.
//! - [`SpaceStore::has`] and [`SpaceStore::get`] read back: blocks this process stored are read
//!   from their shard's location (the `assert/location` URL, at the block's offset), others
//!   through the gateway (`/ipfs/<cid>?format=raw`); every block is hash-checked. Blocks known
//!   to be in the Space are remembered, and recently read ones cached (bounded by bytes).
//!
//! Construct it from the user's delegation to the worker's key:
//!
//! ```no_run
//! # fn make(worker_key: proto::principal::Ed25519Signer, delegation_text: &str)
//! #     -> Result<backup_worker::storacha_space::StorachaSpace, storacha::Error> {
//! let agent = storacha::Agent::from_proof_text(worker_key, delegation_text)?;
//! let client = storacha::Client::new(storacha::Config::default(), agent)?;
//! Ok(backup_worker::storacha_space::StorachaSpace::new(client))
//! # }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cid::Cid;
use proto::Block;
use proto::blob_index::Position;
use storacha::shard::{CarShard, ShardSummary};

use crate::space::{ShardInfo, SpaceError, SpaceStore};

/// Bytes of recently read blocks kept in memory (a backup re-reads its previous Backup DAG's
/// pail shards; 64 MiB holds them many times over).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A shard this process stored: what its index entry needs, and where it can be read.
#[derive(Debug)]
struct StoredShard {
    summary: ShardSummary,
    locations: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Blocks known to be in the Space, by sha2-256 digest (a backup knows many; a digest is
    /// a third of a `Cid`).
    known: HashSet<[u8; 32]>,
    /// Shards stored by this process, and their numbers in `shards` by CID.
    shards: Vec<StoredShard>,
    shard_numbers: HashMap<Cid, usize>,
    /// Where each block this process stored sits: (shard number, position of its data).
    located: HashMap<[u8; 32], (usize, Position)>,
    /// Recently read blocks, oldest first.
    cache: HashMap<Cid, Block>,
    order: VecDeque<Cid>,
    cached_bytes: usize,
}

/// A Storacha Space reached through the upload service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StorachaSpace {
    client: storacha::Client,
    state: Arc<Mutex<State>>,
    cache_bytes: usize,
}

impl StorachaSpace {
    /// The Space `client`'s agent acts on.
    pub fn new(client: storacha::Client) -> Self {
        Self {
            client,
            state: Arc::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    /// Keeps at most `bytes` of read blocks in memory (0: no cache).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The client.
    pub fn client(&self) -> &storacha::Client {
        &self.client
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation is a whole insert or remove: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, block: &Block) {
        let mut state = self.lock();
        if let Some(d) = digest(block.cid()) {
            state.known.insert(d);
        }
        let size = block.bytes().len();
        if size > self.cache_bytes || state.cache.contains_key(block.cid()) {
            return;
        }
        while state.cached_bytes + size > self.cache_bytes {
            let Some(old) = state.order.pop_front() else {
                break;
            };
            if let Some(b) = state.cache.remove(&old) {
                state.cached_bytes -= b.bytes().len();
            }
        }
        state.cache.insert(*block.cid(), block.clone());
        state.order.push_back(*block.cid());
        state.cached_bytes += size;
    }

    async fn read(&self, cid: &Cid) -> Result<Option<Block>, storacha::Error> {
        let located = {
            let state = self.lock();
            if let Some(b) = state.cache.get(cid) {
                return Ok(Some(b.clone()));
            }
            let entry = digest(cid).and_then(|d| state.located.get(&d));
            entry.and_then(|(shard, pos)| {
                state
                    .shards
                    .get(*shard)
                    .map(|s| (s.locations.clone(), *pos))
            })
        };
        if let Some((locations, pos)) = located {
            for url in &locations {
                match self.client.fetch_block_at(cid, url, pos).await {
                    Ok(Some(block)) => return Ok(Some(block)),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(%cid, url, error = %e, "location read failed"),
                }
            }
        }
        self.client.fetch_block(cid).await
    }
}

/// The sha2-256 digest of a CID (every CID a backup deals in); other CIDs are never remembered,
/// only looked up remotely.
fn digest(cid: &Cid) -> Option<[u8; 32]> {
    (cid.hash().code() == proto::ipld::SHA2_256)
        .then(|| cid.hash().digest().try_into().ok())
        .flatten()
}

fn remote(op: &'static str, e: storacha::Error) -> SpaceError {
    SpaceError::Remote {
        op,
        retry: e.is_retryable(),
        source: Box::new(e),
    }
}

impl SpaceStore for StorachaSpace {
    fn holds_locally(&self, cid: &Cid) -> bool {
        digest(cid).is_some_and(|d| self.lock().known.contains(&d))
    }

    async fn has(&self, cid: &Cid) -> Result<bool, SpaceError> {
        if digest(cid).is_some_and(|d| self.lock().known.contains(&d)) {
            return Ok(true);
        }
        Ok(self.get(cid).await?.is_some())
    }

    async fn get(&self, cid: &Cid) -> Result<Option<Block>, SpaceError> {
        let block = self.read(cid).await.map_err(|e| remote("read block", e))?;
        if let Some(b) = &block {
            self.remember(b);
        }
        Ok(block)
    }

    async fn put_shard(&self, blocks: Vec<Block>) -> Result<Option<ShardInfo>, SpaceError> {
        let fresh: Vec<Block> = {
            let state = self.lock();
            let mut seen = HashSet::new();
            blocks
                .into_iter()
                .filter(|b| {
                    !digest(b.cid()).is_some_and(|d| state.known.contains(&d))
                        && seen.insert(*b.cid())
                })
                .collect()
        };
        if fresh.is_empty() {
            return Ok(None);
        }
        let count = fresh.len();
        // Encoding and hashing a shard (up to 127 MiB) is CPU work: off the runtime. The blocks
        // are dropped as soon as the CAR holds them, so memory peaks near one shard's bytes
        // twice, briefly.
        let (shard, cids) = tokio::task::spawn_blocking(move || {
            let shard = CarShard::encode(&fresh, None);
            let cids: Vec<Cid> = fresh.iter().map(|b| *b.cid()).collect();
            (shard, cids)
        })
        .await
        .map_err(|e| SpaceError::Task(e.to_string()))?;
        let stored = self
            .client
            .add_blob(shard.blob())
            .await
            .map_err(|e| remote("store shard", e))?;
        let summary = shard.summary();
        let info = ShardInfo {
            cid: *shard.cid(),
            blocks: count,
            bytes: shard.size(),
        };
        let mut state = self.lock();
        let number = state.shards.len();
        for (cid, (_, pos)) in cids.iter().zip(&summary.slices) {
            if let Some(d) = digest(cid) {
                state.known.insert(d);
                state.located.entry(d).or_insert((number, *pos));
            }
        }
        state.shards.push(StoredShard {
            summary,
            locations: stored.locations,
        });
        state.shard_numbers.insert(info.cid, number);
        Ok(Some(info))
    }

    async fn commit(&self, root: &Cid, shards: &[ShardInfo]) -> Result<(), SpaceError> {
        if shards.is_empty() {
            return self
                .client
                .add_upload(*root, &[])
                .await
                .map_err(|e| remote("add upload", e));
        }
        let summaries = {
            let state = self.lock();
            shards
                .iter()
                .map(|s| {
                    let number = state.shard_numbers.get(&s.cid)?;
                    Some(state.shards[*number].summary.clone())
                })
                .collect::<Option<Vec<_>>>()
        };
        // A shard stored by another process (a job retried elsewhere) has no summary here;
        // the retry stores its blocks again (the service dedups) and commits then.
        let Some(summaries) = summaries else {
            return Err(SpaceError::Remote {
                op: "commit",
                retry: true,
                source: "a shard of this upload was not stored by this process".into(),
            });
        };
        self.client
            .register_upload(*root, &summaries)
            .await
            .map(drop)
            .map_err(|e| remote("register upload", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::ShardWriter;
    use ::tests::storacha::{LocalStoracha, list_space};
    use proto::Ipld;
    use proto::ipld::RAW;
    use proto::principal::Ed25519Signer;
    use proto::ucan::{Capability, Delegation, Ucan};

    /// A provisioned Space, and a worker holding the CLI-style delegation on it.
    async fn space() -> (Ed25519Signer, String, StorachaSpace) {
        let service = LocalStoracha::shared();
        let owner = Ed25519Signer::generate().unwrap();
        let worker = Ed25519Signer::generate().unwrap();
        let mut grant = Ucan::builder(&owner, worker.did()).expiration(4_000_000_000);
        for can in [
            "space/blob/add",
            "space/index/add",
            "upload/add",
            "upload/list",
            "space/blob/list",
        ] {
            grant = grant.capability(Capability::new(can, owner.did()));
        }
        let proof = Delegation::issue(grant, &[], &[])
            .unwrap()
            .to_proof_text()
            .unwrap();
        service.provision(owner.did()).await;
        let config = storacha::Config::for_service(&service.url, &service.did);
        let agent = storacha::Agent::from_proof_text(worker.clone(), &proof).unwrap();
        let client = storacha::Client::new(config, agent).unwrap();
        (worker, proof, StorachaSpace::new(client))
    }

    fn blocks(n: u32) -> Vec<Block> {
        (0..n)
            .map(|i| Block::from_codec(RAW, i.to_le_bytes().repeat(750)))
            .collect()
    }

    #[tokio::test]
    async fn a_backup_lands_in_the_space_and_reads_back() {
        let (worker, proof, space) = space().await;
        let data = blocks(30);
        let root = Block::encode(&Ipld::List(
            data.iter().map(|b| Ipld::Link(*b.cid())).collect(),
        ))
        .unwrap();
        let mut writer = ShardWriter::new(&space, 40_000);
        for b in data.iter().chain(std::iter::once(&root)) {
            writer.add(b.clone()).await.unwrap();
        }
        let shards = writer.finish().await.unwrap();
        assert!(shards.len() > 1, "several shards");
        space.commit(root.cid(), &shards).await.unwrap();
        space.commit(root.cid(), &shards).await.unwrap(); // idempotent

        // Nothing is new the second time.
        assert!(space.put_shard(data.clone()).await.unwrap().is_none());

        // A fresh process (no local knowledge) finds every block through the gateway.
        let fresh = StorachaSpace::new(space.client().clone());
        for b in data.iter().chain(std::iter::once(&root)) {
            assert!(fresh.has(b.cid()).await.unwrap());
            assert_eq!(fresh.get(b.cid()).await.unwrap().as_ref(), Some(b));
        }
        let absent = Block::from_codec(RAW, b"absent".to_vec());
        assert!(!fresh.has(absent.cid()).await.unwrap());

        // Blocks it read back count as held: nothing to store.
        assert!(fresh.put_shard(data[..5].to_vec()).await.unwrap().is_none());

        let listing = list_space(LocalStoracha::shared(), &worker.format(), &proof);
        let shard_cids: Vec<String> = shards.iter().map(|s| s.cid.to_string()).collect();
        assert_eq!(listing.uploads, vec![(root.cid().to_string(), shard_cids)]);
    }

    #[tokio::test]
    async fn refusals_carry_a_disposition() {
        let service = LocalStoracha::shared();
        let owner = Ed25519Signer::generate().unwrap();
        // Never provisioned: no storage, a permanent failure.
        let config = storacha::Config::for_service(&service.url, &service.did);
        let client = storacha::Client::new(config, storacha::Agent::space_owner(owner)).unwrap();
        let space = StorachaSpace::new(client);
        match space.put_shard(blocks(2)).await {
            Err(SpaceError::Remote { retry: false, .. }) => {}
            other => panic!("expected a permanent remote error, got {other:?}"),
        }
    }
}
