//! The client: an [`Agent`] talking to one upload service. [`Client::execute`] is the ucanto
//! round trip every operation is built on: sign an invocation, send it in an agent-message CAR,
//! and take the receipt the service reports for it. The operations themselves live in their own
//! modules (`blob`, `upload`, `space`, `retrieval`) as further `impl Client` blocks.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proto::car::CarLimits;
use proto::message::{self, AgentMessage};
use proto::receipt::Receipt;
use proto::ucan::{Capability, Delegation};
use proto::{Block, Ipld};

use crate::agent::Agent;
use crate::config::Config;
use crate::error::Error;
use crate::transport::Transport;

/// Largest block accepted in a response CAR (receipts carry delegations and small results).
const MAX_RESPONSE_BLOCK: usize = 4 * 1024 * 1024;

/// A client of the upload service, acting as one agent on one Space. Cheap to clone (the HTTP
/// pool is shared).
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) config: Config,
    pub(crate) agent: Agent,
    pub(crate) transport: Transport,
}

impl Client {
    /// A client for `agent` against the service in `config`.
    pub fn new(config: Config, agent: Agent) -> Result<Self, Error> {
        let transport = Transport::new(&config)?;
        Ok(Self {
            config,
            agent,
            transport,
        })
    }

    /// A client for another agent (e.g. the same key on another Space) sharing this one's
    /// connection pool and configuration.
    pub fn for_agent(&self, agent: Agent) -> Self {
        Self {
            config: self.config.clone(),
            agent,
            transport: self.transport.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The Space the agent acts on.
    pub fn space(&self) -> &str {
        self.agent.space()
    }

    /// Invokes `capability` and returns the service's receipt for it (whatever its result;
    /// see [`Self::invoke`] for the common case). `lifetime` `None` sends a never-expiring
    /// invocation.
    pub async fn execute(
        &self,
        capability: Capability,
        lifetime: Option<Duration>,
        attached: &[Block],
        facts: Vec<BTreeMap<String, Ipld>>,
    ) -> Result<(Delegation, Receipt), Error> {
        let ability = capability.can.clone();
        let invocation = self.agent.invoke(
            &self.config.service_did,
            capability,
            lifetime,
            attached,
            facts,
        )?;
        let body = message::encode_request(std::slice::from_ref(&invocation)).map_err(|e| {
            Error::Build {
                what: "request message",
                reason: e.to_string(),
            }
        })?;
        let answer = self.transport.post_message(Bytes::from(body)).await?;
        let limits = CarLimits {
            max_block_size: MAX_RESPONSE_BLOCK,
            ..CarLimits::default()
        };
        let response = AgentMessage::decode_bytes(answer, &limits)
            .map_err(|e| Error::protocol(&ability, e.to_string()))?;
        let receipt = response
            .receipt(invocation.cid())
            .ok_or_else(|| Error::protocol(&ability, "the response reports no receipt for it"))?
            .map_err(|e| Error::protocol(&ability, e.to_string()))?;
        tracing::debug!(ability, invocation = %invocation.cid(), ok = receipt.out().is_ok(), "invoked");
        Ok((invocation, receipt))
    }

    /// Invokes `capability` with the default lifetime and no attachments; returns the receipt
    /// when its result is `ok`, the named refusal otherwise.
    pub async fn invoke(&self, capability: Capability) -> Result<Receipt, Error> {
        let ability = capability.can.clone();
        let (_, receipt) = self
            .execute(
                capability,
                Some(self.config.invocation_lifetime),
                &[],
                Vec::new(),
            )
            .await?;
        match receipt.out() {
            Ok(_) => Ok(receipt),
            Err(error) => Err(Error::refused(&ability, error)),
        }
    }
}
