//! A fault-injecting HTTP/1.1 proxy on loopback, for tests that put it between the worker and a
//! REAL server (the reference PDS, the PLC directory) and break what the server says.
//!
//! Each connection carries one request (every answer says `connection: close`). A request no
//! [`Rule`] matches is forwarded to the upstream and its answer relayed unchanged (body read
//! whole, re-framed with a `content-length`); the first matching rule's [`Fault`] decides
//! otherwise: a canned answer without asking the upstream, the upstream's answer with its body
//! rewritten, cut short behind an honest framing (a complete HTTP message whose payload is
//! truncated), or cut short behind a framing that promises more (the server dies mid-stream).
//!
//! Every request is logged by path, so tests can count what the worker asked for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read (the worker's GETs are far smaller).
const MAX_HEAD: usize = 64 * 1024;
/// Chunk size of `transfer-encoding: chunked` answers.
const CHUNK: usize = 16 * 1024;

/// How a body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `content-length`.
    Length,
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// An answer made up by the proxy.
#[derive(Clone, Debug)]
pub(crate) struct Canned {
    /// The status code.
    pub(crate) status: u16,
    /// Headers (framing headers are the proxy's).
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

/// Rewrites a body.
pub(crate) type Rewrite = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;
/// Where to cut a body: the number of bytes kept.
pub(crate) type Cut = Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// What the proxy does to a matching request.
#[derive(Clone)]
pub(crate) enum Fault {
    /// Answer this (made fresh per request) without asking the upstream.
    Respond(Arc<dyn Fn() -> Canned + Send + Sync>),
    /// The upstream's answer with its body rewritten (status and headers kept).
    Rewrite(Rewrite),
    /// The upstream's answer, cut to `cut(body)` bytes but framed as complete: a
    /// `content-length` of the cut length, or chunks ending in the final empty chunk.
    Truncate {
        /// Bytes kept.
        cut: Cut,
        /// Framing.
        framing: Framing,
    },
    /// The upstream's answer framed for the whole body (its full `content-length`, or chunks
    /// without the final one), but the connection closes after `cut(body)` bytes.
    Die {
        /// Bytes sent before the close.
        cut: Cut,
        /// Framing.
        framing: Framing,
    },
}

/// Which requests a rule applies to: the request target (path and query) in, yes or no out.
pub(crate) type Matcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A matcher for one path (the query is ignored).
pub(crate) fn path(p: &str) -> Matcher {
    let p = p.to_owned();
    Arc::new(move |target: &str| target.split('?').next() == Some(p.as_str()))
}

/// A matcher for `/xrpc/<nsid>` (the query is ignored).
pub(crate) fn xrpc(nsid: &str) -> Matcher {
    path(&format!("/xrpc/{nsid}"))
}

/// A matcher for `/xrpc/<nsid>` whose query contains `needle`.
pub(crate) fn xrpc_with(nsid: &str, needle: &str) -> Matcher {
    let (m, needle) = (xrpc(nsid), needle.to_owned());
    Arc::new(move |target: &str| m(target) && target.contains(&needle))
}

struct Rule {
    matches: Matcher,
    fault: Fault,
}

struct State {
    upstream: Url,
    http: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    /// Request targets, in arrival order.
    log: Mutex<Vec<String>>,
    /// Requests a rule changed.
    faulted: AtomicUsize,
}

/// A running proxy. It stops with the test's runtime.
#[derive(Clone)]
pub(crate) struct Proxy {
    url: Url,
    state: Arc<State>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub(crate) async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let state = Arc::new(State {
            upstream: Url::parse(upstream).unwrap(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            faulted: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, shared.clone()));
            }
        });
        Self { url, state }
    }

    /// The proxy's base URL.
    pub(crate) fn url(&self) -> Url {
        self.url.clone()
    }

    /// Adds a rule (rules are tried in the order added).
    pub(crate) fn add(&self, matches: Matcher, fault: Fault) {
        lock(&self.state.rules).push(Rule { matches, fault });
    }

    /// Removes every rule: from now on the proxy only relays.
    pub(crate) fn clear(&self) {
        lock(&self.state.rules).clear();
    }

    /// Requests seen whose target `matches`.
    pub(crate) fn hits(&self, matches: &Matcher) -> usize {
        lock(&self.state.log)
            .iter()
            .filter(|t| matches(t.as_str()))
            .count()
    }

    /// Requests a rule changed so far.
    pub(crate) fn faulted(&self) -> usize {
        self.state.faulted.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The request: method, target, headers (lower-case names), body.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(sock: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// The upstream's answer, read whole.
async fn forward(state: &State, req: &Request) -> Canned {
    let url = state.upstream.join(&req.target).unwrap();
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
    let mut out = state.http.request(method, url);
    for (k, v) in &req.headers {
        if matches!(k.as_str(), "authorization" | "content-type" | "accept") {
            out = out.header(k, v);
        }
    }
    if !req.body.is_empty() {
        out = out.body(req.body.clone());
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "content-length" | "transfer-encoding" | "connection" | "keep-alive"
                    )
                })
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            Canned {
                status,
                headers,
                body,
            }
        }
        Err(e) => Canned {
            status: 502,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("proxy: upstream failed: {e}").into_bytes(),
        },
    }
}

fn head(answer: &Canned, framing: Framing, content_length: usize) -> Vec<u8> {
    let reason = reqwest::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\n",
        answer.status
    );
    for (k, v) in &answer.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    match framing {
        Framing::Length => out.push_str(&format!("content-length: {content_length}\r\n\r\n")),
        Framing::Chunked => out.push_str("transfer-encoding: chunked\r\n\r\n"),
    }
    out.into_bytes()
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / CHUNK * 10 + 16);
    for c in body.chunks(CHUNK) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn serve(mut sock: TcpStream, state: Arc<State>) {
    let Some(req) = read_request(&mut sock).await else {
        return;
    };
    lock(&state.log).push(req.target.clone());
    let fault = lock(&state.rules)
        .iter()
        .find(|r| (r.matches)(&req.target))
        .map(|r| r.fault.clone());
    if fault.is_some() {
        state.faulted.fetch_add(1, Ordering::SeqCst);
    }
    let wire = match fault {
        None => {
            let answer = forward(&state, &req).await;
            let mut out = head(&answer, Framing::Length, answer.body.len());
            out.extend_from_slice(&answer.body);
            out
        }
        Some(Fault::Respond(make)) => {
            let answer = make();
            let mut out = head(&answer, Framing::Length, answer.body.len());
            out.extend_from_slice(&answer.body);
            out
        }
        Some(Fault::Rewrite(rewrite)) => {
            let mut answer = forward(&state, &req).await;
            answer.body = rewrite(&answer.body);
            let mut out = head(&answer, Framing::Length, answer.body.len());
            out.extend_from_slice(&answer.body);
            out
        }
        Some(Fault::Truncate { cut, framing }) => {
            let answer = forward(&state, &req).await;
            let kept = &answer.body[..cut(&answer.body).min(answer.body.len())];
            let mut out = head(&answer, framing, kept.len());
            match framing {
                Framing::Length => out.extend_from_slice(kept),
                Framing::Chunked => {
                    out.extend_from_slice(&chunked(kept));
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
            out
        }
        Some(Fault::Die { cut, framing }) => {
            let answer = forward(&state, &req).await;
            let kept = &answer.body[..cut(&answer.body).min(answer.body.len())];
            let mut out = head(&answer, framing, answer.body.len());
            match framing {
                Framing::Length => out.extend_from_slice(kept),
                // No final chunk: the stream just stops.
                Framing::Chunked => out.extend_from_slice(&chunked(kept)),
            }
            out
        }
    };
    let _ = sock.write_all(&wire).await;
    let _ = sock.shutdown().await;
}
