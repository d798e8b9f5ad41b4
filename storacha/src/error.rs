//! The crate's error type. Every failure the upload service can answer is a named
//! [`Failure`]; transport faults, HTTP statuses and protocol surprises have their own variants.
//! [`Error::is_retryable`] says whether trying again later can help, so callers (the backup
//! worker) decide between retry and dead-letter without matching on strings.

use proto::Ipld;

/// The `name` of a ucanto error receipt, for the failures the upload service (and ucanto's
/// server and validator in front of it) answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The Space has no storage provider (upload and blob operations on an unprovisioned Space)
    /// or no storage left.
    InsufficientStorage,
    /// `space/info` on a Space nobody provisioned.
    SpaceUnknown,
    /// The invocation is addressed to another service DID (a configuration error).
    InvalidAudience,
    /// The delegation chain does not grant the capability: missing, too narrow, expired,
    /// revoked, badly signed (the message says which).
    Unauthorized,
    /// `space/index/add` for an index blob that is not stored in the Space.
    IndexNotFound,
    /// An index names a shard that is not stored in the Space.
    ShardNotFound,
    /// A blob the operation needs is not stored.
    BlobNotFound,
    /// `space/index/add` with `content` but without a retrieval authorization.
    RetrievalAuthorizationNotFound,
    /// No storage node could allocate space for the blob.
    AllocationFailure,
    /// The service is rate limiting this Space or agent.
    RateLimitExceeded,
    /// A handler failed inside the service.
    HandlerExecutionError,
    /// The service does not provide the ability.
    HandlerNotFound,
    /// Any other name.
    Other(String),
}

impl Failure {
    /// The failure named `name`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "InsufficientStorage" => Self::InsufficientStorage,
            "SpaceUnknown" => Self::SpaceUnknown,
            "InvalidAudience" => Self::InvalidAudience,
            "Unauthorized" => Self::Unauthorized,
            "IndexNotFound" => Self::IndexNotFound,
            "ShardNotFound" => Self::ShardNotFound,
            "BlobNotFound" => Self::BlobNotFound,
            "RetrievalAuthorizationNotFound" => Self::RetrievalAuthorizationNotFound,
            "AllocationFailure" | "AllocationExecutionFailure" => Self::AllocationFailure,
            "RateLimitExceeded" => Self::RateLimitExceeded,
            "HandlerExecutionError" => Self::HandlerExecutionError,
            "HandlerNotFound" => Self::HandlerNotFound,
            other => Self::Other(other.to_string()),
        }
    }

    /// Whether the same invocation can succeed later without anyone changing anything: a
    /// service-side fault or a registration still propagating, as opposed to a refusal that
    /// needs a person (provisioning, a new delegation, configuration).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::IndexNotFound
                | Self::ShardNotFound
                | Self::BlobNotFound
                | Self::AllocationFailure
                | Self::RateLimitExceeded
                | Self::HandlerExecutionError
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::InsufficientStorage => "InsufficientStorage",
            Self::SpaceUnknown => "SpaceUnknown",
            Self::InvalidAudience => "InvalidAudience",
            Self::Unauthorized => "Unauthorized",
            Self::IndexNotFound => "IndexNotFound",
            Self::ShardNotFound => "ShardNotFound",
            Self::BlobNotFound => "BlobNotFound",
            Self::RetrievalAuthorizationNotFound => "RetrievalAuthorizationNotFound",
            Self::AllocationFailure => "AllocationFailure",
            Self::RateLimitExceeded => "RateLimitExceeded",
            Self::HandlerExecutionError => "HandlerExecutionError",
            Self::HandlerNotFound => "HandlerNotFound",
            Self::Other(name) => name,
        };
        f.write_str(name)
    }
}

/// Why a call to the upload service (or a read through the gateway) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request could not be sent or its answer read (connection refused or reset, timeout).
    #[error("{url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
        /// The cause.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The server answered with an HTTP status the call cannot use.
    #[error("{url} answered HTTP {status}: {body}")]
    Http {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer's text.
        body: String,
    },
    /// The service refused the invocation: an error receipt.
    #[error("{ability} refused: {failure}: {message}")]
    Refused {
        /// The ability invoked (or the effect that failed, e.g. `blob/allocate`).
        ability: String,
        /// The error's name.
        failure: Failure,
        /// The error's message.
        message: String,
    },
    /// The storage node refused the blob's bytes.
    #[error("PUT of blob {digest} to {url} failed with HTTP {status}: {body}")]
    PutFailed {
        /// The blob's multihash (base58btc).
        digest: String,
        /// The PUT URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer's text.
        body: String,
    },
    /// A receipt the service should produce did not appear in time.
    #[error("no receipt for {ability} task {task} after {attempts} fetches from {url}")]
    ReceiptTimeout {
        /// The ability of the task.
        ability: String,
        /// The task's CID.
        task: String,
        /// Fetches made.
        attempts: u32,
        /// The receipts endpoint.
        url: String,
    },
    /// The answer is not what the protocol says it should be (undecodable message, missing
    /// receipt or effect, malformed result).
    #[error("unexpected answer to {context}: {reason}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// Bytes read back do not hash to the CID asked for.
    #[error("block {cid} read from {url} does not match its CID")]
    Integrity {
        /// The CID asked for.
        cid: String,
        /// Where the bytes came from.
        url: String,
    },
    /// The agent's delegation is unusable before anything is sent.
    #[error("delegation: {0}")]
    Delegation(String),
    /// An invocation, receipt or index could not be built.
    #[error("cannot build {what}: {reason}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether trying again later can succeed: transport faults, 5xx and 429 answers, receipts
    /// not there yet, retryable [`Failure`]s. Refusals, 4xx answers, protocol mismatches and
    /// unusable delegations are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::ReceiptTimeout { .. } => true,
            Self::Http { status, .. } | Self::PutFailed { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            Self::Refused { failure, .. } => failure.is_retryable(),
            // A gateway or node serving wrong bytes may be a transient fault (a truncated body);
            // another fetch can succeed.
            Self::Integrity { .. } => true,
            Self::Protocol { .. } | Self::Delegation(_) | Self::Build { .. } => false,
        }
    }

    /// The named failure, when the service refused.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Refused { failure, .. } => Some(failure),
            _ => None,
        }
    }

    pub(crate) fn protocol(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Protocol {
            context: context.into(),
            reason: reason.into(),
        }
    }

    /// The error an `{error: …}` receipt result stands for.
    pub(crate) fn refused(ability: &str, error: &Ipld) -> Self {
        let field = |k: &str| match error {
            Ipld::Map(m) => match m.get(k) {
                Some(Ipld::String(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        let name = field("name").unwrap_or_else(|| "Error".to_string());
        Self::Refused {
            ability: ability.to_string(),
            failure: Failure::from_name(&name),
            message: field("message").unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn error_receipts_become_named_failures() {
        let mut m = BTreeMap::new();
        m.insert("name".to_string(), Ipld::String("SpaceUnknown".into()));
        m.insert("message".to_string(), Ipld::String("no such space".into()));
        let e = Error::refused("space/info", &Ipld::Map(m));
        assert_eq!(e.failure(), Some(&Failure::SpaceUnknown));
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "space/info refused: SpaceUnknown: no such space"
        );
        assert_eq!(
            Failure::from_name("Whatever"),
            Failure::Other("Whatever".into())
        );
        assert!(Failure::from_name("IndexNotFound").is_retryable());
        let put = Error::PutFailed {
            digest: "z".into(),
            url: "u".into(),
            status: 400,
            body: String::new(),
        };
        assert!(!put.is_retryable());
    }
}
