//! CAR shards: blocks packed into one CARv1 blob, with the position of each block's data in it
//! (what the sharded-DAG index records). The shard's name is Storacha's: a CID with codec CAR
//! over the sha2-256 of the CAR bytes.

use bytes::Bytes;
use cid::Cid;
use proto::blob_index::{Position, ShardedDagIndex};
use proto::ipld::CAR;
use proto::{Block, car};

use crate::blob::Blob;

/// Default shard size: the Storacha client's (`SHARD_SIZE`, 127 MiB).
pub const DEFAULT_SHARD_SIZE: usize = 133_169_152;

/// One encoded shard.
#[derive(Clone, Debug)]
pub struct CarShard {
    blob: Blob,
    cid: Cid,
    slices: Vec<(Vec<u8>, Position)>,
}

impl CarShard {
    /// Encodes `blocks` (in order; the caller removes duplicates) as a CAR rooted at `root`
    /// (the first block when `None`) and hashes it. CPU-bound.
    pub fn encode(blocks: &[Block], root: Option<Cid>) -> Self {
        let Some(first) = blocks.first() else {
            return ShardBuilder::new(root, 0).finish();
        };
        let roots = [root.unwrap_or(*first.cid())];
        let len = car::encoded_car_len(&roots, blocks.iter());
        let mut builder = ShardBuilder::new(Some(roots[0]), len);
        for b in blocks {
            builder.push(b);
        }
        builder.finish()
    }

    /// The shard as a blob to store.
    pub fn blob(&self) -> &Blob {
        &self.blob
    }

    /// The shard's CID (codec CAR).
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The CAR's size in bytes.
    pub fn size(&self) -> u64 {
        self.blob.size()
    }

    /// Each block's multihash and the position of its data in the CAR.
    pub fn slices(&self) -> &[(Vec<u8>, Position)] {
        &self.slices
    }

    /// The CAR's buffer back, for the next [`ShardBuilder::with_buffer`], when nothing else
    /// holds the bytes any more (the upload is done).
    pub fn into_buffer(self) -> Option<Vec<u8>> {
        self.blob.into_bytes().try_into_mut().ok().map(Vec::from)
    }

    /// The shard's entry for a sharded-DAG index, without the bytes.
    pub fn summary(&self) -> ShardSummary {
        ShardSummary {
            cid: self.cid,
            size: self.size(),
            slices: self.slices.clone(),
        }
    }
}

/// Builds a shard as blocks arrive, copying each into the CAR at once, so a caller that drops
/// its blocks after [`Self::push`] holds one shard's bytes, not two.
#[derive(Debug)]
pub struct ShardBuilder {
    root: Option<Cid>,
    buffer: Vec<u8>,
    car: Option<car::CarWriter<Vec<u8>>>,
    slices: Vec<(Vec<u8>, Position)>,
}

impl ShardBuilder {
    /// A shard rooted at `root` (the first block pushed when `None`), with room reserved for
    /// `capacity` bytes.
    pub fn new(root: Option<Cid>, capacity: usize) -> Self {
        Self::with_buffer(root, Vec::with_capacity(capacity))
    }

    /// A shard written into `buffer` (cleared first): pass the buffer of a shard already
    /// stored ([`CarShard::into_buffer`]) to spare the allocator and the page faults of a
    /// fresh one.
    pub fn with_buffer(root: Option<Cid>, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        Self {
            root,
            buffer,
            car: None,
            slices: Vec::new(),
        }
    }

    /// The CAR's size so far.
    pub fn len(&self) -> u64 {
        self.car.as_ref().map_or(0, |c| c.bytes_written())
    }

    /// True before the first block.
    pub fn is_empty(&self) -> bool {
        self.car.is_none()
    }

    /// The CAR's size after adding `block`.
    pub fn len_with(&self, block: &Block) -> u64 {
        let header = if self.car.is_none() {
            car::encoded_header_len(&[self.root.unwrap_or(*block.cid())]) as u64
        } else {
            0
        };
        self.len() + header + car::encoded_section_len(block.cid(), block.bytes().len()) as u64
    }

    /// Appends `block`.
    pub fn push(&mut self, block: &Block) {
        let car = match &mut self.car {
            Some(car) => car,
            None => {
                let root = self.root.unwrap_or(*block.cid());
                let buffer = std::mem::take(&mut self.buffer);
                self.car.insert(
                    car::CarWriter::new(buffer, &[root]).expect("writing to a Vec cannot fail"),
                )
            }
        };
        let section = car::encoded_section_len(block.cid(), block.bytes().len()) as u64;
        let len = block.bytes().len() as u64;
        let at = car.bytes_written() + section - len;
        car.write_block(block)
            .expect("writing to a Vec cannot fail");
        self.slices.push((block.cid().hash().to_bytes(), (at, len)));
    }

    /// Hashes the CAR (CPU-bound) and names the shard.
    pub fn finish(self) -> CarShard {
        let bytes = match self.car {
            Some(car) => car.finish().expect("writing to a Vec cannot fail"),
            None => car::encode_car(&self.root.into_iter().collect::<Vec<_>>(), []),
        };
        let blob = Blob::new(Bytes::from(bytes));
        let cid = Cid::new_v1(
            CAR,
            cid::multihash::Multihash::from_bytes(blob.digest()).expect("a sha2-256 multihash"),
        );
        CarShard {
            blob,
            cid,
            slices: self.slices,
        }
    }
}

/// What an index needs to know about a stored shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSummary {
    /// The shard's CID (codec CAR).
    pub cid: Cid,
    /// The CAR's size.
    pub size: u64,
    /// Each block's multihash and position.
    pub slices: Vec<(Vec<u8>, Position)>,
}

/// The sharded-DAG index of the DAG `root` held in `shards`; each shard also lists itself as
/// the slice `[0, size]`, as the Storacha client does.
pub fn index_of(root: Cid, shards: &[ShardSummary]) -> ShardedDagIndex {
    let mut index = ShardedDagIndex::new(root);
    for shard in shards {
        let mh = shard.cid.hash().to_bytes();
        for (slice, position) in &shard.slices {
            index.set_slice(&mh, slice, *position);
        }
        index.set_slice(&mh, &mh, (0, shard.size));
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::car::CarLimits;
    use proto::ipld::RAW;

    #[test]
    fn slices_point_at_block_data() {
        let blocks: Vec<Block> = (0..20u8)
            .map(|n| Block::from_codec(RAW, vec![n; 100 + n as usize]))
            .collect();
        let shard = CarShard::encode(&blocks, None);
        let bytes = shard.blob().bytes();
        for (block, (mh, (offset, len))) in blocks.iter().zip(shard.slices()) {
            assert_eq!(mh, &block.cid().hash().to_bytes());
            assert_eq!(
                &bytes[*offset as usize..(*offset + *len) as usize],
                &block.bytes()[..]
            );
        }
        let (roots, back) = car::decode_car(bytes, &CarLimits::default()).unwrap();
        assert_eq!(roots, vec![*blocks[0].cid()]);
        assert_eq!(back, blocks);
        assert_eq!(shard.cid().codec(), CAR);
        let index = index_of(*blocks[0].cid(), &[shard.summary()]);
        let slices = &index.shards[&shard.cid().hash().to_bytes()];
        assert_eq!(slices.len(), 21);
        assert_eq!(slices[&shard.cid().hash().to_bytes()], (0, shard.size()));

        // The buffer comes back for the next shard, which encodes the same as a fresh one.
        let buffer = shard.clone().into_buffer();
        assert!(buffer.is_none(), "a clone still holds the bytes");
        let size = shard.size();
        let buffer = shard.into_buffer().expect("the only holder");
        assert!(buffer.capacity() >= size as usize);
        let mut again = ShardBuilder::with_buffer(None, buffer);
        for b in &blocks {
            again.push(b);
        }
        assert_eq!(again.finish().cid(), CarShard::encode(&blocks, None).cid());
    }
}
