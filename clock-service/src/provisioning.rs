//! Is a clock a provisioned Storacha Space? Without this check anyone could use the service as a
//! free generic clock. The answer is cached per Space for a TTL, so a busy clock costs one lookup
//! per TTL, not one per request.
//!
//! Modes: `off` (every Space passes — development), `registry` (the Space must be in the store's
//! registry, which the scheduler fills when a user registers and `clock-service provision`
//! manages by hand). The `storacha` mode (asking the upload service `space/info`) needs the
//! Storacha client, which arrives with its own issue; the configuration refuses it until then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{CacheLabels, CacheResult, Metrics, StoreOp};
use crate::store::{AnyStore, ClockStore, StoreError};

/// Most Spaces remembered by the cache; past this the expired entries are dropped, then the
/// whole cache if it is still full (a cheap bound against a flood of distinct DIDs).
pub const MAX_CACHED_SPACES: usize = 100_000;

#[derive(Debug)]
enum Mode {
    Off,
    Registry(AnyStore),
}

/// The provisioning check with its cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Provisioning {
    mode: Arc<Mode>,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
    metrics: Metrics,
}

impl Provisioning {
    /// No check.
    pub fn off(metrics: Metrics) -> Self {
        Self::with_mode(Mode::Off, Duration::ZERO, metrics)
    }

    /// The store's registry, answers cached for `ttl`.
    pub fn registry(store: AnyStore, ttl: Duration, metrics: Metrics) -> Self {
        Self::with_mode(Mode::Registry(store), ttl, metrics)
    }

    fn with_mode(mode: Mode, ttl: Duration, metrics: Metrics) -> Self {
        Self {
            mode: Arc::new(mode),
            ttl,
            cache: Arc::default(),
            metrics,
        }
    }

    /// Whether `space` may use the service.
    pub async fn check(&self, space: &str) -> Result<bool, StoreError> {
        let store = match &*self.mode {
            Mode::Off => return Ok(true),
            Mode::Registry(store) => store,
        };
        let now = Instant::now();
        if let Some((answer, at)) = self.lock().get(space)
            && now.duration_since(*at) < self.ttl
        {
            self.count(CacheResult::hit);
            return Ok(*answer);
        }
        self.count(CacheResult::miss);
        let t = Instant::now();
        let answer = store.is_provisioned(space).await;
        self.metrics.store_op(StoreOp::is_provisioned, t);
        let answer = answer?;
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED_SPACES {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if cache.len() >= MAX_CACHED_SPACES {
                cache.clear();
            }
        }
        cache.insert(space.to_string(), (answer, now));
        Ok(answer)
    }

    /// Forgets cached answers (after the registry changed in this process).
    pub fn invalidate(&self, space: &str) {
        self.lock().remove(space);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, result: CacheResult) {
        self.metrics
            .provisioning_cache
            .get_or_create(&CacheLabels { result })
            .inc();
    }
}
