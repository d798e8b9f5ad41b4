//! pail ≥ 0.6 shards: a sharded key/value DAG whose layout depends only on its keys.
//!
//! # Format
//!
//! A shard is a DAG-CBOR block (sha2-256, CIDv1)
//! `{"entries": [...], "version": 1, "keyChars": "ascii", "maxKeySize": 4096, "prefix": "…"}`.
//! Every entry is a pair `[key, value]` where `value` is one of
//!
//! - a link to the value (`[key, valueCID]`),
//! - a one-item list linking a child shard (`[key, [shardCID]]`),
//! - a two-item list linking a child shard and the value stored under exactly this key
//!   (`[key, [shardCID, valueCID]]`).
//!
//! Entry keys are relative: the full key is the shard's `prefix` followed by the entry key, and
//! a child shard's `prefix` is its parent's prefix followed by the linking entry's key. Entries
//! are sorted by key. Keys are printable ASCII (`0x20..=0x7e`) and at most `maxKeySize` bytes.
//!
//! # Layout rule
//!
//! This follows `@web3-storage/pail` 0.6.0–0.7.0 (`put` in `src/index.js`), so that the same keys
//! give the same blocks and the same root CID as the JS implementation:
//!
//! - `put` walks from the root, descending through a link entry whose key starts the remaining
//!   key, and stops at the shard holding the key or at the first shard with no such link.
//! - In that shard, if the new key shares a non-empty common prefix with an existing entry (and is
//!   not that entry's key), the pair moves down into new shards, **one shard per character** of
//!   the common prefix. The deepest shard holds the two remaining suffixes; a key equal to the
//!   common prefix keeps its value on the link entry one level up (`[shardCID, valueCID]`).
//! - Every shard on the path is then re-encoded with the new child CID, up to a new root. The
//!   result lists the new blocks (`additions`, deepest first, root last) and the replaced path
//!   blocks (`removals`, root first), like pail's `ShardDiff`. Putting an unchanged value
//!   changes nothing and returns empty lists.
//!
//! # Differences from pail, all deliberate
//!
//! - Decoding is strict: besides pail's checks (`entries` a list, `version` 1), `keyChars` must be
//!   `"ascii"`, `maxKeySize` a non-negative integer, entries well-formed, sorted and unique, keys
//!   printable ASCII and within `maxKeySize`, shard links DAG-CBOR, and no other fields. When
//!   walking, a child's `prefix` must equal the path to it, and a root's `prefix` must be empty.
//! - [`entries`] filters values under a link entry with the same test as other values. pail's
//!   test for them joins two range bounds with *or* (`entries({gt: "b", lt: "c"})` yields a key
//!   `"a"` that has children). Bounds combine with *and*; like pail, empty strings count as
//!   absent. Descending order (pail 0.7) is not implemented.
//! - [`del`], when the removal empties a chain of shards, turns a parent entry
//!   `[key, [shardCID, valueCID]]` into `[key, valueCID]`. pail drops the whole entry and loses
//!   the value stored under `key`. Other deletes give pail's blocks.

use std::cmp::Ordering;

use cid::Cid;

use crate::clock::{BlockGetter, FetchError, StoreError, fetch};
use crate::ipld::{Block, DAG_CBOR, Ipld, IpldError};

/// The only shard format version (pail ≥ 0.6).
pub const VERSION: u64 = 1;
/// The only key character set pail defines: printable ASCII, `0x20..=0x7e`.
pub const KEY_CHARS_ASCII: &str = "ascii";
/// The default (and pail's) largest key, in bytes.
pub const MAX_KEY_SIZE: u64 = 4096;

/// Longest key shown in an error message.
const KEY_DISPLAY_LEN: usize = 100;

/// Why a shard could not be encoded, decoded or fetched, or an operation could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PailError {
    /// The getter does not have a shard the walk needs.
    #[error("missing block: {cid}")]
    MissingBlock {
        /// The missing shard.
        cid: Cid,
    },
    /// The getter failed while fetching a shard.
    #[error("block store failed fetching {cid}: {source}")]
    Store {
        /// The shard being fetched.
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
    /// A block is not a valid shard, or does not fit where it was linked from.
    #[error("invalid shard {cid}: {reason}")]
    InvalidShard {
        /// The shard's CID.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// A [`Shard`] value breaks the format's rules and cannot be encoded.
    #[error("cannot encode shard: {reason}")]
    InvalidShardValue {
        /// What is wrong with it.
        reason: String,
    },
    /// A shard could not be written as DAG-CBOR.
    #[error("cannot encode shard: {0}")]
    Encode(#[source] IpldError),
    /// A key cannot be stored.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key (shortened if long).
        key: String,
        /// Why it is rejected.
        reason: String,
    },
}

/// What a shard entry points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryValue {
    /// The value stored under the key (`[key, valueCID]`).
    Value(Cid),
    /// A child shard holding longer keys (`[key, [shardCID]]`).
    Shard(Cid),
    /// A child shard and the value stored under exactly this key (`[key, [shardCID, valueCID]]`).
    ShardAndValue {
        /// The child shard.
        shard: Cid,
        /// The value for this key.
        value: Cid,
    },
}

impl EntryValue {
    /// The value stored under this entry's key, if any.
    pub fn value(&self) -> Option<&Cid> {
        match self {
            EntryValue::Value(v) | EntryValue::ShardAndValue { value: v, .. } => Some(v),
            EntryValue::Shard(_) => None,
        }
    }

    /// The child shard, if any.
    pub fn shard(&self) -> Option<&Cid> {
        match self {
            EntryValue::Shard(s) | EntryValue::ShardAndValue { shard: s, .. } => Some(s),
            EntryValue::Value(_) => None,
        }
    }
}

/// One entry of a shard: a key relative to the shard's prefix and what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardEntry {
    /// The key, relative to the shard's [`Shard::prefix`].
    pub key: String,
    /// The value, child shard, or both.
    pub value: EntryValue,
}

impl ShardEntry {
    /// An entry.
    pub fn new(key: impl Into<String>, value: EntryValue) -> Self {
        Self {
            key: key.into(),
            value,
        }
    }
}

/// A decoded shard. `version` (1) and `keyChars` (`"ascii"`) are fixed and not stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shard {
    /// The entries, sorted by key.
    pub entries: Vec<ShardEntry>,
    /// The largest full key allowed, in bytes (`maxKeySize`).
    pub max_key_size: u64,
    /// The full-key prefix from the root to this shard; empty for a root.
    pub prefix: String,
}

impl Default for Shard {
    fn default() -> Self {
        Self::empty()
    }
}

impl Shard {
    /// An empty root shard with pail's default settings.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
            max_key_size: MAX_KEY_SIZE,
            prefix: String::new(),
        }
    }

    /// A shard with the given entries and prefix and `other`'s settings (pail's `withEntries`).
    fn derived(other: &Shard, prefix: String, entries: Vec<ShardEntry>) -> Self {
        Self {
            entries,
            max_key_size: other.max_key_size,
            prefix,
        }
    }

    /// Checks the format's rules: printable ASCII keys within `max_key_size`, entries sorted and
    /// unique, non-empty keys below the root and on links, shard links DAG-CBOR.
    pub fn validate(&self) -> Result<(), PailError> {
        self.check()
            .map_err(|reason| PailError::InvalidShardValue { reason })
    }

    /// [`Shard::validate`], with the reason as text.
    fn check(&self) -> Result<(), String> {
        if !is_printable_ascii(&self.prefix) {
            return Err(format!(
                "prefix {:?} is not printable ASCII",
                shorten(&self.prefix)
            ));
        }
        let max = self.max_key_size;
        for (i, entry) in self.entries.iter().enumerate() {
            let key = &entry.key;
            if !is_printable_ascii(key) {
                return Err(format!(
                    "entries[{i}] key {:?} is not printable ASCII",
                    shorten(key)
                ));
            }
            if key.is_empty() && (!self.prefix.is_empty() || entry.value.shard().is_some()) {
                return Err(format!("entries[{i}] has an empty key"));
            }
            if (self.prefix.len() + key.len()) as u64 > max {
                return Err(format!(
                    "entries[{i}] key {:?} makes a key longer than maxKeySize {max}",
                    shorten(key)
                ));
            }
            if let Some(prev) = i.checked_sub(1).map(|p| &self.entries[p].key)
                && prev.as_str() >= key.as_str()
            {
                return Err(format!(
                    "entries[{i}] key {:?} does not sort after {:?}",
                    shorten(key),
                    shorten(prev)
                ));
            }
            if let Some(link) = entry.value.shard()
                && link.codec() != DAG_CBOR
            {
                return Err(format!(
                    "entries[{i}] links shard {link}, which is not DAG-CBOR"
                ));
            }
        }
        Ok(())
    }

    /// The shard as an IPLD value, in pail's shape.
    pub fn to_ipld(&self) -> Ipld {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let value = match &e.value {
                    EntryValue::Value(v) => Ipld::Link(*v),
                    EntryValue::Shard(s) => Ipld::List(vec![Ipld::Link(*s)]),
                    EntryValue::ShardAndValue { shard, value } => {
                        Ipld::List(vec![Ipld::Link(*shard), Ipld::Link(*value)])
                    }
                };
                Ipld::List(vec![Ipld::String(e.key.clone()), value])
            })
            .collect();
        Ipld::Map(
            [
                ("entries", Ipld::List(entries)),
                ("version", Ipld::Integer(VERSION.into())),
                ("keyChars", Ipld::String(KEY_CHARS_ASCII.to_owned())),
                ("maxKeySize", Ipld::Integer(self.max_key_size.into())),
                ("prefix", Ipld::String(self.prefix.clone())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        )
    }

    /// Reads a shard from an IPLD value, strictly (see the module documentation).
    fn from_ipld(value: Ipld) -> Result<Self, String> {
        let Ipld::Map(mut map) = value else {
            return Err("not a map".to_owned());
        };
        match map.remove("version") {
            Some(Ipld::Integer(1)) => {}
            Some(other) => return Err(format!("unsupported version {other:?}")),
            None => return Err("missing \"version\"".to_owned()),
        }
        match map.remove("keyChars") {
            Some(Ipld::String(s)) if s == KEY_CHARS_ASCII => {}
            Some(Ipld::String(s)) => {
                return Err(format!("unsupported key character set: {}", shorten(&s)));
            }
            Some(_) => return Err("\"keyChars\" is not a string".to_owned()),
            None => return Err("missing \"keyChars\"".to_owned()),
        }
        let max_key_size = match map.remove("maxKeySize") {
            Some(Ipld::Integer(n)) => {
                u64::try_from(n).map_err(|_| format!("\"maxKeySize\" {n} is out of range"))?
            }
            Some(_) => return Err("\"maxKeySize\" is not an integer".to_owned()),
            None => return Err("missing \"maxKeySize\"".to_owned()),
        };
        let prefix = match map.remove("prefix") {
            Some(Ipld::String(s)) => s,
            Some(_) => return Err("\"prefix\" is not a string".to_owned()),
            None => return Err("missing \"prefix\"".to_owned()),
        };
        let entries = match map.remove("entries") {
            Some(Ipld::List(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| entry_from_ipld(item).map_err(|e| format!("entries[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"entries\" is not a list".to_owned()),
            None => return Err("missing \"entries\"".to_owned()),
        };
        if let Some(extra) = map.keys().next() {
            return Err(format!("unexpected field {:?}", shorten(extra)));
        }
        let shard = Self {
            entries,
            max_key_size,
            prefix,
        };
        shard.check()?;
        Ok(shard)
    }
}

/// Reads one `[key, value]` entry.
fn entry_from_ipld(item: Ipld) -> Result<ShardEntry, String> {
    let Ipld::List(pair) = item else {
        return Err("not a list".to_owned());
    };
    let [key, value]: [Ipld; 2] = pair
        .try_into()
        .map_err(|p: Vec<Ipld>| format!("has {} items, not 2", p.len()))?;
    let Ipld::String(key) = key else {
        return Err("key is not a string".to_owned());
    };
    let value = match value {
        Ipld::Link(v) => EntryValue::Value(v),
        Ipld::List(links) => match links.as_slice() {
            [Ipld::Link(s)] => EntryValue::Shard(*s),
            [Ipld::Link(s), Ipld::Link(v)] => EntryValue::ShardAndValue {
                shard: *s,
                value: *v,
            },
            _ => return Err("value list is not [shard] or [shard, value] links".to_owned()),
        },
        _ => return Err("value is neither a link nor a list".to_owned()),
    };
    Ok(ShardEntry { key, value })
}

/// A shard together with the block that encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardBlock {
    block: Block,
    shard: Shard,
}

impl ShardBlock {
    /// Validates and encodes a shard.
    pub fn encode(shard: Shard) -> Result<Self, PailError> {
        shard.validate()?;
        let block = Block::encode(&shard.to_ipld()).map_err(PailError::Encode)?;
        Ok(Self { block, shard })
    }

    /// Decodes and validates a shard block.
    pub fn decode(block: Block) -> Result<Self, PailError> {
        let invalid = |reason: String| PailError::InvalidShard {
            cid: *block.cid(),
            reason,
        };
        let value: Ipld = block.decode().map_err(|e| invalid(e.to_string()))?;
        let shard = Shard::from_ipld(value).map_err(invalid)?;
        Ok(Self { block, shard })
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        self.block.cid()
    }

    /// The encoded block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The decoded shard.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The encoded block, dropping the decoded form.
    pub fn into_block(self) -> Block {
        self.block
    }

    /// The block and the decoded shard.
    pub fn into_parts(self) -> (Block, Shard) {
        (self.block, self.shard)
    }
}

/// The empty root shard (`bafyreihh6nbfbhgkf5lz7hhsscjgiquw426rxzr3fprbgonekzmyvirrhe`), where
/// every pail starts.
pub fn empty() -> ShardBlock {
    let shard = Shard::empty();
    let block = Block::encode(&shard.to_ipld())
        .expect("an empty shard holds only strings and small integers");
    ShardBlock { block, shard }
}

/// The result of [`put`] or [`del`]: the new root and how the set of blocks changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardDiff {
    /// The new root shard (the old root when nothing changed).
    pub root: Cid,
    /// New shards, deepest first; the last one is the new root. Empty when nothing changed.
    pub additions: Vec<ShardBlock>,
    /// Shards on the old path, root first, that the new root no longer needs. Empty when
    /// nothing changed.
    pub removals: Vec<ShardBlock>,
}

impl ShardDiff {
    fn unchanged(root: &Cid) -> Self {
        Self {
            root: *root,
            additions: Vec::new(),
            removals: Vec::new(),
        }
    }
}

/// Options for [`entries`]. All given conditions must hold. Empty strings count as absent, as in
/// pail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntriesOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only keys greater than this.
    pub gt: Option<String>,
    /// Only keys greater than or equal to this.
    pub gte: Option<String>,
    /// Only keys less than this.
    pub lt: Option<String>,
    /// Only keys less than or equal to this.
    pub lte: Option<String>,
}

impl EntriesOptions {
    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: Some(prefix.into()),
            ..Self::default()
        }
    }
}

/// The value stored under `key`, if any.
pub fn get<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
    key: &str,
) -> Result<Option<Cid>, PailError> {
    let root = fetch_root(getter, root)?;
    let (path, skey) = traverse(getter, root, key)?;
    let target = last(&path);
    Ok(target
        .shard
        .entries
        .iter()
        .find(|e| e.key == skey)
        .and_then(|e| e.value.value().copied()))
}

/// Stores `value` under `key`, replacing any value there, and returns the new root with the
/// blocks added and replaced. Keys must be printable ASCII and at most the root's `maxKeySize`
/// bytes.
pub fn put<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
    key: &str,
    value: Cid,
) -> Result<ShardDiff, PailError> {
    let rshard = fetch_root(getter, root)?;
    if !is_printable_ascii(key) {
        return Err(PailError::InvalidKey {
            key: shorten(key),
            reason: "contains characters outside printable ASCII".to_owned(),
        });
    }
    let max = rshard.shard.max_key_size;
    if key.len() as u64 > max {
        return Err(PailError::InvalidKey {
            key: shorten(key),
            reason: format!("{} bytes exceeds max size of {max} bytes", key.len()),
        });
    }

    let (path, skey) = traverse(getter, rshard, key)?;
    let target = last(&path);
    let tshard = &target.shard;

    let mut entry = ShardEntry::new(skey, EntryValue::Value(value));
    let mut target_entries = tshard.entries.clone();
    let mut additions: Vec<ShardBlock> = Vec::new();

    for i in 0..target_entries.len() {
        let k = target_entries[i].key.as_str();
        if k == skey {
            break; // a plain replace
        }
        let common_len = common_prefix(k, skey).len();
        if common_len == 0 {
            continue;
        }
        // This entry moves down; it leaves the target (pail splices it out at the end).
        let ShardEntry { key: k, value: v } = target_entries.remove(i);
        let (k, v) = (k.as_str(), &v);
        let common = &k[..common_len];
        // Both keys move down into a chain of shards, one per character of `common`. A key that
        // is exactly `common` keeps its value on the link entry at the bottom of the chain.
        let mut entries = Vec::new();
        if common != skey {
            entries = put_entry(
                entries,
                ShardEntry::new(&skey[common.len()..], EntryValue::Value(value)),
            );
        }
        if common != k {
            entries = put_entry(entries, ShardEntry::new(&k[common.len()..], v.clone()));
        }
        let mut child = ShardBlock::encode(Shard::derived(
            tshard,
            format!("{}{common}", tshard.prefix),
            entries,
        ))?;
        additions.push(child.clone());

        let existing_value = || match v {
            EntryValue::Value(v) => Ok(*v),
            _ => Err(PailError::InvalidShard {
                cid: *target.cid(),
                reason: format!(
                    "found a shard link when expecting a value at {:?}",
                    shorten(k)
                ),
            }),
        };
        // Key `common` is held by the entry whose key is the last character of `common`.
        let bottom_value = |child: Cid| -> Result<EntryValue, PailError> {
            Ok(if common == k {
                EntryValue::ShardAndValue {
                    shard: child,
                    value: existing_value()?,
                }
            } else if common == skey {
                EntryValue::ShardAndValue {
                    shard: child,
                    value,
                }
            } else {
                EntryValue::Shard(child)
            })
        };
        let n = common.len();
        for j in (1..n).rev() {
            let parent_value = if j == n - 1 {
                bottom_value(*child.cid())?
            } else {
                EntryValue::Shard(*child.cid())
            };
            let parent = ShardBlock::encode(Shard::derived(
                tshard,
                format!("{}{}", tshard.prefix, &common[..j]),
                vec![ShardEntry::new(&common[j..=j], parent_value)],
            ))?;
            additions.push(parent.clone());
            child = parent;
        }

        let top_value = if n == 1 {
            bottom_value(*child.cid())?
        } else {
            EntryValue::Shard(*child.cid())
        };
        entry = ShardEntry::new(&common[..1], top_value);
        break;
    }

    let new_target = ShardBlock::encode(Shard::derived(
        tshard,
        tshard.prefix.clone(),
        put_entry(target_entries, entry),
    ))?;
    if new_target.cid() == target.cid() {
        return Ok(ShardDiff::unchanged(root));
    }
    additions.push(new_target);
    propagate(&path, &mut additions)?;
    Ok(ShardDiff {
        root: *last(&additions).cid(),
        additions,
        removals: path,
    })
}

/// Removes the value stored under `key`. A missing key, or a key that only names a child shard,
/// changes nothing.
pub fn del<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
    key: &str,
) -> Result<ShardDiff, PailError> {
    let rshard = fetch_root(getter, root)?;
    let (path, skey) = traverse(getter, rshard, key)?;
    let target = last(&path);
    let Some(idx) = target.shard.entries.iter().position(|e| e.key == skey) else {
        return Ok(ShardDiff::unchanged(root));
    };

    let mut depth = path.len(); // the shard being rewritten is path[depth - 1]
    let mut entries = target.shard.entries.clone();
    match entries[idx].value {
        EntryValue::Shard(_) => return Ok(ShardDiff::unchanged(root)),
        EntryValue::ShardAndValue { shard, .. } => entries[idx].value = EntryValue::Shard(shard),
        EntryValue::Value(_) => {
            entries.remove(idx);
            // An emptied shard disappears from its parent, possibly all the way up.
            while entries.is_empty() && depth > 1 {
                let child = path[depth - 1].cid();
                depth -= 1;
                entries = path[depth - 1]
                    .shard
                    .entries
                    .iter()
                    .filter_map(|e| match &e.value {
                        EntryValue::Shard(s) if s == child => None,
                        // pail drops this entry, value and all; we keep the value.
                        EntryValue::ShardAndValue { shard, value } if shard == child => {
                            Some(ShardEntry::new(e.key.clone(), EntryValue::Value(*value)))
                        }
                        _ => Some(e.clone()),
                    })
                    .collect();
            }
        }
    }
    let rewritten = &path[depth - 1].shard;
    let mut additions = vec![ShardBlock::encode(Shard::derived(
        rewritten,
        rewritten.prefix.clone(),
        entries,
    ))?];
    propagate(&path[..depth], &mut additions)?;
    Ok(ShardDiff {
        root: *last(&additions).cid(),
        additions,
        removals: path,
    })
}

/// Lists `(key, value)` pairs in key order, filtered by `options`. Shards are fetched lazily as
/// the iterator advances; the first error ends the iteration.
pub fn entries<'g, G: BlockGetter + ?Sized>(
    getter: &'g G,
    root: &Cid,
    options: &EntriesOptions,
) -> Result<Entries<'g, G>, PailError> {
    let root = fetch_root(getter, root)?;
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Ok(Entries {
        getter,
        filter: Filter {
            prefix: nonempty(&options.prefix),
            gt: nonempty(&options.gt),
            gte: nonempty(&options.gte),
            lt: nonempty(&options.lt),
            lte: nonempty(&options.lte),
        },
        stack: vec![(root.shard, 0)],
        pending: None,
        done: false,
    })
}

/// Iterator over a pail's entries; see [`entries`].
pub struct Entries<'g, G: ?Sized> {
    getter: &'g G,
    filter: Filter,
    /// Shards being listed, with the index of the next entry of each.
    stack: Vec<(Shard, usize)>,
    /// A child shard to descend into before the next entry: its CID and its expected prefix.
    pending: Option<(Cid, String)>,
    done: bool,
}

impl<G: ?Sized> std::fmt::Debug for Entries<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("depth", &self.stack.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<G: BlockGetter + ?Sized> Iterator for Entries<'_, G> {
    type Item = Result<(String, Cid), PailError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some((cid, prefix)) = self.pending.take() {
                match fetch_child(self.getter, &cid, &prefix) {
                    Ok(child) => self.stack.push((child.shard, 0)),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let Some((shard, next)) = self.stack.last_mut() else {
                self.done = true;
                return None;
            };
            let Some(entry) = shard.entries.get(*next) else {
                self.stack.pop();
                continue;
            };
            *next += 1;
            let key = format!("{}{}", shard.prefix, entry.key);
            // pail yields a link entry's own value before the keys below it.
            if let Some(child) = entry.value.shard()
                && self.filter.may_contain(&key)
            {
                self.pending = Some((*child, key.clone()));
            }
            if let Some(value) = entry.value.value()
                && self.filter.matches(&key)
            {
                return Some(Ok((key, *value)));
            }
        }
    }
}

/// The conditions of [`EntriesOptions`], empty strings removed.
#[derive(Debug)]
struct Filter {
    prefix: Option<String>,
    gt: Option<String>,
    gte: Option<String>,
    lt: Option<String>,
    lte: Option<String>,
}

impl Filter {
    /// Whether `key` itself passes.
    fn matches(&self, key: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.gt.as_deref().is_none_or(|b| js_cmp(key, b).is_gt())
            && self.gte.as_deref().is_none_or(|b| js_cmp(key, b).is_ge())
            && self.lt.as_deref().is_none_or(|b| js_cmp(key, b).is_lt())
            && self.lte.as_deref().is_none_or(|b| js_cmp(key, b).is_le())
    }

    /// Whether some key starting with `key` could pass (pail's pruning test for child shards).
    fn may_contain(&self, key: &str) -> bool {
        let prefix_ok = self.prefix.as_deref().is_none_or(|p| {
            if js_len(p) <= js_len(key) {
                key.starts_with(p)
            } else {
                p.starts_with(key)
            }
        });
        let not_below = |b: &str| !js_cmp_truncated(key, b).is_lt();
        let not_above = |b: &str| !js_cmp_truncated(key, b).is_gt();
        prefix_ok
            && self.gt.as_deref().is_none_or(not_below)
            && self.gte.as_deref().is_none_or(not_below)
            && self.lt.as_deref().is_none_or(not_above)
            && self.lte.as_deref().is_none_or(not_above)
    }
}

/// JS string comparison (UTF-16 code units). Keys are ASCII, but bounds may not be.
fn js_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// JS `String.length`.
fn js_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Compares `a` and `b` truncated to the shorter one's JS length.
fn js_cmp_truncated(a: &str, b: &str) -> Ordering {
    let n = js_len(a).min(js_len(b));
    a.encode_utf16().take(n).cmp(b.encode_utf16().take(n))
}

/// Whether every character is printable ASCII (`0x20..=0x7e`); the empty string is.
fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// A key for display in errors, cut short if long.
fn shorten(s: &str) -> String {
    if s.chars().count() <= KEY_DISPLAY_LEN {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(KEY_DISPLAY_LEN).collect();
        out.push('…');
        out
    }
}

/// The longest common prefix of two keys (ASCII, so bytes are characters).
fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    &a[..n]
}

/// Inserts `new` into sorted `target`, as pail's `putEntry`: an entry with the same key is
/// replaced, except that a value and a child shard under one key are merged into one entry.
fn put_entry(target: Vec<ShardEntry>, new: ShardEntry) -> Vec<ShardEntry> {
    let mut out = Vec::with_capacity(target.len() + 1);
    let mut rest = target.into_iter().peekable();
    while let Some(entry) = rest.next_if(|e| e.key < new.key) {
        out.push(entry);
    }
    match rest.next_if(|e| e.key == new.key) {
        Some(old) => {
            let value = match (new.value, old.value) {
                // A new child link keeps the value already stored under this key.
                (EntryValue::Shard(shard), EntryValue::ShardAndValue { value, .. }) => {
                    EntryValue::ShardAndValue { shard, value }
                }
                // A new value keeps the child shard already linked under this key.
                (
                    EntryValue::Value(value),
                    EntryValue::Shard(shard) | EntryValue::ShardAndValue { shard, .. },
                ) => EntryValue::ShardAndValue { shard, value },
                (new, _) => new,
            };
            out.push(ShardEntry::new(old.key, value));
        }
        None => out.push(new),
    }
    out.extend(rest);
    out
}

/// The last element of a path that is never empty by construction.
fn last(path: &[ShardBlock]) -> &ShardBlock {
    &path[path.len() - 1]
}

/// Re-encodes the ancestors in `path` (all but its last shard), deepest first, each linking the
/// shard added just before it. `additions` must end with the replacement of `path`'s last shard.
fn propagate(path: &[ShardBlock], additions: &mut Vec<ShardBlock>) -> Result<(), PailError> {
    for parent in path[..path.len() - 1].iter().rev() {
        let child = last(additions);
        let key = &child.shard.prefix[parent.shard.prefix.len()..];
        let child_cid = *child.cid();
        let entries = parent
            .shard
            .entries
            .iter()
            .map(|e| {
                if e.key != key {
                    return Ok(e.clone());
                }
                let value = match &e.value {
                    EntryValue::Value(_) => {
                        return Err(PailError::InvalidShard {
                            cid: *parent.cid(),
                            reason: format!("{:?} is not a shard link", shorten(key)),
                        });
                    }
                    EntryValue::Shard(_) => EntryValue::Shard(child_cid),
                    EntryValue::ShardAndValue { value, .. } => EntryValue::ShardAndValue {
                        shard: child_cid,
                        value: *value,
                    },
                };
                Ok(ShardEntry::new(e.key.clone(), value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let block = ShardBlock::encode(Shard::derived(
            &parent.shard,
            parent.shard.prefix.clone(),
            entries,
        ))?;
        additions.push(block);
    }
    Ok(())
}

/// Walks from `root` towards `key`: returns the shards visited (root first, never empty) and
/// the key relative to the last one.
fn traverse<'k, G: BlockGetter + ?Sized>(
    getter: &G,
    root: ShardBlock,
    key: &'k str,
) -> Result<(Vec<ShardBlock>, &'k str), PailError> {
    let mut path = vec![root];
    let mut rest = key;
    loop {
        let shard = &last(&path).shard;
        let mut next = None;
        for e in &shard.entries {
            if rest == e.key {
                break;
            }
            if let Some(child) = e.value.shard()
                && rest.starts_with(e.key.as_str())
            {
                next = Some((*child, e.key.len(), format!("{}{}", shard.prefix, e.key)));
                break;
            }
        }
        let Some((child, consumed, prefix)) = next else {
            return Ok((path, rest));
        };
        path.push(fetch_child(getter, &child, &prefix)?);
        rest = &rest[consumed..];
    }
}

/// Fetches and decodes a shard.
fn fetch_shard<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<ShardBlock, PailError> {
    let block = fetch(getter, cid).map_err(|e| match e {
        FetchError::Missing => PailError::MissingBlock { cid: *cid },
        FetchError::Store(source) => PailError::Store { cid: *cid, source },
        FetchError::Mismatch(source) => PailError::BlockMismatch {
            cid: *cid,
            source: Box::new(source),
        },
    })?;
    ShardBlock::decode(block)
}

/// Fetches a root shard; its prefix must be empty.
fn fetch_root<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<ShardBlock, PailError> {
    let root = fetch_shard(getter, cid)?;
    if !root.shard.prefix.is_empty() {
        return Err(PailError::InvalidShard {
            cid: *cid,
            reason: format!(
                "root shard has prefix {:?}, expected none",
                shorten(&root.shard.prefix)
            ),
        });
    }
    Ok(root)
}

/// Fetches a child shard; its prefix must be the path that links it.
fn fetch_child<G: BlockGetter + ?Sized>(
    getter: &G,
    cid: &Cid,
    prefix: &str,
) -> Result<ShardBlock, PailError> {
    let child = fetch_shard(getter, cid)?;
    if child.shard.prefix != prefix {
        return Err(PailError::InvalidShard {
            cid: *cid,
            reason: format!(
                "prefix {:?} does not match its link {:?}",
                shorten(&child.shard.prefix),
                shorten(prefix)
            ),
        });
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipld::RAW;
    use std::collections::{BTreeMap, HashMap};

    type Store = HashMap<Cid, Block>;

    fn value(n: u64) -> Cid {
        Block::from_codec(RAW, n.to_be_bytes().to_vec())
            .cid()
            .to_owned()
    }

    fn store() -> (Store, Cid) {
        let e = empty();
        let mut s = Store::new();
        s.insert(*e.cid(), e.block().clone());
        (s, *e.cid())
    }

    fn apply(s: &mut Store, diff: &ShardDiff) -> Cid {
        for b in &diff.additions {
            s.insert(*b.cid(), b.block().clone());
        }
        diff.root
    }

    fn put_all(s: &mut Store, mut root: Cid, items: &[(&str, Cid)]) -> Cid {
        for (k, v) in items {
            let d = put(s, &root, k, *v).unwrap();
            root = apply(s, &d);
        }
        root
    }

    fn list(s: &Store, root: &Cid, o: &EntriesOptions) -> Vec<(String, Cid)> {
        entries(s, root, o)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn keys(s: &Store, root: &Cid, o: &EntriesOptions) -> Vec<String> {
        list(s, root, o).into_iter().map(|(k, _)| k).collect()
    }

    /// A nested view of a shard entry: its key, its value and its child shard's entries.
    #[derive(Debug, PartialEq)]
    struct Node(String, Option<Cid>, Option<Vec<Node>>);

    fn leaf(k: &str, v: Cid) -> Node {
        Node(k.to_owned(), Some(v), None)
    }

    fn branch(k: &str, v: Option<Cid>, children: Vec<Node>) -> Node {
        Node(k.to_owned(), v, Some(children))
    }

    fn tree(s: &Store, cid: &Cid) -> Vec<Node> {
        fetch_shard(s, cid)
            .unwrap()
            .shard
            .entries
            .iter()
            .map(|e| {
                Node(
                    e.key.clone(),
                    e.value.value().copied(),
                    e.value.shard().map(|c| tree(s, c)),
                )
            })
            .collect()
    }

    #[test]
    fn empty_root_vector() {
        // research §3.1, confirmed with @web3-storage/pail 0.6.2 `ShardBlock.create()`.
        let e = empty();
        assert_eq!(
            hex::encode(e.block().bytes()),
            "a5667072656669786067656e7472696573806776657273696f6e01686b657943686172736561736369696a6d61784b657953697a65191000"
        );
        assert_eq!(
            e.cid().to_string(),
            "bafyreihh6nbfbhgkf5lz7hhsscjgiquw426rxzr3fprbgonekzmyvirrhe"
        );
        assert_eq!(ShardBlock::decode(e.block().clone()).unwrap(), e);
    }

    #[test]
    fn put_to_empty_shard() {
        let (s, root) = store();
        let d = put(&s, &root, "test", value(1)).unwrap();
        assert_eq!(d.removals.len(), 1);
        assert_eq!(d.removals[0].cid(), &root);
        assert_eq!(d.additions.len(), 1);
        assert_eq!(
            d.additions[0].shard().entries,
            vec![ShardEntry::new("test", EntryValue::Value(value(1)))]
        );
        assert_eq!(&d.root, d.additions[0].cid());
    }

    #[test]
    fn put_same_value_changes_nothing() {
        let (mut s, root) = store();
        let root = put_all(&mut s, root, &[("test", value(1))]);
        let d = put(&s, &root, "test", value(1)).unwrap();
        assert_eq!(d, ShardDiff::unchanged(&root));
        let d = put(&s, &root, "test", value(2)).unwrap();
        assert_ne!(d.root, root);
        assert_eq!(d.removals.len(), 1);
    }

    #[test]
    fn similar_keys_shard_one_character_per_level() {
        let (mut s, root) = store();
        let v = value(1);
        let root = put_all(&mut s, root, &[("aaaa", v), ("aabb", v)]);
        assert_eq!(
            tree(&s, &root),
            vec![branch(
                "a",
                None,
                vec![branch("a", None, vec![leaf("aa", v), leaf("bb", v)])]
            )]
        );
        // A key equal to a shard's path sits on the link entry.
        let w = value(2);
        let root = put_all(&mut s, root, &[("aa", w)]);
        assert_eq!(
            tree(&s, &root),
            vec![branch(
                "a",
                None,
                vec![branch("a", Some(w), vec![leaf("aa", v), leaf("bb", v)])]
            )]
        );
        assert_eq!(get(&s, &root, "aa").unwrap(), Some(w));
        assert_eq!(get(&s, &root, "a").unwrap(), None);
    }

    #[test]
    fn existing_key_equal_to_the_common_prefix() {
        let (mut s, root) = store();
        let (v, w) = (value(1), value(2));
        let root = put_all(&mut s, root, &[("ab", v), ("abcd", w)]);
        assert_eq!(
            tree(&s, &root),
            vec![branch(
                "a",
                None,
                vec![branch("b", Some(v), vec![leaf("cd", w)])]
            )]
        );
        let (mut s, root) = store();
        let root = put_all(&mut s, root, &[("b", v), ("bc", w)]);
        assert_eq!(
            tree(&s, &root),
            vec![branch("b", Some(v), vec![leaf("c", w)])]
        );
        // The other way round: the new key is the common prefix.
        let (mut s, root) = store();
        let root = put_all(&mut s, root, &[("bc", w), ("b", v)]);
        assert_eq!(
            tree(&s, &root),
            vec![branch("b", Some(v), vec![leaf("c", w)])]
        );
    }

    #[test]
    fn structure_is_independent_of_insertion_order() {
        let items = [
            ("aaaa", value(1)),
            ("aaab", value(2)),
            ("aabb", value(3)),
            ("abbb", value(4)),
            ("bbbb", value(5)),
        ];
        let orders = [
            [0, 1, 2, 3, 4],
            [4, 3, 2, 1, 0],
            [1, 2, 4, 0, 3],
            [2, 0, 3, 4, 1],
        ];
        let mut roots = vec![];
        for order in orders {
            let (mut s, root) = store();
            let ordered: Vec<_> = order.iter().map(|&i| items[i]).collect();
            let root = put_all(&mut s, root, &ordered);
            for (k, v) in items {
                assert_eq!(get(&s, &root, k).unwrap(), Some(v));
            }
            roots.push(root);
        }
        assert!(roots.windows(2).all(|w| w[0] == w[1]), "{roots:?}");
    }

    #[test]
    fn timestamps_build_deep_chains_and_list_in_order() {
        let (mut s, root) = store();
        let ks = [
            "2025-03-12T15:13:59.958Z",
            "2025-03-12T15:14:00.001Z",
            "2025-03-12T15:13:59.959Z",
            "2024-12-31T23:59:59.999Z",
            "2025-03-12T15:13:59.958Z0",
        ];
        let mut root = root;
        for (i, k) in ks.iter().enumerate() {
            let d = put(&s, &root, k, value(i as u64)).unwrap();
            assert_eq!(d.additions.last().unwrap().cid(), &d.root);
            root = apply(&mut s, &d);
        }
        let mut sorted: Vec<_> = ks.iter().map(|k| (*k).to_owned()).collect();
        sorted.sort();
        assert_eq!(keys(&s, &root, &EntriesOptions::default()), sorted);
        for (i, k) in ks.iter().enumerate() {
            assert_eq!(get(&s, &root, k).unwrap(), Some(value(i as u64)));
        }
        assert_eq!(get(&s, &root, "2025-03-12T15:13:59.95").unwrap(), None);
        assert_eq!(get(&s, &root, "nope").unwrap(), None);
        // "2025-03-12T15:1" is shared by three keys; the chain beneath "202" is one
        // character per level.
        let mut depth = 0;
        let mut cid = root;
        loop {
            let sb = fetch_shard(&s, &cid).unwrap();
            let Some(next) = sb.shard.entries.iter().find_map(|e| e.value.shard()) else {
                break;
            };
            depth += 1;
            cid = *next;
        }
        assert!(depth >= 20, "depth {depth}");
    }

    #[test]
    fn entries_filters() {
        let (mut s, root) = store();
        let items = [
            ("a", value(0)),
            ("ab", value(1)),
            ("abc", value(2)),
            ("b", value(3)),
            ("bcd", value(4)),
            ("c", value(5)),
        ];
        let root = put_all(&mut s, root, &items);
        let all: Vec<String> = items.iter().map(|(k, _)| (*k).to_owned()).collect();
        assert_eq!(keys(&s, &root, &EntriesOptions::default()), all);
        let o = |prefix: Option<&str>,
                 gt: Option<&str>,
                 gte: Option<&str>,
                 lt: Option<&str>,
                 lte: Option<&str>| {
            EntriesOptions {
                prefix: prefix.map(str::to_owned),
                gt: gt.map(str::to_owned),
                gte: gte.map(str::to_owned),
                lt: lt.map(str::to_owned),
                lte: lte.map(str::to_owned),
            }
        };
        let check = |opts: EntriesOptions, want: &[&str]| {
            assert_eq!(keys(&s, &root, &opts), want, "{opts:?}");
        };
        check(EntriesOptions::prefix("ab"), &["ab", "abc"]);
        check(EntriesOptions::prefix("abcd"), &[]);
        check(
            EntriesOptions::prefix(""),
            &["a", "ab", "abc", "b", "bcd", "c"],
        );
        check(
            o(None, Some("ab"), None, None, None),
            &["abc", "b", "bcd", "c"],
        );
        check(
            o(None, None, Some("ab"), None, None),
            &["ab", "abc", "b", "bcd", "c"],
        );
        check(o(None, None, None, Some("b"), None), &["a", "ab", "abc"]);
        check(
            o(None, None, None, None, Some("b")),
            &["a", "ab", "abc", "b"],
        );
        // pail would also yield "a" here (its bounds are or-ed for keys with children).
        check(o(None, Some("aa"), None, Some("b"), None), &["ab", "abc"]);
        check(o(None, Some("b"), None, Some("c"), None), &["bcd"]);
        check(
            o(None, None, Some("b"), None, Some("c")),
            &["b", "bcd", "c"],
        );
        check(o(Some("a"), Some("ab"), None, None, None), &["abc"]);
        check(
            o(None, Some(""), None, Some(""), None),
            &["a", "ab", "abc", "b", "bcd", "c"],
        );
        // Non-ASCII bounds compare as JS strings do.
        check(o(None, Some("é"), None, None, None), &[]);
        check(
            o(None, None, None, Some("é"), None),
            &["a", "ab", "abc", "b", "bcd", "c"],
        );
    }

    #[test]
    fn entries_prunes_subtrees() {
        struct Counting<'a>(&'a Store, std::cell::Cell<usize>);
        impl BlockGetter for Counting<'_> {
            fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
                self.1.set(self.1.get() + 1);
                self.0.get_block(cid)
            }
        }
        let (mut s, root) = store();
        let root = put_all(
            &mut s,
            root,
            &[
                ("aaa1", value(1)),
                ("aaa2", value(2)),
                ("bbb1", value(3)),
                ("bbb2", value(4)),
            ],
        );
        let c = Counting(&s, std::cell::Cell::new(0));
        let got: Vec<_> = entries(&c, &root, &EntriesOptions::prefix("b"))
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(got, ["bbb1", "bbb2"]);
        // Root plus the three "b" shards; none of the "a" chain.
        assert_eq!(c.1.get(), 4);
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let (s, root) = store();
        for key in ["é", "tab\there", "nul\0"] {
            match put(&s, &root, key, value(1)) {
                Err(PailError::InvalidKey { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key:?}: {other:?}"),
            }
        }
        let long = "x".repeat(4097);
        let err = put(&s, &root, &long, value(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("4097 bytes exceeds max size of 4096 bytes"),
            "{err}"
        );
        assert!(put(&s, &root, &"x".repeat(4096), value(1)).is_ok());
        assert!(put(&s, &root, "", value(1)).is_ok());
    }

    #[test]
    fn empty_key_lives_in_the_root() {
        let (mut s, root) = store();
        let root = put_all(
            &mut s,
            root,
            &[("", value(0)), ("a", value(1)), ("ab", value(2))],
        );
        assert_eq!(get(&s, &root, "").unwrap(), Some(value(0)));
        assert_eq!(keys(&s, &root, &EntriesOptions::default()), ["", "a", "ab"]);
    }

    #[test]
    fn missing_shards_are_reported() {
        let (mut s, root) = store();
        let root = put_all(&mut s, root, &[("aa", value(1)), ("ab", value(2))]);
        let child = *fetch_shard(&s, &root).unwrap().shard.entries[0]
            .value
            .shard()
            .unwrap();
        s.remove(&child);
        let err = get(&s, &root, "aa").unwrap_err();
        assert_eq!(err.to_string(), format!("missing block: {child}"));
        assert!(
            matches!(put(&s, &root, "ac", value(3)), Err(PailError::MissingBlock { cid }) if cid == child)
        );
        // Keys outside the missing subtree still work.
        assert_eq!(get(&s, &root, "b").unwrap(), None);
        let mut it = entries(&s, &root, &EntriesOptions::default()).unwrap();
        assert!(matches!(
            it.next(),
            Some(Err(PailError::MissingBlock { .. }))
        ));
        assert!(it.next().is_none());
        let missing_root = value(9);
        assert!(
            matches!(get(&s, &missing_root, "a"), Err(PailError::MissingBlock { cid }) if cid == missing_root)
        );
    }

    fn shard_block(fields: Vec<(&str, Ipld)>) -> Block {
        Block::encode(&Ipld::Map(
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
        .unwrap()
    }

    type Fields = Vec<(&'static str, Ipld)>;

    fn fields(prefix: &str, entries: Vec<Ipld>) -> Fields {
        vec![
            ("entries", Ipld::List(entries)),
            ("version", Ipld::Integer(1)),
            ("keyChars", Ipld::String("ascii".into())),
            ("maxKeySize", Ipld::Integer(4096)),
            ("prefix", Ipld::String(prefix.into())),
        ]
    }

    fn e(k: &str, v: Ipld) -> Ipld {
        Ipld::List(vec![Ipld::String(k.into()), v])
    }

    #[test]
    fn decoding_is_strict() {
        let l = Ipld::Link(value(1));
        let shard_link = Ipld::Link(*empty().cid());
        let ok = shard_block(fields("", vec![e("a", l.clone()), e("b", l.clone())]));
        assert!(ShardBlock::decode(ok).is_ok());

        let with = |f: &dyn Fn(&mut Fields)| {
            let mut fs = fields("", vec![e("a", l.clone())]);
            f(&mut fs);
            shard_block(fs)
        };
        let bad: Vec<(Block, &str)> = vec![
            (with(&|f| f[1].1 = Ipld::Integer(2)), "unsupported version"),
            (
                with(&|f| f[2].1 = Ipld::String("utf8".into())),
                "unsupported key character set",
            ),
            (with(&|f| f[3].1 = Ipld::Float(4096.0)), "not an integer"),
            (with(&|f| f[3].1 = Ipld::Integer(-1)), "out of range"),
            (with(&|f| f[4].1 = Ipld::Null), "\"prefix\" is not a string"),
            (
                with(&|f| {
                    f.remove(0);
                }),
                "missing \"entries\"",
            ),
            (with(&|f| f.push(("extra", Ipld::Null))), "unexpected field"),
            (
                shard_block(fields("", vec![e("b", l.clone()), e("a", l.clone())])),
                "does not sort",
            ),
            (
                shard_block(fields("", vec![e("a", l.clone()), e("a", l.clone())])),
                "does not sort",
            ),
            (
                shard_block(fields("", vec![e("é", l.clone())])),
                "not printable ASCII",
            ),
            (
                shard_block(fields("x", vec![e("", l.clone())])),
                "empty key",
            ),
            (
                shard_block(fields(
                    "",
                    vec![e("", Ipld::List(vec![shard_link.clone()]))],
                )),
                "empty key",
            ),
            (
                shard_block(fields("", vec![e("a", Ipld::List(vec![]))])),
                "not [shard] or [shard, value]",
            ),
            (
                shard_block(fields("", vec![e("a", Ipld::List(vec![l.clone()]))])),
                "not DAG-CBOR",
            ),
            (
                shard_block(fields("", vec![e("a", Ipld::Null)])),
                "neither a link nor a list",
            ),
            (
                shard_block(fields(
                    "",
                    vec![Ipld::List(vec![
                        Ipld::String("a".into()),
                        l.clone(),
                        l.clone(),
                    ])],
                )),
                "has 3 items",
            ),
        ];
        for (block, want) in bad {
            match ShardBlock::decode(block.clone()) {
                Err(PailError::InvalidShard { cid, reason }) => {
                    assert_eq!(cid, *block.cid());
                    assert!(reason.contains(want), "{reason:?} lacks {want:?}");
                }
                other => panic!("expected {want:?}, got {other:?}"),
            }
        }
        let mut long = fields("", vec![e(&"k".repeat(10), l.clone())]);
        long[3].1 = Ipld::Integer(9);
        assert!(ShardBlock::decode(shard_block(long)).is_err());
    }

    #[test]
    fn children_must_sit_at_their_prefix() {
        let mut s = Store::new();
        let child = shard_block(fields("z", vec![e("b", Ipld::Link(value(1)))]));
        let root = shard_block(fields(
            "",
            vec![e("a", Ipld::List(vec![Ipld::Link(*child.cid())]))],
        ));
        s.insert(*child.cid(), child.clone());
        s.insert(*root.cid(), root.clone());
        assert!(matches!(
            get(&s, root.cid(), "ab"),
            Err(PailError::InvalidShard { cid, .. }) if cid == *child.cid()
        ));
        // A shard with a prefix cannot be used as a root.
        assert!(matches!(
            get(&s, child.cid(), "zb"),
            Err(PailError::InvalidShard { cid, .. }) if cid == *child.cid()
        ));
    }

    #[test]
    fn encode_rejects_invalid_values() {
        let mut shard = Shard::empty();
        shard.entries = vec![
            ShardEntry::new("b", EntryValue::Value(value(1))),
            ShardEntry::new("a", EntryValue::Value(value(1))),
        ];
        assert!(matches!(
            ShardBlock::encode(shard),
            Err(PailError::InvalidShardValue { .. })
        ));
    }

    #[test]
    fn del_removes_values() {
        let (mut s, root0) = store();
        let root = put_all(&mut s, root0, &[("test", value(1))]);
        let d = del(&s, &root, "test").unwrap();
        assert_eq!(d.root, root0, "back to the empty root");
        assert_eq!(del(&s, &root, "nope").unwrap(), ShardDiff::unchanged(&root));

        let (mut s, root) = store();
        let root = put_all(
            &mut s,
            root,
            &[
                ("aa", value(1)),
                ("ab", value(2)),
                ("a", value(3)),
                ("b", value(4)),
            ],
        );
        // "a" only names a shard once its value is gone; deleting it again changes nothing.
        let d = del(&s, &root, "a").unwrap();
        let root = apply(&mut s, &d);
        assert_eq!(get(&s, &root, "a").unwrap(), None);
        assert_eq!(del(&s, &root, "a").unwrap(), ShardDiff::unchanged(&root));
        let d = del(&s, &root, "aa").unwrap();
        let root = apply(&mut s, &d);
        assert_eq!(keys(&s, &root, &EntriesOptions::default()), ["ab", "b"]);
        let d = del(&s, &root, "ab").unwrap();
        let root = apply(&mut s, &d);
        assert_eq!(keys(&s, &root, &EntriesOptions::default()), ["b"]);
        assert_eq!(
            tree(&s, &root),
            vec![leaf("b", value(4))],
            "the emptied chain is gone"
        );
    }

    #[test]
    fn del_keeps_a_value_above_an_emptied_chain() {
        // pail 0.6.2 loses "a" here; we keep it.
        let (mut s, root) = store();
        let root = put_all(&mut s, root, &[("a", value(1)), ("ab", value(2))]);
        let d = del(&s, &root, "ab").unwrap();
        assert_eq!(d.removals.len(), 2);
        let root = apply(&mut s, &d);
        assert_eq!(get(&s, &root, "a").unwrap(), Some(value(1)));
        assert_eq!(tree(&s, &root), vec![leaf("a", value(1))]);
        // Which is the same pail as putting "a" alone.
        let (mut s2, r2) = store();
        assert_eq!(put_all(&mut s2, r2, &[("a", value(1))]), root);
    }

    #[test]
    fn put_entry_merges_values_and_links() {
        let (v, w, sh, sh2) = (value(1), value(2), *empty().cid(), value(3));
        let base = vec![
            ShardEntry::new("a", EntryValue::Value(v)),
            ShardEntry::new(
                "c",
                EntryValue::ShardAndValue {
                    shard: sh,
                    value: v,
                },
            ),
        ];
        let keys_of = |es: &[ShardEntry]| es.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys_of(&put_entry(
                base.clone(),
                ShardEntry::new("0", EntryValue::Value(w))
            )),
            ["0", "a", "c"]
        );
        assert_eq!(
            keys_of(&put_entry(
                base.clone(),
                ShardEntry::new("b", EntryValue::Value(w))
            )),
            ["a", "b", "c"]
        );
        assert_eq!(
            keys_of(&put_entry(
                base.clone(),
                ShardEntry::new("d", EntryValue::Value(w))
            )),
            ["a", "c", "d"]
        );
        let r = put_entry(base.clone(), ShardEntry::new("c", EntryValue::Shard(sh2)));
        assert_eq!(
            r[1].value,
            EntryValue::ShardAndValue {
                shard: sh2,
                value: v
            }
        );
        let r = put_entry(base.clone(), ShardEntry::new("c", EntryValue::Value(w)));
        assert_eq!(
            r[1].value,
            EntryValue::ShardAndValue {
                shard: sh,
                value: w
            }
        );
        let r = put_entry(base.clone(), ShardEntry::new("a", EntryValue::Shard(sh2)));
        assert_eq!(r[0].value, EntryValue::Shard(sh2));
        let r = put_entry(
            base,
            ShardEntry::new(
                "c",
                EntryValue::ShardAndValue {
                    shard: sh2,
                    value: w,
                },
            ),
        );
        assert_eq!(
            r[1].value,
            EntryValue::ShardAndValue {
                shard: sh2,
                value: w
            }
        );
    }

    #[test]
    fn btreemap_getter_works() {
        let e = empty();
        let mut m = BTreeMap::new();
        m.insert(*e.cid(), e.block().clone());
        assert_eq!(get(&m, e.cid(), "x").unwrap(), None);
    }
}
