//! Capabilities as typed values: the `clock/*` ones our clock service provides, and the Storacha
//! ones our workers invoke on the upload service.
//!
//! Each type converts to the generic [`Capability`] (what goes into a UCAN's `att`) and parses
//! from it with the schema checks the JS capability definitions apply (`w3clock`'s
//! `capabilities.js`, `@storacha/capabilities`): resource DID method, `nb` field types, link
//! versions and codecs. A failed parse is a [`MalformedCapability`], named as ucanto names it.

use std::collections::BTreeMap;

use cid::Cid;

use crate::ipld::{CAR, Ipld};
use crate::ucan::Capability;

/// `clock/head`.
pub const CLOCK_HEAD: &str = "clock/head";
/// `clock/advance`.
pub const CLOCK_ADVANCE: &str = "clock/advance";
/// `clock/*`: every clock ability.
pub const CLOCK_ANY: &str = "clock/*";
/// `space/blob/add`.
pub const SPACE_BLOB_ADD: &str = "space/blob/add";
/// `space/index/add`.
pub const SPACE_INDEX_ADD: &str = "space/index/add";
/// `upload/add`.
pub const UPLOAD_ADD: &str = "upload/add";
/// `space/info`.
pub const SPACE_INFO: &str = "space/info";
/// `ucan/conclude`.
pub const UCAN_CONCLUDE: &str = "ucan/conclude";
/// `http/put`.
pub const HTTP_PUT: &str = "http/put";
/// `ucan/attest`.
pub const UCAN_ATTEST: &str = "ucan/attest";

/// A capability whose fields do not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed capability {can}: {reason}")]
pub struct MalformedCapability {
    /// The ability.
    pub can: String,
    /// What is wrong.
    pub reason: String,
}

fn malformed(can: &str, reason: impl Into<String>) -> MalformedCapability {
    MalformedCapability {
        can: can.to_string(),
        reason: reason.into(),
    }
}

fn expect_can(cap: &Capability, can: &str) -> Result<(), MalformedCapability> {
    if cap.can == can {
        Ok(())
    } else {
        Err(malformed(
            can,
            format!("expected ability {can}, got {}", cap.can),
        ))
    }
}

fn did_with(cap: &Capability) -> Result<String, MalformedCapability> {
    if cap.with.starts_with("did:") {
        Ok(cap.with.clone())
    } else {
        Err(malformed(
            &cap.can,
            format!("expected with to be a did: URI, got {:?}", cap.with),
        ))
    }
}

fn did_key_with(cap: &Capability) -> Result<String, MalformedCapability> {
    if cap.with.starts_with("did:key:") {
        Ok(cap.with.clone())
    } else {
        Err(malformed(
            &cap.can,
            format!("expected with to be a did:key: URI, got {:?}", cap.with),
        ))
    }
}

fn nb(cap: &Capability) -> Result<&BTreeMap<String, Ipld>, MalformedCapability> {
    cap.nb
        .as_ref()
        .ok_or_else(|| malformed(&cap.can, "nb is missing"))
}

fn link(cap: &Capability, field: &str) -> Result<Cid, MalformedCapability> {
    match nb(cap)?.get(field) {
        Some(Ipld::Link(cid)) if cid.version() == cid::Version::V1 => Ok(*cid),
        Some(Ipld::Link(_)) => Err(malformed(&cap.can, format!("nb.{field} must be a CIDv1"))),
        _ => Err(malformed(&cap.can, format!("nb.{field} must be a link"))),
    }
}

fn opt_link(cap: &Capability, field: &str) -> Result<Option<Cid>, MalformedCapability> {
    match cap.nb.as_ref().and_then(|nb| nb.get(field)) {
        None => Ok(None),
        Some(Ipld::Link(cid)) => Ok(Some(*cid)),
        Some(_) => Err(malformed(&cap.can, format!("nb.{field} must be a link"))),
    }
}

fn nb_of(fields: impl IntoIterator<Item = (&'static str, Ipld)>) -> BTreeMap<String, Ipld> {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// `clock/head`: read a clock's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockHead {
    /// The clock's DID.
    pub with: String,
}

impl ClockHead {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        Capability::new(CLOCK_HEAD, &self.with)
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, CLOCK_HEAD)?;
        Ok(Self {
            with: did_with(cap)?,
        })
    }
}

/// `clock/advance {event}`: advance a clock with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockAdvance {
    /// The clock's DID.
    pub with: String,
    /// The event's CID.
    pub event: Cid,
}

impl ClockAdvance {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        Capability::new(CLOCK_ADVANCE, &self.with)
            .with_nb(nb_of([("event", Ipld::Link(self.event))]))
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, CLOCK_ADVANCE)?;
        Ok(Self {
            with: did_with(cap)?,
            event: link(cap, "event")?,
        })
    }
}

/// The `{digest, size}` of a blob, as Storacha names blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob's multihash bytes (`0x12 0x20 ‖ sha256`).
    pub digest: Vec<u8>,
    /// The blob's size in bytes.
    pub size: u64,
}

impl BlobRef {
    fn to_ipld(&self) -> Ipld {
        Ipld::Map(nb_of([
            ("digest", Ipld::Bytes(self.digest.clone())),
            ("size", Ipld::Integer(self.size.into())),
        ]))
    }

    fn parse(can: &str, v: Option<&Ipld>) -> Result<Self, MalformedCapability> {
        let Some(Ipld::Map(m)) = v else {
            return Err(malformed(can, "blob must be {digest, size}"));
        };
        let digest = match m.get("digest") {
            Some(Ipld::Bytes(b)) => b.clone(),
            _ => return Err(malformed(can, "blob.digest must be bytes")),
        };
        let size = match m.get("size") {
            Some(Ipld::Integer(n)) => u64::try_from(*n)
                .map_err(|_| malformed(can, "blob.size must be a natural number"))?,
            _ => return Err(malformed(can, "blob.size must be an integer")),
        };
        Ok(Self { digest, size })
    }
}

/// `space/blob/add {blob}`: store a blob in a Space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceBlobAdd {
    /// The Space's DID.
    pub with: String,
    /// The blob.
    pub blob: BlobRef,
}

impl SpaceBlobAdd {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        Capability::new(SPACE_BLOB_ADD, &self.with).with_nb(nb_of([("blob", self.blob.to_ipld())]))
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, SPACE_BLOB_ADD)?;
        Ok(Self {
            with: did_key_with(cap)?,
            blob: BlobRef::parse(&cap.can, nb(cap)?.get("blob"))?,
        })
    }
}

/// `space/index/add {index, content?}`: register a sharded-DAG index (a CAR blob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceIndexAdd {
    /// The Space's DID.
    pub with: String,
    /// The index CAR's link (codec CAR).
    pub index: Cid,
    /// The content root the index describes.
    pub content: Option<Cid>,
}

impl SpaceIndexAdd {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        let mut nb = nb_of([("index", Ipld::Link(self.index))]);
        if let Some(c) = self.content {
            nb.insert("content".into(), Ipld::Link(c));
        }
        Capability::new(SPACE_INDEX_ADD, &self.with).with_nb(nb)
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, SPACE_INDEX_ADD)?;
        let index = link(cap, "index")?;
        if index.codec() != CAR {
            return Err(malformed(
                &cap.can,
                "nb.index must be a CAR link (codec 0x0202)",
            ));
        }
        Ok(Self {
            with: did_key_with(cap)?,
            index,
            content: opt_link(cap, "content")?,
        })
    }
}

/// `upload/add {root, shards?}`: register an upload (a DAG root and the CAR shards holding it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadAdd {
    /// The Space's DID.
    pub with: String,
    /// The DAG root.
    pub root: Cid,
    /// The CAR shards.
    pub shards: Option<Vec<Cid>>,
}

impl UploadAdd {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        let mut nb = nb_of([("root", Ipld::Link(self.root))]);
        if let Some(shards) = &self.shards {
            nb.insert(
                "shards".into(),
                Ipld::List(shards.iter().map(|c| Ipld::Link(*c)).collect()),
            );
        }
        Capability::new(UPLOAD_ADD, &self.with).with_nb(nb)
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, UPLOAD_ADD)?;
        let shards = match cap.nb.as_ref().and_then(|nb| nb.get("shards")) {
            None => None,
            Some(Ipld::List(items)) => Some(
                items
                    .iter()
                    .map(|i| match i {
                        Ipld::Link(c) if c.codec() == CAR => Ok(*c),
                        _ => Err(malformed(&cap.can, "nb.shards must be CAR links")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(malformed(&cap.can, "nb.shards must be a list")),
        };
        Ok(Self {
            with: did_key_with(cap)?,
            root: link(cap, "root")?,
            shards,
        })
    }
}

/// `space/info`: ask which providers a Space is provisioned with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceInfo {
    /// The Space's DID.
    pub with: String,
}

impl SpaceInfo {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        Capability::new(SPACE_INFO, &self.with)
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, SPACE_INFO)?;
        Ok(Self {
            with: did_key_with(cap)?,
        })
    }
}

/// `ucan/conclude {receipt}`: hand the service a receipt (e.g. of an `http/put`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UcanConclude {
    /// The agent's DID.
    pub with: String,
    /// The receipt's CID (its blocks are attached).
    pub receipt: Cid,
}

impl UcanConclude {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        Capability::new(UCAN_CONCLUDE, &self.with)
            .with_nb(nb_of([("receipt", Ipld::Link(self.receipt))]))
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, UCAN_CONCLUDE)?;
        Ok(Self {
            with: did_with(cap)?,
            receipt: link(cap, "receipt")?,
        })
    }
}

/// A value that is either given or awaited from another task's result
/// (`{"ucan/await": [selector, task]}`).
#[derive(Clone, Debug, PartialEq)]
pub enum Awaitable<T> {
    /// The value itself.
    Value(T),
    /// The value at `selector` in the result of `task`.
    Await {
        /// A path such as `.out.ok.address.url`.
        selector: String,
        /// The task's CID.
        task: Cid,
    },
}

impl<T> Awaitable<T> {
    fn await_ipld(selector: &str, task: &Cid) -> Ipld {
        Ipld::Map(nb_of([(
            "ucan/await",
            Ipld::List(vec![Ipld::String(selector.to_string()), Ipld::Link(*task)]),
        )]))
    }

    fn parse_await(v: &Ipld) -> Option<(String, Cid)> {
        let Ipld::Map(m) = v else { return None };
        match m.get("ucan/await") {
            Some(Ipld::List(items)) => match &items[..] {
                [Ipld::String(s), Ipld::Link(c)] => Some((s.clone(), *c)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// `http/put {body, url, headers}`: the PUT the client performs, signed off by a key derived
/// from the blob (see the Storacha upload protocol).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpPut {
    /// The derived DID the task is issued by and to.
    pub with: String,
    /// The blob being put.
    pub body: BlobRef,
    /// Where to PUT.
    pub url: Awaitable<String>,
    /// Headers to send.
    pub headers: Awaitable<BTreeMap<String, String>>,
}

impl HttpPut {
    /// As a generic capability.
    pub fn to_capability(&self) -> Capability {
        let url = match &self.url {
            Awaitable::Value(u) => Ipld::String(u.clone()),
            Awaitable::Await { selector, task } => Awaitable::<String>::await_ipld(selector, task),
        };
        let headers = match &self.headers {
            Awaitable::Value(h) => Ipld::Map(
                h.iter()
                    .map(|(k, v)| (k.clone(), Ipld::String(v.clone())))
                    .collect(),
            ),
            Awaitable::Await { selector, task } => Awaitable::<String>::await_ipld(selector, task),
        };
        Capability::new(HTTP_PUT, &self.with).with_nb(nb_of([
            ("body", self.body.to_ipld()),
            ("url", url),
            ("headers", headers),
        ]))
    }

    /// Parses and checks the schema.
    pub fn parse(cap: &Capability) -> Result<Self, MalformedCapability> {
        expect_can(cap, HTTP_PUT)?;
        let nb = nb(cap)?;
        let body = BlobRef::parse(&cap.can, nb.get("body"))?;
        let url = match nb.get("url") {
            Some(Ipld::String(s)) => Awaitable::Value(s.clone()),
            Some(v) => match Awaitable::<String>::parse_await(v) {
                Some((selector, task)) => Awaitable::Await { selector, task },
                None => return Err(malformed(&cap.can, "nb.url must be a string or an await")),
            },
            None => return Err(malformed(&cap.can, "nb.url is missing")),
        };
        let headers = match nb.get("headers") {
            Some(v) => match Awaitable::<String>::parse_await(v) {
                Some((selector, task)) => Awaitable::Await { selector, task },
                None => match v {
                    Ipld::Map(m) => Awaitable::Value(
                        m.iter()
                            .map(|(k, v)| match v {
                                Ipld::String(s) => Ok((k.clone(), s.clone())),
                                _ => Err(malformed(&cap.can, "header values must be strings")),
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => return Err(malformed(&cap.can, "nb.headers must be a map or an await")),
                },
            },
            None => return Err(malformed(&cap.can, "nb.headers is missing")),
        };
        Ok(Self {
            with: did_key_with(cap)?,
            body,
            url,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipld::{DAG_CBOR, cid_sha256};

    const SPACE: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";

    #[test]
    fn round_trips() {
        let event = cid_sha256(DAG_CBOR, b"e");
        let adv = ClockAdvance {
            with: SPACE.into(),
            event,
        };
        assert_eq!(ClockAdvance::parse(&adv.to_capability()).unwrap(), adv);
        let head = ClockHead { with: SPACE.into() };
        assert_eq!(ClockHead::parse(&head.to_capability()).unwrap(), head);
        let blob = SpaceBlobAdd {
            with: SPACE.into(),
            blob: BlobRef {
                digest: vec![0x12, 0x20, 1, 2],
                size: 7,
            },
        };
        assert_eq!(SpaceBlobAdd::parse(&blob.to_capability()).unwrap(), blob);
        let idx = SpaceIndexAdd {
            with: SPACE.into(),
            index: cid_sha256(CAR, b"i"),
            content: None,
        };
        assert_eq!(SpaceIndexAdd::parse(&idx.to_capability()).unwrap(), idx);
        let up = UploadAdd {
            with: SPACE.into(),
            root: event,
            shards: Some(vec![cid_sha256(CAR, b"s")]),
        };
        assert_eq!(UploadAdd::parse(&up.to_capability()).unwrap(), up);
        let put = HttpPut {
            with: SPACE.into(),
            body: BlobRef {
                digest: vec![1],
                size: 1,
            },
            url: Awaitable::Await {
                selector: ".out.ok.address.url".into(),
                task: event,
            },
            headers: Awaitable::Await {
                selector: ".out.ok.address.headers".into(),
                task: event,
            },
        };
        assert_eq!(HttpPut::parse(&put.to_capability()).unwrap(), put);
    }

    #[test]
    fn schema_violations_are_named() {
        let cap = Capability::new(CLOCK_ADVANCE, SPACE);
        assert!(ClockAdvance::parse(&cap).is_err());
        let bad_index = SpaceIndexAdd {
            with: SPACE.into(),
            index: cid_sha256(DAG_CBOR, b"i"),
            content: None,
        };
        assert!(SpaceIndexAdd::parse(&bad_index.to_capability()).is_err());
        assert!(SpaceInfo::parse(&Capability::new(SPACE_INFO, "did:web:x")).is_err());
        assert!(ClockHead::parse(&Capability::new(CLOCK_HEAD, "https://x")).is_err());
    }
}
