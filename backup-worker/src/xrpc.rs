//! A small XRPC client for what a backup reads from a PDS: `com.atproto.sync.getLatestCommit`,
//! `getRepo`, `listBlobs`, `getBlob`, `com.atproto.identity.resolveHandle` and
//! `app.bsky.actor.getPreferences`, plus the plain GETs of identity resolution.
//!
//! # Streaming
//!
//! `getRepo` and `getBlob` return the response body as a [`ByteStream`] of chunks as they
//! arrive: nothing here holds a repo or a blob in memory. [`StreamReader`] turns such a stream
//! into a blocking [`std::io::Read`] for [`proto::car::CarReader`] (run it on a blocking
//! thread). JSON answers are read whole but bounded ([`XrpcConfig::max_json_bytes`]).
//!
//! # Rate limits
//!
//! Every request to a host goes through that host's limiter (one per `host:port`, shared by all
//! clones of an [`XrpcClient`]):
//!
//! - `RateLimit-Remaining` / `RateLimit-Reset` on any answer are remembered; each request spends
//!   one of the remaining points before it is sent, so concurrent requests do not overshoot,
//!   and when none are left requests wait for the reset. `RateLimit-Reset` is read as a Unix
//!   time when it is one (the reference PDS sends that, rounded down to the second, so we add
//!   the second back) and as seconds from now otherwise.
//! - `429 Too Many Requests` blocks the host for `Retry-After` (seconds or an HTTP date), else
//!   until `RateLimit-Reset`, else for an exponential backoff; then the request is retried, at
//!   most [`XrpcConfig::max_retries`] times. A wait longer than
//!   [`XrpcConfig::max_rate_limit_wait`] is not waited out: the call fails with
//!   [`XrpcError::RateLimited`] (retryable), so a queue can put the job back instead of holding
//!   a worker.
//! - `502`/`503`/`504` and failures to connect are retried the same way (with backoff).
//!
//! # Counting
//!
//! Every request sent (retries included) is counted per host and in total ([`XrpcStats`]), so
//! that tests can hold a backup to a request budget ("an unchanged account takes ≤ 2 PDS
//! requests").
//!
//! # Errors
//!
//! [`XrpcError`] names the XRPC errors a backup meets (`RepoNotFound`, `RepoTakendown`,
//! `RepoSuspended`, `RepoDeactivated`, `BlobNotFound`, …) and gives each a [`Disposition`]:
//! retry later, or give up.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use proto::Cid;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

/// A response body as it arrives, chunk by chunk.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, XrpcError>> + Send + 'static>>;

/// Default `User-Agent`.
pub const DEFAULT_USER_AGENT: &str = concat!("bluesky-backups/", env!("CARGO_PKG_VERSION"));
/// Most CIDs `listBlobs` may return per page (the lexicon's maximum).
pub const LIST_BLOBS_MAX_LIMIT: u32 = 1000;

/// How a failed call should be handled by whoever runs the backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Transient: try the same work again later (with backoff).
    Retry,
    /// Will not get better by retrying: give up and say why.
    Permanent,
}

/// Settings of an [`XrpcClient`]. [`Default`] suits production.
#[derive(Clone, Debug)]
pub struct XrpcConfig {
    /// `User-Agent` header.
    pub user_agent: String,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for the next bytes of a response: a stalled stream fails after this
    /// long, however long the whole download takes.
    pub read_timeout: Duration,
    /// Bound on a whole JSON call (not on streamed bodies).
    pub request_timeout: Duration,
    /// Retries after a 429, a 502/503/504 or a failure to connect.
    pub max_retries: u32,
    /// First backoff; doubled on each retry.
    pub backoff_base: Duration,
    /// Longest backoff between retries.
    pub max_backoff: Duration,
    /// Longest a request waits for a rate limit to reset; a longer wait fails the call with
    /// [`XrpcError::RateLimited`] instead.
    pub max_rate_limit_wait: Duration,
    /// Largest JSON answer read (and error bodies).
    pub max_json_bytes: usize,
}

impl Default for XrpcConfig {
    fn default() -> Self {
        Self {
            user_agent: DEFAULT_USER_AGENT.to_string(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_retries: 4,
            backoff_base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_rate_limit_wait: Duration::from_secs(120),
            max_json_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why an XRPC call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XrpcError {
    /// The PDS does not host this repo.
    #[error("repo {did} not found on {host}")]
    RepoNotFound {
        /// The DID asked for.
        did: String,
        /// The PDS.
        host: String,
    },
    /// The repo was taken down by the PDS's moderators.
    #[error("repo {did} is taken down")]
    RepoTakendown {
        /// The DID.
        did: String,
    },
    /// The repo is suspended.
    #[error("repo {did} is suspended")]
    RepoSuspended {
        /// The DID.
        did: String,
    },
    /// The account deactivated its repo (only its owner can read it now).
    #[error("repo {did} is deactivated")]
    RepoDeactivated {
        /// The DID.
        did: String,
    },
    /// The blob is not (or no longer) on the PDS.
    #[error("blob {cid} of {did} not found")]
    BlobNotFound {
        /// The DID.
        did: String,
        /// The blob.
        cid: String,
    },
    /// The call needs (another) access token: 401, `AuthRequired`, `InvalidToken`,
    /// `ExpiredToken`.
    #[error("{url}: authentication required ({error}): {message}")]
    AuthRequired {
        /// The URL (no credentials in it).
        url: String,
        /// The XRPC error name.
        error: String,
        /// The server's message.
        message: String,
    },
    /// The host kept answering 429, or asked for a longer wait than we hold a worker for.
    #[error("rate limited by {host}{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The host.
        host: String,
        /// When the host said it would accept requests again, if it said.
        retry_after: Option<Duration>,
    },
    /// Any other non-success answer.
    #[error("{url}: HTTP {status}{}{}", error.as_deref().map(|e| format!(" {e}")).unwrap_or_default(), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The XRPC error name, if the body had one.
        error: Option<String>,
        /// The XRPC error message, if the body had one.
        message: Option<String>,
    },
    /// The request could not be sent or its answer not received (connect, TLS, timeout).
    #[error("{url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The body of a successful answer broke off (connection lost, stalled past the read
    /// timeout, truncated).
    #[error("{url}: response body failed: {source}")]
    Body {
        /// The URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A success answer we cannot use (not the JSON the lexicon says, too large, a cursor that
    /// does not move).
    #[error("{url}: invalid response: {reason}")]
    InvalidResponse {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A base URL that cannot carry XRPC calls.
    #[error("invalid service URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl XrpcError {
    /// Whether retrying later may help.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::RateLimited { .. } | Self::Transport { .. } | Self::Body { .. } => {
                Disposition::Retry
            }
            // An expired access token is the usual cause, and the token broker refreshes it.
            Self::AuthRequired { .. } => Disposition::Retry,
            Self::Http { status, .. } if *status >= 500 || matches!(*status, 408 | 425 | 429) => {
                Disposition::Retry
            }
            Self::RepoNotFound { .. }
            | Self::RepoTakendown { .. }
            | Self::RepoSuspended { .. }
            | Self::RepoDeactivated { .. }
            | Self::BlobNotFound { .. }
            | Self::Http { .. }
            | Self::InvalidResponse { .. }
            | Self::InvalidUrl { .. } => Disposition::Permanent,
        }
    }

    /// The HTTP status, for errors that came with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::RateLimited { .. } => Some(429),
            Self::AuthRequired { .. } => Some(401),
            _ => None,
        }
    }
}

/// Request counts, for one host or all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XrpcStats {
    /// Requests sent (every attempt, retries included).
    pub requests: u64,
    /// Of those, retries (after a 429, a 5xx or a connect failure).
    pub retries: u64,
    /// Times a request waited for a rate limit (remaining points spent, 429, `Retry-After`).
    pub rate_limit_waits: u64,
    /// 429 answers received.
    pub too_many_requests: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limit_waits: AtomicU64,
    too_many_requests: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> XrpcStats {
        XrpcStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rate_limit_waits: self.rate_limit_waits.load(Ordering::Relaxed),
            too_many_requests: self.too_many_requests.load(Ordering::Relaxed),
        }
    }
}

/// What a host told us about its limits.
#[derive(Default)]
struct LimitState {
    /// Points left in the current window (decremented as we send).
    remaining: Option<u64>,
    /// When the window resets.
    reset_at: Option<Instant>,
    /// No request before this (after a 429).
    blocked_until: Option<Instant>,
}

#[derive(Default)]
struct Host {
    limit: Mutex<LimitState>,
    counters: Counters,
}

impl Host {
    /// How long to wait before sending, or `None` to send now (spending one point).
    fn reserve(&self, now: Instant) -> Option<Instant> {
        let mut s = self.limit.lock().expect("limiter lock");
        if let Some(until) = s.blocked_until {
            if until > now {
                return Some(until);
            }
            s.blocked_until = None;
        }
        if let Some(reset) = s.reset_at
            && reset <= now
        {
            s.reset_at = None;
            s.remaining = None;
        }
        match (s.remaining, s.reset_at) {
            (Some(0), Some(reset)) => Some(reset),
            (Some(n), _) => {
                // Without a reset time a spent budget tells us nothing about when to send.
                s.remaining = Some(n.saturating_sub(1));
                None
            }
            (None, _) => None,
        }
    }

    /// Remembers the `RateLimit-*` headers of an answer.
    fn observe(&self, headers: &HeaderMap, now: Instant) {
        let remaining = header_u64(headers, "ratelimit-remaining");
        let reset = header_u64(headers, "ratelimit-reset").map(|v| reset_instant(v, now));
        if remaining.is_none() && reset.is_none() {
            return;
        }
        let mut s = self.limit.lock().expect("limiter lock");
        if let Some(r) = remaining {
            // Our own count may be lower (requests in flight); keep the lower one.
            s.remaining = Some(s.remaining.map_or(r, |mine| mine.min(r)));
        }
        if let Some(reset) = reset {
            if s.reset_at.is_none_or(|old| reset > old) {
                // A new window: the server's count is authoritative.
                if let Some(r) = remaining {
                    s.remaining = Some(r);
                }
            }
            s.reset_at = Some(reset);
        }
    }

    fn block_until(&self, until: Instant) {
        let mut s = self.limit.lock().expect("limiter lock");
        if s.blocked_until.is_none_or(|b| b < until) {
            s.blocked_until = Some(until);
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::trim)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name)?.parse().ok()
}

/// Values above this are Unix times, below it seconds from now (no window lasts 30 years).
const UNIX_TIME_THRESHOLD: u64 = 1_000_000_000;

/// `RateLimit-Reset`: a Unix time (what `@atproto/xrpc-server` sends) or delta-seconds (the
/// IETF draft). `@atproto/xrpc-server` rounds the reset time *down* to the second, so the
/// window really ends up to a second later: we take the end of that second, or the first
/// request after the "reset" meets a 429.
fn reset_instant(value: u64, now: Instant) -> Instant {
    if value >= UNIX_TIME_THRESHOLD {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let delta = (value as f64 + 1.0 - now_unix).max(0.0);
        now + Duration::from_secs_f64(delta.min(86_400.0))
    } else {
        now + Duration::from_secs(value.min(86_400))
    }
}

/// `Retry-After`: delta-seconds or an HTTP date (IMF-fixdate).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = header_str(headers, "retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = parse_http_date(v)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now).min(86_400)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn parse_http_date(s: &str) -> Option<u64> {
    let rest = s.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// The result of `com.atproto.sync.getLatestCommit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatestCommit {
    /// The commit's CID.
    pub cid: Cid,
    /// Its revision (a TID).
    pub rev: String,
}

/// One page of `com.atproto.sync.listBlobs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobPage {
    /// Blob CIDs, ascending.
    pub cids: Vec<Cid>,
    /// Where the next page starts. The reference PDS returns one on every non-empty page; only
    /// an empty page ends the listing.
    pub cursor: Option<String>,
}

/// A streamed download (`getRepo`, `getBlob`).
pub struct Download {
    /// `Content-Type` of the answer.
    pub content_type: Option<String>,
    /// `Content-Length`, when the server sent one.
    pub content_length: Option<u64>,
    /// The body.
    pub body: ByteStream,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_type", &self.content_type)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: reqwest::Client,
    config: XrpcConfig,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    total: Counters,
}

/// The XRPC client. Cheap to clone; clones share connections, limiters and counters.
#[derive(Clone)]
pub struct XrpcClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for XrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrpcClient")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A request in the making: method, URL, optional bearer token, and whether it streams.
struct Call<'a> {
    method: Method,
    url: Url,
    bearer: Option<&'a str>,
    streaming: bool,
    /// A JSON body (procedures).
    body: Option<serde_json::Value>,
}

/// The `host:port` a URL's requests are limited and counted under.
pub fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl XrpcClient {
    /// A client with its own connection pool.
    pub fn new(config: XrpcConfig) -> Result<Self, XrpcError> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            // Redirects would move a request to a host our limiter and checks never saw.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| XrpcError::InvalidUrl {
                url: String::new(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self::with_http_client(http, config))
    }

    /// A client over a `reqwest::Client` built elsewhere (tests use this to pin DNS names to
    /// loopback); its own timeouts and redirect policy apply.
    pub fn with_http_client(http: reqwest::Client, config: XrpcConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                config,
                hosts: Mutex::new(HashMap::new()),
                total: Counters::default(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &XrpcConfig {
        &self.inner.config
    }

    /// Counts over all hosts.
    pub fn stats(&self) -> XrpcStats {
        self.inner.total.snapshot()
    }

    /// Counts for one host, given as `host:port` (see [`host_key`]) or as a URL on it.
    pub fn host_stats(&self, host: &str) -> XrpcStats {
        let key = Url::parse(host).map_or_else(|_| host.to_string(), |u| host_key(&u));
        self.inner
            .hosts
            .lock()
            .expect("hosts lock")
            .get(&key)
            .map(|h| h.counters.snapshot())
            .unwrap_or_default()
    }

    fn host(&self, url: &Url) -> Arc<Host> {
        self.inner
            .hosts
            .lock()
            .expect("hosts lock")
            .entry(host_key(url))
            .or_default()
            .clone()
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        c.backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(c.max_backoff)
    }

    /// `<base>/xrpc/<nsid>?<params>`.
    pub fn xrpc_url(base: &Url, nsid: &str, params: &[(&str, &str)]) -> Result<Url, XrpcError> {
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(XrpcError::InvalidUrl {
                url: base.to_string(),
                reason: "not an http(s) URL with a host".into(),
            });
        }
        let mut url = base.clone();
        let prefix = base.path().trim_end_matches('/');
        url.set_path(&format!("{prefix}/xrpc/{nsid}"));
        url.set_query(None);
        url.set_fragment(None);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        Ok(url)
    }

    /// Sends a request under the host's limiter, with bounded retries; returns a success
    /// answer or the named error.
    async fn send(&self, call: Call<'_>) -> Result<reqwest::Response, XrpcError> {
        let host = self.host(&call.url);
        let config = &self.inner.config;
        let url_text = call.url.to_string();
        let mut attempt = 0u32;
        loop {
            // Wait for the limiter.
            loop {
                let now = Instant::now();
                let Some(until) = host.reserve(now) else {
                    break;
                };
                let wait = until.saturating_duration_since(now);
                if wait > config.max_rate_limit_wait {
                    return Err(XrpcError::RateLimited {
                        host: host_key(&call.url),
                        retry_after: Some(wait),
                    });
                }
                host.counters
                    .rate_limit_waits
                    .fetch_add(1, Ordering::Relaxed);
                self.inner
                    .total
                    .rate_limit_waits
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host = %host_key(&call.url), wait_ms = wait.as_millis() as u64, "waiting for rate limit");
                tokio::time::sleep_until(until.into()).await;
            }
            host.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.inner.total.requests.fetch_add(1, Ordering::Relaxed);
            if attempt > 0 {
                host.counters.retries.fetch_add(1, Ordering::Relaxed);
                self.inner.total.retries.fetch_add(1, Ordering::Relaxed);
            }

            let mut req = self
                .inner
                .http
                .request(call.method.clone(), call.url.clone());
            if let Some(token) = call.bearer {
                req = req.bearer_auth(token);
            }
            if let Some(body) = &call.body {
                req = req.json(body);
            }
            if !call.streaming {
                req = req.timeout(config.request_timeout);
            }
            let can_retry = attempt < config.max_retries;
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) if can_retry && (e.is_connect() || e.is_timeout()) => {
                    let wait = self.backoff(attempt);
                    tracing::debug!(url = %url_text, error = %e, wait_ms = wait.as_millis() as u64, "retrying after transport error");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    continue;
                }
                Err(source) => {
                    return Err(XrpcError::Transport {
                        url: url_text,
                        source,
                    });
                }
            };
            let now = Instant::now();
            host.observe(resp.headers(), now);
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                host.counters
                    .too_many_requests
                    .fetch_add(1, Ordering::Relaxed);
                self.inner
                    .total
                    .too_many_requests
                    .fetch_add(1, Ordering::Relaxed);
                let reset = header_u64(resp.headers(), "ratelimit-reset")
                    .map(|v| reset_instant(v, now).saturating_duration_since(now));
                let told = retry_after(resp.headers()).or(reset);
                // A reset in the past (whole-second clocks) still gets a short backoff.
                let wait = told.unwrap_or_default().max(self.backoff(attempt));
                if !can_retry || wait > config.max_rate_limit_wait {
                    return Err(XrpcError::RateLimited {
                        host: host_key(&call.url),
                        retry_after: told.or(Some(wait)),
                    });
                }
                tracing::debug!(url = %url_text, wait_ms = wait.as_millis() as u64, "429, waiting");
                host.block_until(now + wait);
                attempt += 1;
                continue;
            }
            if can_retry
                && matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                )
            {
                let wait = retry_after(resp.headers())
                    .unwrap_or_default()
                    .max(self.backoff(attempt))
                    .min(config.max_backoff);
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            return Err(self.error_from(resp, url_text).await);
        }
    }

    /// Reads a failed answer's XRPC error body (bounded) and names the error.
    async fn error_from(&self, resp: reqwest::Response, url: String) -> XrpcError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, 64 * 1024, &url)
            .await
            .unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(|s| s.chars().take(500).collect::<String>())
        };
        XrpcError::Http {
            url,
            status,
            error: field("error"),
            message: field("message"),
        }
    }

    /// Names repo-level errors: `RepoNotFound` & co from the error name, or the reference
    /// PDS's messages.
    fn name_error(e: XrpcError, did: &str, host: &str) -> XrpcError {
        let XrpcError::Http {
            url,
            status,
            error,
            message,
        } = e
        else {
            return e;
        };
        let msg = message.as_deref().unwrap_or("");
        match error.as_deref() {
            Some("RepoNotFound") => XrpcError::RepoNotFound {
                did: did.into(),
                host: host.into(),
            },
            Some("RepoTakendown") => XrpcError::RepoTakendown { did: did.into() },
            Some("RepoSuspended") => XrpcError::RepoSuspended { did: did.into() },
            Some("RepoDeactivated") => XrpcError::RepoDeactivated { did: did.into() },
            Some("AuthRequired" | "InvalidToken" | "ExpiredToken" | "AuthMissing") => {
                XrpcError::AuthRequired {
                    url,
                    error: error.unwrap_or_default(),
                    message: message.unwrap_or_default(),
                }
            }
            Some("InvalidRequest") if msg.starts_with("Could not find repo") => {
                XrpcError::RepoNotFound {
                    did: did.into(),
                    host: host.into(),
                }
            }
            _ if status == 401 => XrpcError::AuthRequired {
                url,
                error: error.unwrap_or_default(),
                message: message.unwrap_or_default(),
            },
            _ => XrpcError::Http {
                url,
                status,
                error,
                message,
            },
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, call: Call<'_>) -> Result<T, XrpcError> {
        let url = call.url.to_string();
        let resp = self.send(call).await?;
        let body = read_limited(resp, self.inner.config.max_json_bytes, &url).await?;
        serde_json::from_slice(&body).map_err(|e| XrpcError::InvalidResponse {
            url,
            reason: format!("not the expected JSON: {e}"),
        })
    }

    fn get(url: Url) -> Call<'static> {
        Call {
            method: Method::GET,
            url,
            bearer: None,
            streaming: false,
            body: None,
        }
    }

    /// A plain GET of a JSON document (a DID document, a PLC entry) under the same limiter,
    /// counters and bounds. Non-success answers are [`XrpcError::Http`].
    pub async fn get_json_url(&self, url: Url) -> Result<serde_json::Value, XrpcError> {
        self.json(Self::get(url)).await
    }

    /// A plain GET of a short text (a handle's `/.well-known/atproto-did`), at most
    /// `max_bytes`.
    pub async fn get_text_url(&self, url: Url, max_bytes: usize) -> Result<String, XrpcError> {
        let text = url.to_string();
        let resp = self.send(Self::get(url)).await?;
        let body = read_limited(resp, max_bytes, &text).await?;
        String::from_utf8(body.to_vec()).map_err(|_| XrpcError::InvalidResponse {
            url: text,
            reason: "not UTF-8".into(),
        })
    }

    /// `com.atproto.identity.resolveHandle` on `service` (a PDS or an AppView).
    pub async fn resolve_handle(&self, service: &Url, handle: &str) -> Result<String, XrpcError> {
        #[derive(serde::Deserialize)]
        struct Out {
            did: String,
        }
        let url = Self::xrpc_url(
            service,
            "com.atproto.identity.resolveHandle",
            &[("handle", handle)],
        )?;
        let out: Out = self.json(Self::get(url)).await?;
        Ok(out.did)
    }

    /// `com.atproto.sync.getLatestCommit`: the repo's current commit CID and rev.
    pub async fn get_latest_commit(&self, pds: &Url, did: &str) -> Result<LatestCommit, XrpcError> {
        #[derive(serde::Deserialize)]
        struct Out {
            cid: String,
            rev: String,
        }
        let url = Self::xrpc_url(pds, "com.atproto.sync.getLatestCommit", &[("did", did)])?;
        let text = url.to_string();
        let out: Out = self
            .json(Self::get(url))
            .await
            .map_err(|e| Self::name_error(e, did, &host_key(pds)))?;
        let cid = proto::ipld::parse_cid(&out.cid).map_err(|e| XrpcError::InvalidResponse {
            url: text.clone(),
            reason: e.to_string(),
        })?;
        if !proto::repo::is_valid_tid(&out.rev) {
            return Err(XrpcError::InvalidResponse {
                url: text,
                reason: format!("rev {:?} is not a TID", out.rev),
            });
        }
        Ok(LatestCommit { cid, rev: out.rev })
    }

    /// `com.atproto.server.createSession` with an app password: the session's access token
    /// (for `getPreferences` when no OAuth token is at hand, as in the CLI).
    pub async fn create_session(
        &self,
        pds: &Url,
        identifier: &str,
        password: &str,
    ) -> Result<String, XrpcError> {
        #[derive(serde::Deserialize)]
        struct Session {
            #[serde(rename = "accessJwt")]
            access_jwt: String,
        }
        let url = Self::xrpc_url(pds, "com.atproto.server.createSession", &[])?;
        let session: Session = self
            .json(Call {
                method: Method::POST,
                url,
                bearer: None,
                streaming: false,
                body: Some(serde_json::json!({
                    "identifier": identifier,
                    "password": password,
                })),
            })
            .await
            .map_err(|e| Self::name_error(e, identifier, &host_key(pds)))?;
        Ok(session.access_jwt)
    }

    /// `com.atproto.sync.getRepo` (with `since` for only the blocks written after that rev):
    /// the CAR as a stream, never buffered.
    pub async fn get_repo(
        &self,
        pds: &Url,
        did: &str,
        since: Option<&str>,
    ) -> Result<Download, XrpcError> {
        let mut params = vec![("did", did)];
        if let Some(since) = since {
            params.push(("since", since));
        }
        let url = Self::xrpc_url(pds, "com.atproto.sync.getRepo", &params)?;
        self.download(url)
            .await
            .map_err(|e| Self::name_error(e, did, &host_key(pds)))
    }

    /// `com.atproto.sync.getBlob`: the blob's bytes as a stream, never buffered. Check them
    /// against `cid` as they arrive ([`proto::ipld::verify_cid`] on the whole, or a streaming
    /// hash).
    pub async fn get_blob(&self, pds: &Url, did: &str, cid: &Cid) -> Result<Download, XrpcError> {
        let cid_text = cid.to_string();
        let url = Self::xrpc_url(
            pds,
            "com.atproto.sync.getBlob",
            &[("did", did), ("cid", &cid_text)],
        )?;
        self.download(url).await.map_err(|e| match e {
            XrpcError::Http {
                error: Some(ref name),
                ref message,
                ..
            } if name == "BlobNotFound"
                || (name == "InvalidRequest"
                    && message
                        .as_deref()
                        .is_some_and(|m| m.contains("Blob not found"))) =>
            {
                XrpcError::BlobNotFound {
                    did: did.into(),
                    cid: cid_text.clone(),
                }
            }
            e => Self::name_error(e, did, &host_key(pds)),
        })
    }

    async fn download(&self, url: Url) -> Result<Download, XrpcError> {
        let text = url.to_string();
        let resp = self
            .send(Call {
                method: Method::GET,
                url,
                bearer: None,
                streaming: true,
                body: None,
            })
            .await?;
        let content_type = header_str(resp.headers(), "content-type").map(str::to_string);
        let content_length = resp.content_length();
        let body = resp
            .bytes_stream()
            .map_err(move |source| XrpcError::Body {
                url: text.clone(),
                source,
            })
            .boxed();
        Ok(Download {
            content_type,
            content_length,
            body,
        })
    }

    /// One page of `com.atproto.sync.listBlobs` (`limit` is clamped to 1–1000).
    pub async fn list_blobs_page(
        &self,
        pds: &Url,
        did: &str,
        since: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<BlobPage, XrpcError> {
        #[derive(serde::Deserialize)]
        struct Out {
            cids: Vec<String>,
            cursor: Option<String>,
        }
        let limit = limit.clamp(1, LIST_BLOBS_MAX_LIMIT).to_string();
        let mut params = vec![("did", did), ("limit", limit.as_str())];
        if let Some(since) = since {
            params.push(("since", since));
        }
        if let Some(cursor) = cursor {
            params.push(("cursor", cursor));
        }
        let url = Self::xrpc_url(pds, "com.atproto.sync.listBlobs", &params)?;
        let text = url.to_string();
        let out: Out = self
            .json(Self::get(url))
            .await
            .map_err(|e| Self::name_error(e, did, &host_key(pds)))?;
        let cids = out
            .cids
            .iter()
            .map(|c| proto::ipld::parse_cid(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| XrpcError::InvalidResponse {
                url: text,
                reason: e.to_string(),
            })?;
        Ok(BlobPage {
            cids,
            cursor: out.cursor,
        })
    }

    /// Every blob CID of the repo (referenced by records written after `since`, when given),
    /// page by page: stops on an empty page or one without a cursor. A cursor that does not
    /// move is an error, not a loop.
    pub fn list_blobs(
        &self,
        pds: &Url,
        did: &str,
        since: Option<&str>,
        page_size: u32,
    ) -> impl Stream<Item = Result<Cid, XrpcError>> + Send + 'static {
        struct State {
            client: XrpcClient,
            pds: Url,
            did: String,
            since: Option<String>,
            cursor: Option<String>,
            done: bool,
        }
        let state = State {
            client: self.clone(),
            pds: pds.clone(),
            did: did.to_string(),
            since: since.map(str::to_string),
            cursor: None,
            done: false,
        };
        stream::try_unfold(state, move |mut s| async move {
            if s.done {
                return Ok(None);
            }
            let page = s
                .client
                .list_blobs_page(
                    &s.pds,
                    &s.did,
                    s.since.as_deref(),
                    s.cursor.as_deref(),
                    page_size,
                )
                .await?;
            if page.cids.is_empty() {
                return Ok(None);
            }
            match page.cursor {
                Some(next) if s.cursor.as_deref() == Some(next.as_str()) => {
                    return Err(XrpcError::InvalidResponse {
                        url: s.pds.to_string(),
                        reason: format!("listBlobs cursor {next:?} did not move"),
                    });
                }
                Some(next) => s.cursor = Some(next),
                None => s.done = true,
            }
            Ok(Some((stream::iter(page.cids.into_iter().map(Ok)), s)))
        })
        .try_flatten()
    }

    /// `app.bsky.actor.getPreferences` with the account's access token (sent as a bearer
    /// token): the answer as JSON (`{"preferences": [...]}`).
    pub async fn get_preferences(
        &self,
        pds: &Url,
        access_token: &str,
    ) -> Result<serde_json::Value, XrpcError> {
        let url = Self::xrpc_url(pds, "app.bsky.actor.getPreferences", &[])?;
        let value: serde_json::Value = self
            .json(Call {
                method: Method::GET,
                url,
                bearer: Some(access_token),
                streaming: false,
                body: None,
            })
            .await
            .map_err(|e| Self::name_error(e, "", &host_key(pds)))?;
        if !value
            .get("preferences")
            .is_some_and(serde_json::Value::is_array)
        {
            return Err(XrpcError::InvalidResponse {
                url: pds.to_string(),
                reason: "getPreferences answer has no preferences list".into(),
            });
        }
        Ok(value)
    }
}

/// Reads a body to the end, failing past `max` bytes.
async fn read_limited(resp: reqwest::Response, max: usize, url: &str) -> Result<Bytes, XrpcError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(XrpcError::InvalidResponse {
            url: url.into(),
            reason: format!("answer larger than {max} bytes"),
        });
    }
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| XrpcError::Body {
            url: url.into(),
            source,
        })?;
        if out.len() + chunk.len() > max {
            return Err(XrpcError::InvalidResponse {
                url: url.into(),
                reason: format!("answer larger than {max} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// A blocking [`io::Read`] over a [`ByteStream`], for synchronous parsers such as
/// [`proto::car::CarReader`]. Each read that needs more bytes blocks on the runtime for the
/// next chunk, so use it only off the async threads (`tokio::task::spawn_blocking`). A stream
/// error becomes an [`io::Error`] whose inner error is the [`XrpcError`]
/// ([`StreamReader::xrpc_error`] gets it back).
pub struct StreamReader {
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    chunk: Bytes,
    bytes_read: u64,
    /// The stream ended (or failed): it is not polled again.
    done: bool,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("bytes_read", &self.bytes_read)
            .finish_non_exhaustive()
    }
}

impl StreamReader {
    /// A reader over `stream`, blocking on `handle` (`tokio::runtime::Handle::current()` taken
    /// before `spawn_blocking`).
    pub fn new(stream: ByteStream, handle: tokio::runtime::Handle) -> Self {
        Self {
            stream,
            handle,
            chunk: Bytes::new(),
            bytes_read: 0,
            done: false,
        }
    }

    /// Bytes handed out so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The [`XrpcError`] inside an [`io::Error`] this reader returned, if it is one.
    pub fn xrpc_error(err: &io::Error) -> Option<&XrpcError> {
        err.get_ref()?.downcast_ref::<XrpcError>()
    }
}

impl io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::other(e));
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        self.bytes_read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 24 Nov 2026 03:11:19 GMT"),
            Some(1_795_489_879)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_http_date("soon"), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Thu, 01 Jan 1970 00:00:00 GMT"
            )])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "later")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn limiter_spends_points_and_waits_for_the_reset() {
        let host = Host::default();
        let now = Instant::now();
        assert_eq!(host.reserve(now), None, "no information: send");
        host.observe(
            &headers(&[("ratelimit-remaining", "2"), ("ratelimit-reset", "5")]),
            now,
        );
        assert_eq!(host.reserve(now), None);
        assert_eq!(host.reserve(now), None);
        let reset = now + Duration::from_secs(5);
        assert_eq!(host.reserve(now), Some(reset), "points spent: wait");
        // After the reset the window is unknown again.
        assert_eq!(host.reserve(reset), None);
        // Unix-time resets (what @atproto/xrpc-server sends).
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3;
        let now = Instant::now();
        host.observe(
            &headers(&[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", &unix.to_string()),
            ]),
            now,
        );
        let until = host.reserve(now).expect("must wait");
        assert!(until > now + Duration::from_secs(2) && until <= now + Duration::from_secs(5));
        // Remaining 0 without a reset time: nothing to wait for.
        let host = Host::default();
        host.observe(&headers(&[("ratelimit-remaining", "0")]), now);
        assert_eq!(host.reserve(now), None);
        assert_eq!(host.reserve(now), None);
        // A 429 block wins over everything.
        let host = Host::default();
        host.block_until(now + Duration::from_secs(9));
        assert_eq!(host.reserve(now), Some(now + Duration::from_secs(9)));
    }

    #[test]
    fn stream_reader_reads_across_chunks_and_stops_at_errors() {
        use std::io::Read as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let chunks: Vec<Result<Bytes, XrpcError>> = vec![
            Ok(Bytes::from_static(b"hel")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"lo")),
        ];
        let mut reader = StreamReader::new(stream::iter(chunks).boxed(), rt.handle().clone());
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");
        assert_eq!(reader.bytes_read(), 5);
        assert_eq!(reader.read(&mut [0; 4]).unwrap(), 0, "EOF stays EOF");

        let chunks: Vec<Result<Bytes, XrpcError>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(XrpcError::InvalidResponse {
                url: "u".into(),
                reason: "cut".into(),
            }),
        ];
        let mut reader = StreamReader::new(stream::iter(chunks).boxed(), rt.handle().clone());
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        let err = reader.read(&mut buf).unwrap_err();
        assert!(matches!(
            StreamReader::xrpc_error(&err),
            Some(XrpcError::InvalidResponse { .. })
        ));
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn urls() {
        let base = Url::parse("http://127.0.0.1:2583").unwrap();
        let url = XrpcClient::xrpc_url(
            &base,
            "com.atproto.sync.getRepo",
            &[("did", "did:plc:x"), ("since", "3k")],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:2583/xrpc/com.atproto.sync.getRepo?did=did%3Aplc%3Ax&since=3k"
        );
        assert_eq!(host_key(&url), "127.0.0.1:2583");
        assert_eq!(
            host_key(&Url::parse("https://pds.example.com/x").unwrap()),
            "pds.example.com:443"
        );
        assert!(XrpcClient::xrpc_url(&Url::parse("file:///tmp").unwrap(), "a.b.c", &[]).is_err());
    }

    #[test]
    fn dispositions() {
        let http = |status| XrpcError::Http {
            url: String::new(),
            status,
            error: None,
            message: None,
        };
        assert_eq!(http(500).disposition(), Disposition::Retry);
        assert_eq!(http(503).disposition(), Disposition::Retry);
        assert_eq!(http(400).disposition(), Disposition::Permanent);
        assert_eq!(http(404).disposition(), Disposition::Permanent);
        assert_eq!(
            XrpcError::RateLimited {
                host: "h".into(),
                retry_after: None
            }
            .disposition(),
            Disposition::Retry
        );
        for e in [
            XrpcError::RepoNotFound {
                did: "d".into(),
                host: "h".into(),
            },
            XrpcError::RepoTakendown { did: "d".into() },
            XrpcError::RepoSuspended { did: "d".into() },
            XrpcError::RepoDeactivated { did: "d".into() },
            XrpcError::BlobNotFound {
                did: "d".into(),
                cid: "c".into(),
            },
        ] {
            assert_eq!(e.disposition(), Disposition::Permanent, "{e}");
        }
        let named = XrpcClient::name_error(
            XrpcError::Http {
                url: "u".into(),
                status: 400,
                error: Some("RepoDeactivated".into()),
                message: Some("Repo has been deactivated".into()),
            },
            "did:plc:x",
            "h",
        );
        assert!(matches!(named, XrpcError::RepoDeactivated { .. }));
        assert_eq!(
            XrpcError::RateLimited {
                host: "pds:443".into(),
                retry_after: Some(Duration::from_secs(3))
            }
            .to_string(),
            "rate limited by pds:443, retry after 3s"
        );
    }
}
