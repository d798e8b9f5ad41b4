//! The REAL `clock-service` binary's life as an operator sees it:
//!
//! - [`admin_and_drain_redb`] / [`admin_and_drain_redis`]: `/livez` and `/readyz` answer 200;
//!   `/metrics` counts `clock_invocations_total{ability="clock_head",outcome="ok"}` after a head
//!   and no label anywhere carries a DID or a CID; then SIGTERM while a request is in flight
//!   (headers and half its body sent): `/readyz` turns 503 while draining, no new ucanto
//!   connection is accepted, the in-flight request completes once its body is finished (its
//!   advance is stored), and the process exits 0 within the grace period.
//! - [`sigterm_right_after_ready_exits_cleanly`]: SIGTERM as soon as the ready line is out
//!   still drains and exits 0.
//! - [`stuck_request_does_not_hold_shutdown`]: a client that never finishes its body cannot keep
//!   a stopping service alive past `CLOCK_SHUTDOWN_GRACE`.
//! - [`help_lists_every_variable`]: `clock-service --help` names every `CLOCK_*` variable the
//!   source reads.
//! - [`first_run_generates_the_key_and_reuses_it`]: on embedded defaults (no `CLOCK_STORE`, no
//!   key) the first run creates `data/clock.key` with mode 0600 and prints the DID and the key;
//!   the second run, and the `did` subcommand, reuse it.
//! - [`bad_keys_exit_64`]: an unparsable `CLOCK_PRIVATE_KEY`, or Redis without a key, exits 64
//!   (`EX_USAGE`) with a message naming the problem, without escape codes in text logs.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use clock_service::client::head_of;
use clock_service::store::ClockStore as _;
use common::{
    Backend, LIMIT, SERVICE_DID, Server, TestStore, Times, accepted, event, issue, principal,
};
use proto::Cid;
use proto::car::CarLimits;
use proto::message::{AgentMessage, CONTENT_TYPE};
use tokio::io::AsyncWriteExt as _;

/// Polls `probe` every 20 ms until it returns true; panics after [`LIMIT`].
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the service reports `n` requests in flight (`clock_requests_in_flight`): a
/// request counts from when its headers were read until its response is ready.
async fn wait_in_flight(admin: std::net::SocketAddr, n: u64) {
    let want = format!("clock_requests_in_flight {n}");
    eventually(&format!("{n} request(s) in flight"), || {
        let want = want.clone();
        async move {
            common::get(admin, "/metrics")
                .await
                .text()
                .lines()
                .any(|l| l == want)
        }
    })
    .await;
}

/// Every label value in a Prometheus/OpenMetrics text exposition.
fn label_values(exposition: &str) -> Vec<String> {
    let mut values = Vec::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
            continue;
        };
        for pair in line[open + 1..close].split("\",") {
            if let Some((_, v)) = pair.split_once("=\"") {
                values.push(v.trim_end_matches('"').to_string());
            }
        }
    }
    values
}

async fn admin_and_drain(backend: Backend) {
    let store = TestStore::new(backend);
    let mut server = Server::start(&store, &[("CLOCK_SHUTDOWN_GRACE", "20s")]);
    let client = server.client();
    let owner = principal(0x41);
    let clock = owner.did().to_string();

    // Probes.
    let r = common::get(server.admin, "/livez").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = common::get(server.admin, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(common::get(server.admin, "/nothing-here").await.status, 404);

    // Metrics after a head, an advance and a refusal (so several label sets exist).
    let e0 = event(0, &[]);
    let who = clock_service::client::Invoker {
        issuer: owner.clone(),
        clock: clock.clone(),
        proofs: vec![],
    };
    assert_eq!(client.head(&who).await.expect("head"), Vec::<Cid>::new());
    assert_eq!(
        client
            .advance(&who, e0.cid(), std::slice::from_ref(&e0))
            .await
            .expect("advance"),
        vec![*e0.cid()]
    );
    let stranger = principal(0x42);
    let refused = client
        .head(&clock_service::client::Invoker {
            issuer: stranger,
            clock: clock.clone(),
            proofs: vec![],
        })
        .await;
    assert!(refused.is_err(), "a stranger read the head");
    let r = common::get(server.admin, "/metrics").await;
    assert_eq!(r.status, 200);
    let metrics = r.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"clock_invocations_total{ability="clock_head",outcome="ok"} "#))
        .unwrap_or_else(|| panic!("no clock_head ok counter in:\n{metrics}"));
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!(count >= 1.0, "{line}");
    assert!(
        metrics.contains(r#"clock_invocations_total{ability="clock_head",outcome="unauthorized"}"#),
        "the refusal is not counted:\n{metrics}"
    );
    let values = label_values(&metrics);
    assert!(!values.is_empty(), "no labels parsed from:\n{metrics}");
    for v in &values {
        assert!(
            !v.contains("did:") && v.parse::<Cid>().is_err() && !v.starts_with("baf"),
            "a metric label carries a DID or CID: {v:?}"
        );
    }

    // SIGTERM with a request in flight: its headers and half its body are sent.
    let e1 = event(1, &[*e0.cid()]);
    let inv = issue(
        &owner,
        SERVICE_DID,
        vec![common::advance_cap(&clock, e1.cid())],
        Times::valid(),
        &[],
        std::slice::from_ref(&e1),
    );
    let body = proto::message::encode_request(std::slice::from_ref(&inv)).expect("encode");
    let mut slow = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head_text = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: {CONTENT_TYPE}\r\naccept: {CONTENT_TYPE}\r\n\
         content-length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    slow.write_all(head_text.as_bytes())
        .await
        .expect("write head");
    slow.write_all(first).await.expect("write half the body");
    slow.flush().await.expect("flush");
    // Signal only once the service is handling the request (its headers read), not while the
    // connection merely waits to be accepted.
    wait_in_flight(server.admin, 1).await;
    server.sigterm();

    let admin = server.admin;
    eventually("/readyz turns 503 while draining", || async move {
        let r = common::try_get(admin, "/readyz").await;
        r.is_ok_and(|r| r.status == 503 && r.text() == "draining")
    })
    .await;
    let r = common::get(server.admin, "/livez").await;
    assert_eq!(r.status, 200, "alive while draining");
    let addr = server.addr;
    eventually("no new ucanto connections while draining", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;

    // The in-flight request still completes.
    slow.write_all(rest)
        .await
        .expect("write the rest of the body");
    let r = common::read_response(&mut slow).await;
    assert_eq!(r.status, 200, "in-flight request: {}", r.text());
    let msg = AgentMessage::decode(&r.body, &CarLimits::default()).expect("a ucanto response");
    let receipt = msg.receipt(inv.cid()).expect("a receipt").expect("decodes");
    assert!(receipt.verify_signature(&server.verifier()));
    assert_eq!(head_of(&receipt).expect("ok"), vec![*e1.cid()]);
    drop(slow);

    let status = server.wait_exit(Duration::from_secs(20)); // the grace period
    assert_eq!(
        status.code(),
        Some(0),
        "exit after draining; log:\n{}",
        server.log()
    );
    let opened = store.open().await;
    assert_eq!(opened.head(&clock).await.expect("head"), vec![*e1.cid()]);
    common::assert_present(&opened, &clock, &[*e0.cid(), *e1.cid()]).await;
}

#[tokio::test]
async fn admin_and_drain_redb() {
    admin_and_drain(Backend::Redb).await;
}

#[tokio::test]
async fn admin_and_drain_redis() {
    admin_and_drain(Backend::Redis).await;
}

/// A request whose body never ends does not keep a stopping service alive: after the grace
/// period the service closes it and exits (cleanly: the drain is over, nothing failed).
#[tokio::test]
async fn stuck_request_does_not_hold_shutdown() {
    let store = TestStore::new(Backend::Redb);
    let mut server = Server::start(&store, &[("CLOCK_SHUTDOWN_GRACE", "1s")]);
    let mut stuck = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head_text = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: 1000\r\n\r\nabc",
        server.addr
    );
    stuck.write_all(head_text.as_bytes()).await.expect("write");
    wait_in_flight(server.admin, 1).await;
    server.sigterm();
    let status = server.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    drop(stuck);
}

/// SIGTERM the moment the service says it is ready still drains and exits 0: the signal
/// handlers are installed before the ready line, so the signal's default action (death by
/// SIGTERM, no drain) never applies. Repeated because the window it guards is short.
#[test]
fn sigterm_right_after_ready_exits_cleanly() {
    let store = TestStore::new(Backend::Redb);
    for round in 0..10 {
        let mut server = Server::start(&store, &[]);
        server.sigterm();
        let status = server.wait_exit(LIMIT);
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {status}; log:\n{}",
            server.log()
        );
    }
}

/// Every `"CLOCK_…"` string literal in the crate's sources (the names the service reads).
fn variables_in_sources() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                for piece in text.split("\"CLOCK_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !name.is_empty() && piece[name.len()..].starts_with('"') {
                        out.push(format!("CLOCK_{name}"));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    out.sort();
    out.dedup();
    out
}

#[test]
fn help_lists_every_variable() {
    let help = common::run_to_end(&["--help"], &[], None);
    assert!(help.status.success(), "{help:?}");
    let vars = variables_in_sources();
    for must in [
        "CLOCK_STORE",
        "CLOCK_PRIVATE_KEY",
        "CLOCK_LOG",
        "CLOCK_SHUTDOWN_GRACE",
    ] {
        assert!(
            vars.iter().any(|v| v == must),
            "{must} not found in the sources: {vars:?}"
        );
    }
    let missing: Vec<&String> = vars
        .iter()
        .filter(|v| !help.stdout.contains(&format!("[env: {v}")))
        .collect();
    assert!(
        missing.is_empty(),
        "--help does not list {missing:?}:\n{}",
        help.stdout
    );
}

#[tokio::test]
async fn first_run_generates_the_key_and_reuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Embedded defaults: no CLOCK_STORE, no key; only the listeners are moved off 8080/9090.
    let mut first = Server::spawn(&[], Some(dir.path()));
    let did = first.did.clone();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    let key_path = dir.path().join("data").join("clock.key");
    let log = first.log();
    assert!(
        log.contains(&format!(
            "Generated the service key (kept in ./data/clock.key, owner-only). Its DID is {did}."
        )),
        "the first run does not announce its key:\n{log}"
    );
    let mode = std::fs::metadata(&key_path)
        .expect("clock.key exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "clock.key must be owner-only");
    let text = std::fs::read_to_string(&key_path).expect("read clock.key");
    let key = proto::principal::Ed25519Signer::parse(text.trim()).expect("clock.key parses");
    assert_eq!(key.did(), did);
    assert!(
        log.lines().any(|l| l == text.trim()),
        "the key to set as CLOCK_PRIVATE_KEY is printed"
    );
    // The service answers with that identity.
    let owner = principal(0x44);
    let inv = issue(
        &owner,
        &did,
        vec![common::head_cap(owner.did())],
        Times::valid(),
        &[],
        &[],
    );
    assert_eq!(accepted(&first.client(), &inv).await, Vec::<Cid>::new());
    first.stop();
    assert!(dir.path().join("data").join("clock.redb").is_file());

    let mut second = Server::spawn(&[], Some(dir.path()));
    assert_eq!(second.did, did, "the second run must reuse clock.key");
    assert!(
        !second.log().contains("Generated the service key"),
        "{}",
        second.log()
    );
    second.stop();
    let printed = common::run_to_end(&["did"], &[], Some(dir.path()));
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(printed.stdout.trim(), did);
    assert_eq!(
        std::fs::read_to_string(&key_path).expect("read"),
        text,
        "the key is unchanged"
    );
}

#[test]
fn bad_keys_exit_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("redb:{}", dir.path().join("clock.redb").display());
    let bad = common::run_to_end(
        &[],
        &[
            ("CLOCK_STORE", store.as_str()),
            ("CLOCK_PRIVATE_KEY", "MgCYnot-a-key"),
            ("CLOCK_LOG_FORMAT", "text"),
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(
        bad.stderr
            .contains("service key CLOCK_PRIVATE_KEY: invalid ed25519 private key"),
        "unclear message: {bad:?}"
    );
    assert!(
        !bad.stderr.contains('\u{1b}'),
        "escape codes in a non-terminal log: {bad:?}"
    );
    assert!(
        !dir.path().join("clock.key").exists(),
        "no key may be generated instead"
    );

    // Replicas on Redis must share one identity: no key is an error, not a fresh key.
    let keyless = common::run_to_end(
        &[],
        &[
            ("CLOCK_STORE", "redis://127.0.0.1:6379/0#test:keyless:"),
            ("CLOCK_LOG_FORMAT", "text"),
        ],
        None,
    );
    assert_eq!(keyless.status.code(), Some(64), "{keyless:?}");
    assert!(
        keyless
            .stderr
            .contains("CLOCK_PRIVATE_KEY: required when the store is not embedded"),
        "unclear message: {keyless:?}"
    );
}
