//! Receipts: the signed outcome of running an invocation (`ucan/invocation@0.2` as ucanto
//! writes it).
//!
//! A receipt block is DAG-CBOR `{ocm, sig}` with
//! `ocm = {ran: Link, out: {ok: …} | {error: …}, fx: {fork: [Link…], join?: Link}, meta: {…},
//! iss: "<issuer DID>", prf: [Link…]}`, and `sig` a varsig over the DAG-CBOR bytes of `ocm`
//! (not a JWT-form string, unlike UCANs). A receipt travels with the blocks of the invocation it
//! ran, of its effects and of its proofs; [`Receipt::blocks`] yields them in ucanto's order
//! (ran, forks, join, proofs, then the receipt itself), which is what makes our response CARs
//! byte-identical to ucanto's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::ipld::{self, Block, DAG_CBOR, Ipld, IpldError};
use crate::principal::{Ed25519Signer, PrincipalError, Signature, Verifier};
use crate::ucan::{BlockStore, Delegation};

/// Why a receipt could not be read or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The block is not a receipt.
    #[error("malformed receipt {cid}: {reason}")]
    Malformed {
        /// The block's CID.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// The receipt block is not among the blocks we were given.
    #[error("receipt block {0} is missing")]
    Missing(Cid),
    /// Its signature bytes are malformed.
    #[error("malformed receipt signature: {0}")]
    Signature(#[from] PrincipalError),
    /// Encoding failed.
    #[error(transparent)]
    Ipld(#[from] IpldError),
}

/// A receipt's effects: invocations to run next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    /// Concurrent effects.
    pub fork: Vec<Cid>,
    /// The continuation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Cid>,
}

/// The `ocm` part of a receipt, the part that is signed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Outcome {
    ran: Cid,
    out: BTreeMap<String, Ipld>,
    fx: Effects,
    #[serde(default)]
    meta: BTreeMap<String, Ipld>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default)]
    prf: Vec<Cid>,
}

#[derive(Serialize, Deserialize)]
struct ReceiptModel {
    ocm: Outcome,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// What goes into a new receipt besides the issuer and the result.
#[derive(Clone, Debug, Default)]
pub struct ReceiptOptions {
    /// Effects, as delegations so their blocks travel with the receipt.
    pub fork: Vec<Delegation>,
    /// The continuation effect.
    pub join: Option<Delegation>,
    /// Metadata.
    pub meta: BTreeMap<String, Ipld>,
    /// Proofs that the issuer may issue this receipt.
    pub proofs: Vec<Delegation>,
}

/// A signed receipt and the blocks that travel with it.
#[derive(Clone, Debug)]
pub struct Receipt {
    block: Block,
    outcome: Outcome,
    signature: Signature,
    blocks: BlockStore,
    /// For a receipt issued here: [`Self::blocks`], in order, taken from the delegations it was
    /// issued with (so they need not be decoded again from the store).
    issued_blocks: Option<Arc<[Block]>>,
}

/// The DAG-CBOR of a receipt block from its outcome's encoding and the signature's: a map of
/// two keys, `ocm` before `sig` (equal lengths, then bytewise), so the signed bytes are reused
/// as they are instead of encoding the outcome a second time.
fn receipt_block_bytes(outcome: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(outcome.len() + signature.len() + 16);
    out.push(0xa2); // map(2)
    out.extend_from_slice(b"\x63ocm"); // text(3) "ocm"
    out.extend_from_slice(outcome);
    out.extend_from_slice(b"\x63sig"); // text(3) "sig"
    // bytes(n): the major type 2 head, in the shortest form DAG-CBOR requires.
    let n = signature.len();
    match n {
        0..=23 => out.push(0x40 | n as u8),
        24..=0xff => out.extend_from_slice(&[0x58, n as u8]),
        0x100..=0xffff => {
            out.push(0x59);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x5a);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(signature);
    out
}

impl Receipt {
    /// Runs nothing: signs the outcome `out` (`Ok` → `{ok}`, `Err` → `{error}`) of `ran`.
    pub fn issue(
        issuer: &Ed25519Signer,
        ran: &Delegation,
        out: Result<Ipld, Ipld>,
        options: ReceiptOptions,
    ) -> Result<Self, ReceiptError> {
        // The blocks in the order `blocks` gives (ran, forks, join, proofs, then the receipt),
        // and the same set by CID.
        let mut ordered: Vec<Block> = ran.export();
        for f in &options.fork {
            ordered.extend(f.export());
        }
        if let Some(j) = &options.join {
            ordered.extend(j.export());
        }
        for p in &options.proofs {
            ordered.extend(p.export());
        }
        let mut out_map = BTreeMap::new();
        match out {
            Ok(v) => out_map.insert("ok".to_string(), v),
            Err(e) => out_map.insert("error".to_string(), e),
        };
        let outcome = Outcome {
            ran: *ran.cid(),
            out: out_map,
            fx: Effects {
                fork: options.fork.iter().map(|d| *d.cid()).collect(),
                join: options.join.as_ref().map(|d| *d.cid()),
            },
            meta: options.meta,
            iss: Some(issuer.did().to_string()),
            prf: options.proofs.iter().map(|d| *d.cid()).collect(),
        };
        let signed = ipld::encode_dag_cbor(&outcome)?;
        let signature = issuer.sign(&signed);
        let block = Block::from_codec(DAG_CBOR, receipt_block_bytes(&signed, &signature.encode()));
        ordered.push(block.clone());
        let store: HashMap<Cid, Block> = ordered.iter().map(|b| (*b.cid(), b.clone())).collect();
        Ok(Self {
            block,
            outcome,
            signature,
            blocks: Arc::new(store),
            issued_blocks: Some(ordered.into()),
        })
    }

    /// Reads the receipt `root` from `blocks`.
    pub fn from_store(root: &Cid, blocks: BlockStore) -> Result<Self, ReceiptError> {
        let block = blocks
            .get(root)
            .cloned()
            .ok_or(ReceiptError::Missing(*root))?;
        let malformed = |reason: String| ReceiptError::Malformed { cid: *root, reason };
        if root.codec() != DAG_CBOR {
            return Err(malformed(format!(
                "codec 0x{:x} is not DAG-CBOR",
                root.codec()
            )));
        }
        let model: ReceiptModel = block.decode().map_err(|e| malformed(e.to_string()))?;
        let has_ok = model.ocm.out.contains_key("ok");
        let has_err = model.ocm.out.contains_key("error");
        if model.ocm.out.len() != 1 || has_ok == has_err {
            return Err(malformed(
                "out must be exactly one of {ok} or {error}".to_string(),
            ));
        }
        let signature = Signature::decode(&model.sig)?;
        Ok(Self {
            block,
            outcome: model.ocm,
            signature,
            blocks,
            issued_blocks: None,
        })
    }

    /// The receipt's block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The receipt's CID.
    pub fn cid(&self) -> &Cid {
        self.block.cid()
    }

    /// The CID of the invocation this receipt is for.
    pub fn ran(&self) -> &Cid {
        &self.outcome.ran
    }

    /// The invocation this receipt is for, when its blocks came with the receipt.
    pub fn ran_invocation(&self) -> Option<Delegation> {
        Delegation::from_store(&self.outcome.ran, self.blocks.clone()).ok()
    }

    /// The result: `Ok(value)` for `{ok}`, `Err(value)` for `{error}`.
    pub fn out(&self) -> Result<&Ipld, &Ipld> {
        match (self.outcome.out.get("ok"), self.outcome.out.get("error")) {
            (Some(ok), _) => Ok(ok),
            (None, Some(err)) => Err(err),
            (None, None) => unreachable!("checked when built or decoded"),
        }
    }

    /// The effects.
    pub fn fx(&self) -> &Effects {
        &self.outcome.fx
    }

    /// An effect's invocation, when its blocks came with the receipt.
    pub fn effect(&self, cid: &Cid) -> Option<Delegation> {
        Delegation::from_store(cid, self.blocks.clone()).ok()
    }

    /// Metadata.
    pub fn meta(&self) -> &BTreeMap<String, Ipld> {
        &self.outcome.meta
    }

    /// The issuer's DID as written in the receipt.
    pub fn issuer(&self) -> Option<&str> {
        self.outcome.iss.as_deref()
    }

    /// Links to proofs.
    pub fn proofs(&self) -> &[Cid] {
        &self.outcome.prf
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Every block that came with the receipt.
    pub fn store(&self) -> &BlockStore {
        &self.blocks
    }

    /// True when `verifier` signed the DAG-CBOR of `ocm`.
    pub fn verify_signature(&self, verifier: &Verifier) -> bool {
        match ipld::encode_dag_cbor(&self.outcome) {
            Ok(bytes) => verifier.verify(&bytes, &self.signature),
            Err(_) => false,
        }
    }

    /// The receipt's blocks in ucanto's order: the ran invocation's DAG, each fork's, the
    /// join's, each proof's, then the receipt block. Blocks that did not come with the receipt
    /// are skipped.
    pub fn blocks(&self) -> Vec<Block> {
        if let Some(issued) = &self.issued_blocks {
            return issued.to_vec();
        }
        let mut out = Vec::new();
        let mut dag = |cid: &Cid| {
            if let Ok(d) = Delegation::from_store(cid, self.blocks.clone()) {
                out.extend(d.export());
            }
        };
        dag(&self.outcome.ran);
        for f in &self.outcome.fx.fork {
            dag(f);
        }
        if let Some(j) = &self.outcome.fx.join {
            dag(j);
        }
        for p in &self.outcome.prf {
            dag(p);
        }
        out.push(self.block.clone());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ucan::{Capability, Ucan};

    /// The spliced receipt block is the DAG-CBOR serde writes, and an issued receipt's blocks
    /// are the ones a decoded copy of it gives, in the same order (effects and proofs too).
    #[test]
    fn issued_blocks_and_bytes_match_the_decoded_path() {
        let agent = Ed25519Signer::from_seed(&[1; 32]);
        let service = Ed25519Signer::from_seed(&[2; 32]);
        let space = Ed25519Signer::from_seed(&[3; 32]);
        let proof = Delegation::issue(
            Ucan::builder(&space, agent.did())
                .capability(Capability::new("clock/*", space.did()))
                .expiration(2_000_000_000),
            &[],
            &[],
        )
        .unwrap();
        let inv = Delegation::issue(
            Ucan::builder(&agent, service.did())
                .capability(Capability::new("clock/head", space.did()))
                .expiration(2_000_000_000),
            std::slice::from_ref(&proof),
            &[],
        )
        .unwrap();
        let fork = Delegation::issue(
            Ucan::builder(&service, agent.did())
                .capability(Capability::new("clock/head", space.did()))
                .expiration(2_000_000_000),
            &[],
            &[],
        )
        .unwrap();
        let options = ReceiptOptions {
            fork: vec![fork.clone()],
            join: Some(fork),
            meta: BTreeMap::from([("n".to_string(), Ipld::Integer(7))]),
            proofs: vec![proof],
        };
        for out in [Ok(Ipld::String("x".into())), Err(Ipld::Null)] {
            let r = Receipt::issue(&service, &inv, out, options.clone()).unwrap();
            let model = ReceiptModel {
                ocm: r.outcome.clone(),
                sig: r.signature.encode(),
            };
            assert_eq!(r.block(), &Block::encode(&model).unwrap());
            let decoded = Receipt::from_store(r.cid(), r.store().clone()).unwrap();
            assert!(decoded.issued_blocks.is_none());
            let cids = |blocks: Vec<Block>| blocks.iter().map(|b| *b.cid()).collect::<Vec<_>>();
            assert_eq!(cids(r.blocks()), cids(decoded.blocks()));
            assert!(decoded.verify_signature(&service.verifier()));
        }
    }

    #[test]
    fn issue_verify_decode() {
        let agent = Ed25519Signer::from_seed(&[1; 32]);
        let service = Ed25519Signer::from_seed(&[2; 32]);
        let inv = Delegation::issue(
            Ucan::builder(&agent, service.did())
                .capability(Capability::new("clock/head", agent.did()))
                .expiration(2_000_000_000),
            &[],
            &[],
        )
        .unwrap();
        let mut ok = BTreeMap::new();
        ok.insert("head".to_string(), Ipld::List(vec![]));
        let r =
            Receipt::issue(&service, &inv, Ok(Ipld::Map(ok)), ReceiptOptions::default()).unwrap();
        assert!(r.verify_signature(&service.verifier()));
        assert!(!r.verify_signature(&agent.verifier()));
        let store: HashMap<Cid, Block> = r.blocks().into_iter().map(|b| (*b.cid(), b)).collect();
        let back = Receipt::from_store(r.cid(), Arc::new(store)).unwrap();
        assert_eq!(back.ran(), inv.cid());
        assert!(back.out().is_ok());
        assert_eq!(back.issuer(), Some(service.did()));
        assert!(back.verify_signature(&service.verifier()));
        assert_eq!(back.ran_invocation().unwrap().cid(), inv.cid());
    }
}
