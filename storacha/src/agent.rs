//! Who invokes: an Ed25519 agent key acting on one Space with the delegations that prove it may
//! (usually one delegation from the Space's owner, made with `storacha delegation create` or the
//! web console, pasted in its text form). The agent signs every invocation; the proofs travel
//! with each one.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use proto::principal::Ed25519Signer;
use proto::ucan::{Capability, Delegation, Ucan};
use proto::{Block, Ipld};

use crate::error::Error;

/// An agent acting on a Space.
#[derive(Clone, Debug)]
pub struct Agent {
    signer: Ed25519Signer,
    space: String,
    proofs: Vec<Delegation>,
}

impl Agent {
    /// The Space's own key acting on it (no proofs needed).
    pub fn space_owner(space: Ed25519Signer) -> Self {
        Self {
            space: space.did().to_string(),
            signer: space,
            proofs: Vec::new(),
        }
    }

    /// `signer` acting on `space` with `proofs`.
    pub fn new(signer: Ed25519Signer, space: impl Into<String>, proofs: Vec<Delegation>) -> Self {
        Self {
            signer,
            space: space.into(),
            proofs,
        }
    }

    /// `signer` acting with one delegation in the Storacha CLI's text form (`storacha
    /// delegation create --base64`) or archive bytes already decoded. The Space is the
    /// delegation's resource; the delegation must be addressed to `signer`.
    pub fn from_delegation(signer: Ed25519Signer, delegation: Delegation) -> Result<Self, Error> {
        let ucan = delegation.ucan();
        if ucan.audience() != signer.did() {
            return Err(Error::Delegation(format!(
                "the delegation is addressed to {}, not to this agent ({})",
                ucan.audience(),
                signer.did()
            )));
        }
        let space = ucan
            .capabilities()
            .iter()
            .map(|c| c.with.as_str())
            .find(|w| w.starts_with("did:key:"))
            .ok_or_else(|| {
                Error::Delegation("the delegation grants nothing on a Space (did:key)".into())
            })?
            .to_string();
        Ok(Self::new(signer, space, vec![delegation]))
    }

    /// Parses a delegation's text form and calls [`Self::from_delegation`].
    pub fn from_proof_text(signer: Ed25519Signer, text: &str) -> Result<Self, Error> {
        let delegation =
            Delegation::parse_proof_text(text).map_err(|e| Error::Delegation(e.to_string()))?;
        Self::from_delegation(signer, delegation)
    }

    /// The agent's key.
    pub fn signer(&self) -> &Ed25519Signer {
        &self.signer
    }

    /// The agent's DID.
    pub fn did(&self) -> &str {
        self.signer.did()
    }

    /// The Space's DID.
    pub fn space(&self) -> &str {
        &self.space
    }

    /// The proofs sent with invocations on the Space.
    pub fn proofs(&self) -> &[Delegation] {
        &self.proofs
    }

    /// Signs an invocation of `capability` to `audience`, valid for `lifetime` (`None`: never
    /// expires, as the JS client sends `ucan/conclude`), with a fresh nonce (the service caches
    /// receipts by invocation CID, so two equal invocations would share a stale receipt),
    /// `attached` blocks and `facts`. Proofs travel when the capability is on the Space.
    pub(crate) fn invoke(
        &self,
        audience: &str,
        capability: Capability,
        lifetime: Option<Duration>,
        attached: &[Block],
        facts: Vec<BTreeMap<String, Ipld>>,
    ) -> Result<Delegation, Error> {
        let build = |reason: String| Error::Build {
            what: "invocation",
            reason,
        };
        let on_space = capability.with == self.space;
        let mut builder = Ucan::builder(&self.signer, audience)
            .capability(capability)
            .nonce(nonce()?);
        if let Some(lifetime) = lifetime {
            builder = builder.expiration(unix_now() + lifetime.as_secs() as i64);
        }
        for fact in facts {
            builder = builder.fact(fact);
        }
        let proofs = if on_space { &self.proofs[..] } else { &[] };
        Delegation::issue(builder, proofs, attached).map_err(|e| build(e.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random nonce (12 bytes, base64url).
fn nonce() -> Result<String, Error> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| Error::Build {
        what: "nonce",
        reason: e.to_string(),
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegations_name_the_space_and_the_agent() {
        let space = Ed25519Signer::from_seed(&[1; 32]);
        let worker = Ed25519Signer::from_seed(&[2; 32]);
        let other = Ed25519Signer::from_seed(&[3; 32]);
        let d = Delegation::issue(
            Ucan::builder(&space, worker.did())
                .capability(Capability::new("space/blob/add", space.did()))
                .expiration(unix_now() + 60),
            &[],
            &[],
        )
        .unwrap();
        let text = d.to_proof_text().unwrap();
        let agent = Agent::from_proof_text(worker.clone(), &text).unwrap();
        assert_eq!(agent.space(), space.did());
        assert_eq!(agent.proofs().len(), 1);
        assert!(matches!(
            Agent::from_proof_text(other, &text),
            Err(Error::Delegation(_))
        ));
        let inv = agent
            .invoke(
                "did:web:up.storacha.network",
                Capability::new("space/info", space.did()),
                Some(Duration::from_secs(30)),
                &[],
                Vec::new(),
            )
            .unwrap();
        assert_eq!(inv.ucan().proofs(), &[*d.cid()]);
        assert!(inv.ucan().nonce().is_some());
        let again = agent
            .invoke(
                "did:web:up.storacha.network",
                Capability::new("space/info", space.did()),
                Some(Duration::from_secs(30)),
                &[],
                Vec::new(),
            )
            .unwrap();
        assert_ne!(inv.cid(), again.cid(), "repeated queries differ by nonce");
    }
}
