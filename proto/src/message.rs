//! The ucanto agent message (`ucanto/message@7.0.0`) and its HTTP framing.
//!
//! A request is `POST` with `content-type: application/vnd.ipld.car`; the body is a CARv1 whose
//! root block is `{"ucanto/message@7.0.0": {"execute": [<invocation CID>…]}}` and whose other
//! blocks are the invocations with their proofs and attached blocks. The reply is a CAR rooted at
//! `{"ucanto/message@7.0.0": {"report": {"<invocation CID>": <receipt CID>}}}` carrying each
//! receipt with its blocks. Blocks are written in ucanto's order (each invocation's or receipt's
//! DAG in turn, repeats skipped, the message root last), so our bytes equal ucanto's.
//!
//! [`negotiate`] applies ucanto's content negotiation: an unknown `content-type` is 415, an
//! `accept` that excludes CAR is 406, each with ucanto's message text and `accept` header; a body
//! that does not decode is 400 `Bad request: Malformed payload - …` ([`MessageError`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cid::Cid;

use crate::car::{self, CarLimits};
use crate::ipld::{Block, Ipld, IpldError};
use crate::receipt::{Receipt, ReceiptError};
use crate::ucan::{BlockStore, Delegation, UcanError};

/// The media type of ucanto's CAR transport.
pub const CONTENT_TYPE: &str = "application/vnd.ipld.car";
/// The variant tag of the agent message.
pub const MESSAGE_TAG: &str = "ucanto/message@7.0.0";

/// A request that ucanto's codec refuses before decoding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// 415: the `content-type` is not the CAR transport's.
    #[error("{}", UNSUPPORTED_MEDIA_TYPE)]
    UnsupportedMediaType,
    /// 406: the `accept` header excludes the CAR transport.
    #[error("{}", NOT_ACCEPTABLE)]
    NotAcceptable,
}

const UNSUPPORTED_MEDIA_TYPE: &str = "The server cannot process the request because the payload format is not supported. Please check the content-type header and try again with a supported media type.";
const NOT_ACCEPTABLE: &str = "The requested resource cannot be served in the requested content type. Please specify a supported content type using the Accept header.";

impl Rejection {
    /// The HTTP status ucanto answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnsupportedMediaType => 415,
            Self::NotAcceptable => 406,
        }
    }

    /// The `accept` header ucanto sends with the rejection.
    pub fn accept_header(&self) -> &'static str {
        CONTENT_TYPE
    }
}

/// ucanto's content negotiation for a CAR-only server. `content_type` must be exactly the CAR
/// media type (ucanto looks it up verbatim); `accept` defaults to `*/*`.
pub fn negotiate(content_type: Option<&str>, accept: Option<&str>) -> Result<(), Rejection> {
    if content_type != Some(CONTENT_TYPE) {
        return Err(Rejection::UnsupportedMediaType);
    }
    let accept = accept.unwrap_or("*/*");
    let acceptable = accept.split(',').any(|range| {
        let media = range.trim().split(';').next().unwrap_or("").trim();
        let media = if media.is_empty() { "*/*" } else { media };
        let (category, kind) = media.split_once('/').unwrap_or((media, "*"));
        (category == "*" || category == "application") && (kind == "*" || kind == "vnd.ipld.car")
    });
    if acceptable {
        Ok(())
    } else {
        Err(Rejection::NotAcceptable)
    }
}

/// Why a message body could not be decoded (ucanto answers 400 `Bad request: Malformed payload
/// - …` with this error's text), or a message could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The body is not a valid CAR.
    #[error("{0}")]
    Car(#[from] car::CarError),
    /// The CAR has no root.
    #[error("CAR has no root block")]
    NoRoot,
    /// The root block is missing from the CAR.
    #[error("root block {0} is not in the CAR")]
    MissingRoot(Cid),
    /// The root is not an agent message.
    #[error("expected an object with a single key \"{MESSAGE_TAG}\": {0}")]
    NotAMessage(String),
    /// An invocation named by `execute` is missing or malformed.
    #[error("invocation {cid}: {source}")]
    Invocation {
        /// The invocation's CID.
        cid: Cid,
        /// What is wrong.
        #[source]
        source: Box<UcanError>,
    },
    /// A receipt named by `report` is missing or malformed.
    #[error("receipt for {invocation}: {source}")]
    Receipt {
        /// The invocation the receipt is for.
        invocation: String,
        /// What is wrong.
        #[source]
        source: Box<ReceiptError>,
    },
    /// A block could not be encoded.
    #[error(transparent)]
    Ipld(#[from] IpldError),
}

impl MessageError {
    /// The body of the 400 answer ucanto gives for an undecodable request.
    pub fn bad_request_body(&self) -> String {
        format!("Bad request: Malformed payload - {self}")
    }
}

/// A decoded agent message: the invocations to execute and/or receipts reported, over the
/// blocks of the CAR.
#[derive(Clone, Debug)]
pub struct AgentMessage {
    root: Block,
    execute: Vec<Cid>,
    report: BTreeMap<String, Cid>,
    store: BlockStore,
}

impl AgentMessage {
    /// Decodes a message CAR (request or response) within `limits`.
    pub fn decode(body: &[u8], limits: &CarLimits) -> Result<Self, MessageError> {
        Self::from_car(car::decode_car(body, limits)?)
    }

    /// Decodes a message CAR held in `body` without copying its blocks.
    pub fn decode_bytes(body: bytes::Bytes, limits: &CarLimits) -> Result<Self, MessageError> {
        Self::from_car(car::decode_car_bytes(body, limits)?)
    }

    fn from_car((roots, blocks): (Vec<Cid>, Vec<Block>)) -> Result<Self, MessageError> {
        let root_cid = *roots.first().ok_or(MessageError::NoRoot)?;
        let store: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
        let root = store
            .get(&root_cid)
            .cloned()
            .ok_or(MessageError::MissingRoot(root_cid))?;
        let (execute, report) = parse_root(&root)?;
        Ok(Self {
            root,
            execute,
            report,
            store: Arc::new(store),
        })
    }

    /// The message's root block.
    pub fn root(&self) -> &Block {
        &self.root
    }

    /// CIDs of the invocations to execute, in order.
    pub fn execute(&self) -> &[Cid] {
        &self.execute
    }

    /// The receipts reported: invocation CID string → receipt CID.
    pub fn report(&self) -> &BTreeMap<String, Cid> {
        &self.report
    }

    /// All blocks of the CAR.
    pub fn store(&self) -> &BlockStore {
        &self.store
    }

    /// The invocations, each resolved against the message's blocks.
    pub fn invocations(&self) -> Result<Vec<Delegation>, MessageError> {
        self.execute
            .iter()
            .map(|cid| {
                Delegation::from_store(cid, self.store.clone()).map_err(|source| {
                    MessageError::Invocation {
                        cid: *cid,
                        source: Box::new(source),
                    }
                })
            })
            .collect()
    }

    /// The receipt reported for `invocation`, if any.
    pub fn receipt(&self, invocation: &Cid) -> Option<Result<Receipt, MessageError>> {
        let key = invocation.to_string();
        let cid = self.report.get(&key)?;
        Some(
            Receipt::from_store(cid, self.store.clone()).map_err(|source| MessageError::Receipt {
                invocation: key,
                source: Box::new(source),
            }),
        )
    }
}

fn parse_root(root: &Block) -> Result<(Vec<Cid>, BTreeMap<String, Cid>), MessageError> {
    let not_message = |why: &str| MessageError::NotAMessage(why.to_string());
    let value: Ipld = root
        .decode()
        .map_err(|e| MessageError::NotAMessage(e.to_string()))?;
    let Ipld::Map(mut outer) = value else {
        return Err(not_message("root is not a map"));
    };
    if outer.len() != 1 {
        return Err(not_message("root has other keys"));
    }
    let Some(Ipld::Map(data)) = outer.remove(MESSAGE_TAG) else {
        return Err(not_message("unknown message variant"));
    };
    let mut execute = Vec::new();
    match data.get("execute") {
        None => {}
        Some(Ipld::List(items)) => {
            for item in items {
                match item {
                    Ipld::Link(cid) => execute.push(*cid),
                    _ => return Err(not_message("execute must be a list of links")),
                }
            }
        }
        Some(_) => return Err(not_message("execute must be a list of links")),
    }
    let mut report = BTreeMap::new();
    match data.get("report") {
        None => {}
        Some(Ipld::Map(entries)) => {
            for (k, v) in entries {
                match v {
                    Ipld::Link(cid) => {
                        report.insert(k.clone(), *cid);
                    }
                    _ => return Err(not_message("report values must be links")),
                }
            }
        }
        Some(_) => return Err(not_message("report must be a map")),
    }
    Ok((execute, report))
}

/// Writes blocks in order, skipping repeats, then the root last: ucanto's CAR layout.
fn write_message(groups: Vec<Block>, root: Block) -> Vec<u8> {
    let mut seen = HashSet::with_capacity(groups.len() + 1);
    let mut ordered = Vec::with_capacity(groups.len() + 1);
    for b in groups.into_iter().chain(std::iter::once(root.clone())) {
        if seen.insert(*b.cid()) {
            ordered.push(b);
        }
    }
    car::encode_car(&[*root.cid()], ordered.iter())
}

fn message_root(field: &str, value: Ipld) -> Result<Block, IpldError> {
    let mut data = BTreeMap::new();
    data.insert(field.to_string(), value);
    let mut outer = BTreeMap::new();
    outer.insert(MESSAGE_TAG.to_string(), Ipld::Map(data));
    Block::encode(&Ipld::Map(outer))
}

/// Encodes a request CAR executing `invocations` (what `@ucanto/client` sends).
pub fn encode_request(invocations: &[Delegation]) -> Result<Vec<u8>, MessageError> {
    let root = message_root(
        "execute",
        Ipld::List(invocations.iter().map(|i| Ipld::Link(*i.cid())).collect()),
    )?;
    let blocks = invocations.iter().flat_map(Delegation::export).collect();
    Ok(write_message(blocks, root))
}

/// Encodes a response CAR reporting `receipts` (what a ucanto server answers). When two
/// receipts are for the same invocation, the first is reported, as ucanto does.
pub fn encode_response(receipts: &[Receipt]) -> Result<Vec<u8>, MessageError> {
    let mut report = BTreeMap::new();
    for r in receipts {
        report
            .entry(r.ran().to_string())
            .or_insert(Ipld::Link(*r.cid()));
    }
    let root = message_root("report", Ipld::Map(report))?;
    let blocks = receipts.iter().flat_map(Receipt::blocks).collect();
    Ok(write_message(blocks, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_matches_ucanto() {
        assert_eq!(negotiate(Some(CONTENT_TYPE), None), Ok(()));
        assert_eq!(negotiate(Some(CONTENT_TYPE), Some("*/*")), Ok(()));
        assert_eq!(negotiate(Some(CONTENT_TYPE), Some("application/*")), Ok(()));
        assert_eq!(
            negotiate(
                Some(CONTENT_TYPE),
                Some("text/html, application/vnd.ipld.car;q=0.5")
            ),
            Ok(())
        );
        assert_eq!(
            negotiate(Some("text/plain"), None),
            Err(Rejection::UnsupportedMediaType)
        );
        assert_eq!(negotiate(None, None), Err(Rejection::UnsupportedMediaType));
        assert_eq!(
            negotiate(Some(CONTENT_TYPE), Some("text/html")),
            Err(Rejection::NotAcceptable)
        );
        assert_eq!(Rejection::NotAcceptable.status(), 406);
        assert_eq!(Rejection::UnsupportedMediaType.status(), 415);
    }
}
