//! Identity: an account (handle or DID) → its DID → DID document → PDS endpoint and
//! `#atproto` signing key.
//!
//! - **Handle → DID.** With [`IdentityConfig::handle_resolver`] set (a PDS or AppView URL), by
//!   `com.atproto.identity.resolveHandle` there; otherwise by HTTPS at
//!   `https://<handle>/.well-known/atproto-did`. The DNS TXT method (`_atproto.<handle>`) is
//!   **not implemented**: it needs a DNS resolver this crate does not carry, so handles that
//!   only publish a TXT record must be resolved through a configured resolver (any PDS or the
//!   Bluesky AppView answers `resolveHandle` for them).
//! - **DID → document.** `did:plc` from the PLC directory (`GET <plc>/<did>`,
//!   [`IdentityConfig::plc_url`]); `did:web` from `https://<host>/.well-known/did.json` (host
//!   names only, no paths, as ATProto allows). Other methods are refused.
//! - **Document → identity.** The `#atproto_pds` endpoint and the `#atproto` key via
//!   [`proto::repo::DidDocument`] (`Multikey` and the legacy key forms; k256 and p256). A handle
//!   given as input must be claimed back by the document (`alsoKnownAs`), else
//!   [`IdentityError::HandleMismatch`]; a handle read from the document alone is reported as
//!   unverified.
//!
//! The endpoints we are told about are checked before we call them: `https` only, and no
//! `localhost` or IP-literal hosts in loopback, private or link-local ranges (names that
//! *resolve* to such addresses are not caught: that needs the resolver). The
//! [`IdentityConfig::allow_insecure`] switch, for tests against a local PDS, lifts these checks,
//! allows `.test` handles and makes the well-known and `did:web` lookups use plain `http`.

use std::net::IpAddr;

use proto::repo::{DidDocError, DidDocument, PublicKey};
use reqwest::Url;

use crate::xrpc::{Disposition, XrpcClient, XrpcError};

/// The public PLC directory.
pub const DEFAULT_PLC_URL: &str = "https://plc.directory";
/// Largest `/.well-known/atproto-did` answer read (a DID is short).
const MAX_WELL_KNOWN_BYTES: usize = 2048;
/// Longest handle (the DNS limit).
const MAX_HANDLE_LEN: usize = 253;

/// Where and how identities are resolved.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The PLC directory for `did:plc`.
    pub plc_url: Url,
    /// A service to ask `com.atproto.identity.resolveHandle`; `None` for the well-known HTTPS
    /// method.
    pub handle_resolver: Option<Url>,
    /// Tests only: accept `http` and loopback/private endpoints and `.test` handles, and use
    /// `http` for well-known and `did:web` lookups.
    pub allow_insecure: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            plc_url: Url::parse(DEFAULT_PLC_URL).expect("valid URL"),
            handle_resolver: None,
            allow_insecure: false,
        }
    }
}

/// Why an identity could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not a syntactically valid handle.
    #[error("invalid handle {0:?}")]
    InvalidHandle(String),
    /// Not a syntactically valid DID.
    #[error("invalid DID {0:?}")]
    InvalidDid(String),
    /// A DID method other than `plc` and `web`, or a `did:web` with a path.
    #[error("unsupported DID {0:?}: only did:plc and host-only did:web")]
    UnsupportedDid(String),
    /// The handle does not resolve to a DID.
    #[error("handle {handle} does not resolve to a DID")]
    HandleNotFound {
        /// The handle.
        handle: String,
    },
    /// The handle resolved to a DID whose document does not claim the handle back.
    #[error("handle {handle} resolved to {did}, whose DID document claims {}", claimed.as_deref().unwrap_or("no handle"))]
    HandleMismatch {
        /// The handle.
        handle: String,
        /// What it resolved to.
        did: String,
        /// The handle the document claims.
        claimed: Option<String>,
    },
    /// The DID is not registered (PLC 404) or was deleted (PLC 410), or did:web has no
    /// document.
    #[error("DID {did} not found")]
    DidNotFound {
        /// The DID.
        did: String,
    },
    /// The document fetched is for another DID.
    #[error("DID document fetched for {did} is for {found}")]
    DocumentMismatch {
        /// The DID asked for.
        did: String,
        /// The document's `id`.
        found: String,
    },
    /// The document lacks what ATProto needs, or it is unreadable.
    #[error(transparent)]
    Document(#[from] DidDocError),
    /// The PDS endpoint is not one we will call.
    #[error("PDS endpoint {endpoint:?} of {did} refused: {reason}")]
    BadEndpoint {
        /// The DID.
        did: String,
        /// The endpoint as written.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The request failed.
    #[error(transparent)]
    Xrpc(#[from] XrpcError),
}

impl IdentityError {
    /// Whether retrying later may help (only transport-level failures).
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Xrpc(e) => e.disposition(),
            _ => Disposition::Permanent,
        }
    }
}

/// A resolved account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The DID.
    pub did: String,
    /// The handle: the one given and verified both ways, or else the document's claim.
    pub handle: Option<String>,
    /// Whether `handle` was verified (resolved to this DID and claimed by its document).
    pub handle_verified: bool,
    /// The PDS endpoint (`#atproto_pds`).
    pub pds: Url,
    /// The repo signing key (`#atproto`).
    pub signing_key: PublicKey,
    /// The whole document.
    pub document: DidDocument,
}

/// Resolves handles and DIDs over an [`XrpcClient`] (so requests are rate-limited and counted
/// like the rest).
#[derive(Clone, Debug)]
pub struct IdentityResolver {
    xrpc: XrpcClient,
    config: IdentityConfig,
}

/// TLDs ATProto refuses for handles (`specs/handle`); `.test` only outside tests.
const DISALLOWED_TLDS: &[&str] = &[
    "alt",
    "arpa",
    "example",
    "internal",
    "invalid",
    "local",
    "localhost",
    "onion",
];

/// Normalises (lowercases) and checks a handle's syntax.
pub fn normalize_handle(handle: &str, allow_test: bool) -> Result<String, IdentityError> {
    let h = handle.trim().trim_start_matches('@').to_ascii_lowercase();
    let invalid = || IdentityError::InvalidHandle(handle.chars().take(300).collect());
    if h.is_empty() || h.len() > MAX_HANDLE_LEN {
        return Err(invalid());
    }
    let labels: Vec<&str> = h.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid());
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(invalid());
        }
    }
    let tld = labels[labels.len() - 1];
    if tld.as_bytes()[0].is_ascii_digit()
        || DISALLOWED_TLDS.contains(&tld)
        || (tld == "test" && !allow_test)
    {
        return Err(invalid());
    }
    Ok(h)
}

/// Checks a DID's syntax (`did:<method>:<id>`), returning its method.
fn did_method(did: &str) -> Result<&str, IdentityError> {
    let invalid = || IdentityError::InvalidDid(did.chars().take(300).collect());
    let rest = did.strip_prefix("did:").ok_or_else(invalid)?;
    let (method, id) = rest.split_once(':').ok_or_else(invalid)?;
    let id_ok = !id.is_empty()
        && did.len() <= 2048
        && !id.ends_with(':')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'));
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) || !id_ok {
        return Err(invalid());
    }
    Ok(method)
}

/// Whether an IP address is one a public service would never be on.
fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal_ip(IpAddr::V4(v4)))
        }
    }
}

impl IdentityResolver {
    /// A resolver over `xrpc`.
    pub fn new(xrpc: XrpcClient, config: IdentityConfig) -> Self {
        Self { xrpc, config }
    }

    /// The settings.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    fn web_scheme(&self) -> &'static str {
        if self.config.allow_insecure {
            "http"
        } else {
            "https"
        }
    }

    /// Why `url` may not be called, if it may not.
    fn check_endpoint(&self, url: &Url) -> Result<(), String> {
        if self.config.allow_insecure {
            return match url.scheme() {
                "http" | "https" if url.host_str().is_some() => Ok(()),
                _ => Err("not an http(s) URL with a host".into()),
            };
        }
        if url.scheme() != "https" {
            return Err("not https".into());
        }
        let Some(host) = url.host_str() else {
            return Err("no host".into());
        };
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return if is_internal_ip(ip) {
                Err("internal address".into())
            } else {
                Ok(())
            };
        }
        let d = host.trim_end_matches('.').to_ascii_lowercase();
        if d == "localhost" || d.ends_with(".localhost") || !d.contains('.') {
            Err("local host name".into())
        } else {
            Ok(())
        }
    }

    /// Handle → DID (see the module docs for the methods used).
    pub async fn resolve_handle(&self, handle: &str) -> Result<String, IdentityError> {
        let handle = normalize_handle(handle, self.config.allow_insecure)?;
        let did = match &self.config.handle_resolver {
            Some(service) => match self.xrpc.resolve_handle(service, &handle).await {
                Ok(did) => did,
                Err(XrpcError::Http {
                    status: 400 | 404, ..
                }) => {
                    return Err(IdentityError::HandleNotFound { handle });
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let url = Url::parse(&format!(
                    "{}://{handle}/.well-known/atproto-did",
                    self.web_scheme()
                ))
                .map_err(|_| IdentityError::InvalidHandle(handle.clone()))?;
                match self.xrpc.get_text_url(url, MAX_WELL_KNOWN_BYTES).await {
                    Ok(text) => text.trim().to_string(),
                    Err(XrpcError::Http {
                        status: 404 | 410, ..
                    }) => {
                        return Err(IdentityError::HandleNotFound { handle });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        did_method(&did).map_err(|_| IdentityError::HandleNotFound {
            handle: handle.clone(),
        })?;
        Ok(did)
    }

    /// The URL a DID's document is fetched from.
    pub fn document_url(&self, did: &str) -> Result<Url, IdentityError> {
        match did_method(did)? {
            "plc" => {
                let id = &did["did:plc:".len()..];
                if id.len() != 24 || !id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
                    return Err(IdentityError::InvalidDid(did.into()));
                }
                let base = self.config.plc_url.as_str().trim_end_matches('/');
                Url::parse(&format!("{base}/{did}"))
                    .map_err(|_| IdentityError::InvalidDid(did.into()))
            }
            "web" => {
                let host = &did["did:web:".len()..];
                if host.contains(':') {
                    return Err(IdentityError::UnsupportedDid(did.into()));
                }
                let host = host.replace("%3A", ":").replace("%3a", ":");
                let url = Url::parse(&format!(
                    "{}://{host}/.well-known/did.json",
                    self.web_scheme()
                ))
                .map_err(|_| IdentityError::InvalidDid(did.into()))?;
                if url.path() != "/.well-known/did.json" || url.username() != "" {
                    return Err(IdentityError::InvalidDid(did.into()));
                }
                self.check_endpoint(&url)
                    .map_err(|reason| IdentityError::BadEndpoint {
                        did: did.into(),
                        endpoint: url.to_string(),
                        reason,
                    })?;
                Ok(url)
            }
            _ => Err(IdentityError::UnsupportedDid(did.into())),
        }
    }

    /// DID → its document (checked to be that DID's).
    pub async fn did_document(&self, did: &str) -> Result<DidDocument, IdentityError> {
        let url = self.document_url(did)?;
        let json = match self.xrpc.get_json_url(url).await {
            Ok(json) => json,
            Err(XrpcError::Http {
                status: 404 | 410, ..
            }) => {
                return Err(IdentityError::DidNotFound { did: did.into() });
            }
            Err(e) => return Err(e.into()),
        };
        let doc = DidDocument::from_json(&json)?;
        if doc.id != did {
            return Err(IdentityError::DocumentMismatch {
                did: did.into(),
                found: doc.id,
            });
        }
        Ok(doc)
    }

    /// DID → identity (document, PDS endpoint, signing key).
    pub async fn resolve_did(&self, did: &str) -> Result<Identity, IdentityError> {
        let document = self.did_document(did).await?;
        let signing_key = document.signing_key()?;
        let endpoint = document.pds_endpoint()?;
        let bad = |reason: String| IdentityError::BadEndpoint {
            did: did.into(),
            endpoint: endpoint.chars().take(300).collect(),
            reason,
        };
        let pds = Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
        if pds.query().is_some() || pds.fragment().is_some() || !pds.username().is_empty() {
            return Err(bad("has a query, fragment or credentials".into()));
        }
        self.check_endpoint(&pds).map_err(bad)?;
        Ok(Identity {
            did: did.into(),
            handle: document.handle(),
            handle_verified: false,
            pds,
            signing_key,
            document,
        })
    }

    /// A handle or a DID → identity. A handle must be claimed back by the DID's document.
    pub async fn resolve(&self, account: &str) -> Result<Identity, IdentityError> {
        let account = account.trim();
        if account.starts_with("did:") {
            return self.resolve_did(account).await;
        }
        let handle = normalize_handle(account, self.config.allow_insecure)?;
        let did = self.resolve_handle(&handle).await?;
        let mut identity = self.resolve_did(&did).await?;
        if identity.handle.as_deref() != Some(handle.as_str()) {
            return Err(IdentityError::HandleMismatch {
                handle,
                did,
                claimed: identity.handle,
            });
        }
        identity.handle_verified = true;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(allow_insecure: bool) -> IdentityResolver {
        IdentityResolver::new(
            XrpcClient::new(crate::xrpc::XrpcConfig::default()).unwrap(),
            IdentityConfig {
                allow_insecure,
                ..IdentityConfig::default()
            },
        )
    }

    #[test]
    fn handles() {
        assert_eq!(
            normalize_handle("@Alice.Bsky.Social", false).unwrap(),
            "alice.bsky.social"
        );
        assert_eq!(normalize_handle("alice.test", true).unwrap(), "alice.test");
        for bad in [
            "alice",
            "alice.test",
            "-a.com",
            "a-.com",
            "a..com",
            "a.123",
            "a.local",
            "a b.com",
            "",
            "a.localhost",
        ] {
            assert!(normalize_handle(bad, false).is_err(), "{bad}");
        }
        assert!(normalize_handle(&format!("{}.com", "a".repeat(64)), false).is_err());
    }

    #[test]
    fn document_urls() {
        let r = resolver(false);
        assert_eq!(
            r.document_url("did:plc:ewvi7nxzyoun6zhxrhs64oiz")
                .unwrap()
                .as_str(),
            "https://plc.directory/did:plc:ewvi7nxzyoun6zhxrhs64oiz"
        );
        assert_eq!(
            r.document_url("did:web:example.com").unwrap().as_str(),
            "https://example.com/.well-known/did.json"
        );
        assert!(matches!(
            r.document_url("did:web:example.com:u:alice"),
            Err(IdentityError::UnsupportedDid(_))
        ));
        assert!(matches!(
            r.document_url("did:key:zQ3sh"),
            Err(IdentityError::UnsupportedDid(_))
        ));
        assert!(matches!(
            r.document_url("did:plc:short"),
            Err(IdentityError::InvalidDid(_))
        ));
        assert!(matches!(
            r.document_url("did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ"),
            Err(IdentityError::InvalidDid(_))
        ));
        assert!(matches!(
            r.document_url("alice"),
            Err(IdentityError::InvalidDid(_))
        ));
        // Local did:web only in insecure (test) mode, and then over http.
        assert!(matches!(
            r.document_url("did:web:localhost%3A8080"),
            Err(IdentityError::BadEndpoint { .. })
        ));
        assert_eq!(
            resolver(true)
                .document_url("did:web:localhost%3A8080")
                .unwrap()
                .as_str(),
            "http://localhost:8080/.well-known/did.json"
        );
    }

    #[test]
    fn endpoints() {
        let strict = resolver(false);
        for ok in [
            "https://pds.example.com",
            "https://morel.us-east.host.bsky.network/",
            "https://8.8.8.8",
        ] {
            assert!(
                strict.check_endpoint(&Url::parse(ok).unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://pds.example.com",
            "https://localhost:2583",
            "https://127.0.0.1",
            "https://10.1.2.3",
            "https://192.168.0.1",
            "https://[::1]",
            "https://[fd00::1]",
            "https://169.254.169.254",
            "https://intranet",
        ] {
            assert!(
                strict.check_endpoint(&Url::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        assert!(
            resolver(true)
                .check_endpoint(&Url::parse("http://localhost:2583").unwrap())
                .is_ok()
        );
    }
}
