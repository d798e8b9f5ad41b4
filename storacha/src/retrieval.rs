//! Reading blocks back, every byte checked against its CID:
//!
//! - from a blob's location URL (the `assert/location` commitment of `blob/accept`) at a known
//!   position: a `Range` request, answered 206 with the slice or 200 with the whole blob (the
//!   local storage nodes ignore ranges);
//! - through the gateway, `GET <gateway>/ipfs/<cid>?format=raw` (a trustless gateway's raw
//!   block), which finds any block of an indexed upload.

use cid::Cid;
use proto::Block;
use proto::blob_index::Position;

use crate::client::Client;
use crate::error::Error;
use crate::transport::Fetched;

/// The media type of a raw block from a trustless gateway.
const RAW_BLOCK: &str = "application/vnd.ipld.raw";

impl Client {
    /// The block `cid` through the gateway, or `None` when the gateway does not know it.
    pub async fn fetch_block(&self, cid: &Cid) -> Result<Option<Block>, Error> {
        let url = format!(
            "{}/ipfs/{cid}?format=raw",
            self.config.gateway_url.trim_end_matches('/')
        );
        match self
            .transport
            .get(&url, &[("accept", RAW_BLOCK.to_string())])
            .await?
        {
            Fetched::NotFound => Ok(None),
            Fetched::Body { bytes, .. } => {
                Block::new(*cid, bytes)
                    .map(Some)
                    .map_err(|_| Error::Integrity {
                        cid: cid.to_string(),
                        url,
                    })
            }
        }
    }

    /// The block `cid` at `position` in the blob at `location`.
    pub async fn fetch_block_at(
        &self,
        cid: &Cid,
        location: &str,
        (offset, length): Position,
    ) -> Result<Option<Block>, Error> {
        let last = offset + length.saturating_sub(1);
        let fetched = self
            .transport
            .get(location, &[("range", format!("bytes={offset}-{last}"))])
            .await?;
        let (status, bytes) = match fetched {
            Fetched::NotFound => return Ok(None),
            Fetched::Body { status, bytes } => (status, bytes),
        };
        let slice = if status == 206 {
            bytes
        } else {
            let (start, end) = (offset as usize, (offset + length) as usize);
            if end > bytes.len() {
                return Err(Error::Integrity {
                    cid: cid.to_string(),
                    url: location.to_string(),
                });
            }
            bytes.slice(start..end)
        };
        Block::new(*cid, slice)
            .map(Some)
            .map_err(|_| Error::Integrity {
                cid: cid.to_string(),
                url: location.to_string(),
            })
    }
}
