//! UCAN 0.9.1 in the dag-ucan IPLD form, the token format of ucanto.
//!
//! A UCAN is a DAG-CBOR block (`v, iss, aud, s, att, prf, exp, fct?, nnc?, nbf?`) whose CID names
//! it. `iss`/`aud` are principal bytes ([`crate::principal::did_to_bytes`]), `s` is a varsig.
//! The signature does **not** cover the CBOR bytes: it covers the JWT-form string
//! `base64url(dag-json header) "." base64url(dag-json payload)` rebuilt from the decoded model,
//! with DIDs as strings, proofs as CID strings, and `fct`/`nnc`/`nbf` left out when empty or
//! zero ([`Ucan::signing_payload`]). This mirrors `@ipld/dag-ucan` 3.x, including its quirks:
//! abilities are lower-cased when read, `exp` must be present (an integer or `null` = never),
//! an empty nonce is kept in CBOR but dropped from the signed payload.
//!
//! [`Delegation`] is a UCAN together with the blocks that travelled with it (its proofs,
//! recursively, and attached blocks), which is how ucanto passes delegations and invocations
//! around; an invocation is a delegation with one capability. [`Delegation::archive`] /
//! [`Delegation::extract`] read and write the CAR archives the Storacha CLI produces
//! (`delegation create … --output file.car`): root `{"ucan@0.9.1": <delegation CID>}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::car::{self, CarError, CarLimits};
use crate::ipld::{self, Block, DAG_CBOR, Ipld, IpldError};
use crate::principal::{self, Ed25519Signer, PrincipalError, Signature, Verifier};

/// The UCAN version dag-ucan writes and ucanto speaks.
pub const VERSION: &str = "0.9.1";

/// Why a UCAN or delegation could not be read or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UcanError {
    /// The block is not DAG-CBOR or does not have the UCAN shape.
    #[error("malformed UCAN {cid}: {reason}")]
    Malformed {
        /// The block's CID.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// The UCAN block is not DAG-CBOR (dag-ucan's JWT form is not accepted).
    #[error(
        "unsupported UCAN encoding for {cid}: codec 0x{codec:x} (only DAG-CBOR UCANs are accepted)"
    )]
    UnsupportedCodec {
        /// The CID.
        cid: Cid,
        /// Its codec.
        codec: u64,
    },
    /// A principal or signature inside the UCAN is malformed.
    #[error("malformed UCAN {cid}: {source}")]
    Principal {
        /// The block's CID.
        cid: Cid,
        /// What went wrong.
        #[source]
        source: Box<PrincipalError>,
    },
    /// A block the delegation needs is not among the blocks we were given.
    #[error("block {0} is missing")]
    MissingBlock(Cid),
    /// The archive CAR could not be read.
    #[error("invalid delegation archive: {0}")]
    Car(#[from] CarError),
    /// The archive's root is not a `{"ucan@<version>": link}` variant.
    #[error("invalid delegation archive: {0}")]
    NotAnArchive(String),
    /// A value could not be encoded.
    #[error(transparent)]
    Ipld(#[from] IpldError),
}

/// One capability of a UCAN's `att`: an ability (`can`) on a resource (`with`) with optional
/// caveats (`nb`). Any other fields are kept in `extra` so re-encoding and the signing payload
/// stay exact.
#[derive(Clone, Debug, PartialEq)]
pub struct Capability {
    /// The ability, e.g. `clock/advance` (lower-cased, as dag-ucan reads it).
    pub can: String,
    /// The resource URI, e.g. the clock's DID.
    pub with: String,
    /// Caveats, e.g. `{event: <CID>}`.
    pub nb: Option<BTreeMap<String, Ipld>>,
    /// Fields other than `can`, `with` and `nb`, kept verbatim.
    pub extra: BTreeMap<String, Ipld>,
}

impl Capability {
    /// A capability with no caveats.
    pub fn new(can: impl Into<String>, with: impl Into<String>) -> Self {
        Self {
            can: can.into(),
            with: with.into(),
            nb: None,
            extra: BTreeMap::new(),
        }
    }

    /// Adds caveats.
    pub fn with_nb(mut self, nb: BTreeMap<String, Ipld>) -> Self {
        self.nb = Some(nb);
        self
    }

    /// The capability as an IPLD map (what is encoded and signed).
    pub fn to_ipld(&self) -> BTreeMap<String, Ipld> {
        let mut m = self.extra.clone();
        m.insert("can".into(), Ipld::String(self.can.clone()));
        m.insert("with".into(), Ipld::String(self.with.clone()));
        if let Some(nb) = &self.nb {
            m.insert("nb".into(), Ipld::Map(nb.clone()));
        }
        m
    }

    fn from_ipld(mut m: BTreeMap<String, Ipld>) -> Result<Self, String> {
        let can = match m.remove("can") {
            Some(Ipld::String(s)) => read_ability(&s)?,
            other => {
                return Err(format!(
                    "capability has invalid 'can: {}', value must be a string",
                    describe(other.as_ref())
                ));
            }
        };
        let with = match m.remove("with") {
            Some(Ipld::String(s)) if is_uri(&s) => s,
            Some(Ipld::String(s)) => {
                return Err(format!(
                    "capability has invalid 'with: \"{s}\"', value must be a valid URI string"
                ));
            }
            other => {
                return Err(format!(
                    "capability has invalid 'with: {}', value must be a string",
                    describe(other.as_ref())
                ));
            }
        };
        let nb = match m.remove("nb") {
            None => None,
            Some(Ipld::Map(nb)) => Some(nb),
            Some(other) => {
                // Not something ucanto itself produces; keep it verbatim so the bytes and the
                // signing payload stay exact, and let capability parsing reject it later.
                m.insert("nb".into(), other);
                None
            }
        };
        Ok(Self {
            can,
            with,
            nb,
            extra: m,
        })
    }
}

fn describe(v: Option<&Ipld>) -> String {
    match v {
        None => "undefined".into(),
        Some(v) => format!("{v:?}"),
    }
}

/// dag-ucan's rule: an ability is `*` or has a `/` that is neither first nor last; it is
/// lower-cased.
fn read_ability(s: &str) -> Result<String, String> {
    let inner = if s.len() >= 2 { &s[1..s.len() - 1] } else { "" };
    if s.is_char_boundary(1) && s.len() >= 2 && inner.contains('/') {
        Ok(s.to_lowercase())
    } else if s == "*" {
        Ok(s.to_string())
    } else {
        Err(format!(
            "capability has invalid 'can: \"{s}\"', value must have at least one path segment"
        ))
    }
}

/// A loose URI check in the spirit of the WHATWG parser dag-ucan uses: a scheme, then `:`.
fn is_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The DAG-CBOR shape of a UCAN block.
#[derive(Serialize, Deserialize)]
struct UcanModel {
    v: String,
    #[serde(with = "serde_bytes")]
    iss: Vec<u8>,
    #[serde(with = "serde_bytes")]
    aud: Vec<u8>,
    #[serde(with = "serde_bytes")]
    s: Vec<u8>,
    att: Vec<BTreeMap<String, Ipld>>,
    #[serde(default)]
    prf: Option<Vec<Cid>>,
    #[serde(default = "missing_exp")]
    exp: Ipld,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fct: Option<Vec<BTreeMap<String, Ipld>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nnc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

/// Marks an absent `exp` (dag-ucan requires the field, `null` meaning "never").
fn missing_exp() -> Ipld {
    Ipld::Bool(false)
}

/// The DAG-JSON payload that is signed. Field names are in DAG-JSON (bytewise) order.
#[derive(Serialize)]
struct SignedPayload<'a> {
    att: Vec<BTreeMap<String, Ipld>>,
    aud: &'a str,
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fct: Option<&'a [BTreeMap<String, Ipld>]>,
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nnc: Option<&'a str>,
    prf: Vec<String>,
}

/// A decoded, immutable UCAN with the block it came from.
#[derive(Clone, Debug)]
pub struct Ucan {
    block: Block,
    version: String,
    issuer: String,
    issuer_bytes: Vec<u8>,
    audience: String,
    signature: Signature,
    capabilities: Vec<Capability>,
    proofs: Vec<Cid>,
    expiration: Option<i64>,
    not_before: Option<i64>,
    nonce: Option<String>,
    facts: Vec<BTreeMap<String, Ipld>>,
}

impl PartialEq for Ucan {
    fn eq(&self, other: &Self) -> bool {
        self.block == other.block
    }
}

impl Ucan {
    /// Decodes a UCAN block. The block's hash was checked when it was built.
    pub fn decode(block: Block) -> Result<Self, UcanError> {
        let cid = *block.cid();
        if cid.codec() != DAG_CBOR {
            return Err(UcanError::UnsupportedCodec {
                cid,
                codec: cid.codec(),
            });
        }
        let malformed = |reason: String| UcanError::Malformed { cid, reason };
        let model: UcanModel =
            ipld::decode_dag_cbor(block.bytes()).map_err(|e| malformed(e.to_string()))?;
        if !is_version(&model.v) {
            return Err(malformed(format!("invalid version 'v: {:?}'", model.v)));
        }
        let principal = |source| UcanError::Principal {
            cid,
            source: Box::new(source),
        };
        let issuer = principal::did_from_bytes(&model.iss).map_err(principal)?;
        let audience = principal::did_from_bytes(&model.aud).map_err(principal)?;
        let signature = Signature::decode(&model.s).map_err(principal)?;
        let expiration = match model.exp {
            Ipld::Null => None,
            Ipld::Integer(n) => {
                Some(i64::try_from(n).map_err(|_| malformed("exp is out of range".to_string()))?)
            }
            Ipld::Bool(false) => return Err(malformed("exp is missing".to_string())),
            other => {
                return Err(malformed(format!(
                    "expected exp to be integer, instead got {other:?}"
                )));
            }
        };
        let capabilities = model
            .att
            .into_iter()
            .map(Capability::from_ipld)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        Ok(Self {
            version: model.v,
            issuer,
            issuer_bytes: model.iss,
            audience,
            signature,
            capabilities,
            proofs: model.prf.unwrap_or_default(),
            expiration,
            not_before: model.nbf,
            nonce: model.nnc,
            facts: model.fct.unwrap_or_default(),
            block,
        })
    }

    /// Starts building a UCAN issued by `issuer` to `audience`.
    pub fn builder(issuer: &Ed25519Signer, audience: impl Into<String>) -> UcanBuilder<'_> {
        UcanBuilder {
            issuer,
            audience: audience.into(),
            capabilities: Vec::new(),
            expiration: None,
            not_before: None,
            nonce: None,
            facts: Vec::new(),
            proofs: Vec::new(),
        }
    }

    /// The UCAN's CID.
    pub fn cid(&self) -> &Cid {
        self.block.cid()
    }

    /// The UCAN's block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The UCAN version (`0.9.1`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The issuer's DID.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience's DID.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The capabilities (`att`).
    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    /// Links to the proofs (`prf`).
    pub fn proofs(&self) -> &[Cid] {
        &self.proofs
    }

    /// Expiry in Unix seconds; `None` means it never expires.
    pub fn expiration(&self) -> Option<i64> {
        self.expiration
    }

    /// Not valid before, in Unix seconds.
    pub fn not_before(&self) -> Option<i64> {
        self.not_before
    }

    /// The nonce.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// The facts (`fct`).
    pub fn facts(&self) -> &[BTreeMap<String, Ipld>] {
        &self.facts
    }

    /// The JWT-form string the signature covers.
    pub fn signing_payload(&self) -> Result<Vec<u8>, UcanError> {
        signing_payload(
            &self.version,
            self.signature.algorithm(),
            &PayloadFields {
                issuer: &self.issuer,
                audience: &self.audience,
                capabilities: &self.capabilities,
                expiration: self.expiration,
                not_before: self.not_before,
                nonce: self.nonce.as_deref(),
                facts: &self.facts,
                proofs: &self.proofs,
            },
        )
    }

    /// True when the signature is `verifier`'s over [`Self::signing_payload`].
    pub fn verify_signature(&self, verifier: &Verifier) -> bool {
        match self.signing_payload() {
            Ok(payload) => verifier.verify(&payload, &self.signature),
            Err(_) => false,
        }
    }

    /// The check [`Self::verify_self_signed`] makes, prepared for batch verification
    /// ([`crate::principal::verify_batch`]): `None` unless the issuer is an Ed25519 `did:key`
    /// and the signature an Ed25519 one (anything else is judged by the validator as usual).
    pub fn self_signature_check(&self) -> Option<crate::principal::SignatureCheck> {
        // The key bytes as they are: a key that is no curve point fails the check, as it fails
        // `issuer_key`.
        let key = Verifier::ed25519_key_of(&self.issuer_bytes)?;
        let payload = self.signing_payload().ok()?;
        crate::principal::SignatureCheck::new(key, &payload, &self.signature)
    }

    /// When the issuer is a `did:key`, its verifier (decoded from the `iss` bytes directly).
    pub fn issuer_key(&self) -> Result<Verifier, PrincipalError> {
        Verifier::from_principal_bytes(&self.issuer_bytes, &self.issuer)
    }

    /// True when the issuer is a `did:key` and signed this UCAN.
    pub fn verify_self_signed(&self) -> bool {
        self.issuer_key()
            .map(|v| self.verify_signature(&v))
            .unwrap_or(false)
    }

    /// Links that may be attached to this UCAN as blocks, in ucanto's order: every link inside
    /// the capabilities (recursively), then every link that is a fact's value.
    pub fn attached_links(&self) -> Vec<Cid> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut push = |cid: &Cid| {
            if seen.insert(*cid) {
                out.push(*cid);
            }
        };
        for cap in &self.capabilities {
            for (_, v) in cap.to_ipld() {
                collect_links(&v, &mut push);
            }
        }
        for fact in &self.facts {
            for v in fact.values() {
                if let Ipld::Link(cid) = v {
                    push(cid);
                }
            }
        }
        out
    }
}

/// The archive bytes inside a CIDv1 with codec CAR and an identity multihash.
fn identity_car_payload(bytes: &[u8]) -> Option<&[u8]> {
    use unsigned_varint::decode::u64 as read;
    let (version, rest) = read(bytes).ok()?;
    let (codec, rest) = read(rest).ok()?;
    let (hash, rest) = read(rest).ok()?;
    let (len, rest) = read(rest).ok()?;
    (version == 1 && codec == ipld::CAR && hash == ipld::IDENTITY && rest.len() as u64 == len)
        .then_some(rest)
}

fn collect_links(v: &Ipld, push: &mut impl FnMut(&Cid)) {
    match v {
        Ipld::Link(cid) => push(cid),
        Ipld::List(items) => items.iter().for_each(|i| collect_links(i, push)),
        Ipld::Map(m) => m.values().for_each(|i| collect_links(i, push)),
        _ => {}
    }
}

fn is_version(v: &str) -> bool {
    // dag-ucan: /\d+\.\d+\.\d+/ anywhere in the string.
    let parts: Vec<&str> = v.split('.').collect();
    parts.windows(3).any(|w| {
        w[0].chars().last().is_some_and(|c| c.is_ascii_digit())
            && !w[1].is_empty()
            && w[1].chars().all(|c| c.is_ascii_digit())
            && w[2].chars().next().is_some_and(|c| c.is_ascii_digit())
    })
}

struct PayloadFields<'a> {
    issuer: &'a str,
    audience: &'a str,
    capabilities: &'a [Capability],
    expiration: Option<i64>,
    not_before: Option<i64>,
    nonce: Option<&'a str>,
    facts: &'a [BTreeMap<String, Ipld>],
    proofs: &'a [Cid],
}

/// The DAG-JSON JWT header of an Ed25519 dag-ucan 0.9.1 UCAN.
const ED25519_V091_HEADER: &[u8] = br#"{"alg":"EdDSA","typ":"JWT","ucv":"0.9.1"}"#;

fn signing_payload(
    version: &str,
    alg: &str,
    fields: &PayloadFields<'_>,
) -> Result<Vec<u8>, UcanError> {
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'a str,
        typ: &'a str,
        ucv: &'a str,
    }
    // The header of almost every UCAN here: Ed25519, version 0.9.1 (its DAG-JSON, as the
    // general path below writes it, is checked by a test).
    let header = if alg == "EdDSA" && version == "0.9.1" {
        ED25519_V091_HEADER.to_vec()
    } else {
        ipld::encode_dag_json(&Header {
            alg,
            typ: "JWT",
            ucv: version,
        })?
    };
    let payload = ipld::encode_dag_json(&SignedPayload {
        att: fields
            .capabilities
            .iter()
            .map(Capability::to_ipld)
            .collect(),
        aud: fields.audience,
        exp: fields.expiration,
        fct: (!fields.facts.is_empty()).then_some(fields.facts),
        iss: fields.issuer,
        nbf: fields.not_before.filter(|n| *n != 0),
        nnc: fields.nonce.filter(|n| !n.is_empty()),
        prf: fields.proofs.iter().map(Cid::to_string).collect(),
    })?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 4);
    b64.encode_string(&header, &mut out);
    out.push('.');
    b64.encode_string(&payload, &mut out);
    Ok(out.into_bytes())
}

/// Builds and signs a UCAN. Time is not read here (the crate is pure): pass `expiration`
/// explicitly; without it the UCAN never expires (`exp: null`).
#[must_use]
pub struct UcanBuilder<'a> {
    issuer: &'a Ed25519Signer,
    audience: String,
    capabilities: Vec<Capability>,
    expiration: Option<i64>,
    not_before: Option<i64>,
    nonce: Option<String>,
    facts: Vec<BTreeMap<String, Ipld>>,
    proofs: Vec<Cid>,
}

impl UcanBuilder<'_> {
    /// Adds a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }

    /// Sets the expiry (Unix seconds).
    pub fn expiration(mut self, exp: i64) -> Self {
        self.expiration = Some(exp);
        self
    }

    /// Sets not-before (Unix seconds).
    pub fn not_before(mut self, nbf: i64) -> Self {
        self.not_before = Some(nbf);
        self
    }

    /// Sets the nonce.
    pub fn nonce(mut self, nonce: impl Into<String>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// Adds a fact.
    pub fn fact(mut self, fact: BTreeMap<String, Ipld>) -> Self {
        self.facts.push(fact);
        self
    }

    /// Adds a proof link.
    pub fn proof(mut self, proof: Cid) -> Self {
        self.proofs.push(proof);
        self
    }

    /// Signs and encodes the UCAN.
    pub fn sign(self) -> Result<Ucan, UcanError> {
        let payload = signing_payload(
            VERSION,
            "EdDSA",
            &PayloadFields {
                issuer: self.issuer.did(),
                audience: &self.audience,
                capabilities: &self.capabilities,
                expiration: self.expiration,
                not_before: self.not_before,
                nonce: self.nonce.as_deref(),
                facts: &self.facts,
                proofs: &self.proofs,
            },
        )?;
        let signature = self.issuer.sign(&payload);
        let to_bytes = |did: &str| {
            principal::did_to_bytes(did).map_err(|e| UcanError::Malformed {
                cid: Cid::default(),
                reason: e.to_string(),
            })
        };
        let model = UcanModel {
            v: VERSION.to_string(),
            iss: to_bytes(self.issuer.did())?,
            aud: to_bytes(&self.audience)?,
            s: signature.encode(),
            att: self.capabilities.iter().map(Capability::to_ipld).collect(),
            prf: Some(self.proofs),
            exp: self
                .expiration
                .map_or(Ipld::Null, |e| Ipld::Integer(e.into())),
            fct: (!self.facts.is_empty()).then_some(self.facts),
            nnc: self.nonce,
            nbf: self.not_before.filter(|n| *n != 0),
        };
        Ucan::decode(Block::encode(&model)?)
    }
}

/// A block store shared by a delegation and all its proofs.
pub type BlockStore = Arc<HashMap<Cid, Block>>;

/// A proof link of a delegation, resolved against the blocks that came with it.
#[derive(Clone, Debug)]
pub enum Proof {
    /// The proof's block was present and decodes.
    Delegation(Delegation),
    /// The proof's block was not among the blocks.
    Unavailable(Cid),
    /// The block was present but is not a UCAN.
    Malformed {
        /// The proof's CID.
        cid: Cid,
        /// Why it failed to decode.
        reason: String,
    },
}

/// A UCAN with the blocks that travelled with it: its proofs (recursively) and attached blocks.
/// Invocations are delegations with one capability.
#[derive(Clone, Debug)]
pub struct Delegation {
    ucan: Arc<Ucan>,
    blocks: BlockStore,
}

impl Delegation {
    /// A delegation from a decoded UCAN and a store holding its proofs and attachments.
    pub fn new(ucan: Ucan, blocks: BlockStore) -> Self {
        Self {
            ucan: Arc::new(ucan),
            blocks,
        }
    }

    /// The delegation rooted at `root` in `blocks`.
    pub fn from_store(root: &Cid, blocks: BlockStore) -> Result<Self, UcanError> {
        let block = blocks
            .get(root)
            .cloned()
            .ok_or(UcanError::MissingBlock(*root))?;
        Ok(Self::new(Ucan::decode(block)?, blocks))
    }

    /// Issues a delegation carrying `proofs` (their blocks travel with it) and `attached` blocks.
    pub fn issue(
        builder: UcanBuilder<'_>,
        proofs: &[Delegation],
        attached: &[Block],
    ) -> Result<Self, UcanError> {
        let mut builder = builder;
        let mut store = HashMap::new();
        for p in proofs {
            builder = builder.proof(*p.cid());
            for b in p.export() {
                store.entry(*b.cid()).or_insert(b);
            }
        }
        for b in attached {
            store.insert(*b.cid(), b.clone());
        }
        let ucan = builder.sign()?;
        store.insert(*ucan.cid(), ucan.block().clone());
        Ok(Self::new(ucan, Arc::new(store)))
    }

    /// The root UCAN.
    pub fn ucan(&self) -> &Ucan {
        &self.ucan
    }

    /// The root UCAN's CID.
    pub fn cid(&self) -> &Cid {
        self.ucan.cid()
    }

    /// Every block that came with the delegation.
    pub fn blocks(&self) -> &BlockStore {
        &self.blocks
    }

    /// A block that came with the delegation.
    pub fn block(&self, cid: &Cid) -> Option<&Block> {
        self.blocks.get(cid)
    }

    /// The proofs, resolved against the delegation's blocks, in `prf` order.
    pub fn proofs(&self) -> Vec<Proof> {
        self.ucan
            .proofs()
            .iter()
            .map(|cid| match self.blocks.get(cid) {
                None => Proof::Unavailable(*cid),
                Some(block) => match Ucan::decode(block.clone()) {
                    Ok(ucan) => Proof::Delegation(Self::new(ucan, self.blocks.clone())),
                    Err(e) => Proof::Malformed {
                        cid: *cid,
                        reason: e.to_string(),
                    },
                },
            })
            .collect()
    }

    /// Attached blocks that are present, in [`Ucan::attached_links`] order.
    pub fn attached_blocks(&self) -> Vec<Block> {
        self.ucan
            .attached_links()
            .iter()
            .filter_map(|cid| self.blocks.get(cid).cloned())
            .collect()
    }

    /// The delegation's blocks in ucanto's export order: each present proof's DAG (its own
    /// proofs first), then attached blocks, then the root. Blocks may repeat when two proofs
    /// share one; writers skip repeats.
    pub fn export(&self) -> Vec<Block> {
        let mut out = Vec::new();
        for cid in self.ucan.proofs() {
            self.export_proof(cid, &mut out, 0);
        }
        out.extend(self.attached_blocks());
        out.push(self.ucan.block().clone());
        out
    }

    fn export_proof(&self, cid: &Cid, out: &mut Vec<Block>, depth: usize) {
        // A depth bound keeps a hostile proof cycle (impossible with hashes, but cheap to guard)
        // or an absurdly deep chain from exhausting the stack.
        const MAX_EXPORT_DEPTH: usize = 64;
        let Some(block) = self.blocks.get(cid) else {
            return;
        };
        if depth < MAX_EXPORT_DEPTH
            && let Ok(ucan) = Ucan::decode(block.clone())
        {
            for p in ucan.proofs() {
                self.export_proof(p, out, depth + 1);
            }
        }
        out.push(block.clone());
    }

    /// The delegation as a CAR archive (root `{"ucan@0.9.1": <CID>}`), byte-identical to
    /// ucanto's `Delegation.archive`.
    pub fn archive(&self) -> Result<Vec<u8>, UcanError> {
        let mut variant = BTreeMap::new();
        variant.insert(
            format!("ucan@{}", self.ucan.version()),
            Ipld::Link(*self.cid()),
        );
        let variant = Block::encode(&Ipld::Map(variant))?;
        let mut blocks = self.export();
        blocks.push(variant.clone());
        let mut seen = HashSet::new();
        blocks.retain(|b| seen.insert(*b.cid()));
        Ok(car::encode_car(&[*variant.cid()], blocks.iter()))
    }

    /// The text form `@storacha/client/proof` parses and `storacha delegation create --base64`
    /// prints: multibase base64 of a CIDv1 with codec CAR and an identity multihash over the
    /// archive bytes.
    pub fn to_proof_text(&self) -> Result<String, UcanError> {
        let archive = self.archive()?;
        let mut bytes = Vec::with_capacity(archive.len() + 8);
        let mut buf = unsigned_varint::encode::u64_buffer();
        for n in [1, ipld::CAR, ipld::IDENTITY, archive.len() as u64] {
            bytes.extend_from_slice(unsigned_varint::encode::u64(n, &mut buf));
        }
        bytes.extend_from_slice(&archive);
        Ok(multibase::encode(multibase::Base::Base64, bytes))
    }

    /// Parses the text form of a delegation: the identity-CID form of [`Self::to_proof_text`], or
    /// the legacy form, base64 of a plain archive CAR.
    pub fn parse_proof_text(text: &str) -> Result<Self, UcanError> {
        let text = text.trim();
        let not_text =
            |why: &str| UcanError::NotAnArchive(format!("invalid delegation text: {why}"));
        if let Ok((_, bytes)) = multibase::decode(text)
            && let Some(archive) = identity_car_payload(&bytes)
        {
            return Self::extract(archive);
        }
        let legacy = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| not_text("neither an identity CID of a CAR nor base64 of a CAR"))?;
        Self::extract(&legacy)
    }

    /// Reads a delegation archive (what `storacha delegation create --output` writes).
    pub fn extract(bytes: &[u8]) -> Result<Self, UcanError> {
        let (roots, blocks) = car::decode_car(bytes, &CarLimits::default())?;
        let root = roots.first().ok_or_else(|| {
            UcanError::NotAnArchive("CAR archive does not contain a root block".into())
        })?;
        let store: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
        let variant = store
            .get(root)
            .ok_or_else(|| UcanError::NotAnArchive(format!("root block {root} is missing")))?;
        let link = match variant.decode::<Ipld>() {
            Ok(Ipld::Map(m)) if m.len() == 1 => match m.into_iter().next() {
                Some((k, Ipld::Link(cid))) if k.starts_with("ucan@") => cid,
                _ => {
                    return Err(UcanError::NotAnArchive(
                        "root is not a {\"ucan@<version>\": link} variant".into(),
                    ));
                }
            },
            _ => {
                return Err(UcanError::NotAnArchive(
                    "root is not a {\"ucan@<version>\": link} variant".into(),
                ));
            }
        };
        Self::from_store(&link, Arc::new(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_header_is_what_dag_json_writes() {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'a str,
            typ: &'a str,
            ucv: &'a str,
        }
        let encoded = ipld::encode_dag_json(&Header {
            alg: "EdDSA",
            typ: "JWT",
            ucv: "0.9.1",
        })
        .unwrap();
        assert_eq!(encoded, ED25519_V091_HEADER);
    }

    fn signer(n: u8) -> Ed25519Signer {
        Ed25519Signer::from_seed(&[n; 32])
    }

    #[test]
    fn issue_decode_verify() {
        let alice = signer(1);
        let bob = signer(2);
        let ucan = Ucan::builder(&alice, bob.did())
            .capability(Capability::new("clock/head", alice.did()))
            .expiration(2_000_000_000)
            .nonce("n")
            .sign()
            .unwrap();
        let back = Ucan::decode(ucan.block().clone()).unwrap();
        assert_eq!(back.issuer(), alice.did());
        assert_eq!(back.audience(), bob.did());
        assert_eq!(back.expiration(), Some(2_000_000_000));
        assert!(back.verify_self_signed());
        assert!(back.verify_signature(&alice.verifier()));
        assert!(!back.verify_signature(&bob.verifier()));
    }

    #[test]
    fn signing_payload_matches_dag_ucan() {
        // The exact payload @ipld/dag-ucan formats for the golden head invocation
        // (research runnable-anchors.md §2.1).
        let agent = signer(1);
        let service = signer(2);
        let ucan = Ucan::builder(&agent, service.did())
            .capability(Capability::new("clock/head", agent.did()))
            .expiration(2_000_000_000)
            .nonce("n")
            .sign()
            .unwrap();
        let payload = String::from_utf8(ucan.signing_payload().unwrap()).unwrap();
        let (h, p) = payload.split_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(
            b64.decode(h).unwrap(),
            br#"{"alg":"EdDSA","typ":"JWT","ucv":"0.9.1"}"#
        );
        assert_eq!(
            String::from_utf8(b64.decode(p).unwrap()).unwrap(),
            r#"{"att":[{"can":"clock/head","with":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX"}],"aud":"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH","exp":2000000000,"iss":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","nnc":"n","prf":[]}"#
        );
        assert_eq!(
            ucan.cid().to_string(),
            "bafyreiajmkiudhdfjibbubbnw3t4t4ozg3zb6d2rdm54ah4v7hrxt2jvca"
        );
    }

    #[test]
    fn never_expiring_ucan_encodes_null() {
        let a = signer(3);
        let u = Ucan::builder(&a, a.did())
            .capability(Capability::new("*", a.did()))
            .sign()
            .unwrap();
        assert_eq!(u.expiration(), None);
        assert!(u.verify_self_signed());
    }

    #[test]
    fn malformed_capabilities_are_rejected() {
        assert!(read_ability("clock").is_err());
        assert!(read_ability("/clock").is_err());
        assert_eq!(read_ability("Clock/Head").unwrap(), "clock/head");
        assert!(read_ability("*").is_ok());
        assert!(is_uri("did:key:z6Mk"));
        assert!(!is_uri("not a uri"));
        assert!(is_version("0.9.1"));
        assert!(!is_version("nine"));
    }

    #[test]
    fn delegation_chain_exports_proofs_first() {
        let space = signer(1);
        let alice = signer(4);
        let bob = signer(5);
        let d1 = Delegation::issue(
            Ucan::builder(&space, alice.did())
                .capability(Capability::new("clock/*", space.did()))
                .expiration(2_000_000_000),
            &[],
            &[],
        )
        .unwrap();
        let d2 = Delegation::issue(
            Ucan::builder(&alice, bob.did())
                .capability(Capability::new("clock/head", space.did()))
                .expiration(2_000_000_000),
            std::slice::from_ref(&d1),
            &[],
        )
        .unwrap();
        let order: Vec<Cid> = d2.export().iter().map(|b| *b.cid()).collect();
        assert_eq!(order, vec![*d1.cid(), *d2.cid()]);
        match &d2.proofs()[..] {
            [Proof::Delegation(p)] => assert_eq!(p.cid(), d1.cid()),
            other => panic!("unexpected proofs {other:?}"),
        }
        let archive = d2.archive().unwrap();
        let back = Delegation::extract(&archive).unwrap();
        assert_eq!(back.cid(), d2.cid());
        assert_eq!(back.archive().unwrap(), archive);
        let text = d2.to_proof_text().unwrap();
        assert!(text.starts_with('m'));
        assert_eq!(Delegation::parse_proof_text(&text).unwrap().cid(), d2.cid());
        let legacy = base64::engine::general_purpose::STANDARD.encode(&archive);
        assert_eq!(
            Delegation::parse_proof_text(&legacy).unwrap().cid(),
            d2.cid()
        );
        assert!(Delegation::parse_proof_text("not a delegation").is_err());
    }
}
