//! [`RedbStore`]: clocks in one embedded redb file, for a laptop or a single-replica deployment.
//!
//! # Layout
//!
//! Three tables:
//!
//! | table         | key                               | value                               |
//! |---------------|-----------------------------------|-------------------------------------|
//! | `heads`       | clock DID (`&str`)                | the head: DAG-CBOR list of links    |
//! | `blocks`      | (clock DID, CID bytes) (`(&str, &[u8])`) | the event block's bytes      |
//! | `provisioned` | Space DID (`&str`)                | `()`                                |
//!
//! The head encoding is the one [`super::RedisStore`] uses (an absent row is the empty head), so
//! both backends hold byte-identical heads.
//!
//! # Compare-and-set and durability
//!
//! redb has one writer at a time: [`ClockStore::compare_and_set_head`] reads the head, compares
//! its encoding byte for byte with the expected head's, and writes the event blocks and the new
//! head inside a write transaction, so no other writer can come between the read and the write.
//! Every write transaction commits with redb's default [`redb::Durability::Immediate`]: nothing
//! is acknowledged before it is on disk.
//!
//! Compare-and-sets are committed in groups: one committer thread takes every compare-and-set
//! queued while the previous commit was being made, applies them in order inside one write
//! transaction (each sees the heads the earlier ones wrote, exactly as if they had run one after
//! the other), commits once, and only then answers each. A commit costs one `fsync`, so under
//! load many advances share it; alone, an advance still costs one commit. If the transaction
//! fails, none of the group is written and each gets the error.
//!
//! redb is synchronous, so every operation runs on Tokio's blocking pool
//! ([`tokio::task::spawn_blocking`]) over a shared [`redb::Database`]. The file is locked to one
//! process: replicas of the service cannot share it (use Redis for that); clones of one
//! [`RedbStore`] within a process can.

use std::path::Path;
use std::sync::{Arc, mpsc};

use cid::Cid;
use proto::Block;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::redis_store::{decode_head, encode_head, verify_block};
use super::{ClockStore, StoreError};

/// Clock DID → head (DAG-CBOR list of links).
const HEADS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("heads");

/// (clock DID, CID bytes) → event block bytes.
const BLOCKS: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("blocks");

/// Space DID → nothing: the registry of provisioned Spaces.
const PROVISIONED: TableDefinition<'_, &str, ()> = TableDefinition::new("provisioned");

/// What error messages name when an operation concerns no single clock.
const ALL_CLOCKS: &str = "all clocks";

/// Most compare-and-sets committed in one write transaction.
const MAX_GROUP: usize = 256;

/// Clocks in an embedded redb file. Cheap to clone: clones share the open database.
#[derive(Clone)]
pub struct RedbStore {
    /// The open database, shared with the blocking tasks that use it.
    db: Arc<Database>,
    /// The group committer of compare-and-sets (see the module documentation).
    committer: Arc<Committer>,
}

/// One compare-and-set waiting for the committer.
struct Cas {
    clock: String,
    /// The encodings of the expected head, the new head and the empty head.
    expected: Vec<u8>,
    new: Vec<u8>,
    empty: Vec<u8>,
    blocks: Vec<Block>,
    /// Whether the head matched (and the writes are committed), or why the group failed.
    answer: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// The committer thread and the queue to it. Dropping the last handle closes the queue and
/// waits for the thread, which lets go of the database (so the file can be opened again).
struct Committer {
    queue: Option<mpsc::Sender<Cas>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(db: Arc<Database>) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("redb-committer".to_owned())
            .spawn(move || commit_groups(&db, &jobs))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The committer's loop: waits for a compare-and-set, takes every other one queued behind it
/// (up to [`MAX_GROUP`]), commits them together and answers them, until the queue closes.
fn commit_groups(db: &Database, jobs: &mpsc::Receiver<Cas>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        match apply_group(db, &group) {
            Ok(matched) => {
                for (job, matched) in group.into_iter().zip(matched) {
                    let _ = job.answer.send(Ok(matched));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for job in group {
                    let _ = job.answer.send(Err(reason.clone()));
                }
            }
        }
    }
}

/// Applies `group` in order in one write transaction and commits it; whether each matched.
fn apply_group(db: &Database, group: &[Cas]) -> Result<Vec<bool>, redb::Error> {
    let txn = db.begin_write()?;
    let mut matched = Vec::with_capacity(group.len());
    {
        let mut heads = txn.open_table(HEADS)?;
        let mut stored = txn.open_table(BLOCKS)?;
        for job in group {
            let matches = match heads.get(job.clock.as_str())? {
                Some(current) => current.value() == job.expected.as_slice(),
                None => job.empty == job.expected,
            };
            if matches {
                for block in &job.blocks {
                    let cid = block.cid().to_bytes();
                    stored.insert((job.clock.as_str(), cid.as_slice()), block.bytes().as_ref())?;
                }
                heads.insert(job.clock.as_str(), job.new.as_slice())?;
            }
            matched.push(matches);
        }
    }
    if matched.contains(&true) {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(matched)
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the redb file at `path`, creating it (and its parent directories) if absent.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        if path.is_empty() {
            return Err(StoreError::InvalidLocation {
                location: path.to_owned(),
                reason: "the redb path is empty".to_owned(),
            });
        }
        let owned = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || open_blocking(&owned))
            .await
            .map_err(|e| StoreError::Redb {
                op: "open",
                clock: ALL_CLOCKS.to_owned(),
                reason: format!("{path}: blocking task failed: {e}"),
            })??;
        let db = Arc::new(opened);
        let committer = Committer::start(db.clone()).map_err(|e| StoreError::Redb {
            op: "open",
            clock: ALL_CLOCKS.to_owned(),
            reason: format!("{path}: cannot start the committer thread: {e}"),
        })?;
        Ok(Self {
            db,
            committer: Arc::new(committer),
        })
    }

    /// Runs `f` over the database on the blocking pool, naming `op` and `clock` in any error.
    async fn run<T, F>(&self, op: &'static str, clock: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let reason = match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("blocking task failed: {e}"),
        };
        Err(StoreError::Redb {
            op,
            clock: clock.to_owned(),
            reason,
        })
    }
}

/// Creates the parent directories, opens (or creates) the file and makes sure every table
/// exists, so readers never meet a missing table.
fn open_blocking(path: &str) -> Result<Database, StoreError> {
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::InvalidLocation {
            location: path.to_owned(),
            reason: format!("cannot create {}: {e}", parent.display()),
        })?;
    }
    let failed = |e: redb::Error| StoreError::Redb {
        op: "open",
        clock: ALL_CLOCKS.to_owned(),
        reason: format!("{path}: {e}"),
    };
    let db = Database::create(path).map_err(|e| failed(e.into()))?;
    let init = || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(HEADS)?;
        txn.open_table(BLOCKS)?;
        txn.open_table(PROVISIONED)?;
        txn.commit()?;
        Ok(())
    };
    init().map_err(failed)?;
    Ok(db)
}

impl ClockStore for RedbStore {
    async fn head(&self, clock: &str) -> Result<Vec<Cid>, StoreError> {
        let key = clock.to_owned();
        let stored = self
            .run("head", clock, move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(HEADS)?;
                Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
            })
            .await?;
        match stored {
            None => Ok(Vec::new()),
            Some(bytes) => decode_head(clock, &bytes),
        }
    }

    async fn compare_and_set_head(
        &self,
        clock: &str,
        expected: &[Cid],
        new: &[Cid],
        blocks: &[Block],
    ) -> Result<bool, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Cas {
            clock: clock.to_owned(),
            expected: encode_head(clock, expected)?,
            new: encode_head(clock, new)?,
            empty: encode_head(clock, &[])?,
            blocks: blocks.to_vec(),
            answer,
        };
        let failed = |reason: String| StoreError::Redb {
            op: "compare_and_set_head",
            clock: clock.to_owned(),
            reason,
        };
        let queued = self
            .committer
            .queue
            .as_ref()
            .is_some_and(|q| q.send(job).is_ok());
        if !queued {
            return Err(failed("the committer thread has stopped".to_owned()));
        }
        match answered.await {
            Ok(Ok(matched)) => Ok(matched),
            Ok(Err(reason)) => Err(failed(reason)),
            Err(_) => Err(failed(
                "the committer thread stopped before answering".to_owned(),
            )),
        }
    }

    async fn put_blocks(&self, clock: &str, blocks: &[Block]) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let key = clock.to_owned();
        let blocks = blocks.to_vec();
        self.run("put_blocks", clock, move |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(BLOCKS)?;
                for block in &blocks {
                    let cid = block.cid().to_bytes();
                    table.insert((key.as_str(), cid.as_slice()), block.bytes().as_ref())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_blocks(
        &self,
        clock: &str,
        cids: &[Cid],
    ) -> Result<Vec<Option<Block>>, StoreError> {
        if cids.is_empty() {
            return Ok(Vec::new());
        }
        let key = clock.to_owned();
        let wanted: Vec<Vec<u8>> = cids.iter().map(Cid::to_bytes).collect();
        let stored = self
            .run("get_blocks", clock, move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(BLOCKS)?;
                wanted
                    .iter()
                    .map(|cid| {
                        let row = table.get((key.as_str(), cid.as_slice()))?;
                        Ok(row.map(|v| bytes::Bytes::copy_from_slice(v.value())))
                    })
                    .collect::<Result<Vec<_>, redb::Error>>()
            })
            .await?;
        cids.iter()
            .zip(stored)
            .map(|(cid, bytes)| bytes.map(|b| verify_block(clock, cid, b)).transpose())
            .collect()
    }

    async fn is_provisioned(&self, space: &str) -> Result<bool, StoreError> {
        let key = space.to_owned();
        self.run("is_provisioned", space, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PROVISIONED)?;
            Ok(table.get(key.as_str())?.is_some())
        })
        .await
    }

    async fn set_provisioned(&self, space: &str, provisioned: bool) -> Result<(), StoreError> {
        let key = space.to_owned();
        self.run("set_provisioned", space, move |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(PROVISIONED)?;
                if provisioned {
                    table.insert(key.as_str(), ())?;
                } else {
                    table.remove(key.as_str())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn provisioned(&self) -> Result<Vec<String>, StoreError> {
        let mut spaces = self
            .run("provisioned", ALL_CLOCKS, |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(PROVISIONED)?;
                table
                    .iter()?
                    .map(|row| Ok(row?.0.value().to_owned()))
                    .collect::<Result<Vec<String>, redb::Error>>()
            })
            .await?;
        // redb orders `&str` keys bytewise already; sorting again keeps the contract explicit.
        spaces.sort_unstable();
        Ok(spaces)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", ALL_CLOCKS, |db| {
            let txn = db.begin_read()?;
            txn.open_table(HEADS)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::redis_store::conformance::{self, ADVANCES, Backdoor, did, event};
    use super::*;

    /// A store in a fresh temporary directory (removed when the guard drops).
    async fn store() -> (RedbStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock.redb");
        let store = RedbStore::open(path.to_str().unwrap()).await.unwrap();
        (store, dir)
    }

    impl Backdoor for RedbStore {
        async fn write_raw_block(&self, clock: &str, cid: &Cid, bytes: &[u8]) {
            let (key, cid, bytes) = (clock.to_owned(), cid.to_bytes(), bytes.to_vec());
            self.run("test", "test", move |db| {
                let txn = db.begin_write()?;
                txn.open_table(BLOCKS)?
                    .insert((key.as_str(), cid.as_slice()), bytes.as_slice())?;
                txn.commit()?;
                Ok(())
            })
            .await
            .unwrap();
        }
        async fn write_raw_head(&self, clock: &str, bytes: &[u8]) {
            let (key, bytes) = (clock.to_owned(), bytes.to_vec());
            self.run("test", "test", move |db| {
                let txn = db.begin_write()?;
                txn.open_table(HEADS)?
                    .insert(key.as_str(), bytes.as_slice())?;
                txn.commit()?;
                Ok(())
            })
            .await
            .unwrap();
        }
        async fn read_raw_head(&self, clock: &str) -> Option<Vec<u8>> {
            let key = clock.to_owned();
            self.run("test", "test", move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(HEADS)?;
                Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
            })
            .await
            .unwrap()
        }
    }

    #[tokio::test]
    async fn conformance() {
        let (store, _dir) = store().await;
        conformance::all(&store).await;
    }

    #[tokio::test]
    async fn empty_head() {
        let (store, _dir) = store().await;
        conformance::empty_head(&store).await;
    }

    #[tokio::test]
    async fn cas_success() {
        let (store, _dir) = store().await;
        conformance::cas_success(&store).await;
    }

    #[tokio::test]
    async fn cas_conflict() {
        let (store, _dir) = store().await;
        conformance::cas_conflict(&store).await;
    }

    #[tokio::test]
    async fn put_get_blocks() {
        let (store, _dir) = store().await;
        conformance::put_get_blocks(&store).await;
    }

    #[tokio::test]
    async fn cas_writes_blocks_with_the_head() {
        let (store, _dir) = store().await;
        conformance::cas_writes_blocks_with_the_head(&store).await;
    }

    #[tokio::test]
    async fn corrupt_block_detected() {
        let (store, _dir) = store().await;
        conformance::corrupt_block_detected(&store).await;
    }

    #[tokio::test]
    async fn corrupt_head_detected() {
        let (store, _dir) = store().await;
        conformance::corrupt_head_detected(&store).await;
    }

    #[tokio::test]
    async fn head_encoding() {
        let (store, _dir) = store().await;
        conformance::head_encoding(&store).await;
    }

    #[tokio::test]
    async fn provisioned_registry() {
        let (store, _dir) = store().await;
        conformance::provisioned_registry(&store).await;
    }

    #[tokio::test]
    async fn ping() {
        let (store, _dir) = store().await;
        conformance::ping(&store).await;
    }

    /// One database, shared by clones (redb locks the file to one process).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_lose_nothing() {
        let (store, _dir) = store().await;
        let stores = [store.clone(), store];
        let seen = conformance::concurrent_appends(&stores, &did("append"), 16, 50).await;
        eprintln!("redb appends: {seen:?}");
        seen.assert_contended(16 * 50);
    }

    /// One database, shared by clones (redb locks the file to one process).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_advances_lose_nothing() {
        let (store, _dir) = store().await;
        let stores = [store.clone(), store];
        let seen = conformance::concurrent_advances(&stores, &did("busy"), 16, ADVANCES).await;
        eprintln!("redb advances: {seen:?}");
        seen.assert_contended(16 * ADVANCES);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dirs/clock.redb");
        let path = path.to_str().unwrap();
        let clock = did("reopen");
        let block = event(1);
        {
            let store = RedbStore::open(path).await.unwrap();
            assert!(
                store
                    .compare_and_set_head(
                        &clock,
                        &[],
                        &[*block.cid()],
                        std::slice::from_ref(&block)
                    )
                    .await
                    .unwrap()
            );
            store.set_provisioned(&clock, true).await.unwrap();
        }
        let store = RedbStore::open(path).await.unwrap();
        assert_eq!(store.head(&clock).await.unwrap(), vec![*block.cid()]);
        assert_eq!(
            store.get_blocks(&clock, &[*block.cid()]).await.unwrap(),
            vec![Some(block)]
        );
        assert_eq!(store.provisioned().await.unwrap(), vec![clock]);
    }

    /// Compare-and-sets queued together are committed together, each judged against the heads
    /// the earlier ones wrote: of many on one clock from the same head exactly one wins and the
    /// losers write nothing; on distinct clocks all win; all of it is on disk after reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compare_and_sets_commit_in_groups_as_if_one_after_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock.redb");
        let path = path.to_str().unwrap();
        let store = RedbStore::open(path).await.unwrap();
        let same = did("contended");
        let mut tasks = Vec::new();
        for i in 0..64i128 {
            let store = store.clone();
            let clock = if i % 2 == 0 {
                same.clone()
            } else {
                did(&format!("own{i}"))
            };
            tasks.push(tokio::spawn(async move {
                let block = event(i);
                let won = store
                    .compare_and_set_head(
                        &clock,
                        &[],
                        &[*block.cid()],
                        std::slice::from_ref(&block),
                    )
                    .await
                    .unwrap();
                (clock, block, won)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let (contended, own): (Vec<_>, Vec<_>) = results
            .into_iter()
            .partition(|(clock, _, _)| *clock == same);
        let winners: Vec<_> = contended.iter().filter(|(_, _, won)| *won).collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one advance from the empty head wins"
        );
        assert!(
            own.iter().all(|(_, _, won)| *won),
            "distinct clocks never conflict"
        );
        drop(store);

        let store = RedbStore::open(path).await.unwrap();
        let winner = winners[0].1.clone();
        assert_eq!(store.head(&same).await.unwrap(), vec![*winner.cid()]);
        for (clock, block, won) in contended.iter().chain(&own) {
            let stored = store.get_blocks(clock, &[*block.cid()]).await.unwrap();
            let expected = won.then(|| block.clone());
            assert_eq!(
                stored,
                vec![expected],
                "{clock}: only winners' blocks are written"
            );
            if *won {
                assert_eq!(store.head(clock).await.unwrap(), vec![*block.cid()]);
            }
        }
    }

    #[tokio::test]
    async fn file_is_locked_to_one_opener() {
        let (_store, dir) = store().await;
        let path = dir.path().join("clock.redb");
        assert!(matches!(
            RedbStore::open(path.to_str().unwrap()).await,
            Err(StoreError::Redb { op: "open", .. })
        ));
    }

    #[tokio::test]
    async fn rejects_bad_locations() {
        assert!(matches!(
            RedbStore::open("").await,
            Err(StoreError::InvalidLocation { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A parent that is a file cannot become a directory.
        let under = file.join("clock.redb");
        assert!(matches!(
            RedbStore::open(under.to_str().unwrap()).await,
            Err(StoreError::InvalidLocation { .. })
        ));
        // A file that is not a redb database is refused, not overwritten.
        assert!(matches!(
            RedbStore::open(file.to_str().unwrap()).await,
            Err(StoreError::Redb { op: "open", .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
