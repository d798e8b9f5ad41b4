//! Backups into a real Storacha Space: the worker backs up an account on the REAL reference PDS
//! (`tests::pds`) into Storacha's own upload service running locally (`tests::storacha`),
//! through `StorachaSpace`, with the delegation chain the Storacha CLI makes (Space → CLI agent
//! → worker key). Then:
//!
//! - the real JS client (`@storacha/client`: `upload/list`, `blob/list`) sees the upload with
//!   the root and shards the worker reports;
//! - a fresh process (no local knowledge) reads every block back from the service and exports a
//!   repo that is the PDS's, and blobs byte for byte;
//! - an unchanged account uploads nothing; a changed one uploads only the increment;
//! - an unprovisioned Space is a named, permanent error and the clock does not move.

#[path = "support/common.rs"]
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backup_worker::backup::{Job, Outcome, Progress, Settings, Summary, Worker};
use backup_worker::clock::Clock;
use backup_worker::restore::Reader;
use backup_worker::storacha_space::StorachaSpace;
use backup_worker::xrpc::{Disposition, XrpcClient, XrpcConfig};
use common::{WORKER_ABILITIES, cli_delegation, in_an_hour, pds_repo, pseudo_random, resolver};
use proto::Cid;
use proto::backup::BackupRef;
use proto::car::CarLimits;
use proto::principal::Ed25519Signer;
use reqwest::Url;
use tests::pds::Pds;
use tests::storacha::{LocalStoracha, list_space};

/// A Space the test owns and a worker key holding, through the CLI's agent, a delegation on it.
struct Grant {
    space: Ed25519Signer,
    worker: Ed25519Signer,
    proof_text: String,
}

fn grant() -> Grant {
    let worker = Ed25519Signer::generate().unwrap();
    let (space, proof_text) = cli_delegation(worker.did(), &WORKER_ABILITIES, in_an_hour());
    Grant {
        space,
        worker,
        proof_text,
    }
}

fn storacha_space(grant: &Grant) -> StorachaSpace {
    let service = LocalStoracha::shared();
    let mut config = storacha::Config::for_service(&service.url, &service.did);
    config.backoff.initial = Duration::from_millis(20);
    config.polling.interval = Duration::from_millis(50);
    config.polling.attempts = 400;
    let agent = storacha::Agent::from_proof_text(grant.worker.clone(), &grant.proof_text).unwrap();
    StorachaSpace::new(storacha::Client::new(config, agent).unwrap())
}

fn worker(
    pds: &Pds,
    space: Arc<StorachaSpace>,
    clock: Clock,
    staging: &Path,
) -> Worker<StorachaSpace> {
    let xrpc = XrpcClient::new(XrpcConfig::default()).unwrap();
    let identity = resolver(&xrpc, pds);
    let mut settings = Settings::new(staging);
    settings.pds_override = Some(Url::parse(&pds.url).unwrap());
    // Small shards: a backup spans several blobs in the Space.
    settings.shard_size = 256 * 1024;
    Worker::new(xrpc, identity, space, clock, settings)
}

fn stored(outcome: Outcome) -> Summary {
    match outcome {
        Outcome::Stored(s) => *s,
        other => panic!("expected a stored backup, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pds_account_is_backed_up_into_a_real_storacha_space() {
    let pds = Pds::shared();
    let service = LocalStoracha::shared();
    let account = pds.create_account("storacha").await;
    for i in 0..40 {
        account.post_text(&format!("to storacha {i}")).await;
    }
    let (small, _) = account.add_file(pseudo_random(200_000, 1)).await;
    let (large, _) = account.add_file(pseudo_random(2_300_000, 2)).await;

    let g = grant();
    service.provision(g.space.did()).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::embedded(&dir.path().join("clock.redb"))
        .await
        .unwrap();
    let space = Arc::new(storacha_space(&g));
    let w = worker(
        pds,
        space.clone(),
        clock.clone(),
        &dir.path().join("staging"),
    );
    let job = Job {
        account: account.did.clone(),
        space: g.space.did().to_owned(),
        key: "2026-11-10T00:00:00.000Z".to_owned(),
        access_token: None,
    };
    let first = stored(w.run(&job, &Progress::default()).await.unwrap());
    assert!(first.shards.len() > 2, "{:?}", first.shards);
    assert_eq!(first.blobs_downloaded, 2);
    assert_eq!(clock.head(g.space.did()).await.unwrap(), vec![first.event]);

    // The real JS client sees the upload: our Backup as its root, our shards.
    let listing = list_space(service, &g.worker.format(), &g.proof_text);
    assert_eq!(listing.space, g.space.did());
    let shard_cids: Vec<String> = first.shards.iter().map(|s| s.cid.to_string()).collect();
    assert_eq!(
        listing.uploads,
        vec![(first.backup.to_string(), shard_cids.clone())]
    );
    // Every shard is a blob of the Space (and so is the upload's index).
    assert_eq!(listing.blobs.len(), first.shards.len() + 1, "{listing:?}");

    // A fresh process, knowing nothing, reads the whole backup back from the service.
    let fresh = Arc::new(storacha_space(&g));
    let reader = Reader::new(fresh.clone(), clock.clone(), g.space.did());
    let out = tempfile::tempdir().unwrap();
    let export = reader
        .export(&account.did, BackupRef::Latest, out.path())
        .await
        .unwrap();
    let (commit, reached) = pds_repo(pds, &account.did).await;
    let reached: HashSet<Cid> = reached.into_keys().collect();
    assert_eq!(export.commit, commit);
    let car = std::fs::read(out.path().join("repo.car")).unwrap();
    let (roots, blocks) = proto::car::decode_car(&car, &CarLimits::default()).unwrap();
    assert_eq!(roots, vec![commit]);
    assert_eq!(
        blocks.iter().map(|b| *b.cid()).collect::<HashSet<_>>(),
        reached,
        "the exported repo is the PDS's"
    );
    assert_eq!(
        std::fs::read(out.path().join("blobs").join(&small)).unwrap(),
        pseudo_random(200_000, 1)
    );
    assert_eq!(
        std::fs::read(out.path().join("blobs").join(&large)).unwrap(),
        pseudo_random(2_300_000, 2)
    );
    reader
        .verify(&account.did, BackupRef::Latest, None)
        .await
        .unwrap();

    // Unchanged: nothing uploaded, nothing listed anew.
    let again = Job {
        key: "2026-11-10T01:00:00.000Z".to_owned(),
        ..job.clone()
    };
    assert!(matches!(
        w.run(&again, &Progress::default()).await.unwrap(),
        Outcome::Unchanged { .. }
    ));
    assert_eq!(
        list_space(service, &g.worker.format(), &g.proof_text)
            .uploads
            .len(),
        1
    );

    // Changed: a second upload holding only the increment (no blob is sent again).
    account.post_text("one more for storacha").await;
    let w2 = worker(pds, fresh, clock.clone(), &dir.path().join("staging"));
    let second = stored(w2.run(&again, &Progress::default()).await.unwrap());
    assert_eq!(second.blobs_downloaded, 0);
    assert!(second.blocks_stored < first.blocks_stored, "{second:?}");
    assert!(
        second.bytes_stored * 50 < first.bytes_stored,
        "only the increment: {} bytes after {}",
        second.bytes_stored,
        first.bytes_stored
    );
    let listing = list_space(service, &g.worker.format(), &g.proof_text);
    assert_eq!(listing.uploads.len(), 2, "{listing:?} second: {second:?}");
    assert!(
        listing
            .uploads
            .iter()
            .any(|(root, _)| *root == second.backup.to_string())
    );
    let out2 = tempfile::tempdir().unwrap();
    let export2 = Reader::new(Arc::new(storacha_space(&g)), clock, g.space.did())
        .export(&account.did, BackupRef::Latest, out2.path())
        .await
        .unwrap();
    assert_eq!(export2.commit, pds_repo(pds, &account.did).await.0);
    assert_eq!(export2.blobs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprovisioned_space_is_a_permanent_error_and_the_clock_stays() {
    let pds = Pds::shared();
    let account = pds.create_account("noprov").await;
    account.post_text("nowhere to go").await;
    let g = grant(); // never provisioned
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::embedded(&dir.path().join("clock.redb"))
        .await
        .unwrap();
    let w = worker(
        pds,
        Arc::new(storacha_space(&g)),
        clock.clone(),
        &dir.path().join("staging"),
    );
    let job = Job {
        account: account.did.clone(),
        space: g.space.did().to_owned(),
        key: "2026-11-10T00:00:00.000Z".to_owned(),
        access_token: None,
    };
    let err = w.run(&job, &Progress::default()).await.unwrap_err();
    assert_eq!(err.name(), "SpaceError", "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent, "{err}");
    assert!(clock.head(g.space.did()).await.unwrap().is_empty());
}
