//! Reading backups back out of a Space: list them, export one as the files a restore needs
//! (`repo.car` and `blobs/<cid>`), and re-verify one end to end.
//!
//! Everything reads through the clock head, so it sees what every client of the Space wrote.
//! These are synchronous walks over a [`BlockGetter`]; the async wrappers run them on blocking
//! threads.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cid::Cid;
use proto::Block;
use proto::backup::{self as dag, Backup, BackupEntry, BackupRef};
use proto::car::CarWriter;
use proto::clock::BlockGetter;
use proto::ipld::{self, RAW};
use proto::repo::{self, Commit, MstVisit, PublicKey, WalkOptions};
use proto::unixfs::FileReader;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use crate::backup::SpaceGetter;
use crate::clock::Clock;
use crate::error::Error;
use crate::space::SpaceStore;

/// One backup as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The account DID.
    pub did: String,
    /// The backup key (scheduled time).
    pub key: String,
    /// The Backup block.
    pub backup: Cid,
    /// When it was made.
    pub created_at: String,
    /// The commit's rev.
    pub rev: String,
    /// The commit.
    pub commit: Cid,
    /// Records in the repo.
    pub records: u64,
    /// Blobs.
    pub blobs: u64,
    /// Bytes of the repo (commit, nodes, records) and blobs together.
    pub bytes_total: u64,
    /// Of those, bytes not in the account's previous backup.
    pub bytes_new: u64,
    /// Warnings recorded on the backup.
    pub warnings: Vec<String>,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The backup key.
    pub key: String,
    /// The commit (the root of `repo.car`).
    pub commit: Cid,
    /// Blocks in `repo.car`.
    pub blocks: u64,
    /// Records.
    pub records: u64,
    /// Blob files written.
    pub blobs: u64,
    /// Bytes written (CAR and blobs).
    pub bytes: u64,
}

/// What a verification checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// The backup key.
    pub key: String,
    /// The commit.
    pub commit: Cid,
    /// Whether the commit signature was checked against a key (and passed).
    pub signature_checked: bool,
    /// MST nodes checked.
    pub nodes: u64,
    /// Records checked.
    pub records: u64,
    /// Blobs checked (content hashed against their CIDs).
    pub blobs: u64,
    /// Blob bytes hashed.
    pub blob_bytes: u64,
}

/// A read-only view of a Space's backups.
#[derive(Debug)]
pub struct Reader<S> {
    space: Arc<S>,
    clock: Clock,
    space_did: String,
}

impl<S: SpaceStore> Reader<S> {
    /// Backups of `space_did` (its clock), read from `space`.
    pub fn new(space: Arc<S>, clock: Clock, space_did: impl Into<String>) -> Self {
        Self {
            space,
            clock,
            space_did: space_did.into(),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SpaceGetter<'_, S>, Option<Cid>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let head = self.clock.head(&self.space_did).await?;
        let space = self.space.clone();
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            let getter = SpaceGetter {
                space: &*space,
                handle: &handle,
                extra: Default::default(),
            };
            let root = match dag::head_root(&getter, &head)? {
                Some((root, blocks)) => {
                    let getter = SpaceGetter {
                        extra: blocks.into_iter().map(|b| (*b.cid(), b)).collect(),
                        ..getter
                    };
                    return f(&getter, Some(root));
                }
                None => None,
            };
            f(&getter, root)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// The accounts with backups.
    pub async fn accounts(&self) -> Result<Vec<String>, Error> {
        self.run(|g, root| match root {
            Some(root) => Ok(dag::accounts(g, &root)?),
            None => Ok(Vec::new()),
        })
        .await
    }

    /// Every backup of `did` (or of every account), oldest first, with sizes.
    pub async fn list(&self, did: Option<&str>) -> Result<Vec<Listing>, Error> {
        let did = did.map(str::to_owned);
        self.run(move |g, root| {
            let Some(root) = root else {
                return Ok(Vec::new());
            };
            let dids = match did {
                Some(d) => vec![d],
                None => dag::accounts(g, &root)?,
            };
            let mut out = Vec::new();
            for did in dids {
                let mut previous: HashSet<Cid> = HashSet::new();
                for (key, cid, backup) in dag::list_backups(g, &root, &did)? {
                    let (listing, reached) = size_backup(g, &did, key, cid, &backup, &previous)?;
                    previous = reached;
                    out.push(listing);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Writes backup `which` of `did` to `out`: `repo.car` (root: the commit; the commit, every
    /// MST node and every record), `blobs/<cid>` for every blob (hash-checked), and
    /// `preferences.json` when the backup has preferences.
    pub async fn export(
        &self,
        did: &str,
        which: BackupRef<'_>,
        out: &Path,
    ) -> Result<Export, Error> {
        let did = did.to_owned();
        let which = OwnedRef::from(which);
        let out = out.to_path_buf();
        self.run(move |g, root| {
            let (key, _, backup) = find(g, root, &did, &which)?;
            export_backup(g, &key, &backup, &out)
        })
        .await
    }

    /// Re-verifies backup `which` of `did`: every block's hash, the commit (account, and its
    /// signature when `key` is given), the whole MST with every record, every blob's content
    /// against its CID, the preferences block.
    pub async fn verify(
        &self,
        did: &str,
        which: BackupRef<'_>,
        key: Option<PublicKey>,
    ) -> Result<Verification, Error> {
        let did = did.to_owned();
        let which = OwnedRef::from(which);
        self.run(move |g, root| {
            let (bkey, _, backup) = find(g, root, &did, &which)?;
            verify_backup(g, &did, &bkey, &backup, key.as_ref())
        })
        .await
    }
}

/// [`BackupRef`] that can cross threads.
#[derive(Clone, Debug)]
enum OwnedRef {
    Key(String),
    Latest,
}

impl From<BackupRef<'_>> for OwnedRef {
    fn from(r: BackupRef<'_>) -> Self {
        match r {
            BackupRef::Key(k) => Self::Key(k.to_owned()),
            BackupRef::Latest => Self::Latest,
        }
    }
}

fn find<G: BlockGetter + ?Sized>(
    g: &G,
    root: Option<Cid>,
    did: &str,
    which: &OwnedRef,
) -> Result<BackupEntry, Error> {
    let r = match which {
        OwnedRef::Key(k) => BackupRef::Key(k),
        OwnedRef::Latest => BackupRef::Latest,
    };
    let no = || Error::NoSuchBackup {
        account: did.to_owned(),
        which: match which {
            OwnedRef::Key(k) => format!("at {k}"),
            OwnedRef::Latest => "at all".to_owned(),
        },
    };
    let root = root.ok_or_else(no)?;
    dag::get_backup(g, &root, did, r)?.ok_or_else(no)
}

/// A block the Backup DAG names, which the Space must hold.
fn fetch<G: BlockGetter + ?Sized>(g: &G, cid: &Cid) -> Result<Block, Error> {
    match g.get_block(cid) {
        Ok(Some(block)) if block.cid() == cid => Ok(block),
        Ok(Some(_)) => Err(dag::BackupError::BlockMismatch {
            cid: *cid,
            source: Box::new(proto::ipld::IpldError::HashMismatch { cid: *cid }),
        }
        .into()),
        Ok(None) => Err(dag::BackupError::MissingBlock { cid: *cid }.into()),
        Err(source) => Err(dag::BackupError::Store { cid: *cid, source }.into()),
    }
}

/// A walk of the whole MST that fetches (and so hash-checks) every record too.
const FULL_WALK: WalkOptions = WalkOptions {
    limits: proto::repo::MstLimits::DEFAULT,
    fetch_records: true,
};

/// A backup's commit block, decoded.
fn load_commit<G: BlockGetter + ?Sized>(g: &G, backup: &Backup) -> Result<(Block, Commit), Error> {
    let block = fetch(g, &backup.repo)?;
    let commit = Commit::from_block(&block).map_err(|source| Error::Commit {
        cid: backup.repo,
        source,
    })?;
    Ok((block, commit))
}

/// Sizes one backup; returns the listing and the set of CIDs it reaches.
fn size_backup<G: BlockGetter + ?Sized>(
    g: &G,
    did: &str,
    key: String,
    cid: Cid,
    backup: &Backup,
    previous: &HashSet<Cid>,
) -> Result<(Listing, HashSet<Cid>), Error> {
    let mut reached = HashSet::new();
    let (mut total, mut new) = (0u64, 0u64);
    let mut count = |cid: &Cid, len: u64, reached: &mut HashSet<Cid>| {
        if reached.insert(*cid) {
            total += len;
            if !previous.contains(cid) {
                new += len;
            }
        }
    };
    let (commit_block, commit) = load_commit(g, backup)?;
    count(
        &backup.repo,
        commit_block.bytes().len() as u64,
        &mut reached,
    );
    let mut sizes: Vec<(Cid, u64)> = Vec::new();
    let walk = repo::walk_mst(g, &commit.data, &FULL_WALK, |v| {
        match v {
            MstVisit::Node { cid, block, .. } => sizes.push((*cid, block.bytes().len() as u64)),
            MstVisit::Record { cid, block, .. } => {
                if let Some(b) = block {
                    sizes.push((*cid, b.bytes().len() as u64));
                }
            }
        }
        Ok(())
    })?;
    for (cid, len) in sizes {
        count(&cid, len, &mut reached);
    }
    let mut blobs = 0;
    for entry in dag::blobs(g, backup)? {
        let (blob, root) = entry?;
        blobs += 1;
        let mut size = 0u64;
        for piece in FileReader::new(g, &root) {
            size += piece.map_err(|e| blob_error(did, &key, &blob, &e))?.len() as u64;
        }
        count(&blob, size, &mut reached);
    }
    Ok((
        Listing {
            did: did.to_owned(),
            key,
            backup: cid,
            created_at: backup.created_at.clone(),
            rev: backup.rev.clone(),
            commit: backup.repo,
            records: walk.records,
            blobs,
            bytes_total: total,
            bytes_new: new,
            warnings: backup.warnings.clone(),
        },
        reached,
    ))
}

fn blob_error(did: &str, key: &str, blob: &Cid, e: &dyn std::fmt::Display) -> Error {
    Error::Verify {
        account: did.to_owned(),
        key: key.to_owned(),
        reason: format!("blob {blob}: {e}"),
    }
}

fn export_backup<G: BlockGetter + ?Sized>(
    g: &G,
    key: &str,
    backup: &Backup,
    out: &Path,
) -> Result<Export, Error> {
    fs::create_dir_all(out.join("blobs")).map_err(|e| Error::io("create", out, e))?;
    let car_path = out.join("repo.car");
    let tmp = out.join("repo.car.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let mut car = CarWriter::new(BufWriter::new(file), &[backup.repo])
        .map_err(|e| Error::io("write", &tmp, e))?;
    let (commit_block, commit) = load_commit(g, backup)?;
    car.write_block(&commit_block)
        .map_err(|e| Error::io("write", &tmp, e))?;
    let mut blocks = 1u64;
    let mut written: HashSet<Cid> = HashSet::from([backup.repo]);
    let mut write_error = None;
    let walk = repo::walk_mst(g, &commit.data, &FULL_WALK, |v| {
        let block = match v {
            MstVisit::Node { block, .. } => Some(block),
            MstVisit::Record { block, .. } => block,
        };
        if let Some(block) = block
            && written.insert(*block.cid())
        {
            if let Err(e) = car.write_block(block) {
                write_error = Some(e);
                return Err(proto::clock::StoreError::new("write failed"));
            }
            blocks += 1;
        }
        Ok(())
    });
    if let Some(e) = write_error {
        return Err(Error::io("write", &tmp, e));
    }
    let walk = walk?;
    if let Some(first) = walk.missing.first() {
        return Err(Error::IncompleteRepo {
            commit: backup.repo,
            count: walk.missing.len(),
            first: first.clone(),
        });
    }
    let mut writer = car.finish().map_err(|e| Error::io("write", &tmp, e))?;
    writer.flush().map_err(|e| Error::io("write", &tmp, e))?;
    let car_bytes = writer
        .get_ref()
        .metadata()
        .map(|m| m.len())
        .unwrap_or_default();
    drop(writer);
    fs::rename(&tmp, &car_path).map_err(|e| Error::io("rename", &car_path, e))?;

    let mut bytes = car_bytes;
    let mut blobs = 0u64;
    for entry in dag::blobs(g, backup)? {
        let (blob, root) = entry?;
        let path = out.join("blobs").join(blob.to_string());
        bytes += write_blob(g, key, &blob, &root, &path)?;
        blobs += 1;
    }
    if let Some(prefs) = &backup.preferences {
        let block = fetch(g, prefs)?;
        let value: ipld::Ipld = block
            .decode()
            .map_err(|e| Error::Preferences(e.to_string()))?;
        let json = ipld::encode_dag_json(&value).map_err(|e| Error::Preferences(e.to_string()))?;
        let path = out.join("preferences.json");
        fs::write(&path, &json).map_err(|e| Error::io("write", &path, e))?;
        bytes += json.len() as u64;
    }
    Ok(Export {
        key: key.to_owned(),
        commit: backup.repo,
        blocks,
        records: walk.records,
        blobs,
        bytes,
    })
}

/// Streams a blob's content to `path`, checking it against the blob CID.
fn write_blob<G: BlockGetter + ?Sized>(
    g: &G,
    key: &str,
    blob: &Cid,
    root: &Cid,
    path: &PathBuf,
) -> Result<u64, Error> {
    let tmp = path.with_extension("tmp");
    let mut file = BufWriter::new(File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for piece in FileReader::new(g, root) {
        let piece = piece.map_err(|e| blob_error("", key, blob, &e))?;
        hasher.update(&piece);
        size += piece.len() as u64;
        file.write_all(&piece)
            .map_err(|e| Error::io("write", &tmp, e))?;
    }
    file.flush().map_err(|e| Error::io("write", &tmp, e))?;
    drop(file);
    if hasher.finalize().as_slice() != blob.hash().digest() {
        let _ = fs::remove_file(&tmp);
        return Err(blob_error(
            "",
            key,
            blob,
            &"content does not hash to the blob CID",
        ));
    }
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
    Ok(size)
}

fn verify_backup<G: BlockGetter + ?Sized>(
    g: &G,
    did: &str,
    key: &str,
    backup: &Backup,
    signing_key: Option<&PublicKey>,
) -> Result<Verification, Error> {
    let fail = |reason: String| Error::Verify {
        account: did.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let commit_block = fetch(g, &backup.repo)?;
    let commit = Commit::from_block(&commit_block).map_err(|e| fail(e.to_string()))?;
    if commit.did != did {
        return Err(fail(format!("commit is for {}", commit.did)));
    }
    if commit.rev != backup.rev {
        return Err(fail(format!(
            "commit rev {} is not the backup's {}",
            commit.rev, backup.rev
        )));
    }
    let signature_checked = match signing_key {
        Some(k) => match commit.verify_signature(k) {
            Ok(()) => true,
            // A rotated key is recorded as a warning on the backup when it was made.
            Err(_) if !backup.warnings.is_empty() => false,
            Err(e) => return Err(fail(e.to_string())),
        },
        None => false,
    };
    let walk = repo::walk_mst(g, &commit.data, &FULL_WALK, |_| Ok(()))?;
    if let Some(first) = walk.missing.first() {
        return Err(fail(format!(
            "{} block(s) of the repo are missing from the Space (first: {} {:?})",
            walk.missing.len(),
            first.cid,
            first.kind
        )));
    }
    let (mut blobs, mut blob_bytes) = (0u64, 0u64);
    for entry in dag::blobs(g, backup)? {
        let (blob, root) = entry?;
        let mut hasher = Sha256::new();
        for piece in FileReader::new(g, &root) {
            let piece = piece.map_err(|e| fail(format!("blob {blob}: {e}")))?;
            hasher.update(&piece);
            blob_bytes += piece.len() as u64;
        }
        if hasher.finalize().as_slice() != blob.hash().digest() {
            return Err(fail(format!(
                "blob {blob}: content does not hash to its CID"
            )));
        }
        if root.codec() == RAW && root != blob {
            return Err(fail(format!(
                "blob {blob}: a one-block blob under another CID"
            )));
        }
        blobs += 1;
    }
    if let Some(prefs) = &backup.preferences {
        let block = fetch(g, prefs)?;
        block
            .decode::<ipld::Ipld>()
            .map_err(|e| fail(format!("preferences: {e}")))?;
    }
    Ok(Verification {
        key: key.to_owned(),
        commit: backup.repo,
        signature_checked,
        nodes: walk.nodes,
        records: walk.records,
        blobs,
        blob_bytes,
    })
}
