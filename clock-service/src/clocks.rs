//! The clock operations behind the handlers: read a head, and advance one with an event — pail's
//! merge (`proto::clock::advance`) over the blocks the invocation carried and the blocks the
//! store holds, committed with a compare-and-set on the head as read, retried on conflict.
//!
//! `proto::clock::advance` is synchronous; the store is not. So an advance runs the merge over an
//! in-memory map (the event blocks that came with the invocation, plus blocks read so far), and
//! when the merge reports a missing block, reads that block from the store and runs again. A
//! block the store does not hold either is a missing ancestor: a named error, never a hang, and
//! nothing is written. Event blocks are stored only once the merge has succeeded, and always
//! before the head that names them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cid::Cid;
use proto::Block;
use proto::clock::{self, ClockError, Event};

use crate::metrics::{Metrics, StoreOp};
use crate::store::{ClockStore, StoreError};

/// How many head conflicts one advance retries before giving up. Each retry re-reads the head
/// and re-merges, so a conflict costs one round trip; 64 covers far more contention than a
/// Space's writers produce.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// Why an advance failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdvanceError {
    /// The event block did not come with the invocation and the store does not hold it.
    #[error("missing event block: {0}")]
    MissingEvent(Cid),
    /// An ancestor the merge needs is neither attached nor stored.
    #[error("missing block: {0}")]
    MissingAncestor(Cid),
    /// A block is not a clock event.
    #[error("{0}")]
    InvalidEvent(String),
    /// The merge needed more blocks than the configured limit.
    #[error("advance needs more than {limit} blocks from the store")]
    TooMuchHistory {
        /// The limit.
        limit: usize,
    },
    /// The head kept changing under us.
    #[error("clock head changed {attempts} times during advance; try again")]
    Contention {
        /// Attempts made.
        attempts: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdvanceError {
    /// The error name put in the receipt.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MissingEvent(_) => "EventNotFound",
            Self::MissingAncestor(_) => "MissingAncestor",
            Self::InvalidEvent(_) => "InvalidEvent",
            Self::TooMuchHistory { .. } => "HistoryTooLong",
            Self::Contention { .. } => "AdvanceContention",
            Self::Store(_) => "StoreError",
        }
    }

    /// True when the client did something wrong (as opposed to the service failing).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::MissingEvent(_)
                | Self::MissingAncestor(_)
                | Self::InvalidEvent(_)
                | Self::TooMuchHistory { .. }
        )
    }
}

/// The event blocks of an invocation worth keeping: the event and the ancestors reachable from it
/// through blocks that came along (like w3clock's `filterEventBlocks`). Blocks that are not
/// events are ignored.
pub fn event_blocks(event: &Cid, attached: &HashMap<Cid, Block>) -> Vec<Block> {
    let mut out = Vec::new();
    let mut queue = vec![*event];
    let mut seen = std::collections::HashSet::new();
    while let Some(cid) = queue.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let Some(block) = attached.get(&cid) else {
            continue;
        };
        let Ok(ev) = Event::from_block(block) else {
            continue;
        };
        out.push(block.clone());
        queue.extend(ev.parents);
    }
    out
}

/// Clock operations over a store.
#[derive(Clone, Debug)]
pub struct Clocks<S> {
    store: S,
    metrics: Metrics,
    max_reads: usize,
}

impl<S: ClockStore> Clocks<S> {
    /// Clock operations over `store`, reading at most `max_reads` blocks per advance.
    pub fn new(store: S, metrics: Metrics, max_reads: usize) -> Self {
        Self {
            store,
            metrics,
            max_reads,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock's head.
    pub async fn head(&self, clock: &str) -> Result<Vec<Cid>, StoreError> {
        let t = Instant::now();
        let head = self.store.head(clock).await;
        self.metrics.store_op(StoreOp::head, t);
        head
    }

    /// Advances `clock` with `event`; `attached` are the blocks that came with the invocation
    /// (already hash-checked). Returns the new head.
    pub async fn advance(
        &self,
        clock: &str,
        event: &Cid,
        attached: &HashMap<Cid, Block>,
    ) -> Result<Vec<Cid>, AdvanceError> {
        let keep = event_blocks(event, attached);
        let mut blocks: HashMap<Cid, Block> =
            keep.iter().map(|b| (*b.cid(), b.clone())).collect();
        let mut absent: std::collections::HashSet<Cid> = Default::default();
        let mut reads = 0usize;
        let mut stored = false;
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let head = self.head(clock).await?;
            let next = loop {
                match clock::advance(&blocks, &head, event) {
                    Ok(next) => break next,
                    Err(ClockError::MissingBlock { cid }) => {
                        if absent.contains(&cid) {
                            return Err(if cid == *event {
                                AdvanceError::MissingEvent(cid)
                            } else {
                                AdvanceError::MissingAncestor(cid)
                            });
                        }
                        reads += 1;
                        if reads > self.max_reads {
                            return Err(AdvanceError::TooMuchHistory {
                                limit: self.max_reads,
                            });
                        }
                        let t = Instant::now();
                        let got = self.store.get_blocks(clock, &[cid]).await?;
                        self.metrics.store_op(StoreOp::get_blocks, t);
                        match got.into_iter().next().flatten() {
                            Some(b) => {
                                blocks.insert(cid, b);
                            }
                            None => {
                                absent.insert(cid);
                            }
                        }
                    }
                    Err(e) => return Err(AdvanceError::InvalidEvent(e.to_string())),
                }
            };
            if next == head {
                return Ok(next);
            }
            if !stored {
                let t = Instant::now();
                self.store.put_blocks(clock, &keep).await?;
                self.metrics.store_op(StoreOp::put_blocks, t);
                stored = true;
            }
            let t = Instant::now();
            let swapped = self.store.compare_and_set_head(clock, &head, &next).await?;
            self.metrics.store_op(StoreOp::compare_and_set, t);
            if swapped {
                return Ok(next);
            }
            self.metrics.advance_conflicts.inc();
            // Spread retries of writers that collided so they do not collide again in lockstep.
            let jitter = u64::from(event.hash().digest()[attempt % 32]) % 8;
            tokio::time::sleep(Duration::from_micros(jitter * 50 * attempt as u64)).await;
        }
        self.metrics.advance_exhausted.inc();
        Err(AdvanceError::Contention {
            attempts: MAX_CAS_ATTEMPTS,
        })
    }
}
