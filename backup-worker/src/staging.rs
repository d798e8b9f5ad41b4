//! A backup's blocks on their way in: a spool file on local disk, indexed in memory.
//!
//! A backup downloads, verifies and only then stores. Everything it fetches (repo blocks, the
//! UnixFS blocks of blobs, preferences) and everything it makes (pail shards, Backup, Root,
//! clock event) is appended here first; when every check has passed, the blocks are copied into
//! the Space in the order they arrived. A backup that fails therefore leaves the Space exactly as
//! it was, and a repo of any size costs memory only for the index (CID → offset and length,
//! about 80 bytes a block), never for the blocks themselves.
//!
//! The spool file is removed when the [`Staging`] is dropped, and stale ones left by a killed
//! process are swept by [`Staging::sweep`].

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cid::Cid;
use proto::Block;
use proto::clock::{BlockGetter, StoreError};

use crate::cid_map::{DigestIndex, sha256_cid, sha256_digest};
use crate::space::SpaceError;

/// Suffix of spool files.
const SPOOL_SUFFIX: &str = ".spool";

#[derive(Clone, Copy, Debug)]
struct Entry {
    offset: u64,
    len: u32,
    /// Position in `order`.
    pos: u32,
    codec: u64,
}

/// The blocks of one backup in progress. Synchronous: use it from blocking threads.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    writer: BufWriter<File>,
    reader: File,
    /// Bytes appended so far (the next block's offset).
    end: u64,
    /// Bytes appended that may still sit in the write buffer.
    unflushed: bool,
    /// By sha2-256 digest (see [`crate::cid_map`]): every block staged is a CIDv1 sha2-256 one.
    index: DigestIndex<Entry>,
    order: Vec<[u8; 32]>,
}

impl Staging {
    /// A new, empty spool file in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<Self, SpaceError> {
        fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let mut name = [0u8; 12];
        getrandom::fill(&mut name).map_err(|e| SpaceError::Task(e.to_string()))?;
        let name: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{name}{SPOOL_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        let reader = file.try_clone().map_err(|e| io("open", &path, e))?;
        Ok(Self {
            path,
            writer: BufWriter::with_capacity(1 << 20, file),
            reader,
            end: 0,
            unflushed: false,
            index: DigestIndex::default(),
            order: Vec::new(),
        })
    }

    /// Removes spool files a killed process left in `dir`.
    pub fn sweep(dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(SPOOL_SUFFIX))
            {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Appends a block (already hash-checked: [`Block`] guarantees it). A block already staged
    /// is not written twice. Returns whether it was new here. Only CIDv1 sha2-256 blocks are
    /// staged (all that ATProto and our DAGs use); others are refused.
    pub fn put(&mut self, block: &Block) -> Result<bool, SpaceError> {
        let Some(digest) = sha256_digest(block.cid()) else {
            return Err(SpaceError::Corrupt {
                shard: self.path.display().to_string(),
                reason: format!("block {} is not a CIDv1 sha2-256 block", block.cid()),
            });
        };
        if self.index.contains_key(&digest) {
            return Ok(false);
        }
        let len = u32::try_from(block.bytes().len()).map_err(|_| SpaceError::Corrupt {
            shard: self.path.display().to_string(),
            reason: format!("block {} is larger than 4 GiB", block.cid()),
        })?;
        self.writer
            .write_all(block.bytes())
            .map_err(|e| io("write", &self.path, e))?;
        let pos = u32::try_from(self.order.len()).map_err(|_| SpaceError::Corrupt {
            shard: self.path.display().to_string(),
            reason: "more than 4 billion blocks staged".into(),
        })?;
        self.index.insert_if_absent(
            digest,
            Entry {
                offset: self.end,
                len,
                pos,
                codec: block.cid().codec(),
            },
        );
        self.order.push(digest);
        self.end += u64::from(len);
        self.unflushed = true;
        Ok(true)
    }

    /// Forgets every staged block `keep` refuses (its bytes stay in the spool file, unread).
    /// A `getRepo?since` download carries the blocks of every intermediate commit too; only
    /// those the new commit reaches are worth storing.
    pub fn retain(&mut self, mut keep: impl FnMut(&Cid) -> bool) {
        let kept: Vec<bool> = (0..self.order.len())
            .map(|i| self.cid_at(i).is_some_and(|cid| keep(&cid)))
            .collect();
        self.retain_positions(&kept);
    }

    /// Keeps the blocks whose position (in arrival order, see [`Staging::position`]) is `true`
    /// in `keep` (positions past its end are dropped); a bit a block instead of a set of CIDs.
    pub fn retain_positions(&mut self, keep: &[bool]) {
        self.index
            .retain(|_, entry| keep.get(entry.pos as usize).copied().unwrap_or(false));
        let mut i = 0usize;
        self.order.retain(|_| {
            let kept = keep.get(i).copied().unwrap_or(false);
            i += 1;
            kept
        });
        for (pos, digest) in self.order.iter().enumerate() {
            if let Some(entry) = self.index.get_mut(digest) {
                entry.pos = pos as u32;
            }
        }
    }

    /// The block's position in arrival order, if staged.
    pub fn position(&self, cid: &Cid) -> Option<usize> {
        sha256_digest(cid).and_then(|d| self.index.get(&d).map(|e| e.pos as usize))
    }

    /// Whether the block is staged.
    pub fn contains(&self, cid: &Cid) -> bool {
        sha256_digest(cid).is_some_and(|d| self.index.contains_key(&d))
    }

    /// Blocks staged.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes staged (block data only).
    pub fn bytes(&self) -> u64 {
        self.end
    }

    /// The `i`th staged CID, in the order they arrived.
    pub fn cid_at(&self, i: usize) -> Option<Cid> {
        let digest = self.order.get(i)?;
        Some(sha256_cid(self.index.get(digest)?.codec, digest))
    }

    /// The staged CIDs from position `start` on, at most `max_blocks` of them and no more than
    /// `max_bytes` of block data (but at least one): a batch to copy out without holding much
    /// in memory. Empty past the end.
    pub fn batch(&self, start: usize, max_blocks: usize, max_bytes: u64) -> Vec<Cid> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for digest in self.order.iter().skip(start).take(max_blocks) {
            let Some(entry) = self.index.get(digest) else {
                break;
            };
            if !out.is_empty() && bytes + u64::from(entry.len) > max_bytes {
                break;
            }
            bytes += u64::from(entry.len);
            out.push(sha256_cid(entry.codec, digest));
        }
        out
    }

    /// Staged CIDs in the order they arrived (for small stagings and tests; large ones page
    /// with [`Staging::batch`]).
    pub fn cids(&self) -> Vec<Cid> {
        (0..self.order.len())
            .filter_map(|i| self.cid_at(i))
            .collect()
    }

    /// Makes every appended block readable.
    pub fn flush(&mut self) -> Result<(), SpaceError> {
        if self.unflushed {
            self.writer
                .flush()
                .map_err(|e| io("write", &self.path, e))?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// A staged block, read back and hash-checked (after [`Staging::flush`]).
    pub fn get(&self, cid: &Cid) -> Result<Option<Block>, SpaceError> {
        let Some(entry) = sha256_digest(cid).and_then(|d| self.index.get(&d)) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; entry.len as usize];
        self.reader
            .read_exact_at(&mut buf, entry.offset)
            .map_err(|e| io("read", &self.path, e))?;
        Block::new(*cid, buf)
            .map(Some)
            .map_err(|e| SpaceError::Corrupt {
                shard: self.path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// A read-only view for [`BlockGetter`] users (flushes first).
    pub fn getter(&mut self) -> Result<StagingGetter<'_>, SpaceError> {
        self.flush()?;
        Ok(StagingGetter(self))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// [`Staging`] as a [`BlockGetter`].
#[derive(Debug)]
pub struct StagingGetter<'a>(&'a Staging);

impl BlockGetter for StagingGetter<'_> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        self.0.get(cid).map_err(StoreError::new)
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> SpaceError {
    SpaceError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ipld::RAW;

    #[test]
    fn stages_reads_back_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut staging = Staging::create(dir.path()).unwrap();
        let a = Block::from_codec(RAW, b"alpha".to_vec());
        let b = Block::from_codec(RAW, vec![7u8; 100_000]);
        assert!(staging.put(&a).unwrap());
        assert!(staging.put(&b).unwrap());
        assert!(!staging.put(&a).unwrap(), "a block is staged once");
        assert_eq!(staging.len(), 2);
        assert_eq!(staging.bytes(), 100_005);
        assert_eq!(staging.cids(), vec![*a.cid(), *b.cid()]);
        assert_eq!(staging.batch(0, 10, 1), vec![*a.cid()], "at least one");
        assert_eq!(staging.batch(0, 10, 100_005), vec![*a.cid(), *b.cid()]);
        assert_eq!(staging.batch(0, 1, u64::MAX), vec![*a.cid()]);
        assert_eq!(staging.batch(1, 10, 10), vec![*b.cid()]);
        assert!(staging.batch(2, 10, 10).is_empty());
        staging.flush().unwrap();
        assert_eq!(staging.get(b.cid()).unwrap().unwrap(), b);
        let c = Block::from_codec(RAW, b"gamma".to_vec());
        staging.put(&c).unwrap();
        staging.retain(|cid| cid != a.cid());
        assert_eq!(staging.cids(), vec![*b.cid(), *c.cid()]);
        assert!(!staging.contains(a.cid()));
        staging.flush().unwrap();
        assert_eq!(staging.get(c.cid()).unwrap().unwrap(), c);
        staging.retain(|cid| cid != c.cid());
        assert_eq!(staging.cids(), vec![*b.cid()]);
        let missing = Block::from_codec(RAW, b"other".to_vec());
        assert!(staging.get(missing.cid()).unwrap().is_none());
        let path = staging.path.clone();
        assert!(path.exists());
        drop(staging);
        assert!(!path.exists(), "the spool file is removed on drop");
    }

    #[test]
    fn sweep_removes_only_spool_files() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::create(dir.path()).unwrap();
        let path = staging.path.clone();
        std::mem::forget(staging);
        fs::write(dir.path().join("keep.txt"), b"x").unwrap();
        Staging::sweep(dir.path());
        assert!(!path.exists());
        assert!(dir.path().join("keep.txt").exists());
    }
}
