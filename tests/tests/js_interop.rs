//! Rust → JS: what our `proto` crate signs and encodes is accepted by the real JS stack.
//!
//! - Receipts we sign verify with `@ucanto/principal` (`tests/js/verify-receipts.mjs`), for a
//!   `did:key` service and a `did:web` one, ok and error outcomes; a receipt signed by the wrong
//!   key is rejected.
//! - Delegation chains we issue (depth 1–3, Storacha and clock capabilities, `nb` constraints)
//!   are authorized by `@ucanto/validator` 10 `access()` (`tests/js/check-access.mjs`), and
//!   tampered ones are refused with `Unauthorized`. The script itself is first checked against
//!   the verdicts recorded in `tests/fixtures/ucan/manifest.json`.
//! - Requests we encode are answered by w3clock's own server code (`tests/js/answer.mjs`); the
//!   receipts verify with our verifier, say what our clock says, and the response CARs are
//!   byte-identical to the ones our codecs write for the same requests.
//!
//! These tests need Node.js and `tests/js/node_modules`; without them they fail and say to run
//! `scripts/test`. Each test starts Node once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use proto::capability::{
    BlobRef, ClockAdvance, ClockHead, SpaceBlobAdd, SpaceIndexAdd, SpaceInfo, UploadAdd,
};
use proto::car::CarLimits;
use proto::clock::{self, Event};
use proto::ipld::{self, CAR, RAW};
use proto::message::{self, AgentMessage};
use proto::principal::Ed25519Signer;
use proto::receipt::{Receipt, ReceiptOptions};
use proto::ucan::{Capability, Delegation, Ucan, UcanBuilder};
use proto::{Block, Cid, Ipld};
use serde_json::Value;
use tests::{fixture_path, run_node};

/// Valid expiry of every UCAN here (2033-05-18), as in the JS fixtures.
const EXP: i64 = 2_000_000_000;
/// An expiry in the past (2001-09-09).
const EXPIRED: i64 = 1_000_000_000;
/// A not-before in the future (2033-01-23).
const NBF_FUTURE: i64 = 1_990_000_000;

const UPLOAD_SERVICE: &str = "did:web:up.storacha.test";
const CLOCK_WEB: &str = "did:web:clock.web3.storage";

/// The fixed-seed keys of `tests/fixtures/ucan/principals.json`.
fn clock_key() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x01; 32])
}
fn service() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x02; 32])
}
fn alice() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x03; 32])
}
fn bob() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x04; 32])
}
fn carol() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x05; 32])
}
fn mallory() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x06; 32])
}
fn space() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x07; 32])
}
/// The key behind `did:web:up.storacha.test`.
fn authority() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x09; 32])
}
fn clock2() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[0x0b; 32])
}

fn map(entries: impl IntoIterator<Item = (&'static str, Ipld)>) -> BTreeMap<String, Ipld> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn head_ok(head: &[Cid]) -> Ipld {
    Ipld::Map(map([(
        "head",
        Ipld::List(head.iter().map(|c| Ipld::Link(*c)).collect()),
    )]))
}

/// `{data, parents}` events as pail writes them.
fn event(data: BTreeMap<String, Ipld>, parents: &[Cid]) -> Block {
    Event::new(Ipld::Map(data), parents.to_vec())
        .to_block()
        .unwrap()
}

fn events() -> (Block, Block, Block) {
    let e1 = event(map([("hello", Ipld::String("world".into()))]), &[]);
    let e2 = event(map([("n", Ipld::Integer(2))]), &[*e1.cid()]);
    let e3 = event(map([("n", Ipld::Integer(3))]), &[]);
    (e1, e2, e3)
}

/// A delegation of one capability, valid until [`EXP`] unless `tweak` says otherwise.
fn delegate(
    issuer: &Ed25519Signer,
    audience: &str,
    cap: Capability,
    proofs: &[&Delegation],
    tweak: impl FnOnce(UcanBuilder<'_>) -> UcanBuilder<'_>,
) -> Delegation {
    let proofs: Vec<Delegation> = proofs.iter().map(|d| (*d).clone()).collect();
    let builder = tweak(
        Ucan::builder(issuer, audience)
            .capability(cap)
            .expiration(EXP),
    );
    Delegation::issue(builder, &proofs, &[]).unwrap()
}

fn keep(b: UcanBuilder<'_>) -> UcanBuilder<'_> {
    b
}

/// `clock/head` as the w3clock client invokes it.
fn head_invocation(
    issuer: &Ed25519Signer,
    audience: &str,
    clock_did: &str,
    proofs: &[&Delegation],
    nonce: Option<&str>,
) -> Delegation {
    let cap = ClockHead {
        with: clock_did.into(),
    }
    .to_capability();
    delegate(issuer, audience, cap, proofs, |b| match nonce {
        Some(n) => b.nonce(n),
        None => b,
    })
}

/// `clock/advance` as the w3clock client invokes it: `nb.event`, the blocks attached, and one
/// fact mapping each attached block's CID string to its link.
fn advance_invocation(
    issuer: &Ed25519Signer,
    audience: &str,
    clock_did: &str,
    event: &Cid,
    blocks: &[&Block],
    proofs: &[&Delegation],
) -> Delegation {
    let cap = ClockAdvance {
        with: clock_did.into(),
        event: *event,
    }
    .to_capability();
    let fact: BTreeMap<String, Ipld> = blocks
        .iter()
        .map(|b| (b.cid().to_string(), Ipld::Link(*b.cid())))
        .collect();
    let proofs: Vec<Delegation> = proofs.iter().map(|d| (*d).clone()).collect();
    let attached: Vec<Block> = blocks.iter().map(|b| (*b).clone()).collect();
    let builder = Ucan::builder(issuer, audience)
        .capability(cap)
        .expiration(EXP)
        .fact(fact);
    Delegation::issue(builder, &proofs, &attached).unwrap()
}

/// Our in-memory clock service: what w3clock's handlers compute, through `proto::clock`.
#[derive(Default)]
struct ClockState {
    heads: HashMap<String, Vec<Cid>>,
    blocks: HashMap<Cid, Block>,
}

impl ClockState {
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

    /// Answers a request: the response CAR our codecs write.
    fn answer(&mut self, service: &Ed25519Signer, invocations: &[Delegation]) -> Vec<u8> {
        let receipts: Vec<Receipt> = invocations
            .iter()
            .map(|inv| {
                let out = self.run(inv);
                Receipt::issue(service, inv, Ok(out), ReceiptOptions::default()).unwrap()
            })
            .collect();
        message::encode_response(&receipts).unwrap()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A receipt's `out` as DAG-JSON, the form verify-receipts.mjs prints.
fn out_json(out: Result<&Ipld, &Ipld>) -> Value {
    let (tag, v) = match out {
        Ok(v) => ("ok", v),
        Err(e) => ("error", e),
    };
    let m = map([(tag, v.clone())]);
    serde_json::from_slice(&ipld::encode_dag_json(&Ipld::Map(m)).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// receipts we sign, verified by @ucanto/principal

/// Issues a receipt per invocation (`outs[i]`), encodes the request and the response into
/// `dir`, and returns their paths and the receipts.
fn request_and_response(
    dir: &Path,
    name: &str,
    signer: &Ed25519Signer,
    invocations: &[Delegation],
    outs: Vec<Result<Ipld, Ipld>>,
) -> (PathBuf, PathBuf, Vec<Receipt>) {
    let receipts: Vec<Receipt> = invocations
        .iter()
        .zip(outs)
        .map(|(inv, out)| Receipt::issue(signer, inv, out, ReceiptOptions::default()).unwrap())
        .collect();
    let req = write(
        dir,
        &format!("{name}.car"),
        &message::encode_request(invocations).unwrap(),
    );
    let resp = write(
        dir,
        &format!("{name}.resp.car"),
        &message::encode_response(&receipts).unwrap(),
    );
    (req, resp, receipts)
}

fn assert_receipt_lines(lines: &[Value], receipts: &[Receipt], what: &str) {
    assert_eq!(lines.len(), receipts.len(), "{what}: {lines:?}");
    for (line, r) in lines.iter().zip(receipts) {
        assert_eq!(line["signature"], "ok", "{what}: {line}");
        assert_eq!(line["issMatches"], true, "{what}: {line}");
        assert_eq!(line["ranMatches"], true, "{what}: {line}");
        assert_eq!(line["invocation"], r.ran().to_string(), "{what}");
        assert_eq!(line["receipt"], r.cid().to_string(), "{what}");
        assert_eq!(line["out"], out_json(r.out()), "{what}: out as JS reads it");
    }
}

#[test]
fn rust_receipts_verify_in_js() {
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2, _) = events();
    let svc = service();
    let clk = clock_key();
    let clk_did = clk.did().to_string();

    // 1. did:key service: head, advance (self-issued and delegated), head, and an error.
    let to_alice = delegate(
        &clk,
        alice().did(),
        Capability::new("clock/*", &clk_did),
        &[],
        keep,
    );
    let follow = delegate(
        &clk,
        svc.did(),
        Capability::new("clock/follow", &clk_did).with_nb(BTreeMap::new()),
        &[],
        |b| b.nonce("n"),
    );
    let invocations = vec![
        head_invocation(&clk, svc.did(), &clk_did, &[], Some("n")),
        advance_invocation(&clk, svc.did(), &clk_did, e1.cid(), &[&e1], &[]),
        advance_invocation(
            &alice(),
            svc.did(),
            &clk_did,
            e2.cid(),
            &[&e2, &e1],
            &[&to_alice],
        ),
        head_invocation(&alice(), svc.did(), &clk_did, &[&to_alice], None),
        follow,
    ];
    let mut state = ClockState::default();
    let mut outs: Vec<Result<Ipld, Ipld>> =
        invocations[..4].iter().map(|i| Ok(state.run(i))).collect();
    assert_eq!(outs[3], Ok(head_ok(&[*e2.cid()])));
    outs.push(Err(Ipld::Map(map([
        ("name", Ipld::String("HandlerNotFound".into())),
        (
            "message",
            Ipld::String("service does not implement {can: \"clock/follow\"} handler".into()),
        ),
    ]))));
    let (req, resp, receipts) =
        request_and_response(dir.path(), "did-key", &svc, &invocations, outs);
    let run = run_node(
        "verify-receipts.mjs",
        [req.as_os_str(), resp.as_os_str(), svc.did().as_ref()],
    );
    run.expect_code(0);
    assert_receipt_lines(&run.json_lines(), &receipts, "did:key service");
    assert!(receipts[4].out().is_err());

    // 2. did:web service: iss is the did:web, signed by its did:key.
    let web = svc.clone().with_did(CLOCK_WEB).unwrap();
    let invocations = vec![
        head_invocation(&clk, CLOCK_WEB, &clk_did, &[], Some("n")),
        advance_invocation(&clk, CLOCK_WEB, &clk_did, e1.cid(), &[&e1], &[]),
    ];
    let mut state = ClockState::default();
    let outs = invocations.iter().map(|i| Ok(state.run(i))).collect();
    let (req, resp, receipts) =
        request_and_response(dir.path(), "did-web", &web, &invocations, outs);
    assert_eq!(receipts[0].issuer(), Some(CLOCK_WEB));
    let run = run_node(
        "verify-receipts.mjs",
        [
            req.as_os_str(),
            resp.as_os_str(),
            CLOCK_WEB.as_ref(),
            svc.did().as_ref(),
        ],
    );
    run.expect_code(0);
    assert_receipt_lines(&run.json_lines(), &receipts, "did:web service");

    // 3. A receipt that claims the service's DID but is signed by another key is rejected;
    //    the honest receipt next to it still verifies.
    let forger = mallory().with_did(svc.did()).unwrap();
    let honest = head_invocation(&clk, svc.did(), &clk_did, &[], Some("honest"));
    let forged = head_invocation(&clk, svc.did(), &clk_did, &[], Some("forged"));
    let receipts = [
        Receipt::issue(&svc, &honest, Ok(head_ok(&[])), ReceiptOptions::default()).unwrap(),
        Receipt::issue(
            &forger,
            &forged,
            Ok(head_ok(&[])),
            ReceiptOptions::default(),
        )
        .unwrap(),
    ];
    assert_eq!(receipts[1].issuer(), Some(svc.did()));
    assert!(!receipts[1].verify_signature(&svc.verifier()));
    let req = write(
        dir.path(),
        "forged.car",
        &message::encode_request(&[honest, forged]).unwrap(),
    );
    let resp = write(
        dir.path(),
        "forged.resp.car",
        &message::encode_response(&receipts).unwrap(),
    );
    let run = run_node(
        "verify-receipts.mjs",
        [req.as_os_str(), resp.as_os_str(), svc.did().as_ref()],
    );
    run.expect_code(1);
    let lines = run.json_lines();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert_eq!(lines[0]["signature"], "ok", "{run:?}");
    assert_ne!(lines[1]["signature"], "ok", "{run:?}");
    assert!(lines[1]["signature"].is_object(), "{run:?}");
    assert_eq!(lines[1]["issMatches"], true, "{run:?}");
}

// ---------------------------------------------------------------------------------------------
// delegation chains we issue, authorized by @ucanto/validator access()

/// One `check-access.mjs` case.
struct AccessCase {
    name: String,
    ability: &'static str,
    archive: PathBuf,
    authority: String,
    authority_key: String,
    /// `None`: must be authorized; `Some((name, fragment))`: must fail with that error name and
    /// a message containing the fragment.
    expect_error: Option<(&'static str, &'static str)>,
}

impl AccessCase {
    fn args(&self) -> [std::ffi::OsString; 4] {
        [
            self.archive.clone().into_os_string(),
            self.ability.into(),
            self.authority.clone().into(),
            self.authority_key.clone().into(),
        ]
    }
}

fn run_access_cases(cases: &[AccessCase]) {
    let run = run_node("check-access.mjs", cases.iter().flat_map(AccessCase::args));
    run.expect_code(0);
    let lines = run.json_lines();
    assert_eq!(lines.len(), cases.len(), "{run:?}");
    for (case, line) in cases.iter().zip(&lines) {
        let name = &case.name;
        assert_eq!(line["archive"], case.archive.to_str().unwrap(), "{name}");
        match case.expect_error {
            None => assert_eq!(line["ok"], true, "{name}: JS refused it: {line}"),
            Some((err, fragment)) => {
                assert!(line["ok"].is_null(), "{name}: JS authorized it: {line}");
                assert_eq!(line["error"]["name"], err, "{name}: {line}");
                let message = line["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(fragment),
                    "{name}: {fragment:?} not in {message}"
                );
            }
        }
    }
}

#[test]
fn check_access_script_agrees_with_the_fixtures() {
    // The script gives the verdicts gen-ucan-fixtures.mjs recorded, messages included.
    let manifest: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture_path("ucan/manifest.json")).unwrap())
            .unwrap();
    let access: Vec<&Value> = manifest.iter().filter(|c| c["kind"] == "access").collect();
    assert_eq!(access.len(), 31);
    let args = access.iter().flat_map(|c| {
        [
            fixture_path(&format!("ucan/{}", c["file"].as_str().unwrap())).into_os_string(),
            c["capability"].as_str().unwrap().into(),
            c["authority"].as_str().unwrap().into(),
            c["authorityKey"].as_str().unwrap().into(),
        ]
    });
    let run = run_node("check-access.mjs", args);
    run.expect_code(0);
    let lines = run.json_lines();
    assert_eq!(lines.len(), access.len(), "{run:?}");
    for (case, line) in access.iter().zip(&lines) {
        let mut got = line.clone();
        let got = got.as_object_mut().unwrap();
        got.remove("archive");
        got.remove("ability");
        assert_eq!(
            Value::Object(got.clone()),
            case["expected"],
            "{}",
            case["name"]
        );
    }
}

#[test]
fn rust_delegation_chains_validate_in_js() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a, b, c, m) = (space(), alice(), bob(), carol(), mallory());
    let sp = s.did().to_string();
    let svc = service();
    let clk = clock_key();
    let clk_did = clk.did().to_string();
    let (e1, e2, _) = events();
    let authority = authority();

    let digest_a = ipld::cid_sha256(RAW, b"blob A").hash().to_bytes();
    let digest_b = ipld::cid_sha256(RAW, b"blob B").hash().to_bytes();
    let blob = |digest: &[u8], size| SpaceBlobAdd {
        with: sp.clone(),
        blob: BlobRef {
            digest: digest.to_vec(),
            size,
        },
    };
    let root_a = ipld::cid_sha256(RAW, b"root A");
    let shard_a = ipld::cid_sha256(CAR, b"shard A");
    let index_a = ipld::cid_sha256(CAR, b"index A");
    let cap = |can: &str| Capability::new(can, &sp);

    let mut cases = Vec::new();
    let mut add = |name: &str,
                   ability: &'static str,
                   invocation: Delegation,
                   expect_error: Option<(&'static str, &'static str)>| {
        let (authority_did, key) = if ability.starts_with("clock/") {
            (svc.did().to_string(), svc.did().to_string())
        } else {
            (UPLOAD_SERVICE.to_string(), authority.did().to_string())
        };
        let archive = write(
            dir.path(),
            &format!("{name}.car"),
            &invocation.archive().unwrap(),
        );
        cases.push(AccessCase {
            name: name.to_string(),
            ability,
            archive,
            authority: authority_did,
            authority_key: key,
            expect_error,
        });
    };
    let invoke = |issuer: &Ed25519Signer, cap: Capability, proofs: &[&Delegation]| {
        delegate(issuer, UPLOAD_SERVICE, cap, proofs, |u| u.nonce("n"))
    };
    const UNAUTHORIZED: Option<(&str, &str)> = Some(("Unauthorized", "is not authorized"));

    // space/blob/add, depth 1–3, with and without nb constraints.
    let d1 = delegate(&s, a.did(), cap("space/blob/add"), &[], keep);
    add(
        "blob-add-d1",
        "space/blob/add",
        invoke(&a, blob(&digest_a, 100).to_capability(), &[&d1]),
        None,
    );
    let star = delegate(&s, a.did(), cap("space/blob/*"), &[], keep);
    let within = delegate(
        &a,
        b.did(),
        blob(&digest_a, 100).to_capability(),
        &[&star],
        keep,
    );
    add(
        "blob-add-d2-nb",
        "space/blob/add",
        invoke(&b, blob(&digest_a, 50).to_capability(), &[&within]),
        None,
    );
    let top = delegate(&s, a.did(), cap("*"), &[], keep);
    let mid = delegate(&a, b.did(), cap("space/*"), &[&top], keep);
    let leaf = delegate(&b, c.did(), cap("space/blob/add"), &[&mid], keep);
    add(
        "blob-add-d3",
        "space/blob/add",
        invoke(&c, blob(&digest_a, 100).to_capability(), &[&leaf]),
        None,
    );

    // upload/add with a root constraint, space/index/add, space/info.
    let uploads = delegate(&s, a.did(), cap("upload/*"), &[], keep);
    let one_root = delegate(
        &a,
        b.did(),
        cap("upload/add").with_nb(map([("root", Ipld::Link(root_a))])),
        &[&uploads],
        keep,
    );
    let upload = UploadAdd {
        with: sp.clone(),
        root: root_a,
        shards: Some(vec![shard_a]),
    };
    add(
        "upload-add-d2-root",
        "upload/add",
        invoke(&b, upload.to_capability(), &[&one_root]),
        None,
    );
    let index = SpaceIndexAdd {
        with: sp.clone(),
        index: index_a,
        content: None,
    };
    let indexes = delegate(&s, a.did(), cap("space/index/*"), &[], keep);
    let one_index = delegate(&a, b.did(), index.to_capability(), &[&indexes], keep);
    add(
        "index-add-d2",
        "space/index/add",
        invoke(&b, index.to_capability(), &[&one_index]),
        None,
    );
    let info = SpaceInfo { with: sp.clone() };
    let info_proof = delegate(&s, a.did(), cap("space/info"), &[], keep);
    add(
        "space-info-d1",
        "space/info",
        invoke(&a, info.to_capability(), &[&info_proof]),
        None,
    );

    // clock/head depth 3, clock/advance depth 2 with an event constraint, self-issued advance.
    let c1 = delegate(&clk, a.did(), Capability::new("*", &clk_did), &[], keep);
    let c2 = delegate(
        &a,
        b.did(),
        Capability::new("clock/*", &clk_did),
        &[&c1],
        keep,
    );
    let c3 = delegate(
        &b,
        c.did(),
        Capability::new("clock/head", &clk_did),
        &[&c2],
        keep,
    );
    add(
        "clock-head-d3",
        "clock/head",
        head_invocation(&c, svc.did(), &clk_did, &[&c3], None),
        None,
    );
    let clocks = delegate(
        &clk,
        a.did(),
        Capability::new("clock/*", &clk_did),
        &[],
        keep,
    );
    let e1_only = ClockAdvance {
        with: clk_did.clone(),
        event: *e1.cid(),
    };
    let advances = delegate(
        &a,
        b.did(),
        Capability::new("clock/advance", &clk_did),
        &[&clocks],
        keep,
    );
    add(
        "clock-advance-d2",
        "clock/advance",
        advance_invocation(&b, svc.did(), &clk_did, e1.cid(), &[&e1], &[&advances]),
        None,
    );
    // A quirk of ucanto's default `derives` (validator 9 and 10, capability.js): an `nb` field
    // delegated as a link is compared with `!=` on CID objects, so it never matches, not even
    // the same CID ("event: X violates X"). clock/advance has no custom `derives`, so an
    // event-constrained clock/advance delegation cannot be used at all.
    let adv_e1 = delegate(&a, b.did(), e1_only.to_capability(), &[&clocks], keep);
    add(
        "clock-advance-d2-event-constraint",
        "clock/advance",
        advance_invocation(&b, svc.did(), &clk_did, e1.cid(), &[&e1], &[&adv_e1]),
        Some((
            "Unauthorized",
            "Constraint violation: event: bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq violates bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq",
        )),
    );
    add(
        "clock-advance-self",
        "clock/advance",
        advance_invocation(&clk, svc.did(), &clk_did, e1.cid(), &[&e1], &[]),
        None,
    );

    // Tampered: JS must refuse each.
    let expired = delegate(&a, b.did(), cap("space/blob/add"), &[&star], |u| {
        u.expiration(EXPIRED)
    });
    add(
        "blob-add-d2-expired-link",
        "space/blob/add",
        invoke(&b, blob(&digest_a, 100).to_capability(), &[&expired]),
        Some(("Unauthorized", "has expired on Sun Sep 09 2001")),
    );
    let early = delegate(&s, a.did(), cap("space/blob/add"), &[], |u| {
        u.not_before(NBF_FUTURE)
    });
    add(
        "blob-add-not-yet-valid-proof",
        "space/blob/add",
        invoke(&a, blob(&digest_a, 100).to_capability(), &[&early]),
        Some(("Unauthorized", "is not valid before")),
    );
    let uploads_only = delegate(&s, a.did(), cap("upload/add"), &[], keep);
    add(
        "blob-add-widened-can",
        "space/blob/add",
        invoke(&a, blob(&digest_a, 100).to_capability(), &[&uploads_only]),
        UNAUTHORIZED,
    );
    add(
        "blob-add-widened-size",
        "space/blob/add",
        invoke(&b, blob(&digest_a, 200).to_capability(), &[&within]),
        UNAUTHORIZED,
    );
    add(
        "blob-add-widened-digest",
        "space/blob/add",
        invoke(&b, blob(&digest_b, 100).to_capability(), &[&within]),
        UNAUTHORIZED,
    );
    let foreign = delegate(&m, a.did(), cap("space/blob/add"), &[], keep);
    add(
        "blob-add-foreign-root",
        "space/blob/add",
        invoke(&a, blob(&digest_a, 100).to_capability(), &[&foreign]),
        UNAUTHORIZED,
    );
    // Signed by mallory's key but claiming to be alice.
    let impostor = m.clone().with_did(a.did()).unwrap();
    add(
        "blob-add-forged-invocation-signature",
        "space/blob/add",
        invoke(&impostor, blob(&digest_a, 100).to_capability(), &[&d1]),
        Some(("Unauthorized", "valid signature")),
    );
    // (Refused for the reason above whatever the event; listed for the record.)
    add(
        "clock-advance-widened-event",
        "clock/advance",
        advance_invocation(&b, svc.did(), &clk_did, e2.cid(), &[&e2, &e1], &[&adv_e1]),
        UNAUTHORIZED,
    );
    let heads_only = delegate(
        &clk,
        a.did(),
        Capability::new("clock/head", &clk_did),
        &[],
        keep,
    );
    add(
        "clock-advance-from-head",
        "clock/advance",
        advance_invocation(&a, svc.did(), &clk_did, e1.cid(), &[&e1], &[&heads_only]),
        UNAUTHORIZED,
    );
    let other_clock = delegate(
        &clock2(),
        a.did(),
        Capability::new("clock/*", clock2().did()),
        &[],
        keep,
    );
    add(
        "clock-head-other-clock",
        "clock/head",
        head_invocation(&a, svc.did(), &clk_did, &[&other_clock], None),
        UNAUTHORIZED,
    );

    assert_eq!(cases.len(), 20);
    run_access_cases(&cases);
}

// ---------------------------------------------------------------------------------------------
// requests we encode, answered by w3clock's server

#[test]
fn rust_requests_answered_by_js() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service();
    let clk = clock_key();
    let clk_did = clk.did().to_string();
    let a = alice();
    let (e1, e2, e3) = events();
    // alice holds clock/* on the clock (a Rust-made delegation), as a backup worker would.
    let grant = delegate(
        &clk,
        a.did(),
        Capability::new("clock/*", &clk_did),
        &[],
        keep,
    );

    let requests: Vec<(&str, Vec<Delegation>, Vec<Ipld>)> = vec![
        (
            "head-empty",
            vec![head_invocation(&a, svc.did(), &clk_did, &[&grant], None)],
            vec![head_ok(&[])],
        ),
        (
            "advance-e1",
            vec![advance_invocation(
                &a,
                svc.did(),
                &clk_did,
                e1.cid(),
                &[&e1],
                &[&grant],
            )],
            vec![head_ok(&[*e1.cid()])],
        ),
        (
            "advance-e2-child",
            vec![advance_invocation(
                &a,
                svc.did(),
                &clk_did,
                e2.cid(),
                &[&e2, &e1],
                &[&grant],
            )],
            vec![head_ok(&[*e2.cid()])],
        ),
        (
            "advance-e3-concurrent",
            vec![advance_invocation(
                &a,
                svc.did(),
                &clk_did,
                e3.cid(),
                &[&e3],
                &[&grant],
            )],
            vec![head_ok(&[*e2.cid(), *e3.cid()])],
        ),
        (
            "advance-e1-again",
            vec![advance_invocation(
                &clk,
                svc.did(),
                &clk_did,
                e1.cid(),
                &[&e1],
                &[],
            )],
            vec![head_ok(&[*e2.cid(), *e3.cid()])],
        ),
        (
            "batch-heads",
            vec![
                head_invocation(&a, svc.did(), &clk_did, &[&grant], Some("batch")),
                head_invocation(&clock2(), svc.did(), clock2().did(), &[], Some("batch")),
            ],
            vec![head_ok(&[*e2.cid(), *e3.cid()]), head_ok(&[])],
        ),
    ];

    let mut args: Vec<std::ffi::OsString> = vec![svc.format().into()];
    let mut files = Vec::new();
    for (name, invocations, _) in &requests {
        let req = write(
            dir.path(),
            &format!("{name}.car"),
            &message::encode_request(invocations).unwrap(),
        );
        let resp = dir.path().join(format!("{name}.resp.car"));
        args.push(req.clone().into_os_string());
        args.push(resp.clone().into_os_string());
        files.push((req, resp));
    }
    let run = run_node("answer.mjs", args);
    run.expect_code(0);
    assert_eq!(run.json_lines().len(), requests.len(), "{run:?}");

    let verifier = svc.verifier();
    let mut ours = ClockState::default();
    for ((name, invocations, want), (req, resp)) in requests.iter().zip(&files) {
        let js_bytes = std::fs::read(resp).unwrap();
        let response = AgentMessage::decode(&js_bytes, &CarLimits::default()).unwrap();
        assert_eq!(response.report().len(), invocations.len(), "{name}");
        for (inv, want) in invocations.iter().zip(want) {
            let receipt = response
                .receipt(inv.cid())
                .unwrap_or_else(|| panic!("{name}: no receipt"))
                .unwrap();
            assert_eq!(receipt.ran(), inv.cid(), "{name}");
            assert_eq!(receipt.issuer(), Some(svc.did()), "{name}");
            assert!(
                receipt.verify_signature(&verifier),
                "{name}: JS receipt signature"
            );
            assert_eq!(receipt.out(), Ok(want), "{name}: JS answer");
            assert_eq!(receipt.ran_invocation().unwrap().cid(), inv.cid(), "{name}");
        }
        // Our codecs, answering the same request, write the very same bytes.
        let request =
            AgentMessage::decode(&std::fs::read(req).unwrap(), &CarLimits::default()).unwrap();
        let decoded = request.invocations().unwrap();
        assert!(
            ours.answer(&svc, &decoded) == js_bytes,
            "{name}: our response differs from w3clock's"
        );
    }
}
