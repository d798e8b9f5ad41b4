//! Interop with the real JS stack (`@ucanto/*` 9–11, `@ipld/dag-ucan` 3.4.5, w3clock 0.4.1): the
//! fixtures under `tests/fixtures/ucan/` were written by `tests/js/gen-ucan-fixtures.mjs` and
//! every byte of them must come out of our codecs unchanged.
//!
//! - `principals.json`: keys, DIDs, private-key text and bytes, varsig signatures, multidid bytes.
//! - `signing-payloads.json`: the JWT-form string dag-ucan signs, for selected UCAN blocks.
//! - every CAR: each UCAN block decodes and its signature checks out (or the manifest says it was
//!   tampered with); requests, responses and delegation archives re-encode byte for byte.
//! - clock requests: answered by our receipts with the service key, the response CAR equals the
//!   one w3clock's server wrote (ok cases computed by our clock; error cases re-issued with the
//!   error value JS put in its receipt, which checks the receipt encoding, not the validator).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use proto::capability::ClockAdvance;
use proto::car::{self, CarLimits};
use proto::clock;
use proto::ipld::{self, DAG_CBOR};
use proto::message::{self, AgentMessage};
use proto::principal::{self, Ed25519Signer, Signature, Verifier};
use proto::receipt::{Receipt, ReceiptOptions};
use proto::ucan::{Delegation, Proof, Ucan};
use proto::{Block, Cid, Ipld};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ucan");

fn path(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    let p = path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn manifest() -> Vec<Value> {
    match json("manifest.json") {
        Value::Array(cases) => cases,
        other => panic!("manifest.json is not an array: {other}"),
    }
}

fn str_field<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: field {field} is not a string", case["name"]))
}

fn cases_of<'a>(cases: &'a [Value], kind: &str) -> Vec<&'a Value> {
    cases.iter().filter(|c| c["kind"] == kind).collect()
}

fn hex_bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// A JSON value in DAG-JSON form (links `{"/": cid}`, bytes `{"/": {"bytes": …}}`) as IPLD.
fn dag_json(v: &Value) -> Ipld {
    ipld::decode_dag_json(&serde_json::to_vec(v).unwrap()).unwrap()
}

/// Seeds of principals.json by role.
fn key(role: &str) -> Ed25519Signer {
    let principals = json("principals.json");
    let k = principals["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == role)
        .unwrap_or_else(|| panic!("no key {role}"));
    let seed: [u8; 32] = hex_bytes(&k["seed_hex"]).try_into().unwrap();
    Ed25519Signer::from_seed(&seed)
}

/// The signer a clock case's service answered with.
fn service_for(case: &Value) -> Ed25519Signer {
    let service = key("service");
    let did = str_field(case, "serviceDid");
    match case.get("serviceKeyDid").and_then(Value::as_str) {
        Some(key_did) => {
            assert_eq!(service.did(), key_did, "{}", case["name"]);
            service.with_did(did).unwrap()
        }
        None => {
            assert_eq!(service.did(), did, "{}", case["name"]);
            service
        }
    }
}

fn decode_message(bytes: &[u8], what: &str) -> AgentMessage {
    AgentMessage::decode(bytes, &CarLimits::default()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn clock_cases(cases: &[Value]) -> Vec<&Value> {
    cases_of(cases, "clock-request")
}

// ---------------------------------------------------------------------------------------------
// principals.json

#[test]
fn principals_match_ucanto() {
    let principals = json("principals.json");
    let keys = principals["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 11);
    for k in keys {
        let role = k["role"].as_str().unwrap();
        let seed: [u8; 32] = hex_bytes(&k["seed_hex"]).try_into().unwrap();
        let signer = Ed25519Signer::from_seed(&seed);
        assert_eq!(signer.did(), k["did"], "{role}: did");
        assert_eq!(signer.key_did(), k["did"], "{role}: key did");
        assert_eq!(signer.format(), k["private_key_text"], "{role}: format()");
        assert_eq!(
            signer.encode(),
            hex_bytes(&k["private_key_bytes_hex"]),
            "{role}: private key bytes"
        );
        assert_eq!(signer.encode().len(), 68, "{role}");
        assert_eq!(
            signer.public_key().to_vec(),
            hex_bytes(&k["public_key_hex"]),
            "{role}: public key"
        );
        // The text and the bytes read back to the same key.
        let parsed = Ed25519Signer::parse(k["private_key_text"].as_str().unwrap()).unwrap();
        assert_eq!(parsed.did(), signer.did(), "{role}: parse");
        let decoded = Ed25519Signer::decode(&hex_bytes(&k["private_key_bytes_hex"])).unwrap();
        assert_eq!(decoded.did(), signer.did(), "{role}: decode");
        // Multidid bytes of the did:key (UCAN iss/aud) and back.
        let did = k["did"].as_str().unwrap();
        let bytes = principal::did_to_bytes(did).unwrap();
        assert_eq!(bytes, hex_bytes(&k["did_multidid_hex"]), "{role}: multidid");
        assert_eq!(principal::did_from_bytes(&bytes).unwrap(), did, "{role}");
        // Ed25519 is deterministic: the varsig of "hello" is byte-identical.
        let sig = signer.sign(b"hello");
        assert_eq!(
            sig.encode(),
            hex_bytes(&k["sign_hello_varsig_hex"]),
            "{role}: sign"
        );
        assert!(
            Verifier::parse(did).unwrap().verify(b"hello", &sig),
            "{role}"
        );
        let js_sig = Signature::decode(&hex_bytes(&k["sign_hello_varsig_hex"])).unwrap();
        assert_eq!(js_sig, sig, "{role}: varsig decode");
        // did:web wrapping: another DID, the same key and signatures.
        let web = signer.clone().with_did("did:web:example.com").unwrap();
        assert_eq!(web.did(), k["did_web_example"], "{role}: withDID");
        assert_eq!(
            web.key_did(),
            k["did_web_example_to_did_key"],
            "{role}: toDIDKey"
        );
        assert_eq!(
            web.sign(b"hello").encode(),
            hex_bytes(&k["sign_hello_with_did_web_varsig_hex"]),
            "{role}: did:web sign"
        );
        assert_eq!(web.verifier().did(), "did:web:example.com");
        assert!(web.verifier().verify(b"hello", &js_sig), "{role}");
    }
    for m in principals["multidid"].as_array().unwrap() {
        let did = m["did"].as_str().unwrap();
        let bytes = principal::did_to_bytes(did).unwrap();
        assert_eq!(bytes, hex_bytes(&m["bytes_hex"]), "multidid of {did}");
        assert_eq!(
            principal::did_from_bytes(&bytes).unwrap(),
            did,
            "{did} back"
        );
    }
    let absentee = &principals["absentee"];
    let sig = Signature::absentee();
    assert_eq!(sig.encode(), hex_bytes(&absentee["sign_hello_varsig_hex"]));
    assert_eq!(sig.algorithm(), absentee["signature_algorithm"]);
    let back = Signature::decode(&hex_bytes(&absentee["sign_hello_varsig_hex"])).unwrap();
    assert_eq!(back, sig);
}

// ---------------------------------------------------------------------------------------------
// signing-payloads.json

#[test]
fn signing_payloads_match_dag_ucan() {
    let payloads = json("signing-payloads.json");
    let payloads = payloads.as_array().unwrap();
    assert!(payloads.len() >= 10, "{} payloads", payloads.len());
    let authority = key("authority")
        .with_did("did:web:up.storacha.test")
        .unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut verified = 0;
    for p in payloads {
        let name = p["name"].as_str().unwrap();
        let block = Block::from_codec(DAG_CBOR, hex_bytes(&p["block_hex"]));
        assert_eq!(block.cid().to_string(), p["cid"], "{name}: cid");
        // The block is also inside the fixture CAR it was picked from.
        let (_, blocks) =
            car::decode_car(&read(str_field(p, "file")), &CarLimits::default()).unwrap();
        assert!(
            blocks.contains(&block),
            "{name}: block not in {}",
            p["file"]
        );

        let ucan = Ucan::decode(block).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ucan.issuer(), p["issuer"], "{name}: issuer");
        assert_eq!(
            ucan.signature().algorithm(),
            p["signature_algorithm"],
            "{name}: alg"
        );
        assert_eq!(
            ucan.signature().code(),
            p["signature_code"].as_u64().unwrap(),
            "{name}"
        );
        let payload = String::from_utf8(ucan.signing_payload().unwrap()).unwrap();
        assert_eq!(payload, p["payload"], "{name}: signing payload");
        let (h, b) = payload.split_once('.').unwrap();
        assert_eq!(
            b64.decode(h).unwrap(),
            p["payload_header_json"].as_str().unwrap().as_bytes()
        );
        assert_eq!(
            b64.decode(b).unwrap(),
            p["payload_json"].as_str().unwrap().as_bytes()
        );
        // UCAN.format(): the payload, ".", base64url of the raw signature.
        let jwt = format!("{payload}.{}", b64.encode(ucan.signature().raw()));
        assert_eq!(jwt, p["jwt"], "{name}: jwt");

        if ucan.issuer().starts_with("did:key:") {
            assert!(ucan.verify_self_signed(), "{name}: signature");
            verified += 1;
        } else if ucan.issuer() == authority.did() {
            assert!(
                ucan.verify_signature(&authority.verifier()),
                "{name}: signature"
            );
            verified += 1;
        } else {
            assert!(ucan.issuer().starts_with("did:mailto:"), "{name}");
            assert_eq!(ucan.signature(), &Signature::absentee(), "{name}: absentee");
        }
    }
    assert!(verified >= 9, "{verified}");
}

// ---------------------------------------------------------------------------------------------
// every UCAN in every CAR

/// Every `.car` under the fixture directory, relative paths, sorted.
fn all_cars() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["", "clock/", "access/"] {
        for entry in std::fs::read_dir(path(sub)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".car") {
                out.push(format!("{sub}{name}"));
            }
        }
    }
    out.sort();
    out
}

/// The UCANs a CAR names: invocations (request), `ran` invocations (response), the archived
/// delegation (archive), and their proofs that are present, recursively.
fn named_ucans(rel: &str, bytes: &[u8]) -> BTreeSet<Cid> {
    let (roots, blocks) = car::decode_car(bytes, &CarLimits::default()).unwrap();
    let store: HashMap<Cid, Block> = blocks.into_iter().map(|b| (*b.cid(), b)).collect();
    let mut todo: Vec<Cid> = Vec::new();
    if rel.starts_with("clock/") {
        let msg = decode_message(bytes, rel);
        todo.extend(msg.execute());
        for receipt_cid in msg.report().values() {
            let block = &store[receipt_cid];
            let Ipld::Map(r) = block.decode::<Ipld>().unwrap() else {
                panic!("{rel}")
            };
            let Some(Ipld::Map(ocm)) = r.get("ocm") else {
                panic!("{rel}")
            };
            let Some(Ipld::Link(ran)) = ocm.get("ran") else {
                panic!("{rel}")
            };
            todo.push(*ran);
        }
    } else {
        let Ipld::Map(variant) = store[&roots[0]].decode::<Ipld>().unwrap() else {
            panic!("{rel}")
        };
        let Some(Ipld::Link(root)) = variant.get("ucan@0.9.1") else {
            panic!("{rel}")
        };
        todo.push(*root);
    }
    let mut named = BTreeSet::new();
    while let Some(cid) = todo.pop() {
        let Some(block) = store.get(&cid) else {
            continue;
        };
        if !named.insert(cid) {
            continue;
        }
        let ucan = Ucan::decode(block.clone()).unwrap_or_else(|e| panic!("{rel}: {cid}: {e}"));
        todo.extend(ucan.proofs());
    }
    named
}

#[test]
fn every_ucan_block_decodes_and_verifies() {
    let cases = manifest();
    let by_file: HashMap<String, &Value> = cases
        .iter()
        .flat_map(|c| {
            let mut files = vec![(str_field(c, "file").to_string(), c)];
            if let Some(r) = c["response"].as_str() {
                files.push((r.to_string(), c));
            }
            files
        })
        .collect();
    let authority = key("authority");
    let forger = key("forger");
    let cars = all_cars();
    assert_eq!(
        cars.len(),
        2 * clock_cases(&cases).len() + 31 + 2,
        "{cars:?}"
    );

    #[derive(Clone, Copy)]
    enum Verdict {
        Good,
        Bad,
        Absentee,
        Forged,
    }
    let mut verdicts: HashMap<Cid, Verdict> = HashMap::new();
    let mut ucans = 0;
    let mut bad_signatures: BTreeMap<String, Vec<Cid>> = BTreeMap::new();
    let mut forged: BTreeSet<String> = BTreeSet::new();
    for rel in &cars {
        let case = by_file
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} is not in the manifest"));
        let bytes = read(rel);
        let (_, blocks) = car::decode_car(&bytes, &CarLimits::default()).unwrap();
        // A block is a UCAN exactly when the message / archive structure says so.
        let named = named_ucans(rel, &bytes);
        let decoded: BTreeSet<Cid> = blocks
            .iter()
            .filter(|b| Ucan::decode((*b).clone()).is_ok())
            .map(|b| *b.cid())
            .collect();
        assert_eq!(decoded, named, "{rel}: UCAN blocks");
        if !rel.ends_with(".resp.car") {
            let root = case.get("root").unwrap_or(&case["invocation"]);
            let inv: Cid = root.as_str().unwrap().parse().unwrap();
            assert!(named.contains(&inv), "{rel}: manifest invocation {inv}");
        }
        for block in blocks.iter().filter(|b| named.contains(b.cid())) {
            let ucan = Ucan::decode(block.clone()).unwrap();
            ucans += 1;
            assert_eq!(ucan.version(), "0.9.1");
            assert_eq!(ucan.cid(), block.cid());
            // The principal bytes in the block are the multidid encoding of the DIDs we read.
            let model: BTreeMap<String, Ipld> = block.decode().unwrap();
            assert_eq!(
                model["iss"],
                Ipld::Bytes(principal::did_to_bytes(ucan.issuer()).unwrap())
            );
            assert_eq!(
                model["aud"],
                Ipld::Bytes(principal::did_to_bytes(ucan.audience()).unwrap())
            );
            // Many UCANs recur across files (a request and its response, shared proofs):
            // verify each once.
            let verdict = *verdicts.entry(*ucan.cid()).or_insert_with(|| {
                let iss = ucan.issuer();
                if iss.starts_with("did:key:") {
                    if ucan.verify_self_signed() {
                        Verdict::Good
                    } else {
                        Verdict::Bad
                    }
                } else if iss.starts_with("did:mailto:") {
                    assert_eq!(ucan.signature(), &Signature::absentee(), "{rel}: {iss}");
                    Verdict::Absentee
                } else {
                    assert!(iss.starts_with("did:web:"), "{rel}: {iss}");
                    if ucan.verify_signature(&authority.clone().with_did(iss).unwrap().verifier()) {
                        assert_eq!(iss, "did:web:up.storacha.test", "{rel}");
                        Verdict::Good
                    } else {
                        assert!(
                            ucan.verify_signature(
                                &forger.clone().with_did(iss).unwrap().verifier()
                            ),
                            "{rel}: {iss} signed by neither the authority nor the forger key"
                        );
                        Verdict::Forged
                    }
                }
            });
            match verdict {
                Verdict::Bad => bad_signatures
                    .entry(rel.clone())
                    .or_default()
                    .push(*ucan.cid()),
                Verdict::Forged => {
                    forged.insert(rel.clone());
                }
                Verdict::Good | Verdict::Absentee => {}
            }
        }
    }
    assert!(ucans > 200, "{ucans} UCANs");
    // Exactly the cases tampered with signatures have UCANs that do not verify.
    let tampered_files: BTreeSet<String> = by_file
        .iter()
        .filter(|(_, c)| {
            matches!(
                c["tamper"].as_str(),
                Some("invocation-signature" | "proof-signature")
            )
        })
        .map(|(f, _)| f.clone())
        .collect();
    let bad_files: BTreeSet<String> = bad_signatures.keys().cloned().collect();
    // (A response CAR carries the ran invocation with its proofs, so it holds the same bad
    // UCANs as its request.)
    let expected_bad = tampered_files;
    assert_eq!(
        bad_files, expected_bad,
        "UCANs with bad signatures: {bad_signatures:?}"
    );
    for f in &forged {
        let tamper = by_file[f]["tamper"].as_str().unwrap_or("");
        assert!(
            matches!(tamper, "attestation-wrong-key" | "untrusted-authority"),
            "{f}: forged attestation but tamper {tamper:?}"
        );
    }
}

#[test]
fn clock_requests_re_encode_byte_for_byte() {
    let cases = manifest();
    for case in clock_cases(&cases) {
        let rel = str_field(case, "file");
        let bytes = read(rel);
        let msg = decode_message(&bytes, rel);
        let invocations = msg.invocations().unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(
            invocations[0].cid().to_string(),
            case["invocation"],
            "{rel}"
        );
        if let Some(receipts) = case["receipts"].as_array() {
            let want: Vec<&str> = receipts
                .iter()
                .map(|r| str_field(r, "invocation"))
                .collect();
            let got: Vec<String> = invocations.iter().map(|i| i.cid().to_string()).collect();
            assert_eq!(got, want, "{rel}");
        } else {
            assert_eq!(invocations.len(), 1, "{rel}");
        }
        assert!(
            message::encode_request(&invocations).unwrap() == bytes,
            "{rel}: encode_request differs from the JS request"
        );
    }
}

#[test]
fn clock_responses_decode_verify_and_re_encode() {
    let cases = manifest();
    for case in clock_cases(&cases) {
        let name = str_field(case, "name");
        let request = decode_message(&read(str_field(case, "file")), name);
        let resp_bytes = read(str_field(case, "response"));
        let response = decode_message(&resp_bytes, name);
        let service = service_for(case);
        let outs: Vec<&Value> = match case["receipts"].as_array() {
            Some(rs) => rs.iter().map(|r| &r["out"]).collect(),
            None => vec![&case["out"]],
        };
        let mut receipts = Vec::new();
        for (inv, out) in request.execute().iter().zip(&outs) {
            let receipt = response
                .receipt(inv)
                .unwrap_or_else(|| panic!("{name}: no receipt for {inv}"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(receipt.ran(), inv, "{name}");
            assert_eq!(
                receipt.issuer(),
                Some(str_field(case, "receiptIssuer")),
                "{name}"
            );
            assert!(
                receipt.verify_signature(&service.verifier()),
                "{name}: receipt signature"
            );
            if name == "self-head-empty" {
                assert!(
                    !receipt.verify_signature(&key("mallory").verifier()),
                    "{name}"
                );
            }
            let got = match receipt.out() {
                Ok(v) => ("ok", v.clone()),
                Err(e) => ("error", e.clone()),
            };
            let mut want = out.as_object().unwrap().iter();
            let (tag, value) = want.next().unwrap();
            assert_eq!(
                (got.0, &got.1),
                (tag.as_str(), &dag_json(value)),
                "{name}: out"
            );
            assert!(
                receipt.fx().fork.is_empty() && receipt.fx().join.is_none(),
                "{name}"
            );
            receipts.push(receipt);
        }
        assert_eq!(receipts.len(), outs.len(), "{name}");
        assert_eq!(receipts[0].cid().to_string(), case["receipt"], "{name}");
        assert!(
            message::encode_response(&receipts).unwrap() == resp_bytes,
            "{name}: encode_response of JS's receipts differs from the JS response"
        );
    }
}

#[test]
fn delegation_archives_round_trip() {
    let cases = manifest();
    let mut n = 0;
    for case in cases
        .iter()
        .filter(|c| c["kind"] == "access" || c["kind"] == "archive")
    {
        let rel = str_field(case, "file");
        let bytes = read(rel);
        let d = Delegation::extract(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let root = case.get("root").unwrap_or(&case["invocation"]);
        assert_eq!(d.cid().to_string(), *root, "{rel}: root");
        assert!(
            d.archive().unwrap() == bytes,
            "{rel}: archive() differs from the JS archive"
        );
        n += 1;
    }
    assert_eq!(n, 33);
}

#[test]
fn cli_archives_match_the_manifest() {
    let cases = manifest();
    let archives = cases_of(&cases, "archive");
    assert_eq!(archives.len(), 2);
    for case in archives {
        let name = str_field(case, "name");
        let bytes = read(str_field(case, "file"));
        let d = Delegation::extract(&bytes).unwrap();
        let u = d.ucan();
        assert_eq!(u.cid().to_string(), case["root"], "{name}");
        assert_eq!(u.issuer(), case["issuer"], "{name}");
        assert_eq!(u.audience(), case["audience"], "{name}");
        assert_eq!(u.expiration(), case["expiration"].as_i64(), "{name}");
        assert!(case["expiration"].is_null(), "{name}");
        let caps: Vec<Ipld> = u
            .capabilities()
            .iter()
            .map(|c| Ipld::Map(c.to_ipld()))
            .collect();
        assert_eq!(
            Ipld::List(caps),
            dag_json(&case["capabilities"]),
            "{name}: capabilities"
        );
        let proofs: Vec<String> = u.proofs().iter().map(Cid::to_string).collect();
        let want: Vec<String> = serde_json::from_value(case["proofs"].clone()).unwrap();
        assert_eq!(proofs, want, "{name}: proofs");
        // Every proof travels in the archive and verifies.
        for p in d.proofs() {
            match p {
                Proof::Delegation(p) => assert!(p.ucan().verify_self_signed(), "{name}"),
                other => panic!("{name}: proof {other:?}"),
            }
        }
        assert!(u.verify_self_signed(), "{name}");
        // The variant root.
        let (roots, blocks) = car::decode_car(&bytes, &CarLimits::default()).unwrap();
        let variant = blocks.iter().find(|b| b.cid() == &roots[0]).unwrap();
        assert_eq!(
            variant.decode::<Ipld>().unwrap(),
            dag_json(&case["variant"]),
            "{name}"
        );

        // The text form parses to the same delegation and is reproduced exactly.
        let text = String::from_utf8(read(str_field(case, "text"))).unwrap();
        let parsed = Delegation::parse_proof_text(&text).unwrap();
        assert_eq!(parsed.cid(), d.cid(), "{name}: text");
        assert!(parsed.archive().unwrap() == bytes, "{name}: text archive");
        assert_eq!(d.to_proof_text().unwrap(), text, "{name}: to_proof_text");
    }
}

// ---------------------------------------------------------------------------------------------
// answering the clock requests

fn head_ok(head: &[Cid]) -> Ipld {
    let mut m = BTreeMap::new();
    m.insert(
        "head".to_string(),
        Ipld::List(head.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    Ipld::Map(m)
}

/// The in-memory state of one w3clock server: a head per clock DID and every block seen.
#[derive(Default)]
struct ClockState {
    heads: HashMap<String, Vec<Cid>>,
    blocks: HashMap<Cid, Block>,
}

impl ClockState {
    /// What w3clock's handlers answer for an (authorized) invocation.
    fn run(&mut self, inv: &Delegation) -> Ipld {
        let cap = &inv.ucan().capabilities()[0];
        let head = self.heads.entry(cap.with.clone()).or_default();
        match cap.can.as_str() {
            "clock/head" => head_ok(head),
            "clock/advance" => {
                let adv = ClockAdvance::parse(cap).unwrap();
                for b in inv.blocks().values() {
                    self.blocks.insert(*b.cid(), b.clone());
                }
                *head = clock::advance(&self.blocks, head, &adv.event).unwrap();
                head_ok(head)
            }
            other => panic!("no handler for {other}"),
        }
    }
}

/// Whether every receipt of the case is `{ok}`.
fn is_ok_case(case: &Value) -> bool {
    match case["receipts"].as_array() {
        Some(rs) => rs.iter().all(|r| r["expected"].get("ok").is_some()),
        None => case["expected"].get("ok").is_some(),
    }
}

#[test]
fn ok_clock_requests_are_answered_byte_for_byte() {
    let cases = manifest();
    let mut ok_cases: Vec<&Value> = clock_cases(&cases)
        .into_iter()
        .filter(|c| is_ok_case(c))
        .collect();
    // Sequences replay in step order on one server; the rest each get a fresh one.
    ok_cases.sort_by_key(|c| {
        (
            c["sequence"].as_str().map(str::to_string),
            c["step"].as_u64(),
        )
    });
    assert!(ok_cases.len() >= 18, "{} ok cases", ok_cases.len());
    let mut sequences: HashMap<String, ClockState> = HashMap::new();
    let mut answered = 0;
    for case in ok_cases {
        let name = str_field(case, "name");
        let service = service_for(case);
        let request = decode_message(&read(str_field(case, "file")), name);
        let mut fresh = ClockState::default();
        let state = match case["sequence"].as_str() {
            Some(seq) => sequences.entry(seq.to_string()).or_default(),
            None => &mut fresh,
        };
        let expected: Vec<&Value> = match case["receipts"].as_array() {
            Some(rs) => rs.iter().map(|r| &r["expected"]["ok"]).collect(),
            None => vec![&case["expected"]["ok"]],
        };
        let mut receipts = Vec::new();
        for (inv, want) in request.invocations().unwrap().iter().zip(expected) {
            assert_eq!(inv.ucan().audience(), service.did(), "{name}");
            let out = state.run(inv);
            assert_eq!(out, dag_json(want), "{name}: our clock's answer");
            receipts
                .push(Receipt::issue(&service, inv, Ok(out), ReceiptOptions::default()).unwrap());
        }
        assert_eq!(
            receipts[0].cid().to_string(),
            case["receipt"],
            "{name}: receipt CID"
        );
        let ours = message::encode_response(&receipts).unwrap();
        assert!(
            ours == read(str_field(case, "response")),
            "{name}: response differs from w3clock's"
        );
        answered += 1;
    }
    assert_eq!(answered, 18);
}

#[test]
fn error_receipts_re_issued_byte_for_byte() {
    // Not validation: the error value is taken from JS's receipt. This proves that an error
    // receipt with the same value, signed by us, is the same block and the same response CAR.
    let cases = manifest();
    let mut n = 0;
    for case in clock_cases(&cases).into_iter().filter(|c| !is_ok_case(c)) {
        let name = str_field(case, "name");
        assert!(case["receipts"].is_null(), "{name}");
        let service = service_for(case);
        let request = decode_message(&read(str_field(case, "file")), name);
        let inv = &request.invocations().unwrap()[0];
        let error = dag_json(&case["out"]["error"]);
        let Ipld::Map(e) = &error else {
            panic!("{name}")
        };
        assert_eq!(
            e["name"],
            dag_json(&case["expected"]["error"]["name"]),
            "{name}"
        );
        assert_eq!(
            e["message"],
            dag_json(&case["expected"]["error"]["message"]),
            "{name}"
        );
        assert!(!e.contains_key("stack"), "{name}");
        let receipt = Receipt::issue(&service, inv, Err(error), ReceiptOptions::default()).unwrap();
        assert_eq!(
            receipt.cid().to_string(),
            case["receipt"],
            "{name}: receipt CID"
        );
        let ours = message::encode_response(&[receipt]).unwrap();
        assert!(
            ours == read(str_field(case, "response")),
            "{name}: response differs from w3clock's"
        );
        n += 1;
    }
    assert_eq!(n, 24);
}

#[test]
fn fixture_hashes_match_the_manifest() {
    // Sanity of the fixture set itself: request and response hashes as recorded.
    use sha2::Digest as _;
    let cases = manifest();
    let mut names = HashSet::new();
    for case in clock_cases(&cases) {
        assert!(names.insert(str_field(case, "name").to_string()));
        for (file, hash) in [("file", "request_sha256"), ("response", "response_sha256")] {
            let digest = sha2::Sha256::digest(read(str_field(case, file)));
            assert_eq!(hex::encode(digest), case[hash], "{}: {file}", case["name"]);
        }
    }
}
