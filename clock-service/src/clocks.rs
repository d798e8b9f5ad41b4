//! The clock operations behind the handlers: read a head, and advance one with an event — pail's
//! merge over the blocks the invocation carried and the blocks the store holds, committed with a
//! compare-and-set on the head as read, retried on conflict.
//!
//! # The merge
//!
//! pail's `advance` (`proto::clock::advance`) asks, for every head entry, whether the new event
//! descends from it, by walking the event's history breadth-first. When the head holds events
//! concurrent with the new one (every busy clock with several writers), each of those walks
//! reaches the clock's genesis: an advance costs (head width × history length) block fetches and
//! decodes, so a clock with a few thousand events and a dozen writers spends tens of
//! milliseconds of CPU per advance, and far more on retries.
//!
//! So an advance first merges with *heights*: an event's height is 0 for a genesis event and
//! otherwise one more than its highest parent's, and an ancestor is always lower than its
//! descendants. Looking for `b` below `a`, the walk skips every event not higher than `b`, which
//! limits it to the band of history between the two. Heights and parents of the events this
//! process has seen are kept in a bounded cache ([`EventCache`]), so the walks decode nothing.
//! The answers are pail's exactly: "descends from" is reachability in the event DAG (hash links
//! cannot form a cycle), the result is built with pail's rules in pail's order, and the fast
//! merge only answers when every event it needed was available (attached or stored) with valid
//! ancestry all the way down, in which case pail's walks, which only visit those ancestries,
//! find every block too. Whenever that is not so (a missing or malformed block anywhere in the
//! ancestry, or more reads than the limit), the advance runs pail's merge itself
//! (`proto::clock::advance`, on the blocking pool, reading blocks from the store as its walk
//! reaches them), so the error, and which block it names, is pail's.
//!
//! Advances of one clock within a process take turns ([`Clocks::advance`]); across replicas the
//! compare-and-set decides. A block the store does not hold is a missing ancestor: a named
//! error, never a hang, and nothing is written. Event blocks are stored only once the merge has
//! succeeded, by the compare-and-set that installs the head naming them (one atomic store step,
//! one round trip); blocks the store is known to hold already (cached events) are not sent
//! again. An advance merges against the head this process last saw of the clock
//! ([`HeadHints`]) when it has one, so with one writer per clock that compare-and-set is the
//! advance's only store round trip; a guess that proved stale is replaced by a read.

use std::collections::HashMap;
use std::sync::Arc;
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
    attached_events(event, attached)
        .into_iter()
        .map(|(block, _)| block)
        .collect()
}

/// [`event_blocks`], each with its parents as decoded (so the merge need not decode it again).
fn attached_events(event: &Cid, attached: &HashMap<Cid, Block>) -> Vec<(Block, Vec<Cid>)> {
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
        queue.extend(ev.parents.iter().copied());
        out.push((block.clone(), ev.parents));
    }
    out
}

/// What one advance has at hand besides the cache and the store: blocks (attached, or read by
/// pail's merge), and the parents of the attached events, decoded once.
struct Local<'a> {
    blocks: &'a HashMap<Cid, Block>,
    parents: &'a HashMap<Cid, Box<[Cid]>>,
}

/// How many bytes [`EventCache`] may use (an estimate of its entries' size).
pub const EVENT_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// What one cached event is counted as besides its parents (the key, the map slot, the `Arc`).
const CACHE_ENTRY_OVERHEAD: usize = 160;

/// One event as the merge needs it: its parents (in stored order) and its height (0 for an event
/// without parents, else one more than its highest parent's).
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    /// The parents, as stored in the block.
    pub parents: Box<[Cid]>,
    /// The height.
    pub height: u64,
}

/// Parents and heights of events this process has read from the store or stored itself, per
/// clock. Only events whose blocks are known to be in the store go in (read back from it, or
/// written by an advance whose compare-and-set succeeded), with a height computed from a full,
/// valid ancestry: so an event found here is one pail would find with all its history. Events
/// are immutable (named by their hash): an entry never goes stale. Keys are (clock, CID), as in
/// the store, so one clock never sees another clock's events.
///
/// Bounded by [`EVENT_CACHE_BYTES`] with two generations (like hashlru): inserts go to the young
/// map; when it holds half the budget it becomes the old map and the previous old one is
/// dropped; a hit in the old map moves the entry back to the young one.
#[derive(Debug)]
pub struct EventCache {
    inner: std::sync::Mutex<Generations>,
    half: usize,
}

type NodeMap = HashMap<Cid, Arc<Node>>;

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<String, NodeMap>,
    young_bytes: usize,
    old: HashMap<String, NodeMap>,
}

impl EventCache {
    /// A cache of at most about `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Default::default(),
            half: max_bytes / 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Each operation is a few map calls that leave the maps consistent, so a lock poisoned
        // by a panic elsewhere is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The event `cid` of `clock`, if cached.
    pub fn get(&self, clock: &str, cid: &Cid) -> Option<Arc<Node>> {
        let mut g = self.lock();
        if let Some(n) = g.young.get(clock).and_then(|m| m.get(cid)) {
            return Some(n.clone());
        }
        let n = g.old.get_mut(clock).and_then(|m| m.remove(cid))?;
        g.insert(clock, *cid, n.clone(), self.half);
        Some(n)
    }

    /// True when the event `cid` of `clock` is cached, so its block is in the store.
    pub fn contains(&self, clock: &str, cid: &Cid) -> bool {
        let g = self.lock();
        [&g.young, &g.old]
            .iter()
            .any(|m| m.get(clock).is_some_and(|nodes| nodes.contains_key(cid)))
    }

    /// Remembers events of `clock` whose blocks are in the store.
    pub fn insert(&self, clock: &str, nodes: impl IntoIterator<Item = (Cid, Arc<Node>)>) {
        if self.half == 0 {
            return;
        }
        let mut g = self.lock();
        for (cid, node) in nodes {
            g.insert(clock, cid, node, self.half);
        }
    }
}

impl Generations {
    fn insert(&mut self, clock: &str, cid: Cid, node: Arc<Node>, half: usize) {
        let size = CACHE_ENTRY_OVERHEAD + node.parents.len() * std::mem::size_of::<Cid>();
        if self.young_bytes + size > half {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        let nodes = match self.young.get_mut(clock) {
            Some(m) => m,
            None => {
                self.young_bytes += clock.len() + CACHE_ENTRY_OVERHEAD;
                self.young.entry(clock.to_owned()).or_default()
            }
        };
        if nodes.insert(cid, node).is_none() {
            self.young_bytes += size;
        }
    }
}

/// How many clocks [`HeadHints`] remembers (in two generations of half as many).
pub const HEAD_HINTS: usize = 16_384;

/// The last head this process saw of recently read or advanced clocks: a guess an advance starts
/// from instead of reading the head from the store. The compare-and-set that writes the new head
/// checks the guess, so a stale one (another replica advanced the clock) costs only a failed
/// compare-and-set, after which the advance reads the head and merges again; with one writer
/// per clock, the usual case, an advance takes one store round trip instead of two. Never used
/// to answer `clock/head`, which always reads the store.
///
/// Bounded by [`HEAD_HINTS`] clocks in two generations (like [`EventCache`]).
#[derive(Debug)]
pub struct HeadHints {
    inner: std::sync::Mutex<HintGenerations>,
    half: usize,
}

#[derive(Debug, Default)]
struct HintGenerations {
    young: HashMap<Box<str>, Arc<[Cid]>>,
    old: HashMap<Box<str>, Arc<[Cid]>>,
}

impl HeadHints {
    /// Hints for at most `max_clocks` clocks (0: none).
    pub fn new(max_clocks: usize) -> Self {
        Self {
            inner: Default::default(),
            half: max_clocks / 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HintGenerations> {
        // Each operation leaves the maps consistent, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last head seen of `clock`, if remembered.
    pub fn get(&self, clock: &str) -> Option<Arc<[Cid]>> {
        let g = self.lock();
        g.young.get(clock).or_else(|| g.old.get(clock)).cloned()
    }

    /// Remembers `head` as the last head seen of `clock`.
    pub fn set(&self, clock: &str, head: &[Cid]) {
        if self.half == 0 {
            return;
        }
        let mut g = self.lock();
        if let Some(h) = g.young.get_mut(clock) {
            if **h != *head {
                *h = head.into();
            }
            return;
        }
        if g.young.len() >= self.half {
            g.old = std::mem::take(&mut g.young);
        }
        g.old.remove(clock);
        g.young.insert(clock.into(), head.into());
    }

    /// Forgets `clock`'s hint (it proved stale).
    pub fn forget(&self, clock: &str) {
        let mut g = self.lock();
        g.young.remove(clock);
        g.old.remove(clock);
    }
}

/// pail's `advance` (see `proto::clock::advance` for the rules) over events whose heights are
/// known: `node` answers an event's parents and height, or `None` when it is not at hand, in
/// which case this returns `Err` with that event for the caller to find and call again.
pub fn merge_with_heights(
    head: &[Cid],
    event: &Cid,
    node: &dyn Fn(&Cid) -> Option<Arc<Node>>,
) -> Result<Vec<Cid>, Cid> {
    if head.contains(event) {
        return Ok(head.to_vec());
    }
    let get = |cid: &Cid| node(cid).ok_or(*cid);
    get(event)?;
    if head.is_empty() {
        return Ok(vec![*event]);
    }
    // Is `b` `a` or one of its ancestors? Breadth-first from `a`'s parents, never below `b`'s
    // height (an ancestor of `b`'s descendants' band cannot lead back up to `b`).
    let descends = |a: &Cid, b: &Cid| -> Result<bool, Cid> {
        if a == b {
            return Ok(true);
        }
        let a_node = get(a)?;
        let b_height = get(b)?.height;
        if a_node.height <= b_height {
            return Ok(false);
        }
        let mut links: std::collections::VecDeque<Cid> = a_node.parents.iter().copied().collect();
        let mut seen = std::collections::HashSet::new();
        while let Some(link) = links.pop_front() {
            if link == *b {
                return Ok(true);
            }
            if !seen.insert(link) {
                continue;
            }
            let n = get(&link)?;
            if n.height > b_height {
                links.extend(n.parents.iter().copied());
            }
        }
        Ok(false)
    };
    let mut kept: Vec<Cid> = Vec::with_capacity(head.len() + 1);
    for cid in head {
        if !kept.contains(cid) {
            kept.push(*cid);
        }
    }
    let mut changed = false;
    for cid in head {
        if descends(event, cid)? {
            kept.retain(|c| c != cid);
            if !kept.contains(event) {
                kept.push(*event);
            }
            changed = true;
        }
    }
    if changed {
        return Ok(kept);
    }
    for cid in head {
        if descends(cid, event)? {
            return Ok(head.to_vec());
        }
    }
    let mut next = head.to_vec();
    next.push(*event);
    Ok(next)
}

/// The nodes one fast merge has found, and whether each came from the store (cacheable now) or
/// from the invocation's blocks (cacheable once stored).
#[derive(Default)]
struct Found {
    nodes: HashMap<Cid, (Arc<Node>, bool)>,
}

/// The block getter of pail's own merge (the exact path): this advance's blocks (attached, or
/// read so far), then the store, waited on from a blocking thread.
struct Getter<'a, S> {
    clock: &'a str,
    local: std::cell::RefCell<&'a mut HashMap<Cid, Block>>,
    store: &'a S,
    runtime: tokio::runtime::Handle,
    metrics: &'a Metrics,
    reads: std::cell::Cell<usize>,
    max_reads: usize,
    /// Why the last `Err` was returned (the walk only carries a rendered error).
    failure: std::cell::RefCell<Option<AdvanceError>>,
}

impl<S: ClockStore> clock::BlockGetter for Getter<'_, S> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, clock::StoreError> {
        if let Some(b) = self.local.borrow().get(cid) {
            return Ok(Some(b.clone()));
        }
        let reads = self.reads.get() + 1;
        self.reads.set(reads);
        if reads > self.max_reads {
            *self.failure.borrow_mut() = Some(AdvanceError::TooMuchHistory {
                limit: self.max_reads,
            });
            return Err(clock::StoreError::new("read limit reached"));
        }
        let t = Instant::now();
        let got = self
            .runtime
            .block_on(self.store.get_blocks(self.clock, std::slice::from_ref(cid)));
        self.metrics.store_op(StoreOp::get_blocks, t);
        match got {
            Ok(got) => {
                let block = got.into_iter().next().flatten();
                if let Some(b) = &block {
                    self.local.borrow_mut().insert(*cid, b.clone());
                }
                Ok(block)
            }
            Err(e) => {
                let message = e.to_string();
                *self.failure.borrow_mut() = Some(AdvanceError::Store(e));
                Err(clock::StoreError::new(message))
            }
        }
    }
}

impl<S> Getter<'_, S> {
    /// The advance error for a failed walk.
    fn error(&self, event: &Cid, e: ClockError) -> AdvanceError {
        match e {
            ClockError::MissingBlock { cid } if cid == *event => AdvanceError::MissingEvent(cid),
            ClockError::MissingBlock { cid } => AdvanceError::MissingAncestor(cid),
            ClockError::Store { .. } if self.failure.borrow().is_some() => {
                self.failure.borrow_mut().take().expect("checked")
            }
            e => AdvanceError::InvalidEvent(e.to_string()),
        }
    }
}

/// One lock per clock with advances in progress in this process, so that advances of one clock
/// that arrive together take turns instead of all merging against the same head and all but one
/// losing the compare-and-set (a conflict costs a whole merge, which walks the clock's history).
/// Across replicas the compare-and-set still decides; this only stops a process from racing
/// itself. An entry lives while some advance holds or waits for it.
#[derive(Debug, Default)]
struct ClockLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a clock's turn; gives it up (and forgets the lock when nobody waits) on drop.
struct ClockTurn<'a> {
    table: &'a ClockLocks,
    clock: &'a str,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ClockLocks {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for `clock`'s turn.
    async fn turn<'a>(&'a self, clock: &'a str) -> ClockTurn<'a> {
        let lock = self.table().entry(clock.to_owned()).or_default().clone();
        let mut turn = ClockTurn {
            table: self,
            clock,
            lock: Some(lock.clone()),
            guard: None,
        };
        // If this future is dropped while waiting, `turn`'s drop still cleans the entry up.
        turn.guard = Some(lock.lock_owned().await);
        turn
    }
}

impl Drop for ClockTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let Some(lock) = self.lock.take() else { return };
        let mut table = self.table.table();
        // Clones are only made under the table lock: 2 = the table's and ours, nobody waiting.
        if Arc::strong_count(&lock) == 2 {
            table.remove(self.clock);
        }
    }
}

/// Clock operations over a store.
#[derive(Clone, Debug)]
pub struct Clocks<S> {
    store: S,
    metrics: Metrics,
    max_reads: usize,
    cache: Arc<EventCache>,
    hints: Arc<HeadHints>,
    locks: Arc<ClockLocks>,
}

/// How many times one fast merge looks up events that fell out of the cache mid-walk before it
/// leaves the work to pail's own merge.
const MAX_FAST_LOOKUPS: usize = 64;

impl<S: ClockStore + Clone> Clocks<S> {
    /// Clock operations over `store`, reading at most `max_reads` blocks per advance, with an
    /// event cache of [`EVENT_CACHE_BYTES`].
    pub fn new(store: S, metrics: Metrics, max_reads: usize) -> Self {
        Self::with_cache(store, metrics, max_reads, EVENT_CACHE_BYTES)
    }

    /// Like [`Clocks::new`] with an event cache of `cache_bytes` (0: none).
    pub fn with_cache(store: S, metrics: Metrics, max_reads: usize, cache_bytes: usize) -> Self {
        Self {
            store,
            metrics,
            max_reads,
            cache: Arc::new(EventCache::new(cache_bytes)),
            hints: Arc::new(HeadHints::new(if cache_bytes == 0 {
                0
            } else {
                HEAD_HINTS
            })),
            locks: Arc::default(),
        }
    }

    /// The same clocks over another handle on the store (a worker thread's own connection):
    /// the event cache, the head hints and the turns of advances stay shared, so every worker
    /// sees what the others learned and advances of one clock still take turns process-wide.
    pub fn with_store(&self, store: S) -> Self {
        Self {
            store,
            metrics: self.metrics.clone(),
            max_reads: self.max_reads,
            cache: self.cache.clone(),
            hints: self.hints.clone(),
            locks: self.locks.clone(),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock's head, as the store holds it now.
    pub async fn head(&self, clock: &str) -> Result<Vec<Cid>, StoreError> {
        let t = Instant::now();
        let head = self.store.head(clock).await;
        self.metrics.store_op(StoreOp::head, t);
        if let Ok(h) = &head {
            self.hints.set(clock, h);
        }
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
        let events = attached_events(event, attached);
        let mut keep = Vec::with_capacity(events.len());
        let mut parents = HashMap::with_capacity(events.len());
        for (block, ps) in events {
            parents.insert(*block.cid(), ps.into_boxed_slice());
            keep.push(block);
        }
        // Advances of one clock in this process take turns (see `ClockLocks`): merging against a
        // head another local advance is about to replace would only lose the compare-and-set.
        let _turn = self.locks.turn(clock).await;
        // This advance's blocks: the event blocks that came along, then whatever merges read.
        let mut blocks: HashMap<Cid, Block> = keep.iter().map(|b| (*b.cid(), b.clone())).collect();
        let mut found = Found::default();
        // Blocks read from the store by each kind of merge (each is held to `max_reads`).
        let mut fast_reads = 0usize;
        let mut reads = 0usize;
        // Start from the head this process last saw, if any (see `HeadHints`); a guess is
        // never the answer by itself: it is either confirmed by the compare-and-set or replaced
        // by a read.
        let mut guess = self.hints.get(clock);
        let mut attempt = 0;
        while attempt < MAX_CAS_ATTEMPTS {
            let (head, guessed) = match guess.take() {
                Some(h) => (h.to_vec(), true),
                None => {
                    attempt += 1;
                    (self.head(clock).await?, false)
                }
            };
            let local = Local {
                blocks: &blocks,
                parents: &parents,
            };
            let next = match self
                .fast_merge(clock, &head, event, &local, &mut found, &mut fast_reads)
                .await?
            {
                Some(next) => next,
                None => {
                    let (next, returned) = self
                        .exact_merge(clock, head.clone(), *event, blocks, &mut reads)
                        .await;
                    blocks = returned;
                    next?
                }
            };
            if next == head {
                if guessed {
                    // Already in the guessed head: answer with the stored head, read it.
                    continue;
                }
                return Ok(next);
            }
            // The event blocks go with the head, in one atomic step: written only if it wins.
            // Blocks known to be stored already (cached events: their blocks were read from the
            // store or written by a compare-and-set that won) are immutable and not sent again;
            // usually that is the parent a client attaches with each event.
            let unstored: Vec<Block> = keep
                .iter()
                .filter(|b| !self.cache.contains(clock, b.cid()))
                .cloned()
                .collect();
            let t = Instant::now();
            let swapped = self
                .store
                .compare_and_set_head(clock, &head, &next, &unstored)
                .await?;
            self.metrics.store_op(StoreOp::compare_and_set, t);
            if swapped {
                self.hints.set(clock, &next);
                // Now in the store: the events that came along may be cached too.
                self.cache.insert(
                    clock,
                    keep.iter().filter_map(|b| {
                        let (node, _) = found.nodes.get(b.cid())?;
                        Some((*b.cid(), node.clone()))
                    }),
                );
                return Ok(next);
            }
            self.hints.forget(clock);
            if guessed {
                // A stale guess, not a race lost: read the head and merge again.
                self.metrics.head_hint_stale.inc();
                continue;
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

    /// The merge with heights ([`merge_with_heights`]): `Ok(None)` when it cannot answer
    /// exactly as pail would (see the module documentation), and pail's merge must run.
    async fn fast_merge(
        &self,
        clock: &str,
        head: &[Cid],
        event: &Cid,
        local: &Local<'_>,
        found: &mut Found,
        reads: &mut usize,
    ) -> Result<Option<Vec<Cid>>, StoreError> {
        for _ in 0..MAX_FAST_LOOKUPS {
            let lookup = |cid: &Cid| -> Option<Arc<Node>> {
                if let Some((n, _)) = found.nodes.get(cid) {
                    return Some(n.clone());
                }
                self.cache.get(clock, cid)
            };
            let wanted = match merge_with_heights(head, event, &lookup) {
                Ok(next) => return Ok(Some(next)),
                Err(cid) => cid,
            };
            if !self.resolve(clock, wanted, local, found, reads).await? {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Finds the parents and height of `cid` and of every ancestor whose height that needs,
    /// from the cache, the invocation's blocks and the store (one read per round of missing
    /// blocks). `false` when some block is missing or not a valid event, or the read limit is
    /// reached: then only pail's merge can say what is wrong.
    async fn resolve(
        &self,
        clock: &str,
        cid: Cid,
        local: &Local<'_>,
        found: &mut Found,
        reads: &mut usize,
    ) -> Result<bool, StoreError> {
        // Parents of events decoded but whose height is not known yet, and where each came from.
        let mut pending: HashMap<Cid, (Box<[Cid]>, bool)> = HashMap::new();
        let mut stack = vec![cid];
        let known = |found: &mut Found, c: &Cid| -> Option<u64> {
            if let Some((n, _)) = found.nodes.get(c) {
                return Some(n.height);
            }
            let n = self.cache.get(clock, c)?;
            let h = n.height;
            found.nodes.insert(*c, (n, true));
            Some(h)
        };
        // Each step resolves an event or pushes its unresolved parents (at most once per edge);
        // hash links cannot form a cycle, but a bound keeps a bug from looping forever.
        let mut steps = 0usize;
        while let Some(&top) = stack.last() {
            steps += 1;
            if steps > 4 * (self.max_reads + local.blocks.len()) + 64 {
                return Ok(false);
            }
            if known(found, &top).is_some() {
                stack.pop();
                continue;
            }
            if !pending.contains_key(&top) {
                // Decode `top` (attached or stored) before anything else.
                if !self
                    .decode_into(clock, &[top], local, &mut pending, reads)
                    .await?
                {
                    return Ok(false);
                }
            }
            let parents = pending[&top].0.clone();
            let mut height = Some(0u64);
            let mut unknown = Vec::new();
            for p in parents.iter() {
                match known(found, p) {
                    Some(h) => height = height.map(|m| m.max(h + 1)),
                    None => {
                        height = None;
                        unknown.push(*p);
                    }
                }
            }
            if let Some(height) = height {
                let (parents, from_store) = pending.remove(&top).expect("decoded above");
                let node = Arc::new(Node { parents, height });
                if from_store {
                    self.cache.insert(clock, [(top, node.clone())]);
                }
                found.nodes.insert(top, (node, from_store));
                stack.pop();
                continue;
            }
            // Decode every unknown parent in one round, then come back to `top`.
            let undecoded: Vec<Cid> = unknown
                .iter()
                .filter(|p| !pending.contains_key(p))
                .copied()
                .collect();
            if !undecoded.is_empty()
                && !self
                    .decode_into(clock, &undecoded, local, &mut pending, reads)
                    .await?
            {
                return Ok(false);
            }
            stack.extend(unknown);
        }
        Ok(true)
    }

    /// Decodes the events `cids` (attached, else read from the store in one call) into
    /// `pending`. `false` if one is missing or invalid, or the read limit is reached.
    async fn decode_into(
        &self,
        clock: &str,
        cids: &[Cid],
        local: &Local<'_>,
        pending: &mut HashMap<Cid, (Box<[Cid]>, bool)>,
        reads: &mut usize,
    ) -> Result<bool, StoreError> {
        let mut to_read = Vec::new();
        for cid in cids {
            if let Some(ps) = local.parents.get(cid) {
                pending.insert(*cid, (ps.clone(), false));
                continue;
            }
            match local.blocks.get(cid) {
                Some(b) => match Event::from_block(b) {
                    Ok(ev) => {
                        pending.insert(*cid, (ev.parents.into(), false));
                    }
                    Err(_) => return Ok(false),
                },
                None => to_read.push(*cid),
            }
        }
        if to_read.is_empty() {
            return Ok(true);
        }
        *reads += to_read.len();
        if *reads > self.max_reads {
            return Ok(false);
        }
        let t = Instant::now();
        let got = self.store.get_blocks(clock, &to_read).await?;
        self.metrics.store_op(StoreOp::get_blocks, t);
        for (cid, block) in to_read.iter().zip(got) {
            let Some(block) = block else { return Ok(false) };
            match Event::from_block(&block) {
                Ok(ev) => {
                    pending.insert(*cid, (ev.parents.into(), true));
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// pail's own merge (`proto::clock::advance`) on the blocking pool, reading each block its
    /// walk needs from the store when it gets there. Returns the blocks map, with what was read
    /// added, for the next attempt.
    async fn exact_merge(
        &self,
        clock: &str,
        head: Vec<Cid>,
        event: Cid,
        mut blocks: HashMap<Cid, Block>,
        reads: &mut usize,
    ) -> (Result<Vec<Cid>, AdvanceError>, HashMap<Cid, Block>) {
        let this = self.clone();
        let clock = clock.to_owned();
        let runtime = tokio::runtime::Handle::current();
        let start_reads = *reads;
        let joined = tokio::task::spawn_blocking(move || {
            let getter = Getter {
                clock: &clock,
                local: std::cell::RefCell::new(&mut blocks),
                store: &this.store,
                runtime,
                metrics: &this.metrics,
                reads: std::cell::Cell::new(start_reads),
                max_reads: this.max_reads,
                failure: Default::default(),
            };
            let result =
                clock::advance(&getter, &head, &event).map_err(|e| getter.error(&event, e));
            let reads = getter.reads.get();
            drop(getter);
            (result, blocks, reads)
        })
        .await;
        match joined {
            Ok((result, blocks, total)) => {
                *reads = total;
                (result, blocks)
            }
            Err(e) => (
                Err(AdvanceError::InvalidEvent(format!(
                    "merge task failed: {e}"
                ))),
                HashMap::new(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;
    use std::collections::BTreeMap;

    /// xorshift64*: deterministic, so a failure names its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn event_block(n: u64, parents: &[Cid]) -> Block {
        let mut m = BTreeMap::new();
        m.insert("n".to_owned(), proto::Ipld::Integer(n.into()));
        Event::new(proto::Ipld::Map(m), parents.to_vec())
            .to_block()
            .unwrap()
    }

    /// A random DAG: each event's parents are 0–3 earlier events (some genesis events).
    /// Events in creation order, their blocks, their nodes.
    type Dag = (Vec<Cid>, HashMap<Cid, Block>, HashMap<Cid, Arc<Node>>);

    fn dag(rng: &mut Rng, n: usize) -> Dag {
        let mut order = Vec::new();
        let mut blocks = HashMap::new();
        let mut nodes: HashMap<Cid, Arc<Node>> = HashMap::new();
        for i in 0..n {
            let mut parents = Vec::new();
            if i > 0 && rng.below(8) != 0 {
                for _ in 0..1 + rng.below(3) {
                    // Mostly recent events, sometimes old ones (forks).
                    let back = if rng.below(4) == 0 {
                        rng.below(i)
                    } else {
                        rng.below(i.min(4))
                    };
                    parents.push(order[i - 1 - back]);
                }
            }
            let block = event_block(i as u64, &parents);
            let ev = Event::from_block(&block).unwrap();
            let height = ev
                .parents
                .iter()
                .map(|p| nodes[p].height + 1)
                .max()
                .unwrap_or(0);
            nodes.insert(
                *block.cid(),
                Arc::new(Node {
                    parents: ev.parents.into(),
                    height,
                }),
            );
            order.push(*block.cid());
            blocks.insert(*block.cid(), block);
        }
        (order, blocks, nodes)
    }

    #[test]
    fn heights_merge_answers_exactly_like_pail() {
        for seed in 1..=400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let n = 1 + rng.below(40);
            let (order, mut blocks, mut nodes) = dag(&mut rng, n);
            for _ in 0..20 {
                // Any head: a few events, in any order, duplicates allowed (pail takes any).
                let head: Vec<Cid> = (0..rng.below(5)).map(|_| order[rng.below(n)]).collect();
                // The event: one of the DAG's, or a new one on random parents.
                let event = if rng.below(3) == 0 {
                    order[rng.below(n)]
                } else {
                    let parents: Vec<Cid> =
                        (0..rng.below(3)).map(|_| order[rng.below(n)]).collect();
                    let b = event_block(1000 + rng.next() % 1_000_000, &parents);
                    let ev = Event::from_block(&b).unwrap();
                    let height = ev
                        .parents
                        .iter()
                        .map(|p| nodes[p].height + 1)
                        .max()
                        .unwrap_or(0);
                    nodes.insert(
                        *b.cid(),
                        Arc::new(Node {
                            parents: ev.parents.into(),
                            height,
                        }),
                    );
                    blocks.insert(*b.cid(), b.clone());
                    *b.cid()
                };
                let pail = clock::advance(&blocks, &head, &event).unwrap();
                let ours =
                    merge_with_heights(&head, &event, &|c: &Cid| nodes.get(c).cloned()).unwrap();
                assert_eq!(ours, pail, "seed {seed}: head {head:?}, event {event}");
            }
        }
    }

    #[test]
    fn heights_merge_asks_for_what_it_lacks() {
        let a = event_block(0, &[]);
        let b = event_block(1, &[*a.cid()]);
        let nodes: HashMap<Cid, Arc<Node>> = [(
            *b.cid(),
            Arc::new(Node {
                parents: vec![*a.cid()].into(),
                height: 1,
            }),
        )]
        .into();
        let lookup = |c: &Cid| nodes.get(c).cloned();
        assert_eq!(
            merge_with_heights(&[*a.cid()], b.cid(), &lookup),
            Err(*a.cid())
        );
        assert_eq!(
            merge_with_heights(&[*b.cid()], b.cid(), &lookup),
            Ok(vec![*b.cid()])
        );
        assert_eq!(merge_with_heights(&[], a.cid(), &lookup), Err(*a.cid()));
    }

    fn clocks(store: RedbStore, cache_bytes: usize) -> Clocks<RedbStore> {
        let mut registry = prometheus_client::registry::Registry::default();
        Clocks::with_cache(store, Metrics::register(&mut registry), 10_000, cache_bytes)
    }

    /// Random advances through the service's merge (heights, cache, store, fallback) and
    /// through pail's over every block the store and the invocation hold: same heads, same
    /// errors. Some events arrive without a parent's block (an error, or fine when the parent
    /// is stored); a tiny cache forces lookups of evicted events mid-walk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn advances_agree_with_pail_on_random_histories() {
        for (seed, cache_bytes) in [
            (7u64, EVENT_CACHE_BYTES),
            (8, 2048),
            (9, 0),
            (10, EVENT_CACHE_BYTES),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = RedbStore::open(dir.path().join("c.redb").to_str().unwrap())
                .await
                .unwrap();
            let clocks = clocks(store.clone(), cache_bytes);
            let clock = "did:key:z6Mkclock";
            let mut rng = Rng(seed);
            let (order, all, _) = dag(&mut rng, 120);
            let mut stored: HashMap<Cid, Block> = HashMap::new();
            let (mut oks, mut errors) = (0, 0);
            for (i, cid) in order.iter().enumerate() {
                // One event in eight is never advanced: children that do not attach its block
                // name a missing ancestor (unless a sibling attached and stored it).
                if rng.below(8) == 0 {
                    continue;
                }
                let block = all[cid].clone();
                let ev = Event::from_block(&block).unwrap();
                let mut attached: HashMap<Cid, Block> = [(*cid, block.clone())].into();
                for p in &ev.parents {
                    // Attach each parent's block most of the time.
                    if rng.below(4) != 0 {
                        attached.insert(*p, all[p].clone());
                    }
                }
                let head = store.head(clock).await.unwrap();
                let mut pail_blocks = stored.clone();
                for b in event_blocks(cid, &attached) {
                    pail_blocks.insert(*b.cid(), b);
                }
                let expected = clock::advance(&pail_blocks, &head, cid);
                let got = clocks.advance(clock, cid, &attached).await;
                match (&expected, &got) {
                    (Ok(e), Ok(g)) => {
                        oks += 1;
                        assert_eq!(e, g, "seed {seed}, event #{i}")
                    }
                    (
                        Err(ClockError::MissingBlock { cid: m }),
                        Err(AdvanceError::MissingAncestor(g)),
                    )
                    | (
                        Err(ClockError::MissingBlock { cid: m }),
                        Err(AdvanceError::MissingEvent(g)),
                    ) => {
                        errors += 1;
                        assert_eq!(m, g, "seed {seed}, event #{i}")
                    }
                    _ => panic!("seed {seed}, event #{i}: pail {expected:?}, ours {got:?}"),
                }
                // The service stores the event blocks when the head changes.
                if got.as_ref().is_ok_and(|next| *next != head) {
                    for b in event_blocks(cid, &attached) {
                        stored.insert(*b.cid(), b);
                    }
                }
            }
            // Both kinds of outcome were exercised.
            assert!(
                oks > 20 && errors > 5,
                "seed {seed}: {oks} ok, {errors} errors"
            );
            assert!(clocks.locks.table().is_empty(), "clock locks are released");
        }
    }

    /// Two replicas (two `Clocks` over one store): each remembers the head it last saw, so the
    /// second advances from a stale guess after the first moved the clock. The compare-and-set
    /// catches it, the advance reads the head and merges again, nothing is lost, and a stale
    /// guess is never an answer (a redelivered event answers with the stored head).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_head_hint_costs_a_retry_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("c.redb").to_str().unwrap())
            .await
            .unwrap();
        let (a, b) = (
            clocks(store.clone(), EVENT_CACHE_BYTES),
            clocks(store.clone(), EVENT_CACHE_BYTES),
        );
        let clock = "did:key:z6Mkreplicas";
        let e0 = event_block(0, &[]);
        let attach = |blocks: &[&Block]| -> HashMap<Cid, Block> {
            blocks.iter().map(|b| (*b.cid(), (*b).clone())).collect()
        };
        assert_eq!(
            a.advance(clock, e0.cid(), &attach(&[&e0])).await.unwrap(),
            vec![*e0.cid()]
        );
        // B reads the head (and remembers it); then A moves the clock on.
        assert_eq!(b.head(clock).await.unwrap(), vec![*e0.cid()]);
        let e1 = event_block(1, &[*e0.cid()]);
        assert_eq!(
            a.advance(clock, e1.cid(), &attach(&[&e1, &e0]))
                .await
                .unwrap(),
            vec![*e1.cid()]
        );
        // B advances a sibling of e1 from its stale guess [e0]: the compare-and-set fails on
        // the guess, B reads [e1] and the result is the fork of both.
        let e2 = event_block(2, &[*e0.cid()]);
        let mut both = vec![*e1.cid(), *e2.cid()];
        let got = b
            .advance(clock, e2.cid(), &attach(&[&e2, &e0]))
            .await
            .unwrap();
        let mut sorted = got.clone();
        sorted.sort();
        both.sort();
        assert_eq!(sorted, both);
        assert_eq!(store.head(clock).await.unwrap(), got);
        assert_eq!(b.metrics.head_hint_stale.get(), 1);
        assert_eq!(
            b.metrics.advance_conflicts.get(),
            0,
            "a stale guess is not a race"
        );
        // A still guesses [e1]; redelivering e1 must answer with the stored head, not the guess.
        assert_eq!(
            a.advance(clock, e1.cid(), &attach(&[&e1, &e0]))
                .await
                .unwrap(),
            got
        );
    }
}
