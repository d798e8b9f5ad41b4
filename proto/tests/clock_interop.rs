//! Merkle clock events and `advance` against `@web3-storage/pail` 0.6.2.
//!
//! The fixture `tests/fixtures/clock/clock.json` is written by
//! `tests/js/gen-pail-clock-fixtures.mjs` (regenerate with
//! `cd tests/js && npm ci && node gen-pail-clock-fixtures.mjs`). It holds events (data as DAG-JSON,
//! parents in the order given to `EventBlock.create`, CID and bytes), including events from pail
//! 0.5.0 whose parents are not sorted; an `advance` trace with the head before and after each
//! step and the blocks pail fetched, in order; and single `advance` calls with blocks withheld.

use std::cell::RefCell;
use std::collections::HashMap;

use base64::Engine as _;
use proto::clock::{self, BlockGetter, ClockError, Event, StoreError};
use proto::ipld::{decode_dag_json, parse_cid};
use proto::{Block, Cid, Ipld};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    pail_version: String,
    legacy_pail_version: String,
    events: Vec<EventJson>,
    trace: Vec<TraceStep>,
    missing: Vec<MissingCase>,
}

#[derive(Deserialize)]
struct EventJson {
    name: String,
    legacy_unsorted: bool,
    data_dag_json: String,
    parents: Vec<String>,
    cid: String,
    bytes: String,
}

#[derive(Deserialize)]
struct TraceStep {
    head_before: Vec<String>,
    event: String,
    head_after: Vec<String>,
    fetched: Vec<String>,
}

#[derive(Deserialize)]
struct MissingCase {
    head_before: Vec<String>,
    event: String,
    missing: Vec<String>,
    head_after: Option<Vec<String>>,
    error: Option<String>,
    fetched: Vec<String>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/clock/clock.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("reading {path}: {e} (see tests/js/gen-pail-clock-fixtures.mjs)")
    });
    serde_json::from_str(&text).expect("clock.json parses")
}

fn cid(s: &str) -> Cid {
    parse_cid(s).unwrap_or_else(|e| panic!("{e}"))
}

fn js_block(e: &EventJson) -> Block {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&e.bytes)
        .expect("base64");
    Block::new(cid(&e.cid), bytes).expect("JS event bytes match their CID")
}

/// All JS events by name, and a getter over them that records what it is asked for.
struct Events {
    by_name: HashMap<String, Block>,
    names: HashMap<Cid, String>,
}

impl Events {
    fn new(f: &Fixture) -> Self {
        let by_name: HashMap<String, Block> = f
            .events
            .iter()
            .map(|e| (e.name.clone(), js_block(e)))
            .collect();
        let names = by_name.iter().map(|(n, b)| (*b.cid(), n.clone())).collect();
        Self { by_name, names }
    }

    fn cid(&self, name: &str) -> Cid {
        *self.by_name[name].cid()
    }

    fn cids(&self, names: &[String]) -> Vec<Cid> {
        names.iter().map(|n| self.cid(n)).collect()
    }

    fn names(&self, cids: &[Cid]) -> Vec<String> {
        cids.iter().map(|c| self.names[c].clone()).collect()
    }

    /// A store without the named blocks.
    fn store_without(&self, missing: &[String]) -> Recording<'_> {
        Recording {
            events: self,
            blocks: self
                .by_name
                .iter()
                .filter(|(n, _)| !missing.contains(n))
                .map(|(_, b)| (*b.cid(), b.clone()))
                .collect(),
            fetched: RefCell::new(Vec::new()),
        }
    }
}

struct Recording<'a> {
    events: &'a Events,
    blocks: HashMap<Cid, Block>,
    fetched: RefCell<Vec<String>>,
}

impl BlockGetter for Recording<'_> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        let name = self
            .events
            .names
            .get(cid)
            .cloned()
            .unwrap_or_else(|| cid.to_string());
        self.fetched.borrow_mut().push(name);
        self.blocks.get_block(cid)
    }
}

impl Recording<'_> {
    fn take_fetched(&self) -> Vec<String> {
        std::mem::take(&mut *self.fetched.borrow_mut())
    }
}

#[test]
fn fixture_versions() {
    let f = fixture();
    assert_eq!(f.pail_version, "0.6.2");
    assert_eq!(f.legacy_pail_version, "0.5.0");
}

#[test]
fn events_encode_byte_identically() {
    let f = fixture();
    let mut saw_unsorted_input = false;
    for e in f.events.iter().filter(|e| !e.legacy_unsorted) {
        let data: Ipld = decode_dag_json(e.data_dag_json.as_bytes()).unwrap();
        let parents: Vec<Cid> = e.parents.iter().map(|p| cid(p)).collect();
        let mut sorted = parents.clone();
        sorted.sort_by_key(|c| c.to_bytes());
        saw_unsorted_input |= sorted != parents;

        let ours = Event::new(data.clone(), parents).to_block().unwrap();
        let theirs = js_block(e);
        assert_eq!(ours.cid().to_string(), e.cid, "event {}", e.name);
        assert_eq!(ours.bytes(), theirs.bytes(), "event {}", e.name);

        let decoded = Event::from_block(&theirs).unwrap();
        assert_eq!(decoded.data, data, "event {}", e.name);
        assert_eq!(decoded.parents, sorted, "event {}", e.name);
    }
    assert!(
        saw_unsorted_input,
        "some event should be created from unsorted parents"
    );
}

#[test]
fn legacy_events_keep_their_parent_order() {
    let f = fixture();
    let legacy: Vec<&EventJson> = f.events.iter().filter(|e| e.legacy_unsorted).collect();
    assert!(!legacy.is_empty());
    for e in legacy {
        let block = js_block(e);
        let decoded = Event::from_block(&block).unwrap();
        let given: Vec<Cid> = e.parents.iter().map(|p| cid(p)).collect();
        assert_eq!(decoded.parents, given, "pail 0.5 stores parents as given");
        let mut sorted = given.clone();
        sorted.sort_by_key(|c| c.to_bytes());
        assert_ne!(
            sorted, given,
            "the legacy event should have unsorted parents"
        );
        // Re-encoding sorts, giving pail 0.6's CID for the same event.
        let resorted = f
            .events
            .iter()
            .find(|o| o.name == format!("{}-sorted", e.name))
            .expect("a sorted twin");
        assert_eq!(decoded.to_block().unwrap().cid().to_string(), resorted.cid);
    }
}

#[test]
fn advance_trace_matches_js() {
    let f = fixture();
    let events = Events::new(&f);
    let store = events.store_without(&[]);
    for (i, step) in f.trace.iter().enumerate() {
        let ctx = format!("step {i}: {:?} + {}", step.head_before, step.event);
        let head = events.cids(&step.head_before);
        let next = clock::advance(&store, &head, &events.cid(&step.event))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(events.names(&next), step.head_after, "{ctx}");

        let fetched = store.take_fetched();
        if step.head_before.is_empty() {
            // pail does not read the event when the head is empty; we do.
            assert!(step.fetched.is_empty());
            assert_eq!(fetched, vec![step.event.clone()], "{ctx}");
        } else {
            assert_eq!(fetched, step.fetched, "{ctx}: blocks fetched");
        }
    }
    // The trace covers forks, merges, old events and skipped intermediates.
    assert!(f.trace.iter().any(|s| s.head_after.len() >= 3));
    assert!(f.trace.iter().any(|s| s.head_before == s.head_after));
}

#[test]
fn missing_blocks_match_js() {
    let f = fixture();
    let events = Events::new(&f);
    for case in &f.missing {
        let ctx = format!(
            "{:?} + {} without {:?}",
            case.head_before, case.event, case.missing
        );
        let store = events.store_without(&case.missing);
        let result = clock::advance(
            &store,
            &events.cids(&case.head_before),
            &events.cid(&case.event),
        );
        let fetched = store.take_fetched();
        match (&case.error, result) {
            (Some(js), Err(ours)) => {
                assert_eq!(&ours.to_string(), js, "{ctx}");
                assert!(matches!(ours, ClockError::MissingBlock { .. }));
                // pail starts both fetches of a pair before the first fails; we stop at once.
                assert!(case.fetched.starts_with(&fetched), "{ctx}: {fetched:?}");
            }
            (None, Ok(next)) => {
                assert_eq!(Some(events.names(&next)), case.head_after, "{ctx}");
                assert_eq!(fetched, case.fetched, "{ctx}");
            }
            (None, Err(ours)) => {
                // Only divergence: pail accepts an event it never read when the head is empty.
                assert!(case.head_before.is_empty(), "{ctx}: {ours}");
                assert_eq!(case.head_after.as_deref(), Some(&[case.event.clone()][..]));
                assert_eq!(
                    ours.missing_block(),
                    Some(&events.cid(&case.event)),
                    "{ctx}"
                );
            }
            (Some(js), Ok(next)) => panic!("{ctx}: JS failed with {js}, we gave {next:?}"),
        }
    }
}
