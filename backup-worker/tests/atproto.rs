//! The ATProto side of the backup worker against the REAL reference PDS (`@atproto/pds`, pinned
//! in `tests/pds`, started by `tests::pds` on loopback with an in-memory PLC):
//!
//! - identity: handle → DID through the PDS, DID → the PLC's (legacy-form) DID document → PDS
//!   endpoint and signing key, which equals the PLC's `did:key` for the account;
//! - `getLatestCommit`, `getRepo` streamed into `proto::car::CarReader`, the commit signature
//!   verified with `proto::repo`, the MST walked (every record present, in order, and rebuilt
//!   to the same root: our layer rules are the reference's), in exactly 2 PDS requests;
//! - `getRepo?since=`: only new blocks; the diff alone reports the missing old blocks by CID,
//!   the union with the previous download is complete;
//! - `listBlobs` paging (and `since`), `getBlob` streams whose bytes hash to their CIDs, named
//!   errors for unknown repos and blobs;
//! - `getPreferences` with the account's token, and a refused token;
//! - the rate limiter against the PDS's own limiter (`PDS_LOCAL_RATE_LIMIT`): `RateLimit-*`
//!   honoured so no request fails, and a wait too long to hold a worker is `RateLimited`.
//!
//! The reference PDS never sends `Retry-After`, so that header, a 429 storm and a server dying
//! mid-stream are tested against a tiny local HTTP stub (`Stub` below); so are `did:web` and
//! the `/.well-known/atproto-did` handle method, which need a web host.
//!
//! A PDS that cannot start fails these tests with the reason (run `scripts/test`, which
//! installs `tests/pds`); nothing is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backup_worker::identity::{IdentityConfig, IdentityError, IdentityResolver};
use backup_worker::xrpc::{Disposition, StreamReader, XrpcClient, XrpcConfig, XrpcError, host_key};
use futures_util::StreamExt;
use proto::car::{CarError, CarLimits, CarReader};
use proto::repo::{self, BlockKind, KeyAlgorithm, MstVisit, PublicKey, WalkOptions};
use proto::{Block, Cid};
use reqwest::Url;
use serde_json::json;
use tests::pds::{Pds, PdsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> XrpcClient {
    XrpcClient::new(XrpcConfig::default()).unwrap()
}

fn resolver(xrpc: &XrpcClient, pds: &Pds) -> IdentityResolver {
    IdentityResolver::new(
        xrpc.clone(),
        IdentityConfig {
            plc_url: Url::parse(&pds.plc_url).unwrap(),
            handle_resolver: Some(Url::parse(&pds.url).unwrap()),
            allow_insecure: true,
        },
    )
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

/// Streams `getRepo` through `StreamReader` into `CarReader` on a blocking thread: the roots
/// and every block (hash-checked by the reader).
async fn download_repo(
    xrpc: &XrpcClient,
    pds: &Url,
    did: &str,
    since: Option<&str>,
) -> (Vec<Cid>, HashMap<Cid, Block>) {
    let download = xrpc.get_repo(pds, did, since).await.unwrap();
    assert_eq!(
        download.content_type.as_deref(),
        Some("application/vnd.ipld.car")
    );
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::new(StreamReader::new(download.body, handle));
        let mut car = CarReader::new(reader, &CarLimits::default()).unwrap();
        let roots = car.roots().to_vec();
        let mut blocks = HashMap::new();
        while let Some(block) = car.next_block().unwrap() {
            blocks.insert(*block.cid(), block);
        }
        (roots, blocks)
    })
    .await
    .unwrap()
}

/// Reads a streamed body whole (tests only: the blobs here are small).
async fn collect(mut body: backup_worker::xrpc::ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Walks the repo's MST with records fetched: (summary, key → record CID in walk order).
fn walk(blocks: &HashMap<Cid, Block>, data: &Cid) -> (repo::MstWalk, Vec<(String, Cid)>) {
    let mut records = Vec::new();
    let opts = WalkOptions {
        fetch_records: true,
        ..WalkOptions::default()
    };
    let summary = repo::walk_mst(blocks, data, &opts, |visit| {
        if let MstVisit::Record { key, cid, .. } = visit {
            records.push((key.to_string(), *cid));
        }
        Ok(())
    })
    .unwrap();
    (summary, records)
}

fn notes(from: usize, to: usize) -> Vec<(String, serde_json::Value)> {
    (from..to)
        .map(|i| {
            (
                format!("n{i:04}"),
                json!({"$type": "com.example.note", "text": format!("note {i}"), "createdAt": "2026-01-01T00:00:00.000Z"}),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_from_handle_and_did() {
    let pds = Pds::shared();
    let alice = pds.create_account("ident").await;
    let xrpc = client();
    let resolver = resolver(&xrpc, pds);

    let did = resolver.resolve_handle(&alice.handle).await.unwrap();
    assert_eq!(did, alice.did);

    let by_handle = resolver
        .resolve(&alice.handle.to_uppercase())
        .await
        .unwrap();
    assert_eq!(by_handle.did, alice.did);
    assert_eq!(by_handle.handle.as_deref(), Some(alice.handle.as_str()));
    assert!(by_handle.handle_verified);
    assert_eq!(by_handle.pds.as_str().trim_end_matches('/'), pds.public_url);
    assert_eq!(by_handle.signing_key.algorithm(), KeyAlgorithm::K256);

    let by_did = resolver.resolve(&alice.did).await.unwrap();
    assert_eq!(by_did.signing_key, by_handle.signing_key);
    assert!(!by_did.handle_verified);
    assert_eq!(by_did.handle, by_handle.handle);

    // The PLC's own did:key form of the same key (its `/data` view) agrees with what we read
    // from the legacy document.
    let data = xrpc
        .get_json_url(url(&format!("{}/{}/data", pds.plc_url, alice.did)))
        .await
        .unwrap();
    let did_key = data["verificationMethods"]["atproto"].as_str().unwrap();
    assert_eq!(
        PublicKey::from_did_key(did_key).unwrap(),
        by_did.signing_key
    );
    assert_eq!(by_did.signing_key.did_key(), did_key);

    // Named failures.
    assert!(matches!(
        resolver.resolve("nobody-here.test").await,
        Err(IdentityError::HandleNotFound { .. })
    ));
    let err = resolver
        .resolve("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::DidNotFound { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent);
    // Without the test switch the local PDS endpoint is refused.
    let strict = IdentityResolver::new(
        xrpc.clone(),
        IdentityConfig {
            allow_insecure: false,
            ..resolver.config().clone()
        },
    );
    assert!(matches!(
        strict.resolve_did(&alice.did).await,
        Err(IdentityError::BadEndpoint { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_download_verifies_and_walks() {
    let pds = Pds::shared();
    let acct = pds.create_account("repo").await;
    let mut keys = acct.create_records("com.example.note", notes(0, 120)).await;
    keys.push(acct.post_text("hello from the backup test").await.key);
    let xrpc = client();
    let identity = resolver(&xrpc, pds).resolve_did(&acct.did).await.unwrap();
    let pds_url = identity.pds.clone();
    let before = xrpc.host_stats(pds_url.as_str());

    let latest = xrpc.get_latest_commit(&pds_url, &acct.did).await.unwrap();
    let (roots, blocks) = download_repo(&xrpc, &pds_url, &acct.did, None).await;
    let after = xrpc.host_stats(pds_url.as_str());
    assert_eq!(
        after.requests - before.requests,
        2,
        "getLatestCommit + getRepo"
    );

    assert_eq!(roots, vec![latest.cid]);
    let commit_block = &blocks[&latest.cid];
    let commit = repo::verify_commit(commit_block, &acct.did, &identity.signing_key).unwrap();
    assert_eq!(commit.rev, latest.rev);
    assert_eq!(commit.version, 3);
    // Another account's key does not verify it.
    let other = pds.create_account("other").await;
    let other_key = resolver(&xrpc, pds)
        .resolve_did(&other.did)
        .await
        .unwrap()
        .signing_key;
    assert!(matches!(
        repo::verify_commit(commit_block, &acct.did, &other_key),
        Err(repo::CommitError::Signature { .. })
    ));

    let (summary, records) = walk(&blocks, &commit.data);
    assert!(summary.is_complete(), "{:?}", summary.missing);
    assert_eq!(summary.records as usize, keys.len());
    let walked: BTreeMap<String, Cid> = records.iter().cloned().collect();
    let expected: HashSet<&String> = keys.iter().collect();
    assert_eq!(walked.keys().collect::<HashSet<_>>(), expected);
    assert!(summary.nodes > 1, "121 records span several MST nodes");
    // Every block of the CAR is the commit, a node or a record.
    assert_eq!(blocks.len() as u64, 1 + summary.nodes + summary.records);
    // The reference PDS's tree is the deterministic MST of its entries.
    let (root, _) = repo::build_mst(&walked).unwrap();
    assert_eq!(root, commit.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_gives_only_new_blocks() {
    let pds = Pds::shared();
    let acct = pds.create_account("since").await;
    acct.create_records("com.example.note", notes(0, 40)).await;
    let xrpc = client();
    let identity = resolver(&xrpc, pds).resolve_did(&acct.did).await.unwrap();
    let first_rev = xrpc
        .get_latest_commit(&identity.pds, &acct.did)
        .await
        .unwrap()
        .rev;
    let (_, full) = download_repo(&xrpc, &identity.pds, &acct.did, None).await;

    let new_keys = acct.create_records("com.example.note", notes(40, 43)).await;
    let latest = xrpc
        .get_latest_commit(&identity.pds, &acct.did)
        .await
        .unwrap();
    assert!(latest.rev > first_rev);
    let (roots, diff) =
        download_repo(&xrpc, &identity.pds, &acct.did, Some(first_rev.as_str())).await;
    assert_eq!(roots, vec![latest.cid]);
    assert!(
        diff.len() < full.len() / 2,
        "diff {} vs full {}",
        diff.len(),
        full.len()
    );
    assert!(
        diff.keys().all(|cid| !full.contains_key(cid)),
        "only new blocks"
    );

    let commit = repo::verify_commit(&diff[&latest.cid], &acct.did, &identity.signing_key).unwrap();
    // The diff alone lacks the old records (and untouched subtrees), reported by CID, all of
    // which the previous download has.
    let (partial, _) = walk(&diff, &commit.data);
    assert!(!partial.is_complete());
    for missing in &partial.missing {
        assert!(full.contains_key(&missing.cid), "{missing:?}");
        assert!(matches!(
            missing.kind,
            BlockKind::Record | BlockKind::MstNode
        ));
    }
    // The new records are in the diff.
    let new_records: HashSet<String> = new_keys.into_iter().collect();
    let (summary, records) = walk(&full.into_iter().chain(diff).collect(), &commit.data);
    assert!(summary.is_complete());
    assert_eq!(summary.records, 43);
    let keys: HashSet<String> = records.into_iter().map(|(k, _)| k).collect();
    assert!(new_records.is_subset(&keys));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_listed_in_pages_and_match_their_cids() {
    let pds = Pds::shared();
    let acct = pds.create_account("blobs").await;
    let mut uploaded = BTreeMap::new();
    for (i, size) in [1usize, 1024, 300 * 1024, 1_500_000, 7]
        .into_iter()
        .enumerate()
    {
        let bytes: Vec<u8> = (0..size).map(|j| (j * 31 + i * 7) as u8).collect();
        let (cid, _) = acct.add_file(bytes.clone()).await;
        uploaded.insert(cid, bytes);
    }
    let xrpc = client();
    let identity = resolver(&xrpc, pds).resolve_did(&acct.did).await.unwrap();
    let pds_url = identity.pds.clone();

    let before = xrpc.host_stats(pds_url.as_str()).requests;
    let listed: Vec<Cid> = xrpc
        .list_blobs(&pds_url, &acct.did, None, 2)
        .map(Result::unwrap)
        .collect()
        .await;
    // 5 blobs in pages of 2: three pages, then the empty one that ends the listing.
    assert_eq!(xrpc.host_stats(pds_url.as_str()).requests - before, 4);
    let listed_text: Vec<String> = listed.iter().map(Cid::to_string).collect();
    assert_eq!(
        listed_text,
        uploaded.keys().cloned().collect::<Vec<_>>(),
        "ascending, all"
    );

    for cid in &listed {
        let download = xrpc.get_blob(&pds_url, &acct.did, cid).await.unwrap();
        let bytes = collect(download.body).await;
        proto::ipld::verify_cid(cid, &bytes).unwrap();
        assert_eq!(&bytes, &uploaded[&cid.to_string()]);
        assert_eq!(cid.codec(), proto::ipld::RAW);
    }

    // `since`: only blobs of records written after that rev.
    let rev = xrpc
        .get_latest_commit(&pds_url, &acct.did)
        .await
        .unwrap()
        .rev;
    let (new_cid, _) = acct.add_file(b"a later blob".to_vec()).await;
    let since: Vec<String> = xrpc
        .list_blobs(&pds_url, &acct.did, Some(&rev), 1000)
        .map(|c| c.unwrap().to_string())
        .collect()
        .await;
    assert_eq!(since, vec![new_cid]);

    // Named errors.
    let absent = proto::ipld::cid_sha256(proto::ipld::RAW, b"never uploaded");
    let err = xrpc
        .get_blob(&pds_url, &acct.did, &absent)
        .await
        .unwrap_err();
    assert!(matches!(err, XrpcError::BlobNotFound { .. }), "{err}");
    let nobody = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    let err = xrpc.get_repo(&pds_url, nobody, None).await.unwrap_err();
    assert!(matches!(err, XrpcError::RepoNotFound { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Permanent);
    assert!(matches!(
        xrpc.get_latest_commit(&pds_url, nobody).await,
        Err(XrpcError::RepoNotFound { .. })
    ));
    assert!(matches!(
        xrpc.list_blobs_page(&pds_url, nobody, None, None, 10).await,
        Err(XrpcError::RepoNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_need_the_accounts_token() {
    let pds = Pds::shared();
    let acct = pds.create_account("prefs").await;
    let prefs = json!([{"$type": "app.bsky.actor.defs#adultContentPref", "enabled": false}]);
    acct.put_preferences(prefs.clone()).await;
    let xrpc = client();
    let pds_url = url(&pds.url);
    let got = xrpc
        .get_preferences(&pds_url, &acct.access_jwt)
        .await
        .unwrap();
    assert_eq!(got["preferences"], prefs);
    let err = xrpc
        .get_preferences(&pds_url, "not-a-token")
        .await
        .unwrap_err();
    assert!(matches!(err, XrpcError::AuthRequired { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_of_the_real_pds_are_honoured() {
    // The PDS's own limiter, global limit 4 requests per second.
    let pds = tokio::task::spawn_blocking(|| {
        Pds::start_with(&PdsOptions {
            rate_limit: Some((4, 1000)),
            ..PdsOptions::default()
        })
    })
    .await
    .unwrap();
    let acct = pds.create_account("limited").await;
    let pds_url = url(&pds.url);
    let xrpc = client();
    let started = Instant::now();
    for _ in 0..6 {
        xrpc.get_latest_commit(&pds_url, &acct.did).await.unwrap();
    }
    // Concurrent requests share the host's budget.
    let results =
        futures_util::future::join_all((0..4).map(|_| xrpc.get_latest_commit(&pds_url, &acct.did)))
            .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stats = xrpc.host_stats(pds_url.as_str());
    eprintln!("rate-limited PDS: {stats:?} in {:?}", started.elapsed());
    assert!(stats.rate_limit_waits >= 2, "{stats:?}");
    // 10 requests at 4 per window span at least three windows.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // At most the first window's unknown budget (the account set-up spent some) costs 429s.
    assert!(stats.too_many_requests <= 2, "{stats:?}");

    // A limit that would hold the worker longer than it may wait is an error to retry later.
    let impatient = XrpcClient::new(XrpcConfig {
        max_rate_limit_wait: Duration::from_millis(50),
        ..XrpcConfig::default()
    })
    .unwrap();
    let mut error = None;
    for _ in 0..10 {
        if let Err(e) = impatient.get_latest_commit(&pds_url, &acct.did).await {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the limit is reached within 10 requests");
    assert!(matches!(error, XrpcError::RateLimited { .. }), "{error}");
    assert_eq!(error.disposition(), Disposition::Retry);
}

// ------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 stub on loopback, for behaviour the reference PDS does not show.
// ------------------------------------------------------------------------------------------

/// Answers each request with `respond(n, request head)` (raw response bytes; `n` counts from
/// 0) and closes the connection.
struct Stub {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Stub {
    async fn start<F>(respond: F) -> Self
    where
        F: Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let respond = Arc::new(respond);
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let respond = respond.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let answer = respond(n, &String::from_utf8_lossy(&head));
                    let _ = sock.write_all(&answer).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self { addr, hits }
    }

    fn url(&self) -> Url {
        url(&format!("http://{}", self.addr))
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

const LATEST: &[u8] =
    br#"{"cid":"bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm","rev":"3lbzc6kzdcs2k"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_storms_end_in_rate_limited() {
    // Two 429s with Retry-After (seconds, then an HTTP date in the past), then success.
    let stub = Stub::start(|n, _| match n {
        0 => response("429 Too Many Requests", &[("retry-after", "1")], b"{}"),
        1 => response(
            "429 Too Many Requests",
            &[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")],
            b"{}",
        ),
        _ => response("200 OK", &[("content-type", "application/json")], LATEST),
    })
    .await;
    let xrpc = XrpcClient::new(XrpcConfig {
        backoff_base: Duration::from_millis(20),
        ..XrpcConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let latest = xrpc
        .get_latest_commit(&stub.url(), "did:plc:x")
        .await
        .unwrap();
    assert_eq!(latest.rev, "3lbzc6kzdcs2k");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(stub.hits(), 3);
    let stats = xrpc.host_stats(&host_key(&stub.url()));
    assert_eq!(
        (stats.requests, stats.retries, stats.too_many_requests),
        (3, 2, 2)
    );

    // A storm: always 429. Bounded retries, then RateLimited (retryable).
    let storm =
        Stub::start(|_, _| response("429 Too Many Requests", &[("retry-after", "0")], b"{}")).await;
    let xrpc = XrpcClient::new(XrpcConfig {
        max_retries: 3,
        backoff_base: Duration::from_millis(10),
        ..XrpcConfig::default()
    })
    .unwrap();
    let err = xrpc
        .get_latest_commit(&storm.url(), "did:plc:x")
        .await
        .unwrap_err();
    assert!(matches!(err, XrpcError::RateLimited { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Retry);
    assert_eq!(storm.hits(), 4, "one try and three retries");

    // Asked to wait longer than a worker may: fail at once, saying when to come back.
    let slow =
        Stub::start(|_, _| response("429 Too Many Requests", &[("retry-after", "3600")], b"{}"))
            .await;
    let err = xrpc
        .get_latest_commit(&slow.url(), "did:plc:x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, XrpcError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{err}"
    );
    assert_eq!(slow.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pds_dying_mid_stream_is_a_named_error() {
    // Promises 100 000 bytes of CAR, sends a valid header and a few bytes, and closes.
    let stub = Stub::start(|_, _| {
        let root = proto::ipld::cid_sha256(proto::ipld::DAG_CBOR, b"x");
        let mut car = proto::car::encode_car(&[root], []);
        car.extend_from_slice(&[0x80, 0x01, 0x01]);
        let mut out = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/vnd.ipld.car\r\ncontent-length: 100000\r\n\r\n".to_vec();
        out.extend_from_slice(&car);
        out
    })
    .await;
    let xrpc = client();
    let download = xrpc.get_repo(&stub.url(), "did:plc:x", None).await.unwrap();
    assert_eq!(download.content_length, Some(100_000));
    let handle = tokio::runtime::Handle::current();
    let err = tokio::task::spawn_blocking(move || {
        let reader = StreamReader::new(download.body, handle);
        let mut car =
            CarReader::new(std::io::BufReader::new(reader), &CarLimits::default()).unwrap();
        loop {
            match car.next_block() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a truncated body must not end cleanly"),
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap();
    let CarError::Io { source, .. } = &err else {
        panic!("expected an I/O error, got {err}");
    };
    let xrpc_err = StreamReader::xrpc_error(source).expect("the XRPC error is inside");
    assert!(matches!(xrpc_err, XrpcError::Body { .. }), "{xrpc_err}");
    assert_eq!(xrpc_err.disposition(), Disposition::Retry);

    // A server that is not there at all.
    let gone = url(&format!("http://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }));
    let xrpc = XrpcClient::new(XrpcConfig {
        max_retries: 1,
        backoff_base: Duration::from_millis(10),
        ..XrpcConfig::default()
    })
    .unwrap();
    let err = xrpc
        .get_latest_commit(&gone, "did:plc:x")
        .await
        .unwrap_err();
    assert!(matches!(err, XrpcError::Transport { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Retry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn did_web_and_well_known_handles() {
    let key = repo::SecretKey::generate(KeyAlgorithm::P256)
        .unwrap()
        .public_key();
    let multikey = key.multikey();
    // Learn the stub's port first, then serve a document naming it.
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let port_in = port.clone();
    let stub = Stub::start(move |_, head| {
        let port = port_in.get().copied().unwrap_or(0);
        let did = format!("did:web:localhost%3A{port}");
        if head.starts_with("GET /.well-known/did.json ") {
            let doc = json!({
                "@context": ["https://www.w3.org/ns/did/v1"],
                "id": did,
                "alsoKnownAs": ["at://alice.example.com"],
                "verificationMethod": [{"id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": multikey}],
                "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example.com"}]
            });
            response("200 OK", &[("content-type", "application/json")], doc.to_string().as_bytes())
        } else if head.starts_with("GET /.well-known/atproto-did ") && head.contains("alice.example.com") {
            response("200 OK", &[("content-type", "text/plain")], format!("{did}\n").as_bytes())
        } else {
            response("404 Not Found", &[], b"")
        }
    })
    .await;
    port.set(stub.addr.port()).unwrap();
    let did = format!("did:web:localhost%3A{}", stub.addr.port());

    // `alice.example.com` and `bob.example.com` are pinned to the stub: no DNS.
    let http = reqwest::Client::builder()
        .resolve("alice.example.com", stub.addr)
        .resolve("bob.example.com", stub.addr)
        .build()
        .unwrap();
    let xrpc = XrpcClient::with_http_client(http, XrpcConfig::default());
    let resolver = IdentityResolver::new(
        xrpc,
        IdentityConfig {
            allow_insecure: true,
            ..IdentityConfig::default()
        },
    );
    let identity = resolver.resolve("alice.example.com").await.unwrap();
    assert_eq!(identity.did, did);
    assert!(identity.handle_verified);
    assert_eq!(identity.signing_key, key);
    assert_eq!(identity.pds.as_str(), "https://pds.example.com/");

    // A handle whose well-known answer is missing, and one that points at a DID whose
    // document claims another handle.
    assert!(matches!(
        resolver.resolve("bob.example.com").await,
        Err(IdentityError::HandleNotFound { .. })
    ));
    let doc = resolver.did_document(&did).await.unwrap();
    assert_eq!(doc.handle().as_deref(), Some("alice.example.com"));
}
