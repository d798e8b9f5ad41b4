//! Where a backup's blocks go: a Space. The worker writes blocks, packed into CAR shards, and
//! asks which blocks the Space already holds (so an incremental backup stores only what is new).
//! [`SpaceStore`] is that seam; [`LocalSpace`] is the embedded implementation, a directory
//! standing in for a Storacha Space (the Storacha upload path is another implementation).
//!
//! # Local layout and crash safety
//!
//! ```text
//! DIR/shards/<shard CID>.car   a CARv1 of blocks (root: the first block)
//! DIR/shards/<shard CID>.idx   its index: (CID, offset, length) of every block, written first
//! ```
//!
//! A shard is written to a temporary file, flushed to disk, then renamed into place; its index
//! likewise, and the index is renamed before the CAR. Opening the Space reads only the indexes
//! whose CAR exists, so a process killed at any point leaves either a complete shard or nothing
//! that counts (temporary files and orphan indexes are swept on open). [`ShardWriter::finish`]
//! returns only after every shard is durable, and the worker advances the clock only after that,
//! so a clock head never points at blocks that are not all there.

use std::collections::HashSet;
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use cid::Cid;
use proto::ipld::{self, CAR};
use proto::{Block, car};
use sha2::{Digest, Sha256};

use crate::cid_map::CidMap;

/// Default shard size: the Storacha client's (`SHARD_SIZE` in its upload client), so shards
/// written locally and uploaded later look alike.
pub const DEFAULT_SHARD_SIZE: usize = 133_169_152;

/// Why the Space could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpaceError {
    /// A filesystem operation failed.
    #[error("space {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored block or index does not match what it claims to be.
    #[error("space shard {shard}: {reason}")]
    Corrupt {
        /// The shard file.
        shard: String,
        /// What is wrong.
        reason: String,
    },
    /// A background task failed to complete.
    #[error("space task failed: {0}")]
    Task(String),
    /// A remote Space service (Storacha) refused or failed an operation.
    #[error("space service: {op}: {source}")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// Whether trying again later can succeed (transport faults, 5xx, receipts not yet
        /// there) or not (refused delegation, unknown Space, no storage left).
        retry: bool,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SpaceError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// What one stored shard holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The CAR's CID (codec CAR, sha2-256 of its bytes), as Storacha names shards.
    pub cid: Cid,
    /// Blocks in the shard.
    pub blocks: usize,
    /// The CAR's size in bytes.
    pub bytes: u64,
}

/// The operations a backup needs from a Space.
pub trait SpaceStore: Send + Sync + 'static {
    /// True when the Space holds the block.
    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool, SpaceError>> + Send;

    /// Whether this process already knows the Space holds the block, without asking anyone
    /// (`false` when unsure). Writers use it to skip what is surely there: storing a block twice
    /// costs bytes, never correctness, while asking a remote Space about every block of a
    /// backup would cost a request each.
    fn holds_locally(&self, cid: &Cid) -> bool;

    /// The block, hash-checked, or `None`.
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Block>, SpaceError>> + Send;

    /// Stores the blocks as one shard (blocks the Space already holds are skipped); returns the
    /// shard, or `None` when nothing was new. Durable when it returns.
    fn put_shard(
        &self,
        blocks: Vec<Block>,
    ) -> impl Future<Output = Result<Option<ShardInfo>, SpaceError>> + Send;

    /// Makes the shards one backup wrote a unit of the Space named by `root` (in Storacha: the
    /// sharded-DAG index of the shards, `space/index/add`, then `upload/add {root, shards}`).
    /// Called after every shard is durable and before the clock advances; with no shards it
    /// still records the upload when the Space needs it. Idempotent.
    fn commit(
        &self,
        root: &Cid,
        shards: &[ShardInfo],
    ) -> impl Future<Output = Result<(), SpaceError>> + Send;
}

#[derive(Clone, Copy, Debug)]
struct Location {
    shard: usize,
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct Index {
    shards: Vec<PathBuf>,
    blocks: CidMap<Location>,
}

/// A directory standing in for a Storacha Space.
#[derive(Clone, Debug)]
pub struct LocalSpace {
    dir: PathBuf,
    index: Arc<RwLock<Index>>,
}

const INDEX_MAGIC: &[u8; 8] = b"BBSIDX01";

impl LocalSpace {
    /// Opens (creating if needed) the Space in `dir`, sweeping leftovers of interrupted writes.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self, SpaceError> {
        let dir = dir.into();
        blocking(move || Self::open_blocking(dir)).await
    }

    fn open_blocking(dir: PathBuf) -> Result<Self, SpaceError> {
        let shards_dir = dir.join("shards");
        fs::create_dir_all(&shards_dir).map_err(|e| SpaceError::io("create", &shards_dir, e))?;
        let mut index = Index::default();
        let mut names: Vec<PathBuf> = fs::read_dir(&shards_dir)
            .map_err(|e| SpaceError::io("list", &shards_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                // An interrupted write: never renamed, never referenced.
                let _ = fs::remove_file(&path);
                continue;
            }
            if let Some(stem) = name.strip_suffix(".idx") {
                let car_path = shards_dir.join(format!("{stem}.car"));
                if !car_path.exists() {
                    // The index landed but the CAR did not: the shard never happened.
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let shard = index.shards.len();
                for (cid, offset, len) in read_index(&path)? {
                    index
                        .blocks
                        .insert_if_absent(cid, Location { shard, offset, len });
                }
                index.shards.push(car_path);
            }
        }
        Ok(Self {
            dir,
            index: Arc::new(RwLock::new(index)),
        })
    }

    /// The Space's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every block CID held, in no particular order.
    pub fn cids(&self) -> Vec<Cid> {
        self.read().blocks.iter().map(|(cid, _)| cid).collect()
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.read().blocks.len()
    }

    /// True when the Space holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // The index is only mutated by whole-entry inserts: a poisoned lock is still consistent.
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_shard_blocking(&self, blocks: Vec<Block>) -> Result<Option<ShardInfo>, SpaceError> {
        let mut seen = HashSet::new();
        let fresh: Vec<Block> = {
            let index = self.read();
            blocks
                .into_iter()
                .filter(|b| !index.blocks.contains_key(b.cid()) && seen.insert(*b.cid()))
                .collect()
        };
        let Some(first) = fresh.first() else {
            return Ok(None);
        };
        let roots = [*first.cid()];
        // Written straight to a temporary file while hashing, so a shard is in memory once
        // (the blocks), not twice (the blocks and their CAR).
        let shards_dir = self.dir.join("shards");
        let tmp = temp_path(&shards_dir.join("shard.car"))?;
        let (shard_cid, car_len) = write_car(&tmp, &roots, &fresh)?;
        // Offsets of each block's data within the CAR, for reads without a scan.
        let mut offset = car::encoded_header_len(&roots) as u64;
        let mut entries = Vec::with_capacity(fresh.len());
        for b in &fresh {
            let section = car::encoded_section_len(b.cid(), b.bytes().len()) as u64;
            let data_at = offset + section - b.bytes().len() as u64;
            entries.push((*b.cid(), data_at, b.bytes().len() as u32));
            offset += section;
        }
        let car_path = shards_dir.join(format!("{shard_cid}.car"));
        let idx_path = shards_dir.join(format!("{shard_cid}.idx"));
        write_durably(&idx_path, &encode_index(&entries))?;
        fs::rename(&tmp, &car_path).map_err(|e| SpaceError::io("rename", &car_path, e))?;
        sync_dir(&shards_dir)?;
        let mut index = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let shard = index.shards.len();
        index.shards.push(car_path);
        for (cid, offset, len) in entries {
            index
                .blocks
                .insert_if_absent(cid, Location { shard, offset, len });
        }
        Ok(Some(ShardInfo {
            cid: shard_cid,
            blocks: fresh.len(),
            bytes: car_len,
        }))
    }

    fn get_blocking(&self, cid: &Cid) -> Result<Option<Block>, SpaceError> {
        let (path, loc) = {
            let index = self.read();
            let Some(loc) = index.blocks.get(cid) else {
                return Ok(None);
            };
            (index.shards[loc.shard].clone(), loc)
        };
        let mut f = File::open(&path).map_err(|e| SpaceError::io("open", &path, e))?;
        f.seek(SeekFrom::Start(loc.offset))
            .map_err(|e| SpaceError::io("seek", &path, e))?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact(&mut buf)
            .map_err(|e| SpaceError::io("read", &path, e))?;
        Block::new(*cid, buf)
            .map(Some)
            .map_err(|e| SpaceError::Corrupt {
                shard: path.display().to_string(),
                reason: e.to_string(),
            })
    }
}

impl SpaceStore for LocalSpace {
    async fn has(&self, cid: &Cid) -> Result<bool, SpaceError> {
        Ok(self.holds_locally(cid))
    }

    fn holds_locally(&self, cid: &Cid) -> bool {
        self.read().blocks.contains_key(cid)
    }

    async fn get(&self, cid: &Cid) -> Result<Option<Block>, SpaceError> {
        let this = self.clone();
        let cid = *cid;
        blocking(move || this.get_blocking(&cid)).await
    }

    async fn put_shard(&self, blocks: Vec<Block>) -> Result<Option<ShardInfo>, SpaceError> {
        let this = self.clone();
        blocking(move || this.write_shard_blocking(blocks)).await
    }

    /// A directory needs no upload record: every durable shard is already part of the Space.
    async fn commit(&self, _root: &Cid, _shards: &[ShardInfo]) -> Result<(), SpaceError> {
        Ok(())
    }
}

/// Packs blocks into shards of at most `shard_size` bytes as they arrive, so memory holds one
/// shard, not the whole backup.
#[derive(Debug)]
pub struct ShardWriter<'a, S> {
    space: &'a S,
    shard_size: usize,
    pending: Vec<Block>,
    pending_bytes: usize,
    written: Vec<ShardInfo>,
}

impl<'a, S: SpaceStore> ShardWriter<'a, S> {
    /// A writer into `space` with shards of at most `shard_size` bytes (a single block larger
    /// than that gets a shard of its own).
    pub fn new(space: &'a S, shard_size: usize) -> Self {
        Self {
            space,
            shard_size,
            pending: Vec::new(),
            pending_bytes: 0,
            written: Vec::new(),
        }
    }

    /// Adds a block, writing a shard when the pending ones fill one.
    pub async fn add(&mut self, block: Block) -> Result<(), SpaceError> {
        let size = car::encoded_section_len(block.cid(), block.bytes().len());
        if !self.pending.is_empty() && self.pending_bytes + size > self.shard_size {
            self.flush().await?;
        }
        self.pending_bytes += size;
        self.pending.push(block);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SpaceError> {
        let blocks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        if let Some(info) = self.space.put_shard(blocks).await? {
            self.written.push(info);
        }
        Ok(())
    }

    /// Writes what is pending; returns every shard written. Durable when it returns.
    pub async fn finish(mut self) -> Result<Vec<ShardInfo>, SpaceError> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        Ok(self.written)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpaceError> + Send + 'static,
) -> Result<T, SpaceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpaceError::Task(e.to_string()))?
}

/// A temporary name beside `path`, of its own: two writers of the same shard (identical bytes,
/// racing backups) must not share a temporary file; whichever rename lands last leaves the same
/// content. Swept on open (`*.tmp`).
fn temp_path(path: &Path) -> Result<PathBuf, SpaceError> {
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).map_err(|e| SpaceError::Task(e.to_string()))?;
    Ok(path.with_extension(format!(
        "{}.{:016x}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        u64::from_le_bytes(salt)
    )))
}

/// Writes a CAR of `blocks` to `path`, synced; returns its CID (codec CAR, sha2-256 of the
/// bytes) and length.
fn write_car(path: &Path, roots: &[Cid], blocks: &[Block]) -> Result<(Cid, u64), SpaceError> {
    struct Hashing<W> {
        inner: W,
        hasher: Sha256,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let io = |e| SpaceError::io("write", path, e);
    let file = File::create(path).map_err(|e| SpaceError::io("create", path, e))?;
    let out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let mut car = car::CarWriter::new(out, roots).map_err(io)?;
    for b in blocks {
        car.write_block(b).map_err(io)?;
    }
    let len = car.bytes_written();
    let mut out = car.finish().map_err(io)?;
    out.flush().map_err(io)?;
    let digest: [u8; 32] = out.hasher.finalize().into();
    let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all()
        .map_err(|e| SpaceError::io("sync", path, e))?;
    Ok((crate::cid_map::sha256_cid(CAR, &digest), len))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SpaceError> {
    let tmp = temp_path(path)?;
    let mut f = File::create(&tmp).map_err(|e| SpaceError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| SpaceError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| SpaceError::io("sync", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| SpaceError::io("rename", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), SpaceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpaceError::io("sync", dir, e))
}

fn encode_index(entries: &[(Cid, u64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 50);
    out.extend_from_slice(INDEX_MAGIC);
    for (cid, offset, len) in entries {
        let cid_bytes = cid.to_bytes();
        out.push(cid_bytes.len() as u8);
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

fn read_index(path: &Path) -> Result<Vec<(Cid, u64, u32)>, SpaceError> {
    let bytes = fs::read(path).map_err(|e| SpaceError::io("read", path, e))?;
    let corrupt = |reason: &str| SpaceError::Corrupt {
        shard: path.display().to_string(),
        reason: reason.to_string(),
    };
    let mut rest = bytes
        .strip_prefix(INDEX_MAGIC.as_slice())
        .ok_or_else(|| corrupt("not a shard index"))?;
    let mut out = Vec::new();
    while let Some((&n, tail)) = rest.split_first() {
        let n = n as usize;
        if tail.len() < n + 12 {
            return Err(corrupt("truncated index"));
        }
        let cid = ipld::cid_from_bytes(&tail[..n]).map_err(|e| corrupt(&e.to_string()))?;
        let offset = u64::from_le_bytes(tail[n..n + 8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(tail[n + 8..n + 12].try_into().expect("4 bytes"));
        out.push((cid, offset, len));
        rest = &tail[n + 12..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(n: u32) -> Block {
        Block::from_codec(ipld::RAW, n.to_le_bytes().repeat(50))
    }

    #[tokio::test]
    async fn blocks_survive_a_reopen_and_repeats_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let space = LocalSpace::open(dir.path()).await.unwrap();
        let info = space
            .put_shard((0..10).map(raw).collect())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.blocks, 10);
        assert!(
            space
                .put_shard((0..10).map(raw).collect())
                .await
                .unwrap()
                .is_none()
        );
        let again = LocalSpace::open(dir.path()).await.unwrap();
        assert_eq!(again.len(), 10);
        for n in 0..10 {
            let b = raw(n);
            assert!(again.has(b.cid()).await.unwrap());
            assert_eq!(again.get(b.cid()).await.unwrap().unwrap(), b);
        }
        assert!(again.get(raw(99).cid()).await.unwrap().is_none());
        // The shard file is a CAR named by its own hash.
        let bytes = fs::read(dir.path().join(format!("shards/{}.car", info.cid))).unwrap();
        assert_eq!(ipld::cid_sha256(CAR, &bytes), info.cid);
        let (_, blocks) = car::decode_car(&bytes, &car::CarLimits::default()).unwrap();
        assert_eq!(blocks.len(), 10);
    }

    #[tokio::test]
    async fn interrupted_writes_leave_nothing_that_counts() {
        let dir = tempfile::tempdir().unwrap();
        let space = LocalSpace::open(dir.path()).await.unwrap();
        space.put_shard(vec![raw(1)]).await.unwrap().unwrap();
        let shards = dir.path().join("shards");
        // A crash after the index was renamed but before the CAR was.
        fs::write(
            shards.join("bagbaieraorphan.idx"),
            encode_index(&[(*raw(2).cid(), 0, 4)]),
        )
        .unwrap();
        // A crash mid-write.
        fs::write(shards.join("bagbaierahalf.car.tmp"), b"partial").unwrap();
        let again = LocalSpace::open(dir.path()).await.unwrap();
        assert_eq!(again.len(), 1);
        assert!(!again.has(raw(2).cid()).await.unwrap());
        assert!(!shards.join("bagbaieraorphan.idx").exists());
        assert!(!shards.join("bagbaierahalf.car.tmp").exists());
    }

    #[tokio::test]
    async fn corrupted_shards_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let space = LocalSpace::open(dir.path()).await.unwrap();
        let info = space.put_shard(vec![raw(7)]).await.unwrap().unwrap();
        let car_path = dir.path().join(format!("shards/{}.car", info.cid));
        let mut bytes = fs::read(&car_path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&car_path, bytes).unwrap();
        assert!(matches!(
            space.get(raw(7).cid()).await,
            Err(SpaceError::Corrupt { .. })
        ));
        fs::write(dir.path().join(format!("shards/{}.idx", info.cid)), b"junk").unwrap();
        assert!(matches!(
            LocalSpace::open(dir.path()).await,
            Err(SpaceError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn writer_bounds_shards_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let space = LocalSpace::open(dir.path()).await.unwrap();
        let mut w = ShardWriter::new(&space, 1000);
        for n in 0..20 {
            w.add(raw(n)).await.unwrap();
        }
        let shards = w.finish().await.unwrap();
        assert!(shards.len() > 1);
        assert!(shards.iter().all(|s| s.bytes <= 1000 + 300));
        assert_eq!(shards.iter().map(|s| s.blocks).sum::<usize>(), 20);
        assert_eq!(space.len(), 20);
    }
}
