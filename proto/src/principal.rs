//! Principals: who signs and who verifies.
//!
//! - [`Ed25519Signer`]: an Ed25519 key that signs UCANs and receipts. Its identity is its
//!   `did:key` unless wrapped with [`Ed25519Signer::with_did`] (a `did:web`, as Storacha's services
//!   use). It reads and writes ucanto's private-key text format, the `PRIVATE_KEY` string w3clock
//!   takes: multibase base64pad (`M…`) of `varint(0x1300) ‖ secret(32) ‖ varint(0xed) ‖ public(32)`.
//! - [`Verifier`]: checks signatures for a DID. Ed25519 `did:key`s verify directly; a `did:web`
//!   verifies with the key it wraps (configured, never resolved over the network).
//! - [`Signature`]: a varsig, `varint(alg code) ‖ varint(len) ‖ raw [‖ utf8(alg) when
//!   non-standard]`, as dag-ucan encodes it. `did:mailto` accounts sign with the empty
//!   non-standard "absentee" signature and are only trusted through an attestation.
//! - [`SignatureCheck`] / [`verify_batch`]: one Ed25519 check prepared (its hash taken) so many
//!   can be verified together in a batch, which shares the curve arithmetic (about half the cost
//!   per signature at 16, less again when signatures share a key).
//! - [`did_to_bytes`] / [`did_from_bytes`]: the principal byte encoding used in UCAN `iss`/`aud`:
//!   a `did:key` is its multicodec-prefixed public key (`0xed01 ‖ key` for Ed25519); any other DID
//!   is `varint(0x0d1d) ‖ utf8(did without "did:")`.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use ed25519_zebra::VerificationKey;

/// Multicodec of an Ed25519 public key.
pub const ED25519_PUB: u64 = 0xed;
/// Multicodec of an Ed25519 private key (ucanto's key format tag).
pub const ED25519_PRIV: u64 = 0x1300;
/// Multicodec of a compressed P-256 public key.
pub const P256_PUB: u64 = 0x1200;
/// Multicodec of a P-384 public key.
pub const P384_PUB: u64 = 0x1201;
/// Multicodec of a P-521 public key.
pub const P521_PUB: u64 = 0x1202;
/// Multicodec of an RSA public key.
pub const RSA_PUB: u64 = 0x1205;
/// Multicodec of a secp256k1 public key.
pub const SECP256K1_PUB: u64 = 0xe7;
/// Multicodec of a BLS12-381 G1 public key.
pub const BLS12381G1_PUB: u64 = 0xea;
/// Multicodec of a BLS12-381 G2 public key.
pub const BLS12381G2_PUB: u64 = 0xeb;
/// Multicodec marking "a DID spelled out as UTF-8" in principal bytes.
pub const DID_CORE: u64 = 0x0d1d;

/// Varsig code of an EdDSA (Ed25519) signature.
pub const SIG_EDDSA: u64 = 0xd0ed;
/// Varsig code of a signature whose algorithm is named in trailing UTF-8 (absentee uses it).
pub const SIG_NON_STANDARD: u64 = 0xd000;

const DID_KEY_PREFIX: &str = "did:key:";

/// Why a key, DID or signature could not be read, or a signature did not verify.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The string is not a DID.
    #[error("invalid DID {did:?}: {reason}")]
    InvalidDid {
        /// The input (truncated).
        did: String,
        /// Why.
        reason: String,
    },
    /// The principal bytes start with a multicodec that is neither a key nor `did:core`.
    #[error("unsupported DID encoding, unknown multicodec 0x{0:x}")]
    UnknownDidCodec(u64),
    /// The key is of a type we cannot verify with.
    #[error("unsupported key type 0x{code:x} for {did}")]
    UnsupportedKey {
        /// Multicodec of the key.
        code: u64,
        /// Its DID.
        did: String,
    },
    /// The private-key text or bytes are malformed.
    #[error("invalid ed25519 private key: {0}")]
    InvalidPrivateKey(String),
    /// The varsig bytes are malformed.
    #[error("invalid signature encoding: {0}")]
    InvalidSignatureEncoding(String),
    /// The system random source failed.
    #[error("no randomness available to generate a key: {0}")]
    Randomness(String),
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    unsigned_varint::decode::u64(bytes).ok()
}

fn write_varint(n: u64, out: &mut Vec<u8>) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(n, &mut buf));
}

/// A varsig-encoded signature: the algorithm and the raw signature bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    code: u64,
    raw: Vec<u8>,
    /// Only for [`SIG_NON_STANDARD`]: the algorithm name that trails the raw bytes.
    name: Option<String>,
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signature({}, {} bytes)",
            self.algorithm(),
            self.raw.len()
        )
    }
}

impl Signature {
    /// An Ed25519 signature from its 64 raw bytes.
    pub fn ed25519(raw: [u8; 64]) -> Self {
        Self {
            code: SIG_EDDSA,
            raw: raw.to_vec(),
            name: None,
        }
    }

    /// The raw Ed25519 signature, when this is one (EdDSA, 64 bytes).
    fn as_ed25519(&self) -> Option<ed25519_zebra::Signature> {
        if self.code != SIG_EDDSA {
            return None;
        }
        let raw = <[u8; 64]>::try_from(self.raw.as_slice()).ok()?;
        Some(ed25519_zebra::Signature::from_bytes(&raw))
    }

    /// The empty signature of an absentee principal (a `did:mailto` account), which is only ever
    /// trusted through a `ucan/attest` from an authority.
    pub fn absentee() -> Self {
        Self {
            code: SIG_NON_STANDARD,
            raw: Vec::new(),
            name: Some(String::new()),
        }
    }

    /// Decodes varsig bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidSignatureEncoding(why.to_string());
        let (code, rest) = read_varint(bytes).ok_or_else(|| bad("bad algorithm varint"))?;
        let (len, rest) = read_varint(rest).ok_or_else(|| bad("bad length varint"))?;
        let len = usize::try_from(len).map_err(|_| bad("length overflows"))?;
        if rest.len() < len {
            return Err(bad("shorter than its declared length"));
        }
        let (raw, tail) = rest.split_at(len);
        let name = if code == SIG_NON_STANDARD {
            Some(String::from_utf8(tail.to_vec()).map_err(|_| bad("algorithm name is not UTF-8"))?)
        } else if !tail.is_empty() {
            return Err(bad("trailing bytes"));
        } else {
            if algorithm_name(code).is_none() {
                return Err(PrincipalError::InvalidSignatureEncoding(format!(
                    "unknown signature algorithm code 0x{code:x}"
                )));
            }
            None
        };
        Ok(Self {
            code,
            raw: raw.to_vec(),
            name,
        })
    }

    /// Encodes as varsig bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 8);
        write_varint(self.code, &mut out);
        write_varint(self.raw.len() as u64, &mut out);
        out.extend_from_slice(&self.raw);
        if let Some(name) = &self.name {
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    /// The varsig algorithm code.
    pub fn code(&self) -> u64 {
        self.code
    }

    /// The raw signature bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The JWT `alg` name: `EdDSA`, …, or the trailing name of a non-standard signature
    /// (`""` for absentee).
    pub fn algorithm(&self) -> &str {
        match &self.name {
            Some(name) => name,
            None => algorithm_name(self.code).unwrap_or(""),
        }
    }
}

fn algorithm_name(code: u64) -> Option<&'static str> {
    Some(match code {
        0xd0e7 => "ES256K",
        0xd0ea => "BLS12381G1",
        0xd0eb => "BLS12381G2",
        SIG_EDDSA => "EdDSA",
        0xd01200 => "ES256",
        0xd01201 => "ES384",
        0xd01202 => "ES512",
        0xd01205 => "RS256",
        0xd191 => "EIP191",
        _ => return None,
    })
}

/// The principal bytes of a DID, as UCAN `iss`/`aud` carry them.
pub fn did_to_bytes(did: &str) -> Result<Vec<u8>, PrincipalError> {
    let invalid = |reason: &str| PrincipalError::InvalidDid {
        did: truncate(did),
        reason: reason.to_string(),
    };
    let Some(rest) = did.strip_prefix("did:") else {
        return Err(invalid("must start with 'did:'"));
    };
    if let Some(key) = did.strip_prefix(DID_KEY_PREFIX) {
        let (base, bytes) = multibase::decode(key).map_err(|e| invalid(&e.to_string()))?;
        if base != multibase::Base::Base58Btc {
            return Err(invalid("did:key must be base58btc ('z')"));
        }
        // Validate it decodes as a key we can name.
        did_from_bytes(&bytes)?;
        Ok(bytes)
    } else {
        let mut out = Vec::with_capacity(rest.len() + 2);
        write_varint(DID_CORE, &mut out);
        out.extend_from_slice(rest.as_bytes());
        Ok(out)
    }
}

/// The `did:key` of multicodec-prefixed key bytes. Base58 is quadratic in the length (about a
/// microsecond for an Ed25519 key), and a service decodes the same few keys over and over (its
/// own as every invocation's audience, its clients' as issuers), so the strings of recently
/// seen keys are kept: per thread (no lock), at most [`DID_KEY_MEMO`] of them, forgotten all
/// at once when full.
fn did_key_string(bytes: &[u8]) -> String {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static MEMO: RefCell<HashMap<Box<[u8]>, Box<str>>> = RefCell::new(HashMap::new());
    }
    let encode = || {
        format!(
            "{DID_KEY_PREFIX}{}",
            multibase::encode(multibase::Base::Base58Btc, bytes)
        )
    };
    MEMO.try_with(|memo| {
        if let Some(s) = memo.borrow().get(bytes) {
            return s.to_string();
        }
        let s = encode();
        let mut memo = memo.borrow_mut();
        if memo.len() >= DID_KEY_MEMO {
            memo.clear();
        }
        memo.insert(bytes.into(), s.as_str().into());
        s
    })
    .unwrap_or_else(|_| encode())
}

/// How many `did:key` strings each thread remembers (see `did_key_string`).
const DID_KEY_MEMO: usize = 1024;

/// The DID named by principal bytes.
pub fn did_from_bytes(bytes: &[u8]) -> Result<String, PrincipalError> {
    let (code, rest) = read_varint(bytes).ok_or_else(|| PrincipalError::InvalidDid {
        did: format!("{} bytes", bytes.len()),
        reason: "bad multicodec varint".to_string(),
    })?;
    match code {
        P256_PUB if bytes.len() > 35 => Err(PrincipalError::InvalidDid {
            did: format!("{} bytes", bytes.len()),
            reason: "only compressed p256 keys are supported".to_string(),
        }),
        ED25519_PUB | P256_PUB | P384_PUB | P521_PUB | RSA_PUB | SECP256K1_PUB | BLS12381G1_PUB
        | BLS12381G2_PUB => {
            if code == ED25519_PUB && rest.len() != 32 {
                return Err(PrincipalError::InvalidDid {
                    did: format!("{} bytes", bytes.len()),
                    reason: "an ed25519 key is 32 bytes".to_string(),
                });
            }
            Ok(did_key_string(bytes))
        }
        DID_CORE => {
            let s = std::str::from_utf8(rest).map_err(|_| PrincipalError::InvalidDid {
                did: format!("{} bytes", bytes.len()),
                reason: "not UTF-8".to_string(),
            })?;
            Ok(format!("did:{s}"))
        }
        other => Err(PrincipalError::UnknownDidCodec(other)),
    }
}

/// The `did:key` of an Ed25519 public key.
pub fn ed25519_did_key(public: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(34);
    write_varint(ED25519_PUB, &mut bytes);
    bytes.extend_from_slice(public);
    format!(
        "{DID_KEY_PREFIX}{}",
        multibase::encode(multibase::Base::Base58Btc, bytes)
    )
}

/// An Ed25519 signing key with the DID it acts as.
///
/// Signatures are made with AWS-LC (`aws-lc-rs`), whose fixed-base scalar multiplication is
/// about twice as fast as curve25519-dalek's here (a service signs a receipt for every
/// invocation); Ed25519 signing is deterministic (RFC 8032), so the bytes are the ones
/// ed25519-dalek makes, which a test checks. ed25519-dalek keeps the key itself (encoding,
/// the public key) and signs if AWS-LC ever refuses the seed.
#[derive(Clone)]
pub struct Ed25519Signer {
    key: SigningKey,
    fast: Option<std::sync::Arc<aws_lc_rs::signature::Ed25519KeyPair>>,
    key_did: String,
    did: Option<String>,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Ed25519Signer")
            .field("did", &self.did())
            .finish()
    }
}

impl Ed25519Signer {
    /// A signer from a 32-byte secret (ucanto's `ed25519.derive(secret)`).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_did = ed25519_did_key(&key.verifying_key().to_bytes());
        let fast = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .ok()
            .map(std::sync::Arc::new);
        Self {
            key,
            fast,
            key_did,
            did: None,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, PrincipalError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| PrincipalError::Randomness(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Parses ucanto's text format (`Signer.format`: multibase base64pad, `M…`).
    pub fn parse(text: &str) -> Result<Self, PrincipalError> {
        let text = text.trim();
        let (base, bytes) = multibase::decode(text)
            .map_err(|e| PrincipalError::InvalidPrivateKey(format!("not multibase: {e}")))?;
        if !matches!(base, multibase::Base::Base64Pad | multibase::Base::Base64) {
            return Err(PrincipalError::InvalidPrivateKey(
                "expected multibase base64 ('M' or 'm')".to_string(),
            ));
        }
        Self::decode(&bytes)
    }

    /// Decodes the 68 private-key bytes of ucanto's format.
    pub fn decode(bytes: &[u8]) -> Result<Self, PrincipalError> {
        let bad = |why: &str| PrincipalError::InvalidPrivateKey(why.to_string());
        let (tag, rest) = read_varint(bytes).ok_or_else(|| bad("bad key tag"))?;
        if tag != ED25519_PRIV {
            return Err(bad(&format!(
                "expected ed25519 private key tag 0x1300, got 0x{tag:x}"
            )));
        }
        if rest.len() != 32 + 2 + 32 {
            return Err(bad("expected 68 bytes"));
        }
        let seed: [u8; 32] = rest[..32].try_into().expect("length checked");
        let (pub_tag, public) =
            read_varint(&rest[32..]).ok_or_else(|| bad("bad public key tag"))?;
        if pub_tag != ED25519_PUB {
            return Err(bad("expected ed25519 public key tag 0xed"));
        }
        let signer = Self::from_seed(&seed);
        if signer.key.verifying_key().as_bytes() != public {
            return Err(bad("public key does not match the secret"));
        }
        Ok(signer)
    }

    /// The 68 bytes of ucanto's private-key format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(68);
        write_varint(ED25519_PRIV, &mut out);
        out.extend_from_slice(&self.key.to_bytes());
        write_varint(ED25519_PUB, &mut out);
        out.extend_from_slice(self.key.verifying_key().as_bytes());
        out
    }

    /// ucanto's text format (`Signer.format`), what `PRIVATE_KEY` / `CLOCK_PRIVATE_KEY` take.
    pub fn format(&self) -> String {
        let mut s = String::from("M");
        base64::engine::general_purpose::STANDARD.encode_string(self.encode(), &mut s);
        s
    }

    /// The same key acting as another DID (e.g. `did:web:clock.example.com`).
    pub fn with_did(mut self, did: impl Into<String>) -> Result<Self, PrincipalError> {
        let did = did.into();
        if !did.starts_with("did:") {
            return Err(PrincipalError::InvalidDid {
                did: truncate(&did),
                reason: "must start with 'did:'".to_string(),
            });
        }
        self.did = if did == self.key_did { None } else { Some(did) };
        Ok(self)
    }

    /// The DID this signer acts as.
    pub fn did(&self) -> &str {
        self.did.as_deref().unwrap_or(&self.key_did)
    }

    /// The `did:key` of the underlying key.
    pub fn key_did(&self) -> &str {
        &self.key_did
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        if let Some(fast) = &self.fast
            && let Ok(raw) = <[u8; 64]>::try_from(fast.sign(message).as_ref())
        {
            return Signature::ed25519(raw);
        }
        Signature::ed25519(self.key.sign(message).to_bytes())
    }

    /// The verifier for this signer's signatures, under the same DID.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            key: VerificationKey::try_from(self.key.verifying_key().to_bytes())
                .expect("an ed25519 signing key's public key is a curve point"),
            key_did: self.key_did.clone(),
            did: self.did.clone(),
        }
    }
}

/// Verifies signatures made by one Ed25519 key, on behalf of its DID.
///
/// Verification follows ZIP215 (ed25519-zebra): the cofactored equation `[8][s]B = [8]R +
/// [8][k]A`, `s` canonical, `A` and `R` any encodings of curve points. These are the rules of
/// `@noble/ed25519` 1.7 that ucanto's JS verifier uses, so what JS accepts we accept, and they
/// make batch verification ([`verify_batch`]) agree with single verification on every input.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    key: VerificationKey,
    key_did: String,
    did: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("did", &self.did())
            .field("key", &self.key_did)
            .finish()
    }
}

impl Verifier {
    /// A verifier for a `did:key`. Only Ed25519 keys are supported (every Storacha principal
    /// that signs is one); other key types give [`PrincipalError::UnsupportedKey`].
    pub fn parse(did: &str) -> Result<Self, PrincipalError> {
        if !did.starts_with(DID_KEY_PREFIX) {
            return Err(PrincipalError::InvalidDid {
                did: truncate(did),
                reason: "a verifier needs a did:key".to_string(),
            });
        }
        Self::from_principal_bytes(&did_to_bytes(did)?, did)
    }

    /// The raw Ed25519 key in principal bytes (as in a UCAN's `iss`), without decoding the
    /// point (which a batch verification does once per key).
    pub(crate) fn ed25519_key_of(bytes: &[u8]) -> Option<[u8; 32]> {
        match read_varint(bytes)? {
            (ED25519_PUB, rest) => rest.try_into().ok(),
            _ => None,
        }
    }

    /// A verifier from principal bytes (as in a UCAN's `iss`) whose DID is `did`.
    pub(crate) fn from_principal_bytes(bytes: &[u8], did: &str) -> Result<Self, PrincipalError> {
        let (code, rest) = read_varint(bytes).ok_or(PrincipalError::UnknownDidCodec(0))?;
        if code != ED25519_PUB {
            return Err(PrincipalError::UnsupportedKey {
                code,
                did: truncate(did),
            });
        }
        let public: [u8; 32] = rest.try_into().map_err(|_| PrincipalError::InvalidDid {
            did: truncate(did),
            reason: "an ed25519 key is 32 bytes".to_string(),
        })?;
        let key = VerificationKey::try_from(public).map_err(|_| PrincipalError::InvalidDid {
            did: truncate(did),
            reason: "not a valid ed25519 point".to_string(),
        })?;
        Ok(Self {
            key,
            key_did: did.to_string(),
            did: None,
        })
    }

    /// The same key speaking for another DID (a `did:web` backed by this key).
    pub fn with_did(mut self, did: impl Into<String>) -> Self {
        let did = did.into();
        self.did = if did == self.key_did { None } else { Some(did) };
        self
    }

    /// The DID this verifier speaks for.
    pub fn did(&self) -> &str {
        self.did.as_deref().unwrap_or(&self.key_did)
    }

    /// The `did:key` of the key.
    pub fn key_did(&self) -> &str {
        &self.key_did
    }

    /// True when `signature` is a valid Ed25519 signature of `message` by this key (ZIP215
    /// rules, as the type documentation says).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Some(sig) = signature.as_ed25519() else {
            return false;
        };
        self.key.verify(&sig, message).is_ok()
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.into()
    }
}

/// One Ed25519 signature check, prepared for [`verify_batch`]: the key, the signature and the
/// message's challenge hash, so the message itself need not be kept.
#[derive(Clone, Debug)]
pub struct SignatureCheck(ed25519_zebra::batch::Item);

impl SignatureCheck {
    /// The check that `signature` is `public_key`'s Ed25519 signature of `message`; `None` when
    /// the signature is not an Ed25519 one (it can never verify).
    pub fn new(public_key: [u8; 32], message: &[u8], signature: &Signature) -> Option<Self> {
        let sig = signature.as_ed25519()?;
        Some(Self(ed25519_zebra::batch::Item::from((
            ed25519_zebra::VerificationKeyBytes::from(public_key),
            sig,
            message,
        ))))
    }

    /// Verifies this one check on its own (the same verdict [`Verifier::verify`] gives).
    pub fn verify(self) -> bool {
        self.0.verify_single().is_ok()
    }
}

/// Verifies `checks` together and returns each one's verdict, in order. One batch equation
/// (with random 128-bit weights from a thread-local CSPRNG) settles them all when all are valid;
/// when it fails, each is verified on its own to find which, so a batch with a bad signature
/// costs the batch plus the single checks. Under ZIP215 every verdict equals
/// [`SignatureCheck::verify`]'s.
pub fn verify_batch(checks: Vec<SignatureCheck>) -> Vec<bool> {
    match checks.len() {
        0 => return Vec::new(),
        1 => return checks.into_iter().map(SignatureCheck::verify).collect(),
        _ => {}
    }
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for check in &checks {
        batch.queue(check.0.clone());
    }
    if batch.verify(rand::rng()).is_ok() {
        vec![true; checks.len()]
    } else {
        checks.into_iter().map(SignatureCheck::verify).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE_KEY: &str = "MgCYCAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAu0BgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";

    #[test]
    fn aws_lc_signatures_are_dalek_signatures() {
        for i in 0..64u8 {
            let signer = Ed25519Signer::from_seed(&[i.wrapping_mul(37); 32]);
            assert!(signer.fast.is_some());
            let message: Vec<u8> = (0..usize::from(i) * 13).map(|j| j as u8 ^ i).collect();
            let ours = signer.sign(&message);
            let dalek = Signature::ed25519(signer.key.sign(&message).to_bytes());
            assert_eq!(ours, dalek, "message {i}");
            assert!(signer.verifier().verify(&message, &ours));
        }
    }

    #[test]
    fn golden_keys_round_trip() {
        let agent = Ed25519Signer::from_seed(&[1; 32]);
        assert_eq!(
            agent.did(),
            "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX"
        );
        let service = Ed25519Signer::parse(SERVICE_KEY).unwrap();
        assert_eq!(
            service.did(),
            "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
        );
        assert_eq!(service.format(), SERVICE_KEY);
        assert_eq!(Ed25519Signer::from_seed(&[2; 32]).format(), SERVICE_KEY);
    }

    #[test]
    fn did_bytes_round_trip() {
        for did in [
            "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX",
            "did:web:clock.web3.storage",
            "did:mailto:example.com:alice",
        ] {
            let bytes = did_to_bytes(did).unwrap();
            assert_eq!(did_from_bytes(&bytes).unwrap(), did);
        }
        assert_eq!(&did_to_bytes("did:web:x").unwrap()[..2], &[0x9d, 0x1a]);
        assert!(did_to_bytes("web:x").is_err());
        assert!(did_from_bytes(&[0x01, 0x02]).is_err());
    }

    #[test]
    fn signatures_verify_and_reject() {
        let s = Ed25519Signer::from_seed(&[7; 32]);
        let sig = s.sign(b"hello");
        let enc = sig.encode();
        assert_eq!(&enc[..4], &[0xed, 0xa1, 0x03, 0x40]);
        assert_eq!(enc.len(), 68);
        let back = Signature::decode(&enc).unwrap();
        assert_eq!(back.algorithm(), "EdDSA");
        let v = Verifier::parse(s.did()).unwrap();
        assert!(v.verify(b"hello", &back));
        assert!(!v.verify(b"hellO", &back));
        let other = Ed25519Signer::from_seed(&[8; 32]).verifier();
        assert!(!other.verify(b"hello", &back));
    }

    #[test]
    fn absentee_signature_layout() {
        let a = Signature::absentee();
        assert_eq!(a.encode(), vec![0x80, 0xa0, 0x03, 0x00]);
        let back = Signature::decode(&a.encode()).unwrap();
        assert_eq!(back.algorithm(), "");
        assert_eq!(back, a);
    }

    #[test]
    fn did_web_wrapping() {
        let s = Ed25519Signer::from_seed(&[2; 32])
            .with_did("did:web:clock.example.com")
            .unwrap();
        assert_eq!(s.did(), "did:web:clock.example.com");
        assert!(s.key_did().starts_with("did:key:z6Mk"));
        let v = s.verifier();
        assert_eq!(v.did(), "did:web:clock.example.com");
        assert!(v.verify(b"m", &s.sign(b"m")));
    }

    #[test]
    fn malformed_keys_are_named_errors() {
        assert!(matches!(
            Ed25519Signer::parse("Mnotakey"),
            Err(PrincipalError::InvalidPrivateKey(_))
        ));
        assert!(Signature::decode(&[0xed, 0xa1, 0x03, 0x40, 1, 2]).is_err());
        assert!(Verifier::parse("did:web:x").is_err());
    }
}
