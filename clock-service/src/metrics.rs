//! The service's Prometheus metrics, registered on a registry handed in at build time (no
//! global state). Names follow Prometheus conventions: base units, `_total` counters, latency
//! histograms in seconds. No label carries a DID or CID.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The ability an invocation asked for, as a label (bounded: anything else is `other`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Ability {
    /// `clock/head`.
    clock_head,
    /// `clock/advance`.
    clock_advance,
    /// Anything the service does not provide.
    other,
}

impl Ability {
    /// The label for an ability string.
    pub fn of(can: &str) -> Self {
        match can {
            "clock/head" => Self::clock_head,
            "clock/advance" => Self::clock_advance,
            _ => Self::other,
        }
    }
}

/// How an invocation ended, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// `{ok}` receipt.
    ok,
    /// Refused by authorization (bad signature, expired, not delegated, wrong audience, …).
    unauthorized,
    /// The Space is not provisioned.
    unprovisioned,
    /// The invocation was malformed or named a missing block.
    invalid,
    /// The ability is not provided.
    not_found,
    /// The service failed (store error, too much contention).
    error,
}

/// Labels of the per-invocation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// The ability.
    pub ability: Ability,
    /// How it ended.
    pub outcome: Outcome,
}

/// Labels of the HTTP response counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The status code.
    pub status: u16,
}

/// Labels of the per-worker gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker thread's index (0 to `CLOCK_WORKERS` - 1).
    pub worker: usize,
}

/// A store operation, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StoreOp {
    /// Read a head.
    head,
    /// Compare-and-set a head (writing the advance's event blocks with it).
    compare_and_set,
    /// Read blocks.
    get_blocks,
    /// Registry lookup.
    is_provisioned,
}

/// Labels of the store latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The operation.
    pub op: StoreOp,
}

/// Whether a provisioning answer came from the cache.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheResult {
    /// Answered from the cache.
    hit,
    /// Looked up.
    miss,
}

/// Labels of the provisioning cache counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Hit or miss.
    pub result: CacheResult,
}

fn latency() -> Histogram {
    // 50 µs … ~1.6 s: covers a cached head read up to a slow, contended advance.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Every metric of the service.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Invocations handled, by ability and outcome.
    pub invocations: Family<InvocationLabels, Counter>,
    /// Time to handle one invocation (validation, handler, receipt), by ability.
    pub invocation_duration: Family<InvocationLabels, Histogram>,
    /// HTTP responses by status.
    pub http_responses: Family<HttpLabels, Counter>,
    /// Requests being handled now.
    pub in_flight: Gauge,
    /// Head compare-and-set conflicts (another writer advanced the clock first).
    pub advance_conflicts: Counter,
    /// Advances that gave up after too many conflicts.
    pub advance_exhausted: Counter,
    /// Advances whose remembered head proved stale at the compare-and-set (another replica
    /// had advanced the clock), so they read the head and merged again.
    pub head_hint_stale: Counter,
    /// Store operation latency, by operation.
    pub store_duration: Family<StoreLabels, Histogram>,
    /// Provisioning lookups, by cache hit or miss.
    pub provisioning_cache: Family<CacheLabels, Counter>,
    /// Invocation signatures verified together, per batch.
    pub signature_batch_size: Histogram,
    /// Connections open on each worker thread.
    pub worker_connections: Family<WorkerLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under `clock_` on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            invocations: Family::default(),
            invocation_duration: Family::new_with_constructor(latency),
            http_responses: Family::default(),
            in_flight: Gauge::default(),
            advance_conflicts: Counter::default(),
            advance_exhausted: Counter::default(),
            head_hint_stale: Counter::default(),
            store_duration: Family::new_with_constructor(latency),
            provisioning_cache: Family::default(),
            signature_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            worker_connections: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("clock");
        r.register(
            "invocations",
            "Invocations handled, by ability and outcome",
            m.invocations.clone(),
        );
        r.register(
            "invocation_duration_seconds",
            "Time to validate and handle one invocation and sign its receipt",
            m.invocation_duration.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses, by status code",
            m.http_responses.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests being handled",
            m.in_flight.clone(),
        );
        r.register(
            "advance_conflicts",
            "Head compare-and-set conflicts retried during clock/advance",
            m.advance_conflicts.clone(),
        );
        r.register(
            "advance_exhausted",
            "clock/advance invocations that gave up after too many conflicts",
            m.advance_exhausted.clone(),
        );
        r.register(
            "advance_stale_head_hints",
            "clock/advance compare-and-sets that failed on a remembered head another replica had replaced",
            m.head_hint_stale.clone(),
        );
        r.register(
            "store_duration_seconds",
            "Latency of store operations",
            m.store_duration.clone(),
        );
        r.register(
            "provisioning_lookups",
            "Provisioning checks, by cache hit or miss",
            m.provisioning_cache.clone(),
        );
        r.register(
            "signature_batch_size",
            "Invocation signatures verified together in one batch",
            m.signature_batch_size.clone(),
        );
        r.register(
            "worker_connections",
            "ucanto connections open, by worker thread",
            m.worker_connections.clone(),
        );
        m
    }

    /// Records one store operation's latency.
    pub fn store_op(&self, op: StoreOp, started: std::time::Instant) {
        self.store_duration
            .get_or_create(&StoreLabels { op })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
