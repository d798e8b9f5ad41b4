//! The harness shared by the clock-service integration tests: the REAL `clock-service` binary
//! run as a child process, on a throwaway store, with helpers to talk to it.
//!
//! - [`TestStore`]: a fresh store, either a redb file in a temporary directory or the real Redis
//!   on 127.0.0.1:6379 under a key prefix no other test uses (every key under it is deleted when
//!   the store is dropped). Redis being down fails the test with a message; nothing is skipped.
//! - [`Server`]: the binary started on `127.0.0.1:0` for both listeners (the kernel picks free
//!   ports; the service logs the bound addresses in its JSON "clock service ready" line, which
//!   is how the harness learns them). Dropping it kills and reaps the child, so a failing test
//!   leaves no process behind; a panicking test prints the service's log.
//! - Raw HTTP/1.1 over a TCP socket ([`raw_http`], [`read_response`]) for the requests a
//!   well-behaved client never sends (wrong media types, oversized and endless bodies).
//! - Builders for events, invocations and delegations with the knobs the adversarial tests turn
//!   (expiry, not-before, audience, a tampered signature).

#![allow(dead_code)] // each test file uses its own part of the harness

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clock_service::client::{ClientError, ClockClient, head_of};
use clock_service::store::{AnyStore, ClockStore as _};
use proto::capability::{ClockAdvance, ClockHead};
use proto::clock::Event;
use proto::principal::{Ed25519Signer, Verifier};
use proto::receipt::Receipt;
use proto::ucan::{Capability, Delegation, Ucan};
use proto::{Block, Cid, Ipld};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_clock-service");

/// The interop kit's service key (`ed25519.derive(32 × 0x02)`), which the golden vectors were
/// signed with.
pub(crate) const SERVICE_KEY: &str =
    "MgCYCAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAu0BgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";
/// Its DID.
pub(crate) const SERVICE_DID: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";

/// The Redis `scripts/services` starts.
pub(crate) const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Upper bound for the service to start, for one HTTP exchange, and for a stopped service to
/// exit: generous (a loaded 2-core CI machine), never asserted as a timing.
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Stores.
// ---------------------------------------------------------------------------------------------

/// Which backend a [`TestStore`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A redb file in a temporary directory.
    Redb,
    /// The real Redis, under a unique key prefix.
    Redis,
}

/// A fresh, empty store for one test, removed when dropped.
pub(crate) struct TestStore {
    /// The backend.
    pub(crate) backend: Backend,
    /// What `CLOCK_STORE` is set to.
    pub(crate) location: String,
    /// A temporary directory (the redb file lives here; also usable as a working directory).
    pub(crate) dir: tempfile::TempDir,
    redis_prefix: Option<String>,
}

impl TestStore {
    /// A fresh store on `backend`. Panics (fails the test) when Redis is asked for and down.
    pub(crate) fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        match backend {
            Backend::Redb => Self {
                backend,
                location: format!("redb:{}", dir.path().join("clock.redb").display()),
                dir,
                redis_prefix: None,
            },
            Backend::Redis => {
                require_redis();
                let prefix = unique_prefix();
                Self {
                    backend,
                    location: format!("{REDIS_URL}#{prefix}"),
                    dir,
                    redis_prefix: Some(prefix),
                }
            }
        }
    }

    /// Opens the store the service uses, through the service's own store code. For redb the
    /// service must have exited first (redb holds an exclusive lock on its file).
    pub(crate) async fn open(&self) -> AnyStore {
        AnyStore::open(&self.location)
            .await
            .unwrap_or_else(|e| panic!("open the test store {}: {e}", self.location))
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(prefix) = &self.redis_prefix
            && let Err(e) = delete_redis_prefix(prefix)
        {
            eprintln!("could not delete the test's Redis keys under {prefix:?}: {e}");
        }
    }
}

/// Panics with how to fix it unless Redis answers on 127.0.0.1:6379.
pub(crate) fn require_redis() {
    let answer = redis::Client::open(REDIS_URL)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    if let Err(e) = answer {
        panic!(
            "these tests need Redis on 127.0.0.1:6379 and it does not answer ({e}); \
             start it with `scripts/services` (scripts/test does)"
        );
    }
}

/// A Redis key prefix no other test or test run uses.
fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "test:clock-service-it:{}-{nanos}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes every key under `prefix` (synchronous: usable from `Drop`).
fn delete_redis_prefix(prefix: &str) -> redis::RedisResult<()> {
    let mut con = redis::Client::open(REDIS_URL)?.get_connection()?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query::<i64>(&mut con)?;
    }
    Ok(())
}

/// Asserts `store` holds none of `cids` for `clock`.
pub(crate) async fn assert_absent(store: &AnyStore, clock: &str, cids: &[Cid], why: &str) {
    let got = store.get_blocks(clock, cids).await.expect("read blocks");
    for (cid, block) in cids.iter().zip(got) {
        assert!(block.is_none(), "{why}: block {cid} of {clock} was stored");
    }
}

/// Asserts `store` holds every one of `cids` for `clock`.
pub(crate) async fn assert_present(store: &AnyStore, clock: &str, cids: &[Cid]) {
    let got = store.get_blocks(clock, cids).await.expect("read blocks");
    for (cid, block) in cids.iter().zip(got) {
        assert!(
            block.is_some(),
            "block {cid} of {clock} is not in the store"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The service process.
// ---------------------------------------------------------------------------------------------

/// A `clock-service` child process; killed and reaped when dropped.
pub(crate) struct Server {
    child: Child,
    /// The ucanto endpoint's address.
    pub(crate) addr: SocketAddr,
    /// The admin endpoint's address.
    pub(crate) admin: SocketAddr,
    /// The service DID from the ready line.
    pub(crate) did: String,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

/// `clock-service` with a clean environment: no inherited `CLOCK_*`, both listeners on free
/// loopback ports, JSON logs on standard error (the harness reads the ready line).
pub(crate) fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLOCK_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CLOCK_LISTEN", "127.0.0.1:0")
        .env("CLOCK_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CLOCK_LOG_FORMAT", "json")
        .env("CLOCK_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Runs `clock-service <args>` to completion (subcommands, `--help`), with `env` on top of
/// [`command`]'s environment, bounded by [`LIMIT`].
pub(crate) fn run_to_end(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Finished {
    let mut cmd = command();
    cmd.args(args).envs(env.iter().copied());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clock-service");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || read_all(stdout));
    let err = std::thread::spawn(move || read_all(stderr));
    let status = wait_with_limit(&mut child, LIMIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("clock-service {args:?} did not finish within {LIMIT:?}");
    });
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A finished `clock-service` run.
#[derive(Debug)]
pub(crate) struct Finished {
    /// How it exited.
    pub(crate) status: ExitStatus,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the ready line says.
struct Ready {
    addr: SocketAddr,
    admin: SocketAddr,
    did: String,
}

fn parse_ready(line: &str) -> Option<Ready> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = v.get("fields")?;
    if f.get("message")?.as_str()? != "clock service ready" {
        return None;
    }
    Some(Ready {
        addr: f.get("listen")?.as_str()?.parse().ok()?,
        admin: f.get("admin")?.as_str()?.parse().ok()?,
        did: f.get("did")?.as_str()?.to_string(),
    })
}

impl Server {
    /// Serves `store` with the kit's service key, plus `env` (which may override either).
    pub(crate) fn start(store: &TestStore, env: &[(&str, &str)]) -> Self {
        let mut all = vec![
            ("CLOCK_STORE", store.location.as_str()),
            ("CLOCK_PRIVATE_KEY", SERVICE_KEY),
        ];
        all.extend_from_slice(env);
        Self::spawn(&all, None)
    }

    /// Serves with exactly `env` on top of [`command`]'s environment, in `cwd`; waits for the
    /// ready line.
    pub(crate) fn spawn(env: &[(&str, &str)], cwd: Option<&Path>) -> Self {
        let mut cmd = command();
        cmd.envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawn clock-service");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ready) = parse_ready(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(ready);
                    }
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
        };
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            did: String::new(),
            log,
            reader: Some(reader),
            exit: None,
        };
        match rx.recv_timeout(LIMIT) {
            Ok(ready) => {
                server.addr = ready.addr;
                server.admin = ready.admin;
                server.did = ready.did;
                server
            }
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!(
                    "clock-service did not get ready within {LIMIT:?} (exit: {status:?}); log:\n{}",
                    server.log()
                );
            }
        }
    }

    /// `http://<addr>/`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The service's verifier: its DID, backed by the kit's key when the DID is a did:web.
    pub(crate) fn verifier(&self) -> Verifier {
        if self.did.starts_with("did:key:") {
            Verifier::parse(&self.did).expect("the service DID parses")
        } else {
            service_signer().verifier().with_did(self.did.clone())
        }
    }

    /// A Rust clock client for this service (checks every receipt's signature).
    pub(crate) fn client(&self) -> ClockClient {
        ClockClient::new(self.url(), self.verifier())
    }

    /// Everything the service logged so far.
    pub(crate) fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Sends SIGTERM (the way Kubernetes stops a pod).
    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits (up to `limit`) for the process to exit and returns how; panics if it does not.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        match wait_with_limit(&mut self.child, limit) {
            Some(status) => {
                self.exit = Some(status);
                status
            }
            None => panic!(
                "clock-service did not exit within {limit:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0); panics otherwise.
    pub(crate) fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(LIMIT);
        assert!(
            status.success(),
            "clock-service exited with {status} after SIGTERM; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!("--- clock-service log ---\n{}\n--- end ---", self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP.
// ---------------------------------------------------------------------------------------------

/// An HTTP response read off a socket.
#[derive(Debug)]
pub(crate) struct RawResponse {
    /// The status code.
    pub(crate) status: u16,
    /// Header names (lower case) and values, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects to `addr`, writes `head` (request line and headers, ending in a blank line) and
/// `body`, and reads one response; panics on an I/O error.
pub(crate) async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    try_raw_http(addr, head, body)
        .await
        .unwrap_or_else(|e| panic!("HTTP exchange with {addr}: {e}"))
}

/// [`raw_http`], with I/O errors returned (for polling a service that may be going away).
pub(crate) async fn try_raw_http(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(head.as_bytes()).await?;
    // A service that refuses on the head alone (413 on the declared length) may answer and
    // close before the body is written; the answer is what is checked.
    let _ = s.write_all(body).await;
    tokio::time::timeout(LIMIT, read_response_inner(&mut s))
        .await
        .unwrap_or_else(|_| panic!("no complete HTTP response from {addr} within {LIMIT:?}"))
}

/// `POST /` with `body` and the given content type and accept headers (none when `None`).
pub(crate) async fn post(
    addr: SocketAddr,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: &[u8],
) -> RawResponse {
    let mut head = format!(
        "POST / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    if let Some(a) = accept {
        head.push_str(&format!("accept: {a}\r\n"));
    }
    head.push_str("\r\n");
    raw_http(addr, &head, body).await
}

/// `POST /` with a CAR body, as ucanto clients send it.
pub(crate) async fn post_car(addr: SocketAddr, body: &[u8]) -> RawResponse {
    let car = proto::message::CONTENT_TYPE;
    post(addr, Some(car), Some(car), body).await
}

/// `GET <path>`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw_http(addr, &get_head(addr, path), b"").await
}

/// `GET <path>`, with I/O errors returned: for polling a service while it shuts down (a
/// connection accepted just before the signal may be closed unanswered, as any graceful HTTP
/// server closes connections that have not started a request).
pub(crate) async fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    try_raw_http(addr, &get_head(addr, path), b"").await
}

fn get_head(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
}

/// Reads one HTTP/1.1 response (content-length or read-to-close bodies), within [`LIMIT`];
/// panics on an I/O error or an early close.
pub(crate) async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> RawResponse {
    tokio::time::timeout(LIMIT, read_response_inner(r))
        .await
        .unwrap_or_else(|_| panic!("no complete HTTP response within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("read an HTTP response: {e}"))
}

async fn read_response_inner<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<RawResponse> {
    let closed = |what: &str, buf: &[u8]| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed {what}: {:?}",
                String::from_utf8_lossy(buf)
            ),
        )
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(closed("before a response head", &buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        Some(len) => {
            while body.len() < len {
                let n = r.read(&mut chunk).await?;
                if n == 0 {
                    return Err(closed("inside the response body", &body));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        },
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Principals, events, UCANs.
// ---------------------------------------------------------------------------------------------

/// The kit's service key.
pub(crate) fn service_signer() -> Ed25519Signer {
    Ed25519Signer::parse(SERVICE_KEY).expect("the kit's key parses")
}

/// `ed25519.derive(32 × seed)`, as the JS tests derive their principals.
pub(crate) fn principal(seed: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed(&[seed; 32])
}

/// Now, in Unix seconds.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A clock event block `{data: {n}, parents}`.
pub(crate) fn event(n: i64, parents: &[Cid]) -> Block {
    let mut data = BTreeMap::new();
    data.insert("n".to_string(), Ipld::Integer(n.into()));
    Event::new(Ipld::Map(data), parents.to_vec())
        .to_block()
        .expect("encode an event")
}

/// `clock/head` on `clock`.
pub(crate) fn head_cap(clock: &str) -> Capability {
    ClockHead {
        with: clock.to_string(),
    }
    .to_capability()
}

/// `clock/advance` of `event` on `clock`.
pub(crate) fn advance_cap(clock: &str, event: &Cid) -> Capability {
    ClockAdvance {
        with: clock.to_string(),
        event: *event,
    }
    .to_capability()
}

/// The time bounds of a UCAN built here.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Times {
    /// `exp`.
    pub(crate) exp: i64,
    /// `nbf`, when set.
    pub(crate) nbf: Option<i64>,
}

impl Times {
    /// Valid for the next five minutes.
    pub(crate) fn valid() -> Self {
        Self {
            exp: now() + 300,
            nbf: None,
        }
    }
}

/// Issues a UCAN from `issuer` to `audience` with `caps`, `proofs` and `blocks` attached (listed
/// in one fact, as the w3clock client does, so every block travels in the request).
pub(crate) fn issue(
    issuer: &Ed25519Signer,
    audience: &str,
    caps: Vec<Capability>,
    times: Times,
    proofs: &[Delegation],
    blocks: &[Block],
) -> Delegation {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let mut builder = Ucan::builder(issuer, audience)
        .expiration(times.exp)
        .nonce(format!("it-{}", NONCE.fetch_add(1, Ordering::Relaxed)));
    for cap in caps {
        builder = builder.capability(cap);
    }
    if let Some(nbf) = times.nbf {
        builder = builder.not_before(nbf);
    }
    if !blocks.is_empty() {
        let fact: BTreeMap<String, Ipld> = blocks
            .iter()
            .map(|b| (b.cid().to_string(), Ipld::Link(*b.cid())))
            .collect();
        builder = builder.fact(fact);
    }
    Delegation::issue(builder, proofs, blocks).expect("issue a UCAN")
}

/// A delegation of `caps` from `issuer` to `audience`, valid for five minutes.
pub(crate) fn delegate(
    issuer: &Ed25519Signer,
    audience: &Ed25519Signer,
    caps: Vec<Capability>,
    proofs: &[Delegation],
) -> Delegation {
    issue(issuer, audience.did(), caps, Times::valid(), proofs, &[])
}

/// The same invocation with one byte of its signature flipped, re-encoded and so re-linked (a
/// new CID): what an attacker who edits a signed invocation can send.
pub(crate) fn with_flipped_signature(d: &Delegation) -> Delegation {
    let Ipld::Map(mut model) = d
        .ucan()
        .block()
        .decode::<Ipld>()
        .expect("decode the UCAN block")
    else {
        panic!("a UCAN is a map");
    };
    let Some(Ipld::Bytes(sig)) = model.get_mut("s") else {
        panic!("a UCAN has signature bytes");
    };
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    let block = Block::encode(&Ipld::Map(model)).expect("re-encode the UCAN");
    let ucan = Ucan::decode(block.clone()).expect("the tampered UCAN still decodes");
    let mut blocks: std::collections::HashMap<Cid, Block> = d
        .blocks()
        .iter()
        .filter(|(cid, _)| *cid != d.cid())
        .map(|(cid, b)| (*cid, b.clone()))
        .collect();
    blocks.insert(*block.cid(), block);
    Delegation::new(ucan, Arc::new(blocks))
}

/// Sends `invocation` with `client` and returns the receipt's refusal as (name, message); panics
/// on an `{ok}` receipt or a transport error.
pub(crate) async fn refusal(client: &ClockClient, invocation: &Delegation) -> (String, String) {
    let receipt: Receipt = client
        .invoke(invocation)
        .await
        .unwrap_or_else(|e| panic!("invoke: {e}"));
    match head_of(&receipt) {
        Err(ClientError::Refused { name, message }) => (name, message),
        other => panic!("expected an error receipt, got {other:?}"),
    }
}

/// Sends `invocation` and returns the head of its `{ok}` receipt; panics on a refusal.
pub(crate) async fn accepted(client: &ClockClient, invocation: &Delegation) -> Vec<Cid> {
    let receipt = client
        .invoke(invocation)
        .await
        .unwrap_or_else(|e| panic!("invoke: {e}"));
    head_of(&receipt).unwrap_or_else(|e| panic!("expected an ok receipt, got {e}"))
}
