//! Hostile and broken requests against the REAL `clock-service` binary, on both stores. Each one
//! must be refused the way ucanto refuses it — an error receipt with the right `name` (and, for
//! authorization failures, ucanto's exact `message`), or the right HTTP status and text — AND
//! leave nothing behind: the clock's head is unchanged, and for refused advances the event block
//! is absent from the store. The store is checked through the service's own store code
//! (`AnyStore::open` on the same location: live for Redis, after the service exited for redb,
//! which locks its file), not through the service, so a refusal that still wrote is caught.
//!
//! - [`receipts_redb`] / [`receipts_redis`]: expired invocation, not-yet-valid invocation, a
//!   flipped signature byte (re-linked), wrong audience, a chain not rooted at the clock,
//!   capability escalation through a delegation (`clock/head` proof used for `clock/advance`),
//!   a missing event block (on a clock with history and on a new one → `EventNotFound`), a
//!   missing ancestor (→ `MissingAncestor`), a proof the service has verified before resent with
//!   a flipped signature byte (refused; the genuine one still accepted).
//! - [`signature_batches`]: 96 concurrent advances on 96 clocks, every third with a flipped
//!   signature byte: the invocation signatures of concurrent requests are verified in batches
//!   (`clock_signature_batch_size` shows fewer batches than checks), and each request still gets
//!   its own verdict: the forged ones ucanto's `Unauthorized` with their own CID, nothing stored;
//!   the genuine ones their new head.
//! - [`limits_redb`] / [`limits_redis`]: body limits (declared too large → 413; an endless
//!   chunked body → 413 without the service waiting for its end), the service healthy after;
//!   garbage CAR → 400; wrong content type → 415 with ucanto's text and `accept`; unacceptable
//!   `accept` → 406; GET → 405; too many blocks → 400; a proof chain deeper than
//!   `CLOCK_MAX_PROOF_DEPTH` → `Unauthorized` (and one at the limit accepted).
//! - [`provisioning_redb`] / [`provisioning_redis`]: with `CLOCK_PROVISIONING=registry` an
//!   unprovisioned Space is refused (`SpaceUnprovisioned`, nothing stored); after
//!   `clock-service provision add <did>` (the binary's subcommand, same `CLOCK_STORE`) the same
//!   advance succeeds.
//! - [`storacha_provisioning`]: with `CLOCK_PROVISIONING=storacha` against Storacha's own upload
//!   service run locally (`tests::storacha`), an advance carrying a `space/info` grant to the
//!   service is refused while the Space is not provisioned (`SpaceUnprovisioned`), accepted once
//!   it is; one carrying no grant cannot be checked (`ProvisioningCheckFailed`); nothing stored
//!   for the refused ones.

mod common;

use clock_service::client::{ClockClient, Invoker};
use clock_service::store::ClockStore as _;
use common::{
    Backend, SERVICE_DID, Server, TestStore, Times, accepted, advance_cap, assert_absent,
    assert_present, delegate, event, head_cap, issue, principal, refusal,
};
use proto::principal::Ed25519Signer;
use proto::ucan::Capability;
use proto::{Block, Cid};
use tokio::io::AsyncWriteExt as _;

/// `exp` of the expired invocation, and how ucanto prints it.
const PAST: (i64, &str) = (
    1_000_000_000,
    "Sun Sep 09 2001 01:46:40 GMT+0000 (Coordinated Universal Time)",
);
/// `nbf` of the not-yet-valid invocation, and how ucanto prints it.
const FUTURE: (i64, &str) = (
    1_990_000_000,
    "Sat Jan 22 2033 09:46:40 GMT+0000 (Coordinated Universal Time)",
);

/// A self-issued `clock/advance` of `ev` on the clock `key`, the event block attached.
fn self_advance(key: &Ed25519Signer, ev: &Block, times: Times) -> proto::ucan::Delegation {
    issue(
        key,
        SERVICE_DID,
        vec![advance_cap(key.did(), ev.cid())],
        times,
        &[],
        std::slice::from_ref(ev),
    )
}

/// ucanto's JSON of a `clock/advance` capability, as its messages print it.
fn advance_json(clock: &str, ev: &Cid) -> String {
    format!(r#"{{"can":"clock/advance","with":"{clock}","nb":{{"event":{{"/":"{ev}"}}}}}}"#)
}

/// The clock's head, read by its owner through the service.
async fn head(client: &ClockClient, owner: &Ed25519Signer) -> Vec<Cid> {
    let who = Invoker {
        issuer: owner.clone(),
        clock: owner.did().to_string(),
        proofs: vec![],
    };
    client.head(&who).await.expect("clock/head")
}

async fn receipts(backend: Backend) {
    let store = TestStore::new(backend);
    let mut server = Server::start(&store, &[]);
    let client = server.client();
    let owner = principal(0x21);
    let clock = owner.did().to_string();
    let bob = principal(0x22);
    let mallory = principal(0x23);

    // A clock with history: head [e0].
    let e0 = event(0, &[]);
    let seeded = accepted(&client, &self_advance(&owner, &e0, Times::valid())).await;
    assert_eq!(seeded, vec![*e0.cid()]);
    let unchanged = vec![*e0.cid()];
    // Every event a refused advance carried: none may be stored.
    let mut refused: Vec<Cid> = Vec::new();

    // Expired invocation.
    let ev = event(1, &[*e0.cid()]);
    let inv = self_advance(
        &owner,
        &ev,
        Times {
            exp: PAST.0,
            nbf: None,
        },
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "Unauthorized");
    assert_eq!(
        message,
        format!(
            "Claim {{\"can\":\"clock/advance\"}} is not authorized\n  - Proof {} has expired on {}",
            inv.cid(),
            PAST.1
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after an expired invocation"
    );

    // Not yet valid.
    let ev = event(2, &[*e0.cid()]);
    let inv = self_advance(
        &owner,
        &ev,
        Times {
            exp: 2_000_000_000,
            nbf: Some(FUTURE.0),
        },
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "Unauthorized");
    assert_eq!(
        message,
        format!(
            "Claim {{\"can\":\"clock/advance\"}} is not authorized\n  - Proof {} is not valid before {}",
            inv.cid(),
            FUTURE.1
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after a not-yet-valid invocation"
    );

    // A flipped signature byte, re-linked (the tampered invocation has its own CID).
    let ev = event(3, &[*e0.cid()]);
    let genuine = self_advance(&owner, &ev, Times::valid());
    let inv = common::with_flipped_signature(&genuine);
    assert_ne!(inv.cid(), genuine.cid());
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "Unauthorized");
    assert_eq!(
        message,
        format!(
            "Claim {{\"can\":\"clock/advance\"}} is not authorized\n  - Proof {} does not has a valid signature from {clock}",
            inv.cid()
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after a bad signature"
    );

    // Addressed to someone else.
    let ev = event(4, &[*e0.cid()]);
    let inv = issue(
        &owner,
        mallory.did(),
        vec![advance_cap(&clock, ev.cid())],
        Times::valid(),
        &[],
        std::slice::from_ref(&ev),
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "InvalidAudience");
    assert_eq!(
        message,
        format!(
            "Expected literal \"{SERVICE_DID}\" instead got \"{}\"",
            mallory.did()
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after a wrong audience"
    );

    // A chain not rooted at the clock: mallory "delegates" the clock to bob.
    let ev = event(5, &[*e0.cid()]);
    let foreign = delegate(
        &mallory,
        &bob,
        vec![Capability::new("clock/advance", clock.as_str())],
        &[],
    );
    let inv = issue(
        &bob,
        SERVICE_DID,
        vec![advance_cap(&clock, ev.cid())],
        Times::valid(),
        &[foreign],
        std::slice::from_ref(&ev),
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "Unauthorized");
    let cap = advance_json(&clock, ev.cid());
    assert_eq!(
        message,
        format!(
            "Claim {{\"can\":\"clock/advance\"}} is not authorized\n  \
             - Capability {cap} is not authorized because:\n    \
             - Capability can not be (self) issued by '{bob}'\n    \
             - Capability {cap} is not authorized because:\n      \
             - Capability can not be (self) issued by '{mallory}'\n      \
             - Delegated capability not found",
            bob = bob.did(),
            mallory = mallory.did()
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after a foreign chain"
    );

    // Escalation: the clock granted bob clock/head; bob invokes clock/advance with it.
    let ev = event(6, &[*e0.cid()]);
    let head_only = delegate(&owner, &bob, vec![head_cap(&clock)], &[]);
    let inv = issue(
        &bob,
        SERVICE_DID,
        vec![advance_cap(&clock, ev.cid())],
        Times::valid(),
        &[head_only],
        std::slice::from_ref(&ev),
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "Unauthorized");
    assert_eq!(
        message,
        format!(
            "Claim {{\"can\":\"clock/advance\"}} is not authorized\n  \
             - Capability {cap} is not authorized because:\n    \
             - Capability can not be (self) issued by '{bob}'\n    \
             - Delegated capability not found\n    \
             - Encountered unknown capabilities\n      \
             - {{\"can\":\"clock/head\",\"with\":\"{clock}\"}}",
            cap = advance_json(&clock, ev.cid()),
            bob = bob.did()
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after an escalation"
    );

    // The event block neither attached nor stored: on this clock, and on a new one.
    let ev = event(7, &[*e0.cid()]);
    let inv = issue(
        &owner,
        SERVICE_DID,
        vec![advance_cap(&clock, ev.cid())],
        Times::valid(),
        &[],
        &[],
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(
        (name.as_str(), message),
        (
            "EventNotFound",
            format!("missing event block: {}", ev.cid())
        )
    );
    refused.push(*ev.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after a missing event"
    );
    let fresh = principal(0x24);
    let inv = issue(
        &fresh,
        SERVICE_DID,
        vec![advance_cap(fresh.did(), ev.cid())],
        Times::valid(),
        &[],
        &[],
    );
    let (name, _) = refusal(&client, &inv).await;
    assert_eq!(
        name, "EventNotFound",
        "a new clock must not take an unreadable event as its head"
    );
    assert_eq!(head(&client, &fresh).await, Vec::<Cid>::new());

    // An event whose parent nobody has: attached alone, the parent neither attached nor stored.
    let orphan_parent = event(8, &[]);
    let ev = event(9, &[*orphan_parent.cid()]);
    let (name, message) = refusal(&client, &self_advance(&owner, &ev, Times::valid())).await;
    assert_eq!(
        (name.as_str(), message),
        (
            "MissingAncestor",
            format!("missing block: {}", orphan_parent.cid())
        )
    );
    refused.push(*ev.cid());
    refused.push(*orphan_parent.cid());
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "after a missing ancestor"
    );

    // A proof the service has verified (and remembers: CLOCK_SIGNATURE_CACHE is on by default),
    // then a copy of it with one signature byte flipped: a new CID, refused as if never seen;
    // the genuine proof keeps working.
    let other = principal(0x25);
    let to_bob = delegate(
        &other,
        &bob,
        vec![Capability::new("clock/advance", other.did())],
        &[],
    );
    let by_bob = |ev: &Block, proof: &proto::ucan::Delegation| {
        issue(
            &bob,
            SERVICE_DID,
            vec![advance_cap(other.did(), ev.cid())],
            Times::valid(),
            std::slice::from_ref(proof),
            std::slice::from_ref(ev),
        )
    };
    let first = event(10, &[]);
    let accepted_head = accepted(&client, &by_bob(&first, &to_bob)).await;
    assert_eq!(accepted_head, vec![*first.cid()]);
    let forged = common::with_flipped_signature(&to_bob);
    assert_ne!(forged.cid(), to_bob.cid());
    let forged_ev = event(11, &[*first.cid()]);
    let (name, message) = refusal(&client, &by_bob(&forged_ev, &forged)).await;
    assert_eq!(name, "Unauthorized");
    assert!(
        message.contains(&format!(
            "Proof {} does not has a valid signature from {}",
            forged.cid(),
            other.did()
        )),
        "{message}"
    );
    let next = event(12, &[*first.cid()]);
    assert_eq!(
        accepted(&client, &by_bob(&next, &to_bob)).await,
        vec![*next.cid()],
        "the genuine proof, after the forgery"
    );

    // Nothing of the above reached the store (checked through the store itself).
    if backend == Backend::Redb {
        server.stop();
    }
    let opened = store.open().await;
    assert_eq!(opened.head(&clock).await.expect("head"), unchanged);
    assert_eq!(
        opened.head(fresh.did()).await.expect("head"),
        Vec::<Cid>::new()
    );
    assert_present(&opened, &clock, &[*e0.cid()]).await; // the check can see blocks at all
    assert_absent(&opened, &clock, &refused, "a refused advance").await;
    assert_absent(&opened, fresh.did(), &[*ev.cid()], "a refused advance").await;
    assert_absent(&opened, other.did(), &[*forged_ev.cid()], "a forged proof").await;
    assert_present(&opened, other.did(), &[*first.cid(), *next.cid()]).await;
}

#[tokio::test]
async fn receipts_redb() {
    receipts(Backend::Redb).await;
}

#[tokio::test]
async fn receipts_redis() {
    receipts(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signature_batches() {
    let store = TestStore::new(Backend::Redis);
    let server = Server::start(&store, &[]);
    let client = server.client();
    let mut tasks = Vec::new();
    let mut forged_events = Vec::new();
    for i in 0..96u8 {
        let owner = principal(0x80 + i);
        let ev = event(i64::from(i), &[]);
        let genuine = self_advance(&owner, &ev, Times::valid());
        let forged = i % 3 == 1;
        if forged {
            forged_events.push((owner.did().to_string(), *ev.cid()));
        }
        let inv = if forged {
            common::with_flipped_signature(&genuine)
        } else {
            genuine
        };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            if forged {
                let (name, message) = refusal(&client, &inv).await;
                assert_eq!(name, "Unauthorized", "invocation {i}");
                assert!(
                    message.contains(&format!(
                        "Proof {} does not has a valid signature from {}",
                        inv.cid(),
                        owner.did()
                    )),
                    "invocation {i}: {message}"
                );
            } else {
                assert_eq!(
                    accepted(&client, &inv).await,
                    vec![*ev.cid()],
                    "invocation {i}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let opened = store.open().await;
    for (clock, ev) in &forged_events {
        assert_absent(&opened, clock, &[*ev], "a forged advance in a batch").await;
    }
    let metrics = common::get(server.admin, "/metrics").await.text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    let (checks, batches) = (
        value("clock_signature_batch_size_sum "),
        value("clock_signature_batch_size_count "),
    );
    assert_eq!(
        checks, 96.0,
        "every invocation's signature was checked in a batch"
    );
    assert!(batches < checks, "{checks} checks in {batches} batches");
}

/// The body limit the limits test runs with.
const MAX_BODY: usize = 64 * 1024;

async fn limits(backend: Backend) {
    let store = TestStore::new(backend);
    let max_body = MAX_BODY.to_string();
    let mut server = Server::start(
        &store,
        &[
            ("CLOCK_MAX_BODY_BYTES", max_body.as_str()),
            ("CLOCK_MAX_BLOCKS", "8"),
            ("CLOCK_MAX_PROOF_DEPTH", "2"),
        ],
    );
    let client = server.client();
    let owner = principal(0x25);
    let clock = owner.did().to_string();
    let e0 = event(0, &[]);
    assert_eq!(
        accepted(&client, &self_advance(&owner, &e0, Times::valid())).await,
        vec![*e0.cid()]
    );
    let unchanged = vec![*e0.cid()];
    let too_large = format!("Payload too large: the request body exceeds {MAX_BODY} bytes");
    let mut refused: Vec<Cid> = Vec::new();

    // A declared length over the limit: 413 before the body is read.
    let body = vec![0u8; MAX_BODY + 1];
    let r = common::post_car(server.addr, &body).await;
    assert_eq!((r.status, r.text()), (413, too_large.clone()));
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "healthy after a 413"
    );

    // No declared length: a chunked body that passes the limit and never ends. The answer must
    // be 413 while the body is still open; a service that buffered the whole body first would
    // never answer (it would wait for the end until the request timeout).
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let car = proto::message::CONTENT_TYPE;
    let head_text = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: {car}\r\naccept: {car}\r\n\
         transfer-encoding: chunked\r\n\r\n",
        server.addr
    );
    s.write_all(head_text.as_bytes()).await.expect("write head");
    let chunk = vec![0x5au8; 8 * 1024];
    let mut sent = 0usize;
    while sent <= 2 * MAX_BODY {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).await.is_err() {
            break; // the service already answered and closed
        }
        sent += chunk.len();
    }
    let r = common::read_response(&mut s).await;
    assert_eq!((r.status, r.text()), (413, too_large.clone()));
    drop(s);
    assert_eq!(
        head(&client, &owner).await,
        unchanged,
        "healthy after an endless body"
    );

    // Not a CAR.
    let r = common::post_car(server.addr, b"hello, this is not a CAR").await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Bad request: Malformed payload - "),
        "garbage CAR answered {:?}",
        r.text()
    );

    // A valid request with the wrong media type, or an accept that excludes CAR.
    let ev = event(1, &[*e0.cid()]);
    let valid = proto::message::encode_request(&[self_advance(&owner, &ev, Times::valid())])
        .expect("encode");
    let r = common::post(server.addr, Some("text/plain"), Some(car), &valid).await;
    assert_eq!(r.status, 415);
    assert_eq!(
        r.text(),
        "The server cannot process the request because the payload format is not supported. \
         Please check the content-type header and try again with a supported media type."
    );
    assert_eq!(r.header("accept"), Some(car));
    let r = common::post(server.addr, None, Some(car), &valid).await;
    assert_eq!(r.status, 415, "no content type");
    let r = common::post(server.addr, Some(car), Some("text/html"), &valid).await;
    assert_eq!(r.status, 406);
    assert_eq!(
        r.text(),
        "The requested resource cannot be served in the requested content type. Please specify \
         a supported content type using the Accept header."
    );
    assert_eq!(r.header("accept"), Some(car));
    refused.push(*ev.cid());

    // GET.
    let r = common::get(server.addr, "/").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));

    // Too many blocks: a 9-event chain attached to one advance, plus the invocation and the
    // message root, against CLOCK_MAX_BLOCKS=8.
    let mut chain: Vec<Block> = vec![event(100, &[*e0.cid()])];
    for n in 101..109 {
        let parent = *chain.last().expect("non-empty").cid();
        chain.push(event(n, &[parent]));
    }
    let tip = chain.last().expect("non-empty").clone();
    let inv = issue(
        &owner,
        SERVICE_DID,
        vec![advance_cap(&clock, tip.cid())],
        Times::valid(),
        &[],
        &chain,
    );
    let r = common::post_car(
        server.addr,
        &proto::message::encode_request(&[inv]).expect("encode"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .starts_with("Bad request: Malformed payload - block 8 at offset ")
            && r.text().ends_with("is past the limit of 8 blocks"),
        "too many blocks answered {:?}",
        r.text()
    );
    refused.extend(chain.iter().map(|b| *b.cid()));

    // Proof depth (CLOCK_MAX_PROOF_DEPTH=2): clock → a → b works; clock → a → b → c does not.
    let (a, b, c) = (principal(0x26), principal(0x27), principal(0x28));
    let any = || vec![Capability::new("clock/*", clock.as_str())];
    let to_a = delegate(&owner, &a, any(), &[]);
    let to_b = delegate(&a, &b, any(), &[to_a]);
    let inv = issue(
        &b,
        SERVICE_DID,
        vec![head_cap(&clock)],
        Times::valid(),
        std::slice::from_ref(&to_b),
        &[],
    );
    assert_eq!(
        accepted(&client, &inv).await,
        unchanged,
        "a chain at the depth limit"
    );
    let to_c = delegate(&b, &c, any(), &[to_b]);
    let ev = event(2, &[*e0.cid()]);
    let inv = issue(
        &c,
        SERVICE_DID,
        vec![advance_cap(&clock, ev.cid())],
        Times::valid(),
        &[to_c],
        std::slice::from_ref(&ev),
    );
    let (name, message) = refusal(&client, &inv).await;
    assert_eq!(name, "Unauthorized");
    assert!(
        message.starts_with("Claim {\"can\":\"clock/advance\"} is not authorized\n")
            && message.contains("proof chain exceeds the maximum depth of 2"),
        "too deep a chain refused with {message:?}"
    );
    refused.push(*ev.cid());

    assert_eq!(head(&client, &owner).await, unchanged);
    if backend == Backend::Redb {
        server.stop();
    }
    let opened = store.open().await;
    assert_eq!(opened.head(&clock).await.expect("head"), unchanged);
    assert_present(&opened, &clock, &[*e0.cid()]).await;
    assert_absent(&opened, &clock, &refused, "a refused request").await;
}

#[tokio::test]
async fn limits_redb() {
    limits(Backend::Redb).await;
}

#[tokio::test]
async fn limits_redis() {
    limits(Backend::Redis).await;
}

async fn provisioning(backend: Backend) {
    let store = TestStore::new(backend);
    // TTL 0: every check asks the registry, so a Space added while the service runs is seen.
    let env = [
        ("CLOCK_PROVISIONING", "registry"),
        ("CLOCK_PROVISIONING_TTL", "0s"),
    ];
    let mut server = Server::start(&store, &env);
    let space = principal(0x31);
    let did = space.did().to_string();
    let ev = event(1, &[]);

    let (name, message) =
        refusal(&server.client(), &self_advance(&space, &ev, Times::valid())).await;
    assert_eq!(name, "SpaceUnprovisioned");
    assert_eq!(
        message,
        format!(
            "Space {did} is not provisioned: clocks are only kept for provisioned Storacha Spaces"
        )
    );
    // Reading a head is not gated (CLOCK_PROVISIONING_HEAD is off).
    assert_eq!(head(&server.client(), &space).await, Vec::<Cid>::new());

    // Nothing stored. redb: the service must exit to release the file, and the registry can
    // only be changed while it is down; Redis: all of it while the service runs.
    if backend == Backend::Redb {
        server.stop();
    }
    {
        let opened = store.open().await;
        assert_eq!(opened.head(&did).await.expect("head"), Vec::<Cid>::new());
        assert_absent(&opened, &did, &[*ev.cid()], "an unprovisioned advance").await;
    } // closes a redb store before the subcommand opens it

    let added = common::run_to_end(
        &["provision", "add", &did],
        &[("CLOCK_STORE", store.location.as_str())],
        None,
    );
    assert!(added.status.success(), "provision add failed: {added:?}");
    assert_eq!(added.stdout.trim(), format!("added {did}"));
    let listed = common::run_to_end(
        &["provision", "list"],
        &[("CLOCK_STORE", store.location.as_str())],
        None,
    );
    assert!(listed.status.success(), "provision list failed: {listed:?}");
    assert!(
        listed.stdout.lines().any(|l| l == did),
        "{did} not listed: {listed:?}"
    );

    if backend == Backend::Redb {
        server = Server::start(&store, &env);
    }
    let client = server.client();
    assert_eq!(
        accepted(&client, &self_advance(&space, &ev, Times::valid())).await,
        vec![*ev.cid()]
    );
    if backend == Backend::Redb {
        server.stop();
    }
    let opened = store.open().await;
    assert_present(&opened, &did, &[*ev.cid()]).await;
}

#[tokio::test]
async fn provisioning_redb() {
    provisioning(Backend::Redb).await;
}

#[tokio::test]
async fn provisioning_redis() {
    provisioning(Backend::Redis).await;
}

#[tokio::test]
async fn storacha_provisioning() {
    let service = tests::storacha::LocalStoracha::shared();
    let store = TestStore::new(Backend::Redis);
    let env = [
        ("CLOCK_PROVISIONING", "storacha"),
        ("CLOCK_PROVISIONING_TTL", "0s"),
        ("CLOCK_STORACHA_URL", service.url.as_str()),
        ("CLOCK_STORACHA_DID", service.did.as_str()),
    ];
    let server = Server::start(&store, &env);
    let client = server.client();
    let space = principal(0x41);
    let did = space.did().to_string();
    // The Space lets the clock service (its did:key: the upload service resolves only keys)
    // ask about it, and the client sends that grant along with its advance as an extra proof.
    let grant = issue(
        &space,
        SERVICE_DID,
        vec![Capability::new("space/info", did.as_str())],
        Times::valid(),
        &[],
        &[],
    );
    let advance = |ev: &Block, proofs: &[proto::ucan::Delegation]| {
        issue(
            &space,
            SERVICE_DID,
            vec![advance_cap(&did, ev.cid())],
            Times::valid(),
            proofs,
            std::slice::from_ref(ev),
        )
    };
    let ev = event(1, &[]);

    let (name, _) = refusal(&client, &advance(&ev, std::slice::from_ref(&grant))).await;
    assert_eq!(name, "SpaceUnprovisioned");
    let (name, message) = refusal(&client, &advance(&ev, &[])).await;
    assert_eq!(name, "ProvisioningCheckFailed");
    assert!(message.contains("no delegation"), "{message}");
    {
        let opened = store.open().await;
        assert_eq!(opened.head(&did).await.expect("head"), Vec::<Cid>::new());
        assert_absent(&opened, &did, &[*ev.cid()], "an unprovisioned advance").await;
    }

    service.provision(&did).await;
    assert_eq!(
        accepted(&client, &advance(&ev, std::slice::from_ref(&grant))).await,
        vec![*ev.cid()]
    );
    assert_present(&store.open().await, &did, &[*ev.cid()]).await;
}
