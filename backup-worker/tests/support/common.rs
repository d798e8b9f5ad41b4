//! Helpers the worker's integration tests share (each test binary includes this file; not all
//! of them use every helper).
#![allow(dead_code)]

use std::collections::HashMap;

use backup_worker::identity::{IdentityConfig, IdentityResolver};
use backup_worker::xrpc::{StreamReader, XrpcClient, XrpcConfig};
use proto::car::{CarLimits, CarReader};
use proto::principal::Ed25519Signer;
use proto::repo::{Commit, MstVisit, WalkOptions};
use proto::ucan::{Capability, Delegation, Ucan};
use proto::{Block, Cid};
use reqwest::Url;
use tests::pds::Pds;

/// What a backup worker is granted on a Storacha Space (and the listings the JS check needs).
pub(crate) const WORKER_ABILITIES: [&str; 6] = [
    "space/blob/add",
    "space/index/add",
    "upload/add",
    "space/info",
    "upload/list",
    "space/blob/list",
];

/// Resolves identities against the test PDS and its PLC (loopback, `.test` handles).
pub(crate) fn resolver(xrpc: &XrpcClient, pds: &Pds) -> IdentityResolver {
    IdentityResolver::new(
        xrpc.clone(),
        IdentityConfig {
            plc_url: Url::parse(&pds.plc_url).unwrap(),
            handle_resolver: Some(Url::parse(&pds.url).unwrap()),
            allow_insecure: true,
        },
    )
}

/// `len` bytes of a deterministic pseudo-random stream (xorshift), distinct per `seed`.
pub(crate) fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The PDS's own view of an account: the commit of its full `getRepo`, and the blocks reachable
/// from it (the commit, every MST node and record).
pub(crate) async fn pds_repo(pds: &Pds, did: &str) -> (Cid, HashMap<Cid, Block>) {
    let xrpc = XrpcClient::new(XrpcConfig::default()).unwrap();
    let download = xrpc
        .get_repo(&Url::parse(&pds.url).unwrap(), did, None)
        .await
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let (root, blocks) = tokio::task::spawn_blocking(move || {
        let mut car = CarReader::new(
            StreamReader::new(download.body, handle),
            &CarLimits::default(),
        )
        .unwrap();
        let root = car.roots()[0];
        let blocks: HashMap<Cid, Block> = car
            .by_ref()
            .map(|b| b.unwrap())
            .map(|b| (*b.cid(), b))
            .collect();
        (root, blocks)
    })
    .await
    .unwrap();
    (root, reachable(&root, &blocks))
}

/// The commit, MST nodes and records reachable from `commit` in `blocks`.
pub(crate) fn reachable(commit: &Cid, blocks: &HashMap<Cid, Block>) -> HashMap<Cid, Block> {
    let mut out = HashMap::new();
    let c = blocks[commit].clone();
    let data = Commit::from_block(&c).unwrap().data;
    out.insert(*commit, c);
    let opts = WalkOptions {
        fetch_records: true,
        ..WalkOptions::default()
    };
    let walk = proto::repo::walk_mst(blocks, &data, &opts, |v| {
        let block = match v {
            MstVisit::Node { block, .. } => block,
            MstVisit::Record { block, .. } => block.expect("fetched"),
        };
        out.insert(*block.cid(), block.clone());
        Ok(())
    })
    .unwrap();
    assert!(walk.is_complete());
    out
}

/// A Space the test owns and a delegation on it to `agent`, made the way the Storacha CLI makes
/// it: the Space grants its CLI agent the default abilities (`space create`), and that agent
/// grants `abilities` to `agent` (`storacha delegation create <agent> -c … --base64`). Returns
/// the Space key and the delegation in the CLI's text form.
pub(crate) fn cli_delegation(
    agent: &str,
    abilities: &[&str],
    expiration: i64,
) -> (Ed25519Signer, String) {
    let space = Ed25519Signer::generate().unwrap();
    let cli_agent = Ed25519Signer::generate().unwrap();
    let mut owner = Ucan::builder(&space, cli_agent.did());
    for can in ["space/*", "upload/*", "blob/*", "index/*"] {
        owner = owner.capability(Capability::new(can, space.did()));
    }
    let owner = Delegation::issue(owner, &[], &[]).unwrap();
    let mut grant = Ucan::builder(&cli_agent, agent).expiration(expiration);
    for can in abilities {
        grant = grant.capability(Capability::new(*can, space.did()));
    }
    let text = Delegation::issue(grant, &[owner], &[])
        .unwrap()
        .to_proof_text()
        .unwrap();
    (space, text)
}

/// An hour from now, in seconds since the epoch.
pub(crate) fn in_an_hour() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600
}
