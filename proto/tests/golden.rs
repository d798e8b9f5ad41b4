//! Golden vectors from the project's interop kit: the requests the real w3clock client sends,
//! and the exact bytes w3clock (and four other hosts of it) answer. Decoding the requests and
//! answering them with the kit's service key through our codecs must give identical bytes.

use std::collections::{BTreeMap, HashMap};

use proto::capability::{ClockAdvance, ClockHead};
use proto::car::CarLimits;
use proto::clock;
use proto::message::{self, AgentMessage};
use proto::principal::Ed25519Signer;
use proto::receipt::{Receipt, ReceiptOptions};
use proto::{Block, Cid, Ipld};

const SERVICE_KEY: &str =
    "MgCYCAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAu0BgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn head_ok(head: &[Cid]) -> Ipld {
    let mut m = BTreeMap::new();
    m.insert(
        "head".to_string(),
        Ipld::List(head.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    Ipld::Map(m)
}

/// A minimal in-memory clock: enough to replay the golden trace through our codecs.
struct Clock {
    head: Vec<Cid>,
    blocks: HashMap<Cid, Block>,
}

impl Clock {
    fn answer(&mut self, service: &Ed25519Signer, request: &[u8]) -> Vec<u8> {
        let msg = AgentMessage::decode(request, &CarLimits::default()).unwrap();
        let mut receipts = Vec::new();
        for inv in msg.invocations().unwrap() {
            assert!(inv.ucan().verify_self_signed(), "invocation signature");
            assert_eq!(inv.ucan().audience(), service.did());
            let cap = &inv.ucan().capabilities()[0];
            let out = match cap.can.as_str() {
                "clock/head" => {
                    ClockHead::parse(cap).unwrap();
                    head_ok(&self.head)
                }
                "clock/advance" => {
                    let adv = ClockAdvance::parse(cap).unwrap();
                    for b in inv.attached_blocks() {
                        self.blocks.insert(*b.cid(), b);
                    }
                    self.head = clock::advance(&self.blocks, &self.head, &adv.event).unwrap();
                    head_ok(&self.head)
                }
                other => panic!("unexpected ability {other}"),
            };
            receipts
                .push(Receipt::issue(service, &inv, Ok(out), ReceiptOptions::default()).unwrap());
        }
        message::encode_response(&receipts).unwrap()
    }
}

#[test]
fn golden_trace_is_byte_identical() {
    let service = Ed25519Signer::parse(SERVICE_KEY).unwrap();
    assert_eq!(
        service.did(),
        "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
    );
    let mut clock = Clock {
        head: vec![],
        blocks: HashMap::new(),
    };
    let head = fixture("head.car");
    let advance = fixture("advance.car");
    assert_eq!(
        clock.answer(&service, &head),
        fixture("head-empty.resp.car")
    );
    assert_eq!(
        clock.answer(&service, &advance),
        fixture("advance.resp.car")
    );
    assert_eq!(
        clock.answer(&service, &head),
        fixture("head-after.resp.car")
    );
}

#[test]
fn golden_requests_re_encode_identically() {
    for name in ["head.car", "advance.car"] {
        let bytes = fixture(name);
        let msg = AgentMessage::decode(&bytes, &CarLimits::default()).unwrap();
        let invocations = msg.invocations().unwrap();
        assert_eq!(
            message::encode_request(&invocations).unwrap(),
            bytes,
            "{name}"
        );
    }
}

#[test]
fn golden_receipts_verify_and_decode() {
    let service = Ed25519Signer::parse(SERVICE_KEY).unwrap().verifier();
    let req = AgentMessage::decode(&fixture("advance.car"), &CarLimits::default()).unwrap();
    let resp = AgentMessage::decode(&fixture("advance.resp.car"), &CarLimits::default()).unwrap();
    let inv = &req.invocations().unwrap()[0];
    assert_eq!(
        inv.cid().to_string(),
        "bafyreigxw6h5rimxjfxak754pzbpoz2iuybu7pabwf4n453ktsvn3sjshi"
    );
    let receipt = resp.receipt(inv.cid()).unwrap().unwrap();
    assert_eq!(
        receipt.cid().to_string(),
        "bafyreigcfp6ioumraxrle2xfv3z55yqjxvwhempqsgw6mwqugpcniayije"
    );
    assert!(receipt.verify_signature(&service));
    let event: Cid = "bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq"
        .parse()
        .unwrap();
    assert_eq!(receipt.out().unwrap(), &head_ok(&[event]));
    let other = Ed25519Signer::from_seed(&[9; 32]).verifier();
    assert!(!receipt.verify_signature(&other));
}
