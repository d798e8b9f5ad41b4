//! IPLD basics: CIDv1 helpers, DAG-CBOR and DAG-JSON codecs, and [`Block`], a CID with the bytes
//! it names, checked on construction.
//!
//! DAG-CBOR maps are written in the deterministic order the spec requires (length first, then
//! bytewise), which is what `@ipld/dag-cbor` writes; `serde_ipld_dagcbor` sorts every map it
//! serialises, so struct field order in Rust never changes the bytes.

use bytes::Bytes;
use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use serde::{Serialize, de::DeserializeOwned};

pub use ipld_core::ipld::Ipld;

/// Multicodec code of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of DAG-JSON.
pub const DAG_JSON: u64 = 0x0129;
/// Multicodec code of raw bytes (ATProto blobs, UnixFS leaves).
pub const RAW: u64 = 0x55;
/// Multicodec code of DAG-PB (UnixFS inner nodes).
pub const DAG_PB: u64 = 0x70;
/// Multicodec code of a CAR file (Storacha names shards and indexes with it).
pub const CAR: u64 = 0x0202;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (the digest is the content).
pub const IDENTITY: u64 = 0x00;

/// Largest identity-hashed CID content we accept; larger inlined data is an attack, not a CID.
pub const MAX_IDENTITY_DIGEST: usize = 64;

/// Why a block or a value could not be encoded, decoded or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpldError {
    /// The bytes do not hash to the CID that names them.
    #[error("block {cid}: bytes do not match the CID's digest")]
    HashMismatch {
        /// The CID the bytes claimed.
        cid: Cid,
    },
    /// The CID uses a hash function we do not verify.
    #[error("block {cid}: unsupported multihash code 0x{code:x}")]
    UnsupportedHash {
        /// The CID.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// DAG-CBOR bytes could not be decoded into the expected shape.
    #[error("invalid DAG-CBOR: {0}")]
    DagCborDecode(String),
    /// A value could not be written as DAG-CBOR (e.g. a non-finite float).
    #[error("cannot encode DAG-CBOR: {0}")]
    DagCborEncode(String),
    /// A value could not be written as DAG-JSON.
    #[error("cannot encode DAG-JSON: {0}")]
    DagJsonEncode(String),
    /// DAG-JSON text could not be decoded.
    #[error("invalid DAG-JSON: {0}")]
    DagJsonDecode(String),
    /// A CID string or byte sequence did not parse.
    #[error("invalid CID {input:?}: {reason}")]
    InvalidCid {
        /// What we were given (truncated for display).
        input: String,
        /// Why it failed.
        reason: String,
    },
}

/// The CIDv1 of `bytes` hashed with sha2-256 under `codec`.
pub fn cid_sha256(codec: u64, bytes: &[u8]) -> Cid {
    Cid::new_v1(codec, Code::Sha2_256.digest(bytes))
}

/// The CIDv1 with an identity multihash: `bytes` inlined in the CID itself.
///
/// # Panics
/// Never for `bytes.len() <= 64`; larger input is a programming error.
pub fn cid_identity(codec: u64, bytes: &[u8]) -> Cid {
    let mh = multihash_codetable::Multihash::wrap(IDENTITY, bytes)
        .expect("identity digest fits the 64-byte multihash");
    Cid::new_v1(codec, mh)
}

/// Parses a CID from its string form (any multibase; CIDv0 `Qm…` too).
pub fn parse_cid(s: &str) -> Result<Cid, IpldError> {
    Cid::try_from(s).map_err(|e| IpldError::InvalidCid {
        input: s.chars().take(80).collect(),
        reason: e.to_string(),
    })
}

/// Parses a CID from its binary form, requiring that nothing follows it.
pub fn cid_from_bytes(bytes: &[u8]) -> Result<Cid, IpldError> {
    Cid::try_from(bytes).map_err(|e| IpldError::InvalidCid {
        input: format!("{} bytes", bytes.len()),
        reason: e.to_string(),
    })
}

/// Encodes a value as DAG-CBOR (canonical key order).
pub fn encode_dag_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, IpldError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| IpldError::DagCborEncode(e.to_string()))
}

/// Decodes DAG-CBOR bytes into a value, rejecting trailing bytes.
pub fn decode_dag_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IpldError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| IpldError::DagCborDecode(e.to_string()))
}

/// Encodes a value as DAG-JSON (keys sorted bytewise, as `@ipld/dag-json` does).
pub fn encode_dag_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, IpldError> {
    serde_ipld_dagjson::to_vec(value).map_err(|e| IpldError::DagJsonEncode(e.to_string()))
}

/// Decodes DAG-JSON text into a value.
pub fn decode_dag_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IpldError> {
    serde_ipld_dagjson::from_slice(bytes).map_err(|e| IpldError::DagJsonDecode(e.to_string()))
}

/// Checks that `bytes` hash to `cid` (sha2-256 or identity).
pub fn verify_cid(cid: &Cid, bytes: &[u8]) -> Result<(), IpldError> {
    let mh = cid.hash();
    match mh.code() {
        SHA2_256 => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
            if mh.size() == 32 && mh.digest() == digest.as_slice() {
                Ok(())
            } else {
                Err(IpldError::HashMismatch { cid: *cid })
            }
        }
        IDENTITY if mh.digest() == bytes => Ok(()),
        IDENTITY => Err(IpldError::HashMismatch { cid: *cid }),
        code => Err(IpldError::UnsupportedHash { cid: *cid, code }),
    }
}

/// A CID and the bytes it names. Constructing one checks the hash, so a `Block` in hand is
/// always genuine.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    bytes: Bytes,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("cid", &self.cid.to_string())
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Block {
    /// A block from a claimed CID and bytes; fails unless the bytes hash to the CID.
    pub fn new(cid: Cid, bytes: impl Into<Bytes>) -> Result<Self, IpldError> {
        let bytes = bytes.into();
        verify_cid(&cid, &bytes)?;
        Ok(Self { cid, bytes })
    }

    /// A block whose CID we computed ourselves from its bytes (no check needed).
    pub fn from_codec(codec: u64, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            cid: cid_sha256(codec, &bytes),
            bytes,
        }
    }

    /// Encodes `value` as DAG-CBOR and names it with its sha2-256 CIDv1.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, IpldError> {
        Ok(Self::from_codec(DAG_CBOR, encode_dag_cbor(value)?))
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Splits the block into its CID and bytes.
    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.bytes)
    }

    /// Decodes the block's bytes as DAG-CBOR.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, IpldError> {
        decode_dag_cbor(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn map_keys_are_length_first() {
        let mut m = BTreeMap::new();
        for k in ["parents", "data", "aa", "b"] {
            m.insert(k.to_string(), Ipld::Integer(1));
        }
        let bytes = encode_dag_cbor(&Ipld::Map(m)).unwrap();
        let expected = hex_decode("a46162016261610164646174610167706172656e747301");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn block_rejects_wrong_bytes() {
        let good = Block::from_codec(RAW, b"hello".to_vec());
        assert!(Block::new(*good.cid(), b"hello".to_vec()).is_ok());
        assert!(matches!(
            Block::new(*good.cid(), b"hellO".to_vec()),
            Err(IpldError::HashMismatch { .. })
        ));
    }

    #[test]
    fn identity_cids_verify_their_content() {
        let cid = cid_identity(CAR, b"abc");
        assert!(verify_cid(&cid, b"abc").is_ok());
        assert!(verify_cid(&cid, b"abd").is_err());
    }

    #[test]
    fn empty_event_matches_hand_computed_vector() {
        // research storacha-protocol.md §1.2: EventBlock.create({}) with no parents.
        let mut m = BTreeMap::new();
        m.insert("data".to_string(), Ipld::Map(BTreeMap::new()));
        m.insert("parents".to_string(), Ipld::List(vec![]));
        let b = Block::encode(&Ipld::Map(m)).unwrap();
        assert_eq!(hex::encode(b.bytes()), "a26464617461a067706172656e747380");
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
}
