//! Ed25519 verdicts at the edges of the rules, ours against the JS verifier ucanto uses.
//!
//! `proto` verifies under ZIP215 (ed25519-zebra): the cofactored equation `[8][s]B = [8]R +
//! [8][k]A`, `s` canonical. `@noble/ed25519` 1.7, under `@ucanto/principal`, checks the same
//! cofactored equation, so signatures whose `R` or key carries a small-order component are
//! accepted by both, where a cofactorless verifier (ed25519-dalek's `verify`, which `proto`
//! used before) rejects them. Batch verification (`verify_batch`, which the clock service uses)
//! must reach the single verdict on every case. Cases use canonical point encodings only: for a
//! non-canonical `R` or key, noble hashes the re-encoded bytes and ZIP215 the given ones, so
//! the two can differ there (no honest signer produces such encodings).

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use proto::principal::{Signature, SignatureCheck, Verifier, verify_batch};
use serde_json::json;
use sha2::{Digest, Sha512};
use tests::run_node;

struct Case {
    name: &'static str,
    key: [u8; 32],
    message: Vec<u8>,
    signature: [u8; 64],
    /// The verdict the rules give.
    valid: bool,
}

fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[u8]) -> Scalar {
    let h = Sha512::new()
        .chain_update(r)
        .chain_update(key)
        .chain_update(message)
        .finalize();
    Scalar::from_bytes_mod_order_wide(&h.into())
}

/// A signature by secret scalar `a` under the encoded key `key` (which may differ from `aB` by
/// a small-order point), with nonce point `rB + extra`.
fn sign_with(a: Scalar, key: [u8; 32], r: Scalar, extra: EdwardsPoint, message: &[u8]) -> [u8; 64] {
    let big_r = (EdwardsPoint::mul_base(&r) + extra).compress().to_bytes();
    let s = r + challenge(&big_r, &key, message) * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&big_r);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

fn cases() -> Vec<Case> {
    let a = Scalar::from_bytes_mod_order([7; 32]);
    let r = Scalar::from_bytes_mod_order([11; 32]);
    let key = EdwardsPoint::mul_base(&a).compress().to_bytes();
    // y = 0 is a point of order 4: a small-order component the cofactor kills.
    let torsion = CompressedEdwardsY([0; 32]).decompress().unwrap();
    assert!(torsion.is_small_order() && torsion != EdwardsPoint::default());
    let identity = EdwardsPoint::default();
    let msg = b"clock/head".to_vec();

    let honest = sign_with(a, key, r, identity, &msg);
    let mut tampered_s = honest;
    tampered_s[40] ^= 1;
    // s + L: the same scalar, not canonical.
    let mut high_s = honest;
    let l_bytes = Scalar::ZERO - Scalar::ONE; // L - 1
    let s = Scalar::from_canonical_bytes(honest[32..].try_into().unwrap()).unwrap();
    let mut carry = 1u16; // add L = (L - 1) + 1 to s, as bytes, little endian
    for i in 0..32 {
        let v = u16::from(s.as_bytes()[i]) + u16::from(l_bytes.as_bytes()[i]) + carry;
        high_s[32 + i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0, "s + L fits in 32 bytes for this s");
    let torsion_key = (EdwardsPoint::mul_base(&a) + torsion).compress().to_bytes();
    let small_key = torsion.compress().to_bytes();
    let mut identity_sig = [0u8; 64];
    identity_sig[..32].copy_from_slice(&identity.compress().to_bytes());
    let mut off_curve = honest;
    // y = 2 is not the y of any curve point.
    off_curve[..32].copy_from_slice(&{
        let mut b = [0u8; 32];
        b[0] = 2;
        b
    });
    assert!(
        CompressedEdwardsY(off_curve[..32].try_into().unwrap())
            .decompress()
            .is_none()
    );

    vec![
        Case {
            name: "honest",
            key,
            message: msg.clone(),
            signature: honest,
            valid: true,
        },
        Case {
            name: "other message",
            key,
            message: b"clock/advance".to_vec(),
            signature: honest,
            valid: false,
        },
        Case {
            name: "tampered s",
            key,
            message: msg.clone(),
            signature: tampered_s,
            valid: false,
        },
        Case {
            name: "s not canonical (s + L)",
            key,
            message: msg.clone(),
            signature: high_s,
            valid: false,
        },
        Case {
            name: "R with a small-order component",
            key,
            message: msg.clone(),
            signature: sign_with(a, key, r, torsion, &msg),
            valid: true,
        },
        Case {
            name: "key with a small-order component",
            key: torsion_key,
            message: msg.clone(),
            signature: sign_with(a, torsion_key, r, identity, &msg),
            valid: true,
        },
        Case {
            name: "small-order key, identity R, s = 0 (any message)",
            key: small_key,
            message: b"anything at all".to_vec(),
            signature: identity_sig,
            valid: true,
        },
        Case {
            name: "R not a curve point",
            key,
            message: msg.clone(),
            signature: off_curve,
            valid: false,
        },
    ]
}

#[test]
fn single_batch_and_js_verdicts_agree_at_the_edges() {
    let cases = cases();
    let expected: Vec<bool> = cases.iter().map(|c| c.valid).collect();
    let checks: Vec<SignatureCheck> = cases
        .iter()
        .map(|c| SignatureCheck::new(c.key, &c.message, &Signature::ed25519(c.signature)).unwrap())
        .collect();

    let single: Vec<bool> = checks.iter().cloned().map(SignatureCheck::verify).collect();
    assert_eq!(
        single,
        expected,
        "single verification, in case order: {:?}",
        names(&cases)
    );
    // Whole batch (mixed verdicts: falls back to single checks) and every valid case batched
    // together (one batch equation).
    assert_eq!(verify_batch(checks.clone()), expected);
    let valid: Vec<SignatureCheck> = checks
        .iter()
        .zip(&cases)
        .filter(|(_, c)| c.valid)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(verify_batch(valid.clone()), vec![true; valid.len()]);
    // Through the verifier a did:key builds.
    for c in &cases {
        let did = proto::principal::ed25519_did_key(&c.key);
        let verifier = Verifier::parse(&did).unwrap();
        assert_eq!(
            verifier.verify(&c.message, &Signature::ed25519(c.signature)),
            c.valid,
            "{}",
            c.name
        );
    }

    // The JS verifier.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    let doc: Vec<_> = cases
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "key": hex::encode(c.key),
                "message": hex::encode(&c.message),
                "signature": hex::encode(c.signature),
            })
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let run = run_node("ed25519-verdicts.mjs", [file.as_os_str()]);
    run.expect_code(0);
    let js: Vec<bool> = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        js,
        expected,
        "JS verdicts, in case order: {:?}",
        names(&cases)
    );
}

fn names(cases: &[Case]) -> Vec<&'static str> {
    cases.iter().map(|c| c.name).collect()
}
