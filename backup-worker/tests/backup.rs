//! Whole backups of real accounts on the REAL reference PDS (`tests::pds`) into a local Space
//! with the embedded clock, read back with `restore::Reader`:
//!
//! - a first backup, exported: `repo.car` has the PDS's commit as root and exactly the blocks
//!   the PDS's own `getRepo` reaches from it; every blob byte-for-byte; preferences;
//! - records added, edited and deleted, blobs added and dropped, backed up again: only the
//!   increment is downloaded (`since`) and stored (counted against the Space), both backups
//!   export correctly and the first still holds the deleted records;
//! - an unchanged account costs one PDS request (two with a handle), a redelivered job is done;
//! - two backups of one account racing on one clock both end up in the history, under one head.

#[path = "support/common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use backup_worker::backup::{Job, Outcome, Progress, Settings, Summary, Worker};
use backup_worker::clock::Clock;
use backup_worker::identity::{IdentityConfig, IdentityResolver};
use backup_worker::restore::Reader;
use backup_worker::space::LocalSpace;
use backup_worker::xrpc::{XrpcClient, XrpcConfig};
use common::{pds_repo, pseudo_random, resolver};
use proto::backup::BackupRef;
use proto::car::CarLimits;
use proto::repo::{Commit, MstVisit, WalkOptions};
use proto::{Block, Cid};
use reqwest::Url;
use serde_json::json;
use tests::pds::{Account, Pds};

const SPACE: &str = "did:key:z6MkrZ1r5XBFZjBU34qyD8fueMbMRkKw17BZaq2ivKFjnz2z";

struct Setup {
    _dir: tempfile::TempDir,
    space: Arc<LocalSpace>,
    clock: Clock,
    worker: Worker<LocalSpace>,
    xrpc: XrpcClient,
}

async fn setup(pds: &Pds) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let space = Arc::new(LocalSpace::open(dir.path().join("space")).await.unwrap());
    let clock = Clock::embedded(&dir.path().join("clock.redb"))
        .await
        .unwrap();
    let xrpc = XrpcClient::new(XrpcConfig::default()).unwrap();
    let identity = resolver(&xrpc, pds);
    let mut settings = Settings::new(dir.path().join("staging"));
    settings.pds_override = Some(Url::parse(&pds.url).unwrap());
    // Small shards, so that a backup spans several.
    settings.shard_size = 512 * 1024;
    let worker = Worker::new(
        xrpc.clone(),
        identity,
        space.clone(),
        clock.clone(),
        settings,
    );
    Setup {
        _dir: dir,
        space,
        clock,
        worker,
        xrpc,
    }
}

fn job(account: &str, key: &str, token: Option<&str>) -> Job {
    Job {
        account: account.to_owned(),
        space: SPACE.to_owned(),
        key: key.to_owned(),
        access_token: token.map(str::to_owned),
    }
}

fn stored(outcome: Outcome) -> Summary {
    match outcome {
        Outcome::Stored(s) => *s,
        other => panic!("expected a stored backup, got {other:?}"),
    }
}

fn read_car(path: &Path) -> (Vec<Cid>, HashMap<Cid, Block>) {
    let bytes = std::fs::read(path).unwrap();
    let (roots, blocks) = proto::car::decode_car(&bytes, &CarLimits::default()).unwrap();
    (roots, blocks.into_iter().map(|b| (*b.cid(), b)).collect())
}

/// Every blob the PDS lists for the account, with its bytes.
async fn pds_blobs(xrpc: &XrpcClient, pds: &Pds, did: &str) -> BTreeMap<String, Vec<u8>> {
    let http = reqwest::Client::new();
    let url = Url::parse(&pds.url).unwrap();
    let mut out = BTreeMap::new();
    let cids: Vec<Cid> =
        futures_util::TryStreamExt::try_collect(xrpc.list_blobs(&url, did, None, 1000))
            .await
            .unwrap();
    for cid in cids {
        let bytes = http
            .get(format!(
                "{}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}",
                pds.url
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.insert(cid.to_string(), bytes.to_vec());
    }
    out
}

fn exported_blobs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

async fn populate(account: &Account) -> Vec<String> {
    let mut posts = Vec::new();
    for i in 0..30 {
        posts.push(account.post_text(&format!("post number {i}")).await);
    }
    // A reply and likes.
    let root = &posts[0];
    account
        .create_record(
            "app.bsky.feed.post",
            json!({"$type": "app.bsky.feed.post", "text": "a reply", "createdAt": "2026-01-01T00:00:00.000Z",
                   "reply": {"root": {"uri": root.uri, "cid": root.cid}, "parent": {"uri": root.uri, "cid": root.cid}}}),
        )
        .await;
    for p in &posts[..5] {
        account
            .create_record(
                "app.bsky.feed.like",
                json!({"$type": "app.bsky.feed.like", "subject": {"uri": p.uri, "cid": p.cid}, "createdAt": "2026-01-01T00:00:00.000Z"}),
            )
            .await;
    }
    // Blobs below and above 1 MiB (the big one spans several UnixFS leaves).
    let mut blobs = Vec::new();
    for (len, seed) in [(40_000, 1), (700_000, 2), (2_600_000, 3)] {
        blobs.push(account.add_file(pseudo_random(len, seed)).await.0);
    }
    account
        .put_preferences(
            json!([{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": false}]),
        )
        .await;
    blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_backups_export_what_the_pds_holds() {
    let pds = Pds::shared();
    let account = pds.create_account("full").await;
    populate(&account).await;
    let s = setup(pds).await;
    let progress = Progress::default();

    // First backup, with preferences.
    let first = stored(
        s.worker
            .run(
                &job(
                    &account.did,
                    "2026-11-01T00:00:00.000Z",
                    Some(&account.access_jwt),
                ),
                &progress,
            )
            .await
            .unwrap(),
    );
    let (commit1, pds_blocks1) = pds_repo(pds, &account.did).await;
    assert_eq!(first.commit, commit1);
    assert_eq!(first.since, None);
    assert_eq!(first.blobs, 3);
    assert_eq!(first.blobs_downloaded, 3);
    assert!(first.preferences);
    assert!(first.warnings.is_empty());
    assert!(first.shards.len() > 1, "{:?}", first.shards);
    assert_eq!(first.head, vec![first.event]);
    assert_eq!(s.space.len() as u64, first.blocks_stored);

    let out1 = tempfile::tempdir().unwrap();
    let reader = Reader::new(s.space.clone(), s.clock.clone(), SPACE);
    let e1 = reader
        .export(&account.did, BackupRef::Latest, out1.path())
        .await
        .unwrap();
    let (roots, car1) = read_car(&out1.path().join("repo.car"));
    assert_eq!(roots, vec![commit1]);
    assert_eq!(
        car1.keys().collect::<HashSet<_>>(),
        pds_blocks1.keys().collect::<HashSet<_>>(),
        "repo.car holds exactly the blocks the PDS's commit reaches"
    );
    assert_eq!(e1.blocks as usize, car1.len());
    let blobs1 = pds_blobs(&s.xrpc, pds, &account.did).await;
    assert_eq!(exported_blobs(out1.path()), blobs1);
    let prefs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out1.path().join("preferences.json")).unwrap())
            .unwrap();
    assert_eq!(
        prefs["preferences"][0]["$type"],
        "app.bsky.actor.defs#adultContentPref"
    );

    // Change the account: add, edit, delete records; add a blob, drop one.
    for i in 0..5 {
        account.post_text(&format!("later post {i}")).await;
    }
    account
        .put_record(
            "app.bsky.actor.profile",
            "self",
            json!({"$type": "app.bsky.actor.profile", "displayName": "Edited"}),
        )
        .await;
    let (new_blob, _) = account.add_file(pseudo_random(300_000, 9)).await;
    // Delete the record holding the 40 kB blob: the PDS dereferences that blob.
    let files = list_records(pds, &account.did, "com.example.file").await;
    let (small_rkey, small_blob) = files
        .iter()
        .find(|(_, blob, size)| *size == 40_000 && !blob.is_empty())
        .map(|(rkey, blob, _)| (rkey.clone(), blob.clone()))
        .unwrap();
    account.delete_record("com.example.file", &small_rkey).await;
    let posts = list_records(pds, &account.did, "app.bsky.feed.post").await;
    // The oldest post (listRecords lists newest first), which the first backup holds.
    let deleted_rkey = posts.last().unwrap().0.clone();
    account
        .delete_record("app.bsky.feed.post", &deleted_rkey)
        .await;

    let before_cids: HashSet<Cid> = s.space.cids().into_iter().collect();
    let second = stored(
        s.worker
            .run(
                &job(&account.did, "2026-11-02T00:00:00.000Z", None),
                &progress,
            )
            .await
            .unwrap(),
    );
    let (commit2, pds_blocks2) = pds_repo(pds, &account.did).await;
    assert_eq!(second.commit, commit2);
    assert_eq!(second.since.as_deref(), Some(first.rev.as_str()));
    assert!(
        second.repo_blocks < first.repo_blocks / 2,
        "incremental download: {} vs {} blocks",
        second.repo_blocks,
        first.repo_blocks
    );
    assert!(
        second.subtrees_pruned > 0,
        "unchanged subtrees are not re-walked"
    );
    assert_eq!(
        second.blobs_downloaded, 1,
        "only the new blob is downloaded"
    );
    assert_eq!(second.blobs, 3);
    assert!(!second.preferences);
    // Only new blocks are stored, and all of them are counted: every new repo block the commit
    // reaches, the new blob, and the Backup DAG's own blocks; nothing the Space had, and none
    // of the intermediate commits' leftovers that a `since` download carries.
    let after: HashSet<Cid> = s.space.cids().into_iter().collect();
    let gained: HashSet<Cid> = after.difference(&before_cids).copied().collect();
    assert_eq!(gained.len() as u64, second.blocks_stored);
    let new_repo: HashSet<Cid> = pds_blocks2
        .keys()
        .filter(|c| !pds_blocks1.contains_key(c))
        .copied()
        .collect();
    assert!(
        new_repo.is_subset(&gained),
        "every new repo block is stored"
    );
    assert!(gained.iter().all(|c| !pds_blocks1.contains_key(c)));
    let new_blob_cid: Cid = new_blob.parse().unwrap();
    let raw: Vec<&Cid> = gained.iter().filter(|c| c.codec() == 0x55).collect();
    assert_eq!(
        raw,
        vec![&new_blob_cid],
        "the one new blob, nothing else raw"
    );
    let dag_blocks = gained.len() - new_repo.len() - 1;
    assert!(
        dag_blocks < 40,
        "{dag_blocks} Backup DAG blocks (pail shards, Backup, Account, Root, event)"
    );
    // Both backups export correctly.
    let out2 = tempfile::tempdir().unwrap();
    reader
        .export(&account.did, BackupRef::Latest, out2.path())
        .await
        .unwrap();
    let (roots, car2) = read_car(&out2.path().join("repo.car"));
    assert_eq!(roots, vec![commit2]);
    assert_eq!(
        car2.keys().collect::<HashSet<_>>(),
        pds_blocks2.keys().collect::<HashSet<_>>()
    );
    let blobs2 = pds_blobs(&s.xrpc, pds, &account.did).await;
    assert!(blobs2.contains_key(&new_blob));
    assert!(!blobs2.contains_key(&small_blob));
    assert_eq!(exported_blobs(out2.path()), blobs2);

    let again = tempfile::tempdir().unwrap();
    reader
        .export(
            &account.did,
            BackupRef::Key("2026-11-01T00:00:00.000Z"),
            again.path(),
        )
        .await
        .unwrap();
    let (roots, car_again) = read_car(&again.path().join("repo.car"));
    assert_eq!(roots, vec![commit1]);
    assert_eq!(car_again.len(), car1.len());
    assert_eq!(
        exported_blobs(again.path()),
        blobs1,
        "the first backup keeps the dropped blob"
    );
    let deleted_record = records_of(&car_again)
        .into_iter()
        .any(|k| k == format!("app.bsky.feed.post/{deleted_rkey}"));
    assert!(
        deleted_record,
        "the first backup still has the deleted post"
    );
    assert!(
        !records_of(&car2)
            .into_iter()
            .any(|k| k == format!("app.bsky.feed.post/{deleted_rkey}"))
    );

    // Listing and verification read the same history.
    let list = reader.list(Some(&account.did)).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].key, "2026-11-01T00:00:00.000Z");
    assert_eq!(list[0].commit, commit1);
    assert_eq!(list[1].commit, commit2);
    assert_eq!(list[0].blobs, 3);
    assert_eq!(list[0].bytes_new, list[0].bytes_total);
    assert!(list[1].bytes_new < list[1].bytes_total / 2);
    let ident = IdentityResolver::new(
        s.xrpc.clone(),
        IdentityConfig {
            plc_url: Url::parse(&pds.plc_url).unwrap(),
            handle_resolver: None,
            allow_insecure: true,
        },
    )
    .resolve(&account.did)
    .await
    .unwrap();
    for key in ["2026-11-01T00:00:00.000Z", "2026-11-02T00:00:00.000Z"] {
        let v = reader
            .verify(
                &account.did,
                BackupRef::Key(key),
                Some(ident.signing_key.clone()),
            )
            .await
            .unwrap();
        assert!(v.signature_checked);
        assert_eq!(v.blobs, 3);
    }
}

/// Record keys in an exported CAR (walking its MST).
fn records_of(blocks: &HashMap<Cid, Block>) -> Vec<String> {
    let commit = blocks
        .values()
        .find_map(|b| Commit::from_block(b).ok())
        .unwrap();
    let mut keys = Vec::new();
    proto::repo::walk_mst(blocks, &commit.data, &WalkOptions::default(), |v| {
        if let MstVisit::Record { key, .. } = v {
            keys.push(key.to_owned());
        }
        Ok(())
    })
    .unwrap();
    keys
}

/// `com.atproto.repo.listRecords`: (rkey, blob CID or "", blob size or 0).
async fn list_records(pds: &Pds, did: &str, collection: &str) -> Vec<(String, String, u64)> {
    let out: serde_json::Value = reqwest::get(format!(
        "{}/xrpc/com.atproto.repo.listRecords?repo={did}&collection={collection}&limit=100",
        pds.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    out["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let rkey = r["uri"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned();
            let blob = r["value"]["file"]["ref"]["$link"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let size = r["value"]["file"]["size"].as_u64().unwrap_or_default();
            (rkey, blob, size)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_account_costs_at_most_two_requests_and_redelivery_is_done() {
    let pds = Pds::shared();
    let account = pds.create_account("same").await;
    account.post_text("hello").await;
    let s = setup(pds).await;
    let progress = Progress::default();
    let first = stored(
        s.worker
            .run(
                &job(&account.did, "2026-11-01T00:00:00.000Z", None),
                &progress,
            )
            .await
            .unwrap(),
    );
    let blocks = s.space.len();
    // By DID: one PDS request.
    match s
        .worker
        .run(
            &job(&account.did, "2026-11-01T01:00:00.000Z", None),
            &progress,
        )
        .await
        .unwrap()
    {
        Outcome::Unchanged {
            commit,
            pds_requests,
            latest,
            ..
        } => {
            assert_eq!(commit, first.commit);
            assert_eq!(latest, "2026-11-01T00:00:00.000Z");
            assert_eq!(pds_requests, 1);
        }
        other => panic!("{other:?}"),
    }
    // By handle: resolving it is the second.
    match s
        .worker
        .run(
            &job(&account.handle, "2026-11-01T02:00:00.000Z", None),
            &progress,
        )
        .await
        .unwrap()
    {
        Outcome::Unchanged { pds_requests, .. } => assert!(pds_requests <= 2, "{pds_requests}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.space.len(), blocks, "nothing recorded");
    assert_eq!(s.clock.head(SPACE).await.unwrap(), vec![first.event]);
    // The same job again (a redelivery) is already done, even after the account changed.
    account.post_text("more").await;
    match s
        .worker
        .run(
            &job(&account.did, "2026-11-01T00:00:00.000Z", None),
            &progress,
        )
        .await
        .unwrap()
    {
        Outcome::AlreadyDone { backup, key, .. } => {
            assert_eq!(backup, first.backup);
            assert_eq!(key, "2026-11-01T00:00:00.000Z");
        }
        other => panic!("{other:?}"),
    }
    // A bad key is refused before anything happens.
    let err = s
        .worker
        .run(&job(&account.did, "yesterday", None), &progress)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "InvalidJob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_backups_of_one_account_both_reach_the_history() {
    let pds = Pds::shared();
    let account = pds.create_account("race").await;
    for i in 0..20 {
        account.post_text(&format!("race {i}")).await;
    }
    account.add_file(pseudo_random(1_500_000, 7)).await;
    let s = setup(pds).await;
    let progress = Progress::default();
    let a = job(&account.did, "2026-11-03T00:00:00.000Z", None);
    let b = job(&account.did, "2026-11-03T00:00:00.001Z", None);
    let (ra, rb) = tokio::join!(s.worker.run(&a, &progress), s.worker.run(&b, &progress));
    let (ra, rb) = (stored(ra.unwrap()), stored(rb.unwrap()));
    assert_eq!(ra.commit, rb.commit);
    let reader = Reader::new(s.space.clone(), s.clock.clone(), SPACE);
    let list = reader.list(Some(&account.did)).await.unwrap();
    let keys: Vec<&str> = list.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["2026-11-03T00:00:00.000Z", "2026-11-03T00:00:00.001Z"]
    );
    // Both events are in the history and the head converged to one merge event.
    let head = s.clock.head(SPACE).await.unwrap();
    assert_eq!(head.len(), 1, "{head:?}");
    for key in keys {
        reader
            .verify(&account.did, BackupRef::Key(key), None)
            .await
            .unwrap();
    }
}

/// The clock service (its library, in this process) over real Redis; the worker is an agent
/// key holding a `clock/*` delegation from the Space, as a server worker would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_through_the_clock_service_over_ucanto() {
    use clap::Parser as _;
    use clock_service::client::{ClockClient, Invoker};
    use proto::principal::Ed25519Signer;
    use proto::ucan::{Capability, Delegation, Ucan};

    let pds = Pds::shared();
    let account = pds.create_account("remote").await;
    account.post_text("over ucanto").await;

    let service = Ed25519Signer::generate().unwrap();
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).unwrap();
    let store = format!(
        "redis://127.0.0.1:6379/0#bw-test-{:016x}",
        u64::from_le_bytes(salt)
    );
    let config = clock_service::Config::try_parse_from([
        "clock-service",
        "--store",
        &store,
        "--private-key",
        &service.format(),
    ])
    .unwrap();
    let app = clock_service::App::build(&config, service.clone())
        .await
        .expect("the clock service starts on Redis (scripts/test starts Redis)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, admin, async {
        let _ = stopped.await;
    }));

    let space = Ed25519Signer::generate().unwrap();
    let agent = Ed25519Signer::generate().unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    let proof = Delegation::issue(
        Ucan::builder(&space, agent.did())
            .capability(Capability::new("clock/*", space.did()))
            .expiration(exp),
        &[],
        &[],
    )
    .unwrap();
    let clock = Clock::remote(
        ClockClient::new(url, service.verifier()),
        Invoker {
            issuer: agent,
            clock: space.did().to_owned(),
            proofs: vec![proof],
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalSpace::open(dir.path().join("space")).await.unwrap());
    let xrpc = XrpcClient::new(XrpcConfig::default()).unwrap();
    let identity = resolver(&xrpc, pds);
    let mut settings = Settings::new(dir.path().join("staging"));
    settings.pds_override = Some(Url::parse(&pds.url).unwrap());
    let worker = Worker::new(xrpc, identity, local.clone(), clock.clone(), settings);
    let job = Job {
        account: account.did.clone(),
        space: space.did().to_owned(),
        key: "2026-11-04T00:00:00.000Z".to_owned(),
        access_token: None,
    };
    let first = stored(worker.run(&job, &Progress::default()).await.unwrap());
    assert_eq!(clock.head(space.did()).await.unwrap(), vec![first.event]);
    account.post_text("again").await;
    let second = stored(
        worker
            .run(
                &Job {
                    key: "2026-11-04T01:00:00.000Z".to_owned(),
                    ..job.clone()
                },
                &Progress::default(),
            )
            .await
            .unwrap(),
    );
    assert_eq!(clock.head(space.did()).await.unwrap(), vec![second.event]);
    let reader = Reader::new(local, clock, space.did());
    let list = reader.list(Some(&account.did)).await.unwrap();
    assert_eq!(list.len(), 2);
    // A job for a Space the delegation does not cover is refused before anything is written.
    let other = Job {
        space: Ed25519Signer::generate().unwrap().did().to_owned(),
        ..job
    };
    let err = worker.run(&other, &Progress::default()).await.unwrap_err();
    assert_eq!(err.name(), "InvalidJob");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
