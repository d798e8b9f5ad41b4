//! The golden trace, end to end: the REAL `clock-service` binary, started with the interop kit's
//! service key, answers the w3clock trace `head.car` → `advance.car` → `head.car`
//! (`proto/tests/fixtures/golden`, recorded from the real w3clock client and server) with
//! byte-identical responses over HTTP: `head-empty.resp.car`, `advance.resp.car`,
//! `head-after.resp.car`. The proto crate proves the codecs produce these bytes; this proves the
//! assembled service does (HTTP layer, validator, handlers, the store, receipt signing), on both
//! stores. The clock DID is fixed by the vectors, so Redis runs under a unique key prefix.
//! Afterwards the store itself holds the advanced head and the event block.

mod common;

use bytes::Bytes;
use clock_service::store::ClockStore as _;
use common::{Backend, SERVICE_DID, Server, TestStore};
use proto::Cid;

/// The agent and clock of the vectors: `ed25519.derive(32 × 0x01)`.
const CLOCK: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";
/// The event `advance.car` advances the clock with.
const EVENT: &str = "bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq";

fn fixture(name: &str) -> Vec<u8> {
    let path = tests::repo_root()
        .join("proto/tests/fixtures/golden")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Where two byte strings first differ, for a readable failure.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

async fn golden_trace(backend: Backend) {
    let store = TestStore::new(backend);
    let mut server = Server::start(&store, &[]);
    assert_eq!(
        server.did, SERVICE_DID,
        "the service must run with the kit's key"
    );
    let client = server.client();
    let steps = [
        ("head.car", "head-empty.resp.car"),
        ("advance.car", "advance.resp.car"),
        ("head.car", "head-after.resp.car"),
    ];
    for (request, response) in steps {
        let got = client
            .post(Bytes::from(fixture(request)))
            .await
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        let want = fixture(response);
        if let Some(at) = first_difference(&got, &want) {
            panic!(
                "{backend:?}: {request} answered {} bytes that differ from {response} ({} bytes) \
                 at offset {at}",
                got.len(),
                want.len()
            );
        }
    }

    // The state is really in the store: the head names the event, whose block is kept.
    let event: Cid = EVENT.parse().expect("a CID");
    if backend == Backend::Redb {
        server.stop(); // redb locks its file: read it once the service has exited
    }
    let opened = store.open().await;
    assert_eq!(
        opened.head(CLOCK).await.expect("read the head"),
        vec![event]
    );
    common::assert_present(&opened, CLOCK, &[event]).await;
}

#[tokio::test]
async fn golden_trace_redb() {
    golden_trace(Backend::Redb).await;
}

#[tokio::test]
async fn golden_trace_redis() {
    golden_trace(Backend::Redis).await;
}
