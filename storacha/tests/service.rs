//! The client against Storacha's real upload service, running locally (`tests::storacha`):
//! Spaces provisioned through the real `provider/add`, delegations made the way the Storacha
//! CLI makes them, and the real JS client (`@storacha/client`) checking what we stored.

use std::time::Duration;

use cid::Cid;
use proto::Block;
use proto::ipld::{DAG_CBOR, RAW};
use proto::principal::Ed25519Signer;
use proto::ucan::{Capability, Delegation, Ucan};
use storacha::shard::CarShard;
use storacha::{Agent, Client, Config, Error, Failure};
use tests::storacha::{LocalStoracha, list_space};

/// What a backup worker is granted (plus the listings the JS check needs).
const WORKER_ABILITIES: [&str; 6] = [
    "space/blob/add",
    "space/index/add",
    "upload/add",
    "space/info",
    "upload/list",
    "space/blob/list",
];

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).unwrap();
    v
}

/// A Space whose key the test owns, and a worker holding a delegation on it.
struct Setup {
    space: Ed25519Signer,
    worker: Ed25519Signer,
    proof_text: String,
}

impl Setup {
    /// The chain the Storacha CLI produces: the Space delegates its default access to the CLI's
    /// agent (as `space create` does), and the agent delegates `abilities` to the worker with an
    /// expiry (`storacha delegation create <worker> -c … -e …`), printed in the text form.
    fn new(abilities: &[&str], expiration: i64) -> Self {
        let space = Ed25519Signer::generate().unwrap();
        let cli_agent = Ed25519Signer::generate().unwrap();
        let worker = Ed25519Signer::generate().unwrap();
        let mut owner = Ucan::builder(&space, cli_agent.did());
        for can in ["space/*", "upload/*", "blob/*", "index/*"] {
            owner = owner.capability(Capability::new(can, space.did()));
        }
        let owner = Delegation::issue(owner, &[], &[]).unwrap();
        let mut grant = Ucan::builder(&cli_agent, worker.did()).expiration(expiration);
        for can in abilities {
            grant = grant.capability(Capability::new(*can, space.did()));
        }
        let grant = Delegation::issue(grant, &[owner], &[]).unwrap();
        Self {
            space,
            worker,
            proof_text: grant.to_proof_text().unwrap(),
        }
    }

    fn worker(abilities: &[&str]) -> Self {
        Self::new(abilities, now() + 3600)
    }

    async fn provisioned() -> Self {
        let s = Self::worker(&WORKER_ABILITIES);
        LocalStoracha::shared().provision(s.space.did()).await;
        s
    }

    fn client(&self, config: Config) -> Client {
        let agent = Agent::from_proof_text(self.worker.clone(), &self.proof_text).unwrap();
        assert_eq!(agent.space(), self.space.did());
        Client::new(config, agent).unwrap()
    }

    fn local_client(&self) -> Client {
        self.client(local_config())
    }
}

fn local_config() -> Config {
    let service = LocalStoracha::shared();
    let mut config = Config::for_service(&service.url, &service.did);
    config.backoff.initial = Duration::from_millis(20);
    config.polling.interval = Duration::from_millis(50);
    config.polling.attempts = 400;
    config
}

/// `count` raw blocks of `size` random bytes.
fn raw_blocks(count: usize, size: usize) -> Vec<Block> {
    (0..count)
        .map(|_| Block::from_codec(RAW, random_bytes(size)))
        .collect()
}

/// A DAG-CBOR root linking `blocks` (so the upload has a real root).
fn root_of(blocks: &[Block]) -> Block {
    let links = blocks.iter().map(|b| proto::Ipld::Link(*b.cid())).collect();
    Block::encode(&proto::Ipld::List(links)).unwrap()
}

fn z(digest: &[u8]) -> String {
    multibase::encode(multibase::Base::Base58Btc, digest)
}

fn expect_refused(result: Result<impl std::fmt::Debug, Error>, failure: Failure) -> Error {
    match result {
        Err(e @ Error::Refused { .. }) if e.failure() == Some(&failure) => e,
        other => panic!("expected a {failure} refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn space_info_tells_provisioned_from_unknown_spaces() {
    let setup = Setup::worker(&WORKER_ABILITIES);
    let client = setup.local_client();
    let e = expect_refused(client.space_info().await, Failure::SpaceUnknown);
    assert!(!e.is_retryable());
    assert!(!client.is_provisioned().await.unwrap());

    LocalStoracha::shared().provision(setup.space.did()).await;
    // Asked again at once: a fresh nonce, so not the cached SpaceUnknown receipt.
    let info = client.space_info().await.unwrap();
    assert_eq!(info.did, setup.space.did());
    assert_eq!(info.providers, vec![LocalStoracha::shared().did.clone()]);
    assert!(client.is_provisioned().await.unwrap());
}

#[tokio::test]
async fn shards_index_and_upload_are_stored_listed_and_read_back() {
    let setup = Setup::provisioned().await;
    let client = setup.local_client();
    // Three shards of blocks of assorted sizes, and a root in the last one.
    let blocks: Vec<Vec<Block>> = vec![raw_blocks(40, 9_000), raw_blocks(3, 300_000), {
        let mut b = raw_blocks(25, 1_234);
        b.push(Block::from_codec(DAG_CBOR, vec![0xa0]));
        b
    }];
    let all: Vec<Block> = blocks.iter().flatten().cloned().collect();
    let root = root_of(&all);
    let mut shards = Vec::new();
    for (i, group) in blocks.iter().enumerate() {
        let mut group = group.clone();
        if i == 2 {
            group.push(root.clone());
        }
        let shard = CarShard::encode(&group, None);
        let stored = client.add_blob(shard.blob()).await.unwrap();
        assert!(stored.uploaded, "a new shard's bytes are sent");
        assert_eq!(stored.size, shard.size());
        assert!(!stored.locations.is_empty(), "accept names a location");
        // Read one block back from the location at its position.
        let (mh, pos) = &shard.slices()[1];
        let block = &group[1];
        assert_eq!(mh, &block.cid().hash().to_bytes());
        let back = client
            .fetch_block_at(block.cid(), &stored.locations[0], *pos)
            .await
            .unwrap();
        assert_eq!(back.as_ref(), Some(block));
        shards.push(shard);
    }
    let summaries: Vec<_> = shards.iter().map(CarShard::summary).collect();
    let upload = client
        .register_upload(*root.cid(), &summaries)
        .await
        .unwrap();
    assert_eq!(upload.root, *root.cid());

    // Every block, and the root, come back through the gateway, hash-checked.
    for b in all.iter().chain(std::iter::once(&root)) {
        let back = client.fetch_block(b.cid()).await.unwrap();
        assert_eq!(back.as_ref(), Some(b), "block {}", b.cid());
    }
    assert_eq!(
        client
            .fetch_block(
                &Block::from_codec(RAW, b"never stored".to_vec())
                    .cid()
                    .clone()
            )
            .await
            .unwrap(),
        None
    );

    // The real JS client sees the upload with our root and shards, and every blob.
    let service = LocalStoracha::shared();
    let listing = list_space(service, &setup.worker.format(), &setup.proof_text);
    assert_eq!(listing.space, setup.space.did());
    let shard_cids: Vec<String> = shards.iter().map(|s| s.cid().to_string()).collect();
    assert_eq!(
        listing.uploads,
        vec![(root.cid().to_string(), shard_cids.clone())]
    );
    let mut expected_blobs: Vec<(String, u64)> = shards
        .iter()
        .map(|s| (z(s.blob().digest()), s.size()))
        .collect();
    expected_blobs.push((z(&upload.index_blob.digest), upload.index_blob.size));
    let mut blobs = listing.blobs.clone();
    blobs.sort();
    expected_blobs.sort();
    assert_eq!(blobs, expected_blobs);

    // A re-run stores nothing new: every blob is already accepted, the index is the same.
    for shard in &shards {
        let again = client.add_blob(shard.blob()).await.unwrap();
        assert!(!again.uploaded, "an accepted blob is not sent again");
    }
    let again = client
        .register_upload(*root.cid(), &summaries)
        .await
        .unwrap();
    assert_eq!(again.index, upload.index);
    assert!(!again.index_blob.uploaded);
    let relisted = list_space(service, &setup.worker.format(), &setup.proof_text);
    assert_eq!(relisted.uploads.len(), 1);
    let mut blobs = relisted.blobs;
    blobs.sort();
    assert_eq!(blobs, expected_blobs);
}

#[tokio::test]
async fn a_64_mib_shard_round_trips() {
    let setup = Setup::provisioned().await;
    let client = setup.local_client();
    let blocks = raw_blocks(64, 1024 * 1024);
    let shard = CarShard::encode(&blocks, None);
    assert!(shard.size() > 64 * 1024 * 1024);
    let stored = client.add_blob(shard.blob()).await.unwrap();
    assert!(stored.uploaded);
    let back = LocalStoracha::shared()
        .get(&format!("/blob/{}", shard.cid()))
        .await
        .expect("the shard is readable");
    assert_eq!(back.len() as u64, shard.size());
    assert_eq!(
        proto::ipld::cid_sha256(proto::ipld::CAR, &back),
        *shard.cid()
    );
    let (_, pos) = shard.slices()[63];
    let last = client
        .fetch_block_at(blocks[63].cid(), &stored.locations[0], pos)
        .await
        .unwrap();
    assert_eq!(last.as_ref(), Some(&blocks[63]));
}

#[tokio::test]
async fn receipts_in_the_conclude_form_are_read() {
    let setup = Setup::provisioned().await;
    let mut config = local_config();
    config.receipts_url = LocalStoracha::shared().conclude_receipts_url();
    let client = setup.client(config);
    let shard = CarShard::encode(&raw_blocks(4, 5_000), None);
    let stored = client.add_blob(shard.blob()).await.unwrap();
    assert!(stored.uploaded);
    assert!(!stored.locations.is_empty());
}

#[tokio::test]
async fn an_unprovisioned_space_cannot_store() {
    let setup = Setup::worker(&WORKER_ABILITIES);
    let client = setup.local_client();
    let shard = CarShard::encode(&raw_blocks(2, 100), None);
    let e = expect_refused(
        client.add_blob(shard.blob()).await,
        Failure::InsufficientStorage,
    );
    assert!(!e.is_retryable());
    let e = expect_refused(
        client.add_upload(*shard.cid(), &[*shard.cid()]).await,
        Failure::InsufficientStorage,
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn expired_and_too_narrow_delegations_are_unauthorized() {
    let expired = Setup::new(&WORKER_ABILITIES, now() - 60);
    LocalStoracha::shared().provision(expired.space.did()).await;
    let shard = CarShard::encode(&raw_blocks(2, 100), None);
    let e = expect_refused(
        expired.local_client().add_blob(shard.blob()).await,
        Failure::Unauthorized,
    );
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("expired"), "{e}");

    let narrow = Setup::worker(&["space/info"]);
    LocalStoracha::shared().provision(narrow.space.did()).await;
    let client = narrow.local_client();
    assert!(client.is_provisioned().await.unwrap());
    expect_refused(client.add_blob(shard.blob()).await, Failure::Unauthorized);
    expect_refused(client.add_index(*shard.cid()).await, Failure::Unauthorized);
}

#[tokio::test]
async fn the_wrong_service_did_is_an_invalid_audience() {
    let setup = Setup::provisioned().await;
    let mut config = local_config();
    config.service_did = storacha::config::PRODUCTION_SERVICE_DID.to_string();
    let e = expect_refused(
        setup.client(config).space_info().await,
        Failure::InvalidAudience,
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn an_index_of_unstored_blobs_is_refused() {
    let setup = Setup::provisioned().await;
    let client = setup.local_client();
    let never = CarShard::encode(&raw_blocks(1, 10), None);
    let e = expect_refused(client.add_index(*never.cid()).await, Failure::IndexNotFound);
    assert!(e.is_retryable());
}

#[tokio::test]
async fn put_failures_are_named_and_the_upload_resumes() {
    let setup = Setup::provisioned().await;
    let service = LocalStoracha::shared();
    let client = setup.local_client();
    let shard = CarShard::encode(&raw_blocks(3, 2_000), None);
    let digest = shard.blob().digest_text();

    // A 4xx is final: no retry, a permanent error.
    service.fail_puts(&digest, 403, 1).await;
    match client.add_blob(shard.blob()).await {
        Err(e @ Error::PutFailed { status: 403, .. }) => assert!(!e.is_retryable()),
        other => panic!("expected PutFailed 403, got {other:?}"),
    }
    // A 5xx that outlasts the retries is a retryable error.
    service.fail_puts(&digest, 503, 100).await;
    match client.add_blob(shard.blob()).await {
        Err(e @ Error::PutFailed { status: 503, .. }) => assert!(e.is_retryable()),
        other => panic!("expected PutFailed 503, got {other:?}"),
    }
    // One 5xx is retried away; the interrupted upload completes, stored once.
    service.fail_puts(&digest, 500, 1).await;
    let stored = client.add_blob(shard.blob()).await.unwrap();
    assert!(stored.uploaded);
    let listing = list_space(service, &setup.worker.format(), &setup.proof_text);
    assert_eq!(listing.blobs, vec![(digest, shard.size())]);
}

#[tokio::test]
async fn a_receipt_that_never_comes_times_out_and_the_upload_resumes() {
    let setup = Setup::provisioned().await;
    let mut config = local_config();
    config.receipts_url = LocalStoracha::shared().missing_receipts_url();
    config.polling.attempts = 3;
    let shard = CarShard::encode(&raw_blocks(3, 700), None);
    match setup.client(config).add_blob(shard.blob()).await {
        Err(e @ Error::ReceiptTimeout { .. }) => assert!(e.is_retryable()),
        other => panic!("expected ReceiptTimeout, got {other:?}"),
    }
    // Trying again finds the put concluded and the blob accepted: nothing is sent twice.
    let stored = setup.local_client().add_blob(shard.blob()).await.unwrap();
    assert!(!stored.uploaded);
    assert!(!stored.locations.is_empty());
}

#[tokio::test]
async fn the_space_owner_can_act_without_proofs() {
    let space = Ed25519Signer::generate().unwrap();
    LocalStoracha::shared().provision(space.did()).await;
    let client = Client::new(local_config(), Agent::space_owner(space)).unwrap();
    let blocks = raw_blocks(2, 50);
    let shard = CarShard::encode(&blocks, None);
    client.add_blob(shard.blob()).await.unwrap();
    let root: Cid = *blocks[0].cid();
    client
        .register_upload(root, &[shard.summary()])
        .await
        .unwrap();
}
