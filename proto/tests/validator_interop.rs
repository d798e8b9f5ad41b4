//! The validator against the JS one: every `access` and `clock-request` case of
//! `tests/fixtures/ucan/manifest.json` (written by `tests/js/gen-ucan-fixtures.mjs` with
//! `@ucanto/validator` 10.0.1 and w3clock 0.4.1 on validator 9.1.0) must come out of
//! [`proto::validator`] with the same outcome, and on failure the same error `name` and the
//! same `message`, byte for byte.
//!
//! - `access` cases: a delegation archive of the invocation, checked with `access(invocation,
//!   {capability, authority: Verifier.parse(authorityKey).withDID(authority)})`.
//! - `clock-request` cases: a request CAR sent to w3clock's server; we run what its server and
//!   `provide` check before the handler (one capability, a handler, the audience, `access` with
//!   its extra authorities). Outcomes that come from the handler (ok results) must pass.

use std::path::{Path, PathBuf};

use proto::car::CarLimits;
use proto::message::AgentMessage;
use proto::principal::Verifier;
use proto::ucan::Delegation;
use proto::validator::{CapabilityParser, Failure, Validator, parsers};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ucan");

/// A time at which the fixtures' valid delegations (`exp` 2000000000) are live, the expired
/// ones (`exp` 1000000000) are not, and the not-yet-valid ones (`nbf` 1990000000) are not yet.
const NOW: i64 = 1_800_000_000;

/// w3clock's built-in extra authority (`src/server/index.js`).
const WEB3_STORAGE: (&str, &str) = (
    "did:web:web3.storage",
    "did:key:z6MkqdncRZ1wj8zxCTDUQ8CRT8NQWd63T7mZRvZUX8B7XDFi",
);

/// The key the fixtures use for `did:web:up.storacha.test` (seed 0x09 in `principals.json`).
const UP_STORACHA_TEST: (&str, &str) = (
    "did:web:up.storacha.test",
    "did:key:z6MkwVDfCg9LbbY6xjH3EZk8YSFQZujV5Y4y1ZWeER9tDiN3",
);

fn path(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    let p = path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn manifest() -> Vec<Value> {
    let v: Value = serde_json::from_slice(&read("manifest.json")).expect("manifest.json");
    v.as_array().expect("manifest is an array").clone()
}

fn str_field<'a>(case: &'a Value, key: &str) -> Option<&'a str> {
    case.get(key).and_then(Value::as_str)
}

fn verifier(key: &str, did: &str) -> Verifier {
    Verifier::parse(key)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .with_did(did)
}

fn access_parser(name: &str) -> CapabilityParser {
    match name {
        "SpaceBlob.add" => parsers::space_blob_add(),
        "SpaceIndex.add" => parsers::space_index_add(),
        "Upload.add" => parsers::upload_add(),
        "Space.info" => parsers::space_info(),
        other => panic!("no parser for {other}"),
    }
}

/// w3clock's service: `clock/head` and `clock/advance` only.
fn clock_route(can: &str) -> Option<CapabilityParser> {
    match can {
        "clock/head" => Some(parsers::clock_head()),
        "clock/advance" => Some(parsers::clock_advance()),
        _ => None,
    }
}

/// Compares an outcome with `expected` (`{ok: …}` or `{error: {name, message}}`); returns a
/// description of the mismatch.
fn compare<T>(
    name: &str,
    outcome: Result<T, (String, String)>,
    expected: &Value,
    error_must_come_from_validator: impl Fn(&str) -> bool,
) -> Option<String> {
    let expected_error = expected.get("error");
    match (outcome, expected_error) {
        (Ok(_), None) => None,
        (Ok(_), Some(e)) => {
            let ename = e["name"].as_str().unwrap_or_default();
            if error_must_come_from_validator(ename) {
                Some(format!("{name}: we authorized, JS failed with {e}"))
            } else {
                // An error the handler produced after authorization.
                None
            }
        }
        (Err((n, m)), None) => Some(format!("{name}: JS authorized, we failed with {n}:\n{m}")),
        (Err((n, m)), Some(e)) => {
            let (en, em) = (
                e["name"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default(),
            );
            if n == en && m == em {
                None
            } else {
                Some(format!(
                    "{name}: mismatch\n  ours  {n}:\n{m}\n  theirs {en}:\n{em}"
                ))
            }
        }
    }
}

fn is_validator_error(name: &str) -> bool {
    matches!(
        name,
        "Unauthorized" | "InvalidAudience" | "InvocationCapabilityError" | "HandlerNotFound"
    )
}

#[test]
fn access_cases_match_js() {
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut errors_compared = 0;
    for case in manifest().iter().filter(|c| c["kind"] == "access") {
        let name = str_field(case, "name").unwrap();
        let inv = Delegation::extract(&read(str_field(case, "file").unwrap()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(cid) = str_field(case, "invocation") {
            assert_eq!(inv.cid().to_string(), cid, "{name}: invocation CID");
        }
        let authority = verifier(
            str_field(case, "authorityKey").unwrap(),
            str_field(case, "authority").unwrap(),
        );
        let parser = access_parser(str_field(case, "parser").unwrap());
        let outcome = Validator::new(authority)
            .access(&inv, &parser, NOW)
            .map_err(|e| (e.name().to_string(), e.message()));
        if let (Ok(auth), Some(matched)) = (&outcome, case.get("capabilityMatched")) {
            assert_eq!(
                Some(auth.capability().can()),
                matched["can"].as_str(),
                "{name}: matched can"
            );
            assert_eq!(
                Some(auth.capability().with()),
                matched["with"].as_str(),
                "{name}: matched with"
            );
        }
        errors_compared += usize::from(outcome.is_err() && case["expected"].get("error").is_some());
        failures.extend(compare(name, outcome, &case["expected"], |_| true));
        ran += 1;
    }
    assert!(ran >= 30, "only {ran} access cases");
    assert!(
        errors_compared >= 18,
        "only {errors_compared} access errors compared"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn clock_request_cases_match_js() {
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut errors_compared = 0;
    for case in manifest().iter().filter(|c| c["kind"] == "clock-request") {
        let name = str_field(case, "name").unwrap();
        let service_did = str_field(case, "serviceDid").unwrap();
        let service_key = str_field(case, "serviceKeyDid").unwrap_or(service_did);
        let extra = match str_field(case, "authority") {
            Some(did) if did == UP_STORACHA_TEST.0 => UP_STORACHA_TEST,
            _ => WEB3_STORAGE,
        };
        let validator = Validator::new(verifier(service_key, service_did))
            .with_trusted_authority(verifier(extra.1, extra.0));

        let message = AgentMessage::decode(
            &read(str_field(case, "file").unwrap()),
            &CarLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let invocations = message
            .invocations()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Batches list every invocation's expected outcome; otherwise the first is expected.
        let expectations: Vec<(String, Value)> =
            match case.get("receipts").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .map(|r| {
                        (
                            r["invocation"].as_str().unwrap().to_string(),
                            r["expected"].clone(),
                        )
                    })
                    .collect(),
                None => vec![(
                    str_field(case, "invocation").unwrap().to_string(),
                    case["expected"].clone(),
                )],
            };
        assert_eq!(
            invocations.len(),
            expectations.len(),
            "{name}: invocation count"
        );
        for (inv, (cid, expected)) in invocations.iter().zip(&expectations) {
            assert_eq!(&inv.cid().to_string(), cid, "{name}: invocation CID");
            let outcome = validator
                .check(inv, service_did, NOW, clock_route)
                .map_err(|e| (e.name().to_string(), e.message()));
            errors_compared += usize::from(outcome.is_err() && expected.get("error").is_some());
            failures.extend(compare(name, outcome, expected, is_validator_error));
            ran += 1;
        }
    }
    assert!(ran >= 40, "only {ran} clock invocations");
    assert!(
        errors_compared >= 24,
        "only {errors_compared} clock errors compared"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The wire form of a failed check is `{name, message}` (plus ucanto's extra fields), with no
/// `stack`, and equals the error object JS put in its receipt once JS's `stack` is dropped.
#[test]
fn wire_errors_match_js_receipts() {
    let mut checked = 0;
    for case in manifest().iter().filter(|c| c["kind"] == "clock-request") {
        let Some(out_error) = case.get("out").and_then(|o| o.get("error")) else {
            continue;
        };
        let name = str_field(case, "name").unwrap();
        let service_did = str_field(case, "serviceDid").unwrap();
        let service_key = str_field(case, "serviceKeyDid").unwrap_or(service_did);
        let extra = match str_field(case, "authority") {
            Some(did) if did == UP_STORACHA_TEST.0 => UP_STORACHA_TEST,
            _ => WEB3_STORAGE,
        };
        let validator = Validator::new(verifier(service_key, service_did))
            .with_trusted_authority(verifier(extra.1, extra.0));
        let message = AgentMessage::decode(
            &read(str_field(case, "file").unwrap()),
            &CarLimits::default(),
        )
        .unwrap();
        let inv = &message.invocations().unwrap()[0];
        let err = validator
            .check(inv, service_did, NOW, clock_route)
            .expect_err(name);
        let ours = proto::ipld::encode_dag_json(&err.to_wire()).unwrap();
        let ours: Value = serde_json::from_slice(&ours).unwrap();
        let mut theirs = out_error.clone();
        theirs.as_object_mut().unwrap().remove("stack");
        assert_eq!(ours, theirs, "{name}: wire error");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} wire errors");
}
