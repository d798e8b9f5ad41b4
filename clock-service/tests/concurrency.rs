//! Many writers advancing ONE clock at once, through the real service binary.
//!
//! Redis: two service processes (same key, same `CLOCK_STORE` with a unique key prefix) and 16
//! writers split across them. redb: one process (redb has a single writer process) and 16
//! writers. Each writer repeatedly reads the head, makes an event whose parents are that head (a
//! join of whatever concurrent heads exist) or, now and then, one of its own older events (a
//! fork), attaches the event and its parents' blocks, and advances. `AdvanceContention` (the
//! service gave up after too many compare-and-set conflicts; documented as retryable) is retried
//! and counted; anything else that fails an advance fails the test.
//!
//! At the end the clock's head must be exactly the maximal events of the DAG that was built (the
//! events no other event names as a parent), and the store must hold every event block.
//!
//! Sizes: 16 writers × [`events_per_writer`] events: 2400 advances in an optimized build
//! (`cargo test --release`, about 2.5 s on Redis and 5.5 s on redb on the project's 2-core
//! machine), 640 in a debug build (`cargo test`, CI: about 25 s, where signing, verifying and
//! hashing run unoptimized). Nothing here asserts a timing.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cid::Cid;
use clock_service::client::{ClientError, ClockClient, Invoker};
use clock_service::store::{AnyStore, ClockStore};
use proto::clock::Event;
use proto::principal::Ed25519Signer;
use proto::{Block, Ipld};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Concurrent writers.
const WRITERS: usize = 16;
/// Events each writer creates: 16 × 150 = 2400 advances of one clock in an optimized build,
/// 16 × 40 = 640 in a debug build (`cargo test`, CI), where every signature costs some 50 times
/// more; `CLOCK_CONCURRENCY_EVENTS_PER_WRITER` overrides both.
fn events_per_writer() -> usize {
    std::env::var("CLOCK_CONCURRENCY_EVENTS_PER_WRITER")
        .ok()
        .map(|v| {
            v.parse()
                .expect("CLOCK_CONCURRENCY_EVENTS_PER_WRITER is a number")
        })
        .unwrap_or(if cfg!(debug_assertions) { 40 } else { 150 })
}
/// One event in this many is a fork from an older event of the same writer.
const FORK_ONE_IN: u64 = 6;
/// Where the tests find Redis (scripts/services starts it).
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A running service process, killed when dropped.
struct Service {
    child: Child,
    url: String,
    admin: String,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Service {
    /// Stops the process with SIGTERM (a graceful drain) and waits for it.
    fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let exited = self.child.wait().expect("wait for clock-service");
        assert!(
            exited.success(),
            "clock-service exited with {exited}:\n{}",
            self.log()
        );
    }

    /// Starts the binary on free ports and waits until `/readyz` answers 200.
    async fn start(store: &str, key: &str) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_clock-service"))
            .env_clear()
            .env("CLOCK_LISTEN", &listen)
            .env("CLOCK_ADMIN_LISTEN", &admin)
            .env("CLOCK_STORE", store)
            .env("CLOCK_PRIVATE_KEY", key)
            .env("CLOCK_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the clock-service binary");
        // Keep the service's log so a failure can show it (and so the pipe never fills).
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut service = Self {
            child,
            url: format!("http://{listen}/"),
            admin,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&service.admin, "/readyz").await {
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!(
                    "clock-service exited with {status} before it was ready:\n{}",
                    service.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "clock-service not ready within 30 s:\n{}",
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// A counter from `/metrics` (0 when it was never incremented).
    async fn counter(&self, name: &str) -> u64 {
        let (status, body) = http_get(&self.admin, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "/metrics answered {status}");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0, |v| v as u64)
    }
}

/// Deletes every Redis key under the test's prefix, also when the test panics.
struct RedisCleanup {
    prefix: String,
}

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let result = (|| -> redis::RedisResult<usize> {
            let client = redis::Client::open(REDIS_URL)?;
            let mut conn = client.get_connection()?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut conn)?;
            for chunk in keys.chunks(500) {
                let () = redis::cmd("DEL").arg(chunk).query(&mut conn)?;
            }
            Ok(keys.len())
        })();
        match result {
            Ok(n) => eprintln!("redis cleanup: deleted {n} keys under {}", self.prefix),
            Err(e) => eprintln!("redis cleanup of {} failed: {e}", self.prefix),
        }
    }
}

/// Every event created, with its block and parents.
#[derive(Default)]
struct Dag {
    events: HashMap<Cid, (Block, Vec<Cid>)>,
}

/// What one writer did.
#[derive(Debug, Default)]
struct WriterReport {
    advanced: usize,
    forks: usize,
    contention_retries: u64,
    failures: Vec<String>,
}

/// A small deterministic generator (xorshift64*), one per writer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn event_data(writer: usize, seq: usize) -> Ipld {
    let mut m = std::collections::BTreeMap::new();
    m.insert("writer".to_owned(), Ipld::Integer(writer as i128));
    m.insert("seq".to_owned(), Ipld::Integer(seq as i128));
    Ipld::Map(m)
}

async fn writer(
    id: usize,
    client: ClockClient,
    who: Invoker,
    dag: Arc<Mutex<Dag>>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) << 17));
    let mut own: Vec<Cid> = Vec::new();
    for seq in 0..events_per_writer() {
        let head = match client.head(&who).await {
            Ok(h) => h,
            Err(e) => {
                report
                    .failures
                    .push(format!("writer {id} head #{seq}: {e}"));
                return report;
            }
        };
        let fork = !own.is_empty() && rng.next().is_multiple_of(FORK_ONE_IN);
        let parents = if fork {
            report.forks += 1;
            // Usually one of its last few events; one fork in four from any of its events,
            // however old (the merge then has to look far back into the history).
            let back = if rng.next().is_multiple_of(4) {
                own.len()
            } else {
                own.len().min(8)
            };
            vec![own[own.len() - 1 - (rng.next() % back as u64) as usize]]
        } else {
            head
        };
        let block = Event::new(event_data(id, seq), parents.clone())
            .to_block()
            .expect("encode event");
        let cid = *block.cid();
        let mut attach = vec![block.clone()];
        {
            let mut dag = dag.lock().unwrap();
            for p in &parents {
                attach.push(
                    dag.events
                        .get(p)
                        .expect("a parent this test created")
                        .0
                        .clone(),
                );
            }
            dag.events.insert(cid, (block, parents));
        }
        loop {
            match client.advance(&who, &cid, &attach).await {
                Ok(new_head) => {
                    if !new_head.contains(&cid) {
                        report
                            .failures
                            .push(format!("writer {id} advance #{seq}: head {new_head:?} lacks the new event {cid}"));
                    }
                    report.advanced += 1;
                    break;
                }
                Err(ClientError::Refused { name, .. }) if name == "AdvanceContention" => {
                    report.contention_retries += 1;
                    tokio::time::sleep(Duration::from_millis(1 + rng.next() % 5)).await;
                }
                Err(e) => {
                    report
                        .failures
                        .push(format!("writer {id} advance #{seq}: {e}"));
                    return report;
                }
            }
        }
        own.push(cid);
    }
    report
}

/// The outcome of a run: the clock and every event created.
struct Built {
    clock: String,
    dag: Dag,
}

/// Runs the writers against `services` (writer `i` uses `services[i % len]`) and checks the
/// head against the DAG that was built.
async fn run(label: &str, services: &[Service], service_key: &str) -> Built {
    let service = Ed25519Signer::parse(service_key).unwrap().verifier();
    let clock = Ed25519Signer::generate().unwrap();
    let who = Invoker {
        issuer: clock.clone(),
        clock: clock.did().to_owned(),
        proofs: Vec::new(),
    };
    let dag = Arc::new(Mutex::new(Dag::default()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            // A client per writer: its own connection pool, so its own connections.
            let client =
                ClockClient::new(services[i % services.len()].url.clone(), service.clone());
            tokio::spawn(writer(i, client, who.clone(), dag.clone()))
        })
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.expect("writer task"));
    }
    let elapsed = started.elapsed();

    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    if !failures.is_empty() {
        for s in services {
            eprintln!("--- service log ---\n{}", s.log());
        }
        panic!("{label}: {} advances failed: {failures:#?}", failures.len());
    }
    let advanced: usize = reports.iter().map(|r| r.advanced).sum();
    let forks: usize = reports.iter().map(|r| r.forks).sum();
    let retries: u64 = reports.iter().map(|r| r.contention_retries).sum();
    assert_eq!(advanced, WRITERS * events_per_writer());

    // The service's own counts of conflicts and of advances it gave up on.
    let mut conflicts = 0;
    let mut exhausted = 0;
    for s in services {
        conflicts += s.counter("clock_advance_conflicts_total").await;
        exhausted += s.counter("clock_advance_exhausted_total").await;
    }
    println!(
        "{label}: {advanced} advances ({forks} forks) by {WRITERS} writers over {} instance(s) in {:.2} s; \
         {conflicts} compare-and-set conflicts retried inside the service; \
         {retries} AdvanceContention answers retried by the writers",
        services.len(),
        elapsed.as_secs_f64()
    );
    assert_eq!(
        exhausted, retries,
        "{label}: every AdvanceContention a writer saw is one the service counted as exhausted"
    );

    // The head is the set of maximal events: those no event names as a parent.
    let dag = Arc::into_inner(dag)
        .expect("writers are done")
        .into_inner()
        .unwrap();
    let named: HashSet<Cid> = dag
        .events
        .values()
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    let maximal: HashSet<Cid> = dag
        .events
        .keys()
        .filter(|c| !named.contains(c))
        .copied()
        .collect();
    for s in services {
        let final_head = ClockClient::new(s.url.clone(), service.clone())
            .head(&who)
            .await
            .expect("final head");
        let head_set: HashSet<Cid> = final_head.iter().copied().collect();
        assert_eq!(
            head_set.len(),
            final_head.len(),
            "{label}: the head repeats an event: {final_head:?}"
        );
        assert_eq!(
            head_set, maximal,
            "{label}: the head is not the set of maximal events"
        );
    }
    println!(
        "{label}: final head = the {} maximal events of {}",
        maximal.len(),
        dag.events.len()
    );
    Built {
        clock: clock.did().to_owned(),
        dag,
    }
}

/// Every event block is in the store at `location`, byte for byte.
async fn check_blocks(label: &str, location: &str, built: &Built) {
    let store = AnyStore::open(location).await.expect("open the store");
    let cids: Vec<Cid> = built.dag.events.keys().copied().collect();
    let mut missing = Vec::new();
    for chunk in cids.chunks(256) {
        let got = store
            .get_blocks(&built.clock, chunk)
            .await
            .expect("get_blocks");
        assert_eq!(got.len(), chunk.len());
        for (cid, block) in chunk.iter().zip(got) {
            match block {
                Some(b) => assert_eq!(
                    b, built.dag.events[cid].0,
                    "{label}: stored block differs for {cid}"
                ),
                None => missing.push(*cid),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{label}: {} event blocks not stored: {missing:?}",
        missing.len()
    );
}

fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{label}-{}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_many_writers_one_clock() {
    let prefix = format!("{}:", unique("concurrency"));
    let _cleanup = RedisCleanup {
        prefix: prefix.clone(),
    };
    let location = format!("{REDIS_URL}#{prefix}");
    let key = Ed25519Signer::generate().unwrap().format();
    let services = [
        Service::start(&location, &key).await,
        Service::start(&location, &key).await,
    ];
    let built = run("redis, 2 instances", &services, &key).await;
    check_blocks("redis", &location, &built).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_on_redb_many_writers_one_clock() {
    let dir = tempfile::tempdir().unwrap();
    let location = format!("redb:{}", dir.path().join("clock.redb").display());
    let key = Ed25519Signer::generate().unwrap().format();
    let service = Service::start(&location, &key).await;
    let built = run("redb, 1 instance", std::slice::from_ref(&service), &key).await;
    // redb lets one process open the file: stop the service (gracefully) before reading it.
    service.stop();
    check_blocks("redb", &location, &built).await;
}
