//! The Space's Merkle clock, as the worker uses it: read the head, advance with an event.
//!
//! Two backends: the clock service over ucanto ([`Clock::remote`], invoked with the Space key or
//! an agent key and its delegations), or, in one process, the clock service's own embedded store
//! and merge logic ([`Clock::embedded`], a redb file), which is what the CLI uses by default.

use std::collections::HashMap;
use std::path::Path;

use cid::Cid;
use clock_service::client::{ClientError, ClockClient, Invoker};
use clock_service::clocks::{AdvanceError, Clocks};
use clock_service::metrics::Metrics;
use clock_service::store::{AnyStore, ClockStore};
use proto::Block;

use crate::error::Error;

/// Most blocks one embedded advance may read while merging (the service's default).
const MAX_MERGE_READS: usize = 10_000;

/// A clock backend.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The clock service's logic over a local store, in this process.
    Embedded(Clocks<AnyStore>),
    /// A clock service over ucanto.
    Remote(Box<Remote>),
}

/// A clock service and who invokes it.
#[derive(Clone, Debug)]
pub struct Remote {
    /// The service.
    pub client: ClockClient,
    /// Who invokes, on which clock, with which proofs.
    pub invoker: Invoker,
}

impl Clock {
    /// The embedded clock over the redb file at `path`.
    pub async fn embedded(path: &Path) -> Result<Self, Error> {
        let location = format!("redb:{}", path.display());
        let store = AnyStore::open(&location).await.map_err(|e| Error::Clock {
            space: String::new(),
            reason: format!("opening {}: {e}", path.display()),
            retry: true,
        })?;
        let mut registry = prometheus_client::registry::Registry::default();
        Ok(Self::Embedded(Clocks::new(
            store,
            Metrics::register(&mut registry),
            MAX_MERGE_READS,
        )))
    }

    /// The clock service at `client`, invoked by `invoker`.
    pub fn remote(client: ClockClient, invoker: Invoker) -> Self {
        Self::Remote(Box::new(Remote { client, invoker }))
    }

    /// The head of `space`'s clock.
    pub async fn head(&self, space: &str) -> Result<Vec<Cid>, Error> {
        match self {
            Self::Embedded(clocks) => clocks.head(space).await.map_err(|e| Error::Clock {
                space: space.to_owned(),
                reason: e.to_string(),
                retry: true,
            }),
            Self::Remote(remote) => {
                let Remote { client, invoker } = &**remote;
                check_space(invoker, space)?;
                client
                    .head(invoker)
                    .await
                    .map_err(|e| client_error(space, e))
            }
        }
    }

    /// Advances `space`'s clock with `event` (whose parents the clock already holds); returns
    /// the new head.
    pub async fn advance(&self, space: &str, event: &Block) -> Result<Vec<Cid>, Error> {
        match self {
            Self::Embedded(clocks) => {
                let attached = HashMap::from([(*event.cid(), event.clone())]);
                clocks
                    .advance(space, event.cid(), &attached)
                    .await
                    .map_err(|e| advance_error(space, &e))
            }
            Self::Remote(remote) => {
                let Remote { client, invoker } = &**remote;
                check_space(invoker, space)?;
                client
                    .advance(invoker, event.cid(), std::slice::from_ref(event))
                    .await
                    .map_err(|e| client_error(space, e))
            }
        }
    }

    /// Marks `space` provisioned in the embedded store (the embedded clock has no provisioning
    /// check; this keeps a later switch to `registry` working). No-op for a remote clock.
    pub async fn provision(&self, space: &str) -> Result<(), Error> {
        if let Self::Embedded(clocks) = self {
            clocks
                .store()
                .set_provisioned(space, true)
                .await
                .map_err(|e| Error::Clock {
                    space: space.to_owned(),
                    reason: e.to_string(),
                    retry: true,
                })?;
        }
        Ok(())
    }
}

fn check_space(invoker: &Invoker, space: &str) -> Result<(), Error> {
    if invoker.clock == space {
        Ok(())
    } else {
        Err(Error::InvalidJob(format!(
            "the clock client is set up for {}, not {space}",
            invoker.clock
        )))
    }
}

fn advance_error(space: &str, e: &AdvanceError) -> Error {
    Error::Clock {
        space: space.to_owned(),
        reason: format!("{}: {e}", e.name()),
        retry: !e.is_client_error(),
    }
}

fn client_error(space: &str, e: ClientError) -> Error {
    let retry = match &e {
        ClientError::Transport { .. } => true,
        ClientError::Http { status, .. } => status.is_server_error() || status.as_u16() == 429,
        // Contention and store failures are worth another try; refusals are not.
        ClientError::Refused { name, .. } => matches!(
            name.as_str(),
            "AdvanceContention" | "StoreError" | "ServiceUnavailable"
        ),
        _ => false,
    };
    Error::Clock {
        space: space.to_owned(),
        reason: e.to_string(),
        retry,
    }
}
