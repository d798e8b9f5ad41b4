//! One backup of one account into one Space, step by step (ARCHITECTURE.md, "One backup").
//!
//! 1. Resolve the account; read the clock head and, from the Space, the Backup DAG behind it.
//!    A backup already stored under the job's key (a redelivered job) is done.
//! 2. `getLatestCommit`: the same commit as the latest backup's records nothing (two PDS
//!    requests at most: this one, and resolving a handle when one is given).
//! 3. Stream `getRepo` (`since` the latest backup's rev) into [`Staging`], every block
//!    hash-checked as it arrives; check the commit (account, signature: a commit signed by a key
//!    the account's PLC history shows it had is a warning on the backup, any other key an
//!    error); walk the MST over the download and the Space, pruning subtrees the Space holds,
//!    so that every node and record the commit reaches is present. When `since` left a hole (the
//!    Space lost blocks), download the whole repo once more.
//! 4. `listBlobs` (the full, current list: a `since` listing misses deletions, and a backup must
//!    restore exactly the account's blobs), reuse what the latest backup or the Space holds,
//!    download the rest with bounded concurrency (the XRPC client's per-PDS limiter applies),
//!    hash-check each against its CID while UnixFS-encoding it.
//! 5. Preferences, when the job carries an access token.
//! 6. Build the blobs pail, the Backup, the Account and Root, and the clock event whose parents
//!    are the head read in step 1 (concurrent heads merged first).
//! 7. Only now write to the Space: the staged blocks it lacks, packed into CAR shards, then the
//!    Space's upload record ([`SpaceStore::commit`]).
//! 8. Advance the clock. When another writer advanced it meanwhile, the head holds both events;
//!    merge them into one Root and advance again (a few times at most: the history already
//!    holds the backup, this only keeps the head short).
//!
//! A failure before step 7 leaves the Space and the clock untouched; a failure in step 7 leaves
//! only unreferenced, complete shards; the clock never names a block the Space lacks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;
use futures_util::{StreamExt, TryStreamExt, stream};
use proto::Block;
use proto::backup::{self as dag, Backup, BackupRef};
use proto::car::{CarError, CarLimits, CarReader};
use proto::clock::{BlockGetter, StoreError};
use proto::ipld::{RAW, SHA2_256};
use proto::repo::{self, Commit, CommitError, MstLimits, MstVisit, PublicKey, WalkOptions};
use proto::unixfs::FileEncoder;
use reqwest::Url;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use crate::clock::Clock;
use crate::error::Error;
use crate::identity::{Identity, IdentityResolver};
use crate::space::{ShardInfo, ShardWriter, SpaceError, SpaceStore};
use crate::staging::Staging;
use crate::xrpc::{LIST_BLOBS_MAX_LIMIT, StreamReader, XrpcClient, XrpcError, host_key};

/// Default shard size for the worker: small enough that memory stays flat (a shard is built in
/// memory before it is stored), large enough that a typical backup is a few shards.
pub const DEFAULT_WORKER_SHARD_SIZE: usize = 4 * 1024 * 1024;

/// Most block data read back from staging at once when copying into the Space.
const COPY_BATCH_BYTES: u64 = 2 * 1024 * 1024;

/// How a worker runs backups.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Blob downloads in flight at once (per backup).
    pub blob_concurrency: usize,
    /// Largest CAR shard written to the Space.
    pub shard_size: usize,
    /// Bounds on the repo CAR.
    pub car_limits: CarLimits,
    /// Bounds on the MST.
    pub mst_limits: MstLimits,
    /// Where staging files go (a local directory).
    pub staging_dir: PathBuf,
    /// Merge-and-advance rounds after a concurrent advance.
    pub merge_rounds: usize,
    /// Override of every account's PDS endpoint (tests, or a PDS behind a proxy).
    pub pds_override: Option<Url>,
}

impl Settings {
    /// Defaults, staging under `staging_dir`.
    pub fn new(staging_dir: impl Into<PathBuf>) -> Self {
        Self {
            blob_concurrency: 8,
            shard_size: DEFAULT_WORKER_SHARD_SIZE,
            car_limits: CarLimits::DEFAULT,
            mst_limits: MstLimits::default(),
            staging_dir: staging_dir.into(),
            merge_rounds: 3,
            pds_override: None,
        }
    }
}

/// What to back up, where, under which key.
#[derive(Clone, Debug)]
pub struct Job {
    /// The account: a handle or a DID.
    pub account: String,
    /// The Space (and clock) DID.
    pub space: String,
    /// The backup key: the job's scheduled time as [`dag::backup_key`] writes it, so that a
    /// redelivered job names the same backup.
    pub key: String,
    /// An OAuth access token (or app-password session token) for `getPreferences`; without
    /// one the backup has no preferences.
    pub access_token: Option<String>,
}

/// Live counters of a running backup (for a progress bar). All monotonic.
#[derive(Debug, Default)]
pub struct Progress {
    /// Repo blocks downloaded.
    pub repo_blocks: AtomicU64,
    /// Bytes downloaded (repo and blobs).
    pub bytes: AtomicU64,
    /// Blobs the account has (known after listing).
    pub blobs_total: AtomicU64,
    /// Blobs done (downloaded or found in the Space).
    pub blobs_done: AtomicU64,
    /// Blocks written to the Space.
    pub blocks_stored: AtomicU64,
}

/// What a finished backup did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The account DID.
    pub did: String,
    /// The backup key.
    pub key: String,
    /// The Backup block.
    pub backup: Cid,
    /// The commit backed up.
    pub commit: Cid,
    /// Its rev.
    pub rev: String,
    /// The clock event written.
    pub event: Cid,
    /// The clock head after advancing.
    pub head: Vec<Cid>,
    /// The rev the repo download started from (`None`: a full download).
    pub since: Option<String>,
    /// Repo blocks downloaded.
    pub repo_blocks: u64,
    /// Repo bytes downloaded.
    pub repo_bytes: u64,
    /// Records walked (all of them on a full download; the new part on an incremental one).
    pub records_walked: u64,
    /// MST subtrees not walked because the Space already held them.
    pub subtrees_pruned: u64,
    /// Blobs the account has.
    pub blobs: u64,
    /// Of those, downloaded now.
    pub blobs_downloaded: u64,
    /// Blob bytes downloaded.
    pub blob_bytes: u64,
    /// Whether preferences were stored.
    pub preferences: bool,
    /// Blocks new to the Space.
    pub blocks_stored: u64,
    /// Their bytes (block data).
    pub bytes_stored: u64,
    /// Shards written.
    pub shards: Vec<ShardInfo>,
    /// Problems recorded on the backup.
    pub warnings: Vec<String>,
    /// Requests made to the PDS (retries included).
    pub pds_requests: u64,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new backup was stored.
    Stored(Box<Summary>),
    /// The account's latest commit is the latest backup's: nothing recorded.
    Unchanged {
        /// The account DID.
        did: String,
        /// The latest backup's key.
        latest: String,
        /// The commit.
        commit: Cid,
        /// Requests made to the PDS.
        pds_requests: u64,
    },
    /// A backup under the job's key exists already (a redelivered job).
    AlreadyDone {
        /// The account DID.
        did: String,
        /// The key.
        key: String,
        /// The Backup block.
        backup: Cid,
    },
}

/// Runs backups into a Space of type `S`.
#[derive(Clone, Debug)]
pub struct Worker<S> {
    xrpc: XrpcClient,
    identity: IdentityResolver,
    space: Arc<S>,
    clock: Clock,
    settings: Settings,
}

/// The Backup DAG behind a clock head, as far as one job needs it.
#[derive(Debug, Default)]
struct State {
    /// The Root (merged when the head has several events) and the merge's new blocks.
    root: Option<Cid>,
    merge_blocks: Vec<Block>,
    /// The backup under the job's key, if any.
    at_key: Option<Cid>,
    /// The latest backup of the account.
    latest: Option<(String, Cid, Backup)>,
}

/// The repo part of a backup.
#[derive(Debug)]
struct RepoResult {
    commit: Commit,
    commit_cid: Cid,
    blocks: u64,
    bytes: u64,
    records: u64,
    pruned: u64,
    warnings: Vec<String>,
}

impl<S: SpaceStore> Worker<S> {
    /// A worker over these parts.
    pub fn new(
        xrpc: XrpcClient,
        identity: IdentityResolver,
        space: Arc<S>,
        clock: Clock,
        settings: Settings,
    ) -> Self {
        Staging::sweep(&settings.staging_dir);
        Self {
            xrpc,
            identity,
            space,
            clock,
            settings,
        }
    }

    /// The Space.
    pub fn space(&self) -> &Arc<S> {
        &self.space
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs one backup job.
    pub async fn run(&self, job: &Job, progress: &Progress) -> Result<Outcome, Error> {
        if !dag::is_backup_key(&job.key) {
            return Err(Error::InvalidJob(format!(
                "backup key {:?} is not a timestamp like 2025-03-12T15:13:59.958Z",
                job.key
            )));
        }
        let ident = self
            .identity
            .resolve(&job.account)
            .await
            .map_err(|source| Error::Identity {
                account: job.account.clone(),
                source,
            })?;
        let pds = self
            .settings
            .pds_override
            .clone()
            .unwrap_or_else(|| ident.pds.clone());
        let host = host_key(&pds);
        let requests_before = self.xrpc.host_stats(&host).requests;
        let pds_requests = || self.xrpc.host_stats(&host).requests - requests_before;

        let head = self.clock.head(&job.space).await?;
        let state = self.read_state(head.clone(), &ident.did, &job.key).await?;
        if let Some(backup) = state.at_key {
            return Ok(Outcome::AlreadyDone {
                did: ident.did,
                key: job.key.clone(),
                backup,
            });
        }

        let latest_commit = self
            .xrpc
            .get_latest_commit(&pds, &ident.did)
            .await
            .map_err(|source| Error::Pds {
                call: "getLatestCommit".into(),
                source,
            })?;
        if let Some((key, _, prev)) = &state.latest
            && prev.repo == latest_commit.cid
        {
            return Ok(Outcome::Unchanged {
                did: ident.did,
                latest: key.clone(),
                commit: latest_commit.cid,
                pds_requests: pds_requests(),
            });
        }

        let staging_dir = self.settings.staging_dir.clone();
        let staging = Arc::new(Mutex::new(
            blocking(move || Ok(Staging::create(&staging_dir)?)).await?,
        ));

        let result: Result<Outcome, Error> = async {
            // The repo, incremental when possible; whole when the increment leaves a hole.
            let since = state.latest.as_ref().map(|(_, _, b)| b.rev.clone());
            let (repo, since) = match self
                .fetch_repo(&pds, &ident, since.as_deref(), &staging, progress)
                .await
            {
                Err(Error::IncompleteRepo { count, first, .. }) if since.is_some() => {
                    tracing::warn!(did = %ident.did, count, first = %first.cid, "incremental repo download left blocks missing; downloading the whole repo");
                    (
                        self.fetch_repo(&pds, &ident, None, &staging, progress)
                            .await?,
                        None,
                    )
                }
                other => (other?, since),
            };

            // Blobs.
            let previous_blobs = match &state.latest {
                Some((_, _, prev)) => self.read_blob_map(prev.clone()).await?,
                None => HashMap::new(),
            };
            let blobs = self
                .fetch_blobs(&pds, &ident.did, &previous_blobs, &staging, progress)
                .await?;

            // Preferences.
            let preferences = match &job.access_token {
                Some(token) => {
                    let prefs = self
                        .xrpc
                        .get_preferences(&pds, token)
                        .await
                        .map_err(|source| Error::Pds {
                            call: "getPreferences".into(),
                            source,
                        })?;
                    let block = Block::encode(&prefs).map_err(|e| Error::Preferences(e.to_string()))?;
                    let cid = *block.cid();
                    stage(&staging, vec![block]).await?;
                    Some(cid)
                }
                None => None,
            };

            // The Backup DAG.
            let backup = Backup {
                repo: repo.commit_cid,
                rev: repo.commit.rev.clone(),
                blobs: Cid::default(),
                preferences,
                created_at: dag::backup_key(now_millis())?,
                pds: pds.as_str().trim_end_matches('/').to_owned(),
                warnings: repo.warnings.clone(),
            };
            let (backup_cid, event) = {
                let space = self.space.clone();
                let staging = staging.clone();
                let did = ident.did.clone();
                let key = job.key.clone();
                let head = head.clone();
                let entries = blobs.entries.clone();
                let deleted = blobs.deleted;
                let previous = state.latest.as_ref().map(|(_, _, b)| b.blobs);
                let root = state.root;
                let merge_blocks = state.merge_blocks;
                let handle = Handle::current();
                blocking(move || {
                    let mut staging = lock(&staging);
                    for b in &merge_blocks {
                        staging.put(b)?;
                    }
                    let (blobs_root, blobs_blocks) = {
                        let getter = Layered::new(&mut staging, &*space, &handle)?;
                        match previous {
                            Some(prev) if !deleted => dag::update_blobs(
                                &getter,
                                Some(&prev),
                                entries
                                    .iter()
                                    .filter(|(_, (_, new))| *new)
                                    .map(|(b, (u, _))| (*b, *u)),
                            )?,
                            _ => dag::build_blobs(&getter, entries.iter().map(|(b, (u, _))| (*b, *u)))?,
                        }
                    };
                    for b in &blobs_blocks {
                        staging.put(b)?;
                    }
                    let backup = Backup {
                        blobs: blobs_root,
                        ..backup
                    };
                    let backup_cid = *backup.to_block()?.cid();
                    let (root, dag_blocks) = {
                        let getter = Layered::new(&mut staging, &*space, &handle)?;
                        dag::add_backup(&getter, root.as_ref(), &did, &key, &backup)?
                    };
                    for b in &dag_blocks {
                        staging.put(b)?;
                    }
                    let event = dag::root_event(&root, &head)?;
                    staging.put(&event)?;
                    staging.flush()?;
                    Ok((backup_cid, event))
                })
                .await?
            };

            // Into the Space, then the clock.
            let (blocks_stored, bytes_stored, shards) = self.store_staged(&staging, progress).await?;
            self.space.commit(&backup_cid, &shards).await?;
            let head = self.advance(&job.space, &event).await?;

            Ok(Outcome::Stored(Box::new(Summary {
                did: ident.did,
                key: job.key.clone(),
                backup: backup_cid,
                commit: repo.commit_cid,
                rev: repo.commit.rev,
                event: *event.cid(),
                head,
                since,
                repo_blocks: repo.blocks,
                repo_bytes: repo.bytes,
                records_walked: repo.records,
                subtrees_pruned: repo.pruned,
                blobs: blobs.entries.len() as u64,
                blobs_downloaded: blobs.downloaded,
                blob_bytes: blobs.bytes,
                preferences: preferences.is_some(),
                blocks_stored,
                bytes_stored,
                shards,
                warnings: repo.warnings,
                pds_requests: pds_requests(),
            })))
        }
        .await;
        // Downloads cancelled by a failure may still be finishing a staging write on a blocking
        // thread, holding the staging (and so its spool file) a moment longer: wait for them, so
        // that nothing of this job is left on disk when it returns.
        for _ in 0..1000 {
            if Arc::strong_count(&staging) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(staging);
        result
    }

    /// Reads the DAG behind `head`: the Root, the backup under `key`, the latest backup.
    async fn read_state(&self, head: Vec<Cid>, did: &str, key: &str) -> Result<State, Error> {
        let space = self.space.clone();
        let did = did.to_owned();
        let key = key.to_owned();
        let handle = Handle::current();
        blocking(move || {
            let getter = SpaceGetter {
                space: &*space,
                handle: &handle,
                extra: HashMap::new(),
            };
            let Some((root, merge_blocks)) = dag::head_root(&getter, &head)? else {
                return Ok(State::default());
            };
            let getter = SpaceGetter {
                extra: merge_blocks.iter().map(|b| (*b.cid(), b.clone())).collect(),
                ..getter
            };
            let at_key =
                dag::get_backup(&getter, &root, &did, BackupRef::Key(&key))?.map(|(_, cid, _)| cid);
            let latest = dag::get_backup(&getter, &root, &did, BackupRef::Latest)?;
            Ok(State {
                root: Some(root),
                merge_blocks,
                at_key,
                latest,
            })
        })
        .await
    }

    /// The latest backup's blobs: ATProto CID → UnixFS root.
    async fn read_blob_map(&self, backup: Backup) -> Result<HashMap<Cid, Cid>, Error> {
        let space = self.space.clone();
        let handle = Handle::current();
        blocking(move || {
            let getter = SpaceGetter {
                space: &*space,
                handle: &handle,
                extra: HashMap::new(),
            };
            Ok(dag::blobs(&getter, &backup)?.collect::<Result<HashMap<_, _>, _>>()?)
        })
        .await
    }

    /// Downloads the repo into staging and verifies it (see the module documentation).
    async fn fetch_repo(
        &self,
        pds: &Url,
        ident: &Identity,
        since: Option<&str>,
        staging: &Arc<Mutex<Staging>>,
        progress: &Progress,
    ) -> Result<RepoResult, Error> {
        let download = self
            .xrpc
            .get_repo(pds, &ident.did, since)
            .await
            .map_err(|source| Error::Pds {
                call: "getRepo".into(),
                source,
            })?;
        let handle = Handle::current();
        let limits = self.settings.car_limits;
        let pds_text = pds.to_string();
        // Stream the CAR into staging on a blocking thread.
        let (root, blocks, bytes) = {
            let staging = staging.clone();
            let pds_text = pds_text.clone();
            // The progress counters are only read for display; a copy of the Arc-less counter
            // reference cannot cross into the blocking task, so count locally and add after.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
            let task = tokio::task::spawn_blocking(move || -> Result<(Cid, u64, u64), Error> {
                let reader = StreamReader::new(download.body, handle);
                let car_error = |source: CarError| repo_car_error(&pds_text, source);
                let mut car = CarReader::new(reader, &limits).map_err(car_error)?;
                let root = match car.roots() {
                    [root] => *root,
                    roots => {
                        return Err(Error::RepoRoot {
                            pds: pds_text.clone(),
                            reason: format!("{} roots, expected the commit alone", roots.len()),
                        });
                    }
                };
                let mut staging = lock(&staging);
                let (mut blocks, mut last_offset) = (0u64, 0u64);
                while let Some(block) = car.next_block().map_err(car_error)? {
                    staging.put(&block)?;
                    blocks += 1;
                    let offset = car.offset();
                    let _ = tx.send((1, offset - last_offset));
                    last_offset = offset;
                }
                staging.flush()?;
                Ok((root, blocks, car.offset()))
            });
            while let Some((b, n)) = rx.recv().await {
                progress.repo_blocks.fetch_add(b, Ordering::Relaxed);
                progress.bytes.fetch_add(n, Ordering::Relaxed);
            }
            task.await.map_err(|e| Error::Task(e.to_string()))??
        };

        // The commit.
        let commit_block = {
            let staging = staging.clone();
            blocking(move || Ok(lock(&staging).get(&root)?)).await?
        }
        .ok_or_else(|| Error::RepoRoot {
            pds: pds_text.clone(),
            reason: format!("the CAR does not hold its root {root}"),
        })?;
        let commit = Commit::from_block(&commit_block)
            .map_err(|source| Error::Commit { cid: root, source })?;
        if commit.did != ident.did {
            return Err(Error::Commit {
                cid: root,
                source: CommitError::WrongDid {
                    expected: ident.did.clone(),
                    found: commit.did,
                },
            });
        }
        let mut warnings = Vec::new();
        if let Err(source) = commit.verify_signature(&ident.signing_key) {
            match self.former_key(&ident.did, &commit).await? {
                Some(key) => warnings.push(format!(
                    "commit {root} is signed by {}, a key the account had before its current one ({}); the PDS has not re-signed the repo since the key rotation",
                    key.did_key(),
                    ident.signing_key.did_key()
                )),
                None => return Err(Error::Commit { cid: root, source }),
            }
        }

        // The MST walk over download ∪ Space, pruning what the Space holds.
        let walk = {
            let staging = staging.clone();
            let space = self.space.clone();
            let handle = Handle::current();
            let opts = WalkOptions {
                limits: self.settings.mst_limits,
                fetch_records: false,
            };
            let data = commit.data;
            blocking(move || {
                let mut staging = lock(&staging);
                let getter = Layered::new(&mut staging, &*space, &handle)?;
                let mut missing_records = Vec::new();
                let mut failure: Option<SpaceError> = None;
                // Staged blocks the new commit reaches (the rest are intermediate commits'
                // leftovers of a `since` download, not worth storing).
                let mut reached = vec![false; getter.staging.len()];
                let mut reach = |cid: &Cid| {
                    if let Some(i) = getter.staging.position(cid) {
                        reached[i] = true;
                    }
                };
                reach(&root);
                let summary = repo::walk_mst_pruned(
                    &getter,
                    &data,
                    &opts,
                    |cid| {
                        !getter.staged(cid)
                            && match handle.block_on(space.has(cid)) {
                                Ok(has) => has,
                                Err(e) => {
                                    failure.get_or_insert(e);
                                    false
                                }
                            }
                    },
                    |visit| {
                        match visit {
                            MstVisit::Node { cid, .. } => reach(cid),
                            MstVisit::Record { cid, .. } if getter.staged(cid) => reach(cid),
                            MstVisit::Record { key, cid, .. } => {
                                if !handle.block_on(space.has(cid)).map_err(StoreError::new)? {
                                    missing_records.push(repo::MissingBlock {
                                        cid: *cid,
                                        kind: repo::BlockKind::Record,
                                        key: Some(key.to_owned()),
                                    });
                                }
                            }
                        }
                        Ok(())
                    },
                )?;
                if let Some(e) = failure {
                    return Err(e.into());
                }
                drop(getter);
                staging.retain_positions(&reached);
                let mut missing = summary.missing.clone();
                missing.extend(missing_records);
                Ok((summary, missing))
            })
            .await?
        };
        let (summary, missing) = walk;
        if let Some(first) = missing.first() {
            return Err(Error::IncompleteRepo {
                commit: root,
                count: missing.len(),
                first: first.clone(),
            });
        }
        Ok(RepoResult {
            commit,
            commit_cid: root,
            blocks,
            bytes,
            records: summary.records,
            pruned: summary.pruned,
            warnings,
        })
    }

    /// A key from the account's PLC history (not its current one) that signed `commit`:
    /// `Ok(None)` when no key the account ever had did (or it has no PLC history: did:web), an
    /// error when the history cannot be read now (so the job is retried, not failed for good).
    /// Operations a recovery nullified do not count: their keys were never rightfully the
    /// account's.
    async fn former_key(&self, did: &str, commit: &Commit) -> Result<Option<PublicKey>, Error> {
        if !did.starts_with("did:plc:") {
            return Ok(None);
        }
        let mut url = self.identity.config().plc_url.clone();
        url.set_path(&format!(
            "{}/{did}/log/audit",
            url.path().trim_end_matches('/')
        ));
        let log = match self.xrpc.get_json_url(url).await {
            Ok(log) => log,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(source) => {
                return Err(Error::PlcLog {
                    did: did.to_owned(),
                    source,
                });
            }
        };
        let Some(entries) = log.as_array() else {
            return Err(Error::PlcLog {
                did: did.to_owned(),
                source: XrpcError::InvalidResponse {
                    url: self.identity.config().plc_url.to_string(),
                    reason: "the audit log is not a list".into(),
                },
            });
        };
        Ok(entries.iter().find_map(|entry| {
            if entry.get("nullified").and_then(serde_json::Value::as_bool) == Some(true) {
                return None;
            }
            let op = entry.get("operation")?;
            let key = op
                .get("verificationMethods")
                .and_then(|m| m.get("atproto"))
                .or_else(|| op.get("signingKey"))?
                .as_str()?;
            let key = PublicKey::from_did_key(key).ok()?;
            commit.verify_signature(&key).ok().map(|()| key)
        }))
    }

    /// Lists the account's blobs and downloads those the Space lacks.
    async fn fetch_blobs(
        &self,
        pds: &Url,
        did: &str,
        previous: &HashMap<Cid, Cid>,
        staging: &Arc<Mutex<Staging>>,
        progress: &Progress,
    ) -> Result<BlobsResult, Error> {
        let listed: Vec<Cid> = self
            .xrpc
            .list_blobs(pds, did, None, LIST_BLOBS_MAX_LIMIT)
            .try_collect()
            .await
            .map_err(|source| Error::Pds {
                call: "listBlobs".into(),
                source,
            })?;
        progress
            .blobs_total
            .store(listed.len() as u64, Ordering::Relaxed);
        let mut entries: HashMap<Cid, (Cid, bool)> = HashMap::with_capacity(listed.len());
        let mut wanted = Vec::new();
        for cid in listed {
            if cid.version() != cid::Version::V1
                || cid.codec() != RAW
                || cid.hash().code() != SHA2_256
                || cid.hash().size() != 32
            {
                return Err(Error::InvalidBlobCid {
                    cid,
                    pds: pds.to_string(),
                });
            }
            if entries.contains_key(&cid) {
                continue;
            }
            if let Some(root) = previous.get(&cid) {
                entries.insert(cid, (*root, false));
                progress.blobs_done.fetch_add(1, Ordering::Relaxed);
            } else if self.space.holds_locally(&cid) {
                // A blob of one block is stored under its own CID (and a Space that has to be
                // asked is not asked about every blob: the latest backup's map covers what
                // earlier backups stored).
                entries.insert(cid, (cid, true));
                progress.blobs_done.fetch_add(1, Ordering::Relaxed);
            } else {
                entries.insert(cid, (cid, true));
                wanted.push(cid);
            }
        }
        let deleted = previous.keys().any(|cid| !entries.contains_key(cid));
        let downloads: Vec<(Cid, Cid, u64)> = stream::iter(wanted)
            .map(|cid| self.fetch_blob(pds, did, cid, staging, progress))
            .buffer_unordered(self.settings.blob_concurrency.max(1))
            .try_collect()
            .await?;
        let mut bytes = 0;
        for (cid, root, size) in &downloads {
            entries.insert(*cid, (*root, true));
            bytes += size;
        }
        Ok(BlobsResult {
            entries,
            deleted,
            downloaded: downloads.len() as u64,
            bytes,
        })
    }

    /// Downloads one blob, hashing and UnixFS-encoding it as it arrives; returns its CID, its
    /// UnixFS root and its size.
    async fn fetch_blob(
        &self,
        pds: &Url,
        did: &str,
        cid: Cid,
        staging: &Arc<Mutex<Staging>>,
        progress: &Progress,
    ) -> Result<(Cid, Cid, u64), Error> {
        let call = || format!("getBlob {cid}");
        let download = self
            .xrpc
            .get_blob(pds, did, &cid)
            .await
            .map_err(|source| Error::Pds {
                call: call(),
                source,
            })?;
        let mut body = download.body;
        let mut hasher = Sha256::new();
        let mut encoder = FileEncoder::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Error::Pds {
                call: call(),
                source,
            })?;
            progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            hasher.update(&chunk);
            let blocks = encoder.push(&chunk);
            if !blocks.is_empty() {
                stage(staging, blocks).await?;
            }
        }
        if hasher.finalize().as_slice() != cid.hash().digest() {
            return Err(Error::BlobHashMismatch {
                cid,
                pds: pds.to_string(),
            });
        }
        let (root, blocks, size) = encoder.finish();
        stage(staging, blocks).await?;
        progress.blobs_done.fetch_add(1, Ordering::Relaxed);
        Ok((cid, root, size))
    }

    /// Copies the staged blocks the Space lacks into it, in shards.
    async fn store_staged(
        &self,
        staging: &Arc<Mutex<Staging>>,
        progress: &Progress,
    ) -> Result<(u64, u64, Vec<ShardInfo>), Error> {
        let mut writer = ShardWriter::new(&*self.space, self.settings.shard_size);
        let mut bytes = 0u64;
        // Copied in batches of bounded size, read off the async threads; the writer holds at
        // most one shard.
        let mut next = 0;
        loop {
            let batch = lock(staging).batch(next, 256, COPY_BATCH_BYTES);
            if batch.is_empty() {
                break;
            }
            next += batch.len();
            // What the Space surely holds is skipped here; `put_shard` skips what else it
            // knows, and the count of blocks stored comes from the shards it wrote.
            let fresh: Vec<Cid> = batch
                .into_iter()
                .filter(|cid| !self.space.holds_locally(cid))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let staging = staging.clone();
            let read: Vec<Block> = blocking(move || {
                let staging = lock(&staging);
                fresh
                    .iter()
                    .map(|cid| {
                        staging
                            .get(cid)?
                            .ok_or_else(|| Error::Task(format!("staged block {cid} is gone")))
                    })
                    .collect()
            })
            .await?;
            for block in read {
                bytes += block.bytes().len() as u64;
                progress.blocks_stored.fetch_add(1, Ordering::Relaxed);
                writer.add(block).await?;
            }
        }
        let shards = writer.finish().await?;
        let blocks = shards.iter().map(|s| s.blocks as u64).sum();
        Ok((blocks, bytes, shards))
    }

    /// Advances the clock with `event`; when the head then holds other events too, merges
    /// their Roots and advances with the merge, a few rounds at most.
    async fn advance(&self, space: &str, event: &Block) -> Result<Vec<Cid>, Error> {
        let mut head = self.clock.advance(space, event).await?;
        for _ in 0..self.settings.merge_rounds {
            if head.len() <= 1 {
                break;
            }
            match self.merge_head(space, head.clone()).await {
                Ok(merged) => head = merged,
                Err(e) => {
                    // The backup is in the history already; the next writer merges.
                    tracing::warn!(%space, error = %e, "could not merge concurrent clock heads");
                    break;
                }
            }
        }
        Ok(head)
    }

    async fn merge_head(&self, space: &str, head: Vec<Cid>) -> Result<Vec<Cid>, Error> {
        let store = self.space.clone();
        let handle = Handle::current();
        let parents = head.clone();
        let (event, blocks) = blocking(move || {
            let getter = SpaceGetter {
                space: &*store,
                handle: &handle,
                extra: HashMap::new(),
            };
            let Some((root, mut blocks)) = dag::head_root(&getter, &parents)? else {
                return Err(Error::Task("empty head".into()));
            };
            let event = dag::root_event(&root, &parents)?;
            blocks.push(event.clone());
            Ok((event, blocks))
        })
        .await?;
        let mut writer = ShardWriter::new(&*self.space, self.settings.shard_size);
        for b in blocks {
            writer.add(b).await?;
        }
        let shards = writer.finish().await?;
        self.space.commit(event.cid(), &shards).await?;
        self.clock.advance(space, &event).await
    }
}

/// The blobs part of a backup.
#[derive(Debug)]
struct BlobsResult {
    /// ATProto CID → (UnixFS root, new in this backup).
    entries: HashMap<Cid, (Cid, bool)>,
    /// Whether some blob of the latest backup is gone from the account.
    deleted: bool,
    downloaded: u64,
    bytes: u64,
}

fn repo_car_error(pds: &str, source: CarError) -> Error {
    // A failed stream (the PDS died, a read timed out) is the PDS's error, not the CAR's.
    if let CarError::Io { source: io, .. } = source {
        if StreamReader::xrpc_error(&io).is_some()
            && let Some(inner) = io.into_inner()
            && let Ok(xrpc) = inner.downcast::<XrpcError>()
        {
            return Error::Pds {
                call: "getRepo".into(),
                source: *xrpc,
            };
        }
        return Error::RepoCar {
            pds: pds.to_owned(),
            source: CarError::Io {
                offset: 0,
                source: std::io::Error::other("stream failed"),
            },
        };
    }
    Error::RepoCar {
        pds: pds.to_owned(),
        source,
    }
}

fn lock(staging: &Mutex<Staging>) -> MutexGuard<'_, Staging> {
    staging
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn stage(staging: &Arc<Mutex<Staging>>, blocks: Vec<Block>) -> Result<(), Error> {
    let staging = staging.clone();
    blocking(move || {
        let mut staging = lock(&staging);
        for b in &blocks {
            staging.put(b)?;
        }
        Ok(())
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The Space as a synchronous [`BlockGetter`] (blocking on the runtime: only on blocking
/// threads), with extra blocks in memory in front of it.
pub(crate) struct SpaceGetter<'a, S> {
    pub(crate) space: &'a S,
    pub(crate) handle: &'a Handle,
    pub(crate) extra: HashMap<Cid, Block>,
}

impl<S: SpaceStore> BlockGetter for SpaceGetter<'_, S> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        if let Some(b) = self.extra.get(cid) {
            return Ok(Some(b.clone()));
        }
        self.handle
            .block_on(self.space.get(cid))
            .map_err(StoreError::new)
    }
}

/// Staging in front of the Space.
struct Layered<'a, S> {
    staging: &'a Staging,
    space: SpaceGetter<'a, S>,
}

impl<'a, S: SpaceStore> Layered<'a, S> {
    fn new(staging: &'a mut Staging, space: &'a S, handle: &'a Handle) -> Result<Self, Error> {
        staging.flush()?;
        Ok(Self {
            staging,
            space: SpaceGetter {
                space,
                handle,
                extra: HashMap::new(),
            },
        })
    }

    fn staged(&self, cid: &Cid) -> bool {
        self.staging.contains(cid)
    }
}

impl<S: SpaceStore> BlockGetter for Layered<'_, S> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        if let Some(b) = self.staging.get(cid).map_err(StoreError::new)? {
            return Ok(Some(b));
        }
        self.space.get_block(cid)
    }
}
