//! The REAL JavaScript w3clock client against the REAL `clock-service` binary: the drop-in claim.
//!
//! `tests/js/clock-client-interop.mjs` uses `@web3-storage/clock/client` (0.4.1; its own
//! `connect`, `head` and `advance`) exactly as a browser or CLI would, and checks each answer:
//! head on a new clock, advance e1, advance e2 with parent e1 (blocks attached), head, an
//! unauthorized issuer (`Unauthorized`, ucanto's exact message), a wrong audience
//! (`InvalidAudience`), a delegated head (clock → bob) and a delegated advance through a 2-link
//! chain (clock → alice `clock/*` → bob `clock/advance` without an `nb.event` pin), then head.
//! Every receipt is verified in JS with `receipt.verifySignature(Verifier.parse(serviceDID))`.
//!
//! It runs once per store (redb, Redis) and once with a did:web service identity
//! (`CLOCK_DID=did:web:clock.example.test`): the client addresses invocations to the did:web and
//! the receipts verify with the key `.withDID(did:web)`.
//!
//! Afterwards the Rust side cross-checks what the JS side saw: the Rust `ClockClient` reads the
//! same head, and the store holds every event block the JS client sent.

mod common;

use clock_service::client::Invoker;
use common::{Backend, Server, TestStore};
use proto::Cid;
use serde_json::Value;

/// The cases the script runs, in order.
const CASES: [&str; 9] = [
    "head-empty",
    "advance-e1",
    "advance-e2",
    "head-after",
    "unauthorized-issuer",
    "wrong-audience",
    "delegated-head",
    "delegated-advance",
    "head-final",
];

/// The script's clock: `ed25519.derive(32 × 0x11)`.
const CLOCK_SEED: u8 = 0x11;

/// The `head` of a case's `{ok: {head}}` output.
fn head_in(case: &Value) -> Vec<Cid> {
    case["out"]["ok"]["head"]
        .as_array()
        .unwrap_or_else(|| panic!("case {} has no ok head: {case}", case["case"]))
        .iter()
        .map(|c| c.as_str().expect("a CID string").parse().expect("a CID"))
        .collect()
}

async fn interop(backend: Backend, did_web: Option<&str>) {
    let store = TestStore::new(backend);
    let env: Vec<(&str, &str)> = did_web.map(|d| ("CLOCK_DID", d)).into_iter().collect();
    let mut server = Server::start(&store, &env);
    let key_did = common::service_signer().verifier().did().to_string();
    let mut args = vec![server.url(), server.did.clone()];
    if let Some(did) = did_web {
        assert_eq!(
            server.did, did,
            "the service must take CLOCK_DID as its identity"
        );
        args.push(key_did);
    }

    let run = tests::run_node("clock-client-interop.mjs", &args);
    let cases = run.json_lines();
    let names: Vec<&str> = cases.iter().filter_map(|c| c["case"].as_str()).collect();
    for case in &cases {
        assert_eq!(
            case["pass"],
            Value::Bool(true),
            "{backend:?} {did_web:?}: the JS client saw a mismatch in {case}\n\
             stderr:\n{}",
            run.stderr
        );
        assert_eq!(case["signature"], "ok", "{case}");
    }
    assert_eq!(names, CASES, "cases run (stderr:\n{})", run.stderr);
    run.expect_code(0);

    // Cross-check from Rust: the same head through our client, the event blocks in the store.
    let clock_key = common::principal(CLOCK_SEED);
    let clock = clock_key.did().to_string();
    assert_eq!(cases[0]["clock"], clock.as_str());
    let final_head = head_in(&cases[8]);
    let who = Invoker {
        issuer: clock_key,
        clock: clock.clone(),
        proofs: vec![],
    };
    let rust_head = server.client().head(&who).await.expect("head from Rust");
    assert_eq!(
        rust_head, final_head,
        "Rust and JS clients see different heads"
    );
    let events: Vec<Cid> = ["advance-e1", "advance-e2", "delegated-advance"]
        .iter()
        .map(|name| {
            let case = cases.iter().find(|c| c["case"] == *name).expect("case ran");
            head_in(case)[0]
        })
        .collect();
    if backend == Backend::Redb {
        server.stop();
    }
    let opened = store.open().await;
    common::assert_present(&opened, &clock, &events).await;
}

#[tokio::test]
async fn js_client_redb() {
    interop(Backend::Redb, None).await;
}

#[tokio::test]
async fn js_client_redis() {
    interop(Backend::Redis, None).await;
}

#[tokio::test]
async fn js_client_did_web_service() {
    interop(Backend::Redb, Some("did:web:clock.example.test")).await;
}
