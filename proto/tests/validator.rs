//! Validator behaviour on chains built with our own signer: every failure kind, chain depths
//! 1–3, derive rules, attestations, revocation, limits, and the service-level checks.
//!
//! Tests named `js_*` reproduce scenarios run through `@ucanto/validator` 10.0.1 (same seeds,
//! same fields, so the same UCAN bytes and CIDs); their expected messages are what JS printed.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use proto::Cid;
use proto::Ipld;
use proto::principal::{Ed25519Signer, Verifier};
use proto::ucan::{Capability, Delegation, Ucan};
use proto::validator::{
    BoundedSignatureCache, CapabilityParser, Derives, Descriptor, Failure, InvalidProof, Schema,
    SignatureCache, SignatureKey, ValidationError, Validator, check_audience, parsers,
    single_capability,
};

const NOW: i64 = 1_800_000_000;
const EXP: i64 = 2_000_000_000;
const EVENT: &str = "bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq";

fn signer(seed: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed(&[seed; 32])
}

fn clock() -> Ed25519Signer {
    signer(1)
}
fn service() -> Ed25519Signer {
    signer(2)
}
fn alice() -> Ed25519Signer {
    signer(3)
}
fn bob() -> Ed25519Signer {
    signer(4)
}
fn carol() -> Ed25519Signer {
    signer(5)
}
fn mallory() -> Ed25519Signer {
    signer(6)
}

fn cid(s: &str) -> Cid {
    Cid::try_from(s).unwrap()
}

fn cap(can: &str, with: &str) -> Capability {
    Capability::new(can, with)
}

fn cap_nb(can: &str, with: &str, nb: &[(&str, Ipld)]) -> Capability {
    let nb: BTreeMap<String, Ipld> = nb.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Capability::new(can, with).with_nb(nb)
}

fn issue(
    issuer: &Ed25519Signer,
    audience: &str,
    caps: Vec<Capability>,
    proofs: &[&Delegation],
    exp: Option<i64>,
    nbf: Option<i64>,
) -> Delegation {
    let mut b = Ucan::builder(issuer, audience);
    for c in caps {
        b = b.capability(c);
    }
    if let Some(e) = exp {
        b = b.expiration(e);
    }
    if let Some(n) = nbf {
        b = b.not_before(n);
    }
    let proofs: Vec<Delegation> = proofs.iter().map(|d| (*d).clone()).collect();
    Delegation::issue(b, &proofs, &[]).unwrap()
}

fn delegate(
    issuer: &Ed25519Signer,
    audience: &str,
    caps: Vec<Capability>,
    proofs: &[&Delegation],
) -> Delegation {
    issue(issuer, audience, caps, proofs, Some(EXP), None)
}

/// The validator most tests use. They all share one signature cache (and run on several
/// threads), so every scenario below also checks that remembered signatures never change a
/// verdict or a message; `validator_interop.rs` runs the JS scenarios without a cache.
fn validator() -> Validator {
    static SHARED: LazyLock<Arc<BoundedSignatureCache>> =
        LazyLock::new(|| Arc::new(BoundedSignatureCache::new(1024)));
    Validator::new(service().verifier()).with_signature_cache(SHARED.clone())
}

fn access(
    v: &Validator,
    inv: &Delegation,
    parser: &CapabilityParser,
) -> Result<proto::validator::Authorization, (String, String)> {
    v.access(inv, parser, NOW)
        .map_err(|e| (e.name().to_string(), e.message()))
}

fn unauthorized(v: &Validator, inv: &Delegation, parser: &CapabilityParser) -> String {
    match access(v, inv, parser) {
        Ok(_) => panic!("unexpectedly authorized"),
        Err((name, message)) => {
            assert_eq!(name, "Unauthorized");
            message
        }
    }
}

/// A copy of `d` whose block store lacks `missing`.
fn without_block(d: &Delegation, missing: &Cid) -> Delegation {
    let store: std::collections::HashMap<_, _> = d
        .blocks()
        .iter()
        .filter(|(c, _)| *c != missing)
        .map(|(c, b)| (*c, b.clone()))
        .collect();
    Delegation::new(d.ucan().clone(), Arc::new(store))
}

// ----- parity with JS on scenarios the fixtures do not cover -----

#[test]
fn js_link_nb_imposed_by_a_proof_never_derives() {
    // ucanto's default derive rule compares nb values with `!=`: two equal CIDs decoded from
    // different blocks are different objects, so the constraint is always "violated".
    let c = clock();
    let event = Ipld::Link(cid(EVENT));
    let prf = delegate(
        &c,
        alice().did(),
        vec![cap_nb(
            "clock/advance",
            c.did(),
            &[("event", event.clone())],
        )],
        &[],
    );
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap_nb("clock/advance", c.did(), &[("event", event)])],
        &[&prf],
    );
    assert_eq!(
        inv.cid().to_string(),
        "bafyreiduix4lauwoq7avisebcbkvqbh2hf4qgusclhggdz4etuqvk5umci"
    );
    let msg = unauthorized(&validator(), &inv, &parsers::clock_advance());
    assert_eq!(
        msg,
        "Claim {\"can\":\"clock/advance\"} is not authorized\n  - Capability {\"can\":\"clock/advance\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\",\"nb\":{\"event\":{\"/\":\"bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq\"}}} is not authorized because:\n    - Capability can not be (self) issued by 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2'\n    - Can not derive {\"can\":\"clock/advance\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\",\"nb\":{\"event\":{\"/\":\"bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq\"}}} from delegated capabilities:\n      - Constraint violation: event: bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq violates bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq"
    );
    // Without the constraint in the proof, the claimed event is inherited and derives.
    let open = delegate(&c, alice().did(), vec![cap("clock/advance", c.did())], &[]);
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap_nb(
            "clock/advance",
            c.did(),
            &[("event", Ipld::Link(cid(EVENT)))],
        )],
        &[&open],
    );
    assert!(access(&validator(), &inv, &parsers::clock_advance()).is_ok());
}

#[test]
fn js_malformed_invocation_capability() {
    let c = clock();
    let inv = delegate(
        &c,
        service().did(),
        vec![cap_nb(
            "clock/advance",
            c.did(),
            &[("event", Ipld::String("not a link".into()))],
        )],
        &[],
    );
    assert_eq!(
        inv.cid().to_string(),
        "bafyreicy2q6xpkbcs25mchfiif2z2ah3whcv3wz7o43bmy7yj2kvz7typ4"
    );
    assert_eq!(
        unauthorized(&validator(), &inv, &parsers::clock_advance()),
        "Claim {\"can\":\"clock/advance\"} is not authorized\n  - Can not derive [object Object] from delegated capabilities:\n    - Encountered malformed 'clock/advance' capability: {\"nb\":{\"event\":\"not a link\"},\"can\":\"clock/advance\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\"}\n      - Object contains invalid field \"event\":\n        - Expected link to be a CID instead of not a link"
    );
}

#[test]
fn js_malformed_proof_capability() {
    let c = clock();
    let v0 = cid("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n");
    let prf = delegate(
        &c,
        alice().did(),
        vec![cap_nb(
            "clock/advance",
            c.did(),
            &[("event", Ipld::Link(v0))],
        )],
        &[],
    );
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap_nb(
            "clock/advance",
            c.did(),
            &[("event", Ipld::Link(cid(EVENT)))],
        )],
        &[&prf],
    );
    assert_eq!(
        inv.cid().to_string(),
        "bafyreicx7x2b7arzz75v2xlpb7yvvuwy4xlfco6sx5f67kb3dlylucoqhe"
    );
    assert_eq!(
        unauthorized(&validator(), &inv, &parsers::clock_advance()),
        "Claim {\"can\":\"clock/advance\"} is not authorized\n  - Capability {\"can\":\"clock/advance\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\",\"nb\":{\"event\":{\"/\":\"bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq\"}}} is not authorized because:\n    - Capability can not be (self) issued by 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2'\n    - Can not derive {\"can\":\"clock/advance\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\",\"nb\":{\"event\":{\"/\":\"bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq\"}}} from delegated capabilities:\n      - Encountered malformed 'clock/advance' capability: {\"nb\":{\"event\":{\"/\":\"QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n\"}},\"can\":\"clock/advance\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\"}\n        - Object contains invalid field \"event\":\n          - Expected link to be CID version 1 instead of 0"
    );
}

/// clock → did:mailto (clock/*) → alice (clock/head), plus an attestation.
fn mailto_chain(attester: &Ed25519Signer, attested: Option<&Cid>) -> (Delegation, Delegation) {
    let c = clock();
    let mailto = signer(12).with_did("did:mailto:example.com:alice").unwrap();
    let m = delegate(&c, mailto.did(), vec![cap("clock/*", c.did())], &[]);
    let ma = delegate(
        &mailto,
        alice().did(),
        vec![cap("clock/head", c.did())],
        &[&m],
    );
    let target = attested.copied().unwrap_or(*ma.cid());
    let att = delegate(
        attester,
        alice().did(),
        vec![cap_nb(
            "ucan/attest",
            service().did(),
            &[("proof", Ipld::Link(target))],
        )],
        &[],
    );
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&ma, &att],
    );
    (inv, m)
}

#[test]
fn js_session_escalation() {
    let (inv, _) = mailto_chain(&mallory(), None);
    assert_eq!(
        inv.cid().to_string(),
        "bafyreiciprlykclgddhfng5d5lhi5nljcr4rvdvgbhj27yjgz72ydjkspi"
    );
    assert_eq!(
        unauthorized(&validator(), &inv, &parsers::clock_head()),
        "Claim {\"can\":\"clock/head\"} is not authorized\n  - Capability {\"can\":\"clock/head\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\"} is not authorized because:\n    - Capability can not be (self) issued by 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2'\n    - Capability can not be derived from prf:bafyreih3b4c7omw22j7gfmsftvq6vlu24bun4wriajywn2qdxxodnrg76q because:\n      - Delegation bafyreih3b4c7omw22j7gfmsftvq6vlu24bun4wriajywn2qdxxodnrg76q issued by did:mailto:example.com:alice has an invalid session\n        - Claim {\"can\":\"ucan/attest\"} is not authorized\n          - Capability {\"can\":\"ucan/attest\",\"with\":\"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH\",\"nb\":{\"proof\":{\"/\":\"bafyreih3b4c7omw22j7gfmsftvq6vlu24bun4wriajywn2qdxxodnrg76q\"}}} is not authorized because:\n            - Capability can not be (self) issued by 'did:key:z6Mkon22vwz9JoNpGDxCrGZRgeNFTdRTwXYYN3fvAhA3K19x'\n            - Delegated capability not found\n    - Encountered unknown capabilities\n      - {\"nb\":{\"proof\":{\"/\":\"bafyreih3b4c7omw22j7gfmsftvq6vlu24bun4wriajywn2qdxxodnrg76q\"}},\"can\":\"ucan/attest\",\"with\":\"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH\"}"
    );
}

#[test]
fn js_session_attested_by_authority() {
    let (inv, _) = mailto_chain(&service(), None);
    assert_eq!(
        inv.cid().to_string(),
        "bafyreiggbya7r722xgow255djxat4bngdmdt3zyl3poi5umceg34iueaei"
    );
    let auth = access(&validator(), &inv, &parsers::clock_head()).unwrap();
    assert_eq!(auth.capability().can(), "clock/head");
    assert_eq!(
        auth.delegations().len(),
        3,
        "invocation → mailto link → root"
    );
}

#[test]
fn js_session_attesting_another_delegation() {
    let (_, m) = mailto_chain(&service(), None);
    let (inv, _) = mailto_chain(&service(), Some(m.cid()));
    assert_eq!(
        inv.cid().to_string(),
        "bafyreiepqildl2aluycabbcp6fahdkootcoezuxng4ue5jsxad26fagmoy"
    );
    assert_eq!(
        unauthorized(&validator(), &inv, &parsers::clock_head()),
        "Claim {\"can\":\"clock/head\"} is not authorized\n  - Capability {\"can\":\"clock/head\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\"} is not authorized because:\n    - Capability can not be (self) issued by 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2'\n    - Capability can not be derived from prf:bafyreih3b4c7omw22j7gfmsftvq6vlu24bun4wriajywn2qdxxodnrg76q because:\n      - Unable to resolve 'did:mailto:example.com:alice' key\n    - Encountered unknown capabilities\n      - {\"nb\":{\"proof\":{\"/\":\"bafyreifas7j6uidick6zprxvddznsx7fwv4r2lmj5f3yanep2kajfnl4dy\"}},\"can\":\"ucan/attest\",\"with\":\"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH\"}"
    );
}

#[test]
fn js_revoked_proof() {
    let c = clock();
    let prf = delegate(&c, alice().did(), vec![cap("clock/head", c.did())], &[]);
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&prf],
    );
    assert_eq!(
        inv.cid().to_string(),
        "bafyreihzcynwb3iuaaty4h6nixyhrap4k222neq7f2dxwttrkbyvxsbmoq"
    );
    let revoked = *prf.cid();
    let v = validator().with_revocations(move |cid: &Cid, _: &[String]| *cid == revoked);
    assert_eq!(
        unauthorized(&v, &inv, &parsers::clock_head()),
        "Claim {\"can\":\"clock/head\"} is not authorized\n  - Proof bafyreiejlqw3qyio6bc7bmkxu23f5qhif2k75tt43jgh52gjfyhezzbfp4 has been revoked"
    );
}

#[test]
fn js_did_prefix_wildcard_is_not_self_issued() {
    let c = clock();
    let prf = delegate(&c, alice().did(), vec![cap("clock/*", "did:*")], &[]);
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&prf],
    );
    assert_eq!(
        inv.cid().to_string(),
        "bafyreig6vhtua75zcvng6w2oggrfwpedoaufgo3ot2hkajojvvfcyu3h4q"
    );
    assert_eq!(
        unauthorized(&validator(), &inv, &parsers::clock_head()),
        "Claim {\"can\":\"clock/head\"} is not authorized\n  - Capability {\"can\":\"clock/head\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\"} is not authorized because:\n    - Capability can not be (self) issued by 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2'\n    - Capability {\"can\":\"clock/head\",\"with\":\"did:*\"} is not authorized because:\n      - Capability can not be (self) issued by 'did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX'\n      - Delegated capability not found"
    );
}

#[test]
fn js_string_nb_constraint() {
    let c = clock();
    let iss = |d: &str| ("iss", Ipld::String(d.to_string()));
    let prf = delegate(
        &c,
        alice().did(),
        vec![cap_nb("clock/follow", c.did(), &[iss(mallory().did())])],
        &[],
    );
    let bad = delegate(
        &alice(),
        service().did(),
        vec![cap_nb("clock/follow", c.did(), &[iss(alice().did())])],
        &[&prf],
    );
    assert_eq!(
        bad.cid().to_string(),
        "bafyreidm5pxf6tcqd5ewdvsypmu4o76dskoacljubjkrmjybzvol7m3liq"
    );
    assert_eq!(
        unauthorized(&validator(), &bad, &parsers::clock_follow()),
        "Claim {\"can\":\"clock/follow\"} is not authorized\n  - Capability {\"can\":\"clock/follow\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\",\"nb\":{\"iss\":\"did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2\"}} is not authorized because:\n    - Capability can not be (self) issued by 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2'\n    - Can not derive {\"can\":\"clock/follow\",\"with\":\"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\",\"nb\":{\"iss\":\"did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2\"}} from delegated capabilities:\n      - Constraint violation: iss: did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2 violates did:key:z6Mkon22vwz9JoNpGDxCrGZRgeNFTdRTwXYYN3fvAhA3K19x"
    );
    let good = delegate(
        &alice(),
        service().did(),
        vec![cap_nb("clock/follow", c.did(), &[iss(mallory().did())])],
        &[&prf],
    );
    assert_eq!(
        good.cid().to_string(),
        "bafyreigx2tnpvjqb2hspcalsg427zk4v2hny5bgysgbane542yktj7fptq"
    );
    assert!(access(&validator(), &good, &parsers::clock_follow()).is_ok());
}

// ----- chains -----

#[test]
fn chains_of_depth_0_to_3_authorize() {
    let (c, a, b, cc) = (clock(), alice(), bob(), carol());
    let head = parsers::clock_head();
    let v = validator();

    let self_issued = delegate(&c, service().did(), vec![cap("clock/head", c.did())], &[]);
    let auth = access(&v, &self_issued, &head).unwrap();
    assert_eq!(auth.delegations(), vec![*self_issued.cid()]);
    assert!(auth.proofs().is_empty());

    let d1 = delegate(&c, a.did(), vec![cap("clock/head", c.did())], &[]);
    let inv1 = delegate(
        &a,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&d1],
    );
    let auth = access(&v, &inv1, &head).unwrap();
    assert_eq!(auth.delegations(), vec![*inv1.cid(), *d1.cid()]);
    assert_eq!(auth.proofs()[0].issuer(), c.did());

    let d1 = delegate(&c, a.did(), vec![cap("*", c.did())], &[]);
    let d2 = delegate(&a, b.did(), vec![cap("clock/*", c.did())], &[&d1]);
    let inv2 = delegate(
        &b,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&d2],
    );
    let auth = access(&v, &inv2, &head).unwrap();
    assert_eq!(auth.delegations(), vec![*inv2.cid(), *d2.cid(), *d1.cid()]);

    let d3 = delegate(&b, cc.did(), vec![cap("clock/head", c.did())], &[&d2]);
    let inv3 = delegate(
        &cc,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&d3],
    );
    let auth = access(&v, &inv3, &head).unwrap();
    assert_eq!(auth.delegations().len(), 4);
    assert_eq!(auth.capability().with(), c.did());
    let scopes = auth.revocation_scopes();
    assert_eq!(scopes.len(), 4);
    // The root delegation may be revoked by its issuer and audience only; the invocation by
    // everyone upstream.
    assert_eq!(scopes[3].1, vec![c.did().to_string(), a.did().to_string()]);
    for who in [c.did(), a.did(), b.did(), cc.did(), service().did()] {
        assert!(scopes[0].1.iter().any(|s| s == who), "{who}");
    }
}

#[test]
fn ucan_star_redelegates_whatever_the_issuer_holds() {
    let (c, a, b) = (clock(), alice(), bob());
    let d1 = delegate(&c, a.did(), vec![cap("clock/*", c.did())], &[]);
    let d2 = delegate(&a, b.did(), vec![cap("clock/*", "ucan:*")], &[&d1]);
    let inv = delegate(
        &b,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&d2],
    );
    assert!(access(&validator(), &inv, &parsers::clock_head()).is_ok());
    // ...but only what the issuer holds: a root at another clock does not authorize this one.
    let other = signer(11);
    let d1 = delegate(&other, a.did(), vec![cap("clock/*", other.did())], &[]);
    let d2 = delegate(&a, b.did(), vec![cap("clock/*", "ucan:*")], &[&d1]);
    let inv = delegate(
        &b,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&d2],
    );
    assert!(access(&validator(), &inv, &parsers::clock_head()).is_err());
}

#[test]
fn ability_patterns() {
    let (c, a) = (clock(), alice());
    let try_with = |can: &str| {
        let d = delegate(&c, a.did(), vec![cap(can, c.did())], &[]);
        let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
        access(&validator(), &inv, &parsers::clock_head()).is_ok()
    };
    assert!(try_with("*"));
    assert!(try_with("clock/*"));
    assert!(try_with("clock/head"));
    assert!(!try_with("clock/advance"));
    assert!(!try_with("clock/he*"));
    // ("clock/" and "clo*" are not abilities dag-ucan can encode.)
    assert!(!try_with("store/*"));
}

#[test]
fn unknown_capabilities_are_listed() {
    let (c, a) = (clock(), alice());
    let d = delegate(&c, a.did(), vec![cap("store/add", c.did())], &[]);
    let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
    let msg = unauthorized(&validator(), &inv, &parsers::clock_head());
    assert!(
        msg.ends_with(&format!(
            "    - Delegated capability not found\n    - Encountered unknown capabilities\n      - {{\"can\":\"store/add\",\"with\":\"{}\"}}",
            c.did()
        )),
        "{msg}"
    );
}

// ----- per-delegation failures -----

#[test]
fn time_bounds_are_inclusive_as_in_ucanto() {
    let c = clock();
    let head = parsers::clock_head();
    let at = |exp: Option<i64>, nbf: Option<i64>| {
        let inv = issue(
            &c,
            service().did(),
            vec![cap("clock/head", c.did())],
            &[],
            exp,
            nbf,
        );
        (inv.clone(), access(&validator(), &inv, &head))
    };
    let (inv, r) = at(Some(NOW), None);
    assert_eq!(
        r.unwrap_err().1,
        format!(
            "Claim {{\"can\":\"clock/head\"}} is not authorized\n  - Proof {} has expired on Fri Jan 15 2027 08:00:00 GMT+0000 (Coordinated Universal Time)",
            inv.cid()
        )
    );
    assert!(at(Some(NOW + 1), None).1.is_ok());
    assert!(at(None, None).1.is_ok(), "exp null never expires");
    let (inv, r) = at(Some(EXP), Some(NOW));
    assert_eq!(
        r.unwrap_err().1,
        format!(
            "Claim {{\"can\":\"clock/head\"}} is not authorized\n  - Proof {} is not valid before Fri Jan 15 2027 08:00:00 GMT+0000 (Coordinated Universal Time)",
            inv.cid()
        )
    );
    assert!(at(Some(EXP), Some(NOW - 1)).1.is_ok());
}

#[test]
fn expired_and_not_yet_valid_proofs() {
    let (c, a) = (clock(), alice());
    for (exp, nbf, needle) in [
        (
            Some(1_000_000_000),
            None,
            "has expired on Sun Sep 09 2001 01:46:40 GMT+0000 (Coordinated Universal Time)",
        ),
        (
            Some(EXP),
            Some(1_990_000_000),
            "is not valid before Sat Jan 22 2033 09:46:40 GMT+0000 (Coordinated Universal Time)",
        ),
    ] {
        let d = issue(&c, a.did(), vec![cap("clock/head", c.did())], &[], exp, nbf);
        let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
        let msg = unauthorized(&validator(), &inv, &parsers::clock_head());
        assert!(
            msg.ends_with(&format!(
                "    - Capability can not be derived from prf:{0} because:\n      - Proof {0} {needle}",
                d.cid()
            )),
            "{msg}"
        );
    }
}

#[test]
fn forged_issuer_signature() {
    let (c, a) = (clock(), alice());
    // Mallory signs a delegation that names the clock as its issuer.
    let forger = mallory().with_did(c.did()).unwrap();
    let d = delegate(&forger, a.did(), vec![cap("clock/head", c.did())], &[]);
    let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
    let msg = unauthorized(&validator(), &inv, &parsers::clock_head());
    assert!(
        msg.ends_with(&format!(
            "      - Proof {} does not has a valid signature from {}",
            d.cid(),
            c.did()
        )),
        "{msg}"
    );
}

#[test]
fn authority_did_web_signatures() {
    let svc_web = service().with_did("did:web:clock.example").unwrap();
    let v = Validator::new(service().verifier().with_did("did:web:clock.example"));
    let c = clock();
    // The authority (a did:web) delegates; its signature is checked with its key.
    let root = delegate(&c, svc_web.did(), vec![cap("clock/head", c.did())], &[]);
    let d = delegate(
        &svc_web,
        alice().did(),
        vec![cap("clock/head", c.did())],
        &[&root],
    );
    let inv = delegate(
        &alice(),
        svc_web.did(),
        vec![cap("clock/head", c.did())],
        &[&d],
    );
    assert!(v.access(&inv, &parsers::clock_head(), NOW).is_ok());

    // Signed by another key: the two-line message naming the expected key.
    let forged = mallory().with_did("did:web:clock.example").unwrap();
    let d = delegate(
        &forged,
        alice().did(),
        vec![cap("clock/head", c.did())],
        &[&root],
    );
    let inv = delegate(
        &alice(),
        svc_web.did(),
        vec![cap("clock/head", c.did())],
        &[&d],
    );
    let msg = unauthorized(&v, &inv, &parsers::clock_head());
    assert!(
        msg.contains(&format!(
            "      - Proof {} issued by did:web:clock.example does not has a valid signature from {}\n        ℹ️ Probably issuer signed with a different key, which got rotated, invalidating delegations that were issued with prior keys",
            d.cid(),
            service().did()
        )),
        "{msg}"
    );
}

#[test]
fn missing_and_misaligned_proofs() {
    let (c, a, b) = (clock(), alice(), bob());
    let d = delegate(&c, a.did(), vec![cap("clock/head", c.did())], &[]);
    let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
    let msg = unauthorized(
        &validator(),
        &without_block(&inv, d.cid()),
        &parsers::clock_head(),
    );
    assert!(
        msg.ends_with(&format!(
            "    - Capability can not be derived from prf:{0} because:\n      - Linked proof '{0}' is not included and could not be resolved",
            d.cid()
        )),
        "{msg}"
    );

    let to_bob = delegate(&c, b.did(), vec![cap("clock/head", c.did())], &[]);
    let inv = delegate(
        &a,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&to_bob],
    );
    let msg = unauthorized(&validator(), &inv, &parsers::clock_head());
    assert!(
        msg.ends_with(&format!(
            "      - Delegation audience is '{}' instead of '{}'",
            b.did(),
            a.did()
        )),
        "{msg}"
    );
}

#[test]
fn depth_limit_reports_the_proof_as_unavailable() {
    let (c, a, b, cc) = (clock(), alice(), bob(), carol());
    let d1 = delegate(&c, a.did(), vec![cap("clock/*", c.did())], &[]);
    let d2 = delegate(&a, b.did(), vec![cap("clock/*", c.did())], &[&d1]);
    let d3 = delegate(&b, cc.did(), vec![cap("clock/head", c.did())], &[&d2]);
    let inv = delegate(
        &cc,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&d3],
    );
    let head = parsers::clock_head();
    assert!(
        validator()
            .with_max_depth(3)
            .access(&inv, &head, NOW)
            .is_ok()
    );
    let err = validator()
        .with_max_depth(2)
        .access(&inv, &head, NOW)
        .unwrap_err();
    assert!(
        err.message().contains(&format!(
            "- Linked proof '{}' is not included and could not be resolved\n",
            d1.cid()
        )) && err
            .message()
            .contains("- Proof resolution failed with: proof chain exceeds the maximum depth of 2"),
        "{}",
        err.message()
    );
}

#[test]
fn validation_budget_bounds_work() {
    let c = clock();
    let a = alice();
    // Many sibling proofs, each valid but for another clock.
    let proofs: Vec<Delegation> = (20..60u8)
        .map(|s| {
            let other = signer(s);
            delegate(&other, a.did(), vec![cap("clock/head", other.did())], &[])
        })
        .collect();
    let refs: Vec<&Delegation> = proofs.iter().collect();
    let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &refs);
    let err = validator()
        .with_max_validations(5)
        .access(&inv, &parsers::clock_head(), NOW)
        .unwrap_err();
    assert!(
        err.message()
            .contains("Proof resolution failed with: validation budget exhausted"),
        "{}",
        err.message()
    );
}

#[test]
fn revocation_hook_sees_the_chain_scope() {
    let (c, a) = (clock(), alice());
    let d = delegate(&c, a.did(), vec![cap("clock/head", c.did())], &[]);
    let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
    let root = *d.cid();
    let clock_did = c.did().to_string();
    // Revoked by the clock key (entitled): rejected.
    let v = validator().with_revocations(move |cid: &Cid, revokers: &[String]| {
        *cid == root && revokers.contains(&clock_did)
    });
    assert!(v.access(&inv, &parsers::clock_head(), NOW).is_err());
    // Revoked by someone outside the chain: the hook decides it does not count.
    let outsider = mallory().did().to_string();
    let v = validator()
        .with_revocations(move |_: &Cid, revokers: &[String]| revokers.contains(&outsider));
    assert!(v.access(&inv, &parsers::clock_head(), NOW).is_ok());
}

// ----- attestations and authorities -----

#[test]
fn trusted_authority_attestations_and_error_of_last_attempt() {
    let c = clock();
    let upstream = signer(9);
    let upstream_did = "did:web:up.storacha.test";
    let attester = upstream.clone().with_did(upstream_did).unwrap();
    let mailto = signer(12).with_did("did:mailto:example.com:alice").unwrap();
    let m = delegate(&c, mailto.did(), vec![cap("clock/*", c.did())], &[]);
    let ma = delegate(
        &mailto,
        alice().did(),
        vec![cap("clock/head", c.did())],
        &[&m],
    );
    let att = delegate(
        &attester,
        alice().did(),
        vec![cap_nb(
            "ucan/attest",
            upstream_did,
            &[("proof", Ipld::Link(*ma.cid()))],
        )],
        &[],
    );
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&ma, &att],
    );
    let head = parsers::clock_head();
    // Only the service's own authority: the upstream attestation does not count.
    let msg = unauthorized(&validator(), &inv, &head);
    assert!(
        msg.contains("Unable to resolve 'did:web:up.storacha.test' key"),
        "{msg}"
    );
    // Trusting the upstream authority (w3clock's `authorities`).
    let v = validator().with_trusted_authority(upstream.verifier().with_did(upstream_did));
    assert!(v.access(&inv, &head, NOW).is_ok());
}

#[test]
fn local_proofs_let_the_authority_delegate_attestation() {
    let c = clock();
    let helper = signer(13);
    let mailto = signer(12).with_did("did:mailto:example.com:alice").unwrap();
    let m = delegate(&c, mailto.did(), vec![cap("clock/*", c.did())], &[]);
    let ma = delegate(
        &mailto,
        alice().did(),
        vec![cap("clock/head", c.did())],
        &[&m],
    );
    // The helper attests with its own DID as the resource.
    let att = delegate(
        &helper,
        alice().did(),
        vec![cap_nb(
            "ucan/attest",
            helper.did(),
            &[("proof", Ipld::Link(*ma.cid()))],
        )],
        &[],
    );
    let inv = delegate(
        &alice(),
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&ma, &att],
    );
    let head = parsers::clock_head();
    assert!(validator().access(&inv, &head, NOW).is_err());
    let grant = delegate(
        &service(),
        helper.did(),
        vec![cap("ucan/attest", service().did())],
        &[],
    );
    let v = validator().with_local_proofs(vec![grant]);
    assert!(v.access(&inv, &head, NOW).is_ok());
}

// ----- derive rules -----

#[test]
fn space_info_derivation() {
    let space = signer(7);
    let a = alice();
    let svc = service();
    let info = parsers::space_info();
    let via = |can: &str| {
        let d = delegate(&space, a.did(), vec![cap(can, space.did())], &[]);
        let inv = delegate(&a, svc.did(), vec![cap("space/info", space.did())], &[&d]);
        access(&validator(), &inv, &info)
    };
    for ok in ["space/info", "space/*", "*", "upload/list", "store/list"] {
        assert!(via(ok).is_ok(), "{ok}");
    }
    // upload/add needs its nb.root to parse: a bare upload/add does not derive space/info.
    assert!(via("upload/add").is_err());
    let err = via("space/blob/add").unwrap_err().1;
    assert!(err.contains("Encountered unknown capabilities"), "{err}");
    // A derived proof for another space: equalWith's message.
    let other = signer(14);
    let d = delegate(&space, a.did(), vec![cap("upload/list", other.did())], &[]);
    let inv = delegate(&a, svc.did(), vec![cap("space/info", space.did())], &[&d]);
    let msg = unauthorized(&validator(), &inv, &info);
    assert!(
        msg.contains(&format!(
            "- Constraint violation: Can not derive space/info with {} from {}",
            space.did(),
            other.did()
        )),
        "{msg}"
    );
}

#[test]
fn blob_size_may_shrink_not_grow() {
    let space = signer(7);
    let a = alice();
    let blob = |digest: &[u8], size: i128| {
        let mut m = BTreeMap::new();
        m.insert("digest".to_string(), Ipld::Bytes(digest.to_vec()));
        m.insert("size".to_string(), Ipld::Integer(size));
        ("blob", Ipld::Map(m))
    };
    let d = delegate(
        &space,
        a.did(),
        vec![cap_nb(
            "space/blob/add",
            space.did(),
            &[blob(b"\x12\x20ab", 100)],
        )],
        &[],
    );
    let add = parsers::space_blob_add();
    let inv = |size| {
        delegate(
            &a,
            service().did(),
            vec![cap_nb(
                "space/blob/add",
                space.did(),
                &[blob(b"\x12\x20ab", size)],
            )],
            &[&d],
        )
    };
    assert!(access(&validator(), &inv(50), &add).is_ok());
    assert!(access(&validator(), &inv(100), &add).is_ok());
    let msg = unauthorized(&validator(), &inv(200), &add);
    assert!(
        msg.ends_with("- Constraint violation: Size constraint violation: 200 > 100"),
        "{msg}"
    );
}

#[test]
fn custom_derive_rules_plug_in() {
    let (c, a) = (clock(), alice());
    let capped: CapabilityParser = Descriptor::new("clock/quota", Schema::did_uri())
        .nb("limit", Schema::Integer)
        .derives(Derives::custom(|claimed, delegated| {
            let n = |p: &proto::validator::ParsedCapability| match p.nb_field("limit") {
                Some(Ipld::Integer(i)) => i,
                _ => 0,
            };
            if n(claimed) <= n(delegated) {
                Ok(())
            } else {
                Err(format!("limit {} exceeds {}", n(claimed), n(delegated)))
            }
        }))
        .into();
    let d = delegate(
        &c,
        a.did(),
        vec![cap_nb(
            "clock/quota",
            c.did(),
            &[("limit", Ipld::Integer(10))],
        )],
        &[],
    );
    let inv = |n| {
        delegate(
            &a,
            service().did(),
            vec![cap_nb(
                "clock/quota",
                c.did(),
                &[("limit", Ipld::Integer(n))],
            )],
            &[&d],
        )
    };
    assert!(access(&validator(), &inv(5), &capped).is_ok());
    let msg = unauthorized(&validator(), &inv(11), &capped);
    assert!(
        msg.ends_with("- Constraint violation: limit 11 exceeds 10"),
        "{msg}"
    );
    assert_eq!(capped.to_string(), "{\"can\":\"clock/quota\"}");
}

// ----- service-level checks and wire forms -----

#[test]
fn service_checks_run_in_ucanto_order() {
    let c = clock();
    let svc = service();
    let route = |can: &str| match can {
        "clock/head" => Some(parsers::clock_head()),
        _ => None,
    };
    let v = validator();

    let two = delegate(
        &c,
        svc.did(),
        vec![cap("clock/head", c.did()), cap("clock/advance", c.did())],
        &[],
    );
    let err = v.check(&two, svc.did(), NOW, route).unwrap_err();
    assert!(matches!(err, ValidationError::InvocationCapability(_)));
    assert_eq!(
        err.message(),
        "Invocation is required to have a single capability."
    );
    let wire = err.to_wire();
    let Ipld::Map(m) = &wire else { panic!() };
    assert_eq!(m["error"], Ipld::Bool(true));
    assert!(matches!(&m["capabilities"], Ipld::List(l) if l.len() == 2));
    assert!(!m.contains_key("stack"));
    assert!(single_capability(&two).is_err());

    let follow = delegate(&c, svc.did(), vec![cap("clock/follow", c.did())], &[]);
    let err = v
        .check(&follow, "did:key:elsewhere", NOW, route)
        .unwrap_err();
    assert_eq!(
        err.name(),
        "HandlerNotFound",
        "handler lookup precedes the audience check"
    );
    assert_eq!(
        err.message(),
        "service does not implement {can: \"clock/follow\"} handler"
    );
    let Ipld::Map(m) = err.to_wire() else {
        panic!()
    };
    let Ipld::Map(capability) = &m["capability"] else {
        panic!()
    };
    assert_eq!(capability["can"], Ipld::String("clock/follow".into()));
    assert_eq!(capability["with"], Ipld::String(c.did().into()));

    let elsewhere = delegate(&c, mallory().did(), vec![cap("clock/head", c.did())], &[]);
    let err = v.check(&elsewhere, svc.did(), NOW, route).unwrap_err();
    assert_eq!(err.name(), "InvalidAudience");
    assert_eq!(
        err.message(),
        format!(
            "Expected literal \"{}\" instead got \"{}\"",
            svc.did(),
            mallory().did()
        )
    );
    assert!(check_audience(&elsewhere, mallory().did()).is_ok());

    let by_mallory = delegate(&mallory(), svc.did(), vec![cap("clock/head", c.did())], &[]);
    let err = v.check(&by_mallory, svc.did(), NOW, route).unwrap_err();
    assert_eq!(err.name(), "Unauthorized");
    let Ipld::Map(m) = err.to_wire() else {
        panic!()
    };
    assert_eq!(
        m.keys().cloned().collect::<HashSet<_>>(),
        ["name", "message"].iter().map(|s| s.to_string()).collect()
    );

    let ok = delegate(&c, svc.did(), vec![cap("clock/head", c.did())], &[]);
    assert!(v.check(&ok, svc.did(), NOW, route).is_ok());
}

#[test]
fn invalid_proof_wire_fields() {
    let c = clock();
    let inv = issue(
        &c,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[],
        Some(1_000_000_000),
        None,
    );
    let err = validator()
        .access(&inv, &parsers::clock_head(), NOW)
        .unwrap_err();
    let InvalidProof::Expired(expired) = &err.invalid_proofs[0] else {
        panic!("{err:?}")
    };
    let Ipld::Map(m) = expired.to_wire() else {
        panic!()
    };
    assert_eq!(m["name"], Ipld::String("Expired".into()));
    assert_eq!(m["expiredAt"], Ipld::Integer(1_000_000_000));
    // Display is the Rust-style message.
    assert!(expired.to_string().starts_with("delegation "));
    let _ = Verifier::parse(c.did()).unwrap();
}

// ----- the signature cache shared across calls -----

/// A [`BoundedSignatureCache`] that counts what the validator asks of it.
#[derive(Default)]
struct Counting {
    inner: BoundedSignatureCache,
    hits: AtomicUsize,
    misses: AtomicUsize,
    inserts: AtomicUsize,
}

impl SignatureCache for Counting {
    fn contains(&self, key: &SignatureKey) -> bool {
        let hit = self.inner.contains(key);
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }
    fn insert(&self, key: SignatureKey) {
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.inner.insert(key);
    }
}

impl Counting {
    fn counts(&self) -> [usize; 3] {
        [&self.hits, &self.misses, &self.inserts].map(|c| c.load(Ordering::Relaxed))
    }
}

fn counting_validator() -> (Validator, Arc<Counting>) {
    let cache = Arc::new(Counting::default());
    (
        Validator::new(service().verifier()).with_signature_cache(cache.clone()),
        cache,
    )
}

/// clock → alice → bob, and bob's `clock/head` invocation (a fresh one per `nonce`).
fn two_link_chain(nonce: &str) -> (Delegation, Delegation, Delegation) {
    let (c, a, b) = (clock(), alice(), bob());
    let d1 = delegate(&c, a.did(), vec![cap("clock/*", c.did())], &[]);
    let d2 = delegate(&a, b.did(), vec![cap("clock/head", c.did())], &[&d1]);
    let inv = Ucan::builder(&b, service().did())
        .capability(cap("clock/head", c.did()))
        .expiration(EXP)
        .nonce(nonce);
    let inv = Delegation::issue(inv, std::slice::from_ref(&d2), &[]).unwrap();
    (d1, d2, inv)
}

#[test]
fn cached_proof_signatures_give_the_same_authorization() {
    let (v, cache) = counting_validator();
    let (d1, d2, first) = two_link_chain("1");
    let cold = access(&v, &first, &parsers::clock_head()).unwrap();
    // Both proofs were verified and recorded; the invocation was not.
    assert_eq!(cache.counts(), [0, 2, 2]);
    assert_eq!(cache.inner.len(), 2);

    // The next invocation resends the same proofs: their signatures come from the cache.
    let (_, _, second) = two_link_chain("2");
    assert_ne!(first.cid(), second.cid());
    let warm = access(&v, &second, &parsers::clock_head()).unwrap();
    assert_eq!(cache.counts(), [2, 2, 2]);
    assert_eq!(
        warm.delegations(),
        vec![*second.cid(), *d2.cid(), *d1.cid()]
    );
    assert_eq!(cold.delegations()[1..], warm.delegations()[1..]);
    assert_eq!(
        warm.capability().to_capability(),
        cold.capability().to_capability()
    );
    assert_eq!(
        warm.proofs()[0].capability().to_capability(),
        cold.proofs()[0].capability().to_capability()
    );
    assert_eq!(warm.revocation_scopes()[1..], cold.revocation_scopes()[1..]);

    // Replaying the same invocation verifies its own signature again (never shared).
    let again = access(&v, &first, &parsers::clock_head()).unwrap();
    assert_eq!(again.delegations(), cold.delegations());
    assert_eq!(cache.counts(), [4, 2, 2]);
    assert_eq!(cache.inner.len(), 2);
}

/// `d` with one byte of its signature flipped: same payload, a new block, so a new CID.
fn tamper_signature(d: &Delegation) -> Delegation {
    let Ipld::Map(mut m) = d.ucan().block().decode::<Ipld>().unwrap() else {
        panic!("a UCAN is a map")
    };
    let Some(Ipld::Bytes(sig)) = m.get_mut("s") else {
        panic!("a UCAN has a signature")
    };
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    let block = proto::Block::encode(&Ipld::Map(m)).unwrap();
    Delegation::new(Ucan::decode(block).unwrap(), d.blocks().clone())
}

#[test]
fn a_tampered_signature_is_never_served_from_the_cache() {
    let (v, cache) = counting_validator();
    let (c, b) = (clock(), bob());
    let (_, d2, inv) = two_link_chain("1");
    access(&v, &inv, &parsers::clock_head()).unwrap();
    assert_eq!(cache.inner.len(), 2);

    // Same issuer, audience, capabilities and proofs as the cached d2; only the signature
    // differs, so the CID does too: the cache cannot answer for it.
    let forged = tamper_signature(&d2);
    assert_ne!(forged.cid(), d2.cid());
    let inv = delegate(
        &b,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&forged],
    );
    let msg = unauthorized(&v, &inv, &parsers::clock_head());
    assert!(
        msg.contains(&format!(
            "Proof {} does not has a valid signature from {}",
            forged.cid(),
            alice().did()
        )),
        "{msg}"
    );
    // The forged proof was looked up and missed, and nothing new was recorded.
    assert_eq!(cache.counts()[2], 2);
    assert_eq!(cache.inner.len(), 2);

    // The genuine chain still authorizes from the cache, and the forgery still fails.
    let (_, _, inv2) = two_link_chain("2");
    assert!(access(&v, &inv2, &parsers::clock_head()).is_ok());
    assert_eq!(
        unauthorized(&v, &inv, &parsers::clock_head()),
        msg,
        "same verdict and message the second time"
    );
}

#[test]
fn failed_verifications_are_not_cached() {
    let (v, cache) = counting_validator();
    let (c, a) = (clock(), alice());
    let forger = mallory().with_did(c.did()).unwrap();
    let forged = delegate(&forger, a.did(), vec![cap("clock/head", c.did())], &[]);
    let inv = delegate(
        &a,
        service().did(),
        vec![cap("clock/head", c.did())],
        &[&forged],
    );
    let first = unauthorized(&v, &inv, &parsers::clock_head());
    let second = unauthorized(&v, &inv, &parsers::clock_head());
    assert_eq!(first, second);
    // Looked up on each call, verified on each call, never recorded.
    assert_eq!(cache.counts(), [0, 2, 0]);
    assert!(cache.inner.is_empty());
    // A direct invocation (no proofs) records nothing either: only proofs are shared.
    let direct = delegate(&c, service().did(), vec![cap("clock/head", c.did())], &[]);
    assert!(access(&v, &direct, &parsers::clock_head()).is_ok());
    assert!(cache.inner.is_empty());
}

#[test]
fn time_bounds_and_revocation_are_checked_on_every_call() {
    let (c, a) = (clock(), alice());
    let cache = Arc::new(BoundedSignatureCache::default());
    let d = issue(
        &c,
        a.did(),
        vec![cap("clock/head", c.did())],
        &[],
        Some(NOW + 10),
        None,
    );
    let inv = delegate(&a, service().did(), vec![cap("clock/head", c.did())], &[&d]);
    let v = validator().with_signature_cache(cache.clone());
    assert!(v.access(&inv, &parsers::clock_head(), NOW).is_ok());
    assert_eq!(cache.len(), 1);
    // Cached, but expired now.
    let err = v
        .access(&inv, &parsers::clock_head(), NOW + 10)
        .unwrap_err();
    assert!(
        err.message().contains("has expired on"),
        "{}",
        err.message()
    );
    // Cached, but revoked.
    let root = *d.cid();
    let revoking = v
        .clone()
        .with_revocations(move |cid: &Cid, _: &[String]| *cid == root);
    assert!(revoking.access(&inv, &parsers::clock_head(), NOW).is_err());
    // Cached, but the capability does not derive (clock/head does not give clock/advance).
    let adv = delegate(
        &a,
        service().did(),
        vec![cap_nb(
            "clock/advance",
            c.did(),
            &[("event", Ipld::Link(cid(EVENT)))],
        )],
        &[&d],
    );
    assert!(v.access(&adv, &parsers::clock_advance(), NOW).is_err());
}

#[test]
fn signature_keys_bind_ucan_did_and_key() {
    let (c, a) = (clock(), alice());
    let d = delegate(&c, a.did(), vec![cap("clock/head", c.did())], &[]);
    let other = delegate(&c, bob().did(), vec![cap("clock/head", c.did())], &[]);
    let key = SignatureKey::new(d.cid(), &c.verifier());
    assert_eq!(
        key,
        SignatureKey::new(d.cid(), &Verifier::parse(c.did()).unwrap())
    );
    assert_ne!(key, SignatureKey::new(other.cid(), &c.verifier()));
    assert_ne!(key, SignatureKey::new(d.cid(), &a.verifier()));
    // The same key speaking for another DID is another verifier.
    assert_ne!(
        key,
        SignatureKey::new(d.cid(), &c.verifier().with_did("did:web:clock.example"))
    );
}

#[test]
fn the_bounded_cache_stays_bounded_and_keeps_what_is_used() {
    let keys: Vec<SignatureKey> = (0..64u8)
        .map(|n| {
            let d = delegate(
                &signer(n),
                alice().did(),
                vec![cap("clock/head", clock().did())],
                &[],
            );
            SignatureKey::new(d.cid(), &signer(n).verifier())
        })
        .collect();
    let cache = BoundedSignatureCache::new(8);
    for (i, k) in keys.iter().enumerate() {
        cache.insert(*k);
        assert!(
            cache.len() <= 8,
            "{} keys after {} inserts",
            cache.len(),
            i + 1
        );
        // Keep using the first key: it is never evicted.
        assert!(
            cache.contains(&keys[0]),
            "the key in use was evicted at {i}"
        );
    }
    assert!(cache.contains(&keys[63]));
    assert!(!cache.contains(&keys[40]), "an unused old key was kept");
    // Inserting again is idempotent.
    let len = cache.len();
    cache.insert(keys[63]);
    assert_eq!(cache.len(), len);
    // Too small to hold anything: records nothing.
    let none = BoundedSignatureCache::new(1);
    none.insert(keys[0]);
    assert!(none.is_empty() && !none.contains(&keys[0]));
}
