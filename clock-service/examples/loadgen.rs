//! Load generator for ucanto clock services (ours or w3clock's JS reference server): replays
//! PRE-SIGNED `clock/head` / `clock/advance` invocations, so the client's signing is not
//! measured, and reports throughput, latency percentiles and errors.
//!
//! ```text
//! cargo run --release -p clock-service --example loadgen -- \
//!     --url http://127.0.0.1:8080/ --service-did did:key:z6Mk… --op head --concurrency 16 --duration 10s
//! ```
//!
//! Operations (`--op`):
//!
//! - `head`: one `clock/head` invocation replayed (like the interop kit's `replay.mjs`); with
//!   `--clocks N`, N invocations on N clocks, round-robin.
//! - `advance`: every request is a distinct event: `--clocks N --chain L` builds N clocks (keys
//!   derived from `--seed`) and on each a linear chain of L events (each event's parent is the
//!   previous one, whose block is attached too, as w3clock's client does). Each in-flight slot
//!   owns whole clocks and sends their events in order, so every advance really extends its
//!   clock. The run ends at `--duration` or when the events run out.
//!
//! With `--delegated L`, each clock's invocations are not signed by the clock's key but by an
//! agent at the end of an L-link delegation chain (clock → agent 1 → … → agent L, `clock/*`,
//! keys derived from `--seed`), the proofs sent with every invocation as real clients do; the
//! server verifies L + 1 signatures per request unless it remembers the proofs'.
//!
//! Modes: closed loop with `--concurrency` requests in flight (each on its own connection;
//! latency = send to answer), or open loop at `--rate` requests per second: a pacer thread
//! releases request slots on a fixed schedule, `--connections` workers send them, and latency is
//! taken from each slot's *intended* send time, so a stalled server is charged for the requests
//! it delayed (no coordinated omission). Slots still unsent when the run ends are recorded at
//! their age so far and counted as `late`.
//!
//! Every answer is checked: HTTP 200, a response CAR with a receipt for the invocation, and an
//! `{ok}` outcome; anything else counts as an error (the first few are printed). The first
//! receipt's signature is verified against `--service-did`. An answer byte-identical to the last
//! one fully checked on the same connection for the same invocation passes without being
//! decoded again (a replayed `clock/head` with an unchanged head). The last line is
//! machine-readable (`RESULT key=value …`).
//!
//! Invocations expire a year after they are built; clock keys are derived from `--seed`, so two
//! runs with the same seed and sizes send the same invocations (the same clocks and events),
//! e.g. to a second server, or `--op head --clocks N` to read the clocks an `advance` run wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cid::Cid;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use proto::capability::{ClockAdvance, ClockHead};
use proto::car::CarLimits;
use proto::clock::Event;
use proto::message::{self, AgentMessage, CONTENT_TYPE};
use proto::principal::{Ed25519Signer, Verifier};
use proto::ucan::{Capability, Delegation, Ucan};
use proto::{Block, Ipld};

/// mimalloc, as the service uses: glibc malloc was an eighth of this process's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Head,
    Advance,
}

#[derive(Debug, Parser)]
#[command(
    about = "Replay pre-signed clock/head or clock/advance invocations against a clock service"
)]
struct Args {
    /// The service's ucanto endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/")]
    url: String,
    /// The service's DID (the audience of the invocations; receipts must be signed by it).
    #[arg(long)]
    service_did: String,
    /// What to invoke.
    #[arg(long, value_enum, default_value_t = Op::Head)]
    op: Op,
    /// Requests in flight (closed loop; ignored with --rate).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: requests per second on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections (workers) for --rate.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to measure (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before measuring (closed loop only; it uses up events in advance).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Distinct clocks (head: invocations round-robin over them; advance: chains).
    #[arg(long, default_value_t = 1)]
    clocks: usize,
    /// Events per clock for advance (a linear chain).
    #[arg(long, default_value_t = 1)]
    chain: usize,
    /// Seed of the clock keys (same seed → same clocks and events).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Invoke through a delegation chain of this many links per clock (0: the clock's own key).
    #[arg(long, default_value_t = 0)]
    delegated: usize,
    /// Threads of the load generator (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Gives up on a request after this long (counted as an error).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// A label for the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// One pre-encoded request: the body and the invocation's CID (to find its receipt).
#[derive(Clone)]
struct Req {
    body: Bytes,
    invocation: Cid,
}

/// An Ed25519 key derived from `name` (a hash of it as the seed).
fn derived_key(name: &str) -> Ed25519Signer {
    let cid = proto::ipld::cid_sha256(proto::ipld::RAW, name.as_bytes());
    let mut s = [0u8; 32];
    s.copy_from_slice(&cid.hash().digest()[..32]);
    Ed25519Signer::from_seed(&s)
}

/// The key of clock `i` under `seed`.
fn clock_key(seed: u64, i: usize) -> Ed25519Signer {
    derived_key(&format!("loadgen:{seed}:{i}"))
}

fn expiry() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    now + 365 * 24 * 3600
}

fn encode(inv: &Delegation) -> Req {
    Req {
        body: Bytes::from(
            message::encode_request(std::slice::from_ref(inv)).expect("encode request"),
        ),
        invocation: *inv.cid(),
    }
}

/// Who invokes on clock `i`'s behalf and the proof it shows: the clock itself (no proof), or
/// with `--delegated L` the last agent of the chain clock → agent 1 → … → agent L (`clock/*`).
struct Invoker {
    clock: String,
    issuer: Ed25519Signer,
    proof: Option<Delegation>,
}

fn invoker(args: &Args, i: usize, exp: i64) -> Invoker {
    let clock = clock_key(args.seed, i);
    let mut issuer = clock.clone();
    let mut proof: Option<Delegation> = None;
    for link in 1..=args.delegated {
        let agent = derived_key(&format!("loadgen:{}:{i}:agent{link}", args.seed));
        let b = Ucan::builder(&issuer, agent.did())
            .capability(Capability::new("clock/*", clock.did()))
            .expiration(exp);
        let d = Delegation::issue(b, proof.as_slice(), &[]).expect("sign delegation");
        proof = Some(d);
        issuer = agent;
    }
    Invoker {
        clock: clock.did().to_owned(),
        issuer,
        proof,
    }
}

fn head_request(who: &Invoker, service: &str, exp: i64) -> Req {
    let cap = ClockHead {
        with: who.clock.clone(),
    }
    .to_capability();
    let b = Ucan::builder(&who.issuer, service)
        .capability(cap)
        .expiration(exp)
        .nonce("loadgen");
    encode(&Delegation::issue(b, who.proof.as_slice(), &[]).expect("sign head"))
}

fn advance_request(who: &Invoker, service: &str, exp: i64, event: &Block, attach: &[Block]) -> Req {
    let cap = ClockAdvance {
        with: who.clock.clone(),
        event: *event.cid(),
    }
    .to_capability();
    let fact: BTreeMap<String, Ipld> = attach
        .iter()
        .map(|b| (b.cid().to_string(), Ipld::Link(*b.cid())))
        .collect();
    let b = Ucan::builder(&who.issuer, service)
        .capability(cap)
        .expiration(exp)
        .nonce("loadgen")
        .fact(fact);
    encode(&Delegation::issue(b, who.proof.as_slice(), attach).expect("sign advance"))
}

/// The events of clock `i`'s chain, as requests in order.
fn chain_requests(args: &Args, i: usize, exp: i64) -> Vec<Req> {
    let who = invoker(args, i, exp);
    let mut prev: Option<Block> = None;
    let mut out = Vec::with_capacity(args.chain);
    for j in 0..args.chain {
        let mut data = BTreeMap::new();
        data.insert("loadgen".to_owned(), Ipld::Integer(i128::from(args.seed)));
        data.insert("clock".to_owned(), Ipld::Integer(i as i128));
        data.insert("seq".to_owned(), Ipld::Integer(j as i128));
        let parents = prev.iter().map(|b| *b.cid()).collect();
        let event = Event::new(Ipld::Map(data), parents)
            .to_block()
            .expect("encode event");
        let attach: Vec<Block> = std::iter::once(event.clone()).chain(prev.clone()).collect();
        out.push(advance_request(
            &who,
            &args.service_did,
            exp,
            &event,
            &attach,
        ));
        prev = Some(event);
    }
    out
}

/// Builds `f(i)` for `i` in `0..n` on every core (signing is the cost).
fn build_parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(n.max(1));
    let chunk = n.div_ceil(threads.max(1)).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || (start..(start + chunk).min(n)).map(f).collect::<Vec<T>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("builder thread"))
            .collect()
    })
}

/// What the run measured.
struct Stats {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    late: u64,
    first_errors: Vec<String>,
}

impl Stats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram"),
            ok: 0,
            errors: 0,
            late: 0,
            first_errors: Vec::new(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        self.hist
            .saturating_record(latency.as_micros().max(1) as u64);
        match outcome {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                if self.first_errors.len() < 5 {
                    self.first_errors.push(e);
                }
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        self.hist.add(&other.hist).expect("same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.late += other.late;
        for e in other.first_errors {
            if self.first_errors.len() < 5 {
                self.first_errors.push(e);
            }
        }
    }
}

/// Sends requests over one connection and checks the answers. Kept lean, since it shares the
/// machine with the server it measures: one HTTP/1.1 connection driven directly (no pool), and
/// an answer byte-identical to the last one fully checked for the same invocation is accepted
/// without decoding it again (a receipt for the same invocation, outcome and signer is the
/// same bytes: Ed25519 signatures are deterministic).
struct Sender {
    authority: Arc<str>,
    path: Arc<str>,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    service: Arc<Verifier>,
    timeout: Duration,
    verified: Arc<AtomicBool>,
    last_ok: Option<(Cid, Bytes)>,
}

impl Sender {
    fn new(args: &Args, service: Arc<Verifier>, verified: Arc<AtomicBool>) -> Self {
        let uri: http::Uri = args.url.parse().unwrap_or_else(|e| {
            eprintln!("--url: {e}");
            std::process::exit(2);
        });
        if uri.scheme_str() != Some("http") {
            eprintln!("--url: only http:// is supported");
            std::process::exit(2);
        }
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("127.0.0.1:80");
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Self {
            authority: authority.into(),
            path: uri.path().into(),
            conn: None,
            service,
            timeout: args.timeout,
            verified,
            last_ok: None,
        }
    }

    async fn send(&mut self, req: &Req) -> Result<(), String> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn connection(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        if let Some(c) = &self.conn
            && c.is_closed()
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let stream = tokio::net::TcpStream::connect(&*self.authority)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.conn = Some(send);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.ready().await.map_err(|e| format!("transport: {e}"))?;
        Ok(conn)
    }

    async fn exchange(&mut self, req: &Req) -> Result<(), String> {
        let request = Request::post(&*self.path)
            .header(header::HOST, &*self.authority)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .header(header::ACCEPT, CONTENT_TYPE)
            .body(Full::new(req.body.clone()))
            .map_err(|e| e.to_string())?;
        let sent = self.connection().await?.send_request(request).await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(format!("transport: {e}"));
            }
        };
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        if self
            .last_ok
            .as_ref()
            .is_some_and(|(cid, bytes)| *cid == req.invocation && *bytes == body)
        {
            return Ok(());
        }
        let msg = AgentMessage::decode_bytes(body.clone(), &CarLimits::default())
            .map_err(|e| format!("answer: {e}"))?;
        let receipt = msg
            .receipt(&req.invocation)
            .ok_or("no receipt for the invocation")?
            .map_err(|e| format!("receipt: {e}"))?;
        if !self.verified.load(Ordering::Relaxed) {
            if !receipt.verify_signature(&self.service) {
                return Err(format!("receipt not signed by {}", self.service.did()));
            }
            self.verified.store(true, Ordering::Relaxed);
        }
        match receipt.out() {
            Ok(_) => {
                self.last_ok = Some((req.invocation, body));
                Ok(())
            }
            Err(e) => Err(format!(
                "error receipt: {}",
                proto::ipld::encode_dag_json(e)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            )),
        }
    }
}

/// What the slots of a closed loop send.
enum Work {
    /// Head: every request takes the next invocation of the shared list (wrapping), so the
    /// clocks are read in turn.
    Cycle(Arc<Vec<Req>>, Arc<AtomicU64>),
    /// Advance: each slot sends its own queue in order.
    Queues(Vec<Vec<Req>>),
}

/// Closed loop: `slots` requests in flight, each slot on its own connection.
async fn closed_loop(args: &Args, sender: &Sender, work: Work, slots: usize) -> (Stats, Duration) {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut queues = match &work {
        Work::Queues(q) => q.clone(),
        Work::Cycle(..) => vec![Vec::new(); slots],
    };
    let tasks: Vec<_> = (0..slots)
        .map(|k| {
            // A sender per slot: one connection each.
            let mut sender = Sender::new(args, sender.service.clone(), sender.verified.clone());
            let queue = std::mem::take(&mut queues[k]);
            let cycle = match &work {
                Work::Cycle(list, next) => Some((list.clone(), next.clone())),
                Work::Queues(_) => None,
            };
            tokio::spawn(async move {
                let mut stats = Stats::new();
                let mut i = 0usize;
                let mut last = Instant::now();
                loop {
                    let req = match &cycle {
                        Some((list, next)) => {
                            let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                            &list[n % list.len()]
                        }
                        None => match queue.get(i) {
                            Some(r) => r,
                            None => break,
                        },
                    };
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let outcome = sender.send(req).await;
                    let done = Instant::now();
                    if sent >= measure_from {
                        stats.record(done - sent, outcome);
                        last = done;
                    }
                    i += 1;
                }
                (stats, last)
            })
        })
        .collect();
    let mut total = Stats::new();
    let mut last = measure_from;
    for t in tasks {
        let (s, l) = t.await.expect("slot task");
        total.merge(s);
        last = last.max(l);
    }
    (total, last.saturating_duration_since(measure_from))
}

/// Open loop at `rate`: a pacer thread releases slot numbers on schedule; workers send the
/// request of each slot and record latency from the slot's intended time.
async fn open_loop(
    args: &Args,
    sender: &Sender,
    pool: Vec<Req>,
    rate: f64,
    cycle: bool,
) -> (Stats, Duration) {
    let pool = Arc::new(pool);
    let total_slots = if cycle { u64::MAX } else { pool.len() as u64 };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + args.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicU64::new(0));
    let pacer = {
        let stop = stop.clone();
        let released = released.clone();
        std::thread::spawn(move || {
            let mut slot = 0u64;
            while slot < total_slots && !stop.load(Ordering::Relaxed) {
                let intended = start + interval.mul_f64(slot as f64);
                if intended >= end {
                    break;
                }
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if tx.send((slot, intended)).is_err() {
                    break;
                }
                released.fetch_add(1, Ordering::Relaxed);
                slot += 1;
            }
        })
    };
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let mut sender = Sender::new(args, sender.service.clone(), sender.verified.clone());
            let rx = rx.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut stats = Stats::new();
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((slot, intended)) = next else { break };
                    let now = Instant::now();
                    if now >= end + Duration::from_secs(2) {
                        // The run is over: what is still queued was never sent in time.
                        stats.late += 1;
                        stats.record(now - intended, Err("not sent before the run ended".into()));
                        continue;
                    }
                    let req = &pool[(slot % pool.len() as u64) as usize];
                    let outcome = sender.send(req).await;
                    stats.record(intended.elapsed(), outcome);
                }
                stats
            })
        })
        .collect();
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Stats::new();
    for w in workers {
        total.merge(w.await.expect("worker"));
    }
    let sent = released.load(Ordering::Relaxed);
    let elapsed = if sent == 0 {
        Duration::ZERO
    } else {
        interval.mul_f64(sent as f64)
    };
    (total, elapsed)
}

fn main() {
    let args = Args::parse();
    let service = Arc::new(Verifier::parse(&args.service_did).unwrap_or_else(|e| {
        eprintln!("--service-did: {e}");
        std::process::exit(2);
    }));
    assert!(
        args.clocks >= 1 && args.chain >= 1,
        "--clocks and --chain must be at least 1"
    );
    let exp = expiry();

    // Build every invocation before sending anything.
    let t = Instant::now();
    let (pool, queues, cycle): (Vec<Req>, Vec<Vec<Req>>, bool) = match args.op {
        Op::Head => {
            let reqs = build_parallel(args.clocks, |i| {
                head_request(&invoker(&args, i, exp), &args.service_did, exp)
            });
            (reqs, Vec::new(), true)
        }
        Op::Advance => {
            if args.rate.is_some() && args.chain > 1 {
                eprintln!(
                    "--rate with --op advance needs --chain 1 (events of a chain must go in order)"
                );
                std::process::exit(2);
            }
            let chains = build_parallel(args.clocks, |i| chain_requests(&args, i, exp));
            let slots = args.concurrency.max(1).min(args.clocks);
            // Slot k owns clocks k, k+slots, …, and sends round j of each of its clocks before
            // round j+1, so the events of one clock go in order.
            let mut queues: Vec<Vec<Req>> = vec![Vec::new(); slots];
            for (k, queue) in queues.iter_mut().enumerate() {
                let mine: Vec<&Vec<Req>> = chains.iter().skip(k).step_by(slots).collect();
                for j in 0..args.chain {
                    for c in &mine {
                        queue.push(c[j].clone());
                    }
                }
            }
            let pool = if args.rate.is_some() {
                chains.into_iter().flatten().collect()
            } else {
                Vec::new()
            };
            (pool, queues, false)
        }
    };
    let (requests, total_bytes) = if queues.is_empty() {
        (pool.len(), pool.iter().map(|r| r.body.len()).sum::<usize>())
    } else {
        (
            queues.iter().map(Vec::len).sum(),
            queues.iter().flatten().map(|r| r.body.len()).sum(),
        )
    };
    let bytes = total_bytes / requests.max(1);
    eprintln!(
        "loadgen: built {requests} {:?} invocation(s) ({bytes} B each on average) in {:.2} s",
        args.op,
        t.elapsed().as_secs_f64()
    );

    // One thread: everything on the thread that waits for the results (no hand-offs between
    // threads); more: a work-stealing pool.
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    let verified = Arc::new(AtomicBool::new(false));
    let (stats, elapsed, mode) = runtime.block_on(async {
        let sender = Sender::new(&args, service.clone(), verified.clone());
        match args.rate {
            Some(rate) => {
                let (s, e) = open_loop(&args, &sender, pool, rate, cycle).await;
                (s, e, format!("rate={rate}"))
            }
            None => {
                let slots = if cycle {
                    args.concurrency.max(1)
                } else {
                    queues.len()
                };
                let work = if cycle {
                    Work::Cycle(Arc::new(pool), Arc::new(AtomicU64::new(0)))
                } else {
                    Work::Queues(queues)
                };
                let (s, e) = closed_loop(&args, &sender, work, slots).await;
                (s, e, format!("concurrency={}", args.concurrency))
            }
        }
    });
    let mode = if args.delegated > 0 {
        format!("{mode} delegated={}", args.delegated)
    } else {
        mode
    };
    let n = stats.ok + stats.errors;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| stats.hist.value_at_quantile(q) as f64 / 1000.0;
    for e in &stats.first_errors {
        eprintln!("loadgen: error: {e}");
    }
    if n > 0 && !verified.load(Ordering::Relaxed) && stats.ok > 0 {
        eprintln!("loadgen: warning: no receipt signature was verified");
    }
    let line = format!(
        "RESULT label={} op={} {mode} n={n} secs={secs:.2} rps={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={} late={}",
        if args.label.is_empty() {
            "-"
        } else {
            &args.label
        },
        match args.op {
            Op::Head => "head",
            Op::Advance => "advance",
        },
        n as f64 / secs,
        ms(0.50),
        ms(0.90),
        ms(0.99),
        stats.hist.max() as f64 / 1000.0,
        stats.errors,
        stats.late,
    );
    println!("{line}");
}
