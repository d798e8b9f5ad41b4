//! Where the upload service is and how patiently to talk to it. The defaults are Storacha's
//! production values; every one can be overridden (the tests point them at a local service).

use std::time::Duration;

/// Storacha's upload service.
pub const PRODUCTION_SERVICE_URL: &str = "https://up.storacha.network";
/// The DID invocations must be addressed to (anything else is `InvalidAudience`).
pub const PRODUCTION_SERVICE_DID: &str = "did:web:up.storacha.network";
/// Where receipts of tasks the service ran (e.g. `blob/accept`) are fetched: `<url><task CID>`.
pub const PRODUCTION_RECEIPTS_URL: &str = "https://up.storacha.network/receipt/";
/// The gateway blocks are read back through (`/ipfs/<cid>?format=raw`).
pub const PRODUCTION_GATEWAY_URL: &str = "https://w3s.link";

/// Environment variable names, the same ones the Storacha CLI honours (plus the gateway's).
pub const ENV_SERVICE_URL: &str = "STORACHA_SERVICE_URL";
/// See [`ENV_SERVICE_URL`].
pub const ENV_SERVICE_DID: &str = "STORACHA_SERVICE_DID";
/// See [`ENV_SERVICE_URL`].
pub const ENV_RECEIPTS_URL: &str = "STORACHA_RECEIPTS_URL";
/// See [`ENV_SERVICE_URL`].
pub const ENV_GATEWAY_URL: &str = "STORACHA_GATEWAY_URL";

/// ucanto's default invocation lifetime: long enough for retries of one request, short enough
/// that a captured invocation is soon useless.
pub const DEFAULT_INVOCATION_LIFETIME: Duration = Duration::from_secs(30);
/// Idle pooled connections are closed after this: below Node's default keep-alive (5 s), so we
/// never reuse a socket the server is about to close.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Retries with exponential backoff for transport faults and answers that say "try again"
/// (5xx, 429).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How to wait for a receipt the service produces later (`blob/accept` after the PUT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Polling {
    /// Fetches before giving up with `ReceiptTimeout`.
    pub attempts: u32,
    /// Pause between fetches.
    pub interval: Duration,
}

/// The client's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The ucanto endpoint (`POST <service_url>/`).
    pub service_url: String,
    /// The service's DID (the audience of every invocation).
    pub service_did: String,
    /// The receipts endpoint prefix (the task CID is appended).
    pub receipts_url: String,
    /// The gateway for reading blocks back (`<gateway_url>/ipfs/<cid>?format=raw`).
    pub gateway_url: String,
    /// Lifetime of the invocations we sign.
    pub invocation_lifetime: Duration,
    /// Time limit for one ucanto request or receipt fetch.
    pub request_timeout: Duration,
    /// Time limit for one blob PUT (a shard is up to 127 MiB).
    pub put_timeout: Duration,
    /// Time limit for establishing a connection.
    pub connect_timeout: Duration,
    /// How long idle pooled connections are kept.
    pub pool_idle_timeout: Duration,
    /// Retries of requests and PUTs.
    pub backoff: Backoff,
    /// Waiting for `blob/accept`'s receipt.
    pub polling: Polling,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service_url: PRODUCTION_SERVICE_URL.into(),
            service_did: PRODUCTION_SERVICE_DID.into(),
            receipts_url: PRODUCTION_RECEIPTS_URL.into(),
            gateway_url: PRODUCTION_GATEWAY_URL.into(),
            invocation_lifetime: DEFAULT_INVOCATION_LIFETIME,
            request_timeout: Duration::from_secs(60),
            put_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            backoff: Backoff {
                attempts: 4,
                initial: Duration::from_millis(250),
                max: Duration::from_secs(5),
            },
            // The JS client retries 3 times with p-retry's backoff (about 7 s in all); a busy
            // storage node can take longer, so wait up to about a minute.
            polling: Polling {
                attempts: 60,
                interval: Duration::from_secs(1),
            },
        }
    }
}

impl Config {
    /// Production defaults with the endpoints of a service at `url` whose DID is `did`:
    /// receipts at `<url>/receipt/`, gateway `<url>` (the local test service's layout).
    pub fn for_service(url: &str, did: &str) -> Self {
        let url = url.trim_end_matches('/');
        Self {
            service_url: url.to_string(),
            service_did: did.to_string(),
            receipts_url: format!("{url}/receipt/"),
            gateway_url: url.to_string(),
            ..Self::default()
        }
    }

    /// Production defaults overridden by whichever of [`ENV_SERVICE_URL`], [`ENV_SERVICE_DID`],
    /// [`ENV_RECEIPTS_URL`] and [`ENV_GATEWAY_URL`] `var` returns (pass `std::env::var(..).ok()`
    /// from a service's config loader, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let mut c = Self::default();
        if let Some(v) = var(ENV_SERVICE_URL) {
            c.service_url = v;
        }
        if let Some(v) = var(ENV_SERVICE_DID) {
            c.service_did = v;
        }
        if let Some(v) = var(ENV_RECEIPTS_URL) {
            c.receipts_url = v;
        }
        if let Some(v) = var(ENV_GATEWAY_URL) {
            c.gateway_url = v;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_production_and_overridable() {
        let c = Config::default();
        assert_eq!(c.service_did, "did:web:up.storacha.network");
        assert_eq!(c.receipts_url, "https://up.storacha.network/receipt/");
        let c = Config::from_vars(|k| (k == ENV_SERVICE_DID).then(|| "did:web:x.test".into()));
        assert_eq!(c.service_did, "did:web:x.test");
        assert_eq!(c.service_url, PRODUCTION_SERVICE_URL);
        let c = Config::for_service("http://127.0.0.1:9/", "did:web:test.up.storacha.network");
        assert_eq!(c.receipts_url, "http://127.0.0.1:9/receipt/");
        assert_eq!(c.gateway_url, "http://127.0.0.1:9");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(500));
        assert_eq!(b.delay(64), Duration::from_millis(500));
    }
}
