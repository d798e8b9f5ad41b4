//! A ucanto client for a clock service (ours or w3clock): builds `clock/head` and
//! `clock/advance` invocations, posts them, and checks the receipts. The backup worker uses it to
//! advance a Space's clock; the tests and the load generator use it to drive the service.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cid::Cid;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proto::capability::{ClockAdvance, ClockHead};
use proto::car::CarLimits;
use proto::message::{self, AgentMessage, CONTENT_TYPE};
use proto::principal::{Ed25519Signer, Verifier};
use proto::receipt::Receipt;
use proto::ucan::{Delegation, Ucan};
use proto::{Block, Ipld};

/// How long an invocation built here stays valid (ucanto's default is 30 s).
pub const INVOCATION_LIFETIME_SECS: i64 = 30;

/// Why a clock call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request could not be sent or the answer read.
    #[error("clock service at {url}: {reason}")]
    Transport {
        /// The service URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The service answered with an HTTP error.
    #[error("clock service at {url} answered {status}: {body}")]
    Http {
        /// The service URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The answer's text.
        body: String,
    },
    /// The answer is not a valid ucanto response.
    #[error("invalid response from the clock service: {0}")]
    InvalidResponse(String),
    /// The receipt is not signed by the service.
    #[error("receipt for {invocation} is not signed by {service}")]
    BadReceiptSignature {
        /// The invocation.
        invocation: Cid,
        /// The service DID expected.
        service: String,
    },
    /// The service refused the invocation (an error receipt).
    #[error("{name}: {message}")]
    Refused {
        /// ucanto's error name (e.g. `Unauthorized`).
        name: String,
        /// Its message.
        message: String,
    },
    /// A UCAN or message could not be built.
    #[error("cannot build the invocation: {0}")]
    Build(String),
}

/// Who invokes, on which clock, with what proofs.
#[derive(Clone, Debug)]
pub struct Invoker {
    /// The signing agent.
    pub issuer: Ed25519Signer,
    /// The clock's DID (the Space).
    pub clock: String,
    /// Delegations proving the agent may use the clock (empty when the agent is the clock).
    pub proofs: Vec<Delegation>,
}

/// A connection to one clock service.
#[derive(Clone, Debug)]
pub struct ClockClient {
    url: String,
    service: Verifier,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ClockClient {
    /// A client for the service at `url` (http://…) whose identity is `service` (its DID may be
    /// a did:web wrapping the key).
    pub fn new(url: impl Into<String>, service: Verifier) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            url: url.into(),
            service,
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The service's DID.
    pub fn service_did(&self) -> &str {
        self.service.did()
    }

    /// Builds a `clock/head` invocation.
    pub fn head_invocation(&self, who: &Invoker) -> Result<Delegation, ClientError> {
        let cap = ClockHead {
            with: who.clock.clone(),
        }
        .to_capability();
        let builder = Ucan::builder(&who.issuer, self.service.did())
            .capability(cap)
            .expiration(now() + INVOCATION_LIFETIME_SECS)
            .nonce(nonce());
        Delegation::issue(builder, &who.proofs, &[]).map_err(|e| ClientError::Build(e.to_string()))
    }

    /// Builds a `clock/advance` invocation carrying `blocks` (the event and any ancestors the
    /// service may lack), with one fact naming every block, as w3clock's client does.
    pub fn advance_invocation(
        &self,
        who: &Invoker,
        event: &Cid,
        blocks: &[Block],
    ) -> Result<Delegation, ClientError> {
        let cap = ClockAdvance {
            with: who.clock.clone(),
            event: *event,
        }
        .to_capability();
        let mut builder = Ucan::builder(&who.issuer, self.service.did())
            .capability(cap)
            .expiration(now() + INVOCATION_LIFETIME_SECS)
            .nonce(nonce());
        if !blocks.is_empty() {
            let fact: BTreeMap<String, Ipld> = blocks
                .iter()
                .map(|b| (b.cid().to_string(), Ipld::Link(*b.cid())))
                .collect();
            builder = builder.fact(fact);
        }
        Delegation::issue(builder, &who.proofs, blocks)
            .map_err(|e| ClientError::Build(e.to_string()))
    }

    /// The clock's head.
    pub async fn head(&self, who: &Invoker) -> Result<Vec<Cid>, ClientError> {
        let inv = self.head_invocation(who)?;
        head_of(&self.invoke(&inv).await?)
    }

    /// Advances the clock with `event`, attaching `blocks`; returns the new head.
    pub async fn advance(
        &self,
        who: &Invoker,
        event: &Cid,
        blocks: &[Block],
    ) -> Result<Vec<Cid>, ClientError> {
        let inv = self.advance_invocation(who, event, blocks)?;
        head_of(&self.invoke(&inv).await?)
    }

    /// Sends one invocation and returns its receipt, checked to be signed by the service.
    pub async fn invoke(&self, invocation: &Delegation) -> Result<Receipt, ClientError> {
        let body = message::encode_request(std::slice::from_ref(invocation))
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let bytes = self.post(Bytes::from(body)).await?;
        let msg = AgentMessage::decode_bytes(bytes, &CarLimits::default())
            .map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        let receipt = msg
            .receipt(invocation.cid())
            .ok_or_else(|| {
                ClientError::InvalidResponse(format!("no receipt for {}", invocation.cid()))
            })?
            .map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        if !receipt.verify_signature(&self.service) {
            return Err(ClientError::BadReceiptSignature {
                invocation: *invocation.cid(),
                service: self.service.did().to_string(),
            });
        }
        Ok(receipt)
    }

    /// Posts a pre-encoded request body and returns the response body (200 only).
    pub async fn post(&self, body: Bytes) -> Result<Bytes, ClientError> {
        let transport = |reason: String| ClientError::Transport {
            url: self.url.clone(),
            reason,
        };
        let req = Request::post(&self.url)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .header(header::ACCEPT, CONTENT_TYPE)
            .body(Full::new(body))
            .map_err(|e| transport(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(ClientError::Http {
                url: self.url.clone(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }
}

/// A fresh nonce, so two identical invocations get different CIDs.
fn nonce() -> String {
    let mut b = [0u8; 12];
    // Without randomness the nonce falls back to the clock: less unique, still valid.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b.copy_from_slice(&t.to_le_bytes()[..12]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `head` of an `{ok: {head: [...]}}` receipt, or the refusal.
pub fn head_of(receipt: &Receipt) -> Result<Vec<Cid>, ClientError> {
    match receipt.out() {
        Ok(Ipld::Map(m)) => match m.get("head") {
            Some(Ipld::List(items)) => items
                .iter()
                .map(|i| match i {
                    Ipld::Link(c) => Ok(*c),
                    _ => Err(ClientError::InvalidResponse("head holds a non-link".into())),
                })
                .collect(),
            _ => Err(ClientError::InvalidResponse("ok without head".into())),
        },
        Ok(_) => Err(ClientError::InvalidResponse("ok is not a map".into())),
        Err(e) => {
            let field = |k: &str| match e {
                Ipld::Map(m) => match m.get(k) {
                    Some(Ipld::String(s)) => s.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            Err(ClientError::Refused {
                name: field("name"),
                message: field("message"),
            })
        }
    }
}
