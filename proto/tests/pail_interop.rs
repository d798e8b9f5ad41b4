//! pail shards against `@web3-storage/pail` 0.6.2.
//!
//! The fixture `tests/fixtures/pail/pail.json` is written by `tests/js/gen-pail-clock-fixtures.mjs`
//! (regenerate with `cd tests/js && npm ci && node gen-pail-clock-fixtures.mjs`). It holds a
//! sequence of puts and deletes with the root, the added blocks (bytes) and the removed blocks
//! after each, `get` and `entries` results, a larger put workload (roots only) and the pail
//! behaviours we deliberately do not copy. Here we replay the operations with our
//! implementation and require the same blocks, and read JS's blocks with our `get` and `entries`.

use std::collections::HashMap;

use base64::Engine as _;
use proto::ipld::parse_cid;
use proto::pail::{self, EntriesOptions};
use proto::{Block, Cid};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    pail_version: String,
    empty: BlockJson,
    steps: Vec<Step>,
    gets: Vec<GetCase>,
    entries: Vec<EntriesCase>,
    bulk: Bulk,
    quirks: Quirks,
}

#[derive(Deserialize)]
struct BlockJson {
    cid: String,
    bytes: String,
}

#[derive(Deserialize)]
struct Step {
    op: String,
    key: String,
    value: Option<String>,
    root_before: String,
    root: String,
    additions: Vec<BlockJson>,
    removals: Vec<String>,
}

#[derive(Deserialize)]
struct GetCase {
    root: String,
    key: String,
    value: Option<String>,
}

#[derive(Deserialize, Debug)]
struct Options {
    prefix: Option<String>,
    gt: Option<String>,
    gte: Option<String>,
    lt: Option<String>,
    lte: Option<String>,
}

#[derive(Deserialize)]
struct EntriesCase {
    root: String,
    options: Options,
    result: Vec<(String, String)>,
    js_matches_expected: bool,
    expected: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Bulk {
    steps: Vec<BulkStep>,
    entries: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct BulkStep {
    key: String,
    value: String,
    root: String,
}

#[derive(Deserialize)]
struct Quirks {
    del_drops_value: DelQuirk,
}

#[derive(Deserialize)]
struct DelQuirk {
    puts: Vec<(String, String)>,
    root_before: String,
    del: String,
    js_root: String,
    js_get_a: Option<String>,
    js_entries: Vec<(String, String)>,
    root_with_only_a: String,
}

type Store = HashMap<Cid, Block>;

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/pail/pail.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("reading {path}: {e} (see tests/js/gen-pail-clock-fixtures.mjs)")
    });
    serde_json::from_str(&text).expect("pail.json parses")
}

fn cid(s: &str) -> Cid {
    parse_cid(s).unwrap_or_else(|e| panic!("{e}"))
}

fn bytes(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

/// A JS block, hash-checked.
fn js_block(b: &BlockJson) -> Block {
    Block::new(cid(&b.cid), bytes(&b.bytes)).expect("JS block bytes match their CID")
}

fn options(o: &Options) -> EntriesOptions {
    EntriesOptions {
        prefix: o.prefix.clone(),
        gt: o.gt.clone(),
        gte: o.gte.clone(),
        lt: o.lt.clone(),
        lte: o.lte.clone(),
    }
}

fn list(store: &Store, root: &Cid, o: &EntriesOptions) -> Vec<(String, String)> {
    pail::entries(store, root, o)
        .unwrap()
        .map(|r| r.map(|(k, v)| (k, v.to_string())))
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn store_with_empty() -> (Store, Cid) {
    let empty = pail::empty();
    let mut store = Store::new();
    store.insert(*empty.cid(), empty.block().clone());
    (store, *empty.cid())
}

#[test]
fn fixture_comes_from_pail_0_6_2() {
    assert_eq!(fixture().pail_version, "0.6.2");
}

#[test]
fn empty_root_matches_js() {
    let f = fixture();
    let ours = pail::empty();
    assert_eq!(ours.cid().to_string(), f.empty.cid);
    assert_eq!(
        ours.block().bytes().as_ref(),
        bytes(&f.empty.bytes).as_slice()
    );
}

#[test]
fn put_and_del_match_js_block_for_block() {
    let f = fixture();
    let (mut store, mut root) = store_with_empty();
    let mut changed = 0;
    for (i, step) in f.steps.iter().enumerate() {
        let ctx = format!("step {i}: {} {:?}", step.op, step.key);
        assert_eq!(root.to_string(), step.root_before, "{ctx}");
        let diff = match step.op.as_str() {
            "put" => pail::put(
                &store,
                &root,
                &step.key,
                cid(step.value.as_deref().unwrap()),
            ),
            "del" => pail::del(&store, &root, &step.key),
            other => panic!("unknown op {other}"),
        }
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));

        assert_eq!(diff.root.to_string(), step.root, "{ctx}: root");
        let ours: Vec<(String, Vec<u8>)> = diff
            .additions
            .iter()
            .map(|b| (b.cid().to_string(), b.block().bytes().to_vec()))
            .collect();
        let theirs: Vec<(String, Vec<u8>)> = step
            .additions
            .iter()
            .map(|b| (b.cid.clone(), bytes(&b.bytes)))
            .collect();
        assert_eq!(ours, theirs, "{ctx}: additions");
        let removals: Vec<String> = diff.removals.iter().map(|b| b.cid().to_string()).collect();
        assert_eq!(removals, step.removals, "{ctx}: removals");

        if !diff.additions.is_empty() {
            changed += 1;
        }
        for b in &diff.additions {
            store.insert(*b.cid(), b.block().clone());
        }
        root = diff.root;
    }
    assert!(changed >= 20, "the script should mostly change the pail");
}

/// A store holding only blocks JS made.
fn js_store(f: &Fixture) -> Store {
    let mut store = Store::new();
    for b in std::iter::once(&f.empty).chain(f.steps.iter().flat_map(|s| &s.additions)) {
        let block = js_block(b);
        store.insert(*block.cid(), block);
    }
    store
}

#[test]
fn get_reads_js_shards() {
    let f = fixture();
    let store = js_store(&f);
    for case in &f.gets {
        let got = pail::get(&store, &cid(&case.root), &case.key)
            .unwrap_or_else(|e| panic!("get {:?}: {e}", case.key));
        assert_eq!(
            got.map(|c| c.to_string()),
            case.value,
            "get {:?} at {}",
            case.key,
            case.root
        );
    }
    assert!(f.gets.iter().any(|g| g.value.is_none()));
    assert!(f.gets.iter().filter(|g| g.value.is_some()).count() > 20);
}

#[test]
fn entries_reads_js_shards() {
    let f = fixture();
    let store = js_store(&f);
    let mut quirks = 0;
    for case in &f.entries {
        let ours = list(&store, &cid(&case.root), &options(&case.options));
        if case.js_matches_expected {
            assert_eq!(
                ours, case.result,
                "entries {:?} at {}",
                case.options, case.root
            );
        } else {
            // pail joins two range bounds with "or" for a value stored on a link entry, so it
            // yields such keys when they pass either bound. We return only keys in range.
            quirks += 1;
            assert_eq!(ours, case.expected, "entries {:?}", case.options);
            assert!(case.options.prefix.is_none());
            assert!(
                case.options.gt.is_some() || case.options.gte.is_some(),
                "{:?}",
                case.options
            );
            assert!(
                case.options.lt.is_some() || case.options.lte.is_some(),
                "{:?}",
                case.options
            );
            let extra: Vec<_> = case.result.iter().filter(|e| !ours.contains(e)).collect();
            assert!(!extra.is_empty());
            assert_eq!(extra.len() + ours.len(), case.result.len());
        }
    }
    assert!(quirks > 0, "the fixture should show pail's range quirk");
}

#[test]
fn bulk_puts_give_js_roots() {
    let f = fixture();
    let (mut store, mut root) = store_with_empty();
    for (i, step) in f.bulk.steps.iter().enumerate() {
        let diff = pail::put(&store, &root, &step.key, cid(&step.value))
            .unwrap_or_else(|e| panic!("bulk step {i} {:?}: {e}", step.key));
        assert_eq!(
            diff.root.to_string(),
            step.root,
            "bulk step {i} {:?}",
            step.key
        );
        for b in diff.additions {
            store.insert(*b.cid(), b.into_block());
        }
        root = diff.root;
    }
    assert_eq!(
        list(&store, &root, &EntriesOptions::default()),
        f.bulk.entries
    );
}

#[test]
fn del_keeps_the_value_pail_loses() {
    let q = fixture().quirks.del_drops_value;
    let (mut store, mut root) = store_with_empty();
    for (k, v) in &q.puts {
        let diff = pail::put(&store, &root, k, cid(v)).unwrap();
        for b in diff.additions {
            store.insert(*b.cid(), b.into_block());
        }
        root = diff.root;
    }
    assert_eq!(root.to_string(), q.root_before);

    // JS loses "a" entirely.
    assert_eq!(q.js_get_a, None);
    assert!(q.js_entries.is_empty());

    let diff = pail::del(&store, &root, &q.del).unwrap();
    assert_ne!(diff.root.to_string(), q.js_root);
    assert_eq!(diff.root.to_string(), q.root_with_only_a);
    for b in diff.additions {
        store.insert(*b.cid(), b.into_block());
    }
    assert_eq!(
        pail::get(&store, &diff.root, "a").unwrap(),
        Some(cid(&q.puts[0].1))
    );
}
