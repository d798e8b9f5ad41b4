//! [`RedisStore`]: clocks in Redis, one multiplexed, self-reconnecting connection
//! ([`redis::aio::ConnectionManager`]) shared by every task of a runtime; each worker thread
//! opens its own ([`RedisStore::another_connection`]), so no command crosses threads.
//!
//! # Key layout
//!
//! With the store's key prefix `P` (empty in production, unique per test run in tests) and a
//! clock (Space) DID `D`:
//!
//! | key                              | type   | holds                                              |
//! |----------------------------------|--------|----------------------------------------------------|
//! | `P` `clock:{D}:head`             | string | the head: DAG-CBOR list of links                   |
//! | `P` `clock:{D}:block:<cid>`      | string | an event block's bytes; `<cid>` is the CID's string form |
//! | `P` `clock:provisioned`          | set    | DIDs of the provisioned Spaces                     |
//!
//! The braces are literal: `{D}` is a Redis Cluster hash tag, so the head and every block of one
//! clock hash to the same slot. The compare-and-set script and `MGET` of a clock's blocks touch
//! several keys of one clock and would fail with `CROSSSLOT` otherwise. The prefix may not contain
//! braces (it would become the tag and put every clock in one slot). Only `%`, `{` and `}` of the
//! DID are percent-escaped in the tag (`%25`, `%7B`, `%7D`); valid DIDs contain no braces, so the
//! tag is the DID as written, and the escape keeps a hostile name from ending the tag early or
//! colliding with another clock's keys.
//!
//! The head is the DAG-CBOR encoding of the list of head CIDs, in order (a CBOR array of tag-42
//! links, `0x80` for the empty head). An absent head key is the empty head.
//!
//! # Compare-and-set
//!
//! [`ClockStore::compare_and_set_head`] is one Lua script (`CAS_SCRIPT`) run through
//! [`redis::Script`]: `EVALSHA`, and on `NOSCRIPT` (a restarted or failed-over server, an evicted
//! script) `SCRIPT LOAD` and again. Redis runs a script atomically, so the read, the byte-for-byte
//! comparison with the expected head and the writes (the advance's event blocks, then the head)
//! cannot interleave with another writer, on this connection or any other replica's, and an
//! advance that lost the race writes nothing. One round trip per attempt. `WATCH`/`MULTI` is not
//! an option here: `WATCH` state belongs to a connection, and the connection is shared by every
//! task. Every key the script touches (the head and the blocks) is passed in `KEYS`, as Cluster
//! requires; they share the clock's hash tag, so one slot.
//!
//! Blocks are written with a plain `SET` (not `SETNX`): a block's bytes are fixed by its CID, so
//! overwriting is idempotent, and it repairs a block that was damaged in place. They are read
//! with one `MGET` and hash-checked against their CIDs.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use proto::Block;
use proto::ipld::{decode_dag_cbor, encode_dag_cbor};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{ClockStore, StoreError};

/// The compare-and-set of a head, with the event blocks it may name. `KEYS[1]` is the head key
/// and `KEYS[2..]` block keys; `ARGV[1]` the expected head's encoding, `ARGV[2]` the new head's,
/// `ARGV[3]` the empty head's (an absent key equals it), and `ARGV[i + 2]` the bytes of the
/// block at `KEYS[i]`. Returns 1 when the blocks and the head were written, 0 (having written
/// nothing) when the head did not match. Lua strings are 8-bit clean, so `~=` compares the
/// encodings byte for byte.
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false then current = ARGV[3] end
if current ~= ARGV[1] then return 0 end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 2])
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

/// The script object, built once (it hashes the source for `EVALSHA`).
static CAS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CAS_SCRIPT));

/// How long one connection attempt may take before it counts as failed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a command may wait for its answer. redis-rs defaults to 500 ms, which a large `MGET`
/// on a busy server can exceed; a request's own deadline is longer than this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times the connection manager retries connecting (exponential backoff from 100 ms)
/// before failing the commands that wait for it.
const CONNECTION_RETRIES: usize = 4;

/// What error messages name when an operation concerns no single clock.
const ALL_CLOCKS: &str = "all clocks";

/// Clocks in Redis. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    /// The shared connection; commands from all clones are pipelined on it.
    conn: ConnectionManager,
    /// Where `conn` connects, to open another connection to the same server (boxed: it is
    /// large, and stores travel by value).
    client: Arc<redis::Client>,
    /// Prepended to every key (see the module documentation).
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A self-reconnecting connection to `client`'s server.
async fn manage(client: redis::Client) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(CONNECTION_RETRIES);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|source| StoreError::Redis {
            op: "connect",
            clock: ALL_CLOCKS.to_owned(),
            source,
        })
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]` or `rediss://…`),
    /// with no key prefix.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_prefix(url, "").await
    }

    /// Connects to the Redis at `url`, prefixing every key with `prefix` so that several
    /// deployments (or test runs) can share one Redis. The prefix may not contain `{` or `}`.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::InvalidLocation {
                location: prefix.to_owned(),
                reason: "the Redis key prefix must not contain '{' or '}' (Cluster hash tags)"
                    .to_owned(),
            });
        }
        let client = redis::Client::open(url).map_err(|e| StoreError::InvalidLocation {
            location: redact(url).into_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            conn: manage(client.clone()).await?,
            client: Arc::new(client),
            prefix: prefix.into(),
        })
    }

    /// The same store over a connection of its own, driven by the runtime this is called on.
    /// Each worker thread serves its requests over one (see `crate::workers`): the shared
    /// connection's replies would otherwise wake tasks on another thread.
    pub async fn another_connection(&self) -> Result<Self, StoreError> {
        Ok(Self {
            conn: manage(redis::Client::clone(&self.client)).await?,
            client: self.client.clone(),
            prefix: self.prefix.clone(),
        })
    }

    /// The key prefix this store was opened with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `clock`'s head.
    fn head_key(&self, clock: &str) -> String {
        format!("{}clock:{{{}}}:head", self.prefix, hash_tag(clock))
    }

    /// The key of one event block of `clock`.
    fn block_key(&self, clock: &str, cid: &Cid) -> String {
        format!("{}clock:{{{}}}:block:{cid}", self.prefix, hash_tag(clock))
    }

    /// The key of the set of provisioned Spaces.
    fn provisioned_key(&self) -> String {
        format!("{}clock:provisioned", self.prefix)
    }

    /// Runs `cmd` on the shared connection, naming `op` and `clock` in any error.
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        clock: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|source| redis_error(op, clock, source))
    }
}

impl ClockStore for RedisStore {
    async fn head(&self, clock: &str) -> Result<Vec<Cid>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.head_key(clock));
        let stored: Option<Bytes> = self.query("head", clock, &cmd).await?;
        match stored {
            None => Ok(Vec::new()),
            Some(bytes) => decode_head(clock, &bytes),
        }
    }

    async fn compare_and_set_head(
        &self,
        clock: &str,
        expected: &[Cid],
        new: &[Cid],
        blocks: &[Block],
    ) -> Result<bool, StoreError> {
        let expected = encode_head(clock, expected)?;
        let new = encode_head(clock, new)?;
        let empty = encode_head(clock, &[])?;
        let mut invocation = CAS.key(self.head_key(clock));
        invocation.arg(expected).arg(new).arg(empty);
        for block in blocks {
            invocation
                .key(self.block_key(clock, block.cid()))
                .arg(block.bytes().as_ref());
        }
        let mut conn = self.conn.clone();
        let swapped: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|source| redis_error("compare_and_set_head", clock, source))?;
        Ok(swapped == 1)
    }

    async fn put_blocks(&self, clock: &str, blocks: &[Block]) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for block in blocks {
            pipe.cmd("SET")
                .arg(self.block_key(clock, block.cid()))
                .arg(block.bytes().as_ref())
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|source| redis_error("put_blocks", clock, source))
    }

    async fn get_blocks(
        &self,
        clock: &str,
        cids: &[Cid],
    ) -> Result<Vec<Option<Block>>, StoreError> {
        if cids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for cid in cids {
            cmd.arg(self.block_key(clock, cid));
        }
        let stored: Vec<Option<Bytes>> = self.query("get_blocks", clock, &cmd).await?;
        if stored.len() != cids.len() {
            return Err(StoreError::Corrupt {
                what: "block list",
                clock: clock.to_owned(),
                reason: format!(
                    "MGET of {} keys answered {} values",
                    cids.len(),
                    stored.len()
                ),
            });
        }
        cids.iter()
            .zip(stored)
            .map(|(cid, bytes)| bytes.map(|b| verify_block(clock, cid, b)).transpose())
            .collect()
    }

    async fn is_provisioned(&self, space: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(self.provisioned_key()).arg(space);
        self.query("is_provisioned", space, &cmd).await
    }

    async fn set_provisioned(&self, space: &str, provisioned: bool) -> Result<(), StoreError> {
        let mut cmd = redis::cmd(if provisioned { "SADD" } else { "SREM" });
        cmd.arg(self.provisioned_key()).arg(space);
        self.query::<i64>("set_provisioned", space, &cmd).await?;
        Ok(())
    }

    async fn provisioned(&self) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.provisioned_key());
        let mut spaces: Vec<String> = self.query("provisioned", ALL_CLOCKS, &cmd).await?;
        spaces.sort_unstable();
        Ok(spaces)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>("ping", ALL_CLOCKS, &redis::cmd("PING"))
            .await
            .map(drop)
    }
}

/// A [`StoreError::Redis`].
fn redis_error(op: &'static str, clock: &str, source: redis::RedisError) -> StoreError {
    StoreError::Redis {
        op,
        clock: clock.to_owned(),
        source,
    }
}

/// `clock` as it appears inside the hash tag: `%`, `{` and `}` percent-escaped, so the tag always
/// ends where we put its `}` and distinct clocks never share keys.
fn hash_tag(clock: &str) -> Cow<'_, str> {
    if !clock.contains(['%', '{', '}']) {
        return Cow::Borrowed(clock);
    }
    let mut out = String::with_capacity(clock.len() + 8);
    for c in clock.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `url` without its password, for error messages.
fn redact(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}://***@{}", &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

/// The stored form of a head: the DAG-CBOR list of its CIDs as links, in order. Shared with
/// [`super::RedbStore`] so both backends hold heads byte-identically.
pub(super) fn encode_head(clock: &str, head: &[Cid]) -> Result<Vec<u8>, StoreError> {
    // A list of CIDs always encodes; an error here would be a bug in the codec.
    encode_dag_cbor(head).map_err(|e| StoreError::Corrupt {
        what: "head",
        clock: clock.to_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Reads a head stored by [`encode_head`].
pub(super) fn decode_head(clock: &str, bytes: &[u8]) -> Result<Vec<Cid>, StoreError> {
    decode_dag_cbor::<Vec<Cid>>(bytes).map_err(|e| StoreError::Corrupt {
        what: "head",
        clock: clock.to_owned(),
        reason: e.to_string(),
    })
}

/// A block read back from a store, hash-checked against the CID it was stored under.
pub(super) fn verify_block(clock: &str, cid: &Cid, bytes: Bytes) -> Result<Block, StoreError> {
    Block::new(*cid, bytes).map_err(|e| StoreError::Corrupt {
        what: "block",
        clock: clock.to_owned(),
        reason: e.to_string(),
    })
}

/// Behaviour every [`ClockStore`] must have, written once and run against each backend.
#[cfg(test)]
pub(super) mod conformance {
    use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
    use std::future::Future;

    use cid::Cid;
    use proto::clock::{self, ClockError, Event};
    use proto::{Block, Ipld};

    use crate::store::{ClockStore, StoreError};

    /// Test access below the trait: writes raw bytes where the backend keeps a block or a head.
    pub(crate) trait Backdoor: ClockStore {
        /// Stores `bytes` as `clock`'s block `cid`, unchecked.
        fn write_raw_block(
            &self,
            clock: &str,
            cid: &Cid,
            bytes: &[u8],
        ) -> impl Future<Output = ()> + Send;
        /// Stores `bytes` as `clock`'s head, unchecked.
        fn write_raw_head(&self, clock: &str, bytes: &[u8]) -> impl Future<Output = ()> + Send;
        /// The bytes stored as `clock`'s head, if any.
        fn read_raw_head(&self, clock: &str) -> impl Future<Output = Option<Vec<u8>>> + Send;
    }

    /// A test DID.
    pub(crate) fn did(name: &str) -> String {
        format!("did:key:z6MkTest{name}")
    }

    /// A genesis event block with payload `n`.
    pub(crate) fn event(n: i128) -> Block {
        Event::new(Ipld::Integer(n), vec![])
            .to_block()
            .expect("event encodes")
    }

    /// Every check below, in turn.
    pub(crate) async fn all(store: &impl Backdoor) {
        empty_head(store).await;
        cas_success(store).await;
        cas_conflict(store).await;
        put_get_blocks(store).await;
        cas_writes_blocks_with_the_head(store).await;
        corrupt_block_detected(store).await;
        corrupt_head_detected(store).await;
        head_encoding(store).await;
        provisioned_registry(store).await;
        ping(store).await;
    }

    /// A clock never advanced has an empty head, and CAS from empty works on it.
    pub(crate) async fn empty_head(store: &impl ClockStore) {
        let clock = did("empty");
        assert_eq!(store.head(&clock).await.unwrap(), Vec::<Cid>::new());
        let a = *event(1).cid();
        assert!(
            !store
                .compare_and_set_head(&clock, &[a], &[a], &[])
                .await
                .unwrap()
        );
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[a], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), vec![a]);
        assert_eq!(
            store.head(&did("empty-other")).await.unwrap(),
            Vec::<Cid>::new()
        );
    }

    /// CAS with the current head replaces it, order kept; an explicitly stored empty head
    /// compares equal to "never written".
    pub(crate) async fn cas_success(store: &impl ClockStore) {
        let clock = did("cas-ok");
        let [a, b, c] = [10, 11, 12].map(|n| *event(n).cid());
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[a], &[])
                .await
                .unwrap()
        );
        assert!(
            store
                .compare_and_set_head(&clock, &[a], &[c, b], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), vec![c, b]);
        // Same value again is still a successful swap.
        assert!(
            store
                .compare_and_set_head(&clock, &[c, b], &[c, b], &[])
                .await
                .unwrap()
        );
        // Down to an explicitly empty head, and from it again.
        assert!(
            store
                .compare_and_set_head(&clock, &[c, b], &[], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), Vec::<Cid>::new());
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[a], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), vec![a]);
    }

    /// A stale or reordered `expected` is refused and leaves the head as it was.
    pub(crate) async fn cas_conflict(store: &impl ClockStore) {
        let clock = did("cas-conflict");
        let [a, b, c] = [20, 21, 22].map(|n| *event(n).cid());
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[a, b], &[])
                .await
                .unwrap()
        );
        for stale in [&[][..], &[a][..], &[b, a][..], &[a, b, c][..], &[c][..]] {
            assert!(
                !store
                    .compare_and_set_head(&clock, stale, &[c], &[])
                    .await
                    .unwrap(),
                "expected {stale:?} must not match [a, b]"
            );
            assert_eq!(store.head(&clock).await.unwrap(), vec![a, b]);
        }
        // Another clock is untouched by all of this.
        let other = did("cas-conflict-other");
        assert!(
            !store
                .compare_and_set_head(&other, &[a, b], &[c], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&other).await.unwrap(), Vec::<Cid>::new());
    }

    /// Blocks come back in the order asked, `None` where absent, per clock; puts are idempotent.
    pub(crate) async fn put_get_blocks(store: &impl ClockStore) {
        let clock = did("blocks");
        let [b1, b2, missing] = [30, 31, 32].map(event);
        assert_eq!(store.get_blocks(&clock, &[]).await.unwrap(), Vec::new());
        store.put_blocks(&clock, &[]).await.unwrap();
        store
            .put_blocks(&clock, &[b1.clone(), b2.clone()])
            .await
            .unwrap();
        store
            .put_blocks(&clock, std::slice::from_ref(&b2))
            .await
            .unwrap();
        let got = store
            .get_blocks(&clock, &[*b2.cid(), *missing.cid(), *b1.cid(), *b2.cid()])
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![Some(b2.clone()), None, Some(b1.clone()), Some(b2)]
        );
        // Blocks belong to their clock.
        let got = store
            .get_blocks(&did("blocks-other"), &[*b1.cid()])
            .await
            .unwrap();
        assert_eq!(got, vec![None]);
    }

    /// The compare-and-set writes its blocks with the head, and nothing at all when the head
    /// does not match: neither the blocks nor the head.
    pub(crate) async fn cas_writes_blocks_with_the_head(store: &impl ClockStore) {
        let clock = did("cas-blocks");
        let [a, b, c, d] = [70, 71, 72, 73].map(event);
        let all = [*a.cid(), *b.cid(), *c.cid(), *d.cid()];
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[*a.cid()], std::slice::from_ref(&a))
                .await
                .unwrap()
        );
        assert_eq!(
            store.get_blocks(&clock, &all).await.unwrap(),
            vec![Some(a.clone()), None, None, None]
        );
        // A stale expected head: refused, and neither block nor head is written.
        assert!(
            !store
                .compare_and_set_head(&clock, &[], &[*b.cid(), *c.cid()], &[b.clone(), c.clone()])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), vec![*a.cid()]);
        assert_eq!(
            store.get_blocks(&clock, &all).await.unwrap(),
            vec![Some(a.clone()), None, None, None]
        );
        // The current head: every block and the head, together; a block already stored (a) is
        // simply written again.
        assert!(
            store
                .compare_and_set_head(
                    &clock,
                    &[*a.cid()],
                    &[*c.cid(), *b.cid()],
                    &[a.clone(), b.clone(), c.clone()]
                )
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), vec![*c.cid(), *b.cid()]);
        assert_eq!(
            store.get_blocks(&clock, &all).await.unwrap(),
            vec![Some(a), Some(b), Some(c), None]
        );
        // Blocks belong to the clock whose head they came with.
        assert_eq!(
            store
                .get_blocks(&did("cas-blocks-other"), &all[..1])
                .await
                .unwrap(),
            vec![None]
        );
    }

    /// Bytes that do not hash to their CID are reported as corruption, not returned.
    pub(crate) async fn corrupt_block_detected(store: &impl Backdoor) {
        let clock = did("corrupt-block");
        let [good, bad] = [40, 41].map(event);
        store
            .put_blocks(&clock, &[good.clone(), bad.clone()])
            .await
            .unwrap();
        store.write_raw_block(&clock, bad.cid(), b"garbage").await;
        match store.get_blocks(&clock, &[*good.cid(), *bad.cid()]).await {
            Err(StoreError::Corrupt {
                what: "block",
                clock: c,
                reason,
            }) => {
                assert_eq!(c, clock);
                assert!(reason.contains(&bad.cid().to_string()), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // The good block alone still reads, and re-putting the bad one repairs it.
        let got = store.get_blocks(&clock, &[*good.cid()]).await.unwrap();
        assert_eq!(got, vec![Some(good)]);
        store
            .put_blocks(&clock, std::slice::from_ref(&bad))
            .await
            .unwrap();
        let got = store.get_blocks(&clock, &[*bad.cid()]).await.unwrap();
        assert_eq!(got, vec![Some(bad)]);
    }

    /// A head that does not decode is reported as corruption, and no CAS matches it.
    pub(crate) async fn corrupt_head_detected(store: &impl Backdoor) {
        let clock = did("corrupt-head");
        store.write_raw_head(&clock, b"\xff not cbor").await;
        assert!(matches!(
            store.head(&clock).await,
            Err(StoreError::Corrupt { what: "head", .. })
        ));
        let a = *event(50).cid();
        assert!(
            !store
                .compare_and_set_head(&clock, &[], &[a], &[])
                .await
                .unwrap()
        );
    }

    /// The stored head is the DAG-CBOR list of links, so any tool reading the raw bytes sees
    /// what `@ipld/dag-cbor` would write.
    pub(crate) async fn head_encoding(store: &impl Backdoor) {
        let clock = did("encoding");
        assert_eq!(store.read_raw_head(&clock).await, None);
        let [a, b] = [60, 61].map(|n| *event(n).cid());
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[b, a], &[])
                .await
                .unwrap()
        );
        let links = Ipld::List(vec![Ipld::Link(b), Ipld::Link(a)]);
        let expected = proto::ipld::encode_dag_cbor(&links).unwrap();
        assert_eq!(store.read_raw_head(&clock).await, Some(expected));
        assert!(
            store
                .compare_and_set_head(&clock, &[b, a], &[], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.read_raw_head(&clock).await, Some(vec![0x80]));
        // A head written by another implementation as explicit links reads back.
        let written = proto::ipld::encode_dag_cbor(&Ipld::List(vec![Ipld::Link(a)])).unwrap();
        store.write_raw_head(&clock, &written).await;
        assert_eq!(store.head(&clock).await.unwrap(), vec![a]);
    }

    /// Add, query, list (sorted) and remove Spaces; both are idempotent.
    pub(crate) async fn provisioned_registry(store: &impl ClockStore) {
        let [x, y, z] = ["z", "a", "m"].map(|n| did(&format!("space-{n}")));
        assert_eq!(store.provisioned().await.unwrap(), Vec::<String>::new());
        assert!(!store.is_provisioned(&x).await.unwrap());
        for s in [&x, &y, &z, &x] {
            store.set_provisioned(s, true).await.unwrap();
        }
        assert!(store.is_provisioned(&x).await.unwrap());
        let mut sorted = vec![x.clone(), y.clone(), z.clone()];
        sorted.sort();
        assert_eq!(store.provisioned().await.unwrap(), sorted);
        store.set_provisioned(&x, false).await.unwrap();
        store.set_provisioned(&x, false).await.unwrap();
        assert!(!store.is_provisioned(&x).await.unwrap());
        assert!(store.is_provisioned(&y).await.unwrap());
        sorted.retain(|s| *s != x);
        assert_eq!(store.provisioned().await.unwrap(), sorted);
        for s in [&y, &z] {
            store.set_provisioned(s, false).await.unwrap();
        }
        assert_eq!(store.provisioned().await.unwrap(), Vec::<String>::new());
    }

    /// The backend answers.
    pub(crate) async fn ping(store: &impl ClockStore) {
        store.ping().await.unwrap();
    }

    /// Events per writer in [`concurrent_advances`] tests. Every conflict re-merges one event
    /// against a head of concurrent events, walking the history (quadratic in the number of
    /// events, and slow in a debug build), so this is smaller than the 50 appends per writer of
    /// [`concurrent_appends`], which checks the compare-and-set alone at full scale.
    pub(crate) const ADVANCES: usize = 15;

    /// Conflicts one write may meet before the stress tests give up: far above what 16 writers
    /// cause, low enough that a compare-and-set which never succeeds fails the test quickly.
    const MAX_CONFLICTS_PER_WRITE: usize = 1000;

    /// What [`concurrent_appends`] or [`concurrent_advances`] observed.
    #[derive(Debug)]
    pub(crate) struct Contention {
        /// Entries appended or events advanced.
        pub(crate) writes: usize,
        /// Compare-and-sets that lost a race and were retried.
        pub(crate) conflicts: usize,
    }

    impl Contention {
        /// Fails unless `writes` went through and some of them collided (a run without a
        /// single conflict would not have tested the compare-and-set).
        pub(crate) fn assert_contended(&self, writes: usize) {
            assert_eq!(self.writes, writes);
            assert!(
                self.conflicts > 0,
                "no compare-and-set ever conflicted: {self:?}"
            );
        }
    }

    /// `tasks` writers each append `per_task` distinct CIDs to one head treated as a set:
    /// read, append, compare-and-set, re-read and retry on conflict, through `stores`
    /// round-robin. A lost update would drop an entry; the final head must hold every CID once.
    pub(crate) async fn concurrent_appends<S: ClockStore + Clone>(
        stores: &[S],
        clock: &str,
        tasks: usize,
        per_task: usize,
    ) -> Contention {
        let mut handles = Vec::new();
        for task in 0..tasks {
            let store = stores[task % stores.len()].clone();
            let clock = clock.to_owned();
            handles.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut conflicts = 0;
                for seq in 0..per_task {
                    let cid = *event((task * per_task + seq) as i128).cid();
                    loop {
                        let head = store.head(&clock).await.unwrap();
                        let mut next = head.clone();
                        next.push(cid);
                        if store
                            .compare_and_set_head(&clock, &head, &next, &[])
                            .await
                            .unwrap()
                        {
                            break;
                        }
                        conflicts += 1;
                        assert!(
                            conflicts < MAX_CONFLICTS_PER_WRITE * per_task,
                            "CAS never wins"
                        );
                        tokio::task::yield_now().await;
                    }
                    mine.push(cid);
                }
                (mine, conflicts)
            }));
        }
        let mut all = HashSet::new();
        let mut conflicts = 0;
        for (mine, c) in join_all(handles).await {
            all.extend(mine);
            conflicts += c;
        }
        let head = stores[0].head(clock).await.unwrap();
        let head_set: HashSet<Cid> = head.iter().copied().collect();
        assert_eq!(head.len(), tasks * per_task, "entries lost or duplicated");
        assert_eq!(head_set, all);
        Contention {
            writes: head.len(),
            conflicts,
        }
    }

    /// `tasks` writers, each advancing one clock with `per_task` real clock events, through
    /// `stores` round-robin (several stores over one backend stand in for service replicas).
    ///
    /// Each writer does what the service does: read the head, make an event whose parents are
    /// that head, store its block, then merge with `proto::clock::advance` (loading missing
    /// blocks from the store) and compare-and-set, re-reading and re-merging the same event on a
    /// conflict. At the end nothing may be lost: the head is exactly the events no other event
    /// names as a parent, every event is reachable from it, and every block is stored.
    pub(crate) async fn concurrent_advances<S: ClockStore + Clone>(
        stores: &[S],
        clock: &str,
        tasks: usize,
        per_task: usize,
    ) -> Contention {
        let mut handles = Vec::new();
        for task in 0..tasks {
            let store = stores[task % stores.len()].clone();
            let clock = clock.to_owned();
            handles.push(tokio::spawn(async move {
                let mut cache: HashMap<Cid, Block> = HashMap::new();
                let mut made = Vec::new();
                let mut conflicts = 0;
                for seq in 0..per_task {
                    let mut head = store.head(&clock).await.unwrap();
                    let mut data = BTreeMap::new();
                    data.insert("task".to_owned(), Ipld::Integer(task as i128));
                    data.insert("seq".to_owned(), Ipld::Integer(seq as i128));
                    let block = Event::new(Ipld::Map(data), head.clone())
                        .to_block()
                        .unwrap();
                    let cid = *block.cid();
                    cache.insert(cid, block.clone());
                    loop {
                        let next = merge(&store, &clock, &mut cache, &head, &cid).await;
                        assert_ne!(next, head, "a new event always changes the head");
                        // The block goes with the head, as the service writes it: other writers'
                        // merges find every block the head names (or panic in `merge`).
                        if store
                            .compare_and_set_head(
                                &clock,
                                &head,
                                &next,
                                std::slice::from_ref(&block),
                            )
                            .await
                            .unwrap()
                        {
                            break;
                        }
                        conflicts += 1;
                        assert!(
                            conflicts < MAX_CONFLICTS_PER_WRITE * per_task,
                            "CAS never wins"
                        );
                        tokio::task::yield_now().await;
                        head = store.head(&clock).await.unwrap();
                    }
                    made.push(block);
                }
                (made, conflicts)
            }));
        }
        let mut events: Vec<Block> = Vec::new();
        let mut conflicts = 0;
        for (made, c) in join_all(handles).await {
            events.extend(made);
            conflicts += c;
        }
        assert_eq!(events.len(), tasks * per_task);

        let store = &stores[0];
        let parents: HashMap<Cid, Vec<Cid>> = events
            .iter()
            .map(|b| (*b.cid(), Event::from_block(b).unwrap().parents))
            .collect();
        let named: HashSet<Cid> = parents.values().flatten().copied().collect();
        let maximal: HashSet<Cid> = parents
            .keys()
            .filter(|c| !named.contains(c))
            .copied()
            .collect();
        let head = store.head(clock).await.unwrap();
        let head_set: HashSet<Cid> = head.iter().copied().collect();
        assert_eq!(
            head_set.len(),
            head.len(),
            "head holds duplicates: {head:?}"
        );
        assert_eq!(head_set, maximal, "head is not the set of latest events");

        let mut reached: HashSet<Cid> = HashSet::new();
        let mut queue: VecDeque<Cid> = head.iter().copied().collect();
        while let Some(cid) = queue.pop_front() {
            if reached.insert(cid) {
                queue.extend(parents[&cid].iter().copied());
            }
        }
        assert_eq!(
            reached.len(),
            events.len(),
            "events unreachable from the head"
        );

        let cids: Vec<Cid> = events.iter().map(|b| *b.cid()).collect();
        let stored = store.get_blocks(clock, &cids).await.unwrap();
        for (block, got) in events.iter().zip(stored) {
            assert_eq!(
                got.as_ref(),
                Some(block),
                "block {} not stored",
                block.cid()
            );
        }
        Contention {
            writes: events.len(),
            conflicts,
        }
    }

    /// Waits for every writer before reporting the first one that panicked, so no writer is
    /// still running when the caller's cleanup deletes the test's keys.
    async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await);
        }
        results
            .into_iter()
            .map(|r| match r {
                Ok(value) => value,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(e) => panic!("writer task: {e}"),
                },
            })
            .collect()
    }

    /// `proto::clock::advance` over `cache`, fetching each missing block from the store.
    async fn merge(
        store: &impl ClockStore,
        clock: &str,
        cache: &mut HashMap<Cid, Block>,
        head: &[Cid],
        event: &Cid,
    ) -> Vec<Cid> {
        loop {
            match clock::advance(&*cache, head, event) {
                Ok(next) => return next,
                Err(ClockError::MissingBlock { cid }) => {
                    let got = store.get_blocks(clock, &[cid]).await.unwrap();
                    let block = got
                        .into_iter()
                        .next()
                        .flatten()
                        .unwrap_or_else(|| panic!("head names {cid}, which is not stored"));
                    cache.insert(cid, block);
                }
                Err(e) => panic!("advance failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::conformance::{self, ADVANCES, Backdoor, did, event};
    use super::*;

    /// The Redis `scripts/test` starts (tests fail, not skip, when it is down).
    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    /// A key prefix no other test (or test run) uses.
    fn unique_prefix() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!(
            "test:clock-service:{}-{nanos}-{}:",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Deletes every key under a prefix when dropped, even when the test panicked.
    struct Cleanup(String);

    impl Cleanup {
        /// Every key under the prefix (synchronous connection: usable from `Drop`).
        fn keys(&self) -> redis::RedisResult<Vec<String>> {
            let mut con = redis::Client::open(REDIS_URL)?.get_connection()?;
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", self.0))
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut con)?;
                keys.extend(batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        }

        fn delete(&self) -> redis::RedisResult<()> {
            let keys = self.keys()?;
            let mut con = redis::Client::open(REDIS_URL)?.get_connection()?;
            for chunk in keys.chunks(500) {
                redis::cmd("DEL").arg(chunk).query::<i64>(&mut con)?;
            }
            Ok(())
        }
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Err(e) = self.delete() {
                eprintln!("could not delete test keys under {:?}: {e}", self.0);
            }
        }
    }

    /// A store on the real Redis under a fresh prefix, and the guard that empties it.
    async fn store() -> (RedisStore, Cleanup) {
        let prefix = unique_prefix();
        let store = RedisStore::connect_with_prefix(REDIS_URL, &prefix)
            .await
            .unwrap_or_else(|e| panic!("Redis must run on {REDIS_URL} (scripts/services): {e}"));
        (store, Cleanup(prefix))
    }

    /// Raw commands for the backdoor.
    async fn raw<T: redis::FromRedisValue>(store: &RedisStore, cmd: &redis::Cmd) -> T {
        store.query("test", "test", cmd).await.unwrap()
    }

    impl Backdoor for RedisStore {
        async fn write_raw_block(&self, clock: &str, cid: &Cid, bytes: &[u8]) {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.block_key(clock, cid)).arg(bytes);
            raw::<()>(self, &cmd).await;
        }
        async fn write_raw_head(&self, clock: &str, bytes: &[u8]) {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.head_key(clock)).arg(bytes);
            raw::<()>(self, &cmd).await;
        }
        async fn read_raw_head(&self, clock: &str) -> Option<Vec<u8>> {
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.head_key(clock));
            raw(self, &cmd).await
        }
    }

    #[tokio::test]
    async fn conformance() {
        let (store, _cleanup) = store().await;
        conformance::all(&store).await;
    }

    #[tokio::test]
    async fn empty_head() {
        let (store, _cleanup) = store().await;
        conformance::empty_head(&store).await;
    }

    #[tokio::test]
    async fn cas_success() {
        let (store, _cleanup) = store().await;
        conformance::cas_success(&store).await;
    }

    #[tokio::test]
    async fn cas_conflict() {
        let (store, _cleanup) = store().await;
        conformance::cas_conflict(&store).await;
    }

    #[tokio::test]
    async fn put_get_blocks() {
        let (store, _cleanup) = store().await;
        conformance::put_get_blocks(&store).await;
    }

    #[tokio::test]
    async fn cas_writes_blocks_with_the_head() {
        let (store, _cleanup) = store().await;
        conformance::cas_writes_blocks_with_the_head(&store).await;
    }

    #[tokio::test]
    async fn corrupt_block_detected() {
        let (store, _cleanup) = store().await;
        conformance::corrupt_block_detected(&store).await;
    }

    #[tokio::test]
    async fn corrupt_head_detected() {
        let (store, _cleanup) = store().await;
        conformance::corrupt_head_detected(&store).await;
    }

    #[tokio::test]
    async fn head_encoding() {
        let (store, _cleanup) = store().await;
        conformance::head_encoding(&store).await;
    }

    #[tokio::test]
    async fn provisioned_registry() {
        let (store, _cleanup) = store().await;
        conformance::provisioned_registry(&store).await;
    }

    #[tokio::test]
    async fn ping() {
        let (store, _cleanup) = store().await;
        conformance::ping(&store).await;
    }

    /// Two stores (two connection managers) stand in for two service replicas.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_lose_nothing() {
        let (a, _cleanup) = store().await;
        let b = RedisStore::connect_with_prefix(REDIS_URL, a.prefix())
            .await
            .unwrap();
        let seen = conformance::concurrent_appends(&[a, b], &did("append"), 16, 50).await;
        eprintln!("redis appends: {seen:?}");
        seen.assert_contended(16 * 50);
    }

    /// Two stores (two connection managers) stand in for two service replicas.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_advances_lose_nothing() {
        let (a, _cleanup) = store().await;
        let b = RedisStore::connect_with_prefix(REDIS_URL, a.prefix())
            .await
            .unwrap();
        let seen = conformance::concurrent_advances(&[a, b], &did("busy"), 16, ADVANCES).await;
        eprintln!("redis advances: {seen:?}");
        seen.assert_contended(16 * ADVANCES);
    }

    #[tokio::test]
    async fn key_layout_shares_one_hash_tag_per_clock() {
        let (store, cleanup) = store().await;
        let clock = did("layout");
        let block = event(1);
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[*block.cid()], std::slice::from_ref(&block))
                .await
                .unwrap()
        );
        store.set_provisioned(&clock, true).await.unwrap();
        let p = store.prefix().to_owned();
        let mut keys = cleanup.keys().unwrap();
        keys.sort();
        let mut expected = vec![
            format!("{p}clock:{{{clock}}}:head"),
            format!("{p}clock:{{{clock}}}:block:{}", block.cid()),
            format!("{p}clock:provisioned"),
        ];
        expected.sort();
        assert_eq!(keys, expected);
        // Cluster hashes the text between the first '{' and the next '}': the DID.
        for key in keys.iter().filter(|k| !k.ends_with(":provisioned")) {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            assert_eq!(&key[open + 1..close], clock);
        }
    }

    #[test]
    fn hash_tag_escapes_braces() {
        assert_eq!(hash_tag("did:key:z6Mk"), "did:key:z6Mk");
        assert_eq!(hash_tag("a}b{c%d"), "a%7Db%7Bc%25d");
        // Escaping is injective: a literal "%7D" does not collide with "}".
        assert_ne!(hash_tag("a%7D"), hash_tag("a}"));
    }

    #[tokio::test]
    async fn hostile_clock_names_stay_apart() {
        let (store, _cleanup) = store().await;
        let a = event(1);
        let evil = format!("{}}}:block:{}", did("x"), a.cid());
        store
            .put_blocks(&did("x"), std::slice::from_ref(&a))
            .await
            .unwrap();
        assert_eq!(
            store.get_blocks(&evil, &[*a.cid()]).await.unwrap(),
            vec![None]
        );
        assert_eq!(store.head(&evil).await.unwrap(), Vec::<Cid>::new());
        assert!(
            store
                .compare_and_set_head(&evil, &[], &[*a.cid()], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&did("x")).await.unwrap(), Vec::<Cid>::new());
    }

    /// `EVALSHA` falls back to loading the script when the server has forgotten it.
    #[tokio::test]
    async fn cas_survives_script_flush() {
        let (store, _cleanup) = store().await;
        let clock = did("flush");
        let [a, b] = [1, 2].map(|n| *event(n).cid());
        assert!(
            store
                .compare_and_set_head(&clock, &[], &[a], &[])
                .await
                .unwrap()
        );
        raw::<()>(&store, redis::cmd("SCRIPT").arg("FLUSH")).await;
        assert!(
            store
                .compare_and_set_head(&clock, &[a], &[b], &[])
                .await
                .unwrap()
        );
        assert!(
            !store
                .compare_and_set_head(&clock, &[a], &[b], &[])
                .await
                .unwrap()
        );
        assert_eq!(store.head(&clock).await.unwrap(), vec![b]);
    }

    #[tokio::test]
    async fn rejects_bad_locations() {
        assert!(matches!(
            RedisStore::connect_with_prefix(REDIS_URL, "bad{prefix}").await,
            Err(StoreError::InvalidLocation { .. })
        ));
        match RedisStore::connect("http://user:secret@example.com/").await {
            Err(StoreError::InvalidLocation { location, .. }) => {
                assert_eq!(location, "http://***@example.com/");
            }
            other => panic!("expected InvalidLocation, got {other:?}"),
        }
        // Nothing listens on port 1.
        assert!(matches!(
            RedisStore::connect("redis://127.0.0.1:1").await,
            Err(StoreError::Redis { op: "connect", .. })
        ));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://***@h:6379");
        assert_eq!(redact("rediss://u:p@ss@h/1"), "rediss://***@h/1");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[tokio::test]
    async fn cleanup_removes_every_key() {
        let (store, cleanup) = store().await;
        conformance::put_get_blocks(&store).await;
        conformance::cas_success(&store).await;
        assert!(!cleanup.keys().unwrap().is_empty());
        let probe = Cleanup(cleanup.0.clone());
        drop(cleanup);
        assert_eq!(probe.keys().unwrap(), Vec::<String>::new());
    }
}
