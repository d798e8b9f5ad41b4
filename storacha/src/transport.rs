//! HTTP: ucanto's CAR transport (`POST`, `content-type` and `accept` both
//! `application/vnd.ipld.car`), blob PUTs and GETs, each retried with exponential backoff on
//! transport faults and on 5xx/429 answers. One pooled HTTP client per [`Transport`]; idle
//! connections are dropped before a typical server keep-alive ends, and a request that fails on
//! a connection the server just closed is simply the next attempt.

use std::collections::BTreeMap;

use bytes::Bytes;
use proto::message::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use crate::config::Config;
use crate::error::Error;

/// Longest answer text kept in an error.
const MAX_ERROR_BODY: usize = 512;

/// A GET's outcome.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// 200 or 206 with the body.
    Body {
        /// The status.
        status: u16,
        /// The body.
        bytes: Bytes,
    },
    /// 404.
    NotFound,
}

/// The pooled HTTP client and the retry policy.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    http: reqwest::Client,
    config: Config,
}

impl Transport {
    pub(crate) fn new(config: &Config) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(config.pool_idle_timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::Build {
                what: "HTTP client",
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            config: config.clone(),
        })
    }

    /// POSTs a ucanto request CAR to the service; returns the response CAR.
    pub(crate) async fn post_message(&self, body: Bytes) -> Result<Bytes, Error> {
        let url = format!("{}/", self.config.service_url.trim_end_matches('/'));
        self.with_retries(&url, || {
            self.http
                .post(&url)
                .header("content-type", CONTENT_TYPE)
                .header("accept", CONTENT_TYPE)
                .timeout(self.config.request_timeout)
                .body(body.clone())
        })
        .await
        .and_then(|(status, bytes)| match status {
            200 => Ok(bytes),
            s => Err(http_error(&url, s, &bytes)),
        })
    }

    /// GETs `url` (404 is [`Fetched::NotFound`]; other non-2xx statuses are errors).
    pub(crate) async fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Fetched, Error> {
        let (status, bytes) = self
            .with_retries(url, || {
                let mut req = self
                    .http
                    .request(Method::GET, url)
                    .timeout(self.config.request_timeout);
                for (k, v) in headers {
                    req = req.header(*k, v);
                }
                req
            })
            .await?;
        match status {
            200 | 206 => Ok(Fetched::Body { status, bytes }),
            404 => Ok(Fetched::NotFound),
            s => Err(http_error(url, s, &bytes)),
        }
    }

    /// PUTs a blob's bytes to `url` with exactly the `headers` the service gave.
    pub(crate) async fn put(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: Bytes,
        digest: &str,
    ) -> Result<(), Error> {
        let (status, bytes) = self
            .with_retries(url, || {
                let mut req = self
                    .http
                    .put(url)
                    .timeout(self.config.put_timeout)
                    .body(body.clone());
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                req
            })
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Error::PutFailed {
                digest: digest.to_string(),
                url: url.to_string(),
                status,
                body: snippet(&bytes),
            })
        }
    }

    /// Sends the request `make` builds until it gets an answer that is final (not 5xx/429/408)
    /// or the attempts run out; returns the last status and body.
    async fn with_retries(
        &self,
        url: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Bytes), Error> {
        let backoff = self.config.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= backoff.attempts.max(1);
            let outcome = match make().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) => Ok((status, bytes)),
                        Err(e) => Err(transport_error(url, e)),
                    }
                }
                Err(e) => Err(transport_error(url, e)),
            };
            match outcome {
                Ok((status, bytes)) if last || !retryable_status(status) => {
                    return Ok((status.as_u16(), bytes));
                }
                Err(e) if last => return Err(e),
                Ok((status, _)) => {
                    tracing::debug!(url, %status, attempt, "retrying after a retryable status");
                }
                Err(e) => {
                    tracing::debug!(url, error = %e, attempt, "retrying after a transport fault")
                }
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
}

fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

fn transport_error(url: &str, e: reqwest::Error) -> Error {
    let reason = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    Error::Transport {
        url: url.to_string(),
        reason,
        source: Some(e),
    }
}

pub(crate) fn http_error(url: &str, status: u16, body: &[u8]) -> Error {
    Error::Http {
        url: url.to_string(),
        status,
        body: snippet(body),
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]);
    text.trim().to_string()
}
