//! Merkle clock events and pail's `advance`, over an abstract, synchronous block getter.
//!
//! # Events
//!
//! A clock event is a DAG-CBOR block `{"data": <any IPLD>, "parents": [<CID>…]}` named by its
//! sha2-256 CIDv1. [`Event::to_block`] sorts `parents` by their raw CID bytes before encoding, as
//! `@web3-storage/pail` does from 0.6.1 on, so two events with the same data and the same set of
//! parents get the same CID whatever order the parents were given in. Older writers (pail 0.5,
//! which `@web3-storage/clock` 0.4.1 still uses) do not sort, so [`Event::from_block`] accepts
//! parents in any order and keeps the order it found (the traversal below visits parents in
//! stored order). Decoding is stricter than pail, which does not look at the shape at all: the
//! value must be a map with a `data` key and a `parents` list whose items are all links. Other
//! keys are ignored, as pail ignores them.
//!
//! # Advancing a head
//!
//! [`advance`] computes the new head after adding one event, with exactly the rules of pail's
//! `clock.advance`:
//!
//! 1. If the event is already in the head, the head is returned unchanged (nothing is fetched).
//! 2. For each head entry, in order, if the event descends from it, that entry is dropped and the
//!    event is added once. If any entry was dropped, the result is the surviving head entries in
//!    their original order (duplicates collapsed to their first position) followed by the event.
//! 3. Otherwise, if the event is an ancestor of some head entry (an old event), the head is
//!    returned unchanged.
//! 4. Otherwise the event is concurrent with the head and is appended to it.
//!
//! "Descends from" is pail's `contains(a, b)`: true when `a == b`; otherwise it fetches `a` and
//! then `b`, and walks breadth-first from `a`'s parents. A link equal to `b` ends the walk with
//! true. A link that is one of `b`'s own parents is not followed (`b` cannot lie beneath its own
//! parent), and each other link is fetched at most once per call (a `seen` set). The blocks are
//! fetched in the same order and the same number of times as pail does, so the first missing
//! block reported is the one pail would report.
//!
//! One deliberate difference: pail never looks at the event when the head is empty, so it would
//! accept a CID whose block it does not have. We fetch and decode the event in that case too, so
//! a head never holds an event the service could not read. With a non-empty head pail's first
//! step already fetches and decodes the event, so nothing changes there.
//!
//! # Blocks
//!
//! Everything here is synchronous over a [`BlockGetter`]. A missing block is an error
//! ([`ClockError::MissingBlock`], rendered `missing block: <cid>` like pail), never a wait. A
//! service whose blocks live in an async store can therefore either pre-load the blocks that
//! came with the invocation into a map and call [`advance`] once, or call it in a loop: on
//! `MissingBlock { cid }` fetch that one block, add it to the map and call again. The walk is
//! deterministic, so each retry gets further.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

use cid::Cid;

use crate::ipld::{Block, Ipld, IpldError, verify_cid};

/// A failure inside a block store (a database error, an I/O error): anything other than "the
/// block is not there", which a getter reports as `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl StoreError {
    /// Wraps a store's own error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(source.into())
    }

    /// The store's own error.
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.0
    }
}

/// Synchronous read access to blocks by CID. Used by the clock ([`advance`]) and by pail
/// ([`crate::pail`]).
///
/// Return `Ok(None)` when the block is simply absent; callers turn that into a `missing block`
/// error naming the CID. The returned block should be the one named by `cid`. A block under a
/// different CID is accepted when its bytes hash to `cid` (a store keyed by multihash may hand
/// back another codec); anything else is rejected as a mismatch.
pub trait BlockGetter {
    /// The block named by `cid`, `Ok(None)` if the store does not have it.
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError>;
}

impl<G: BlockGetter + ?Sized> BlockGetter for &G {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        (**self).get_block(cid)
    }
}

impl<G: BlockGetter + ?Sized> BlockGetter for Box<G> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        (**self).get_block(cid)
    }
}

impl<S: BuildHasher> BlockGetter for HashMap<Cid, Block, S> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        Ok(self.get(cid).cloned())
    }
}

impl BlockGetter for BTreeMap<Cid, Block> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        Ok(self.get(cid).cloned())
    }
}

/// Why fetching one block failed; each module maps it into its own error type.
pub(crate) enum FetchError {
    /// The getter does not have the block.
    Missing,
    /// The getter failed.
    Store(StoreError),
    /// The getter returned bytes that do not hash to the requested CID.
    Mismatch(IpldError),
}

/// Fetches `cid` from `getter` and checks that the bytes are the ones `cid` names.
pub(crate) fn fetch<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<Block, FetchError> {
    let block = getter
        .get_block(cid)
        .map_err(FetchError::Store)?
        .ok_or(FetchError::Missing)?;
    if block.cid() != cid {
        // A `Block` always matches its own CID; a different CID must still name these bytes.
        verify_cid(cid, block.bytes()).map_err(FetchError::Mismatch)?;
    }
    Ok(block)
}

/// Why an event could not be encoded, decoded or fetched, or a head could not be advanced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The getter does not have a block the walk needs.
    #[error("missing block: {cid}")]
    MissingBlock {
        /// The block that is missing.
        cid: Cid,
    },
    /// The getter failed while fetching a block.
    #[error("block store failed fetching {cid}: {source}")]
    Store {
        /// The block being fetched.
        cid: Cid,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The getter returned bytes that are not the block it was asked for.
    #[error("block store returned wrong bytes for {cid}: {source}")]
    BlockMismatch {
        /// The block asked for.
        cid: Cid,
        /// Why the bytes do not match.
        #[source]
        source: Box<IpldError>,
    },
    /// A block is not a clock event.
    #[error("invalid event {cid}: {reason}")]
    InvalidEvent {
        /// The block's CID.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// An event could not be written as DAG-CBOR (e.g. a non-finite float in its data).
    #[error("cannot encode event: {0}")]
    Encode(#[source] IpldError),
}

impl ClockError {
    /// The CID of the missing block, if this is [`ClockError::MissingBlock`]. A caller that
    /// loads blocks lazily fetches this one and tries again.
    pub fn missing_block(&self) -> Option<&Cid> {
        match self {
            ClockError::MissingBlock { cid } => Some(cid),
            _ => None,
        }
    }
}

/// One Merkle clock event: some data and the events it follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's payload, inline IPLD (pail's CRDT puts an operation here; our clock puts the
    /// new state).
    pub data: Ipld,
    /// The events this one follows. Empty for a genesis event.
    pub parents: Vec<Cid>,
}

impl Event {
    /// An event with the given data and parents.
    pub fn new(data: Ipld, parents: Vec<Cid>) -> Self {
        Self { data, parents }
    }

    /// Encodes the event as a DAG-CBOR block, parents sorted by raw CID bytes (pail ≥ 0.6.1).
    pub fn to_block(&self) -> Result<Block, ClockError> {
        let mut parents = self.parents.clone();
        parents.sort_by_cached_key(|cid| cid.to_bytes());
        let mut map = BTreeMap::new();
        map.insert("data".to_owned(), self.data.clone());
        map.insert(
            "parents".to_owned(),
            Ipld::List(parents.into_iter().map(Ipld::Link).collect()),
        );
        Block::encode(&Ipld::Map(map)).map_err(ClockError::Encode)
    }

    /// Decodes an event from its block. Parents keep the order they were stored in.
    pub fn from_block(block: &Block) -> Result<Self, ClockError> {
        let invalid = |reason: String| ClockError::InvalidEvent {
            cid: *block.cid(),
            reason,
        };
        let value: Ipld = block.decode().map_err(|e| invalid(e.to_string()))?;
        let Ipld::Map(mut map) = value else {
            return Err(invalid(format!("expected a map, found {}", kind(&value))));
        };
        let data = map
            .remove("data")
            .ok_or_else(|| invalid("missing \"data\"".to_owned()))?;
        let parents = match map.remove("parents") {
            Some(Ipld::List(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Ipld::Link(cid) => Ok(cid),
                    other => Err(invalid(format!(
                        "parents[{i}] is {}, not a link",
                        kind(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(invalid(format!(
                    "\"parents\" is {}, not a list",
                    kind(&other)
                )));
            }
            None => return Err(invalid("missing \"parents\"".to_owned())),
        };
        Ok(Self { data, parents })
    }
}

/// A short name for an IPLD value's kind, for error messages.
fn kind(value: &Ipld) -> &'static str {
    match value {
        Ipld::Null => "null",
        Ipld::Bool(_) => "a boolean",
        Ipld::Integer(_) => "an integer",
        Ipld::Float(_) => "a float",
        Ipld::String(_) => "a string",
        Ipld::Bytes(_) => "bytes",
        Ipld::List(_) => "a list",
        Ipld::Map(_) => "a map",
        Ipld::Link(_) => "a link",
    }
}

/// Fetches and decodes the event named by `cid`.
pub fn get_event<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<Event, ClockError> {
    let block = fetch(getter, cid).map_err(|e| match e {
        FetchError::Missing => ClockError::MissingBlock { cid: *cid },
        FetchError::Store(source) => ClockError::Store { cid: *cid, source },
        FetchError::Mismatch(source) => ClockError::BlockMismatch {
            cid: *cid,
            source: Box::new(source),
        },
    })?;
    Event::from_block(&block)
}

/// The head after adding `event` to a clock whose head is `head`, with pail's rules (see the
/// module documentation). Every block the walk needs must be available from `getter`.
pub fn advance<G: BlockGetter + ?Sized>(
    getter: &G,
    head: &[Cid],
    event: &Cid,
) -> Result<Vec<Cid>, ClockError> {
    if head.contains(event) {
        return Ok(head.to_vec());
    }
    if head.is_empty() {
        // pail skips this fetch; we insist that the head only ever holds readable events.
        get_event(getter, event)?;
        return Ok(vec![*event]);
    }

    // Does the event descend from (part of) the head? Mirrors pail's insertion-ordered map:
    // entries keep the position of their first occurrence, the event goes at the end once.
    let mut kept: Vec<Cid> = Vec::with_capacity(head.len() + 1);
    for cid in head {
        if !kept.contains(cid) {
            kept.push(*cid);
        }
    }
    let mut changed = false;
    for cid in head {
        if contains(getter, event, cid)? {
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

    // Is the event already part of the clock's history?
    for cid in head {
        if contains(getter, cid, event)? {
            return Ok(head.to_vec());
        }
    }

    let mut next = head.to_vec();
    next.push(*event);
    Ok(next)
}

/// Whether event `a` descends from (or is) event `b`: pail's breadth-first `contains`, fetching
/// exactly the blocks pail fetches, in the same order.
pub fn contains<G: BlockGetter + ?Sized>(getter: &G, a: &Cid, b: &Cid) -> Result<bool, ClockError> {
    if a == b {
        return Ok(true);
    }
    let a_event = get_event(getter, a)?;
    let b_event = get_event(getter, b)?;
    let mut links: VecDeque<Cid> = a_event.parents.into();
    let mut seen: HashSet<Cid> = HashSet::new();
    while let Some(link) = links.pop_front() {
        if link == *b {
            return Ok(true);
        }
        // `b` cannot be below one of its own parents: that would be a cycle.
        if b_event.parents.contains(&link) {
            continue;
        }
        if !seen.insert(link) {
            continue;
        }
        links.extend(get_event(getter, &link)?.parents);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// An in-memory store that counts fetches, like pail's tests do.
    #[derive(Default)]
    struct Counting {
        blocks: RefCell<HashMap<Cid, Block>>,
        gets: Cell<usize>,
    }

    impl Counting {
        fn put(&self, block: &Block) {
            self.blocks.borrow_mut().insert(*block.cid(), block.clone());
        }
        fn gets(&self) -> usize {
            self.gets.get()
        }
    }

    impl BlockGetter for Counting {
        fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
            self.gets.set(self.gets.get() + 1);
            Ok(self.blocks.borrow().get(cid).cloned())
        }
    }

    /// A distinct event payload per call, standing in for pail's random test data.
    fn data(n: u64) -> Ipld {
        let mut m = BTreeMap::new();
        m.insert("type".to_owned(), Ipld::String("put".to_owned()));
        m.insert("key".to_owned(), Ipld::String(format!("test-{n}")));
        m.insert("value".to_owned(), Ipld::Integer(n.into()));
        Ipld::Map(m)
    }

    /// Encodes an event with payload `n` and stores it; returns its CID.
    fn event(store: &Counting, n: u64, parents: &[Cid]) -> Cid {
        let block = Event::new(data(n), parents.to_vec()).to_block().unwrap();
        store.put(&block);
        *block.cid()
    }

    #[test]
    fn empty_event_vector() {
        let block = Event::new(Ipld::Map(BTreeMap::new()), vec![])
            .to_block()
            .unwrap();
        assert_eq!(
            hex::encode(block.bytes()),
            "a26464617461a067706172656e747380"
        );
        assert_eq!(
            block.cid().to_string(),
            "bafyreifdues557vbletgonaznncz2cbqf7dyjqcfxysg7mao5mw5hkqejm"
        );
    }

    #[test]
    fn create_a_new_clock() {
        let s = Counting::default();
        let e = event(&s, 0, &[]);
        assert_eq!(advance(&s, &[], &e).unwrap(), vec![e]);
    }

    #[test]
    fn empty_head_still_requires_the_event_block() {
        let s = Counting::default();
        let e = *Event::new(data(0), vec![]).to_block().unwrap().cid();
        let err = advance(&s, &[], &e).unwrap_err();
        assert_eq!(err.missing_block(), Some(&e));
        assert_eq!(err.to_string(), format!("missing block: {e}"));
    }

    #[test]
    fn add_an_event() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let e = event(&s, 1, &[root]);
        assert_eq!(advance(&s, &[root], &e).unwrap(), vec![e]);
    }

    #[test]
    fn adding_an_event_twice_is_a_no_op() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let e = event(&s, 1, &[root]);
        let head = advance(&s, &[root], &e).unwrap();
        let before = s.gets();
        assert_eq!(advance(&s, &head, &e).unwrap(), head);
        assert_eq!(
            s.gets(),
            before,
            "an event already in the head needs no fetch"
        );
    }

    #[test]
    fn two_events_on_the_same_parent_fork_the_head() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let e0 = event(&s, 1, &[root]);
        let head = advance(&s, &[root], &e0).unwrap();
        let e1 = event(&s, 2, &[root]);
        let head = advance(&s, &head, &e1).unwrap();
        assert_eq!(head, vec![e0, e1]);
    }

    #[test]
    fn events_sharing_some_parents() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let mut head = vec![root];
        let e0 = event(&s, 1, &[root]);
        head = advance(&s, &head, &e0).unwrap();
        let e1 = event(&s, 2, &[root]);
        head = advance(&s, &head, &e1).unwrap();
        let e2 = event(&s, 3, &[root]);
        head = advance(&s, &head, &e2).unwrap();
        assert_eq!(head, vec![e0, e1, e2]);
        let e3 = event(&s, 4, &[e0, e1]);
        head = advance(&s, &head, &e3).unwrap();
        // e0 and e1 are replaced; e2 keeps its place ahead of the appended e3.
        assert_eq!(head, vec![e2, e3]);
        let e4 = event(&s, 5, &[e2]);
        head = advance(&s, &head, &e4).unwrap();
        assert_eq!(head, vec![e3, e4]);
    }

    #[test]
    fn a_multi_event_head_converges() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let mut head = vec![root];
        let e0 = event(&s, 1, &[root]);
        head = advance(&s, &head, &e0).unwrap();
        let e1 = event(&s, 2, &[root]);
        head = advance(&s, &head, &e1).unwrap();
        let parents1 = head.clone();
        let mut later = vec![];
        for n in 3..6 {
            let e = event(&s, n, &parents1);
            head = advance(&s, &head, &e).unwrap();
            later.push(e);
        }
        assert_eq!(head, later);
        let e5 = event(&s, 6, &head);
        head = advance(&s, &head, &e5).unwrap();
        assert_eq!(head, vec![e5]);
    }

    #[test]
    fn an_old_event_is_appended_after_a_full_walk() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let parents0 = vec![root];
        let mut head = parents0.clone();
        let e0 = event(&s, 1, &parents0);
        head = advance(&s, &head, &e0).unwrap();
        let e1 = event(&s, 2, &parents0);
        head = advance(&s, &head, &e1).unwrap();
        let parents1 = head.clone();
        for n in 3..6 {
            let e = event(&s, n, &parents1);
            head = advance(&s, &head, &e).unwrap();
        }
        let e5 = event(&s, 6, &head);
        head = advance(&s, &head, &e5).unwrap();
        assert_eq!(head, vec![e5]);

        // A new event on the genesis parent: concurrent with everything after it.
        let e6 = event(&s, 7, &parents0);
        let before = s.gets();
        head = advance(&s, &head, &e6).unwrap();
        assert_eq!(head, vec![e5, e6]);
        // pail's test expects exactly 10 fetches here.
        assert_eq!(s.gets() - before, 10);
    }

    #[test]
    fn an_event_skipping_over_an_intermediate_one() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let e0 = event(&s, 1, &[root]);
        let e1 = event(&s, 2, &[e0]);
        assert_eq!(advance(&s, &[root], &e1).unwrap(), vec![e1]);
    }

    #[test]
    fn contains_visits_shared_history_once() {
        let s = Counting::default();
        let genesis = event(&s, 0, &[]);
        let mut head = vec![genesis];
        let e0 = event(&s, 1, &[genesis]);
        head = advance(&s, &head, &e0).unwrap();
        let e1 = event(&s, 2, &[e0]);
        head = advance(&s, &head, &e1).unwrap();
        let e2 = event(&s, 3, &[e0]);
        head = advance(&s, &head, &e2).unwrap();
        let e3 = event(&s, 4, &[e1, e2]);
        head = advance(&s, &head, &e3).unwrap();
        assert_eq!(head, vec![e3]);

        let before = s.gets();
        let e4 = event(&s, 5, &[genesis]);
        head = advance(&s, &head, &e4).unwrap();
        assert_eq!(head, vec![e3, e4]);
        // e4, e3, genesis; then e3, e4, e1, e2, e0 (genesis is e4's parent: not fetched again).
        assert_eq!(s.gets() - before, 8);
    }

    #[test]
    fn parents_are_sorted_by_bytes() {
        let s = Counting::default();
        let p0 = event(&s, 0, &[]);
        let p1 = event(&s, 1, &[]);
        let a = Event::new(Ipld::Map(BTreeMap::new()), vec![p0, p1])
            .to_block()
            .unwrap();
        let b = Event::new(Ipld::Map(BTreeMap::new()), vec![p1, p0])
            .to_block()
            .unwrap();
        assert_eq!(a, b);
        let decoded = Event::from_block(&a).unwrap();
        let mut sorted = vec![p0, p1];
        sorted.sort_by_key(|c| c.to_bytes());
        assert_eq!(decoded.parents, sorted);
    }

    #[test]
    fn unsorted_parents_decode_in_stored_order() {
        let s = Counting::default();
        let p0 = event(&s, 0, &[]);
        let p1 = event(&s, 1, &[]);
        let mut sorted = vec![p0, p1];
        sorted.sort_by_key(|c| c.to_bytes());
        sorted.reverse();
        let mut m = BTreeMap::new();
        m.insert("data".to_owned(), Ipld::Null);
        m.insert(
            "parents".to_owned(),
            Ipld::List(sorted.iter().copied().map(Ipld::Link).collect()),
        );
        let block = Block::encode(&Ipld::Map(m)).unwrap();
        let e = Event::from_block(&block).unwrap();
        assert_eq!(e.parents, sorted);
        assert_eq!(e.data, Ipld::Null);
        // Re-encoding sorts, so the CID changes.
        assert_ne!(e.to_block().unwrap().cid(), block.cid());
    }

    fn map(entries: Vec<(&str, Ipld)>) -> Block {
        Block::encode(&Ipld::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn malformed_events_are_rejected() {
        let cases = [
            (
                map(vec![("parents", Ipld::List(vec![]))]),
                "missing \"data\"",
            ),
            (map(vec![("data", Ipld::Null)]), "missing \"parents\""),
            (
                map(vec![
                    ("data", Ipld::Null),
                    ("parents", Ipld::Map(BTreeMap::new())),
                ]),
                "\"parents\" is a map, not a list",
            ),
            (
                map(vec![
                    ("data", Ipld::Null),
                    ("parents", Ipld::List(vec![Ipld::String("x".to_owned())])),
                ]),
                "parents[0] is a string, not a link",
            ),
            (
                Block::encode(&Ipld::List(vec![])).unwrap(),
                "expected a map, found a list",
            ),
        ];
        for (block, reason) in cases {
            match Event::from_block(&block) {
                Err(ClockError::InvalidEvent { cid, reason: r }) => {
                    assert_eq!(cid, *block.cid());
                    assert_eq!(r, reason);
                }
                other => panic!("expected InvalidEvent, got {other:?}"),
            }
        }
        let raw = Block::from_codec(crate::ipld::RAW, vec![0xff]);
        assert!(matches!(
            Event::from_block(&raw),
            Err(ClockError::InvalidEvent { .. })
        ));
    }

    #[test]
    fn advance_rejects_a_block_that_is_not_an_event() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let bogus = map(vec![("data", Ipld::Null)]);
        s.put(&bogus);
        assert!(matches!(
            advance(&s, &[root], bogus.cid()),
            Err(ClockError::InvalidEvent { cid, .. }) if cid == *bogus.cid()
        ));
        assert!(matches!(
            advance(&s, &[], bogus.cid()),
            Err(ClockError::InvalidEvent { .. })
        ));
    }

    #[test]
    fn missing_blocks_are_reported_in_pail_order() {
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let e0 = event(&s, 1, &[root]);
        let e1 = event(&s, 2, &[e0]);
        // Head is [root]; e1's history needs e0, which is missing.
        let full = s.blocks.borrow().clone();
        s.blocks.borrow_mut().remove(&e0);
        let err = advance(&s, &[root], &e1).unwrap_err();
        assert_eq!(err.missing_block(), Some(&e0));

        // Missing event block: the event is fetched before the head entry.
        *s.blocks.borrow_mut() = full.clone();
        s.blocks.borrow_mut().remove(&e1);
        s.blocks.borrow_mut().remove(&root);
        let err = advance(&s, &[root], &e1).unwrap_err();
        assert_eq!(err.missing_block(), Some(&e1));

        // Missing head block.
        *s.blocks.borrow_mut() = full;
        s.blocks.borrow_mut().remove(&root);
        let err = advance(&s, &[root], &e1).unwrap_err();
        assert_eq!(err.missing_block(), Some(&root));
    }

    #[test]
    fn missing_history_below_the_event_parents_is_never_fetched() {
        // When the event's parent is the head itself, nothing further back is needed.
        let s = Counting::default();
        let root = event(&s, 0, &[]);
        let e0 = event(&s, 1, &[root]);
        let e1 = event(&s, 2, &[e0]);
        s.blocks.borrow_mut().remove(&root);
        assert_eq!(advance(&s, &[e0], &e1).unwrap(), vec![e1]);
    }

    #[test]
    fn duplicate_head_entries_collapse_when_replaced() {
        let s = Counting::default();
        let a = event(&s, 0, &[]);
        let b = event(&s, 1, &[]);
        let e = event(&s, 2, &[a]);
        assert_eq!(advance(&s, &[a, b, a], &e).unwrap(), vec![b, e]);
        let c = event(&s, 3, &[]);
        // A concurrent event keeps the head as given.
        assert_eq!(advance(&s, &[a, a], &c).unwrap(), vec![a, a, c]);
    }

    struct Failing;
    impl BlockGetter for Failing {
        fn get_block(&self, _: &Cid) -> Result<Option<Block>, StoreError> {
            Err(StoreError::new("disk on fire"))
        }
    }

    #[test]
    fn store_errors_carry_the_cid() {
        let e = *Event::new(data(0), vec![]).to_block().unwrap().cid();
        let err = advance(&Failing, &[], &e).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("block store failed fetching {e}: disk on fire")
        );
    }

    struct Liar(Block);
    impl BlockGetter for Liar {
        fn get_block(&self, _: &Cid) -> Result<Option<Block>, StoreError> {
            Ok(Some(self.0.clone()))
        }
    }

    #[test]
    fn wrong_blocks_from_the_store_are_rejected() {
        let other = Event::new(data(1), vec![]).to_block().unwrap();
        let e = *Event::new(data(0), vec![]).to_block().unwrap().cid();
        assert!(matches!(
            get_event(&Liar(other), &e),
            Err(ClockError::BlockMismatch { cid, .. }) if cid == e
        ));
        // Same bytes under another codec's CID are fine (stores keyed by multihash).
        let block = Event::new(data(0), vec![]).to_block().unwrap();
        let raw_cid = Cid::new_v1(crate::ipld::RAW, *block.cid().hash());
        assert!(get_event(&Liar(block), &raw_cid).is_ok());
    }

    #[test]
    fn maps_work_as_getters() {
        let block = Event::new(data(0), vec![]).to_block().unwrap();
        let mut h = HashMap::new();
        h.insert(*block.cid(), block.clone());
        let mut b = BTreeMap::new();
        b.insert(*block.cid(), block.clone());
        assert_eq!(advance(&h, &[], block.cid()).unwrap(), vec![*block.cid()]);
        assert_eq!(advance(&b, &[], block.cid()).unwrap(), vec![*block.cid()]);
        let boxed: Box<dyn BlockGetter> = Box::new(h);
        assert_eq!(
            advance(&boxed, &[], block.cid()).unwrap(),
            vec![*block.cid()]
        );
    }
}
