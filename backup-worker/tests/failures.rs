//! Whole backups that fail, against the REAL reference PDS and PLC (`tests::pds`), with a
//! fault-injecting proxy (`support/proxy.rs`) on loopback between the worker and them
//! (`Settings::pds_override`, `IdentityConfig::plc_url`). The proxy forwards to the real
//! servers and breaks their answers:
//!
//! | fault | error | disposition |
//! |---|---|---|
//! | a byte flipped inside a record block of the `getRepo` CAR | `InvalidRepoCar` | permanent |
//! | the commit re-signed with a key the account never had | `InvalidCommit` | permanent |
//! | the CAR cut mid-block behind a complete HTTP message (`content-length` or chunked) | `InvalidRepoCar` | retry |
//! | every `getRepo` / `getBlob` answered 429 with `Retry-After` and `RateLimit-*` | `PdsError` | retry |
//! | the connection closed mid-body (`getRepo`; `getBlob` of a blob > 1 MiB) | `PdsError` | retry |
//! | a blob's bytes altered | `BlobHashMismatch` | permanent |
//!
//! Each failure leaves the Space (its blocks and shard files) and the clock head exactly as
//! they were and no staging spool file behind; with the fault removed, the same job succeeds.
//! Some run on an account that already has a backup, so on the incremental (`since`) path.
//!
//! Key rotation: with a PLC proxy serving the DID document with a NEW `#atproto` key (the
//! legacy form the local PLC writes) and `/<did>/log/audit` unchanged, a commit signed by the
//! account's former key is stored with a warning naming both keys, which
//! `restore::Reader::list` shows; a key only a nullified PLC operation names is no former key
//! (its commit is `InvalidCommit`); an audit log that cannot be read must not turn a rotated
//! key into a permanent failure.

#[path = "support/common.rs"]
mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_worker::backup::{Job, Outcome, Progress, Settings, Summary, Worker};
use backup_worker::clock::Clock;
use backup_worker::error::Error;
use backup_worker::identity::{IdentityConfig, IdentityResolver};
use backup_worker::restore::Reader;
use backup_worker::space::LocalSpace;
use backup_worker::xrpc::{Disposition, XrpcClient, XrpcConfig, XrpcError};
use common::pseudo_random;
use proto::Cid;
use proto::backup::BackupRef;
use proto::car::{CarLimits, decode_car, encode_car};
use proto::repo::{Commit, KeyAlgorithm, PublicKey, SecretKey, UnsignedCommit};
use proxy::{Canned, Fault, Framing, Matcher, Proxy};
use reqwest::Url;
use tests::pds::{Account, Pds};

const SPACE: &str = "did:key:z6MkrZ1r5XBFZjBU34qyD8fueMbMRkKw17BZaq2ivKFjnz2z";
const GET_REPO: &str = "com.atproto.sync.getRepo";
const GET_BLOB: &str = "com.atproto.sync.getBlob";
/// Retries of the worker's XRPC client here: few, so that a storm ends quickly.
const MAX_RETRIES: u32 = 2;
/// Bound on one backup run: a hang fails the test instead of stalling the suite.
const RUN_BOUND: Duration = Duration::from_secs(120);
/// A blob above 1 MiB: several UnixFS leaves, several body chunks.
const BIG_BLOB: usize = 1_500_000;

struct Setup {
    _dir: tempfile::TempDir,
    staging: PathBuf,
    space: Arc<LocalSpace>,
    clock: Clock,
    worker: Worker<LocalSpace>,
    /// The proxy in front of the PDS (every PDS call of the worker goes through it).
    proxy: Proxy,
    /// A client straight to the real servers, for the tests' own checks.
    direct: XrpcClient,
}

fn xrpc_config() -> XrpcConfig {
    XrpcConfig {
        max_retries: MAX_RETRIES,
        backoff_base: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        // Longer than the 1–2 s storms below (those are waited out), far shorter than the
        // hour-long one (which is not).
        max_rate_limit_wait: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        ..XrpcConfig::default()
    }
}

/// A worker whose PDS is a fresh proxy in front of the real PDS; its PLC is `plc` (a proxy in
/// front of the real PLC) or the real PLC.
async fn setup(pds: &Pds, plc: Option<&Proxy>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let space = Arc::new(LocalSpace::open(dir.path().join("space")).await.unwrap());
    let clock = Clock::embedded(&dir.path().join("clock.redb"))
        .await
        .unwrap();
    let proxy = Proxy::start(&pds.url).await;
    let xrpc = XrpcClient::new(xrpc_config()).unwrap();
    let identity = IdentityResolver::new(
        xrpc.clone(),
        IdentityConfig {
            plc_url: plc.map_or_else(|| Url::parse(&pds.plc_url).unwrap(), Proxy::url),
            handle_resolver: Some(Url::parse(&pds.url).unwrap()),
            allow_insecure: true,
        },
    );
    let staging = dir.path().join("staging");
    let mut settings = Settings::new(&staging);
    settings.pds_override = Some(proxy.url());
    settings.shard_size = 512 * 1024;
    let worker = Worker::new(xrpc, identity, space.clone(), clock.clone(), settings);
    Setup {
        _dir: dir,
        staging,
        space,
        clock,
        worker,
        proxy,
        direct: XrpcClient::new(XrpcConfig::default()).unwrap(),
    }
}

fn job(did: &str, key: &str) -> Job {
    Job {
        account: did.to_owned(),
        space: SPACE.to_owned(),
        key: key.to_owned(),
        access_token: None,
    }
}

/// What a failed backup must not change: the Space's blocks and shard files, the clock head.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    blocks: Vec<String>,
    shard_files: Vec<String>,
    head: Vec<Cid>,
}

async fn snapshot(s: &Setup) -> Snapshot {
    let mut blocks: Vec<String> = s.space.cids().iter().map(Cid::to_string).collect();
    blocks.sort();
    let mut shard_files: Vec<String> = std::fs::read_dir(s.space.dir().join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shard_files.sort();
    Snapshot {
        blocks,
        shard_files,
        head: s.clock.head(SPACE).await.unwrap(),
    }
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "spool"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn assert_no_spool(dir: &Path) {
    // `Worker::run` waits for cancelled downloads' staging writes before it returns, so the
    // spool file is gone by the time the error is seen.
    let left = spool_files(dir);
    assert!(left.is_empty(), "staging spool files left: {left:?}");
}

async fn run(s: &Setup, job: &Job) -> Result<Outcome, Error> {
    match tokio::time::timeout(RUN_BOUND, s.worker.run(job, &Progress::default())).await {
        Ok(result) => result,
        Err(_) => panic!("backup {} did not end within {RUN_BOUND:?}", job.key),
    }
}

/// Runs `job` expecting the error `name` with `disposition`, and checks that it changed
/// nothing.
async fn expect_failure(s: &Setup, job: &Job, name: &str, disposition: Disposition) -> Error {
    let before = snapshot(s).await;
    let faulted = s.proxy.faulted();
    let err = match run(s, job).await {
        Err(e) => e,
        Ok(outcome) => panic!("expected {name}, the backup ended with {outcome:?}"),
    };
    assert_eq!(err.name(), name, "{err}");
    assert_eq!(err.disposition(), disposition, "{err}");
    assert!(
        s.proxy.faulted() > faulted,
        "the fault was never applied: {err}"
    );
    assert_eq!(
        snapshot(s).await,
        before,
        "the Space and the clock are unchanged after {err}"
    );
    assert_no_spool(&s.staging).await;
    err
}

/// Runs `job` expecting a stored backup of the PDS's current commit, and verifies it.
async fn expect_success(s: &Setup, job: &Job, pds: &Pds) -> Summary {
    let summary = match run(s, job).await {
        Ok(Outcome::Stored(summary)) => *summary,
        other => panic!("expected a stored backup, got {other:?}"),
    };
    let latest = s
        .direct
        .get_latest_commit(&Url::parse(&pds.url).unwrap(), &summary.did)
        .await
        .unwrap();
    assert_eq!(summary.commit, latest.cid);
    assert_eq!(s.clock.head(SPACE).await.unwrap(), vec![summary.event]);
    assert_no_spool(&s.staging).await;
    let reader = Reader::new(s.space.clone(), s.clock.clone(), SPACE);
    reader
        .verify(&summary.did, BackupRef::Key(&job.key), None)
        .await
        .unwrap();
    summary
}

/// An account with posts (one carrying `marker` in its text), a small blob and one above
/// 1 MiB; returns (small blob, big blob).
async fn populate(account: &Account, marker: &str, seed: u8) -> (String, String) {
    for i in 0..10 {
        account.post_text(&format!("post {i}")).await;
    }
    account.post_text(marker).await;
    let small = account.add_file(pseudo_random(30_000, seed)).await.0;
    let big = account.add_file(pseudo_random(BIG_BLOB, seed + 1)).await.0;
    (small, big)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An unsigned varint at `at`: (value, its length).
fn varint(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in bytes.get(at..)?.iter().take(9).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The CAR's sections: (start, length) of each, varint included.
fn sections(car: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let Some((header, n)) = varint(car, 0) else {
        return out;
    };
    let mut at = n + header;
    while let Some((len, n)) = varint(car, at) {
        if at + n + len > car.len() {
            break;
        }
        out.push((at, n + len));
        at += n + len;
    }
    out
}

/// A cut inside the data of the middle section of a CAR (never on a section boundary).
fn mid_block(car: &[u8]) -> usize {
    let all = sections(car);
    assert!(!all.is_empty(), "not a CAR: {} bytes", car.len());
    let (start, len) = all[all.len() / 2];
    start + len / 2
}

/// Length of a repo block's CID in a CAR section (CIDv1, DAG-CBOR, sha2-256).
const REPO_CID_LEN: usize = 36;

/// Flips a bit of `marker` where it sits inside a block's data (a record's text), leaving the
/// CAR's framing intact. A body without the marker there is passed on unchanged (and the test
/// then fails on the backup that succeeded).
fn flip_in_record(marker: &str) -> Fault {
    let marker = marker.as_bytes().to_vec();
    Fault::Rewrite(Arc::new(move |body: &[u8]| {
        let mut body = body.to_vec();
        let Some(at) = find(&body, &marker) else {
            return body;
        };
        let inside_data = sections(&body).iter().any(|&(start, len)| {
            varint(&body, start).is_some_and(|(_, n)| {
                start + n + REPO_CID_LEN <= at && at + marker.len() <= start + len
            })
        });
        if inside_data {
            body[at] ^= 0x01;
        }
        body
    }))
}

/// Re-signs the CAR's root commit with `key` and makes the new commit the root.
fn forge_commit(key: Arc<SecretKey>) -> Fault {
    Fault::Rewrite(Arc::new(move |body: &[u8]| {
        let (roots, blocks) = decode_car(body, &CarLimits::default()).unwrap();
        let root = roots[0];
        let old = blocks.iter().find(|b| *b.cid() == root).unwrap();
        let commit = Commit::from_block(old).unwrap();
        let forged = UnsignedCommit {
            did: commit.did,
            data: commit.data,
            rev: commit.rev,
            prev: commit.prev,
        }
        .sign(&key);
        let rest = blocks.iter().filter(|b| *b.cid() != root);
        encode_car(&[*forged.cid()], std::iter::once(&forged).chain(rest))
    }))
}

/// A 429 with `Retry-After: secs` and `RateLimit-*` saying the window resets in `secs`.
fn storm(secs: u64) -> Fault {
    Fault::Respond(Arc::new(move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let h = |k: &str, v: String| (k.to_owned(), v);
        Canned {
            status: 429,
            headers: vec![
                h("content-type", "application/json".into()),
                h("retry-after", secs.to_string()),
                h("ratelimit-limit", "3000".into()),
                h("ratelimit-remaining", "0".into()),
                h("ratelimit-reset", (now + secs).to_string()),
                h("ratelimit-policy", "3000;w=300".into()),
            ],
            body: br#"{"error":"RateLimitExceeded","message":"Rate Limit Exceeded"}"#.to_vec(),
        }
    }))
}

fn cut_at(f: fn(&[u8]) -> usize) -> proxy::Cut {
    Arc::new(f)
}

fn half(body: &[u8]) -> usize {
    body.len() / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_with_a_wrong_hash_is_invalid_repo_car_on_full_and_incremental_backups() {
    let pds = Pds::shared();
    let account = pds.create_account("hash").await;
    let marker = format!("marker one of {}", account.handle);
    populate(&account, &marker, 1).await;
    let s = setup(pds, None).await;
    let repo = proxy::xrpc(GET_REPO);

    // Full backup.
    s.proxy.add(repo.clone(), flip_in_record(&marker));
    let first_job = job(&account.did, "2026-12-01T00:00:00.000Z");
    let err = expect_failure(&s, &first_job, "InvalidRepoCar", Disposition::Permanent).await;
    assert!(err.to_string().contains("do not hash"), "{err}");
    assert!(s.space.is_empty());
    s.proxy.clear();
    let first = expect_success(&s, &first_job, pds).await;
    assert_eq!(first.since, None);

    // Incremental: the new record is in the `since` download.
    let marker = format!("marker two of {}", account.handle);
    account.post_text(&marker).await;
    s.proxy.add(repo.clone(), flip_in_record(&marker));
    let second_job = job(&account.did, "2026-12-02T00:00:00.000Z");
    expect_failure(&s, &second_job, "InvalidRepoCar", Disposition::Permanent).await;
    s.proxy.clear();
    let second = expect_success(&s, &second_job, pds).await;
    assert_eq!(second.since.as_deref(), Some(first.rev.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_signed_by_a_key_the_account_never_had_is_invalid_commit() {
    let pds = Pds::shared();
    let account = pds.create_account("forged").await;
    populate(&account, "forged", 3).await;
    let s = setup(pds, None).await;
    let repo = proxy::xrpc(GET_REPO);
    let key = Arc::new(SecretKey::generate(KeyAlgorithm::K256).unwrap());

    let first_job = job(&account.did, "2026-12-01T00:00:00.000Z");
    s.proxy.add(repo.clone(), forge_commit(key.clone()));
    let err = expect_failure(&s, &first_job, "InvalidCommit", Disposition::Permanent).await;
    assert!(matches!(err, Error::Commit { .. }), "{err:?}");
    s.proxy.clear();
    let first = expect_success(&s, &first_job, pds).await;
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);

    // Incremental.
    account.post_text("after the first backup").await;
    let second_job = job(&account.did, "2026-12-02T00:00:00.000Z");
    s.proxy.add(repo, forge_commit(key));
    expect_failure(&s, &second_job, "InvalidCommit", Disposition::Permanent).await;
    s.proxy.clear();
    let second = expect_success(&s, &second_job, pds).await;
    assert_eq!(second.since.as_deref(), Some(first.rev.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_car_is_a_retryable_invalid_repo_car() {
    let pds = Pds::shared();
    let account = pds.create_account("trunc").await;
    populate(&account, "truncated", 5).await;
    let s = setup(pds, None).await;
    let repo = proxy::xrpc(GET_REPO);
    let key = "2026-12-01T00:00:00.000Z";

    for framing in [Framing::Length, Framing::Chunked] {
        s.proxy.add(
            repo.clone(),
            Fault::Truncate {
                cut: cut_at(mid_block),
                framing,
            },
        );
        let err = expect_failure(
            &s,
            &job(&account.did, key),
            "InvalidRepoCar",
            Disposition::Retry,
        )
        .await;
        assert!(
            matches!(
                err,
                Error::RepoCar {
                    source: proto::car::CarError::Truncated { .. },
                    ..
                }
            ),
            "{framing:?}: {err:?}"
        );
        s.proxy.clear();
    }
    expect_success(&s, &job(&account.did, key), pds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_storm_is_a_retryable_pds_error_after_bounded_requests() {
    let pds = Pds::shared();
    let account = pds.create_account("storm").await;
    populate(&account, "storm", 7).await;
    let s = setup(pds, None).await;
    let (repo, blob) = (proxy::xrpc(GET_REPO), proxy::xrpc(GET_BLOB));
    let key = "2026-12-01T00:00:00.000Z";
    let rate_limited = |err: &Error, call: &str| match err {
        Error::Pds { call: c, source } => {
            c.starts_with(call) && matches!(source, XrpcError::RateLimited { .. })
        }
        _ => false,
    };

    // Every getRepo answers 429 (retry after 1 s): the client waits, retries MAX_RETRIES
    // times, then gives the job back.
    s.proxy.add(repo.clone(), storm(1));
    s.proxy.add(blob.clone(), storm(1));
    let err = expect_failure(&s, &job(&account.did, key), "PdsError", Disposition::Retry).await;
    assert!(rate_limited(&err, "getRepo"), "{err:?}");
    assert_eq!(s.proxy.hits(&repo), MAX_RETRIES as usize + 1);
    assert_eq!(s.proxy.hits(&blob), 0);
    s.proxy.clear();

    // getRepo passes, every getBlob answers 429.
    s.proxy.add(blob.clone(), storm(1));
    let err = expect_failure(&s, &job(&account.did, key), "PdsError", Disposition::Retry).await;
    assert!(rate_limited(&err, "getBlob"), "{err:?}");
    let blob_hits = s.proxy.hits(&blob);
    assert!(
        (1..=2 * (MAX_RETRIES as usize + 1)).contains(&blob_hits),
        "{blob_hits} getBlob requests for 2 blobs"
    );
    s.proxy.clear();

    // The storm is over (the limiter waits out the last reset): the same job succeeds.
    expect_success(&s, &job(&account.did, key), pds).await;

    // A storm asking for an hour is not waited out: one request, and the wait is reported.
    let long = setup(pds, None).await;
    long.proxy.add(repo.clone(), storm(3600));
    let err = expect_failure(
        &long,
        &job(&account.did, key),
        "PdsError",
        Disposition::Retry,
    )
    .await;
    match &err {
        Error::Pds {
            source: XrpcError::RateLimited { retry_after, .. },
            ..
        } => assert!(
            retry_after.is_some_and(|d| d >= Duration::from_secs(3000)),
            "{retry_after:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(long.proxy.hits(&repo), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pds_dying_mid_stream_is_a_retryable_pds_error() {
    let pds = Pds::shared();
    let account = pds.create_account("dies").await;
    let (_, big) = populate(&account, "dies", 9).await;
    let s = setup(pds, None).await;
    let repo = proxy::xrpc(GET_REPO);
    let key = "2026-12-01T00:00:00.000Z";
    let body_failed = |err: &Error, call: &str| match err {
        Error::Pds { call: c, source } => {
            c.starts_with(call) && matches!(source, XrpcError::Body { .. })
        }
        _ => false,
    };

    // getRepo: the connection closes halfway through the CAR.
    for framing in [Framing::Length, Framing::Chunked] {
        s.proxy.add(
            repo.clone(),
            Fault::Die {
                cut: cut_at(mid_block),
                framing,
            },
        );
        let err = expect_failure(&s, &job(&account.did, key), "PdsError", Disposition::Retry).await;
        assert!(body_failed(&err, "getRepo"), "{framing:?}: {err:?}");
        s.proxy.clear();
    }

    // getBlob of the blob above 1 MiB: closed halfway.
    let big_blob: Matcher = proxy::xrpc_with(GET_BLOB, &big);
    s.proxy.add(
        big_blob.clone(),
        Fault::Die {
            cut: cut_at(half),
            framing: Framing::Length,
        },
    );
    let err = expect_failure(&s, &job(&account.did, key), "PdsError", Disposition::Retry).await;
    assert!(body_failed(&err, &format!("getBlob {big}")), "{err:?}");
    s.proxy.clear();
    let first = expect_success(&s, &job(&account.did, key), pds).await;
    assert_eq!(first.blobs_downloaded, 2);

    // Incremental: a new big blob dies mid-stream, then arrives.
    let (newer, _) = account.add_file(pseudo_random(BIG_BLOB, 11)).await;
    account.post_text("and a post").await;
    let second_job = job(&account.did, "2026-12-02T00:00:00.000Z");
    s.proxy.add(
        proxy::xrpc_with(GET_BLOB, &newer),
        Fault::Die {
            cut: cut_at(half),
            framing: Framing::Chunked,
        },
    );
    let err = expect_failure(&s, &second_job, "PdsError", Disposition::Retry).await;
    assert!(body_failed(&err, &format!("getBlob {newer}")), "{err:?}");
    s.proxy.clear();
    let second = expect_success(&s, &second_job, pds).await;
    assert_eq!(second.since.as_deref(), Some(first.rev.as_str()));
    assert_eq!(second.blobs_downloaded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_whose_bytes_do_not_match_its_cid_is_blob_hash_mismatch() {
    let pds = Pds::shared();
    let account = pds.create_account("blobhash").await;
    let (small, big) = populate(&account, "blob hash", 13).await;
    let s = setup(pds, None).await;
    let key = "2026-12-01T00:00:00.000Z";
    let flip_last: Fault = Fault::Rewrite(Arc::new(|body: &[u8]| {
        let mut body = body.to_vec();
        if let Some(last) = body.last_mut() {
            *last ^= 0x01;
        }
        body
    }));

    for cid in [&small, &big] {
        s.proxy
            .add(proxy::xrpc_with(GET_BLOB, cid), flip_last.clone());
        let err = expect_failure(
            &s,
            &job(&account.did, key),
            "BlobHashMismatch",
            Disposition::Permanent,
        )
        .await;
        match &err {
            Error::BlobHashMismatch { cid: bad, .. } => assert_eq!(&bad.to_string(), cid),
            other => panic!("{other:?}"),
        }
        s.proxy.clear();
    }
    expect_success(&s, &job(&account.did, key), pds).await;
}

/// The legacy `publicKeyMultibase` the local PLC writes for a k256 key: base58btc of the
/// uncompressed point.
fn legacy_multibase(key: &PublicKey) -> String {
    let PublicKey::K256(vk) = key else {
        panic!("a k256 key")
    };
    format!("z{}", base58(vk.to_sec1_point(false).as_bytes()))
}

fn base58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new();
    for &b in bytes {
        let mut carry = u32::from(b);
        for d in &mut digits {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char))
        .collect()
}

/// Serves the DID document with `key` as its `#atproto` key, in the form it had.
fn rotate_document(key: &PublicKey) -> Fault {
    let multibase = legacy_multibase(key);
    Fault::Rewrite(Arc::new(move |body: &[u8]| {
        let mut doc: serde_json::Value = serde_json::from_slice(body).unwrap();
        let methods = doc["verificationMethod"].as_array_mut().unwrap();
        let atproto = methods
            .iter_mut()
            .find(|m| m["id"].as_str().is_some_and(|id| id.ends_with("#atproto")))
            .unwrap();
        assert_eq!(
            atproto["type"], "EcdsaSecp256k1VerificationKey2019",
            "the local PLC writes the legacy form"
        );
        atproto["publicKeyMultibase"] = multibase.clone().into();
        serde_json::to_vec(&doc).unwrap()
    }))
}

/// The account's current key as the real PLC has it.
async fn real_key(pds: &Pds, did: &str) -> PublicKey {
    IdentityResolver::new(
        XrpcClient::new(XrpcConfig::default()).unwrap(),
        IdentityConfig {
            plc_url: Url::parse(&pds.plc_url).unwrap(),
            handle_resolver: None,
            allow_insecure: true,
        },
    )
    .resolve(did)
    .await
    .unwrap()
    .signing_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_signed_by_a_former_key_is_stored_with_a_warning() {
    let pds = Pds::shared();
    let account = pds.create_account("rotated").await;
    populate(&account, "rotated", 15).await;
    let plc = Proxy::start(&pds.plc_url).await;
    let old = real_key(pds, &account.did).await;
    let new = SecretKey::generate(KeyAlgorithm::K256)
        .unwrap()
        .public_key();
    plc.add(
        proxy::path(&format!("/{}", account.did)),
        rotate_document(&new),
    );
    let s = setup(pds, Some(&plc)).await;
    let audit = proxy::path(&format!("/{}/log/audit", account.did));

    let key = "2026-12-01T00:00:00.000Z";
    let summary = expect_success(&s, &job(&account.did, key), pds).await;
    assert!(plc.hits(&audit) >= 1, "the audit log was read");
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    let warning = &summary.warnings[0];
    assert!(
        warning.contains(&old.did_key()),
        "names the former key: {warning}"
    );
    assert!(
        warning.contains(&new.did_key()),
        "names the current key: {warning}"
    );

    let reader = Reader::new(s.space.clone(), s.clock.clone(), SPACE);
    let list = reader.list(Some(&account.did)).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].warnings, summary.warnings);
    // Re-verification: the former key checks the signature; the current one cannot, and the
    // warning says why.
    let v = reader
        .verify(&account.did, BackupRef::Latest, Some(old))
        .await
        .unwrap();
    assert!(v.signature_checked);
    let v = reader
        .verify(&account.did, BackupRef::Latest, Some(new))
        .await
        .unwrap();
    assert!(!v.signature_checked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_plc_audit_log_is_retryable_not_a_bad_commit() {
    let pds = Pds::shared();
    let account = pds.create_account("noaudit").await;
    populate(&account, "no audit", 17).await;
    let plc = Proxy::start(&pds.plc_url).await;
    let new = SecretKey::generate(KeyAlgorithm::K256)
        .unwrap()
        .public_key();
    let document = proxy::path(&format!("/{}", account.did));
    let audit = proxy::path(&format!("/{}/log/audit", account.did));
    plc.add(document.clone(), rotate_document(&new));
    plc.add(
        audit.clone(),
        Fault::Respond(Arc::new(|| Canned {
            status: 503,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"message":"unavailable"}"#.to_vec(),
        })),
    );
    let s = setup(pds, Some(&plc)).await;
    let key = "2026-12-01T00:00:00.000Z";

    // Whether the account rotated its key cannot be known while the PLC directory is down:
    // that is no reason to give the job up for good.
    let before = snapshot(&s).await;
    let err = run(&s, &job(&account.did, key)).await.unwrap_err();
    assert!(plc.hits(&audit) >= 1, "the audit log was asked for");
    assert_eq!(snapshot(&s).await, before);
    assert_no_spool(&s.staging).await;
    assert_eq!(
        err.disposition(),
        Disposition::Retry,
        "{}: {err} (the PLC audit log answered 503)",
        err.name()
    );
    assert_eq!(err.name(), "PlcLogUnavailable", "{err}");

    plc.clear();
    plc.add(document, rotate_document(&new));
    let summary = expect_success(&s, &job(&account.did, key), pds).await;
    assert_eq!(summary.warnings.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_signed_by_a_nullified_plc_key_is_invalid_commit() {
    // A PLC operation that a recovery nullified was never the account's history: its key is
    // typically the one of whoever took the account over. A commit signed by it is forged.
    let pds = Pds::shared();
    let account = pds.create_account("nullify").await;
    populate(&account, "nullified", 19).await;
    let attacker = Arc::new(SecretKey::generate(KeyAlgorithm::K256).unwrap());
    let attacker_did_key = attacker.public_key().did_key();
    let plc = Proxy::start(&pds.plc_url).await;
    plc.add(
        proxy::path(&format!("/{}/log/audit", account.did)),
        Fault::Rewrite(Arc::new(move |body: &[u8]| {
            let mut log: Vec<serde_json::Value> = serde_json::from_slice(body).unwrap();
            let mut op = log.last().unwrap().clone();
            op["operation"]["verificationMethods"]["atproto"] = attacker_did_key.clone().into();
            op["nullified"] = true.into();
            log.push(op);
            serde_json::to_vec(&log).unwrap()
        })),
    );
    let s = setup(pds, Some(&plc)).await;
    s.proxy.add(proxy::xrpc(GET_REPO), forge_commit(attacker));
    let key = "2026-12-01T00:00:00.000Z";
    expect_failure(
        &s,
        &job(&account.did, key),
        "InvalidCommit",
        Disposition::Permanent,
    )
    .await;
    s.proxy.clear();
    let summary = expect_success(&s, &job(&account.did, key), pds).await;
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
}

#[test]
fn base58_matches_did_keys() {
    // did:key is base58btc of the multicodec-prefixed compressed point.
    let key = SecretKey::generate(KeyAlgorithm::K256)
        .unwrap()
        .public_key();
    let mut prefixed = vec![0xe7, 0x01];
    prefixed.extend_from_slice(&key.to_compressed());
    assert_eq!(format!("did:key:z{}", base58(&prefixed)), key.did_key());
    assert_eq!(base58(&[0, 0, 1]), "112");
    let legacy = legacy_multibase(&key);
    assert_eq!(
        PublicKey::from_legacy("EcdsaSecp256k1VerificationKey2019", &legacy).unwrap(),
        key
    );
}
