//! The path every request body takes, fed arbitrary bytes: the CAR reader, DAG-CBOR decoding of
//! every block, the ucanto agent message, and the UCAN and receipt decoders (with their proofs
//! and exports). None may panic, hang or allocate without bound, whatever the input.

#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use proto::car::{CarLimits, decode_car};
use proto::ipld::{Ipld, decode_dag_cbor};
use proto::message::AgentMessage;
use proto::receipt::Receipt;
use proto::ucan::{Delegation, Ucan};

fuzz_target!(|data: &[u8]| {
    let Ok((_roots, blocks)) = decode_car(data, &CarLimits::default()) else {
        return;
    };
    let store: Arc<HashMap<_, _>> = Arc::new(blocks.iter().map(|b| (*b.cid(), b.clone())).collect());
    for block in &blocks {
        let _ = decode_dag_cbor::<Ipld>(block.bytes());
        if let Ok(ucan) = Ucan::decode(block.clone()) {
            let _ = ucan.signing_payload();
            let _ = ucan.verify_self_signed();
            let _ = ucan.attached_links();
            let delegation = Delegation::new(ucan, store.clone());
            let _ = delegation.proofs();
            let _ = delegation.export();
        }
        let _ = Receipt::from_store(block.cid(), store.clone()).map(|r| r.blocks());
    }
    if let Ok(msg) = AgentMessage::decode(data, &CarLimits::default()) {
        let _ = msg.invocations();
        for cid in msg.execute() {
            let _ = msg.receipt(cid);
        }
    }
    let _ = Delegation::extract(data);
});
