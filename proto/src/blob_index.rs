//! The sharded-DAG index (`index/sharded/dag@0.1`, `@storacha/blob-index`): which CAR shards
//! hold a DAG, and where each block sits inside each shard. The Storacha client stores it as a
//! blob and registers it with `space/index/add`; the indexing service and gateways use it to find
//! any block of an upload.
//!
//! The archive is a CARv1 whose root (written first) is DAG-CBOR
//! `{"index/sharded/dag@0.1": {content: <DAG root>, shards: [<blob index CID>…]}}`, followed by
//! one DAG-CBOR block per shard, `[<shard multihash>, [[<slice multihash>, [offset, length]]…]]`.
//! Shards and slices are sorted by their digest bytes (as `@storacha/blob-index` sorts them), so
//! equal indexes archive to equal bytes. A shard lists itself as the slice `[0, <CAR size>]`, as
//! the Storacha client does. Offsets are those of a block's data (after its CID) in the CAR.

use std::collections::{BTreeMap, HashMap};

use cid::Cid;

use crate::car::{self, CarLimits};
use crate::ipld::{Block, DAG_CBOR, Ipld, IpldError};

/// The index format's variant tag.
pub const VERSION: &str = "index/sharded/dag@0.1";

/// Why an index archive could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobIndexError {
    /// The archive is not a valid CAR.
    #[error("index archive: {0}")]
    Car(#[from] car::CarError),
    /// The archive's structure is not an `index/sharded/dag@0.1` index.
    #[error("index archive: {0}")]
    Format(String),
    /// A block could not be encoded or decoded.
    #[error(transparent)]
    Ipld(#[from] IpldError),
}

/// Where a block (or a whole shard) sits: byte offset and length within the shard.
pub type Position = (u64, u64);

/// One shard's slices: slice multihash → position.
pub type Slices = HashMap<Vec<u8>, Position>;

/// A sharded-DAG index: the DAG root and, per shard multihash, the position of every slice
/// (block) by its multihash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardedDagIndex {
    /// The DAG root the index describes.
    pub content: Option<Cid>,
    /// Shard multihash → (slice multihash → position).
    pub shards: HashMap<Vec<u8>, Slices>,
}

impl ShardedDagIndex {
    /// An empty index of the DAG rooted at `content`.
    pub fn new(content: Cid) -> Self {
        Self {
            content: Some(content),
            shards: HashMap::new(),
        }
    }

    /// Records that `slice` (a multihash) is at `position` in `shard` (a multihash).
    pub fn set_slice(&mut self, shard: &[u8], slice: &[u8], position: Position) {
        self.shards
            .entry(shard.to_vec())
            .or_default()
            .insert(slice.to_vec(), position);
    }

    /// The index as a CAR archive, byte-identical to `ShardedDAGIndex.archive()`.
    pub fn archive(&self) -> Result<Vec<u8>, BlobIndexError> {
        let content = self
            .content
            .ok_or_else(|| BlobIndexError::Format("the index has no content root".into()))?;
        let mut shards: Vec<(&Vec<u8>, &Slices)> = self.shards.iter().collect();
        shards.sort_by(|a, b| digest_of(a.0).cmp(digest_of(b.0)));
        let mut blocks = Vec::with_capacity(shards.len() + 1);
        let mut links = Vec::with_capacity(shards.len());
        for (shard, slices) in shards {
            let mut slices: Vec<(&Vec<u8>, &Position)> = slices.iter().collect();
            slices.sort_by(|a, b| digest_of(a.0).cmp(digest_of(b.0)));
            let entries = slices
                .into_iter()
                .map(|(mh, (offset, length))| {
                    Ipld::List(vec![
                        Ipld::Bytes(mh.clone()),
                        Ipld::List(vec![
                            Ipld::Integer((*offset).into()),
                            Ipld::Integer((*length).into()),
                        ]),
                    ])
                })
                .collect();
            let block = Block::encode(&Ipld::List(vec![
                Ipld::Bytes(shard.clone()),
                Ipld::List(entries),
            ]))?;
            links.push(Ipld::Link(*block.cid()));
            blocks.push(block);
        }
        let mut body = BTreeMap::new();
        body.insert("content".to_string(), Ipld::Link(content));
        body.insert("shards".to_string(), Ipld::List(links));
        let mut root = BTreeMap::new();
        root.insert(VERSION.to_string(), Ipld::Map(body));
        let root = Block::encode(&Ipld::Map(root))?;
        let ordered: Vec<&Block> = std::iter::once(&root).chain(blocks.iter()).collect();
        Ok(car::encode_car(&[*root.cid()], ordered))
    }

    /// Reads an archive made by [`Self::archive`] or `@storacha/blob-index`.
    pub fn extract(bytes: &[u8]) -> Result<Self, BlobIndexError> {
        let format = |why: &str| BlobIndexError::Format(why.to_string());
        let (roots, blocks) = car::decode_car(bytes, &CarLimits::default())?;
        let root = *roots.first().ok_or_else(|| format("missing root block"))?;
        if root.codec() != DAG_CBOR {
            return Err(format("unexpected root CID codec"));
        }
        let blocks: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
        let root_block = blocks
            .get(&root)
            .ok_or_else(|| format("missing root block"))?;
        let Ipld::Map(mut variant) = root_block.decode::<Ipld>()? else {
            return Err(format("root is not a map"));
        };
        let Some(Ipld::Map(body)) = variant.remove(VERSION) else {
            return Err(format("unknown index version"));
        };
        let Some(Ipld::Link(content)) = body.get("content") else {
            return Err(format("content must be a link"));
        };
        let Some(Ipld::List(shard_links)) = body.get("shards") else {
            return Err(format("shards must be a list"));
        };
        let mut index = Self::new(*content);
        for link in shard_links {
            let Ipld::Link(cid) = link else {
                return Err(format("shards must be links"));
            };
            let block = blocks
                .get(cid)
                .ok_or_else(|| BlobIndexError::Format(format!("missing shard block: {cid}")))?;
            let Ipld::List(parts) = block.decode::<Ipld>()? else {
                return Err(format("a blob index must be [multihash, slices]"));
            };
            let [Ipld::Bytes(shard), Ipld::List(slices)] = &parts[..] else {
                return Err(format("a blob index must be [multihash, slices]"));
            };
            let entry = index.shards.entry(shard.clone()).or_default();
            for slice in slices {
                let Ipld::List(pair) = slice else {
                    return Err(format("a slice must be [multihash, [offset, length]]"));
                };
                let [Ipld::Bytes(mh), Ipld::List(pos)] = &pair[..] else {
                    return Err(format("a slice must be [multihash, [offset, length]]"));
                };
                let [Ipld::Integer(offset), Ipld::Integer(length)] = &pos[..] else {
                    return Err(format("a position must be [offset, length]"));
                };
                let natural = |n: &i128| u64::try_from(*n).map_err(|_| format("negative position"));
                entry.insert(mh.clone(), (natural(offset)?, natural(length)?));
            }
        }
        Ok(index)
    }
}

/// The digest part of a multihash (after its code and length varints); the whole input when it
/// does not parse, so sorting stays total.
fn digest_of(multihash: &[u8]) -> &[u8] {
    use unsigned_varint::decode::u64 as read;
    read(multihash)
        .and_then(|(_, rest)| read(rest))
        .map(|(_, rest)| rest)
        .unwrap_or(multihash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipld::{CAR, RAW, cid_sha256};

    #[test]
    fn archive_round_trips_and_sorts() {
        let root = cid_sha256(DAG_CBOR, b"root");
        let shard_a = cid_sha256(CAR, b"shard a");
        let shard_b = cid_sha256(CAR, b"shard b");
        let mut index = ShardedDagIndex::new(root);
        for (i, shard) in [shard_b, shard_a].iter().enumerate() {
            for n in 0..5u64 {
                let block = cid_sha256(RAW, &[i as u8, n as u8]);
                index.set_slice(
                    &shard.hash().to_bytes(),
                    &block.hash().to_bytes(),
                    (n * 10, 7),
                );
            }
            index.set_slice(&shard.hash().to_bytes(), &shard.hash().to_bytes(), (0, 99));
        }
        let bytes = index.archive().unwrap();
        assert_eq!(ShardedDagIndex::extract(&bytes).unwrap(), index);
        // Insertion order does not change the bytes.
        let mut again = ShardedDagIndex::new(root);
        let mut entries: Vec<_> = index.shards.iter().collect();
        entries.reverse();
        for (shard, slices) in entries {
            for (slice, pos) in slices {
                again.set_slice(shard, slice, *pos);
            }
        }
        assert_eq!(again.archive().unwrap(), bytes);
        // The root comes first, then the shard blocks in digest order.
        let (roots, blocks) = car::decode_car(&bytes, &CarLimits::default()).unwrap();
        assert_eq!(blocks[0].cid(), &roots[0]);
        assert_eq!(blocks.len(), 3);
    }

    #[test]
    fn foreign_archives_are_refused() {
        let block = Block::encode(&Ipld::Map(BTreeMap::new())).unwrap();
        let bytes = car::encode_car(&[*block.cid()], [&block]);
        assert!(matches!(
            ShardedDagIndex::extract(&bytes),
            Err(BlobIndexError::Format(_))
        ));
        assert!(ShardedDagIndex::extract(b"junk").is_err());
        assert!(ShardedDagIndex::default().archive().is_err());
    }
}
