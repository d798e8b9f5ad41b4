//! Micro-benchmarks of the protocol core (`cargo bench -p proto`); results in BENCHMARKS.md.
//!
//! - `advance_request/decode_verify`: the golden `clock/advance` request as the real JS client
//!   sends it: CAR decode with hash checks, agent message, invocation UCAN, signature check.
//! - `chain3/decode_verify`: a request whose invocation rests on a 3-link delegation chain:
//!   decode and verify every link's signature.
//! - `chain3/decode_validate`: the same request through the full ucanto validator (signatures,
//!   time bounds, alignment, capability derivation), as the clock service runs it.
//! - `receipt/encode_sign`: sign a `clock/advance` receipt and encode the response CAR.
//! - `ed25519/…`: one 400-byte message. `sign` (ours, AWS-LC) next to `sign_dalek`
//!   (ed25519-dalek, what we used before); `verify` (ours, ZIP215 with the key decoded each time,
//!   as for an invocation) next to `verify_dalek` (decode + `verify`); `batch_{n}_one_key` and
//!   `batch_{n}_keys` ([`proto::principal::verify_batch`], n signatures from one key or n keys),
//!   whose time divided by n is the cost per signature.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use proto::car::CarLimits;
use proto::message::{self, AgentMessage};
use proto::principal::Ed25519Signer;
use proto::receipt::{Receipt, ReceiptOptions};
use proto::ucan::{Capability, Delegation, Proof, Ucan};
use proto::validator::{Validator, parsers};
use proto::{Cid, Ipld};

const ADVANCE: &[u8] = include_bytes!("../tests/fixtures/golden/advance.car");

fn verify_chain(d: &Delegation) -> bool {
    d.ucan().verify_self_signed()
        && d.proofs().iter().all(|p| match p {
            Proof::Delegation(p) => verify_chain(p),
            _ => false,
        })
}

fn decode_verify(body: &[u8]) -> usize {
    let msg = AgentMessage::decode(body, &CarLimits::default()).expect("decodes");
    let invocations = msg.invocations().expect("invocations");
    assert!(invocations.iter().all(verify_chain));
    invocations.len()
}

fn chain3() -> Vec<u8> {
    let space = Ed25519Signer::from_seed(&[1; 32]);
    let service = Ed25519Signer::from_seed(&[2; 32]);
    let a = Ed25519Signer::from_seed(&[3; 32]);
    let b = Ed25519Signer::from_seed(&[4; 32]);
    let c = Ed25519Signer::from_seed(&[5; 32]);
    let link = |from: &Ed25519Signer, to: &Ed25519Signer, can: &str, prf: Option<&Delegation>| {
        Delegation::issue(
            Ucan::builder(from, to.did())
                .capability(Capability::new(can, space.did()))
                .expiration(2_000_000_000),
            prf.map(std::slice::from_ref).unwrap_or(&[]),
            &[],
        )
        .expect("issues")
    };
    let d1 = link(&space, &a, "clock/*", None);
    let d2 = link(&a, &b, "clock/*", Some(&d1));
    let d3 = link(&b, &c, "clock/head", Some(&d2));
    let inv = link(&c, &service, "clock/head", Some(&d3));
    message::encode_request(&[inv]).expect("encodes")
}

fn benches(c: &mut Criterion) {
    c.bench_function("advance_request/decode_verify", |bench| {
        bench.iter(|| decode_verify(black_box(ADVANCE)))
    });

    let chain = chain3();
    c.bench_function("chain3/decode_verify", |bench| {
        bench.iter(|| decode_verify(black_box(&chain)))
    });

    let service = Ed25519Signer::from_seed(&[2; 32]);
    let validator = Validator::new(service.verifier());
    c.bench_function("chain3/decode_validate", |bench| {
        bench.iter(|| {
            let msg =
                AgentMessage::decode(black_box(&chain), &CarLimits::default()).expect("decodes");
            let inv = msg.invocations().expect("invocations").remove(0);
            validator
                .check(&inv, service.did(), 1_800_000_000, |_| {
                    Some(parsers::clock_head())
                })
                .expect("authorized")
        })
    });

    let service = Ed25519Signer::from_seed(&[2; 32]);
    let msg = AgentMessage::decode(ADVANCE, &CarLimits::default()).expect("decodes");
    let inv = msg.invocations().expect("invocations").remove(0);
    let event: Cid = *inv.ucan().attached_links().first().expect("event link");
    c.bench_function("receipt/encode_sign", |bench| {
        bench.iter(|| {
            let mut ok = BTreeMap::new();
            ok.insert("head".to_string(), Ipld::List(vec![Ipld::Link(event)]));
            let r = Receipt::issue(
                &service,
                black_box(&inv),
                Ok(Ipld::Map(ok)),
                ReceiptOptions::default(),
            )
            .expect("signs");
            message::encode_response(&[r]).expect("encodes")
        })
    });
}

fn ed25519(c: &mut Criterion) {
    use ed25519_dalek::{Signer as _, Verifier as _};
    use proto::principal::{Signature, SignatureCheck, verify_batch};
    let signer = Ed25519Signer::from_seed(&[2; 32]);
    let dalek = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
    let message = vec![7u8; 400];
    let public = signer.public_key();
    let signature = signer.sign(&message);
    let raw = dalek.sign(&message);
    c.bench_function("ed25519/sign", |b| {
        b.iter(|| signer.sign(black_box(&message)))
    });
    c.bench_function("ed25519/sign_dalek", |b| {
        b.iter(|| dalek.sign(black_box(&message)))
    });
    c.bench_function("ed25519/verify", |b| {
        b.iter(|| SignatureCheck::new(black_box(public), &message, &signature).map(|c| c.verify()))
    });
    c.bench_function("ed25519/verify_dalek", |b| {
        b.iter(|| {
            ed25519_dalek::VerifyingKey::from_bytes(black_box(&public))
                .is_ok_and(|k| k.verify(&message, &raw).is_ok())
        })
    });
    for n in [8usize, 16] {
        let keys: Vec<Ed25519Signer> = (0..n)
            .map(|i| Ed25519Signer::from_seed(&[i as u8 + 10; 32]))
            .collect();
        let checks = |one_key: bool| -> Vec<SignatureCheck> {
            (0..n)
                .map(|i| {
                    let key = if one_key { &keys[0] } else { &keys[i] };
                    let mut m = message.clone();
                    m[0] = i as u8;
                    let sig: Signature = key.sign(&m);
                    SignatureCheck::new(key.public_key(), &m, &sig).expect("ed25519")
                })
                .collect()
        };
        let (one, many) = (checks(true), checks(false));
        c.bench_function(&format!("ed25519/batch_{n}_one_key"), |b| {
            b.iter(|| verify_batch(black_box(one.clone())))
        });
        c.bench_function(&format!("ed25519/batch_{n}_keys"), |b| {
            b.iter(|| verify_batch(black_box(many.clone())))
        });
    }
}

criterion_group!(proto_benches, benches, ed25519);
criterion_main!(proto_benches);
