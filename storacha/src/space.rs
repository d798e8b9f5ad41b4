//! `space/info`: is the Space provisioned, and by which providers. A Space nobody provisioned
//! answers `SpaceUnknown`. Every query carries a fresh nonce, because the service caches
//! receipts by invocation CID and would otherwise answer a repeat with a stale receipt.

use proto::Ipld;
use proto::capability::SpaceInfo as SpaceInfoCapability;

use crate::client::Client;
use crate::error::{Error, Failure};

/// A provisioned Space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceInfo {
    /// The Space's DID.
    pub did: String,
    /// The providers it is provisioned with (e.g. `did:web:up.storacha.network`).
    pub providers: Vec<String>,
}

impl Client {
    /// `space/info` on the agent's Space: its providers, or the `SpaceUnknown` refusal.
    pub async fn space_info(&self) -> Result<SpaceInfo, Error> {
        let cap = SpaceInfoCapability {
            with: self.space().to_string(),
        };
        let receipt = self.invoke(cap.to_capability()).await?;
        let bad = |why: &str| Error::protocol("space/info", why.to_string());
        let Ok(Ipld::Map(ok)) = receipt.out() else {
            return Err(bad("result is not a map"));
        };
        let did = match ok.get("did") {
            Some(Ipld::String(s)) => s.clone(),
            _ => return Err(bad("did is missing")),
        };
        let providers = match ok.get("providers") {
            Some(Ipld::List(items)) => items
                .iter()
                .filter_map(|p| match p {
                    Ipld::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(SpaceInfo { did, providers })
    }

    /// Whether the Space has at least one provider (`SpaceUnknown` is `false`; other failures
    /// are errors).
    pub async fn is_provisioned(&self) -> Result<bool, Error> {
        match self.space_info().await {
            Ok(info) => Ok(!info.providers.is_empty()),
            Err(e) if e.failure() == Some(&Failure::SpaceUnknown) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
