//! ucanto over HTTP: `POST /` with a CAR body in, a CAR of signed receipts out.
//!
//! In order, as ucanto's server does: content negotiation (415 for a content type other than
//! `application/vnd.ipld.car`, 406 for an `accept` that excludes it), the body read with a size
//! limit (413 as soon as it is exceeded — an oversized body is never buffered), the CAR and agent
//! message decoded within block limits (400 `Bad request: Malformed payload - …`), then each
//! invocation run through the invocation stack ([`crate::invocation`]) and answered by a receipt
//! signed with the service key. Handler failures are error receipts in a 200 answer, as in
//! ucanto. `OPTIONS` answers CORS preflights (browsers call the clock), other methods get 405.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use proto::car::CarLimits;
use proto::message::{self, AgentMessage, CONTENT_TYPE};
use proto::principal::Ed25519Signer;
use proto::receipt::{Receipt, ReceiptOptions};
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::invocation::{BoxFuture, Invocation, Outcome};
use crate::metrics::{Ability, HttpLabels, InvocationLabels, Metrics};

/// The response body type of every service here.
pub type Body = Full<Bytes>;

/// The invocation stack, boxed.
pub type InvocationService = BoxCloneSyncService<Invocation, Outcome, Infallible>;

/// Builds a plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn cors(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The ucanto endpoint.
#[derive(Clone)]
pub struct Ucanto {
    invocations: InvocationService,
    signer: Arc<Ed25519Signer>,
    limits: CarLimits,
    max_body: usize,
    metrics: Metrics,
}

impl std::fmt::Debug for Ucanto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ucanto")
            .field("did", &self.signer.did())
            .field("limits", &self.limits)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Ucanto {
    /// The endpoint: invocations go through `invocations`, receipts are signed by `signer`.
    pub fn new(
        invocations: InvocationService,
        signer: Arc<Ed25519Signer>,
        limits: CarLimits,
        max_body: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            invocations,
            signer,
            limits,
            max_body,
            metrics,
        }
    }
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight(Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl<B> Service<Request<B>> for Ucanto
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        self.metrics.in_flight.inc();
        let guard = InFlight(self.metrics.clone());
        Box::pin(async move {
            let response = cors(this.handle(req).await);
            guard
                .0
                .http_responses
                .get_or_create(&HttpLabels {
                    status: response.status().as_u16(),
                })
                .inc();
            drop(guard);
            Ok(response)
        })
    }
}

impl Ucanto {
    async fn handle<B>(mut self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.method() == Method::OPTIONS {
            let mut r = text(StatusCode::NO_CONTENT, "");
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST,OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("*"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            return r;
        }
        if req.method() != Method::POST {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
            return r;
        }
        let negotiated = {
            let header_str =
                |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
            message::negotiate(header_str(header::CONTENT_TYPE), header_str(header::ACCEPT))
        };
        if let Err(rejection) = negotiated {
            let status =
                StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = text(status, rejection.to_string());
            r.headers_mut().insert(
                header::ACCEPT,
                HeaderValue::from_static(rejection.accept_header()),
            );
            return r;
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return self.too_large();
        }
        let body = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return self.too_large(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Bad request: could not read the body - {e}"),
                );
            }
        };
        let msg = match AgentMessage::decode_bytes(body, &self.limits) {
            Ok(msg) => msg,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.bad_request_body()),
        };
        let invocations = match msg.invocations() {
            Ok(i) => i,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.bad_request_body()),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut receipts = Vec::with_capacity(invocations.len());
        for delegation in invocations {
            let started = Instant::now();
            let ability = delegation
                .ucan()
                .capabilities()
                .first()
                .map_or(Ability::other, |c| Ability::of(&c.can));
            let outcome = match self
                .invocations
                .call(Invocation {
                    delegation: delegation.clone(),
                    now,
                })
                .await
            {
                Ok(outcome) => outcome,
                Err(never) => match never {},
            };
            let labels = InvocationLabels {
                ability,
                outcome: outcome.label,
            };
            let receipt = match Receipt::issue(
                &self.signer,
                &delegation,
                outcome.result,
                ReceiptOptions::default(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign a receipt");
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign the receipt");
                }
            };
            self.metrics.invocations.get_or_create(&labels).inc();
            self.metrics
                .invocation_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            receipts.push(receipt);
        }
        match message::encode_response(&receipts) {
            Ok(bytes) => {
                let mut r = Response::new(Full::new(Bytes::from(bytes)));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                r
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a response");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the response",
                )
            }
        }
    }

    fn too_large(&self) -> Response<Body> {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Payload too large: the request body exceeds {} bytes",
                self.max_body
            ),
        )
    }
}
