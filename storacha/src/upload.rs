//! Making stored shards an upload: the sharded-DAG index stored as a blob and registered with
//! `space/index/add {index}` (only `index`: adding `content` needs a retrieval authorization),
//! then `upload/add {root, shards}`. The order matters: the service reads the index through its
//! location claim and checks that every shard in it is in the Space.

use cid::Cid;
use proto::capability::{SpaceIndexAdd, UploadAdd};
use proto::ipld::CAR;

use crate::blob::{Blob, StoredBlob};
use crate::client::Client;
use crate::error::Error;
use crate::shard::{ShardSummary, index_of};

/// What registering an upload stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The DAG root.
    pub root: Cid,
    /// The shards, in order.
    pub shards: Vec<Cid>,
    /// The index blob's CID (codec CAR).
    pub index: Cid,
    /// The index blob as stored.
    pub index_blob: StoredBlob,
}

impl Client {
    /// `space/index/add {index}`.
    pub async fn add_index(&self, index: Cid) -> Result<(), Error> {
        let cap = SpaceIndexAdd {
            with: self.space().to_string(),
            index,
            content: None,
        };
        self.invoke(cap.to_capability()).await.map(drop)
    }

    /// `upload/add {root, shards}`.
    pub async fn add_upload(&self, root: Cid, shards: &[Cid]) -> Result<(), Error> {
        let cap = UploadAdd {
            with: self.space().to_string(),
            root,
            shards: Some(shards.to_vec()),
        };
        self.invoke(cap.to_capability()).await.map(drop)
    }

    /// Indexes `shards` (already stored with [`Client::add_blob`]) as the DAG `root`, stores the
    /// index, registers it, and adds the upload. Idempotent: the same shards give the same
    /// index bytes, which the service already has.
    pub async fn register_upload(
        &self,
        root: Cid,
        shards: &[ShardSummary],
    ) -> Result<Upload, Error> {
        let archive = index_of(root, shards).archive().map_err(|e| Error::Build {
            what: "sharded-DAG index",
            reason: e.to_string(),
        })?;
        let blob = Blob::new(archive);
        let index = Cid::new_v1(
            CAR,
            cid::multihash::Multihash::from_bytes(blob.digest()).expect("a sha2-256 multihash"),
        );
        let index_blob = self.add_blob(&blob).await?;
        self.add_index(index).await?;
        let shard_cids: Vec<Cid> = shards.iter().map(|s| s.cid).collect();
        self.add_upload(root, &shard_cids).await?;
        Ok(Upload {
            root,
            shards: shard_cids,
            index,
            index_blob,
        })
    }
}
