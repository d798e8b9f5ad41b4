//! ATProto repositories: signing keys, DID documents, signed commits and the Merkle Search Tree
//! (MST), everything the backup worker needs to verify what a PDS sent it.
//!
//! Pure like the rest of `proto`: resolving a DID or fetching blocks is the caller's job; this
//! module decodes and checks what it is handed.
//!
//! # Keys
//!
//! [`PublicKey`] is a secp256k1 (`k256`) or NIST P-256 (`p256`) ECDSA key, read from any form a
//! DID document or a PLC directory uses: a `did:key` ([`PublicKey::from_did_key`]), a `Multikey`
//! `publicKeyMultibase` (multicodec `0xe7` / `0x1200` + compressed point,
//! [`PublicKey::from_multikey`]) or the legacy `EcdsaSecp256k1VerificationKey2019` /
//! `EcdsaSecp256r1VerificationKey2019` form (the bare point, compressed or uncompressed, as the
//! `@did-plc/server` directory serves it). Signatures are the 64-byte `r ‖ s` form over SHA-256
//! of the message, and must be **low-S** on both curves, as the ATProto cryptography spec says
//! ([`SignatureError::HighS`]). [`SecretKey`] signs (tests, fixtures).
//!
//! # Commits
//!
//! [`Commit::decode`] reads a v3 commit `{did, version: 3, data, rev, prev, sig}` (`prev` must be
//! present and is almost always null; `rev` is a TID). Version 2 commits are accepted read-only
//! when they carry a `rev` (every v2 commit still served does). Unknown fields are refused: the
//! signature covers the whole map, so tolerating them would only hide a malformed commit.
//! [`Commit::verify_signature`] checks `sig` against the DAG-CBOR of the commit without `sig`;
//! [`verify_commit`] also checks the DID. A signature that does not verify is its own error
//! ([`CommitError::Signature`]) so that a caller can treat it as a warning (the key may have
//! been rotated since the commit was signed; see research `atproto.md` §2.2).
//!
//! # DID documents
//!
//! [`DidDocument::parse`] reads a DID document (JSON) and picks out what ATProto uses: the
//! `#atproto` verification method (the repo signing key), the `#atproto_pds` service (the PDS
//! endpoint) and the first `at://` entry of `alsoKnownAs` (the claimed handle).
//!
//! # MST
//!
//! Nodes are `{l: CID|null, e: [{p, k, v, t: CID|null}]}` ([`MstNode`]); keys are
//! prefix-compressed against the previous entry of the same node. [`walk_mst`] visits every node
//! reachable from a root over a [`BlockGetter`] (in key order) and every `(key, record CID)`,
//! and checks, trusting nothing:
//!
//! - each node's shape (all four entry fields present, nothing else), the canonical prefix
//!   compression (`p` is exactly the prefix shared with the previous key), valid keys
//!   (`<collection>/<rkey>`, ATProto's character set, at most [`MstLimits::max_key_len`] bytes),
//!   and keys strictly increasing across the whole tree;
//! - layers: every key of a node sits on the node's layer (leading zero bits of SHA-256(key),
//!   halved), each subtree is exactly one layer down, and intermediate nodes without keys only
//!   point further down; together with the ordering this makes the tree the one deterministic
//!   MST of its keys (so [`build_mst`] over the walked entries reproduces the root CID);
//! - bounds: entries per node and depth ([`MstLimits`]); a node reached twice is an error.
//!
//! A block the getter lacks does not stop the walk: it is reported in [`MstWalk::missing`] by
//! CID (node or record, and where it hangs), so that a caller can tell exactly what a download
//! (`getRepo?since=`) left out and look for it elsewhere.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use cid::Cid;
use sha2::{Digest, Sha256};

use crate::clock::{BlockGetter, FetchError, StoreError, fetch};
use crate::ipld::{Block, DAG_CBOR, Ipld, IpldError, decode_dag_cbor, encode_dag_cbor};

// ------------------------------------------------------------------------------------------
// Keys and signatures
// ------------------------------------------------------------------------------------------

/// Multicodec code of a compressed secp256k1 public key (`secp256k1-pub`).
pub const MULTICODEC_SECP256K1_PUB: u64 = 0xe7;
/// Multicodec code of a compressed P-256 public key (`p256-pub`).
pub const MULTICODEC_P256_PUB: u64 = 0x1200;

/// Verification method type of a multicodec-prefixed key (`publicKeyMultibase`).
pub const VM_TYPE_MULTIKEY: &str = "Multikey";
/// Legacy verification method type of a bare secp256k1 point.
pub const VM_TYPE_LEGACY_K256: &str = "EcdsaSecp256k1VerificationKey2019";
/// Legacy verification method type of a bare P-256 point.
pub const VM_TYPE_LEGACY_P256: &str = "EcdsaSecp256r1VerificationKey2019";

/// Length of an ATProto signature: `r ‖ s`, 32 bytes each.
pub const SIGNATURE_LEN: usize = 64;

/// The two curves ATProto signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// secp256k1 (`ES256K`), multicodec `0xe7`. What the reference PDS generates.
    K256,
    /// NIST P-256 (`ES256`), multicodec `0x1200`.
    P256,
}

impl KeyAlgorithm {
    /// The multicodec code of this algorithm's compressed public keys.
    pub const fn multicodec(self) -> u64 {
        match self {
            Self::K256 => MULTICODEC_SECP256K1_PUB,
            Self::P256 => MULTICODEC_P256_PUB,
        }
    }

    /// The JWT name of the algorithm (`ES256K` or `ES256`).
    pub const fn jwt_alg(self) -> &'static str {
        match self {
            Self::K256 => "ES256K",
            Self::P256 => "ES256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::K256 => "secp256k1",
            Self::P256 => "P-256",
        })
    }
}

/// Why a public key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The string is not `did:key:z…`.
    #[error("not a did:key: {0:?}")]
    NotDidKey(String),
    /// The multibase text did not decode, or is not base58btc (`z…`).
    #[error("invalid multibase key {input:?}: {reason}")]
    Multibase {
        /// The text (truncated).
        input: String,
        /// Why.
        reason: String,
    },
    /// The multicodec prefix names a key type ATProto does not sign with.
    #[error(
        "unsupported key type: multicodec 0x{0:x} (ATProto uses secp256k1 0xe7 and P-256 0x1200)"
    )]
    UnsupportedCodec(u64),
    /// A verification method of a type we do not read.
    #[error("unsupported verification method type {0:?}")]
    UnsupportedType(String),
    /// The bytes are not a point on the curve (or not a SEC1 encoding at all).
    #[error("invalid {algorithm} public key ({len} bytes)")]
    InvalidPoint {
        /// The curve.
        algorithm: KeyAlgorithm,
        /// How many key bytes there were.
        len: usize,
    },
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not 64 bytes.
    #[error("signature is {len} bytes, expected 64")]
    Length {
        /// Its length.
        len: usize,
    },
    /// `r` or `s` is zero or not below the group order.
    #[error("signature is not a valid (r, s) pair")]
    Malformed,
    /// `s` is in the upper half of the group order: a valid ECDSA signature, but ATProto
    /// requires the low-S form so that signatures are not malleable.
    #[error("signature is not in low-S form")]
    HighS,
    /// Well-formed, but not made by this key over this message.
    #[error("signature does not match the key")]
    Mismatch,
}

/// A public key that verifies ATProto signatures.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// secp256k1.
    K256(k256::ecdsa::VerifyingKey),
    /// NIST P-256.
    P256(p256::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.did_key())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did_key())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Decodes base58btc multibase text (`z…`).
fn decode_base58btc(text: &str) -> Result<Vec<u8>, KeyError> {
    let err = |reason: String| KeyError::Multibase {
        input: truncate(text),
        reason,
    };
    if !text.starts_with('z') {
        return Err(err("expected base58btc (a leading 'z')".into()));
    }
    let (_, bytes) = multibase::decode(text).map_err(|e| err(e.to_string()))?;
    Ok(bytes)
}

impl PublicKey {
    /// A key from its SEC1 encoding (33 bytes compressed, or 65 bytes uncompressed).
    pub fn from_sec1(algorithm: KeyAlgorithm, bytes: &[u8]) -> Result<Self, KeyError> {
        let invalid = || KeyError::InvalidPoint {
            algorithm,
            len: bytes.len(),
        };
        if !matches!(bytes.len(), 33 | 65) {
            return Err(invalid());
        }
        match algorithm {
            KeyAlgorithm::K256 => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(Self::K256)
                .map_err(|_| invalid()),
            KeyAlgorithm::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(Self::P256)
                .map_err(|_| invalid()),
        }
    }

    /// A key from multicodec-prefixed bytes: varint `0xe7` or `0x1200`, then the point
    /// (compressed, as the spec requires; uncompressed is accepted too).
    pub fn from_multicodec_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let (code, rest) =
            unsigned_varint::decode::u64(bytes).map_err(|e| KeyError::Multibase {
                input: format!("{} bytes", bytes.len()),
                reason: format!("bad multicodec varint: {e}"),
            })?;
        match code {
            MULTICODEC_SECP256K1_PUB => Self::from_sec1(KeyAlgorithm::K256, rest),
            MULTICODEC_P256_PUB => Self::from_sec1(KeyAlgorithm::P256, rest),
            other => Err(KeyError::UnsupportedCodec(other)),
        }
    }

    /// A key from a `Multikey` `publicKeyMultibase` value: base58btc of the multicodec-prefixed
    /// compressed point.
    pub fn from_multikey(multibase: &str) -> Result<Self, KeyError> {
        Self::from_multicodec_bytes(&decode_base58btc(multibase)?)
    }

    /// A key from a `did:key:z…` string (what the PLC directory's `/<did>/data` and the
    /// `#atproto` key of a newer DID document hold).
    pub fn from_did_key(did_key: &str) -> Result<Self, KeyError> {
        let multibase = did_key
            .strip_prefix("did:key:")
            .ok_or_else(|| KeyError::NotDidKey(truncate(did_key)))?;
        Self::from_multikey(multibase)
    }

    /// A key from a legacy verification method: `EcdsaSecp256k1VerificationKey2019` or
    /// `EcdsaSecp256r1VerificationKey2019` with a `publicKeyMultibase` holding the bare point
    /// (uncompressed, as `@did-plc/server` writes it, or compressed). A multicodec-prefixed
    /// value is accepted too, as long as its curve agrees with the type.
    pub fn from_legacy(vm_type: &str, multibase: &str) -> Result<Self, KeyError> {
        let algorithm = match vm_type {
            VM_TYPE_LEGACY_K256 => KeyAlgorithm::K256,
            VM_TYPE_LEGACY_P256 => KeyAlgorithm::P256,
            other => return Err(KeyError::UnsupportedType(truncate(other))),
        };
        let bytes = decode_base58btc(multibase)?;
        let bare = matches!(
            (bytes.len(), bytes.first()),
            (33, Some(2 | 3)) | (65, Some(4))
        );
        if bare {
            return Self::from_sec1(algorithm, &bytes);
        }
        let key = Self::from_multicodec_bytes(&bytes)?;
        if key.algorithm() != algorithm {
            return Err(KeyError::InvalidPoint {
                algorithm,
                len: bytes.len(),
            });
        }
        Ok(key)
    }

    /// A key from a DID document verification method's `type` and `publicKeyMultibase`.
    pub fn from_verification_method(vm_type: &str, multibase: &str) -> Result<Self, KeyError> {
        match vm_type {
            VM_TYPE_MULTIKEY => Self::from_multikey(multibase),
            _ => Self::from_legacy(vm_type, multibase),
        }
    }

    /// The curve.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::K256(_) => KeyAlgorithm::K256,
            Self::P256(_) => KeyAlgorithm::P256,
        }
    }

    /// The compressed SEC1 point (33 bytes).
    pub fn to_compressed(&self) -> Vec<u8> {
        match self {
            Self::K256(k) => k.to_sec1_point(true).as_bytes().to_vec(),
            Self::P256(k) => k.to_sec1_point(true).as_bytes().to_vec(),
        }
    }

    /// The `Multikey` `publicKeyMultibase` form: base58btc of multicodec ‖ compressed point.
    pub fn multikey(&self) -> String {
        let mut buf = unsigned_varint::encode::u64_buffer();
        let prefix = unsigned_varint::encode::u64(self.algorithm().multicodec(), &mut buf);
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&self.to_compressed());
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }

    /// The `did:key:z…` form.
    pub fn did_key(&self) -> String {
        format!("did:key:{}", self.multikey())
    }

    /// Checks a 64-byte `r ‖ s` signature over SHA-256 of `message`; high-S is refused.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        use k256::ecdsa::signature::Verifier as _;
        if signature.len() != SIGNATURE_LEN {
            return Err(SignatureError::Length {
                len: signature.len(),
            });
        }
        match self {
            Self::K256(key) => {
                let sig = k256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::Malformed)?;
                if sig.normalize_s() != sig {
                    return Err(SignatureError::HighS);
                }
                key.verify(message, &sig)
                    .map_err(|_| SignatureError::Mismatch)
            }
            Self::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::Malformed)?;
                if sig.normalize_s() != sig {
                    return Err(SignatureError::HighS);
                }
                key.verify(message, &sig)
                    .map_err(|_| SignatureError::Mismatch)
            }
        }
    }
}

/// A private signing key (tests and fixtures sign commits with it; the worker only verifies).
#[derive(Clone)]
pub enum SecretKey {
    /// secp256k1.
    K256(k256::ecdsa::SigningKey),
    /// NIST P-256.
    P256(p256::ecdsa::SigningKey),
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public_key().did_key())
    }
}

/// Why a secret key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretKeyError {
    /// The bytes are not a valid scalar for the curve.
    #[error("invalid {0} secret key")]
    Invalid(KeyAlgorithm),
    /// The system random source failed.
    #[error("no randomness: {0}")]
    Randomness(String),
}

impl SecretKey {
    /// A key from its 32-byte scalar.
    pub fn from_bytes(algorithm: KeyAlgorithm, bytes: &[u8]) -> Result<Self, SecretKeyError> {
        let invalid = |_| SecretKeyError::Invalid(algorithm);
        Ok(match algorithm {
            KeyAlgorithm::K256 => {
                Self::K256(k256::ecdsa::SigningKey::from_slice(bytes).map_err(invalid)?)
            }
            KeyAlgorithm::P256 => {
                Self::P256(p256::ecdsa::SigningKey::from_slice(bytes).map_err(invalid)?)
            }
        })
    }

    /// A fresh random key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, SecretKeyError> {
        loop {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| SecretKeyError::Randomness(e.to_string()))?;
            // A 32-byte string is a valid scalar except with negligible probability.
            if let Ok(key) = Self::from_bytes(algorithm, &seed) {
                return Ok(key);
            }
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Self::K256(k) => PublicKey::K256(*k.verifying_key()),
            Self::P256(k) => PublicKey::P256(*k.verifying_key()),
        }
    }

    /// Signs SHA-256 of `message` (RFC 6979, deterministic), in the low-S `r ‖ s` form.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        use k256::ecdsa::signature::Signer as _;
        let mut out = [0u8; SIGNATURE_LEN];
        match self {
            Self::K256(k) => {
                let sig: k256::ecdsa::Signature = k.sign(message);
                out.copy_from_slice(&sig.normalize_s().to_bytes());
            }
            Self::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                out.copy_from_slice(&sig.normalize_s().to_bytes());
            }
        }
        out
    }
}

// ------------------------------------------------------------------------------------------
// Commits
// ------------------------------------------------------------------------------------------

/// The repo format version the network uses.
pub const COMMIT_VERSION: i128 = 3;
/// The previous version, read but never written.
pub const COMMIT_VERSION_LEGACY: i128 = 2;

/// Why a commit block was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Not DAG-CBOR.
    #[error("commit is not DAG-CBOR: {0}")]
    Decode(#[source] IpldError),
    /// DAG-CBOR, but not a commit: a field missing, of the wrong type, or unknown.
    #[error("malformed commit: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// A `version` other than 3 (or 2).
    #[error("unsupported commit version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: i128,
    },
    /// The commit is for another account.
    #[error("commit is for {found}, expected {expected}")]
    WrongDid {
        /// The DID we asked for.
        expected: String,
        /// The DID in the commit.
        found: String,
    },
    /// The signature does not verify with the key given. After a key rotation (an account
    /// migration) a PDS can serve a commit signed by the previous key, so callers may record
    /// this as a warning rather than fail.
    #[error("commit signature of {did} does not verify with {key}: {source}")]
    Signature {
        /// The commit's DID.
        did: String,
        /// The key tried (`did:key`).
        key: String,
        /// Why.
        #[source]
        source: SignatureError,
    },
}

fn malformed(reason: impl Into<String>) -> CommitError {
    CommitError::Malformed {
        reason: reason.into(),
    }
}

/// Whether `s` is a TID (13 characters of base32-sortable, first one `2`–`j`): the form of a
/// commit `rev`, which therefore compares lexicographically in time order.
pub fn is_valid_tid(s: &str) -> bool {
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let b = s.as_bytes();
    b.len() == 13
        && matches!(b[0], b'2'..=b'7' | b'a'..=b'j')
        && b.iter().all(|c| ALPHABET.contains(c))
}

/// A commit's fields before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedCommit {
    /// The account's DID.
    pub did: String,
    /// Root of the MST.
    pub data: Cid,
    /// Revision (TID).
    pub rev: String,
    /// Previous commit; `None` on every v3 commit in practice.
    pub prev: Option<Cid>,
}

impl UnsignedCommit {
    fn to_ipld(&self) -> BTreeMap<String, Ipld> {
        let mut m = BTreeMap::new();
        m.insert("did".into(), Ipld::String(self.did.clone()));
        m.insert("version".into(), Ipld::Integer(COMMIT_VERSION));
        m.insert("data".into(), Ipld::Link(self.data));
        m.insert("rev".into(), Ipld::String(self.rev.clone()));
        m.insert("prev".into(), self.prev.map_or(Ipld::Null, Ipld::Link));
        m
    }

    /// The bytes a signature covers: the v3 commit without `sig`, as DAG-CBOR.
    pub fn signing_bytes(&self) -> Vec<u8> {
        encode_dag_cbor(&Ipld::Map(self.to_ipld())).expect("strings, ints and links encode")
    }

    /// Signs the commit with `key` and encodes it as a v3 commit block.
    pub fn sign(&self, key: &SecretKey) -> Block {
        let sig = key.sign(&self.signing_bytes());
        self.with_signature(&sig)
    }

    /// Encodes the commit with `sig` as its signature, whatever it is (tests forge with this).
    pub fn with_signature(&self, sig: &[u8]) -> Block {
        let mut m = self.to_ipld();
        m.insert("sig".into(), Ipld::Bytes(sig.to_vec()));
        Block::encode(&Ipld::Map(m)).expect("strings, ints, bytes and links encode")
    }
}

/// A decoded commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The account's DID.
    pub did: String,
    /// 3, or 2 for a legacy commit.
    pub version: u8,
    /// Root of the MST.
    pub data: Cid,
    /// Revision: a TID, increasing with every commit.
    pub rev: String,
    /// Previous commit (null on v3 commits in practice).
    pub prev: Option<Cid>,
    /// The 64-byte signature as found (length checked by [`Commit::verify_signature`]).
    pub sig: Vec<u8>,
    /// DAG-CBOR of the commit without `sig`: what the signature covers.
    signing_bytes: Vec<u8>,
}

impl Commit {
    /// Decodes a commit block's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommitError> {
        let value: Ipld = decode_dag_cbor(bytes).map_err(CommitError::Decode)?;
        let Ipld::Map(mut map) = value else {
            return Err(malformed("not a map"));
        };
        let version = match map.get("version") {
            Some(Ipld::Integer(v)) => *v,
            Some(_) => return Err(malformed("version is not an integer")),
            None => return Err(malformed("version is missing")),
        };
        if version != COMMIT_VERSION && version != COMMIT_VERSION_LEGACY {
            return Err(CommitError::UnsupportedVersion { version });
        }
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "did" | "version" | "data" | "rev" | "prev" | "sig"
            ) {
                return Err(malformed(format!("unknown field {:?}", truncate(key))));
            }
        }
        let did = match map.get("did") {
            Some(Ipld::String(s)) if s.starts_with("did:") && s.len() <= 2048 => s.clone(),
            Some(_) => return Err(malformed("did is not a DID string")),
            None => return Err(malformed("did is missing")),
        };
        let data = match map.get("data") {
            Some(Ipld::Link(c)) => *c,
            Some(_) => return Err(malformed("data is not a link")),
            None => return Err(malformed("data is missing")),
        };
        let rev = match map.get("rev") {
            Some(Ipld::String(s)) if is_valid_tid(s) => s.clone(),
            Some(Ipld::String(s)) => {
                return Err(malformed(format!("rev {:?} is not a TID", truncate(s))));
            }
            Some(_) => return Err(malformed("rev is not a string")),
            None if version == COMMIT_VERSION_LEGACY => {
                return Err(malformed("version 2 commit without rev is not supported"));
            }
            None => return Err(malformed("rev is missing")),
        };
        let prev = match map.get("prev") {
            Some(Ipld::Link(c)) => Some(*c),
            Some(Ipld::Null) => None,
            Some(_) => return Err(malformed("prev is neither a link nor null")),
            None => {
                return Err(malformed(
                    "prev is missing (v3 commits must carry it, null)",
                ));
            }
        };
        let sig = match map.remove("sig") {
            Some(Ipld::Bytes(b)) => b,
            Some(_) => return Err(malformed("sig is not bytes")),
            None => return Err(malformed("sig is missing")),
        };
        let signing_bytes = encode_dag_cbor(&Ipld::Map(map)).map_err(CommitError::Decode)?;
        Ok(Self {
            did,
            version: u8::try_from(version).expect("2 or 3"),
            data,
            rev,
            prev,
            sig,
            signing_bytes,
        })
    }

    /// Decodes a commit block (its CID already checked by [`Block`]).
    pub fn from_block(block: &Block) -> Result<Self, CommitError> {
        Self::decode(block.bytes())
    }

    /// The DAG-CBOR bytes the signature covers (the commit without `sig`).
    pub fn signing_bytes(&self) -> &[u8] {
        &self.signing_bytes
    }

    /// Checks the signature with `key`.
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), CommitError> {
        key.verify(&self.signing_bytes, &self.sig)
            .map_err(|source| CommitError::Signature {
                did: self.did.clone(),
                key: key.did_key(),
                source,
            })
    }
}

/// Decodes a commit block, checks that it is `expected_did`'s and that `key` signed it.
pub fn verify_commit(
    block: &Block,
    expected_did: &str,
    key: &PublicKey,
) -> Result<Commit, CommitError> {
    let commit = Commit::from_block(block)?;
    if commit.did != expected_did {
        return Err(CommitError::WrongDid {
            expected: expected_did.to_string(),
            found: commit.did,
        });
    }
    commit.verify_signature(key)?;
    Ok(commit)
}

// ------------------------------------------------------------------------------------------
// DID documents
// ------------------------------------------------------------------------------------------

/// Fragment of the repo signing key in a DID document.
pub const ATPROTO_KEY_FRAGMENT: &str = "#atproto";
/// Fragment of the PDS service in a DID document.
pub const ATPROTO_PDS_FRAGMENT: &str = "#atproto_pds";
/// Service type of a PDS.
pub const ATPROTO_PDS_TYPE: &str = "AtprotoPersonalDataServer";

/// Why a DID document (or the part of it ATProto needs) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DidDocError {
    /// Not JSON.
    #[error("DID document is not JSON: {0}")]
    Json(String),
    /// JSON, but not a DID document (no string `id`, fields of the wrong type).
    #[error("not a DID document: {0}")]
    Malformed(String),
    /// No `#atproto` verification method.
    #[error("DID document of {did} has no #atproto verification method")]
    NoSigningKey {
        /// The document's DID.
        did: String,
    },
    /// The `#atproto` key is there but unreadable.
    #[error("DID document of {did}: #atproto key: {source}")]
    SigningKey {
        /// The document's DID.
        did: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// No `#atproto_pds` service with a string endpoint.
    #[error("DID document of {did} has no #atproto_pds service endpoint")]
    NoPds {
        /// The document's DID.
        did: String,
    },
}

/// One `verificationMethod` entry (only the fields ATProto reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationMethod {
    /// `id`, e.g. `#atproto` or `did:plc:…#atproto`.
    pub id: String,
    /// `type`, e.g. `Multikey`.
    pub vm_type: String,
    /// `controller`, if present.
    pub controller: Option<String>,
    /// `publicKeyMultibase`, if present.
    pub public_key_multibase: Option<String>,
}

/// One `service` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `id`, e.g. `#atproto_pds`.
    pub id: String,
    /// `type`, e.g. `AtprotoPersonalDataServer`.
    pub service_type: String,
    /// `serviceEndpoint` when it is a string (the only form ATProto uses).
    pub endpoint: Option<String>,
}

/// A DID document, reduced to what ATProto uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidDocument {
    /// `id`: the DID.
    pub id: String,
    /// `alsoKnownAs` (handles as `at://<handle>`).
    pub also_known_as: Vec<String>,
    /// `verificationMethod` entries that are objects.
    pub verification_methods: Vec<VerificationMethod>,
    /// `service` entries.
    pub services: Vec<Service>,
}

fn str_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<String>, DidDocError> {
    match obj.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DidDocError::Malformed(format!("{name} is not a string"))),
    }
}

fn list_field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<&'a [serde_json::Value], DidDocError> {
    match obj.get(name) {
        None | Some(serde_json::Value::Null) => Ok(&[]),
        Some(serde_json::Value::Array(a)) => Ok(a),
        Some(_) => Err(DidDocError::Malformed(format!("{name} is not a list"))),
    }
}

/// Whether a DID document `id` (`#frag` or `<did>#frag`) names `fragment` of `did`.
fn id_matches(id: &str, did: &str, fragment: &str) -> bool {
    id == fragment || id.strip_prefix(did).is_some_and(|rest| rest == fragment)
}

impl DidDocument {
    /// Parses a DID document from JSON.
    pub fn parse(json: &[u8]) -> Result<Self, DidDocError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| DidDocError::Json(e.to_string()))?;
        Self::from_json(&value)
    }

    /// Reads a DID document from a parsed JSON value.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, DidDocError> {
        let obj = value
            .as_object()
            .ok_or_else(|| DidDocError::Malformed("not a JSON object".into()))?;
        let id = str_field(obj, "id")?
            .filter(|id| id.starts_with("did:"))
            .ok_or_else(|| DidDocError::Malformed("id is not a DID".into()))?;
        let also_known_as = list_field(obj, "alsoKnownAs")?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| DidDocError::Malformed("alsoKnownAs holds a non-string".into()))
            })
            .collect::<Result<_, _>>()?;
        let mut verification_methods = Vec::new();
        for vm in list_field(obj, "verificationMethod")? {
            // Entries may also be bare references (strings); ATProto keys are always objects.
            let Some(vm) = vm.as_object() else { continue };
            let (Some(id), Some(vm_type)) = (str_field(vm, "id")?, str_field(vm, "type")?) else {
                return Err(DidDocError::Malformed(
                    "verification method without id or type".into(),
                ));
            };
            verification_methods.push(VerificationMethod {
                id,
                vm_type,
                controller: str_field(vm, "controller")?,
                public_key_multibase: str_field(vm, "publicKeyMultibase")?,
            });
        }
        let mut services = Vec::new();
        for s in list_field(obj, "service")? {
            let Some(s) = s.as_object() else {
                return Err(DidDocError::Malformed(
                    "service entry is not an object".into(),
                ));
            };
            let (Some(id), Some(service_type)) = (str_field(s, "id")?, str_field(s, "type")?)
            else {
                return Err(DidDocError::Malformed("service without id or type".into()));
            };
            let endpoint = s
                .get("serviceEndpoint")
                .and_then(|e| e.as_str())
                .map(str::to_string);
            services.push(Service {
                id,
                service_type,
                endpoint,
            });
        }
        Ok(Self {
            id,
            also_known_as,
            verification_methods,
            services,
        })
    }

    /// The handle the document claims: the first `at://` entry of `alsoKnownAs`, lowercased.
    /// A claim only: the handle must also resolve to this DID to be trusted.
    pub fn handle(&self) -> Option<String> {
        self.also_known_as
            .iter()
            .find_map(|aka| aka.strip_prefix("at://"))
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
    }

    /// The `#atproto` signing key.
    pub fn signing_key(&self) -> Result<PublicKey, DidDocError> {
        let vm = self
            .verification_methods
            .iter()
            .find(|vm| id_matches(&vm.id, &self.id, ATPROTO_KEY_FRAGMENT))
            .ok_or_else(|| DidDocError::NoSigningKey {
                did: self.id.clone(),
            })?;
        let multibase =
            vm.public_key_multibase
                .as_deref()
                .ok_or_else(|| DidDocError::NoSigningKey {
                    did: self.id.clone(),
                })?;
        PublicKey::from_verification_method(&vm.vm_type, multibase).map_err(|source| {
            DidDocError::SigningKey {
                did: self.id.clone(),
                source,
            }
        })
    }

    /// The `#atproto_pds` service endpoint (a URL string; the caller checks its scheme).
    pub fn pds_endpoint(&self) -> Result<&str, DidDocError> {
        self.services
            .iter()
            .find(|s| {
                id_matches(&s.id, &self.id, ATPROTO_PDS_FRAGMENT)
                    && s.service_type == ATPROTO_PDS_TYPE
            })
            .and_then(|s| s.endpoint.as_deref())
            .ok_or_else(|| DidDocError::NoPds {
                did: self.id.clone(),
            })
    }
}

// ------------------------------------------------------------------------------------------
// MST
// ------------------------------------------------------------------------------------------

/// Default bound on entries in one node. With fan-out 4 a node holds a handful of entries; a
/// run of 1024 same-layer keys has probability about 0.75^1024 in an honest tree.
pub const DEFAULT_MAX_ENTRIES: usize = 1024;
/// Default bound on the tree's depth (nodes from the root down). A key's layer is half its
/// leading zero bits of SHA-256, so honest trees are about log4(records) deep (12 for 16M
/// records); 64 needs a key with 128 leading zero bits.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Longest MST key accepted (ATProto's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Bounds on what [`walk_mst`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MstLimits {
    /// Most entries in one node.
    pub max_entries: usize,
    /// Most nodes on a path from the root (the root is depth 1).
    pub max_depth: usize,
    /// Longest key, in bytes.
    pub max_key_len: usize,
}

impl MstLimits {
    /// [`DEFAULT_MAX_ENTRIES`], [`DEFAULT_MAX_DEPTH`], [`MAX_KEY_LEN`].
    pub const DEFAULT: Self = Self {
        max_entries: DEFAULT_MAX_ENTRIES,
        max_depth: DEFAULT_MAX_DEPTH,
        max_key_len: MAX_KEY_LEN,
    };
}

impl Default for MstLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One entry of an MST node, as stored (the key prefix-compressed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MstEntry {
    /// `p`: bytes shared with the previous key of the node.
    pub prefix_len: usize,
    /// `k`: the rest of the key.
    pub key_suffix: Vec<u8>,
    /// `v`: the record's CID.
    pub value: Cid,
    /// `t`: the subtree of keys between this key and the next.
    pub tree: Option<Cid>,
}

/// An MST node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MstNode {
    /// `l`: the subtree of keys before the first entry.
    pub left: Option<Cid>,
    /// `e`: the entries, in key order.
    pub entries: Vec<MstEntry>,
}

fn opt_link(v: Option<Cid>) -> Ipld {
    v.map_or(Ipld::Null, Ipld::Link)
}

impl MstNode {
    /// Decodes a node's DAG-CBOR bytes; `max_entries` bounds the entry count. The error is a
    /// description of what is wrong.
    pub fn decode(bytes: &[u8], max_entries: usize) -> Result<Self, String> {
        let value: Ipld = decode_dag_cbor(bytes).map_err(|e| e.to_string())?;
        let Ipld::Map(map) = value else {
            return Err("not a map".into());
        };
        if map.len() != 2 {
            return Err(format!(
                "expected fields l and e, found {:?}",
                map.keys().map(|k| truncate(k)).collect::<Vec<_>>()
            ));
        }
        let left = match map.get("l") {
            Some(Ipld::Link(c)) => Some(*c),
            Some(Ipld::Null) => None,
            Some(_) => return Err("l is neither a link nor null".into()),
            None => return Err("l is missing".into()),
        };
        let Some(Ipld::List(list)) = map.get("e") else {
            return Err("e is missing or not a list".into());
        };
        if list.len() > max_entries {
            return Err(format!(
                "{} entries exceed the limit of {max_entries}",
                list.len()
            ));
        }
        let mut entries = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let Ipld::Map(e) = entry else {
                return Err(format!("entry {i} is not a map"));
            };
            if e.len() != 4 {
                return Err(format!("entry {i}: expected fields p, k, v, t"));
            }
            let prefix_len = match e.get("p") {
                Some(Ipld::Integer(p)) if (0..=MAX_KEY_LEN as i128).contains(p) => *p as usize,
                _ => return Err(format!("entry {i}: p is not a small non-negative integer")),
            };
            let Some(Ipld::Bytes(key_suffix)) = e.get("k") else {
                return Err(format!("entry {i}: k is not bytes"));
            };
            let Some(Ipld::Link(value)) = e.get("v") else {
                return Err(format!("entry {i}: v is not a link"));
            };
            let tree = match e.get("t") {
                Some(Ipld::Link(c)) => Some(*c),
                Some(Ipld::Null) => None,
                _ => return Err(format!("entry {i}: t is neither a link nor null")),
            };
            entries.push(MstEntry {
                prefix_len,
                key_suffix: key_suffix.clone(),
                value: *value,
                tree,
            });
        }
        Ok(Self { left, entries })
    }

    /// Encodes the node as DAG-CBOR (the canonical form, `l` and `t` as explicit nulls).
    pub fn encode(&self) -> Vec<u8> {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let mut m = BTreeMap::new();
                m.insert("p".to_string(), Ipld::Integer(e.prefix_len as i128));
                m.insert("k".to_string(), Ipld::Bytes(e.key_suffix.clone()));
                m.insert("v".to_string(), Ipld::Link(e.value));
                m.insert("t".to_string(), opt_link(e.tree));
                Ipld::Map(m)
            })
            .collect();
        let mut m = BTreeMap::new();
        m.insert("l".to_string(), opt_link(self.left));
        m.insert("e".to_string(), Ipld::List(entries));
        encode_dag_cbor(&Ipld::Map(m)).expect("ints, bytes and links encode")
    }

    /// The node as a block (CIDv1, DAG-CBOR, sha2-256).
    pub fn to_block(&self) -> Block {
        Block::from_codec(DAG_CBOR, self.encode())
    }
}

/// The MST layer of a key: leading zero bits of SHA-256(key), divided by 2 (fan-out 4).
pub fn key_layer(key: &[u8]) -> u32 {
    let hash = Sha256::digest(key);
    let mut zeros = 0u32;
    for byte in hash {
        if byte == 0 {
            zeros += 8;
        } else {
            zeros += byte.leading_zeros();
            break;
        }
    }
    zeros / 2
}

/// Why `key` is not a valid MST key, if it is not: `<collection>/<record key>`, both parts
/// non-empty, only `A-Za-z0-9` and `_~-:.`, at most `max_len` bytes.
pub fn check_mst_key(key: &[u8], max_len: usize) -> Result<(), &'static str> {
    if key.len() > max_len {
        return Err("too long");
    }
    let mut parts = key.split(|b| *b == b'/');
    let (Some(collection), Some(rkey), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("not <collection>/<record key>");
    };
    if collection.is_empty() || rkey.is_empty() {
        return Err("empty collection or record key");
    }
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'-' | b':' | b'.');
    if !collection.iter().all(ok) || !rkey.iter().all(ok) {
        return Err("characters outside A-Za-z0-9 _~-:.");
    }
    Ok(())
}

/// What a block is, in a report of missing blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// The signed commit.
    Commit,
    /// An MST node.
    MstNode,
    /// A record.
    Record,
}

/// A block that the getter did not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingBlock {
    /// Its CID.
    pub cid: Cid,
    /// What it is.
    pub kind: BlockKind,
    /// For a record, its key; for a node, the last key seen before it (`None` at the start).
    pub key: Option<String>,
}

/// What [`walk_mst`] shows its visitor, in key order: a node before its entries, each record
/// after the subtree to its left.
#[derive(Debug)]
pub enum MstVisit<'a> {
    /// A node (decoded and checked).
    Node {
        /// Its CID.
        cid: &'a Cid,
        /// Its block.
        block: &'a Block,
        /// 1 for the root.
        depth: usize,
    },
    /// A record entry.
    Record {
        /// `<collection>/<rkey>`.
        key: &'a str,
        /// The record's CID.
        cid: &'a Cid,
        /// The record block, when the walk fetches records and the getter has it.
        block: Option<&'a Block>,
    },
}

/// Summary of a walk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MstWalk {
    /// Nodes visited (present and checked).
    pub nodes: u64,
    /// Record entries found in those nodes.
    pub records: u64,
    /// Blocks the getter did not have, in walk order: nodes (whose subtrees were therefore
    /// not walked) and, when records are fetched, records.
    pub missing: Vec<MissingBlock>,
    /// Subtrees not walked because the caller's `prune` said they were already verified
    /// ([`walk_mst_pruned`]); their nodes and records are not counted above.
    pub pruned: u64,
}

impl MstWalk {
    /// Whether every node (and, when fetched, every record) was present.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Why an MST walk failed: the tree is malformed, too big, or the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MstError {
    /// A node that does not decode as an MST node.
    #[error("malformed MST node {cid}: {reason}")]
    MalformedNode {
        /// The node.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// A key that is not a valid MST key, or whose prefix compression is wrong.
    #[error("MST node {cid}: invalid key {reason}")]
    InvalidKey {
        /// The node.
        cid: Cid,
        /// The key, as far as it could be rebuilt (lossy UTF-8), and what is wrong with it.
        reason: String,
    },
    /// A key not strictly after the one before it in the walk.
    #[error("MST node {cid}: key {keys}")]
    KeysOutOfOrder {
        /// The node.
        cid: Cid,
        /// The key and the one before it: `"b" is not after "c"`.
        keys: String,
    },
    /// A key on the wrong layer, a subtree not one layer down, or an empty node where none may
    /// be.
    #[error("MST node {cid}: {reason}")]
    WrongLayer {
        /// The node.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// A node deeper than [`MstLimits::max_depth`].
    #[error("MST node {cid} is deeper than the limit of {max}")]
    TooDeep {
        /// The node.
        cid: Cid,
        /// The limit.
        max: usize,
    },
    /// A node linked twice.
    #[error("MST node {cid} is linked more than once")]
    DuplicateNode {
        /// The node.
        cid: Cid,
    },
    /// The getter returned bytes that do not hash to the CID asked for.
    #[error("block store returned wrong bytes for {cid}")]
    HashMismatch {
        /// The CID asked for.
        cid: Cid,
    },
    /// The getter failed.
    #[error("block store failed reading {cid}: {source}")]
    Store {
        /// The CID being read.
        cid: Cid,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The visitor stopped the walk.
    #[error("MST walk stopped: {0}")]
    Visitor(#[source] StoreError),
}

/// Options of [`walk_mst`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Bounds.
    pub limits: MstLimits,
    /// Fetch every record block from the getter too (hash-checked), hand it to the visitor
    /// and report the missing ones; otherwise records are only named.
    pub fetch_records: bool,
}

struct Walker<'g, G: ?Sized, F, P> {
    getter: &'g G,
    opts: WalkOptions,
    visit: F,
    prune: P,
    seen: HashSet<Cid>,
    last_key: Option<Vec<u8>>,
    summary: MstWalk,
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

impl<G, F, P> Walker<'_, G, F, P>
where
    G: BlockGetter + ?Sized,
    F: FnMut(MstVisit<'_>) -> Result<(), StoreError>,
    P: FnMut(&Cid) -> bool,
{
    fn get(
        &mut self,
        cid: &Cid,
        kind: BlockKind,
        key: Option<&[u8]>,
    ) -> Result<Option<Block>, MstError> {
        match fetch(self.getter, cid) {
            Ok(block) => Ok(Some(block)),
            Err(FetchError::Missing) => {
                self.summary.missing.push(MissingBlock {
                    cid: *cid,
                    kind,
                    key: key.map(lossy),
                });
                Ok(None)
            }
            Err(FetchError::Store(source)) => Err(MstError::Store { cid: *cid, source }),
            Err(FetchError::Mismatch(_)) => Err(MstError::HashMismatch { cid: *cid }),
        }
    }

    /// Walks the subtree at `cid`. `layer` is the layer this node must be on (`None` for the
    /// root, which sets it); `depth` counts nodes from the root.
    fn node(&mut self, cid: &Cid, layer: Option<u32>, depth: usize) -> Result<(), MstError> {
        if depth > self.opts.limits.max_depth {
            return Err(MstError::TooDeep {
                cid: *cid,
                max: self.opts.limits.max_depth,
            });
        }
        if !self.seen.insert(*cid) {
            return Err(MstError::DuplicateNode { cid: *cid });
        }
        if depth > 1 && (self.prune)(cid) {
            self.summary.pruned += 1;
            return Ok(());
        }
        let last = self.last_key.clone();
        let Some(block) = self.get(cid, BlockKind::MstNode, last.as_deref())? else {
            return Ok(());
        };
        let node = MstNode::decode(block.bytes(), self.opts.limits.max_entries)
            .map_err(|reason| MstError::MalformedNode { cid: *cid, reason })?;
        self.summary.nodes += 1;

        // Rebuild the keys (prefix compression) and check them before visiting anything.
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(node.entries.len());
        for (i, e) in node.entries.iter().enumerate() {
            let prev: &[u8] = if i == 0 { &[] } else { &keys[i - 1] };
            if e.prefix_len > prev.len() {
                return Err(MstError::InvalidKey {
                    cid: *cid,
                    reason: format!(
                        "suffix {:?}: prefix length {} exceeds the previous key's {}",
                        lossy(&e.key_suffix),
                        e.prefix_len,
                        prev.len()
                    ),
                });
            }
            let mut key = prev[..e.prefix_len].to_vec();
            key.extend_from_slice(&e.key_suffix);
            let shared = prev.iter().zip(&key).take_while(|(a, b)| a == b).count();
            if shared != e.prefix_len {
                return Err(MstError::InvalidKey {
                    cid: *cid,
                    reason: format!(
                        "{:?}: prefix length {} is not the {shared} bytes shared with the previous key",
                        lossy(&key),
                        e.prefix_len
                    ),
                });
            }
            check_mst_key(&key, self.opts.limits.max_key_len).map_err(|reason| {
                MstError::InvalidKey {
                    cid: *cid,
                    reason: format!("{:?}: {reason}", lossy(&key)),
                }
            })?;
            keys.push(key);
        }

        // Layers.
        let layer = match (layer, keys.first()) {
            (_, Some(first)) => {
                let here = key_layer(first);
                if let Some(expected) = layer.filter(|l| *l != here) {
                    return Err(MstError::WrongLayer {
                        cid: *cid,
                        reason: format!(
                            "keys on layer {here} in a subtree that must be on layer {expected}"
                        ),
                    });
                }
                for key in &keys[1..] {
                    let l = key_layer(key);
                    if l != here {
                        return Err(MstError::WrongLayer {
                            cid: *cid,
                            reason: format!(
                                "key {:?} is on layer {l}, the node's keys on {here}",
                                lossy(key)
                            ),
                        });
                    }
                }
                here
            }
            (None, None) => {
                // The root of an empty repo is the empty node; a root with only a subtree is
                // never written (the reference implementation trims it).
                if node.left.is_some() {
                    return Err(MstError::WrongLayer {
                        cid: *cid,
                        reason: "root node with no keys but a subtree".into(),
                    });
                }
                0
            }
            (Some(expected), None) => {
                if node.left.is_none() || expected == 0 {
                    return Err(MstError::WrongLayer {
                        cid: *cid,
                        reason: "empty node inside the tree".into(),
                    });
                }
                expected
            }
        };
        if layer == 0 && (node.left.is_some() || node.entries.iter().any(|e| e.tree.is_some())) {
            return Err(MstError::WrongLayer {
                cid: *cid,
                reason: "node on layer 0 has a subtree".into(),
            });
        }

        (self.visit)(MstVisit::Node {
            cid,
            block: &block,
            depth,
        })
        .map_err(MstError::Visitor)?;
        drop(block);

        let child_layer = layer.checked_sub(1);
        if let Some(left) = &node.left {
            self.node(left, child_layer, depth + 1)?;
        }
        for (entry, key) in node.entries.iter().zip(keys) {
            if let Some(previous) = &self.last_key
                && key <= *previous
            {
                return Err(MstError::KeysOutOfOrder {
                    cid: *cid,
                    keys: format!("{:?} is not after {:?}", lossy(&key), lossy(previous)),
                });
            }
            self.summary.records += 1;
            let key_str = String::from_utf8(key).expect("checked ASCII");
            let record = if self.opts.fetch_records {
                self.get(&entry.value, BlockKind::Record, Some(key_str.as_bytes()))?
            } else {
                None
            };
            (self.visit)(MstVisit::Record {
                key: &key_str,
                cid: &entry.value,
                block: record.as_ref(),
            })
            .map_err(MstError::Visitor)?;
            self.last_key = Some(key_str.into_bytes());
            if let Some(tree) = &entry.tree {
                self.node(tree, child_layer, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Walks the MST rooted at `root` (a commit's `data`) over `getter`, checking it as the module
/// docs describe, calling `visit` for every node and record in key order. Missing blocks are
/// reported in the result, not as errors; an error from `visit` stops the walk.
pub fn walk_mst<G, F>(
    getter: &G,
    root: &Cid,
    opts: &WalkOptions,
    visit: F,
) -> Result<MstWalk, MstError>
where
    G: BlockGetter + ?Sized,
    F: FnMut(MstVisit<'_>) -> Result<(), StoreError>,
{
    walk_mst_pruned(getter, root, opts, |_| false, visit)
}

/// [`walk_mst`], except that a subtree whose root node `prune` accepts is not walked (it is
/// counted in [`MstWalk::pruned`]). An incremental backup prunes the nodes its Space already
/// holds: they were verified, with everything under them, when they were stored, so a walk
/// costs the size of the change rather than of the repo. Keys under a pruned subtree are not
/// seen, so key order is checked within the walked part and within each node only. The root
/// is always walked.
pub fn walk_mst_pruned<G, P, F>(
    getter: &G,
    root: &Cid,
    opts: &WalkOptions,
    prune: P,
    visit: F,
) -> Result<MstWalk, MstError>
where
    G: BlockGetter + ?Sized,
    P: FnMut(&Cid) -> bool,
    F: FnMut(MstVisit<'_>) -> Result<(), StoreError>,
{
    let mut walker = Walker {
        getter,
        opts: *opts,
        visit,
        prune,
        seen: HashSet::new(),
        last_key: None,
        summary: MstWalk::default(),
    };
    walker.node(root, None, 1)?;
    Ok(walker.summary)
}

/// Builds the MST of `entries` (key → record CID): the root CID and every node block. The
/// tree is the deterministic one ATProto specifies, so for a repo's records this reproduces its
/// commit's `data`. Keys are checked with [`check_mst_key`] (at [`MAX_KEY_LEN`]).
pub fn build_mst(entries: &BTreeMap<String, Cid>) -> Result<(Cid, Vec<Block>), String> {
    let mut items = Vec::with_capacity(entries.len());
    for (key, cid) in entries {
        check_mst_key(key.as_bytes(), MAX_KEY_LEN).map_err(|e| format!("key {key:?}: {e}"))?;
        items.push((key.as_bytes(), key_layer(key.as_bytes()), *cid));
    }
    let mut blocks = Vec::new();
    let top = items.iter().map(|(_, l, _)| *l).max().unwrap_or(0);
    let root = build_node(&items, top, &mut blocks);
    Ok((root, blocks))
}

/// Builds the node on `layer` for `items` (sorted, all on `layer` or below; non-empty unless
/// it is the root of an empty tree) and returns its CID.
fn build_node(items: &[(&[u8], u32, Cid)], layer: u32, blocks: &mut Vec<Block>) -> Cid {
    let mut node = MstNode {
        left: None,
        entries: Vec::new(),
    };
    let mut start = 0;
    let mut prev_key: &[u8] = &[];
    let subtree = |range: &[(&[u8], u32, Cid)], blocks: &mut Vec<Block>| {
        (!range.is_empty()).then(|| build_node(range, layer - 1, blocks))
    };
    for (i, (key, l, cid)) in items.iter().enumerate() {
        if *l != layer {
            continue;
        }
        let below = subtree(&items[start..i], blocks);
        match node.entries.last_mut() {
            Some(last) => last.tree = below,
            None => node.left = below,
        }
        let shared = prev_key
            .iter()
            .zip(key.iter())
            .take_while(|(a, b)| a == b)
            .count();
        node.entries.push(MstEntry {
            prefix_len: shared,
            key_suffix: key[shared..].to_vec(),
            value: *cid,
            tree: None,
        });
        prev_key = key;
        start = i + 1;
    }
    let below = subtree(&items[start..], blocks);
    match node.entries.last_mut() {
        Some(last) => last.tree = below,
        None => node.left = below,
    }
    let block = node.to_block();
    let cid = *block.cid();
    blocks.push(block);
    cid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipld::cid_sha256;
    use std::collections::HashMap;

    const DID: &str = "did:plc:rudr4ncc2rwod3c3r6oy4dww";
    const REV: &str = "3lbzc6kzdcs2k";

    /// The same key as the real `@did-plc/server` 0.0.1 served it: `/<did>/data` as a did:key,
    /// `/<did>` as a legacy uncompressed point.
    const PLC_DID_KEY: &str = "did:key:zQ3shmp1vDVjqsUKEWueQrR7wRBtrbNLwaANpMrFSf6Ba8ZYk";
    const PLC_LEGACY: &str =
        "zPbzGm5kZVESfD1ZaWHbXN8T5TgisYbZo7BD4noaNhCoUszKML8qAWNBfM1tUu4nVTbLMcyYPG6mUmVE3ABgcHuAk";

    const K256_ORDER: [u8; 32] =
        hex32("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    const P256_ORDER: [u8; 32] =
        hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");

    const fn hex32(s: &str) -> [u8; 32] {
        let b = s.as_bytes();
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
            i += 1;
        }
        out
    }
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'a' + 10,
        }
    }

    /// `(r, n - s)`: the same signature in its high-S form.
    fn high_s(sig: &[u8; 64], order: &[u8; 32]) -> [u8; 64] {
        let mut out = *sig;
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(order[i]) - i16::from(sig[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            out[32 + i] = (d + 256 * borrow) as u8;
        }
        assert_eq!(borrow, 0);
        out
    }

    fn record(text: &str) -> Block {
        let mut m = BTreeMap::new();
        m.insert(
            "$type".to_string(),
            Ipld::String("app.bsky.feed.post".into()),
        );
        m.insert("text".to_string(), Ipld::String(text.into()));
        Block::encode(&Ipld::Map(m)).unwrap()
    }

    /// A repo of `n` posts: (commit block, all blocks, the key → CID map).
    fn repo(n: usize, key: &SecretKey) -> (Block, HashMap<Cid, Block>, BTreeMap<String, Cid>) {
        let mut blocks = HashMap::new();
        let mut entries = BTreeMap::new();
        for i in 0..n {
            let r = record(&format!("post {i}"));
            entries.insert(format!("app.bsky.feed.post/3k{i:011}"), *r.cid());
            blocks.insert(*r.cid(), r);
        }
        let (root, nodes) = build_mst(&entries).unwrap();
        for b in nodes {
            blocks.insert(*b.cid(), b);
        }
        let commit = UnsignedCommit {
            did: DID.into(),
            data: root,
            rev: REV.into(),
            prev: None,
        }
        .sign(key);
        blocks.insert(*commit.cid(), commit.clone());
        (commit, blocks, entries)
    }

    fn walk(
        getter: &HashMap<Cid, Block>,
        root: &Cid,
        fetch_records: bool,
    ) -> Result<(MstWalk, Vec<(String, Cid)>), MstError> {
        let mut seen = Vec::new();
        let opts = WalkOptions {
            fetch_records,
            ..WalkOptions::default()
        };
        let summary = walk_mst(getter, root, &opts, |v| {
            if let MstVisit::Record { key, cid, .. } = v {
                seen.push((key.to_string(), *cid));
            }
            Ok(())
        })?;
        Ok((summary, seen))
    }

    fn node_block(left: Option<Cid>, entries: &[(&str, usize, Option<Cid>)]) -> Block {
        let v = cid_sha256(DAG_CBOR, b"record");
        let entries = entries
            .iter()
            .map(|(key, p, tree)| MstEntry {
                prefix_len: *p,
                key_suffix: key.as_bytes()[(*p).min(key.len())..].to_vec(),
                value: v,
                tree: *tree,
            })
            .collect();
        MstNode { left, entries }.to_block()
    }

    fn keys_on_layer(layer: u32, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("app.bsky.feed.like/k{i:06}"))
            .filter(|k| key_layer(k.as_bytes()) == layer)
            .take(n)
            .collect()
    }

    // --- keys ---

    #[test]
    fn plc_key_forms_agree() {
        let a = PublicKey::from_did_key(PLC_DID_KEY).unwrap();
        let b = PublicKey::from_legacy(VM_TYPE_LEGACY_K256, PLC_LEGACY).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.algorithm(), KeyAlgorithm::K256);
        assert_eq!(a.did_key(), PLC_DID_KEY);
        assert_eq!(PublicKey::from_multikey(&a.multikey()).unwrap(), a);
        // The wrong legacy type for the point's prefix still parses as that curve only if valid.
        assert!(PublicKey::from_legacy("JsonWebKey2020", PLC_LEGACY).is_err());
    }

    #[test]
    fn spec_did_keys_parse_and_round_trip() {
        for (text, alg) in [
            (
                "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
                KeyAlgorithm::K256,
            ),
            (
                "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo",
                KeyAlgorithm::P256,
            ),
        ] {
            let key = PublicKey::from_did_key(text).unwrap();
            assert_eq!(key.algorithm(), alg);
            assert_eq!(key.did_key(), text);
        }
    }

    #[test]
    fn key_errors_are_named() {
        assert!(matches!(
            PublicKey::from_did_key("did:plc:abc"),
            Err(KeyError::NotDidKey(_))
        ));
        assert!(matches!(
            PublicKey::from_did_key("did:key:Q3sh"),
            Err(KeyError::Multibase { .. })
        ));
        // Ed25519 (0xed) is not an ATProto repo key.
        let ed = multibase::encode(
            multibase::Base::Base58Btc,
            [&[0xed, 0x01][..], &[7; 32]].concat(),
        );
        assert!(matches!(
            PublicKey::from_multikey(&ed),
            Err(KeyError::UnsupportedCodec(0xed))
        ));
        // A point not on the curve.
        let bad = multibase::encode(
            multibase::Base::Base58Btc,
            [&[0xe7, 0x01, 0x02][..], &[0xff; 32]].concat(),
        );
        assert!(matches!(
            PublicKey::from_multikey(&bad),
            Err(KeyError::InvalidPoint {
                algorithm: KeyAlgorithm::K256,
                len: 33
            })
        ));
        assert!(matches!(
            PublicKey::from_verification_method("Ed25519VerificationKey2020", PLC_LEGACY),
            Err(KeyError::UnsupportedType(_))
        ));
    }

    #[test]
    fn both_curves_sign_low_s_and_refuse_high_s() {
        for (alg, order) in [
            (KeyAlgorithm::K256, &K256_ORDER),
            (KeyAlgorithm::P256, &P256_ORDER),
        ] {
            let key = SecretKey::generate(alg).unwrap();
            let public = key.public_key();
            assert_eq!(PublicKey::from_did_key(&public.did_key()).unwrap(), public);
            for i in 0..16u8 {
                let msg = [i; 40];
                let sig = key.sign(&msg);
                assert_eq!(public.verify(&msg, &sig), Ok(()));
                assert_eq!(
                    public.verify(&msg, &high_s(&sig, order)),
                    Err(SignatureError::HighS),
                    "{alg}"
                );
                assert_eq!(public.verify(b"other", &sig), Err(SignatureError::Mismatch));
            }
            assert_eq!(
                public.verify(b"m", &[1; 63]),
                Err(SignatureError::Length { len: 63 })
            );
            assert_eq!(
                public.verify(b"m", &[0; 64]),
                Err(SignatureError::Malformed)
            );
            let other = SecretKey::generate(alg).unwrap().public_key();
            assert_eq!(
                other.verify(b"m", &key.sign(b"m")),
                Err(SignatureError::Mismatch)
            );
        }
    }

    // --- commits ---

    #[test]
    fn commit_signed_and_verified() {
        for alg in [KeyAlgorithm::K256, KeyAlgorithm::P256] {
            let key = SecretKey::generate(alg).unwrap();
            let (commit_block, _, _) = repo(3, &key);
            let commit = verify_commit(&commit_block, DID, &key.public_key()).unwrap();
            assert_eq!(commit.version, 3);
            assert_eq!(commit.rev, REV);
            assert_eq!(commit.prev, None);
            assert_eq!(commit.sig.len(), 64);
            // The signed bytes are the commit without sig.
            let unsigned = UnsignedCommit {
                did: DID.into(),
                data: commit.data,
                rev: REV.into(),
                prev: None,
            };
            assert_eq!(commit.signing_bytes(), unsigned.signing_bytes());
        }
    }

    #[test]
    fn forged_commits_are_refused() {
        let key = SecretKey::generate(KeyAlgorithm::K256).unwrap();
        let (block, _, _) = repo(2, &key);
        let commit = Commit::from_block(&block).unwrap();
        let unsigned = UnsignedCommit {
            did: DID.into(),
            data: commit.data,
            rev: REV.into(),
            prev: None,
        };
        let public = key.public_key();

        // Bad signature: one bit flipped.
        let mut sig = commit.sig.clone();
        sig[10] ^= 1;
        let err = verify_commit(&unsigned.with_signature(&sig), DID, &public).unwrap_err();
        assert!(
            matches!(
                err,
                CommitError::Signature {
                    source: SignatureError::Mismatch,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&public.did_key()));

        // High-S form of the genuine signature.
        let sig: [u8; 64] = commit.sig.as_slice().try_into().unwrap();
        let err = verify_commit(
            &unsigned.with_signature(&high_s(&sig, &K256_ORDER)),
            DID,
            &public,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CommitError::Signature {
                    source: SignatureError::HighS,
                    ..
                }
            ),
            "{err}"
        );

        // Another account's commit, and another key.
        let err = verify_commit(&block, "did:plc:someoneelse", &public).unwrap_err();
        assert!(
            matches!(&err, CommitError::WrongDid { found, .. } if found == DID),
            "{err}"
        );
        let other = SecretKey::generate(KeyAlgorithm::K256)
            .unwrap()
            .public_key();
        assert!(matches!(
            verify_commit(&block, DID, &other),
            Err(CommitError::Signature {
                source: SignatureError::Mismatch,
                ..
            })
        ));
        // Changing a signed field (the rev) breaks the signature.
        let moved = UnsignedCommit {
            rev: "3lbzc6kzdcs2l".into(),
            ..unsigned.clone()
        };
        assert!(matches!(
            verify_commit(&moved.with_signature(&commit.sig), DID, &public),
            Err(CommitError::Signature { .. })
        ));
    }

    fn commit_map(edit: impl FnOnce(&mut BTreeMap<String, Ipld>)) -> Vec<u8> {
        let mut m = BTreeMap::new();
        m.insert("did".to_string(), Ipld::String(DID.into()));
        m.insert("version".to_string(), Ipld::Integer(3));
        m.insert("data".to_string(), Ipld::Link(cid_sha256(DAG_CBOR, b"x")));
        m.insert("rev".to_string(), Ipld::String(REV.into()));
        m.insert("prev".to_string(), Ipld::Null);
        m.insert("sig".to_string(), Ipld::Bytes(vec![0; 64]));
        edit(&mut m);
        encode_dag_cbor(&Ipld::Map(m)).unwrap()
    }

    #[test]
    fn malformed_commits_are_named() {
        assert!(Commit::decode(&commit_map(|_| {})).is_ok());
        // Version 2 with a rev is read.
        let v2 = Commit::decode(&commit_map(|m| {
            m.insert("version".into(), Ipld::Integer(2));
        }))
        .unwrap();
        assert_eq!(v2.version, 2);
        assert!(matches!(
            Commit::decode(&commit_map(|m| {
                m.insert("version".into(), Ipld::Integer(4));
            })),
            Err(CommitError::UnsupportedVersion { version: 4 })
        ));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "prev missing",
                commit_map(|m| {
                    m.remove("prev");
                }),
            ),
            (
                "sig missing",
                commit_map(|m| {
                    m.remove("sig");
                }),
            ),
            (
                "rev not a TID",
                commit_map(|m| {
                    m.insert("rev".into(), Ipld::String("1".into()));
                }),
            ),
            (
                "data not a link",
                commit_map(|m| {
                    m.insert("data".into(), Ipld::Null);
                }),
            ),
            (
                "did not a DID",
                commit_map(|m| {
                    m.insert("did".into(), Ipld::String("alice".into()));
                }),
            ),
            (
                "unknown field",
                commit_map(|m| {
                    m.insert("extra".into(), Ipld::Null);
                }),
            ),
            (
                "v2 without rev",
                commit_map(|m| {
                    m.insert("version".into(), Ipld::Integer(2));
                    m.remove("rev");
                }),
            ),
            ("not a map", encode_dag_cbor(&Ipld::List(vec![])).unwrap()),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(Commit::decode(&bytes), Err(CommitError::Malformed { .. })),
                "{what}"
            );
        }
        assert!(matches!(
            Commit::decode(&[0xff]),
            Err(CommitError::Decode(_))
        ));
    }

    #[test]
    fn tids() {
        assert!(is_valid_tid(REV));
        assert!(is_valid_tid("2222222222222"));
        assert!(!is_valid_tid("3lbzc6kzdcs2"));
        assert!(!is_valid_tid("klbzc6kzdcs2k"));
        assert!(!is_valid_tid("3lbzc6kzdcs2K"));
        assert!(!is_valid_tid("3lbzc6kzdc12k"));
    }

    // --- DID documents ---

    #[test]
    fn legacy_plc_document() {
        let json = format!(
            r##"{{"@context":["https://www.w3.org/ns/did/v1","https://w3id.org/security/suites/secp256k1-2019/v1"],
            "id":"{DID}","alsoKnownAs":["at://Alice.test"],
            "verificationMethod":[{{"id":"#atproto","type":"EcdsaSecp256k1VerificationKey2019","controller":"{DID}","publicKeyMultibase":"{PLC_LEGACY}"}}],
            "service":[{{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":"http://localhost:32583"}}]}}"##
        );
        let doc = DidDocument::parse(json.as_bytes()).unwrap();
        assert_eq!(doc.id, DID);
        assert_eq!(doc.handle().as_deref(), Some("alice.test"));
        assert_eq!(doc.pds_endpoint().unwrap(), "http://localhost:32583");
        assert_eq!(doc.signing_key().unwrap().did_key(), PLC_DID_KEY);
    }

    #[test]
    fn multikey_document_with_full_ids() {
        let key = SecretKey::generate(KeyAlgorithm::P256)
            .unwrap()
            .public_key();
        let json = serde_json::json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": DID,
            "alsoKnownAs": ["https://example.com", "at://bob.example.com"],
            "verificationMethod": [
                "did:plc:other#ref",
                {"id": format!("{DID}#other"), "type": "Multikey", "controller": DID, "publicKeyMultibase": "zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc"},
                {"id": format!("{DID}#atproto"), "type": "Multikey", "controller": DID, "publicKeyMultibase": key.multikey()}
            ],
            "service": [
                {"id": "#bsky_fg", "type": "BskyFeedGenerator", "serviceEndpoint": "https://feed.example"},
                {"id": format!("{DID}#atproto_pds"), "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example.com"}
            ]
        });
        let doc = DidDocument::from_json(&json).unwrap();
        assert_eq!(doc.signing_key().unwrap(), key);
        assert_eq!(doc.pds_endpoint().unwrap(), "https://pds.example.com");
        assert_eq!(doc.handle().as_deref(), Some("bob.example.com"));
    }

    #[test]
    fn incomplete_documents() {
        let doc = DidDocument::parse(br#"{"id":"did:web:example.com"}"#).unwrap();
        assert_eq!(doc.handle(), None);
        assert!(matches!(
            doc.signing_key(),
            Err(DidDocError::NoSigningKey { .. })
        ));
        assert!(matches!(doc.pds_endpoint(), Err(DidDocError::NoPds { .. })));
        // A PDS service of the wrong type, or an object endpoint, is not a PDS.
        let doc = DidDocument::parse(
            br##"{"id":"did:web:example.com","service":[{"id":"#atproto_pds","type":"Other","serviceEndpoint":"https://x"},
            {"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":{"a":"b"}}],
            "verificationMethod":[{"id":"#atproto","type":"Multikey","publicKeyMultibase":"zzz"}]}"##,
        )
        .unwrap();
        assert!(matches!(doc.pds_endpoint(), Err(DidDocError::NoPds { .. })));
        assert!(matches!(
            doc.signing_key(),
            Err(DidDocError::SigningKey { .. })
        ));
        assert!(matches!(
            DidDocument::parse(b"{"),
            Err(DidDocError::Json(_))
        ));
        assert!(matches!(
            DidDocument::parse(b"[]"),
            Err(DidDocError::Malformed(_))
        ));
        assert!(matches!(
            DidDocument::parse(br#"{"id":"alice"}"#),
            Err(DidDocError::Malformed(_))
        ));
        assert!(matches!(
            DidDocument::parse(br#"{"id":"did:web:x","alsoKnownAs":[1]}"#),
            Err(DidDocError::Malformed(_))
        ));
    }

    // --- MST ---

    #[test]
    fn layers_match_the_reference_counting() {
        // @atproto/repo leadingZerosOnHash counts 2-bit groups: "2653ae71" has layer 0 (the
        // spec's example keys, interop test suite).
        assert_eq!(key_layer(b"blue"), 1);
        assert_eq!(key_layer(b"2653ae71"), 0);
        assert_eq!(key_layer(b"88bfafc7"), 2);
        assert_eq!(key_layer(b"2a92d355"), 4);
        assert_eq!(key_layer(b"app.bsky.feed.post/454397e440ec"), 4);
        assert_eq!(key_layer(b"app.bsky.feed.post/9adeb165882c"), 8);
    }

    #[test]
    fn walk_yields_every_record_in_order_and_rebuilds_the_root() {
        let key = SecretKey::generate(KeyAlgorithm::K256).unwrap();
        let (commit, blocks, entries) = repo(300, &key);
        let commit = Commit::from_block(&commit).unwrap();
        let mut depth = 0;
        let opts = WalkOptions {
            fetch_records: true,
            ..WalkOptions::default()
        };
        let mut seen = Vec::new();
        let summary = walk_mst(&blocks, &commit.data, &opts, |v| {
            match v {
                MstVisit::Node { depth: d, .. } => depth = depth.max(d),
                MstVisit::Record { key, cid, block } => {
                    assert_eq!(block.unwrap().cid(), cid);
                    seen.push((key.to_string(), *cid));
                }
            }
            Ok(())
        })
        .unwrap();
        assert!(summary.is_complete());
        assert_eq!(summary.records, 300);
        assert!(
            depth >= 3,
            "300 keys make a tree of several layers, got {depth}"
        );
        // Every node block was visited: nodes + records + commit = all blocks.
        assert_eq!(summary.nodes as usize + 300 + 1, blocks.len());
        let walked: BTreeMap<String, Cid> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), walked.len());
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(walked, entries);
        assert_eq!(build_mst(&walked).unwrap().0, commit.data);
    }

    #[test]
    fn empty_repo() {
        let (root, blocks) = build_mst(&BTreeMap::new()).unwrap();
        assert_eq!(blocks.len(), 1);
        let getter: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
        let (summary, seen) = walk(&getter, &root, true).unwrap();
        assert_eq!((summary.nodes, summary.records), (1, 0));
        assert!(seen.is_empty());
    }

    #[test]
    fn missing_nodes_and_records_are_reported_by_cid() {
        let key = SecretKey::generate(KeyAlgorithm::K256).unwrap();
        let (commit, mut blocks, entries) = repo(100, &key);
        let data = Commit::from_block(&commit).unwrap().data;
        // Find a non-root node and drop it, and one record.
        let root_node = MstNode::decode(blocks[&data].bytes(), 1024).unwrap();
        let child = root_node.left.or(root_node.entries[0].tree).unwrap();
        blocks.remove(&child);
        let (record_key, record_cid) = entries.iter().last().map(|(k, c)| (k.clone(), *c)).unwrap();
        blocks.remove(&record_cid);

        let (summary, seen) = walk(&blocks, &data, true).unwrap();
        assert!(!summary.is_complete());
        assert!(seen.len() < 100);
        let missing_node = summary
            .missing
            .iter()
            .find(|m| m.kind == BlockKind::MstNode)
            .unwrap();
        assert_eq!(missing_node.cid, child);
        let missing_record = summary
            .missing
            .iter()
            .find(|m| m.kind == BlockKind::Record)
            .unwrap();
        assert_eq!(missing_record.cid, record_cid);
        assert_eq!(missing_record.key.as_deref(), Some(record_key.as_str()));
        assert_eq!(summary.missing.len(), 2);

        // Without fetching records only the node is missing.
        let (summary, _) = walk(&blocks, &data, false).unwrap();
        assert_eq!(summary.missing.len(), 1);

        // A missing root is reported too.
        let (summary, seen) = walk(&HashMap::new(), &data, false).unwrap();
        assert_eq!(summary.missing[0].cid, data);
        assert!(seen.is_empty());
    }

    #[test]
    fn pruned_subtrees_are_not_walked() {
        let key = SecretKey::generate(KeyAlgorithm::K256).unwrap();
        let (commit, mut blocks, entries) = repo(2000, &key);
        let data = Commit::from_block(&commit).unwrap().data;
        let opts = WalkOptions::default();
        let full = walk_mst(&blocks, &data, &opts, |_| Ok(())).unwrap();
        assert_eq!(full.records, entries.len() as u64);
        assert_eq!(full.pruned, 0);
        // Prune every subtree of the root: only the root is read, so the other nodes may as
        // well be gone.
        let root = MstNode::decode(blocks[&data].bytes(), 10_000).unwrap();
        let children: HashSet<Cid> = root
            .left
            .iter()
            .chain(root.entries.iter().filter_map(|e| e.tree.as_ref()))
            .copied()
            .collect();
        assert!(!children.is_empty());
        let root_block = blocks[&data].clone();
        blocks.retain(|cid, _| *cid == data);
        assert_eq!(blocks.len(), 1, "{}", root_block.cid());
        let mut seen_records = 0;
        let pruned = walk_mst_pruned(
            &blocks,
            &data,
            &opts,
            |cid| children.contains(cid),
            |v| {
                if matches!(v, MstVisit::Record { .. }) {
                    seen_records += 1;
                }
                Ok(())
            },
        )
        .unwrap();
        assert!(pruned.is_complete(), "{:?}", pruned.missing);
        assert_eq!(pruned.nodes, 1);
        assert_eq!(pruned.pruned, children.len() as u64);
        assert_eq!(pruned.records, root.entries.len() as u64);
        assert_eq!(seen_records, root.entries.len());
        // The root itself is never pruned.
        let all = walk_mst_pruned(&blocks, &data, &opts, |_| true, |_| Ok(())).unwrap();
        assert_eq!(all.nodes, 1);
    }

    fn getter(blocks: &[&Block]) -> HashMap<Cid, Block> {
        blocks.iter().map(|b| (*b.cid(), (*b).clone())).collect()
    }

    #[test]
    fn malformed_nodes_are_refused() {
        let v = Ipld::Link(cid_sha256(DAG_CBOR, b"r"));
        let entry = |p: i128, k: &[u8]| {
            let mut m = BTreeMap::new();
            m.insert("p".to_string(), Ipld::Integer(p));
            m.insert("k".to_string(), Ipld::Bytes(k.to_vec()));
            m.insert("v".to_string(), v.clone());
            m.insert("t".to_string(), Ipld::Null);
            m
        };
        let node = |l: Ipld, e: Vec<Ipld>| {
            let mut m = BTreeMap::new();
            m.insert("l".to_string(), l);
            m.insert("e".to_string(), Ipld::List(e));
            m
        };
        let key = keys_on_layer(0, 1).remove(0);
        let k = key.as_bytes();
        let cases: Vec<(&str, Ipld)> = vec![
            ("not a map", Ipld::List(vec![])),
            (
                "l missing",
                Ipld::Map({
                    let mut m = node(Ipld::Null, vec![]);
                    m.remove("l");
                    m
                }),
            ),
            (
                "e missing",
                Ipld::Map({
                    let mut m = node(Ipld::Null, vec![]);
                    m.remove("e");
                    m
                }),
            ),
            (
                "extra field",
                Ipld::Map({
                    let mut m = node(Ipld::Null, vec![]);
                    m.insert("x".into(), Ipld::Null);
                    m
                }),
            ),
            (
                "l is a string",
                Ipld::Map(node(Ipld::String("x".into()), vec![])),
            ),
            (
                "entry not a map",
                Ipld::Map(node(Ipld::Null, vec![Ipld::Integer(1)])),
            ),
            (
                "t missing",
                Ipld::Map(node(
                    Ipld::Null,
                    vec![Ipld::Map({
                        let mut e = entry(0, k);
                        e.remove("t");
                        e
                    })],
                )),
            ),
            (
                "negative p",
                Ipld::Map(node(Ipld::Null, vec![Ipld::Map(entry(-1, k))])),
            ),
            (
                "k is a string",
                Ipld::Map(node(
                    Ipld::Null,
                    vec![Ipld::Map({
                        let mut e = entry(0, k);
                        e.insert("k".into(), Ipld::String(key.clone()));
                        e
                    })],
                )),
            ),
            (
                "v is null",
                Ipld::Map(node(
                    Ipld::Null,
                    vec![Ipld::Map({
                        let mut e = entry(0, k);
                        e.insert("v".into(), Ipld::Null);
                        e
                    })],
                )),
            ),
        ];
        for (what, value) in cases {
            let block = Block::encode(&value).unwrap();
            let err = walk(&getter(&[&block]), block.cid(), false).unwrap_err();
            assert!(
                matches!(&err, MstError::MalformedNode { cid, .. } if cid == block.cid()),
                "{what}: {err}"
            );
        }
        let garbage = Block::from_codec(DAG_CBOR, vec![0xa2, 0x61]);
        assert!(matches!(
            walk(&getter(&[&garbage]), garbage.cid(), false),
            Err(MstError::MalformedNode { .. })
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        let keys = keys_on_layer(0, 2);
        // p larger than the previous key, p not the shared prefix, invalid characters.
        let cases = [
            node_block(None, &[(&keys[0], 0, None), (&keys[1], 200, None)]),
            node_block(None, &[(&keys[0], 0, None), (&keys[1], 3, None)]),
            node_block(None, &[(&keys[0], 1, None)]),
            node_block(None, &[("app.bsky.feed.post/a b", 0, None)]),
            node_block(None, &[("app.bsky.feed.post", 0, None)]),
            node_block(None, &[("a/b/c", 0, None)]),
            node_block(None, &[("/b", 0, None)]),
        ];
        for (i, block) in cases.iter().enumerate() {
            let err = walk(&getter(&[block]), block.cid(), false).unwrap_err();
            assert!(
                matches!(
                    err,
                    MstError::InvalidKey { .. } | MstError::WrongLayer { .. }
                ),
                "case {i}: {err}"
            );
        }
        // A key too long for the limit.
        let long = format!("app.bsky.feed.post/{}", "a".repeat(1100));
        assert_eq!(check_mst_key(long.as_bytes(), MAX_KEY_LEN), Err("too long"));
        assert!(
            build_mst(&BTreeMap::from([(
                "bad key".to_string(),
                cid_sha256(DAG_CBOR, b"")
            )]))
            .is_err()
        );
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let keys = keys_on_layer(0, 2);
        let shared = keys[0]
            .bytes()
            .zip(keys[1].bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let block = node_block(None, &[(&keys[1], 0, None), (&keys[0], shared, None)]);
        let err = walk(&getter(&[&block]), block.cid(), false).unwrap_err();
        assert!(matches!(err, MstError::KeysOutOfOrder { .. }), "{err}");
        // A repeated key.
        let block = node_block(
            None,
            &[(&keys[0], 0, None), (&keys[0], keys[0].len(), None)],
        );
        assert!(matches!(
            walk(&getter(&[&block]), block.cid(), false),
            Err(MstError::KeysOutOfOrder { .. })
        ));
        // Keys in a subtree that belong after its parent's key.
        let upper = keys_on_layer(1, 1).remove(0);
        let lower: Vec<String> = keys_on_layer(0, 50)
            .into_iter()
            .filter(|k| *k > upper)
            .take(1)
            .collect();
        let child = node_block(None, &[(&lower[0], 0, None)]);
        let root = node_block(Some(*child.cid()), &[(&upper, 0, None)]);
        let err = walk(&getter(&[&root, &child]), root.cid(), false).unwrap_err();
        assert!(matches!(err, MstError::KeysOutOfOrder { .. }), "{err}");
    }

    #[test]
    fn wrong_layers_are_refused() {
        let l0 = keys_on_layer(0, 2);
        let l1 = keys_on_layer(1, 1).remove(0);
        let l2 = keys_on_layer(2, 1).remove(0);
        // Mixed layers in one node.
        let (a, b) = if l0[0] < l1 {
            (&l0[0], &l1)
        } else {
            (&l1, &l0[0])
        };
        let shared = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        let mixed = node_block(None, &[(a, 0, None), (b, shared, None)]);
        assert!(matches!(
            walk(&getter(&[&mixed]), mixed.cid(), false),
            Err(MstError::WrongLayer { .. })
        ));
        // A layer-0 node with a subtree.
        let leaf = node_block(None, &[(&l0[0], 0, None)]);
        let bad = node_block(Some(*leaf.cid()), &[(&l0[1], 0, None)]);
        assert!(matches!(
            walk(&getter(&[&bad, &leaf]), bad.cid(), false),
            Err(MstError::WrongLayer { .. })
        ));
        // A subtree two layers down (the layer-1 node in between is missing).
        let below: Vec<String> = keys_on_layer(0, 200)
            .into_iter()
            .filter(|k| *k < l2)
            .take(1)
            .collect();
        let leaf = node_block(None, &[(&below[0], 0, None)]);
        let skip = node_block(Some(*leaf.cid()), &[(&l2, 0, None)]);
        assert!(matches!(
            walk(&getter(&[&skip, &leaf]), skip.cid(), false),
            Err(MstError::WrongLayer { .. })
        ));
        // ... and with the empty layer-1 node it is a valid tree.
        let middle = node_block(Some(*leaf.cid()), &[]);
        let ok = node_block(Some(*middle.cid()), &[(&l2, 0, None)]);
        let (summary, seen) = walk(&getter(&[&ok, &middle, &leaf]), ok.cid(), false).unwrap();
        assert_eq!((summary.nodes, seen.len()), (3, 2));
        // An untrimmed root (no keys, only a subtree).
        let untrimmed = node_block(Some(*ok.cid()), &[]);
        assert!(matches!(
            walk(
                &getter(&[&untrimmed, &ok, &middle, &leaf]),
                untrimmed.cid(),
                false
            ),
            Err(MstError::WrongLayer { .. })
        ));
    }

    #[test]
    fn bounds_and_duplicates() {
        let key = SecretKey::generate(KeyAlgorithm::K256).unwrap();
        let (commit, blocks, _) = repo(100, &key);
        let data = Commit::from_block(&commit).unwrap().data;
        let shallow = WalkOptions {
            limits: MstLimits {
                max_depth: 1,
                ..MstLimits::DEFAULT
            },
            fetch_records: false,
        };
        assert!(matches!(
            walk_mst(&blocks, &data, &shallow, |_| Ok(())),
            Err(MstError::TooDeep { max: 1, .. })
        ));
        let narrow = WalkOptions {
            limits: MstLimits {
                max_entries: 1,
                ..MstLimits::DEFAULT
            },
            fetch_records: false,
        };
        assert!(matches!(
            walk_mst(&blocks, &data, &narrow, |_| Ok(())),
            Err(MstError::MalformedNode { .. })
        ));

        // One subtree linked twice.
        let upper = keys_on_layer(1, 3).remove(2);
        let lower: Vec<String> = keys_on_layer(0, 50)
            .into_iter()
            .filter(|k| *k < upper)
            .take(1)
            .collect();
        let child = node_block(None, &[(&lower[0], 0, None)]);
        let root = node_block(Some(*child.cid()), &[(&upper, 0, Some(*child.cid()))]);
        let err = walk(&getter(&[&root, &child]), root.cid(), false).unwrap_err();
        assert!(
            matches!(&err, MstError::DuplicateNode { cid } if cid == child.cid()),
            "{err}"
        );
    }

    #[test]
    fn errors_stay_small() {
        // Under clippy's `result_large_err` threshold, as `car::CarError` is.
        assert!(std::mem::size_of::<MstError>() <= 128);
        assert!(std::mem::size_of::<CommitError>() <= 128);
    }

    #[test]
    fn store_failures_and_lies_are_errors() {
        struct Liar(Block);
        impl BlockGetter for Liar {
            fn get_block(&self, _: &Cid) -> Result<Option<Block>, StoreError> {
                Ok(Some(self.0.clone()))
            }
        }
        struct Broken;
        impl BlockGetter for Broken {
            fn get_block(&self, _: &Cid) -> Result<Option<Block>, StoreError> {
                Err(StoreError::new("disk on fire"))
            }
        }
        let root = cid_sha256(DAG_CBOR, b"root");
        let opts = WalkOptions::default();
        assert!(matches!(
            walk_mst(&Liar(record("x")), &root, &opts, |_| Ok(())),
            Err(MstError::HashMismatch { cid }) if cid == root
        ));
        assert!(matches!(
            walk_mst(&Broken, &root, &opts, |_| Ok(())),
            Err(MstError::Store { .. })
        ));
        // A visitor's error stops the walk.
        let (root, blocks) = build_mst(&BTreeMap::from([("a.b/c".to_string(), root)])).unwrap();
        let getter: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
        assert!(matches!(
            walk_mst(&getter, &root, &opts, |_| Err(StoreError::new("stop"))),
            Err(MstError::Visitor(_))
        ));
    }
}
