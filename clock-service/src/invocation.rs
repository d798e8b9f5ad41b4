//! One invocation's path through the service, as tower services that read top to bottom:
//!
//! ```text
//! AuthLayer          one capability, a handler for it, audience = us, a valid proof chain
//!   ProvisioningLayer  the clock (Space) is provisioned
//!     Handler            clock/head, clock/advance
//! ```
//!
//! Each stage answers with an [`Outcome`] — the `{ok}` or `{error}` a receipt carries — so a
//! rejected invocation never reaches the stages below it. The authorization layer first has the
//! invocation's own signature verified in a batch with concurrent requests'
//! ([`crate::signatures`]) and hands the validator that verdict. The HTTP layer ([`crate::http`])
//! decodes the request, runs every invocation through this stack and signs the receipts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cid::Cid;
use proto::capability::{CLOCK_ADVANCE, CLOCK_HEAD, ClockAdvance};
use proto::ucan::{Delegation, Proof};
use proto::validator::{
    Authorization, Failure, SignatureKey, Validator, invocation_signature, parsers,
};
use proto::{Block, Ipld};
use tower::{Layer, Service};

use crate::clocks::Clocks;
use crate::metrics::Outcome as OutcomeLabel;
use crate::provisioning::Provisioning;
use crate::signatures::BatchVerifier;
use crate::store::ClockStore;

/// A boxed future, as the services here return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a receipt will say: `Ok` → `{ok: …}`, `Err` → `{error: …}`, plus the metric label.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The result value.
    pub result: Result<Ipld, Ipld>,
    /// How to count it.
    pub label: OutcomeLabel,
}

impl Outcome {
    /// A success.
    pub fn ok(value: Ipld) -> Self {
        Self {
            result: Ok(value),
            label: OutcomeLabel::ok,
        }
    }

    /// A failure with ucanto's `{name, message}` shape.
    pub fn error(name: &str, message: impl Into<String>, label: OutcomeLabel) -> Self {
        let mut m = std::collections::BTreeMap::new();
        m.insert("name".to_string(), Ipld::String(name.to_string()));
        m.insert("message".to_string(), Ipld::String(message.into()));
        Self {
            result: Err(Ipld::Map(m)),
            label,
        }
    }
}

/// An invocation as it arrives, with the time it is judged at.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The invocation and the blocks of its request.
    pub delegation: Delegation,
    /// Unix seconds.
    pub now: i64,
}

/// An invocation that passed authorization.
#[derive(Clone, Debug)]
pub struct Authorized {
    /// The invocation.
    pub invocation: Invocation,
    /// The proof chain that authorizes it.
    pub authorization: Authorization,
}

impl Authorized {
    /// The ability invoked.
    pub fn can(&self) -> &str {
        self.authorization.capability().can()
    }

    /// The resource: the clock's DID.
    pub fn with(&self) -> &str {
        self.authorization.capability().with()
    }
}

/// The parser of each ability the service provides (ucanto's routing).
fn route(can: &str) -> Option<proto::validator::CapabilityParser> {
    match can {
        CLOCK_HEAD => Some(parsers::clock_head()),
        CLOCK_ADVANCE => Some(parsers::clock_advance()),
        _ => None,
    }
}

/// Validates invocations before the inner service sees them.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    validator: Arc<Validator>,
    service_did: Arc<str>,
    batch: Option<Arc<BatchVerifier>>,
}

impl AuthLayer {
    /// Authorization by `validator` for invocations addressed to `service_did`.
    pub fn new(validator: Validator, service_did: &str) -> Self {
        Self {
            validator: Arc::new(validator),
            service_did: service_did.into(),
            batch: None,
        }
    }

    /// Verifies each invocation's own signature in `batch`, together with other requests',
    /// before the validator runs (which then takes that verdict instead of verifying again).
    pub fn with_batch_verifier(mut self, batch: Arc<BatchVerifier>) -> Self {
        self.batch = Some(batch);
        self
    }

    /// The verdict on the invocation's own signature from the batch verifier, when there is
    /// one and the signature is an Ed25519 `did:key`'s on an invocation addressed to us (others
    /// are left to the validator, which would refuse a wrong audience before any signature).
    async fn batched_verdicts(&self, invocation: &Delegation) -> Vec<(SignatureKey, bool)> {
        let Some(batch) = &self.batch else {
            return Vec::new();
        };
        if invocation.ucan().audience() != &*self.service_did {
            return Vec::new();
        }
        let Some((key, check)) = invocation_signature(invocation) else {
            return Vec::new();
        };
        match batch.verify(check).await {
            Some(valid) => vec![(key, valid)],
            None => Vec::new(),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    layer: AuthLayer,
    inner: S,
}

impl<S> Service<Invocation> for Auth<S>
where
    S: Service<Authorized, Response = Outcome, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Outcome, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: Invocation) -> Self::Future {
        // The inner service polled ready is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let verdicts = layer.batched_verdicts(&invocation.delegation).await;
            let checked = layer.validator.check_with(
                &invocation.delegation,
                &layer.service_did,
                invocation.now,
                route,
                &verdicts,
            );
            match checked {
                Ok(authorization) => {
                    inner
                        .call(Authorized {
                            invocation,
                            authorization,
                        })
                        .await
                }
                Err(e) => {
                    use proto::validator::ValidationError as V;
                    let label = match &e {
                        V::HandlerNotFound(_) | V::InvocationCapability(_) => {
                            OutcomeLabel::not_found
                        }
                        _ => OutcomeLabel::unauthorized,
                    };
                    Ok(Outcome {
                        result: Err(e.to_wire()),
                        label,
                    })
                }
            }
        })
    }
}

/// Refuses invocations on clocks that are not provisioned Spaces.
#[derive(Clone, Debug)]
pub struct ProvisioningLayer {
    provisioning: Provisioning,
    check_head: bool,
}

impl ProvisioningLayer {
    /// Checks `clock/advance` (and `clock/head` when `check_head`) with `provisioning`.
    pub fn new(provisioning: Provisioning, check_head: bool) -> Self {
        Self {
            provisioning,
            check_head,
        }
    }
}

impl<S> Layer<S> for ProvisioningLayer {
    type Service = ProvisioningCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProvisioningCheck {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`ProvisioningLayer`] makes.
#[derive(Clone, Debug)]
pub struct ProvisioningCheck<S> {
    layer: ProvisioningLayer,
    inner: S,
}

impl<S> Service<Authorized> for ProvisioningCheck<S>
where
    S: Service<Authorized, Response = Outcome, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Outcome, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Authorized) -> Self::Future {
        let needs_check = req.can() == CLOCK_ADVANCE || self.layer.check_head;
        if !needs_check {
            return Box::pin(self.inner.call(req));
        }
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let provisioning = self.layer.provisioning.clone();
        Box::pin(async move {
            // Delegations the client sent along (extra proofs), e.g. `space/info` granted to
            // this service for the `storacha` provisioning mode.
            let attached: Vec<Delegation> = req
                .invocation
                .delegation
                .proofs()
                .into_iter()
                .filter_map(|p| match p {
                    Proof::Delegation(d) => Some(d),
                    _ => None,
                })
                .collect();
            match provisioning.check_with(req.with(), &attached).await {
                Ok(true) => inner.call(req).await,
                Ok(false) => Ok(Outcome::error(
                    "SpaceUnprovisioned",
                    format!(
                        "Space {} is not provisioned: clocks are only kept for provisioned Storacha Spaces",
                        req.with()
                    ),
                    OutcomeLabel::unprovisioned,
                )),
                Err(e) => Ok(Outcome::error(
                    "ProvisioningCheckFailed",
                    e.to_string(),
                    OutcomeLabel::error,
                )),
            }
        })
    }
}

/// The `clock/head` and `clock/advance` handlers.
#[derive(Debug)]
pub struct Handler<S> {
    clocks: Clocks<S>,
}

impl<S: Clone> Clone for Handler<S> {
    fn clone(&self) -> Self {
        Self {
            clocks: self.clocks.clone(),
        }
    }
}

impl<S> Handler<S> {
    /// Handlers over `clocks`.
    pub fn new(clocks: Clocks<S>) -> Self {
        Self { clocks }
    }
}

fn head_value(head: Vec<Cid>) -> Ipld {
    let mut m = std::collections::BTreeMap::new();
    m.insert(
        "head".to_string(),
        Ipld::List(head.into_iter().map(Ipld::Link).collect()),
    );
    Ipld::Map(m)
}

impl<S: ClockStore + Clone> Service<Authorized> for Handler<S> {
    type Response = Outcome;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Outcome, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Authorized) -> Self::Future {
        let clocks = self.clocks.clone();
        Box::pin(async move {
            let clock = req.with().to_string();
            let outcome = match req.can() {
                CLOCK_HEAD => match clocks.head(&clock).await {
                    Ok(head) => Outcome::ok(head_value(head)),
                    Err(e) => Outcome::error("StoreError", e.to_string(), OutcomeLabel::error),
                },
                CLOCK_ADVANCE => {
                    let cap = &req.invocation.delegation.ucan().capabilities()[0];
                    match ClockAdvance::parse(cap) {
                        Err(e) => Outcome::error(
                            "MalformedCapability",
                            e.to_string(),
                            OutcomeLabel::invalid,
                        ),
                        Ok(adv) => {
                            let attached: HashMap<Cid, Block> = req
                                .invocation
                                .delegation
                                .attached_blocks()
                                .into_iter()
                                .map(|b| (*b.cid(), b))
                                .collect();
                            match clocks.advance(&clock, &adv.event, &attached).await {
                                Ok(head) => Outcome::ok(head_value(head)),
                                Err(e) => {
                                    let label = if e.is_client_error() {
                                        OutcomeLabel::invalid
                                    } else {
                                        OutcomeLabel::error
                                    };
                                    Outcome::error(e.name(), e.to_string(), label)
                                }
                            }
                        }
                    }
                }
                other => Outcome::error(
                    "HandlerNotFound",
                    format!("service does not implement {{can: \"{other}\"}}"),
                    OutcomeLabel::not_found,
                ),
            };
            Ok(outcome)
        })
    }
}
