//! Worker threads: the ucanto listener's connections are served by N threads, each running a
//! single-threaded Tokio runtime with a tower stack, a store connection and signature batches
//! of its own. The accepting thread hands each new connection to the worker with the fewest open.
//!
//! Why not one multi-threaded runtime: a request's path crosses tasks (the connection, the
//! signature batch's drainer, the Redis connection's driver), and on a work-stealing runtime each
//! hand-over to a task on another thread is a futex or eventfd wake-up and a context switch,
//! about 0.7 per request at 16 in flight on two CPUs. Within one worker every hand-over is a
//! queue push on the same thread. On this service's load test that cut the server's CPU per
//! `clock/head` by about 10 % and raised throughput by a median 19 % over five alternating pairs
//! (BENCHMARKS.md, "Worker threads", which also has the tick's share). The cost: a connection stays on its worker, so a few very busy connections can
//! load workers unevenly. Shared state (the event cache, head hints, the turns of advances, the
//! signature cache, the provisioning cache, metrics, the concurrency limit) stays shared.
//!
//! Shutdown: [`Workers::drain`] closes the hand-over channels; each worker then stops its
//! connections gracefully (in-flight requests finish, idle keep-alive connections close) for up
//! to the grace period, and drops whatever is left when its runtime shuts down.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::metrics::{Metrics, WorkerLabels};
use crate::server::HttpService;
use crate::store::AnyStore;

/// The running workers, as the accepting thread sees them.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least loaded worker starts, so ties rotate.
    next: usize,
}

#[derive(Debug)]
struct Worker {
    /// Hands the worker a connection; closed to make it drain.
    connections: mpsc::UnboundedSender<std::net::TcpStream>,
    /// Connections open on the worker (also the `clock_worker_connections` gauge).
    open: Gauge,
    /// Resolves (with an error) when the worker's thread has finished.
    finished: oneshot::Receiver<()>,
}

impl Workers {
    /// Starts `n` workers (at least one). Each opens its own connection to `store` and builds
    /// its stack with `build` before this returns; the first failure is returned. A worker
    /// given the drain signal waits up to `grace` for its in-flight requests.
    pub async fn start<B>(
        n: usize,
        store: &AnyStore,
        build: B,
        grace: Duration,
        metrics: &Metrics,
    ) -> Result<Self, Error>
    where
        B: Fn(AnyStore) -> HttpService + Clone + Send + 'static,
    {
        let mut workers = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            let (connections, handed) = mpsc::unbounded_channel();
            let (ready, started) = oneshot::channel();
            let (finish, finished) = oneshot::channel::<()>();
            let open = metrics
                .worker_connections
                .get_or_create(&WorkerLabels { worker: index })
                .clone();
            let store = store.clone();
            let build = build.clone();
            let gauge = open.clone();
            std::thread::Builder::new()
                .name(format!("clock-worker-{index}"))
                .spawn(move || {
                    // Dropped when the thread ends, however it ends: `drain` waits for that.
                    let _finish = finish;
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(source) => {
                            let _ = ready.send(Err(Error::Worker {
                                worker: index,
                                source,
                            }));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let store = match store.another_connection().await {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = ready.send(Err(e.into()));
                                return;
                            }
                        };
                        let service = build(store);
                        let _ = ready.send(Ok(()));
                        serve(index, handed, service, gauge, grace).await;
                    });
                    // Dropping the runtime closes the connections still open after the grace
                    // period.
                })
                .map_err(|source| Error::Worker {
                    worker: index,
                    source,
                })?;
            match started.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::Worker {
                        worker: index,
                        source: std::io::Error::other("the worker thread stopped while starting"),
                    });
                }
            }
            workers.push(Worker {
                connections,
                open,
                finished,
            });
        }
        Ok(Self { workers, next: 0 })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Hands `stream` to the worker with the fewest open connections. Returns the stream back
    /// when no worker is running any more (each one's thread has ended).
    pub fn dispatch(&mut self, stream: std::net::TcpStream) -> Result<(), std::net::TcpStream> {
        let n = self.workers.len();
        let start = self.next;
        self.next = (self.next + 1) % n.max(1);
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: among equally loaded workers the rotation decides.
        order.sort_by_key(|&i| self.workers[i].open.get());
        let mut stream = stream;
        for i in order {
            let w = &self.workers[i];
            w.open.inc();
            match w.connections.send(stream) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    w.open.dec();
                    stream = back;
                }
            }
        }
        Err(stream)
    }

    /// Tells every worker to drain (no new connections; in-flight requests finish within the
    /// grace period) and resolves when all of their threads have ended.
    pub fn drain(self) -> impl Future<Output = ()> + Send + 'static {
        let finished: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                drop(w.connections);
                w.finished
            })
            .collect();
        async move {
            for f in finished {
                let _ = f.await;
            }
        }
    }
}

/// One worker's loop: serves the connections handed to it until the channel closes, then
/// drains them for up to `grace`.
async fn serve(
    index: usize,
    mut handed: mpsc::UnboundedReceiver<std::net::TcpStream>,
    service: HttpService,
    open: Gauge,
    grace: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let tick = tokio::spawn(tick());
    while let Some(stream) = handed.recv().await {
        let closed = Closed(open.clone());
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(worker = index, error = %e, "cannot take over a connection");
                continue;
            }
        };
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _closed = closed;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tick.abort();
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::debug!(worker = index, "worker drained"),
        Err(_) => tracing::warn!(
            worker = index,
            "grace period over; closing the worker's remaining connections"
        ),
    }
}

/// Keeps a timer due within [`TICK`] on the worker's timer wheel, so that the timers every
/// request sets (its timeout, the store's response timeout) are never the earliest one.
///
/// Tokio's time driver interrupts the thread's poll of the I/O driver (an eventfd write and
/// read, an extra `epoll_wait`) whenever a timer is set earlier than the wheel's next wake-up,
/// and with an otherwise empty wheel that is every first timer after the worker went idle, and
/// then each Redis command's response timeout (it is due before the request timeouts already
/// set). That was one to two wake-ups per request. With the tick, the next wake-up is never
/// more than [`TICK`] away, request timers are all later, and the cost is one wake-up per tick.
async fn tick() {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
    }
}

/// The period of [`tick`]: shorter than the timers a request sets by default (the 10 s request
/// timeout, Redis's 5 s response timeout). A request timeout below it still works; it only
/// brings the wake-ups back.
const TICK: Duration = Duration::from_millis(500);

/// Counts a connection as closed when dropped (its task ended or was dropped with the runtime).
struct Closed(Gauge);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use http::{Request, Response};
    use hyper::body::Incoming;
    use prometheus_client::registry::Registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;
    use tower::util::BoxCloneSyncService;

    use super::*;
    use crate::http::Body;

    /// A service that answers with the name of the thread serving it; `/slow` first waits for
    /// `release`.
    fn thread_names(release: Arc<Notify>) -> impl Fn(AnyStore) -> HttpService + Clone + Send {
        move |_store| {
            let release = release.clone();
            BoxCloneSyncService::new(tower::service_fn(move |req: Request<Incoming>| {
                let release = release.clone();
                async move {
                    if req.uri().path() == "/slow" {
                        release.notified().await;
                    }
                    let name = std::thread::current().name().unwrap_or("?").to_owned();
                    Ok::<_, Infallible>(Response::new(Body::from(name)))
                }
            }))
        }
    }

    /// Sends one HTTP/1.1 request on `conn` and returns the response body.
    async fn get(conn: &mut tokio::net::TcpStream, path: &str) -> String {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return body[..len].to_owned();
                }
            }
        }
    }

    fn open(metrics: &Metrics, worker: usize) -> i64 {
        metrics
            .worker_connections
            .get_or_create(&WorkerLabels { worker })
            .get()
    }

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_drain_finishes_requests() {
        let dir = tempfile::tempdir().unwrap();
        let location = format!("redb:{}", dir.path().join("clock.redb").display());
        let store = AnyStore::open(&location).await.unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let release = Arc::new(Notify::new());
        let mut workers = Workers::start(
            2,
            &store,
            thread_names(release.clone()),
            Duration::from_secs(10),
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!(workers.len(), 2);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server_side, _) = listener.accept().unwrap();
            server_side.set_nonblocking(true).unwrap();
            workers.dispatch(server_side).unwrap();
            clients.push(client);
        }
        // The fewest-open rule alternates between two idle workers.
        let mut served = Vec::new();
        for c in &mut clients {
            served.push(get(c, "/").await);
        }
        served.sort();
        assert_eq!(
            served,
            [
                "clock-worker-0",
                "clock-worker-0",
                "clock-worker-1",
                "clock-worker-1"
            ]
        );
        assert_eq!((open(&metrics, 0), open(&metrics, 1)), (2, 2));

        // A closed connection is counted out, and the next one goes to the emptier worker.
        let closed_worker = {
            let c = clients.pop().unwrap();
            drop(c);
            served[3].clone()
        };
        let less = usize::from(closed_worker.ends_with('1'));
        for _ in 0..100 {
            if open(&metrics, less) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(open(&metrics, less), 1);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        workers.dispatch(server_side).unwrap();
        assert_eq!(get(&mut client, "/").await, format!("clock-worker-{less}"));

        // Drain with a request in flight: it is answered before the workers stop, and the
        // idle connections are closed.
        let mut slow = clients.pop().unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let drained = tokio::spawn(workers.drain());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!drained.is_finished(), "the drain waits for the request");
        release.notify_one();
        let mut rest = Vec::new();
        slow.read_to_end(&mut rest).await.unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("the workers stop once the request is answered")
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            client.read(&mut byte).await.unwrap(),
            0,
            "idle connection closed"
        );
        assert_eq!((open(&metrics, 0), open(&metrics, 1)), (0, 0));
    }

    #[tokio::test]
    async fn a_worker_that_cannot_connect_fails_the_start() {
        // A Redis of our own, stopped after the store's first connection: the workers' own
        // connections fail, and so does the start, with the store's error.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut redis = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services uses it)");
        let location = format!("redis://127.0.0.1:{port}/0");
        let mut store = None;
        for _ in 0..100 {
            if let Ok(s) = AnyStore::open(&location).await {
                store = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store = store.expect("the test's redis-server answers");
        redis.kill().unwrap();
        redis.wait().unwrap();

        let metrics = Metrics::register(&mut Registry::default());
        let started = Workers::start(
            2,
            &store,
            thread_names(Arc::new(Notify::new())),
            Duration::from_secs(1),
            &metrics,
        )
        .await;
        match started {
            Err(Error::Store(e)) => assert!(e.to_string().contains("connect"), "{e}"),
            other => panic!("expected a store error, got {other:?}"),
        }
    }
}
