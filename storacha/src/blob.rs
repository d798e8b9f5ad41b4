//! Storing one blob (a CAR shard or an index) in the Space: `space/blob/add` and the tasks its
//! receipt forks.
//!
//! 1. Invoke `space/blob/add {blob: {digest, size}}`. The receipt's `fx.fork` holds the
//!    `blob/allocate`, `http/put` and `blob/accept` tasks (and legacy `web3.storage/blob/*`
//!    twins), plus `ucan/conclude` invocations carrying the receipts already available.
//! 2. The allocate receipt's `address {url, headers}` says where to PUT the bytes; the URL and
//!    headers are opaque and sent exactly as given.
//! 3. The `http/put` task names a key derived from the blob (in its `facts[0].keys`, ucanto's
//!    signer archive); we sign the `http/put` receipt with it and hand it to the service with
//!    `ucan/conclude`, the receipt's block attached and referenced from the facts.
//! 4. The service then has the storage node run `blob/accept`; its receipt (fetched from the
//!    receipts endpoint) links the location commitment (`assert/location`) naming where the blob
//!    can be read.
//!
//! The blob may already be there, which skips steps without re-uploading: allocated before but
//! never put (an `address` again: put it); already accepted in this Space (the `http/put` and
//! `blob/accept` receipts come with the `space/blob/add` receipt: nothing to do); stored by
//! another Space (no `address`, the put receipt present: conclude nothing, just take the
//! accept). This is also what makes an interrupted upload resumable: adding the same bytes again
//! continues where it stopped.

use std::collections::BTreeMap;

use bytes::Bytes;
use cid::Cid;
use proto::Ipld;
use proto::capability::{BlobRef, SpaceBlobAdd, UcanConclude};
use proto::ipld::{self, RAW};
use proto::principal::Ed25519Signer;
use proto::receipt::{Receipt, ReceiptOptions};
use proto::ucan::Delegation;

use crate::client::Client;
use crate::error::Error;
use crate::receipts::{UCAN_CONCLUDE, concluded_receipt};

const SPACE_BLOB_ADD: &str = "space/blob/add";
const BLOB_ALLOCATE: [&str; 2] = ["blob/allocate", "web3.storage/blob/allocate"];
const BLOB_ACCEPT: [&str; 2] = ["blob/accept", "web3.storage/blob/accept"];
const HTTP_PUT: &str = "http/put";

/// A blob's bytes with their sha2-256 multihash (computed once, by whoever holds the bytes).
#[derive(Clone, Debug)]
pub struct Blob {
    bytes: Bytes,
    digest: Vec<u8>,
}

impl Blob {
    /// Hashes `bytes` (CPU-bound: run it off the async runtime for big blobs).
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let digest = ipld::cid_sha256(RAW, &bytes).hash().to_bytes();
        Self { bytes, digest }
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The bytes, giving the blob up.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The multihash bytes (`0x12 0x20 ‖ sha256`).
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The multihash in base58btc (`z…`), how storage nodes and logs name blobs.
    pub fn digest_text(&self) -> String {
        multibase::encode(multibase::Base::Base58Btc, &self.digest)
    }
}

/// What storing a blob did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    /// The blob's multihash.
    pub digest: Vec<u8>,
    /// Its size.
    pub size: u64,
    /// Whether we sent its bytes (false: the service had them already).
    pub uploaded: bool,
    /// URLs the location commitment names for reading it back.
    pub locations: Vec<String>,
}

/// The tasks a `space/blob/add` receipt forks, and the receipts that came with it.
struct Next {
    allocate: Delegation,
    put: Delegation,
    accept: Delegation,
    receipts: Vec<Receipt>,
}

impl Next {
    fn parse(receipt: &Receipt) -> Result<Self, Error> {
        let forks: Vec<Delegation> = receipt
            .fx()
            .fork
            .iter()
            .filter_map(|cid| receipt.effect(cid))
            .collect();
        let ability = |d: &Delegation| {
            d.ucan()
                .capabilities()
                .first()
                .map(|c| c.can.clone())
                .unwrap_or_default()
        };
        let find = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| forks.iter().find(|d| ability(d) == *n).cloned())
        };
        let missing = |what: &str| Error::protocol(SPACE_BLOB_ADD, format!("no {what} effect"));
        Ok(Self {
            allocate: find(&BLOB_ALLOCATE).ok_or_else(|| missing("blob/allocate"))?,
            put: find(&[HTTP_PUT]).ok_or_else(|| missing("http/put"))?,
            accept: find(&BLOB_ACCEPT).ok_or_else(|| missing("blob/accept"))?,
            receipts: forks
                .iter()
                .filter(|d| ability(d) == UCAN_CONCLUDE)
                .filter_map(concluded_receipt)
                .collect(),
        })
    }

    fn receipt_for(&self, task: &Delegation) -> Option<&Receipt> {
        self.receipts.iter().find(|r| r.ran() == task.cid())
    }
}

impl Client {
    /// Stores `blob` in the Space (see the module docs); returns once the storage node has
    /// accepted it.
    pub async fn add_blob(&self, blob: &Blob) -> Result<StoredBlob, Error> {
        let add = SpaceBlobAdd {
            with: self.space().to_string(),
            blob: BlobRef {
                digest: blob.digest().to_vec(),
                size: blob.size(),
            },
        };
        let receipt = self.invoke(add.to_capability()).await?;
        let next = Next::parse(&receipt)?;

        let allocated = next
            .receipt_for(&next.allocate)
            .ok_or_else(|| Error::protocol(SPACE_BLOB_ADD, "no blob/allocate receipt"))?;
        let address = match allocated.out() {
            Ok(ok) => address(ok)?,
            Err(error) => return Err(Error::refused(BLOB_ALLOCATE[0], error)),
        };
        let put_done = next.receipt_for(&next.put).is_some_and(|r| r.out().is_ok());

        let mut uploaded = false;
        if let Some((url, headers)) = &address
            && !put_done
        {
            self.transport
                .put(url, headers, blob.bytes().clone(), &blob.digest_text())
                .await?;
            uploaded = true;
        }
        if !put_done {
            self.conclude_put(&next.put).await?;
        }

        let accepted = match next.receipt_for(&next.accept) {
            Some(r) if r.out().is_ok() => r.clone(),
            _ => self.poll_receipt(next.accept.cid(), BLOB_ACCEPT[0]).await?,
        };
        let site = match accepted.out() {
            Ok(ok) => link_field(ok, "site"),
            Err(error) => return Err(Error::refused(BLOB_ACCEPT[0], error)),
        };
        let locations = site
            .and_then(|site| Delegation::from_store(&site, accepted.store().clone()).ok())
            .map(|claim| location_urls(&claim))
            .unwrap_or_default();
        tracing::debug!(blob = %blob.digest_text(), size = blob.size(), uploaded, "blob stored");
        Ok(StoredBlob {
            digest: blob.digest().to_vec(),
            size: blob.size(),
            uploaded,
            locations,
        })
    }

    /// Signs the `http/put` receipt with the key the task carries and sends it with
    /// `ucan/conclude`.
    async fn conclude_put(&self, put: &Delegation) -> Result<(), Error> {
        let key = derived_key(put)?;
        let receipt = Receipt::issue(
            &key,
            put,
            Ok(Ipld::Map(BTreeMap::new())),
            ReceiptOptions::default(),
        )
        .map_err(|e| Error::Build {
            what: "http/put receipt",
            reason: e.to_string(),
        })?;
        // The task itself is the service's; only the receipt block travels (as the JS client
        // sends it), referenced from the facts so the service keeps it.
        let conclude = UcanConclude {
            with: self.agent.did().to_string(),
            receipt: *receipt.cid(),
        };
        let mut fact = BTreeMap::new();
        fact.insert("0".to_string(), Ipld::Link(*receipt.cid()));
        let (_, answer) = self
            .execute(
                conclude.to_capability(),
                None,
                std::slice::from_ref(receipt.block()),
                vec![fact],
            )
            .await?;
        match answer.out() {
            Ok(_) => Ok(()),
            Err(error) => Err(Error::refused(UCAN_CONCLUDE, error)),
        }
    }
}

/// The `{url, headers}` of an allocate result, when it has an address.
type Address = (String, BTreeMap<String, String>);

fn address(ok: &Ipld) -> Result<Option<Address>, Error> {
    let bad = |why: &str| Error::protocol(BLOB_ALLOCATE[0], why.to_string());
    let Ipld::Map(ok) = ok else {
        return Err(bad("result is not a map"));
    };
    let Some(address) = ok.get("address") else {
        return Ok(None);
    };
    let Ipld::Map(address) = address else {
        return Err(bad("address is not a map"));
    };
    let Some(Ipld::String(url)) = address.get("url") else {
        return Err(bad("address.url is not a string"));
    };
    let mut headers = BTreeMap::new();
    if let Some(Ipld::Map(h)) = address.get("headers") {
        for (k, v) in h {
            let Ipld::String(v) = v else {
                return Err(bad("address.headers values must be strings"));
            };
            headers.insert(k.clone(), v.clone());
        }
    }
    Ok(Some((url.clone(), headers)))
}

/// The signer in an `http/put` task's `facts[0].keys` (`{id, keys: {<did>: <signer archive>}}`).
fn derived_key(put: &Delegation) -> Result<Ed25519Signer, Error> {
    let bad = |why: &str| Error::protocol(HTTP_PUT, why.to_string());
    let keys = put
        .ucan()
        .facts()
        .first()
        .and_then(|f| f.get("keys"))
        .ok_or_else(|| bad("the task carries no key"))?;
    let Ipld::Map(keys) = keys else {
        return Err(bad("facts[0].keys is not a map"));
    };
    let Some(Ipld::String(id)) = keys.get("id") else {
        return Err(bad("facts[0].keys.id is missing"));
    };
    let Some(Ipld::Map(archive)) = keys.get("keys") else {
        return Err(bad("facts[0].keys.keys is missing"));
    };
    let Some(Ipld::Bytes(bytes)) = archive.get(id) else {
        return Err(bad("the key for the task's id is missing"));
    };
    let signer = Ed25519Signer::decode(bytes).map_err(|e| bad(&e.to_string()))?;
    if signer.did() != put.ucan().issuer() {
        return Err(bad("the carried key is not the task's issuer"));
    }
    Ok(signer)
}

fn link_field(v: &Ipld, field: &str) -> Option<Cid> {
    match v {
        Ipld::Map(m) => match m.get(field) {
            Some(Ipld::Link(cid)) => Some(*cid),
            _ => None,
        },
        _ => None,
    }
}

/// The URLs an `assert/location` commitment names.
fn location_urls(claim: &Delegation) -> Vec<String> {
    claim
        .ucan()
        .capabilities()
        .iter()
        .filter_map(|c| c.nb.as_ref()?.get("location"))
        .flat_map(|l| match l {
            Ipld::List(items) => items
                .iter()
                .filter_map(|i| match i {
                    Ipld::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_multihashes() {
        let blob = Blob::new(b"hello storacha\n".to_vec());
        let cid = proto::ipld::cid_sha256(proto::ipld::RAW, b"hello storacha\n");
        assert_eq!(blob.digest(), &cid.hash().to_bytes()[..]);
        assert_eq!(blob.size(), 15);
        assert!(blob.digest_text().starts_with("zQm"));
    }
}
