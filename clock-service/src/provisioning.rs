//! Is a clock a provisioned Storacha Space? Without this check anyone could use the service as a
//! free generic clock. The answer is cached per Space for a TTL, so a busy clock costs one lookup
//! per TTL, not one per request.
//!
//! Modes: `off` (every Space passes — development), `registry` (the Space must be in the store's
//! registry, which the scheduler fills when a user registers and `clock-service provision`
//! manages by hand), `storacha` (the upload service's `space/info` must name a provider). For
//! `storacha` the service invokes `space/info` as its own key (`did:key`), with a delegation on
//! the Space granting it `space/info`: one the client attached to its invocation (an extra
//! proof), or one configured (`CLOCK_STORACHA_PROOFS`). A Space with no such delegation cannot
//! be checked, which is an error, not a "no".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::principal::Ed25519Signer;
use proto::ucan::Delegation;

use crate::metrics::{CacheLabels, CacheResult, Metrics, StoreOp};
use crate::store::{AnyStore, ClockStore, StoreError};

/// Most Spaces remembered by the cache; past this the expired entries are dropped, then the
/// whole cache if it is still full (a cheap bound against a flood of distinct DIDs).
pub const MAX_CACHED_SPACES: usize = 100_000;

/// Why a Space's provisioning could not be checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisioningError {
    /// The registry could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No configured delegation grants this service `space/info` on the Space.
    #[error("no delegation grants this service space/info on {space}")]
    NoDelegation {
        /// The Space.
        space: String,
    },
    /// The upload service could not be asked, or refused.
    #[error("space/info for {space}: {source}")]
    Storacha {
        /// The Space.
        space: String,
        /// The cause.
        #[source]
        source: storacha::Error,
    },
}

/// Asks Storacha's upload service: `space/info` as the service's own key, with delegations on
/// the Spaces.
#[derive(Debug)]
pub struct StorachaCheck {
    client: storacha::Client,
    signer: Ed25519Signer,
    proofs: Vec<Delegation>,
}

impl StorachaCheck {
    /// Invokes as `signer`'s `did:key` (the upload service resolves only keys) against the
    /// service in `config`, with `proofs` (delegations to that key; those naming a Space are
    /// used for it).
    pub fn new(
        config: storacha::Config,
        signer: &Ed25519Signer,
        proofs: Vec<Delegation>,
    ) -> Result<Self, storacha::Error> {
        let signer = signer
            .clone()
            .with_did(signer.key_did().to_string())
            .map_err(|e| storacha::Error::Delegation(e.to_string()))?;
        let client = storacha::Client::new(config, storacha::Agent::space_owner(signer.clone()))?;
        Ok(Self {
            client,
            signer,
            proofs,
        })
    }

    async fn is_provisioned(
        &self,
        space: &str,
        attached: &[Delegation],
    ) -> Result<bool, ProvisioningError> {
        let proofs: Vec<Delegation> = attached
            .iter()
            .chain(&self.proofs)
            .filter(|d| {
                d.ucan().audience() == self.signer.did()
                    && d.ucan().capabilities().iter().any(|c| {
                        c.with == space && matches!(c.can.as_str(), "space/info" | "space/*" | "*")
                    })
            })
            .cloned()
            .collect();
        if proofs.is_empty() {
            return Err(ProvisioningError::NoDelegation {
                space: space.to_string(),
            });
        }
        let agent = storacha::Agent::new(self.signer.clone(), space, proofs);
        self.client
            .for_agent(agent)
            .is_provisioned()
            .await
            .map_err(|source| ProvisioningError::Storacha {
                space: space.to_string(),
                source,
            })
    }
}

#[derive(Debug)]
enum Mode {
    Off,
    Registry(AnyStore),
    Storacha(Box<StorachaCheck>),
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

    /// The upload service's `space/info`, answers cached for `ttl`.
    pub fn storacha(check: StorachaCheck, ttl: Duration, metrics: Metrics) -> Self {
        Self::with_mode(Mode::Storacha(Box::new(check)), ttl, metrics)
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
    pub async fn check(&self, space: &str) -> Result<bool, ProvisioningError> {
        self.check_with(space, &[]).await
    }

    /// Whether `space` may use the service, using delegations the invocation carried (in the
    /// `storacha` mode, a `space/info` grant to this service) besides the configured ones.
    pub async fn check_with(
        &self,
        space: &str,
        attached: &[Delegation],
    ) -> Result<bool, ProvisioningError> {
        if let Mode::Off = &*self.mode {
            return Ok(true);
        }
        let now = Instant::now();
        if let Some((answer, at)) = self.lock().get(space)
            && now.duration_since(*at) < self.ttl
        {
            self.count(CacheResult::hit);
            return Ok(*answer);
        }
        self.count(CacheResult::miss);
        let answer = match &*self.mode {
            Mode::Off => true,
            Mode::Registry(store) => {
                let t = Instant::now();
                let answer = store.is_provisioned(space).await;
                self.metrics.store_op(StoreOp::is_provisioned, t);
                answer?
            }
            Mode::Storacha(check) => check.is_provisioned(space, attached).await?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::storacha::LocalStoracha;
    use prometheus_client::registry::Registry;
    use proto::ucan::{Capability, Ucan};

    #[tokio::test]
    async fn storacha_mode_asks_space_info_and_caches_the_answer() {
        let service = LocalStoracha::shared();
        let clock_key = Ed25519Signer::generate()
            .unwrap()
            .with_did("did:web:clock.example.com")
            .unwrap();
        let space = Ed25519Signer::generate().unwrap();
        let stranger = Ed25519Signer::generate().unwrap();
        // The Space owner grants the clock's key space/info (to its did:key: the upload service
        // cannot resolve our did:web).
        let grant = Delegation::issue(
            Ucan::builder(&space, clock_key.key_did())
                .capability(Capability::new("space/info", space.did()))
                .expiration(4_000_000_000),
            &[],
            &[],
        )
        .unwrap();
        let config = storacha::Config::for_service(&service.url, &service.did);
        let check = StorachaCheck::new(config, &clock_key, vec![grant]).unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let provisioning = Provisioning::storacha(check, Duration::from_secs(3600), metrics);

        assert!(!provisioning.check(space.did()).await.unwrap());
        service.provision(space.did()).await;
        // Cached within the TTL.
        assert!(!provisioning.check(space.did()).await.unwrap());
        provisioning.invalidate(space.did());
        assert!(provisioning.check(space.did()).await.unwrap());
        // A Space we hold no delegation for cannot be checked...
        assert!(matches!(
            provisioning.check(stranger.did()).await,
            Err(ProvisioningError::NoDelegation { .. })
        ));
        // ... unless the invocation carries one (a grant to another key, or of another
        // ability, does not count).
        let attached = |to: &str, can: &str| {
            Delegation::issue(
                Ucan::builder(&stranger, to)
                    .capability(Capability::new(can, stranger.did()))
                    .expiration(4_000_000_000),
                &[],
                &[],
            )
            .unwrap()
        };
        assert!(matches!(
            provisioning
                .check_with(
                    stranger.did(),
                    &[
                        attached(space.did(), "space/info"),
                        attached(clock_key.key_did(), "upload/add")
                    ]
                )
                .await,
            Err(ProvisioningError::NoDelegation { .. })
        ));
        service.provision(stranger.did()).await;
        assert!(
            provisioning
                .check_with(
                    stranger.did(),
                    &[attached(clock_key.key_did(), "space/info")]
                )
                .await
                .unwrap()
        );
    }
}
